"""jwt-auth: schema, and behaviour through the real gateway (APISIX t/plugin/jwt-auth*.t)."""

from __future__ import annotations

import base64
import json
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from gwtools import http, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin import jwt_auth

SECRET = "my-secret-key"
# APISIX's fixtures: key "user-key", secret "my-secret-key"
VALID = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ1c2VyLWtleSIsImV4cCI6MTg3OTMxODU0MX0."
         "fNtFJnNmJgzbiYmGB0Yjvm-l6A6M4jRV1l4mnVFSYjs")                                     # exp 2029
EXPIRED = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ1c2VyLWtleSIsImV4cCI6MTU2Mzg3MDUwMX0."
           "pPNVvh-TQsdDzorRwa-uuiLYiEBODscp9wv0cwD6c68")                                   # exp 2019
BAD_SIG = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ1c2VyLWtleSIsImV4cCI6MTg3OTMxODU0MX0."
           "fNtFJnNnJgzbiYmGB0Yjvm-l6A6M4jRV1l4mnVFSYjs")
INVALID = "invalid-eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ1c2VyLWtleSJ9.x"

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

JWT_INVALID = b'{"message":"JWT token invalid"}\n'
VERIFY_FAILED = b'{"message":"failed to verify jwt"}\n'


def upstream(up):
    return {"type": "roundrobin", "nodes": {up.addr: 1}}


def doc(up, plugins, consumers=None):
    return {"routes": [{"id": "1", "uri": "/*", "plugins": plugins, "upstream": upstream(up)}],
            "consumers": consumers if consumers is not None else [
                {"username": "jack", "plugins": {"jwt-auth": {"key": "user-key", "secret": SECRET}}}]}


def err(registry, conf, **kw):
    with pytest.raises(ConfigError) as e:
        registry.validate("jwt-auth", conf, pointer="/plugins/jwt-auth", **kw)
    return e.value.message


def pem_pair(kind: str) -> tuple[str, object]:
    if kind == "rsa":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        priv = ec.generate_private_key(ec.SECP256R1())
    else:
        priv = ed25519.Ed25519PrivateKey.generate()
    pub = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return pub, priv


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_schema(registry):
    registry.validate("jwt-auth", {}, pointer="/p")
    registry.validate("jwt-auth", {"header": "jwt-header", "query": "jwt-query", "cookie": "jwt-cookie",
                                   "hide_credentials": True, "key_claim_name": "iss", "store_in_ctx": True,
                                   "realm": "my-jwt-realm", "claims_to_verify": ["exp", "nbf"]}, pointer="/p")
    assert err(registry, {"header": 123}) == (
        'failed to check the configuration of plugin jwt-auth err: property "header" validation failed: '
        "wrong type: expected string, got number")
    assert "claims_to_verify" in err(registry, {"claims_to_verify": ["iat"]})
    assert "claims_to_verify" in err(registry, {"claims_to_verify": ["exp", "exp"]})
    assert "key_claim_name" in err(registry, {"key_claim_name": ""})

    c = {"schema_type": "consumer"}
    registry.validate("jwt-auth", {"key": "k", "secret": "s"}, pointer="/c", **c)
    registry.validate("jwt-auth", {"key": "k", "algorithm": "RS256", "public_key": "pem"}, pointer="/c", **c)
    registry.validate("jwt-auth", {"key": "k", "secret": "bXktc2VjcmV0", "base64_secret": True}, pointer="/c", **c)
    assert err(registry, {"secret": "s"}, **c).endswith('property "key" is required')
    assert err(registry, {"key": "k"}, **c) == ("failed to check the configuration of plugin jwt-auth err: "
                                                'property "secret" is required when using HS based algorithms')
    assert err(registry, {"key": "k", "secret": ""}, **c).endswith(
        'property "secret" validation failed: string too short, expected at least 1, got 0')
    assert err(registry, {"key": "", "secret": "s"}, **c).endswith(
        'property "key" validation failed: string too short, expected at least 1, got 0')
    assert err(registry, {"key": "k", "secret": "!!not", "base64_secret": True}, **c).endswith(
        "base64_secret required but the secret is not in base64 format")
    assert err(registry, {"key": "k", "algorithm": "RS256"}, **c).startswith(
        "failed to check the configuration of plugin jwt-auth err:")
    assert err(registry, {"key": "k", "algorithm": "none", "secret": "s"}, **c)


