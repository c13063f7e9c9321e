"""key-auth: schema, and behaviour through the real gateway (APISIX t/plugin/key-auth*.t)."""

from __future__ import annotations

import json

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError


def doc(up, plugins, consumers=None, **route):
    return {"routes": [{"id": "1", "uri": "/*", "plugins": plugins,
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}, **route}],
            "consumers": consumers if consumers is not None else [
                {"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}}}]}


def err(registry, conf, **kw):
    with pytest.raises(ConfigError) as e:
        registry.validate("key-auth", conf, pointer="/plugins/key-auth", **kw)
    return e.value.message


def test_schema(registry):
    registry.validate("key-auth", {}, pointer="/p")
    registry.validate("key-auth", {"header": "Authorization", "query": "auth", "hide_credentials": True,
                                   "realm": "my-custom-realm", "anonymous_consumer": "anon"}, pointer="/p")
    assert err(registry, {"hide_credentials": "yes"}) == (
        'failed to check the configuration of plugin key-auth err: property "hide_credentials" validation failed: '
        "wrong type: expected boolean, got string")
    assert err(registry, {"anonymous_consumer": ""}).endswith(
        'property "anonymous_consumer" validation failed: string too short, expected at least 1, got 0')
    assert "realm" in err(registry, {"realm": 'a"b'})
    # consumer side
    registry.validate("key-auth", {"key": "k"}, pointer="/c", schema_type="consumer")
    assert err(registry, {}, schema_type="consumer") == \
        'failed to check the configuration of plugin key-auth err: property "key" is required'
    assert err(registry, {"key": 123}, schema_type="consumer").endswith(
        'property "key" validation failed: wrong type: expected string, got number')


async def test_missing_invalid_valid(tmp_path, up):
    gw = start_gateway(tmp_path, doc(up, {"key-auth": {}}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert (r.status, r.body) == (401, b'{"message":"Missing API key in request"}\n')
        assert r.header("WWW-Authenticate") == 'apikey realm="key"'
        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "123"})
        assert (r.status, r.body) == (401, b'{"message":"Invalid API key in request"}\n')
        assert r.header("WWW-Authenticate") == 'apikey realm="key"'
        assert up.requests == []
        # the key must never appear in the log
        assert "auth-one" not in gw.log()

        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "auth-one"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("X-Consumer-Username") == "jack"
        assert got.header("apikey") == "auth-one"  # hide_credentials false: kept
        assert r.header("WWW-Authenticate") is None

        r = await http(gw.addr, "GET", "/hello?apikey=auth-one&x=1")
        assert r.status == 200 and up.requests[-1].path == "/hello?apikey=auth-one&x=1"
    finally:
        gw.stop()


async def test_custom_header_query_realm_and_hide_credentials(tmp_path, up):
    conf = {"key-auth": {"header": "Authorization", "query": "auth", "hide_credentials": True,
                         "realm": "my-custom-realm"}}
    gw = start_gateway(tmp_path, doc(up, conf))
    try:
        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "auth-one"})
        assert r.status == 401 and r.header("WWW-Authenticate") == 'apikey realm="my-custom-realm"'

        r = await http(gw.addr, "GET", "/echo", headers={"Authorization": "auth-one", "test": "auth-two"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("authorization") is None and got.header("test") == "auth-two"

        r = await http(gw.addr, "GET", "/echo?auth=auth-one&test=auth-two")
        assert r.status == 200 and up.requests[-1].path == "/echo?test=auth-two"

        # key in both places: the header is used and hidden, the query stays
        r = await http(gw.addr, "GET", "/echo?auth=auth-one", headers={"Authorization": "auth-one"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.path == "/echo?auth=auth-one" and got.header("authorization") is None
    finally:
        gw.stop()


async def test_anonymous_consumer(tmp_path, up):
    consumers = [{"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}}},
                 {"username": "anonymous", "plugins": {"proxy-rewrite": {"headers": {"set": {"X-Anon": "1"}}}}}]
    routes = doc(up, {"key-auth": {"anonymous_consumer": "anonymous", "hide_credentials": True, "query": "auth"}},
                 consumers)
    routes["routes"].append({"id": "2", "uri": "/missing/*", "plugins": {"key-auth": {
        "anonymous_consumer": "not-found-anonymous"}}, "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}})
    gw = start_gateway(tmp_path, routes)
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("X-Consumer-Username") == "anonymous" and got.header("X-Anon") == "1"

        # an invalid key falls back to anonymous and is not forwarded (header and query)
        r = await http(gw.addr, "GET", "/print?auth=invalid-key&keep=1", headers={"apikey": "invalid-key"})
        assert r.status == 200
        got = up.requests[-1]
        assert "invalid-key" not in got.raw.decode("latin-1")
        assert got.path == "/print?keep=1" and got.header("X-Consumer-Username") == "anonymous"

        r = await http(gw.addr, "GET", "/print", headers={"apikey": "auth-one"})
        assert up.requests[-1].header("X-Consumer-Username") == "jack" and up.requests[-1].header("X-Anon") is None

        r = await http(gw.addr, "GET", "/missing/x")
        assert (r.status, r.body) == (401, b'{"message":"Invalid user authorization"}\n')
        assert r.header("WWW-Authenticate") == 'apikey realm="key"'
        assert "failed to get anonymous consumer not-found-anonymous" in gw.log()
    finally:
        gw.stop()


async def test_consumer_plugins_apply_after_auth(tmp_path, up):
    consumers = [{"username": "jack", "plugins": {
        "key-auth": {"key": "auth-one"},
        "proxy-rewrite": {"headers": {"set": {"X-From-Consumer": "jack"}}}}}]
    gw = start_gateway(tmp_path, doc(up, {"key-auth": {}}, consumers))
    try:
        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "auth-one"})
        assert r.status == 200
        assert json.loads(r.body)["path"] == "/hello"
        assert up.requests[-1].header("X-From-Consumer") == "jack"
    finally:
        gw.stop()


async def test_meta_disable_and_error_response(tmp_path, up):
    routes = doc(up, {"key-auth": {"_meta": {"error_response": {"message": "nope"}}}})
    routes["routes"].append({"id": "2", "uri": "/open/*", "plugins": {"key-auth": {"_meta": {"disable": True}}},
                             "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}})
    gw = start_gateway(tmp_path, routes)
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert (r.status, r.body) == (401, b'{"message":"nope"}\n')
        r = await http(gw.addr, "GET", "/open/x")
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") is None
    finally:
        gw.stop()


async def test_credential_identifies_its_consumer(tmp_path, up):
    # APISIX 3.x credentials (t/node/credential-plugin-key-auth.t, ...-work-with-other-plugin.t,
    # t/config-center-yaml/credentials.t): the credential's key identifies jack; the upstream is
    # told which credential; jack's own non-auth plugins (limit-count) still apply.
    consumers = [
        {"id": "jack/credentials/34010989-ce4e-4d61-9493-b54cca8edb31",
         "plugins": {"key-auth": {"key": "p7a3k6r4t9"}}},
        {"username": "jack", "labels": {"custom_id": "c-42"},
         "plugins": {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}}},
        {"id": "jack/credentials/the-second-one", "plugins": {"key-auth": {"key": "v8p3q6r7t9"}}},
        {"id": "ghost/credentials/x", "plugins": {"key-auth": {"key": "boo"}}},
    ]
    gw = start_gateway(tmp_path, doc(up, {"key-auth": {}}, consumers))
    try:
        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "p7a3k6r4t9"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("X-Consumer-Username") == "jack"
        assert got.header("X-Credential-Identifier") == "34010989-ce4e-4d61-9493-b54cca8edb31"
        assert got.header("X-Consumer-Custom-ID") == "c-42"

        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "v8p3q6r7t9"})
        assert r.status == 200
        assert up.requests[-1].header("X-Credential-Identifier") == "the-second-one"

        # jack's limit-count counts both credentials: the third request is over the limit
        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "p7a3k6r4t9"})
        assert r.status == 503

        # a credential whose consumer does not exist identifies nobody
        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "boo"})
        assert (r.status, r.body) == (401, b'{"message":"Invalid API key in request"}\n')
        assert "ghost/credentials/x" in gw.log()
    finally:
        gw.stop()
