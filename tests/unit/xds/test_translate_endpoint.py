"""EDS ClusterLoadAssignment → APISIX nodes, and Envoy's host selection (priority, health,
panic, locality weights), checked against the tables of Envoy's load-balancing docs and
through the real UpstreamRuntime / balancers."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from meshgate.errors import ConfigError
from meshgate.proxy.runtime import UpstreamRuntime
from meshgate.upstream import DictContext
from meshgate.xds.translate.endpoint import select_nodes, translate_cla

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def cla(d: dict[str, Any]) -> Any:
    return json_format.ParseDict(d, endpoint_pb2.ClusterLoadAssignment())


def lb(addr: str, port: int = 9080, *, status: str = "HEALTHY", weight: int | None = 1,
       workload: str | None = None, tls: bool = True) -> dict[str, Any]:
    """One lb_endpoint exactly as istiod's EDS builder emits it."""
    e: dict[str, Any] = {
        "endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}, "health_check_config": {}},
        "health_status": status,
    }
    if weight is not None:
        e["load_balancing_weight"] = weight
    fm: dict[str, Any] = {}
    if tls:
        fm["envoy.transport_socket_match"] = {"tlsMode": "istio"}
    if workload:
        fm["istio"] = {"workload": workload}
    if fm:
        e["metadata"] = {"filter_metadata": fm}
    return e


def group(eps: list[dict[str, Any]], *, priority: int = 0, weight: int | None = None,
          zone: str = "", region: str = "") -> dict[str, Any]:
    g: dict[str, Any] = {"locality": {"region": region, "zone": zone} if (zone or region) else {},
                         "lb_endpoints": eps}
    if priority:
        g["priority"] = priority
    g["load_balancing_weight"] = weight if weight is not None else len(eps)
    return g


def assignment(*groups: dict[str, Any], name: str = REVIEWS) -> Any:
    return cla({"cluster_name": name, "endpoints": list(groups), "policy": {"overprovisioning_factor": 140}})


# The reviews CLA of istio/istio 1.30.3 istioctl/pkg/writer/envoy/configdump/testdata/endpoint.
BOOKINFO_REVIEWS = {
    "cluster_name": REVIEWS,
    "endpoints": [{
        "locality": {},
        "lb_endpoints": [
            lb("10.244.0.192", workload="reviews-v3;default;reviews;v3;Kubernetes"),
            lb("10.244.0.193", workload="reviews-v2;default;reviews;v2;Kubernetes"),
            lb("10.244.0.195", workload="reviews-v1;default;reviews;v1;Kubernetes"),
        ],
        "load_balancing_weight": 3,
    }],
    "policy": {"overprovisioning_factor": 140},
}


def shares(nodes: list[dict[str, Any]]) -> dict[str, float]:
    """Traffic share per host of the top APISIX priority group."""
    top = max(n["priority"] for n in nodes)
    grp = [n for n in nodes if n["priority"] == top]
    total = sum(n["weight"] for n in grp)
    return {n["host"]: n["weight"] / total for n in grp}


def runtime(nodes: list[dict[str, Any]], kind: str = "roundrobin") -> UpstreamRuntime:
    return UpstreamRuntime("upstreams/test", {"type": kind, "nodes": nodes, "retries": 0})


def picks(rt: UpstreamRuntime, n: int = 1000) -> Counter[str]:
    ctx = DictContext({"remote_addr": "10.0.0.1"})
    return Counter(node.host for node in (rt.balancer.pick(ctx, healthy=rt.healthy) for _ in range(n))
                   if node is not None)


# ------------------------------------------------------------------ translate_cla


