"""Raw-socket bad-input suite (hardening.md sections 3, 5 and 6; "tests/raw" convention of section 8).

Every table row is: a name (``NN-...`` = hardening.md section 6 case number, ``ngx-...`` = an nginx
behaviour from section 3), the raw bytes a client sends, and the expected status.  For every
rejected row the suite proves three things a client (or the backend) can observe:

* exactly one response, carrying the expected status and ``Connection: close``;
* the gateway closed the socket (a framing error is never resynchronised: the valid request
  appended after each bad one, ``GET /smuggled``, is never answered);
* the upstreams received nothing at all (``raw_bytes == b""``).

Accepted rows check what the upstream received instead (normalised path, re-serialised framing).
One gateway per configuration is shared by the module (starting one costs about a second): ``env``
with the defaults, ``tuned`` with ``client_max_body_size 1k``, 1 s header/keep-alive timeouts and
``real_ip_from`` set so that 127.0.0.1 is an untrusted peer.  The recording upstreams are
re-created on fixed ports for every test so each test sees fresh counters; they answer with
``Connection: close`` so no pooled upstream connection survives from one case to the next.

Requests are streamed: the head goes upstream as soon as a connection is ready, before the body
has been read.  A body-phase error (bad chunk, 413 on a chunked body) sent in one write is caught
before that connection exists, so "nothing reached upstream" holds for the table; when the head
already went out, the tests check instead that no complete request ever reached the upstream and
that the upstream connection was aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import httptools
import pytest
from gwtools import Gateway, Upstream, UpstreamRequest, free_port, start_gateway

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
IO_TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

@dataclass
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.decode("latin-1").lower() == name.lower():
                return v.decode("latin-1")
        return None

    @property
    def closes(self) -> bool:
        v = self.header("connection")
        return v is not None and "close" in v.lower()


class _Responses:
    """Every response in a byte string (pipelined responses included)."""

    def __init__(self, data: bytes) -> None:
        self.out: list[Resp] = []
        self.cur: Resp | None = None
        self.p = httptools.HttpResponseParser(self)
        self.error: str | None = None
        try:
            self.p.feed_data(data)
        except httptools.HttpParserError as e:
            self.error = str(e)

    def on_message_begin(self) -> None:
        self.cur = Resp(0, [])

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.cur is not None
        self.cur.status = self.p.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.cur is not None
        self.cur.body += body

    def on_message_complete(self) -> None:
        assert self.cur is not None
        self.out.append(self.cur)


def parse_responses(data: bytes) -> list[Resp]:
    return _Responses(data).out


async def exchange(addr: tuple[str, int], data: bytes, *, until: int = 0,
                   timeout: float = IO_TIMEOUT) -> tuple[bytes, bool]:
    """Send ``data`` at once, read until the server closes, ``until`` complete responses have
    arrived (when > 0), or ``timeout``.

    Returns (bytes received, server closed).  A reset counts as closed (whatever arrived
    before it is kept).
    """
    reader, writer = await asyncio.open_connection(*addr)
    out = bytearray()
    closed = False
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass

    async def run() -> None:
        nonlocal closed
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                closed = True
                return
            if not chunk:
                closed = True
                return
            out.extend(chunk)
            if until and len(parse_responses(bytes(out))) >= until:
                return

    try:
        await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        pass
    writer.close()
    return bytes(out), closed


async def read_one(reader: asyncio.StreamReader, timeout: float = IO_TIMEOUT) -> Resp | None:
    """Read exactly one response from a keep-alive stream (None if closed first)."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        rs = parse_responses(bytes(buf)) if buf else []
        if rs:
            return rs[0]
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete response within {timeout}s: {bytes(buf)[:300]!r}")
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except ConnectionError:
            chunk = b""
        if not chunk:
            return None
        buf += chunk


def echo_close(req: UpstreamRequest) -> Any:
    """Echo, and make the gateway drop the upstream connection: no pooled connection survives a
    case, so a body-phase error can never write a head on an already-open connection."""
    return 200, {"Content-Type": "text/plain", "Connection": "close", "X-Upstream-Path": req.path}, b"ok"


def pool_route(rid: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"id": rid, **kw, "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{port}": 1}}}


def routes(pub: int, internal: int) -> dict[str, Any]:
    return {"routes": [
        # "deny" side: stands for a block rule / internal-only service
        pool_route("internal", internal, uris=["/internal", "/internal/*", "/admin*"], priority=10),
        pool_route("vhost", internal, uri="/*", host="admin.internal"),
        pool_route("allowlisted", internal, uri="/allowlisted/*", remote_addrs=["1.2.3.4"], priority=10),
        pool_route("public", pub, uri="/*"),
    ]}


@dataclass
class Env:
    gw: Gateway
    pub_port: int
    int_port: int


def _env(tmp_path_factory: pytest.TempPathFactory, name: str, http: dict[str, Any] | None) -> Any:
    pub, internal = free_port(), free_port()
    gw = start_gateway(tmp_path_factory.mktemp(name), routes(pub, internal), http=http)
    yield Env(gw, pub, internal)
    gw.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from _env(tmp_path_factory, "gw-default", None)


TUNED = {"client_max_body_size": "1k", "client_header_timeout": "1s", "keepalive_timeout": "1s",
         "real_ip_from": ["10.255.255.1"]}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from _env(tmp_path_factory, "gw-tuned", TUNED)


