"""Gateway API → routes, upstreams, ssls and statuses (meshgate.k8s.translate.gatewayapi).

Fixtures: cluster.yaml (namespace demo: Services web, unnamed, headless; ApisixUpstream web;
ApisixPluginConfig common) and gatewayapi.yaml (GatewayClasses, Namespaces, Gateways infra/edge and
demo/internal, a ReferenceGrant, namespace shop, HTTPRoutes).  The https listener's certificate
is a real self-signed one made here.
"""

from __future__ import annotations

import base64
import copy
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshgate.k8s.translate import (ClusterState, RefError, Translation, gateway_class_accepted,
                                    gateway_class_status, gateway_status, gen_id, http_route_gateway_refs,
                                    http_route_parents, http_route_priority, http_route_service_refs,
                                    http_route_status, translate_gateway, translate_http_route)
from meshgate.plugins import PluginRegistry

from k8stools import load, valid

CONTROLLER = "apisix.apache.org/apisix-ingress-controller"
GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE_KIND = {"group": GROUP, "kind": "HTTPRoute"}
NOW, LATER = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"


def make_cert(*names: str, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[str, str]:
    """A self-signed certificate (PEM) for ``names`` (subjectAltName DNS names) and its key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "no-san")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    kpem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
    return pem, kpem


def tls_secret(name: str, ns: str, cert: str, key: str, typ: str = "kubernetes.io/tls") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "type": typ,
            "data": {"tls.crt": base64.b64encode(cert.encode()).decode(),
                     "tls.key": base64.b64encode(key.encode()).decode()}}


EDGE_CERT, EDGE_KEY = make_cert("*.example.com", "example.com")
OBJS = load("cluster.yaml") + load("gatewayapi.yaml") + [tls_secret("edge-cert", "infra", EDGE_CERT, EDGE_KEY)]
STATE = ClusterState.from_objects(OBJS)
ROUTES = {o["metadata"]["name"]: o for o in OBJS if o["kind"] == "HTTPRoute"}
GATEWAYS = {o["metadata"]["name"]: o for o in OBJS if o["kind"] == "Gateway"}
CLASSES = {o["metadata"]["name"]: o for o in OBJS if o["kind"] == "GatewayClass"}

WEB = gen_id("Service_demo_web_80")
UNNAMED = gen_id("Service_demo_unnamed_5000")
CART = gen_id("Service_shop_cart_8080")
ABORT_500 = {"abort": {"http_status": 500, "body": "no valid backend for this route\n"}}
FILTER_500 = {"abort": {"http_status": 500, "body": "this route has a filter that cannot be applied\n"}}


def routes(t: Translation) -> dict[str, dict[str, Any]]:
    """Routes by name."""
    return {r["name"]: r for r in t.of_kind("routes").values()}


def httproute(rules: list[dict[str, Any]], *, name: str = "r", ns: str = "demo", hostnames: list[str] | None = None,
              parents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": parents if parents is not None else [{"name": "edge", "namespace": "infra",
                                                                                "sectionName": "http"}],
                            "rules": rules}
    if hostnames is not None:
        spec["hostnames"] = hostnames
    return {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns,
                                                                           "generation": 1}, "spec": spec}


def one_route(t: Translation) -> dict[str, Any]:
    rs = list(t.of_kind("routes").values())
    assert len(rs) == 1, (rs, t.messages())
    return rs[0]


def conditions(entry: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message)."""
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in entry["conditions"]}


# --- GatewayClass ---------------------------------------------------------------------------------


def test_gateway_class() -> None:
    ours, theirs = CLASSES["meshgate"], CLASSES["other-vendor"]
    assert gateway_class_accepted(ours, CONTROLLER) and not gateway_class_accepted(theirs, CONTROLLER)
    assert not gateway_class_accepted(ours, "example.com/another")
    status = gateway_class_status(ours, controller_name=CONTROLLER, now=NOW)
    assert status == {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                      "message": f"handled by {CONTROLLER}", "observedGeneration": 1,
                                      "lastTransitionTime": NOW}]}
    again = gateway_class_status({**ours, "status": status}, controller_name=CONTROLLER, now=LATER)
    assert again == status, "lastTransitionTime is kept while the status does not flip"
    theirs_status = {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}
    assert gateway_class_status({**theirs, "status": theirs_status}, controller_name=CONTROLLER) == theirs_status


# --- HTTPRoute: matches, names, weights -------------------------------------------------------------


def test_every_match_kind(registry: PluginRegistry) -> None:
    t = valid(translate_http_route(ROUTES["site"], STATE), registry)
    assert t.ok and t.warnings == ()
    assert [(i.kind, i.id) for i in t.items][:2] == [("upstreams", WEB), ("upstreams", UNNAMED)], \
        "the shared upstreams first: the routes refer to them"
    rs = routes(t)
    assert list(rs) == ["demo_site_0_0", "demo_site_0_1", "demo_site_1_0", "demo_site_2_0"]
    exact, api, regex, default = rs.values()
    assert exact["id"] == gen_id("demo_site_0_0")
    assert exact["desc"] == "Created by apisix-ingress-controller, DO NOT modify it manually"
    assert exact["labels"] == {"k8s/kind": "HTTPRoute", "k8s/namespace": "demo", "k8s/name": "site",
                               "k8s/controller-name": CONTROLLER, "manager-by": "apisix-ingress-controller"}
    assert exact["uris"] == ["/exact"] and exact["hosts"] == ["www.example.com"]
    assert exact["upstream_id"] == WEB and "plugins" not in exact and "vars" not in exact
    assert api["uris"] == ["/api", "/api/*"], "a prefix matches whole path elements: /api, /api/..., not /apix"
    assert api["methods"] == ["POST"]
    assert api["vars"] == [["http_x_version", "==", "v2"], ["http_x_env", "~~", "^(prod|stage)$"],
                           ["arg_debug", "==", "1"]], "a second match of the same header name is ignored"
    assert regex["uris"] == ["/*"] and regex["vars"] == [["uri", "~~", "^/items/[0-9]+$"]]
    assert regex["upstream_id"] == WEB
    assert regex["plugins"] == {"traffic-split": {"rules": [{"weighted_upstreams": [
        {"upstream_id": WEB, "weight": 3}, {"upstream_id": UNNAMED, "weight": 1}]}]}}
    assert default["uris"] == ["/*"], "a rule without matches is PathPrefix /"
    ups = t.of_kind("upstreams")
    assert ups[WEB]["name"] == "Service_demo_web_80" and ups[WEB]["labels"]["k8s/kind"] == "Service"
    assert ups[UNNAMED]["nodes"] == [{"host": "10.0.1.1", "port": 5678, "weight": 100}], \
        "node weight is always 100: backendRef weights go to traffic-split"
    assert exact["priority"] == 4664347067391 == http_route_priority(
        hosts=["www.example.com"], path_type="Exact", path="/exact", rule=0, match=0)
    assert http_route_service_refs(ROUTES["site"]) == {("demo", "web"), ("demo", "unnamed")}
    assert http_route_gateway_refs(ROUTES["site"]) == {("infra", "edge")}


