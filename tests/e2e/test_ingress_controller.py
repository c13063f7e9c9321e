"""`meshgate ingress-controller` end to end, as a user runs it.

A real kube-apiserver 1.37 (+ etcd) with deploy/crds/, a real Meshgate gateway (role
``traditional`` backed by a real etcd, Admin API on loopback) and the controller as a subprocess
(``meshgate ingress-controller --kubeconfig ... --admin-url ...``).  Backends are HTTP servers in
a network namespace the test creates (1.37 refuses loopback addresses in EndpointSlices): a veth
pair, 10.24x.N.1 on the host side, 10.24x.N.2/.3 inside; the test creates the Services and
EndpointSlices itself (there is no controller manager).

Every wait is bounded; processes, network namespace and Kubernetes namespaces go in finally.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from etcdpeer import EtcdCluster  # noqa: E402
from gwtools import Gateway, start_gateway  # noqa: E402
from kubepeer import KubeAPIServer, die_with_parent, free_port, stop_process  # noqa: E402

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
PEERS = Path(os.environ.get("MESHGATE_PEERS") or Path.home() / ".cache" / "meshgate" / "peers")
GATEWAY_API_CRDS = PEERS / "gateway-api-v1.6.3" / "standard"    # tools/peers-e2e/gateway-api.sh
GWAPI = "gateway.networking.k8s.io/v1"
V2 = "apisix.apache.org/v2"
KEY = "5b1f0e2d9c8a4b7e8f6a5d4c3b2a1908"
NS = "ic-e2e"
BOOKINFO = "bookinfo"
PY = sys.executable

SERVER = r"""
import http.server, json, sys
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"backend": name, "path": self.path, "host": self.headers.get("Host"),
                           "x_gw": self.headers.get("X-Gw")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((host, port), H).serve_forever()