@dataclass
class Ups:
    pub: Upstream
    internal: Upstream

    def untouched(self) -> None:
        assert bytes(self.pub.raw_bytes) == b"", f"public upstream received {bytes(self.pub.raw_bytes)[:300]!r}"
        assert bytes(self.internal.raw_bytes) == b"", \
            f"internal upstream received {bytes(self.internal.raw_bytes)[:300]!r}"
        assert self.pub.requests == [] and self.internal.requests == []


@contextlib.asynccontextmanager
async def upstreams(e: Env, handler: Callable[[UpstreamRequest], Any] = echo_close) -> AsyncIterator[Ups]:
    pub = await Upstream(handler=handler).start(e.pub_port)
    internal = await Upstream(handler=handler).start(e.int_port)
    try:
        yield Ups(pub, internal)
    finally:
        await pub.close()
        await internal.close()


@pytest.fixture
async def ups(env: Env) -> Any:
    async with upstreams(env) as u:
        yield u


@pytest.fixture
async def tuned_ups(tuned: Env) -> Any:
    async with upstreams(tuned) as u:
        yield u


def assert_rejected(out: bytes, closed: bool, expect: frozenset[int], ups: Ups) -> Resp:
    rs = parse_responses(out)
    assert len(rs) == 1, f"expected exactly one response, got {len(rs)}: {out[:600]!r}"
    r = rs[0]
    assert r.status in expect, f"status {r.status}, expected {sorted(expect)}: {out[:300]!r}"
    assert r.closes, f"no Connection: close on {r.status}"
    assert closed, "gateway kept the connection open after a framing error"
    ups.untouched()
    return r


# ---------------------------------------------------------------------------------------------
# the rejection table
# ---------------------------------------------------------------------------------------------

POST = b"POST / HTTP/1.1\r\nHost: a\r\n"
GET = b"GET / HTTP/1.1\r\nHost: a\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


def _te(value: bytes) -> bytes:
    return POST + b"Transfer-Encoding: " + value + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"


def _cl(value: bytes) -> bytes:
    return POST + b"Content-Length: " + value + b"\r\n\r\n" + b"0123456789"


def _hdr(line: bytes) -> bytes:
    return GET + line + b"\r\n\r\n"


B400 = frozenset({400})
B400_501 = frozenset({400, 501})
B400_505 = frozenset({400, 505})

