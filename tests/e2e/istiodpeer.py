"""A real istiod (``pilot-discovery``) against a real kube-apiserver, on loopback, for the mesh e2e.

Binary and data built once by ``tools/peers-e2e/istiod.sh`` into
``${MESHGATE_PEERS:-~/.cache/meshgate/peers}/istiod-<version>/`` (``pilot-discovery``,
``crd-all.gen.yaml``, ``bookinfo/``).  This istiod does not run on files any more: it needs an
apiserver (:class:`kubepeer.KubeAPIServer`).  Recipe: shared/reference/istio-xds.md section 5.3.

``Istiod.start(kube, tmp)`` applies Istio's CRDs, creates ``istio-system``, writes ``mesh.yaml``
(``enableAutoMtls: false`` and no metrics provider unless asked) and runs pilot-discovery with plaintext
gRPC xDS and the HTTP debug server on free loopback ports (secure gRPC, webhooks off; no CA).

Bookinfo-like objects (``bookinfo_*`` functions) are ServiceEntry + WorkloadEntry pairs (loopback
workload addresses, ``STATIC``, ``MESH_INTERNAL``, VIPs in 10.96.x.x) — EndpointSlices refuse loopback
addresses on 1.37 — plus DestinationRules with subsets and the VirtualServices of the Bookinfo tasks.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from kubepeer import KubeAPIServer, die_with_parent, free_port, peers_dir, stop_process

__all__ = ["ISTIOD_VERSION", "Istiod", "istiod_dir", "BOOKINFO_WORKLOADS", "BOOKINFO_VIPS", "bookinfo_services",
           "bookinfo_destination_rules", "vs_all_v1", "vs_reviews_v2_v3", "vs_reviews_jason_v2",
           "vs_ratings_delay", "vs_ratings_abort", "bookinfo_sample"]

ISTIOD_VERSION = os.environ.get("ISTIOD_VERSION", "v0.0.0-20260827124520-eed52ebb66ad")
NET = "networking.istio.io/v1"


def istiod_dir() -> Path:
    return peers_dir() / f"istiod-{ISTIOD_VERSION}"



def _istiod_child() -> None:
    """``preexec_fn`` of pilot-discovery: dies with the test process, and runs at a lower CPU
    priority.  In a cluster istiod has CPU of its own; here it shares two cores with every pod,
    and its start (a Go process listing everything from the apiserver) must not starve the
    sidecars of the traffic the tests watch through an istiod restart."""
    die_with_parent()
    os.nice(10)


class Istiod:
    def __init__(self, kube: KubeAPIServer, workdir: Path, grpc_host: str = "127.0.0.1") -> None:
        self.kube = kube
        self.workdir = workdir
        self.grpc_host = grpc_host
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.monitoring_port = free_port()
        self.ctrlz_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._opts: tuple[dict[str, Any], dict[str, str], list[str]] = ({}, {}, [])

    @property
    def grpc_address(self) -> str:
        """Plaintext ADS (no certificate, no token): what a sidecar's ``--xds-address`` points at."""
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "istiod.log"

    @classmethod
    def start(cls, kube: KubeAPIServer, workdir: Path, *, mesh: dict[str, Any] | None = None,
              env: dict[str, str] | None = None, extra_args: list[str] | None = None,
              timeout: float = 60.0, grpc_host: str = "127.0.0.1") -> Istiod:
        """``mesh`` is merged over the default mesh.yaml (e.g. ``{"defaultProviders": {"metrics":
        ["prometheus"]}}`` to get ``istio.stats``); ``env`` over the default environment.
        ``grpc_host``: the address the plaintext xDS port listens on (e.g. a bridge address that
        sidecars in network namespaces reach); the debug HTTP port stays on loopback."""
        d = istiod_dir()
        if not (d / "pilot-discovery").exists() or not (d / "crd-all.gen.yaml").exists():
            pytest.skip(f"istiod {ISTIOD_VERSION} not built ({d} incomplete): run tools/peers-e2e.sh")
        workdir.mkdir(parents=True, exist_ok=True)
        self = cls(kube, workdir, grpc_host)
        self._opts = (mesh or {}, env or {}, extra_args or [])
        try:
            self._start(*self._opts, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL, as a crashing or evicted istiod: no goodbye to the connected proxies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self, timeout: float = 60.0) -> None:
        """Start again after :meth:`kill` / :meth:`stop`, same ports and options, until ``/ready``."""
        self.kill()
        try:
            self._start(*self._opts, timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, mesh: dict[str, Any], env: dict[str, str], extra_args: list[str], timeout: float) -> None:
        d = istiod_dir()
        self.kube.apply_crds(d / "crd-all.gen.yaml")
        self.kube.ensure_namespace("istio-system")
        mesh_cfg: dict[str, Any] = {
            # no SDS in the test proxies: with auto-mTLS istiod adds transport socket matches that
            # reference sds-grpc and Envoy keeps those clusters warming forever
            "enableAutoMtls": False,
            "defaultConfig": {"discoveryAddress": self.grpc_address},
        }
        mesh_cfg.update(mesh)
        (self.workdir / "mesh.yaml").write_text(yaml.safe_dump(mesh_cfg, sort_keys=False))
        penv = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}
        penv.update({
            "POD_NAMESPACE": "istio-system", "POD_NAME": "istiod-local",
            "ENABLE_CA_SERVER": "false",
            # Istio-only filters upstream Envoy NACKs (istio-xds.md 6.2)
            "PILOT_ENABLE_METADATA_EXCHANGE": "false", "PILOT_ENABLE_ALPN_FILTER": "false",
            "KUBECONFIG": str(self.kube.kubeconfig),
        })
        penv.update(env)
        args = [
            str(d / "pilot-discovery"), "discovery",
            f"--kubeconfig={self.kube.kubeconfig}", f"--meshConfig={self.workdir / 'mesh.yaml'}",
            f"--grpcAddr={self.grpc_address}", f"--httpAddr=127.0.0.1:{self.http_port}",
            f"--monitoringAddr=127.0.0.1:{self.monitoring_port}",
            "--secureGRPCAddr=", "--httpsAddr=",
            f"--ctrlz_port={self.ctrlz_port}", "--ctrlz_address=127.0.0.1",
            "--keepaliveMaxServerConnectionAge=24h",
            *extra_args,
        ]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=penv, cwd=self.workdir, preexec_fn=_istiod_child)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pilot-discovery exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._status("/ready") == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"istiod /ready not 200 in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.proc, grace=5.0)
        self.proc = None

    def __enter__(self) -> Istiod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no istiod log)"

    # ---------------------------------------------------------------- debug API
    def _status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    def debug(self, path: str, **params: str) -> Any:
        url = self.http_url + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def config_dump(self, proxy_id: str) -> dict[str, Any]:
        """What istiod would send that connected proxy (``<pod>.<namespace>``), as an Envoy ConfigDump."""
        res: dict[str, Any] = self.debug("/debug/config_dump", proxyID=proxy_id)
        return res

    def syncz(self) -> list[dict[str, Any]]:
        """Per connected proxy: last sent / acked nonce per type (``istioctl proxy-status``)."""
        res = self.debug("/debug/syncz")
        if isinstance(res, dict):  # newer istiod answers a DiscoveryResponse-like envelope
            res = res.get("resources", [res])
        return list(res or [])

    def connected(self, proxy_id: str) -> dict[str, Any] | None:
        for s in self.syncz():
            if s.get("proxy") == proxy_id:
                return s
        return None

    def wait(self, cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = cond()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"istiod: {what} not met in {timeout}s:\n{self.log_tail(2000)}")

    # ---------------------------------------------------------------- config helpers
    def apply(self, docs: Any, namespace: str = "default") -> list[dict[str, Any]]:
        return self.kube.apply(docs, namespace=namespace)

    def delete(self, docs: Any, namespace: str = "default") -> None:
        self.kube.delete_docs(docs, namespace=namespace)


