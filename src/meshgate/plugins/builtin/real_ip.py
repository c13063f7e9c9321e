"""real-ip: take the client address from a header or variable set by a trusted proxy (APISIX plugin).

APISIX semantics (``apisix/plugins/real-ip.lua``, ``t/plugin/real-ip.t``), in ``rewrite``
(priority 23000, so every later plugin, the logs and the ``X-Real-IP`` / ``X-Forwarded-For``
sent upstream see the new address):

* with ``trusted_addresses``, a client whose own address is not in the list is left alone:
  its header is never believed.  Without ``trusted_addresses`` every client is believed (as
  in APISIX: the option is what makes the plugin safe on an exposed listener).
* ``source`` names a variable (``http_x_real_ip``, ``arg_realip``, ``cookie_x``...).  For
  ``http_x_forwarded_for`` the address is the last element of the list, or with
  ``recursive`` (and ``trusted_addresses``) the right-most element that is not trusted
  (the first element when all are).
* The value may carry a port (``1.1.1.1:80``, ``[::2]:80``); it must be an IPv4 or IPv6
  address and the port 1-65535, else nothing changes.
* Sets ``remote_addr`` (and ``remote_port`` when a port was given) through ``ctx.set_var``;
  the original address stays readable as ``realip_remote_addr`` (nginx's variable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .ip_restriction import IP_DEF, IpMatcher, check_ip_list, parse_ip

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "parse_addr", "rewrite"]

NAME = "real-ip"
PRIORITY = 23000
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "trusted_addresses": {"type": "array", "items": {"anyOf": IP_DEF}, "minItems": 1},
        "source": {"type": "string", "minLength": 1},
        "recursive": {"type": "boolean", "default": False},
    },
    "required": ["source"],
}


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    if "trusted_addresses" in conf:
        return check_ip_list(conf["trusted_addresses"])
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    source: str
    trusted: IpMatcher | None
    recursive: bool


def prepare(conf: dict[str, Any]) -> Prepared:
    ta = conf.get("trusted_addresses")
    return Prepared(source=conf["source"], trusted=IpMatcher(ta) if ta else None,
                    recursive=bool(conf.get("recursive", False)))


_SPLIT = re.compile(r",\s*")


def _from_xff(conf: Prepared, xff: str) -> str:
    if "," not in xff:
        return xff
    parts = _SPLIT.split(xff)
    if conf.recursive and conf.trusted is not None:
        for addr in reversed(parts[1:]):
            if conf.trusted.match(addr.strip()) is not True:
                return addr
        return parts[0]
    return parts[-1].lstrip(" ")


def parse_addr(text: str) -> tuple[str, int | None] | None:
    """``ip``, ``ip:port``, ``[v6]``, ``[v6]:port`` or bare ``v6`` -> (ip, port); None if invalid."""
    s = text.strip()
    port: str | None = None
    if s.startswith("["):
        if s.endswith("]"):
            host = s[1:-1]
        else:
            h, sep, port = s.rpartition(":")
            if not sep or not h.endswith("]"):
                return None
            host = h[1:-1]
    elif s.count(":") >= 2:
        host = s
    else:
        host, sep, p = s.partition(":")
        port = p if sep else None
    addr = parse_ip(host)
    if addr is None or "%" in host:
        return None
    if port is None:
        return str(addr), None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return str(addr), int(port)


def rewrite(conf: Prepared, ctx: Any) -> None:
    remote = ctx.var("remote_addr")
    if conf.trusted is not None and conf.trusted.match(remote) is not True:
        return None
    if conf.source == "http_x_forwarded_for":
        xff = ctx.req_header("x-forwarded-for")
        raw = _from_xff(conf, xff) if xff else None
    else:
        v = ctx.var(conf.source)
        raw = v if isinstance(v, str) else None
    if not raw:
        return None
    parsed = parse_addr(raw)
    if parsed is None:
        return None
    ip, port = parsed
    if ctx.var("realip_remote_addr") is None:
        ctx.set_var("realip_remote_addr", remote)
        ctx.set_var("realip_remote_port", ctx.var("remote_port"))
    ctx.set_var("remote_addr", ip)
    if port is not None:
        ctx.set_var("remote_port", str(port))   # nginx variables are strings
    return None
