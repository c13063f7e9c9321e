"""HTTP/2 downstream: the same requests, routes and plugins as HTTP/1, over one multiplexed connection.

Theory of operation
-------------------
A connection becomes HTTP/2 in one of two ways, both decided by :class:`~.http1.ClientConnection`
before it parsed anything (``apisix.enable_http2``, on by default as in APISIX 3.9+):

* TLS with ALPN ``h2`` (the listener offers ``h2, http/1.1``);
* plaintext with prior knowledge: the first bytes are the client connection preface
  (``PRI * HTTP/2.0``), as nginx's ``http2 on`` accepts it.  ``Upgrade: h2c`` is never honoured
  (hardening case 38: h2c smuggling).

:class:`H2Connection` then takes the transport over.  Framing, HPACK and flow-control windows are the
``h2`` library's state machine (PyPI ``h2``, sans-IO); header validation is ours, field by field, so
one parse decides everything (hardening rule 1) and a malformed request is a stream error
(RST_STREAM PROTOCOL_ERROR) that leaves the other streams alone.  Each stream is an
:class:`H2Stream`, the :class:`~.exchange.Downstream` of one :class:`~.exchange.Exchange`: the
exchange routes, runs the plugins and proxies exactly as it does for HTTP/1 (the upstream side is
HTTP/1.1; a request body of unknown length goes upstream chunked).

Limits and defences (hardening.md section 2 and cases 39-40):

* SETTINGS: 100 concurrent streams, 64 KiB stream window, 1 MiB connection window, 60 KiB header
  list; the HPACK decoder refuses bigger blocks (``DenialOfServiceError``) even before the client
  acknowledged the settings; CONTINUATION frames are bounded by the library (64 per block) and by
  the header-list cap; our HPACK encoder never grows past 4 KiB whatever the client allows.
* Rapid reset (CVE-2023-44487): streams the client resets before their response completed are
  counted; from 100 on, when they are half the streams opened, GOAWAY ENHANCE_YOUR_CALM and close.
* Control-frame floods (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, empty DATA without END_STREAM):
  more than 1,000 in 10 s on one connection -> GOAWAY ENHANCE_YOUR_CALM and close; a peer that
  does not read its acknowledgements hits the send timeout like an HTTP/1 client.
* Every response queue is bounded: past 256 KiB waiting for the client's window, the stream's
  upstream is paused (no unbounded buffering).
* A protocol error (bad frame, flow-control violation, content-length mismatch, too many streams)
  is a connection error: GOAWAY with its code, then close; the streams in flight are aborted.

Timeouts run from the worker's sweeper (``check_deadline``): ``keepalive_timeout`` with no open
stream, ``client_body_timeout`` per stream waiting for body bytes, ``send_timeout`` while the
client does not read.  Draining sends GOAWAY once and closes when the last stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from ..errors import ProtocolError
from ..http import Request, parse_target
from .common import (HTML, S_CLOSED, S_IDLE, S_WAIT, ProxySettings, date_server_lines, error_body, idle_limit,
                     linger_close)
from .exchange import Downstream, Exchange, forwarded_tail
from .upstream_h2 import send_window
from .http1 import H_CL, H_CONNECTION, H_HOST, H_TE, H_UPGRADE, MAX_HEADER_BYTES, MAX_HEADERS, identity_header, \
    parse_host, real_ip, stamp

if TYPE_CHECKING:
    from .http1 import ClientConnection
    from .server import ProxyServer
    from .tls import TLSConnection
    from .upstream_conn import UpstreamConnection

__all__ = ["H2Connection", "H2Stream", "PREFACE"]

log = logging.getLogger("meshgate.proxy")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

MAX_STREAMS = 100
STREAM_WINDOW = 65535
CONN_WINDOW = 1 << 20
ENCODER_TABLE = 4096
STREAM_HIGH = 256 * 1024          # response bytes queued on a stream before its upstream pauses
RESET_FLOOD_MIN = 100             # premature resets before the ratio test applies
CONTROL_BUDGET = 1000             # control frames per CONTROL_WINDOW seconds
CONTROL_WINDOW = 10.0

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")      # a lower-case field name (RFC 9113 8.2.1)
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
_CL = re.compile(rb"[0-9]{1,19}")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# connection-specific fields: a message carrying one is malformed (RFC 9113 8.2.2)
_CONN_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# response fields HTTP/2 does not carry (the exchange already dropped the HTTP/1 hop-by-hop ones)
_RESP_SKIP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"})

_PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


class _Malformed(Exception):
    """A malformed request: a stream error of type PROTOCOL_ERROR (RFC 9113 8.1.1)."""


class H2Stream(Downstream):
    """One request/response on an HTTP/2 connection: the Downstream of its exchange."""

    def __init__(self, conn: H2Connection, sid: int) -> None:
        self.h2 = conn
        self.sid = sid
        self.server = conn.server
        # a mesh listener's: its filter chain, the original destination, Envoy's Server value
        self.handle: Any = conn.handle
        self.orig_dst: tuple[str, int] | None = conn.orig_dst
        self.server_name: bytes | None = conn.server_name
        self.peer_ip = conn.peer_ip
        self.peer_trusted = conn.peer_trusted
        self.peer_real_ip_ok = conn.peer_real_ip_ok
        self.fwd_lines = conn.fwd_lines
        self.ex: Exchange | None = None
        self.out: list[bytes] = []       # response bytes waiting for the flow-control window
        self.out_size = 0
        self.end_pending = False         # END_STREAM goes with the last queued byte
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.headers_sent = False
        self.ended = False               # our side is closed (END_STREAM or RST_STREAM sent)
        self.remote_ended = False        # the client's side is closed (END_STREAM received)
        self.reset = False
        self.done = False                # the exchange finished with this stream
        self.reset_after = False         # RST_STREAM NO_ERROR once the response is out
        self.read_pause = 0
        self.unacked = 0                 # request bytes not yet handed back as window
        self.up_paused = False
        self.body_bytes = 0
        self.since = 0.0

    # -- the Downstream interface of exchange.py ----------------------------------------------
    def is_closing(self) -> bool:
        return self.reset or self.h2.closing

    def fwd_tail_for(self, hh: str, req: Request) -> bytes:
        h2 = self.h2   # the cache is the connection's: its streams repeat one Host
        if hh != h2.fwd_host or not hh:
            h2.fwd_host = hh
            h2.fwd_tail = forwarded_tail(hh, req)
        return h2.fwd_tail

    def write(self, data: bytes) -> None:
        if not data or self.ended:
            return
        self.out.append(data)
        self.out_size += len(data)
        self.h2.queue(self)

    def send_continue(self) -> None:
        if not self.ended:
            self.h2.send_headers(self, [(b":status", b"100")], end=False, informational=True)

    def send_local(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"application/json",
                   extra: bytes = b"", head_only: bool = False) -> None:
        if self.ended or self.headers_sent:
            return
        hl: list[tuple[bytes, bytes]] = [(b":status", b"%d" % status)]
        if content_type:
            hl.append((b"content-type", content_type))
        if status not in (204, 304) and (body or not content_type.startswith(b"application/grpc")):
            hl.append((b"content-length", b"%d" % len(body)))
        _add_date_server(hl, self.server_name)
        _add_lines(hl, extra)
        if head_only or not body:
            self.h2.send_headers(self, hl, end=True)
            return
        self.h2.send_headers(self, hl, end=False)
        self.end_pending = True
        self.write(body)

    def response_head(self, ex: Exchange, status_line: bytes, fields: bytes, status: int, cl: int | None,
                      no_body: bool, keep: bool) -> tuple[bytes, bool, bool]:
        hl: list[tuple[bytes, bytes]] = [(b":status", b"%d" % status)]
        for line in fields.split(b"\r\n"):
            if not line:
                continue
            c = line.find(b":")
            name = line[:c].rstrip(b" \t").lower()
            if name in _RESP_SKIP:
                continue
            hl.append((name, line[c + 1:].strip(b" \t")))
        _add_date_server(hl, self.server_name)
        if (status >= 500 or self.server.settings.show_upstream_status) and self.handle is None:
            hl.append((b"x-apisix-upstream-status", b"%d" % ex.upstream_status))
        if cl == 0 and not no_body:
            # an empty body: END_STREAM on HEADERS (a gRPC trailers-only answer must look so)
            self.h2.send_headers(self, hl, end=True)
            return b"", False, True
        if cl is not None and (not no_body or ex.req.method == "HEAD"):
            hl.append((b"content-length", b"%d" % cl))
        self.h2.send_headers(self, hl, end=no_body)
        return b"", False, True

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """Sent with END_STREAM once the body is out (gRPC's grpc-status and trailing metadata)."""
        if not self.ended:
            self.trailers = [(n.lower(), v) for n, v in fields]

    def start_tunnel(self, upstream: UpstreamConnection, early: bytes) -> None:
        # never asked for: an HTTP/2 request carries no Upgrade (it is malformed)
        upstream.transport.close()
        self.close()

    def exchange_done(self, ex: Exchange | None, keep_alive: bool) -> None:
        if self.done:
            return
        self.done = True
        if not self.remote_ended and not self.reset:
            # the response is complete before the request body: once it is sent, RST_STREAM
            # NO_ERROR tells the client to stop sending (RFC 9113 8.1)
            self.reset_after = True
        if not self.ended:
            if self.out:
                self.end_pending = True     # with the last DATA frame, sent by the pump
                self.h2.queue(self)
            else:
                self.h2.end_stream(self)
        elif self.reset_after:
            self.h2.reset_stream(self, h2.errors.ErrorCodes.NO_ERROR)
        self.h2.stream_done(self)

    def pause_read(self, reason: int) -> None:
        self.read_pause |= reason

    def resume_read(self, reason: int) -> None:
        if self.read_pause & reason:
            self.read_pause &= ~reason
            if not self.read_pause and self.unacked:
                n, self.unacked = self.unacked, 0
                self.h2.ack(self, n)

    def close(self) -> None:
        """Abort this stream (an upstream failure after the response started, a plugin error).
        Once the exchange is done, the stream finishes as exchange_done arranged."""
        if self.done:
            return
        self.done = True
        if not self.reset:
            self.h2.reset_stream(self, h2.errors.ErrorCodes.INTERNAL_ERROR)
        self.h2.stream_done(self)

    def is_idle(self) -> bool:
        return self.done


class H2Connection(asyncio.Protocol):
    """One HTTP/2 client connection (see the module doc)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer_ip = ""
        self.peer_port = 0
        self.local_ip = ""
        self.local_port = 0
        self.scheme = "http"
        self.tls: TLSConnection | None = None
        self.peer_trusted = False
        self.peer_real_ip_ok = False
        self.fwd_drop = False
        self.fwd_lines = b""
        self.fwd_host = ""
        self.fwd_tail = b""
        self.special = server.req_special
        self.real_ip_xff = server.real_ip_xff
        self.handle: Any = None
        self.orig_dst: tuple[str, int] | None = None
        self.server_name: bytes | None = None
        self.idle_timeout = -1.0                # as ClientConnection.idle_timeout
        self.closing = False
        self.goaway_sent = False
        self.goaway_last = 0
        self.write_paused = False
        self.write_paused_since = 0.0
        self.streams: dict[int, H2Stream] = {}
        self.requests = 0
        self.state = S_IDLE
        self.since = 0.0
        self.premature_resets = 0
        self.dirty: list[H2Stream] = []       # streams with bytes for the pump
        self.flush_pending = False
        self.control = 0
        self.control_since = 0.0
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False,
                                        normalize_inbound_headers=False, validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        c = self.conn = h2.connection.H2Connection(config=cfg)
        c.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_BYTES,
        })
        # in force now, not only once the client acknowledged our SETTINGS
        c.decoder.max_header_list_size = MAX_HEADER_BYTES

    # -- taking a connection over from the HTTP/1 codec -----------------------------------------
    @classmethod
    def adopt(cls, old: ClientConnection, data: bytes) -> H2Connection:
        """``old``'s transport speaks HTTP/2 from now on; ``data``: bytes already read."""
        self = cls(old.server)
        self.transport = t = old.transport
        self.peer_ip, self.peer_port = old.peer_ip, old.peer_port
        self.local_ip, self.local_port = old.local_ip, old.local_port
        self.scheme, self.tls = old.scheme, old.tls
        self.peer_trusted, self.peer_real_ip_ok = old.peer_trusted, old.peer_real_ip_ok
        self.fwd_drop, self.fwd_lines = old.fwd_drop, old.fwd_lines
        self.handle, self.orig_dst, self.server_name = old.handle, old.orig_dst, old.server_name
        self.idle_timeout = old.idle_timeout
        old.closing = True
        old.state = S_CLOSED
        server = self.server
        server.connections.discard(old)
        server.connections.add(self)
        self.since = self.control_since = server.loop.time()
        t.set_protocol(self)
        c = self.conn
        c.initiate_connection()
        c.increment_flow_control_window(CONN_WINDOW - 65535)
        self.flush()
        if old.read_pause:
            t.resume_reading()
        if data:
            self.data_received(data)
        return self

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.state = S_CLOSED
        self.server.connections.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            st.reset = True
            ex = st.ex
            if ex is not None and not st.done:
                ex.on_client_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.server.loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        for st in list(self.streams.values()):
            if st.out:
                self.send_queued(st)
        self.flush_soon()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            code = getattr(e, "error_code", _PROTOCOL_ERROR)
            if isinstance(e, h2.exceptions.DenialOfServiceError):
                code = _CALM
            self.fail(code, f"http2: {e}")
            return
        try:
            for ev in events:
                self._event(ev)
                if self.closing:
                    return
        except h2.exceptions.ProtocolError as e:
            self.fail(_PROTOCOL_ERROR, f"http2: {e}")
            return
        self.flush_soon()

    def eof_received(self) -> bool | None:
        return None

    # -- events ----------------------------------------------------------------------------
    def _event(self, ev: Any) -> None:
        t = type(ev)
        if t is h2.events.RequestReceived:
            self._request(ev.stream_id, ev.headers, ev.stream_ended is not None)
        elif t is h2.events.DataReceived:
            st = self.streams.get(ev.stream_id)
            if st is None:
                # a stream we reset or answered already: give the window back, drop the bytes
                if ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                return
            if not ev.data and ev.stream_ended is None:
                self._control()
            self._data(st, ev.data, ev.flow_controlled_length)
            if ev.stream_ended is not None:
                self._remote_end(st)
        elif t is h2.events.StreamEnded:
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.remote_ended:
                self._remote_end(st)
        elif t is h2.events.StreamReset:
            self._peer_reset(ev.stream_id)
        elif t is h2.events.WindowUpdated:
            self._control()
            if ev.stream_id:
                st = self.streams.get(ev.stream_id)
                if st is not None and st.out:
                    self.send_queued(st)
            else:
                for st in list(self.streams.values()):
                    if st.out:
                        self.send_queued(st)
        elif t is h2.events.RemoteSettingsChanged:
            self._control()
            enc = self.conn.encoder
            if enc.header_table_size > ENCODER_TABLE:
                enc.header_table_size = ENCODER_TABLE   # the client allows more; we use 4 KiB
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                for st in list(self.streams.values()):
                    if st.out:
                        self.send_queued(st)
        elif t is h2.events.PingReceived or t is h2.events.PriorityUpdated:
            self._control()
        elif t is h2.events.TrailersReceived:
            st = self.streams.get(ev.stream_id)
            if st is not None:
                err = _check_trailers(ev.headers)
                if err:
                    self._malformed(st, err)
                    return
                if ev.stream_ended is not None and not st.remote_ended:
                    self._remote_end(st)
        elif t is h2.events.ConnectionTerminated:
            # the client's GOAWAY: h2 sends nothing more from here (its state machine is closed)
            self.goaway_sent = True
            self.closing = True
            self.transport.close()

    def _control(self) -> None:
        now = self.server.loop.time()
        if now - self.control_since > CONTROL_WINDOW:
            self.control_since = now
            self.control = 0
        self.control += 1
        if self.control > CONTROL_BUDGET:
            self.fail(_CALM, "http2: control frame flood")

    def _request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        server = self.server
        st = H2Stream(self, sid)
        self.streams[sid] = st
        self.state = S_WAIT
        st.since = server.loop.time()
        if ended:
            st.remote_ended = True
        if self.goaway_sent and sid > self.goaway_last:
            # after our GOAWAY: never processed, the client may retry it elsewhere
            self.reset_stream(st, h2.errors.ErrorCodes.REFUSED_STREAM)
            st.done = True
            self._forget(st)
            return
        try:
            req = self._parse(headers, ended)
        except _Malformed as bad:
            self._malformed(st, str(bad))
            return
        except ProtocolError as perr:
            log.info("client %s: %s %s (stream %d)", self.peer_ip, perr.status, perr.reason, sid)
            self._local_error(st, perr.status)
            return
        self.requests += 1
        server.requests_total += 1
        ex = Exchange(st, req, None)
        st.ex = ex
        if ended:
            ex.req_done = True
        ex.start()

    def _parse(self, headers: list[tuple[bytes, bytes]], ended: bool) -> Request:
        """The request of one HEADERS block, validated as RFC 9113 8.2-8.3 and hardening case 39 say."""
        req = Request()
        fields: list[tuple[bytes, bytes]] = []
        method = scheme = path = authority = None
        host: bytes | None = None
        cookies: list[bytes] | None = None
        regular = False
        special = self.special
        if len(headers) > MAX_HEADERS + 4:
            raise _Malformed("too many header fields")
        for name, value in headers:
            if name[:1] == b":":
                if regular:
                    raise _Malformed("pseudo-header field after a regular one")
                if name not in _PSEUDO:
                    raise _Malformed(f"unknown pseudo-header field {name[:32]!r}")
                if _BAD_VALUE.search(value) is not None:
                    raise _Malformed(f"invalid value of {name.decode()}")
                if name == b":method":
                    if method is not None:
                        raise _Malformed("duplicate :method")
                    method = value
                elif name == b":path":
                    if path is not None:
                        raise _Malformed("duplicate :path")
                    path = value
                elif name == b":scheme":
                    if scheme is not None:
                        raise _Malformed("duplicate :scheme")
                    scheme = value
                else:
                    if authority is not None:
                        raise _Malformed("duplicate :authority")
                    authority = value
                continue
            regular = True
            if _TOKEN.fullmatch(name) is None:
                raise _Malformed(f"invalid header field name {name[:32]!r}")
            if value and _BAD_VALUE.search(value) is not None:
                raise _Malformed(f"invalid value of header field {name[:32]!r}")
            kind = special.get(name)
            if kind is not None:
                if kind == H_HOST:
                    if host is not None:
                        raise ProtocolError(400, "duplicate Host header")
                    host = value
                    continue
                if kind == H_CL:
                    if _CL.fullmatch(value) is None:
                        raise _Malformed("invalid content-length")
                    n = int(value)
                    if req.content_length is not None and req.content_length != n:
                        raise _Malformed("conflicting content-length")
                    req.content_length = n
                    continue
                if kind == H_TE or kind == H_CONNECTION or kind == H_UPGRADE:
                    raise _Malformed(f"connection-specific header field {name.decode()}")
                if not identity_header(req, kind, name, value, self.peer_trusted, self.fwd_drop, self.real_ip_xff):
                    continue
            elif name in _CONN_SPECIFIC:
                raise _Malformed(f"connection-specific header field {name.decode()}")
            elif name == b"te":
                if value.lower() != b"trailers":
                    raise _Malformed("te other than trailers")
                continue   # hop-by-hop: not forwarded to an HTTP/1.1 upstream
            elif name.startswith((b"x-envoy-", b"x-apisix-", b"x-consumer-")):
                continue
            elif name == b"content-type":
                # gRPC (not grpc-web): the gateway's own answers become gRPC statuses
                if value.startswith(b"application/grpc") and (len(value) == 16 or value[16:17] in (b"+", b";")):
                    req.grpc = True
            elif name == b"cookie":
                # crumbs are joined with "; " for an HTTP/1.1 upstream (RFC 9113 8.2.3)
                if cookies is None:
                    cookies = []
                cookies.append(value)
                continue
            fields.append((name, value))
        if len(fields) > MAX_HEADERS:
            raise ProtocolError(431, "too many headers")
        if cookies is not None:
            fields.append((b"cookie", b"; ".join(cookies)))
        if method is None or scheme is None or path is None:
            if method == b"CONNECT":
                raise ProtocolError(405, "CONNECT is not allowed")
            raise _Malformed("missing :method, :scheme or :path")
        if not path:
            raise _Malformed("empty :path")
        if method == b"CONNECT":
            raise ProtocolError(405, "CONNECT is not allowed")
        m = _METHODS.get(method)
        if m is None:
            if _TOKEN.fullmatch(method.lower()) is None or method.upper() != method:
                raise _Malformed("invalid :method")
            m = method.decode("ascii")
        req.method = m
        if path[:1] != b"/":
            # asterisk-form (OPTIONS *) is not served, like the HTTP/1 codec
            raise ProtocolError(400, "invalid :path")
        if authority is not None and host is not None and authority != host:
            raise ProtocolError(400, ":authority and host differ")
        http_host = authority if authority is not None else host
        if not http_host:
            raise ProtocolError(400, "missing :authority")
        req.version = "2.0"
        req.target = path
        t = parse_target(path)
        req.path = t.path
        req.upstream_path = t.upstream_path
        req.query = t.query
        req.http_host = http_host.decode("latin-1")
        req.host = parse_host(req.http_host)
        req.headers = fields
        limit = self.server.settings.client_max_body_size
        if limit and req.content_length is not None and req.content_length > limit:
            raise ProtocolError(413, "request body too large")
        if not ended and req.content_length is None:
            req.chunked = True      # length unknown: chunked to the HTTP/1.1 upstream
        stamp(req, self.peer_ip, self.peer_port, self.local_ip, self.local_port, self.scheme, self.tls)
        if self.peer_real_ip_ok and req.real_ip is not None:
            real = real_ip(req.real_ip)
            if real is not None:
                req.remote_addr = real
        req.start_time = self.server.loop.time()
        return req

    def _data(self, st: H2Stream, data: bytes, flow_len: int) -> None:
        ex = st.ex
        if ex is None or st.done:
            self.ack(st, flow_len)
            return
        st.since = self.server.loop.time()
        if data:
            st.body_bytes += len(data)
            limit = self.server.settings.client_max_body_size
            if limit and st.body_bytes > limit:
                self.ack(st, flow_len)
                self._body_error(st, 413, "request body too large")
                return
            ex.on_req_body(data)
        if st.read_pause:
            st.unacked += flow_len
        else:
            self.ack(st, flow_len)

    def _remote_end(self, st: H2Stream) -> None:
        st.remote_ended = True
        ex = st.ex
        if ex is not None and not ex.req_done and not st.done:
            ex.on_req_complete()
        self.stream_done(st)

    def _peer_reset(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        st.reset = True
        ex = st.ex
        if not st.done:
            # reset before its response completed: what a rapid-reset attack does
            self.premature_resets += 1
            st.done = True
            if ex is not None:
                ex.on_client_lost()
            if self.premature_resets >= RESET_FLOOD_MIN and self.premature_resets * 2 >= self.requests:
                self.fail(_CALM, "http2: too many streams reset by the client (rapid reset)")
                return
        self._forget(st)

    def _malformed(self, st: H2Stream, why: str) -> None:
        log.info("client %s: malformed HTTP/2 request on stream %d: %s", self.peer_ip, st.sid, why)
        self.reset_stream(st, _PROTOCOL_ERROR)
        ex = st.ex
        if ex is not None and not st.done:
            ex.on_client_lost()
        st.done = True
        self._forget(st)

    def _local_error(self, st: H2Stream, status: int) -> None:
        """An error answer before any exchange exists (the HTTP/1 codec's protocol_error)."""
        st.send_local(status, error_body(status), close=False, content_type=HTML)
        st.exchange_done(None, False)

    def _body_error(self, st: H2Stream, status: int, reason: str) -> None:
        log.info("client %s: %s %s (stream %d)", self.peer_ip, status, reason, st.sid)
        ex = st.ex
        if ex is not None and not ex.resp_started:
            ex.abort_upstream()
            ex.respond(status, error_body(status), content_type=HTML)
        else:
            st.close()

    # -- sending ---------------------------------------------------------------------------
    def send_headers(self, st: H2Stream, hl: list[tuple[bytes, bytes]], *, end: bool,
                     informational: bool = False) -> None:
        if st.ended or self.closing:
            return
        try:
            self.conn.send_headers(st.sid, hl, end_stream=end)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            st.ended = True
            return
        if not informational:
            st.headers_sent = True
        if end:
            st.ended = True
        self.flush_soon()

    def send_queued(self, st: H2Stream) -> None:
        """Send what the windows allow of ``st``'s queued response bytes."""
        if st.ended or self.closing:
            st.out.clear()
            st.out_size = 0
            return
        c = self.conn
        if not self.write_paused:
            out = st.out
            try:
                sent, ended = send_window(c, st.sid, out, st.end_pending and st.trailers is None)
                st.out_size -= sent
                if ended:
                    st.ended = True
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                st.ended = True
                st.out.clear()
                st.out_size = 0
            if not out and st.end_pending and not st.ended:
                self.end_stream(st)     # the trailers
            self.flush_soon()
        self._backpressure(st)
        if st.ended and st.done:
            if st.reset_after:
                self.reset_stream(st, h2.errors.ErrorCodes.NO_ERROR)
            self.stream_done(st)

    def end_stream(self, st: H2Stream) -> None:
        """END_STREAM now (with the trailers when there are some)."""
        if st.ended or self.closing:
            return
        st.ended = True
        st.end_pending = False
        try:
            if st.trailers is not None:
                self.conn.send_headers(st.sid, st.trailers, end_stream=True)
            else:
                self.conn.end_stream(st.sid)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass
        self.flush_soon()
        if st.done and st.reset_after:
            self.reset_stream(st, h2.errors.ErrorCodes.NO_ERROR)

    def reset_stream(self, st: H2Stream, code: int) -> None:
        if st.reset:
            return
        st.reset = True
        st.ended = True
        st.out.clear()
        st.out_size = 0
        if self.closing:
            return
        try:
            self.conn.reset_stream(st.sid, code)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass
        self.flush_soon()

    def ack(self, st: H2Stream, n: int) -> None:
        if n and not self.closing:
            try:
                self.conn.acknowledge_received_data(n, st.sid)
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                return
            self.flush_soon()

    def stream_done(self, st: H2Stream) -> None:
        """Forget ``st`` once the exchange is done with it and both sides are closed."""
        if st.done and (st.reset or (st.ended and st.remote_ended)):
            self._forget(st)

    def _forget(self, st: H2Stream) -> None:
        if self.streams.pop(st.sid, None) is None:
            return
        if not self.streams:
            self.state = S_IDLE
            self.since = self.server.loop.time()
            if self.goaway_sent:
                self.close()

    def queue(self, st: H2Stream) -> None:
        """``st`` has response bytes to send: the pump sends them with everything else queued in
        this loop iteration (one write for many streams; the last DATA frame carries END_STREAM)."""
        self.dirty.append(st)
        self._backpressure(st)
        self.flush_soon()

    @staticmethod
    def _backpressure(st: H2Stream) -> None:
        """Pause ``st``'s upstream while more than STREAM_HIGH bytes wait for the client; resume
        it once they went out."""
        ex = st.ex
        up = ex.upstream if ex is not None else None
        if st.out_size > STREAM_HIGH:
            if not st.up_paused and up is not None and not up.closed:
                st.up_paused = True
                up.transport.pause_reading()
        elif st.up_paused:
            st.up_paused = False
            if up is not None and not up.closed:
                up.transport.resume_reading()

    def flush_soon(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            self.server.loop.call_soon(self._pump)

    def _pump(self) -> None:
        # (flush_pending stays set meanwhile: what is queued now goes out in this write)
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for st in dirty:
                if st.out or st.end_pending:
                    self.send_queued(st)
        self.flush_pending = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def fail(self, code: int, reason: str) -> None:
        """A connection error: GOAWAY with ``code``, abort the streams, close."""
        log.info("client %s: %s", self.peer_ip, reason)
        if self.closing:
            return
        try:
            self.conn.close_connection(error_code=code)
            self.flush()
        except h2.exceptions.ProtocolError:
            pass
        self.closing = True
        if code == _CALM:
            self.transport.close()      # an abusive peer: no lingering on its bytes
        else:
            linger_close(self.transport, self.server.loop)
            # it serves nothing more: a drain does not wait for the lingering to end
            self.server.connections.discard(self)

    def goaway(self) -> None:
        """Graceful: GOAWAY NO_ERROR naming the last stream taken; the streams up to it finish and
        the connection closes when the last one ends.  (Written as a raw frame: the h2 state
        machine closes a connection that sent GOAWAY, which would cut the streams short.)"""
        if self.goaway_sent or self.closing:
            return
        self.goaway_sent = True
        self.goaway_last = self.conn.highest_inbound_stream_id
        self._pump()
        f = GoAwayFrame(0)
        f.last_stream_id = self.goaway_last
        f.error_code = h2.errors.ErrorCodes.NO_ERROR
        self.transport.write(f.serialize())
        if not self.streams:
            self.close()

    def close(self) -> None:
        if not self.goaway_sent and not self.closing:
            self.goaway()
            return
        if not self.closing:
            self._pump()          # what is queued goes out before the close
        self.closing = True
        self.transport.close()

    def check_deadline(self, now: float, s: ProxySettings) -> None:
        if self.closing:
            return
        if self.write_paused and now - self.write_paused_since > s.send_timeout:
            log.info("client %s: send timeout", self.peer_ip)
            self.closing = True
            self.transport.abort()
            return
        if self.server.draining and not self.goaway_sent:
            self.goaway()
            return
        if not self.streams:
            if now - self.since > idle_limit(self.idle_timeout, s):
                self.close()
            return
        for st in list(self.streams.values()):
            ex = st.ex
            if ex is not None and not st.remote_ended and not st.done and not st.read_pause \
                    and now - st.since > s.client_body_timeout:
                self._body_error(st, 408, "client body timeout")


def _check_trailers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Request trailers are read (validated) and not forwarded: an HTTP/1.1 upstream gets none."""
    for name, value in headers:
        if name[:1] == b":":
            return "pseudo-header field in trailers"
        if _TOKEN.fullmatch(name) is None or (value and _BAD_VALUE.search(value) is not None):
            return "invalid trailer field"
    return None


def _add_date_server(hl: list[tuple[bytes, bytes]], server_name: bytes | None) -> None:
    for line in date_server_lines(server_name).split(b"\r\n"):
        if line:
            c = line.find(b":")
            hl.append((line[:c].lower(), line[c + 1:].strip(b" ")))


def _add_lines(hl: list[tuple[bytes, bytes]], extra: bytes) -> None:
    """``Name: value\\r\\n`` lines (a local answer's extra fields) as HTTP/2 fields."""
    for line in extra.split(b"\r\n"):
        if not line:
            continue
        c = line.find(b":")
        name = line[:c].strip(b" \t").lower()
        if name and name not in _RESP_SKIP and name not in (b"content-length", b"content-type"):
            hl.append((name, line[c + 1:].strip(b" \t")))

