"""RouteConfiguration → mesh route table, on route configs shaped as istiod emits them
(reference istio-xds.md 2.3 / 3; the real Bookinfo dumps in tests/fixtures/istiod/)."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from meshgate.errors import ConfigError
from meshgate.xds.translate.route import DEFAULT_ROUTE_TIMEOUT, translate_route_config

# Message types the Any fields of the route configs carry must be known to json_format.ParseDict.
for _mod in ("envoy.extensions.filters.http.fault.v3.fault_pb2", "envoy.extensions.filters.http.cors.v3.cors_pb2",
             "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2",
             "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
             "envoy.extensions.retry.host.omit_canary_hosts.v3.omit_canary_hosts_pb2",
             "envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2",
             "udpa.type.v1.typed_struct_pb2", "xds.type.v3.typed_struct_pb2"):
    importlib.import_module(_mod)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "istiod"
REVIEWS = "reviews.default.svc.cluster.local"
V1, V2, V3 = (f"outbound|9080|{s}|{REVIEWS}" for s in ("v1", "v2", "v3"))
DEFAULT_CLUSTER = f"outbound|9080||{REVIEWS}"
FAULT = "envoy.filters.http.fault"
FAULT_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = "envoy.filters.http.cors"
CORS_URL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
VS_CONFIG = "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"

# The mesh defaultHttpRetryPolicy as istiod writes it on every outbound route (2.3).
MESH_RETRY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
    "host_selection_retry_max_attempts": "5",
    "retriable_status_codes": [503],
}
MESH_RETRY_OUT: dict[str, Any] = {"on": ["connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"],
                  "num": 2, "per_try": None, "statuses": [503], "host_attempts": 5, "previous_hosts": True,
                  "backoff": None}
EMPTY_MUTATION: dict[str, Any] = {"req_add": [], "req_remove": [], "resp_add": [], "resp_remove": []}
NO_REWRITE: dict[str, Any] = {"prefix": None, "regex": None, "host": None, "auto_host": False, "host_header": None}


def default_route(cluster: str = DEFAULT_CLUSTER, fqdn: str = REVIEWS) -> dict[str, Any]:
    """BuildDefaultHTTPOutboundRoute: no VirtualService."""
    return {"name": "default", "match": {"prefix": "/"},
            "route": {"cluster": cluster, "timeout": "0s", "retry_policy": copy.deepcopy(MESH_RETRY),
                      "max_grpc_timeout": "0s"},
            "decorator": {"operation": f"{fqdn}:9080/*"}}


def reviews_vhost(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"name": f"{REVIEWS}:9080",
            "domains": [REVIEWS, "reviews", "reviews.default", "reviews.default.svc", "10.96.100.13"],
            "routes": list(routes) or [default_route()], "include_request_attempt_count": True}


ALLOW_ANY: dict[str, Any] = {"name": "allow_any", "domains": ["*"], "routes": [{
    "name": "allow_any", "match": {"prefix": "/"},
    "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"}}],
    "include_request_attempt_count": True}


def route_config(*vhosts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "9080", "virtual_hosts": list(vhosts) or [reviews_vhost(), ALLOW_ANY],
            "validate_clusters": False, "max_direct_response_body_size_bytes": 1048576,
            "ignore_port_in_host_matching": True, **extra}


def parse(js: dict[str, Any]) -> route_pb2.RouteConfiguration:
    js = {k: v for k, v in js.items() if k != "@type"}
    return json_format.ParseDict(js, route_pb2.RouteConfiguration())


def translate(js: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return translate_route_config(parse(js), name=name)


def vs_route(match: dict[str, Any] | None = None, **route_fields: Any) -> dict[str, Any]:
    """A VirtualService-made route (metadata istio.config, mesh retry)."""
    action = {"cluster": V1, "timeout": "0s", "retry_policy": copy.deepcopy(MESH_RETRY), "max_grpc_timeout": "0s"}
    r: dict[str, Any] = {"match": match or {"prefix": "/"}, "route": action,
                         "metadata": {"filter_metadata": {"istio": {"config": VS_CONFIG}}},
                         "decorator": {"operation": f"{REVIEWS}:9080/*"}}
    for k, v in route_fields.items():
        if k in ("typed_per_filter_config", "request_headers_to_add", "request_headers_to_remove",
                 "response_headers_to_add", "response_headers_to_remove", "name"):
            r[k] = v
        elif k in ("redirect", "direct_response"):
            del r["route"]
            r[k] = v
        else:
            action[k] = v
    return r


def one(route: dict[str, Any]) -> dict[str, Any]:
    """The translated form of ``route`` placed alone in the reviews vhost."""
    out = translate(route_config(reviews_vhost(route)))
    routes: list[dict[str, Any]] = out["virtual_hosts"][0]["routes"]
    assert len(routes) == 1
    return routes[0]


def refused(js: dict[str, Any], name: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        translate(js, name=name)
    e = ei.value
    assert e.kind == "route_configs"
    return e


def refused_route(route: dict[str, Any]) -> ConfigError:
    return refused(route_config(reviews_vhost(route)))


def path_match(kind: str, value: str, **kw: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"path": {"kind": kind, "value": value}, "ci": False, "headers": [], "query": [],
                         "grpc": False, "fraction": None}
    m.update(kw)
    return m


# -- the default outbound route config ---------------------------------------------------------------
def test_default_outbound_route_config() -> None:
    out = translate(route_config())
    assert out["name"] == "9080"
    assert out["ignore_port"] is True
    assert out["max_direct_body"] == 1048576
    assert out["headers"] == EMPTY_MUTATION
    reviews, allow_any = out["virtual_hosts"]
    assert reviews == {
        "name": f"{REVIEWS}:9080",
        "domains": [REVIEWS, "reviews", "reviews.default", "reviews.default.svc", "10.96.100.13"],
        "routes": [{
            "name": "default", "match": path_match("prefix", "/"), "action": {"kind": "cluster",
                                                                              "cluster": DEFAULT_CLUSTER},
            "headers": EMPTY_MUTATION, "timeout": 0.0, "idle_timeout": None, "retry": MESH_RETRY_OUT,
            "rewrite": NO_REWRITE, "mirrors": [], "hash": [], "fault": None, "cors": None,
            "metadata_config": None, "decorator": f"{REVIEWS}:9080/*"}],
        "headers": EMPTY_MUTATION, "retry": None, "fault": None, "cors": None, "require_tls": "NONE",
        "attempt_count": True}
    assert allow_any["name"] == "allow_any"
    assert allow_any["domains"] == ["*"]
    [r] = allow_any["routes"]
    assert r["name"] == "allow_any"
    assert r["action"] == {"kind": "cluster", "cluster": "PassthroughCluster"}
    assert r["timeout"] == 0.0 and r["retry"] is None and r["decorator"] is None


def test_block_all_vhost_direct_502() -> None:
    block_all = {"name": "block_all", "domains": ["*"], "routes": [{
        "name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}],
        "include_request_attempt_count": True}
    out = translate(route_config(reviews_vhost(), block_all))
    [r] = out["virtual_hosts"][1]["routes"]
    assert r["action"] == {"kind": "direct", "status": 502, "body": None}


def test_defaults_when_fields_absent() -> None:
    out = translate({"name": "x", "virtual_hosts": [{"name": "v", "domains": ["A.Example.COM"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx"}}}]}]})
    assert out["ignore_port"] is False
    assert out["max_direct_body"] == 4096     # Envoy's default
    vh = out["virtual_hosts"][0]
    assert vh["domains"] == ["a.example.com"]
    assert vh["attempt_count"] is False
    r = vh["routes"][0]
    assert r["name"] == ""
    assert r["timeout"] == DEFAULT_ROUTE_TIMEOUT == 15.0
    assert r["retry"] == {"on": ["5xx"], "num": 1, "per_try": None, "statuses": [], "host_attempts": 1,
                          "previous_hosts": False, "backoff": None}


def test_name_argument_is_used_only_for_errors() -> None:
    out = translate(route_config(), name="listener/chain")
    assert out["name"] == "9080"
    js = route_config(reviews_vhost(), {"name": "dup", "domains": [REVIEWS], "routes": []})
    e = refused(js, name="virtualInbound/0.0.0.0_8080")
    assert e.id == "virtualInbound/0.0.0.0_8080"


def test_older_istio_domains_with_port_and_trailing_dot() -> None:
    vh = reviews_vhost()
    vh["domains"] = [REVIEWS, f"{REVIEWS}.", f"{REVIEWS}:9080", "reviews", "reviews:9080", "10.96.100.13",
                     "10.96.100.13:9080"]
    out = translate(route_config(vh, ALLOW_ANY))
    assert out["virtual_hosts"][0]["domains"] == vh["domains"]


def test_inbound_inline_route_config() -> None:
    """virtualInbound's inline route_config inbound|8080|| (2.2)."""
    out = translate({"name": "inbound|8080||", "virtual_hosts": [{
        "name": "inbound|http|8080", "domains": ["*"], "routes": [{
            "name": "default", "match": {"prefix": "/"},
            "route": {"cluster": "inbound|8080||", "timeout": "0s",
                      "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}},
            "decorator": {"operation": "hello.default.svc.cluster.local:8080/*"}}]}],
        "validate_clusters": False})
    [r] = out["virtual_hosts"][0]["routes"]
    assert r["action"] == {"kind": "cluster", "cluster": "inbound|8080||"}
    assert r["timeout"] == 0.0     # max_stream_duration 0s does not re-arm a timeout
    assert r["retry"] is None
    assert r["decorator"] == "hello.default.svc.cluster.local:8080/*"


def test_max_stream_duration_shortens_timeout() -> None:
    r = one(vs_route(timeout="10s", max_stream_duration={"max_stream_duration": "2.5s"}))
    assert r["timeout"] == 2.5
    r = one(vs_route(timeout="0s", max_stream_duration={"max_stream_duration": "3s"}))
    assert r["timeout"] == 3.0
    r = one(vs_route(timeout="1s", max_stream_duration={"max_stream_duration": "3s"}))
    assert r["timeout"] == 1.0


def test_vs_timeout_retries_and_idle_timeout() -> None:
    r = one(vs_route(timeout="2.500s", idle_timeout="30s", retry_policy={
        "retry_on": "gateway-error,connect-failure,refused-stream", "num_retries": 3, "per_try_timeout": "0.5s",
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": "5",
        "retry_back_off": {"base_interval": "0.025s"},
        "retry_priority": {"name": "envoy.retry_priorities.previous_priorities", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
                     "PreviousPrioritiesConfig", "update_frequency": 2}}}))
    assert r["timeout"] == 2.5
    assert r["idle_timeout"] == 30.0
    assert r["retry"] == {"on": ["gateway-error", "connect-failure", "refused-stream"], "num": 3, "per_try": 0.5,
                          "statuses": [], "host_attempts": 5, "previous_hosts": True, "backoff": [0.025, 0.25]}


