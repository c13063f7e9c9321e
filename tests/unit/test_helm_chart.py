"""deploy/helm/meshgate: the Helm chart.

Always (no Go, no network): Chart.yaml and values.yaml parse and carry what the templates use, and
the chart's ``crds/`` is an exact copy of ``deploy/crds/`` (``deploy/helm/sync-crds.sh``).

When a ``helm`` binary is cached (``tools/peers-e2e/helm.sh`` builds it into
``${MESHGATE_PEERS:-~/.cache/meshgate/peers}/helm-<version>/helm``; ``$MESHGATE_HELM`` overrides),
the chart is rendered with ``helm template`` for the main value combinations and every object's
shape is checked: known apiVersion/kind, required fields, selectors that match their pods, the
node config accepted by Meshgate's own loader, and container arguments that ``meshgate``'s own
argument parser accepts.  Without helm that part is skipped, naming the reason.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from meshgate.cli import _parser
from meshgate.config.node import load_node_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "meshgate"
CRDS = ROOT / "deploy" / "crds"
NS = "gw"
KEY = "k" * 32

KNOWN = {
    ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}

# value combinations rendered (and applied by tests/e2e/test_helm_apiserver.py)
# (a str is a --set, a dict is a values file given on stdin)
COMBOS: dict[str, list[str | dict[str, Any]]] = {
    "default": [],
    "etcd-external-nodeport": ["etcd.bundled.enabled=false", "etcd.host={http://etcd.db.svc:2379}",
                               "gateway.service.type=NodePort", "gateway.service.http.nodePort=30080",
                               "image.pullPolicy=Never", "ingressController.enabled=true",
                               "admin.existingSecret=my-admin"],
    "etcd-bundled-ingress-ha": ["ingressController.enabled=true", "ingressController.replicas=2",
                                "ingressController.watchNamespaces={default,shop}",
                                "ingressController.ingressClass=meshgate", "etcd.bundled.persistence.enabled=true",
                                "gateway.replicas=2"],
    "standalone-lb-mesh": ["gateway.mode=standalone", "gateway.service.type=LoadBalancer",
                           "gateway.service.externalTrafficPolicy=Local", "admin.key=" + KEY,
                           "mesh.istioValues.enabled=true", "meshController.enabled=true",
                           "meshController.watchNamespaces={bookinfo,shop}",
                           "meshController.extraArgs={--context=in-cluster}"],
    "data-plane-no-tls": ["gateway.mode=data_plane", "gateway.tls.enabled=false",
                          {"gateway": {"routes": 'routes: [{uri: /get, upstream: {nodes: {"httpbin:80": 1}}}]'}}],
}


def helm_binary() -> Path | None:
    env = os.environ.get("MESHGATE_HELM")
    if env:
        return Path(env) if Path(env).is_file() else None
    peers = Path(os.environ.get("MESHGATE_PEERS", str(Path.home() / ".cache" / "meshgate" / "peers")))
    found = sorted(p for p in peers.glob("helm-*/helm") if ".tmp" not in p.parent.name and os.access(p, os.X_OK))
    if found:
        return found[-1]
    w = shutil.which("helm")
    return Path(w) if w else None


def render(helm: Path, sets: list[str | dict[str, Any]], release: str = "mg") -> list[dict[str, Any]]:
    cmd = [str(helm), "template", release, str(CHART), "--namespace", NS]
    stdin = None
    for s in sets:
        if isinstance(s, dict):
            assert stdin is None, "one values dict per combination"
            stdin = yaml.safe_dump(s)
            cmd += ["-f", "-"]
        else:
            cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=stdin,
                         env={**os.environ, "HELM_CACHE_HOME": "/tmp/meshgate-helm-cache",
                              "HELM_CONFIG_HOME": "/tmp/meshgate-helm-config",
                              "HELM_DATA_HOME": "/tmp/meshgate-helm-data"})
    if res.returncode != 0:
        raise RenderError(res.stderr.strip())
    return [d for d in yaml.safe_load_all(res.stdout) if d]


class RenderError(Exception):
    pass


# --------------------------------------------------------------------------- no helm needed
def test_chart_yaml() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "meshgate" and chart["type"] == "application"
    assert chart["version"].count(".") == 2 and chart["appVersion"]


def test_values_yaml() -> None:
    v = yaml.safe_load((CHART / "values.yaml").read_text())
    assert v["image"] == {"repository": "meshgate", "tag": "latest", "pullPolicy": "IfNotPresent"}
    assert v["gateway"]["mode"] in ("etcd", "standalone", "data_plane")
    assert v["gateway"]["service"]["type"] in ("ClusterIP", "NodePort", "LoadBalancer")
    assert v["gateway"]["http"]["containerPort"] == 9080 and v["gateway"]["tls"]["containerPort"] == 9443
    assert v["admin"]["port"] == 9180 and v["admin"]["key"] == ""  # no default key, ever
    assert v["ingressController"]["enabled"] is False and v["mesh"]["istioValues"]["enabled"] is False
    mc = v["meshController"]
    assert mc["enabled"] is False and mc["watchNamespaces"] == [] and mc["extraArgs"] == []
    assert mc["port"] == 15810 and mc["probePort"] == 18081
    assert mc["serviceAccount"] == {"create": True, "name": ""} and "replicas" not in mc  # always 1
    assert {"host", "prefix", "bundled"} <= set(v["etcd"])


def test_chart_crds_match_deploy_crds() -> None:
    """The chart's crds/ is a copy of deploy/crds/ (run deploy/helm/sync-crds.sh after a change)."""
    src = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    dst = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    assert len(src) == 7
    assert sorted(dst) == sorted(src), "chart crds/ differs from deploy/crds/: run deploy/helm/sync-crds.sh"
    drifted = [n for n in src if src[n] != dst[n]]
    assert not drifted, f"chart crds/ drifted from deploy/crds/ ({drifted}): run deploy/helm/sync-crds.sh"


