"""APISIX's stream proxy (L4): ``stream_routes`` over TCP, TLS-terminated TCP and UDP.

Theory of operation
-------------------
``apisix.proxy_mode`` ``stream`` or ``http&stream`` opens the ``apisix.stream_proxy``
addresses (``config/node.py``), one SO_REUSEPORT socket per worker like the HTTP ports; each
worker serves them with :class:`StreamServer`, reading the Runtime serving at that moment (a
config change applies to the next connection or datagram session; established ones keep
their route and node).

Routing (:class:`StreamRoutes`, compiled once per config version): a stream route's
``server_addr`` (the address the connection arrived at), ``server_port``, ``remote_addr``
(an address or a CIDR) and ``sni`` (TLS listeners only; exact, or ``*.example.com`` covering
one label) must all hold when set.  Routes with an ``sni`` that matches come first (the
exact name before a wildcard), then the others in config order: the first that matches
wins, as APISIX's stream router tries its SNI router before the address matches.  No route:
the connection is closed (a UDP datagram dropped).

Upstream: ``upstream_id``, an inline ``upstream``, or the ``service_id``'s (APISIX's order);
the node is chosen by the upstream's balancer (``chash`` hashes on ``remote_addr`` and the
other connection variables), unhealthy nodes skipped as for HTTP; a node that refuses or
does not answer within ``timeout.connect`` is replaced by another one up to ``retries`` times.

* TCP: bytes both ways with flow control (a side that cannot keep up pauses the other's
  reading), half-closes passed on, the connection closed when both sides finished or after
  ``timeout.read`` (default 10 minutes, nginx's ``proxy_timeout``) without bytes either way.
* TLS (``{addr, tls: true}``): the handshake uses the ``ssls`` objects by SNI exactly as the
  HTTPS listeners do (mTLS included); the decrypted bytes are proxied.
* UDP: one session per client address: its datagrams go to one node from one socket of ours,
  the node's answers go back to the client, the session ends after ``timeout.read`` (default
  60 s) without datagrams.

Stream plugins: ``ip-restriction`` and ``limit-conn``, APISIX's stream plugins users reach for
first, run as in APISIX's ``preread`` phase when the connection (or UDP session) starts, with
the connection's variables (``remote_addr``, ``server_port``...): a refusal closes it (the
datagram is dropped); limit-conn counts the connection until it ends (its ``log`` phase).
Another plugin on a stream route (``mqtt-proxy``, ``syslog``...) is refused when compiled, with
the reason in the log, rather than served without it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..plugins import PluginChain
from ..plugins.runtime import Pending
from ..upstream.nodes import Node
from .runtime import Runtime, UpstreamRuntime
from .tls import normalize_sni, tls_connection

__all__ = ["StreamRoute", "StreamRoutes", "StreamServer", "StreamContext", "RelayDown", "RelayUpstream", "TCP_IDLE", "UDP_IDLE", "STREAM_PLUGINS"]

log = logging.getLogger("meshgate.stream")

TCP_IDLE = 600.0      # nginx's proxy_timeout default
UDP_IDLE = 60.0
_PENDING_MAX = 1 << 20   # client bytes held while the upstream connects; reading pauses beyond
STREAM_PLUGINS = ("ip-restriction", "limit-conn")   # the plugins that run on stream routes


# --- routing ------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamRoute:
    id: str
    conf: Mapping[str, Any]
    upstream: UpstreamRuntime | None
    server_addr: str | None = None
    server_port: int | None = None
    remote: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    sni: str | None = None
    chain: PluginChain | None = None

    def matches(self, server_ip: str, server_port: int, remote_ip: str) -> bool:
        if self.server_port is not None and self.server_port != server_port:
            return False
        if self.server_addr is not None and _same_ip(self.server_addr, server_ip) is False:
            return False
        if self.remote:
            try:
                ip = ipaddress.ip_address(remote_ip)
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not any(ip in net for net in self.remote):
                return False
        return True


def _same_ip(a: str, b: str) -> bool:
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return a == b
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped is not None:
        y = y.ipv4_mapped
    return x == y


def _plain_ip(addr: Any) -> str:
    s = str(addr).split("%", 1)[0]
    return s[7:] if s.startswith("::ffff:") and "." in s else s


class StreamRoutes:
    """The stream routes of one Runtime (config order kept)."""

    def __init__(self, rt: Runtime) -> None:
        self.version = rt.version
        self.routes: list[StreamRoute] = []
        self.errors: list[ConfigError] = []
        services = rt.snapshot.items("services")
        for id, res in rt.snapshot.items("stream_routes").items():
            conf = res.value
            try:
                self.routes.append(self._compile(id, conf, rt, services))
            except ConfigError as e:
                self.errors.append(e)
                log.error("stream route %s not served: %s", id, e)
            except Exception as e:   # never let one object stop the others (or a connection)
                self.errors.append(ConfigError("/", f"cannot compile: {type(e).__name__}: {e}",
                                               kind="stream_routes", id=id))
                log.exception("stream route %s not served", id)

    @staticmethod
    def _compile(id: str, conf: Mapping[str, Any], rt: Runtime, services: Mapping[str, Any]) -> StreamRoute:
        chain: PluginChain | None = None
        plugins = conf.get("plugins") or {}
        if plugins:
            other = sorted(n for n in plugins if n not in STREAM_PLUGINS)
            if other:
                raise ConfigError("/plugins", f"plugin {', '.join(other)} does not run on stream routes (Meshgate's "
                                              f"stream plugins: {', '.join(STREAM_PLUGINS)})", kind="stream_routes", id=id)
            if rt.plugins is None:
                raise ConfigError("/plugins", "no plugin registry", kind="stream_routes", id=id)
            chain = rt.plugins.compile_chain(plugins, pointer="/plugins", kind="stream_routes", id=id,
                                             owner=f"stream_route:{id}")
        up: UpstreamRuntime | None = None
        # (inline upstreams were compiled by build_runtime under these keys: health-checked)
        if conf.get("upstream_id") is not None:
            up = rt.upstreams.get(f"upstreams/{conf['upstream_id']}")
        elif conf.get("upstream") is not None:
            up = rt.upstreams.get(f"stream_routes/{id}")
        elif conf.get("service_id") is not None:
            svc = services.get(str(conf["service_id"]))
            sv = svc.value if svc is not None else {}
            if sv.get("upstream_id") is not None:
                up = rt.upstreams.get(f"upstreams/{sv['upstream_id']}")
            elif sv.get("upstream") is not None:
                up = rt.upstreams.get(f"services/{conf['service_id']}")
        if up is None:
            if conf.get("upstream") is not None:
                raise ConfigError("/upstream", "its upstream was rejected (see that error)", kind="stream_routes",
                                  id=id)
            raise ConfigError("/upstream", "no upstream: upstream_id, upstream or a service_id whose service has "
                                           "one", kind="stream_routes", id=id)
        remote = []
        ra = conf.get("remote_addr")
        if ra:
            try:
                net = ipaddress.ip_network(str(ra), strict=False)
            except ValueError:
                raise ConfigError("/remote_addr", f"expected an IP address or CIDR, got {ra!r}", kind="stream_routes",
                                  id=id) from None
            if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
                net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{max(net.prefixlen - 96, 0)}")
            remote.append(net)
        port = conf.get("server_port")
        sni = conf.get("sni")
        return StreamRoute(id=id, conf=conf, upstream=up, server_addr=conf.get("server_addr") or None,
                           server_port=int(port) if port is not None else None, remote=remote,
                           sni=normalize_sni(str(sni)) if sni else None, chain=chain)

    def match(self, server_ip: str, server_port: int, remote_ip: str, sni: str | None = None) -> StreamRoute | None:
        if sni:
            name = normalize_sni(sni)
            exact = [r for r in self.routes if r.sni == name]
            wild = [r for r in self.routes if r.sni and r.sni.startswith("*.") and _covers(r.sni, name)]
            for r in exact + sorted(wild, key=lambda r: -len(r.sni or "")):
                if r.matches(server_ip, server_port, remote_ip):
                    return r
        for r in self.routes:
            if r.sni is None and r.matches(server_ip, server_port, remote_ip):
                return r
        return None


def _covers(wildcard: str, name: str) -> bool:
    """``*.example.com`` covers ``a.example.com``, not ``a.b.example.com`` (APISIX's SNI rule)."""
    suffix = wildcard[1:]
    return name.endswith(suffix) and "." not in name[: -len(suffix)] and len(name) > len(suffix)


class StreamContext:
    """A connection's (or UDP session's) variables: what a balancer hashes on (``chash``) and
    what stream plugins read and keep (``ctx.var`` / ``ctx.set_var``)."""

    __slots__ = ("vars", "runtime")
    consumer_name: str | None = None

    def __init__(self, vars: dict[str, Any], runtime: Runtime | None = None) -> None:
        self.vars = vars
        self.runtime = runtime

    def var(self, name: str) -> Any:
        return self.vars.get(name)

    def set_var(self, name: str, value: Any) -> None:
        self.vars[name] = value

    def plugin_metadata(self, name: str) -> Any:
        return self.runtime.plugin_metadata.get(name) if self.runtime is not None else None

    def set_resp_header(self, name: str, value: str) -> None:
        return None     # a stream has no response head


async def _preread(chain: PluginChain, ctx: StreamContext) -> bool:
    """APISIX's preread: the plugins' rewrite and access hooks; False when one refused."""
    for phase in ("rewrite", "access"):
        res = chain.run(phase, ctx)
        while isinstance(res, Pending):
            got = await res.awaitable
            if got is not None:
                return False
            res = chain.run(phase, ctx, res.index + 1)
        if res is not None:
            return False
    return True


def _log_phase(route: StreamRoute, ctx: StreamContext) -> None:
    if route.chain is not None:
        route.chain.run_filters("log", ctx)



async def _connect_tcp(loop: asyncio.AbstractEventLoop, up: UpstreamRuntime, ctx: StreamContext,
                       factory: Any) -> tuple[Any, Node] | None:
    """A connection to one of ``up``'s nodes: another node after a refusal or a connect
    timeout, ``retries`` times at most."""
    tried: list[Node] = []
    for _ in range(up.retries + 1):
        node = up.balancer.pick(ctx, tried=tried, healthy=up.healthy if up.unhealthy else None)
        if node is None:
            return None
        tried.append(node)
        try:
            _, proto = await asyncio.wait_for(loop.create_connection(factory, node.host, node.port),
                                              up.timeouts.connect)
            return proto, node
        except (OSError, asyncio.TimeoutError) as e:
            log.warning("stream: connect to %s failed: %s", node.addr, e or type(e).__name__)
    return None


# --- TCP ------------------------------------------------------------------------------------------


class RelayDown(asyncio.Protocol):
    """The client side of a TCP relay (this module's stream connections, the mesh's
    tcp_proxy): what :class:`RelayUpstream` reads and calls on it."""

    transport: asyncio.Transport | None = None
    peer: RelayUpstream | None = None
    client_eof = False
    upstream_eof = False
    sent = 0            # bytes written to the client
    last = 0.0          # monotonic time of the last bytes either way

    def end(self) -> None:
        """Both directions are done (or cannot go on): close both sides."""
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class RelayUpstream(asyncio.Protocol):
    """The upstream side of a TCP relay: its bytes to the client, half-closes passed on, flow
    control both ways."""

    def __init__(self, down: RelayDown) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        d = self.down
        d.last = time.monotonic()
        if d.transport is not None:
            d.sent += len(data)
            d.transport.write(data)

    def eof_received(self) -> bool | None:
        d = self.down
        d.upstream_eof = True
        t = d.transport
        if t is not None and t.can_write_eof():
            t.write_eof()
            if d.client_eof:
                d.end()
            return True
        d.end()
        return None

    def pause_writing(self) -> None:
        t = self.down.transport
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.down.transport
        if t is not None:
            t.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        t = self.down.transport
        if t is not None:
            t.close()


class _TcpStream(RelayDown):
    """One downstream connection: route, connect, then bytes both ways."""

    def __init__(self, owner: StreamServer, tls: bool) -> None:
        self.owner = owner
        self.tls = tls
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.closed = False
        self.idle = TCP_IDLE
        self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.route: StreamRoute | None = None
        self.ctx: StreamContext | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]
        self.owner.conns.add(self)
        sock_ip, sock_port = t.get_extra_info("sockname")[:2]
        peer = t.get_extra_info("peername") or ("", 0)
        sni = None
        if self.tls:
            obj = t.get_extra_info("ssl_object")
            if obj is not None:
                sni = tls_connection(obj).sni
        route = self.owner.routes().match(_plain_ip(sock_ip), int(sock_port), _plain_ip(peer[0]), sni)
        if route is None or route.upstream is None:
            log.info("stream: no route for %s:%s from %s (sni %s): closed", sock_ip, sock_port, peer[0], sni)
            t.close()
            return
        up = route.upstream
        self.idle = up.timeouts.read if up.conf.get("timeout") else TCP_IDLE
        ctx = StreamContext({"remote_addr": _plain_ip(peer[0]), "remote_port": str(peer[1]),
                             "server_addr": _plain_ip(sock_ip), "server_port": str(sock_port),
                             "ssl_server_name": sni or "", "route_id": route.id}, self.owner.server.runtime)
        self.route, self.ctx = route, ctx
        self.owner.server.loop.create_task(self._connect(up, ctx))
        self._arm()

    async def _connect(self, up: UpstreamRuntime, ctx: StreamContext) -> None:
        if self.route is not None and self.route.chain is not None:
            try:
                ok = await _preread(self.route.chain, ctx)
            except Exception:
                log.exception("stream route %s: a plugin failed", self.route.id)
                ok = False
            if not ok:
                log.info("stream route %s: refused by a plugin: closed", self.route.id)
                if self.transport is not None:
                    self.transport.close()
                return
        got = await _connect_tcp(self.owner.server.loop, up, ctx, lambda: RelayUpstream(self))
        if got is None or self.closed:
            if got is not None:
                got[0].close()
            if self.transport is not None:
                self.transport.close()
            return
        peer, _ = got
        self.peer = peer
        pt = peer.transport
        assert pt is not None
        for chunk in self.pending:
            pt.write(chunk)
        self.pending.clear()
        self.pending_size = 0
        if self.client_eof and pt.can_write_eof():
            pt.write_eof()
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _arm(self) -> None:
        if self.idle > 0:
            self.timer = self.owner.server.loop.call_later(self.idle, self._check_idle)

    def _check_idle(self) -> None:
        self.timer = None
        if self.closed:
            return
        left = self.last + self.idle - time.monotonic()
        if left > 0:
            self.timer = self.owner.server.loop.call_later(left, self._check_idle)
            return
        log.info("stream: idle for %.0fs: closed", self.idle)
        self.end()

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > _PENDING_MAX and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.client_eof = True
        if self.peer is not None and self.peer.transport is not None:
            if not self.peer.transport.can_write_eof():
                self.end()
                return None
            self.peer.transport.write_eof()
            if self.upstream_eof:
                self.end()
        if self.tls:
            return None     # TLS transports cannot half-close: the connection ends here
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        if self.route is not None and self.ctx is not None:
            route, ctx, self.route, self.ctx = self.route, self.ctx, None, None
            _log_phase(route, ctx)


