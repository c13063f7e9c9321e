"""The I/O shell of the ADS conversation: one grpc.aio stream to istiod (or any xDS server).

Theory of operation
-------------------
``XdsClient.run()`` loops until ``stop()``: open a channel, open the ADS stream (SotW
``StreamAggregatedResources`` or ``DeltaAggregatedResources``), send what a fresh
:class:`~meshgate.xds.ads.AdsSession` ``start()``\\ s with, then for each response send what
``on_response()`` returns.  Requests go through a queue consumed by the stream's request
iterator, so sending never blocks reading.  All protocol decisions are in the session; this
module only moves messages, keeps time (the initial-fetch timeout that ends cluster warming)
and reconnects.

When the stream ends or fails (istiod restarting, ``UNAVAILABLE: server is not ready to serve
discovery information`` before its caches sync, max connection age, a network failure) the
call is cancelled, the channel closed, and after an exponential backoff with full jitter a new
stream starts with a new session on the same :class:`~meshgate.xds.ads.AdsState`: it
resubscribes with the names and versions already accepted, and the applier's last good
configuration keeps serving meanwhile (nothing is cleared on disconnect).  The backoff resets
once a stream has delivered a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from .. import __version__
from .ads import AdsSession, AdsState, AdsStats, Applier, Request

__all__ = ["XdsClient", "StreamKeeper", "make_node", "node_metadata_struct", "KEEPALIVE_OPTIONS", "full_jitter"]

log = logging.getLogger("meshgate.xds.client")

#: gRPC channel options for one long-lived stream: HTTP/2 keepalive pings every 30 s while the
#: stream is open, 10 s to answer (istiod's own keepalive defaults), pings allowed on an idle
#: stream (``max_pings_without_data`` 0: the stream is often silent for minutes), and room for
#: a large mesh's CDS/EDS (the 4 MiB default is too small).
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)


# --- node -----------------------------------------------------------------------------------------

# Node metadata keys by the type istiod unmarshals them into (pkg/model/proxy.go,
# BootstrapNodeMetadata); a JSON type mismatch fails the whole stream with InvalidArgument.
_STRING_MAPS = frozenset({"LABELS", "STATIC_LABELS", "ANNOTATIONS", "PLATFORM_METADATA"})
_COMMA_LISTS = frozenset({"INSTANCE_IPS", "REQUESTED_NETWORK_VIEW"})
_STRING_BOOLS = frozenset({
    "DNS_CAPTURE", "DNS_AUTO_ALLOCATE", "ENABLE_HBONE", "DISABLE_HBONE_SEND",
    "EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "INBOUND_LISTENER_EXACT_BALANCE",
    "OUTBOUND_LISTENER_EXACT_BALANCE", "METADATA_DISCOVERY", "ENVOY_SKIP_DEPRECATED_LOGS",
})
_INTS = frozenset({"ENVOY_STATUS_PORT", "ENVOY_PROMETHEUS_PORT"})
_STRING_ARRAYS = frozenset({"PILOT_SAN"})
_JSON_STRINGS = frozenset({"POD_PORTS"})      # a JSON document inside a string (legacy)
_OBJECTS = frozenset({"PROXY_CONFIG"})        # ProxyConfig JSON (camelCase)
_STRINGS = frozenset({
    "ISTIO_VERSION", "ISTIO_REVISION", "NAMESPACE", "NODE_NAME", "WORKLOAD_NAME",
    "INTERCEPTION_MODE", "SERVICE_ACCOUNT", "HTTP_PROXY_PORT", "MESH_ID", "CLUSTER_ID",
    "NETWORK", "TLS_SERVER_CERT_CHAIN", "TLS_SERVER_KEY", "TLS_SERVER_ROOT_CERT",
    "TLS_CLIENT_CERT_CHAIN", "TLS_CLIENT_KEY", "TLS_CLIENT_ROOT_CERT", "BASE", "IDLE_TIMEOUT",
    "HTTP10", "GENERATOR", "AUTO_REGISTER_GROUP", "WORKLOAD_ENTRY", "UNPRIVILEGED_POD",
    "STS_PORT", "CLOUDRUN_ADDR", "NAME", "OWNER", "OUTLIER_LOG_PATH", "APP_CONTAINERS",
    "ISTIO_PROXY_SHA",
})


def _scalar_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (str, int, float)):
        return str(v)
    raise TypeError(f"expected a string, got {type(v).__name__}")


def _metadata_value(key: str, v: Any) -> Any:
    """``v`` in the JSON type istiod expects for ``key`` (unknown keys pass through)."""
    if key in _STRING_MAPS:
        if not isinstance(v, Mapping):
            raise TypeError(f"expected a map of strings, got {type(v).__name__}")
        return {str(k): _scalar_str(x) for k, x in v.items()}
    if key in _COMMA_LISTS:
        if isinstance(v, (list, tuple)):
            return ",".join(_scalar_str(x) for x in v)
        return _scalar_str(v)
    if key in _STRING_BOOLS:
        if isinstance(v, str):
            low = v.strip().lower()
            if low in ("1", "t", "true"):
                return "true"
            if low in ("0", "f", "false"):
                return "false"
            raise TypeError(f"expected a boolean, got {v!r}")
        return "true" if v else "false"
    if key in _INTS:
        if isinstance(v, bool):
            raise TypeError("expected an integer, got a boolean")
        return int(v)
    if key in _STRING_ARRAYS:
        if isinstance(v, str):
            return [x for x in v.split(",") if x]
        return [_scalar_str(x) for x in v]
    if key in _JSON_STRINGS:
        return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    if key in _OBJECTS:
        if isinstance(v, str):
            v = json.loads(v)
        if not isinstance(v, Mapping):
            raise TypeError(f"expected an object, got {type(v).__name__}")
        return dict(v)
    if key in _STRINGS:
        return _scalar_str(v)
    return v


def node_metadata_struct(metadata: Mapping[str, Any]) -> struct_pb2.Struct:
    """Node metadata as a protobuf Struct, each known key in the JSON type istiod expects
    (LABELS a map of strings, INSTANCE_IPS a comma-separated string, DNS_CAPTURE "true",
    ENVOY_STATUS_PORT a number, POD_PORTS a JSON string...).  ``ValueError`` names a key whose
    value cannot be converted."""
    out: dict[str, Any] = {}
    for k, v in metadata.items():
        if v is None:
            continue
        try:
            out[k] = _metadata_value(k, v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"node metadata {k}: {e}") from None
    s = struct_pb2.Struct()
    s.update(out)
    return s


def make_node(node_id: str, metadata: Mapping[str, Any], cluster: str = "", *,
              locality: Mapping[str, str] | None = None) -> Message:
    """The ``envoy.config.core.v3.Node`` for the ADS stream.

    ``cluster`` defaults to ``<app>.<namespace>`` from LABELS/NAMESPACE when those are known
    (what istio-agent derives), else the node id's namespace part."""
    node: Any = base_pb2.Node(id=node_id, user_agent_name="meshgate")
    if not cluster:
        ns = str(metadata.get("NAMESPACE") or "")
        labels = metadata.get("LABELS")
        app = ""
        if isinstance(labels, Mapping):
            app = str(labels.get("app") or labels.get("app.kubernetes.io/name") or "")
        parts = node_id.split("~")
        if not ns and len(parts) == 4:
            ns = parts[3].split(".", 1)[0]
        cluster = f"{app}.{ns}" if app and ns else ns
    node.cluster = cluster
    major, minor, patch = (int(x) for x in (__version__.split(".") + ["0", "0"])[:3])
    sv = node.user_agent_build_version.version
    sv.major_number, sv.minor_number, sv.patch = major, minor, patch
    node.metadata.CopyFrom(node_metadata_struct(metadata))
    if locality:
        for k in ("region", "zone", "sub_zone"):
            if locality.get(k):
                setattr(node.locality, k, locality[k])
    out: Message = node
    return out


