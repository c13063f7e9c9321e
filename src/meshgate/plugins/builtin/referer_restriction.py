"""referer-restriction: allow or refuse a request by the host of its Referer (APISIX plugin).

APISIX semantics (``apisix/plugins/referer-restriction.lua``, ``t/plugin/referer-restriction.t``):
exactly one of ``whitelist`` / ``blacklist``; an entry is a host (``yy.com``) or a wildcard
``*.xx.com`` (any host ending in ``.xx.com``; ``*`` alone matches every host).  The host is
taken from the Referer as lua-resty-http's ``parse_uri`` does (``[scheme:]//host[:port]...``);
a Referer that does not parse (``www.yy.com``) counts as missing.  A missing Referer is refused
unless ``bypass_missing``.  Refused: ``403 {"message": <message>}`` (default
``"Your referer host is not allowed"``).

Hardening over APISIX: host names are compared case-insensitively (RFC 3986 section 3.2.2),
so ``http://EVIL.com`` cannot slip past a blacklist entry ``evil.com``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "prepare", "referer_host", "access"]

NAME = "referer-restriction"
PRIORITY = 2990
VERSION = "0.1"

# apisix/schema_def.lua host_def
HOST_DEF: dict[str, Any] = {"type": "string", "pattern": "^\\*$|^\\*?[0-9a-zA-Z-._\\[\\]:]+$"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "bypass_missing": {"type": "boolean", "default": False},
        "whitelist": {"type": "array", "items": HOST_DEF, "minItems": 1},
        "blacklist": {"type": "array", "items": HOST_DEF, "minItems": 1},
        "message": {"type": "string", "minLength": 1, "maxLength": 1024,
                    "default": "Your referer host is not allowed"},
    },
    "oneOf": [{"required": ["whitelist"]}, {"required": ["blacklist"]}],
}

# lua-resty-http parse_uri: optional http/https scheme, "//", then a host (no brackets, colon,
# slash or '?') or a bracketed IPv6 literal.  The scheme is matched in any case (RFC 3986
# section 3.1), so "HTTP://EVIL.COM" is a blacklisted host rather than a "missing" Referer.
_URI = re.compile(r"(?:((?i:https?)):)?//([^\[\]:/?]+|\[.+\])(?::(\d+))?")


def referer_host(referer: str) -> str | None:
    """The host part of a Referer, or None when it does not parse (treated as missing)."""
    m = _URI.match(referer)
    if m is None:
        return None
    host = m.group(2)
    if host.startswith("["):
        host = host[1:-1]
    return host.lower()


@dataclass(frozen=True, slots=True)
class Prepared:
    exact: frozenset[str]
    suffixes: tuple[str, ...]
    whitelist: bool
    bypass_missing: bool
    body: dict[str, str]


def prepare(conf: dict[str, Any]) -> Prepared:
    white = "whitelist" in conf
    hosts = conf["whitelist"] if white else conf["blacklist"]
    exact = frozenset(h.lower() for h in hosts if not h.startswith("*"))
    suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*"))
    return Prepared(exact=exact, suffixes=suffixes, whitelist=white,
                    bypass_missing=bool(conf.get("bypass_missing", False)),
                    body={"message": conf.get("message", "Your referer host is not allowed")})


def _match(conf: Prepared, host: str) -> bool:
    return host in conf.exact or any(host.endswith(s) for s in conf.suffixes)


def access(conf: Prepared, ctx: Any) -> tuple[int, dict[str, str]] | None:
    referer = ctx.var("http_referer")
    host = referer_host(referer) if referer else None
    if host is None:
        block = not conf.bypass_missing
    elif conf.whitelist:
        block = not _match(conf, host)
    else:
        block = _match(conf, host)
    if block:
        return 403, conf.body
    return None
