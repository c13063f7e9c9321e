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
    t = translate_ingress(ing({A + "limit-count": "5", N + "limit-rps": "5", "other.io/x": "y"}), STATE)
    assert t.ok and routes(t)
    assert t.warnings == (f"annotation {A}limit-count is not supported by Meshgate and is ignored",
                          f"annotation {N}limit-rps is not supported by Meshgate and is ignored")


# --- AIC annotations: CSRF, response rewrite, forward auth, methods, auth-type, redirect ------------

METHOD_405 = "request_method"


@pytest.mark.parametrize("annotations,plugins", [
    # CSRF
    ({A + "enable-csrf": "true", A + "csrf-key": "edd1c9f034335f13"}, {"csrf": {"key": "edd1c9f034335f13"}}),
    ({A + "enable-csrf": "false", A + "csrf-key": "k"}, None),
    # response rewrite (AIC: nothing without enable-response-rewrite; an empty body is left alone)
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-status-code": "403",
      A + "response-rewrite-body": "Access denied",
      A + "response-rewrite-add-header": "X-Reason:Forbidden, X-Env: Test",
      A + "response-rewrite-set-header": "X-Link:https://a.example.com/,X-Empty:",
      A + "response-rewrite-remove-header": "Server,X-Powered-By"},
     {"response-rewrite": {"status_code": 403, "body": "Access denied",
                           "headers": {"add": ["X-Reason:Forbidden", "X-Env:Test"],
                                       "set": {"X-Link": "https://a.example.com/", "X-Empty": ""},
                                       "remove": ["Server", "X-Powered-By"]}}}),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-body": "aGVsbG8K",
      A + "response-rewrite-body-base64": "true"},
     {"response-rewrite": {"body": "aGVsbG8K", "body_base64": True}}),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-body": "{\n  \"a\": 1\n}\n"},
     {"response-rewrite": {"body": "{\n  \"a\": 1\n}\n"}}),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-body": ""}, {"response-rewrite": {}}),
    ({A + "enable-response-rewrite": "false", A + "response-rewrite-status-code": "200"}, None),
    # forward auth (ssl_verify true unless "false", as AIC)
    ({A + "auth-uri": "https://auth.example.com/verify"},
     {"forward-auth": {"uri": "https://auth.example.com/verify", "ssl_verify": True}}),
    ({A + "auth-uri": "http://auth.demo.svc:8080/check?x=1", A + "auth-ssl-verify": "false",
      A + "auth-request-headers": "Authorization, Cookie", A + "auth-upstream-headers": "X-User-ID,X-User-Role",
      A + "auth-client-headers": "WWW-Authenticate"},
     {"forward-auth": {"uri": "http://auth.demo.svc:8080/check?x=1", "ssl_verify": False,
                       "request_headers": ["Authorization", "Cookie"], "upstream_headers": ["X-User-ID", "X-User-Role"],
                       "client_headers": ["WWW-Authenticate"]}}),
    # methods: 405 from fault-injection (AIC v2), names upper-cased
    ({A + "http-allow-methods": "GET, post"},
     {"fault-injection": {"abort": {"http_status": 405, "vars": [[[METHOD_405, "!", "in", ["GET", "POST"]]]]}}}),
    ({A + "http-block-methods": "DELETE,PUT,DELETE"},
     {"fault-injection": {"abort": {"http_status": 405, "vars": [[[METHOD_405, "in", ["DELETE", "PUT"]]]]}}}),
    # auth-type
    ({A + "auth-type": "basicAuth"}, {"basic-auth": {}}),
    ({A + "auth-type": "keyAuth"}, {"key-auth": {}}),
    # http-redirect (http-redirect-code defaults to 301)
    ({A + "http-redirect": "https://www.example.com$request_uri"},
     {"redirect": {"uri": "https://www.example.com$request_uri", "ret_code": 301}}),
    ({A + "http-redirect": "/new", A + "http-redirect-code": "308"}, {"redirect": {"uri": "/new", "ret_code": 308}}),
])
def test_aic_annotations_plugins(annotations: dict[str, str], plugins: Any, registry: PluginRegistry) -> None:
    t = valid(translate_ingress(ing(annotations), STATE), registry)
    assert t.ok, t.messages()
    assert one(t).get("plugins") == plugins


