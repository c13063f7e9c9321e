"""Upstream behaviour through the real gateway process (apisix-semantics.md section 4).

Balancers, priority groups, retries, timeouts, pass_host, https upstreams, domain nodes,
health checks (active, passive, shared by workers) and the keep-alive pool, each observed
the way a user sees it: which test server got the request, what the client got back, what
``/v1/healthcheck`` shows, how many upstream connections were opened.

Every wait is bounded: conditions are polled until a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from gwtools import Gateway, Response, Upstream, UpstreamRequest, _UpConn, free_port, http, start_gateway

HEALTH = "/health"


# ---------------------------------------------------------------------------------------------
# test servers and helpers
# ---------------------------------------------------------------------------------------------

class _TaggedConn(_UpConn):
    """Records which upstream connection carried each request (``req.conn``)."""

    def on_message_complete(self) -> None:
        if self.cur is not None:
            self.cur.conn = id(self)  # type: ignore[attr-defined]
        super().on_message_complete()


@dataclass
class Srv(Upstream):
    """A named upstream node: answers ``200 <name>``; ``/health`` answers ``health_status``."""

    name: str = "?"
    health_status: int = 200
    ssl_ctx: ssl.SSLContext | None = None
    app: Callable[[UpstreamRequest], Any] | None = None

    async def start(self, port: int = 0) -> Srv:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TaggedConn(self), "127.0.0.1", port, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def dispatch(self, req: UpstreamRequest) -> Any:
        if req.path.startswith(HEALTH):
            return self.health_status, {}, b"health"
        if self.app is not None:
            return self.app(req)
        return 200, {"X-Node": self.name}, self.name.encode()

    def traffic(self) -> list[UpstreamRequest]:
        """Proxied requests (active health probes left out)."""
        return [r for r in self.requests if not r.path.startswith(HEALTH)]

    def traffic_conns(self) -> set[int]:
        return {getattr(r, "conn", 0) for r in self.traffic()}


class Closer:
    """Accepts a connection, reads one request head, closes without answering."""

    def __init__(self) -> None:
        self.hits = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Closer:
        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
                self.hits += 1
            except Exception:
                pass
            w.close()

        self.server = await asyncio.start_server(cb, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def servers():
    made: list[Any] = []

    async def make(name: str = "?", app: Callable[[UpstreamRequest], Any] | None = None, **kw: Any) -> Srv:
        s = Srv(name=name, app=app, **kw)
        s.handler = s.dispatch
        await s.start()
        made.append(s)
        return s

    async def closer() -> Closer:
        c = await Closer().start()
        made.append(c)
        return c

    make.closer = closer  # type: ignore[attr-defined]
    yield make
    for s in made:
        await s.close()


@pytest.fixture
async def gateway(tmp_path):
    """Start the real gateway without blocking the test loop (which runs the upstreams)."""
    started: list[Gateway] = []

    async def start(routes: dict[str, Any], **kw: Any) -> Gateway:
        gw = await asyncio.to_thread(start_gateway, tmp_path / f"gw{len(started)}", routes, **kw)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await asyncio.to_thread(gw.stop)


def routes(*items: dict[str, Any]) -> dict[str, Any]:
    return {"routes": list(items)}


def route(id: str, upstream: dict[str, Any], uri: str = "/*", **extra: Any) -> dict[str, Any]:
    return {"id": id, "uri": uri, "upstream": upstream, **extra}


def closed_addr() -> str:
    """An address on which nothing listens: connections are refused."""
    return f"127.0.0.1:{free_port()}"


def hp(addr: str) -> dict[str, Any]:
    host, _, port = addr.rpartition(":")
    return {"host": host, "port": int(port)}


async def get(gw: Gateway, path: str = "/", **kw: Any) -> Response:
    return await http(gw.addr, "GET", path, **kw)


async def control(gw: Gateway, path: str) -> Any:
    return await asyncio.to_thread(gw.control, path)


async def poll(pred: Callable[[], Awaitable[Any] | Any], *, timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def health_of(gw: Gateway, key: str = "routes/1") -> dict[int, str]:
    """``{port: "healthy"|"unhealthy"}`` from the Control API for one upstream."""
    for item in await control(gw, "/v1/healthcheck"):
        if item["name"] == f"/apisix/{key}":
            return {int(n["port"]): n["status"] for n in item["nodes"]}
    return {}


async def wait_health(gw: Gateway, port: int, status: str, key: str = "routes/1", timeout: float = 15.0) -> None:
    async def check() -> bool:
        return (await health_of(gw, key)).get(port) == status

    await poll(check, timeout=timeout, interval=0.1, what=f"node :{port} {status} in /v1/healthcheck")


def active_checks(*, interval: int = 1, successes: int = 2, failures: int = 2) -> dict[str, Any]:
    # APISIX's schema requires integer intervals >= 1.
    return {"active": {"http_path": HEALTH, "timeout": 1,
                       "healthy": {"interval": interval, "successes": successes},
                       "unhealthy": {"interval": interval, "http_failures": failures}}}


# ---------------------------------------------------------------------------------------------
# balancers
# ---------------------------------------------------------------------------------------------

async def test_roundrobin_follows_weights(servers, gateway):
    a, b, c = await servers("a"), await servers("b"), await servers("c")
    gw = await gateway(routes(route("1", {"type": "roundrobin", "nodes": {a.addr: 3, b.addr: 1, c.addr: 0}})))
    got = Counter()
    for i in range(40):
        r = await get(gw, f"/rr{i}")
        assert r.status == 200
        got[r.body.decode()] += 1
    assert got == {"a": 30, "b": 10}
    assert c.traffic() == []  # weight 0: never selected


@pytest.mark.parametrize("hash_on,key,send", [
    ("header", "X-User", lambda k: {"headers": {"X-User": k}, "path": "/h"}),
    ("vars", "arg_user", lambda k: {"path": f"/h?user={k}"}),
    ("cookie", "sid", lambda k: {"headers": {"Cookie": f"theme=dark; sid={k}"}, "path": "/h"}),
], ids=["header", "arg", "cookie"])
async def test_chash_maps_a_key_to_one_node(servers, gateway, hash_on, key, send):
    nodes = [await servers(n) for n in ("a", "b", "c")]
    gw = await gateway(routes(route("1", {"type": "chash", "hash_on": hash_on, "key": key,
                                          "nodes": {n.addr: 1 for n in nodes}})))
    keys = [f"user-{i}" for i in range(30)]
    first: dict[str, str] = {}
    for rnd in range(3):
        for k in keys:
            kw = send(k)
            r = await get(gw, kw.pop("path"), **kw)  # a fresh client connection each time
            assert r.status == 200
            node = r.body.decode()
            if rnd == 0:
                first[k] = node
            else:
                assert node == first[k], f"key {k} moved from {first[k]} to {node}"
    assert len(set(first.values())) >= 2, f"every key hashed to one node: {first}"


async def test_least_conn_avoids_the_busy_node(servers, gateway):
    release = asyncio.Event()

    async def slow(req: UpstreamRequest) -> Any:
        if req.path == "/slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 10)
        return 200, {}, b"a"

    a = await servers("a", app=lambda req: slow(req))
    b = await servers("b")
    gw = await gateway(routes(route("1", {"type": "least_conn", "nodes": {a.addr: 1, b.addr: 1}})))

    # Park one request on `a` (fast answers from `b` do not count).
    held: asyncio.Task[Response] | None = None
    for _ in range(4):
        t = asyncio.create_task(http(gw.addr, "GET", "/slow", timeout=15))
        await poll(lambda: t.done() or any(r.path == "/slow" for r in a.traffic()), timeout=5, what="slow request")
        if not t.done():
            held = t
            break
        assert (await t).body == b"b"
    assert held is not None, "no request ever reached node a"
    try:
        for i in range(10):
            r = await get(gw, f"/q{i}")
            assert r.status == 200 and r.body == b"b", "least_conn sent a request to the node that is busy"
        assert len(a.traffic()) == 1
    finally:
        release.set()
    r = await held
    assert r.status == 200 and r.body == b"a"
    # Once idle again, `a` gets its share.
    bodies = [(await get(gw, f"/after{i}")).body for i in range(4)]
    assert b"a" in bodies and b"b" in bodies


# ---------------------------------------------------------------------------------------------
# priority groups and retries
# ---------------------------------------------------------------------------------------------

async def test_priority_groups(servers, gateway):
    h1, h2, low = await servers("h1"), await servers("h2"), await servers("low")
    gw = await gateway(routes(
        # both high nodes up: the low group is never used
        route("1", {"nodes": [{**hp(h1.addr), "weight": 1, "priority": 1}, {**hp(h2.addr), "weight": 1, "priority": 1},
                              {**hp(low.addr), "weight": 100, "priority": 0}]}, uri="/up/*"),
        # one high node refuses: the other high node serves, still not the low group
        route("2", {"nodes": [{**hp(closed_addr()), "weight": 1, "priority": 1},
                              {**hp(h1.addr), "weight": 1, "priority": 1},
                              {**hp(low.addr), "weight": 1, "priority": 0}]}, uri="/half/*"),
        # every high node refuses: the low group takes over
        route("3", {"nodes": [{**hp(closed_addr()), "weight": 1, "priority": 5},
                              {**hp(closed_addr()), "weight": 1, "priority": 1},
                              {**hp(low.addr), "weight": 1, "priority": -1}]}, uri="/down/*"),
    ))
    got = Counter()
    for i in range(10):
        r = await get(gw, f"/up/{i}")
        assert r.status == 200
        got[r.body.decode()] += 1
    assert got == {"h1": 5, "h2": 5}
    assert low.traffic() == []

    for i in range(6):
        r = await get(gw, f"/half/{i}")
        assert r.status == 200 and r.body == b"h1"
    assert low.traffic() == []

    for i in range(4):
        r = await get(gw, f"/down/{i}")
        assert r.status == 200 and r.body == b"low"
    assert len(low.traffic()) == 4


async def test_retry_to_next_node_when_connection_refused(servers, gateway):
    live = await servers("live")
    gw = await gateway(routes(
        # two refusing nodes and one live: default retries = nodes - 1 = 2 always reaches it
        route("1", {"nodes": {closed_addr(): 1, closed_addr(): 1, live.addr: 1}}, uri="/default/*"),
        # retries: 0 disables retrying: the refused node answers 502 and `live` is never tried
        route("2", {"retries": 0, "nodes": [{**hp(closed_addr()), "weight": 1, "priority": 1},
                                            {**hp(live.addr), "weight": 1, "priority": 0}]}, uri="/noretry/*"),
        # retries: 1 with two refusing nodes in the preferred group: one retry is not enough
        route("3", {"retries": 1, "nodes": [{**hp(closed_addr()), "weight": 1, "priority": 2},
                                            {**hp(closed_addr()), "weight": 1, "priority": 1},
                                            {**hp(live.addr), "weight": 1, "priority": 0}]}, uri="/one/*"),
    ))
    for i in range(6):
        r = await get(gw, f"/default/{i}")
        assert r.status == 200 and r.body == b"live"
    assert len(live.traffic()) == 6

    for i in range(3):
        r = await get(gw, f"/noretry/{i}")
        assert r.status == 502
    r = await get(gw, "/one/x")
    assert r.status == 502
    assert len(live.traffic()) == 6


async def test_retry_timeout_caps_time_spent_retrying(servers, gateway):
    def never(req: UpstreamRequest) -> Any:
        return None  # accept the request, never answer

    hang = [await servers(f"hang{i}", app=never) for i in range(3)]
    hang2 = [await servers(f"other{i}", app=never) for i in range(3)]

    def nodes(srvs: list[Srv]) -> list[dict[str, Any]]:
        return [{**hp(s.addr), "weight": 1, "priority": 10 - i} for i, s in enumerate(srvs)]

    tmo = {"connect": 1, "send": 1, "read": 0.5}
    gw = await gateway(routes(
        route("1", {"nodes": nodes(hang), "timeout": tmo, "retry_timeout": 0.8}, uri="/capped"),
        route("2", {"nodes": nodes(hang2), "timeout": tmo}, uri="/uncapped"),
    ))
    r = await get(gw, "/capped", timeout=15)
    assert r.status in (502, 504)  # the exact status is checked by the next test
    # first try times out at ~0.5 s (< 0.8: retry), second at ~1.0 s (> 0.8: stop)
    assert [len(s.traffic()) for s in hang] == [1, 1, 0]

    t0 = time.monotonic()
    r = await get(gw, "/uncapped", timeout=15)
    assert r.status == 504
    assert [len(s.traffic()) for s in hang2] == [1, 1, 1]  # default retries = 2
    assert time.monotonic() - t0 >= 1.4


async def test_retry_timeout_exhausted_answers_502(servers, gateway):
    hang = [await servers(f"hang{i}", app=lambda req: None) for i in range(3)]
    gw = await gateway(routes(route("1", {
        "nodes": [{**hp(s.addr), "weight": 1, "priority": 10 - i} for i, s in enumerate(hang)],
        "timeout": {"connect": 1, "send": 1, "read": 0.5}, "retry_timeout": 0.8})))
    r = await get(gw, "/capped", timeout=15)
    assert [len(s.traffic()) for s in hang] == [1, 1, 0]
    # APISIX: once proxy_retry_deadline has passed, the balancer refuses the next try with 502
    assert r.status == 502


async def test_retries_beyond_node_count_answer_502(servers, gateway):
    hang = [await servers(f"hang{i}", app=lambda req: None) for i in range(2)]
    gw = await gateway(routes(route("1", {"nodes": {s.addr: 1 for s in hang}, "retries": 3,
                                          "timeout": {"connect": 1, "send": 1, "read": 0.5}})))
    r = await get(gw, "/twice", timeout=15)
    assert [len(s.traffic()) for s in hang] == [1, 1]  # never the same node twice
    assert r.status == 502


async def test_single_node_upstream_retries_the_same_node(servers, gateway):
    state = {"conns": 0}

    class FlakyOnce(asyncio.Protocol):
        """First connection: read the request, close without answering. Later: answer 200."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            state["conns"] += 1
            self.n = state["conns"]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            if self.n == 1:
                self.t.close()
            else:
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    srv = await loop.create_server(FlakyOnce, "127.0.0.1", 0)
    try:
        port = srv.sockets[0].getsockname()[1]
        gw = await gateway(routes(route("1", {"nodes": {f"127.0.0.1:{port}": 1}, "retries": 1})))
        r = await get(gw, "/once")
        assert state["conns"] == 2, "the failed GET was not retried on the only node"
        assert r.status == 200 and r.body == b"ok"
    finally:
        srv.close()


