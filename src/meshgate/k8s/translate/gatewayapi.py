"""Gateway API (``gateway.networking.k8s.io/v1``) → APISIX routes, upstreams and ssls, and the
statuses of GatewayClasses, Gateways and HTTPRoutes (ingress-controller.md section 4).

Pure code, like every translator here: plain dicts in, :class:`Translation` / status dicts out,
nothing raises for bad input.  Gateways, GatewayClasses, ReferenceGrants and Namespaces are read
from the :class:`ClusterState` unless given as keyword arguments (iterables of objects).

Public API
----------
* ``gateway_class_accepted(gc, controller_name) -> bool`` and
  ``gateway_class_status(gc, *, controller_name, now) -> dict``.
* ``translate_gateway(gateway, state, *, gateway_classes, reference_grants, controller_name)
  -> Translation`` and ``gateway_status(gateway, state, *, routes, gateway_classes,
  reference_grants, namespaces, controller_name, now) -> dict``.
* ``http_route_parents(route, state, *, gateways, gateway_classes, namespaces, controller_name)
  -> list[ParentResult]``, ``translate_http_route(route, state, *, gateways, gateway_classes,
  reference_grants, namespaces, controller_name) -> Translation`` and
  ``http_route_status(route, translation, state, *, gateways, gateway_classes, namespaces,
  controller_name, now) -> dict``.
* ``http_route_service_refs(route) -> set[(namespace, service)]`` (backendRefs and
  RequestMirror refs, so that the controller re-translates a route when a Service or its
  EndpointSlices change) and ``http_route_gateway_refs(route) -> set[(namespace, gateway)]``.
* ``http_route_priority(...) -> int``: the priority packing below.
* :class:`RefError`: a :class:`TranslateError` whose ``reason`` is the Gateway API reason
  of the ``ResolvedRefs`` condition (``BackendNotFound``, ``RefNotPermitted``, ``InvalidKind``
  for routes; ``InvalidCertificateRef``, ``RefNotPermitted`` for listeners).

Which objects are ours
----------------------
A GatewayClass is ours when ``spec.controllerName`` is our controller name; a Gateway when its
``spec.gatewayClassName`` names such a class; an HTTPRoute parentRef when it points at such a
Gateway (``group`` gateway.networking.k8s.io, ``kind`` Gateway, ``namespace`` defaulting to the
route's).  Other parentRefs are neither translated nor given a status entry (another controller
owns them).

Attaching an HTTPRoute
----------------------
A parentRef selects the Gateway's listeners with the given ``sectionName`` and ``port`` (all
when absent); none → ``Accepted=False`` reason ``NoMatchingParent``.  A listener accepts the
route when its protocol is HTTP or HTTPS, it is not conflicted, ``allowedRoutes.kinds``
(default: HTTPRoute) includes HTTPRoute and ``allowedRoutes.namespaces.from`` allows the route's
namespace: ``Same`` (default), ``All``, or ``Selector`` (``matchLabels`` / ``matchExpressions``
over the Namespace's labels, which always include ``kubernetes.io/metadata.name``); none →
``NotAllowedByListeners``.  Hostnames are the intersection of ``spec.hostnames`` with the
listener's ``hostname`` (``*.example.com`` matches any name with that suffix and at least one
more label; of two overlapping names the more specific is kept); empty for every listener →
``NoMatchingListenerHostname``.  The APISIX route's ``hosts`` are the union over the accepted
listeners; a listener without hostname and a route without hostnames mean any host (no
``hosts``).  Listener ports are not matched (APISIX sees its own listen port, not the Service
port: AIC's ``listener_port_match_mode: off``).

Rules and matches → routes
--------------------------
Rule ``i``, match ``j`` → one route ``<ns>_<name>_<i>_<j>`` (id crc32 of that name, AIC ``desc``,
labels ``k8s/kind: HTTPRoute``...); a rule without matches has one match ``PathPrefix /``.

* path ``Exact`` → ``uris [p]``; ``PathPrefix /foo`` (trailing ``/`` trimmed) →
  ``["/foo", "/foo/*"]``, ``/`` → ``["/*"]``: Gateway API prefixes match whole path elements, so
  ``/foo`` does not match ``/foobar``.  ``RegularExpression`` → ``uris ["/*"]`` and ``vars
  ["uri", "~~", re]`` (a PCRE search, as AIC: anchor it with ``^...$`` for a full match).  A
  ``*`` in an Exact or PathPrefix path is refused (APISIX would read it as a wildcard).
* headers ``Exact`` → ``["http_<name, lowercased, - → _>", "==", v]``, ``RegularExpression``
  → ``"~~"``; query params → ``arg_<name>``; only the first match of a name counts (Gateway
  API); ``method`` → ``methods``.  Regexes are compiled with the gateway's engine and refused
  when it cannot compile them.
* ``timeouts``: the shorter of ``backendRequest`` and ``request`` bounds each of the route's
  ``timeout.connect/send/read`` (APISIX has no whole-request deadline); ``0s`` = none.

Filters (rule level; a backendRef with ``filters`` is refused and counts as invalid)
-----------------------------------------------------------------------------------
* ``RequestHeaderModifier`` → ``proxy-rewrite.headers {set, add, remove}`` (APISIX 3.x
  operations); ``URLRewrite`` → ``proxy-rewrite``: ``hostname`` → ``host``, ``ReplaceFullPath``
  → ``uri``, ``ReplacePrefixMatch`` → ``regex_uri`` pairs replacing the match's prefix
  (``^/foo$`` → replacement, ``^/foo/(.*)$`` → ``<replacement without trailing />/$1``).
* ``ResponseHeaderModifier`` → ``response-rewrite.headers {set, add, remove}`` (``add`` is
  ``"Name: value"``: APISIX refuses values with ``:`` or ending with ``/`` there).
* ``RequestRedirect`` → ``redirect {uri, ret_code}`` (``statusCode``, default 302) with ``uri``
  ``<scheme or $scheme>://<hostname or $host>[:port]<path>``; the port is ``port``, else the
  scheme's well-known port when ``scheme`` is set, else the listener port; it is left out when
  it is the scheme's default (80 for http, 443 for https).  Path: ``$request_uri`` when not
  modified, ``ReplaceFullPath`` → ``<path>$is_args$args``, ``ReplacePrefixMatch`` →
  ``$upstream_uri`` computed by the same ``proxy-rewrite regex_uri`` as URLRewrite (it runs
  before ``redirect`` in the rewrite phase, priority 1008 > 900).  No backend is needed.
* ``RequestMirror`` → ``proxy-mirror {host: "http://<clusterIP>:<port>"}`` (the ExternalName
  of an ExternalName Service; ``https`` when the port's ``appProtocol`` says so; ``percent`` /
  ``fraction`` → ``sample_ratio``); one per rule.  A mirror that does not resolve is left out.
* ``CORS`` (experimental channel) → ``cors``: ``allowOrigins`` (``*``, or the origins as
  ``allow_origins``, plus all of them as ``allow_origins_by_regex`` when one has a ``*`` host
  label), ``allowMethods`` (default ``GET,HEAD,POST``),
  ``allowHeaders`` (default none), ``exposeHeaders``, ``maxAge``, ``allowCredentials`` (then
  ``*`` becomes APISIX's ``**``, which echoes the request's value).
* ``ExtensionRef`` to an ``apisix.apache.org`` ``ApisixPluginConfig`` of the route's namespace
  → its plugins (the filters above win over a plugin of the same name; its ``traffic-split``
  and ``fault-injection`` are not used: the backendRefs own them).

Values a user writes literally (header values, paths, hostnames) may not contain ``$name`` or
``${``: APISIX would substitute a variable there.  A rule whose filters cannot be translated
answers 500 (``fault-injection`` abort) instead of being dropped, so that its requests never
fall through to a less specific route (Gateway API: a filter that cannot be applied must not
be skipped).

Backends
--------
Each ``backendRef`` (group ``""``, kind ``Service``, ``port`` required, ``weight`` default 1)
is the upstream shared by every route reaching that Service port
(``backends.service_upstream``: ``Service_<ns>_<svc>_<port>``, node weight 100); the route
gets the ``upstream_id`` of the first backend of weight > 0 and, with two or more valid
backends, ``traffic-split`` with one rule whose ``weighted_upstreams`` are ``{upstream_id,
weight}``.  A backend in another namespace needs a ReferenceGrant in that namespace from
HTTPRoutes of the route's namespace to Services (optionally naming it), else
``RefNotPermitted``; a missing Service or port → ``BackendNotFound``; another kind →
``InvalidKind``.  Gateway API wants the share of an invalid backend answered with 500: it
becomes ``fault-injection.abort {http_status: 500, percentage}`` (rounded to a whole percent,
kept in 1..99) in front of the valid backends; a rule with no valid backend of weight > 0 (or
no backendRefs and no redirect) answers 500 to every request.

Priority
--------
APISIX picks, among the routes matching in one radix tree node, the one of highest
``priority``.  :func:`http_route_priority` packs Gateway API precedence into 43 bits (below
2**53, so exact in JSON and Lua numbers, and far inside the schema's integer range), from the
most significant: hostname without wildcard (1 bit) and its length (8), path type (2: Exact 2,
RegularExpression 1 as Envoy Gateway, PathPrefix 0), path length (11; a prefix without its
trailing ``/``), has a method (1), header matches (5), query matches (5), and ``1023 - (64 *
rule + match)`` (10: earlier rules and matches first).  Ties between routes (Gateway API:
oldest, then by name) are left to APISIX's order.  The radix tree itself already tries exact
uris before prefixes and longer prefixes before shorter, which agrees with this order; a
RegularExpression route (uri ``/*``) thus only competes with ``/`` prefixes and other regexes.

Gateways → ssls
---------------
A listener of protocol HTTPS (``tls.mode`` Terminate, the default) or TLS Terminate becomes an
ssl ``Gateway_<ns>_<name>_<listener>`` from its ``certificateRefs`` (Secrets of type
``kubernetes.io/tls``, keys ``tls.crt`` / ``tls.key``, parsed and checked to belong together;
the first is ``cert``/``key``, further ones ``certs``/``keys``); ``snis`` = ``[hostname]`` or,
without a hostname, the certificates' DNS names.  A Secret in another namespace needs a
ReferenceGrant from Gateways of the Gateway's namespace to Secrets.  UDP, TCP and TLS
Passthrough listeners are refused (``UnsupportedProtocol``); listeners on one port with
protocols that cannot share it (HTTP vs HTTPS/TLS vs TCP vs UDP) or with the same protocol family
and hostname are ``Conflicted``.

Statuses
--------
Conditions carry ``observedGeneration``; ``lastTransitionTime`` is the previous one (read from
the object's current status) unless the condition's status flips; messages are cut at 32 KiB.
HTTPRoute ``status.parents[]``: entries of other controllers are kept; ours have
``parentRef``, ``controllerName``, ``Accepted`` (``Accepted``, ``NotAllowedByListeners``,
``NoMatchingListenerHostname``, ``NoMatchingParent``, ``UnsupportedValue`` when no rule could
be translated), ``ResolvedRefs`` (``ResolvedRefs`` or the first failing reason) and, when some
rules or matches could not be translated, ``PartiallyInvalid`` (reason ``UnsupportedValue``).
Gateway: ``Accepted`` (``Accepted`` / ``ListenersNotValid``), ``Programmed``, and per listener
``supportedKinds``, ``attachedRoutes``, ``Accepted``, ``ResolvedRefs`` (``InvalidCertificateRef``,
``RefNotPermitted``, ``InvalidRouteKinds``), ``Programmed`` and ``Conflicted``
(``ProtocolConflict`` / ``HostnameConflict``).  GatewayClass: ``Accepted``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import ConfigError
from ...plugins.builtin.cors import ORIGINS_PATTERN
from ...router import compile_expr
from .apisixpluginconfig import plugin_config_plugins
from .backends import service_upstream
from .common import (ClusterState, Item, Translation, TranslateError, check_selector, make_condition, now_rfc3339,
                     object_ref, parse_duration, secret_data, seconds, selector_matches)
from .endpoints import Backend, BackendError, app_protocol_scheme, find_service_port
from .naming import DEFAULT_CONTROLLER_NAME, DESC, fit_name, gen_id, labels as owner_labels, route_name, ssl_name

__all__ = [
    "GROUP",
    "RefError",
    "Attachment",
    "ParentResult",
    "gateway_class_accepted",
    "gateway_class_status",
    "translate_gateway",
    "gateway_status",
    "http_route_parents",
    "translate_http_route",
    "http_route_status",
    "http_route_service_refs",
    "http_route_gateway_refs",
    "http_route_priority",
]

Obj = Mapping[str, Any]
Key = tuple[str, str]

GROUP = "gateway.networking.k8s.io"
_APISIX_GROUP = "apisix.apache.org"
_HTTP_ROUTE_KIND = {"group": GROUP, "kind": "HTTPRoute"}
_ROUTE_SCHEMES = {"HTTP": "http", "HTTPS": "https"}     # listener protocols HTTPRoutes attach to
_FAMILY = {"HTTP": "HTTP", "HTTPS": "TLS", "TLS": "TLS", "TCP": "TCP", "UDP": "UDP"}  # may share a port
_DEFAULT_PORT = {"http": 80, "https": 443}
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_NS_NAME_LABEL = "kubernetes.io/metadata.name"
_VARIABLE = re.compile(r"\$[{\w.]")     # what APISIX would substitute in a template
_INVALID_BACKEND_BODY = "no valid backend for this route\n"
_INVALID_FILTER_BODY = "this route has a filter that cannot be applied\n"


class _FilterFailed(Exception):
    """A filter cannot be applied; its error is already recorded."""


class RefError(TranslateError):
    """A reference that cannot be resolved; ``reason`` is the Gateway API ``ResolvedRefs``
    reason (``BackendNotFound``, ``RefNotPermitted``, ``InvalidKind``,
    ``InvalidCertificateRef``)."""

    def __init__(self, pointer: str, message: str, *, reason: str, kind: str | None = None,
                 id: str | None = None) -> None:
        self.reason = reason
        super().__init__(pointer, message, kind=kind, id=id)


# --- small helpers -------------------------------------------------------------------------------


def _map(v: object) -> Obj:
    return v if isinstance(v, Mapping) else {}


def _maps(v: object) -> list[Obj]:
    return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []


def _spec(obj: Obj) -> Obj:
    return _map(obj.get("spec"))


def _generation(obj: Obj) -> int:
    g = _map(obj.get("metadata")).get("generation")
    return g if isinstance(g, int) and not isinstance(g, bool) else 0


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _literal(value: str, pointer: str, what: str) -> str:
    """``value`` for an APISIX template field, refused when APISIX would read a variable in it."""
    if _VARIABLE.search(value):
        raise ConfigError(pointer, f"{what} {value!r} contains '$' followed by a name or '{{': APISIX would "
                                   "substitute a variable there; remove the '$'")
    return value


def _condition(type_: str, ok: bool, reason: str, message: str, *, generation: int,
               previous: Sequence[Obj], now: str) -> dict[str, Any]:
    return make_condition(type_, "True" if ok else "False", reason, message, generation=generation,
                          previous=previous, now=now)


# --- what a translation reads -------------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    gateways: dict[Key, Obj]
    classes: dict[str, Obj]
    grants: dict[str, list[Obj]]        # ReferenceGrants by namespace
    namespaces: dict[str, Obj]
    controller_name: str

    def ours(self, gateway: Obj) -> bool:
        gc = self.classes.get(str(_spec(gateway).get("gatewayClassName") or ""))
        return gc is not None and gateway_class_accepted(gc, self.controller_name)

    def namespace_labels(self, name: str) -> dict[str, str]:
        labels = _map(_map(_map(self.namespaces.get(name)).get("metadata")).get("labels"))
        return {**{str(k): str(v) for k, v in labels.items()}, _NS_NAME_LABEL: name}

    def granted(self, *, from_kind: str, from_ns: str, to_kind: str, to_ns: str, to_name: str) -> bool:
        """Does a ReferenceGrant of ``to_ns`` let ``from_kind`` objects of ``from_ns`` refer to
        the core object ``to_kind/to_name``?"""
        for g in self.grants.get(to_ns, ()):
            spec = _spec(g)
            if not any(str(f.get("group") or "") == GROUP and f.get("kind") == from_kind and
                       f.get("namespace") == from_ns for f in _maps(spec.get("from"))):
                continue
            if any(str(t.get("group") or "") == "" and t.get("kind") == to_kind and
                   (not t.get("name") or t.get("name") == to_name) for t in _maps(spec.get("to"))):
                return True
        return False


def _index(state: ClusterState, *, gateways: Iterable[Obj] | None = None,
           gateway_classes: Iterable[Obj] | None = None, reference_grants: Iterable[Obj] | None = None,
           namespaces: Iterable[Obj] | None = None, controller_name: str) -> _Index:
    gws = {object_ref(g)[1:]: g for g in (gateways if gateways is not None else state.gateways.values())
           if isinstance(g, Mapping)}
    classes = {object_ref(c)[2]: c for c in (gateway_classes if gateway_classes is not None
                                             else state.gateway_classes.values()) if isinstance(c, Mapping)}
    grants: dict[str, list[Obj]] = {}
    for g in reference_grants if reference_grants is not None else state.reference_grants.values():
        if isinstance(g, Mapping):
            grants.setdefault(object_ref(g)[1], []).append(g)
    nss = {object_ref(n)[2]: n for n in (namespaces if namespaces is not None else state.namespaces.values())
           if isinstance(n, Mapping)}
    return _Index(gws, classes, grants, nss, controller_name)


# --- GatewayClass -------------------------------------------------------------------------------


def gateway_class_accepted(gc: Obj, controller_name: str = DEFAULT_CONTROLLER_NAME) -> bool:
    """Is this GatewayClass ours (``spec.controllerName`` is our controller name)?"""
    return _spec(gc).get("controllerName") == controller_name


def gateway_class_status(gc: Obj, *, controller_name: str = DEFAULT_CONTROLLER_NAME,
                         now: str | None = None) -> dict[str, Any]:
    """The ``status`` of one of our GatewayClasses (``Accepted=True``); another controller's
    class keeps its status as it is."""
    status = _map(gc.get("status"))
    if not gateway_class_accepted(gc, controller_name):
        return dict(status)
    cond = _condition("Accepted", True, "Accepted", f"handled by {controller_name}", generation=_generation(gc),
                      previous=_maps(status.get("conditions")), now=now or now_rfc3339())
    return {**status, "conditions": [cond]}


# --- listeners ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Listener:
    index: int
    name: str
    protocol: str
    port: int
    hostname: str | None
    spec: Obj
    unsupported: str | None = None                  # Accepted=False UnsupportedProtocol: why
    conflict: tuple[str, str] | None = None         # (ProtocolConflict | HostnameConflict, message)
    kinds: tuple[dict[str, str], ...] = ()          # supportedKinds
    bad_kinds: str | None = None                    # ResolvedRefs=False InvalidRouteKinds: why

    @property
    def pointer(self) -> str:
        return f"/spec/listeners/{self.index}"

    @property
    def terminates_tls(self) -> bool:
        return self.unsupported is None and self.protocol in ("HTTPS", "TLS")


def _listeners(gateway: Obj) -> list[_Listener]:
    """The Gateway's listeners with what can be said of each without reading other objects."""
    out: list[_Listener] = []
    for i, raw in enumerate(_spec(gateway).get("listeners") or ()):
        spec = _map(raw)
        proto = str(spec.get("protocol") or "")
        port = spec.get("port")
        port = port if isinstance(port, int) and not isinstance(port, bool) else 0
        host = str(spec.get("hostname") or "").strip().lower() or None
        mode = _map(spec.get("tls")).get("mode") or "Terminate"
        unsupported = None
        if proto not in ("HTTP", "HTTPS", "TLS"):
            unsupported = (f"protocol {proto or '(none)'} is not supported: Meshgate serves HTTP and HTTPS listeners "
                           "(and TLS listeners with tls.mode Terminate)")
        elif proto != "HTTP" and mode != "Terminate":
            unsupported = f"tls.mode {mode} is not supported: Meshgate terminates TLS (tls.mode: Terminate)"
        kinds, bad = _supported_kinds(spec, proto if unsupported is None else "")
        out.append(_Listener(i, str(spec.get("name") or ""), proto, port, host, spec, unsupported, kinds=kinds,
                             bad_kinds=bad))
    conflicts: dict[int, tuple[str, str]] = {}
    by_port: dict[int, list[_Listener]] = {}
    for li in out:
        by_port.setdefault(li.port, []).append(li)
    for port, group in by_port.items():
        families = {_FAMILY.get(li.protocol, li.protocol) for li in group}
        if len(families) > 1:
            msg = (f"port {port} is shared by listeners of protocols that cannot share it: "
                   f"{', '.join(sorted({li.protocol for li in group}))}")
            conflicts.update({li.index: ("ProtocolConflict", msg) for li in group})
            continue
        seen: dict[str | None, list[_Listener]] = {}
        for li in group:
            seen.setdefault(li.hostname, []).append(li)
        for host, same in seen.items():
            if len(same) > 1:
                msg = (f"listeners {', '.join(li.name for li in same)} on port {port} have the same hostname "
                       f"{host or '(none)'}")
                conflicts.update({li.index: ("HostnameConflict", msg) for li in same})
    return [replace(li, conflict=conflicts.get(li.index)) for li in out]


