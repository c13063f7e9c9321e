"""Streaming with bounded memory, WebSocket, live reload under load, draining, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from gwtools import Upstream, http, read_response, start_gateway

GiB = 1 << 30


def route(*ups: Upstream, uri: str = "/*", **extra):
    return {"routes": [{"id": "1", "uri": uri,
                        "upstream": {"type": "roundrobin", "nodes": {u.addr: 1 for u in ups}}, **extra}]}


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


async def _old_workers_gone(gw, old: list[int], timeout: float = 15.0) -> None:
    """Until the workers in ``old`` were replaced in /v1/config and have exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (set(worker_pids(gw)) & set(old) or any(_alive(p) for p in old)):
        await asyncio.sleep(0.1)
    assert not any(_alive(p) for p in old)


def worker_pids(gw) -> list[int]:
    return [w["pid"] for w in gw.control("/v1/config")["workers"]]


async def test_1gib_upload_streams_with_bounded_memory(tmp_path):
    up = await Upstream(keep_bodies=False).start()
    gw = start_gateway(tmp_path, route(up), log_level="WARNING")
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % GiB)
        chunk = b"x" * (1 << 20)
        for _ in range(GiB // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        r = await read_response(reader, timeout=60)
        assert r is not None and r.status == 200
        assert r.json()["method"] == "PUT"
        assert up.body_bytes == GiB
        writer.close()
        rss = peak_rss_mb(worker_pids(gw)[0])
        assert rss < 120, f"worker peak RSS {rss:.0f} MB while streaming 1 GiB"
    finally:
        gw.stop()
        await up.close()


async def test_1gib_download_streams_with_bounded_memory(tmp_path):
    async def producer(transport):
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GiB)
        chunk = b"y" * (1 << 20)
        for _ in range(GiB // len(chunk)):
            transport.write(chunk)
            while transport.get_write_buffer_size() > (4 << 20):
                await asyncio.sleep(0.001)
                if transport.is_closing():
                    return

    up = await Upstream(handler=lambda req: (200, {}, producer)).start()
    gw = start_gateway(tmp_path, route(up), log_level="WARNING")
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Content-Length: %d" % GiB in head
        got = 0
        deadline = time.monotonic() + 90
        while got < GiB and time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert data
            got += len(data)
        assert got == GiB
        writer.close()
        rss = peak_rss_mb(worker_pids(gw)[0])
        assert rss < 120, f"worker peak RSS {rss:.0f} MB while streaming 1 GiB"
    finally:
        gw.stop()
        await up.close()


async def test_websocket_tunnel(tmp_path):
    up = await Upstream(upgrade=True).start()
    gw = start_gateway(tmp_path, route(up, enable_websocket=True))
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        got = up.requests[-1]
        assert got.header("upgrade") == "websocket"
        assert got.header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="
        for msg in (b"\x81\x05hello", b"\x81\x05world" * 100):
            writer.write(msg)
            echo = await asyncio.wait_for(reader.readexactly(len(msg)), 5)
            assert echo == msg
        writer.close()
    finally:
        gw.stop()
        await up.close()


async def test_websocket_not_enabled_strips_upgrade(tmp_path):
    up = await Upstream().start()
    gw = start_gateway(tmp_path, route(up))
    try:
        r = await http(gw.addr, "GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        assert r.status == 200
        assert up.requests[-1].header("upgrade") is None
    finally:
        gw.stop()
        await up.close()


async def test_reload_under_load_drops_nothing(tmp_path):
    a = await Upstream().start()
    b = await Upstream().start()
    gw = start_gateway(tmp_path, route(a), workers=2, log_level="WARNING")
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()

    async def client(keepalive: bool) -> None:
        nonlocal done
        reader = writer = None
        while not stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(*gw.addr)
                writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n%s\r\n" % (b"" if keepalive else b"Connection: close\r\n"))
                r = await read_response(reader, timeout=5)
                if r is None or r.status != 200:
                    failures.append(f"status {r.status if r else 'closed'}")
                done += 1
                if not keepalive or r is None or r.header("connection") == "close":
                    writer.close()
                    writer = None
            except Exception as e:  # noqa: BLE001 - every failure is counted
                failures.append(repr(e))
                writer = None

    tasks = [asyncio.create_task(client(i % 2 == 0)) for i in range(8)]
    try:
        version = gw.version()
        for i in range(10):
            await asyncio.sleep(0.3)
            gw.write_routes(route(b if i % 2 == 0 else a))
            version += 1
            await asyncio.get_running_loop().run_in_executor(None, gw.wait_applied, version)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        gw.stop()
        await a.close()
        await b.close()
    assert not failures, failures[:5]
    assert done > 100
    assert a.requests and b.requests


async def test_bad_reload_keeps_last_good_config(tmp_path):
    up = await Upstream().start()
    gw = start_gateway(tmp_path, route(up))
    try:
        v = gw.version()
        (tmp_path / "apisix.yaml").write_text("routes:\n  - id: 1\n    uri: /new\n")  # no #END: half-written
        await asyncio.sleep(1.5)
        assert gw.version() == v
        assert (await http(gw.addr, "GET", "/still")).status == 200
        # one bad item is rejected alone; the rest applies
        gw.write_routes({"routes": [
            {"id": "good", "uri": "/good", "upstream": {"nodes": {up.addr: 1}}},
            {"id": "bad", "uri": "/bad", "upstream": {"nodes": {up.addr: "heavy"}}},
        ]})
        await asyncio.get_running_loop().run_in_executor(None, gw.wait_applied, v + 1)
        assert (await http(gw.addr, "GET", "/good")).status == 200
        assert (await http(gw.addr, "GET", "/bad")).status == 404
        log = gw.log()
        assert "routes" in log and "bad" in log and "/upstream/nodes" in log
    finally:
        gw.stop()
        await up.close()


async def test_sigterm_drains_in_flight_requests(tmp_path):
    async def slow(req):
        await asyncio.sleep(1.0)
        return 200, {}, b"finished"

    up = await Upstream(handler=slow).start()
    gw = start_gateway(tmp_path, route(up), workers=2)
    try:
        pending = [asyncio.create_task(http(gw.addr, "GET", f"/slow{i}")) for i in range(4)]
        await asyncio.sleep(0.3)
        gw.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*pending)
        assert [r.status for r in results] == [200] * 4
        assert all(r.body == b"finished" for r in results)
        rc = await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 15)
        assert rc == 0
        with pytest.raises(OSError):
            await asyncio.open_connection(*gw.addr)
    finally:
        gw.stop()
        await up.close()


