"""The supervisor: worker processes, config fan-out, and state shared by workers.

Theory of operation
-------------------
The supervisor owns everything that must be *one* state for the whole gateway
(DESIGN.md, "State shared by worker processes"): it spawns ``N`` worker processes
(``nginx_config.worker_processes``) sharing each port with SO_REUSEPORT.  The
supervisor binds one SO_REUSEPORT socket per (address, worker slot) and hands it to the
worker of that slot: the kernel spreads connections over the slots, and because the
supervisor keeps its reference, a slot's accept queue survives its worker being
replaced (SIGHUP or a crash), so a reload refuses no connection (hardening F6);
it pushes every Snapshot to all of them over a socketpair and records the version
each one applied (``/v1/config``); and it is the single health-check owner: one
active prober per upstream node, passive events reported by workers folded into one
state machine, and every health change broadcast back to all workers.  A worker that
dies is restarted with the current Snapshot.  Draining sends ``drain`` to workers
and waits for them to exit within the grace period.

Metrics: each worker records into its own registry.  The supervisor serves the
Prometheus page (``plugin_attr.prometheus.export_addr``, as APISIX's export server) and,
per scrape, sends ``{"op": "metrics", "id": n}`` to every live worker, waits a bounded
time for the ``{"op": "metrics", "id": n, "samples": [...]}`` answers (a worker that is
late counts with its previous answer) and adds them up.  A worker that exits sends its
final samples first; their cumulative part (counters, histograms) is kept in a
``retired`` total so the gateway's counters never go backwards on a reload or a crash.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..model import Snapshot
from ..observability import CONTENT_TYPE, Family, merge, render
from ..plugins import PluginRegistry
from ..shared import cleanup as shared_cleanup
from ..upstream import ActiveProber, HealthState, Node, probe_plan
from .common import HTML, error_body
from . import heap
from .ipc import Channel, open_channel
from .runtime import Runtime, build_runtime
from .worker import snapshot_delta, snapshot_to_wire

__all__ = ["Supervisor", "HealthOwner", "WorkerHandle", "MetricsExport"]

log = logging.getLogger("meshgate.supervisor")


def _listen_socket(host: str, port: int, *, udp: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        s.bind((host, port))
        if not udp:
            s.listen(4096)
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    return s


class HealthOwner:
    """One HealthState (+ one ActiveProber) per upstream that has ``checks``."""

    def __init__(self, broadcast: Any) -> None:
        self.broadcast = broadcast
        self.states: dict[str, HealthState] = {}
        self.confs: dict[str, Any] = {}
        self.probers: dict[str, ActiveProber] = {}
        self.names: dict[str, str] = {}

    def _on_change(self, key: str) -> Any:
        def cb(node: Node, healthy: bool) -> None:
            st = self.states.get(key)
            if st is None:
                return
            log.warning("upstream %s node %s is now %s", key, node.addr, "healthy" if healthy else "unhealthy")
            unhealthy = sorted({n.addr for n in st.nodes if not st.is_healthy(n)})
            self.broadcast(key, unhealthy)
        return cb

    def update(self, runtime: Runtime) -> list[ActiveProber]:
        """Sync with a new Runtime; returns probers that must be stopped."""
        stale: list[ActiveProber] = []
        seen = set()
        for key, up in runtime.upstreams.items():
            if not up.has_checks:
                continue
            seen.add(key)
            if self.confs.get(key) is up.conf:
                continue
            old = self.states.get(key)
            try:
                st = HealthState(up.conf["checks"], up.nodes, on_change=self._on_change(key), previous=old)
            except Exception as e:
                log.error("upstream %s: health checks disabled: %s", key, e)
                continue
            self.states[key] = st
            self.confs[key] = up.conf
            self.names[key] = up.conf.get("name") or key
            p = self.probers.pop(key, None)
            if p is not None:
                stale.append(p)
            spec = probe_plan(up.conf["checks"])
            if spec is not None and up.nodes:
                prober = ActiveProber(st, spec, up.nodes)
                prober.start()
                self.probers[key] = prober
            unhealthy = sorted({n.addr for n in st.nodes if not st.is_healthy(n)})
            self.broadcast(key, unhealthy)
        for key in list(self.states):
            if key not in seen:
                del self.states[key]
                self.confs.pop(key, None)
                p = self.probers.pop(key, None)
                if p is not None:
                    stale.append(p)
                self.broadcast(key, [])
        return stale

    def passive(self, key: str, addr: str, kind: str, status: int) -> None:
        st = self.states.get(key)
        if st is None:
            return
        node = next((n for n in st.nodes if n.addr == addr), None)
        if node is None:
            return
        if kind == "http":
            st.report_http(node, status, active=False)
        elif kind == "timeout":
            st.report_timeout(node, active=False)
        else:
            st.report_tcp_failure(node, active=False)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for key, st in self.states.items():
            out.append({"name": f"/apisix/{key}", "type": st.checks.active.type if st.checks.active else "http",
                        "nodes": st.snapshot()})
        return out

    async def stop(self) -> None:
        for p in self.probers.values():
            await p.stop()
        self.probers.clear()


@dataclass
class WorkerHandle:
    index: int
    proc: subprocess.Popen[bytes]
    channel: Channel | None = None
    pid: int = 0
    version: int = 0
    applied_at: float = 0.0          # wall clock when the worker started serving ``version``
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: bool = False
    samples: list[Family] | None = None      # the worker's last metrics answer


@dataclass(frozen=True, slots=True)
class MetricsExport:
    """``plugin_attr.prometheus``: where the supervisor serves the summed metrics page."""

    ip: str = "127.0.0.1"
    port: int = 9091
    uri: str = "/apisix/prometheus/metrics"
    prefix: str = "apisix_"
    scrape_timeout: float = 2.0               # bounded wait for the workers' answers


def _cumulative(fams: list[Family]) -> list[Family]:
    """What of a worker's samples outlives it: counters, histograms, running totals."""
    return [f for f in fams if f.type != "gauge" or f.aggregate == "total"]


