"""Admin API with APISIX's field encryption (data_encryption keyring): encrypted at rest in
etcd, clear text in GET answers, private keys never shown, PATCH does not encrypt twice."""

from __future__ import annotations

import pytest

from admintools import Admin, registry, running_admin, self_signed, up


@pytest.fixture
async def admin(cluster):
    # imported here: the cipher is another module of the project (config/encryption.py)
    from meshgate.config.encryption import DEFAULT_KEYRING, FieldCipher

    cipher = FieldCipher(DEFAULT_KEYRING, registry())
    async with running_admin(cluster.urls, cipher=cipher) as a:
        a.cipher = cipher        # type: ignore[attr-defined]
        yield a


async def test_plugin_fields_encrypted_at_rest_clear_in_get(admin: Admin):
    r = await admin.call("PUT", "consumers", {"username": "jack", "plugins": {"key-auth": {"key": "secret-key"}}})
    assert r.status == 201
    stored = await admin.stored("/consumers/jack")
    at_rest = stored["plugins"]["key-auth"]["key"]
    assert at_rest != "secret-key"
    assert admin.cipher.decrypt(at_rest) == "secret-key"
    r = await admin.call("GET", "consumers/jack")
    assert r.json()["value"]["plugins"]["key-auth"]["key"] == "secret-key"
    r = await admin.call("GET", "consumers")
    assert r.json()["list"][0]["value"]["plugins"]["key-auth"]["key"] == "secret-key"

    r = await admin.call("PUT", "consumers/jack/credentials/c1", {"plugins": {"basic-auth": {"username": "u",
                                                                                             "password": "pw"}}})
    assert r.status == 201
    cred = await admin.stored("/consumers/jack/credentials/c1")
    assert cred["plugins"]["basic-auth"]["password"] != "pw"
    assert admin.cipher.decrypt(cred["plugins"]["basic-auth"]["password"]) == "pw"
    r = await admin.call("GET", "consumers/jack/credentials/c1")
    assert r.json()["value"]["plugins"]["basic-auth"]["password"] == "pw"

    # the duplicate-key check compares clear text
    r = await admin.call("PUT", "consumers", {"username": "jim", "plugins": {"key-auth": {"key": "secret-key"}}})
    assert r.json() == {"error_msg": "duplicate key of plugin key-auth found with consumer: jack"}


async def test_patch_does_not_encrypt_twice(admin: Admin):
    lc = {"count": 1, "time_window": 60, "key": "remote_addr", "policy": "redis", "redis_host": "127.0.0.1",
          "redis_password": "redis-pw"}
    r = await admin.call("PUT", "routes/1", {"uri": "/a", "upstream": up(), "plugins": {"limit-count": lc}})
    assert r.status == 201, r.body
    first = (await admin.stored("/routes/1"))["plugins"]["limit-count"]["redis_password"]
    assert first != "redis-pw" and admin.cipher.decrypt(first) == "redis-pw"
    r = await admin.call("PATCH", "routes/1", {"desc": "x"})
    assert r.status == 200
    again = (await admin.stored("/routes/1"))["plugins"]["limit-count"]["redis_password"]
    assert again == first
    r = await admin.call("GET", "routes/1")
    assert r.json()["value"]["plugins"]["limit-count"]["redis_password"] == "redis-pw"


async def test_private_keys(admin: Admin):
    cert, key = self_signed()
    r = await admin.call("PUT", "ssls/1", {"cert": cert, "key": key, "sni": "test.com"})
    assert r.status == 201
    stored = await admin.stored("/ssls/1")
    assert stored["key"] != key and admin.cipher.decrypt(stored["key"]) == key
    r = await admin.call("GET", "ssls/1")
    assert "key" not in r.json()["value"]
    # PATCH checks the clear key and keeps it encrypted once
    r = await admin.call("PATCH", "ssls/1", {"sni": "other.com"})
    assert r.status == 200, r.body
    assert admin.cipher.decrypt((await admin.stored("/ssls/1"))["key"]) == key

    r = await admin.call("PUT", "upstreams/1", {**up(), "scheme": "https",
                                                "tls": {"client_cert": cert, "client_key": key}})
    assert r.status == 201, r.body
    at_rest = (await admin.stored("/upstreams/1"))["tls"]["client_key"]
    assert at_rest != key
    r = await admin.call("GET", "upstreams/1")
    assert r.json()["value"]["tls"]["client_key"] == at_rest      # shown as stored, as APISIX
