"""request-id: give every request an id, upstream and (optionally) in the response.

As APISIX ``apisix/plugins/request-id.lua``: a non-empty id the client sent in ``header_name``
is kept; otherwise one is generated (``uuid`` v4, ``nanoid`` of 21 characters, ``range_id``
of ``length`` characters of ``char_set``, ``ksuid``, ``uuidv7``) and set on the request.
With ``include_in_response`` the response gets the header unless the upstream already sent
one.  The id is also ``$apisix_request_id``.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "prepare", "rewrite", "header_filter",
           "gen_uuid", "gen_nanoid", "gen_range_id", "gen_ksuid", "gen_uuidv7"]

NAME = "request-id"
PRIORITY = 12015
VERSION = "0.1"

_CHAR_SET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIGKLMNOPQRSTUVWXYZ0123456789"   # sic, as APISIX

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "header_name": {"type": "string", "default": "X-Request-Id"},
        "include_in_response": {"type": "boolean", "default": True},
        "algorithm": {"type": "string", "enum": ["uuid", "nanoid", "range_id", "ksuid", "uuidv7"],
                      "default": "uuid"},
        "range_id": {
            "type": "object",
            "properties": {
                "length": {"type": "integer", "minimum": 6, "default": 16},
                "char_set": {"type": "string", "minLength": 6, "default": _CHAR_SET},
            },
            "default": {"length": 16, "char_set": _CHAR_SET},
        },
    },
}

_NANOID_ALPHABET = "-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NANOID_SIZE = 21


def gen_uuid() -> str:
    return str(uuid.uuid4())


def gen_nanoid() -> str:
    return "".join(_NANOID_ALPHABET[b & 63] for b in os.urandom(_NANOID_SIZE))


def gen_range_id(length: int, char_set: str) -> str:
    return "".join(secrets.choice(char_set) for _ in range(length))


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KSUID_EPOCH = 1400000000


def gen_ksuid() -> str:
    """KSUID: 4-byte big-endian seconds since 2014-05-13 + 16 random bytes, base62, 27 chars."""
    raw = int(time.time() - _KSUID_EPOCH).to_bytes(4, "big") + os.urandom(16)
    n = int.from_bytes(raw, "big")
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(reversed(out)).rjust(27, "0")


def gen_uuidv7() -> str:
    """RFC 9562 UUIDv7: 48-bit unix milliseconds, version 7, variant 10, random rest."""
    ms = time.time_ns() // 1_000_000
    rnd = int.from_bytes(os.urandom(10), "big")
    n = (ms & ((1 << 48) - 1)) << 80
    n |= 0x7 << 76
    n |= ((rnd >> 62) & 0xFFF) << 64
    n |= 0b10 << 62
    n |= rnd & ((1 << 62) - 1)
    return str(uuid.UUID(int=n))


@dataclass(frozen=True, slots=True)
class Conf:
    header_name: str
    include_in_response: bool
    generate: Callable[[], str]
    state_var: str


def prepare(conf: dict[str, Any]) -> Conf:
    algo = conf.get("algorithm", "uuid")
    gen: Callable[[], str]
    if algo == "nanoid":
        gen = gen_nanoid
    elif algo == "range_id":
        r = conf.get("range_id") or {}
        length, cs = int(r.get("length", 16)), str(r.get("char_set", _CHAR_SET))
        gen = lambda: gen_range_id(length, cs)   # noqa: E731
    elif algo == "ksuid":
        gen = gen_ksuid
    elif algo == "uuidv7":
        gen = gen_uuidv7
    else:
        gen = gen_uuid
    name = conf.get("header_name", "X-Request-Id")
    return Conf(header_name=name, include_in_response=bool(conf.get("include_in_response", True)), generate=gen,
                state_var="_request_id_" + name.lower())


def rewrite(conf: Conf, ctx: Any) -> None:
    rid = ctx.req_header(conf.header_name)
    if not rid:
        rid = conf.generate()
        ctx.set_req_header(conf.header_name, rid)
    if conf.include_in_response:
        ctx.set_var(conf.state_var, rid)
    ctx.set_var("apisix_request_id", rid)


def header_filter(conf: Conf, ctx: Any) -> None:
    if not conf.include_in_response:
        return
    if ctx.resp_header(conf.header_name):
        return
    rid = ctx.var(conf.state_var)
    if rid:
        ctx.set_resp_header(conf.header_name, rid)
