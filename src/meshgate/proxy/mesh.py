"""The mesh data plane's compiled config: listeners, filter chains and route tables.

Theory of operation
-------------------
``meshgate mesh`` puts what istiod sends into the one Snapshot: clusters as ``upstreams``
(compiled by :func:`~meshgate.proxy.runtime.build_runtime` as for the gateway), listeners
and route tables as the mesh kinds ``listeners`` / ``route_configs`` (their shapes are in
``meshgate.xds.translate``).  A worker compiles them here once per version into:

* one :class:`TableView` per route table (RDS name, or a listener's inline table): a
  :class:`~meshgate.proxy.runtime.Runtime` whose router is Envoy's (virtual host by
  domain, then the first route whose match holds, in order) and whose routes are
  :class:`~meshgate.proxy.runtime.RouteRuntime` objects carrying a :class:`MeshPolicy`
  (retries, timeouts, Envoy's local replies) and a chain whose one hook does what
  Envoy's fault, CORS and router filters do per route (faults, direct responses,
  redirects, weighted clusters, rewrites, header mutation, mirrors).  The request's
  life is then the gateway's own exchange: the same plugins, pool, balancers.
* :class:`MeshListener` per listener: its filter chains, chosen per connection as Envoy
  chooses them (destination port, destination IP, server name, transport protocol,
  application protocols, source IP / port: at each step the most specific match wins).

Handles (:class:`ChainHandle`) are stable across versions: a connection keeps its
chain's handle and every request reads the current table through it, so an RDS or EDS
update applies to the next request of a keep-alive connection without dropping it (as
Envoy), while a connection whose listener or chain is gone keeps its last view.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..http import Request
from ..model import Snapshot
from ..observability.istio import IstioPeer, record_request, request_labels
from ..plugins import PluginChain
from ..router import RouteMatch
from .runtime import RouteRuntime, Runtime, Timeouts, UpstreamRuntime

__all__ = ["MeshConfig", "MeshListener", "MeshChain", "ChainHandle", "TableView", "MeshPolicy",
           "compile_mesh", "select_chain", "envoy_reply", "NO_ROUTE"]

log = logging.getLogger("meshgate.mesh")

TEXT = b"text/plain"
NO_ROUTE = (404, b"", None)
_NO_LIMIT = 1e9          # Envoy's timeout 0: disabled


def envoy_reply(status: int, body: str) -> tuple[int, bytes, list[tuple[str, str]]]:
    """A local reply as Envoy sends it: text/plain body (none when empty)."""
    b = body.encode()
    return status, b, [("content-type", "text/plain")] if b else []


# -- route matching ----------------------------------------------------------------------------
def _str_test(op: str, value: Any, ci: bool) -> Callable[[str], bool]:
    if op == "regex":
        rx = re.compile(value, re.IGNORECASE if ci else 0)
        return lambda s: rx.fullmatch(s) is not None
    if ci:
        v = str(value).lower()
        if op == "exact":
            return lambda s: s.lower() == v
        if op == "prefix":
            return lambda s: s.lower().startswith(v)
        if op == "suffix":
            return lambda s: s.lower().endswith(v)
        return lambda s: v in s.lower()
    v = str(value)
    if op == "exact":
        return lambda s: s == v
    if op == "prefix":
        return lambda s: s.startswith(v)
    if op == "suffix":
        return lambda s: s.endswith(v)
    return lambda s: v in s


def _header_test(h: Mapping[str, Any]) -> Callable[[dict[str, str]], bool]:
    name: str = h["name"]
    op: str = h["op"]
    value: Any = h["value"]
    invert: bool = bool(h["invert"])
    missing_empty: bool = bool(h.get("missing_empty", False))
    if op == "present":
        want = bool(value)
        return lambda hd: ((name in hd) == want) != invert
    if op == "range":
        lo, hi = int(value[0]), int(value[1])

        def in_range(hd: dict[str, str]) -> bool:
            v = hd.get(name)
            if v is None:
                return False
            try:
                n = int(v)
            except ValueError:
                return invert
            return (lo <= n < hi) != invert
        return in_range
    test = _str_test(op, value, h.get("ci", False))

    def check(hd: dict[str, str]) -> bool:
        v = hd.get(name)
        if v is None:
            if not missing_empty:
                return False   # Envoy: an absent header never matches, inverted or not
            v = ""
        return test(v) != invert
    return check


def _query_test(q: Mapping[str, Any]) -> Callable[[dict[str, str]], bool]:
    name = q["name"]
    if q["op"] == "present":
        return lambda args: name in args
    test = _str_test(q["op"], q["value"], q.get("ci", False))
    return lambda args: name in args and test(args[name])


class MeshRoute:
    """One Envoy route's match, compiled."""

    __slots__ = ("id", "kind", "value", "ci", "rx", "headers", "query", "grpc", "fraction")

    def __init__(self, id: str, m: Mapping[str, Any]) -> None:
        self.id = id
        p = m["path"]
        self.kind: str = p["kind"]
        self.ci: bool = bool(m.get("ci"))
        self.value: str = p["value"].lower() if self.ci and self.kind != "regex" else p["value"]
        self.rx = re.compile(p["value"]) if self.kind == "regex" else None
        self.headers = tuple(_header_test(h) for h in m.get("headers") or ())
        self.query = tuple(_query_test(q) for q in m.get("query") or ())
        self.grpc: bool = bool(m.get("grpc"))
        self.fraction: float | None = m.get("fraction")

    def matches(self, req: Request, path: str) -> bool:
        k = self.kind
        if k == "prefix":
            if not (path.lower() if self.ci else path).startswith(self.value):
                return False
        elif k == "path":
            if (path.lower() if self.ci else path) != self.value:
                return False
        elif k == "regex":
            assert self.rx is not None
            if self.rx.fullmatch(path) is None:
                return False
        else:   # sep_prefix: the prefix, then nothing or a "/"
            p = path.lower() if self.ci else path
            v = self.value
            if not (p == v or (p.startswith(v) and p[len(v)] == "/") or v == "/"):
                return False
        if self.headers or self.grpc:
            hd = req.header_index()
            if self.grpc and not hd.get("content-type", "").startswith("application/grpc"):
                return False
            for t in self.headers:
                if not t(hd):
                    return False
        if self.query:
            args = req.args()
            for q in self.query:
                if not q(args):
                    return False
        if self.fraction is not None and not random.random() < self.fraction:
            return False
        return True


