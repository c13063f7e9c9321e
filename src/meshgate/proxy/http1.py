"""HTTP/1.1 reverse proxy on asyncio.Protocol + llhttp (httptools).

Theory of operation
-------------------
``ClientConnection`` parses the downstream byte stream with llhttp (strict mode) and
adds the checks llhttp leaves to us (hardening.md section 5): exactly one Host on
HTTP/1.1, Transfer-Encoding exactly ``chunked`` (else 501) and never on HTTP/1.0,
header count/size limits (431), request-line limit (414), body limit (413), path
normalisation (one parse, one path).  Any framing error answers 400/501 with
``Connection: close`` and closes: we never resynchronise a broken stream.

Each request becomes an ``Exchange`` (exchange.py: the request's life, shared by every
downstream protocol).  Requests are answered in order: while one is in flight, later
pipelined requests are queued (their bodies buffered, reading paused).  A full write buffer
on one side pauses reading on the other (``pause_writing`` -> ``pause_reading``).

Timeouts are enforced by one sweeper per worker (``server.ProxyServer._sweep``), which
calls ``check_deadline`` here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections import deque
from typing import Any, Callable, Final, TYPE_CHECKING

import httptools

from ..errors import ProtocolError
from ..http import Request, parse_target
from .common import (HTML, BatchedTransport, OWS, P_BUFFER, P_QUEUE, REASONS, S_BODY, S_CLOSED, S_HEAD, S_IDLE, S_TUNNEL, S_WAIT,
                     ProxySettings, date_server_lines, error_body, idle_limit, unconnected_write)
from .exchange import Downstream, Exchange, forwarded_tail
from .headcodec import relayed_as_sent
from .tls import TLSConnection, tls_connection

if TYPE_CHECKING:
    from .server import ProxyServer
    from .upstream_conn import UpstreamConnection

__all__ = ["ClientConnection", "identity_header", "header_tables", "parse_host", "real_ip", "stamp"]

log = logging.getLogger("meshgate.proxy")

# Limits (hardening.md section 2 / Envoy and nginx defaults).
MAX_URL: Final = 8 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES: Final = 60 * 1024
DRAIN_FIRST_REQUEST = 1.0      # while draining, how long a new connection may take to send its request
# Raw bytes of one request head (request line + fields incl. OWS and CRLFs).  httptools
# accumulates a header line until it ends, so this is checked per read, not per field.
MAX_HEAD_RAW: Final = MAX_HEADER_BYTES + 4096
# Chunk framing/extension bytes beyond 16 per chunk + 2 per data byte (Go's rule, CVE-2023-39326).
MAX_CHUNK_EXCESS: Final = 16 * 1024


class ClientConnection(asyncio.Protocol, Downstream):
    __slots__ = ("server", "transport", "parser", "state", "since", "req", "url", "hcount", "hbytes", "host_count",
                 "te", "cl_count", "conn_tokens", "active", "queue", "read_pause", "write_paused", "write_paused_since",
                 "peer_ip", "peer_port", "local_ip", "local_port", "scheme", "requests", "closing", "manual_body",
                 "tunnel_to", "body_bytes", "new_message", "peer_trusted", "peer_real_ip_ok", "fwd_lines", "fwd_host", "fwd_tail", "fwd_drop", "special", "real_ip_xff", "head_done", "head_raw", "chunks", "chunk_excess", "failed", "tls",
                 "handle", "orig_dst", "server_name", "idle_timeout", "sniff", "early", "tx")

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.tx: Callable[[bytes], None] = unconnected_write   # the transport's write, bound once
        # made when a read first needs it (most never do: the codec takes whole heads), and
        # dropped at close: it holds this connection's bound methods, a cycle that would
        # otherwise wait for the cyclic GC with the connection's buffers
        self.parser: httptools.HttpRequestParser | None = None
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
        self.fwd_host = ""
        self.fwd_tail = b""
        self.fwd_drop = False
        self.special = server.req_special
        self.real_ip_xff = server.real_ip_xff
        self.tls: TLSConnection | None = None   # the TLS identity of an https connection
        self.handle: Any = None     # mesh: the filter chain's handle (proxy/mesh.ChainHandle)
        self.orig_dst: tuple[str, int] | None = None   # mesh: the destination before capture
        self.server_name: bytes | None = None   # mesh: the Server header Envoy's HCM would send
        # seconds an idle keep-alive connection is kept; < 0: the gateway's keepalive_timeout
        # (a mesh listener's HCM says its own: Envoy's idle_timeout, 1 h by default)
        self.idle_timeout = -1.0
        self.sniff = False          # apisix.enable_http2 on plaintext: the first bytes may be the h2 preface
        self.early = b""            # the start of a preface, until it is whole

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # every use of the connection goes through the batching transport (common.WriteBatch)
        self.transport = t = BatchedTransport(transport, self.server.writes)  # type: ignore[arg-type]
        self.tx = t.write
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
        local = transport.get_extra_info("sockname")
        if local:
            self.local_ip, self.local_port = local[0], local[1]
        h2 = False
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is not None:
                self.tls = tls_connection(sslobj)
                h2 = sslobj.selected_alpn_protocol() == "h2"   # handed over below, once set up
        elif self.server.settings.http2:
            self.sniff = True       # (a mesh listener's HTTP connection manager is codec AUTO too)
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
        self.fwd_lines = (b"X-Real-IP: %s\r\nX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n"
                          % (ip, ip, self.scheme.encode()))
        # APISIX 3.x trusted_addresses: once configured, a client outside it has every
        # forwarding header it sent dropped before routing and plugins see the request
        self.fwd_drop = bool(server.settings._trusted_nets) and not self.peer_trusted
        self.since = server.clock()
        server.connections.add(self)
        if h2:
            self._become_h2(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = S_CLOSED
        self.closing = True
        self.parser = None
        self.server.connections.discard(self)
        ex = self.active
        if ex is not None:
            ex.on_client_lost()
            self.active = None   # (the exchange keeps its way to us; we drop ours: no cycle)
        if self.tunnel_to is not None and not self.tunnel_to.closed:
            self.tunnel_to.transport.close()
        for q in self.queue:
            q.on_client_lost()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.server.clock()
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
                and self._lite_request(data)):
            return
        if self.sniff:
            # HTTP/2 with prior knowledge (nginx "http2 on" on a plaintext listener)
            self.sniff = False
            if self.requests == 0 and self.new_message:
                if self.early:
                    data = self.early + data
                    self.early = b""
                n = len(data) if len(data) < 24 else 24
                if data[:n] == H2_PREFACE[:n]:
                    if n < 24:
                        self.early = data
                        self.sniff = True
                        return
                    self._become_h2(data)
                    return
        if self.new_message and self.state == S_IDLE:
            # llhttp tolerates repeated SP in the request line; RFC 9112 3 allows exactly one.
            eol = data.find(b"\r\n", 0, MAX_URL + 64)
            if eol > 0 and (b"  " in data[:eol]):
                self.protocol_error(400, "http1.codec_error: bad request line")
                return
        in_body = self.head_done and not self.new_message
        n0, b0, c0 = self.requests, self.body_bytes, self.chunks
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
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

    def _become_h2(self, data: bytes) -> None:
        """The connection speaks HTTP/2 (ALPN h2, or the preface on plaintext): hand it over."""
        from .http2 import H2Connection
        H2Connection.adopt(self, data)

    def _stamp(self, req: Request) -> None:
        """What the request takes from its connection (both parse paths)."""
        stamp(req, self.peer_ip, self.peer_port, self.local_ip, self.local_port, self.scheme, self.tls)

    def _lite_request(self, data: bytes) -> bool:
        """Fast path for the common request: one complete head, no body, nothing else.

        The head codec (proxy/codec.py: native, or the Python reference) validates the read in
        one call and returns the few fields that matter.  Anything this path does not handle
        itself (framing or hop-by-hop fields, forwarding headers, Expect, a missing or repeated
        Host, absolute-form targets, HTTP/1.0, limits) returns False before any state changed,
        and the read goes through the full parser, which answers exactly as it would have: the
        fast path accepts a subset of what the full path accepts and treats it identically.  A
        status from the codec is the full path's answer to a head that breaks the grammar
        (tests/integration/test_fast_path.py and test_codec_fuzz.py run every case both ways).
        """
        server = self.server
        r = server.scan_request(data, server.real_ip_extra)
        if type(r) is int:
            if r:
                server.codec_rejects += 1
                self.protocol_error(r, "http1.codec_error: bad request head")
                return True
            return False
        # typed, so that compiled code takes the items straight out of the tuple (both codecs
        # answer these types; test_codec_fuzz holds them to the same answers)
        head: tuple[str, bytes, str, bytes, bytes] = r
        method, target, http_host, fields, fwd_fields = head
        try:
            t = parse_target(target)
            host = parse_host(http_host)
        except ProtocolError:
            return False
        req = Request()
        req.method = method
        req.target = target
        req.path = t.path
        req.upstream_path = t.upstream_path
        req.query = t.query
        req.http_host = http_host
        req.host = host
        req.fields = fields
        req.fwd_fields = fwd_fields   # what goes upstream as is: every field but Host
        self._stamp(req)
        req.start_time = now = server.clock()
        self.requests += 1
        server.requests_total += 1
        server.fast_requests += 1
        if self.requests >= server.settings.keepalive_requests:
            req.keep_alive = False
        ex = Exchange(self, req, None)
        ex.req_done = True
        # the gateway's own HTTP/1.1 clients (not a mesh listener's) may get whole responses
        # rewritten in one codec call (Exchange.relay_whole)
        ex.whole = self.handle is None and method != "HEAD" and not server.settings.show_upstream_status
        self.state = S_WAIT
        self.since = now
        self.active = ex
        ex.now = now      # what happens before start() returns happens now: no clock reads
        ex.start()
        ex.now = 0.0
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
        self.since = self.server.clock()

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
        if value[-1:] in OWS:
            value = value.rstrip(b" \t")  # llhttp keeps trailing OWS; it is not part of the value
        ln = name.lower()
        kind = self.special.get(ln)
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
        else:
            return identity_header(req, kind, name, value, self.peer_trusted, self.fwd_drop, self.real_ip_xff)
        return True

    def on_headers_complete(self) -> None:
        self.head_done = True
        req = self.req
        assert req is not None
        parser = self.parser
        assert parser is not None   # it is calling us
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
        req.host = parse_host(host)
        if req.method == "CONNECT":
            raise ProtocolError(405, "CONNECT is not allowed")
        if not parser.should_keep_alive():
            req.keep_alive = False
        self._stamp(req)
        server = self.server
        if self.peer_real_ip_ok and req.real_ip is not None:
            real = real_ip(req.real_ip)
            if real is not None:
                req.remote_addr = real
        req.start_time = server.clock()
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
        self.since = self.server.clock()
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
        # parser (made on the next read).  llhttp handed us the body as "upgrade data", so
        # consume it by length.
        self.parser = None
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
        self.since = self.server.clock()
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
        self.send_local(status, error_body(status), close=True, content_type=HTML)
        self.transport.close()

    # -- the Downstream interface of exchange.py ----------------------------------------------
    def write(self, data: bytes) -> None:
        self.tx(data)

    def is_closing(self) -> bool:
        return self.closing

    def fwd_tail_for(self, hh: str, req: Request) -> bytes:
        if hh != self.fwd_host or not hh:
            self.fwd_host = hh
            self.fwd_tail = forwarded_tail(hh, req)
        return self.fwd_tail

    def send_continue(self) -> None:
        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def is_idle(self) -> bool:
        return self.active is None

    def start_tunnel(self, upstream: UpstreamConnection, early: bytes) -> None:
        """101 Switching Protocols: this connection and ``upstream`` become a raw tunnel."""
        upstream.tunnel = True
        upstream.tunnel_client = self
        self.tunnel_to = upstream
        self.state = S_TUNNEL
        self.active = None
        if early:
            upstream.transport.write(early)
        self.resume_read(P_BUFFER)

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """HTTP/1.1 responses go without the upstream's trailers (as nginx's proxy module)."""

    def response_head(self, ex: Exchange, status_line: bytes, fields: bytes, status: int, cl: int | None,
                      no_body: bool, keep: bool) -> tuple[bytes, bool, bool]:
        """The HTTP/1.1 response head for ``ex``: ``status_line`` and ``fields`` ("\r\nName: value"
        each) are the upstream's after filtering; returns (head, chunked body, keep-alive)."""
        chunked = False
        req = ex.req
        if status != ex.upstream_status or not relayed_as_sent(status_line):
            # a plugin changed the status, or the upstream's line is not the canonical HTTP/1.1 one
            parts = status_line.split(b" ", 2)
            reason = parts[2].strip(b" \t") if len(parts) == 3 and status == ex.upstream_status else b""
            status_line = b"HTTP/1.1 %d %s" % (status, reason or REASONS.get(status, "Unknown").encode())
        out = [status_line, fields, b"\r\n"]
        ap = out.append
        ap(date_server_lines(self.server_name))
        if (status >= 500 or self.server.settings.show_upstream_status) and self.handle is None:
            ap(b"X-APISIX-Upstream-Status: %d\r\n" % ex.upstream_status)
        if no_body:
            if cl is not None and req.method == "HEAD":
                ap(b"Content-Length: %d\r\n" % cl)
        elif cl is not None:
            ap(b"Content-Length: %d\r\n" % cl)
        elif req.version == "1.1":
            ap(b"Transfer-Encoding: chunked\r\n")
            chunked = True
        else:
            keep = False  # HTTP/1.0 client, unknown length: delimit by close
        if not keep:
            ap(b"Connection: close\r\n")
        elif req.version == "1.0":
            ap(b"Connection: keep-alive\r\n")
        ap(b"\r\n")
        return b"".join(out), chunked, keep

    def send_local(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"application/json",
                     extra: bytes = b"", head_only: bool = False) -> None:
        reason = REASONS.get(status, "Unknown")
        if not content_type:
            # bare (Envoy's empty local replies): no Content-Type, no body, no length on 204/304
            head = (b"HTTP/1.1 %d %s\r\n%s%s%s%s\r\n"
                    % (status, reason.encode(), date_server_lines(self.server_name),
                       b"" if status in (204, 304) else b"Content-Length: 0\r\n", extra,
                       b"Connection: close\r\n" if close else b""))
            self.tx(head)
            return
        head = (b"HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n"
                % (status, reason.encode(), date_server_lines(self.server_name), content_type, len(body), extra,
                   b"Connection: close\r\n" if close else b""))
        self.tx(head if head_only else head + body)

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
            self.send_local(status, error_body(status), close=True, content_type=HTML)
            self.transport.close()
            return
        self.state = S_IDLE
        self.since = self.server.clock()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
        self.transport.close()

    def check_deadline(self, now: float, s: ProxySettings) -> None:
        st = self.state
        if st == S_IDLE:
            if self.server.draining:
                limit = DRAIN_FIRST_REQUEST
            else:
                limit = idle_limit(self.idle_timeout, s)
            if now - self.since > limit:
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
H_HOST, H_TE, H_CL, H_CONNECTION, H_UPGRADE, H_EXPECT, H_REAL_IP, H_STRIP, H_FORWARDING, H_XFWD = range(10)
_REQ_SPECIAL: dict[bytes, int] = {
    b"host": H_HOST, b"transfer-encoding": H_TE, b"content-length": H_CL, b"connection": H_CONNECTION,
    b"upgrade": H_UPGRADE, b"expect": H_EXPECT, b"x-real-ip": H_REAL_IP,
    # identity headers only the gateway may set (hardening case 37)
    **{h: H_STRIP for h in (b"x-userinfo", b"x-id-token", b"x-access-token", b"x-credential-identifier")},
    # forwarding headers honoured only from trusted_addresses (hardening case 31)
    b"forwarded": H_FORWARDING, b"x-forwarded-prefix": H_FORWARDING,
    # X-Forwarded-For/-Proto/-Host/-Port: dropped from clients outside trusted_addresses (when set)
    **{h: H_XFWD for h in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")},
}
_STRIP_IN_PREFIX = (b"x-envoy-", b"x-apisix-", b"x-consumer-")  # x-consumer-username/-id/-groups...


def stamp(req: Request, peer_ip: str, peer_port: int, local_ip: str, local_port: int, scheme: str,
          tls: TLSConnection | None) -> None:
    """What a request takes from its connection (every downstream codec)."""
    req.remote_addr = peer_ip
    req.remote_port = peer_port
    req.server_addr = local_ip
    req.server_port = local_port
    if scheme != "http":
        req.scheme = scheme
        req.tls = tls


def identity_header(req: Request, kind: int, name: bytes, value: bytes, trusted: bool, fwd_drop: bool,
                    real_ip_xff: bool) -> bool:
    """The request fields every downstream codec treats alike (Expect, the real-IP field, identity
    and forwarding headers; hardening cases 31 and 37); False drops the field.  ``trusted``: the
    peer is in apisix.trusted_addresses; ``fwd_drop``: its forwarding headers are dropped."""
    if kind == H_EXPECT:
        if value.lower() == b"100-continue":
            req.expect_continue = True
    elif kind == H_REAL_IP:
        if req.real_ip is None:
            req.real_ip = value
    elif kind == H_STRIP:
        return False
    elif kind == H_FORWARDING:
        return trusted
    elif kind == H_XFWD:
        # APISIX 3.x: X-Forwarded-Proto/-Host/-Port count only from trusted_addresses; so does
        # X-Forwarded-For once trusted_addresses is set (unset, it is kept and extended)
        if real_ip_xff and name.lower() == b"x-forwarded-for":
            last = value.rsplit(b",", 1)[-1]
            req.real_ip = last   # real_ip_header X-Forwarded-For: the last (nearest) address
        if not trusted:
            if name.lower() != b"x-forwarded-for":
                return False
            if fwd_drop:
                # still readable by plugins as $original_x_forwarded_for (APISIX)
                prev = req.ctx.get("original_x_forwarded_for")
                v = value.decode("latin-1")
                req.ctx["original_x_forwarded_for"] = prev + ", " + v if prev else v
                return False
    return True

_REAL_IP_CACHE: Final[dict[bytes, str | None]] = {}

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def header_tables(real_ip_header: str) -> tuple[dict[bytes, int], bytes]:
    """The special-header table for a worker whose ``nginx_config.http.real_ip_header`` is
    ``real_ip_header`` (nginx: X-Real-IP by default; X-Forwarded-For takes the last address of
    the chain, as nginx's realip does), and the field name the head codec must leave to the full
    path besides its own list (``extra`` of headcodec.scan_request; empty when none)."""
    name = real_ip_header.strip().lower().encode("latin-1")
    if name in (b"", b"x-real-ip"):
        return _REQ_SPECIAL, b""
    table = dict(_REQ_SPECIAL)
    if name != b"x-forwarded-for" and name not in table:
        table[name] = H_REAL_IP
    return table, name


def real_ip(value: bytes) -> str | None:
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


_HOST_CACHE: Final[dict[str, str]] = {}


def parse_host(host: str) -> str:
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


