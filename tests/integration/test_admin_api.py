"""Admin API v3 against a real etcd: CRUD of every resource, envelopes and status codes,
ids, PATCH, ttl, paging and filters (apisix t/admin/*.t semantics)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from admintools import Admin, running_admin, self_signed, up


@pytest.fixture
async def admin(cluster):
    async with running_admin(cluster.urls, stream_enabled=True) as a:
        yield a


async def envelope_matches_etcd(a: Admin, rel: str, body: dict) -> None:
    kv = await a.etcd.get(a.prefix + rel)
    assert kv is not None
    assert body["key"] == a.prefix + rel
    assert body["createdIndex"] == kv.create_revision
    assert body["modifiedIndex"] == kv.mod_revision


# --- routes: the full round trip ------------------------------------------------------------


async def test_route_put_201_then_200_get_list_delete(admin: Admin):
    route = {"uri": "/index.html", "methods": ["GET"], "desc": "new route", "upstream": up("127.0.0.1:8080")}
    r = await admin.call("PUT", "routes/1", route)
    assert r.status == 201
    assert r.header("X-API-VERSION") == "v3"
    assert r.header("Content-Type") == "application/json"
    body = r.json()
    assert set(body) == {"key", "value"}          # no indexes on writes (v3)
    assert body["key"] == admin.prefix + "/routes/1"
    v = body["value"]
    assert {k: v[k] for k in route} == route and v["id"] == "1"
    assert isinstance(v["create_time"], int) and isinstance(v["update_time"], int)
    assert abs(v["create_time"] - time.time()) < 60
    # schema defaults are not written (APISIX 3.14+): no priority/status/pass_host/scheme
    stored = await admin.stored("/routes/1")
    assert stored == v
    assert not {"priority", "status"} & set(stored) and "pass_host" not in stored["upstream"]

    r = await admin.call("PUT", "routes/1", {**route, "desc": "changed"})
    assert r.status == 200 and r.json()["value"]["desc"] == "changed"
    assert r.json()["value"]["create_time"] == v["create_time"]     # PUT keeps create_time

    r = await admin.call("GET", "routes/1")
    assert r.status == 200
    body = r.json()
    assert set(body) == {"key", "value", "createdIndex", "modifiedIndex"}
    await envelope_matches_etcd(admin, "/routes/1", body)
    assert body["createdIndex"] < body["modifiedIndex"]
    assert body["value"]["desc"] == "changed"

    await admin.call("PUT", "routes/2", {"uri": "/2", "upstream": up()})
    r = await admin.call("GET", "routes")
    assert r.status == 200
    lst = r.json()
    assert set(lst) == {"total", "list"} and lst["total"] == 2
    assert [e["key"] for e in lst["list"]] == [admin.prefix + "/routes/1", admin.prefix + "/routes/2"]
    for e in lst["list"]:
        await envelope_matches_etcd(admin, e["key"][len(admin.prefix):], e)

    r = await admin.call("DELETE", "routes/1")
    assert r.status == 200
    assert r.json() == {"deleted": "1", "key": admin.prefix + "/routes/1"}
    assert await admin.stored("/routes/1") is None
    r = await admin.call("GET", "routes/1")
    assert (r.status, r.json()) == (404, {"message": "Key not found"})
    r = await admin.call("DELETE", "routes/1")
    assert (r.status, r.json()) == (404, {"message": "Key not found"})


async def test_empty_list(admin: Admin):
    r = await admin.call("GET", "upstreams")
    assert (r.status, r.json()) == (200, {"list": [], "total": 0})


async def test_post_generates_20_digit_id_from_gen_id_revision(admin: Admin):
    r = await admin.call("POST", "routes", {"uri": "/p", "upstream": up()})
    assert r.status == 201
    body = r.json()
    rid = body["value"]["id"]
    assert len(rid) == 20 and rid.isdigit()
    assert body["key"] == f"{admin.prefix}/routes/{rid}"
    gen = await admin.etcd.get(admin.prefix + "/gen_id")
    assert gen is not None and gen.mod_revision == int(rid)
    assert (await admin.stored(f"/routes/{rid}"))["uri"] == "/p"
    r2 = await admin.call("POST", "routes", {"uri": "/q", "upstream": up()})
    assert int(r2.json()["value"]["id"]) > int(rid)


async def test_id_rules(admin: Admin):
    route = {"uri": "/x", "upstream": up()}
    r = await admin.call("PUT", "routes/1", {**route, "id": "2"})
    assert (r.status, r.json()) == (400, {"error_msg": "wrong route id"})
    r = await admin.call("PUT", "routes", route)
    assert (r.status, r.json()) == (400, {"error_msg": "missing route id"})
    r = await admin.call("POST", "routes", {**route, "id": "1"})
    assert (r.status, r.json()) == (400, {"error_msg": "wrong route id, do not need it"})
    r = await admin.call("POST", "services/1", {"upstream": up()})
    assert (r.status, r.json()) == (400, {"error_msg": "wrong service id, do not need it"})
    r = await admin.call("PUT", "routes", {**route, "id": 7})     # the id may come from the body
    assert r.status == 201 and r.json()["key"] == admin.prefix + "/routes/7"
    r = await admin.call("PUT", "routes/8", {**route, "id": 8})   # same id, number in the body
    assert r.status == 201 and r.json()["value"]["id"] == "8"
    r = await admin.call("PUT", "routes/1", None)
    assert (r.status, r.json()) == (400, {"error_msg": "missing configurations"})
    r = await admin.call("DELETE", "routes")
    assert (r.status, r.json()) == (400, {"error_msg": "missing route id"})
    assert await admin.keys() == ["/routes/7", "/routes/8"]


async def test_create_and_update_time_are_server_set(admin: Admin):
    for where, body in (("create_time", {"uri": "/x", "upstream": up(), "create_time": 1}),
                        ("update_time", {"uri": "/x", "upstream": up(), "update_time": 1}),
                        ("upstream.create_time", {"uri": "/x", "upstream": {**up(), "create_time": 1}})):
        for method, path in (("PUT", "routes/1"), ("POST", "routes")):
            r = await admin.call(method, path, body)
            assert (r.status, r.json()) == (400, {"error_msg": f"the property is forbidden:  {where}"})
    assert await admin.keys() == []


# --- PATCH ----------------------------------------------------------------------------------


async def test_patch_merges_deletes_with_null_and_replaces_arrays(admin: Admin):
    await admin.call("PUT", "routes/1", {"uri": "/a", "methods": ["GET", "POST"], "desc": "d",
                                         "upstream": up("127.0.0.1:8080", "127.0.0.2:8080")})
    before = await admin.etcd.get(admin.prefix + "/routes/1")
    created = (await admin.stored("/routes/1"))["create_time"]
    r = await admin.call("PATCH", "routes/1", {"methods": ["PUT"], "desc": None,
                                               "upstream": {"nodes": {"127.0.0.1:8080": None, "127.0.0.3:8080": 5}}})
    assert r.status == 200
    v = r.json()["value"]
    assert v["methods"] == ["PUT"]                          # arrays replaced, not merged
    assert "desc" not in v                                  # null deletes
    assert v["upstream"] == {"type": "roundrobin", "nodes": {"127.0.0.2:8080": 1, "127.0.0.3:8080": 5}}
    assert v["uri"] == "/a" and v["create_time"] == created
    assert await admin.stored("/routes/1") == v
    after = await admin.etcd.get(admin.prefix + "/routes/1")
    assert after.mod_revision > before.mod_revision and after.create_revision == before.create_revision
    # an empty object replaces what was there
    await admin.call("PATCH", "routes/1", {"plugins": {"cors": {}, "gzip": {}}})
    r = await admin.call("PATCH", "routes/1", {"plugins": {"gzip": {"comp_level": 2}}})
    assert r.json()["value"]["plugins"] == {"cors": {}, "gzip": {"comp_level": 2}}
    r = await admin.call("PATCH", "routes/1", {"plugins": {}})
    assert r.status == 200 and r.json()["value"]["plugins"] == {}


async def test_patch_sub_path_replaces_that_path(admin: Admin):
    await admin.call("PUT", "routes/1", {"uri": "/a", "methods": ["GET"], "upstream": up("127.0.0.1:8080")})
    r = await admin.call("PATCH", "routes/1/upstream/nodes", {"10.0.0.1:80": 3})
    assert r.status == 200
    assert r.json()["value"]["upstream"]["nodes"] == {"10.0.0.1:80": 3}
    r = await admin.call("PATCH", "routes/1/methods", '["POST"]')
    assert r.json()["value"]["methods"] == ["POST"]
    r = await admin.call("PATCH", "routes/1/uri", '"/patched"')
    assert r.json()["value"]["uri"] == "/patched"
    stored = await admin.stored("/routes/1")
    assert stored["uri"] == "/patched" and stored["upstream"]["nodes"] == {"10.0.0.1:80": 3}
    # a sub path through a scalar
    r = await admin.call("PATCH", "routes/1/uri/x", '"y"')
    assert (r.status, r.json()) == (400, {"error_msg": "invalid sub-path: /uri"})


async def test_patch_is_revalidated_and_writes_nothing_when_invalid(admin: Admin):
    await admin.call("PUT", "routes/1", {"uri": "/a", "upstream": up()})
    before = await admin.etcd.get(admin.prefix + "/routes/1")
    r = await admin.call("PATCH", "routes/1", {"uri": 1})
    assert r.status == 400
    assert r.json() == {"error_msg": 'invalid configuration: property "uri" validation failed: '
                                     'wrong type: expected string, got number'}
    r = await admin.call("PATCH", "routes/1/methods", '["FETCH"]')
    assert r.json() == {"error_msg": 'invalid configuration: property "methods" validation failed: '
                                     'failed to validate item 1: matches none of the enum values'}
    r = await admin.call("PATCH", "routes/1", {"id": "2"})
    assert (r.status, r.json()) == (400, {"error_msg": "wrong route id"})
    r = await admin.call("PATCH", "routes/1", '"x"')
    assert (r.status, r.json()) == (400, {"error_msg": "invalid configuration"})
    r = await admin.call("PATCH", "routes/1")
    assert (r.status, r.json()) == (400, {"error_msg": "missing new configuration"})
    r = await admin.call("PATCH", "routes/9", {"desc": "x"})
    assert (r.status, r.json()) == (404, {"message": "Key not found"})
    after = await admin.etcd.get(admin.prefix + "/routes/1")
    assert after.mod_revision == before.mod_revision
    assert await admin.stored("/routes/9") is None


async def test_patch_may_set_update_time(admin: Admin):
    await admin.call("PUT", "upstreams/1", up())
    r = await admin.call("PATCH", "upstreams/1", {"update_time": 5, "create_time": 4})
    assert r.status == 200 and (r.json()["value"]["update_time"], r.json()["value"]["create_time"]) == (5, 4)


# --- ttl ------------------------------------------------------------------------------------


async def test_ttl_expires_the_object(admin: Admin):
    r = await admin.call("PUT", "routes/1?ttl=1", {"uri": "/a", "upstream": up()})
    assert r.status == 201
    kv = await admin.etcd.get(admin.prefix + "/routes/1")
    assert kv is not None and kv.lease != 0
    r = await admin.call("POST", "routes?ttl=1", {"uri": "/b", "upstream": up()})
    posted = r.json()["key"][len(admin.prefix):]
    assert r.status == 201 and (await admin.etcd.get(admin.prefix + posted)).lease != 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if (await admin.call("GET", "routes/1")).status == 404 and await admin.stored(posted) is None:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("objects with ttl=1 still there after 15 s")
    r = await admin.call("PUT", "routes/1?ttl=xxx", {"uri": "/a", "upstream": up()})
    assert (r.status, r.json()) == (400, {"error_msg": "invalid argument ttl: should be a number"})
    assert await admin.stored("/routes/1") is None


# --- paging and filters ---------------------------------------------------------------------


async def test_paging(admin: Admin):
    # created in reverse key order: paging sorts by createdIndex, a plain list by key
    for i in range(11, 0, -1):
        await admin.call("PUT", f"routes/{i:02d}", {"uri": f"/{i}", "upstream": up()})
    r = await admin.call("GET", "routes?page=1&page_size=2")
    assert r.status == 400 and r.body == b"page_size must be between 10 and 500"
    r = await admin.call("GET", "routes?page=1&page_size=501")
    assert r.status == 400
    r = await admin.call("GET", "routes?page=1&page_size=10")
    body = r.json()
    assert body["total"] == 11 and len(body["list"]) == 10
    assert [e["value"]["id"] for e in body["list"]] == [f"{i:02d}" for i in range(11, 1, -1)]
    created = [e["createdIndex"] for e in body["list"]]
    assert created == sorted(created)
    r = await admin.call("GET", "routes/?page=2&page_size=10")
    assert [e["value"]["id"] for e in r.json()["list"]] == ["01"] and r.json()["total"] == 11
    r = await admin.call("GET", "routes?page=-1&page_size=10")      # a bad page is page 1
    assert len(r.json()["list"]) == 10
    r = await admin.call("GET", "routes?page=10&page_size=10")
    assert r.json() == {"total": 11, "list": []}
    r = await admin.call("GET", "routes")
    assert [e["value"]["id"] for e in r.json()["list"]] == [f"{i:02d}" for i in range(1, 12)]


async def test_filters(admin: Admin):
    await admin.call("PUT", "services/1", {"upstream": up()})
    await admin.call("PUT", "upstreams/1", up())
    await admin.call("PUT", "routes/1", {"uri": "/hello", "name": "alpha", "labels": {"env": "prod"},
                                         "service_id": "1"})
    await admin.call("PUT", "routes/2", {"uris": ["/foo", "/bar"], "name": "beta", "labels": {"team": "a"},
                                         "upstream_id": "1"})
    await admin.call("PUT", "routes/3", {"uri": "/other", "name": "alphabet", "service_id": "1",
                                         "upstream_id": "1"})

    async def ids(q: str) -> list[str]:
        r = await admin.call("GET", "routes?" + q)
        assert r.status == 200
        body = r.json()
        assert body["total"] == len(body["list"])
        return [e["value"]["id"] for e in body["list"]]

    assert await ids("name=alpha") == ["1", "3"]
    assert await ids("name=^beta$") == ["2"]
    assert await ids("label=env") == ["1"]
    assert await ids("label=prod") == []                 # label matches keys only
    assert await ids("label=") == []
    assert await ids("uri=bar") == ["2"]
    assert await ids("uri=^/(hello|other)") == ["1", "3"]
    assert await ids("filter=service_id%3D1") == ["1", "3"]
    assert await ids("filter=upstream_id=1") == ["2", "3"]
    assert await ids("filter=service_id%3D1%26upstream_id%3D1") == ["3"]
    assert await ids("name=alpha&label=env") == ["1"]
    assert await ids("filter=desc%3Dx") == ["1", "2", "3"]     # unsupported filter fields are ignored


# --- every other kind -----------------------------------------------------------------------


async def test_services_upstreams_round_trip(admin: Admin):
    r = await admin.call("PUT", "upstreams/u1", {**up(), "name": "u"})
    assert r.status == 201
    r = await admin.call("POST", "upstreams", up())
    assert r.status == 201 and len(r.json()["value"]["id"]) == 20
    r = await admin.call("PUT", "services/s1", {"upstream_id": "u1", "desc": "svc"})
    assert r.status == 201
    r = await admin.call("PATCH", "services/s1", {"desc": "svc2"})
    assert r.status == 200 and r.json()["value"] == {**r.json()["value"], "upstream_id": "u1", "desc": "svc2"}
    r = await admin.call("GET", "services/s1")
    await envelope_matches_etcd(admin, "/services/s1", r.json())
    assert (await admin.call("GET", "upstreams")).json()["total"] == 2
    assert (await admin.call("DELETE", "services/s1")).status == 200
    assert (await admin.call("DELETE", "upstreams/u1")).status == 200


async def test_consumers_round_trip_and_unsupported_methods(admin: Admin):
    r = await admin.call("PUT", "consumers", {"username": "jack", "desc": "j",
                                              "plugins": {"key-auth": {"key": "auth-one"}}})
    assert r.status == 201
    assert r.json() == {"key": admin.prefix + "/consumers/jack", "value": r.json()["value"]}
    assert "id" not in r.json()["value"]
    r = await admin.call("PUT", "consumers/jack", {"username": "jack"})
    assert r.status == 200
    r = await admin.call("PUT", "consumers/jim", {"username": "jack"})
    assert (r.status, r.json()) == (400, {"error_msg": "wrong username"})
    r = await admin.call("POST", "consumers", {"username": "x"})
    assert (r.status, r.json()) == (405, {"error_msg": "not supported `POST` method for consumer"})
    r = await admin.call("PATCH", "consumers/jack", {"desc": "x"})
    assert (r.status, r.json()) == (405, {"error_msg": "not supported `PATCH` method for consumer"})
    r = await admin.call("PUT", "consumers", {"desc": "no name"})
    assert r.json() == {"error_msg": 'invalid configuration: property "username" is required'}
    r = await admin.call("GET", "consumers/jack")
    await envelope_matches_etcd(admin, "/consumers/jack", r.json())
    assert r.json()["value"]["username"] == "jack"


async def test_credentials(admin: Admin):
    r = await admin.call("PUT", "consumers/jack/credentials/a", {"plugins": {"key-auth": {"key": "k-a"}}})
    assert (r.status, r.json()) == (404, {"error_msg": "consumer not found"})
    await admin.call("PUT", "consumers", {"username": "jack"})
    r = await admin.call("PUT", "consumers/jack/credentials/a", {"desc": "basic",
                                                                 "plugins": {"basic-auth": {"username": "u",
                                                                                            "password": "p"}}})
    assert r.status == 201 and r.json()["key"] == admin.prefix + "/consumers/jack/credentials/a"
    assert r.json()["value"]["id"] == "a"
    r = await admin.call("PUT", "consumers/jack/credentials", {"id": "b", "plugins": {"key-auth": {"key": "k-b"}}})
    assert r.status == 201 and r.json()["key"] == admin.prefix + "/consumers/jack/credentials/b"
    r = await admin.call("PUT", "consumers/jack/credentials", {"plugins": {"key-auth": {"key": "k-c"}}})
    assert (r.status, r.json()) == (400, {"error_msg": "missing credential id"})
    r = await admin.call("PUT", "consumers/jack/credentials/c", {"plugins": {"ip-restriction": {"whitelist": ["1.1.1.1"]}}})
    assert (r.status, r.json()) == (400, {"error_msg": "only supports auth type plugins in consumer credential"})
    r = await admin.call("PUT", "consumers/jack/credentials/c", {"plugins": {"key-auth": {"key": "x"},
                                                                             "basic-auth": {"username": "a",
                                                                                            "password": "b"}}})
    assert r.json() == {"error_msg": 'invalid configuration: property "plugins" validation failed: '
                                     'expect object to have at most 1 properties'}
    r = await admin.call("POST", "consumers/jack/credentials", {"plugins": {"key-auth": {"key": "x"}}})
    assert (r.status, r.json()) == (405, {"error_msg": "not supported `POST` method for credential"})

    # the consumers list leaves the credentials out; the credentials list has them
    r = await admin.call("GET", "consumers")
    assert [e["key"] for e in r.json()["list"]] == [admin.prefix + "/consumers/jack"] and r.json()["total"] == 1
    r = await admin.call("GET", "consumers/jack/credentials")
    assert [e["key"] for e in r.json()["list"]] == [admin.prefix + "/consumers/jack/credentials/a",
                                                    admin.prefix + "/consumers/jack/credentials/b"]
    r = await admin.call("GET", "consumers/jack/credentials/b")
    await envelope_matches_etcd(admin, "/consumers/jack/credentials/b", r.json())
    assert r.json()["value"]["plugins"] == {"key-auth": {"key": "k-b"}}
    r = await admin.call("DELETE", "consumers/jack/credentials/a")
    assert r.json() == {"deleted": "1", "key": admin.prefix + "/consumers/jack/credentials/a"}

    # deleting the consumer deletes its credentials
    r = await admin.call("DELETE", "consumers/jack")
    assert r.status == 200
    assert await admin.keys() == []
    r = await admin.call("GET", "consumers/jack/credentials")
    assert (r.status, r.json()) == (404, {"message": "Key not found"})


async def test_duplicate_auth_keys(admin: Admin):
    await admin.call("PUT", "consumers", {"username": "alex"})
    await admin.call("PUT", "consumers", {"username": "bob", "plugins": {"key-auth": {"key": "bob-key"}}})
    r = await admin.call("PUT", "consumers/alex/credentials/ca", {"plugins": {"key-auth": {"key": "alex-key"}}})
    assert r.status == 201
    r = await admin.call("PUT", "consumers/bob/credentials/cb", {"plugins": {"key-auth": {"key": "alex-key"}}})
    assert r.json() == {"error_msg": "duplicate key of plugin key-auth found with credential: ca of consumer: alex"}
    r = await admin.call("PUT", "consumers/alex/credentials/cx", {"plugins": {"key-auth": {"key": "bob-key"}}})
    assert r.json() == {"error_msg": "duplicate key of plugin key-auth found with consumer: bob"}
    r = await admin.call("PUT", "consumers", {"username": "carl", "plugins": {"key-auth": {"key": "alex-key"}}})
    assert r.json() == {"error_msg": "duplicate key of plugin key-auth found with credential: ca of consumer: alex"}
    r = await admin.call("PUT", "consumers/alex/credentials/ca", {"plugins": {"key-auth": {"key": "alex-key"}}})
    assert r.status == 200                                  # a credential does not clash with itself
    r = await admin.call("PUT", "consumers", {"username": "alex", "plugins": {"key-auth": {"key": "alex-key"}}})
    assert r.status == 200                                  # nor a consumer with its own credential
    assert await admin.stored("/consumers/bob/credentials/cb") is None
    assert await admin.stored("/consumers/carl") is None


async def test_consumer_groups_plugin_configs_global_rules(admin: Admin):
    lc = {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}}
    for res in ("consumer_groups", "plugin_configs", "global_rules"):
        r = await admin.call("PUT", f"{res}/1", {"plugins": lc if res != "global_rules" else {"cors": {}}})
        assert r.status == 201, r.body
        r = await admin.call("PATCH", f"{res}/1", {"desc": "x"} if res != "global_rules" else {"plugins": {"gzip": {}}})
        assert r.status == 200, r.body
        r = await admin.call("GET", f"{res}/1")
        await envelope_matches_etcd(admin, f"/{res}/1", r.json())
    word = {"consumer_groups": "consumer group", "plugin_configs": "plugin config", "global_rules": "global rule"}
    for res, kind in word.items():
        r = await admin.call("POST", res, {"plugins": {}})
        assert (r.status, r.json()) == (405, {"error_msg": f"not supported `POST` method for {kind}"})
    r = await admin.call("PUT", "plugin_configs/2", {"desc": "no plugins"})
    assert r.json() == {"error_msg": 'invalid configuration: property "plugins" is required'}
    # a plugin belongs to one global rule only
    r = await admin.call("PUT", "global_rules/2", {"plugins": {"gzip": {}}})
    assert (r.status, r.json()) == (400, {"error_msg": "plugin 'gzip' already exists in global rule with id '1'"})
    assert (await admin.call("PUT", "global_rules/1", {"plugins": {"gzip": {}, "cors": {}}})).status == 200


async def test_ssl_round_trip_never_shows_the_key(admin: Admin):
    cert, key = self_signed("test.com")
    r = await admin.call("PUT", "ssls/1", {"cert": cert, "key": key, "sni": "test.com"})
    assert r.status == 201
    assert (await admin.stored("/ssls/1"))["key"] == key          # no cipher: stored as sent
    r = await admin.call("GET", "ssls/1")
    assert r.status == 200 and "key" not in r.json()["value"] and r.json()["value"]["cert"] == cert
    r = await admin.call("POST", "ssls", {"cert": cert, "key": key, "snis": ["a.test.com"],
                                          "certs": [cert], "keys": [key]})
    assert r.status == 201
    r = await admin.call("GET", "ssls")
    assert r.json()["total"] == 2
    for e in r.json()["list"]:
        assert "key" not in e["value"] and "keys" not in e["value"]
    r = await admin.call("PATCH", "ssls/1", {"sni": "other.com"})
    assert r.status == 200 and (await admin.stored("/ssls/1"))["key"] == key
    r = await admin.call("PUT", "ssls/2", {"cert": cert, "key": "x" * 200, "sni": "t.com"})
    assert r.json() == {"error_msg": "failed to parse key: PEM_read_bio_PrivateKey() failed"}
    r = await admin.call("PUT", "ssls/2", {"cert": "-" * 200, "key": key, "sni": "t.com"})
    assert r.json() == {"error_msg": "failed to parse cert: PEM_read_bio_X509_AUX() failed"}
    r = await admin.call("PUT", "ssls/2", {"cert": cert, "key": key})
    assert r.json() == {"error_msg": "invalid configuration: then clause did not match"}
    assert await admin.stored("/ssls/2") is None


async def test_stream_routes(admin: Admin):
    r = await admin.call("PUT", "stream_routes/1", {"server_port": 9100, "upstream": up()})
    assert r.status == 201
    r = await admin.call("POST", "stream_routes", {"remote_addr": "127.0.0.1", "upstream": up()})
    assert r.status == 201
    r = await admin.call("PATCH", "stream_routes/1", {"server_port": 9101})
    assert (r.status, r.json()) == (405, {"error_msg": "not supported `PATCH` method for stream route"})
    r = await admin.call("GET", "stream_routes")
    assert r.json()["total"] == 2
    assert (await admin.call("DELETE", "stream_routes/1")).status == 200


async def test_stream_routes_refused_without_stream_mode(cluster):
    async with running_admin(cluster.urls) as a:
        for method in ("GET", "PUT"):
            r = await a.call(method, "stream_routes/1", {"server_port": 9100, "upstream": up()})
            assert (r.status, r.json()) == (400, {"error_msg": "stream mode is disabled, can not add stream routes"})
        assert await a.keys() == []


async def test_plugin_metadata(admin: Admin):
    meta = {"log_format": {"host": "$host", "client_ip": "$remote_addr"}}
    r = await admin.call("PUT", "plugin_metadata/http-logger", meta)
    assert r.status == 201
    assert r.json() == {"key": admin.prefix + "/plugin_metadata/http-logger", "value": {**meta, "id": "http-logger"}}
    r = await admin.call("PUT", "plugin_metadata/http-logger", meta)
    assert r.status == 200
    r = await admin.call("GET", "plugin_metadata/http-logger")
    await envelope_matches_etcd(admin, "/plugin_metadata/http-logger", r.json())
    r = await admin.call("PUT", "plugin_metadata", meta)
    assert (r.status, r.json()) == (400, {"error_msg": "missing plugin name"})
    r = await admin.call("PUT", "plugin_metadata/no-such-plugin", meta)
    assert (r.status, r.json()) == (400, {"error_msg": "invalid plugin name"})
    r = await admin.call("PUT", "plugin_metadata/http-logger", {"log_format": "x"})
    assert r.status == 400 and r.json()["error_msg"].startswith('invalid configuration: property "log_format"')
    r = await admin.call("POST", "plugin_metadata", meta)
    assert (r.status, r.json()) == (405, {"error_msg": "not supported `POST` method for plugin_metadata"})
    assert (await admin.call("DELETE", "plugin_metadata/http-logger")).status == 200
    r = await admin.call("DELETE", "plugin_metadata/http-logger")
    assert r.status == 404


async def test_protos(admin: Admin):
    content = 'syntax = "proto3"; package hello; service Greeter { rpc SayHi (Req) returns (Res); } ' \
              'message Req { string name = 1; } message Res { string msg = 1; }'
    r = await admin.call("PUT", "protos/1", {"content": content})
    assert r.status == 201
    r = await admin.call("POST", "protos", {"content": content})
    assert r.status == 201
    r = await admin.call("PATCH", "protos/1", {"content": content})
    assert (r.status, r.json()) == (405, {"error_msg": "not supported `PATCH` method for proto"})
    r = await admin.call("PUT", "protos/2", {"desc": "no content"})
    assert r.json() == {"error_msg": 'invalid configuration: property "content" is required'}
    assert (await admin.call("GET", "protos")).json()["total"] == 2


async def test_secrets(admin: Admin):
    vault = {"uri": "http://127.0.0.1:12800/get", "prefix": "apisix", "token": "apisix"}
    r = await admin.call("PUT", "secrets/vault/test1", vault)
    assert r.status == 201
    assert r.json()["key"] == admin.prefix + "/secrets/vault/test1"
    assert r.json()["value"]["id"] == "vault/test1"
    stored = await admin.stored("/secrets/vault/test1")
    assert stored["create_time"] and stored["update_time"]
    r = await admin.call("GET", "secrets/vault/test1")
    await envelope_matches_etcd(admin, "/secrets/vault/test1", r.json())
    r = await admin.call("GET", "secrets")
    assert [e["key"] for e in r.json()["list"]] == [admin.prefix + "/secrets/vault/test1"]
    r = await admin.call("PATCH", "secrets/vault/test1/token", '"unknown"')
    assert r.status == 200 and (await admin.stored("/secrets/vault/test1"))["token"] == "unknown"
    r = await admin.call("PATCH", "secrets/vault/test1", {"token": "apisix"})
    assert r.status == 200 and (await admin.stored("/secrets/vault/test1"))["token"] == "apisix"
    r = await admin.call("PATCH", "secrets/vault", {})
    assert (r.status, r.json()) == (400, {"error_msg": "no secret id"})
    r = await admin.call("PUT", "secrets/vault/test2", {**vault, "uri": "/get"})
    assert r.status == 400 and "validation failed: failed to match pattern" in r.json()["error_msg"]
    r = await admin.call("PUT", "secrets/nope/test2", vault)
    assert (r.status, r.json()) == (400, {"error_msg": "invalid secret manager: nope"})
    r = await admin.call("POST", "secrets/vault", vault)
    assert (r.status, r.json()) == (405, {"error_msg": "not supported `POST` method for secret"})
    assert (await admin.call("DELETE", "secrets/vault/test1")).json() == \
        {"deleted": "1", "key": admin.prefix + "/secrets/vault/test1"}
    assert await admin.keys() == []


async def test_unknown_resource_and_methods(admin: Admin):
    r = await admin.call("GET", "routs")
    assert (r.status, r.json()) == (404, {"error_msg": "Unsupported resource type: routs"})
    assert r.header("X-API-VERSION") is None
    r = await admin.call("PUT", "plugins/key-auth", {})
    assert (r.status, r.json()) == (404, {"error_msg": "not found"})
    r = await admin.call("GET", "/apisix/admin")
    assert r.status == 404 and b"404 Not Found" in r.body
    r = await admin.call("GET", "/elsewhere")
    assert r.status == 404


# --- what APISIX's own tools leave in etcd; concurrent writers --------------------------------


async def test_init_dir_placeholders_are_skipped(admin: Admin):
    # `apisix init_etcd` writes <prefix>/<dir>/ = init_dir for every directory
    for d in ("routes", "consumers", "secrets"):
        await admin.etcd.put(f"{admin.prefix}/{d}/", b"init_dir")
    await admin.call("PUT", "routes/1", {"uri": "/a", "upstream": up()})
    r = await admin.call("GET", "routes")
    assert r.json()["total"] == 1 and [e["value"]["id"] for e in r.json()["list"]] == ["1"]
    assert (await admin.call("GET", "consumers")).json() == {"list": [], "total": 0}
    assert (await admin.call("GET", "secrets")).json() == {"list": [], "total": 0}


async def test_patch_is_compare_and_swap(admin: Admin, monkeypatch):
    await admin.call("PUT", "routes/1", {"uri": "/a", "upstream": up()})
    etcd = admin.etcd
    original = etcd.put_if
    other = {"uri": "/other-writer", "upstream": up(), "id": "1"}

    async def racing_put_if(key, value, *, mod_revision, lease=0):
        # another Admin API instance writes between our read and our write
        await etcd.put(key, json.dumps(other).encode())
        return await original(key, value, mod_revision=mod_revision, lease=lease)

    monkeypatch.setattr(etcd, "put_if", racing_put_if)
    r = await admin.call("PATCH", "routes/1", {"desc": "mine"})
    assert (r.status, r.json()) == (503, {"error_msg": "value changed before overwritten"})
    assert await admin.stored("/routes/1") == other


async def test_put_tells_create_from_replace_even_when_racing(admin: Admin, monkeypatch):
    etcd = admin.etcd
    original = etcd.put_if
    raced: list[str] = []

    async def racing_put_if(key, value, *, mod_revision, lease=0):
        if not raced:
            raced.append(key)
            await etcd.put(key, json.dumps({"uri": "/first", "upstream": up(), "id": "1",
                                            "create_time": 1000, "update_time": 1000}).encode())
        return await original(key, value, mod_revision=mod_revision, lease=lease)

    monkeypatch.setattr(etcd, "put_if", racing_put_if)
    r = await admin.call("PUT", "routes/1", {"uri": "/second", "upstream": up()})
    # the key existed when our write landed: a replace (200), keeping the first create_time
    assert r.status == 200
    stored = await admin.stored("/routes/1")
    assert stored["uri"] == "/second" and stored["create_time"] == 1000 and stored["update_time"] > 1000
