"""Admin API transport and access: token sources and roles, allow_admin on the socket peer,
CORS, HEAD, bodies, the plugin/schema endpoints, standalone routing, etcd down (503)."""

from __future__ import annotations

import asyncio
import json

import pytest

from admintools import KEY, VIEWER, Admin, http, registry, running_admin, up
from etcdpeer import EtcdCluster

from meshgate.admin.admin_api import AdminAPI
from meshgate.config import AdminConfig, AdminKey


@pytest.fixture
async def admin(cluster):
    async with running_admin(cluster.urls) as a:
        yield a


ROUTE = {"uri": "/hello", "upstream": up()}


# --- tokens and roles -----------------------------------------------------------------------


async def test_missing_and_wrong_key_are_401_and_write_nothing(admin: Admin):
    r = await admin.call("PUT", "routes/1", ROUTE, key=None)
    assert (r.status, r.json()) == (401, {"error_msg": "failed to check token", "description": "missing apikey"})
    assert r.header("X-API-VERSION") is None
    r = await admin.call("PUT", "routes/1", ROUTE, key="wrong")
    assert (r.status, r.json()) == (401, {"error_msg": "failed to check token", "description": "wrong apikey"})
    r = await admin.call("PUT", "routes/1", ROUTE, key="")
    assert r.json()["description"] == "wrong apikey"
    r = await admin.call("GET", "routes", key=KEY[:-1])           # a prefix of the key is not the key
    assert r.status == 401
    # every handler checks the token, also for resources that do not exist
    for method, path in (("GET", "routs"), ("GET", "plugins/list"), ("PUT", "plugins/reload"),
                         ("POST", "schema/validate/routes"), ("GET", "schema/route"),
                         ("POST", "configs/validate")):
        r = await admin.call(method, path, {} if method != "GET" else None, key=None)
        assert r.status == 401, (method, path)
    assert admin.reloads == []
    assert await admin.keys() == []


async def test_token_from_query_header_and_cookie(admin: Admin):
    r = await admin.call("PUT", f"routes/1?api_key={KEY}", ROUTE, key=None)
    assert r.status == 201
    r = await admin.call("GET", "routes/1", key=None, headers={"Cookie": f"x_api_key={KEY}"})
    assert r.status == 200
    r = await admin.call("GET", "routes/1", key=None, headers={"Cookie": f"other=1; X-API-KEY={KEY}"})
    assert r.status == 200
    # the query argument wins over the header (APISIX's order)
    r = await admin.call("GET", "routes/1?api_key=wrong", key=KEY)
    assert r.json()["description"] == "wrong apikey"
    r = await admin.call("GET", "routes/1??api_key=" + KEY, key=None)  # not the api_key argument
    assert r.json()["description"] == "missing apikey"


async def test_viewer_may_only_get(admin: Admin):
    assert (await admin.call("PUT", "routes/1", ROUTE)).status == 201
    r = await admin.call("GET", "routes/1", key=VIEWER)
    assert r.status == 200
    for method in ("PUT", "POST", "PATCH", "DELETE"):
        r = await admin.call(method, "routes/1" if method != "POST" else "routes", {"desc": "x", **ROUTE}, key=VIEWER)
        assert (r.status, r.json()) == (401, {"error_msg": "failed to check token",
                                              "description": "invalid method for role viewer"}), method
    r = await admin.call("PUT", "plugins/reload", key=VIEWER)
    assert r.status == 401 and admin.reloads == []
    assert await admin.keys() == ["/routes/1"]
    assert "desc" not in await admin.stored("/routes/1")


async def test_admin_key_not_required(cluster):
    async with running_admin(cluster.urls, keys=(), key_required=False) as a:
        r = await a.call("PUT", "routes/1", ROUTE, key=None)
        assert r.status == 201
        r = await a.call("GET", "routes/1", key="whatever")
        assert r.status == 200


