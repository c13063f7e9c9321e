"""HTTP/2 downstream through the real gateway: h2c with prior knowledge, h2 by ALPN over TLS,
the same routes and plugins as HTTP/1, and the defences of hardening.md (cases 39 and 40).

Clients: httpx (HTTP/2 via the ``h2`` library), curl, and a raw frame-level client (``h2`` with
its own checks switched off, plus hand-made frames) for what no polite client sends.  The
upstream is HTTP/1.1 (gwtools.Upstream); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import httpx
import pytest
from gwtools import Gateway, Upstream, UpstreamRequest, free_port, start_gateway
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, PingFrame
from pki import PKI, make_pki

TIMEOUT = 10.0


def routes(up: Upstream, **extra: Any) -> dict[str, Any]:
    node = {"type": "roundrobin", "nodes": {up.addr: 1}}
    return {
        "routes": [
            {"id": "auth", "uri": "/auth/*", "plugins": {"key-auth": {}}, "upstream": node},
            {"id": "all", "uri": "/*", "upstream": node},
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
        **extra,
    }


def h2_gateway(tmp: Path, up: Upstream, *, node: dict[str, Any] | None = None, **extra: Any) -> Gateway:
    return start_gateway(tmp / "gw", routes(up, **extra), node=node)


class Tracking:
    """An upstream handler that answers after ``delay`` and records how many requests it held at once."""

    def __init__(self, delay: float = 0.0, size: int = 0) -> None:
        self.delay = delay
        self.size = size
        self.now = 0
        self.peak = 0

    async def handle(self, req: UpstreamRequest) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.now -= 1
        if self.size:
            return 200, {"Content-Type": "application/octet-stream"}, bytes(range(256)) * (self.size // 256)
        body = json.dumps({"method": req.method, "path": req.path, "headers": req.headers,
                           "body_len": len(req.body)}).encode()
        return 200, {"Content-Type": "application/json"}, body

    def __call__(self, req: UpstreamRequest) -> Any:
        return self.handle(req)


def up_headers(echo: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in echo["headers"]}


# --- a raw HTTP/2 client ------------------------------------------------------------------------

class Raw:
    """Frame-level client: h2's client state machine without its header checks, plus raw writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                        normalize_outbound_headers=False, validate_inbound_headers=False)
        self.c = h2.connection.H2Connection(config=cfg)
        self.events: list[Any] = []
        self.closed = False
        self.bodies: dict[int, bytes] = {}
        self.status: dict[int, int] = {}
        self.resets: dict[int, int] = {}
        self.ended: set[int] = set()
        self.goaway: Any = None          # the GOAWAY frame received (hyperframe GoAwayFrame)
        self.inbuf = b""
        self.settings: dict[int, int] = {}

    @classmethod
    async def open(cls, port: int) -> Raw:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(r, w)
        raw.c.initiate_connection()
        raw.flush()
        return raw

    def flush(self) -> None:
        data = self.c.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def request(self, sid: int, headers: list[tuple[bytes, bytes]], *, end: bool = True) -> None:
        self.c.send_headers(sid, headers, end_stream=end)
        self.flush()

    def get(self, sid: int, path: bytes = b"/", *extra: tuple[bytes, bytes], authority: bytes = b"t.test") -> None:
        self.request(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path),
                           (b":authority", authority), *extra])

    async def pump(self, until: Any, timeout: float = TIMEOUT) -> bool:
        """Read until ``until()`` is true or the connection closes; False on timeout."""
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed:
                return bool(until())
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except (asyncio.TimeoutError, ConnectionError):
                if isinstance(asyncio.current_task(), asyncio.Task) and time.monotonic() >= deadline:
                    return False
                self.closed = True
                continue
            if not data:
                self.closed = True
                continue
            try:
                evs = self.c.receive_data(self._frames(data))
            except h2.exceptions.ProtocolError:
                self.closed = True
                continue
            for ev in evs:
                self.events.append(ev)
                if isinstance(ev, h2.events.ResponseReceived):
                    self.status[ev.stream_id] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    self.bodies[ev.stream_id] = self.bodies.get(ev.stream_id, b"") + ev.data
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended.add(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    self.resets[ev.stream_id] = ev.error_code
                elif isinstance(ev, h2.events.RemoteSettingsChanged):
                    self.settings.update({int(k): v.new_value for k, v in ev.changed_settings.items()})
            self.flush()
        return True

    def _frames(self, data: bytes) -> bytes:
        """Whole frames for h2, GOAWAY taken out and kept (h2's client stops reading at a GOAWAY,
        while the streams it names may still complete)."""
        buf = self.inbuf + data
        out = []
        while len(buf) >= 9:
            size = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + size:
                break
            frame, buf = buf[:9 + size], buf[9 + size:]
            if frame[3] == 7:
                f, length = Frame.parse_frame_header(memoryview(frame[:9]))
                f.parse_body(memoryview(frame[9:]))
                self.goaway = f
            else:
                out.append(frame)
        self.inbuf = buf
        return b"".join(out)

    def close(self) -> None:
        self.writer.close()


def worker_pids(gw: Gateway) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(gw.proc.pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def h1_ok(gw: Gateway) -> None:
    """Another client on another connection is served meanwhile."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as c:
        r = await c.get(f"http://127.0.0.1:{gw.port}/other", headers={"Host": "t.test"})
    assert r.status_code == 200, r.text


# --- h2c with prior knowledge -------------------------------------------------------------------

async def test_h2c_prior_knowledge_serves_20_concurrent_streams_on_one_connection(tmp_path: Path) -> None:
    handler = Tracking(delay=0.3)
    up = await Upstream(handler=handler).start()
    gw = h2_gateway(tmp_path, up)
    try:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT,
                                     limits=httpx.Limits(max_connections=1)) as c:
            rs = await asyncio.gather(*(c.get(f"http://127.0.0.1:{gw.port}/s/{i}?q={i}",
                                              headers={"Host": "t.test", "X-Id": str(i)}) for i in range(20)))
        for i, r in enumerate(rs):
            assert r.status_code == 200 and r.http_version == "HTTP/2"
            echo = r.json()
            assert echo["path"] == f"/s/{i}?q={i}"
            h = up_headers(echo)
            assert h["host"] == "t.test" and h["x-id"] == str(i)
            assert h["x-forwarded-proto"] == "http" and h["x-real-ip"] == "127.0.0.1"
            assert r.headers["server"].startswith("APISIX")
        # one TCP connection from the client; the streams were in flight together upstream
        assert handler.peak >= 10, handler.peak
        assert len(up.requests) == 20
        # curl's h2c with prior knowledge too
        out = await asyncio.to_thread(subprocess.run, ["curl", "-sS", "-i", "--max-time", "10",
                                                        "--http2-prior-knowledge", "-H", "Host: t.test",
                                                        f"http://127.0.0.1:{gw.port}/curl"],
                                      capture_output=True, text=True, timeout=20)
        assert out.stdout.startswith("HTTP/2 200"), out.stdout + out.stderr
        # HTTP/1.1 on the same port is unchanged
        await h1_ok(gw)
        assert "HTTP/2.0\" 200" in gw.log()          # the access log names the protocol
    finally:
        gw.stop()
        await up.close()


async def test_h2_answers_like_http1_route_miss_and_plugins(tmp_path: Path, echo_up: Upstream) -> None:
    gw = start_gateway(tmp_path / "gw", {"routes": [
        {"id": "auth", "uri": "/auth/*", "plugins": {"key-auth": {}},
         "upstream": {"type": "roundrobin", "nodes": {echo_up.addr: 1}}}],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]})
    try:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT) as c:
            base = f"http://127.0.0.1:{gw.port}"
            r = await c.get(f"{base}/nope", headers={"Host": "t.test"})
            assert r.status_code == 404 and r.http_version == "HTTP/2"
            assert r.content == b'{"error_msg":"404 Route Not Found"}\n'
            assert r.headers["content-length"] == str(len(r.content))
            async with httpx.AsyncClient(timeout=TIMEOUT) as c1:
                r1 = await c1.get(f"{base}/nope", headers={"Host": "t.test"})
            assert r1.http_version == "HTTP/1.1" and r1.content == r.content
            assert r1.headers["content-type"] == r.headers["content-type"]
            r = await c.get(f"{base}/auth/x", headers={"Host": "t.test"})
            assert r.status_code == 401 and r.content == b'{"message":"Missing API key in request"}\n'
            r = await c.get(f"{base}/auth/x", headers={"Host": "t.test", "apikey": "jack-key"})
            assert r.status_code == 200
            h = up_headers(r.json())
            assert h["x-consumer-username"] == "jack"
            r = await c.head(f"{base}/auth/x", headers={"Host": "t.test", "apikey": "jack-key"})
            assert r.status_code == 200 and r.content == b""
    finally:
        gw.stop()


async def test_h2_request_and_response_bodies_with_flow_control(tmp_path: Path) -> None:
    big = 1 << 20
    up = await Upstream().start()
    down = await Upstream(handler=Tracking(size=big)).start()
    gw = start_gateway(tmp_path / "gw", {"routes": [
        {"id": "up", "uri": "/up/*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
        {"id": "down", "uri": "/down", "upstream": {"type": "roundrobin", "nodes": {down.addr: 1}}}]})
    try:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT) as c:
            base = f"http://127.0.0.1:{gw.port}"
            payload = os.urandom(big)
            r = await c.post(f"{base}/up/known", content=payload, headers={"Host": "t.test"})
            assert r.status_code == 200 and r.json()["body_len"] == big
            assert up.requests[-1].body == payload
            assert up.requests[-1].header("content-length") == str(big)

            async def stream() -> Any:
                for i in range(16):
                    yield payload[i * 65536:(i + 1) * 65536]
            r = await c.post(f"{base}/up/unknown", content=stream(), headers={"Host": "t.test"})
            assert r.status_code == 200 and r.json()["body_len"] == big
            # no length known: chunked to the HTTP/1.1 upstream, the body intact
            assert up.requests[-1].header("transfer-encoding") == "chunked"
            assert up.requests[-1].body == payload
            # 1 MiB down: 16 times the stream window, so WINDOW_UPDATEs drive it
            r = await c.get(f"{base}/down", headers={"Host": "t.test"})
            assert r.status_code == 200 and r.content == bytes(range(256)) * (big // 256)
    finally:
        gw.stop()
        await up.close()
        await down.close()


async def test_h2_settings_limit_streams_windows_and_header_list(tmp_path: Path, echo_up: Upstream) -> None:
    gw = h2_gateway(tmp_path, echo_up)
    try:
        raw = await Raw.open(gw.port)
        raw.get(1)
        assert await raw.pump(lambda: 1 in raw.ended)
        S = h2.settings.SettingCodes
        assert raw.settings[S.MAX_CONCURRENT_STREAMS] == 100
        assert raw.settings[S.INITIAL_WINDOW_SIZE] == 65535
        assert raw.settings[S.MAX_HEADER_LIST_SIZE] == 60 * 1024
        assert raw.status[1] == 200
        raw.close()
    finally:
        gw.stop()


# --- h2 over TLS ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), {"a": ("a.test",)})


def tls_gateway(tmp: Path, pki: PKI, up: Upstream, *, http2: bool = True) -> tuple[Gateway, int]:
    tls_port = free_port()
    node = {"apisix": {"enable_http2": http2,
                       "ssl": {"enable": True, "listen": [{"ip": "127.0.0.1", "port": tls_port}]}}}
    doc = {"routes": [{"id": "1", "uri": "/*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}],
           "ssls": [{"id": "a", "sni": "a.test", **pki.pair("a")}]}
    return start_gateway(tmp / "gw", doc, node=node), tls_port


async def test_h2_by_alpn_over_tls_and_http1_alongside(tmp_path: Path, pki: PKI) -> None:
    handler = Tracking(delay=0.3)
    up = await Upstream(handler=handler).start()
    gw, port = tls_gateway(tmp_path, pki, up)
    try:
        ctx = ssl.create_default_context(cafile=pki.path("ca.crt"))
        async with httpx.AsyncClient(http2=True, verify=ctx, timeout=TIMEOUT,
                                     limits=httpx.Limits(max_connections=1)) as c:
            rs = await asyncio.gather(*(c.get(f"https://127.0.0.1:{port}/tls/{i}", headers={"Host": "a.test"},
                                              extensions={"sni_hostname": "a.test"}) for i in range(20)))
        assert all(r.status_code == 200 and r.http_version == "HTTP/2" for r in rs)
        assert [r.json()["path"] for r in rs] == [f"/tls/{i}" for i in range(20)]
        assert up_headers(rs[0].json())["x-forwarded-proto"] == "https"
        assert handler.peak >= 10
        out = await asyncio.to_thread(subprocess.run, [
            "curl", "-sS", "-i", "--max-time", "10", "--http2", "--cacert", pki.path("ca.crt"),
            "--resolve", f"a.test:{port}:127.0.0.1", f"https://a.test:{port}/curl"],
            capture_output=True, text=True, timeout=20)
        assert out.stdout.startswith("HTTP/2 200"), out.stdout + out.stderr
        # a client that offers only http/1.1 gets HTTP/1.1 on the same listener
        out = await asyncio.to_thread(subprocess.run, [
            "curl", "-sS", "-i", "--max-time", "10", "--http1.1", "--cacert", pki.path("ca.crt"),
            "--resolve", f"a.test:{port}:127.0.0.1", f"https://a.test:{port}/curl"],
            capture_output=True, text=True, timeout=20)
        assert out.stdout.startswith("HTTP/1.1 200"), out.stdout + out.stderr
    finally:
        gw.stop()
        await up.close()


async def test_enable_http2_false_offers_only_http1(tmp_path: Path, pki: PKI, echo_up: Upstream) -> None:
    gw, port = tls_gateway(tmp_path, pki, echo_up, http2=False)
    try:
        ctx = ssl.create_default_context(cafile=pki.path("ca.crt"))
        async with httpx.AsyncClient(http2=True, verify=ctx, timeout=TIMEOUT) as c:
            r = await c.get(f"https://127.0.0.1:{port}/x", headers={"Host": "a.test"},
                            extensions={"sni_hostname": "a.test"})
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
        # the h2c preface on the plaintext port is an HTTP/1 request the codec refuses
        raw = await Raw.open(gw.port)
        raw.get(1)
        await raw.pump(lambda: False, timeout=2)
        assert raw.closed and 1 not in raw.status
        assert not any(r.path == "/" for r in echo_up.requests)
    finally:
        gw.stop()


# --- malformed requests (hardening case 39) ---------------------------------------------------------

BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/m"), (b":authority", b"t.test")]

MALFORMED = {
    "transfer-encoding": BASE + [(b"transfer-encoding", b"chunked")],
    "crlf-in-value": BASE + [(b"x-a", b"1\r\nx-injected: 1")],
    "nul-in-value": BASE + [(b"x-a", b"1\x00")],
    "upper-case-name": BASE + [(b"X-Upper", b"1")],
    "duplicate-path": BASE + [(b":path", b"/other")],
    "pseudo-after-regular": BASE[:3] + [(b"x-a", b"1"), (b":authority", b"t.test")],
    "connection-header": BASE + [(b"connection", b"keep-alive")],
    "upgrade-h2c": BASE + [(b"upgrade", b"h2c")],
    "te-gzip": BASE + [(b"te", b"gzip")],
    "unknown-pseudo": BASE + [(b":protocol", b"websocket")],
    "space-around-value": BASE + [(b"x-a", b" admin")],
    "missing-path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t.test")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_request_is_a_stream_error_and_never_reaches_the_upstream(
        tmp_path: Path, case: str) -> None:
    up = await Upstream().start()
    gw = h2_gateway(tmp_path, up)
    try:
        raw = await Raw.open(gw.port)
        raw.request(1, MALFORMED[case])
        raw.get(3, b"/after")
        assert await raw.pump(lambda: 3 in raw.ended and 1 in raw.resets)
        assert raw.resets[1] == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert raw.status[3] == 200 and raw.goaway is None     # the connection goes on
        assert [r.path for r in up.requests] == ["/after"]
        raw.close()
    finally:
        gw.stop()
        await up.close()


async def test_authority_and_host_that_differ_answer_400(tmp_path: Path, echo_up: Upstream) -> None:
    gw = h2_gateway(tmp_path, echo_up)
    try:
        raw = await Raw.open(gw.port)
        raw.request(1, BASE + [(b"host", b"admin.internal")])
        raw.request(3, BASE + [(b"host", b"t.test")])
        assert await raw.pump(lambda: {1, 3} <= raw.ended)
        assert raw.status[1] == 400 and raw.status[3] == 200
        assert [r.header("host") for r in echo_up.requests] == ["t.test"]
    finally:
        gw.stop()


async def test_goaway_reaches_a_slow_reader_that_keeps_sending(tmp_path: Path) -> None:
    """A connection error while the gateway still has response bytes queued for a client that
    is not reading, and the client still sends: the GOAWAY arrives after the queued bytes (the
    error ends stream 1 too, so not all of its body).
    (Closing a socket with unread bytes makes the kernel reset the connection and drop what
    was queued; the gateway half-closes instead and drops what the client sends.)"""
    big = 8 << 20
    down = await Upstream(handler=Tracking(size=big)).start()
    gw = start_gateway(tmp_path / "gw", {"routes": [
        {"id": "down", "uri": "/*", "upstream": {"type": "roundrobin", "nodes": {down.addr: 1}}}]})
    try:
        raw = await Raw.open(gw.port)
        raw.c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1})
        raw.c.increment_flow_control_window((1 << 31) - 1 - 65535)
        raw.flush()
        raw.get(1, b"/down")
        await asyncio.sleep(1.0)      # the gateway queues the 8 MiB; nobody reads them yet
        raw.request(3, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/cl"),
                        (b":authority", b"t.test"), (b"content-length", b"5")], end=False)
        raw.c.send_data(3, b"x" * 50, end_stream=True)
        raw.flush()
        await asyncio.sleep(0.3)
        ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
        raw.write(ping * 64)          # the client keeps talking after the error
        await asyncio.sleep(0.3)
        await raw.pump(lambda: raw.goaway is not None, timeout=20)
        assert raw.goaway is not None and raw.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert raw.bodies.get(1)       # what was queued before the error came first
    finally:
        gw.stop()


async def test_content_length_disagreeing_with_data_closes_without_a_complete_upstream_request(
        tmp_path: Path) -> None:
    up = await Upstream().start()
    gw = h2_gateway(tmp_path, up)
    try:
        raw = await Raw.open(gw.port)
        raw.request(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/cl"),
                        (b":authority", b"t.test"), (b"content-length", b"5")], end=False)
        raw.c.send_data(1, b"x" * 50, end_stream=True)   # (the client library does not check)
        raw.flush()
        await raw.pump(lambda: raw.goaway is not None or 1 in raw.resets)
        assert raw.goaway is not None and raw.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        await asyncio.sleep(0.3)
        assert up.requests == []
        await h1_ok(gw)
    finally:
        gw.stop()
        await up.close()


# --- floods (hardening case 40) -------------------------------------------------------------------

async def test_rapid_reset_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    up = await Upstream(handler=Tracking(delay=5.0)).start()
    gw = h2_gateway(tmp_path, up)
    try:
        raw = await Raw.open(gw.port)
        sent = 0
        for batch in range(50):                           # at most 10,000 HEADERS + RST_STREAM
            for _ in range(200):
                sid = raw.c.get_next_available_stream_id()
                raw.c.send_headers(sid, BASE, end_stream=True)
                raw.c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                sent += 1
            raw.flush()
            await raw.pump(lambda: raw.goaway is not None, timeout=0.05)
            if raw.goaway is not None or raw.closed:
                break
        assert await raw.pump(lambda: raw.goaway is not None)
        assert raw.goaway is not None and raw.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert sent <= 2000, sent        # cut off early, not after the whole flood
        await h1_ok(gw)
    finally:
        gw.stop()
        await up.close()


async def test_continuation_flood_closes_the_connection(tmp_path: Path, echo_up: Upstream) -> None:
    gw = h2_gateway(tmp_path, echo_up)
    try:
        raw = await Raw.open(gw.port)
        # a header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
        # (the block is never decoded, so its bytes need not be valid HPACK past the start)
        raw.write(HeadersFrame(1, data=hpack.Encoder().encode(BASE), flags=["END_STREAM"]).serialize())
        frames = 0
        for i in range(1, 1000):                          # 1,000 CONTINUATION frames at most
            raw.write(ContinuationFrame(1, data=b"\x40" * 1000).serialize())
            frames += 1
            if i % 50 == 0:
                try:
                    await raw.writer.drain()
                except ConnectionError:
                    raw.closed = True     # the gateway closed it: what is expected
                    break
                if await raw.pump(lambda: raw.closed, timeout=0.05):
                    break
        assert await raw.pump(lambda: raw.closed)
        assert frames < 1000
        assert not any(r.path == "/m" for r in echo_up.requests)
        await h1_ok(gw)
    finally:
        gw.stop()


async def test_hpack_bomb_is_refused(tmp_path: Path, echo_up: Upstream) -> None:
    gw = h2_gateway(tmp_path, echo_up)
    try:
        raw = await Raw.open(gw.port)
        # 4 KiB in the dynamic table, then referenced 40 times: ~160 KiB decoded from ~4 KiB sent
        enc = hpack.Encoder()
        block = enc.encode(BASE + [(b"x-big", b"b" * 4000)] * 40)
        assert len(block) < 5000
        raw.write(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        assert await raw.pump(lambda: raw.closed or raw.goaway is not None)
        assert raw.goaway is not None and raw.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert echo_up.requests == []
        await h1_ok(gw)
    finally:
        gw.stop()


async def test_oversized_hpack_tables_are_refused_or_ignored(tmp_path: Path, echo_up: Upstream) -> None:
    gw = h2_gateway(tmp_path, echo_up)
    try:
        # the client allows a 1 GiB table for our answers: ours stays at 4 KiB
        raw = await Raw.open(gw.port)
        raw.c.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 1 << 30})
        raw.flush()
        for i in range(5):
            raw.get(2 * i + 1, b"/t%d" % i)
        assert await raw.pump(lambda: {1, 3, 5, 7, 9} <= raw.ended)
        assert all(raw.status[s] == 200 for s in (1, 3, 5, 7, 9))
        assert raw.c.decoder.header_table.maxsize <= 4096
        raw.close()
        # a header block growing our decoder's table past the 4 KiB we allow: a connection error
        raw = await Raw.open(gw.port)
        from hpack.hpack import encode_integer
        grow = encode_integer(1 << 20, 5)
        grow[0] |= 0x20                                   # dynamic table size update to 1 MiB
        block = bytes(grow) + hpack.Encoder().encode(BASE)
        raw.write(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        assert await raw.pump(lambda: raw.closed or raw.goaway is not None)
        assert raw.goaway is not None and raw.goaway.error_code in (h2.errors.ErrorCodes.COMPRESSION_ERROR,
                                                                    h2.errors.ErrorCodes.PROTOCOL_ERROR)
        assert not any(r.path == "/m" for r in echo_up.requests)
        await h1_ok(gw)
    finally:
        gw.stop()


async def test_ping_flood_gets_goaway(tmp_path: Path, echo_up: Upstream) -> None:
    gw = h2_gateway(tmp_path, echo_up)
    try:
        raw = await Raw.open(gw.port)
        sent = 0
        ping = PingFrame(0, opaque_data=b"12345678").serialize()
        for _ in range(100):                              # at most 100,000 PINGs
            raw.write(ping * 1000)
            sent += 1000
            try:
                await asyncio.wait_for(raw.writer.drain(), 2)
            except (ConnectionError, asyncio.TimeoutError):
                break
            if await raw.pump(lambda: raw.goaway is not None or raw.closed, timeout=0.02):
                break
        assert await raw.pump(lambda: raw.goaway is not None or raw.closed)
        assert raw.goaway is not None and raw.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert sent <= 5000
        await h1_ok(gw)
    finally:
        gw.stop()


async def test_streams_beyond_the_limit_close_the_connection_with_bounded_memory(tmp_path: Path) -> None:
    up = await Upstream(handler=Tracking(delay=3.0)).start()
    gw = h2_gateway(tmp_path, up)
    try:
        (pid,) = worker_pids(gw)
        before = rss_kib(pid)
        raw = await Raw.open(gw.port)
        # sent before our SETTINGS could be read: the client library does not stop at 100
        for _ in range(101):
            raw.c.send_headers(raw.c.get_next_available_stream_id(), BASE + [(b"x-pad", b"p" * 200)],
                               end_stream=True)
        raw.flush()
        assert await raw.pump(lambda: raw.goaway is not None or raw.closed)
        assert raw.goaway is not None and raw.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        await h1_ok(gw)
        assert rss_kib(pid) - before < 32 * 1024          # < 32 MiB for 100 streams
    finally:
        gw.stop()
        await up.close()


async def test_drain_sends_goaway_and_finishes_the_stream_in_flight(tmp_path: Path) -> None:
    up = await Upstream(handler=Tracking(delay=1.0)).start()
    gw = h2_gateway(tmp_path, up)
    try:
        raw = await Raw.open(gw.port)
        raw.get(1, b"/slow")
        await raw.pump(lambda: False, timeout=0.3)       # the request reached the slow upstream
        gw.proc.send_signal(signal.SIGTERM)
        assert await raw.pump(lambda: 1 in raw.ended and raw.goaway is not None)
        assert raw.status[1] == 200 and json.loads(raw.bodies[1])["path"] == "/slow"
        assert raw.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR and raw.goaway.last_stream_id == 1
        assert await raw.pump(lambda: raw.closed)
    finally:
        gw.stop()
        await up.close()
