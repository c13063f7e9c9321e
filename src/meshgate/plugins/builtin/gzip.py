"""gzip: compress upstream responses for clients that accept gzip.

As APISIX ``apisix/plugins/gzip.lua`` on nginx's gzip filter: a response is compressed when
it has a ``Content-Type`` in ``types`` (``"*"``: any), a ``Content-Length`` (when known) of at
least ``min_length``, the request's HTTP version is at least ``http_version``, and, as nginx's
filter requires, the status is 200/403/404, there is no ``Content-Encoding`` yet, the request
is not HEAD, ``Accept-Encoding`` offers gzip (not ``q=0``) and it carries no ``Via`` header
(``gzip_proxied off``).  ``vary`` adds ``Vary: Accept-Encoding`` once the type/length/version
checks pass (APISIX adds it before nginx's own checks).  The body is streamed through zlib
(gzip wrapper, ``comp_level``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "prepare", "header_filter", "body_filter", "accepts_gzip"]

NAME = "gzip"
PRIORITY = 995
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "types": {
            "anyOf": [
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                {"enum": ["*"]},
            ],
            "default": ["text/html"],
        },
        "min_length": {"type": "integer", "minimum": 1, "default": 20},
        "comp_level": {"type": "integer", "minimum": 1, "maximum": 9, "default": 1},
        "http_version": {"enum": [1.1, 1.0], "default": 1.1},
        "buffers": {
            "type": "object",
            "properties": {
                "number": {"type": "integer", "minimum": 1, "default": 32},
                "size": {"type": "integer", "minimum": 1, "default": 4096},
            },
            "default": {"number": 32, "size": 4096},
        },
        "vary": {"type": "boolean"},
    },
}


@dataclass(frozen=True, slots=True)
class Conf:
    types: frozenset[str] | None     # None: any type
    min_length: int
    comp_level: int
    http_version: float
    vary: bool


def prepare(conf: dict[str, Any]) -> Conf:
    types = conf.get("types", ["text/html"])
    return Conf(types=None if types == "*" else frozenset(types), min_length=int(conf.get("min_length", 20)),
                comp_level=int(conf.get("comp_level", 1)), http_version=float(conf.get("http_version", 1.1)),
                vary=bool(conf.get("vary")))


_CODING_RE = re.compile(r"\s*([^\s,;]+)\s*(?:;\s*q\s*=\s*([0-9.]+))?[^,]*")


def accepts_gzip(accept_encoding: str | None) -> bool:
    """``gzip`` (or ``*``... nginx only looks for gzip) offered without ``q=0``."""
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        m = _CODING_RE.match(part)
        if m is None or m.group(1).lower() != "gzip":
            continue
        q = m.group(2)
        try:
            return q is None or float(q) > 0
        except ValueError:
            return False
    return False


_STATE = "_gzip_compressor"


def header_filter(conf: Conf, ctx: Any) -> None:
    ctype = ctx.resp_header("content-type")
    if not ctype:
        return
    if conf.types is not None and ctype.split(";", 1)[0] not in conf.types:
        return
    cl = ctx.resp_header("content-length")
    if cl is not None:
        try:
            if int(cl) < conf.min_length:
                return
        except ValueError:
            pass
    proto = ctx.var("server_protocol") or "HTTP/1.1"
    try:
        version = float(proto.rpartition("/")[2])
    except ValueError:
        version = 1.1
    if version < conf.http_version:
        return
    if conf.vary:
        ctx.add_resp_header("Vary", "Accept-Encoding")
    # nginx's gzip filter
    if ctx.resp_status not in (200, 403, 404) or ctx.resp_header("content-encoding"):
        return
    if ctx.method == "HEAD" or ctx.req_header("via") or not accepts_gzip(ctx.req_header("accept-encoding")):
        return
    ctx.set_var(_STATE, zlib.compressobj(conf.comp_level, zlib.DEFLATED, 31))
    ctx.body_modified()
    ctx.set_resp_header("Content-Length", None)
    ctx.set_resp_header("Content-Encoding", "gzip")
    etag = ctx.resp_header("etag")
    if etag and etag.startswith('"'):
        ctx.set_resp_header("ETag", "W/" + etag)   # nginx weakens the ETag of a compressed body


def body_filter(conf: Conf, ctx: Any) -> None:
    z = ctx.var(_STATE)
    if z is None:
        return
    chunk = ctx.chunk
    out = z.compress(chunk) if chunk else b""
    if ctx.eof:
        out += z.flush()
    ctx.chunk = out
