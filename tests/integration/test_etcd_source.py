"""Gateways following a real etcd: propagation, bad items, outages, compaction, clusters.

Every gateway here runs 2 workers: a change must reach every worker of every gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from etcdpeer import EtcdCluster
from gwtools import Gateway, Upstream, free_port, http, start_gateway
from meshgate.config import ConfigStore
from meshgate.config.etcd import EtcdClient
from meshgate.config.etcd_source import EtcdSource, key_to_item

PREFIX = "/apisix"


@pytest.fixture
def up(echo_up: Upstream) -> Upstream:
    return echo_up


def etcd_node(urls: list[str], *, role: str = "data_plane", prefix: str = PREFIX) -> dict[str, Any]:
    dep: dict[str, Any] = {"role": role, "etcd": {"host": urls, "prefix": prefix, "resync_delay": 1}}
    if role == "data_plane":
        dep["role_data_plane"] = {"config_provider": "etcd"}
    return {"deployment": dep}


def route(rid: str, uri: str, up: Upstream, **kw: Any) -> bytes:
    return json.dumps({"id": rid, "uri": uri, "upstream": {"type": "roundrobin",
                                                           "nodes": {f"127.0.0.1:{up.port}": 1}}, **kw}).encode()


async def wait_status(gw: Gateway, path: str, status: int, timeout: float = 10.0) -> float:
    """Seconds until ``path`` answers ``status`` on this gateway; each worker is hit by
    fresh connections, so the answer holds on the worker that serves it."""
    t0 = time.monotonic()
    got = None
    while time.monotonic() - t0 < timeout:
        got = (await http(gw.addr, "GET", path)).status
        if got == status:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} answered {got}, not {status}, after {timeout}s")


def wait_workers(gw: Gateway, version_at_least: int, timeout: float = 10.0) -> None:
    gw.wait_applied(version_at_least, timeout)


async def test_two_gateways_follow_one_etcd(tmp_path: Path, etcd: EtcdCluster, up: Upstream) -> None:
    client = EtcdClient(etcd.urls)
    await client.put(f"{PREFIX}/routes/1", route("1", "/one", up))
    a = start_gateway(tmp_path / "a", {"routes": []}, workers=2, node=etcd_node(etcd.urls))
    b = start_gateway(tmp_path / "b", {"routes": []}, workers=2, node=etcd_node(etcd.urls))
    try:
        for gw in (a, b):
            assert (await http(gw.addr, "GET", "/one")).status == 200
        v = max(a.version(), b.version())
        await client.put(f"{PREFIX}/routes/2", route("2", "/two", up))
        for gw in (a, b):
            wait_workers(gw, v + 1)
            for _ in range(6):  # several connections: both workers
                assert (await http(gw.addr, "GET", "/two")).status == 200
        await client.delete(f"{PREFIX}/routes/1")
        for gw in (a, b):
            await wait_status(gw, "/one", 404)
            wait_workers(gw, gw.version())
        # indexes are etcd's revisions
        kv = await client.get(f"{PREFIX}/routes/2")
        assert kv is not None
        assert a.control("/v1/config")["etcd"]["connected"] is True
        item = a.control("/v1/route/2")
        assert (item["createdIndex"], item["modifiedIndex"]) == (kv.create_revision, kv.mod_revision)
    finally:
        a.stop()
        b.stop()
        await client.close()


async def test_bad_items_are_rejected_alone(tmp_path: Path, etcd: EtcdCluster, up: Upstream) -> None:
    client = EtcdClient(etcd.urls)
    await client.put(f"{PREFIX}/routes/good", route("good", "/good", up))
    await client.put(f"{PREFIX}/routes/badjson", b"{not json")
    await client.put(f"{PREFIX}/routes/badschema", json.dumps({"id": "badschema", "uri": 42}).encode())
    await client.put(f"{PREFIX}/routes/", b"init_dir")        # APISIX's directory placeholder
    await client.put(f"{PREFIX}/plugins", b'[{"name":"key-auth"}]')   # not an item kind
    gw = start_gateway(tmp_path / "gw", {"routes": []}, workers=2, node=etcd_node(etcd.urls))
    try:
        assert (await http(gw.addr, "GET", "/good")).status == 200
        cfg = gw.control("/v1/config")
        rejected = " | ".join(cfg["etcd"]["rejected"])
        assert "routes id=badjson" in rejected and "routes id=badschema: /uri:" in rejected
        assert cfg["counts"]["routes"] == 1
        # a good item overwritten with a bad value keeps serving its last good value
        v = gw.version()
        await client.put(f"{PREFIX}/routes/good", json.dumps({"id": "good", "uri": "/good",
                                                              "upstream": {"nodes": "nope"}}).encode())
        await client.put(f"{PREFIX}/routes/other", route("other", "/other", up))
        wait_workers(gw, v + 1)
        assert (await http(gw.addr, "GET", "/other")).status == 200
        assert (await http(gw.addr, "GET", "/good")).status == 200
        assert any("routes id=good: /upstream/nodes" in e for e in gw.control("/v1/config")["etcd"]["rejected"])
        assert gw.proc.poll() is None
    finally:
        gw.stop()
        await client.close()


async def test_etcd_outage_keeps_serving_and_resyncs(tmp_path: Path, etcd: EtcdCluster, up: Upstream) -> None:
    client = EtcdClient(etcd.urls)
    await client.put(f"{PREFIX}/routes/1", route("1", "/one", up))
    await client.put(f"{PREFIX}/routes/2", route("2", "/two", up))
    gw = start_gateway(tmp_path / "gw", {"routes": []}, workers=2, node=etcd_node(etcd.urls))
    try:
        assert (await http(gw.addr, "GET", "/one")).status == 200
        etcd.members[0].kill()
        deadline = time.monotonic() + 10
        while gw.control("/v1/config")["etcd"]["connected"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert gw.control("/v1/config")["etcd"]["connected"] is False
        for _ in range(10):   # the last good config keeps serving
            assert (await http(gw.addr, "GET", "/one")).status == 200
        etcd.restart(etcd.members[0])
        etcd.wait_healthy()
        await client.delete(f"{PREFIX}/routes/1")
        await client.put(f"{PREFIX}/routes/3", route("3", "/three", up))
        await wait_status(gw, "/three", 200, timeout=20)
        await wait_status(gw, "/one", 404)
        assert (await http(gw.addr, "GET", "/two")).status == 200
        assert gw.control("/v1/config")["etcd"]["connected"] is True
    finally:
        gw.stop()
        await client.close()


async def test_compaction_while_watching_leaves_no_stale_config(tmp_path: Path, etcd: EtcdCluster) -> None:
    """The watch resumes from a revision that compaction removed: the source lists again."""
    client = EtcdClient(etcd.urls)
    ups = {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}}
    for i in range(5):
        await client.put(f"{PREFIX}/routes/{i}", json.dumps({"uri": f"/r{i}", "upstream": ups}).encode())
    store = ConfigStore()
    src = EtcdSource(EtcdClient(etcd.urls), store, prefix=PREFIX, resync_delay=0.5)
    await src.load()
    assert set(store.snapshot.items("routes")) == {"0", "1", "2", "3", "4"}
    # while the source is not reading (as a gateway that fell behind), history moves on...
    await client.delete(f"{PREFIX}/routes/0")
    await client.put(f"{PREFIX}/routes/1", json.dumps({"uri": "/changed", "upstream": ups}).encode())
    rev = await client.put(f"{PREFIX}/routes/9", json.dumps({"uri": "/r9", "upstream": ups}).encode())
    await client.compact(rev)
    # ...and is compacted away: resuming the watch must end in a full, current list
    src.start()
    try:
        deadline = time.monotonic() + 10
        while src.resyncs < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert src.resyncs >= 1
        routes = store.snapshot.items("routes")
        assert set(routes) == {"1", "2", "3", "4", "9"}
        assert routes["1"].value["uri"] == "/changed"
        assert routes["9"].modified_index == rev
        # and the watch carries on from there
        await client.put(f"{PREFIX}/routes/10", json.dumps({"uri": "/r10", "upstream": ups}).encode())
        while "10" not in store.snapshot.items("routes") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert "10" in store.snapshot.items("routes")
    finally:
        await src.stop()
        await client.close()


async def test_three_member_cluster_survives_a_member_and_resyncs_after_all(tmp_path: Path, up: Upstream) -> None:
    cluster = EtcdCluster.start(tmp_path / "etcd3", members=3)
    client = EtcdClient(cluster.urls, timeout=5)
    try:
        await client.put(f"{PREFIX}/routes/1", route("1", "/one", up))
        gws = [start_gateway(tmp_path / n, {"routes": []}, workers=2, node=etcd_node(cluster.urls)) for n in "ab"]
        try:
            for gw in gws:
                assert (await http(gw.addr, "GET", "/one")).status == 200
            # one member down: writes are still accepted and reach every gateway
            cluster.members[0].kill()
            await client.put(f"{PREFIX}/routes/2", route("2", "/two", up))
            for gw in gws:
                await wait_status(gw, "/two", 200, timeout=15)
            # every member down: traffic flows on the last config, writes fail cleanly
            for m in cluster.members[1:]:
                m.kill()
            with pytest.raises(Exception) as err:
                await client.put(f"{PREFIX}/routes/3", route("3", "/three", up))
            assert "etcd put failed" in str(err.value)
            for gw in gws:
                for _ in range(6):
                    assert (await http(gw.addr, "GET", "/two")).status == 200
            # all back: the gateways list again and follow new writes
            for m in cluster.members:
                m.start(cluster.initial_cluster, state="existing")
            cluster.wait_healthy()
            await client.put(f"{PREFIX}/routes/3", route("3", "/three", up))
            await client.delete(f"{PREFIX}/routes/1")
            for gw in gws:
                await wait_status(gw, "/three", 200, timeout=30)
                await wait_status(gw, "/one", 404)
        finally:
            for gw in gws:
                gw.stop()
    finally:
        await client.close()
        cluster.stop()


def test_key_layout() -> None:
    assert key_to_item("/apisix", "/apisix/routes/1") == ("routes", "1")
    assert key_to_item("/apisix", "/apisix/consumers/jack/credentials/c1") == ("consumers", "jack/credentials/c1")
    assert key_to_item("/apisix", "/apisix/secrets/vault/1") == ("secrets", "vault/1")
    assert key_to_item("/apisix", "/apisix/routes/") is None
    assert key_to_item("/apisix", "/apisix/plugins") is None
    assert key_to_item("/apisix", "/apisix/gen_id") is None
    assert key_to_item("/apisix", "/apisix/routes/a/b") is None
    assert key_to_item("/apisix", "/other/routes/1") is None
    assert key_to_item("/apisix", "/apisixx/routes/1") is None


async def test_start_fails_clearly_without_etcd(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(AssertionError) as err:
        start_gateway(tmp_path / "gw", {"routes": []}, node=etcd_node([f"http://127.0.0.1:{port}"]))
    msg = str(err.value)
    assert "gateway exited with 1" in msg and "cannot read the configuration from etcd" in msg
    assert "Traceback" not in msg


async def test_reads_what_apisix_wrote_encrypted(tmp_path: Path, etcd: EtcdCluster, up: Upstream) -> None:
    """A consumer credential as APISIX stores it in etcd (key-auth key encrypted with the
    default keyring: the ciphertext of APISIX's t/node/credential-plugin-key-auth.t) is
    decrypted by the gateway and authenticates the plaintext key."""
    client = EtcdClient(etcd.urls)
    await client.put(f"{PREFIX}/consumers/jack", json.dumps({"username": "jack"}).encode())
    await client.put(f"{PREFIX}/consumers/jack/credentials/c1", json.dumps(
        {"id": "c1", "plugins": {"key-auth": {"key": "fsFPtg7BtXMXkvSnS9e1zw=="}}}).encode())
    await client.put(f"{PREFIX}/routes/1", json.dumps(
        {"id": "1", "uri": "/secure", "plugins": {"key-auth": {}},
         "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}}).encode())
    gw = start_gateway(tmp_path / "gw", {"routes": []}, workers=2, node=etcd_node(etcd.urls))
    try:
        assert (await http(gw.addr, "GET", "/secure")).status == 401
        r = await http(gw.addr, "GET", "/secure", headers={"apikey": "p7a3k6r4t9"})
        assert r.status == 200
        assert up.requests[-1].header("x-consumer-username") == "jack"
        assert up.requests[-1].header("x-credential-identifier") == "c1"
        # the ciphertext itself is not a key
        assert (await http(gw.addr, "GET", "/secure", headers={"apikey": "fsFPtg7BtXMXkvSnS9e1zw=="})).status == 401
    finally:
        gw.stop()
        await client.close()
