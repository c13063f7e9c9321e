"""Per-Snapshot compiled state of a worker.

A worker compiles each Snapshot once (DESIGN.md seam 2): the router, the per-route
view (service merge, upstream reference, timeouts, plugin chain) and one
:class:`UpstreamRuntime` (nodes, balancer, pool settings, TLS) per upstream.  A request
keeps the Runtime it started with, so a reload never changes a request mid-flight.
Upstream runtimes whose config is the very same object as in the previous version are
carried over, keeping balancer state (smooth-WRR position, least_conn counters, EWMA).
The TLS certificates (``tls``: the SNI table of the server ``ssls``, see tls.py) are
rebuilt only when the ssls changed, and then only the ssl objects that changed.
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from ..model import Resource, Snapshot
from ..plugins import Consumer, ConsumerSet, PluginChain, PluginRegistry
from ..router import Matcher, Router, compile_router
from ..upstream import Balancer, Node, create_balancer, default_retries, parse_nodes
from .breaker import cluster_limit
from .tls import SNITable, build_sni_table

__all__ = ["Runtime", "RouteRuntime", "UpstreamRuntime", "Timeouts", "build_runtime", "set_upstream_ca"]

log = logging.getLogger("meshgate.proxy")

DEFAULT_TIMEOUT = 60.0

# apisix.ssl.ssl_trusted_certificate: the CAs an upstream's certificate is verified against
# when its ``tls.verify`` is true (APISIX's lua_ssl_trusted_certificate); None: the system's
_UPSTREAM_CA: list[str | None] = [None]


def set_upstream_ca(path: str | None) -> None:
    """Set by the worker from the node config before it compiles anything."""
    _UPSTREAM_CA[0] = path


def _client_pair(ctx: ssl.SSLContext, cert: str, key: str, pointer: str, id: str) -> None:
    """Load a client certificate and key given as PEM text (ssl wants files: a private
    temporary one, removed at once)."""
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix="meshgate-client-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert.strip() + "\n" + key.strip() + "\n")
        ctx.load_cert_chain(path)
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(pointer, f"client certificate and key do not load: {e}", kind="upstreams", id=id) from None
    finally:
        os.unlink(path)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = DEFAULT_TIMEOUT
    send: float = DEFAULT_TIMEOUT
    read: float = DEFAULT_TIMEOUT


def _timeouts(conf: Mapping[str, Any] | None, base: Timeouts | None = None) -> Timeouts:
    if not conf:
        return base or Timeouts()
    return Timeouts(float(conf.get("connect", DEFAULT_TIMEOUT)), float(conf.get("send", DEFAULT_TIMEOUT)),
                    float(conf.get("read", DEFAULT_TIMEOUT)))


class UpstreamRuntime:
    """Compiled upstream: what the proxy needs to pick a node and talk to it."""

    __slots__ = ("key", "conf", "nodes", "balancer", "retries", "retry_timeout", "timeouts", "pass_host",
                 "upstream_host", "scheme", "pool_size", "pool_idle_timeout", "pool_requests", "ssl_context",
                 "unhealthy", "has_checks", "passive", "track_load", "original_dst", "bind_source", "cb_limit", "h2",
                 "h2_downstream")

    def __init__(self, key: str, conf: Mapping[str, Any], client: tuple[str, str] | None = None) -> None:
        self.key = key
        self.conf = conf
        self.scheme: str = conf.get("scheme", "http")
        # HTTP/2 to the upstream (upstream_h2.py): grpc/grpcs, or a mesh cluster with HTTP/2
        # options; h2_downstream: the downstream's protocol (Envoy's use_downstream_protocol)
        x = conf.get("xds") or {}
        self.h2 = self.scheme in ("grpc", "grpcs") or bool(x.get("http2"))
        self.h2_downstream = bool(x.get("use_downstream_protocol"))
        self.nodes: list[Node] = parse_nodes(conf.get("nodes") or {}, scheme=self.scheme)
        self.balancer: Balancer = create_balancer(conf, self.nodes)
        # only these balancers read in-flight counts / latencies (on_start / on_finish)
        self.track_load = conf.get("type", "roundrobin") in ("least_conn", "ewma")
        self.retries: int = default_retries(conf, self.nodes)
        self.retry_timeout: float = float(conf.get("retry_timeout", 0) or 0)
        self.timeouts = _timeouts(conf.get("timeout"))
        self.pass_host: str = conf.get("pass_host", "pass")
        self.upstream_host: str | None = conf.get("upstream_host")
        pool = conf.get("keepalive_pool") or {}
        self.pool_size = int(pool.get("size", 320))
        self.pool_idle_timeout = float(pool.get("idle_timeout", 60))
        self.pool_requests = int(pool.get("requests", 1000))
        self.ssl_context: ssl.SSLContext | None = None
        if self.scheme in ("https", "grpcs"):
            tls = conf.get("tls") or {}
            # APISIX leaves upstream certificate verification off unless tls.verify is true;
            # then the certificate must chain to ssl_trusted_certificate and name the SNI host
            if tls.get("verify", False):
                ctx = ssl.create_default_context(cafile=_UPSTREAM_CA[0])
            else:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            # mTLS: the upstream's own client certificate (tls.client_cert/client_key), or
            # the ssl object of type client that tls.client_cert_id names (given as ``client``)
            pair = client or ((tls["client_cert"], tls["client_key"]) if tls.get("client_cert") else None)
            if pair is not None:
                _client_pair(ctx, pair[0], pair[1], "/tls/client_cert", key.split("/", 1)[-1])
            ctx.set_alpn_protocols(["h2"] if self.h2 else ["h2", "http/1.1"] if self.h2_downstream else ["http/1.1"])
            self.ssl_context = ctx
        # Addresses ("host:port") currently unhealthy, pushed by the health owner.
        self.unhealthy: frozenset[str] = frozenset()
        checks = conf.get("checks") or {}
        self.has_checks = bool(checks)
        self.passive = bool(checks.get("passive")) and bool(checks.get("active"))
        # mesh clusters (meshgate.xds): ORIGINAL_DST / passthrough clusters connect to the
        # connection's original destination; inbound ones from a fixed source (127.0.0.6)
        self.original_dst: bool = bool(x.get("original_dst"))
        bs = x.get("bind_source")
        self.bind_source: str | None = (bs.get("address") or None) if isinstance(bs, Mapping) else bs
        self.cb_limit: int | None = cluster_limit(conf) if x else None   # Envoy's circuit breaker

    def healthy(self, node: Node) -> bool:
        return node.addr not in self.unhealthy


class RouteRuntime:
    """A route after APISIX's service / plugin_config merge (apisix-semantics.md 5.2)."""

    __slots__ = ("id", "conf", "service_id", "service_name", "upstream", "timeouts", "enable_websocket", "chain",
                 "gchain", "error", "name", "matched_uri", "matched_host", "mesh")

    def __init__(self, id: str, conf: Mapping[str, Any]) -> None:
        self.id = id
        self.conf = conf
        self.name: str | None = conf.get("name")
        self.matched_uri: str | None = conf.get("uri") or (conf.get("uris") or [None])[0]
        self.matched_host: str | None = conf.get("host") or (conf.get("hosts") or [None])[0]
        self.service_id: str | None = None
        self.service_name: str | None = None
        self.upstream: UpstreamRuntime | None = None
        self.timeouts: Timeouts | None = None
        self.enable_websocket = False
        self.chain: PluginChain | None = None
        # the global rules' chain as it runs for this route: minus the prefer_route plugins
        # (prometheus) the route configures itself (APISIX run_policy)
        self.gchain: PluginChain | None = None
        # (status, body) answered instead of proxying when a reference is broken.
        self.error: tuple[int, bytes] | None = None
        # an xDS route (proxy/mesh.py): Envoy's retries, timeouts and local replies
        self.mesh: Any = None


