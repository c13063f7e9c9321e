"""consumer-restriction: schema, and behaviour through the real gateway (t/plugin/consumer-restriction*.t)."""

from __future__ import annotations

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError

JACK1 = {"Authorization": "Basic amFjazIwMTk6MTIzNDU2"}    # jack2019:123456
JACK2 = {"Authorization": "Basic amFjazIwMjA6MTIzNDU2"}    # jack2020:123456
JACK3 = {"Authorization": "Basic amFjazIwMjE6MTIzNDU2"}    # jack2021:123456


def upstream(up):
    return {"type": "roundrobin", "nodes": {up.addr: 1}}


CONSUMERS = [
    {"username": "jack1", "group_id": "group1",
     "plugins": {"basic-auth": {"username": "jack2019", "password": "123456"}}},
    {"username": "jack2", "group_id": "group2",
     "plugins": {"basic-auth": {"username": "jack2020", "password": "123456"}}},
    {"username": "jack3", "plugins": {"basic-auth": {"username": "jack2021", "password": "123456"}}},
]


def route(up, rid, uri, plugins, **extra):
    return {"id": rid, "uri": uri, "plugins": plugins, "upstream": upstream(up), **extra}


def err(registry, conf):
    with pytest.raises(ConfigError) as e:
        registry.validate("consumer-restriction", conf, pointer="/plugins/consumer-restriction")
    return e.value.message


def test_schema(registry):
    for ok in ({"whitelist": ["jack1"]}, {"blacklist": ["jack1"], "type": "route_id"},
               {"allowed_by_methods": [{"user": "jack1", "methods": ["POST", "PURGE"]}]},
               {"type": "consumer_group_id", "whitelist": ["g"], "rejected_code": 401, "rejected_msg": "no"}):
        registry.validate("consumer-restriction", ok, pointer="/p")
    assert err(registry, {}).startswith("failed to check the configuration of plugin consumer-restriction err:")
    assert err(registry, {"whitelist": []}).endswith(
        'property "whitelist" validation failed: expect array to have at least 1 items')
    assert "type" in err(registry, {"type": "ip", "whitelist": ["a"]})
    assert err(registry, {"whitelist": ["a"], "rejected_code": 100}).endswith(
        'property "rejected_code" validation failed: expected 100 to be at least 200')
    assert "allowed_by_methods" in err(registry, {"allowed_by_methods": [{"user": "a", "methods": ["FETCH"]}]})


async def test_consumer_name_lists_and_methods(tmp_path, up):
    routes = [
        route(up, "1", "/white", {"basic-auth": {}, "consumer-restriction": {"whitelist": ["jack1"]}}),
        route(up, "2", "/black", {"basic-auth": {}, "consumer-restriction": {
            "blacklist": ["jack1"], "rejected_msg": "request is forbidden"}}),
        route(up, "3", "/noauth", {"consumer-restriction": {"whitelist": ["jack1"]}}),
        route(up, "4", "/methods", {"basic-auth": {}, "consumer-restriction": {"allowed_by_methods": [
            {"user": "jack1", "methods": ["POST", "PUT"]}]}}),
        route(up, "5", "/both", {"basic-auth": {}, "consumer-restriction": {
            "whitelist": ["jack1"], "allowed_by_methods": [{"user": "jack1", "methods": ["POST"]}]}}),
        route(up, "6", "/code", {"basic-auth": {}, "consumer-restriction": {
            "blacklist": ["jack2"], "rejected_code": 401}}),
    ]
    gw = start_gateway(tmp_path, {"routes": routes, "consumers": CONSUMERS})
    try:
        async def get(path, headers=None, method="GET"):
            return await http(gw.addr, method, path, headers=headers)

        r = await get("/white")
        assert (r.status, r.body) == (401, b'{"message":"Missing authorization in request"}\n')
        assert (await get("/white", JACK1)).status == 200
        r = await get("/white", JACK2)
        assert (r.status, r.body) == (403, b'{"message":"The consumer_name is forbidden."}\n')

        r = await get("/black", JACK1)
        assert (r.status, r.body) == (403, b'{"message":"request is forbidden"}\n')
        assert (await get("/black", JACK2)).status == 200

        r = await get("/noauth", JACK1)
        assert (r.status, r.body) == (
            401, b'{"message":"The request is rejected, please check the consumer_name for this request"}\n')

        r = await get("/methods", JACK1)
        assert (r.status, r.body) == (403, b'{"message":"The consumer_name is forbidden."}\n')
        assert (await get("/methods", JACK1, "POST")).status == 200
        assert (await get("/methods", JACK2)).status == 200      # no entry for jack2: allowed

        assert (await get("/both", JACK1)).status == 200          # whitelisted wins over methods
        r = await get("/code", JACK2)
        assert (r.status, r.body) == (401, b'{"message":"The consumer_name is forbidden."}\n')
    finally:
        gw.stop()


