"""The sans-IO ADS state machine (meshgate.xds.ads) driven with plain messages and a fake applier."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshgate.xds.ads import CDS, EDS, LDS, RDS, AdsSession, AdsState, XdsRejected

HCM = "envoy.filters.network.http_connection_manager"
NDS = "type.googleapis.com/istio.networking.nds.v1.NameTable"


# --- resources -------------------------------------------------------------------------------


def cluster(name: str, *, eds: bool = True, service: str | None = None) -> Any:
    c = cluster_pb2.Cluster(name=name)
    if eds:
        c.type = cluster_pb2.Cluster.EDS
        c.eds_cluster_config.eds_config.ads.SetInParent()
        if service:
            c.eds_cluster_config.service_name = service
    else:
        c.type = cluster_pb2.Cluster.STATIC
    return c


def cla(name: str, ip: str = "10.0.0.1") -> Any:
    m = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    ep = m.endpoints.add().lb_endpoints.add().endpoint
    ep.address.socket_address.address = ip
    ep.address.socket_address.port_value = 80
    return m


def listener(name: str, rds: str | None = None) -> Any:
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "0.0.0.0"
    lst.address.socket_address.port_value = 8080
    h = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    if rds:
        h.rds.route_config_name = rds
        h.rds.config_source.ads.SetInParent()
    else:
        h.route_config.name = "inline"
    f = lst.filter_chains.add().filters.add(name=HCM)
    f.typed_config.Pack(h)
    return lst


def route(name: str) -> Any:
    return route_pb2.RouteConfiguration(name=name)


def pack(msg: Message) -> Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def sotw(type_url: str, version: str, nonce: str, *msgs: Message) -> Any:
    return discovery_pb2.DiscoveryResponse(
        type_url=type_url, version_info=version, nonce=nonce, resources=[pack(m) for m in msgs]
    )


def delta(type_url: str, nonce: str, msgs: Mapping[str, tuple[str, Message]] = {}, *,
          removed: Collection[str] = (), version: str = "") -> Any:
    r = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=nonce, system_version_info=version, removed_resources=list(removed)
    )
    for name, (ver, m) in msgs.items():
        r.resources.add(name=name, version=ver, resource=pack(m))
    return r


# --- the fake applier -----------------------------------------------------------------------


class FakeApplier:
    """Stores what it is given; EDS names from EDS clusters, RDS names from HCMs' rds."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {t: {} for t in (CDS, EDS, LDS, RDS)}
        self.calls: list[tuple[str, list[str], list[str]]] = []
        self.reject: dict[str, str] = {}
        self.crash: set[str] = set()

    def apply(self, type_url: str, updated: Mapping[str, Message], removed: Collection[str]) -> None:
        if type_url in self.reject:
            raise XdsRejected(self.reject[type_url])
        if type_url in self.crash:
            raise RuntimeError("boom")
        self.calls.append((type_url, sorted(updated), sorted(removed)))
        self.store[type_url].update(updated)
        for n in removed:
            del self.store[type_url][n]

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


NODE = base_pb2.Node(id="sidecar~10.1.1.10~pp-1.default~default.svc.cluster.local", cluster="pp.default")


def shape(reqs: list[Any]) -> list[tuple[str, ...]]:
    """(type, version, nonce, names..., 'NACK'?) of SotW requests: what istiod sees."""
    out = []
    for r in reqs:
        row = (r.type_url.rsplit(".", 1)[-1], r.version_info, r.response_nonce, *r.resource_names)
        if r.HasField("error_detail"):
            row += ("NACK",)
        out.append(row)
    return out


def dshape(reqs: list[Any]) -> list[tuple[Any, ...]]:
    out = []
    for r in reqs:
        row: tuple[Any, ...] = (r.type_url.rsplit(".", 1)[-1], r.response_nonce,
                                tuple(r.resource_names_subscribe), tuple(r.resource_names_unsubscribe))
        if r.HasField("error_detail"):
            row += ("NACK",)
        out.append(row)
    return out


