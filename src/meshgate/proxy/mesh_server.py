"""The mesh data plane's sockets: listeners bound as LDS says, the original-destination
handoff, filter chain selection per connection, and the TCP proxy.

Theory of operation
-------------------
Each worker binds (SO_REUSEPORT) the listeners whose ``bind_to_port`` is true: a sidecar's
``virtualOutbound`` (15001) and ``virtualInbound`` (15006), a gateway's ports.  An accepted
connection is handled by :class:`MeshEntry`:

1. its destination: with ``use_original_dst`` the address before ``iptables -j REDIRECT``
   (``SO_ORIGINAL_DST``), else the local address; a connection that was not redirected
   (a test dialing 15001 directly) keeps the local address, as Envoy does;
2. its listener: ``use_original_dst`` hands it to the listener bound (or not) to exactly
   that address, else to the wildcard listener of that port, else it stays (Envoy's
   handoff from ``virtualOutbound``);
3. its filter chain (:func:`~meshgate.proxy.mesh.select_chain`); when a chain matches on
   transport protocol / ALPN / SNI, the first bytes are read first (what Envoy's
   ``tls_inspector`` and ``http_inspector`` do), bounded by ``SNIFF_TIMEOUT``;
4. the chain's work: HTTP goes to the gateway's HTTP/1 codec with the chain's handle (its
   route table), TCP to :class:`TcpRelay`, anything else is closed.

A listener removed by LDS stops accepting; its connections finish (Envoy drains them).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from ..upstream import Node
from .http1 import ClientConnection
from .mesh import MeshChain, MeshConfig, MeshListener, select_chain
from .origdst import original_dst
from .stream import RelayDown, RelayUpstream
from ..observability.istio import TCP_CLOSED, TCP_OPENED, TCP_RECEIVED, TCP_SENT, IstioPeer, tcp_labels

if TYPE_CHECKING:
    from .server import ProxyServer

__all__ = ["MeshSockets", "MeshEntry", "TcpRelay", "SNIFF_TIMEOUT", "HCM_IDLE_TIMEOUT", "hcm_idle_timeout"]

log = logging.getLogger("meshgate.mesh")

SNIFF_TIMEOUT = 0.1          # seconds to wait for a client's first bytes (server-first protocols)
_SNIFF_MAX = 16384
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")


def sniff(data: bytes) -> tuple[str, list[str], str]:
    """(transport protocol, application protocols, SNI) of a connection's first bytes, as
    Envoy's tls_inspector and http_inspector report them."""
    if data[:1] == b"\x16" and data[1:2] == b"\x03":
        sni, alpn = _client_hello(data)
        return "tls", alpn, sni
    if data.startswith(_H2_PREFACE[:len(data)]) and len(data) >= 3 and data.startswith(b"PRI"):
        return "raw_buffer", ["h2c"], ""
    if data.startswith(_METHODS):
        eol = data.find(b"\r\n")
        line = data[:eol] if eol >= 0 else data
        if line.endswith(b"HTTP/1.0"):
            return "raw_buffer", ["http/1.0"], ""
        return "raw_buffer", ["http/1.1"], ""
    return "raw_buffer", [], ""


def _client_hello(data: bytes) -> tuple[str, list[str]]:
    """SNI and ALPN of a TLS ClientHello (best effort; "" / [] when absent or truncated)."""
    try:
        if data[5] != 1:
            return "", []
        p = 5 + 4 + 2 + 32
        p += 1 + data[p]                                  # session id
        p += 2 + int.from_bytes(data[p:p + 2], "big")     # cipher suites
        p += 1 + data[p]                                  # compression methods
        end = p + 2 + int.from_bytes(data[p:p + 2], "big")
        p += 2
        sni, alpn = "", []
        while p + 4 <= end and p + 4 <= len(data):
            et = int.from_bytes(data[p:p + 2], "big")
            el = int.from_bytes(data[p + 2:p + 4], "big")
            body = data[p + 4:p + 4 + el]
            if et == 0 and len(body) > 5:
                n = int.from_bytes(body[3:5], "big")
                sni = body[5:5 + n].decode("ascii", "replace").lower()
            elif et == 16 and len(body) > 2:
                q = 2
                while q < len(body):
                    n = body[q]
                    alpn.append(body[q + 1:q + 1 + n].decode("ascii", "replace"))
                    q += 1 + n
            p += 4 + el
        return sni, alpn
    except IndexError:
        return "", []


