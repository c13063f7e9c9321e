"""echo: add text before/after the response body, or replace it, and set response headers.

As APISIX ``apisix/plugins/echo.lua``: ``body`` replaces the body, ``before_body`` is put
in front of the first chunk, ``after_body`` after the last one; any of them drops
``Content-Length``, ``Content-Encoding``, ``Last-Modified`` and ``ETag``; ``headers`` are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._traffic_util import lua_str

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "header_filter", "body_filter"]

NAME = "echo"
PRIORITY = 412
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "before_body": {"description": "body before the filter phase.", "type": "string"},
        "body": {"description": "body to replace upstream response.", "type": "string"},
        "after_body": {"description": "body after the modification of filter phase.", "type": "string"},
        "headers": {"description": "new headers for response", "type": "object", "minProperties": 1},
    },
    "anyOf": [
        {"required": ["before_body"]},
        {"required": ["body"]},
        {"required": ["after_body"]},
    ],
    "minProperties": 1,
}


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    # APISIX finds these only at request time (header_filter); refusing them up front is kinder
    for field, value in (conf.get("headers") or {}).items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            return "invalid type as header value"
        if not field:
            return "invalid field length in header"
    return None


@dataclass(frozen=True, slots=True)
class Conf:
    before: bytes | None
    body: bytes | None
    after: bytes | None
    headers: tuple[tuple[str, str], ...]


def prepare(conf: dict[str, Any]) -> Conf:
    def b(k: str) -> bytes | None:
        v = conf.get(k)
        return v.encode() if isinstance(v, str) else None

    return Conf(before=b("before_body"), body=b("body"), after=b("after_body"),
                headers=tuple((k, lua_str(v)) for k, v in (conf.get("headers") or {}).items()))


_DONE = "_echo_body_set"


def header_filter(conf: Conf, ctx: Any) -> None:
    if conf.body is not None or conf.before is not None or conf.after is not None:
        ctx.body_modified()
        for name in ("Content-Length", "Content-Encoding", "Last-Modified", "ETag"):
            ctx.set_resp_header(name, None)
    for name, value in conf.headers:
        ctx.set_resp_header(name, value)


def body_filter(conf: Conf, ctx: Any) -> None:
    first = not ctx.var(_DONE)
    if first:
        ctx.set_var(_DONE, True)
    if conf.body is not None:
        # the replacement is the whole body (APISIX marks it the last chunk): it goes out
        # once, what the upstream sends after it is dropped
        if not first:
            ctx.chunk = b""
            return
        chunk, last = conf.body, True
    else:
        chunk, last = ctx.chunk or b"", bool(ctx.eof)
    if conf.before is not None and first:
        chunk = conf.before + chunk
    if conf.after is not None and last:
        chunk = chunk + conf.after
    ctx.chunk = chunk
