"""grpc-web: serve gRPC-Web clients (browsers) from a gRPC upstream (APISIX ``grpc-web``).

APISIX semantics (``apisix/plugins/grpc-web.lua``, ``t/plugin/grpc-web.t``):

* ``access``: the request's ``Content-Type`` is remembered (it becomes the response's).  An
  ``OPTIONS`` request (CORS preflight) is answered with 204, any other method but ``POST`` with
  405, and a ``Content-Type`` other than ``application/grpc-web(+proto)`` (binary) or
  ``application/grpc-web-text(+proto)`` (base64) with 400.  On a prefix route (``/grpc/web/*``)
  the part the ``*`` matched becomes the upstream path (``/pkg.Service/Method``).  The whole
  body is read (at most ``max_req_body_size``, else 400, as is an empty body), base64-decoded
  for the text forms (400 when that fails) and sent upstream as ``application/grpc``.
* ``header_filter``: ``Access-Control-Allow-Methods: POST`` and ``-Allow-Headers``
  (``cors_allow_headers``) on a preflight; ``Access-Control-Allow-Origin: *`` unless the cors
  plugin chose the origin; always ``Access-Control-Expose-Headers: grpc-message,grpc-status``.
  Unless the plugin answered the request itself, the response gets the request's gRPC-Web
  ``Content-Type`` and loses its ``Content-Length``.  A ``grpc-status`` response header means a
  trailers-only answer: no trailer frame is appended then.
* ``body_filter``: the text forms are base64-encoded, and at the end of the body the gRPC-Web
  trailer frame (``0x80``, a 4-byte big-endian length, ``grpc-status:<code>\\r\\n``
  ``grpc-message:<msg>\\r\\n``) carries the upstream's gRPC trailers (status 2, "upstream grpc
  status not received", when the upstream sent none).

Unlike APISIX, which encodes every chunk on its own (each with its padding), the base64 output
here is one stream: a chunk is encoded up to a multiple of 3 bytes and the remaining one or two
bytes go with the next chunk (the last ones, with the trailer frame, at the end), as Envoy's
grpc_web filter does.  And when the upstream sent a ``grpc-status`` trailer without
``grpc-message``, the frame's message is empty (APISIX's Lua ``a and b or c`` idiom puts the
"not received" text there).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

from ...errors import ProtocolError
from ._traffic_util import uri_safe_encode

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "prepare", "access", "header_filter", "body_filter",
           "trailer_frame", "decode_base64"]

NAME = "grpc-web"
PRIORITY = 505
VERSION = "0.1"

DEFAULT_ALLOW_HEADERS = "content-type,x-grpc-web,x-user-agent"
EXPOSE_HEADERS = "grpc-message,grpc-status"
DEFAULT_MAX_BODY = 64 * 1024 * 1024

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "max_req_body_size": {
            "type": "integer", "minimum": 1, "default": DEFAULT_MAX_BODY,
            "description": "largest request body (bytes) buffered in memory; a larger one is refused",
        },
        "cors_allow_headers": {
            "type": "string", "default": DEFAULT_ALLOW_HEADERS,
            "description": "Access-Control-Allow-Headers of a preflight answer (comma-separated)",
        },
    },
}

log = logging.getLogger("meshgate.plugins.grpc-web")

# request Content-Type -> whether the body is base64 text
_MIME_TEXT: dict[str, bool] = {
    "application/grpc-web": False,
    "application/grpc-web+proto": False,
    "application/grpc-web-text": True,
    "application/grpc-web-text+proto": True,
}
_STATE = "_grpc_web"             # ctx variable: this request's _State
_NOT_RECEIVED = "upstream grpc status not received"


@dataclass(frozen=True, slots=True)
class Conf:
    max_body: int
    allow_headers: str


def prepare(conf: dict[str, Any]) -> Conf:
    return Conf(max_body=int(conf.get("max_req_body_size", DEFAULT_MAX_BODY)),
                allow_headers=str(conf.get("cors_allow_headers", DEFAULT_ALLOW_HEADERS)))


@dataclass(slots=True)
class _State:
    mime: str | None             # the request's Content-Type (the response's)
    text: bool = False           # base64 bodies both ways
    local: bool = False          # the plugin answered the request itself: no body rewriting
    metadata_sent: bool = False  # grpc-status came in the response headers (trailers-only)
    carry: bytes = b""           # response bytes not base64-encoded yet (fewer than 3)


def trailer_frame(status: str | int, message: str) -> bytes:
    """The gRPC-Web trailer frame: flag 0x80, 4-byte big-endian length, the trailer lines."""
    block = f"grpc-status:{status}\r\ngrpc-message:{message}\r\n".encode("latin-1", "replace")
    return b"\x80" + len(block).to_bytes(4, "big") + block


def decode_base64(data: bytes) -> bytes | None:
    """nginx's ``ngx_decode_base64`` (``ngx.decode_base64``): the text up to the first ``=``
    must be base64 characters only, padding is optional, anything after the first ``=`` is
    ignored.  None when it is not well formed."""
    end = data.find(b"=")
    if end < 0:
        end = len(data)
    if end % 4 == 1:
        return None
    text = data[:end]
    try:
        return base64.b64decode(text + b"=" * (-end % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _method(ctx: Any) -> str:
    method: str = ctx.var("request_method") or ctx.method   # proxy-rewrite may have changed it
    return method


def _upstream_path(ctx: Any) -> str | None:
    """What APISIX's ``:ext`` captured: the part of the path a route's ``*`` matched."""
    path: str | None = ctx.var("uri_param_ext")
    if path is None:
        pattern = ctx.var("matched_uri")
        if not isinstance(pattern, str) or not pattern.endswith("*"):
            return None
        prefix = pattern[:-1]
        uri: str = ctx.uri
        if not uri.startswith(prefix):
            return None
        path = uri[len(prefix):]
    if not path:
        return None
    return path if path.startswith("/") else "/" + path


def access(conf: Conf, ctx: Any) -> Any:
    st = _State(ctx.req_header("content-type"))
    ctx.set_var(_STATE, st)
    method = _method(ctx)
    if method == "OPTIONS":
        st.local = True
        return 204
    if method != "POST":
        log.error("request method: `%s` invalid", method)
        st.local = True
        return 405
    text = _MIME_TEXT.get(st.mime) if st.mime is not None else None
    if text is None:
        log.error("request Content-Type: `%s` invalid", st.mime)
        st.local = True
        return 400
    st.text = text
    path = _upstream_path(ctx)
    if path is not None:
        args = ctx.var("args")
        ctx.set_var("upstream_uri", uri_safe_encode(path) + ("?" + args if args else ""))
    return _take_body(conf, ctx, st)


def _too_big(ctx: Any, limit: int) -> bool:
    cl = ctx.req_header("content-length")
    if cl is None:
        return False
    try:
        return int(cl) > limit
    except ValueError:
        return False


async def _take_body(conf: Conf, ctx: Any, st: _State) -> int | None:
    body: bytes | None = None
    if _too_big(ctx, conf.max_body):
        log.error("failed to read request body, err: request size %s is greater than the maximum size %d "
                  "allowed", ctx.req_header("content-length"), conf.max_body)
    else:
        try:
            body = await ctx.read_body(conf.max_body)
        except ProtocolError as e:
            if e.status != 413:
                raise
            log.error("failed to read request body, err: %s", e.reason)
    if not body:   # APISIX: no body is an error too
        st.local = True
        return 400
    if st.text:
        body = decode_base64(body)
        if body is None:
            log.error("failed to decode request body")
            st.local = True
            return 400
    ctx.set_req_header("Content-Type", "application/grpc")
    ctx.set_body(body)
    return None


def _cors_chose_origin(ctx: Any) -> bool:
    """APISIX: ``ctx.cors_allow_origins`` (the cors plugin, which runs its header_filter before
    this one, found an allowed origin and sent it)."""
    return bool(ctx.var("cors_allow_origins"))


def header_filter(conf: Conf, ctx: Any) -> None:
    if _method(ctx) == "OPTIONS":
        ctx.set_resp_header("Access-Control-Allow-Methods", "POST")
        ctx.set_resp_header("Access-Control-Allow-Headers", conf.allow_headers)
    if not _cors_chose_origin(ctx):
        ctx.set_resp_header("Access-Control-Allow-Origin", "*")
    ctx.set_resp_header("Access-Control-Expose-Headers", EXPOSE_HEADERS)
    st: _State | None = ctx.var(_STATE)
    if st is None or not st.local:
        # as APISIX, also when access did not run (another plugin answered): no Content-Type then
        ctx.set_resp_header("Content-Type", st.mime if st is not None else None)
        ctx.set_resp_header("Content-Length", None)
        ctx.body_modified()
    if st is not None:
        st.metadata_sent = ctx.resp_header("grpc-status") is not None


def _trailer(ctx: Any) -> bytes:
    status = ctx.var("upstream_trailer_grpc_status")
    if status is None or status == "":
        return trailer_frame(2, _NOT_RECEIVED)
    return trailer_frame(status, ctx.var("upstream_trailer_grpc_message") or "")


def body_filter(conf: Conf, ctx: Any) -> None:
    st: _State | None = ctx.var(_STATE)
    if st is None or st.local or not st.mime:
        return
    chunk = ctx.chunk
    if not isinstance(chunk, bytes):
        chunk = bytes(chunk) if not isinstance(chunk, str) else chunk.encode()
    if not ctx.eof:
        if st.text:
            if st.carry:
                chunk = st.carry + chunk
            n = len(chunk) - len(chunk) % 3
            st.carry = chunk[n:]
            ctx.chunk = base64.b64encode(chunk[:n])
        return
    tail = b"" if st.metadata_sent else _trailer(ctx)
    if st.text:
        data = st.carry + chunk + tail
        st.carry = b""
        ctx.chunk = base64.b64encode(data)
    elif tail:
        ctx.chunk = chunk + tail