class Supervisor:
    COMPILE_DELAY = 0.2   # seconds between a publish and the supervisor's own compile

    def __init__(self, *, workers: int, listen: list[tuple[str, int]], settings: dict[str, Any],
                 router_kind: str = "radixtree_host_uri", plugin_dirs: tuple[str, ...] = (),
                 log_level: str = "WARNING", grace: float = 240.0,
                 metrics_export: MetricsExport | None = None, enabled_plugins: tuple[str, ...] | None = None,
                 tls_listen: list[tuple[str, int]] | None = None, mesh: bool = False,
                 mesh_node: dict[str, Any] | None = None,
                 stream_listen: list[tuple[str, str, int]] | None = None) -> None:
        self.nworkers = max(1, workers)
        self.mesh = mesh                       # workers also serve the xDS listeners (meshgate mesh)
        self.mesh_node = mesh_node or {}       # the node metadata (Istio's metric labels)
        self.listen = listen
        self.tls_listen = tls_listen or []     # HTTPS addresses (apisix.ssl.listen when enabled)
        self.stream_listen = stream_listen or []   # (tcp|tls|udp, host, port): apisix.stream_proxy
        self.stream_sockets: dict[tuple[str, str, int], list[socket.socket]] = {}
        self.settings = settings
        self.router_kind = router_kind
        self.plugin_dirs = plugin_dirs
        self.log_level = log_level
        self.grace = grace
        self.workers: list[WorkerHandle] = []
        self.snapshot: Snapshot | None = None
        self._runtime: Runtime | None = None
        self._catch_up_handle: asyncio.TimerHandle | None = None
        self.enabled_plugins = enabled_plugins
        self.plugins = PluginRegistry()
        self.plugins.load_all(plugin_dirs, enabled=enabled_plugins)
        self.health = HealthOwner(self._broadcast_health)
        self.health_view: dict[str, list[str]] = {}
        self.stopping = False
        self._wire: dict[str, Any] | None = None
        # (host, port) -> one listening socket per worker slot
        self.sockets: dict[tuple[str, int], list[socket.socket]] = {}
        self.metrics_export = metrics_export
        self.metrics_server: asyncio.AbstractServer | None = None
        self._handles: list[WorkerHandle] = []   # every worker not yet exited (old generations too)
        self._retired: list[Family] = []         # cumulative samples of exited workers
        self._scrape_seq = 0
        self._scrapes: dict[int, tuple[dict[int, list[Family]], set[int], asyncio.Future[None]]] = {}

    def _bind(self) -> None:
        """Bind what the current node config asks for; keep sockets that already exist."""
        want = set(self.listen) | set(self.tls_listen)
        for addr in list(self.sockets):
            if addr not in want:
                for s in self.sockets.pop(addr):
                    s.close()
        for addr in self.listen + self.tls_listen:
            socks = self.sockets.setdefault(addr, [])
            while len(socks) < self.nworkers:
                socks.append(_listen_socket(*addr))
            while len(socks) > self.nworkers:
                socks.pop().close()
        for key in list(self.stream_sockets):
            if key not in self.stream_listen:
                for s in self.stream_sockets.pop(key):
                    s.close()
        for key in self.stream_listen:
            socks = self.stream_sockets.setdefault(key, [])
            while len(socks) < self.nworkers:
                socks.append(_listen_socket(key[1], key[2], udp=key[0] == "udp"))
            while len(socks) > self.nworkers:
                socks.pop().close()

    # -- config ----------------------------------------------------------------------------
    def compile(self, snapshot: Snapshot) -> Runtime:
        if self.mesh:
            # the supervisor of a sidecar needs only what it health-checks (outlier detection
            # as checks): compiling thousands of clusters a third time (beside two workers)
            # was a third of its memory
            ups = snapshot.items("upstreams")
            checked = {k: r for k, r in ups.items() if r.value.get("checks")}
            prev = self._runtime.snapshot.items("upstreams") if self._runtime is not None else None
            if prev is not None and len(prev) == len(checked) and all(prev.get(k) is r for k, r in checked.items()):
                checked = dict(prev)   # same objects: build_runtime reuses the compiled upstreams
            snapshot = Snapshot(version=snapshot.version, resources={"upstreams": checked})
        return build_runtime(snapshot, router_kind=self.router_kind, plugins=self.plugins, previous=self._runtime)

    @property
    def runtime(self) -> Runtime | None:
        """The supervisor's own compile of the current Snapshot (health checks, Control API).

        Built a moment after the workers got the Snapshot (they serve traffic; this copy
        does not), or right away when something asks for it."""
        if self.snapshot is not None and (self._runtime is None or self._runtime.version != self.snapshot.version):
            self._catch_up()
        return self._runtime

    @runtime.setter
    def runtime(self, rt: Runtime | None) -> None:
        self._runtime = rt

    def _catch_up(self) -> None:
        if self._catch_up_handle is not None:
            self._catch_up_handle.cancel()
            self._catch_up_handle = None
        snap = self.snapshot
        if snap is None or (self._runtime is not None and self._runtime.version == snap.version):
            return
        rt = self.compile(snap)
        seen = {str(e) for e in self._runtime.errors} if self._runtime is not None else set()
        for e in rt.errors:
            if str(e) not in seen:   # each problem once, not again with every later version
                log.error("config version %d: %s", snap.version, e)
        self._runtime = rt
        heap.settle()
        for p in self.health.update(rt):
            asyncio.get_running_loop().create_task(p.stop())

    def publish(self, snapshot: Snapshot) -> None:
        # Workers first, and only what changed crosses the socket; the supervisor's own
        # compile waits a little (coalescing bursts) so it does not compete with theirs
        # for the CPU while the change is on its way to traffic.
        prev = self.snapshot
        self.snapshot = snapshot
        self._wire = None
        if self.workers:
            body = snapshot_delta(prev, snapshot) if prev is not None else snapshot_to_wire(snapshot)
            msg = {"op": "snapshot", **body}
            for w in self.workers:
                if w.channel is not None:
                    w.channel.send(msg)
        if self._runtime is None or not self.workers:
            self._catch_up()
        elif self._catch_up_handle is None:
            self._catch_up_handle = asyncio.get_running_loop().call_later(self.COMPILE_DELAY, self._catch_up)

    def _full_wire(self) -> dict[str, Any]:
        assert self.snapshot is not None
        if self._wire is None or self._wire["version"] != self.snapshot.version:
            self._wire = snapshot_to_wire(self.snapshot)
        return self._wire

    def reload_plugins(self, enabled: list[str] | None | bool = True) -> list[str] | None:
        """Re-import the directory plugins here and in every worker, and recompile the current
        config with them (APISIX ``PUT /v1/plugins/reload``); requests in flight finish with the
        chains they started with.  ``enabled``: a new list of enabled plugins (the list APISIX
        keeps in etcd, ``None`` for all), or ``True`` to keep the current one.  Returns the
        plugins now loaded from directories."""
        if enabled is not True:
            self.enabled_plugins = tuple(enabled) if isinstance(enabled, list) else None
        loaded = self.plugins.reload(enabled=enabled)
        log.warning("plugins reloaded: %s%s", ", ".join(loaded) or "none",
                    "".join(f"; {e}" for e in self.plugins.errors))
        msg: dict[str, Any] = {"op": "reload_plugins"}
        if enabled is not True:
            msg["enabled"] = enabled if isinstance(enabled, list) else None
        for w in self.workers:
            if w.channel is not None:
                w.channel.send(msg)
        if self.snapshot is None:
            return None
        self.runtime = self.compile(self.snapshot)
        return loaded

    def _broadcast_health(self, key: str, unhealthy: list[str]) -> None:
        self.health_view[key] = unhealthy
        for w in self.workers:
            if w.channel is not None:
                w.channel.send({"op": "health", "key": key, "unhealthy": unhealthy})
        if self.runtime is not None:
            up = self.runtime.upstreams.get(key)
            if up is not None:
                up.unhealthy = frozenset(unhealthy)

    # -- workers -----------------------------------------------------------------------------
    async def _spawn(self, index: int) -> WorkerHandle:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [sys.executable, "-m", "meshgate.proxy.worker", "--fd", str(child.fileno()), "--log-level", self.log_level]
        tls = set(self.tls_listen)
        listen_fds = [(h, p, socks[index].fileno()) for (h, p), socks in self.sockets.items() if (h, p) not in tls]
        tls_fds = [(h, p, socks[index].fileno()) for (h, p), socks in self.sockets.items() if (h, p) in tls]
        stream_fds = [(k, h, p, socks[index].fileno()) for (k, h, p), socks in self.stream_sockets.items()]
        proc = subprocess.Popen(cmd, pass_fds=[child.fileno()] + [fd for _, _, fd in listen_fds + tls_fds] +
                                [fd for *_, fd in stream_fds], start_new_session=False)
        child.close()
        h = WorkerHandle(index=index, proc=proc, pid=proc.pid)

        def on_message(msg: dict[str, Any]) -> None:
            op = msg.get("op")
            if op == "ready":
                h.ready.set()
            elif op == "applied":
                h.version = int(msg["version"])
                h.applied_at = float(msg.get("at", 0.0))
            elif op == "passive":
                self.health.passive(msg["key"], msg["addr"], msg["kind"], int(msg["status"]))
            elif op == "metrics":
                self._on_metrics(h, msg)
            elif op == "resync" and h.channel is not None and self.snapshot is not None:
                h.channel.send({"op": "snapshot", **self._full_wire()})

        def on_lost() -> None:
            h.exited = True
            self._retire(h)
            h.ready.set()
            if not self.stopping:
                asyncio.get_running_loop().create_task(self._respawn(h))

        self._handles.append(h)
        h.channel = await open_channel(parent, on_message, on_lost)
        assert self.snapshot is not None
        h.channel.send({"op": "init", "worker": index, "router": self.router_kind, "settings": self.settings,
                        "listen": listen_fds, "tls_listen": tls_fds, "stream_listen": stream_fds,
                        "plugin_dirs": list(self.plugin_dirs), "entry_points": self.plugins.entry_points,
                        "enabled_plugins": self.enabled_plugins, "mesh": self.mesh,
                        "mesh_node": self.mesh_node, "workers": self.nworkers,
                        "snapshot": {"op": "snapshot", **self._full_wire()}})
        for key, unhealthy in self.health_view.items():
            h.channel.send({"op": "health", "key": key, "unhealthy": unhealthy})
        return h

    async def _respawn(self, old: WorkerHandle) -> None:
        await asyncio.get_running_loop().run_in_executor(None, old.proc.wait)
        if self.stopping or old not in self.workers:
            return
        log.error("worker %d (pid %d) exited with %s; restarting", old.index, old.pid, old.proc.returncode)
        await asyncio.sleep(0.5)
        if self.stopping:
            return
        new = await self._spawn(old.index)
        self.workers[self.workers.index(old)] = new

    async def start(self, snapshot: Snapshot, *, ready_timeout: float = 30.0) -> None:
        self._bind()
        self.publish(snapshot)
        self.workers = [await self._spawn(i) for i in range(self.nworkers)]
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), ready_timeout)
        dead = [w for w in self.workers if w.exited]
        if dead:
            raise RuntimeError(f"worker {dead[0].index} failed to start (exit code {dead[0].proc.poll()}); "
                               "see the log above (is the port already in use?)")
        await self._start_metrics_server()

    async def replace_workers(self, *, listen: list[tuple[str, int]], settings: dict[str, Any], workers: int,
                              router_kind: str, tls_listen: list[tuple[str, int]] | None = None,
                              stream_listen: list[tuple[str, str, int]] | None = None) -> None:
        """SIGHUP: start a new generation with the new node config, then drain the old one."""
        old = self.workers
        self.listen, self.settings, self.nworkers, self.router_kind = listen, settings, max(1, workers), router_kind
        self.tls_listen = tls_listen or []
        old_stream = {k: v for k, v in self.stream_sockets.items() if k not in (stream_listen or [])}
        self.stream_sockets = {k: v for k, v in self.stream_sockets.items() if k in (stream_listen or [])}
        self.stream_listen = stream_listen or []
        assert self.snapshot is not None
        self.runtime = None
        self.publish(self.snapshot)
        # Sockets of addresses that stay are kept, so connections queued on them are
        # accepted by the new generation; removed addresses close after the old drain.
        keep = dict(self.sockets)
        want = set(self.listen) | set(self.tls_listen)
        self.sockets = {a: s for a, s in keep.items() if a in want}
        self._bind()
        self.workers = [await self._spawn(i) for i in range(self.nworkers)]
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), 30.0)
        await self._drain(old, self.grace)
        for addr, socks in keep.items():
            if addr not in want:
                for s in socks:
                    s.close()
        for socks in old_stream.values():
            for s in socks:
                s.close()

    async def _drain(self, handles: list[WorkerHandle], grace: float) -> None:
        for w in handles:
            if w.channel is not None and not w.exited:
                w.channel.send({"op": "drain", "grace": grace})
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + grace + 5
        for w in handles:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.wait_for(loop.run_in_executor(None, w.proc.wait), remaining)
            except asyncio.TimeoutError:
                log.error("worker %d did not exit within the grace period; killing it", w.index)
                w.proc.kill()
                await loop.run_in_executor(None, w.proc.wait)
            if w.channel is not None:
                w.channel.close()

    async def stop(self) -> None:
        self.stopping = True
        if self._catch_up_handle is not None:
            self._catch_up_handle.cancel()
            self._catch_up_handle = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        # Stop accepting first: nothing new lands in a queue nobody will serve.
        for socks in [*self.sockets.values(), *self.stream_sockets.values()]:
            for s in socks:
                s.close()
        self.sockets, self.stream_sockets = {}, {}
        await self._drain(self.workers, self.grace)
        await self.health.stop()
        # the shared-memory dicts of this gateway's workers (limit counters): gone with them
        try:
            shared_cleanup()
        except OSError as e:
            log.warning("cannot remove the shared dicts: %s", e)

    def worker_versions(self) -> list[dict[str, Any]]:
        return [{"worker": w.index, "pid": w.pid, "version": w.version, "applied_at": w.applied_at,
                 "alive": not w.exited} for w in self.workers]

    # -- metrics -----------------------------------------------------------------------------
    def _on_metrics(self, h: WorkerHandle, msg: dict[str, Any]) -> None:
        samples = msg.get("samples")
        if not isinstance(samples, list):
            return
        h.samples = samples
        rid = msg.get("id")
        pending = self._scrapes.get(rid) if isinstance(rid, int) else None
        if pending is not None:
            got, want, fut = pending
            got[id(h)] = samples
            if want <= got.keys() and not fut.done():
                fut.set_result(None)

    def _retire(self, h: WorkerHandle) -> None:
        """A worker is gone: keep what it counted (its final answer, else its last one)."""
        if h in self._handles:
            self._handles.remove(h)
        if h.samples:
            self._retired = merge([self._retired, _cumulative(h.samples)])
            h.samples = None
        for got, want, fut in self._scrapes.values():
            want.discard(id(h))
            if want <= got.keys() and not fut.done():
                fut.set_result(None)

    async def collect_metrics(self, timeout: float | None = None) -> list[Family]:
        """One scrape: every worker's samples (asked now, bounded wait) summed, plus the
        supervisor's own gauges (node info, upstream health)."""
        if timeout is None:
            timeout = self.metrics_export.scrape_timeout if self.metrics_export else 2.0
        loop = asyncio.get_running_loop()
        self._scrape_seq += 1
        seq = self._scrape_seq
        live = [h for h in self._handles if not h.exited and h.channel is not None]
        got: dict[int, list[Family]] = {}
        fut: asyncio.Future[None] = loop.create_future()
        self._scrapes[seq] = (got, {id(h) for h in live}, fut)
        try:
            for h in live:
                assert h.channel is not None
                h.channel.send({"op": "metrics", "id": seq})
            if live:
                await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            late = [h.index for h in live if id(h) not in got]
            log.warning("metrics: worker(s) %s did not answer within %.1fs; using their previous samples",
                        late, timeout)
        finally:
            del self._scrapes[seq]
        groups: list[list[Family]] = [self._retired]
        for h in live:
            if h.exited:  # its final samples are in _retired already
                continue
            samples = got.get(id(h), h.samples)
            if samples:
                groups.append(samples)
        groups.append(self._own_metrics())
        return merge(groups)

    def _own_metrics(self) -> list[Family]:
        info = Family("node_info", "gauge", "Info of APISIX node", ("hostname", "version"),
                      {(socket.gethostname(), __version__): 1.0}, aggregate="max")
        # APISIX: 1 when the health checker sees the node healthy (or mostly healthy), else 0.
        ups = Family("upstream_status", "gauge", "Upstream status from health check", ("name", "ip", "port"),
                     aggregate="max")
        for checker in self.health.status():
            for node in checker["nodes"]:
                ok = node.get("status") in ("healthy", "mostly_healthy")
                ups.series[(str(checker["name"]), str(node.get("ip", "")), str(node.get("port", "")))] = \
                    1.0 if ok else 0.0
        return [info, ups]

    async def metrics_page(self) -> str:
        prefix = self.metrics_export.prefix if self.metrics_export else "apisix_"
        return render(await self.collect_metrics(), prefix=prefix)

    async def _start_metrics_server(self) -> None:
        exp = self.metrics_export
        if exp is None or self.metrics_server is not None:
            return
        try:
            self.metrics_server = await asyncio.start_server(self._serve_metrics, exp.ip, exp.port,
                                                             limit=16 * 1024)
        except OSError as e:
            # The page is an aid, not the service: traffic is served even when its port is taken.
            log.error("prometheus: cannot listen on %s:%d: %s; metrics are not exported", exp.ip, exp.port,
                      e.strerror)

    async def _serve_metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.1 server: ``GET <export_uri>`` is the page, anything else 404."""
        exp = self.metrics_export
        assert exp is not None
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60.0)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                        ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    k, sep, v = line.partition(":")
                    if sep:
                        headers[k.strip().lower()] = v.strip().lower()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or "transfer-encoding" in headers:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                method, target, version = parts
                try:
                    clen = int(headers.get("content-length", "0"))
                except ValueError:
                    clen = -1
                if clen < 0 or clen > 65536:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                if clen:
                    await asyncio.wait_for(reader.readexactly(clen), 60.0)
                keep = headers.get("connection") != "close" and not (version == "HTTP/1.0" and
                                                                     headers.get("connection") != "keep-alive")
                path = target.split("?", 1)[0]
                if method == "GET" and path == exp.uri:
                    status, ctype, body = "200 OK", CONTENT_TYPE.encode(), (await self.metrics_page()).encode()
                else:
                    # APISIX's export server answers 404 to any other method or path.
                    status, ctype, body = "404 Not Found", HTML, error_body(404)
                writer.write(f"HTTP/1.1 {status}\r\nServer: meshgate\r\nContent-Type: ".encode() + ctype +
                             f"\r\nContent-Length: {len(body)}\r\n"
                             f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n".encode() +
                             (body if method != "HEAD" else b""))
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return
        finally:
            writer.close()