async def test_group_route_and_service_ids(tmp_path, up):
    routes = [
        route(up, "1", "/gw", {"basic-auth": {}, "consumer-restriction": {
            "type": "consumer_group_id", "whitelist": ["group1"]}}),
        route(up, "2", "/gb", {"basic-auth": {}, "consumer-restriction": {
            "type": "consumer_group_id", "blacklist": ["group1"], "rejected_msg": "request is forbidden"}}),
        route(up, "3", "/sid", {"consumer-restriction": {"type": "service_id", "blacklist": ["1"]}}),
        route(up, "4", "/sid-ok", {"consumer-restriction": {"type": "service_id", "whitelist": ["1"]}},
              service_id="1"),
        route(up, "5", "/sid-no", {"consumer-restriction": {"type": "service_id", "whitelist": ["2"]}},
              service_id="1"),
        route(up, "r6", "/rid", {"consumer-restriction": {"type": "route_id", "blacklist": ["r6"]}}),
    ]
    gw = start_gateway(tmp_path, {"routes": routes, "consumers": CONSUMERS,
                                  "consumer_groups": [{"id": "group1", "plugins": {}}, {"id": "group2", "plugins": {}}],
                                  "services": [{"id": "1"}]})
    try:
        assert (await http(gw.addr, "GET", "/gw", headers=JACK1)).status == 200
        r = await http(gw.addr, "GET", "/gw", headers=JACK2)
        assert (r.status, r.body) == (403, b'{"message":"The consumer_group_id is forbidden."}\n')
        r = await http(gw.addr, "GET", "/gb", headers=JACK1)
        assert (r.status, r.body) == (403, b'{"message":"request is forbidden"}\n')
        assert (await http(gw.addr, "GET", "/gb", headers=JACK2)).status == 200
        r = await http(gw.addr, "GET", "/gb", headers=JACK3)
        assert (r.status, r.body) == (
            401, b'{"message":"The request is rejected, please check the consumer_group_id for this request"}\n')

        r = await http(gw.addr, "GET", "/sid")
        assert (r.status, r.body) == (
            401, b'{"message":"The request is rejected, please check the service_id for this request"}\n')
        assert (await http(gw.addr, "GET", "/sid-ok")).status == 200
        r = await http(gw.addr, "GET", "/sid-no")
        assert (r.status, r.body) == (403, b'{"message":"The service_id is forbidden."}\n')
        r = await http(gw.addr, "GET", "/rid")
        assert (r.status, r.body) == (403, b'{"message":"The route_id is forbidden."}\n')
    finally:
        gw.stop()


async def test_in_consumer_conf(tmp_path, up):
    """Configured on the consumer: merged after auth, runs in access (APISIX TEST 36-50)."""
    consumers = [{"username": "jack", "plugins": {
        "basic-auth": {"username": "jack2019", "password": "123456"},
        "consumer-restriction": {"type": "route_id", "whitelist": ["1"], "rejected_code": 401}}}]
    routes = [route(up, "1", "/a", {"basic-auth": {}}), route(up, "2", "/b", {"basic-auth": {}})]
    gw = start_gateway(tmp_path, {"routes": routes, "consumers": consumers})
    try:
        assert (await http(gw.addr, "GET", "/a", headers=JACK1)).status == 200
        r = await http(gw.addr, "GET", "/b", headers=JACK1)
        assert (r.status, r.body) == (401, b'{"message":"The route_id is forbidden."}\n')
    finally:
        gw.stop()