# --------------------------------------------------------------------------- rendered
@pytest.fixture(scope="module")
def helm() -> Iterator[Path]:
    h = helm_binary()
    if h is None:
        pytest.skip("no helm binary (tools/peers-e2e/helm.sh builds one into the peers cache); "
                    "rendered-chart checks skipped")
    yield h


@pytest.fixture(scope="module")
def rendered(helm: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm, sets) for name, sets in COMBOS.items()}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (o,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return o


def meshgate_args(args: list[str]) -> Any:
    try:
        return _parser().parse_args(args)
    except SystemExit as e:  # _Parser.error: one line on stderr, exit 2
        raise AssertionError(f"meshgate refuses the container arguments {args}") from e


def check_shape(objs: list[dict[str, Any]], tmp: Path) -> None:
    names: set[tuple[str, str]] = set()
    for o in objs:
        kind = o["kind"]
        assert (o["apiVersion"], kind) in KNOWN, (o["apiVersion"], kind)
        md = o["metadata"]
        assert md["name"] and len(md["name"]) <= 63, md
        assert (kind, md["name"]) not in names, f"duplicate {kind}/{md['name']}"
        names.add((kind, md["name"]))
        assert ("namespace" in md) == (kind not in CLUSTER_SCOPED), md
        if "namespace" in md:
            assert md["namespace"] == NS
        assert md["labels"]["app.kubernetes.io/part-of"] == "meshgate"
    secrets = {o["metadata"]["name"] for o in by_kind(objs, "Secret")}
    sas = {o["metadata"]["name"] for o in by_kind(objs, "ServiceAccount")}
    pod_labels: list[dict[str, str]] = []
    for w in by_kind(objs, "Deployment") + by_kind(objs, "StatefulSet"):
        spec = w["spec"]
        sel = spec["selector"]["matchLabels"]
        labels = spec["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), (sel, labels)
        pod_labels.append(labels)
        pod = spec["template"]["spec"]
        if w["kind"] == "StatefulSet":
            assert spec["serviceName"] in {s["metadata"]["name"] for s in by_kind(objs, "Service")}
        vols = {v["name"] for v in pod.get("volumes", [])} | {
            t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        for c in pod["containers"]:
            assert c["name"] and c["image"], c
            assert c["imagePullPolicy"] in ("Always", "IfNotPresent", "Never")
            assert c["resources"]["requests"] and c["resources"]["limits"]
            for m in c.get("volumeMounts", []):
                assert m["name"] in vols, m
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in ports
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] != "my-admin":  # the existingSecret combination
                    assert ref["name"] in secrets, ref
            if c["image"].startswith("meshgate:"):
                meshgate_args(c["args"])
        if "serviceAccountName" in pod:
            assert pod["serviceAccountName"] in sas
    for s in by_kind(objs, "Service"):
        spec = s["spec"]
        assert spec["ports"] and all(p["port"] and p["name"] for p in spec["ports"])
        assert any(spec["selector"].items() <= lab.items() for lab in pod_labels), spec["selector"]
        if spec.get("type", "ClusterIP") == "ClusterIP":
            assert all("nodePort" not in p for p in spec["ports"])
    for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding"):
        ref = b["roleRef"]
        assert (ref["kind"], ref["name"]) in names
        for sub in b["subjects"]:
            assert sub["name"] in sas and sub["namespace"] == NS
    # the node config: Meshgate's own loader accepts it
    for cm in by_kind(objs, "ConfigMap"):
        if "config.yaml" not in cm["data"]:
            continue
        d = tmp / cm["metadata"]["name"]
        d.mkdir()
        for fname, text in cm["data"].items():
            (d / fname).write_text(text)
        load_node_config(d / "config.yaml", env={"MESHGATE_ADMIN_KEY": KEY})
        if "apisix.yaml" in cm["data"]:
            assert cm["data"]["apisix.yaml"].rstrip().endswith("#END")
            meshgate_args(["validate", "-c", str(d / "config.yaml")])
            from meshgate.cli import main
            assert main(["validate", "-c", str(d / "config.yaml")]) == 0


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_rendered_objects_have_valid_shapes(rendered: dict[str, list[dict[str, Any]]], combo: str,
                                            tmp_path: Path) -> None:
    objs = rendered[combo]
    assert objs
    check_shape(objs, tmp_path)


def test_gateway_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["default"]
    dep = one(objs, "Deployment", "mg-meshgate")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = meshgate_args(c["args"])
    assert args.cmd == "run" and args.config == "/etc/meshgate/config.yaml"
    assert c["image"] == "meshgate:latest"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 9080, "https": 9443, "admin": 9180, "control": 9090, "metrics": 9091}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/healthcheck", "port": "control"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v1/healthcheck", "port": "control"}
    (env,) = c["env"]
    assert env["name"] == "MESHGATE_ADMIN_KEY" and env["valueFrom"]["secretKeyRef"]["name"] == "mg-meshgate-admin"
    cfg = yaml.safe_load(one(objs, "ConfigMap", "mg-meshgate")["data"]["config.yaml"])
    assert cfg["apisix"]["node_listen"] == [9080]
    assert cfg["apisix"]["ssl"] == {"enable": True, "listen": [{"port": 9443}]}
    assert cfg["apisix"]["control"] == {"ip": "0.0.0.0", "port": 9090}
    dpl = cfg["deployment"]
    assert dpl["role"] == "traditional" and dpl["role_traditional"] == {"config_provider": "etcd"}
    assert dpl["admin"]["admin_key"] == [{"name": "admin", "key": "${{MESHGATE_ADMIN_KEY}}", "role": "admin"}]
    assert dpl["etcd"]["host"] == [f"http://mg-meshgate-etcd.{NS}.svc:2379"]
    assert one(objs, "StatefulSet", "mg-meshgate-etcd")["spec"]["replicas"] == 1
    svc = one(objs, "Service", "mg-meshgate")
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http", 9080), ("https", 9443)]
    admin = one(objs, "Service", "mg-meshgate-admin")
    assert admin["spec"]["type"] == "ClusterIP" and admin["spec"]["ports"][0]["port"] == 9180
    secret = one(objs, "Secret", "mg-meshgate-admin")
    assert len(secret["data"]["admin-key"]) >= 40  # random 32 chars, base64
    assert not by_kind(objs, "ClusterRole")  # no ingress controller by default


