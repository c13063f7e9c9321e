"""xDS ``Cluster`` → an APISIX upstream conf plus the mesh facts Meshgate needs (pure).

:func:`translate_cluster` returns a plain JSON-able dict that
``meshgate.proxy.runtime.UpstreamRuntime`` compiles once nodes are attached
(:func:`meshgate.xds.translate.upstream.upstream_conf`)::

    {
      "id": name, "name": name,              # the xDS cluster name, e.g. outbound|9080||reviews...
      "type": "roundrobin" | "least_conn" | "chash",
      "hash_on": "vars", "key": "xds_hash_key",  # chash only: the route hash policy's key
      "nodes": [...],                        # STATIC / STRICT_DNS / LOGICAL_DNS: from the inline
                                             # load_assignment via select_nodes; EDS and
                                             # ORIGINAL_DST: [] (EDS nodes come from upstream_conf)
      "timeout": {"connect": s, "send": 300.0, "read": 300.0},
      "retries": 0,                          # route retry policies own retries (Envoy)
      "pass_host": "pass",                   # Envoy keeps Host unless the route rewrites it
      "scheme": "http" | "https",            # https when the cluster transport_socket is TLS
      "keepalive_pool": {"size": 320, "idle_timeout": s, "requests": n},
      "checks": {"active": {...}, "passive": {...}},   # only with outlier_detection
      "xds": {...}                           # mesh facts, below
    }

``xds`` (every key always present):

* ``type``: ``EDS`` | ``STATIC`` | ``STRICT_DNS`` | ``LOGICAL_DNS`` | ``ORIGINAL_DST``;
  ``eds_service_name``: the EDS resource name to subscribe (``service_name`` or the cluster
  name) or None; ``static_nodes``: nodes came from the inline load_assignment;
* ``lb_policy``: Envoy's policy name (``LEAST_REQUEST``, ...); ``hash``: ring/maglev facts or
  None; ``least_request``: ``{choice_count, active_request_bias}`` or None; ``slow_start``:
  ``{window, aggression, min_weight_percent}`` or None (Istio warmupDurationSecs; not applied);
* ``original_dst``: connect to the connection's original destination (ORIGINAL_DST /
  CLUSTER_PROVIDED); ``original_dst_lb``: ``{use_http_header, http_header_name,
  upstream_port_override}`` or None; ``bind_source``: ``{"address", "port"}`` of
  ``upstream_bind_config`` (127.0.0.6 on inbound clusters) or None;
* ``passthrough``: PassthroughCluster / InboundPassthroughClusterIpv4/Ipv6; ``blackhole``: a
  static cluster without endpoints (BlackHoleCluster): answer 503 like Envoy;
* ``subset``: ``{"direction", "port", "subset", "host", "sni_dnat"}`` parsed from an Istio
  name (``outbound|9080|v1|reviews.default.svc.cluster.local``, ``inbound|8080||``,
  ``outbound_.9080_.v1_.reviews...``) or None; ``istio``: ``filter_metadata["istio"]``
  (``services``, ``config``, ``subset``, ``default_original_port``) or {};
* ``http2``: talk HTTP/2 upstream (explicit http2 or h2 ALPN auto); ``use_downstream_protocol``:
  HTTP/2 only when the downstream is HTTP/2; ``http_protocol``: ``http1`` | ``http2`` |
  ``downstream`` | ``auto``; ``http_options``: ``{idle_timeout, max_requests_per_connection,
  max_connection_duration, max_headers_count, max_concurrent_streams, auto_sni,
  auto_san_validation}``; ``extension_protocol_options``: other typed_extension_protocol_options
  keys (recorded only);
* ``tls``: facts of a TLS cluster transport_socket (``sni``, ``alpn``, ``certificate_sds``,
  ``client_certificate``, ``validation_sds``, ``san``, ``trusted_ca``, ``verify``,
  ``istio_mutual`` (SDS ``default`` + ``ROOTCA``), ``min_version``, ``max_version``) or
  None; ``proxy_protocol``: version of an upstream PROXY protocol socket or None;
  ``transport_socket_matches``: ``[{"name", "match", "transport", "tls"}]`` in order
  (auto-mTLS ``tlsMode-istio`` / ``tlsMode-disabled``); mesh mTLS is out of scope for now,
  so an endpoint matching ``tlsMode-istio`` is still spoken to in plaintext;
* ``circuit_breakers``: ``{"default": {...}, "high": {...}?}`` with ``max_connections``,
  ``max_pending_requests``, ``max_requests``, ``max_retries`` (Envoy defaults 1024/1024/1024/3
  filled in), ``max_connection_pools``, ``track_remaining``, ``retry_budget``, plus
  ``per_host_max_connections``;
* ``outlier``: the outlier_detection settings with Envoy's defaults or None;
* ``panic_threshold``: healthy_panic_threshold percent (Envoy default 50.0);
  ``locality_weighted``: locality_weighted_lb_config set; ``fail_traffic_on_panic``;
* ``dns``: ``{lookup_family, refresh_rate, respect_dns_ttl}`` for DNS clusters or None;
* ``filters``: upstream network filter names (istio.metadata_exchange...: ignored);
  ``health_checks``: Envoy active health checks as JSON (recorded, not applied);
  ``lb_subset``: lb_subset_config as JSON or None (not applied);
* ``per_connection_buffer_limit_bytes``, ``tcp_keepalive``: recorded or None;
* ``warming``: EDS not received yet (set by upstream_conf); ``no_healthy``: endpoints exist but
  none may be used (503 "no healthy upstream"); ``endpoints``: how many endpoints were
  translated (before selection); ``skipped_endpoints``: pipe / internal addresses left out of
  a static cluster (the bootstrap's sds-grpc / xds-grpc).

Approximations, and why
-----------------------
* ``lb_policy``: ROUND_ROBIN → ``roundrobin`` (Envoy's weighted RR; nginx's smooth WRR gives
  the same shares); LEAST_REQUEST → ``least_conn`` (APISIX scans for the lowest
  (active+1)/weight where Envoy samples ``choice_count`` = 2 random hosts: same intent, less
  randomness); RANDOM → ``roundrobin`` (no random balancer; WRR gives the same long-run shares
  with lower variance); RING_HASH / MAGLEV → ``chash`` keyed on the key the route's hash
  policy computes (the request variable ``xds_hash_key``), else the client address (Envoy
  picks a random host when no hash is computed; APISIX falls back to the client address —
  sticky per client instead of random); CLUSTER_PROVIDED →
  ``roundrobin`` placeholder with ``xds.original_dst`` (no nodes: the destination is the
  connection's); LOAD_BALANCING_POLICY_CONFIG: the first known policy of
  ``load_balancing_policy`` (round_robin, least_request, random, ring_hash, maglev,
  cluster_provided, client_side_weighted_round_robin → roundrobin).
* ``timeout``: ``connect`` = connect_timeout (Envoy default 5 s; sub-second kept).  Envoy has
  no per-upstream send/read timeouts; its default HCM ``stream_idle_timeout`` (5 min) is the
  closest analogue of nginx's proxy send/read timeouts, so both are 300 s; route timeouts
  override them.
* ``keepalive_pool``: ``idle_timeout`` = common_http_protocol_options.idle_timeout (Envoy
  default 1 h; 0 = never → one year), ``requests`` = max_requests_per_connection (Envoy default unlimited →
  2**31 - 1); ``size`` stays APISIX's 320 (Envoy does not cap idle connections; the
  max_connections circuit breaker caps all of them).
* outlier_detection → APISIX ``checks`` (APISIX requires ``active`` with ``passive``):
  - passive ``unhealthy.http_statuses`` = 500–599 with ``http_failures`` = consecutive_5xx when
    that detector is enforced (enforcing_consecutive_5xx > 0, Envoy default 100; any
    enforcing percentage > 0 is treated as 100), else 502/503/504 with
    consecutive_gateway_failure when that one is (enforcing default 0);
  - passive ``healthy.http_statuses`` = every other status with ``successes`` = 1, so that any
    non-failure response resets the failure count, which makes APISIX's counters
    *consecutive* like Envoy's;
  - connect failures and timeouts count as 5xx in Envoy unless
    split_external_local_origin_errors: ``tcp_failures`` = ``timeouts`` = the same threshold
    (with the split: consecutive_local_origin_failure).  APISIX keeps one counter per kind
    where Envoy keeps one for all, so mixed sequences (3 x 503 + 2 resets) eject later;
  - when both 5xx and gateway detectors are enforced the 5xx one is used (gateway errors are
    5xx; a lower gateway threshold is not modelled);
  - re-admission: Envoy un-ejects after base_ejection_time (x ejection count, capped at
    max_ejection_time); here an active TCP probe runs on unhealthy nodes only, every
    base_ejection_time, and one successful connect re-admits (``healthy.interval`` 0 = never
    probe healthy nodes, active failure thresholds 0 = probes never eject);
  - not modelled (recorded in ``xds.outlier``): max_ejection_percent (Envoy default 10%:
    APISIX may eject every node, then uses them all), the multiplied ejection time,
    success-rate and failure-percentage detection, the ``interval`` sweep; thresholds above
    254 are clamped to 254 (APISIX's range).
* ``panic_threshold`` and ``locality_weighted`` are applied to EDS nodes by
  ``endpoint.select_nodes`` (see its docstring).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

# Imported for their side effect too: they register the message types that the Any fields
# of a Cluster (transport sockets, protocol options, load-balancing policies) unpack into.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.load_balancing_policies.cluster_provided.v3 import cluster_provided_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshgate.errors import ConfigError

from .endpoint import DEFAULT_PANIC_THRESHOLD, _translate, select_nodes

__all__ = [
    "translate_cluster",
    "PASSTHROUGH_CLUSTERS",
    "BLACKHOLE_CLUSTER",
    "DEFAULT_SEND_READ_TIMEOUT",
]

PASSTHROUGH_CLUSTERS = frozenset({"PassthroughCluster", "InboundPassthroughClusterIpv4",
                                  "InboundPassthroughClusterIpv6"})
BLACKHOLE_CLUSTER = "BlackHoleCluster"
DEFAULT_SEND_READ_TIMEOUT = 300.0   # Envoy HCM stream_idle_timeout default
DEFAULT_CONNECT_TIMEOUT = 5.0       # Envoy connect_timeout default
DEFAULT_IDLE_TIMEOUT = 3600.0       # Envoy common_http_protocol_options.idle_timeout default
UNLIMITED_REQUESTS = 2**31 - 1
NO_IDLE_TIMEOUT = 365 * 86400.0     # Envoy idle_timeout 0 = never close idle connections
_MAX_THRESHOLD = 254                # APISIX health counters: 1..254

# Keeps the side-effect imports visibly used.
_REGISTERED = (raw_buffer_pb2, cluster_provided_pb2, least_request_pb2, maglev_pb2, random_pb2, ring_hash_pb2,
               round_robin_pb2)
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_RAW = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_PROXY_PROTOCOL = "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"
_LB_POLICIES = {
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin": "ROUND_ROBIN",
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest": "LEAST_REQUEST",
    "envoy.extensions.load_balancing_policies.random.v3.Random": "RANDOM",
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash": "RING_HASH",
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev": "MAGLEV",
    "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided": "CLUSTER_PROVIDED",
    "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3."
    "ClientSideWeightedRoundRobin": "ROUND_ROBIN",
}
_BALANCER = {"ROUND_ROBIN": "roundrobin", "LEAST_REQUEST": "least_conn", "RANDOM": "roundrobin",
             "RING_HASH": "chash", "MAGLEV": "chash", "CLUSTER_PROVIDED": "roundrobin"}
_SNI_DNAT = re.compile(r"^(outbound|inbound)_\.(\d+)_\.([^_]*)_\.(.+)$")


def _dur(d: Any) -> float:
    return int(d.seconds) + int(d.nanos) / 1e9


def _u32(msg: Any, field: str, default: int) -> int:
    return int(getattr(msg, field).value) if msg.HasField(field) else default


def _type_name(any_msg: Any) -> str:
    return str(any_msg.type_url).rpartition("/")[2]


def _to_json(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _parse_name(name: str) -> dict[str, Any] | None:
    """Istio's cluster name → direction / port / subset / host (section 9 of istio-xds.md)."""
    parts = name.split("|")
    if len(parts) == 4 and parts[0] in ("outbound", "inbound", "inbound-vip", "outbound-vip"):
        port = int(parts[1]) if parts[1].isdigit() else None
        return {"direction": parts[0], "port": port, "subset": parts[2], "host": parts[3], "sni_dnat": False}
    m = _SNI_DNAT.match(name)
    if m:
        return {"direction": m.group(1), "port": int(m.group(2)), "subset": m.group(3), "host": m.group(4),
                "sni_dnat": True}
    return None