def test_parse_and_claims():
    assert jwt_auth.parse_token("a.b") == "invalid jwt string"
    assert jwt_auth.parse_token(INVALID) == "invalid header: invalid-eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    now = int(time.time())
    assert jwt_auth.verify_claims({"exp": 1563870501}, (), 0) == "'exp' claim expired at Tue, 23 Jul 2019 08:28:21 GMT"
    assert jwt_auth.verify_claims({"nbf": 2229671874}, (), 0) == \
        "'nbf' claim not valid until Mon, 27 Aug 2040 09:17:54 GMT"
    assert jwt_auth.verify_claims({}, (), 0) is None
    assert jwt_auth.verify_claims({"exp": now + 60}, ("nbf",), 0) == "claim nbf is missing"
    assert jwt_auth.verify_claims({"exp": "soon"}, (), 0) == "claim exp is not a number"
    assert jwt_auth.verify_claims({"exp": now - 1}, (), 5) is None          # lifetime_grace_period
    assert jwt_auth.verify_claims({"exp": now - 10}, (), 5) is not None


class FakeCtx:
    def __init__(self, headers, consumer_conf):
        self.headers = headers
        self.consumer_conf = consumer_conf
        self.vars: dict[str, object] = {}
        self.attached = None

    def req_header(self, name):
        return self.headers.get(name.lower())

    def set_req_header(self, name, value):
        self.headers[name.lower()] = value

    def args(self):
        return {}

    def var(self, name):
        return None

    def set_var(self, name, value):
        self.vars[name] = value

    def find_consumer(self, plugin, field, value):
        return ("jack", self.consumer_conf) if value == "user-key" else None

    def attach_consumer(self, consumer, conf):
        self.attached = consumer


def test_store_in_ctx():
    conf = jwt_auth.prepare({"store_in_ctx": True})
    ctx = FakeCtx({"authorization": "Bearer " + VALID}, {"key": "user-key", "secret": SECRET})
    assert jwt_auth.rewrite(conf, ctx) is None
    assert ctx.attached == "jack" and ctx.vars["jwt_auth_payload"] == {"key": "user-key", "exp": 1879318541}
    ctx = FakeCtx({"authorization": VALID}, {"key": "user-key", "secret": SECRET})
    assert jwt_auth.rewrite(jwt_auth.prepare({}), ctx) is None and ctx.vars == {}


async def test_answers_and_token_places(tmp_path, up):
    routes = doc(up, {"jwt-auth": {}})
    routes["routes"].append({"id": "2", "uri": "/custom/*", "upstream": upstream(up), "plugins": {"jwt-auth": {
        "header": "jwt-header", "query": "jwt-query", "cookie": "jwt-cookie", "realm": "my-jwt-realm"}}})
    gw = start_gateway(tmp_path, routes)
    try:
        async def get(path, headers=None):
            return await http(gw.addr, "GET", path, headers=headers)

        r = await get("/hello")
        assert (r.status, r.body) == (401, b'{"message":"Missing JWT token in request"}\n')
        assert r.header("WWW-Authenticate") == 'Bearer realm="jwt"'
        r = await get("/hello?jwt=" + INVALID)
        assert (r.status, r.body) == (401, JWT_INVALID)
        r = await get("/hello", {"Authorization": "Bearer " + INVALID})
        assert (r.status, r.body) == (401, JWT_INVALID)
        r = await get("/hello", {"Authorization": "Bearer " + EXPIRED})
        assert (r.status, r.body) == (401, VERIFY_FAILED)
        r = await get("/hello", {"Authorization": BAD_SIG})
        assert (r.status, r.body) == (401, VERIFY_FAILED)
        nokey = pyjwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
        r = await get("/hello", {"Authorization": nokey})
        assert (r.status, r.body) == (401, b'{"message":"missing user key in JWT token"}\n')
        other = pyjwt.encode({"key": "other-key"}, SECRET, algorithm="HS256")
        r = await get("/hello", {"Authorization": other})
        assert (r.status, r.body) == (401, b'{"message":"Invalid user key in JWT token"}\n')
        assert up.requests == []

        for path, headers in (("/hello", {"Authorization": "Bearer " + VALID}),
                              ("/hello", {"Authorization": "bearer " + VALID}),
                              ("/hello", {"Authorization": VALID}),
                              ("/hello?jwt=" + VALID, None),
                              ("/hello", {"Cookie": "jwt=" + VALID})):
            r = await get(path, headers)
            assert r.status == 200, (path, headers)
            assert up.requests[-1].header("X-Consumer-Username") == "jack"
            assert up.requests[-1].path == path     # hide_credentials is off

        r = await get("/custom/x", {"Authorization": "Bearer " + VALID})
        assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="my-jwt-realm"'
        for path, headers in (("/custom/x", {"jwt-header": "Bearer " + VALID}), ("/custom/x?jwt-query=" + VALID, None),
                              ("/custom/x", {"Cookie": "jwt-cookie=" + VALID})):
            r = await get(path, headers)
            assert r.status == 200, (path, headers)

        log = gw.log()
        assert "JWT token invalid: invalid header: invalid-eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" in log
        assert "failed to verify jwt: 'exp' claim expired at Tue, 23 Jul 2019 08:28:21 GMT" in log
        assert "failed to verify jwt: signature mismatch: fNtFJnNnJgzbiYmGB0Yjvm-l6A6M4jRV1l4mnVFSYjs" in log
        assert SECRET not in log
    finally:
        gw.stop()