# --- the client ----------------------------------------------------------------------------------


def full_jitter(rng: random.Random, base: float, cap: float, failures: int) -> float:
    """The delay before reconnect attempt ``failures + 1``: exponential backoff with full
    jitter, floored at a tenth of the base so that a refusing server is never hammered in a
    tight loop."""
    top = min(cap, base * (2 ** min(failures, 30)))
    return max(base / 10, rng.uniform(0, top))


class StreamKeeper:
    """One gRPC stream kept up until ``stop()``: the reconnect loop both xDS clients share.

    A subclass sets ``what`` and ``target`` (for logs), implements ``_stream_once`` (one
    stream; it keeps ``self._channel`` / ``self._call`` so that ``stop()`` can end them, and
    resets ``failures`` once a response arrived) and calls ``_keeper_init``."""

    what = "stream"
    target: str

    def _keeper_init(self, backoff_base: float, backoff_max: float, rng: random.Random | None) -> None:
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connected = False
        self.last_error: str | None = None       # why the last stream ended
        self.connects = 0                        # streams attempted
        self.failures = 0                        # consecutive streams without a response
        self.backoffs: deque[float] = deque(maxlen=32)   # recent delays slept, for status/tests
        self._rng = rng or random.Random()
        self._stopping = False
        self._wake = asyncio.Event()
        self._channel: Any = None
        self._call: Any = None
        self._running = False
        self._done = asyncio.Event()

    async def _stream_once(self) -> Any:
        raise NotImplementedError

    def _stream_up(self, detail: str = "") -> None:
        """The first response of a stream arrived: connected, and the backoff starts over."""
        self.connected = True
        self.last_error = None
        self.failures = 0
        log.info("%s to %s up%s", self.what, self.target, detail)

    async def run(self) -> None:
        """Keep the stream up until ``stop()`` (or cancellation); returns when stopped."""
        if self._running:
            raise RuntimeError(f"{type(self).__name__}.run() is already running")
        self._running = True
        self._stopping = False
        self._done.clear()
        try:
            while not self._stopping:
                try:
                    await self._stream_once()
                    if not self._stopping:
                        self.last_error = "stream closed by the server"
                except grpc.aio.AioRpcError as e:
                    if not self._stopping:
                        self.last_error = f"{e.code().name}: {e.details()}"
                except asyncio.CancelledError:
                    if self._stopping:
                        break
                    raise
                except Exception as e:   # task root of the stream: log, back off, retry
                    log.exception("%s to %s failed", self.what, self.target)
                    self.last_error = f"{type(e).__name__}: {e}"
                finally:
                    self.connected = False
                    await self._close()
                if self._stopping:
                    break
                delay = full_jitter(self._rng, self.backoff_base, self.backoff_max, self.failures)
                self.failures += 1
                self.backoffs.append(delay)
                log.warning("%s to %s ended (%s); reconnecting in %.2fs", self.what, self.target, self.last_error,
                            delay)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            self._running = False
            self._done.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop: cancel the call (before closing the channel), wait for ``run()`` to return."""
        self._stopping = True
        self._wake.set()
        await self._close()
        if self._running:
            try:
                await asyncio.wait_for(self._done.wait(), timeout)
            except TimeoutError:
                log.warning("%s client did not stop within %.1fs", self.what, timeout)

    async def _close(self) -> None:
        call, channel = self._call, self._channel
        self._call = self._channel = None
        if call is not None:
            call.cancel()   # first: closing the channel under a live call can deadlock
        if channel is not None:
            await channel.close()


class XdsClient(StreamKeeper):
    """One ADS stream kept alive against ``target`` (``host:port``) until ``stop()``."""

    what = "xDS stream"

    def __init__(
        self,
        target: str,
        node: Message,
        applier: Applier,
        *,
        delta: bool,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        warming_timeout: float | None = 15.0,
        channel_options: Sequence[tuple[str, Any]] = (),
        state: AdsState | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._keeper_init(backoff_base, backoff_max, rng)
        self.target = target
        self.node = node
        self.applier = applier
        self.delta = delta
        self.warming_timeout = warming_timeout   # Envoy's initial_fetch_timeout for cluster warming
        self.channel_options = list(KEEPALIVE_OPTIONS) + list(channel_options)
        self.state = state if state is not None else AdsState()
        self.session: AdsSession | None = None

    # -- status --

    @property
    def ready(self) -> bool:
        return self.state.ready

    @property
    def stats(self) -> AdsStats:
        return self.state.stats

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for a status page."""
        return {
            "target": self.target,
            "mode": "delta" if self.delta else "sotw",
            "connected": self.connected,
            "ready": self.ready,
            "last_error": self.last_error,
            "connects": self.connects,
            "consecutive_failures": self.failures,
            "subscriptions": self.state.subscriptions(),
            **self.state.stats.as_dict(),
        }

    def _backoff(self, failures: int) -> float:
        return full_jitter(self._rng, self.backoff_base, self.backoff_max, failures)

    async def _stream_once(self) -> bool:
        """One stream; returns whether a response arrived (raises on failure)."""
        self.connects += 1
        channel = grpc.aio.insecure_channel(self.target, options=self.channel_options)
        self._channel = channel
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        session = AdsSession(self.node, self.applier, delta=self.delta, state=self.state)
        self.session = session
        queue: asyncio.Queue[Request | None] = asyncio.Queue()
        for req in session.start():
            queue.put_nowait(req)

        async def requests() -> AsyncIterator[Request]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        method = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
        call = method(requests())
        self._call = call
        warming: asyncio.TimerHandle | None = None

        def flush() -> None:
            for r in session.flush_warming():
                queue.put_nowait(r)

        got = False
        try:
            async for resp in call:
                if not got:
                    got = True
                    self._stream_up(" (delta)" if self.delta else " (sotw)")
                for req in session.on_response(resp):
                    queue.put_nowait(req)
                if session.lds_pending and warming is None and self.warming_timeout is not None:
                    warming = asyncio.get_running_loop().call_later(self.warming_timeout, flush)
        finally:
            if warming is not None:
                warming.cancel()
            queue.put_nowait(None)
        return got

