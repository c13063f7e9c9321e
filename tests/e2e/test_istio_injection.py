"""Istio's own sidecar injector gives pods Meshgate instead of Envoy (deploy/istio/values-meshgate.yaml).

Istio's Helm charts (``base`` and ``istio-discovery``, copied from the istio module by
tools/peers-e2e/istiod.sh) are installed with ``helm install ... -f deploy/istio/values-meshgate.yaml``
into a real kube-apiserver (tests/e2e/kubepeer.py).  A real istiod (pilot-discovery, on the host as
in shared/reference/real-cluster.md section 4: ``REVISION=default``, its own CA, the mesh config and
the injection template read from the chart's ``istio`` and ``istio-sidecar-injector`` ConfigMaps) is
then called on its injection webhook exactly as the apiserver calls it: an ``admission.k8s.io/v1``
AdmissionReview for a Bookinfo ``reviews-v2`` pod (defaulted by the apiserver first), over TLS checked
against istiod's CA.  The JSON patch it returns is applied to the pod and the result checked: the
``istio-init`` init container runs ``meshgate iptables`` with istio-iptables' flags, ``istio-proxy``
runs ``meshgate mesh`` as 1337 with the downward-API identity, the app container is untouched, and the
apiserver accepts the injected pod.  Finally the injected sidecar command line runs as a real process
(environment resolved as the kubelet would, xDS pointed at this istiod) and must become ready.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from istiodpeer import Istiod, istiod_dir
from kubepeer import KubeAPIServer, die_with_parent, free_port, stop_process

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "istio" / "values-meshgate.yaml"
ISTIO_NS = "istio-system"
ISTIOD_HOST = "istiod.istio-system.svc"       # the SAN of istiod's serving certificate
NS = "bookinfo"                               # istio-injection=enabled
PLAIN_NS = "plain"                            # no injection label: the apiserver calls no webhook there
IMAGE = "localhost/meshgate:local"
POD = "reviews-v2-5b9f8c7d4-x7k2p"
POD_IP, HOST_IP = "10.244.0.22", "10.244.0.1"   # what the kubelet would resolve status.podIP / hostIP to
EXCLUDE_OUT = "3306,6379"
# a proxyMetadata entry (meshConfig.defaultConfig.proxyMetadata) the sidecar must get as env; nothing
# listens there, the sidecar only has to try
PLUGINS_ADDRESS = f"127.0.0.1:{free_port()}"


# ---------------------------------------------------------------------------- helm + istiod
def _helm(helm: Path, kube: KubeAPIServer, home: Path, *args: str) -> None:
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    r = subprocess.run([str(helm), *args, "--kubeconfig", str(kube.kubeconfig)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{r.stdout}\n{r.stderr}"


def _istiod_release(helm: Path, kube: KubeAPIServer, home: Path, verb: str, *sets: str) -> None:
    args = [verb, "istiod", str(istiod_dir() / "charts" / "istio-discovery"), "-n", ISTIO_NS, "-f", str(VALUES),
            "--set", f"meshConfig.defaultConfig.proxyMetadata.MESHGATE_PLUGINS_ADDRESS={PLUGINS_ADDRESS}"]
    for s in sets:
        args += ["--set", s]
    _helm(helm, kube, home, *args)


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm")


@pytest.fixture(scope="module")
def installed(kube: KubeAPIServer, helm: Path, helm_home: Path) -> KubeAPIServer:
    charts = istiod_dir() / "charts"
    if not (charts / "base" / "Chart.yaml").exists() or not (charts / "istio-discovery" / "Chart.yaml").exists():
        pytest.skip(f"Istio's Helm charts not in {charts}: run tools/peers-e2e/istiod.sh")
    _helm(helm, kube, helm_home, "install", "istio-base", str(charts / "base"), "-n", ISTIO_NS, "--create-namespace",
          "--set", "defaultRevision=default")
    _istiod_release(helm, kube, helm_home, "install")
    for name, labels in ((NS, {"istio-injection": "enabled"}), (PLAIN_NS, {})):
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    return kube


@pytest.fixture(scope="module")
def https_port() -> int:
    """istiod's webhook server (``--httpsAddr``; 15017 in a cluster)."""
    return free_port()


