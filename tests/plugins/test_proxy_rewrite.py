"""proxy-rewrite: schema, and the request the upstream receives (through the real gateway)."""

from __future__ import annotations

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError

NAME = "proxy-rewrite"


def routes(up, conf, uri="/*", **extra):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}, **extra}]}


# -- schema -----------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", [
    {"uri": "/test/add"},
    {"regex_uri": ["^/test/(.*)", "/$1"]},
    {"regex_uri": ["^/a/(.*)", "/x/$1", "^/b/(.*)", "/y/${1}"]},
    {"host": "example.com:8080", "method": "POST"},
    {"headers": {"X-Api": "v", "X-Num": 1}},
    {"headers": {"add": {"X-A": ["1", 2]}, "set": {"X-B": "$uri"}, "remove": ["X-C"]}},
    {"use_real_request_uri_unsafe": True},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/x")


@pytest.mark.parametrize("conf, msg", [
    ({"regex_uri": ["^/test/(.*)", "/$1", "^/x"]},
     "failed to check the configuration of plugin proxy-rewrite err: The length of regex_uri should be an even number"),
    ({"regex_uri": ["^/test/(.*)", "/$a"]},
     "failed to check the configuration of plugin proxy-rewrite err: invalid regex_uri(^/test/(.*), /$a): "
     "invalid capturing variable name found"),
    ({"regex_uri": ["^/test/(.*", "/$1"]},
     "failed to check the configuration of plugin proxy-rewrite err: invalid regex_uri(^/test/(.*, /$1): "
     "missing ), unterminated subpattern at position 7"),
    ({"headers": {"X-Api\u00e9": "v"}},
     "failed to check the configuration of plugin proxy-rewrite err: invalid field character in header"),
    ({"headers": {"X-Api": "v\r\nX: y"}},
     "failed to check the configuration of plugin proxy-rewrite err: invalid value character in header"),
])
def test_schema_check_errors(registry, conf, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.message == msg
    assert ei.value.pointer == "/plugins/x"


@pytest.mark.parametrize("conf, pointer, msg", [
    ({}, "/plugins/x", "expect object to have at least 1 properties"),
    ({"uri": "no-slash"}, "/plugins/x/uri",
     'property "uri" validation failed: failed to match pattern "^\\/.*" with "no-slash"'),
    ({"method": "FOO"}, "/plugins/x/method", 'property "method" validation failed: matches none of the enum values'),
    ({"regex_uri": ["^/only"]}, "/plugins/x/regex_uri",
     'property "regex_uri" validation failed: expect array to have at least 2 items'),
    ({"use_real_request_uri_unsafe": "yes"}, "/plugins/x/use_real_request_uri_unsafe",
     'property "use_real_request_uri_unsafe" validation failed: wrong type: expected boolean, got string'),
])
def test_schema_invalid(registry, conf, pointer, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.pointer == pointer
    assert ei.value.message == "failed to check the configuration of plugin proxy-rewrite err: " + msg


@pytest.mark.parametrize("conf", [{"host": "bad host"}, {"headers": {"add": {"X-A": {"no": 1}}}},
                                  {"headers": {"X:A": "v"}}])
def test_schema_invalid_shapes(registry, conf):
    with pytest.raises(ConfigError):
        registry.validate(NAME, conf, pointer="/plugins/x")


# -- behaviour --------------------------------------------------------------------------------
async def test_uri_with_vars_keeps_query(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"uri": "/test/$arg_name/x", "host": "rewritten.example",
                                             "method": "POST"}))
    try:
        r = await http(gw.addr, "GET", "/hello?name=jack&a=1")
        assert r.status == 200
        got = up.requests[-1]
        assert got.path == "/test/jack/x?name=jack&a=1"
        assert got.header("host") == "rewritten.example"
        assert got.method == "POST"
    finally:
        gw.stop()


async def test_uri_var_question_mark_is_escaped(tmp_path, up):
    # APISIX proxy-rewrite3.t TEST 24: a '?' coming from $uri may not start a query
    gw = start_gateway(tmp_path, routes(up, {"uri": "/$uri/remain"}))
    try:
        r = await http(gw.addr, "GET", "/hello%3fa=1%20b")
        assert r.status == 200
        assert up.requests[-1].path == "//hello%253Fa=1%20b/remain"
    finally:
        gw.stop()


async def test_host_only_reescapes_decoded_uri(tmp_path, up):
    # proxy-rewrite3.t TEST 22: the decoded '?' (from %3f) stays in the path, escaped
    gw = start_gateway(tmp_path, routes(up, {"host": "test.xxxx.com"}))
    try:
        r = await http(gw.addr, "GET", "/hello%3fa=1%20b")
        assert r.status == 200
        assert up.requests[-1].path == "/hello%3Fa=1%20b"
        assert up.requests[-1].header("host") == "test.xxxx.com"
    finally:
        gw.stop()


async def test_regex_uri_first_matching_pair_and_captures_in_headers(tmp_path, up):
    conf = {"regex_uri": ["^/nomatch/(.*)", "/no/$1", "^/test/(\\w+)/(.*)", "/$2/$1"],
            "headers": {"set": {"X-Cap": "$1-$2", "X-Uri": "$uri"}, "add": {"X-Multi": ["a", "b"]},
                        "remove": ["X-Drop"]}}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        r = await http(gw.addr, "GET", "/test/abc/def?q=1", headers={"X-Drop": "1", "X-Multi": "orig"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.path == "/def/abc?q=1"
        assert got.header("x-cap") == "abc-def"
        assert got.header("x-uri") == "/test/abc/def"
        assert got.header("x-drop") is None
        assert got.headers_all("x-multi") == ["orig", "a", "b"]
        # no pair matches: the uri is passed unchanged
        r = await http(gw.addr, "GET", "/other")
        assert r.status == 200 and up.requests[-1].path == "/other"
    finally:
        gw.stop()


async def test_legacy_headers_map_sets(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"headers": {"X-Api-Version": "v2", "X-Num": 7}}))
    try:
        r = await http(gw.addr, "GET", "/h", headers={"X-Api-Version": "v1"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.headers_all("x-api-version") == ["v2"]
        assert got.header("x-num") == "7"
    finally:
        gw.stop()


async def test_use_real_request_uri_unsafe(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"use_real_request_uri_unsafe": True}))
    try:
        r = await http(gw.addr, "GET", "/a//b/%7E?x=%20")
        assert r.status == 200
        assert up.requests[-1].path == "/a//b/%7E?x=%20"
    finally:
        gw.stop()


async def test_meta_disable_and_filter(tmp_path, up):
    doc = {"routes": [
        {"id": "1", "uri": "/off", "plugins": {NAME: {"uri": "/rewritten", "_meta": {"disable": True}}},
         "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
        {"id": "2", "uri": "/flt", "plugins": {NAME: {"uri": "/rewritten",
                                                      "_meta": {"filter": [["arg_go", "==", "1"]]}}},
         "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
    ]}
    gw = start_gateway(tmp_path, doc)
    try:
        await http(gw.addr, "GET", "/off")
        assert up.requests[-1].path == "/off"
        await http(gw.addr, "GET", "/flt?go=0")
        assert up.requests[-1].path == "/flt?go=0"
        await http(gw.addr, "GET", "/flt?go=1")
        assert up.requests[-1].path == "/rewritten?go=1"
    finally:
        gw.stop()
