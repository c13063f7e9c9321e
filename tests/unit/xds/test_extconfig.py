"""The extension-config channel (meshgate.xds.extconfig): a real grpc.aio server and clients."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, struct_pb2

from meshgate.xds.client import make_node
from meshgate.xds.extconfig import (
    RESOURCE_NAME,
    TYPE_URL,
    ExtConfigClient,
    ExtConfigServer,
    NodeInfo,
    NotReady,
    XdsRejected,
    decode_state,
    encode_state,
    node_info,
    normalize_state,
    parse_address,
    state_version,
)

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
T = 5.0   # bound of every wait


async def until(pred: Callable[[], bool], what: str = "condition", timeout: float = T) -> None:
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def node_id(pod: str, ns: str = "shop", ip: str = "10.1.2.3") -> str:
    return f"sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"


def state(**plugins: Any) -> dict[str, Any]:
    return {"plugins": plugins, "sources": [f"shop/{n}" for n in sorted(plugins)]}


class Controller:
    """The server side of a test: per-pod states and the on_status events."""

    def __init__(self) -> None:
        self.states: dict[str, Mapping[str, Any] | None] = {}
        self.events: list[tuple[NodeInfo, str | None, str | None]] = []
        self.resolves = 0
        self.fail: set[str] = set()
        self.not_ready = False
        self.server = ExtConfigServer(self.resolve, on_status=self.on_status)

    def resolve(self, node: NodeInfo) -> Mapping[str, Any] | None:
        self.resolves += 1
        if node.pod in self.fail:
            raise RuntimeError("resolver bug")
        if self.not_ready:
            raise NotReady()
        return self.states.get(node.pod)

    def on_status(self, node: NodeInfo, version: str | None, error: str | None) -> None:
        self.events.append((node, version, error))

    def acked(self, pod: str, version: str) -> bool:
        return any(n.pod == pod and v == version and e is None for n, v, e in self.events)


class Sidecar:
    """A client with a recording apply; states with a ``"bad"`` key are rejected."""

    def __init__(self, address: str, pod: str, ns: str = "shop") -> None:
        self.applied: list[tuple[dict[str, Any], str]] = []
        self.client = ExtConfigClient(
            address, make_node(node_id(pod, ns), {"NAMESPACE": ns, "NAME": pod, "LABELS": {"app": pod}}),
            self.apply, backoff_base=0.05, backoff_max=0.2)
        self.task: asyncio.Task[None] | None = None

    def apply(self, st: dict[str, Any], version: str) -> None:
        if "bad" in st:
            raise XdsRejected(f"bad plugin config: {st['bad']}")
        self.applied.append((st, version))

    def start(self) -> Sidecar:
        self.task = asyncio.create_task(self.client.run())
        return self

    async def stop(self) -> None:
        await self.client.stop(timeout=T)
        if self.task is not None:
            await asyncio.wait_for(self.task, T)


@pytest.fixture
async def env() -> AsyncIterator[dict[str, Any]]:
    things: dict[str, Any] = {"servers": [], "sidecars": []}
    yield things
    for s in things["sidecars"]:
        await s.stop()
    for srv in things["servers"]:
        await asyncio.wait_for(srv.stop(0), T)


async def serve(env: dict[str, Any], ctl: Controller | None = None, address: str = "127.0.0.1:0") -> tuple[Controller, str]:
    ctl = ctl or Controller()
    addr = await ctl.server.start(address)
    env["servers"].append(ctl.server)
    return ctl, addr


def sidecar(env: dict[str, Any], address: str, pod: str, ns: str = "shop") -> Sidecar:
    s = Sidecar(address, pod, ns).start()
    env["sidecars"].append(s)
    return s


# --- the document -------------------------------------------------------------------------------


def test_struct_round_trip_ints_come_back_as_ints() -> None:
    doc = {"plugins": {"limit-count": {"count": 3, "time_window": 60, "ratio": 0.25, "big": 2 ** 53,
                                       "f": 2.0, "neg": -7, "on": True, "none": None,
                                       "list": [1, 1.5, "x", {"a": [False]}], "tuple": (1, 2)}}}
    version, packed = encode_state(doc)
    back = decode_state([packed])
    limit = back["plugins"]["limit-count"]
    assert limit["count"] == 3 and type(limit["count"]) is int
    assert limit["f"] == 2 and type(limit["f"]) is int      # an integral float arrives as an int
    assert limit["ratio"] == 0.25 and type(limit["ratio"]) is float
    assert limit["big"] == 2 ** 53 and limit["neg"] == -7
    assert limit["on"] is True and limit["none"] is None
    assert limit["list"] == [1, 1.5, "x", {"a": [False]}] and limit["tuple"] == [1, 2]
    assert back == normalize_state(doc)
    assert version == state_version(back) == state_version(doc)
    assert len(version) == 16 and int(version, 16) >= 0


def test_version_is_a_content_hash() -> None:
    a = {"plugins": {"x": {"n": 1, "m": [1, 2]}}, "sources": ["a"]}
    b = {"sources": ["a"], "plugins": {"x": {"m": [1.0, 2], "n": 1.0}}}    # other key order, floats
    assert state_version(a) == state_version(b)
    assert state_version(a) != state_version({**a, "sources": ["b"]})
    assert state_version(None) == state_version({}) == encode_state(None)[0]
    assert decode_state([]) == {}


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": math.inf}, {"x": 2 ** 53 + 1}, {1: "a"}, {"x": {1, 2}}])
def test_unrepresentable_states_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        encode_state(bad)


def test_decode_rejects_foreign_resources() -> None:
    wrong = any_pb2.Any()
    wrong.Pack(struct_pb2.Struct())
    with pytest.raises(XdsRejected, match="expected"):
        decode_state([wrong])
    _, good = encode_state({"a": 1})
    with pytest.raises(XdsRejected, match="duplicate"):
        decode_state([good, good])
    wrapped = discovery_pb2.Resource(name=RESOURCE_NAME)
    wrapped.resource.CopyFrom(good)
    packed = any_pb2.Any()
    packed.Pack(wrapped)
    assert decode_state([packed]) == {"a": 1}


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:15012") == ("[::1]", 15012)
    assert parse_address("unix:/var/run/x.sock") == ("unix:/var/run/x.sock", None)
    for bad in ("unix:", "localhost", ":80", "host:http", "::1:80", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_node_info() -> None:
    n = node_info(make_node(node_id("web-1", "shop"), {"LABELS": {"app": "web"}}))
    assert (n.id, n.pod, n.namespace, n.ip, n.cluster) == (node_id("web-1"), "web-1", "shop", "10.1.2.3", "web.shop")
    assert dict(n.labels) == {"app": "web"} and n.key == "shop/web-1"
    # metadata NAME / NAMESPACE win; a non-Istio id is kept as is
    m = node_info(make_node("custom-id", {"NAME": "p", "NAMESPACE": "ns", "INSTANCE_IPS": "10.0.0.9,fd00::9"}))
    assert (m.pod, m.namespace, m.ip, m.key) == ("p", "ns", "10.0.0.9", "ns/p")
    assert hash(n) != hash(m) and n == node_info(make_node(node_id("web-1", "shop"), {}, "web.shop"))


# --- server and client ------------------------------------------------------------------------------


async def test_first_state_applied_and_acked(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    st = state(**{"limit-count": {"count": 3, "time_window": 60, "rejected_code": 503}})
    ctl.states["web-1"] = st
    sc = sidecar(env, addr, "web-1")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    v = state_version(st)
    assert sc.applied == [(st, v)]
    assert type(sc.applied[0][0]["plugins"]["limit-count"]["count"]) is int
    await until(lambda: ctl.acked("web-1", v), "the ACK")
    node, version, error = ctl.events[-1]
    assert (node.pod, node.namespace, node.ip, dict(node.labels)) == ("web-1", "shop", "10.1.2.3", {"app": "web-1"})
    [ns] = ctl.server.connected()
    assert (ns.sent_version, ns.acked_version, ns.error, ns.responses) == (v, v, None, 1)
    status = sc.client.status()
    assert status["connected"] and status["ready"] and status["version"] == v
    assert (status["applied"], status["acks"], status["nacks"]) == (1, 1, 0)
    assert ctl.server.status()["nodes"][0]["acked_version"] == v


async def test_unknown_node_gets_the_empty_state(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    sc = sidecar(env, addr, "nobody")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    assert sc.applied == [({}, state_version({}))]


async def test_notify_pushes_only_changed_versions(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    ctl.states["web-1"] = state(cors={})
    sc = sidecar(env, addr, "web-1")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    v1 = sc.client.version
    assert v1 is not None
    await until(lambda: ctl.acked("web-1", v1), "ACK v1")
    sent, resolves = ctl.server.responses, ctl.resolves

    for _ in range(20):     # unchanged: re-resolved (coalesced), nothing sent
        ctl.server.notify()
    await until(lambda: ctl.resolves > resolves, "a re-resolve")
    await asyncio.sleep(0.2)
    assert ctl.server.responses == sent and sc.client.responses == 1
    assert ctl.resolves - resolves <= 2

    ctl.states["web-1"] = state(cors={}, **{"key-auth": {"header": "apikey"}})
    ctl.server.notify()
    v2 = state_version(ctl.states["web-1"])
    await until(lambda: sc.client.version == v2, "v2 applied")
    await until(lambda: ctl.acked("web-1", v2), "ACK v2")
    assert ctl.server.responses == sent + 1
    assert [v for _, v in sc.applied] == [v1, v2]


async def test_notify_from_another_thread(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    sc = sidecar(env, addr, "web-1")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    ctl.states["web-1"] = state(cors={"max_age": 5})
    t = threading.Thread(target=ctl.server.notify)
    t.start()
    t.join(T)
    await until(lambda: sc.client.version == state_version(ctl.states["web-1"]), "the new state")


async def test_nack_keeps_previous_state_and_is_not_resent(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    good = state(cors={})
    ctl.states["web-1"] = good
    sc = sidecar(env, addr, "web-1")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    v1 = state_version(good)
    await until(lambda: ctl.acked("web-1", v1), "ACK v1")

    ctl.states["web-1"] = {**good, "bad": "no such plugin"}
    ctl.server.notify()
    await until(lambda: any(e for _, _, e in ctl.events), "the NACK")
    node, version, error = ctl.events[-1]
    assert version == v1 and error is not None and "no such plugin" in error
    [ns] = ctl.server.connected()
    assert ns.acked_version == v1 and ns.error == error and ns.sent_version == state_version(ctl.states["web-1"])
    assert sc.client.version == v1 and sc.client.state == good
    assert sc.client.nacks == 1 and "no such plugin" in (sc.client.status()["last_nack"] or "")
    # no resend loop, even when notified again with the same bad state
    sent = ctl.server.responses
    ctl.server.notify()
    await asyncio.sleep(0.3)
    assert ctl.server.responses == sent and sc.client.nacks == 1 and ctl.server.nacks == 1

    better = state(cors={}, **{"real-ip": {"source": "x-forwarded-for"}})
    ctl.states["web-1"] = better
    ctl.server.notify()
    v3 = state_version(better)
    await until(lambda: ctl.acked("web-1", v3), "ACK v3")
    assert sc.client.state == better and [v for _, v in sc.applied] == [v1, v3]
    assert ctl.server.connected()[0].error is None and sc.client.status()["last_nack"] is None


async def test_resolver_failure_keeps_the_stream(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    ctl.fail.add("web-1")
    ctl.states["web-1"] = state(cors={})
    sc = sidecar(env, addr, "web-1")
    await until(lambda: ctl.resolves >= 1 and bool(ctl.server.connected()), "the subscription")
    await asyncio.sleep(0.1)
    assert not sc.client.ready and ctl.server.responses == 0
    ctl.fail.clear()
    ctl.server.notify()
    await asyncio.wait_for(sc.client.wait_ready(), T)
    assert sc.client.connects == 1


async def test_a_resolver_not_ready_defers_and_the_sidecar_keeps_its_state(env: dict[str, Any],
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A controller restarting: until its caches are filled it answers nothing, so a sidecar that
    reconnects keeps running its plugins instead of getting an empty set."""
    ctl, addr = await serve(env)
    ctl.states["web-1"] = state(cors={})
    sc = sidecar(env, addr, "web-1")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    first = sc.client.version
    await ctl.server.stop(0)
    ctl2 = Controller()
    ctl2.not_ready = True
    ctl2.states["web-1"] = state(cors={}, echo={"body": "x"})
    await serve(env, ctl2, addr)
    await until(lambda: ctl2.resolves >= 1 and bool(ctl2.server.connected()), "the new subscription")
    await asyncio.sleep(0.1)
    assert sc.client.version == first and ctl2.server.responses == 0       # nothing pushed, nothing lost
    assert "failed" not in caplog.text                                      # not an error
    ctl2.not_ready = False
    ctl2.server.notify()
    await until(lambda: sc.client.version not in (None, first), "the real state once ready")
    assert sc.applied[-1][0]["plugins"] == {"cors": {}, "echo": {"body": "x"}}