def test_bookinfo_reviews_cla() -> None:
    nodes = translate_cla(cla(BOOKINFO_REVIEWS))
    assert [(n["host"], n["port"], n["weight"], n["priority"]) for n in nodes] == [
        ("10.244.0.192", 9080, 1, 0), ("10.244.0.193", 9080, 1, 0), ("10.244.0.195", 9080, 1, 0)]
    md = nodes[2]["metadata"]
    assert md["workload"] == {"name": "reviews-v1", "namespace": "default", "canonical_service": "reviews",
                              "canonical_revision": "v1", "cluster_id": "Kubernetes"}
    assert md["tls_mode"] == "istio"
    assert md["health_status"] == "HEALTHY"
    assert md["locality"] == {"region": "", "zone": "", "sub_zone": ""}
    assert md["locality_weight"] == 3
    assert md["envoy_priority"] == 0
    assert md["overprovisioning_factor"] == 140
    assert md["filter_metadata"]["istio"] == {"workload": "reviews-v1;default;reviews;v1;Kubernetes"}
    # compiles and balances evenly, as Envoy's LEAST_REQUEST/ROUND_ROBIN over equal weights
    rt = runtime(select_nodes(nodes), "least_conn")
    assert len(rt.nodes) == 3
    assert set(picks(rt, 30).values()) == {10}


def test_workload_without_canonical_names_and_no_tls_mode() -> None:
    c = assignment(group([lb("10.244.0.175", 15017, workload="istiod;istio-system;;;Kubernetes", tls=False)]))
    (n,) = translate_cla(c)
    assert n["metadata"]["tls_mode"] is None
    assert n["metadata"]["workload"]["canonical_service"] == ""
    assert n["metadata"]["workload"]["cluster_id"] == "Kubernetes"


def test_unset_weight_defaults_to_one_and_status_unknown() -> None:
    e = lb("10.0.0.1", weight=None)
    del e["health_status"]
    (n,) = translate_cla(assignment(group([e])))
    assert n["weight"] == 1
    assert n["metadata"]["health_status"] == "UNKNOWN"
    assert select_nodes([n])[0]["host"] == "10.0.0.1"   # UNKNOWN serves, as HEALTHY


def test_ipv6_endpoints() -> None:
    nodes = translate_cla(assignment(group([lb("fd00:10:244::5"), lb("[fd00:10:244::6]")])))
    assert [n["host"] for n in nodes] == ["fd00:10:244::5", "fd00:10:244::6"]
    rt = runtime(select_nodes(nodes))
    assert [n.addr for n in rt.nodes] == ["[fd00:10:244::5]:9080", "[fd00:10:244::6]:9080"]


def test_zero_endpoint_cla() -> None:
    assert translate_cla(cla({"cluster_name": REVIEWS})) == []
    assert translate_cla(cla({"cluster_name": REVIEWS, "endpoints": [{"locality": {}}]})) == []
    assert select_nodes([]) == []


def test_pipe_and_internal_addresses_are_skipped_with_a_stat() -> None:
    # the sds-grpc / xds-grpc CLAs of an istio-proxy bootstrap
    c = cla({"cluster_name": "sds-grpc", "endpoints": [{"locality": {}, "lb_endpoints": [
        {"endpoint": {"address": {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}},
                      "health_check_config": {}}, "health_status": "HEALTHY", "load_balancing_weight": 1},
        {"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": "connect_originate"}}}},
        lb("127.0.0.1", 15020, tls=False)]}]})
    stats: dict[str, int] = {}
    nodes = translate_cla(c, stats=stats)
    assert [n["host"] for n in nodes] == ["127.0.0.1"]
    assert stats == {"skipped_pipe": 1, "skipped_internal": 1}


def test_named_endpoints() -> None:
    c = cla({"cluster_name": "x", "named_endpoints": {"a": {"address": {"socket_address": {
        "address": "10.0.0.7", "port_value": 80}}}}, "endpoints": [{"lb_endpoints": [{"endpoint_name": "a"}]}]})
    assert translate_cla(c)[0]["host"] == "10.0.0.7"
    bad = cla({"cluster_name": "x", "endpoints": [{"lb_endpoints": [{"endpoint_name": "nope"}]}]})
    with pytest.raises(ConfigError) as ei:
        translate_cla(bad)
    assert str(ei.value) == ("endpoints id=x: /endpoints/0/lb_endpoints/0/endpoint_name: unknown named endpoint "
                             "'nope': expected a key of named_endpoints")


