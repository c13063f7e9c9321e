"""What the proxy's modules share: settings, answer bodies, cached Date/Server lines.

Kept apart from the downstream codecs (``http1``), the request's life (``exchange``) and
the upstream side (``upstream_conn``) so each of those imports only this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from time import time as _wall
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Iterable

from ..http.dates import imf_fixdate

__all__ = ["ProxySettings", "REASONS", "HTML", "NOT_FOUND", "SERVER_HEADER", "error_body", "http_date",
           "date_server_lines", "ip_in", "OWS", "P_QUEUE", "P_UPSTREAM", "P_BUFFER",
           "S_IDLE", "S_HEAD", "S_BODY", "S_WAIT", "S_TUNNEL", "S_CLOSED", "idle_limit", "linger_close", "LINGER",
           "unconnected_write", "WriteBatch", "BatchedTransport", "FLUSH_AT"]

log = logging.getLogger("meshgate.proxy")

SERVER_HEADER: Final = b"Server: APISIX/3.x (meshgate)\r\n"

# client read-pause reasons (bitmask)
P_QUEUE: Final = 1
P_UPSTREAM: Final = 2
P_BUFFER: Final = 4

# connection states (for the timeout sweeper)
S_IDLE: Final = 0
S_HEAD: Final = 1
S_BODY: Final = 2
S_WAIT: Final = 3
S_TUNNEL: Final = 4
S_CLOSED: Final = 5

OWS: Final = (b" ", b"\t")

REASONS: Final = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Not Allowed", 408: "Request Time-out",
    413: "Request Entity Too Large", 414: "Request-URI Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
    504: "Gateway Time-out", 505: "HTTP Version Not Supported",
}


HTML: Final = b"text/html; charset=utf-8"
NOT_FOUND: Final = b'{"error_msg":"404 Route Not Found"}\n'


def idle_limit(own: float, s: ProxySettings) -> float:
    """Seconds a downstream connection may stay idle: its own ``idle_timeout`` (a mesh listener's
    HCM sets it), else (< 0) the gateway's ``keepalive_timeout``."""
    return own if own >= 0.0 else s.keepalive_timeout


LINGER: Final = 2.0     # seconds a connection closed on an error still reads (and drops) what comes


def unconnected_write(data: bytes) -> None:
    """What a connection's bound write is until it has a transport (never called in service)."""
    raise RuntimeError("write before the connection has a transport")


class WriteBatch:
    """The HTTP connections' writes of one event-loop turn, sent when the turn ends.

    On loopback and between machines alike, a write to a peer that is asleep wakes it: in the
    sender's own system call, and across CPUs through an interrupt (on a VM, an exit to the
    hypervisor).  Written as each request is handled, every response and every upstream request
    may pay one.  Kept until the loop has handled every event of its turn (all the requests that
    arrived together), they go out back to back, and a peer woken by the first one is still
    awake for the rest.  Envoy buffers its writes to the end of the dispatcher's turn for the
    same reason.  Nothing waits longer than the turn: the flush is the next callback the loop
    runs, before it polls again.
    """

    __slots__ = ("waiting", "call_soon")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waiting: list[BatchedTransport] = []
        self.call_soon: Callable[..., Any] = loop.call_soon

    def flush(self) -> None:
        waiting = self.waiting
        self.waiting = []
        for t in waiting:
            try:
                t.flush()
            except Exception:   # one connection's failure never costs the others their writes
                log.exception("sending a connection's writes failed")


# Waiting bytes from which a connection's writes go out at once: a body streamed through (many
# reads of one socket in one turn) reaches the socket's buffer, and its flow control
# (pause_writing, which stops reading the other side), as it would without the batching.
FLUSH_AT: Final = 64 * 1024


