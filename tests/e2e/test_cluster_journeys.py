"""The seeds' journeys for real (issue 12): a one-machine Kubernetes whose pods are real containers
(deploy/cluster/cluster.py), Istio's own charts and injector with Meshgate as every sidecar
(deploy/istio/values-meshgate.yaml), Meshgate's Helm chart as the gateway with its ingress and mesh
controllers, the Bookinfo-like services as pods; everything applied with kubectl and helm as the
seeds do, every request made from the host as a user would.

Order matters (one cluster for the module; the last test tears it down and compares the machine
with what it was before).  Skipped, with the reason, when this machine cannot run the cluster
(not root, or the peers of tools/peers-e2e.sh missing).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import bookinfopage
from bookinfopage import Page

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "cluster"))
import cluster as C  # noqa: E402  (deploy/cluster/cluster.py)

sys.path.pop(0)

pytestmark = pytest.mark.timeout(900)

HOST = "apisix-istio.dev"
NETWORKING = C.peers_dir() / f"istiod-{C.ISTIOD_VERSION}" / "bookinfo" / "networking"


@pytest.fixture(scope="module")
def machine() -> Iterator[dict[str, Any]]:
    """The machine's state before the cluster (compared by the last test)."""
    miss = C.missing_prerequisites(istio=True)
    if miss:
        pytest.skip("the one-machine cluster cannot run here: " + "; ".join(miss))
    C.down(quiet=True)       # a killed earlier run
    before = C.snapshot()
    t0 = time.monotonic()
    try:
        C.up(istio=True)
    except C.ClusterError:
        C.down(quiet=True)
        raise
    print(f"\ncluster + images + istio up in {time.monotonic() - t0:.1f} s")
    yield before
    C.down(quiet=True)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    return C.kubectl(*args, input=input, check=check).stdout


@functools.cache
def gateway() -> tuple[str, int]:
    """NODE_IP:NODE_PORT, read once with kubectl as the seed does (not twice per request)."""
    return C.gateway_address()


def get(path: str, *, host: str | None = HOST, user: str | None = None, method: str = "GET",
        timeout: float = 15.0) -> tuple[int, dict[str, str], bytes, float]:
    ip, port = gateway()
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if host:
            headers["Host"] = host
        if user:
            headers["Cookie"] = f"user={user}"
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body, time.monotonic() - t0
    finally:
        conn.close()


def page(user: str | None = None) -> Page:
    try:
        status, _, body, took = get("/productpage", user=user)
        return Page(status, took, body.decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException) as e:
        return Page(0, 0.0, error=f"{type(e).__name__}: {e}")


def pages(n: int, user: str | None = None) -> list[Page]:
    return bookinfopage.pages(page, n, user)


