"""deploy/crds/ against a real kube-apiserver (1.37, tests/e2e/kubepeer.py): the CRDs are accepted
and Established, users' AIC manifests (the seed's v2beta2 ApisixRoute included) apply unchanged and
read back at v2 without loss, the validation the schemas promise is enforced (422), and the status
subresource stores conditions without touching the generation.

Objects are applied with server-side apply and ``fieldValidation=Strict`` — kubectl's default — so a
field the schemas do not declare fails the test instead of being silently pruned.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubepeer import KubeAPIServer, KubeError

pytestmark = pytest.mark.timeout(180)

CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
G = "apisix.apache.org"
V2 = f"{G}/v2"
NS = "bookinfo"

# The seed's v2beta2 ApisixRoute (``kubectl -n bookinfo apply -f productpage-ar.yaml``), verbatim.
PRODUCTPAGE = (Path(__file__).resolve().parents[1] / "fixtures" / "k8s" / "seed-productpage-ar.yaml").read_text()

FULL_ROUTE = f"""
apiVersion: {V2}
kind: ApisixRoute
metadata:
  name: httpbin-route
spec:
  ingressClassName: apisix
  http:
  - name: r1
    priority: 10
    timeout: {{connect: 5s, send: 10s, read: 30s}}
    match:
      hosts: [local.httpbin.org, "*.httpbin.org"]
      paths: [/ip, "/anything/*"]
      methods: [GET, POST]
      remoteAddrs: [10.0.0.0/8, "::1"]
      exprs:
      - subject: {{scope: Header, name: X-Canary}}
        op: Equal
        value: "true"
      - subject: {{scope: Query, name: region}}
        op: In
        set: [eu, us]
      - subject: {{scope: Path}}
        op: RegexMatch
        value: "^/anything/.*"
    backends:
    - {{serviceName: httpbin-v1, servicePort: 80, weight: 90, resolveGranularity: service}}
    - {{serviceName: httpbin-v2, servicePort: http, weight: 10, subset: v2}}
    websocket: true
    plugin_config_name: shared-plugins
    plugin_config_namespace: {NS}
    plugins:
    - name: limit-count
      enable: true
      config: {{count: 2, time_window: 60, rejected_code: 429, policy: {{nested: [1, "two"]}}}}
    - name: proxy-rewrite
      enable: false
      secretRef: rewrite-secret
    authentication:
      enable: true
      type: keyAuth
      keyAuth: {{header: apikey}}
  - name: r2
    match:
      paths: [/external]
    upstreams:
    - {{name: httpbin-external, weight: 50}}
    authentication:
      enable: true
      type: jwtAuth
      jwtAuth: {{header: Authorization, query: jwt, cookie: jwt}}
  - name: r3
    match:
      paths: [/ldap]
    backends:
    - {{serviceName: httpbin-v1, servicePort: 80}}
    authentication:
      enable: true
      type: ldapAuth
      ldapAuth: {{base_dn: "ou=users,dc=example,dc=org", ldap_uri: "ldap.example.org:389", use_tls: false, uid: cn}}
  stream:
  - name: tcp1
    protocol: TCP
    match: {{ingressPort: 9100, host: db.example.org}}
    backend: {{serviceName: redis, servicePort: 6379, resolveGranularity: service}}
    plugins:
    - {{name: ip-restriction, enable: true, config: {{whitelist: [10.0.0.0/8]}}}}
  - name: udp1
    protocol: UDP
    match: {{ingressPort: 9200}}
    backend: {{serviceName: dns, servicePort: 53}}
"""

FULL_UPSTREAM = f"""
apiVersion: {V2}
kind: ApisixUpstream
metadata:
  name: httpbin
