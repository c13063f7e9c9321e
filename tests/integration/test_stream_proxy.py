"""APISIX's stream proxy: ``stream_routes`` over TCP, TLS and UDP through `meshgate run`.

Real sockets on loopback: echo servers in this process, the gateway as a user runs it with
``apisix.proxy_mode`` and ``apisix.stream_proxy``.  Checks what a client sees: bytes echoed
back exactly (1 MiB, 50 connections at once), routing by server port, remote address and
SNI, UDP sessions, failover to another node, a config change for new connections, refused
objects, and the stream-only mode.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from gwtools import free_port, start_gateway
from pki import PKI, make_ca, make_leaf

pytestmark = pytest.mark.timeout(120)


class TcpEcho:
    """Echoes every byte, prefixed once per connection with ``tag`` (who answered)."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.peers: list[str] = []

    async def start(self) -> TcpEcho:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.peers.append(w.get_extra_info("peername")[0])
        w.write(self.tag)
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.clients: set[Any] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.clients.add(addr)
        assert self.transport is not None
        self.transport.sendto(self.tag + data, addr)


async def udp_echo(tag: bytes) -> UdpEcho:
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(lambda: UdpEcho(tag),
                                                                         local_addr=("127.0.0.1", 0))
    return proto


def up(*ports: int) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{p}": 1 for p in ports}, "timeout": {"connect": 1, "send": 5,
                                                                                            "read": 30}}


def stream_node(tcp: list[Any], udp: list[Any] | None = None, mode: str = "http&stream") -> dict[str, Any]:
    sp: dict[str, Any] = {"tcp": tcp}
    if udp:
        sp["udp"] = udp
    return {"apisix": {"proxy_mode": mode, "stream_proxy": sp}}


async def roundtrip(port: int, payload: bytes, *, local: str | None = None, tls: ssl.SSLContext | None = None,
                    sni: str | None = None, timeout: float = 20.0) -> bytes:
    """Send ``payload``, half-close, read everything back."""
    r, w = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, local_addr=(local, 0) if local else None, ssl=tls, server_hostname=sni if tls else None),
        timeout)
    try:
        w.write(payload)
        await w.drain()
        if tls is None:
            w.write_eof()
            return await asyncio.wait_for(r.read(), timeout)
        # TLS cannot half-close: read the tag and the echo back by length
        got = b""
        while len(got) < len(payload) + 2:
            chunk = await asyncio.wait_for(r.read(65536), timeout)
            if not chunk:
                break
            got += chunk
        return got
    finally:
        w.close()


async def closed_without_answer(port: int, *, local: str | None = None) -> bool:
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0) if local else None)
    try:
        w.write(b"hello")
        await w.drain()
        return await asyncio.wait_for(r.read(), 5) == b""
    except ConnectionError:
        return True
    finally:
        w.close()


async def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} not open")


async def test_tcp_echo_routes_by_port_and_remote_address(tmp_path: Path) -> None:
    a, b = await TcpEcho(b"A:").start(), await TcpEcho(b"B:").start()
    pa, pb = free_port(), free_port()
    routes = {"stream_routes": [
        {"id": "by-remote", "server_port": pb, "remote_addr": "127.0.0.2", "upstream": up(b.port)},
        {"id": "by-port", "server_port": pa, "upstream": up(a.port)},
        {"id": "b-cidr", "server_port": pb, "remote_addr": "127.0.0.0/30", "upstream": up(a.port)},
    ]}
    gw = start_gateway(tmp_path, routes, workers=2, node=stream_node([f"127.0.0.1:{pa}", pb]))
    try:
        # 1 MiB there and back, byte for byte
        payload = os.urandom(1 << 20)
        assert await roundtrip(pa, payload) == b"A:" + payload
        # 50 connections at once, each its own bytes
        blobs = [os.urandom(64 * 1024) for _ in range(50)]
        got = await asyncio.gather(*(roundtrip(pa, x) for x in blobs))
        assert all(g == b"A:" + x for g, x in zip(got, blobs))
        # the remote address decides on port pb; the first matching route in config order wins
        assert await roundtrip(pb, b"x", local="127.0.0.2") == b"B:x"
        assert await roundtrip(pb, b"y", local="127.0.0.3") == b"A:y"      # the /30, not the /32
        assert await closed_without_answer(pb, local="127.0.0.9")           # no route: closed
    finally:
        gw.stop()
        await a.close()
        await b.close()