def test_priority_packing() -> None:
    assert http_route_priority() == 1023, "PathPrefix / of the first match of the first rule"
    host = (1 << 8 | 15) << 34      # a non-wildcard hostname of 15 characters: the top bits
    assert http_route_priority(hosts=["www.example.com"]) == host | 1023
    assert http_route_priority(hosts=["*.example.com", "www.example.com"]) == host | 1023, "the most specific host"
    assert http_route_priority(path_type="Exact", path="/a") == (2 << 32) | (2 << 21) | 1023
    assert http_route_priority(method=True, headers=2, queries=3, rule=1, match=2) == \
        (1 << 20) | (2 << 15) | (3 << 10) | (1023 - 66)
    top = http_route_priority(hosts=["a" * 300], path_type="Exact", path="/" * 5000, method=True, headers=99,
                              queries=99)
    assert top < 2 ** 53, "exact in JSON and in APISIX's Lua numbers"


def test_priority_gives_gateway_api_precedence(registry: PluginRegistry) -> None:
    def m(path: str, typ: str = "PathPrefix", **more: Any) -> dict[str, Any]:
        return {"path": {"type": typ, "value": path}, **more}

    hdr = {"name": "X-A", "value": "1"}
    route = httproute([
        {"matches": [m("/"), m("/shop"), m("/shop/cart", "Exact"), m("/shop", method="GET"),
                     m("/shop", headers=[hdr]), m("/shop", headers=[hdr, {"name": "X-B", "value": "2"}]),
                     m("/shop", queryParams=[{"name": "q", "value": "1"}]), m("/shop/"),
                     m("^/shop/[a-z]+$", "RegularExpression")],
         "backendRefs": [{"name": "web", "port": 80}]},
        {"matches": [m("/shop")], "backendRefs": [{"name": "web", "port": 80}]},
    ], name="prio", hostnames=["a.example.com"])
    t = valid(translate_http_route(route, STATE), registry)
    ordered = sorted(routes(t).values(), key=lambda r: -r["priority"])
    assert [r["name"].removeprefix("demo_prio_") for r in ordered] == [
        "0_2",   # Exact /shop/cart
        "0_8",   # RegularExpression (between Exact and PathPrefix, as Envoy Gateway)
        "0_3",   # PathPrefix /shop + method
        "0_5",   # + 2 headers
        "0_4",   # + 1 header
        "0_6",   # + 1 query param
        "0_1",   # PathPrefix /shop: the first match of the first rule ...
        "0_7",   # ... then /shop/ (the same prefix) later in the rule
        "1_0",   # ... then the same prefix in a later rule
        "0_0",   # PathPrefix /: the shortest prefix last
    ]


# --- HTTPRoute: filters ----------------------------------------------------------------------------


def test_every_filter(registry: PluginRegistry) -> None:
    t = valid(translate_http_route(ROUTES["filters"], STATE), registry)
    assert t.ok and t.warnings == (), t.messages()
    rs = routes(t)
    headers = rs["demo_filters_0_0"]
    assert headers["plugins"] == {
        "proxy-rewrite": {"headers": {"set": {"X-Tenant": "acme"}, "add": {"X-Trace": "gw"}, "remove": ["X-Debug"]}},
        "response-rewrite": {"headers": {"set": {"Cache-Control": "no-store"}, "add": ["X-Served-By: meshgate"],
                                         "remove": ["Server"]}},
    }
    prefix_redirect = rs["demo_filters_1_0"]
    assert prefix_redirect["uris"] == ["/old", "/old/*"] and "upstream_id" not in prefix_redirect
    assert prefix_redirect["plugins"] == {
        "redirect": {"uri": "https://$host$upstream_uri", "ret_code": 301},
        "proxy-rewrite": {"regex_uri": ["^/old$", "/new", "^/old/(.*)$", "/new/$1"]},
    }, "the new path is computed by proxy-rewrite (rewrite phase, before redirect)"
    full_redirect = rs["demo_filters_2_0"]
    assert full_redirect["plugins"] == {"redirect": {"uri": "$scheme://new.example.com/landing$is_args$args",
                                                     "ret_code": 302}}, "port 80 of the http listener is left out"
    rewrite = rs["demo_filters_3_0"]
    assert rewrite["plugins"] == {"proxy-rewrite": {"host": "internal.example.com",
                                                    "regex_uri": ["^/v1$", "/v2", "^/v1/(.*)$", "/v2/$1"]}}
    assert rewrite["upstream_id"] == WEB
    mirror = rs["demo_filters_4_0"]
    assert mirror["plugins"] == {"proxy-mirror": {"host": "http://10.96.1.1:80", "sample_ratio": 0.25}}
    assert mirror["upstream_id"] == UNNAMED
    cors = rs["demo_filters_5_0"]
    assert cors["plugins"] == {"cors": {
        "allow_origins": "https://app.example.com,https://*.partner.example.com",   # Vary: Origin; never "*"
        "allow_origins_by_regex": [r"^https://app\.example\.com$", r"^https://[^/]+\.partner\.example\.com$"],
        "allow_methods": "GET,POST", "allow_headers": "Authorization", "expose_headers": "X-Request-Id",
        "max_age": 600, "allow_credential": True}}
    ext = rs["demo_filters_6_0"]
    assert ext["plugins"] == {"proxy-rewrite": {"host": "from-plugin-config.local"}, "cors": {}}, \
        "the ApisixPluginConfig's plugins (enable: false dropped)"
    assert rs["demo_filters_7_0"]["plugins"] == {"proxy-rewrite": {"uri": "/index.html"}}
    assert http_route_service_refs(ROUTES["filters"]) == {("demo", "web"), ("demo", "unnamed")}, \
        "the mirror's Service too"


