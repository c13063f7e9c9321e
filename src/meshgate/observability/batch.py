"""APISIX's batch processor (``apisix/utils/batch-processor.lua`` and its manager), on asyncio.

Theory of operation
-------------------
A logger plugin's ``log`` hook builds one entry per request and hands it to its plugin's
:class:`BatchProcessorManager` together with a key (route + conf) and a factory for the
function that ships a batch.  The manager keeps one :class:`BatchProcessor` per key, as
APISIX keeps one per ``conf_version``.

A processor buffers entries and hands the buffer to its ship function when

* the buffer holds ``batch_max_size`` entries (``batch_max_size == 1``: every entry at once),
* no entry arrived for ``inactive_timeout`` seconds, or
* the first buffered entry is ``buffer_duration`` seconds old.

A batch that fails is retried after ``retry_delay`` seconds, at most ``max_retry_count``
times, then dropped (logged).  A ship function may report that the first ``consumed``
entries went through (:class:`ProcessError`); only the rest is retried.

Everything runs on the worker's event loop: ``push`` is called from the log phase, which
runs inside the loop, and the flush timer / ship tasks are created lazily on the first
entry, so nothing runs while nobody logs.  Batches ship concurrently (APISIX runs each in
its own timer).

The backlog is bounded (APISIX's ``max_pending_entries``, plugin metadata, default 8192):
entries buffered or in flight across all processors of a plugin.  When it is full a new
entry is dropped and counted (one summary line per second at most), so an unreachable
collector never blocks a request nor grows the worker's memory without bound.

Processors whose key has not been used since the last sweep (every ``stale_interval``,
APISIX: 30 min) and that hold nothing are removed; :func:`flush_all` ships what is
buffered at shutdown.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable, Mapping

__all__ = [
    "BATCH_SCHEMA_PROPERTIES", "DEFAULT_MAX_PENDING_ENTRIES", "BatchConfig", "BatchProcessor",
    "BatchProcessorManager", "ProcessError", "Process", "flush_all", "wrap_schema", "wrap_metadata_schema",
]

log = logging.getLogger("meshgate.observability.batch")

DEFAULT_MAX_PENDING_ENTRIES = 8192
DISCARD_LOG_INTERVAL = 1.0      # seconds between two "discarding entry" summaries (APISIX)
STALE_INTERVAL = 1800.0         # APISIX's stale-processor sweep interval

# APISIX batch-processor.lua's schema; wrap_schema adds these to a logger's schema.
BATCH_SCHEMA_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string", "default": "log buffer"},
    "max_retry_count": {"type": "integer", "minimum": 0, "default": 0},
    "retry_delay": {"type": "integer", "minimum": 0, "default": 1},
    "buffer_duration": {"type": "integer", "minimum": 1, "default": 60},
    "inactive_timeout": {"type": "integer", "minimum": 1, "default": 5},
    "batch_max_size": {"type": "integer", "minimum": 1, "default": 1000},
}


def wrap_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """A logger's schema plus the batch fields (the plugin's own definition wins), the
    ``name`` default being the processor's name (APISIX ``bp_manager:wrap_schema``)."""
    out = copy.deepcopy(schema)
    props = out.setdefault("properties", {})
    for k, v in BATCH_SCHEMA_PROPERTIES.items():
        props.setdefault(k, copy.deepcopy(v))
    props["name"] = {**props["name"], "default": name}
    return out


