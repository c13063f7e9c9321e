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

from ..model import Snapshot
from ..plugins import PluginRegistry
from ..upstream import ActiveProber, HealthState, Node, probe_plan
from .ipc import Channel, open_channel
from .runtime import Runtime, build_runtime
from .worker import snapshot_to_wire

__all__ = ["Supervisor", "HealthOwner", "WorkerHandle"]

log = logging.getLogger("meshgate.supervisor")


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        s.bind((host, port))
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
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: bool = False


class Supervisor:
    def __init__(self, *, workers: int, listen: list[tuple[str, int]], settings: dict[str, Any],
                 router_kind: str = "radixtree_host_uri", plugin_dirs: tuple[str, ...] = (),
                 log_level: str = "WARNING", grace: float = 240.0) -> None:
        self.nworkers = max(1, workers)
        self.listen = listen
        self.settings = settings
        self.router_kind = router_kind
        self.plugin_dirs = plugin_dirs
        self.log_level = log_level
        self.grace = grace
        self.workers: list[WorkerHandle] = []
        self.snapshot: Snapshot | None = None
        self.runtime: Runtime | None = None
        self.plugins = PluginRegistry()
        self.plugins.load_builtin()
        for d in plugin_dirs:
            self.plugins.load_directory(d)
        self.health = HealthOwner(self._broadcast_health)
        self.health_view: dict[str, list[str]] = {}
        self.stopping = False
        self._wire: dict[str, Any] | None = None
        # (host, port) -> one listening socket per worker slot
        self.sockets: dict[tuple[str, int], list[socket.socket]] = {}

    def _bind(self) -> None:
        """Bind what the current node config asks for; keep sockets that already exist."""
        want = set(self.listen)
        for addr in list(self.sockets):
            if addr not in want:
                for s in self.sockets.pop(addr):
                    s.close()
        for addr in self.listen:
            socks = self.sockets.setdefault(addr, [])
            while len(socks) < self.nworkers:
                socks.append(_listen_socket(*addr))
            while len(socks) > self.nworkers:
                socks.pop().close()

    # -- config ----------------------------------------------------------------------------
    def compile(self, snapshot: Snapshot) -> Runtime:
        return build_runtime(snapshot, router_kind=self.router_kind, plugins=self.plugins, previous=self.runtime)

    def publish(self, snapshot: Snapshot) -> None:
        rt = self.compile(snapshot)
        for e in rt.errors:
            log.error("config version %d: %s", snapshot.version, e)
        self.snapshot = snapshot
        self.runtime = rt
        self._wire = snapshot_to_wire(snapshot)
        msg = {"op": "snapshot", **self._wire}
        for w in self.workers:
            if w.channel is not None:
                w.channel.send(msg)
        for p in self.health.update(rt):
            asyncio.get_running_loop().create_task(p.stop())

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
        listen_fds = [(h, p, socks[index].fileno()) for (h, p), socks in self.sockets.items()]
        proc = subprocess.Popen(cmd, pass_fds=[child.fileno()] + [fd for _, _, fd in listen_fds], start_new_session=False)
        child.close()
        h = WorkerHandle(index=index, proc=proc, pid=proc.pid)

        def on_message(msg: dict[str, Any]) -> None:
            op = msg.get("op")
            if op == "ready":
                h.ready.set()
            elif op == "applied":
                h.version = int(msg["version"])
            elif op == "passive":
                self.health.passive(msg["key"], msg["addr"], msg["kind"], int(msg["status"]))

        def on_lost() -> None:
            h.exited = True
            h.ready.set()
            if not self.stopping:
                asyncio.get_running_loop().create_task(self._respawn(h))

        h.channel = await open_channel(parent, on_message, on_lost)
        assert self.snapshot is not None
        h.channel.send({"op": "init", "worker": index, "router": self.router_kind, "settings": self.settings,
                        "listen": listen_fds, "plugin_dirs": list(self.plugin_dirs),
                        "snapshot": {"op": "snapshot", **(self._wire or snapshot_to_wire(self.snapshot))}})
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

    async def replace_workers(self, *, listen: list[tuple[str, int]], settings: dict[str, Any], workers: int,
                              router_kind: str) -> None:
        """SIGHUP: start a new generation with the new node config, then drain the old one."""
        old = self.workers
        self.listen, self.settings, self.nworkers, self.router_kind = listen, settings, max(1, workers), router_kind
        assert self.snapshot is not None
        self.runtime = None
        self.publish(self.snapshot)
        # Sockets of addresses that stay are kept, so connections queued on them are
        # accepted by the new generation; removed addresses close after the old drain.
        keep = dict(self.sockets)
        want = set(self.listen)
        self.sockets = {a: s for a, s in keep.items() if a in want}
        self._bind()
        self.workers = [await self._spawn(i) for i in range(self.nworkers)]
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), 30.0)
        await self._drain(old, self.grace)
        for addr, socks in keep.items():
            if addr not in want:
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
        # Stop accepting first: nothing new lands in a queue nobody will serve.
        for socks in self.sockets.values():
            for s in socks:
                s.close()
        self.sockets = {}
        await self._drain(self.workers, self.grace)
        await self.health.stop()

    def worker_versions(self) -> list[dict[str, Any]]:
        return [{"worker": w.index, "pid": w.pid, "version": w.version, "alive": not w.exited} for w in self.workers]
