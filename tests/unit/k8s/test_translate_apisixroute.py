"""ApisixRoute → routes, upstreams, stream routes (meshgate.k8s.translate.apisixroute)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshgate.k8s.translate import ClusterState, Translation, exprs_to_vars, gen_id, translate_apisix_route
from meshgate.k8s.translate.apisixroute import OPERATORS
from meshgate.errors import ConfigError
from meshgate.plugins import PluginRegistry

from k8stools import load, valid

CLUSTER = load("cluster.yaml")
STATE = ClusterState.from_objects(CLUSTER)


def route(rules: list[dict[str, Any]], *, name: str = "r", ns: str = "demo", stream: list[dict[str, Any]] | None = None,
          api: str = "apisix.apache.org/v2") -> dict[str, Any]:
    spec: dict[str, Any] = {"http": rules}
    if stream is not None:
        spec["stream"] = stream
    return {"apiVersion": api, "kind": "ApisixRoute", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def rule(name: str = "r1", backends: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "match": kw.pop("match", {"paths": ["/*"]})}
    r["backends"] = backends if backends is not None else [{"serviceName": "web", "servicePort": 80}]
    r.update(kw)
    return r


def routes(t: Translation) -> list[dict[str, Any]]:
    return list(t.of_kind("routes").values())


def upstream(t: Translation, r: dict[str, Any]) -> dict[str, Any]:
    """The route's upstream: inline, or the Service's shared upstream it names (without the
    id, name, desc and labels every upstream object carries)."""
    if "upstream" in r:
        return dict(r["upstream"])
    return {k: v for k, v in t.of_kind("upstreams")[r["upstream_id"]].items()
            if k not in ("id", "name", "desc", "labels")}


# --- the seed's productpage ---------------------------------------------------------------


def test_seed_productpage_v2beta2(registry: PluginRegistry) -> None:
    objs = load("productpage.yaml")
    ar = objs[0]
    assert ar["apiVersion"] == "apisix.apache.org/v2beta2"
    t = valid(translate_apisix_route(ar, ClusterState.from_objects(objs[1:])), registry)
    assert t.ok, t.messages()
    assert [i.kind for i in t.items] == ["upstreams", "routes"]
    up, (r,) = t.items[0], routes(t)
    assert t.items[1].id == r["id"] == gen_id("bookinfo_productpage_rule1")
    # the Service's upstream, shared by every route to productpage:9080, named for the Service
    assert r["upstream_id"] == up.id == gen_id("Service_bookinfo_productpage_9080")
    assert up.value["name"] == "Service_bookinfo_productpage_9080"
    assert up.value["labels"] == {"k8s/kind": "Service", "k8s/namespace": "bookinfo", "k8s/name": "productpage",
                                  "k8s/controller-name": "apisix.apache.org/apisix-ingress-controller",
                                  "manager-by": "apisix-ingress-controller"}
    assert r["name"] == "bookinfo_productpage_rule1"
    assert r["hosts"] == ["apisix-istio.dev"]
    assert r["uris"] == ["/*"]
    # ready endpoints only, on the EndpointSlice port of the Service port named "http"
    assert upstream(t, r)["nodes"] == [{"host": "10.244.1.17", "port": 9080, "weight": 100},
                                      {"host": "10.244.2.9", "port": 9080, "weight": 100}]
    assert r["labels"] == {"k8s/kind": "ApisixRoute", "k8s/namespace": "bookinfo", "k8s/name": "productpage",
                           "k8s/controller-name": "apisix.apache.org/apisix-ingress-controller",
                           "manager-by": "apisix-ingress-controller"}
    assert r["desc"] == "Created by apisix-ingress-controller, DO NOT modify it manually"
    assert "plugins" not in r and "vars" not in r


def test_unknown_port_error_text() -> None:
    objs = load("productpage.yaml")
    ar = copy.deepcopy(objs[0])
    ar["spec"]["http"][0]["backends"][0]["servicePort"] = 9081
    t = translate_apisix_route(ar, ClusterState.from_objects(objs[1:]))
    assert [str(e) for e in t.errors] == [
        "ApisixRoute bookinfo/productpage: /spec/http/0/backends/0: service bookinfo/productpage has no port 9081; "
        "it has 9080 (http)"]
    # the route stays, answering from an upstream without nodes instead of falling through
    assert upstream(t, routes(t)[0]) == {"type": "roundrobin", "nodes": []}


def test_missing_service_error_text(registry: PluginRegistry) -> None:
    objs = load("productpage.yaml")
    t = valid(translate_apisix_route(objs[0], ClusterState()), registry)
    assert t.messages() == ["ApisixRoute bookinfo/productpage: /spec/http/0/backends/0: service bookinfo/productpage "
                            "not found; create it or fix serviceName"]


# --- AIC's typical object -----------------------------------------------------------------


def test_typical_weighted_backends_exprs_limit_count_websocket(registry: PluginRegistry) -> None:
    objs = load("httpbin.yaml")
    t = valid(translate_apisix_route(objs[0], ClusterState.from_objects(objs[1:])), registry)
    assert t.ok, t.messages()
    assert [i.kind for i in t.items] == ["upstreams", "upstreams", "routes"]
    (r,) = routes(t)
    first, up = t.items[0], t.items[1]
    assert r["upstream_id"] == first.id
    assert r["id"] == gen_id("default_httpbin-route_r1")
    assert r["hosts"] == ["local.httpbin.org"]
    assert r["vars"] == [["http_x_canary", "==", "true"]]
    assert r["enable_websocket"] is True
    assert r["plugins"]["limit-count"] == {"count": 100, "time_window": 60, "rejected_code": 429}
    assert "cors" not in r["plugins"]  # enable: false
    # node weights are equal within an upstream; the backend weights are traffic-split's
    assert upstream(t, r) == {"type": "roundrobin", "nodes": [{"host": "10.244.0.10", "port": 8080, "weight": 100},
                                                            {"host": "10.244.0.11", "port": 8080, "weight": 100}]}
    assert up.value["nodes"] == [{"host": "10.244.0.20", "port": 8080, "weight": 100}]
    assert r["plugins"]["traffic-split"] == {"rules": [{"weighted_upstreams": [
        {"weight": 90}, {"upstream_id": up.id, "weight": 10}]}]}
    # object labels kept (the empty one dropped: APISIX label values must be non-empty)
    assert r["labels"]["team"] == "web" and "empty" not in r["labels"]
    assert up.value["labels"]["k8s/kind"] == "Service"


def test_ids_stable_and_independent_of_list_order() -> None:
    objs = load("httpbin.yaml")
    a = translate_apisix_route(objs[0], ClusterState.from_objects(objs[1:]))
    b = translate_apisix_route(copy.deepcopy(objs[0]), ClusterState.from_objects(list(reversed(objs[1:]))))
    assert a.items == b.items
    assert [i.id for i in a.items][-1] == gen_id("default_httpbin-route_r1")


def test_weight_zero_kept(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "web", "servicePort": 80, "weight": 0},
                               {"serviceName": "unnamed", "servicePort": 5000, "weight": 100}])])
    t = valid(translate_apisix_route(ar, STATE), registry)
    r = routes(t)[0]
    assert {n["weight"] for n in upstream(t, r)["nodes"]} == {100}   # traffic-split sends it nothing
    assert [w["weight"] for w in r["plugins"]["traffic-split"]["rules"][0]["weighted_upstreams"]] == [0, 100]


def test_failed_backend_is_skipped_others_kept(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "nope", "servicePort": 80},
                               {"serviceName": "unnamed", "servicePort": 5000}])])
    t = valid(translate_apisix_route(ar, STATE), registry)
    assert t.messages() == ["ApisixRoute demo/r: /spec/http/0/backends/0: service demo/nope not found; create it or "
                            "fix serviceName"]
    r = routes(t)[0]
    assert upstream(t, r)["nodes"] == [{"host": "10.0.1.1", "port": 5678, "weight": 100}]
    assert "plugins" not in r


# --- match ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_every_exprs_op(op: str) -> None:
    negated, apisix = OPERATORS[op]
    expr: dict[str, Any] = {"subject": {"scope": "Query", "name": "id"}, "op": op}
    if op in ("In", "NotIn"):
        expr["set"] = ["1", "2"]
        value: Any = ["1", "2"]
    else:
        expr["value"] = "^a" if "Regex" in op else "5"
        value = expr["value"]
    assert exprs_to_vars([expr]) == [["arg_id"] + (["!"] if negated else []) + [apisix, value]]


def test_exprs_ops_table() -> None:
    assert {k: ("! " if n else "") + v for k, (n, v) in OPERATORS.items()} == {
        "Equal": "==", "NotEqual": "~=", "GreaterThan": ">", "GreaterThanEqual": ">=", "LessThan": "<",
        "LessThanEqual": "<=", "In": "in", "NotIn": "! in", "RegexMatch": "~~", "RegexNotMatch": "! ~~",
        "RegexMatchCaseInsensitive": "~*", "RegexNotMatchCaseInsensitive": "! ~*"}


@pytest.mark.parametrize("scope,name,var", [
    ("Header", "X-Real-User", "http_x_real_user"),
    ("Query", "userId", "arg_userId"),
    ("Cookie", "Session", "cookie_Session"),
    ("Path", None, "uri"),
    ("Variable", "remote_addr", "remote_addr"),
    ("Body", "model.version", "post_arg.model.version"),
])
def test_exprs_scopes(scope: str, name: str | None, var: str) -> None:
    subject = {"scope": scope, **({"name": name} if name else {})}
    assert exprs_to_vars([{"subject": subject, "op": "Equal", "value": "x"}]) == [[var, "==", "x"]]


@pytest.mark.parametrize("expr,pointer,text", [
    ({"subject": {"scope": "Form", "name": "a"}, "op": "Equal", "value": "1"}, "/subject/scope", "expected one of"),
    ({"subject": {"scope": "Header"}, "op": "Equal", "value": "1"}, "/subject/name", "needs a name"),
    ({"subject": {"scope": "Query", "name": "a"}, "op": "Like", "value": "1"}, "/op", "got 'Like'"),
    ({"subject": {"scope": "Query", "name": "a"}, "op": "Equal"}, "/value", "op Equal needs a value"),
    ({"subject": {"scope": "Query", "name": "a"}, "op": "In", "value": "1"}, "/set", "needs a non-empty set"),
    ({"subject": {"scope": "Query", "name": "a"}, "op": "RegexMatch", "value": "(["}, "", "invalid regular expression"),
])
def test_exprs_errors(expr: dict[str, Any], pointer: str, text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        exprs_to_vars([expr], "/spec/http/0/match/exprs")
    assert ei.value.pointer.startswith("/spec/http/0/match/exprs/0" + pointer)
    assert text in ei.value.message


def test_match_fields(registry: PluginRegistry) -> None:
    ar = route([rule(match={"paths": ["/api/*", "/exact", "/api/*"], "hosts": ["API.Example.com", "*.example.com"],
                            "methods": ["get", "POST"], "remoteAddrs": ["10.0.0.0/8", "::1"],
                            "exprs": [{"subject": {"scope": "Body", "name": "user.id"}, "op": "GreaterThan",
                                       "value": "10"}]},
                     priority=7, timeout={"connect": "5s", "read": "1m30s"})])
    r = routes(valid(translate_apisix_route(ar, STATE), registry))[0]
    assert r["uris"] == ["/api/*", "/exact"]
    assert r["hosts"] == ["api.example.com", "*.example.com"]
    assert r["methods"] == ["GET", "POST"]
    assert r["remote_addrs"] == ["10.0.0.0/8", "::1"]
    assert r["vars"] == [["post_arg.user.id", ">", "10"]]
    assert r["priority"] == 7
    assert r["timeout"] == {"connect": 5, "send": 60, "read": 90}


def test_timeout_sub_second() -> None:
    r = routes(translate_apisix_route(route([rule(timeout={"connect": "500ms"})]), STATE))[0]
    assert r["timeout"] == {"connect": 0.5, "send": 60, "read": 60}


def test_filter_func_refused_other_rules_kept() -> None:
    ar = route([rule("lua", match={"paths": ["/*"], "filter_func": "function(vars) return true end"}), rule("ok")])
    t = translate_apisix_route(ar, STATE)
    assert len(t.errors) == 1
    e = t.errors[0]
    assert e.pointer == "/spec/http/0/match/filter_func"
    assert "does not run Lua" in e.message and "match.exprs" in e.message
    assert [r["name"] for r in routes(t)] == ["demo_r_ok"]


def test_missing_paths_duplicate_names_empty_backends() -> None:
    ar = route([rule("a", match={"hosts": ["x"]}), rule("b"), rule("b"), rule("c", backends=[])])
    t = translate_apisix_route(ar, STATE)
    assert [(e.pointer, e.message.split(":")[0]) for e in t.errors] == [
        ("/spec/http/0/match/paths", "required field is missing"),
        ("/spec/http/2/name", "duplicate rule name 'b'"),
        ("/spec/http/3/backends", "required field is missing")]
    assert [r["name"] for r in routes(t)] == ["demo_r_b"]


def test_plugin_only_rule(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[], plugins=[{"name": "redirect", "config": {"uri": "/new", "ret_code": 301}}])])
    r = routes(valid(translate_apisix_route(ar, STATE), registry))[0]
    assert "upstream" not in r and r["plugins"] == {"redirect": {"uri": "/new", "ret_code": 301}}


# --- plugins ------------------------------------------------------------------------------


def test_plugin_config_inlined_route_wins(registry: PluginRegistry) -> None:
    ar = route([rule(plugin_config_name="common",
                     plugins=[{"name": "proxy-rewrite", "config": {"host": "from-route.local"}}])])
    r = routes(valid(translate_apisix_route(ar, STATE), registry))[0]
    assert r["plugins"] == {"proxy-rewrite": {"host": "from-route.local"}, "cors": {}}
    assert "plugin_config_id" not in r


def test_plugin_config_other_namespace_and_missing() -> None:
    ar = route([rule(plugin_config_name="common", plugin_config_namespace="demo")], ns="other")
    t = translate_apisix_route(ar, STATE)
    # the Service is looked up in the route's namespace; the plugin config in the given one
    assert "service other/web not found" in t.messages()[0]
    assert routes(t)[0]["plugins"]["proxy-rewrite"] == {"host": "from-plugin-config.local"}
    t = translate_apisix_route(route([rule(plugin_config_name="nope")]), STATE)
    assert t.messages() == ["ApisixRoute demo/r: /spec/http/0/plugin_config_name: ApisixPluginConfig demo/nope "
                            "not found"]
    assert not t.items


def test_secret_ref_merged_dotted_keys_nested(registry: PluginRegistry) -> None:
    ar = route([rule(plugins=[{"name": "proxy-rewrite", "config": {"host": "a.local"}, "secretRef": "rewrite-conf"}])])
    r = routes(valid(translate_apisix_route(ar, STATE), registry))[0]
    assert r["plugins"]["proxy-rewrite"] == {"host": "a.local", "uri": "/v2/anything",
                                             "headers": {"set": {"X-Api-Key": "s3cr3t"}}}
    t = translate_apisix_route(route([rule(plugins=[{"name": "echo", "secretRef": "missing"}])]), STATE)
    assert t.errors[0].pointer == "/spec/http/0/plugins/0/secretRef"
    assert t.errors[0].message.startswith("secret demo/missing not found")


@pytest.mark.parametrize("auth,plugin,conf", [
    ({"enable": True, "type": "keyAuth", "keyAuth": {"header": "X-Key"}}, "key-auth", {"header": "X-Key"}),
    ({"enable": True, "type": "keyAuth"}, "key-auth", {}),
    ({"enable": True}, "basic-auth", {}),
    ({"enable": True, "type": "basicAuth"}, "basic-auth", {}),
    ({"enable": True, "type": "jwtAuth", "jwtAuth": {"header": "X-JWT", "query": "t", "cookie": "c"}}, "jwt-auth",
     {"header": "X-JWT", "query": "t", "cookie": "c"}),
    ({"enable": True, "type": "hmacAuth"}, "hmac-auth", {}),
])
def test_authentication_kinds(auth: dict[str, Any], plugin: str, conf: dict[str, Any],
                              registry: PluginRegistry) -> None:
    r = routes(valid(translate_apisix_route(route([rule(authentication=auth)]), STATE), registry))[0]
    assert r["plugins"] == {plugin: conf}


def test_authentication_disabled() -> None:
    r = routes(translate_apisix_route(route([rule(authentication={"enable": False, "type": "keyAuth"})]), STATE))[0]
    assert "plugins" not in r


@pytest.mark.parametrize("typ,plugin", [("wolfRBAC", "wolf-rbac"), ("ldapAuth", "ldap-auth")])
def test_authentication_unsupported(typ: str, plugin: str) -> None:
    t = translate_apisix_route(route([rule(authentication={"enable": True, "type": typ})]), STATE)
    assert t.messages() == [f"ApisixRoute demo/r: /spec/http/0/authentication/type: authentication type {typ} is "
                            f"not supported: Meshgate has no {plugin} plugin; use one of basicAuth, keyAuth, "
                            "jwtAuth, hmacAuth"]
    assert not t.items


# --- backends -----------------------------------------------------------------------------


def test_apisix_upstream_applied_with_subset(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "web", "servicePort": 80, "subset": "v1"}])])
    t = valid(translate_apisix_route(ar, STATE), registry)
    up = upstream(t, routes(t)[0])
    # pods labelled version=v1 (10.0.0.1, 10.0.0.3) and the endpoint without a Pod targetRef
    assert [n["host"] for n in up["nodes"]] == ["10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert {n["port"] for n in up["nodes"]} == {8080}
    assert (up["type"], up["hash_on"], up["key"]) == ("chash", "header", "X-User")
    assert up["retries"] == 2 and up["timeout"] == {"connect": 5, "send": 60, "read": 90}
    assert (up["pass_host"], up["upstream_host"]) == ("rewrite", "web.internal")
    assert up["scheme"] == "http"  # appProtocol of the port
    assert set(up["tls"]) == {"client_cert", "client_key"}
    assert up["checks"]["active"]["http_path"] == "/healthz"


def test_two_subsets_of_one_service_do_not_collide(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "web", "servicePort": 80, "subset": "v1", "weight": 80},
                               {"serviceName": "web", "servicePort": 80, "subset": "v2", "weight": 20}])])
    t = valid(translate_apisix_route(ar, STATE), registry)
    assert [n["host"] for n in upstream(t, routes(t)[0])["nodes"]] == ["10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert [n["host"] for n in t.of_kind("upstreams")[gen_id("Service_demo_web_80_v2")]["nodes"]] == ["10.0.0.2",
                                                                                                  "10.0.0.5"]


def test_unknown_subset() -> None:
    t = translate_apisix_route(route([rule(backends=[{"serviceName": "web", "servicePort": 80,
                                                      "subset": "canary"}])]), STATE)
    assert t.errors[0].message == "subset 'canary' is not defined in ApisixUpstream demo/web; it has v1, v2"


def test_named_port_and_port_level_settings(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "web", "servicePort": "https"}])])
    up = upstream(t := valid(translate_apisix_route(ar, STATE), registry), routes(t)[0])
    assert {n["port"] for n in up["nodes"]} == {8443}
    assert up["scheme"] == "https" and up["type"] == "roundrobin"
    assert "hash_on" not in up and "key" not in up
    assert up["retries"] == 2  # inherited from the top level


def test_resolve_granularity_service_and_headless(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "unnamed", "servicePort": 5000, "resolveGranularity": "service"}])])
    up = upstream(t := valid(translate_apisix_route(ar, STATE), registry), routes(t)[0])
    assert up["nodes"] == [{"host": "10.96.1.2", "port": 5000, "weight": 100}]
    t = translate_apisix_route(route([rule(backends=[{"serviceName": "headless", "servicePort": 80,
                                                      "resolveGranularity": "service"}])]), STATE)
    assert "headless" in t.errors[0].message


def test_external_name_service(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "ext", "servicePort": 443}])])
    up = upstream(t := valid(translate_apisix_route(ar, STATE), registry), routes(t)[0])
    assert up == {"type": "roundrobin", "nodes": [{"host": "httpbin.org", "port": 443, "weight": 100}],
                  "scheme": "https"}


def test_app_protocol_ws_turns_websocket_on() -> None:
    t = translate_apisix_route(route([rule(backends=[{"serviceName": "web", "servicePort": "ws"}])]), STATE)
    r = routes(t)[0]
    assert r["enable_websocket"] is True and upstream(t, r)["scheme"] == "http"
    r = routes(translate_apisix_route(route([rule(backends=[{"serviceName": "web", "servicePort": "ws"}],
                                                  websocket=False)]), STATE))[0]
    assert r["enable_websocket"] is False


def test_upstreams_external_nodes(registry: PluginRegistry) -> None:
    ar = route([rule(backends=[{"serviceName": "unnamed", "servicePort": 5000, "weight": 50}],
                     upstreams=[{"name": "external-api", "weight": 5}])])
    t = valid(translate_apisix_route(ar, STATE), registry)
    ext = t.of_kind("upstreams")[gen_id("demo_r_0_1")]
    assert ext["nodes"] == [{"host": "api.example.com", "port": 443, "weight": 3},
                            {"host": "httpbin.org", "port": 8443, "weight": 1}]
    assert ext["scheme"] == "https"
    ts = routes(t)[0]["plugins"]["traffic-split"]["rules"][0]["weighted_upstreams"]
    assert ts == [{"weight": 50}, {"upstream_id": gen_id("demo_r_0_1"), "weight": 5}]


def test_upstreams_only_and_missing() -> None:
    t = translate_apisix_route(route([rule(backends=[], upstreams=[{"name": "external-api"}])]), STATE)
    assert upstream(t, routes(t)[0])["nodes"][0]["host"] == "api.example.com"
    t = translate_apisix_route(route([rule(backends=[], upstreams=[{"name": "nope"}])]), STATE)
    assert t.messages() == ["ApisixRoute demo/r: /spec/http/0/upstreams/0/name: ApisixUpstream demo/nope not found"]


def test_discovery_backend_needs_no_service(registry: PluginRegistry) -> None:
    t = valid(translate_apisix_route(route([rule(backends=[{"serviceName": "registry", "servicePort": 80}])]),
                                     STATE), registry)
    assert t.ok
    assert upstream(t, routes(t)[0]) == {"type": "roundrobin", "service_name": "a6-demo", "discovery_type": "nacos",
                                        "discovery_args": {"namespace_id": "public", "group_name": "DEFAULT_GROUP"}}


# --- stream -------------------------------------------------------------------------------


def test_stream_routes(registry: PluginRegistry) -> None:
    ar = route([], stream=[
        {"name": "tcp", "protocol": "TCP", "match": {"ingressPort": 9100, "host": "Echo.Example.com"},
         "backend": {"serviceName": "tcp-echo", "servicePort": 9000},
         "plugins": [{"name": "limit-conn", "config": {"conn": 10, "burst": 0, "default_conn_delay": 0.1,
                                                       "key": "remote_addr"}}]},
        {"name": "udp", "protocol": "UDP", "match": {"ingressPort": 9200},
         "backend": {"serviceName": "tcp-echo", "servicePort": "tcp", "resolveGranularity": "service"}},
    ])
    t = valid(translate_apisix_route(ar, STATE), registry)
    assert t.ok, t.messages()
    srs = t.of_kind("stream_routes")
    tcp, udp = srs[gen_id("demo_r_tcp_TCP")], srs[gen_id("demo_r_udp_UDP")]
    assert tcp["server_port"] == 9100 and tcp["sni"] == "echo.example.com"
    assert tcp["upstream"]["nodes"] == [{"host": "10.0.2.1", "port": 9001, "weight": 100}]
    assert "limit-conn" in tcp["plugins"]
    assert udp["server_port"] == 9200 and udp["upstream"]["nodes"] == [{"host": "10.96.1.9", "port": 9000,
                                                                         "weight": 100}]
    assert tcp["labels"]["k8s/kind"] == "ApisixRoute"


def test_stream_rule_name_shared_with_http_is_duplicate() -> None:
    ar = route([rule("x")], stream=[{"name": "x", "protocol": "TCP", "match": {"ingressPort": 9100},
                                     "backend": {"serviceName": "tcp-echo", "servicePort": 9000}}])
    t = translate_apisix_route(ar, STATE)
    assert t.errors[0].pointer == "/spec/stream/0/name"


# --- names --------------------------------------------------------------------------------


def test_v2beta3_same_fields_and_long_names(registry: PluginRegistry) -> None:
    long = "a" * 240
    ar = route([rule(long)], name="n" * 60, api="apisix.apache.org/v2beta3")
    t = valid(translate_apisix_route(ar, STATE), registry)
    r = routes(t)[0]
    full = f"demo_{'n' * 60}_{long}"
    assert r["id"] == gen_id(full) and len(r["name"]) == 256 and r["name"].endswith(gen_id(full))


def test_routes_to_one_service_port_share_its_upstream(registry: PluginRegistry) -> None:
    a = valid(translate_apisix_route(route([rule()], name="a"), STATE), registry)
    b = valid(translate_apisix_route(route([rule(match={"paths": ["/b"]})], name="b", ns="demo"), STATE), registry)
    (ua,), (ub,) = a.of_kind("upstreams").items(), b.of_kind("upstreams").items()
    assert ua == ub and ua[0] == gen_id("Service_demo_web_80")
    assert routes(a)[0]["upstream_id"] == routes(b)[0]["upstream_id"] == ua[0]
    # what decides the nodes decides the upstream: granularity and a lone zero weight
    c = translate_apisix_route(route([rule(backends=[{"serviceName": "web", "servicePort": 80,
                                                      "resolveGranularity": "service"}])], name="c"), STATE)
    d = translate_apisix_route(route([rule(backends=[{"serviceName": "web", "servicePort": 80, "weight": 0}])],
                                     name="d"), STATE)
    assert list(c.of_kind("upstreams")) == [gen_id("Service_demo_web_80_service")]
    assert list(d.of_kind("upstreams")) == [gen_id("Service_demo_web_80_w0")]
