"""gzip: schema, which responses get compressed (through the real gateway)."""

from __future__ import annotations

import gzip as gz

import pytest
from gwtools import Upstream, http, raw_request, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.gzip import accepts_gzip

NAME = "gzip"
BODY = b"hello world, " * 50


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


def handler(req):
    ctype = req.header("x-ctype") or "text/html"
    headers = {"Content-Type": ctype}
    if req.header("x-enc"):
        headers["Content-Encoding"] = req.header("x-enc")
    if req.header("x-vary"):
        headers["Vary"] = "upstream"
    status = int(req.header("x-status") or 200)
    body = BODY[: int(req.header("x-len"))] if req.header("x-len") else BODY
    return status, headers, body


@pytest.fixture
async def gup():
    u = await Upstream(handler=handler).start()
    yield u
    await u.close()


def test_schema(registry):
    registry.validate(NAME, {"types": "*", "min_length": 1, "comp_level": 9, "http_version": 1.0,
                             "buffers": {"number": 1, "size": 1}, "vary": True}, pointer="/plugins/x")
    for conf, msg in [
        ({"comp_level": 10}, 'property "comp_level" validation failed: expected 10 to be at most 9'),
        ({"min_length": 0}, 'property "min_length" validation failed: expected 0 to be at least 1'),
        ({"http_version": 2}, 'property "http_version" validation failed: matches none of the enum values'),
    ]:
        with pytest.raises(ConfigError) as ei:
            registry.validate(NAME, conf, pointer="/plugins/x")
        assert ei.value.message == "failed to check the configuration of plugin gzip err: " + msg
    with pytest.raises(ConfigError):
        registry.validate(NAME, {"types": []}, pointer="/plugins/x")


def test_accepts_gzip():
    assert accepts_gzip("gzip, deflate, br")
    assert accepts_gzip("br;q=1.0, gzip;q=0.8")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("deflate")
    assert not accepts_gzip(None)


async def test_compresses_matching_response(tmp_path, gup):
    gw = start_gateway(tmp_path, routes(gup, {"vary": True, "comp_level": 9}))
    try:
        r = await http(gw.addr, "GET", "/hello", headers={"Accept-Encoding": "gzip"})
        assert r.status == 200
        assert r.header("content-encoding") == "gzip"
        assert r.header("content-length") is None
        assert r.header("vary") == "Accept-Encoding"
        assert gz.decompress(r.body) == BODY
        # the upstream's Vary is kept, ours added
        r = await http(gw.addr, "GET", "/hello", headers={"Accept-Encoding": "gzip", "X-Vary": "1"})
        assert [v for k, v in r.headers if k.lower() == "vary"] == ["upstream", "Accept-Encoding"]
    finally:
        gw.stop()


async def test_not_compressed_cases(tmp_path, gup):
    gw = start_gateway(tmp_path, routes(gup, {"types": ["text/html", "application/json"]}))
    try:
        cases = [
            {},                                                         # client does not accept gzip
            {"Accept-Encoding": "gzip", "X-Ctype": "text/plain"},      # type not listed
            {"Accept-Encoding": "gzip", "X-Enc": "br"},                # already encoded
            {"Accept-Encoding": "gzip", "X-Status": "500"},            # nginx compresses 200/403/404 only
            {"Accept-Encoding": "gzip", "Via": "1.1 proxy"},           # gzip_proxied off
        ]
        for h in cases:
            r = await http(gw.addr, "GET", "/hello", headers=h)
            assert r.header("content-encoding") in (None, h.get("X-Enc")), h
            n = int(h.get("X-Len", len(BODY)))
            assert r.body == BODY[:n], h
        r = await http(gw.addr, "GET", "/hello",
                       headers={"Accept-Encoding": "gzip", "X-Ctype": "application/json; charset=utf-8"})
        assert r.header("content-encoding") == "gzip" and gz.decompress(r.body) == BODY
        # HTTP/1.0 request with the default http_version 1.1: not compressed
        data, _ = await raw_request(gw.addr, b"GET /hello HTTP/1.0\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n",
                                    timeout=3)
        assert b"Content-Encoding" not in data.split(b"\r\n\r\n")[0]
    finally:
        gw.stop()


async def test_below_min_length_not_compressed(tmp_path, gup):
    gw = start_gateway(tmp_path, routes(gup, {"min_length": 20}))
    try:
        r = await http(gw.addr, "GET", "/hello", headers={"Accept-Encoding": "gzip", "X-Len": "19"})
        assert r.header("content-encoding") is None and r.body == BODY[:19]
        r = await http(gw.addr, "GET", "/hello", headers={"Accept-Encoding": "gzip", "X-Len": "20"})
        assert r.header("content-encoding") == "gzip" and gz.decompress(r.body) == BODY[:20]
    finally:
        gw.stop()


async def test_star_types_and_meta_disable(tmp_path, gup):
    doc = {"routes": [
        {"id": "1", "uri": "/all", "plugins": {NAME: {"types": "*"}}},
        {"id": "2", "uri": "/off", "plugins": {NAME: {"types": "*", "_meta": {"disable": True}}}},
    ]}
    for r in doc["routes"]:
        r["upstream"] = {"type": "roundrobin", "nodes": {gup.addr: 1}}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/all", headers={"Accept-Encoding": "gzip", "X-Ctype": "image/x-any"})
        assert r.header("content-encoding") == "gzip" and gz.decompress(r.body) == BODY
        r = await http(gw.addr, "GET", "/off", headers={"Accept-Encoding": "gzip"})
        assert r.header("content-encoding") is None and r.body == BODY
    finally:
        gw.stop()
