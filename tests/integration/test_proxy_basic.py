"""Basic forwarding through the real gateway process."""

from __future__ import annotations

import asyncio

import pytest
from gwtools import Upstream, http, raw_request, read_response, start_gateway


def route(up: Upstream, uri: str = "/*", **extra):
    return {"routes": [{"id": "1", "uri": uri, "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}, **extra}]}


@pytest.fixture
async def up():
    u = await Upstream().start()
    yield u
    await u.close()


async def test_forwards_and_sets_forwarding_headers(tmp_path, up):
    gw = start_gateway(tmp_path, route(up))
    try:
        r = await http(gw.addr, "GET", "/hello?a=1", host="example.com:8080",
                       headers={"X-Forwarded-Proto": "https", "Connection": "keep-alive"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.path == "/hello?a=1"
        assert got.header("host") == "example.com:8080"
        assert got.header("x-real-ip") == "127.0.0.1"
        assert got.header("x-forwarded-for") == "127.0.0.1"
        # not a trusted address: the client's X-Forwarded-Proto is overwritten
        assert got.header("x-forwarded-proto") == "http"
        # APISIX: the Host as sent, and the port it carries (t/core/trusted-addresses.t TEST 11)
        assert got.header("x-forwarded-host") == "example.com:8080"
        assert got.header("x-forwarded-port") == "8080"
        assert got.header("connection") is None
    finally:
        assert gw.stop() == 0


async def test_no_route_is_404_json(tmp_path, up):
    gw = start_gateway(tmp_path, route(up, uri="/only"))
    try:
        r = await http(gw.addr, "GET", "/other")
        assert r.status == 404
        assert r.json() == {"error_msg": "404 Route Not Found"}
        assert up.requests == []
    finally:
        gw.stop()


async def test_keepalive_reuse_both_sides(tmp_path, up):
    gw = start_gateway(tmp_path, route(up))
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        for i in range(20):
            writer.write(f"GET /k{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            r = await read_response(reader)
            assert r is not None and r.status == 200
        writer.close()
        assert len(up.requests) == 20
        assert up.connections == 1  # one pooled upstream connection served all of them
    finally:
        gw.stop()


async def test_pipelined_requests_answered_in_order(tmp_path, up):
    gw = start_gateway(tmp_path, route(up))
    try:
        data = b"".join(f"GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5))
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(data)
        paths = []
        for _ in range(5):
            r = await read_response(reader)
            assert r is not None and r.status == 200
            paths.append(r.json()["path"])
        writer.close()
        assert paths == [f"/p{i}" for i in range(5)]
    finally:
        gw.stop()


async def test_pipelined_local_and_proxied_answers_keep_their_order(tmp_path, up):
    """Answers made by the gateway itself (404) between proxied ones, all asked in one write:
    the writes of one loop turn go out together (common.WriteBatch), in the order made."""
    gw = start_gateway(tmp_path, route(up, uri="/p/*"))
    try:
        paths = ["/p/1", "/none", "/p/2", "/none", "/none", "/p/3", "/p/4", "/none"]
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for p in paths))
        for p in paths:
            r = await read_response(reader)
            assert r is not None
            if p == "/none":
                assert (r.status, r.body) == (404, b'{"error_msg":"404 Route Not Found"}\n')
            else:
                assert r.status == 200 and r.json()["path"] == p
        writer.write(b"GET /p/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        r = await read_response(reader)       # the last answer whole, then the close
        assert r is not None and r.status == 200 and r.json()["path"] == "/p/last"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        gw.stop()


async def test_http10_client(tmp_path, up):
    gw = start_gateway(tmp_path, route(up))
    try:
        out, closed = await raw_request(gw.addr, b"GET /old HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200")
        assert closed
        assert b"Connection: close" in out
    finally:
        gw.stop()


async def test_head_request(tmp_path, up):
    gw = start_gateway(tmp_path, route(up))
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_response(reader, head=True)
        assert r is not None and r.status == 200 and r.body == b""
        r2 = await read_response(reader)
        assert r2 is not None and r2.json()["path"] == "/after"
        writer.close()
    finally:
        gw.stop()


async def test_chunked_both_ways(tmp_path):
    async def producer(transport):
        transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(5):
            transport.write(b"5\r\nchunk\r\n")
            await asyncio.sleep(0.01)
        transport.write(b"0\r\n\r\n")

    def handler(req):
        return 200, {}, producer

    up = await Upstream(handler=handler).start()
    gw = start_gateway(tmp_path, route(up))
    try:
        body = b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        r = await read_response(reader)
        assert r is not None and r.status == 200
        assert r.header("transfer-encoding") == "chunked"
        assert r.body == b"chunk" * 5
        got = up.requests[-1]
        assert got.body == b"abcdefg"
        assert got.header("transfer-encoding") == "chunked"
        writer.close()
    finally:
        gw.stop()
        await up.close()


async def test_expect_100_continue(tmp_path, up):
    gw = start_gateway(tmp_path, route(up))
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        r = await read_response(reader)
        assert r is not None and r.status == 200
        assert up.requests[-1].body == b"hello"
        assert up.requests[-1].header("expect") is None
        writer.close()
    finally:
        gw.stop()


async def test_control_api(tmp_path, up):
    gw = start_gateway(tmp_path, route(up, uri="/api/*"))
    try:
        assert gw.control("/v1/routes")[0]["value"]["uri"] == "/api/*"
        m = gw.control("/v1/match?uri=/api/x&host=a.com&method=GET")
        assert m["matched"] == "1"
        assert "precedence" in m
        cfg = gw.control("/v1/config")
        assert cfg["version"] == 1 and cfg["workers"][0]["version"] == 1
    finally:
        gw.stop()


async def test_keepalive_requests_limit_closes_client_connection(tmp_path, up):
    gw = start_gateway(tmp_path, route(up), http={"keepalive_requests": 3})
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        for i in range(3):
            writer.write(b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n")
            r = await read_response(reader)
            assert r is not None and r.status == 200
        assert r.header("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the gateway
        writer.close()
    finally:
        gw.stop()


async def test_upstream_endless_response_head_is_502(tmp_path):
    up = await Upstream(handler=lambda req: b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000).start()
    gw = start_gateway(tmp_path, route(up))
    try:
        r = await http(gw.addr, "GET", "/big", timeout=10)
        assert r.status == 502
    finally:
        gw.stop()
        await up.close()


async def test_large_body_in_first_read_with_head(tmp_path):
    body = b"z" * 300_000  # head and a big body arrive together in the first reads
    up = await Upstream(handler=lambda req: (200, {}, body)).start()
    gw = start_gateway(tmp_path, route(up))
    try:
        r = await http(gw.addr, "GET", "/bulk")
        assert r.status == 200 and r.body == body
    finally:
        gw.stop()
        await up.close()
