"""Upstream nodes: the ``nodes`` field of an APISIX upstream, parsed into :class:`Node` values.

APISIX accepts two spellings (apisix-semantics.md section 4):

* hash form ``{"host:port": weight}``; IPv6 hosts are bracketed (``"[::1]:80"``); the port is
  optional and defaults to 443 for ``https``/``grpcs`` upstreams and 80 otherwise;
* array form ``[{"host": ..., "port": ..., "weight": ..., "priority": 0, "metadata": {...}}]``
  (``host`` and ``weight`` required).

``{}`` / ``[]`` are valid placeholders and parse to an empty list (requests then get 502).
Weight 0 is valid and means "never selected" (the balancers skip such nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshgate.errors import ConfigError

__all__ = ["Node", "parse_nodes", "parse_addr", "default_port"]

_TLS_SCHEMES = frozenset({"https", "grpcs"})


@dataclass(frozen=True, slots=True)
class Node:
    """One upstream endpoint.

    ``host`` is stored without IPv6 brackets; :attr:`addr` adds them back.  ``metadata`` takes
    no part in hashing (it is a mapping), so nodes can be put in sets (``tried``) and used as
    dictionary keys.
    """

    host: str
    port: int
    weight: int
    priority: int = 0
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def addr(self) -> str:
        """``host:port`` with IPv6 literals bracketed (``[::1]:80``)."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def default_port(scheme: str) -> int:
    """APISIX's implicit port for a node written without one."""
    return 443 if scheme in _TLS_SCHEMES else 80


def _escape(token: str) -> str:
    # RFC 6901: "~" -> "~0", "/" -> "~1".
    return token.replace("~", "~0").replace("/", "~1")


def _parse_port(text: str, pointer: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ConfigError(pointer, f"invalid port {text!r}: expected an integer in 1..65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ConfigError(pointer, f"invalid port {port}: expected an integer in 1..65535")
    return port


def parse_addr(addr: str, *, scheme: str = "http", pointer: str = "") -> tuple[str, int]:
    """Split ``host[:port]`` / ``[v6][:port]`` / bare ``v6`` into ``(host, port)``.

    Like APISIX's address parser: a leading ``[`` means a bracketed IPv6 literal; otherwise a
    string with more than one ``:`` is an unbracketed IPv6 literal without port; otherwise the
    text after the last ``:`` is the port.
    """
    if not isinstance(addr, str) or not addr:
        raise ConfigError(pointer, "expected a non-empty \"host:port\" string")
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ConfigError(pointer, f"invalid address {addr!r}: unterminated '['")
        host = addr[1:end]
        rest = addr[end + 1 :]
        if not host or ":" not in host:
            raise ConfigError(pointer, f"invalid address {addr!r}: brackets are only for IPv6 literals")
        if not rest:
            return host, default_port(scheme)
        if not rest.startswith(":"):
            raise ConfigError(pointer, f"invalid address {addr!r}: expected ':' after ']'")
        return host, _parse_port(rest[1:], pointer)
    colons = addr.count(":")
    if colons > 1:
        return addr, default_port(scheme)
    if colons == 1:
        host, _, port_text = addr.rpartition(":")
        if not host:
            raise ConfigError(pointer, f"invalid address {addr!r}: empty host")
        return host, _parse_port(port_text, pointer)
    return addr, default_port(scheme)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_weight(value: object, pointer: str) -> int:
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise ConfigError(pointer, f"invalid weight {value!r}: expected an integer >= 0")
    return value  # type: ignore[return-value]


def parse_nodes(nodes: object, *, scheme: str = "http", pointer: str = "/nodes") -> list[Node]:
    """Parse an upstream's ``nodes`` (hash or array form) into a list of :class:`Node`.

    Order is preserved (hash form: insertion order).  Raises :class:`ConfigError` whose
    ``pointer`` (prefixed by ``pointer``) names the offending entry.
    """
    result: list[Node] = []
    if isinstance(nodes, Mapping):
        for key, weight in nodes.items():
            where = f"{pointer}/{_escape(str(key))}"
            host, port = parse_addr(key, scheme=scheme, pointer=where)
            result.append(Node(host, port, _check_weight(weight, where)))
        return result
    if isinstance(nodes, (list, tuple)):
        for i, item in enumerate(nodes):
            where = f"{pointer}/{i}"
            if not isinstance(item, Mapping):
                raise ConfigError(where, "expected an object {host, port, weight, priority, metadata}")
            host_value = item.get("host")
            if not isinstance(host_value, str) or not host_value:
                raise ConfigError(f"{where}/host", "required: a non-empty string")
            host = host_value[1:-1] if host_value.startswith("[") and host_value.endswith("]") else host_value
            if "weight" not in item:
                raise ConfigError(f"{where}/weight", "required: an integer >= 0")
            weight = _check_weight(item["weight"], f"{where}/weight")
            port_value = item.get("port")
            if port_value is None:
                port = default_port(scheme)
            elif not _is_int(port_value) or not 1 <= port_value <= 65535:
                raise ConfigError(f"{where}/port", f"invalid port {port_value!r}: expected an integer in 1..65535")
            else:
                port = port_value
            priority = item.get("priority", 0)
            if not _is_int(priority):
                raise ConfigError(f"{where}/priority", f"invalid priority {priority!r}: expected an integer")
            metadata = item.get("metadata")
            if metadata is not None:
                if not isinstance(metadata, Mapping):
                    raise ConfigError(f"{where}/metadata", "expected an object")
                metadata = MappingProxyType(dict(metadata))
            result.append(Node(host, port, weight, priority, metadata))
        return result
    raise ConfigError(pointer, "expected an object {\"host:port\": weight} or an array of nodes")