@pytest.fixture(scope="module")
def istiod(installed: KubeAPIServer, https_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Istiod]:
    """pilot-discovery on the host, configured from the chart: istiod's environment from the values'
    ``env`` (as the chart's Deployment would give it), the mesh config from the ``istio`` ConfigMap
    (``--meshConfig`` names a file that does not exist), the injector from ``istio-sidecar-injector``,
    the webhook server (``--httpsAddr``) on a free loopback port with a certificate from istiod's CA."""
    values = yaml.safe_load(VALUES.read_text())
    workdir = tmp_path_factory.mktemp("istiod")
    env = {"REVISION": "default", "PILOT_CERT_PROVIDER": "istiod", "CLUSTER_ID": "Kubernetes",
           "ENABLE_CA_SERVER": "true", **{k: str(v) for k, v in values["env"].items()}}
    i = Istiod.start(installed, workdir, env=env,
                     extra_args=[f"--meshConfig={workdir / 'no-such-mesh.yaml'}", f"--httpsAddr=127.0.0.1:{https_port}"])
    try:
        yield i
    finally:
        i.stop()


# ---------------------------------------------------------------------------- the webhook, as the apiserver calls it
def _istiod_ca(kube: KubeAPIServer, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sec = kube.get("v1", "Secret", "istio-ca-secret", ISTIO_NS)
        if sec and "ca-cert.pem" in (sec.get("data") or {}):
            return base64.b64decode(sec["data"]["ca-cert.pem"]).decode()
        time.sleep(0.2)
    raise AssertionError("istiod wrote no CA (secret istio-system/istio-ca-secret)")


def _post_review(port: int, ca: str, review: dict[str, Any]) -> tuple[int, bytes]:
    # TLS verified as the apiserver does it: istiod's CA, the Service's DNS name (connected on loopback)
    ctx = ssl.create_default_context(cadata=ca)
    conn = http.client.HTTPSConnection(ISTIOD_HOST, port, context=ctx, timeout=15)
    try:
        conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15),
                                    server_hostname=ISTIOD_HOST)
        conn.request("POST", "/inject?timeout=10s", body=json.dumps(review).encode(),
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def admission_review(pod: dict[str, Any]) -> dict[str, Any]:
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": pod["metadata"].get("name", ""), "namespace": pod["metadata"]["namespace"], "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}


