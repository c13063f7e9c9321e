"""echo: schema, body and header edits (through the real gateway)."""

from __future__ import annotations

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError

NAME = "echo"


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


def test_schema(registry):
    registry.validate(NAME, {"before_body": "x", "headers": {"Location": "https://a"}}, pointer="/plugins/x")
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"headers": {"X": "1"}}, pointer="/plugins/x")
    assert ei.value.message == "failed to check the configuration of plugin echo err: object matches none of the required"
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"body": "x", "headers": {"X": {"a": 1}}}, pointer="/plugins/x")
    assert ei.value.message == "failed to check the configuration of plugin echo err: invalid type as header value"


async def _streaming(transport):
    transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (b"hello ", b"upstream"):
        transport.write(b"%x\r\n%s\r\n" % (len(part), part))
    transport.write(b"0\r\n\r\n")


@pytest.fixture
async def hup():
    u = await Upstream(handler=lambda req: (200, {"Content-Type": "text/plain"}, _streaming)).start()
    yield u
    await u.close()


async def test_before_body_after_and_headers(tmp_path, hup):
    conf = {"before_body": "before the body modification ", "body": "hello upstream",
            "after_body": " after the body modification.",
            "headers": {"Location": "https://www.iresty.com", "Authorization": "userpass"}}
    gw = start_gateway(tmp_path, routes(hup, conf))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.body == b"before the body modification hello upstream after the body modification."
        assert r.header("location") == "https://www.iresty.com"
        assert r.header("authorization") == "userpass"
    finally:
        gw.stop()


async def test_before_and_after_around_streamed_body(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup, {"before_body": "[", "after_body": "]"}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 200 and r.body == b"[hello upstream]"
    finally:
        gw.stop()


async def test_body_replaces_fixed_length_response(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"body": "replaced"}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.body == b"replaced"
        assert r.header("content-length") in (None, "8")
    finally:
        gw.stop()