def test_modes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ext = rendered["etcd-external-nodeport"]
    cfg = yaml.safe_load(one(ext, "ConfigMap", "mg-meshgate")["data"]["config.yaml"])
    assert cfg["deployment"]["etcd"]["host"] == ["http://etcd.db.svc:2379"]
    assert not by_kind(ext, "StatefulSet")
    svc = one(ext, "Service", "mg-meshgate")
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["nodePort"] == 30080
    dep = one(ext, "Deployment", "mg-meshgate")
    assert dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert not by_kind(ext, "Secret")  # existingSecret
    st = rendered["standalone-lb-mesh"]
    cfg = yaml.safe_load(one(st, "ConfigMap", "mg-meshgate")["data"]["config.yaml"])
    assert cfg["deployment"]["role_traditional"] == {"config_provider": "yaml"} and "etcd" not in cfg["deployment"]
    assert one(st, "Service", "mg-meshgate")["spec"]["type"] == "LoadBalancer"
    assert one(st, "Secret", "mg-meshgate-admin")["data"]["admin-key"] == base64.b64encode(KEY.encode()).decode()
    assert [d["metadata"]["name"] for d in by_kind(st, "Deployment")] == ["mg-meshgate",
                                                                         "mg-meshgate-mesh-controller"]
    istio = yaml.safe_load(one(st, "ConfigMap", "mg-meshgate-istio-values")["data"]["values.yaml"])
    g = istio["spec"]["values"]["global"]
    assert g["proxy"]["image"] == g["proxy_init"]["image"] == "meshgate:latest"
    dp = rendered["data-plane-no-tls"]
    data = one(dp, "ConfigMap", "mg-meshgate")["data"]
    cfg = yaml.safe_load(data["config.yaml"])
    assert cfg["deployment"] == {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}}
    assert cfg["apisix"]["ssl"] == {"enable": False}
    assert yaml.safe_load(data["apisix.yaml"])["routes"][0]["uri"] == "/get"
    assert not by_kind(dp, "Secret") and [s["metadata"]["name"] for s in by_kind(dp, "Service")] == ["mg-meshgate"]
    c = one(dp, "Deployment", "mg-meshgate")["spec"]["template"]["spec"]["containers"][0]
    assert "env" not in c and {p["name"] for p in c["ports"]} == {"http", "control", "metrics"}


