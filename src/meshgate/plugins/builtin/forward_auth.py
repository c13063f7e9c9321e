"""forward-auth: ask an external service whether the request may pass.

APISIX semantics (``apisix/plugins/forward-auth.lua``): in the access phase the plugin sends
``request_method`` (GET, or POST with the client's body) to ``uri`` with
``X-Forwarded-Proto/-Method/-Host/-Uri/-For`` built from the real request (client-sent
values of these are never relayed), the ``extra_headers`` (``$var`` resolved) and the
client's ``request_headers``. An answer below 300 lets the request through, with every
``upstream_headers`` field copied from the answer to the upstream request (or removed from
it when the answer lacks it, so a client cannot inject one). An answer of 300 or more is
sent to the client as is (status, body, and the ``client_headers`` fields). When the service
cannot be reached: ``status_on_error`` (403), or pass through with ``allow_degradation``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ._httpclient import HTTPClientError, request

NAME = "forward-auth"
PRIORITY = 2002
VERSION = "0.1"

logger = logging.getLogger("meshgate.plugins.forward-auth")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "uri": {"type": "string"},
        "allow_degradation": {"type": "boolean", "default": False},
        "status_on_error": {"type": "integer", "minimum": 200, "maximum": 599, "default": 403},
        "ssl_verify": {"type": "boolean", "default": True},
        "request_method": {"type": "string", "default": "GET", "enum": ["GET", "POST"],
                           "description": "the method for client to request the authorization service"},
        "max_req_body_size": {"type": "integer", "minimum": 1, "default": 67108864},
        "request_headers": {"type": "array", "default": [], "items": {"type": "string"}},
        "extra_headers": {
            "type": "object",
            "minProperties": 1,
            "patternProperties": {"^[^:]+$": {"type": "string"}},
        },
        "upstream_headers": {"type": "array", "default": [], "items": {"type": "string"}},
        "client_headers": {"type": "array", "default": [], "items": {"type": "string"}},
        "timeout": {"type": "integer", "minimum": 1, "maximum": 60000, "default": 3000,
                    "description": "timeout in milliseconds"},
        "keepalive": {"type": "boolean", "default": True},
        "keepalive_timeout": {"type": "integer", "minimum": 1000, "default": 60000},
        "keepalive_pool": {"type": "integer", "minimum": 1, "default": 5},
    },
    "required": ["uri"],
}

_VAR = re.compile(r"(?<!\\)\$(\{\s*([^}]+?)\s*\}|([\w.]+))")
_DEFAULT_SPLIT = re.compile(r"\s*\?\?\s*")
_GENERATED = ("X-Forwarded-Proto", "X-Forwarded-Method", "X-Forwarded-Host", "X-Forwarded-Uri", "X-Forwarded-For")


def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    out = dict(conf)
    for k, v in (("allow_degradation", False), ("status_on_error", 403), ("ssl_verify", True),
                 ("request_method", "GET"), ("max_req_body_size", 67108864), ("timeout", 3000),
                 ("keepalive", True), ("keepalive_timeout", 60000), ("keepalive_pool", 5)):
        out.setdefault(k, v)
    out["request_headers"] = tuple(out.get("request_headers") or ())
    out["upstream_headers"] = tuple(out.get("upstream_headers") or ())
    out["client_headers"] = tuple(out.get("client_headers") or ())
    out["extra_headers"] = tuple((out.get("extra_headers") or {}).items())
    return out


def resolve_var(template: str, ctx: Any) -> str:
    """APISIX ``core.utils.resolve_var``: ``$name`` / ``${name}`` / ``${name ?? default}``."""
    if "$" not in template:
        return template

    def sub(m: re.Match[str]) -> str:
        segs = _DEFAULT_SPLIT.split(m.group(2) or m.group(3))
        v = ctx.var(segs[0])
        if v is None:
            return segs[1] if len(segs) > 1 else ""
        return str(v)

    return _VAR.sub(sub, template)


def _auth_headers(conf: dict[str, Any], ctx: Any) -> list[tuple[str, str]]:
    gen: dict[str, str | None] = {
        "X-Forwarded-Proto": ctx.var("scheme"),
        "X-Forwarded-Method": ctx.method,
        "X-Forwarded-Host": ctx.var("host"),
        "X-Forwarded-Uri": ctx.var("request_uri"),
        "X-Forwarded-For": ctx.remote_addr,
    }
    if conf["request_method"] == "POST":
        gen["Content-Encoding"] = ctx.req_header("content-encoding")
    for name, tpl in conf["extra_headers"]:
        gen[name] = resolve_var(str(tpl), ctx)
    taken = {k.lower() for k, v in gen.items() if v is not None}
    for name in conf["request_headers"]:
        if name.lower() not in taken:
            value = ctx.req_header(name)
            if value is not None:
                gen[name] = value
                taken.add(name.lower())
    return [(k, str(v)) for k, v in gen.items() if v is not None]


async def access(conf: dict[str, Any], ctx: Any) -> Any:
    headers = _auth_headers(conf, ctx)
    body = None
    if conf["request_method"] == "POST":
        body = await ctx.read_body(max_size=conf["max_req_body_size"]) or b""
    try:
        res = await request(conf["request_method"], conf["uri"], headers=headers, body=body,
                            timeout=conf["timeout"] / 1000, ssl_verify=conf["ssl_verify"],
                            keepalive=conf["keepalive"], keepalive_timeout=conf["keepalive_timeout"] / 1000,
                            keepalive_pool=conf["keepalive_pool"])
    except (HTTPClientError, OSError, TimeoutError) as e:
        if conf["allow_degradation"]:
            return None
        logger.warning("failed to process forward auth, err: %s", e or type(e).__name__)
        return conf["status_on_error"], None

    if res.status >= 300:
        extra = {}
        for name in conf["client_headers"]:
            value = res.header(name)
            if value is not None:
                extra[name] = value
        return res.status, res.body, extra

    for name in conf["upstream_headers"]:
        ctx.set_req_header(name, res.header(name))
    return None