def _tls_facts(ctx: Any) -> dict[str, Any]:
    common = ctx.common_tls_context
    validation: Any = None
    validation_sds: str | None = None
    if common.HasField("combined_validation_context"):
        validation = common.combined_validation_context.default_validation_context
        validation_sds = common.combined_validation_context.validation_context_sds_secret_config.name or None
    elif common.HasField("validation_context"):
        validation = common.validation_context
    elif common.HasField("validation_context_sds_secret_config"):
        validation_sds = common.validation_context_sds_secret_config.name or None
    san: list[dict[str, Any]] = []
    trusted_ca: str | None = None
    if validation is not None:
        san = [_to_json(m) for m in validation.match_typed_subject_alt_names]
        san += [{"matcher": _to_json(m)} for m in validation.match_subject_alt_names]
        if validation.HasField("trusted_ca"):
            ca = validation.trusted_ca
            trusted_ca = ca.filename or ("inline" if ca.inline_bytes or ca.inline_string else None)
    params = common.tls_params
    return {
        "sni": ctx.sni or None,
        "alpn": list(common.alpn_protocols),
        "certificate_sds": [s.name for s in common.tls_certificate_sds_secret_configs],
        "client_certificate": bool(common.tls_certificates),
        "validation_sds": validation_sds,
        "san": san,
        "trusted_ca": trusted_ca,
        # Envoy verifies the peer whenever a validation context is configured.
        "verify": validation is not None or validation_sds is not None,
        # Istio mesh mTLS (auto-mTLS or DestinationRule ISTIO_MUTUAL): the workload certificate
        # and trust bundle come over SDS as "default" / "ROOTCA".
        "istio_mutual": "default" in [s.name for s in common.tls_certificate_sds_secret_configs]
        and validation_sds == "ROOTCA",
        "min_version": params.DESCRIPTOR.fields_by_name["tls_minimum_protocol_version"].enum_type
        .values_by_number[params.tls_minimum_protocol_version].name,
        "max_version": params.DESCRIPTOR.fields_by_name["tls_maximum_protocol_version"].enum_type
        .values_by_number[params.tls_maximum_protocol_version].name,
    }


