"""One worker's data plane: listeners, live connections, the upstream pool, the Runtime.

Protocol-agnostic: each listener gets the downstream codec of its protocol (HTTP/1, which hands a
connection that speaks HTTP/2 over to ``http2.H2Connection``),
which feeds requests to :class:`~meshgate.proxy.exchange.Exchange`.  Timeouts are enforced
by one sweeper per worker instead of a timer per request: client header/body/keep-alive/send
deadlines every 300 ms, upstream connect/send/read deadlines every 100 ms.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..http.request import use_field_finder
from . import codec
from .common import S_IDLE, ProxySettings, WriteBatch, ip_in
from .http1 import ClientConnection, header_tables
from .upstream_conn import Pool

if TYPE_CHECKING:
    from .exchange import Exchange
    from .upstream_h2 import H2Pool
    from .runtime import Runtime

__all__ = ["ProxyServer"]

log = logging.getLogger("meshgate.proxy")
access_log = logging.getLogger("meshgate.access")


class ClientSide(Protocol):
    """A downstream connection as the sweeper and the drain see it (HTTP/1 or HTTP/2)."""

    state: int
    requests: int

    def close(self) -> None: ...
    def check_deadline(self, now: float, s: ProxySettings) -> None: ...


class ProxyServer:
    """One worker's data plane: listeners, connections, pools, the current Runtime."""

    def __init__(self, settings: ProxySettings, runtime: Runtime, *,
                 passive_report: Callable[[str, str, str, int], None] | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        # the loop's clock as a bound method: read several times per request, and a call
        # through an attribute of a Python object looks the method up every time
        self.clock: Callable[[], float] = self.loop.time
        # the HTTP connections' writes, sent together at the end of each loop turn (common.WriteBatch)
        self.writes = WriteBatch(self.loop)
        # nginx_config.http.real_ip_header decides which request field carries the real IP
        self.req_special, self.real_ip_extra = header_tables(settings.real_ip_header)
        # the HTTP/1 head codec of the fast paths (native when built; proxy/codec.py)
        c = codec.active()
        self.scan_request: Callable[[bytes, bytes], Any] = c.scan_request
        self.scan_response: Callable[[bytes], Any] = c.scan_response
        self.resp_fields: Callable[[bytes], Any] = c.resp_fields
        self.relay_response: Callable[[bytes, bytes, bytes, int, bytes], Any] = c.relay_response
        use_field_finder(c.find_field if c is not codec.PYTHON else None)
        self.real_ip_xff = settings.real_ip_header.strip().lower() == "x-forwarded-for"
        self.connections: set[ClientSide] = set()
        self.waiting: set[Exchange] = set()         # exchanges waiting on an upstream
        self.pool = Pool()
        self._h2pool: H2Pool | None = None          # HTTP/2 upstream connections (grpc/grpcs), made on first use
        self.servers: list[asyncio.AbstractServer] = []
        self.draining = False
        self.passive_report = passive_report
        self._real_cache: dict[str, bool] = {}
        self._trusted_cache: dict[str, bool] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.requests_total = 0
        self.fast_requests = 0     # requests / responses handled by the fast paths (_lite_*)
        self.fast_responses = 0
        self.whole_responses = 0     # of which rewritten in one codec call (Exchange.relay_whole)
        self.codec_rejects = 0     # request heads the codec answered with an error status itself
        self.access_log_on = access_log.isEnabledFor(logging.INFO)
        self.breakers: Any = None   # mesh: the circuit breakers' shared counts (proxy/breaker.py)

    @property
    def h2pool(self) -> H2Pool:
        """The HTTP/2 upstream pool; h2 is imported with it, when a route first needs it (a
        worker that never proxies to a gRPC or HTTP/2 upstream does without it)."""
        p = self._h2pool
        if p is None:
            from .upstream_h2 import H2Pool
            p = self._h2pool = H2Pool(self)
        return p

    def set_runtime(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def listen(self, host: str, port: int, *, sock: socket.socket | None = None,
                     ssl_ctx: ssl.SSLContext | None = None) -> asyncio.AbstractServer:
        # nginx bounds the TLS handshake by client_header_timeout too
        hs = (self.settings.client_header_timeout or None) if ssl_ctx is not None else None
        if sock is not None:
            srv = await self.loop.create_server(lambda: ClientConnection(self), sock=sock, backlog=4096, ssl=ssl_ctx,
                                                ssl_handshake_timeout=hs)
        else:
            srv = await self.loop.create_server(lambda: ClientConnection(self), host=host, port=port,
                                                reuse_port=True, backlog=4096, ssl=ssl_ctx, ssl_handshake_timeout=hs)
        self.servers.append(srv)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        return srv

    def is_real_ip_source(self, addr: str) -> bool:
        return ip_in(addr, self.settings._real_nets, self._real_cache)

    def is_trusted(self, addr: str) -> bool:
        return bool(self.settings._trusted_nets) and ip_in(addr, self.settings._trusted_nets, self._trusted_cache)

    async def _sweep(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(0.1)
            now = self.loop.time()
            for ex in list(self.waiting):
                ex.check_upstream_deadline(now)
            tick += 1
            if tick % 3 == 0:
                s = self.settings
                for conn in list(self.connections):
                    conn.check_deadline(now, s)
            if tick % 10 == 0:
                rt = self.runtime
                self.pool.sweep(now, lambda key: _pool_idle_timeout(rt, key))
                if self._h2pool is not None:
                    self._h2pool.sweep(now, lambda key: _pool_idle_timeout(rt, key))

    async def drain(self, grace: float) -> None:
        """Stop accepting, finish in-flight requests within ``grace``, then close the rest."""
        self.draining = True
        for srv in self.servers:
            srv.close()
        # Connections the loop accepted just before the close get their protocol on the next
        # iterations: let them register before deciding the worker is idle.
        await asyncio.sleep(0.05)
        for conn in list(self.connections):
            # Idle keep-alive connections go now; a connection accepted but not yet read may
            # carry a request already: it is served (with Connection: close), see check_deadline.
            if conn.state == S_IDLE and conn.requests:
                conn.close()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        self.pool.close_all()
        if self._h2pool is not None:
            self._h2pool.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()


def _pool_idle_timeout(rt: Runtime, key: tuple[Any, ...]) -> float:
    up = rt.upstreams.get(key[0])
    return up.pool_idle_timeout if up is not None else 60.0