class VirtualHosts:
    """Envoy's virtual host selection: exact domain, then the longest suffix wildcard
    (``*.example.com``, ``*-bar.com``), then the longest prefix wildcard (``foo.*``), then
    ``*``.  A wildcard stands for at least one character."""

    __slots__ = ("exact", "suffixes", "prefixes", "any", "ignore_port")

    def __init__(self, vhosts: Sequence[tuple[Sequence[str], Any]], ignore_port: bool) -> None:
        self.exact: dict[str, Any] = {}
        sfx: list[tuple[str, Any]] = []
        pfx: list[tuple[str, Any]] = []
        self.any: Any = None
        self.ignore_port = ignore_port
        for domains, vh in vhosts:
            for d in domains:
                if d == "*":
                    self.any = vh
                elif d.startswith("*"):
                    sfx.append((d[1:], vh))
                elif d.endswith("*"):
                    pfx.append((d[:-1], vh))
                else:
                    self.exact[d] = vh
        self.suffixes = sorted(sfx, key=lambda e: -len(e[0]))
        self.prefixes = sorted(pfx, key=lambda e: -len(e[0]))

    def find(self, host: str) -> Any:
        h = host.lower()
        if self.ignore_port:
            h = _strip_port(h)
        vh = self.exact.get(h)
        if vh is not None:
            return vh
        for s, vh in self.suffixes:
            if len(h) > len(s) and h.endswith(s):
                return vh
        for p, vh in self.prefixes:
            if len(h) > len(p) and h.startswith(p):
                return vh
        return self.any


def _strip_port(h: str) -> str:
    if h.startswith("["):
        i = h.find("]")
        return h[:i + 1] if i >= 0 else h
    i = h.rfind(":")
    return h[:i] if i >= 0 and h[i + 1:].isdigit() else h


@dataclass(slots=True)
class _VHost:
    name: str
    routes: list[tuple[MeshRoute, RouteRuntime]]


class MeshRouter:
    """Router of one route table (duck-types :class:`meshgate.router.Router`)."""

    __slots__ = ("vhosts", "errors", "kind", "version")

    def __init__(self, vhosts: VirtualHosts, version: int) -> None:
        self.vhosts = vhosts
        self.errors: list[Any] = []
        self.kind = "xds"
        self.version = version

    def match(self, req: Request) -> RouteMatch | None:
        vh: _VHost | None = self.vhosts.find(req.http_host or req.host)
        if vh is None:
            return None
        path = req.path
        for m, rr in vh.routes:
            if m.matches(req, path):
                return RouteMatch(m.id, rr.conf, {}, rr.matched_uri or "", None)
        return None


# -- per-route behaviour ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MeshPolicy:
    """What the exchange does differently on a mesh route: Envoy's retries and replies."""

    num_retries: int = 0
    retry_on: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    per_try: float | None = None
    timeout: float = _NO_LIMIT         # the route's whole-request timeout (Envoy's route timeout)
    previous_hosts: bool = False
    attempt_count: bool = False

    def retry_status(self, status: int) -> bool:
        on = self.retry_on
        if status >= 500 and "5xx" in on:
            return True
        if status in (502, 503, 504) and "gateway-error" in on:
            return True
        if status == 409 and "retriable-4xx" in on:
            return True
        return status in self.statuses and "retriable-status-codes" in on

    def retry_failure(self, kind: str) -> bool:
        """``kind``: "connect" (connect failure), "reset" (lost before a response), "timeout"
        (per-try timeout)."""
        on = self.retry_on
        if "5xx" in on or "gateway-error" in on:
            return True
        if kind == "connect":
            return "connect-failure" in on or "reset" in on or "reset-before-request" in on
        if kind == "reset":
            return "reset" in on
        return False


