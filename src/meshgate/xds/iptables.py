"""Traffic-capture rules for sidecar mode: what ``meshgate iptables`` applies (pure, no I/O).

Theory of operation
-------------------
A sidecar sees the pod's TCP traffic because the ``nat`` table of the pod's network namespace
rewrites the destination of every new connection to one of the proxy's two catch-all listeners,
exactly as Istio's ``istio-iptables`` does in REDIRECT mode.  Conntrack remembers the original
destination, which the proxy reads back with ``SO_ORIGINAL_DST`` (``proxy/origdst.py``) to decide
where the connection was really going.  The chains have Istio's names so that tools, docs and
habits built for Istio keep working:

``ISTIO_REDIRECT``     ``REDIRECT --to-ports 15001``: the outbound catch-all (``virtualOutbound``).
``ISTIO_IN_REDIRECT``  ``REDIRECT --to-ports 15006``: the inbound catch-all (``virtualInbound``).
``ISTIO_INBOUND``      from ``PREROUTING`` (connections arriving from outside the pod):
                       returns for the tunnel port (15008, HBONE) and the excluded ports (by
                       default 15090 metrics, 15021 health, 15020 agent: kubelet probes and
                       Prometheus must reach them without the proxy), then sends the listed
                       ports (or all, ``*``) to ``ISTIO_IN_REDIRECT``.
``ISTIO_OUTPUT``       from ``OUTPUT`` (connections the pod opens), in this order:

  1. excluded outbound ports return (TCP and UDP);
  2. ``-o lo -s 127.0.0.6``: the proxy's inbound passthrough binds 127.0.0.6 (``::6``) to reach
     the app on the pod IP; capturing it again would loop;
  3. per proxy uid / gid: (a) the proxy calling the pod's own IP over ``lo`` (a service whose
     endpoint is this pod) goes through the inbound listener (``ISTIO_IN_REDIRECT``), so inbound
     policy applies; (b) anyone else's traffic over ``lo`` (app to app in the pod) is left alone;
     (c) everything else the proxy opens is left alone: the proxy's own upstream connections
     must never come back to itself;
  4. destination 127.0.0.1 (``::1``) returns: localhost is the app talking to itself;
  5. excluded CIDRs return; explicitly included outbound ports redirect;
  6. included CIDRs (or everything, ``*``) go to ``ISTIO_REDIRECT``.

``-k`` virtual interfaces (KubeVirt) have their incoming traffic treated as outbound (inserted at
the top of ``PREROUTING``); ``-c`` excluded interfaces bypass capture both ways.  IPv6 uses the
same rules through ``ip6tables`` with ``::1`` / ``::6`` for the loopback addresses, only when
enabled (Istio's ``ENABLE_INBOUND_IPV6``); CIDRs go to the family they belong to.

Applying is one ``iptables-restore --noflush`` batch per family, so either the whole batch takes
effect or nothing changes.  Chains are declared ``:CHAIN - [0:0]`` (created, or flushed when they
exist) rather than ``-N`` (which fails on an existing chain); when a previous run left jumps in the
built-in chains, ``restore_text`` given the current ``iptables-save`` output deletes them in the
same batch, so re-applying is idempotent.  ``cleanup_text`` removes only what Meshgate (or
Istio, same names) added: the built-in-chain rules that jump to these chains, the interface
``RETURN`` rules the given options would add, and the chains themselves.

TPROXY (Istio's other inbound mode) and DNS capture are not generated; TPROXY is refused with an
error naming the flag.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..errors import MeshgateError

__all__ = [
    "CHAINS",
    "CaptureOptionError",
    "CaptureOptions",
    "Family",
    "cleanup_text",
    "parse_options",
    "rules",
    "restore_text",
]

Family = Literal["ipv4", "ipv6"]

INBOUND = "ISTIO_INBOUND"
REDIRECT = "ISTIO_REDIRECT"
IN_REDIRECT = "ISTIO_IN_REDIRECT"
OUTPUT = "ISTIO_OUTPUT"
#: Meshgate's chains in the nat table, in Istio's declaration order.
CHAINS: tuple[str, ...] = (INBOUND, REDIRECT, IN_REDIRECT, OUTPUT)
_BUILTIN = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")

# Per family: the loopback destination that is never captured, and the source address the
# proxy's inbound passthrough binds (Istio's 127.0.0.6 / ::6).
_LOOPBACK = {"ipv4": "127.0.0.1/32", "ipv6": "::1/128"}
_PASSTHROUGH_SRC = {"ipv4": "127.0.0.6/32", "ipv6": "::6/128"}

_OWNER_RE = re.compile(r"^(\d+(-\d+)?|[A-Za-z_][A-Za-z0-9_.-]*)$")
_IFACE_RE = re.compile(r"^[^\s/,:!]{1,15}$")


class CaptureOptionError(MeshgateError):
    """A ``meshgate iptables`` option is invalid: ``flag`` names it, ``message`` says what was expected."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        self.message = message
        super().__init__(f"{flag}: {message}")


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """Validated capture settings; the defaults are what Istio's injector passes to istio-init."""

    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    #: ``None`` = all ports (``*``); an empty tuple = no inbound capture.
    inbound_ports: tuple[int, ...] | None = None
    inbound_ports_exclude: tuple[int, ...] = (15090, 15021, 15020)
    outbound_ports_include: tuple[int, ...] = ()
    outbound_ports_exclude: tuple[int, ...] = ()
    #: ``None`` = every destination (``*``); an empty tuple = no outbound capture.
    outbound_cidrs: tuple[str, ...] | None = None
    outbound_cidrs_exclude: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    ipv6: bool = False

    def families(self) -> tuple[Family, ...]:
        return ("ipv4", "ipv6") if self.ipv6 else ("ipv4",)


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _port(flag: str, text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise CaptureOptionError(flag, f"{text!r} is not a port; expected an integer 1-65535")
    return int(text)


def _ports(flag: str, value: str) -> tuple[int, ...]:
    return tuple(_port(flag, p) for p in _split(value))


def _owners(flag: str, value: str) -> tuple[str, ...]:
    out = _split(value)
    for o in out:
        if not _OWNER_RE.match(o):
            raise CaptureOptionError(flag, f"{o!r} is not a user/group; expected a numeric id, an id range "
                                           f"(1000-2000) or a name, comma-separated")
    return tuple(out)


def _cidrs(flag: str, value: str) -> tuple[str, ...]:
    out = []
    for c in _split(value):
        try:
            iface = ipaddress.ip_interface(c) if "/" in c else None
        except ValueError:
            iface = None
        if iface is None:
            raise CaptureOptionError(flag, f"{c!r} is not a CIDR; expected address/prefix such as 10.96.0.0/12 "
                                           f"or fd00::/8, comma-separated, or '*'")
        # Printed as given (address and prefix length), like Istio's netip.Prefix.String().
        out.append(f"{iface.ip}/{iface.network.prefixlen}")
    return tuple(out)


def _interfaces(flag: str, value: str) -> tuple[str, ...]:
    out = _split(value)
    for i in out:
        if not _IFACE_RE.match(i):
            raise CaptureOptionError(flag, f"{i!r} is not an interface name; expected up to 15 characters "
                                           f"without spaces, '/', ':' or ',', comma-separated")
    return tuple(out)


def parse_options(
    *,
    envoy_port: str = "15001",
    inbound_capture_port: str = "15006",
    inbound_tunnel_port: str = "15008",
    proxy_uid: str = "1337",
    proxy_gid: str = "",
    interception_mode: str = "REDIRECT",
    inbound_ports: str = "*",
    inbound_ports_exclude: str = "15090,15021,15020",
    outbound_ports_include: str = "",
    outbound_ports_exclude: str = "",
    service_cidr: str = "*",
    service_exclude_cidr: str = "",
    exclude_interfaces: str = "",
    kube_virt_interfaces: str = "",
    ipv6: bool = False,
) -> CaptureOptions:
    """Validate istio-iptables-style flag values (strings, as on the command line).

    Raises :class:`CaptureOptionError` naming the long flag and what was expected.  An empty
    ``proxy_gid`` means "same as ``proxy_uid``" (istio-iptables does the same).
    """
    mode = interception_mode.strip().upper() or "REDIRECT"
    if mode == "TPROXY":
        raise CaptureOptionError("--istio-inbound-interception-mode",
                                 "TPROXY is not supported; Meshgate captures inbound traffic with REDIRECT only "
                                 "(use -m REDIRECT)")
    if mode != "REDIRECT":
        raise CaptureOptionError("--istio-inbound-interception-mode",
                                 f"{interception_mode!r} is not an interception mode; expected REDIRECT")
    uids = _owners("--proxy-uid", proxy_uid)
    if not uids:
        raise CaptureOptionError("--proxy-uid", "empty; expected the uid the proxy runs as (Istio: 1337)")
    gids = _owners("--proxy-gid", proxy_gid) if proxy_gid.strip() else uids
    inb: tuple[int, ...] | None = None if inbound_ports.strip() == "*" else _ports("--istio-inbound-ports", inbound_ports)
    if service_exclude_cidr.strip() == "*":
        raise CaptureOptionError("--istio-service-exclude-cidr",
                                 "'*' is not allowed here (it would exclude everything); expected a list of CIDRs")
    out: tuple[str, ...] | None = None if service_cidr.strip() == "*" else _cidrs("--istio-service-cidr", service_cidr)
    return CaptureOptions(
        proxy_port=_port("--envoy-port", envoy_port),
        inbound_capture_port=_port("--inbound-capture-port", inbound_capture_port),
        inbound_tunnel_port=_port("--inbound-tunnel-port", inbound_tunnel_port),
        proxy_uids=uids,
        proxy_gids=gids,
        inbound_ports=inb,
        inbound_ports_exclude=_ports("--istio-local-exclude-ports", inbound_ports_exclude),
        outbound_ports_include=_ports("--istio-outbound-ports", outbound_ports_include),
        outbound_ports_exclude=_ports("--istio-local-outbound-ports-exclude", outbound_ports_exclude),
        outbound_cidrs=out,
        outbound_cidrs_exclude=_cidrs("--istio-service-exclude-cidr", service_exclude_cidr),
        exclude_interfaces=_interfaces("--istio-exclude-interfaces", exclude_interfaces),
        kube_virt_interfaces=_interfaces("--kube-virt-interfaces", kube_virt_interfaces),
        ipv6=ipv6,
    )


def _in_family(cidr: str, family: Family) -> bool:
    return (ipaddress.ip_interface(cidr).version == 4) == (family == "ipv4")


def _is_loopback(cidr: str) -> bool:
    return ipaddress.ip_interface(cidr).ip.is_loopback


def rules(opts: CaptureOptions, family: Family) -> list[str]:
    """The ``-A``/``-I`` lines of the nat table, in Istio's order (without chain declarations)."""
    r: list[str] = []
    lo, src6 = _LOOPBACK[family], _PASSTHROUGH_SRC[family]
    tunnel = opts.inbound_tunnel_port
    for nic in opts.exclude_interfaces:
        r += [f"-A PREROUTING -i {nic} -j RETURN", f"-A OUTPUT -o {nic} -j RETURN"]
    for nic in opts.kube_virt_interfaces:
        r.append(f"-I PREROUTING 1 -i {nic} -j RETURN")
    r.append(f"-A {INBOUND} -p tcp --dport {tunnel} -j RETURN")
    r.append(f"-A {REDIRECT} -p tcp -j REDIRECT --to-ports {opts.proxy_port}")
    r.append(f"-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {opts.inbound_capture_port}")

    # Inbound: connections arriving from outside the pod.
    if opts.inbound_ports is None or opts.inbound_ports:
        r.append(f"-A PREROUTING -p tcp -j {INBOUND}")
        if opts.inbound_ports is None:
            r += [f"-A {INBOUND} -p tcp --dport {p} -j RETURN" for p in opts.inbound_ports_exclude]
            r.append(f"-A {INBOUND} -p tcp -j {IN_REDIRECT}")
        else:
            r += [f"-A {INBOUND} -p tcp --dport {p} -j {IN_REDIRECT}" for p in opts.inbound_ports]

    # Outbound: connections opened inside the pod.
    r.append(f"-A OUTPUT -j {OUTPUT}")
    for p in opts.outbound_ports_exclude:
        r += [f"-A {OUTPUT} -p tcp --dport {p} -j RETURN", f"-A {OUTPUT} -p udp --dport {p} -j RETURN"]
    r.append(f"-A {OUTPUT} -o lo -s {src6} -j RETURN")
    include_loopback = opts.outbound_cidrs is not None and any(_is_loopback(c) for c in opts.outbound_cidrs)
    for kind, ids in (("uid", opts.proxy_uids), ("gid", opts.proxy_gids)):
        for owner in ids:
            r.append(f"-A {OUTPUT} -o lo ! -d {lo} -p tcp ! --dport {tunnel} -m owner --{kind}-owner {owner} "
                     f"-j {IN_REDIRECT}")
            if not include_loopback:
                r.append(f"-A {OUTPUT} -o lo -m owner ! --{kind}-owner {owner} -j RETURN")
            r.append(f"-A {OUTPUT} -m owner --{kind}-owner {owner} -j RETURN")
    r.append(f"-A {OUTPUT} -d {lo} -j RETURN")
    r += [f"-A {OUTPUT} -d {c} -j RETURN" for c in opts.outbound_cidrs_exclude if _in_family(c, family)]
    r += [f"-A {OUTPUT} -p tcp --dport {p} -j {REDIRECT}" for p in opts.outbound_ports_include]
    if opts.outbound_cidrs is None:
        r.append(f"-A {OUTPUT} -j {REDIRECT}")
        r += [f"-I PREROUTING 1 -i {nic} -j {REDIRECT}" for nic in opts.kube_virt_interfaces]
    else:
        for c in (c for c in opts.outbound_cidrs if _in_family(c, family)):
            r += [f"-I PREROUTING 1 -i {nic} -d {c} -j {REDIRECT}" for nic in opts.kube_virt_interfaces]
            r.append(f"-A {OUTPUT} -d {c} -j {REDIRECT}")
    return r


@dataclass(frozen=True, slots=True)
class _Saved:
    chains: frozenset[str]
    builtin_rules: tuple[tuple[str, str], ...]  # (chain, rule spec) as iptables-save prints them


def _parse_save(existing: str) -> _Saved:
    """The nat table of an ``iptables-save`` dump: user chains and built-in chain rules."""
    chains: set[str] = set()
    builtin: list[tuple[str, str]] = []
    in_nat = False
    for raw in existing.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_nat = line[1:].strip() == "nat"
        elif not in_nat:
            continue
        elif line == "COMMIT":
            in_nat = False
        elif line.startswith(":"):
            chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(None, 2)
            if chain in _BUILTIN:
                builtin.append((chain, rest[0] if rest else ""))
    return _Saved(frozenset(chains), tuple(builtin))


def _jumps_to_ours(spec: str) -> bool:
    try:
        toks = shlex.split(spec)
    except ValueError:
        toks = spec.split()
    return any(t in ("-j", "-g", "--jump", "--goto") and i + 1 < len(toks) and toks[i + 1] in CHAINS
               for i, t in enumerate(toks))


def _interface_returns(opts: CaptureOptions) -> set[tuple[str, str]]:
    out = set()
    for nic in opts.exclude_interfaces:
        out |= {("PREROUTING", f"-i {nic} -j RETURN"), ("OUTPUT", f"-o {nic} -j RETURN")}
    for nic in opts.kube_virt_interfaces:
        out.add(("PREROUTING", f"-i {nic} -j RETURN"))
    return out


def _stale(opts: CaptureOptions, saved: _Saved) -> list[str]:
    """``-D`` lines for the built-in-chain rules a previous run left (one per occurrence)."""
    ours = _interface_returns(opts)
    return [f"-D {chain} {spec}" for chain, spec in saved.builtin_rules
            if _jumps_to_ours(spec) or (chain, spec) in ours]


def _batch(lines: Iterable[str]) -> str:
    return "\n".join(["*nat", *lines, "COMMIT"]) + "\n"


def restore_text(opts: CaptureOptions, family: Family, *, existing: str = "") -> str:
    """The ``iptables-restore --noflush`` input (``ip6tables-restore`` for ipv6) that installs capture.

    ``existing`` is the current ``iptables-save`` output of that family, if known: the jumps a
    previous run left in the built-in chains are then deleted in the same batch (Meshgate's own
    chains are flushed by their declaration), so applying twice gives the same table.
    """
    decl = [f":{c} - [0:0]" for c in CHAINS]
    return _batch([*decl, *_stale(opts, _parse_save(existing)), *rules(opts, family)])


def cleanup_text(opts: CaptureOptions, existing: str) -> str | None:
    """The ``iptables-restore --noflush`` input removing capture from a table dumped as ``existing``.

    Only what Meshgate adds goes: built-in-chain rules jumping to its chains, the interface
    ``RETURN`` rules ``opts`` would add (pass the same ``-c``/``-k`` as when applying, like
    istio-clean-iptables), and the chains.  ``None`` when there is nothing to remove.
    """
    saved = _parse_save(existing)
    present = [c for c in CHAINS if c in saved.chains]
    stale = _stale(opts, saved)
    if not present and not stale:
        return None
    # Flush all before deleting any: ISTIO_OUTPUT and ISTIO_INBOUND reference the redirect chains.
    return _batch([*stale, *(f"-F {c}" for c in present), *(f"-X {c}" for c in present)])