async def test_two_clients_get_their_own_states(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    ctl.states["web-1"] = state(cors={})
    ctl.states["api-1"] = state(**{"key-auth": {}})
    web, api = sidecar(env, addr, "web-1"), sidecar(env, addr, "api-1", "backend")
    await asyncio.wait_for(asyncio.gather(web.client.wait_ready(), api.client.wait_ready()), T)
    assert web.client.state == ctl.states["web-1"] and api.client.state == ctl.states["api-1"]
    assert {(s.node.key, s.acked_version) for s in ctl.server.connected()} <= {
        ("shop/web-1", state_version(ctl.states["web-1"])), ("backend/api-1", state_version(ctl.states["api-1"])),
        ("shop/web-1", None), ("backend/api-1", None)}
    # a change for one pod is pushed to that pod only
    ctl.states["api-1"] = state(**{"key-auth": {"header": "k"}})
    ctl.server.notify()
    await until(lambda: api.client.version == state_version(ctl.states["api-1"]), "api's new state")
    await asyncio.sleep(0.1)
    assert web.client.responses == 1 and api.client.responses == 2
    # a disconnect is reported as (node, None, None)
    await web.stop()
    await until(lambda: ctl.events[-1][0].pod == "web-1" and ctl.events[-1][1:] == (None, None), "the disconnect")
    assert [s.node.pod for s in ctl.server.connected()] == ["api-1"]


async def test_server_restart_same_port_no_reapply(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    st = state(cors={})
    ctl.states["web-1"] = st
    sc = sidecar(env, addr, "web-1")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    v = state_version(st)
    await until(lambda: ctl.acked("web-1", v), "ACK")

    await asyncio.wait_for(ctl.server.stop(0.5), T)
    await until(lambda: sc.client.connects >= 2 and not sc.client.connected, "a reconnect attempt")
    assert sc.client.state == st     # the last state stays while disconnected

    ctl2 = Controller()
    ctl2.states["web-1"] = dict(st)     # a restarted controller computes the same state
    _, addr2 = await serve(env, ctl2, addr)
    assert addr2 == addr
    await until(lambda: ctl2.acked("web-1", v), "ACK from the new server")
    assert sc.applied == [(st, v)]          # identical version: not applied again
    assert sc.client.unchanged == 1 and sc.client.version == v and sc.client.connected


async def test_unix_socket(env: dict[str, Any], tmp_path: Path) -> None:
    ctl, addr = await serve(env, address=f"unix:{tmp_path / 'ext.sock'}")
    assert addr == f"unix:{tmp_path / 'ext.sock'}"
    ctl.states["web-1"] = state(cors={})
    sc = sidecar(env, addr, "web-1")
    await asyncio.wait_for(sc.client.wait_ready(), T)
    await until(lambda: ctl.acked("web-1", state_version(ctl.states["web-1"])), "ACK")


async def test_port_in_use(env: dict[str, Any]) -> None:
    _, addr = await serve(env)
    with pytest.raises(OSError):
        await Controller().server.start(addr)


# --- raw streams --------------------------------------------------------------------------------------


def request(*, node: str | None = None, type_url: str = TYPE_URL, nonce: str = "", version: str = "",
            names: tuple[str, ...] = (RESOURCE_NAME,), error: str | None = None) -> Any:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version,
                                         resource_names=list(names))
    if node is not None:
        req.node.CopyFrom(base_pb2.Node(id=node))
    if error is not None:
        req.error_detail.code = 3
        req.error_detail.message = error
    return req


class RawStream:
    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources()
        self.got: list[Any] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                self.got.append(resp)
        except grpc.aio.AioRpcError as e:
            self.error = e

    async def send(self, req: Any) -> None:
        await asyncio.wait_for(self.call.write(req), T)

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        try:
            await self.reader
        except asyncio.CancelledError:
            pass
        await self.channel.close()


async def test_stale_nonce_and_other_types_get_no_pushes(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    ctl.states["raw-1"] = state(cors={})
    raw = RawStream(addr)
    try:
        await raw.send(request(node=node_id("raw-1")))
        await until(lambda: len(raw.got) == 1, "the first response")
        r1 = raw.got[0]
        assert r1.type_url == TYPE_URL and r1.version_info == state_version(ctl.states["raw-1"])
        assert decode_state(r1.resources) == ctl.states["raw-1"]
        await raw.send(request(nonce=r1.nonce, version=r1.version_info))                 # ACK
        await raw.send(request(nonce="stale-nonce", version="whatever"))                # stale
        await raw.send(request(nonce="stale-nonce", error="late NACK"))                 # stale NACK
        await raw.send(request(type_url=CDS, names=()))                                 # another type
        await raw.send(request(type_url=CDS, nonce=r1.nonce, names=("x",)))            # another type
        await until(lambda: ctl.server.stale == 2 and ctl.server.ignored == 2, "the requests")
        await asyncio.sleep(0.2)
        assert len(raw.got) == 1 and raw.error is None and ctl.server.nacks == 0
        assert ctl.acked("raw-1", r1.version_info)
        assert not any(e for _, _, e in ctl.events)

        ctl.states["raw-1"] = state(cors={"allow_origins": "*"})
        ctl.server.notify()
        await until(lambda: len(raw.got) == 2, "the push")
        r2 = raw.got[1]
        assert r2.version_info == state_version(ctl.states["raw-1"]) and r2.nonce != r1.nonce
        # the ACK of the previous nonce is now stale: the node's acked version stays
        await raw.send(request(nonce=r1.nonce, version=r1.version_info))
        await until(lambda: ctl.server.stale == 3, "the stale ACK")
        assert ctl.server.connected()[0].acked_version == r1.version_info
        await raw.send(request(nonce=r2.nonce, version=r2.version_info))
        await until(lambda: ctl.server.connected()[0].acked_version == r2.version_info, "ACK r2")
        # a request without a nonce is a fresh subscription: the full state again
        await raw.send(request(version=r2.version_info))
        await until(lambda: len(raw.got) == 3, "the full state")
        assert raw.got[2].version_info == r2.version_info
        await asyncio.sleep(0.1)
        assert len(raw.got) == 3 and raw.error is None
    finally:
        await raw.close()


async def test_other_resource_names_get_nothing(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    raw = RawStream(addr)
    try:
        await raw.send(request(node=node_id("raw-1"), names=("something.else",)))
        await until(lambda: ctl.server.streams == 1 and bool(ctl.server.connected()), "the stream")
        ctl.server.notify()
        await asyncio.sleep(0.2)
        assert raw.got == [] and raw.error is None
        await raw.send(request(names=()))     # wildcard
        await until(lambda: len(raw.got) == 1, "the wildcard response")
    finally:
        await raw.close()


@pytest.mark.parametrize("first", [request(), request(type_url=CDS), request(node="")])
async def test_missing_node_is_invalid_argument(env: dict[str, Any], first: Any) -> None:
    _, addr = await serve(env)
    raw = RawStream(addr)
    try:
        await raw.send(first)
        await asyncio.wait_for(raw.reader, T)
        assert raw.error is not None and raw.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raw.got == []
    finally:
        await raw.close()


async def test_delta_is_unimplemented(env: dict[str, Any]) -> None:
    _, addr = await serve(env)
    async with grpc.aio.insecure_channel(addr) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            # the server may end the call before the write is done: either step reports it
            await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=TYPE_URL))
            await asyncio.wait_for(call.read(), T)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_client_nacks_garbage_and_ignores_other_types(env: dict[str, Any]) -> None:
    """A misbehaving server: a foreign resource is NACKed, another type is ignored."""
    requests: list[Any] = []
    wrong = any_pb2.Any()
    wrong.Pack(struct_pb2.Struct())
    _, good = encode_state({"plugins": {}})

    class Fake:
        async def StreamAggregatedResources(self, it: Any, context: Any) -> AsyncIterator[Any]:
            first = await it.__anext__()
            requests.append(first)
            yield discovery_pb2.DiscoveryResponse(version_info="x", type_url=CDS, nonce="n0")
            yield discovery_pb2.DiscoveryResponse(version_info="v1", type_url=TYPE_URL, nonce="n1", resources=[wrong])
            requests.append(await it.__anext__())
            yield discovery_pb2.DiscoveryResponse(version_info="v2", type_url=TYPE_URL, nonce="n2", resources=[good])
            requests.append(await it.__anext__())
            await asyncio.sleep(T)

        async def DeltaAggregatedResources(self, it: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no")

    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Fake(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        sc = sidecar(env, f"127.0.0.1:{port}", "web-1")
        await asyncio.wait_for(sc.client.wait_ready(), T)
        await until(lambda: len(requests) == 3, "the ACK")
        first, nack, ack = requests
        assert first.node.id == node_id("web-1") and list(first.resource_names) == [RESOURCE_NAME]
        assert first.version_info == "" and first.response_nonce == ""
        assert nack.response_nonce == "n1" and nack.version_info == "" and nack.error_detail.code == 3
        assert not nack.HasField("node")
        assert ack.response_nonce == "n2" and ack.version_info == "v2" and not ack.HasField("error_detail")
        assert sc.client.ignored == 1 and sc.client.nacks == 1 and sc.client.state == {"plugins": {}}
    finally:
        await sc.stop()
        await server.stop(0)


async def test_cancelling_run_is_clean(env: dict[str, Any]) -> None:
    ctl, addr = await serve(env)
    sc = Sidecar(addr, "web-1").start()
    await asyncio.wait_for(sc.client.wait_ready(), T)
    assert sc.task is not None
    sc.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(sc.task, T)
    assert not sc.client.connected and sc.client.status()["ready"]
    await until(lambda: not ctl.server.connected(), "the server to see the disconnect")
    assert ctl.events[-1][1:] == (None, None)
    await asyncio.wait_for(sc.client.stop(), T)    # stop() after cancellation returns at once
