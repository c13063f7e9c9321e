"""APISIX's batch processor semantics (t/utils/batch-processor.t, batch-processor-manager.t)
on the asyncio loop.  Timers use small real delays, every wait is bounded."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from meshgate.observability.batch import (BATCH_SCHEMA_PROPERTIES, BatchConfig, BatchProcessor,
                                          BatchProcessorManager, ProcessError, flush_all, wrap_metadata_schema,
                                          wrap_schema)


class Sink:
    """A ship function recording batches; fails the first ``fail`` calls."""

    def __init__(self, fail: int = 0, consumed: int = 0, block: asyncio.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.calls = 0
        self.fail = fail
        self.consumed = consumed
        self.block = block
        self.sizes: list[int] = []
        self.event = asyncio.Event()

    async def __call__(self, entries: list[Any], batch_max_size: int) -> None:
        self.calls += 1
        self.sizes.append(batch_max_size)
        if self.block is not None:
            await self.block.wait()
        if self.calls <= self.fail:
            if self.consumed:
                self.batches.append(list(entries[:self.consumed]))
            self.event.set()
            raise ProcessError("error after consuming single entry" if self.consumed else "collector down",
                               consumed=self.consumed)
        self.batches.append(list(entries))
        self.event.set()


async def until(cond: Any, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_defaults_and_schema_wrapping() -> None:
    c = BatchConfig.from_conf({}, "http logger")
    assert (c.name, c.batch_max_size, c.inactive_timeout, c.buffer_duration, c.max_retry_count, c.retry_delay) == \
        ("http logger", 1000, 5.0, 60.0, 0, 1.0)
    s = wrap_schema({"type": "object", "properties": {"uri": {"type": "string"},
                                                      "batch_max_size": {"type": "integer", "maximum": 9}}},
                    "http logger")
    assert s["properties"]["name"]["default"] == "http logger"
    assert s["properties"]["batch_max_size"] == {"type": "integer", "maximum": 9}   # the plugin's own wins
    assert s["properties"]["inactive_timeout"] == BATCH_SCHEMA_PROPERTIES["inactive_timeout"]
    assert BATCH_SCHEMA_PROPERTIES["name"]["default"] == "log buffer"   # not mutated by wrapping
    m = wrap_metadata_schema({"type": "object", "properties": {}})
    assert m["properties"]["max_pending_entries"]["default"] == 8192


async def test_flush_by_size_without_waiting_for_timer() -> None:
    sink = Sink()
    p = BatchProcessor(sink, BatchConfig(batch_max_size=3, inactive_timeout=30, buffer_duration=60))
    for i in range(7):
        p.push(i)
    await until(lambda: len(sink.batches) == 2)
    assert sink.batches == [[0, 1, 2], [3, 4, 5]]
    assert p.buffered == 1
    assert sink.sizes == [3, 3]
    await p.aclose(1.0)
    assert sink.batches[-1] == [6]


async def test_batch_max_size_one_ships_each_entry() -> None:
    sink = Sink()
    p = BatchProcessor(sink, BatchConfig(batch_max_size=1, inactive_timeout=30))
    p.push("a")
    p.push("b")
    await until(lambda: len(sink.batches) == 2)
    assert sink.batches == [["a"], ["b"]]
    assert sink.sizes == [1, 1]


async def test_flush_after_inactive_timeout() -> None:
    sink = Sink()
    loop = asyncio.get_running_loop()
    p = BatchProcessor(sink, BatchConfig(batch_max_size=100, inactive_timeout=0.15, buffer_duration=60))
    t0 = loop.time()
    p.push(1)
    await asyncio.sleep(0.05)
    p.push(2)      # activity pushes the flush back
    await asyncio.wait_for(sink.event.wait(), 3)
    elapsed = loop.time() - t0
    assert sink.batches == [[1, 2]]
    assert 0.19 <= elapsed < 1.5
    await until(lambda: p.idle())


async def test_flush_after_buffer_duration_despite_activity() -> None:
    sink = Sink()
    loop = asyncio.get_running_loop()
    p = BatchProcessor(sink, BatchConfig(batch_max_size=1000, inactive_timeout=0.2, buffer_duration=0.3))
    t0 = loop.time()
    i = 0
    while not sink.batches:
        assert loop.time() - t0 < 3
        p.push(i)
        i += 1
        await asyncio.sleep(0.05)      # always active: only buffer_duration can flush
    assert 0.28 <= loop.time() - t0 < 1.5
    assert sink.batches[0] == list(range(len(sink.batches[0])))
    await p.aclose(1)


async def test_retry_then_success(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(fail=1)
    p = BatchProcessor(sink, BatchConfig(batch_max_size=2, max_retry_count=2, retry_delay=0.05))
    with caplog.at_level(logging.ERROR, "meshgate.observability.batch"):
        p.push(1)
        p.push(2)
        await until(lambda: sink.batches == [[1, 2]])
    assert sink.calls == 2
    assert "Batch Processor[log buffer] failed to process entries: collector down" in caplog.text
    assert p.processed == 2 and p.dropped == 0


async def test_drop_after_max_retries(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(fail=10)
    settled: list[int] = []
    p = BatchProcessor(sink, BatchConfig(name="http logger", batch_max_size=1, max_retry_count=2, retry_delay=0.02),
                       on_settled=settled.append)
    with caplog.at_level(logging.ERROR, "meshgate.observability.batch"):
        p.push("x")
        await until(lambda: settled == [1])
    assert sink.calls == 3           # the first try and two retries
    assert p.dropped == 1
    assert "Batch Processor[http logger] exceeded the max_retry_count[3] dropping the entries" in caplog.text


async def test_retry_count_zero_drops_at_once() -> None:
    sink = Sink(fail=10)
    p = BatchProcessor(sink, BatchConfig(batch_max_size=1))
    p.push(1)
    await until(lambda: p.dropped == 1)
    await asyncio.sleep(0.05)
    assert sink.calls == 1


async def test_partially_consumed_batch_retries_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(fail=2, consumed=1)
    p = BatchProcessor(sink, BatchConfig(batch_max_size=3, max_retry_count=2, retry_delay=0.01))
    with caplog.at_level(logging.ERROR, "meshgate.observability.batch"):
        for i in (1, 2, 3):
            p.push(i)
        await until(lambda: p.processed == 3)
    assert sink.batches == [[1], [2], [3]]
    assert "failed to process entries [2/3]: error after consuming single entry" in caplog.text
    assert "failed to process entries [1/2]: error after consuming single entry" in caplog.text
    assert p.dropped == 0


async def test_manager_one_processor_per_key_and_bounded_backlog(caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()
    sinks: list[Sink] = []

    def make() -> Sink:
        s = Sink(block=gate)      # a collector that hangs
        sinks.append(s)
        return s

    m = BatchProcessorManager("http logger")
    cfg = BatchConfig(batch_max_size=2)
    with caplog.at_level(logging.ERROR, "meshgate.observability.batch"):
        accepted = [m.add_entry(("r1", "c"), i, make, cfg, max_pending=5) for i in range(4)]
        accepted += [m.add_entry(("r2", "c"), i, make, cfg, max_pending=5) for i in range(4)]
    assert accepted == [True] * 5 + [False] * 3
    assert len(m.processors) == 2 and len(sinks) == 2
    assert m.pending == 5 and m.discarded == 3
    assert "max pending entries limit exceeded. discarding entry." in caplog.text
    assert caplog.text.count("discarding entry") == 1      # one summary per second, not one per entry
    gate.set()
    await until(lambda: m.pending == 1)                     # r2's single buffered entry remains
    assert m.add_entry(("r1", "c"), 99, make, cfg, max_pending=5)
    await m.aclose(1)
    assert m.pending == 0
    assert sorted(x for s in sinks for b in s.batches for x in b) == [0, 0, 1, 2, 3, 99]


async def test_manager_removes_stale_processors() -> None:
    m = BatchProcessorManager("tcp logger", stale_interval=0.05)
    sink = Sink()
    cfg = BatchConfig(batch_max_size=1)
    m.add_entry("old", 1, lambda: sink, cfg)
    await until(lambda: m.pending == 0)
    await asyncio.sleep(0.06)
    m.add_entry("new", 2, lambda: sink, cfg)     # first sweep: "old" was used since the start
    await asyncio.sleep(0.06)
    m.add_entry("new", 3, lambda: sink, cfg)     # second sweep: "old" unused since the first
    assert "old" not in m.processors and "new" in m.processors


async def test_flush_all_ships_buffers_at_shutdown() -> None:
    sink = Sink()
    m = BatchProcessorManager("sys logger")
    m.add_entry("k", "a", lambda: sink, BatchConfig(batch_max_size=100, inactive_timeout=60))
    m.add_entry("k", "b", lambda: sink, BatchConfig(batch_max_size=100, inactive_timeout=60))
    assert sink.batches == []
    await asyncio.wait_for(flush_all(1.0), 3)
    assert sink.batches == [["a", "b"]]


async def test_flush_all_is_bounded_with_a_hanging_collector() -> None:
    sink = Sink(block=asyncio.Event())
    m = BatchProcessorManager("http logger")
    m.add_entry("k", 1, lambda: sink, BatchConfig(batch_max_size=1))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(m.aclose(0.1), 3)
    assert loop.time() - t0 < 1.5
    assert m.pending == 0         # cancelled: no longer pending
