"""Where an accepted connection was going before ``iptables -j REDIRECT`` sent it to us.

Linux keeps the pre-NAT destination in conntrack; ``getsockopt(SOL_IP, SO_ORIGINAL_DST)``
(``struct sockaddr_in``) reads it for IPv4 and ``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)``
(``struct sockaddr_in6``) for IPv6, as Envoy's ``original_dst`` listener filter does.  An IPv4
connection accepted on a dual-stack IPv6 socket (local address ``::ffff:a.b.c.d``) is asked the
IPv4 way and answered with the plain IPv4 address.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["original_dst"]

SO_ORIGINAL_DST = 80        # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80   # linux/netfilter_ipv6/ip6_tables.h
_SOL_IP = getattr(socket, "SOL_IP", 0)
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
_MAPPED = "::ffff:"


def _v4(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(_SOL_IP, SO_ORIGINAL_DST, 16)          # sockaddr_in
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]


def _v6(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)  # sockaddr_in6
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """``(ip, port)`` the client connected to, or ``None`` when the connection was not redirected.

    ``None`` covers the kernel's "no such conntrack entry" answers (ENOENT, ENOPROTOOPT, ... when
    conntrack or NAT is absent) and a tracked but un-NATed connection, whose original destination
    is the socket's own local address.
    """
    try:
        local = sock.getsockname()
        host = str(local[0]).split("%", 1)[0]
        if sock.family == socket.AF_INET:
            dst = _v4(sock)
        elif sock.family == socket.AF_INET6 and host.lower().startswith(_MAPPED) and "." in host:
            host = host[len(_MAPPED):]
            dst = _v4(sock)
        elif sock.family == socket.AF_INET6:
            dst = _v6(sock)
        else:
            return None
    except (OSError, struct.error):
        return None
    if dst == (host, int(local[1])):
        return None
    return dst
