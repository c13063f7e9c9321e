"""EtcdClient._call: a call that grpc.aio cancels because its channel is being closed (by another
caller's failure) is a failed call (retried, then EtcdUnavailable), never a cancellation of the
caller; a real cancellation of the caller still propagates."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshgate.config.etcd import EtcdClient, EtcdUnavailable


async def test_a_call_cancelled_under_the_caller_is_a_failure() -> None:
    c = EtcdClient(["http://127.0.0.1:1"], timeout=1)      # channels are made lazily: nothing dials
    calls = 0

    async def fn(_client: Any) -> None:
        nonlocal calls
        calls += 1
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.cancel)     # what closing the channel does to a call
        await fut

    with pytest.raises(EtcdUnavailable, match="the connection was closed during the call"):
        await c._call("get", fn)
    assert calls == 2                                        # the endpoint, then once more
    await c.close()


async def test_cancelling_the_caller_still_cancels() -> None:
    c = EtcdClient(["http://127.0.0.1:1"], timeout=1)

    async def fn(_client: Any) -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(c._call("get", fn))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await c.close()
