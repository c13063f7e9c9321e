"""deploy/helm/meshgate against a real kube-apiserver (1.37, tests/e2e/kubepeer.py): the chart's
CRDs (its ``crds/`` directory, as ``helm install`` applies them) are accepted and Established, then
every object ``helm template`` renders, for each value combination of tests/unit/test_helm_chart.py,
is applied with server-side apply, ``dryRun=All`` and ``fieldValidation=Strict``: the apiserver
runs defaulting, validation and admission on each one and stores nothing.  A field the apiserver
does not know fails the test instead of being silently dropped.

Needs the helm binary of tools/peers-e2e/helm.sh (skipped with the reason when absent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubepeer import KubeAPIServer, KubeError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_helm_chart import CHART, COMBOS, NS, render  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(kube: KubeAPIServer) -> KubeAPIServer:
    docs = [d for f in sorted((CHART / "crds").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert len(kube.apply_crds(docs, timeout=60)) == 7
    kube.ensure_namespace(NS)
    return kube


def dry_run_apply(kube: KubeAPIServer, obj: dict[str, Any]) -> dict[str, Any]:
    md = obj["metadata"]
    path = kube.path(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace"))
    res: dict[str, Any] = kube.request(
        "PATCH", path, json.dumps(obj).encode(), content_type="application/apply-patch+yaml",
        params={"fieldManager": "helm-e2e", "force": "true", "dryRun": "All", "fieldValidation": "Strict"})
    return res


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_every_rendered_object_is_accepted(helm: Path, cluster: KubeAPIServer, combo: str) -> None:
    objs = render(helm, COMBOS[combo])
    assert objs
    refused = []
    for obj in objs:
        try:
            out = dry_run_apply(cluster, obj)
        except KubeError as e:
            refused.append(f"{obj['kind']}/{obj['metadata']['name']}: {e}")
            continue
        assert out["kind"] == obj["kind"] and out["metadata"]["name"] == obj["metadata"]["name"]
        # defaulting ran (server-side), and nothing was stored (dry run)
        if obj["kind"] == "Deployment":
            # the default, except the mesh controller's Recreate (never two replicas at once)
            want = obj["spec"].get("strategy", {}).get("type", "RollingUpdate")
            assert out["spec"]["strategy"]["type"] == want and out["spec"]["revisionHistoryLimit"] == 10
        assert cluster.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"],
                           obj["metadata"].get("namespace")) is None
    assert not refused, "\n".join(refused)


def test_apisix_kinds_are_served_for_the_controller(cluster: KubeAPIServer) -> None:
    """The ClusterRole names resources that exist: each apisix.apache.org plural is served with status."""
    served = {r["name"] for r in cluster.request("GET", "/apis/apisix.apache.org/v2")["resources"]}
    for plural in ("apisixroutes", "apisixupstreams", "apisixpluginconfigs", "apisixtlses", "apisixconsumers",
                   "apisixglobalrules"):
        assert plural in served and f"{plural}/status" in served


def test_amesh_kind_is_served_for_the_mesh_controller(cluster: KubeAPIServer) -> None:
    """The mesh controller's ClusterRole names a resource that exists, with its status subresource."""
    served = {r["name"] for r in cluster.request("GET", "/apis/apisix.apache.org/v1alpha1")["resources"]}
    assert "ameshpluginconfigs" in served and "ameshpluginconfigs/status" in served