SVC_A = "outbound|80||a.default.svc.cluster.local"
SVC_B = "outbound|80||b.default.svc.cluster.local"


def warmed_sotw(app: FakeApplier | None = None) -> tuple[AdsSession, FakeApplier]:
    """A SotW session past CDS v1 (a: EDS, s: STATIC), EDS v1, LDS v1 (rds 80), RDS v1."""
    app = app or FakeApplier()
    s = AdsSession(NODE, app, delta=False)
    s.start()
    s.on_response(sotw(CDS, "v1", "n1", cluster("a", service=SVC_A), cluster("s", eds=False)))
    s.on_response(sotw(EDS, "v1", "n2", cla(SVC_A)))
    s.on_response(sotw(LDS, "v1", "n3", listener("l80", rds="80")))
    s.on_response(sotw(RDS, "v1", "n4", route("80")))
    return s, app


# --- SotW ------------------------------------------------------------------------------------


def test_start_is_cds_wildcard_with_node() -> None:
    s = AdsSession(NODE, FakeApplier(), delta=False)
    (req,) = s.start()
    assert req.type_url == CDS
    assert list(req.resource_names) == []
    assert req.version_info == "" and req.response_nonce == ""
    assert req.node == NODE
    assert not req.HasField("error_detail")
    assert not s.ready


def test_order_cds_eds_ack_lds_rds() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=False)
    sent = s.start()
    out = s.on_response(sotw(CDS, "v1", "n1", cluster("a", service=SVC_A), cluster("s", eds=False)))
    # EDS for the EDS cluster BEFORE the CDS ACK; LDS waits for the cluster to warm.
    assert shape(out) == [("ClusterLoadAssignment", "", "", SVC_A), ("Cluster", "v1", "n1")]
    assert app.store[CDS].keys() == {"a", "s"}
    sent += out
    out = s.on_response(sotw(EDS, "v1", "n2", cla(SVC_A)))
    # Envoy: the LDS request goes before the ACK of the response that warmed the clusters.
    assert shape(out) == [("Listener", "", ""), ("ClusterLoadAssignment", "v1", "n2", SVC_A)]
    assert not s.ready
    sent += out
    out = s.on_response(sotw(LDS, "v1", "n3", listener("l80", rds="80"), listener("inbound")))
    assert shape(out) == [("RouteConfiguration", "", "", "80"), ("Listener", "v1", "n3")]
    assert s.ready
    sent += out
    out = s.on_response(sotw(RDS, "v1", "n4", route("80")))
    assert shape(out) == [("RouteConfiguration", "v1", "n4", "80")]
    sent += out
    # The Node rides on the first request of the stream only.
    assert [r.HasField("node") for r in sent] == [True] + [False] * (len(sent) - 1)
    st = s.stats.types
    assert (st[CDS].acks, st[EDS].acks, st[LDS].acks, st[RDS].acks) == (1, 1, 1, 1)
    assert st[LDS].version == "v1" and st[LDS].acked_nonce == "n3" and st[LDS].resources == 2


def test_lds_right_after_cds_ack_without_eds_clusters() -> None:
    s = AdsSession(NODE, FakeApplier(), delta=False)
    s.start()
    out = s.on_response(sotw(CDS, "v1", "n1", cluster("s", eds=False)))
    assert shape(out) == [("Listener", "", ""), ("Cluster", "v1", "n1")]


def test_lds_after_all_initial_clusters_warm_and_flush() -> None:
    s = AdsSession(NODE, FakeApplier(), delta=False)
    s.start()
    s.on_response(sotw(CDS, "v1", "n1", cluster("a", service=SVC_A), cluster("b", service=SVC_B)))
    # istiod's partial EDS answer: only a → still warming b.
    out = s.on_response(sotw(EDS, "v1", "n2", cla(SVC_A)))
    assert shape(out) == [("ClusterLoadAssignment", "v1", "n2", SVC_A, SVC_B)]
    assert s.lds_pending
    out = s.on_response(sotw(EDS, "v2", "n3", cla(SVC_B)))
    assert [r.type_url for r in out] == [LDS, EDS]
    # flush_warming is a no-op once LDS is subscribed.
    assert s.flush_warming() == []


