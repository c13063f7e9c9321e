"""The HTTP connections' writes wait for the end of the loop's turn (proxy/common.WriteBatch):
what a peer receives, and in which order, must not change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshgate.proxy.common import FLUSH_AT, BatchedTransport, WriteBatch


class Raw:
    """A socket transport that records what reaches it, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.closing = False
        self.gone = False      # the handle is closed: uvloop raises on a write

    def write(self, data: bytes) -> None:
        if self.gone:
            raise RuntimeError("unable to perform operation; the handler is closed")
        self.events.append(("write", bytes(data)))

    def writelines(self, data: list[bytes]) -> None:
        if self.gone:
            raise RuntimeError("unable to perform operation; the handler is closed")
        self.events.append(("write", b"".join(data)))

    def close(self) -> None:
        self.closing = True
        self.events.append(("close", b""))

    def write_eof(self) -> None:
        self.events.append(("eof", b""))

    def abort(self) -> None:
        self.closing = True
        self.events.append(("abort", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)

    @property
    def sent(self) -> bytes:
        return b"".join(d for e, d in self.events if e == "write")


async def test_writes_wait_for_the_end_of_the_turn_then_go_out_in_order() -> None:
    loop = asyncio.get_running_loop()
    batch = WriteBatch(loop)
    a, b = Raw(), Raw()
    ta, tb = BatchedTransport(a, batch), BatchedTransport(b, batch)   # type: ignore[arg-type]
    ta.write(b"HTTP/1.1 200 OK\r\n")
    tb.write(b"GET / HTTP/1.1\r\n")
    ta.writelines([b"Content-Length: 2\r\n\r\n", b"ok"])
    assert a.events == [] and b.events == []           # nothing before the turn ends
    assert ta.get_write_buffer_size() == 7 + 17 + 21 + 2
    await asyncio.sleep(0)                             # the loop's next turn
    assert a.events == [("write", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]   # one system call
    assert b.sent == b"GET / HTTP/1.1\r\n"
    ta.write(b"next")
    await asyncio.sleep(0)
    assert a.events[-1] == ("write", b"next")


async def test_close_and_half_close_send_what_waits_first() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    a, b = Raw(), Raw()
    ta, tb = BatchedTransport(a, batch), BatchedTransport(b, batch)   # type: ignore[arg-type]
    ta.write(b"last answer")
    ta.close()
    assert a.events == [("write", b"last answer"), ("close", b"")]
    tb.write(b"0\r\n\r\n")
    tb.write_eof()
    assert b.events == [("write", b"0\r\n\r\n"), ("eof", b"")]
    await asyncio.sleep(0)          # the batch's own flush finds nothing more to send
    assert a.events == [("write", b"last answer"), ("close", b"")]
    assert b.events == [("write", b"0\r\n\r\n"), ("eof", b"")]


async def test_abort_drops_what_waits_and_later_writes_go_straight_through() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    a = Raw()
    ta = BatchedTransport(a, batch)   # type: ignore[arg-type]
    ta.write(b"never sent")
    ta.abort()
    await asyncio.sleep(0)
    assert a.events == [("abort", b"")]
    ta.write(b"after")               # the socket's own rules apply now (as before the batching)
    assert a.events[-1] == ("write", b"after")


async def test_a_reused_buffer_is_copied() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    a = Raw()
    ta = BatchedTransport(a, batch)   # type: ignore[arg-type]
    buf = bytearray(b"abc")
    ta.write(buf)
    ta.write(memoryview(b"def"))
    buf[:] = b"xyz"
    await asyncio.sleep(0)
    assert a.sent == b"abcdef"


async def test_a_socket_closed_under_it_loses_the_write_and_the_others_still_go() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    a, b = Raw(), Raw()
    ta, tb = BatchedTransport(a, batch), BatchedTransport(b, batch)   # type: ignore[arg-type]
    ta.write(b"to a reset peer")
    tb.write(b"to a live one")
    a.gone = True
    await asyncio.sleep(0)
    assert a.events == [] and b.sent == b"to a live one"


async def test_the_rest_of_the_interface_is_the_sockets() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    a = Raw()
    ta = BatchedTransport(a, batch)   # type: ignore[arg-type]
    assert ta.get_extra_info("peername") == ("127.0.0.1", 1)
    assert ta.get_extra_info("nothing", 5) == 5
    assert not ta.is_closing()
    ta.close()
    assert ta.is_closing()


async def test_a_failing_connection_never_costs_the_others_their_writes(caplog: pytest.LogCaptureFixture) -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    a, b = Raw(), Raw()

    def broken(data: bytes) -> None:
        raise ValueError("a transport that breaks its contract")

    ta, tb = BatchedTransport(a, batch), BatchedTransport(b, batch)   # type: ignore[arg-type]
    ta.raw_write = broken
    ta.write(b"lost")
    tb.write(b"still sent")
    with caplog.at_level("ERROR", logger="meshgate.proxy"):
        await asyncio.sleep(0)
    assert b.sent == b"still sent"
    assert "sending a connection's writes failed" in caplog.text


async def test_a_streamed_body_reaches_the_socket_without_waiting_for_the_turn() -> None:
    """Bytes of a body relayed read by read in one turn go out once FLUSH_AT of them wait, so
    the socket's flow control (pause_writing) sees them as it would without the batching."""
    batch = WriteBatch(asyncio.get_running_loop())
    a = Raw()
    ta = BatchedTransport(a, batch)   # type: ignore[arg-type]
    ta.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * (16 * 1024)
    for _ in range(FLUSH_AT // len(chunk)):
        ta.write(chunk)
    assert a.sent.startswith(b"HTTP/1.1 200 OK") and len(a.sent) >= FLUSH_AT   # sent within the turn, in order
    assert ta.get_write_buffer_size() == 7
    big = b"y" * FLUSH_AT
    ta.write(big)                      # nothing waits: a large write goes at once
    assert a.events[-1] == ("write", big)
    ta.write(b"tail")
    assert a.events[-1] == ("write", big) and ta.get_write_buffer_size() == 7 + 4
    await asyncio.sleep(0)
    assert a.events[-1] == ("write", b"tail")
