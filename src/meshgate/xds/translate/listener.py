"""Listener (LDS) → a mesh listener: addresses, filter chains and what each chain runs.

Pure: an xDS message in, a JSON-able dict out.  A chain runs an HTTP connection manager
(routes from RDS by name, or an inline route table), a TCP proxy to a cluster, or nothing
Meshgate can serve (then ``unsupported`` says why, and a connection that selects it is
closed, as Envoy closes a connection whose chain has no terminal filter).

Istio-only filters (``istio.metadata_exchange``, ``istio.stats``, ``istio.alpn``) and
the listener filters whose work Meshgate does itself (``original_dst``, ``tls_inspector``,
``http_inspector``: it sniffs the first bytes when a chain match needs them) are accepted
and ignored: a NACK would leave the proxy on stale config with no retry (istio-xds.md 4).
A filter that enforces policy Meshgate does not implement (RBAC, ext_authz, rate limits)
is refused with a NACK naming it: serving without the policy would let through traffic
the mesh owner denied.

Shape::

    listener {"name", "address", "port", "bind_to_port": bool, "use_original_dst": bool,
              "original_dst_filter": bool (the original_dst listener filter: match on the
              destination before capture, without handing the connection over),
              "direction": "UNSPECIFIED" | "INBOUND" | "OUTBOUND", "chains": [chain],
              "default_chain": chain | None, "sniff": bool}
    chain    {"name", "match": cmatch, "kind": "http" | "tcp" | "none", "tls": bool,
              "unsupported": str | None, "http": http | None, "tcp": tcp | None}
    cmatch   {"port": int | None, "dst": [[ip, len]], "direct_src": [[ip, len]],
              "source_type": "ANY" | "SAME_IP_OR_LOOPBACK" | "EXTERNAL", "src": [[ip, len]],
              "src_ports": [int], "sni": [str], "transport": str, "alpn": [str]}
    http     {"rds": str | None, "routes": route table | None (inline), "websocket": bool,
              "fault": fault | None, "cors": bool, "stat_prefix", "use_remote_address": bool,
              "xff_hops": int, "skip_xff_append": bool, "normalize_path": bool,
              "merge_slashes": bool, "stream_idle_timeout": float | None,
              "request_timeout": float | None, "idle_timeout": float | None,
              "server_name": str, "filters": [str]}
    tcp      {"cluster": str | None, "weighted": [[name, weight]], "idle_timeout": float,
              "stat_prefix"}

``sniff`` tells the runtime whether any chain matches on what only the first bytes reveal
(transport protocol, ALPN, SNI), so it reads them before choosing only when it must.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

from google.protobuf.message import DecodeError

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ...errors import ConfigError
from .route import _Ctx, _fault, duration, translate_route_config

__all__ = ["translate_listener", "HCM", "TCP_PROXY", "RDS_FETCH_TIMEOUT"]

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
RDS_FETCH_TIMEOUT = 15.0   # Envoy's initial_fetch_timeout when the config source sets none (seconds)
_HCM_URL = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_TCP_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_FAULT_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

# Network filters that carry no behaviour Meshgate must reproduce for routing (telemetry,
# peer metadata): accepted, ignored.
_IGNORED_NETWORK = ("istio.", "envoy.filters.network.metadata_exchange", "envoy.filters.network.wasm.stats")
# HTTP filters: the router is the terminal one; fault and cors are implemented from the
# per-route configs; Istio's own and gRPC stats are telemetry.
_IGNORED_HTTP = ("istio.", "envoy.filters.http.grpc_stats", "envoy.filters.http.wasm.stats")
_ROUTER = "envoy.filters.http.router"
_FAULT = "envoy.filters.http.fault"
_CORS = "envoy.filters.http.cors"
# gRPC-Web: a sidecar passes grpc-web requests to the workload as they are (the translation is the
# grpc-web plugin, on gateway routes and, through AmeshPluginConfig, on mesh routes).
_PASS_HTTP = ("envoy.filters.http.grpc_web",)
# Filters that enforce policy: refused even when marked optional (serving without them would
# let through traffic the mesh owner denied).
_POLICY_HTTP = ("envoy.filters.http.rbac", "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn",
                "envoy.filters.http.ratelimit", "envoy.filters.http.local_ratelimit", "envoy.filters.http.oauth2",
                "envoy.filters.http.basic_auth", "envoy.filters.http.ext_proc", "envoy.filters.http.wasm")
_LISTENER_FILTERS = ("envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector",
                     "envoy.filters.listener.http_inspector", "envoy.filters.listener.original_src")
_LISTENER_FILTER_URLS = ("OriginalDst", "TlsInspector", "HttpInspector")


def _err(name: str, pointer: str, message: str) -> ConfigError:
    return ConfigError(pointer, message, kind="listeners", id=name)


def _cidrs(name: str, pointer: str, ranges: Any) -> list[list[Any]]:
    out = []
    for i, r in enumerate(ranges):
        plen = r.prefix_len.value   # Envoy: an unset prefix_len is 0
        try:
            ip = ipaddress.ip_address(r.address_prefix)
        except ValueError:
            raise _err(name, f"{pointer}/{i}/address_prefix",
                       f"{r.address_prefix!r} is not an IP address") from None
        full = 32 if ip.version == 4 else 128
        if plen > full:
            raise _err(name, f"{pointer}/{i}/prefix_len", f"prefix length {plen} exceeds {full}")
        out.append([str(ip), int(plen)])
    return out


def _chain_match(name: str, pointer: str, m: lc.FilterChainMatch) -> dict[str, Any]:
    if m.address_suffix or m.HasField("suffix_len"):
        raise _err(name, pointer + "/address_suffix", "address_suffix matching is not supported")
    return {
        "port": m.destination_port.value if m.HasField("destination_port") else None,
        "dst": _cidrs(name, pointer + "/prefix_ranges", m.prefix_ranges),
        "direct_src": _cidrs(name, pointer + "/direct_source_prefix_ranges", m.direct_source_prefix_ranges),
        "source_type": lc.FilterChainMatch.ConnectionSourceType.Name(m.source_type),
        "src": _cidrs(name, pointer + "/source_prefix_ranges", m.source_prefix_ranges),
        "src_ports": list(m.source_ports),
        "sni": [s.lower() for s in m.server_names],
        "transport": m.transport_protocol,
        "alpn": list(m.application_protocols),
    }


def _unpack(name: str, pointer: str, f: Any, msg: Any, url: str) -> Any:
    if f.WhichOneof("config_type") != "typed_config":
        raise _err(name, pointer, f"filter {f.name!r} without a typed_config")
    if f.typed_config.type_url != url:
        raise _err(name, pointer + "/typed_config", f"filter {f.name!r}: expected {url}, got {f.typed_config.type_url}")
    try:
        f.typed_config.Unpack(msg)
    except DecodeError as e:
        raise _err(name, pointer + "/typed_config", f"cannot decode {url}: {e}") from None
    return msg


def _hcm(name: str, chain_name: str, pointer: str, h: hcm_pb2.HttpConnectionManager) -> dict[str, Any]:
    rspec = h.WhichOneof("route_specifier")
    rds = routes = None
    rds_timeout: float | None = RDS_FETCH_TIMEOUT
    if rspec == "rds":
        rds = h.rds.route_config_name
        if not rds:
            raise _err(name, pointer + "/rds/route_config_name", "RDS without a route_config_name")
        if h.rds.config_source.HasField("initial_fetch_timeout"):
            # how long the listener may warm waiting for this table; 0 (istiod's): no limit
            rds_timeout = h.rds.config_source.initial_fetch_timeout.ToTimedelta().total_seconds() or None
    elif rspec == "route_config":
        try:
            routes = translate_route_config(h.route_config, name=f"{name}/{chain_name}")
        except ConfigError as e:
            raise _err(name, f"{pointer}/route_config{e.pointer}", e.message) from None
    else:
        raise _err(name, pointer, f"HTTP connection manager with {rspec or 'no route specifier'}; "
                                  "expected rds or route_config")
    filters = []
    fault = None
    cors = False
    hf = list(h.http_filters)
    for i, f in enumerate(hf):
        p = f"{pointer}/http_filters/{i}"
        filters.append(f.name)
        if f.name == _ROUTER or f.typed_config.type_url.endswith("router.v3.Router"):
            if i != len(hf) - 1:
                raise _err(name, p, "the router filter must be the last HTTP filter")
            continue
        if f.name.startswith(_IGNORED_HTTP) or f.name in _PASS_HTTP:
            continue
        if f.name == _FAULT:
            if f.WhichOneof("config_type") == "typed_config" and f.typed_config.value:
                fm = _unpack(name, p, f, fault_pb2.HTTPFault(), _FAULT_URL)
                try:
                    fault = _fault(_Ctx(name), p + "/typed_config", fm)
                except ConfigError as e:
                    raise _err(name, e.pointer, e.message) from None
            continue
        if f.name == _CORS:
            cors = True
            continue
        if f.is_optional and not f.name.startswith(_POLICY_HTTP):
            continue   # Envoy skips an optional filter it does not know
        raise _err(name, p, f"HTTP filter {f.name!r} ({f.typed_config.type_url}) is not supported")
    if not hf or filters[-1] != _ROUTER and not hf[-1].typed_config.type_url.endswith("router.v3.Router"):
        raise _err(name, pointer + "/http_filters", "an HTTP connection manager needs the router filter last")
    cho = h.common_http_protocol_options
    return {
        "rds": rds, "rds_timeout": rds_timeout, "routes": routes,
        "websocket": any(u.upgrade_type.lower() == "websocket" and (not u.HasField("enabled") or u.enabled.value)
                         for u in h.upgrade_configs),
        "fault": fault, "cors": cors, "stat_prefix": h.stat_prefix,
        "use_remote_address": h.use_remote_address.value if h.HasField("use_remote_address") else False,
        "xff_hops": h.xff_num_trusted_hops, "skip_xff_append": h.skip_xff_append,
        "normalize_path": h.normalize_path.value if h.HasField("normalize_path") else False,
        "merge_slashes": h.merge_slashes,
        "stream_idle_timeout": duration(h.stream_idle_timeout) if h.HasField("stream_idle_timeout") else None,
        "request_timeout": duration(h.request_timeout) if h.HasField("request_timeout") else None,
        "idle_timeout": duration(cho.idle_timeout) if cho.HasField("idle_timeout") else None,
        "server_name": h.server_name or "envoy",
        "filters": filters,
    }


def _tcp(name: str, pointer: str, t: tcp_proxy_pb2.TcpProxy) -> dict[str, Any]:
    spec = t.WhichOneof("cluster_specifier")
    cluster = None
    weighted: list[list[Any]] = []
    if spec == "cluster":
        cluster = t.cluster
    elif spec == "weighted_clusters":
        weighted = [[c.name, c.weight] for c in t.weighted_clusters.clusters]
        if not weighted or sum(w for _, w in weighted) <= 0:
            raise _err(name, pointer + "/weighted_clusters", "weighted clusters sum to 0; expected a positive total")
    else:
        raise _err(name, pointer, "TCP proxy without a cluster; expected cluster or weighted_clusters")
    if t.HasField("tunneling_config"):
        raise _err(name, pointer + "/tunneling_config", "TCP tunneling over HTTP is not supported")
    return {"cluster": cluster, "weighted": weighted,
            "idle_timeout": duration(t.idle_timeout) if t.HasField("idle_timeout") else 3600.0,
            "stat_prefix": t.stat_prefix}


def _chain(name: str, pointer: str, c: lc.FilterChain) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "match": _chain_match(name, pointer + "/filter_chain_match",
                                                                   c.filter_chain_match),
                           "kind": "none", "tls": False, "unsupported": None, "http": None, "tcp": None}
    if c.HasField("transport_socket"):
        ts = c.transport_socket
        if ts.name in ("envoy.transport_sockets.tls", "tls") or ts.typed_config.type_url.endswith(
                "DownstreamTlsContext"):
            out["tls"] = True
            # Mesh mTLS (SDS certificates, SPIFFE checks) is not implemented yet: keep the
            # chain so matching stays Envoy's, never serve plaintext in its place.
            out["unsupported"] = "TLS termination on a mesh filter chain (mesh mTLS) is not implemented"
        elif not (ts.typed_config.type_url.endswith("RawBuffer") or (
                not ts.typed_config.type_url and ts.name in ("envoy.transport_sockets.raw_buffer", "raw_buffer"))):
            raise _err(name, pointer + "/transport_socket", f"transport socket {ts.name!r} is not supported")
    if c.use_proxy_proto.value:
        raise _err(name, pointer + "/use_proxy_proto", "PROXY protocol on filter chains is not supported")
    filters = list(c.filters)
    for i, f in enumerate(filters):
        p = f"{pointer}/filters/{i}"
        last = i == len(filters) - 1
        if f.name == HCM or f.typed_config.type_url == _HCM_URL:
            if not last:
                raise _err(name, p, "the HTTP connection manager must be the last network filter")
            out["kind"] = "http"
            out["http"] = _hcm(name, c.name or str(pointer.rsplit("/", 1)[-1]), p + "/typed_config",
                               _unpack(name, p, f, hcm_pb2.HttpConnectionManager(), _HCM_URL))
        elif f.name == TCP_PROXY or f.typed_config.type_url == _TCP_URL:
            if not last:
                raise _err(name, p, "the TCP proxy must be the last network filter")
            out["kind"] = "tcp"
            out["tcp"] = _tcp(name, p + "/typed_config", _unpack(name, p, f, tcp_proxy_pb2.TcpProxy(), _TCP_URL))
        elif f.name.startswith(_IGNORED_NETWORK):
            continue
        else:
            raise _err(name, p, f"network filter {f.name!r} ({f.typed_config.type_url}) is not supported")
    if out["kind"] == "none" and out["unsupported"] is None:
        out["unsupported"] = "filter chain without an HTTP connection manager or TCP proxy"
    return out


def _address(name: str, pointer: str, a: address_pb2.Address) -> tuple[str, int]:
    which = a.WhichOneof("address")
    if which != "socket_address":
        raise _err(name, pointer, f"{which or 'empty'} listener addresses are not supported; expected "
                                  "socket_address")
    sa = a.socket_address
    if sa.protocol != address_pb2.SocketAddress.TCP:
        raise _err(name, pointer + "/socket_address/protocol", "only TCP listeners are supported")
    if sa.WhichOneof("port_specifier") != "port_value":
        raise _err(name, pointer + "/socket_address", "named ports are not supported; expected port_value")
    try:
        ip = str(ipaddress.ip_address(sa.address))
    except ValueError:
        raise _err(name, pointer + "/socket_address/address", f"{sa.address!r} is not an IP address") from None
    return ip, int(sa.port_value)


def _match_keys(m: dict[str, Any]) -> itertools.product[tuple[Any, ...]]:
    """Every combination of single values a chain match accepts (an empty list: any), as
    Envoy expands them when it builds its matching tree; two chains sharing one combination
    are duplicates.  CIDRs compare as networks (host bits cleared)."""
    def nets(rows: list[list[Any]]) -> list[Any]:
        return [str(ipaddress.ip_network(f"{ip}/{plen}", strict=False)) for ip, plen in rows] or [None]
    return itertools.product([m["port"]], nets(m["dst"]), m["sni"] or [None], [m["transport"]],
                             m["alpn"] or [None], nets(m["direct_src"]), [m["source_type"]], nets(m["src"]),
                             m["src_ports"] or [None])


def translate_listener(lst: listener_pb2.Listener) -> dict[str, Any]:
    name = lst.name
    if not name:
        raise _err("", "/name", "listener without a name")
    if lst.HasField("filter_chain_matcher"):
        raise _err(name, "/filter_chain_matcher", "matcher-tree filter chain selection is not supported; "
                                                  "expected filter_chain_match")
    if lst.HasField("api_listener") or lst.HasField("internal_listener") or lst.HasField("udp_listener_config"):
        raise _err(name, "/", "API, internal and UDP listeners are not supported")
    addr, port = _address(name, "/address", lst.address)
    original_dst_filter = False
    for i, lf in enumerate(lst.listener_filters):
        if lf.name in _LISTENER_FILTERS or lf.typed_config.type_url.endswith(_LISTENER_FILTER_URLS):
            # Envoy's original_dst listener filter: the connection's destination is the one
            # before capture (virtualInbound matches its chains on it); no handoff
            if lf.name == "envoy.filters.listener.original_dst" or lf.typed_config.type_url.endswith("OriginalDst"):
                original_dst_filter = True
            continue
        raise _err(name, f"/listener_filters/{i}", f"listener filter {lf.name!r} is not supported")
    chains = [_chain(name, f"/filter_chains/{i}", c) for i, c in enumerate(lst.filter_chains)]
    seen: dict[tuple[Any, ...], int] = {}
    for i, c in enumerate(chains):
        for key in _match_keys(c["match"]):
            if key in seen and seen[key] != i:
                raise _err(name, f"/filter_chains/{i}/filter_chain_match",
                           f"filter chain {i} overlaps filter chain {seen[key]}: the same matching rules "
                           "(Envoy refuses duplicates)")
            seen[key] = i
    default = _chain(name, "/default_filter_chain", lst.default_filter_chain) \
        if lst.HasField("default_filter_chain") else None
    sniff = any(c["match"]["transport"] or c["match"]["alpn"] or c["match"]["sni"] for c in chains)
    return {
        "name": name, "address": addr, "port": port,
        "bind_to_port": lst.bind_to_port.value if lst.HasField("bind_to_port") else True,
        "use_original_dst": lst.use_original_dst.value if lst.HasField("use_original_dst") else False,
        "original_dst_filter": original_dst_filter,
        "direction": listener_pb2.Listener.DESCRIPTOR.fields_by_name["traffic_direction"].enum_type
        .values_by_number[lst.traffic_direction].name,
        "chains": chains, "default_chain": default, "sniff": sniff,
    }
