"""HTTP/2 to the upstream: ``scheme: grpc`` / ``grpcs`` (APISIX's grpc_pass), one multiplexed connection.

Theory of operation
-------------------
An :class:`H2Upstream` is one client connection (``h2`` state machine) to one node, shared by up to
the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` requests at once; :class:`H2Pool` keeps them per
pool key (upstream, node, scheme, SNI) and closes those idle past the upstream's keepalive idle
timeout.

To the exchange each request is an ordinary :class:`~.upstream_conn.UpstreamConnection` (so its
code and its compiled fast paths stay as they are) whose ``h2`` flag is set and whose ``transport``
is a :class:`StreamTransport`: the exchange writes the request head it built for HTTP/1.1, which the
stream turns into HEADERS (request line -> ``:method``/``:path``, Host -> ``:authority``,
hop-by-hop fields dropped, ``te: trailers`` as gRPC requires), then the body as it comes (DATA,
within the peer's flow-control windows, the client paused while more than 256 KiB wait), then
``write_eof()`` (END_STREAM).  ``close()`` cancels the stream (RST_STREAM CANCEL) unless it is over.

The response comes back through the exchange's usual calls: ``on_resp_head`` with an HTTP/1.1-style
head made of the response fields, ``on_resp_body`` per DATA frame (the window is handed back once
the client side took the bytes: a paused client pauses the stream), ``on_resp_trailers`` (gRPC's
``grpc-status``/``grpc-message`` and the server's trailing metadata), then ``on_resp_complete``.  A
reset stream, a GOAWAY that excludes it, or a lost connection is ``connection_lost`` of that
stream's UpstreamConnection, which the exchange handles as any upstream failure (retry before any
byte went to the client, else abort).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .common import P_UPSTREAM
from .upstream_conn import UpstreamConnection

if TYPE_CHECKING:
    from .server import ProxyServer

__all__ = ["H2Upstream", "H2Pool", "StreamTransport", "send_window"]

log = logging.getLogger("meshgate.proxy")

STREAM_WINDOW = 1 << 20
CONN_WINDOW = 4 << 20
SEND_HIGH = 256 * 1024
# request fields never sent over HTTP/2 (connection-specific, RFC 9113 8.2.2) or re-made here
_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te",
                   b"host", b"http2-settings"})


def send_window(c: h2.connection.H2Connection, sid: int, out: list[bytes], end: bool) -> tuple[int, bool]:
    """Send the queued ``out`` of stream ``sid`` as DATA frames, as far as the flow-control windows
    and the frame size allow (what is left stays queued).  ``end``: END_STREAM goes with the last
    queued byte.  Returns (bytes sent, END_STREAM sent)."""
    sent = 0
    while out:
        window = c.local_flow_control_window(sid)
        if window <= 0:
            break
        chunk = out[0]
        n = min(window, c.max_outbound_frame_size)
        if len(chunk) > n:
            out[0] = chunk[n:]
            chunk = chunk[:n]
        else:
            out.pop(0)
        sent += len(chunk)
        last = end and not out
        c.send_data(sid, chunk, end_stream=last)
        if last:
            return sent, True
    return sent, False


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class StreamTransport:
    """One request stream, as the exchange's ``conn.transport`` (see the module doc)."""

    def __init__(self, up: H2Upstream, conn: UpstreamConnection) -> None:
        self.up = up
        self.conn = conn
        self.sid = 0
        self.head = b""                  # the request head until it is complete
        self.head_done = False
        self.out: list[bytes] = []       # body bytes waiting for the window
        self.out_size = 0
        self.eof = False                 # END_STREAM once ``out`` is sent
        self.ended = False               # END_STREAM (or RST_STREAM) sent
        self.finished = False            # the response is complete, or the stream was reset
        self.paused = False              # the client side is full: hold the window updates
        self.unacked = 0
        self.client_paused = False

    # -- what the exchange calls on a transport ---------------------------------------------
    def write(self, data: bytes) -> None:
        if self.finished or not data:
            return
        if not self.head_done:
            buf = self.head + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.head = buf
                return
            self.head = b""
            self.head_done = True
            self.up.open(self, _headers(buf[:end], self.up.scheme))
            data = buf[end + 4:]
            if not data:
                return
        self.out.append(data)
        self.out_size += len(data)
        self.up.send_body(self)

    def writelines(self, data: Any) -> None:
        for d in data:
            self.write(d)

    def write_eof(self) -> None:
        if self.finished or self.eof:
            return
        self.eof = True
        if self.head_done:
            self.up.send_body(self)

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.up.cancel(self)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.finished

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.unacked:
                n, self.unacked = self.unacked, 0
                self.up.ack(self, n)

    def get_write_buffer_size(self) -> int:
        return self.out_size

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.up.transport.get_extra_info(name, default) if self.up.transport is not None else default


