"""Node config (config.yaml): defaults, key forms, durations, sizes, warnings, errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from meshgate.config import (
    AdminKey,
    Listen,
    NodeConfig,
    NodeConfigErrors,
    load_node_config,
    parse_duration,
    parse_node_config,
    parse_size,
)
from meshgate.errors import ConfigError


def parse(data: dict[str, Any]) -> NodeConfig:
    return parse_node_config(data, source="test.yaml")


def errors_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(NodeConfigErrors) as ei:
        parse(data)
    return [(e.pointer, e.message) for e in ei.value.errors]


# --- defaults -----------------------------------------------------------------------------


def test_defaults_match_contract() -> None:
    c = parse({})
    assert c.node_listen == (Listen(ip="0.0.0.0", port=9080),)
    assert c.ssl.enable is True
    assert c.ssl.listen == (Listen(ip="0.0.0.0", port=9443),)
    assert c.router_http == "radixtree_host_uri"
    assert c.enable_control is True
    assert c.control == Listen(ip="127.0.0.1", port=9090)
    assert c.delete_uri_tail_slash is False
    assert c.normalize_uri_like_servlet is False
    assert c.show_upstream_status_in_response_header is False
    assert c.trusted_addresses == ()
    assert c.worker_processes == (os.cpu_count() or 1)
    assert c.worker_shutdown_timeout == 240.0
    h = c.http
    assert (h.client_header_timeout, h.client_body_timeout, h.send_timeout, h.keepalive_timeout) == (60, 60, 10, 60)
    assert h.client_max_body_size == 0
    assert h.keepalive_requests == 1000
    assert h.real_ip_header == "X-Real-IP"
    assert h.real_ip_from == ("127.0.0.1", "unix:")
    assert (h.upstream.keepalive, h.upstream.keepalive_requests, h.upstream.keepalive_timeout) == (320, 1000, 60.0)
    assert c.role == "traditional"
    assert c.config_provider == "etcd"
    assert c.admin.admin_key == ()
    assert c.admin.admin_listen == Listen(ip="127.0.0.1", port=9180)
    assert c.admin.allow_admin == ("127.0.0.0/24",)
    assert c.admin_enabled is True
    assert c.etcd.host == ("http://127.0.0.1:2379",)
    assert c.etcd.prefix == "/apisix"
    assert c.etcd.timeout == 30
    assert c.prometheus.export_addr == Listen(ip="127.0.0.1", port=9091)
    assert c.plugin_conf("prometheus")["export_addr"] == {"ip": "127.0.0.1", "port": 9091}
    assert c.plugin_conf("nope") == {}
    assert c.plugins is None
    assert c.warnings == ()
    assert c.path is None
    assert c.config_dir == Path.cwd() / "conf"
    assert c.raw["apisix"]["node_listen"] == [9080]


def test_embedded_default_is_standalone() -> None:
    c = load_node_config(None)
    assert c.path is None
    assert (c.role, c.config_provider) == ("data_plane", "yaml")
    assert c.admin_enabled is False
    assert c.apisix_yaml_path() == Path.cwd() / "conf" / "apisix.yaml"


def test_config_is_frozen() -> None:
    c = parse({})
    with pytest.raises(AttributeError):
        c.role = "data_plane"  # type: ignore[misc]


# --- key forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (9081, (Listen(port=9081),)),
        ([9081, 9082], (Listen(port=9081), Listen(port=9082))),
        ([{"port": 9081}, {"ip": "127.0.0.2", "port": 9082}, 9083],
         (Listen(port=9081), Listen(ip="127.0.0.2", port=9082), Listen(port=9083))),
        ([{"ip": "[::1]", "port": 9081}], (Listen(ip="::1", port=9081),)),
    ],
)
def test_node_listen_forms(value: Any, expected: tuple[Listen, ...]) -> None:
    assert parse({"apisix": {"node_listen": value}}).node_listen == expected


def test_listen_str() -> None:
    assert str(Listen(port=80)) == "0.0.0.0:80"
    assert str(Listen(ip="::1", port=80)) == "[::1]:80"


def test_all_supported_keys() -> None:
    c = parse({
        "apisix": {
            "node_listen": [{"ip": "127.0.0.1", "port": 8000}],
            "ssl": {"enable": False, "listen": [{"port": 8443}]},
            "router": {"http": "radixtree_uri_with_parameter"},
            "enable_control": False,
            "control": {"ip": "0.0.0.0", "port": 9999},
            "delete_uri_tail_slash": True,
            "normalize_uri_like_servlet": True,
            "show_upstream_status_in_response_header": True,
            "trusted_addresses": ["10.0.0.0/8", "::1"],
        },
        "nginx_config": {
            "worker_processes": 3,
            "worker_shutdown_timeout": "30s",
            "http": {
                "client_header_timeout": "5s", "client_body_timeout": 7, "send_timeout": "500ms",
                "keepalive_timeout": "1m", "client_max_body_size": "8m", "keepalive_requests": 50,
                "real_ip_header": "X-Forwarded-For", "real_ip_from": ["10.0.0.0/8", "unix:"],
                "real_ip_recursive": "on",
            },
        },
        "deployment": {
            "role": "data_plane",
            "role_data_plane": {"config_provider": "xds"},
            "admin": {
                "admin_key": [{"name": "admin", "key": "k1", "role": "admin"}, {"name": "v", "key": 1234, "role": "viewer"}],
                "admin_listen": {"ip": "0.0.0.0", "port": 9181},
                "allow_admin": ["0.0.0.0/0"],
            },
            "etcd": {"host": ["https://e1:2379", "http://e2:2379"], "prefix": "/gw", "timeout": 5,
                     "tls": {"verify": False}},
        },
        "plugins": ["key-auth", "prometheus"],
        "plugin_attr": {"prometheus": {"export_addr": {"ip": "0.0.0.0", "port": 9100}}, "x": {"y": 1}},
    })
    assert c.node_listen == (Listen(ip="127.0.0.1", port=8000),)
    assert c.ssl.enable is False and c.ssl.listen == (Listen(port=8443),)
    assert c.router_http == "radixtree_uri_with_parameter"
    assert c.enable_control is False and c.control == Listen(ip="0.0.0.0", port=9999)
    assert c.delete_uri_tail_slash and c.normalize_uri_like_servlet and c.show_upstream_status_in_response_header
    assert c.trusted_addresses == ("10.0.0.0/8", "::1")
    assert c.worker_processes == 3
    assert c.worker_shutdown_timeout == 30.0
    assert c.http.client_header_timeout == 5.0
    assert c.http.client_body_timeout == 7.0
    assert c.http.send_timeout == 0.5
    assert c.http.keepalive_timeout == 60.0
    assert c.http.client_max_body_size == 8 * 1024 * 1024
    assert c.http.keepalive_requests == 50
    assert c.http.real_ip_header == "X-Forwarded-For"
    assert c.http.real_ip_from == ("10.0.0.0/8", "unix:")
    assert c.http.real_ip_recursive is True
    assert (c.role, c.config_provider) == ("data_plane", "xds")
    assert c.admin_enabled is False
    assert c.admin.admin_key == (AdminKey("admin", "k1", "admin"), AdminKey("v", "1234", "viewer"))
    assert c.admin.admin_listen == Listen(ip="0.0.0.0", port=9181)
    assert c.admin.allow_admin == ("0.0.0.0/0",)
    assert c.etcd.host == ("https://e1:2379", "http://e2:2379")
    assert (c.etcd.prefix, c.etcd.timeout) == ("/gw", 5.0)
    assert c.etcd.tls is not None and c.etcd.tls.verify is False
    assert c.plugins == ("key-auth", "prometheus")
    assert c.prometheus.export_addr == Listen(ip="0.0.0.0", port=9100)
    assert c.plugin_conf("x") == {"y": 1}
    assert c.warnings == ()


@pytest.mark.parametrize("role, provider", [("traditional", "etcd"), ("control_plane", "etcd"), ("data_plane", "yaml")])
def test_provider_follows_role(role: str, provider: str) -> None:
    c = parse({"deployment": {"role": role}})
    assert c.config_provider == provider
    assert c.admin_enabled is (role != "data_plane")


def test_traditional_with_yaml_provider() -> None:
    c = parse({"deployment": {"role_traditional": {"config_provider": "yaml"}}})
    assert (c.role, c.config_provider) == ("traditional", "yaml")


def test_null_sections_keep_defaults() -> None:
    c = parse({"apisix": None, "nginx_config": {"http": None}, "deployment": {"admin": {"allow_admin": None}}})
    assert c.node_listen == (Listen(port=9080),)
    assert c.admin.allow_admin == ("127.0.0.0/24",)


# --- durations and sizes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [("60s", 60), ("1m", 60), ("500ms", 0.5), ("2h", 7200), ("1d", 86400), ("1m30s", 90), ("1h 30m", 5400),
     ("10", 10), (10, 10), (1.5, 1.5), ("0", 0), ("1.5s", 1.5)],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "soon", "-1s", "1x", "s", True, None, -1, [], "1s x"])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    "value, size",
    [("0", 0), (0, 0), ("8m", 8 << 20), ("8M", 8 << 20), ("1k", 1024), ("1K", 1024), ("2g", 2 << 30),
     ("1000", 1000), (4096, 4096)],
)
def test_parse_size(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["8q", "1.5m", "", "-1", -1, True, None, 1.5, "m"])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# --- unknown keys and wrong types ---------------------------------------------------------


def test_unknown_keys_are_warnings_naming_the_dotted_key() -> None:
    c = parse({
        "apisix": {"enable_ipv6": False, "node_listen": [{"port": 9080, "backlog": 511}]},
        "nginx_config": {"http": {"lua_shared_dict": {"a": "1m"}}},
        "deployment": {"admin": {"admin_key": [{"name": "a", "key": "k", "role": "admin", "x": 1}]}},
        "graphql": {"max_size": 1},
        "plugin_attr": {"anything": {"goes": True}},
    })
    assert c.warnings == (
        "unknown key apisix.enable_ipv6 (not supported by Meshgate; ignored)",
        "unknown key nginx_config.http.lua_shared_dict (not supported by Meshgate; ignored)",
        "unknown key graphql (not supported by Meshgate; ignored)",
        "unknown key apisix.node_listen[0].backlog (not supported by Meshgate; ignored)",
        "unknown key deployment.admin.admin_key[0].x (not supported by Meshgate; ignored)",
    )


def test_enable_http2_is_an_apisix_level_key() -> None:
    assert parse({}).enable_http2 is True            # APISIX 3.9+ default
    assert parse({"apisix": {"enable_http2": False}}).enable_http2 is False
    # the port-level key of APISIX < 3.9 stops APISIX from starting; so it does here
    got = errors_of({"apisix": {"node_listen": [{"port": 9080, "enable_http2": True}],
                                "ssl": {"listen": [{"port": 9443, "enable_http2": True}]}}})
    assert ("/apisix/node_listen/0/enable_http2", "port level enable_http2 in node_listen is deprecated from 3.9 "
            "version, and you should use enable_http2 in apisix level") in got
    assert ("/apisix/ssl/listen/0/enable_http2", "port level enable_http2 in ssl.listen is deprecated from 3.9 "
            "version, and you should use enable_http2 in apisix level") in got


def test_wrong_types_list_every_error() -> None:
    got = errors_of({
        "apisix": {
            "node_listen": [{"ip": "1.2.3.4", "port": "x"}, "a", 70000, {"ip": "1.2.3.4"}],
            "ssl": 5,
            "router": {"http": "radixtree"},
            "enable_control": "yes please",
            "trusted_addresses": ["10.0.0.0/33"],
        },
        "nginx_config": {
            "worker_processes": 0,
            "http": {"keepalive_timeout": "soon", "client_max_body_size": "8q", "real_ip_from": ["bad"]},
        },
        "deployment": {
            "role": "edge",
            "role_data_plane": {"config_provider": "consul"},
            "admin": {"admin_key": [{"name": "a", "key": "k", "role": "root"}], "allow_admin": "127.0.0.1",
                      "admin_listen": {"port": 0}},
            "etcd": {"host": "http://127.0.0.1:2379", "prefix": "apisix"},
        },
        "plugins": "key-auth",
        "plugin_attr": {"prometheus": {"export_addr": {"ip": "127.0.0.1", "port": "9091"}}},
    })
    assert got == [
        ("/apisix/ssl", "expected mapping, got 5"),
        ("/apisix/node_listen/0/port", 'expected port 1..65535, got "x"'),
        ("/apisix/node_listen/1", 'expected port or {ip, port}, got "a"'),
        ("/apisix/node_listen/2", "expected port 1..65535, got 70000"),
        ("/apisix/node_listen/3/port", "required field is missing (expected port 1..65535)"),
        ("/apisix/router/http",
         'expected one of radixtree_host_uri, radixtree_uri, radixtree_uri_with_parameter, got "radixtree"'),
        ("/nginx_config/http/keepalive_timeout",
         'expected duration like 60s, 1m or 500ms (or a number of seconds), got "soon"'),
        ("/nginx_config/http/client_max_body_size",
         'expected size like 8m, 1k or a number of bytes (0 = unlimited), got "8q"'),
        ("/nginx_config/http/real_ip_from/0", 'expected IP address, CIDR or unix:, got "bad"'),
        ("/deployment/role", 'expected one of traditional, data_plane, control_plane, got "edge"'),
        ("/deployment/role_data_plane/config_provider", 'expected one of etcd, yaml, json, xds, got "consul"'),
        ("/deployment/admin/admin_key/0/role", 'expected one of admin, viewer, got "root"'),
        ("/deployment/admin/admin_listen/port", "expected port 1..65535, got 0"),
        ("/deployment/admin/allow_admin", 'expected list of IP addresses or CIDRs, got "127.0.0.1"'),
        ("/deployment/etcd/host", 'expected non-empty list of URLs like http://127.0.0.1:2379, got "http://127.0.0.1:2379"'),
        ("/deployment/etcd/prefix", 'expected string starting with /, got "apisix"'),
        ("/plugin_attr/prometheus/export_addr/port", 'expected port 1..65535, got "9091"'),
        ("/apisix/enable_control", 'expected boolean (true or false), got "yes please"'),
        ("/apisix/trusted_addresses/0", 'expected IP address or CIDR, got "10.0.0.0/33"'),
        ("/nginx_config/worker_processes", "expected auto or integer >= 1, got 0"),
        ("/plugins", 'expected list of plugin names, got "key-auth"'),
    ]


def test_errors_exception_shape() -> None:
    with pytest.raises(ConfigError) as ei:  # NodeConfigErrors is a ConfigError
        parse_node_config({"apisix": {"enable_control": 1}, "bogus": 1}, source="conf/config.yaml")
    e = ei.value
    assert isinstance(e, NodeConfigErrors)
    assert len(e) == 1 and e.source == "conf/config.yaml"
    assert e.warnings == ("unknown key bogus (not supported by Meshgate; ignored)",)
    assert str(e) == "conf/config.yaml: 1 error(s)\n  /apisix/enable_control: expected boolean (true or false), got 1"


def test_section_of_wrong_type_hides_inner_errors() -> None:
    assert errors_of({"apisix": 5}) == [("/apisix", "expected mapping, got 5")]


def test_admin_key_is_not_required_here() -> None:
    c = parse({"deployment": {"admin": {"admin_key": [{"name": "admin", "role": "admin"}]}}})
    assert c.admin.admin_key == (AdminKey("admin", "", "admin"),)


# --- files --------------------------------------------------------------------------------


def test_load_file_sets_paths(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("apisix:\n  node_listen: 9999\n  enable_control: ${{CTRL:=false}}\n"
                 "deployment:\n  admin:\n    admin_key:\n      - {name: admin, key: '${{ADMIN_KEY}}', role: admin}\n")
    c = load_node_config(f, env={"ADMIN_KEY": "s3cret"})
    assert c.path == f
    assert c.config_dir == tmp_path
    assert c.apisix_yaml_path() == tmp_path / "apisix.yaml"
    assert c.node_listen == (Listen(port=9999),)
    assert c.enable_control is False  # "false" from the default becomes a boolean
    assert c.admin.admin_key[0].key == "s3cret"
    assert c.source == str(f)


def test_load_file_missing_env(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("deployment:\n  admin:\n    admin_key:\n      - {name: admin, key: '${{ADMIN_KEY}}'}\n")
    with pytest.raises(NodeConfigErrors) as ei:
        load_node_config(f, env={})
    [e] = ei.value.errors
    assert e.pointer == "/deployment/admin/admin_key/0/key"
    assert e.message == "environment variable ADMIN_KEY is not set and has no default (use ${{ADMIN_KEY:=default}})"


def test_load_empty_file_gives_defaults(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("# nothing\n")
    assert load_node_config(f).role == "traditional"


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigErrors) as ei:
        load_node_config(tmp_path / "nope.yaml")
    assert ei.value.errors[0].message.startswith(f"cannot read {tmp_path / 'nope.yaml'}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apisix:\n  node_listen: [9080\n")
    with pytest.raises(NodeConfigErrors) as ei:
        load_node_config(bad)
    assert ei.value.errors[0].message.startswith("invalid YAML at line 3, column 1")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(NodeConfigErrors) as ei:
        load_node_config(lst)
    assert ei.value.errors[0].message == "expected a mapping at top level, got list"


# --- apisix.data_encryption ---------------------------------------------------------------


def test_data_encryption_defaults_are_apisix_ones() -> None:
    from meshgate.config import DataEncryption

    c = parse({})
    assert c.data_encryption == DataEncryption(enable_encrypt_fields=True,
                                               keyring=("qeddd145sfvddff3", "edd1c9f0985e76a2"))
    with pytest.raises(AttributeError):
        c.data_encryption.keyring = ()  # type: ignore[misc]


@pytest.mark.parametrize("section, enable, keyring", [
    ({"keyring": "edd1c9f0985e76a1"}, True, ("edd1c9f0985e76a1",)),          # t/admin/ssl4.t, old style
    ({"keyring": ["edd1c9f0985e76a1", "qeddd145sfvddff3"]}, True, ("edd1c9f0985e76a1", "qeddd145sfvddff3")),
    ({"keyring": ["qeddd145sfvddff3qeddd145sfvddff3"]}, True, ("qeddd145sfvddff3qeddd145sfvddff3",)),
    ({"enable_encrypt_fields": False}, False, ("qeddd145sfvddff3", "edd1c9f0985e76a2")),
    # null removes the default, as APISIX's merge does: keyring: null turns encryption off (ssl4.t TEST 8)
    ({"keyring": None}, True, ()),
    ({"enable_encrypt_fields": None}, False, ("qeddd145sfvddff3", "edd1c9f0985e76a2")),
    (None, False, ()),
])
def test_data_encryption_forms(section: Any, enable: bool, keyring: tuple[str, ...]) -> None:
    de = parse({"apisix": {"data_encryption": section}}).data_encryption
    assert (de.enable_encrypt_fields, de.keyring) == (enable, keyring)


def test_data_encryption_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("apisix:\n  data_encryption:\n    enable_encrypt_fields: false\n    keyring:\n"
                 "      - ${{KEY1}}\n      - edd1c9f0985e76a2\n")
    de = load_node_config(f, env={"KEY1": "0123456789abcdef"}).data_encryption
    assert (de.enable_encrypt_fields, de.keyring) == (False, ("0123456789abcdef", "edd1c9f0985e76a2"))


def test_data_encryption_errors_never_show_the_keys() -> None:
    got = errors_of({"apisix": {"data_encryption": {"enable_encrypt_fields": "yes",
                                                    "keyring": ["short-secret", 5, "qeddd145sfvddff3"]}}})
    assert got == [
        ("/apisix/data_encryption/enable_encrypt_fields", 'expected boolean (true or false), got "yes"'),
        ("/apisix/data_encryption/keyring/0", "expected a 16 byte (AES-128) or 32 byte (AES-256) key, got 12 bytes"),
        ("/apisix/data_encryption/keyring/1", "expected a 16 or 32 byte key (string), got integer"),
    ]
    assert errors_of({"apisix": {"data_encryption": {"keyring": []}}}) == [
        ("/apisix/data_encryption/keyring", "expected a 16 or 32 byte key, or a non-empty list of them, got an empty list")]
    assert errors_of({"apisix": {"data_encryption": {"keyring": "x" * 20}}}) == [
        ("/apisix/data_encryption/keyring", "expected a 16 byte (AES-128) or 32 byte (AES-256) key, got 20 bytes")]
    assert errors_of({"apisix": {"data_encryption": "on"}}) == [
        ("/apisix/data_encryption", 'expected mapping, got "on"')]


def test_data_encryption_unknown_keys_warn() -> None:
    c = parse({"apisix": {"data_encryption": {"enable_encrypt_fields": True, "salt": "x"}}})
    assert c.warnings == ("unknown key apisix.data_encryption.salt (not supported by Meshgate; ignored)",)


# --- apisix.ssl (the TLS listeners) -------------------------------------------------------


def test_ssl_defaults_are_apisix_ones() -> None:
    from meshgate.config.node import DEFAULT_SSL_CIPHERS

    s = parse({}).ssl
    assert s.ssl_protocols == "TLSv1.2 TLSv1.3"
    # apisix/cli/config.lua
    assert s.ssl_ciphers == DEFAULT_SSL_CIPHERS == (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")
    assert s.fallback_sni is None


def test_ssl_keys() -> None:
    c = parse({"apisix": {"ssl": {"listen": [{"ip": "127.0.0.1", "port": 8443}, 8444],
                                  "ssl_protocols": " TLSv1.3   TLSv1.2", "ssl_ciphers": "ECDHE-RSA-AES128-GCM-SHA256",
                                  "fallback_sni": "My.Default.Domain."}}})
    assert c.warnings == ()
    assert c.ssl.listen == (Listen(ip="127.0.0.1", port=8443), Listen(port=8444))
    assert c.ssl.ssl_protocols == "TLSv1.3 TLSv1.2"
    assert c.ssl.ssl_ciphers == "ECDHE-RSA-AES128-GCM-SHA256"
    assert c.ssl.fallback_sni == "my.default.domain"     # as APISIX's ssl.lua server_name compares it


def test_ssl_errors() -> None:
    got = errors_of({"apisix": {"node_listen": [{"ip": "127.0.0.1", "port": 9080}, 9090],
                                "ssl": {"listen": [{"ip": "127.0.0.1", "port": 9080}, {"ip": "127.0.0.2", "port": 9090},
                                                   {"ip": "127.0.0.1", "port": 9443}],
                                        "ssl_protocols": "TLSv1.2 SSLv3", "ssl_ciphers": "NO-SUCH-CIPHER",
                                        "fallback_sni": "not a name"}}})
    assert got == [
        ("/apisix/ssl/ssl_protocols",
         'expected TLS versions separated by spaces (from TLSv1, TLSv1.1, TLSv1.2, TLSv1.3), got "TLSv1.2 SSLv3"'),
        ("/apisix/ssl/ssl_ciphers",
         'expected an OpenSSL cipher list that selects at least one cipher, got "NO-SUCH-CIPHER"'),
        ("/apisix/ssl/fallback_sni", 'expected a host name like www.example.com, got "not a name"'),
        ("/apisix/ssl/listen/0/port",
         "port 9080 is already an HTTP port (apisix.node_listen 127.0.0.1:9080); expected another port"),
        ("/apisix/ssl/listen/1/port",
         "port 9090 is already an HTTP port (apisix.node_listen 0.0.0.0:9090); expected another port"),
    ]
    assert errors_of({"apisix": {"ssl": {"ssl_protocols": "", "fallback_sni": 5}}}) == [
        ("/apisix/ssl/ssl_protocols",
         'expected TLS versions separated by spaces (from TLSv1, TLSv1.1, TLSv1.2, TLSv1.3), got ""'),
        ("/apisix/ssl/fallback_sni", "expected a host name like www.example.com, got 5"),
    ]
    # with TLS off, the listen addresses are not checked against the HTTP ones
    assert parse({"apisix": {"ssl": {"enable": False, "listen": [9080]}}}).ssl.enable is False
