"""tcp-logger: schema, batched delivery to a real loopback TCP server, ``_meta``.

Mirrors t/plugin/tcp-logger.t."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError

NAME = "tcp-logger"
PTR = "/plugins/tcp-logger"


def err(registry: Any, conf: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value


def test_schema(registry: Any) -> None:
    registry.validate(NAME, {"host": "127.0.0.1", "port": 3000}, pointer=PTR)
    registry.validate(NAME, {"host": "127.0.0.1", "port": 3000, "tls": True, "tls_options": "x.com", "timeout": 10,
                             "batch_max_size": 1, "log_format": {"h": "$host"}}, pointer=PTR)
    e = err(registry, {"port": 3000})
    assert e.message == 'failed to check the configuration of plugin tcp-logger err: property "host" is required'
    e = err(registry, {"host": "127.0.0.1", "port": 3000, "timeout": "10"})
    assert e.message == ('failed to check the configuration of plugin tcp-logger err: '
                         'property "timeout" validation failed: wrong type: expected integer, got string')
    e = err(registry, {"host": "127.0.0.1", "port": 3000, "log_format": "bad"})
    assert e.message.endswith('property "log_format" validation failed: wrong type: expected object, got string')
    e = err(registry, {"host": "127.0.0.1", "port": -1})
    assert e.message.endswith('property "port" validation failed: expected -1 to be at least 0')


class TcpSink:
    """A loopback TCP server keeping what each connection sent."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> TcpSink:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            data = await r.read()
            self.messages.append(data)
            w.close()
        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def routes(up: Upstream, conf: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"routes": [{"id": "1", "uri": "/hello*", "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}], **extra}


async def test_entries_reach_the_tcp_server(tmp_path, up):
    sink = await TcpSink().start()
    doc = routes(up, {"host": "127.0.0.1", "port": sink.port, "batch_max_size": 1})
    doc["routes"].append({"id": "2", "uri": "/two*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                          "plugins": {NAME: {"host": "127.0.0.1", "port": sink.port, "batch_max_size": 2,
                                             "log_format": {"vip": "$remote_addr", "u": "$uri"}}}})
    gw = start_gateway(tmp_path, doc)
    try:
        assert (await http(gw.addr, "GET", "/hello?x=1")).status == 200
        await wait_for(lambda: len(sink.messages) == 1)
        entry = json.loads(sink.messages[0])
        assert not sink.messages[0].endswith(b"\n")      # APISIX sends the bare JSON
        assert entry["request"]["uri"] == "/hello?x=1" and entry["route_id"] == "1"
        assert entry["response"]["status"] == 200 and entry["client_ip"] == "127.0.0.1"
        assert entry["upstream"] == up.addr
        assert (await http(gw.addr, "GET", "/two/a")).status == 200
        assert (await http(gw.addr, "GET", "/two/b")).status == 200
        await wait_for(lambda: len(sink.messages) == 2)
        assert json.loads(sink.messages[1]) == [{"vip": "127.0.0.1", "u": "/two/a", "route_id": "2"},
                                                {"vip": "127.0.0.1", "u": "/two/b", "route_id": "2"}]
    finally:
        gw.stop()
        await sink.close()


async def test_log_format_in_metadata(tmp_path, up):
    sink = await TcpSink().start()
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": sink.port, "batch_max_size": 1},
                                        plugin_metadata=[{"id": NAME, "log_format": {"host": "$host"}}]))
    try:
        assert (await http(gw.addr, "GET", "/hello", host="localhost")).status == 200
        await wait_for(lambda: len(sink.messages) == 1)
        assert json.loads(sink.messages[0]) == {"host": "localhost", "route_id": "1"}
    finally:
        gw.stop()
        await sink.close()


async def test_dead_server_never_slows_or_fails_the_request(tmp_path, up):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": port, "batch_max_size": 1}))
    try:
        t0 = time.monotonic()
        for i in range(30):
            assert (await http(gw.addr, "GET", f"/hello{i}", timeout=5)).status == 200
        assert time.monotonic() - t0 < 5
        await wait_for(lambda: f"failed to connect to TCP server: host[127.0.0.1] port[{port}] err: connection refused"
                       in gw.log())
    finally:
        gw.stop()


async def test_meta_disable(tmp_path, up):
    sink = await TcpSink().start()
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": sink.port, "batch_max_size": 1,
                                             "_meta": {"disable": True}}))
    try:
        assert (await http(gw.addr, "GET", "/hello")).status == 200
        await asyncio.sleep(0.5)
        assert sink.messages == []
    finally:
        gw.stop()
        await sink.close()
