"""ApisixTls → ssl (meshgate.k8s.translate.apisixtls)."""

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

from meshgate.k8s.translate import translate_apisix_tls  # noqa: E402


def test_tls_with_mtls(registry: PluginRegistry) -> None:
    t = valid(translate_apisix_tls(OBJS["ApisixTls", "site"], STATE), registry)
    assert t.ok
    (item,) = t.items
    assert item.kind == "ssls" and item.id == gen_id("ApisixTls_demo_site")
    ssl = item.value
    assert ssl["snis"] == ["www.example.com", "*.api.example.com"]
    assert ssl["cert"].startswith("-----BEGIN CERTIFICATE-----") and ssl["key"].startswith("-----BEGIN PRIVATE KEY")
    assert ssl["client"]["depth"] == 2 and ssl["client"]["skip_mtls_uri_regex"] == ["^/healthz$"]
    assert ssl["client"]["ca"].startswith("-----BEGIN CERTIFICATE-----") and ssl["client"]["ca"] != ssl["cert"]
    assert ssl["labels"]["k8s/kind"] == "ApisixTls" and ssl["labels"]["k8s/name"] == "site"
    assert "name" not in ssl  # the APISIX ssl schema has no name


def test_tls_apisix_style_secret_no_client(registry: PluginRegistry) -> None:
    ssl = valid(translate_apisix_tls(OBJS["ApisixTls", "plain"], STATE), registry).items[0].value
    assert ssl["snis"] == ["plain.example.com"] and "client" not in ssl


def test_tls_errors() -> None:
    tls = {"kind": "ApisixTls", "metadata": {"name": "x", "namespace": "demo"},
           "spec": {"hosts": ["a.example.com"], "secret": {"name": "nope", "namespace": "demo"}}}
    t = translate_apisix_tls(tls, STATE)
    assert t.messages() == ["ApisixTls demo/x: /spec/secret: secret demo/nope not found"] and not t.items
    tls["spec"]["secret"] = {"name": "client-ca", "namespace": "demo"}
    assert "has no certificate" in translate_apisix_tls(tls, STATE).messages()[0]
    tls["spec"]["secret"] = {"name": "site-tls", "namespace": "demo"}
    tls["spec"]["client"] = {"caSecret": {"name": "missing", "namespace": "demo"}}
    assert translate_apisix_tls(tls, STATE).errors[0].pointer == "/spec/client/caSecret"
    tls["spec"] = {"secret": {"name": "site-tls"}}
    assert translate_apisix_tls(tls, STATE).errors[0].pointer == "/spec/hosts"
