"""ApisixConsumer → consumer (meshgate.k8s.translate.apisixconsumer)."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.k8s.translate import ClusterState
from meshgate.plugins import PluginRegistry

from k8stools import load, valid

STATE = ClusterState.from_objects(load("cluster.yaml"))
OBJS = {(o["kind"], o["metadata"]["name"]): o for o in load("resources.yaml")}

from meshgate.k8s.translate import translate_apisix_consumer  # noqa: E402


@pytest.mark.parametrize("name,plugin,conf", [
    ("jack-key", "key-auth", {"key": "auth-one"}),
    ("jack-key-secret", "key-auth", {"key": "jack-key"}),
    ("jack-basic", "basic-auth", {"username": "jack", "password": "jack-password"}),
    ("jack-basic-secret", "basic-auth", {"username": "jack", "password": "jack-password"}),
    ("jack-jwt", "jwt-auth", {"key": "user-key", "secret": "my-secret-key", "exp": 86400}),
    ("jack-jwt-secret", "jwt-auth", {"key": "jack-jwt", "secret": "my-secret-key", "algorithm": "HS256",
                                     "exp": 3600}),
    ("jack-hmac", "hmac-auth", {"key_id": "papa", "secret_key": "fatpa"}),
    ("jack-hmac-secret", "hmac-auth", {"key_id": "papa", "secret_key": "fatpa"}),
])
def test_consumer_auth_kinds(name: str, plugin: str, conf: dict[str, Any], registry: PluginRegistry) -> None:
    t = valid(translate_apisix_consumer(OBJS["ApisixConsumer", name], STATE), registry)
    (item,) = t.items
    assert item.kind == "consumers" and item.id == item.value["username"] == f"demo_{name}"
    assert item.value["plugins"][plugin] == conf
    assert item.value["labels"]["k8s/kind"] == "ApisixConsumer"


def test_consumer_plugins_merged(registry: PluginRegistry) -> None:
    t = valid(translate_apisix_consumer(OBJS["ApisixConsumer", "jack-key-secret"], STATE), registry)
    assert t.items[0].value["plugins"] == {"key-auth": {"key": "jack-key"},
                                           "limit-count": {"count": 2, "time_window": 60}}


def consumer(auth: dict[str, Any], name: str = "c") -> dict[str, Any]:
    return {"kind": "ApisixConsumer", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"authParameter": auth}}


@pytest.mark.parametrize("auth,pointer,text", [
    ({"wolfRBAC": {"value": {"server": "http://wolf"}}}, "/spec/authParameter/wolfRBAC",
     "wolfRBAC is not supported: Meshgate has no wolf-rbac plugin; use one of keyAuth, basicAuth, jwtAuth, hmacAuth"),
    ({"ldapAuth": {"value": {"user_dn": "cn=a"}}}, "/spec/authParameter/ldapAuth", "no ldap-auth plugin"),
    ({"keyAuth": {"secretRef": {"name": "nope"}}}, "/spec/authParameter/keyAuth/secretRef",
     "secret demo/nope not found"),
    ({"keyAuth": {"secretRef": {"name": "basic-auth-secret"}}}, "/spec/authParameter/keyAuth/secretRef",
     "required key in the secret 'key' is missing or empty"),
    ({"basicAuth": {"value": {"username": "a"}}}, "/spec/authParameter/basicAuth/value/password",
     "required field 'password'"),
    ({"keyAuth": {}}, "/spec/authParameter/keyAuth", "value or secretRef"),
    ({"keyAuth": {"value": {"key": "a"}}, "basicAuth": {"value": {"username": "a", "password": "b"}}},
     "/spec/authParameter", "expected exactly one authentication"),
])
def test_consumer_errors(auth: dict[str, Any], pointer: str, text: str) -> None:
    t = translate_apisix_consumer(consumer(auth), STATE)
    assert not t.items
    (e,) = t.errors
    assert e.pointer == pointer and text in e.message, str(e)


def test_consumer_username_made_valid(registry: PluginRegistry) -> None:
    t = valid(translate_apisix_consumer(consumer({"keyAuth": {"value": {"key": "k"}}}, name="jack.v2"), STATE),
              registry)
    assert t.items[0].id == "demo_jack_v2"
    long = translate_apisix_consumer(consumer({"keyAuth": {"value": {"key": "k"}}}, name="x" * 253), STATE)
    assert len(long.items[0].id) == 256


def test_hmac_legacy_fields_warned() -> None:
    t = translate_apisix_consumer(consumer({"hmacAuth": {"value": {"access_key": "a", "secret_key": "s",
                                                                   "clock_skew": 10}}}), STATE)
    assert t.items[0].value["plugins"]["hmac-auth"] == {"key_id": "a", "secret_key": "s"}
    assert "clock_skew ignored" in t.warnings[0]


def test_consumer_without_auth() -> None:
    t = translate_apisix_consumer(consumer({}), STATE)
    assert t.ok and "plugins" not in t.items[0].value
