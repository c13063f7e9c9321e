"""jwt-auth: identify the consumer by a signed JWT (header, query argument or cookie).

APISIX semantics (``apisix/plugins/jwt-auth.lua``): the token is looked up in the
``header`` (an optional ``Bearer ``/``bearer `` prefix is dropped), then the ``query``
argument, then the ``cookie``. The consumer is the one whose jwt-auth ``key`` equals the
payload's ``key_claim_name`` claim. The algorithm is the CONSUMER's (default HS256): a
token whose header names another algorithm is refused before any key is used, so
``none`` and alg-confusion tokens never verify. Registered claims ``exp``/``nbf`` are
checked when present, or required when listed in ``claims_to_verify``, with the
consumer's ``lifetime_grace_period`` as leeway.

Answers (all ``401`` with ``WWW-Authenticate: Bearer realm="<realm>"``):
``Missing JWT token in request``, ``JWT token invalid``, ``missing user key in JWT token``,
``Invalid user key in JWT token``, ``failed to verify jwt``. The details (which claim,
which signature) go to the log only, and no text ever carries the secret or key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from ...http.dates import imf_fixdate
from typing import Any, Callable

from ._auth import ANONYMOUS_CONSUMER_SCHEMA, UNDER_MULTI_AUTH, anonymous_fallback, found, realm_schema

NAME = "jwt-auth"
PRIORITY = 2510
VERSION = "0.1"
TYPE = "auth"

logger = logging.getLogger("meshgate.plugins.jwt-auth")

HS_ALGS = ("HS256", "HS384", "HS512")
ASYM_ALGS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "header": {"type": "string", "default": "authorization"},
        "query": {"type": "string", "default": "jwt"},
        "cookie": {"type": "string", "default": "jwt"},
        "hide_credentials": {"type": "boolean", "default": False},
        "key_claim_name": {"type": "string", "default": "key", "minLength": 1},
        "store_in_ctx": {"type": "boolean", "default": False},
        "realm": realm_schema("jwt"),
        "anonymous_consumer": ANONYMOUS_CONSUMER_SCHEMA,
        "claims_to_verify": {
            "type": "array",
            "items": {"type": "string", "enum": ["exp", "nbf"]},
            "uniqueItems": True,
        },
    },
}

CONSUMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "minLength": 1},
        "secret": {"type": "string", "minLength": 1},
        "algorithm": {"type": "string", "enum": [*HS_ALGS, *ASYM_ALGS], "default": "HS256"},
        "exp": {"type": "integer", "minimum": 1, "default": 86400},
        "base64_secret": {"type": "boolean", "default": False},
        "lifetime_grace_period": {"type": "integer", "minimum": 0, "default": 0},
    },
    "dependencies": {
        "algorithm": {
            "oneOf": [
                {"properties": {"algorithm": {"enum": list(HS_ALGS), "default": "HS256"}}},
                {
                    "properties": {
                        "public_key": {"type": "string", "minLength": 1},
                        "algorithm": {"enum": list(ASYM_ALGS)},
                    },
                    "required": ["public_key"],
                },
            ]
        }
    },
    # stored encrypted in etcd (APISIX data_encryption); APISIX lists only the secret
    "encrypt_fields": ["secret"],
    "required": ["key"],
}

_STD_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _b64std(value: str) -> bytes | None:
    if not _STD_B64.match(value):
        return None
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64url(value: str) -> bytes | None:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    if schema_type != "consumer":
        return None
    alg = conf.get("algorithm", "HS256")
    is_hs = alg.startswith("HS")
    if is_hs and "secret" not in conf:
        return 'property "secret" is required when using HS based algorithms'
    if conf.get("base64_secret") and isinstance(conf.get("secret"), str) and not conf["secret"].startswith("$"):
        if _b64std(conf["secret"]) is None:
            return "base64_secret required but the secret is not in base64 format"
    if not is_hs and not conf.get("public_key"):
        return "missing valid public key"
    return None


def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    out = dict(conf)
    for k, v in (("header", "authorization"), ("query", "jwt"), ("cookie", "jwt"), ("hide_credentials", False),
                 ("key_claim_name", "key"), ("store_in_ctx", False), ("realm", "jwt")):
        out.setdefault(k, v)
    out["_www_authenticate"] = f'Bearer realm="{out["realm"]}"'
    out["_claims"] = tuple(out.get("claims_to_verify") or ())
    return out


# ---------------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------------

_COOKIE_PAIR = re.compile(r"([a-zA-Z0-9\-_]*)=([a-zA-Z0-9\-._]*)")


def _remove_cookie(src: str, name: str) -> str:
    return "; ".join(m.group(0) for m in _COOKIE_PAIR.finditer(src) if m.group(1) != name)


def _fetch_token(conf: dict[str, Any], ctx: Any) -> str | None:
    token = ctx.req_header(conf["header"])
    if token is not None:
        if conf["hide_credentials"]:
            ctx.set_req_header(conf["header"], None)
        if token[:7] in ("Bearer ", "bearer "):
            return str(token[7:])
        return str(token)
    args = ctx.args() or {}
    token = args.get(conf["query"])
    if token is not None:
        if conf["hide_credentials"]:
            rest = dict(args)
            del rest[conf["query"]]
            ctx.set_args(rest)
        return str(token)
    val = ctx.var("cookie_" + conf["cookie"])
    if val is None:
        return None
    if conf["hide_credentials"]:
        rest_cookies = _remove_cookie(ctx.req_header("Cookie") or "", conf["cookie"])
        ctx.set_req_header("Cookie", rest_cookies or None)
    return str(val)


class _Token:
    __slots__ = ("header", "payload", "signing_input", "signature")

    def __init__(self, header: dict[str, Any], payload: dict[str, Any], signing_input: bytes, signature: str) -> None:
        self.header = header
        self.payload = payload
        self.signing_input = signing_input
        self.signature = signature


def _json_part(part: str) -> dict[str, Any] | None:
    raw = _b64url(part)
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_token(token: str) -> _Token | str:
    parts = token.split(".")
    if len(parts) != 3:
        return "invalid jwt string"
    header = _json_part(parts[0])
    if header is None:
        return "invalid header: " + parts[0]
    payload = _json_part(parts[1])
    if payload is None:
        return "invalid payload: " + parts[1]
    return _Token(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), parts[2])


_HMAC: dict[str, Callable[..., Any]] = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}

# prepared public keys, by (algorithm, PEM): parsing a key per request would be costly
_KEYS: dict[tuple[str, str], Any] = {}
_KEYS_MAX = 1024
_ALGS: dict[str, Any] = {}


def _algorithm(alg: str) -> Any:
    if not _ALGS:
        from jwt.algorithms import get_default_algorithms  # PyJWT + cryptography: asymmetric algorithms

        _ALGS.update(get_default_algorithms())
    return _ALGS[alg]


def _public_key(alg: str, pem: str) -> Any:
    k = (alg, pem)
    key = _KEYS.get(k)
    if key is None:
        key = _algorithm(alg).prepare_key(pem)
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        _KEYS[k] = key
    return key


def verify_signature(tok: _Token, alg: str, key: bytes | str) -> bool:
    sig = _b64url(tok.signature)
    if sig is None:
        return False
    if alg in _HMAC:
        assert isinstance(key, bytes)
        expected = hmac.new(key, tok.signing_input, _HMAC[alg]).digest()
        return hmac.compare_digest(expected, sig)
    try:
        return bool(_algorithm(alg).verify(tok.signing_input, _public_key(alg, str(key)), sig))
    except Exception as e:  # an unusable key or a malformed signature: a clean rejection
        logger.warning("jwt-auth: %s verification error: %s", alg, type(e).__name__)
        return False


def _http_time(ts: float) -> str:
    return imf_fixdate(int(ts))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def verify_claims(payload: dict[str, Any], claims: tuple[str, ...], leeway: int) -> str | None:
    now = int(time.time())
    required = bool(claims)
    for name in claims or ("nbf", "exp"):
        value = payload.get(name)
        if value is None:
            if required:
                return f"claim {name} is missing"
            continue
        if not _is_number(value):
            return f"claim {name} is not a number"
        if name == "nbf" and not value < now + leeway:
            return f"'nbf' claim not valid until {_http_time(value)}"
        if name == "exp" and not value > now - leeway:
            return f"'exp' claim expired at {_http_time(value)}"
    return None


# ---------------------------------------------------------------------------------------------
# hook
# ---------------------------------------------------------------------------------------------

def _auth_key(cconf: dict[str, Any], alg: str) -> bytes | str | None:
    if alg.startswith("HS"):
        secret = cconf.get("secret")
        if not isinstance(secret, str):
            return None
        if cconf.get("base64_secret"):
            return _b64std(secret)
        return secret.encode()
    pk = cconf.get("public_key")
    return pk if isinstance(pk, str) and pk else None


def _find(conf: dict[str, Any], ctx: Any, multi: bool) -> tuple[Any, Any] | str:
    token = _fetch_token(conf, ctx)
    if token is None:
        return "Missing JWT token in request"
    tok = parse_token(token)
    if isinstance(tok, str):
        detail = "JWT token invalid: " + tok
        if multi:
            return detail
        logger.warning("%s", detail)
        return "JWT token invalid"
    logger.debug("parsed jwt alg: %s, key claim name: %s", tok.header.get("alg"), conf["key_claim_name"])

    user_key = tok.payload.get(conf["key_claim_name"])
    if user_key is None or user_key is False:
        return "missing user key in JWT token"
    hit = found(ctx.find_consumer(NAME, "key", user_key)) if isinstance(user_key, str) else None
    if hit is None:
        logger.warning("failed to find consumer: invalid user key")
        return "Invalid user key in JWT token"
    cconf = hit[1] if isinstance(hit[1], dict) else {}

    expected_alg = cconf.get("algorithm") or "HS256"
    key = _auth_key(cconf, expected_alg)
    if key is None:
        detail = "failed to retrieve secrets"
        if multi:
            return detail
        logger.error("%s", detail)
        return "failed to verify jwt"
    # the consumer decides the algorithm: a token naming another one (none, HS* against an
    # RSA key, ...) is refused before its signature is looked at
    if tok.header.get("alg") != expected_alg:
        detail = "failed to verify jwt: algorithm mismatch, expected " + expected_alg
        if multi:
            return detail
        logger.warning("%s", detail)
        return "failed to verify jwt"
    if not verify_signature(tok, expected_alg, key):
        detail = "failed to verify jwt: signature mismatch: " + tok.signature
        if multi:
            return detail
        logger.warning("%s", detail)
        return "failed to verify jwt"
    leeway = cconf.get("lifetime_grace_period") or 0
    err = verify_claims(tok.payload, conf["_claims"], int(leeway))
    if err is not None:
        detail = "failed to verify jwt: " + err
        if multi:
            return detail
        logger.error("%s", detail)
        return "failed to verify jwt"
    if conf["store_in_ctx"]:
        ctx.set_var("jwt_auth_payload", tok.payload)
    return hit


def rewrite(conf: dict[str, Any], ctx: Any) -> Any:
    multi = conf.get(UNDER_MULTI_AUTH, False)
    res = _find(conf, ctx, multi)
    if isinstance(res, str):
        res = anonymous_fallback(ctx, conf, res, multi, lambda d: logger.error(
            "jwt-auth failed to authenticate the request, code: 401. error: %s", d))
        if len(res) == 3:
            return res
    ctx.attach_consumer(*res)
    return None
