"""response-rewrite: schema, and the response the client sees (through the real gateway)."""

from __future__ import annotations

import base64
import gzip as gz

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError

NAME = "response-rewrite"
PREFIX = "failed to check the configuration of plugin response-rewrite err: "


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


def hello(req):
    return 200, {"Content-Type": "text/plain", "ETag": '"abc"', "X-Up": "1"}, b"hello world, hello upstream\n"


@pytest.fixture
async def hup():
    u = await Upstream(handler=hello).start()
    yield u
    await u.close()


# -- schema -----------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", [
    {"body": "new", "status_code": 201},
    {"body": base64.b64encode(b"x").decode(), "body_base64": True},
    {"headers": {"X-A": "1", "X-B": 2}},
    {"headers": {"add": ["X-A: 1"], "set": {"X-B": "$remote_addr"}, "remove": ["X-C"]}},
    {"vars": [["status", "==", 200]], "filters": [{"regex": "hello", "replace": "bye", "scope": "global"}]},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/x")


@pytest.mark.parametrize("conf, msg", [
    ({"status_code": 599}, 'property "status_code" validation failed: expected 599 to be at most 598'),
    ({"body": 1}, 'property "body" validation failed: wrong type: expected string, got number'),
    ({"filters": []}, 'property "filters" validation failed: expect array to have at least 1 items'),
    ({"filters": [{"regex": "l"}]},
     'property "filters" validation failed: failed to validate item 1: property "replace" is required'),
    ({"filters": [{"regex": "", "replace": "x"}]},
     'property "filters" validation failed: failed to validate item 1: property "regex" validation failed: '
     'string too short, expected at least 1, got 0'),
    ({"filters": [{"regex": "l", "replace": "x", "scope": "two"}]},
     'property "filters" validation failed: failed to validate item 1: property "scope" validation failed: '
     'matches none of the enum values'),
    # APISIX response-rewrite2.t TEST 9 / response-rewrite.t: check_schema texts
    ({"filters": [{"regex": "hello", "replace": "x", "options": "h"}]},
     'regex "hello" validation failed: unknown flag "h" (flags "h")'),
    ({"body": "not base64 !", "body_base64": True}, "invalid base64 content"),
    ({"body_base64": True}, "invalid base64 content"),
    ({"vars": [["status", "bad-op", 200]]}, "failed to validate the 'vars' expression: "),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.message.startswith(PREFIX + msg)


def test_schema_body_and_filters_exclusive(registry):
    with pytest.raises(ConfigError):
        registry.validate(NAME, {"body": "x", "filters": [{"regex": "a", "replace": "b"}]}, pointer="/plugins/x")


# -- behaviour --------------------------------------------------------------------------------
async def test_body_status_and_headers(tmp_path, hup):
    conf = {"body": "{\"code\":\"ok\"}\n", "status_code": 403,
            "headers": {"add": ["X-Added: $remote_addr"], "set": {"X-Up": "changed", "X-Num": 7},
                        "remove": ["ETag"]}}
    gw = start_gateway(tmp_path, routes(hup, conf))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 403
        assert r.body == b'{"code":"ok"}\n'
        assert r.header("x-added") == "127.0.0.1"
        assert r.header("x-up") == "changed"
        assert r.header("x-num") == "7"
        assert r.header("etag") is None
    finally:
        gw.stop()


async def test_body_base64(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup, {"body": base64.b64encode(b"\x00binary\xff").decode(),
                                              "body_base64": True}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 200 and r.body == b"\x00binary\xff"
    finally:
        gw.stop()


async def test_legacy_headers_and_vars(tmp_path, hup):
    conf = {"headers": {"X-Server-Id": 3, "X-Status": "$status"}, "vars": [["arg_rw", "==", "1"]]}
    gw = start_gateway(tmp_path, routes(hup, conf))
    try:
        r = await http(gw.addr, "GET", "/hello?rw=1")
        assert r.header("x-server-id") == "3" and r.header("x-status") == "200"
        assert r.body == b"hello world, hello upstream\n"
        r = await http(gw.addr, "GET", "/hello?rw=0")
        assert r.header("x-server-id") is None and r.header("x-up") == "1"
    finally:
        gw.stop()


async def test_filters_once_and_global(tmp_path, hup):
    conf = {"filters": [{"regex": "hello", "replace": "bye", "scope": "global"},
                        {"regex": "(w)orld", "replace": "$1ORLD"}]}
    gw = start_gateway(tmp_path, routes(hup, conf))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 200
        assert r.body == b"bye wORLD, bye upstream\n"
        assert r.header("etag") is None
    finally:
        gw.stop()
    conf = {"filters": [{"regex": "HELLO", "replace": "bye", "options": "i"}]}
    gw = start_gateway(tmp_path / "2", routes(hup, conf))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.body == b"bye world, hello upstream\n"
    finally:
        gw.stop()


async def test_filters_on_gzip_body(tmp_path):
    def zipped(req):
        return 200, {"Content-Type": "text/plain", "Content-Encoding": "gzip"}, gz.compress(b"hello world")

    u = await Upstream(handler=zipped).start()
    gw = start_gateway(tmp_path, routes(u, {"filters": [{"regex": "world", "replace": "there"}]}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.body == b"hello there"
        assert r.header("content-encoding") is None
    finally:
        gw.stop()
        await u.close()


async def test_applies_to_plugin_answers_and_meta_disable(tmp_path, hup):
    doc = {"routes": [
        {"id": "1", "uri": "/mock", "plugins": {
            "mocking": {"response_example": "mocked"},
            NAME: {"headers": {"set": {"X-Rewritten": "yes"}}}},
         "upstream": {"type": "roundrobin", "nodes": {hup.addr: 1}}},
        {"id": "2", "uri": "/off", "plugins": {NAME: {"body": "x", "_meta": {"disable": True}}},
         "upstream": {"type": "roundrobin", "nodes": {hup.addr: 1}}},
    ]}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/mock")
        assert r.body == b"mocked" and r.header("x-rewritten") == "yes"
        r = await http(gw.addr, "GET", "/off")
        assert r.body == b"hello world, hello upstream\n"
    finally:
        gw.stop()
