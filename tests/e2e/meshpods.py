"""Bookinfo "pods" on one machine: a network namespace per pod, each with Istio's capture rules,
one demo service and a ``meshgate mesh`` sidecar that a real istiod drives.

Layout (everything is created by :class:`MeshNet` and deleted by :meth:`MeshNet.close`)::

    root namespace: bridge mgb<tag> 10.233.N.1/24 ── istiod's plaintext xDS listens here
      ├─ veth ── netns mgm<tag>-productpage-v1  eth0 10.233.N.10  (default route via .1)
      ├─ veth ── netns mgm<tag>-details-v1      eth0 10.233.N.11
      └─ ...                                     (ratings-v1, reviews-v1/v2/v3)

In each pod, as Kubernetes + Istio would run it:

- ``meshgate iptables`` with the injector's istio-init arguments (REDIRECT, all ports, excluding
  15090/15021/15020), proxy excluded by uid **and gid 1337**;
- the app (``python -m meshgate.demo`` one-service mode) on 0.0.0.0:9080 as uid/gid 65534
  (nobody), so its connections *are* captured.  The interpreter lives under /root (0700), which
  nobody cannot read, so the app process starts as root, imports everything it will need and
  only then drops to 65534 (the netfilter owner match looks at the credentials a socket was
  created with, so every connection the app makes is nobody's);
- ``meshgate mesh`` as uid 0 with real/effective gid 1337 (``setpriv --regid 1337``): the
  ``--gid-owner 1337`` rule lets its own connections out uncaptured, and being root it can exec
  the interpreter and spawn its workers.  Its node is what istio-agent would send: node id
  ``sidecar~<podIP>~<pod>.default~default.svc.cluster.local`` and metadata NAMESPACE,
  INSTANCE_IPS, LABELS {app, version}, WORKLOAD_NAME, ISTIO_VERSION, CLUSTER_ID, INTERCEPTION_MODE;
  delta xDS, except the pods in :data:`SOTW_PODS` (state of the world), so both are exercised.

Names: ``/etc/netns/<ns>/hosts`` (``ip netns exec`` bind-mounts it over /etc/hosts) maps
``productpage``, ``details``, ``ratings``, ``reviews`` (and ``<name>.default.svc.cluster.local``)
to the ServiceEntry VIPs (10.96.100.x): an app's call to ``http://reviews:9080`` goes to the VIP,
is redirected to the sidecar's 15001 and routed as Envoy would; the chosen endpoint is another
pod's IP, where the inbound capture hands it to that pod's sidecar on 15006.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from kubepeer import die_with_parent

__all__ = ["MeshNet", "Pod", "BOOKINFO_PODS", "SOTW_PODS", "need_netns", "APP_UID", "PROXY_GID", "ISTIO_INIT_ARGS"]

PY = sys.executable
PROXY_GID = 1337
APP_UID = 65534
NAMESPACE = "default"
ISTIO_VERSION = "1.30.3"
ISTIO_INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-g", str(PROXY_GID), "-m", "REDIRECT",
                   "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]
#: sidecars speaking state-of-the-world xDS; the others use delta (Istio's default since 1.22)
SOTW_PODS = frozenset({"details-v1", "reviews-v2"})
#: pod (workload) name -> (app, version, last octet of its IP)
BOOKINFO_PODS: dict[str, tuple[str, str, int]] = {
    "productpage-v1": ("productpage", "v1", 10),
    "details-v1": ("details", "v1", 11),
    "ratings-v1": ("ratings", "v1", 12),
    "reviews-v1": ("reviews", "v1", 21),
    "reviews-v2": ("reviews", "v2", 22),
    "reviews-v3": ("reviews", "v3", 23),
}

# The app: import everything it will ever need while still root, then become nobody.
# (asyncio resolves names in a thread pool -> concurrent.futures.thread; str hosts -> idna codec.)
_APP = r'''
import os, sys
import asyncio, concurrent.futures.thread, encodings.idna, socket
import shutil  # argparse's help formatter imports it lazily: after setuid the venv's Python may be unreadable
import meshgate.demo.services as services
socket.getaddrinfo("localhost", 9080)
uid = int(sys.argv[1])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
sys.exit(services.main(sys.argv[2:]))
'''


def need_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, a bridge and iptables rules")
    for tool in ("ip", "setpriv", "curl", "iptables-restore", "iptables-save"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"needs {tool} (iproute2, util-linux, curl; iptables: tools/peers/iptables.sh)")


def _run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {r.returncode}: {r.stderr.strip()}")
    return r


def _http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


@dataclass
class Pod:
    net: MeshNet
    name: str          # workload / pod name, e.g. reviews-v2
    app: str
    version: str
    ip: str
    ns: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        return f"sidecar~{self.ip}~{self.name}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"

    @property
    def proxy_id(self) -> str:
        """What istiod's debug endpoints call this proxy."""
        return f"{self.name}.{NAMESPACE}"

    def metadata(self) -> dict[str, Any]:
        return {"NAMESPACE": NAMESPACE, "INSTANCE_IPS": self.ip, "LABELS": {"app": self.app, "version": self.version},
                "WORKLOAD_NAME": self.name, "NAME": self.name, "ISTIO_VERSION": ISTIO_VERSION,
                "CLUSTER_ID": "Kubernetes", "INTERCEPTION_MODE": "REDIRECT", "MESH_ID": "cluster.local",
                "SERVICE_ACCOUNT": f"bookinfo-{self.app}"}

    def sh(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns, *argv, check=check, timeout=timeout)

    def log(self, what: str) -> Path:
        return self.net.workdir / f"{self.name}.{what}.log"

    def _spawn(self, what: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log(what), "ab") as logf:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.procs[what] = p
        return p

    # -- what istio-init, the app container and istio-proxy run --
    def iptables_cmd(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, PY, "-m", "meshgate", "iptables", *ISTIO_INIT_ARGS]

    def start_app(self) -> None:
        args = ["--service", self.app, "--version", self.version, "--host", "0.0.0.0", "--port", "9080"]
        self._spawn("app", [PY, "-c", _APP, str(APP_UID), *args])

    def start_sidecar(self, xds_address: str, *, delta: bool = True, plugins_address: str | None = None) -> None:
        self._spawn("sidecar", [
            "setpriv", f"--regid={PROXY_GID}", "--clear-groups", "--",
            PY, "-m", "meshgate", "mesh", "--xds-address", xds_address, "--node-id", self.node_id,
            "--node-metadata", json.dumps(self.metadata()), "--delta" if delta else "--sotw", "--workers", "1",
            *(["--plugins-address", plugins_address] if plugins_address else [])])

    def pod_object(self) -> dict[str, Any]:
        """The Pod as the apiserver holds it (no kubelet here: it stays Pending), for the
        controllers that read pod labels (the mesh controller)."""
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": NAMESPACE,
                             "labels": {"app": self.app, "version": self.version}},
                "spec": {"serviceAccountName": "default", "automountServiceAccountToken": False,
                         "containers": [{"name": self.app, "image": "meshgate-bookinfo:dev"}]}}

    # -- looking at it --
    def alive(self, what: str) -> bool:
        p = self.procs.get(what)
        return p is not None and p.poll() is None

    def ready(self) -> bool:
        """Istio's readiness probe: the status port (excluded from capture) from outside the pod."""
        return _http_status(f"http://{self.ip}:15021/healthz/ready") == 200

    def admin(self, path: str) -> dict[str, Any]:
        """A JSON page of the sidecar's admin port (127.0.0.1:15000 inside the pod); {} if none."""
        r = self.sh("curl", "-sS", "--max-time", "5", f"http://127.0.0.1:15000{path}", check=False, timeout=10)
        try:
            got = json.loads(r.stdout)
        except json.JSONDecodeError:
            return {}
        return got if isinstance(got, dict) else {}

    def stats(self) -> str:
        with urllib.request.urlopen(f"http://{self.ip}:15090/stats/prometheus", timeout=5) as r:
            return str(r.read().decode())

    def curl_as(self, uid_gid: tuple[int, int], url: str, *, max_time: float = 3.0,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        """curl from inside the pod with the given real/effective uid and gid (no supplementary
        groups): ``(status, body)``; status 0 when the connection failed or timed out."""
        uid, gid = uid_gid
        hdrs = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
        r = self.sh("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                    "curl", "-sS", "--max-time", str(max_time), "-o", "-", "-w", "\n%{http_code}", *hdrs, url,
                    check=False, timeout=max_time + 10)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.strip().isdigit() else 0), body

    def log_tail(self, what: str, n: int = 2500) -> str:
        try:
            return self.log(what).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        # anything left in the namespace (a sidecar's worker whose supervisor was killed) is ours
        r = _run("ip", "netns", "pids", self.ns, check=False)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


