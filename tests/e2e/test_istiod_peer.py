"""Proves the real-istiod recipe: kube-apiserver + etcd + istiod + an Envoy sidecar, all real.

With Bookinfo-like ServiceEntries/WorkloadEntries and DestinationRules applied, an Envoy 1.40
sidecar posing as ``productpage-v1.default`` (REDIRECT, node IP 127.0.0.5) receives listeners
``virtualOutbound``/``virtualInbound``/``0.0.0.0_9080``, the subset clusters and route config ``9080``;
each Bookinfo VirtualService scenario shows up in Envoy's config (and is ACKed) within seconds.

``MESHGATE_UPDATE_ISTIOD_FIXTURES=1`` also (re)writes tests/fixtures/istiod/<scenario>/ — the
real-istiod fixtures the translators' unit tests replay (see the README there).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from envoyxds import Envoy, sidecar_node
from istiodpeer import (ISTIOD_VERSION, Istiod, bookinfo_destination_rules, bookinfo_services, vs_all_v1,
                        vs_ratings_abort, vs_ratings_delay, vs_reviews_jason_v2, vs_reviews_v2_v3)

pytestmark = pytest.mark.timeout(300)

PROXY_ID = "productpage-v1.default"
FQDN = "{}.default.svc.cluster.local"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "istiod"
UPDATE = os.environ.get("MESHGATE_UPDATE_ISTIOD_FIXTURES") == "1"


@pytest.fixture(scope="module")
def envoy(istiod: Istiod, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    istiod.apply(bookinfo_services() + bookinfo_destination_rules())
    node_id, md = sidecar_node("127.0.0.5", "productpage-v1", labels={"app": "productpage", "version": "v1"})
    e = Envoy.start(tmp_path_factory.mktemp("envoy"), istiod.grpc_address, node_id, md)
    try:
        yield e
    finally:
        e.stop()


# ------------------------------------------------------------------ readers of route config "9080"
def _vhost(res: dict[str, Any], app: str) -> dict[str, Any] | None:
    rc = res["routes"].get("9080")
    for vh in (rc or {}).get("virtual_hosts", []):
        if vh["name"] == f"{FQDN.format(app)}:9080":
            return dict(vh)
    return None


def _routes(res: dict[str, Any], app: str) -> list[dict[str, Any]]:
    vh = _vhost(res, app)
    return list(vh.get("routes", [])) if vh else []


def _is_jason(route: dict[str, Any]) -> bool:
    return any(h.get("name") == "end-user" and h.get("string_match", {}).get("exact") == "jason"
               for h in route.get("match", {}).get("headers", []))


def _cluster(route: dict[str, Any]) -> Any:
    act = route.get("route", {})
    if "weighted_clusters" in act:
        return sorted((c["name"], c.get("weight")) for c in act["weighted_clusters"]["clusters"])
    return act.get("cluster")


def _subset(app: str, subset: str) -> str:
    return f"outbound|9080|{subset}|{FQDN.format(app)}"


def _fault(route: dict[str, Any]) -> dict[str, Any]:
    return dict(route.get("typed_per_filter_config", {}).get("envoy.filters.http.fault", {}))


def _all_v1(res: dict[str, Any]) -> bool:
    return all([_cluster(r) for r in _routes(res, app)] == [_subset(app, "v1")]
               for app in ("productpage", "reviews", "ratings", "details"))


def _reviews_v2_v3(res: dict[str, Any]) -> bool:
    return [_cluster(r) for r in _routes(res, "reviews")] == [[(_subset("reviews", "v2"), 50),
                                                                (_subset("reviews", "v3"), 50)]]


def _reviews_jason(res: dict[str, Any], user_subset: str = "v2") -> bool:
    rs = _routes(res, "reviews")
    return (len(rs) == 2 and _is_jason(rs[0]) and _cluster(rs[0]) == _subset("reviews", user_subset)
            and not _is_jason(rs[1]) and _cluster(rs[1]) == _subset("reviews", "v1"))


def _ratings_delay(res: dict[str, Any]) -> bool:
    rs = _routes(res, "ratings")
    f = _fault(rs[0]) if rs else {}
    return (_reviews_jason(res) and len(rs) == 2 and _is_jason(rs[0])
            and f.get("delay", {}).get("fixed_delay") == "7s" and not _fault(rs[1]))


def _ratings_abort(res: dict[str, Any]) -> bool:
    rs = _routes(res, "ratings")
    f = _fault(rs[0]) if rs else {}
    return (_reviews_jason(res) and len(rs) == 2 and _is_jason(rs[0])
            and f.get("abort", {}).get("http_status") == 500 and "delay" not in f)


def _default(res: dict[str, Any]) -> bool:
    rs = _routes(res, "reviews")
    return len(rs) == 1 and _cluster(rs[0]) == f"outbound|9080||{FQDN.format('reviews')}"


# ------------------------------------------------------------------ fixtures on disk
def _strip_timestamps(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip_timestamps(v) for k, v in x.items() if k != "last_updated"}
    if isinstance(x, list):
        return [_strip_timestamps(v) for v in x]
    return x


def _envoy_dump_for_fixture(dump: dict[str, Any]) -> dict[str, Any]:
    """Envoy's /config_dump?include_eds minus what is the harness's, not istiod's: the bootstrap
    (the node is saved apart in node.json), the static xds-grpc / sds-grpc clusters and their
    endpoints (per-run socket paths), and the secrets (self-minted per run by envoyxds.SdsServer)."""
    configs = []
    for cfg in dump.get("configs", []):
        t = cfg.get("@type", "")
        if t.endswith(("BootstrapConfigDump", "SecretsConfigDump")):
            continue
        configs.append({k: v for k, v in cfg.items() if not k.startswith("static_")})
    return _strip_timestamps({"configs": configs})


def _save(scenario: str, istiod: Istiod, envoy: Envoy, inputs: list[dict[str, Any]]) -> None:
    if not UPDATE:
        return
    d = FIXTURES / scenario
    d.mkdir(parents=True, exist_ok=True)
    (d / "input.yaml").write_text(
        f"# Istio objects applied (namespace default) for scenario {scenario}; istiod {ISTIOD_VERSION}\n"
        + yaml.safe_dump_all(inputs, sort_keys=False))
    (d / "istiod-config-dump.json").write_text(
        json.dumps(_strip_timestamps(istiod.config_dump(PROXY_ID)), indent=1) + "\n")
    (d / "envoy-config-dump.json").write_text(
        json.dumps(_envoy_dump_for_fixture(envoy.config_dump(include_eds=True)), indent=1) + "\n")
    (FIXTURES / "node.json").write_text(json.dumps({"id": envoy.node_id, "cluster": envoy.cluster,
                                                    "metadata": envoy.metadata}, indent=1) + "\n")


def _acked(istiod: Istiod, envoy: Envoy) -> None:
    """Envoy rejected nothing, and istiod saw every type it sent ACKed with the last nonce."""
    assert envoy.rejected() == {}, envoy.rejected()

    def ok() -> bool:
        s = istiod.connected(PROXY_ID)
        if not s:
            return False
        types = [k[:-len("_sent")] for k in s if k.endswith("_sent")]
        return bool(types) and all(s.get(f"{t}_acked") == s[f"{t}_sent"] for t in types) and not any(
            "nack" in k.lower() for k in s)
    istiod.wait(ok, 10, f"proxy {PROXY_ID} connected and ACKed in /debug/syncz")


# ------------------------------------------------------------------ tests
def test_sidecar_gets_bookinfo_config(istiod: Istiod, envoy: Envoy) -> None:
    res = envoy.wait_for(lambda r: {"virtualOutbound", "virtualInbound", "0.0.0.0_9080"} <= set(r["listeners"])
                         and _subset("reviews", "v1") in r["clusters"] and "9080" in r["routes"],
                         timeout=30, what="bookinfo listeners, clusters, route 9080")
    assert not res["warming_listeners"] and not res["warming_clusters"], (
        sorted(res["warming_listeners"]), sorted(res["warming_clusters"]))
    lis = res["listeners"]
    assert lis["virtualOutbound"]["address"]["socket_address"]["port_value"] == 15001
    assert lis["virtualInbound"]["address"]["socket_address"]["port_value"] == 15006
    # productpage-v1 (127.0.0.5 = a WorkloadEntry) gets an inbound chain for its own port 9080
    assert any(fc.get("name") == "0.0.0.0_9080" for fc in lis["virtualInbound"]["filter_chains"])
    for app, subsets in {"reviews": ["", "v1", "v2", "v3"], "ratings": ["", "v1"], "details": ["", "v1"],
                         "productpage": ["", "v1"]}.items():
        for s in subsets:
            assert _subset(app, s) in res["clusters"], (_subset(app, s), sorted(res["clusters"]))
    assert _default(res)
    # EDS: istiod filters the subset's endpoints by labels
    eds = envoy.resources(include_eds=True)["endpoints"]
    addrs = {c: sorted(lb["endpoint"]["address"]["socket_address"]["address"]
                       for g in cla.get("endpoints", []) for lb in g.get("lb_endpoints", []))
             for c, cla in eds.items()}
    assert addrs[_subset("reviews", "v2")] == ["127.0.0.22"]
    assert addrs[_subset("reviews", "")] == ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
    _acked(istiod, envoy)
    dump = istiod.config_dump(PROXY_ID)
    assert "virtualInbound" in json.dumps(dump)
    _save("default", istiod, envoy, bookinfo_services() + bookinfo_destination_rules())


SCENARIOS: list[tuple[str, Callable[[], list[dict[str, Any]]], Callable[[dict[str, Any]], bool]]] = [
    ("all-v1", vs_all_v1, _all_v1),
    ("reviews-v2-v3", vs_reviews_v2_v3, _reviews_v2_v3),
    ("reviews-jason-v2", vs_reviews_jason_v2, _reviews_jason),
    ("ratings-delay", vs_ratings_delay, _ratings_delay),
    ("ratings-abort", vs_ratings_abort, _ratings_abort),
]


def test_bookinfo_virtual_services(istiod: Istiod, envoy: Envoy) -> None:
    """Cumulative, as in the Bookinfo tasks: all-v1, then reviews 50/50 v2/v3, then jason → v2,
    then ratings delay (jason), then ratings abort (jason)."""
    base = bookinfo_services() + bookinfo_destination_rules()
    applied: dict[str, dict[str, Any]] = {}
    for name, objs, check in SCENARIOS:
        t0 = time.monotonic()
        istiod.apply(objs())
        for o in objs():
            applied[o["metadata"]["name"]] = o
        res = envoy.wait_for(check, timeout=15, what=f"scenario {name}")
        took = time.monotonic() - t0
        assert took < 10, f"{name}: {took:.1f}s to reach Envoy"
        assert not res["warming_listeners"] and not res["warming_clusters"]
        _acked(istiod, envoy)
        _save(name, istiod, envoy, base + list(applied.values()))


def test_virtual_service_edit_reaches_envoy_quickly(istiod: Istiod, envoy: Envoy) -> None:
    istiod.apply(vs_reviews_jason_v2())
    envoy.wait_for(_reviews_jason, timeout=15, what="reviews jason → v2")
    edited = vs_reviews_jason_v2()
    edited[0]["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v3"
    t0 = time.monotonic()
    istiod.apply(edited)
    envoy.wait_for(lambda r: _reviews_jason(r, "v3"), timeout=10, what="edited reviews jason → v3")
    took = time.monotonic() - t0
    assert took < 5, f"VirtualService edit took {took:.1f}s to reach Envoy"
    # istiod's own view for the proxy agrees
    dump = json.dumps(istiod.config_dump(PROXY_ID))
    assert _subset("reviews", "v3") in dump and '"exact": "jason"' in dump
    _acked(istiod, envoy)