def test_refuses_to_start_without_a_key_or_with_a_well_known_one():
    with pytest.raises(ValueError, match="needs at least one key"):
        AdminAPI(etcd=None, admin=AdminConfig(admin_key=()), plugins=registry())
    with pytest.raises(ValueError, match="CVE-2020-13945"):
        AdminAPI(etcd=None, admin=AdminConfig(admin_key=(AdminKey("admin", "edd1c9f034335f136f87ad84b625c8f1"),)),
                 plugins=registry())


# --- allow_admin ----------------------------------------------------------------------------


async def test_allow_admin_checks_the_socket_peer_not_forwarding_headers(cluster):
    async with running_admin(cluster.urls, allow_admin=("10.0.0.0/8",)) as a:
        spoof = {"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3", "Forwarded": "for=10.1.2.3"}
        for method, path in (("PUT", "routes/1"), ("GET", "routes"), ("HEAD", "/apisix/admin")):
            r = await a.call(method, path, ROUTE if method == "PUT" else None, headers=spoof)
            assert r.status == 403, (method, path)
        r = await a.call("PUT", "routes/1", ROUTE, headers=spoof)
        assert r.header("Content-Type").startswith("text/html")
        assert b"<title>403 Forbidden</title>" in r.body
        assert await a.keys() == []
    async with running_admin(cluster.urls, allow_admin=("10.0.0.0/8", "127.0.0.1/32")) as a:
        assert (await a.call("PUT", "routes/1", ROUTE)).status == 201


# --- CORS, HEAD, headers --------------------------------------------------------------------


async def test_cors_and_head(admin: Admin):
    r = await admin.call("GET", "routes")
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert r.header("Access-Control-Expose-Headers") == "*"
    assert r.header("Access-Control-Max-Age") == "3600"
    r = await admin.call("GET", "routes", key=None)               # also on a 401
    assert r.status == 401 and r.header("Access-Control-Allow-Origin") == "*"
    r = await admin.call("OPTIONS", "routes/1", key=None)          # preflight: no key needed
    assert r.status == 200 and r.body == b""
    assert r.header("Access-Control-Allow-Methods") == "POST, GET, PUT, OPTIONS, DELETE, PATCH"
    assert r.header("Access-Control-Allow-Headers") == "*"
    r = await admin.call("HEAD", "/apisix/admin", key=None)
    assert r.status == 200 and r.body == b""


async def test_cors_disabled(cluster):
    async with running_admin(cluster.urls, cors=False) as a:
        r = await a.call("GET", "routes")
        assert r.status == 200 and r.header("Access-Control-Allow-Origin") is None
        r = await a.call("OPTIONS", "routes")
        assert r.status == 404


# --- bodies ---------------------------------------------------------------------------------


async def test_invalid_json_body(admin: Admin):
    r = await admin.call("PUT", "routes/1", b'{"uri": "/a",')
    assert r.status == 400
    body = r.json()
    assert body["error_msg"].startswith("invalid request body: ") and body["req_body"] == '{"uri": "/a",'
    r = await admin.call("PUT", "routes/1", b'{"uri": NaN}')
    assert r.status == 400 and r.json()["error_msg"].startswith("invalid request body: ")
    r = await admin.call("PUT", "routes/1", b"[1, 2]")
    assert r.json() == {"error_msg": "invalid configuration: wrong type: expected object, got array"}
    assert await admin.keys() == []


async def test_body_over_1_5_mib(admin: Admin):
    big = json.dumps({"uri": "/a", "upstream": up(), "desc": "x" * (1024 * 1024 * 2)}).encode()
    r = await admin.call("PUT", "routes/1", big)
    assert r.status == 400
    assert r.json() == {"error_msg": f"invalid request body: request size {len(big)} is greater than the "
                                     "maximum size 1572864 allowed"}
    assert await admin.keys() == []
    assert (await admin.call("GET", "routes")).status == 200   # the server still serves


# --- validation errors: APISIX's words, nothing written ----------------------------------------


