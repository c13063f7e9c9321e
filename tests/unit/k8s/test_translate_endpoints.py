"""Backend resolution (meshgate.k8s.translate.endpoints)."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.k8s.translate import ClusterState

from k8stools import load

STATE = ClusterState.from_objects(load("cluster.yaml"))
OBJS = {(o["kind"], o["metadata"]["name"]): o for o in load("resources.yaml")}
from meshgate.k8s.translate import Backend, BackendError, resolve_backend  # noqa: E402
from meshgate.k8s.translate.apisixupstream import subsets_of  # noqa: E402

SUBSETS = subsets_of(STATE.apisix_upstream("demo", "web"))


def resolve(name: str, port: int | str | None, **kw: Any) -> Any:
    b = Backend(name, port, **{k: v for k, v in kw.items() if k in ("resolve_granularity", "weight", "subset")})
    return resolve_backend(STATE.service("demo", name), STATE.slices_of("demo", name), b, namespace="demo",
                           pods=STATE.pods, subsets=kw.get("subsets"))


def hosts(r: Any) -> list[str]:
    return [n["host"] for n in r.nodes]


def test_ready_endpoints_only_deduplicated_sorted_v1_and_v1beta1() -> None:
    r = resolve("web", 80)
    # 10.0.0.9 not ready; 10.0.0.1 in both slices once; 10.0.0.5 has no conditions (ready unknown = ready)
    assert hosts(r) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5"]
    assert {n["port"] for n in r.nodes} == {8080} and {n["weight"] for n in r.nodes} == {100}
    assert (r.port, r.scheme, r.websocket) == (80, "http", False)


def test_named_port_and_unnamed_port() -> None:
    r = resolve("web", "https", weight=7)
    assert hosts(r) == ["10.0.0.1", "10.0.0.2", "10.0.0.5"]  # web-2 has no https port
    assert {(n["port"], n["weight"]) for n in r.nodes} == {(8443, 7)} and r.scheme == "https" and r.port == 443
    assert resolve("unnamed", 5000).nodes == [{"host": "10.0.1.1", "port": 5678, "weight": 100}]
    assert resolve("unnamed", None).nodes == [{"host": "10.0.1.1", "port": 5678, "weight": 100}]


def test_ws_app_protocol() -> None:
    r = resolve("web", "ws")
    assert (r.scheme, r.websocket) == ("http", True) and {n["port"] for n in r.nodes} == {9000}


def test_subsets_by_pod_labels() -> None:
    assert hosts(resolve("web", 80, subset="v1", subsets=SUBSETS)) == ["10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert hosts(resolve("web", 80, subset="v2", subsets=SUBSETS)) == ["10.0.0.2", "10.0.0.5"]
    # a Pod that is not known is dropped
    pods = {k: v for k, v in STATE.pods.items() if k[1] != "web-v1-c"}
    b = Backend("web", 80, subset="v1")
    r = resolve_backend(STATE.service("demo", "web"), STATE.slices_of("demo", "web"), b, namespace="demo",
                        pods=pods, subsets=SUBSETS)
    assert hosts(r) == ["10.0.0.1", "10.0.0.5"]


def test_granularity_service_external_name() -> None:
    assert resolve("web", 443, resolve_granularity="service").nodes == [{"host": "10.96.1.1", "port": 443,
                                                                         "weight": 100}]
    r = resolve("ext", None)
    assert r.nodes == [{"host": "httpbin.org", "port": 80, "weight": 100}] and r.scheme is None
    r = resolve("ext", "https")
    assert r.nodes == [{"host": "httpbin.org", "port": 443, "weight": 100}] and r.scheme == "https"


@pytest.mark.parametrize("name,port,kw,text", [
    ("nope", 80, {}, "service demo/nope not found; create it or fix serviceName"),
    ("web", 81, {}, "service demo/web has no port 81; it has 80 (http), 443 (https), 8000 (ws)"),
    ("web", "grpc", {}, "service demo/web has no port named 'grpc'; it has 80 (http), 443 (https), 8000 (ws)"),
    ("web", None, {}, "servicePort is required: service demo/web has 3 ports"),
    ("headless", 80, {"resolve_granularity": "service"}, "service demo/headless is headless (no clusterIP)"),
    ("web", 80, {"subset": "v3", "subsets": SUBSETS}, "subset 'v3' is not defined in ApisixUpstream demo/web; "
                                                      "it has v1, v2"),
    ("web", 80, {"subset": "v1"}, "subset 'v1' needs an ApisixUpstream"),
    ("web", 80, {"subset": "v1", "subsets": SUBSETS, "resolve_granularity": "service"},
     "subset 'v1' cannot be used with resolveGranularity: service"),
])
def test_errors(name: str, port: int | str | None, kw: dict[str, Any], text: str) -> None:
    with pytest.raises(BackendError) as ei:
        resolve(name, port, **kw)
    assert ei.value.message.startswith(text)


def test_backend_from_spec() -> None:
    assert Backend.from_spec({"serviceName": "a", "servicePort": "8080"}) == Backend("a", 8080)
    assert Backend.from_spec({"serviceName": "a", "servicePort": "http", "weight": 0, "subset": "v1",
                              "resolveGranularity": "service"}) == Backend("a", "http", "service", 0, "v1")
    for bad, text in (({}, "serviceName is required"), ({"serviceName": "a", "weight": -1}, "weight"),
                      ({"serviceName": "a", "resolveGranularity": "pod"}, "resolveGranularity")):
        with pytest.raises(BackendError, match=text):
            Backend.from_spec(bad)


def test_ipv6_nodes_sorted_after_ipv4() -> None:
    svc = {"metadata": {"name": "s", "namespace": "demo"}, "spec": {"clusterIP": "10.0.0.1",
                                                                    "ports": [{"port": 80}]}}
    sl = {"ports": [{"port": 8080}], "endpoints": [{"addresses": ["fd00::2"]}, {"addresses": ["10.1.0.2"]},
                                                   {"addresses": ["10.1.0.10"]}]}
    r = resolve_backend(svc, [sl], Backend("s", 80), namespace="demo")
    assert hosts(r) == ["10.1.0.2", "10.1.0.10", "fd00::2"]
