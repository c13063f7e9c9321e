"""A small HTTP/1.1 server for management APIs (Control API, later the Admin API).

Not on the data path: requests are parsed with llhttp, bodies capped, and each request
is handed to an async handler ``(ApiRequest) -> (status, headers, body)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote

import httptools

__all__ = ["ApiRequest", "ApiServer", "json_response", "Handler"]

log = logging.getLogger("meshgate.admin")

MAX_BODY = 1536 * 1024  # APISIX admin body cap: 1.5 MiB


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    peer: str
    _url: bytes = b""

    def arg(self, name: str, default: str | None = None) -> str | None:
        v = self.query.get(name)
        return v[0] if v else default

    def json(self) -> Any:
        return json.loads(self.body or b"null")


Response = tuple[int, dict[str, str], bytes]
Handler = Callable[[ApiRequest], Awaitable[Response]]


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    h = {"Content-Type": "application/json"}
    if headers:
        h.update(headers)
    return status, h, json.dumps(obj, separators=(",", ":")).encode()


class _Conn(asyncio.Protocol):
    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.queue: asyncio.Queue[ApiRequest | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.peer = ""
        self.discarding = False
        self.discarded = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(400, {"Content-Type": "application/json"}, b'{"error_msg":"bad request"}', close=True)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # refuse an announced oversized body before reading it
        try:
            size = int(self.headers.get("content-length", "0"))
        except ValueError:
            return
        if size > MAX_BODY:
            self._too_large(size)

    def on_body(self, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.discarding:
            # read what the client still sends (as nginx's lingering close) so that it
            # sees the answer instead of a reset; bounded
            self.discarded += len(body)
            if self.discarded > 16 * MAX_BODY:
                self.transport.close()
            return
        self.body += body
        if len(self.body) > MAX_BODY:
            self._too_large(len(self.body))

    def _too_large(self, size: int) -> None:
        self.body = bytearray()
        self.discarding = True
        if self.server.too_large is not None:
            status, headers, body = self.server.too_large(size)
        else:
            status, headers, body = 413, {"Content-Type": "application/json"}, b'{"error_msg":"request body too large"}'
        self._write(status, {**headers, "Connection": "close"}, body)

    def on_message_complete(self) -> None:
        if self.discarding:       # answered already (body too large): done with this connection
            if self.transport is not None:
                self.transport.close()
            return
        parsed = httptools.parse_url(self.url)
        path = unquote(parsed.path.decode("latin-1"))
        query = parse_qs(parsed.query.decode("latin-1"), keep_blank_values=True) if parsed.query else {}
        self.queue.put_nowait(ApiRequest(self.parser.get_method().decode(), path, query, self.headers,
                                         bytes(self.body), self.peer, self.url))

    async def _serve(self) -> None:
        while True:
            req = await self.queue.get()
            if req is None or self.transport is None or self.transport.is_closing():
                return
            try:
                status, headers, body = await self.server.handler(req)
            except Exception:
                log.exception("management API handler failed")
                status, headers, body = 500, {"Content-Type": "application/json"}, b'{"error_msg":"internal error"}'
            self._write(status, headers, body if req.method != "HEAD" else b"", length=len(body))

    def _write(self, status: int, headers: dict[str, str], body: bytes, *, close: bool = False,
               length: int | None = None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Content-Length: {len(body) if length is None else length}",
                 "Server: meshgate"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if close:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if close:
            self.transport.close()


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@dataclass
class ApiServer:
    handler: Handler
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    # the answer to a body over MAX_BODY (given its size); default 413 (the Admin API: 400 as APISIX)
    too_large: Callable[[int], Response] | None = None

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_server(lambda: _Conn(self), host=host, port=port, reuse_address=True))

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for s in self.servers:
            await s.wait_closed()
