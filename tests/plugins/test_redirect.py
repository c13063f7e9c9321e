"""redirect: schema, and the redirects the client gets (through the real gateway)."""

from __future__ import annotations

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.redirect import https_port

NAME = "redirect"
PREFIX = "failed to check the configuration of plugin redirect err: "


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


# -- schema -----------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", [
    {"uri": "/test/add", "ret_code": 301},
    {"uri": "$uri/test/a${arg_name}c"},
    {"regex_uri": ["^/test/(.*)", "http://test.com/$1"]},
    {"http_to_https": True},
    {"uri": "/x", "encode_uri": True, "append_query_string": True},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/x")


@pytest.mark.parametrize("conf, msg", [
    ({"http_to_https": True, "append_query_string": True},
     "only one of `http_to_https` and `append_query_string` can be configured."),
    ({"regex_uri": ["^/test/(.*)", "/$a"]},
     "invalid regex_uri (^/test/(.*), /$a), err:invalid capturing variable name found"),
    ({"uri": "/x", "ret_code": 100}, 'property "ret_code" validation failed: expected 100 to be at least 200'),
    ({"regex_uri": ["a", "b", "c"]}, 'property "regex_uri" validation failed: expect array to have at most 2 items'),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.message == PREFIX + msg


@pytest.mark.parametrize("conf", [{}, {"uri": "/x", "http_to_https": True}, {"uri": "/"}])
def test_schema_one_of(registry, conf):
    with pytest.raises(ConfigError):
        registry.validate(NAME, conf, pointer="/plugins/x")


def test_https_port_choice():
    assert https_port({"https_port": 8443}, {"enable": True, "listen": [{"port": 9443}]}) == 8443
    assert https_port(None, {"enable": True, "listen": [{"port": 9445}]}) == 9445
    assert https_port(None, {"enable": True, "listen": [9443]}) == 9443
    assert https_port(None, {"enable": False, "listen": [{"port": 9445}]}) is None
    assert https_port(None, None) is None


# -- behaviour --------------------------------------------------------------------------------
async def test_uri_templates(tmp_path, up):
    doc = {"routes": [
        {"id": "1", "uri": "/a/*", "plugins": {NAME: {"uri": "$uri/test/a${arg_name}c"}}},
        {"id": "2", "uri": "/b/*", "plugins": {NAME: {"uri": "/foo$$uri", "ret_code": 301}}},
        {"id": "3", "uri": "/c/*", "plugins": {NAME: {"uri": "\\$uri/foo$uri\\$uri/bar"}}},
        {"id": "4", "uri": "/d/*", "plugins": {NAME: {"uri": "$uri/$bad_var/bar"}}},
    ]}
    for r in doc["routes"]:
        r["upstream"] = {"type": "roundrobin", "nodes": {up.addr: 1}}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/a/hello?name=json")
        assert r.status == 302 and r.header("location") == "/a/hello/test/ajsonc"
        assert r.header("content-type") == "text/html; charset=utf-8"
        assert b"<head><title>302 Found</title></head>" in r.body
        r = await http(gw.addr, "GET", "/b/hello")
        assert r.status == 301 and r.header("location") == "/foo$/b/hello"
        assert b"<h1>301 Moved Permanently</h1>" in r.body
        r = await http(gw.addr, "GET", "/c/hello")
        assert r.header("location") == "\\$uri/foo/c/hello\\$uri/bar"
        r = await http(gw.addr, "GET", "/d/hello")
        assert r.header("location") == "/d/hello//bar"
        assert up.requests == []
    finally:
        gw.stop()


async def test_http_to_https(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"http_to_https": True, "ret_code": 302}))
    try:
        r = await http(gw.addr, "GET", "/hello?a=1", host="foo.com")
        assert r.status == 301 and r.header("location") == "https://foo.com/hello?a=1"
        r = await http(gw.addr, "HEAD", "/hello", host="foo.com")
        assert r.status == 301
        r = await http(gw.addr, "POST", "/hello", host="foo.com")
        assert r.status == 308 and r.header("location") == "https://foo.com/hello"
        # an X-Forwarded-Proto from a client outside trusted_addresses does not count
        r = await http(gw.addr, "GET", "/hello", host="foo.com", headers={"X-Forwarded-Proto": "https"})
        assert r.status == 301 and up.requests == []
    finally:
        gw.stop()


async def test_http_to_https_behind_a_trusted_proxy(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"http_to_https": True}),
                       node={"apisix": {"trusted_addresses": ["127.0.0.1"]}})
    try:
        # already https at the trusted proxy in front: proxied
        r = await http(gw.addr, "GET", "/hello", host="foo.com", headers={"X-Forwarded-Proto": "https"})
        assert r.status == 200 and len(up.requests) == 1
    finally:
        gw.stop()


async def test_regex_uri_encode_and_append_query(tmp_path, up):
    doc = {"routes": [
        {"id": "1", "uri": "/test/*", "plugins": {NAME: {"regex_uri": ["^/test/(.*)", "http://test.com/$1"],
                                                         "ret_code": 301}}},
        {"id": "2", "uri": "/enc/*", "plugins": {NAME: {"uri": "$uri/x y", "encode_uri": True,
                                                        "append_query_string": True}}},
    ]}
    for r in doc["routes"]:
        r["upstream"] = {"type": "roundrobin", "nodes": {up.addr: 1}}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/test/1")
        assert r.status == 301 and r.header("location") == "http://test.com/1"
        r = await http(gw.addr, "GET", "/enc/a%20b?k=v")
        assert r.status == 302 and r.header("location") == "/enc/a%20b/x%20y?k=v"
    finally:
        gw.stop()


async def test_regex_uri_no_match_proxies_and_meta_filter(tmp_path, up):
    conf = {"regex_uri": ["^/test/(.*)", "http://test.com/$1"],
            "_meta": {"filter": [["arg_go", "==", "1"]]}}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 200 and up.requests[-1].path == "/hello"
        r = await http(gw.addr, "GET", "/test/1?go=0")
        assert r.status == 200
        r = await http(gw.addr, "GET", "/test/1?go=1")
        assert r.status == 302 and r.header("location") == "http://test.com/1"
    finally:
        gw.stop()
