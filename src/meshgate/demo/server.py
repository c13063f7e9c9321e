"""A tiny HTTP/1.1 server for the demo services: asyncio.Protocol + httptools.

Theory of operation
-------------------
One :class:`_Connection` per socket.  httptools parses whatever bytes arrive; each complete
request is queued and a single per-connection task answers the queue in order (so pipelined
requests are answered in order), awaiting the async handler of the service.  Every response
has a ``Content-Length`` (no chunked encoding); keep-alive follows the request
(``should_keep_alive``).  One deadline covers "idle between requests" and "receiving a
request" (so a trickling client cannot hold a connection forever); it is off while a handler
runs.  A parse error answers 400 with ``Connection: close`` and closes: never resync a
keep-alive stream (hardening.md section 5).

Request targets are parsed with :func:`meshgate.http.path.parse_target`, the gateway's own
normaliser, so the demo services see paths exactly as the gateway routes them.

This is demo code, not the gateway's data path: it favours being small and obviously right.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

from meshgate.errors import ProtocolError
from meshgate.http import Target, parse_target

__all__ = [
    "DemoRequest",
    "DemoResponse",
    "DemoHTTPServer",
    "Handler",
    "json_response",
    "start_server",
]

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 1024 * 1024
MAX_PIPELINED = 16


@dataclass(frozen=True, slots=True)
class DemoRequest:
    method: str
    target: Target
    headers: Mapping[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    version: str  # "1.0" | "1.1"

    @property
    def path(self) -> str:
        return self.target.path


@dataclass(slots=True)
class DemoResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[DemoRequest], Awaitable[DemoResponse]]


def json_response(obj: Any, status: int = 200, *, headers: list[tuple[str, str]] | None = None) -> DemoResponse:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return DemoResponse(status, body, "application/json", list(headers or ()))


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@dataclass(slots=True)
class _Pending:
    method: str
    url: bytes
    headers: dict[str, str]
    body: bytes
    version: str
    keep_alive: bool
    error: ProtocolError | None = None


class _TooLarge(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Connection(asyncio.Protocol):
    def __init__(self, server: DemoHTTPServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._stop_reading = False  # after an error or an upgrade: ignore further bytes
        self._closing = False
        # current message
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body = bytearray()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not registered as an asyncio.Transport subclass.
        self._transport = cast(asyncio.Transport, transport)
        self._server._conns.add(self)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._conns.discard(self)
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._stop_reading:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # We speak no upgraded protocol: answer what was parsed, then close.
            self._stop_reading = True
            for p in self._pending:
                p.keep_alive = False
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status, cause.reason)
            else:
                self._fail(400, "malformed request")

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = {}
        self._header_bytes = 0
        self._body.clear()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > 8192:
            raise _TooLarge(414, "request-target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) >= MAX_HEADERS:
            raise _TooLarge(431, "request header fields too large")
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = val if old is None else f"{old}, {val}"

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY_BYTES:
            raise _TooLarge(413, "request body too large")

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("ascii", "replace")
        self._pending.append(
            _Pending(
                method=method,
                url=bytes(self._url),
                headers=self._headers,
                body=bytes(self._body),
                version=self._parser.get_http_version(),
                keep_alive=self._parser.should_keep_alive(),
            )
        )
        self._headers = {}
        if len(self._pending) >= MAX_PIPELINED and self._transport is not None and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True
        if self._task is None:
            self._start_task()

    # -- internals -------------------------------------------------------------------------

    def _start_task(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._task = self._loop.create_task(self._run())

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        if self._task is None and self._transport is not None:
            self._transport.close()

    def _fail(self, status: int, reason: str) -> None:
        """Framing error: queue a final error answer and stop reading."""
        self._stop_reading = True
        err = _Pending("GET", b"", {}, b"", "1.1", False, ProtocolError(status, reason))
        self._pending.append(err)
        if self._task is None:
            self._start_task()

    def close_when_idle(self) -> None:
        """Server shutdown: close now if idle, else after the response being produced."""
        self._closing = True
        if self._task is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def _run(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._pending and not transport.is_closing():
                item = self._pending.popleft()
                if self._reading_paused and len(self._pending) < MAX_PIPELINED // 2:
                    transport.resume_reading()
                    self._reading_paused = False
                if item.error is not None:
                    resp = json_response({"error": item.error.reason}, item.error.status)
                    head = False
                else:
                    resp = await self._server._dispatch(item)
                    head = item.method == "HEAD"
                keep = item.keep_alive and not self._closing
                transport.write(self._server._serialize(resp, item.version, keep, head))
                if not keep:
                    transport.close()
                    return
        finally:
            self._task = None
        if self._closing:
            transport.close()
        elif self._pending:  # arrived while the last write happened
            self._start_task()
        else:
            self._arm_timer()


class DemoHTTPServer:
    """A listening demo service.  Create with :func:`start_server`."""

    def __init__(
        self,
        handler: Handler,
        *,
        service: str,
        version: str,
        idle_timeout: float = 60.0,
        handler_timeout: float = 30.0,
    ) -> None:
        self.handler = handler
        self.service = service
        self.version = version
        self.idle_timeout = idle_timeout
        self.handler_timeout = handler_timeout
        self._conns: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._extra = (
            f"server: meshgate-demo\r\nx-demo-service: {service}\r\nx-demo-version: {version}\r\n".encode("ascii")
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets: Any = getattr(self._server, "sockets", None)  # asyncio.Server and uvloop's Server
        return int(sockets[0].getsockname()[1])

    async def _dispatch(self, item: _Pending) -> DemoResponse:
        try:
            target = parse_target(item.url)
        except ProtocolError as e:
            return json_response({"error": e.reason}, e.status)
        req = DemoRequest(item.method, target, item.headers, item.body, item.version)
        try:
            async with asyncio.timeout(self.handler_timeout):
                return await self.handler(req)
        except TimeoutError:
            return json_response({"error": "handler timed out"}, 504)
        except Exception as e:  # the per-request guard (DESIGN.md conventions)
            return json_response({"error": f"internal error: {type(e).__name__}"}, 500)

    def _serialize(self, resp: DemoResponse, version: str, keep_alive: bool, head: bool) -> bytes:
        status = resp.status
        parts = [
            f"HTTP/1.1 {status} {_reason(status)}\r\n".encode("ascii"),
            b"date: ",
            _http_date(),
            b"\r\ncontent-type: ",
            resp.content_type.encode("latin-1"),
            b"\r\ncontent-length: ",
            str(len(resp.body)).encode("ascii"),
            b"\r\n",
            self._extra,
        ]
        for name, value in resp.headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if not head:
            parts.append(resp.body)
        return b"".join(parts)

    async def close(self, *, grace: float = 2.0) -> None:
        """Stop listening, let in-flight responses finish (bounded by ``grace``), close all."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for conn in list(self._conns):
            conn.close_when_idle()
        deadline = asyncio.get_running_loop().time() + grace
        while self._conns and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            conn.abort()
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(grace):
                await server.wait_closed()
        except TimeoutError:
            pass


async def start_server(
    handler: Handler,
    *,
    host: str,
    port: int,
    service: str,
    version: str = "v1",
    idle_timeout: float = 60.0,
) -> DemoHTTPServer:
    """Listen on ``host:port`` (0 = ephemeral) and answer with ``handler``."""
    srv = DemoHTTPServer(handler, service=service, version=version, idle_timeout=idle_timeout)
    loop = asyncio.get_running_loop()
    srv._server = await loop.create_server(lambda: _Connection(srv), host, port, reuse_address=True)
    return srv