# --- UDP ------------------------------------------------------------------------------------------


class _UdpSession(asyncio.DatagramProtocol):
    """One client address's datagrams to one node, and the node's back."""

    def __init__(self, listener: _UdpListener, client: tuple[Any, ...], idle: float, route: StreamRoute,
                 ctx: StreamContext) -> None:
        self.listener = listener
        self.client = client
        self.idle = idle
        self.route = route
        self.ctx = ctx
        self.refused = False
        self.transport: asyncio.DatagramTransport | None = None
        self.queue: list[bytes] = []
        self.last = time.monotonic()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.DatagramTransport = transport  # type: ignore[assignment]
        self.transport = t
        for d in self.queue:
            t.sendto(d)
        self.queue.clear()

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.closed or self.refused:
            return
        if self.transport is not None:
            self.transport.sendto(data)
        elif len(self.queue) < 64:
            self.queue.append(data)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = time.monotonic()
        lt = self.listener.transport
        if lt is not None:
            lt.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        log.info("stream udp: upstream error for %s: %s", self.client[0], exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.listener.sessions.get(self.client) is self:
                del self.listener.sessions[self.client]
            if self.transport is not None:
                self.transport.close()
            _log_phase(self.route, self.ctx)


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, owner: StreamServer) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self.sessions: dict[tuple[Any, ...], _UdpSession] = {}
        self.sock_ip = ""
        self.sock_port = 0
        self.sweeper: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ip, port = transport.get_extra_info("sockname")[:2]
        self.sock_ip, self.sock_port = _plain_ip(ip), int(port)
        self.sweeper = self.owner.server.loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for s in [s for s in self.sessions.values() if now - s.last > s.idle]:
            s.close()
        self.sweeper = self.owner.server.loop.call_later(1.0, self._sweep)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        s = self.sessions.get(addr)
        if s is None or s.closed:
            route = self.owner.routes().match(self.sock_ip, self.sock_port, _plain_ip(addr[0]))
            if route is None or route.upstream is None:
                return
            up = route.upstream
            ctx = StreamContext({"remote_addr": _plain_ip(addr[0]), "remote_port": str(addr[1]),
                                 "server_addr": self.sock_ip, "server_port": str(self.sock_port),
                                 "route_id": route.id}, self.owner.server.runtime)
            node = up.balancer.pick(ctx, healthy=up.healthy if up.unhealthy else None)
            if node is None:
                return
            s = self.sessions[addr] = _UdpSession(self, addr, up.timeouts.read if up.conf.get("timeout") else UDP_IDLE,
                                                  route, ctx)
            self.owner.server.loop.create_task(self._open(s, node))
        s.send(data)

    async def _open(self, s: _UdpSession, node: Node) -> None:
        if s.route.chain is not None:
            try:
                ok = await _preread(s.route.chain, s.ctx)
            except Exception:
                log.exception("stream route %s: a plugin failed", s.route.id)
                ok = False
            if not ok:
                s.queue.clear()
                s.refused = True     # the session stays, dropping this client's datagrams until idle
                return
        try:
            await self.owner.server.loop.create_datagram_endpoint(lambda: s, remote_addr=(node.host, node.port))
        except OSError as e:
            log.warning("stream udp: cannot reach %s: %s", node.addr, e)
            s.close()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for s in list(self.sessions.values()):
            s.close()
        if self.transport is not None:
            self.transport.close()


