"""The ADS conversation as a sans-IO state machine (no asyncio, no grpc).

Theory of operation
-------------------
One ``AdsSession`` is one ADS stream (State-of-the-World or Delta).  The I/O shell
(``client.py``) sends what ``start()`` returns, then feeds every response to
``on_response()`` and sends what it returns, in order.  Nothing here blocks or reads a clock.

Per resource type the session keeps a *watch* (in ``AdsState``, which outlives the stream so
that a reconnect resumes instead of starting over): whether it is subscribed, wildcard or
the subscribed names, the last accepted version and the names (and, for Delta, the per-resource
versions) currently applied.  The nonce of the last response of each type belongs to the
stream and is forgotten on reconnect.

Order, as Envoy does it (reference istio-xds.md 1.5):

1. ``start()``: CDS wildcard, with the Node (the Node rides on the first request only).
2. CDS response → decode every resource, hand the set to ``applier.apply`` (which validates and
   applies atomically or raises ``XdsRejected``), then ask ``applier.wanted(EDS)`` and send the
   EDS (un)subscription *before* the CDS ACK (clusters are warmed by their EDS).
3. LDS wildcard once the clusters of the first CDS response are warm (their
   ClusterLoadAssignments arrived, or EDS was NACKed): Envoy's server init waits for cluster
   warming before it starts LDS, and sends the LDS request before the ACK of the response that
   completed the warming (before the CDS ACK when no cluster needs EDS).  ``flush_warming()``
   lets the driver give up waiting after a timeout (Envoy's ``initial_fetch_timeout``).
4. LDS response → RDS (un)subscription for ``applier.wanted(RDS)`` before the LDS ACK.

Observed from Envoy 1.40 (SotW and Delta alike) for one EDS cluster and one RDS listener:
CDS, EDS(names), CDS-ACK, LDS, EDS-ACK, RDS(names), LDS-ACK, RDS-ACK.

ACK (SotW): same ``type_url``, ``version_info`` = the received version, ``response_nonce`` =
the received nonce, ``resource_names`` = the *subscribed* names (empty for a wildcard type: a
wildcard subscription is never narrowed by echoing the names received, Amesh's bug).
NACK: the same with ``error_detail`` (google.rpc.Status, code 3 INVALID_ARGUMENT) and the
*previous* good ``version_info``; nothing of the response is applied (one bad resource
rejects the whole response, as Envoy does).

SotW semantics: for wildcard types (CDS, LDS) a response is the complete set, so applied names
absent from it are removed; for named types (EDS, RDS) a response updates only the resources
it carries (istiod's incremental EDS pushes carry only the changed clusters) and resources
leave when their name is unsubscribed.  Delta: ``resources`` carry per-resource versions,
``removed_resources`` removals; the reconnect request carries ``initial_resource_versions``.

Responses of unknown types (istio-agent's NDS/PCDS, debug types) or of types not subscribed
are ignored and counted, never NACKed: they must not break the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from google.protobuf.message import DecodeError, Message

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from ..errors import MeshgateError

__all__ = [
    "CDS",
    "EDS",
    "LDS",
    "RDS",
    "TYPE_ORDER",
    "WILDCARD_TYPES",
    "SHORT_NAMES",
    "INVALID_ARGUMENT",
    "Request",
    "Response",
    "XdsRejected",
    "Applier",
    "TypeStats",
    "AdsStats",
    "AdsState",
    "AdsSession",
    "resource_name",
    "decode_resource",
]

log = logging.getLogger("meshgate.xds.ads")

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#: Envoy's subscription order and istiod's push order (make-before-break).
TYPE_ORDER: tuple[str, ...] = (CDS, EDS, LDS, RDS)
#: Types subscribed as wildcard (all resources); the others are subscribed by name.
WILDCARD_TYPES = frozenset({CDS, LDS})
SHORT_NAMES = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}
#: google.rpc.Code INVALID_ARGUMENT: what Envoy puts in a NACK's error_detail.
INVALID_ARGUMENT = 3

_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
_MESSAGE_CLASSES: dict[str, Any] = {
    CDS: cluster_pb2.Cluster,
    EDS: endpoint_pb2.ClusterLoadAssignment,
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
}

#: A DiscoveryRequest or DeltaDiscoveryRequest (generated protobuf classes carry no types).
Request = Message
#: A DiscoveryResponse or DeltaDiscoveryResponse.
Response = Message


class XdsRejected(MeshgateError):
    """Raised by an applier (or the decoder) to NACK a response; ``detail`` goes to istiod."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Applier(Protocol):
    """The translation side: owns the applied configuration."""

    def apply(self, type_url: str, updated: Mapping[str, Message], removed: Collection[str]) -> None:
        """Validate and apply atomically, or raise ``XdsRejected(detail)`` and change nothing."""

    def wanted(self, type_url: str) -> set[str]:
        """Names to subscribe for a named type: EDS from the applied clusters, RDS from the
        applied listeners."""


