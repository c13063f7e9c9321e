"""The floor of any Python reverse proxy on this machine: a bench reference, not a product.

uvloop + httptools, asyncio.Protocol, a keep-alive upstream pool, the request head
re-sent with X-Forwarded-For, the response relayed as raw bytes.  No routing, no
validation beyond llhttp, no timeouts, no limits: what remains is the cost of two
HTTP legs of I/O plus the minimum of Python per request.  Meshgate's CPU per request
can be read against it (performance.md calls this design "py_tuned").

usage: python bench/pyfloor.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.buf: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is not None and client.transport is not None and not client.transport.is_closing():
            client.transport.write(b"".join(self.buf))
        self.buf.clear()
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int], pool: list[Upstream]) -> None:
        self.upstream = upstream
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[bytes] = []
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(name + b": " + value + b"\r\n")

    def on_message_complete(self) -> None:
        head = (b"GET " + self.url + b" HTTP/1.1\r\n" + b"".join(self.headers)
                + b"X-Forwarded-For: 127.0.0.1\r\n\r\n")
        self.headers = []
        if self.pool:
            up = self.pool.pop()
            up.client = self
            assert up.transport is not None
            up.transport.write(head)
        else:
            asyncio.ensure_future(self._connect(head))

    async def _connect(self, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Upstream(self.pool), *self.upstream)
        up.client = self
        assert up.transport is not None
        up.transport.write(head)


async def main(port: int, upstream_port: int) -> None:
    pool: list[Upstream] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(("127.0.0.1", upstream_port), pool), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
