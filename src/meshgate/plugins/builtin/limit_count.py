"""limit-count: at most ``count`` requests per ``time_window`` seconds per key (APISIX 1002).

Policies:

- ``local``: the counter lives in the ``plugin-limit-count`` shared dict, so the limit
  holds for the whole gateway (every worker process), as APISIX's nginx shared dict.
  Fixed window: an atomic ``incr`` whose first hit sets the window's expiry; a request is
  rejected when the consumed count passes ``count``.  Sliding window: APISIX's
  two-window estimate, decided and committed in one locked step.
- ``redis`` / ``redis-cluster``: the counter lives in redis, updated by one Lua script
  (atomic for every gateway sharing the redis).  Redis unreachable: 500
  ``{"error_msg":"failed to limit count"}``, or the request passes with
  ``allow_degradation``.

Accepted answers carry ``X-RateLimit-Limit/-Remaining/-Reset`` (names from the plugin
metadata) unless ``show_limit_quota_header`` is false; rejected ones carry them with
``Remaining: 0``.  ``sync_interval`` (delayed redis sync) is validated as APISIX does
but counting is always synchronous (exact).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Final

from ..chain import CtxBase
from . import _limit_common as lc
from ...shared import SharedDictError

NAME: Final = "limit-count"
PRIORITY = 1002
VERSION = "0.5"

_NO_DELAYED_SYNC = -1
_KEY_VERSION = "v1"
_DICT: Final = "plugin-limit-count"

_COUNT = {"oneOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "string"}]}

_SENTINEL_SCHEMA: dict[str, Any] = {
    "properties": {
        "redis_sentinels": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "properties": {"host": {"type": "string", "minLength": 2},
                           "port": {"type": "integer", "minimum": 1, "maximum": 65535}},
            "required": ["host", "port"], "additionalProperties": False}},
        "redis_master_name": {"type": "string", "minLength": 1},
        "redis_role": {"type": "string", "enum": ["master", "slave"], "default": "master"},
        "redis_connect_timeout": {"type": "integer", "minimum": 1, "default": 1000},
        "redis_read_timeout": {"type": "integer", "minimum": 1, "default": 1000},
        "redis_keepalive_timeout": {"type": "integer", "minimum": 1, "default": 60000},
        "redis_database": {"type": "integer", "minimum": 0, "default": 0},
        "redis_username": {"type": "string", "minLength": 1},
        "redis_password": {"type": "string", "minLength": 0},
        "sentinel_username": {"type": "string", "minLength": 1},
        "sentinel_password": {"type": "string", "minLength": 0},
    },
    "required": ["redis_sentinels", "redis_master_name"],
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "count": _COUNT,
        "time_window": _COUNT,
        "window_type": {"type": "string", "enum": ["fixed", "sliding"], "default": "fixed"},
        "rules": {"type": "array", "items": {
            "type": "object",
            "properties": {"count": _COUNT, "time_window": _COUNT, "key": {"type": "string"},
                           "header_prefix": {"type": "string", "description": "prefix for rate limit headers"}},
            "required": ["count", "time_window", "key"]}},
        "group": {"type": "string"},
        "key": {"type": "string", "default": "remote_addr"},
        "key_type": {"type": "string", "enum": ["var", "var_combination", "constant"], "default": "var"},
        "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
        "rejected_msg": {"type": "string", "minLength": 1},
        "policy": {"type": "string", "enum": ["local", "redis", "redis-cluster", "redis-sentinel"],
                   "default": "local"},
        "allow_degradation": {"type": "boolean", "default": False},
        "show_limit_quota_header": {"type": "boolean", "default": True},
        "sync_interval": {"type": "number", "default": _NO_DELAYED_SYNC},
    },
    "oneOf": [{"required": ["count", "time_window"]}, {"required": ["rules"]}],
    # "required": JSON schema does not fill the default in (APISIX's validator does), so an
    # absent policy must not match the redis branch
    "if": {"properties": {"policy": {"enum": ["redis"]}}, "required": ["policy"]},
    "then": lc.REDIS_SCHEMA,
    "else": {
        "if": {"properties": {"policy": {"enum": ["redis-cluster"]}}, "required": ["policy"]},
        "then": lc.REDIS_CLUSTER_SCHEMA,
        "else": {"if": {"properties": {"policy": {"enum": ["redis-sentinel"]}}, "required": ["policy"]},
                 "then": _SENTINEL_SCHEMA},
    },
    # stored encrypted in etcd (APISIX data_encryption)
    "encrypt_fields": ["redis_password", "sentinel_password"],
}

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "limit_header": {"type": "string", "default": "X-RateLimit-Limit"},
        "remaining_header": {"type": "string", "default": "X-RateLimit-Remaining"},
        "reset_header": {"type": "string", "default": "X-RateLimit-Reset"},
    },
}

_POLICY_PROPS = {"redis": lc.REDIS_SCHEMA, "redis-cluster": lc.REDIS_CLUSTER_SCHEMA,
                 "redis-sentinel": _SENTINEL_SCHEMA}
_group_confs: dict[str, dict[str, Any]] = {}


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    """APISIX's extra checks after the JSON schema (same texts)."""
    if schema_type == "metadata":
        return None
    if conf.get("policy") == "redis-sentinel":
        return "policy redis-sentinel is not supported by meshgate (use redis or redis-cluster)"
    has_count = "count" in conf or "time_window" in conf
    if conf.get("rules") is not None and has_count:
        return "count/time_window and rules cannot be specified at the same time"
    if conf.get("group") is not None and conf.get("rules") is not None:
        return "group and rules cannot be specified at the same time"
    group = conf.get("group")
    if group is not None:
        # every conf of one group must be the same (they share one counter)
        fields = set(SCHEMA["properties"]) | set(_POLICY_PROPS.get(conf.get("policy", "local"), {})
                                                  .get("properties", {}))
        mine = {f: conf.get(f) for f in fields}
        prev = _group_confs.setdefault(group, mine)
        if prev != mine:
            return "group conf mismatched"
    if conf.get("policy", "local") in ("redis", "redis-cluster", "redis-sentinel"):
        si = conf.get("sync_interval", _NO_DELAYED_SYNC)
        if si != _NO_DELAYED_SYNC:
            if si < 0.1:
                return "sync_interval should not be smaller than 0.1"
            tw = conf.get("time_window")
            if isinstance(tw, int) and si >= tw:
                return "sync_interval should be smaller than time_window"
    seen: set[str] = set()
    for rule in conf.get("rules") or ():
        if rule["key"] in seen:
            return f"duplicate key '{rule['key']}' in rules"
        seen.add(rule["key"])
    return None