def _headers(head: bytes, scheme: str) -> list[tuple[bytes, bytes]]:
    """The HTTP/1.1 head the exchange built, as HTTP/2 request fields."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.rpartition(b" ")[0]
    authority = b""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        c = line.find(b":")
        name = line[:c].lower()
        value = line[c + 1:].strip(b" \t")
        if name == b"host":
            authority = value
        elif name not in _DROP:
            fields.append((name, value))
    return [(b":method", method), (b":scheme", b"https" if scheme in ("grpcs", "https") else b"http"), (b":path", target),
            (b":authority", authority), (b"te", b"trailers"), *fields]


class H2Upstream(asyncio.Protocol):
    """One HTTP/2 connection to an upstream node, shared by its requests."""

    def __init__(self, server: ProxyServer, key: tuple[Any, ...], scheme: str) -> None:
        self.server = server
        self.key = key
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                        normalize_outbound_headers=False, validate_inbound_headers=True,
                                        normalize_inbound_headers=False)
        c = self.conn = h2.connection.H2Connection(config=cfg)
        c.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        })
        c.decoder.max_header_list_size = 64 * 1024
        self.streams: dict[int, StreamTransport] = {}
        self.pending = 0                 # streams handed out whose head is not sent yet
        self.closed = False
        self.goaway = False              # no new streams (the peer's GOAWAY, or ours)
        self.idle_since = server.loop.time()
        self.write_paused = False

    # -- pool side ------------------------------------------------------------------------------
    def capacity(self) -> int:
        if self.closed or self.goaway:
            return 0
        limit = self.conn.remote_settings.max_concurrent_streams
        return limit - len(self.streams) - self.pending

    def stream(self) -> UpstreamConnection:
        """A new request on this connection, as the exchange's UpstreamConnection."""
        uc = UpstreamConnection(self.server, self.key)
        uc.h2 = True
        uc._ka = False       # never pooled by the exchange: the stream ends with its response
        uc.use_transport(StreamTransport(self, uc))  # type: ignore[arg-type]
        self.pending += 1
        return uc

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        c = self.conn
        c.initiate_connection()
        c.increment_flow_control_window(CONN_WINDOW - 65535)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.h2pool.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            self._lost(st, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for st in list(self.streams.values()):
            if st.out or (st.eof and not st.ended):
                self.send_body(st)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("upstream %s: HTTP/2 protocol error: %s", self.key[1:3], e)
            self._fail()
            return
        for ev in events:
            self._event(ev)
        self.flush()

    def _event(self, ev: Any) -> None:
        t = type(ev)
        if t is h2.events.ResponseReceived:
            st = self.streams.get(ev.stream_id)
            if st is not None:
                self._response(st, ev.headers, ev.stream_ended is not None)
        elif t is h2.events.DataReceived:
            st = self.streams.get(ev.stream_id)
            if st is None:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                return
            uc = st.conn
            ex = uc.ex
            uc.bytes_in += len(ev.data)
            if ex is not None and ev.data:
                ex.on_resp_body(ev.data)
                ex.flush()
            if st.paused:
                st.unacked += ev.flow_controlled_length
            else:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.stream_ended is not None:
                self._complete(st)
        elif t is h2.events.TrailersReceived:
            st = self.streams.get(ev.stream_id)
            if st is not None:
                ex = st.conn.ex
                if ex is not None:
                    ex.on_resp_trailers(st.conn, [(n, v) for n, v in ev.headers if n[:1] != b":"])
                if ev.stream_ended is not None:
                    self._complete(st)
        elif t is h2.events.StreamEnded:
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.finished:
                self._complete(st)
        elif t is h2.events.StreamReset:
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                self._lost(st, ConnectionResetError(f"stream reset by the upstream ({ev.error_code!s})"))
        elif t is h2.events.WindowUpdated or t is h2.events.RemoteSettingsChanged:
            for st in list(self.streams.values()):
                if st.out or (st.eof and not st.ended):
                    self.send_body(st)
        elif t is h2.events.ConnectionTerminated:
            # GOAWAY: streams above last_stream_id were never processed (retry-safe)
            self.goaway = True
            self.server.h2pool.discard(self)
            last = ev.last_stream_id if ev.last_stream_id is not None else 0
            for sid in [s for s in self.streams if s > last]:
                st = self.streams.pop(sid)
                self._lost(st, ConnectionResetError("upstream sent GOAWAY"))
            if not self.streams and self.transport is not None:
                self.transport.close()
        elif t is h2.events.InformationalResponseReceived:
            pass                         # 100 Continue & co.: not relayed (as over HTTP/1.1)

    def _response(self, st: StreamTransport, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        uc = st.conn
        ex = uc.ex
        if ex is None:
            return
        status = 0
        parts: list[bytes] = []
        cl: int | None = None
        for n, v in headers:
            if n == b":status":
                status = int(v)
            elif n[:1] != b":":
                parts.append(n + b": " + v + b"\r\n")
                if n == b"content-length" and v.isdigit():
                    cl = int(v)
        uc.status = status
        uc.got_headers = True
        if ended and cl is None:
            cl = 0
        head = b"HTTP/1.1 %d %s\r\n" % (status, _reason(status)) + b"".join(parts)
        ex.on_resp_head(uc, status, head, cl, False, complete=ended)
        if ended:
            self._complete(st)
        else:
            ex.flush()

    def _complete(self, st: StreamTransport) -> None:
        if st.finished and st.sid not in self.streams:
            return
        st.finished = True
        self.streams.pop(st.sid, None)
        if not self.streams:
            self.idle_since = self.server.loop.time()
        uc = st.conn
        ex = uc.ex
        if ex is not None:
            if not st.ended:
                # the response is complete before the request: the request stream is cancelled
                try:
                    self.conn.reset_stream(st.sid, h2.errors.ErrorCodes.NO_ERROR)
                except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                    pass
                st.ended = True
            ex.on_resp_complete(uc)
            ex.flush()
        self._client_resume(st)

    def _lost(self, st: StreamTransport, exc: Exception | None) -> None:
        st.finished = True
        st.ended = True
        self._client_resume(st)
        st.conn.connection_lost(exc)

    def _fail(self) -> None:
        self.closed = True
        self.server.h2pool.discard(self)
        if self.transport is not None:
            self.transport.close()

    # -- sending ---------------------------------------------------------------------------------
    def open(self, st: StreamTransport, headers: list[tuple[bytes, bytes]]) -> None:
        self.pending -= 1
        if self.closed:
            self._lost(st, ConnectionResetError("upstream connection closed"))
            return
        c = self.conn
        try:
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, headers, end_stream=False)
        except h2.exceptions.ProtocolError as e:
            log.warning("upstream %s: cannot open a stream: %s", self.key[1:3], e)
            self._lost(st, ConnectionResetError(str(e)))
            return
        st.sid = sid
        self.streams[sid] = st
        self.flush()

    def send_body(self, st: StreamTransport) -> None:
        if st.ended or self.closed or not st.sid:
            return
        c = self.conn
        out = st.out
        if not self.write_paused:
            try:
                sent, ended = send_window(c, st.sid, out, st.eof)
                st.out_size -= sent
                if ended:
                    st.ended = True
                if st.eof and not out and not st.ended:
                    c.end_stream(st.sid)
                    st.ended = True
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                st.ended = True
                out.clear()
                st.out_size = 0
            self.flush()
        # back-pressure on the client while the upstream's window keeps bytes here
        ex = st.conn.ex
        if ex is not None:
            if st.out_size > SEND_HIGH and not st.client_paused:
                st.client_paused = True
                ex.conn.pause_read(P_UPSTREAM)
            elif st.out_size <= SEND_HIGH:
                self._client_resume(st)

    def _client_resume(self, st: StreamTransport) -> None:
        if st.client_paused:
            st.client_paused = False
            ex = st.conn.ex
            if ex is not None:
                ex.conn.resume_read(P_UPSTREAM)

    def cancel(self, st: StreamTransport) -> None:
        """The exchange is done with the stream: RST_STREAM CANCEL unless both sides ended."""
        if st.sid and self.streams.pop(st.sid, None) is not None and not self.closed:
            try:
                self.conn.reset_stream(st.sid, h2.errors.ErrorCodes.CANCEL)
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                pass
            self.flush()
        elif not st.sid and not st.head_done:
            self.pending -= 1
        if not self.streams:
            self.idle_since = self.server.loop.time()
        self._client_resume(st)

    def ack(self, st: StreamTransport, n: int) -> None:
        if self.closed or st.sid not in self.streams:
            return
        try:
            self.conn.acknowledge_received_data(n, st.sid)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            return
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.conn.close_connection()
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
            self.transport.close()
        self.closed = True


class H2Pool:
    """The worker's HTTP/2 upstream connections, per pool key."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.conns: dict[tuple[Any, ...], list[H2Upstream]] = {}
        self.connecting: dict[tuple[Any, ...], asyncio.Future[H2Upstream]] = {}

    async def connect(self, key: tuple[Any, ...], scheme: str, host: str, port: int, kw: dict[str, Any]) -> H2Upstream:
        """A connection with room for a stream: requests that need one while it is being made
        share it instead of each opening their own."""
        fut = self.connecting.get(key)
        if fut is not None:
            c = await asyncio.shield(fut)
            if c.capacity() > 0:
                return c
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.connecting[key] = fut
        try:
            _, c = await loop.create_connection(lambda: H2Upstream(self.server, key, scheme), host, port, **kw)
        except BaseException as e:
            if self.connecting.get(key) is fut:
                del self.connecting[key]
            if not fut.done():
                fut.set_exception(e if isinstance(e, Exception) else ConnectionError("connect cancelled"))
                fut.exception()      # retrieved: the waiters get it through shield
            raise
        if self.connecting.get(key) is fut:
            del self.connecting[key]
        self.add(c)
        fut.set_result(c)
        return c

    def get(self, key: tuple[Any, ...]) -> H2Upstream | None:
        """A connection to ``key`` with room for one more stream."""
        for c in self.conns.get(key, ()):
            if c.capacity() > 0:
                return c
        return None

    def add(self, c: H2Upstream) -> None:
        self.conns.setdefault(c.key, []).append(c)

    def discard(self, c: H2Upstream) -> None:
        lst = self.conns.get(c.key)
        if lst is not None and c in lst:
            lst.remove(c)
            if not lst:
                del self.conns[c.key]

    def sweep(self, now: float, idle_timeout_for: Any) -> None:
        for key, lst in list(self.conns.items()):
            limit = idle_timeout_for(key)
            for c in list(lst):
                if not c.streams and not c.pending and now - c.idle_since > limit:
                    self.discard(c)
                    c.close()

    def close_all(self) -> None:
        for lst in list(self.conns.values()):
            for c in list(lst):
                c.close()
        self.conns.clear()
