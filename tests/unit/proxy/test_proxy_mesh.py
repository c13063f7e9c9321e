"""The mesh's compiled matching, as Envoy does it: filter chain selection, virtual host
selection, route matching in order.  Pure (no sockets): translated xDS dicts in, decisions out."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.http import Request
from meshgate.model import Resource, Snapshot
from meshgate.proxy.mesh import MeshRoute, VirtualHosts, compile_mesh, select_chain
from meshgate.proxy.runtime import build_runtime


def chain(name: str, **match: Any) -> dict[str, Any]:
    m = {"port": None, "dst": [], "direct_src": [], "source_type": "ANY", "src": [], "src_ports": [], "sni": [],
         "transport": "", "alpn": []}
    m.update(match)
    return {"name": name, "match": m, "kind": "tcp", "tls": False, "unsupported": None, "http": None,
            "tcp": {"cluster": name, "weighted": [], "idle_timeout": 10.0, "stat_prefix": name}}


def mesh_with(listeners: list[dict[str, Any]], route_configs: list[dict[str, Any]] = ()) -> Any:  # type: ignore[assignment]
    res = {
        "listeners": {lst["name"]: Resource("listeners", lst["name"], lst) for lst in listeners},
        "route_configs": {rc["name"]: Resource("route_configs", rc["name"], rc) for rc in route_configs},
        "upstreams": {"a": Resource("upstreams", "a", {"id": "a", "type": "roundrobin",
                                                          "nodes": [{"host": "127.0.0.1", "port": 1, "weight": 1}]})},
    }
    snap = Snapshot(version=1, resources=res)
    return compile_mesh(snap, build_runtime(snap))


def listener(name: str, port: int, chains: list[dict[str, Any]], *, address: str = "0.0.0.0",
             default: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "address": address, "port": port, "bind_to_port": kw.get("bind", True),
            "use_original_dst": kw.get("use_original_dst", False), "original_dst_filter": False,
            "direction": "UNSPECIFIED", "chains": chains, "default_chain": default,
            "sniff": any(c["match"]["transport"] or c["match"]["alpn"] or c["match"]["sni"] for c in chains)}


def names(c: Any) -> str | None:
    return None if c is None else c.conf["name"]


def test_virtual_inbound_chain_selection_follows_envoy_order() -> None:
    # virtualInbound's shape: a blackhole for its own port, per-port chains split by transport
    # and ALPN, and catch-alls by prefix range
    lst = listener("virtualInbound", 15006, [
        chain("blackhole", port=15006),
        chain("8080-tls-http", port=8080, transport="tls", alpn=["istio-http/1.1"]),
        chain("8080-http", port=8080, transport="raw_buffer", alpn=["http/1.1", "h2c"]),
        chain("8080-tcp", port=8080, transport="raw_buffer"),
        chain("catchall-http", dst=[["0.0.0.0", 0]], transport="raw_buffer", alpn=["http/1.1", "h2c"]),
        chain("catchall-tcp", dst=[["0.0.0.0", 0]], transport="raw_buffer"),
        chain("catchall-tls", dst=[["0.0.0.0", 0]], transport="tls"),
    ])
    cfg = mesh_with([lst])
    ml = cfg.listeners["virtualInbound"]
    src = ("10.0.0.9", 40000)
    assert names(select_chain(ml, dst=("10.0.0.5", 15006), src=src)) == "blackhole"
    assert names(select_chain(ml, dst=("10.0.0.5", 8080), src=src, alpn=["http/1.1"])) == "8080-http"
    # a port match beats a prefix-range match, then the most specific transport/ALPN
    assert names(select_chain(ml, dst=("10.0.0.5", 8080), src=src, alpn=[])) == "8080-tcp"
    assert names(select_chain(ml, dst=("10.0.0.5", 8080), src=src, transport="tls",
                              alpn=["istio-http/1.1"])) == "8080-tls-http"
    # TLS to 8080 with another ALPN: the port's chains all fail on transport/ALPN; Envoy does
    # not fall back to a less specific destination match: no chain
    assert select_chain(ml, dst=("10.0.0.5", 8080), src=src, transport="tls", alpn=["h2"]) is None
    assert names(select_chain(ml, dst=("10.0.0.5", 9999), src=src, alpn=["http/1.1"])) == "catchall-http"
    assert names(select_chain(ml, dst=("10.0.0.5", 9999), src=src)) == "catchall-tcp"
    assert names(select_chain(ml, dst=("10.0.0.5", 9999), src=src, transport="tls")) == "catchall-tls"


def test_chain_selection_prunes_without_backtracking() -> None:
    # Envoy prunes level by level: the most specific transport match goes on alone, and if its
    # ALPN then fails there is no chain, even though a less specific chain would have matched
    lst = listener("l", 80, [chain("http", transport="raw_buffer", alpn=["http/1.1"]), chain("any")])
    ml = mesh_with([lst]).listeners["l"]
    assert select_chain(ml, dst=("10.0.0.5", 80), src=("10.0.0.9", 1), alpn=[]) is None
    assert names(select_chain(ml, dst=("10.0.0.5", 80), src=("10.0.0.9", 1), transport="tls")) == "any"


def test_longest_prefix_and_server_names_and_default_chain() -> None:
    lst = listener("l", 443, [
        chain("wide", dst=[["10.0.0.0", 8]]),
        chain("narrow", dst=[["10.1.0.0", 16]]),
        chain("sni", dst=[["10.2.0.0", 16]], sni=["api.example.com"]),
        chain("wild", dst=[["10.2.0.0", 16]], sni=["*.example.com"]),
    ], default=chain("default"))
    ml = mesh_with([lst]).listeners["l"]
    src = ("192.168.1.1", 1)
    assert names(select_chain(ml, dst=("10.1.2.3", 443), src=src)) == "narrow"
    assert names(select_chain(ml, dst=("10.9.2.3", 443), src=src)) == "wide"
    assert names(select_chain(ml, dst=("10.2.0.1", 443), src=src, sni="api.example.com")) == "sni"
    assert names(select_chain(ml, dst=("10.2.0.1", 443), src=src, sni="www.example.com")) == "wild"
    assert names(select_chain(ml, dst=("10.2.0.1", 443), src=src, sni="other.org")) == "default"
    assert names(select_chain(ml, dst=("172.16.0.1", 443), src=src)) == "default"


def test_original_destination_handoff_lookup() -> None:
    cfg = mesh_with([
        listener("virtualOutbound", 15001, [chain("catchall")], use_original_dst=True),
        listener("0.0.0.0_9080", 9080, [chain("http")], bind=False),
        listener("10.96.0.1_443", 443, [chain("kube")], address="10.96.0.1", bind=False),
    ])
    assert cfg.listener_for("10.96.0.77", 9080).name == "0.0.0.0_9080"
    assert cfg.listener_for("10.96.0.1", 443).name == "10.96.0.1_443"
    assert cfg.listener_for("10.96.0.2", 443) is None          # stays on virtualOutbound
    assert [lst.name for lst in cfg.bound()] == ["virtualOutbound"]


def test_virtual_host_selection() -> None:
    v = VirtualHosts([(["reviews.default.svc.cluster.local", "reviews"], "exact"),
                      (["*.example.com"], "suffix"), (["*-api.example.com"], "longer-suffix"),
                      (["foo.*"], "prefix"), (["*"], "any")], ignore_port=True)
    assert v.find("reviews:9080") == "exact"
    assert v.find("REVIEWS") == "exact"
    assert v.find("www.example.com") == "suffix"
    assert v.find("pay-api.example.com") == "longer-suffix"
    assert v.find(".example.com") == "any"                    # a wildcard stands for at least one char
    assert v.find("foo.bar") == "prefix"
    assert v.find("[::1]:80") == "any"
    strict = VirtualHosts([(["reviews"], "exact"), (["reviews:9080"], "with-port")], ignore_port=False)
    assert strict.find("reviews:9080") == "with-port"
    assert strict.find("reviews:80") is None


def req(path: str, *, query: str | None = None, headers: dict[str, str] | None = None) -> Request:
    r = Request()
    r.path = r.upstream_path = path
    r.query = query
    r.fields = b"".join(b"\r\n" + k.encode() + b": " + v.encode() for k, v in (headers or {}).items())
    return r


@pytest.mark.parametrize("match,path,headers,query,ok", [
    ({"path": {"kind": "prefix", "value": "/api"}}, "/api/x", {}, None, True),
    ({"path": {"kind": "prefix", "value": "/api"}}, "/API/x", {}, None, False),
    ({"path": {"kind": "prefix", "value": "/api"}, "ci": True}, "/API/x", {}, None, True),
    ({"path": {"kind": "path", "value": "/exact"}}, "/exact", {}, "a=1", True),
    ({"path": {"kind": "path", "value": "/exact"}}, "/exact/", {}, None, False),
    ({"path": {"kind": "regex", "value": "/items/[0-9]+"}}, "/items/12", {}, None, True),
    ({"path": {"kind": "regex", "value": "/items/[0-9]+"}}, "/items/12/x", {}, None, False),
    ({"path": {"kind": "sep_prefix", "value": "/api"}}, "/api", {}, None, True),
    ({"path": {"kind": "sep_prefix", "value": "/api"}}, "/api/v1", {}, None, True),
    ({"path": {"kind": "sep_prefix", "value": "/api"}}, "/apiv1", {}, None, False),
    ({"path": {"kind": "prefix", "value": "/"}, "headers": [
        {"name": "end-user", "op": "exact", "value": "jason", "invert": False, "ci": False}]},
     "/", {"end-user": "jason"}, None, True),
    ({"path": {"kind": "prefix", "value": "/"}, "headers": [
        {"name": "end-user", "op": "exact", "value": "jason", "invert": True, "ci": False}]},
     "/", {}, None, False),                                  # absent never matches, inverted or not
    ({"path": {"kind": "prefix", "value": "/"}, "headers": [
        {"name": "x", "op": "present", "value": True, "invert": True, "ci": False}]},
     "/", {}, None, True),
    ({"path": {"kind": "prefix", "value": "/"}, "headers": [
        {"name": "x", "op": "range", "value": [10, 20], "invert": False, "ci": False}]},
     "/", {"x": "19"}, None, True),
    ({"path": {"kind": "prefix", "value": "/"}, "headers": [
        {"name": "x", "op": "range", "value": [10, 20], "invert": False, "ci": False}]},
     "/", {"x": "20"}, None, False),
    ({"path": {"kind": "prefix", "value": "/"}, "headers": [
        {"name": "x", "op": "regex", "value": "a.b", "invert": False, "ci": False}]},
     "/", {"x": "aXb"}, None, True),
    ({"path": {"kind": "prefix", "value": "/"}, "headers": [
        {"name": "x", "op": "exact", "value": "a.b", "invert": False, "ci": False}]},
     "/", {"x": "aXb"}, None, False),                        # exact is exact (Amesh made it a regex)
    ({"path": {"kind": "prefix", "value": "/"}, "query": [{"name": "v", "op": "prefix", "value": "1", "ci": False}]},
     "/", {}, "v=10", True),
    ({"path": {"kind": "prefix", "value": "/"}, "query": [{"name": "v", "op": "present", "value": True}]},
     "/", {}, "w=1", False),
    ({"path": {"kind": "prefix", "value": "/"}, "grpc": True}, "/", {"content-type": "application/grpc+proto"},
     None, True),
])
def test_route_match(match: dict[str, Any], path: str, headers: dict[str, str], query: str | None,
                     ok: bool) -> None:
    assert MeshRoute("r", match).matches(req(path, query=query, headers=headers), path) is ok


def test_route_table_first_match_wins_over_longer_prefix() -> None:
    table = {"name": "9080", "ignore_port": True, "headers": None, "virtual_hosts": [{
        "name": "vh", "domains": ["*"], "headers": None, "retry": None, "fault": None, "cors": None,
        "attempt_count": False, "routes": [
            _route("/", "a", headers=[{"name": "end-user", "op": "exact", "value": "jason", "invert": False}]),
            _route("/api", "a"), _route("/", "a")]}]}
    lst = listener("l", 9080, [dict(chain("c"), kind="http", tcp=None,
                                    http={"rds": "9080", "routes": None, "websocket": False, "fault": None,
                                          "cors": False})])
    cfg = mesh_with([lst], [table])
    rt = cfg.listeners["l"].chains[0].handle.view.runtime
    r = req("/api/x", headers={"end-user": "jason"})
    r.http_host = r.host = "x"
    assert rt.router.match(r).route_id == "9080/vh/0"        # order, not prefix length (Envoy)
    r = req("/api/x")
    r.http_host = r.host = "x"
    assert rt.router.match(r).route_id == "9080/vh/1"


def _route(prefix: str, cluster: str, **match: Any) -> dict[str, Any]:
    return {"name": "", "match": {"path": {"kind": "prefix", "value": prefix}, "ci": False, "headers": [],
                                  "query": [], "grpc": False, "fraction": None, **match},
            "action": {"kind": "cluster", "cluster": cluster}, "headers": None, "timeout": 15.0,
            "idle_timeout": None, "retry": None,
            "rewrite": {"prefix": None, "regex": None, "host": None, "auto_host": False, "host_header": None},
            "mirrors": [], "hash": [], "fault": None, "cors": None, "metadata_config": None, "decorator": None}
