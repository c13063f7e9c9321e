"""gRPC between workloads through the sidecar: `meshgate mesh` fed by a real ADS server with a
listener and an HTTP/2 cluster shaped as istiod sends them for a gRPC port, a grpcio client on
one side and a grpcio server on the other.

The listener's HTTP connection manager takes HTTP/2 with prior knowledge (Envoy's codec AUTO);
the cluster's ``HttpProtocolOptions`` (``explicit_http_config.http2_protocol_options``, what
istiod sets for a ``grpc`` port) makes the upstream leg HTTP/2; a cluster with
``use_downstream_protocol_config`` follows the client's protocol.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from adsserver import CDS, LDS, AdsServer
from gwtools import free_port
from meshtools import http_listener, start_mesh, started, static_cluster
from test_grpc import SVC, Echo, grpc_server

pytestmark = pytest.mark.timeout(90)

HPO = "type.googleapis.com/" + http_protocol_options_pb2.HttpProtocolOptions.DESCRIPTOR.full_name


def protocol_options(kind: str) -> dict[str, Any]:
    if kind == "http2":
        cfg: dict[str, Any] = {"explicit_http_config": {"http2_protocol_options": {}}}
    else:
        cfg = {"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}
    return {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HPO, **cfg}}}




@pytest.mark.parametrize("kind", ["http2", "downstream"])
async def test_grpc_through_the_sidecar(tmp_path: Path, ads: AdsServer, kind: str) -> None:
    echo = Echo()
    server, gport = await grpc_server(echo)
    port = free_port()
    ads.set(CDS, {"grpc-echo": static_cluster("grpc-echo", [f"127.0.0.1:{gport}"], **protocol_options(kind))})
    ads.set(LDS, {"l": http_listener("l", port, routes={"name": "grpc", "virtual_hosts": [
        {"name": "echo", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "grpc-echo", "timeout": "0s"}}]}]})})
    ads.push()
    m = await started(start_mesh(tmp_path, ads.address))
    try:
        await m.settled()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(SVC + "Unary")(b"mesh", metadata=(("x-client", "m"),), timeout=10)
            assert await call == b"echo:mesh:m"
            assert ("x-trailing", "bye") in tuple(await call.trailing_metadata())
            got = [x async for x in ch.unary_stream(SVC + "ServerStream")(b"5", timeout=10)]
            assert got == [b"item-%d" % i for i in range(5)]
            bidi = ch.stream_stream(SVC + "Bidi")(timeout=10)
            await bidi.write(b"a")
            assert await bidi.read() == b"A"
            await bidi.done_writing()
            assert await bidi.read() == grpc.aio.EOF
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await ch.unary_unary(SVC + "Fail")(b"y", timeout=10)
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await ch.unary_unary(SVC + "Slow")(b"y", timeout=0.5)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(echo.cancelled.wait(), 5)
        # Istio's request metrics see the gRPC calls
        text = m.metrics()
        assert 'istio_requests_total{reporter="source"' in text
        assert 'request_protocol="grpc"' in text and 'grpc_response_status="0"' in text
        assert 'grpc_response_status="5"' in text      # the NOT_FOUND call
    finally:
        assert m.stop() == 0
        await server.stop(0)
