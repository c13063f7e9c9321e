"""API-driven standalone mode: ``/apisix/admin/configs`` as a controller (ADC, the ingress
controller) pushes and reads it.  Expected texts are APISIX 3.18's (apisix/admin/standalone.lua,
apisix/admin/config_validate.lua; t/admin/standalone.spec.ts, t/admin/standalone.t) where
APISIX fixes them."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
import yaml

from meshgate.admin.config_doc import check_document
from meshgate.admin.httpserver import ApiRequest
from meshgate.admin.standalone import StandaloneAPI
from meshgate.config import ConfigStore
from meshgate.model import KIND_NAMES
from meshgate.plugins import PluginRegistry

NOW = 1_700_000_000
UPSTREAM = {"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"}
ROUTE_R1 = {"id": "r1", "uri": "/r1", "upstream": UPSTREAM, "plugins": {"proxy-rewrite": {"uri": "/hello"}}}
ROUTE_R2 = {"id": "r2", "uri": "/r2", "upstream": UPSTREAM, "plugins": {"proxy-rewrite": {"uri": "/hello"}}}
CONFIG1 = {"routes": [ROUTE_R1]}
CONFIG2 = {"routes": [ROUTE_R2]}
ALL_KEYS = (*KIND_NAMES, "plugins")
CREDENTIALS = {
    "consumers": [
        {"username": "john_1"},
        {"id": "john_1/credentials/john-a", "plugins": {"key-auth": {"key": "auth-a"}}},
        {"id": "john_1/credentials/john-b", "plugins": {"key-auth": {"key": "auth-b"}}},
    ],
}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    reg = PluginRegistry()
    reg.load_builtin()
    return reg


@pytest.fixture
def store() -> ConfigStore:
    return ConfigStore()


@pytest.fixture
def api(store: ConfigStore, registry: PluginRegistry) -> StandaloneAPI:
    return StandaloneAPI(store, registry, clock=lambda: NOW + 0.7)


def request(method: str, body: Any = None, *, yaml_body: bool = False, digest: str | None = None,
            accept: str | None = None, path: str = "/apisix/admin/configs") -> ApiRequest:
    headers: dict[str, str] = {}
    raw = b""
    if isinstance(body, bytes):
        raw = body
    elif body is not None:
        raw = yaml.safe_dump(body).encode() if yaml_body else json.dumps(body).encode()
    if yaml_body:
        headers["content-type"] = "application/yaml"
    elif body is not None:
        headers["content-type"] = "application/json"
    if digest is not None:
        headers["x-digest"] = digest
    if accept is not None:
        headers["accept"] = accept
    return ApiRequest(method, path, {}, headers, raw, "127.0.0.1")


async def call(api: StandaloneAPI, method: str, body: Any = None, *, sub: str = "",
               **kw: Any) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded body) as a client sees them."""
    path = "/apisix/admin/configs" + sub
    status, headers, raw = await api.handle(request(method, body, path=path, **kw), sub)
    ctype = headers.get("Content-Type", "")
    if raw and ctype == "application/json":
        return status, headers, json.loads(raw)
    if raw and ctype == "application/yaml":
        return status, headers, yaml.safe_load(raw)
    return status, headers, raw


