"""hmac-auth: identify the consumer by an HTTP-signature style HMAC (APISIX 3.x scheme).

``Authorization: Signature keyId="...",algorithm="hmac-sha256",headers="@request-target date",
signature="<base64>"``. The signing string is the keyId, then per listed header either
``<name>: <value>`` or, for ``@request-target``, ``<METHOD> <request uri>``, each line ended
by ``\\n``. Checks, in APISIX's order: keyId/signature/algorithm present, consumer known,
algorithm allowed, ``Date`` within ``clock_skew``, every ``signed_headers`` entry signed,
signature (constant-time), then with ``validate_request_body`` the ``Digest`` header
(``SHA-256=<base64 of sha256(body)>``).

Answers: header problems are ``401 {"message":"client request can't be validated: <why>"}``;
validation failures are ``401 {"message":"client request can't be validated"}`` (the reason
is logged); both with ``WWW-Authenticate: hmac realm="<realm>"``.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import logging
import re
import time
from typing import Any, Callable

from ._auth import ANONYMOUS_CONSUMER_SCHEMA, UNDER_MULTI_AUTH, anonymous_fallback, found, realm_schema

NAME = "hmac-auth"
PRIORITY = 2530
VERSION = "0.1"
TYPE = "auth"

logger = logging.getLogger("meshgate.plugins.hmac-auth")

ALLOWED_ALGORITHMS = ["hmac-sha1", "hmac-sha256", "hmac-sha512"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "work with route or service object",
    "properties": {
        "allowed_algorithms": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "enum": ALLOWED_ALGORITHMS},
            "default": ALLOWED_ALGORITHMS,
        },
        "clock_skew": {"type": "integer", "default": 300, "minimum": 1},
        "signed_headers": {
            "type": "array",
            "default": ["date"],
            "items": {"type": "string", "minLength": 1, "maxLength": 50},
        },
        "validate_request_body": {"type": "boolean", "default": False,
                                  "description": "A boolean value telling the plugin to enable body validation"},
        "max_req_body_size": {"type": "integer", "minimum": 1, "default": 67108864},
        "hide_credentials": {"type": "boolean", "default": False},
        "realm": realm_schema("hmac"),
        "anonymous_consumer": ANONYMOUS_CONSUMER_SCHEMA,
    },
}

CONSUMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "work with consumer object",
    "properties": {
        "key_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "secret_key": {"type": "string", "minLength": 1, "maxLength": 256},
    },
    "encrypt_fields": ["secret_key"],   # stored encrypted in etcd (APISIX data_encryption)
    "required": ["key_id", "secret_key"],
}

_DIGESTS: dict[str, Callable[..., Any]] = {
    "hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512,
}
_FIELD = re.compile(r'\s*([A-Za-z0-9]+)="(.*?)"', re.S)
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    out = dict(conf)
    out["_allowed"] = frozenset(out.get("allowed_algorithms") or ALLOWED_ALGORITHMS)
    out.setdefault("clock_skew", 300)
    out["_signed_headers"] = tuple(out.get("signed_headers", ["date"]))
    out.setdefault("validate_request_body", False)
    out.setdefault("max_req_body_size", 67108864)
    out.setdefault("hide_credentials", False)
    out.setdefault("realm", "hmac")
    out["_www_authenticate"] = f'hmac realm="{out["realm"]}"'
    return out


def parse_authorization(value: str | None) -> dict[str, Any] | str:
    if value is None:
        return "missing Authorization header"
    if not value.startswith("Signature"):
        return "Authorization header does not start with 'Signature'"
    params: dict[str, Any] = {}
    for field in value[9:].split(","):
        if not field:
            continue
        m = _FIELD.search(field)
        if m is None:
            continue
        key, val = m.group(1), m.group(2)
        if key in ("keyId", "algorithm", "signature"):
            params[key] = val
        elif key == "headers":
            params["headers"] = val.split(" ")
    return params


def _b64decode(value: str) -> bytes | None:
    if not _B64.match(value):
        return None
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _http_time(value: str) -> int | None:
    from email.utils import parsedate_tz   # (only when a request carries a Date to check)
    t = parsedate_tz(value)
    if t is None:
        return None
    try:
        return calendar.timegm(t[:9]) - (t[9] or 0)
    except (OverflowError, ValueError):
        return None


def signing_string(ctx: Any, params: dict[str, Any]) -> bytes:
    items = [params["keyId"]]
    for h in params.get("headers") or ():
        value = ctx.req_header(h) if h else None
        if value is None:
            if h == "@request-target":
                uri = ctx.var("request_uri") or "/"
                items.append(f"{ctx.method} {uri}")
        else:
            items.append(f"{h}: {value}")
    return ("\n".join(items) + "\n").encode("utf-8", "surrogateescape")


async def _validate(conf: dict[str, Any], ctx: Any, params: dict[str, Any]) -> tuple[Any, Any] | str:
    if not params.get("keyId") or not params.get("signature"):
        return "keyId or signature missing"
    if not params.get("algorithm"):
        return "algorithm missing"
    hit = found(ctx.find_consumer(NAME, "key_id", params["keyId"]))
    if hit is None:
        return "Invalid key_id"
    if params["algorithm"] not in conf["_allowed"]:
        return "Invalid algorithm"
    date = ctx.req_header("Date")
    if date is None:
        return "Date header missing. failed to validate clock skew"
    ts = _http_time(date)
    if ts is None:
        return "Invalid GMT format time"
    if abs(int(time.time()) - ts) > conf["clock_skew"]:
        return "Clock skew exceeded"
    signed = set(params.get("headers") or ())
    for h in conf["_signed_headers"]:
        if h not in signed:
            return f'expected header "{h}" missing in signing'

    secret = hit[1].get("secret_key") if isinstance(hit[1], dict) else None
    given = _b64decode(params["signature"])
    if not isinstance(secret, str) or given is None:
        return "Invalid signature"
    expected = hmac.new(secret.encode(), signing_string(ctx, params), _DIGESTS[params["algorithm"]]).digest()
    if not hmac.compare_digest(expected, given):
        return "Invalid signature"

    if conf["validate_request_body"]:
        digest = ctx.req_header("Digest")
        if digest is None:
            return "Invalid digest"
        body = await ctx.read_body(max_size=conf["max_req_body_size"])
        made = "SHA-256=" + base64.b64encode(hashlib.sha256(body or b"").digest()).decode()
        if not hmac.compare_digest(made.encode(), digest.encode("utf-8", "surrogateescape")):
            return "Invalid digest"
    return hit


async def rewrite(conf: dict[str, Any], ctx: Any) -> Any:
    multi = conf.get(UNDER_MULTI_AUTH, False)
    params = parse_authorization(ctx.req_header("Authorization"))
    if isinstance(params, str):
        err = "client request can't be validated: " + params
        if not multi:
            logger.warning("%s", err)
        res: tuple[Any, Any] | str = err
    else:
        res = await _validate(conf, ctx, params)
        if isinstance(res, str):
            detail = "client request can't be validated: " + res
            if multi:
                res = detail
            else:
                logger.warning("%s", detail)
                res = "client request can't be validated"

    if isinstance(res, str):
        res = anonymous_fallback(ctx, conf, res, multi, lambda d: logger.error("%s", d))
        if len(res) == 3:
            return res

    if conf["hide_credentials"]:
        ctx.set_req_header("Authorization", None)
    ctx.attach_consumer(*res)
    return None
