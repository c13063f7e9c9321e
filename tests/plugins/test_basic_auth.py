"""basic-auth: schema, and behaviour through the real gateway (APISIX t/plugin/basic-auth*.t)."""

from __future__ import annotations

import base64

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.basic_auth import parse_authorization


def doc(up, plugins, consumers=None):
    return {"routes": [{"id": "1", "uri": "/*", "plugins": plugins,
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}],
            "consumers": consumers if consumers is not None else [
                {"username": "foo", "plugins": {"basic-auth": {"username": "foo", "password": "bar"}}}]}


def basic(user_pass: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


def err(registry, conf, **kw):
    with pytest.raises(ConfigError) as e:
        registry.validate("basic-auth", conf, pointer="/plugins/basic-auth", **kw)
    return e.value.message


def test_schema(registry):
    registry.validate("basic-auth", {}, pointer="/p")
    registry.validate("basic-auth", {"hide_credentials": True, "realm": "secure-zone", "anonymous_consumer": "a"},
                      pointer="/p")
    assert err(registry, {"anonymous_consumer": 1}) == (
        'failed to check the configuration of plugin basic-auth err: property "anonymous_consumer" validation '
        "failed: wrong type: expected string, got number")
    registry.validate("basic-auth", {"username": "foo", "password": "bar"}, pointer="/c", schema_type="consumer")
    assert err(registry, {"username": "foo"}, schema_type="consumer") == \
        'failed to check the configuration of plugin basic-auth err: property "password" is required'
    assert err(registry, {"username": 123, "password": "bar"}, schema_type="consumer").endswith(
        'property "username" validation failed: wrong type: expected string, got number')


def test_parse_authorization():
    assert parse_authorization("Bad_header YmFyOmJhcgo=") == "Invalid authorization header format"
    assert parse_authorization("Basic aca_a") == "Failed to decode authentication header: aca_a"
    assert parse_authorization("Basic YmFy") == "Split authorization err: invalid decoded data: bar"
    assert parse_authorization("Basic YmFyOmJhcgo=") == ("bar", "bar")          # whitespace dropped
    assert parse_authorization("bASiC Zm9vOmJhcg==") == ("foo", "bar")
    assert parse_authorization("Basic " + base64.b64encode(b"u:p:q").decode()) == ("u", "p:q")  # RFC 7617


async def test_answers(tmp_path, up):
    gw = start_gateway(tmp_path, doc(up, {"basic-auth": {}}))
    try:
        cases = [
            ({}, b'{"message":"Missing authorization in request"}\n'),
            ({"Authorization": "Bad_header YmFyOmJhcgo="}, b'{"message":"Invalid authorization in request"}\n'),
            ({"Authorization": "Basic aca_a"}, b'{"message":"Invalid authorization in request"}\n'),
            ({"Authorization": "Basic YmFy"}, b'{"message":"Invalid authorization in request"}\n'),
            ({"Authorization": "Basic YmFyOmJhcgo="}, b'{"message":"Invalid user authorization"}\n'),   # bar:bar
            ({"Authorization": "Basic Zm9vOmZvbwo="}, b'{"message":"Invalid user authorization"}\n'),   # foo:foo
        ]
        for headers, body in cases:
            r = await http(gw.addr, "GET", "/hello", headers=headers)
            assert (r.status, r.body) == (401, body), headers
            assert r.header("WWW-Authenticate") == 'Basic realm="basic"'
        assert up.requests == []
        log = gw.log()
        assert "Failed to decode authentication header: aca_a" in log
        assert '"bar"' not in log

        for scheme in ("Basic", "basic", "BASIC", "bAsIc"):
            r = await http(gw.addr, "GET", "/hello", headers={"Authorization": scheme + " Zm9vOmJhcg=="})
            assert r.status == 200, scheme
            got = up.requests[-1]
            assert got.header("X-Consumer-Username") == "foo"
            assert got.header("Authorization") == scheme + " Zm9vOmJhcg=="   # not hidden by default
    finally:
        gw.stop()


async def test_hide_credentials_realm_anonymous(tmp_path, up):
    consumers = [{"username": "foo", "plugins": {"basic-auth": {"username": "foo", "password": "bar"}}},
                 {"username": "anonymous", "plugins": {}}]
    routes = doc(up, {"basic-auth": {"hide_credentials": True, "realm": "secure-zone"}}, consumers)
    routes["routes"] += [
        {"id": "2", "uri": "/anon/*", "plugins": {"basic-auth": {"anonymous_consumer": "anonymous"}},
         "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
        {"id": "3", "uri": "/gone/*", "plugins": {"basic-auth": {"anonymous_consumer": "not-found-anonymous"}},
         "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
    ]
    gw = start_gateway(tmp_path, routes)
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 401 and r.header("WWW-Authenticate") == 'Basic realm="secure-zone"'
        r = await http(gw.addr, "GET", "/echo", headers=basic("foo:bar"))
        assert r.status == 200
        assert up.requests[-1].header("Authorization") is None
        assert up.requests[-1].header("X-Consumer-Username") == "foo"

        r = await http(gw.addr, "GET", "/anon/x")
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "anonymous"
        r = await http(gw.addr, "GET", "/anon/x", headers=basic("foo:wrong"))
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "anonymous"
        r = await http(gw.addr, "GET", "/anon/x", headers=basic("foo:bar"))
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "foo"

        r = await http(gw.addr, "GET", "/gone/x")
        assert (r.status, r.body) == (401, b'{"message":"Invalid user authorization"}\n')
        assert r.header("WWW-Authenticate") == 'Basic realm="basic"'
        assert "failed to get anonymous consumer not-found-anonymous" in gw.log()
    finally:
        gw.stop()


async def test_consumer_plugins_and_meta_filter(tmp_path, up):
    consumers = [{"username": "foo", "plugins": {
        "basic-auth": {"username": "foo", "password": "bar"},
        "proxy-rewrite": {"headers": {"set": {"X-Who": "foo"}}}}}]
    routes = doc(up, {"basic-auth": {"_meta": {"filter": [["arg_skip", "~=", "1"]]}}}, consumers)
    gw = start_gateway(tmp_path, routes)
    try:
        r = await http(gw.addr, "GET", "/x", headers=basic("foo:bar"))
        assert r.status == 200 and up.requests[-1].header("X-Who") == "foo"
        r = await http(gw.addr, "GET", "/x?skip=1")   # filtered out: no auth at all
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") is None
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 401
    finally:
        gw.stop()