@pytest.mark.parametrize("body, msg", [
    ({"uri": "/a", "upstream": up(), "host": "a.com", "hosts": ["b.com"]}, "only one of host or hosts is allowed"),
    ({"uri": "/a", "upstream": up(), "remote_addr": "1.1.1.1", "remote_addrs": ["1.1.1.1"]},
     "only one of remote_addr or remote_addrs is allowed"),
    ({"upstream": up()}, "invalid configuration: allOf 1 failed: value should match only one schema, but matches none"),
    ({"uri": "/a", "uris": ["/b"], "upstream": up()},
     "invalid configuration: allOf 1 failed: value should match only one schema, but matches both schemas 1 and 2"),
    ({"uri": "", "upstream": up()},
     'invalid configuration: property "uri" validation failed: string too short, expected at least 1, got 0'),
    ({"uri": "/a", "upstream": up(), "methods": ["FETCH"]},
     'invalid configuration: property "methods" validation failed: failed to validate item 1: '
     "matches none of the enum values"),
    ({"uri": "/a", "upstream": up(), "name": "n" * 257},
     'invalid configuration: property "name" validation failed: string too long, expected at most 256, got 257'),
    ({"uri": "/a", "upstream": up(), "status": 3},
     'invalid configuration: property "status" validation failed: matches none of the enum values'),
    ({"uri": "/a", "upstream": up(), "remote_addr": "300.1.1.1"},
     'invalid configuration: property "remote_addr" validation failed: object matches none of the required'),
    ({"uri": "/a", "upstream": up(), "labels": "x"},
     'invalid configuration: property "labels" validation failed: wrong type: expected object, got string'),
    ({"uri": "/a", "upstream": up(), "timeout": {"connect": 0, "send": 1, "read": 1}},
     'invalid configuration: property "timeout" validation failed: property "connect" validation failed: '
     "expected 0 to be greater than 0"),
    ({"uri": "/a", "upstream": up(), "foo": 1}, "invalid configuration: additional properties forbidden, found foo"),
    ({"uri": "/a", "upstream": {"nodes": {"127.0.0.1:8080": "1"}, "type": "roundrobin"}},
     'invalid configuration: property "upstream" validation failed: property "nodes" validation failed: '
     "object matches none of the required"),
    ({"uri": "/a", "upstream": {"nodes": {"127.0.0.1:65536": 1}, "type": "roundrobin"}}, "invalid port 65536"),
    ({"uri": "/a", "upstream": {"nodes": [{"host": "::1", "port": 80, "weight": 1}], "type": "roundrobin"}},
     "invalid configuration: IPv6 address must be enclosed with '[' and ']'"),
    ({"uri": "/a", "upstream": {**up(), "type": "chash", "hash_on": "header"}}, "missing key"),
    ({"uri": "/a", "upstream": {**up(), "type": "chash", "key": "not_support"}},
     'invalid configuration: failed to match pattern "^((uri|server_name|server_addr|request_uri|remote_port'
     '|remote_addr|query_string|host|hostname|mqtt_client_id)|arg_[0-9a-zA-Z_-]+)$" with "not_support"'),
    ({"uri": "/a", "upstream": {**up(), "pass_host": "rewrite"}},
     "`upstream_host` can't be empty when `pass_host` is `rewrite`"),
    ({"uri": "/a", "upstream": up(), "vars": [["arg_a", "=", "1"]]}, "failed to validate the 'vars' expression"),
    ({"uri": "/a", "upstream_id": "nope"}, "failed to fetch upstream info by upstream id [nope], response code: 404"),
    ({"uri": "/a", "service_id": 99999999999999},
     "failed to fetch service info by service id [99999999999999], response code: 404"),
    ({"uri": "/a", "plugin_config_id": "not_found"},
     "failed to fetch plugin config info by plugin config id [not_found], response code: 404"),
    ({"uri": "/a", "plugins": {"no-such": {}}}, "unknown plugin [no-such]"),
    ({"uri": "/a", "plugins": {"limit-count": {"count": 2, "time_window": 0}}},
     "failed to check the configuration of plugin limit-count err: "),
    ({"uri": "/a", "plugins": {"cors": "x"}},   # APISIX: invalid plugin conf "x" for plugin [cors]
     'invalid configuration: property "plugins" validation failed: failed to validate additional property cors: '
     "wrong type: expected object, got string"),
    ({"uri": "/a", "plugins": {"cors": {"_meta": {"disable": "yes"}}}},
     'failed to check the configuration of plugin cors err: property "_meta" validation failed: '
     'property "disable" validation failed: wrong type: expected boolean, got string'),
    ({"uri": "/a", "upstream": {**up(), "tls": {"client_cert_id": "9999999"}}},
     "failed to fetch ssl info by ssl id [9999999], response code: 404"),
])
async def test_route_schema_violations(admin: Admin, body, msg):
    r = await admin.call("PUT", "routes/1", body)
    assert r.status == 400
    assert r.header("X-API-VERSION") == "v3"
    got = r.json()
    assert set(got) == {"error_msg"}
    assert got["error_msg"].startswith(msg) if msg.endswith((": ", "expression")) else got["error_msg"] == msg
    assert await admin.keys() == []


