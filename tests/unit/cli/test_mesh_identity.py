"""`meshgate mesh` as a drop-in istio-proxy: the node identity from what Istio's injector gives
the container (environment and `proxy sidecar --domain ...` arguments), an Envoy bootstrap, or
flags, in that order of precedence (flags win)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from meshgate.cli.mesh import DEFAULT_XDS, MeshError, add_parser, mesh_identity

INJECTED = {
    "POD_NAME": "reviews-v2-5b9f-x7k2p", "POD_NAMESPACE": "bookinfo", "INSTANCE_IP": "10.244.1.7",
    "SERVICE_ACCOUNT": "bookinfo-reviews", "ISTIO_META_CLUSTER_ID": "Kubernetes",
    "ISTIO_META_WORKLOAD_NAME": "reviews-v2", "ISTIO_META_MESH_ID": "cluster.local",
    "ISTIO_META_LABELS": '{"app":"reviews","version":"v2"}',
    "PROXY_CONFIG": '{"concurrency":3,"discoveryAddress":"istiod.istio-system.svc:15012"}',
}


def parse(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="cmd"))
    return ap.parse_args(["mesh", *argv])


def test_injected_environment_and_args() -> None:
    ident = mesh_identity(parse("proxy", "sidecar", "--domain", "bookinfo.svc.cluster.local",
                                "--proxyLogLevel=warning"), INJECTED)
    assert ident["node_id"] == "sidecar~10.244.1.7~reviews-v2-5b9f-x7k2p.bookinfo~bookinfo.svc.cluster.local"
    md = ident["metadata"]
    assert md["NAMESPACE"] == "bookinfo" and md["INSTANCE_IPS"] == "10.244.1.7"
    assert md["LABELS"] == {"app": "reviews", "version": "v2"}      # a map, as istiod expects
    assert md["WORKLOAD_NAME"] == "reviews-v2" and md["SERVICE_ACCOUNT"] == "bookinfo-reviews"
    assert md["INTERCEPTION_MODE"] == "REDIRECT" and md["CLUSTER_ID"] == "Kubernetes"
    assert ident["workers"] == 3                                      # PROXY_CONFIG.concurrency
    assert ident["xds"] == DEFAULT_XDS and ident["delta"] is True     # Istio's default since 1.22
    assert (ident["admin_port"], ident["status_port"], ident["stats_port"]) == (15000, 15021, 15090)


def test_router_node_for_a_gateway() -> None:
    ident = mesh_identity(parse("proxy", "router", "--domain", "istio-system.svc.cluster.local"),
                          {**INJECTED, "POD_NAMESPACE": "istio-system"})
    assert ident["node_id"].startswith("router~10.244.1.7~reviews-v2-5b9f-x7k2p.istio-system~")


def test_flags_win_over_environment_and_bootstrap(tmp_path: Path) -> None:
    boot = tmp_path / "envoy.yaml"
    boot.write_text(json.dumps({
        "node": {"id": "sidecar~10.0.0.9~from-boot.ns~ns.svc.cluster.local", "cluster": "boot.ns",
                 "metadata": {"NAMESPACE": "ns", "ISTIO_VERSION": "1.30.3"}},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "grpc_services": [
            {"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {"clusters": [{"name": "xds-grpc", "load_assignment": {"endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 15010}}}}]}]}}]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19000}}}}))
    ident = mesh_identity(parse("--bootstrap", str(boot)), {})
    assert ident["node_id"] == "sidecar~10.0.0.9~from-boot.ns~ns.svc.cluster.local"
    assert ident["xds"] == "10.0.0.1:15010" and ident["delta"] is False and ident["admin_port"] == 19000
    assert ident["metadata"]["ISTIO_VERSION"] == "1.30.3" and ident["cluster"] == "boot.ns"
    ident = mesh_identity(parse("--bootstrap", str(boot), "--node-id", "sidecar~1.2.3.4~p.x~x.svc.cluster.local",
                                "--xds-address", "unix:/var/run/xds.sock", "--delta",
                                "--node-metadata", '{"NAMESPACE": "x"}'), INJECTED)
    assert ident["node_id"] == "sidecar~1.2.3.4~p.x~x.svc.cluster.local"
    assert ident["xds"] == "unix:/var/run/xds.sock" and ident["delta"] is True
    assert ident["metadata"]["NAMESPACE"] == "x"


@pytest.mark.parametrize("argv,env,message", [
    ((), {}, "no node id: give --node-id"),
    (("--node-id", "sidecar~1.2.3.4~p.ns"), {}, "expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN"),
    (("--node-id", "ztunnel~1.2.3.4~p.ns~ns.svc.cluster.local"), {}, "TYPE sidecar or router"),
    (("--node-id", "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local", "--xds-address", "istiod"), {},
     "expected HOST:PORT or unix:/path"),
    (("--node-id", "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local", "--node-metadata", '{"LABELS": '), {},
     "--node-metadata: invalid JSON"),
    (("--node-id", "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local", "--node-metadata", "/nope.json"), {},
     "neither a JSON object nor a readable file"),
    (("proxy", "sidecar"), {**INJECTED, "PROXY_CONFIG": "{oops"}, "PROXY_CONFIG: invalid JSON"),
])
def test_bad_identity_is_one_clear_error(argv: tuple[str, ...], env: dict[str, str], message: str) -> None:
    with pytest.raises(MeshError) as e:
        mesh_identity(parse(*argv), env)
    assert message in str(e.value)