def _transport(ts: Any, pointer: str, fail: Callable[[str, str], ConfigError]) -> dict[str, Any]:
    """A TransportSocket as ``{"kind": "raw_buffer"|"tls"|"proxy_protocol"|"unknown", ...}``."""
    tname = _type_name(ts.typed_config) if ts.HasField("typed_config") else ""
    name = ts.name
    if tname == _TLS or (not tname and name == "envoy.transport_sockets.tls"):
        ctx = tls_pb2.UpstreamTlsContext()
        if tname and not ts.typed_config.Unpack(ctx):
            raise fail(f"{pointer}/typed_config", "cannot decode UpstreamTlsContext")
        return {"kind": "tls", "tls": _tls_facts(ctx)}
    if tname == _RAW or (not tname and name in ("envoy.transport_sockets.raw_buffer", "raw_buffer", "")):
        return {"kind": "raw_buffer"}
    if tname == _PROXY_PROTOCOL:
        pp = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport()
        ts.typed_config.Unpack(pp)
        inner = _transport(pp.transport_socket, f"{pointer}/typed_config/transport_socket", fail)
        version = pp.config.DESCRIPTOR.fields_by_name["version"].enum_type.values_by_number[pp.config.version].name
        return {**inner, "proxy_protocol": version}
    return {"kind": "unknown", "name": name, "type": tname}