@pytest.mark.parametrize("body, field", [
    ({"uri": "/a", "upstream": up(), "filter_func": "function(vars) return true end"}, "filter_func"),
    ({"uri": "/a", "script": "local _M = {} return _M"}, "script"),
    ({"uri": "/a", "upstream": up(), "plugins": {"cors": {"_meta": {"pre_function": "function() end"}}}},
     "pre_function"),
])
async def test_config_supplied_lua_is_refused(admin: Admin, body, field):
    r = await admin.call("PUT", "routes/1", body)
    assert r.status == 400
    msg = r.json()["error_msg"]
    assert msg.startswith("invalid configuration: ") and f'property "{field}" validation failed: not supported' in msg
    assert "CVE-2020-13945" in msg
    r = await admin.call("PUT", "services/1", {"script": "local _M = {} return _M"})
    assert r.status == 400 and "CVE-2020-13945" in r.json()["error_msg"]
    r = await admin.call("POST", "schema/validate/routes", body)
    assert r.status == 400 and "CVE-2020-13945" in r.json()["error_msg"]
    assert await admin.keys() == []


async def test_other_kinds_schema_violations(admin: Admin):
    cases = [
        ("PUT", "upstreams/1", {"nodes": {"127.0.0.1:80": 1}, "retries": -1},
         'invalid configuration: property "retries" validation failed: expected -1 to be at least 0'),
        ("PUT", "upstreams/1", {"nodes": {"127.0.0.1:80": 1}, "hash_on": "xx"},
         'invalid configuration: property "hash_on" validation failed: matches none of the enum values'),
        ("PUT", "upstreams/1", {"nodes": {"127.0.0.1:80": 1}, "service_name": "a", "discovery_type": "dns"},
         "invalid configuration: value should match only one schema, but matches both schemas 1 and 2"),
        ("PUT", "upstreams/1", {"nodes": {"127.0.0.1:80": 1}, "checks": {"active": {"healthy": {"successes": 255}}}},
         'invalid configuration: property "checks" validation failed: property "active" validation failed: '
         'property "healthy" validation failed: property "successes" validation failed: expected 255 to be at most 254'),
        ("PUT", "consumers", {"username": "$#^@"},
         'invalid configuration: property "username" validation failed: failed to match pattern "^[a-zA-Z0-9_\\-]+$" '
         'with "$#^@"'),
        ("PUT", "consumers", {"username": "jack", "plugins": {"key-auth": {}}},
         "invalid plugins configuration: failed to check the configuration of plugin key-auth err: "
         'property "key" is required'),
        ("PUT", "consumers", {"username": "jack", "group_id": "nope"},
         "failed to fetch consumer group info by consumer group id [nope], response code: 404"),
        ("PUT", "services/1", {"upstream_id": "99999999"},
         "failed to fetch upstream info by upstream id [99999999], response code: 404"),
        ("PUT", "consumer_groups/1", {"desc": "x"}, 'invalid configuration: property "plugins" is required'),
        ("PUT", "ssls/1", {"cert": "x", "key": "y", "sni": "a.com"},
         'invalid configuration: property "cert" validation failed: value should match only one schema, '
         "but matches none"),
        ("PUT", "ssls/1", {"cert": "x" * 200, "key": "y" * 200, "snis": []},
         'invalid configuration: property "snis" validation failed: expect array to have at least 1 items'),
    ]
    for method, path, body, msg in cases:
        r = await admin.call(method, path, body)
        assert (r.status, r.json()) == (400, {"error_msg": msg}), (path, body)
    assert await admin.keys() == []


