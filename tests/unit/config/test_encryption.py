"""FieldCipher: APISIX's data encryption (apisix/core/data_encryption.lua, plugin.lua
encrypt_conf/decrypt_conf, ssl.lua aes_encrypt_pkey/aes_decrypt_pkey).

Known vectors are the ciphertexts APISIX's own tests read back from etcd; the openssl CLI is
an independent oracle for the rest."""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import types
from typing import Any

import pytest

from meshgate.config import DEFAULT_KEYRING, FieldCipher
from meshgate.plugins import PluginRegistry

K1, K2 = DEFAULT_KEYRING                      # qeddd145sfvddff3, edd1c9f0985e76a2
K32 = "qeddd145sfvddff3qeddd145sfvddff3"      # t/core/data_encryption.t TEST 2
PEM = "-----BEGIN PRIVATE KEY-----\n" + "B" * 200 + "\n-----END PRIVATE KEY-----"

# (keyring entry, plaintext, ciphertext as APISIX stored it in etcd)
APISIX_VECTORS = [
    (K2, "bar", "77+NmbYqNfN+oLm0aX5akg=="),              # t/node/data_encrypt.t TEST 1
    (K2, "auth-two", "vU/ZHVJw7b0XscDJ1Fhtig=="),         # t/node/data_encrypt.t TEST 9
    (K2, "abc123", "7ipXoKyiZZUAgf3WWNPI5A=="),           # t/node/data_encrypt2.t TEST 1
    (K2, "def456", "3hlZu5mwUbqROm+cy0Vi9A=="),           # t/node/data_encrypt2.t TEST 4
    (K2, "test", "9QKrmTT3TkWGvjlIoe5XXw=="),             # t/node/data_encrypt2.t TEST 9
    (K1, "bar", "+kOEVUuRc5rC5ZwvvAMLwg=="),              # t/node/credential-plugin-basic-auth.t
    (K1, "p7a3k6r4t9", "fsFPtg7BtXMXkvSnS9e1zw=="),       # t/node/credential-plugin-key-auth.t
    (K1, "my-secret-key", "kK0lkbzXrE7aiTiyK/Z0Sw=="),    # t/node/credential-plugin-jwt-auth.t
    (K1, "v8p3q6r7t9", "QwGua2GjZjOiq+Mj3Mef2g=="),       # t/node/credential-plugin-multi-credentials.t
    (K32, "hello world", "ls4DOizUshA64GOrnhVRQw=="),     # openssl enc -aes-256-cbc (IV = first 16 bytes)
]


def _module(name: str, **attrs: Any) -> types.ModuleType:
    m = types.ModuleType(f"fake_{name.replace('-', '_')}")
    m.NAME = name  # type: ignore[attr-defined]
    m.PRIORITY = 1  # type: ignore[attr-defined]
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """The built-ins plus fakes shaped like APISIX plugins with deep encrypt_fields."""
    reg = PluginRegistry()
    reg.load_builtin()
    # ai-proxy / ai-proxy-multi style paths (t/node/data_encrypt3.t)
    reg.register_module(_module("deep", SCHEMA={
        "type": "object",
        "encrypt_fields": ["auth.header", "auth.gcp.service_account_json", "instances.auth.header",
                           "tokens", "missing.path.x", "top"]}))
    # different fields on the route side and the consumer side
    reg.register_module(_module("two-sided", TYPE="auth",
                                SCHEMA={"type": "object", "encrypt_fields": ["route_secret"]},
                                CONSUMER_SCHEMA={"type": "object", "encrypt_fields": ["consumer_secret"]}))
    # error-log-logger style metadata (t/plugin/error-log-logger-clickhouse.t)
    reg.register_module(_module("meta-logger", SCHEMA={"type": "object"},
                                METADATA_SCHEMA={"type": "object", "encrypt_fields": ["clickhouse.password"]}))
    return reg


def cipher(registry: PluginRegistry, keyring: Any = DEFAULT_KEYRING, **kw: Any) -> FieldCipher:
    return FieldCipher(keyring, registry, **kw)


# --- the cipher ---------------------------------------------------------------------------


