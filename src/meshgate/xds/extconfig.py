"""Per-pod plugin state from the mesh controller to the sidecars, as an xDS extension config.

Theory of operation
-------------------
``meshgate mesh-controller`` decides, for every sidecar pod, the APISIX plugins that pod must
run (a JSON-able document such as ``{"plugins": {...}, "sources": [...]}``).  This module is the
delivery channel, both ends: an ECDS-like State-of-the-World stream over the standard ADS
service ``envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources``
(``DeltaAggregatedResources`` answers UNIMPLEMENTED).

* Type URL :data:`TYPE_URL` (``envoy.config.core.v3.TypedExtensionConfig``), one resource per
  node named :data:`RESOURCE_NAME` whose ``typed_config`` packs a ``google.protobuf.Struct`` of
  the document.
* ``version_info`` is a content hash (:func:`state_version`: the first 16 hex digits of the
  SHA-256 of the canonical JSON), so the same state always has the same version: a reconnect
  or a controller restart re-sends an identical version and the client does not re-apply it.
  Versions are only ever compared for equality, never ordered.
* Numbers: a Struct number is a double.  The server refuses (``ValueError``) NaN, infinities
  and integers beyond ±2**53 (they would come back changed); the client turns every integral
  number back into an ``int`` (``3.0`` arrives as ``3``: a document cannot carry an integral
  float, which is what plugin schemas asking for integers need), other numbers stay ``float``.
  The version hash is computed on that normalised form, so ``1`` and ``1.0`` have one version.

Server (:class:`ExtConfigServer`), per stream, following istiod's rules:

* the first request must carry a Node with an id, else the stream fails INVALID_ARGUMENT;
* a request of :data:`TYPE_URL` with an empty nonce whose ``resource_names`` are empty
  (wildcard) or contain :data:`RESOURCE_NAME` subscribes, and gets the full state at once;
* a request whose nonce is not the last one sent on the stream is stale: ignored;
* the last nonce without ``error_detail`` is an ACK (the node's acked version), with
  ``error_detail`` a NACK (the error is recorded, the acked version kept, and the NACKed version
  is not sent again on that stream: only a new version is);
* requests of other type URLs are counted and answered with nothing;
* :meth:`ExtConfigServer.notify` re-resolves every subscribed stream (coalesced into one pass by
  a background task) and sends only to those whose version changed.

Client (:class:`ExtConfigClient`): one stream kept up with reconnects (exponential backoff with
full jitter, reset by a stream that delivered a response).  The first request carries the Node,
``resource_names`` [:data:`RESOURCE_NAME`] and the version already applied.  A response whose
version equals the applied one is ACKed without applying; otherwise ``apply(state, version)``
runs and the response is ACKed, or NACKed (``error_detail`` google.rpc.Status code 3 and the
previous good version) when it raises :class:`~meshgate.xds.ads.XdsRejected` (any other
exception NACKs too, logged as a bug).  The applied state survives reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import math
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc
from envoy.config.core.v3 import extension_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, struct_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from .ads import INVALID_ARGUMENT, XdsRejected
from .client import KEEPALIVE_OPTIONS, StreamKeeper

__all__ = [
    "TYPE_URL",
    "RESOURCE_NAME",
    "STRUCT_TYPE_URL",
    "SERVER_OPTIONS",
    "NodeInfo",
    "NodeStatus",
    "ExtConfigServer",
    "NotReady",
    "ExtConfigClient",
    "ResolveFn",
    "StatusFn",
    "ApplyFn",
    "XdsRejected",
    "parse_address",
    "normalize_state",
    "state_version",
    "encode_state",
    "decode_state",
    "node_info",
]

log = logging.getLogger("meshgate.xds.extconfig")

TYPE_URL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
#: The one resource of every node.
RESOURCE_NAME = "meshgate.plugins"
STRUCT_TYPE_URL = "type.googleapis.com/google.protobuf.Struct"
_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
_MAX_EXACT_INT = 2 ** 53

#: Server options: accept the clients' keepalive pings on silent streams (gRPC's default
#: 5-minute minimum would GOAWAY them with ``too_many_pings``), ping the clients to notice dead
#: sidecars, and never share a port with another process (``so_reuseport`` off: a port-0 bind is
#: really free, a restart on a busy port fails instead of splitting the traffic).
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)


# --- addresses ------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int | None]:
    """``(host, port)`` of ``HOST:PORT`` (an IPv6 host keeps its brackets; port 0 allowed), or
    ``(address, None)`` for ``unix:/path``.  ``ValueError`` for anything else."""
    if address.startswith("unix:"):
        if len(address) <= len("unix:"):
            raise ValueError(f"address {address!r}: expected unix:/path/to/socket")
        return address, None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"address {address!r}: expected HOST:PORT or unix:/path")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"address {address!r}: an IPv6 host goes in brackets, [::1]:PORT")
    return host, int(port)


# --- the document -----------------------------------------------------------------------------


def _normalize(x: Any, path: str) -> Any:
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        if abs(x) > _MAX_EXACT_INT:
            raise ValueError(f"{path or '/'}: integer {x} does not survive a protobuf Struct (beyond 2**53)")
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"{path or '/'}: {x} is not a JSON number")
        if x.is_integer() and abs(x) <= _MAX_EXACT_INT:
            return int(x)
        return x
    if isinstance(x, Mapping):
        out: dict[str, Any] = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"{path or '/'}: key {k!r} is not a string")
            out[k] = _normalize(v, f"{path}/{k.replace('~', '~0').replace('/', '~1')}")
        return out
    if isinstance(x, (list, tuple)):
        return [_normalize(v, f"{path}/{i}") for i, v in enumerate(x)]
    raise ValueError(f"{path or '/'}: {type(x).__name__} is not JSON-able")


def normalize_state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """The document as the client will see it: a copy with tuples as lists and integral
    numbers as ints (``None`` is ``{}``).  ``ValueError`` (with a JSON pointer) for what a
    Struct cannot carry faithfully."""
    if state is None:
        return {}
    if not isinstance(state, Mapping):
        raise ValueError(f"the state must be a JSON object, not {type(state).__name__}")
    out: dict[str, Any] = _normalize(state, "")
    return out


def _canonical(normalized: Mapping[str, Any]) -> str:
    return json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def state_version(state: Mapping[str, Any] | None) -> str:
    """The content hash used as ``version_info``: the first 16 hex digits of the SHA-256 of the
    canonical JSON of the normalised state (equal states, equal versions)."""
    return hashlib.sha256(_canonical(normalize_state(state)).encode()).hexdigest()[:16]


def encode_state(state: Mapping[str, Any] | None) -> tuple[str, any_pb2.Any]:
    """``(version, resource)``: the ``Any`` of a TypedExtensionConfig named
    :data:`RESOURCE_NAME` packing the state as a Struct.  ``ValueError`` as ``normalize_state``."""
    doc = normalize_state(state)
    version = hashlib.sha256(_canonical(doc).encode()).hexdigest()[:16]
    s = struct_pb2.Struct()
    s.update(doc)
    tec: Any = extension_pb2.TypedExtensionConfig(name=RESOURCE_NAME)
    tec.typed_config.Pack(s)
    packed = any_pb2.Any()
    packed.Pack(tec)
    return version, packed


def _from_value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return _from_struct(v.struct_value)
    if kind == "list_value":
        return [_from_value(x) for x in v.list_value.values]
    if kind == "number_value":
        n = v.number_value
        return int(n) if math.isfinite(n) and n.is_integer() else n
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    return None   # null_value, or unset


def _from_struct(s: struct_pb2.Struct) -> dict[str, Any]:
    return {k: _from_value(v) for k, v in s.fields.items()}


def decode_state(resources: Sequence[any_pb2.Any]) -> dict[str, Any]:
    """The state carried by the resources of a response (no :data:`RESOURCE_NAME` resource: the
    empty state ``{}``); integral numbers come back as ints.  ``XdsRejected`` if malformed."""
    found: dict[str, Any] | None = None
    for i, packed in enumerate(resources):
        if packed.type_url == _RESOURCE_WRAPPER:
            wrapper: Any = discovery_pb2.Resource()
            try:
                wrapper.ParseFromString(packed.value)
            except DecodeError as e:
                raise XdsRejected(f"resource {i}: undecodable Resource wrapper: {e}") from None
            if not wrapper.HasField("resource"):
                continue   # a name-only heartbeat
            packed = wrapper.resource
        if packed.type_url != TYPE_URL:
            raise XdsRejected(f"resource {i} is a {packed.type_url or '(no type)'}, expected {TYPE_URL}")
        tec: Any = extension_pb2.TypedExtensionConfig()
        try:
            tec.ParseFromString(packed.value)
        except DecodeError as e:
            raise XdsRejected(f"resource {i}: undecodable TypedExtensionConfig: {e}") from None
        if tec.name != RESOURCE_NAME:
            log.debug("ignoring extension config %r (not %s)", tec.name, RESOURCE_NAME)
            continue
        if found is not None:
            raise XdsRejected(f"duplicate resource {RESOURCE_NAME!r}")
        inner = tec.typed_config
        if inner.type_url != STRUCT_TYPE_URL:
            raise XdsRejected(f"{RESOURCE_NAME}: typed_config is a {inner.type_url or '(no type)'}, "
                              f"expected {STRUCT_TYPE_URL}")
        s = struct_pb2.Struct()
        try:
            s.ParseFromString(inner.value)
        except DecodeError as e:
            raise XdsRejected(f"{RESOURCE_NAME}: undecodable Struct: {e}") from None
        found = _from_struct(s)
    return found if found is not None else {}


# --- nodes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A connected node, from the Node of its stream's first request.

    ``pod`` and ``namespace`` come from the metadata NAME / NAMESPACE, else from an Istio-form
    id (``sidecar~10.1.2.3~pod.namespace~namespace.svc.cluster.local``); ``ip`` from the id
    (else the first of INSTANCE_IPS).  Equality and hash use the scalar fields only."""

    id: str
    pod: str = ""
    namespace: str = ""
    ip: str = ""
    cluster: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    @property
    def key(self) -> str:
        """``namespace/pod`` (the id when those are unknown)."""
        return f"{self.namespace}/{self.pod}" if self.pod and self.namespace else self.id

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pod": self.pod, "namespace": self.namespace, "ip": self.ip,
                "cluster": self.cluster, "labels": dict(self.labels)}