class MeshEntry(asyncio.Protocol):
    """A connection accepted on a bound mesh listener, until its filter chain is chosen."""

    def __init__(self, owner: MeshSockets, listener_name: str) -> None:
        self.owner = owner
        self.listener_name = listener_name
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.lst: MeshListener | None = None
        self.dst: tuple[str, int] = ("0.0.0.0", 0)
        self.src: tuple[str, int] = ("0.0.0.0", 0)
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]
        local = t.get_extra_info("sockname")
        peer = t.get_extra_info("peername")
        self.src = (_ip(peer[0]), int(peer[1])) if peer else ("0.0.0.0", 0)
        dst = (_ip(local[0]), int(local[1])) if local else ("0.0.0.0", 0)
        cfg = self.owner.config
        lst = cfg.listeners.get(self.listener_name) if cfg is not None else None
        if lst is None or cfg is None:
            t.close()
            return
        if lst.use_original_dst or lst.original_dst_filter:
            sock = t.get_extra_info("socket")
            od = None
            if sock is not None:
                try:
                    od = original_dst(sock)
                except OSError:
                    od = None
            if od is not None:
                dst = (_ip(od[0]), int(od[1]))
                # only use_original_dst hands the connection to another listener; the
                # original_dst listener filter just restores the destination it matches on
                target = cfg.listener_for(dst[0], dst[1]) if lst.use_original_dst else None
                if target is not None:
                    lst = target
        self.dst = dst
        self.lst = lst
        if lst.sniff:
            self.timer = self.owner.server.loop.call_later(SNIFF_TIMEOUT, self._choose)
            return
        self._choose()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.done:
            t, alpn, _ = sniff(self.buf)
            # enough to decide: a full ClientHello record, or a request line, or many bytes
            if (t == "tls" and len(self.buf) >= 5 + int.from_bytes(self.buf[3:5], "big")) or \
                    (t == "raw_buffer" and (alpn or b"\n" in self.buf)) or len(self.buf) >= _SNIFF_MAX:
                self._choose()

    def eof_received(self) -> bool | None:
        if not self.done:
            self._choose()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.done = True

    def _choose(self) -> None:
        if self.done or self.transport is None or self.lst is None:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport, alpn, sni = sniff(self.buf) if self.buf else ("raw_buffer", [], "")
        chain = select_chain(self.lst, dst=self.dst, src=self.src, transport=transport, alpn=alpn, sni=sni)
        t = self.transport
        if chain is None or chain.kind == "none":
            if chain is not None and chain.conf.get("unsupported"):
                log.warning("listener %s chain %s: %s; connection closed", self.lst.name, chain.conf.get("name"),
                            chain.conf["unsupported"])
            t.close()
            return
        self.owner.hand_over(t, chain, self.dst, self.src, self.buf)


HCM_IDLE_TIMEOUT = 3600.0      # Envoy's common_http_protocol_options.idle_timeout default


def hcm_idle_timeout(value: float | None) -> float:
    """Seconds a mesh listener keeps an idle downstream HTTP connection: the HCM's
    ``idle_timeout`` (unset: Envoy's hour; 0: never closed).  The peer sidecar's pool keeps
    its connections as long (the cluster's idle_timeout, also an hour by default): a server
    closing them sooner races the client's next request on them, and a mesh route does not
    re-send a request whose reused connection was reset (Envoy's 503 "UC")."""
    if value is None:
        return HCM_IDLE_TIMEOUT
    return float(value) if value > 0 else float("inf")


def _ip(addr: Any) -> str:
    s = str(addr).split("%", 1)[0]
    if s.startswith("::ffff:") and "." in s:
        return s[7:]
    return s


class TcpRelay(RelayDown):
    """tcp_proxy: the client's bytes to one endpoint of the chain's cluster, and back."""

    def __init__(self, owner: MeshSockets, chain: MeshChain, dst: tuple[str, int]) -> None:
        self.owner = owner
        self.chain = chain
        self.dst = dst
        self.pending: list[bytes] = []
        self.closed = False
        self.idle = float(chain.conf["tcp"]["idle_timeout"] or 0) if chain.conf.get("tcp") else 0.0
        self.labels: tuple[str, ...] | None = None   # Istio's TCP metric labels, once connected
        self.received = 0                            # bytes from the client ...
        self.sent = 0                                # ... and to it, not yet counted
        self.client_eof = False                      # half-closes seen: both → the relay ends
        self.upstream_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.server.loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = self.owner.server.loop
        tcp = self.chain.conf["tcp"]
        name = tcp["cluster"]
        if name is None:
            r = random.randrange(sum(w for _, w in tcp["weighted"]))
            for n, w in tcp["weighted"]:
                r -= w
                if r < 0:
                    name = n
                    break
        rt = self.owner.server.runtime
        up = rt.upstreams.get(f"upstreams/{name}")
        node: Node | None = None
        if up is not None:
            if up.original_dst:
                node = Node(self.dst[0], self.dst[1], 1)
            elif up.nodes:
                node = up.balancer.pick(_NoCtx(), healthy=up.healthy if up.unhealthy else None)
        if node is None or self.closed:
            if self.transport is not None:
                self.transport.close()
            return
        kw: dict[str, Any] = {}
        if up is not None and up.bind_source is not None:
            kw["local_addr"] = (up.bind_source, 0)
        try:
            _, peer = await asyncio.wait_for(
                loop.create_connection(lambda: RelayUpstream(self), node.host, node.port, **kw),
                up.timeouts.connect if up is not None else 10.0)
        except (OSError, asyncio.TimeoutError) as e:
            log.info("tcp_proxy %s: connect to %s failed: %s", name, node.addr, e)
            if self.transport is not None:
                self.transport.close()
            return
        if self.closed:
            peer.transport.close()
            return
        self.peer = peer
        me = self.owner.me
        if me is not None and up is not None:
            x = up.conf.get("xds") or {}
            services = (x.get("istio") or {}).get("services") or ()
            inbound = (x.get("subset") or {}).get("direction") == "inbound" or self.chain.inbound
            self.labels = tcp_labels(inbound=inbound, me=me, service=services[0] if services else None,
                                     workload=(node.metadata or {}).get("workload"))
            TCP_OPENED.inc(self.labels)
        pt = peer.transport
        assert pt is not None
        for chunk in self.pending:
            pt.write(chunk)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool | None:
        self.client_eof = True
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            if self.upstream_eof:
                self.end()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.relays.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        labels = self.labels
        if labels is not None:
            self.labels = None
            TCP_RECEIVED.inc(labels, float(self.received))
            TCP_SENT.inc(labels, float(self.sent))
            TCP_CLOSED.inc(labels)