def _supported_kinds(spec: Obj, protocol: str) -> tuple[tuple[dict[str, str], ...], str | None]:
    routable = protocol in _ROUTE_SCHEMES
    kinds = _map(spec.get("allowedRoutes")).get("kinds")
    if kinds is None:
        return ((dict(_HTTP_ROUTE_KIND),) if routable else ()), None
    ok: list[dict[str, str]] = []
    bad: list[str] = []
    for k in _maps(kinds):
        group, kind = str(k.get("group", GROUP) or ""), str(k.get("kind") or "")
        if routable and group == GROUP and kind == "HTTPRoute":
            ok.append(dict(_HTTP_ROUTE_KIND))
        else:
            bad.append(f"{group or 'core'}/{kind}")
    why = (f"route kinds {', '.join(bad)} are not supported on a {protocol or 'unsupported'} listener; Meshgate "
           "supports HTTPRoute on HTTP and HTTPS listeners") if bad else None
    return tuple(ok[:1]), why


# --- Gateway → ssls -------------------------------------------------------------------------------


def _certificate_names(cert_pem: str, key_pem: str) -> list[str]:
    """The DNS names of a PEM certificate (chain: its first certificate), once the key is
    checked to be its key.  Raises ValueError."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(cert_pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("tls.crt is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("tls.key is not an unencrypted PEM private key") from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != certs[0].public_key().public_bytes(der, spki):
        raise ValueError("tls.key is not the key of the certificate in tls.crt")
    try:
        san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n).lower() for n in san.get_values_for_type(x509.DNSName)]


def _listener_ssl(gateway: Obj, li: _Listener, state: ClusterState, idx: _Index,
                  own: dict[str, str]) -> tuple[Item | None, list[TranslateError]]:
    """The ssl of a TLS-terminating listener and the problems of its certificateRefs."""
    kind, ns, name = object_ref(gateway)
    kind = kind or "Gateway"
    oid = f"{ns}/{name}"
    errors: list[TranslateError] = []
    ptr = li.pointer + "/tls/certificateRefs"
    refs = _map(li.spec.get("tls")).get("certificateRefs")
    if not _maps(refs):
        return None, [RefError(ptr, f"listener {li.name}: a {li.protocol} listener needs tls.certificateRefs naming a "
                                    "kubernetes.io/tls Secret", reason="InvalidCertificateRef", kind=kind, id=oid)]
    pairs: list[tuple[str, str]] = []
    names: list[str] = []
    for k, ref in enumerate(_maps(refs)):
        rptr = f"{ptr}/{k}"
        group, rkind = str(ref.get("group") or ""), str(ref.get("kind") or "Secret")
        sns, sname = str(ref.get("namespace") or ns), str(ref.get("name") or "")
        where = f"listener {li.name}: certificateRef"
        if group != "" or rkind != "Secret":
            errors.append(RefError(rptr, f"{where} kind {group or 'core'}/{rkind} is not supported; refer to a Secret "
                                         "(group \"\", kind Secret)", reason="InvalidCertificateRef", kind=kind,
                                   id=oid))
            continue
        if sns != ns and not idx.granted(from_kind="Gateway", from_ns=ns, to_kind="Secret", to_ns=sns, to_name=sname):
            errors.append(RefError(rptr, f"{where} to Secret {sns}/{sname} is not permitted: create a ReferenceGrant "
                                         f"in namespace {sns} from Gateways of namespace {ns} to Secrets",
                                   reason="RefNotPermitted", kind=kind, id=oid))
            continue
        try:
            cert, key, dns = _tls_secret(state.secret(sns, sname), f"{sns}/{sname}")
        except ValueError as e:
            errors.append(RefError(rptr, f"{where}: {e}", reason="InvalidCertificateRef", kind=kind, id=oid))
            continue
        pairs.append((cert, key))
        names += dns
    if not pairs:
        return None, errors
    snis = [li.hostname] if li.hostname else _unique(names)
    if not snis:
        errors.append(TranslateError(li.pointer + "/hostname", f"listener {li.name}: the certificate has no DNS names "
                                     "(subjectAltName); set the listener hostname", kind=kind, id=oid))
        return None, errors
    sid = gen_id(ssl_name(kind, ns, f"{name}_{li.name}"))
    value: dict[str, Any] = {"id": sid, "desc": DESC, "labels": dict(own), "snis": snis,
                             "cert": pairs[0][0], "key": pairs[0][1]}
    if len(pairs) > 1:
        value["certs"] = [c for c, _ in pairs[1:]]
        value["keys"] = [k for _, k in pairs[1:]]
    return Item("ssls", sid, value), errors


def _tls_secret(secret: Obj | None, ref: str) -> tuple[str, str, list[str]]:
    """``(cert, key, DNS names)`` of a ``kubernetes.io/tls`` Secret; raises ValueError."""
    if secret is None:
        raise ValueError(f"Secret {ref} not found")
    typ = secret.get("type")
    if typ is not None and typ != "kubernetes.io/tls":
        raise ValueError(f"Secret {ref} is of type {typ}; a listener certificate must be a kubernetes.io/tls Secret")
    data = secret_data(secret)
    if not data.get("tls.crt") or not data.get("tls.key"):
        raise ValueError(f"Secret {ref} needs the keys tls.crt and tls.key")
    try:
        dns = _certificate_names(data["tls.crt"], data["tls.key"])
    except ValueError as e:
        raise ValueError(f"Secret {ref}: {e}") from None
    return data["tls.crt"], data["tls.key"], dns


def translate_gateway(gateway: Obj, state: ClusterState, *, gateway_classes: Iterable[Obj] | None = None,
                      reference_grants: Iterable[Obj] | None = None,
                      controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    """One Gateway → the ssls of its TLS-terminating listeners (nothing when its class is
    not ours); never raises for bad input."""
    kind, ns, name = object_ref(gateway)
    kind = kind or "Gateway"
    own = owner_labels(kind, ns, name, controller_name=controller_name)
    idx = _index(state, gateway_classes=gateway_classes, reference_grants=reference_grants,
                 controller_name=controller_name)
    if not idx.ours(gateway):
        return Translation(kind, ns, name, own)
    items: list[Item] = []
    errors: list[TranslateError] = []
    oid = f"{ns}/{name}"
    for li in _listeners(gateway):
        if li.unsupported:
            errors.append(TranslateError(li.pointer + "/protocol", f"listener {li.name}: {li.unsupported}",
                                         kind=kind, id=oid))
            continue
        if li.conflict:
            errors.append(TranslateError(li.pointer, f"listener {li.name}: {li.conflict[1]}", kind=kind, id=oid))
        if li.bad_kinds:
            errors.append(TranslateError(li.pointer + "/allowedRoutes/kinds", f"listener {li.name}: {li.bad_kinds}",
                                         kind=kind, id=oid))
        if li.terminates_tls:
            ssl, errs = _listener_ssl(gateway, li, state, idx, own)
            errors += errs
            if ssl is not None and not li.conflict:
                items.append(ssl)
    return Translation(kind, ns, name, own, tuple(items), tuple(errors))


def gateway_status(gateway: Obj, state: ClusterState, *, routes: Iterable[Obj] = (),
                   gateway_classes: Iterable[Obj] | None = None, reference_grants: Iterable[Obj] | None = None,
                   namespaces: Iterable[Obj] | None = None, controller_name: str = DEFAULT_CONTROLLER_NAME,
                   now: str | None = None) -> dict[str, Any]:
    """The ``status`` of one of our Gateways, ``routes`` being the HTTPRoutes that may attach
    to it (for ``attachedRoutes``); ``addresses`` of the current status are kept."""
    _, ns, name = object_ref(gateway)
    gws = [gateway]
    idx = _index(state, gateways=gws, gateway_classes=gateway_classes, reference_grants=reference_grants,
                 namespaces=namespaces, controller_name=controller_name)
    now = now or now_rfc3339()
    gen = _generation(gateway)
    current = _map(gateway.get("status"))
    prev_listeners = {str(p.get("name")): _maps(p.get("conditions")) for p in _maps(current.get("listeners"))}
    attached: dict[str, int] = {}
    for r in routes:
        names = {a.listener for p in _route_parents(r, idx) for a in p.attachments if a.gateway == (ns, name)}
        for n in names:
            attached[n] = attached.get(n, 0) + 1
    own = owner_labels("Gateway", ns, name, controller_name=controller_name)
    listeners: list[dict[str, Any]] = []
    invalid: list[str] = []
    programmed = 0
    for li in _listeners(gateway):
        prev = prev_listeners.get(li.name, [])

        def cond(type_: str, ok: bool, reason: str, message: str, prev: Sequence[Obj] = prev) -> dict[str, Any]:
            return _condition(type_, ok, reason, message, generation=gen, previous=prev, now=now)

        refs_ok, refs_reason, refs_msg = True, "ResolvedRefs", "all references are resolved"
        if li.bad_kinds:
            refs_ok, refs_reason, refs_msg = False, "InvalidRouteKinds", li.bad_kinds
        elif li.terminates_tls:
            _, errs = _listener_ssl(gateway, li, state, idx, own)
            if errs:
                first = next((e for e in errs if isinstance(e, RefError)), None)
                refs_ok, refs_msg = False, "; ".join(e.message for e in errs)
                refs_reason = first.reason if first is not None else "InvalidCertificateRef"
        ok = li.unsupported is None and li.conflict is None and refs_ok
        programmed += ok
        if li.unsupported is not None or li.conflict is not None:
            invalid.append(li.name)
        problem = li.unsupported or (li.conflict[1] if li.conflict else None) or (None if refs_ok else refs_msg)
        listeners.append({
            "name": li.name,
            "supportedKinds": [dict(k) for k in li.kinds],
            "attachedRoutes": attached.get(li.name, 0),
            "conditions": [
                cond("Accepted", li.unsupported is None, "Accepted" if li.unsupported is None else "UnsupportedProtocol",
                     li.unsupported or "the listener is valid"),
                cond("ResolvedRefs", refs_ok, refs_reason, refs_msg),
                cond("Programmed", ok, "Programmed" if ok else "Invalid",
                     "the listener is programmed" if ok else f"the listener is not programmed: {problem}"),
                cond("Conflicted", li.conflict is not None, li.conflict[0] if li.conflict else "NoConflicts",
                     li.conflict[1] if li.conflict else "no conflict with other listeners"),
            ],
        })
    previous = _maps(current.get("conditions"))
    all_bad = bool(listeners) and len(invalid) == len(listeners)
    accepted = _condition("Accepted", not all_bad, "ListenersNotValid" if invalid else "Accepted",
                          (f"listeners not valid: {', '.join(invalid)}" if invalid else f"handled by {controller_name}"),
                          generation=gen, previous=previous, now=now)
    prog = _condition("Programmed", programmed > 0, "Programmed" if programmed else "Invalid",
                      f"{programmed} of {len(listeners)} listeners are programmed", generation=gen,
                      previous=previous, now=now)
    out: dict[str, Any] = {"conditions": [accepted, prog], "listeners": listeners}
    if current.get("addresses"):
        out = {"addresses": current["addresses"], **out}
    return out


# --- HTTPRoute parents ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """A listener an HTTPRoute is attached to; ``hostnames`` None means any host."""

    gateway: Key
    listener: str
    scheme: str          # http | https
    port: int
    hostnames: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class ParentResult:
    """One parentRef of an HTTPRoute that points at one of our Gateways.  ``reason`` is the
    ``Accepted`` condition's reason (``Accepted`` when ``attachments`` is not empty)."""

    index: int
    parent_ref: dict[str, Any]
    reason: str
    message: str
    attachments: tuple[Attachment, ...] = ()

    @property
    def accepted(self) -> bool:
        return bool(self.attachments)


