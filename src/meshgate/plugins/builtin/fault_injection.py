"""fault-injection: delay and/or abort requests, by percentage and ``vars`` rules.

As APISIX ``apisix/plugins/fault-injection.lua``: ``delay`` runs first (sleeps ``duration``
seconds), then ``abort`` answers ``http_status`` with ``body`` (``$var`` resolved) and
``headers``.  Each applies when its ``percentage`` sample hits (``random(1,100) <= p``) and
any of its ``vars`` rules matches (an empty ``vars`` list never matches, as APISIX).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...router import Expr, compile_expr
from ._traffic_util import HTML_TYPE, lua_str, nginx_page, resolve_var

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "rewrite"]

NAME = "fault-injection"
PRIORITY = 11000
VERSION = "0.1"

_VARS = {"type": "array", "maxItems": 20, "items": {"type": "array"}}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "abort": {
            "type": "object",
            "properties": {
                "http_status": {"type": "integer", "minimum": 200},
                "body": {"type": "string", "minLength": 0},
                "headers": {"type": "object", "minProperties": 1,
                            "patternProperties": {"^[^:]+$": {"oneOf": [{"type": "string"}, {"type": "number"}]}}},
                "percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                "vars": _VARS,
            },
            "required": ["http_status"],
        },
        "delay": {
            "type": "object",
            "properties": {
                "duration": {"type": "number", "minimum": 0},
                "percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                "vars": _VARS,
            },
            "required": ["duration"],
        },
    },
    "minProperties": 1,
}


def _compile_vars(rules: list[Any] | None, pointer: str) -> tuple[Expr, ...] | None:
    if rules is None:
        return None
    return tuple(compile_expr(r, f"{pointer}/{i}") for i, r in enumerate(rules))


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    for part in ("abort", "delay"):
        sub = conf.get(part)
        if sub and sub.get("vars") is not None:
            try:
                _compile_vars(sub["vars"], f"/{part}/vars")
            except ConfigError as e:
                return f"{e.pointer}: {e.message}"
    return None


@dataclass(frozen=True, slots=True)
class Abort:
    status: int
    body: str | None
    headers: tuple[tuple[str, str, bool], ...]     # name, value, resolve $vars (string values only)
    percentage: int | None
    vars: tuple[Expr, ...] | None


@dataclass(frozen=True, slots=True)
class Delay:
    duration: float
    percentage: int | None
    vars: tuple[Expr, ...] | None


@dataclass(frozen=True, slots=True)
class Conf:
    abort: Abort | None
    delay: Delay | None


def prepare(conf: dict[str, Any]) -> Conf:
    a = conf.get("abort")
    d = conf.get("delay")
    abort = None
    if a is not None:
        abort = Abort(status=int(a["http_status"]), body=a.get("body"),
                      headers=tuple((k, lua_str(v), isinstance(v, str)) for k, v in (a.get("headers") or {}).items()),
                      percentage=a.get("percentage"), vars=_compile_vars(a.get("vars"), "/abort/vars"))
    delay = None
    if d is not None:
        delay = Delay(duration=float(d["duration"]), percentage=d.get("percentage"),
                      vars=_compile_vars(d.get("vars"), "/delay/vars"))
    return Conf(abort=abort, delay=delay)


def _sample_hit(percentage: int | None) -> bool:
    return percentage is None or random.randint(1, 100) <= percentage


def _vars_match(rules: tuple[Expr, ...] | None, ctx: Any) -> bool:
    if rules is None:
        return True
    getvar = ctx.var
    return any(r.eval(getvar) for r in rules)


async def rewrite(conf: Conf, ctx: Any) -> Any:
    # both rules are evaluated before the delay, as APISIX (the delay must not change them)
    abort, delay = conf.abort, conf.delay
    abort_vars = abort is not None and _vars_match(abort.vars, ctx)
    if delay is not None and _vars_match(delay.vars, ctx) and _sample_hit(delay.percentage):
        if delay.duration > 0:
            await asyncio.sleep(delay.duration)
    if abort is not None and abort_vars and _sample_hit(abort.percentage):
        getvar = ctx.var
        for name, value, dyn in abort.headers:
            ctx.set_resp_header(name, resolve_var(value, getvar) if dyn else value)
        if abort.body is None:
            # no body: nginx's own page for the status (ngx.exit)
            page = nginx_page(abort.status)
            return (abort.status, page, {"Content-Type": HTML_TYPE}) if page else (abort.status, b"")
        return abort.status, resolve_var(abort.body, getvar)
    return None
