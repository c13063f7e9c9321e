"""syslog: schema, RFC 5424 framing, delivery to real loopback UDP and TCP receivers, ``_meta``.

Mirrors t/plugin/syslog.t (which checks the lines a vector syslog receiver wrote)."""

from __future__ import annotations

import asyncio
import calendar
import json
import re
import socket
import time
from typing import Any

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.syslog import rfc5424_encode

NAME = "syslog"
PTR = "/plugins/syslog"
# <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
RFC5424 = re.compile(rb"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (\S+) (\d+) - - (.*)\n", re.S)


def err(registry: Any, conf: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value


def test_schema(registry: Any) -> None:
    registry.validate(NAME, {"host": "127.0.0.1", "port": 5140}, pointer=PTR)
    registry.validate(NAME, {"host": "127.0.0.1", "port": 5140, "flush_limit": 1, "sock_type": "udp",
                             "batch_max_size": 1, "inactive_timeout": 1, "tls": False, "pool_size": 5}, pointer=PTR)
    e = err(registry, {"host": "127.0.0.1"})
    assert e.message == 'failed to check the configuration of plugin syslog err: property "port" is required'
    e = err(registry, {"host": "127.0.0.1", "port": "5140"})
    assert e.message == ('failed to check the configuration of plugin syslog err: '
                         'property "port" validation failed: wrong type: expected integer, got string')
    e = err(registry, {"host": "127.0.0.1", "port": 5140, "sock_type": "unix"})
    assert e.message.endswith('property "sock_type" validation failed: matches none of the enum values')
    e = err(registry, {"host": "127.0.0.1", "port": 5140, "pool_size": 4})
    assert e.message.endswith('property "pool_size" validation failed: expected 4 to be at least 5')


def test_rfc5424_encode() -> None:
    line = rfc5424_encode("SYSLOG", "INFO", "localhost", "apisix", 42, '{"a":1}', ts=1700000000.5)
    assert line == '<46>1 2023-11-14T22:13:20.500Z localhost apisix 42 - - {"a":1}\n'
    line = rfc5424_encode("LOCAL0", "ERR", None, None, 1, "m", [("k", "v"), ("x", "y")], ts=0)
    assert line == '<131>1 1970-01-01T00:00:00.000Z - - 1 - [logservice k="v" x="y"] m\n'


class UdpSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)


class TcpSink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.connections = 0

    async def start(self) -> tuple[asyncio.AbstractServer, int]:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            while chunk := await r.read(65536):
                self.data += chunk
            w.close()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        return srv, srv.sockets[0].getsockname()[1]

    def frames(self) -> list[bytes]:
        return [f + b"\n" for f in bytes(self.data).split(b"\n") if f]


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def routes(up: Upstream, conf: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"routes": [{"id": "1", "uri": "/hello*", "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}], **extra}


async def test_udp_one_datagram_per_entry(tmp_path, up):
    loop = asyncio.get_running_loop()
    tr, sink = await loop.create_datagram_endpoint(UdpSink, local_addr=("127.0.0.1", 0))
    port = tr.get_extra_info("sockname")[1]
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": port, "sock_type": "udp",
                                             "batch_max_size": 1, "flush_limit": 1}))
    try:
        assert (await http(gw.addr, "GET", "/hello?q=1", host="localhost")).status == 200
        assert (await http(gw.addr, "GET", "/hello2", host="localhost")).status == 200
        await wait_for(lambda: len(sink.datagrams) == 2)
        m = RFC5424.fullmatch(sink.datagrams[0])
        assert m is not None, sink.datagrams[0]
        assert m.group(1) == b"46"                      # facility SYSLOG(5) * 8 + INFO(6)
        assert abs(calendar.timegm(time.strptime(m.group(2)[:19].decode(), "%Y-%m-%dT%H:%M:%S")) - time.time()) < 60
        assert m.group(3) == b"localhost" and m.group(4) == b"apisix"
        entry = json.loads(m.group(6))
        assert entry["request"]["uri"] == "/hello?q=1" and entry["route_id"] == "1"
        assert entry["upstream"] == up.addr and "apisix_latency" in entry
        assert json.loads(RFC5424.fullmatch(sink.datagrams[1]).group(6))["request"]["uri"] == "/hello2"
    finally:
        gw.stop()
        tr.close()