def test_flush_warming_subscribes_lds() -> None:
    s = AdsSession(NODE, FakeApplier(), delta=False)
    s.start()
    s.on_response(sotw(CDS, "v1", "n1", cluster("a")))
    assert s.lds_pending
    assert shape(s.flush_warming()) == [("Listener", "", "")]
    assert not s.lds_pending
    # The late EDS response does not subscribe LDS a second time.
    assert [r.type_url for r in s.on_response(sotw(EDS, "v1", "n2", cla("a")))] == [EDS]


def test_eds_nack_ends_warming() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=False)
    s.start()
    s.on_response(sotw(CDS, "v1", "n1", cluster("a")))
    app.reject[EDS] = "bad endpoints"
    out = s.on_response(sotw(EDS, "v1", "n2", cla("a")))
    assert shape(out) == [("Listener", "", ""), ("ClusterLoadAssignment", "", "n2", "a", "NACK")]


def test_nack_fields_previous_version_nothing_applied() -> None:
    s, app = warmed_sotw()
    before = dict(app.store[CDS])
    calls = len(app.calls)
    app.reject[CDS] = "cluster a: lb_policy: unsupported"
    (nack,) = s.on_response(sotw(CDS, "v2", "n5", cluster("a", service=SVC_A), cluster("z", eds=False)))
    assert nack.type_url == CDS
    assert nack.version_info == "v1"        # the previous good version
    assert nack.response_nonce == "n5"      # the rejected response's nonce
    assert list(nack.resource_names) == []  # still wildcard
    assert nack.error_detail.code == 3      # INVALID_ARGUMENT
    assert nack.error_detail.message == "cluster a: lb_policy: unsupported"
    assert app.store[CDS] == before and len(app.calls) == calls
    st = s.stats.types[CDS]
    assert (st.nacks, st.last_nack, st.version) == (1, "cluster a: lb_policy: unsupported", "v1")
    assert s.stats.last_nack == "CDS: cluster a: lb_policy: unsupported"
    # The next good push is ACKed with its own version.
    del app.reject[CDS]
    out = s.on_response(sotw(CDS, "v3", "n6", cluster("a", service=SVC_A)))
    assert shape(out)[-1] == ("Cluster", "v3", "n6")
    # NACK before any accepted version: version_info stays empty; a rejected first CDS still
    # lets initialization go on to LDS (Envoy completes CDS init on a rejected update).
    s2 = AdsSession(NODE, FakeApplier(), delta=False)
    s2.start()
    s2.applier.reject[CDS] = "no"  # type: ignore[attr-defined]
    out = s2.on_response(sotw(CDS, "v9", "m1", cluster("a")))
    assert shape(out) == [("Listener", "", ""), ("Cluster", "", "m1", "NACK")]


def test_mismatched_or_undecodable_resource_nacks_whole_response() -> None:
    s, app = warmed_sotw()
    calls = len(app.calls)
    resp = sotw(CDS, "v2", "n5", cluster("ok", eds=False))
    resp.resources.append(pack(listener("intruder")))
    (nack,) = s.on_response(resp)
    assert nack.HasField("error_detail") and "envoy.config.listener.v3.Listener" in nack.error_detail.message
    assert nack.version_info == "v1"
    resp = sotw(CDS, "v3", "n6", cluster("ok", eds=False))
    resp.resources.add(type_url=CDS, value=b"\xff\xff\xff")
    (nack,) = s.on_response(resp)
    assert "undecodable" in nack.error_detail.message
    (nack,) = s.on_response(sotw(CDS, "v4", "n7", cluster("d", eds=False), cluster("d", eds=False)))
    assert "duplicate" in nack.error_detail.message
    (nack,) = s.on_response(sotw(CDS, "v5", "n8", cluster("", eds=False)))
    assert "no name" in nack.error_detail.message
    assert len(app.calls) == calls
    assert s.stats.types[CDS].nacks == 4