def prepare(conf: dict[str, Any], owner: str = "") -> dict[str, Any]:
    c = copy.deepcopy(conf)
    c.setdefault("window_type", "fixed")
    c.setdefault("key", "remote_addr")
    c.setdefault("key_type", "var")
    c.setdefault("rejected_code", 503)
    c.setdefault("policy", "local")
    c.setdefault("allow_degradation", False)
    c.setdefault("show_limit_quota_header", True)
    if c["policy"] == "redis":
        for k, v in (("redis_port", 6379), ("redis_database", 0), ("redis_timeout", 1000),
                     ("redis_keepalive_pool", 100)):
            c.setdefault(k, v)
    c["_id"] = lc.conf_id(conf, owner)
    if c.get("rules") is None and isinstance(c.get("count"), int) and isinstance(c.get("time_window"), int):
        c["_static"] = (c["count"], c["time_window"], str(c["count"]))   # nothing to resolve per request
        if c["policy"] == "local" and c["window_type"] == "fixed":
            # the commonest conf, with what a request needs in one tuple: count, window, count as
            # text, key type, key, the counter key's start when it does not depend on the route
            group = c.get("group")
            scope = f"{group}:" if group is not None else f"{c['_id']}:" if "#" in c["_id"] else None
            c["_fast"] = (c["count"], c["time_window"], str(c["count"]), c["key_type"], c["key"], scope,
                          bool(c["show_limit_quota_header"]))
    return c