def _policy(route: Mapping[str, Any], vhost: Mapping[str, Any]) -> MeshPolicy:
    r = route.get("retry") or vhost.get("retry")
    timeout = float(route.get("timeout") or 0) or _NO_LIMIT
    if r is None:
        return MeshPolicy(timeout=timeout, attempt_count=bool(vhost.get("attempt_count")))
    return MeshPolicy(num_retries=int(r["num"]), retry_on=frozenset(r["on"]), statuses=frozenset(r["statuses"]),
                      per_try=r["per_try"], timeout=timeout, previous_hosts=bool(r["previous_hosts"]),
                      attempt_count=bool(vhost.get("attempt_count")))


_OPS = {"append": 1, "add_if_absent": 2, "overwrite_if_exists_or_add": 0, "overwrite_if_exists": 3}


def _mutations(*levels: Mapping[str, Any] | None) -> tuple[list[tuple[int, str, str]], list[str],
                                                            list[tuple[int, str, str]], list[str]]:
    """Header mutations of several levels, most specific first (Envoy's default order:
    the route's are applied first, then the virtual host's, then the route table's)."""
    req_add: list[tuple[int, str, str]] = []
    req_rm: list[str] = []
    resp_add: list[tuple[int, str, str]] = []
    resp_rm: list[str] = []
    for lv in levels:
        if not lv:
            continue
        req_add += [(_OPS[a], n, v) for n, v, a in lv.get("req_add") or ()]
        req_rm += list(lv.get("req_remove") or ())
        resp_add += [(_OPS[a], n, v) for n, v, a in lv.get("resp_add") or ()]
        resp_rm += list(lv.get("resp_remove") or ())
    return req_add, req_rm, resp_add, resp_rm


_VAR_RE = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?%")


def _format(value: str, ex: Any) -> str:
    """Envoy's header value substitutions istiod emits (a small, common subset)."""
    if "%" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT"):
            return str(ex.req.remote_addr)
        if name == "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
            return str(ex.req.server_addr)
        if name == "REQ":
            return ex.req.header(m.group(2) or "") or ""
        if name == "PROTOCOL":
            return f"HTTP/{ex.req.version}"
        if name == "START_TIME":
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        return m.group(0)
    return _VAR_RE.sub(sub, value)


def _apply_req(ex: Any, add: list[tuple[int, str, str]], rm: list[str]) -> None:
    req = ex.req
    for name in rm:
        if name != "host" and req.header(name) is not None:
            req.set_header(name, None)
    for op, name, value in add:
        value = _format(value, ex)
        if op == 0:
            req.set_header(name, value)
        elif op == 1:
            ex.add_req_header(name, value)
        elif op == 2:
            if req.header(name) is None:
                ex.add_req_header(name, value)
        elif req.header(name) is not None:
            req.set_header(name, value)


@dataclass(slots=True)
class RouteBehaviour:
    """Everything a mesh route does besides matching; the conf of its one hook."""

    table: str
    route: Mapping[str, Any]
    action: Mapping[str, Any]
    req_add: list[tuple[int, str, str]]
    req_rm: list[str]
    resp_add: list[tuple[int, str, str]]
    resp_rm: list[str]
    fault: Mapping[str, Any] | None
    cors: Mapping[str, Any] | None
    cors_on: bool
    mirrors: list[tuple[UpstreamRuntime, float]]
    weighted: list[tuple[str, int, Any]] = field(default_factory=list)
    total: int = 0
    hash: list[Mapping[str, Any]] = field(default_factory=list)


def _cors_origin(cors: Mapping[str, Any], origin: str) -> bool:
    for m in cors["origins"]:
        if _str_test(m["op"], m["value"], m.get("ci", False))(origin):
            return True
    return False


def _cors_preflight(b: RouteBehaviour, ex: Any) -> Any:
    cors = b.cors
    if cors is None or not b.cors_on:
        return None
    origin = ex.req.header("origin")
    if not origin or not _cors_origin(cors, origin):
        return None
    if ex.req.method == "OPTIONS" and ex.req.header("access-control-request-method"):
        hdrs = [("access-control-allow-origin", origin)]
        if cors["credentials"]:
            hdrs.append(("access-control-allow-credentials", "true"))
        if cors["methods"]:
            hdrs.append(("access-control-allow-methods", cors["methods"]))
        if cors["headers"]:
            hdrs.append(("access-control-allow-headers", cors["headers"]))
        if cors["max_age"]:
            hdrs.append(("access-control-max-age", cors["max_age"]))
        return 200, b"", hdrs
    ex.set_var("_xds_cors_origin", origin)
    return None


async def _delayed(b: RouteBehaviour, ex: Any, seconds: float) -> Any:
    await asyncio.sleep(seconds)
    return _after_delay(b, ex)


def _fault_hits(fraction: float) -> bool:
    return fraction >= 1.0 or random.random() < fraction


def route_hook(b: RouteBehaviour, ex: Any) -> Any:
    """The route's rewrite-phase work, in Envoy's filter order: CORS, fault, router."""
    res = _cors_preflight(b, ex)
    if res is not None:
        return res
    f = b.fault
    if f is not None and f["delay"] is not None:
        secs, frac = f["delay"]
        if secs > 0 and _fault_hits(frac):
            ex.set_var("_xds_flags", "DI")    # Envoy's response flag: delay injected
            return _delayed(b, ex, secs)
    return _after_delay(b, ex)


