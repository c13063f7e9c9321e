"""ApisixTls → ssl (meshgate.k8s.translate.apisixtls)."""

from __future__ import annotations

from meshgate.k8s.translate import ClusterState, gen_id
from meshgate.plugins import PluginRegistry

from k8stools import load, valid

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