@pytest.mark.parametrize("redirect,listener_port,uri", [
    ({}, 80, "$scheme://$host$request_uri"),
    ({"port": 8443}, 80, "$scheme://$host:8443$request_uri"),
    ({"scheme": "https"}, 8080, "https://$host$request_uri"),
    ({"scheme": "https", "port": 443}, 80, "https://$host$request_uri"),
    ({"scheme": "http", "port": 8080}, 80, "http://$host:8080$request_uri"),
    ({}, 8080, "$scheme://$host:8080$request_uri"),
    ({"hostname": "WWW.Example.com", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}}, 80,
     "$scheme://www.example.com/$is_args$args"),
])
def test_redirect_location(registry: PluginRegistry, redirect: dict[str, Any], listener_port: int, uri: str) -> None:
    gw = {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "demo"},
          "spec": {"gatewayClassName": "meshgate",
                   "listeners": [{"name": "web", "port": listener_port, "protocol": "HTTP"}]}}
    route = httproute([{"filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]}],
                      parents=[{"name": "gw"}])
    t = valid(translate_http_route(route, STATE, gateways=[gw]), registry)
    assert one_route(t)["plugins"] == {"redirect": {"uri": uri, "ret_code": 302}}


def test_prefix_rewrite_table() -> None:
    """Gateway API's ReplacePrefixMatch table, run through the produced regex_uri."""
    from meshgate.plugins.builtin._traffic_util import Substitution, iter_pairs

    def rewrite(prefix: str, replacement: str, path: str) -> str:
        route = httproute([{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                            "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                                "type": "ReplacePrefixMatch", "replacePrefixMatch": replacement}}}],
                            "backendRefs": [{"name": "web", "port": 80}]}])
        pairs = one_route(translate_http_route(route, STATE))["plugins"]["proxy-rewrite"]["regex_uri"]
        for pattern, template in iter_pairs(pairs):
            sub = Substitution(pattern, template)
            m = sub.search(path)
            if m is not None:
                return path[:m.start()] + sub.expand(m) + path[m.end():]
        raise AssertionError(f"no pair matched {path}")

    for prefix, replacement, path, expected in [
        ("/foo", "/xyz", "/foo/bar", "/xyz/bar"), ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"),
        ("/foo/", "/xyz", "/foo/bar", "/xyz/bar"), ("/foo/", "/xyz/", "/foo/bar", "/xyz/bar"),
        ("/foo", "/xyz", "/foo", "/xyz"), ("/foo", "/xyz", "/foo/", "/xyz/"), ("/foo", "", "/foo/bar", "/bar"),
        ("/foo", "", "/foo/", "/"), ("/foo", "", "/foo", "/"), ("/foo", "/", "/foo/", "/"), ("/foo", "/", "/foo", "/"),
        ("/", "/xyz", "/a/b", "/xyz/a/b"), ("/a.b", "/c$d", "/a.b/x", "/c$d/x"),
    ]:
        assert rewrite(prefix, replacement, path) == expected, (prefix, replacement, path)


def test_cors_wildcards_and_credentials(registry: PluginRegistry) -> None:
    def cors(conf: dict[str, Any]) -> Translation:
        return translate_http_route(httproute([{"filters": [{"type": "CORS", "cors": conf}],
                                                "backendRefs": [{"name": "web", "port": 80}]}]), STATE)

    t = valid(cors({"allowOrigins": ["*"], "allowMethods": ["*"], "allowHeaders": ["*"], "allowCredentials": True}),
              registry)
    assert one_route(t)["plugins"]["cors"] == {"allow_origins": "**", "allow_methods": "**", "allow_headers": "**",
                                               "allow_credential": True}, "with credentials * echoes the request"
    t = valid(cors({"allowOrigins": ["https://a.example.com", "https://b.example.com"]}), registry)
    assert one_route(t)["plugins"]["cors"] == {"allow_origins": "https://a.example.com,https://b.example.com",
                                               "allow_methods": "GET,HEAD,POST", "allow_headers": ""}
    t = cors({"allowOrigins": ["*"], "exposeHeaders": ["*"], "allowCredentials": True})
    assert t.messages() == ['HTTPRoute demo/r: /spec/rules/0/filters/0/cors/exposeHeaders: "*" cannot be combined '
                            'with allowCredentials: list the headers to expose']
    assert one_route(t)["plugins"] == {"fault-injection": FILTER_500}


def test_websocket_and_timeouts(registry: PluginRegistry) -> None:
    route = httproute([{"backendRefs": [{"name": "web", "port": 8000}],
                        "timeouts": {"request": "10s", "backendRequest": "2500ms"}}])
    r = one_route(valid(translate_http_route(route, STATE), registry))
    assert r["enable_websocket"] is True, "appProtocol kubernetes.io/ws"
    assert r["timeout"] == {"connect": 2.5, "send": 2.5, "read": 2.5}
    route["spec"]["rules"][0]["timeouts"] = {"request": "0s"}
    assert "timeout" not in one_route(translate_http_route(route, STATE)), "0s: no timeout"


# --- HTTPRoute: backends, references, 500 ------------------------------------------------------------


def test_cross_namespace_and_invalid_backends(registry: PluginRegistry) -> None:
    t = valid(translate_http_route(ROUTES["checkout"], STATE), registry)
    p = "HTTPRoute demo/checkout: /spec/rules"
    assert t.messages() == [
        f"{p}/1/backendRefs/0: backendRef to Service shop/payments is not permitted: create a ReferenceGrant in "
        "namespace shop from HTTPRoutes of namespace demo to Services",
        f"{p}/2/backendRefs/0/kind: backendRef kind multicluster.x-k8s.io/ServiceImport is not supported; refer to a "
        "Service (group \"\", kind Service)",
        f"{p}/3/backendRefs/0: Service demo/nope not found",
    ]
    assert [e.reason for e in t.errors if isinstance(e, RefError)] == ["RefNotPermitted", "InvalidKind",
                                                                       "BackendNotFound"]
    rs = routes(t)
    cart = rs["demo_checkout_0_0"]
    assert cart["upstream_id"] == CART and cart["hosts"] == ["checkout.example.com"] and "plugins" not in cart
    ups = t.of_kind("upstreams")
    assert ups[CART]["nodes"] == [{"host": "10.0.3.1", "port": 8081, "weight": 100},
                                  {"host": "10.0.3.2", "port": 8081, "weight": 100}]
    assert ups[CART]["labels"]["k8s/namespace"] == "shop", "the upstream belongs to the Service"
    pay = rs["demo_checkout_1_0"]
    assert pay["upstream_id"] == WEB
    assert pay["plugins"] == {"fault-injection": {"abort": {"http_status": 500,
                                                            "body": "no valid backend for this route\n",
                                                            "percentage": 25}}}, \
        "the not-permitted backend's share (1 of 1+3) is answered 500"
    assert rs["demo_checkout_2_0"]["plugins"] == {"fault-injection": ABORT_500}
    assert rs["demo_checkout_3_0"]["plugins"] == {"fault-injection": ABORT_500}
    assert "upstream_id" not in rs["demo_checkout_3_0"], "no upstream: the gateway answers, no fall-through"
    assert set(ups) == {CART, WEB}
    assert http_route_service_refs(ROUTES["checkout"]) == {("shop", "cart"), ("shop", "payments"), ("demo", "web"),
                                                           ("demo", "nope")}, "not the ServiceImport"

    status = http_route_status(ROUTES["checkout"], t, STATE, now=NOW)
    (entry,) = status["parents"]
    assert entry["parentRef"] == {"group": GROUP, "kind": "Gateway", "namespace": "infra", "name": "edge",
                                  "sectionName": "https"}
    conds = conditions(entry)
    assert conds["Accepted"] == ("True", "Accepted", "attached to listener(s) https of Gateway infra/edge")
    assert conds["ResolvedRefs"][:2] == ("False", "RefNotPermitted")
    assert "/spec/rules/3/backendRefs/0: Service demo/nope not found" in conds["ResolvedRefs"][2]
    assert "PartiallyInvalid" not in conds
    assert all(c["observedGeneration"] == 4 and c["lastTransitionTime"] == NOW for c in entry["conditions"])


def test_reference_grant_scope(registry: PluginRegistry) -> None:
    route = httproute([{"backendRefs": [{"name": "cart", "namespace": "shop", "port": 8080}]}])
    assert one_route(valid(translate_http_route(route, STATE), registry))["upstream_id"] == CART
    no_grants = translate_http_route(route, STATE, reference_grants=[])
    assert [e.reason for e in no_grants.errors if isinstance(e, RefError)] == ["RefNotPermitted"]
    assert one_route(no_grants)["plugins"] == {"fault-injection": ABORT_500}
    grant = copy.deepcopy(next(o for o in OBJS if o["kind"] == "ReferenceGrant"))
    grant["spec"]["to"] = [{"group": "", "kind": "Service"}]             # every Service of shop
    other = httproute([{"backendRefs": [{"name": "payments", "namespace": "shop", "port": 8080}]}])
    assert translate_http_route(other, STATE, reference_grants=[grant]).ok
    grant["spec"]["from"][0]["namespace"] = "dev"
    assert not translate_http_route(other, STATE, reference_grants=[grant]).ok, "the grant is for routes of dev"


def test_backend_edge_cases(registry: PluginRegistry) -> None:
    zero = translate_http_route(httproute([{"backendRefs": [{"name": "web", "port": 80, "weight": 0}]}]), STATE)
    assert zero.ok and one_route(zero)["plugins"] == {"fault-injection": ABORT_500}, "all weights 0: 500"
    none = translate_http_route(httproute([{"matches": [{"path": {"type": "Exact", "value": "/x"}}]}]), STATE)
    assert none.ok and one_route(valid(none, registry))["plugins"] == {"fault-injection": ABORT_500}
    split = valid(translate_http_route(httproute([{"backendRefs": [{"name": "web", "port": 80, "weight": 0},
                                                                   {"name": "unnamed", "port": 5000}]}]), STATE),
                  registry)
    r = one_route(split)
    assert r["upstream_id"] == UNNAMED, "the first backend of weight > 0"
    assert r["plugins"]["traffic-split"]["rules"][0]["weighted_upstreams"] == [
        {"upstream_id": WEB, "weight": 0}, {"upstream_id": UNNAMED, "weight": 1}]
    t = translate_http_route(httproute([{"backendRefs": [
        {"name": "web", "port": 9999}, {"name": "web"},
        {"name": "web", "port": 80, "filters": [{"type": "RequestHeaderModifier"}]}]}]), STATE)
    assert t.messages() == [
        "HTTPRoute demo/r: /spec/rules/0/backendRefs/0/port: service demo/web has no port 9999; it has 80 (http), "
        "443 (https), 8000 (ws)",
        "HTTPRoute demo/r: /spec/rules/0/backendRefs/1/port: required field is missing: the port of Service demo/web",
        "HTTPRoute demo/r: /spec/rules/0/backendRefs/2/filters: backendRefs[].filters are not supported; put the "
        "filters in the rule's filters",
    ]
    assert one_route(t)["plugins"] == {"fault-injection": ABORT_500}
    redirect = translate_http_route(httproute([{"filters": [{"type": "RequestRedirect", "requestRedirect": {}}],
                                                "backendRefs": [{"name": "nope", "port": 80}]}]), STATE)
    assert redirect.ok and redirect.warnings == ("/spec/rules/0/backendRefs: not used, the rule answers with a "
                                                 "redirect",)


# --- HTTPRoute: errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rule,pointer,message", [
    ({"matches": [{"path": {"type": "RegularExpression", "value": "^/a(?|b|c)$"}}]}, "/matches/0/path/value",
     "the gateway cannot use this regular expression"),
    ({"matches": [{"headers": [{"name": "X-A", "type": "RegularExpression", "value": "x{2,1}"}]}]},
     "/matches/0/headers/0/value", "the gateway cannot use this regular expression"),
    ({"matches": [{"headers": [{"name": "X_A", "value": "1"}]}]}, "/matches/0/headers/0/name",
     "header name 'X_A' cannot be matched: APISIX reads headers as variables http_<name> where '_' stands for '-'"),
    ({"matches": [{"path": {"type": "PathPrefix", "value": "/a*"}}]}, "/matches/0/path/value",
     "'*' in a PathPrefix path cannot be matched literally (APISIX reads it as a wildcard); use RegularExpression"),
    ({"matches": [{"path": {"type": "Exact", "value": "/a"}}],
      "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                                  "replacePrefixMatch": "/b"}}}]},
     "/filters/0/urlRewrite/path/replacePrefixMatch", "ReplacePrefixMatch needs a PathPrefix match; this match is Exact"),
    ({"matches": [{"method": "BREW"}]}, "/matches/0/method",
     "expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH, got 'BREW'"),
])
def test_match_errors_drop_the_match(rule: dict[str, Any], pointer: str, message: str) -> None:
    rule = {**rule, "backendRefs": [{"name": "web", "port": 80}]}
    route = httproute([rule, {"backendRefs": [{"name": "web", "port": 80}]}])
    t = translate_http_route(route, STATE)
    assert len(t.errors) == 1 and t.errors[0].pointer == "/spec/rules/0" + pointer
    assert t.errors[0].message.startswith(message), t.errors[0].message
    assert list(routes(t)) == ["demo_r_1_0"], "only the match that cannot be translated is left out"
    alone = httproute([rule])
    status = http_route_status(alone, translate_http_route(alone, STATE), STATE, now=NOW)
    assert conditions(status["parents"][0])["Accepted"] == ("False", "UnsupportedValue", str(t.errors[0]).split(
        ": ", 1)[1]), "no rule could be translated"
    conds = conditions(http_route_status(route, t, STATE, now=NOW)["parents"][0])
    assert conds["Accepted"][:2] == ("True", "Accepted")
    assert conds["PartiallyInvalid"][:2] == ("True", "UnsupportedValue")
    assert conds["ResolvedRefs"][:2] == ("True", "ResolvedRefs")


@pytest.mark.parametrize("filters,pointer,message", [
    ([{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-A", "value": "$remote_addr"}]}}],
     "/filters/0/requestHeaderModifier/set/0/value",
     "header value '$remote_addr' contains '$' followed by a name or '{': APISIX would substitute a variable there; "
     "remove the '$'"),
    ([{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "Link", "value": "<a:b>"}]}}],
     "/filters/0/responseHeaderModifier/add",
     "header Link: APISIX response-rewrite cannot add a value that is empty, contains ':' or ends with '/'; use set "
     "instead"),
    ([{"type": "RequestRedirect", "requestRedirect": {}}, {"type": "URLRewrite", "urlRewrite": {}}], "/filters",
     "RequestRedirect and URLRewrite cannot be used together in one rule"),
    ([{"type": "RequestRedirect", "requestRedirect": {"statusCode": 305}}], "/filters/0/requestRedirect/statusCode",
     "expected one of 301, 302, 303, 307, 308, got 305"),
    ([{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "web", "port": 80}}},
      {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "web", "port": 80}}}], "/filters/1",
     "only one RequestMirror per rule is supported (APISIX proxy-mirror has one host)"),
    ([{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Lua", "name": "x"}}],
     "/filters/0/extensionRef",
     "ExtensionRef example.com/Lua is not supported; refer to an ApisixPluginConfig (group apisix.apache.org, kind "
     "ApisixPluginConfig) of namespace demo"),
    ([{"type": "ExtensionRef", "extensionRef": {"group": "apisix.apache.org", "kind": "ApisixPluginConfig",
                                                "name": "missing"}}],
     "/filters/0/extensionRef/name", "ApisixPluginConfig demo/missing not found"),
    ([{"type": "Magic"}], "/filters/0/type",
     "filter type 'Magic' is not supported; supported: RequestHeaderModifier, ResponseHeaderModifier, "
     "RequestRedirect, URLRewrite, RequestMirror, CORS, ExtensionRef"),
])
def test_filter_errors_answer_500(registry: PluginRegistry, filters: list[dict[str, Any]], pointer: str,
                                  message: str) -> None:
    t = translate_http_route(httproute([{"filters": filters, "backendRefs": [{"name": "web", "port": 80}]}]), STATE)
    assert [(e.pointer, e.message) for e in t.errors] == [("/spec/rules/0" + pointer, message)]
    r = one_route(valid(t, registry))
    assert r["plugins"] == {"fault-injection": FILTER_500} and "upstream_id" not in r, \
        "a filter that cannot be applied is never skipped: its requests get 500"