# --- typed views of the generated messages we read ------------------------------------------


class _AnyPb(Protocol):
    type_url: str
    value: bytes


class _SotwResponse(Protocol):
    version_info: str
    type_url: str
    nonce: str

    @property
    def resources(self) -> Sequence[_AnyPb]: ...


class _DeltaResource(Protocol):
    name: str
    version: str

    @property
    def resource(self) -> _AnyPb: ...

    def HasField(self, name: str) -> bool: ...


class _DeltaResponse(Protocol):
    system_version_info: str
    type_url: str
    nonce: str

    @property
    def resources(self) -> Sequence[_DeltaResource]: ...

    @property
    def removed_resources(self) -> Sequence[str]: ...


def resource_name(type_url: str, msg: Message) -> str:
    """The xDS name of a resource: ``cluster_name`` for a ClusterLoadAssignment, else ``name``."""
    m: Any = msg
    return str(m.cluster_name if type_url == EDS else m.name)


def decode_resource(type_url: str, packed: _AnyPb) -> Message:
    """Unpack one ``Any`` of a response of ``type_url``; ``XdsRejected`` if it is not one."""
    if packed.type_url == _RESOURCE_WRAPPER:  # SotW resources may come wrapped (TTL, heartbeats)
        wrapper: Any = discovery_pb2.Resource()
        try:
            wrapper.ParseFromString(packed.value)
        except DecodeError as e:
            raise XdsRejected(f"undecodable {_RESOURCE_WRAPPER}: {e}") from None
        packed = wrapper.resource
    if packed.type_url != type_url:
        raise XdsRejected(f"resource of type {packed.type_url or '(none)'} in a {type_url} response")
    msg: Message = _MESSAGE_CLASSES[type_url]()
    try:
        msg.ParseFromString(packed.value)
    except DecodeError as e:
        raise XdsRejected(f"undecodable {type_url} resource: {e}") from None
    return msg


# --- state --------------------------------------------------------------------------------------


@dataclass(slots=True)
class TypeStats:
    """Counters of one resource type, for the status page (cf. istiod's /debug/syncz)."""

    responses: int = 0
    acks: int = 0
    nacks: int = 0
    last_nack: str = ""          # detail of the last NACK sent
    version: str = ""            # last accepted version (SotW version_info / Delta system_version_info)
    nonce: str = ""              # nonce of the last response received
    acked_nonce: str = ""        # nonce of the last response ACKed
    resources: int = 0           # resources currently applied
    ignored_resources: int = 0   # resources received for names not subscribed

    def as_dict(self) -> dict[str, Any]:
        return {
            "responses": self.responses, "acks": self.acks, "nacks": self.nacks,
            "last_nack": self.last_nack, "version": self.version, "nonce": self.nonce,
            "acked_nonce": self.acked_nonce, "resources": self.resources,
            "ignored_resources": self.ignored_resources,
        }


@dataclass(slots=True)
class AdsStats:
    types: dict[str, TypeStats] = field(default_factory=lambda: {t: TypeStats() for t in TYPE_ORDER})
    ignored_types: dict[str, int] = field(default_factory=dict)   # responses of unknown / unsubscribed types
    last_nack: str = ""                                           # "<TYPE>: detail" of the last NACK

    def as_dict(self) -> dict[str, Any]:
        return {
            "types": {SHORT_NAMES[t]: s.as_dict() for t, s in self.types.items()},
            "ignored_types": dict(self.ignored_types),
            "last_nack": self.last_nack,
        }


