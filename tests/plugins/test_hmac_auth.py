"""hmac-auth: schema, and behaviour through the real gateway (APISIX t/plugin/hmac-auth*.t)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import formatdate

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError

KEY_ID = "my-access-key"
SECRET = "my-secret-key"
GENERIC = b'{"message":"client request can\'t be validated"}\n'


def upstream(up):
    return {"type": "roundrobin", "nodes": {up.addr: 1}}


def doc(up, plugins, consumers=None):
    return {"routes": [{"id": "1", "uri": "/*", "plugins": plugins, "upstream": upstream(up)}],
            "consumers": consumers if consumers is not None else [
                {"username": "jack", "plugins": {"hmac-auth": {"key_id": KEY_ID, "secret_key": SECRET}}}]}


def gmt(offset: int = 0) -> str:
    return formatdate(time.time() + offset, usegmt=True)


def sign(lines: list[str], *, secret: str = SECRET, alg: str = "sha256") -> str:
    data = ("\n".join([KEY_ID, *lines]) + "\n").encode()
    return base64.b64encode(hmac.new(secret.encode(), data, getattr(hashlib, alg)).digest()).decode()


def auth(signature: str, headers: str | None = "@request-target date", alg: str = "hmac-sha256") -> str:
    parts = [f'keyId="{KEY_ID}"', f'algorithm="{alg}"']
    if headers is not None:
        parts.append(f'headers="{headers}"')
    parts.append(f'signature="{signature}"')
    return "Signature " + ",".join(parts)


def signed_get(path: str, date: str | None = None, **extra: str) -> dict[str, str]:
    date = date or gmt()
    names = " ".join(["@request-target", "date", *extra])
    lines = [f"GET {path}", f"date: {date}", *(f"{k}: {v}" for k, v in extra.items())]
    return {"Date": date, "Authorization": auth(sign(lines), names), **extra}


def err(registry, conf, **kw):
    with pytest.raises(ConfigError) as e:
        registry.validate("hmac-auth", conf, pointer="/plugins/hmac-auth", **kw)
    return e.value.message


def test_schema(registry):
    registry.validate("hmac-auth", {}, pointer="/p")
    registry.validate("hmac-auth", {"allowed_algorithms": ["hmac-sha256"], "clock_skew": 10,
                                    "signed_headers": ["date", "x-a"], "validate_request_body": True,
                                    "max_req_body_size": 10, "hide_credentials": True, "realm": "r"}, pointer="/p")
    assert err(registry, {"clock_skew": 0}).endswith(
        'property "clock_skew" validation failed: expected 0 to be at least 1')
    assert err(registry, {"allowed_algorithms": []}).endswith(
        'property "allowed_algorithms" validation failed: expect array to have at least 1 items')
    assert "allowed_algorithms" in err(registry, {"allowed_algorithms": ["hmac-md5"]})
    c = {"schema_type": "consumer"}
    registry.validate("hmac-auth", {"key_id": "a", "secret_key": "b"}, pointer="/c", **c)
    assert err(registry, {"key_id": "a"}, **c) == \
        'failed to check the configuration of plugin hmac-auth err: property "secret_key" is required'
    assert err(registry, {"secret_key": "b"}, **c).endswith('property "key_id" is required')
    assert err(registry, {"key_id": "a" * 320, "secret_key": "b"}, **c).endswith(
        'property "key_id" validation failed: string too long, expected at most 256, got 320')
    assert err(registry, {"key_id": "a", "secret_key": "b" * 384}, **c).endswith(
        'property "secret_key" validation failed: string too long, expected at most 256, got 384')


async def test_validation_answers(tmp_path, up):
    gw = start_gateway(tmp_path, doc(up, {"hmac-auth": {}}))
    try:
        async def get(headers, path="/hello"):
            return await http(gw.addr, "GET", path, headers=headers)

        r = await get({})
        assert (r.status, r.body) == (
            401, b'{"message":"client request can\'t be validated: missing Authorization header"}\n')
        assert r.header("WWW-Authenticate") == 'hmac realm="hmac"'
        r = await get({"Authorization": "Basic Zm9vOmJhcg=="})
        assert r.body == (b'{"message":"client request can\'t be validated: '
                          b'Authorization header does not start with \'Signature\'"}\n')
        date = gmt()
        good = sign(["GET /hello", f"date: {date}"])
        bad_cases = [
            # (headers, logged reason)
            ({"Date": date, "Authorization": f'Signature keyId="{KEY_ID}",headers="@request-target date" ,'
                                             f'signature="{good}"'}, "algorithm missing"),
            ({"Date": date, "Authorization": f'Signature algorithm="hmac-sha256",signature="{good}"'},
             "keyId or signature missing"),
            ({"Date": date, "Authorization": auth(good).replace(KEY_ID, "other-key")}, "Invalid key_id"),
            ({"Date": date, "Authorization": auth(good, alg="hmac-sha384")}, "Invalid algorithm"),
            ({"Authorization": auth(good)}, "Date header missing. failed to validate clock skew"),
            ({"Date": "Thu, 24 Sep 2020 06:39:52 GMT", "Authorization": auth(good)}, "Clock skew exceeded"),
            ({"Date": "adbcdef", "Authorization": auth(good)}, "Invalid GMT format time"),
            ({"Date": date, "Authorization": auth(sign(["GET /hello"]), "@request-target")},
             'expected header "date" missing in signing'),
            ({"Date": date, "Authorization": auth(sign(["GET /hello", f"date: {date}"], secret="wrong"))},
             "Invalid signature"),
            # replay with another Date: the signature covers it
            ({"Date": gmt(60), "Authorization": auth(good)}, "Invalid signature"),
        ]
        for headers, reason in bad_cases:
            r = await get(headers)
            assert (r.status, r.body) == (401, GENERIC), reason
            assert r.header("WWW-Authenticate") == 'hmac realm="hmac"'
            assert f"client request can't be validated: {reason}" in gw.log(), reason
        assert up.requests == []

        r = await get({"Date": date, "Authorization": auth(good)})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("X-Consumer-Username") == "jack" and got.header("Authorization") == auth(good)
        # @request-target is method + request URI including the query
        r = await get(signed_get("/hello?a=1&b=2"), path="/hello?a=1&b=2")
        assert r.status == 200
        r = await get(signed_get("/hello?a=1"), path="/hello?a=2")
        assert (r.status, r.body) == (401, GENERIC)
        assert SECRET not in gw.log()
    finally:
        gw.stop()


async def test_signed_headers_algorithms_hide_credentials(tmp_path, up):
    routes = doc(up, {"hmac-auth": {"signed_headers": ["date", "x-custom-header-a", "x-custom-header-b"],
                                    "allowed_algorithms": ["hmac-sha256", "hmac-sha512"], "hide_credentials": True}})
    routes["routes"].append({"id": "2", "uri": "/free/*", "upstream": upstream(up),
                             "plugins": {"hmac-auth": {"signed_headers": []}}})
    gw = start_gateway(tmp_path, routes)
    try:
        h = signed_get("/hello", **{"x-custom-header-a": "asld$%dfasf", "x-custom-header-b": "23879fmsldfk"})
        r = await http(gw.addr, "GET", "/hello", headers=h)
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("Authorization") is None and got.header("X-Consumer-Username") == "jack"

        # b signed but not sent: the signing string differs
        h2 = dict(h)
        del h2["x-custom-header-b"]
        r = await http(gw.addr, "GET", "/hello", headers=h2)
        assert (r.status, r.body) == (401, GENERIC)
        # b sent but not signed
        h3 = signed_get("/hello", **{"x-custom-header-a": "x"})
        h3["x-custom-header-b"] = "y"
        r = await http(gw.addr, "GET", "/hello", headers=h3)
        assert (r.status, r.body) == (401, GENERIC)
        assert 'expected header "x-custom-header-b" missing in signing' in gw.log()

        # sha1 not allowed here; sha512 is
        date = gmt()
        lines = ["GET /hello", f"date: {date}", "x-custom-header-a: a", "x-custom-header-b: b"]
        names = "@request-target date x-custom-header-a x-custom-header-b"
        base = {"Date": date, "x-custom-header-a": "a", "x-custom-header-b": "b"}
        r = await http(gw.addr, "GET", "/hello", headers={
            **base, "Authorization": auth(sign(lines, alg="sha1"), names, alg="hmac-sha1")})
        assert (r.status, r.body) == (401, GENERIC)
        r = await http(gw.addr, "GET", "/hello", headers={
            **base, "Authorization": auth(sign(lines, alg="sha512"), names, alg="hmac-sha512")})
        assert r.status == 200

        # signed_headers: [] -> signing only @request-target is enough
        r = await http(gw.addr, "GET", "/free/x", headers={
            "Date": gmt(), "Authorization": auth(sign(["GET /free/x"]), "@request-target")})
        assert r.status == 200
    finally:
        gw.stop()


async def test_validate_request_body(tmp_path, up):
    routes = doc(up, {"hmac-auth": {"validate_request_body": True}})
    routes["routes"].append({"id": "2", "uri": "/small/*", "upstream": upstream(up),
                             "plugins": {"hmac-auth": {"validate_request_body": True, "max_req_body_size": 10}}})
    gw = start_gateway(tmp_path, routes)
    try:
        body = b'{"name": "world"}'
        digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()

        def headers(path, dg=None):
            date = gmt()
            names = "@request-target date" + (" digest" if dg else "")
            lines = [f"POST {path}", f"date: {date}"] + ([f"digest: {dg}"] if dg else [])
            h = {"Date": date, "Authorization": auth(sign(lines), names)}
            if dg:
                h["Digest"] = dg
            return h

        r = await http(gw.addr, "POST", "/u", headers=headers("/u"), body=body)
        assert (r.status, r.body) == (401, GENERIC)
        r = await http(gw.addr, "POST", "/u", headers=headers("/u", "SHA-256=" + "A" * 44), body=body)
        assert (r.status, r.body) == (401, GENERIC)
        assert "client request can't be validated: Invalid digest" in gw.log()
        r = await http(gw.addr, "POST", "/u", headers=headers("/u", digest), body=body)
        assert r.status == 200 and up.requests[-1].body == body

        r = await http(gw.addr, "POST", "/small/x", headers=headers("/small/x", digest), body=body)
        assert r.status == 413
        short = b"hi"
        dg = "SHA-256=" + base64.b64encode(hashlib.sha256(short).digest()).decode()
        r = await http(gw.addr, "POST", "/small/x", headers=headers("/small/x", dg), body=short)
        assert r.status == 200 and up.requests[-1].body == short
    finally:
        gw.stop()


async def test_anonymous_consumer_and_realm(tmp_path, up):
    consumers = [{"username": "jack", "plugins": {"hmac-auth": {"key_id": KEY_ID, "secret_key": SECRET}}},
                 {"username": "anonymous", "plugins": {}}]
    routes = doc(up, {"hmac-auth": {"anonymous_consumer": "anonymous"}}, consumers)
    routes["routes"] += [
        {"id": "2", "uri": "/gone/*", "upstream": upstream(up),
         "plugins": {"hmac-auth": {"anonymous_consumer": "not-found-anonymous"}}},
        {"id": "3", "uri": "/realm/*", "upstream": upstream(up), "plugins": {"hmac-auth": {"realm": "my-hmac-realm"}}},
    ]
    gw = start_gateway(tmp_path, routes)
    try:
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "anonymous"
        r = await http(gw.addr, "GET", "/x", headers=signed_get("/x"))
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "jack"
        r = await http(gw.addr, "GET", "/gone/x")
        assert (r.status, r.body) == (401, b'{"message":"Invalid user authorization"}\n')
        assert r.header("WWW-Authenticate") == 'hmac realm="hmac"'
        assert "failed to get anonymous consumer not-found-anonymous" in gw.log()
        r = await http(gw.addr, "GET", "/realm/x")
        assert r.status == 401 and r.header("WWW-Authenticate") == 'hmac realm="my-hmac-realm"'
    finally:
        gw.stop()
