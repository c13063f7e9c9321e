"""ip-restriction: allow or refuse a request by the client address (APISIX ``ip-restriction``).

APISIX semantics (``apisix/plugins/ip-restriction/init.lua``, ``t/plugin/ip-restriction.t``):
exactly one of ``whitelist`` / ``blacklist`` (IPv4, IPv6, or CIDR of either); a refused
client gets ``response_code`` (403 or 404, default 403) with ``{"message": <message>}``
(default ``"Your IP address is not allowed"``).  The address checked is ``remote_addr``
*after* real-ip (priority 23000) has run, i.e. ``ctx.var("remote_addr")``.

A CIDR with host bits set (``10.0.0.7/24``) is accepted as its network, as lua-resty-ipmatcher
does.  An IPv4-mapped IPv6 client (``::ffff:10.0.0.7``, what a dual-stack socket reports) is
checked against the IPv4 entries too, so a blacklist cannot be side-stepped by the socket
family.  An address that does not parse is refused by a whitelist and passes a blacklist
(ipmatcher's ``match`` fails, which APISIX reads as "not in the list").

The matcher is built once per config version in :func:`prepare` (APISIX caches it in an LRU
keyed by the list).  :class:`IpMatcher` and :func:`check_ip_list` are shared with real-ip.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "IpMatcher", "check_ip_list", "parse_ip", "prepare",
           "check_schema", "access"]

NAME = "ip-restriction"
PRIORITY = 3000
VERSION = "0.1"

# apisix/schema_def.lua ip_def: IPv4, IPv4/CIDR, IPv6, IPv6/CIDR.  The formats are not checked
# by the registry's validator; check_schema parses every entry (as APISIX does with
# core.ip.validate_cidr_or_ip, since the regexes let some bad IPv6 through).
_IPV4_SEG = "([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
_IPV4 = "\\.".join([_IPV4_SEG] * 4)
_IPV6 = "([a-fA-F0-9]{0,4}:){1,8}(:[a-fA-F0-9]{0,4}){0,8}([a-fA-F0-9]{0,4})?"
IP_DEF: list[dict[str, Any]] = [
    {"title": "IPv4", "type": "string", "format": "ipv4"},
    {"title": "IPv4/CIDR", "type": "string", "pattern": "^" + _IPV4 + "/([12]?[0-9]|3[0-2])$"},
    {"title": "IPv6", "type": "string", "format": "ipv6"},
    {"title": "IPv6/CIDR", "type": "string", "pattern": "^" + _IPV6 + "/[0-9]{1,3}$"},
]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "minLength": 1, "maxLength": 1024,
                    "default": "Your IP address is not allowed"},
        "response_code": {"type": "integer", "minimum": 403, "maximum": 404, "default": 403},
        "whitelist": {"type": "array", "items": {"anyOf": IP_DEF}, "minItems": 1},
        "blacklist": {"type": "array", "items": {"anyOf": IP_DEF}, "minItems": 1},
    },
    "oneOf": [{"required": ["whitelist"]}, {"required": ["blacklist"]}],
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_cidr(text: str) -> Network | None:
    """An IP or CIDR as a network (host bits allowed), or None when it is not one."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> Address | None:
    """A client address (no port, no brackets; an IPv6 zone is dropped), or None."""
    if "%" in text:
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def check_ip_list(items: Iterable[str]) -> str | None:
    """APISIX's ``invalid ip address: X`` for the first entry that is not an IP or a CIDR."""
    for item in items:
        if parse_cidr(item) is None:
            return f"invalid ip address: {item}"
    return None


class IpMatcher:
    """Membership of an address in a list of IPs / CIDRs (both families)."""

    __slots__ = ("_exact", "_nets4", "_nets6")

    def __init__(self, items: Iterable[str]) -> None:
        exact: set[Address] = set()
        nets4: list[ipaddress.IPv4Network] = []
        nets6: list[ipaddress.IPv6Network] = []
        for item in items:
            net = parse_cidr(item)
            if net is None:
                continue   # refused by check_schema; never reached with a validated conf
            if net.num_addresses == 1:
                exact.add(net.network_address)
            elif isinstance(net, ipaddress.IPv4Network):
                nets4.append(net)
            else:
                nets6.append(net)
        self._exact = frozenset(exact)
        self._nets4 = tuple(nets4)
        self._nets6 = tuple(nets6)

    def match_addr(self, addr: Address) -> bool:
        if addr in self._exact:
            return True
        if isinstance(addr, ipaddress.IPv4Address):
            return any(addr in n for n in self._nets4)
        if any(addr in n for n in self._nets6):
            return True
        mapped = addr.ipv4_mapped
        return mapped is not None and self.match_addr(mapped)

    def match(self, text: str | None) -> bool | None:
        """True/False, or None when ``text`` is not an IP address."""
        if not text:
            return None
        addr = parse_ip(text)
        if addr is None:
            return None
        return self.match_addr(addr)


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    for key in ("whitelist", "blacklist"):
        if key in conf:
            err = check_ip_list(conf[key])
            if err:
                return err
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    whitelist: IpMatcher | None
    blacklist: IpMatcher | None
    code: int
    body: dict[str, str]


def prepare(conf: dict[str, Any]) -> Prepared:
    wl, bl = conf.get("whitelist"), conf.get("blacklist")
    return Prepared(whitelist=IpMatcher(wl) if wl else None, blacklist=IpMatcher(bl) if bl else None,
                    code=int(conf.get("response_code", 403)),
                    body={"message": conf.get("message", "Your IP address is not allowed")})


def access(conf: Prepared, ctx: Any) -> tuple[int, dict[str, str]] | None:
    remote = ctx.var("remote_addr")
    block = False
    if conf.blacklist is not None:
        block = conf.blacklist.match(remote) is True
    if conf.whitelist is not None:
        block = conf.whitelist.match(remote) is not True
    if block:
        return conf.code, conf.body
    return None
