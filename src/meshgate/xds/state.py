"""The accepted xDS resources and their translation: the applier of the ADS session.

Theory of operation
-------------------
The ADS session (:mod:`.ads`) hands over each response's resources by type.  Here they
are translated (pure, :mod:`.translate`) *all first*: one resource that does not
translate rejects the whole response (``XdsRejected`` → NACK with the resource's name,
pointer and reason) and nothing changes, as Envoy applies a response atomically.  Once
all translate, they replace the previous ones and the result is handed to ``on_change``
as changes of the one model:

* a Cluster together with its ClusterLoadAssignment (by ``eds_service_name``, or the
  inline load assignment of STATIC / DNS clusters) → ``upstreams/<cluster name>``, an
  APISIX upstream conf (nodes, balancer, timeouts) plus its ``xds`` facts;
* a Listener → ``listeners/<name>``; a RouteConfiguration → ``route_configs/<name>``.

A listener whose HTTP connection managers name route configurations not received yet is
*warming*, as in Envoy: it is accepted (ACKed, its RDS names subscribed) but not handed to
the workers until every one of them arrived, so that it never answers from an empty route
table.  Meanwhile the workers keep running the listener's previous version, or nothing for a
new one.  The RDS config source's ``initial_fetch_timeout`` bounds the wait (Envoy's default
15 s when unset; istiod sets 0 s, wait for ever); when it expires the listener goes live with
what it has.  The proxy is not ready (``initializing``) until the listeners of its first LDS
response are warm, as Envoy's server is not LIVE before its initial listeners warmed.

Only what changed is emitted: an EDS push for one cluster is one upstream put.  The
messages as received are kept for ``config_dump`` (Envoy's admin shape).  The names the
session must subscribe to come from here too: EDS for every EDS cluster's service name,
RDS for every RDS name the listeners' HTTP connection managers use.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from google.protobuf.message import Message

from ..errors import ConfigError
from .ads import CDS, EDS, LDS, RDS, XdsRejected
from .translate.cluster import translate_cluster
from .translate.endpoint import translate_cla
from .translate.listener import RDS_FETCH_TIMEOUT, translate_listener
from .translate.route import translate_route_config
from .translate.upstream import upstream_conf

__all__ = ["MeshState", "Accepted", "ModelChange"]

# (kind, id, value or None for a removal): what the one model receives
ModelChange = tuple[str, str, Mapping[str, Any] | None]


@dataclass(slots=True)
class Accepted:
    """One accepted resource: its bytes as received, its translation, when.

    The bytes, not the decoded message, are kept: a decoded protobuf costs several times its
    wire size, and only ``config_dump`` (rarely) and the next push's "unchanged?" check (by
    bytes) need it."""

    raw: bytes
    kind: type[Message]
    value: Any
    version: str = ""
    updated: float = field(default_factory=time.time)

    @property
    def message(self) -> Message:
        msg = self.kind()
        msg.ParseFromString(self.raw)
        return msg


class MeshState:
    """Applier of an ADS session: translate, keep, emit model changes."""

    def __init__(self, on_change: Callable[[list[ModelChange]], None] | None = None) -> None:
        self.on_change = on_change
        # warming listener name → the value the workers run meanwhile (None: a new listener)
        self.warming: dict[str, Mapping[str, Any] | None] = {}
        self.initializing = True    # the first LDS response's listeners are not warm yet
        self._lds_seen = False
        self._warm_timers: dict[str, asyncio.TimerHandle] = {}
        self.clusters: dict[str, Accepted] = {}
        self.endpoints: dict[str, Accepted] = {}
        self.listeners: dict[str, Accepted] = {}
        self.routes: dict[str, Accepted] = {}
        self.versions: dict[str, str] = {}     # type → version_info of the last accepted response
        self.applied = 0                       # responses applied (all types)
        self._by_type: dict[str, dict[str, Accepted]] = {
            CDS: self.clusters, EDS: self.endpoints, LDS: self.listeners, RDS: self.routes}

    # -- Applier -------------------------------------------------------------------------
    def wanted(self, type_url: str) -> set[str]:
        if type_url == EDS:
            return {a.value["xds"]["eds_service_name"] for a in self.clusters.values()
                    if a.value["xds"].get("type") == "EDS"}
        if type_url == RDS:
            return {rds for a in self.listeners.values() for rds, _ in _rds_of(a.value)}
        return set()

    def apply(self, type_url: str, updated: Mapping[str, Any], removed: Collection[str],
              version: str = "") -> None:
        table = self._by_type.get(type_url)
        if table is None:
            return
        translate = _TRANSLATORS[type_url]
        fresh: dict[str, Accepted] = {}
        errors = []
        for name, msg in updated.items():
            raw = msg.SerializeToString(deterministic=True)
            old = table.get(name)
            if old is not None and old.raw == raw:
                # a SotW push resends every resource: the unchanged ones cost a comparison,
                # not a translation (and emit no change)
                continue
            try:
                fresh[name] = Accepted(raw, type(msg), translate(msg), version)
            except ConfigError as e:
                errors.append(f"{_TYPE_NAMES[type_url]} {name!r}: {e.pointer or '/'}: {e.message}")
            except Exception as e:   # a translator bug must NACK, never kill the stream
                errors.append(f"{_TYPE_NAMES[type_url]} {name!r}: cannot translate: {e!r}")
        if errors:
            if type_url == RDS:
                # Envoy: a rejected update ends the initial fetch of its tables all the same
                self.flush_warming([n for n in self.warming
                                    if {r for r, _ in _rds_of(self.listeners[n].value)} & set(updated)])
            raise XdsRejected("; ".join(errors[:10]) + (f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""))
        changes: list[ModelChange] = []
        gone = [n for n in removed if n in table]
        prior = {n: self._running(n) for n in fresh} if type_url == LDS else {}
        for n in gone:
            del table[n]
        table.update(fresh)
        if version:
            self.versions[type_url] = version
        self.applied += 1
        if type_url in (CDS, EDS):
            if type_url == CDS:
                names = set(fresh) | set(gone)
            else:
                touched = set(fresh) | set(gone)
                names = {cn for cn, a in self.clusters.items() if a.value["xds"].get("eds_service_name") in touched}
            for cn in sorted(names):
                a = self.clusters.get(cn)
                if a is None:
                    changes.append(("upstreams", cn, None))
                else:
                    changes.append(("upstreams", cn, self._upstream(a.value)))
        elif type_url == LDS:
            for n in gone:
                self._end_warming(n)
                changes.append(("listeners", n, None))
            for n, a in fresh.items():
                if self._missing_routes(a.value):
                    self._start_warming(n, prior[n], a.value)
                else:
                    self._end_warming(n)
                    changes.append(("listeners", n, a.value))
            self._lds_seen = True
        else:
            for n in gone:
                changes.append(("route_configs", n, None))
            for n, a in fresh.items():
                changes.append(("route_configs", n, a.value))
            changes += self._go_live([n for n in self.warming if not self._missing_routes(self.listeners[n].value)])
        self._emit(changes)

    def _emit(self, changes: list[ModelChange]) -> None:
        if self._lds_seen and not self.warming:
            self.initializing = False
        if changes and self.on_change is not None:
            self.on_change(changes)

    # -- listener warming ----------------------------------------------------------------
    def _running(self, name: str) -> Mapping[str, Any] | None:
        """The version of listener ``name`` the workers run (None: none)."""
        if name in self.warming:
            return self.warming[name]
        a = self.listeners.get(name)
        return a.value if a is not None else None

    def _missing_routes(self, listener: Mapping[str, Any]) -> set[str]:
        return {rds for rds, _ in _rds_of(listener) if rds not in self.routes}

    def _start_warming(self, name: str, running: Mapping[str, Any] | None, listener: Mapping[str, Any]) -> None:
        self.warming[name] = running
        old = self._warm_timers.pop(name, None)
        if old is not None:
            old.cancel()
        waits = [t for _, t in _rds_of(listener)]
        timeout = None if None in waits else max((t for t in waits if t is not None), default=None)
        if timeout is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # applied outside an event loop (tools, unit tests): no timer
            return
        self._warm_timers[name] = loop.call_later(timeout, self._warming_expired, name)

    def _end_warming(self, name: str) -> None:
        self.warming.pop(name, None)
        t = self._warm_timers.pop(name, None)
        if t is not None:
            t.cancel()

    def _warming_expired(self, name: str) -> None:
        """The initial fetch timeout of a warming listener: it goes live with the route
        configurations it has (a missing one serves as an empty table)."""
        self._warm_timers.pop(name, None)
        if name not in self.warming:
            return
        self.flush_warming([name])

    def _go_live(self, names: Collection[str]) -> list[ModelChange]:
        """End the warming of listeners ``names``: their current versions, as changes."""
        out: list[ModelChange] = []
        for n in list(names):
            if n in self.warming:
                self._end_warming(n)
                out.append(("listeners", n, self.listeners[n].value))
        return out

    def flush_warming(self, names: Collection[str] | None = None) -> None:
        """Hand warming listeners (all by default) to the workers as they are."""
        self._emit(self._go_live(self.warming if names is None else names))

    def _upstream(self, cluster: Mapping[str, Any]) -> Mapping[str, Any]:
        x = cluster["xds"]
        nodes: list[dict[str, Any]] | None
        if x.get("type") == "EDS":
            cla = self.endpoints.get(x.get("eds_service_name", ""))
            nodes = cla.value if cla is not None else None
        else:
            nodes = list(cluster.get("nodes") or [])
        return upstream_conf(dict(cluster), nodes)

    # -- views ---------------------------------------------------------------------------
    def model(self) -> list[ModelChange]:
        """Everything accepted, as model puts (a full re-sync)."""
        out: list[ModelChange] = [("upstreams", n, conf) for n, conf in self.upstream_confs()]
        for n, a in self.listeners.items():
            value = self.warming[n] if n in self.warming else a.value
            if value is not None:
                out.append(("listeners", n, value))
        out += [("route_configs", n, a.value) for n, a in self.routes.items()]
        return out

    def upstream_confs(self) -> list[tuple[str, Mapping[str, Any]]]:
        """Each cluster's upstream conf (its endpoints attached), by cluster name."""
        return [(n, self._upstream(a.value)) for n, a in self.clusters.items()]

    def counts(self) -> dict[str, int]:
        return {"clusters": len(self.clusters), "endpoints": len(self.endpoints),
                "listeners": len(self.listeners), "routes": len(self.routes)}


def _rds_of(listener: Mapping[str, Any]) -> list[tuple[str, float | None]]:
    """(route config name, initial fetch timeout in seconds or None for no limit) of each RDS
    HTTP connection manager of a translated listener."""
    out = []
    for ch in (*listener["chains"], listener["default_chain"]):
        if ch is not None and ch["http"] is not None and ch["http"]["rds"]:
            out.append((ch["http"]["rds"], ch["http"].get("rds_timeout", RDS_FETCH_TIMEOUT)))
    return out


_TRANSLATORS: dict[str, Callable[[Any], Any]] = {
    CDS: translate_cluster, EDS: translate_cla, LDS: translate_listener, RDS: translate_route_config,
}
_TYPE_NAMES = {CDS: "Cluster", EDS: "ClusterLoadAssignment", LDS: "Listener", RDS: "RouteConfiguration"}