def _after_delay(b: RouteBehaviour, ex: Any) -> Any:
    f = b.fault
    if f is not None and f["abort"] is not None:
        http, grpc, frac = f["abort"]
        if _fault_hits(frac):
            ex.set_var("_xds_flags", "DI,FI" if ex.var("_xds_flags") else "FI")   # fault injected
            if grpc is not None:
                return 200, b"", [("content-type", "application/grpc"), ("grpc-status", str(grpc)),
                                  ("grpc-message", "fault filter abort")]
            return envoy_reply(int(http), "fault filter abort")
    a = b.action
    kind = a["kind"]
    if kind == "direct":
        body = a.get("body")
        return envoy_reply(a["status"], body or "")
    if kind == "redirect":
        return 301 if a["status"] is None else a["status"], b"", [("location", _redirect_location(a, ex))]
    # router: the cluster for this request
    if kind == "weighted":
        r = random.randrange(b.total)
        chosen = b.weighted[-1]
        for entry in b.weighted:
            r -= entry[1]
            if r < 0:
                chosen = entry
                break
        name, _, extra = chosen
        if extra is not None:
            _apply_req(ex, extra[0], extra[1])
            if extra[2] or extra[3]:
                ex.set_var("_xds_wc_resp", extra)
        if not _use_cluster(ex, name):
            return envoy_reply(503, "")
    elif kind == "cluster_header":
        name = ex.req.header(a["header"])
        if not name or not _use_cluster(ex, name):
            return envoy_reply(a["not_found"], "")
    if b.hash:
        key = _hash_key(b.hash, ex)
        if key is not None:
            ex.set_var("xds_hash_key", key)   # what a ring-hash / Maglev cluster hashes on
    _rewrite(b, ex)
    _apply_req(ex, b.req_add, b.req_rm)
    pol = ex.route.mesh if ex.route is not None else None
    if pol is not None and pol.attempt_count and ex.req.header("x-envoy-attempt-count") is not None:
        # Envoy sets the attempt count itself (the exchange writes it per try), the client's goes
        ex.req.set_header("x-envoy-attempt-count", None)
    if ex.req.header("x-request-id") is None:
        ex.add_req_header("x-request-id", str(uuid.uuid4()))
    if b.mirrors:
        _mirror(b, ex)
    return None


def _hash_key(policies: list[Mapping[str, Any]], ex: Any) -> str | None:
    """Envoy's route hash: the policies in order, each adding its value when the request has
    it; a terminal policy that produced a value ends the list.  None: no value (the balancer
    then falls back to the client address)."""
    req = ex.req
    parts: list[str] = []
    for h in policies:
        kind = h["kind"]
        if kind == "header":
            v = req.header(h["name"])
        elif kind == "cookie":
            v = req.cookies().get(h["name"])
        elif kind == "source_ip":
            v = req.remote_addr
        else:
            v = req.args().get(h["name"])
        if v is not None:
            parts.append(v)
            if h.get("terminal"):
                break
    return "\x00".join(parts) if parts else None


def _use_cluster(ex: Any, name: str) -> bool:
    up = ex.runtime.upstreams.get("upstreams/" + name)
    if up is None:
        return False
    ex.conf_override = up
    return True


def _redirect_location(a: Mapping[str, Any], ex: Any) -> str:
    req = ex.req
    # The authority as Envoy builds it: host_redirect as given, else the request's Host,
    # whose port goes when port_redirect replaces it, or when the scheme changes and the
    # port is the default one of the request's scheme (x-forwarded-proto): from
    # "h:8080" an https_redirect keeps ":8080", from "h:80" it drops ":80".  A
    # port_redirect is appended as given, default port or not.
    proto = req.header("x-forwarded-proto") or req.scheme
    scheme = a["scheme"] or proto
    port = a["port"]
    if a["host"]:
        host = a["host"]
    else:
        host = req.http_host or req.host
        bare = _strip_port(host)
        if bare != host:
            p = host[len(bare) + 1:]
            if port or (scheme != proto and ((proto == "http" and p == "80") or (proto == "https" and p == "443"))):
                host = bare
    if port:
        host = f"{_strip_port(host)}:{port}"
    path = req.upstream_path
    if a["path"] is not None:
        path = a["path"]
    elif a["prefix"] is not None:
        m = ex.route.conf["match"]["path"] if ex.route is not None else None
        if m is not None and m["kind"] in ("prefix", "sep_prefix"):
            path = a["prefix"] + path[len(m["value"]):]
    elif a["regex"] is not None:
        path = re.sub(a["regex"][0], a["regex"][1], path)
    query = "" if a["strip_query"] or req.query is None else "?" + req.query
    if "?" in path:
        query = ""
    return f"{scheme}://{host}{path}{query}"


