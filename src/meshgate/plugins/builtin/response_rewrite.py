"""response-rewrite: rewrite the status, headers and body of the response to the client.

As APISIX ``apisix/plugins/response-rewrite.lua``: everything applies only when ``vars``
(a lua-resty-expr rule on the response's variables) matches; ``body`` (optionally base64)
replaces the body, ``filters`` run regex substitutions over the whole (decoded) body,
``headers`` is either a flat map (= set) or ``{add: ["Name: value"], set: {}, remove: []}``
whose values may reference ``$var``.  Changing the body drops ``Content-Length``,
``Content-Encoding``, ``Last-Modified`` and ``ETag`` (``clear_header_as_body_modified``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import zlib
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...router import Expr, compile_expr
from ._traffic_util import Substitution, lua_str, resolve_var

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "header_filter", "body_filter"]

log = logging.getLogger("meshgate.plugins.response-rewrite")

NAME = "response-rewrite"
PRIORITY = 899
VERSION = "0.1"

_SCALAR = {"oneOf": [{"type": "string"}, {"type": "number"}]}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "max_resp_body_size": {"type": "integer", "minimum": 1, "default": 67108864,
                               "description": "maximum response body size in bytes buffered into memory when "
                                              "filters are applied; larger responses are truncated"},
        "headers": {
            "description": "new headers for response",
            "anyOf": [
                {"type": "object", "minProperties": 1, "patternProperties": {"^[^:]+$": _SCALAR}},
                {"properties": {
                    "add": {"type": "array", "minItems": 1,
                            "items": {"type": "string", "pattern": "^[^:]+:[^:]*[^/]$"}},
                    "set": {"type": "object", "minProperties": 1, "patternProperties": {"^[^:]+$": _SCALAR}},
                    "remove": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[^:]+$"}},
                }},
            ],
        },
        "body": {"description": "new body for response", "type": "string"},
        "body_base64": {"description": "whether new body for response need base64 decode before return",
                        "type": "boolean", "default": False},
        "status_code": {"description": "new status code for response", "type": "integer", "minimum": 200,
                        "maximum": 598},
        "vars": {"type": "array"},
        "filters": {
            "description": "a group of filters that modify response bodyby replacing one specified string by another",
            "type": "array",
            "minItems": 1,
            "items": {
                "description": "filter that modifies response body",
                "type": "object",
                "required": ["regex", "replace"],
                "properties": {
                    "regex": {"description": "match pattern on response body", "type": "string", "minLength": 1},
                    "scope": {"description": "regex substitution range", "type": "string",
                              "enum": ["once", "global"], "default": "once"},
                    "replace": {"description": "regex substitution content", "type": "string"},
                    "options": {"description": "regex options", "type": "string", "default": "jo"},
                },
            },
        },
    },
    "dependencies": {
        "body": {"not": {"required": ["filters"]}},
        "filters": {"not": {"required": ["body"]}},
    },
}


def _is_new_headers_conf(h: dict[str, Any]) -> bool:
    return isinstance(h.get("add"), list) or isinstance(h.get("set"), dict) or isinstance(h.get("remove"), list)


def _decode_b64(s: str) -> bytes | None:
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None


_ADD_RE = re.compile(r"^([^:\s]+)\s*:\s*([^:]+)$")


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    headers = conf.get("headers")
    if headers and not _is_new_headers_conf(headers):
        for field, value in headers.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                return "invalid type as header value"
            if not field:
                return "invalid field length in header"
    if conf.get("body_base64"):
        body = conf.get("body")
        if not body or _decode_b64(body) is None:
            return "invalid base64 content"
    if conf.get("vars") is not None:
        try:
            compile_expr(conf["vars"], "/vars")
        except ConfigError as e:
            return f"failed to validate the 'vars' expression: {e.message}"
    for f in conf.get("filters") or ():
        try:
            Substitution(f["regex"], f["replace"], f.get("options", "jo"), binary=True)
        except re.error as e:
            return f'regex "{f["regex"]}" validation failed: {e}'
        except ValueError as e:
            return f'regex "{f["regex"]}" validation failed: {e}'
    return None


@dataclass(frozen=True, slots=True)
class Filter:
    sub: Substitution
    scope: str


@dataclass(frozen=True, slots=True)
class Conf:
    vars: Expr | None
    status_code: int | None
    body: bytes | None
    filters: tuple[Filter, ...]
    max_size: int
    add: tuple[tuple[str, str], ...]
    set: tuple[tuple[str, str], ...]
    remove: tuple[str, ...]


def prepare(conf: dict[str, Any]) -> Conf:
    body: bytes | None = None
    if conf.get("body") is not None:
        b = conf["body"]
        body = (_decode_b64(b) or b"") if conf.get("body_base64") else b.encode()
    add: list[tuple[str, str]] = []
    set_: list[tuple[str, str]] = []
    remove: tuple[str, ...] = ()
    h = conf.get("headers")
    if h:
        if _is_new_headers_conf(h):
            for line in h.get("add") or ():
                m = _ADD_RE.match(line)
                if m is not None:
                    add.append((m.group(1), m.group(2)))
            set_ = [(k, lua_str(v)) for k, v in (h.get("set") or {}).items()]
            remove = tuple(h.get("remove") or ())
        else:
            set_ = [(k, lua_str(v)) for k, v in h.items()]
    filters = tuple(Filter(Substitution(f["regex"], f["replace"], f.get("options", "jo"), binary=True),
                           f.get("scope", "once")) for f in conf.get("filters") or ())
    return Conf(vars=compile_expr(conf["vars"], "/vars") if conf.get("vars") is not None else None,
                status_code=conf.get("status_code"), body=body, filters=filters,
                max_size=int(conf.get("max_resp_body_size", 67108864)), add=tuple(add), set=tuple(set_),
                remove=remove)


# per-request state (ctx variables of this plugin's own)
_MATCHED = "_response_rewrite_matched"
_BUF = "_response_rewrite_buf"
_ENC = "_response_rewrite_encoding"


def header_filter(conf: Conf, ctx: Any) -> None:
    if conf.vars is not None and not conf.vars.eval(ctx.var):
        return
    ctx.set_var(_MATCHED, True)
    if conf.status_code is not None:
        ctx.set_resp_status(conf.status_code)
    if conf.filters or conf.body is not None:
        enc = ctx.resp_header("content-encoding")
        if enc:
            ctx.set_var(_ENC, enc)
        ctx.body_modified()
        for name in ("Content-Length", "Content-Encoding", "Last-Modified", "ETag"):
            ctx.set_resp_header(name, None)
    var = ctx.var
    for name, tpl in conf.add:
        ctx.add_resp_header(name, resolve_var(tpl, var))
    for name, tpl in conf.set:
        ctx.set_resp_header(name, resolve_var(tpl, var))
    for name in conf.remove:
        ctx.set_resp_header(name, None)


def _decode(body: bytes, encoding: str) -> bytes | None:
    enc = encoding.strip().lower()
    try:
        if enc == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if enc == "deflate":
            return zlib.decompress(body)
    except zlib.error as e:
        log.error("filters may not work as expected: %s", e)
        return None
    log.error("filters may not work as expected due to unsupported compression encoding type: %s", encoding)
    return None


def body_filter(conf: Conf, ctx: Any) -> None:
    if not ctx.var(_MATCHED):
        return
    if conf.filters:
        buf: bytearray | None = ctx.var(_BUF)
        if buf is None:
            buf = bytearray()
            ctx.set_var(_BUF, buf)
        chunk = ctx.chunk
        if chunk:
            room = conf.max_size - len(buf)
            if room > 0:
                buf += chunk[:room]   # APISIX truncates above max_resp_body_size
        if not ctx.eof:
            ctx.chunk = b""
            return
        body = bytes(buf)
        enc = ctx.var(_ENC)
        if enc:
            decoded = _decode(body, enc)
            if decoded is None:
                ctx.chunk = body
                return
            body = decoded
        for f in conf.filters:
            body, _ = f.sub.sub(body, scope="global" if f.scope == "global" else "once")
        ctx.chunk = body
        return
    if conf.body is not None:
        # the new body goes out with the first chunk; what the upstream sends after it is dropped
        if ctx.var(_BUF) is None:
            ctx.set_var(_BUF, True)
            ctx.chunk = conf.body
        else:
            ctx.chunk = b""
