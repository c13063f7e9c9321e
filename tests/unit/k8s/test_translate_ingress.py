"""Ingress (networking.k8s.io/v1) → routes, upstreams, ssls (meshgate.k8s.translate.ingress)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshgate.k8s.translate import (ClusterState, Translation, gen_id, ingress_class_matches, ingress_service_refs,
                                    translate_ingress, validate_translation)
from meshgate.plugins import PluginRegistry

from k8stools import load, valid

STATE = ClusterState.from_objects(load("cluster.yaml"))
OBJS = load("ingress.yaml")
INGS = {o["metadata"]["name"]: o for o in OBJS if o["kind"] == "Ingress"}
CLASSES = [o for o in OBJS if o["kind"] == "IngressClass"]
NODES_8080 = [{"host": f"10.0.0.{n}", "port": 8080, "weight": 100} for n in (1, 2, 3, 5)]


def ing(annotations: dict[str, str] | None = None, *, path: str = "/p", path_type: str = "Prefix",
        name: str = "i", host: str | None = "a.example.com", port: dict[str, Any] | None = None,
        service: str = "web") -> dict[str, Any]:
    rule: dict[str, Any] = {"http": {"paths": [{"path": path, "pathType": path_type, "backend": {
        "service": {"name": service, "port": port or {"number": 80}}}}]}}
    if host:
        rule["host"] = host
    meta: dict[str, Any] = {"name": name, "namespace": "demo"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": {"rules": [rule]}}


def routes(t: Translation) -> list[dict[str, Any]]:
    return list(t.of_kind("routes").values())


def one(t: Translation) -> dict[str, Any]:
    rs = routes(t)
    assert len(rs) == 1, t.messages()
    return rs[0]


# --- paths, backends, names, TLS -------------------------------------------------------------------


def test_site_paths_ports_names_tls(registry: PluginRegistry) -> None:
    t = valid(translate_ingress(INGS["site"], STATE), registry)
    assert t.ok, t.messages()
    rs = t.of_kind("routes")
    assert list(rs) == [gen_id(f"demo_site_{i}_{j}") for i, j in ((0, 0), (0, 1), (0, 2), (1, 0))]
    exact, prefix, impl, root = rs.values()
    assert exact["name"] == "demo_site_0_0" and exact["uris"] == ["/exact"] and exact["hosts"] == ["site.example.com"]
    assert prefix["uris"] == ["/api/", "/api/*"], "segment-aware prefix"
    assert impl["uris"] == ["/static/*"], "ImplementationSpecific is taken as written"
    assert root["uris"] == ["/", "/*"] and "hosts" not in root
    assert exact["upstream"]["nodes"] == prefix["upstream"]["nodes"] == NODES_8080, "number and named port agree"
    assert exact["upstream"]["scheme"] == "http"
    assert impl["upstream"]["nodes"] == [{"host": f"10.0.0.{n}", "port": 8443, "weight": 100} for n in (1, 2, 5)]
    assert impl["upstream"]["scheme"] == "https", "from the Service port appProtocol"
    assert exact["labels"]["k8s/kind"] == "Ingress" and exact["labels"]["team"] == "web"
    ssls = t.of_kind("ssls")
    assert list(ssls) == [gen_id("Ingress_demo_site_0")]
    ssl = next(iter(ssls.values()))
    assert ssl["snis"] == ["site.example.com"] and ssl["cert"].startswith("-----BEGIN CERTIFICATE")
    assert ingress_service_refs(INGS["site"]) == {("demo", "web")}


def test_prefix_with_trailing_slash_and_exact_root(registry: PluginRegistry) -> None:
    assert one(translate_ingress(ing(path="/foo"), STATE))["uris"] == ["/foo", "/foo/*"]
    assert one(translate_ingress(ing(path="/", path_type="Exact"), STATE))["uris"] == ["/"]


def test_backend_errors_keep_an_empty_upstream() -> None:
    t = translate_ingress(ing(port={"number": 9999}), STATE)
    assert "service demo/web has no port 9999" in t.messages()[0]
    assert "/spec/rules/0/http/paths/0/backend" in t.messages()[0]
    assert one(t)["upstream"]["nodes"] == []
    t = translate_ingress(ing(service="nope"), STATE)
    assert "service demo/nope not found" in t.messages()[0]
    t = translate_ingress(ing(path_type="Regex"), STATE)
    assert "expected one of Exact, Prefix, ImplementationSpecific, got 'Regex'" in t.messages()[0]
    assert not routes(t)


def test_resource_backend_and_default_backend_unsupported() -> None:
    o = ing()
    o["spec"]["rules"][0]["http"]["paths"][0]["backend"] = {"resource": {"kind": "Bucket", "name": "b"}}
    o["spec"]["defaultBackend"] = {"service": {"name": "web", "port": {"number": 80}}}
    msgs = "\n".join(translate_ingress(o, STATE).messages())
    assert "resource backends are not supported" in msgs and "defaultBackend is not supported" in msgs


def test_tls_missing_secret_and_hosts_from_rules(registry: PluginRegistry) -> None:
    o = ing()
    o["spec"]["tls"] = [{"secretName": "site-tls"}, {"hosts": ["x.example.com"], "secretName": "nope"}]
    t = translate_ingress(o, STATE)
    assert t.messages() == ["Ingress demo/i: /spec/tls/1/secretName: secret demo/nope not found"]
    assert [s["snis"] for s in t.of_kind("ssls").values()] == [["a.example.com"]]


# --- annotations ----------------------------------------------------------------------------------

A = "k8s.apisix.apache.org/"
N = "nginx.ingress.kubernetes.io/"


@pytest.mark.parametrize("annotations,field,expected", [
    ({A + "enable-websocket": "true"}, "enable_websocket", True),
    ({A + "rewrite-target": "/new"}, "plugins", {"proxy-rewrite": {"uri": "/new"}}),
    ({A + "rewrite-target-regex": "^/p/(.*)", A + "rewrite-target-regex-template": "/$1"}, "plugins",
     {"proxy-rewrite": {"regex_uri": ["^/p/(.*)", "/$1"]}}),
    ({A + "http-to-https": "true"}, "plugins", {"redirect": {"http_to_https": True}}),
    ({N + "ssl-redirect": "true"}, "plugins", {"redirect": {"http_to_https": True}}),
    ({N + "ssl-redirect": "false"}, "plugins", None),
    ({A + "enable-cors": "true", A + "cors-allow-origin": "https://a.example.com, https://b.example.com",
      A + "cors-allow-methods": "get,POST", A + "cors-allow-headers": "X-A,X-B"}, "plugins",
     {"cors": {"allow_origins": "https://a.example.com,https://b.example.com", "allow_headers": "X-A,X-B",
               "allow_methods": "GET,POST"}}),
    ({N + "enable-cors": "true"}, "plugins", {"cors": {}}),
    ({A + "allowlist-source-range": "10.0.0.0/8, 192.168.1.1"}, "plugins",
     {"ip-restriction": {"whitelist": ["10.0.0.0/8", "192.168.1.1"]}}),
    ({N + "whitelist-source-range": "10.0.0.0/8"}, "plugins", {"ip-restriction": {"whitelist": ["10.0.0.0/8"]}}),
    ({A + "blocklist-source-range": "::1"}, "plugins", {"ip-restriction": {"blacklist": ["::1"]}}),
    ({N + "proxy-body-size": "8m"}, "plugins", {"client-control": {"max_body_size": 8 * 1024 * 1024}}),
    ({N + "proxy-body-size": "0"}, "plugins", {"client-control": {"max_body_size": 0}}),
])
def test_annotations_valid(annotations: dict[str, str], field: str, expected: Any, registry: PluginRegistry) -> None:
    t = valid(translate_ingress(ing(annotations), STATE), registry)
    assert t.ok, t.messages()
    assert one(t).get(field) == expected


def test_upstream_annotations(registry: PluginRegistry) -> None:
    t = valid(translate_ingress(ing({A + "upstream-scheme": "HTTPS", A + "upstream-retries": "2",
                                     A + "upstream-connect-timeout": "5s", A + "upstream-read-timeout": "1m"}),
                                STATE), registry)
    up = one(t)["upstream"]
    assert up["scheme"] == "https" and up["retries"] == 2
    assert up["timeout"] == {"connect": 5, "send": 60, "read": 60}


def test_use_regex(registry: PluginRegistry) -> None:
    r = one(valid(translate_ingress(ing({A + "use-regex": "true"}, path="/v[0-9]+/.*",
                                        path_type="ImplementationSpecific"), STATE), registry))
    assert r["uris"] == ["/*"] and r["vars"] == [["uri", "~~", "^/v[0-9]+/.*"]]


def test_nginx_rewrite_target_implies_regex(registry: PluginRegistry) -> None:
    r = one(valid(translate_ingress(ing({N + "rewrite-target": "/$2"}, path="/something(/|$)(.*)",
                                        path_type="ImplementationSpecific"), STATE), registry))
    assert r["uris"] == ["/*"] and r["vars"] == [["uri", "~*", "^/something(/|$)(.*)"]]
    assert r["plugins"] == {"proxy-rewrite": {"regex_uri": ["^(?:/something(/|$)(.*)).*", "/$2"]}}


@pytest.mark.parametrize("annotations,message", [
    ({A + "enable-websocket": "yes"}, f'annotation {A}enable-websocket: expected "true" or "false", got \'yes\''),
    ({A + "rewrite-target": "new"}, f"annotation {A}rewrite-target: expected a path starting with /"),
    ({A + "rewrite-target": "/a\nproxy_pass x;"}, f"annotation {A}rewrite-target: expected a path starting with /"),
    ({A + "rewrite-target-regex": "^/(", A + "rewrite-target-regex-template": "/$1"},
     f"annotation {A}rewrite-target-regex: expected a valid regular expression"),
    ({A + "rewrite-target-regex": "^/(.*)"}, f"annotation {A}rewrite-target-regex-template: required with its pair"),
    ({A + "rewrite-target": "/a", A + "rewrite-target-regex": "^/(.*)", A + "rewrite-target-regex-template": "/$1"},
     "cannot be combined with k8s.apisix.apache.org/rewrite-target"),
    ({A + "cors-allow-origin": "example.com"}, f"annotation {A}cors-allow-origin: expected * or a comma-separated "
                                               "list of origins"),
    ({A + "cors-allow-methods": "GET,FETCH"}, f"annotation {A}cors-allow-methods: expected * or a comma-separated"),
    ({A + "cors-allow-headers": "X A"}, f"annotation {A}cors-allow-headers: expected * or a comma-separated list of "
                                        "header names"),
    ({A + "allowlist-source-range": "10.0.0.0/8,nope"}, "'nope' is neither"),
    ({A + "allowlist-source-range": "10.0.0.1", A + "blocklist-source-range": "10.0.0.2"},
     "cannot be combined with an allowlist"),
    ({A + "upstream-scheme": "ftp"}, f"annotation {A}upstream-scheme: expected one of http, https, grpc, grpcs, "
                                     "got 'ftp'"),
    ({A + "upstream-retries": "-1"}, f"annotation {A}upstream-retries: expected an integer >= 0, got '-1'"),
    ({A + "upstream-read-timeout": "soon"}, f"annotation {A}upstream-read-timeout: expected a duration such as 5s"),
    ({N + "proxy-body-size": "8 MB"}, f"annotation {N}proxy-body-size: expected a size such as 0 (no limit)"),
    ({N + "whitelist-source-range": "300.1.1.1"}, "'300.1.1.1' is neither"),
    ({N + "canary-weight": "101"}, "expected an integer <= canary-weight-total (100), got 101"),
    ({N + "rewrite-target": "/$1", A + "rewrite-target": "/x"}, "cannot be combined"),
])
def test_annotations_invalid(annotations: dict[str, str], message: str) -> None:
    t = translate_ingress(ing(annotations), STATE)
    assert not t.ok and not t.items, "a bad annotation: no route rather than a route without the policy"
    msgs = "\n".join(t.messages())
    assert message in msgs, msgs
    assert "/metadata/annotations/" in msgs


def test_unknown_annotations_warn_others_are_ignored(registry: PluginRegistry) -> None:
    t = translate_ingress(ing({A + "auth-type": "basicAuth", N + "limit-rps": "5", "other.io/x": "y"}), STATE)
    assert t.ok and routes(t)
    assert t.warnings == (f"annotation {A}auth-type is not supported by Meshgate and is ignored",
                          f"annotation {N}limit-rps is not supported by Meshgate and is ignored")


# --- canary ---------------------------------------------------------------------------------------


def canary_of(annotations: dict[str, str], *, path: str = "/p") -> dict[str, Any]:
    return ing({N + "canary": "true", **annotations}, name="i-canary", path=path, service="unnamed",
               port={"number": 5000})


def split_rules(t: Translation) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(t)["plugins"]["traffic-split"]["rules"]
    return rules


def test_canary_fixture_header_cookie_weight(registry: PluginRegistry) -> None:
    peers = list(INGS.values())
    t = valid(translate_ingress(INGS["shop"], STATE, peers=peers), registry)
    assert t.ok, t.messages()
    uid = gen_id("demo_shop_0_0_canary")
    ups = t.of_kind("upstreams")
    assert list(ups) == [uid]
    assert ups[uid]["nodes"] == [{"host": "10.0.1.1", "port": 5678, "weight": 100}]
    assert ups[uid]["labels"]["k8s/name"] == "shop", "owned by the main Ingress"
    can, main = [{"upstream_id": uid, "weight": 1}], [{"weight": 1}]
    assert split_rules(t) == [
        {"match": [{"vars": [["http_x_canary", "==", "always"]]}], "weighted_upstreams": can},
        {"match": [{"vars": [["http_x_canary", "==", "never"]]}], "weighted_upstreams": main},
        {"match": [{"vars": [["cookie_canary", "==", "always"]]}], "weighted_upstreams": can},
        {"match": [{"vars": [["cookie_canary", "==", "never"]]}], "weighted_upstreams": main},
        {"weighted_upstreams": [{"upstream_id": uid, "weight": 20}, {"weight": 80}]},
    ]
    # the canary itself: no object, no error
    c = translate_ingress(INGS["shop-canary"], STATE, peers=peers)
    assert c.ok and not c.items, c.messages()


def test_canary_by_header_value(registry: PluginRegistry) -> None:
    main = ing()
    canary = canary_of({N + "canary-by-header": "X-Env", N + "canary-by-header-value": "beta"})
    t = valid(translate_ingress(main, STATE, peers=[main, canary]), registry)
    assert split_rules(t) == [{"match": [{"vars": [["http_x_env", "==", "beta"]]}],
                               "weighted_upstreams": [{"upstream_id": gen_id("demo_i_0_0_canary"), "weight": 1}]}]


def test_canary_weight_only_and_other_path_untouched(registry: PluginRegistry) -> None:
    main = ing()
    canary = canary_of({N + "canary-weight": "30", N + "canary-weight-total": "1000"})
    t = valid(translate_ingress(main, STATE, peers=[canary]), registry)
    assert split_rules(t) == [{"weighted_upstreams": [{"upstream_id": gen_id("demo_i_0_0_canary"), "weight": 30},
                                                      {"weight": 970}]}]
    other = canary_of({N + "canary-weight": "30"}, path="/elsewhere")
    t = translate_ingress(main, STATE, peers=[other])
    assert "plugins" not in one(t) and not t.of_kind("upstreams")
    c = translate_ingress(other, STATE, peers=[main])
    assert "canary: no non-canary Ingress in namespace demo has host a.example.com path /elsewhere" in c.messages()[0]


def test_canary_with_bad_annotation_is_not_applied() -> None:
    main = ing()
    canary = canary_of({N + "canary-weight": "lots"})
    t = translate_ingress(main, STATE, peers=[canary])
    assert t.ok and "plugins" not in one(t)
    c = translate_ingress(canary, STATE, peers=[main])
    assert f"annotation {N}canary-weight: expected an integer >= 0, got 'lots'" in c.messages()[0]


# --- class filter ----------------------------------------------------------------------------------


def _with_class(cls: str | None = None, annotation: str | None = None) -> dict[str, Any]:
    o = ing({"kubernetes.io/ingress.class": annotation} if annotation else None)
    if cls:
        o["spec"]["ingressClassName"] = cls
    return o


@pytest.mark.parametrize("cls,annotation,classes,require,ok", [
    ("apisix", None, [], True, True),                 # the --ingress-class name
    ("apisix-class", None, CLASSES, True, True),      # an IngressClass of our controller
    ("nginx", None, CLASSES, False, False),           # an IngressClass of another controller
    ("unknown", None, CLASSES, False, False),
    (None, "apisix", [], True, True),                 # the legacy annotation
    (None, "nginx", CLASSES, False, False),
    (None, None, [], False, True),                    # no class: ours unless required
    (None, None, [], True, False),
    (None, None, CLASSES, True, True),                # no class, default IngressClass is ours
    (None, None, [CLASSES[1] | {"metadata": {"name": "nginx", "annotations": {
        "ingressclass.kubernetes.io/is-default-class": "true"}}}], False, False),  # default is someone else's
])
def test_class_matching(cls: str | None, annotation: str | None, classes: list[dict[str, Any]], require: bool,
                        ok: bool) -> None:
    assert ingress_class_matches(_with_class(cls, annotation), classes, ingress_class="apisix",
                                 require=require) is ok


def test_every_fixture_output_validates(registry: PluginRegistry) -> None:
    for o in INGS.values():
        t = translate_ingress(copy.deepcopy(o), STATE, peers=list(INGS.values()))
        checked = validate_translation(t, registry)
        assert checked.messages() == t.messages()


# --- the controller: Ingress and IngressClass informers, canary re-translation, no conditions --------


async def test_controller_syncs_ingresses_and_canary() -> None:
    from meshgate.k8s.controller import Controller, ControllerOptions
    from test_controller import FakeAdmin, FakeKube, put

    ctl = Controller(FakeKube(), FakeAdmin(), ControllerOptions())  # type: ignore[arg-type]
    admin, kube = ctl.admin, ctl.kube
    assert isinstance(admin, FakeAdmin) and isinstance(kube, FakeKube)
    for o in load("cluster.yaml"):
        if o["kind"] in ("Service", "EndpointSlice", "Secret"):
            put(ctl, o)
    for c in CLASSES:
        ctl.informers["IngressClass"][0].cache[("", c["metadata"]["name"])] = c
    put(ctl, copy.deepcopy(INGS["shop"]))
    foreign = ing(name="foreign")
    foreign["spec"]["ingressClassName"] = "nginx"
    put(ctl, foreign)
    bad = ing({A + "upstream-retries": "many"}, name="bad", path="/bad")
    put(ctl, bad)
    assert await ctl.sync_once()
    names = {v["name"] for v in admin.store["routes"].values()}
    assert names == {"demo_shop_0_0"}, "foreign class ignored, bad annotation: no route"
    assert "plugins" not in admin.store["routes"][gen_id("demo_shop_0_0")]
    assert not kube.status, "an Ingress has no status.conditions: nothing written"

    # the canary arrives: its main Ingress is re-translated and gets the traffic-split
    put(ctl, copy.deepcopy(INGS["shop-canary"]))
    assert ("Ingress", "demo", "shop") in ctl.dirty
    assert await ctl.sync_once()
    r = admin.store["routes"][gen_id("demo_shop_0_0")]
    assert len(r["plugins"]["traffic-split"]["rules"]) == 5
    assert gen_id("demo_shop_0_0_canary") in admin.store["upstreams"]

    # an annotation-only edit is a change; deleting the canary removes its upstream
    edited = copy.deepcopy(INGS["shop-canary"])
    edited["metadata"]["annotations"] = {N + "canary": "true", N + "canary-weight": "50"}
    put(ctl, edited, "MODIFIED")
    assert await ctl.sync_once()
    assert admin.store["routes"][gen_id("demo_shop_0_0")]["plugins"]["traffic-split"]["rules"] == [
        {"weighted_upstreams": [{"upstream_id": gen_id("demo_shop_0_0_canary"), "weight": 50}, {"weight": 50}]}]
    put(ctl, edited, "DELETED")
    assert await ctl.sync_once()
    assert "plugins" not in admin.store["routes"][gen_id("demo_shop_0_0")]
    assert not admin.store["upstreams"]

    # the Service changes: the Ingress reading it is re-translated
    ctl.dirty.clear()
    put(ctl, {**STATE.services[("demo", "web")], "metadata": {"name": "web", "namespace": "demo",
                                                               "resourceVersion": "2"}}, "MODIFIED")
    assert ("Ingress", "demo", "shop") in ctl.dirty