def _rewrite(b: RouteBehaviour, ex: Any) -> None:
    rw = b.route["rewrite"]
    req = ex.req
    path = None
    if rw["prefix"] is not None:
        m = b.route["match"]["path"]
        if m["kind"] in ("prefix", "sep_prefix"):
            cur = req.upstream_path
            n = len(m["value"])
            path = rw["prefix"] + cur[n:]
        else:
            path = rw["prefix"]
    elif rw["regex"] is not None:
        path = re.sub(rw["regex"][0], rw["regex"][1], req.upstream_path)
    if path is not None:
        ex.add_req_header("x-envoy-original-path", req.request_uri)
        ex.set_var("upstream_uri", path if req.query is None else f"{path}?{req.query}")
    if rw["host"]:
        ex.set_var("upstream_host", rw["host"])
    elif rw["host_header"]:
        h = req.header(rw["host_header"])
        if h:
            ex.set_var("upstream_host", h)


def _mirror(b: RouteBehaviour, ex: Any) -> None:
    from ..plugins.builtin import proxy_mirror
    req = ex.req
    for up, frac in b.mirrors:
        if frac < 1.0 and not random.random() < frac:
            continue
        if not up.nodes:
            continue
        node = up.nodes[0] if len(up.nodes) == 1 else random.choice(up.nodes)
        conf = proxy_mirror.Conf(scheme="http", host=node.host, port=node.port, path=None, prefix=False,
                                 sample_ratio=1.0)
        host = (req.http_host or node.addr)
        # Envoy's shadow requests carry the host with "-shadow" appended
        h0 = _strip_port(host)
        shadow = h0 + "-shadow" + host[len(h0):]
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in req.headers
                   if n.lower() not in (b"host", b"content-length", b"transfer-encoding", b"connection")]
        # Envoy's shadow is a copy of the request as the router sends it: with the
        # x-forwarded-proto it set and, when the virtual host asks, the attempt count (1)
        if req.header("x-forwarded-proto") is None:
            headers.append(("x-forwarded-proto", req.scheme))
        pol = ex.route.mesh if ex.route is not None else None
        if pol is not None and pol.attempt_count:
            headers.append(("x-envoy-attempt-count", "1"))
        uri = req.request_uri
        ex.server.loop.create_task(proxy_mirror.send_mirror(conf, req.method, uri, shadow, headers, b"",
                                                            timeout=10.0))


def response_hook(b: RouteBehaviour, ex: Any) -> None:
    """header_filter: response header mutations, CORS response headers."""
    extra = ex.var("_xds_wc_resp") if b.action["kind"] == "weighted" else None
    for adds, rms in ((extra[2], extra[3]) if extra else ((), ()), (b.resp_add, b.resp_rm)):
        for name in rms:
            ex.set_resp_header(name, None)
        for op, name, value in adds:
            value = _format(value, ex)
            cur = ex.resp_header(name)
            if op == 0:
                ex.set_resp_header(name, value)
            elif op == 1:
                ex.add_resp_header(name, value)
            elif op == 2:
                if cur is None:
                    ex.add_resp_header(name, value)
            elif cur is not None:
                ex.set_resp_header(name, value)
    origin = ex.var("_xds_cors_origin")
    if origin and b.cors is not None:
        ex.set_resp_header("access-control-allow-origin", origin)
        if b.cors["credentials"]:
            ex.set_resp_header("access-control-allow-credentials", "true")
        if b.cors["expose"]:
            ex.set_resp_header("access-control-expose-headers", b.cors["expose"])


class StatsConf:
    """What the istio.stats hook of a route needs: this proxy's side, the direction of the
    listener (a local reply on virtualInbound is reported by the destination), a label cache."""

    __slots__ = ("me", "inbound", "cache")

    def __init__(self, me: IstioPeer, *, inbound: bool = False) -> None:
        self.me = me
        self.inbound = inbound
        self.cache: dict[tuple[Any, ...], tuple[str, ...]] = {}


def _flags(ex: Any) -> str:
    """Envoy's response flags (``-``: none) of a request."""
    fault = ex.var("_xds_flags") if ex.vars is not None else None
    if fault:
        return str(fault)
    if ex.upstream_status:
        return "-"
    st = ex.resp_status
    if ex.route is None:
        return "NR"
    if ex.up is None:
        return "NC" if st == 503 else "-"     # unknown cluster, else a direct response / redirect
    if st == 504:
        return "UT"
    if st == 503:
        return "UF" if ex.node is not None else "UH"
    return "-"


