"""redirect: answer with a redirect instead of proxying.

As APISIX ``apisix/plugins/redirect.lua``: ``uri`` is a template (``$var``, ``${var}``,
``\\$`` for a literal ``\\$``); ``regex_uri`` substitutes on ``$uri`` and passes the request on
when it does not match; ``http_to_https`` answers ``301`` (GET/HEAD) or ``308`` (other methods)
to ``https://$host[:port]$request_uri`` when the request is not already https (the client's
``X-Forwarded-Proto`` counts), the port being ``plugin_attr.redirect.https_port``, else a port of
``apisix.ssl.listen`` when ssl is enabled, else none (443).  The body is nginx's page for the
status, with a ``Location`` header.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from ._traffic_util import HTML_TYPE, Substitution, nginx_page, uri_safe_encode

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "rewrite", "https_port"]

NAME = "redirect"
PRIORITY = 900
VERSION = "0.1"

# the segments of a uri template: \$host (kept literally) | ${host} | $host | '$' or other text
_SEG_PATTERN = r"(\\\$[0-9a-zA-Z_]+)|\$\{([0-9a-zA-Z_]+)\}|\$([0-9a-zA-Z_]+)|(\$|[^$\\]+)"
_SEG_RE = re.compile(_SEG_PATTERN)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ret_code": {"type": "integer", "minimum": 200, "default": 302},
        "uri": {"type": "string", "minLength": 2, "pattern": _SEG_PATTERN},
        "regex_uri": {
            "description": "params for generating new uri that substitute from client uri, first param is regular "
                           "expression, the second one is uri template",
            "type": "array", "maxItems": 2, "minItems": 2,
            "items": {"description": "regex uri", "type": "string"},
        },
        "http_to_https": {"type": "boolean"},
        "encode_uri": {"type": "boolean", "default": False},
        "append_query_string": {"type": "boolean", "default": False},
    },
    "oneOf": [
        {"required": ["uri"]},
        {"required": ["regex_uri"]},
        {"required": ["http_to_https"]},
    ],
}


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    rx = conf.get("regex_uri")
    if rx:
        try:
            Substitution(rx[0], rx[1])
        except (re.error, ValueError) as e:
            return f"invalid regex_uri ({rx[0]}, {rx[1]}), err:{e}"
    if conf.get("http_to_https") and conf.get("append_query_string"):
        return "only one of `http_to_https` and `append_query_string` can be configured."
    return None


# A template segment: (literal text, None) or (None, variable name).
_Seg = tuple[str | None, str | None]


def _parse(uri: str) -> tuple[_Seg, ...]:
    segs: list[_Seg] = []
    for m in _SEG_RE.finditer(uri):
        name = m.group(2) or m.group(3)
        segs.append((None, name) if name else (m.group(1) or m.group(4), None))
    return tuple(segs)


def _render(segs: tuple[_Seg, ...], ctx: Any) -> str:
    out = []
    for text, name in segs:
        if name is None:
            out.append(text or "")
        else:
            v = ctx.var(name)
            out.append("" if v is None else str(v))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Conf:
    ret_code: int
    uri: tuple[_Seg, ...] | None
    regex_uri: Substitution | None
    http_to_https: bool
    encode_uri: bool
    append_query_string: bool


def prepare(conf: dict[str, Any]) -> Conf:
    rx = conf.get("regex_uri")
    return Conf(ret_code=int(conf.get("ret_code", 302)),
                uri=_parse(conf["uri"]) if conf.get("uri") is not None else None,
                regex_uri=Substitution(rx[0], rx[1]) if rx else None,
                http_to_https=bool(conf.get("http_to_https")), encode_uri=bool(conf.get("encode_uri")),
                append_query_string=bool(conf.get("append_query_string")))


def https_port(attr: dict[str, Any] | None, ssl: dict[str, Any] | None) -> int | None:
    """The https port to redirect to: ``plugin_attr.redirect.https_port``, else one of
    ``apisix.ssl.listen`` (picked at random, as APISIX) when ssl is enabled."""
    if attr and attr.get("https_port") is not None:
        return int(attr["https_port"])
    if not ssl or not ssl.get("enable"):
        return None
    ports = ssl.get("listen")
    if not ports:
        return None
    p = random.choice(ports)
    if isinstance(p, dict):
        p = p.get("port")
    return int(p) if p is not None else None


_HTTPS = _parse("https://$host$request_uri")


def _response(code: int, location: str | None) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Content-Type": HTML_TYPE}
    if location is not None:
        headers["Location"] = location
    return code, nginx_page(code), headers


def rewrite(conf: Conf, ctx: Any) -> Any:
    ret_code = conf.ret_code
    segs = conf.uri
    if conf.http_to_https:
        scheme = ctx.req_header("x-forwarded-proto") or ctx.var("scheme")
        if scheme != "https":
            port = _port(ctx)
            if port is None or port == 443 or port <= 0 or port > 65535:
                segs = _HTTPS
            else:
                segs = _parse(f"https://$host:{port}$request_uri")
            ret_code = 301 if ctx.method in ("GET", "HEAD") else 308

    new_uri: str | None = None
    if segs is not None:
        new_uri = _render(segs, ctx)
    elif conf.regex_uri is not None:
        new_uri, n = conf.regex_uri.sub(ctx.var("uri") or "/")
        if n < 1:
            return None
    if new_uri is None:
        return None

    index = new_uri.find("?")
    if conf.encode_uri:
        new_uri = uri_safe_encode(new_uri[:index]) + new_uri[index:] if index >= 0 else uri_safe_encode(new_uri)
    if conf.append_query_string and ctx.var("is_args") == "?":
        new_uri += ("&" if index >= 0 else "?") + (ctx.var("args") or "")
    return _response(ret_code, new_uri)


def _port(ctx: Any) -> int | None:
    # plugin_attr.redirect and apisix.ssl come from the node config; ctx exposes them through
    # plugin_attr()/node_ssl() when the runtime provides them (see the report), else 443.
    get_attr = getattr(ctx, "plugin_attr", None)
    get_ssl = getattr(ctx, "node_ssl", None)
    attr = get_attr(NAME) if callable(get_attr) else None
    ssl = get_ssl() if callable(get_ssl) else None
    return https_port(attr, ssl)
