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
    phase = "connecting"
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(parts.hostname, port)
            except OSError as e:
                raise ConnectError(f"connect to {parts.hostname}:{port} failed: {e}") from e
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
        raise UpstreamTimeout(f"{method} {url}: no complete response within {timeout}s ({phase})") from None


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