class _Fail(Exception):
    """The limit cannot be evaluated (bad variable value, shared dict full, redis down)."""

    def __init__(self, reason: str, body: Any = None) -> None:
        super().__init__(reason)
        self.body = body


def _resolve_number(ctx: Any, value: Any) -> int:
    if not isinstance(value, str):
        return int(value)
    text, _ = lc.resolve_template(value, ctx)
    try:
        n = float(text)
    except ValueError:
        raise _Fail("resolved value is not a number") from None
    if n <= 0:
        raise _Fail(f"resolved value must be a positive number, got: {text}")
    if n != math.floor(n) or n > 9007199254740991:
        raise _Fail(f"resolved value must be an integer, got: {text}")
    return int(n)


def _rules(conf: dict[str, Any], ctx: Any) -> list[tuple[int, int, str, str | None]]:
    """(count, time_window, resolved key, header prefix) per applicable rule."""
    if conf.get("rules") is None:
        return [(_resolve_number(ctx, conf["count"]), _resolve_number(ctx, conf["time_window"]),
                 lc.resolve_key(conf["key_type"], conf["key"], ctx), None)]
    out = []
    for i, rule in enumerate(conf["rules"], 1):
        key, n = lc.resolve_template(rule["key"], ctx)
        if n == 0:
            continue  # a rule keyed on a variable this request lacks does not apply
        out.append((_resolve_number(ctx, rule["count"]), _resolve_number(ctx, rule["time_window"]), key,
                    rule.get("header_prefix") or str(i)))
    return out


# -- counters --------------------------------------------------------------------------------
def _local_fixed(key: str, count: int, window: int, cost: int) -> tuple[bool, int, float]:
    used, reset = lc.shared(_DICT).incr_ttl(key, cost, 0, ttl=window)   # one lock round trip
    remaining = count - int(used)
    return remaining >= 0, remaining, reset


def _local_sliding(key: str, count: int, window: int, cost: int) -> tuple[bool, int, float]:
    """APISIX's sliding window: this window's count plus the previous window's, weighted
    by the part of it still inside the sliding window; checked and counted atomically."""
    d = lc.shared(_DICT)
    with d.locked() as tx:
        t = tx.now
        wid = math.floor(t / window)
        cur_key, last_key = f"{key}.{wid}.counter", f"{key}.{wid - 1}.counter"
        remaining_time = window - t % window
        last = min(tx.get(last_key) or 0.0, count)
        cur = tx.get(cur_key) or 0.0
        estimated = last / window * remaining_time + cur
        if cur >= count or estimated >= count:
            accepted = False
        else:
            cur = tx.incr(cur_key, cost, 0, ttl=window * 2)
            accepted = True
    if not accepted:
        if cur >= count or last == 0:
            return False, 0, math.ceil(remaining_time * 100) / 100
        delay = max(remaining_time - (count - cur) / (last / window), 0.0)
        return False, 0, math.ceil(delay * 100) / 100
    remaining = math.floor(count - cur - last / window * remaining_time)
    return True, remaining, math.ceil(remaining_time * 100) / 100


_FIXED_SCRIPT = """
local ttl = redis.call('pttl', KEYS[1])
if ttl < 0 then
    redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[1])
    return {tonumber(ARGV[2]), tonumber(ARGV[1]) * 1000}
end
return {redis.call('incrby', KEYS[1], ARGV[2]), ttl}
"""