def node_info(node: Any) -> NodeInfo:
    """Parse an ``envoy.config.core.v3.Node``."""
    md = _from_struct(node.metadata) if node.HasField("metadata") else {}
    node_id = str(node.id)
    pod = ns = ip = ""
    parts = node_id.split("~")
    if len(parts) == 4:
        ip = parts[1]
        if "." in parts[2]:
            pod, ns = parts[2].rsplit(".", 1)
    pod = str(md.get("NAME") or pod)
    ns = str(md.get("NAMESPACE") or ns)
    if not ip:
        ips = md.get("INSTANCE_IPS")
        if isinstance(ips, str) and ips:
            ip = ips.split(",", 1)[0].strip()
    raw_labels = md.get("LABELS")
    labels = {str(k): str(v) for k, v in raw_labels.items()} if isinstance(raw_labels, dict) else {}
    return NodeInfo(id=node_id, pod=pod, namespace=ns, ip=ip, cluster=str(node.cluster),
                    labels=MappingProxyType(labels), metadata=MappingProxyType(md))


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One connected stream, as :meth:`ExtConfigServer.connected` reports it."""

    node: NodeInfo
    stream: int
    subscribed: bool
    sent_version: str | None      # version of the last response sent on the stream
    acked_version: str | None     # last version the node ACKed on the stream
    error: str | None             # error_detail of the last NACK (cleared by an ACK)
    responses: int                # responses sent on the stream
    connected_at: float           # time.time()

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node.as_dict(), "stream": self.stream, "subscribed": self.subscribed,
                "sent_version": self.sent_version, "acked_version": self.acked_version,
                "error": self.error, "responses": self.responses, "connected_at": self.connected_at}


class NotReady(Exception):
    """Raised by a resolver that cannot answer yet (its caches are not filled): nothing is sent
    to the node, which keeps what it runs, until a later ``notify()``."""


#: ``resolve(node) -> state``: the document for a node (``None``: the empty state ``{}``);
#: raising :class:`NotReady` defers the answer.
ResolveFn = Callable[[NodeInfo], Mapping[str, Any] | None]
#: ``on_status(node, acked_version, error)``: after every ACK ``(node, version, None)``, every
#: NACK ``(node, version still acked or None, error)``, and when a node's last stream closes
#: ``(node, None, None)`` (only a disconnect reports neither).
StatusFn = Callable[[NodeInfo, str | None, str | None], None]
#: ``apply(state, version)``: apply (may be a coroutine function), or raise ``XdsRejected``.
ApplyFn = Callable[[dict[str, Any], str], Awaitable[None] | None]

_END = object()          # queue item: end the stream (status OK)
_BAD_NODE = object()     # queue item: fail the stream INVALID_ARGUMENT


# --- the server ---------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("id", "node", "queue", "subscribed", "sent_version", "nonce", "acked_version",
                 "error", "responses", "ignored", "connected_at", "first")

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.node: NodeInfo | None = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.subscribed = False
        self.sent_version: str | None = None
        self.nonce = ""
        self.acked_version: str | None = None
        self.error: str | None = None
        self.responses = 0
        self.ignored = 0
        self.connected_at = time.time()
        self.first = True


class _Servicer:
    """The gRPC face of the server (duck-typed for ``add_..._to_server``)."""

    def __init__(self, owner: ExtConfigServer) -> None:
        self._owner = owner

    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        # an async generator function: what grpc.aio recognises as an asynchronous streaming handler
        async for item in self._owner._serve(request_iterator, context):
            yield item

    async def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "meshgate extension configs are served over StreamAggregatedResources only")


class ExtConfigServer:
    """Serves each connected node its state (see the module docstring)."""

    def __init__(self, resolve: ResolveFn, *, on_status: StatusFn | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self.resolve = resolve
        self.on_status = on_status
        self.options = list(SERVER_OPTIONS) + list(options)
        self.responses = 0          # responses sent, all streams
        self.acks = 0
        self.nacks = 0
        self.stale = 0              # requests with a stale nonce
        self.ignored = 0            # requests of other type URLs
        self.streams = 0            # streams opened
        self._conns: dict[int, _Conn] = {}
        self._server: Any = None
        self._address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = asyncio.Event()
        self._pusher: asyncio.Task[None] | None = None
        self._packed: OrderedDict[str, any_pb2.Any] = OrderedDict()   # version -> resource (LRU)
        self._nonce_prefix = uuid.uuid4().hex[:8]
        self._nonce_seq = 0

    # -- lifecycle --

    @property
    def address(self) -> str | None:
        """The bound address while serving."""
        return self._address

    async def start(self, address: str) -> str:
        """Listen on ``address`` (``HOST:PORT``, port 0 = a free one, or ``unix:/path``) and
        return the bound address (``HOST:PORT`` with the real port, or the unix address)."""
        if self._server is not None:
            raise RuntimeError("ExtConfigServer is already started")
        host, port = parse_address(address)
        server = grpc.aio.server(options=self.options)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address}: {e}") from None
        if port is not None and not bound:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._address = address if port is None else f"{host}:{bound}"
        self._dirty = asyncio.Event()
        self._pusher = asyncio.create_task(self._push_loop(), name="extconfig-push")
        log.info("extension config server listening on %s", self._address)
        return self._address

    async def stop(self, grace: float | None = 1.0) -> None:
        """End every stream (cleanly: the clients see the stream end and reconnect), stop
        listening (RPCs still running get ``grace`` seconds), stop the push task."""
        server, self._server = self._server, None
        for c in list(self._conns.values()):
            c.queue.put_nowait(_END)
        if server is not None:
            await server.stop(grace)
        task, self._pusher = self._pusher, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if server is not None:
            log.info("extension config server on %s stopped", self._address)
        self._address = None

    # -- public surface --

    def notify(self) -> None:
        """Re-resolve every subscribed node soon and send to those whose version changed.
        Cheap, coalesced (many calls make one pass); callable from any task, or from another
        thread."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._dirty.set()
        else:
            try:
                loop.call_soon_threadsafe(self._dirty.set)
            except RuntimeError:   # the loop is closed: nothing to push to
                pass

    def connected(self) -> list[NodeStatus]:
        """Every open stream whose node is known, oldest first."""
        return [NodeStatus(node=c.node, stream=c.id, subscribed=c.subscribed, sent_version=c.sent_version,
                           acked_version=c.acked_version, error=c.error, responses=c.responses,
                           connected_at=c.connected_at)
                for c in self._conns.values() if c.node is not None]

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for a status page."""
        return {"address": self._address, "streams_opened": self.streams, "responses": self.responses,
                "acks": self.acks, "nacks": self.nacks, "stale": self.stale, "ignored": self.ignored,
                "nodes": [s.as_dict() for s in self.connected()]}

    # -- streams --

    async def _serve(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        self.streams += 1
        conn = _Conn(self.streams)
        self._conns[conn.id] = conn
        reader = asyncio.create_task(self._read(conn, request_iterator), name=f"extconfig-read-{conn.id}")
        try:
            while True:
                item = await conn.queue.get()
                if item is _END:
                    break
                if item is _BAD_NODE:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        "the first request of the stream must carry a Node with an id")
                yield item
        finally:
            reader.cancel()
            self._conns.pop(conn.id, None)
            node = conn.node
            if node is not None:
                log.info("extension config stream %d of %s closed", conn.id, node.id)
                if not any(c.node is not None and c.node.id == node.id for c in self._conns.values()):
                    self._report(node, None, None)

    async def _read(self, conn: _Conn, requests: Any) -> None:
        try:
            async for req in requests:
                if conn.first:
                    conn.first = False
                    if not req.HasField("node") or not req.node.id:
                        log.warning("extension config stream %d: first request without a Node id", conn.id)
                        conn.queue.put_nowait(_BAD_NODE)
                        return
                    conn.node = node_info(req.node)
                    log.info("extension config stream %d from %s (%s)", conn.id, conn.node.id, conn.node.key)
                self._on_request(conn, req)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:   # the client went away mid-read
            log.debug("extension config stream %d: %s", conn.id, e.code().name)
        except Exception:   # task root: a bug here must end this stream, not hang it
            log.exception("extension config stream %d failed", conn.id)
        conn.queue.put_nowait(_END)

    def _on_request(self, conn: _Conn, req: Any) -> None:
        node = conn.node
        assert node is not None
        if req.type_url != TYPE_URL:
            conn.ignored += 1
            self.ignored += 1
            log.debug("stream %d (%s): ignoring a request of type %s", conn.id, node.id, req.type_url or "(none)")
            return
        names = list(req.resource_names)
        wants = not names or RESOURCE_NAME in names
        nonce = req.response_nonce
        if nonce and nonce != conn.nonce:
            self.stale += 1
            log.debug("stream %d (%s): stale nonce %s (last sent %s)", conn.id, node.id, nonce, conn.nonce or "none")
            return
        if req.HasField("error_detail"):
            if not nonce:
                self.stale += 1
                log.debug("stream %d (%s): NACK without a nonce ignored", conn.id, node.id)
                return
            self.nacks += 1
            conn.error = req.error_detail.message or f"NACK (code {req.error_detail.code})"
            log.warning("%s NACKed extension config %s: %s (still at %s)", node.key, conn.sent_version,
                        conn.error, conn.acked_version or "nothing")
            self._report(node, conn.acked_version, conn.error)
            return
        if nonce and conn.subscribed:
            self.acks += 1
            conn.acked_version = conn.sent_version
            conn.error = None
            log.debug("%s ACKed extension config %s", node.key, conn.acked_version)
            self._report(node, conn.acked_version, None)
        if wants and (not conn.subscribed or not nonce):
            # a subscription, or a fresh request: the full state, even if unchanged
            conn.subscribed = True
            self._push(conn, force=True)
        elif not wants and conn.subscribed:
            log.info("%s unsubscribed from %s", node.key, RESOURCE_NAME)
            conn.subscribed = False
            conn.sent_version = None

    def _report(self, node: NodeInfo, version: str | None, error: str | None) -> None:
        if self.on_status is None:
            return
        try:
            self.on_status(node, version, error)
        except Exception:
            log.exception("on_status(%s) failed", node.id)

    # -- pushes --

    async def _push_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self._push_all()
            except Exception:   # task root: keep serving
                log.exception("extension config push failed")
            await asyncio.sleep(0)   # let the streams send before another pass

    def _push_all(self) -> None:
        memo: dict[int, tuple[Any, str, any_pb2.Any]] = {}
        pushed = 0
        for conn in list(self._conns.values()):
            if conn.subscribed and self._push(conn, force=False, memo=memo):
                pushed += 1
        if pushed:
            log.info("pushed extension configs to %d node(s)", pushed)

    def _encode(self, state: Mapping[str, Any] | None,
                memo: dict[int, tuple[Any, str, any_pb2.Any]] | None) -> tuple[str, any_pb2.Any]:
        if memo is not None and state is not None:
            hit = memo.get(id(state))
            if hit is not None and hit[0] is state:
                return hit[1], hit[2]
        version, packed = encode_state(state)
        cached = self._packed.get(version)
        if cached is not None:
            self._packed.move_to_end(version)
            packed = cached
        else:
            self._packed[version] = packed
            while len(self._packed) > 64:
                self._packed.popitem(last=False)
        if memo is not None and state is not None:
            memo[id(state)] = (state, version, packed)
        return version, packed

    def _push(self, conn: _Conn, *, force: bool,
              memo: dict[int, tuple[Any, str, any_pb2.Any]] | None = None) -> bool:
        """Resolve ``conn``'s node and send its state if the version changed (or ``force``)."""
        node = conn.node
        assert node is not None
        try:
            version, packed = self._encode(self.resolve(node), memo)
        except NotReady:
            return False
        except Exception:
            # keep what the node has; the next notify() tries again
            log.exception("resolving the extension config of %s failed", node.key)
            return False
        if not force and version == conn.sent_version:
            return False
        self._nonce_seq += 1
        nonce = f"{self._nonce_prefix}-{self._nonce_seq}"
        resp: Any = discovery_pb2.DiscoveryResponse(version_info=version, type_url=TYPE_URL, nonce=nonce)
        resp.resources.append(packed)
        conn.sent_version = version
        conn.nonce = nonce
        conn.responses += 1
        self.responses += 1
        log.debug("sending extension config %s to %s (nonce %s)", version, node.key, nonce)
        conn.queue.put_nowait(resp)
        return True