async def push(api: StandaloneAPI, body: Any, digest: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    return await call(api, "PUT", body, digest=digest, **kw)


def served(store: ConfigStore, kind: str = "routes") -> dict[str, Any]:
    return {id: dict(res.value) for id, res in store.snapshot.items(kind).items()}


# --- GET / HEAD -----------------------------------------------------------------------------


async def test_get_before_any_push_has_every_counter_at_zero_and_no_metadata(api: StandaloneAPI) -> None:
    status, headers, body = await call(api, "GET")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body == {f"{k}_conf_version": 0 for k in ALL_KEYS}
    assert "X-Last-Modified" not in headers and "X-Digest" not in headers

    status, headers, body = await call(api, "GET", accept="application/yaml")
    assert status == 200
    assert headers["Content-Type"] == "application/yaml"
    assert body["routes_conf_version"] == 0 and body["consumers_conf_version"] == 0
    assert "X-Digest" not in headers

    status, headers, raw = await call(api, "HEAD")
    assert (status, raw) == (200, b"")
    assert "X-Digest" not in headers


async def test_push_json_then_read_back_json_and_yaml(api: StandaloneAPI, store: ConfigStore) -> None:
    status, headers, body = await push(api, CONFIG1, "1")
    assert (status, body) == (202, b"")
    assert headers["X-Last-Modified"] == str(NOW)
    assert headers["X-Digest"] == "1"
    # the workers' snapshot now serves r1
    assert served(store) == {"r1": ROUTE_R1}

    status, headers, body = await call(api, "GET")
    assert status == 200
    assert body["routes"] == CONFIG1["routes"]  # exactly as pushed
    assert {k: body[f"{k}_conf_version"] for k in ALL_KEYS} == {k: 1 for k in ALL_KEYS}
    assert body["X-Digest"] == "1" and body["X-Last-Modified"] == NOW
    assert "services" not in body  # kinds with no items are absent, as in APISIX
    assert headers["X-Digest"] == "1" and headers["X-Last-Modified"] == str(NOW)

    status, headers, raw = await api.handle(request("GET", accept="application/yaml"), "")
    assert status == 200 and headers["Content-Type"] == "application/yaml"
    text = raw.decode()
    assert "routes:" in text and "id: r1" in text
    assert not text.startswith("---") and not text.rstrip().endswith("...")
    assert yaml.safe_load(text)["routes"] == CONFIG1["routes"]
    assert headers["X-Digest"] == "1"

    status, headers, raw = await call(api, "HEAD")
    assert (status, raw) == (200, b"")
    assert headers["X-Digest"] == "1" and headers["X-Last-Modified"] == str(NOW)


async def test_push_yaml_replaces_everything(api: StandaloneAPI, store: ConfigStore) -> None:
    assert (await push(api, CONFIG1, "1"))[0] == 202
    status, _, _ = await push(api, CONFIG2, "2", yaml_body=True)
    assert status == 202
    assert served(store) == {"r2": ROUTE_R2}  # r1 is gone
    _, headers, body = await call(api, "GET")
    assert body["routes"] == CONFIG2["routes"]
    assert body["routes_conf_version"] == 2 and body["ssls_conf_version"] == 2
    assert headers["X-Digest"] == "2"


async def test_second_push_removing_items_deletes_them(api: StandaloneAPI, store: ConfigStore) -> None:
    doc = {
        "routes": [ROUTE_R1, {"id": "r3", "uri": "/r3", "upstream_id": "u1"}],
        "upstreams": [{"id": "u1", **UPSTREAM}],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
        "global_rules": [{"id": "g1", "plugins": {"prometheus": {}}}],
    }
    assert (await push(api, doc, "1"))[0] == 202
    assert set(served(store)) == {"r1", "r3"}
    assert set(served(store, "upstreams")) == {"u1"}
    assert set(served(store, "consumers")) == {"jack"}
    version = store.snapshot.version

    assert (await push(api, {"routes": [ROUTE_R1]}, "2"))[0] == 202
    assert store.snapshot.version == version + 1
    assert set(served(store)) == {"r1"}
    assert served(store, "upstreams") == {}
    assert served(store, "consumers") == {}
    assert served(store, "global_rules") == {}

    assert (await push(api, {}, "3"))[0] == 202
    assert all(not store.snapshot.items(k) for k in KIND_NAMES)
    _, _, body = await call(api, "GET")
    assert "routes" not in body and body["routes_conf_version"] == 3


async def test_the_document_read_back_can_be_pushed_again(api: StandaloneAPI, store: ConfigStore) -> None:
    # GET carries X-Digest / X-Last-Modified in the body: APISIX ignores keys it does not know
    assert (await push(api, CONFIG1, "1"))[0] == 202
    _, _, doc = await call(api, "GET")
    doc["routes_conf_version"] += 1
    status, _, body = await push(api, doc, "again")
    assert (status, body) == (202, b"")
    assert served(store) == {"r1": ROUTE_R1}


# --- digest ---------------------------------------------------------------------------------


async def test_digest_is_required(api: StandaloneAPI, store: ConfigStore) -> None:
    status, _, body = await call(api, "PUT", {"routes_conf_version": 100})
    assert (status, body) == (400, {"error_msg": "missing digest header"})
    assert store.snapshot.version == 0
    assert (await call(api, "GET"))[2]["routes_conf_version"] == 0


async def test_same_digest_is_skipped(api: StandaloneAPI, store: ConfigStore) -> None:
    assert (await push(api, CONFIG1, "d1"))[0] == 202
    version = store.snapshot.version
    # same digest: 204 before anything else is looked at, even a different (or broken) document
    assert (await push(api, CONFIG2, "d1"))[:3:2] == (204, b"")
    assert (await push(api, {"routes": [{"id": "x", "uri": 5}]}, "d1"))[0] == 204
    assert store.snapshot.version == version
    assert served(store) == {"r1": ROUTE_R1}
    _, headers, body = await call(api, "GET")
    assert body["routes_conf_version"] == 1 and headers["X-Digest"] == "d1"
    # a new digest applies
    assert (await push(api, CONFIG2, "d2"))[0] == 202
    assert served(store) == {"r2": ROUTE_R2}


async def test_versions_and_digest_outlive_the_handler(store: ConfigStore, registry: PluginRegistry) -> None:
    # APISIX keeps them in a shared dict: a handler built again on the same store still has them
    first = StandaloneAPI(store, registry)
    assert (await push(first, {**CONFIG1, "routes_conf_version": 10}, "keep"))[0] == 202
    second = StandaloneAPI(store, registry)
    assert (await push(second, CONFIG2, "keep"))[0] == 204
    status, _, body = await push(second, {"routes_conf_version": 9}, "new")
    assert (status, body) == (400, {"error_msg": "routes_conf_version must be greater than or equal to (10)"})
    assert (await call(second, "GET"))[2]["routes"] == CONFIG1["routes"]
    # another store is another gateway
    other = StandaloneAPI(ConfigStore(), registry)
    assert (await call(other, "GET"))[2]["routes_conf_version"] == 0


# --- conf_version ---------------------------------------------------------------------------


async def test_conf_version_given_or_incremented(api: StandaloneAPI) -> None:
    assert (await push(api, {}, "1"))[0] == 202
    assert (await push(api, {}, "2"))[0] == 202
    assert (await push(api, {"routes_conf_version": 15}, "3", yaml_body=True))[0] == 202
    body = (await call(api, "GET"))[2]
    assert body["routes_conf_version"] == 15
    assert {body[f"{k}_conf_version"] for k in ALL_KEYS if k != "routes"} == {3}
    assert (await push(api, {"routes_conf_version": 17}, "4", yaml_body=True))[0] == 202
    body = (await call(api, "GET"))[2]
    assert body["routes_conf_version"] == 17 and body["upstreams_conf_version"] == 4


async def test_lower_conf_version_is_refused_and_nothing_changes(api: StandaloneAPI, store: ConfigStore) -> None:
    assert (await push(api, {**CONFIG1, "routes_conf_version": 100}, "1"))[0] == 202
    version = store.snapshot.version
    status, _, body = await push(api, {**CONFIG2, "routes_conf_version": -1, "upstreams_conf_version": 50}, "2",
                                 yaml_body=True)
    assert (status, body) == (400, {"error_msg": "routes_conf_version must be greater than or equal to (100)"})
    assert store.snapshot.version == version
    assert served(store) == {"r1": ROUTE_R1}
    _, headers, got = await call(api, "GET")
    assert got["routes_conf_version"] == 100 and got["upstreams_conf_version"] == 1
    assert headers["X-Digest"] == "1"


async def test_conf_version_must_be_a_number(api: StandaloneAPI, store: ConfigStore) -> None:
    status, _, body = await push(api, {"routes_conf_version": "adc"}, "1", yaml_body=True)
    assert (status, body) == (400, {"error_msg": "routes_conf_version must be a number"})
    status, _, body = await push(api, {"ssls_conf_version": True}, "1")
    assert (status, body) == (400, {"error_msg": "ssls_conf_version must be a number"})
    assert store.snapshot.version == 0


async def test_equal_conf_version_keeps_the_kind_as_it_is(api: StandaloneAPI, store: ConfigStore) -> None:
    # t/admin/standalone.t TEST 8: the route references an upstream; only the routes change
    u1 = {"id": "u1", **UPSTREAM}
    first = {"routes_conf_version": 1060, "upstreams_conf_version": 1060,
             "routes": [{"id": "r1", "uri": "/r1", "upstream_id": "u1"}], "upstreams": [u1]}
    assert (await push(api, first, "t8-1"))[0] == 202
    u1_res = store.snapshot.get("upstreams", "u1")
    second = {"routes_conf_version": 1062, "upstreams_conf_version": 1060,
              "routes": [{"id": "r1", "uri": "/r2", "upstream_id": "u1"}],
              # ignored: the upstreams' version did not move
              "upstreams": [{"id": "u1", "nodes": {"127.0.0.9:1": 1}, "type": "roundrobin"}]}
    assert (await push(api, second, "t8-2"))[0] == 202
    assert served(store) == {"r1": {"id": "r1", "uri": "/r2", "upstream_id": "u1"}}
    assert store.snapshot.get("upstreams", "u1") is u1_res
    body = (await call(api, "GET"))[2]
    assert body["upstreams"] == [u1] and body["upstreams_conf_version"] == 1060
    assert body["routes_conf_version"] == 1062

    # equal version, different items: the routes stay as they are too
    assert (await push(api, {"routes_conf_version": 1062, "upstreams_conf_version": 1060}, "t8-3"))[0] == 202
    assert served(store) == {"r1": {"id": "r1", "uri": "/r2", "upstream_id": "u1"}}
    assert set(served(store, "upstreams")) == {"u1"}


# --- modifiedIndex --------------------------------------------------------------------------


async def test_modified_index_controls_item_changes(api: StandaloneAPI, store: ConfigStore) -> None:
    # t/admin/standalone.spec.ts "control resource changes using modifiedIndex"
    c1 = {"routes": [{**ROUTE_R1, "modifiedIndex": 1}]}
    c2 = copy.deepcopy(c1)
    c2["routes"][0]["uri"] = "/r2"
    c3 = copy.deepcopy(c2)
    c3["routes"][0]["modifiedIndex"] = 2

    assert (await push(api, c1, "1"))[0] == 202
    assert served(store) == {"r1": ROUTE_R1}  # modifiedIndex is not part of the object
    res = store.snapshot.get("routes", "r1")
    assert res is not None and res.modified_index == 1

    assert (await push(api, c2, "2"))[0] == 202
    assert served(store)["r1"]["uri"] == "/r1"  # same modifiedIndex: the served value stays
    assert (await call(api, "GET"))[2]["routes"] == c2["routes"]  # APISIX reports the document as pushed

    assert (await push(api, c3, "3"))[0] == 202
    assert served(store)["r1"]["uri"] == "/r2"
    res = store.snapshot.get("routes", "r1")
    assert res is not None and res.modified_index == 2


async def test_modified_index_of_a_consumer(api: StandaloneAPI, store: ConfigStore) -> None:
    doc: dict[str, Any] = {
        "consumers": [{"modifiedIndex": 10, "username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]}
    assert (await push(api, doc, "1"))[0] == 202
    doc["consumers"][0]["plugins"]["key-auth"]["key"] = "jack-key-updated"
    assert (await push(api, doc, "2"))[0] == 202
    assert served(store, "consumers")["jack"]["plugins"] == {"key-auth": {"key": "jack-key"}}
    doc["consumers"][0]["modifiedIndex"] = 11
    assert (await push(api, doc, "3"))[0] == 202
    assert served(store, "consumers")["jack"]["plugins"] == {"key-auth": {"key": "jack-key-updated"}}


async def test_modified_index_must_be_an_integer(api: StandaloneAPI, store: ConfigStore) -> None:
    # standalone.lua patch_schema adds modifiedIndex {type: integer} to the resource schemas
    status, _, body = await push(api, {"routes": [{**ROUTE_R1, "modifiedIndex": "x"}]}, "1")
    assert (status, body) == (400, {"error_msg": 'invalid configuration: property "modifiedIndex" validation failed: '
                                                 "wrong type: expected integer, got string"})
    assert store.snapshot.version == 0


async def test_unchanged_items_keep_their_compiled_identity(api: StandaloneAPI, store: ConfigStore) -> None:
    assert (await push(api, {"routes": [ROUTE_R1, ROUTE_R2]}, "1"))[0] == 202
    r1 = store.snapshot.get("routes", "r1")
    changed = {**ROUTE_R2, "uri": "/changed"}
    assert (await push(api, {"routes": [ROUTE_R1, changed]}, "2"))[0] == 202
    assert store.snapshot.get("routes", "r1") is r1
    r2 = store.snapshot.get("routes", "r2")
    assert r2 is not None and r2.value["uri"] == "/changed" and r2.modified_index == 2


async def test_items_already_served_keep_their_place(api: StandaloneAPI, store: ConfigStore) -> None:
    # config_yaml.lua keeps the values array: survivors in place, new items appended
    ra, rb, rc = ({"id": x, "uri": f"/{x}", "upstream": UPSTREAM} for x in "abc")
    assert (await push(api, {"routes": [ra, rb]}, "1"))[0] == 202
    assert (await push(api, {"routes": [rc, rb, ra]}, "2"))[0] == 202
    assert list(store.snapshot.items("routes")) == ["a", "b", "c"]


# --- validation: the whole push is refused --------------------------------------------------


async def test_invalid_item_refuses_the_whole_push(api: StandaloneAPI, store: ConfigStore) -> None:
    assert (await push(api, CONFIG1, "1"))[0] == 202
    version = store.snapshot.version
    bad = {"routes": [ROUTE_R2, {**ROUTE_R1, "uri": 123}],
           "upstreams": [{"id": "u1", **UPSTREAM}]}
    status, _, body = await push(api, bad, "2")
    assert status == 400
    # t/admin/standalone.spec.ts "update config (not compliant with jsonschema)"
    assert body == {"error_msg": 'invalid configuration: property "uri" validation failed: wrong type: expected string, '
                                 "got number"}
    # nothing applied: same snapshot, same document, counters and digest
    assert store.snapshot.version == version
    assert served(store) == {"r1": ROUTE_R1}
    assert served(store, "upstreams") == {}
    _, headers, got = await call(api, "GET")
    assert got["routes"] == CONFIG1["routes"] and got["routes_conf_version"] == 1
    assert headers["X-Digest"] == "1"


async def test_invalid_upstream_in_a_service(api: StandaloneAPI, store: ConfigStore) -> None:
    bad = {"services": [{"id": "s1", "upstream": {**UPSTREAM, "type": "chash", "hash_on": "vars",
                                                   "key": "args_invalid"}}]}
    status, _, body = await push(api, bad, "1")
    assert status == 400
    # t/admin/standalone.spec.ts "update config (invalid upstream)" (upstream.lua check_upstream_conf)
    assert body["error_msg"].startswith('invalid configuration: failed to match pattern "^((uri|server_name|')
    assert body["error_msg"].endswith(')$" with "args_invalid"')
    assert store.snapshot.version == 0


async def test_duplicates(api: StandaloneAPI, store: ConfigStore) -> None:
    routes = {"routes": [{"id": "r1", "uri": "/r1", "upstream_id": "u1"},
                         {"id": "r1", "uri": "/r2", "upstream_id": "u1"}]}
    assert (await push(api, routes, "1"))[2] == {"error_msg": "found duplicate id r1 in routes"}
    consumers = {"consumers": [{"username": "consumer1", "plugins": {"key-auth": {"key": "consumer1"}}},
                               {"username": "consumer1", "plugins": {"key-auth": {"key": "consumer1"}}}]}
    assert (await push(api, consumers, "2"))[2] == {"error_msg": "found duplicate username consumer1 in consumers"}
    credentials = {"consumers": [{"username": "john_1"},
                                 {"id": "john_1/credentials/john-a", "plugins": {"key-auth": {"key": "auth-a"}}},
                                 {"id": "john_1/credentials/john-a", "plugins": {"key-auth": {"key": "auth-a"}}}]}
    assert (await push(api, credentials, "3"))[2] == {
        "error_msg": "found duplicate credential id john_1/credentials/john-a in consumers"}
    validated = await call(api, "POST", credentials, sub="/validate")
    assert {"resource_type": "consumers", "resource_id": "john_1/credentials/john-a", "index": 2,
            "error": "found duplicate credential id john_1/credentials/john-a in consumers"} in validated[2]["errors"]
    assert store.snapshot.version == 0


async def test_plugin_conf_errors(api: StandaloneAPI, store: ConfigStore) -> None:
    unknown: dict[str, Any] = {"plugins": {"invalid-plugin": {}}}
    for doc in ({"services": [{"id": "s1", "name": "s1", **unknown}]},
                {"routes": [{"id": "r1", "uri": "/r1", **unknown}]}):
        assert await push(api, doc, "1") == (400, {"Content-Type": "application/json"},
                                              {"error_msg": "unknown plugin [invalid-plugin]"})

    bad_schema = {"routes": [{**ROUTE_R1, "plugins": {"proxy-rewrite": {"uri": 123}}}]}
    assert (await push(api, bad_schema, "2"))[2] == {
        "error_msg": 'failed to check the configuration of plugin proxy-rewrite err: property "uri" validation '
                     "failed: wrong type: expected string, got number"}

    # consumers word their plugin problems "invalid plugins configuration: ..." (consumers.lua)
    consumer = {"consumers": [{"username": "jack", "plugins": {"key-auth": {}}}]}
    assert (await push(api, consumer, "3"))[2] == {
        "error_msg": 'invalid plugins configuration: failed to check the configuration of plugin key-auth err: '
                     'property "key" is required'}

    global_rule = {"global_rules": [{"id": "g", "plugins": {"limit-count": {"count": 0, "time_window": 60}}}]}
    msg = (await push(api, global_rule, "4"))[2]["error_msg"]
    assert msg.startswith("failed to check the configuration of plugin limit-count err: ")

    meta = {"_meta": {"filter": [["arg_a", "bogus", "1"]]}}
    doc = {"routes": [{**ROUTE_R1, "plugins": {"proxy-rewrite": {"uri": "/x", **meta}}}]}
    msg = (await push(api, doc, "5"))[2]["error_msg"]
    # plugin.lua check_single_plugin_schema: "failed to validate the 'vars' expression: " .. err
    assert msg.startswith("failed to validate the 'vars' expression: ") and "'bogus'" in msg
    assert store.snapshot.version == 0


async def test_plugin_metadata(api: StandaloneAPI, store: ConfigStore) -> None:
    assert (await push(api, {"plugin_metadata": [{"id": "no-such-plugin"}]}, "1"))[2] == {
        "error_msg": "invalid plugin name"}
    assert (await push(api, {"plugin_metadata": [{"id": "http-logger", "log_format": "x"}]}, "2"))[2] == {
        "error_msg": 'invalid configuration: property "log_format" validation failed: wrong type: expected object, '
                     "got string"}
    assert store.snapshot.version == 0
    good = {"plugin_metadata": [{"id": "http-logger", "log_format": {"host": "$host"}}]}
    assert (await push(api, good, "3"))[0] == 202
    assert served(store, "plugin_metadata") == {"http-logger": {"id": "http-logger", "log_format": {"host": "$host"}}}


async def test_route_vars_are_compiled(api: StandaloneAPI, store: ConfigStore) -> None:
    doc = {"routes": [{**ROUTE_R1, "vars": [["arg_a", "bogus", "1"]]}]}
    status, _, body = await push(api, doc, "1")
    assert status == 400
    # routes.lua check_conf: "failed to validate the 'vars' expression: " .. err
    assert body["error_msg"].startswith("failed to validate the 'vars' expression: ")
    assert "'bogus'" in body["error_msg"]
    assert store.snapshot.version == 0


async def test_dangling_reference_is_accepted_as_apisix_does(api: StandaloneAPI, store: ConfigStore,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    # config_validate.lua checks pushes with skip_references_check: the request fails at run time
    doc = {"routes": [{"id": "r1", "uri": "/r1", "upstream_id": "missing"}]}
    with caplog.at_level(logging.WARNING, logger="meshgate.admin"):
        assert (await push(api, doc, "1"))[0] == 202
    assert served(store) == {"r1": {"id": "r1", "uri": "/r1", "upstream_id": "missing"}}
    assert any('routes id=r1: /upstream_id: references upstream "missing", which does not exist' in r.getMessage()
               for r in caplog.records)
    assert (await call(api, "POST", doc, sub="/validate"))[:3:2] == (200, {})
    # pushed together, the reference resolves: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meshgate.admin"):
        assert (await push(api, {**doc, "upstreams": [{"id": "missing", **UPSTREAM}]}, "2"))[0] == 202
    assert not [r for r in caplog.records if "dangling" in r.getMessage()]


@pytest.mark.parametrize(("doc", "error"), [
    # config_validate.lua check_conf: tostring(item.id) names the secret manager
    ({"secrets": [{"uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "t"}]}, "invalid secret id: nil"),
    ({"plugin_metadata": [{"log_format": {"host": "$host"}}]}, "missing plugin name"),   # plugin_metadata.lua
    ({"consumers": [{"username": "jack", "id": "bob"}]}, "wrong username"),   # consumers.lua: item.id is the name
    # credentials.lua with the credential schema (schema_def.lua: id is id_schema or <user>/credentials/<id>)
    ({"consumers": [{"id": "a.b/credentials/x", "plugins": {"key-auth": {"key": "k"}}}]},
     'invalid configuration: property "id" validation failed: value should match only one schema, but matches none'),
    ({"routes": "r1"}, "invalid configuration: wrong type: expected array, got string"),
])
async def test_the_checks_are_the_etcd_mode_validate_endpoints(api: StandaloneAPI, store: ConfigStore,
                                                               registry: PluginRegistry, doc: dict[str, Any],
                                                               error: str) -> None:
    # one validation (admin/config_doc.py) behind PUT, and /validate in both modes
    assert (await push(api, doc, "1"))[2] == {"error_msg": error}
    assert (await call(api, "POST", doc, sub="/validate"))[2]["errors"][0]["error"] == error
    assert (await check_document(doc, registry, standalone=False)).first_error == error
    assert store.snapshot.version == 0


# --- request bodies -------------------------------------------------------------------------


async def test_bad_request_bodies(api: StandaloneAPI, store: ConfigStore) -> None:
    status, _, body = await push(api, b"", "1")
    assert (status, body) == (400, {"error_msg": "invalid request body: empty request body"})
    status, _, body = await push(api, b"{abcd", "1")
    assert status == 400 and body["error_msg"].startswith("invalid request body: ")
    status, _, body = await push(api, b"invalid: yaml: [", "1", yaml_body=True)
    assert status == 400 and body["error_msg"].startswith("invalid request body: invalid yaml request body")
    status, _, body = await push(api, b"just text", "1", yaml_body=True)
    assert (status, body) == (400, {"error_msg": "invalid request body: invalid yaml request body"})
    status, _, body = await push(api, b'["routes"]', "1")
    assert status == 400 and body["error_msg"].startswith("invalid request body: ")
    assert store.snapshot.version == 0


# --- credentials ----------------------------------------------------------------------------


async def test_consumer_with_credentials(api: StandaloneAPI, store: ConfigStore) -> None:
    status, _, body = await push(api, {"routes": [ROUTE_R1], **CREDENTIALS}, "1")
    assert (status, body) == (202, b"")
    assert list(served(store, "consumers")) == ["john_1", "john_1/credentials/john-a", "john_1/credentials/john-b"]
    assert served(store, "consumers")["john_1/credentials/john-a"]["plugins"] == {"key-auth": {"key": "auth-a"}}
    assert (await call(api, "POST", CREDENTIALS, sub="/validate"))[:3:2] == (200, {})


async def test_credentials_take_auth_plugins_only(api: StandaloneAPI, store: ConfigStore) -> None:
    doc: dict[str, Any] = {"consumers": [{"username": "john_1"},
                                         {"id": "john_1/credentials/a", "plugins": {"proxy-rewrite": {"uri": "/x"}}}]}
    assert (await push(api, doc, "1"))[2] == {"error_msg": "only supports auth type plugins in consumer credential"}
    doc["consumers"][1]["plugins"] = {"key-auth": {}}
    assert (await push(api, doc, "2"))[2] == {
        "error_msg": "invalid plugins configuration: failed to check the configuration of plugin key-auth err: "
                     'property "key" is required'}
    assert store.snapshot.version == 0


# --- POST /validate -------------------------------------------------------------------------


async def test_validate_success_changes_nothing(api: StandaloneAPI, store: ConfigStore) -> None:
    assert await call(api, "POST", CONFIG1, sub="/validate") == (200, {"Content-Type": "application/json"}, {})
    assert (await call(api, "POST", CONFIG1, sub="/validate", yaml_body=True))[:3:2] == (200, {})
    multi = {"routes": [ROUTE_R1, ROUTE_R2], "services": [{"id": "s1", "upstream": UPSTREAM}],
             "routes_conf_version": 1, "services_conf_version": 1}
    assert (await call(api, "POST", multi, sub="/validate"))[:3:2] == (200, {})
    # no digest needed, nothing stored
    assert store.snapshot.version == 0
    _, headers, body = await call(api, "GET")
    assert "routes" not in body and body["routes_conf_version"] == 0 and "X-Digest" not in headers


async def test_validate_lists_every_problem(api: StandaloneAPI, store: ConfigStore) -> None:
    doc = {
        "routes_conf_version": "not_a_number",
        "routes": [
            ROUTE_R1,
            {"id": "r1", "uri": "/dup", "upstream": UPSTREAM},
            {"id": "r3", "uri": "/r3", "upstream": {**UPSTREAM, "invalid_field": "this_should_fail"}},
        ],
        "services": [{"id": 7, "plugins": {"invalid-plugin": {}}}],
    }
    status, _, body = await call(api, "POST", doc, sub="/validate")
    assert status == 400
    assert body == {"error_msg": "Configuration validation failed", "errors": [
        {"resource_type": "routes", "error": "routes_conf_version must be a number, got string"},
        {"resource_type": "routes", "resource_id": "r1", "index": 1, "error": "found duplicate id r1 in routes"},
        {"resource_type": "routes", "resource_id": "r3", "index": 2,
         "error": 'invalid configuration: property "upstream" validation failed: additional properties forbidden, '
                  "found invalid_field"},
        {"resource_type": "services", "resource_id": 7, "index": 0, "error": "unknown plugin [invalid-plugin]"},
    ]}
    assert store.snapshot.version == 0


async def test_validate_bad_bodies(api: StandaloneAPI) -> None:
    assert (await call(api, "POST", b"", sub="/validate"))[2] == {
        "error_msg": "invalid request body: empty request body"}
    status, _, body = await call(api, "POST", b"invalid: yaml: [", sub="/validate", yaml_body=True)
    assert status == 400 and body["error_msg"].startswith("invalid request body:")
    big = json.dumps({"routes": [], "desc": "x" * 1572864}).encode()
    status, _, body = await call(api, "POST", big, sub="/validate")
    assert (status, body) == (400, {"error_msg": f"invalid request body: request size {len(big)} is greater than "
                                                 "the maximum size 1572864 allowed"})


# --- methods --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "sub"), [("DELETE", ""), ("POST", ""), ("PATCH", ""), ("GET", "/validate"),
                                             ("PUT", "/validate"), ("GET", "/other")])
async def test_other_methods_and_paths_are_not_found(api: StandaloneAPI, store: ConfigStore,
                                                     method: str, sub: str) -> None:
    # APISIX's admin router has no route for them in this mode: ngx.exit(404)
    status, headers, body = await call(api, method, CONFIG1, sub=sub, digest="1")
    assert status == 404
    assert headers["Content-Type"] == "text/html"
    assert b"404 Not Found" in body
    assert store.snapshot.version == 0


async def test_items_found_valid_are_not_checked_again_unless_the_plugins_change() -> None:
    reg = PluginRegistry()
    reg.load_all()
    up = {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}
    doc = {"routes": [{"id": "r1", "uri": "/a", "upstream": up, "plugins": {"key-auth": {}}}]}
    assert (await check_document(doc, reg, standalone=True)).problems == []
    assert (await check_document(doc, reg, standalone=True)).problems == []
    # the same item is judged again once the loaded plugins differ (a reload)
    reg._plugins.pop("key-auth")
    reg.generation += 1
    problems = (await check_document(doc, reg, standalone=True)).problems
    assert problems and "key-auth" in problems[0].error