def _covers(wildcard: str, host: str) -> bool:
    """``*.example.com`` covers ``a.example.com``, ``a.b.example.com`` and ``*.a.example.com``
    (at least one more label), not ``example.com``."""
    return wildcard.startswith("*.") and host.endswith(wildcard[1:]) and len(host) >= len(wildcard)


def _host_overlap(a: str, b: str) -> str | None:
    """The more specific of two hostnames when one includes the other (Gateway API)."""
    if a == b or _covers(b, a):
        return a
    return b if _covers(a, b) else None


def _intersect(route_hosts: Sequence[str], listener_host: str | None) -> tuple[str, ...] | None:
    if not listener_host:
        return tuple(route_hosts) or None
    if not route_hosts:
        return (listener_host,)
    return tuple(_unique(h for h in (_host_overlap(r, listener_host) for r in route_hosts) if h))


def _not_allowed(li: _Listener, gateway: Obj, route_ns: str, idx: _Index) -> str | None:
    """Why listener ``li`` does not accept HTTPRoutes of ``route_ns`` (None: it does)."""
    if li.unsupported or li.protocol not in _ROUTE_SCHEMES:
        return f"listener {li.name} ({li.protocol}) does not accept HTTPRoutes"
    if li.conflict:
        return f"listener {li.name} is conflicted: {li.conflict[1]}"
    if not li.kinds:
        return f"listener {li.name}: allowedRoutes.kinds does not include HTTPRoute"
    gw_ns = object_ref(gateway)[1]
    allowed = _map(_map(li.spec.get("allowedRoutes")).get("namespaces"))
    frm = allowed.get("from") or "Same"
    if frm == "All":
        return None
    if frm == "Same":
        return None if route_ns == gw_ns else (f"listener {li.name} only allows routes of namespace {gw_ns} "
                                               "(allowedRoutes.namespaces.from: Same)")
    if frm == "Selector":
        sel = _map(allowed.get("selector"))
        problems = check_selector(sel, "allowedRoutes.namespaces.selector")
        if problems:
            return f"listener {li.name}: " + "; ".join(problems)
        if selector_matches(sel, idx.namespace_labels(route_ns)):
            return None
        return f"listener {li.name}: namespace {route_ns} does not match allowedRoutes.namespaces.selector"
    return f"listener {li.name}: allowedRoutes.namespaces.from {frm!r} is not one of Same, All, Selector"


