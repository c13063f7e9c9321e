"""A worker process: receives Snapshots from the supervisor, serves traffic.

Started by the supervisor as ``python -m meshgate.proxy.worker --fd N``; N is its end
of a socketpair.  Every worker serves the SO_REUSEPORT listening sockets of its slot
(inherited from the supervisor; the HTTPS ones through a TLSListener), compiles
each Snapshot once, acknowledges the version it applied (``/v1/config`` shows them),
reports passive health events and applies the shared health state it is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Mapping

from ..model import Resource, Snapshot
from ..plugins import PluginRegistry
from ..observability import REGISTRY as METRICS
from ..observability import close_exporters, flush_all
from .common import S_HEAD, S_IDLE, ProxySettings
from . import heap
from .ipc import Channel, open_channel
from .stream import StreamServer
from .runtime import Runtime, build_runtime, set_upstream_ca
from .server import ProxyServer
from .tls import ALPN_H1, ALPN_H2, ALPN_NONE, TLSListener

if TYPE_CHECKING:   # the mesh's modules load in mesh mode only (about 3 MB a gateway worker does without)
    from ..observability.istio import IstioPeer
    from .mesh import MeshConfig
    from .mesh_server import MeshSockets

__all__ = ["WorkerMain", "snapshot_to_wire", "snapshot_delta", "snapshot_from_wire", "main"]

log = logging.getLogger("meshgate.worker")

# Always on the page, as APISIX's exporter has them (prometheus plugin used or not).
CONNECTIONS = ("nginx_http_current_connections", "Number of HTTP connections", ("state",))
REQUESTS = ("http_requests_total", "The total number of client requests since APISIX started")


def snapshot_to_wire(snap: Snapshot) -> dict[str, Any]:
    return {
        "version": snap.version,
        "resources": {k: [(r.id, r.value, r.created_index, r.modified_index) for r in items.values()]
                      for k, items in snap.resources.items()},
    }


def snapshot_delta(prev: Snapshot, snap: Snapshot) -> dict[str, Any]:
    """What a worker holding ``prev`` needs to rebuild ``snap``: per changed kind, the items
    put and the ids deleted (``changes``), or the whole kind (``resources``) when its new
    order is not "old order, minus deletions, plus new ids at the end" (a full reload
    that reorders).  Unchanged items cross as nothing: one change among 10,000 routes
    is one item on the wire."""
    full: dict[str, list[tuple[str, Any, int, int]]] = {}
    changes: dict[str, tuple[list[tuple[str, Any, int, int]], list[str]]] = {}
    if snap.changed is not None and snap.version == prev.version + 1:
        # the store says what changed: the cost is the change's, not the config's
        for kind, ids in snap.changed.items():
            items = snap.resources.get(kind, {})
            puts = [(r.id, r.value, r.created_index, r.modified_index)
                    for id, _ in ids if (r := items.get(id)) is not None]
            changes[kind] = (puts, [id for id, removed in ids if removed])
        return {"version": snap.version, "base": prev.version, "resources": full, "changes": changes}
    for kind, items in snap.resources.items():
        old = prev.resources.get(kind, {})
        if items is old:
            continue
        deleted = [id for id in old if id not in items]
        gone = set(deleted)
        kept = [id for id in old if id not in gone]
        order = list(items)
        if order[:len(kept)] != kept:
            full[kind] = [(r.id, r.value, r.created_index, r.modified_index) for r in items.values()]
            continue
        puts = [(r.id, r.value, r.created_index, r.modified_index) for id, r in items.items() if old.get(id) is not r]
        if puts or deleted:
            changes[kind] = (puts, deleted)
    for kind in prev.resources:
        if kind not in snap.resources:
            full[kind] = []
    return {"version": snap.version, "base": prev.version, "resources": full, "changes": changes}


def _resource(kind: str, row: tuple[str, Any, int, int], prev: Mapping[str, Resource]) -> Resource:
    id, value, ci, mi = row
    old = prev.get(id)
    if old is not None and old.modified_index == mi and old.value == value:
        return old
    return Resource(kind=kind, id=id, value=value, created_index=ci, modified_index=mi)


def snapshot_from_wire(msg: dict[str, Any], previous: Snapshot | None) -> Snapshot:
    """Rebuild a Snapshot from a full or a delta message (:func:`snapshot_delta`; the
    caller checks that ``previous`` is its base); values equal to the previous version
    keep their identity, so the compile reuses what did not change."""
    out: dict[str, Mapping[str, Resource]] = dict(previous.resources) if previous is not None and "base" in msg \
        else {}
    empty: Mapping[str, Resource] = {}
    for kind, rows in msg["resources"].items():
        prev = previous.resources.get(kind, empty) if previous is not None else empty
        out[kind] = {row[0]: _resource(kind, row, prev) for row in rows}
    for kind, (puts, deleted) in msg.get("changes", {}).items():
        prev = previous.resources.get(kind, empty) if previous is not None else empty
        bucket = dict(prev)
        for id in deleted:
            bucket.pop(id, None)
        for row in puts:
            bucket[row[0]] = _resource(kind, row, prev)
        out[kind] = bucket
    return Snapshot(version=msg["version"], resources=out)


class WorkerMain:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.channel: Channel | None = None
        self.server: ProxyServer | None = None
        self.snapshot: Snapshot | None = None
        self.runtime: Runtime | None = None
        self.router_kind = "radixtree_host_uri"
        self.plugins = PluginRegistry()
        self.worker_id = 0
        self.stop = asyncio.Event()
        self.grace = 240.0
        self.health: dict[str, frozenset[str]] = {}
        self.init_done = asyncio.Event()
        self._received: Snapshot | None = None    # the last Snapshot received (maybe not compiled yet)
        self._compile_soon = False
        self.init_msg: dict[str, Any] = {}
        # mesh mode (``meshgate mesh``): listeners and route tables from xDS
        self.mesh_mode = False
        self.mesh: MeshConfig | None = None
        self.mesh_sockets: MeshSockets | None = None
        self.stream: StreamServer | None = None
        self.mesh_peer: IstioPeer | None = None   # this proxy's workload, for Istio's metrics

    def on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "init":
            self.init_msg = msg
            # before anything is compiled: the CAs upstream certificates are verified against
            set_upstream_ca(((msg.get("settings") or {}).get("node_ssl") or {}).get("ssl_trusted_certificate"))
            self.init_done.set()
        elif op == "snapshot":
            if self.init_done.is_set() and self.runtime is not None:
                self.on_snapshot(msg)
            else:
                self.apply_snapshot(msg)
        elif op == "health":
            self.health[msg["key"]] = frozenset(msg["unhealthy"])
            if self.runtime is not None:
                up = self.runtime.upstreams.get(msg["key"])
                if up is not None:
                    up.unhealthy = self.health[msg["key"]]
        elif op == "drain":
            self.grace = float(msg.get("grace", self.grace))
            self.stop.set()
        elif op == "metrics":
            self.send_metrics(msg.get("id"))
        elif op == "reload_plugins":
            self.reload_plugins(msg["enabled"] if "enabled" in msg else True)

    def reload_plugins(self, enabled: list[str] | None | bool = True) -> None:
        """Re-import the directory plugins (with a new enabled list when given) and recompile
        the running config with them."""
        self.plugins.reload(enabled=enabled)
        if self.snapshot is None:
            return
        try:
            rt = build_runtime(self.snapshot, router_kind=self.router_kind, plugins=self.plugins,
                               previous=self.runtime)
        except Exception:
            log.exception("worker %d: cannot recompile after the plugin reload; keeping the old chains",
                          self.worker_id)
            return
        for key, up in rt.upstreams.items():
            if key in self.health:
                up.unhealthy = self.health[key]
        self.runtime = rt
        if self.server is not None:
            self.server.set_runtime(rt)

    def receive_snapshot(self, msg: dict[str, Any]) -> Snapshot | None:
        """Decode a full or delta Snapshot message against the last one received."""
        have = self._received or self.snapshot
        base = msg.get("base")
        if base is not None and (have is None or have.version != base):
            # a delta against a version this worker never had (it was starting when the
            # supervisor published): ask for the whole state
            if self.channel is not None:
                self.channel.send({"op": "resync", "worker": self.worker_id,
                                   "have": have.version if have else None})
            return None
        self._received = snapshot_from_wire(msg, have)
        return self._received

    def on_snapshot(self, msg: dict[str, Any]) -> None:
        """Messages that arrive together (a burst of writes) are compiled once, as the last."""
        if self.receive_snapshot(msg) is not None and not self._compile_soon:
            self._compile_soon = True
            asyncio.get_running_loop().call_soon(self._compile_received)

    def _compile_received(self) -> None:
        self._compile_soon = False
        snap = self._received
        if snap is not None and (self.snapshot is None or snap.version != self.snapshot.version):
            self.install(snap)

    def apply_snapshot(self, msg: dict[str, Any]) -> None:
        """Decode and compile now (the first Snapshot, before serving)."""
        snap = self.receive_snapshot(msg)
        if snap is not None:
            self.install(snap)

    def install(self, snap: Snapshot) -> None:
        try:
            rt = build_runtime(snap, router_kind=self.router_kind, plugins=self.plugins, previous=self.runtime)
        except Exception:
            log.exception("worker %d: cannot compile config version %d; keeping version %s", self.worker_id,
                          snap.version, self.snapshot.version if self.snapshot else None)
            return
        for key, up in rt.upstreams.items():
            if key in self.health:
                up.unhealthy = self.health[key]
        self.snapshot = snap
        self.runtime = rt
        if self.server is not None:
            self.server.set_runtime(rt)
        heap.settle()
        if self.mesh_mode and self._install_mesh(snap, rt):
            return   # reported applied once the listeners it asks for are bound
        self._applied(snap.version)

    def _applied(self, version: int) -> None:
        if self.channel is not None:
            self.channel.send({"op": "applied", "worker": self.worker_id, "pid": os.getpid(), "version": version,
                               "at": time.time()})

    def _install_mesh(self, snap: Snapshot, rt: Runtime) -> bool:
        """Compile the mesh config; True when its listeners are being (re)bound, and the
        version is reported applied after that (a listener LDS added takes connections then)."""
        from .mesh import compile_mesh
        try:
            self.mesh = compile_mesh(snap, rt, previous=self.mesh, me=self.mesh_peer)
        except Exception:
            log.exception("worker %d: cannot compile the mesh config of version %d", self.worker_id, snap.version)
            return False
        if self.mesh_sockets is None:
            return False
        sockets, mesh = self.mesh_sockets, self.mesh

        async def bind() -> None:
            try:
                await sockets.update(mesh)
            finally:
                self._applied(snap.version)
        asyncio.get_event_loop().create_task(bind())
        return True

    def send_metrics(self, req_id: Any, *, final: bool = False) -> None:
        """Answer the supervisor's scrape with this worker's samples (it sums all workers).

        The connection gauges are nginx's stub_status as APISIX exports them: a connection
        reading its request head is ``reading``, an idle keep-alive one ``waiting``, any
        other ``writing``; ``active`` is all of them.
        """
        if self.channel is None:
            return
        srv = self.server
        if srv is not None:
            reading = waiting = 0
            for conn in srv.connections:
                st = conn.state
                if st == S_HEAD:
                    reading += 1
                elif st == S_IDLE:
                    waiting += 1
            active = len(srv.connections)
            conns = METRICS.gauge(*CONNECTIONS)
            conns.set(("active",), active)
            conns.set(("reading",), reading)
            conns.set(("writing",), active - reading - waiting)
            conns.set(("waiting",), waiting)
            METRICS.gauge(*REQUESTS, aggregate="total").set((), srv.requests_total)
        self.channel.send({"op": "metrics", "id": req_id, "worker": self.worker_id, "pid": os.getpid(),
                           "final": final, "samples": METRICS.collect()})

    def passive(self, key: str, addr: str, kind: str, status: int) -> None:
        if self.channel is not None:
            self.channel.send({"op": "passive", "key": key, "addr": addr, "kind": kind, "status": status})

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=self.fd)
        self.channel = await open_channel(sock, self.on_message, on_lost=self.stop.set)
        await self.init_done.wait()
        init = self.init_msg
        self.worker_id = int(init.get("worker", 0))
        self.router_kind = init.get("router", self.router_kind)
        self.mesh_mode = bool(init.get("mesh"))
        if self.mesh_mode:
            from ..observability.istio import node_peer
            self.mesh_peer = node_peer(init.get("mesh_node") or {})
        self.plugins.load_all(init.get("plugin_dirs", ()), enabled=init.get("enabled_plugins"),
                              entry_points=init.get("entry_points"))
        settings = ProxySettings(**init.get("settings", {}))
        self.grace = settings.drain_grace
        if self.runtime is None:
            self.apply_snapshot(init["snapshot"])
        assert self.runtime is not None
        self.server = ProxyServer(settings, self.runtime, passive_report=self.passive)
        for host, port, fd in init.get("listen", []):
            await self.server.listen(host, port, sock=socket.socket(fileno=fd))
        if self.mesh_mode:
            from .breaker import Breakers
            from .mesh import compile_mesh
            from .mesh_server import MeshSockets
            self.mesh_sockets = MeshSockets(self.server)
            self.mesh_sockets.me = self.mesh_peer
            self.server.breakers = Breakers(self.worker_id, int(init.get("workers", 1)))
            if self.mesh is None and self.snapshot is not None:
                self.mesh = compile_mesh(self.snapshot, self.runtime, previous=None, me=self.mesh_peer)
            if self.mesh is not None:
                await self.mesh_sockets.update(self.mesh)
        tls_listen = init.get("tls_listen") or []
        stream_listen = init.get("stream_listen") or []
        server = self.server

        def tls_listener(alpn: tuple[str, ...]) -> TLSListener:
            # the certificate of each handshake comes from the Runtime serving at that moment
            return TLSListener(lambda: server.runtime.tls, ssl_protocols=settings.ssl_protocols,
                               ssl_ciphers=settings.ssl_ciphers, fallback_sni=settings.fallback_sni, alpn=alpn)
        if tls_listen:
            # apisix.enable_http2: ALPN offers h2 (then http/1.1)
            tls = tls_listener(ALPN_H2 if settings.http2 else ALPN_H1)
            for host, port, fd in tls_listen:
                await self.server.listen(host, port, sock=socket.socket(fileno=fd), ssl_ctx=tls.context)
        if stream_listen:
            # the stream proxy relays what the client sends: no ALPN (nginx's stream module)
            stream_tls = tls_listener(ALPN_NONE) if any(k == "tls" for k, *_ in stream_listen) else None
            self.stream = StreamServer(self.server, stream_tls.context if stream_tls is not None else None)
            for kind, _host, _port, fd in stream_listen:
                await self.stream.listen(kind, socket.socket(fileno=fd))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.channel.send({"op": "ready", "worker": self.worker_id, "pid": os.getpid()})
        await self.stop.wait()
        if self.mesh_sockets is not None:
            self.mesh_sockets.close()
        drain_start = loop.time()
        if self.stream is not None:
            self.stream.close(())     # no new stream connections; established ones may finish
        await self.server.drain(self.grace)
        if self.stream is not None:
            while self.stream.conns and loop.time() - drain_start < self.grace:
                await asyncio.sleep(0.1)
            self.stream.close()
        # what loggers and tracers still buffer goes out before the worker exits (bounded)
        await asyncio.gather(flush_all(min(5.0, self.grace)), close_exporters(min(5.0, self.grace)))
        # Last samples, so the gateway's totals survive this worker (reload, scale down).
        self.send_metrics(None, final=True)
        t = self.channel.transport
        deadline = loop.time() + 2.0
        while t is not None and not t.is_closing() and t.get_write_buffer_size() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return 0


def _parse_args(argv: list[str]) -> tuple[int, str]:
    """``--fd N [--log-level LEVEL]`` (the supervisor's command line; argparse would cost every
    worker ~0.4 MB for two flags)."""
    fd: int | None = None
    level = "WARNING"
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name not in ("--fd", "--log-level"):
            raise SystemExit(f"meshgate-worker: unknown argument {a!r} (expected --fd N [--log-level LEVEL])")
        if not eq:
            i += 1
            if i >= len(argv):
                raise SystemExit(f"meshgate-worker: {name} needs a value")
            value = argv[i]
        if name == "--fd":
            if not value.isdigit():
                raise SystemExit(f"meshgate-worker: --fd {value!r}: expected a file descriptor number")
            fd = int(value)
        else:
            level = value
        i += 1
    if fd is None:
        raise SystemExit("meshgate-worker: --fd is required")
    return fd, level


def main(argv: list[str] | None = None) -> int:
    fd, level = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=level, format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        pass
    # The worker must not react to the terminal's Ctrl-C directly: the supervisor drains it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return asyncio.run(WorkerMain(fd).run())


if __name__ == "__main__":
    sys.exit(main())