"""

PRODUCTPAGE_V2BETA2 = (Path(__file__).resolve().parents[1] / "fixtures" / "k8s" / "seed-productpage-ar.yaml").read_text()


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except (OSError, http.client.HTTPException) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Backends:
    """One network namespace with a veth to the host; HTTP servers on addresses inside it."""

    ns: str
    host_if: str
    prefix: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def addr(self, last: int) -> str:
        return f"{self.prefix}.{last}"

    def serve(self, name: str, last: int, port: int = 8080) -> None:
        _run("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.addr(last)}/24", "dev", "eth0")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, PY, "-c", SERVER, name, self.addr(last), str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.procs.append(p)

    def bookinfo(self, service: str, last: int, *, version: str = "v1", peers: dict[str, int] | None = None) -> None:
        """One of the Bookinfo-like demo services on ``addr(last)``:9080, calling its peers at
        ``addr(peer)``:9080."""
        _run("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.addr(last)}/24", "dev", "eth0")
        args = [a for name, n in (peers or {}).items() for a in ("--peer", f"{name}=http://{self.addr(n)}:9080")]
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, PY, "-m", "meshgate.demo", "--service", service,
                              "--version", version, "--host", self.addr(last), "--port", "9080", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.procs.append(p)

    def close(self) -> None:
        for p in self.procs:
            stop_process(p, 2)
        _run("ip", "link", "del", self.host_if, check=False)
        _run("ip", "netns", "del", self.ns, check=False)


def make_backends() -> Backends:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespace for non-loopback backend addresses)")
    tag = f"{os.getpid() % 100000}"
    used = _run("ip", "-4", "addr").stdout
    octet = next((n for n in range(10, 250) if f"10.246.{n}." not in used), None)
    assert octet is not None, "no free 10.246.N.0/24"
    b = Backends(f"mgic{tag}", f"mgich{tag}", f"10.246.{octet}")
    try:
        _run("ip", "netns", "add", b.ns)
        _run("ip", "link", "add", b.host_if, "type", "veth", "peer", "name", "eth0", "netns", b.ns)
        _run("ip", "addr", "add", f"{b.prefix}.1/24", "dev", b.host_if)
        _run("ip", "link", "set", b.host_if, "up")
        _run("ip", "netns", "exec", b.ns, "ip", "link", "set", "lo", "up")
        _run("ip", "netns", "exec", b.ns, "ip", "link", "set", "eth0", "up")
    except BaseException:
        b.close()
        raise
    return b


@dataclass
class World:
    kube: KubeAPIServer
    gw: Gateway
    admin_port: int
    backends: Backends
    tmp: Path
    etcd_urls: list[str] = field(default_factory=list)
    controllers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- the controller, as a user runs it
    def start_controller(self, *extra: str, name: str = "ic", to: list[str] | None = None) -> subprocess.Popen[bytes]:
        logf = open(self.tmp / f"{name}.log", "ab")
        target = to if to is not None else ["--admin-url", f"http://127.0.0.1:{self.admin_port}", "--admin-key", KEY]
        p = subprocess.Popen(
            [PY, "-m", "meshgate", "--log-level", "INFO", "ingress-controller", "--kubeconfig", str(self.kube.kubeconfig),
             *target, "--watch-namespace", NS, "--watch-namespace", BOOKINFO, "--resync-period", "3s", *extra],
            stdout=logf, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.controllers.append(p)
        return p

    def log(self, name: str = "ic") -> str:
        p = self.tmp / f"{name}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    # -- the gateway
    def get(self, host: str, path: str) -> tuple[int, Any]:
        c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=5)
        try:
            c.request("GET", path, headers={"Host": host})
            r = c.getresponse()
            body = r.read()
            try:
                return r.status, json.loads(body)
            except ValueError:
                return r.status, body
        finally:
            c.close()

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            c.request(method, "/apisix/admin/" + path, body=None if body is None else json.dumps(body),
                      headers={"X-API-KEY": KEY, "Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            return r.status, json.loads(data) if data else None
        finally:
            c.close()

    def owned(self, kind: str = "routes") -> list[dict[str, Any]]:
        st, data = self.admin("GET", kind)
        assert st == 200, data
        return [e["value"] for e in data.get("list") or ()
                if (e["value"].get("labels") or {}).get("manager-by") == "apisix-ingress-controller"]

    def backends_seen(self, host: str, path: str, n: int = 12) -> set[str]:
        seen = set()
        for _ in range(n):
            st, body = self.get(host, path)
            if st == 200 and isinstance(body, dict):
                seen.add(body["backend"])
        return seen

    # -- Kubernetes objects
    def service(self, ns: str, name: str, port: int, target: int = 8080, port_name: str = "http") -> None:
        self.kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                         "spec": {"ports": [{"name": port_name, "port": port, "targetPort": target}]}})

    def slice(self, ns: str, service: str, addrs: list[str], port: int = 8080, port_name: str = "http") -> None:
        self.kube.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"name": f"{service}-abc", "namespace": ns,
                                      "labels": {"kubernetes.io/service-name": service}},
                         "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
                         "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs]})

    def route(self, name: str, *, host: str, paths: list[str], service: str, port: int | str,
              ns: str = NS) -> None:
        self.kube.apply({"apiVersion": V2, "kind": "ApisixRoute", "metadata": {"name": name, "namespace": ns},
                         "spec": {"http": [{"name": "r1", "match": {"hosts": [host], "paths": paths},
                                            "backends": [{"serviceName": service, "servicePort": port}]}]}})

    def accepted(self, name: str, ns: str = NS) -> dict[str, Any] | None:
        obj = self.kube.get(V2, "ApisixRoute", name, ns)
        for c in ((obj or {}).get("status") or {}).get("conditions") or ():
            if c.get("type") == "Accepted":
                return dict(c, generation=obj["metadata"]["generation"])  # type: ignore[index]
        return None


@pytest.fixture(scope="module")
def world(kube: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("ic")
    kube.apply_crds("\n---\n".join(p.read_text() for p in sorted(CRD_DIR.glob("*.yaml"))))
    if GATEWAY_API_CRDS.is_dir():    # before any controller starts: it watches what the apiserver serves
        kube.apply_crds("\n---\n".join(p.read_text() for p in sorted(GATEWAY_API_CRDS.glob("*.yaml"))))
    for ns in (NS, BOOKINFO):
        kube.ensure_namespace(ns)
    backends = make_backends()
    etcd: EtcdCluster | None = None
    gw: Gateway | None = None
    w: World | None = None
    try:
        etcd = EtcdCluster.start(tmp / "etcd")
        admin_port = free_port()
        gw = start_gateway(tmp / "gw", {"routes": []}, node={"deployment": {
            "role": "traditional", "role_traditional": {"config_provider": "etcd"},
            "etcd": {"host": etcd.urls, "prefix": "/apisix", "resync_delay": 1},
            "admin": {"admin_key": [{"name": "admin", "key": KEY, "role": "admin"}],
                      "admin_listen": {"ip": "127.0.0.1", "port": admin_port}}}})
        backends.serve("web-a", 2)
        backends.serve("web-b", 3)
        backends.serve("productpage", 4)
        w = World(kube, gw, admin_port, backends, tmp, etcd_urls=list(etcd.urls))
        yield w
    finally:
        for p in (w.controllers if w else []):
            stop_process(p, 10)
        if gw is not None:
            try:
                gw.stop()
            except AssertionError:
                pass
        if etcd is not None:
            etcd.stop()
        backends.close()
        for ns in (NS, BOOKINFO):
            kube.delete("v1", "Namespace", ns)


def test_route_endpoints_change_delete_and_invalid(world: World) -> None:
    """ApisixRoute → traffic reaches the backend; a second address in the EndpointSlice → both
    backends serve; path/host change → new behaviour; an invalid route (unknown Service port) →
    Accepted=False InvalidSpec while a valid one beside it syncs; delete → 404."""
    w = world
    a, b = w.backends.addr(2), w.backends.addr(3)
    w.service(NS, "web", 80)
    w.slice(NS, "web", [a])
    ctl = w.start_controller()
    w.route("web", host="web.example", paths=["/app/*"], service="web", port=80)

    wait_for(lambda: w.get("web.example", "/app/x")[0] == 200, "the route to serve", 30)
    st, body = w.get("web.example", "/app/x")
    assert body["backend"] == "web-a" and body["path"] == "/app/x", body
    cond = wait_for(lambda: (c := w.accepted("web")) and c["status"] == "True" and c, "Accepted=True")
    assert cond["reason"] == "Accepted" and cond["observedGeneration"] == cond["generation"], cond
    ltt = cond["lastTransitionTime"]

    # scale: a second address in the slice -> both nodes serve
    w.slice(NS, "web", [a, b])
    wait_for(lambda: w.backends_seen("web.example", "/app/x") == {"web-a", "web-b"}, "both backends", 30)
    routes, ups = w.owned(), {u["id"]: u for u in w.owned("upstreams")}
    assert len(routes) == 1 and len(ups[routes[0]["upstream_id"]]["nodes"]) == 2, (routes, ups)
    assert ups[routes[0]["upstream_id"]]["labels"]["k8s/kind"] == "Service"   # the Service's shared upstream

    # change path and host
    w.route("web", host="new.example", paths=["/v2/*"], service="web", port=80)
    wait_for(lambda: w.get("new.example", "/v2/y")[0] == 200, "the new host/path", 30)
    wait_for(lambda: w.get("web.example", "/app/x")[0] == 404, "the old host/path to go", 30)
    cond = wait_for(lambda: (c := w.accepted("web")) and c["observedGeneration"] == c["generation"] == 2 and c,
                    "observedGeneration 2")
    assert cond["status"] == "True" and cond["lastTransitionTime"] == ltt, "no flip: lastTransitionTime kept"

    # an invalid route beside the valid one
    w.route("broken", host="broken.example", paths=["/*"], service="web", port=9999)
    cond = wait_for(lambda: (c := w.accepted("broken")) and c["status"] == "False" and c, "Accepted=False", 30)
    assert cond["reason"] == "InvalidSpec" and "no port 9999" in cond["message"], cond
    assert "/spec/http/0/backends/0" in cond["message"], cond
    w.route("other", host="other.example", paths=["/*"], service="web", port="http")
    wait_for(lambda: w.get("other.example", "/z")[0] == 200, "the valid route beside the invalid one", 30)
    assert w.get("new.example", "/v2/y")[0] == 200

    # fix the invalid one -> Accepted=True, a flip: lastTransitionTime moves
    w.route("broken", host="broken.example", paths=["/*"], service="web", port=80)
    wait_for(lambda: (c := w.accepted("broken")) and c["status"] == "True", "broken fixed", 30)
    wait_for(lambda: w.get("broken.example", "/")[0] == 200, "fixed route to serve", 30)

    # delete -> 404 and the gateway objects go
    for name in ("web", "broken", "other"):
        w.kube.delete(V2, "ApisixRoute", name, NS)
    wait_for(lambda: w.get("new.example", "/v2/y")[0] == 404, "404 after delete", 30)
    wait_for(lambda: not w.owned(), "no owned routes left", 30)

    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(20) == 0, w.log()


def test_ingress_serves_and_delete_404(world: World) -> None:
    """networking.k8s.io/v1 Ingress (Prefix path, named Service port) → 200 through the
    gateway with the route's owner labels; another class is ignored; delete → 404."""
    w = world
    w.service(NS, "ing-web", 80)
    w.slice(NS, "ing-web", [w.backends.addr(2)])
    ctl = w.start_controller(name="ic-ingress")

    def ingress(name: str, host: str, cls: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"rules": [{"host": host, "http": {"paths": [
            {"path": "/shop", "pathType": "Prefix",
             "backend": {"service": {"name": "ing-web", "port": {"name": "http"}}}}]}}]}
        if cls:
            spec["ingressClassName"] = cls
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": NS}, "spec": spec}

    w.kube.apply(ingress("shop", "shop.example"))
    w.kube.apply(ingress("other-class", "other.example", cls="nginx"))
    wait_for(lambda: w.get("shop.example", "/shop/cart")[0] == 200, "the Ingress to serve", 30)
    st, body = w.get("shop.example", "/shop")
    assert st == 200 and body["backend"] == "web-a", body
    assert w.get("shop.example", "/shopping")[0] == 404, "Prefix is segment-aware"
    assert w.get("other.example", "/shop")[0] == 404, "another ingress class is ignored"
    (r,) = [r for r in w.owned() if r["labels"].get("k8s/kind") == "Ingress"]
    assert r["name"] == f"{NS}_shop_0_0" and r["labels"]["k8s/name"] == "shop", r

    w.kube.delete("networking.k8s.io/v1", "Ingress", "shop", NS)
    w.kube.delete("networking.k8s.io/v1", "Ingress", "other-class", NS)
    wait_for(lambda: w.get("shop.example", "/shop/cart")[0] == 404, "404 after delete", 30)
    wait_for(lambda: not [r for r in w.owned() if r["labels"].get("k8s/kind") == "Ingress"], "routes gone", 30)
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(20) == 0, w.log("ic-ingress")