def test_ingress_controller(rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHGATE_ADMIN_KEY", raising=False)  # the parser's default reads it
    objs = rendered["etcd-bundled-ingress-ha"]
    dep = one(objs, "Deployment", "mg-meshgate-ingress-controller")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = meshgate_args(c["args"])
    assert args.cmd == "ingress-controller"
    assert args.admin_url == [f"http://mg-meshgate-admin.{NS}.svc:9180"]
    assert not args.admin_key  # from $MESHGATE_ADMIN_KEY, not the pod spec
    assert args.leader_elect and args.leader_elect_namespace == NS
    assert args.ingress_class == "meshgate" and args.watch_namespace == ["default", "shop"]
    (env,) = c["env"]
    assert env["name"] == "MESHGATE_ADMIN_KEY"
    assert env["valueFrom"]["secretKeyRef"] == {"name": "mg-meshgate-admin", "key": "admin-key"}
    assert pod["serviceAccountName"] == "mg-meshgate-ingress-controller"
    rules = one(objs, "ClusterRole", "mg-meshgate-ingress-controller")["rules"]
    grants = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    kinds = ["apisixroutes", "apisixupstreams", "apisixpluginconfigs", "apisixtlses", "apisixconsumers",
             "apisixglobalrules"]
    want = {("apisix.apache.org", k, v) for k in kinds for v in ("get", "list", "watch")}
    want |= {("apisix.apache.org", k + "/status", v) for k in kinds for v in ("update", "patch")}
    want |= {("", r, v) for r in ("services", "secrets", "pods") for v in ("get", "list", "watch")}
    want |= {(g, r, v) for g, r in (("discovery.k8s.io", "endpointslices"), ("networking.k8s.io", "ingresses"),
                                    ("networking.k8s.io", "ingressclasses"), ("", "namespaces"))
             for v in ("get", "list", "watch")}
    gw = ["gatewayclasses", "gateways", "httproutes"]
    want |= {("gateway.networking.k8s.io", r, v) for r in gw + ["referencegrants"] for v in ("get", "list", "watch")}
    want |= {("gateway.networking.k8s.io", r + "/status", v) for r in gw for v in ("update", "patch")}
    assert grants == want
    role = one(objs, "Role", "mg-meshgate-ingress-controller-leader-election")
    assert role["metadata"]["namespace"] == NS
    assert {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]} == {
        ("leases", v) for v in ("get", "list", "watch", "create", "update", "patch")}
    # one replica: no leader election
    single = one(rendered["etcd-external-nodeport"], "Deployment", "mg-meshgate-ingress-controller")
    args = meshgate_args(single["spec"]["template"]["spec"]["containers"][0]["args"])
    assert not args.leader_elect
    assert single["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "my-admin"


MC = "mg-meshgate-mesh-controller"


def test_mesh_controller(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["standalone-lb-mesh"]
    dep = one(objs, "Deployment", MC)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    (c,) = pod["containers"]
    assert c["image"] == "meshgate:latest"
    args = meshgate_args(c["args"])
    assert args.cmd == "mesh-controller"
    assert args.listen == "0.0.0.0:15810" and args.probe_address == "0.0.0.0:18081"
    assert args.watch_namespace == ["bookinfo", "shop"] and args.context == "in-cluster"  # extraArgs
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc-plugins": 15810, "http-probes": 18081}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-probes"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-probes"}
    assert "env" not in c  # no Admin API key: it talks to the kube-apiserver only
    assert pod["serviceAccountName"] == MC
    assert one(objs, "ServiceAccount", MC)["metadata"]["namespace"] == NS
    rules = one(objs, "ClusterRole", MC)["rules"]
    grants = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    want = {("apisix.apache.org", "ameshpluginconfigs", v) for v in ("get", "list", "watch")}
    want |= {("apisix.apache.org", "ameshpluginconfigs/status", v) for v in ("update", "patch")}
    want |= {("", "pods", v) for v in ("get", "list", "watch")}
    assert grants == want
    binding = one(objs, "ClusterRoleBinding", MC)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": MC}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": MC, "namespace": NS}]
    assert not [r for r in by_kind(objs, "Role") if "mesh-controller" in r["metadata"]["name"]]  # no leases
    svc = one(objs, "Service", MC)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "grpc-plugins", "port": 15810, "targetPort": "grpc-plugins",
                                     "protocol": "TCP", "appProtocol": "grpc"}]
    # the sidecars are pointed at the Service through Istio's proxyMetadata (env of the proxy container)
    istio = yaml.safe_load(one(objs, "ConfigMap", "mg-meshgate-istio-values")["data"]["values.yaml"])
    address = istio["spec"]["meshConfig"]["defaultConfig"]["proxyMetadata"]["MESHGATE_PLUGINS_ADDRESS"]
    assert address == f"{MC}.{NS}.svc:15810"
    from meshgate.xds.extconfig import parse_address
    assert parse_address(address) == (f"{MC}.{NS}.svc", 15810)
    assert istio["spec"]["meshConfig"]["enableAutoMtls"] is False