def _route_hostnames(route: Obj) -> list[str]:
    return _unique(str(h).strip().lower() for h in _spec(route).get("hostnames") or () if str(h).strip())


def _route_parents(route: Obj, idx: _Index) -> list[ParentResult]:
    _, ns, _ = object_ref(route)
    hostnames = _route_hostnames(route)
    out: list[ParentResult] = []
    for k, ref in enumerate(_spec(route).get("parentRefs") or ()):
        ref = _map(ref)
        group, kind = str(ref.get("group", GROUP) or ""), str(ref.get("kind") or "Gateway")
        gns, gname = str(ref.get("namespace") or ns), str(ref.get("name") or "")
        gw = idx.gateways.get((gns, gname))
        if group != GROUP or kind != "Gateway" or gw is None or not idx.ours(gw):
            continue
        pref: dict[str, Any] = {"group": GROUP, "kind": "Gateway", "namespace": gns, "name": gname}
        section, port = ref.get("sectionName"), ref.get("port")
        if section is not None:
            pref["sectionName"] = section
        if port is not None:
            pref["port"] = port
        candidates = [li for li in _listeners(gw)
                      if (section is None or li.name == section) and (port is None or li.port == port)]
        if not candidates:
            what = " and ".join(w for w in ((f"named {section!r}" if section is not None else ""),
                                            (f"on port {port}" if port is not None else "")) if w) or "at all"
            out.append(ParentResult(k, pref, "NoMatchingParent", f"Gateway {gns}/{gname} has no listener {what}"))
            continue
        reasons: list[str] = []
        allowed: list[_Listener] = []
        for li in candidates:
            why = _not_allowed(li, gw, ns, idx)
            if why is None:
                allowed.append(li)
            else:
                reasons.append(why)
        if not allowed:
            out.append(ParentResult(k, pref, "NotAllowedByListeners", "; ".join(reasons)))
            continue
        attachments = []
        for li in allowed:
            hosts = _intersect(hostnames, li.hostname)
            if hosts is None or hosts:
                attachments.append(Attachment((gns, gname), li.name, _ROUTE_SCHEMES[li.protocol], li.port, hosts))
        if not attachments:
            out.append(ParentResult(k, pref, "NoMatchingListenerHostname",
                                    f"no hostname of the route ({', '.join(hostnames)}) matches the hostname of "
                                    f"listener(s) {', '.join(f'{li.name} ({li.hostname})' for li in allowed)}"))
            continue
        out.append(ParentResult(k, pref, "Accepted", f"attached to listener(s) "
                                f"{', '.join(a.listener for a in attachments)} of Gateway {gns}/{gname}",
                                tuple(attachments)))
    return out


