"""limit-count: schema, local policy across workers, redis policy across gateways (real redis-server)."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from gwtools import Upstream, free_port, http, start_gateway

from meshgate.errors import ConfigError

NAME = "limit-count"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A throwaway real redis-server on a free loopback port (tools/peers/redis.sh installs it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        if not Path(REDIS).exists():
            pytest.fail("redis-server missing: run tools/peers/redis.sh")
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def redis_server():
    r = RedisServer().start()
    yield r
    r.stop()


def routes(up: Upstream, conf: dict[str, Any] | None = None, *, extra: list[dict[str, Any]] | None = None,
           uri: str = "/*", name: str = NAME) -> dict[str, Any]:
    rs = [{"id": "1", "uri": uri, "plugins": {name: conf} if conf is not None else {},
           "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]
    return {"routes": rs + (extra or [])}


async def statuses(gw: Any, n: int, path: str = "/x", **kw: Any) -> list[int]:
    return [(await http(gw.addr, "GET", path, **kw)).status for _ in range(n)]


async def burst(addrs: list[tuple[str, int]], n: int, path: str = "/x") -> list[int]:
    """``n`` concurrent requests, each on its own connection, spread over ``addrs``."""
    rs = await asyncio.gather(*(http(addrs[i % len(addrs)], "GET", path, timeout=20) for i in range(n)))
    return [r.status for r in rs]


def serving_workers(log: str) -> set[str]:
    return set(re.findall(r"worker\[(\d+)\] INFO meshgate.access", log))


# -- schema -------------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", [
    {"count": 2, "time_window": 60},
    {"count": 2, "time_window": 60, "rejected_code": 429, "rejected_msg": "slow down", "key": "http_x",
     "key_type": "var", "window_type": "sliding", "show_limit_quota_header": False},
    {"count": "$http_count", "time_window": 60},
    {"rules": [{"count": 1, "time_window": 10, "key": "${http_user}"}]},
    {"count": 2, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6379,
     "redis_database": 1, "redis_timeout": 500, "redis_password": ""},
    {"count": 2, "time_window": 60, "policy": "redis-cluster", "redis_cluster_nodes": ["127.0.0.1:7000"],
     "redis_cluster_name": "c"},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/limit-count")


@pytest.mark.parametrize("conf,msg", [
    ({"time_window": 60}, "value should match only one schema, but matches none"),
    ({"count": 2, "time_window": 60, "rejected_msg": True},
     'property "rejected_msg" validation failed: wrong type: expected string, got boolean'),
    ({"count": 2, "time_window": 60, "rejected_msg": ""},
     'property "rejected_msg" validation failed: string too short, expected at least 1, got 0'),
    ({"count": 2, "time_window": 60, "rejected_code": 600},
     'property "rejected_code" validation failed: expected 600 to be at most 599'),
    ({"count": 2, "time_window": 60, "policy": "redis"}, 'then clause did not match'),   # APISIX t/plugin/limit-count-redis.t
    ({"count": 2, "time_window": 60, "policy": "redis-cluster", "redis_cluster_nodes": ["127.0.0.1:1"]},
     'else clause did not match'),   # lua-jsonschema: the redis-cluster branch is the schema's else
    ({"count": 2, "time_window": 60, "key_type": "other"},
     'property "key_type" validation failed: matches none of the enum values'),
    ({"rules": [{"count": 1, "time_window": 1, "key": "$a"}, {"count": 2, "time_window": 1, "key": "$a"}]},
     "duplicate key '$a' in rules"),
    ({"count": 2, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1", "sync_interval": 0.01},
     "sync_interval should not be smaller than 0.1"),
    ({"count": 2, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1", "sync_interval": 60},
     "sync_interval should be smaller than time_window"),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as e:
        registry.validate(NAME, conf, pointer="/plugins/limit-count")
    assert e.value.message == f"failed to check the configuration of plugin limit-count err: {msg}"


def test_schema_group_confs_must_match(registry):
    registry.validate(NAME, {"count": 2, "time_window": 60, "group": "g-schema"}, pointer="/p")
    registry.validate(NAME, {"count": 2, "time_window": 60, "group": "g-schema"}, pointer="/p")
    with pytest.raises(ConfigError, match="group conf mismatched"):
        registry.validate(NAME, {"count": 3, "time_window": 60, "group": "g-schema"}, pointer="/p")


# -- local policy ---------------------------------------------------------------------------------
async def test_local_counts_and_headers(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"count": 2, "time_window": 60}))
    try:
        rs = [await http(gw.addr, "GET", "/x") for _ in range(4)]
        assert [r.status for r in rs] == [200, 200, 503, 503]
        assert [r.header("X-RateLimit-Limit") for r in rs] == ["2"] * 4
        assert [r.header("X-RateLimit-Remaining") for r in rs] == ["1", "0", "0", "0"]
        resets = [float(r.header("X-RateLimit-Reset") or "nan") for r in rs]
        assert 59 <= resets[0] <= 60 and all(0 < x <= resets[0] for x in resets)
        assert len(up.requests) == 2
    finally:
        gw.stop()


async def test_local_one_limit_for_all_workers(tmp_path, up):
    """APISIX keeps the counter in an nginx shared dict: 2 workers, still one limit."""
    gw = start_gateway(tmp_path, routes(up, {"count": 30, "time_window": 60}), workers=2)
    try:
        got = await burst([gw.addr], 80)
        assert got.count(200) == 30 and got.count(503) == 50
        await asyncio.sleep(0.2)  # the access log line is written after the response
        assert len(serving_workers(gw.log())) == 2, "both workers must have served requests"
        assert len(up.requests) == 30
    finally:
        gw.stop()


async def test_rejected_msg_code_and_no_quota_header(tmp_path, up):
    conf = {"count": 1, "time_window": 60, "rejected_code": 429, "rejected_msg": "Requests are too frequent",
            "show_limit_quota_header": False}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        a = await http(gw.addr, "GET", "/x")
        b = await http(gw.addr, "GET", "/x")
        assert a.status == 200 and a.header("X-RateLimit-Limit") is None
        assert b.status == 429
        assert b.body == b'{"error_msg":"Requests are too frequent"}\n'
        assert b.header("X-RateLimit-Remaining") is None
    finally:
        gw.stop()


async def test_key_var_and_empty_key_falls_back_to_client_ip(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"count": 1, "time_window": 60, "key": "http_user"}))
    try:
        assert await statuses(gw, 2, headers={"User": "a"}) == [200, 503]
        assert await statuses(gw, 2, headers={"User": "b"}) == [200, 503]
        # no header: the client address is the key (APISIX)
        assert await statuses(gw, 2) == [200, 503]
    finally:
        gw.stop()


async def test_key_var_combination_and_constant(tmp_path, up):
    extra = [{"id": "2", "uri": "/const", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
              "plugins": {NAME: {"count": 1, "time_window": 60, "key": "all", "key_type": "constant"}}}]
    conf = {"count": 1, "time_window": 60, "key": "$http_a-$arg_b", "key_type": "var_combination"}
    gw = start_gateway(tmp_path, routes(up, conf, extra=extra, uri="/comb"))
    try:
        assert await statuses(gw, 2, "/comb?b=1", headers={"A": "x"}) == [200, 503]
        assert await statuses(gw, 1, "/comb?b=2", headers={"A": "x"}) == [200]
        assert await statuses(gw, 1, "/comb?b=1", headers={"A": "y"}) == [200]
        assert await statuses(gw, 1, "/const", headers={"A": "1"}) == [200]
        assert await statuses(gw, 1, "/const", headers={"A": "2"}) == [503]
    finally:
        gw.stop()


async def test_routes_count_apart_unless_grouped(tmp_path, up):
    node = {"type": "roundrobin", "nodes": {up.addr: 1}}
    same = {"count": 1, "time_window": 60}
    grouped = {"count": 1, "time_window": 60, "group": "shared-g"}
    doc = {"routes": [
        {"id": "a", "uri": "/a", "plugins": {NAME: same}, "upstream": node},
        {"id": "b", "uri": "/b", "plugins": {NAME: same}, "upstream": node},
        {"id": "c", "uri": "/c", "plugins": {NAME: grouped}, "upstream": node},
        {"id": "d", "uri": "/d", "plugins": {NAME: grouped}, "upstream": node},
    ]}
    gw = start_gateway(tmp_path, doc)
    try:
        assert await statuses(gw, 1, "/a") == [200]
        assert await statuses(gw, 1, "/b") == [200]      # same conf, other route: own counter
        assert await statuses(gw, 1, "/c") == [200]
        assert await statuses(gw, 1, "/d") == [503]      # same group: one counter
    finally:
        gw.stop()


async def test_global_rule_counts_once_for_every_route(tmp_path, up):
    # APISIX scopes a global rule's counter by the rule (conf_type global_rule), not by route
    node = {"type": "roundrobin", "nodes": {up.addr: 1}}
    doc = {"routes": [{"id": "a", "uri": "/a", "upstream": node}, {"id": "b", "uri": "/b", "upstream": node}],
           "global_rules": [{"id": "g", "plugins": {NAME: {"count": 2, "time_window": 60}}}]}
    gw = start_gateway(tmp_path, doc, workers=2)
    try:
        assert await statuses(gw, 1, "/a") + await statuses(gw, 2, "/b") == [200, 200, 503]
    finally:
        gw.stop()


async def test_window_expires(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"count": 1, "time_window": 1}))
    try:
        assert await statuses(gw, 2) == [200, 503]
        await asyncio.sleep(1.1)
        assert await statuses(gw, 1) == [200]
    finally:
        gw.stop()


async def test_sliding_window(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"count": 3, "time_window": 60, "window_type": "sliding"}), workers=2)
    try:
        got = await burst([gw.addr], 10)
        assert got.count(200) == 3 and got.count(503) == 7
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 503 and r.header("X-RateLimit-Remaining") == "0"
    finally:
        gw.stop()


async def test_count_from_a_variable(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"count": "$http_quota", "time_window": 60, "key": "http_quota"}))
    try:
        assert await statuses(gw, 3, headers={"Quota": "2"}) == [200, 200, 503]
        # a value that is not a positive integer: 500 (APISIX), the limit cannot be decided
        assert await statuses(gw, 1, headers={"Quota": "abc"}) == [500]
    finally:
        gw.stop()


async def test_meta_error_response_and_disable(tmp_path, up):
    node = {"type": "roundrobin", "nodes": {up.addr: 1}}
    doc = {"routes": [
        {"id": "1", "uri": "/e", "upstream": node,
         "plugins": {NAME: {"count": 1, "time_window": 60, "_meta": {"error_response": {"message": "quota"}}}}},
        {"id": "2", "uri": "/d", "upstream": node,
         "plugins": {NAME: {"count": 1, "time_window": 60, "_meta": {"disable": True}}}},
    ]}
    gw = start_gateway(tmp_path, doc)
    try:
        await http(gw.addr, "GET", "/e")
        r = await http(gw.addr, "GET", "/e")
        assert r.status == 503 and r.json() == {"message": "quota"}
        assert await statuses(gw, 3, "/d") == [200, 200, 200]
    finally:
        gw.stop()


# -- redis policy ---------------------------------------------------------------------------------
def redis_conf(r: RedisServer, **kw: Any) -> dict[str, Any]:
    return {"count": 50, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": r.port,
            "redis_timeout": 1000, "key": "route_id", "group": "g-redis-two-gateways", **kw}


async def test_redis_two_gateways_share_one_limit_exactly(tmp_path, up, redis_server):
    """Two gateways (2 workers each) on one redis: 120 concurrent requests, exactly 50 pass."""
    conf = redis_conf(redis_server)
    gw1 = start_gateway(tmp_path / "a", routes(up, conf), workers=2)
    gw2 = start_gateway(tmp_path / "b", routes(up, conf), workers=2)
    try:
        got = await burst([gw1.addr, gw2.addr], 120)
        assert got.count(200) == 50 and got.count(503) == 70, got
        assert len(up.requests) == 50
        r = await http(gw2.addr, "GET", "/x")
        assert r.status == 503
        assert r.header("X-RateLimit-Limit") == "50" and r.header("X-RateLimit-Remaining") == "0"
        assert 0 < float(r.header("X-RateLimit-Reset") or 0) <= 60
    finally:
        gw1.stop()
        gw2.stop()


async def test_redis_headers_and_rejection(tmp_path, up, redis_server):
    conf = {"count": 2, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1",
            "redis_port": redis_server.port, "rejected_msg": "no more"}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        rs = [await http(gw.addr, "GET", "/x") for _ in range(3)]
        assert [r.status for r in rs] == [200, 200, 503]
        assert [r.header("X-RateLimit-Remaining") for r in rs] == ["1", "0", "0"]
        assert rs[2].body == b'{"error_msg":"no more"}\n'
    finally:
        gw.stop()


async def test_redis_down_degrades_or_fails(tmp_path, up):
    dead = free_port()  # nothing listens here
    node = {"type": "roundrobin", "nodes": {up.addr: 1}}
    base = {"count": 1, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": dead,
            "redis_timeout": 200}
    doc = {"routes": [
        {"id": "1", "uri": "/strict", "upstream": node, "plugins": {NAME: base}},
        {"id": "2", "uri": "/soft", "upstream": node, "plugins": {NAME: {**base, "allow_degradation": True}}},
    ]}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/strict")
        assert r.status == 500 and r.body == b'{"error_msg":"failed to limit count"}\n'
        assert await statuses(gw, 3, "/soft") == [200, 200, 200]   # not limited: redis is down
        assert len(up.requests) == 3
    finally:
        gw.stop()


async def test_redis_comes_back(tmp_path, up):
    """Redis down then up: the plugin reconnects (no restart of the gateway)."""
    r = RedisServer()
    conf = {"count": 1, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": r.port,
            "redis_timeout": 200}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        assert await statuses(gw, 1) == [500]
        r.start()
        assert await statuses(gw, 2) == [200, 503]
    finally:
        gw.stop()
        r.stop()
