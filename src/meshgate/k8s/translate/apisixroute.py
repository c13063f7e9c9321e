"""ApisixRoute (``apisix.apache.org/v2``; ``v2beta3`` / ``v2beta2`` have the same fields) →
APISIX routes, upstreams and stream routes (ingress-controller.md section 2.1).

Each ``http[]`` rule ``i`` becomes one route ``<ns>_<name>_<rule>``:

* ``match``: ``paths`` → ``uris`` (exact, or prefix ``/foo*``), ``hosts`` (lowercased,
  de-duplicated), ``methods``, ``remoteAddrs`` → ``remote_addrs``, ``exprs`` → ``vars``
  (:func:`exprs_to_vars`); ``filter_func`` is refused (Lua from configuration);
* ``priority``, ``websocket`` → ``enable_websocket`` (also on when a backend's Service port
  has ``appProtocol: kubernetes.io/ws|wss``), ``timeout`` → ``timeout`` (missing parts 60 s);
* plugins, in increasing precedence: the referenced ApisixPluginConfig's (v2 inlines them,
  AIC ``loadPluginConfigPlugins``), the rule's own ``plugins[]``, the ``authentication``
  plugin;
* ``backends[]``: each Service backend is the upstream shared by every route reaching that
  Service port (``backends.service_upstream``: ``Service_<ns>_<svc>_<port>``), so an
  EndpointSlice change is one node-only write however many routes use the Service;
  ``upstreams[]`` (ApisixUpstreams with ``externalNodes``) are upstreams of the rule
  (``<ns>_<name>_<i>_<j>``).  The first upstream that resolves is the route's
  ``upstream_id``; with more than one, the route gets ``traffic-split`` with one rule whose
  ``weighted_upstreams`` are ``[{weight: w0}, {upstream_id, weight: wj}...]`` (AIC
  ``buildUpstream``; weight 0 kept, default 100).

Each ``stream[]`` rule becomes a stream route ``<ns>_<name>_<rule>_<TCP|UDP>`` with
``server_port`` (``match.ingressPort``), ``sni`` (``match.host``), plugins and the backend's
upstream.

Errors are per object: a rule with an invalid spec (``filter_func``, a bad expression, an
unsupported authentication, a missing Secret or ApisixPluginConfig...) is left out; a
backend that does not resolve (missing Service, unknown port...) is left out of its rule, as
AIC does, and a rule with no backend left keeps an upstream without nodes so that its
traffic is answered by the gateway instead of falling through to another route.  Every
problem is reported in :attr:`Translation.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...errors import ConfigError
from ...router import compile_expr
from .apisixupstream import external_upstream, timeout_of, upstream_fields, subsets_of
from .common import ClusterState, Item, Translation, TranslateError, build_plugins, object_ref
from .backends import service_upstream
from .endpoints import DEFAULT_WEIGHT, Backend, BackendError, find_service_port, resolve_backend
from .naming import (DEFAULT_CONTROLLER_NAME, DESC, fit_name, gen_id, labels as owner_labels, route_name,
                     stream_route_name, upstream_name)

__all__ = ["translate_apisix_route", "exprs_to_vars", "authentication_plugin", "SCOPES", "OPERATORS"]

Obj = Mapping[str, Any]

# scope -> variable (AIC ApisixRouteHTTPMatchExprs.ToVars)
SCOPES = ("Header", "Query", "Cookie", "Path", "Variable", "Body")
# op -> (negated, APISIX operator)
OPERATORS: dict[str, tuple[bool, str]] = {
    "Equal": (False, "=="),
    "NotEqual": (False, "~="),
    "GreaterThan": (False, ">"),
    "GreaterThanEqual": (False, ">="),
    "LessThan": (False, "<"),
    "LessThanEqual": (False, "<="),
    "In": (False, "in"),
    "NotIn": (True, "in"),
    "RegexMatch": (False, "~~"),
    "RegexNotMatch": (True, "~~"),
    "RegexMatchCaseInsensitive": (False, "~*"),
    "RegexNotMatchCaseInsensitive": (True, "~*"),
}
_AUTH_PLUGINS = {"basicAuth": "basic-auth", "keyAuth": "key-auth", "jwtAuth": "jwt-auth", "hmacAuth": "hmac-auth"}
_AUTH_UNSUPPORTED = {"wolfRBAC": "wolf-rbac", "ldapAuth": "ldap-auth"}
_STREAM_SCHEMES = ("tcp", "tls", "udp")
_LUA = ("Meshgate does not run Lua code taken from configuration (CVE-2020-13945); express the condition "
        "with match.exprs (Header, Query, Cookie, Path, Variable or Body scope) instead")


def exprs_to_vars(exprs: object, pointer: str = "/spec/http/0/match/exprs") -> list[list[Any]]:
    """``match.exprs`` → APISIX ``vars``.  Raises :class:`ConfigError` (pointer into the
    ApisixRoute) on an unknown scope or operator, a missing name, value or set, or a value
    the gateway's expression engine rejects (a bad regex)."""
    if exprs is None:
        return []
    if not isinstance(exprs, list):
        raise ConfigError(pointer, "expected an array of {subject: {scope, name}, op, value | set}")
    out: list[list[Any]] = []
    for i, e in enumerate(exprs):
        ptr = f"{pointer}/{i}"
        if not isinstance(e, Mapping):
            raise ConfigError(ptr, "expected an object {subject: {scope, name}, op, value | set}")
        subj = e.get("subject") or {}
        scope, name = subj.get("scope"), subj.get("name") or ""
        if scope not in SCOPES:
            raise ConfigError(ptr + "/subject/scope", f"expected one of {', '.join(SCOPES)}, got {scope!r}")
        if not name and scope != "Path":
            raise ConfigError(ptr + "/subject/name", f"required field is missing (scope {scope} needs a name)")
        var = _variable(str(scope), str(name))
        op = e.get("op")
        if op not in OPERATORS:
            raise ConfigError(ptr + "/op", f"expected one of {', '.join(OPERATORS)}, got {op!r}")
        negated, apisix_op = OPERATORS[op]
        expr: list[Any] = [var] + (["!"] if negated else []) + [apisix_op]
        if op in ("In", "NotIn"):
            values = e.get("set")
            if not isinstance(values, list) or not values:
                raise ConfigError(ptr + "/set", f"required field is missing (op {op} needs a non-empty set)")
            expr.append([str(v) for v in values])
        else:
            if e.get("value") is None:
                raise ConfigError(ptr + "/value", f"required field is missing (op {op} needs a value)")
            expr.append(str(e["value"]))
        out.append(expr)
    try:
        compile_expr(out, pointer)
    except ConfigError as err:
        raise ConfigError(pointer + _index_of(err.pointer, pointer), err.message) from None
    return out