def http_route_parents(route: Obj, state: ClusterState, *, gateways: Iterable[Obj] | None = None,
                       gateway_classes: Iterable[Obj] | None = None, namespaces: Iterable[Obj] | None = None,
                       controller_name: str = DEFAULT_CONTROLLER_NAME) -> list[ParentResult]:
    """The parentRefs of an HTTPRoute that point at our Gateways, each with the listeners it
    attaches to or why it does not.  Empty: the route is not ours."""
    return _route_parents(route, _index(state, gateways=gateways, gateway_classes=gateway_classes,
                                        namespaces=namespaces, controller_name=controller_name))


def http_route_gateway_refs(route: Obj) -> set[Key]:
    """``(namespace, name)`` of the Gateways an HTTPRoute's parentRefs name."""
    _, ns, _ = object_ref(route)
    return {(str(r.get("namespace") or ns), str(r.get("name"))) for r in _maps(_spec(route).get("parentRefs"))
            if str(r.get("group", GROUP) or "") == GROUP and (r.get("kind") or "Gateway") == "Gateway"
            and r.get("name")}


def http_route_service_refs(route: Obj) -> set[Key]:
    """``(namespace, Service)`` an HTTPRoute reads: its Service backendRefs and RequestMirror
    backendRefs, granted or not (a ReferenceGrant may come later)."""
    _, ns, _ = object_ref(route)
    refs: list[Obj] = []
    for rule in _maps(_spec(route).get("rules")):
        refs += _maps(rule.get("backendRefs"))
        refs += [_map(_map(f.get("requestMirror")).get("backendRef")) for f in _maps(rule.get("filters"))
                 if f.get("type") == "RequestMirror"]
    return {(str(r.get("namespace") or ns), str(r["name"])) for r in refs
            if r.get("name") and str(r.get("group") or "") == "" and (r.get("kind") or "Service") == "Service"}


# --- priority -------------------------------------------------------------------------------------

_PATH_RANK = {"Exact": 2, "RegularExpression": 1, "PathPrefix": 0}


def http_route_priority(*, hosts: Sequence[str] = (), path_type: str = "PathPrefix", path: str = "",
                        method: bool = False, headers: int = 0, queries: int = 0, rule: int = 0,
                        match: int = 0) -> int:
    """The APISIX ``priority`` of one HTTPRoute match (module docstring, Priority): higher
    means Gateway API precedence.  ``path`` is the Exact path, the regex, or the prefix without
    its trailing ``/`` (``""`` for ``/``)."""
    exact_host, host_len = max(((0 if h.startswith("*") else 1, len(h)) for h in hosts), default=(0, 0))
    fields = ((exact_host, 1), (min(host_len, 255), 8), (_PATH_RANK.get(path_type, 0), 2), (min(len(path), 2047), 11),
              (1 if method else 0, 1), (min(headers, 31), 5), (min(queries, 31), 5),
              (1023 - min(64 * rule + match, 1023), 10))
    value = 0
    for v, bits in fields:
        value = (value << bits) | v
    return value


# --- HTTPRoute → routes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    uris: list[str]
    vars: list[list[Any]]
    methods: list[str]
    path_type: str
    path: str                 # for the priority
    prefix: str | None        # PathPrefix without trailing '/', for ReplacePrefixMatch
    headers: int
    queries: int


@dataclass(frozen=True, slots=True)
class _Redirect:
    scheme: str | None
    hostname: str | None
    port: int | None
    code: int
    full_path: str | None
    prefix: bool              # ReplacePrefixMatch (the path comes from proxy-rewrite regex_uri)


@dataclass
class _Filters:
    plugins: dict[str, Any] = field(default_factory=dict)
    rewrite: dict[str, Any] = field(default_factory=dict)      # proxy-rewrite
    prefix: tuple[str, str] | None = None                        # (ReplacePrefixMatch replacement, pointer)
    redirect: _Redirect | None = None
    failed: bool = False


def _prefix_regex(prefix: str, replacement: str) -> list[str]:
    """``proxy-rewrite.regex_uri`` replacing a matched path prefix (Gateway API
    ReplacePrefixMatch table: ``/foo`` → ``/xyz``, ``/foo/`` → ``/xyz/``, ``/foo/bar`` →
    ``/xyz/bar``; a replacement ``/`` or empty gives ``/`` and ``/bar``)."""
    rep = replacement.replace("$", "$$")
    base = rep.rstrip("/")
    pairs = [f"^{re.escape(prefix)}$", rep or "/"] if prefix else []
    return pairs + [f"^{re.escape(prefix)}/(.*)$", base + "/$1"]


def _headers_conf(spec: Obj, pointer: str, *, response: bool) -> dict[str, Any]:
    """An HTTPHeaderFilter → ``{set, add, remove}`` of proxy-rewrite (request) or
    response-rewrite (response, whose ``add`` is ``["Name: value"]``)."""
    out: dict[str, Any] = {}
    for op in ("set", "add"):
        entries: dict[str, str] = {}
        for k, h in enumerate(_maps(spec.get(op))):
            hptr = f"{pointer}/{op}/{k}"
            hname, value = str(h.get("name") or ""), str(h.get("value") or "")
            if not hname or ":" in hname:
                raise ConfigError(hptr + "/name", f"expected a header name, got {hname!r}")
            entries[hname] = _literal(value, hptr + "/value", "header value")
        if not entries:
            continue
        if response and op == "add":
            bad = [n for n, v in entries.items() if ":" in v or v.endswith("/") or not v.strip()]
            if bad:
                raise ConfigError(f"{pointer}/add", f"header {bad[0]}: APISIX response-rewrite cannot add a value that "
                                                    "is empty, contains ':' or ends with '/'; use set instead")
            out["add"] = [f"{n}: {v}" for n, v in entries.items()]
        else:
            out[op] = entries
    remove = [str(n) for n in spec.get("remove") or () if str(n)]
    if remove:
        out["remove"] = _unique(remove)
    return out


def _checked(expr: list[Any], pointer: str) -> list[Any]:
    """``expr`` once the gateway's expression engine compiled it (a regex Python's ``re``
    cannot compile is refused here rather than by the gateway)."""
    try:
        compile_expr([expr], pointer)
    except ConfigError as e:
        raise ConfigError(pointer, f"the gateway cannot use this regular expression: {e.message}") from None
    return expr


def _var_match(var: str, spec: Obj, pointer: str) -> list[Any]:
    """A header or query param match → a ``vars`` expression."""
    typ = spec.get("type") or "Exact"
    if typ not in ("Exact", "RegularExpression"):
        raise ConfigError(pointer + "/type", f"expected Exact or RegularExpression, got {typ!r}")
    return _checked([var, "==" if typ == "Exact" else "~~", str(spec.get("value") or "")], pointer + "/value")


