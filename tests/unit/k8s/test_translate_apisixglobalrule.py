"""ApisixGlobalRule → global_rule (meshgate.k8s.translate.apisixglobalrule)."""

from __future__ import annotations

from meshgate.k8s.translate import ClusterState, gen_id
from meshgate.plugins import PluginRegistry

from k8stools import load, valid

STATE = ClusterState.from_objects(load("cluster.yaml"))
OBJS = {(o["kind"], o["metadata"]["name"]): o for o in load("resources.yaml")}

from meshgate.k8s.translate import translate_apisix_global_rule  # noqa: E402


def test_global_rule(registry: PluginRegistry) -> None:
    t = valid(translate_apisix_global_rule(OBJS["ApisixGlobalRule", "observability"], STATE), registry)
    (item,) = t.items
    # the schema has no labels: the id carries the controller's mark (k8s-<crc32 controller>-<crc32 ns_name>)
    assert item.kind == "global_rules"
    assert item.id == f"k8s-{gen_id('apisix.apache.org/apisix-ingress-controller')}-{gen_id('demo_observability')}"
    assert item.value == {"id": item.id, "plugins": {"prometheus": {}, "request-id": {"header_name": "X-Trace"}}}
    # the global_rule schema has no labels: ownership is on the Translation
    assert t.labels["k8s/kind"] == "ApisixGlobalRule" and t.labels["manager-by"] == "apisix-ingress-controller"


def test_global_rule_secret_ref_and_errors() -> None:
    agr = {"kind": "ApisixGlobalRule", "metadata": {"name": "g", "namespace": "demo"},
           "spec": {"plugins": [{"name": "proxy-rewrite", "secretRef": "rewrite-conf"}]}}
    t = translate_apisix_global_rule(agr, STATE)
    assert t.items[0].value["plugins"]["proxy-rewrite"] == {"uri": "/v2/anything",
                                                            "headers": {"set": {"X-Api-Key": "s3cr3t"}}}
    agr["spec"]["plugins"][0]["secretRef"] = "nope"
    assert translate_apisix_global_rule(agr, STATE).errors[0].pointer == "/spec/plugins/0/secretRef"
    agr["spec"]["plugins"] = [{"name": "cors", "enable": False}]
    t = translate_apisix_global_rule(agr, STATE)
    assert t.ok and not t.items and t.warnings