def test_extension_ref_kind_is_a_ref_error() -> None:
    t = translate_http_route(httproute([{"filters": [{"type": "ExtensionRef", "extensionRef": {
        "group": "example.com", "kind": "Lua", "name": "x"}}]}]), STATE)
    (entry,) = http_route_status(httproute([]), t, STATE, now=NOW)["parents"]
    assert conditions(entry)["ResolvedRefs"][:2] == ("False", "InvalidKind")


def test_mirror_problems_drop_only_the_mirror(registry: PluginRegistry) -> None:
    t = translate_http_route(httproute([{"filters": [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "headless", "port": 80}}}], "backendRefs": [{"name": "web", "port": 80}]}]), STATE)
    assert t.messages() == ["HTTPRoute demo/r: /spec/rules/0/filters/0/requestMirror/backendRef: Service "
                            "demo/headless has no ClusterIP (headless): RequestMirror needs a Service with a ClusterIP"]
    r = one_route(valid(t, registry))
    assert "plugins" not in r and r["upstream_id"] == WEB
    t = valid(translate_http_route(httproute([{"filters": [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "ext", "port": 443}, "fraction": {"numerator": 1, "denominator": 3}}}],
        "backendRefs": [{"name": "web", "port": 80}]}]), STATE), registry)
    assert one_route(t)["plugins"] == {"proxy-mirror": {"host": "https://httpbin.org:443", "sample_ratio": 0.33333}}