def _outlier(od: Any, connect: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Envoy's outlier detection with its defaults, and the APISIX ``checks`` approximating it
    (None when no consecutive detector is enforced)."""
    rec: dict[str, Any] = {
        "consecutive_5xx": _u32(od, "consecutive_5xx", 5),
        "enforcing_consecutive_5xx": _u32(od, "enforcing_consecutive_5xx", 100),
        "consecutive_gateway_failure": _u32(od, "consecutive_gateway_failure", 5),
        "enforcing_consecutive_gateway_failure": _u32(od, "enforcing_consecutive_gateway_failure", 0),
        "split_external_local_origin_errors": bool(od.split_external_local_origin_errors),
        "consecutive_local_origin_failure": _u32(od, "consecutive_local_origin_failure", 5),
        "enforcing_consecutive_local_origin_failure": _u32(od, "enforcing_consecutive_local_origin_failure", 100),
        "interval": _dur(od.interval) if od.HasField("interval") else 10.0,
        "base_ejection_time": _dur(od.base_ejection_time) if od.HasField("base_ejection_time") else 30.0,
        "max_ejection_time": _dur(od.max_ejection_time) if od.HasField("max_ejection_time") else 300.0,
        "max_ejection_percent": _u32(od, "max_ejection_percent", 10),
        "enforcing_success_rate": _u32(od, "enforcing_success_rate", 100),
        "enforcing_failure_percentage": _u32(od, "enforcing_failure_percentage", 0),
    }
    c5 = rec["consecutive_5xx"] if rec["enforcing_consecutive_5xx"] > 0 else 0
    cg = rec["consecutive_gateway_failure"] if rec["enforcing_consecutive_gateway_failure"] > 0 else 0
    if c5:
        bad = list(range(500, 600))
        http = c5
    elif cg:
        bad = [502, 503, 504]
        http = cg
    else:
        bad = [500, 502, 503, 504]  # unused: http_failures 0 disables the counter
        http = 0
    if rec["split_external_local_origin_errors"]:
        local = rec["consecutive_local_origin_failure"] if rec["enforcing_consecutive_local_origin_failure"] else 0
    else:
        local = http
    http, local = min(http, _MAX_THRESHOLD), min(local, _MAX_THRESHOLD)
    rec["modelled"] = {"http_statuses": "5xx" if c5 else ("gateway" if cg else None), "http_failures": http,
                       "tcp_failures": local, "timeouts": local}
    if not http and not local:
        return rec, None
    good = [s for s in range(100, 600) if s not in set(bad)]
    base = rec["base_ejection_time"] if rec["base_ejection_time"] > 0 else 30.0
    checks = {
        "active": {
            "type": "tcp",
            "timeout": connect,
            "healthy": {"interval": 0, "successes": 1},
            "unhealthy": {"interval": base, "http_failures": 0, "tcp_failures": 0, "timeouts": 0},
        },
        "passive": {
            "type": "http",
            "healthy": {"http_statuses": good, "successes": 1},
            "unhealthy": {"http_statuses": bad, "http_failures": http, "tcp_failures": local, "timeouts": local},
        },
    }
    return rec, checks


def _circuit_breakers(c: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cb = c.circuit_breakers
    for t in cb.thresholds:
        prio = "high" if t.priority == 1 else "default"
        entry: dict[str, Any] = {
            "explicit": True,      # configured (a DestinationRule connectionPool), not Envoy's defaults
            "max_connections": _u32(t, "max_connections", 1024),
            "max_pending_requests": _u32(t, "max_pending_requests", 1024),
            "max_requests": _u32(t, "max_requests", 1024),
            "max_retries": _u32(t, "max_retries", 3),
            "max_connection_pools": _u32(t, "max_connection_pools", 0) or None,
            "track_remaining": bool(t.track_remaining),
            "retry_budget": None,
        }
        if t.HasField("retry_budget"):
            rb = t.retry_budget
            entry["retry_budget"] = {
                "budget_percent": rb.budget_percent.value if rb.HasField("budget_percent") else 20.0,
                "min_retry_concurrency": _u32(rb, "min_retry_concurrency", 3),
            }
        out.setdefault(prio, entry)
    out.setdefault("default", {"explicit": False, "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024,
                               "max_retries": 3, "max_connection_pools": None, "track_remaining": False,
                               "retry_budget": None})
    per_host = [_u32(t, "max_connections", 0) for t in cb.per_host_thresholds]
    out["per_host_max_connections"] = per_host[0] if per_host and per_host[0] else None
    return out


def _http_options(c: Any, fail: Callable[[str, str], ConfigError]) -> tuple[dict[str, Any], list[str]]:
    """HTTP protocol facts from HttpProtocolOptions (or the deprecated Cluster fields)."""
    protocol = "http1"
    options: dict[str, Any] = {"idle_timeout": None, "max_requests_per_connection": None,
                               "max_connection_duration": None, "max_headers_count": None,
                               "max_concurrent_streams": None, "auto_sni": False, "auto_san_validation": False}
    others: list[str] = []

    def common(opts: Any) -> None:
        if opts.HasField("idle_timeout"):
            options["idle_timeout"] = _dur(opts.idle_timeout)
        if opts.HasField("max_requests_per_connection"):
            options["max_requests_per_connection"] = int(opts.max_requests_per_connection.value)
        if opts.HasField("max_connection_duration"):
            options["max_connection_duration"] = _dur(opts.max_connection_duration)
        if opts.HasField("max_headers_count"):
            options["max_headers_count"] = int(opts.max_headers_count.value)

    def h2(opts: Any) -> None:
        if opts.HasField("max_concurrent_streams"):
            options["max_concurrent_streams"] = int(opts.max_concurrent_streams.value)

    # Deprecated v3 Cluster fields (older istiod, Istio <= 1.9 dumps).
    if c.HasField("http2_protocol_options"):
        protocol = "http2"
        h2(c.http2_protocol_options)
    if c.protocol_selection == 1:  # USE_DOWNSTREAM_PROTOCOL
        protocol = "downstream"
    if c.HasField("common_http_protocol_options"):
        common(c.common_http_protocol_options)
    if c.HasField("max_requests_per_connection"):
        options["max_requests_per_connection"] = int(c.max_requests_per_connection.value)
    for key, value in c.typed_extension_protocol_options.items():
        if key != _HTTP_OPTIONS and _type_name(value) != _HTTP_OPTIONS:
            others.append(key)
            continue
        hpo = http_protocol_options_pb2.HttpProtocolOptions()
        if not value.Unpack(hpo):
            raise fail(f"/typed_extension_protocol_options/{key}", "cannot decode HttpProtocolOptions")
        if hpo.HasField("common_http_protocol_options"):
            common(hpo.common_http_protocol_options)
        if hpo.HasField("upstream_http_protocol_options"):
            u = hpo.upstream_http_protocol_options
            options["auto_sni"] = bool(u.auto_sni)
            options["auto_san_validation"] = bool(u.auto_san_validation)
        which = hpo.WhichOneof("upstream_protocol_options")
        if which == "explicit_http_config":
            if hpo.explicit_http_config.WhichOneof("protocol_config") == "http2_protocol_options":
                protocol = "http2"
                h2(hpo.explicit_http_config.http2_protocol_options)
            else:
                protocol = "http1"
        elif which == "use_downstream_protocol_config":
            protocol = "downstream"
            if hpo.use_downstream_protocol_config.HasField("http2_protocol_options"):
                h2(hpo.use_downstream_protocol_config.http2_protocol_options)
        elif which == "auto_config":
            protocol = "auto"
            if hpo.auto_config.HasField("http2_protocol_options"):
                h2(hpo.auto_config.http2_protocol_options)
    return {"http_protocol": protocol, "http_options": options}, others


def _lb_policy(c: Any, fail: Callable[[str, str], ConfigError]) -> tuple[str, Any]:
    """Envoy's policy name and its config message (or None)."""
    if c.HasField("load_balancing_policy") and len(c.load_balancing_policy.policies):
        seen = []
        for p in c.load_balancing_policy.policies:
            tname = _type_name(p.typed_extension_config.typed_config)
            seen.append(tname or p.typed_extension_config.name)
            if tname in _LB_POLICIES:
                return _LB_POLICIES[tname], p.typed_extension_config.typed_config
        raise fail("/load_balancing_policy/policies",
                   f"no supported policy among {', '.join(seen)}: expected round_robin, least_request, random, "
                   "ring_hash, maglev or cluster_provided")
    name = cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)
    if name == "LOAD_BALANCING_POLICY_CONFIG":
        raise fail("/load_balancing_policy", "required when lb_policy is LOAD_BALANCING_POLICY_CONFIG")
    return name, None