async def test_http_error_status_is_not_retried(servers, gateway):
    failing = await servers("failing", app=lambda req: (503, {}, b"busy"))
    live = await servers("live")
    gw = await gateway(routes(route("1", {"nodes": [{**hp(failing.addr), "weight": 1, "priority": 1},
                                                    {**hp(live.addr), "weight": 1, "priority": 0}]})))
    r = await get(gw, "/s")
    # proxy_next_upstream is "error timeout": an HTTP answer, even 5xx, is passed through
    assert r.status == 503 and r.body == b"busy"
    assert live.traffic() == []


# ---------------------------------------------------------------------------------------------
# timeouts
# ---------------------------------------------------------------------------------------------

async def test_read_timeout_is_504(servers, gateway):
    up = await servers("hang", app=lambda req: None)
    gw = await gateway(routes(route("1", {"nodes": {up.addr: 1}, "timeout": {"connect": 1, "send": 1, "read": 0.5}})))
    t0 = time.monotonic()
    r = await get(gw, "/wait", timeout=10)
    elapsed = time.monotonic() - t0
    assert r.status == 504
    assert 0.45 <= elapsed < 3.0, elapsed
    assert len(up.traffic()) == 1


async def test_route_timeout_overrides_upstream_timeout(servers, gateway):
    async def answer_after_1s(req: UpstreamRequest) -> Any:
        if req.path.startswith("/late"):
            await asyncio.sleep(1.0)  # the behaviour under test: a slow upstream
            return 200, {}, b"late"
        return None  # never answers

    up = await servers("u", app=answer_after_1s)
    gw = await gateway(routes(
        # upstream allows 10 s, the route only 0.5 s
        route("1", {"nodes": {up.addr: 1}, "timeout": {"connect": 1, "send": 1, "read": 10}},
              uri="/hang", timeout={"connect": 1, "send": 1, "read": 0.5}),
        # upstream allows 0.5 s, the route 5 s
        route("2", {"nodes": {up.addr: 1}, "timeout": {"connect": 1, "send": 1, "read": 0.5}},
              uri="/late", timeout={"connect": 1, "send": 1, "read": 5}),
    ))
    t0 = time.monotonic()
    r = await get(gw, "/hang", timeout=15)
    assert r.status == 504
    assert time.monotonic() - t0 < 3.0
    r = await get(gw, "/late", timeout=15)
    assert r.status == 200 and r.body == b"late"