def test_restart_no_duplicates_orphans_or_drift(world: World) -> None:
    """Restart: the same gateway objects (no duplicate), a route deleted while the controller was
    down is removed (orphan), a manual edit of an owned route is corrected by the resync."""
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    ctl = w.start_controller(name="r1")
    for i in range(3):
        w.route(f"keep{i}", host=f"keep{i}.example", paths=["/*"], service="web", port=80)
    wait_for(lambda: len(w.owned()) == 3, "3 routes", 30)
    before = sorted(r["id"] for r in w.owned())
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(20) == 0, w.log("r1")

    w.kube.delete(V2, "ApisixRoute", "keep2", NS)           # while the controller is down
    st, _ = w.admin("PATCH", f"routes/{before[0]}", {"uris": ["/manual"]})  # a manual edit (drift)
    assert st == 200

    ctl = w.start_controller(name="r2")
    wait_for(lambda: len(w.owned()) == 2, "the orphan removed", 30)
    after = w.owned()
    assert sorted(r["id"] for r in after) == sorted(set(before) - {_route_id("keep2")}), after
    wait_for(lambda: all(r["uris"] == ["/*"] for r in w.owned()), "drift corrected", 30)
    for i in range(2):
        assert w.get(f"keep{i}.example", "/x")[0] == 200
    # a further restart changes nothing on the gateway
    mods = {r["id"]: r.get("update_time") for r in w.owned()}
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(20) == 0, w.log("r2")
    ctl = w.start_controller(name="r3")
    wait_for(lambda: (c := w.accepted("keep0")) and c["status"] == "True", "status", 30)
    time.sleep(4)  # past one resync period (3 s)
    assert {r["id"]: r.get("update_time") for r in w.owned()} == mods, "idempotent: no rewrite"
    for i in range(2):
        w.kube.delete(V2, "ApisixRoute", f"keep{i}", NS)
    wait_for(lambda: not w.owned(), "cleanup", 30)
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(20) == 0, w.log("r3")


