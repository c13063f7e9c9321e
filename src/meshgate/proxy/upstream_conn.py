"""The upstream side: one keep-alive HTTP/1.1 connection to a node, and the idle pool.

``UpstreamConnection`` parses responses with llhttp and hands them to the exchange that
owns it (``ex``); between requests it sits in :class:`Pool`, keyed per
(upstream, host, port, scheme[, SNI]).  A read holding exactly one complete
``Content-Length`` response takes a fast path checked in one call by the head codec
(``_lite_response``, proxy/codec.py); anything else goes through the full parser.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any, Callable, Final, TYPE_CHECKING

import httptools

from .common import P_UPSTREAM, BatchedTransport, unconnected_write

if TYPE_CHECKING:
    from .exchange import Exchange
    from .http1 import ClientConnection
    from .server import ProxyServer

__all__ = ["Pool", "UpstreamConnection", "MAX_RESP_HEAD"]

log = logging.getLogger("meshgate.proxy")

MAX_RESP_HEAD: Final = 64 * 1024
_RESP_CL_RE = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]+)", re.I)
# llhttp: a response is chunked when the last transfer coding is "chunked"
_RESP_CHUNKED_RE = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r]*chunked[ \t]*(?:\r|$)", re.I)


def _never() -> bool:
    return False


class Pool:
    """Idle keep-alive connections per (scheme, host, port, sni)."""

    __slots__ = ("idle",)

    def __init__(self) -> None:
        # a list per key, used as a stack (compiled code pops and appends lists natively)
        self.idle: dict[tuple[Any, ...], list[UpstreamConnection]] = {}

    def get(self, key: tuple[Any, ...], idle_timeout: float, now: float) -> UpstreamConnection | None:
        """The most recently pooled live connection for ``key``; ``now`` is the loop time."""
        q = self.idle.get(key)
        if not q:
            return None
        while q:
            conn = q.pop()
            if conn.closed or conn.dirty or conn.tx_closing():
                continue
            if now - conn.idle_since > idle_timeout:
                conn.transport.close()
                continue
            return conn
        return None

    def put(self, conn: UpstreamConnection, size: int, now: float) -> None:
        q = self.idle.get(conn.key)
        if q is None:
            q = self.idle[conn.key] = []
        if len(q) >= size:
            conn.transport.close()
            return
        conn.idle_since = now
        q.append(conn)

    def sweep(self, now: float, idle_timeout_for: Callable[[tuple[Any, ...]], float]) -> None:
        for key, q in list(self.idle.items()):
            limit = idle_timeout_for(key)
            keep: list[UpstreamConnection] = []
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



class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("server", "key", "transport", "parser", "ex", "closed", "requests", "idle_since", "reused",
                 "bytes_in", "status", "hbuf", "hpos", "got_headers", "until_close", "tunnel",
                 "tunnel_client", "dirty", "skip_body", "_ka", "release", "h2", "tx", "tx_closing")

    def __init__(self, server: ProxyServer, key: tuple[Any, ...]) -> None:
        self.server = server
        self.key = key
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # the transport's write and is_closing, bound once (each is called per request)
        self.tx: Callable[[bytes], None] = unconnected_write
        self.tx_closing: Callable[[], bool] = _never
        # made when a read first needs it, dropped at close (see ClientConnection.parser)
        self.parser: httptools.HttpResponseParser | None = None
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
        # one stream of an HTTP/2 upstream connection (upstream_h2.py): ``transport`` is the
        # stream, fed the request head as the exchange builds it, the body as it comes, EOF
        self.h2 = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a socket: its writes wait for the end of the loop's turn (common.WriteBatch)
        self.use_transport(BatchedTransport(transport, self.server.writes))  # type: ignore[arg-type]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def use_transport(self, transport: asyncio.Transport) -> None:
        """Write through ``transport`` (the socket's, or an HTTP/2 stream's), its per-request
        calls bound once."""
        self.transport = transport
        self.tx = transport.write
        self.tx_closing = transport.is_closing

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = None
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
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
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
            # completed by us at headers-complete; the next one gets a clean parser.
            self.skip_body = False
            self.got_headers = False
            self.parser = None
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
            self.server.pool.put(self, size, self.server.clock())

    def _lite_response(self, ex: Exchange, data: bytes) -> bool:
        """Fast path: the read is exactly one complete HTTP/1.1 response with Content-Length.

        Validated in one call by the head codec (proxy/codec.py); anything else (chunked,
        interim or body-less statuses, partial or extra bytes, invalid bytes) returns False
        before any state changed and goes through the full parser, which answers as it always
        does."""
        if ex.whole and ex.relay_whole(self, data):
            return True
        server = self.server
        r = server.scan_response(data)
        if type(r) is int:
            return False
        status, cl, keep, head, status_line, fields = r
        self.took_whole(len(data), status, keep)
        ex.on_resp_head(self, status, head, cl, False, complete=True, split=(status_line, fields))
        if cl:
            ex.on_resp_body(data[len(head) + 2:])
        ex.on_resp_complete(self)
        return True

    def took_whole(self, n: int, status: int, keep: bool) -> None:
        """What the llhttp callbacks record of a response, for one the fast path took whole
        (``n`` bytes): before the exchange completes, which pools by ``_ka``."""
        self.bytes_in += n
        self.status = status
        self._ka = keep
        self.server.fast_responses += 1

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self.ex is None:
            # A second response to one request (hardening: only the first is relayed).
            self.dirty = True
        self.until_close = False

    def on_headers_complete(self) -> None:
        ex = self.ex
        parser = self.parser
        assert parser is not None   # it is calling us
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