def test_extension_ref_plugins_lose_to_filters(registry: PluginRegistry) -> None:
    t = valid(translate_http_route(httproute([{"filters": [
        {"type": "ExtensionRef", "extensionRef": {"group": "apisix.apache.org", "kind": "ApisixPluginConfig",
                                                  "name": "common"}},
        {"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal"}}],
        "backendRefs": [{"name": "web", "port": 80}]}]), STATE), registry)
    assert one_route(t)["plugins"] == {"proxy-rewrite": {"host": "api.internal"}, "cors": {}}
    assert t.warnings == ("/spec/rules/0/filters: plugin proxy-rewrite of the ExtensionRef is replaced by the rule's "
                          "own filter",)


# --- HTTPRoute: attachment ----------------------------------------------------------------------------


def test_listener_selection_and_hostnames(registry: PluginRegistry) -> None:
    parents = http_route_parents(ROUTES["storefront"], STATE)
    assert [(p.index, p.reason) for p in parents] == [(0, "Accepted"), (1, "Accepted")], \
        "the parentRef to another controller's Gateway is not ours"
    assert [(a.listener, a.hostnames) for a in parents[0].attachments] == [
        ("http", ("shop.example.com", "*.shop.example.com")),
        ("https", ("shop.example.com", "*.shop.example.com")),
        ("shop", ("shop.example.com",)),
    ], "mqtt (TCP) takes no HTTPRoute; shop's selector matches kubernetes.io/metadata.name"
    t = valid(translate_http_route(ROUTES["storefront"], STATE), registry)
    assert one_route(t)["hosts"] == ["shop.example.com", "*.shop.example.com"]
    assert one_route(t)["upstream_id"] == CART

    t = valid(translate_http_route(ROUTES["intranet"], STATE), registry)
    assert one_route(t)["hosts"] == ["wiki.internal.example.com", "*.internal.example.com"], \
        "*.example.com narrowed to the listener's *.internal.example.com; www.example.org dropped"

    stray = translate_http_route(ROUTES["stray"], STATE)
    assert stray.items == () and stray.ok
    assert stray.warnings == ("/spec/parentRefs/0: not attached (NoMatchingListenerHostname): no hostname of the "
                              "route (www.example.org) matches the hostname of listener(s) http "
                              "(*.internal.example.com)",)
    (entry,) = http_route_status(ROUTES["stray"], stray, STATE, now=NOW)["parents"]
    assert conditions(entry)["Accepted"][:2] == ("False", "NoMatchingListenerHostname")