def wait_pages(cond: Callable[[Page], bool], what: str, *, user: str | None = None, consecutive: int = 5,
               timeout: float = 60.0) -> float:
    return bookinfopage.wait_pages(page, cond, what, user=user, consecutive=consecutive, timeout=timeout,
                                   diagnostics=lambda: kubectl("get", "pods", "-A", "-o", "wide", check=False))


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except (OSError, http.client.HTTPException, C.ClusterError) as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def pod_json(namespace: str, selector: str) -> dict[str, Any]:
    items = json.loads(kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json"))["items"]
    assert len(items) == 1, [i["metadata"]["name"] for i in items]
    return dict(items[0])


def sidecar_admin(namespace: str, selector: str, path: str) -> Any:
    """GET the sidecar's admin port (127.0.0.1:15000 inside the pod) through `kubectl exec`."""
    name = pod_json(namespace, selector)["metadata"]["name"]
    code = f"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:15000{path}').read().decode())"
    out = kubectl("-n", namespace, "exec", name, "-c", "istio-proxy", "--", "python3", "-c", code)
    return json.loads(out)


# ------------------------------------------------------------------------------ seed 000
def test_seed000_gateway_in_the_mesh_answers_404_without_a_route(machine: dict[str, Any]) -> None:
    """helm install of Meshgate's chart as the seed installs APISIX's (NodePort, ingress
    controller on) into an injected namespace: every pod gets Meshgate as its sidecar, and the
    gateway answers APISIX's 404 through it."""
    t0 = time.monotonic()
    C.install_gateway()
    C.wait_pods_ready(C.GATEWAY_NS)
    print(f"\ngateway chart installed and Ready in {time.monotonic() - t0:.1f} s")
    gw = pod_json(C.GATEWAY_NS, "app.kubernetes.io/component=gateway")
    containers = {c["name"]: c for c in gw["spec"]["containers"]}
    assert set(containers) == {"gateway", "istio-proxy"}, list(containers)
    assert containers["istio-proxy"]["image"] == "localhost/meshgate:local"
    assert [c["name"] for c in gw["spec"]["initContainers"]] == ["istio-init"]
    status, headers, body, _ = wait_until(lambda: (r := get("/", host=None))[0] == 404 and r, 60, "404 from the gateway")
    assert body == b'{"error_msg":"404 Route Not Found"}\n', body
    # as in the seed: the gateway's sidecar answers for it (Envoy's server name, as Istio's sidecar)
    assert headers["server"] == "istio-envoy", headers


def test_seed000_productpage_through_the_seed_apisixroute(machine: dict[str, Any]) -> None:
    """Bookinfo-like services in `bookinfo` with injection; the seed's v2beta2 ApisixRoute applied
    unchanged; `curl -I -H "Host: apisix-istio.dev"` answers 200 and /productpage renders reviews."""
    t0 = time.monotonic()
    C.injected_namespace("bookinfo")
    kubectl("-n", "bookinfo", "apply", "-f", str(REPO / "deploy" / "bookinfo" / "bookinfo.yaml"))
    C.wait_pods_ready("bookinfo")
    print(f"\nbookinfo Ready in {time.monotonic() - t0:.1f} s")
    for p in json.loads(kubectl("-n", "bookinfo", "get", "pods", "-o", "json"))["items"]:
        names = [c["name"] for c in p["spec"]["containers"]]
        assert "istio-proxy" in names, (p["metadata"]["name"], names)
    kubectl("-n", "bookinfo", "apply", "-f", str(REPO / "deploy" / "bookinfo" / "productpage-ar.yaml"))
    status, headers, body, _ = wait_until(lambda: (r := get("/", method="HEAD"))[0] == 200 and r, 60,
                                          "HEAD / with Host apisix-istio.dev")
    assert headers["content-type"].startswith("text/html"), headers
    wait_pages(lambda p: p.ok, "productpage renders reviews")
    versions = Counter(p.version for p in pages(30))
    print(f"no traffic rules: 30 pages -> {dict(versions)}")
    assert set(versions) == {"v1", "v2", "v3"}, versions
    # no route for another host
    status, _, body, _ = get("/", host="other.example")
    assert (status, body) == (404, b'{"error_msg":"404 Route Not Found"}\n')


# ------------------------------------------------------------------------------ seed 003
def apply_networking(*names: str) -> None:
    for n in names:
        kubectl("-n", "bookinfo", "apply", "-f", str(NETWORKING / n))


def delete_networking(*names: str) -> None:
    for n in names:
        kubectl("-n", "bookinfo", "delete", "--ignore-not-found", "-f", str(NETWORKING / n))


def test_seed003_virtual_services_steer_reviews(machine: dict[str, Any]) -> None:
    apply_networking("destination-rule-all.yaml", "virtual-service-all-v1.yaml")
    wait_pages(lambda p: p.version == "v1", "all-v1", consecutive=8)
    assert Counter(p.version for p in pages(20)) == {"v1": 20}

    apply_networking("virtual-service-reviews-v2-v3.yaml")
    wait_pages(lambda p: p.version in ("v2", "v3"), "reviews v2/v3", consecutive=8)
    got = Counter(p.version for p in pages(60))
    print(f"\nreviews v2/v3 50/50: 60 pages -> {dict(got)}")
    assert set(got) == {"v2", "v3"}, got
    assert 0.3 <= got["v2"] / 60 <= 0.7, got      # 50/50 by weight (3 sigma over 60 draws)

    apply_networking("virtual-service-reviews-test-v2.yaml")
    wait_pages(lambda p: p.version == "v2", "jason -> v2", user="jason", consecutive=5)
    wait_pages(lambda p: p.version == "v1", "others -> v1", consecutive=5)
    assert all(p.version == "v2" and p.stars == "black" for p in pages(5, user="jason"))

    apply_networking("virtual-service-ratings-test-abort.yaml")
    wait_pages(lambda p: p.version == "v2" and p.ratings_unavailable, "ratings abort for jason", user="jason")
    assert all(p.version == "v1" for p in pages(5))
    delete_networking("virtual-service-ratings-test-abort.yaml")
    wait_pages(lambda p: p.version == "v2" and p.stars == "black", "ratings back for jason", user="jason")


def test_seed003_config_dump_shows_what_each_sidecar_holds(machine: dict[str, Any]) -> None:
    dump = sidecar_admin("bookinfo", "app=productpage", "/config_dump")
    text = json.dumps(dump)
    # the reviews subsets of destination-rule-all, as Istio names the clusters
    for subset in ("v1", "v2", "v3"):
        assert f"outbound|9080|{subset}|reviews.bookinfo.svc.cluster.local" in text
    # the gateway's own sidecar knows productpage (it routes the gateway's upstream calls)
    gw = json.dumps(sidecar_admin(C.GATEWAY_NS, "app.kubernetes.io/component=gateway", "/config_dump"))
    assert "productpage.bookinfo.svc.cluster.local" in gw


def _ampc(name: str, app: str, plugins: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "apisix.apache.org/v1alpha1", "kind": "AmeshPluginConfig",
                       "metadata": {"name": name, "namespace": "bookinfo"},
                       "spec": {"selector": {"matchLabels": {"app": app}}, "plugins": plugins}})