def inject(istiod: Istiod, port: int, pod: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """The AdmissionResponse for ``pod``; retried while the webhook server or its config is not up."""
    ca = _istiod_ca(istiod.kube)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        review = admission_review(pod)
        try:
            status, body = _post_review(port, ca, review)
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
            time.sleep(0.3)
            continue
        if status == 200:
            out = json.loads(body)
            assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
            resp: dict[str, Any] = out["response"]
            assert resp["uid"] == review["request"]["uid"]
            if resp.get("allowed") is True:
                return resp
            last = json.dumps(resp)
        else:
            last = f"HTTP {status}: {body[:500]!r}"
        time.sleep(0.3)
    raise AssertionError(f"injection webhook did not answer: {last}\n{istiod.log_tail(3000)}")


# ---------------------------------------------------------------------------- RFC 6902 (add/remove/replace: what istiod emits)
def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for op in ops:
        tokens = _pointer(op["path"])
        parent: Any = doc
        for t in tokens[:-1]:
            parent = parent[int(t)] if isinstance(parent, list) else parent[t]
        last, kind = tokens[-1], op["op"]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                assert 0 <= idx <= len(parent), op["path"]
                parent.insert(idx, op["value"])
            elif kind == "remove":
                del parent[idx]
            elif kind == "replace":
                parent[idx] = op["value"]
            else:
                raise AssertionError(f"unexpected patch op {op}")
        else:
            if kind == "add":
                parent[last] = op["value"]
            elif kind == "replace":
                assert last in parent, op["path"]
                parent[last] = op["value"]
            elif kind == "remove":
                del parent[last]
            else:
                raise AssertionError(f"unexpected patch op {op}")
    return doc


def patched(resp: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    assert resp.get("patchType") == "JSONPatch", resp
    ops = json.loads(base64.b64decode(resp["patch"]))
    assert isinstance(ops, list) and ops
    return apply_json_patch(pod, ops)


# ---------------------------------------------------------------------------- the Bookinfo pod
def reviews_pod(kube: KubeAPIServer, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """``reviews-v2`` as its ReplicaSet creates it, defaulted by the apiserver (a dry-run create in a
    namespace without injection: the webhook sees pods after defaulting), then placed in ``bookinfo``."""
    md: dict[str, Any] = {
        "name": POD, "generateName": "reviews-v2-5b9f8c7d4-", "namespace": PLAIN_NS,
        "labels": {"app": "reviews", "version": "v2", "pod-template-hash": "5b9f8c7d4"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v2-5b9f8c7d4",
                             "uid": "0b7c3f3e-4a53-4bd6-9a53-3f7d0b0a2c11", "controller": True,
                             "blockOwnerDeletion": True}]}
    if annotations:
        md["annotations"] = dict(annotations)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": {
        "serviceAccountName": "bookinfo-reviews",
        "containers": [{
            "name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v2:1.20.3",
            "imagePullPolicy": "IfNotPresent",
            "env": [{"name": "LOG_DIR", "value": "/tmp/logs"}],
            "ports": [{"containerPort": 9080, "name": "http", "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 9080}, "periodSeconds": 5},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": {"runAsUser": 1000},
        }],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }}
    out = kube.request("POST", f"/api/v1/namespaces/{PLAIN_NS}/pods", pod, params={"dryRun": "All"})
    for k in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
        out["metadata"].pop(k, None)
    out.pop("status", None)
    out["metadata"]["namespace"] = NS
    assert out["spec"]["containers"][0]["terminationMessagePath"]      # defaulted by the apiserver
    return dict(out)


def proxy_container(pod: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(istio-proxy, native) — a native sidecar is an init container with restartPolicy Always."""
    for c in pod["spec"].get("initContainers") or []:
        if c["name"] == "istio-proxy":
            return c, True
    for c in pod["spec"]["containers"]:
        if c["name"] == "istio-proxy":
            return c, False
    raise AssertionError(f"no istio-proxy container in {json.dumps(pod['spec'])[:2000]}")


def container(pod: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    for c in pod["spec"].get("initContainers" if init else "containers") or []:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no {'init ' if init else ''}container {name}")


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env") or []}


def _expand(s: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion (``$$`` escapes; unknown references stay as they are)."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
        elif s.startswith("$(", i) and ")" in s[i:]:
            j = s.index(")", i)
            name = s[i + 2:j]
            out.append(env[name] if name in env else s[i:j + 1])
            i = j + 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def resolve_env(c: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it for this pod (fieldRefs by hand)."""
    fields = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
              "status.podIP": POD_IP, "status.hostIP": HOST_IP,
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "spec.nodeName": pod["spec"].get("nodeName", "")}
    out: dict[str, str] = {}
    for e in c.get("env") or []:
        if "valueFrom" in e:
            ref = e["valueFrom"].get("fieldRef")
            assert ref is not None, f"env {e['name']}: only fieldRef is resolved here: {e}"
            out[e["name"]] = fields[ref["fieldPath"]]
        else:
            out[e["name"]] = _expand(e.get("value", ""), out)
    return out


# ---------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def injected(istiod: Istiod, https_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the pod the webhook saw, the pod after its patch)."""
    pod = reviews_pod(istiod.kube, {"traffic.sidecar.istio.io/excludeOutboundPorts": EXCLUDE_OUT})
    return pod, patched(inject(istiod, https_port, pod), pod)


def test_chart_configures_the_injector(installed: KubeAPIServer) -> None:
    cm = installed.get("v1", "ConfigMap", "istio-sidecar-injector", ISTIO_NS)
    assert cm is not None
    cfg = yaml.safe_load(cm["data"]["config"])
    assert cfg["defaultTemplates"] == ["meshgate"] and "meshgate" in cfg["templates"]
    values = json.loads(cm["data"]["values"])
    assert values["global"]["proxy"]["image"] == IMAGE and values["global"]["proxy_init"]["image"] == IMAGE
    assert values["global"]["imagePullPolicy"] == "Never"
    assert values["sidecarInjectorWebhook"]["rewriteAppHTTPProbe"] is False
    mesh_cm = installed.get("v1", "ConfigMap", "istio", ISTIO_NS)
    assert mesh_cm is not None
    mesh = yaml.safe_load(mesh_cm["data"]["mesh"])
    assert mesh["enableAutoMtls"] is False and mesh["enablePrometheusMerge"] is False
    assert "defaultProviders" not in mesh                                  # telemetry v2 (istio.stats) off
    assert mesh["defaultConfig"]["proxyMetadata"] == {"MESHGATE_PLUGINS_ADDRESS": PLUGINS_ADDRESS}
    deploy = installed.get("apps/v1", "Deployment", "istiod", ISTIO_NS)
    assert deploy is not None
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PILOT_ENABLE_METADATA_EXCHANGE"] == "false" and env["PILOT_ENABLE_ALPN_FILTER"] == "false"
    assert installed.get("autoscaling/v2", "HorizontalPodAutoscaler", "istiod", ISTIO_NS) is None


def test_init_container_runs_meshgate_iptables(injected: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, pod = injected
    init = container(pod, "istio-init", init=True)
    assert init["image"] == IMAGE and init["imagePullPolicy"] == "Never"
    assert init["command"] + init["args"] == [
        "meshgate", "iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
        "-b", "*", "-d", "15090,15021,15020", "-o", EXCLUDE_OUT]
    sc = init["securityContext"]
    assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"] and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False and sc.get("privileged") is False
    assert env_of(init)["MESHGATE_PLUGINS_ADDRESS"]["value"] == PLUGINS_ADDRESS  # proxyMetadata, as Istio does
    # the rules meshgate would install from exactly these arguments (printed, nothing applied)
    r = subprocess.run([sys.executable, "-m", "meshgate", *init["args"], "--dry-run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    rules = r.stdout
    assert "--to-ports 15001" in rules and "--to-ports 15006" in rules and "--uid-owner 1337" in rules
    for port in EXCLUDE_OUT.split(","):
        assert f"--dport {port} -j RETURN" in rules, rules


def test_sidecar_runs_meshgate_mesh(injected: tuple[dict[str, Any], dict[str, Any]]) -> None:
    before, pod = injected
    proxy, native = proxy_container(pod)
    if native:  # Kubernetes >= 1.33 as istiod detects it: a restartable init container after istio-init
        assert proxy["restartPolicy"] == "Always"
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init", "istio-proxy"]
    else:
        assert [c["name"] for c in pod["spec"]["containers"]] == ["reviews", "istio-proxy"]
    assert proxy["image"] == IMAGE and proxy["imagePullPolicy"] == "Never"
    assert proxy["command"] == ["meshgate"]
    assert proxy["args"] == ["--log-level", "WARNING", "mesh", "--xds-address", f"{ISTIOD_HOST}:15010",
                             "proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"]
    sc = proxy["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (1337, 1337, True)
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    env = env_of(proxy)
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                       ("INSTANCE_IP", "status.podIP"), ("SERVICE_ACCOUNT", "spec.serviceAccountName")):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == path, env[name]
    # the labels the pod ends up with (its own + the three the template adds), as istiod's LABELS
    assert json.loads(env["ISTIO_META_LABELS"]["value"]) == pod["metadata"]["labels"]
    assert pod["metadata"]["labels"] == {**before["metadata"]["labels"], "security.istio.io/tlsMode": "disabled",
                                         "service.istio.io/canonical-name": "reviews",
                                         "service.istio.io/canonical-revision": "v2"}
    assert env["ISTIO_META_APP_CONTAINERS"]["value"] == "reviews"
    assert env["ISTIO_META_WORKLOAD_NAME"]["value"] == "reviews-v2"           # the Deployment, from the ReplicaSet
    assert env["ISTIO_META_OWNER"]["value"] == "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2"
    assert env["ISTIO_META_CLUSTER_ID"]["value"] == "Kubernetes"
    assert env["ISTIO_META_MESH_ID"]["value"] == "cluster.local"
    assert env["ISTIO_META_INTERCEPTION_MODE"]["value"] == "REDIRECT"
    assert json.loads(env["ISTIO_META_POD_PORTS"]["value"]) == [{"name": "http", "containerPort": 9080,
                                                                  "protocol": "TCP"}]
    assert json.loads(env["PROXY_CONFIG"]["value"])["proxyMetadata"] == {"MESHGATE_PLUGINS_ADDRESS": PLUGINS_ADDRESS}
    assert env["MESHGATE_PLUGINS_ADDRESS"]["value"] == PLUGINS_ADDRESS
    ports = {p["containerPort"]: p for p in proxy["ports"]}
    assert ports[15090]["name"] == "http-envoy-prom" and 15021 in ports
    for probe in ("readinessProbe", "startupProbe"):
        assert proxy[probe]["httpGet"]["path"] == "/healthz/ready" and proxy[probe]["httpGet"]["port"] == 15021
    assert proxy["resources"]["requests"] == {"cpu": "50m", "memory": "96Mi"}

    # meshgate reads that environment into the node istiod expects
    from meshgate.cli import _parser
    from meshgate.cli.mesh import mesh_identity
    args = _parser().parse_args([_expand(a, resolve_env(proxy, pod)) for a in proxy["args"]])
    ident = mesh_identity(args, resolve_env(proxy, pod))
    assert ident["node_id"] == f"sidecar~{POD_IP}~{POD}.{NS}~{NS}.svc.cluster.local"
    md = ident["metadata"]
    assert md["LABELS"] == pod["metadata"]["labels"] and md["NAMESPACE"] == NS and md["INSTANCE_IPS"] == POD_IP
    assert md["SERVICE_ACCOUNT"] == "bookinfo-reviews" and md["WORKLOAD_NAME"] == "reviews-v2"
    assert ident["xds"] == f"{ISTIOD_HOST}:15010" and ident["plugins_address"] == PLUGINS_ADDRESS


def test_app_container_and_pod_metadata(injected: tuple[dict[str, Any], dict[str, Any]]) -> None:
    before, pod = injected
    assert container(pod, "reviews") == container(before, "reviews")     # probe not rewritten either
    ann = pod["metadata"]["annotations"]
    status = json.loads(ann["sidecar.istio.io/status"])                  # what istioctl/Kiali look for
    assert status["revision"] == "default"
    assert set(status["initContainers"] + (status.get("containers") or [])) == {"istio-init", "istio-proxy"}
    assert "meshgate-tmp" in status["volumes"]
    assert ann["istio.io/rev"] == "default"
    assert ann["kubectl.kubernetes.io/default-container"] == "reviews"
    assert ann["kubectl.kubernetes.io/default-logs-container"] == "reviews"
    assert ann["traffic.sidecar.istio.io/excludeOutboundPorts"] == EXCLUDE_OUT
    assert not [k for k in ann if k.startswith("prometheus.io/")]       # no metrics merge through :15020


def test_apiserver_accepts_the_injected_pod(kube: KubeAPIServer,
                                            injected: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Valid as a Pod (a dry-run create with strict field validation, where no webhook is called)."""
    _, pod = injected
    kube_pod = copy.deepcopy(pod)
    kube_pod["metadata"]["namespace"] = PLAIN_NS
    out = kube.request("POST", f"/api/v1/namespaces/{PLAIN_NS}/pods", kube_pod,
                                  params={"dryRun": "All", "fieldValidation": "Strict"})
    proxy, native = proxy_container(out)
    assert proxy["command"] == ["meshgate"] and (not native or proxy["restartPolicy"] == "Always")


@pytest.mark.parametrize("native", ["true", "false"])
def test_native_and_classic_sidecar(istiod: Istiod, https_port: int, native: str) -> None:
    pod = reviews_pod(istiod.kube, {"sidecar.istio.io/nativeSidecar": native})
    out = patched(inject(istiod, https_port, pod), pod)
    proxy, is_native = proxy_container(out)
    assert is_native is (native == "true")
    assert ("restartPolicy" in proxy) is is_native
    assert [c["name"] for c in out["spec"]["initContainers"]][0] == "istio-init"
    assert "-o" not in container(out, "istio-init", init=True)["args"]   # no excludeOutboundPorts annotation


def test_pod_annotations_tune_the_injection(istiod: Istiod, https_port: int) -> None:
    """The usual per-pod annotations reach the capture flags, the log level and the resources."""
    pod = reviews_pod(istiod.kube, {
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/12",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32",
        "traffic.sidecar.istio.io/includeInboundPorts": "9080",
        "traffic.sidecar.istio.io/excludeInboundPorts": "8443",
        "traffic.sidecar.istio.io/includeOutboundPorts": "443",
        "traffic.sidecar.istio.io/excludeInterfaces": "eth1",
        "sidecar.istio.io/logLevel": "debug",
        "sidecar.istio.io/proxyCPU": "10m", "sidecar.istio.io/proxyMemoryLimit": "64Mi"})
    out = patched(inject(istiod, https_port, pod), pod)
    init = container(out, "istio-init", init=True)
    assert init["args"] == ["iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                            "-i", "10.96.0.0/12", "-x", "169.254.169.254/32", "-b", "9080",
                            "-d", "15090,15021,8443,15020", "-q", "443", "-c", "eth1"]
    proxy, _ = proxy_container(out)
    assert proxy["args"][:3] == ["--log-level", "DEBUG", "mesh"]
    assert proxy["resources"] == init["resources"] == {"requests": {"cpu": "10m"}, "limits": {"memory": "64Mi"}}
    r = subprocess.run([sys.executable, "-m", "meshgate", *init["args"], "--dry-run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_interception_none_has_no_init_container(istiod: Istiod, https_port: int) -> None:
    pod = reviews_pod(istiod.kube, {"sidecar.istio.io/interceptionMode": "NONE",
                                    "sidecar.istio.io/nativeSidecar": "false"})
    out = patched(inject(istiod, https_port, pod), pod)
    assert not out["spec"].get("initContainers")
    proxy, native = proxy_container(out)
    assert not native and env_of(proxy)["ISTIO_META_INTERCEPTION_MODE"]["value"] == "NONE"


def test_opted_out_pod_gets_no_patch(istiod: Istiod, https_port: int) -> None:
    pod = reviews_pod(istiod.kube, {"sidecar.istio.io/inject": "false"})
    resp = inject(istiod, https_port, pod)
    assert resp["allowed"] is True and not resp.get("patch") and not resp.get("patchType")


def test_webhook_configuration_gets_istiod_ca(istiod: Istiod) -> None:
    """REVISION=default: istiod patches its CA into the chart's MutatingWebhookConfiguration, so the
    apiserver could call it."""
    ca = _istiod_ca(istiod.kube).strip()

    def patched_all() -> bool:
        mwc = istiod.kube.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
                              "istio-sidecar-injector")
        hooks = (mwc or {}).get("webhooks") or []
        return bool(hooks) and all(base64.b64decode(h["clientConfig"].get("caBundle") or b"").decode().strip() == ca
                                   for h in hooks)

    istiod.wait(patched_all, timeout=30, what="caBundle in MutatingWebhookConfiguration istio-sidecar-injector")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except OSError:
        return 0, b""


def test_injected_sidecar_becomes_ready(istiod: Istiod, https_port: int, helm: Path, helm_home: Path,
                                       tmp_path: Path) -> None:
    """The injected command line and environment, run as a real process against this istiod.

    The capture ports move to free ones first (meshConfig.proxyListenPort / proxyInboundListenPort,
    a ``helm upgrade`` of the same values): istiod then binds virtualOutbound/virtualInbound there, and
    the injected ``meshgate iptables -p/-z`` must follow."""
    out_port, in_port = free_port(), free_port()
    _istiod_release(helm, istiod.kube, helm_home, "upgrade", f"meshConfig.proxyListenPort={out_port}",
                    f"meshConfig.proxyInboundListenPort={in_port}")
    pod = reviews_pod(istiod.kube)

    def injected_with_new_ports() -> dict[str, Any] | None:
        p = patched(inject(istiod, https_port, pod), pod)
        a = container(p, "istio-init", init=True)["args"]
        return p if a[a.index("-p") + 1] == str(out_port) and a[a.index("-z") + 1] == str(in_port) else None

    out = istiod.wait(injected_with_new_ports, timeout=30, what="meshConfig.proxyListenPort in the injected pod")
    proxy, _ = proxy_container(out)
    env = resolve_env(proxy, out)
    args = [_expand(a, env) for a in proxy["args"]]
    i = args.index("--xds-address")
    assert args[i + 1] == f"{ISTIOD_HOST}:15010"
    args[i + 1] = istiod.grpc_address                                   # no cluster DNS here
    admin, status, stats = free_port(), free_port(), free_port()
    j = args.index("proxy")
    args[j:j] = ["--admin-port", str(admin), "--status-port", str(status), "--status-address", "127.0.0.1",
                 "--stats-port", str(stats), "--stats-address", "127.0.0.1", "--workers", "1"]
    exe = Path(sys.executable).parent / proxy["command"][0]
    argv = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "meshgate", *args]
    penv = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    penv.update(env)
    log = tmp_path / "istio-proxy.log"
    (tmp_path / "command").write_text(shlex.join(argv) + "\n")
    with open(log, "ab") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=penv,
                                cwd=tmp_path, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 60
        code = 0
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"meshgate mesh exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            code, _ = _get(f"http://127.0.0.1:{status}/healthz/ready")
            if code == 200:
                break
            time.sleep(0.3)
        assert code == 200, f"/healthz/ready {code} after 60s:\n{log.read_text()[-3000:]}\n{istiod.log_tail(2000)}"
        # istiod knows it under the pod's identity, and sent it the listeners on the moved ports
        istiod.wait(lambda: istiod.connected(f"{POD}.{NS}"), timeout=15, what=f"{POD}.{NS} in syncz")
        code, body = _get(f"http://127.0.0.1:{admin}/config_dump")
        assert code == 200
        dump = json.dumps(json.loads(body))
        assert f'"port_value": {out_port}' in dump and f'"port_value": {in_port}' in dump, dump[:3000]
        code, body = _get(f"http://127.0.0.1:{admin}/plugins")
        assert code == 200 and json.loads(body)["enabled"] is True           # MESHGATE_PLUGINS_ADDRESS reached it
        assert _get(f"http://127.0.0.1:{stats}/stats/prometheus")[0] == 200
    finally:
        stop_process(proc, grace=10.0)