def test_allowed_routes_and_section_names(registry: PluginRegistry) -> None:
    route = ROUTES["preview"]
    t = valid(translate_http_route(route, STATE), registry)
    r = one_route(t)
    assert "hosts" not in r, "listener http has no hostname and the route none: any host"
    assert r["plugins"] == {"fault-injection": ABORT_500}, "Service dev/app does not exist"
    status = http_route_status(route, t, STATE, now=NOW)
    got = [(e["parentRef"].get("sectionName"), e["parentRef"].get("port"), conditions(e)["Accepted"])
           for e in status["parents"]]
    assert got == [
        ("https", None, ("False", "NotAllowedByListeners",
                         "listener https: namespace dev does not match allowedRoutes.namespaces.selector")),
        ("shop", None, ("False", "NotAllowedByListeners",
                        "listener shop: namespace dev does not match allowedRoutes.namespaces.selector")),
        ("nope", None, ("False", "NoMatchingParent", "Gateway infra/edge has no listener named 'nope'")),
        (None, 80, ("True", "Accepted", "attached to listener(s) http of Gateway infra/edge")),
    ]
    # Namespaces given as an argument: shop without labels still has kubernetes.io/metadata.name
    parents = http_route_parents(ROUTES["storefront"], STATE, namespaces=[])
    assert [a.listener for a in parents[0].attachments] == ["http", "shop"], "env=prod unknown: no https"
    same = httproute([{}], ns="shop", parents=[{"name": "internal", "namespace": "demo"}])
    (p,) = http_route_parents(same, STATE)
    assert (p.reason, p.message) == ("NotAllowedByListeners", "listener http only allows routes of namespace demo "
                                                              "(allowedRoutes.namespaces.from: Same)")
    kinds = copy.deepcopy(GATEWAYS["internal"])
    kinds["spec"]["listeners"][0]["allowedRoutes"] = {"kinds": [{"kind": "GRPCRoute"}]}
    (p,) = http_route_parents(httproute([{}], parents=[{"name": "internal"}]), STATE, gateways=[kinds])
    assert (p.reason, p.message) == ("NotAllowedByListeners",
                                     "listener http: allowedRoutes.kinds does not include HTTPRoute")


def test_not_ours() -> None:
    route = httproute([{"backendRefs": [{"name": "web", "port": 80}]}],
                      parents=[{"name": "theirs"}, {"name": "edge", "namespace": "infra", "kind": "Service"}])
    t = translate_http_route(route, STATE)
    assert t.items == () and t.errors == () and t.warnings == ()
    other = {"parentRef": {"name": "theirs", "namespace": "demo"}, "controllerName": "example.com/other-gateway-"
             "controller", "conditions": [{"type": "Accepted", "status": "True"}]}
    route["status"] = {"parents": [other]}
    assert http_route_status(route, t, STATE, now=NOW) == {"parents": [other]}


def test_route_status_keeps_other_controllers_and_transition_times() -> None:
    route = copy.deepcopy(ROUTES["site"])
    t = translate_http_route(route, STATE)
    other = {"parentRef": {"name": "theirs", "namespace": "demo"}, "controllerName": "example.com/x",
             "conditions": []}
    route["status"] = {"parents": [other]}
    first = http_route_status(route, t, STATE, now=NOW)
    assert first["parents"][0] == other and len(first["parents"]) == 2
    route["status"] = first
    route["metadata"]["generation"] = 3
    second = http_route_status(route, t, STATE, now=LATER)
    assert [(c["lastTransitionTime"], c["observedGeneration"]) for c in second["parents"][1]["conditions"]] == \
        [(NOW, 3), (NOW, 3)], "unchanged conditions keep their lastTransitionTime"
    broken = translate_http_route(httproute([{"backendRefs": [{"name": "nope", "port": 80}]}]), STATE)
    route["status"] = second
    third = http_route_status(route, broken, STATE, now=LATER)
    assert [(c["type"], c["status"], c["lastTransitionTime"]) for c in third["parents"][1]["conditions"]] == \
        [("Accepted", "True", NOW), ("ResolvedRefs", "False", LATER)]


# --- Gateway ---------------------------------------------------------------------------------------------


def test_gateway_tls_listener(registry: PluginRegistry) -> None:
    t = valid(translate_gateway(GATEWAYS["edge"], STATE), registry)
    assert t.messages() == ["Gateway infra/edge: /spec/listeners/3/protocol: listener mqtt: protocol TCP is not "
                            "supported: Meshgate serves HTTP and HTTPS listeners (and TLS listeners with tls.mode "
                            "Terminate)"]
    (item,) = t.items
    assert item.kind == "ssls" and item.id == gen_id("Gateway_infra_edge_https")
    assert item.value == {"id": item.id, "desc": "Created by apisix-ingress-controller, DO NOT modify it manually",
                          "labels": {"k8s/kind": "Gateway", "k8s/namespace": "infra", "k8s/name": "edge",
                                     "k8s/controller-name": CONTROLLER, "manager-by": "apisix-ingress-controller"},
                          "snis": ["*.example.com"], "cert": EDGE_CERT, "key": EDGE_KEY}
    assert translate_gateway(GATEWAYS["theirs"], STATE).items == (), "another controller's class"