class MeshNet:
    """The bridge, the pods and their /etc/netns files; :meth:`close` removes all of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = secrets.token_hex(2)
        self.octet = self._free_octet()
        self.gateway = f"10.233.{self.octet}.1"
        self.bridge = f"mgb{self.tag}"
        self.pods: dict[str, Pod] = {}
        self._netns_dirs: list[Path] = []
        self._made_etc_netns = False
        self._bridge_made = False

    @staticmethod
    def _free_octet() -> int:
        used = _run("ip", "-4", "route", "show", "table", "all").stdout
        for _ in range(100):
            n = secrets.randbelow(150) + 100
            if f"10.233.{n}." not in used:
                return n
        raise AssertionError("no free 10.233.N.0/24 subnet")

    def pod_ip(self, last: int) -> str:
        return f"10.233.{self.octet}.{last}"

    def setup(self, pods: dict[str, tuple[str, str, int]], vips: dict[str, str]) -> None:
        _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
        self._bridge_made = True
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        hosts = ["127.0.0.1 localhost"]
        for app, vip in sorted(vips.items()):
            hosts.append(f"{vip} {app} {app}.{NAMESPACE} {app}.{NAMESPACE}.svc {app}.{NAMESPACE}.svc.cluster.local")
        etc = Path("/etc/netns")
        if not etc.exists():
            etc.mkdir(mode=0o755)
            self._made_etc_netns = True
        for i, (name, (app, version, last)) in enumerate(pods.items()):
            ns = f"mgm{self.tag}-{name}"
            pod = Pod(self, name, app, version, self.pod_ip(last), ns)
            self.pods[name] = pod
            d = etc / ns
            d.mkdir(exist_ok=True)
            self._netns_dirs.append(d)
            (d / "hosts").write_text("\n".join(hosts + [f"{pod.ip} {name}"]) + "\n")
            _run("ip", "netns", "add", ns)
            host_end = f"mgv{self.tag}{i}"
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", host_end, "master", self.bridge, "up")
            pod.sh("ip", "link", "set", "lo", "up")
            pod.sh("ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            pod.sh("ip", "link", "set", "eth0", "up")
            pod.sh("ip", "route", "add", "default", "via", self.gateway)

    def capture(self) -> None:
        """istio-init in every pod (in parallel: each is a Python start-up)."""
        procs = [(p, subprocess.Popen(p.iptables_cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                 for p in self.pods.values()]
        errors = []
        for pod, proc in procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                errors.append(f"{pod.name}: meshgate iptables -> {proc.returncode}: {err.strip()}")
        assert not errors, errors

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            last = cond()
            if last:
                return last
            for pod in self.pods.values():
                for w, p in pod.procs.items():
                    if p.poll() is not None:
                        raise AssertionError(f"{pod.name} {w} exited with {p.returncode}:\n{pod.log_tail(w)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s\n{self.diagnostics()}")
            time.sleep(0.2)

    def diagnostics(self) -> str:
        out = []
        for pod in self.pods.values():
            out.append(f"--- {pod.name} ({pod.ip}) sidecar log:\n{pod.log_tail('sidecar', 1500)}")
            out.append(f"--- {pod.name} app log:\n{pod.log_tail('app', 600)}")
        return "\n".join(out)

    def close(self) -> None:
        errors = []
        for pod in self.pods.values():   # SIGTERM everything first: the sidecars drain in parallel
            for p in pod.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        for pod in self.pods.values():
            try:
                pod.stop()
            except Exception as e:  # keep cleaning up
                errors.append(f"{pod.name}: {e}")
        for pod in self.pods.values():
            _run("ip", "netns", "del", pod.ns, check=False)
        if self._bridge_made:
            _run("ip", "link", "del", self.bridge, check=False)
        for d in self._netns_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if self._made_etc_netns:
            try:
                Path("/etc/netns").rmdir()
            except OSError:
                pass
        assert not errors, errors
