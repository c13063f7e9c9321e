"""The CRD manifests in deploy/crds/: shape, structural schemas, and compatibility with AIC YAML.

No apiserver here (tests/e2e/test_crds_apiserver.py applies them to a real one).  Objects are
validated with ``jsonschema`` after converting the OpenAPI v3 subset of a CRD schema to JSON
Schema (see :func:`to_json_schema`): the ``x-kubernetes-*`` extensions and ``format`` are dropped,
int-or-string keeps its ``anyOf``, and every object that lists ``properties`` without preserving
unknown fields gets ``additionalProperties: false`` — which is how a field the apiserver would
prune (or reject under ``fieldValidation=Strict``, kubectl's default) shows up as an error here.
CEL rules (``x-kubernetes-validations``) are not evaluated; the e2e suite covers them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "deploy" / "crds"
# the seed journeys live in ../shared beside the repository (CI and sessions)
SEED = Path(__file__).resolve().parents[3].parent / "shared" / "seeds" / "000_bdc052a694df9c52.txt"

GROUP = "apisix.apache.org"
APISIX_VERSIONS = ["v2", "v2beta3", "v2beta2"]

# kind -> (plural, short names, served versions)
EXPECTED: dict[str, tuple[str, list[str], list[str]]] = {
    "ApisixRoute": ("apisixroutes", ["ar"], APISIX_VERSIONS),
    "ApisixUpstream": ("apisixupstreams", ["au"], APISIX_VERSIONS),
    "ApisixTls": ("apisixtlses", ["atls"], APISIX_VERSIONS),
    "ApisixPluginConfig": ("apisixpluginconfigs", ["apc"], APISIX_VERSIONS),
    "ApisixConsumer": ("apisixconsumers", ["ac"], APISIX_VERSIONS),
    "ApisixGlobalRule": ("apisixglobalrules", ["agr"], APISIX_VERSIONS),
    "AmeshPluginConfig": ("ameshpluginconfigs", ["ampc"], ["v1alpha1"]),
}

# The user's manifest from the seed (a blog post's v2beta2 ApisixRoute), byte for byte.
PRODUCTPAGE = (Path(__file__).resolve().parents[2] / "fixtures" / "k8s" / "seed-productpage-ar.yaml").read_text()

# Every leaf field the older AIC schemas had (v2beta2 in 1.3-1.5, v2beta3 in 1.4-1.8, v2 in 1.5-1.8)
# plus AIC master's v2.  Each must be declared in Meshgate's v2 schema, or a manifest using it would
# lose it (pruning) or be refused (strict field validation).  `[]` = array items, `{}` = map values.
_HC = [
    "active.type", "active.timeout", "active.concurrency", "active.host", "active.port", "active.httpPath",
    "active.strictTLS", "active.requestHeaders[]", "active.healthy.httpCodes[]", "active.healthy.interval",
    "active.healthy.successes", "active.unhealthy.httpCodes[]", "active.unhealthy.httpFailures",
    "active.unhealthy.interval", "active.unhealthy.tcpFailures", "active.unhealthy.timeout",
    "passive.type", "passive.healthy.httpCodes[]", "passive.healthy.successes", "passive.unhealthy.httpCodes[]",
    "passive.unhealthy.httpFailures", "passive.unhealthy.tcpFailures", "passive.unhealthy.timeout",
]
_UPSTREAM_CONFIG = (
    ["loadbalancer.type", "loadbalancer.hashOn", "loadbalancer.key", "scheme", "retries", "timeout.connect",
     "timeout.send", "timeout.read", "tlsSecret.name", "tlsSecret.namespace", "subsets[].name",
     "subsets[].labels{}", "passHost", "upstreamHost", "discovery.serviceName", "discovery.type",
     "discovery.args{}"]
    + ["healthCheck." + p for p in _HC]
)
_PLUGIN = ["name", "enable", "config", "secretRef"]
_AUTH_VALUES = {
    "basicAuth": ["username", "password"],
    "keyAuth": ["key"],
    "jwtAuth": ["key", "secret", "public_key", "private_key", "algorithm", "exp", "base64_secret",
                "lifetime_grace_period"],
    "hmacAuth": ["key_id", "access_key", "secret_key", "algorithm", "clock_skew", "signed_headers[]",
                 "keep_headers", "encode_uri_params", "validate_request_body", "max_req_body"],
    "wolfRBAC": ["server", "appid", "header_prefix"],
    "ldapAuth": ["user_dn"],
}
LEGACY_FIELDS: dict[str, list[str]] = {
    "ApisixRoute": [
        "ingressClassName", "http[].name", "http[].priority", "http[].timeout.connect", "http[].timeout.send",
        "http[].timeout.read", "http[].match.paths[]", "http[].match.hosts[]", "http[].match.methods[]",
        "http[].match.remoteAddrs[]", "http[].match.exprs[].subject.scope", "http[].match.exprs[].subject.name",
        "http[].match.exprs[].op", "http[].match.exprs[].value", "http[].match.exprs[].set[]",
        "http[].match.filter_func", "http[].websocket", "http[].plugin_config_name",
        "http[].plugin_config_namespace", "http[].backends[].serviceName", "http[].backends[].servicePort",
        "http[].backends[].resolveGranularity", "http[].backends[].weight", "http[].backends[].subset",
        "http[].upstreams[].name", "http[].upstreams[].weight", "http[].authentication.enable",
        "http[].authentication.type", "http[].authentication.keyAuth.header",
        "http[].authentication.jwtAuth.header", "http[].authentication.jwtAuth.query",
        "http[].authentication.jwtAuth.cookie", "http[].authentication.ldapAuth.base_dn",
        "http[].authentication.ldapAuth.ldap_uri", "http[].authentication.ldapAuth.use_tls",
        "http[].authentication.ldapAuth.uid",
        "stream[].name", "stream[].protocol", "stream[].match.ingressPort", "stream[].match.host",
        "stream[].backend.serviceName", "stream[].backend.servicePort", "stream[].backend.resolveGranularity",
        "stream[].backend.subset",
    ] + [f"{r}[].plugins[].{f}" for r in ("http", "stream") for f in _PLUGIN],
    "ApisixUpstream": (
        ["ingressClassName", "externalNodes[].name", "externalNodes[].type", "externalNodes[].weight",
         "externalNodes[].port", "portLevelSettings[].port",
         # AIC 1.x spelled the unhealthy timeout counter `timeouts` at the top level
         "healthCheck.active.unhealthy.timeouts", "healthCheck.passive.unhealthy.timeouts"]
        + _UPSTREAM_CONFIG + ["portLevelSettings[]." + p for p in _UPSTREAM_CONFIG]
    ),
    "ApisixTls": ["ingressClassName", "hosts[]", "secret.name", "secret.namespace", "client.caSecret.name",
                  "client.caSecret.namespace", "client.depth", "client.skip_mtls_uri_regex[]"],
    "ApisixPluginConfig": ["ingressClassName"] + [f"plugins[].{f}" for f in _PLUGIN],
    "ApisixGlobalRule": ["ingressClassName"] + [f"plugins[].{f}" for f in _PLUGIN],
    "ApisixConsumer": (
        ["ingressClassName"] + [f"plugins[].{f}" for f in _PLUGIN]
        + [f"authParameter.{k}.secretRef.name" for k in _AUTH_VALUES]
        + [f"authParameter.{k}.value.{f}" for k, fs in _AUTH_VALUES.items() for f in fs]
    ),
}


# ------------------------------------------------------------------------------------------ loading
def crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


def load_crds() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in crd_files():
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert len(docs) == 1, f"{f.name}: one CRD per file"
        out[docs[0]["spec"]["names"]["kind"]] = docs[0]
    return out


CRDS = load_crds()


def version(crd: dict[str, Any], name: str) -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == name:
            return v  # type: ignore[no-any-return]
    raise KeyError(name)


def schema_of(kind: str, ver: str) -> dict[str, Any]:
    return version(CRDS[kind], ver)["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------- structural-schema checker
ALLOWED_KEYS = {
    "type", "format", "title", "description", "default", "enum", "maximum", "minimum", "exclusiveMaximum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "multipleOf", "maxProperties", "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not",
    "properties", "additionalProperties", "nullable", "example", "externalDocs",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys", "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}
# inside allOf/anyOf/oneOf/not, apiextensions v1 forbids these (only the int-or-string anyOf may carry type)
JUNCTOR_FORBIDDEN = {"description", "type", "default", "additionalProperties", "nullable", "title"}
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_errors(node: Any, path: str = "") -> list[str]:
    """A small checker of the rules apiextensions.k8s.io/v1 enforces on CRD schemas (structural
    schemas), plus hygiene: known keywords only, `required` names declared, list-map keys required."""
    errs: list[str] = []
    at = path or "<root>"
    if not isinstance(node, dict):
        return [f"{at}: schema is not a mapping"]
    for k in node:
        if k not in ALLOWED_KEYS:
            errs.append(f"{at}: unknown keyword {k!r}")
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    t = node.get("type")
    if int_or_string:
        if "type" in node:
            errs.append(f"{at}: int-or-string must not set type")
        if node.get("anyOf", INT_OR_STRING) != INT_OR_STRING:
            errs.append(f"{at}: int-or-string anyOf must be exactly integer|string")
    elif t is None and not preserve:
        errs.append(f"{at}: no type (only int-or-string or preserve-unknown-fields nodes may omit it)")
    elif t is not None and t not in TYPES:
        errs.append(f"{at}: bad type {t!r}")
    if "properties" in node and "additionalProperties" in node:
        errs.append(f"{at}: properties and additionalProperties together")
    if ("properties" in node or "additionalProperties" in node) and t not in (None, "object"):
        errs.append(f"{at}: properties on a non-object")
    if t == "array":
        if not isinstance(node.get("items"), dict):
            errs.append(f"{at}: array without a single items schema")
    elif "items" in node:
        errs.append(f"{at}: items on a non-array")
    if node.get("additionalProperties") is False or node.get("additionalProperties") is True:
        errs.append(f"{at}: additionalProperties must be a schema in a structural CRD schema")
    props = node.get("properties") or {}
    for r in node.get("required", []):
        if props and r not in props:
            errs.append(f"{at}: required {r!r} is not a declared property")
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items") or {}
        for key in node.get("x-kubernetes-list-map-keys", []):
            prop = (item.get("properties") or {}).get(key)
            if prop is None or (key not in item.get("required", []) and "default" not in prop):
                errs.append(f"{at}: list-map key {key!r} must be a required (or defaulted) item property")
    if "default" in node and preserve and t is None:
        errs.append(f"{at}: default on an untyped node")
    for rule in node.get("x-kubernetes-validations", []):
        if not rule.get("rule"):
            errs.append(f"{at}: CEL validation without a rule")
    for name, sub in props.items():
        errs += structural_errors(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        errs += structural_errors(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        errs += structural_errors(node["additionalProperties"], f"{path}{{}}")
    for j in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(j, [])):
            if int_or_string and j == "anyOf":
                continue
            errs += _junctor_errors(sub, props, f"{at}.{j}[{i}]")
    if "not" in node:
        errs += _junctor_errors(node["not"], props, f"{at}.not")
    return errs


def _junctor_errors(node: Any, outer_props: dict[str, Any], at: str) -> list[str]:
    errs = []
    if not isinstance(node, dict):
        return [f"{at}: not a mapping"]
    for k in node:
        if k in JUNCTOR_FORBIDDEN or k.startswith("x-kubernetes-"):
            errs.append(f"{at}: {k!r} is not allowed inside a logical junctor")
    for r in node.get("required", []):
        if r not in outer_props:
            errs.append(f"{at}: required {r!r} is not declared in the enclosing properties")
    return errs


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], path + "{}")


# ------------------------------------------------------------------- OpenAPI v3 -> JSON Schema
def to_json_schema(node: Any) -> Any:
    """The validation-relevant subset, as JSON Schema (draft 2020-12 semantics, which jsonschema's
    validator_for picks by default).  Unknown fields become errors (strict field validation)."""
    if isinstance(node, list):
        return [to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k.startswith("x-kubernetes-") or k in ("format", "description", "example", "externalDocs"):
            continue
        if k in ("properties",):
            out[k] = {name: to_json_schema(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[k] = to_json_schema(v)
        elif k == "nullable":
            continue
        else:
            out[k] = copy.deepcopy(v)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def validate(kind: str, ver: str, obj: dict[str, Any]) -> list[str]:
    schema = to_json_schema(schema_of(kind, ver))
    v = jsonschema.Draft202012Validator(schema)
    return sorted("/".join(map(str, e.absolute_path)) + ": " + e.message for e in v.iter_errors(obj))


def declared(schema: dict[str, Any], dotted: str) -> bool:
    """Is the field path (``a.b[].c{}``) declared, i.e. kept by the apiserver's pruning?"""
    node = schema["properties"]["spec"]
    for part in dotted.replace("[]", ".[]").replace("{}", ".{}").split("."):
        if not part:
            continue
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return True
        if part == "[]":
            nxt = node.get("items")
        elif part == "{}":
            nxt = node.get("additionalProperties")
        else:
            nxt = (node.get("properties") or {}).get(part)
        if not isinstance(nxt, dict):
            return False
        node = nxt
    return True


