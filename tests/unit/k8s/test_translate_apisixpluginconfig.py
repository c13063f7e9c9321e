"""ApisixPluginConfig → plugin_config (meshgate.k8s.translate.apisixpluginconfig)."""

from __future__ import annotations

from meshgate.k8s.translate import ClusterState, gen_id
from meshgate.plugins import PluginRegistry

from k8stools import load, valid

STATE = ClusterState.from_objects(load("cluster.yaml"))
OBJS = {(o["kind"], o["metadata"]["name"]): o for o in load("resources.yaml")}

from meshgate.k8s.translate import plugin_config_plugins, translate_apisix_plugin_config  # noqa: E402

APC = STATE.plugin_config("demo", "common")


def test_plugin_config(registry: PluginRegistry) -> None:
    assert APC is not None
    t = valid(translate_apisix_plugin_config(APC, STATE), registry)
    (item,) = t.items
    assert item.kind == "plugin_configs" and item.id == gen_id("demo_common")
    assert item.value["plugins"] == {"proxy-rewrite": {"host": "from-plugin-config.local"}, "cors": {}}
    assert item.value["labels"]["k8s/kind"] == "ApisixPluginConfig"
    assert plugin_config_plugins(APC, STATE) == item.value["plugins"]


def test_plugin_config_errors() -> None:
    apc = {"kind": "ApisixPluginConfig", "metadata": {"name": "p", "namespace": "demo"},
           "spec": {"plugins": [{"name": "echo", "config": "not-an-object"}]}}
    t = translate_apisix_plugin_config(apc, STATE)
    assert t.errors[0].pointer == "/spec/plugins/0/config" and not t.items
    apc["spec"]["plugins"] = [{"config": {}}]
    assert "needs a name" in translate_apisix_plugin_config(apc, STATE).errors[0].message