async def test_tcp_batch_and_log_format(tmp_path, up):
    sink = TcpSink()
    srv, port = await sink.start()
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": port, "batch_max_size": 3,
                                             "flush_limit": 1, "log_format": {"vip": "$remote_addr", "u": "$uri"}}))
    try:
        for i in range(3):
            assert (await http(gw.addr, "GET", f"/hello/{i}")).status == 200
        await wait_for(lambda: len(sink.frames()) == 3)
        got = [json.loads(RFC5424.fullmatch(f).group(6)) for f in sink.frames()]
        assert got == [{"vip": "127.0.0.1", "u": f"/hello/{i}", "route_id": "1"} for i in range(3)]
        for i in range(3, 6):
            assert (await http(gw.addr, "GET", f"/hello/{i}")).status == 200
        await wait_for(lambda: len(sink.frames()) == 6)
        assert sink.connections == 1                    # the connection is kept and reused
    finally:
        gw.stop()
        srv.close()


async def test_flush_limit_buffers_until_inactive(tmp_path, up):
    sink = TcpSink()
    srv, port = await sink.start()
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": port, "batch_max_size": 1,
                                             "inactive_timeout": 1, "log_format": {"u": "$uri"}}))
    try:
        assert (await http(gw.addr, "GET", "/hello")).status == 200
        await asyncio.sleep(0.3)
        assert sink.frames() == []        # under flush_limit (4096 bytes): held back...
        await wait_for(lambda: len(sink.frames()) == 1, timeout=5)   # ...until inactive_timeout
    finally:
        gw.stop()
        srv.close()


async def test_metadata_format_and_bodies(tmp_path, up):
    loop = asyncio.get_running_loop()
    tr, sink = await loop.create_datagram_endpoint(UdpSink, local_addr=("127.0.0.1", 0))
    port = tr.get_extra_info("sockname")[1]
    doc = routes(up, {"host": "127.0.0.1", "port": port, "sock_type": "udp", "batch_max_size": 1,
                      "flush_limit": 1}, plugin_metadata=[{"id": NAME, "log_format": {
                          "host": "$host", "client_ip": "$remote_addr", "upstream": "$upstream_addr"}}])
    doc["routes"].append({"id": "2", "uri": "/body", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                          "plugins": {NAME: {"host": "127.0.0.1", "port": port, "sock_type": "udp",
                                             "batch_max_size": 1, "flush_limit": 1, "include_req_body": True,
                                             "include_resp_body": True,
                                             "log_format": {"b": "$request_body", "r": "$resp_body"}}}})
    gw = start_gateway(tmp_path, doc)
    try:
        assert (await http(gw.addr, "GET", "/hello", host="localhost")).status == 200
        await wait_for(lambda: len(sink.datagrams) == 1)
        assert json.loads(RFC5424.fullmatch(sink.datagrams[0]).group(6)) == {
            "host": "localhost", "client_ip": "127.0.0.1", "upstream": up.addr, "route_id": "1"}
        r = await http(gw.addr, "POST", "/body", body=b'{"sample_payload":"hello"}')
        await wait_for(lambda: len(sink.datagrams) == 2)
        assert json.loads(RFC5424.fullmatch(sink.datagrams[1]).group(6)) == {
            "b": '{"sample_payload":"hello"}', "r": r.body.decode(), "route_id": "2"}
    finally:
        gw.stop()
        tr.close()


async def test_dead_receiver_never_slows_or_fails_the_request(tmp_path, up):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": port, "batch_max_size": 1,
                                             "flush_limit": 1}))
    try:
        t0 = time.monotonic()
        for i in range(30):
            assert (await http(gw.addr, "GET", f"/hello{i}", timeout=5)).status == 200
        assert time.monotonic() - t0 < 5
        await wait_for(lambda: "Batch Processor[sys logger] failed to process entries: failed to log message: "
                       "failed to connect: connection refused" in gw.log())
    finally:
        gw.stop()


async def test_meta_disable(tmp_path, up):
    loop = asyncio.get_running_loop()
    tr, sink = await loop.create_datagram_endpoint(UdpSink, local_addr=("127.0.0.1", 0))
    port = tr.get_extra_info("sockname")[1]
    gw = start_gateway(tmp_path, routes(up, {"host": "127.0.0.1", "port": port, "sock_type": "udp",
                                             "batch_max_size": 1, "flush_limit": 1, "_meta": {"disable": True}}))
    try:
        assert (await http(gw.addr, "GET", "/hello")).status == 200
        await asyncio.sleep(0.3)
        assert sink.datagrams == []
    finally:
        gw.stop()
        tr.close()
