"""The Bookinfo-like demo services over real loopback sockets.

Responses are read with a raw client written here (not the demo's own client), so framing
(Content-Length, keep-alive, Connection: close) is checked independently.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from meshgate.demo import SERVICE_NAMES, DemoServices, http_request, start_demo_services
from meshgate.demo.server import DemoRequest, DemoResponse, json_response, start_server
from meshgate.errors import UpstreamError

pytestmark = pytest.mark.timeout(60)

IO_TIMEOUT = 5.0


def free_base_port(count: int = len(SERVICE_NAMES)) -> int:
    """A base port with ``count`` consecutive free ports on 127.0.0.1 (best effort)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        socks: list[socket.socket] = []
        try:
            for i in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range found")


async def start_services(**kw: Any) -> DemoServices:
    last: OSError | None = None
    for _ in range(10):  # another process may grab a port between probe and bind
        try:
            return await start_demo_services(base_port=free_base_port(), **kw)
        except OSError as e:
            last = e
    raise AssertionError(f"could not start demo services: {last}")


@pytest.fixture
async def services() -> AsyncIterator[DemoServices]:
    svc = await start_services()
    try:
        yield svc
    finally:
        await svc.close()


# --- raw HTTP/1.1 client -----------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Resp:
    async with asyncio.timeout(IO_TIMEOUT):
        raw_head = await reader.readuntil(b"\r\n\r\n")
        lines = raw_head[:-4].split(b"\r\n")
        version, status, _ = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.decode().lower()
            assert key not in headers, f"duplicate header {key}"
            headers[key] = value.strip(b" \t").decode()
        assert "transfer-encoding" not in headers
        length = int(headers["content-length"])
        body = b"" if head else await reader.readexactly(length)
        return Resp(int(status), headers, body)


async def raw_get(port: int, path: str, *, host: str = "demo", extra: str = "") -> Resp:
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()


async def assert_closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(IO_TIMEOUT):
        assert await reader.read() == b""


def assert_who(resp: Resp, service: str, version: str = "v1") -> None:
    assert resp.headers["x-demo-service"] == service
    assert resp.headers["x-demo-version"] == version


# --- each service ----------------------------------------------------------------------


async def test_ports_are_consecutive_and_urls_match(services: DemoServices) -> None:
    ports = [services.ports[n] for n in SERVICE_NAMES]
    assert ports == list(range(ports[0], ports[0] + len(SERVICE_NAMES)))
    for name in SERVICE_NAMES:
        assert services.urls[name] == f"http://127.0.0.1:{services.ports[name]}"


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_health_everywhere(services: DemoServices, name: str) -> None:
    resp = await raw_get(services.ports[name], "/health")
    assert resp.status == 200
    assert resp.json() == {"status": "ok"}
    service = "reviews" if name.startswith("reviews") else name
    assert_who(resp, service, name[-2:] if name.startswith("reviews") else "v1")


async def test_details(services: DemoServices) -> None:
    resp = await raw_get(services.ports["details"], "/details/0")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert_who(resp, "details")
    body = resp.json()
    assert body["id"] == 0
    assert body["author"] == "William Shakespeare"
    assert {"year", "type", "pages", "publisher", "language", "ISBN-10", "ISBN-13"} <= set(body)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/details/99", 404), ("/details/abc", 400), ("/details/+1", 400), ("/details/", 400), ("/nope", 404)],
)
async def test_details_errors(services: DemoServices, path: str, status: int) -> None:
    resp = await raw_get(services.ports["details"], path)
    assert resp.status == status
    assert "error" in resp.json()


async def test_ratings(services: DemoServices) -> None:
    resp = await raw_get(services.ports["ratings"], "/ratings/0")
    assert resp.status == 200
    assert_who(resp, "ratings")
    assert resp.json() == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}


