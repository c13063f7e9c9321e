"""grpc-web: schema, and gRPC-Web clients (httpx, frames built by hand) through the real gateway
to a real grpcio server (generic handler on raw bytes, no generated stubs), over HTTP/1.1 and
h2c.  Every response body is decoded frame by frame and compared byte for byte."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import httpx
import pytest
from gwtools import Gateway, Upstream, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin import grpc_web
from meshgate.plugins.builtin.grpc_web import decode_base64, trailer_frame

NAME = "grpc-web"
TIMEOUT = 10.0
SVC = "a6.RouteService"
BIN = "application/grpc-web"
TEXT = "application/grpc-web-text"


# -- gRPC-Web framing ---------------------------------------------------------------------------

def frame(msg: bytes) -> bytes:
    """A gRPC-Web data frame: flag 0, 4-byte big-endian length, the message."""
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split a gRPC-Web response body into (flag, payload); the body must end on a frame."""
    out = []
    i = 0
    while i < len(data):
        assert len(data) - i >= 5, data
        flag, n = data[i], int.from_bytes(data[i + 1:i + 5], "big")
        assert len(data) - i - 5 >= n, data
        out.append((flag, data[i + 5:i + 5 + n]))
        i += 5 + n
    return out


def trailer(status: int, message: str) -> tuple[int, bytes]:
    return 0x80, f"grpc-status:{status}\r\ngrpc-message:{message}\r\n".encode()


def unbase64(body: bytes) -> bytes:
    """One base64 stream (padding only at its very end), strictly."""
    assert b"=" not in body.rstrip(b"="), body
    return base64.b64decode(body, validate=True)


# -- the gRPC upstream ---------------------------------------------------------------------------

