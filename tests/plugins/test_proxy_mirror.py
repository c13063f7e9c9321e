"""proxy-mirror: schema, copies sent to the mirror (through the real gateway)."""

from __future__ import annotations

import asyncio
import time

import pytest
from gwtools import Upstream, free_port, http, start_gateway

from meshgate.errors import ConfigError

NAME = "proxy-mirror"


def routes(up, conf, uri="/*", extra_plugins=None):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf, **(extra_plugins or {})},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


@pytest.fixture
async def mirror():
    u = await Upstream(handler=lambda req: (200, {}, b"mirror")).start()
    yield u
    await u.close()


async def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("conf", [{"host": "http://127.0.0.1:1999"}, {"host": "https://[::1]:443"},
                                  {"host": "grpc://a.b", "path": "/a", "path_concat_mode": "prefix",
                                   "sample_ratio": 0.5}])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/x")


@pytest.mark.parametrize("conf, msg", [
    ({"host": "ftp://127.0.0.1:1999"},
     'property "host" validation failed: failed to match pattern "^(http(s)?|grpc(s)?):\\/\\/([\\da-zA-Z.-]+|\\'
     '[[\\da-fA-F:]+\\])(:\\d+)?$" with "ftp://127.0.0.1:1999"'),
    ({}, 'property "host" is required'),
    ({"host": "http://127.0.0.1:1999", "sample_ratio": 0},
     'property "sample_ratio" validation failed: expected 0 to be at least 1e-05'),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.message == "failed to check the configuration of plugin proxy-mirror err: " + msg


@pytest.mark.parametrize("conf", [{"host": "127.0.0.1:1999"}, {"host": "http://127.0.0.1:1999/invalid_uri"},
                                  {"host": "http://a", "path": "/a?b"}])
def test_schema_invalid_host_or_path(registry, conf):
    with pytest.raises(ConfigError):
        registry.validate(NAME, conf, pointer="/plugins/x")


async def test_mirrors_method_headers_and_body(tmp_path, up, mirror):
    gw = start_gateway(tmp_path, routes(up, {"host": f"http://{mirror.addr}"}))
    try:
        r = await http(gw.addr, "POST", "/hello?a=1", host="127.0.0.2",
                       headers={"api-key": "hello", "name": "jake"}, body=b"payload")
        assert r.status == 200 and r.json()["path"] == "/hello?a=1"
        await wait_for(lambda: mirror.requests)
        got = mirror.requests[0]
        assert got.method == "POST" and got.path == "/hello?a=1"
        assert got.header("host") == "127.0.0.2"
        assert got.header("api-key") == "hello" and got.header("name") == "jake"
        assert got.body == b"payload"
    finally:
        gw.stop()


async def test_path_replace_and_prefix_after_rewrite_order(tmp_path, up, mirror):
    doc = {"routes": [
        {"id": "1", "uri": "/r/*", "plugins": {NAME: {"host": f"http://{mirror.addr}", "path": "/a"}}},
        {"id": "2", "uri": "/p/*", "plugins": {NAME: {"host": f"http://{mirror.addr}", "path": "/a",
                                                      "path_concat_mode": "prefix"},
                                               # proxy-rewrite (1008) runs after proxy-mirror (1010)
                                               "proxy-rewrite": {"uri": "/rewritten"}}},
    ]}
    for r in doc["routes"]:
        r["upstream"] = {"type": "roundrobin", "nodes": {up.addr: 1}}
    gw = start_gateway(tmp_path, doc)
    try:
        await http(gw.addr, "GET", "/r/x?a=1")
        await wait_for(lambda: len(mirror.requests) == 1)
        assert mirror.requests[0].path == "/a?a=1"
        await http(gw.addr, "GET", "/p/x")
        await wait_for(lambda: len(mirror.requests) == 2)
        assert mirror.requests[1].path == "/a/p/x"
        assert up.requests[-1].path == "/rewritten"
    finally:
        gw.stop()


async def test_mirror_down_or_slow_never_affects_answer(tmp_path, up):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(tmp_path, routes(up, {"host": dead}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 200 and r.json()["path"] == "/hello"
    finally:
        gw.stop()

    async def never(req):
        await asyncio.sleep(30)

    slow = await Upstream(handler=never).start()
    gw = start_gateway(tmp_path / "2", routes(up, {"host": f"http://{slow.addr}"}))
    try:
        t0 = time.monotonic()
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 200 and time.monotonic() - t0 < 2
        await wait_for(lambda: slow.requests)
    finally:
        gw.stop()
        await slow.close()


async def test_sample_ratio(tmp_path, up, mirror):
    gw = start_gateway(tmp_path, routes(up, {"host": f"http://{mirror.addr}", "sample_ratio": 0.5}))
    try:
        for _ in range(200):
            assert (await http(gw.addr, "GET", "/hello?sample_ratio=0.5")).status == 200
        await asyncio.sleep(0.3)
        assert 60 <= len(mirror.requests) <= 140
    finally:
        gw.stop()


async def test_not_mirrored_when_access_rejects(tmp_path, up, mirror):
    gw = start_gateway(tmp_path, routes(up, {"host": f"http://{mirror.addr}"},
                                        extra_plugins={"mocking": {"response_example": "m"}}))
    try:
        assert (await http(gw.addr, "GET", "/hello")).body == b"m"
        await asyncio.sleep(0.3)
        assert mirror.requests == []
    finally:
        gw.stop()
