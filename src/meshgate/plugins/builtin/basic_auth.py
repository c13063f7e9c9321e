"""basic-auth: identify the consumer by HTTP Basic credentials (RFC 7617).

APISIX semantics: no ``Authorization`` header is ``401 {"message":"Missing authorization
in request"}``; a header that is not a decodable ``Basic user:password`` is ``401
{"message":"Invalid authorization in request"}``; an unknown user or a wrong password is
``401 {"message":"Invalid user authorization"}``; all with ``WWW-Authenticate: Basic
realm="<realm>"``. The scheme is case-insensitive; whitespace inside the decoded user
name and password is dropped. Passwords are compared in constant time.
``hide_credentials`` removes ``Authorization`` once a consumer (or the anonymous one)
is attached.

One deliberate difference: the decoded credentials are split at the FIRST colon, as RFC
7617 says (APISIX splits at every colon and keeps the second field, so a password that
contains a colon can never match there).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from typing import Any

from ._auth import ANONYMOUS_CONSUMER_SCHEMA, UNDER_MULTI_AUTH, anonymous_fallback, found, realm_schema

NAME = "basic-auth"
PRIORITY = 2520
VERSION = "0.1"
TYPE = "auth"

logger = logging.getLogger("meshgate.plugins.basic-auth")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "work with route or service object",
    "properties": {
        "hide_credentials": {"type": "boolean", "default": False},
        "realm": realm_schema("basic"),
        "anonymous_consumer": ANONYMOUS_CONSUMER_SCHEMA,
    },
}

CONSUMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "work with consumer object",
    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
    "encrypt_fields": ["password"],   # stored encrypted in etcd (APISIX data_encryption)
    "required": ["username", "password"],
}

_SCHEME = re.compile(r"(?i:basic)\s(.+)", re.S)
_WS = re.compile(r"\s+")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    out = dict(conf)
    out.setdefault("hide_credentials", False)
    out.setdefault("realm", "basic")
    out["_www_authenticate"] = f'Basic realm="{out["realm"]}"'
    return out


def parse_authorization(value: str) -> tuple[str, str] | str:
    """``(username, password)`` from a Basic Authorization value, or an error text."""
    m = _SCHEME.search(value)
    if m is None:
        return "Invalid authorization header format"
    token = m.group(1)
    raw = None
    if _B64.match(token):
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None:
        return "Failed to decode authentication header: " + token
    decoded = raw.decode("utf-8", "surrogateescape")
    user, sep, password = decoded.partition(":")
    if not sep:
        return "Split authorization err: invalid decoded data: " + decoded
    return _WS.sub("", user), _WS.sub("", password)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def rewrite(conf: dict[str, Any], ctx: Any) -> Any:
    multi = conf.get(UNDER_MULTI_AUTH, False)
    hit = None
    header = ctx.req_header("Authorization")
    if header is None:
        err = "Missing authorization in request"
    else:
        parsed = parse_authorization(header)
        if isinstance(parsed, str):
            if multi:
                err = parsed
            else:
                logger.warning("%s", parsed)
                err = "Invalid authorization in request"
        else:
            username, password = parsed
            hit = found(ctx.find_consumer(NAME, "username", username))
            if hit is None:
                if multi:
                    err = "failed to find user: invalid user"
                else:
                    logger.warning("failed to find user: invalid user")
                    err = "Invalid user authorization"
            else:
                expected = hit[1].get("password") if isinstance(hit[1], dict) else None
                if not isinstance(expected, str) or not _same(expected, password):
                    hit = None
                    err = "Invalid user authorization"

    if hit is None:
        res = anonymous_fallback(ctx, conf, err, multi, lambda d: logger.error(
            "basic-auth failed to authenticate the request, code: 401. error: %s", d))
        if len(res) == 3:
            return res
        hit = (res[0], res[1])

    if conf["hide_credentials"]:
        ctx.set_req_header("Authorization", None)
    ctx.attach_consumer(*hit)
    return None