# --- the worker's side ----------------------------------------------------------------------------


class StreamServer:
    """The stream listeners of one worker; ``server`` is its ProxyServer (loop, current Runtime)."""

    def __init__(self, server: Any, tls_context: Any = None) -> None:
        self.server = server
        self.tls_context = tls_context
        self.conns: set[_TcpStream] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: list[_UdpListener] = []
        self._routes: StreamRoutes | None = None

    def routes(self) -> StreamRoutes:
        rt: Runtime = self.server.runtime
        got = self._routes
        if got is None or got.version != rt.version:
            got = self._routes = StreamRoutes(rt)
        return got

    async def listen(self, kind: str, sock: socket.socket) -> None:
        loop = self.server.loop
        if kind == "udp":
            lst = _UdpListener(self)
            await loop.create_datagram_endpoint(lambda: lst, sock=sock)
            self._udp.append(lst)
            return
        tls = kind == "tls"
        if tls and self.tls_context is None:
            raise RuntimeError("a TLS stream listener needs the TLS context")
        srv = await loop.create_server(lambda: _TcpStream(self, tls), sock=sock,
                                       ssl=self.tls_context if tls else None, backlog=4096)
        self._servers.append(srv)

    def close(self, conns: Iterable[_TcpStream] | None = None) -> None:
        for srv in self._servers:
            srv.close()
        for lst in self._udp:
            lst.close()
        for c in list(conns if conns is not None else self.conns):
            c.end()
