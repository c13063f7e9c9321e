"""limit-conn: concurrent requests per key (APISIX 1003, lua-resty-limit-traffic's conn).

``access`` counts the request in (atomic ``incr`` in the ``plugin-limit-conn`` shared
dict, so the limit holds for all workers together); above ``conn + burst`` it is undone
and the request rejected; between ``conn`` and ``conn + burst`` the request waits
``default_conn_delay * floor((n - 1) / conn)`` seconds.  ``log`` counts it out.  With
``redis`` / ``redis-cluster`` the in-flight requests are members of a sorted set that
expire after ``key_ttl`` (as APISIX), so a crashed gateway cannot leak them forever.
"""

from __future__ import annotations

import asyncio
import copy
import math
import time
import uuid
from typing import Any

from . import _limit_common as lc
from ...shared import SharedDictError

NAME = "limit-conn"
PRIORITY = 1003
VERSION = "0.1"

_DICT = "plugin-limit-conn"
_STATE = "_limit_conn_held:"  # ctx var (+ conf id): what access counted in, for log to count out

_INT_OR_VAR = {"oneOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "string"}]}
_BURST = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}


def _with_ttl(s: dict[str, Any]) -> dict[str, Any]:
    s = copy.deepcopy(s)
    s["properties"]["key_ttl"] = {"type": "integer", "default": 3600}
    return s


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "conn": _INT_OR_VAR,
        "burst": _BURST,
        "default_conn_delay": {"type": "number", "exclusiveMinimum": 0},
        "only_use_default_delay": {"type": "boolean", "default": False},
        "key": {"type": "string"},
        "key_type": {"type": "string", "enum": ["var", "var_combination"], "default": "var"},
        "policy": {"type": "string", "enum": ["redis", "redis-cluster", "local"], "default": "local"},
        "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
        "rejected_msg": {"type": "string", "minLength": 1},
        "allow_degradation": {"type": "boolean", "default": False},
        "rules": {"type": "array", "items": {
            "type": "object",
            "properties": {"conn": _INT_OR_VAR, "burst": _BURST, "key": {"type": "string"}},
            "required": ["conn", "burst", "key"]}},
    },
    "oneOf": [{"required": ["conn", "burst", "default_conn_delay", "key"]},
              {"required": ["default_conn_delay", "rules"]}],
    # "required": JSON schema does not fill the default in (APISIX's validator does), so an
    # absent policy must not match the redis branch
    "if": {"properties": {"policy": {"enum": ["redis"]}}, "required": ["policy"]},
    "then": _with_ttl(lc.REDIS_SCHEMA),
    "else": {"if": {"properties": {"policy": {"enum": ["redis-cluster"]}}, "required": ["policy"]},
             "then": _with_ttl(lc.REDIS_CLUSTER_SCHEMA)},
    "encrypt_fields": ["redis_password"],   # stored encrypted in etcd (APISIX data_encryption)
}


def prepare(conf: dict[str, Any], owner: str = "") -> dict[str, Any]:
    c = copy.deepcopy(conf)
    for k, v in (("key_type", "var"), ("policy", "local"), ("rejected_code", 503), ("allow_degradation", False),
                 ("only_use_default_delay", False), ("key_ttl", 3600)):
        c.setdefault(k, v)
    c["_id"] = lc.conf_id(conf, owner)
    return c


class _Bad(Exception):
    pass


def _number(ctx: Any, value: Any, allow_zero: bool) -> int:
    if not isinstance(value, str):
        return int(value)
    text, _ = lc.resolve_template(value, ctx)
    try:
        n = float(text)
    except ValueError:
        raise _Bad(f"resolved value is not a number: {text}") from None
    if n < 0 or (n == 0 and not allow_zero) or n != math.floor(n) or n > 9007199254740991:
        raise _Bad(f"invalid resolved value: {text}")
    return int(n)


def _rules(conf: dict[str, Any], ctx: Any) -> list[tuple[int, int, str]]:
    if conf.get("rules") is None:
        return [(_number(ctx, conf["conn"], False), _number(ctx, conf["burst"], True),
                 lc.resolve_key(conf["key_type"], conf["key"], ctx))]
    out = []
    for rule in conf["rules"]:
        try:
            conn, burst = _number(ctx, rule["conn"], False), _number(ctx, rule["burst"], True)
        except _Bad:
            continue  # APISIX skips a rule whose values do not resolve
        key, n = lc.resolve_template(rule["key"], ctx)
        if n == 0:
            continue
        out.append((conn, burst, key))
    return out


