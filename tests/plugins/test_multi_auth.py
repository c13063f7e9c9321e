"""multi-auth: schema, and behaviour through the real gateway (APISIX t/plugin/multi-auth*.t)."""

from __future__ import annotations

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError

FAILED = b'{"message":"Authorization Failed"}\n'
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ1c2VyLWtleSIsIm5iZiI6MTcyNzI3NDk4M30."
       "N6ebc4U5ms976pwKZ_iQ88w_uJKqUVNtTYZ_nXhRpWo")
EXPIRED = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ1c2VyLWtleSIsImV4cCI6MTU2Mzg3MDUwMX0."
           "pPNVvh-TQsdDzorRwa-uuiLYiEBODscp9wv0cwD6c68")

CONSUMERS = [
    {"username": "foo", "plugins": {"basic-auth": {"username": "foo", "password": "bar"},
                                    "key-auth": {"key": "auth-one"}}},
    {"username": "jack", "plugins": {"jwt-auth": {"key": "user-key", "secret": "my-secret-key"}}},
]


def doc(up, plugins):
    return {"routes": [{"id": "1", "uri": "/*", "plugins": plugins,
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}], "consumers": CONSUMERS}


def err(registry, conf):
    with pytest.raises(ConfigError) as e:
        registry.validate("multi-auth", conf, pointer="/plugins/multi-auth")
    return e.value.message


def test_schema(registry):
    registry.validate("multi-auth", {"auth_plugins": [{"basic-auth": {}}, {"key-auth": {}}, {"jwt-auth": {}},
                                                      {"hmac-auth": {}}]}, pointer="/p")
    pre = "failed to check the configuration of plugin multi-auth err: "
    assert err(registry, {"auth_plugins": [{"basic-auth": {"hide_credentials": "false"}}, {"key-auth": {}}]}) == (
        pre + 'plugin basic-auth check schema failed: property "hide_credentials" validation failed: '
              "wrong type: expected boolean, got string")
    assert err(registry, {"auth_plugins": [{"key-auth": {}}, {"basic-auth": "blah"}, {"jwt-auth": {}}]}) == (
        pre + "plugin basic-auth check schema failed: wrong type: expected object, got string")
    assert err(registry, {"auth_plugins": [{"key-auth": {}}, {"basic-auth": {}}, {"jwt-auth": {"header": 123}}]}) == (
        pre + 'plugin jwt-auth check schema failed: property "header" validation failed: '
              "wrong type: expected string, got number")
    assert err(registry, {}) == pre + 'property "auth_plugins" is required'
    assert err(registry, {"auth_plugins": [{"basic-auth": {}}]}) == (
        pre + 'property "auth_plugins" validation failed: expect array to have at least 2 items')
    assert err(registry, {"auth_plugins": [{"key-auth": {}}, {"no-such-auth": {}}]}) == \
        pre + "no-such-auth plugin did not found"
    assert err(registry, {"auth_plugins": [{"key-auth": {}}, {"cors": {}}]}) == pre + "cors plugin is not supported"


async def test_first_success_wins(tmp_path, up):
    plugins = {"multi-auth": {"auth_plugins": [
        {"basic-auth": {}},
        {"key-auth": {"query": "apikey", "hide_credentials": True, "header": "apikey"}},
        {"jwt-auth": {"cookie": "jwt", "query": "jwt", "hide_credentials": True, "header": "authorization"}},
        {"hmac-auth": {}},
    ]}}
    gw = start_gateway(tmp_path, doc(up, plugins))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert (r.status, r.body) == (401, FAILED)
        log = gw.log()
        for line in ("basic-auth failed to authenticate the request, code: 401. error: Missing authorization in request",
                     "key-auth failed to authenticate the request, code: 401. error: Missing API key in request",
                     "jwt-auth failed to authenticate the request, code: 401. error: Missing JWT token in request",
                     "hmac-auth failed to authenticate the request, code: 401. error: "
                     "client request can't be validated: missing Authorization header"):
            assert line in log, line

        r = await http(gw.addr, "GET", "/hello", headers={"Authorization": "Basic Zm9vOmJhcg=="})
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "foo"
        # a key-auth failure before does not leave its challenge on the success
        assert r.header("WWW-Authenticate") is None

        r = await http(gw.addr, "GET", "/hello", headers={"apikey": "auth-one"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("X-Consumer-Username") == "foo" and got.header("apikey") is None   # hidden

        r = await http(gw.addr, "GET", "/hello?jwt=" + JWT)
        assert r.status == 200
        assert up.requests[-1].header("X-Consumer-Username") == "jack" and up.requests[-1].path == "/hello"

        n = len(up.requests)
        for headers in ({"Authorization": "Basic YmFyOmJhcgo="}, {"apikey": "auth-two"},
                        {"Authorization": "Bearer " + EXPIRED}):
            r = await http(gw.addr, "GET", "/hello", headers=headers)
            assert (r.status, r.body) == (401, FAILED), headers
        assert len(up.requests) == n
        log = gw.log()
        for line in ("basic-auth failed to authenticate the request, code: 401. error: failed to find user: invalid user",
                     "key-auth failed to authenticate the request, code: 401. error: "
                     "failed to find consumer: invalid api key",
                     "jwt-auth failed to authenticate the request, code: 401. error: JWT token invalid: "
                     "invalid jwt string",
                     # jwt-auth (hide_credentials) removed Authorization while fetching the token, as APISIX
                     "hmac-auth failed to authenticate the request, code: 401. error: client request can't be "
                     "validated: missing Authorization header",
                     "jwt-auth failed to authenticate the request, code: 401. error: failed to verify jwt: "
                     "'exp' claim expired at Tue, 23 Jul 2019 08:28:21 GMT"):
            assert line in log, line
        assert "my-secret-key" not in log and "auth-one" not in log
    finally:
        gw.stop()


async def test_missing_anonymous_consumers_and_consumer_plugins(tmp_path, up):
    consumers = CONSUMERS + [{"username": "anon", "plugins": {
        "proxy-rewrite": {"headers": {"set": {"X-Anon": "1"}}}}}]
    routes = doc(up, {"multi-auth": {"auth_plugins": [
        {"basic-auth": {"anonymous_consumer": "not-found-anonymous"}},
        {"key-auth": {"anonymous_consumer": "not-found-anonymous"}},
        {"jwt-auth": {"anonymous_consumer": "not-found-anonymous"}},
    ]}})
    routes["consumers"] = consumers
    routes["routes"].append({"id": "2", "uri": "/anon/*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                             "plugins": {"multi-auth": {"auth_plugins": [
                                 {"basic-auth": {}}, {"key-auth": {"anonymous_consumer": "anon"}}]}}})
    gw = start_gateway(tmp_path, routes)
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert (r.status, r.body) == (401, FAILED)
        # the challenge of the last plugin that failed, as in APISIX
        assert r.header("WWW-Authenticate") == 'Bearer realm="jwt"'
        log = gw.log()
        for name in ("basic-auth", "key-auth", "jwt-auth"):
            assert (f"{name} failed to authenticate the request, code: 401. error: "
                    "failed to get anonymous consumer not-found-anonymous") in log
        r = await http(gw.addr, "GET", "/anon/x")
        assert r.status == 200
        assert up.requests[-1].header("X-Consumer-Username") == "anon" and up.requests[-1].header("X-Anon") == "1"
    finally:
        gw.stop()