def stats_hook(conf: StatsConf, ex: Any) -> None:
    """log phase: istio_requests_total and the duration / size histograms (Istio's names)."""
    up = ex.up
    route = ex.route
    if up is None and route is not None:
        # answered before an upstream was chosen (a fault, a direct response): Envoy reports
        # it against the route's cluster all the same
        up = route.upstream
    node = ex.node
    code = ex.resp_status
    flags = _flags(ex)
    req = ex.req
    # (gRPC calls are POSTs: other requests skip the header lookup)
    grpc = req.grpc or (req.method == "POST" and (req.header("content-type") or "").startswith("application/grpc"))
    gs = ""
    if grpc:
        # Istio's grpc_response_status: the grpc-status trailer (or header, trailers-only)
        for n, v in ex.resp_trailers or ():
            if n.lower() == b"grpc-status":
                gs = v.decode("latin-1")
        if not gs and ex.in_resp:
            gs = ex.resp_header("grpc-status") or ""
    key = (up.key if up is not None else None, node, code, flags, grpc, gs)
    labels = conf.cache.get(key)
    if labels is None:
        svc = None
        inbound = conf.inbound
        if up is not None:
            x = up.conf.get("xds") or {}
            services = (x.get("istio") or {}).get("services") or ()
            svc = services[0] if services else None
            sub = x.get("subset") or {}
            inbound = inbound or sub.get("direction") == "inbound" or up.key.startswith("upstreams/inbound|")
        workload = (node.metadata or {}).get("workload") if node is not None else None
        labels = request_labels(inbound=inbound, me=conf.me, service=svc, workload=workload,
                                protocol="grpc" if grpc else "http", code=code, flags=flags, grpc_status=gs)
        if len(conf.cache) > 4096:
            conf.cache.clear()
        conf.cache[key] = labels
    dur = (ex.t_end - ex.req.start_time) * 1000.0 if ex.t_end else 0.0
    record_request(labels, dur, ex.body_size, ex.bytes_sent)


# -- compile ------------------------------------------------------------------------------------
class TableView:
    """One route table compiled for a version: the Runtime its requests run with."""

    __slots__ = ("name", "runtime")

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.runtime = runtime


class ChainHandle:
    """A filter chain's stable identity across versions (what a connection holds)."""

    __slots__ = ("key", "view", "chain")

    def __init__(self, key: str) -> None:
        self.key = key
        self.view: TableView | None = None
        self.chain: MeshChain | None = None


@dataclass(slots=True)
class MeshChain:
    index: int
    conf: Mapping[str, Any]
    kind: str
    handle: ChainHandle
    port: int | None
    dst: list[tuple[Any, int]]
    direct_src: list[tuple[Any, int]]
    src: list[tuple[Any, int]]
    src_ports: frozenset[int]
    sni: list[str]
    transport: str
    alpn: frozenset[str]
    source_type: str
    inbound: bool = False        # on an INBOUND listener (Istio's reporter="destination")


def _nets(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, int]]:
    return [(ipaddress.ip_network(f"{ip}/{plen}", strict=False), int(plen)) for ip, plen in rows]


@dataclass(slots=True)
class MeshListener:
    name: str
    conf: Mapping[str, Any]
    address: str
    port: int
    bind: bool
    use_original_dst: bool
    original_dst_filter: bool
    sniff: bool
    chains: list[MeshChain]
    default: MeshChain | None


@dataclass(slots=True)
class MeshConfig:
    """A worker's compiled mesh config for one version."""

    version: int
    listeners: dict[str, MeshListener]
    by_addr: dict[tuple[str, int], MeshListener]
    by_port: dict[int, MeshListener]
    tables: dict[str, TableView]
    handles: dict[str, ChainHandle]
    errors: list[str] = field(default_factory=list)

    def listener_for(self, ip: str, port: int) -> MeshListener | None:
        """The listener whose address is (ip, port), else a wildcard one on that port."""
        got = self.by_addr.get((ip, port))
        if got is None:
            got = self.by_port.get(port)
        return got

    def bound(self) -> list[MeshListener]:
        return [lst for lst in self.listeners.values() if lst.bind]


def _match_len(nets: list[tuple[Any, int]], ip: Any) -> int:
    """Longest prefix of ``nets`` containing ``ip``; -1: none; 0 for an empty list (any)."""
    if not nets:
        return 0
    best = -1
    for net, plen in nets:
        if ip.version == net.version and ip in net and plen >= best:
            best = plen
    return best


def _sni_score(names: list[str], sni: str) -> int:
    if not names:
        return 0
    if not sni:
        return -1
    if sni in names:
        return 1000
    best = -1
    for n in names:
        if n.startswith("*.") and sni.endswith(n[1:]):
            best = max(best, len(n))
    return best


def select_chain(lst: MeshListener, *, dst: tuple[str, int], src: tuple[str, int], transport: str = "raw_buffer",
                 alpn: Sequence[str] = (), sni: str = "") -> MeshChain | None:
    """Envoy's filter chain selection: at each criterion, in Envoy's order, keep the chains
    with the most specific match that holds (a chain that does not name the criterion
    matches anything, as the least specific); a chain naming a criterion that does not
    hold is out.  Then the default chain, else None (Envoy closes the connection)."""
    cands = lst.chains
    if not cands:
        return lst.default
    dip = ipaddress.ip_address(dst[0])
    sip = ipaddress.ip_address(src[0])

    def keep(score: Callable[[MeshChain], int]) -> list[MeshChain]:
        scored = [(score(c), c) for c in cands]
        best = max((s for s, _ in scored), default=-1)
        if best < 0:
            return []
        return [c for s, c in scored if s == best]

    steps: list[Callable[[MeshChain], int]] = [
        lambda c: 0 if c.port is None else (1 if c.port == dst[1] else -1),
        lambda c: _match_len(c.dst, dip),
        lambda c: _sni_score(c.sni, sni),
        lambda c: 0 if not c.transport else (1 if c.transport == transport else -1),
        lambda c: 0 if not c.alpn else (1 if c.alpn.intersection(alpn) else -1),
        lambda c: _match_len(c.direct_src, sip),
        lambda c: 0 if c.source_type == "ANY" else (
            1 if (c.source_type == "SAME_IP_OR_LOOPBACK") == (sip.is_loopback or src[0] == dst[0]) else -1),
        lambda c: _match_len(c.src, sip),
        lambda c: 0 if not c.src_ports else (1 if src[1] in c.src_ports else -1),
    ]
    for step in steps:
        cands = keep(step)
        if not cands:
            return lst.default
        if len(cands) == 1:
            # the rest could still rule it out
            c = cands[0]
            if all(s(c) >= 0 for s in steps):
                return c
            return lst.default
    return cands[0]