def test_aic_annotations_together(registry: PluginRegistry) -> None:
    t = valid(translate_ingress(ing({
        A + "enable-csrf": "true", A + "csrf-key": "k", A + "enable-response-rewrite": "true",
        A + "response-rewrite-status-code": "200", A + "auth-uri": "https://auth.example.com",
        A + "http-block-methods": "TRACE", A + "auth-type": "basicAuth", A + "enable-cors": "true",
        A + "http-to-https": "true"}), STATE), registry)
    assert t.ok and not t.warnings, t.messages()
    assert one(t)["plugins"] == {
        "csrf": {"key": "k"}, "response-rewrite": {"status_code": 200},
        "forward-auth": {"uri": "https://auth.example.com", "ssl_verify": True},
        "fault-injection": {"abort": {"http_status": 405, "vars": [[[METHOD_405, "in", ["TRACE"]]]]}},
        "basic-auth": {}, "cors": {}, "redirect": {"http_to_https": True}}


def test_allow_methods_win_over_block_methods(registry: PluginRegistry) -> None:
    """AIC documents it: with both, only the allow list is effective."""
    t = valid(translate_ingress(ing({A + "http-allow-methods": "GET", A + "http-block-methods": "GET,POST"}), STATE),
              registry)
    assert one(t)["plugins"] == {
        "fault-injection": {"abort": {"http_status": 405, "vars": [[[METHOD_405, "!", "in", ["GET"]]]]}}}
    assert t.warnings == (f"annotation {A}http-block-methods is ignored: {A}http-allow-methods is set and only the "
                          "allow list applies (as apisix-ingress-controller)",)


def test_http_to_https_wins_over_http_redirect(registry: PluginRegistry) -> None:
    for switch in ({A + "http-to-https": "true"}, {N + "ssl-redirect": "true"}):
        t = valid(translate_ingress(ing({**switch, A + "http-redirect": "/elsewhere"}), STATE), registry)
        assert one(t)["plugins"] == {"redirect": {"http_to_https": True}}
        assert t.warnings == (f"annotation {A}http-redirect is ignored: http-to-https is set and wins "
                              "(as apisix-ingress-controller)",)


def test_settings_without_their_switch_warn(registry: PluginRegistry) -> None:
    t = valid(translate_ingress(ing({A + "csrf-key": "k", A + "response-rewrite-body": "x",
                                     A + "auth-client-headers": "X-A", A + "http-redirect-code": "302"}), STATE),
              registry)
    assert t.ok and "plugins" not in one(t)
    assert t.warnings == (
        f'annotation {A}http-redirect-code is ignored without {A}http-redirect',
        f'annotation {A}csrf-key is ignored without {A}enable-csrf: "true"',
        f'annotation {A}response-rewrite-body is ignored without {A}enable-response-rewrite: "true"',
        f'annotation {A}auth-client-headers is ignored without {A}auth-uri',
    )


def test_blocked_method_gets_405(registry: PluginRegistry) -> None:
    """The produced fault-injection conf, run by the plugin: 405 exactly for the refused methods."""
    from meshgate.plugins.builtin import fault_injection
    from meshgate.router import compile_expr

    for anns, refused in (({A + "http-allow-methods": "GET,HEAD"}, {"POST", "DELETE", "PUT"}),
                         ({A + "http-block-methods": "DELETE"}, {"DELETE"})):
        conf = one(valid(translate_ingress(ing(anns), STATE), registry))["plugins"]["fault-injection"]
        abort = fault_injection.prepare(conf).abort
        assert abort is not None and abort.status == 405 and abort.vars is not None
        rule = compile_expr(conf["abort"]["vars"][0], "/")
        for method in ("GET", "HEAD", "POST", "DELETE", "PUT"):
            assert rule.eval({"request_method": method}.get) is (method in refused), (anns, method)


