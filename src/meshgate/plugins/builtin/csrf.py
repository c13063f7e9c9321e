"""csrf: double-submit-cookie protection against cross-site request forgery (APISIX ``csrf``).

APISIX semantics (``apisix/plugins/csrf.lua``, ``t/plugin/csrf.t``):

* every response carries a fresh token in ``Set-Cookie: <name>=<token>;path=/;SameSite=Lax;
  Expires=<now + expires>`` (``header_filter``, so local answers get one too);
* ``GET``, ``HEAD`` and ``OPTIONS`` pass; any other method must send the token in the header
  ``<name>`` *and* the cookie ``<name>``, equal, correctly signed and not expired, else ``401``
  with ``{"error_msg":"no csrf token in headers"}``, ``"no csrf cookie"``,
  ``"csrf token mismatch"`` or ``"Failed to verify the csrf token signature"``.
* The token is base64 of ``{"random":R,"expires":T,"sign":S}`` where ``T`` is the issue time
  (the name is APISIX's) and it expires when ``now - T > expires`` (``expires: 0`` = never).

The signature: APISIX hashes ``sha256("{expires:T,random:R,key:K}")``.  Meshgate signs with
HMAC-SHA256 keyed by ``key`` over ``"{expires:T,random:R}"`` (the standard keyed construction),
and compares in constant time; tokens issued by an APISIX node therefore do not verify here
(the client receives a fresh cookie with the next response).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass
from ...http.dates import imf_fixdate
from typing import Any

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "prepare", "make_token", "verify_token", "access",
           "header_filter"]

NAME = "csrf"
PRIORITY = 2980
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "key": {"description": "use to generate csrf token", "type": "string"},
        "expires": {"description": "expires time(s) for csrf token", "type": "integer", "default": 7200},
        "name": {"description": "the csrf token name", "type": "string", "default": "apisix-csrf-token"},
    },
    "encrypt_fields": ["key"],
    "required": ["key"],
}

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))

E_NO_HEADER = {"error_msg": "no csrf token in headers"}
E_NO_COOKIE = {"error_msg": "no csrf cookie"}
E_MISMATCH = {"error_msg": "csrf token mismatch"}
E_SIGNATURE = {"error_msg": "Failed to verify the csrf token signature"}


@dataclass(frozen=True, slots=True)
class Prepared:
    key: bytes
    expires: int
    name: str
    header: str          # the header name, lower-case (ctx.req_header's convention)
    cookie_var: str


def prepare(conf: dict[str, Any]) -> Prepared:
    name = conf.get("name", "apisix-csrf-token")
    return Prepared(key=conf["key"].encode(), expires=int(conf.get("expires", 7200)), name=name,
                    header=name.lower(), cookie_var="cookie_" + name)


def _sign(key: bytes, random: Any, expires: Any) -> str:
    msg = "{expires:%s,random:%s}" % (json.dumps(expires), json.dumps(random))
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def make_token(conf: Prepared, now: int | None = None) -> str:
    issued = int(time.time()) if now is None else now
    random = secrets.randbits(52) / (1 << 52)     # a number in [0, 1), as APISIX's math.random()
    token = {"random": random, "expires": issued, "sign": _sign(conf.key, random, issued)}
    return base64.b64encode(json.dumps(token, separators=(",", ":")).encode()).decode()


def verify_token(conf: Prepared, token: str, now: float | None = None) -> bool:
    try:
        raw = base64.b64decode(token, validate=True)
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    random, issued, sign = data.get("random"), data.get("expires"), data.get("sign")
    if random is None or not isinstance(sign, str):
        return False
    if isinstance(issued, bool) or not isinstance(issued, (int, float)) or not math.isfinite(issued):
        return False
    t = time.time() if now is None else now
    if conf.expires > 0 and int(t) - issued > conf.expires:
        return False
    return hmac.compare_digest(_sign(conf.key, random, issued).encode(), sign.encode("utf-8", "replace"))


def access(conf: Prepared, ctx: Any) -> tuple[int, dict[str, str]] | None:
    if ctx.var("request_method") in SAFE_METHODS:
        return None
    header_token = ctx.req_header(conf.header)
    if not header_token:
        return 401, E_NO_HEADER
    cookie_token = ctx.var(conf.cookie_var)
    if cookie_token is None:
        return 401, E_NO_COOKIE
    if not hmac.compare_digest(header_token.encode("utf-8", "replace"), cookie_token.encode("utf-8", "replace")):
        return 401, E_MISMATCH
    if not verify_token(conf, cookie_token):
        return 401, E_SIGNATURE
    return None


def header_filter(conf: Prepared, ctx: Any) -> None:
    now = int(time.time())
    cookie = (f"{conf.name}={make_token(conf, now)};path=/;SameSite=Lax;"
              f"Expires={imf_fixdate(now + conf.expires)}")
    ctx.add_resp_header("Set-Cookie", cookie)