# --- references and delete checks ---------------------------------------------------------------


async def test_delete_refused_while_referenced_unless_forced(admin: Admin):
    await admin.call("PUT", "upstreams/1", up())
    await admin.call("PUT", "services/1", {"upstream_id": "1"})
    await admin.call("PUT", "plugin_configs/1", {"plugins": {"cors": {}}})
    await admin.call("PUT", "consumer_groups/1", {"plugins": {"cors": {}}})
    await admin.call("PUT", "consumers", {"username": "foobar", "group_id": "1"})
    assert (await admin.call("PUT", "routes/1", {"uri": "/a", "upstream_id": 1, "service_id": "1",
                                                 "plugin_config_id": "1"})).status == 201
    refusals = [
        ("upstreams/1", "can not delete this upstream, route [1] is still using it now"),
        ("services/1", "can not delete this service directly, route [1] is still using it now"),
        ("plugin_configs/1", "can not delete this plugin config, route [1] is still using it now"),
        ("consumer_groups/1", "can not delete this consumer group, consumer [foobar] is still using it now"),
    ]
    for path, msg in refusals:
        for q in ("", "?force=anyvalue"):
            r = await admin.call("DELETE", path + q)
            assert (r.status, r.json()) == (400, {"error_msg": msg}), path
    assert len(await admin.keys()) == 6
    for path, _ in refusals:
        r = await admin.call("DELETE", path + "?force=true")
        assert r.status == 200 and r.json()["deleted"] == "1", path
    assert sorted(await admin.keys()) == ["/consumers/foobar", "/routes/1"]


async def test_upstream_referenced_by_traffic_split_and_service(admin: Admin):
    await admin.call("PUT", "upstreams/1", up())
    await admin.call("PUT", "services/1", {"upstream_id": "1"})
    r = await admin.call("DELETE", "upstreams/1")
    assert r.json() == {"error_msg": "can not delete this upstream, service [1] is still using it now"}
    await admin.call("DELETE", "services/1")
    ts = {"traffic-split": {"rules": [{"weighted_upstreams": [{"upstream_id": "1", "weight": 1}]}]}}
    r = await admin.call("PUT", "plugin_configs/7", {"plugins": ts})
    assert r.status == 201, r.body
    r = await admin.call("DELETE", "upstreams/1")
    assert r.json() == {"error_msg": "can not delete this upstream, plugin in plugin_config [7] is still using it now"}


# --- schema and plugin endpoints ------------------------------------------------------------


async def test_schema_endpoints(admin: Admin):
    r = await admin.call("GET", "schema/route")
    assert r.status == 200 and "uri" in r.json()["properties"]
    r = await admin.call("GET", "schema/upstream")
    assert r.status == 200 and "nodes" in r.json()["properties"]
    r = await admin.call("GET", "schema/routes")
    assert (r.status, r.json()) == (400, {"error_msg": "not found schema: routes"})
    r = await admin.call("GET", "schema/plugins/key-auth")
    assert r.status == 200 and "_meta" in r.json()["properties"]
    r = await admin.call("GET", "schema/plugins/key-auth?schema_type=consumer")
    assert r.status == 200 and r.json()["required"] == ["key"]
    r = await admin.call("POST", "schema/validate/routes", ROUTE)
    assert r.status == 200 and r.body == b""
    r = await admin.call("POST", "schema/validate/routes", {"uri": 1, "upstream": up()})
    assert (r.status, r.json()) == (400, {"error_msg": 'property "uri" validation failed: '
                                                       'wrong type: expected string, got number'})
    r = await admin.call("POST", "schema/validate/routs", ROUTE)
    assert (r.status, r.json()) == (404, {"error_msg": "Unsupported resource type: routs"})
    assert await admin.keys() == []