@dataclass(slots=True)
class Runtime:
    version: int
    snapshot: Snapshot
    router: Matcher                      # radixtree Router, or a mesh route table (proxy/mesh.py)
    routes: dict[str, RouteRuntime]
    upstreams: dict[str, UpstreamRuntime]
    global_chain: PluginChain | None = None
    errors: list[ConfigError] = field(default_factory=list)
    consumers: ConsumerSet = field(default_factory=lambda: ConsumerSet({}))
    plugin_metadata: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    plugins: PluginRegistry | None = None
    plugins_generation: int = 0
    route_errors: dict[str, list[ConfigError]] = field(default_factory=dict)   # by route id
    tls: SNITable | None = None          # server certificates by SNI (the TLS listeners read it)
    mesh: bool = False                   # an xDS route table (proxy/mesh.py): Envoy's replies
    # built on first use and kept for this config version only
    _consumer_chains: dict[tuple[str, str], tuple[PluginChain | None, frozenset[str]]] = field(default_factory=dict)
    _extra_upstreams: dict[int, UpstreamRuntime] = field(default_factory=dict)
    # the consumers' credential indexes by (plugin, field): ConsumerSet.index, kept here so
    # that the exchange looks a credential up without leaving compiled code
    consumer_index: dict[tuple[str, str], dict[Any, tuple[Consumer, Any]]] = field(default_factory=dict)

    def chain_with_consumer(self, route: RouteRuntime, consumer: Consumer) -> tuple[PluginChain | None, frozenset[str]]:
        """The route's chain with the consumer's group and own plugins merged in (APISIX:
        consumer > consumer_group > route), and the names the consumer side added (their
        rewrite still has to run).  Auth plugins' consumer confs are credentials, not
        plugin confs: they are not merged.  Compiled once per (route, consumer) and version."""
        key = (route.id, consumer.username)
        got = self._consumer_chains.get(key)
        if got is not None:
            return got
        base = route.chain
        extra: dict[str, Any] = {}
        reg = self.plugins
        if reg is not None:
            for src in (self.consumers.group_plugins(consumer), consumer.plugins):
                for name, conf in src.items():
                    p = reg.get(name)
                    if p is None or p.type == "auth":
                        continue
                    try:
                        reg.validate(name, conf, pointer=f"/plugins/{name}", kind="consumers", id=consumer.username)
                    except ConfigError as e:
                        log.error("consumer %s: plugin %s ignored: %s", consumer.username, name, e)
                        continue
                    extra[name] = conf
        if not extra or reg is None:
            got = (base, frozenset())
        else:
            entries = dict(base.entries) if base is not None else {}
            added = frozenset(n for n in extra if n not in entries)
            for name, conf in extra.items():
                p = reg.get(name)
                assert p is not None
                entries[name] = (p, conf, None)
            owner = f"route:{route.id}&consumer:{consumer.username}"
            got = (reg.chain_from(entries, owner=owner), added)
        if len(self._consumer_chains) > 65536:
            self._consumer_chains.clear()
        self._consumer_chains[key] = got
        return got

    def upstream_for(self, ref: Any) -> UpstreamRuntime | None:
        """An upstream given by id (``str``/``int``) or as an inline conf (traffic-split);
        inline confs are compiled once per config version."""
        if isinstance(ref, Mapping):
            got = self._extra_upstreams.get(id(ref))
            if got is None or got.conf is not ref:
                got = UpstreamRuntime(f"inline/{id(ref)}", ref)
                self._extra_upstreams[id(ref)] = got
            return got
        return self.upstreams.get(f"upstreams/{ref}")


