"""observability/export.py: bounded queue, batching, retries, against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import json

import pytest

from meshgate.observability.export import Exporter, HttpTarget, get_exporter, post
from meshgate.observability.tracing import Span, new_span_id, new_trace_id


class Collector:
    """A tiny HTTP/1.1 server that records POST bodies and answers with scripted statuses."""

    def __init__(self, statuses=(), *, close_after_each=False):
        self.bodies: list[bytes] = []
        self.heads: list[str] = []
        self.statuses = list(statuses)
        self.connections = 0
        self.close_after_each = close_after_each
        self.got = asyncio.Event()
        self.writers = set()

    async def start(self):
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _conn(self, reader, writer):
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                n = int(next(ln.split(":")[1] for ln in head.split("\r\n") if ln.lower().startswith("content-length")))
                body = await reader.readexactly(n)
                self.heads.append(head)
                status = self.statuses.pop(0) if self.statuses else 200
                if status >= 200:
                    self.bodies.append(body)
                self.got.set()
                extra = "Connection: close\r\n" if self.close_after_each else ""
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n{extra}\r\nok".encode())
                await writer.drain()
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def close(self):
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()

    async def wait_bodies(self, n, timeout=5.0):
        async def run():
            while len(self.bodies) < n:
                self.got.clear()
                await self.got.wait()
        await asyncio.wait_for(run(), timeout)


def span(name="s"):
    s = Span(name, new_trace_id(), new_span_id(), None, "server", 1)
    s.finish(2)
    return s


def names_encoder(spans):
    return json.dumps([s.name for s in spans]).encode()


def test_target_parse():
    t = HttpTarget.parse("http://127.0.0.1:9411/api/v2/spans?x=1")
    assert (t.scheme, t.host, t.port, t.path, t.host_header) == ("http", "127.0.0.1", 9411, "/api/v2/spans?x=1",
                                                                 "127.0.0.1:9411")
    assert HttpTarget.parse("collector:4318").path == "/"
    assert HttpTarget.parse("https://c/v1").port == 443 and HttpTarget.parse("https://c/v1").host_header == "c"
    with pytest.raises(ValueError):
        HttpTarget.parse("ftp://x/")


async def test_batches_by_size_then_by_time_on_one_connection():
    c = await Collector().start()
    ex = Exporter(f"http://127.0.0.1:{c.port}/api/v2/spans", names_encoder, content_type="application/json",
                  headers={"X-Token": "t"}, batch_size=3, batch_timeout=0.2)
    try:
        for i in range(4):
            assert ex.submit(span(f"s{i}"))
        await c.wait_bodies(2)
        assert await ex.flush(5)
        assert [json.loads(b) for b in c.bodies] == [["s0", "s1", "s2"], ["s3"]]
        assert "Content-Type: application/json" in c.heads[0] and "X-Token: t" in c.heads[0]
        assert c.heads[0].startswith("POST /api/v2/spans HTTP/1.1\r\nHost: 127.0.0.1:")
        assert ex.exported == 4 and ex.failed == 0 and ex.dropped == 0
        assert c.connections == 1
    finally:
        await ex.aclose()
        await c.close()


async def test_full_queue_drops_and_counts_without_blocking():
    c = await Collector().start()
    ex = Exporter(f"http://127.0.0.1:{c.port}/", names_encoder, content_type="application/json", max_queue=5,
                  batch_size=100, batch_timeout=0.05)
    try:
        results = [ex.submit(span()) for _ in range(8)]   # no await: the drain task has not run yet
        assert results == [True] * 5 + [False] * 3
        assert ex.dropped == 3
        assert await ex.flush(5)
        assert ex.exported == 5 and len(json.loads(c.bodies[0])) == 5
    finally:
        await ex.aclose()
        await c.close()


async def test_retries_on_5xx_are_bounded_then_dropped():
    c = await Collector(statuses=[503, 503, 200]).start()
    ex = Exporter(f"http://127.0.0.1:{c.port}/", names_encoder, content_type="application/json", batch_size=1,
                  max_retries=2, retry_delay=0.01)
    try:
        ex.submit(span("a"))
        await c.wait_bodies(1)
        assert await ex.flush(5)
        assert ex.exported == 1 and len(c.heads) == 3
        c.statuses = [500, 500, 500, 500]
        ex.submit(span("b"))
        assert await ex.flush(5)
        assert ex.failed == 1 and len(c.heads) == 6   # 1 + max_retries attempts, then given up
    finally:
        await ex.aclose()
        await c.close()


async def test_4xx_is_not_retried():
    c = await Collector(statuses=[400]).start()
    ex = Exporter(f"http://127.0.0.1:{c.port}/", names_encoder, content_type="application/json", batch_size=1,
                  max_retries=3, retry_delay=0.01)
    try:
        ex.submit(span())
        assert await ex.flush(5)
        assert ex.failed == 1 and len(c.heads) == 1
    finally:
        await ex.aclose()
        await c.close()


async def test_unreachable_collector_fails_in_bounded_time():
    c = await Collector().start()
    port = c.port
    await c.close()
    ex = Exporter(f"http://127.0.0.1:{port}/", names_encoder, content_type="application/json", batch_size=1,
                  max_retries=1, retry_delay=0.01, timeout=1)
    try:
        ex.submit(span())
        assert await ex.flush(5)
        assert ex.failed == 1 and ex.exported == 0
    finally:
        await ex.aclose()


async def test_server_closing_connections_is_handled():
    c = await Collector(close_after_each=True).start()
    ex = Exporter(f"http://127.0.0.1:{c.port}/", names_encoder, content_type="application/json", batch_size=1,
                  max_retries=0)
    try:
        for i in range(3):
            ex.submit(span(f"s{i}"))
            assert await ex.flush(5)
        assert ex.exported == 3 and c.connections == 3
    finally:
        await ex.aclose()
        await c.close()


async def test_get_exporter_shares_by_key_and_post_helper():
    c = await Collector().start()
    made = []

    def factory():
        made.append(1)
        return Exporter(f"http://127.0.0.1:{c.port}/", names_encoder, content_type="application/json")

    try:
        a = get_exporter(("test", c.port), factory)
        assert get_exporter(("test", c.port), factory) is a and len(made) == 1
        assert await post(f"http://127.0.0.1:{c.port}/x", b"{}", [("Content-Type", "application/json")]) == 200
        assert c.bodies == [b"{}"]
    finally:
        await a.aclose()
        await c.close()
