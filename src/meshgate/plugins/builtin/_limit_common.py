"""Helpers shared by limit-count, limit-req and limit-conn (not a plugin: no NAME).

- the redis part of APISIX's schemas (``apisix/utils/redis-schema.lua``),
- key resolution (``key_type`` var / var_combination / constant, falling back to the
  client address when the key is empty, as APISIX does),
- the counter scope: APISIX prefixes every key with the conf's parent resource and the
  plugin conf version (so two routes with the same conf count apart, a global rule counts
  once for every route, and a changed conf starts over); here the owner the runtime passes
  to ``prepare`` (``route:1``, ``global_rule:g``, ``route:1&consumer:jack``) and a digest of
  the conf,
- one ``redis.asyncio`` client per distinct connection setting, per worker process.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

from ...shared import SharedDict, open_dict
from ..chain import CtxBase

__all__ = ["REDIS_SCHEMA", "REDIS_CLUSTER_SCHEMA", "resolve_template", "resolve_key", "conf_digest", "conf_id",
           "scope_key", "fmt_num", "shared", "redis_client", "RedisFailure", "client_ip", "run_script", "run_command"]

REDIS_SCHEMA: dict[str, Any] = {
    "properties": {
        "redis_host": {"type": "string", "minLength": 2},
        "redis_port": {"type": "integer", "minimum": 1, "default": 6379},
        "redis_username": {"type": "string", "minLength": 1},
        "redis_password": {"type": "string", "minLength": 0},
        "redis_database": {"type": "integer", "minimum": 0, "default": 0},
        "redis_timeout": {"type": "integer", "minimum": 1, "default": 1000},
        "redis_ssl": {"type": "boolean", "default": False},
        "redis_ssl_verify": {"type": "boolean", "default": False},
        "redis_keepalive_timeout": {"type": "integer", "minimum": 1000, "default": 10000},
        "redis_keepalive_pool": {"type": "integer", "minimum": 1, "default": 100},
    },
    "required": ["redis_host"],
}

REDIS_CLUSTER_SCHEMA: dict[str, Any] = {
    "properties": {
        "redis_cluster_nodes": {"type": "array", "minItems": 1,
                                "items": {"type": "string", "minLength": 2, "maxLength": 100}},
        "redis_password": {"type": "string", "minLength": 0},
        "redis_timeout": {"type": "integer", "minimum": 1, "default": 1000},
        "redis_cluster_name": {"type": "string"},
        "redis_cluster_ssl": {"type": "boolean", "default": False},
        "redis_cluster_ssl_verify": {"type": "boolean", "default": False},
        "redis_keepalive_timeout": {"type": "integer", "minimum": 1000, "default": 10000},
        "redis_keepalive_pool": {"type": "integer", "minimum": 1, "default": 100},
    },
    "required": ["redis_cluster_nodes", "redis_cluster_name"],
}

# APISIX's core.utils.resolve_var: "$name" or "${name}"; "\$" is a literal dollar
_VAR = re.compile(r"(\\)?\$(?:\{(\w+)\}|(\w+))")


def resolve_template(tpl: str, ctx: Any) -> tuple[str, int]:
    """Substitute ``$var`` / ``${var}``; returns the text and how many vars had a value."""
    if "$" not in tpl:
        return tpl, 0
    n = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal n
        if m.group(1):
            return m.group(0)[1:]
        v = ctx.var(m.group(2) or m.group(3))
        if v is None:
            return ""
        n += 1
        return str(v)

    return _VAR.sub(sub, tpl), n


def client_ip(ctx: Any) -> str:
    return str(ctx.var("remote_addr") or "")


def resolve_key(key_type: str, key: str, ctx: Any) -> str:
    """The limiting key of this request (APISIX: empty key -> the client address)."""
    val: Any
    if key_type == "var_combination":
        val, n = resolve_template(key, ctx)
        if n == 0:
            val = None
    elif key_type == "constant":
        val = key
    elif isinstance(ctx, CtxBase):
        val = ctx.var(key)    # a native call (the same method as below)
    else:
        val = ctx.var(key)
    if val is None:
        return client_ip(ctx)
    return str(val)


def conf_digest(conf: Any) -> str:
    """A stable identity of a plugin conf (APISIX: the conf version of its parent)."""
    return hashlib.blake2b(json.dumps(conf, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def conf_id(conf: Any, owner: str) -> str:
    """The counters' scope: the owner (when the runtime named it) and the conf's digest."""
    return f"{owner}#{conf_digest(conf)}" if owner else conf_digest(conf)


def scope_key(conf_id: str, ctx: Any, key: str) -> str:
    if "#" in conf_id:
        return f"{conf_id}:{key}"
    route = ctx.var("route_id")   # no owner given: the route the request matched
    return f"{route if route is not None else ''}:{conf_id}:{key}"


_FMT: Final[dict[float, str]] = {}


def fmt_num(x: float) -> str:
    """A number as APISIX writes it into a header (Lua's tostring: no trailing .0).  Resets
    repeat (hundredths of a window), so the text is kept in a bounded cache."""
    s = _FMT.get(x)
    if s is None:
        s = str(int(x)) if x == int(x) else f"{x:.2f}".rstrip("0").rstrip(".")
        if len(_FMT) >= 8192:
            _FMT.clear()
        _FMT[x] = s
    return s


_HANDLES: Final[dict[str, SharedDict]] = {}


def shared(name: str) -> SharedDict:
    """APISIX's ``ngx.shared["plugin-<name>"]``: one dict for every worker (the handle is
    looked up once per process: this runs per request)."""
    d = _HANDLES.get(name)
    if d is None:
        d = _HANDLES[name] = open_dict(name)
    return d


class RedisFailure(Exception):
    """Redis could not answer (connection, timeout, script error)."""


_clients: dict[tuple[Any, ...], Any] = {}


def redis_client(conf: dict[str, Any]) -> Any:
    """The pooled client for this conf's redis settings (one per worker and setting)."""
    policy = conf.get("policy", "local")
    timeout = conf.get("redis_timeout", 1000) / 1000.0
    pool = conf.get("redis_keepalive_pool", 100)
    if policy == "redis-cluster":
        key: tuple[Any, ...] = ("cluster", tuple(conf["redis_cluster_nodes"]), conf.get("redis_password"),
                                conf.get("redis_cluster_ssl", False), conf.get("redis_cluster_ssl_verify", False),
                                timeout, pool)
    else:
        key = ("single", conf["redis_host"], conf.get("redis_port", 6379), conf.get("redis_database", 0),
               conf.get("redis_username"), conf.get("redis_password"), conf.get("redis_ssl", False),
               conf.get("redis_ssl_verify", False), timeout, pool)
    cli = _clients.get(key)
    if cli is not None:
        return cli
    import redis.asyncio as aioredis  # here: workers without a redis policy never load it

    if policy == "redis-cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = []
        for n in conf["redis_cluster_nodes"]:
            host, _, port = n.rpartition(":")
            nodes.append(ClusterNode(host or n, int(port or 6379)))
        ssl = bool(conf.get("redis_cluster_ssl", False))
        cli = RedisCluster(startup_nodes=nodes, password=conf.get("redis_password") or None,
                           socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=pool,
                           ssl=ssl, ssl_cert_reqs="required" if conf.get("redis_cluster_ssl_verify") else "none")
    else:
        ssl = bool(conf.get("redis_ssl", False))
        extra: dict[str, Any] = {}
        if ssl:
            extra = {"ssl": True, "ssl_cert_reqs": "required" if conf.get("redis_ssl_verify") else "none"}
        cli = aioredis.Redis(host=conf["redis_host"], port=conf.get("redis_port", 6379),
                             db=conf.get("redis_database", 0), username=conf.get("redis_username"),
                             password=conf.get("redis_password") or None, socket_timeout=timeout,
                             socket_connect_timeout=timeout, max_connections=pool, **extra)
    _clients[key] = cli
    return cli


async def run_script(conf: dict[str, Any], source: str, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA (EVAL on NOSCRIPT) of ``source``; every redis error becomes RedisFailure."""
    cli = redis_client(conf)
    import redis.exceptions

    try:
        script = _scripts.get((id(cli), source))
        if script is None:
            script = _scripts[(id(cli), source)] = cli.register_script(source)
        return await script(keys=keys, args=args)
    except (redis.exceptions.RedisError, OSError) as e:
        raise RedisFailure(str(e) or type(e).__name__) from e


async def run_command(conf: dict[str, Any], *args: Any) -> Any:
    cli = redis_client(conf)
    import redis.exceptions

    try:
        return await cli.execute_command(*args)
    except (redis.exceptions.RedisError, OSError) as e:
        raise RedisFailure(str(e) or type(e).__name__) from e


_scripts: dict[tuple[int, str], Any] = {}
