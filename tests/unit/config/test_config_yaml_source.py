"""apisix.yaml parsing: #END, ${{VAR}}, YAML errors, per-item rejection, ids."""

from __future__ import annotations

import textwrap

import pytest

from meshgate.config import (DuplicateItemError, ParsedConfig, parse_apisix_yaml, parse_config_document,
                             substitute_env_vars)
from meshgate.errors import ConfigError
from meshgate.model import KIND_NAMES


def parse(text: str, env: dict[str, str] | None = None) -> ParsedConfig:
    return parse_apisix_yaml(textwrap.dedent(text), env=env or {})


def errors(p: ParsedConfig) -> list[tuple[str | None, str | None, str, str]]:
    return [(e.kind, e.id, e.pointer, e.message) for e in p.errors]


MINIMAL = """\
routes:
  - uri: /hello
    upstream:
      nodes:
        "127.0.0.1:1980": 1
      type: roundrobin
#END
"""


def test_minimal_file() -> None:
    p = parse(MINIMAL)
    assert p.ok and p.errors == []
    assert list(p.items) == list(KIND_NAMES)
    assert p.items["routes"] == {
        "routes#1": {"uri": "/hello", "upstream": {"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"}}}
    assert p.plugins is None
    assert p.count() == 1
    assert p.source == "apisix.yaml"