def test_applier_crash_is_a_nack_not_a_dead_stream() -> None:
    s, app = warmed_sotw()
    app.crash.add(RDS)
    (nack,) = s.on_response(sotw(RDS, "v2", "n5", route("80")))
    assert "internal error" in nack.error_detail.message and nack.version_info == "v1"


def test_resource_wrapper_is_unwrapped() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=False)
    s.start()
    resp = sotw(CDS, "v1", "n1")
    resp.resources.append(pack(discovery_pb2.Resource(name="w", resource=pack(cluster("w", eds=False)))))
    out = s.on_response(resp)
    assert not out[0].HasField("error_detail") and "w" in app.store[CDS]


def test_wildcard_sotw_removes_absent_and_acks_without_names() -> None:
    s, app = warmed_sotw()
    out = s.on_response(sotw(CDS, "v2", "n5", cluster("a", service=SVC_A)))
    assert app.calls[-1] == (CDS, ["a"], ["s"])
    assert app.store[CDS].keys() == {"a"}
    # Never narrow the wildcard by echoing the names received (Amesh's bug).
    assert shape(out) == [("Cluster", "v2", "n5")]
    out = s.on_response(sotw(LDS, "v2", "n6"))   # empty LDS: every listener goes
    assert app.calls[-2:] == [(LDS, [], ["l80"]), (RDS, [], ["80"])]
    # RDS unsubscribed (empty names) before the LDS ACK.
    assert shape(out) == [("RouteConfiguration", "v1", "n4"), ("Listener", "v2", "n6")]


def test_eds_partial_push_updates_only_present() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=False)
    s.start()
    s.on_response(sotw(CDS, "v1", "n1", cluster("a", service=SVC_A), cluster("b", service=SVC_B)))
    s.on_response(sotw(EDS, "v1", "n2", cla(SVC_A), cla(SVC_B)))
    out = s.on_response(sotw(EDS, "v2", "n3", cla(SVC_B, "10.0.0.9")))   # istiod "PUSH INC"
    assert app.calls[-1] == (EDS, [SVC_B], [])
    assert app.store[EDS].keys() == {SVC_A, SVC_B}
    assert app.store[EDS][SVC_B].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.0.0.9"
    # The ACK names every subscribed name, not just those received.
    assert shape(out) == [("ClusterLoadAssignment", "v2", "n3", SVC_A, SVC_B)]


def test_named_response_ignores_unsubscribed_names() -> None:
    s, app = warmed_sotw()
    s.on_response(sotw(EDS, "v2", "n5", cla(SVC_A), cla("stranger")))
    assert "stranger" not in app.store[EDS]
    assert s.stats.types[EDS].ignored_resources == 1


def test_unsubscribe_drops_resources_and_sends_names() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=False)
    s.start()
    s.on_response(sotw(CDS, "v1", "n1", cluster("a", service=SVC_A), cluster("b", service=SVC_B)))
    s.on_response(sotw(EDS, "v1", "n2", cla(SVC_A), cla(SVC_B)))
    out = s.on_response(sotw(CDS, "v2", "n3", cluster("b", service=SVC_B)))
    # Narrowed EDS subscription (with EDS's latest nonce) before the CDS ACK; a's CLA dropped.
    assert shape(out) == [("ClusterLoadAssignment", "v1", "n2", SVC_B), ("Cluster", "v2", "n3")]
    assert (EDS, [], [SVC_A]) in app.calls and app.store[EDS].keys() == {SVC_B}
    out = s.on_response(sotw(CDS, "v3", "n4", cluster("s", eds=False)))
    # Nothing wanted: empty resource_names on a named type = unsubscribe.
    assert shape(out) == [("ClusterLoadAssignment", "v1", "n2"), ("Cluster", "v3", "n4")]
    assert app.store[EDS] == {}
    # A late EDS response for the dropped watch is ignored, not ACKed.
    assert s.on_response(sotw(EDS, "v3", "n5", cla(SVC_B))) == []
    assert app.store[EDS] == {} and s.stats.ignored_types[EDS] == 1
    # Re-subscribing later asks again.
    out = s.on_response(sotw(CDS, "v4", "n6", cluster("a", service=SVC_A)))
    assert shape(out)[0] == ("ClusterLoadAssignment", "v1", "n2", SVC_A)