# decide and count in one step; the previous window's count comes in ARGV (it is frozen)
_SLIDING_SCRIPT = """
local cost, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local remaining_time, last = tonumber(ARGV[4]), math.min(tonumber(ARGV[6]), tonumber(ARGV[2]))
local cur = 0
local ttl = redis.call('pttl', KEYS[1])
if ttl >= 0 then cur = tonumber(redis.call('get', KEYS[1]) or 0) end
if cur >= limit or last / window * remaining_time + cur >= limit then
    return {0, cur, tostring(last)}
end
if ttl < 0 then
    redis.call('set', KEYS[1], cost, 'EX', ARGV[5])
    return {1, cost, tostring(last)}
end
return {1, redis.call('incrby', KEYS[1], cost), tostring(last)}
"""


async def _redis_fixed(conf: dict[str, Any], key: str, count: int, window: int,
                       cost: int) -> tuple[bool, int, float]:
    rkey = f"plugin-{NAME}:{_KEY_VERSION}:{key}"
    try:
        used, ttl_ms = await lc.run_script(conf, _FIXED_SCRIPT, [rkey], [window, cost])
    except lc.RedisFailure as e:
        raise _Fail(f"failed to limit count: {e}", {"error_msg": "failed to limit count"}) from e
    remaining = count - int(used)
    return remaining >= 0, remaining, int(ttl_ms) / 1000.0


async def _redis_sliding(conf: dict[str, Any], key: str, count: int, window: int,
                         cost: int) -> tuple[bool, int, float]:
    import time

    t = time.time()
    wid = math.floor(t / window)
    cur_key = f"plugin-{NAME}:{key}.{wid}.counter"
    last_key = f"plugin-{NAME}:{key}.{wid - 1}.counter"
    remaining_time = window - t % window
    try:
        last = await lc.run_command(conf, "GET", last_key)
        res = await lc.run_script(conf, _SLIDING_SCRIPT, [cur_key],
                                  [cost, count, window, remaining_time, window * 2, int(last or 0)])
    except lc.RedisFailure as e:
        raise _Fail(f"failed to limit count: {e}", {"error_msg": "failed to limit count"}) from e
    accepted, cur, lastv = int(res[0]), float(res[1]), float(res[2])
    if not accepted:
        if cur >= count or lastv == 0:
            return False, 0, math.ceil(remaining_time * 100) / 100
        delay = max(remaining_time - (count - cur) / (lastv / window), 0.0)
        return False, 0, math.ceil(delay * 100) / 100
    return True, math.floor(count - cur - lastv / window * remaining_time), math.ceil(remaining_time * 100) / 100


_DEFAULT_HEADERS: Final = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _header_names(ctx: Any, prefix: str | None) -> tuple[str, str, str]:
    md = None
    if isinstance(ctx, CtxBase):
        md = ctx.plugin_metadata(NAME)
    else:
        pm = getattr(ctx, "plugin_metadata", None)
        if pm is not None:
            md = pm(NAME)
    if not md:
        names = _DEFAULT_HEADERS
    else:
        names = (md.get("limit_header", _DEFAULT_HEADERS[0]), md.get("remaining_header", _DEFAULT_HEADERS[1]),
                 md.get("reset_header", _DEFAULT_HEADERS[2]))
    if prefix is None:
        return names
    a, b, c = (n.replace("RateLimit-", f"{prefix}-RateLimit-", 1) for n in names)
    return a, b, c


def access(conf: dict[str, Any], ctx: Any) -> Any:
    # local: a plain call (no coroutine on the hot path); redis: an awaitable the runtime awaits
    fast = conf.get("_fast")
    if fast is not None:
        return _limit_fast(conf, fast, ctx)
    if conf["policy"] == "local":
        return _limit_local(conf, ctx, 1)
    return _limit_redis(conf, ctx, 1)


