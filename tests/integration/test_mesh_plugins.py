"""`meshgate mesh --plugins-address`: the mesh controller's plugins, delivered over the
extension-config stream (meshgate.xds.extconfig), run on the sidecar's routes.

A real gRPC ADS server gives the sidecar its listener and route (as istiod would); a real
``ExtConfigServer`` in the test plays the mesh controller's side of the plugin stream.  The
test checks what a client sees through the sidecar, and what the controller learns back (ACK,
NACK with the reason, the applied version).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from adsserver import CDS, LDS, RDS, AdsServer
from gwtools import Upstream, UpstreamRequest, free_port, http
from meshtools import http_listener, route_config, start_mesh, started, static_cluster

from meshgate.xds.extconfig import ExtConfigServer, NodeInfo, state_version

pytestmark = pytest.mark.timeout(90)

POD = "reviews-v1-abc"


def _backend(req: UpstreamRequest) -> Any:
    return 200, {"Content-Type": "application/json", "X-Backend": "reviews"}, json.dumps({"path": req.path}).encode()




async def test_controller_plugins_run_on_every_route_and_bad_sets_are_nacked(tmp_path: Path, ads: AdsServer) -> None:
    up = await Upstream(handler=_backend).start()
    states: dict[str, dict[str, Any]] = {}
    seen: list[tuple[str, str | None, str | None]] = []

    def resolve(node: NodeInfo) -> dict[str, Any] | None:
        return states.get(node.key)

    def on_status(node: NodeInfo, acked: str | None, error: str | None) -> None:
        seen.append((node.key, acked, error))

    ctl = ExtConfigServer(resolve, on_status=on_status)
    addr = await ctl.start("127.0.0.1:0")
    port = free_port()
    ads.set(CDS, {"reviews": static_cluster("reviews", [up.addr])})
    ads.set(LDS, {"l": http_listener("l", port, rds="9080")})
    ads.set(RDS, {"9080": route_config({"name": "9080", "virtual_hosts": [
        {"name": "reviews", "domains": ["*"], "routes": [
            {"match": {"path": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "d"}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "reviews"}}]}]})})
    ads.push()
    sample = {"plugins": {"response-rewrite": {"body": "BODY_REWRITE", "headers": {"X-Header": "Rewrite"}}},
              "sources": [{"namespace": "default", "name": "ameshpluginconfig-sample", "generation": 1}]}
    states[f"default/{POD}"] = sample
    m = await started(start_mesh(tmp_path, ads.address, node_id=f"sidecar~127.0.0.1~{POD}.default~default.svc."
                                                                 "cluster.local", extra=["--plugins-address", addr]))
    target = ("127.0.0.1", port)
    try:
        await m.settled()

        async def answers(status: int, body: bytes | None = None, path: str = "/r") -> None:
            deadline = asyncio.get_running_loop().time() + 15
            last = None
            while asyncio.get_running_loop().time() < deadline:
                last = await http(target, "GET", path, host="reviews")
                if last.status == status and (body is None or last.body == body):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{path}: wanted {status} {body!r}, got {last and (last.status, last.body)}; "
                                 f"log:\n{m.log()[-3000:]}")

        # Amesh's own sample: the body and a header rewritten on the route to the service
        await answers(200, b"BODY_REWRITE")
        r = await http(target, "GET", "/r", host="reviews")
        assert r.header("x-header") == "Rewrite" and r.header("x-backend") == "reviews"
        v1 = state_version(sample)
        assert (f"default/{POD}", v1, None) in seen
        info = json.loads(m.get("/plugins")[1])
        assert info["enabled"] and info["version"] == v1 and list(info["plugins"]) == ["response-rewrite"]
        assert info["sources"][0]["name"] == "ameshpluginconfig-sample"
        # every route of the sidecar: a direct response too (its answer passes the response
        # filters, as a plugin's answer does on APISIX)
        r = await http(target, "GET", "/direct", host="reviews")
        assert (r.status, r.body, r.header("x-header")) == (200, b"BODY_REWRITE", "Rewrite")

        # a new set replaces the old one: an abort, and the rewrite gone
        states[f"default/{POD}"] = {"plugins": {"fault-injection": {"abort": {"http_status": 418, "body": "teapot"}}},
                                    "sources": [{"namespace": "default", "name": "fault", "generation": 2}]}
        ctl.notify()
        await answers(418, b"teapot")

        # a set this sidecar cannot run is NACKed with the reason; the last good set keeps running
        bad = {"plugins": {"limit-count": {"count": -1, "time_window": 60}},
               "sources": [{"namespace": "default", "name": "broken", "generation": 1}]}
        states[f"default/{POD}"] = bad
        ctl.notify()
        deadline = asyncio.get_running_loop().time() + 10
        while not any(e for _, _, e in seen if e) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        errors = [e for _, _, e in seen if e]
        assert errors and "AmeshPluginConfig default/broken" in errors[-1] and "limit-count" in errors[-1], seen
        await answers(418, b"teapot")
        (st,) = ctl.connected()
        assert st.error and st.acked_version != state_version(bad)

        # no plugins for the pod any more: plain routing
        states.pop(f"default/{POD}")
        ctl.notify()
        await answers(200, json.dumps({"path": "/r"}).encode())
        assert json.loads(m.get("/plugins")[1])["plugins"] == {}
    finally:
        assert m.stop() == 0
        await ctl.stop()
        await up.close()


async def test_bad_plugins_address_exits_1(tmp_path: Path) -> None:
    m = start_mesh(tmp_path, "127.0.0.1:1", extra=["--plugins-address", "no-port"])
    assert m.proc.wait(20) == 1
    assert "--plugins-address" in m.log()