@pytest.mark.parametrize("key, plain, enc", APISIX_VECTORS)
def test_known_vectors(registry: PluginRegistry, key: str, plain: str, enc: str) -> None:
    c = cipher(registry, [key])
    assert c.encrypt(plain) == enc
    assert c.decrypt(enc) == plain


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
@pytest.mark.parametrize("key", [K1, K2, K32, "0123456789abcdef0123456789ABCDEF"])
@pytest.mark.parametrize("plain", ["", "x", "exactly16bytes!!", "a" * 31, "pässwörd ☃", "line\nbreak"])
def test_openssl_is_the_oracle(registry: PluginRegistry, key: str, plain: str) -> None:
    algo = "-aes-128-cbc" if len(key) == 16 else "-aes-256-cbc"
    out = subprocess.run(["openssl", "enc", algo, "-K", key.encode().hex(), "-iv", key.encode()[:16].hex(),
                          "-base64", "-A"], input=plain.encode(), capture_output=True, check=True, timeout=30)
    want = out.stdout.decode().strip()
    c = cipher(registry, [key])
    assert c.encrypt(plain) == want
    assert c.decrypt(want) == plain


def test_encrypts_with_the_first_key_and_decrypts_with_any(registry: PluginRegistry) -> None:
    c = cipher(registry)                         # the default keyring
    assert c.keyring == (K1, K2)
    assert c.encrypt("bar") == "+kOEVUuRc5rC5ZwvvAMLwg=="   # the first key
    assert c.decrypt("77+NmbYqNfN+oLm0aX5akg==") == "bar"   # written with the second key
    assert c.decrypt("+kOEVUuRc5rC5ZwvvAMLwg==") == "bar"


def test_rotation_to_aes256_keeps_old_data_readable(registry: PluginRegistry) -> None:
    # t/core/data_encryption.t TEST 3
    legacy = cipher(registry, [K1]).encrypt("hello world")
    rotated = cipher(registry, [K32, K1])
    assert rotated.decrypt(legacy) == "hello world"
    assert rotated.encrypt("hello world") == "ls4DOizUshA64GOrnhVRQw=="
    assert rotated.decrypt("ls4DOizUshA64GOrnhVRQw==") == "hello world"


def test_a_single_string_is_a_keyring_of_one(registry: PluginRegistry) -> None:
    # apisix.data_encryption.keyring: "edd1c9f0985e76a2" (t/admin/ssl4.t, old style)
    assert cipher(registry, K2).encrypt("bar") == "77+NmbYqNfN+oLm0aX5akg=="


def test_entries_of_other_lengths_are_ignored_with_an_error(registry: PluginRegistry,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="meshgate.config.encryption"):
        c = cipher(registry, ["short", K1, "x" * 24])
    assert c.keyring == (K1,)
    msgs = [r.getMessage() for r in caplog.records]
    assert ("ignored data_encryption keyring entry: expected a 16 byte (AES-128) or 32 byte (AES-256) key, "
            "got 5 bytes") in msgs
    assert any("got 24 bytes" in m for m in msgs)
    assert not any("short" in m for m in msgs)   # keys never reach the log
    only_bad = cipher(registry, ["short"])
    assert only_bad.keyring == () and only_bad.encrypt("x") == "x"


@pytest.mark.parametrize("bad", [
    "bar",                          # not encrypted (t/node/data_encrypt.t TEST 8: kept as it is)
    "",                             # nothing
    "not base64 !",                 # outside the alphabet
    "QUJD",                         # base64 of 3 bytes: not whole blocks
    "A",                            # 1 mod 4: not base64 at all
    "vU/ZHVJw7b0XscDJ1Fhtig==",      # encrypted with a key outside this keyring
])
def test_decrypt_failures_are_none(registry: PluginRegistry, bad: str) -> None:
    assert cipher(registry, [K1]).decrypt(bad) is None


