"""ActiveProber against real loopback servers (short intervals, everything bounded)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess

import pytest

from meshgate.upstream import ActiveProber, HealthState, Node, probe_plan

pytestmark = pytest.mark.timeout(30)

FAST = {"healthy": {"interval": 0.05}, "unhealthy": {"interval": 0.05}}


class HttpServer:
    """Answers every request with ``self.status``; records the request heads."""

    def __init__(self, status: int = 200, *, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.status = status
        self.silent = False
        self.requests: list[bytes] = []
        self.ssl_ctx = ssl_ctx
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> HttpServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.requests.append(head)
            if self.silent:
                await asyncio.sleep(5)
                return
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def eventually(cond, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def node(port: int) -> Node:
    return Node("127.0.0.1", port, 1)


async def test_nodes_go_unhealthy_and_come_back():
    async with HttpServer(200) as ok, HttpServer(500) as bad:
        n_ok, n_bad, n_closed = node(ok.port), node(bad.port), node(closed_port())
        nodes = [n_ok, n_bad, n_closed]
        events: list[tuple[Node, bool]] = []
        checks = {"active": {"timeout": 0.5, **FAST}}
        state = HealthState(checks, nodes, on_change=lambda n, h: events.append((n, h)))
        prober = ActiveProber(state, probe_plan(checks), nodes)
        prober.start()
        try:
            # 500 x5 -> unhealthy; refused x2 -> unhealthy
            await eventually(lambda: not state.is_healthy(n_bad) and not state.is_healthy(n_closed))
            assert state.is_healthy(n_ok)
            assert state.counters(n_bad)["http_failure"] == 5
            assert state.counters(n_closed)["tcp_failure"] == 2
            # the 500 server recovers: two 200s bring it back (probed on the unhealthy interval)
            bad.status = 200
            await eventually(lambda: state.is_healthy(n_bad))
            assert state.internal_status(n_bad) == "healthy"
            assert (n_bad, False) in events and (n_bad, True) in events
            assert (n_closed, False) in events
            assert not state.is_healthy(n_closed)
            assert prober.rounds["healthy"] > 1 and prober.rounds["unhealthy"] > 1
        finally:
            await asyncio.wait_for(prober.stop(), 5)
        assert not prober.running
        assert ok.requests[0].startswith(b"GET / HTTP/1.1\r\nConnection: close\r\n")
        assert b"Host: 127.0.0.1\r\n" in ok.requests[0]


async def test_request_carries_path_host_and_headers():
    async with HttpServer(200) as srv:
        n = node(srv.port)
        checks = {"active": {"http_path": "/healthz", "host": "svc.local",
                             "req_headers": ["X-Probe: 1"], **FAST}}
        state = HealthState(checks, [n])
        prober = ActiveProber(state, probe_plan(checks), [n])
        await asyncio.wait_for(prober.probe_once(n), 5)
    assert srv.requests == [
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\nX-Probe: 1\r\nHost: svc.local\r\n\r\n"
    ]


async def test_active_port_override_is_probed():
    async with HttpServer(500) as srv:
        n = Node("127.0.0.1", closed_port(), 1)
        checks = {"active": {"port": srv.port, "unhealthy": {"http_failures": 1}}}
        state = HealthState(checks, [n])
        prober = ActiveProber(state, probe_plan(checks), [n])
        await asyncio.wait_for(prober.probe_once(n), 5)
        assert len(srv.requests) == 1
        assert not state.is_healthy(n)


async def test_timeouts_are_reported():
    async with HttpServer(200) as srv:
        srv.silent = True  # reads the request, never answers
        n = node(srv.port)
        checks = {"active": {"timeout": 0.1, **FAST}}
        state = HealthState(checks, [n])
        prober = ActiveProber(state, probe_plan(checks), [n])
        prober.start()
        try:
            await eventually(lambda: not state.is_healthy(n))
            assert state.counters(n)["timeout_failure"] == 3
        finally:
            await asyncio.wait_for(prober.stop(), 5)


async def test_tcp_checks_connect_only():
    async with HttpServer(500) as srv:
        up, down = node(srv.port), node(closed_port())
        checks = {"active": {"type": "tcp", **FAST}}
        state = HealthState(checks, [up, down])
        state.set_healthy(up, False)  # must come back through tcp successes
        prober = ActiveProber(state, probe_plan(checks), [up, down])
        prober.start()
        try:
            await eventually(lambda: state.is_healthy(up) and not state.is_healthy(down))
        finally:
            await asyncio.wait_for(prober.stop(), 5)
        assert state.counters(up)["success"] == 2


async def test_garbage_status_line_is_http_failure():
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        n = node(server.sockets[0].getsockname()[1])
        checks = {"active": {"unhealthy": {"http_failures": 1}}}
        state = HealthState(checks, [n])
        await asyncio.wait_for(ActiveProber(state, probe_plan(checks), [n]).probe_once(n), 5)
        assert state.counters(n)["http_failure"] == 1 and not state.is_healthy(n)
    finally:
        server.close()
        await server.wait_closed()


async def test_eof_before_status_line_is_tcp_failure():
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        n = node(server.sockets[0].getsockname()[1])
        state = HealthState({"active": {}}, [n])
        await asyncio.wait_for(ActiveProber(state, probe_plan({"active": {}}), [n]).probe_once(n), 5)
        assert state.counters(n)["tcp_failure"] == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_concurrency_is_bounded():
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def handle(reader, writer):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.wait_for(release.wait(), 5)
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
            await writer.drain()
        finally:
            in_flight -= 1
            writer.close()

    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(8)]
    try:
        nodes = [node(s.sockets[0].getsockname()[1]) for s in servers]
        checks = {"active": {"concurrency": 3, "timeout": 5}}
        state = HealthState(checks, nodes)
        prober = ActiveProber(state, probe_plan(checks), nodes)
        round_task = asyncio.create_task(prober.run_round(True))
        await eventually(lambda: in_flight == 3)
        await asyncio.sleep(0.05)
        assert in_flight == 3  # the other five wait for a slot
        release.set()
        await asyncio.wait_for(round_task, 5)
        assert peak == 3
        assert all(state.is_healthy(n) for n in nodes)
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


async def test_stop_cancels_in_flight_probes_cleanly():
    async with HttpServer(200) as srv:
        srv.silent = True
        n = node(srv.port)
        checks = {"active": {"timeout": 10, **FAST}}
        state = HealthState(checks, [n])
        prober = ActiveProber(state, probe_plan(checks), [n])
        prober.start()
        prober.start()  # idempotent
        await eventually(lambda: len(srv.requests) == 1)
        await asyncio.wait_for(prober.stop(), 2)
        assert not prober.running
        await prober.stop()  # idempotent
        assert state.counters(n) == {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 0}


async def test_zero_interval_disables_loop():
    async with HttpServer(200) as srv:
        n = node(srv.port)
        checks = {"active": {"healthy": {"interval": 0}, "unhealthy": {"interval": 0.05}}}
        state = HealthState(checks, [n])
        prober = ActiveProber(state, probe_plan(checks), [n])
        prober.start()
        try:
            await eventually(lambda: prober.rounds["unhealthy"] >= 3)
            assert prober.rounds["healthy"] == 0
            assert srv.requests == []  # the node is healthy: nothing to probe
        finally:
            await asyncio.wait_for(prober.stop(), 5)


# ---------------------------------------------------------------- https


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def server_ctx(cert, key) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_https_probe(self_signed):
    cert, key = self_signed
    async with HttpServer(200, ssl_ctx=server_ctx(cert, key)) as srv:
        n = node(srv.port)

        # verification off: the self-signed server is fine
        checks = {"active": {"type": "https", "https_verify_certificate": False,
                             "healthy": {"successes": 1}}}
        state = HealthState(checks, [n])
        state.set_healthy(n, False)
        await asyncio.wait_for(ActiveProber(state, probe_plan(checks), [n]).probe_once(n), 5)
        assert state.is_healthy(n)

        # verification on (default): unknown CA -> TLS failure counts as tcp_failure
        checks = {"active": {"type": "https", "unhealthy": {"tcp_failures": 1}}}
        state = HealthState(checks, [n])
        await asyncio.wait_for(ActiveProber(state, probe_plan(checks), [n]).probe_once(n), 5)
        assert state.counters(n)["tcp_failure"] == 1 and not state.is_healthy(n)

        # verification on with a context that trusts the cert, SNI/host = 127.0.0.1
        trust = ssl.create_default_context(cafile=str(cert))
        checks = {"active": {"type": "https", "healthy": {"successes": 1}}}
        state = HealthState(checks, [n])
        state.set_healthy(n, False)
        await asyncio.wait_for(
            ActiveProber(state, probe_plan(checks), [n], ssl_context=trust).probe_once(n), 5
        )
        assert state.is_healthy(n)