class BatchedTransport(asyncio.Transport):
    """A connection's transport whose writes wait for the end of the loop's turn (``WriteBatch``).

    Every use of the connection goes through it, so order holds: writes are sent in the order
    made, and ``close``, ``write_eof`` and ``abort`` first send (or, for abort, drop) what is
    waiting.  After those, writes go straight to the socket, as before them.  The rest of the
    transport's interface is the socket's own."""

    __slots__ = ("raw", "batch", "pend", "more", "size", "direct", "raw_write")

    def __init__(self, raw: asyncio.Transport, batch: WriteBatch) -> None:
        self.raw = raw
        self.batch = batch
        self.pend: bytes | None = None          # the first write waiting, then the others
        self.more: list[bytes] | None = None
        self.size = 0                           # bytes waiting
        self.direct = False                     # closed or half-closed: no more waiting
        self.raw_write: Callable[[bytes], None] = raw.write

    def write(self, data: Any) -> None:
        if type(data) is not bytes:
            data = bytes(data)      # the caller may reuse its buffer once write returns
        n = len(data)
        if not n:
            return
        p = self.pend
        if p is not None:
            more = self.more
            if more is None:
                self.more = [data]
            else:
                more.append(data)
            self.size += n
            if self.size >= FLUSH_AT:
                self.flush()        # a stream's bytes: the socket's flow control sees them now
        elif self.direct or n >= FLUSH_AT:
            self.raw_write(data)    # nothing waits before it
        else:
            self.pend = data
            self.size = n
            b = self.batch
            if not b.waiting:
                b.call_soon(b.flush)
            b.waiting.append(self)

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is waiting now."""
        p = self.pend
        if p is None:
            return
        self.pend = None
        self.size = 0
        more = self.more
        try:
            if more is None:
                self.raw_write(p)
            else:
                self.more = None
                more.insert(0, p)
                self.raw.writelines(more)
        except RuntimeError:
            pass    # the socket was closed under it (a reset): what it could not send is lost either way

    def close(self) -> None:
        self.flush()
        self.direct = True
        self.raw.close()

    def write_eof(self) -> None:
        self.flush()
        self.direct = True
        self.raw.write_eof()

    def abort(self) -> None:
        self.pend = None
        self.more = None
        self.size = 0
        self.direct = True
        self.raw.abort()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + self.size

    def can_write_eof(self) -> bool:
        return self.raw.can_write_eof()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.raw.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.raw.get_protocol()


def linger_close(transport: Any, loop: Any) -> None:
    """Close a connection after an error answer (an HTTP/2 GOAWAY) without losing the answer:
    closing a socket with unread bytes makes the kernel send a reset, and the peer may then
    drop what it had not read yet.  So the write side is shut after what is queued (FIN), the
    peer's bytes are read and dropped, and the connection closes when the peer closes or
    ``LINGER`` seconds later (nginx's lingering close).  Transports that cannot half-close
    (TLS) close at once."""
    if transport.is_closing():
        return
    try:
        half = bool(transport.can_write_eof())
    except (AttributeError, NotImplementedError):
        half = False
    if not half:
        transport.close()
        return
    transport.write_eof()
    try:
        transport.resume_reading()
    except (AttributeError, RuntimeError):
        pass
    loop.call_later(LINGER, transport.close)


def error_body(status: int) -> bytes:
    reason = REASONS.get(status, "Error")
    return (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>meshgate</center>\r\n"
            "</body>\r\n</html>\r\n").encode()


class _DateLines:
    """The current second's Date value and Date/Server lines (native attributes when compiled:
    no dict or list lookups per response)."""

    def __init__(self) -> None:
        self.sec = -1
        self.date = b""
        self.lines = b""

    def refresh(self, now: int) -> None:
        self.sec = now
        self.date = d = imf_fixdate(now).encode()
        self.lines = b"Date: " + d + b"\r\n" + SERVER_HEADER


_DATE: Final = _DateLines()


def http_date() -> bytes:
    now = int(_wall())
    if _DATE.sec != now:
        _DATE.refresh(now)
    return _DATE.date


def date_server_lines(server: bytes | None = None) -> bytes:
    """``Date`` and ``Server`` lines as the gateway sends them (nginx replaces the upstream's);
    ``server``: another Server value (a mesh listener's: Envoy's HCM ``server_name``)."""
    now = int(_wall())
    if _DATE.sec != now:
        _DATE.refresh(now)
    if server is not None:
        return b"Date: " + _DATE.date + b"\r\nserver: " + server + b"\r\n"
    return _DATE.lines


def _nets(items: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for it in items:
        if it.startswith("unix:"):
            continue
        out.append(ipaddress.ip_network(it, strict=False))
    return tuple(out)


def ip_in(addr: str, nets: tuple[Any, ...], cache: dict[str, bool]) -> bool:
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
    http2: bool = True          # apisix.enable_http2: h2 by ALPN on TLS, h2c by prior knowledge on plaintext
    drain_grace: float = 240.0
    plugin_attr: dict[str, Any] = field(default_factory=dict)   # config.yaml plugin_attr (ctx.plugin_attr)
    node_ssl: dict[str, Any] | None = None                      # config.yaml apisix.ssl (ctx.node_ssl)
    # the TLS listeners (apisix.ssl): versions, ciphers up to TLS 1.2 ("" = OpenSSL's), SNI
    # assumed when a client sends none
    ssl_protocols: str = "TLSv1.2 TLSv1.3"
    ssl_ciphers: str = ""
    fallback_sni: str | None = None
    _real_nets: tuple[Any, ...] = field(default=(), repr=False)
    _trusted_nets: tuple[Any, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._real_nets = _nets(self.real_ip_from)
        self._trusted_nets = _nets(self.trusted_addresses)
