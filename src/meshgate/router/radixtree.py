"""HTTP route matching with APISIX radixtree semantics, compiled once per Snapshot.

Theory of operation
-------------------
``compile_router(snapshot, kind=...)`` turns the snapshot's routes into an immutable
:class:`Router` (apisix-semantics.md section 1).  Nothing is parsed at match time.

Route compilation (``_compile_route``): ``status: 0`` routes are left out; conditions
are precompiled in APISIX's evaluation order: ``methods`` (frozenset), ``remote_addrs``
(:class:`IPMatcher`), hosts (own ``host``/``hosts``, else the ``service_id``'s service
``hosts``), ``vars`` (:func:`compile_expr`).  A route with invalid content is skipped
and reported in ``Router.errors``; it never breaks the other routes.

Each ``uri`` of a route becomes an *entry* stored under a *tree key*:

* no ``*`` (and, in the parameter router, no ``:``) -> **exact** table, key = uri;
* a single trailing ``*`` -> **prefix** node, key = uri without the ``*`` (raw byte
  prefix: ``/foo*`` matches ``/foobar``; ``/foo/*`` does not match ``/foo``);
* otherwise -> **param** entry at the node cut at the first ``*`` (or ``:`` in the
  parameter router), checked with a full-path regex: ``:name`` = one segment,
  a segment ``*name`` = anything including ``/`` (anonymous ``*`` is captured as
  ``ext``), any other ``*`` = anything (not captured), the rest literal.

A *uri tree* (:class:`_UriTree`) is a dict for the exact table plus a compressed
radix tree of the other keys.  Lookup (section 1.3): exact table first, then every
tree node whose key is a prefix of the path, longest first -- collected by one walk
down the tree (a dict lookup and a ``startswith`` per branching point on the path, so
the cost depends on the path, not on the number of routes).  Inside a node, entries are pre-sorted by ``priority`` desc, then longer
original uri, then load order (Snapshot dict order); the first entry whose regex and
conditions pass wins.

``radixtree_uri`` / ``radixtree_uri_with_parameter``: one uri tree; hosts are a
per-route condition.  ``radixtree_host_uri`` (default, section 1.5): routes with hosts
go into a host layer -- one uri tree per host pattern; the layer is searched exact
host first (dict), then wildcard suffixes longest first (dict keyed by the suffix,
probing the host's suffixes of the distinct wildcard lengths), and the first host
whose uri tree yields a route wins.  Only if the host layer yields nothing is the
hostless uri tree searched: a route with hosts always beats a hostless route.

Route hosts containing a port (``foo.com:8080``) are compared with the ``Host`` header
as received (``http_host``, lower-cased); other hosts with ``$host``.  In the host
layer the port-bearing patterns are tried first within each tier (exact, wildcard).
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Sequence

from ..errors import ConfigError
from ..model import Resource, Snapshot
from ._ip import IPMatcher
from .expr import Expr, compile_expr
from .types import ROUTER_KINDS, MatchInput, RouteMatch, RouterKind

__all__ = ["Router", "compile_router", "HTTP_METHODS"]

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"})
_HOST_RE = re.compile(r"^\*$|^\*?[0-9a-zA-Z\-._\[\]:]+$")
_NO_PARAMS: Mapping[str, str] = MappingProxyType({})
# "*name" captures only when name is an identifier (or empty: "ext").  APISIX would also
# read "/img/*.png" as a capture named ".png" (matching any file); here it is a wildcard
# followed by the literal ".png".
_NAME_RE = re.compile(r"[A-Za-z0-9_]*")
_EXPLAIN_LIMIT = 200


# --------------------------------------------------------------------------- hosts

def _has_port(pattern: str) -> bool:
    """A route host with a port is compared with the Host header including the port.
    A bare bracketed IPv6 literal (``[::1]``) has colons but no port."""
    h = pattern.lstrip("*")
    if h.startswith("["):
        return "]:" in h
    return ":" in h


class _HostCond:
    """Host condition of one route (``radixtree_uri`` routers).

    ``match`` returns the route's host pattern that matched, or ``None``.  Wildcards
    ``*X`` match when the host ends with ``X`` (so ``*.foo.com`` matches
    ``a.b.foo.com`` but not ``foo.com``; bare ``*`` matches any host)."""

    __slots__ = ("exact", "wild", "port_exact", "port_wild", "has_port")

    def __init__(self, patterns: Sequence[str]) -> None:
        exact: dict[str, str] = {}
        wild: list[tuple[str, str]] = []
        pexact: dict[str, str] = {}
        pwild: list[tuple[str, str]] = []
        for p in patterns:
            port = _has_port(p)
            if p.startswith("*"):
                (pwild if port else wild).append((p[1:], p))
            else:
                (pexact if port else exact)[p] = p
        # Longest suffix first, so the reported pattern is the most specific one.
        self.exact = exact
        self.wild = tuple(sorted(wild, key=lambda t: -len(t[0])))
        self.port_exact = pexact
        self.port_wild = tuple(sorted(pwild, key=lambda t: -len(t[0])))
        self.has_port = bool(pexact or pwild)

    def match(self, req: MatchInput) -> str | None:
        if self.has_port:
            hh = req.http_host.lower()
            p = self.port_exact.get(hh)
            if p is not None:
                return p
            for suffix, p in self.port_wild:
                if hh.endswith(suffix):
                    return p
        host = req.host
        p = self.exact.get(host)
        if p is not None:
            return p
        for suffix, p in self.wild:
            if host.endswith(suffix):
                return p
        return None


class _SuffixIndex:
    """Wildcard host patterns keyed by their suffix (``*.foo.com`` -> ``.foo.com``).

    ``probe(host)`` yields the nodes whose suffix ends the host, longest first: one
    dict lookup per distinct suffix length not longer than the host."""

    __slots__ = ("nodes", "lengths")

    def __init__(self, nodes: dict[str, tuple[str, _UriTree]]) -> None:
        self.nodes = nodes  # suffix -> (pattern, uri tree)
        self.lengths = tuple(sorted({len(k) for k in nodes}))

    def probe(self, host: str) -> Iterator[tuple[str, tuple[str, _UriTree]]]:
        nodes = self.nodes
        lengths = self.lengths
        n = len(host)
        i = bisect_right(lengths, n)
        while i:
            i -= 1
            length = lengths[i]
            key = host[n - length:]
            node = nodes.get(key)
            if node is not None:
                yield key, node


# --------------------------------------------------------------------------- routes

class _Route:
    """One route's precompiled conditions (shared by all its entries)."""

    __slots__ = ("id", "value", "order", "priority", "methods", "addrs", "hosts", "vars", "service_missing")

    def __init__(self) -> None:
        self.id = ""
        self.value: Mapping[str, Any] = {}
        self.order = 0
        self.priority = 0
        self.methods: frozenset[str] | None = None
        self.addrs: IPMatcher | None = None
        self.hosts: tuple[str, ...] | None = None  # lower-cased patterns, own or from the service
        self.vars: Expr | None = None
        self.service_missing = False