def test_mesh_controller_is_off_by_default(helm: Path, rendered: dict[str, list[dict[str, Any]]]) -> None:
    for combo, objs in rendered.items():
        if "meshController.enabled=true" in COMBOS[combo]:
            continue
        assert not [o for o in objs if "mesh-controller" in o["metadata"]["name"]
                    or o["metadata"]["labels"].get("app.kubernetes.io/component") == "mesh-controller"], combo
    # the Istio values without the mesh controller: no proxyMetadata
    objs = render(helm, ["mesh.istioValues.enabled=true"])
    istio = yaml.safe_load(one(objs, "ConfigMap", "mg-meshgate-istio-values")["data"]["values.yaml"])
    assert "defaultConfig" not in istio["spec"]["meshConfig"]
    assert "mesh-controller" not in yaml.safe_dump(objs)


def test_mesh_controller_ports_and_service_account(helm: Path) -> None:
    objs = render(helm, ["meshController.enabled=true", "meshController.port=9000",
                         "meshController.probePort=9001", "meshController.serviceAccount.create=false",
                         "meshController.serviceAccount.name=mesh-sa", "mesh.istioValues.enabled=true"],
                  release="prod")
    name = "prod-meshgate-mesh-controller"
    pod = one(objs, "Deployment", name)["spec"]["template"]["spec"]
    args = meshgate_args(pod["containers"][0]["args"])
    assert args.listen == "0.0.0.0:9000" and args.probe_address == "0.0.0.0:9001" and args.watch_namespace == []
    assert {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]} == {
        "grpc-plugins": 9000, "http-probes": 9001}
    assert pod["serviceAccountName"] == "mesh-sa" and not by_kind(objs, "ServiceAccount")
    assert one(objs, "ClusterRoleBinding", name)["subjects"][0]["name"] == "mesh-sa"
    assert one(objs, "Service", name)["spec"]["ports"][0]["port"] == 9000
    istio = yaml.safe_load(one(objs, "ConfigMap", "prod-meshgate-istio-values")["data"]["values.yaml"])
    assert istio["spec"]["meshConfig"]["defaultConfig"]["proxyMetadata"] == {
        "MESHGATE_PLUGINS_ADDRESS": f"{name}.{NS}.svc:9000"}


