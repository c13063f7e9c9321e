"""HTTP/1.1 reverse proxy on asyncio.Protocol + llhttp (httptools).

Theory of operation
-------------------
``ClientConnection`` parses the downstream byte stream with llhttp (strict mode) and
adds the checks llhttp leaves to us (hardening.md section 5): exactly one Host on
HTTP/1.1, Transfer-Encoding exactly ``chunked`` (else 501) and never on HTTP/1.0,
header count/size limits (431), request-line limit (414), body limit (413), path
normalisation (one parse, one path).  Any framing error answers 400/501 with
``Connection: close`` and closes: we never resynchronise a broken stream.

Each request becomes an ``Exchange``.  Requests are answered in order: while one is
in flight, later pipelined requests are queued (their bodies buffered, reading paused).
An exchange routes, runs the plugin phases, picks a node, takes a pooled keep-alive
``UpstreamConnection`` (or connects), sends a re-serialised head with exactly one
framing, and streams the body both ways with back-pressure: a full write buffer on
one side pauses reading on the other (``pause_writing`` -> ``pause_reading``).

Retries (APISIX/nginx ``proxy_next_upstream error timeout``) go to another node while
nothing has been sent to the client, the request body can be replayed, and either
nothing was sent upstream or the method is idempotent.  A pooled connection that the
server closed under us is retried transparently.

Timeouts are enforced by one sweeper per worker (``ProxyServer._sweep``) instead of a
timer per request: client header/body/keep-alive/send deadlines every 250 ms, upstream
connect/send/read deadlines every 100 ms.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import httptools

from ..errors import ProtocolError
from ..http import HOP_BY_HOP, Request, parse_target, split_fields
from ..upstream import Node

if TYPE_CHECKING:
    from .runtime import RouteRuntime, Runtime, UpstreamRuntime

__all__ = ["ProxySettings", "ProxyServer", "ClientConnection", "Exchange", "UpstreamConnection"]

log = logging.getLogger("meshgate.proxy")
access_log = logging.getLogger("meshgate.access")

SERVER_HEADER = b"Server: APISIX/3.x (meshgate)\r\n"

# Limits (hardening.md section 2 / Envoy and nginx defaults).
MAX_URL = 8 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 60 * 1024
DRAIN_FIRST_REQUEST = 1.0      # while draining, how long a new connection may take to send its request
REPLAY_LIMIT = 1 << 20          # request bodies up to 1 MiB are kept for retries
HIGH_WATER = 64 * 1024          # buffered request body before reading is paused

# client read-pause reasons (bitmask)
P_QUEUE, P_UPSTREAM, P_BUFFER = 1, 2, 4

# connection states (for the timeout sweeper)
S_IDLE, S_HEAD, S_BODY, S_WAIT, S_TUNNEL, S_CLOSED = range(6)

_REASONS = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Not Allowed", 408: "Request Time-out",
    413: "Request Entity Too Large", 414: "Request-URI Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
    504: "Gateway Time-out", 505: "HTTP Version Not Supported",
}

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# Request headers never copied upstream: hop-by-hop, framing we re-create, and the
# forwarding headers the gateway sets itself (hardening case 31/37).
_DROP_REQ = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-real-ip", b"x-forwarded-for",
                          b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"}
# Headers a client must not be able to strip by naming them in Connection (hardening case 38).
_PROTECTED = frozenset({b"authorization", b"x-api-key", b"apikey", b"host", b"content-length", b"cookie"})
# Response fields handled on the raw head (each field is "\r\nName: value").
_RESP_DROP_RE = re.compile(
    rb"\r\n(?:connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade|proxy-authenticate"
    rb"|http2-settings|server|date|content-length)[ \t]*:[^\r]*", re.I)
_RESP_CL_RE = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]+)", re.I)
_PLAIN_CONN = frozenset({b"keep-alive", b"close"})   # Connection values that name no other field
# llhttp: a response is chunked when the last transfer coding is "chunked"
_RESP_CHUNKED_RE = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r]*chunked[ \t]*(?:\r|$)", re.I)
MAX_RESP_HEAD = 64 * 1024
# Raw bytes of one request head (request line + fields incl. OWS and CRLFs).  httptools
# accumulates a header line until it ends, so this is checked per read, not per field.
MAX_HEAD_RAW = MAX_HEADER_BYTES + 4096
# Chunk framing/extension bytes beyond 16 per chunk + 2 per data byte (Go's rule, CVE-2023-39326).
MAX_CHUNK_EXCESS = 16 * 1024


HTML = b"text/html; charset=utf-8"
NOT_FOUND = b'{"error_msg":"404 Route Not Found"}'


def error_body(status: int) -> bytes:
    reason = _REASONS.get(status, "Error")
    return (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>meshgate</center>\r\n"
            "</body>\r\n</html>\r\n").encode()


_date_cache: list[Any] = [0, b"", b""]


def http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = d = formatdate(now, usegmt=True).encode()
        _date_cache[2] = b"Date: " + d + b"\r\n" + SERVER_HEADER
    return _date_cache[1]  # type: ignore[no-any-return]


def date_server_lines() -> bytes:
    """``Date`` and ``Server`` lines as the gateway sends them (nginx replaces the upstream's)."""
    if _date_cache[0] != int(time.time()):
        http_date()
    return _date_cache[2]  # type: ignore[no-any-return]


def _nets(items: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for it in items:
        if it.startswith("unix:"):
            continue
        out.append(ipaddress.ip_network(it, strict=False))
    return tuple(out)


def _ip_in(addr: str, nets: tuple[Any, ...], cache: dict[str, bool]) -> bool:
    r = cache.get(addr)
    if r is None:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
            r = any(ip in n for n in nets)
        except ValueError:
            r = False
        if len(cache) > 4096:
            cache.clear()
        cache[addr] = r
    return r


@dataclass(slots=True)
class ProxySettings:
    """Worker knobs taken from the node config (nginx_config.http and apisix.*)."""

    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    send_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 1000
    client_max_body_size: int = 0
    real_ip_header: str = "x-real-ip"
    real_ip_from: tuple[str, ...] = ("127.0.0.1", "unix:")
    trusted_addresses: tuple[str, ...] = ()
    show_upstream_status: bool = False
    drain_grace: float = 240.0
    _real_nets: tuple[Any, ...] = field(default=(), repr=False)
    _trusted_nets: tuple[Any, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._real_nets = _nets(self.real_ip_from)
        self._trusted_nets = _nets(self.trusted_addresses)


class Pool:
    """Idle keep-alive connections per (scheme, host, port, sni)."""

    __slots__ = ("idle",)

    def __init__(self) -> None:
        self.idle: dict[tuple[Any, ...], deque[UpstreamConnection]] = {}

    def get(self, key: tuple[Any, ...], idle_timeout: float, now: float) -> UpstreamConnection | None:
        """The most recently pooled live connection for ``key``; ``now`` is the loop time."""
        q = self.idle.get(key)
        if not q:
            return None
        while q:
            conn = q.pop()
            if conn.closed or conn.dirty or conn.transport.is_closing():
                continue
            if now - conn.idle_since > idle_timeout:
                conn.transport.close()
                continue
            return conn
        return None

    def put(self, conn: UpstreamConnection, size: int, now: float) -> None:
        q = self.idle.get(conn.key)
        if q is None:
            q = self.idle[conn.key] = deque()
        if len(q) >= size:
            conn.transport.close()
            return
        conn.idle_since = now
        q.append(conn)

    def sweep(self, now: float, idle_timeout_for: Callable[[tuple[Any, ...]], float]) -> None:
        for key, q in list(self.idle.items()):
            limit = idle_timeout_for(key)
            keep: deque[UpstreamConnection] = deque()
            for c in q:
                if c.closed:
                    continue
                if now - c.idle_since <= limit:
                    keep.append(c)
                else:
                    c.transport.close()
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]

    def close_all(self) -> None:
        for q in self.idle.values():
            for c in q:
                if not c.closed:
                    c.transport.close()
        self.idle.clear()


class ProxyServer:
    """One worker's data plane: listeners, connections, pools, the current Runtime."""

    def __init__(self, settings: ProxySettings, runtime: Runtime, *,
                 passive_report: Callable[[str, str, str, int], None] | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.loop = asyncio.get_event_loop()
        self.connections: set[ClientConnection] = set()
        self.waiting: set[Exchange] = set()         # exchanges waiting on an upstream
        self.pool = Pool()
        self.servers: list[asyncio.AbstractServer] = []
        self.draining = False
        self.passive_report = passive_report
        self._real_cache: dict[str, bool] = {}
        self._trusted_cache: dict[str, bool] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.requests_total = 0
        self.fast_requests = 0     # requests / responses handled by the fast paths (_lite_*)
        self.fast_responses = 0
        self.access_log_on = access_log.isEnabledFor(logging.INFO)

    def set_runtime(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def listen(self, host: str, port: int, *, sock: socket.socket | None = None,
                     ssl_ctx: ssl.SSLContext | None = None) -> asyncio.AbstractServer:
        if sock is not None:
            srv = await self.loop.create_server(lambda: ClientConnection(self), sock=sock, backlog=4096, ssl=ssl_ctx)
        else:
            srv = await self.loop.create_server(lambda: ClientConnection(self), host=host, port=port,
                                                reuse_port=True, backlog=4096, ssl=ssl_ctx)
        self.servers.append(srv)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        return srv

    def is_real_ip_source(self, addr: str) -> bool:
        return _ip_in(addr, self.settings._real_nets, self._real_cache)

    def is_trusted(self, addr: str) -> bool:
        return bool(self.settings._trusted_nets) and _ip_in(addr, self.settings._trusted_nets, self._trusted_cache)

    async def _sweep(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(0.1)
            now = self.loop.time()
            for ex in list(self.waiting):
                ex.check_upstream_deadline(now)
            tick += 1
            if tick % 3 == 0:
                s = self.settings
                for conn in list(self.connections):
                    conn.check_deadline(now, s)
            if tick % 10 == 0:
                rt = self.runtime
                self.pool.sweep(now, lambda key: _pool_idle_timeout(rt, key))

    async def drain(self, grace: float) -> None:
        """Stop accepting, finish in-flight requests within ``grace``, then close the rest."""
        self.draining = True
        for srv in self.servers:
            srv.close()
        # Connections the loop accepted just before the close get their protocol on the next
        # iterations: let them register before deciding the worker is idle.
        await asyncio.sleep(0.05)
        for conn in list(self.connections):
            # Idle keep-alive connections go now; a connection accepted but not yet read may
            # carry a request already: it is served (with Connection: close), see check_deadline.
            if conn.state == S_IDLE and conn.requests:
                conn.close()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        self.pool.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()


def _pool_idle_timeout(rt: Runtime, key: tuple[Any, ...]) -> float:
    up = rt.upstreams.get(key[0])
    return up.pool_idle_timeout if up is not None else 60.0


# ---------------------------------------------------------------------------------------
# downstream
# ---------------------------------------------------------------------------------------

class ClientConnection(asyncio.Protocol):
    __slots__ = ("server", "transport", "parser", "state", "since", "req", "url", "hcount", "hbytes", "host_count",
                 "te", "cl_count", "conn_tokens", "active", "queue", "read_pause", "write_paused", "write_paused_since",
                 "peer_ip", "peer_port", "local_ip", "local_port", "scheme", "requests", "closing", "manual_body",
                 "tunnel_to", "body_bytes", "new_message", "peer_trusted", "peer_real_ip_ok", "fwd_lines", "head_done", "head_raw", "chunks", "chunk_excess", "failed", "lite")

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.state = S_IDLE
        self.since = 0.0
        self.req: Request | None = None
        self.url: list[bytes] = []
        self.hcount = 0
        self.hbytes = 0
        self.host_count = 0
        self.te: list[bytes] | None = None
        self.cl_count = 0
        self.conn_tokens: list[bytes] | None = None
        self.active: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.read_pause = 0
        self.write_paused = False
        self.write_paused_since = 0.0
        self.peer_ip = ""
        self.peer_port = 0
        self.local_ip = ""
        self.local_port = 0
        self.scheme = "http"
        self.requests = 0
        self.closing = False
        self.manual_body = 0
        self.tunnel_to: UpstreamConnection | None = None
        self.body_bytes = 0
        self.new_message = True
        self.head_done = False
        self.head_raw = 0
        self.chunks = 0
        self.chunk_excess = 0
        self.failed: tuple[int, str] | None = None
        self.peer_trusted = False
        self.peer_real_ip_ok = False
        self.fwd_lines = b""
        self.lite: Any = None   # callback-less llhttp parser of the fast path (see _lite_request)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
        local = transport.get_extra_info("sockname")
        if local:
            self.local_ip, self.local_port = local[0], local[1]
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # responses are written whole; never let Nagle hold a tail back
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        server = self.server
        self.peer_trusted = server.is_trusted(self.peer_ip)
        self.peer_real_ip_ok = server.is_real_ip_source(self.peer_ip)
        ip = self.peer_ip.encode()
        self.fwd_lines = (b"X-Real-IP: %s\r\nX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\n"
                          % (ip, ip, self.scheme.encode(), self.local_port))
        self.since = server.loop.time()
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = S_CLOSED
        self.closing = True
        self.server.connections.discard(self)
        ex = self.active
        if ex is not None:
            ex.on_client_lost()
        if self.tunnel_to is not None and not self.tunnel_to.closed:
            self.tunnel_to.transport.close()
        for q in self.queue:
            q.on_client_lost()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.server.loop.time()
        ex = self.active
        up = ex.upstream if ex is not None else self.tunnel_to
        if up is not None and not up.closed:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        up = ex.upstream if ex is not None else self.tunnel_to
        if up is not None and not up.closed:
            up.transport.resume_reading()

    def pause_read(self, reason: int) -> None:
        if not self.read_pause and not self.closing:
            self.transport.pause_reading()
        self.read_pause |= reason

    def resume_read(self, reason: int) -> None:
        if self.read_pause & reason:
            self.read_pause &= ~reason
            if not self.read_pause and not self.closing:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.tunnel_to is not None:
            self.tunnel_to.transport.write(data)
            return
        if self.closing or self.failed is not None:
            return
        if self.manual_body:
            data = self._feed_manual_body(data)
            if not data:
                return
        if (self.new_message and self.state == S_IDLE and self.active is None and data[-4:] == b"\r\n\r\n"
                and data.find(b"\r\n\r\n") == len(data) - 4 and self._lite_request(data)):
            return
        if self.new_message and self.state == S_IDLE:
            # llhttp tolerates repeated SP in the request line; RFC 9112 3 allows exactly one.
            eol = data.find(b"\r\n", 0, MAX_URL + 64)
            if eol > 0 and (b"  " in data[:eol]):
                self.protocol_error(400, "http1.codec_error: bad request line")
                return
        in_body = self.head_done and not self.new_message
        n0, b0, c0 = self.requests, self.body_bytes, self.chunks
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._on_parser_upgrade(data, e.args[0])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, ProtocolError):
                self.protocol_error(cause.status, cause.reason)
            else:
                log.exception("request handling failed", exc_info=cause)
                self.protocol_error(500, "internal error")
        except httptools.HttpParserError as e:
            msg = str(e)
            status = 400
            if "Transfer-Encoding" in msg and "invalid" in msg:
                status = 501
            self.protocol_error(status, f"http1.codec_error: {msg}")
        else:
            if self.requests != n0 or self.new_message or self.closing or self.failed is not None:
                return
            # The whole read belongs to the message still being parsed: bound what llhttp does
            # not (it skips chunk extensions unbounded; httptools buffers a header line whole).
            if not self.head_done:
                if not in_body:
                    self.head_raw += len(data)
                    if self.head_raw > MAX_HEAD_RAW:
                        self.protocol_error(431, "request header too large")
            elif in_body and self.req is not None and self.req.chunked:
                dbody = self.body_bytes - b0
                excess = self.chunk_excess + len(data) - 3 * dbody - 16 * (self.chunks - c0)
                self.chunk_excess = excess if excess > 0 else 0
                if excess > MAX_CHUNK_EXCESS:
                    self.protocol_error(400, "http1.codec_error: excessive chunk extensions or trailers")

    def eof_received(self) -> bool | None:
        return None

    def _stamp(self, req: Request) -> None:
        """What the request takes from its connection (both parse paths)."""
        req.remote_addr = self.peer_ip
        req.remote_port = self.peer_port
        req.server_addr = self.local_ip
        req.server_port = self.local_port
        if self.scheme != "http":
            req.scheme = self.scheme

    def _lite_request(self, data: bytes) -> bool:
        """Fast path for the common request: one complete head, no body, nothing else.

        The read is validated by a llhttp parser that has no per-field callbacks, and the
        few fields that matter are found on the raw bytes.  Anything this path does not
        handle itself (framing or hop-by-hop fields, forwarding headers, Expect, a missing
        or repeated Host, absolute-form targets, HTTP/1.0, limits) returns False before any
        state changed, and the read goes through the full parser, which answers exactly as
        it would have: the fast path accepts a subset of what the full path accepts and
        treats it identically (tests/integration/test_fast_path.py runs every case on both).
        """
        if len(data) > LITE_MAX:
            return False
        ld = data.lower()
        if _LITE_SKIP_RE.search(ld) is not None:
            return False
        hs = ld.find(b"\r\nhost:")
        if hs < 0 or ld.find(b"\r\nhost:", hs + 7) >= 0:
            return False
        he = data.find(b"\r\n", hs + 7)
        sp = data.find(b" ")
        eol = data.find(b"\r\n")
        method = _LITE_METHODS.get(data[:sp])
        if method is None or data[eol - 9:eol] != b" HTTP/1.1" or data[sp + 1:sp + 2] != b"/":
            return False
        target = data[sp + 1:eol - 9]
        if data.count(b"\r\n") > MAX_HEADERS + 2:
            return False
        self.lite = _validated(self.lite, httptools.HttpRequestParser, data)
        if self.lite is None:
            return False
        http_host = data[hs + 7:he].strip(b" \t").decode("latin-1")
        if not http_host:
            return False
        try:
            t = parse_target(target)
            host = _parse_host(http_host)
        except ProtocolError:
            return False
        server = self.server
        req = Request()
        req.method = method
        req.target = target
        req.path = t.path
        req.upstream_path = t.upstream_path
        req.query = t.query
        req.http_host = http_host
        req.host = host
        req.fields = data[eol:-4]
        # what goes upstream as is: every field but Host (the only one of _DROP_REQ here)
        req.fwd_fields = data[eol:hs] + data[he:-4]
        self._stamp(req)
        req.start_time = now = server.loop.time()
        self.requests += 1
        server.requests_total += 1
        server.fast_requests += 1
        if self.requests >= server.settings.keepalive_requests:
            req.keep_alive = False
        ex = Exchange(self, req, None)
        ex.req_done = True
        self.state = S_WAIT
        self.since = now
        self.active = ex
        ex.start()
        return True

    # -- llhttp callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.new_message = self.head_done = False
        self.head_raw = self.chunk_excess = self.hcount = self.hbytes = self.host_count = self.cl_count = 0
        self.req = Request()
        self.req.headers = []
        self.url = []
        self.te = self.conn_tokens = None
        self.state = S_HEAD
        self.since = self.server.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url.append(url)
        self.hbytes += len(url)
        if self.hbytes > MAX_URL:
            raise ProtocolError(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        n = self.hcount = self.hcount + 1
        hb = self.hbytes = self.hbytes + len(name) + len(value) + 4
        if n > MAX_HEADERS:
            raise ProtocolError(431, "too many headers")
        if hb > MAX_HEADER_BYTES:
            raise ProtocolError(431, "headers too large")
        if self.head_done:
            return  # a trailer field: counted against the limits, then dropped (never a header)
        if value[-1:] in _OWS:
            value = value.rstrip(b" \t")  # llhttp keeps trailing OWS; it is not part of the value
        ln = name.lower()
        kind = _REQ_SPECIAL.get(ln)
        if kind is not None:
            if not self._special_header(kind, name, value):
                return
        elif ln.startswith(_STRIP_IN_PREFIX):
            return
        self.req.headers.append((name, value))  # type: ignore[union-attr]

    def _special_header(self, kind: int, name: bytes, value: bytes) -> bool:
        """Headers that steer framing or identity; False drops the header."""
        req = self.req
        assert req is not None
        if kind == H_HOST:
            self.host_count += 1
            req.http_host = value.decode("latin-1")
        elif kind == H_TE:
            if self.te is None:
                self.te = []
            self.te.append(value)
        elif kind == H_CL:
            self.cl_count += 1
            if self.cl_count == 1:
                # llhttp refuses duplicates, signs and non-digits; leading zeros are decimal.
                req.content_length = int(value)
        elif kind == H_CONNECTION:
            toks = [t.strip(b" \t").lower() for t in value.split(b",")]
            self.conn_tokens = (self.conn_tokens or []) + toks
        elif kind == H_UPGRADE:
            req.upgrade = value
        elif kind == H_EXPECT:
            if value.lower() == b"100-continue":
                req.expect_continue = True
        elif kind == H_REAL_IP:
            if req.real_ip is None:
                req.real_ip = value
        elif kind == H_STRIP:
            return False
        elif kind == H_FORWARDING:
            return self.peer_trusted
        return True

    def on_headers_complete(self) -> None:
        self.head_done = True
        req = self.req
        assert req is not None
        parser = self.parser
        ver = parser.get_http_version()
        if ver not in ("1.1", "1.0"):
            raise ProtocolError(505, "unsupported HTTP version")
        req.version = ver
        m = parser.get_method()
        req.method = _METHODS.get(m) or m.decode("ascii")
        if self.te is not None:
            if ver == "1.0":
                raise ProtocolError(400, "Transfer-Encoding on HTTP/1.0")
            joined = b",".join(self.te).strip(b" \t").lower()
            if joined != b"chunked":
                raise ProtocolError(501, "http1.invalid_transfer_encoding")
            req.chunked = True
        limit = self.server.settings.client_max_body_size
        if limit and req.content_length is not None and req.content_length > limit:
            raise ProtocolError(413, "request body too large")
        if self.host_count != 1:
            if self.host_count > 1:
                raise ProtocolError(400, "duplicate Host header")
            if ver == "1.1":
                raise ProtocolError(400, "missing Host header")
        elif not req.http_host:
            raise ProtocolError(400, "empty Host header")
        target = b"".join(self.url)
        req.target = target
        t = parse_target(target)
        req.path = t.path
        req.upstream_path = t.upstream_path
        req.query = t.query
        host = t.authority if t.authority is not None else req.http_host
        if t.authority is not None:
            req.http_host = t.authority
        req.host = _parse_host(host)
        if req.method == "CONNECT":
            raise ProtocolError(405, "CONNECT is not allowed")
        if not parser.should_keep_alive():
            req.keep_alive = False
        self._stamp(req)
        server = self.server
        if self.peer_real_ip_ok and req.real_ip is not None:
            real = _real_ip(req.real_ip)
            if real is not None:
                req.remote_addr = real
        req.start_time = server.loop.time()
        self.requests += 1
        server.requests_total += 1
        if self.requests >= server.settings.keepalive_requests:
            req.keep_alive = False  # nginx keepalive_requests: close after this response
        ex = Exchange(self, req, self.conn_tokens)
        has_body = req.chunked or (req.content_length or 0) > 0
        self.body_bytes = 0
        self.state = S_BODY if has_body else S_WAIT
        self.since = req.start_time
        if not has_body:
            ex.req_done = True
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause_read(P_QUEUE)

    def on_body(self, body: bytes) -> None:
        self.since = self.server.loop.time()
        self.body_bytes += len(body)
        limit = self.server.settings.client_max_body_size
        if limit and self.body_bytes > limit:
            raise ProtocolError(413, "request body too large")
        ex = self.queue[-1] if self.queue else self.active
        if ex is not None:
            ex.on_req_body(body)

    def on_chunk_header(self) -> None:
        self.chunks += 1

    def on_message_complete(self) -> None:
        self.new_message = True
        ex = self.queue[-1] if self.queue else self.active
        if self.state in (S_BODY, S_HEAD):
            self.state = S_WAIT
        if ex is not None and not ex.req_done:
            ex.on_req_complete()

    # -- upgrades ----------------------------------------------------------------------------
    def _on_parser_upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stopped after a request carrying Upgrade (or CONNECT)."""
        rest = data[offset:]
        ex = self.queue[-1] if self.queue else self.active
        if ex is not None and ex.wants_tunnel:
            # Bytes after the head belong to the tunnel; hold them until the 101 arrives.
            if rest and ex.tunnel_early is not None:
                ex.tunnel_early.append(rest)
            self.pause_read(P_BUFFER)
            return
        # Not a tunnel (h2c, or websocket not enabled): serve as plain HTTP/1.1 on a fresh
        # parser.  llhttp handed us the body as "upgrade data", so consume it by length.
        self.parser = httptools.HttpRequestParser(self)
        req = ex.req if ex is not None else None
        if req is not None and req.chunked:
            self.protocol_error(400, "chunked body on an upgrade request")
            return
        if req is not None and (req.content_length or 0) > 0 and ex is not None:
            ex.req_done = False
            self.state = S_BODY
            self.manual_body = req.content_length or 0
        if rest:
            self.data_received(rest)

    def _feed_manual_body(self, data: bytes) -> bytes:
        n = self.manual_body
        chunk, rest = data[:n], data[n:]
        self.manual_body -= len(chunk)
        self.since = self.server.loop.time()
        ex = self.queue[-1] if self.queue else self.active
        if ex is not None and chunk:
            ex.on_req_body(chunk)
        if self.manual_body == 0:
            self.new_message = True
            self.state = S_WAIT
            if ex is not None:
                ex.on_req_complete()
        return rest

    # -- responses --------------------------------------------------------------------------
    def protocol_error(self, status: int, reason: str) -> None:
        """Answer a framing/limit error and close: never resync a broken stream.

        Requests received completely before the bad bytes are still answered first, in order
        (Envoy: a pipelined request without Host gets its 400 after the first one succeeded);
        the error response then follows with ``Connection: close`` (see ``exchange_done``).
        """
        log.info("client %s: %s %s", self.peer_ip, status, reason)
        if self.closing or self.failed is not None:
            return
        bad = self.queue[-1] if self.queue else self.active
        if bad is not None and not bad.req_done:
            # the bad bytes are (in) this request's body: it is never answered normally
            if bad is self.active:
                if bad.resp_started:
                    self.close()
                    return
                bad.abort_upstream()
            else:
                self.queue.pop()
        if self.active is not None and self.active is not bad:
            self.failed = (status, reason)  # read no more; answered once the earlier ones are done
            return
        self.closing = True
        self.write_simple(status, error_body(status), close=True, content_type=HTML)
        self.transport.close()

    def write_simple(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"application/json",
                     extra: bytes = b"", head_only: bool = False) -> None:
        reason = _REASONS.get(status, "Unknown")
        head = (b"HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n"
                % (status, reason.encode(), date_server_lines(), content_type, len(body), extra,
                   b"Connection: close\r\n" if close else b""))
        self.transport.write(head if head_only else head + body)

    def exchange_done(self, ex: Exchange, keep_alive: bool) -> None:
        if self.active is not ex:
            return
        self.active = None
        if self.closing:
            return
        if not keep_alive or self.server.draining:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self.resume_read(P_QUEUE)
            self.active = nxt
            self.state = S_WAIT if nxt.req_done else S_BODY
            nxt.start()
            return
        if self.failed is not None:
            status = self.failed[0]
            self.closing = True
            self.write_simple(status, error_body(status), close=True, content_type=HTML)
            self.transport.close()
            return
        self.state = S_IDLE
        self.since = self.server.loop.time()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
        self.transport.close()

    def check_deadline(self, now: float, s: ProxySettings) -> None:
        st = self.state
        if st == S_IDLE:
            if now - self.since > (DRAIN_FIRST_REQUEST if self.server.draining else s.keepalive_timeout):
                self.close()
        elif st == S_HEAD:
            if now - self.since > s.client_header_timeout:
                self.protocol_error(408, "client header timeout")
        elif st == S_BODY:
            if now - self.since > s.client_body_timeout:
                self.protocol_error(408, "client body timeout")
        if self.write_paused and now - self.write_paused_since > s.send_timeout:
            log.info("client %s: send timeout", self.peer_ip)
            self.transport.abort()


_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}

# request headers that need a look (value of _REQ_SPECIAL)
H_HOST, H_TE, H_CL, H_CONNECTION, H_UPGRADE, H_EXPECT, H_REAL_IP, H_STRIP, H_FORWARDING = range(9)
_REQ_SPECIAL: dict[bytes, int] = {
    b"host": H_HOST, b"transfer-encoding": H_TE, b"content-length": H_CL, b"connection": H_CONNECTION,
    b"upgrade": H_UPGRADE, b"expect": H_EXPECT, b"x-real-ip": H_REAL_IP,
    # identity headers only the gateway may set (hardening case 37)
    **{h: H_STRIP for h in (b"x-userinfo", b"x-id-token", b"x-access-token", b"x-credential-identifier")},
    # forwarding headers honoured only from trusted_addresses (hardening case 31)
    b"forwarded": H_FORWARDING, b"x-forwarded-prefix": H_FORWARDING,
}
_OWS = (b" ", b"\t")
_STRIP_IN_PREFIX = (b"x-envoy-", b"x-apisix-", b"x-consumer-")  # x-consumer-username/-id/-groups...

_REAL_IP_CACHE: dict[bytes, str | None] = {}

# Fast path (ClientConnection._lite_request): requests naming any of these fields take the
# full path.  Each field starts with CRLF in the raw head, so a search cannot hit a value.
LITE_MAX = 4096
_LITE_SKIP_RE = re.compile(
    rb"\r\n(?:(?:content-length|transfer-encoding|upgrade|expect|connection|keep-alive|proxy-connection|te"
    rb"|trailer|http2-settings|proxy-authenticate|x-real-ip|forwarded|x-userinfo|x-id-token|x-access-token"
    rb"|x-credential-identifier)[ \t]*:|x-forwarded-|x-envoy-|x-apisix-|x-consumer-)")  # on the lower-cased head
_LITE_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class _NoCallbacks:
    """The protocol of a validating-only llhttp parser: no callbacks at all."""


_NO_CALLBACKS = _NoCallbacks()


def _validated(parser: Any, make: Callable[[Any], Any], data: bytes) -> Any:
    """``parser`` (a new callback-less one when None) once llhttp accepted ``data``; None when it
    refused them (the parser is then unusable and dropped)."""
    if parser is None:
        parser = make(_NO_CALLBACKS)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    return parser


def _real_ip(value: bytes) -> str | None:
    """A valid IP from the real_ip_header, else None (cached: the same proxies repeat)."""
    r = _REAL_IP_CACHE.get(value, "")
    if r == "":
        try:
            r = str(ipaddress.ip_address(value.strip(b" \t").decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            r = None
        if len(_REAL_IP_CACHE) > 4096:
            _REAL_IP_CACHE.clear()
        _REAL_IP_CACHE[value] = r
    return r


_HOST_RE = re.compile(r"[A-Za-z0-9\-._:\[\]]+")
_HOST_V6 = re.compile(r"\[[0-9a-f:.]+\](?::[0-9]*)?")  # applied to the lower-cased value


_HOST_CACHE: dict[str, str] = {}


def _parse_host(host: str) -> str:
    """nginx $host: lower-cased, port stripped; invalid characters or '..' -> 400.

    Valid results are cached (clients repeat a handful of Host values)."""
    got = _HOST_CACHE.get(host)
    if got is not None:
        return got
    h = _check_host(host)
    if len(_HOST_CACHE) > 4096:
        _HOST_CACHE.clear()
    _HOST_CACHE[host] = h
    return h


def _check_host(host: str) -> str:
    if not host:
        return ""
    if _HOST_RE.fullmatch(host) is None or ".." in host:
        raise ProtocolError(400, "invalid Host header")
    h = host.lower()
    if h.startswith("["):
        if _HOST_V6.fullmatch(h) is None:
            raise ProtocolError(400, "invalid Host header")
        return h[: h.find("]") + 1]
    if "[" in h or "]" in h:
        raise ProtocolError(400, "invalid Host header")
    colon = h.find(":")
    if colon >= 0:
        port = h[colon + 1:]
        if port and not port.isdigit():
            raise ProtocolError(400, "invalid Host header")
        h = h[:colon]
    h = h.rstrip(".")  # one trailing dot at most ('..' is refused above), like nginx
    if not h:
        raise ProtocolError(400, "invalid Host header")  # ':80', '.'
    return h


# ---------------------------------------------------------------------------------------
# one request / response
# ---------------------------------------------------------------------------------------

class Exchange:
    """One request through routing, plugins, the upstream, and back.  Also the plugin ctx.

    Defaults are class attributes: an exchange stores only what it changes, which keeps
    the per-request allocation small (hot path).
    """

    route: RouteRuntime | None = None
    up: UpstreamRuntime | None = None
    tmo: Any = None                          # Timeouts in force (route's, else upstream's)
    node: Node | None = None
    tried: Sequence[Node] = ()
    upstream: UpstreamConnection | None = None
    req_done = False
    body_buf: list[bytes] | None = None      # framed chunks not yet sent upstream
    body_size = 0
    replay: list[bytes] | None = None        # framed body kept for retries...
    replay_ok = True                         # ...until it grows past REPLAY_LIMIT
    sent_upstream = False
    resp_started = False
    resp_status = 0
    resp_chunked = False
    finished = False
    deadline = 0.0
    up_phase = 0                             # 0 idle, 1 connecting, 2 request sent / reading
    first_try_at = 0.0
    wants_tunnel = False
    tunnel_early: list[bytes] | None = None  # client bytes after an Upgrade head, until the 101
    consumer: Any = None
    vars: dict[str, Any] | None = None
    t_connect = 0.0
    resp_body_allowed = True
    upstream_status = 0
    continue_sent = False
    conf_override: Any = None
    _resp_fields = b""
    _resp_headers: list[tuple[bytes, bytes]] | None = None
    lite_resp = True                         # the response may take UpstreamConnection._lite_response

    def __init__(self, conn: ClientConnection, req: Request, conn_tokens: list[bytes] | None) -> None:
        self.conn = conn
        self.server = server = conn.server
        self.req = req
        self.conn_tokens = conn_tokens
        self.runtime: Runtime = server.runtime
        self.client_keep = req.keep_alive
        self.out: list[bytes] = []
        upg = req.upgrade
        if upg is not None and upg.lower() == b"websocket":
            self.wants_tunnel = True
            self.tunnel_early = []
            self.lite_resp = False
        if req.method == "HEAD":
            self.lite_resp = False

    # -- plugin ctx API ------------------------------------------------------------------------
    def var(self, name: str) -> Any:
        if self.vars is not None:
            v = self.vars.get(name)
            if v is not None:
                return v
        if name == "route_id":
            return self.route.id if self.route is not None else None
        if name == "service_id":
            return self.route.service_id if self.route is not None else None
        if name == "consumer_name":
            return getattr(self.consumer, "username", None) if self.consumer is not None else None
        if name == "status":
            return str(self.resp_status) if self.resp_status else None
        if name == "upstream_addr" or name == "balancer_ip":
            n = self.node
            if n is None:
                return None
            return n.addr if name == "upstream_addr" else n.host
        return self.req.var(name)

    def set_var(self, name: str, value: Any) -> None:
        if self.vars is None:
            self.vars = {}
        self.vars[name] = value

    @property
    def consumer_name(self) -> str | None:
        return getattr(self.consumer, "username", None) if self.consumer is not None else None

    # -- request side ------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except ProtocolError as e:
            self.respond(e.status, error_body(e.status), content_type=HTML)
        except Exception:
            log.exception("request failed")
            if not self.resp_started:
                self.respond(500, error_body(500), content_type=HTML)
            else:
                self.conn.close()

    def _start(self) -> None:
        gchain = self.runtime.global_chain
        chain = None
        if gchain is not None:
            # APISIX: global rules run rewrite and access even when no route matches.
            res = gchain.run("rewrite", self)
            if res is None:
                if not self._match():
                    res = gchain.run("access", self) or (404, NOT_FOUND)
                else:
                    chain = self.route.chain  # type: ignore[union-attr]
                    if chain is not None:
                        res = chain.run("rewrite", self)
                    if res is None:
                        res = gchain.run("access", self)
                    if res is None and chain is not None:
                        res = chain.run("access", self)
        else:
            if not self._match():
                self.respond(404, NOT_FOUND)
                return
            chain = self.route.chain  # type: ignore[union-attr]
            res = None
            if chain is not None:
                res = chain.run("rewrite", self) or chain.run("access", self)
        if res is not None:
            self.respond(res[0], res[1])
            return
        route = self.route
        assert route is not None
        if route.error is not None:
            self.respond(*route.error)
            return
        up = self.conf_override or route.upstream
        if up is None:
            self.respond(502, b'{"error_msg":"missing upstream configuration in Route or Service"}')
            return
        self.up = up
        self.tmo = route.timeouts or up.timeouts
        if chain is not None and chain.has("before_proxy"):
            res = chain.run("before_proxy", self)
            if res is not None:
                self.respond(res[0], res[1])
                return
        if self.wants_tunnel and not route.enable_websocket:
            self.wants_tunnel = False
        if self.req.expect_continue and not self.req_done:
            self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.continue_sent = True
        self.first_try_at = self.req.start_time
        self._try_node()

    def _match(self) -> bool:
        rt = self.runtime
        m = rt.router.match(self.req)
        if m is None:
            return False
        rr = rt.routes.get(m.route_id)
        if rr is None:
            return False
        self.route = rr
        if m.params:
            self.req.params = dict(m.params)
        return True

    def on_req_body(self, chunk: bytes) -> None:
        framed = (b"%x\r\n" % len(chunk), chunk, b"\r\n") if self.req.chunked else (chunk,)
        size = self.body_size = self.body_size + len(chunk)
        if self.replay_ok:
            if size <= REPLAY_LIMIT:
                if self.replay is None:
                    self.replay = []
                self.replay.extend(framed)
            else:
                self.replay_ok = False
                self.replay = None
        up = self.upstream
        if up is not None and self.sent_upstream and not up.closed:
            up.transport.writelines(framed)
            self._touch_upstream()
        else:
            if self.body_buf is None:
                self.body_buf = []
            self.body_buf.extend(framed)
            if size > HIGH_WATER and not self.replay_ok:
                self.conn.pause_read(P_BUFFER)

    def on_req_complete(self) -> None:
        self.req_done = True
        if self.req.chunked:
            term = b"0\r\n\r\n"
            if self.replay_ok:
                if self.replay is None:
                    self.replay = []
                self.replay.append(term)
            up = self.upstream
            if up is not None and self.sent_upstream and not up.closed:
                up.transport.write(term)
            else:
                if self.body_buf is None:
                    self.body_buf = []
                self.body_buf.append(term)

    # -- upstream selection / connection --------------------------------------------------
    def _try_node(self) -> None:
        up = self.up
        assert up is not None
        nodes = up.nodes
        if len(nodes) == 1:
            # APISIX: a one-node upstream skips the balancer (health and weight included),
            # so retries go to that node again.
            node: Node | None = nodes[0]
        else:
            node = up.balancer.pick(self, tried=self.tried, healthy=up.healthy if up.unhealthy else None)
        if node is None:
            if self.tried:
                log.error("route %s: all upstream nodes tried", self.route.id if self.route else "?")
            else:
                log.error("route %s: no valid upstream node", self.route.id if self.route else "?")
            self.server.waiting.discard(self)
            self.respond(502, error_body(502), content_type=HTML)
            return
        self.node = node
        server = self.server
        key = self._pool_key(up, node)
        conn = server.pool.get(key, up.pool_idle_timeout, server.loop.time())
        server.waiting.add(self)
        if up.track_load:
            up.balancer.on_start(node)
            self.t_connect = server.loop.time()
        if conn is not None:
            self._attach(conn, reused=True)
        else:
            self._connect_later(node, up, key)

    def _pool_key(self, up: UpstreamRuntime, node: Node) -> tuple[Any, ...]:
        if up.ssl_context is None:
            return (up.key, node.host, node.port, up.scheme)
        # TLS sessions are per SNI (APISIX pool name scheme#host#port#sni).
        return (up.key, node.host, node.port, up.scheme, self._sni(node))

    def _sni(self, node: Node) -> str | None:
        name = self._upstream_host_for(node)
        if name.startswith("["):
            return None
        name = name.rsplit(":", 1)[0] if ":" in name else name
        try:
            ipaddress.ip_address(name)
            return None  # no SNI for IP literals
        except ValueError:
            return name

    def _connect_later(self, node: Node, up: UpstreamRuntime, key: tuple[Any, ...]) -> None:
        self.up_phase = 1  # connecting
        self.deadline = self.server.loop.time() + self.tmo.connect
        self.server.loop.create_task(self._connect(node, up, key))

    async def _connect(self, node: Node, up: UpstreamRuntime, key: tuple[Any, ...]) -> None:
        loop = self.server.loop
        host = node.host[1:-1] if node.host.startswith("[") else node.host
        kw: dict[str, Any] = {}
        if up.ssl_context is not None:
            kw = {"ssl": up.ssl_context, "server_hostname": key[4] or ""}
        try:
            _, conn = await loop.create_connection(lambda: UpstreamConnection(self.server, key), host, node.port, **kw)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self.finished or self.up_phase != 1 or self.node is not node:
                return
            log.warning("connect to %s failed: %s", node.addr, e)
            self._report(node, "tcp_failure", 0)
            self._failed(502)
            return
        if self.finished or self.up_phase != 1 or self.node is not node:
            conn.transport.close()
            return
        self._attach(conn, reused=False)

    def _attach(self, conn: UpstreamConnection, *, reused: bool) -> None:
        self.upstream = conn
        conn.ex = self
        conn.reused = reused
        conn.bytes_in = 0
        conn.requests += 1
        self.up_phase = 2
        self.deadline = self.server.loop.time() + self.tmo.read
        head = self._build_head()
        if self.tried and self.replay is not None:
            # a retry: replay what was received so far; later chunks stream as they come
            data = head + b"".join(self.replay)
            self.body_buf = None
        elif self.body_buf:
            data = head + b"".join(self.body_buf)
            self.body_buf = None
            self.conn.resume_read(P_BUFFER)
        else:
            data = head
        conn.transport.write(data)
        self.sent_upstream = True

    def _upstream_host_for(self, node: Node) -> str:
        up = self.up
        assert up is not None
        ph = up.pass_host
        if ph == "node":
            default = 443 if up.scheme in ("https", "grpcs") else 80
            host = f"[{node.host}]" if ":" in node.host and not node.host.startswith("[") else node.host
            return host if node.port == default else f"{host}:{node.port}"
        if ph == "rewrite" and up.upstream_host:
            return up.upstream_host
        return self.req.http_host or node.host

    def _build_head(self) -> bytes:
        """The request head sent upstream, re-serialised from the parsed request."""
        req = self.req
        node = self.node
        assert node is not None
        vars = self.vars
        target = req.upstream_path if req.query is None else f"{req.upstream_path}?{req.query}"
        host = method = None
        if vars:
            host = vars.get("upstream_host")
            target = vars.get("upstream_uri") or target
            method = vars.get("request_method_override")
        if host is None:
            host = self._upstream_host_for(node)
        parts = [f"{method or req.method} {target} HTTP/1.1\r\nHost: {host}".encode("latin-1")]
        ap = parts.append
        xff_prev = fproto = fhost = fport = None
        fwd = req.forward_fields()
        if fwd is not None:
            ap(fwd)   # fast path: validated fields, nothing to drop (see _lite_request)
        else:
            drop = _DROP_REQ
            if self.conn_tokens:
                extra = {t for t in self.conn_tokens if t and t not in _PROTECTED}
                if extra:
                    drop = drop | extra
            for name, value in req.headers:
                ln = name.lower()
                if ln in drop:
                    if ln == b"x-forwarded-for":
                        xff_prev = value if xff_prev is None else xff_prev + b", " + value
                    elif ln == b"x-forwarded-proto":
                        fproto = value
                    elif ln == b"x-forwarded-host":
                        fhost = value
                    elif ln == b"x-forwarded-port":
                        fport = value
                    continue
                ap(b"\r\n" + name + b": " + value)
        ap(b"\r\n")
        conn = self.conn
        if xff_prev is None and not conn.peer_trusted and req.remote_addr == conn.peer_ip:
            # common case: no forwarding headers to honour; the block is per connection
            ap(conn.fwd_lines)
            ap(b"X-Forwarded-Host: " + req.host.encode("latin-1") + b"\r\n")
        else:
            remote = req.remote_addr.encode()
            if xff_prev is not None and (conn.peer_trusted or conn.peer_real_ip_ok):
                xff = xff_prev + b", " + conn.peer_ip.encode()
            else:
                xff = remote
            if not conn.peer_trusted:
                fproto = fhost = fport = None
            ap(b"X-Real-IP: %s\r\nX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Port: %s\r\n"
               b"X-Forwarded-Host: %s\r\n"
               % (remote, xff, fproto or req.scheme.encode(), fport or b"%d" % req.server_port,
                  fhost or req.host.encode("latin-1")))
        if req.chunked:
            ap(b"Transfer-Encoding: chunked\r\n")
        elif req.content_length is not None:
            ap(b"Content-Length: %d\r\n" % req.content_length)
        if self.wants_tunnel:
            ap(b"Upgrade: websocket\r\nConnection: upgrade\r\n")
        ap(b"\r\n")
        return b"".join(parts)

    def _touch_upstream(self) -> None:
        self.deadline = self.server.loop.time() + self.tmo.read

    def check_upstream_deadline(self, now: float) -> None:
        if self.finished or self.up_phase == 0 or now < self.deadline:
            return
        node = self.node
        log.warning("upstream %s timed out (%s)", node.addr if node else "?", "connect" if self.up_phase == 1 else "read")
        if node is not None:
            self._report(node, "timeout", 0)
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.ex = None
            conn.transport.close()
        if self.resp_started:
            self._finish_abort()
            return
        self._failed(504)

    def _failed(self, status: int) -> None:
        """A try failed before any response byte reached the client: retry or answer."""
        node = self.node
        up = self.up
        assert up is not None
        if node is not None:
            if up.track_load:
                up.balancer.on_finish(node, self.server.loop.time() - self.t_connect, failed=True)
            self.tried = [*self.tried, node]
        self.up_phase = 0
        self.upstream = None
        can_replay = self.replay_ok and (self.req_done or not self.body_size)
        retries_left = up.retries - (len(self.tried) - 1)
        # nginx proxy_next_upstream: a non-idempotent request already sent is not replayed.
        safe = not self.sent_upstream or self.req.method in IDEMPOTENT
        if retries_left > 0 and can_replay and safe and not self.conn.closing:
            if up.retry_timeout and self.server.loop.time() - self.first_try_at >= up.retry_timeout:
                status = 502  # APISIX: retry deadline passed -> 502
            else:
                self.sent_upstream = False
                self._try_node()
                return
        self.server.waiting.discard(self)
        self.respond(status, error_body(status), content_type=HTML)

    def _report(self, node: Node, kind: str, status: int) -> None:
        up = self.up
        if up is None or not up.passive:
            return
        rep = self.server.passive_report
        if rep is not None:
            rep(up.key, node.addr, kind, status)

    # -- response side (called by UpstreamConnection) ---------------------------------------
    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.finished or conn is not self.upstream:
            return
        if conn.tunnel:
            self.conn.close()
            return
        if self.resp_started:
            if conn.until_close and conn.got_headers:
                self.on_resp_complete(conn)
                return
            self._finish_abort()
            return
        node = self.node
        up = self.up
        if conn.reused and conn.bytes_in == 0 and self.replay_ok and node is not None and up is not None:
            # The server closed an idle keep-alive connection as we reused it: retry on a
            # fresh connection without counting a try (nginx does the same).
            self.upstream = None
            self.sent_upstream = False
            if self.replay is not None:
                self.body_buf = list(self.replay)  # _attach sends it after the head
            self._connect_later(node, up, self._pool_key(up, node))
            return
        if node is not None:
            self._report(node, "tcp_failure", 0)
        self._failed(502)

    @property
    def resp_headers(self) -> list[tuple[bytes, bytes]]:
        """Response header fields as (name, value) for plugins; settable in header_filter."""
        h = self._resp_headers
        if h is None:
            h = self._resp_headers = split_fields(self._resp_fields)
        return h

    @resp_headers.setter
    def resp_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._resp_headers = value

    def on_resp_head(self, conn: UpstreamConnection, status: int, head: bytes, cl: int | None, chunked: bool, *,
                     complete: bool = False, lower: bytes | None = None) -> None:
        """``head`` is the upstream's status line and fields exactly as llhttp validated them
        (each field line ends with CRLF; the blank line is not included).  ``complete``: the
        whole response is in hand (no read deadline to extend); ``lower``: ``head.lower()``
        when the caller has it already."""
        req = self.req
        self.upstream_status = status
        up = self.up
        if up is not None:
            if not complete:
                self.deadline = self.server.loop.time() + self.tmo.read
            if up.passive and self.node is not None:
                self._report(self.node, "http", status)
        self.resp_status = status
        sl = head.find(b"\r\n")
        status_line = head[:sl]
        # Each field as "\r\nName: value": drop hop-by-hop and framing fields in one C pass.
        fields = _RESP_DROP_RE.sub(b"", head[sl:-2])
        lh = head.lower() if lower is None else lower
        i = lh.find(b"\r\nconnection:", sl)   # llhttp refuses whitespace before the colon
        if i >= 0:
            value = lh[i + 13:lh.find(b"\r\n", i + 13)].strip(b" \t")
            if value not in _PLAIN_CONN:
                # Fields named by Connection are hop-by-hop too (RFC 9110 7.6.1).
                names = [re.escape(n) for n in (t.strip(b" \t") for t in value.split(b","))
                         if n and n not in (b"close", b"keep-alive", b"upgrade")]
                if names:
                    fields = re.sub(rb"\r\n(?:" + b"|".join(names) + rb")[ \t]*:[^\r]*", b"", fields, flags=re.I)
        self._resp_fields = fields
        chain = self.route.chain if self.route is not None else None
        gchain = self.runtime.global_chain
        if (gchain is not None and gchain.has("header_filter")) or (chain is not None and chain.has("header_filter")):
            if gchain is not None:
                gchain.run("header_filter", self)
            if chain is not None:
                chain.run("header_filter", self)
            status = self.resp_status
            fields = b"".join(b"\r\n" + n + b": " + v for n, v in self.resp_headers)
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if no_body:
            self.resp_body_allowed = False
        keep = self.client_keep and self.req_done and not self.server.draining
        if status != self.upstream_status or status_line[:9] != b"HTTP/1.1 " or len(status_line) < 14 \
                or status_line[-1:] in _OWS:
            # a plugin changed the status, or the upstream's line is not the canonical HTTP/1.1 one
            parts = status_line.split(b" ", 2)
            reason = parts[2].strip(b" \t") if len(parts) == 3 and status == self.upstream_status else b""
            status_line = b"HTTP/1.1 %d %s" % (status, reason or _REASONS.get(status, "Unknown").encode())
        out = [status_line, fields, b"\r\n"]
        ap = out.append
        ap(date_server_lines())
        if status >= 500 or self.server.settings.show_upstream_status:
            ap(b"X-APISIX-Upstream-Status: %d\r\n" % self.upstream_status)
        if no_body:
            if cl is not None and req.method == "HEAD":
                ap(b"Content-Length: %d\r\n" % cl)
        elif cl is not None:
            ap(b"Content-Length: %d\r\n" % cl)
        elif req.version == "1.1":
            ap(b"Transfer-Encoding: chunked\r\n")
            self.resp_chunked = True
        else:
            keep = False  # HTTP/1.0 client, unknown length: delimit by close
        if not keep:
            ap(b"Connection: close\r\n")
        elif req.version == "1.0":
            ap(b"Connection: keep-alive\r\n")
        ap(b"\r\n")
        self.client_keep = keep
        self.out.append(b"".join(out))
        self.resp_started = True

    def on_resp_body(self, chunk: bytes) -> None:
        if not self.resp_body_allowed:
            return
        if self.resp_chunked:
            self.out.extend((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.out.append(chunk)

    def flush(self) -> None:
        out = self.out
        if out:
            if self.conn.closing:
                out.clear()
                return
            if len(out) == 1:
                self.conn.transport.write(out[0])
            else:
                self.conn.transport.write(b"".join(out))
            out.clear()
            if not self.finished:
                self._touch_upstream()

    def on_resp_complete(self, conn: UpstreamConnection) -> None:
        if self.resp_chunked:
            self.out.append(b"0\r\n\r\n")
        self.finished = True
        self.flush()
        server = self.server
        server.waiting.discard(self)
        self.upstream = None
        conn.ex = None
        node = self.node
        up = self.up
        if up is not None and node is not None:
            if up.track_load:
                up.balancer.on_finish(node, server.loop.time() - self.t_connect)
            if (self.req_done and conn._ka and not conn.until_close and not conn.closed and not conn.dirty
                    and conn.requests < up.pool_requests):
                # Pooled once the current read is fully parsed (see UpstreamConnection).
                conn.release = up.pool_size
            else:
                conn.transport.close()
        if self.route is not None and self.route.chain is not None or self.runtime.global_chain is not None \
                or server.access_log_on:
            self._log()
        self.conn.exchange_done(self, self.client_keep and self.req_done)

    def on_resp_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        """101 Switching Protocols: both sides become a raw tunnel."""
        if not self.wants_tunnel or self.resp_status != 101:
            self.on_upstream_protocol_error(conn, "unexpected upgrade")
            return
        self.flush()
        self.finished = True
        self.server.waiting.discard(self)
        conn.tunnel = True
        client = self.conn
        client.tunnel_to = conn
        client.state = S_TUNNEL
        client.active = None
        conn.tunnel_client = client
        if rest:
            client.transport.write(rest)
        for b in self.tunnel_early or ():
            conn.transport.write(b)
        self.tunnel_early = None
        client.resume_read(P_BUFFER)
        self._log()

    def on_upstream_protocol_error(self, conn: UpstreamConnection, why: str) -> None:
        log.warning("upstream %s sent an invalid response: %s", self.node.addr if self.node else "?", why)
        conn.dirty = True
        conn.ex = None
        conn.transport.close()
        if self.resp_started:
            self._finish_abort()
            return
        self.upstream = None
        self.out.clear()
        self._failed(502)

    def on_client_lost(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.server.waiting.discard(self)
        self.abort_upstream()

    def abort_upstream(self) -> None:
        conn = self.upstream
        self.upstream = None
        self.up_phase = 0
        if conn is not None:
            conn.ex = None
            if not conn.closed:
                conn.transport.close()

    def _finish_abort(self) -> None:
        self.finished = True
        self.server.waiting.discard(self)
        self.abort_upstream()
        self.flush()
        self.conn.close()

    def respond(self, status: int, body: bytes, *, content_type: bytes = b"application/json", extra: bytes = b"") -> None:
        """Answer locally (route miss, plugin exit, upstream failure)."""
        if self.resp_started or self.finished:
            return
        self.finished = True
        self.resp_started = True
        self.resp_status = status
        self.server.waiting.discard(self)
        self.abort_upstream()
        # If the client still has body bytes in flight we cannot keep the connection in sync.
        keep = self.client_keep and self.req_done and not self.server.draining
        if status >= 500 and self.upstream_status:
            extra += b"X-APISIX-Upstream-Status: %d\r\n" % self.upstream_status
        self.conn.write_simple(status, body, close=not keep, content_type=content_type, extra=extra,
                               head_only=self.req.method == "HEAD")
        self._log()
        self.conn.exchange_done(self, keep)
        if not keep and self.conn.active is None and not self.conn.closing:
            self.conn.close()

    def _log(self) -> None:
        chain = self.route.chain if self.route is not None else None
        if chain is not None and chain.has("log"):
            try:
                chain.run("log", self)
            except Exception:
                log.exception("log phase failed")
        gchain = self.runtime.global_chain
        if gchain is not None and gchain.has("log"):
            try:
                gchain.run("log", self)
            except Exception:
                log.exception("log phase failed")
        if self.server.access_log_on:
            req = self.req
            access_log.info('%s - "%s %s HTTP/%s" %d upstream=%s route=%s', req.remote_addr, req.method,
                            req.request_uri, req.version, self.resp_status,
                            self.node.addr if self.node else "-", self.route.id if self.route else "-")


# ---------------------------------------------------------------------------------------
# upstream
# ---------------------------------------------------------------------------------------

class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("server", "key", "transport", "parser", "ex", "closed", "requests", "idle_since", "reused",
                 "bytes_in", "status", "hbuf", "hpos", "got_headers", "until_close", "tunnel",
                 "tunnel_client", "dirty", "skip_body", "_ka", "release", "lite")

    def __init__(self, server: ProxyServer, key: tuple[Any, ...]) -> None:
        self.server = server
        self.key = key
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.closed = False
        self.requests = 0
        self.idle_since = 0.0
        self.reused = False
        self.bytes_in = 0
        self.status = 0
        # Bytes of the response head not yet complete (llhttp validates them; we slice the
        # head out at headers-complete instead of taking a Python callback per field).
        self.hbuf = b""
        self.hpos = 0
        self.got_headers = False
        self.until_close = False
        self.tunnel = False
        self.tunnel_client: ClientConnection | None = None
        self.dirty = False
        self.skip_body = False
        self._ka = True
        self.release = 0   # >0: return to the pool (of that size) once the current read is parsed
        self.lite: Any = None   # callback-less llhttp parser of the fast path (see _lite_response)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel:
            c = self.tunnel_client
            if c is not None:
                c.close()
            return
        ex = self.ex
        if ex is not None:
            ex.on_upstream_lost(self, exc)
            if not ex.finished:
                return
            ex.flush()

    def pause_writing(self) -> None:
        c = self.tunnel_client if self.tunnel else (self.ex.conn if self.ex is not None else None)
        if c is not None:
            c.pause_read(P_UPSTREAM)

    def resume_writing(self) -> None:
        c = self.tunnel_client if self.tunnel else (self.ex.conn if self.ex is not None else None)
        if c is not None:
            c.resume_read(P_UPSTREAM)

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            c = self.tunnel_client
            if c is not None:
                c.transport.write(data)
            return
        ex = self.ex
        if ex is None:
            # Bytes on an idle connection (e.g. a second response to one request): unusable.
            self.dirty = True
            self.transport.close()
            return
        if not self.got_headers and not self.hbuf and ex.lite_resp and self._lite_response(ex, data):
            if self.release:
                self._release()
            return
        self.bytes_in += len(data)
        if not self.got_headers:
            self.hbuf = self.hbuf + data if self.hbuf else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            ex.on_resp_upgrade(self, data[e.args[0]:])
            return
        except httptools.HttpParserCallbackError as e:
            if self.ex is None:  # junk after a complete response: never reuse this connection
                self.dirty = True
            else:
                log.error("upstream response handling failed", exc_info=e.__context__)
                ex.on_upstream_protocol_error(self, str(e.__context__))
                return
        except httptools.HttpParserError as e:
            if self.ex is None:
                self.dirty = True
            else:
                ex.on_upstream_protocol_error(self, str(e))
                return
        if not self.got_headers and len(self.hbuf) - self.hpos > MAX_RESP_HEAD:
            # still no end of head after this many bytes (the limit llhttp does not have)
            ex.on_upstream_protocol_error(self, "response head too large")
            return
        if self.skip_body:
            # Response to HEAD: llhttp cannot be told to skip the body, so the message was
            # completed by us at headers-complete; start a clean parser for the next one.
            self.skip_body = False
            self.got_headers = False
            self.parser = httptools.HttpResponseParser(self)
        if self.release:
            self._release()
        elif ex.out:
            ex.flush()

    def _release(self) -> None:
        """The exchange asked for pooling and the read is fully parsed: pool or close."""
        size = self.release
        self.release = 0
        if self.dirty or self.closed:
            self.transport.close()
        else:
            self.server.pool.put(self, size, self.server.loop.time())

    def _lite_response(self, ex: Exchange, data: bytes) -> bool:
        """Fast path: the read is exactly one complete HTTP/1.1 response with Content-Length.

        Validated by a callback-less llhttp parser; anything else (chunked, interim or
        body-less statuses, partial or extra bytes, invalid bytes) returns False before any
        state changed and goes through the full parser, which answers as it always does."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or data[:9] != b"HTTP/1.1 " or end > MAX_RESP_HEAD:
            return False
        code = data[9:12]
        if not code.isdigit() or data[12:13] not in (b" ", b"\r"):
            return False
        status = int(code)
        if status < 200 or status == 204 or status == 304:
            return False
        head = data[:end + 2]
        lh = head.lower()
        i = lh.find(b"\r\ncontent-length:")
        if i < 0 or b"\r\ntransfer-encoding" in lh:
            return False
        i += 17
        cl = lh[i:lh.find(b"\r\n", i)].strip(b" \t")
        if not cl.isdigit() or len(data) != end + 4 + int(cl):
            return False
        self.lite = _validated(self.lite, httptools.HttpResponseParser, data)
        if self.lite is None:
            return False
        self.bytes_in += len(data)
        self.status = status
        self.server.fast_responses += 1
        i = lh.find(b"\r\nconnection:")
        self._ka = i < 0 or b"close" not in lh[i:lh.find(b"\r\n", i + 13)]
        ex.on_resp_head(self, status, head, len(data) - end - 4, False, complete=True, lower=lh)
        if len(data) > end + 4:
            ex.on_resp_body(data[end + 4:])
        ex.on_resp_complete(self)
        return True

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self.ex is None:
            # A second response to one request (hardening: only the first is relayed).
            self.dirty = True
        self.until_close = False

    def on_headers_complete(self) -> None:
        ex = self.ex
        parser = self.parser
        status = self.status = parser.get_status_code()
        buf = self.hbuf
        start = self.hpos
        end = buf.find(b"\r\n\r\n", start)
        if ex is None or end < 0:
            self.hbuf = b""
            self.hpos = 0
            return
        if 100 <= status < 200 and status != 101:
            self.hpos = end + 4
            return  # interim response (e.g. 100 Continue): not relayed
        head = buf[start:end + 2]
        self.hbuf = b""
        self.hpos = 0
        self.got_headers = True
        self._ka = parser.should_keep_alive()
        m = _RESP_CL_RE.search(head)
        cl = int(m.group(1)) if m is not None else None
        chunked = cl is None and _RESP_CHUNKED_RE.search(head) is not None
        head_req = ex.req.method == "HEAD"
        if not head_req and cl is None and not chunked and status not in (204, 304):
            self.until_close = True
        ex.on_resp_head(self, status, head, cl, chunked)
        if head_req:
            self.skip_body = True
            ex.on_resp_complete(self)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None and not self.skip_body:
            ex.on_resp_body(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        if self.skip_body:
            return
        status = self.status
        if 100 <= status < 200 and status != 101:
            return
        self.got_headers = False  # the next bytes start a new response head
        if ex is None or status == 101:
            return  # 101 is handled through HttpParserUpgrade
        ex.on_resp_complete(self)