def _msg(text: str) -> bytes:
    return json.dumps({"error_msg": text}, separators=(",", ":")).encode() + b"\n"


def _checked_plugins(snapshot: Snapshot, kind: str, plugins: PluginRegistry | None,
                     errors: list[ConfigError]) -> dict[str, Mapping[str, Any]]:
    """Consumers (or consumer groups) whose plugin confs pass their schemas; a bad one is
    rejected alone.  An auth plugin's conf on a consumer is checked against its consumer
    schema (the credential), any other plugin against its route schema."""
    out: dict[str, Mapping[str, Any]] = {}
    for cid, res in snapshot.items(kind).items():
        ok = True
        if plugins is not None:
            for name, pconf in (res.value.get("plugins") or {}).items():
                p = plugins.get(name)
                try:
                    plugins.validate(name, pconf, pointer=f"/plugins/{name}", kind=kind, id=cid,
                                     schema_type="consumer" if p is not None and p.type == "auth"
                                     and kind == "consumers" else "route")
                except ConfigError as e:
                    errors.append(e)
                    log.error("%s %s rejected: %s", kind, cid, e)
                    ok = False
                    break
        if ok:
            out[cid] = res.value
    return out


def _route_gchain(global_chain: PluginChain | None, rr: RouteRuntime,
                  plugins: PluginRegistry | None) -> PluginChain | None:
    """The global rules' chain as it runs for this route: minus the prefer_route plugins
    (prometheus) the route configures itself (APISIX run_policy)."""
    if global_chain is None or rr.chain is None or plugins is None:
        return global_chain
    mine = {n for n in global_chain.names
            if n in rr.chain.names and (p := plugins.get(n)) is not None and p.run_policy == "prefer_route"}
    return global_chain.without(mine) if mine else global_chain