REJECT: list[tuple[str, bytes, frozenset[int]]] = [
    # 1-3: CL + TE in every order and disguise
    ("01-cl-then-te", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", B400),
    ("02-te-then-cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", B400),
    ("02-te-trailing-sp-with-cl", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n", B400),
    ("03-tab-led-te-after-cl", POST + b"Content-Length: 0\r\n\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", B400),
    # 4-5: transfer codings
    ("04-two-te-identity-chunked",
     POST + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", B400_501),
    ("05-te-leading-comma", _te(b",chunked"), B400_501),
    ("05-te-chunked-chunked", _te(b"chunked,chunked"), B400_501),
    ("05-te-xchunked", _te(b"xchunked"), B400_501),
    ("05-te-nbsp-chunked", _te(b"\xa0chunked"), B400_501),
    ("05-te-gzip-chunked", _te(b"gzip, chunked"), B400_501),
    ("ngx-te-identity-501", _te(b"identity"), frozenset({501})),
    ("ngx-te-gzip-501", _te(b"gzip"), frozenset({501})),
    ("ngx-te-on-http10", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", B400),
    # 6: whitespace before the colon
    ("06-te-space-before-colon", POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", B400),
    ("06-cl-space-before-colon", POST + b"Content-Length : 34\r\n\r\n" + b"x" * 34, B400),
    # 7-8: Content-Length
    ("07-two-cl-1-0", POST + b"Content-Length: 1\r\nContent-Length: 0\r\n\r\nx", B400),
    ("07-two-cl-5-5", POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", B400),
    ("07-cl-list-5-5", _cl(b"5, 5"), B400),
    ("08-cl-plus-underscore", _cl(b"+1_0"), B400),
    ("08-cl-negative", _cl(b"-48"), B400),
    ("08-cl-hex", _cl(b"0x10"), B400),
    ("08-cl-inner-space", _cl(b"1 0"), B400),
    ("08-cl-vtab", _cl(b"\x0b10"), B400),
    ("08-cl-trailing-letter", _cl(b"1Z"), B400),
    ("08-cl-arabic-indic", _cl("١٠".encode()), B400),
    ("08-cl-empty", _cl(b""), B400),
    ("08-cl-overflow", _cl(b"99999999999999999999999"), B400),
    # 10-13: chunked framing
    ("10-chunk-size-underscore", CHUNKED + b"0_2e\r\n" + b"x" * 46 + b"\r\n0\r\n\r\n", B400),
    ("10-chunk-size-0x", CHUNKED + b"0x0\r\n\r\n", B400),
    ("10-chunk-size-neg-0x", CHUNKED + b"-0x0\r\n\r\n", B400),
    ("10-chunk-size-plus", CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n", B400),
    ("10-chunk-size-leading-sp", CHUNKED + b"  0\r\n\r\n", B400),
    ("10-chunk-size-empty-line", CHUNKED + b"\r\nhello\r\n0\r\n\r\n", B400),
    ("10-chunk-size-17-digits-overflow", CHUNKED + b"10000000000000000\r\nhello\r\n0\r\n\r\n", B400),
    ("10-chunk-size-17-f", CHUNKED + b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n", B400),
    ("11-chunk-ext-bare-cr", CHUNKED + b"5;a=b\rc\r\nhello\r\n0\r\n\r\n", B400),
    ("12-chunk-data-not-crlf", CHUNKED + b"5\r\nhelloXX0\r\n\r\n", B400),
    ("12-chunk-data-then-crlf-garbage", CHUNKED + b"5\r\nhello\r\nXX\r\n\r\n", B400),
    ("12-chunk-size-line-bare-lf", CHUNKED + b"5\nhello\r\n0\r\n\r\n", B400),
    ("12-chunk-data-bare-lf", CHUNKED + b"5\r\nhello\n0\r\n\r\n", B400),
    ("13-trailer-without-colon", CHUNKED + b"5\r\nhello\r\n0\r\nNoColon\r\n\r\n", B400),
    # 14-19: header bytes
    ("14-nul-in-host", b"GET / HTTP/1.1\r\nHost: google.com\x00.evil.org\r\n\r\n", B400),
    ("14-nul-in-value", _hdr(b"X-Foo: a\x00b"), B400),
    ("15-bare-cr-in-value", _hdr(b"A: x\rB: y"), B400),
    ("15-bare-lf-in-value", _hdr(b"A: x\nB: y"), B400),
    ("16-bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\nX: y\n\n", B400),
    ("16-bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", B400),
    ("17-obs-fold", _hdr(b"X-A: 1\r\n continued"), B400),
    ("17-obs-fold-tab", _hdr(b"X-A: 1\r\n\tcontinued"), B400),
    ("17-ws-before-first-header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", B400),
    ("18-name-with-space", _hdr(b"X A: 1"), B400),
    ("18-name-with-ctl", _hdr(b"X\x01A: 1"), B400),
    *[(f"18-name-with-separator-{i:02d}", _hdr(b"X" + bytes([c]) + b"A: 1"), B400)
      for i, c in enumerate(b'"(),/;<=>?@[]{}')],
    ("18-name-non-ascii", _hdr(b"X\xefA: 1"), B400),
    ("18-empty-name", _hdr(b": x"), B400),
    ("18-line-without-colon", _hdr(b"NoColonHere"), B400),
    ("19-nel-after-name", POST + b"Content-Length\x85: 10\r\n\r\n0123456789", B400),
    ("19-nbsp-in-name", _hdr(b"X-Api\xa0Key: k"), B400),
    # 20-21: request line
    ("20-method-paren", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("20-method-separators", b'G=":<>(e),[T] / HTTP/1.1\r\nHost: a\r\n\r\n', B400),
    ("20-double-space-after-method", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("20-double-space-before-version", b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("20-lf-before-version", b"GET /\nHTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("20-tab-separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("21-version-1.01", b"GET / HTTP/1.01\r\nHost: a\r\n\r\n", B400_505),
    ("21-version-1.32", b"GET / HTTP/1.32\r\nHost: a\r\n\r\n", B400_505),
    ("21-version-huge", b"GET / HTTP/4294967295.255\r\nHost: a\r\n\r\n", B400_505),
    ("21-version-cr-cr", b"GET / HTTP/\r\r1.1\r\nHost: a\r\n\r\n", B400_505),
    ("21-version-2.0-on-h1", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", B400_505),
    ("21-version-lowercase", b"GET / http/1.1\r\nHost: a\r\n\r\n", B400_505),
    # 23-24: limits
    ("23-request-line-64k", b"GET /" + b"a" * (64 * 1024) + b" HTTP/1.1\r\nHost: a\r\n\r\n", frozenset({414})),
    ("ngx-request-line-just-over-8k", b"GET /" + b"a" * (8 * 1024) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
     frozenset({414})),
    ("24-101-headers", GET + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", frozenset({431})),
    ("24-61k-of-headers", GET + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(61)) + b"\r\n",
     frozenset({431})),
    ("24-one-61k-header", GET + b"X-Big: " + b"v" * (61 * 1024) + b"\r\n\r\n", frozenset({431})),
    ("24-10000-tiny-headers", GET + b"a:\r\n" * 10_000 + b"\r\n", frozenset({431})),
    # 25 + nginx Host rules
    ("25-http11-without-host", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", B400),
    ("25-two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", B400),
    ("25-two-hosts-same", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", B400),
    ("25-host-with-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", B400),
    ("25-host-with-at", b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", B400),
    ("ngx-host-dotdot", b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", B400),
    ("ngx-host-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", B400),
    ("ngx-host-backslash", b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", B400),
    ("ngx-host-bad-port", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", B400),
    ("ngx-host-unclosed-ipv6", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", B400),
    ("ngx-host-ipv6-junk-after", b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", B400),
    ("ngx-host-empty-on-http11", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", B400),
    ("ngx-host-non-ascii", b"GET / HTTP/1.1\r\nHost: \xe4.example\r\n\r\n", B400),
    ("ngx-host-port-only", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", B400),
    ("ngx-host-dot-only", b"GET / HTTP/1.1\r\nHost: .\r\n\r\n", B400),
    ("ngx-host-stray-bracket", b"GET / HTTP/1.1\r\nHost: a]b\r\n\r\n", B400),
    ("ngx-host-two-colons", b"GET / HTTP/1.1\r\nHost: a:b:80\r\n\r\n", B400),
    ("ngx-host-ipv6-not-hex", b"GET / HTTP/1.1\r\nHost: [evil.com]\r\n\r\n", B400),
    # 26: absolute-form with an unknown scheme
    ("26-absolute-form-bad-scheme", b"GET hps://admin.internal/x HTTP/1.1\r\nHost: public\r\n\r\n", B400),
    ("26-absolute-form-userinfo", b"GET http://u@admin.internal/x HTTP/1.1\r\nHost: public\r\n\r\n", B400),
    # 27-30: paths rejected by policy (nothing may reach either upstream)
    ("27-pct-2f-internal", b"GET /%2E%2e%2finternal HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("28-pct-2f-dotdot", b"GET /private%2f..%2fpublic HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("28-admin-pct-2F", b"GET /admin%2Fx HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("28-admin-pct-5c", b"GET /admin%5cx HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("28-admin-backslash", b"GET /admin\\x HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-fragment", b"GET /admin#frag HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-pct-00", b"GET /admin%00 HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-pct-zz", b"GET /admin%zz HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-pct-truncated", b"GET /admin%4 HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-overlong-utf8-dots", b"GET /%c0%ae%c0%ae/admin HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-pct-0a", b"GET /admin%0a HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-fragment-in-query", b"GET /x?a=1#frag HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    ("30-asterisk-form-get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", B400),
    # raw non-ASCII is not allowed in a request-target (llhttp strict); never NFKC-folded
    ("30-raw-full-width-slash-dots", "GET /a／..／admin HTTP/1.1\r\nHost: a\r\n\r\n".encode(), B400),
    ("30-raw-full-width-pct", "GET /％２ｅ％２ｅ/admin HTTP/1.1\r\nHost: a\r\n\r\n".encode(), B400),
]


@pytest.mark.parametrize("name,raw,expect", REJECT, ids=[c[0] for c in REJECT])
async def test_rejected(env: Env, ups: Ups, name: str, raw: bytes, expect: frozenset[int]) -> None:
    out, closed = await exchange(env.gw.addr, raw + SMUGGLED)
    assert_rejected(out, closed, expect, ups)


ALONE = [c for c in REJECT if c[1].endswith(b"\r\n\r\n") and c[1].find(b"\r\n\r\n") == len(c[1]) - 4]


@pytest.mark.parametrize("name,raw,expect", ALONE, ids=[c[0] for c in ALONE])
async def test_rejected_when_alone_in_its_read(env: Env, ups: Ups, name: str, raw: bytes,
                                               expect: frozenset[int]) -> None:
    # a read holding exactly one complete head is what the proxy's fast path looks at
    out, closed = await exchange(env.gw.addr, raw)
    assert_rejected(out, closed, expect, ups)


async def test_rejection_logs_a_reason_code(env: Env, ups: Ups) -> None:
    out, closed = await exchange(env.gw.addr, POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"0\r\n\r\n")
    assert_rejected(out, closed, B400, ups)
    deadline = time.monotonic() + IO_TIMEOUT
    while "400 http1.codec_error" not in env.gw.log():  # bounded: the worker log is written async
        assert time.monotonic() < deadline, "no reason code logged for a framing error"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# accepted inputs: what the upstream receives
# ---------------------------------------------------------------------------------------------

def _one(up: Upstream) -> UpstreamRequest:
    assert len(up.requests) == 1, f"expected one upstream request, got {len(up.requests)}"
    return up.requests[0]


async def test_09_cl_leading_zero_forwarded_normalised(env: Env, ups: Ups) -> None:
    out, closed = await exchange(env.gw.addr, _cl(b"010"), until=1)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200]
    got = _one(ups.pub)
    assert got.headers_all("content-length") == ["10"]
    assert got.body == b"0123456789"


async def test_13_trailers_never_become_a_request_or_headers(env: Env, ups: Ups) -> None:
    # "0 CRLF X:POST / HTTP/1.1 CRLF CRLF" is a well-formed trailer section: accepted, but the
    # trailer fields must be dropped (exact framing), never turned into a second request, and
    # never leak into the head sent upstream (a trailer "Host" must not change the routed Host).
    raw = (CHUNKED + b"5\r\nhello\r\n0\r\nX:POST / HTTP/1.1\r\nHost: evil.example\r\nX-Api-Key: forged\r\n\r\n")
    out, _ = await exchange(env.gw.addr, raw, until=1)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200]
    got = _one(ups.pub)
    assert got.body == b"hello"
    assert got.header("host") == "a"
    assert got.header("x") is None and got.header("x-api-key") is None
    assert b"evil.example" not in bytes(ups.pub.raw_bytes)
    assert bytes(ups.pub.raw_bytes).endswith(b"0\r\n\r\n")
    assert ups.internal.raw_bytes == b""


async def test_19_obs_text_in_value_kept_byte_exact(env: Env, ups: Ups) -> None:
    out, _ = await exchange(env.gw.addr, _hdr(b"User: \x85admin\xa0"), until=1)
    rs = parse_responses(out)
    assert len(rs) == 1
    if rs[0].status == 200:
        assert b"\r\nUser: \x85admin\xa0\r\n" in bytes(ups.pub.raw_bytes)
    else:
        assert rs[0].status == 400
        ups.untouched()


async def test_22_http10_without_host_accepted_and_closed(env: Env, ups: Ups) -> None:
    out, closed = await exchange(env.gw.addr, b"GET /old HTTP/1.0\r\n\r\n")
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200]
    assert rs[0].closes and closed
    assert _one(ups.pub).path == "/old"


async def test_26_absolute_form_routes_on_authority_and_rewrites_host(env: Env, ups: Ups) -> None:
    out, _ = await exchange(env.gw.addr, b"GET http://admin.internal/x HTTP/1.1\r\nHost: public\r\n\r\n", until=1)
    assert [r.status for r in parse_responses(out)] == [200]
    got = _one(ups.internal)
    assert got.path == "/x"
    assert got.headers_all("host") == ["admin.internal"]
    assert ups.pub.raw_bytes == b""


# 27-30: each spelling is routed exactly like its normalised form, and the upstream receives the
# normalised path.  "internal" is the route on /internal/* and /admin* (the deny side).
PATHS: list[tuple[str, bytes, str, str]] = [
    ("27-plain", b"/internal/x", "internal", "/internal/x"),
    ("27-double-slash", b"//internal/x", "internal", "/internal/x"),
    ("27-dotdot", b"/a/../internal/x", "internal", "/internal/x"),
    ("27-dot", b"/./internal", "internal", "/internal"),
    ("27-dot-slash-x", b"/./internal/x", "internal", "/internal/x"),
    ("27-pct-dotdot", b"/%2e%2e/internal/x", "internal", "/internal/x"),
    ("27-pct-mixed-case-dotdot", b"/%2E%2e/internal/x", "internal", "/internal/x"),
    ("27-pct-letters", b"/%69nternal/x", "internal", "/internal/x"),
    ("27-triple-slash-dot", b"///./internal//x", "internal", "/internal/x"),
    ("29-dotdot-root", b"/..", "public", "/"),
    ("29-etc-passwd", b"/../../etc/passwd", "public", "/etc/passwd"),
    ("29-pct-dotdot-root", b"/%2e%2e/%2e%2e/", "public", "/"),
    ("29-climb-into-internal", b"/../../internal/x", "internal", "/internal/x"),
    ("30-jsessionid", b"/admin;jsessionid=x", "internal", "/admin;jsessionid=x"),
    ("30-upper-case", b"/ADMIN", "public", "/ADMIN"),
    # full-width solidus / percent / digits, percent-encoded as UTF-8: no NFKC, so "／..／" is
    # not a dot segment and "％２ｅ" is not "%2e"
    ("30-full-width-no-nfkc", b"/a%EF%BC%8F..%ef%bc%8fadmin", "public", "/a%EF%BC%8F..%EF%BC%8Fadmin"),
    ("30-full-width-pct", b"/%EF%BC%85%EF%BC%92%EF%BD%85%EF%BC%85%EF%BC%92%EF%BD%85/admin", "public",
     "/%EF%BC%85%EF%BC%92%EF%BD%85%EF%BC%85%EF%BC%92%EF%BD%85/admin"),
    ("30-query-kept", b"/internal/../admin?a=%2e%2e/x", "internal", "/admin?a=%2e%2e/x"),
]


@pytest.mark.parametrize("name,target,side,upstream_path", PATHS, ids=[p[0] for p in PATHS])
async def test_path_routed_and_forwarded_normalised(env: Env, ups: Ups, name: str, target: bytes, side: str,
                                                   upstream_path: str) -> None:
    out, _ = await exchange(env.gw.addr, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", until=1)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200], out[:300]
    hit, miss = (ups.internal, ups.pub) if side == "internal" else (ups.pub, ups.internal)
    assert _one(hit).path == upstream_path
    assert miss.raw_bytes == b""


async def test_31_spoofed_forwarding_headers_from_untrusted_peer(tuned: Env, tuned_ups: Ups) -> None:
    raw = (b"GET /allowlisted/x HTTP/1.1\r\nHost: a\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 1.2.3.4\r\n"
           b"Forwarded: for=1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.internal\r\n\r\n")
    out, _ = await exchange(tuned.gw.addr, raw, until=1)
    assert [r.status for r in parse_responses(out)] == [200]
    # the remote_addrs allow-list route (1.2.3.4) did not match: the socket peer decided
    assert tuned_ups.internal.raw_bytes == b""
    got = _one(tuned_ups.pub)
    assert got.headers_all("x-real-ip") == ["127.0.0.1"]
    # trusted_addresses unset: APISIX keeps the client's X-Forwarded-For and appends the peer
    # (its "compatible default"; tests/integration/test_trusted_addresses.py covers the rest)
    assert got.headers_all("x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]
    assert got.headers_all("x-forwarded-proto") == ["http"]
    assert got.headers_all("x-forwarded-host") == ["a"]
    assert got.headers_all("forwarded") == []


async def test_36_duplicate_credentials_never_500(env: Env, ups: Ups) -> None:
    raw = (b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YTpi\r\nAuthorization: Basic Yzpk\r\n"
           b"apikey: one\r\napikey: two\r\n\r\n")
    out, _ = await exchange(env.gw.addr, raw, until=1)
    rs = parse_responses(out)
    assert len(rs) == 1 and rs[0].status in (200, 400, 401)
    if rs[0].status == 200:
        # forwarded as sent: both copies in order, never one silently dropped
        got = _one(ups.pub)
        assert got.headers_all("authorization") == ["Basic YTpi", "Basic Yzpk"]
        assert got.headers_all("apikey") == ["one", "two"]
    else:
        ups.untouched()


async def test_37_identity_headers_from_client_stripped(env: Env, ups: Ups) -> None:
    forged = [b"X-Userinfo: eyJzdWIiOiJhZG1pbiJ9", b"X-ID-Token: x", b"X-Consumer-Username: admin",
              b"X-Consumer-Custom-Id: 1", b"X-Credential-Identifier: admin", b"X-Envoy-Original-Path: /admin",
              b"X-Forwarded-Prefix: /admin", b"X-Apisix-Upstream-Status: 200", b"X-APISIX-Anything: 1"]
    raw = GET + b"".join(h + b"\r\n" for h in forged) + b"X-Normal: kept\r\n\r\n"
    out, _ = await exchange(env.gw.addr, raw, until=1)
    assert [r.status for r in parse_responses(out)] == [200]
    got = _one(ups.pub)
    assert got.header("x-normal") == "kept"
    names = {k.lower() for k, _ in got.headers}
    leaked = names & {h.split(b":")[0].decode().lower() for h in forged}
    assert not leaked, f"client-supplied identity headers reached the upstream: {sorted(leaked)}"


async def test_38_connection_cannot_strip_protected_headers(env: Env, ups: Ups) -> None:
    raw = (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close, X-Api-Key, Authorization\r\nX-Api-Key: k\r\n"
           b"Authorization: Bearer t\r\nX-Other: dropped\r\nConnection: X-Other\r\n\r\n")
    out, closed = await exchange(env.gw.addr, raw)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200]
    assert rs[0].closes and closed
    got = _one(ups.pub)
    assert got.headers_all("x-api-key") == ["k"]
    assert got.headers_all("authorization") == ["Bearer t"]
    assert got.header("x-other") is None  # ordinary headers named in Connection are hop-by-hop
    assert got.header("connection") is None


async def test_38_h2c_upgrade_not_honoured_nor_forwarded(env: Env, ups: Ups) -> None:
    h2c = (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")
    raw = (b"POST /up HTTP/1.1\r\nHost: a\r\n" + h2c + b"Content-Length: 5\r\n\r\nhello"
           + b"GET /after HTTP/1.1\r\nHost: a\r\n" + h2c + b"\r\n"
           + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    out, closed = await exchange(env.gw.addr, raw)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200, 200, 200], out[:600]
    assert b"101" not in out.split(b"\r\n", 1)[0]
    assert closed
    reqs = ups.pub.requests
    assert [r.path for r in reqs] == ["/up", "/after", "/last"]
    assert reqs[0].body == b"hello" and reqs[0].headers_all("content-length") == ["5"]
    raw_up = bytes(ups.pub.raw_bytes).lower()
    assert b"h2c" not in raw_up and b"http2-settings" not in raw_up and b"upgrade" not in raw_up


async def test_41_get_with_body_then_pipelined_get(env: Env, ups: Ups) -> None:
    raw = (b"GET /first HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
           b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    out, closed = await exchange(env.gw.addr, raw)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200, 200]
    assert closed
    first, second = ups.pub.requests
    assert first.path == "/first" and first.body == b"0123456789"
    assert first.headers_all("content-length") == ["10"]
    assert second.path == "/second" and second.body == b""
    assert second.header("content-length") is None


# ---------------------------------------------------------------------------------------------
# framing errors on a keep-alive connection
# ---------------------------------------------------------------------------------------------

PIPELINED_BAD = [
    ("no-host", b"GET /bad HTTP/1.1\r\nX: no-host\r\n\r\n", 400),
    ("cl-te", POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bad-chunk", CHUNKED + b"5\r\nhello\r\nzz\r\n\r\n", 400),
    ("te-gzip", _te(b"gzip"), 501),
    ("nul-in-header", _hdr(b"X: a\x00b"), 400),
]


@pytest.mark.parametrize("name,bad,status", PIPELINED_BAD, ids=[c[0] for c in PIPELINED_BAD])
async def test_framing_error_after_good_pipelined_requests(env: Env, ups: Ups, name: str, bad: bytes,
                                                           status: int) -> None:
    """Requests pipelined before a bad one are answered first, in order (Envoy: 'second
    pipelined request without Host -> 400 after the first succeeds'); then the error with
    Connection: close, the socket closes, and nothing after the bad bytes is ever served."""
    raw = (b"GET /good1 HTTP/1.1\r\nHost: a\r\n\r\n"
           b"POST /good2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + bad + SMUGGLED)
    out, closed = await exchange(env.gw.addr, raw)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [200, 200, status], out[:900]
    assert not rs[0].closes and not rs[1].closes and rs[2].closes and closed
    assert [r.path for r in ups.pub.requests] == ["/good1", "/good2"]
    assert ups.pub.requests[1].body == b"abc"


async def test_framing_error_on_second_keepalive_request(env: Env, ups: Ups) -> None:
    reader, writer = await asyncio.open_connection(*env.gw.addr)
    try:
        writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_one(reader)
        assert r is not None and r.status == 200 and not r.closes
        writer.write(POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED)
        r2 = await read_one(reader)
        assert r2 is not None and r2.status == 400 and r2.closes
        rest = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
        assert rest == b""  # closed, and /smuggled never answered
    finally:
        writer.close()
    assert [r.path for r in ups.pub.requests] == ["/one"]


async def test_body_error_after_head_was_forwarded_aborts_upstream(env: Env, ups: Ups) -> None:
    """The head of a streamed request may already be upstream when its chunked body turns out
    bad: the upstream must see the connection aborted and never a complete request."""
    reader, writer = await asyncio.open_connection(*env.gw.addr)
    try:
        writer.write(CHUNKED + b"5\r\nhello\r\n")
        deadline = time.monotonic() + IO_TIMEOUT
        while b"hello" not in ups.pub.raw_bytes:  # bounded: wait until the gateway streamed it
            assert time.monotonic() < deadline, "head and first chunk never reached the upstream"
            await asyncio.sleep(0.01)
        writer.write(b"zz\r\n\r\n")
        r = await read_one(reader)
        assert r is not None and r.status == 400 and r.closes
        assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b""
    finally:
        writer.close()
    deadline = time.monotonic() + IO_TIMEOUT
    while ups.pub.open:  # the gateway aborts its upstream connection
        assert time.monotonic() < deadline, "upstream connection left open after a client framing error"
        await asyncio.sleep(0.01)
    assert ups.pub.requests == []


async def _trickle_until_answered(addr: tuple[str, int], first: bytes, piece: bytes,
                                  limit: int) -> tuple[bytes, int]:
    """Send ``first`` then ``piece`` repeatedly (bounded by ``limit`` bytes) until the gateway
    answers or closes; return (everything it sent, bytes trickled)."""
    reader, writer = await asyncio.open_connection(*addr)
    got = bytearray()
    sent = 0
    try:
        writer.write(first)
        while sent < limit:
            try:
                writer.write(piece)
                await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
            except ConnectionError:
                break
            sent += len(piece)
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.02)
            except asyncio.TimeoutError:
                continue
            except ConnectionError:
                break
            got += chunk
            break
        try:
            got += await asyncio.wait_for(reader.read(), IO_TIMEOUT)
        except ConnectionError:
            pass
    finally:
        writer.close()
    return bytes(got), sent


async def test_11_endless_chunk_extension_rejected(env: Env, ups: Ups) -> None:
    """llhttp skips chunk extensions without limit; the gateway bounds them (400) instead of
    reading an endless extension until the body timeout.  The head may already be upstream
    (requests are streamed), but no complete request ever is and that connection is aborted."""
    out, sent = await _trickle_until_answered(env.gw.addr, CHUNKED + b"5;a=", b"b" * 4096, 4 * 1024 * 1024)
    rs = parse_responses(out)
    assert rs and rs[0].status == 400 and rs[0].closes, f"no 400 after {sent} extension bytes: {out[:300]!r}"
    assert sent <= 256 * 1024, f"extension of {sent} bytes accepted before the 400"
    deadline = time.monotonic() + IO_TIMEOUT
    while ups.pub.open:
        assert time.monotonic() < deadline, "upstream connection left open"
        await asyncio.sleep(0.01)
    assert ups.pub.requests == [] and ups.internal.raw_bytes == b""


async def test_13_endless_trailer_rejected(env: Env, ups: Ups) -> None:
    out, sent = await _trickle_until_answered(env.gw.addr, CHUNKED + b"5\r\nhello\r\n0\r\nX-T: ", b"t" * 4096,
                                              4 * 1024 * 1024)
    rs = parse_responses(out)
    assert rs and rs[0].status in (400, 431) and rs[0].closes, f"no error after {sent} trailer bytes"
    assert sent <= 256 * 1024
    assert ups.pub.requests == []


async def test_small_chunks_are_not_mistaken_for_extension_abuse(env: Env, ups: Ups) -> None:
    """The chunk-overhead bound must not hit a legitimate stream of tiny chunks."""
    body = b"".join(b"1;e=v\r\n%c\r\n" % (97 + i % 26) for i in range(20_000)) + b"0\r\n\r\n"
    reader, writer = await asyncio.open_connection(*env.gw.addr)
    try:
        writer.write(CHUNKED)
        for i in range(0, len(body), 8192):  # many reads, so the per-read accounting runs
            writer.write(body[i:i + 8192])
            await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        r = await read_one(reader)
    finally:
        writer.close()
    assert r is not None and r.status == 200
    assert len(_one(ups.pub).body) == 20_000


# ---------------------------------------------------------------------------------------------
# limits and timeouts (nginx behaviours, section 3)
# ---------------------------------------------------------------------------------------------

async def test_ngx_body_over_client_max_body_size_is_413(tuned: Env, tuned_ups: Ups) -> None:
    out, closed = await exchange(tuned.gw.addr, POST + b"Content-Length: 2048\r\n\r\n" + b"x" * 2048 + SMUGGLED)
    assert_rejected(out, closed, frozenset({413}), tuned_ups)


async def test_ngx_chunked_body_over_client_max_body_size_is_413(tuned: Env, tuned_ups: Ups) -> None:
    body = b"400\r\n" + b"x" * 1024 + b"\r\n" + b"1\r\nx\r\n0\r\n\r\n"
    out, closed = await exchange(tuned.gw.addr, CHUNKED + body + SMUGGLED)
    assert_rejected(out, closed, frozenset({413}), tuned_ups)


async def test_ngx_body_at_client_max_body_size_is_accepted(tuned: Env, tuned_ups: Ups) -> None:
    out, _ = await exchange(tuned.gw.addr, POST + b"Content-Length: 1024\r\n\r\n" + b"x" * 1024, until=1)
    assert [r.status for r in parse_responses(out)] == [200]
    assert _one(tuned_ups.pub).body == b"x" * 1024


async def test_over_long_header_answered_without_waiting_for_its_end(env: Env, ups: Ups) -> None:
    """A header that never ends must hit the 60 KiB limit as soon as it is crossed (431),
    not when the line finally ends: otherwise the parser buffers without bound."""
    reader, writer = await asyncio.open_connection(*env.gw.addr)
    try:
        writer.write(GET + b"X-Big: ")
        sent = 0
        resp = None
        while sent < 4 * 1024 * 1024:  # bounded: at most 4 MiB
            try:
                writer.write(b"v" * 65536)
                await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
            except ConnectionError:
                break
            sent += 65536
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.05)
            except asyncio.TimeoutError:
                continue
            except ConnectionError:
                break
            resp = data
            break
        assert resp, f"no answer after {sent} bytes of one header line"
        rs = parse_responses(resp + await asyncio.wait_for(reader.read(), IO_TIMEOUT))
        assert rs and rs[0].status == 431 and rs[0].closes
    finally:
        writer.close()
    ups.untouched()


async def test_ngx_slowloris_header_timeout(tuned: Env, tuned_ups: Ups) -> None:
    """client_header_timeout 1s is a deadline for the whole head, not reset by each trickled byte."""
    reader, writer = await asyncio.open_connection(*tuned.gw.addr)
    start = time.monotonic()
    got = b""
    closed = False
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        # trickle one header byte every 50 ms (a new header line every 40 bytes) for at most 5 s
        for i in range(1, 101):
            try:
                writer.write(b"\r\nX-Slow: " if i % 40 == 0 else b"v")
                await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
            except ConnectionError:
                closed = True
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.05)
            except asyncio.TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
            got += chunk
            if not chunk:
                closed = True
                break
        if not closed:
            try:
                rest = await asyncio.wait_for(reader.read(), 1.0)
                got += rest
                closed = True
            except (asyncio.TimeoutError, ConnectionError):
                pass
    finally:
        writer.close()
    elapsed = time.monotonic() - start
    assert closed, "connection still open after 5 s of trickling with client_header_timeout 1s"
    assert elapsed < 3.0, f"closed only after {elapsed:.1f}s"
    if got:
        rs = parse_responses(got)
        assert rs and rs[0].status == 408 and rs[0].closes
    tuned_ups.untouched()


async def test_ngx_keepalive_timeout_closes_idle_connection(tuned: Env, tuned_ups: Ups) -> None:
    reader, writer = await asyncio.open_connection(*tuned.gw.addr)
    try:
        writer.write(b"GET /ka HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_one(reader)
        assert r is not None and r.status == 200 and not r.closes
        start = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), IO_TIMEOUT)  # bounded wait for the idle close
        elapsed = time.monotonic() - start
    finally:
        writer.close()
    assert rest == b""
    assert 0.7 <= elapsed < 3.0, f"idle connection closed after {elapsed:.2f}s (keepalive_timeout 1s)"


async def test_idle_connection_without_any_request_is_closed(tuned: Env, tuned_ups: Ups) -> None:
    reader, writer = await asyncio.open_connection(*tuned.gw.addr)
    try:
        rest = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()
    assert rest == b""


# ---------------------------------------------------------------------------------------------
# a misbehaving upstream (section 5: responses get the same strictness)
# ---------------------------------------------------------------------------------------------

@dataclass
class Scripted:
    """An upstream answering each request with the next raw byte string of ``script``."""

    script: list[bytes]
    default: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    n: int = field(default=0)

    def __call__(self, req: UpstreamRequest) -> bytes:
        i = self.n
        self.n += 1
        return self.script[i] if i < len(self.script) else self.default


async def test_upstream_cl_and_te_is_502(env: Env) -> None:
    handler = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"])
    async with upstreams(env, handler):
        out, closed = await exchange(env.gw.addr, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        rs = parse_responses(out)
        assert [r.status for r in rs] == [502], out[:300]
        assert b"smuggled" not in out


async def test_upstream_bad_content_length_is_502(env: Env) -> None:
    handler = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"])
    async with upstreams(env, handler):
        out, closed = await exchange(env.gw.addr, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert [r.status for r in parse_responses(out)] == [502], out[:300]


@pytest.mark.parametrize("same_write", [
    True,
    False,
], ids=["same-read", "separate-read"])
async def test_upstream_two_responses_to_one_request(env: Env, same_write: bool) -> None:
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"

    async def two(transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay for the extra
        transport.write(first)
        await asyncio.sleep(0.05)  # the extra response comes as a separate read
        transport.write(extra)

    calls = 0

    def handler(req: UpstreamRequest) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return first + extra if same_write else (200, {}, two)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"

    async with upstreams(env, handler) as u:
        reader, writer = await asyncio.open_connection(*env.gw.addr)
        try:
            writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
            r1 = await read_one(reader)
            assert r1 is not None and r1.status == 200 and r1.body == b"first"
            # Only the first response is relayed, and the gateway discards that upstream
            # connection (bounded wait: the upstream sees it closed).
            deadline = time.monotonic() + 2.0
            while u.pub.open or calls < 1:
                assert time.monotonic() < deadline, "upstream connection kept after an extra response"
                await asyncio.sleep(0.01)
            writer.write(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
            r2 = await read_one(reader)
            assert r2 is not None and r2.status == 200 and r2.body == b"next"
        finally:
            writer.close()
        assert [r.path for r in u.pub.requests] == ["/one", "/two"]
        assert u.pub.connections == 2