# --------------------------------------------------------------------------------------- tests
def test_every_file_is_one_v1_crd_and_all_kinds_are_there() -> None:
    assert crd_files(), f"no CRDs in {CRD_DIR}"
    assert set(CRDS) == set(EXPECTED)
    for f in crd_files():
        (crd,) = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1", f.name
        assert crd["kind"] == "CustomResourceDefinition", f.name
        assert f.name == crd["metadata"]["name"] + ".yaml"


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_names_scope_versions(kind: str) -> None:
    plural, short, served = EXPECTED[kind]
    crd = CRDS[kind]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["listKind"]) == (kind, plural, kind + "List")
    assert names["singular"] == kind.lower()
    assert names["shortNames"] == short
    assert [v["name"] for v in spec["versions"]] == served
    assert all(v["served"] is True for v in spec["versions"])
    storage = [v["name"] for v in spec["versions"] if v["storage"]]
    assert storage == [served[0]]  # v2 (v1alpha1 for AmeshPluginConfig) is the one storage version
    assert spec.get("conversion", {"strategy": "None"}) == {"strategy": "None"}
    for v in spec["versions"]:
        assert v["subresources"] == {"status": {}}, v["name"]


def test_short_names_are_unique() -> None:
    shorts = [s for crd in CRDS.values() for s in crd["spec"]["names"]["shortNames"]]
    assert len(shorts) == len(set(shorts))


