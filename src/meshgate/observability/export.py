"""Span export: a bounded, batching, never-blocking queue drained by one task per worker.

Theory of operation
-------------------
The request path calls :meth:`Exporter.submit` from a ``log`` hook: it appends the finished
span to a bounded deque and returns at once.  When the queue is full the span is dropped
and counted (``dropped``): tracing must never slow or fail a request.

The first ``submit`` in a worker starts the drain task in that worker's running event loop
(lazily: nothing runs in a worker that traces nothing, and a forked worker never inherits a
task from its parent).  The task waits for spans, then gathers a batch until
``batch_size`` spans are queued or ``batch_timeout`` seconds passed since the first one,
encodes the batch with the exporter's encoder (Zipkin JSON, OTLP protobuf) and POSTs it over
HTTP/1.1 with a small keep-alive client on asyncio streams.  A failed POST (connection
error, timeout, 5xx, 408, 429) is retried ``max_retries`` times with exponential backoff;
other 4xx are final.  A batch that cannot be delivered is dropped and counted (``failed``).

Exporters are shared per destination + encoding inside a worker (:func:`get_exporter`), so a
config reload that keeps the same collector keeps the same queue and connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Sequence
from urllib.parse import urlsplit

from .tracing import Span

__all__ = ["Exporter", "HttpTarget", "get_exporter", "close_exporters", "post"]

log = logging.getLogger("meshgate.tracing")

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Where to POST: ``http://host:port/path?query`` (``https`` too)."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> HttpTarget:
        if "://" not in url:
            url = "http://" + url
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = u.port or (443 if u.scheme == "https" else 80)
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        return cls(u.scheme, u.hostname, port, path)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Conn:
    """One HTTP/1.1 keep-alive connection to the collector (requests run one at a time)."""

    def __init__(self, target: HttpTarget) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, body: bytes, headers: Sequence[tuple[str, str]]) -> int:
        reused = self.writer is not None and not self.writer.is_closing()
        try:
            return await self._post(body, headers)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not reused:
                raise
            # the collector closed an idle keep-alive connection: once more on a new one
            return await self._post(body, headers)

    async def _post(self, body: bytes, headers: Sequence[tuple[str, str]]) -> int:
        t = self.target
        if self.writer is None or self.writer.is_closing():
            ctx = None
            if t.scheme == "https":
                import ssl  # only a TLS collector needs it

                ctx = ssl.create_default_context()
            self.reader, self.writer = await asyncio.open_connection(
                t.host, t.port, ssl=ctx, server_hostname=t.host if ctx else None, limit=_MAX_HEAD)
        assert self.reader is not None and self.writer is not None
        head = [f"POST {t.path} HTTP/1.1", f"Host: {t.host_header}", f"Content-Length: {len(body)}",
                "User-Agent: meshgate"]
        head += [f"{k}: {v}" for k, v in headers]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        status, keep = await _read_response(self.reader)
        if not keep:
            self.close()
        return status


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status of one response, its body read and discarded; and whether to keep the connection."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as e:
            raise ConnectionError("response head too large") from e
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        if status >= 200 or status == 101:
            break   # 1xx interim responses are skipped
    fields: dict[str, str] = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        fields[k.strip().lower()] = v.strip()
    keep = parts[0] == "HTTP/1.1" and "close" not in fields.get("connection", "").lower()
    if status in (204, 304):
        return status, keep
    if "chunked" in fields.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            total += size
            if total > _MAX_BODY:
                raise ConnectionError("response body too large")
            await reader.readexactly(size + 2)
    elif "content-length" in fields:
        n = int(fields["content-length"])
        if n > _MAX_BODY:
            raise ConnectionError("response body too large")
        await reader.readexactly(n)
    else:
        await reader.read(_MAX_BODY)   # delimited by close
        keep = False
    return status, keep


async def post(url: str, body: bytes, headers: Sequence[tuple[str, str]] = (), *, timeout: float = 3.0) -> int:
    """One POST on a fresh connection (tools and tests); returns the status."""
    c = _Conn(HttpTarget.parse(url))
    try:
        return await asyncio.wait_for(c._post(body, headers), timeout)
    finally:
        c.close()


Encoder = Callable[[Sequence[Span]], bytes]


class Exporter:
    """Bounded queue + batching drain task + HTTP/1.1 POST with bounded retries."""

    def __init__(self, url: str, encode: Encoder, *, content_type: str,
                 headers: Mapping[str, str] | None = None, timeout: float = 3.0, max_queue: int = 2048,
                 batch_size: int = 512, batch_timeout: float = 1.0, max_retries: int = 2,
                 retry_delay: float = 0.2, name: str = "tracing") -> None:
        self.target = HttpTarget.parse(url)
        self.encode = encode
        self.headers: list[tuple[str, str]] = [("Content-Type", content_type)]
        self.headers += [(k, v) for k, v in (headers or {}).items() if k.lower() not in ("content-type", "host",
                                                                                     "content-length")]
        self.timeout = timeout
        self.max_queue = max(1, max_queue)
        self.batch_size = max(1, batch_size)
        self.batch_timeout = max(0.0, batch_timeout)
        self.max_retries = max(0, max_retries)
        self.retry_delay = retry_delay
        self.name = name
        self.dropped = 0      # spans refused because the queue was full
        self.failed = 0       # spans given up after the retries
        self.exported = 0     # spans the collector accepted
        self._q: deque[Span] = deque()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._urgent = False
        self._conn = _Conn(self.target)

    # -- request path -------------------------------------------------------------------------
    def submit(self, span: Span) -> bool:
        """Queue a finished span; never blocks.  False when it was dropped (queue full)."""
        if len(self._q) >= self.max_queue:
            self.dropped += 1
            return False
        self._q.append(span)
        if self._task is None or self._task.done():
            self._start()
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._q)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._conn.close()   # a connection of another (finished) loop is unusable
        self._loop = loop
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"{self.name}-exporter")

    # -- drain task -----------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._q:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if len(self._q) < self.batch_size and not self._urgent:
                    deadline = loop.time() + self.batch_timeout
                    while len(self._q) < self.batch_size and not self._urgent:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), remaining)
                        except asyncio.TimeoutError:
                            break
                batch = [self._q.popleft() for _ in range(min(self.batch_size, len(self._q)))]
                try:
                    await self._send(batch)
                except Exception:   # task root: a bug here must not stop the exports that follow
                    log.exception("%s: export of %d spans failed", self.name, len(batch))
                    self.failed += len(batch)
                    self._conn.close()
        finally:
            self._conn.close()
            self._idle.set()

    async def _send(self, batch: list[Span]) -> None:
        try:
            body = self.encode(batch)
        except Exception:
            log.exception("%s: cannot encode %d spans; dropped", self.name, len(batch))
            self.failed += len(batch)
            return
        why = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_delay * (2 ** (attempt - 1)))
            try:
                status = await asyncio.wait_for(self._conn.post(body, self.headers), self.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                self._conn.close()
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                continue
            if 200 <= status < 300:
                self.exported += len(batch)
                return
            why = f"status {status}"
            if 400 <= status < 500 and status not in (408, 429):
                break   # the collector refuses this payload: retrying cannot help
        self.failed += len(batch)
        log.warning("%s: failed to export %d spans to %s://%s:%d%s: %s", self.name, len(batch),
                    self.target.scheme, self.target.host, self.target.port, self.target.path, why)

    # -- lifecycle -----------------------------------------------------------------------------
    async def flush(self, timeout: float = 5.0) -> bool:
        """Send what is queued now (no batch wait); True when the queue drained in time."""
        if self._task is None or self._task.done() or self._idle is None or self._wake is None:
            return not self._q
        self._urgent = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._urgent = False

    async def aclose(self, timeout: float = 5.0) -> None:
        await self.flush(timeout)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
        self._conn.close()


_MAX_EXPORTERS = 32
_exporters: dict[Hashable, Exporter] = {}
_closing: set[asyncio.Task[None]] = set()


def get_exporter(key: Hashable, factory: Callable[[], Exporter]) -> Exporter:
    """The worker's exporter for ``key`` (destination + encoding), made by ``factory`` once.

    At most 32 are kept; the oldest one beyond that is flushed and closed in the background
    (a config that keeps changing its collector cannot grow the table without bound)."""
    ex = _exporters.get(key)
    if ex is None:
        ex = _exporters[key] = factory()
        if len(_exporters) > _MAX_EXPORTERS:
            old_key = next(iter(_exporters))
            old = _exporters.pop(old_key)
            try:
                t = asyncio.get_running_loop().create_task(old.aclose())
                _closing.add(t)
                t.add_done_callback(_closing.discard)
            except RuntimeError:
                pass
    return ex


async def close_exporters(timeout: float = 5.0) -> None:
    """Flush and close every exporter of this worker (worker shutdown)."""
    exs = list(_exporters.values())
    _exporters.clear()
    if exs:
        await asyncio.gather(*(e.aclose(timeout) for e in exs), return_exceptions=True)