@dataclass(slots=True)
class _Watch:
    type_url: str
    wildcard: bool
    subscribed: bool = False
    opened: bool = False                                      # a request of this type was ever sent
    names: set[str] = field(default_factory=set)            # subscribed names (named types)
    version: str = ""                                         # last accepted version
    resources: dict[str, str] = field(default_factory=dict)   # applied name -> resource version


class AdsState:
    """What survives a reconnect: the watches and the stats.  One per applier; hand it to the
    next ``AdsSession`` so that it resubscribes with the known names and versions."""

    __slots__ = ("watches", "stats", "cds_applied", "lds_applied")

    def __init__(self) -> None:
        self.watches: dict[str, _Watch] = {t: _Watch(t, t in WILDCARD_TYPES) for t in TYPE_ORDER}
        self.stats = AdsStats()
        self.cds_applied = False
        self.lds_applied = False

    @property
    def ready(self) -> bool:
        return self.cds_applied and self.lds_applied

    def subscriptions(self) -> dict[str, list[str] | None]:
        """Subscribed types: ``None`` for wildcard, else the sorted names."""
        out: dict[str, list[str] | None] = {}
        for t, w in self.watches.items():
            if w.subscribed:
                out[t] = None if w.wildcard else sorted(w.names)
        return out


# --- the session ---------------------------------------------------------------------------------


