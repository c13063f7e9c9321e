"""The Admin API as deployed: `meshgate run` in each APISIX role, with a real etcd.

* a third-party client (PyPI ``apisix-client``) drives gateway A's Admin API as a user
  would; the route it creates serves traffic on A and on a data_plane gateway B;
* a write on one gateway's Admin API is served by the other within a bounded wait;
* etcd down: traffic keeps flowing, Admin API writes answer 503, nothing half-written;
* ``control_plane`` serves the Admin API and no traffic; ``traditional`` + ``yaml`` is the
  API-driven standalone mode (``/apisix/admin/configs``);
* the Admin API refuses to start without a key of its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from etcdpeer import EtcdCluster
from gwtools import Gateway, Upstream, free_port, http, start_gateway

KEY = "test-admin-key-7f3a9c"


@pytest.fixture
def up(echo_up: Upstream) -> Upstream:
    return echo_up


def admin_node(urls: list[str], port: int, *, role: str = "traditional", provider: str = "etcd",
               keys: list[dict[str, str]] | None = None) -> dict[str, Any]:
    dep: dict[str, Any] = {"role": role, f"role_{role}": {"config_provider": provider},
                           "etcd": {"host": urls, "prefix": "/apisix", "resync_delay": 1},
                           "admin": {"admin_key": keys if keys is not None else
                                     [{"name": "admin", "key": KEY, "role": "admin"}],
                                     "admin_listen": {"ip": "127.0.0.1", "port": port}}}
    return {"deployment": dep}


def dp_node(urls: list[str]) -> dict[str, Any]:
    return {"deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "etcd"},
                           "etcd": {"host": urls, "prefix": "/apisix", "resync_delay": 1}}}


def admin(port: int, method: str, path: str, body: Any = None, *, key: str = KEY,
          headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}/apisix/admin{path}", data=data, method=method,
                                 headers={"X-API-KEY": key, "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, hdrs = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, dict(e.headers)
    try:
        return status, json.loads(raw) if raw else None, hdrs
    except ValueError:
        return status, raw, hdrs


def wait_admin(port: int, timeout: float = 20.0) -> None:
    """start_gateway waits for the traffic and control ports; the Admin API opens just after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"Admin API on port {port} did not open in {timeout}s")