def _variable(scope: str, name: str) -> str:
    if scope == "Header":
        return "http_" + name.lower().replace("-", "_")
    if scope == "Path":
        return "uri"
    if scope == "Variable":
        return name
    prefix = {"Query": "arg_", "Cookie": "cookie_", "Body": "post_arg."}[scope]
    return prefix + name


def _index_of(ptr: str, base: str) -> str:
    rest = ptr[len(base):] if ptr.startswith(base) else ""
    parts = rest.split("/")
    return "/" + parts[1] if len(parts) > 1 and parts[1].isdigit() else ""


def authentication_plugin(auth: object, pointer: str) -> tuple[str, dict[str, Any]] | None:
    """``authentication`` → ``(plugin name, conf)`` or None when not enabled.  Raises
    :class:`ConfigError` for ``wolfRBAC`` / ``ldapAuth`` (no such plugin in Meshgate) and
    unknown types."""
    if not isinstance(auth, Mapping) or not auth.get("enable"):
        return None
    typ = auth.get("type") or "basicAuth"
    if typ in _AUTH_UNSUPPORTED:
        raise ConfigError(pointer + "/type", f"authentication type {typ} is not supported: Meshgate has no "
                                             f"{_AUTH_UNSUPPORTED[typ]} plugin; use one of "
                                             f"{', '.join(_AUTH_PLUGINS)}")
    if typ not in _AUTH_PLUGINS:
        raise ConfigError(pointer + "/type", f"expected one of {', '.join(_AUTH_PLUGINS)}, got {typ!r}")
    conf: dict[str, Any] = {}
    opts = auth.get(typ)
    fields = {"keyAuth": ("header",), "jwtAuth": ("header", "query", "cookie")}.get(typ, ())
    if isinstance(opts, Mapping):
        conf = {f: str(opts[f]) for f in fields if opts.get(f)}
    return _AUTH_PLUGINS[typ], conf