def translate_cluster(c: Any) -> dict[str, Any]:
    """Translate one xDS ``Cluster`` (see the module docstring for the output)."""
    name = str(c.name)
    if not name:
        raise ConfigError("/name", "required: a non-empty cluster name", kind="clusters")

    def fail(pointer: str, message: str) -> ConfigError:
        return ConfigError(pointer, message, kind="clusters", id=name)

    if c.WhichOneof("cluster_discovery_type") == "cluster_type":
        ct = c.cluster_type
        raise fail("/cluster_type", f"custom cluster type {ct.name or _type_name(ct.typed_config)!r} is not "
                   "supported: expected type STATIC, STRICT_DNS, LOGICAL_DNS, EDS or ORIGINAL_DST")
    dtype = cluster_pb2.Cluster.DiscoveryType.Name(c.type)
    original_dst = dtype == "ORIGINAL_DST"

    policy, policy_msg = _lb_policy(c, fail)
    if policy == "CLUSTER_PROVIDED" and not original_dst:
        raise fail("/lb_policy", f"CLUSTER_PROVIDED is only valid for ORIGINAL_DST clusters, not {dtype}: expected "
                   "ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV")
    balancer = _BALANCER[policy]

    connect = DEFAULT_CONNECT_TIMEOUT
    if c.HasField("connect_timeout"):
        connect = _dur(c.connect_timeout)
        if connect <= 0:
            raise fail("/connect_timeout", f"invalid duration {connect}s: expected > 0")

    xds: dict[str, Any] = {
        "type": dtype,
        "eds_service_name": None,
        "static_nodes": dtype in ("STATIC", "STRICT_DNS", "LOGICAL_DNS"),
        "lb_policy": policy,
        "hash": None,
        "least_request": None,
        "slow_start": None,
        "original_dst": original_dst,
        "original_dst_lb": None,
        "bind_source": None,
        "passthrough": name in PASSTHROUGH_CLUSTERS,
        "blackhole": False,
        "subset": _parse_name(name),
        "istio": {},
        "http2": False,
        "use_downstream_protocol": False,
        "tls": None,
        "proxy_protocol": None,
        "transport_socket_matches": [],
        "circuit_breakers": _circuit_breakers(c),
        "outlier": None,
        "panic_threshold": DEFAULT_PANIC_THRESHOLD,
        "locality_weighted": False,
        "fail_traffic_on_panic": False,
        "dns": None,
        "filters": [f.name for f in c.filters],
        "health_checks": [_to_json(h) for h in c.health_checks],
        "lb_subset": _to_json(c.lb_subset_config) if c.HasField("lb_subset_config") else None,
        "per_connection_buffer_limit_bytes": (int(c.per_connection_buffer_limit_bytes.value)
                                              if c.HasField("per_connection_buffer_limit_bytes") else None),
        "tcp_keepalive": (_to_json(c.upstream_connection_options.tcp_keepalive)
                          if c.HasField("upstream_connection_options")
                          and c.upstream_connection_options.HasField("tcp_keepalive") else None),
        "warming": False,
        "no_healthy": False,
        "endpoints": 0,
        "skipped_endpoints": 0,
    }
    if dtype == "EDS":
        xds["eds_service_name"] = c.eds_cluster_config.service_name or name

    # -- load-balancer details
    conf_extra: dict[str, Any] = {}
    if policy in ("RING_HASH", "MAGLEV"):
        # the key a route's hash_policy computes (proxy/mesh.py sets it per request); without
        # one, the balancer falls back to the client address
        conf_extra = {"hash_on": "vars", "key": "xds_hash_key"}
        h: dict[str, Any] = {"policy": policy, "minimum_ring_size": None, "maximum_ring_size": None,
                             "hash_function": None, "table_size": None, "use_hostname_for_hashing": False,
                             "hash_balance_factor": None}
        if policy == "RING_HASH" and c.HasField("ring_hash_lb_config"):
            r = c.ring_hash_lb_config
            h["minimum_ring_size"] = _u32(r, "minimum_ring_size", 1024)
            h["maximum_ring_size"] = _u32(r, "maximum_ring_size", 8388608)
            h["hash_function"] = cluster_pb2.Cluster.RingHashLbConfig.HashFunction.Name(r.hash_function)
        if policy == "MAGLEV" and c.HasField("maglev_lb_config"):
            h["table_size"] = _u32(c.maglev_lb_config, "table_size", 65537)
        if policy_msg is not None:
            h["config"] = _to_json(policy_msg)
        chc = c.common_lb_config.consistent_hashing_lb_config
        if c.common_lb_config.HasField("consistent_hashing_lb_config"):
            h["use_hostname_for_hashing"] = bool(chc.use_hostname_for_hashing)
            h["hash_balance_factor"] = _u32(chc, "hash_balance_factor", 0) or None
        xds["hash"] = h
    slow: Any = None
    if policy == "LEAST_REQUEST":
        lr = c.least_request_lb_config
        xds["least_request"] = {
            "choice_count": _u32(lr, "choice_count", 2),
            "active_request_bias": (float(lr.active_request_bias.default_value)
                                    if lr.HasField("active_request_bias") else 1.0),
        }
        if lr.HasField("slow_start_config"):
            slow = lr.slow_start_config
    elif policy == "ROUND_ROBIN" and c.round_robin_lb_config.HasField("slow_start_config"):
        slow = c.round_robin_lb_config.slow_start_config
    if slow is not None:
        xds["slow_start"] = {
            "window": _dur(slow.slow_start_window) if slow.HasField("slow_start_window") else None,
            "aggression": float(slow.aggression.default_value) if slow.HasField("aggression") else 1.0,
            "min_weight_percent": float(slow.min_weight_percent.value) if slow.HasField("min_weight_percent") else 10.0,
        }
    if original_dst:
        o = c.original_dst_lb_config
        xds["original_dst_lb"] = {
            "use_http_header": bool(o.use_http_header),
            "http_header_name": (o.http_header_name or "x-envoy-original-dst-host") if o.use_http_header else None,
            "upstream_port_override": _u32(o, "upstream_port_override", 0) or None,
        }
    if c.HasField("upstream_bind_config"):
        sa = c.upstream_bind_config.source_address
        xds["bind_source"] = {"address": sa.address, "port": int(sa.port_value)}

    # -- common_lb_config
    clc = c.common_lb_config
    if clc.HasField("healthy_panic_threshold"):
        xds["panic_threshold"] = float(clc.healthy_panic_threshold.value)
    xds["locality_weighted"] = clc.HasField("locality_weighted_lb_config")
    xds["fail_traffic_on_panic"] = bool(clc.zone_aware_lb_config.fail_traffic_on_panic)

    # -- metadata
    if c.HasField("metadata") and "istio" in c.metadata.filter_metadata:
        xds["istio"] = json_format.MessageToDict(c.metadata.filter_metadata["istio"])

    # -- protocols
    http, others = _http_options(c, fail)
    xds.update(http)
    xds["http2"] = http["http_protocol"] == "http2"
    xds["use_downstream_protocol"] = http["http_protocol"] == "downstream"
    xds["extension_protocol_options"] = others

    # -- transport
    scheme = "http"
    if c.HasField("transport_socket"):
        t = _transport(c.transport_socket, "/transport_socket", fail)
        if t["kind"] == "unknown":
            raise fail("/transport_socket", f"transport socket {t['name'] or t['type']!r} is not supported: expected "
                       "envoy.transport_sockets.tls (UpstreamTlsContext) or raw_buffer")
        if t["kind"] == "tls":
            scheme = "https"
            xds["tls"] = t["tls"]
            if "h2" in t["tls"]["alpn"] and xds["http_protocol"] == "auto":
                xds["http2"] = True
        xds["proxy_protocol"] = t.get("proxy_protocol")
    for i, m in enumerate(c.transport_socket_matches):
        t = _transport(m.transport_socket, f"/transport_socket_matches/{i}/transport_socket", fail)
        xds["transport_socket_matches"].append({
            "name": m.name,
            "match": json_format.MessageToDict(m.match) if m.HasField("match") else {},
            "transport": t["kind"] if t["kind"] != "unknown" else (t["name"] or t["type"]),
            "tls": t.get("tls"),
        })

    # -- health
    checks: dict[str, Any] | None = None
    if c.HasField("outlier_detection"):
        xds["outlier"], checks = _outlier(c.outlier_detection, connect)

    # -- DNS
    if dtype in ("STRICT_DNS", "LOGICAL_DNS"):
        xds["dns"] = {
            "lookup_family": cluster_pb2.Cluster.DnsLookupFamily.Name(c.dns_lookup_family),
            "refresh_rate": _dur(c.dns_refresh_rate) if c.HasField("dns_refresh_rate") else 5.0,
            "respect_dns_ttl": bool(c.respect_dns_ttl),
        }

    # -- static nodes
    nodes: list[dict[str, Any]] = []
    if xds["static_nodes"]:
        skipped: dict[str, int] = {}
        raw = _translate(c.load_assignment, prefix="/load_assignment", kind="clusters", id=name, stats=skipped)
        if dtype == "LOGICAL_DNS" and len(raw) > 1:
            raise fail("/load_assignment/endpoints",
                       f"LOGICAL_DNS clusters take exactly one endpoint, got {len(raw)}: expected one host name")
        if dtype == "STATIC":
            for n in raw:
                try:
                    ipaddress.ip_address(n["host"])
                except ValueError:
                    raise fail("/load_assignment/endpoints",
                               f"invalid address {n['host']!r}: STATIC clusters take IP addresses "
                               "(use STRICT_DNS for host names)") from None
        nodes = select_nodes(raw, xds["panic_threshold"], locality_weighted=xds["locality_weighted"],
                             fail_traffic_on_panic=xds["fail_traffic_on_panic"])
        xds["blackhole"] = not raw and not skipped   # (a pipe-only bootstrap cluster is not one)
        xds["skipped_endpoints"] = sum(skipped.values())
        xds["endpoints"] = len(raw)
        xds["no_healthy"] = bool(raw) and not nodes

    opts = xds["http_options"]
    conf: dict[str, Any] = {
        "id": name,
        "name": name,
        "type": balancer,
        **conf_extra,
        "nodes": nodes,
        "timeout": {"connect": connect, "send": DEFAULT_SEND_READ_TIMEOUT, "read": DEFAULT_SEND_READ_TIMEOUT},
        "retries": 0,
        "pass_host": "pass",
        "scheme": scheme,
        "keepalive_pool": {
            "size": 320,
            # Envoy: unset = 1 h, 0 = no idle timeout
            "idle_timeout": (DEFAULT_IDLE_TIMEOUT if opts["idle_timeout"] is None
                             else opts["idle_timeout"] or NO_IDLE_TIMEOUT),
            "requests": opts["max_requests_per_connection"] or UNLIMITED_REQUESTS,
        },
    }
    if checks is not None:
        conf["checks"] = checks
    conf["xds"] = xds
    return conf