def test_seed003_amesh_plugin_config_changes_exactly_the_selected_workloads(machine: dict[str, Any]) -> None:
    apply_networking("virtual-service-reviews-test-v2.yaml")
    wait_pages(lambda p: p.version == "v2" and p.stars == "black", "jason -> v2 with ratings", user="jason")
    kubectl("apply", "-f", "-", input=_ampc("ratings-down", "ratings", [
        {"name": "fault-injection", "type": "", "config": '{"abort":{"http_status":503,"body":"amesh"}}'}]))
    wait_pages(lambda p: p.version == "v2" and p.ratings_unavailable, "ratings aborted by its sidecar's plugin",
               user="jason")
    assert sidecar_admin("bookinfo", "app=ratings", "/plugins")["plugins"] == {
        "fault-injection": {"abort": {"http_status": 503, "body": "amesh"}}}
    assert sidecar_admin("bookinfo", "app=reviews,version=v2", "/plugins")["plugins"] == {}
    kubectl("-n", "bookinfo", "delete", "ameshpluginconfig", "ratings-down")
    wait_pages(lambda p: p.version == "v2" and p.stars == "black", "ratings back once deleted", user="jason")


# ------------------------------------------------------------------------------ the machine's edges
def test_nothing_is_pulled_and_only_cluster_names_resolve(machine: dict[str, Any]) -> None:
    """An image the node does not have is never fetched (every registry is a dead loopback port),
    and pods resolve the cluster's names only (CoreDNS has no `forward`)."""
    kubectl("-n", "default", "run", "pull-probe", "--image=docker.io/library/busybox:1.36",
            "--image-pull-policy=IfNotPresent", "--restart=Never", "--", "true")
    try:
        def waiting() -> Any:
            st = json.loads(kubectl("-n", "default", "get", "pod", "pull-probe", "-o", "json"))["status"]
            w = ((st.get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting") or {}
            return w if w.get("reason") in ("ErrImagePull", "ImagePullBackOff") and w.get("message") else None
        w = wait_until(waiting, 60, "the pull to fail")
        assert "127.0.0.1:9" in w["message"], w
    finally:
        kubectl("-n", "default", "delete", "pod", "pull-probe", "--wait=false", check=False)
    name = pod_json("bookinfo", "app=productpage")["metadata"]["name"]
    code = ("import socket\nfor n in ('reviews.bookinfo.svc.cluster.local', 'kubernetes.default', 'example.com'):\n"
            "    try: print(n, socket.gethostbyname(n))\n"
            "    except OSError as e: print(n, 'unresolved')")
    out = dict(ln.split() for ln in kubectl("-n", "bookinfo", "exec", name, "-c", "istio-proxy", "--",
                                            "python3", "-c", code).splitlines())
    assert out["reviews.bookinfo.svc.cluster.local"].startswith("10.96."), out
    assert out["kubernetes.default"] == C.KUBERNETES_SVC_IP, out
    assert out["example.com"] == "unresolved", out


# ------------------------------------------------------------------------------ failures
def _sidecar_pid(pod: dict[str, Any]) -> int:
    """The host PID of the pod's `meshgate mesh` (its sidecar), found by its environment."""
    name = pod["metadata"]["name"]
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if b"mesh" not in cmd:
                continue
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"POD_NAME={name}".encode() in env and any(c.endswith(b"meshgate") for c in cmd[:3]):
            return int(d.name)
    raise AssertionError(f"no sidecar process for {name}")


def test_killed_sidecar_is_restarted_and_gets_its_config_back(machine: dict[str, Any]) -> None:
    pod = pod_json("bookinfo", "app=reviews,version=v2")
    before = {s["name"]: s["restartCount"] for s in pod["status"]["containerStatuses"]}
    os.kill(_sidecar_pid(pod), signal.SIGKILL)
    wait_until(lambda: {s["name"]: s["restartCount"] for s in pod_json("bookinfo", "app=reviews,version=v2")[
        "status"]["containerStatuses"]}["istio-proxy"] > before["istio-proxy"], 60, "istio-proxy restarted")
    C.wait_pods_ready("bookinfo")
    wait_pages(lambda p: p.version == "v2" and p.stars == "black", "jason -> v2 after the sidecar restart",
               user="jason")


def test_istiod_stopped_traffic_continues_on_the_last_config(machine: dict[str, Any]) -> None:
    C.set_paused("istiod", True)
    try:
        assert C.status()["components"]["istiod"]["alive"] is False
        got = [page("jason") for _ in range(10)] + [page() for _ in range(10)]
        assert all(p.version == "v2" for p in got[:10]) and all(p.version == "v1" for p in got[10:]), \
            [(p.status, p.version) for p in got]
    finally:
        C.set_paused("istiod", False)
    delete_networking("virtual-service-reviews-test-v2.yaml", "virtual-service-reviews-v2-v3.yaml")
    apply_networking("virtual-service-all-v1.yaml")
    wait_pages(lambda p: p.version == "v1", "istiod back: config changes flow again", user="jason")


def test_a_component_that_exits_is_restarted(machine: dict[str, Any]) -> None:
    """Every daemon is watched: kube-proxy, for one, exits when the node's IPs change; the
    cluster's supervisor starts it again and Services keep answering."""
    before = C.status()["components"]["kube-proxy"]
    os.kill(int(before["pid"]), signal.SIGKILL)
    wait_until(lambda: (c := C.status()["components"]["kube-proxy"])["restarts"] > before["restarts"]
               and c["alive"] and c["pid"] != before["pid"], 30, "kube-proxy restarted")
    wait_pages(lambda p: p.version == "v1", "pages after kube-proxy's restart")


def test_teardown_leaves_the_machine_as_it_found_it(machine: dict[str, Any]) -> None:
    t0 = time.monotonic()
    C.down()
    print(f"\nteardown in {time.monotonic() - t0:.1f} s")
    after = C.snapshot()
    diff = {k: (machine[k], after[k]) for k in machine if machine[k] != after[k]}
    assert not diff, json.dumps(diff, indent=1)[:4000]