def gateway(listener: dict[str, Any], ns: str = "demo") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": ns,
                                                                         "generation": 1},
            "spec": {"gatewayClassName": "meshgate", "listeners": [listener]}}


def test_gateway_certificates(registry: PluginRegistry) -> None:
    cert, key = make_cert("api.example.com", "API.example.net")
    lone_cert, lone_key = make_cert()
    other_cert, _ = make_cert("api.example.com")
    secrets = [tls_secret("api", "demo", cert, key), tls_secret("no-san", "demo", lone_cert, lone_key),
               tls_secret("mixed", "demo", other_cert, key), tls_secret("opaque", "demo", cert, key, "Opaque"),
               tls_secret("api", "shop", cert, key)]
    state = ClusterState.from_objects(OBJS + secrets)

    def tls(*refs: dict[str, Any], hostname: str | None = None, protocol: str = "HTTPS") -> Translation:
        listener: dict[str, Any] = {"name": "tls", "port": 443, "protocol": protocol,
                                    "tls": {"certificateRefs": list(refs)}}
        if hostname:
            listener["hostname"] = hostname
        return translate_gateway(gateway(listener), state)

    t = valid(tls({"name": "api"}, {"name": "api", "namespace": "demo"}), registry)
    ssl = t.items[0].value
    assert ssl["snis"] == ["api.example.com", "api.example.net"], "the certificate's DNS names, without hostname"
    assert ssl["certs"] == [cert] and ssl["keys"] == [key], "further certificateRefs"
    assert valid(tls({"name": "api"}, protocol="TLS"), registry).items[0].value["snis"] == ["api.example.com",
                                                                                           "api.example.net"]
    p = "Gateway demo/gw: /spec/listeners/0"
    cases = [
        ({"name": "no-san"}, f"{p}/hostname: listener tls: the certificate has no DNS names (subjectAltName); set "
                             "the listener hostname"),
        ({"name": "mixed"}, f"{p}/tls/certificateRefs/0: listener tls: certificateRef: Secret demo/mixed: tls.key is "
                            "not the key of the certificate in tls.crt"),
        ({"name": "opaque"}, f"{p}/tls/certificateRefs/0: listener tls: certificateRef: Secret demo/opaque is of type "
                             "Opaque; a listener certificate must be a kubernetes.io/tls Secret"),
        ({"name": "missing"}, f"{p}/tls/certificateRefs/0: listener tls: certificateRef: Secret demo/missing not "
                              "found"),
        ({"name": "api", "kind": "ConfigMap"}, f"{p}/tls/certificateRefs/0: listener tls: certificateRef kind "
                                               "core/ConfigMap is not supported; refer to a Secret (group \"\", kind "
                                               "Secret)"),
        ({"name": "api", "namespace": "shop"}, f"{p}/tls/certificateRefs/0: listener tls: certificateRef to Secret "
                                               "shop/api is not permitted: create a ReferenceGrant in namespace shop "
                                               "from Gateways of namespace demo to Secrets"),
    ]
    for ref, message in cases:
        t = tls(ref)
        assert t.messages() == [message] and t.items == (), ref
    assert tls({"name": "no-san"}, hostname="Plain.Example.com").items[0].value["snis"] == ["plain.example.com"]
    assert tls().messages() == [f"{p}/tls/certificateRefs: listener tls: a HTTPS listener needs tls.certificateRefs "
                                "naming a kubernetes.io/tls Secret"]
    grant = {"apiVersion": f"{GROUP}/v1beta1", "kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": "shop"},
             "spec": {"from": [{"group": GROUP, "kind": "Gateway", "namespace": "demo"}],
                      "to": [{"group": "", "kind": "Secret", "name": "api"}]}}
    granted = translate_gateway(gateway({"name": "tls", "port": 443, "protocol": "HTTPS", "tls": {
        "certificateRefs": [{"name": "api", "namespace": "shop"}]}}), state, reference_grants=[grant])
    assert granted.ok and len(granted.items) == 1
    passthrough = translate_gateway(gateway({"name": "tls", "port": 443, "protocol": "TLS",
                                             "tls": {"mode": "Passthrough"}}), state)
    assert passthrough.messages() == [f"{p}/protocol: listener tls: tls.mode Passthrough is not supported: Meshgate "
                                      "terminates TLS (tls.mode: Terminate)"]


def test_gateway_status() -> None:
    previous = {"addresses": [{"type": "IPAddress", "value": "192.0.2.10"}],
                "conditions": [{"type": "Programmed", "status": "True", "lastTransitionTime": NOW}]}
    gw = {**GATEWAYS["edge"], "status": previous}
    status = gateway_status(gw, STATE, routes=ROUTES.values(), now=LATER)
    assert status["addresses"] == previous["addresses"], "kept: Meshgate does not assign addresses"
    assert [(c["type"], c["status"], c["reason"], c["message"], c["lastTransitionTime"])
            for c in status["conditions"]] == [
        ("Accepted", "True", "ListenersNotValid", "listeners not valid: mqtt", LATER),
        ("Programmed", "True", "Programmed", "3 of 4 listeners are programmed", NOW),
    ]
    listeners = {li["name"]: li for li in status["listeners"]}
    assert {n: li["attachedRoutes"] for n, li in listeners.items()} == {"http": 4, "https": 2, "shop": 1, "mqtt": 0}, \
        "http: site, filters, storefront, preview; https: checkout, storefront; shop: storefront"
    assert listeners["https"]["supportedKinds"] == [HTTP_ROUTE_KIND] and listeners["mqtt"]["supportedKinds"] == []
    assert conditions(listeners["https"]) == {
        "Accepted": ("True", "Accepted", "the listener is valid"),
        "ResolvedRefs": ("True", "ResolvedRefs", "all references are resolved"),
        "Programmed": ("True", "Programmed", "the listener is programmed"),
        "Conflicted": ("False", "NoConflicts", "no conflict with other listeners"),
    }
    mqtt = conditions(listeners["mqtt"])
    assert mqtt["Accepted"][:2] == ("False", "UnsupportedProtocol") and mqtt["Programmed"][:2] == ("False", "Invalid")
    assert all(c["observedGeneration"] == 3 for li in status["listeners"] for c in li["conditions"])

    no_cert = ClusterState.from_objects(load("cluster.yaml") + load("gatewayapi.yaml"))
    https = {li["name"]: li for li in gateway_status(GATEWAYS["edge"], no_cert, now=NOW)["listeners"]}["https"]
    assert conditions(https)["ResolvedRefs"] == (
        "False", "InvalidCertificateRef", "listener https: certificateRef: Secret infra/edge-cert not found")
    assert conditions(https)["Programmed"][:2] == ("False", "Invalid")


