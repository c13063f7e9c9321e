"""key-auth: identify the consumer by an API key sent in a header or a query argument.

APISIX semantics: the header wins over the query argument; a missing key is
``401 {"message":"Missing API key in request"}``, an unknown one
``401 {"message":"Invalid API key in request"}``, both with
``WWW-Authenticate: apikey realm="<realm>"``. With ``anonymous_consumer`` a failed
authentication attaches that consumer instead (``401 {"message":"Invalid user
authorization"}`` when it does not exist). ``hide_credentials`` removes the key the
consumer was found with before the request goes upstream (and, on the anonymous
fallback, the key from both places).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from ..chain import CtxBase
from ._auth import ANONYMOUS_CONSUMER_SCHEMA, UNDER_MULTI_AUTH, anonymous, found, realm_schema

NAME: Final = "key-auth"
PRIORITY = 2500
VERSION = "0.1"
TYPE = "auth"

logger = logging.getLogger("meshgate.plugins.key-auth")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "header": {"type": "string", "default": "apikey"},
        "query": {"type": "string", "default": "apikey"},
        "realm": realm_schema("key"),
        "hide_credentials": {"type": "boolean", "default": False},
        "anonymous_consumer": ANONYMOUS_CONSUMER_SCHEMA,
    },
}

CONSUMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"key": {"type": "string"}},
    "encrypt_fields": ["key"],   # stored encrypted in etcd (APISIX data_encryption)
    "required": ["key"],
}

def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    out = dict(conf)
    out.setdefault("header", "apikey")
    out.setdefault("query", "apikey")
    out.setdefault("realm", "key")
    out.setdefault("hide_credentials", False)
    out["_www_authenticate"] = f'apikey realm="{out["realm"]}"'
    return out


def _strip_key(conf: dict[str, Any], ctx: Any, *, header: bool, query: bool) -> None:
    if header and ctx.req_header(conf["header"]) is not None:
        ctx.set_req_header(conf["header"], None)
    if query:
        args = dict(ctx.args() or {})
        if conf["query"] in args:
            del args[conf["query"]]
            ctx.set_args(args)


def rewrite(conf: dict[str, Any], ctx: Any) -> Any:
    if not isinstance(ctx, CtxBase):   # a ctx of another kind: by name, the general path
        return _rewrite(conf, ctx, ctx.req_header(conf["header"]))
    key = ctx.req_header(conf["header"])
    if key is not None and not conf["hide_credentials"]:
        # the common request: a key in the header that names a consumer
        hit = ctx.find_consumer(NAME, "key", key)
        if hit is not None and hit[0] is not None:
            ctx.attach_consumer(hit[0], hit[1])
            return None
    return _rewrite(conf, ctx, key)


def _rewrite(conf: dict[str, Any], ctx: Any, key: Any) -> Any:
    """Every other case: the query argument, unknown keys, hidden credentials, anonymous."""
    multi = conf.get(UNDER_MULTI_AUTH, False)
    from_header = key is not None
    if key is None:
        key = (ctx.args() or {}).get(conf["query"])

    hit = None
    if key is None:
        err = "Missing API key in request"
    else:
        hit = found(ctx.find_consumer(NAME, "key", key)) if isinstance(key, str) else None
        if hit is None:
            detail = "failed to find consumer: invalid api key"
            if multi:
                err = detail
            else:
                logger.warning("%s", detail)
                err = "Invalid API key in request"
        elif conf["hide_credentials"]:
            _strip_key(conf, ctx, header=from_header, query=not from_header)

    if hit is None:
        www = {"WWW-Authenticate": conf["_www_authenticate"]}
        anon_name = conf.get("anonymous_consumer")
        if not anon_name:
            return 401, {"message": err}, www
        if conf["hide_credentials"]:
            _strip_key(conf, ctx, header=True, query=True)
        consumer = anonymous(ctx, anon_name)
        if consumer is None:
            detail = f"failed to get anonymous consumer {anon_name}"
            if multi:
                return 401, detail, www
            logger.error("key-auth failed to authenticate the request, code: 401. error: %s", detail)
            return 401, {"message": "Invalid user authorization"}, www
        hit = (consumer, {})

    ctx.attach_consumer(*hit)
    return None
