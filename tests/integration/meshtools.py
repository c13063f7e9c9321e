"""Test tools for the mesh data plane: xDS resources from JSON, `meshgate mesh` in a subprocess.

Resources are written as the JSON istiod / Envoy's config_dump shows them and parsed with
protobuf's json_format, so tests read like the shapes in istio-xds.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
# registered so that the typed_config Any's written as JSON resolve
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

TYPED_CONFIGS = (cors_pb2, fault_pb2, router_pb2, http_connection_manager_pb2, tcp_proxy_pb2)

from gwtools import free_port

__all__ = ["cluster", "cla", "listener", "route_config", "static_cluster", "eds_cluster", "http_listener",
           "tcp_listener", "Mesh", "start_mesh", "started", "eds", "HCM", "ROUTER", "TCP"]

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def cluster(d: dict[str, Any]) -> Any:
    return json_format.ParseDict(d, cluster_pb2.Cluster())


def cla(d: dict[str, Any]) -> Any:
    return json_format.ParseDict(d, endpoint_pb2.ClusterLoadAssignment())


def listener(d: dict[str, Any]) -> Any:
    return json_format.ParseDict(d, listener_pb2.Listener())


def route_config(d: dict[str, Any]) -> Any:
    return json_format.ParseDict(d, route_pb2.RouteConfiguration())


def _endpoints(addrs: list[str]) -> list[dict[str, Any]]:
    return [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
        "address": a.rsplit(":", 1)[0], "port_value": int(a.rsplit(":", 1)[1])}}}} for a in addrs]}]


def static_cluster(name: str, addrs: list[str], **extra: Any) -> Any:
    return cluster({"name": name, "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": name, "endpoints": _endpoints(addrs)}, **extra})


def eds_cluster(name: str, **extra: Any) -> Any:
    return cluster({"name": name, "type": "EDS", "connect_timeout": "1s",
                    "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"},
                                           "service_name": name}, **extra})


def eds(name: str, addrs: list[str]) -> Any:
    return cla({"cluster_name": name, "endpoints": _endpoints(addrs)})


def http_listener(name: str, port: int, *, rds: str | None = None, routes: dict[str, Any] | None = None,
                  address: str = "127.0.0.1", http_filters: list[dict[str, Any]] | None = None,
                  hcm_extra: dict[str, Any] | None = None, **extra: Any) -> Any:
    hcm: dict[str, Any] = {"@type": HCM, "stat_prefix": name, **(hcm_extra or {}),
                           "http_filters": (http_filters or []) + [
                               {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    if rds is not None:
        hcm["rds"] = {"route_config_name": rds, "config_source": {"ads": {}, "resource_api_version": "V3"}}
    else:
        hcm["route_config"] = routes
    return listener({"name": name, "address": {"socket_address": {"address": address, "port_value": port}},
                     "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                     "typed_config": hcm}]}], **extra})


def tcp_listener(name: str, port: int, cluster_name: str, *, address: str = "127.0.0.1") -> Any:
    return listener({"name": name, "address": {"socket_address": {"address": address, "port_value": port}},
                     "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                         "@type": TCP, "stat_prefix": name, "cluster": cluster_name}}]}]})


@dataclass
class Mesh:
    proc: subprocess.Popen[bytes]
    admin_port: int
    status_port: int
    log_path: Path
    stats_port: int = 0

    def metrics(self) -> str:
        return self.get("/stats/prometheus", self.stats_port)[1].decode()

    def get(self, path: str, port: int | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def xds(self) -> Any:
        return json.loads(self.get("/xds")[1])

    def ready(self) -> bool:
        try:
            return self.get("/healthz/ready", self.status_port)[0] == 200
        except OSError:
            return False

    def wait(self, cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{what} not reached in {timeout}s; log:\n{self.log()[-3000:]}")

    async def until(self, cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
        """``wait`` for tests running an in-process xDS server on the same event loop."""
        import asyncio
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if await asyncio.to_thread(cond):
                    return
            except (OSError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} not reached in {timeout}s; log:\n{self.log()[-3000:]}")

    def applied(self) -> bool:
        """Every worker runs the supervisor's latest config version."""
        x = self.xds()
        return bool(x["workers"]) and len({w["version"] for w in x["workers"]}) == 1 and \
            x["workers"][0]["version"] >= x.get("config_version", 0)

    async def settled(self, timeout: float = 10.0) -> None:
        """Ready, and the latest config is in every worker."""
        await self.until(lambda: self.ready() and self.applied(), timeout, "config applied")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("meshgate mesh did not stop on SIGTERM")


def start_mesh(tmp: Path, xds: str, *, node_id: str = "sidecar~127.0.0.1~test-v1.default~default.svc.cluster.local",
               metadata: dict[str, Any] | None = None, delta: bool = False, workers: int = 1,
               extra: list[str] | None = None) -> Mesh:
    admin, status, stats = free_port(), free_port(), free_port()
    log_path = tmp / "mesh.log"
    md = {"NAMESPACE": "default", "INSTANCE_IPS": "127.0.0.1", "ISTIO_VERSION": "1.30.3",
          "LABELS": {"app": "test", "version": "v1"}, **(metadata or {})}
    cmd = [sys.executable, "-m", "meshgate", "--log-level", "INFO", "mesh", "--xds-address", xds, "--node-id", node_id,
           "--node-metadata", json.dumps(md), "--delta" if delta else "--sotw", "--admin-port", str(admin),
           "--status-port", str(status), "--status-address", "127.0.0.1", "--workers", str(workers),
           "--stats-port", str(stats), "--stats-address", "127.0.0.1",
           *(extra or [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POD_", "ISTIO_META_", "INSTANCE_IP"))}
    f = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return Mesh(proc, admin, status, log_path, stats)


async def started(m: Mesh) -> Mesh:
    await m.until(lambda: m.get("/ready")[0] in (200, 503), 20, "admin port up")
    return m