class _Entry:
    """One (route, uri[, host node]) stored in a uri tree."""

    __slots__ = ("route", "uri", "key", "stage", "regex", "names", "host_cond", "host", "hit", "host_hits",
                 "simple", "sort_key")

    def __init__(self, route: _Route, uri: str, key: str, stage: str, regex: re.Pattern[str] | None,
                 names: tuple[str, ...], host_cond: _HostCond | None, host: str | None) -> None:
        self.route = route
        self.uri = uri
        self.key = key
        self.stage = stage          # "exact" | "prefix" | "param"
        self.regex = regex
        self.names = names
        self.host_cond = host_cond  # uri routers: the route's hosts as a condition
        self.host = host            # host_uri router: the host node this entry lives under
        # Prebuilt results: a match without captures allocates nothing.
        self.hit = RouteMatch(route.id, route.value, _NO_PARAMS, uri, host)
        self.host_hits: dict[str, RouteMatch] = {}
        if host_cond is not None:
            for p in route.hosts or ():
                self.host_hits[p] = RouteMatch(route.id, route.value, _NO_PARAMS, uri, p)
        self.simple = (regex is None and host_cond is None and route.methods is None
                       and route.addrs is None and route.vars is None)
        # APISIX insert order: priority desc, longer original uri first, then load order.
        self.sort_key = (-route.priority, -len(uri), route.order)


def _split_uri(uri: str, with_param: bool) -> tuple[str, str, re.Pattern[str] | None, tuple[str, ...]]:
    """-> (tree key, stage, full-path regex or None, capture names)."""
    cut = uri.find("*")
    if with_param:
        colon = uri.find(":")
        if colon >= 0 and (cut < 0 or colon < cut):
            cut = colon
    if cut < 0:
        return uri, "exact", None, ()
    key = uri[:cut]
    if cut == len(uri) - 1:  # one trailing '*': a plain prefix
        return key, "prefix", None, ()
    parts: list[str] = []
    names: list[str] = []
    for seg in uri.split("/"):
        if with_param and seg.startswith(":"):
            names.append(seg[1:])
            parts.append("([^/]+)")
        elif seg.startswith("*") and _NAME_RE.fullmatch(seg, 1):
            names.append(seg[1:] or "ext")
            parts.append("(.*)")
        else:
            # A '*' inside a segment matches anything (not captured); the rest is literal.
            parts.append(".*".join(re.escape(p) for p in seg.split("*")))
    return key, "param", re.compile("/".join(parts), re.DOTALL), tuple(names)