async def test_plugin_endpoints(admin: Admin):
    r = await admin.call("GET", "plugins/list")
    names = r.json()
    assert r.status == 200 and names == sorted(admin.plugins.names(),
                                               key=lambda n: (-admin.plugins.get(n).priority, n))
    assert "key-auth" in names
    assert (await admin.call("GET", "plugins/list?subsystem=stream")).json() == []
    r = await admin.call("GET", "plugins/list?subsystem=asdf")
    assert r.status == 400 and r.body == b"invalid subsystem passed"
    r = await admin.call("GET", "plugins/limit-count")
    assert r.status == 200 and "count" in r.json()["properties"]
    r = await admin.call("GET", "plugins/limit-count?schema_type=metadata")
    assert r.status == 200 and r.json() == admin.plugins.get("limit-count").metadata_schema
    r = await admin.call("GET", "plugins/limit-count?schema_type=consumer")
    assert (r.status, r.json()) == (400, {"error_msg": "not found schema"})
    r = await admin.call("GET", "plugins/nope")
    assert (r.status, r.json()) == (404, {"error_msg": "plugin not found in subsystem http"})
    r = await admin.call("GET", "plugins/key-auth?subsystem=asdf")
    assert (r.status, r.json()) == (400, {"error_msg": "unsupported subsystem: asdf"})
    r = await admin.call("GET", "plugins?all=true")
    assert r.status == 200 and set(r.json()) == set(admin.plugins.names())
    assert r.json()["key-auth"]["type"] == "auth"


async def test_plugins_reload(admin: Admin):
    r = await admin.call("PUT", "plugins/reload")
    assert (r.status, r.body) == (200, b"done") and admin.reloads == [1]
    for method in ("GET", "POST", "DELETE", "PATCH"):
        r = await admin.call(method, "plugins/reload", {} if method in ("POST", "PATCH") else None)
        assert (r.status, r.json()) == (405, {"error_msg": "please use PUT method to reload the plugins, "
                                                           f"{method} method is not allowed."})
    assert admin.reloads == [1]


async def test_configs_validate_in_etcd_mode(admin: Admin):
    ok = {"routes": [{"id": "r1", "uri": "/a", "upstream": up()}], "routes_conf_version": 3,
          "consumers": [{"username": "jack"}, {"id": "jack/credentials/c1", "plugins": {"key-auth": {"key": "k"}}}]}
    r = await admin.call("POST", "configs/validate", ok)
    assert (r.status, r.json()) == (200, {})
    bad = {"routes": [{"id": "r1", "uri": "/a", "upstream": up()}, {"id": "r1", "uri": 1, "upstream": up()}]}
    r = await admin.call("POST", "configs/validate", bad)
    body = r.json()
    assert r.status == 400 and body["error_msg"] == "Configuration validation failed"
    assert {"resource_type": "routes", "resource_id": "r1", "index": 1,
            "error": 'invalid configuration: property "uri" validation failed: wrong type: expected string, '
                     "got number"} in body["errors"]
    assert {"resource_type": "routes", "resource_id": "r1", "index": 1,
            "error": "found duplicate id r1 in routes"} in body["errors"]
    r = await admin.call("POST", "configs/validate", b"")
    assert r.json() == {"error_msg": "invalid request body: empty request body"}
    r = await admin.call("GET", "configs")
    assert (r.status, r.json()) == (404, {"error_msg": "Unsupported resource type: configs"})
    assert await admin.keys() == []


class FakeStandalone:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def handle(self, req, sub_path):
        self.calls.append((req.method, sub_path))
        return 200, {"Content-Type": "application/json"}, b'{"standalone":true}'