class AdsSession:
    """One ADS stream.  ``start()`` once, then ``on_response()`` per response received."""

    def __init__(self, node: Message, applier: Applier, *, delta: bool, state: AdsState | None = None) -> None:
        self.node = node
        self.applier = applier
        self.delta = delta
        self.state = state if state is not None else AdsState()
        self._node_sent = False
        self._nonces: dict[str, str] = {}   # last nonce received per type, on this stream
        self._cds_seen = False              # a CDS response arrived on this stream
        self._warming: set[str] | None = None   # EDS names LDS waits for (None: not waiting)

    # -- public surface --

    @property
    def ready(self) -> bool:
        """The first CDS and LDS responses were applied (what :15021/healthz/ready reports)."""
        return self.state.ready

    @property
    def stats(self) -> AdsStats:
        return self.state.stats

    @property
    def lds_pending(self) -> bool:
        """LDS waits for the warming of the first clusters (see ``flush_warming``)."""
        return self._warming is not None

    def start(self) -> list[Request]:
        """The first requests of a (re)connected stream: CDS wildcard, and on a reconnect every
        known subscription with its last accepted version(s)."""
        cds = self.state.watches[CDS]
        cds.subscribed = True
        out: list[Request] = []
        for t in TYPE_ORDER:
            w = self.state.watches[t]
            # SotW: like Envoy, a named type whose names all went away is still re-requested
            # (empty names: istiod reads it as "no subscription" and stays silent).
            if not (w.subscribed or (w.opened and not self.delta)):
                continue
            out.append(self._delta_initial(w) if self.delta else self._sotw(w, version=w.version, nonce=""))
        return out

    def on_response(self, resp: Response) -> list[Request]:
        """Requests to send for one response, in Envoy's order: the (un)subscriptions its
        processing causes, then its ACK or NACK."""
        if self.delta:
            if not isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
                raise TypeError(f"a Delta session got {type(resp).__name__}")
            return self._on_delta(cast(_DeltaResponse, resp))
        if not isinstance(resp, discovery_pb2.DiscoveryResponse):
            raise TypeError(f"a SotW session got {type(resp).__name__}")
        return self._on_sotw(cast(_SotwResponse, resp))

    def flush_warming(self) -> list[Request]:
        """Stop waiting for the first clusters' endpoints and subscribe LDS now (the driver calls
        this after its initial-fetch timeout)."""
        if self._warming is None:
            return []
        self._warming = None
        return self._start_lds()

    # -- SotW --

    def _received(self, t: str, nonce: str) -> _Watch | None:
        """The watch a response of type ``t`` is for (None: not subscribed), counted."""
        w = self._watch_for(t)
        if w is None:
            return None
        ts = self.stats.types[t]
        ts.responses += 1
        ts.nonce = nonce
        self._nonces[t] = nonce
        return w

    def _on_sotw(self, resp: _SotwResponse) -> list[Request]:
        t = resp.type_url
        w = self._received(t, resp.nonce)
        if w is None:
            return []
        try:
            decoded = self._decode_all(t, [(None, a) for a in resp.resources])
            if w.wildcard:
                updated = decoded
                removed: set[str] = set(w.resources) - decoded.keys()
            else:
                updated = self._only_subscribed(w, decoded)
                removed = set()
            self._apply(t, updated, removed)
        except XdsRejected as e:
            return self._after(t, accepted=False, reply=self._nack(w, resp.nonce, e.detail))
        w.version = resp.version_info
        for n in removed:
            w.resources.pop(n, None)
        for n in updated:
            w.resources[n] = resp.version_info
        self._accepted(t, w, resp.version_info, resp.nonce)
        ack = self._sotw(w, version=resp.version_info, nonce=resp.nonce)
        return self._after(t, accepted=True, reply=ack, present=updated.keys())

    def _sotw(self, w: _Watch, *, version: str, nonce: str, error: str | None = None) -> Request:
        w.opened = True
        req: Any = discovery_pb2.DiscoveryRequest(
            version_info=version,
            type_url=w.type_url,
            response_nonce=nonce,
            resource_names=[] if w.wildcard else sorted(w.names),
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return self._with_node(req)

    # -- Delta --

    def _on_delta(self, resp: _DeltaResponse) -> list[Request]:
        t = resp.type_url
        w = self._received(t, resp.nonce)
        if w is None:
            return []
        try:
            # Name-only entries (TTL heartbeats) change nothing.
            carried = [r for r in resp.resources if r.HasField("resource")]
            decoded = self._decode_all(t, [(r.name or None, r.resource) for r in carried])
            versions = dict(zip(decoded.keys(), (r.version for r in carried)))
            updated = decoded if w.wildcard else self._only_subscribed(w, decoded)
            both = updated.keys() & set(resp.removed_resources)
            if both:
                raise XdsRejected(f"{', '.join(sorted(both))}: both updated and removed")
            removed = set(resp.removed_resources) & set(w.resources)
            self._apply(t, updated, removed)
        except XdsRejected as e:
            return self._after(t, accepted=False, reply=self._nack(w, resp.nonce, e.detail))
        w.version = resp.system_version_info
        for n in removed:
            w.resources.pop(n, None)
        for n in updated:
            w.resources[n] = versions.get(n, "")
        self._accepted(t, w, resp.system_version_info, resp.nonce)
        ack = self._delta_req(w.type_url, nonce=resp.nonce)
        return self._after(t, accepted=True, reply=ack, present=updated.keys())

    def _delta_initial(self, w: _Watch) -> Request:
        if w.wildcard:
            # Wildcard = no names (Envoy 1.40 sends none on a reconnect either, only the
            # initial_resource_versions of what it holds).
            names = []
            known = dict(w.resources)
        else:
            names = sorted(w.names)
            known = {n: v for n, v in w.resources.items() if n in w.names}
        return self._delta_req(w.type_url, subscribe=names, initial=known)

    def _delta_req(
        self,
        type_url: str,
        *,
        nonce: str = "",
        subscribe: Collection[str] = (),
        unsubscribe: Collection[str] = (),
        initial: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> Request:
        req: Any = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            response_nonce=nonce,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
        )
        if initial:
            req.initial_resource_versions.update(initial)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return self._with_node(req)

    # -- shared --

    def _watch_for(self, t: str) -> _Watch | None:
        w = self.state.watches.get(t)
        if w is None or not w.subscribed:
            # NDS/PCDS/debug types, or a late response after an unsubscribe: ignore, count.
            self.stats.ignored_types[t] = self.stats.ignored_types.get(t, 0) + 1
            return None
        return w

    def _decode_all(self, t: str, items: Sequence[tuple[str | None, _AnyPb]]) -> dict[str, Message]:
        out: dict[str, Message] = {}
        for i, (declared, packed) in enumerate(items):
            msg = decode_resource(t, packed)
            name = resource_name(t, msg)
            if not name:
                raise XdsRejected(f"{SHORT_NAMES[t]} resource {i} has no name")
            if declared is not None and declared != name:
                raise XdsRejected(f"{SHORT_NAMES[t]} resource {declared!r} carries {name!r}")
            if name in out:
                raise XdsRejected(f"duplicate {SHORT_NAMES[t]} resource {name!r}")
            out[name] = msg
        return out

    def _only_subscribed(self, w: _Watch, decoded: dict[str, Message]) -> dict[str, Message]:
        kept = {n: m for n, m in decoded.items() if n in w.names}
        self.stats.types[w.type_url].ignored_resources += len(decoded) - len(kept)
        return kept

    def _apply(self, t: str, updated: Mapping[str, Message], removed: Collection[str]) -> None:
        try:
            self.applier.apply(t, updated, removed)
        except XdsRejected:
            raise
        except Exception as e:  # an applier bug must not kill the stream: NACK, keep last good
            log.exception("applying %s failed", SHORT_NAMES[t])
            raise XdsRejected(f"internal error applying {SHORT_NAMES[t]}: {e!r}") from None

    def _accepted(self, t: str, w: _Watch, version: str, nonce: str) -> None:
        ts = self.stats.types[t]
        ts.acks += 1
        ts.version = version
        ts.acked_nonce = nonce
        ts.resources = len(w.resources)
        if t == CDS:
            self.state.cds_applied = True
        elif t == LDS:
            self.state.lds_applied = True

    def _nack(self, w: _Watch, nonce: str, detail: str) -> Request:
        t = w.type_url
        ts = self.stats.types[t]
        ts.nacks += 1
        ts.last_nack = detail
        self.stats.last_nack = f"{SHORT_NAMES[t]}: {detail}"
        log.warning("NACK %s nonce=%s: %s", SHORT_NAMES[t], nonce, detail)
        if self.delta:
            return self._delta_req(t, nonce=nonce, error=detail)
        return self._sotw(w, version=w.version, nonce=nonce, error=detail)

    def _after(self, t: str, *, accepted: bool, reply: Request, present: Collection[str] = ()) -> list[Request]:
        """Envoy's order: what processing a response subscribes (EDS after clusters, LDS once the
        first clusters are warm, RDS after listeners) goes out before its ACK/NACK."""
        out: list[Request] = []
        if t == CDS:
            if accepted:
                out += self._resubscribe(EDS)
            if not self._cds_seen:
                self._cds_seen = True
                if not self.state.watches[LDS].subscribed:
                    eds = self.state.watches[EDS]
                    self._warming = eds.names - eds.resources.keys()
            if self._warming is not None:
                self._warming &= self.state.watches[EDS].names
                out += self._maybe_start_lds()
        elif t == LDS:
            if accepted:
                out += self._resubscribe(RDS)
        elif t == EDS and self._warming is not None:
            # A rejected EDS still ends the warming (Envoy: a NACKed update completes init).
            self._warming = self._warming - set(present) if accepted else set()
            out += self._maybe_start_lds()
        out.append(reply)
        return out

    def _maybe_start_lds(self) -> list[Request]:
        if self._warming:
            return []
        self._warming = None
        return self._start_lds()

    def _start_lds(self) -> list[Request]:
        w = self.state.watches[LDS]
        if w.subscribed:
            return []
        w.subscribed = True
        if self.delta:
            return [self._delta_req(LDS)]
        return [self._sotw(w, version=w.version, nonce="")]

    def _resubscribe(self, t: str) -> list[Request]:
        """Align the subscription of named type ``t`` with ``applier.wanted(t)``."""
        w = self.state.watches[t]
        want = set(self.applier.wanted(t))
        if want == w.names:
            return []
        added, dropped = want - w.names, w.names - want
        gone = dropped & w.resources.keys()
        if gone:
            # Resources leave with their subscription (SotW named types and Delta alike).
            try:
                self.applier.apply(t, {}, gone)
            except Exception:  # removal is not expected to fail; keep the stream going
                log.exception("removing unsubscribed %s %s failed", SHORT_NAMES[t], sorted(gone))
            for n in gone:
                del w.resources[n]
            self.stats.types[t].resources = len(w.resources)
        was_subscribed = w.subscribed
        w.names = want
        w.subscribed = bool(want)
        if not was_subscribed and not want:
            return []
        if self.delta:
            return [self._delta_req(t, subscribe=sorted(added), unsubscribe=sorted(dropped))]
        # SotW: the full name list; empty = unsubscribe (istiod).  Carry the last nonce of the
        # type so that istiod treats it as a change of names, not a stale request.
        return [self._sotw(w, version=w.version, nonce=self._nonces.get(t, ""))]

    def _with_node(self, req: Any) -> Request:
        if not self._node_sent:
            req.node.CopyFrom(self.node)
            self._node_sent = True
        out: Request = req
        return out

