"""client-control: per-route request body limit (through the real gateway)."""

from __future__ import annotations

import pytest
from gwtools import http, raw_request, start_gateway

from meshgate.errors import ConfigError

NAME = "client-control"


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


def test_schema(registry):
    registry.validate(NAME, {"max_body_size": 0}, pointer="/plugins/x")
    registry.validate(NAME, {}, pointer="/plugins/x")
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"max_body_size": -1}, pointer="/plugins/x")
    assert ei.value.message == ("failed to check the configuration of plugin client-control err: "
                                'property "max_body_size" validation failed: expected -1 to be at least 0')


CHUNKED = b"POST /hello HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nHello \r\n0\r\n\r\n"


async def test_content_length_over_limit_is_413(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"max_body_size": 5}))
    try:
        r = await http(gw.addr, "POST", "/hello", body=b"123456")
        assert r.status == 413 and b"413 Request Entity Too Large" in r.body
        r = await http(gw.addr, "POST", "/hello", body=b"12345")
        assert r.status == 200 and up.requests[-1].body == b"12345"
        data, _ = await raw_request(gw.addr, CHUNKED, timeout=3)
        assert data.startswith(b"HTTP/1.1 413 ")
        assert len(up.requests) == 1
    finally:
        gw.stop()


async def test_zero_means_no_limit(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"max_body_size": 0}))
    try:
        r = await http(gw.addr, "POST", "/hello", body=b"1" * 1000)
        assert r.status == 200
        data, _ = await raw_request(gw.addr, CHUNKED, timeout=3)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert up.requests[-1].body == b"Hello "
    finally:
        gw.stop()


async def test_chunked_under_limit_passes(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"max_body_size": 100}))
    try:
        data, _ = await raw_request(gw.addr, CHUNKED, timeout=3)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert up.requests[-1].body == b"Hello "
    finally:
        gw.stop()