# ---------------------------------------------------------------------------- Bookinfo-like objects
#: workload name -> (app, version, loopback address).  productpage-v1 is the proxy under test in the
#: e2e (node IP 127.0.0.5).  127.0.0.6 is avoided: Envoy binds it as the inbound passthrough source.
BOOKINFO_WORKLOADS: dict[str, tuple[str, str, str]] = {
    "productpage-v1": ("productpage", "v1", "127.0.0.5"),
    "details-v1": ("details", "v1", "127.0.0.11"),
    "ratings-v1": ("ratings", "v1", "127.0.0.12"),
    "reviews-v1": ("reviews", "v1", "127.0.0.21"),
    "reviews-v2": ("reviews", "v2", "127.0.0.22"),
    "reviews-v3": ("reviews", "v3", "127.0.0.23"),
}
BOOKINFO_VIPS = {"productpage": "10.96.100.10", "details": "10.96.100.11", "ratings": "10.96.100.12",
                 "reviews": "10.96.100.13"}
BOOKINFO_PORT = 9080


def _meta(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        m["labels"] = labels
    return m


def bookinfo_services(namespace: str = "default", *, workloads: dict[str, tuple[str, str, str]] | None = None,
                      port: int = BOOKINFO_PORT) -> list[dict[str, Any]]:
    """ServiceEntry per app (host ``<app>.<ns>.svc.cluster.local``, VIP, port ``http``/HTTP,
    STATIC, MESH_INTERNAL, selecting ``app``) + a WorkloadEntry per instance."""
    workloads = workloads or BOOKINFO_WORKLOADS
    apps = sorted({app for app, _, _ in workloads.values()})
    out: list[dict[str, Any]] = []
    for app in apps:
        out.append({
            "apiVersion": NET, "kind": "ServiceEntry", "metadata": _meta(app, namespace, {"app": app}),
            "spec": {
                "hosts": [f"{app}.{namespace}.svc.cluster.local"],
                "addresses": [BOOKINFO_VIPS.get(app, "10.96.100.99")],
                "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
                "location": "MESH_INTERNAL", "resolution": "STATIC",
                "workloadSelector": {"labels": {"app": app}},
            },
        })
    for name, (app, version, addr) in sorted(workloads.items()):
        out.append({
            "apiVersion": NET, "kind": "WorkloadEntry",
            "metadata": _meta(name, namespace, {"app": app, "version": version}),
            "spec": {"address": addr, "labels": {"app": app, "version": version},
                     "serviceAccount": f"bookinfo-{app}"},
        })
    return out


def bookinfo_destination_rules(namespace: str = "default") -> list[dict[str, Any]]:
    """Subsets by ``version`` label, as Bookinfo's destination-rule-all (no TLS settings)."""
    subsets = {"productpage": ["v1"], "details": ["v1", "v2"], "ratings": ["v1", "v2", "v2-mysql", "v2-mysql-vm"],
               "reviews": ["v1", "v2", "v3"]}
    out = []
    for app, versions in subsets.items():
        out.append({"apiVersion": NET, "kind": "DestinationRule", "metadata": _meta(app, namespace),
                    "spec": {"host": app, "subsets": [{"name": v, "labels": {"version": v}} for v in versions]}})
    return out


def _vs(name: str, namespace: str, http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": _meta(name, namespace),
            "spec": {"hosts": [name], "http": http}}


def _dest(host: str, subset: str, weight: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": host, "subset": subset}}
    if weight is not None:
        d["weight"] = weight
    return d


_JASON = [{"headers": {"end-user": {"exact": "jason"}}}]


def vs_all_v1(namespace: str = "default") -> list[dict[str, Any]]:
    return [_vs(app, namespace, [{"route": [_dest(app, "v1")]}])
            for app in ("productpage", "reviews", "ratings", "details")]


def vs_reviews_v2_v3(namespace: str = "default") -> list[dict[str, Any]]:
    return [_vs("reviews", namespace, [{"route": [_dest("reviews", "v2", 50), _dest("reviews", "v3", 50)]}])]


def vs_reviews_jason_v2(namespace: str = "default") -> list[dict[str, Any]]:
    return [_vs("reviews", namespace, [{"match": copy.deepcopy(_JASON), "route": [_dest("reviews", "v2")]},
                                       {"route": [_dest("reviews", "v1")]}])]


def vs_ratings_delay(namespace: str = "default", delay: str = "7s") -> list[dict[str, Any]]:
    return [_vs("ratings", namespace, [
        {"match": copy.deepcopy(_JASON), "fault": {"delay": {"percentage": {"value": 100.0}, "fixedDelay": delay}},
         "route": [_dest("ratings", "v1")]},
        {"route": [_dest("ratings", "v1")]}])]


def vs_ratings_abort(namespace: str = "default", status: int = 500) -> list[dict[str, Any]]:
    return [_vs("ratings", namespace, [
        {"match": copy.deepcopy(_JASON), "fault": {"abort": {"percentage": {"value": 100.0}, "httpStatus": status}},
         "route": [_dest("ratings", "v1")]},
        {"route": [_dest("ratings", "v1")]}])]


def bookinfo_sample(relpath: str) -> Path:
    """A file of Istio's own ``samples/bookinfo`` copied into the cache by istiod.sh, e.g.
    ``networking/virtual-service-reviews-80-20.yaml``; skips when absent."""
    p = istiod_dir() / "bookinfo" / relpath
    if not p.exists():
        pytest.skip(f"{p} not in the istiod peer cache: run tools/peers-e2e.sh")
    return p
