"""api-breaker: a circuit breaker on upstream statuses (APISIX 1005).

State per ``host + uri`` (APISIX's keys) in the ``plugin-api-breaker`` shared dict, so
every worker sees one breaker:

- ``log``: an upstream status in ``unhealthy.http_statuses`` counts a failure (and
  clears the success count); every ``unhealthy.failures``-th failure records the time
  the breaker tripped.  A status in ``healthy.http_statuses`` while failures are
  recorded counts a success; ``healthy.successes`` of them reset everything.
- ``access``: after a trip the route answers ``break_response_code`` (with
  ``break_response_body`` and ``break_response_headers``) for ``2^n`` seconds, ``n`` =
  failures / ``unhealthy.failures``, at most ``max_breaker_sec``; then requests go
  through again (half-open) and the next failure trips it for longer.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from . import _limit_common as lc
from ...shared import SharedDictError, now

NAME = "api-breaker"
PRIORITY = 1005
VERSION = "0.1"

_DICT = "plugin-api-breaker"
_OPENED = "_api_breaker_answered"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "break_response_code": {"type": "integer", "minimum": 200, "maximum": 599},
        "break_response_body": {"type": "string"},
        "break_response_headers": {"type": "array", "items": {
            "type": "object",
            "properties": {"key": {"type": "string", "minLength": 1}, "value": {"type": "string", "minLength": 1}},
            "required": ["key", "value"]}},
        "max_breaker_sec": {"type": "integer", "minimum": 3, "default": 300},
        "unhealthy": {
            "type": "object",
            "properties": {
                "http_statuses": {"type": "array", "minItems": 1,
                                  "items": {"type": "integer", "minimum": 500, "maximum": 599},
                                  "uniqueItems": True, "default": [500]},
                "failures": {"type": "integer", "minimum": 1, "default": 3},
            },
            "default": {"http_statuses": [500], "failures": 3},
        },
        "healthy": {
            "type": "object",
            "properties": {
                "http_statuses": {"type": "array", "minItems": 1,
                                  "items": {"type": "integer", "minimum": 200, "maximum": 499},
                                  "uniqueItems": True, "default": [200]},
                "successes": {"type": "integer", "minimum": 1, "default": 3},
            },
            "default": {"http_statuses": [200], "successes": 3},
        },
    },
    "required": ["break_response_code"],
}


def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    c = copy.deepcopy(conf)
    c.setdefault("max_breaker_sec", 300)
    un = c.setdefault("unhealthy", {})
    un.setdefault("http_statuses", [500])
    un.setdefault("failures", 3)
    he = c.setdefault("healthy", {})
    he.setdefault("http_statuses", [200])
    he.setdefault("successes", 3)
    c["_unhealthy"] = frozenset(un["http_statuses"])
    c["_healthy"] = frozenset(he["http_statuses"])
    return c


def _where(ctx: Any) -> str:
    return f"{ctx.var('host') or ''}{ctx.var('uri') or ''}"


def _seconds() -> int:
    # ngx.time(): whole seconds (a monotonic clock, shared by every process on the machine)
    return math.floor(now())


def access(conf: dict[str, Any], ctx: Any) -> Any:
    w = _where(ctx)
    try:
        with lc.shared(_DICT).locked() as tx:
            failures = tx.get("unhealthy-" + w)
            lasttime = tx.get("unhealthy-lasttime" + w) if failures is not None else None
    except SharedDictError:
        return None
    if failures is None or lasttime is None:
        return None
    n = max(math.floor(failures / conf["unhealthy"]["failures"]), 1)
    breaker_time = min(2 ** n, conf["max_breaker_sec"])
    if lasttime + breaker_time < _seconds():
        return None  # half-open: let it through, its status decides
    ctx.set_var(_OPENED, True)
    body = conf.get("break_response_body")
    if body is None:
        return conf["break_response_code"]
    for h in conf.get("break_response_headers") or ():
        val, _ = lc.resolve_template(h["value"], ctx)
        ctx.add_resp_header(h["key"], val)
    return conf["break_response_code"], body


def _upstream_status(ctx: Any) -> int | None:
    if ctx.var(_OPENED):
        return None  # answered by the breaker itself: no upstream was asked
    st = ctx.var("upstream_status")
    if st is None:
        st = ctx.var("status")
    if st is None:
        return None
    try:
        # $upstream_status lists every try ("502, 200"): the last one is the answer
        return int(str(st).rsplit(",", 1)[-1].strip().split(":")[-1].strip())
    except ValueError:
        return None


def log(conf: dict[str, Any], ctx: Any) -> None:
    status = _upstream_status(ctx)
    if status is None:
        return
    w = _where(ctx)
    uk, hk, lk = "unhealthy-" + w, "healthy-" + w, "unhealthy-lasttime" + w
    try:
        with lc.shared(_DICT).locked() as tx:
            if status in conf["_unhealthy"]:
                n = tx.incr(uk, 1, 0)
                tx.delete(hk)
                if n % conf["unhealthy"]["failures"] == 0:
                    tx.set(lk, _seconds(), conf["max_breaker_sec"])
                return
            if status not in conf["_healthy"] or tx.get(uk) is None:
                return
            if tx.incr(hk, 1, 0) >= conf["healthy"]["successes"]:
                tx.delete(lk)
                tx.delete(uk)
                tx.delete(hk)
    except SharedDictError:
        return