def test_requests_carry_the_latest_nonce_of_their_type() -> None:
    s, app = warmed_sotw()
    # Two EDS pushes; then a CDS change adds a cluster: the EDS subscription change must carry
    # the latest EDS nonce (n6), not the first one, else istiod drops it as stale.
    s.on_response(sotw(EDS, "v2", "n5", cla(SVC_A)))
    s.on_response(sotw(EDS, "v3", "n6", cla(SVC_A)))
    out = s.on_response(sotw(CDS, "v3", "n7", cluster("a", service=SVC_A), cluster("b", service=SVC_B)))
    assert shape(out) == [("ClusterLoadAssignment", "v3", "n6", SVC_A, SVC_B), ("Cluster", "v3", "n7")]
    # Unchanged names: a plain ACK, no subscription request.
    out = s.on_response(sotw(CDS, "v4", "n8", cluster("a", service=SVC_A), cluster("b", service=SVC_B)))
    assert shape(out) == [("Cluster", "v4", "n8")]


def test_unknown_and_unsubscribed_types_are_ignored() -> None:
    s = AdsSession(NODE, FakeApplier(), delta=False)
    s.start()
    nds = discovery_pb2.DiscoveryResponse(type_url=NDS, version_info="v1", nonce="x")
    nds.resources.add(type_url=NDS, value=b"\x01\x02")
    assert s.on_response(nds) == []
    assert s.on_response(sotw(RDS, "v1", "y", route("80"))) == []   # RDS not subscribed yet
    assert s.stats.ignored_types == {NDS: 1, RDS: 1}
    assert s.stats.as_dict()["ignored_types"] == {NDS: 1, RDS: 1}


def test_wrong_response_flavour_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        AdsSession(NODE, FakeApplier(), delta=False).on_response(discovery_pb2.DeltaDiscoveryResponse())
    with pytest.raises(TypeError):
        AdsSession(NODE, FakeApplier(), delta=True).on_response(discovery_pb2.DiscoveryResponse())


def test_reconnect_sotw_resubscribes_with_last_versions() -> None:
    s, app = warmed_sotw()
    app.reject[CDS] = "nope"
    s.on_response(sotw(CDS, "v2", "n5", cluster("a", service=SVC_A)))   # NACKed: v1 stays
    del app.reject[CDS]
    s2 = AdsSession(NODE, app, delta=False, state=s.state)
    assert s2.ready   # the last good config keeps serving across the reconnect
    out = s2.start()
    assert shape(out) == [
        ("Cluster", "v1", ""),
        ("ClusterLoadAssignment", "v1", "", SVC_A),
        ("Listener", "v1", ""),
        ("RouteConfiguration", "v1", "", "80"),
    ]
    assert [r.HasField("node") for r in out] == [True, False, False, False]
    # The full response of the fresh stream removes what is gone.
    out = s2.on_response(sotw(CDS, "v7", "m1", cluster("a", service=SVC_A)))
    assert app.calls[-1] == (CDS, ["a"], ["s"])
    assert shape(out) == [("Cluster", "v7", "m1")]   # LDS already subscribed: not again