@pytest.mark.parametrize("annotations,message", [
    ({A + "enable-csrf": "yes", A + "csrf-key": "k"}, f'annotation {A}enable-csrf: expected "true" or "false", '
                                                      "got 'yes'"),
    ({A + "enable-csrf": "true"}, f'annotation {A}csrf-key: required when {A}enable-csrf is "true" (the secret that '
                                  "signs the CSRF tokens)"),
    ({A + "enable-csrf": "true", A + "csrf-key": ""},
     f"annotation {A}csrf-key: expected a non-empty value without control characters"),
    ({A + "enable-response-rewrite": "on"}, f'annotation {A}enable-response-rewrite: expected "true" or "false"'),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-status-code": "199"},
     f"annotation {A}response-rewrite-status-code: expected an integer >= 200 and <= 598, got '199'"),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-status-code": "forbidden"},
     f"annotation {A}response-rewrite-status-code: expected an integer >= 200 and <= 598, got 'forbidden'"),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-body-base64": "yes"},
     f'annotation {A}response-rewrite-body-base64: expected "true" or "false", got \'yes\''),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-body": "not base64!",
      A + "response-rewrite-body-base64": "true"},
     f"annotation {A}response-rewrite-body: expected non-empty base64 content when "
     f"{A}response-rewrite-body-base64 is \"true\", got 'not base64!'"),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-body-base64": "true"},
     f'annotation {A}response-rewrite-body: expected non-empty base64 content when '
     f'{A}response-rewrite-body-base64 is "true"'),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-add-header": "X-Reason"},
     f"annotation {A}response-rewrite-add-header: expected a comma-separated list of Name:value headers, got "),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-add-header": "X-Link:https://a/"},
     f"annotation {A}response-rewrite-add-header: expected a comma-separated list of Name:value headers, each value "
     "non-empty, without : and not ending with /, got 'X-Link:https://a/'"),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-add-header": "X-A:"},
     "each value non-empty, without : and not ending with /"),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-set-header": "X A:b"},
     f"annotation {A}response-rewrite-set-header: expected a comma-separated list of Name:value headers, "
     "got 'X A:b'"),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-set-header": "X-A:b\r\nSet-Cookie: x"},
     f"annotation {A}response-rewrite-set-header: expected a comma-separated list of Name:value headers"),
    ({A + "enable-response-rewrite": "true", A + "response-rewrite-remove-header": "Server,X A"},
     f"annotation {A}response-rewrite-remove-header: expected a comma-separated list of header names, "
     "got 'Server,X A'"),
    ({A + "auth-uri": "auth.example.com/verify"},
     f"annotation {A}auth-uri: expected an http:// or https:// URL such as https://auth.example.com/verify "
     "(no spaces or control characters), got 'auth.example.com/verify'"),
    ({A + "auth-uri": "ftp://auth.example.com"}, f"annotation {A}auth-uri: expected an http:// or https:// URL"),
    ({A + "auth-uri": "http://auth.example.com:99999/"},
     f"annotation {A}auth-uri: expected an http:// or https:// URL"),
    ({A + "auth-uri": "https://auth.example.com/a b"}, f"annotation {A}auth-uri: expected an http:// or https:// URL"),
    ({A + "auth-uri": "https://a.example.com", A + "auth-ssl-verify": "off"},
     f'annotation {A}auth-ssl-verify: expected "true" or "false", got \'off\''),
    ({A + "auth-uri": "https://a.example.com", A + "auth-request-headers": "Authorization,"},
     None),  # a trailing comma is tolerated (AIC drops empty items)
    ({A + "auth-uri": "https://a.example.com", A + "auth-upstream-headers": "X-User:ID"},
     f"annotation {A}auth-upstream-headers: expected a comma-separated list of header names, got 'X-User:ID'"),
    ({A + "auth-uri": "https://a.example.com", A + "auth-client-headers": ","},
     f"annotation {A}auth-client-headers: expected a comma-separated list of header names, got ','"),
    ({A + "http-allow-methods": "GET,FETCH"},
     f"annotation {A}http-allow-methods: expected a comma-separated list of CONNECT, DELETE, GET, HEAD, OPTIONS, "
     "PATCH, POST, PUT, TRACE, got 'GET,FETCH'"),
    ({A + "http-block-methods": "*"}, f"annotation {A}http-block-methods: expected a comma-separated list of "),
    ({A + "auth-type": "jwtAuth"}, f"annotation {A}auth-type: expected one of basicAuth, keyAuth, got 'jwtAuth'"),
    ({A + "auth-type": "basic-auth"}, f"annotation {A}auth-type: expected one of basicAuth, keyAuth, got 'basic-auth'"),
    ({A + "svc-namespace": "Backend_NS"}, f"annotation {A}svc-namespace: expected a namespace name (lower-case "
                                          "letters, digits and -, at most 63 characters), got 'Backend_NS'"),
    ({A + "svc-namespace": "a" * 64}, f"annotation {A}svc-namespace: expected a namespace name"),
    ({A + "plugin-config-name": "other/limits"},
     f"annotation {A}plugin-config-name: expected the name of an ApisixPluginConfig of this namespace (lower-case "
     "letters, digits, - and .), got 'other/limits'"),
    ({A + "http-redirect": "www.example.com"}, f"annotation {A}http-redirect: expected a path starting with / or an "
                                               "http(s):// URL, without spaces or control characters, got "),
    ({A + "http-redirect": "/a", A + "http-redirect-code": "304"},
     f"annotation {A}http-redirect-code: expected one of 301, 302, 303, 307, 308, got '304'"),
])
def test_aic_annotations_invalid(annotations: dict[str, str], message: str | None, registry: PluginRegistry) -> None:
    t = translate_ingress(ing(annotations), STATE)
    if message is None:
        assert valid(t, registry).ok, t.messages()
        return
    assert not t.ok and not t.items, "a bad annotation: no route rather than a route without the policy"
    msgs = "\n".join(t.messages())
    assert message in msgs, msgs
    assert "/metadata/annotations/k8s.apisix.apache.org~1" in msgs


