"""Listener → mesh listener, on listeners shaped as istiod emits them for sidecars and gateways
(reference istio-xds.md 2.1, 2.2, 3, 4; the real Bookinfo dumps in tests/fixtures/istiod/; excerpts of
the public Istio 1.20.8 dump alizard0/openshift-istio-playground pod_config_dump.json)."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory, wrappers_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from meshgate.errors import ConfigError
from meshgate.xds.translate.listener import translate_listener

for _mod in ("envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
             "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
             "envoy.extensions.filters.network.rbac.v3.rbac_pb2",
             "envoy.extensions.filters.http.router.v3.router_pb2",
             "envoy.extensions.filters.http.fault.v3.fault_pb2",
             "envoy.extensions.filters.http.cors.v3.cors_pb2",
             "envoy.extensions.filters.http.grpc_stats.v3.config_pb2",
             "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
             "envoy.extensions.filters.http.lua.v3.lua_pb2",
             "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2",
             "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
             "envoy.extensions.filters.listener.http_inspector.v3.http_inspector_pb2",
             "envoy.extensions.filters.listener.proxy_protocol.v3.proxy_protocol_pb2",
             "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
             "envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2",
             "envoy.extensions.transport_sockets.proxy_protocol.v3.upstream_proxy_protocol_pb2",
             "envoy.extensions.request_id.uuid.v3.uuid_pb2",
             "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
             "udpa.type.v1.typed_struct_pb2", "xds.type.v3.typed_struct_pb2"):
    importlib.import_module(_mod)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "istiod"
T = "type.googleapis.com/"
HCM_URL = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_URL = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


# -- parsing istiod JSON whose Anys name Istio-only messages ----------------------------------------
# istiod sends istio.stats as type.googleapis.com/stats.PluginConfig and istio.alpn as
# istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig: messages xds-protos does not have.  On
# the wire they are opaque Anys; here they go through json_format as a marked StringValue and are
# then turned back into Anys with the original type_url and opaque bytes.
_POOL = descriptor_pool.Default()
_MARK = T + "google.protobuf.StringValue"
_OPAQUE = "opaque:"


def _known(url: str) -> bool:
    try:
        _POOL.FindMessageTypeByName(url.rsplit("/", 1)[-1])
    except KeyError:
        return False
    return True


def _mark_unknown(js: Any) -> Any:
    if isinstance(js, dict):
        t = js.get("@type")
        if t is not None and not _known(t):
            return {"@type": _MARK, "value": _OPAQUE + t + ("+" if len(js) > 1 else "")}
        return {k: _mark_unknown(v) for k, v in js.items()}
    if isinstance(js, list):
        return [_mark_unknown(v) for v in js]
    return js


def _restore_any(a: any_pb2.Any) -> None:
    if a.type_url == _MARK:
        sv = wrappers_pb2.StringValue()
        a.Unpack(sv)
        if sv.value.startswith(_OPAQUE):
            url = sv.value[len(_OPAQUE):]
            a.type_url = url.rstrip("+")
            a.value = b"\x08\x01" if url.endswith("+") else b""   # opaque content
        return
    inner = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(a.type_url.rsplit("/", 1)[-1]))()
    a.Unpack(inner)
    _restore(inner)
    a.Pack(inner)


def _restore(msg: Message) -> None:
    for fd, value in msg.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        mt = fd.message_type
        assert mt is not None
        if mt.GetOptions().map_entry:
            if mt.fields_by_name["value"].type != FieldDescriptor.TYPE_MESSAGE:
                continue
            values = list(value.values())
        elif fd.is_repeated:
            values = list(value)
        else:
            values = [value]
        for v in values:
            if isinstance(v, any_pb2.Any):
                _restore_any(v)
            else:
                _restore(v)


def parse(js: dict[str, Any]) -> listener_pb2.Listener:
    js = {k: v for k, v in js.items() if k != "@type"}
    msg = json_format.ParseDict(_mark_unknown(js), listener_pb2.Listener())
    _restore(msg)
    return msg


def translate(js: dict[str, Any]) -> dict[str, Any]:
    return translate_listener(parse(js))


def refused(js: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        translate(js)
    e = ei.value
    assert e.kind == "listeners"
    assert e.id == js["name"]
    return e


# -- istiod shapes ----------------------------------------------------------------------------------
STATS = {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig"}}
STATS_INBOUND = {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig",
                                                         "disable_host_header_fallback": True}}
MX_NETWORK = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "envoy.tcp.metadataexchange.config.MetadataExchange",
    "value": {"protocol": "istio-peer-exchange", "enable_discovery": True}}}
MX_HTTP_OUT = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.peer_metadata.Config",
    "value": {"upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "upstream_propagation": [{"istio_headers": {}}]}}}
MX_HTTP_IN = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": T + "xds.type.v3.TypedStruct", "type_url": T + "io.istio.http.peer_metadata.Config",
    "value": {"downstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "downstream_propagation": [{"istio_headers": {}}]}}}
GRPC_STATS = {"name": "envoy.filters.http.grpc_stats", "typed_config": {
    "@type": T + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig", "emit_filter_state": True,
    "stats_for_all_methods": False}}
ALPN = {"name": "istio.alpn", "typed_config": {
    "@type": T + "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
    "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                      {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                      {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}}
FAULT = {"name": "envoy.filters.http.fault", "typed_config": {"@type": T + "envoy.extensions.filters.http.fault.v3.HTTPFault"}}
CORS = {"name": "envoy.filters.http.cors", "typed_config": {"@type": T + "envoy.extensions.filters.http.cors.v3.Cors"}}
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
RBAC_HTTP = {"name": "envoy.filters.http.rbac", "typed_config": {
    "@type": T + "envoy.extensions.filters.http.rbac.v3.RBAC",
    "rules": {"action": "DENY", "policies": {"ns[default]-policy[deny-all]-rule[0]": {
        "permissions": [{"any": True}], "principals": [{"any": True}]}}}}}
OUTBOUND_HTTP_FILTERS = [MX_HTTP_OUT, GRPC_STATS, ALPN, FAULT, CORS, STATS, ROUTER]
OUTBOUND_FILTER_NAMES = ["istio.metadata_exchange", "envoy.filters.http.grpc_stats", "istio.alpn",
                         "envoy.filters.http.fault", "envoy.filters.http.cors", "istio.stats",
                         "envoy.filters.http.router"]
ADS = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
TRACING = {"client_sampling": {"value": 100}, "random_sampling": {"value": 1}, "overall_sampling": {"value": 100},
           "custom_tags": [{"tag": "istio.canonical_service", "literal": {"value": "productpage"}},
                           {"tag": "istio.mesh_id", "literal": {"value": "cluster.local"}},
                           {"tag": "istio.namespace", "literal": {"value": "default"}}]}
REQUEST_ID = {"typed_config": {"@type": T + "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                               "use_request_id_for_trace_sampling": True}}
LISTENER_FILTERS_OUT = [
    {"name": "envoy.filters.listener.tls_inspector",
     "typed_config": {"@type": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
    {"name": "envoy.filters.listener.http_inspector",
     "typed_config": {"@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}]


def tcp_proxy(cluster: str, **extra: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_URL, "stat_prefix": cluster, "cluster": cluster, **extra}}


def hcm(route: dict[str, Any], filters: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    cfg = {"@type": HCM_URL, "stat_prefix": "outbound_0.0.0.0_9080", **route,
           "http_filters": copy.deepcopy(filters if filters is not None else OUTBOUND_HTTP_FILTERS),
           "tracing": TRACING, "use_remote_address": False, "upgrade_configs": [{"upgrade_type": "websocket"}],
           "stream_idle_timeout": "0s", "normalize_path": True, "request_id_extension": REQUEST_ID,
           "path_with_escaped_slashes_action": "KEEP_UNCHANGED", **extra}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def rds(name: str) -> dict[str, Any]:
    return {"rds": {"config_source": ADS, "route_config_name": name}}


DOWNSTREAM_TLS: dict[str, Any] = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "common_tls_context": {
        "tls_params": {}, "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": {
            "api_config_source": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
                                  "set_node_on_first_message_only": True, "transport_api_version": "V3"},
            "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}],
        "combined_validation_context": {
            "default_validation_context": {"match_subject_alt_names": [{"prefix": "spiffe://cluster.local/"}]},
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": {
                "api_config_source": {"api_type": "GRPC",
                                      "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
                                      "set_node_on_first_message_only": True, "transport_api_version": "V3"},
                "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}}},
    "require_client_certificate": True}}

VIRTUAL_OUTBOUND: dict[str, Any] = {
    "@type": T + "envoy.config.listener.v3.Listener",
    "name": "virtualOutbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
    "filter_chains": [
        {"filter_chain_match": {"destination_port": 15001}, "filters": [STATS, tcp_proxy("BlackHoleCluster")],
         "name": "virtualOutbound-blackhole"},
        {"filters": [STATS, tcp_proxy("PassthroughCluster")], "name": "virtualOutbound-catchall-tcp"}],
    "use_original_dst": True, "traffic_direction": "OUTBOUND"}

OUTBOUND_9080: dict[str, Any] = {
    "name": "0.0.0.0_9080", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
    "filter_chains": [{
        "filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
        "filters": [hcm(rds("9080"))]}],
    "listener_filters": LISTENER_FILTERS_OUT, "listener_filters_timeout": "0s", "traffic_direction": "OUTBOUND",
    "continue_on_listener_filters_timeout": True,
    "default_filter_chain": {"filter_chain_match": {}, "filters": [STATS, tcp_proxy("PassthroughCluster")],
                             "name": "PassthroughFilterChain"},
    "bind_to_port": False}

KUBERNETES_443: dict[str, Any] = {
    "name": "10.96.0.1_443", "address": {"socket_address": {"address": "10.96.0.1", "port_value": 443}},
    "filter_chains": [{"filters": [STATS, tcp_proxy("outbound|443||kubernetes.default.svc.cluster.local")],
                       "transport_socket_connect_timeout": "15s"}],
    "listener_filters_timeout": "0s", "traffic_direction": "OUTBOUND", "continue_on_listener_filters_timeout": True,
    "bind_to_port": False}


def inbound_route_config(port: int) -> dict[str, Any]:
    return {"route_config": {"name": f"inbound|{port}||", "virtual_hosts": [{
        "name": f"inbound|http|{port}", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "route": {"cluster": f"inbound|{port}||", "timeout": "0s",
                      "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}},
            "decorator": {"operation": f"productpage.default.svc.cluster.local:{port}/*"}, "name": "default"}]}],
        "validate_clusters": False}}


INBOUND_HTTP_FILTERS = [MX_HTTP_IN, GRPC_STATS, FAULT, CORS, STATS_INBOUND, ROUTER]
INBOUND_HCM_EXTRA = {"stat_prefix": "inbound_0.0.0.0_8080", "server_name": "istio-envoy",
                     "forward_client_cert_details": "APPEND_FORWARD",
                     "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True}}
PT = "InboundPassthroughClusterIpv4"
ALL4 = [{"address_prefix": "0.0.0.0", "prefix_len": 0}]
MTLS_HTTP_ALPN = ["istio-http/1.0", "istio-http/1.1", "istio-h2"]
MTLS_TCP_ALPN = ["istio-peer-exchange", "istio"]


def inbound_chain(name: str, match: dict[str, Any], kind: str, cluster: str, tls: bool,
                  route_port: int = 8080) -> dict[str, Any]:
    if kind == "http":
        filters = [MX_NETWORK, hcm(inbound_route_config(route_port), INBOUND_HTTP_FILTERS, **INBOUND_HCM_EXTRA)]
    else:
        filters = [MX_NETWORK, STATS_INBOUND, tcp_proxy(cluster)]
    c = {"filter_chain_match": match, "filters": filters, "name": name}
    if tls:
        c["transport_socket"] = DOWNSTREAM_TLS
    return c


VIRTUAL_INBOUND: dict[str, Any] = {
    "name": "virtualInbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
    "listener_filters": [
        {"name": "envoy.filters.listener.original_dst",
         "typed_config": {"@type": T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
        {"name": "envoy.filters.listener.tls_inspector",
         "typed_config": {"@type": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
         "filter_disabled": {"destination_port_range": {"start": 15006, "end": 15007}}},
        {"name": "envoy.filters.listener.http_inspector",
         "typed_config": {"@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"},
         "filter_disabled": {"or_match": {"rules": [{"destination_port_range": {"start": 9080, "end": 9081}},
                                                    {"destination_port_range": {"start": 15006, "end": 15007}}]}}}],
    "listener_filters_timeout": "0s", "traffic_direction": "INBOUND", "continue_on_listener_filters_timeout": True,
    "filter_chains": [
        {"filter_chain_match": {"destination_port": 15006},
         "filters": [MX_NETWORK, STATS_INBOUND, tcp_proxy("BlackHoleCluster")], "name": "virtualInbound-blackhole"},
        inbound_chain("0.0.0.0_8080", {"destination_port": 8080, "transport_protocol": "tls",
                                       "application_protocols": MTLS_HTTP_ALPN}, "http", "", True),
        inbound_chain("0.0.0.0_8080", {"destination_port": 8080, "transport_protocol": "raw_buffer",
                                       "application_protocols": ["http/1.1", "h2c"]}, "http", "", False),
        inbound_chain("0.0.0.0_8080", {"destination_port": 8080, "transport_protocol": "tls",
                                       "application_protocols": MTLS_TCP_ALPN}, "tcp", "inbound|8080||", True),
        inbound_chain("0.0.0.0_8080", {"destination_port": 8080, "transport_protocol": "raw_buffer"},
                      "tcp", "inbound|8080||", False),
        inbound_chain("0.0.0.0_8080", {"destination_port": 8080, "transport_protocol": "tls"},
                      "tcp", "inbound|8080||", False),
        inbound_chain("virtualInbound-catchall-http", {"prefix_ranges": ALL4, "transport_protocol": "tls",
                                                       "application_protocols": MTLS_HTTP_ALPN},
                      "http", "", True, route_port=0),
        inbound_chain("virtualInbound-catchall-http", {"prefix_ranges": ALL4, "transport_protocol": "raw_buffer",
                                                       "application_protocols": ["http/1.1", "h2c"]},
                      "http", "", False, route_port=0),
        inbound_chain("virtualInbound", {"prefix_ranges": ALL4, "transport_protocol": "tls",
                                         "application_protocols": MTLS_TCP_ALPN}, "tcp", PT, True),
        inbound_chain("virtualInbound", {"prefix_ranges": ALL4, "transport_protocol": "raw_buffer"}, "tcp", PT, False),
        inbound_chain("virtualInbound", {"prefix_ranges": ALL4, "transport_protocol": "tls"}, "tcp", PT, False),
    ]}

GATEWAY_8080: dict[str, Any] = {
    "name": "0.0.0.0_8080", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
    "filter_chains": [{"filters": [hcm(rds("http.8080"), [MX_HTTP_IN, GRPC_STATS, FAULT, CORS, STATS, ROUTER],
                                       stat_prefix="outbound_0.0.0.0_8080", use_remote_address=True,
                                       server_name="istio-envoy", xff_num_trusted_hops=1,
                                       common_http_protocol_options={"idle_timeout": "3600s"},
                                       request_timeout="30s", merge_slashes=True,
                                       upgrade_configs=[{"upgrade_type": "websocket"},
                                                        {"upgrade_type": "CONNECT", "enabled": False}])]}],
    "traffic_direction": "OUTBOUND"}

ANY_MATCH: dict[str, Any] = {"port": None, "dst": [], "direct_src": [], "source_type": "ANY", "src": [], "src_ports": [], "sni": [],
             "transport": "", "alpn": []}


def cmatch(**kw: Any) -> dict[str, Any]:
    return {**ANY_MATCH, **kw}


def tcp_out(cluster: str, idle: float = 3600.0) -> dict[str, Any]:
    return {"cluster": cluster, "weighted": [], "idle_timeout": idle, "stat_prefix": cluster}


def tcp_chain(name: str, cluster: str, **match: Any) -> dict[str, Any]:
    return {"name": name, "match": cmatch(**match), "kind": "tcp", "tls": False, "unsupported": None, "http": None,
            "tcp": tcp_out(cluster)}


# -- sidecar outbound -------------------------------------------------------------------------------
def test_virtual_outbound() -> None:
    out = translate(VIRTUAL_OUTBOUND)
    assert out == {
        "name": "virtualOutbound", "address": "0.0.0.0", "port": 15001, "bind_to_port": True,
        "use_original_dst": True, "original_dst_filter": False, "direction": "OUTBOUND", "default_chain": None,
        "sniff": False,
        "chains": [tcp_chain("virtualOutbound-blackhole", "BlackHoleCluster", port=15001),
                   tcp_chain("virtualOutbound-catchall-tcp", "PassthroughCluster")]}


def test_istio_filters_as_opaque_anys_are_ignored() -> None:
    """The helper really produced Anys of messages Meshgate cannot decode."""
    msg = parse(OUTBOUND_9080)
    assert msg.filter_chains[0].filters[0].typed_config.type_url == HCM_URL
    assert msg.default_filter_chain.filters[0].typed_config.type_url == T + "stats.PluginConfig"
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as h
    cfg = h.HttpConnectionManager()
    msg.filter_chains[0].filters[0].typed_config.Unpack(cfg)
    assert [f.typed_config.type_url for f in cfg.http_filters][2] == \
        T + "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"
    assert cfg.http_filters[2].typed_config.value == b"\x08\x01"
    assert translate_listener(msg)["chains"][0]["kind"] == "http"


def test_outbound_http_listener_9080() -> None:
    out = translate(OUTBOUND_9080)
    assert {k: v for k, v in out.items() if k not in ("chains", "default_chain")} == {
        "name": "0.0.0.0_9080", "address": "0.0.0.0", "port": 9080, "bind_to_port": False,
        "use_original_dst": False, "original_dst_filter": False, "direction": "OUTBOUND", "sniff": True}
    [chain] = out["chains"]
    assert chain == {
        "name": "", "match": cmatch(transport="raw_buffer", alpn=["http/1.1", "h2c"]), "kind": "http", "tls": False,
        "unsupported": None, "tcp": None,
        "http": {"rds": "9080", "rds_timeout": None, "routes": None, "websocket": True, "fault": None, "cors": True,
                 "stat_prefix": "outbound_0.0.0.0_9080", "use_remote_address": False, "xff_hops": 0,
                 "skip_xff_append": False, "normalize_path": True, "merge_slashes": False,
                 "stream_idle_timeout": 0.0, "request_timeout": None, "idle_timeout": None, "server_name": "envoy",
                 "filters": OUTBOUND_FILTER_NAMES}}
    assert out["default_chain"] == tcp_chain("PassthroughFilterChain", "PassthroughCluster")


def test_outbound_tcp_vip_listener() -> None:
    cluster = "outbound|443||kubernetes.default.svc.cluster.local"
    assert translate(KUBERNETES_443) == {
        "name": "10.96.0.1_443", "address": "10.96.0.1", "port": 443, "bind_to_port": False,
        "use_original_dst": False, "original_dst_filter": False, "direction": "OUTBOUND", "default_chain": None,
        "sniff": False, "chains": [tcp_chain("", cluster)]}


def test_sniffed_vip_listener_with_http_and_tcp_chains() -> None:
    """Unnamed port: RDS <fqdn>:<port> on the HTTP chain, a TCP chain to the cluster (2.1)."""
    fqdn = "reviews.default.svc.cluster.local"
    js = {"name": "10.96.100.13_9080",
          "address": {"socket_address": {"address": "10.96.100.13", "port_value": 9080}},
          "filter_chains": [
              {"filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
               "filters": [hcm(rds(f"{fqdn}:9080"))]},
              {"filter_chain_match": {}, "filters": [STATS, tcp_proxy(f"outbound|9080||{fqdn}")]}],
          "listener_filters": LISTENER_FILTERS_OUT, "bind_to_port": False, "traffic_direction": "OUTBOUND"}
    out = translate(js)
    assert out["chains"][0]["http"]["rds"] == f"{fqdn}:9080"
    assert out["chains"][1]["tcp"]["cluster"] == f"outbound|9080||{fqdn}"
    assert out["chains"][1]["match"] == ANY_MATCH
    assert out["sniff"] is True


# -- sidecar inbound --------------------------------------------------------------------------------
def test_virtual_inbound() -> None:
    out = translate(VIRTUAL_INBOUND)
    assert (out["name"], out["address"], out["port"], out["direction"], out["use_original_dst"],
            out["original_dst_filter"], out["bind_to_port"], out["sniff"]) == (
        "virtualInbound", "0.0.0.0", 15006, "INBOUND", False, True, True, True)
    chains = out["chains"]
    assert [(c["name"], c["kind"], c["tls"], c["unsupported"] is not None) for c in chains] == [
        ("virtualInbound-blackhole", "tcp", False, False),
        ("0.0.0.0_8080", "http", True, True),
        ("0.0.0.0_8080", "http", False, False),
        ("0.0.0.0_8080", "tcp", True, True),
        ("0.0.0.0_8080", "tcp", False, False),
        ("0.0.0.0_8080", "tcp", False, False),
        ("virtualInbound-catchall-http", "http", True, True),
        ("virtualInbound-catchall-http", "http", False, False),
        ("virtualInbound", "tcp", True, True),
        ("virtualInbound", "tcp", False, False),
        ("virtualInbound", "tcp", False, False)]
    assert chains[0] == tcp_chain("virtualInbound-blackhole", "BlackHoleCluster", port=15006)
    # mTLS chains: kept for Envoy's matching, never served in plaintext
    assert chains[1]["unsupported"] == "TLS termination on a mesh filter chain (mesh mTLS) is not implemented"
    assert chains[1]["match"] == cmatch(port=8080, transport="tls", alpn=MTLS_HTTP_ALPN)
    assert chains[3]["match"] == cmatch(port=8080, transport="tls", alpn=MTLS_TCP_ALPN)
    # plaintext HTTP chain: inline route config inbound|8080||
    http = chains[2]["http"]
    assert chains[2]["match"] == cmatch(port=8080, transport="raw_buffer", alpn=["http/1.1", "h2c"])
    assert http["rds"] is None
    assert http["filters"] == ["istio.metadata_exchange", "envoy.filters.http.grpc_stats", "envoy.filters.http.fault",
                               "envoy.filters.http.cors", "istio.stats", "envoy.filters.http.router"]
    assert (http["server_name"], http["stat_prefix"], http["cors"]) == ("istio-envoy", "inbound_0.0.0.0_8080", True)
    table = http["routes"]
    assert table["name"] == "inbound|8080||"
    [vh] = table["virtual_hosts"]
    assert (vh["name"], vh["domains"]) == ("inbound|http|8080", ["*"])
    [r] = vh["routes"]
    assert (r["name"], r["action"], r["timeout"], r["decorator"]) == (
        "default", {"kind": "cluster", "cluster": "inbound|8080||"}, 0.0,
        "productpage.default.svc.cluster.local:8080/*")
    assert chains[4] == tcp_chain("0.0.0.0_8080", "inbound|8080||", port=8080, transport="raw_buffer")
    assert chains[5] == tcp_chain("0.0.0.0_8080", "inbound|8080||", port=8080, transport="tls")
    # catch-alls: prefix_len 0 is 0.0.0.0/0
    assert chains[9] == tcp_chain("virtualInbound", PT, dst=[["0.0.0.0", 0]], transport="raw_buffer")
    assert chains[7]["http"]["routes"]["name"] == "inbound|0||"


def test_cidr_without_prefix_len_is_prefix_0() -> None:
    """Envoy: an unset CidrRange.prefix_len is 0 (not a host route)."""
    js = {"name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
          "filter_chains": [{"filter_chain_match": {
              "prefix_ranges": [{"address_prefix": "0.0.0.0"}, {"address_prefix": "10.1.0.0", "prefix_len": 16},
                                {"address_prefix": "::", "prefix_len": 0}],
              "source_prefix_ranges": [{"address_prefix": "127.0.0.6", "prefix_len": 32}],
              "direct_source_prefix_ranges": [{"address_prefix": "fd00::1", "prefix_len": 128}],
              "source_type": "SAME_IP_OR_LOOPBACK", "source_ports": [1234],
              "server_names": ["Reviews.Example.COM"]},
              "filters": [tcp_proxy("c")]}]}
    [c] = translate(js)["chains"]
    assert c["match"] == cmatch(dst=[["0.0.0.0", 0], ["10.1.0.0", 16], ["::", 0]], src=[["127.0.0.6", 32]],
                                direct_src=[["fd00::1", 128]], source_type="SAME_IP_OR_LOOPBACK", src_ports=[1234],
                                sni=["reviews.example.com"])


# -- gateway ----------------------------------------------------------------------------------------
def test_gateway_listener_8080() -> None:
    out = translate(GATEWAY_8080)
    assert (out["name"], out["address"], out["port"], out["bind_to_port"], out["sniff"]) == (
        "0.0.0.0_8080", "0.0.0.0", 8080, True, False)
    [c] = out["chains"]
    assert c["match"] == ANY_MATCH
    assert c["http"] == {"rds": "http.8080", "rds_timeout": None, "routes": None, "websocket": True, "fault": None, "cors": True,
                         "stat_prefix": "outbound_0.0.0.0_8080", "use_remote_address": True, "xff_hops": 1,
                         "skip_xff_append": False, "normalize_path": True, "merge_slashes": True,
                         "stream_idle_timeout": 0.0, "request_timeout": 30.0, "idle_timeout": 3600.0,
                         "server_name": "istio-envoy",
                         "filters": ["istio.metadata_exchange", "envoy.filters.http.grpc_stats",
                                     "envoy.filters.http.fault", "envoy.filters.http.cors", "istio.stats",
                                     "envoy.filters.http.router"]}


def test_websocket_upgrade_disabled_and_absent() -> None:
    js = copy.deepcopy(OUTBOUND_9080)
    js["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"] = [
        {"upgrade_type": "websocket", "enabled": False}]
    assert translate(js)["chains"][0]["http"]["websocket"] is False
    del js["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"]
    assert translate(js)["chains"][0]["http"]["websocket"] is False


def test_hcm_level_fault_and_optional_filter() -> None:
    js = copy.deepcopy(OUTBOUND_9080)
    filters = js["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    filters[3]["typed_config"]["abort"] = {"http_status": 503, "percentage": {"numerator": 100}}
    filters.insert(0, {"name": "envoy.filters.http.lua", "is_optional": True, "typed_config": {
        "@type": T + "envoy.extensions.filters.http.lua.v3.Lua", "default_source_code": {"inline_string": "x"}}})
    http = translate(js)["chains"][0]["http"]
    assert http["fault"] == {"delay": None, "abort": [503, None, 1.0], "max_active": None}
    assert http["filters"][0] == "envoy.filters.http.lua"


def test_tcp_proxy_weighted_and_idle_timeout() -> None:
    js = copy.deepcopy(KUBERNETES_443)
    js["filter_chains"][0]["filters"][1] = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_URL, "stat_prefix": "s", "idle_timeout": "300s",
        "weighted_clusters": {"clusters": [{"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}}
    [c] = translate(js)["chains"]
    assert c["tcp"] == {"cluster": None, "weighted": [["a", 80], ["b", 20]], "idle_timeout": 300.0,
                        "stat_prefix": "s"}


def test_chain_without_terminal_filter_is_unsupported() -> None:
    js = copy.deepcopy(KUBERNETES_443)
    js["filter_chains"][0]["filters"] = [STATS]
    [c] = translate(js)["chains"]
    assert (c["kind"], c["unsupported"]) == ("none", "filter chain without an HTTP connection manager or TCP proxy")


def test_raw_buffer_transport_socket_accepted() -> None:
    js = copy.deepcopy(KUBERNETES_443)
    js["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
    assert translate(js)["chains"][0]["unsupported"] is None
    js["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.raw_buffer"}
    assert translate(js)["chains"][0]["unsupported"] is None


# -- refusals ---------------------------------------------------------------------------------------
def test_rbac_http_filter_refused() -> None:
    js = copy.deepcopy(VIRTUAL_INBOUND)
    js["filter_chains"][2]["filters"][1]["typed_config"]["http_filters"].insert(1, RBAC_HTTP)
    e = refused(js)
    assert e.pointer == "/filter_chains/2/filters/1/typed_config/http_filters/1"
    assert e.message == ("HTTP filter 'envoy.filters.http.rbac' (type.googleapis.com/envoy.extensions.filters.http."
                         "rbac.v3.RBAC) is not supported")
    # optional or not: serving without the policy would let denied traffic through
    js["filter_chains"][2]["filters"][1]["typed_config"]["http_filters"][1]["is_optional"] = True
    assert refused(js).pointer == "/filter_chains/2/filters/1/typed_config/http_filters/1"


def test_rbac_network_filter_refused() -> None:
    js = copy.deepcopy(VIRTUAL_INBOUND)
    js["filter_chains"][4]["filters"].insert(1, {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "tcp.",
        "rules": {"action": "DENY", "policies": {}}}})
    e = refused(js)
    assert e.pointer == "/filter_chains/4/filters/1"
    assert e.message == ("network filter 'envoy.filters.network.rbac' (type.googleapis.com/envoy.extensions.filters."
                         "network.rbac.v3.RBAC) is not supported")


def test_unknown_listener_filter_refused() -> None:
    js = copy.deepcopy(OUTBOUND_9080)
    js["listener_filters"].append({"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
        "@type": T + "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}})
    e = refused(js)
    assert (e.pointer, e.message) == ("/listener_filters/2",
                                      "listener filter 'envoy.filters.listener.proxy_protocol' is not supported")


def test_router_not_last_refused() -> None:
    js = copy.deepcopy(OUTBOUND_9080)
    filters = js["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    filters.insert(0, filters.pop())
    e = refused(js)
    assert (e.pointer, e.message) == ("/filter_chains/0/filters/0/typed_config/http_filters/0",
                                      "the router filter must be the last HTTP filter")
    filters.pop(0)
    e = refused(js)
    assert (e.pointer, e.message) == ("/filter_chains/0/filters/0/typed_config/http_filters",
                                      "an HTTP connection manager needs the router filter last")


def test_pipe_address_refused() -> None:
    js = copy.deepcopy(KUBERNETES_443)
    js["address"] = {"pipe": {"path": "/var/run/x.sock"}}
    e = refused(js)
    assert (e.pointer, e.message) == ("/address", "pipe listener addresses are not supported; expected socket_address")


def test_address_refusals() -> None:
    for address, pointer, message in [
        ({"socket_address": {"address": "0.0.0.0", "port_value": 443, "protocol": "UDP"}},
         "/address/socket_address/protocol", "only TCP listeners are supported"),
        ({"socket_address": {"address": "0.0.0.0", "named_port": "https"}},
         "/address/socket_address", "named ports are not supported; expected port_value"),
        ({"socket_address": {"address": "reviews.default", "port_value": 9080}},
         "/address/socket_address/address", "'reviews.default' is not an IP address"),
        ({}, "/address", "empty listener addresses are not supported; expected socket_address"),
    ]:
        js = copy.deepcopy(KUBERNETES_443)
        js["address"] = address
        e = refused(js)
        assert (e.pointer, e.message) == (pointer, message), address


def test_duplicate_filter_chain_match_refused() -> None:
    js = copy.deepcopy(VIRTUAL_OUTBOUND)
    js["filter_chains"].append(copy.deepcopy(js["filter_chains"][0]))
    e = refused(js)
    assert (e.pointer, e.message) == ("/filter_chains/2/filter_chain_match",
                                      "filter chain 2 overlaps filter chain 0: the same matching rules "
                                      "(Envoy refuses duplicates)")


def test_overlapping_filter_chain_matches_refused() -> None:
    """Envoy expands each list: [http/1.1, h2c] overlaps [h2c]; the CIDR 10.0.0.1/8 is 10.0.0.0/8."""
    base: dict[str, Any] = {"filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
            "filters": [tcp_proxy("a")]}
    other: dict[str, Any] = {"filter_chain_match": {"transport_protocol": "raw_buffer",
                                                    "application_protocols": ["h2c"]},
             "filters": [tcp_proxy("b")]}
    js: dict[str, Any] = {"name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 1}},
                          "filter_chains": [base, other]}
    assert refused(js).pointer == "/filter_chains/1/filter_chain_match"
    js["filter_chains"][1]["filter_chain_match"]["application_protocols"] = ["h2"]
    assert len(translate(js)["chains"]) == 2
    js["filter_chains"] = [
        {"filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]},
         "filters": [tcp_proxy("a")]},
        {"filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 8}]},
         "filters": [tcp_proxy("b")]}]
    assert refused(js).pointer == "/filter_chains/1/filter_chain_match"


def test_chain_refusals() -> None:
    cases: list[tuple[Any, str, str]] = [
        (lambda c: c["filters"].append(STATS), "/filter_chains/0/filters/1",
         "the TCP proxy must be the last network filter"),
        (lambda c: c.update(use_proxy_proto=True), "/filter_chains/0/use_proxy_proto",
         "PROXY protocol on filter chains is not supported"),
        (lambda c: c.update(filter_chain_match={"address_suffix": "1"}), "/filter_chains/0/filter_chain_match/"
         "address_suffix", "address_suffix matching is not supported"),
        (lambda c: c.update(filter_chain_match={"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 33}]}),
         "/filter_chains/0/filter_chain_match/prefix_ranges/0/prefix_len", "prefix length 33 exceeds 32"),
        (lambda c: c.update(filter_chain_match={"prefix_ranges": [{"address_prefix": "10.0.0.0/8"}]}),
         "/filter_chains/0/filter_chain_match/prefix_ranges/0/address_prefix", "'10.0.0.0/8' is not an IP address"),
        (lambda c: c["filters"][1]["typed_config"].update(cluster=None, weighted_clusters={"clusters": [
            {"name": "a", "weight": 0}]}), "/filter_chains/0/filters/1/typed_config/weighted_clusters",
         "weighted clusters sum to 0; expected a positive total"),
        (lambda c: c["filters"][1]["typed_config"].pop("cluster"), "/filter_chains/0/filters/1/typed_config",
         "TCP proxy without a cluster; expected cluster or weighted_clusters"),
        (lambda c: c["filters"][1]["typed_config"].update(tunneling_config={"hostname": "h"}),
         "/filter_chains/0/filters/1/typed_config/tunneling_config", "TCP tunneling over HTTP is not supported"),
        (lambda c: c.update(transport_socket={"name": "envoy.transport_sockets.upstream_proxy_protocol",
                                              "typed_config": {"@type": T + "envoy.extensions.transport_sockets."
                                                               "proxy_protocol.v3.ProxyProtocolUpstreamTransport"}}),
         "/filter_chains/0/transport_socket",
         "transport socket 'envoy.transport_sockets.upstream_proxy_protocol' is not supported"),
    ]
    for mutate, pointer, message in cases:
        js = copy.deepcopy(KUBERNETES_443)
        mutate(js["filter_chains"][0])
        tp = js["filter_chains"][0]["filters"][1]["typed_config"]
        if tp.get("cluster", "") is None:
            del tp["cluster"]
        e = refused(js)
        assert (e.pointer, e.message) == (pointer, message)


def test_hcm_refusals() -> None:
    def with_hcm(**changes: Any) -> dict[str, Any]:
        js = copy.deepcopy(OUTBOUND_9080)
        cfg = js["filter_chains"][0]["filters"][0]["typed_config"]
        for k, v in changes.items():
            if v is None:
                cfg.pop(k)
            else:
                cfg[k] = v
        return js
    P = "/filter_chains/0/filters/0"
    e = refused(with_hcm(rds=None, scoped_routes={"name": "s"}))
    assert (e.pointer, e.message) == (P + "/typed_config", "HTTP connection manager with scoped_routes; expected rds "
                                                           "or route_config")
    e = refused(with_hcm(rds={"config_source": ADS}))
    assert (e.pointer, e.message) == (P + "/typed_config/rds/route_config_name", "RDS without a route_config_name")
    e = refused(with_hcm(rds=None, route_config={"name": "r", "virtual_hosts": [
        {"name": "a", "domains": ["*"]}, {"name": "b", "domains": ["*"]}]}))
    assert (e.pointer, e.message) == (P + "/typed_config/route_config/virtual_hosts/1/domains",
                                      "domain '*' is already used by virtual host 'a'; domains must be unique")
    js = copy.deepcopy(OUTBOUND_9080)
    js["filter_chains"][0]["filters"].append(STATS)
    e = refused(js)
    assert (e.pointer, e.message) == (P, "the HTTP connection manager must be the last network filter")
    js = copy.deepcopy(OUTBOUND_9080)
    js["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][3]["typed_config"]["abort"] = {
        "http_status": 700}
    e = refused(js)
    assert (e.pointer, e.message) == (P + "/typed_config/http_filters/3/typed_config/abort/http_status",
                                      "abort status 700 out of [200, 600)")
    js = copy.deepcopy(OUTBOUND_9080)
    js["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.lua", "typed_config": {"@type": T + "envoy.extensions.filters.http.lua.v3.Lua"}})
    e = refused(js)
    assert (e.pointer, e.message) == (P + "/typed_config/http_filters/0", "HTTP filter 'envoy.filters.http.lua' "
                                      "(type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua) is not supported")


def test_listener_level_refusals() -> None:
    js = copy.deepcopy(KUBERNETES_443)
    js["name"] = ""
    with pytest.raises(ConfigError) as ei:
        translate(js)
    assert (ei.value.pointer, ei.value.message) == ("/name", "listener without a name")
    js = copy.deepcopy(KUBERNETES_443)
    js["udp_listener_config"] = {}
    e = refused(js)
    assert (e.pointer, e.message) == ("/", "API, internal and UDP listeners are not supported")
    js = copy.deepcopy(KUBERNETES_443)
    js["filter_chain_matcher"] = {"on_no_match": {"action": {"name": "x", "typed_config": {
        "@type": T + "google.protobuf.StringValue", "value": "c"}}}}
    e = refused(js)
    assert e.pointer == "/filter_chain_matcher"


# -- real istiod output -----------------------------------------------------------------------------
def _dump_listeners() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(FIXTURES.glob("*/*config-dump.json")):
        for c in json.loads(f.read_text())["configs"]:
            for d in c.get("dynamicListeners", c.get("dynamic_listeners", [])):
                state = d.get("activeState") or d.get("active_state")
                lst = state["listener"]
                out.append((f"{f.parent.name}/{f.name}:{lst['name']}", lst))
    return out


DUMP_LISTENERS = _dump_listeners()


@pytest.mark.skipif(not DUMP_LISTENERS, reason="no istiod fixtures")
@pytest.mark.parametrize("lst", [lst for _, lst in DUMP_LISTENERS], ids=[i for i, _ in DUMP_LISTENERS])
def test_every_real_istiod_listener_translates(lst: dict[str, Any]) -> None:
    out = translate(lst)
    assert out["name"] == lst["name"]
    assert len(out["chains"]) == len(lst.get("filterChains", lst.get("filter_chains", [])))
    for c in out["chains"]:
        # the only chains Meshgate does not serve are the mTLS ones
        assert (c["unsupported"] is not None) == c["tls"]


def _real(name: str) -> dict[str, Any]:
    for ident, lst in DUMP_LISTENERS:
        if ident == f"default/istiod-config-dump.json:{name}":
            return translate(lst)
    pytest.skip(f"no fixture listener {name}")


def test_real_listeners() -> None:
    vo = _real("virtualOutbound")
    assert [(c["name"], c["tcp"]["cluster"], c["match"]["port"]) for c in vo["chains"]] == [
        ("virtualOutbound-blackhole", "BlackHoleCluster", 15001), ("virtualOutbound-catchall-tcp",
                                                                     "PassthroughCluster", None)]
    assert vo["use_original_dst"] is True
    http = _real("0.0.0.0_9080")
    assert http["bind_to_port"] is False
    assert http["chains"][0]["http"]["rds"] == "9080"
    assert http["default_chain"]["tcp"]["cluster"] == "PassthroughCluster"
    k8s = _real("10.96.0.1_443")
    assert k8s["chains"][0]["tcp"]["cluster"] == "outbound|443||kubernetes.default.svc.cluster.local"
    vi = _real("virtualInbound")
    assert vi["direction"] == "INBOUND"
    inbound = [c for c in vi["chains"] if c["name"] == "0.0.0.0_9080"]
    assert [(c["tls"], c["kind"]) for c in inbound] == [(True, "http"), (False, "http")]
    assert inbound[1]["http"]["routes"]["name"] == "inbound|9080||"
    assert inbound[1]["http"]["routes"]["virtual_hosts"][0]["routes"][0]["action"] == {
        "kind": "cluster", "cluster": "inbound|9080||"}