def _mirror_ratio(spec: Obj, pointer: str) -> float:
    """The share of requests a RequestMirror copies (``percent`` or ``fraction``, default all)."""
    percent, frac = spec.get("percent"), spec.get("fraction")
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ConfigError(pointer + "/percent", f"expected an integer 0..100, got {percent!r}")
        return percent / 100
    if frac is not None:
        num, den = _map(frac).get("numerator"), _map(frac).get("denominator", 100)
        if not (isinstance(num, int) and isinstance(den, int)) or isinstance(num, bool) or isinstance(den, bool) \
                or den <= 0 or num < 0:
            raise ConfigError(pointer + "/fraction", "expected integers numerator >= 0 and denominator > 0, got "
                                                     f"{frac!r}")
        return min(num / den, 1.0)
    return 1.0


def _origin_regex(origin: str) -> str:
    return "^" + re.escape(origin).replace(r"\*", "[^/]+") + "$"


def _cors(spec: Obj, pointer: str) -> dict[str, Any]:
    """An HTTPCORSFilter → ``cors`` (module docstring)."""
    creds = spec.get("allowCredentials") is True
    star = "**" if creds else "*"
    origins = [str(o) for o in spec.get("allowOrigins") or ()]
    if not origins:
        raise ConfigError(pointer + "/allowOrigins", "required field is missing: without allowOrigins no origin is "
                                                     "allowed; list the origins or \"*\"")
    out: dict[str, Any] = {}
    if "*" in origins:
        out["allow_origins"] = star
    else:
        joined = ",".join(_unique(origins))
        if not re.match(ORIGINS_PATTERN, joined):
            raise ConfigError(pointer + "/allowOrigins", f"expected origins such as https://a.example.com, got {origins}")
        # never "*": with a regex list too, the literal list keeps Vary: Origin and, read as exact
        # origins, a wildcard one matches no real Origin
        out["allow_origins"] = joined
        if any("*" in o for o in origins):
            out["allow_origins_by_regex"] = _unique(_origin_regex(o) for o in origins)
    methods = [str(m).upper() for m in spec.get("allowMethods") or ()]
    out["allow_methods"] = star if "*" in methods else ",".join(_unique(methods) or ["GET", "HEAD", "POST"])
    headers = [str(h) for h in spec.get("allowHeaders") or ()]
    out["allow_headers"] = star if "*" in headers else ",".join(_unique(headers))
    expose = [str(h) for h in spec.get("exposeHeaders") or ()]
    if expose:
        if "*" in expose and creds:
            raise ConfigError(pointer + "/exposeHeaders", "\"*\" cannot be combined with allowCredentials: list the "
                                                          "headers to expose")
        out["expose_headers"] = ",".join(_unique(expose))
    age = spec.get("maxAge")
    if isinstance(age, int) and not isinstance(age, bool):
        out["max_age"] = age
    if creds:
        out["allow_credential"] = True
    return out