def test_base64_is_decoded_as_nginx_does(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    assert c.decrypt("77+NmbYqNfN+oLm0aX5akg") == "bar"            # padding optional
    assert c.decrypt("77+NmbYqNfN+oLm0aX5akg==trailing") == "bar"  # nothing after the first "=" counts


def test_no_keyring_is_identity(registry: PluginRegistry) -> None:
    c = cipher(registry, [])
    assert not c.active
    assert c.encrypt("bar") == "bar" and c.decrypt("bar") == "bar"
    item = {"username": "foo", "plugins": {"basic-auth": {"username": "foo", "password": "bar"}}}
    assert c.encrypt_item("consumers", item) == item
    ssl = {"cert": PEM, "key": PEM}
    assert c.encrypt_item("ssls", ssl) == ssl


# --- plugin fields ------------------------------------------------------------------------


def test_consumer_auth_fields_match_apisix(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    item = {"username": "foo", "plugins": {
        "basic-auth": {"username": "foo", "password": "bar"},
        "key-auth": {"key": "auth-two"},
        "jwt-auth": {"key": "user-key", "secret": "abc123"},
        "hmac-auth": {"key_id": "k", "secret_key": "test"},
    }}
    enc = c.encrypt_item("consumers", item)
    assert enc["plugins"] == {
        "basic-auth": {"username": "foo", "password": "77+NmbYqNfN+oLm0aX5akg=="},
        "key-auth": {"key": "vU/ZHVJw7b0XscDJ1Fhtig=="},
        "jwt-auth": {"key": "user-key", "secret": "7ipXoKyiZZUAgf3WWNPI5A=="},
        "hmac-auth": {"key_id": "k", "secret_key": "9QKrmTT3TkWGvjlIoe5XXw=="},
    }
    assert c.decrypt_item("consumers", enc) == item
    assert item["plugins"]["key-auth"] == {"key": "auth-two"}   # a deep copy: the input is untouched


def test_credentials_are_consumers(registry: PluginRegistry) -> None:
    # t/node/credential-plugin-key-auth.t: the value APISIX stores for the credential
    c = cipher(registry)
    cred = {"id": "34010989-ce4e-4d61-9493-b54cca8edb31", "plugins": {"key-auth": {"key": "p7a3k6r4t9"}}}
    stored = {"id": "34010989-ce4e-4d61-9493-b54cca8edb31",
              "plugins": {"key-auth": {"key": "fsFPtg7BtXMXkvSnS9e1zw=="}}}
    assert c.encrypt_item("consumers", cred) == stored
    assert c.decrypt_item("consumers", stored) == cred


def test_consumer_schema_then_schema(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    # a non-auth plugin on a consumer has no consumer schema: its schema's fields count
    consumer = {"username": "u", "plugins": {
        "limit-count": {"count": 1, "time_window": 1, "policy": "redis", "redis_host": "h",
                        "redis_password": "abc123"},
        "two-sided": {"route_secret": "bar", "consumer_secret": "bar"},
    }}
    enc = c.encrypt_item("consumers", consumer)["plugins"]
    assert enc["limit-count"]["redis_password"] == "7ipXoKyiZZUAgf3WWNPI5A=="
    assert enc["two-sided"] == {"route_secret": "bar", "consumer_secret": "77+NmbYqNfN+oLm0aX5akg=="}
    # on a route the plugin's schema counts, never its consumer schema
    route = {"uri": "/", "plugins": {"two-sided": {"route_secret": "bar", "consumer_secret": "bar"},
                                     "key-auth": {"key": "not-a-credential-here"}}}
    enc = c.encrypt_item("routes", route)["plugins"]
    assert enc["two-sided"] == {"route_secret": "77+NmbYqNfN+oLm0aX5akg==", "consumer_secret": "bar"}
    assert enc["key-auth"] == {"key": "not-a-credential-here"}


@pytest.mark.parametrize("kind", ["routes", "services", "plugin_configs", "global_rules", "consumer_groups"])
def test_every_kind_with_plugins(registry: PluginRegistry, kind: str) -> None:
    c = cipher(registry, [K2])
    item = {"id": "1", "plugins": {"http-logger": {"uri": "http://127.0.0.1:1980/log", "auth_header": "abc123"},
                                   "limit-req": {"rate": 1, "burst": 0, "key": "remote_addr",
                                                 "redis_password": "def456"},
                                   "csrf": {"key": "test"}}}
    enc = c.encrypt_item(kind, item)
    assert enc["plugins"]["http-logger"]["auth_header"] == "7ipXoKyiZZUAgf3WWNPI5A=="
    assert enc["plugins"]["limit-req"]["redis_password"] == "3hlZu5mwUbqROm+cy0Vi9A=="
    assert enc["plugins"]["csrf"]["key"] == "9QKrmTT3TkWGvjlIoe5XXw=="
    assert c.decrypt_item(kind, enc) == item


def test_stream_routes_plugins_are_left_alone(registry: PluginRegistry) -> None:
    # admin/stream_routes.lua encrypts only the inline upstream; the stream checker never decrypts
    c = cipher(registry, [K2])
    item = {"id": "1", "server_port": 9100, "plugins": {"limit-conn": {"redis_password": "bar"}}}
    assert c.encrypt_item("stream_routes", item) == item
    assert c.decrypt_item("stream_routes", item) == item


def test_nested_paths_arrays_and_maps(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    conf = {
        "auth": {"header": {"Authorization": "bar", "n": 1}, "gcp": {"service_account_json": "abc123"},
                 "query": {"api-key": "not listed"}},
        "instances": [{"auth": {"header": {"X-Key": "test"}}}, "not an object", {"auth": None}, {"other": 1}],
        "tokens": ["bar", 7, "def456"],
        "top": {"a": "bar", "b": ["list", "is not", "a string"]},
    }
    enc = c.encrypt_item("routes", {"uri": "/", "plugins": {"deep": conf}})["plugins"]["deep"]
    assert enc == {
        "auth": {"header": {"Authorization": "77+NmbYqNfN+oLm0aX5akg==", "n": 1},
                 "gcp": {"service_account_json": "7ipXoKyiZZUAgf3WWNPI5A=="}, "query": {"api-key": "not listed"}},
        "instances": [{"auth": {"header": {"X-Key": "9QKrmTT3TkWGvjlIoe5XXw=="}}}, "not an object", {"auth": None},
                      {"other": 1}],
        "tokens": ["77+NmbYqNfN+oLm0aX5akg==", 7, "3hlZu5mwUbqROm+cy0Vi9A=="],
        "top": {"a": "77+NmbYqNfN+oLm0aX5akg==", "b": ["list", "is not", "a string"]},
    }
    assert c.decrypt_item("routes", {"uri": "/", "plugins": {"deep": enc}})["plugins"]["deep"] == conf


def test_a_value_that_does_not_decrypt_is_kept_and_logged(registry: PluginRegistry,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # t/node/data_encrypt.t TEST 9: etcd holds both encrypted and clear values
    c = cipher(registry, [K2])
    stored = {"username": "foo2", "plugins": {"basic-auth": {"username": "foo2", "password": "bar"},
                                              "key-auth": {"key": "vU/ZHVJw7b0XscDJ1Fhtig=="}}}
    with caplog.at_level(logging.INFO, logger="meshgate.config.encryption"):
        got = c.decrypt_item("consumers", stored)
    assert got["plugins"] == {"basic-auth": {"username": "foo2", "password": "bar"}, "key-auth": {"key": "auth-two"}}
    [rec] = [r for r in caplog.records if "failed to decrypt" in r.getMessage()]
    assert rec.levelno == logging.INFO
    assert rec.getMessage().startswith(
        "failed to decrypt the conf of plugin [basic-auth] key [password], err: decrypt failed")
    assert "bar" not in rec.getMessage().split("err:")[0]


def test_array_and_map_failures_name_the_element(registry: PluginRegistry, caplog: pytest.LogCaptureFixture) -> None:
    c = cipher(registry, [K2])
    with caplog.at_level(logging.INFO, logger="meshgate.config.encryption"):
        c.decrypt_item("routes", {"plugins": {"deep": {"tokens": ["x"], "auth": {"header": {"H": "y"}}}}})
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("failed to decrypt the conf of plugin [deep] key [tokens] index [1]") for m in msgs)
    assert any(m.startswith("failed to decrypt the conf of plugin [deep] key [auth.header.H]") for m in msgs)


@pytest.mark.parametrize("value", [
    {"plugins": "not an object"},
    {"plugins": {"key-auth": "not an object", "basic-auth": None}},
    {"plugins": {"key-auth": {"key": 12}}},
    {"plugins": {"unknown-plugin": {"password": "x"}}},   # not loaded: no schema, left alone
    {"plugins": {"deep": {"auth": ["a", "b"], "instances": {"auth": "x"}, "top": 5}}},
])
def test_odd_shapes_never_raise(registry: PluginRegistry, value: dict[str, Any]) -> None:
    c = cipher(registry, [K2])
    assert c.decrypt_item("consumers", value) == value
    assert c.encrypt_item("routes", value) == value


def test_not_an_object_is_returned_as_it_is(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    assert c.decrypt_item("routes", ["x"]) == ["x"]  # type: ignore[arg-type]


def test_disabled_leaves_plugin_fields_alone(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2], enabled=False)
    item = {"username": "foo", "plugins": {"basic-auth": {"username": "foo", "password": "bar"}}}
    assert c.encrypt_item("consumers", item) == item
    assert c.decrypt_item("consumers", item) == item


# --- plugin metadata ----------------------------------------------------------------------


def test_plugin_metadata(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    meta = {"clickhouse": {"user": "default", "password": "bar"}, "batch_max_size": 15}
    enc = c.encrypt_item("plugin_metadata", meta, id="meta-logger")
    # t/plugin/error-log-logger-clickhouse.t TEST 8
    assert enc == {"clickhouse": {"user": "default", "password": "77+NmbYqNfN+oLm0aX5akg=="}, "batch_max_size": 15}
    assert c.decrypt_item("plugin_metadata", enc, id="meta-logger") == meta
    # the plugin is named by the value's id when no id is given
    with_id = {"id": "meta-logger", **enc}
    assert c.decrypt_item("plugin_metadata", with_id) == {"id": "meta-logger", **meta}
    # a plugin without encrypt_fields in its metadata schema, or no metadata schema, or not loaded
    for name in ("http-logger", "key-auth", "nope"):
        assert c.encrypt_item("plugin_metadata", meta, id=name) == meta
    assert c.encrypt_item("plugin_metadata", meta) == meta        # no name at all


# --- private keys -------------------------------------------------------------------------


def test_ssl_key_and_keys(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    ssl = {"id": "1", "cert": PEM, "key": PEM, "certs": [PEM, PEM], "keys": [PEM, "$secret://vault/1/k"],
           "sni": "a.com"}
    enc = c.encrypt_item("ssls", ssl)
    assert enc["key"] == c.encrypt(PEM) and enc["keys"] == [c.encrypt(PEM), "$secret://vault/1/k"]
    assert enc["cert"] == PEM and enc["certs"] == [PEM, PEM]      # certificates are public
    assert c.encrypt_item("ssls", enc) == enc                      # already encrypted: not PEM, kept
    assert c.decrypt_item("ssls", enc) == ssl
    assert c.decrypt_item("ssls", ssl) == ssl                      # PEM in etcd: kept as it is


def test_ssl_keys_follow_the_keyring_not_enable_encrypt_fields(registry: PluginRegistry) -> None:
    # aes_encrypt_pkey calls data_encryption.encrypt, which only looks at the keyring
    c = cipher(registry, [K2], enabled=False)
    enc = c.encrypt_item("ssls", {"cert": PEM, "key": PEM})
    assert enc["key"] != PEM and c.decrypt_item("ssls", enc)["key"] == PEM


def test_ssl_key_that_does_not_decrypt_is_kept(registry: PluginRegistry, caplog: pytest.LogCaptureFixture) -> None:
    written = cipher(registry, ["edd1c9f0985e76a1"]).encrypt_item("ssls", {"id": "1", "key": PEM})
    with caplog.at_level(logging.WARNING, logger="meshgate.config.encryption"):
        got = cipher(registry, [K1]).decrypt_item("ssls", written)   # t/admin/ssl4.t TEST 5
    assert got == written
    assert any("decrypt ssl key failed" in r.getMessage() and "item 1" in r.getMessage() for r in caplog.records)


def test_upstream_client_keys(registry: PluginRegistry) -> None:
    c = cipher(registry, [K2])
    tls = {"client_cert": PEM, "client_key": PEM}
    up = {"nodes": {"127.0.0.1:1980": 1}, "tls": tls}
    for kind, item in (("upstreams", up), ("routes", {"uri": "/", "upstream": up}),
                       ("services", {"upstream": up}), ("stream_routes", {"upstream": up})):
        enc = c.encrypt_item(kind, copy.deepcopy(item))
        got_tls = enc["tls"] if kind == "upstreams" else enc["upstream"]["tls"]
        assert got_tls["client_key"] == c.encrypt(PEM) and got_tls["client_cert"] == PEM
        assert c.decrypt_item(kind, enc) == item
    assert c.encrypt_item("upstreams", {"nodes": {}, "tls": {"client_cert_id": "1"}}) == \
        {"nodes": {}, "tls": {"client_cert_id": "1"}}


@pytest.mark.parametrize("kind", ["protos", "secrets"])
def test_other_kinds_are_copied(registry: PluginRegistry, kind: str) -> None:
    c = cipher(registry, [K2])
    v = {"id": "vault/1", "token": "t", "content": "x"}
    got = c.encrypt_item(kind, v)
    assert got == v and got is not v
