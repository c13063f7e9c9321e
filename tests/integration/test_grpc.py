"""gRPC through the gateway: a grpcio client calls a grpcio server over routes whose upstream has
``scheme: grpc`` (h2c) or ``grpcs`` (TLS, ALPN h2), as APISIX's grpc_pass does.

Methods are served by a generic handler on raw bytes (no generated stubs): unary, server
streaming, bidirectional streaming, an error with details in ``grpc-status-details-bin``, metadata
both ways with trailers, and a slow method for deadlines.  Every call has a deadline.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import pytest
from gwtools import Gateway, free_port, start_gateway
from pki import PKI, make_pki

TIMEOUT = 10.0
SVC = "/meshgate.test.Echo/"


class Echo:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.peers: list[str] = []
        self.metadata: list[dict[str, Any]] = []

    async def unary(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        md = {k: v for k, v in ctx.invocation_metadata() or ()}
        self.metadata.append(md)
        await ctx.send_initial_metadata((("x-initial", "hello"),))
        ctx.set_trailing_metadata((("x-trailing", "bye"), ("x-bin-bin", b"\x00\x01\xff")))
        return b"echo:" + req + b":" + md.get("x-client", "").encode()

    async def server_stream(self, req: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        n = int(req)
        for i in range(n):
            yield b"item-%d" % i

    async def bidi(self, it: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for msg in it:
            yield msg.upper()

    async def fail(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        ctx.set_trailing_metadata((("grpc-status-details-bin", b"\x08\x05\x12\x07details"),))
        await ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())
        return b""

    async def slow(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"late"

    async def big(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return req * 4

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("meshgate.test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Big": grpc.unary_unary_rpc_method_handler(self.big),
        })


async def grpc_server(echo: Echo, *, creds: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo.handler(),))
    port = (server.add_secure_port("127.0.0.1:0", creds) if creds is not None
            else server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    return server, port


def gateway(tmp: Path, port: int, *, scheme: str = "grpc", node: dict[str, Any] | None = None,
            extra_routes: list[dict[str, Any]] | None = None, ssls: list[dict[str, Any]] | None = None) -> Gateway:
    doc: dict[str, Any] = {"routes": [
        {"id": "grpc", "uri": SVC + "*", "upstream": {"scheme": scheme, "type": "roundrobin",
                                                    "nodes": {f"127.0.0.1:{port}": 1}}},
        *(extra_routes or [])]}
    if ssls:
        doc["ssls"] = ssls
    return start_gateway(tmp / "gw", doc, node=node)


@pytest.fixture
async def echo_grpc() -> AsyncIterator[tuple[Echo, int]]:
    echo = Echo()
    server, port = await grpc_server(echo)
    yield echo, port
    await server.stop(0)


async def test_unary_server_streaming_and_bidi_through_the_gateway(tmp_path: Path,
                                                                   echo_grpc: tuple[Echo, int]) -> None:
    echo, port = echo_grpc
    gw = gateway(tmp_path, port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
            unary = ch.unary_unary(SVC + "Unary")
            call = unary(b"hi", metadata=(("x-client", "c1"),), timeout=TIMEOUT)
            assert await call == b"echo:hi:c1"
            assert await call.code() == grpc.StatusCode.OK
            assert ("x-initial", "hello") in tuple(await call.initial_metadata())
            trailing = tuple(await call.trailing_metadata())
            assert ("x-trailing", "bye") in trailing and ("x-bin-bin", b"\x00\x01\xff") in trailing
            # the upstream saw the client's metadata and the forwarding the gateway adds
            md = echo.metadata[-1]
            assert md["x-client"] == "c1" and md["x-forwarded-proto"] == "http"
            assert md.get("x-real-ip") == "127.0.0.1"

            stream = ch.unary_stream(SVC + "ServerStream")
            got = [m async for m in stream(b"50", timeout=TIMEOUT)]
            assert got == [b"item-%d" % i for i in range(50)]

            bidi = ch.stream_stream(SVC + "Bidi")
            call2 = bidi(timeout=TIMEOUT)
            replies = []
            for word in (b"one", b"two", b"three"):
                await call2.write(word)
                replies.append(await call2.read())      # each answer before the next message
            await call2.done_writing()
            assert replies == [b"ONE", b"TWO", b"THREE"]
            assert await call2.read() == grpc.aio.EOF
            assert await call2.code() == grpc.StatusCode.OK

            # 4 MiB answer: flow control on both HTTP/2 legs
            big = ch.unary_unary(SVC + "Big")
            payload = bytes(range(256)) * 4096
            assert await big(payload, timeout=TIMEOUT) == payload * 4
            # 20 calls at once share the gateway's HTTP/2 connection to the upstream
            res = await asyncio.gather(*(unary(b"%d" % i, metadata=(("x-client", "p"),), timeout=TIMEOUT)
                                         for i in range(20)))
            assert res == [b"echo:%d:p" % i for i in range(20)]
    finally:
        gw.stop()


async def test_error_status_with_details_and_deadline(tmp_path: Path, echo_grpc: tuple[Echo, int]) -> None:
    echo, port = echo_grpc
    gw = gateway(tmp_path, port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await ch.unary_unary(SVC + "Fail")(b"x", timeout=TIMEOUT)
            e = ei.value
            assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing: x"
            assert ("grpc-status-details-bin", b"\x08\x05\x12\x07details") in tuple(e.trailing_metadata())

            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await ch.unary_unary(SVC + "Slow")(b"x", timeout=0.5)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 4
            # the cancellation reached the server through the gateway (RST_STREAM both legs)
            await asyncio.wait_for(echo.cancelled.wait(), 5)
            # the connection still serves
            assert await ch.unary_unary(SVC + "Unary")(b"ok", timeout=TIMEOUT) == b"echo:ok:"
    finally:
        gw.stop()


async def test_gateway_errors_are_grpc_statuses(tmp_path: Path) -> None:
    dead = free_port()
    gw = start_gateway(tmp_path / "gw", {"routes": [
        {"id": "dead", "uri": "/dead.Svc/*", "upstream": {"scheme": "grpc", "type": "roundrobin",
                                                          "nodes": {f"127.0.0.1:{dead}": 1}}},
        {"id": "auth", "uri": "/auth.Svc/*", "plugins": {"key-auth": {}},
         "upstream": {"scheme": "grpc", "type": "roundrobin", "nodes": {f"127.0.0.1:{dead}": 1}}}]})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
            cases = {"/dead.Svc/M": (grpc.StatusCode.UNAVAILABLE, "502 Bad Gateway"),
                     "/nothing.Svc/M": (grpc.StatusCode.UNIMPLEMENTED, "404 Route Not Found"),
                     "/auth.Svc/M": (grpc.StatusCode.UNAUTHENTICATED, "Missing API key in request")}
            for method, (code, details) in cases.items():
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await ch.unary_unary(method)(b"x", timeout=TIMEOUT)
                assert (ei.value.code(), ei.value.details()) == (code, details), method
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), {"edge": ("grpc.test",), "backend": ("backend.test",)})


async def test_grpcs_upstream_behind_tls_listener(tmp_path: Path, pki: PKI) -> None:
    echo = Echo()
    creds = grpc.ssl_server_credentials(((pki.pem("backend.key").encode(), pki.pem("backend.crt").encode()),))
    server, port = await grpc_server(echo, creds=creds)
    tls_port = free_port()
    node = {"apisix": {"ssl": {"enable": True, "listen": [{"ip": "127.0.0.1", "port": tls_port}]}}}
    gw = start_gateway(tmp_path / "gw", {
        "routes": [{"id": "grpcs", "uri": SVC + "*",
                    "upstream": {"scheme": "grpcs", "type": "roundrobin", "pass_host": "rewrite",
                                 "upstream_host": "backend.test", "nodes": {f"127.0.0.1:{port}": 1}}}],
        "ssls": [{"id": "edge", "sni": "grpc.test", **pki.pair("edge")}]}, node=node)
    try:
        ccreds = grpc.ssl_channel_credentials(root_certificates=pki.pem("ca.crt").encode())
        async with grpc.aio.secure_channel(f"127.0.0.1:{tls_port}", ccreds,
                                           options=(("grpc.ssl_target_name_override", "grpc.test"),)) as ch:
            call = ch.unary_unary(SVC + "Unary")(b"tls", metadata=(("x-client", "s"),), timeout=TIMEOUT)
            assert await call == b"echo:tls:s"
            assert ("x-trailing", "bye") in tuple(await call.trailing_metadata())
            got = [m async for m in ch.unary_stream(SVC + "ServerStream")(b"3", timeout=TIMEOUT)]
            assert got == [b"item-0", b"item-1", b"item-2"]
        assert echo.metadata[-1]["x-forwarded-proto"] == "https"
    finally:
        gw.stop()
        await server.stop(0)
