"""IP / CIDR matcher shared by route ``remote_addrs`` and the ``ipmatch`` vars operator.

Behaviour follows lua-resty-ipmatcher as used by APISIX: entries are IPv4 or IPv6
addresses or CIDRs (host bits in a CIDR are masked, not an error); a request address
that is not a valid IP never matches, and IPv4 and IPv6 are separate families (an
IPv4-mapped IPv6 address does not match an IPv4 network).

Everything is parsed once (with :mod:`ipaddress`).  At match time the address is
converted to an integer with ``inet_pton`` (C, strict) and checked with one set lookup
per distinct prefix length: the cost does not depend on the number of entries.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable

from ..errors import ConfigError

__all__ = ["IPMatcher"]

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


def _group(nets: list[tuple[int, int]], bits: int) -> tuple[tuple[int, frozenset[int]], ...]:
    """[(network int, prefixlen)] -> ((mask, {network ints}), ...), widest mask first."""
    by_len: dict[int, set[int]] = {}
    for value, plen in nets:
        by_len.setdefault(plen, set()).add(value)
    full = (1 << bits) - 1
    return tuple(
        ((full >> (bits - plen)) << (bits - plen) if plen else 0, frozenset(vals))
        for plen, vals in sorted(by_len.items())
    )


class IPMatcher:
    """Matches an address string against a precompiled set of IPs and networks."""

    __slots__ = ("_exact", "_v4", "_v6", "source")

    def __init__(self, entries: Iterable[Any], pointer: str) -> None:
        exact: set[str] = set()
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        src: list[str] = []
        for i, raw in enumerate(entries):
            ptr = f"{pointer}/{i}"
            if not isinstance(raw, str) or not raw:
                raise ConfigError(ptr, f"expected an IPv4/IPv6 address or CIDR string, got {raw!r}")
            src.append(raw)
            try:
                net = ipaddress.ip_network(raw, strict=False)
            except ValueError:
                raise ConfigError(ptr, f"expected an IPv4/IPv6 address or CIDR, got {raw!r}") from None
            if net.num_addresses == 1:
                exact.add(str(net.network_address))
            (v4 if net.version == 4 else v6).append((int(net.network_address), net.prefixlen))
        if not src:
            raise ConfigError(pointer, "expected at least one IP address or CIDR")
        self._exact = frozenset(exact)  # canonical text of single addresses: the fast path
        self._v4 = _group(v4, 32)
        self._v6 = _group(v6, 128)
        self.source = tuple(src)

    def match(self, addr: object) -> bool:
        if not isinstance(addr, str):
            return False
        if addr in self._exact:
            return True
        try:
            if ":" in addr:
                groups = self._v6
                # A zone index (fe80::1%eth0) is not part of the address.
                n = _from_bytes(_inet_pton(_AF_INET6, addr.partition("%")[0]), "big")
            else:
                groups = self._v4
                n = _from_bytes(_inet_pton(_AF_INET, addr), "big")
        except (OSError, ValueError):
            return False
        for mask, nets in groups:
            if n & mask in nets:
                return True
        return False

    def __repr__(self) -> str:
        return f"IPMatcher({list(self.source)!r})"
