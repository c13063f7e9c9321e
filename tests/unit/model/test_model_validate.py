"""validate_item / check_references / normalize_id: error texts and pointers."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.errors import ConfigError
from meshgate.model import KINDS, Resource, Snapshot, check_references, json_pointer, normalize_id, validate_item

CERT = "-----BEGIN CERTIFICATE-----\n" + "A" * 200 + "\n-----END CERTIFICATE-----"
KEY = "-----BEGIN PRIVATE KEY-----\n" + "B" * 200 + "\n-----END PRIVATE KEY-----"
UP = {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}


def errs(kind: str, value: Any, **kw: Any) -> list[tuple[str, str]]:
    return [(e.pointer, e.message) for e in validate_item(kind, value, **kw)]


# --- valid objects of every kind ----------------------------------------------------------

VALID: list[tuple[str, dict[str, Any]]] = [
    ("routes", {"uri": "/hello", "upstream": UP}),
    ("routes", {"id": 1, "uris": ["/a", "/b"], "hosts": ["*.example.com"], "methods": ["GET", "PURGE"],
                "remote_addrs": ["10.0.0.0/8", "::1", "192.168.1.1"], "priority": 3, "status": 0,
                "vars": [["arg_a", "==", "1"]], "timeout": {"connect": 1, "send": 2.5, "read": 3},
                "plugins": {"key-auth": {}}, "enable_websocket": True, "labels": {"env": "prod"},
                "name": "r", "desc": "d", "service_id": "s1", "plugin_config_id": 2}),
    ("routes", {"uri": "/p", "plugin_config_id": "pc"}),
    ("routes", {"uri": "/p", "upstream_id": "u.1-x_y"}),
    ("services", {"id": "s", "upstream": UP, "plugins": {}, "hosts": ["a.com"], "enable_websocket": False}),
    ("upstreams", {"id": "u", "nodes": [{"host": "a.com", "port": 80, "weight": 1, "priority": -1,
                                         "metadata": {"k": "v"}}, {"host": "[::1]", "weight": 0}]}),
    ("upstreams", {"nodes": {}}),  # placeholder: allowed, requests get 502
    ("upstreams", {"nodes": {"[::1]:80": 1, "a.com": 2, "::1": 1}, "type": "chash", "hash_on": "consumer"}),
    ("upstreams", {"service_name": "svc", "discovery_type": "dns", "discovery_args": {"namespace_id": "n"}}),
    ("upstreams", {"nodes": {"a:1": 1}, "type": "chash", "hash_on": "header", "key": "X-User_Id"}),
    ("upstreams", {"nodes": {"a:1": 1}, "type": "chash", "key": "arg_user"}),
    ("upstreams", {"nodes": {"a:1": 1}, "type": "chash", "hash_on": "vars_combinations", "key": "$host$uri"}),
    ("upstreams", {"nodes": {"a:1": 1}, "type": "ewma", "retries": 0, "retry_timeout": 0.5, "scheme": "https",
                   "pass_host": "rewrite", "upstream_host": "b.com",
                   "timeout": {"connect": 0.1, "send": 1, "read": 1},
                   "keepalive_pool": {"size": 10, "idle_timeout": 0, "requests": 1},
                   "tls": {"client_cert": CERT, "client_key": KEY, "verify": True},
                   "checks": {"active": {"type": "http", "http_path": "/status", "healthy": {"interval": 2,
                              "successes": 1}, "unhealthy": {"http_failures": 254}, "req_headers": ["A: b"]},
                              "passive": {"healthy": {"successes": 0}, "unhealthy": {"timeouts": 0}}}}),
    ("consumers", {"username": "jack_1-x", "plugins": {"key-auth": {"key": "k"}}, "group_id": "g"}),
    ("consumer_groups", {"id": "g", "plugins": {"limit-count": {}}}),
    ("plugin_configs", {"id": 1, "plugins": {}, "name": "anything goes"}),
    ("global_rules", {"id": "g", "plugins": {"prometheus": {}}}),
    ("ssls", {"cert": CERT, "key": KEY, "snis": ["a.com", "*.b.com"], "ssl_protocols": ["TLSv1.3"]}),
    ("ssls", {"cert": CERT, "key": KEY, "sni": "a.com", "certs": [CERT], "keys": [KEY],
              "client": {"ca": CERT, "depth": 2}}),
    ("ssls", {"type": "client", "cert": "$secret://vault/1/cert", "key": "$env://KEY"}),
    ("stream_routes", {"id": 1, "server_port": 9100, "remote_addr": "127.0.0.1", "upstream": UP,
                       "protocol": {"name": "redis", "conf": {}}}),
    ("plugin_metadata", {"id": "http-logger", "log_format": {"host": "$host"}}),
    ("protos", {"id": "p", "content": "syntax = \"proto3\";"}),
    ("secrets", {"id": "vault/1", "uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "t"}),
    ("secrets", {"id": "aws/x", "access_key_id": "a", "secret_access_key": "b"}),
    ("credentials", {"plugins": {"key-auth": {"key": "k"}}}),
]


@pytest.mark.parametrize("kind, value", VALID)
def test_valid(kind: str, value: dict[str, Any]) -> None:
    assert errs(kind, value) == []


def test_value_not_modified() -> None:
    v = {"plugins": {}}
    assert validate_item("global_rules", v, id="1") == []
    assert v == {"plugins": {}}


# --- schema errors: exact text and pointer ------------------------------------------------


@pytest.mark.parametrize(
    "kind, value, expected",
    [
        ("routes", {"uri": "/a", "upstream": {"nodes": [{"host": "a", "port": "x", "weight": 1}]}},
         [("/upstream/nodes/0/port", 'expected integer 1..65535, got "x"')]),
        ("routes", {"uri": "/a", "upstream": {"nodes": [{"host": "a", "port": 70000, "weight": 1}]}},
         [("/upstream/nodes/0/port", "expected integer 1..65535, got 70000")]),
        ("routes", {"uri": "/a", "upstream": {"nodes": [{"port": 80, "weight": 1}]}},
         [("/upstream/nodes/0/host", "required field is missing (expected string matching ^\\*$|^\\*?[0-9a-zA-Z-._\\[\\]:]+$)")]),
        ("routes", {"uri": "/a", "upstream": {"nodes": {"a:80": -1}}},
         [("/upstream/nodes/a:80", "expected integer >= 0, got -1")]),
        ("routes", {"uri": "/a", "upstream": {"nodes": "a:80"}},
         [("/upstream/nodes", 'expected object or array, got "a:80"')]),
        ("routes", {"id": "a b", "uri": "/", "upstream": UP},
         [("/id", 'expected string of 1..64 characters matching ^[a-zA-Z0-9-_.]+$, got "a b"')]),
        ("routes", {"id": 0, "uri": "/", "upstream": UP}, [("/id", "expected integer >= 1, got 0")]),
        ("routes", {"id": "x" * 65, "uri": "/", "upstream": UP},
         [("/id", "expected string of 1..64 characters matching ^[a-zA-Z0-9-_.]+$, got 65 characters")]),
        ("routes", {"uri": "/", "service_id": True},
         [("/service_id", "expected string of 1..64 characters matching ^[a-zA-Z0-9-_.]+$ or integer >= 1, got true")]),
        ("routes", {"uri": "/", "upstream": UP, "foo": 1},
         [("/foo", "unknown field; allowed fields: id, name, desc, labels, create_time, update_time, uri, uris, "
                   "priority, methods, host, hosts, remote_addr, remote_addrs, timeout, vars, filter_func, script, "
                   "script_id, plugins, plugin_config_id, upstream, service_id, upstream_id, enable_websocket, status")]),
        ("routes", {"uri": "/", "upstream": UP, "timeout": {"connect": 0, "send": 1}},
         [("/timeout/connect", "expected number > 0, got 0"),
          ("/timeout/read", "required field is missing (expected number > 0)")]),
        ("routes", {"uri": "/", "upstream": UP, "methods": ["GET", "FETCH"]},
         [("/methods/1", 'expected one of "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", '
                         '"TRACE", "PURGE", got "FETCH"')]),
        ("routes", {"uri": "/", "upstream": UP, "remote_addr": "abc"},
         [("/remote_addr", 'expected IPv4, IPv4/CIDR, IPv6 or IPv6/CIDR, got "abc"')]),
        ("routes", {"uri": "/", "upstream": UP, "hosts": []},
         [("/hosts", "expected array of at least 1 item(s), got 0")]),
        ("routes", {"uris": ["/a", "/a"], "upstream": UP}, [("/uris", 'expected unique items, got duplicate "/a"')]),
        ("routes", {"uri": "/", "upstream": UP, "plugins": {"key-auth": 1}},
         [("/plugins/key-auth", "expected object, got 1")]),
        ("routes", {"uri": "/", "upstream": UP, "status": 2}, [("/status", "expected one of 1, 0, got 2")]),
        ("routes", {"uri": "/", "upstream": UP, "labels": {"app/x": ""}},
         [("/labels/app~1x", "expected string of 1..256 characters matching ^\\S+$, got 0 characters")]),
        ("upstreams", {"nodes": {"a:1": 1}, "scheme": "ftp"},
         [("/scheme", 'expected one of "grpc", "grpcs", "http", "https", "tcp", "tls", "udp", "kafka", got "ftp"')]),
        ("upstreams", {"nodes": {"a:1": 1}, "retries": -1}, [("/retries", "expected integer >= 0, got -1")]),
        ("upstreams", {"nodes": {"a:1": 1}, "checks": {"passive": {}}},
         [("/checks/active", "required field is missing (expected object)")]),
        ("upstreams", {"nodes": {"a:1": 1}, "checks": {"active": {"healthy": {"successes": 255}}}},
         [("/checks/active/healthy/successes", "expected integer 1..254, got 255")]),
        ("upstreams", {"nodes": {"a:1": 1}, "checks": {"active": {"unhealthy": {"http_statuses": [600]}}}},
         [("/checks/active/unhealthy/http_statuses/0", "expected integer 200..599, got 600")]),
        ("upstreams", {"nodes": {"a:1": 1}, "keepalive_pool": {"size": 0}},
         [("/keepalive_pool/size", "expected integer >= 1, got 0")]),
        ("upstreams", {"nodes": {"a:1": 1}, "tls": {"client_cert": CERT}},
         [("/tls/client_key", "required field is missing (needed when client_cert is set)")]),
        ("consumers", {"username": "a b"},
         [("/username", 'expected string of 1..256 characters matching ^[a-zA-Z0-9_\\-]+$, got "a b"')]),
        ("consumers", {"plugins": {}},
         [("/username", "required field is missing (expected string of 1..256 characters matching "
                        "^[a-zA-Z0-9_\\-]+$)")]),
        ("global_rules", {"plugins": {}},
         [("/id", "required field is missing (expected string of 1..64 characters matching ^[a-zA-Z0-9-_.]+$ "
                  "or integer >= 1)")]),
        ("ssls", {"cert": "short", "key": KEY, "sni": "a.com"},
         [("/cert", 'expected string of 128..65536 characters or string matching ^\\$(secret|env|ENV)://, '
                    'got "short"')]),
        ("protos", {"id": 1}, [("/content", "required field is missing (expected string of 1..1048576 characters)")]),
        ("credentials", {"plugins": {"key-auth": {}, "basic-auth": {}}},
         [("/plugins", "expected at most 1 entry, got 2")]),
        ("stream_routes", {"server_port": 0}, [("/server_port", "expected integer 1..65535, got 0")]),
    ],
)
def test_schema_error_text(kind: str, value: Any, expected: list[tuple[str, str]]) -> None:
    assert errs(kind, value) == expected


def test_errors_carry_kind_and_id() -> None:
    [e] = validate_item("routes", {"id": 7, "uri": "/", "upstream": UP, "priority": "high"})
    assert isinstance(e, ConfigError)
    assert (e.kind, e.id, e.pointer) == ("routes", "7", "/priority")
    assert str(e) == 'routes id=7: /priority: expected integer, got "high"'
    [e] = validate_item("routes", {"uri": "/", "upstream": UP, "priority": "high"}, id="r1")
    assert e.id == "r1"
    [e] = validate_item("consumers", {"username": "jack", "desc": 1})
    assert e.id == "jack"


def test_results_are_stable_across_calls() -> None:
    good = {"uri": "/cache", "upstream": UP}
    bad = {"uri": "/cache", "upstream": UP, "priority": "x"}
    for _ in range(3):
        assert errs("routes", good) == []
        assert errs("routes", bad) == [("/priority", 'expected integer, got "x"')]
    # the id an item is stored under is part of what was validated
    assert errs("global_rules", {"plugins": {}}, id="ok") == []
    assert errs("global_rules", {"plugins": {}}, id="not ok") != []


def test_not_an_object() -> None:
    assert errs("routes", 5) == [("", "expected object, got 5")]
    assert errs("routes", ["/a"]) == [("", "expected object, got array")]


def test_unknown_kind() -> None:
    with pytest.raises(KeyError):
        validate_item("nope", {})


def test_id_param_is_used_when_value_has_none() -> None:
    assert errs("global_rules", {"plugins": {}}, id="g1") == []
    assert errs("global_rules", {"plugins": {}}, id="bad id") == [
        ("/id", 'expected string of 1..64 characters matching ^[a-zA-Z0-9-_.]+$, got "bad id"')]


def test_non_string_keys_do_not_crash() -> None:
    assert errs("routes", {"uri": "/", "upstream": UP, "labels": {1: "a"}}) == [("", "expected object keys to be strings")]


# --- semantic checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"uri": "/a", "uris": ["/b"], "upstream": UP}, [("/uris", "only one of uri or uris is allowed")]),
        ({"upstream": UP}, [("/uri", "required field is missing: a route needs uri or uris")]),
        ({"uri": "/"}, [("", "a route needs at least one of plugins, upstream, upstream_id, service_id or "
                             "plugin_config_id")]),
        ({"uri": "/", "upstream": UP, "host": "a.com", "hosts": ["b.com"]},
         [("/hosts", "only one of host or hosts is allowed")]),
        ({"uri": "/", "upstream": UP, "remote_addr": "1.1.1.1", "remote_addrs": ["2.2.2.2"]},
         [("/remote_addrs", "only one of remote_addr or remote_addrs is allowed")]),
        ({"uri": "/", "upstream": {"nodes": {"a:1": 1}, "pass_host": "rewrite"}},
         [("/upstream/upstream_host", "`upstream_host` can't be empty when `pass_host` is `rewrite`")]),
        ({"uri": "/", "upstream": {"type": "roundrobin"}},
         [("/upstream/nodes", "required field is missing: an upstream needs nodes, or service_name and "
                              "discovery_type")]),
    ],
)
def test_route_checks(value: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errs("routes", value) == expected


LUA = "not supported: Meshgate does not execute Lua code supplied in configuration (CVE-2020-13945)"


def test_config_supplied_lua_is_rejected() -> None:
    fn = "function(vars) return vars.arg_x == '1' end"
    assert errs("routes", {"uri": "/", "upstream": UP, "filter_func": fn}) == [
        ("/filter_func", LUA + "; use vars expressions instead")]
    assert errs("routes", {"uri": "/", "upstream": UP, "script": "local _M = {} return _M"}) == [
        ("/script", LUA + "; use plugins instead")]
    assert errs("services", {"script": "local _M = {} return _M"}) == [("/script", LUA + "; use plugins instead")]
    assert errs("routes", {"uri": "/", "plugins": {"key-auth": {"_meta": {"pre_function": "return"}}}}) == [
        ("/plugins/key-auth/_meta/pre_function", LUA)]
    # other _meta fields are fine
    assert errs("routes", {"uri": "/", "plugins": {"key-auth": {"_meta": {"disable": True}}}}) == []


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"type": "chash", "nodes": {"a:1": 1}},
         [("/key", "required field is missing (needed by type chash with hash_on vars)")]),
        ({"type": "chash", "hash_on": "header", "nodes": {"a:1": 1}},
         [("/key", "required field is missing (needed by type chash with hash_on header)")]),
        ({"type": "chash", "hash_on": "header", "key": "X Bad", "nodes": {"a:1": 1}},
         [("/key", 'expected header name matching ^[a-zA-Z0-9-_]+$, got "X Bad"')]),
        ({"type": "chash", "hash_on": "cookie", "key": "a;b", "nodes": {"a:1": 1}},
         [("/key", 'expected cookie name matching ^[a-zA-Z0-9-_]+$, got "a;b"')]),
        ({"type": "chash", "key": "http_x", "nodes": {"a:1": 1}},
         [("/key", "expected a variable for hash_on vars (uri, server_name, server_addr, request_uri, remote_port, "
                   'remote_addr, query_string, host, hostname, mqtt_client_id or arg_<name>), got "http_x"')]),
        ({"nodes": {"a:1": 1}, "service_name": "s", "discovery_type": "dns"},
         [("/service_name", "only one of nodes or service_name + discovery_type is allowed")]),
        ({"service_name": "s"}, [("/discovery_type", "required field is missing (needed when service_name is set)")]),
        ({"discovery_type": "dns"}, [("/service_name", "required field is missing (needed when discovery_type is set)")]),
        ({"nodes": {"a:0": 1, "a:x": 1, "[::1]:99999": 1, ":80": 1}},
         [("/nodes/a:0", 'expected "host:port" with port 1..65535, got "a:0"'),
          ("/nodes/a:x", 'expected "host:port" with port 1..65535, got "a:x"'),
          ("/nodes/[::1]:99999", 'expected "host:port" with port 1..65535, got "[::1]:99999"'),
          ("/nodes/:80", 'expected "host:port" with port 1..65535, got ":80"')]),
        ({"nodes": {"a:1": 1}, "tls": {"client_cert_id": 1, "client_cert": CERT, "client_key": KEY}},
         [("/tls/client_cert_id", "only one of client_cert_id or client_cert + client_key is allowed")]),
    ],
)
def test_upstream_checks(value: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errs("upstreams", value) == expected


def test_upstream_checks_apply_to_inline_upstreams_everywhere() -> None:
    bad = {"nodes": {"a:1": 1}, "pass_host": "rewrite"}
    msg = "`upstream_host` can't be empty when `pass_host` is `rewrite`"
    assert errs("services", {"upstream": bad}) == [("/upstream/upstream_host", msg)]
    assert errs("stream_routes", {"upstream": bad}) == [("/upstream/upstream_host", msg)]
    assert errs("upstreams", bad) == [("/upstream_host", msg)]


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"cert": CERT, "key": KEY}, [("/sni", "required field is missing: a server certificate needs sni or snis")]),
        ({"cert": CERT, "key": KEY, "sni": "a", "snis": ["b"]}, [("/snis", "only one of sni or snis is allowed")]),
        ({"cert": CERT, "sni": "a"}, [("/key", "required field is missing")]),
        ({"type": "client", "key": KEY}, [("/cert", "required field is missing")]),
        ({"cert": CERT, "key": KEY, "sni": "a", "certs": [CERT, CERT], "keys": [KEY]},
         [("/keys", "expected one key per extra certificate (2), got 1")]),
    ],
)
def test_ssl_checks(value: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errs("ssls", value) == expected


def test_secret_checks() -> None:
    assert errs("secrets", {"uri": "http://v:8200"}, id="vault/1") == [
        ("/prefix", "required field is missing (expected string)"),
        ("/token", "required field is missing (expected string)")]
    assert errs("secrets", {"id": "kms/1"}) == [
        ("/id", 'expected string matching ^(vault|aws|gcp)/[a-zA-Z0-9-_.]{1,64}$, got "kms/1"')]
    assert errs("secrets", {"uri": "http://v:8200"}, id="kms/1") == [
        ("/id", 'expected string matching ^(vault|aws|gcp)/[a-zA-Z0-9-_.]{1,64}$, got "kms/1"')]


# --- references ---------------------------------------------------------------------------


def test_check_references() -> None:
    snap = {
        "routes": {
            "1": {"id": "1", "uri": "/", "service_id": "s1", "upstream_id": 9, "plugin_config_id": "pc"},
            "2": {"id": "2", "uri": "/", "service_id": 1, "upstream": {"nodes": {}, "tls": {"client_cert_id": "c"}}},
        },
        "services": {"1": {"id": "1", "upstream_id": "u"}},
        "upstreams": {"u": {"id": "u", "nodes": {}, "tls": {"client_cert_id": "srv"}}},
        "ssls": {"srv": {"id": "srv", "type": "server"}, "c": {"id": "c", "type": "client"}},
        "consumers": {"jack": {"username": "jack", "group_id": "g"}},
        "stream_routes": {"s": {"id": "s", "upstream_id": "u", "service_id": "nope"}},
    }
    got = [(e.kind, e.id, e.pointer, e.message) for e in check_references(snap)]
    assert got == [
        ("routes", "1", "/service_id", 'references service "s1", which does not exist'),
        ("routes", "1", "/upstream_id", 'references upstream "9", which does not exist'),
        ("routes", "1", "/plugin_config_id", 'references plugin config "pc", which does not exist'),
        ("upstreams", "u", "/tls/client_cert_id", 'expected an ssl of type client, ssl "srv" is of type server'),
        ("consumers", "jack", "/group_id", 'references consumer group "g", which does not exist'),
        ("stream_routes", "s", "/service_id", 'references service "nope", which does not exist'),
    ]


def test_check_references_accepts_resources_and_snapshots() -> None:
    res = {"routes": {"1": Resource("routes", "1", {"uri": "/", "upstream_id": "x"})}}
    [e] = check_references(res)
    assert e.pointer == "/upstream_id"
    [e] = check_references(Snapshot(version=1, resources=res))
    assert e.id == "1"
    assert check_references({}) == []


# --- helpers ------------------------------------------------------------------------------


def test_normalize_id() -> None:
    assert normalize_id(1) == "1"
    assert normalize_id("abc") == "abc"
    assert normalize_id(2.0) == "2"
    for bad in (True, None, 1.5, {}, []):
        with pytest.raises(TypeError):
            normalize_id(bad)


def test_json_pointer_escapes() -> None:
    assert json_pointer([]) == ""
    assert json_pointer(["labels", "a/b~c", 0]) == "/labels/a~1b~0c/0"


def test_every_kind_validates_something() -> None:
    for kind in KINDS:
        assert isinstance(validate_item(kind, {}), list)


# --- credentials: consumers/<username>/credentials/<id> ------------------------------------


def test_a_consumer_item_with_a_credential_id_is_a_credential() -> None:
    # the value APISIX's Admin API stores (t/node/credential-plugin-key-auth.t) ...
    assert errs("consumers", {"id": "34010989-ce4e-4d61-9493-b54cca8edb31",
                              "plugins": {"key-auth": {"key": "fsFPtg7BtXMXkvSnS9e1zw=="}}},
                id="jack/credentials/34010989-ce4e-4d61-9493-b54cca8edb31") == []
    # ... the standalone file's form (t/config-center-yaml/credentials.t) ...
    assert errs("consumers", {"id": "rose/credentials/542f7414-87f6-4793-a68e-99983dde9913", "name": "rose",
                              "plugins": {"key-auth": {"key": "k"}}},
                id="rose/credentials/542f7414-87f6-4793-a68e-99983dde9913") == []
    # ... and no id at all: the key is the id
    assert errs("consumers", {"plugins": {"key-auth": {"key": "k"}}, "desc": "d", "labels": {"a": "b"}},
                id="jack/credentials/a") == []
    # no username needed; consumer fields are not credential fields
    assert errs("consumers", {"username": "jack", "plugins": {}}, id="jack/credentials/a") == [
        ("/username", "unknown field; allowed fields: id, name, desc, labels, create_time, update_time, plugins")]
    assert errs("consumers", {"plugins": {"key-auth": {"key": "k"}, "basic-auth": {}}}, id="jack/credentials/a") == [
        ("/plugins", "expected at most 1 entry, got 2")]
    # and the checks: no Lua from configuration
    assert errs("consumers", {"plugins": {"key-auth": {"_meta": {"pre_function": "x"}}}}, id="jack/credentials/a") == [
        ("/plugins/key-auth/_meta/pre_function",
         "not supported: Meshgate does not execute Lua code supplied in configuration (CVE-2020-13945)")]
    [e] = validate_item("consumers", {"username": "jack", "plugins": {}}, id="jack/credentials/a")
    assert (e.kind, e.id) == ("consumers", "jack/credentials/a")


def test_plain_consumer_ids_still_validate_as_consumers() -> None:
    assert errs("consumers", {"username": "jack", "plugins": {"key-auth": {"key": "k"}}}, id="jack") == []
    assert errs("consumers", {"plugins": {}}, id="jack")[0][0] == "/username"
    # APISIX's consumer schema has an id (the standalone file keys a consumer by it)
    assert errs("consumers", {"id": "rose", "username": "rose"}, id="rose") == []


def test_a_bad_credential_key_is_reported() -> None:
    assert errs("consumers", {"id": "a", "plugins": {}}, id="ja ck/credentials/a") == [
        ("", 'expected id <username>/credentials/<id> matching ^[a-zA-Z0-9-_]+/credentials/[a-zA-Z0-9-_.]+$, '
             'got "ja ck/credentials/a"')]
    [(ptr, _)] = errs("consumers", {"plugins": {}}, id="ja ck/credentials/a")
    assert ptr == "/id"


def test_check_references_reports_a_credential_without_its_consumer() -> None:
    snap = {"consumers": {
        "jack": {"username": "jack"},
        "jack/credentials/a": {"id": "a", "plugins": {"key-auth": {"key": "k"}}},
        "rose/credentials/b": {"id": "b", "plugins": {"key-auth": {"key": "k2"}}},
    }}
    got = [(e.kind, e.id, e.pointer, e.message) for e in check_references(snap)]
    assert got == [("consumers", "rose/credentials/b", "",
                    'credential of consumer "rose", which does not exist (the credential is ignored)')]