def test_csrf_key_is_never_repeated_in_messages() -> None:
    t = translate_ingress(ing({A + "enable-csrf": "true", A + "csrf-key": "s3cr3t\x00"}), STATE)
    assert t.messages() == [f"Ingress demo/i: /metadata/annotations/{A.replace('/', '~1')}csrf-key: annotation "
                            f"{A}csrf-key: expected a non-empty value without control characters"]


# --- svc-namespace, plugin-config-name ------------------------------------------------------------

EXTRA = load("ingress-annotations.yaml")
STATE_X = ClusterState.from_objects(load("cluster.yaml") + EXTRA)
EVERYTHING = next(o for o in EXTRA if o["kind"] == "Ingress")


def test_fixture_with_most_annotations(registry: PluginRegistry) -> None:
    t = valid(translate_ingress(EVERYTHING, STATE_X), registry)
    assert t.ok and not t.warnings, t.messages()
    r = one(t)
    assert r["upstream"]["nodes"] == [{"host": "10.0.9.1", "port": 7070, "weight": 100}], "Service backend/api"
    assert r["plugins"] == {
        "limit-count": {"count": 10, "time_window": 60, "rejected_code": 429},            # from the config
        "proxy-rewrite": {"uri": "/v2/anything", "headers": {"set": {"X-Api-Key": "s3cr3t"}}},  # its secretRef
        "csrf": {"key": "edd1c9f034335f136f87ad84b625c8f1"},                                # the annotation wins
        "response-rewrite": {"headers": {"set": {"X-Served-By": "meshgate"}}},
        "forward-auth": {"uri": "http://auth.backend.svc:8080/verify", "ssl_verify": True,
                         "request_headers": ["Authorization"], "upstream_headers": ["X-User-ID"]},
        "fault-injection": {"abort": {"http_status": 405, "vars": [[[METHOD_405, "!", "in", ["GET", "POST"]]]]}},
        "key-auth": {},
    }
    assert ingress_service_refs(EVERYTHING) == {("backend", "api")}


def test_svc_namespace(registry: PluginRegistry) -> None:
    o = ing({A + "svc-namespace": "backend"}, service="api")
    t = valid(translate_ingress(o, STATE_X), registry)
    assert one(t)["upstream"] == {"type": "roundrobin", "scheme": "http",
                                  "nodes": [{"host": "10.0.9.1", "port": 7070, "weight": 100}]}
    assert ingress_service_refs(o) == {("backend", "api")}
    # the Service is looked up there only
    t = translate_ingress(ing({A + "svc-namespace": "backend"}), STATE_X)
    assert "service backend/web not found" in t.messages()[0] and one(t)["upstream"]["nodes"] == []
    # an invalid value: the refs fall back to the Ingress's namespace (and the Ingress reports the error)
    assert ingress_service_refs(ing({A + "svc-namespace": "Bad NS"})) == {("demo", "web")}