def test_apisix_chart_keys_of_the_seed_install_work_unchanged(helm: Path) -> None:
    """`helm install apisix-istio ... --set gateway.type=NodePort --set ingress-controller.enabled=true`,
    as the seed installs APISIX's chart, gives a NodePort gateway and the ingress controller."""
    objs = render(helm, ["gateway.type=NodePort", "ingress-controller.enabled=true",
                         "ingress-controller.config.apisix.serviceNamespace=apisix-istio",
                         "ingress-controller.config.apisix.serviceName=apisix-istio-admin"], release="apisix-istio")
    assert one(objs, "Service", "apisix-istio-meshgate")["spec"]["type"] == "NodePort"
    assert one(objs, "Deployment", "apisix-istio-meshgate-ingress-controller")
    assert one(objs, "Secret", "apisix-istio-meshgate-admin")
    # off unless one of the two keys says so; gateway.type wins over gateway.service.type when set
    plain = render(helm, ["gateway.service.type=LoadBalancer"])
    assert not [o for o in plain if o["metadata"]["name"].endswith("-ingress-controller") and o["kind"] == "Deployment"]
    assert one(render(helm, ["gateway.service.type=LoadBalancer", "gateway.type=NodePort"]), "Service",
               "mg-meshgate")["spec"]["type"] == "NodePort"


@pytest.mark.parametrize("sets,reason", [
    (["gateway.mode=data_plane", "ingressController.enabled=true"], "needs the gateway's Admin API"),
    (["gateway.mode=data_plane", "ingress-controller.enabled=true"], "needs the gateway's Admin API"),
    (["gateway.type=ExternalName"], "gateway.service.type must be"),
    (["gateway.mode=standalone", "ingressController.enabled=true"], "gateway.mode etcd"),
    (["gateway.service.type=ExternalName"], "gateway.service.type must be"),
    (["etcd.bundled.enabled=false"], "needs etcd.host"),
    (["gateway.mode=nope"], "gateway.mode must be"),
])
def test_bad_values_fail_with_a_reason(helm: Path, sets: list[str | dict[str, Any]], reason: str) -> None:
    with pytest.raises(RenderError) as ei:
        render(helm, sets)
    assert reason in str(ei.value)
