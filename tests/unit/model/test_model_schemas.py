"""The APISIX JSON schemas: well-formed, one per kind, APISIX's shapes."""

from __future__ import annotations

import ast
import json
import pathlib
import sys

import pytest
from jsonschema import Draft7Validator

from meshgate.model import KINDS, SCHEMAS, schema_for
from meshgate.model import schemas as S


def test_one_valid_draft7_schema_per_kind() -> None:
    assert set(SCHEMAS) == set(KINDS)
    for name, schema in SCHEMAS.items():
        Draft7Validator.check_schema(schema)
        assert schema["type"] == "object", name
        json.dumps(schema)  # served as JSON by /apisix/admin/schema/<name>


@pytest.mark.parametrize(
    "name, schema",
    [
        ("route", S.ROUTE_SCHEMA),
        ("routes", S.ROUTE_SCHEMA),
        ("upstream", S.UPSTREAM_SCHEMA),
        ("credential", S.CREDENTIAL_SCHEMA),
        ("plugins", S.PLUGINS_LIST_SCHEMA),
        ("global_rule", S.GLOBAL_RULE_SCHEMA),
    ],
)
def test_schema_for_accepts_kind_and_apisix_names(name: str, schema: dict) -> None:
    assert schema_for(name) is schema


def test_schema_for_unknown() -> None:
    with pytest.raises(KeyError):
        schema_for("nope")


def test_additional_properties_false_where_apisix_has_it() -> None:
    for name in ("routes", "services", "upstreams", "consumers", "consumer_groups", "plugin_configs",
                 "global_rules", "ssls", "stream_routes", "protos"):
        assert SCHEMAS[name]["additionalProperties"] is False, name
    # plugin metadata bodies are the plugin's business
    assert "additionalProperties" not in SCHEMAS["plugin_metadata"]


def test_common_fields() -> None:
    for name in ("routes", "services", "upstreams", "consumer_groups", "plugin_configs", "stream_routes", "protos"):
        props = SCHEMAS[name]["properties"]
        for f in ("id", "name", "desc", "labels", "create_time", "update_time"):
            assert f in props, (name, f)
    assert S.ID_SCHEMA["anyOf"][0] == {
        "type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-zA-Z0-9-_.]+$"}
    assert S.ID_SCHEMA["anyOf"][1] == {"type": "integer", "minimum": 1}


def test_upstream_fields_and_defaults() -> None:
    props = S.UPSTREAM_SCHEMA["properties"]
    for f in ("nodes", "type", "hash_on", "key", "retries", "retry_timeout", "timeout", "scheme", "pass_host",
              "upstream_host", "tls", "keepalive_pool", "checks", "discovery_type", "service_name",
              "discovery_args", "name", "desc", "labels"):
        assert f in props, f
    assert props["keepalive_pool"]["properties"]["size"]["default"] == 320
    assert props["keepalive_pool"]["properties"]["idle_timeout"]["default"] == 60
    assert props["keepalive_pool"]["properties"]["requests"]["default"] == 1000
    assert S.TIMEOUT_SCHEMA["required"] == ["connect", "send", "read"]
    active = S.HEALTH_CHECKER_SCHEMA["properties"]["active"]["properties"]
    assert active["healthy"]["properties"]["http_statuses"]["default"] == [200, 302]
    assert active["unhealthy"]["properties"]["http_statuses"]["default"] == [429, 404, 500, 501, 502, 503, 504, 505]
    assert active["unhealthy"]["properties"]["timeouts"]["default"] == 3
    passive = S.HEALTH_CHECKER_SCHEMA["properties"]["passive"]["properties"]
    assert passive["unhealthy"]["properties"]["timeouts"]["default"] == 7
    assert passive["unhealthy"]["properties"]["http_statuses"]["default"] == [429, 500, 503]
    assert S.HEALTH_CHECKER_SCHEMA["required"] == ["active"]


def test_model_schemas_module_has_no_io_or_asyncio() -> None:
    root = pathlib.Path(__file__).resolve().parents[3] / "src" / "meshgate" / "model"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"asyncio", "socket", "os", "io", "pathlib"}, (path.name, name)
                assert top in sys.stdlib_module_names or top in {"__future__", "jsonschema"}, (path.name, name)