def wrap_metadata_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Metadata schema plus ``max_pending_entries`` (APISIX ``wrap_metadata_schema``)."""
    out = copy.deepcopy(schema)
    out.setdefault("properties", {})["max_pending_entries"] = {
        "type": "integer", "minimum": 1, "default": DEFAULT_MAX_PENDING_ENTRIES,
        "description": "maximum number of entries waiting to be processed; new entries are discarded "
                       "while the backlog exceeds it",
    }
    return out


@dataclass(frozen=True, slots=True)
class BatchConfig:
    name: str = "log buffer"
    batch_max_size: int = 1000
    inactive_timeout: float = 5.0
    buffer_duration: float = 60.0
    max_retry_count: int = 0
    retry_delay: float = 1.0

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], default_name: str) -> BatchConfig:
        """The batch fields of a plugin conf, APISIX's defaults filled in."""
        return cls(name=str(conf.get("name", default_name)), batch_max_size=int(conf.get("batch_max_size", 1000)),
                   inactive_timeout=float(conf.get("inactive_timeout", 5)),
                   buffer_duration=float(conf.get("buffer_duration", 60)),
                   max_retry_count=int(conf.get("max_retry_count", 0)), retry_delay=float(conf.get("retry_delay", 1)))


class ProcessError(Exception):
    """A ship function failed; ``consumed`` entries at the head of the batch went through
    (APISIX's ``first_fail - 1``) and are not retried."""

    def __init__(self, message: str, consumed: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.consumed = consumed


# (entries, batch_max_size) -> None on success; raises ProcessError (or any Exception) on failure.
Process = Callable[[list[Any], int], Awaitable[None]]


class BatchProcessor:
    """One buffer and its flush timer; see the module docstring."""

    def __init__(self, process: Process, config: BatchConfig, *,
                 on_settled: Callable[[int], None] | None = None) -> None:
        self.process = process
        self.config = config
        self._on_settled = on_settled
        self._buffer: list[Any] = []
        self._first_t = 0.0
        self._last_t = 0.0
        self._timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.processed = 0          # entries shipped or given up on (APISIX processed_entries)
        self.dropped = 0            # entries given up on after the retries
        self.last_used = 0.0

    # -- state -------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def idle(self) -> bool:
        return not self._buffer and not self._tasks and self._timer is None

    # -- entry point -------------------------------------------------------------------------
    def push(self, entry: Any) -> None:
        """Add one entry; must be called on the running event loop (the log phase)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.last_used = now
        if self.config.batch_max_size == 1:
            self._ship([entry])
            return
        buf = self._buffer
        buf.append(entry)
        if len(buf) == 1:
            self._first_t = now
        self._last_t = now
        if len(buf) >= self.config.batch_max_size:
            log.debug("Batch Processor[%s] batch max size has exceeded", self.config.name)
            self.flush()
        if self._timer is None and self._buffer:
            self._timer = loop.create_task(self._run_timer())

    def flush(self) -> None:
        """Hand what is buffered to the ship function now."""
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._ship(batch)

    # -- internals ---------------------------------------------------------------------------
    async def _run_timer(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        try:
            while self._buffer:
                deadline = min(self._last_t + cfg.inactive_timeout, self._first_t + cfg.buffer_duration)
                delay = deadline - loop.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                    continue   # entries may have arrived meanwhile: recompute the deadline
                log.debug("Batch Processor[%s] buffer duration exceeded, activating buffer flush", cfg.name)
                self.flush()
        finally:
            self._timer = None

    def _ship(self, batch: list[Any]) -> None:
        t = asyncio.get_running_loop().create_task(self._execute(batch))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _execute(self, entries: list[Any]) -> None:
        cfg = self.config
        total = len(entries)
        settled = 0
        retry = 0
        try:
            while True:
                try:
                    await self.process(entries, cfg.batch_max_size)
                except asyncio.CancelledError:
                    raise
                except ProcessError as e:
                    if e.consumed > 0:
                        log.error("Batch Processor[%s] failed to process entries [%d/%d]: %s", cfg.name,
                                  len(entries) - e.consumed, len(entries), e.message)
                        entries = entries[e.consumed:]
                        self.processed += e.consumed
                        settled += e.consumed
                    else:
                        log.error("Batch Processor[%s] failed to process entries: %s", cfg.name, e.message)
                except Exception as e:
                    log.error("Batch Processor[%s] failed to process entries: %s", cfg.name, e or type(e).__name__)
                else:
                    self.processed += len(entries)
                    settled += len(entries)
                    log.debug("Batch Processor[%s] successfully processed the entries", cfg.name)
                    return
                retry += 1
                if retry <= cfg.max_retry_count and entries:
                    if not self._closing:
                        await asyncio.sleep(cfg.retry_delay)
                    continue
                self.processed += len(entries)
                self.dropped += len(entries)
                settled += len(entries)
                log.error("Batch Processor[%s] exceeded the max_retry_count[%d] dropping the entries", cfg.name,
                          retry)
                return
        finally:
            if self._on_settled is not None:
                self._on_settled(total)   # shipped, dropped or cancelled: no longer pending

    async def aclose(self, timeout: float = 5.0) -> None:
        """Ship what is buffered and wait (bounded) for the batches in flight; retries
        no longer wait ``retry_delay``."""
        self._closing = True
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._closing = False


_managers: weakref.WeakSet[BatchProcessorManager] = weakref.WeakSet()


class BatchProcessorManager:
    """A plugin's processors by key, with the plugin-wide backlog bound (APISIX
    ``batch-processor-manager.lua``)."""

    def __init__(self, name: str, *, stale_interval: float = STALE_INTERVAL) -> None:
        self.name = name
        self.stale_interval = stale_interval
        self.processors: dict[Hashable, BatchProcessor] = {}
        self.pending = 0            # entries buffered or in flight, all processors
        self.discarded = 0          # entries refused because the backlog was full (total)
        self._discarded_unlogged = 0
        self._last_discard_log = -1e18
        self._last_sweep: float | None = None
        _managers.add(self)

    def add_entry(self, key: Hashable, entry: Any, make_process: Callable[[], Process], config: BatchConfig, *,
                  max_pending: int = DEFAULT_MAX_PENDING_ENTRIES) -> bool:
        """Queue ``entry`` on the processor of ``key`` (created with ``make_process()`` and
        ``config`` on first use).  False when the backlog is full and the entry was dropped."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.pending >= max_pending:
            self._report_discard(now, max_pending)
            return False
        self._sweep(now)
        proc = self.processors.get(key)
        if proc is None:
            proc = self.processors[key] = BatchProcessor(make_process(), config, on_settled=self._settled)
        self.pending += 1
        proc.push(entry)
        return True

    def _settled(self, n: int) -> None:
        self.pending -= n

    def _report_discard(self, now: float, limit: int) -> None:
        self.discarded += 1
        self._discarded_unlogged += 1
        if now - self._last_discard_log < DISCARD_LOG_INTERVAL:
            return
        log.error("max pending entries limit exceeded. discarding entry. name: %s pending_entries: %d "
                  "max_pending_entries: %d discarded_entries: %d", self.name, self.pending, limit,
                  self._discarded_unlogged)
        self._last_discard_log = now
        self._discarded_unlogged = 0

    def _sweep(self, now: float) -> None:
        """Drop processors unused since the previous sweep that hold nothing."""
        last = self._last_sweep
        if last is None:
            self._last_sweep = now
            return
        if now - last < self.stale_interval:
            return
        for key, proc in list(self.processors.items()):
            if proc.idle() and proc.last_used <= last:
                log.info("removing batch processor stale object, name: %s", self.name)
                del self.processors[key]
        self._last_sweep = now

    def flush(self) -> None:
        """Ship every buffer now (plugin unload); needs the running loop."""
        for proc in self.processors.values():
            proc.flush()

    async def aclose(self, timeout: float = 5.0) -> None:
        procs = list(self.processors.values())
        if procs:
            await asyncio.gather(*(p.aclose(timeout) for p in procs))


async def flush_all(timeout: float = 5.0) -> None:
    """Ship every logger's buffered entries and wait for them, at most ``timeout`` seconds
    (the worker calls this while draining, before its loop stops)."""
    mgrs = list(_managers)
    if mgrs:
        await asyncio.gather(*(m.aclose(timeout) for m in mgrs))