def build_runtime(snapshot: Snapshot, *, router_kind: str = "radixtree_host_uri",
                  plugins: PluginRegistry | None = None, previous: Runtime | None = None) -> Runtime:
    errors: list[ConfigError] = []
    route_errors: dict[str, list[ConfigError]] = {}   # by route id: what a later version may carry over
    prev_up = previous.upstreams if previous is not None else {}
    upstreams: dict[str, UpstreamRuntime] = {}

    ssls = snapshot.items("ssls")
    ssls_same = previous is not None and previous.snapshot.items("ssls") is ssls

    def upstream_for(key: str, conf: Mapping[str, Any]) -> UpstreamRuntime | None:
        got = upstreams.get(key)
        if got is not None and got.conf is conf:
            return got
        cid = (conf.get("tls") or {}).get("client_cert_id") if isinstance(conf.get("tls"), Mapping) else None
        old = prev_up.get(key)
        if old is not None and old.conf is conf and (cid is None or ssls_same):
            upstreams[key] = old
            return old
        try:
            client: tuple[str, str] | None = None
            if cid is not None:
                sres = ssls.get(str(cid))
                if sres is None or sres.value.get("type") != "client":
                    raise ConfigError("/tls/client_cert_id", f"no ssl object of type client with id {cid}",
                                      kind="upstreams", id=key.split("/", 1)[-1])
                client = (str(sres.value.get("cert") or ""), str(sres.value.get("key") or ""))
            rt = UpstreamRuntime(key, conf, client)
        except ConfigError as e:
            (route_errors.setdefault(key[7:], []) if key.startswith("routes/") else errors).append(e)
            log.error("upstream %s rejected: %s", key, e)
            return None
        except Exception as e:  # never let one bad item stop the compile
            errors.append(ConfigError("/", f"cannot compile upstream: {e}", kind="upstreams", id=key))
            log.exception("upstream %s rejected", key)
            return None
        if old is not None:
            rt.unhealthy = old.unhealthy
        upstreams[key] = rt
        return rt

    for id, res in snapshot.items("upstreams").items():
        upstream_for(f"upstreams/{id}", res.value)

    services = snapshot.items("services")
    plugin_configs = snapshot.items("plugin_configs")
    cur_routes = snapshot.items("routes")
    # A route whose own value and everything it merges with (services, plugin_configs,
    # upstreams, global rules, the plugins loaded) are the very objects of the previous
    # version keeps its RouteRuntime, and only the changed routes are compiled: one
    # changed route among thousands is one route's work (plus dict copies).
    reuse = False
    if previous is not None and previous.plugins is plugins and (
            plugins is None or previous.plugins_generation == plugins.generation):
        ps = previous.snapshot
        reuse = all(ps.items(k) is snapshot.items(k)
                    for k in ("services", "plugin_configs", "upstreams", "global_rules"))
    routes: dict[str, RouteRuntime]
    todo: list[tuple[str, Resource]]
    if reuse and previous is not None:
        prev_routes = previous.snapshot.items("routes")
        routes = dict(previous.routes)
        route_errors.update(previous.route_errors)
        upstreams.update(previous.upstreams)   # same upstreams: named ones and the routes' inline ones
        todo = [(id, res) for id, res in cur_routes.items() if prev_routes.get(id) is not res]
        for id in [id for id in prev_routes if id not in cur_routes] + [id for id, _ in todo]:
            routes.pop(id, None)
            route_errors.pop(id, None)
            upstreams.pop(f"routes/{id}", None)
    else:
        routes, todo = {}, list(cur_routes.items())
    for id, res in todo:
        conf = res.value
        mine = route_errors.setdefault(id, [])
        rr = RouteRuntime(id, conf)
        svc: Mapping[str, Any] | None = None
        sid = conf.get("service_id")
        if sid is not None:
            rr.service_id = str(sid)
            sres = services.get(str(sid))
            if sres is None:
                rr.error = (404, _msg("404 Route Not Found"))
            else:
                svc = sres.value
                rr.service_name = svc.get("name")
        merged_plugins: dict[str, Any] = {}
        if svc is not None:
            merged_plugins.update(svc.get("plugins") or {})
        pcid = conf.get("plugin_config_id")
        if pcid is not None:
            pc = plugin_configs.get(str(pcid))
            if pc is None:
                rr.error = rr.error or (503, _msg(f"failed to fetch plugin config by id: {pcid}"))
            else:
                # plugin_config plugins apply only where the route has none of that name (route wins).
                for name, pconf in (pc.value.get("plugins") or {}).items():
                    if name not in (conf.get("plugins") or {}):
                        merged_plugins[name] = pconf
        merged_plugins.update(conf.get("plugins") or {})
        # Upstream: route upstream_id > route inline > service upstream_id > service inline
        # (APISIX: an upstream_id wins over an inline upstream on the same object).
        up: UpstreamRuntime | None = None
        if conf.get("upstream_id") is not None:
            up = upstreams.get(f"upstreams/{conf['upstream_id']}")
            if up is None:
                rr.error = rr.error or (502, _msg("missing upstream configuration in Route or Service"))
        elif conf.get("upstream") is not None:
            up = upstream_for(f"routes/{id}", conf["upstream"])
        elif svc is not None and svc.get("upstream_id") is not None:
            up = upstreams.get(f"upstreams/{svc['upstream_id']}")
            if up is None:
                rr.error = rr.error or (502, _msg("missing upstream configuration in Route or Service"))
        elif svc is not None and svc.get("upstream") is not None:
            up = upstream_for(f"services/{sid}", svc["upstream"])
        rr.upstream = up
        rr.timeouts = _timeouts(conf.get("timeout")) if conf.get("timeout") else None
        ews = conf.get("enable_websocket")
        if ews is None and svc is not None:
            ews = svc.get("enable_websocket")
        rr.enable_websocket = bool(ews)
        if merged_plugins and plugins is not None:
            try:
                rr.chain = plugins.compile_chain(merged_plugins, pointer="/plugins", kind="routes", id=id,
                                                 owner=f"route:{id}")
            except ConfigError as e:
                mine.append(e)
                log.error("route %s rejected: %s", id, e)
                continue
        routes[id] = rr
        if not mine:
            del route_errors[id]
    for errs in route_errors.values():
        errors.extend(errs)

    prev_router = previous.router if previous is not None else None
    router = compile_router(snapshot, kind=router_kind,  # type: ignore[arg-type]
                            previous=prev_router if isinstance(prev_router, Router) else None)
    errors.extend(getattr(router, "errors", []))
    global_chain = None
    if reuse and previous is not None:
        # same global rules, same plugins: the same chain (and reused routes keep their gchain)
        global_chain = previous.global_chain
        for id, _ in todo:
            rr2 = routes.get(id)
            if rr2 is not None:
                rr2.gchain = _route_gchain(global_chain, rr2, plugins)
    elif plugins is not None:
        merged: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for gid, g in snapshot.items("global_rules").items():
            for name, pconf in (g.value.get("plugins") or {}).items():
                if name in merged:
                    errors.append(ConfigError(f"/plugins/{name}", "plugin already configured by another global rule",
                                              kind="global_rules", id=gid))
                    continue
                merged[name] = pconf
                owners[name] = f"global_rule:{gid}"
        if merged:
            try:
                global_chain = plugins.compile_chain(merged, pointer="/plugins", kind="global_rules", id="*",
                                                     owners=owners)
            except ConfigError as e:
                errors.append(e)
        for rr in routes.values():
            rr.gchain = _route_gchain(global_chain, rr, plugins)
    # the inline upstreams of stream routes (and of their services) are upstreams like the others:
    # health-checked by the supervisor under these keys, their health shared by every worker
    for sid_, res in snapshot.items("stream_routes").items():
        sconf = res.value
        if sconf.get("upstream_id") is not None:
            continue
        if sconf.get("upstream") is not None:
            upstream_for(f"stream_routes/{sid_}", sconf["upstream"])
        elif sconf.get("service_id") is not None:
            ssvc = services.get(str(sconf["service_id"]))
            if ssvc is not None and ssvc.value.get("upstream_id") is None and ssvc.value.get("upstream") is not None:
                upstream_for(f"services/{sconf['service_id']}", ssvc.value["upstream"])
    metadata: dict[str, Mapping[str, Any]] = {}
    for pid, res in snapshot.items("plugin_metadata").items():
        if plugins is not None and pid in plugins:
            try:
                plugins.validate(pid, dict(res.value), pointer="", kind="plugin_metadata", id=pid,
                                 schema_type="metadata")
            except ConfigError as e:
                errors.append(e)
                log.error("plugin_metadata %s rejected: %s", pid, e)
                continue
        metadata[pid] = {k: v for k, v in res.value.items() if k != "id"}
    consumers = ConsumerSet(_checked_plugins(snapshot, "consumers", plugins, errors),
                            _checked_plugins(snapshot, "consumer_groups", plugins, errors))
    ssls = snapshot.items("ssls")
    tls = previous.tls if previous is not None else None
    if tls is None or tls.items is not ssls:
        tls = build_sni_table(ssls, previous=tls)
    errors.extend(tls.errors)
    return Runtime(version=snapshot.version, snapshot=snapshot, router=router, routes=routes,
                   upstreams=upstreams, global_chain=global_chain, errors=errors, consumers=consumers,
                   plugin_metadata=metadata, plugins=plugins,
                   plugins_generation=plugins.generation if plugins is not None else 0,
                   route_errors=route_errors, tls=tls)