def _route_id(name: str, ns: str = NS, rule: str = "r1") -> str:
    return gen_id(f"{ns}_{name}_{rule}")


def gen_id(name: str) -> str:
    """AIC's id: crc32 of the name, lowercase hex (written out: the test states the contract)."""
    import zlib
    return format(zlib.crc32(name.encode()) & 0xFFFFFFFF, "x")


def test_seed_productpage_v2beta2(world: World) -> None:
    """The seed's v2beta2 ApisixRoute applied as is → 200 via the gateway, and the page renders
    reviews (with ratings) through the other Bookinfo-like services."""
    w = world
    b = w.backends
    b.bookinfo("details", 20)
    b.bookinfo("ratings", 21)
    b.bookinfo("reviews", 22, version="v2", peers={"ratings": 21})
    b.bookinfo("productpage", 23, peers={"details": 20, "reviews": 22})
    w.service(BOOKINFO, "productpage", 9080, target=9080, port_name="http")
    w.slice(BOOKINFO, "productpage", [b.addr(23)], port=9080)
    ctl = w.start_controller(name="pp")
    w.kube.apply(PRODUCTPAGE_V2BETA2, namespace=BOOKINFO)
    wait_for(lambda: w.get("apisix-istio.dev", "/productpage")[0] == 200, "productpage via the gateway", 30)
    st, page = w.get("apisix-istio.dev", "/productpage")
    text = page.decode() if isinstance(page, bytes) else str(page)
    assert 'id="reviews-version">Reviews served by reviews-v2<' in text, text[-1500:]
    assert 'class="stars-black"' in text, "reviews-v2 showed the ratings service's stars"
    assert "currently unavailable" not in text, "details, reviews and ratings all answered"
    assert w.get("other.dev", "/productpage")[0] == 404
    cond = wait_for(lambda: (c := w.accepted("productpage", BOOKINFO)) and c, "status", 30)
    assert cond["status"] == "True", cond
    w.kube.delete(V2, "ApisixRoute", "productpage", BOOKINFO)
    wait_for(lambda: w.get("apisix-istio.dev", "/productpage")[0] == 404, "404 after delete", 30)
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(20) == 0, w.log("pp")