def translate_apisix_route(ar: Obj, state: ClusterState, *,
                           controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    """Every rule of one ApisixRoute; never raises for bad input."""
    kind, ns, name = object_ref(ar)
    kind = kind or "ApisixRoute"
    oid = f"{ns}/{name}"
    meta = ar.get("metadata") or {}
    own = owner_labels(kind, ns, name, controller_name=controller_name, object_labels=meta.get("labels"))
    ctx = _Ctx(kind, ns, name, oid, state, own)
    spec = ar.get("spec") or {}
    seen: set[str] = set()
    for part, handler in (("http", ctx.http_rule), ("stream", ctx.stream_rule)):
        rules = spec.get(part) or []
        if not isinstance(rules, list):
            ctx.error(f"/spec/{part}", "expected an array of rules")
            continue
        for i, rule in enumerate(rules):
            ptr = f"/spec/{part}/{i}"
            if not isinstance(rule, Mapping) or not rule.get("name"):
                ctx.error(ptr + "/name", "required field is missing: every rule needs a name")
                continue
            if rule["name"] in seen:
                ctx.error(ptr + "/name", f"duplicate rule name {rule['name']!r}: rule names must be unique in "
                                         "http and stream")
                continue
            seen.add(str(rule["name"]))
            try:
                handler(i, rule, ptr)
            except ConfigError as e:
                ctx.error(e.pointer, e.message)
    return Translation(kind, ns, name, own, tuple(ctx.items), tuple(ctx.errors), tuple(ctx.warnings))


class _Ctx:
    def __init__(self, kind: str, ns: str, name: str, oid: str, state: ClusterState, own: dict[str, str]) -> None:
        self.kind, self.ns, self.name, self.oid, self.state, self.own = kind, ns, name, oid, state, own
        self.items: list[Item] = []
        self.errors: list[TranslateError] = []
        self.warnings: list[str] = []

    def error(self, pointer: str, message: str) -> None:
        self.errors.append(TranslateError(pointer, message, kind=self.kind, id=self.oid))

    # --- http ---------------------------------------------------------------------------

    def http_rule(self, i: int, rule: Obj, ptr: str) -> None:
        rname = str(rule["name"])
        match = rule.get("match") or {}
        if not isinstance(match, Mapping):
            raise ConfigError(ptr + "/match", "expected an object")
        if match.get("filter_func"):
            raise ConfigError(ptr + "/match/filter_func", f"not supported: {_LUA}")
        paths = match.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError(ptr + "/match/paths", "required field is missing: at least one path (exact, or a "
                                                    "prefix ending with *, such as /foo*)")
        vars_ = exprs_to_vars(match.get("exprs"), ptr + "/match/exprs")

        plugins: dict[str, Any] = {}
        pc_name = rule.get("plugin_config_name")
        if pc_name:
            pc_ns = str(rule.get("plugin_config_namespace") or self.ns)
            apc = self.state.plugin_config(pc_ns, str(pc_name))
            if apc is None:
                raise ConfigError(ptr + "/plugin_config_name", f"ApisixPluginConfig {pc_ns}/{pc_name} not found")
            try:
                build_plugins((apc.get("spec") or {}).get("plugins"), pc_ns, self.state, pointer="/spec/plugins",
                              into=plugins)
            except ConfigError as e:
                raise ConfigError(ptr + "/plugin_config_name",
                                  f"ApisixPluginConfig {pc_ns}/{pc_name}: {e.pointer}: {e.message}") from None
        build_plugins(rule.get("plugins"), self.ns, self.state, pointer=ptr + "/plugins", into=plugins)
        auth = authentication_plugin(rule.get("authentication"), ptr + "/authentication")
        if auth is not None:
            plugins[auth[0]] = auth[1]

        route_id_name = route_name(self.ns, self.name, rname)
        route: dict[str, Any] = {
            "id": gen_id(route_id_name),
            "name": fit_name(route_id_name),
            "desc": DESC,
            "labels": dict(self.own),
            "uris": _unique(paths),
        }
        hosts = _unique([h.strip().lower() for h in match.get("hosts") or () if isinstance(h, str) and h.strip()])
        if hosts:
            route["hosts"] = hosts
        methods = _unique([str(m).upper() for m in match.get("methods") or ()])
        if methods:
            route["methods"] = methods
        addrs = _unique([str(a) for a in match.get("remoteAddrs") or ()])
        if addrs:
            route["remote_addrs"] = addrs
        if vars_:
            route["vars"] = vars_
        prio = rule.get("priority", 0) or 0
        if isinstance(prio, bool) or not isinstance(prio, int):
            raise ConfigError(ptr + "/priority", f"expected an integer, got {prio!r}")
        route["priority"] = prio
        if isinstance(rule.get("timeout"), Mapping):
            route["timeout"] = timeout_of(rule["timeout"], ptr + "/timeout")

        ups, websocket = self.http_upstreams(i, rule, ptr)
        ws = rule.get("websocket")
        if isinstance(ws, bool):
            route["enable_websocket"] = ws
        elif websocket:
            route["enable_websocket"] = True

        extra: list[Item] = []
        if ups:
            for up, _ in ups:
                if up not in extra:
                    extra.append(up)
            route["upstream_id"] = ups[0][0].id
            if len(ups) > 1:
                weighted: list[dict[str, Any]] = [{"weight": ups[0][1]}]
                weighted += [{"upstream_id": up.id, "weight": weight} for up, weight in ups[1:]]
                if "traffic-split" in plugins:
                    self.warnings.append(f"{ptr}: the rule's own traffic-split plugin is kept; the weights of "
                                         "backends/upstreams are not applied")
                else:
                    plugins["traffic-split"] = {"rules": [{"weighted_upstreams": weighted}]}
        elif rule.get("backends") or rule.get("backend") or rule.get("upstreams"):
            route["upstream"] = {"type": "roundrobin", "nodes": []}  # every backend failed: answer, don't fall through
        elif not plugins:
            raise ConfigError(ptr + "/backends", "required field is missing: a rule needs backends, upstreams or "
                                                 "plugins")
        if plugins:
            route["plugins"] = plugins
        self.items.extend(extra)     # the upstreams first: the route refers to them
        self.items.append(Item("routes", route["id"], _ordered(route)))

    def http_upstreams(self, i: int, rule: Obj, ptr: str) -> tuple[list[tuple[Item, int]], bool]:
        """``[(upstream item, traffic-split weight)]`` of the backends and upstreams that
        resolve (errors recorded), and whether appProtocol asks for websockets."""
        out: list[tuple[Item, int]] = []
        websocket = False
        backends = rule.get("backends")
        if backends is None and isinstance(rule.get("backend"), Mapping):
            backends = [rule["backend"]]  # v2beta1 single backend
        if backends is not None and not isinstance(backends, list):
            raise ConfigError(ptr + "/backends", "expected an array of backends")
        for j, spec in enumerate(backends or ()):
            bptr = f"{ptr}/backends/{j}"
            try:
                if not isinstance(spec, Mapping):
                    raise BackendError("expected an object {serviceName, servicePort, ...}")
                b = Backend.from_spec(spec)
                # the node weight is the backend's only where it matters: one backend of weight 0
                node_weight = b.weight if len(backends or ()) == 1 and b.weight == 0 else DEFAULT_WEIGHT
                item, ws = service_upstream(self.ns, replace(b, weight=node_weight), self.state,
                                            controller_name=self.own.get("k8s/controller-name",
                                                                         DEFAULT_CONTROLLER_NAME))
            except BackendError as e:
                self.error(bptr, e.message)
                continue
            except ConfigError as e:
                self.error(bptr, f"ApisixUpstream {self.ns}/{spec.get('serviceName')}: {e.pointer}: {e.message}")
                continue
            websocket = websocket or ws
            out.append((item, b.weight))
        n_backends = len(backends or ())
        for k, ref in enumerate(rule.get("upstreams") or ()):
            uptr = f"{ptr}/upstreams/{k}"
            if not isinstance(ref, Mapping) or not ref.get("name"):
                self.error(uptr + "/name", "required field is missing")
                continue
            au = self.state.apisix_upstream(self.ns, str(ref["name"]))
            if au is None:
                self.error(uptr + "/name", f"ApisixUpstream {self.ns}/{ref['name']} not found")
                continue
            weight = ref.get("weight", 100)
            if weight is None:
                weight = 100
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                self.error(uptr + "/weight", f"expected an integer >= 0, got {weight!r}")
                continue
            try:
                value = {"type": "roundrobin", **external_upstream(au, self.state)}
            except ConfigError as e:
                self.error(uptr, f"ApisixUpstream {self.ns}/{ref['name']}: {e.pointer}: {e.message}")
                continue
            uname = upstream_name(self.ns, self.name, i, n_backends + k)
            uid = gen_id(uname)
            out.append((Item("upstreams", uid, {"id": uid, "name": fit_name(uname), "desc": DESC,
                                                "labels": dict(self.own), **value}), weight))
        return out, websocket

    def backend_upstream(self, b: Backend, *, stream: bool) -> tuple[dict[str, Any], bool]:
        """The upstream of one backend; raises BackendError / ConfigError."""
        au = self.state.apisix_upstream(self.ns, b.service_name)
        svc = self.state.service(self.ns, b.service_name)
        port: int | None = None
        if svc is not None and (svc.get("spec") or {}).get("type") != "ExternalName":
            port = int(find_service_port(svc, b.service_port).get("port") or 0) or None
        elif isinstance(b.service_port, int):
            port = b.service_port
        fields = upstream_fields(au, self.state, port=port) if au is not None else {}
        if stream and fields.get("scheme") not in _STREAM_SCHEMES:
            fields.pop("scheme", None)
        value: dict[str, Any] = {"type": "roundrobin", **fields}
        if "discovery_type" in fields:
            return value, False
        res = resolve_backend(svc, self.state.slices_of(self.ns, b.service_name), b, namespace=self.ns,
                              pods=self.state.pods, subsets=subsets_of(au),
                              upstream_name=f"{self.ns}/{b.service_name}")
        value["nodes"] = res.nodes
        if res.scheme and "scheme" not in value and not stream:
            value["scheme"] = res.scheme
        return value, res.websocket

    # --- stream -------------------------------------------------------------------------

    def stream_rule(self, i: int, rule: Obj, ptr: str) -> None:
        rname = str(rule["name"])
        proto = rule.get("protocol") or "TCP"
        if proto not in ("TCP", "UDP"):
            raise ConfigError(ptr + "/protocol", f"expected TCP or UDP, got {proto!r}")
        match = rule.get("match") or {}
        plugins = build_plugins(rule.get("plugins"), self.ns, self.state, pointer=ptr + "/plugins")
        sname = stream_route_name(self.ns, self.name, rname, proto)
        sr: dict[str, Any] = {"id": gen_id(sname), "name": fit_name(sname), "desc": DESC, "labels": dict(self.own)}
        port = match.get("ingressPort")
        if port:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(ptr + "/match/ingressPort", f"expected a port 1..65535, got {port!r}")
            sr["server_port"] = port
        if match.get("host"):
            sr["sni"] = str(match["host"]).strip().lower()
        backend = rule.get("backend")
        if not isinstance(backend, Mapping):
            raise ConfigError(ptr + "/backend", "required field is missing: {serviceName, servicePort}")
        try:
            b = Backend.from_spec(backend)
            sr["upstream"], _ = self.backend_upstream(b, stream=True)
        except BackendError as e:
            self.error(ptr + "/backend", e.message)
            sr["upstream"] = {"type": "roundrobin", "nodes": []}
        except ConfigError as e:
            self.error(ptr + "/backend", f"ApisixUpstream {self.ns}/{backend.get('serviceName')}: "
                                         f"{e.pointer}: {e.message}")
            sr["upstream"] = {"type": "roundrobin", "nodes": []}
        if plugins:
            sr["plugins"] = plugins
        self.items.append(Item("stream_routes", sr["id"], sr))


_ORDER = ("id", "name", "desc", "labels", "uris", "hosts", "methods", "remote_addrs", "vars", "priority",
          "timeout", "enable_websocket", "plugins", "upstream", "upstream_id")


def _ordered(route: dict[str, Any]) -> dict[str, Any]:
    return {k: route[k] for k in _ORDER if k in route}


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for x in items:
        if x not in out:
            out.append(x)
    return out