async def test_yaml_provider_serves_only_configs(cluster):
    fake = FakeStandalone()
    async with running_admin(cluster.urls, config_provider="yaml", standalone=fake) as a:
        r = await a.call("GET", "configs")
        assert (r.status, r.json()) == (200, {"standalone": True})
        r = await a.call("PUT", "configs", {"routes": []})
        assert r.status == 200
        r = await a.call("POST", "configs/validate", {"routes": []})
        assert r.status == 200
        r = await a.call("GET", "configs", key=None)
        assert r.status == 401
        assert fake.calls == [("GET", ""), ("PUT", ""), ("POST", "/validate")]
        for method, path in (("GET", "routes"), ("PUT", "routes/1"), ("GET", "plugins/list"),
                             ("DELETE", "configs")):
            r = await a.call(method, path, ROUTE if method == "PUT" else None)
            assert r.status == 404 and b"404 Not Found" in r.body, (method, path)
        assert (await a.call("HEAD", "/apisix/admin")).status == 200
        assert await a.keys() == []


# --- etcd down ------------------------------------------------------------------------------


async def test_etcd_unreachable_is_503_and_nothing_is_half_written(tmp_path):
    c = EtcdCluster.start(tmp_path / "etcd")
    try:
        async with running_admin(c.urls, etcd_timeout=2.0) as a:
            assert (await a.call("PUT", "consumers", {"username": "jack"})).status == 201
            assert (await a.call("PUT", "consumers/jack/credentials/c1",
                                 {"plugins": {"key-auth": {"key": "k1"}}})).status == 201
            before = await a.keys()
            c.members[0].kill()
            for method, path, body in (("PUT", "routes/1", ROUTE), ("POST", "routes", ROUTE),
                                       ("GET", "routes", None), ("GET", "routes/1", None),
                                       ("PATCH", "consumers/jack", {"desc": "x"}),
                                       ("DELETE", "consumers/jack", None)):
                r = await a.call(method, path, body)
                if (method, path) == ("PATCH", "consumers/jack"):
                    assert r.status == 405      # refused before etcd is asked
                    continue
                assert r.status == 503, (method, path, r.body)
                assert r.header("X-API-VERSION") == "v3"
                msg = r.json()["error_msg"]
                assert "etcd" in msg and c.url in msg, msg
            c.restart(c.members[0])
            c.wait_healthy()
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                r = await a.call("GET", "consumers")
                if r.status == 200 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert r.status == 200
            assert await a.keys() == before
    finally:
        c.stop()


def test_raw_http_without_etcd_configured():
    """AdminAPI without an etcd client answers the resource endpoints 503."""
    async def run() -> None:
        from gwtools import free_port

        from meshgate.admin.httpserver import ApiServer

        api = AdminAPI(etcd=None, admin=AdminConfig(admin_key=(AdminKey("admin", KEY),)), plugins=registry())
        srv = ApiServer(api.handle)
        port = free_port()
        await srv.listen("127.0.0.1", port)
        try:
            r = await asyncio.to_thread(http, port, "GET", "/apisix/admin/routes")
            assert (r.status, r.json()) == (503, {"error_msg": "etcd is not configured"})
        finally:
            await srv.close()
    asyncio.run(run())


async def test_a_store_call_that_never_returns_is_bounded(cluster, monkeypatch):
    async with running_admin(cluster.urls, etcd_timeout=0.5) as a:
        async def wedged(*args, **kw):
            await asyncio.Event().wait()      # a call that neither answers nor fails

        monkeypatch.setattr(a.etcd, "get", wedged)
        t0 = asyncio.get_running_loop().time()
        r = await a.call("PUT", "routes/1", ROUTE)
        assert (r.status, r.json()) == (503, {"error_msg": "etcd did not answer within 2 s"})
        assert asyncio.get_running_loop().time() - t0 < 10
        monkeypatch.undo()
        assert await a.keys() == []
