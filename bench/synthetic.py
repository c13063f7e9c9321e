"""Synthetic per-request cost: llhttp + all of Meshgate's per-request Python, no sockets.

Drives the real client and upstream protocol objects of one worker with fake transports:
wrk's request in, nginx's response back, a pooled keep-alive upstream connection reused
every time (the steady state of ``make bench``).  Prints microseconds per request, best of
``--rounds``.  Use it for before/after comparisons of hot-path changes; ``make bench``
remains the figure of record.

    .venv/bin/python bench/synthetic.py [--requests 200000] [--rounds 3] [--plugins] [--codec python|native]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop
from typing import Any

from meshgate.model import Resource, Snapshot
from meshgate.plugins import PluginRegistry
from meshgate.proxy import ProxyServer, ProxySettings, build_runtime
from meshgate.proxy import codec
from meshgate.proxy.http1 import ClientConnection

REQ = (b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:9080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
RESP = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 00:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")


class FakeTransport:
    __slots__ = ("out", "closing", "extra")

    def __init__(self, extra: dict[str, Any]) -> None:
        self.out: list[bytes] = []
        self.closing = False
        self.extra = extra

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        self.out[:] = [data]    # keep the last write only: the driver checks it

    def writelines(self, data: Any) -> None:
        self.out[:] = [b"".join(data)]

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def make_runtime(with_plugins: bool) -> Any:
    # one pooled upstream connection serves every request (the pool retires a connection after
    # keepalive_pool.requests, which would need a real connect)
    route: dict[str, Any] = {"uri": "/*", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1},
                                                       "keepalive_pool": {"requests": 1 << 40}}}
    resources: dict[str, dict[str, Resource]] = {"routes": {"1": Resource("routes", "1", route)}}
    if with_plugins:
        route["plugins"] = {"key-auth": {}, "limit-count": {"count": 1 << 30, "time_window": 60},
                            "prometheus": {}}
        resources["consumers"] = {"jack": Resource("consumers", "jack",
                                                   {"username": "jack", "plugins": {"key-auth": {"key": "k1"}}})}
    reg = PluginRegistry()
    reg.load_builtin()
    return build_runtime(Snapshot(version=1, resources=resources), plugins=reg)


def run(n: int, with_plugins: bool, codec_name: str) -> float:
    loop = uvloop.new_event_loop()   # as in a worker: loop.time() is uvloop's cached clock
    asyncio.set_event_loop(loop)
    rt = make_runtime(with_plugins)
    server = ProxyServer(ProxySettings(keepalive_requests=1 << 62), rt)
    if codec_name != "auto":
        c = codec.PYTHON if codec_name == "python" else codec.load_native(ignore_env=True)[0]
        assert c is not None, codec.load_native(ignore_env=True)[1]
        server.scan_request, server.scan_response, server.resp_fields = c.scan_request, c.scan_response, c.resp_fields
    # the loop is not run: the writes of each "turn" (one read) are sent by hand, as the loop's
    # callback would (proxy/common.WriteBatch)
    writes = server.writes
    writes.call_soon = lambda *a: None
    flush = writes.flush
    client = ClientConnection(server)
    ct = FakeTransport({"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 9080)})
    client.connection_made(ct)  # type: ignore[arg-type]
    req = REQ if not with_plugins else REQ.replace(b"Accept:", b"apikey: k1\r\nAccept:")
    # first request opens the upstream connection; adopt it by hand (no sockets here)
    from meshgate.proxy.upstream_conn import UpstreamConnection
    client.data_received(req)
    flush()
    ex = client.active
    assert ex is not None and ex.node is not None and ex.up is not None
    key = ex._pool_key(ex.up, ex.node)
    up = UpstreamConnection(server, key)
    ut = FakeTransport({})
    up.connection_made(ut)  # type: ignore[arg-type]
    ex.up_phase = 1
    ex._attach(up, reused=False)
    up.data_received(RESP)
    flush()
    assert ct.out and ct.out[-1].startswith(b"HTTP/1.1 200"), ct.out[-1:]
    t0 = time.perf_counter()
    for _ in range(n):
        client.data_received(req)
        flush()
        up.data_received(RESP)
        flush()
    dt = time.perf_counter() - t0
    assert ct.out[-1].startswith(b"HTTP/1.1 200"), ct.out[-1]
    assert client.active is None and not client.queue, "requests left unanswered: the measurement is void"
    ct.out.clear()
    ut.out.clear()
    loop.close()
    return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plugins", action="store_true", help="key-auth + limit-count + prometheus on the route")
    ap.add_argument("--codec", choices=("auto", "python", "native"), default="auto",
                    help="the HTTP/1 head codec (auto: the one a worker picks)")
    args = ap.parse_args()
    from meshgate._accel import status
    best = min(run(args.requests, args.plugins, args.codec) for _ in range(args.rounds))
    name = codec.active().name if args.codec == "auto" else args.codec
    print(f"{best:.2f} us/request ({status()}; head codec: {name})")


if __name__ == "__main__":
    main()
