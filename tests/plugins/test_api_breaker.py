"""api-breaker: schema, tripping on upstream statuses (state shared by workers), half-open, recovery."""

from __future__ import annotations

import asyncio
import time

import pytest
from gwtools import Upstream, http, start_gateway
from test_limit_count import burst, serving_workers
from test_limit_count import routes as _routes

from meshgate.errors import ConfigError

NAME = "api-breaker"


def routes(up, conf):
    return _routes(up, conf, name=NAME)


@pytest.fixture
async def flaky():
    """An upstream answering ``flaky.status`` (settable by the test)."""
    u: Upstream

    def handler(req):
        return u.status, {"Content-Type": "text/plain"}, b"upstream\n"  # type: ignore[attr-defined]

    u = Upstream(handler=handler)
    u.status = 500  # type: ignore[attr-defined]
    await u.start()
    yield u
    await u.close()


@pytest.mark.parametrize("conf", [
    {"break_response_code": 502},
    {"break_response_code": 599, "break_response_body": "x", "break_response_headers": [{"key": "a", "value": "b"}],
     "max_breaker_sec": 3, "unhealthy": {"http_statuses": [500, 503], "failures": 1},
     "healthy": {"http_statuses": [200, 404], "successes": 1}},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/api-breaker")


@pytest.mark.parametrize("conf,msg", [
    ({}, 'property "break_response_code" is required'),
    ({"break_response_code": 199}, 'property "break_response_code" validation failed: expected 199 to be at least 200'),
    ({"break_response_code": 502, "max_breaker_sec": 2},
     'property "max_breaker_sec" validation failed: expected 2 to be at least 3'),
    ({"break_response_code": 502, "unhealthy": {"failures": 0}},
     'property "unhealthy" validation failed: property "failures" validation failed: expected 0 to be at least 1'),
    ({"break_response_code": 502, "healthy": {"http_statuses": [200, 200]}},
     'property "healthy" validation failed: property "http_statuses" validation failed: '
     'expected unique items but items are not unique'),
    ({"break_response_code": 502, "break_response_headers": [{"key": "a"}]},
     'property "break_response_headers" validation failed: failed to validate item 1: property "value" is required'),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as e:
        registry.validate(NAME, conf, pointer="/plugins/api-breaker")
    assert e.value.message == f"failed to check the configuration of plugin api-breaker err: {msg}"


CONF = {"break_response_code": 502, "break_response_body": "breaker is open",
        "break_response_headers": [{"key": "X-Breaker", "value": "$remote_addr"}],
        "unhealthy": {"http_statuses": [500], "failures": 2}, "healthy": {"http_statuses": [200], "successes": 1},
        "max_breaker_sec": 3}


async def test_trips_then_half_opens_then_recovers(tmp_path, flaky):
    gw = start_gateway(tmp_path, routes(flaky, CONF), workers=2)
    try:
        assert [(await http(gw.addr, "GET", "/x")).status for _ in range(2)] == [500, 500]
        await asyncio.sleep(0.2)   # the log phase records the status after the response
        # open: the breaker answers for every worker, the upstream is not asked
        asked = len(flaky.requests)
        rs = await asyncio.gather(*(http(gw.addr, "GET", "/x") for _ in range(10)))
        assert {r.status for r in rs} == {502}
        assert {r.body for r in rs} == {b"breaker is open"}
        assert {r.header("X-Breaker") for r in rs} == {"127.0.0.1"}
        assert len(flaky.requests) == asked
        await asyncio.sleep(0.2)
        assert len(serving_workers(gw.log())) == 2
        # 2^1 s later (whole seconds, as ngx.time()): half-open, a healthy answer closes it
        flaky.status = 200
        deadline = time.monotonic() + 6
        while (r := await http(gw.addr, "GET", "/x")).status == 502:
            assert time.monotonic() < deadline, "breaker never half-opened"
            await asyncio.sleep(0.2)
        assert r.status == 200
        await asyncio.sleep(0.2)
        flaky.status = 500          # one failure after recovery does not trip it again (failures: 2)
        assert (await http(gw.addr, "GET", "/x")).status == 500
        await asyncio.sleep(0.2)
        assert (await http(gw.addr, "GET", "/x")).status == 500
    finally:
        gw.stop()


async def test_code_only_and_unlisted_statuses(tmp_path, flaky):
    conf = {"break_response_code": 503, "unhealthy": {"http_statuses": [502], "failures": 1}}
    gw = start_gateway(tmp_path, routes(flaky, conf))
    try:
        flaky.status = 500           # not in unhealthy.http_statuses: never trips
        assert [(await http(gw.addr, "GET", "/x")).status for _ in range(3)] == [500, 500, 500]
        flaky.status = 502
        assert (await http(gw.addr, "GET", "/x")).status == 502
        await asyncio.sleep(0.2)
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 503 and r.header("X-Breaker") is None
    finally:
        gw.stop()


async def test_breaker_is_per_host_and_uri(tmp_path, flaky):
    conf = {**CONF, "unhealthy": {"http_statuses": [500], "failures": 1}}
    gw = start_gateway(tmp_path, routes(flaky, conf))
    try:
        assert (await http(gw.addr, "GET", "/a")).status == 500
        await asyncio.sleep(0.2)
        assert (await http(gw.addr, "GET", "/a")).status == 502
        assert (await http(gw.addr, "GET", "/b")).status == 500            # another uri: closed
        assert (await http(gw.addr, "GET", "/a", host="other")).status == 500  # another host: closed
    finally:
        gw.stop()


async def test_meta_disable(tmp_path, flaky):
    conf = {**CONF, "unhealthy": {"http_statuses": [500], "failures": 1}, "_meta": {"disable": True}}
    gw = start_gateway(tmp_path, routes(flaky, conf))
    try:
        got = await burst([gw.addr], 3)
        assert got == [500, 500, 500]
    finally:
        gw.stop()