@pytest.mark.parametrize("endpoint, pointer, message", [
    ({"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}},
      "load_balancing_weight": 0},
     "/endpoints/0/lb_endpoints/0/load_balancing_weight", "expected an integer >= 1 (Envoy default 1)"),
    ({"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "named_port": "http"}}}},
     "/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/named_port",
     "named ports are not supported: expected port_value"),
    ({"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 53, "protocol": "UDP"}}}},
     "/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/protocol",
     "UDP endpoints are not supported: expected TCP"),
    ({"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 0}}}},
     "/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value",
     "invalid port 0: expected an integer in 1..65535"),
    ({"endpoint": {"address": {"socket_address": {"address": "", "port_value": 80}}}},
     "/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/address",
     "required: a non-empty IP address or host name"),
    ({"endpoint": {"address": {"socket_address": {"address": "x", "port_value": 80, "resolver_name": "r"}}}},
     "/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/resolver_name",
     "custom resolver 'r' is not supported: expected none"),
    ({"endpoint": {}}, "/endpoints/0/lb_endpoints/0/endpoint/address",
     "required: a socket_address {address, port_value}"),
])
def test_invalid_endpoints(endpoint: dict[str, Any], pointer: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        translate_cla(cla({"cluster_name": REVIEWS, "endpoints": [{"lb_endpoints": [endpoint]}]}))
    e = ei.value
    assert (e.kind, e.id, e.pointer, e.message) == ("endpoints", REVIEWS, pointer, message)
    assert str(e) == f"endpoints id={REVIEWS}: {pointer}: {message}"


def test_zero_locality_weight_leds_and_bad_policy() -> None:
    # Envoy's own config dump writes 0 for an unset locality weight: read as unset
    (n,) = translate_cla(cla({"cluster_name": "c", "endpoints": [
        {"load_balancing_weight": 0, "lb_endpoints": [lb("10.0.0.1")]}]}))
    assert n["metadata"]["locality_weight"] is None
    with pytest.raises(ConfigError, match="LEDS is not supported"):
        translate_cla(cla({"cluster_name": "c", "endpoints": [{"leds_cluster_locality_config": {}}]}))
    with pytest.raises(ConfigError, match="overprovisioning_factor: expected an integer > 0"):
        translate_cla(cla({"cluster_name": "c", "policy": {"overprovisioning_factor": 0}}))


# ------------------------------------------------------------------ health


@pytest.mark.parametrize("status", ["UNHEALTHY", "DRAINING", "TIMEOUT"])
def test_unavailable_statuses_are_left_out(status: str) -> None:
    nodes = translate_cla(assignment(group([lb(f"10.0.0.{i}") for i in range(1, 5)] + [lb("10.0.0.9", status=status)])))
    out = select_nodes(nodes)
    assert [n["host"] for n in out] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


def test_degraded_only_when_healthy_run_short() -> None:
    # 7 healthy + 1 degraded: 140*7//8 = 122 -> 100% to healthy hosts
    eps = [lb(f"10.0.0.{i}") for i in range(1, 8)] + [lb("10.0.1.1", status="DEGRADED")]
    out = select_nodes(translate_cla(assignment(group(eps))))
    assert "10.0.1.1" not in {n["host"] for n in out}
    # nothing healthy: degraded hosts take everything
    out = select_nodes(translate_cla(assignment(group([lb("10.0.1.1", status="DEGRADED"),
                                                       lb("10.0.1.2", status="UNHEALTHY")]))))
    assert [n["host"] for n in out] == ["10.0.1.1"]


@pytest.mark.parametrize("healthy, degraded, unhealthy, to_healthy, to_degraded", [
    # Envoy docs, load_balancing/degraded.rst (host counts chosen to give those percentages)
    (100, 0, 0, 100, 0),
    (71, 0, 29, 100, 0),
    (71, 29, 0, 99, 1),
    (5, 13, 2, 35, 65),     # 25%/65%/10%
    (1, 0, 19, 100, 0),     # 5%/0%/95%: 7% health, normalized 7 -> all of it (panic)
])
def test_degraded_spillover_table(healthy: int, degraded: int, unhealthy: int, to_healthy: int,
                                  to_degraded: int) -> None:
    eps = ([lb(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(healthy)]
           + [lb(f"10.2.{i // 250}.{i % 250 + 1}", status="DEGRADED") for i in range(degraded)]
           + [lb(f"10.3.{i // 250}.{i % 250 + 1}", status="UNHEALTHY") for i in range(unhealthy)])
    out = select_nodes(translate_cla(assignment(group(eps))), 0)   # panic off: pure spill-over
    s = shares(out)
    got_h = sum(v for k, v in s.items() if k.startswith("10.1."))
    got_d = sum(v for k, v in s.items() if k.startswith("10.2."))
    assert round(got_h * 100) == to_healthy
    assert round(got_d * 100) == to_degraded
    assert not any(k.startswith("10.3.") for k in s)


# ------------------------------------------------------------------ priorities


def two_levels(p0_healthy: int, p0_total: int, p1_healthy: int, p1_total: int) -> list[dict[str, Any]]:
    g0 = group([lb(f"10.0.0.{i + 1}", status="HEALTHY" if i < p0_healthy else "UNHEALTHY")
                for i in range(p0_total)], zone="a")
    g1 = group([lb(f"10.0.1.{i + 1}", status="HEALTHY" if i < p1_healthy else "UNHEALTHY")
                for i in range(p1_total)], zone="b", priority=1)
    return translate_cla(assignment(g0, g1))


def test_envoy_priority_maps_to_apisix_priority_order() -> None:
    nodes = two_levels(2, 2, 2, 2)
    assert [n["priority"] for n in nodes] == [0, 0, -1, -1]
    assert [n["metadata"]["envoy_priority"] for n in nodes] == [0, 0, 1, 1]


def test_priority_zero_only_while_healthy_then_failover() -> None:
    out = select_nodes(two_levels(3, 3, 2, 2))
    assert [(n["host"], n["priority"]) for n in out] == [
        ("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.3", 0), ("10.0.1.1", -1), ("10.0.1.2", -1)]
    rt = runtime(out)
    assert set(picks(rt, 60)) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    # the runtime health owner marks every P0 node unhealthy: APISIX fails over to P1
    rt.unhealthy = frozenset({"10.0.0.1:9080", "10.0.0.2:9080", "10.0.0.3:9080"})
    assert set(picks(rt, 60)) == {"10.0.1.1", "10.0.1.2"}
    # and a request that tried every P0 node reaches P1 too (retries)
    rt.unhealthy = frozenset()
    tried = {n for n in rt.nodes if n.priority == 0}
    got = rt.balancer.pick(DictContext(), tried=tried, healthy=rt.healthy)
    assert got is not None and got.host.startswith("10.0.1.")


@pytest.mark.parametrize("p0_healthy, p0_total, to_p0", [
    # Envoy docs, load_balancing/priority.rst, 2 levels with P1 100% healthy
    (4, 4, 100), (18, 25, 100), (71, 100, 99), (1, 2, 70), (1, 4, 35), (0, 4, 0),
])
def test_priority_spillover_table(p0_healthy: int, p0_total: int, to_p0: int) -> None:
    g0 = group([lb(f"10.0.{i // 250}.{i % 250 + 1}", status="HEALTHY" if i < p0_healthy else "UNHEALTHY")
                for i in range(p0_total)])
    g1 = group([lb("10.9.0.1"), lb("10.9.0.2")], priority=1)
    out = select_nodes(translate_cla(assignment(g0, g1)))
    s = shares(out)
    assert round(sum(v for k, v in s.items() if k.startswith("10.0.")) * 100) == to_p0
    assert round(sum(v for k, v in s.items() if k.startswith("10.9.")) * 100) == 100 - to_p0
    if to_p0 == 100:
        assert {n["priority"] for n in out if n["host"].startswith("10.9.")} == {-1}   # failover group


def test_spillover_balances_like_envoy_through_the_runtime() -> None:
    # P0 2 of 4 healthy -> 70% to P0 (35% per healthy host), 30% to P1 (15% each)
    out = select_nodes(two_levels(2, 4, 2, 2))
    assert [(n["host"], n["weight"], n["priority"]) for n in out] == [
        ("10.0.0.1", 7, 0), ("10.0.0.2", 7, 0), ("10.0.1.1", 3, 0), ("10.0.1.2", 3, 0)]
    got = picks(runtime(out), 2000)
    assert got == Counter({"10.0.0.1": 700, "10.0.0.2": 700, "10.0.1.1": 300, "10.0.1.2": 300})


def test_three_levels_table_row() -> None:
    # priority.rst: 25% / 25% / 100% -> 35% / 35% / 30%
    g = [group([lb(f"10.{p}.0.{i + 1}", status="HEALTHY" if i == 0 else "UNHEALTHY") for i in range(4)], priority=p)
         for p in (0, 1)]
    g.append(group([lb("10.2.0.1"), lb("10.2.0.2")], priority=2))
    s = shares(select_nodes(translate_cla(assignment(*g))))
    assert s == pytest.approx({"10.0.0.1": 0.35, "10.1.0.1": 0.35, "10.2.0.1": 0.15, "10.2.0.2": 0.15})


# ------------------------------------------------------------------ panic


def test_panic_uses_all_hosts_below_threshold() -> None:
    nodes = translate_cla(assignment(group([lb("10.0.0.1"), lb("10.0.0.2", status="UNHEALTHY"),
                                            lb("10.0.0.3", status="UNHEALTHY")])))
    # 33% healthy < 50%: Envoy balances across every host of the level
    assert [n["host"] for n in select_nodes(nodes, 50.0)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert {n["weight"] for n in select_nodes(nodes, 50.0)} == {1}
    # threshold 30%: not in panic; only the healthy host
    assert [n["host"] for n in select_nodes(nodes, 30.0)] == ["10.0.0.1"]
    # Istio's DestinationRule outlier detection sets the threshold to 0: panic disabled
    assert [n["host"] for n in select_nodes(nodes, 0.0)] == ["10.0.0.1"]
    # zone_aware_lb_config.fail_traffic_on_panic: a level in panic gets nothing
    assert select_nodes(nodes, 50.0, fail_traffic_on_panic=True) == []


def test_all_unhealthy_total_panic_or_no_healthy_upstream() -> None:
    nodes = two_levels(0, 2, 0, 2)
    out = select_nodes(nodes, 50.0)   # total panic: load by host counts, all hosts
    assert shares(out) == pytest.approx({"10.0.0.1": 0.25, "10.0.0.2": 0.25, "10.0.1.1": 0.25, "10.0.1.2": 0.25})
    assert select_nodes(nodes, 0.0) == []   # Envoy: 503 no healthy upstream


def test_panic_not_entered_when_lower_priorities_cover() -> None:
    # P0 1 of 4 healthy (25% < 50%) but P1 is fully healthy: normalized availability 100 -> no panic
    s = shares(select_nodes(two_levels(1, 4, 2, 2), 50.0))
    assert set(s) == {"10.0.0.1", "10.0.1.1", "10.0.1.2"}
    assert s["10.0.0.1"] == pytest.approx(0.35)


def test_panic_table_both_levels_low() -> None:
    # panic_threshold.rst: 25% / 25% -> 50% / 50%, both in panic (all hosts of each level)
    s = shares(select_nodes(two_levels(1, 4, 1, 4), 50.0))
    assert len(s) == 8
    assert sum(v for k, v in s.items() if k.startswith("10.0.0.")) == pytest.approx(0.5)


# ------------------------------------------------------------------ localities


def localities(x_healthy: int, x_total: int) -> list[dict[str, Any]]:
    gx = group([lb(f"10.0.0.{i + 1}", status="HEALTHY" if i < x_healthy else "UNHEALTHY") for i in range(x_total)],
               zone="x", weight=1)
    gy = group([lb("10.0.9.1"), lb("10.0.9.2")], zone="y", weight=2)
    return translate_cla(assignment(gx, gy))


@pytest.mark.parametrize("x_healthy, x_total, to_x", [
    # Envoy docs, load_balancing/locality_weight.rst: X weight 1, Y weight 2 (Y 100% available)
    (10, 10, 33), (7, 10, 33), (69, 100, 32), (1, 2, 26), (1, 4, 15),
])
def test_locality_weight_table(x_healthy: int, x_total: int, to_x: int) -> None:
    nodes = localities(x_healthy, x_total)
    s = shares(select_nodes(nodes, 0, locality_weighted=True))
    x = sum(v for k, v in s.items() if k.startswith("10.0.0."))
    assert abs(x * 100 - to_x) < 1   # the docs table rounds either way; the shares are exact


def test_locality_weights_combined_with_endpoint_weights() -> None:
    gx = group([lb("10.0.0.1", weight=3), lb("10.0.0.2", weight=1)], zone="x", weight=1)
    gy = group([lb("10.0.9.1")], zone="y", weight=1)
    nodes = translate_cla(assignment(gx, gy))
    out = select_nodes(nodes, locality_weighted=True)
    assert [(n["host"], n["weight"]) for n in out] == [("10.0.0.1", 3), ("10.0.0.2", 1), ("10.0.9.1", 4)]
    # without locality_weighted_lb_config Envoy ignores the locality weights
    out = select_nodes(nodes, locality_weighted=False)
    assert [(n["host"], n["weight"]) for n in out] == [("10.0.0.1", 3), ("10.0.0.2", 1), ("10.0.9.1", 1)]
    got = picks(runtime(select_nodes(nodes, locality_weighted=True)), 800)
    assert got == Counter({"10.0.0.1": 300, "10.0.0.2": 100, "10.0.9.1": 400})


def test_locality_without_weight_gets_no_traffic() -> None:
    gx = {"locality": {"zone": "x"}, "lb_endpoints": [lb("10.0.0.1")]}
    gy = group([lb("10.0.9.1")], zone="y", weight=1)
    out = select_nodes(translate_cla(assignment(gx, gy)), locality_weighted=True)
    assert [n["host"] for n in out] == ["10.0.9.1"]
    # no locality has a weight: Envoy falls back to host-level balancing
    gy2 = {"locality": {"zone": "y"}, "lb_endpoints": [lb("10.0.9.1")]}
    out = select_nodes(translate_cla(assignment(gx, gy2)), locality_weighted=True)
    assert [n["host"] for n in out] == ["10.0.0.1", "10.0.9.1"]


def test_weights_stay_small_integers() -> None:
    eps = [lb(f"10.0.{i // 200}.{i % 200 + 1}", weight=(i % 97) + 1) for i in range(300)]
    gx = group(eps[:150], zone="x", weight=7)
    gy = group(eps[150:], zone="y", weight=13)
    out = select_nodes(translate_cla(assignment(gx, gy)), locality_weighted=True)
    assert len(out) == 300
    assert all(isinstance(n["weight"], int) and 1 <= n["weight"] <= 10000 for n in out)
    for kind in ("roundrobin", "least_conn"):
        assert len(runtime(out, kind).nodes) == 300


def test_weighted_priority_health() -> None:
    c = cla({"cluster_name": "c", "policy": {"weighted_priority_health": True}, "endpoints": [
        {"lb_endpoints": [lb("10.0.0.1", weight=1), lb("10.0.0.2", weight=9, status="UNHEALTHY")]},
        {"priority": 1, "lb_endpoints": [lb("10.0.1.1")]}]})
    # by weight P0 is 10% healthy -> 14% load; by count it would be 50% -> 70%
    s = shares(select_nodes(translate_cla(c)))
    assert s["10.0.0.1"] == pytest.approx(0.14)


def test_select_does_not_modify_its_input() -> None:
    nodes = two_levels(1, 2, 2, 2)
    before = copy.deepcopy(nodes)
    select_nodes(nodes, locality_weighted=True)
    assert nodes == before