class RouteService:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, dict[str, Any]]] = []

    def _seen(self, method: str, req: bytes, ctx: grpc.aio.ServicerContext) -> None:
        self.calls.append((method, req, {k: v for k, v in ctx.invocation_metadata() or ()}))

    async def get_route(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        self._seen("GetRoute", req, ctx)
        return b"route:" + req

    async def get_routes(self, req: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        # messages of 1..n bytes: the frames do not end on base64's 3-byte groups
        self._seen("GetRoutes", req, ctx)
        for i in range(int(req)):
            yield b"abcdefghij"[: i % 10 + 1]
            await asyncio.sleep(0.01)

    async def get_error(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        # no message before the error: a trailers-only answer (grpc-status in the headers)
        self._seen("GetError", req, ctx)
        await ctx.abort(grpc.StatusCode.INTERNAL, "execpted error")
        return b""

    async def stream_then_fail(self, req: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._seen("StreamThenFail", req, ctx)
        yield b"first"
        await ctx.abort(grpc.StatusCode.NOT_FOUND, "gone 100%")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SVC, {
            "GetRoute": grpc.unary_unary_rpc_method_handler(self.get_route),
            "GetRoutes": grpc.unary_stream_rpc_method_handler(self.get_routes),
            "GetError": grpc.unary_unary_rpc_method_handler(self.get_error),
            "StreamThenFail": grpc.unary_stream_rpc_method_handler(self.stream_then_fail),
        })


@pytest.fixture
async def svc() -> AsyncIterator[tuple[RouteService, int]]:
    service = RouteService()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, port
    await server.stop(0)


def grpc_upstream(port: int) -> dict[str, Any]:
    return {"scheme": "grpc", "type": "roundrobin", "nodes": {f"127.0.0.1:{port}": 1}}


def gateway(tmp: Path, port: int, *extra: dict[str, Any]) -> Gateway:
    return start_gateway(tmp / "gw", {"routes": [
        {"id": "prefix", "uri": "/grpc/web/*", "plugins": {NAME: {}}, "upstream": grpc_upstream(port)},
        {"id": "exact", "uri": f"/{SVC}/GetRoute", "plugins": {NAME: {}}, "upstream": grpc_upstream(port)},
        *extra]})


async def call(c: httpx.AsyncClient, gw: Gateway, path: str, body: bytes, ctype: str = BIN,
               headers: dict[str, str] | None = None) -> httpx.Response:
    return await c.post(f"http://127.0.0.1:{gw.port}{path}", content=body,
                        headers={"Content-Type": ctype, "X-Grpc-Web": "1", **(headers or {})})


# -- tests -----------------------------------------------------------------------------------------

def test_schema(registry: Any) -> None:
    registry.validate(NAME, {}, pointer="/plugins/x")
    registry.validate(NAME, {"max_req_body_size": 1, "cors_allow_headers": "grpc-accept-encoding"},
                      pointer="/plugins/x")
    for conf, msg in [
        ({"max_req_body_size": 0}, 'property "max_req_body_size" validation failed: expected 0 to be at least 1'),
        ({"max_req_body_size": 1.5},
         'property "max_req_body_size" validation failed: wrong type: expected integer, got number'),
        ({"cors_allow_headers": 1},
         'property "cors_allow_headers" validation failed: wrong type: expected string, got number'),
    ]:
        with pytest.raises(ConfigError) as ei:
            registry.validate(NAME, conf, pointer="/plugins/x")
        assert ei.value.message == f"failed to check the configuration of plugin {NAME} err: " + msg
    p = registry.get(NAME)
    assert p.priority == 505 and p.version == "0.1"
    assert grpc_web.prepare({}) == grpc_web.Conf(max_body=67108864,
                                                 allow_headers="content-type,x-grpc-web,x-user-agent")


def test_trailer_frame_and_base64_helpers() -> None:
    assert trailer_frame(0, "") == b"\x80\x00\x00\x00\x1egrpc-status:0\r\ngrpc-message:\r\n"
    assert trailer_frame(2, "upstream grpc status not received") == (
        b"\x80\x00\x00\x00\x3fgrpc-status:2\r\ngrpc-message:upstream grpc status not received\r\n")
    # nginx's ngx_decode_base64: padding optional, stops at the first "=", strict alphabet
    assert decode_base64(b"AAAAAAcKBXdvcmxkCgo=") == b"\x00\x00\x00\x00\x07\n\x05world\n\n"
    assert decode_base64(b"AAAAAAcKBXdvcmxkCgo") == b"\x00\x00\x00\x00\x07\n\x05world\n\n"
    assert decode_base64(b"aGk=garbage") == b"hi"
    assert decode_base64(b"") == b""
    assert decode_base64(b"aGVsbG8*") is None
    assert decode_base64(b"aGVsb G8=") is None
    assert decode_base64(b"aGVsbG8hx") is None       # 9 characters: 4n+1 is never base64


class FakeCtx:
    """Just what body_filter reads."""

    def __init__(self, st: Any, trailers: dict[str, str]) -> None:
        self.vars: dict[str, Any] = {"_grpc_web": st, **trailers}
        self.chunk = b""
        self.eof = False

    def var(self, name: str) -> Any:
        return self.vars.get(name)


@pytest.mark.parametrize("sizes", [[1, 1, 1, 1], [2, 5, 7], [3, 3], [0, 4, 0, 8], [1000, 1], []])
def test_text_body_is_one_base64_stream_across_chunks(sizes: list[int]) -> None:
    st = grpc_web._State(TEXT, text=True)
    ctx = FakeCtx(st, {"upstream_trailer_grpc_status": "0", "upstream_trailer_grpc_message": "ok"})
    conf = grpc_web.prepare({})
    data = bytes(range(256)) * 5
    sent, out, pos = b"", b"", 0
    for n in sizes:
        ctx.chunk, ctx.eof = data[pos:pos + n], False
        sent += ctx.chunk
        pos += n
        grpc_web.body_filter(conf, ctx)
        assert len(ctx.chunk) % 4 == 0 and b"=" not in ctx.chunk    # whole groups, no padding
        out += ctx.chunk
    ctx.chunk, ctx.eof = b"xy", True
    grpc_web.body_filter(conf, ctx)
    out += ctx.chunk
    assert unbase64(out) == sent + b"xy" + trailer_frame("0", "ok")


async def test_unary_binary_and_text(tmp_path: Path, svc: tuple[RouteService, int]) -> None:
    service, port = svc
    gw = gateway(tmp_path, port)
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as c:
            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoute", frame(b"hello"))
            assert r.status_code == 200 and r.http_version == "HTTP/1.1"
            assert r.headers["content-type"] == BIN
            assert r.headers["access-control-allow-origin"] == "*"
            assert r.headers["access-control-expose-headers"] == "grpc-message,grpc-status"
            assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
            assert "access-control-allow-methods" not in r.headers
            assert frames(r.content) == [(0, b"route:hello"), trailer(0, "")]
            # the upstream got the decoded message on /<service>/<method> as application/grpc
            method, req, md = service.calls[-1]
            assert (method, req) == ("GetRoute", b"hello")
            assert md["x-grpc-web"] == "1"

            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoute",
                           base64.b64encode(frame(b"world")), ctype=TEXT)
            assert r.status_code == 200 and r.headers["content-type"] == TEXT
            assert frames(unbase64(r.content)) == [(0, b"route:world"), trailer(0, "")]
            assert service.calls[-1][:2] == ("GetRoute", b"world")
            # "+proto" forms, and APISIX's test request (padded text)
            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoute", frame(b"p"), ctype=BIN + "+proto")
            assert r.headers["content-type"] == BIN + "+proto"
            assert frames(r.content) == [(0, b"route:p"), trailer(0, "")]
            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoute", b"AAAAAAcKBXdvcmxkCgo=", ctype=TEXT + "+proto")
            assert r.headers["content-type"] == TEXT + "+proto"
            assert frames(unbase64(r.content)) == [(0, b"route:\n\x05world"), trailer(0, "")]
    finally:
        gw.stop()


async def test_server_streaming_and_errors(tmp_path: Path, svc: tuple[RouteService, int]) -> None:
    service, port = svc
    gw = gateway(tmp_path, port)
    want = [(0, b"abcdefghij"[: i % 10 + 1]) for i in range(12)]
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as c:
            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoutes", frame(b"12"))
            assert r.status_code == 200
            assert frames(r.content) == [*want, trailer(0, "")]
            # text: one base64 stream over all the chunks (each message came in its own)
            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoutes", base64.b64encode(frame(b"12")), ctype=TEXT)
            assert frames(unbase64(r.content)) == [*want, trailer(0, "")]

            # an error after a message: the status is in the trailer frame (grpc-message as the
            # server percent-encoded it)
            for ctype, decode in ((BIN, bytes), (TEXT, unbase64)):
                body = frame(b"x") if ctype == BIN else base64.b64encode(frame(b"x"))
                r = await call(c, gw, f"/grpc/web/{SVC}/StreamThenFail", body, ctype=ctype)
                assert r.status_code == 200 and "grpc-status" not in r.headers
                assert frames(decode(r.content)) == [(0, b"first"), trailer(5, "gone 100%25")]

            # an error without a message: trailers-only, grpc-status in the headers, empty body
            for ctype in (BIN, TEXT):
                body = frame(b"x") if ctype == BIN else base64.b64encode(frame(b"x"))
                r = await call(c, gw, f"/grpc/web/{SVC}/GetError", body, ctype=ctype)
                assert r.status_code == 200 and r.headers["content-type"] == ctype
                assert r.headers["grpc-status"] == "13" and r.headers["grpc-message"] == "execpted error"
                assert r.content == b""
            assert [m for m, _, _ in service.calls].count("GetError") == 2
    finally:
        gw.stop()


async def test_over_h2c(tmp_path: Path, svc: tuple[RouteService, int]) -> None:
    service, port = svc
    gw = gateway(tmp_path, port)
    try:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT) as c:
            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoute", frame(b"h2"))
            assert r.status_code == 200 and r.http_version == "HTTP/2"
            assert r.headers["content-type"] == BIN and "content-length" not in r.headers
            assert frames(r.content) == [(0, b"route:h2"), trailer(0, "")]
            r = await call(c, gw, f"/grpc/web/{SVC}/GetRoutes", base64.b64encode(frame(b"5")), ctype=TEXT)
            assert r.http_version == "HTTP/2" and r.headers["content-type"] == TEXT
            assert frames(unbase64(r.content)) == [(0, b"abcdefghij"[: i + 1]) for i in range(5)] + [trailer(0, "")]
            r = await call(c, gw, f"/grpc/web/{SVC}/GetError", frame(b"x"))
            assert r.headers["grpc-status"] == "13" and r.content == b""
            r = await c.options(f"http://127.0.0.1:{gw.port}/grpc/web/{SVC}/GetRoute")
            assert r.status_code == 204 and r.headers["access-control-allow-methods"] == "POST"
        assert service.calls[0][:2] == ("GetRoute", b"h2")
    finally:
        gw.stop()


async def test_prefix_rewrite_and_exact_route(tmp_path: Path, svc: tuple[RouteService, int]) -> None:
    service, port = svc
    gw = gateway(tmp_path, port, {"id": "nested", "uri": "/api/v1/*", "plugins": {NAME: {}},
                                  "upstream": grpc_upstream(port)})
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as c:
            # exact route: the path goes upstream as it is
            r = await call(c, gw, f"/{SVC}/GetRoute", frame(b"exact"))
            assert frames(r.content) == [(0, b"route:exact"), trailer(0, "")]
            # prefix routes: what the * matched is the gRPC path
            r = await call(c, gw, f"/api/v1/{SVC}/GetRoute", frame(b"nested"))
            assert frames(r.content) == [(0, b"route:nested"), trailer(0, "")]
            assert [(m, b) for m, b, _ in service.calls] == [("GetRoute", b"exact"), ("GetRoute", b"nested")]
            # a method the server does not have: its status comes back in the trailers
            r = await call(c, gw, f"/grpc/web/{SVC}/Nope", frame(b"x"))
            assert r.status_code == 200 and r.headers["content-type"] == BIN
            assert r.headers["grpc-status"] == "12" and r.content == b""      # trailers-only
    finally:
        gw.stop()


async def test_preflight_methods_and_content_types(tmp_path: Path, svc: tuple[RouteService, int]) -> None:
    service, port = svc
    gw = gateway(tmp_path, port,
                 {"id": "custom", "uri": "/custom/*", "plugins": {NAME: {"cors_allow_headers": "grpc-accept-encoding"}},
                  "upstream": grpc_upstream(port)},
                 {"id": "small", "uri": "/small/*", "plugins": {NAME: {"max_req_body_size": 10}},
                  "upstream": grpc_upstream(port)})
    base = f"http://127.0.0.1:{gw.port}"
    path = f"/{SVC}/GetRoute"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as c:
            r = await c.options(base + "/grpc/web" + path)
            assert r.status_code == 204 and r.content == b""
            assert r.headers["access-control-allow-methods"] == "POST"
            assert r.headers["access-control-allow-headers"] == "content-type,x-grpc-web,x-user-agent"
            assert r.headers["access-control-allow-origin"] == "*"
            assert r.headers["access-control-expose-headers"] == "grpc-message,grpc-status"
            r = await c.options(base + "/custom" + path)
            assert r.status_code == 204 and r.headers["access-control-allow-headers"] == "grpc-accept-encoding"

            r = await c.get(base + "/grpc/web" + path)
            assert r.status_code == 405 and r.headers["access-control-allow-origin"] == "*"
            assert r.headers["content-type"].startswith("text/html")
            assert "access-control-allow-methods" not in r.headers
            r = await c.put(base + "/grpc/web" + path, content=frame(b"x"), headers={"Content-Type": BIN})
            assert r.status_code == 405

            for ctype in ("application/json", "application/grpc", "application/grpc-web; charset=utf-8", None):
                h = {"Content-Type": ctype} if ctype else {}
                r = await c.post(base + "/grpc/web" + path, content=frame(b"x"), headers=h)
                assert r.status_code == 400, ctype
                assert r.headers["content-type"].startswith("text/html")
                assert r.headers["access-control-allow-origin"] == "*"
                assert r.headers["access-control-expose-headers"] == "grpc-message,grpc-status"

            # bodies: not valid base64, empty, above max_req_body_size (length known or chunked)
            r = await call(c, gw, "/grpc/web" + path, b"AAAA*AAA", ctype=TEXT)
            assert r.status_code == 400
            r = await call(c, gw, "/grpc/web" + path, b"", ctype=BIN)
            assert r.status_code == 400
            r = await call(c, gw, "/small" + path, frame(b"123456"))        # 11 bytes
            assert r.status_code == 400

            async def chunks() -> AsyncIterator[bytes]:
                for part in (frame(b"1234")[:5], frame(b"1234")[5:], b"++"):
                    yield part

            r = await c.post(base + "/small" + path, content=chunks(), headers={"Content-Type": BIN})
            assert r.status_code == 400
            r = await call(c, gw, "/small" + path, frame(b"12345"))         # 10 bytes: fits
            assert r.status_code == 200 and frames(r.content) == [(0, b"route:12345"), trailer(0, "")]
        assert [b for _, b, _ in service.calls] == [b"12345"]
    finally:
        gw.stop()


async def test_with_cors_plugin(tmp_path: Path, svc: tuple[RouteService, int]) -> None:
    service, port = svc
    cors = {"allow_origins": "http://test.com", "allow_methods": "POST,OPTIONS",
            "allow_headers": "application/grpc-web", "expose_headers": "application/grpc-web",
            "max_age": 5, "allow_credential": True}
    gw = gateway(tmp_path, port, {"id": "cors", "uri": "/cors/*", "plugins": {NAME: {}, "cors": cors},
                                  "upstream": grpc_upstream(port)})
    path = f"/cors/{SVC}/GetRoute"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as c:
            r = await call(c, gw, path, b"AAAAAAcKBXdvcmxkCgo=", ctype=TEXT, headers={"Origin": "http://test.com"})
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "http://test.com"
            assert r.headers["access-control-allow-credentials"] == "true"
            # grpc-web's expose list wins (it runs after cors)
            assert r.headers["access-control-expose-headers"] == "grpc-message,grpc-status"
            assert frames(unbase64(r.content)) == [(0, b"route:\n\x05world"), trailer(0, "")]
            # an origin cors does not allow: grpc-web's "*"
            r = await call(c, gw, path, frame(b"o"), headers={"Origin": "http://other.com"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
            assert frames(r.content) == [(0, b"route:o"), trailer(0, "")]
            # the preflight: cors answers it first (200), grpc-web adds its methods and headers
            r = await c.options(f"http://127.0.0.1:{gw.port}{path}", headers={"Origin": "http://test.com"})
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "http://test.com"
            assert r.headers["access-control-allow-methods"] == "POST"
            assert r.headers["access-control-allow-headers"] == "content-type,x-grpc-web,x-user-agent"
    finally:
        gw.stop()


async def test_http_upstream_without_grpc_status_and_meta_disable(tmp_path: Path, up: Upstream) -> None:
    """An upstream that sends no grpc-status: the trailer frame says so (status 2)."""
    plain = {"type": "roundrobin", "nodes": {up.addr: 1}}
    gw = start_gateway(tmp_path / "gw", {"routes": [
        {"id": "plain", "uri": "/plain/*", "plugins": {NAME: {}}, "upstream": plain},
        {"id": "off", "uri": "/off/*", "plugins": {NAME: {"_meta": {"disable": True}}}, "upstream": plain}]})
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as c:
            r = await call(c, gw, "/plain/pkg.Svc/M?x=1", base64.b64encode(frame(b"abc")), ctype=TEXT)
            assert r.status_code == 200 and r.headers["content-type"] == TEXT
            body = unbase64(r.content)
            tail = trailer_frame(2, "upstream grpc status not received")
            assert body.endswith(tail)
            echo = httpx.Response(200, content=body[:-len(tail)]).json()
            assert echo["method"] == "POST" and echo["path"] == "/pkg.Svc/M?x=1"
            assert echo["body_len"] == 8
            req = up.requests[-1]
            assert req.body == frame(b"abc") and req.header("content-type") == "application/grpc"

            r = await call(c, gw, "/off/pkg.Svc/M", frame(b"abc"))
            assert r.headers["content-type"] == "application/json"
            assert "access-control-allow-origin" not in r.headers
            assert up.requests[-1].path == "/off/pkg.Svc/M" and up.requests[-1].body == frame(b"abc")
    finally:
        gw.stop()
