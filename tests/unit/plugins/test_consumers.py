"""ConsumerSet: consumers and their credentials as auth plugins look them up (apisix/consumer.lua)."""

from __future__ import annotations

import logging

import pytest

from meshgate.plugins import Consumer, ConsumerSet

JACK = {"username": "jack", "group_id": "gold", "desc": "d", "labels": {"custom_id": "c-1", "team": "a"},
        "plugins": {"key-auth": {"key": "jack-own-key"},
                    "limit-count": {"count": 2, "time_window": 60}}}
CRED_A = {"id": "a", "plugins": {"key-auth": {"key": "p7a3k6r4t9"}}, "name": "n", "desc": "cred desc",
          "labels": {"custom_id": "not-this-one"}}
CRED_B = {"id": "jack/credentials/b", "plugins": {"basic-auth": {"username": "foo", "password": "bar"}}}


def test_plain_consumers() -> None:
    cs = ConsumerSet({"jack": JACK, "rose": {"username": "rose", "plugins": {"key-auth": {"key": "r"}}}})
    assert len(cs) == 2
    c, conf = cs.find("key-auth", "key", "jack-own-key")  # type: ignore[misc]
    assert (c.username, c.credential_id, c.custom_id, c.group_id, conf) == \
        ("jack", None, "c-1", "gold", {"key": "jack-own-key"})
    assert c.auth_plugins is c.plugins
    assert cs.find("key-auth", "key", "nope") is None


def test_a_credential_identifies_its_consumer() -> None:
    cs = ConsumerSet({"jack": JACK, "jack/credentials/a": CRED_A, "jack/credentials/b": CRED_B},
                     {"gold": {"plugins": {"cors": {}}}})
    c, conf = cs.find("key-auth", "key", "p7a3k6r4t9")  # type: ignore[misc]
    assert conf == {"key": "p7a3k6r4t9"}
    # the owner's fields, as APISIX clones the consumer (construct_consumer_data) ...
    assert (c.username, c.consumer_name, c.group_id, c.desc, c.labels, c.custom_id) == \
        ("jack", "jack", "gold", "d", JACK["labels"], "c-1")
    # ... the credential's id from its key, and its plugins as the confs that identify it
    assert c.credential_id == "a"
    assert c.credential_plugins == CRED_A["plugins"] and c.auth_plugins == CRED_A["plugins"]
    # the owner's plugins stay: its non-auth ones merge into the route (limit-count here)
    assert c.plugins == JACK["plugins"]
    assert cs.group_plugins(c) == {"cors": {}}
    # the owner is still found by its own key, without a credential id
    owner, _ = cs.find("key-auth", "key", "jack-own-key")  # type: ignore[misc]
    assert owner.credential_id is None and owner is cs.by_name["jack"]
    # a credential only identifies by its own plugins
    b, bconf = cs.find("basic-auth", "username", "foo")  # type: ignore[misc]
    assert (b.username, b.credential_id, bconf["password"]) == ("jack", "b", "bar")
    assert [x.credential_id for x, _ in cs.configuring("key-auth")] == [None, "a"]
    assert [x.credential_id for x, _ in cs.configuring("basic-auth")] == ["b"]
    assert cs.configuring("limit-count") == [(cs.by_name["jack"], JACK["plugins"]["limit-count"])]


def test_credentials_are_not_consumers_by_name() -> None:
    # APISIX filter_consumers_list: the anonymous consumer and the like are looked up by name
    cs = ConsumerSet({"jack": JACK, "jack/credentials/a": CRED_A})
    assert list(cs.by_name) == ["jack"] and len(cs) == 1


def test_load_order_is_kept_and_the_owner_may_come_later() -> None:
    # t/config-center-yaml/credentials.t lists the credential before its consumer
    cs = ConsumerSet({"rose/credentials/x": {"plugins": {"key-auth": {"key": "k"}}},
                      "rose": {"username": "rose", "plugins": {"key-auth": {"key": "own"}}}})
    c, _ = cs.find("key-auth", "key", "k")  # type: ignore[misc]
    assert (c.username, c.credential_id) == ("rose", "x")
    assert [x.credential_id for x, _ in cs.configuring("key-auth")] == ["x", None]


def test_a_credential_without_its_consumer_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="meshgate.plugins.consumers"):
        cs = ConsumerSet({"ghost/credentials/a": CRED_A})
    assert cs.find("key-auth", "key", "p7a3k6r4t9") is None and len(cs) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "credential ghost/credentials/a ignored: its consumer ghost does not exist"]


def test_custom_id_comes_from_labels() -> None:
    cs = ConsumerSet({"u": {"username": "u", "labels": {"custom_id": "x"}}, "v": {"username": "v"}})
    assert cs.by_name["u"].custom_id == "x" and cs.by_name["v"].custom_id is None
    assert Consumer("w").get("credential_id") is None


def test_the_lines_an_identified_request_carries_upstream() -> None:
    cs = ConsumerSet({"jack": JACK, "jack/credentials/a": CRED_A,
                      "zoe": {"username": "zoe", "labels": {"custom_id": "zoë-ü"}, "plugins": {}}})
    assert cs.by_name["jack"].up_lines == b"X-Consumer-Username: jack\r\nX-Consumer-Custom-ID: c-1\r\n"
    c, _ = cs.find("key-auth", "key", "p7a3k6r4t9")  # type: ignore[misc]
    assert c.up_lines == (b"X-Consumer-Username: jack\r\nX-Credential-Identifier: a\r\n"
                          b"X-Consumer-Custom-ID: c-1\r\n")
    assert cs.by_name["zoe"].up_lines.endswith(b"X-Consumer-Custom-ID: zo\xeb-\xfc\r\n")   # latin-1
    assert Consumer(username="\u4e2d").up_lines == "X-Consumer-Username: \u4e2d\r\n".encode()   # beyond latin-1: UTF-8