async def test_reset_after_headers_aborts_the_client_without_retry(servers, gateway):
    head_seen = asyncio.Event()

    async def partial_then_reset(transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        # reset once the client has the response head
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(head_seen.wait(), 5)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    bad = await servers("bad", app=lambda req: (200, {}, partial_then_reset))
    good = await servers("good")
    gw = await gateway(routes(route("1", {"nodes": [{**hp(bad.addr), "weight": 1, "priority": 1},
                                                    {**hp(good.addr), "weight": 1, "priority": 0}]})))
    reader, writer = await asyncio.open_connection(*gw.addr)
    try:
        writer.write(b"GET /partial HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length: 1000" in head.lower()
        head_seen.set()
        body = bytearray()
        eof = False

        async def drain() -> None:
            nonlocal eof
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError:
                    eof = True
                    return
                if not chunk:
                    eof = True
                    return
                body.extend(chunk)

        await asyncio.wait_for(drain(), 5)
        assert eof, "the gateway kept the client connection open after the upstream reset"
        assert len(body) < 1000
    finally:
        writer.close()
    assert len(bad.traffic()) == 1
    assert good.traffic() == []  # never retried once response bytes were sent


async def test_non_idempotent_request_not_retried_once_sent(servers, gateway):
    closer = await servers.closer()
    live = await servers("live")
    gw = await gateway(routes(
        route("1", {"nodes": [{**hp(closer.addr), "weight": 1, "priority": 1},
                              {**hp(live.addr), "weight": 1, "priority": 0}]}, uri="/sent/*"),
        route("2", {"nodes": [{**hp(closed_addr()), "weight": 1, "priority": 1},
                              {**hp(live.addr), "weight": 1, "priority": 0}]}, uri="/refused/*"),
    ))
    # POST reached the node, which closed without answering: not replayed elsewhere
    r = await http(gw.addr, "POST", "/sent/order", body=b"pay=1")
    assert r.status == 502
    assert closer.hits == 1
    assert live.traffic() == []

    # the same failure on an idempotent request is retried on the next node
    r = await get(gw, "/sent/list")
    assert r.status == 200 and r.body == b"live"
    assert closer.hits == 2

    # POST whose connection was refused was never sent: it is retried
    r = await http(gw.addr, "POST", "/refused/order", body=b"pay=2")
    assert r.status == 200 and r.body == b"live"
    last = live.traffic()[-1]
    assert last.method == "POST" and last.path == "/refused/order" and last.body == b"pay=2"


# ---------------------------------------------------------------------------------------------
# Host, scheme, domain nodes
# ---------------------------------------------------------------------------------------------

async def test_pass_host_modes(servers, gateway):
    up = await servers("u")
    gw = await gateway(routes(
        route("1", {"nodes": {up.addr: 1}}, uri="/pass"),
        route("2", {"nodes": {up.addr: 1}, "pass_host": "node"}, uri="/node"),
        route("3", {"nodes": {up.addr: 1}, "pass_host": "rewrite", "upstream_host": "rewritten.example"},
              uri="/rewrite"),
        route("4", {"nodes": {f"localhost:{up.port}": 1}, "pass_host": "node"}, uri="/domain-node"),
        # the Host is recomputed for the node a retry goes to
        route("5", {"pass_host": "node", "nodes": [{**hp(closed_addr()), "weight": 1, "priority": 1},
                                                   {**hp(up.addr), "weight": 1, "priority": 0}]}, uri="/node-retry"),
    ))
    seen = {}
    for path in ("/pass", "/node", "/rewrite", "/domain-node", "/node-retry"):
        r = await get(gw, path, host="client.example:8080")
        assert r.status == 200
        seen[path] = up.traffic()[-1].header("host")
    assert seen == {
        "/pass": "client.example:8080",
        "/node": f"127.0.0.1:{up.port}",
        "/rewrite": "rewritten.example",
        "/domain-node": f"localhost:{up.port}",
        "/node-retry": f"127.0.0.1:{up.port}",
    }


async def test_domain_name_node_is_resolved(servers, gateway):
    up = await servers("dom")
    gw = await gateway(routes(route("1", {"nodes": {f"localhost:{up.port}": 1}})))
    for i in range(3):
        r = await get(gw, f"/d{i}")
        assert r.status == 200 and r.body == b"dom"
    assert len(up.traffic()) == 3


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "up.crt", tmp / "up.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=upstream.test"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


async def test_https_upstream_self_signed(servers, gateway, tmp_path):
    cert, key = await asyncio.to_thread(_self_signed, tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    ctx.sni_callback = lambda sslobj, name, c: sni.append(name)  # type: ignore[assignment]
    up = await servers("tls", ssl_ctx=ctx)
    gw = await gateway(routes(
        route("1", {"scheme": "https", "nodes": {up.addr: 1}}, uri="/pass"),
        route("2", {"scheme": "https", "nodes": {up.addr: 1}, "pass_host": "rewrite",
                    "upstream_host": "api.internal"}, uri="/rewrite"),
    ))
    r = await get(gw, "/pass", host="secure.example")
    assert r.status == 200 and r.body == b"tls"  # self-signed accepted: verify is off by default
    assert up.traffic()[-1].header("host") == "secure.example"
    assert sni[-1] == "secure.example"  # SNI = the Host sent upstream
    r = await get(gw, "/rewrite", host="secure.example")
    assert r.status == 200 and r.body == b"tls"
    assert up.traffic()[-1].header("host") == "api.internal"
    assert sni[-1] == "api.internal"


async def test_https_keepalive_pool_is_per_sni(servers, gateway, tmp_path):
    cert, key = await asyncio.to_thread(_self_signed, tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    ctx.sni_callback = lambda sslobj, name, c: sni.append(name)  # type: ignore[assignment]
    up = await servers("tls", ssl_ctx=ctx)
    gw = await gateway(routes(route("1", {"scheme": "https", "nodes": {up.addr: 1}})))
    for host in ("a.example", "b.example", "a.example", "b.example"):
        r = await get(gw, "/", host=host)
        assert r.status == 200
        # the TLS session that carries the request was opened for that request's host
        assert up.traffic()[-1].header("host") == host
    # APISIX names the pool scheme#host#port#sni: one connection per SNI, each reused
    assert sorted(s or "" for s in sni) == ["a.example", "b.example"]
    assert up.connections == 2


# ---------------------------------------------------------------------------------------------
# health checks
# ---------------------------------------------------------------------------------------------

async def test_passive_health_check_takes_failing_node_out(servers, gateway):
    good = await servers("good")
    bad = await servers("bad", app=lambda req: (500, {}, b"bad"))
    checks = {
        # active section required by the schema; intervals long enough to stay out of the way
        "active": {"http_path": HEALTH, "healthy": {"interval": 300}, "unhealthy": {"interval": 300}},
        "passive": {"unhealthy": {"http_statuses": [500], "http_failures": 2}},
    }
    gw = await gateway(routes(route("1", {"nodes": {good.addr: 1, bad.addr: 1}, "checks": checks})))
    await wait_health(gw, bad.port, "healthy")

    async def bad_is_out() -> bool:
        r = await get(gw, "/p")
        assert r.status in (200, 500)
        return (await health_of(gw)).get(bad.port) == "unhealthy"

    await poll(bad_is_out, timeout=10, what="passive checks to mark the 500 node unhealthy")
    assert len(bad.traffic()) >= 2
    before = len(bad.traffic())
    for i in range(10):
        r = await get(gw, f"/after{i}")
        assert r.status == 200 and r.body == b"good"
    assert len(bad.traffic()) == before
    assert (await health_of(gw)).get(good.port) == "healthy"


async def test_passive_tcp_failures_take_node_out(servers, gateway):
    closer = await servers.closer()
    live = await servers("live")
    checks = {
        # tcp probes (connect only) every 300 s: the closer looks healthy to them
        "active": {"type": "tcp", "healthy": {"interval": 300}, "unhealthy": {"interval": 300}},
        "passive": {"unhealthy": {"tcp_failures": 2}},
    }
    gw = await gateway(routes(route("1", {"nodes": {closer.addr: 1, live.addr: 1}, "checks": checks})))
    await wait_health(gw, closer.port, "healthy")

    async def closer_is_out() -> bool:
        r = await get(gw, "/t")
        assert r.status == 200 and r.body == b"live"  # GETs that hit the closer are retried
        return (await health_of(gw)).get(closer.port) == "unhealthy"

    await poll(closer_is_out, timeout=10, what="passive tcp failures to mark the node unhealthy")
    hits = closer.hits
    assert hits >= 2
    for i in range(8):
        r = await get(gw, f"/after{i}")
        assert r.status == 200 and r.body == b"live"
    assert closer.hits == hits


async def test_active_health_check_on_upstream_object(servers, gateway):
    a, b = await servers("a"), await servers("b", health_status=500)
    gw = await gateway({
        "upstreams": [{"id": "u1", "nodes": {a.addr: 1, b.addr: 1}, "checks": active_checks()}],
        "routes": [{"id": "1", "uri": "/*", "upstream_id": "u1"}],
    })
    await wait_health(gw, b.port, "unhealthy", key="upstreams/u1")
    for i in range(8):
        r = await get(gw, f"/u{i}")
        assert r.status == 200 and r.body == b"a"
    assert b.traffic() == []


async def test_active_health_check_out_and_back(servers, gateway):
    a, b = await servers("a"), await servers("b", health_status=500)
    gw = await gateway(routes(route("1", {"nodes": {a.addr: 1, b.addr: 1}, "checks": active_checks()})))
    await wait_health(gw, b.port, "unhealthy")
    assert (await health_of(gw))[a.port] == "healthy"
    assert any(r.path == HEALTH for r in b.requests)
    for i in range(10):
        r = await get(gw, f"/x{i}")
        assert r.status == 200 and r.body == b"a"
    assert b.traffic() == []

    b.health_status = 200
    await wait_health(gw, b.port, "healthy")
    bodies = Counter([(await get(gw, f"/y{i}")).body for i in range(6)])
    assert bodies[b"b"] >= 1 and bodies[b"a"] >= 1


async def test_health_state_survives_unrelated_reload(servers, gateway):
    a, b = await servers("a"), await servers("b", health_status=500)
    other = await servers("other")
    ups = {"nodes": {a.addr: 1, b.addr: 1}, "checks": active_checks(interval=1, failures=2, successes=2)}
    gw = await gateway(routes(route("1", ups)))
    await wait_health(gw, b.port, "unhealthy")
    version = await asyncio.to_thread(gw.version)
    gw.write_routes(routes(route("1", ups), route("2", {"nodes": {other.addr: 1}}, uri="/other")))
    await asyncio.to_thread(gw.wait_applied, version + 1)
    assert (await get(gw, "/other")).body == b"other"
    assert (await health_of(gw)).get(b.port) == "unhealthy"
    for i in range(8):
        r = await get(gw, f"/r{i}")
        assert r.status == 200 and r.body == b"a"
    assert b.traffic() == []


async def test_all_nodes_unhealthy_still_get_traffic(servers, gateway):
    a, b = await servers("a", health_status=500), await servers("b", health_status=500)
    gw = await gateway(routes(route("1", {"nodes": {a.addr: 1, b.addr: 1}, "checks": active_checks()})))
    await wait_health(gw, a.port, "unhealthy")
    await wait_health(gw, b.port, "unhealthy")
    got = Counter()
    for i in range(10):
        r = await get(gw, f"/z{i}")
        assert r.status == 200
        got[r.body.decode()] += 1
    assert got["a"] >= 1 and got["b"] >= 1, got


async def test_health_state_shared_by_workers(servers, gateway):
    a, b = await servers("a"), await servers("b", health_status=500)
    gw = await gateway(routes(route("1", {"nodes": {a.addr: 1, b.addr: 1}, "checks": active_checks()})), workers=2)
    assert len((await control(gw, "/v1/config"))["workers"]) == 2
    await wait_health(gw, b.port, "unhealthy")
    for i in range(30):
        r = await get(gw, f"/w{i}")  # a fresh connection each time: both workers serve some
        assert r.status == 200 and r.body == b"a"
    assert b.traffic() == []
    # Each worker keeps its own pooled connection to `a`: two connections = both workers served.
    assert len(a.traffic_conns()) == 2


# ---------------------------------------------------------------------------------------------
# keep-alive pool
# ---------------------------------------------------------------------------------------------

async def test_keepalive_pool_requests_limit(servers, gateway):
    up = await servers("u")
    gw = await gateway(routes(route("1", {"nodes": {up.addr: 1}, "keepalive_pool": {"requests": 2}})))
    for i in range(6):
        r = await get(gw, f"/k{i}")
        assert r.status == 200
    assert up.connections == 3
    per_conn = Counter(getattr(r, "conn", 0) for r in up.traffic())
    assert sorted(per_conn.values()) == [2, 2, 2]


async def test_keepalive_pool_size(servers, gateway):
    arrived: list[UpstreamRequest] = []
    all_in = asyncio.Event()

    async def gather3(req: UpstreamRequest) -> Any:
        arrived.append(req)
        if len(arrived) >= 3:
            all_in.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 5)
        return 200, {}, b"ok"

    up = await servers("u", app=gather3)
    gw = await gateway(routes(route("1", {"nodes": {up.addr: 1}, "keepalive_pool": {"size": 1}})))
    rs = await asyncio.gather(*(get(gw, f"/c{i}") for i in range(3)))
    assert [r.status for r in rs] == [200] * 3
    assert up.connections == 3
    # only one idle connection is kept; the others are closed by the gateway
    await poll(lambda: len(up.open) == 1, timeout=5, what="pool to keep exactly one idle connection")
    r = await get(gw, "/reuse")
    assert r.status == 200
    assert up.connections == 3  # served by the pooled connection


async def test_keepalive_pool_idle_timeout(servers, gateway):
    up = await servers("u")
    gw = await gateway(routes(route("1", {"nodes": {up.addr: 1}, "keepalive_pool": {"idle_timeout": 0.5}})))
    r = await get(gw, "/i1")
    assert r.status == 200
    assert len(up.open) == 1  # pooled, still open right after the response
    t0 = time.monotonic()
    await poll(lambda: len(up.open) == 0, timeout=5, what="gateway to close the idle upstream connection")
    assert time.monotonic() - t0 < 3.0
    r = await get(gw, "/i2")
    assert r.status == 200
    assert up.connections == 2