def _limit_fast(conf: dict[str, Any], fast: tuple[int, int, str, str, str, str | None, bool], ctx: Any) -> Any:
    """_limit_local for a fixed window with one rule and numbers given (prepare's ``_fast``),
    reading no conf but that tuple on an accepted request."""
    count, window, count_str, key_type, key, scope, show = fast
    try:
        val = lc.resolve_key(key_type, key, ctx)
        full = scope + val if scope is not None else lc.scope_key(conf["_id"], ctx, val)
        used, reset = lc.shared(_DICT).incr_ttl(full, 1, 0, ttl=window)   # _local_fixed, inlined
    except SharedDictError as e:
        return _failed(conf, e)
    remaining = count - int(used)
    ok = remaining >= 0
    if show:
        _set_quota(ctx, _header_names(ctx, None),
                   (count_str, str(remaining) if ok else "0", lc.fmt_num(math.floor(reset * 100) / 100)))
    return _verdict(conf, ok)


def _failed(conf: dict[str, Any], e: Exception) -> Any:
    if conf["allow_degradation"]:
        return None
    body = getattr(e, "body", None)
    return (500, body) if body is not None else 500


def _full_key(conf: dict[str, Any], ctx: Any, key: str) -> str:
    group = conf.get("group")
    return f"{group}:{key}" if group is not None else lc.scope_key(conf["_id"], ctx, key)


def _limit_local(conf: dict[str, Any], ctx: Any, cost: int) -> Any:
    count_fn = _local_sliding if conf["window_type"] == "sliding" else _local_fixed
    static = conf.get("_static")
    if static is not None:   # the common conf: one rule, numbers given
        try:
            key = _full_key(conf, ctx, lc.resolve_key(conf["key_type"], conf["key"], ctx))
            ok, remaining, reset = count_fn(key, static[0], static[1], cost)
        except SharedDictError as e:
            return _failed(conf, e)
        return _finish(conf, ctx, static[0], None, ok, remaining, reset, static[2])
    try:
        rules = _rules(conf, ctx)
        if not rules:
            raise _Fail("no applicable rule")
        for count, window, key, prefix in rules:
            ok, remaining, reset = count_fn(_full_key(conf, ctx, key), count, window, cost)
            res = _finish(conf, ctx, count, prefix, ok, remaining, reset)
            if res is not None:
                return res
    except (_Fail, SharedDictError) as e:
        return _failed(conf, e)
    return None


async def _limit_redis(conf: dict[str, Any], ctx: Any, cost: int) -> Any:
    count_fn = _redis_sliding if conf["window_type"] == "sliding" else _redis_fixed
    try:
        if conf["policy"] not in ("redis", "redis-cluster"):
            raise _Fail(f"policy {conf['policy']} is not supported", {"error_msg": "failed to limit count"})
        rules = _rules(conf, ctx)
        if not rules:
            raise _Fail("no applicable rule")
        for count, window, key, prefix in rules:
            ok, remaining, reset = await count_fn(conf, _full_key(conf, ctx, key), count, window, cost)
            res = _finish(conf, ctx, count, prefix, ok, remaining, reset)
            if res is not None:
                return res
    except _Fail as e:
        return _failed(conf, e)
    return None


def _finish(conf: dict[str, Any], ctx: Any, count: int, prefix: str | None, ok: bool, remaining: int,
            reset: float, count_str: str | None = None) -> Any:
    reset = math.floor(reset * 100) / 100
    if conf["show_limit_quota_header"]:
        _set_quota(ctx, _header_names(ctx, prefix),
                   (count_str or str(count), str(remaining) if ok else "0", lc.fmt_num(reset)))
    return _verdict(conf, ok)


def _set_quota(ctx: Any, names: tuple[str, str, str], values: tuple[str, str, str]) -> None:
    """The X-RateLimit-* headers (names as plugin metadata and rules say)."""
    if isinstance(ctx, CtxBase):
        ctx.set_resp_headers(names, values)
        return
    batch = getattr(ctx, "set_resp_headers", None)
    if batch is not None:
        batch(names, values)
    else:
        for name, value in zip(names, values):
            ctx.set_resp_header(name, value)


def _verdict(conf: dict[str, Any], ok: bool) -> Any:
    if ok:
        return None
    if conf.get("rejected_msg") is not None:
        return conf["rejected_code"], {"error_msg": conf["rejected_msg"]}
    return conf["rejected_code"]
