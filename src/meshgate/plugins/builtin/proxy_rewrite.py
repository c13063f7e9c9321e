"""proxy-rewrite: rewrite the request sent upstream (uri, method, host, headers).

As APISIX ``apisix/plugins/proxy-rewrite.lua``: ``uri`` (``$var`` interpolation, a ``?`` coming
from a variable is escaped so it cannot start a query) wins over ``regex_uri`` (pairs of
regex/template, the first matching pair applies); the result is escaped as nginx
``ngx_escape_uri`` unless ``use_real_request_uri_unsafe``, and the client's query string is
appended.  Header values may reference ``$var`` and regex captures ``$1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._traffic_util import (Substitution, captures_of, escape_control_chars, iter_pairs, lua_str, resolve_captures,
                            resolve_var, uri_safe_encode)

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "rewrite"]

NAME = "proxy-rewrite"
PRIORITY = 1008
VERSION = "0.1"

_METHODS = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK",
            "UNLOCK", "PATCH", "TRACE"]

_SCALAR = {"oneOf": [{"type": "string"}, {"type": "number"}]}
_MULTI = {"oneOf": [{"type": "string"}, {"type": "number"},
                    {"type": "array", "minItems": 1, "items": _SCALAR}]}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "uri": {"description": "new uri for upstream", "type": "string", "minLength": 1, "maxLength": 4096,
                "pattern": r"^\/.*"},
        "method": {"description": "proxy route method", "type": "string", "enum": _METHODS},
        "regex_uri": {"description": "new uri that substitute from client uri for upstream, lower priority than "
                                     "uri property",
                      "type": "array", "minItems": 2, "items": {"description": "regex uri", "type": "string"}},
        "host": {"description": "new host for upstream", "type": "string", "pattern": r"^[0-9a-zA-Z-.]+(:\d{1,5})?$"},
        "headers": {
            "description": "new headers for request",
            "oneOf": [
                {"type": "object", "minProperties": 1, "additionalProperties": False,
                 "properties": {
                     "add": {"type": "object", "minProperties": 1, "patternProperties": {"^[^:]+$": _MULTI}},
                     "set": {"type": "object", "minProperties": 1, "patternProperties": {"^[^:]+$": _MULTI}},
                     "remove": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[^:]+$"}},
                 }},
                {"type": "object", "minProperties": 1, "patternProperties": {"^[^:]+$": _SCALAR}},
            ],
        },
        "use_real_request_uri_unsafe": {"description": "use real_request_uri instead, THIS IS VERY UNSAFE.",
                                        "type": "boolean", "default": False},
    },
    "minProperties": 1,
}


def _is_new_headers_conf(h: dict[str, Any]) -> bool:
    return (isinstance(h.get("add"), dict) or isinstance(h.get("set"), dict)
            or isinstance(h.get("remove"), list))


def _valid_field(name: str) -> bool:
    # '!'..'~' except ':' (APISIX core.utils.validate_header_field)
    return all(32 < ord(c) < 127 and c != ":" for c in name)


def _valid_value(v: Any) -> bool:
    return not isinstance(v, str) or all(32 <= ord(c) < 127 for c in v)


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    rx = conf.get("regex_uri")
    if rx:
        if len(rx) % 2 != 0:
            return "The length of regex_uri should be an even number"
        for pattern, replacement in iter_pairs(rx):
            try:
                Substitution(pattern, replacement)
            except (re.error, ValueError) as e:
                return f"invalid regex_uri({pattern}, {replacement}): {e}"
    headers = conf.get("headers")
    if headers and not _is_new_headers_conf(headers):
        for field, value in headers.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                return "invalid type as header value"
            if not field:
                return "invalid field length in header"
            if not _valid_field(field):
                return "invalid field character in header"
            if not _valid_value(value):
                return "invalid value character in header"
    return None


# A header value: (template, has '$'); arrays keep one entry per element.
_Val = tuple[str, bool]


@dataclass(frozen=True, slots=True)
class Conf:
    uri: str | None
    regex_uri: tuple[Substitution, ...] | None
    method: str | None
    host: str | None
    unsafe: bool
    add: tuple[tuple[str, tuple[_Val, ...]], ...]
    set: tuple[tuple[str, tuple[_Val, ...], bool], ...]     # name, values, was an array
    remove: tuple[str, ...]


def _vals(v: Any) -> tuple[tuple[_Val, ...], bool]:
    items = v if isinstance(v, list) else [v]
    out = tuple((s, "$" in s) for s in (lua_str(x) for x in items))
    return out, isinstance(v, list)


def prepare(conf: dict[str, Any]) -> Conf:
    rx = conf.get("regex_uri")
    subs = tuple(Substitution(p, t) for p, t in iter_pairs(rx)) if rx else None
    add: list[tuple[str, tuple[_Val, ...]]] = []
    set_: list[tuple[str, tuple[_Val, ...], bool]] = []
    remove: tuple[str, ...] = ()
    h = conf.get("headers")
    if h:
        if _is_new_headers_conf(h):
            for name, v in (h.get("add") or {}).items():
                add.append((name, _vals(v)[0]))
            for name, v in (h.get("set") or {}).items():
                vals, arr = _vals(v)
                set_.append((name, vals, arr))
            remove = tuple(h.get("remove") or ())
        else:
            for name, v in h.items():
                vals, arr = _vals(v)
                set_.append((name, vals, arr))
    return Conf(uri=conf.get("uri"), regex_uri=subs, method=conf.get("method"), host=conf.get("host"),
                unsafe=bool(conf.get("use_real_request_uri_unsafe", False)), add=tuple(add), set=tuple(set_),
                remove=remove)


def _escape_separator(s: str) -> str:
    return s.replace("?", "%3F")


def rewrite(conf: Conf, ctx: Any) -> Any:
    if conf.host is not None:
        ctx.set_var("upstream_host", conf.host)

    var = ctx.var
    upstream_uri: str = var("uri") or "/"
    separator_escaped = False
    query_string = ""
    captures: list[str | None] | None = None
    if conf.unsafe:
        upstream_uri = var("real_request_uri") or var("request_uri") or upstream_uri
        i = upstream_uri.find("?")
        query_string = upstream_uri[i:] if i >= 0 else ""

    if conf.uri is not None:
        separator_escaped = True
        upstream_uri = resolve_var(conf.uri, var, _escape_separator)
        if query_string:
            upstream_uri += ("&" + query_string[1:]) if "?" in upstream_uri else query_string
    elif conf.regex_uri is not None:
        if "?" not in upstream_uri:
            separator_escaped = True
        for sub in conf.regex_uri:
            m = sub.search(upstream_uri)
            if m is not None:
                captures = captures_of(m)
                upstream_uri = upstream_uri[:m.start()] + sub.expand(m) + upstream_uri[m.end():]
                break

    if not conf.unsafe:
        index = upstream_uri.find("?") if separator_escaped else -1
        if index >= 0:
            # the query part keeps its delimiters, but never raw CR/LF (request-line injection)
            upstream_uri = uri_safe_encode(upstream_uri[:index]) + escape_control_chars(upstream_uri[index:])
        else:
            # a '?' here was a decoded %3F of the client's path: it must stay in the path
            upstream_uri = uri_safe_encode(upstream_uri)
        if var("is_args") == "?":
            upstream_uri += ("&" if index >= 0 else "?") + (var("args") or "")
    ctx.set_var("upstream_uri", upstream_uri)

    if conf.add or conf.set or conf.remove:
        for name, vals in conf.add:
            for tpl, dyn in vals:
                v = _resolve(tpl, dyn, captures, var)
                ctx.add_req_header(name, v)
        for name, vals, arr in conf.set:
            if arr:
                resolved = [_resolve(tpl, dyn, captures, var) for tpl, dyn in vals]
                ctx.set_req_header(name, resolved[0])
                for v in resolved[1:]:
                    ctx.add_req_header(name, v)
            else:
                tpl, dyn = vals[0]
                v = _resolve(tpl, dyn, captures, var)
                # nginx drops a request header set to the empty string
                ctx.set_req_header(name, v if v != "" else None)
        for name in conf.remove:
            ctx.set_req_header(name, None)

    if conf.method is not None:
        ctx.set_var("request_method", conf.method)
    return None


def _resolve(tpl: str, dyn: bool, captures: list[str | None] | None, var: Any) -> str:
    if not dyn:
        return tpl
    return resolve_var(resolve_captures(tpl, captures), var)