spec:
  ingressClassName: apisix
  loadbalancer: {{type: chash, hashOn: header, key: X-User}}
  scheme: https
  retries: 3
  timeout: {{connect: 1s, send: 2s, read: 3s}}
  passHost: rewrite
  upstreamHost: internal.httpbin.org
  tlsSecret: {{name: upstream-client, namespace: {NS}}}
  healthCheck:
    active:
      type: https
      timeout: 5
      concurrency: 4
      host: httpbin.org
      port: 8443
      httpPath: /healthz
      strictTLS: false
      requestHeaders: ["User-Agent: meshgate"]
      healthy: {{httpCodes: [200, 302], successes: 2, interval: 1s}}
      unhealthy: {{httpCodes: [500, 503], httpFailures: 3, tcpFailures: 2, timeout: 3, interval: 1s}}
    passive:
      type: http
      healthy: {{httpCodes: [200], successes: 3}}
      unhealthy: {{httpCodes: [502], httpFailures: 3, tcpFailures: 3, timeout: 7, timeouts: 7}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2, track: canary}}
  discovery: {{serviceName: httpbin.ns, type: dns, args: {{group: g1}}}}
  portLevelSettings:
  - port: 8080
    scheme: grpc
    loadbalancer: {{type: ewma}}
    retries: 1
    timeout: {{read: 10s}}
    healthCheck:
      active: {{type: tcp, unhealthy: {{tcpFailures: 1}}}}
  - port: 8443
    passHost: node
---
apiVersion: {V2}
kind: ApisixUpstream
metadata:
  name: httpbin-external
spec:
  externalNodes:
  - {{name: httpbin.org, type: Domain, weight: 10, port: 443}}
  - {{name: httpbin-svc, type: Service, weight: 5}}
"""

CONSUMERS = f"""
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: basic}}
spec:
  authParameter:
    basicAuth: {{value: {{username: jack, password: secret}}}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: basic-secret}}
spec:
  authParameter:
    basicAuth: {{secretRef: {{name: basic-creds}}}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: key}}
spec:
  ingressClassName: apisix
  authParameter:
    keyAuth: {{value: {{key: auth-one}}}}
  plugins:
  - {{name: limit-count, enable: true, config: {{count: 5, time_window: 60}}}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: jwt}}
spec:
  authParameter:
    jwtAuth:
      value: {{key: user-key, secret: my-secret, algorithm: HS256, exp: 86400, base64_secret: false,
               lifetime_grace_period: 0}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: jwt-rs}}
spec:
  authParameter:
    jwtAuth:
      value: {{key: rs-key, algorithm: RS256, public_key: "-----BEGIN PUBLIC KEY-----x",
               private_key: "-----BEGIN PRIVATE KEY-----y"}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: hmac}}
spec:
  authParameter:
    hmacAuth:
      value: {{key_id: papa, secret_key: fatpapa, algorithm: hmac-sha256, clock_skew: 300,
               signed_headers: [X-Date], keep_headers: false, encode_uri_params: true,
               validate_request_body: false, max_req_body: 524288}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: hmac-legacy}}
spec:
  authParameter:
    hmacAuth: {{value: {{access_key: papa, secret_key: fatpapa}}}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: wolf}}
spec:
  authParameter:
    wolfRBAC: {{value: {{server: "http://wolf:12180", appid: app1, header_prefix: X-}}}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: ldap}}
spec:
  authParameter:
    ldapAuth: {{value: {{user_dn: "cn=user01,ou=users,dc=example,dc=org"}}}}
---
apiVersion: {V2}
kind: ApisixConsumer
metadata: {{name: ldap-secret}}
spec:
  authParameter:
    ldapAuth: {{secretRef: {{name: ldap-creds}}}}
"""

OTHERS = f"""
apiVersion: {V2}
kind: ApisixTls
metadata: {{name: httpbin-tls}}
spec:
  ingressClassName: apisix
  hosts: ["*.httpbin.org", local.httpbin.org]
  secret: {{name: httpbin-cert, namespace: {NS}}}
  client:
    caSecret: {{name: httpbin-ca, namespace: {NS}}}
    depth: 2
    skip_mtls_uri_regex: ["/healthz.*"]
---
apiVersion: {V2}
kind: ApisixPluginConfig
metadata: {{name: shared-plugins}}
spec:
  plugins:
  - {{name: cors, enable: true, config: {{allow_origins: "*"}}}}
  - {{name: echo, config: {{before_body: hi}}}}
---
apiVersion: {V2}
kind: ApisixGlobalRule
metadata: {{name: global}}
spec:
  ingressClassName: apisix
  plugins:
  - {{name: prometheus, enable: true}}
