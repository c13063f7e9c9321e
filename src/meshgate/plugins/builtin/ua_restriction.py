"""ua-restriction: allow or refuse a request by its User-Agent (APISIX ``ua-restriction``).

APISIX semantics (``apisix/plugins/ua-restriction.lua``, ``t/plugin/ua-restriction.t``):
exactly one of ``allowlist`` / ``denylist`` (regular expressions, searched anywhere in the
whitespace-stripped User-Agent); a missing User-Agent is refused unless ``bypass_missing``;
a refused request gets ``403 {"message": <message>}`` (default ``"Not allowed"``).

Several User-Agent fields: the request passes an allowlist when one of them matches, and is
refused by a denylist when one of them matches (``t/plugin/ua-restriction.t`` tests 8, 9, 16,
17).  The ctx joins repeated fields with ``", "``; the rules are therefore tried on the joined
value *and* on each comma-separated piece, which keeps a denylist strict whatever the split
(a regex anchored with ``^``/``$`` still sees each field alone).

Regexes are compiled once per config version in :func:`prepare`; an invalid one is refused by
:func:`check_schema` with the compiler's message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "RuleSet", "check_schema", "prepare", "access"]

NAME = "ua-restriction"
PRIORITY = 2999
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "bypass_missing": {"type": "boolean", "default": False},
        "allowlist": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "denylist": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "message": {"type": "string", "minLength": 1, "maxLength": 1024, "default": "Not allowed"},
    },
    "oneOf": [{"required": ["allowlist"]}, {"required": ["denylist"]}],
}


class RuleSet:
    """Regexes searched one after the other; a hit of any of them is a hit.

    APISIX joins the rules with ``|`` into one PCRE; compiled one by one, a rule's own inline
    flags (``(?i)``) and group numbers (``\\1``) keep their meaning in Python's ``re``.
    Shared with cors and uri-blocker.
    """

    __slots__ = ("_patterns",)

    def __init__(self, rules: list[str], flags: int = 0) -> None:
        self._patterns = tuple(re.compile(r, flags) for r in rules)

    def search(self, subject: str) -> bool:
        for p in self._patterns:
            if p.search(subject) is not None:
                return True
        return False


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    for key in ("allowlist", "denylist"):
        for rule in conf.get(key) or ():
            try:
                re.compile(rule)
            except re.error as e:
                return f"failed to compile regex {rule!r}: {e}"
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    rules: RuleSet
    allow: bool                 # True: allowlist, False: denylist
    bypass_missing: bool
    body: dict[str, str]


def prepare(conf: dict[str, Any]) -> Prepared:
    allow = "allowlist" in conf
    rules = conf["allowlist"] if allow else conf["denylist"]
    return Prepared(rules=RuleSet(rules), allow=allow, bypass_missing=bool(conf.get("bypass_missing", False)),
                    body={"message": conf.get("message", "Not allowed")})


def _candidates(ua: str) -> list[str]:
    out = [ua.strip()]
    if "," in ua:
        out.extend(p.strip() for p in ua.split(","))
    return out


def access(conf: Prepared, ctx: Any) -> tuple[int, dict[str, str]] | None:
    ua = ctx.req_header("user-agent")
    if ua is None:
        if conf.bypass_missing:
            return None
        return 403, conf.body
    search = conf.rules.search
    hit = any(search(c) for c in _candidates(ua))
    if hit != conf.allow:   # allowlist without a hit, or denylist with one
        return 403, conf.body
    return None