def test_reconnect_before_lds_waits_again() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=False)
    s.start()
    s.on_response(sotw(CDS, "v1", "n1", cluster("a")))   # warming a; stream dies
    s2 = AdsSession(NODE, app, delta=False, state=s.state)
    assert shape(s2.start()) == [("Cluster", "v1", ""), ("ClusterLoadAssignment", "", "", "a")]
    out = s2.on_response(sotw(CDS, "v1", "m1", cluster("a")))
    assert shape(out) == [("Cluster", "v1", "m1")]
    out = s2.on_response(sotw(EDS, "v1", "m2", cla("a")))
    assert [r.type_url for r in out] == [LDS, EDS]


# --- Delta -----------------------------------------------------------------------------------


def test_delta_flow_add_ack_order() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=True)
    (first,) = s.start()
    assert isinstance(first, discovery_pb2.DeltaDiscoveryRequest)
    assert first.type_url == CDS and list(first.resource_names_subscribe) == [] and first.node == NODE
    out = s.on_response(delta(CDS, "d1", {"a": ("1", cluster("a", service=SVC_A)), "s": ("1", cluster("s", eds=False))}))
    assert dshape(out) == [("ClusterLoadAssignment", "", (SVC_A,), ()), ("Cluster", "d1", (), ())]
    out = s.on_response(delta(EDS, "d2", {SVC_A: ("e1", cla(SVC_A))}))
    assert dshape(out) == [("Listener", "", (), ()), ("ClusterLoadAssignment", "d2", (), ())]
    out = s.on_response(delta(LDS, "d3", {"l80": ("1", listener("l80", rds="80"))}, version="sys1"))
    assert dshape(out) == [("RouteConfiguration", "", ("80",), ()), ("Listener", "d3", (), ())]
    assert s.ready and s.stats.types[LDS].version == "sys1"
    out = s.on_response(delta(RDS, "d4", {"80": ("r1", route("80"))}))
    assert dshape(out) == [("RouteConfiguration", "d4", (), ())]
    assert [r.HasField("node") for r in [first]] == [True]
    assert not any(r.HasField("node") for r in out)
    assert s.state.watches[CDS].resources == {"a": "1", "s": "1"}


def test_delta_removed_resources() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=True)
    s.start()
    s.on_response(delta(CDS, "d1", {"a": ("1", cluster("a", eds=False)), "b": ("1", cluster("b", eds=False))}))
    out = s.on_response(delta(CDS, "d2", {"a": ("2", cluster("a", eds=False))}, removed=["b", "never-seen"]))
    assert app.calls[-1] == (CDS, ["a"], ["b"])
    assert app.store[CDS].keys() == {"a"}
    assert dshape(out) == [("Cluster", "d2", (), ())]
    assert s.state.watches[CDS].resources == {"a": "2"}


def test_delta_nack() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=True)
    s.start()
    s.on_response(delta(CDS, "d1", {"a": ("1", cluster("a", eds=False))}))
    app.reject[CDS] = "cluster a: bad"
    (nack,) = s.on_response(delta(CDS, "d2", {"a": ("2", cluster("a", eds=False))}, removed=[]))
    assert nack.response_nonce == "d2"
    assert nack.error_detail.code == 3 and nack.error_detail.message == "cluster a: bad"
    assert s.state.watches[CDS].resources == {"a": "1"}
    # A resource whose declared name does not match its body is rejected whole.
    del app.reject[CDS]
    (nack,) = s.on_response(delta(CDS, "d3", {"x": ("1", cluster("y", eds=False))}))
    assert "carries" in nack.error_detail.message
    (nack,) = s.on_response(delta(CDS, "d4", {"a": ("3", cluster("a", eds=False))}, removed=["a"]))
    assert "both updated and removed" in nack.error_detail.message
    assert s.stats.types[CDS].nacks == 3