class _NoCtx:
    """A balancer context for a TCP connection (no request to hash on)."""

    consumer_name: str | None = None

    def var(self, name: str) -> str | None:
        return None


def _entry_factory(owner: MeshSockets, name: str) -> Any:
    return lambda: MeshEntry(owner, name)


class MeshSockets:
    """One worker's bound mesh listeners, following the compiled mesh config."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.config: MeshConfig | None = None
        self.bound: dict[str, tuple[tuple[str, int], asyncio.AbstractServer]] = {}
        self.relays: set[TcpRelay] = set()
        self.errors: dict[str, str] = {}
        self.me: IstioPeer | None = None       # this proxy's workload (Istio's metric labels)
        self._lock = asyncio.Lock()

    async def update(self, cfg: MeshConfig) -> None:
        """Bind the listeners ``cfg`` adds, close the ones it drops (their connections go on)."""
        async with self._lock:
            self.config = cfg
            srv0 = self.server
            if srv0._sweeper is None:
                # the server's sweeper enforces upstream deadlines (Envoy's route and per-try
                # timeouts: 504 "upstream request timeout"), client idle/header timeouts and the
                # pool's idle limit; ProxyServer.listen starts it for the gateway's listeners,
                # mesh listeners are bound here, so start it here too
                srv0._sweeper = srv0.loop.create_task(srv0._sweep())
            want = {lst.name: (lst.address, lst.port) for lst in cfg.bound()}
            for name, (addr, srv) in list(self.bound.items()):
                if want.get(name) != addr:
                    srv.close()
                    del self.bound[name]
            for name, addr in want.items():
                if name in self.bound:
                    continue
                try:
                    srv = await self.server.loop.create_server(
                        _entry_factory(self, name), host=addr[0], port=addr[1], reuse_port=True, backlog=4096)
                except OSError as e:
                    if self.errors.get(name) != str(e):
                        log.error("listener %s: cannot bind %s:%d: %s", name, addr[0], addr[1], e)
                    self.errors[name] = str(e)
                    continue
                self.errors.pop(name, None)
                self.bound[name] = (addr, srv)

    def hand_over(self, transport: asyncio.Transport, chain: MeshChain, dst: tuple[str, int],
                  src: tuple[str, int], early: bytes) -> None:
        if chain.kind == "http":
            proto = ClientConnection(self.server)
            proto.handle = chain.handle
            proto.orig_dst = dst
            http = chain.conf.get("http") or {}
            # Envoy overwrites the upstream's Server header with its server_name
            proto.server_name = str(http.get("server_name") or "envoy").encode("latin-1")
            proto.idle_timeout = hcm_idle_timeout(http.get("idle_timeout"))
            transport.set_protocol(proto)
            proto.connection_made(transport)
            # the request's server address is where the client was going (Envoy's
            # downstream local address after the handoff)
            proto.local_ip, proto.local_port = dst
            if early:
                proto.data_received(early)
        else:
            relay = TcpRelay(self, chain, dst)
            self.relays.add(relay)
            transport.set_protocol(relay)
            relay.connection_made(transport)
            if early:
                relay.data_received(early)

    def close(self) -> None:
        for _, srv in self.bound.values():
            srv.close()
        self.bound.clear()
        for r in list(self.relays):
            if r.transport is not None:
                r.transport.close()

    def status(self) -> dict[str, Any]:
        return {"bound": {n: f"{a[0]}:{a[1]}" for n, (a, _) in self.bound.items()}, "errors": dict(self.errors)}
