"""A small async HTTP/1.1 client for the demo services' inter-service calls and for tests.

One connection per request (``Connection: close``), asyncio streams for I/O, httptools to
parse the response (so ``Content-Length``, chunked and read-until-close bodies all work, which
matters when a call goes through the gateway).  The whole exchange is bounded by ``timeout``.
Not the hot path: simplicity over speed.

Errors use the one exception tree: :class:`~meshgate.errors.ConnectError` (could not connect),
:class:`~meshgate.errors.UpstreamTimeout`, :class:`~meshgate.errors.UpstreamError` (bad
response).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

from meshgate.errors import ConnectError, UpstreamError, UpstreamTimeout

__all__ = ["DemoHTTPResponse", "http_request"]

MAX_RESPONSE_BODY = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DemoHTTPResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _ResponseCollector:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.headers_done = False
        self.complete = False
        self.too_large = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = val if old is None else f"{old}, {val}"

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_RESPONSE_BODY:
            self.too_large = True

    def on_message_complete(self) -> None:
        self.complete = True


async def http_request(
    url: str,
    *,
    method: str = "GET",
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 5.0,
) -> DemoHTTPResponse:
    """Send one request to an ``http://`` URL; ``host`` overrides the Host header."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs are supported, not {url!r}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if host is not None else parts.netloc
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
    for k, v in (headers or {}).items():
        if k.lower() in ("host", "connection", "content-length"):
            continue
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    # where a call that times out was (for the log: a slow connect is not a slow answer)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    phase = "resolving the name"
    try:
        async with asyncio.timeout(timeout):
            try:
                infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise ConnectError(f"connect to {parts.hostname}:{port} failed: {e}") from e
            note = ["connecting"]
            phase_at = loop.time() - t0
            try:
                reader, writer = await _open(infos, parts.hostname, port, note)
            finally:
                phase = f"name resolved after {phase_at:.2f}s, {note[0]}"
            phase = f"connected after {loop.time() - t0:.2f}s, request sent, no complete response"
            try:
                writer.write(raw)
                await writer.drain()
                return await _read_response(reader, head=method == "HEAD")
            except OSError as e:
                raise UpstreamError(f"{method} {url}: {e}") from e
            finally:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
    except TimeoutError:
        # (how late the timer fired tells a stalled event loop from a slow peer)
        raise UpstreamTimeout(f"{method} {url}: no complete response within {timeout}s ({phase}; "
                              f"timed out after {loop.time() - t0:.2f}s)") from None


#: how long one TCP handshake may take before a fresh socket tries again (within the call's
#: timeout).  Under sidecar capture (iptables REDIRECT to one port) the app's new 4-tuple can
#: meet a TIME_WAIT socket the sidecar still holds for an earlier connection from the same
#: ephemeral port; the kernel normally sorts that out in milliseconds (challenge ACK, RST), but
#: when it does not, the SYN waits for its retransmissions (1 s, then 3 s).  A new socket has a
#: new port.  Only the handshake is retried: nothing has been sent yet.
CONNECT_ATTEMPT = 1.0


async def _open(infos: list[tuple[Any, ...]], host: str, port: int, note: list[str]
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the first address of ``infos`` that accepts (as ``open_connection`` would),
    each handshake bounded by :data:`CONNECT_ATTEMPT` and retried on a fresh socket (the caller's
    timeout bounds the whole); ``note[0]`` says where it is, for the caller's timeout message."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    attempts = 0
    while True:
        for family, _type, proto, _canon, addr in infos:
            attempts += 1
            note[0] = f"connecting, attempt {attempts}"
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            try:
                sock.setblocking(False)
                async with asyncio.timeout(CONNECT_ATTEMPT):
                    await loop.sock_connect(sock, addr)
            except TimeoutError:
                sock.close()
                continue
            except OSError as e:
                sock.close()
                last = e
                continue
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock)
        if last is not None:
            raise ConnectError(f"connect to {host}:{port} failed: {last}")


async def _read_response(reader: asyncio.StreamReader, *, head: bool) -> DemoHTTPResponse:
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    while not collector.complete:
        data = await reader.read(65536)
        if not data:
            # EOF: fine for a read-until-close body (no Content-Length, not chunked) or HEAD.
            delimited = "content-length" in collector.headers or "transfer-encoding" in collector.headers
            if collector.headers_done and (head or not delimited):
                break
            raise UpstreamError("connection closed before the response was complete")
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as e:
            raise UpstreamError(f"malformed response: {e}") from None
        if collector.too_large:
            raise UpstreamError("response body too large")
        if head and collector.headers_done:
            break
    return DemoHTTPResponse(parser.get_status_code(), collector.headers, bytes(collector.body))
