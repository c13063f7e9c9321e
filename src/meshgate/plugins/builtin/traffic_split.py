"""traffic-split: send a share of the requests to other upstreams, by rule and weight.

As APISIX ``apisix/plugins/traffic-split.lua``: the first rule whose ``match`` passes (any of
its ``vars`` rules; a rule without ``match`` always passes) picks one of its
``weighted_upstreams`` by weight; an entry with ``upstream_id`` or an inline ``upstream``
replaces the route's upstream for this request (``ctx.set_upstream``), an entry with neither
keeps the route's own upstream.  Weights are spread with a smooth weighted round robin (the
state lives in the compiled conf, i.e. per config version and worker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError, ProtocolError
from ...model import schema_for
from ...router import Expr, compile_expr

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "access", "SmoothRR"]

NAME = "traffic-split"
PRIORITY = 966
VERSION = "0.1"

_ID_SCHEMA = schema_for("routes")["properties"]["upstream_id"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "match": {"type": "array", "items": {"type": "object", "properties": {"vars": {"type": "array"}}}},
                    "weighted_upstreams": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "upstream_id": _ID_SCHEMA,
                                "upstream": schema_for("upstream"),
                                "weight": {"description": "used to split traffic between differentupstreams for "
                                                          "plugin configuration",
                                           "type": "integer", "default": 1, "minimum": 0},
                            },
                        },
                        "default": [{"weight": 1}],
                        "minItems": 1,
                        "maxItems": 20,
                    },
                },
            },
        },
    },
}


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    for i, rule in enumerate(conf.get("rules") or ()):
        for j, m in enumerate(rule.get("match") or ()):
            try:
                compile_expr(m.get("vars", []), f"/rules/{i}/match/{j}/vars")
            except ConfigError as e:
                return f"failed to validate the 'vars' expression: {e.message}"
    return None


class SmoothRR:
    """nginx's smooth weighted round robin over opaque targets (weight 0 never picked)."""

    __slots__ = ("targets", "weights", "current", "total")

    def __init__(self, items: list[tuple[Any, int]]) -> None:
        kept = [(t, w) for t, w in items if w > 0]
        self.targets = [t for t, _ in kept]
        self.weights = [w for _, w in kept]
        self.current = [0] * len(kept)
        self.total = sum(self.weights)

    def pick(self) -> Any:
        if not self.targets:
            return None
        best = 0
        cur = self.current
        for i, w in enumerate(self.weights):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.total
        return self.targets[best]


# What a weighted upstream resolves to: ("id", upstream_id) | ("conf", upstream dict) | ("route", None)
_Target = tuple[str, Any]


@dataclass(slots=True)
class Rule:
    match: tuple[Expr, ...] | None
    rr: SmoothRR = field(repr=False)


@dataclass(frozen=True, slots=True)
class Conf:
    rules: tuple[Rule, ...]


def _target(wu: dict[str, Any]) -> _Target:
    if wu.get("upstream_id") is not None:
        return ("id", str(wu["upstream_id"]))
    if wu.get("upstream") is not None:
        return ("conf", wu["upstream"])
    return ("route", None)


def prepare(conf: dict[str, Any]) -> Conf:
    rules = []
    for i, r in enumerate(conf.get("rules") or ()):
        match = None
        if r.get("match") is not None:
            match = tuple(compile_expr(m.get("vars", []), f"/rules/{i}/match/{j}/vars")
                          for j, m in enumerate(r["match"]))
        wus = r.get("weighted_upstreams") or [{"weight": 1}]
        rr = SmoothRR([(_target(wu), int(wu.get("weight", 1))) for wu in wus])
        rules.append(Rule(match=match, rr=rr))
    return Conf(rules=tuple(rules))


def access(conf: Conf, ctx: Any) -> Any:
    chosen: Rule | None = None
    getvar = ctx.var
    for rule in conf.rules:
        # an empty match list passes, as APISIX (match_passed keeps its initial true)
        if rule.match is None or not rule.match or any(e.eval(getvar) for e in rule.match):
            chosen = rule
            break
    if chosen is None:
        return None
    target: _Target | None = chosen.rr.pick()
    if target is None or target[0] == "route":
        return None
    try:
        ctx.set_upstream(target[1])
    except ProtocolError:
        if target[0] != "id":
            raise
        # APISIX checks the ids of the matched rule up front with this answer
        return 500, f"failed to fetch upstream info by upstream id: {target[1]}"
    return None
