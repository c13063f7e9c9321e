"""ApisixGlobalRule → global_rule (meshgate.k8s.translate.apisixglobalrule)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.k8s.translate import ClusterState, Translation, gen_id, validate_translation
from meshgate.plugins import PluginRegistry

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "k8s"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((FIXTURES / name).read_text()) if d]


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    reg = PluginRegistry()
    reg.load_builtin()
    return reg


def valid(t: Translation, registry: PluginRegistry) -> Translation:
    checked = validate_translation(t, registry)
    assert t.items and len(checked.items) == len(t.items), checked.messages()
    return t


STATE = ClusterState.from_objects(load("cluster.yaml"))
OBJS = {(o["kind"], o["metadata"]["name"]): o for o in load("resources.yaml")}

from meshgate.k8s.translate import translate_apisix_global_rule  # noqa: E402


def test_global_rule(registry: PluginRegistry) -> None:
    t = valid(translate_apisix_global_rule(OBJS["ApisixGlobalRule", "observability"], STATE), registry)
    (item,) = t.items
    assert item.kind == "global_rules" and item.id == gen_id("demo_observability")
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
