"""EDS ``ClusterLoadAssignment`` → APISIX upstream nodes, and Envoy's host selection (pure).

Two steps, so that a cluster's load-balancing facts can be applied to every EDS push:

1. :func:`translate_cla` turns every usable endpoint of a CLA into an APISIX array-form node
   (``meshgate.upstream.parse_nodes``)::

       {"host": "10.1.2.3",          # IPv4 / IPv6 literal (no brackets) or a DNS name
        "port": 9080,
        "weight": 1,                 # LbEndpoint.load_balancing_weight (Envoy default 1)
        "priority": 0,               # -(Envoy priority): P0 -> 0, P1 -> -1, ... (APISIX: higher
                                     # is preferred, default 0, so Envoy's order is kept)
        "metadata": {
            "health_status": "HEALTHY",        # EDS HealthStatus name (UNKNOWN when unset)
            "envoy_priority": 0,               # LocalityLbEndpoints.priority
            "locality": {"region": "", "zone": "", "sub_zone": ""},
            "locality_weight": 3 | None,       # LocalityLbEndpoints.load_balancing_weight
            "overprovisioning_factor": 140,    # CLA policy (Envoy default 140)
            "weighted_priority_health": False, # CLA policy
            "hostname": "..." | None,          # Endpoint.hostname
            "tls_mode": "istio" | None,        # filter_metadata["envoy.transport_socket_match"].tlsMode
            "workload": {"name", "namespace", "canonical_service", "canonical_revision",
                         "cluster_id"} | None, # parsed filter_metadata["istio"].workload
            "filter_metadata": {...},          # every filter_metadata namespace, as JSON
        }}

   Pipe (unix socket) and Envoy-internal addresses are skipped (counted in ``stats`` under
   ``skipped_pipe`` / ``skipped_internal`` and logged): istiod never sends them to sidecars
   (internal addresses are ambient/waypoint only) and the node model holds TCP peers.  What
   Envoy itself would reject (weight 0, UDP, named ports, custom resolvers, LEDS, a missing
   named endpoint) raises :class:`~meshgate.errors.ConfigError` (``kind="endpoints"``, ``id`` =
   the CLA's cluster_name).  ``policy.drop_overloads`` (load shedding) and
   ``endpoint_stale_after`` are ignored: serving every request is safer than a NACK.

2. :func:`select_nodes` reproduces what Envoy's zone-aware load balancer base does with those
   hosts at a point in time, from the EDS health statuses alone:

   * health: HEALTHY and UNKNOWN hosts are *healthy*; DEGRADED hosts are *degraded* (used only
     as the healthy ones run short, by the same spill-over as priorities); UNHEALTHY, DRAINING
     and TIMEOUT hosts are unavailable (Envoy sets FAILED_EDS_HEALTH for all three);
   * per priority P: health = min(100, overprovisioning_factor x healthy / hosts) (integer
     maths, counts or weights when ``weighted_priority_health``), the same for degraded;
     normalized total availability = min(100, sum of both); loads are distributed from P0 down
     (healthy first, then degraded) and the rounding remainder goes to the first available
     priority, exactly as Envoy's priority-load computation;
   * panic (``healthy_panic_threshold``, Envoy default 50%): never while the normalized total
     availability is 100; otherwise a priority whose (healthy + degraded) share of hosts is
     below the threshold balances across *all* its hosts; when every priority panics the load
     is split by host counts; threshold 0 disables panic, and with nothing available the
     result is ``[]`` (Envoy answers 503 "no healthy upstream");
   * locality weighted LB (cluster ``common_lb_config.locality_weighted_lb_config``), outside
     panic: a locality's effective weight is ``locality_weight x min(1, factor/100 x
     available/hosts)`` (no weight = no traffic); when no locality has an effective weight
     Envoy falls back to host-level balancing over the whole set, so do we.

   APISIX balances inside one priority group with integer weights and fails over between
   groups strictly, so the time-sliced Envoy picture is *flattened* into weights:

   * every host with a non-zero Envoy traffic share goes into ONE APISIX group (priority =
     -(first Envoy priority carrying load)), with integer weights proportional to its share
     (priority load x locality share x endpoint weight share, computed exactly with
     fractions, then reduced by their gcd; rounded to at most 10000 per node, never below 1,
     when exact integers would be larger).  A spill-over of 70/30 between P0 and P1 becomes
     one group whose weights carry 70/30 of the traffic, and locality weighting becomes per-node
     weights: per request the *distribution* matches Envoy's (smooth WRR / least_conn choose
     among weights instead of Envoy's two random draws);
   * healthy (else degraded) hosts of the Envoy priorities below that carry no load yet keep
     their own lower APISIX priorities (-P) as failover: APISIX reaches them only when every
     node of the preferred group is unhealthy per the runtime health checks (or tried by this
     request).  Envoy would spill over gradually (from 71% health down); the runtime failover
     is therefore strict, not gradual -- the translation-time picture is exact.
   * unhealthy hosts that carry no load are left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from google.protobuf import json_format

from meshgate.errors import ConfigError

__all__ = [
    "translate_cla",
    "select_nodes",
    "envoy_priority",
    "HEALTHY_STATUSES",
    "DEGRADED_STATUSES",
    "DEFAULT_OVERPROVISIONING_FACTOR",
    "DEFAULT_PANIC_THRESHOLD",
]

log = logging.getLogger("meshgate.xds")

HEALTHY_STATUSES = frozenset({"UNKNOWN", "HEALTHY"})
DEGRADED_STATUSES = frozenset({"DEGRADED"})
DEFAULT_OVERPROVISIONING_FACTOR = 140
DEFAULT_PANIC_THRESHOLD = 50.0
# Node weights are scaled to at most this when exact integer ratios would be larger.
_WEIGHT_SCALE = 10000
_HEALTH_NAMES = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING", 4: "TIMEOUT", 5: "DEGRADED"}


def _struct_map(metadata: Any) -> dict[str, Any]:
    """``Metadata.filter_metadata`` (map<string, Struct>) as plain JSON values."""
    out: dict[str, Any] = {}
    for key, value in metadata.filter_metadata.items():
        out[key] = json_format.MessageToDict(value)
    return out


def _workload(value: object) -> dict[str, str] | None:
    # Istio's AppendLbEndpointMetadata: "<name>;<ns>;<canonical-svc>;<canonical-rev>;<cluster>"
    if not isinstance(value, str) or not value:
        return None
    parts = value.split(";")
    parts += [""] * (5 - len(parts))
    return {"name": parts[0], "namespace": parts[1], "canonical_service": parts[2],
            "canonical_revision": parts[3], "cluster_id": parts[4]}


def _u32(msg: Any, field: str) -> int | None:
    return int(getattr(msg, field).value) if msg.HasField(field) else None


def _translate(cla: Any, *, prefix: str, kind: str, id: str | None,
               stats: dict[str, int] | None) -> list[dict[str, Any]]:
    def fail(pointer: str, message: str) -> ConfigError:
        return ConfigError(prefix + pointer, message, kind=kind, id=id)

    factor = DEFAULT_OVERPROVISIONING_FACTOR
    weighted_health = False
    if cla.HasField("policy"):
        got = _u32(cla.policy, "overprovisioning_factor")
        if got is not None:
            if got == 0:
                raise fail("/policy/overprovisioning_factor", "expected an integer > 0 (percent, Envoy default 140)")
            factor = got
        weighted_health = bool(cla.policy.weighted_priority_health)
    nodes: list[dict[str, Any]] = []
    for li, group in enumerate(cla.endpoints):
        gp = f"/endpoints/{li}"
        if group.WhichOneof("lb_config") == "leds_cluster_locality_config":
            raise fail(f"{gp}/leds_cluster_locality_config",
                       "LEDS is not supported: expected lb_endpoints inline in the assignment")
        prio = int(group.priority)
        loc = group.locality
        locality = {"region": loc.region, "zone": loc.zone, "sub_zone": loc.sub_zone}
        # 0 is what Envoy's own config dump shows for an unset weight; both mean "no load
        # under locality weighting", so 0 is read as unset rather than refused.
        locality_weight = _u32(group, "load_balancing_weight") or None
        members: list[tuple[str, Any]] = [(f"{gp}/lb_endpoints/{i}", e) for i, e in enumerate(group.lb_endpoints)]
        if group.WhichOneof("lb_config") == "load_balancer_endpoints":
            members += [(f"{gp}/load_balancer_endpoints/lb_endpoints/{i}", e)
                        for i, e in enumerate(group.load_balancer_endpoints.lb_endpoints)]
        for ep_ptr, lb in members:
            which = lb.WhichOneof("host_identifier")
            if which == "endpoint_name":
                name = lb.endpoint_name
                if name not in cla.named_endpoints:
                    raise fail(f"{ep_ptr}/endpoint_name",
                               f"unknown named endpoint {name!r}: expected a key of named_endpoints")
                endpoint = cla.named_endpoints[name]
            else:
                endpoint = lb.endpoint
            addr_kind = endpoint.address.WhichOneof("address")
            if addr_kind in ("pipe", "envoy_internal_address"):
                key = "skipped_pipe" if addr_kind == "pipe" else "skipped_internal"
                if stats is not None:
                    stats[key] = stats.get(key, 0) + 1
                log.warning("%s %s: endpoint %s skipped: %s addresses are not supported", kind, id, ep_ptr, addr_kind)
                continue
            ap = f"{ep_ptr}/endpoint/address/socket_address"
            if addr_kind != "socket_address":
                raise fail(f"{ep_ptr}/endpoint/address", "required: a socket_address {address, port_value}")
            sa = endpoint.address.socket_address
            if sa.protocol != 0:
                raise fail(f"{ap}/protocol", "UDP endpoints are not supported: expected TCP")
            if sa.resolver_name:
                raise fail(f"{ap}/resolver_name", f"custom resolver {sa.resolver_name!r} is not supported: expected none")
            if sa.WhichOneof("port_specifier") == "named_port":
                raise fail(f"{ap}/named_port", "named ports are not supported: expected port_value")
            host = sa.address.strip()
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if not host:
                raise fail(f"{ap}/address", "required: a non-empty IP address or host name")
            port = int(sa.port_value)
            if not 1 <= port <= 65535:
                raise fail(f"{ap}/port_value", f"invalid port {port}: expected an integer in 1..65535")
            weight = _u32(lb, "load_balancing_weight")
            if weight == 0:
                raise fail(f"{ep_ptr}/load_balancing_weight", "expected an integer >= 1 (Envoy default 1)")
            filter_md = _struct_map(lb.metadata) if lb.HasField("metadata") else {}
            tsm = filter_md.get("envoy.transport_socket_match")
            tls_mode = tsm.get("tlsMode") if isinstance(tsm, Mapping) else None
            istio_md = filter_md.get("istio")
            workload = _workload(istio_md.get("workload")) if isinstance(istio_md, Mapping) else None
            nodes.append({
                "host": host,
                "port": port,
                "weight": weight if weight is not None else 1,
                "priority": -prio,
                "metadata": {
                    "health_status": _HEALTH_NAMES.get(int(lb.health_status), "UNKNOWN"),
                    "envoy_priority": prio,
                    "locality": dict(locality),
                    "locality_weight": locality_weight,
                    "overprovisioning_factor": factor,
                    "weighted_priority_health": weighted_health,
                    "hostname": endpoint.hostname or None,
                    "tls_mode": tls_mode if isinstance(tls_mode, str) else None,
                    "workload": workload,
                    "filter_metadata": filter_md,
                },
            })
    return nodes


def translate_cla(cla: Any, *, stats: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Every usable endpoint of ``cla`` as an APISIX node dict (see the module docstring).

    ``stats``: counters of skipped endpoints (``skipped_pipe``, ``skipped_internal``) are added
    to it.  A CLA with no endpoints gives ``[]``.
    """
    name = cla.cluster_name or None
    return _translate(cla, prefix="", kind="endpoints", id=name, stats=stats)