def test_retry_backoff_max_and_omit_canary_predicate() -> None:
    r = one(vs_route(retry_policy={"retry_on": "5xx", "retry_back_off": {"base_interval": "1s", "max_interval": "3s"},
                                   "retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts",
                                                             "typed_config": {
                                       "@type": "type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts."
                                                "v3.OmitCanaryHostsPredicate"}}]}))
    assert r["retry"]["backoff"] == [1.0, 3.0]
    assert r["retry"]["previous_hosts"] is False


def test_vhost_retry_policy() -> None:
    vh = reviews_vhost()
    vh["retry_policy"] = {"retry_on": "5xx", "num_retries": 4}
    del vh["routes"][0]["route"]["retry_policy"]
    out = translate(route_config(vh))
    assert out["virtual_hosts"][0]["retry"]["num"] == 4
    assert out["virtual_hosts"][0]["routes"][0]["retry"] is None


# -- VirtualService translations --------------------------------------------------------------------
def test_weighted_v2_v3_50_50_without_total_weight() -> None:
    r = one(vs_route(cluster=None, weighted_clusters={"clusters": [{"name": V2, "weight": 50},
                                                                   {"name": V3, "weight": 50}]}))
    assert r["action"] == {"kind": "weighted", "total": 100, "clusters": [
        {"name": V2, "weight": 50, "headers": EMPTY_MUTATION, "fault": None},
        {"name": V3, "weight": 50, "headers": EMPTY_MUTATION, "fault": None}]}
    assert r["metadata_config"] == VS_CONFIG