_IN_SCRIPT = """
local now, ttl, limit = tonumber(ARGV[3]), tonumber(ARGV[2]), tonumber(ARGV[1])
redis.call('zremrangebyscore', KEYS[1], 0, now)
local n = redis.call('zcard', KEYS[1])
if n >= limit then
    return {0, n}
end
redis.call('zadd', KEYS[1], now + ttl, ARGV[4])
redis.call('expire', KEYS[1], ttl)
return {1, n + 1}
"""


def _local_in(key: str, conn: int, burst: int) -> int | None:
    """In-flight count including this request, or None (rejected, nothing counted)."""
    with lc.shared(_DICT).locked() as tx:
        n = tx.incr(key, 1, 0)
        if n > conn + burst:
            tx.incr(key, -1, 0)
            return None
    return int(n)


async def _redis_in(conf: dict[str, Any], key: str, conn: int, burst: int) -> tuple[int | None, str]:
    member = uuid.uuid4().hex
    res = await lc.run_script(conf, _IN_SCRIPT, [f"limit_conn:{key}"],
                              [conn + burst, conf["key_ttl"], int(time.time()), member])
    return (int(res[1]) if int(res[0]) == 1 else None), member


def _rejected(conf: dict[str, Any]) -> Any:
    if conf.get("rejected_msg") is not None:
        return conf["rejected_code"], {"error_msg": conf["rejected_msg"]}
    return conf["rejected_code"]


def access(conf: dict[str, Any], ctx: Any) -> Any:
    # local: a plain call; only a delay (or the redis policy) gives the runtime an awaitable
    if conf["policy"] != "local":
        return _access_redis(conf, ctx)
    held: list[tuple[str, str | None]] = []
    delay = 0.0
    try:
        rules = _rules(conf, ctx)
        if not rules:
            raise _Bad("no applicable rule")
        for conn, burst, key in rules:
            full = lc.scope_key(conf["_id"], ctx, key)
            n = _local_in(full, conn, burst)
            if n is None:
                _local_out(held)
                return _rejected(conf)
            held.append((full, None))
            if n > conn:  # within the burst: excess requests wait
                delay = max(delay, conf["default_conn_delay"] * math.floor((n - 1) / conn))
    except (_Bad, SharedDictError):
        _local_out(held)
        return None if conf["allow_degradation"] else 500
    ctx.set_var(_STATE + conf["_id"], held)
    if delay >= 0.001:
        return asyncio.sleep(delay)
    return None


async def _access_redis(conf: dict[str, Any], ctx: Any) -> Any:
    held: list[tuple[str, str | None]] = []
    delay = 0.0
    try:
        rules = _rules(conf, ctx)
        if not rules:
            raise _Bad("no applicable rule")
        for conn, burst, key in rules:
            full = lc.scope_key(conf["_id"], ctx, key)
            n, member = await _redis_in(conf, full, conn, burst)
            if n is None:
                await _redis_out(conf, held)
                return _rejected(conf)
            held.append((full, member))
            if n > conn:
                delay = max(delay, conf["default_conn_delay"] * math.floor((n - 1) / conn))
    except (_Bad, lc.RedisFailure):
        await _redis_out(conf, held)
        return None if conf["allow_degradation"] else 500
    ctx.set_var(_STATE + conf["_id"], held)
    if delay >= 0.001:
        await asyncio.sleep(delay)
    return None


def _local_out(held: list[tuple[str, str | None]]) -> None:
    d = lc.shared(_DICT)
    for key, _ in held:
        try:
            d.incr(key, -1, 0)
        except SharedDictError:
            pass


async def _redis_out(conf: dict[str, Any], held: list[tuple[str, str | None]]) -> None:
    for key, member in held:
        try:
            await lc.run_command(conf, "ZREM", f"limit_conn:{key}", member)
        except lc.RedisFailure:
            pass  # the member expires after key_ttl anyway


def log(conf: dict[str, Any], ctx: Any) -> Any:
    held = ctx.var(_STATE + conf["_id"])
    if not held:
        return None
    ctx.set_var(_STATE + conf["_id"], None)
    if conf["policy"] == "local":
        _local_out(held)
        return None
    return _redis_out(conf, held)
