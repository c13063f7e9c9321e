"""limit-req: schema, leaky bucket shared by workers, delay within the burst, redis policy."""

from __future__ import annotations

import time

import pytest
from gwtools import free_port, http, start_gateway
from test_limit_count import burst, redis_server, serving_workers, statuses  # noqa: F401
from test_limit_count import routes as _routes

from meshgate.errors import ConfigError

NAME = "limit-req"


def routes(up, conf):
    return _routes(up, conf, name=NAME)


@pytest.mark.parametrize("conf", [
    {"rate": 1, "burst": 0, "key": "remote_addr"},
    {"rate": 0.5, "burst": 2.5, "key": "$http_a $arg_b", "key_type": "var_combination", "nodelay": True,
     "rejected_code": 429, "rejected_msg": "x", "allow_degradation": True},
    {"rate": 1, "burst": 0, "key": "remote_addr", "policy": "redis", "redis_host": "127.0.0.1"},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/limit-req")


@pytest.mark.parametrize("conf,msg", [
    ({"rate": 1, "burst": 0}, 'property "key" is required'),
    ({"rate": 0, "burst": 0, "key": "remote_addr"}, 'property "rate" validation failed: expected 0 to be greater than 0'),
    ({"rate": 1, "burst": -1, "key": "remote_addr"}, 'property "burst" validation failed: expected -1 to be at least 0'),
    ({"rate": 1, "burst": 0, "key": "remote_addr", "key_type": "constant"},
     'property "key_type" validation failed: matches none of the enum values'),
    ({"rate": 1, "burst": 0, "key": "remote_addr", "rejected_code": 199},
     'property "rejected_code" validation failed: expected 199 to be at least 200'),
    ({"rate": 1, "burst": 0, "key": "remote_addr", "policy": "redis"}, 'then clause did not match'),   # APISIX t/plugin/limit-req-redis.t
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as e:
        registry.validate(NAME, conf, pointer="/plugins/limit-req")
    assert e.value.message == f"failed to check the configuration of plugin limit-req err: {msg}"


async def test_rejects_above_rate_and_burst(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"rate": 0.1, "burst": 0, "key": "remote_addr", "nodelay": True}))
    try:
        assert await statuses(gw, 3) == [200, 503, 503]
    finally:
        gw.stop()


async def test_one_bucket_for_all_workers(tmp_path, up):
    conf = {"rate": 0.1, "burst": 2, "key": "remote_addr", "nodelay": True}
    gw = start_gateway(tmp_path, routes(up, conf), workers=2)
    try:
        got = await burst([gw.addr], 30)
        assert got.count(200) == 3 and got.count(503) == 27   # 1 + burst 2, for the gateway
        assert len(serving_workers(gw.log())) == 2
    finally:
        gw.stop()


async def test_requests_within_burst_are_delayed(tmp_path, up):
    """rate 10/s, burst 5: the 4th request in a row waits ~0.3 s (excess 3 / rate 10)."""
    gw = start_gateway(tmp_path, routes(up, {"rate": 10, "burst": 5, "key": "remote_addr"}))
    try:
        t0 = time.monotonic()
        got = await burst([gw.addr], 4)
        took = time.monotonic() - t0
        assert got == [200] * 4
        assert took >= 0.2
    finally:
        gw.stop()


async def test_nodelay_and_rejected_msg(tmp_path, up):
    conf = {"rate": 0.1, "burst": 1, "key": "remote_addr", "nodelay": True, "rejected_code": 429,
            "rejected_msg": "Requests are too frequent, please try again later."}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        t0 = time.monotonic()
        a, b = await http(gw.addr, "GET", "/x"), await http(gw.addr, "GET", "/x")
        assert (a.status, b.status) == (200, 200)
        assert time.monotonic() - t0 < 5     # nodelay: the second did not wait its 10 s
        c = await http(gw.addr, "GET", "/x")
        assert c.status == 429
        assert c.body == b'{"error_msg":"Requests are too frequent, please try again later."}\n'
    finally:
        gw.stop()


async def test_key_from_header(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"rate": 0.1, "burst": 0, "key": "http_user", "nodelay": True}))
    try:
        assert await statuses(gw, 2, headers={"User": "a"}) == [200, 503]
        assert await statuses(gw, 1, headers={"User": "b"}) == [200]
    finally:
        gw.stop()


async def test_meta_error_response(tmp_path, up):
    conf = {"rate": 0.1, "burst": 0, "key": "remote_addr", "_meta": {"error_response": "busy"}}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        await http(gw.addr, "GET", "/x")
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 503 and r.body == b"busy"
    finally:
        gw.stop()


async def test_redis_two_gateways_share_one_bucket(tmp_path, up, redis_server):  # noqa: F811
    conf = {"rate": 0.1, "burst": 4, "key": "remote_addr", "nodelay": True, "policy": "redis",
            "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    gw1 = start_gateway(tmp_path / "a", routes(up, conf), workers=2)
    gw2 = start_gateway(tmp_path / "b", routes(up, conf), workers=2)
    try:
        got = await burst([gw1.addr, gw2.addr], 40)
        assert got.count(200) == 5 and got.count(503) == 35
    finally:
        gw1.stop()
        gw2.stop()


async def test_redis_down(tmp_path, up):
    node = {"type": "roundrobin", "nodes": {up.addr: 1}}
    base = {"rate": 0.1, "burst": 0, "key": "remote_addr", "policy": "redis", "redis_host": "127.0.0.1",
            "redis_port": free_port(), "redis_timeout": 200}
    doc = {"routes": [{"id": "1", "uri": "/strict", "upstream": node, "plugins": {NAME: base}},
                      {"id": "2", "uri": "/soft", "upstream": node, "plugins": {NAME: {**base, "allow_degradation": True}}}]}
    gw = start_gateway(tmp_path, doc)
    try:
        assert await statuses(gw, 1, "/strict") == [500]
        assert await statuses(gw, 2, "/soft") == [200, 200]
    finally:
        gw.stop()