class _RouteCtx:
    """The translation of one HTTPRoute: items and errors accumulate here."""

    def __init__(self, route: Obj, state: ClusterState, idx: _Index, own: dict[str, str],
                 attachments: Sequence[Attachment]) -> None:
        kind, self.ns, self.name = object_ref(route)
        self.kind = kind or "HTTPRoute"
        self.state, self.idx, self.own, self.attachments = state, idx, own, attachments
        # one listener taking any host makes the route answer any host (listener ports are not matched)
        any_host = any(a.hostnames is None for a in attachments)
        self.hosts = [] if any_host else _unique(h for a in attachments for h in a.hostnames or ())
        self.items: dict[tuple[str, str], Item] = {}
        self.routes: list[Item] = []
        self.errors: list[TranslateError] = []
        self.warnings: list[str] = []

    def error(self, pointer: str, message: str) -> None:
        self.errors.append(TranslateError(pointer, message, kind=self.kind, id=f"{self.ns}/{self.name}"))

    def ref_error(self, pointer: str, message: str, reason: str) -> None:
        self.errors.append(RefError(pointer, message, reason=reason, kind=self.kind, id=f"{self.ns}/{self.name}"))

    # --- references ------------------------------------------------------------------------

    def service_ref(self, ref: Obj, pointer: str) -> tuple[str, str, int] | None:
        """``(namespace, name, port)`` of a Service backendRef, or None (error recorded)."""
        group, kind = str(ref.get("group") or ""), str(ref.get("kind") or "Service")
        ns, name = str(ref.get("namespace") or self.ns), str(ref.get("name") or "")
        if group != "" or kind != "Service":
            self.ref_error(pointer + "/kind", f"backendRef kind {group or 'core'}/{kind} is not supported; refer to a "
                                              "Service (group \"\", kind Service)", "InvalidKind")
            return None
        if not name:
            self.error(pointer + "/name", "required field is missing: the Service name")
            return None
        if ns != self.ns and not self.idx.granted(from_kind="HTTPRoute", from_ns=self.ns, to_kind="Service",
                                                  to_ns=ns, to_name=name):
            self.ref_error(pointer, f"backendRef to Service {ns}/{name} is not permitted: create a ReferenceGrant in "
                                    f"namespace {ns} from HTTPRoutes of namespace {self.ns} to Services",
                           "RefNotPermitted")
            return None
        port = ref.get("port")
        if isinstance(port, bool) or not isinstance(port, int):
            self.error(pointer + "/port", f"required field is missing: the port of Service {ns}/{name}")
            return None
        if self.state.service(ns, name) is None:
            self.ref_error(pointer, f"Service {ns}/{name} not found", "BackendNotFound")
            return None
        return ns, name, port

    def backends(self, rule: Obj, pointer: str) -> tuple[list[tuple[Item, int, bool]], int]:
        """``[(upstream item, weight, websocket)]`` of the valid backendRefs, and the weight of
        the invalid ones."""
        valid: list[tuple[Item, int, bool]] = []
        invalid = 0
        for k, ref in enumerate(rule.get("backendRefs") or ()):
            bptr = f"{pointer}/backendRefs/{k}"
            ref = _map(ref)
            weight = ref.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                self.error(bptr + "/weight", f"expected an integer >= 0, got {weight!r}")
                invalid += 1
                continue
            if ref.get("filters"):
                self.error(bptr + "/filters", "backendRefs[].filters are not supported; put the filters in the "
                                              "rule's filters")
                invalid += weight
                continue
            target = self.service_ref(ref, bptr)
            if target is None:
                invalid += weight
                continue
            ns, name, port = target
            try:
                item, ws = service_upstream(ns, Backend(name, port), self.state,
                                            controller_name=self.idx.controller_name)
            except BackendError as e:
                self.ref_error(bptr + "/port", e.message, "BackendNotFound")
                invalid += weight
                continue
            except ConfigError as e:
                self.error(bptr, f"ApisixUpstream {ns}/{name}: {e.pointer}: {e.message}")
                invalid += weight
                continue
            valid.append((item, weight, ws))
        return valid, invalid

    # --- filters ---------------------------------------------------------------------------

    def filters(self, rule: Obj, pointer: str) -> _Filters:
        out = _Filters()
        extension: dict[str, Any] = {}
        kinds = [str(_map(f).get("type")) for f in rule.get("filters") or ()]
        if "RequestRedirect" in kinds and "URLRewrite" in kinds:
            self.error(pointer + "/filters", "RequestRedirect and URLRewrite cannot be used together in one rule")
            out.failed = True
            return out
        for k, f in enumerate(rule.get("filters") or ()):
            fptr = f"{pointer}/filters/{k}"
            f = _map(f)
            try:
                self.filter(f, fptr, out, extension)
            except ConfigError as e:
                self.error(e.pointer, e.message)
                out.failed = True
            except _FilterFailed:
                out.failed = True
        for pname in list(extension):
            if pname in ("fault-injection", "traffic-split"):
                del extension[pname]        # the backendRefs' weights (and 500 shares) own these
                self.warnings.append(f"{pointer}/filters: plugin {pname} of the ExtensionRef is not used: the "
                                     "backendRefs decide where requests go")
            elif pname in out.plugins or (pname == "proxy-rewrite" and (out.rewrite or out.prefix)):
                self.warnings.append(f"{pointer}/filters: plugin {pname} of the ExtensionRef is replaced by the "
                                     "rule's own filter")
        out.plugins = {**extension, **out.plugins}
        return out

    def filter(self, f: Obj, fptr: str, out: _Filters, extension: dict[str, Any]) -> None:
        typ = f.get("type")
        if typ == "RequestHeaderModifier":
            headers = _headers_conf(_map(f.get("requestHeaderModifier")), fptr + "/requestHeaderModifier",
                                    response=False)
            if headers:
                out.rewrite["headers"] = headers
        elif typ == "ResponseHeaderModifier":
            headers = _headers_conf(_map(f.get("responseHeaderModifier")), fptr + "/responseHeaderModifier",
                                    response=True)
            if headers:
                out.plugins["response-rewrite"] = {"headers": headers}
        elif typ == "URLRewrite":
            spec = _map(f.get("urlRewrite"))
            if spec.get("hostname"):
                out.rewrite["host"] = _literal(str(spec["hostname"]), fptr + "/urlRewrite/hostname", "hostname")
            self.path_modifier(_map(spec.get("path")), fptr + "/urlRewrite/path", out, redirect=False)
        elif typ == "RequestRedirect":
            out.redirect = self.redirect(_map(f.get("requestRedirect")), fptr + "/requestRedirect", out)
        elif typ == "RequestMirror":
            if "proxy-mirror" in out.plugins:
                raise ConfigError(fptr, "only one RequestMirror per rule is supported (APISIX proxy-mirror has one "
                                        "host)")
            mirror = self.mirror(_map(f.get("requestMirror")), fptr + "/requestMirror")
            if mirror is not None:
                out.plugins["proxy-mirror"] = mirror
        elif typ == "CORS":
            out.plugins["cors"] = _cors(_map(f.get("cors")), fptr + "/cors")
        elif typ == "ExtensionRef":
            extension.update(self.extension(_map(f.get("extensionRef")), fptr + "/extensionRef"))
        else:
            raise ConfigError(fptr + "/type", f"filter type {typ!r} is not supported; supported: "
                                              "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, "
                                              "URLRewrite, RequestMirror, CORS, ExtensionRef")

    def path_modifier(self, path: Obj, pointer: str, out: _Filters, *, redirect: bool) -> str | None:
        """Record an HTTPPathModifier; returns the full path of ReplaceFullPath."""
        if not path:
            return None
        typ = path.get("type")
        if typ == "ReplaceFullPath":
            full = _literal(str(path.get("replaceFullPath") or ""), pointer + "/replaceFullPath", "path")
            if not full.startswith("/"):
                raise ConfigError(pointer + "/replaceFullPath", f"expected a path starting with /, got {full!r}")
            if not redirect:
                out.rewrite["uri"] = full
            return full
        if typ == "ReplacePrefixMatch":
            out.prefix = (str(path.get("replacePrefixMatch") or ""), pointer + "/replacePrefixMatch")
            return None
        raise ConfigError(pointer + "/type", f"expected ReplaceFullPath or ReplacePrefixMatch, got {typ!r}")

    def redirect(self, spec: Obj, pointer: str, out: _Filters) -> _Redirect:
        scheme = str(spec["scheme"]).lower() if spec.get("scheme") else None
        if scheme not in (None, "http", "https"):
            raise ConfigError(pointer + "/scheme", f"expected http or https, got {spec.get('scheme')!r}")
        code = spec.get("statusCode", 302)
        if code not in _REDIRECT_CODES:
            raise ConfigError(pointer + "/statusCode", f"expected one of {', '.join(map(str, _REDIRECT_CODES))}, "
                                                       f"got {code!r}")
        port = spec.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            raise ConfigError(pointer + "/port", f"expected a port 1..65535, got {port!r}")
        host = _literal(str(spec["hostname"]).lower(), pointer + "/hostname", "hostname") if spec.get("hostname") \
            else None
        full = self.path_modifier(_map(spec.get("path")), pointer + "/path", out, redirect=True)
        return _Redirect(scheme, host, port, int(code), full, out.prefix is not None)

    def redirect_uri(self, r: _Redirect, path: str) -> str:
        """``redirect.uri``: ``<scheme>://<host>[:port]<path>`` (module docstring)."""
        schemes = {a.scheme for a in self.attachments}
        ports = {a.port for a in self.attachments}
        known_scheme = r.scheme or (next(iter(schemes)) if len(schemes) == 1 else None)
        if r.port is not None:
            port: int | None = r.port
        elif r.scheme is not None:
            port = None                     # the scheme's well-known port
        else:
            port = next(iter(ports)) if len(ports) == 1 else None
        if port is not None and port == _DEFAULT_PORT.get(known_scheme or ""):
            port = None
        if r.hostname:
            host = r.hostname
        elif port is None and r.scheme is None and r.port is None and len(ports) != 1:
            host = "$http_host"             # listeners on several ports: keep the one the client used
        else:
            host = "$host"
        return f"{r.scheme or '$scheme'}://{host}{f':{port}' if port is not None else ''}{path}"

    def mirror(self, spec: Obj, pointer: str) -> dict[str, Any] | None:
        target = self.service_ref(_map(spec.get("backendRef")), pointer + "/backendRef")
        if target is None:
            return None
        ns, name, port = target
        svc = self.state.service(ns, name) or {}
        sspec = _map(svc.get("spec"))
        try:
            sp: Obj = find_service_port(svc, port)
        except BackendError as e:
            if sspec.get("type") != "ExternalName":      # any port of an external name will do
                self.ref_error(pointer + "/backendRef/port", e.message, "BackendNotFound")
                return None
            sp = {}
        if sspec.get("type") == "ExternalName":
            host = str(sspec.get("externalName") or "")
        else:
            host = str(sspec.get("clusterIP") or "")
            if not host or host == "None":
                self.error(pointer + "/backendRef", f"Service {ns}/{name} has no ClusterIP (headless): RequestMirror "
                                                    "needs a Service with a ClusterIP")
                return None
            try:
                if ipaddress.ip_address(host).version == 6:
                    host = f"[{host}]"
            except ValueError:
                self.error(pointer + "/backendRef", f"Service {ns}/{name} has an invalid clusterIP {host!r}")
                return None
        if not host:
            self.error(pointer + "/backendRef", f"Service {ns}/{name} is of type ExternalName but has no externalName")
            return None
        scheme = app_protocol_scheme(_map(sp).get("appProtocol"))[0] or "http"
        conf: dict[str, Any] = {"host": f"{scheme}://{host}:{port}"}
        ratio = _mirror_ratio(spec, pointer)
        if ratio <= 0:
            self.warnings.append(f"{pointer}: mirroring 0% of the requests: no proxy-mirror")
            return None
        if ratio < 1:
            conf["sample_ratio"] = max(round(ratio, 5), 0.00001)   # the plugin's minimum
        return conf

    def extension(self, ref: Obj, pointer: str) -> dict[str, Any]:
        group, kind, name = str(ref.get("group") or ""), str(ref.get("kind") or ""), str(ref.get("name") or "")
        if group != _APISIX_GROUP or kind != "ApisixPluginConfig":
            self.ref_error(pointer, f"ExtensionRef {group or 'core'}/{kind} is not supported; refer to an "
                                    f"ApisixPluginConfig (group {_APISIX_GROUP}, kind ApisixPluginConfig) of namespace "
                                    f"{self.ns}", "InvalidKind")
            raise _FilterFailed
        apc = self.state.plugin_config(self.ns, name)
        if apc is None:
            self.ref_error(pointer + "/name", f"ApisixPluginConfig {self.ns}/{name} not found", "BackendNotFound")
            raise _FilterFailed
        try:
            return plugin_config_plugins(apc, self.state)
        except ConfigError as e:
            raise ConfigError(pointer + "/name", f"ApisixPluginConfig {self.ns}/{name}: {e.pointer}: {e.message}") \
                from None

    # --- matches ---------------------------------------------------------------------------

    def match(self, m: Obj, pointer: str) -> _Match:
        path = _map(m.get("path")) or {"type": "PathPrefix", "value": "/"}
        ptype = path.get("type") or "PathPrefix"
        value = str(path.get("value") or "/")
        uris: list[str]
        vars_: list[list[Any]] = []
        prefix = None
        if ptype == "RegularExpression":
            uris, key = ["/*"], value
            vars_.append(_checked(["uri", "~~", value], pointer + "/path/value"))
        elif ptype in ("Exact", "PathPrefix"):
            if not value.startswith("/"):
                raise ConfigError(pointer + "/path/value", f"expected a path starting with /, got {value!r}")
            if "*" in value:
                raise ConfigError(pointer + "/path/value", f"'*' in a {ptype} path cannot be matched literally (APISIX "
                                                           "reads it as a wildcard); use RegularExpression")
            if ptype == "Exact":
                uris, key = [value], value
            else:
                prefix = key = value.rstrip("/")
                uris = [prefix, prefix + "/*"] if prefix else ["/*"]
        else:
            raise ConfigError(pointer + "/path/type", f"expected Exact, PathPrefix or RegularExpression, got {ptype!r}")
        seen: set[str] = set()
        headers = 0
        for k, h in enumerate(_maps(m.get("headers"))):
            hname = str(h.get("name") or "")
            if hname.lower() in seen:
                continue                    # Gateway API: only the first match of a name counts
            seen.add(hname.lower())
            if not hname or "_" in hname:
                raise ConfigError(f"{pointer}/headers/{k}/name", f"header name {hname!r} cannot be matched: APISIX "
                                  "reads headers as variables http_<name> where '_' stands for '-'")
            vars_.append(_var_match("http_" + hname.lower().replace("-", "_"), h, f"{pointer}/headers/{k}"))
            headers += 1
        seen = set()
        queries = 0
        for k, q in enumerate(_maps(m.get("queryParams"))):
            qname = str(q.get("name") or "")
            if qname in seen:
                continue
            seen.add(qname)
            if not qname:
                raise ConfigError(f"{pointer}/queryParams/{k}/name", "required field is missing")
            vars_.append(_var_match("arg_" + qname, q, f"{pointer}/queryParams/{k}"))
            queries += 1
        methods: list[str] = []
        if m.get("method") is not None:
            method = str(m["method"]).upper()
            if method not in _METHODS:
                raise ConfigError(pointer + "/method", f"expected one of {', '.join(_METHODS)}, got {m['method']!r}")
            methods = [method]
        return _Match(uris, vars_, methods, str(ptype), key, prefix, headers, queries)

    # --- rules -----------------------------------------------------------------------------

    def rule(self, i: int, rule: Obj) -> None:
        ptr = f"/spec/rules/{i}"
        filters = self.filters(rule, ptr)
        valid, invalid = self.backends(rule, ptr) if filters.redirect is None else ([], 0)
        if filters.redirect is not None and rule.get("backendRefs"):
            self.warnings.append(f"{ptr}/backendRefs: not used, the rule answers with a redirect")
        for key in ("sessionPersistence", "retry"):
            if rule.get(key):
                self.warnings.append(f"{ptr}/{key}: not supported by Meshgate, ignored")
        timeout = self.timeout(rule, ptr)
        matches = _maps(rule.get("matches")) or [{}]
        for j, m in enumerate(matches):
            mptr = f"{ptr}/matches/{j}"
            try:
                match = self.match(m, mptr)
                plugins = self.match_plugins(filters, match)
            except ConfigError as e:
                self.error(e.pointer, e.message)
                continue
            self.add_route(i, j, match, plugins, filters, valid, invalid, timeout)

    def timeout(self, rule: Obj, pointer: str) -> int | float | None:
        t = _map(rule.get("timeouts"))
        limits = []
        for key in ("backendRequest", "request"):
            if t.get(key) is None:
                continue
            try:
                secs = parse_duration(t[key])
            except ValueError as e:
                self.error(f"{pointer}/timeouts/{key}", str(e))
                continue
            if secs > 0:
                limits.append(secs)
        return seconds(min(limits)) if limits else None

    def match_plugins(self, f: _Filters, m: _Match) -> dict[str, Any]:
        """The rule's plugins completed for one match (ReplacePrefixMatch needs its prefix)."""
        plugins = dict(f.plugins)
        rewrite = dict(f.rewrite)
        if f.prefix is not None:
            replacement, pptr = f.prefix
            if m.prefix is None:
                raise ConfigError(pptr, f"ReplacePrefixMatch needs a PathPrefix match; this match is {m.path_type}")
            rewrite["regex_uri"] = _prefix_regex(m.prefix, replacement)
        if f.redirect is not None:
            r = f.redirect
            path = "$upstream_uri" if r.prefix else (r.full_path + "$is_args$args" if r.full_path else "$request_uri")
            plugins["redirect"] = {"uri": self.redirect_uri(r, path), "ret_code": r.code}
        if rewrite:
            plugins["proxy-rewrite"] = rewrite
        return plugins

    def add_route(self, i: int, j: int, m: _Match, plugins: dict[str, Any], f: _Filters,
                  valid: list[tuple[Item, int, bool]], invalid: int, timeout: int | float | None) -> None:
        rname = route_name(self.ns, self.name, f"{i}_{j}")
        route: dict[str, Any] = {"id": gen_id(rname), "name": fit_name(rname), "desc": DESC, "labels": dict(self.own),
                                 "uris": m.uris}
        if self.hosts:
            route["hosts"] = list(self.hosts)
        if m.methods:
            route["methods"] = m.methods
        if m.vars:
            route["vars"] = m.vars
        route["priority"] = http_route_priority(hosts=self.hosts, path_type=m.path_type, path=m.path,
                                                method=bool(m.methods), headers=m.headers, queries=m.queries,
                                                rule=i, match=j)
        if timeout is not None:
            route["timeout"] = {"connect": timeout, "send": timeout, "read": timeout}
        live = [(item, w, ws) for item, w, ws in valid if w > 0]
        if f.failed:
            plugins = {"fault-injection": {"abort": {"http_status": 500, "body": _INVALID_FILTER_BODY}}}
        elif f.redirect is None and not live:
            plugins = {"fault-injection": {"abort": {"http_status": 500, "body": _INVALID_BACKEND_BODY}}}
        elif f.redirect is None:
            if any(ws for _, _, ws in live):
                route["enable_websocket"] = True
            total = sum(w for _, w, _ in live) + invalid
            if invalid:
                share = min(max(round(100 * invalid / total), 1), 99)
                plugins["fault-injection"] = {"abort": {"http_status": 500, "body": _INVALID_BACKEND_BODY,
                                                        "percentage": share}}
            if len(valid) > 1:
                plugins["traffic-split"] = {"rules": [{"weighted_upstreams": [
                    {"upstream_id": item.id, "weight": w} for item, w, _ in valid]}]}
            for item, _, _ in valid:
                self.items.setdefault((item.kind, item.id), item)
            route["upstream_id"] = live[0][0].id
        if plugins:
            route["plugins"] = plugins
        self.routes.append(Item("routes", route["id"], route))


