"""limit-conn: schema, concurrency limit for the whole gateway, burst delay, count-out in log, redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from gwtools import Upstream, http, start_gateway
from test_limit_count import burst, redis_server, serving_workers, statuses  # noqa: F401
from test_limit_count import routes as _routes

from meshgate.errors import ConfigError

NAME = "limit-conn"


def routes(up, conf):
    return _routes(up, conf, name=NAME)


@pytest.fixture
async def slow():
    """An upstream that holds each request 0.6 s (so requests overlap)."""
    async def handler(req):
        await asyncio.sleep(0.6)
        return 200, {"Content-Type": "text/plain"}, b"slow\n"

    u = await Upstream(handler=handler).start()
    yield u
    await u.close()


@pytest.mark.parametrize("conf", [
    {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"},
    {"conn": "$http_conn", "burst": "0", "default_conn_delay": 1, "key": "remote_addr",
     "only_use_default_delay": True, "rejected_code": 429, "rejected_msg": "x"},
    {"default_conn_delay": 0.1, "rules": [{"conn": 1, "burst": 0, "key": "$http_a"}]},
    {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr", "policy": "redis",
     "redis_host": "127.0.0.1", "key_ttl": 60},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/limit-conn")


@pytest.mark.parametrize("conf,msg", [
    ({"conn": 1, "burst": 0, "key": "remote_addr"}, "value should match only one schema, but matches none"),
    ({"conn": 1, "burst": 0, "default_conn_delay": 0, "key": "remote_addr"},
     'property "default_conn_delay" validation failed: expected 0 to be greater than 0'),
    ({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr", "rejected_code": 600},
     'property "rejected_code" validation failed: expected 600 to be at most 599'),
    ({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr", "policy": "redis"},
     'then clause did not match'),   # APISIX t/plugin/limit-conn-redis.t
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as e:
        registry.validate(NAME, conf, pointer="/plugins/limit-conn")
    assert e.value.message == f"failed to check the configuration of plugin limit-conn err: {msg}"


async def test_concurrency_limit_for_the_whole_gateway_and_release_in_log(tmp_path, slow):
    conf = {"conn": 2, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}
    gw = start_gateway(tmp_path, routes(slow, conf), workers=2)
    try:
        # SO_REUSEPORT spreads connections by a hash: eight of them all land on one worker one
        # time in 128, and then the burst shows nothing about sharing; burst again until both served
        for _ in range(6):
            got = await burst([gw.addr], 8)
            assert got.count(200) == 2 and got.count(503) == 6
            await asyncio.sleep(0.2)   # the log phase counts them out after the response
            if len(serving_workers(gw.log())) == 2:
                break
        assert len(serving_workers(gw.log())) == 2
        # all finished: the log phase counted them out, the route serves again
        await asyncio.sleep(0.2)   # the log phase runs just after the response is written
        got = await burst([gw.addr], 2)
        assert got == [200, 200]
    finally:
        gw.stop()


async def test_burst_requests_wait(tmp_path, up):
    """conn 1, burst 1: a second concurrent request passes after default_conn_delay."""
    conf = {"conn": 1, "burst": 1, "default_conn_delay": 0.5, "key": "remote_addr"}
    hold = asyncio.Event()

    async def handler(req):
        await asyncio.wait_for(hold.wait(), 5)
        return 200, {}, b"ok"

    u = await Upstream(handler=handler).start()
    gw = start_gateway(tmp_path, routes(u, conf))
    try:
        first = asyncio.ensure_future(http(gw.addr, "GET", "/x"))
        while not u.requests:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        second = asyncio.ensure_future(http(gw.addr, "GET", "/x"))
        await asyncio.sleep(0.1)                      # let the second be counted in first
        third = await http(gw.addr, "GET", "/x", timeout=3)   # conn + burst in flight: rejected
        assert third.status == 503
        while len(u.requests) < 2:
            await asyncio.sleep(0.01)
        assert time.monotonic() - t0 >= 0.4          # the burst request waited its delay
        hold.set()
        assert (await first).status == 200 and (await second).status == 200
    finally:
        hold.set()
        gw.stop()
        await u.close()


async def test_rejected_msg_and_code(tmp_path, slow):
    conf = {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr", "rejected_code": 429,
            "rejected_msg": "too many"}
    gw = start_gateway(tmp_path, routes(slow, conf))
    try:
        first = asyncio.ensure_future(http(gw.addr, "GET", "/x"))
        while not slow.requests:
            await asyncio.sleep(0.01)
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 429 and r.body == b'{"error_msg":"too many"}\n'
        assert (await first).status == 200
    finally:
        gw.stop()


async def test_rejection_by_a_later_plugin_still_counts_out(tmp_path, up):
    """limit-count (1002) runs after limit-conn (1003); its 503 must not leak a connection."""
    node = {"type": "roundrobin", "nodes": {up.addr: 1}}
    doc = {"routes": [{"id": "1", "uri": "/*", "upstream": node, "plugins": {
        NAME: {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"},
        "limit-count": {"count": 1, "time_window": 60, "key": "uri"}}}]}
    gw = start_gateway(tmp_path, doc)
    try:
        assert await statuses(gw, 3, "/a") == [200, 503, 503]     # limit-count rejects
        assert await statuses(gw, 1, "/b") == [200]               # limit-conn still has room
    finally:
        gw.stop()


async def test_redis_two_gateways_share_one_limit(tmp_path, slow, redis_server):  # noqa: F811
    conf = {"conn": 3, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr", "policy": "redis",
            "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    gw1 = start_gateway(tmp_path / "a", routes(slow, conf), workers=2)
    gw2 = start_gateway(tmp_path / "b", routes(slow, conf), workers=2)
    try:
        got = await burst([gw1.addr, gw2.addr], 12)
        assert got.count(200) == 3 and got.count(503) == 9
        await asyncio.sleep(0.3)   # the log phase's ZREM runs just after the response is written
        got = await burst([gw1.addr, gw2.addr], 3)
        assert got == [200, 200, 200]
    finally:
        gw1.stop()
        gw2.stop()
