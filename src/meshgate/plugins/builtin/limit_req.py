"""limit-req: leaky-bucket request rate limiting (APISIX 1001, lua-resty-limit-traffic's req).

Per key the bucket keeps ``excess`` (requests above the rate, in thousandths) and the time
of the last accepted request.  A request drains ``rate`` per second since then and adds
one; above ``burst`` it is rejected (``rejected_code``, 503 by default), otherwise it waits
``excess / rate`` seconds (``asyncio.sleep``: the worker keeps serving others) unless
``nodelay``.  ``local`` keeps the bucket in the ``plugin-limit-req`` shared dict, read and
written in one locked step, so every worker drains the same bucket; ``redis`` /
``redis-cluster`` keep it in one redis hash updated by one Lua script.
"""

from __future__ import annotations

import asyncio
import copy
import math
import time
from typing import Any

from . import _limit_common as lc
from ...shared import SharedDictError

NAME = "limit-req"
PRIORITY = 1001
VERSION = "0.1"

_DICT = "plugin-limit-req"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rate": {"type": "number", "exclusiveMinimum": 0},
        "burst": {"type": "number", "minimum": 0},
        "key": {"type": "string"},
        "key_type": {"type": "string", "enum": ["var", "var_combination"], "default": "var"},
        "policy": {"type": "string", "enum": ["redis", "redis-cluster", "local"], "default": "local"},
        "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
        "rejected_msg": {"type": "string", "minLength": 1},
        "nodelay": {"type": "boolean", "default": False},
        "allow_degradation": {"type": "boolean", "default": False},
    },
    "required": ["rate", "burst", "key"],
    # "required": JSON schema does not fill the default in (APISIX's validator does), so an
    # absent policy must not match the redis branch
    "if": {"properties": {"policy": {"enum": ["redis"]}}, "required": ["policy"]},
    "then": lc.REDIS_SCHEMA,
    "else": {"if": {"properties": {"policy": {"enum": ["redis-cluster"]}}, "required": ["policy"]},
             "then": lc.REDIS_CLUSTER_SCHEMA},
    "encrypt_fields": ["redis_password"],   # stored encrypted in etcd (APISIX data_encryption)
}


def prepare(conf: dict[str, Any], owner: str = "") -> dict[str, Any]:
    c = copy.deepcopy(conf)
    for k, v in (("key_type", "var"), ("policy", "local"), ("rejected_code", 503), ("nodelay", False),
                 ("allow_degradation", False)):
        c.setdefault(k, v)
    # lua-resty-limit-traffic works in thousandths of a request
    c["_rate"] = math.floor(c["rate"] * 1000)
    c["_burst"] = math.floor(c["burst"] * 1000)
    c["_ttl"] = math.ceil(c["burst"] / c["rate"]) + 1
    c["_id"] = lc.conf_id(conf, owner)
    return c


def _local(conf: dict[str, Any], key: str) -> float | None:
    """The excess after this request, or None when rejected."""
    rate, burst, ttl = conf["_rate"], conf["_burst"], conf["_ttl"]
    d = lc.shared(_DICT)
    with d.locked() as tx:
        now_ms = tx.now * 1000
        ek, lk = key + "|excess", key + "|last"
        excess, last = tx.get(ek), tx.get(lk)
        if excess is not None and last is not None:
            excess = max(excess - rate * abs(now_ms - last) / 1000 + 1000, 0.0)
            if excess > burst:
                return None
        else:
            excess = 0.0
        tx.set(ek, excess, ttl)
        tx.set(lk, now_ms, ttl)
    return excess


_SCRIPT = """
local rate, burst, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local st = redis.call('hmget', KEYS[1], 'excess', 'last')
local excess = 0
if st[1] and st[2] then
    excess = math.max(tonumber(st[1]) - rate * math.abs(now - tonumber(st[2])) / 1000 + 1000, 0)
    if excess > burst then
        return {0, tostring(excess)}
    end
end
redis.call('hset', KEYS[1], 'excess', excess, 'last', now)
redis.call('expire', KEYS[1], ttl)
return {1, tostring(excess)}
"""


async def _redis(conf: dict[str, Any], key: str) -> float | None:
    res = await lc.run_script(conf, _SCRIPT, [f"limit_req:{key}"],
                              [conf["_rate"], conf["_burst"], time.time() * 1000, conf["_ttl"]])
    if int(res[0]) == 0:
        return None
    return float(res[1])


def access(conf: dict[str, Any], ctx: Any) -> Any:
    # local: decided by a plain call; only a delay or the redis round trip is awaited
    key = lc.scope_key(conf["_id"], ctx, lc.resolve_key(conf["key_type"], conf["key"], ctx))
    if conf["policy"] != "local":
        return _access_redis(conf, key)
    try:
        excess = _local(conf, key)
    except SharedDictError:
        return None if conf["allow_degradation"] else 500
    return _decide(conf, excess)


async def _access_redis(conf: dict[str, Any], key: str) -> Any:
    try:
        excess = await _redis(conf, key)
    except lc.RedisFailure:
        return None if conf["allow_degradation"] else 500
    res = _decide(conf, excess)
    if res is not None and not isinstance(res, (int, tuple)):
        await res
        return None
    return res


def _decide(conf: dict[str, Any], excess: float | None) -> Any:
    if excess is None:
        if conf.get("rejected_msg") is not None:
            return conf["rejected_code"], {"error_msg": conf["rejected_msg"]}
        return conf["rejected_code"]
    delay = excess / conf["_rate"]
    if delay >= 0.001 and not conf["nodelay"]:
        return asyncio.sleep(delay)   # awaited by the runtime: the worker serves others meanwhile
    return None
