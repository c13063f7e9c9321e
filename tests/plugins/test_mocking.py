"""mocking: schema, mocked answers (through the real gateway)."""

from __future__ import annotations

import json
import time

import pytest
from gwtools import http, start_gateway

from meshgate import __version__
from meshgate.errors import ConfigError
from meshgate.plugins.builtin.mocking import generate

NAME = "mocking"


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


SCHEMA = {"type": "object", "properties": {
    "field0": {"example": "abcd", "type": "string"},
    "field1": {"example": 123.12, "type": "number"},
    "field2": {"type": "object", "properties": {"child1": {"type": "string"}, "child2": {"type": "integer"}}},
    "field3": {"type": "array", "items": {"type": "boolean"}},
    "field4": {"type": "integer", "example": 7.9},
}}


@pytest.mark.parametrize("conf", [
    {"response_example": "x"},
    {"response_schema": SCHEMA, "content_type": "application/xml", "delay": 1},
    {"response_example": "x", "content_type": "text/plain", "response_status": 201,
     "response_headers": {"X-A": 1}, "with_mock_header": False},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/x")


@pytest.mark.parametrize("conf, msg", [
    ({"response_example": "x", "content_type": "image/png"}, "unsupported content type!"),
    ({"response_example": "x", "response_status": 99},
     'property "response_status" validation failed: expected 99 to be at least 100'),
    ({}, "object matches none of the required"),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.message == "failed to check the configuration of plugin mocking err: " + msg


def test_generate_json_and_xml():
    out = json.loads(generate(SCHEMA, "application/json;charset=utf8"))
    assert out["field0"] == "abcd" and out["field1"] == 123.12 and out["field4"] == 7
    assert isinstance(out["field2"]["child1"], str) and 1 <= out["field2"]["child2"] <= 10000
    assert 1 <= len(out["field3"]) <= 3 and all(isinstance(b, bool) for b in out["field3"])
    xml = generate({"properties": {"a": {"type": "string", "example": "x<y"}}}, "text/xml")
    assert xml == "<data>\n  <a>x&lt;y</a>\n</data>\n"
    assert generate(SCHEMA, "text/html") == ""


async def test_example_headers_and_status(tmp_path, up):
    conf = {"response_example": "hello $arg_name", "content_type": "text/plain", "response_status": 201,
            "response_headers": {"X-Mock": "$remote_addr", "X-Num": 3}}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        r = await http(gw.addr, "GET", "/hello?name=world")
        assert r.status == 201
        assert r.body == b"hello world"
        assert r.header("content-type") == "text/plain"
        assert r.header("x-mock-by") == f"APISIX/{__version__}"
        assert r.header("x-mock") == "127.0.0.1" and r.header("x-num") == "3"
        assert up.requests == []
    finally:
        gw.stop()


async def test_schema_body_no_mock_header_and_delay(tmp_path, up):
    conf = {"response_schema": SCHEMA, "with_mock_header": False, "delay": 1}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        t0 = time.monotonic()
        r = await http(gw.addr, "GET", "/hello")
        assert time.monotonic() - t0 >= 1.0
        assert r.status == 200
        assert r.header("content-type") == "application/json;charset=utf8"
        assert r.header("x-mock-by") is None
        assert r.json()["field0"] == "abcd"
    finally:
        gw.stop()


async def test_meta_filter(tmp_path, up):
    conf = {"response_example": "mock", "_meta": {"filter": [["arg_mock", "==", "1"]]}}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        assert (await http(gw.addr, "GET", "/x?mock=1")).body == b"mock"
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 200 and r.json()["path"] == "/x"
    finally:
        gw.stop()