async def test_algorithm_comes_from_the_consumer(tmp_path, up):
    """alg=none and HS256-signed-with-the-public-key tokens never verify; no error leaks key material."""
    rsa_pub, rsa_priv = pem_pair("rsa")
    consumers = [
        {"username": "jack", "plugins": {"jwt-auth": {"key": "user-key", "secret": SECRET}}},
        {"username": "rita", "plugins": {"jwt-auth": {"key": "rsa-key", "algorithm": "RS256", "public_key": rsa_pub}}},
    ]
    gw = start_gateway(tmp_path, doc(up, {"jwt-auth": {}}, consumers))
    try:
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = b64url(json.dumps({"key": "user-key"}).encode())
        for tok in (f"{header}.{payload}.", f"{header}.{payload}.c2ln"):
            r = await http(gw.addr, "GET", "/x", headers={"Authorization": tok})
            assert (r.status, r.body) == (401, VERIFY_FAILED)
        # HS256 with the RSA public key as the HMAC secret (classic alg confusion)
        hs_head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        hs_body = b64url(json.dumps({"key": "rsa-key"}).encode())
        import hashlib
        import hmac as _hmac
        sig = b64url(_hmac.new(rsa_pub.encode(), f"{hs_head}.{hs_body}".encode(), hashlib.sha256).digest())
        r = await http(gw.addr, "GET", "/x", headers={"Authorization": f"{hs_head}.{hs_body}.{sig}"})
        assert (r.status, r.body) == (401, VERIFY_FAILED)
        # an HS512 token for an HS256 consumer is refused too
        r = await http(gw.addr, "GET", "/x", headers={
            "Authorization": pyjwt.encode({"key": "user-key"}, SECRET, algorithm="HS512")})
        assert (r.status, r.body) == (401, VERIFY_FAILED)
        # the genuine RS256 token passes
        good = pyjwt.encode({"key": "rsa-key", "exp": int(time.time()) + 60}, rsa_priv, algorithm="RS256")
        r = await http(gw.addr, "GET", "/x", headers={"Authorization": good})
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "rita"
        log = gw.log()
        assert "failed to verify jwt: algorithm mismatch, expected RS256" in log
        assert "failed to verify jwt: algorithm mismatch, expected HS256" in log
        assert "BEGIN PUBLIC KEY" not in log and SECRET not in log
    finally:
        gw.stop()