async def test_udp_sessions_per_client(tmp_path: Path) -> None:
    e = await udp_echo(b"U:")
    pt, pu = free_port(), free_port()
    routes = {"stream_routes": [{"id": "u", "server_port": pu, "upstream": up(e.port)}]}
    gw = start_gateway(tmp_path, routes, workers=2, node=stream_node([pt], [f"127.0.0.1:{pu}"]))
    loop = asyncio.get_running_loop()
    try:
        async def client(i: int) -> list[bytes]:
            got: asyncio.Queue[bytes] = asyncio.Queue()

            class P(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    got.put_nowait(data)
            t, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", pu))
            out = []
            try:
                for n in range(5):
                    msg = f"c{i}-{n}".encode()
                    for _ in range(20):       # UDP: resend until the session answers
                        t.sendto(msg)
                        try:
                            data = await asyncio.wait_for(got.get(), 0.5)
                        except TimeoutError:
                            continue
                        if data == b"U:" + msg:
                            break
                    out.append(data)
            finally:
                t.close()
            return out
        results = await asyncio.gather(*(client(i) for i in range(3)))
        for i, res in enumerate(results):
            assert res == [f"U:c{i}-{n}".encode() for n in range(5)], res
        assert len(e.clients) == 3          # one upstream socket per client session
    finally:
        gw.stop()
        assert e.transport is not None
        e.transport.close()


@pytest.fixture(scope="module")
def stream_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("stream-pki")
    make_ca(d, "ca", "Stream Test CA")
    make_leaf(d, "a", "ca", "/CN=a.stream.test", dns=("a.stream.test",))
    make_leaf(d, "b", "ca", "/CN=b.stream.test", dns=("b.stream.test",))
    return PKI(d)


async def test_tls_listener_terminates_and_routes_by_sni(tmp_path: Path, stream_pki: PKI) -> None:
    a, b = await TcpEcho(b"A:").start(), await TcpEcho(b"B:").start()
    pt = free_port()
    routes = {"ssls": [{"id": "a", "sni": "a.stream.test", **stream_pki.pair("a")},
                       {"id": "b", "sni": "b.stream.test", **stream_pki.pair("b")}],
              "stream_routes": [{"id": "sa", "sni": "a.stream.test", "upstream": up(a.port)},
                                {"id": "sb", "sni": "b.stream.test", "upstream": up(b.port)}]}
    gw = start_gateway(tmp_path, routes, node=stream_node([{"addr": f"127.0.0.1:{pt}", "tls": True}]))
    try:
        ctx = ssl.create_default_context(cafile=stream_pki.path("ca.crt"))
        assert await roundtrip(pt, b"hello", tls=ctx, sni="a.stream.test") == b"A:hello"
        assert await roundtrip(pt, b"world", tls=ctx, sni="b.stream.test") == b"B:world"
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(pt, b"?", tls=ctx, sni="c.stream.test")        # no certificate for it
    finally:
        gw.stop()
        await a.close()
        await b.close()


async def test_failover_config_change_and_refused_routes(tmp_path: Path) -> None:
    a, b = await TcpEcho(b"A:").start(), await TcpEcho(b"B:").start()
    dead = free_port()
    pt = free_port()
    routes = {"stream_routes": [{"id": "r", "server_port": pt, "upstream": {**up(dead, a.port), "retries": 1}}]}
    gw = start_gateway(tmp_path, routes, node=stream_node([pt]))
    try:
        for _ in range(4):            # the dead node is replaced by the live one every time
            assert await roundtrip(pt, b"z") == b"A:z"
        # a change applies to the next connection; a route with a plugin streams cannot run is
        # refused, logged, and the next route serves instead
        gw.write_routes({"stream_routes": [
            {"id": "p", "server_port": pt, "upstream": up(a.port), "plugins": {"syslog": {"host": "127.0.0.1"}}},
            {"id": "r", "server_port": pt, "upstream": up(b.port)}]})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and await roundtrip(pt, b"q") != b"B:q":
            await asyncio.sleep(0.1)
        assert await roundtrip(pt, b"q") == b"B:q"
        assert "stream route p not served: " in gw.log() and "plugin syslog does not run on stream routes" in gw.log()
    finally:
        gw.stop()
        await a.close()
        await b.close()


async def test_stream_only_mode_opens_no_http_port(tmp_path: Path) -> None:
    a = await TcpEcho(b"A:").start()
    pt = free_port()
    gw = start_gateway(tmp_path, {"stream_routes": [{"id": "r", "upstream": up(a.port)}]},
                       node=stream_node([pt], mode="stream"), wait=False)
    try:
        await wait_port(pt)
        assert await roundtrip(pt, b"only") == b"A:only"
        with pytest.raises(OSError):
            socket.create_connection(gw.addr, timeout=1).close()
    finally:
        gw.stop()
        await a.close()


def test_bad_stream_config_is_refused_with_the_reason(tmp_path: Path) -> None:
    from meshgate.config import NodeConfigErrors, load_node_config

    p = tmp_path / "config.yaml"
    p.write_text("apisix:\n  node_listen: 9080\n  proxy_mode: http&stream\n  stream_proxy:\n    tcp: [9080, 'x:y']\n")
    with pytest.raises(NodeConfigErrors) as e:
        load_node_config(p)
    text = str(e.value)
    assert "/apisix/stream_proxy/tcp: port 9080 is already an HTTP port" in text
    assert "/apisix/stream_proxy/tcp/1: expected a port or \"IP:PORT\", got \"x:y\"" in text


async def test_stream_plugins_ip_restriction_and_limit_conn(tmp_path: Path) -> None:
    a = await TcpEcho(b"A:").start()
    pi, pl = free_port(), free_port()
    routes = {"stream_routes": [
        {"id": "ip", "server_port": pi, "upstream": up(a.port), "plugins": {"ip-restriction": {"whitelist": ["127.0.0.2"]}}},
        {"id": "lc", "server_port": pl, "upstream": up(a.port),
         "plugins": {"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}}},
    ]}
    gw = start_gateway(tmp_path, routes, node=stream_node([pi, pl]))
    try:
        assert await roundtrip(pi, b"ok", local="127.0.0.2") == b"A:ok"
        assert await closed_without_answer(pi, local="127.0.0.3")          # not on the whitelist
        # one connection at a time per address: a second one is refused while the first is open
        r1, w1 = await asyncio.open_connection("127.0.0.1", pl)
        w1.write(b"first")
        assert await asyncio.wait_for(r1.readexactly(7), 5) == b"A:first"
        assert await closed_without_answer(pl)
        assert await roundtrip(pl, b"other", local="127.0.0.5") == b"A:other"   # another address: its own count
        w1.close()
        await asyncio.sleep(0.2)
        deadline = time.monotonic() + 5                                  # its end gives the slot back
        while time.monotonic() < deadline:
            try:
                if await roundtrip(pl, b"again", timeout=2) == b"A:again":
                    break
            except (ConnectionError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the limit-conn slot was not given back:\n" + gw.log()[-2000:])
    finally:
        gw.stop()
        await a.close()


async def test_inline_stream_upstream_is_health_checked(tmp_path: Path) -> None:
    a = await TcpEcho(b"A:").start()
    dead = free_port()
    pt = free_port()
    checks = {"active": {"type": "tcp", "timeout": 1, "healthy": {"interval": 1, "successes": 1},
                         "unhealthy": {"interval": 1, "tcp_failures": 1, "timeouts": 1}}}
    routes = {"stream_routes": [{"id": "hc", "server_port": pt,
                                 "upstream": {**up(dead, a.port), "retries": 0, "checks": checks}}]}
    gw = start_gateway(tmp_path, routes, node=stream_node([pt]))
    try:
        def dead_unhealthy() -> bool:
            for item in gw.control("/v1/healthcheck"):
                if item["name"] == "/apisix/stream_routes/hc":
                    return any(int(n["port"]) == dead and n["status"] == "unhealthy" for n in item["nodes"])
            return False
        deadline = time.monotonic() + 15
        while not await asyncio.to_thread(dead_unhealthy):
            assert time.monotonic() < deadline, "the dead node never turned unhealthy in /v1/healthcheck"
            await asyncio.sleep(0.2)
        # retries 0: without the checks, roundrobin would send every other connection to the dead
        # node and it would fail; now the balancer skips it
        for _ in range(6):
            assert await roundtrip(pt, b"h") == b"A:h"
    finally:
        gw.stop()
        await a.close()
