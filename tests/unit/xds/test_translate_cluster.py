"""xDS Cluster → APISIX upstream conf (+ mesh facts), on clusters shaped as istiod emits them,
and upstream_conf() compiled by the real UpstreamRuntime."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from meshgate.errors import ConfigError
from meshgate.proxy.runtime import UpstreamRuntime
from meshgate.upstream import DictContext, HealthState, parse_checks
from meshgate.xds.translate.cluster import translate_cluster
from meshgate.xds.translate.endpoint import select_nodes, translate_cla
from meshgate.xds.translate.upstream import upstream_conf

# Message types the Any fields of istiod's clusters carry must be known to json_format.ParseDict.
for _mod in ("udpa.type.v1.typed_struct_pb2", "xds.type.v3.typed_struct_pb2",
             "envoy.extensions.upstreams.tcp.v3.tcp_protocol_options_pb2"):
    importlib.import_module(_mod)

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
MAX = 4294967295
SDS = {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                             "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
       "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
CIRCUIT_BREAKERS = {"thresholds": [{"max_connections": MAX, "max_pending_requests": MAX, "max_requests": MAX,
                                    "max_retries": MAX, "track_remaining": True}]}
MX_FILTER = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
    "value": {"protocol": "istio-peer-exchange", "enable_discovery": True}}}
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DOWNSTREAM_PROTOCOL = {HPO: {"@type": f"type.googleapis.com/{HPO}",
                             "use_downstream_protocol_config": {"http_protocol_options": {},
                                                                "http2_protocol_options": {}}}}


def tls_istio(sni: str, san: str, alpn: list[str] | None = None) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": alpn or ["istio-peer-exchange", "istio"],
            "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": SDS}],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": san}}]},
                "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": SDS}}},
        "sni": sni}}


TSM = [
    {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
     "transport_socket": tls_istio("outbound_.9080_._.reviews.default.svc.cluster.local",
                                   "spiffe://cluster.local/ns/default/sa/bookinfo-reviews")},
    {"name": "tlsMode-disabled", "match": {}, "transport_socket": {
        "name": "envoy.transport_sockets.raw_buffer",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
]

# An outbound cluster as istiod 1.2x+ emits it for a plain HTTP Service.
OUTBOUND = {
    "name": REVIEWS,
    "type": "EDS",
    "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                           "service_name": REVIEWS},
    "connect_timeout": "10s",
    "lb_policy": "LEAST_REQUEST",
    "circuit_breakers": CIRCUIT_BREAKERS,
    "common_lb_config": {"locality_weighted_lb_config": {}},
    "typed_extension_protocol_options": DOWNSTREAM_PROTOCOL,
    "metadata": {"filter_metadata": {"istio": {"services": [
        {"host": "reviews.default.svc.cluster.local", "name": "reviews", "namespace": "default"}]}}},
    "filters": [MX_FILTER],
    "transport_socket_matches": TSM,
}

# A DestinationRule subset cluster with outlier detection (consecutive5xxErrors: 7, baseEjectionTime 15m).
SUBSET_V1 = {
    **OUTBOUND,
    "name": "outbound|9080|v1|reviews.default.svc.cluster.local",
    "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                           "service_name": "outbound|9080|v1|reviews.default.svc.cluster.local"},
    "lb_policy": "ROUND_ROBIN",
    "outlier_detection": {"consecutive_5xx": 7, "interval": "300s", "base_ejection_time": "900s",
                          "max_ejection_percent": 100, "enforcing_consecutive_5xx": 100, "enforcing_success_rate": 0},
    "common_lb_config": {"healthy_panic_threshold": {}, "locality_weighted_lb_config": {}},
    "metadata": {"filter_metadata": {"istio": {
        "config": "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews",
        "services": [{"host": "reviews.default.svc.cluster.local", "name": "reviews", "namespace": "default"}],
        "subset": "v1", "default_original_port": 9080}}},
}

INBOUND = {
    "name": "inbound|8080||",
    "type": "ORIGINAL_DST",
    "connect_timeout": "10s",
    "lb_policy": "CLUSTER_PROVIDED",
    "circuit_breakers": CIRCUIT_BREAKERS,
    "cleanup_interval": "60s",
    "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
    "metadata": {"filter_metadata": {"istio": {"services": [
        {"host": "hello.default.svc.cluster.local", "name": "hello", "namespace": "default"}]}}},
    "typed_extension_protocol_options": DOWNSTREAM_PROTOCOL,
}

PASSTHROUGH = {
    "name": "PassthroughCluster",
    "type": "ORIGINAL_DST",
    "connect_timeout": "10s",
    "lb_policy": "CLUSTER_PROVIDED",
    "circuit_breakers": CIRCUIT_BREAKERS,
    "typed_extension_protocol_options": {HPO: {**DOWNSTREAM_PROTOCOL[HPO],
                                               "common_http_protocol_options": {"idle_timeout": "300s"}}},
    "filters": [MX_FILTER],
}
INBOUND_PASSTHROUGH_V6 = {**INBOUND, "name": "InboundPassthroughClusterIpv6",
                          "upstream_bind_config": {"source_address": {"address": "::6", "port_value": 0}}}
BLACKHOLE = {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}

# ServiceEntry (resolution: DNS) + DestinationRule tls.mode SIMPLE.
EXTERNAL = {
    "name": "outbound|443||www.example.com",
    "type": "STRICT_DNS",
    "connect_timeout": "0.250s",
    "lb_policy": "LEAST_REQUEST",
    "dns_lookup_family": "V4_ONLY",
    "dns_refresh_rate": "60s",
    "respect_dns_ttl": True,
    "circuit_breakers": CIRCUIT_BREAKERS,
    "load_assignment": {"cluster_name": "outbound|443||www.example.com", "endpoints": [{"locality": {},
        "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "www.example.com",
                                                                        "port_value": 443}}},
                          "load_balancing_weight": 1}], "load_balancing_weight": 1}]},
    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {"validation_context": {"trusted_ca": {
            "filename": "/etc/ssl/certs/ca-certificates.crt"}}},
        "sni": "www.example.com"}},
}


def cluster(d: dict[str, Any]) -> Any:
    return json_format.ParseDict(d, cluster_pb2.Cluster())


def compile_conf(conf: dict[str, Any]) -> UpstreamRuntime:
    return UpstreamRuntime(f"upstreams/{conf['id']}", conf)


def bookinfo_cla(name: str = REVIEWS) -> Any:
    return json_format.ParseDict({"cluster_name": name, "endpoints": [{"locality": {}, "lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": f"10.244.0.{i}", "port_value": 9080}},
                      "health_check_config": {}},
         "health_status": "HEALTHY", "load_balancing_weight": 1,
         "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"},
                                          "istio": {"workload": f"reviews-v{i};default;reviews;v{i};Kubernetes"}}}}
        for i in (1, 2, 3)], "load_balancing_weight": 3}], "policy": {"overprovisioning_factor": 140}},
        endpoint_pb2.ClusterLoadAssignment())


# ------------------------------------------------------------------ outbound EDS


def test_outbound_eds_cluster() -> None:
    conf = translate_cluster(cluster(OUTBOUND))
    xds = conf.pop("xds")
    assert conf == {
        "id": REVIEWS, "name": REVIEWS, "type": "least_conn", "nodes": [],
        "timeout": {"connect": 10.0, "send": 300.0, "read": 300.0},
        "retries": 0, "pass_host": "pass", "scheme": "http",
        "keepalive_pool": {"size": 320, "idle_timeout": 3600.0, "requests": 2**31 - 1},
    }
    assert xds["type"] == "EDS"
    assert xds["eds_service_name"] == REVIEWS
    assert xds["lb_policy"] == "LEAST_REQUEST"
    assert xds["least_request"] == {"choice_count": 2, "active_request_bias": 1.0}
    assert xds["static_nodes"] is False and xds["original_dst"] is False and xds["bind_source"] is None
    assert xds["blackhole"] is False and xds["passthrough"] is False
    assert xds["subset"] == {"direction": "outbound", "port": 9080, "subset": "",
                             "host": "reviews.default.svc.cluster.local", "sni_dnat": False}
    assert xds["istio"]["services"] == [{"host": "reviews.default.svc.cluster.local", "name": "reviews",
                                         "namespace": "default"}]
    assert xds["circuit_breakers"]["default"] == {
        "explicit": True, "max_connections": MAX, "max_pending_requests": MAX, "max_requests": MAX, "max_retries": MAX,
        "max_connection_pools": None, "track_remaining": True, "retry_budget": None}
    assert xds["http_protocol"] == "downstream"
    assert xds["use_downstream_protocol"] is True and xds["http2"] is False
    assert xds["panic_threshold"] == 50.0 and xds["locality_weighted"] is True
    assert xds["filters"] == ["istio.metadata_exchange"]
    assert xds["tls"] is None and xds["outlier"] is None and xds["dns"] is None
    assert [(m["name"], m["match"], m["transport"]) for m in xds["transport_socket_matches"]] == [
        ("tlsMode-istio", {"tlsMode": "istio"}, "tls"), ("tlsMode-disabled", {}, "raw_buffer")]
    tls = xds["transport_socket_matches"][0]["tls"]
    assert tls["sni"] == "outbound_.9080_._.reviews.default.svc.cluster.local"
    assert tls["alpn"] == ["istio-peer-exchange", "istio"]
    assert tls["certificate_sds"] == ["default"] and tls["validation_sds"] == "ROOTCA"
    assert tls["san"] == [{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"}}]
    assert (tls["min_version"], tls["max_version"], tls["verify"]) == ("TLSv1_2", "TLSv1_3", True)
    assert tls["istio_mutual"] is True
    json.dumps(conf)   # plain JSON-able
    json.dumps(xds)


def test_outbound_with_eds_compiles_and_balances() -> None:
    c = translate_cluster(cluster(OUTBOUND))
    warming = upstream_conf(c, None)
    assert warming["nodes"] == [] and warming["xds"]["warming"] is True
    assert compile_conf(warming).nodes == []
    conf = upstream_conf(c, translate_cla(bookinfo_cla()))
    assert conf["xds"]["warming"] is False and conf["xds"]["endpoints"] == 3
    rt = compile_conf(conf)
    assert [n.addr for n in rt.nodes] == ["10.244.0.1:9080", "10.244.0.2:9080", "10.244.0.3:9080"]
    assert rt.retries == 0 and rt.timeouts.connect == 10.0 and rt.pass_host == "pass" and rt.scheme == "http"
    assert rt.nodes[0].metadata is not None and rt.nodes[0].metadata["tls_mode"] == "istio"
    node = rt.balancer.pick(DictContext(), healthy=rt.healthy)
    assert node is not None and node.host == "10.244.0.1"
    # neither the cluster nor the nodes were modified
    assert c["nodes"] == [] and c["xds"]["warming"] is False


def test_http2_explicit_and_auto() -> None:
    h2 = copy.deepcopy(OUTBOUND)
    h2["typed_extension_protocol_options"] = {HPO: {"@type": f"type.googleapis.com/{HPO}",
                                                    "explicit_http_config": {"http2_protocol_options": {
                                                        "max_concurrent_streams": 1073741824}},
                                                    "common_http_protocol_options": {
                                                        "idle_timeout": "0s", "max_requests_per_connection": 1}}}
    conf = translate_cluster(cluster(h2))
    assert conf["xds"]["http2"] is True and conf["xds"]["http_protocol"] == "http2"
    assert conf["xds"]["http_options"]["max_concurrent_streams"] == 1073741824
    assert conf["keepalive_pool"] == {"size": 320, "idle_timeout": 365 * 86400.0, "requests": 1}
    # deprecated Cluster fields (Istio <= 1.9 dumps)
    old = {"name": "outbound|15010||istiod.istio-system.svc.cluster.local", "type": "EDS", "connect_timeout": "1s",
           "http2_protocol_options": {"max_concurrent_streams": 1073741824}, "max_requests_per_connection": 10000}
    conf = translate_cluster(cluster(old))
    assert conf["xds"]["http2"] is True and conf["keepalive_pool"]["requests"] == 10000
    assert conf["timeout"]["connect"] == 1.0
    assert conf["xds"]["eds_service_name"] == old["name"]


# ------------------------------------------------------------------ inbound and special clusters


def test_inbound_original_dst_cluster() -> None:
    conf = translate_cluster(cluster(INBOUND))
    xds = conf["xds"]
    assert conf["type"] == "roundrobin" and conf["nodes"] == []
    assert xds["type"] == "ORIGINAL_DST" and xds["lb_policy"] == "CLUSTER_PROVIDED"
    assert xds["original_dst"] is True
    assert xds["original_dst_lb"] == {"use_http_header": False, "http_header_name": None,
                                      "upstream_port_override": None}
    assert xds["bind_source"] == {"address": "127.0.0.6", "port": 0}
    assert xds["subset"] == {"direction": "inbound", "port": 8080, "subset": "", "host": "", "sni_dnat": False}
    assert xds["eds_service_name"] is None and xds["passthrough"] is False
    up = upstream_conf(conf, None)
    assert up["xds"]["warming"] is False and up["nodes"] == []
    assert compile_conf(up).nodes == []


def test_passthrough_and_blackhole() -> None:
    p = translate_cluster(cluster(PASSTHROUGH))
    assert p["xds"]["passthrough"] is True and p["xds"]["original_dst"] is True
    assert p["keepalive_pool"]["idle_timeout"] == 300.0
    assert p["xds"]["subset"] is None
    v6 = translate_cluster(cluster(INBOUND_PASSTHROUGH_V6))
    assert v6["xds"]["passthrough"] is True and v6["xds"]["bind_source"] == {"address": "::6", "port": 0}
    b = translate_cluster(cluster(BLACKHOLE))
    assert b["xds"]["blackhole"] is True and b["xds"]["static_nodes"] is True and b["nodes"] == []
    assert b["xds"]["no_healthy"] is False
    for conf in (p, v6, b):
        rt = compile_conf(upstream_conf(conf, None))
        assert rt.nodes == [] and rt.balancer.pick(DictContext()) is None


def test_original_dst_http_header() -> None:
    d = {**PASSTHROUGH, "name": "gw-odst", "original_dst_lb_config": {"use_http_header": True,
                                                                      "upstream_port_override": 8443}}
    assert translate_cluster(cluster(d))["xds"]["original_dst_lb"] == {
        "use_http_header": True, "http_header_name": "x-envoy-original-dst-host", "upstream_port_override": 8443}


def test_sni_dnat_cluster_name() -> None:
    d = {**OUTBOUND, "name": "outbound_.9080_.v1_.reviews.default.svc.cluster.local"}
    assert translate_cluster(cluster(d))["xds"]["subset"] == {
        "direction": "outbound", "port": 9080, "subset": "v1", "host": "reviews.default.svc.cluster.local",
        "sni_dnat": True}


# ------------------------------------------------------------------ subset + outlier detection


def test_subset_cluster_with_outlier_detection() -> None:
    conf = translate_cluster(cluster(SUBSET_V1))
    xds = conf["xds"]
    assert conf["type"] == "roundrobin"
    assert xds["subset"]["subset"] == "v1"
    assert xds["istio"]["subset"] == "v1" and xds["istio"]["default_original_port"] == 9080
    assert xds["istio"]["config"].endswith("/destination-rule/reviews")
    assert xds["panic_threshold"] == 0.0     # Istio: minHealthPercent 0 with outlier detection
    od = xds["outlier"]
    assert (od["consecutive_5xx"], od["base_ejection_time"], od["max_ejection_percent"]) == (7, 900.0, 100)
    assert od["enforcing_consecutive_gateway_failure"] == 0
    checks = conf["checks"]
    assert checks["active"] == {"type": "tcp", "timeout": 10.0, "healthy": {"interval": 0, "successes": 1},
                                "unhealthy": {"interval": 900.0, "http_failures": 0, "tcp_failures": 0,
                                              "timeouts": 0}}
    passive = checks["passive"]
    assert passive["unhealthy"]["http_statuses"] == list(range(500, 600))
    assert (passive["unhealthy"]["http_failures"], passive["unhealthy"]["tcp_failures"],
            passive["unhealthy"]["timeouts"]) == (7, 7, 7)
    assert passive["healthy"]["http_statuses"] == list(range(100, 500))
    parsed = parse_checks(checks)   # the APISIX checks model accepts it
    assert parsed.active is not None and parsed.passive is not None
    rt = compile_conf(upstream_conf(conf, translate_cla(bookinfo_cla(SUBSET_V1["name"]))))
    assert rt.has_checks and rt.passive


def test_outlier_checks_behave_like_consecutive_5xx() -> None:
    conf = upstream_conf(translate_cluster(cluster(SUBSET_V1)), translate_cla(bookinfo_cla()))
    rt = compile_conf(conf)
    state = HealthState(conf["checks"], rt.nodes)
    n = rt.nodes[0]
    for _ in range(6):
        state.report_http(n, 503, active=False)
    state.report_http(n, 404, active=False)       # any non-5xx resets the consecutive count
    for _ in range(6):
        state.report_http(n, 500, active=False)
    assert state.is_healthy(n)
    state.report_http(n, 502, active=False)       # 7th consecutive 5xx: ejected
    assert not state.is_healthy(n)
    state.report_tcp_success(n, active=True)      # the probe after base_ejection_time re-admits
    assert state.is_healthy(n)
    for _ in range(7):
        state.report_tcp_failure(n, active=False)  # connect failures count like 5xx (not split)
    assert not state.is_healthy(n)


def test_outlier_gateway_only_and_defaults() -> None:
    d = copy.deepcopy(SUBSET_V1)
    d["outlier_detection"] = {"consecutive_gateway_failure": 3, "enforcing_consecutive_gateway_failure": 100,
                              "consecutive_5xx": 0, "enforcing_consecutive_5xx": 0}
    p = translate_cluster(cluster(d))["checks"]["passive"]
    assert p["unhealthy"]["http_statuses"] == [502, 503, 504] and p["unhealthy"]["http_failures"] == 3
    assert 500 in p["healthy"]["http_statuses"] and 503 not in p["healthy"]["http_statuses"]
    # an empty outlier_detection: Envoy's defaults (consecutive_5xx 5 enforced, base 30 s)
    d["outlier_detection"] = {}
    conf = translate_cluster(cluster(d))
    assert conf["checks"]["passive"]["unhealthy"]["http_failures"] == 5
    assert conf["checks"]["active"]["unhealthy"]["interval"] == 30.0
    assert conf["xds"]["outlier"]["max_ejection_percent"] == 10
    # split local-origin errors use their own threshold
    d["outlier_detection"] = {"split_external_local_origin_errors": True, "consecutive_local_origin_failure": 2}
    u = translate_cluster(cluster(d))["checks"]["passive"]["unhealthy"]
    assert (u["http_failures"], u["tcp_failures"], u["timeouts"]) == (5, 2, 2)
    # nothing enforced: recorded, no checks
    d["outlier_detection"] = {"enforcing_consecutive_5xx": 0, "split_external_local_origin_errors": True,
                              "enforcing_consecutive_local_origin_failure": 0}
    conf = translate_cluster(cluster(d))
    assert "checks" not in conf and conf["xds"]["outlier"]["enforcing_consecutive_5xx"] == 0


# ------------------------------------------------------------------ DNS + TLS, static


def test_strict_dns_tls_cluster() -> None:
    conf = translate_cluster(cluster(EXTERNAL))
    xds = conf["xds"]
    assert conf["scheme"] == "https"
    assert conf["timeout"]["connect"] == 0.25          # sub-second precision kept
    assert xds["static_nodes"] is True and xds["endpoints"] == 1
    assert [(n["host"], n["port"], n["weight"]) for n in conf["nodes"]] == [("www.example.com", 443, 1)]
    assert xds["dns"] == {"lookup_family": "V4_ONLY", "refresh_rate": 60.0, "respect_dns_ttl": True}
    assert xds["tls"]["sni"] == "www.example.com"
    assert xds["tls"]["trusted_ca"] == "/etc/ssl/certs/ca-certificates.crt" and xds["tls"]["verify"] is True
    assert xds["tls"]["istio_mutual"] is False
    up = upstream_conf(conf, [])   # an EDS push for a non-EDS cluster is ignored, as Envoy
    assert up["nodes"] == conf["nodes"]
    rt = compile_conf(up)
    assert rt.scheme == "https" and rt.ssl_context is not None and rt.nodes[0].host == "www.example.com"


def test_static_cluster_with_priorities_and_logical_dns() -> None:
    d = {"name": "static-two-levels", "type": "STATIC", "load_assignment": {"cluster_name": "x", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}}}]},
        {"priority": 1, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}}}}]}]}}
    conf = translate_cluster(cluster(d))
    assert conf["timeout"]["connect"] == 5.0   # Envoy's default connect_timeout
    assert [(n["host"], n["priority"]) for n in conf["nodes"]] == [("10.0.0.1", 0), ("10.0.0.2", -1)]
    rt = compile_conf(upstream_conf(conf, None))
    assert {rt.balancer.pick(DictContext(), healthy=rt.healthy).host for _ in range(5)} == {"10.0.0.1"}  # type: ignore[union-attr]
    ld = {"name": "logical", "type": "LOGICAL_DNS", "load_assignment": {"cluster_name": "x", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "api.example.com",
                                                                        "port_value": 443}}}}]}]}}
    conf = translate_cluster(cluster(ld))
    assert conf["xds"]["dns"]["lookup_family"] == "AUTO" and conf["nodes"][0]["host"] == "api.example.com"


# ------------------------------------------------------------------ lb policies


@pytest.mark.parametrize("policy, balancer", [
    ("ROUND_ROBIN", "roundrobin"), ("LEAST_REQUEST", "least_conn"), ("RANDOM", "roundrobin"),
    ("RING_HASH", "chash"), ("MAGLEV", "chash"),
])
def test_lb_policies(policy: str, balancer: str) -> None:
    conf = translate_cluster(cluster({**OUTBOUND, "lb_policy": policy}))
    assert conf["type"] == balancer and conf["xds"]["lb_policy"] == policy
    if balancer == "chash":
        assert (conf["hash_on"], conf["key"]) == ("vars", "xds_hash_key")
        assert conf["xds"]["hash"]["policy"] == policy
    rt = compile_conf(upstream_conf(conf, translate_cla(bookinfo_cla())))
    assert rt.balancer.pick(DictContext({"remote_addr": "10.1.1.1"})) is not None


def test_ring_hash_config_and_slow_start() -> None:
    conf = translate_cluster(cluster({**OUTBOUND, "lb_policy": "RING_HASH",
                                      "ring_hash_lb_config": {"minimum_ring_size": 2048}}))
    assert conf["xds"]["hash"]["minimum_ring_size"] == 2048
    assert conf["xds"]["hash"]["hash_function"] == "XX_HASH"
    conf = translate_cluster(cluster({**OUTBOUND, "lb_policy": "ROUND_ROBIN", "round_robin_lb_config": {
        "slow_start_config": {"slow_start_window": "60s"}}}))
    assert conf["xds"]["slow_start"] == {"window": 60.0, "aggression": 1.0, "min_weight_percent": 10.0}


def test_load_balancing_policy_extension() -> None:
    d = {**OUTBOUND, "lb_policy": "LOAD_BALANCING_POLICY_CONFIG", "load_balancing_policy": {"policies": [
        {"typed_extension_config": {"name": "x", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"}}}]}}
    assert translate_cluster(cluster(d))["type"] == "roundrobin"


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("patch, pointer, message", [
    ({"cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}}},
     "/cluster_type", "custom cluster type 'envoy.clusters.aggregate' is not supported: expected type STATIC, "
                      "STRICT_DNS, LOGICAL_DNS, EDS or ORIGINAL_DST"),
    ({"lb_policy": "CLUSTER_PROVIDED"},
     "/lb_policy", "CLUSTER_PROVIDED is only valid for ORIGINAL_DST clusters, not EDS: expected ROUND_ROBIN, "
                   "LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV"),
    ({"connect_timeout": "0s"}, "/connect_timeout", "invalid duration 0.0s: expected > 0"),
    ({"lb_policy": "LOAD_BALANCING_POLICY_CONFIG"}, "/load_balancing_policy",
     "required when lb_policy is LOAD_BALANCING_POLICY_CONFIG"),
    ({"load_balancing_policy": {"policies": [{"typed_extension_config": {"name": "custom", "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}}}]}},
     "/load_balancing_policy/policies", "no supported policy among google.protobuf.Struct: expected round_robin, "
                                        "least_request, random, ring_hash, maglev or cluster_provided"),
    ({"transport_socket": {"name": "envoy.transport_sockets.internal_upstream", "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}}},
     "/transport_socket", "transport socket 'envoy.transport_sockets.internal_upstream' is not supported: "
                          "expected envoy.transport_sockets.tls (UpstreamTlsContext) or raw_buffer"),
])
def test_invalid_clusters(patch: dict[str, Any], pointer: str, message: str) -> None:
    d = {**OUTBOUND, **patch}
    if "cluster_type" in patch:
        del d["type"]   # one of type / cluster_type
    with pytest.raises(ConfigError) as ei:
        translate_cluster(cluster(d))
    e = ei.value
    assert (e.kind, e.id, e.pointer, e.message) == ("clusters", REVIEWS, pointer, message)
    assert str(e) == f"clusters id={REVIEWS}: {pointer}: {message}"


def test_invalid_static_endpoints() -> None:
    d = {"name": "s", "type": "STATIC", "load_assignment": {"cluster_name": "s", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "db.example.com", "port_value": 5432}}}}]}]}}
    with pytest.raises(ConfigError) as ei:
        translate_cluster(cluster(d))
    assert str(ei.value) == ("clusters id=s: /load_assignment/endpoints: invalid address 'db.example.com': "
                             "STATIC clusters take IP addresses (use STRICT_DNS for host names)")
    d["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 0
    with pytest.raises(ConfigError) as ei:
        translate_cluster(cluster(d))
    assert ei.value.pointer == "/load_assignment/endpoints/0/lb_endpoints/0/load_balancing_weight"
    assert ei.value.kind == "clusters"
    two = {"name": "l", "type": "LOGICAL_DNS", "load_assignment": {"cluster_name": "l", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": f"h{i}.example.com", "port_value": 80}}}}
        for i in (1, 2)]}]}}
    with pytest.raises(ConfigError, match="LOGICAL_DNS clusters take exactly one endpoint, got 2"):
        translate_cluster(cluster(two))
    # the bootstrap's xds-grpc: a unix socket only -> skipped, not a black hole
    pipe = {"name": "xds-grpc", "type": "STATIC", "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "./etc/istio/proxy/XDS"}}}}]}]}}
    conf = translate_cluster(cluster(pipe))
    assert conf["nodes"] == [] and conf["xds"]["blackhole"] is False and conf["xds"]["skipped_endpoints"] == 1
    with pytest.raises(ConfigError, match="required: a non-empty cluster name"):
        translate_cluster(cluster({"type": "EDS"}))


def test_upstream_conf_no_healthy() -> None:
    c = translate_cluster(cluster(SUBSET_V1))   # panic threshold 0
    cla = bookinfo_cla()
    for ep in cla.endpoints[0].lb_endpoints:
        ep.health_status = 2   # UNHEALTHY
    up = upstream_conf(c, translate_cla(cla))
    assert up["nodes"] == [] and up["xds"]["no_healthy"] is True and up["xds"]["endpoints"] == 3
    # with Envoy's default threshold (50%) the same endpoints are all used (panic)
    c2 = translate_cluster(cluster(OUTBOUND))
    assert len(upstream_conf(c2, translate_cla(cla))["nodes"]) == 3


# ------------------------------------------------------------------ real istiod dumps


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "istiod"


def _walk(obj: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(obj, dict):
        t = obj.get("@type", "")
        if t.endswith("envoy.config.cluster.v3.Cluster"):
            yield "cluster", obj
            return
        if t.endswith("envoy.config.endpoint.v3.ClusterLoadAssignment"):
            yield "cla", obj
            return
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _fixture_files() -> list[Path]:
    if not FIXTURES.is_dir():
        return []
    return sorted(p for p in FIXTURES.rglob("*.json") if p.is_file())


@pytest.mark.skipif(not _fixture_files(), reason="no istiod dumps in tests/fixtures/istiod yet")
def test_every_cluster_and_cla_of_the_istiod_fixtures_translates() -> None:
    clusters = clas = 0
    for path in _fixture_files():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        for kind, obj in _walk(data):
            body = {k: v for k, v in obj.items() if k != "@type"}
            if kind == "cluster":
                conf = translate_cluster(json_format.ParseDict(body, cluster_pb2.Cluster(),
                                                               ignore_unknown_fields=True))
                compile_conf(upstream_conf(conf, None))
                clusters += 1
            else:
                nodes = translate_cla(json_format.ParseDict(body, endpoint_pb2.ClusterLoadAssignment(),
                                                            ignore_unknown_fields=True))
                compile_conf({"id": "x", "nodes": select_nodes(nodes), "retries": 0})
                clas += 1
    assert clusters + clas > 0