def _params(names: tuple[str, ...], m: re.Match[str]) -> Mapping[str, str]:
    if not names:
        return _NO_PARAMS
    if len(names) == 1:
        return {names[0]: m[1]}
    return dict(zip(names, m.groups()))


def _as_list(value: Any, pointer: str, what: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(pointer, f"expected a non-empty array of {what}, got {_short(value)}")
    return value


def _short(v: Any) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _host_patterns(value: Any, pointer: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, h in enumerate(value):
        if not isinstance(h, str) or not _HOST_RE.match(h):
            raise ConfigError(f"{pointer}/{i}", f"invalid host {_short(h)}: expected a host name, optionally "
                              "with a leading '*' wildcard, or '*'")
        h = h.lower()
        if h not in out:
            out.append(h)
    return tuple(out)


def _compile_route(rid: str, value: Mapping[str, Any], order: int,
                   services: Mapping[str, Resource]) -> tuple[_Route, list[str]] | None:
    """-> (route, uris), or None when the route is disabled (``status: 0``)."""
    if not isinstance(value, Mapping):
        raise ConfigError("", "expected a route object")
    status = value.get("status")
    # Lua: `status == 0`; JSON false is not 0 in Lua, so only numbers disable a route.
    if status is not None and not isinstance(status, bool) and status == 0:
        return None
    r = _Route()
    r.id = rid
    r.value = value
    r.order = order

    if "uri" in value and "uris" in value:
        raise ConfigError("/uris", "only one of uri or uris is allowed")
    if "uris" in value:
        uris = _as_list(value["uris"], "/uris", "uri strings")
        for i, u in enumerate(uris):
            if not isinstance(u, str) or not u:
                raise ConfigError(f"/uris/{i}", f"expected a non-empty uri string, got {_short(u)}")
    elif "uri" in value:
        u = value["uri"]
        if not isinstance(u, str) or not u:
            raise ConfigError("/uri", f"expected a non-empty uri string, got {_short(u)}")
        uris = [u]
    else:
        raise ConfigError("", "required: uri or uris")

    prio = value.get("priority", 0)
    if prio is None:
        prio = 0
    if isinstance(prio, bool) or not isinstance(prio, (int, float)) or (
            isinstance(prio, float) and not prio.is_integer()):
        raise ConfigError("/priority", f"expected an integer, got {_short(prio)}")
    r.priority = int(prio)

    methods = value.get("methods")
    if methods is not None:
        if not isinstance(methods, list):
            raise ConfigError("/methods", f"expected an array of HTTP methods, got {_short(methods)}")
        for i, m in enumerate(methods):
            if not isinstance(m, str) or m not in HTTP_METHODS:
                raise ConfigError(f"/methods/{i}", f"unknown method {_short(m)}: expected one of "
                                  f"{', '.join(sorted(HTTP_METHODS))}")
        if methods:  # empty = any method
            r.methods = frozenset(methods)

    if "remote_addr" in value and "remote_addrs" in value:
        raise ConfigError("/remote_addrs", "only one of remote_addr or remote_addrs is allowed")
    if "remote_addrs" in value:
        r.addrs = IPMatcher(_as_list(value["remote_addrs"], "/remote_addrs", "IPs/CIDRs"), "/remote_addrs")
    elif "remote_addr" in value:
        ra = value["remote_addr"]
        try:
            r.addrs = IPMatcher([ra], "/remote_addr")
        except ConfigError as e:
            raise ConfigError("/remote_addr", e.message) from None

    if "host" in value and "hosts" in value:
        raise ConfigError("/hosts", "only one of host or hosts is allowed")
    if "hosts" in value:
        r.hosts = _host_patterns(_as_list(value["hosts"], "/hosts", "hosts"), "/hosts")
    elif "host" in value:
        r.hosts = _host_patterns([value["host"]], "/host")
    else:
        sid = value.get("service_id")
        if sid is not None and not isinstance(sid, bool):
            svc = services.get(str(sid))
            if svc is None:
                # Still matched: the proxy answers 404 for a missing service (section 1.6).
                r.service_missing = True
            else:
                sh = svc.value.get("hosts") if isinstance(svc.value, Mapping) else None
                if sh:
                    try:
                        r.hosts = _host_patterns(_as_list(sh, "/hosts", "hosts"), "/hosts")
                    except ConfigError as e:
                        raise ConfigError("/service_id", f"service {sid} has invalid hosts: {e}") from None

    if value.get("vars") is not None:
        r.vars = compile_expr(value["vars"], "/vars")

    if value.get("filter_func") is not None:
        # Never eval config strings (CVE-2020-13945); dropping the condition silently would
        # widen the route, so the route is not served at all.
        raise ConfigError("/filter_func", "filter_func (Lua) is not supported by Meshgate")
    return r, list(uris)


# --------------------------------------------------------------------------- uri tree

def _scan(entries: tuple[_Entry, ...], req: MatchInput, path: str) -> RouteMatch | None:
    """First entry (in precedence order) whose regex and conditions pass."""
    for e in entries:
        if e.simple:
            return e.hit
        rx = e.regex
        m = None
        if rx is not None:
            m = rx.fullmatch(path)
            if m is None:
                continue
        r = e.route
        if r.methods is not None and req.method not in r.methods:
            continue
        if r.addrs is not None and not r.addrs.match(req.remote_addr):
            continue
        hc = e.host_cond
        h = None
        if hc is not None:
            h = hc.match(req)
            if h is None:
                continue
        if r.vars is not None and not r.vars.eval(req.var):
            continue
        if m is None:
            return e.hit if h is None else e.host_hits[h]
        return RouteMatch(r.id, r.value, _params(e.names, m), e.uri, e.host if h is None else h)
    return None


class _Node:
    """A compressed radix tree node: ``label`` is the edge from the parent, ``children``
    are keyed by the first character of their label, ``entries`` are the sorted entries
    whose tree key ends here (``None`` for pure branching nodes)."""

    __slots__ = ("label", "children", "entries")

    def __init__(self, label: str) -> None:
        self.label = label
        self.children: dict[str, _Node] = {}
        self.entries: tuple[_Entry, ...] | None = None


def _radix_insert(root: _Node, key: str, entries: tuple[_Entry, ...]) -> None:
    node = root
    i = 0
    n = len(key)
    while i < n:
        child = node.children.get(key[i])
        if child is None:
            leaf = _Node(key[i:])
            leaf.entries = entries
            node.children[key[i]] = leaf
            return
        label = child.label
        j = 1  # label[0] == key[i] by construction
        m = min(len(label), n - i)
        while j < m and label[j] == key[i + j]:
            j += 1
        if j < len(label):
            # Split the edge: node -> mid(label[:j]) -> child(label[j:]).
            mid = _Node(label[:j])
            child.label = label[j:]
            mid.children[child.label[0]] = child
            node.children[key[i]] = mid
            child = mid
        node = child
        i += j
    node.entries = entries


class _UriTree:
    """Exact table + radix tree of prefix keys (section 1.3)."""

    __slots__ = ("exact", "prefix", "root", "size")

    def __init__(self, exact: dict[str, tuple[_Entry, ...]], prefix: dict[str, tuple[_Entry, ...]],
                 root: _Node | None, size: int) -> None:
        self.exact = exact      # tree key -> sorted entries, for exact uris
        self.prefix = prefix    # tree key -> sorted entries, for prefix / parameter uris (in ``root``)
        self.root = root
        self.size = size

    def _nodes(self, path: str) -> list[tuple[_Entry, ...]]:
        """Entry lists of every tree key that is a prefix of ``path``, shortest first.
        Cost: one dict lookup + one ``startswith`` per branching point on the path."""
        root = self.root
        found: list[tuple[_Entry, ...]] = []
        if root is None:
            return found
        if root.entries is not None:
            found.append(root.entries)
        children = root.children
        i = 0
        n = len(path)
        while i < n:
            child = children.get(path[i])
            if child is None:
                break
            label = child.label
            ln = len(label)
            # the first character matched already (the children's key)
            if ln > 1 and path[i:i + ln] != label:
                break
            i += ln
            if child.entries is not None:
                found.append(child.entries)
            children = child.children
        return found

    def match(self, req: MatchInput, path: str) -> RouteMatch | None:
        lst = self.exact.get(path)
        if lst is not None:
            hit = _scan(lst, req, path)
            if hit is not None:
                return hit
        if self.root is not None:
            found = self._nodes(path)
            i = len(found)
            while i:  # longest prefix first
                i -= 1
                hit = _scan(found[i], req, path)
                if hit is not None:
                    return hit
        return None

    def candidates(self, path: str) -> Iterator[_Entry]:
        """Every entry whose node fits the path, in the order ``match`` tries them."""
        yield from self.exact.get(path, ())
        for lst in reversed(self._nodes(path)):
            yield from lst


def _sort_key(e: _Entry) -> tuple[int, int, int]:
    return e.sort_key


def _radix(prefix: dict[str, tuple[_Entry, ...]]) -> _Node | None:
    if not prefix:
        return None
    root = _Node("")
    for k, v in prefix.items():
        _radix_insert(root, k, v)
    return root


def build_tree(entries: list[_Entry]) -> _UriTree:
    exact: dict[str, list[_Entry]] = {}
    prefix: dict[str, list[_Entry]] = {}
    for e in entries:
        (exact if e.stage == "exact" else prefix).setdefault(e.key, []).append(e)
    ex = {k: tuple(sorted(v, key=_sort_key)) for k, v in exact.items()}
    px = {k: tuple(sorted(v, key=_sort_key)) for k, v in prefix.items()}
    return _UriTree(ex, px, _radix(px), len(entries))


def patch_tree(prev: _UriTree, removed: list[_Entry], added: list[_Entry]) -> _UriTree:
    """``prev`` without the ``removed`` entries and with the ``added`` ones: the tree a
    :func:`build_tree` of the new entry list would give (entries sort by their own keys),
    for the cost of the keys touched.  The radix part is rebuilt only when a prefix key
    changed."""
    gone = {id(e) for e in removed}
    touched_exact: dict[str, list[_Entry]] = {}
    touched_prefix: dict[str, list[_Entry]] = {}
    for e in removed:
        (touched_exact if e.stage == "exact" else touched_prefix).setdefault(e.key, [])
    for e in added:
        (touched_exact if e.stage == "exact" else touched_prefix).setdefault(e.key, []).append(e)
    exact = prev.exact
    if touched_exact:
        exact = dict(exact)
        for k, new in touched_exact.items():
            lst = [e for e in exact.get(k, ()) if id(e) not in gone] + new
            if lst:
                exact[k] = tuple(sorted(lst, key=_sort_key))
            else:
                exact.pop(k, None)
    prefix, root = prev.prefix, prev.root
    if touched_prefix:
        prefix = dict(prefix)
        for k, new in touched_prefix.items():
            lst = [e for e in prefix.get(k, ()) if id(e) not in gone] + new
            if lst:
                prefix[k] = tuple(sorted(lst, key=_sort_key))
            else:
                prefix.pop(k, None)
        root = _radix(prefix)
    return _UriTree(exact, prefix, root, prev.size - len(removed) + len(added))


class _HostLayer:
    """radixtree_host_uri: host pattern -> uri tree (section 1.5)."""

    __slots__ = ("trees_by_pattern", "exact", "wild", "port_exact", "port_wild", "has_port", "size")

    def __init__(self, trees: dict[str, _UriTree]) -> None:
        exact: dict[str, _UriTree] = {}
        wild: dict[str, tuple[str, _UriTree]] = {}
        pexact: dict[str, _UriTree] = {}
        pwild: dict[str, tuple[str, _UriTree]] = {}
        # Wildcard nodes are (pattern, tree) keyed by the suffix after '*'.
        for pattern, tree in trees.items():
            port = _has_port(pattern)
            if pattern.startswith("*"):
                (pwild if port else wild)[pattern[1:]] = (pattern, tree)
            else:
                (pexact if port else exact)[pattern] = tree
        self.trees_by_pattern = trees
        self.exact = exact
        self.wild = _SuffixIndex(wild)
        self.port_exact = pexact
        self.port_wild = _SuffixIndex(pwild)
        self.has_port = bool(pexact or pwild)
        self.size = len(trees)

    def trees(self, req: MatchInput) -> Iterator[tuple[str, str, _UriTree]]:
        """(pattern, tier, uri tree) for every host node fitting the request, in order."""
        hh = req.http_host.lower() if self.has_port else ""
        if self.has_port:
            t = self.port_exact.get(hh)
            if t is not None:
                yield hh, "exact host (with port)", t
        t = self.exact.get(req.host)
        if t is not None:
            yield req.host, "exact host", t
        if self.has_port:
            for _, (pattern, t) in self.port_wild.probe(hh):
                yield pattern, "wildcard host (with port)", t
        for _, (pattern, t) in self.wild.probe(req.host):
            yield pattern, "wildcard host", t

    def match(self, req: MatchInput, path: str) -> RouteMatch | None:
        if not self.has_port:
            # Hot path: inlined version of trees() without the generator.
            host = req.host
            t = self.exact.get(host)
            if t is not None:
                hit = t.match(req, path)
                if hit is not None:
                    return hit
            wild = self.wild
            nodes = wild.nodes
            lengths = wild.lengths
            n = len(host)
            i = bisect_right(lengths, n)
            while i:
                i -= 1
                node = nodes.get(host[n - lengths[i]:])
                if node is not None:
                    hit = node[1].match(req, path)
                    if hit is not None:
                        return hit
            return None
        for _, _, t in self.trees(req):
            hit = t.match(req, path)
            if hit is not None:
                return hit
        return None


# --------------------------------------------------------------------------- router

class Router:
    """A compiled matcher for one Snapshot.  Immutable; safe to share between requests."""

    __slots__ = ("kind", "version", "errors", "route_count", "_hosts", "_uri", "_cache", "_services")

    def __init__(self, kind: RouterKind, version: int, errors: list[ConfigError], route_count: int,
                 hosts: _HostLayer | None, uri: _UriTree) -> None:
        self.kind: RouterKind = kind
        self.version = version
        self.errors = errors            # routes skipped because of invalid content
        self.route_count = route_count  # routes compiled in (status 0 and errors excluded)
        self._hosts = hosts
        self._uri = uri
        # per route id: what the next version's compile may reuse (see compile_router)
        self._cache: dict[str, _Compiled] = {}
        self._services: Mapping[str, Resource] | None = None

    def __repr__(self) -> str:
        return f"<Router {self.kind} version={self.version} routes={self.route_count} errors={len(self.errors)}>"

    def match(self, req: MatchInput) -> RouteMatch | None:
        """The route for this request, or ``None`` (404 Route Not Found)."""
        path = req.path
        hosts = self._hosts
        if hosts is not None:
            hit = hosts.match(req, path)
            if hit is not None:
                return hit
        return self._uri.match(req, path)

    # -- explanation (Control API /v1/match) --------------------------------------
    def explain(self, req: MatchInput) -> dict[str, Any]:
        """Replay the lookup, recording every candidate in precedence order.

        ``result`` is ``matched`` (the winner), ``rejected`` (with ``reason``) or
        ``shadowed`` (would also match, but ranks after the winner; ``reason`` says
        why the winner beats it)."""
        path = req.path
        walk: list[tuple[str, str | None, str | None, _Entry]] = []  # (layer, host, tier, entry)
        host_layer: dict[str, Any] | None = None
        if self._hosts is not None:
            tried: list[dict[str, Any]] = []
            host_layer = {"host": req.host, "http_host": req.http_host, "nodes": tried}
            for pattern, tier, tree in self._hosts.trees(req):
                tried.append({"host": pattern, "tier": tier, "routes": tree.size})
                for e in tree.candidates(path):
                    walk.append(("host", pattern, tier, e))
        layer = "hostless" if self._hosts is not None else "uri"
        for e in self._uri.candidates(path):
            walk.append((layer, None, None, e))

        candidates: list[dict[str, Any]] = []
        winner: dict[str, Any] | None = None
        expected = self.match(req)
        for layer_name, node_host, node_tier, e in walk:
            reason, matched_host = _reject_reason(e, req, path)
            r = e.route
            c: dict[str, Any] = {
                "route_id": r.id,
                "uri": e.uri,
                "priority": r.priority,
                "stage": e.stage,
                "node": e.key,
                "layer": layer_name,
                "host": node_host if node_host is not None else matched_host,
            }
            if node_tier is not None:
                c["host_tier"] = node_tier
            if reason is None:
                if winner is None:
                    c["result"] = "matched"
                    c["reason"] = "uri and every condition match"
                    winner = c
                    if e.regex is not None:
                        m = e.regex.fullmatch(path)
                        if m is not None:
                            c["params"] = dict(_params(e.names, m))
                else:
                    c["result"] = "shadowed"
                    c["reason"] = _beats(winner, c, r.id == winner["route_id"])
            else:
                c["result"] = "rejected"
                c["reason"] = reason
            candidates.append(c)
        truncated = len(candidates) > _EXPLAIN_LIMIT
        if truncated:
            keep = [c for c in candidates[:_EXPLAIN_LIMIT]]
            if winner is not None and winner not in keep:
                keep.append(winner)
            candidates = keep
        matched = winner["route_id"] if winner is not None else None
        # The replay must agree with the fast path; say so loudly if it ever does not.
        consistent = (expected.route_id if expected is not None else None) == matched
        out: dict[str, Any] = {
            "matched": matched,
            "router": self.kind,
            "path": path,
            "method": req.method,
            "host_layer": host_layer,
            "candidates": candidates,
            "precedence": _precedence_text(winner, candidates, self.kind),
        }
        if winner is not None:
            out["matched_uri"] = winner["uri"]
            out["matched_host"] = winner["host"]
        if truncated:
            out["truncated"] = True
        if not consistent:  # pragma: no cover - a bug in explain, never expected
            out["inconsistent"] = f"match() returned {expected.route_id if expected else None}"
        return out


def _reject_reason(e: _Entry, req: MatchInput, path: str) -> tuple[str | None, str | None]:
    """Why this entry does not match (None if it does), and the route host that matched."""
    if e.regex is not None and e.regex.fullmatch(path) is None:
        return f"path {path!r} does not match pattern {e.uri!r}", None
    r = e.route
    if r.methods is not None and req.method not in r.methods:
        return f"method {req.method} not in [{', '.join(sorted(r.methods))}]", None
    if r.addrs is not None and not r.addrs.match(req.remote_addr):
        return f"remote_addr {req.remote_addr} not in [{', '.join(r.addrs.source)}]", None
    h = None
    if e.host_cond is not None:
        h = e.host_cond.match(req)
        if h is None:
            shown = req.host
            if e.host_cond.has_port:
                shown += f" (Host header {req.http_host!r})"
            return f"host {shown} not in [{', '.join(r.hosts or ())}]", None
    if r.vars is not None:
        ok, why = r.vars.explain(req.var)
        if not ok:
            return f"vars: {why}", h
    return None, h


def _beats(w: dict[str, Any], o: dict[str, Any], same_route: bool) -> str:
    """Why candidate ``w`` (the winner) ranks before ``o``."""
    if same_route:
        return "same route, reached again through another uri/host; the first match is used"
    if w["layer"] == "host" and o["layer"] == "hostless":
        return "a route with hosts always beats a hostless route (radixtree_host_uri)"
    if w["layer"] == "host" and w["host"] != o["host"]:
        wt, ot = w.get("host_tier", ""), o.get("host_tier", "")
        if wt.startswith("exact") and not ot.startswith("exact"):
            return f"exact host {w['host']!r} is tried before wildcard host {o['host']!r}"
        if "port" in wt and "port" not in ot:
            return f"host with port {w['host']!r} is tried before {o['host']!r}"
        return f"longer wildcard host {w['host']!r} is tried before {o['host']!r}"
    if w["stage"] == "exact" and o["stage"] != "exact":
        return f"exact path {w['uri']!r} beats prefix/pattern routes regardless of priority"
    if w["node"] != o["node"]:
        return (f"longer prefix node {w['node']!r} is tried before {o['node']!r} regardless of priority "
                f"({w['priority']} vs {o['priority']})")
    if w["priority"] != o["priority"]:
        return f"same tree node {w['node']!r}: higher priority {w['priority']} > {o['priority']}"
    if len(w["uri"]) != len(o["uri"]):
        return (f"same node and priority {w['priority']}: longer uri {w['uri']!r} ({len(w['uri'])} chars) "
                f"sorts before {o['uri']!r} ({len(o['uri'])} chars)")
    return (f"same node, priority {w['priority']} and uri length: route {w['route_id']} was loaded first "
            "(insertion order); set priority to disambiguate")


def _precedence_text(winner: dict[str, Any] | None, cands: list[dict[str, Any]], kind: str) -> str:
    if winner is None:
        if not cands:
            return "no route has a uri that fits this path (404 Route Not Found)"
        return f"no route matched: all {len(cands)} candidate(s) were rejected (404 Route Not Found)"
    parts: list[str] = []
    if winner["layer"] == "host":
        parts.append(f"{winner.get('host_tier', 'host')} {winner['host']!r} matched in the host layer, which is "
                     "searched before hostless routes (exact host, then longest wildcard suffix)")
    elif kind == "radixtree_host_uri":
        parts.append("no route in the host layer matched, so the hostless routes were searched")
    if winner["stage"] == "exact":
        parts.append(f"exact path {winner['uri']!r} (exact paths are checked before any prefix)")
    else:
        parts.append(f"longest matching tree node {winner['node']!r} with a passing route "
                     f"({winner['stage']} {winner['uri']!r}); within a node routes are ordered by priority desc, "
                     "then longer uri, then load order")
    idx = cands.index(winner)
    rejected_before = sum(1 for c in cands[:idx] if c["result"] == "rejected")
    if rejected_before:
        parts.append(f"{rejected_before} higher-ranked candidate(s) were rejected by their conditions")
    shadowed = [c for c in cands if c["result"] == "shadowed" and c["route_id"] != winner["route_id"]]
    if shadowed:
        shown = "; ".join(f"route {c['route_id']}: {c['reason']}" for c in shadowed[:5])
        more = f" (+{len(shadowed) - 5} more)" if len(shadowed) > 5 else ""
        parts.append(f"it also beats {len(shadowed)} other matching route(s): {shown}{more}")
    return f"route {winner['route_id']} won: " + "; ".join(parts)


# --------------------------------------------------------------------------- compile

class _Compiled:
    """One route's compiled entries, kept for the next version while its value is unchanged."""

    __slots__ = ("value", "order", "hosted", "hostless")

    def __init__(self, value: Mapping[str, Any], order: int, hosted: list[tuple[str, _Entry]],
                 hostless: list[_Entry]) -> None:
        self.value = value
        self.order = order
        self.hosted = hosted
        self.hostless = hostless


# Orders are spaced so that a route inserted between two unchanged ones (a full-state
# reload) gets an order between theirs without recompiling the routes after it.
_ORDER_GAP = 1024


def compile_router(snapshot: Snapshot, *, kind: RouterKind = "radixtree_host_uri",
                   previous: Router | None = None) -> Router:
    """Compile the snapshot's routes into a :class:`Router` of the given APISIX kind.

    With ``previous`` (the router of the last version), routes whose value object is
    unchanged (the store keeps unchanged items by identity) reuse their compiled entries,
    and the trees of the previous router are patched (the keys the changed routes touch)
    instead of rebuilt: one changed route among thousands costs about one route's compile.
    Never raises for bad route content: such routes are skipped and listed in
    ``Router.errors``.  An unknown ``kind`` is a :class:`ConfigError`."""
    if kind not in ROUTER_KINDS:
        raise ConfigError("/apisix/router/http", f"unknown router {kind!r}: expected one of {', '.join(ROUTER_KINDS)}")
    with_param = kind == "radixtree_uri_with_parameter"
    host_layer = kind == "radixtree_host_uri"
    services = snapshot.items("services")
    cache: dict[str, _Compiled] = {}
    if previous is not None and previous.kind == kind and previous._services is services:
        cache = previous._cache
    new_cache: dict[str, _Compiled] = {}
    errors: list[ConfigError] = []
    # the entries of the routes compiled now (a patch adds them to the previous trees)
    added_hosted: list[tuple[str, _Entry]] = []
    added_free: list[_Entry] = []
    count = 0
    reused = 0
    last = -1
    for rid, res in snapshot.items("routes").items():
        rid = str(rid)
        got = cache.get(rid)
        if got is not None and got.value is res.value and got.order > last:
            reused += 1
            last = got.order
            new_cache[rid] = got
            count += 1
            continue
        # fresh compile: spaced orders; with a cache: just after the previous route
        order = last + (1 if cache else _ORDER_GAP)
        last = order
        try:
            compiled = _compile_route(rid, res.value, order, services)
            if compiled is None:
                continue
            route, uris = compiled
            split = [(u, *_split_uri(u, with_param)) for u in uris]
        except ConfigError as e:
            errors.append(ConfigError(e.pointer, e.message, kind="routes", id=rid))
            continue
        except re.error as e:  # a uri Python's re cannot compile; should not happen (escaped)
            errors.append(ConfigError("/uri", f"cannot compile uri pattern: {e}", kind="routes", id=rid))
            continue
        count += 1
        hosted: list[tuple[str, _Entry]] = []
        free: list[_Entry] = []
        if host_layer and route.hosts:
            for h in route.hosts:
                for u, key, stage, rx, names in split:
                    hosted.append((h, _Entry(route, u, key, stage, rx, names, None, h)))
        else:
            cond = _HostCond(route.hosts) if route.hosts else None
            for u, key, stage, rx, names in split:
                free.append(_Entry(route, u, key, stage, rx, names, cond, None))
        added_hosted += hosted
        added_free += free
        new_cache[rid] = _Compiled(res.value, order, hosted, free)
    hosts: _HostLayer | None
    uri: _UriTree
    if cache and previous is not None and reused > len(cache) // 2:
        # mostly unchanged: patch the previous trees with what left and what came
        removed_hosted: list[tuple[str, _Entry]] = []
        removed_free: list[_Entry] = []
        for rid, old in cache.items():
            if new_cache.get(rid) is not old:
                removed_hosted += old.hosted
                removed_free += old.hostless
        uri = patch_tree(previous._uri, removed_free, added_free) if removed_free or added_free else previous._uri
        hosts = previous._hosts
        if removed_hosted or added_hosted:
            trees = dict(hosts.trees_by_pattern) if hosts is not None else {}
            rm: dict[str, list[_Entry]] = {}
            ad: dict[str, list[_Entry]] = {}
            for h, ent in removed_hosted:
                rm.setdefault(h, []).append(ent)
            for h, ent in added_hosted:
                ad.setdefault(h, []).append(ent)
            for h in rm.keys() | ad.keys():
                t = trees.get(h)
                t = patch_tree(t, rm.get(h, []), ad.get(h, [])) if t is not None else build_tree(ad.get(h, []))
                if t.size:
                    trees[h] = t
                else:
                    trees.pop(h, None)
            hosts = _HostLayer(trees) if trees else None
    else:
        by_host: dict[str, list[_Entry]] = {}
        hostless: list[_Entry] = []
        for c in new_cache.values():   # snapshot order
            for h, ent in c.hosted:
                by_host.setdefault(h, []).append(ent)
            hostless.extend(c.hostless)
        hosts = _HostLayer({h: build_tree(v) for h, v in by_host.items()}) if by_host else None
        uri = build_tree(hostless)
    router = Router(kind, snapshot.version, errors, count, hosts, uri)
    router._cache = new_cache
    router._services = services
    return router