async def test_reviews_v1_has_no_ratings(services: DemoServices) -> None:
    resp = await raw_get(services.ports["reviews-v1"], "/reviews/0")
    assert resp.status == 200
    assert_who(resp, "reviews", "v1")
    body = resp.json()
    assert body["id"] == 0 and body["version"] == "v1"
    assert [r["reviewer"] for r in body["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert all("rating" not in r for r in body["reviews"])


@pytest.mark.parametrize(("name", "color"), [("reviews-v2", "black"), ("reviews-v3", "red")])
async def test_reviews_with_stars(services: DemoServices, name: str, color: str) -> None:
    resp = await raw_get(services.ports[name], "/reviews/0")
    assert resp.status == 200
    assert_who(resp, "reviews", name[-2:])
    ratings = {r["reviewer"]: r["rating"] for r in resp.json()["reviews"]}
    assert ratings == {"Reviewer1": {"stars": 5, "color": color}, "Reviewer2": {"stars": 4, "color": color}}


async def test_productpage_composes_details_and_reviews(services: DemoServices) -> None:
    seen_versions = set()
    for _ in range(3):  # direct mode: reviews round-robin over v1, v2, v3
        resp = await raw_get(services.ports["productpage"], "/productpage")
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/html")
        assert_who(resp, "productpage")
        page = resp.body.decode()
        assert "The Comedy of Errors" in page
        assert "William Shakespeare" in page and "1234567890" in page  # from details
        assert "Reviewer1" in page and "A fast, silly" in page  # from reviews
        for v in ("v1", "v2", "v3"):
            if f"reviews-{v}" in page:
                seen_versions.add(v)
        if "reviews-v2" in page:
            assert "stars-black" in page and "★★★★★" in page
        if "reviews-v3" in page:
            assert "stars-red" in page
    assert seen_versions == {"v1", "v2", "v3"}


async def test_productpage_api(services: DemoServices) -> None:
    port = services.ports["productpage"]
    products = (await raw_get(port, "/api/v1/products")).json()
    assert isinstance(products, list) and products[0]["id"] == 0
    assert {"id", "title", "descriptionHtml"} <= set(products[0])

    one = await raw_get(port, "/api/v1/products/0")
    assert one.status == 200
    body = one.json()
    assert body["title"] == "The Comedy of Errors"
    assert body["details"]["author"] == "William Shakespeare"

    reviews = await raw_get(port, "/api/v1/products/0/reviews")
    assert reviews.status == 200 and reviews.json()["id"] == 0
    assert reviews.headers["x-backend-demo-service"] == "reviews"

    ratings = await raw_get(port, "/api/v1/products/0/ratings")
    assert ratings.json() == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}

    assert (await raw_get(port, "/api/v1/products/42")).status == 404
    assert (await raw_get(port, "/api/v1/products/x")).status == 400
    css = await raw_get(port, "/static/style.css")
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")
    assert (await raw_get(port, "/static/nope.js")).status == 404


async def test_paths_are_normalised_like_the_gateway(services: DemoServices) -> None:
    port = services.ports["details"]
    assert (await raw_get(port, "/x/../details/%30")).json()["id"] == 0
    assert (await raw_get(port, "//details//0")).json()["id"] == 0
    assert (await raw_get(port, "/details%2f0")).status == 400  # escaped slash policy


# --- HTTP/1.1 behaviour ----------------------------------------------------------------


async def test_keep_alive_and_pipelining(services: DemoServices) -> None:
    port = services.ports["ratings"]
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /ratings/0 HTTP/1.1\r\nHost: a\r\n\r\n")
            first = await read_response(reader)
            assert first.status == 200 and "connection" not in first.headers
            # two pipelined requests in one write, answered in order
            writer.write(b"GET /ratings/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            second, third = await read_response(reader), await read_response(reader)
            assert second.json()["id"] == 1
            assert third.json() == {"status": "ok"}
            writer.write(b"HEAD /ratings/0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            head = await read_response(reader, head=True)
            assert head.status == 200 and int(head.headers["content-length"]) == len(first.body)
            assert head.headers["connection"] == "close"
            await assert_closed(reader)
        finally:
            writer.close()


async def test_http10_closes_unless_keep_alive(services: DemoServices) -> None:
    port = services.ports["details"]
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = await read_response(reader)
            assert resp.headers["connection"] == "keep-alive"
            writer.write(b"GET /health HTTP/1.0\r\n\r\n")
            resp = await read_response(reader)
            assert resp.headers["connection"] == "close"
            await assert_closed(reader)
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
        (b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
async def test_bad_requests_get_400_and_close(services: DemoServices, raw: bytes, status: int) -> None:
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", services.ports["details"])
        try:
            writer.write(raw)
            resp = await read_response(reader)
            assert resp.status == status
            assert_who(resp, "details")
            if b"#" not in raw and b"%zz" not in raw and b"*" not in raw:
                # framing errors: close, never resync
                assert resp.headers["connection"] == "close"
                await assert_closed(reader)
        finally:
            writer.close()


async def test_post_is_405(services: DemoServices) -> None:
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", services.ports["details"])
        try:
            writer.write(b"POST /details/0 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
            resp = await read_response(reader)
            assert resp.status == 405 and resp.headers["allow"] == "GET, HEAD"
            writer.write(b"GET /details/0 HTTP/1.1\r\nHost: a\r\n\r\n")  # body consumed: stream in sync
            assert (await read_response(reader)).status == 200
        finally:
            writer.close()


async def test_idle_connection_is_closed() -> None:
    async def handler(req: DemoRequest) -> DemoResponse:
        return json_response({"ok": True})

    srv = await start_server(handler, host="127.0.0.1", port=0, service="t", idle_timeout=0.2)
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response(reader)).status == 200
            await assert_closed(reader)  # closed by the idle deadline, well before IO_TIMEOUT
            writer.close()
            # a trickling client is cut off by the same deadline
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET / HTTP/1.1\r\nHo")
            await assert_closed(reader)
            writer.close()
    finally:
        await srv.close()


async def test_handler_exception_is_500_and_connection_survives() -> None:
    async def handler(req: DemoRequest) -> DemoResponse:
        if req.path == "/boom":
            raise RuntimeError("secret detail")
        return json_response({"ok": True})

    srv = await start_server(handler, host="127.0.0.1", port=0, service="t")
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            boom = await read_response(reader)
            assert boom.status == 500 and b"secret" not in boom.body
            assert (await read_response(reader)).status == 200
            writer.close()
    finally:
        await srv.close()


async def test_close_with_idle_keepalive_connection() -> None:
    svc = await start_services()
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.ports["details"])
        writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
        await svc.close()  # must not hang on the idle keep-alive connection
        await assert_closed(reader)
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", svc.ports["details"])


async def test_port_in_use_is_oserror_and_nothing_leaks() -> None:
    base = free_base_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", base + 2))  # ratings' port
    blocker.listen()
    try:
        with pytest.raises(OSError):
            await start_demo_services(base_port=base)
        # the services started before the failure were closed again
        for i in (0, 1):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", base + i))
            finally:
                s.close()
    finally:
        blocker.close()


# --- through a "gateway" ----------------------------------------------------------------


class FakeGateway:
    """Routes by path prefix to the demo services and records the Host of each call."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self.urls = urls
        self.hosts: list[tuple[str, str]] = []
        self.down: set[str] = set()
        self._rr = 0

    async def __call__(self, req: DemoRequest) -> DemoResponse:
        self.hosts.append((req.headers.get("host", ""), req.path))
        prefix = req.path.split("/")[1]
        if prefix in self.down:
            return json_response({"error": "down"}, 503)
        if prefix == "reviews":
            self._rr += 1
            name = f"reviews-v{self._rr % 3 + 1}"
        elif prefix in ("details", "ratings"):
            name = prefix
        else:
            return json_response({"error_msg": "404 Route Not Found"}, 404)
        r = await http_request(self.urls[name] + req.target.upstream_path)
        return DemoResponse(r.status, r.body, r.headers.get("content-type", ""))


async def test_calls_go_through_the_gateway_with_its_host() -> None:
    gateway = FakeGateway({})
    gw_srv = await start_server(gateway, host="127.0.0.1", port=0, service="gw")
    svc = await start_services(gateway_url=f"http://127.0.0.1:{gw_srv.port}/", gateway_host="bookinfo.test")
    gateway.urls = svc.urls
    try:
        for _ in range(3):
            resp = await raw_get(svc.ports["productpage"], "/productpage")
            assert resp.status == 200 and "William Shakespeare" in resp.body.decode()
        hosts = {h for h, _ in gateway.hosts}
        paths = {p for _, p in gateway.hosts}
        assert hosts == {"bookinfo.test"}
        assert {"/details/0", "/reviews/0", "/ratings/0"} <= paths  # ratings via reviews v2/v3

        # ratings down: v2/v3 still answer, with an error instead of stars
        gateway.down.add("ratings")
        body = (await raw_get(svc.ports["reviews-v2"], "/reviews/0")).json()
        assert all(r["rating"] == {"error": "Ratings service is currently unavailable"} for r in body["reviews"])

        # details down: the page still renders, with an apology
        gateway.down.add("details")
        page = (await raw_get(svc.ports["productpage"], "/productpage")).body.decode()
        assert "product details are currently unavailable" in page and "Reviewer1" in page
        api = (await raw_get(svc.ports["productpage"], "/api/v1/products/0")).json()
        assert "error" in api["details"]
    finally:
        await svc.close()
        await gw_srv.close()


async def test_gateway_unreachable_degrades_gracefully() -> None:
    base = free_base_port(1)  # nothing listens there
    svc = await start_services(gateway_url=f"http://127.0.0.1:{base}")
    try:
        resp = await raw_get(svc.ports["productpage"], "/productpage")
        assert resp.status == 200
        page = resp.body.decode()
        assert "details are currently unavailable" in page and "reviews are currently unavailable" in page
        assert (await raw_get(svc.ports["productpage"], "/api/v1/products/0/reviews")).status == 503
    finally:
        await svc.close()


# --- the demo client ---------------------------------------------------------------------


async def test_demo_client(services: DemoServices) -> None:
    r = await http_request(services.urls["ratings"] + "/ratings/0", headers={"x-request-id": "abc"})
    assert r.status == 200 and r.json()["ratings"]["Reviewer1"] == 5
    assert r.headers["x-demo-service"] == "ratings"
    with pytest.raises(UpstreamError):
        await http_request(f"http://127.0.0.1:{free_base_port(1)}/", timeout=2.0)
    with pytest.raises(ValueError):
        await http_request("https://127.0.0.1/")


async def test_demo_client_handles_chunked_and_close_delimited_bodies() -> None:
    tasks: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/chunked" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        elif b"/close" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof")
        elif b"/short" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        else:
            pass  # hang: the client's timeout must fire
        await writer.drain()
        if b"/hang" not in head:
            writer.close()
        else:
            await asyncio.sleep(IO_TIMEOUT)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await http_request(f"http://127.0.0.1:{port}/chunked")).body == b"abcde"
        assert (await http_request(f"http://127.0.0.1:{port}/close")).body == b"until-eof"
        with pytest.raises(UpstreamError):
            await http_request(f"http://127.0.0.1:{port}/short")
        with pytest.raises(UpstreamError):  # UpstreamTimeout
            await http_request(f"http://127.0.0.1:{port}/hang", timeout=0.3)
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _listener_that_drops_syns() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full (backlog 0, one connection waiting): the kernel
    drops every further SYN, as it does when a SYN meets a stale socket it will not answer."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(2):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    return srv, fillers


async def test_demo_client_retries_a_handshake_on_a_fresh_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SYN left unanswered is retried on a new socket (new port) after CONNECT_ATTEMPT, not
    after the kernel's own retransmission (1 s): the listener frees its queue at 0.3 s and the
    call, bounded at 0.9 s, still gets its answer."""
    import meshgate.demo.client as client
    monkeypatch.setattr(client, "CONNECT_ATTEMPT", 0.1)
    srv, fillers = _listener_that_drops_syns()
    port = srv.getsockname()[1]
    srv.setblocking(False)
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        await asyncio.sleep(0.3)
        while True:
            conn, _ = await loop.sock_accept(srv)
            conn.setblocking(False)
            try:
                async with asyncio.timeout(0.05):
                    head = await loop.sock_recv(conn, 4096)
            except TimeoutError:
                head = b""          # one of the fillers: never sends
            if head.startswith(b"GET"):
                await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.close()

    task = asyncio.create_task(serve())
    try:
        r = await http_request(f"http://127.0.0.1:{port}/", timeout=0.9)
        assert r.status == 200 and r.body == b"ok"
    finally:
        task.cancel()
        srv.close()
        for f in fillers:
            f.close()


async def test_demo_client_timeout_says_where_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshgate.demo.client as client
    monkeypatch.setattr(client, "CONNECT_ATTEMPT", 0.2)
    srv, fillers = _listener_that_drops_syns()
    try:
        with pytest.raises(UpstreamError) as e:
            await http_request(f"http://127.0.0.1:{srv.getsockname()[1]}/x", timeout=1.0)
        msg = str(e.value)
        assert "no complete response within 1.0s (name resolved after 0.0" in msg, msg
        attempts = int(msg.split("connecting, attempt ")[1].split(";")[0])
        assert attempts >= 3, msg
        assert "timed out after 1.0" in msg, msg
    finally:
        srv.close()
        for f in fillers:
            f.close()