async def until(gw: Gateway, path: str, status: int, timeout: float = 10.0, host: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = (await http(gw.addr, "GET", path, headers={"Host": host} if host else None)).status
        if got == status:
            return
        await asyncio.sleep(0.03)
    raise AssertionError(f"{path}: {got}, wanted {status}")


async def test_apisix_client_creates_upstream_and_route_that_serve(tmp_path: Path, etcd: EtcdCluster,
                                                                 up: Upstream) -> None:
    from apisix_client import ApisixClient
    from apisix_client.route.models import Route
    from apisix_client.upstream.models import Node, Upstream as ClientUpstream

    aport = free_port()
    a = start_gateway(tmp_path / "a", {"routes": []}, workers=2, node=admin_node(etcd.urls, aport))
    b = start_gateway(tmp_path / "b", {"routes": []}, workers=2, node=dp_node(etcd.urls))
    try:
        wait_admin(aport)
        client = ApisixClient(base_url=f"http://127.0.0.1:{aport}/", api_key=KEY)
        uid = client.upstream.create_or_update(
            ClientUpstream(name="echo", type="roundrobin", nodes=[Node(host="127.0.0.1", port=up.port, weight=1)]),
            "echo")
        assert uid == "echo"
        rid = client.route.create_with_id_generation(Route(name="hello", uri="/hello/*", upstream_id="echo"))
        assert rid is not None and len(rid) == 20 and rid.isdigit()
        got = client.route.get(rid)
        assert got is not None and got.value.uri == "/hello/*" and got.modified_index >= got.created_index > 0
        assert client.route.count() == 1
        for gw in (a, b):
            await until(gw, "/hello/world", 200)
        assert up.requests[-1].path == "/hello/world"
        assert client.route.delete(rid) is True
        for gw in (a, b):
            await until(gw, "/hello/world", 404)
    finally:
        a.stop()
        b.stop()


async def test_write_on_one_gateway_serves_on_the_other(tmp_path: Path, etcd: EtcdCluster, up: Upstream) -> None:
    pa, pb = free_port(), free_port()
    a = start_gateway(tmp_path / "a", {"routes": []}, workers=2, node=admin_node(etcd.urls, pa))
    b = start_gateway(tmp_path / "b", {"routes": []}, workers=2, node=admin_node(etcd.urls, pb))
    try:
        wait_admin(pa)
        wait_admin(pb)
        ups = {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}
        st, body, hdrs = admin(pa, "PUT", "/routes/r1", {"uri": "/from-a", "upstream": ups})
        assert st == 201 and body["key"] == "/apisix/routes/r1", body
        st, body, _ = admin(pb, "PUT", "/routes/r2", {"uri": "/from-b", "upstream": ups})
        assert st == 201, body
        t0 = time.monotonic()
        await until(b, "/from-a", 200, timeout=5)
        await until(a, "/from-b", 200, timeout=5)
        assert time.monotonic() - t0 < 5
        # both Admin APIs read the same store
        st, body, _ = admin(pb, "GET", "/routes/r1")
        assert st == 200 and body["value"]["uri"] == "/from-a"
        # every worker of both gateways runs the change
        for gw in (a, b):
            v = gw.control("/v1/config")
            assert len({w["version"] for w in v["workers"]}) == 1
    finally:
        a.stop()
        b.stop()


async def test_etcd_down_traffic_flows_writes_503_then_resync(tmp_path: Path, etcd: EtcdCluster,
                                                              up: Upstream) -> None:
    port = free_port()
    gw = start_gateway(tmp_path / "gw", {"routes": []}, workers=2, node=admin_node(etcd.urls, port))
    try:
        wait_admin(port)
        ups = {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}
        assert admin(port, "PUT", "/routes/1", {"uri": "/one", "upstream": ups})[0] == 201
        await until(gw, "/one", 200)
        etcd.members[0].kill()
        try:
            # 503 as soon as etcd refuses; at the latest when the Admin API's own deadline (1.5 x
            # etcd.timeout + 1 s = 46 s) passes (a call on a dying connection was once seen to hang)
            st, body, _ = admin(port, "PUT", "/routes/2", {"uri": "/two", "upstream": ups}, timeout=60)
        except TimeoutError:
            raise AssertionError("the Admin API did not answer with etcd down; gateway log:\n"
                                 + gw.log_path.read_text(errors="replace")[-6000:]) from None
        assert st == 503 and "etcd" in body["error_msg"], body
        assert admin(port, "GET", "/routes/1")[0] == 503
        for _ in range(10):
            assert (await http(gw.addr, "GET", "/one")).status == 200
        etcd.restart(etcd.members[0])
        etcd.wait_healthy()
        st, body, _ = admin(port, "GET", "/routes/2")
        assert st == 404 and body == {"message": "Key not found"}    # the refused write left nothing
        assert admin(port, "PUT", "/routes/2", {"uri": "/two", "upstream": ups})[0] == 201
        await until(gw, "/two", 200, timeout=20)
    finally:
        gw.stop()


async def test_control_plane_serves_admin_only(tmp_path: Path, etcd: EtcdCluster, up: Upstream) -> None:
    cp_port = free_port()
    cp = start_gateway(tmp_path / "cp", {"routes": []}, node=admin_node(etcd.urls, cp_port, role="control_plane"),
                       wait=False)
    dp = start_gateway(tmp_path / "dp", {"routes": []}, workers=2, node=dp_node(etcd.urls))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if admin(cp_port, "GET", "/routes")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        ups = {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}
        assert admin(cp_port, "PUT", "/routes/1", {"uri": "/cp", "upstream": ups})[0] == 201
        await until(dp, "/cp", 200)
        # the control plane itself serves no traffic
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", cp.port), timeout=1).close()
        # the data plane has no Admin API (its admin port is not even configured)
    finally:
        cp.stop()
        dp.stop()


async def test_api_driven_standalone(tmp_path: Path, up: Upstream) -> None:
    port = free_port()
    gw = start_gateway(tmp_path / "gw", {"routes": []}, workers=2,
                       node=admin_node(["http://127.0.0.1:1"], port, provider="yaml"))
    try:
        wait_admin(port)
        ups = {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}
        doc = {"routes": [{"id": "r1", "uri": "/pushed", "upstream": ups}], "routes_conf_version": 1}
        st, body, hdrs = admin(port, "PUT", "/configs", doc, headers={"X-Digest": "d1"})
        assert st == 202, body
        await until(gw, "/pushed", 200)
        st, body, _ = admin(port, "GET", "/configs")
        assert st == 200 and body["routes"][0]["uri"] == "/pushed" and body["routes_conf_version"] == 1
        # a bad push changes nothing
        bad = {"routes": [{"id": "r1", "uri": 42, "upstream": ups}], "routes_conf_version": 2}
        st, body, _ = admin(port, "PUT", "/configs", bad, headers={"X-Digest": "d2"})
        assert st == 400 and "error_msg" in body
        assert (await http(gw.addr, "GET", "/pushed")).status == 200
        # only what APISIX serves in this mode: no per-resource endpoints
        assert admin(port, "GET", "/routes")[0] == 404
        # and a wrong key is refused here too
        assert admin(port, "GET", "/configs", key="nope")[0] == 401
    finally:
        gw.stop()


@pytest.mark.parametrize("keys,reason", [
    ([], "needs deployment.admin.admin_key"),
    ([{"name": "admin", "key": "edd1c9f034335f136f87ad84b625c8f1", "role": "admin"}], "CVE-2020-13945"),
])
def test_admin_api_refuses_to_start_without_its_own_key(tmp_path: Path, keys: list[dict[str, str]],
                                                         reason: str) -> None:
    with pytest.raises(AssertionError) as err:
        start_gateway(tmp_path / "gw", {"routes": []},
                      node=admin_node(["http://127.0.0.1:1"], free_port(), keys=keys))
    msg = str(err.value)
    assert "gateway exited with 1" in msg and reason in msg and "Traceback" not in msg


def test_admin_api_listens_on_loopback_by_default(tmp_path: Path) -> None:
    from meshgate.config import parse_node_config

    node = parse_node_config({"deployment": {"role": "traditional"}}, source="t")
    assert node.admin.admin_listen.ip == "127.0.0.1" and node.admin.admin_listen.port == 9180


VERSIONED = '''
NAME = "t-ver"
PRIORITY = 10
SCHEMA = {{"type": "object"}}

def rewrite(conf, ctx):
    ctx.set_req_header("X-Ver", "{ver}")
'''


async def test_plugin_reload_reaches_every_gateway_through_etcd(tmp_path: Path, etcd: EtcdCluster,
                                                               up: Upstream) -> None:
    """APISIX: PUT /apisix/admin/plugins/reload on one node publishes its plugin list under
    <prefix>/plugins, and every node following etcd reloads its plugins with that list."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "t_ver.py").write_text(VERSIONED.format(ver=1))
    with_dir = {"apisix": {"plugin_dirs": [str(plugins)]}}
    port = free_port()
    a = start_gateway(tmp_path / "a", {"routes": []}, workers=2, node={**admin_node(etcd.urls, port), **with_dir})
    b = start_gateway(tmp_path / "b", {"routes": []}, workers=2, node={**dp_node(etcd.urls), **with_dir})
    try:
        wait_admin(port)
        ups = {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}
        assert admin(port, "PUT", "/routes/v", {"uri": "/v", "upstream": ups, "plugins": {"t-ver": {}}})[0] == 201
        for gw in (a, b):
            await until(gw, "/v", 200)

        async def versions(gw: Gateway) -> set[str | None]:
            seen = set()
            for _ in range(8):
                await http(gw.addr, "GET", "/v")
                seen.add(up.requests[-1].header("x-ver"))
            return seen
        assert await versions(b) == {"1"}
        (plugins / "t_ver.py").write_text(VERSIONED.format(ver=2))
        st, body, _ = admin(port, "PUT", "/plugins/reload")
        assert (st, body) == (200, b"done")
        st, body, _ = admin(port, "GET", "/plugins/list")
        assert "t-ver" in body
        deadline = time.monotonic() + 10
        while await versions(b) != {"2"} and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for gw in (a, b):
            assert await versions(gw) == {"2"}
        # the list in etcd is what the nodes enable: a list without t-ver disables it everywhere
        from meshgate.config.etcd import EtcdClient
        client = EtcdClient(etcd.urls)
        await client.put("/apisix/plugins", json.dumps([{"name": "key-auth"}, {"name": "mqtt-proxy",
                                                                               "stream": True}]).encode())
        await client.close()
        deadline = time.monotonic() + 10
        while (await http(b.addr, "GET", "/v")).status == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (await http(b.addr, "GET", "/v")).status != 200   # the route's plugin is unknown now
        assert "t-ver" not in [p["name"] for p in b.control("/v1/plugins")["plugins"]]
        assert [p["name"] for p in b.control("/v1/plugins")["plugins"]] == ["key-auth"]
    finally:
        a.stop()
        b.stop()