def test_svc_namespace_of_a_canary(registry: PluginRegistry) -> None:
    main = ing()
    canary = ing({N + "canary": "true", N + "canary-weight": "10", A + "svc-namespace": "backend"}, name="i-canary",
                 service="api")
    t = valid(translate_ingress(main, STATE_X, peers=[canary]), registry)
    ups = t.of_kind("upstreams")
    assert [u["nodes"] for u in ups.values()] == [[{"host": "10.0.9.1", "port": 7070, "weight": 100}]]
    assert one(t)["upstream"]["nodes"] == NODES_8080, "the main Ingress keeps its own namespace"
    c = translate_ingress(canary, STATE_X, peers=[main])
    assert c.ok and not c.items, c.messages()


def test_plugin_config_name_merges_under_the_annotations(registry: PluginRegistry) -> None:
    t = valid(translate_ingress(ing({A + "plugin-config-name": "common", A + "enable-cors": "true",
                                     A + "cors-allow-origin": "https://a.example.com"}), STATE), registry)
    assert one(t)["plugins"] == {"proxy-rewrite": {"host": "from-plugin-config.local"},
                                 "cors": {"allow_origins": "https://a.example.com"}}, "limit-count is disabled"
    # each route gets its own copy
    o = ing({A + "plugin-config-name": "common"})
    o["spec"]["rules"][0]["http"]["paths"].append({"path": "/q", "pathType": "Exact", "backend": {
        "service": {"name": "web", "port": {"number": 80}}}})
    a, b = routes(valid(translate_ingress(o, STATE), registry))
    assert a["plugins"] == b["plugins"] and a["plugins"]["proxy-rewrite"] is not b["plugins"]["proxy-rewrite"]


@pytest.mark.parametrize("name,message", [
    ("nope", f"annotation {A}plugin-config-name: ApisixPluginConfig demo/nope not found"),
    ("elsewhere", f"annotation {A}plugin-config-name: ApisixPluginConfig demo/elsewhere not found"),
    ("broken", f"annotation {A}plugin-config-name: ApisixPluginConfig demo/broken: /spec/plugins/0/secretRef: "
               "secret demo/no-such-secret not found; create it in namespace demo or remove secretRef"),
])
def test_plugin_config_name_errors(name: str, message: str) -> None:
    t = translate_ingress(ing({A + "plugin-config-name": name}), STATE_X)
    assert not t.items, "no route rather than a route without the config's plugins"
    assert t.messages() == [f"Ingress demo/i: /metadata/annotations/{A.replace('/', '~1')}plugin-config-name: "
                            + message]


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


async def test_controller_follows_svc_namespace_and_plugin_config() -> None:
    """The Service of svc-namespace and the ApisixPluginConfig of plugin-config-name are read:
    their changes re-translate the Ingress."""
    from meshgate.k8s.controller import Controller, ControllerOptions
    from test_controller import FakeAdmin, FakeKube, put

    ctl = Controller(FakeKube(), FakeAdmin(), ControllerOptions())  # type: ignore[arg-type]
    admin = ctl.admin
    assert isinstance(admin, FakeAdmin)
    for o in load("cluster.yaml") + EXTRA:
        if o["kind"] in ("Service", "EndpointSlice", "Secret", "ApisixPluginConfig"):
            put(ctl, copy.deepcopy(o))
    put(ctl, copy.deepcopy(EVERYTHING))
    assert await ctl.sync_once()
    rid = gen_id("demo_everything_0_0")
    r = admin.store["routes"][rid]
    assert r["upstream"]["nodes"] == [{"host": "10.0.9.1", "port": 7070, "weight": 100}]
    assert r["plugins"]["limit-count"]["count"] == 10

    ctl.dirty.clear()
    eps = copy.deepcopy(next(o for o in EXTRA if o["kind"] == "EndpointSlice"))
    eps["endpoints"] = [{"addresses": ["10.0.9.2"], "conditions": {"ready": True}}]
    put(ctl, eps, "MODIFIED")
    assert ("Ingress", "demo", "everything") in ctl.dirty, "an EndpointSlice of namespace backend"
    apc = copy.deepcopy(next(o for o in EXTRA if o["kind"] == "ApisixPluginConfig"))
    apc["spec"]["plugins"][0]["config"]["count"] = 20
    put(ctl, apc, "MODIFIED")
    assert await ctl.sync_once()
    r = admin.store["routes"][rid]
    assert r["upstream"]["nodes"] == [{"host": "10.0.9.2", "port": 7070, "weight": 100}]
    assert r["plugins"]["limit-count"]["count"] == 20