# --- #END ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["routes: []\n", "routes: []\n#END\nroutes: []\n", "", "#ENDX\n", "# END\n"])
def test_missing_end_flag_rejects_whole_file(text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_apisix_yaml(text, env={})
    assert ei.value.pointer == "/"
    assert ei.value.message.startswith("missing valid end flag #END")


@pytest.mark.parametrize("text", ["#END", "#END\n", "#END  \n\n", "routes: []\n#END\t\r\n", "routes: [] #END\n"])
def test_end_flag_accepted(text: str) -> None:
    p = parse_apisix_yaml(text, env={})
    assert p.ok and p.count() == 0


# --- ${{VAR}} -----------------------------------------------------------------------------

ENV_FILE = """\
routes:
  - id: ${{ROUTE_ID}}
    uri: ${{ URI_PATH }}
    upstream:
      nodes:
        "${{HOST:=127.0.0.1}}:${{PORT:= 1980 }}": 1
#END
"""


def test_env_substitution_with_and_without_default() -> None:
    p = parse(ENV_FILE, {"ROUTE_ID": "r1", "URI_PATH": "/env"})
    assert p.ok, p.errors
    assert p.items["routes"] == {"r1": {"id": "r1", "uri": "/env", "upstream": {"nodes": {"127.0.0.1:1980": 1}}}}
    p = parse(ENV_FILE, {"ROUTE_ID": "7", "URI_PATH": "/e", "HOST": "10.0.0.1", "PORT": "8080"})
    assert p.items["routes"]["7"]["upstream"]["nodes"] == {"10.0.0.1:8080": 1}
    assert p.items["routes"]["7"]["id"] == "7"  # YAML int 7, stored as the string id


def test_env_empty_value_and_empty_default() -> None:
    assert substitute_env_vars("a: '${{A}}'", {"A": ""}) == "a: ''"
    assert substitute_env_vars("a: '${{A:=}}'", {}) == "a: ''"


def test_missing_env_var_rejects_whole_file_naming_variable_and_line() -> None:
    with pytest.raises(ConfigError) as ei:
        parse(ENV_FILE, {"URI_PATH": "/x"})
    assert ei.value.pointer == "/"
    assert ei.value.message == (
        "environment variable ROUTE_ID (line 2) is not set and has no default (use ${{NAME:=default}})")
    with pytest.raises(ConfigError) as ei:
        parse(ENV_FILE, {})
    assert "variables ROUTE_ID (line 2), URI_PATH (line 3) are not set" in ei.value.message


def test_env_in_comment_lines_is_ignored() -> None:
    p = parse("# uri: ${{UNSET}}\nroutes: []\n#END\n")
    assert p.ok


# --- whole-file errors --------------------------------------------------------------------


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as ei:
        parse("routes:\n  - uri: [/a\n    upstream_id: 1\n#END\n")
    assert ei.value.pointer == "/"
    assert ei.value.message.startswith("invalid YAML at line 3, column ")


@pytest.mark.parametrize("text, got", [("- a\n#END\n", "list"), ("hello\n#END\n", "string")])
def test_top_level_must_be_a_mapping(text: str, got: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse(text)
    assert ei.value.message == (
        f"expected a mapping of resource kinds at top level (routes:, upstreams:, ...), got {got}")


def test_only_comments_is_empty_config() -> None:
    p = parse("# nothing yet\n#END\n")
    assert p.ok and p.count() == 0


# --- per-item rejection -------------------------------------------------------------------

MIXED = """\
routes:
  - id: good1
    uri: /a
    upstream_id: 1
  - id: bad-port
    uri: /b
    upstream:
      nodes:
        - {host: 127.0.0.1, port: x, weight: 1}
  - id: good2
    uri: /c
    plugins: {}
  - uri: /d
    upstream:
      nodes: 5
  - just a string
upstreams:
  - id: 1
    nodes: {"127.0.0.1:1980": 1}
  - id: 2
    type: chash
    nodes: {"127.0.0.1:1980": 1}
frobs:
  - id: 1
#END
"""


def test_bad_item_rejected_alone_others_apply() -> None:
    p = parse(MIXED)
    assert list(p.items["routes"]) == ["good1", "good2"]
    assert list(p.items["upstreams"]) == ["1"]
    assert errors(p) == [
        ("routes", "bad-port", "/routes/1/upstream/nodes/0/port", 'expected integer 1..65535, got "x"'),
        ("routes", "routes#4", "/routes/3/upstream/nodes", "expected object or array, got 5"),
        ("routes", None, "/routes/4", "expected object, got string"),
        ("upstreams", "2", "/upstreams/1/key", "required field is missing (needed by type chash with hash_on vars)"),
        (None, None, "/frobs", "unknown top-level key; expected one of routes, services, upstreams, consumers, "
                               "consumer_groups, plugin_configs, global_rules, ssls, stream_routes, plugin_metadata, "
                               "protos, secrets, plugins"),
    ]
    assert not p.ok
    assert str(p.errors[0]) == 'routes id=bad-port: /routes/1/upstream/nodes/0/port: expected integer 1..65535, got "x"'


def test_kind_must_be_a_list() -> None:
    p = parse("routes:\n  uri: /a\nupstreams:\n#END\n")
    assert errors(p) == [("routes", None, "/routes", "expected a list of items, got mapping")]


# --- ids ----------------------------------------------------------------------------------


def test_ids_normalized_and_generated_by_position() -> None:
    p = parse("""\
        routes:
          - {uri: /a, plugins: {}}
          - {id: 5, uri: /b, plugins: {}}
          - {uri: /c, plugins: {}}
        upstreams:
          - {nodes: {}}
        #END
        """)
    assert p.ok
    assert list(p.items["routes"]) == ["routes#1", "5", "routes#3"]
    assert p.items["routes"]["5"]["id"] == "5"
    assert "id" not in p.items["routes"]["routes#1"]  # the generated key is not written into the value
    assert list(p.items["upstreams"]) == ["upstreams#1"]


def test_duplicate_ids_first_wins() -> None:
    p = parse("""\
        routes:
          - {id: 1, uri: /a, plugins: {}}
          - {id: "1", uri: /b, plugins: {}}
          - {id: 2, uri: /c, plugins: {}}
        consumers:
          - {username: jack}
          - {username: jack, desc: again}
        #END
        """)
    assert p.items["routes"]["1"]["uri"] == "/a"
    assert list(p.items["routes"]) == ["1", "2"]
    assert list(p.items["consumers"]) == ["jack"]
    assert p.items["consumers"]["jack"] == {"username": "jack"}
    assert errors(p) == [
        ("routes", "1", "/routes/1/id", 'duplicate id "1": already used by /routes/0; item ignored'),
        ("consumers", "jack", "/consumers/1/username", 'duplicate username "jack": already used by /consumers/0; '
                                                      "item ignored"),
    ]


def test_duplicates_are_typed_and_positions_kept() -> None:
    # the Admin API words duplicates as APISIX does and maps items back to their index
    p = parse("""\
        routes:
          - {id: a, uri: /a, plugins: {}}
          - {id: bad, uri: 5, plugins: {}}
          - {id: b, uri: /b, plugins: {}}
          - {id: a, uri: /c, plugins: {}}
        consumers:
          - {username: jack}
          - {username: jack}
        #END
        """)
    assert p.positions["routes"] == {"a": 0, "b": 2}
    assert p.positions["consumers"] == {"jack": 0}
    dups = [e for e in p.errors if isinstance(e, DuplicateItemError)]
    assert [(e.kind, e.id, e.field, e.pointer) for e in dups] == [
        ("routes", "a", "id", "/routes/3/id"), ("consumers", "jack", "username", "/consumers/1/username")]
    assert not isinstance(next(e for e in p.errors if e.id == "bad"), DuplicateItemError)


def test_credentials_are_consumers_keyed_by_their_id() -> None:
    # APISIX stores a credential under its consumer: /consumers/<username>/credentials/<id>
    p = parse("""\
        consumers:
          - username: john
          - id: john/credentials/a
            plugins: {key-auth: {key: auth-a}}
          - id: john/credentials/a
            plugins: {key-auth: {key: auth-b}}
        #END
        """)
    assert list(p.items["consumers"]) == ["john", "john/credentials/a"]
    assert p.items["consumers"]["john/credentials/a"]["plugins"] == {"key-auth": {"key": "auth-a"}}
    assert p.positions["consumers"] == {"john": 0, "john/credentials/a": 1}
    assert errors(p) == [("consumers", "john/credentials/a", "/consumers/2/id",
                          'duplicate id "john/credentials/a": already used by /consumers/1; item ignored')]
    assert isinstance(p.errors[0], DuplicateItemError) and p.errors[0].field == "id"


def test_consumers_keyed_by_username_and_metadata_by_plugin_name() -> None:
    p = parse("""\
        consumers:
          - username: jack
            plugins: {key-auth: {key: k1}}
          - plugins: {}
        plugin_metadata:
          - id: http-logger
            log_format: {host: $host}
          - log_format: {}
        global_rules:
          - plugins: {prometheus: {}}
        #END
        """)
    assert list(p.items["consumers"]) == ["jack"]
    assert list(p.items["plugin_metadata"]) == ["http-logger"]
    assert errors(p) == [
        ("consumers", None, "/consumers/1/username",
         "required field is missing (expected string of 1..256 characters matching ^[a-zA-Z0-9_\\-]+$)"),
        ("plugin_metadata", None, "/plugin_metadata/1/id", "required field is missing (the plugin name)"),
        ("global_rules", "global_rules#1", "/global_rules/0/id",
         "required field is missing (expected string of 1..64 characters matching ^[a-zA-Z0-9-_.]+$ or integer >= 1)"),
    ]


# --- plugins and conf versions ------------------------------------------------------------


def test_plugins_list() -> None:
    p = parse("plugins:\n  - name: key-auth\n  - name: mqtt-proxy\n    stream: true\n#END\n")
    assert p.plugins == [{"name": "key-auth"}, {"name": "mqtt-proxy", "stream": True}]
    p = parse("plugins:\n  - key-auth\n  - {stream: true}\n#END\n")
    assert p.plugins is None
    assert errors(p) == [
        (None, None, "/plugins/0", 'expected object {name, stream}, got "key-auth"'),
        (None, None, "/plugins/1", "required field is missing: each plugin entry needs a name"),
    ]


def test_conf_versions_for_api_driven_mode() -> None:
    p = parse_config_document({"routes": [], "routes_conf_version": 3, "upstreams_conf_version": -1}, source="push")
    assert p.conf_versions == {"routes": 3}
    assert errors(p) == [(None, None, "/upstreams_conf_version", "expected integer >= 0, got -1")]
    assert p.source == "push"


# --- parse_config_document ----------------------------------------------------------------


def test_parse_config_document_copies_input() -> None:
    doc = {"routes": [{"id": 1, "uri": "/a", "upstream": {"nodes": {"a:1": 1}}}]}
    p = parse_config_document(doc, source="admin")
    assert p.ok
    p.items["routes"]["1"]["upstream"]["nodes"]["b:1"] = 1
    assert doc == {"routes": [{"id": 1, "uri": "/a", "upstream": {"nodes": {"a:1": 1}}}]}


def test_parse_config_document_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError):
        parse_config_document(["routes"], source="admin")  # type: ignore[arg-type]


def test_yaml_types_stay_json() -> None:
    # dates stay strings, integer keys become strings, a bare "=" is a string
    p = parse("""\
        routes:
          - uri: /a
            desc: 2024-01-01
            labels: {1: "=", version: v1}
            plugins: {}
        #END
        """)
    assert p.ok, p.errors
    r = p.items["routes"]["routes#1"]
    assert r["desc"] == "2024-01-01"
    assert r["labels"] == {"1": "=", "version": "v1"}


def test_yaml_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = "\n".join(lines) + "\n#END\n"
    with pytest.raises(ConfigError) as ei:
        parse_apisix_yaml(text, env={})
    assert "document too large" in ei.value.message


def test_consumer_credentials_in_the_file() -> None:
    # t/config-center-yaml/credentials.t: a credential listed before its consumer
    p = parse("""\
        consumers:
          - id: rose/credentials/542f7414-87f6-4793-a68e-99983dde9913
            name: rose
            plugins:
              key-auth:
                key: csdt8UPw76/SG+WlHBoFeg==
          - id: rose
            username: rose
            plugins:
              limit-count:
                time_window: 3
                count: 100000000
          - id: jack/credentials/bad
            username: jack
          - id: jack/credentials/two
            plugins:
              key-auth: {key: a}
              basic-auth: {username: b, password: c}
        #END
        """)
    assert list(p.items["consumers"]) == ["rose/credentials/542f7414-87f6-4793-a68e-99983dde9913", "rose"]
    assert p.items["consumers"]["rose/credentials/542f7414-87f6-4793-a68e-99983dde9913"]["plugins"] == {
        "key-auth": {"key": "csdt8UPw76/SG+WlHBoFeg=="}}
    got = [(e.id, e.pointer) for e in p.errors]
    # an id of the credential form with a username is a consumer with a bad id; two plugins are one too many
    assert ("jack/credentials/two", "/consumers/3/plugins") in got
    assert any(ptr.startswith("/consumers/2/") for _, ptr in got), got
    assert len(got) == 2, got