def translate_http_route(route: Obj, state: ClusterState, *, gateways: Iterable[Obj] | None = None,
                         gateway_classes: Iterable[Obj] | None = None, reference_grants: Iterable[Obj] | None = None,
                         namespaces: Iterable[Obj] | None = None,
                         controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    """One HTTPRoute → its shared upstreams then its routes (module docstring).  A route none
    of whose parentRefs is ours gives an empty translation; one attached to none of our
    listeners is still checked (its errors feed ``ResolvedRefs``) but gives no items."""
    kind, ns, name = object_ref(route)
    kind = kind or "HTTPRoute"
    own = owner_labels(kind, ns, name, controller_name=controller_name)
    idx = _index(state, gateways=gateways, gateway_classes=gateway_classes, reference_grants=reference_grants,
                 namespaces=namespaces, controller_name=controller_name)
    parents = _route_parents(route, idx)
    if not parents:
        return Translation(kind, ns, name, own)
    attachments = [a for p in parents for a in p.attachments]
    ctx = _RouteCtx(route, state, idx, own, attachments)
    for p in parents:
        if not p.accepted:
            ctx.warnings.append(f"/spec/parentRefs/{p.index}: not attached ({p.reason}): {p.message}")
    rules = _spec(route).get("rules")
    for i, rule in enumerate(rules if isinstance(rules, list) else ()):
        ctx.rule(i, _map(rule))
    items = (*ctx.items.values(), *ctx.routes) if attachments else ()
    return Translation(kind, ns, name, own, tuple(items), tuple(ctx.errors), tuple(ctx.warnings))


def http_route_status(route: Obj, translation: Translation, state: ClusterState, *,
                      gateways: Iterable[Obj] | None = None, gateway_classes: Iterable[Obj] | None = None,
                      namespaces: Iterable[Obj] | None = None, controller_name: str = DEFAULT_CONTROLLER_NAME,
                      now: str | None = None) -> dict[str, Any]:
    """The ``status`` of an HTTPRoute given its ``translation``: ``parents`` entries of other
    controllers kept, ours recomputed (one per parentRef pointing at one of our Gateways)."""
    parents = http_route_parents(route, state, gateways=gateways, gateway_classes=gateway_classes,
                                 namespaces=namespaces, controller_name=controller_name)
    now = now or now_rfc3339()
    gen = _generation(route)
    current = _maps(_map(route.get("status")).get("parents"))
    out = [dict(p) for p in current if p.get("controllerName") != controller_name]
    refs = [e for e in translation.errors if isinstance(e, RefError)]
    spec_errors = [e for e in translation.errors if not isinstance(e, RefError)]
    has_routes = bool(translation.of_kind("routes"))

    for p in parents:
        prev = next((_maps(c.get("conditions")) for c in current if c.get("controllerName") == controller_name
                     and _same_parent(_map(c.get("parentRef")), p.parent_ref)), [])

        def cond(type_: str, ok: bool, reason: str, message: str, prev: Sequence[Obj] = prev) -> dict[str, Any]:
            return _condition(type_, ok, reason, message, generation=gen, previous=prev, now=now)

        if p.accepted and spec_errors and not has_routes:
            accepted = cond("Accepted", False, "UnsupportedValue", _messages(spec_errors))
        else:
            accepted = cond("Accepted", p.accepted, p.reason, p.message)
        conditions = [accepted,
                      cond("ResolvedRefs", False, refs[0].reason, _messages(refs)) if refs else
                      cond("ResolvedRefs", True, "ResolvedRefs", "all references are resolved")]
        if spec_errors and (has_routes or not p.accepted):
            conditions.append(cond("PartiallyInvalid", True, "UnsupportedValue", _messages(spec_errors)))
        out.append({"parentRef": p.parent_ref, "controllerName": controller_name, "conditions": conditions})
    return {**_map(route.get("status")), "parents": out}


def _messages(errors: Sequence[TranslateError]) -> str:
    return "; ".join(f"{e.pointer}: {e.message}" if e.pointer else e.message for e in errors)


def _same_parent(a: Obj, b: Obj) -> bool:
    keys = ("group", "kind", "namespace", "name", "sectionName", "port")
    defaults = {"group": GROUP, "kind": "Gateway"}
    return all((a.get(k) or defaults.get(k)) == (b.get(k) or defaults.get(k)) for k in keys)