def test_delta_unsubscribe() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=True)
    s.start()
    s.on_response(delta(CDS, "d1", {"a": ("1", cluster("a")), "b": ("1", cluster("b"))}))
    s.on_response(delta(EDS, "d2", {"a": ("1", cla("a")), "b": ("1", cla("b"))}))
    out = s.on_response(delta(CDS, "d3", {"c": ("1", cluster("c"))}, removed=["a"]))
    assert dshape(out) == [("ClusterLoadAssignment", "", ("c",), ("a",)), ("Cluster", "d3", (), ())]
    assert app.store[EDS].keys() == {"b"}
    assert s.state.watches[EDS].resources == {"b": "1"}


def test_delta_reconnect_initial_resource_versions() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=True)
    s.start()
    s.on_response(delta(CDS, "d1", {"a": ("c1", cluster("a")), "s": ("c2", cluster("s", eds=False))}))
    s.on_response(delta(EDS, "d2", {"a": ("e1", cla("a"))}))
    s.on_response(delta(LDS, "d3", {"l": ("l1", listener("l", rds="80"))}))
    s2 = AdsSession(NODE, app, delta=True, state=s.state)
    out = s2.start()
    assert [r.type_url for r in out] == [CDS, EDS, LDS, RDS]
    cds, eds, lds, rds = out
    assert cds.node == NODE and not eds.HasField("node")
    assert list(cds.resource_names_subscribe) == []   # wildcard: no names, as Envoy does
    assert dict(cds.initial_resource_versions) == {"a": "c1", "s": "c2"}
    assert list(eds.resource_names_subscribe) == ["a"] and dict(eds.initial_resource_versions) == {"a": "e1"}
    assert dict(lds.initial_resource_versions) == {"l": "l1"}
    assert list(rds.resource_names_subscribe) == ["80"] and dict(rds.initial_resource_versions) == {}
    assert all(r.response_nonce == "" for r in out)


def test_delta_ignores_unknown_type_and_heartbeats() -> None:
    app = FakeApplier()
    s = AdsSession(NODE, app, delta=True)
    s.start()
    assert s.on_response(discovery_pb2.DeltaDiscoveryResponse(type_url=NDS, nonce="z")) == []
    r = delta(CDS, "d1", {"a": ("1", cluster("a", eds=False))})
    r.resources.add(name="hb", version="1")   # name-only entry: a TTL heartbeat
    out = s.on_response(r)
    assert not out[0].HasField("error_detail") and app.store[CDS].keys() == {"a"}
    assert s.stats.ignored_types == {NDS: 1}


def test_state_subscriptions_view() -> None:
    s, _ = warmed_sotw()
    assert s.state.subscriptions() == {CDS: None, EDS: [SVC_A], LDS: None, RDS: ["80"]}
    assert isinstance(AdsState().subscriptions(), dict)


def test_reconnect_sotw_rerequests_an_emptied_named_type() -> None:
    # Envoy 1.40 (oracle): after every EDS name went away, a new SotW stream still asks for EDS,
    # with no names; Delta does not.
    for delta_mode, expected in ((False, [CDS, EDS, LDS]), (True, [CDS, LDS])):
        app = FakeApplier()
        s = AdsSession(NODE, app, delta=delta_mode)
        s.start()
        if delta_mode:
            s.on_response(delta(CDS, "d1", {"a": ("1", cluster("a"))}))
            s.on_response(delta(EDS, "d2", {"a": ("1", cla("a"))}))
            s.on_response(delta(CDS, "d3", {"s": ("1", cluster("s", eds=False))}, removed=["a"]))
        else:
            s.on_response(sotw(CDS, "v1", "n1", cluster("a")))
            s.on_response(sotw(EDS, "v1", "n2", cla("a")))
            s.on_response(sotw(CDS, "v2", "n3", cluster("s", eds=False)))
        out = AdsSession(NODE, app, delta=delta_mode, state=s.state).start()
        assert [r.type_url for r in out] == expected
        if not delta_mode:
            assert list(out[1].resource_names) == [] and out[1].version_info == "v1"