async def test_workers_share_port_and_config_version(tmp_path):
    up = await Upstream().start()
    gw = start_gateway(tmp_path, route(up), workers=2)
    try:
        cfg = gw.control("/v1/config")
        assert len(cfg["workers"]) == 2 and {w["version"] for w in cfg["workers"]} == {1}
        for _ in range(20):
            assert (await http(gw.addr, "GET", "/w")).status == 200
        # a killed worker is replaced and gets the current config
        victim = cfg["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = worker_pids(gw)
            if victim not in pids and all(w["alive"] and w["version"] == 1 for w in gw.control("/v1/config")["workers"]):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(gw.control("/v1/config"))
        for _ in range(10):
            assert (await http(gw.addr, "GET", "/w")).status == 200
    finally:
        gw.stop()
        await up.close()


async def test_sighup_reloads_node_config(tmp_path):
    up = await Upstream().start()
    gw = start_gateway(tmp_path, route(up), http={"client_max_body_size": "10"})
    try:
        r = await http(gw.addr, "POST", "/b", body=b"x" * 20)
        assert r.status == 413
        old = worker_pids(gw)
        conf = (tmp_path / "config.yaml").read_text().replace("client_max_body_size: '10'", "client_max_body_size: 1m")
        assert "1m" in conf
        (tmp_path / "config.yaml").write_text(conf)
        gw.proc.send_signal(signal.SIGHUP)
        await _old_workers_gone(gw, old)
        r = await http(gw.addr, "POST", "/b", body=b"x" * 20)
        assert r.status == 200
    finally:
        gw.stop()
        await up.close()


async def test_sighup_under_load_refuses_nothing(tmp_path):
    """hardening F6: replacing the workers under load neither refuses nor fails a request."""
    up = await Upstream().start()
    gw = start_gateway(tmp_path, route(up), workers=2, log_level="WARNING")
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal done
        while not stop.is_set():
            try:  # a new connection per request: every accept crosses the worker change
                r = await http(gw.addr, "GET", "/hup", headers={"Connection": "close"}, timeout=5)
                if r.status != 200:
                    failures.append(f"status {r.status}")
                done += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted
                failures.append(repr(e))

    tasks = [asyncio.create_task(client()) for _ in range(6)]
    try:
        for _ in range(2):
            await asyncio.sleep(0.5)
            old = worker_pids(gw)
            gw.proc.send_signal(signal.SIGHUP)
            await _old_workers_gone(gw, old)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        gw.stop()
        await up.close()
    assert not failures, failures[:5]
    assert done > 50