def test_dry_run_prints_and_writes_nothing(world: World) -> None:
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    w.route("dry", host="dry.example", paths=["/*"], service="web", port=80)
    try:
        out = subprocess.run(
            [PY, "-m", "meshgate", "ingress-controller", "--kubeconfig", str(w.kube.kubeconfig), "--admin-url",
             f"http://127.0.0.1:{w.admin_port}", "--admin-key", KEY, "--watch-namespace", NS, "--dry-run"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        # the Service's shared upstream, then the route naming it
        assert f"create upstreams/{gen_id(f'Service_{NS}_web_80')} (ApisixRoute {NS}/dry)" in out.stdout, out.stdout
        assert f"create routes/{_route_id('dry')} (ApisixRoute {NS}/dry)" in out.stdout, out.stdout
        assert "2 to create, 0 to update, 0 to delete" in out.stdout, out.stdout
        assert not w.owned() and not w.owned("upstreams") and w.accepted("dry") is None, "dry run wrote nothing"
    finally:
        w.kube.delete(V2, "ApisixRoute", "dry", NS)


def test_leader_election_failover(world: World) -> None:
    """Two controllers with --leader-elect: one holds the Lease; killed without releasing it, the
    other takes over after the lease expires and syncs new objects."""
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    le = ["--leader-elect", "--leader-elect-namespace", NS, "--leader-elect-lease-duration", "3s",
          "--leader-elect-renew-deadline", "2s", "--leader-elect-retry-period", "0.5s"]
    c1 = w.start_controller(*le, "--identity", "one", name="le1")
    lease = wait_for(lambda: (l := w.kube.get("coordination.k8s.io/v1", "Lease", "meshgate-ingress-controller-leader",
                                              NS)) and l["spec"].get("holderIdentity") == "one" and l,
                     "controller one to lead", 30)
    assert lease["spec"]["leaseDurationSeconds"] == 3
    c2 = w.start_controller(*le, "--identity", "two", name="le2")
    w.route("le", host="le.example", paths=["/*"], service="web", port=80)
    wait_for(lambda: w.get("le.example", "/")[0] == 200, "the leader syncs", 30)
    time.sleep(1.5)
    assert "acquired" not in w.log("le2"), "the follower must not lead while the leader renews"
    c1.send_signal(signal.SIGKILL)   # no release: the follower waits for the expiry
    c1.wait(10)
    wait_for(lambda: (l := w.kube.get("coordination.k8s.io/v1", "Lease", "meshgate-ingress-controller-leader",
                                      NS)) and l["spec"].get("holderIdentity") == "two", "failover", 30)
    w.route("le2", host="le2.example", paths=["/*"], service="web", port=80)
    wait_for(lambda: w.get("le2.example", "/")[0] == 200, "the new leader syncs", 30)
    for name in ("le", "le2"):
        w.kube.delete(V2, "ApisixRoute", name, NS)
    wait_for(lambda: not w.owned(), "cleanup", 30)
    c2.send_signal(signal.SIGTERM)
    assert c2.wait(20) == 0, w.log("le2")
    lease = w.kube.get("coordination.k8s.io/v1", "Lease", "meshgate-ingress-controller-leader", NS)
    assert lease is not None and not lease["spec"].get("holderIdentity"), "released on shutdown"


def _kube_etcd_revision(w: World) -> int:
    return int(json.loads(w.kube.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["header"]["revision"])


def _full_log(w: World, name: str) -> str:
    return (w.tmp / f"{name}.log").read_text(errors="replace")


def _cleanup_routes(w: World, names: list[str]) -> None:
    if w.kube.proc is None:
        w.kube.start_apiserver()
    for name in names:
        w.kube.delete(V2, "ApisixRoute", name, NS)
    wait_for(lambda: not w.owned(), "cleanup", 30)


@pytest.mark.timeout(90)
def test_apiserver_restart_keeps_routes_and_watches_recover(world: World) -> None:
    """Issue 9: the kube-apiserver goes away (its etcd stays) → the gateway keeps serving and the
    controller deletes nothing; it comes back on the same port with the same data → the watches
    recover (a new ApisixRoute syncs) and the first route is the same gateway object (create_time)."""
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    ctl = w.start_controller(name="kas-restart")
    try:
        w.route("survive", host="survive.example", paths=["/*"], service="web", port=80)
        wait_for(lambda: w.get("survive.example", "/x")[0] == 200, "the route to serve", 30)
        (r0,) = w.owned()
        w.kube.stop_apiserver()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:   # the controller retries; nothing is deleted
                assert w.get("survive.example", "/x")[0] == 200, w.log("kas-restart")
                assert [(r["id"], r.get("create_time")) for r in w.owned()] == [(r0["id"], r0.get("create_time"))]
                time.sleep(0.5)
            assert ctl.poll() is None, w.log("kas-restart")
        finally:
            w.kube.start_apiserver()
        w.route("after", host="after.example", paths=["/*"], service="web", port=80)
        wait_for(lambda: w.get("after.example", "/y")[0] == 200, "a route created after the restart", 40)
        wait_for(lambda: (c := w.accepted("after")) and c["status"] == "True", "Accepted=True after restart", 10)
        assert w.get("survive.example", "/x")[0] == 200
        by_id = {r["id"]: r for r in w.owned()}
        assert set(by_id) == {r0["id"], _route_id("after")}, by_id
        assert by_id[r0["id"]].get("create_time") == r0.get("create_time"), "not deleted and re-created"
        assert "ConnectError" in _full_log(w, "kas-restart"), "the controller saw the apiserver go away"
        _cleanup_routes(w, ["survive", "after"])
        ctl.send_signal(signal.SIGTERM)
        assert ctl.wait(20) == 0, w.log("kas-restart")
    finally:
        if w.kube.proc is None:
            w.kube.start_apiserver()
        stop_process(ctl, 10)


@pytest.mark.timeout(90)
def test_watch_expired_410_relists_keeps_routes_applies_changes(world: World) -> None:
    """Issue 9: while the controller is frozen (SIGSTOP) the apiserver restarts (its watches are
    cut and must reconnect), one route is changed, one created and one deleted, and the apiserver's
    etcd is compacted past the controller's resourceVersion → on SIGCONT: 410 Gone → relist, the
    untouched route stays the same gateway object, and all three changes are applied."""
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    ctl = w.start_controller(name="kas-410")
    names = ["keep410", "mod410", "del410", "new410"]
    try:
        for name in ("keep410", "mod410", "del410"):
            w.route(name, host=f"{name}.example", paths=["/*"], service="web", port=80)
        for name in ("keep410", "mod410", "del410"):
            wait_for(lambda: w.get(f"{name}.example", "/")[0] == 200, f"{name} to serve", 30)
        keep = {r["id"]: r.get("create_time") for r in w.owned()}[_route_id("keep410")]
        ctl.send_signal(signal.SIGSTOP)
        try:
            # break the watches first: events sent on the old streams would sit in the frozen
            # controller's socket buffers and be applied without any relist
            w.kube.stop_apiserver()
            w.kube.start_apiserver()
            w.route("mod410", host="mod410b.example", paths=["/*"], service="web", port=80)
            w.route("new410", host="new410.example", paths=["/*"], service="web", port=80)
            w.kube.delete(V2, "ApisixRoute", "del410", NS)
            w.kube.etcdctl("compact", str(_kube_etcd_revision(w)), "--physical")
        finally:
            ctl.send_signal(signal.SIGCONT)
        wait_for(lambda: re.search(rf"Informer\(apisixroutes, {NS}\): resourceVersion \d+ expired \(410 Gone\): relisting",
                                  _full_log(w, "kas-410")), "the controller to get 410 Gone", 30)
        wait_for(lambda: w.get("new410.example", "/")[0] == 200, "the route created meanwhile", 30)
        wait_for(lambda: w.get("mod410b.example", "/")[0] == 200, "the route changed meanwhile", 30)
        wait_for(lambda: w.get("del410.example", "/")[0] == 404, "the route deleted meanwhile", 30)
        assert w.get("mod410.example", "/")[0] == 404
        assert w.get("keep410.example", "/")[0] == 200
        by_id = {r["id"]: r for r in w.owned()}
        assert set(by_id) == {_route_id(n) for n in ("keep410", "mod410", "new410")}, by_id
        assert by_id[_route_id("keep410")].get("create_time") == keep, "not deleted and re-created"
        _cleanup_routes(w, names)
        ctl.send_signal(signal.SIGTERM)
        assert ctl.wait(20) == 0, w.log("kas-410")
    finally:
        if ctl.poll() is None:
            ctl.send_signal(signal.SIGCONT)
        if w.kube.proc is None:
            w.kube.start_apiserver()
        stop_process(ctl, 10)


def _gw_status(w: World, kind: str, name: str, ns: str | None = NS) -> dict[str, Any]:
    obj = w.kube.get(GWAPI, kind, name, ns) or {}
    return obj.get("status") or {}


def _parent_conditions(w: World, route: str) -> dict[str, dict[str, Any]]:
    parents = _gw_status(w, "HTTPRoute", route).get("parents") or []
    ours = [p for p in parents if p.get("controllerName") == "apisix.apache.org/apisix-ingress-controller"]
    return {c["type"]: c for c in (ours[0]["conditions"] if ours else [])}


def test_gateway_api_httproute(world: World) -> None:
    """Gateway API as a user writes it: a GatewayClass naming our controller, a Gateway, and
    HTTPRoutes → weighted backends, header and redirect filters, element-wise prefixes, hostname
    intersection; statuses of all three kinds; a missing backend → ResolvedRefs=False and 500; a
    cross-namespace backend refused until a ReferenceGrant allows it; delete → 404, nothing left."""
    if not GATEWAY_API_CRDS.is_dir():
        pytest.skip(f"Gateway API CRDs not cached in {GATEWAY_API_CRDS} (tools/peers-e2e/gateway-api.sh)")
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    w.service(NS, "web2", 80)
    w.slice(NS, "web2", [w.backends.addr(3)])
    w.service(BOOKINFO, "productpage", 9080)
    w.slice(BOOKINFO, "productpage", [w.backends.addr(4)])
    w.kube.apply({"apiVersion": GWAPI, "kind": "GatewayClass", "metadata": {"name": "meshgate"},
                  "spec": {"controllerName": "apisix.apache.org/apisix-ingress-controller"}})
    w.kube.apply({"apiVersion": GWAPI, "kind": "Gateway", "metadata": {"name": "edge", "namespace": NS},
                  "spec": {"gatewayClassName": "meshgate", "listeners": [
                      {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "*.gw.example"}]}})
    parent = [{"name": "edge"}]
    w.kube.apply({"apiVersion": GWAPI, "kind": "HTTPRoute", "metadata": {"name": "app", "namespace": NS},
                  "spec": {"parentRefs": parent, "hostnames": ["app.gw.example", "app.elsewhere.example"],
                           "rules": [
                               {"matches": [{"path": {"type": "PathPrefix", "value": "/app"}}],
                                "filters": [{"type": "RequestHeaderModifier",
                                             "requestHeaderModifier": {"set": [{"name": "X-Gw", "value": "yes"}]}}],
                                "backendRefs": [{"name": "web", "port": 80, "weight": 1},
                                                {"name": "web2", "port": 80, "weight": 1}]},
                               {"matches": [{"path": {"type": "Exact", "value": "/old"}}],
                                "filters": [{"type": "RequestRedirect", "requestRedirect": {
                                    "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"},
                                    "statusCode": 301}}]}]}})
    w.kube.apply({"apiVersion": GWAPI, "kind": "HTTPRoute", "metadata": {"name": "broken", "namespace": NS},
                  "spec": {"parentRefs": parent, "hostnames": ["broken.gw.example"],
                           "rules": [{"backendRefs": [{"name": "nope", "port": 80}]}]}})
    w.kube.apply({"apiVersion": GWAPI, "kind": "HTTPRoute", "metadata": {"name": "cross", "namespace": NS},
                  "spec": {"parentRefs": parent, "hostnames": ["cross.gw.example"],
                           "rules": [{"backendRefs": [{"name": "productpage", "namespace": BOOKINFO, "port": 9080}]}]}})
    ctl = w.start_controller(name="gwapi")
    try:
        wait_for(lambda: w.get("app.gw.example", "/app/x")[0] == 200, "the HTTPRoute to serve", 30)
        assert w.backends_seen("app.gw.example", "/app/x", 16) == {"web-a", "web-b"}
        st, body = w.get("app.gw.example", "/app/x")
        assert body["x_gw"] == "yes" and body["path"] == "/app/x", body
        assert w.get("app.gw.example", "/app")[0] == 200
        assert w.get("app.gw.example", "/appx")[0] == 404                   # prefixes match path elements
        assert w.get("app.elsewhere.example", "/app/x")[0] == 404           # not in the listener's *.gw.example
        c = http.client.HTTPConnection("127.0.0.1", w.gw.port, timeout=5)
        c.request("GET", "/old", headers={"Host": "app.gw.example"})
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == 301 and r.getheader("Location", "").endswith("/new"), (r.status, r.getheaders())

        conds = wait_for(lambda: (c := _parent_conditions(w, "app")) and "ResolvedRefs" in c and c,
                         "HTTPRoute status", 30)
        assert conds["Accepted"]["status"] == "True" and conds["ResolvedRefs"]["status"] == "True", conds
        gw = wait_for(lambda: (s := _gw_status(w, "Gateway", "edge")) and s.get("listeners") and s, "Gateway status", 30)
        gconds = {c["type"]: c for c in gw["conditions"]}
        assert gconds["Accepted"]["status"] == "True" and gconds["Programmed"]["status"] == "True", gw
        wait_for(lambda: _gw_status(w, "Gateway", "edge")["listeners"][0]["attachedRoutes"] == 3, "attachedRoutes", 30)
        gc = wait_for(lambda: _gw_status(w, "GatewayClass", "meshgate", None).get("conditions"), "class status", 30)
        assert gc[0]["type"] == "Accepted" and gc[0]["status"] == "True", gc

        # a missing backend: the route answers 500 and says why
        wait_for(lambda: w.get("broken.gw.example", "/")[0] == 500, "500 for the missing backend", 30)
        rr = wait_for(lambda: (c := _parent_conditions(w, "broken")).get("ResolvedRefs") and c["ResolvedRefs"], "why", 30)
        assert rr["status"] == "False" and rr["reason"] == "BackendNotFound" and "nope" in rr["message"], rr

        # another namespace's Service: refused until a ReferenceGrant there allows it
        rr = wait_for(lambda: (c := _parent_conditions(w, "cross")).get("ResolvedRefs") and c["ResolvedRefs"], "why", 30)
        assert rr["status"] == "False" and rr["reason"] == "RefNotPermitted", rr
        assert w.get("cross.gw.example", "/")[0] == 500
        w.kube.apply({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                      "metadata": {"name": "from-ic-e2e", "namespace": BOOKINFO},
                      "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NS}],
                               "to": [{"group": "", "kind": "Service"}]}})
        wait_for(lambda: w.get("cross.gw.example", "/")[0] == 200, "the granted cross-namespace backend", 30)
        assert w.get("cross.gw.example", "/")[1]["backend"] == "productpage"
        wait_for(lambda: _parent_conditions(w, "cross")["ResolvedRefs"]["status"] == "True", "ResolvedRefs=True", 30)

        for name in ("app", "broken", "cross"):
            w.kube.delete(GWAPI, "HTTPRoute", name, NS)
        wait_for(lambda: w.get("app.gw.example", "/app/x")[0] == 404, "404 after delete", 30)
        wait_for(lambda: not w.owned() and not w.owned("upstreams"), "nothing left on the gateway", 30)
        ctl.send_signal(signal.SIGTERM)
        assert ctl.wait(20) == 0, w.log("gwapi")
    finally:
        stop_process(ctl, 10)
        for kind, name, ns in (("HTTPRoute", "app", NS), ("HTTPRoute", "broken", NS), ("HTTPRoute", "cross", NS),
                               ("Gateway", "edge", NS), ("GatewayClass", "meshgate", None)):
            w.kube.delete(GWAPI, kind, name, ns)
        w.kube.delete("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", "from-ic-e2e", BOOKINFO)


def test_apisix_global_rule(world: World) -> None:
    """An ApisixGlobalRule → a global rule on the gateway (every route's responses get its
    plugin), Accepted=True; deleted → gone; a global rule written by hand is never touched."""
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    assert w.admin("PUT", "global_rules/by-hand", {"plugins": {"request-id": {"header_name": "X-Hand"}}})[0] in (200, 201)
    ctl = w.start_controller(name="agr")
    try:
        w.route("plain", host="plain.example", paths=["/*"], service="web", port=80)
        wait_for(lambda: w.get("plain.example", "/")[0] == 200, "the route", 30)
        w.kube.apply({"apiVersion": V2, "kind": "ApisixGlobalRule", "metadata": {"name": "stamp", "namespace": NS},
                      "spec": {"plugins": [{"name": "response-rewrite", "enable": True,
                                            "config": {"headers": {"set": {"X-Global": "on"}}}}]}})

        def header() -> str | None:
            c = http.client.HTTPConnection("127.0.0.1", w.gw.port, timeout=5)
            try:
                c.request("GET", "/", headers={"Host": "plain.example"})
                r = c.getresponse()
                r.read()
                return r.getheader("X-Global")
            finally:
                c.close()
        wait_for(lambda: header() == "on", "the global rule on every route", 30)
        def accepted() -> dict[str, Any] | None:
            o = w.kube.get(V2, "ApisixGlobalRule", "stamp", NS) or {}
            return next((c for c in (o.get("status") or {}).get("conditions") or () if c["type"] == "Accepted"), None)
        cond = wait_for(accepted, "Accepted on the ApisixGlobalRule", 30)
        assert cond["status"] == "True", cond
        w.kube.delete(V2, "ApisixGlobalRule", "stamp", NS)
        wait_for(lambda: header() is None, "the global rule gone", 30)
        assert w.admin("GET", "global_rules/by-hand")[0] == 200
        w.kube.delete(V2, "ApisixRoute", "plain", NS)
        wait_for(lambda: not w.owned(), "cleanup", 30)
    finally:
        stop_process(ctl, 10)
        w.admin("DELETE", "global_rules/by-hand")


def test_sync_straight_to_etcd(world: World) -> None:
    """``--etcd`` instead of ``--admin-url``: the objects go into the gateways' etcd in APISIX's
    layout; the gateway watching it serves them, the Admin API reads them back as its own."""
    w = world
    w.service(NS, "web", 80)
    w.slice(NS, "web", [w.backends.addr(2)])
    ctl = w.start_controller(name="etcd", to=[a for u in w.etcd_urls for a in ("--etcd", u)])
    try:
        w.route("viaetcd", host="etcd.example", paths=["/*"], service="web", port=80)
        wait_for(lambda: w.get("etcd.example", "/e")[0] == 200, "the route written to etcd to serve", 30)
        (r,) = [x for x in w.owned() if x["name"] == f"{NS}_viaetcd_r1"]
        assert r["create_time"] and r["update_time"] and r["upstream_id"]       # as the Admin API shows them
        cond = wait_for(lambda: (c := w.accepted("viaetcd")) and c, "Accepted", 30)
        assert cond["status"] == "True", cond
        w.route("viaetcd", host="etcd2.example", paths=["/*"], service="web", port=80)
        wait_for(lambda: w.get("etcd2.example", "/e")[0] == 200, "the changed route", 30)
        (r2,) = [x for x in w.owned() if x["name"] == f"{NS}_viaetcd_r1"]
        assert r2["create_time"] == r["create_time"], "an update keeps create_time"
        w.kube.delete(V2, "ApisixRoute", "viaetcd", NS)
        wait_for(lambda: not w.owned() and not w.owned("upstreams"), "deleted from etcd", 30)
        assert w.get("etcd2.example", "/e")[0] == 404
    finally:
        stop_process(ctl, 10)