# --- the client -----------------------------------------------------------------------------------


class ExtConfigClient(StreamKeeper):
    """The sidecar end: one stream to ``address`` kept alive until ``stop()``."""

    what = "extension config stream"

    def __init__(
        self,
        address: str,
        node: Message,
        apply: ApplyFn,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        channel_options: Sequence[tuple[str, Any]] = (),
        rng: random.Random | None = None,
    ) -> None:
        parse_address(address)
        self._keeper_init(backoff_base, backoff_max, rng)
        self.address = self.target = address
        self.node = node
        self.apply = apply
        self.channel_options = list(KEEPALIVE_OPTIONS) + list(channel_options)
        self.version: str | None = None          # applied version
        self.state: dict[str, Any] | None = None  # applied state
        self.last_nack: str | None = None
        self.responses = 0
        self.applied = 0                         # successful apply() calls
        self.unchanged = 0                       # responses of the applied version (not re-applied)
        self.acks = 0
        self.nacks = 0
        self.ignored = 0                         # responses of other type URLs
        self._ready = asyncio.Event()

    # -- status --

    @property
    def ready(self) -> bool:
        """A first state was applied."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Until a first state is applied (bound it with ``asyncio.wait_for``)."""
        await self._ready.wait()

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for the admin endpoint."""
        return {
            "address": self.address, "connected": self.connected, "ready": self.ready,
            "version": self.version, "last_error": self.last_error, "last_nack": self.last_nack,
            "connects": self.connects, "consecutive_failures": self.failures,
            "responses": self.responses, "applied": self.applied, "unchanged": self.unchanged,
            "acks": self.acks, "nacks": self.nacks, "ignored": self.ignored,
        }

    def _request(self, *, version: str, nonce: str, error: str | None = None, node: bool = False) -> Any:
        req: Any = discovery_pb2.DiscoveryRequest(version_info=version, type_url=TYPE_URL,
                                                  response_nonce=nonce, resource_names=[RESOURCE_NAME])
        if node:
            req.node.CopyFrom(self.node)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return req

    async def _stream_once(self) -> None:
        self.connects += 1
        channel = grpc.aio.insecure_channel(self.address, options=self.channel_options)
        self._channel = channel
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        queue.put_nowait(self._request(version=self.version or "", nonce="", node=True))

        async def requests() -> AsyncIterator[Any]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        call = stub.StreamAggregatedResources(requests())
        self._call = call
        got = False
        try:
            async for resp in call:
                if not got:
                    got = True
                    self._stream_up()
                reply = await self._on_response(resp)
                if reply is not None:
                    queue.put_nowait(reply)
        finally:
            queue.put_nowait(None)

    async def _on_response(self, resp: Any) -> Any:
        if resp.type_url != TYPE_URL:
            self.ignored += 1
            log.debug("ignoring a response of type %s", resp.type_url or "(none)")
            return None
        self.responses += 1
        version = str(resp.version_info)
        if self.version is not None and version == self.version:
            self.unchanged += 1
            log.debug("extension config %s already applied", version)
        else:
            try:
                state = decode_state(resp.resources)
                result = self.apply(state, version)
                if inspect.isawaitable(result):
                    await result
            except XdsRejected as e:
                return self._nack(version, resp.nonce, e.detail)
            except asyncio.CancelledError:
                raise
            except Exception as e:   # an apply bug must not kill the stream: NACK, keep the last good
                log.exception("applying extension config %s failed", version)
                return self._nack(version, resp.nonce, f"internal error applying {RESOURCE_NAME}: {e!r}")
            self.version, self.state = version, state
            self.applied += 1
            self._ready.set()
            log.info("applied extension config %s", version)
        self.acks += 1
        self.last_nack = None
        return self._request(version=version, nonce=resp.nonce)

    def _nack(self, version: str, nonce: str, detail: str) -> Any:
        self.nacks += 1
        self.last_nack = detail
        log.warning("NACK extension config %s: %s (keeping %s)", version, detail, self.version or "nothing")
        return self._request(version=self.version or "", nonce=nonce, error=detail)
