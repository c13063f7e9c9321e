"""The ingress controller's reconcile loop: Kubernetes objects → APISIX objects via the Admin API.

Theory of operation (ingress-controller.md sections 5-8, 10):

* Informers (``client.Informer``) keep caches of the apisix.apache.org/v2 objects (ApisixRoute,
  ApisixUpstream, ApisixPluginConfig, ApisixTls, ApisixConsumer) in the watched namespaces,
  and of the Services, EndpointSlices, Secrets and Pods the translators read.  Objects whose
  ``spec.ingressClassName`` is another class are ignored (:func:`class_matches`).
* An event marks *owners* dirty (``(kind, namespace, name)`` of a translated object): the
  object itself, and for a Service/EndpointSlice/ApisixUpstream only the ApisixRoutes that
  reference that Service (a reverse index built at translation time).
* One pass (debounced) re-translates the dirty owners, each on its own (a bad object never
  blocks the others: its errors become its status), builds the desired APISIX objects of all
  owners and diffs them against the *actual* objects carrying our ownership labels
  (:func:`plan`): creates, updates (the value differs) and deletes (owned but no longer
  desired), applied with idempotent ``PUT`` on stable ids and ``DELETE``.
* The actual state is listed from the Admin API at start, on leadership gain and every
  ``resync_period`` (a full, level-triggered pass that also corrects manual edits: drift);
  between those it follows our own successful writes.  A failed list skips the pass: nothing
  is ever deleted because a list failed.
* ``status.conditions`` (type ``Accepted``; reasons ``Accepted``, ``InvalidSpec``,
  ``SyncFailed``; ``observedGeneration``; ``lastTransitionTime`` kept unless the status flips)
  is written through the status subresource when it differs from what the object shows.
* With leader election only the leader writes (gateway objects and status).
* networking.k8s.io/v1 Ingress (translate/ingress.py) is an owner kind too; IngressClasses
  (cluster-scoped) decide which Ingresses are ours (:func:`ingress_class_matches`).  Any event
  of an Ingress, or of a Service one of them reads, re-translates every Ingress of that
  namespace (a canary Ingress feeds the traffic-split of its main Ingress).  An Ingress has no
  ``status.conditions``: its errors are logged (once per change) and ``status.loadBalancer`` is
  left alone (there is no published-address option yet).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal, Protocol

import httpx2 as httpx

from ..errors import MeshgateError
from .client import (APISIX_CONSUMER, APISIX_GLOBAL_RULE, APISIX_PLUGIN_CONFIG, APISIX_ROUTE, APISIX_TLS, APISIX_UPSTREAM,
                     ENDPOINT_SLICE, POD, SECRET, SERVICE, Informer, KubeClient, KubeError, LeaderElector, Resource)
from .translate import (DEFAULT_CONTROLLER_NAME, ClusterState, Translation, check_apisix_upstream,
                        ingress_class_matches, ingress_service_refs, translate_apisix_consumer,
                        translate_apisix_global_rule, translate_apisix_plugin_config, translate_apisix_route, translate_apisix_tls,
                        translate_ingress, validate_translation)
from .translate.common import make_condition
from .translate.gatewayapi import (gateway_class_accepted, gateway_class_status, gateway_status,
                                   http_route_gateway_refs, http_route_service_refs, http_route_status,
                                   translate_gateway, translate_http_route)
from .translate.naming import MANAGED_BY, global_rule_prefix

__all__ = ["Owner", "Change", "ControllerOptions", "AdminClient", "AdminError", "GatewayWriter", "FanOut", "Controller", "plan",
           "format_plan", "owned", "class_matches", "accepted_condition", "make_condition", "merge_conditions",
           "conditions_equal",
           "MANAGED_KINDS"]

log = logging.getLogger("meshgate.k8s.controller")

Obj = dict[str, Any]
Owner = tuple[str, str, str]          # (Kubernetes kind, namespace, name)
ItemKey = tuple[str, str]             # (APISIX kind, id)

# APISIX kinds the controller owns (and lists by label; global_rules, which have no labels in
# APISIX's schema, by the id prefix of naming.global_rule_prefix).
MANAGED_KINDS = ("upstreams", "ssls", "consumers", "routes", "stream_routes", "global_rules")
_APPLY_ORDER = {k: i for i, k in enumerate(MANAGED_KINDS)}           # referenced objects first
_DELETE_ORDER = {k: i for i, k in enumerate(reversed(MANAGED_KINDS))}  # referencing objects first
_SERVER_FIELDS = ("create_time", "update_time")
_WRITE_ONLY = {"ssls": ("key", "keys")}  # never shown by GET: compared through what we wrote


# --- pure logic ---------------------------------------------------------------------------


def class_matches(obj: Mapping[str, Any], ingress_class: str, *, require: bool) -> bool:
    """CONTRACT: objects without ``ingressClassName`` are handled unless a class is required;
    objects naming another class are ignored."""
    cls = (obj.get("spec") or {}).get("ingressClassName") if isinstance(obj.get("spec"), Mapping) else None
    if not cls:
        return not require
    return str(cls) == ingress_class


def owned(value: Mapping[str, Any], controller_name: str = DEFAULT_CONTROLLER_NAME, kind: str = "") -> bool:
    """Does an APISIX object carry our ownership labels (a global rule, which has none: our id)?"""
    if kind == "global_rules":
        return str(value.get("id") or "").startswith(global_rule_prefix(controller_name))
    labels = value.get("labels")
    return (isinstance(labels, Mapping) and labels.get("manager-by") == MANAGED_BY
            and labels.get("k8s/controller-name") == controller_name)


def comparable(kind: str, value: Mapping[str, Any]) -> dict[str, Any]:
    drop = _SERVER_FIELDS + _WRITE_ONLY.get(kind, ())
    return {k: v for k, v in value.items() if k not in drop}


@dataclass(frozen=True, slots=True)
class Change:
    op: Literal["create", "update", "delete"]
    kind: str
    id: str
    value: dict[str, Any] | None = None      # desired (create, update)
    old: dict[str, Any] | None = None        # actual (update, delete)
    owner: Owner | None = None

    def describe(self) -> str:
        who = f" ({self.owner[0]} {self.owner[1]}/{self.owner[2]})" if self.owner else ""
        head = f"{self.op} {self.kind}/{self.id}{who}"
        if self.op == "update" and self.value is not None and self.old is not None:
            new, old = comparable(self.kind, self.value), comparable(self.kind, self.old)
            keys = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
            return head + "".join(f"\n    {k}: {json.dumps(old.get(k), sort_keys=True)} -> "
                                  f"{json.dumps(new.get(k), sort_keys=True)}" for k in keys)
        if self.op == "create" and self.value is not None:
            return head + "\n    " + json.dumps(self.value, sort_keys=True)
        return head


def plan(desired: Mapping[ItemKey, Mapping[str, Any]], actual: Mapping[ItemKey, Mapping[str, Any]], *,
         owners: Mapping[ItemKey, Owner] | None = None,
         applied: Mapping[ItemKey, Mapping[str, Any]] | None = None) -> list[Change]:
    """Desired vs actual (the owned objects) → changes: creates and updates in dependency order
    (upstreams before the routes using them), then deletes (routes before upstreams).

    ``applied``: what we last wrote, for fields the Admin API never returns (an ssl's ``key``)."""
    owners = owners or {}
    applied = applied or {}
    out: list[Change] = []
    for key in sorted(desired, key=lambda k: (_APPLY_ORDER.get(k[0], 99), k[1])):
        kind, id_ = key
        want = dict(desired[key])
        have = actual.get(key)
        if have is None:
            out.append(Change("create", kind, id_, want, None, owners.get(key)))
        elif comparable(kind, want) != comparable(kind, have) or (
                kind in _WRITE_ONLY and applied.get(key) is not None and applied[key] != want) or (
                kind in _WRITE_ONLY and applied.get(key) is None):
            out.append(Change("update", kind, id_, want, dict(have), owners.get(key)))
    for key in sorted(actual, key=lambda k: (_DELETE_ORDER.get(k[0], 99), k[1])):
        if key not in desired:
            out.append(Change("delete", key[0], key[1], None, dict(actual[key]), _owner_of(actual[key])))
    return out


def _owner_of(value: Mapping[str, Any]) -> Owner | None:
    labels = value.get("labels")
    if not isinstance(labels, Mapping) or not labels.get("k8s/kind"):
        return None
    return str(labels["k8s/kind"]), str(labels.get("k8s/namespace") or ""), str(labels.get("k8s/name") or "")


def format_plan(changes: Sequence[Change]) -> str:
    if not changes:
        return "no changes"
    counts = {op: sum(1 for c in changes if c.op == op) for op in ("create", "update", "delete")}
    return "\n".join([c.describe() for c in changes] +
                     [f"{counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete"])


def accepted_condition(*, generation: int, errors: Sequence[str], sync_error: str | None = None,
                       previous: Sequence[Mapping[str, Any]] | None = None, now: str | None = None) -> dict[str, Any]:
    """The ``Accepted`` condition: ``InvalidSpec`` when the translation has errors, else
    ``SyncFailed`` when the gateway refused or could not be reached, else ``Accepted``."""
    if errors:
        status, reason, message = "False", "InvalidSpec", "; ".join(errors)
    elif sync_error:
        status, reason, message = "False", "SyncFailed", sync_error
    else:
        status, reason, message = "True", "Accepted", "the object is synced to the gateway"
    return make_condition("Accepted", status, reason, message, generation=generation, previous=previous, now=now)


def conditions_equal(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    keys = ("type", "status", "reason", "message", "observedGeneration", "lastTransitionTime")
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in keys)


def merge_conditions(previous: Sequence[Mapping[str, Any]] | None, cond: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``previous`` with the condition of the same type replaced (others kept, order kept)."""
    out: list[dict[str, Any]] = []
    done = False
    for c in previous or ():
        if isinstance(c, Mapping) and c.get("type") == cond.get("type"):
            out.append(dict(cond))
            done = True
        elif isinstance(c, Mapping):
            out.append(dict(c))
    if not done:
        out.append(dict(cond))
    return out


def service_refs(ar: Mapping[str, Any]) -> tuple[set[tuple[str, str]], bool]:
    """``(namespace, Service or ApisixUpstream name)`` an ApisixRoute reads, and whether a
    backend uses a subset (then Pods matter)."""
    ns = str((ar.get("metadata") or {}).get("namespace") or "default")
    spec = ar.get("spec") if isinstance(ar.get("spec"), Mapping) else {}
    refs: set[tuple[str, str]] = set()
    subset = False
    for rule in (spec or {}).get("http") or ():
        if not isinstance(rule, Mapping):
            continue
        backends = list(rule.get("backends") or ())
        if isinstance(rule.get("backend"), Mapping):
            backends.append(rule["backend"])
        for b in backends:
            if isinstance(b, Mapping) and b.get("serviceName"):
                refs.add((ns, str(b["serviceName"])))
                subset = subset or bool(b.get("subset"))
        for u in rule.get("upstreams") or ():
            if isinstance(u, Mapping) and u.get("name"):
                refs.add((ns, str(u["name"])))
    for rule in (spec or {}).get("stream") or ():
        b = rule.get("backend") if isinstance(rule, Mapping) else None
        if isinstance(b, Mapping) and b.get("serviceName"):
            refs.add((ns, str(b["serviceName"])))
            subset = subset or bool(b.get("subset"))
    return refs, subset


# --- the Admin API --------------------------------------------------------------------------


class AdminError(MeshgateError):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(f"admin API: {status} {message}" if status else f"admin API: {message}")


class GatewayWriter(Protocol):
    """Where the controller's objects go: a gateway's Admin API (:class:`AdminClient`) or its
    etcd (the CLI's ``--etcd``).  Failures raise :class:`AdminError` (status 0: unreachable)."""

    async def list(self, kind: str) -> dict[str, dict[str, Any]]: ...

    async def put(self, kind: str, id: str, value: Mapping[str, Any]) -> None: ...

    async def delete(self, kind: str, id: str) -> None: ...

    async def close(self) -> None: ...


class AdminClient:
    """The gateway's Admin API v3 (``X-API-KEY``)."""

    def __init__(self, url: str, key: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        if not self.url.endswith("/apisix/admin"):
            self.url += "/apisix/admin"
        self._http = httpx.AsyncClient(timeout=timeout, headers={"X-API-KEY": key} if key else {})

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            resp = await self._http.request(method, self.url + path,
                                            content=None if body is None else json.dumps(body).encode(),
                                            headers={"Content-Type": "application/json"} if body is not None else None)
        except httpx.HTTPError as e:
            raise AdminError(0, f"{method} {self.url}{path}: {type(e).__name__}: {e}") from None
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = resp.text
        if resp.status_code >= 400:
            msg = data.get("error_msg") or data.get("message") if isinstance(data, dict) else data
            raise AdminError(resp.status_code, f"{method} {path}: {msg or resp.reason_phrase}")
        return resp.status_code, data

    async def list(self, kind: str) -> dict[str, dict[str, Any]]:
        """``id -> value`` of every object of ``kind`` (a consumer's id is its username)."""
        _, data = await self._call("GET", f"/{kind}")
        out: dict[str, dict[str, Any]] = {}
        for entry in (data or {}).get("list") or () if isinstance(data, dict) else ():
            value = entry.get("value") if isinstance(entry, dict) else None
            if isinstance(value, dict):
                oid = value.get("username") if kind == "consumers" else value.get("id")
                if oid is None and isinstance(entry.get("key"), str):
                    oid = entry["key"].rsplit("/", 1)[-1]
                out[str(oid)] = value
        return out

    async def put(self, kind: str, id: str, value: Mapping[str, Any]) -> None:
        await self._call("PUT", f"/{kind}" if kind == "consumers" else f"/{kind}/{id}", dict(value))

    async def delete(self, kind: str, id: str) -> None:
        try:
            await self._call("DELETE", f"/{kind}/{id}?force=true" if kind == "upstreams" else f"/{kind}/{id}")
        except AdminError as e:
            if e.status != 404:
                raise


class FanOut:
    """Several gateways, each with its own Admin API (standalone, API-driven gateways), kept
    identical: what the controller sees as one gateway.

    ``list`` reads every reachable gateway: an object every one of them holds with the same
    value is that value; one missing or different somewhere comes back marked, so the plan
    writes it again (to all: PUTs are idempotent), and one held by some gateway but no longer
    desired is deleted from all.  A gateway that cannot be reached is left out (``degraded``
    tells the controller to come back with a full pass soon) instead of holding up the others;
    it is brought up to date by the first full pass that reaches it."""

    PARTIAL = "_meshgate_not_on_every_gateway"

    def __init__(self, writers: Sequence[tuple[str, GatewayWriter]]) -> None:
        self.writers = list(writers)
        self.down: set[str] = set()

    @property
    def degraded(self) -> bool:
        return bool(self.down)

    async def list(self, kind: str) -> dict[str, dict[str, Any]]:
        got = await asyncio.gather(*(w.list(kind) for _, w in self.writers), return_exceptions=True)
        lists: list[dict[str, dict[str, Any]]] = []
        errors: list[AdminError] = []
        for (name, _), r in zip(self.writers, got):
            if isinstance(r, AdminError):
                if 400 <= r.status < 500 and r.status not in (401, 403):
                    raise r        # the kind is not served: as for one gateway
                errors.append(r)
                if name not in self.down:
                    log.warning("gateway %s left out until it answers: %s", name, r)
                self.down.add(name)
            elif isinstance(r, BaseException):
                raise r
            else:
                self.down.discard(name)
                lists.append(r)
        if not lists:
            raise errors[0]
        out: dict[str, dict[str, Any]] = {}
        for id_ in dict.fromkeys(k for lst in lists for k in lst):
            vals = [lst.get(id_) for lst in lists]
            first = next(v for v in vals if v is not None)
            same = all(v is not None and comparable(kind, v) == comparable(kind, first) for v in vals)
            out[id_] = first if same else {**first, self.PARTIAL: True}
        return out

    async def _each(self, what: str, op: Callable[[GatewayWriter], Any]) -> None:
        live = [(n, w) for n, w in self.writers if n not in self.down] or self.writers
        got = await asyncio.gather(*(op(w) for _, w in live), return_exceptions=True)
        failed = [(n, r) for (n, _), r in zip(live, got) if isinstance(r, BaseException)]
        for n, r in failed:
            if not isinstance(r, AdminError):
                raise r
            if r.status == 0 or r.status >= 500:
                self.down.add(n)
        if failed:
            first = failed[0][1]
            assert isinstance(first, AdminError)
            raise AdminError(first.status, "; ".join(f"gateway {n}: {r}" for n, r in failed) + f" ({what})")

    async def put(self, kind: str, id: str, value: Mapping[str, Any]) -> None:
        await self._each(f"put {kind}/{id}", lambda w: w.put(kind, id, value))

    async def delete(self, kind: str, id: str) -> None:
        await self._each(f"delete {kind}/{id}", lambda w: w.delete(kind, id))

    async def close(self) -> None:
        for _, w in self.writers:
            await w.close()


# --- the controller -------------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerOptions:
    namespaces: tuple[str, ...] = ()          # empty: all namespaces
    ingress_class: str = "apisix"
    require_class: bool = False
    resync_period: float = 300.0
    controller_name: str = DEFAULT_CONTROLLER_NAME
    debounce: float = 0.05
    retry_min: float = 1.0
    retry_max: float = 60.0
    gateway_api: bool | None = None           # None: when the apiserver serves it


Translator = Callable[..., Translation]

INGRESS = Resource("networking.k8s.io", "v1", "ingresses", "Ingress")
INGRESS_CLASS = Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False)
_GW = "gateway.networking.k8s.io"
GATEWAY_CLASS = Resource(_GW, "v1", "gatewayclasses", "GatewayClass", namespaced=False)
GATEWAY = Resource(_GW, "v1", "gateways", "Gateway")
HTTP_ROUTE = Resource(_GW, "v1", "httproutes", "HTTPRoute")
REFERENCE_GRANT = Resource(_GW, "v1beta1", "referencegrants", "ReferenceGrant")
NAMESPACE = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
# watched only when the apiserver serves gateway.networking.k8s.io (its CRDs are installed)
GATEWAY_API_KINDS = ("HTTPRoute", "Gateway", "GatewayClass", "ReferenceGrant", "Namespace")

# Kubernetes kind → (resource, translator, do its items go to the gateway?)
_OWNER_KINDS: dict[str, tuple[Resource, Translator, bool]] = {
    "ApisixRoute": (APISIX_ROUTE, translate_apisix_route, True),
    "ApisixTls": (APISIX_TLS, translate_apisix_tls, True),
    "ApisixConsumer": (APISIX_CONSUMER, translate_apisix_consumer, True),
    # v2 inlines plugin configs into routes and an ApisixUpstream owns no object: status only
    "ApisixPluginConfig": (APISIX_PLUGIN_CONFIG, translate_apisix_plugin_config, False),
    "ApisixUpstream": (APISIX_UPSTREAM, check_apisix_upstream, False),
    "ApisixGlobalRule": (APISIX_GLOBAL_RULE, translate_apisix_global_rule, True),
    "Ingress": (INGRESS, translate_ingress, True),
    "HTTPRoute": (HTTP_ROUTE, translate_http_route, True),
    "Gateway": (GATEWAY, translate_gateway, True),
}
_INPUT_KINDS: dict[str, Resource] = {"Service": SERVICE, "EndpointSlice": ENDPOINT_SLICE, "Secret": SECRET, "Pod": POD,
                                     "IngressClass": INGRESS_CLASS, "GatewayClass": GATEWAY_CLASS,
                                     "ReferenceGrant": REFERENCE_GRANT, "Namespace": NAMESPACE}
_NO_CONDITIONS = {"Ingress"}  # built-in kinds without status.conditions
_GATEWAY_STATUS = {"HTTPRoute", "Gateway"}  # Gateway API statuses of their own shape


@dataclass
class _Result:
    translation: Translation
    generation: int
    sync: bool
    sync_error: str | None = None


@dataclass
class _Stats:
    passes: int = 0
    writes: int = 0
    deletes: int = 0
    status_writes: int = 0
    errors: list[str] = field(default_factory=list)


class Controller:
    def __init__(self, kube: KubeClient, admin: GatewayWriter, opts: ControllerOptions, *,
                 registry: Any = None, elector: LeaderElector | None = None) -> None:
        self.kube, self.admin, self.opts, self.elector = kube, admin, opts, elector
        if registry is None:
            from ..plugins import PluginRegistry

            registry = PluginRegistry()
            registry.load_builtin()
        self.registry = registry
        self.informers: dict[str, list[Informer]] = {}
        for kind, (res, _, _) in _OWNER_KINDS.items():
            self.informers[kind] = self._make(res, kind)
        for kind, res in _INPUT_KINDS.items():
            self.informers[kind] = self._make(res, kind)
        self.results: dict[Owner, _Result] = {}
        self.actual: dict[ItemKey, dict[str, Any]] = {}
        self.applied: dict[ItemKey, dict[str, Any]] = {}
        self.refs: dict[Owner, tuple[set[tuple[str, str]], bool]] = {}
        self.dirty: set[Owner] = set()
        self.stats = _Stats()
        self._wake = asyncio.Event()
        self._full = True
        self._retry_delay = 0.0
        self._status_written: dict[Owner, dict[str, Any]] = {}
        self._conflicts: dict[Owner, str] = {}

    def _make(self, res: Resource, kind: str) -> list[Informer]:
        handler = self._handler(kind)
        if not self.opts.namespaces or not res.namespaced:
            return [Informer(self.kube, res, None, handler)]
        return [Informer(self.kube, res, ns, handler) for ns in self.opts.namespaces]

    # -- caches -----------------------------------------------------------------------------

    def _objects(self, kind: str) -> Iterable[Obj]:
        return chain.from_iterable(i.cache.values() for i in self.informers.get(kind, ()))

    def _get(self, owner: Owner) -> Obj | None:
        kind, ns, name = owner
        for inf in self.informers.get(kind, ()):
            o = inf.cache.get((ns, name))
            if o is not None:
                return o
        return None

    def _matches(self, obj: Mapping[str, Any]) -> bool:
        if obj.get("kind") in GATEWAY_API_KINDS:
            return True       # ours or not is the GatewayClass's controllerName (the translator decides)
        if obj.get("kind") == "Ingress":
            return ingress_class_matches(obj, list(self._objects("IngressClass")), ingress_class=self.opts.ingress_class,
                                         require=self.opts.require_class, controller_name=self.opts.controller_name)
        return class_matches(obj, self.opts.ingress_class, require=self.opts.require_class)

    def _ingresses(self, namespace: str | None = None) -> set[Owner]:
        """Every Ingress owner (of ``namespace``), cached or translated."""
        out = {o for o in self.results if o[0] == "Ingress"}
        for o in self._objects("Ingress"):
            meta = o.get("metadata") or {}
            out.add(("Ingress", str(meta.get("namespace") or ""), str(meta.get("name") or "")))
        return {o for o in out if namespace is None or o[1] == namespace}

    def _state(self) -> ClusterState:
        crds = [o for k in ("ApisixUpstream", "ApisixPluginConfig") for o in self._objects(k) if self._matches(o)]
        return ClusterState.from_objects(chain(self._objects("Service"), self._objects("EndpointSlice"),
                                               self._objects("Pod"), self._objects("Secret"), crds,
                                               *(self._objects(k) for k in ("Gateway", "GatewayClass",
                                                                            "ReferenceGrant", "Namespace"))))

    # -- events -----------------------------------------------------------------------------

    def _handler(self, kind: str) -> Callable[[str, Obj, Obj | None], None]:
        def on_event(typ: str, obj: Obj, prev: Obj | None) -> None:
            self._on_event(kind, typ, obj, prev)
        return on_event

    def _routes_referencing(self, keys: set[tuple[str, str]], *, pods: bool = False) -> set[Owner]:
        return {o for o, (refs, subset) in self.refs.items()
                if (refs & keys) and (subset or not pods)}

    def _on_event(self, kind: str, typ: str, obj: Obj, prev: Obj | None) -> None:
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        marks: set[Owner] = set()
        if kind in _OWNER_KINDS:
            if typ == "MODIFIED" and prev is not None and _same_spec(obj, prev):
                return  # a status write (ours) or metadata noise: nothing to translate
            marks.add((kind, ns, name))
            if kind == "ApisixUpstream":
                marks |= self._routes_referencing({(ns, name)})
            elif kind == "ApisixPluginConfig":
                marks |= {o for o in self.refs}  # cross-namespace references are allowed
        elif kind == "Service":
            marks |= self._routes_referencing({(ns, name)})
        elif kind == "EndpointSlice":
            svcs = {(ns, s) for s in (_service_of(obj), _service_of(prev or {})) if s}
            marks |= self._routes_referencing(svcs)
        elif kind == "Pod":
            marks |= self._routes_referencing({(ns, s) for (n, s) in chain.from_iterable(
                r for r, _ in self.refs.values()) if n == ns}, pods=True)
        elif kind == "Secret":
            marks |= {o for o in self.results if o[1] == ns or o[0] in ("ApisixTls", "Gateway")}
        elif kind == "IngressClass":
            marks |= self._ingresses()
        if kind == "HTTPRoute":     # the Gateways it attaches to count it (attachedRoutes)
            marks |= {("Gateway", g_ns, g) for g_ns, g in http_route_gateway_refs(obj) | (
                http_route_gateway_refs(prev) if prev is not None else set())}
        elif kind == "Gateway":
            marks |= self._owners_of("HTTPRoute", lambda r: (ns, name) in http_route_gateway_refs(r))
        elif kind in ("GatewayClass", "ReferenceGrant", "Namespace"):
            marks |= self._owners_of("HTTPRoute") | self._owners_of("Gateway")
        for m_ns in {o[1] for o in marks if o[0] == "Ingress"}:
            marks |= self._ingresses(m_ns)  # canaries: an Ingress reads the others of its namespace
        if marks:
            self.dirty |= marks
            self._wake.set()

    def _owners_of(self, kind: str, pred: Callable[[Obj], bool] | None = None) -> set[Owner]:
        if kind not in self.informers:
            return set()
        return {(kind, str((o.get("metadata") or {}).get("namespace") or ""),
                 str((o.get("metadata") or {}).get("name") or ""))
                for o in self._objects(kind) if pred is None or pred(o)}

    # -- translation ------------------------------------------------------------------------

    def translate(self, owner: Owner, state: ClusterState) -> _Result | None:
        obj = self._get(owner)
        if obj is None or not self._matches(obj):
            return None
        _, translator, sync = _OWNER_KINDS[owner[0]]
        kw: dict[str, Any] = {}
        if owner[0] == "Ingress":
            kw["peers"] = [o for o in self._objects("Ingress") if (o.get("metadata") or {}).get("namespace") == owner[1]
                           and (o.get("metadata") or {}).get("name") != owner[2] and self._matches(o)]
        try:
            t = translator(obj, state, controller_name=self.opts.controller_name, **kw)
            if t.items:
                t = validate_translation(t, self.registry)
        except Exception as e:  # a translator bug must not block the other objects
            log.exception("translating %s %s/%s failed", *owner)
            from .translate import TranslateError
            t = Translation(owner[0], owner[1], owner[2], {}, errors=(TranslateError(
                "", f"internal error while translating: {type(e).__name__}: {e}", kind=owner[0],
                id=f"{owner[1]}/{owner[2]}"),))
        gen = int((obj.get("metadata") or {}).get("generation") or 0)
        return _Result(t, gen, sync)

    def retranslate(self, owners: Iterable[Owner]) -> None:
        state = self._state()
        for owner in owners:
            res = self.translate(owner, state)
            if res is None:
                self.results.pop(owner, None)
                self.refs.pop(owner, None)
                self._status_written.pop(owner, None)
                continue
            prev = self.results.get(owner)
            if prev is not None and prev.sync_error and prev.translation.items == res.translation.items:
                res.sync_error = prev.sync_error
            self.results[owner] = res
            if owner[0] == "ApisixRoute":
                obj = self._get(owner)
                self.refs[owner] = service_refs(obj or {})
            elif owner[0] == "Ingress":
                self.refs[owner] = (ingress_service_refs(self._get(owner) or {}), False)
            elif owner[0] == "HTTPRoute":
                self.refs[owner] = (http_route_service_refs(self._get(owner) or {}), False)

    def all_owners(self) -> set[Owner]:
        out: set[Owner] = set()
        for kind in _OWNER_KINDS:
            for o in self._objects(kind):
                meta = o.get("metadata") or {}
                out.add((kind, str(meta.get("namespace") or ""), str(meta.get("name") or "")))
        return out | set(self.results)

    def desired(self) -> tuple[dict[ItemKey, dict[str, Any]], dict[ItemKey, Owner]]:
        desired: dict[ItemKey, dict[str, Any]] = {}
        owners: dict[ItemKey, Owner] = {}
        conflicts: dict[Owner, str] = {}
        for owner in sorted(self.results):
            r = self.results[owner]
            if not r.sync:
                continue
            for it in r.translation.items:
                key = (it.kind, it.id)
                if key in owners and owners[key] != owner:
                    if desired[key] == it.value:   # shared (a Service's upstream): same object, same value
                        continue
                    other = owners[key]
                    conflicts[owner] = (f"{it.kind} {it.id} is already generated by {other[0]} "
                                        f"{other[1]}/{other[2]} with a different value")
                    continue
                desired[key], owners[key] = it.value, owner
        self._conflicts = conflicts
        return desired, owners

    def _producers(self, kind: str, id_: str) -> list[Owner]:
        return [o for o, r in self.results.items()
                if r.sync and any(it.kind == kind and it.id == id_ for it in r.translation.items)]

    # -- sync -------------------------------------------------------------------------------

    async def list_actual(self) -> dict[ItemKey, dict[str, Any]]:
        """Our objects on the gateway; raises :class:`AdminError` when the gateway cannot be
        read (a kind it does not serve, 4xx, counts as empty)."""
        out: dict[ItemKey, dict[str, Any]] = {}
        for kind in MANAGED_KINDS:
            try:
                items = await self.admin.list(kind)
            except AdminError as e:
                if 400 <= e.status < 500 and e.status not in (401, 403):
                    log.info("admin API does not list %s: %s", kind, e)
                    continue
                raise
            for id_, value in items.items():
                if owned(value, self.opts.controller_name, kind):
                    out[(kind, id_)] = value
        return out

    async def compute_plan(self) -> list[Change]:
        """Dry run: list, translate everything, diff; writes nothing."""
        self.actual = await self.list_actual()
        self.retranslate(self.all_owners())
        desired, owners = self.desired()
        return plan(desired, self.actual, owners=owners, applied=self.applied)

    def _leading(self) -> bool:
        return self.elector is None or self.elector.is_leader

    def on_leadership(self, leader: bool) -> None:
        if leader:
            self._full = True  # read the gateway again: another leader may have written since
            self._status_written.clear()
            self._wake.set()

    async def sync_once(self) -> bool:
        """One pass; False when the gateway could not be listed (nothing changed then)."""
        self.stats.passes += 1
        if self._full:
            try:
                self.actual = await self.list_actual()
            except AdminError as e:
                log.warning("cannot list the gateway's objects (nothing deleted): %s", e)
                return False
            self._full = False
            self.dirty |= self.all_owners()
        owners, self.dirty = self.dirty, set()
        self.retranslate(owners)
        desired, item_owners = self.desired()
        changes = plan(desired, self.actual, owners=item_owners, applied=self.applied)
        failed: dict[Owner, list[str]] = {}
        retry = False
        for ch in changes:
            if not self._leading():
                return True
            try:
                if ch.op == "delete":
                    await self.admin.delete(ch.kind, ch.id)
                    self.actual.pop((ch.kind, ch.id), None)
                    self.applied.pop((ch.kind, ch.id), None)
                    self.stats.deletes += 1
                else:
                    assert ch.value is not None
                    await self.admin.put(ch.kind, ch.id, ch.value)
                    self.actual[(ch.kind, ch.id)] = dict(ch.value)
                    self.applied[(ch.kind, ch.id)] = dict(ch.value)
                    self.stats.writes += 1
                log.info("%s", ch.describe().split("\n")[0])
            except AdminError as e:
                log.warning("%s failed: %s", ch.describe().split("\n")[0], e)
                if ch.op != "delete":
                    reason = "gateway unavailable" if e.status == 0 or e.status >= 500 else "the gateway refused"
                    for who in self._producers(ch.kind, ch.id):   # every owner of a shared upstream
                        failed.setdefault(who, []).append(f"{reason}: {ch.kind} {ch.id}: {e.message}")
                retry = True
        for owner, msg in self._conflicts.items():
            failed.setdefault(owner, []).append(msg)
        for owner, res in self.results.items():
            if not res.sync:
                continue
            if owner in failed:
                res.sync_error = "; ".join(failed[owner])
            elif all(comparable(it.kind, self.actual.get((it.kind, it.id)) or {}) == comparable(it.kind, it.value)
                     for it in res.translation.items):
                res.sync_error = None
        if getattr(self.admin, "degraded", False):
            self._full = True     # a gateway was left out: list them all again soon
            retry = True
        if retry:
            self._retry_delay = min(max(self._retry_delay * 2, self.opts.retry_min), self.opts.retry_max)
        else:
            self._retry_delay = 0.0
        await self.write_statuses()
        return True

    async def write_statuses(self) -> None:
        gstate = self._state() if any(o[0] in _GATEWAY_STATUS for o in self.results) or \
            "GatewayClass" in self.informers else None
        for owner, res in list(self.results.items()):
            if not self._leading():
                return
            obj = self._get(owner)
            if obj is None:
                continue
            if owner[0] in _NO_CONDITIONS:
                self._log_problems(owner, res)
                continue
            if owner[0] in _GATEWAY_STATUS:
                await self._write_gateway_status(owner, obj, res, gstate)
                continue
            status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
            previous = (status or {}).get("conditions") or []
            cond = accepted_condition(generation=res.generation, errors=res.translation.messages(),
                                      sync_error=res.sync_error, previous=previous)
            current = next((c for c in previous if isinstance(c, Mapping) and c.get("type") == "Accepted"), None)
            if conditions_equal(current, cond) or conditions_equal(self._status_written.get(owner), cond):
                continue
            res_def = _OWNER_KINDS[owner[0]][0]
            try:
                await self.kube.patch_status(res_def, owner[2], owner[1],
                                             {"conditions": merge_conditions(previous, cond)})
                self._status_written[owner] = cond
                self.stats.status_writes += 1
            except KubeError as e:
                if e.status != 404:
                    log.warning("status of %s %s/%s: %s", *owner, e)
        if self._leading():
            await self._write_gateway_class_statuses()

    async def _patch_if_changed(self, res_def: Resource, obj: Obj, status: Mapping[str, Any]) -> None:
        """Write ``status`` (a whole Gateway API status) unless the object already shows it."""
        meta = obj.get("metadata") or {}
        key: Owner = (res_def.kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if obj.get("status") == status or self._status_written.get(key) == status:
            return
        try:
            await self.kube.patch_status(res_def, key[2], key[1] or None, dict(status))
            self._status_written[key] = dict(status)
            self.stats.status_writes += 1
        except KubeError as e:
            if e.status != 404:
                log.warning("status of %s %s/%s: %s", *key, e)

    async def _write_gateway_status(self, owner: Owner, obj: Obj, res: _Result, state: ClusterState | None) -> None:
        assert state is not None
        name = self.opts.controller_name
        if owner[0] == "HTTPRoute":
            st = http_route_status(obj, res.translation, state, controller_name=name)
            current = (obj.get("status") or {}).get("parents") or []
            if not any(p.get("controllerName") == name for p in chain(st.get("parents") or (), current)):
                return      # no parent of ours, now or before: another controller's route
            await self._patch_if_changed(HTTP_ROUTE, obj, st)
            return
        gc = state.gateway_class(str((obj.get("spec") or {}).get("gatewayClassName") or ""))
        if gc is None or not gateway_class_accepted(gc, name):
            return      # another controller's Gateway
        await self._patch_if_changed(GATEWAY, obj, gateway_status(obj, state, routes=list(self._objects("HTTPRoute")),
                                                                  controller_name=name))

    async def _write_gateway_class_statuses(self) -> None:
        for gc in list(self._objects("GatewayClass")) if "GatewayClass" in self.informers else ():
            if gateway_class_accepted(gc, self.opts.controller_name):
                await self._patch_if_changed(GATEWAY_CLASS, gc,
                                             gateway_class_status(gc, controller_name=self.opts.controller_name))

    def _log_problems(self, owner: Owner, res: _Result) -> None:
        """Kinds without conditions: their errors are logged once per change."""
        msgs = res.translation.messages() + ([res.sync_error] if res.sync_error else [])
        seen = {"messages": msgs}
        if self._status_written.get(owner) == seen:
            return
        self._status_written[owner] = seen
        for m in msgs:
            log.warning("%s %s/%s: %s", owner[0], owner[1], owner[2], m)

    async def wait_synced(self) -> None:
        await asyncio.gather(*(i.synced.wait() for infs in self.informers.values() for i in infs))

    async def detect_gateway_api(self) -> bool:
        """Watch the Gateway API kinds only if the apiserver serves them (their CRDs are
        installed): an informer of a resource that does not exist would never sync."""
        served: set[str] = set()
        for version in ("v1", "v1beta1"):
            try:
                doc = await self.kube.request("GET", f"/apis/{_GW}/{version}")
            except KubeError as e:
                if e.status in (404, 503):
                    continue
                raise
            served |= {f"{version}/{r.get('name')}" for r in doc.get("resources") or () if isinstance(r, Mapping)}
        want = {"HTTPRoute": HTTP_ROUTE, "Gateway": GATEWAY, "GatewayClass": GATEWAY_CLASS,
                "ReferenceGrant": REFERENCE_GRANT}
        missing = [k for k, res in want.items() if f"{res.version}/{res.plural}" not in served]
        if missing:
            for k in GATEWAY_API_KINDS:
                self.informers.pop(k, None)
            log.warning("Gateway API not served by the apiserver (%s missing): Gateways and HTTPRoutes are not "
                        "watched; install the Gateway API CRDs and restart to use them", ", ".join(missing))
            return False
        return True

    async def run(self, *, dry_run: bool = False, out: Callable[[str], None] = print) -> None:
        """Run until cancelled (or, with ``dry_run``, print the plan once and return)."""
        if self.opts.gateway_api is None:
            await self.detect_gateway_api()
        elif not self.opts.gateway_api:
            for k in GATEWAY_API_KINDS:
                self.informers.pop(k, None)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(i.run(), name=repr(i)) for infs in self.informers.values() for i in infs]
            try:
                await self.wait_synced()
                if dry_run:
                    out(format_plan(await self.compute_plan()))
                    return
                await self._loop()
            finally:
                for t in tasks:
                    t.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.opts.resync_period
        self._wake.set()
        while True:
            timeout = next_resync - loop.time()
            if self._retry_delay:
                timeout = min(timeout, self._retry_delay)
            try:
                await asyncio.wait_for(self._wake.wait(), max(timeout, 0.0))
            except TimeoutError:
                pass
            self._wake.clear()
            await asyncio.sleep(self.opts.debounce)
            if loop.time() >= next_resync:
                self._full = True
                next_resync = loop.time() + self.opts.resync_period
            if not self._leading():
                continue
            if not await self.sync_once():
                self._retry_delay = min(max(self._retry_delay * 2, self.opts.retry_min), self.opts.retry_max)
                self._full = True


def _same_spec(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    ma, mb = a.get("metadata") or {}, b.get("metadata") or {}
    return (a.get("spec") == b.get("spec") and ma.get("generation") == mb.get("generation")
            and ma.get("labels") == mb.get("labels") and ma.get("annotations") == mb.get("annotations"))


def _service_of(slice_: Mapping[str, Any]) -> str:
    return str(((slice_.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/service-name") or "")