def _chain(lname: str, i: int, conf: Mapping[str, Any], handles: dict[str, ChainHandle],
           prev: dict[str, ChainHandle] | None) -> MeshChain:
    key = f"{lname}#{'default' if i < 0 else i}#{conf.get('name', '')}"
    h = handles.get(key) or (prev or {}).get(key) or ChainHandle(key)
    handles[key] = h
    m = conf["match"]
    return MeshChain(index=i, conf=conf, kind=conf["kind"] if not conf.get("unsupported") else "none", handle=h,
                     port=m["port"], dst=_nets(m["dst"]), direct_src=_nets(m["direct_src"]), src=_nets(m["src"]),
                     src_ports=frozenset(m["src_ports"]), sni=list(m["sni"]), transport=m["transport"],
                     alpn=frozenset(m["alpn"]), source_type=m["source_type"])


def _compile_table(name: str, table: Mapping[str, Any], base: Runtime, version: int,
                   http: Mapping[str, Any] | None, stats: StatsConf | None = None,
                   plugins: PluginChain | None = None) -> TableView:
    routes: dict[str, RouteRuntime] = {}
    vhosts: list[tuple[Sequence[str], _VHost]] = []
    cfg_headers = table.get("headers")
    upstreams = base.upstreams
    websocket = bool(http and http.get("websocket"))
    cors_on = bool(http and http.get("cors"))
    hcm_fault = http.get("fault") if http else None
    for vi, vh in enumerate(table["virtual_hosts"]):
        v = _VHost(vh["name"], [])
        for ri, r in enumerate(vh["routes"]):
            rid = f"{name}/{vh['name']}/{ri}"
            rr = RouteRuntime(rid, r)
            rr.name = r.get("name") or None
            rr.matched_uri = r["match"]["path"]["value"]
            action = r["action"]
            req_add, req_rm, resp_add, resp_rm = _mutations(r.get("headers"), vh.get("headers"), cfg_headers)
            pol = _policy(r, vh)
            b = RouteBehaviour(table=name, route=r, action=action, req_add=req_add, req_rm=req_rm,
                               resp_add=resp_add, resp_rm=resp_rm,
                               fault=r.get("fault") or vh.get("fault") or hcm_fault,
                               cors=r.get("cors") or vh.get("cors"), cors_on=cors_on,
                               mirrors=[(up, float(m["fraction"])) for m in r.get("mirrors") or ()
                                        if (up := upstreams.get("upstreams/" + m["cluster"])) is not None],
                               hash=list(r.get("hash") or ()))
            if action["kind"] == "cluster":
                rr.upstream = upstreams.get("upstreams/" + action["cluster"])
                if rr.upstream is None:
                    # Envoy: the route's cluster is unknown → 503 (NC), the fault filter first
                    b.action = {"kind": "direct", "status": 503, "body": ""}
            elif action["kind"] == "weighted":
                for wc in action["clusters"]:
                    if wc["weight"] <= 0:
                        continue
                    wh = wc.get("headers") or {}
                    extra = None
                    if any(wh.get(k) for k in ("req_add", "req_remove", "resp_add", "resp_remove")):
                        extra = _mutations(wh)
                    b.weighted.append((wc["name"], int(wc["weight"]), extra))
                b.total = sum(w for _, w, _ in b.weighted)
                if b.weighted:
                    first = upstreams.get("upstreams/" + b.weighted[0][0])
                    rr.upstream = first
                if b.total <= 0:
                    b.action = {"kind": "direct", "status": 503, "body": ""}
            rr.enable_websocket = websocket
            rr.timeouts = _route_timeouts(rr.upstream, pol)
            rr.mesh = pol
            phases: dict[str, Any] = {"rewrite": ((route_hook, b, None, None, "xds-route"),)}
            if b.resp_add or b.resp_rm or b.cors is not None or (
                    action["kind"] == "weighted" and any(e is not None for _, _, e in b.weighted)):
                phases["header_filter"] = ((response_hook, b, None, None, "xds-route"),)
            if stats is not None:
                phases["log"] = ((stats_hook, stats, None, None, "istio.stats"),)
            rr.chain = _with_plugins(PluginChain(phases, ("xds-route",)), plugins)
            routes[rid] = rr
            v.routes.append((MeshRoute(rid, r["match"]), rr))
        vhosts.append((vh["domains"], v))
    router = MeshRouter(VirtualHosts(vhosts, bool(table.get("ignore_port"))), version)
    rt = Runtime(version=version, snapshot=base.snapshot, router=router, routes=routes,
                 upstreams=upstreams, plugins=base.plugins, plugins_generation=base.plugins_generation)
    rt.mesh = True
    return TableView(name, rt)


