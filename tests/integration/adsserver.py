"""A real gRPC ADS server for tests (grpc.aio), behaving like istiod's xDS server.

Test utility, not product code.  It serves ``AggregatedDiscoveryService`` (SotW and Delta) on a
free loopback port from resource sets the test controls, records every request, and answers
the way istiod does (reference istio-xds.md 1.6 / 1.7), so one instance can drive Meshgate's
``XdsClient`` and a real Envoy alike::

    srv = AdsServer()
    await srv.start()                       # srv.address == "127.0.0.1:<port>"
    srv.set(CDS, {"a": cluster_a})          # replace the CDS set (nothing sent yet)
    v = srv.push()                          # new version, pushed to every connected stream
    await srv.wait_acked(CDS, v)            # some stream ACKed CDS version v
    srv.nacks()                             # recorded NACKs (with error_detail)
    await srv.stop(); await srv.start(port=srv.port)   # a "restarted istiod" on the same port

SotW behaviour (istiod's ``ShouldRespond``):

* version_info = the push version (the same for every type in a push); nonce = version + uuid;
* the Node must be on the first request of a stream (else INVALID_ARGUMENT, like istiod);
* a request with an empty nonce, or for a type without a watch, gets a full response;
* a request with ``error_detail`` is a NACK: recorded, never answered (no resend);
* a nonce other than the last one sent for the type is stale: recorded, ignored;
* a matching nonce with unchanged names is an ACK (no response); changed names on a wildcard type
  (CDS, LDS) → full response, on a named type (EDS, RDS) → a response with only the added
  names; empty names on a named type = unsubscribe;
* named types answer only the requested names that exist; ``push(EDS, names=...)`` is istiod's
  incremental EDS push ("PUSH INC", only the changed ClusterLoadAssignments).

Delta behaviour (istiod's ``delta.go``): empty or ``*`` subscription on CDS/LDS = wildcard;
``initial_resource_versions`` are honoured (unchanged resources are not resent, resources the
client knows that no longer exist come back in ``removed_resources``); per-resource versions are
content hashes; pushes send only what changed for that stream plus removals, and what the
client NACKed (not resent at once, but on the next push of its type).

``refuse`` (a string) makes new streams fail ``UNAVAILABLE`` with that text, as istiod does
before its caches sync ("server is not ready to serve discovery information").
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
PUSH_ORDER = (CDS, EDS, LDS, RDS)
WILDCARD = {CDS, LDS}
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}

__all__ = ["AdsServer", "Record", "Sent", "CDS", "EDS", "LDS", "RDS", "short"]


def short(type_url: str) -> str:
    return SHORT.get(type_url, type_url.rsplit(".", 1)[-1])


def _rversion(msg: Any) -> str:
    return hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Record:
    """One request received.  ``kind``: initial | ack | nack | stale | subscribe (names changed)."""

    stream: int
    delta: bool
    type_url: str
    version: str                       # SotW version_info ("" for Delta)
    nonce: str
    names: tuple[str, ...]             # SotW resource_names / Delta resource_names_subscribe
    unsubscribe: tuple[str, ...]       # Delta resource_names_unsubscribe
    initial: Mapping[str, str]         # Delta initial_resource_versions
    error: str | None                  # error_detail.message of a NACK
    error_code: int | None
    kind: str
    node_id: str | None                # set when the request carried a Node
    at: float = field(default_factory=time.monotonic)

    @property
    def short(self) -> str:
        return short(self.type_url)


@dataclass(frozen=True, slots=True)
class Sent:
    """One response sent."""

    stream: int
    type_url: str
    version: str
    nonce: str
    names: tuple[str, ...]
    removed: tuple[str, ...] = ()


@dataclass(slots=True)
class _Watch:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    nonce: str = ""                                         # last nonce sent
    acked: str = ""                                         # last version ACKed (SotW)
    known: dict[str, str] = field(default_factory=dict)     # Delta: what the client holds
    last_sent: tuple[str, ...] = ()                          # Delta: names of the last response


class _Stream:
    def __init__(self, sid: int, delta: bool) -> None:
        self.id = sid
        self.delta = delta
        self.watches: dict[str, _Watch] = {}
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.node_id: str | None = None
        self.first = True


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """See the module docstring."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {t: {} for t in PUSH_ORDER}
        self.version = "0"
        self._count = 0
        self.records: list[Record] = []
        self.sent: list[Sent] = []
        self.refuse: str | None = None
        self.port = 0
        self.streams_opened = 0
        self.stream_open_times: list[float] = []
        self._streams: dict[int, _Stream] = {}
        self._server: Any = None
        self._changed = asyncio.Event()

    # -- lifecycle --

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0, *, unix: str | None = None) -> None:
        """Listen on 127.0.0.1:``port`` (0 = a free one; the port of a restart otherwise), and
        also on the unix socket ``unix`` when given (reachable from other network namespaces)."""
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        if not self.port:
            raise OSError(f"cannot bind 127.0.0.1:{port}")
        if unix is not None:
            self._server.add_insecure_port(f"unix:{unix}")
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving, like a killed istiod: open streams are cancelled, not ended cleanly."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self._streams.clear()

    def close_streams(self) -> None:
        """End every open stream (istiod's max connection age): clients must reconnect."""
        for s in list(self._streams.values()):
            s.queue.put_nowait(None)

    @property
    def connected(self) -> int:
        return len(self._streams)

    # -- resources --

    def set(self, type_url: str, resources: Mapping[str, Any], *, replace: bool = True) -> None:
        """Set the resources of a type (replacing the set, or merging with ``replace=False``).
        Nothing is sent until ``push()``."""
        if replace:
            self.resources[type_url] = dict(resources)
        else:
            self.resources[type_url].update(resources)

    def remove(self, type_url: str, *names: str) -> None:
        for n in names:
            self.resources[type_url].pop(n, None)

    def push(self, *types: str, names: Collection[str] | None = None) -> str:
        """A new push version sent to every stream for ``types`` (default all) in istiod's
        order.  ``names`` restricts a named-type push to those resources (incremental EDS)."""
        self._count += 1
        self.version = str(self._count)
        for s in list(self._streams.values()):
            for t in PUSH_ORDER:
                if types and t not in types:
                    continue
                w = s.watches.get(t)
                if w is None:
                    continue
                if s.delta:
                    self._delta_send(s, t, w, only=names)
                else:
                    self._sotw_send(s, t, w, only=None if w.wildcard else names)
        return self.version

    # -- observations --

    def requests(self, type_url: str | None = None, *, stream: int | None = None) -> list[Record]:
        return [r for r in self.records
                if (type_url is None or r.type_url == type_url) and (stream is None or r.stream == stream)]

    def nacks(self, type_url: str | None = None) -> list[Record]:
        return [r for r in self.requests(type_url) if r.kind == "nack"]

    def acked(self, type_url: str, version: str, *, stream: int | None = None) -> bool:
        """Some stream (or ``stream``) ACKed ``version`` of ``type_url``: for SotW an ACK
        carrying that version_info; for Delta an ACK of a response sent with that version."""
        nonces = {x.nonce for x in self.sent if x.type_url == type_url and x.version == version}
        for r in self.requests(type_url, stream=stream):
            if r.kind not in ("ack", "subscribe"):
                continue
            if (r.delta and r.nonce in nonces) or (not r.delta and r.version == version and r.nonce in nonces):
                return True
        return False

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        """Wait (bounded) until ``pred()`` holds; re-checked after every request received."""
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ADS server: timed out after {timeout}s waiting for {what}; "
                                   f"requests: {[(r.stream, r.short, r.kind, r.version, r.names) for r in self.records]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    async def wait_acked(self, type_url: str, version: str, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.acked(type_url, version), timeout, f"ACK of {short(type_url)} {version}")

    async def wait_request(self, pred: Callable[[Record], bool], timeout: float = 10.0,
                           what: str = "request") -> Record:
        found: list[Record] = []

        def check() -> bool:
            found[:] = [r for r in self.records if pred(r)]
            return bool(found)

        await self.wait_for(check, timeout, what)
        return found[0]

    # -- gRPC handlers --

    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._serve(request_iterator, context, delta=False):
            yield item

    async def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._serve(request_iterator, context, delta=True):
            yield item

    async def _serve(self, request_iterator: Any, context: Any, *, delta: bool) -> AsyncIterator[Any]:
        self.streams_opened += 1
        self.stream_open_times.append(time.monotonic())
        self._notify()
        if self.refuse is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.refuse)
        s = _Stream(self.streams_opened, delta)
        self._streams[s.id] = s
        reader = asyncio.create_task(self._read(s, request_iterator))
        try:
            while True:
                item = await s.queue.get()
                if item is None:
                    break
                if isinstance(item, tuple):   # (code, details): fail the stream
                    await context.abort(*item)
                yield item
        finally:
            reader.cancel()
            self._streams.pop(s.id, None)
            self._notify()

    async def _read(self, s: _Stream, it: Any) -> None:
        try:
            async for req in it:
                if s.first:
                    s.first = False
                    if not req.HasField("node") or not req.node.id:
                        s.queue.put_nowait((grpc.StatusCode.INVALID_ARGUMENT, "missing node information"))
                        return
                    s.node_id = req.node.id
                elif req.HasField("node"):
                    pass   # allowed (set_node_on_first_message_only: false), just recorded
                if s.delta:
                    self._on_delta(s, req)
                else:
                    self._on_sotw(s, req)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            s.queue.put_nowait(None)

    def _record(self, s: _Stream, req: Any, kind: str) -> None:
        err = req.error_detail if req.HasField("error_detail") else None
        self.records.append(Record(
            stream=s.id,
            delta=s.delta,
            type_url=req.type_url,
            version="" if s.delta else req.version_info,
            nonce=req.response_nonce,
            names=tuple(req.resource_names_subscribe if s.delta else req.resource_names),
            unsubscribe=tuple(req.resource_names_unsubscribe) if s.delta else (),
            initial=dict(req.initial_resource_versions) if s.delta else {},
            error=err.message if err is not None else None,
            error_code=err.code if err is not None else None,
            kind=kind,
            node_id=req.node.id if req.HasField("node") else None,
        ))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    # -- SotW --

    def _on_sotw(self, s: _Stream, req: Any) -> None:
        t = req.type_url
        names = set(req.resource_names)
        w = s.watches.get(t)
        if req.HasField("error_detail"):
            self._record(s, req, "nack")
            return
        if t not in PUSH_ORDER:
            self._record(s, req, "initial")   # NDS/PCDS/...: nothing served
            return
        if req.response_nonce == "" or w is None:
            self._record(s, req, "initial")
            if t not in WILDCARD and not names:
                return   # an empty named subscription subscribes nothing
            w = s.watches[t] = _Watch(wildcard=t in WILDCARD and not names, names=names)
            self._sotw_send(s, t, w)
            return
        if req.response_nonce != w.nonce:
            self._record(s, req, "stale")
            return
        if t not in WILDCARD and not names:
            self._record(s, req, "subscribe")
            del s.watches[t]   # unsubscribe
            return
        if names == w.names:
            self._record(s, req, "ack")
            w.acked = req.version_info
            return
        self._record(s, req, "subscribe")
        added = names - w.names
        w.names = names
        w.acked = req.version_info
        if w.wildcard or t in WILDCARD:
            self._sotw_send(s, t, w)
        elif added:
            self._sotw_send(s, t, w, only=added)

    def _sotw_send(self, s: _Stream, t: str, w: _Watch, *, only: Collection[str] | None = None) -> None:
        have = self.resources[t]
        if w.wildcard:
            chosen = sorted(have)
        else:
            want = w.names if only is None else (w.names & set(only))
            chosen = sorted(n for n in want if n in have)
            if only is not None and not chosen:
                return
        resp = discovery_pb2.DiscoveryResponse(
            version_info=self.version, type_url=t, nonce=f"{self.version}-{uuid.uuid4()}")
        for n in chosen:
            a = any_pb2.Any()
            a.Pack(have[n])
            resp.resources.append(a)
        w.nonce = resp.nonce
        self.sent.append(Sent(s.id, t, self.version, resp.nonce, tuple(chosen)))
        s.queue.put_nowait(resp)

    # -- Delta --

    def _on_delta(self, s: _Stream, req: Any) -> None:
        t = req.type_url
        if req.HasField("error_detail"):
            self._record(s, req, "nack")
            w = s.watches.get(t)
            if w is not None and req.response_nonce == w.nonce:
                # The client kept its previous versions: the next push that touches the type
                # sends these again (no immediate resend).
                for n in w.last_sent:
                    w.known.pop(n, None)
            return
        if t not in PUSH_ORDER:
            self._record(s, req, "initial")
            return
        sub = set(req.resource_names_subscribe)
        unsub = set(req.resource_names_unsubscribe)
        w = s.watches.get(t)
        if w is None:
            self._record(s, req, "initial")
            wildcard = t in WILDCARD and (not sub or "*" in sub)
            w = s.watches[t] = _Watch(wildcard=wildcard, names=sub - {"*"} - unsub,
                                      known=dict(req.initial_resource_versions))
            self._delta_send(s, t, w, always=True)
            return
        if not sub and not unsub:
            self._record(s, req, "ack" if req.response_nonce else "initial")
            return
        self._record(s, req, "subscribe")
        for n in unsub:
            w.names.discard(n)
            w.known.pop(n, None)
        added = sub - w.names - {"*"}
        w.names |= added
        if "*" in sub:
            w.wildcard = True
        if added:
            self._delta_send(s, t, w, only=added)

    def _delta_send(self, s: _Stream, t: str, w: _Watch, *, only: Collection[str] | None = None,
                    always: bool = False) -> None:
        have = self.resources[t]
        scope = set(have) if w.wildcard else set(w.names)
        if only is not None:
            scope &= set(only)
        changed = sorted(n for n in scope if n in have and w.known.get(n) != _rversion(have[n]))
        gone_scope = set(w.known) if only is None else set(w.known) & set(only)
        removed = sorted(n for n in gone_scope if n not in have)
        if not changed and not removed and not always:
            return
        resp = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=self.version, type_url=t, nonce=f"{self.version}-{uuid.uuid4()}",
            removed_resources=removed)
        for n in changed:
            r = resp.resources.add(name=n, version=_rversion(have[n]))
            r.resource.Pack(have[n])
            w.known[n] = r.version
        for n in removed:
            w.known.pop(n, None)
        w.nonce = resp.nonce
        w.last_sent = tuple(changed)
        self.sent.append(Sent(s.id, t, self.version, resp.nonce, tuple(changed), tuple(removed)))
        s.queue.put_nowait(resp)