# ----------------------------------------------------------------------------- selection


def envoy_priority(node: Mapping[str, Any]) -> int:
    """The Envoy priority a node came from (its metadata, else ``-priority``)."""
    md = node.get("metadata") or {}
    p = md.get("envoy_priority") if isinstance(md, Mapping) else None
    if isinstance(p, int) and not isinstance(p, bool):
        return p
    return -int(node.get("priority", 0) or 0)


def _status(node: Mapping[str, Any]) -> str:
    md = node.get("metadata") or {}
    s = md.get("health_status") if isinstance(md, Mapping) else None
    return s if isinstance(s, str) else "HEALTHY"


def _md(node: Mapping[str, Any], key: str, default: Any) -> Any:
    md = node.get("metadata") or {}
    value = md.get(key, default) if isinstance(md, Mapping) else default
    return default if value is None else value


def _locality_key(node: Mapping[str, Any]) -> tuple[str, str, str]:
    loc = _md(node, "locality", {})
    if not isinstance(loc, Mapping):
        return ("", "", "")
    return (str(loc.get("region", "")), str(loc.get("zone", "")), str(loc.get("sub_zone", "")))


def _distribute(loads: list[int], avail: Sequence[int], total: int, normalized: int) -> tuple[int, int]:
    """Envoy's priority-load distribution: from the most preferred level down, each takes
    ``availability x 100 / normalized`` (integer) of what is left.  Returns the first level
    with availability (-1 if none) and the load left over."""
    first = -1
    for i, a in enumerate(avail):
        if first < 0 and a > 0:
            first = i
        loads[i] = min(total, a * 100 // normalized)
        total -= loads[i]
    return first, total


def _shares(hosts: Sequence[int], nodes: Sequence[Mapping[str, Any]], *, level_hosts: Sequence[int],
            locality_weighted: bool, factor: int) -> dict[int, Fraction]:
    """Traffic share of each host of ``hosts`` inside its priority level (sums to 1)."""
    def by_weight(idx: Iterable[int]) -> dict[int, Fraction]:
        idx = list(idx)
        total = sum(int(nodes[i]["weight"]) for i in idx)
        if total <= 0:
            return {}
        return {i: Fraction(int(nodes[i]["weight"]), total) for i in idx}

    if not locality_weighted:
        return by_weight(hosts)
    chosen: dict[tuple[str, str, str], list[int]] = {}
    for i in hosts:
        chosen.setdefault(_locality_key(nodes[i]), []).append(i)
    all_per_loc: dict[tuple[str, str, str], int] = {}
    for i in level_hosts:
        k = _locality_key(nodes[i])
        all_per_loc[k] = all_per_loc.get(k, 0) + 1
    eff: dict[tuple[str, str, str], Fraction] = {}
    for k, idx in chosen.items():
        lw = _md(nodes[idx[0]], "locality_weight", 0)
        lw = int(lw) if isinstance(lw, int) else 0
        avail = min(Fraction(1), Fraction(factor * len(idx), 100 * all_per_loc[k]))
        if lw > 0 and avail > 0:
            eff[k] = lw * avail
    total_eff = sum(eff.values(), Fraction(0))
    if total_eff == 0:
        return by_weight(hosts)  # no locality can be picked: Envoy balances over the host set
    out: dict[int, Fraction] = {}
    for k, w in eff.items():
        for i, s in by_weight(chosen[k]).items():
            out[i] = w / total_eff * s
    return out


def _int_weights(shares: Sequence[Fraction]) -> list[int]:
    """Integer weights >= 1 with the ratios of ``shares`` (exact when small enough)."""
    if not shares:
        return []
    lcm = 1
    for s in shares:
        lcm = lcm * s.denominator // math.gcd(lcm, s.denominator)
    ints = [int(s * lcm) for s in shares]
    g = 0
    for v in ints:
        g = math.gcd(g, v)
    ints = [v // g for v in ints] if g else ints
    if max(ints) <= _WEIGHT_SCALE:
        return ints
    top = max(shares)
    return [max(1, round(s / top * _WEIGHT_SCALE)) for s in shares]


def select_nodes(nodes: Sequence[Mapping[str, Any]], panic_threshold: float = DEFAULT_PANIC_THRESHOLD, *,
                 locality_weighted: bool = False, fail_traffic_on_panic: bool = False) -> list[dict[str, Any]]:
    """The APISIX nodes that carry a cluster's traffic as Envoy would, from ``translate_cla``
    output (see the module docstring).  ``panic_threshold`` is the cluster's
    ``healthy_panic_threshold`` in percent; ``fail_traffic_on_panic``: a level in panic gets
    no host (zone_aware_lb_config).  The input is not modified."""
    if not nodes:
        return []
    factor = int(_md(nodes[0], "overprovisioning_factor", DEFAULT_OVERPROVISIONING_FACTOR))
    weighted = bool(_md(nodes[0], "weighted_priority_health", False))
    by_prio: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        by_prio.setdefault(envoy_priority(n), []).append(i)
    prios = sorted(by_prio)
    levels = [by_prio[p] for p in prios]
    healthy = [[i for i in lv if _status(nodes[i]) in HEALTHY_STATUSES] for lv in levels]
    degraded = [[i for i in lv if _status(nodes[i]) in DEGRADED_STATUSES] for lv in levels]

    def measure(idx: Sequence[int]) -> int:
        return sum(int(nodes[i]["weight"]) for i in idx) if weighted else len(idx)

    health: list[int] = []
    degr: list[int] = []
    for lv, h, d in zip(levels, healthy, degraded):
        total = measure(lv)
        health.append(min(100, factor * measure(h) // total) if total else 0)
        degr.append(min(100, factor * measure(d) // total) if total else 0)
    normalized = min(100, sum(health) + sum(degr))
    threshold = min(100, int(math.floor(panic_threshold + 0.5))) if panic_threshold > 0 else 0
    if threshold == 0 and normalized == 0:
        return []  # panic disabled and nothing available: Envoy answers 503 no healthy upstream
    panic = [False if normalized == 100 else
             100.0 * (len(h) + len(d)) / len(lv) < threshold
             for lv, h, d in zip(levels, healthy, degraded)]
    hload = [0] * len(levels)
    dload = [0] * len(levels)
    if all(panic):
        total_hosts = sum(len(lv) for lv in levels)
        left = 100
        for k, lv in enumerate(levels):
            hload[k] = 100 * len(lv) // total_hosts
            left -= hload[k]
        hload[0] += left  # every level here has hosts: the first is the first non-empty one
    else:
        first_h, left = _distribute(hload, health, 100, normalized)
        first_d, left = _distribute(dload, degr, left, normalized)
        if left:
            if first_h >= 0:
                hload[first_h] += left
            else:
                dload[first_d] += left
    share: dict[int, Fraction] = {}
    for k, lv in enumerate(levels):
        for load, src in ((hload[k], healthy[k]), (dload[k], degraded[k])):
            if load == 0:
                continue
            if panic[k]:
                if fail_traffic_on_panic:
                    continue
                part = _shares(lv, nodes, level_hosts=lv, locality_weighted=False, factor=factor)
            else:
                part = _shares(src, nodes, level_hosts=lv, locality_weighted=locality_weighted, factor=factor)
            for i, s in part.items():
                share[i] = share.get(i, Fraction(0)) + Fraction(load, 100) * s
    loaded = [i for i in sorted(share) if share[i] > 0]
    if not loaded:
        return []
    out: list[dict[str, Any]] = []
    top_level = min(envoy_priority(nodes[i]) for i in loaded)
    for i, w in zip(loaded, _int_weights([share[i] for i in loaded])):
        out.append({**nodes[i], "weight": w, "priority": -top_level})
    # Failover: lower Envoy priorities that carry no load keep their own (lower) group.
    for k, p in enumerate(prios):
        if p <= top_level or hload[k] or dload[k]:
            continue
        src = healthy[k] or degraded[k]
        if not src:
            continue
        part = _shares(src, nodes, level_hosts=levels[k], locality_weighted=locality_weighted, factor=factor)
        idx = [i for i in src if part.get(i, Fraction(0)) > 0]
        for i, w in zip(idx, _int_weights([part[i] for i in idx])):
            out.append({**nodes[i], "weight": w, "priority": -p})
    return out