@pytest.mark.parametrize("kind", sorted(k for k in EXPECTED if k.startswith("Apisix")))
def test_served_versions_share_one_schema(kind: str) -> None:
    """Conversion None: an object written at v2beta2 is stored as is and read at v2, so the
    versions must agree on every field (here: identical schemas and printer columns)."""
    crd = CRDS[kind]
    v2 = version(crd, "v2")
    for name in ("v2beta3", "v2beta2"):
        old = version(crd, name)
        assert old["schema"] == v2["schema"], f"{kind} {name} schema differs from v2"
        assert old.get("additionalPrinterColumns") == v2.get("additionalPrinterColumns")
        assert old["storage"] is False


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_schemas_are_structural(kind: str) -> None:
    for v in CRDS[kind]["spec"]["versions"]:
        root = v["schema"]["openAPIV3Schema"]
        assert root["type"] == "object"
        assert root["properties"]["metadata"] == {"type": "object"}
        assert structural_errors(root) == [], f"{kind} {v['name']}"


def test_structural_checker_catches_the_usual_mistakes() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"properties": {"x": {"type": "string"}}},                          # no type
            "b": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "c": {"type": "array"},                                                  # no items
            "d": {"type": "string", "minitems": 1},                                  # typo
            "e": {"type": "object", "anyOf": [{"type": "object", "required": ["z"]}]},
            "f": {"type": "object", "required": ["nope"], "properties": {"g": {"type": "string"}}},
            "h": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
                  "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        },
    }
    errs = "\n".join(structural_errors(bad))
    for needle in (".a: no type", ".b: properties and additionalProperties", ".c: array without",
                   "unknown keyword 'minitems'", "'type' is not allowed inside", "required 'nope'",
                   "list-map key 'k'"):
        assert needle in errs
    ok = {"type": "object", "properties": {
        "p": {"x-kubernetes-int-or-string": True, "anyOf": INT_OR_STRING},
        "q": {"x-kubernetes-preserve-unknown-fields": True}}}
    assert structural_errors(ok) == []


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_status_conditions(kind: str) -> None:
    for v in CRDS[kind]["spec"]["versions"]:
        cond = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]["items"]
        props = cond["properties"]
        assert set(props) == {"type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"}
        assert props["status"]["enum"] == ["True", "False", "Unknown"]
        assert props["observedGeneration"]["type"] == "integer"
        assert props["lastTransitionTime"]["format"] == "date-time"
        assert set(cond["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}


@pytest.mark.parametrize("kind", sorted(k for k in EXPECTED if k.startswith("Apisix")))
def test_ingress_class_name_on_every_kind(kind: str) -> None:
    for v in CRDS[kind]["spec"]["versions"]:
        field = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["ingressClassName"]
        assert field["type"] == "string"


@pytest.mark.parametrize("kind", sorted(LEGACY_FIELDS))
def test_every_aic_field_is_declared_in_v2(kind: str) -> None:
    schema = schema_of(kind, "v2")
    missing = [f for f in LEGACY_FIELDS[kind] if not declared(schema, f)]
    assert missing == [], f"{kind}: fields of AIC's schemas that v2 would prune: {missing}"


def test_declared_helper_sees_pruned_fields() -> None:
    schema = schema_of("ApisixRoute", "v2")
    assert declared(schema, "http[].backends[].servicePort")
    assert declared(schema, "http[].plugins[].config.anything.at.all")  # free-form
    assert not declared(schema, "http[].backend.serviceName")  # v2beta1's singular backend is gone
    assert not declared(schema, "tcp[].name")


def test_plugin_config_is_free_form() -> None:
    for kind, path in (("ApisixRoute", "http[].plugins[].config"), ("ApisixRoute", "stream[].plugins[].config"),
                       ("ApisixPluginConfig", "plugins[].config"), ("ApisixGlobalRule", "plugins[].config"),
                       ("ApisixConsumer", "plugins[].config")):
        nodes = dict(walk(schema_of(kind, "v2")["properties"]["spec"]))
        assert nodes[path].get("x-kubernetes-preserve-unknown-fields") is True, (kind, path)


def test_preserve_unknown_fields_only_on_plugin_configs() -> None:
    for kind in EXPECTED:
        for v in CRDS[kind]["spec"]["versions"]:
            for path, node in walk(v["schema"]["openAPIV3Schema"]):
                if node.get("x-kubernetes-preserve-unknown-fields"):
                    assert path.endswith("plugins[].config"), (kind, path)


def test_route_printer_columns() -> None:
    cols = version(CRDS["ApisixRoute"], "v2")["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in cols] == [
        ("Hosts", ".spec.http[].match.hosts", 0),
        ("URIs", ".spec.http[].match.paths", 0),
        ("Target Service (HTTP)", ".spec.http[].backends[].serviceName", 1),
        ("Ingress Port (TCP)", ".spec.stream[].match.ingressPort", 1),
        ("Target Service (TCP)", ".spec.stream[].backend.serviceName", 1),
        ("Age", ".metadata.creationTimestamp", 0),
    ]
    tls = [c["jsonPath"] for c in version(CRDS["ApisixTls"], "v2")["additionalPrinterColumns"]]
    assert tls == [".spec.hosts", ".spec.secret.name", ".spec.secret.namespace", ".metadata.creationTimestamp",
                   ".spec.client.caSecret.name", ".spec.client.caSecret.namespace"]


# ----------------------------------------------------------------- objects against the schemas
def test_seed_productpage_is_the_users_text() -> None:
    if not SEED.exists():
        pytest.skip(f"{SEED} not present")
    assert PRODUCTPAGE in SEED.read_text()


@pytest.mark.parametrize("ver", APISIX_VERSIONS)
def test_seed_productpage_validates_and_keeps_every_field(ver: str) -> None:
    obj = yaml.safe_load(PRODUCTPAGE)
    if ver != "v2beta2":
        obj["apiVersion"] = f"{GROUP}/{ver}"
    assert validate("ApisixRoute", ver, obj) == []


def _route(**rule: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "r1", "match": {"paths": ["/*"]},
                            "backends": [{"serviceName": "s", "servicePort": 80}]}
    base.update(rule)
    return {"apiVersion": f"{GROUP}/v2", "kind": "ApisixRoute", "metadata": {"name": "x"},
            "spec": {"http": [{k: v for k, v in base.items() if v is not None}]}}


def test_route_rejections() -> None:
    assert validate("ApisixRoute", "v2", _route()) == []
    assert any("'name' is a required property" in e for e in validate("ApisixRoute", "v2", _route(name=None)))
    assert any("'paths' is a required property" in e
               for e in validate("ApisixRoute", "v2", _route(match={"hosts": ["a.b"]})))
    assert validate("ApisixRoute", "v2", _route(match={"paths": []})) != []
    assert validate("ApisixRoute", "v2", _route(match=None)) != []
    assert validate("ApisixRoute", "v2", _route(backends=[{"serviceName": "s"}])) != []  # servicePort required
    assert validate("ApisixRoute", "v2", _route(backends=[{"serviceName": "s", "servicePort": "http"}])) == []
    assert validate("ApisixRoute", "v2", _route(websocket="yes")) != []
    assert any("bogus" in e for e in validate("ApisixRoute", "v2", _route(bogus=1)))  # would be pruned
    plugins = [{"name": "limit-count", "enable": True, "config": {"count": 2, "nested": {"deep": [1]}}}]
    assert validate("ApisixRoute", "v2", _route(plugins=plugins)) == []


def test_tls_host_pattern() -> None:
    def tls(host: str) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/v2", "kind": "ApisixTls", "metadata": {"name": "t"},
                "spec": {"hosts": [host], "secret": {"name": "s", "namespace": "n"}}}
    assert validate("ApisixTls", "v2", tls("*.example.com")) == []
    assert validate("ApisixTls", "v2", tls("api-1.example.com")) == []
    for bad in ("bad host", "a/b", "x.*.com", ""):
        assert validate("ApisixTls", "v2", tls(bad)) != [], bad


def test_amesh_plugin_config() -> None:
    def ampc(plugins: Any) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "AmeshPluginConfig",
                "metadata": {"name": "ameshpluginconfig-sample"},
                "spec": {"plugins": plugins, "selector": {"matchLabels": {"app": "productpage"}}}}
    sample = [{"name": "response-rewrite", "type": "",
               "config": '{"body":"BODY_REWRITE","headers":{"X-Header":"Rewrite"}}'}]
    assert validate("AmeshPluginConfig", "v1alpha1", ampc(sample)) == []
    assert validate("AmeshPluginConfig", "v1alpha1", ampc([])) != []
    assert validate("AmeshPluginConfig", "v1alpha1", ampc([{**sample[0], "type": "pre"}])) != []
    assert validate("AmeshPluginConfig", "v1alpha1", ampc([{**sample[0], "name": ""}])) != []
    # config: Amesh's JSON string, or (Meshgate) an object; its content is the controller's to
    # check against the plugin's schema (status Sync=False InvalidSpec), not the CRD's
    assert validate("AmeshPluginConfig", "v1alpha1", ampc([{**sample[0], "config": {"body": "x"}}])) == []
    assert validate("AmeshPluginConfig", "v1alpha1", ampc([{"name": "echo"}])) != []      # config required
    item = schema_of("AmeshPluginConfig", "v1alpha1")["properties"]["spec"]["properties"]["plugins"]["items"]
    assert item["properties"]["type"]["default"] == ""
    assert item["properties"]["type"]["enum"] == ["", "pre-req", "post-req"]


def test_consumer_hmac_needs_one_key_name() -> None:
    def consumer(value: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/v2", "kind": "ApisixConsumer", "metadata": {"name": "c"},
                "spec": {"authParameter": {"hmacAuth": {"value": value}}}}
    assert validate("ApisixConsumer", "v2", consumer({"key_id": "k", "secret_key": "s"})) == []
    assert validate("ApisixConsumer", "v2", consumer({"access_key": "k", "secret_key": "s"})) == []
    assert validate("ApisixConsumer", "v2", consumer({"secret_key": "s"})) != []


def test_readme_lists_every_crd() -> None:
    readme = (CRD_DIR / "README.md").read_text()
    for f in crd_files():
        assert f"`{f.name}`" in readme, f.name
    for kind, (_, short, _) in EXPECTED.items():
        assert f"| {kind} | `{short[0]}` |" in readme, kind