def _with_plugins(route: PluginChain, extra: PluginChain | None) -> PluginChain:
    """The route's own hooks, then the mesh controller's plugins, phase by phase: Envoy's
    route semantics decide first (a direct response, redirect or fault answers before them),
    the plugins then run as on a gateway route (their priority order)."""
    if extra is None:
        return route
    phases = dict(route.phases)
    for ph, hooks in extra.phases.items():
        phases[ph] = phases.get(ph, ()) + hooks
    return PluginChain(phases, route.names + extra.names, dict(extra.entries))


def mesh_plugins_chain(snapshot: Snapshot, base: Runtime) -> PluginChain | None:
    """The chain of the ``mesh_plugins`` set (the mesh controller's AmeshPluginConfigs for
    this pod): validated by the sidecar before it ACKed, so a failure here is logged and the
    routes run without it."""
    plugins: dict[str, Any] = {}
    for _, res in sorted(snapshot.items("mesh_plugins").items()):
        plugins.update(res.value.get("plugins") or {})
    if not plugins or base.plugins is None:
        return None
    try:
        return base.plugins.compile_chain(plugins, pointer="/plugins", kind="mesh_plugins", id="amesh",
                                          owner="mesh_plugins:amesh")
    except Exception:
        log.exception("the mesh controller's plugins were not compiled")
        return None


def _route_timeouts(up: UpstreamRuntime | None, pol: MeshPolicy) -> Timeouts:
    connect = up.timeouts.connect if up is not None else 10.0
    read = pol.per_try or pol.timeout
    return Timeouts(connect=connect, send=max(read, 60.0), read=read)


def compile_mesh(snapshot: Snapshot, base: Runtime, previous: MeshConfig | None = None, *,
                 me: IstioPeer | None = None) -> MeshConfig:
    """The mesh config of ``snapshot``; ``base`` is the gateway Runtime compiled from the same
    snapshot (its upstreams are the clusters).  A listener or table that fails to compile is
    logged and left out (its translation was checked before the ACK, so this is a bug)."""
    version = snapshot.version
    stats = StatsConf(me) if me is not None else None
    stats_in = StatsConf(me, inbound=True) if me is not None else None
    handles: dict[str, ChainHandle] = {}
    prev_handles = previous.handles if previous is not None else None
    errors: list[str] = []
    tables: dict[str, TableView] = {}
    rds = snapshot.items("route_configs")
    amesh = mesh_plugins_chain(snapshot, base)
    listeners: dict[str, MeshListener] = {}
    by_addr: dict[tuple[str, int], MeshListener] = {}
    by_port: dict[int, MeshListener] = {}
    for lname, res in snapshot.items("listeners").items():
        lc = res.value
        try:
            chains = [_chain(lname, i, c, handles, prev_handles) for i, c in enumerate(lc["chains"])]
            default = _chain(lname, -1, lc["default_chain"], handles, prev_handles) \
                if lc.get("default_chain") else None
            for ch in [*chains, *([default] if default else [])]:
                ch.handle.chain = ch
                ch.inbound = lc.get("direction") == "INBOUND"
                http = ch.conf.get("http")
                if ch.kind != "http" or http is None:
                    ch.handle.view = None
                    continue
                if http.get("rds"):
                    tname = http["rds"]
                    tkey = f"{tname}|ws={bool(http.get('websocket'))}|cors={bool(http.get('cors'))}"
                    view = tables.get(tkey)
                    if view is None:
                        t = rds.get(tname)
                        table = t.value if t is not None else {"name": tname, "virtual_hosts": [],
                                                               "ignore_port": False, "headers": None}
                        view = tables[tkey] = _compile_table(tname, table, base, version, http, stats, amesh)
                else:
                    view = _compile_table(f"{lname}/{ch.index}", http["routes"], base, version, http,
                                          stats_in if lc.get("direction") == "INBOUND" else stats, amesh)
                ch.handle.view = view
            ml = MeshListener(name=lname, conf=lc, address=lc["address"], port=int(lc["port"]),
                              bind=bool(lc["bind_to_port"]), use_original_dst=bool(lc["use_original_dst"]),
                              original_dst_filter=bool(lc.get("original_dst_filter")),
                              sniff=bool(lc.get("sniff")), chains=chains, default=default)
        except Exception as e:
            log.exception("listener %s not compiled", lname)
            errors.append(f"listener {lname}: {e!r}")
            continue
        listeners[lname] = ml
        by_addr[(ml.address, ml.port)] = ml
        if ml.address in ("0.0.0.0", "::"):
            by_port.setdefault(ml.port, ml)
    return MeshConfig(version=version, listeners=listeners, by_addr=by_addr, by_port=by_port, tables=tables,
                      handles=handles, errors=errors)
