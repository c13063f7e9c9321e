"""Active health probing: the asyncio driver of :class:`~meshgate.upstream.health.HealthState`.

Theory of operation
-------------------
Like lua-resty-healthcheck, two loops run side by side: every ``healthy_interval`` seconds
the targets currently healthy (or mostly healthy) are probed, every ``unhealthy_interval``
seconds those currently unhealthy (or mostly unhealthy).  An interval of 0 disables its loop.
A round probes its targets concurrently, at most ``concurrency`` at a time (one semaphore
shared by both loops); a round that overruns its interval delays the next one instead of
overlapping it.

One probe, each socket step bounded by ``timeout`` (as lua-resty-healthcheck's per-operation
socket timeout):

* connect -- timeout -> ``report_timeout``; refused/unreachable -> ``report_tcp_failure``;
* ``tcp``: connected -> ``report_tcp_success``;
* ``https``: TLS handshake over the connection (SNI = the Host header value, certificate
  verified when ``https_verify_certificate``); any handshake failure -> ``report_tcp_failure``;
* send the request from :func:`build_probe_request`, read one line: timeout ->
  ``report_timeout``; error / EOF -> ``report_tcp_failure``; otherwise the parsed status
  (``None`` when unparsable, which counts as an HTTP failure) -> ``report_http``.

Only the status line is read; the connection is closed right after (``Connection: close``).
``start()`` spawns one owner task (a TaskGroup of the two loops); ``await stop()`` cancels it
and waits until every probe has closed its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence

from .health import HealthState, ProbeSpec, build_probe_request, parse_status_line
from .nodes import Node

__all__ = ["ActiveProber"]

log = logging.getLogger("meshgate.upstream.prober")


class ActiveProber:
    """Probe ``nodes`` per ``spec`` and report into ``state``.

    ``ssl_context`` overrides the context built from ``spec.verify_certificate`` (e.g. a
    private CA); ``clock`` is the monotonic clock used for scheduling.
    """

    def __init__(
        self,
        state: HealthState,
        spec: ProbeSpec,
        nodes: Sequence[Node],
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.spec = spec
        # One probe per target (host, probe port), reported against its first node; the state
        # maps every node of the target to the same counters anyway.
        seen: dict[tuple[str, int], Node] = {}
        for n in nodes:
            seen.setdefault(spec.target(n), n)
        self.nodes: tuple[Node, ...] = tuple(seen.values())
        self._ssl_context = ssl_context
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._sem: asyncio.Semaphore | None = None
        self.rounds = {"healthy": 0, "unhealthy": 0}

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start probing in the running event loop (idempotent)."""
        if self.running:
            return
        self._sem = asyncio.Semaphore(self.spec.concurrency)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="meshgate-health-prober")

    async def stop(self) -> None:
        """Cancel the loops and wait for in-flight probes to close their sockets."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.spec.healthy_interval > 0:
                tg.create_task(self._loop(True, self.spec.healthy_interval))
            if self.spec.unhealthy_interval > 0:
                tg.create_task(self._loop(False, self.spec.unhealthy_interval))

    async def _loop(self, healthy: bool, interval: float) -> None:
        while True:
            started = self._clock()
            try:
                await self.run_round(healthy)
            except asyncio.CancelledError:
                raise
            except Exception:  # task root: a bug in one round must not stop health checking
                log.exception("health probe round failed")
            await asyncio.sleep(max(0.0, started + interval - self._clock()))

    async def run_round(self, healthy: bool) -> None:
        """Probe, once, every target whose current status is ``healthy``."""
        self.rounds["healthy" if healthy else "unhealthy"] += 1
        todo = [n for n in self.nodes if self.state.is_healthy(n) == healthy]
        if todo:
            await asyncio.gather(*(self._bounded(n) for n in todo))

    async def _bounded(self, node: Node) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.spec.concurrency)
        async with self._sem:
            await self.probe_once(node)

    # -- one probe

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            ctx = ssl.create_default_context()
            if not self.spec.verify_certificate:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl_context = ctx
        return self._ssl_context

    async def probe_once(self, node: Node) -> None:
        """Run one probe against ``node`` and report the outcome to the state."""
        spec = self.spec
        state = self.state
        host, port = spec.target(node)
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(spec.timeout):
                    reader, writer = await asyncio.open_connection(host, port)
            except TimeoutError:
                state.report_timeout(node, active=True)
                return
            except OSError:
                state.report_tcp_failure(node, active=True)
                return

            if spec.type == "tcp":
                state.report_tcp_success(node, active=True)
                return

            if spec.type == "https":
                try:
                    sni = spec.host_header(node).strip("[]")
                    async with asyncio.timeout(spec.timeout):
                        await writer.start_tls(self._ssl(), server_hostname=sni)
                except (OSError, TimeoutError, ssl.SSLError, ConnectionError):
                    state.report_tcp_failure(node, active=True)
                    return

            try:
                async with asyncio.timeout(spec.timeout):
                    writer.write(build_probe_request(spec, node))
                    await writer.drain()
            except TimeoutError:
                state.report_timeout(node, active=True)
                return
            except OSError:
                state.report_tcp_failure(node, active=True)
                return

            try:
                async with asyncio.timeout(spec.timeout):
                    line = await reader.readline()
            except TimeoutError:
                state.report_timeout(node, active=True)
                return
            except (OSError, ValueError):  # ValueError: line longer than the stream limit
                state.report_tcp_failure(node, active=True)
                return
            if not line:
                state.report_tcp_failure(node, active=True)  # closed before a status line
                return
            state.report_http(node, parse_status_line(line), active=True)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    # Bounded: a peer that never acknowledges the close must not hold us.
                    async with asyncio.timeout(spec.timeout):
                        await writer.wait_closed()
