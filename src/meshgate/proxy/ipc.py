"""Supervisor <-> worker messages over a Unix socketpair.

Frames are a 4-byte big-endian length followed by a pickle.  Both ends are our own
processes (forked from the same install), so pickle is safe here; nothing from the
network ever reaches this channel.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from typing import Any, Callable

__all__ = ["Channel", "open_channel"]

log = logging.getLogger("meshgate.ipc")
_HDR = struct.Struct("!I")


class Channel(asyncio.Protocol):
    def __init__(self, on_message: Callable[[dict[str, Any]], None], on_lost: Callable[[], None] | None = None) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            (n,) = _HDR.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            msg = pickle.loads(bytes(buf[4:4 + n]))
            del buf[: 4 + n]
            try:
                self.on_message(msg)
            except Exception:
                log.exception("ipc message handler failed")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost()

    def send(self, msg: dict[str, Any]) -> None:
        if self.transport is None or self.closed:
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.write(_HDR.pack(len(data)) + data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_channel(sock: Any, on_message: Callable[[dict[str, Any]], None],
                       on_lost: Callable[[], None] | None = None) -> Channel:
    loop = asyncio.get_running_loop()
    _, ch = await loop.create_connection(lambda: Channel(on_message, on_lost), sock=sock)
    return ch