def test_weighted_total_is_the_sum_not_the_deprecated_total_weight() -> None:
    """Envoy ignores the deprecated total_weight and picks by the sum of the weights."""
    r = one(vs_route(cluster=None, weighted_clusters={"total_weight": 100, "clusters": [
        {"name": V2, "weight": 20}, {"name": V3, "weight": 30}]}))
    assert r["action"]["total"] == 50


def test_weighted_cluster_headers_and_fault() -> None:
    r = one(vs_route(cluster=None, weighted_clusters={"clusters": [
        {"name": V2, "weight": 90, "request_headers_to_add": [
            {"header": {"key": "x-subset", "value": "v2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "response_headers_to_remove": ["X-Internal"],
         "typed_per_filter_config": {FAULT: {"@type": FAULT_URL, "abort": {
             "http_status": 503, "percentage": {"numerator": 10}}}}},
        {"name": V3, "weight": 10}]}))
    wc = r["action"]["clusters"][0]
    assert wc["headers"] == {"req_add": [["x-subset", "v2", "overwrite_if_exists_or_add"]], "req_remove": [],
                             "resp_add": [], "resp_remove": ["x-internal"]}
    assert wc["fault"] == {"delay": None, "abort": [503, None, 0.1], "max_active": None}


def test_weighted_refusals() -> None:
    e = refused_route(vs_route(cluster=None, weighted_clusters={"clusters": [{"name": V2, "weight": 0}]}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/weighted_clusters",
                                      "weighted clusters sum to 0; expected a positive total")
    e = refused_route(vs_route(cluster=None, weighted_clusters={"clusters": [{"cluster_header": "x-c", "weight": 1}]}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/weighted_clusters/clusters/0/name",
                                      "weighted cluster without a name (cluster_header is not supported)")


def test_header_exact_jason_to_v2_then_default_v1() -> None:
    jason = vs_route({"prefix": "/", "case_sensitive": True,
                      "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]}, cluster=V2)
    out = translate(route_config(reviews_vhost(jason, vs_route()), ALLOW_ANY))
    first, second = out["virtual_hosts"][0]["routes"]
    assert first["match"] == path_match("prefix", "/", headers=[
        {"name": "end-user", "op": "exact", "value": "jason", "ci": False, "invert": False, "missing_empty": False}])
    assert first["action"] == {"kind": "cluster", "cluster": V2}
    assert second["match"] == path_match("prefix", "/")
    assert second["action"] == {"kind": "cluster", "cluster": V1}


def test_fault_delay_7s_100_percent() -> None:
    r = one(vs_route(typed_per_filter_config={FAULT: {"@type": FAULT_URL, "delay": {
        "fixed_delay": "7s", "percentage": {"numerator": 1000000, "denominator": "MILLION"}}}}))
    assert r["fault"] == {"delay": [7.0, 1.0], "abort": None, "max_active": None}


def test_fault_abort_500_100_percent() -> None:
    r = one(vs_route(typed_per_filter_config={FAULT: {"@type": FAULT_URL, "abort": {
        "http_status": 500, "percentage": {"numerator": 100}}}}))
    assert r["fault"] == {"delay": None, "abort": [500, None, 1.0], "max_active": None}


def test_fault_grpc_abort_delay_fraction_and_max_active() -> None:
    r = one(vs_route(typed_per_filter_config={FAULT: {"@type": FAULT_URL,
                                                      "delay": {"fixed_delay": "0.250s", "percentage": {
                                                          "numerator": 2500, "denominator": "TEN_THOUSAND"}},
                                                      "abort": {"grpc_status": 14, "percentage": {
                                                          "numerator": 500000, "denominator": "MILLION"}},
                                                      "max_active_faults": 7}}))
    assert r["fault"] == {"delay": [0.25, 0.25], "abort": [None, 14, 0.5], "max_active": 7}


def test_fault_without_percentage_is_never_injected() -> None:
    """Envoy reads an unset FractionalPercent as 0 %."""
    r = one(vs_route(typed_per_filter_config={FAULT: {"@type": FAULT_URL, "delay": {"fixed_delay": "1s"},
                                                      "abort": {"http_status": 503}}}))
    assert r["fault"] == {"delay": [1.0, 0.0], "abort": [503, None, 0.0], "max_active": None}


def test_empty_fault_is_none_and_fault_in_filter_config_wrapper() -> None:
    r = one(vs_route(typed_per_filter_config={FAULT: {"@type": FAULT_URL}}))
    assert r["fault"] is None
    r = one(vs_route(typed_per_filter_config={FAULT: {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "config": {"@type": FAULT_URL, "abort": {"http_status": 418, "percentage": {"numerator": 100}}}}}))
    assert r["fault"] == {"delay": None, "abort": [418, None, 1.0], "max_active": None}


def test_fault_refusals() -> None:
    p = f"/virtual_hosts/0/routes/0/typed_per_filter_config/{FAULT}"
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"delay": {"header_delay": {}, "percentage": {"numerator": 100}}},
         p + "/delay/header_delay", "header-controlled fault delays are not supported"),
        ({"abort": {"header_abort": {}, "percentage": {"numerator": 100}}},
         p + "/abort/header_abort", "header-controlled fault aborts are not supported"),
        ({"abort": {"http_status": 600}}, p + "/abort/http_status", "abort status 600 out of [200, 600)"),
        ({"abort": {"percentage": {"numerator": 100}}}, p + "/abort",
         "fault abort without http_status or grpc_status"),
        ({"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}}}, p + "/response_rate_limit",
         "fault response_rate_limit is not supported"),
        ({"abort": {"http_status": 503}, "headers": [{"name": "x-chaos", "present_match": True}]},
         p + "/headers", "fault headers restrictions are not supported"),
        ({"abort": {"http_status": 503}, "upstream_cluster": V1}, p + "/upstream_cluster",
         "fault upstream_cluster restrictions are not supported"),
    ]
    for cfg, pointer, message in cases:
        e = refused_route(vs_route(typed_per_filter_config={FAULT: {"@type": FAULT_URL, **cfg}}))
        assert (e.pointer, e.message) == (pointer, message), cfg


def test_mirror_with_runtime_fraction() -> None:
    r = one(vs_route(request_mirror_policies=[
        {"cluster": V2, "runtime_fraction": {"default_value": {"numerator": 500000, "denominator": "MILLION"}},
         "trace_sampled": False},
        {"cluster": V3, "trace_sampled": False}]))
    assert r["mirrors"] == [{"cluster": V2, "fraction": 0.5}, {"cluster": V3, "fraction": 1.0}]


def test_mirror_without_cluster_refused() -> None:
    e = refused_route(vs_route(request_mirror_policies=[{"cluster_header": "x-mirror"}]))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/request_mirror_policies/0/cluster",
                                      "mirror policy without a cluster")


def test_rewrites() -> None:
    r = one(vs_route({"prefix": "/old"}, prefix_rewrite="/new", host_rewrite_literal="ratings.example.com"))
    assert r["rewrite"] == {**NO_REWRITE, "prefix": "/new", "host": "ratings.example.com"}
    r = one(vs_route({"path": "/a/b"}, regex_rewrite={"pattern": {"regex": "^/a/(.*)$"}, "substitution": "/\\1"},
                     auto_host_rewrite=True))
    assert r["rewrite"] == {**NO_REWRITE, "regex": ["^/a/(.*)$", "/\\1"], "auto_host": True}
    r = one(vs_route(host_rewrite_header="X-Host"))
    assert r["rewrite"] == {**NO_REWRITE, "host_header": "x-host"}


def test_rewrite_refusals() -> None:
    e = refused_route(vs_route(prefix_rewrite="/x", regex_rewrite={"pattern": {"regex": "a"}, "substitution": "b"}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/regex_rewrite",
                                      "prefix_rewrite and regex_rewrite are mutually exclusive")
    e = refused_route(vs_route(host_rewrite_path_regex={"pattern": {"regex": "^/(.+)/"}, "substitution": "\\1"}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/host_rewrite_path_regex",
                                      "host rewrite host_rewrite_path_regex is not supported")


@pytest.mark.parametrize("code,status", [(None, 301), ("MOVED_PERMANENTLY", 301), ("FOUND", 302),
                                         ("SEE_OTHER", 303), ("TEMPORARY_REDIRECT", 307),
                                         ("PERMANENT_REDIRECT", 308)])
def test_redirect_response_codes(code: str | None, status: int) -> None:
    redirect: dict[str, Any] = {"path_redirect": "/v1/bookRatings"}
    if code is not None:
        redirect["response_code"] = code
    r = one(vs_route(redirect=redirect))
    assert r["action"] == {"kind": "redirect", "scheme": None, "host": None, "port": None, "path": "/v1/bookRatings",
                           "prefix": None, "regex": None, "status": status, "strip_query": False}


def test_redirect_all_fields() -> None:
    r = one(vs_route(redirect={"https_redirect": True, "host_redirect": "bookinfo.example.com", "port_redirect": 8443,
                               "prefix_rewrite": "/api/", "response_code": "PERMANENT_REDIRECT",
                               "strip_query": True}))
    assert r["action"] == {"kind": "redirect", "scheme": "https", "host": "bookinfo.example.com", "port": 8443,
                           "path": None, "prefix": "/api/", "regex": None, "status": 308, "strip_query": True}
    r = one(vs_route(redirect={"scheme_redirect": "http", "regex_rewrite": {
        "pattern": {"regex": "^/(.*)/old$"}, "substitution": "/\\1/new"}}))
    assert r["action"]["scheme"] == "http"
    assert r["action"]["regex"] == ["^/(.*)/old$", "/\\1/new"]
    assert r["action"]["path"] is None and r["action"]["prefix"] is None


def test_direct_response() -> None:
    r = one(vs_route(direct_response={"status": 503, "body": {"inline_string": "unavailable"}}))
    assert r["action"] == {"kind": "direct", "status": 503, "body": "unavailable"}
    r = one(vs_route(direct_response={"status": 200, "body": {"inline_bytes": "aGk="}}))
    assert r["action"] == {"kind": "direct", "status": 200, "body": "hi"}
    r = one(vs_route(direct_response={"status": 204}))
    assert r["action"] == {"kind": "direct", "status": 204, "body": None}


def test_direct_response_refusals() -> None:
    e = refused_route(vs_route(direct_response={"status": 199}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/direct_response/status", "status 199 out of [200, 600)")
    e = refused_route(vs_route(direct_response={"status": 200, "body": {"filename": "/etc/passwd"}}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/direct_response/body",
                                      "direct response body from filename is not supported; expected inline_string "
                                      "or inline_bytes")
    js = route_config(reviews_vhost(vs_route(direct_response={"status": 200, "body": {"inline_string": "x" * 5000}})))
    del js["max_direct_response_body_size_bytes"]
    e = refused(js)
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/direct_response/body",
                                      "body of 5000 bytes exceeds max_direct_response_body_size_bytes 4096")


def test_header_mutations_at_every_level() -> None:
    route = vs_route(
        request_headers_to_add=[
            {"header": {"key": "x-set", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "x-add", "value": "2"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
            {"header": {"key": "x-default", "value": "3"}},
            {"header": {"key": "x-absent", "value": "4"}, "append_action": "ADD_IF_ABSENT"},
            {"header": {"key": "x-exists", "value": "5"}, "append_action": "OVERWRITE_IF_EXISTS"},
            {"header": {"key": "x-old-append", "value": "6"}, "append": True},
            {"header": {"key": "x-old-set", "value": "7"}, "append": False},
            {"header": {"key": "x-empty", "value": ""}},
            {"header": {"key": "x-kept-empty", "value": ""}, "keep_empty_value": True},
            {"header": {"key": "x-raw", "raw_value": "cmF3"}},
        ],
        request_headers_to_remove=["X-Remove-Me"],
        response_headers_to_add=[{"header": {"key": "x-resp", "value": "r"},
                                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        response_headers_to_remove=["Server"])
    vh = reviews_vhost(route)
    vh["request_headers_to_add"] = [{"header": {"key": "x-vhost", "value": "v"}}]
    vh["response_headers_to_remove"] = ["x-vhost-gone"]
    js = route_config(vh, request_headers_to_add=[{"header": {"key": "x-rc", "value": "c"},
                                                   "append_action": "ADD_IF_ABSENT"}],
                      request_headers_to_remove=["x-rc-gone"],
                      response_headers_to_add=[{"header": {"key": "x-rc-resp", "value": "cr"}}],
                      response_headers_to_remove=["x-rc-resp-gone"])
    out = translate(js)
    r = out["virtual_hosts"][0]["routes"][0]
    assert r["headers"] == {
        "req_add": [["x-set", "1", "overwrite_if_exists_or_add"], ["x-add", "2", "append"],
                    ["x-default", "3", "append"], ["x-absent", "4", "add_if_absent"],
                    ["x-exists", "5", "overwrite_if_exists"], ["x-old-append", "6", "append"],
                    ["x-old-set", "7", "overwrite_if_exists_or_add"], ["x-kept-empty", "", "append"],
                    ["x-raw", "raw", "append"]],
        "req_remove": ["x-remove-me"],
        "resp_add": [["x-resp", "r", "overwrite_if_exists_or_add"]],
        "resp_remove": ["server"]}
    assert out["virtual_hosts"][0]["headers"] == {"req_add": [["x-vhost", "v", "append"]], "req_remove": [],
                                                  "resp_add": [], "resp_remove": ["x-vhost-gone"]}
    assert out["headers"] == {"req_add": [["x-rc", "c", "add_if_absent"]], "req_remove": ["x-rc-gone"],
                              "resp_add": [["x-rc-resp", "cr", "append"]], "resp_remove": ["x-rc-resp-gone"]}


def test_empty_header_name_refused() -> None:
    e = refused_route(vs_route(response_headers_to_add=[{"header": {"key": "", "value": "x"}}]))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/response_headers_to_add/0/header/key",
                                      "empty header name")


CORS_POLICY: dict[str, Any] = {"@type": CORS_URL,
               "allow_origin_string_match": [{"exact": "https://example.com"},
                                             {"prefix": "https://", "ignore_case": True},
                                             {"safe_regex": {"regex": "https://.*\\.example\\.org"}}],
               "allow_methods": "POST,GET", "allow_headers": "X-Foo-Bar", "expose_headers": "X-Expose",
               "max_age": "86400", "allow_credentials": True,
               "filter_enabled": {"default_value": {"numerator": 100}}, "forward_not_matching_preflights": True}
CORS_OUT: dict[str, Any] = {"origins": [{"op": "exact", "value": "https://example.com", "ci": False},
                        {"op": "prefix", "value": "https://", "ci": True},
                        {"op": "regex", "value": "https://.*\\.example\\.org", "ci": False}],
            "methods": "POST,GET", "headers": "X-Foo-Bar", "expose": "X-Expose", "max_age": "86400",
            "credentials": True, "enabled": 1.0}


def test_cors_per_filter_config() -> None:
    r = one(vs_route(typed_per_filter_config={CORS: CORS_POLICY}))
    assert r["cors"] == CORS_OUT
    r = one(vs_route(typed_per_filter_config={CORS: {"@type": CORS_URL, "allow_origin_string_match": [
        {"exact": "*"}], "filter_enabled": {"default_value": {"numerator": 0}}}}))
    assert r["cors"] == {"origins": [{"op": "exact", "value": "*", "ci": False}], "methods": "", "headers": "",
                         "expose": "", "max_age": "", "credentials": None, "enabled": 0.0}


def test_cors_vhost_level_and_deprecated_fields() -> None:
    vh = reviews_vhost()
    vh["typed_per_filter_config"] = {CORS: CORS_POLICY}
    assert translate(route_config(vh))["virtual_hosts"][0]["cors"] == CORS_OUT
    deprecated = {k: v for k, v in CORS_POLICY.items() if k not in ("@type", "forward_not_matching_preflights")}
    r = one(vs_route(cors=deprecated))          # RouteAction.cors (istiod before typed_per_filter_config)
    assert r["cors"] == CORS_OUT
    vh = reviews_vhost()
    vh["cors"] = deprecated
    assert translate(route_config(vh))["virtual_hosts"][0]["cors"] == CORS_OUT


def test_hash_policies() -> None:
    r = one(vs_route(hash_policy=[
        {"header": {"header_name": "X-User"}},
        {"cookie": {"name": "session", "ttl": "0s", "path": "/"}, "terminal": True},
        {"connection_properties": {"source_ip": True}},
        {"query_parameter": {"name": "UserId"}}]))
    assert r["hash"] == [{"kind": "header", "name": "x-user", "terminal": False},
                         {"kind": "cookie", "name": "session", "terminal": True},
                         {"kind": "source_ip", "name": "", "terminal": False},
                         {"kind": "query", "name": "UserId", "terminal": False}]


def test_hash_policy_refusals() -> None:
    e = refused_route(vs_route(hash_policy=[{"header": {"header_name": "a"}}, {"filter_state": {"key": "k"}}]))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/hash_policy/1/filter_state",
                                      "hash policy filter_state is not supported")
    e = refused_route(vs_route(hash_policy=[{"terminal": True}]))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/hash_policy/0",
                                      "hash policy without a policy specifier; expected header, cookie, "
                                      "connection_properties or query_parameter")


def test_query_matchers() -> None:
    r = one(vs_route({"prefix": "/", "query_parameters": [
        {"name": "version", "string_match": {"exact": "v2"}},
        {"name": "User", "string_match": {"prefix": "ja", "ignore_case": True}},
        {"name": "id", "string_match": {"safe_regex": {"regex": "[0-9]+"}, "ignore_case": True}},
        {"name": "debug", "present_match": True},
        {"name": "trace"}]}))
    assert r["match"]["query"] == [
        {"name": "version", "op": "exact", "value": "v2", "ci": False},
        {"name": "User", "op": "prefix", "value": "ja", "ci": True},
        {"name": "id", "op": "regex", "value": "[0-9]+", "ci": False},   # ignore_case: no effect on regex
        {"name": "debug", "op": "present", "value": True, "ci": False},
        {"name": "trace", "op": "present", "value": True, "ci": False}]


def test_path_specifiers() -> None:
    assert one(vs_route({"path": "/productpage"}))["match"] == path_match("path", "/productpage")
    assert one(vs_route({"safe_regex": {"regex": "/api/v[0-9]+/.*"}}))["match"] == \
        path_match("regex", "/api/v[0-9]+/.*")
    assert one(vs_route({"path_separated_prefix": "/static"}))["match"] == path_match("sep_prefix", "/static")
    assert one(vs_route({"prefix": "/Login", "case_sensitive": False}))["match"] == \
        path_match("prefix", "/Login", ci=True)
    assert one(vs_route({"prefix": "/", "case_sensitive": True}))["match"]["ci"] is False
    assert one(vs_route({"prefix": "/", "grpc": {}}))["match"]["grpc"] is True
    assert one(vs_route({"prefix": "/", "runtime_fraction": {"default_value": {
        "numerator": 25, "denominator": "HUNDRED"}}}))["match"]["fraction"] == 0.25


@pytest.mark.parametrize("value", ["/", "/static/", "static", "/a?b", "/a#b"])
def test_bad_path_separated_prefix(value: str) -> None:
    e = refused_route(vs_route({"path_separated_prefix": value}))
    assert e.pointer == "/virtual_hosts/0/routes/0/match/path_separated_prefix"
    assert e.message == (f"path_separated_prefix {value!r} must start with '/', not end with '/' and contain "
                         "no '?' or '#'")


def test_header_matchers() -> None:
    r = one(vs_route({"prefix": "/", "headers": [
        {"name": "X-Present", "present_match": True},
        {"name": "x-absent", "present_match": False},
        {"name": "x-no-specifier"},
        {"name": "x-not-jason", "string_match": {"exact": "jason"}, "invert_match": True},
        {"name": "x-range", "range_match": {"start": "10", "end": "20"}},
        {"name": "x-exact", "exact_match": "a"},
        {"name": "x-prefix", "prefix_match": "b"},
        {"name": "x-suffix", "suffix_match": "c"},
        {"name": "x-contains", "contains_match": "d", "treat_missing_header_as_empty": True},
        {"name": "x-regex", "safe_regex_match": {"regex": "v[0-9]"}},
        {"name": "x-sm-regex", "string_match": {"safe_regex": {"regex": "(?i)jason"}, "ignore_case": True}},
        {"name": "x-sm-ci", "string_match": {"suffix": "SON", "ignore_case": True}},
        {"name": "x-sm-contains", "string_match": {"contains": "as"}}]}))
    base = {"ci": False, "invert": False, "missing_empty": False}
    assert r["match"]["headers"] == [
        {**base, "name": "x-present", "op": "present", "value": True},
        {**base, "name": "x-absent", "op": "present", "value": False},
        {**base, "name": "x-no-specifier", "op": "present", "value": True},
        {**base, "name": "x-not-jason", "op": "exact", "value": "jason", "invert": True},
        {**base, "name": "x-range", "op": "range", "value": [10, 20]},
        {**base, "name": "x-exact", "op": "exact", "value": "a"},
        {**base, "name": "x-prefix", "op": "prefix", "value": "b"},
        {**base, "name": "x-suffix", "op": "suffix", "value": "c"},
        {**base, "name": "x-contains", "op": "contains", "value": "d", "missing_empty": True},
        {**base, "name": "x-regex", "op": "regex", "value": "v[0-9]"},
        {**base, "name": "x-sm-regex", "op": "regex", "value": "(?i)jason"},
        {**base, "name": "x-sm-ci", "op": "suffix", "value": "SON", "ci": True},
        {**base, "name": "x-sm-contains", "op": "contains", "value": "as"}]


def test_route_metadata_istio_config_and_decorator() -> None:
    r = one(vs_route(name="reviews-v2-route"))
    assert r["name"] == "reviews-v2-route"
    assert r["metadata_config"] == VS_CONFIG
    assert r["decorator"] == f"{REVIEWS}:9080/*"
    route = vs_route()
    route["metadata"] = {"filter_metadata": {"istio": {"other": "x"}, "envoy.lb": {"k": "v"}}}
    assert one(route)["metadata_config"] is None


def test_gateway_route_config_http_8080() -> None:
    """Gateway RDS http.8080, vhost *:8080 from bookinfo-gateway.yaml's VirtualService (3)."""
    pp = "outbound|9080||productpage.default.svc.cluster.local"

    def gw_route(match: dict[str, Any]) -> dict[str, Any]:
        return {"match": match, "route": {"cluster": pp, "timeout": "0s", "retry_policy": copy.deepcopy(MESH_RETRY),
                                          "max_grpc_timeout": "0s"},
                "metadata": {"filter_metadata": {"istio": {
                    "config": "/apis/networking.istio.io/v1/namespaces/default/virtual-service/bookinfo"}}},
                "decorator": {"operation": "productpage.default.svc.cluster.local:9080/productpage"}}
    out = translate({"name": "http.8080", "virtual_hosts": [{
        "name": "*:8080", "domains": ["*"], "routes": [
            gw_route({"path": "/productpage", "case_sensitive": True}),
            gw_route({"path_separated_prefix": "/static", "case_sensitive": True}),
            gw_route({"path": "/login", "case_sensitive": True}),
            gw_route({"path": "/logout", "case_sensitive": True}),
            gw_route({"path_separated_prefix": "/api/v1/products", "case_sensitive": True})],
        "include_request_attempt_count": True}],
        "validate_clusters": False, "ignore_port_in_host_matching": True})
    assert out["name"] == "http.8080"
    vh = out["virtual_hosts"][0]
    assert vh["name"] == "*:8080" and vh["domains"] == ["*"]
    assert [(r["match"]["path"]["kind"], r["match"]["path"]["value"]) for r in vh["routes"]] == [
        ("path", "/productpage"), ("sep_prefix", "/static"), ("path", "/login"), ("path", "/logout"),
        ("sep_prefix", "/api/v1/products")]
    assert all(r["action"] == {"kind": "cluster", "cluster": pp} for r in vh["routes"])


def test_gateway_blackhole_vhost_and_require_tls() -> None:
    out = translate({"name": "http.8080", "virtual_hosts": [
        {"name": "blackhole:8080", "domains": ["*"]},
        {"name": "bookinfo.example.com:443", "domains": ["bookinfo.example.com"], "require_tls": "ALL",
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]})
    assert out["virtual_hosts"][0]["routes"] == []
    assert out["virtual_hosts"][1]["require_tls"] == "ALL"


def test_cluster_header_action() -> None:
    r = one(vs_route(cluster=None, cluster_header="X-Cluster", cluster_not_found_response_code="NOT_FOUND"))
    assert r["action"] == {"kind": "cluster_header", "header": "x-cluster", "not_found": 404}
    r = one(vs_route(cluster=None, cluster_header="x-c"))
    assert r["action"]["not_found"] == 503


# -- per-filter configs -----------------------------------------------------------------------------
def test_istio_and_ignored_per_filter_configs() -> None:
    r = one(vs_route(typed_per_filter_config={
        "istio.stats": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                        "type_url": "type.googleapis.com/stats.PluginConfig", "value": {}},
        "envoy.filters.http.router": {"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                                      "type_url": "type.googleapis.com/x.Y", "value": {}}}))
    assert r["fault"] is None and r["cors"] is None


def test_unknown_per_filter_config_refused() -> None:
    authz = {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
             "disabled": True}
    e = refused_route(vs_route(typed_per_filter_config={"envoy.filters.http.ext_authz": authz}))
    assert e.pointer == "/virtual_hosts/0/routes/0/typed_per_filter_config/envoy.filters.http.ext_authz"
    assert e.message == ("per-route config of HTTP filter 'envoy.filters.http.ext_authz' "
                         "(type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute) "
                         "is not supported")
    vh = reviews_vhost()
    vh["typed_per_filter_config"] = {"envoy.filters.http.ext_authz": authz}
    e = refused(route_config(vh))
    assert e.pointer == "/virtual_hosts/0/typed_per_filter_config/envoy.filters.http.ext_authz"


def test_filter_config_wrapper_optional_and_disabled() -> None:
    wrap = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
    authz = {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
             "disabled": True}
    r = one(vs_route(typed_per_filter_config={"envoy.filters.http.ext_authz": {
        "@type": wrap, "config": authz, "is_optional": True}}))
    assert r["fault"] is None
    r = one(vs_route(typed_per_filter_config={"envoy.filters.http.ext_authz": {"@type": wrap, "disabled": True}}))
    assert r["fault"] is None
    e = refused_route(vs_route(typed_per_filter_config={"envoy.filters.http.ext_authz": {
        "@type": wrap, "config": authz}}))
    assert e.pointer == "/virtual_hosts/0/routes/0/typed_per_filter_config/envoy.filters.http.ext_authz/config"


def test_fault_config_of_wrong_type_refused() -> None:
    e = refused_route(vs_route(typed_per_filter_config={FAULT: CORS_POLICY}))
    assert e.pointer == f"/virtual_hosts/0/routes/0/typed_per_filter_config/{FAULT}"
    assert e.message == f"expected envoy.extensions.filters.http.fault.v3.HTTPFault, got {CORS_URL}"


# -- refusals ---------------------------------------------------------------------------------------
def test_unsupported_retry_on_refused() -> None:
    e = refused_route(vs_route(retry_policy={"retry_on": "5xx,retriable-bogus"}))
    assert e.pointer == "/virtual_hosts/0/routes/0/route/retry_policy/retry_on"
    assert e.message.startswith("retry condition 'retriable-bogus' is not supported; expected some of 5xx, "
                                "cancelled, connect-failure, deadline-exceeded, ")


def test_retry_refusals() -> None:
    e = refused_route(vs_route(retry_policy={"retry_on": "retriable-headers", "retriable_headers": [
        {"name": "x-retry", "present_match": True}]}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/retry_policy/retriable_headers",
                                      "retry retriable_headers are not supported")
    e = refused_route(vs_route(retry_policy={"retry_on": "5xx", "retriable_request_headers": [
        {"name": ":method", "string_match": {"exact": "GET"}}]}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/retry_policy/retriable_request_headers",
                                      "retry retriable_request_headers are not supported")
    e = refused_route(vs_route(retry_policy={"retry_on": "5xx", "retry_host_predicate": [
        {"name": "custom.predicate"}]}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route/retry_policy/retry_host_predicate/0",
                                      "retry host predicate 'custom.predicate' is not supported")


def test_cluster_specifier_plugin_refused() -> None:
    e = refused_route(vs_route(cluster=None, cluster_specifier_plugin="lookup"))
    assert e.pointer == "/virtual_hosts/0/routes/0/route/cluster_specifier_plugin"
    assert e.message == ("route action cluster_specifier_plugin is not supported; expected cluster, "
                         "weighted_clusters or cluster_header")
    e = refused_route({"match": {"prefix": "/"}, "route": {"timeout": "1s"}})
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/route",
                                      "route action without a cluster is not supported; expected cluster, "
                                      "weighted_clusters or cluster_header")
    e = refused_route({"match": {"prefix": "/"}})
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0", "route action missing is not supported; "
                                                                   "expected route, redirect or direct_response")


def test_duplicate_domains_refused() -> None:
    other = {"name": "reviews-alias", "domains": ["Reviews.Default", "x"], "routes": []}
    e = refused(route_config(reviews_vhost(), other))
    assert (e.pointer, e.message, e.id) == (
        "/virtual_hosts/1/domains",
        f"domain 'reviews.default' is already used by virtual host '{REVIEWS}:9080'; domains must be unique", "9080")
    e = refused(route_config(ALLOW_ANY, {**ALLOW_ANY, "name": "second"}))
    assert e.message == "domain '*' is already used by virtual host 'allow_any'; domains must be unique"


def test_domain_refusals() -> None:
    e = refused(route_config({"name": "v", "domains": ["a.*.com"], "routes": []}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/domains",
                                      "domain 'a.*.com': a wildcard is allowed only as the first or last character")
    e = refused(route_config({"name": "v", "domains": [], "routes": []}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/domains", "virtual host without domains")
    out = translate(route_config({"name": "v", "domains": ["*.example.com", "api.*"], "routes": []}))
    assert out["virtual_hosts"][0]["domains"] == ["*.example.com", "api.*"]


@pytest.mark.parametrize("regex,why", [
    ("(unclosed", "missing ), unterminated subpattern at position 0"),
    ("/api/(?=v1)", "lookahead (?=...) (RE2 has none)"),
    ("(?<!x)y", "negative lookbehind (?<!...) (RE2 has none)"),
    ("(a)\\1", "backreference \\1 (RE2 has none)"),
    ("a*+", "possessive quantifier *+ (RE2 has none)"),
    ("[[:alpha:]]+", "POSIX character class [[:...:]] (Python's re reads it differently)"),
])
def test_bad_regex_refused(regex: str, why: str) -> None:
    e = refused_route(vs_route({"safe_regex": {"regex": regex}}))
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/match/safe_regex/regex",
                                      f"invalid regex {regex!r}: {why}")


@pytest.mark.parametrize("regex", ["[(?=]x", "\\(?=x\\)", "[\\1]", "a+?", "[]]+", "[^]a]", "(?i)x", "(?P<n>a)",
                                   "(?:a|b)", "a{2,3}", "\\0"])
def test_re2_compatible_regex_accepted(regex: str) -> None:
    assert one(vs_route({"safe_regex": {"regex": regex}}))["match"]["path"] == {"kind": "regex", "value": regex}


def test_bad_regex_pointers_elsewhere() -> None:
    e = refused_route(vs_route({"prefix": "/", "headers": [{"name": "x", "safe_regex_match": {"regex": "("}}]}))
    assert e.pointer == "/virtual_hosts/0/routes/0/match/headers/0/safe_regex_match/regex"
    e = refused_route(vs_route({"prefix": "/", "query_parameters": [
        {"name": "q", "string_match": {"safe_regex": {"regex": "("}}}]}))
    assert e.pointer == "/virtual_hosts/0/routes/0/match/query_parameters/0/string_match/safe_regex/regex"
    e = refused_route(vs_route(regex_rewrite={"pattern": {"regex": "("}, "substitution": ""}))
    assert e.pointer == "/virtual_hosts/0/routes/0/route/regex_rewrite/pattern/regex"


def test_match_refusals() -> None:
    e = refused_route({"match": {"headers": [{"name": "x"}]}, "route": {"cluster": "c"}})
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/match",
                                      "route match without a path specifier; expected prefix, path, safe_regex or "
                                      "path_separated_prefix")
    e = refused_route({"match": {"prefix": "/", "tls_context": {"presented": True}}, "route": {"cluster": "c"}})
    assert (e.pointer, e.message) == ("/virtual_hosts/0/routes/0/match/tls_context",
                                      "route match on tls_context is not supported")
    e = refused_route({"match": {"prefix": "/", "headers": [{"name": "x", "string_match": {}}]},
                       "route": {"cluster": "c"}})
    assert e.pointer == "/virtual_hosts/0/routes/0/match/headers/0/string_match"
    assert e.message.startswith("string matcher without a pattern")


def test_route_config_level_refusals() -> None:
    e = refused(route_config(vhds={"config_source": {"ads": {}}}))
    assert (e.pointer, e.message) == ("/vhds", "on-demand virtual hosts (VHDS) are not supported")
    e = refused(route_config(request_mirror_policies=[{"cluster": V2}]))
    assert e.pointer == "/request_mirror_policies"
    e = refused(route_config(typed_per_filter_config={FAULT: {"@type": FAULT_URL, "abort": {
        "http_status": 503, "percentage": {"numerator": 100}}}}))
    assert e.pointer == "/typed_per_filter_config"
    vh = reviews_vhost()
    vh["request_mirror_policies"] = [{"cluster": V2}]
    e = refused(route_config(vh))
    assert e.pointer == "/virtual_hosts/0/request_mirror_policies"


# -- real istiod output -----------------------------------------------------------------------------
def _dump_route_configs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(FIXTURES.glob("*/*config-dump.json")):
        for c in json.loads(f.read_text())["configs"]:
            for r in c.get("dynamicRouteConfigs", c.get("dynamic_route_configs", [])):
                rc = r.get("routeConfig") or r.get("route_config")
                out.append((f"{f.parent.name}/{f.name}:{rc['name']}", rc))
    return out


DUMP_ROUTES = _dump_route_configs()


@pytest.mark.skipif(not DUMP_ROUTES, reason="no istiod fixtures")
@pytest.mark.parametrize("rc", [rc for _, rc in DUMP_ROUTES], ids=[i for i, _ in DUMP_ROUTES])
def test_every_real_istiod_route_config_translates(rc: dict[str, Any]) -> None:
    out = translate(rc)
    assert out["name"] == rc["name"]
    assert [v["name"] for v in out["virtual_hosts"]] == [v["name"] for v in rc.get("virtualHosts",
                                                                                   rc.get("virtual_hosts", []))]
    assert out["virtual_hosts"][-1]["name"] == "allow_any"


def _real(scenario: str) -> dict[str, Any]:
    for ident, rc in DUMP_ROUTES:
        if ident.startswith(f"{scenario}/istiod-config-dump.json:9080"):
            return translate(rc)
    pytest.skip(f"no fixture {scenario}")


def _vh(table: dict[str, Any], app: str) -> dict[str, Any]:
    return next(v for v in table["virtual_hosts"] if v["name"] == f"{app}.default.svc.cluster.local:9080")


def test_real_default_scenario() -> None:
    vh = _vh(_real("default"), "reviews")
    assert vh["domains"] == [REVIEWS, f"{REVIEWS}.", "reviews", "reviews.default.svc", "reviews.default",
                             "10.96.100.13"]
    [r] = vh["routes"]
    assert r["action"] == {"kind": "cluster", "cluster": DEFAULT_CLUSTER}
    assert r["retry"] == {**MESH_RETRY_OUT, "statuses": []}
    assert r["timeout"] == 0.0


def test_real_reviews_v2_v3() -> None:
    [r] = _vh(_real("reviews-v2-v3"), "reviews")["routes"]
    assert r["action"]["kind"] == "weighted"
    assert [(c["name"], c["weight"]) for c in r["action"]["clusters"]] == [(V2, 50), (V3, 50)]
    assert r["action"]["total"] == 100
    assert r["metadata_config"] == VS_CONFIG


def test_real_ratings_delay_and_abort() -> None:
    jason, rest = _vh(_real("ratings-delay"), "ratings")["routes"]
    assert jason["fault"] == {"delay": [7.0, 1.0], "abort": None, "max_active": None}
    assert jason["match"]["headers"][0]["name"] == "end-user"
    assert rest["fault"] is None
    jason, rest = _vh(_real("ratings-abort"), "ratings")["routes"]
    assert jason["fault"] == {"delay": None, "abort": [500, None, 1.0], "max_active": None}
