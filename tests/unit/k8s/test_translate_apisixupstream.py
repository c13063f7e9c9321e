"""ApisixUpstream → upstream fields (meshgate.k8s.translate.apisixupstream)."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.k8s.translate import ClusterState

from k8stools import load

STATE = ClusterState.from_objects(load("cluster.yaml"))
OBJS = {(o["kind"], o["metadata"]["name"]): o for o in load("resources.yaml")}
from meshgate.errors import ConfigError  # noqa: E402
from meshgate.k8s.translate import check_apisix_upstream, external_upstream, upstream_fields  # noqa: E402

WEB = STATE.apisix_upstream("demo", "web")


def au(spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ApisixUpstream", "metadata": {"name": "u", "namespace": "demo"}, "spec": spec}


def test_every_field() -> None:
    assert WEB is not None
    f = upstream_fields(WEB, STATE)
    assert {k: f[k] for k in ("type", "hash_on", "key", "retries", "timeout", "pass_host", "upstream_host")} == {
        "type": "chash", "hash_on": "header", "key": "X-User", "retries": 2,
        "timeout": {"connect": 5, "send": 60, "read": 90}, "pass_host": "rewrite", "upstream_host": "web.internal"}
    assert f["checks"] == {
        "active": {"type": "http", "timeout": 3, "http_path": "/healthz", "req_headers": ["User-Agent: meshgate"],
                   "https_verify_certificate": True,
                   "healthy": {"http_statuses": [200], "successes": 2, "interval": 2},
                   "unhealthy": {"http_statuses": [500, 502], "http_failures": 3, "tcp_failures": 2, "timeouts": 3,
                                 "interval": 1}},
        "passive": {"type": "http", "healthy": {"http_statuses": [200, 201], "successes": 3},
                    "unhealthy": {"http_statuses": [500], "http_failures": 2, "tcp_failures": 1, "timeouts": 4}}}
    assert f["tls"]["client_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert f["tls"]["client_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert "scheme" not in f and "nodes" not in f


def test_port_level_settings_override_and_inherit() -> None:
    assert WEB is not None
    f = upstream_fields(WEB, STATE, port=443)
    assert f["scheme"] == "https" and f["type"] == "roundrobin" and "hash_on" not in f
    assert f["retries"] == 2 and f["pass_host"] == "rewrite"
    assert upstream_fields(WEB, STATE, port=80)["type"] == "chash"


def test_external_nodes_and_discovery() -> None:
    ext = STATE.apisix_upstream("demo", "external-api")
    assert ext is not None
    assert external_upstream(ext, STATE) == {"scheme": "https", "nodes": [
        {"host": "api.example.com", "port": 443, "weight": 3}, {"host": "httpbin.org", "port": 8443, "weight": 1}]}
    reg = STATE.apisix_upstream("demo", "registry")
    assert reg is not None
    assert external_upstream(reg, STATE) == {"service_name": "a6-demo", "discovery_type": "nacos",
                                             "discovery_args": {"namespace_id": "public",
                                                                "group_name": "DEFAULT_GROUP"}}


@pytest.mark.parametrize("spec,pointer,text", [
    ({"loadbalancer": {"type": "random"}}, "/spec/loadbalancer/type", "got 'random'"),
    ({"loadbalancer": {"type": "chash", "hashOn": "ip"}}, "/spec/loadbalancer/hashOn", "got 'ip'"),
    ({"retries": -1}, "/spec/retries", "expected an integer >= 0"),
    ({"timeout": {"connect": "5 seconds"}}, "/spec/timeout/connect", "expected a duration"),
    ({"scheme": "ftp"}, "/spec/scheme", "got 'ftp'"),
    ({"passHost": "keep"}, "/spec/passHost", "got 'keep'"),
    ({"healthCheck": {"passive": {"type": "http"}}}, "/spec/healthCheck/active", "together with active"),
    ({"healthCheck": {"active": {"healthy": {"interval": "500ms"}}}}, "/spec/healthCheck/active/healthy/interval",
     "at least 1s"),
    ({"tlsSecret": {"name": "nope"}}, "/spec/tlsSecret", "secret demo/nope not found"),
    ({"discovery": {"type": "dns"}}, "/spec/discovery", "both serviceName and type"),
])
def test_errors(spec: dict[str, Any], pointer: str, text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        upstream_fields(au(spec), STATE)
    assert ei.value.pointer == pointer and text in ei.value.message
    (e,) = check_apisix_upstream(au(spec), STATE).errors
    assert e.pointer == pointer and str(e).startswith("ApisixUpstream demo/u: ")


def test_external_node_errors() -> None:
    with pytest.raises(ConfigError, match="not of type ExternalName"):
        external_upstream(au({"externalNodes": [{"name": "web", "type": "Service"}]}), STATE)
    with pytest.raises(ConfigError, match="RFC 1123"):
        external_upstream(au({"externalNodes": [{"name": "Bad_Host", "type": "Domain"}]}), STATE)
    with pytest.raises(ConfigError, match="has no externalNodes"):
        external_upstream(au({}), STATE)


def test_check_valid_objects() -> None:
    for name in ("web", "external-api", "registry"):
        obj = STATE.apisix_upstream("demo", name)
        assert obj is not None
        t = check_apisix_upstream(obj, STATE)
        assert t.ok and not t.items, t.messages()


def test_chash_key_checked_by_gateway_validation() -> None:
    t = check_apisix_upstream(au({"loadbalancer": {"type": "chash", "hashOn": "vars", "key": "nope"}}), STATE)
    assert "expected a variable for hash_on vars" in t.messages()[0]