"""

AMPC: dict[str, Any] = {
    "apiVersion": f"{G}/v1alpha1", "kind": "AmeshPluginConfig",
    "metadata": {"name": "ameshpluginconfig-sample"},
    "spec": {"plugins": [{"name": "response-rewrite", "type": "",
                          "config": '{"body":"BODY_REWRITE","headers":{"X-Header":"Rewrite"}}'}]},
}


# ------------------------------------------------------------------------------------- helpers
def apply_strict(kube: KubeAPIServer, obj: dict[str, Any], namespace: str = NS) -> dict[str, Any]:
    """Server-side apply with strict field validation (unknown or duplicate fields → 422)."""
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("namespace", namespace)
    md = obj["metadata"]
    path = kube.path(obj["apiVersion"], obj["kind"], md["name"], md["namespace"])
    res: dict[str, Any] = kube.request("PATCH", path, json.dumps(obj).encode(),
                                       content_type="application/apply-patch+yaml",
                                       params={"fieldManager": "meshgate-e2e", "force": "true",
                                               "fieldValidation": "Strict"})
    return res


def rejected(kube: KubeAPIServer, obj: dict[str, Any], status: int = 422, strict: bool = True) -> str:
    """POST (what ``kubectl create`` / client-side ``kubectl apply`` send for a new object) must
    answer 422; returns the message.  (Server-side apply answers some of these — a list-map item
    without its key, a value of the wrong type — with a 500 from its merge step before validation
    runs; that is the apiserver's behaviour, not the schema's.)  An undeclared field under strict
    field validation is a 400 from the decoder."""
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("namespace", NS)
    path = kube.path(obj["apiVersion"], obj["kind"], None, obj["metadata"]["namespace"])
    with pytest.raises(KubeError) as ei:
        kube.request("POST", path, obj, params={"fieldValidation": "Strict" if strict else "Ignore"})
    assert ei.value.status == status, ei.value
    return str(ei.value)


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def crds(kube: KubeAPIServer) -> list[str]:
    files = sorted(CRD_DIR.glob("*.yaml"))
    assert len(files) == 7
    names = kube.apply_crds([d for f in files for d in docs(f.read_text())], timeout=60)
    kube.ensure_namespace(NS)
    return names


# --------------------------------------------------------------------------------------- tests
def test_crds_established_with_versions(kube: KubeAPIServer, crds: list[str]) -> None:
    assert len(crds) == 7
    for name in crds:
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
        assert crd is not None
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds.get("Established") == "True" and conds.get("NamesAccepted") == "True", conds
        assert conds.get("NonStructuralSchema") is None, conds
        expected = ["v1alpha1"] if name.startswith("amesh") else ["v2", "v2beta3", "v2beta2"]
        assert crd["status"]["storedVersions"] == expected[:1]
    # discovery serves every version with its short names
    for ver in ("v2", "v2beta3", "v2beta2"):
        res = {r["kind"]: r for r in kube.request("GET", f"/apis/{G}/{ver}")["resources"] if "/" not in r["name"]}
        assert res["ApisixRoute"]["shortNames"] == ["ar"]
        assert {"ApisixRoute", "ApisixUpstream", "ApisixTls", "ApisixPluginConfig", "ApisixConsumer",
                "ApisixGlobalRule"} <= set(res)
    res = {r["kind"]: r for r in kube.request("GET", f"/apis/{G}/v1alpha1")["resources"] if "/" not in r["name"]}
    assert res["AmeshPluginConfig"]["shortNames"] == ["ampc"]


def test_seed_v2beta2_route_applies_unchanged_and_reads_back_as_v2(kube: KubeAPIServer, crds: list[str]) -> None:
    (obj,) = docs(PRODUCTPAGE)
    created = apply_strict(kube, obj)
    assert created["apiVersion"] == f"{G}/v2beta2"
    assert created["metadata"]["namespace"] == NS
    as_v2 = kube.get(V2, "ApisixRoute", "productpage", NS)
    assert as_v2 is not None
    assert as_v2["apiVersion"] == V2
    assert as_v2["spec"] == obj["spec"]  # nothing pruned, nothing added
    as_v2beta3 = kube.get(f"{G}/v2beta3", "ApisixRoute", "productpage", NS)
    assert as_v2beta3 is not None and as_v2beta3["spec"] == obj["spec"]


def test_printer_columns(kube: KubeAPIServer, crds: list[str]) -> None:
    (obj,) = docs(PRODUCTPAGE)
    apply_strict(kube, obj)
    status, raw = _get_table(kube, kube.path(V2, "ApisixRoute", "productpage", NS))
    assert status == 200
    table = json.loads(raw)
    cols = [c["name"] for c in table["columnDefinitions"]]
    assert cols[:3] == ["Name", "Hosts", "URIs"] and "Age" in cols
    row = dict(zip(cols, table["rows"][0]["cells"]))
    assert "apisix-istio.dev" in str(row["Hosts"]) and "/*" in str(row["URIs"])


def _get_table(kube: KubeAPIServer, path: str) -> tuple[int, bytes]:
    """GET as a meta.k8s.io Table (what ``kubectl get`` asks for): the printer columns."""
    req = urllib.request.Request(kube.url + path, headers={
        "Authorization": f"Bearer {kube.token}",
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=kube._ctx()) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_full_v2_route_is_accepted_without_loss(kube: KubeAPIServer, crds: list[str]) -> None:
    (obj,) = docs(FULL_ROUTE)
    created = apply_strict(kube, obj)
    spec = created["spec"]
    assert spec["http"][0] == obj["spec"]["http"][0]  # every field kept, config objects untouched
    assert spec["http"][1]["upstreams"] == [{"name": "httpbin-external", "weight": 50}]
    assert spec["http"][2]["authentication"]["ldapAuth"]["uid"] == "cn"
    assert spec["stream"][0] == obj["spec"]["stream"][0]
    # the one default the schema adds: a stream backend's resolveGranularity
    assert spec["stream"][1]["backend"] == {"serviceName": "dns", "servicePort": 53, "resolveGranularity": "endpoint"}
    # readable at the old versions too (same schema)
    old = kube.get(f"{G}/v2beta2", "ApisixRoute", "httpbin-route", NS)
    assert old is not None and old["spec"] == spec


def test_plugin_enable_defaults_to_true(kube: KubeAPIServer, crds: list[str]) -> None:
    (obj,) = [d for d in docs(OTHERS) if d["kind"] == "ApisixPluginConfig"]
    created = apply_strict(kube, obj)
    assert created["spec"]["plugins"][1] == {"name": "echo", "enable": True, "config": {"before_body": "hi"}}


def test_route_validation_errors(kube: KubeAPIServer, crds: list[str]) -> None:
    def route(rule: dict[str, Any], name: str = "bad") -> dict[str, Any]:
        return {"apiVersion": V2, "kind": "ApisixRoute", "metadata": {"name": name}, "spec": {"http": [rule]}}

    backends = [{"serviceName": "productpage", "servicePort": 9080}]
    msg = rejected(kube, route({"match": {"paths": ["/*"]}, "backends": backends}))
    assert "spec.http[0].name" in msg and "Required value" in msg, msg
    msg = rejected(kube, route({"name": "r", "match": {"hosts": ["a.example.com"]}, "backends": backends}))
    assert "spec.http[0].match.paths" in msg and "Required value" in msg, msg
    msg = rejected(kube, route({"name": "r", "match": {"paths": []}, "backends": backends}))
    assert "spec.http[0].match.paths" in msg, msg
    msg = rejected(kube, route({"name": "r", "match": {"paths": ["/"]}, "backends": [{"serviceName": "s"}]}))
    assert "spec.http[0].backends[0].servicePort" in msg, msg
    # an unknown field is refused under strict validation (it would otherwise be pruned)
    msg = rejected(kube, route({"name": "r", "match": {"paths": ["/"]}, "backend": backends[0]}), status=400)
    assert 'unknown field "spec.http[0].backend"' in msg, msg
    # CEL: an expression subject needs a name unless it is the path
    msg = rejected(kube, route({"name": "r", "match": {"paths": ["/"], "exprs": [
        {"subject": {"scope": "Header"}, "op": "Equal", "value": "x"}]}, "backends": backends}))
    assert "spec.http[0].match.exprs[0].subject" in msg, msg
    # duplicate rule names (list map keyed by name)
    dup = route({"name": "r", "match": {"paths": ["/"]}, "backends": backends})
    dup["spec"]["http"].append(copy.deepcopy(dup["spec"]["http"][0]))
    msg = rejected(kube, dup)
    assert "Duplicate value" in msg, msg
    stream = {"apiVersion": V2, "kind": "ApisixRoute", "metadata": {"name": "bad"},
              "spec": {"stream": [{"name": "s", "protocol": "SCTP", "match": {"ingressPort": 1},
                                   "backend": backends[0]}]}}
    assert "spec.stream[0].protocol" in rejected(kube, stream)
    assert kube.get(V2, "ApisixRoute", "bad", NS) is None


def test_tls_bad_host_is_rejected(kube: KubeAPIServer, crds: list[str]) -> None:
    (tls,) = [d for d in docs(OTHERS) if d["kind"] == "ApisixTls"]
    created = apply_strict(kube, tls)
    assert created["spec"] == tls["spec"]
    bad = copy.deepcopy(tls)
    bad["metadata"]["name"] = "bad-tls"
    bad["spec"]["hosts"] = ["bad host!"]
    msg = rejected(kube, bad)
    assert "spec.hosts[0]" in msg and "should match" in msg, msg
    bad["spec"]["hosts"] = []
    assert "spec.hosts" in rejected(kube, bad)
    del bad["spec"]["secret"]
    bad["spec"]["hosts"] = ["ok.example.com"]
    assert "spec.secret" in rejected(kube, bad)


def test_upstreams_are_accepted(kube: KubeAPIServer, crds: list[str]) -> None:
    full, external = docs(FULL_UPSTREAM)
    created = apply_strict(kube, full)
    spec = created["spec"]
    assert spec["healthCheck"] == full["spec"]["healthCheck"]
    assert spec["subsets"] == full["spec"]["subsets"]
    assert spec["discovery"] == full["spec"]["discovery"]
    assert spec["tlsSecret"] == full["spec"]["tlsSecret"]
    pls = spec["portLevelSettings"]
    assert [p["port"] for p in pls] == [8080, 8443]
    assert pls[0]["loadbalancer"] == {"type": "ewma", "hashOn": "vars"}  # AIC's defaults
    assert pls[0]["healthCheck"]["active"] == {"type": "tcp", "unhealthy": {"tcpFailures": 1}}
    created = apply_strict(kube, external)
    assert created["spec"]["externalNodes"] == external["spec"]["externalNodes"]
    bad = copy.deepcopy(external)
    bad["metadata"]["name"] = "bad-upstream"
    bad["spec"] = {"loadbalancer": {"type": "random"}}
    assert "spec.loadbalancer.type" in rejected(kube, bad)
    bad["spec"] = {"healthCheck": {"passive": {"type": "http"}}}
    assert "spec.healthCheck.active" in rejected(kube, bad)


def test_consumers_with_every_auth_kind(kube: KubeAPIServer, crds: list[str]) -> None:
    for c in docs(CONSUMERS):
        created = apply_strict(kube, c)
        if c["metadata"]["name"] == "key":
            assert created["spec"] == c["spec"]
        got = created["spec"]["authParameter"]
        assert set(got) == set(c["spec"]["authParameter"])
    jwt = kube.get(V2, "ApisixConsumer", "jwt-rs", NS)
    assert jwt is not None and jwt["spec"]["authParameter"]["jwtAuth"]["value"]["algorithm"] == "RS256"
    # CEL: RS256 without keys; hmac without a key name
    bad = {"apiVersion": V2, "kind": "ApisixConsumer", "metadata": {"name": "bad-consumer"},
           "spec": {"authParameter": {"jwtAuth": {"value": {"key": "k", "algorithm": "RS256"}}}}}
    assert "public_key or private_key" in rejected(kube, bad)
    bad["spec"] = {"authParameter": {"hmacAuth": {"value": {"secret_key": "s"}}}}
    assert "spec.authParameter.hmacAuth.value" in rejected(kube, bad)


def test_other_kinds_are_accepted(kube: KubeAPIServer, crds: list[str]) -> None:
    for obj in docs(OTHERS):
        apply_strict(kube, obj)
    agr = kube.get(V2, "ApisixGlobalRule", "global", NS)
    assert agr is not None and agr["spec"]["plugins"] == [{"name": "prometheus", "enable": True}]
    bad = {"apiVersion": V2, "kind": "ApisixGlobalRule", "metadata": {"name": "bad-agr"}, "spec": {}}
    assert "spec.plugins" in rejected(kube, bad)


def test_amesh_plugin_config(kube: KubeAPIServer, crds: list[str]) -> None:
    created = apply_strict(kube, AMPC)
    assert created["spec"] == AMPC["spec"]
    with_selector = copy.deepcopy(AMPC)
    with_selector["metadata"]["name"] = "with-selector"
    with_selector["spec"]["selector"] = {"matchLabels": {"app": "productpage"},
                                         "matchExpressions": [{"key": "version", "operator": "In",
                                                               "values": ["v1", "v2"]}]}
    with_selector["spec"]["plugins"] = [{"name": "ext", "type": "pre-req", "config": '{"a":1}'},
                                        {"name": "cors", "config": "{}"}]
    created = apply_strict(kube, with_selector)
    assert created["spec"]["plugins"][1] == {"name": "cors", "type": "", "config": "{}"}  # default type ""
    bad = copy.deepcopy(AMPC)
    bad["metadata"]["name"] = "bad-ampc"
    bad["spec"]["plugins"] = []
    assert "spec.plugins" in rejected(kube, bad)
    bad["spec"]["plugins"] = [{"name": "x", "type": "pre", "config": "{}"}]
    assert "spec.plugins[0].type" in rejected(kube, bad)
    # config: Amesh's JSON string, or (Meshgate) an object kept as written, under strict validation too
    as_object = copy.deepcopy(AMPC)
    as_object["metadata"]["name"] = "config-object"
    as_object["spec"]["plugins"] = [{"name": "response-rewrite", "config": {"body": "hi", "headers": {"X-A": "1"}}}]
    created = apply_strict(kube, as_object)
    assert created["spec"]["plugins"][0]["config"] == {"body": "hi", "headers": {"X-A": "1"}}
    bad["spec"]["plugins"] = [{"name": "x"}]
    assert "spec.plugins[0].config" in rejected(kube, bad)     # still required
    del bad["spec"]["plugins"]
    assert "spec.plugins" in rejected(kube, bad)


@pytest.mark.parametrize("api_version,kind,name", [
    (V2, "ApisixRoute", "productpage"),
    (f"{G}/v1alpha1", "AmeshPluginConfig", "ameshpluginconfig-sample"),
])
def test_status_subresource(kube: KubeAPIServer, crds: list[str], api_version: str, kind: str, name: str) -> None:
    if kind == "ApisixRoute":
        apply_strict(kube, docs(PRODUCTPAGE)[0])
    else:
        apply_strict(kube, AMPC)
    before = kube.get(api_version, kind, name, NS)
    assert before is not None
    gen = before["metadata"]["generation"]
    cond = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "synced",
            "observedGeneration": gen, "lastTransitionTime": "2026-01-02T03:04:05Z"}
    # PUT /status with the full object
    body = {**before, "status": {"conditions": [cond]}}
    updated = kube.request("PUT", kube.path(api_version, kind, name, NS, "status"), body)
    assert updated["status"]["conditions"] == [cond]
    assert updated["metadata"]["generation"] == gen
    after = kube.get(api_version, kind, name, NS)
    assert after is not None and after["status"]["conditions"] == [cond]
    assert after["metadata"]["generation"] == gen
    assert after["spec"] == before["spec"]
    # status written through the main resource is ignored
    body = {**after, "status": {"conditions": [{**cond, "message": "ignored"}]}}
    res = kube.request("PUT", kube.path(api_version, kind, name, NS), body)
    assert res["status"]["conditions"] == [cond]
    # a malformed condition is refused by the status schema
    bad = {**after, "status": {"conditions": [{**cond, "status": "Maybe"}]}}
    with pytest.raises(KubeError) as ei:
        kube.request("PUT", kube.path(api_version, kind, name, NS, "status"), bad)
    assert ei.value.status == 422 and "status.conditions[0].status" in str(ei.value)