async def test_more_algorithms_base64_secret_and_claims(tmp_path, up):
    ec_pub, ec_priv = pem_pair("ec")
    ed_pub, ed_priv = pem_pair("ed")
    rsa_pub, rsa_priv = pem_pair("rsa")
    consumers = [
        {"username": "es", "plugins": {"jwt-auth": {"key": "es", "algorithm": "ES256", "public_key": ec_pub}}},
        {"username": "ed", "plugins": {"jwt-auth": {"key": "ed", "algorithm": "EdDSA", "public_key": ed_pub}}},
        {"username": "ps", "plugins": {"jwt-auth": {"key": "ps", "algorithm": "PS256", "public_key": rsa_pub}}},
        {"username": "hs", "plugins": {"jwt-auth": {"key": "hs", "algorithm": "HS384", "secret": "c2VjcmV0LWJ5dGVz",
                                                    "base64_secret": True, "lifetime_grace_period": 30}}},
    ]
    routes = doc(up, {"jwt-auth": {}}, consumers)
    routes["routes"].append({"id": "2", "uri": "/nbf/*", "upstream": upstream(up),
                             "plugins": {"jwt-auth": {"claims_to_verify": ["nbf"]}}})
    gw = start_gateway(tmp_path, routes)
    try:
        exp = int(time.time()) + 60
        for key, priv, alg in (("es", ec_priv, "ES256"), ("ed", ed_priv, "EdDSA"), ("ps", rsa_priv, "PS256"),
                               ("hs", b"secret-bytes", "HS384")):
            tok = pyjwt.encode({"key": key, "exp": exp}, priv, algorithm=alg)
            r = await http(gw.addr, "GET", "/x", headers={"Authorization": "Bearer " + tok})
            assert r.status == 200, alg
            assert up.requests[-1].header("X-Consumer-Username") == key
        # a signature by another EC key does not verify
        _, other = pem_pair("ec")
        tok = pyjwt.encode({"key": "es"}, other, algorithm="ES256")
        r = await http(gw.addr, "GET", "/x", headers={"Authorization": tok})
        assert (r.status, r.body) == (401, VERIFY_FAILED)
        # expired 10 s ago, grace period 30 s: accepted
        tok = pyjwt.encode({"key": "hs", "exp": int(time.time()) - 10}, b"secret-bytes", algorithm="HS384")
        r = await http(gw.addr, "GET", "/x", headers={"Authorization": tok})
        assert r.status == 200
        # claims_to_verify: nbf required and checked
        tok = pyjwt.encode({"key": "hs", "exp": exp}, b"secret-bytes", algorithm="HS384")
        r = await http(gw.addr, "GET", "/nbf/x", headers={"Authorization": tok})
        assert (r.status, r.body) == (401, VERIFY_FAILED)
        tok = pyjwt.encode({"key": "hs", "nbf": 2229671874}, b"secret-bytes", algorithm="HS384")
        r = await http(gw.addr, "GET", "/nbf/x", headers={"Authorization": tok})
        assert (r.status, r.body) == (401, VERIFY_FAILED)
        tok = pyjwt.encode({"key": "hs", "nbf": int(time.time()) - 5}, b"secret-bytes", algorithm="HS384")
        r = await http(gw.addr, "GET", "/nbf/x", headers={"Authorization": tok})
        assert r.status == 200
        log = gw.log()
        assert "claim nbf is missing" in log and "'nbf' claim not valid until Mon, 27 Aug 2040 09:17:54 GMT" in log
    finally:
        gw.stop()


async def test_hide_credentials(tmp_path, up):
    plugins = {"jwt-auth": {"header": "jwt-header", "query": "jwt-query", "cookie": "jwt-cookie",
                            "hide_credentials": True}}
    gw = start_gateway(tmp_path, doc(up, plugins))
    try:
        r = await http(gw.addr, "GET", "/h", headers={"jwt-header": "Bearer " + VALID, "keep": "1"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("jwt-header") is None and got.header("keep") == "1"
        r = await http(gw.addr, "GET", f"/q?foo=bar&jwt-query={VALID}&hello=world")
        assert r.status == 200 and up.requests[-1].path == "/q?foo=bar&hello=world"
        r = await http(gw.addr, "GET", "/c", headers={"Cookie": f"a=1; jwt-cookie={VALID}; b=2"})
        assert r.status == 200 and up.requests[-1].header("Cookie") == "a=1; b=2"
        assert VALID not in up.requests[-1].raw.decode()
    finally:
        gw.stop()


async def test_anonymous_consumer(tmp_path, up):
    consumers = [{"username": "jack", "plugins": {"jwt-auth": {"key": "user-key", "secret": SECRET}}},
                 {"username": "anonymous", "plugins": {"proxy-rewrite": {"headers": {"set": {"X-Anon": "yes"}}}}}]
    routes = doc(up, {"jwt-auth": {"anonymous_consumer": "anonymous"}}, consumers)
    routes["routes"].append({"id": "2", "uri": "/gone/*", "upstream": upstream(up),
                             "plugins": {"jwt-auth": {"anonymous_consumer": "not-found-anonymous"}}})
    gw = start_gateway(tmp_path, routes)
    try:
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 200
        assert up.requests[-1].header("X-Consumer-Username") == "anonymous"
        assert up.requests[-1].header("X-Anon") == "yes"
        r = await http(gw.addr, "GET", "/x", headers={"Authorization": VALID})
        assert r.status == 200 and up.requests[-1].header("X-Consumer-Username") == "jack"
        r = await http(gw.addr, "GET", "/gone/x")
        assert (r.status, r.body) == (401, b'{"message":"Invalid user authorization"}\n')
        assert r.header("WWW-Authenticate") == 'Bearer realm="jwt"'
        assert "failed to get anonymous consumer not-found-anonymous" in gw.log()
    finally:
        gw.stop()