def test_listener_conflicts() -> None:
    gw = gateway({"name": "a", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"})
    gw["spec"]["listeners"] += [{"name": "b", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
                                {"name": "c", "port": 8443, "protocol": "HTTPS", "tls": {"certificateRefs": []}},
                                {"name": "d", "port": 8443, "protocol": "HTTP"},
                                {"name": "e", "port": 80, "protocol": "HTTP", "hostname": "e.example.com",
                                 "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}, {"kind": "TCPRoute"}]}},
                                {"name": "f", "port": 80, "protocol": "HTTP", "hostname": "f.example.com"}]
    status = gateway_status(gw, STATE, now=NOW)
    conflicted = {li["name"]: conditions(li)["Conflicted"] for li in status["listeners"]}
    assert conflicted == {
        "a": ("True", "HostnameConflict", "listeners a, b on port 80 have the same hostname a.example.com"),
        "b": ("True", "HostnameConflict", "listeners a, b on port 80 have the same hostname a.example.com"),
        "c": ("True", "ProtocolConflict", "port 8443 is shared by listeners of protocols that cannot share it: HTTP, "
                                          "HTTPS"),
        "d": ("True", "ProtocolConflict", "port 8443 is shared by listeners of protocols that cannot share it: HTTP, "
                                          "HTTPS"),
        "e": ("False", "NoConflicts", "no conflict with other listeners"),
        "f": ("False", "NoConflicts", "no conflict with other listeners"),
    }
    e = next(li for li in status["listeners"] if li["name"] == "e")
    assert e["supportedKinds"] == [HTTP_ROUTE_KIND]
    assert conditions(e)["ResolvedRefs"] == ("False", "InvalidRouteKinds", "route kinds gateway.networking.k8s.io/"
                                             "TCPRoute are not supported on a HTTP listener; Meshgate supports "
                                             "HTTPRoute on HTTP and HTTPS listeners")
    assert [(c["reason"], c["message"]) for c in status["conditions"]] == [
        ("ListenersNotValid", "listeners not valid: a, b, c, d"), ("Programmed", "1 of 6 listeners are programmed")]
    route = httproute([{}], hostnames=["a.example.com"], parents=[{"name": "gw", "sectionName": "a"}])
    (p,) = http_route_parents(route, STATE, gateways=[gw])
    assert (p.reason, p.message) == ("NotAllowedByListeners", "listener a is conflicted: listeners a, b on port 80 "
                                                              "have the same hostname a.example.com")


@pytest.mark.parametrize("spec", [
    None, {}, {"parentRefs": "edge"}, {"parentRefs": [None, 3, {"name": "edge", "namespace": "infra", "port": "80"}]},
    {"parentRefs": [{"name": "internal"}], "rules": "all"},
    {"parentRefs": [{"name": "internal"}], "hostnames": [None, 5], "rules": [None, {"matches": "x"}, {
        "matches": [{"path": "/"}, {"path": {"type": "Exact", "value": None}}, {"headers": "x", "queryParams": [1]}],
        "filters": [None, {"type": "RequestMirror", "requestMirror": {"backendRef": "web",
                                                                      "fraction": {"numerator": "1"}}},
                    {"type": "RequestRedirect", "requestRedirect": {"port": "80", "path": "x"}}],
        "backendRefs": [None, {"name": "web", "port": 80, "weight": "2"}, {"name": 7, "port": True}],
        "timeouts": {"request": "soon"}}]},
])
def test_malformed_routes_never_raise(spec: Any) -> None:
    route = {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": "bad", "namespace": "demo"},
             "spec": spec}
    t = translate_http_route(route, STATE)
    http_route_status(route, t, STATE, now=NOW)
    http_route_service_refs(route)
    http_route_gateway_refs(route)


@pytest.mark.parametrize("listeners", [None, "x", [None, {"port": "80"}, {"name": "a", "protocol": "HTTPS", "tls": {
    "certificateRefs": [None, {"name": "edge-cert", "namespace": "infra"}]}, "allowedRoutes": {
        "kinds": "HTTPRoute", "namespaces": {"from": "Selector", "selector": {"matchExpressions": [
            {"key": "env", "operator": "Near"}]}}}}]])
def test_malformed_gateways_never_raise(listeners: Any) -> None:
    gw = {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "bad", "namespace": "demo"},
          "spec": {"gatewayClassName": "meshgate", "listeners": listeners}}
    translate_gateway(gw, STATE)
    gateway_status(gw, STATE, routes=[httproute([{}], parents=[{"name": "bad"}])], now=NOW)


def test_extension_ref_cannot_bring_traffic_split_and_ignored_fields(registry: PluginRegistry) -> None:
    apc = {"apiVersion": "apisix.apache.org/v2", "kind": "ApisixPluginConfig",
           "metadata": {"name": "split", "namespace": "demo"},
           "spec": {"plugins": [{"name": "traffic-split", "config": {"rules": []}},
                                {"name": "limit-count", "config": {"count": 5, "time_window": 60}}]}}
    state = ClusterState.from_objects(OBJS + [apc])
    t = valid(translate_http_route(httproute([{
        "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "apisix.apache.org",
                                                              "kind": "ApisixPluginConfig", "name": "split"}}],
        "backendRefs": [{"name": "web", "port": 80}], "sessionPersistence": {"type": "Cookie"}}]), state), registry)
    assert one_route(t)["plugins"] == {"limit-count": {"count": 5, "time_window": 60}}
    assert t.warnings == ("/spec/rules/0/filters: plugin traffic-split of the ExtensionRef is not used: the "
                          "backendRefs decide where requests go",
                          "/spec/rules/0/sessionPersistence: not supported by Meshgate, ignored")
