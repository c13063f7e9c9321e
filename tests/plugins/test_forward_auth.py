"""forward-auth: schema, and behaviour through the real gateway against a real loopback auth
service (APISIX t/plugin/forward-auth*.t)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from gwtools import Upstream, free_port, http, start_gateway

from meshgate.errors import ConfigError


def auth_handler(req):
    token = req.header("authorization")
    if req.method == "POST":
        try:
            data = json.loads(req.body or b"{}")
        except ValueError:
            return 400, {}, b"bad json"
        token = data.get("authorization", token)
    if token == "111":
        return 200, {}, b""
    if token == "222":
        return 200, {"X-User-ID": "i-am-an-user"}, b""
    if token == "333":
        return 403, {"Location": "http://example.com/auth", "X-Secret-Detail": "x"}, b""
    if token == "444":
        return 403, {"Content-Type": "application/json"}, json.dumps(
            {k.lower(): v for k, v in req.headers}).encode()
    if token == "555":
        return 200, {"X-User-ID": "i-am-an-user"}, b""
    if token == "666":
        return 403, {"Location": "http://example.com/auth"}, b""
    if token == "777":
        tenant = req.header("tenant_id")
        return (200, {"X-User-ID": "tenant-" + tenant}, b"") if tenant else (400, {}, b"no tenant")
    if token == "slow":
        async def later():
            await asyncio.sleep(3)
            return 200, {}, b""
        return later()
    return 200, {}, b""


@pytest.fixture
async def authsvc():
    u = await Upstream(handler=auth_handler).start()
    yield u
    await u.close()


def err(registry, conf):
    with pytest.raises(ConfigError) as e:
        registry.validate("forward-auth", conf, pointer="/plugins/forward-auth")
    return e.value.message


def test_schema(registry):
    registry.validate("forward-auth", {"uri": "http://127.0.0.1:8199"}, pointer="/p")
    registry.validate("forward-auth", {"uri": "http://127.0.0.1:8199", "request_method": "POST"}, pointer="/p")
    pre = "failed to check the configuration of plugin forward-auth err: "
    assert err(registry, {"request_headers": ["test"]}) == pre + 'property "uri" is required'
    assert err(registry, {"uri": 3233}) == pre + 'property "uri" validation failed: wrong type: expected string, got number'
    assert err(registry, {"uri": "http://a", "request_headers": "test"}) == (
        pre + 'property "request_headers" validation failed: wrong type: expected array, got string')
    assert err(registry, {"uri": "http://a", "request_method": "PUT"}) == (
        pre + 'property "request_method" validation failed: matches none of the enum values')
    assert "timeout" in err(registry, {"uri": "http://a", "timeout": 0})
    assert "status_on_error" in err(registry, {"uri": "http://a", "status_on_error": 600})
    assert "extra_headers" in err(registry, {"uri": "http://a", "extra_headers": {}})


async def test_forward_auth(tmp_path, up, authsvc):
    auth = f"http://{authsvc.addr}/auth"
    closed = f"http://127.0.0.1:{free_port()}/auth"
    ups = {"type": "roundrobin", "nodes": {up.addr: 1}}
    full = {"request_headers": ["Authorization"], "upstream_headers": ["X-User-ID"], "client_headers": ["Location"]}

    def r(rid, path, **fa):
        return {"id": rid, "uri": path, "upstream": ups, "plugins": {"forward-auth": fa}}

    routes = [
        r("1", "/hello", uri=auth, **full),
        r("2", "/empty", uri=auth, request_headers=["Authorization"]),
        r("3", "/ping", uri=auth, request_method="POST", upstream_headers=["X-User-ID"], client_headers=["Location"]),
        r("5", "/nodegr", uri=closed, **full),
        r("6", "/degrade", uri=closed, allow_degradation=True, **full),
        r("8", "/onerror", uri=closed, status_on_error=503, **full),
        r("9", "/extra", uri=auth, request_headers=["Authorization"], upstream_headers=["X-User-ID"],
          extra_headers={"tenant_id": "$arg_tenant"}),
        r("11", "/crlf", uri=auth, request_headers=["Authorization"], extra_headers={"X-User": "$arg_user"}),
        r("12", "/slow", uri=auth, request_headers=["Authorization"], timeout=300),
        r("13", "/toolarge", uri=auth, request_method="POST", max_req_body_size=10),
    ]
    gw = start_gateway(tmp_path, {"routes": routes})
    try:
        async def get(path, headers=None, method="GET", body=b""):
            return await http(gw.addr, method, path, headers=headers, body=body)

        resp = await get("/hello", {"Authorization": "111"})
        assert resp.status == 200
        got = authsvc.requests[-1]
        assert got.method == "GET" and got.path == "/auth" and got.header("authorization") == "111"
        assert got.header("content-length") is None

        # upstream_headers copied from the auth answer; a client-sent one is replaced / removed
        resp = await get("/hello", {"Authorization": "222", "X-User-ID": "injected"})
        assert resp.status == 200 and up.requests[-1].headers_all("X-User-ID") == ["i-am-an-user"]
        resp = await get("/hello", {"Authorization": "111", "X-User-ID": "injected"})
        assert resp.status == 200 and up.requests[-1].header("X-User-ID") is None

        # failure: the auth service's status, body and client_headers
        resp = await get("/hello", {"Authorization": "333"})
        assert resp.status == 403 and resp.header("Location") == "http://example.com/auth"
        assert resp.header("X-Secret-Detail") is None

        # X-Forwarded-* built by the gateway; the client's X-Forwarded-Host is not relayed
        resp = await http(gw.addr, "GET", "/hello?x=1", host="localhost", headers={
            "Authorization": "444", "X-Forwarded-Host": "apisix.apache.org", "X-Forwarded-For": "6.6.6.6"})
        assert resp.status == 403
        seen = resp.json()
        assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-method"] == "GET"
        assert seen["x-forwarded-host"] == "localhost" and seen["x-forwarded-uri"] == "/hello?x=1"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert [v for k, v in authsvc.requests[-1].headers if k.lower() == "x-forwarded-host"] == ["localhost"]

        resp = await get("/empty", {"Authorization": "222"})
        assert resp.status == 200 and up.requests[-1].header("X-User-ID") is None
        resp = await get("/empty", {"Authorization": "333"})
        assert resp.status == 403 and resp.header("Location") is None

        # POST: the client's body goes to the auth service, re-framed with a Content-Length
        resp = await get("/ping", method="POST", body=b'{"authorization": "555"}')
        assert resp.status == 200 and up.requests[-1].header("X-User-ID") == "i-am-an-user"
        assert up.requests[-1].body == b'{"authorization": "555"}'
        assert authsvc.requests[-1].method == "POST"
        assert authsvc.requests[-1].header("content-length") == "24"
        resp = await get("/ping", method="POST", body=b'{"authorization": "666"}')
        assert resp.status == 403 and resp.header("Location") == "http://example.com/auth"

        n = len(up.requests)
        resp = await get("/nodegr", {"Authorization": "111"})
        assert resp.status == 403 and len(up.requests) == n
        assert "failed to process forward auth, err:" in gw.log()
        assert (await get("/degrade", {"Authorization": "111"})).status == 200
        assert (await get("/onerror", {"Authorization": "333"})).status == 503

        resp = await get("/extra?tenant=123", {"Authorization": "777"})
        assert resp.status == 200 and up.requests[-1].header("X-User-ID") == "tenant-123"

        resp = await get("/crlf?user=guest%0d%0ax-user1:%20admin", {"Authorization": "111"})
        assert resp.status == 403
        assert all(h.header("x-user1") is None for h in authsvc.requests)

        t0 = time.monotonic()
        resp = await get("/slow", {"Authorization": "slow"})
        assert resp.status == 403 and time.monotonic() - t0 < 2.5

        resp = await get("/toolarge", method="POST", body=b'{"authorization":"555"}')
        assert resp.status == 413
    finally:
        gw.stop()


async def test_keepalive_reuses_auth_connection(tmp_path, up, authsvc):
    routes = [{"id": "1", "uri": "/*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
               "plugins": {"forward-auth": {"uri": f"http://{authsvc.addr}/auth", "request_headers": ["Authorization"]}}},
              {"id": "2", "uri": "/nk/*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
               "plugins": {"forward-auth": {"uri": f"http://{authsvc.addr}/auth", "keepalive": False}}}]
    gw = start_gateway(tmp_path, {"routes": routes})
    try:
        for _ in range(5):
            assert (await http(gw.addr, "GET", "/x", headers={"Authorization": "111"})).status == 200
        assert authsvc.connections == 1
        for _ in range(3):
            assert (await http(gw.addr, "GET", "/nk/x")).status == 200
        assert authsvc.connections == 4
        assert authsvc.requests[-1].header("connection") == "close"
    finally:
        gw.stop()
