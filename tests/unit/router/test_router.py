"""Route matching with APISIX radixtree semantics: apisix-semantics.md section 1."""

from __future__ import annotations

import ast
import json
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshgate.errors import ConfigError
from meshgate.model import Resource, Snapshot
from meshgate.router import ROUTER_KINDS, MatchInput, RouteMatch, Router, compile_router

ALL_KINDS = list(ROUTER_KINDS)
URI_KINDS = ["radixtree_uri", "radixtree_uri_with_parameter"]


@dataclass
class Req:
    path: str = "/"
    method: str = "GET"
    host: str = "example.com"
    http_host: str = ""
    remote_addr: str = "127.0.0.1"
    vars: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.http_host:
            self.http_host = self.host

    def var(self, name: str) -> Any:
        if name in self.vars:
            return self.vars[name]
        builtin = {"uri": self.path, "host": self.host, "remote_addr": self.remote_addr,
                   "request_method": self.method, "http_host": self.http_host}
        return builtin.get(name)


def snap(routes: Any, services: dict[str, dict[str, Any]] | None = None) -> Snapshot:
    """Routes as a list (ids "1", "2", ... in order) or as an ordered {id: value} dict."""
    if isinstance(routes, list):
        routes = {str(i + 1): r for i, r in enumerate(routes)}
    res: dict[str, dict[str, Resource]] = {
        "routes": {rid: Resource("routes", rid, {**v, "id": rid}) for rid, v in routes.items()},
    }
    if services:
        res["services"] = {sid: Resource("services", sid, {**v, "id": sid}) for sid, v in services.items()}
    return Snapshot(version=7, resources=res)


def matched(router: Router, req: Req) -> str | None:
    hit = router.match(req)
    explained = router.explain(req)
    # explain() replays the lookup: it must always agree with match().
    assert explained["matched"] == (hit.route_id if hit else None), json.dumps(explained, indent=1)
    assert "inconsistent" not in explained
    json.dumps(explained)  # JSON-able
    return hit.route_id if hit else None


# --------------------------------------------------------------------------- precedence tables

# (name, routes, [(request, expected route id)]): semantics shared by all three routers.
PRECEDENCE: list[tuple[str, list[dict[str, Any]], list[tuple[Req, str | None]]]] = [
    (
        "docs example /blog/foo/*",
        [{"uri": "/blog/foo/*"}, {"uri": "/blog/foo/a/*"}, {"uri": "/blog/foo/c/*"}, {"uri": "/blog/foo/bar"}],
        [
            (Req("/blog/foo/bar"), "4"),
            (Req("/blog/foo/a/b/c"), "2"),
            (Req("/blog/foo/c/d"), "3"),
            (Req("/blog/foo/gloo"), "1"),
            (Req("/blog/foo/"), "1"),
            (Req("/blog/foo"), None),   # /blog/foo/* does not match /blog/foo
            (Req("/blog/bar"), None),
        ],
    ),
    (
        "exact beats prefix regardless of priority",
        [{"uri": "/a*", "priority": 100}, {"uri": "/a", "priority": -5}],
        [(Req("/a"), "2"), (Req("/ab"), "1"), (Req("/a/"), "1")],
    ),
    (
        "longer prefix beats shorter regardless of priority",
        [{"uri": "/a/*", "priority": 100}, {"uri": "/a/b/*", "priority": 0}, {"uri": "/*", "priority": 1000}],
        [(Req("/a/b/c"), "2"), (Req("/a/c"), "1"), (Req("/x"), "3"), (Req("/a/b"), "1")],
    ),
    (
        "prefix is a raw byte prefix, not segment aware",
        [{"uri": "/foo*"}, {"uri": "/bar/*"}],
        [(Req("/foo"), "1"), (Req("/foo/"), "1"), (Req("/foobar"), "1"), (Req("/foo/a/b"), "1"),
         (Req("/fo"), None), (Req("/bar"), None), (Req("/bar/"), "2"), (Req("/barx"), None)],
    ),
    (
        "priority among equal paths",
        [{"uri": "/p/*", "priority": 1}, {"uri": "/p/*", "priority": 5}, {"uri": "/p/*", "priority": 3},
         {"uri": "/e", "priority": 0}, {"uri": "/e", "priority": 3}],
        [(Req("/p/x"), "2"), (Req("/e"), "5")],
    ),
    (
        "negative priority ranks after default",
        [{"uri": "/n/*", "priority": -1}, {"uri": "/n/*"}],
        [(Req("/n/x"), "2")],
    ),
    (
        "longer original uri first at the same node",
        [{"uri": "/x/*"}, {"uri": "/x/*/y"}],
        [(Req("/x/a/y"), "2"), (Req("/x/a/z"), "1")],
    ),
    (
        "priority beats uri length at the same node",
        [{"uri": "/x/*", "priority": 1}, {"uri": "/x/*/y"}],
        [(Req("/x/a/y"), "1")],
    ),
    (
        "insertion order breaks remaining ties",
        [{"uri": "/same"}, {"uri": "/same"}, {"uri": "/pre/*"}, {"uri": "/pre/*"}],
        [(Req("/same"), "1"), (Req("/pre/1"), "3")],
    ),
    (
        "catch-all",
        [{"uri": "/*"}, {"uri": "/api/users"}],
        [(Req("/"), "1"), (Req("/anything/at/all"), "1"), (Req("/api/users"), "2")],
    ),
    (
        "bare star",
        [{"uri": "*"}],
        [(Req("/"), "1"), (Req("/x/y"), "1")],
    ),
    (
        "paths are case sensitive",
        [{"uri": "/Api"}],
        [(Req("/Api"), "1"), (Req("/api"), None)],
    ),
    (
        "uris: any of them",
        [{"uris": ["/one", "/two/*"]}],
        [(Req("/one"), "1"), (Req("/two/x"), "1"), (Req("/three"), None)],
    ),
    (
        "status 0 routes are left out",
        [{"uri": "/s", "status": 0}, {"uri": "/s*", "status": 1}, {"uri": "/t", "status": 0}],
        [(Req("/s"), "2"), (Req("/t"), None)],
    ),
    (
        "methods",
        [{"uri": "/m", "methods": ["POST", "PUT"]}, {"uri": "/m", "methods": ["GET"]}, {"uri": "/m*"},
         {"uri": "/e", "methods": []}],
        [(Req("/m", "POST"), "1"), (Req("/m", "PUT"), "1"), (Req("/m", "GET"), "2"),
         (Req("/m", "DELETE"), "3"), (Req("/m", "BREW"), "3"), (Req("/e", "PATCH"), "4")],
    ),
    (
        "conditions fall through to the next route at the node, then shorter prefixes",
        [{"uri": "/c/*", "methods": ["POST"]}, {"uri": "/*", "methods": ["GET"]}],
        [(Req("/c/x", "POST"), "1"), (Req("/c/x", "GET"), "2"), (Req("/c/x", "PUT"), None)],
    ),
    (
        "remote_addrs IPv4 / IPv6 / CIDR",
        [{"uri": "/r", "remote_addrs": ["10.0.0.0/8", "192.168.1.7"]},
         {"uri": "/r", "remote_addrs": ["2001:db8::/32", "::1"]},
         {"uri": "/r", "remote_addr": "172.16.0.0/12"},
         {"uri": "/r", "remote_addr": "127.0.0.1"}],
        [
            (Req("/r", remote_addr="10.2.3.4"), "1"),
            (Req("/r", remote_addr="192.168.1.7"), "1"),
            (Req("/r", remote_addr="192.168.1.8"), None),
            (Req("/r", remote_addr="2001:db8:1::5"), "2"),
            (Req("/r", remote_addr="::1"), "2"),
            (Req("/r", remote_addr="0:0::1"), "2"),
            (Req("/r", remote_addr="2001:db9::1"), None),
            (Req("/r", remote_addr="172.20.1.1"), "3"),
            (Req("/r", remote_addr="127.0.0.1"), "4"),
            (Req("/r", remote_addr="garbage"), None),
        ],
    ),
    (
        "vars",
        [{"uri": "/v", "vars": [["arg_ver", "==", "2"], ["http_x_canary", "~~", "^yes"]]},
         {"uri": "/v", "vars": [["arg_ver", ">", 2]]},
         {"uri": "/v", "vars": ["OR", ["cookie_a", "in", ["x", "y"]], ["remote_addr", "ipmatch", "10.0.0.0/8"]]},
         {"uri": "/v"}],
        [
            (Req("/v", vars={"arg_ver": "2", "http_x_canary": "yes-please"}), "1"),
            (Req("/v", vars={"arg_ver": "2"}), "4"),
            (Req("/v", vars={"arg_ver": "0x10"}), "2"),
            (Req("/v", vars={"cookie_a": "y"}), "3"),
            (Req("/v", remote_addr="10.1.1.1"), "3"),
            (Req("/v"), "4"),
        ],
    ),
    (
        "mid-path star",
        [{"uri": "/a/*/c"}, {"uri": "/img/*.png"}],
        [(Req("/a/x/c"), "1"), (Req("/a/x/y/c"), "1"), (Req("/a/x/d"), None), (Req("/a/c"), None),
         (Req("/img/a/b.png"), "2"), (Req("/img/a.jpg"), None)],
    ),
    (
        "hosts as a condition when only hosts differ at the same path",
        [{"uri": "/h", "host": "a.com"}, {"uri": "/h", "hosts": ["*.b.com"]}],
        [(Req("/h", host="a.com"), "1"), (Req("/h", host="x.b.com"), "2"), (Req("/h", host="b.com"), None),
         (Req("/h", host="c.com"), None)],
    ),
]


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("name, routes, cases", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence_table(kind: str, name: str, routes: list[dict[str, Any]],
                          cases: list[tuple[Req, str | None]]) -> None:
    router = compile_router(snap(routes), kind=kind)  # type: ignore[arg-type]
    assert router.errors == []
    for req, expected in cases:
        assert matched(router, req) == expected, (name, req)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_insertion_order_follows_snapshot_order(kind: str) -> None:
    routes = {"b": {"uri": "/same"}, "a": {"uri": "/same"}}
    assert matched(compile_router(snap(routes), kind=kind), Req("/same")) == "b"  # type: ignore[arg-type]
    routes = {"a": {"uri": "/same"}, "b": {"uri": "/same"}}
    assert matched(compile_router(snap(routes), kind=kind), Req("/same")) == "a"  # type: ignore[arg-type]


def test_default_kind_is_host_uri() -> None:
    assert compile_router(snap([{"uri": "/"}])).kind == "radixtree_host_uri"


def test_unknown_kind() -> None:
    with pytest.raises(ConfigError) as exc:
        compile_router(snap([]), kind="radixtree_foo")  # type: ignore[arg-type]
    assert "radixtree_host_uri" in exc.value.message


def test_route_match_fields() -> None:
    value = {"uri": "/p/*", "hosts": ["*.foo.com"], "upstream_id": "u"}
    for kind in ALL_KINDS:
        router = compile_router(snap([value]), kind=kind)  # type: ignore[arg-type]
        hit = router.match(Req("/p/x", host="a.foo.com"))
        assert isinstance(hit, RouteMatch)
        assert hit.route_id == "1"
        assert hit.route["upstream_id"] == "u"
        assert dict(hit.params) == {}
        assert hit.matched_uri == "/p/*"
        assert hit.matched_host == "*.foo.com"
        hostless = compile_router(snap([{"uri": "/p"}]), kind=kind).match(Req("/p"))  # type: ignore[arg-type]
        assert hostless is not None and hostless.matched_host is None


def test_matchinput_protocol_is_satisfied_by_test_request() -> None:
    r: MatchInput = Req("/x")
    assert r.var("uri") == "/x"


# --------------------------------------------------------------------------- hosts

HOST_ROUTES = [
    {"uri": "/*", "hosts": ["*.foo.com"]},      # 1
    {"uri": "/*", "hosts": ["*.b.foo.com"]},    # 2
    {"uri": "/*", "host": "a.b.foo.com"},       # 3
    {"uri": "/*", "host": "*"},                 # 4
]


@pytest.mark.parametrize(
    "host, expected",
    [("a.b.foo.com", "3"), ("c.b.foo.com", "2"), ("x.y.b.foo.com", "2"), ("c.foo.com", "1"),
     ("b.foo.com", "1"), ("foo.com", "4"), ("other.org", "4")],
)
def test_wildcard_host_precedence_host_uri(host: str, expected: str) -> None:
    router = compile_router(snap(HOST_ROUTES))
    assert matched(router, Req("/x", host=host)) == expected


@pytest.mark.parametrize("kind", URI_KINDS)
def test_hosts_are_a_condition_in_uri_routers(kind: str) -> None:
    # Same node, same priority, same uri length: load order decides, hosts only filter.
    router = compile_router(snap(HOST_ROUTES), kind=kind)  # type: ignore[arg-type]
    assert matched(router, Req("/x", host="a.b.foo.com")) == "1"
    assert matched(router, Req("/x", host="c.b.foo.com")) == "1"
    assert matched(router, Req("/x", host="foo.com")) == "4"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_wildcard_host_semantics(kind: str) -> None:
    router = compile_router(snap([{"uri": "/w", "hosts": ["*.foo.com"]}, {"uri": "/s", "host": "*foo.com"}]),
                            kind=kind)  # type: ignore[arg-type]
    assert matched(router, Req("/w", host="a.foo.com")) == "1"
    assert matched(router, Req("/w", host="a.b.foo.com")) == "1"
    assert matched(router, Req("/w", host="foo.com")) is None
    assert matched(router, Req("/w", host="xfoo.com")) is None
    # "*foo.com" is a raw suffix: it matches foo.com itself and barfoo.com.
    assert matched(router, Req("/s", host="foo.com")) == "2"
    assert matched(router, Req("/s", host="barfoo.com")) == "2"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_hosts_case_insensitive(kind: str) -> None:
    router = compile_router(snap([{"uri": "/c", "hosts": ["Foo.EXAMPLE.com", "*.Bar.COM"]}]),
                            kind=kind)  # type: ignore[arg-type]
    assert matched(router, Req("/c", host="foo.example.com")) == "1"
    assert matched(router, Req("/c", host="x.bar.com")) == "1"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_host_with_port_uses_http_host(kind: str) -> None:
    router = compile_router(snap([{"uri": "/p", "host": "foo.com:8080"}, {"uri": "/p", "host": "*.bar.com:9000"},
                                  {"uri": "/v6", "host": "[::1]"}]),
                            kind=kind)  # type: ignore[arg-type]
    assert matched(router, Req("/p", host="foo.com", http_host="foo.com:8080")) == "1"
    assert matched(router, Req("/p", host="foo.com", http_host="FOO.com:8080")) == "1"
    assert matched(router, Req("/p", host="foo.com", http_host="foo.com:9090")) is None
    assert matched(router, Req("/p", host="foo.com", http_host="foo.com")) is None
    assert matched(router, Req("/p", host="a.bar.com", http_host="a.bar.com:9000")) == "2"
    assert matched(router, Req("/p", host="a.bar.com", http_host="a.bar.com")) is None
    # A bracketed IPv6 literal without port is compared with $host.
    assert matched(router, Req("/v6", host="[::1]", http_host="[::1]:8443")) == "3"


def test_host_route_beats_hostless_in_host_uri() -> None:
    routes = [
        {"uri": "/api/v1/users", "priority": 100},        # 1 hostless, exact, high priority
        {"uri": "/*", "host": "a.com"},                    # 2 host route, catch-all
        {"uri": "/api/*", "priority": 50},                 # 3 hostless prefix
    ]
    host_uri = compile_router(snap(routes))
    assert matched(host_uri, Req("/api/v1/users", host="a.com")) == "2"
    assert matched(host_uri, Req("/api/v1/users", host="b.com")) == "1"
    assert matched(host_uri, Req("/api/x", host="b.com")) == "3"
    ex = host_uri.explain(Req("/api/v1/users", host="a.com"))
    shadowed = {c["route_id"]: c for c in ex["candidates"] if c["result"] == "shadowed"}
    assert "always beats a hostless route" in shadowed["1"]["reason"]
    for kind in URI_KINDS:
        uri = compile_router(snap(routes), kind=kind)  # type: ignore[arg-type]
        assert matched(uri, Req("/api/v1/users", host="a.com")) == "1"
        assert matched(uri, Req("/other", host="a.com")) == "2"
        assert matched(uri, Req("/other", host="b.com")) is None


def test_host_layer_falls_through_hosts_then_hostless() -> None:
    routes = [
        {"uri": "/only", "host": "a.b.foo.com"},          # 1
        {"uri": "/wild/*", "hosts": ["*.b.foo.com"]},     # 2
        {"uri": "/*", "hosts": ["*.foo.com"], "methods": ["POST"]},  # 3
        {"uri": "/*"},                                     # 4 hostless
    ]
    r = compile_router(snap(routes))
    assert matched(r, Req("/only", host="a.b.foo.com")) == "1"
    assert matched(r, Req("/wild/x", host="a.b.foo.com")) == "2"
    assert matched(r, Req("/z", "POST", host="a.b.foo.com")) == "3"
    assert matched(r, Req("/z", "GET", host="a.b.foo.com")) == "4"
    ex = r.explain(Req("/z", "GET", host="a.b.foo.com"))
    assert [n["host"] for n in ex["host_layer"]["nodes"]] == ["a.b.foo.com", "*.b.foo.com", "*.foo.com"]
    assert "hostless" in ex["precedence"]


def test_host_layer_priority_only_within_host() -> None:
    routes = [
        {"uri": "/p/*", "hosts": ["*.foo.com"], "priority": 100},
        {"uri": "/p/*", "hosts": ["a.foo.com"], "priority": 0},
        {"uri": "/p/*", "hosts": ["a.foo.com"], "priority": 7},
    ]
    r = compile_router(snap(routes))
    assert matched(r, Req("/p/1", host="a.foo.com")) == "3"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_service_hosts_inheritance(kind: str) -> None:
    services = {"s1": {"hosts": ["svc.com", "*.svc.com"]}, "s2": {"upstream_id": "u"}}
    routes = [
        {"uri": "/i", "service_id": "s1"},                     # 1 inherits hosts
        {"uri": "/o", "service_id": "s1", "host": "own.com"},  # 2 own host wins
        {"uri": "/n", "service_id": "s2"},                     # 3 service without hosts
        {"uri": "/m", "service_id": "missing"},                # 4 missing service: still matched
        {"uri": "/num", "service_id": 1},                      # 5 integer service id, missing
    ]
    r = compile_router(snap(routes, services), kind=kind)  # type: ignore[arg-type]
    assert r.errors == []
    assert matched(r, Req("/i", host="svc.com")) == "1"
    assert matched(r, Req("/i", host="x.svc.com")) == "1"
    assert matched(r, Req("/i", host="other.com")) is None
    assert matched(r, Req("/o", host="own.com")) == "2"
    assert matched(r, Req("/o", host="svc.com")) is None
    assert matched(r, Req("/n", host="any.com")) == "3"
    assert matched(r, Req("/m", host="any.com")) == "4"
    assert matched(r, Req("/num")) == "5"


def test_service_hosts_put_route_in_host_layer() -> None:
    services = {"s1": {"hosts": ["svc.com"]}}
    routes = [{"uri": "/exact", "priority": 10}, {"uri": "/*", "service_id": "s1"}]
    r = compile_router(snap(routes, services))
    assert matched(r, Req("/exact", host="svc.com")) == "2"


# --------------------------------------------------------------------------- parameters

def test_parameter_router_captures() -> None:
    routes = [
        {"uri": "/user/:name"},                   # 1
        {"uri": "/user/:user/*action"},           # 2
        {"uri": "/user/admin"},                   # 3 exact beats parameters
        {"uri": "/files/*"},                      # 4
        {"uri": "/v1/:a/x/:b"},                   # 5
        {"uri": "/ext/:id/*"},                    # 6 anonymous star captured as ext
    ]
    r = compile_router(snap(routes), kind="radixtree_uri_with_parameter")
    assert r.errors == []

    def params(path: str) -> tuple[str | None, dict[str, str]]:
        hit = r.match(Req(path))
        assert r.explain(Req(path))["matched"] == (hit.route_id if hit else None)
        return (hit.route_id, dict(hit.params)) if hit else (None, {})

    assert params("/user/bob") == ("1", {"name": "bob"})
    assert params("/user/admin") == ("3", {})
    assert params("/user/bob/edit/now") == ("2", {"user": "bob", "action": "edit/now"})
    assert params("/user/") == (None, {})
    assert params("/user/bob/") == ("2", {"user": "bob", "action": ""})
    assert params("/files/a/b") == ("4", {})
    assert params("/v1/p/x/q") == ("5", {"a": "p", "b": "q"})
    assert params("/v1/p/y/q") == (None, {})
    assert params("/ext/7/a/b") == ("6", {"id": "7", "ext": "a/b"})
    hit = r.match(Req("/user/bob"))
    assert hit is not None and hit.matched_uri == "/user/:name"
    ex = r.explain(Req("/user/bob"))
    win = [c for c in ex["candidates"] if c["result"] == "matched"][0]
    assert win["stage"] == "param" and win["params"] == {"name": "bob"}


def test_parameter_precedence_longer_uri_at_same_node() -> None:
    # "/user/:id" and "/user/*" live at node "/user/": longer original uri first.
    r = compile_router(snap([{"uri": "/user/*"}, {"uri": "/user/:id"}]), kind="radixtree_uri_with_parameter")
    assert matched(r, Req("/user/1")) == "2"
    assert matched(r, Req("/user/1/2")) == "1"


@pytest.mark.parametrize("kind", ["radixtree_host_uri", "radixtree_uri"])
def test_colon_is_literal_without_parameter_router(kind: str) -> None:
    r = compile_router(snap([{"uri": "/user/:name"}, {"uri": "/v1/models/m:predict"}]), kind=kind)  # type: ignore[arg-type]
    assert matched(r, Req("/user/bob")) is None
    assert matched(r, Req("/user/:name")) == "1"
    assert matched(r, Req("/v1/models/m:predict")) == "2"


def test_colon_inside_segment_is_literal_in_parameter_router() -> None:
    r = compile_router(snap([{"uri": "/v1/models/m:predict"}]), kind="radixtree_uri_with_parameter")
    assert matched(r, Req("/v1/models/m:predict")) == "1"
    assert matched(r, Req("/v1/models/mxyz")) is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_mid_path_star_captures(kind: str) -> None:
    r = compile_router(snap([{"uri": "/a/*/c"}, {"uri": "/d/*rest/e"}]), kind=kind)  # type: ignore[arg-type]
    hit = r.match(Req("/a/x/y/c"))
    assert hit is not None and dict(hit.params) == {"ext": "x/y"}
    hit = r.match(Req("/d/1/2/e"))
    assert hit is not None and dict(hit.params) == {"rest": "1/2"}
    assert r.match(Req("/a/x/y/c/d")) is None


# --------------------------------------------------------------------------- invalid routes

BAD_ROUTES: list[tuple[dict[str, Any], str, str]] = [
    ({"uri": "/b", "vars": [["arg_a", "~~", "(unclosed"]]}, "/vars/0/2", "invalid regular expression"),
    ({"uri": "/b", "vars": [["arg_a", "like", "x"]]}, "/vars/0/1", "unknown operator"),
    ({"uri": "/b", "remote_addrs": ["10.0.0.0/40"]}, "/remote_addrs/0", "CIDR"),
    ({"uri": "/b", "remote_addr": "nope"}, "/remote_addr", "CIDR"),
    ({"uri": "/b", "hosts": ["bad host!"]}, "/hosts/0", "invalid host"),
    ({"uri": "/b", "hosts": ["foo.*"]}, "/hosts/0", "invalid host"),
    ({"uri": "/b", "host": "a.com", "hosts": ["b.com"]}, "/hosts", "only one of host or hosts"),
    ({"uri": "/b", "uris": ["/c"]}, "/uris", "only one of uri or uris"),
    ({"upstream_id": "1"}, "", "required: uri or uris"),
    ({"uri": 5}, "/uri", "expected a non-empty uri string"),
    ({"uris": []}, "/uris", "non-empty array"),
    ({"uri": "/b", "methods": ["GET", "FETCH"]}, "/methods/1", "unknown method"),
    ({"uri": "/b", "priority": "high"}, "/priority", "expected an integer"),
    ({"uri": "/b", "priority": 1.5}, "/priority", "expected an integer"),
    ({"uri": "/b", "priority": float("inf")}, "/priority", "expected an integer"),
    ({"uri": "/b", "methods": [{"GET": 1}]}, "/methods/0", "unknown method"),
    ({"uri": "/b", "methods": "GET"}, "/methods", "expected an array"),
    ({"uri": "/b", "hosts": []}, "/hosts", "non-empty array"),
    ({"uri": "/b", "remote_addrs": [5]}, "/remote_addrs/0", "CIDR string"),
    ({"uri": "/b", "vars": {"arg_a": "1"}}, "/vars", "expected an array"),
    ({"uri": "/b", "filter_func": "function(vars) return true end"}, "/filter_func", "not supported"),
]


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("bad, pointer, text", BAD_ROUTES)
def test_invalid_route_is_skipped_and_reported(kind: str, bad: dict[str, Any], pointer: str, text: str) -> None:
    routes = {"good1": {"uri": "/g1"}, "bad": bad, "good2": {"uri": "/*"}}
    r = compile_router(snap(routes), kind=kind)  # type: ignore[arg-type]
    assert len(r.errors) == 1
    err = r.errors[0]
    assert isinstance(err, ConfigError)
    assert (err.kind, err.id, err.pointer) == ("routes", "bad", pointer)
    assert text in err.message
    assert "routes id=bad" in str(err)
    assert r.route_count == 2
    assert matched(r, Req("/g1")) == "good1"
    assert matched(r, Req("/b")) == "good2"


def test_route_value_not_an_object_is_reported() -> None:
    s = Snapshot(version=1, resources={"routes": {"x": Resource("routes", "x", "oops"),  # type: ignore[arg-type]
                                                  "y": Resource("routes", "y", {"uri": "/y"})}})
    r = compile_router(s)
    assert [e.id for e in r.errors] == ["x"] and matched(r, Req("/y")) == "y"


def test_service_with_invalid_hosts_is_reported() -> None:
    r = compile_router(snap([{"uri": "/s", "service_id": "s"}], {"s": {"hosts": ["bad host"]}}))
    assert len(r.errors) == 1 and r.errors[0].pointer == "/service_id"
    assert "service s has invalid hosts" in r.errors[0].message


def test_status_false_is_not_disabled() -> None:
    # Lua compares status == 0; JSON false is not 0 there.
    r = compile_router(snap([{"uri": "/s", "status": False}]))
    assert matched(r, Req("/s")) == "1"


def test_empty_snapshot() -> None:
    for kind in ALL_KINDS:
        r = compile_router(Snapshot(version=1, resources={}), kind=kind)  # type: ignore[arg-type]
        assert r.match(Req("/")) is None
        ex = r.explain(Req("/"))
        assert ex["matched"] is None and ex["candidates"] == []
        assert r.version == 1


# --------------------------------------------------------------------------- explain

def test_explain_structure_and_reasons() -> None:
    routes = [
        {"uri": "/blog/foo/*"},
        {"uri": "/blog/foo/a/*", "methods": ["POST"]},
        {"uri": "/blog/foo/a/*", "priority": -1},
        {"uri": "/blog/*", "priority": 99},
    ]
    r = compile_router(snap(routes), kind="radixtree_uri")
    ex = r.explain(Req("/blog/foo/a/b", "GET"))
    assert ex["matched"] == "3"
    assert ex["router"] == "radixtree_uri"
    assert ex["host_layer"] is None
    cands = ex["candidates"]
    assert [(c["route_id"], c["result"]) for c in cands] == [
        ("2", "rejected"), ("3", "matched"), ("1", "shadowed"), ("4", "shadowed")]
    assert cands[0]["reason"] == "method GET not in [POST]"
    assert cands[0]["stage"] == "prefix" and cands[0]["node"] == "/blog/foo/a/"
    assert {"route_id", "uri", "priority", "stage", "host", "result"} <= set(cands[1])
    assert "longer prefix node '/blog/foo/a/'" in cands[2]["reason"]
    assert "regardless of priority (-1 vs 99)" in cands[3]["reason"]
    assert "route 3 won" in ex["precedence"]
    assert "1 higher-ranked candidate(s) were rejected" in ex["precedence"]


def test_explain_tie_break_texts() -> None:
    r = compile_router(snap([{"uri": "/t/*", "priority": 2}, {"uri": "/t/*"}, {"uri": "/t/*/z"},
                             {"uri": "/t/*/q"}, {"uri": "/t/a"}]), kind="radixtree_uri")
    ex = r.explain(Req("/t/a"))
    reasons = {c["route_id"]: c.get("reason") for c in ex["candidates"]}
    assert ex["matched"] == "5"
    assert "exact path '/t/a' beats" in reasons["1"]
    ex = r.explain(Req("/t/x/z"))
    reasons = {c["route_id"]: c.get("reason") for c in ex["candidates"]}
    assert ex["matched"] == "1"
    assert "higher priority 2 > 0" in reasons["3"]
    assert reasons["4"].startswith("path '/t/x/z' does not match pattern")
    r = compile_router(snap([{"uri": "/t/*/z"}, {"uri": "/t/*"}, {"uri": "/t/*"}]), kind="radixtree_uri")
    reasons = {c["route_id"]: c.get("reason") for c in r.explain(Req("/t/x/z"))["candidates"]}
    assert "longer uri '/t/*/z'" in reasons["2"]
    reasons = {c["route_id"]: c.get("reason") for c in r.explain(Req("/t/x"))["candidates"]}
    assert "insertion order" in reasons["3"]


def test_explain_vars_and_host_reasons() -> None:
    r = compile_router(snap([{"uri": "/v", "vars": [["arg_a", "==", "1"]], "hosts": ["a.com", "*.b.com"]},
                             {"uri": "/v", "remote_addrs": ["10.0.0.0/8"]}]), kind="radixtree_uri")
    ex = r.explain(Req("/v", host="c.com", vars={"arg_a": "1"}))
    reasons = [c["reason"] for c in ex["candidates"]]
    assert reasons[0] == "host c.com not in [a.com, *.b.com]"
    assert reasons[1] == "remote_addr 127.0.0.1 not in [10.0.0.0/8]"
    assert ex["matched"] is None and "404" in ex["precedence"]
    ex = r.explain(Req("/v", host="x.b.com", vars={"arg_a": "2"}))
    assert ex["candidates"][0]["reason"].startswith("vars: ")
    assert '"2"' in ex["candidates"][0]["reason"]


def test_explain_wildcard_vs_exact_host_reason() -> None:
    r = compile_router(snap(HOST_ROUTES))
    ex = r.explain(Req("/x", host="a.b.foo.com"))
    assert ex["matched"] == "3" and ex["matched_host"] == "a.b.foo.com"
    reasons = {c["route_id"]: c.get("reason") for c in ex["candidates"]}
    assert "exact host 'a.b.foo.com' is tried before wildcard host '*.b.foo.com'" == reasons["2"]
    ex = r.explain(Req("/x", host="c.b.foo.com"))
    reasons = {c["route_id"]: c.get("reason") for c in ex["candidates"]}
    assert "longer wildcard host '*.b.foo.com'" in reasons["1"]


# --------------------------------------------------------------------------- scale and hygiene

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_many_routes(kind: str) -> None:
    routes = []
    for i in range(3000):
        routes.append({"uri": f"/svc{i}/items"})
        routes.append({"uri": f"/svc{i}/*", "methods": ["GET"]})
        routes.append({"uri": f"/p{i}/*", "host": f"h{i % 50}.example.com"})
    r = compile_router(snap(routes), kind=kind)  # type: ignore[arg-type]
    assert r.route_count == 9000 and not r.errors
    assert matched(r, Req("/svc1234/items")) == str(1234 * 3 + 1)
    assert matched(r, Req("/svc1234/x")) == str(1234 * 3 + 2)
    assert matched(r, Req("/svc1234/x", "POST")) is None
    assert matched(r, Req("/p77/x", host="h27.example.com")) == str(77 * 3 + 3)
    assert matched(r, Req("/p77/x", host="h28.example.com")) is None


def test_compile_does_not_mutate_snapshot() -> None:
    value = {"uri": "/x", "hosts": ["A.com"], "vars": [["arg_a", "==", "1"]], "methods": ["GET"]}
    before = json.dumps(value, sort_keys=True)
    s = snap([value])
    compile_router(s)
    assert json.dumps(dict(s.items("routes")["1"].value), sort_keys=True) == json.dumps(
        {**json.loads(before), "id": "1"}, sort_keys=True)


def test_router_package_imports_only_model_errors_and_stdlib() -> None:
    root = pathlib.Path(__file__).resolve().parents[3] / "src" / "meshgate" / "router"
    allowed_internal = {"meshgate.model", "meshgate.errors"}
    stdlib = sys.stdlib_module_names
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    names = [node.module or ""]
                elif node.level == 2:
                    names = [f"meshgate.{node.module}" if node.module else "meshgate"]
                else:
                    continue  # same package
            for name in names:
                assert not name.startswith("asyncio"), (path.name, name)
                top = name.split(".")[0]
                if top == "meshgate":
                    assert any(name == a or name.startswith(a + ".") for a in allowed_internal), (path.name, name)
                else:
                    assert top in stdlib or top == "__future__", (path.name, name)


# --------------------------------------------------------------------------- randomized oracle

def test_radix_tree_finds_every_prefix_key() -> None:
    import random

    from meshgate.router.radixtree import _Entry, _Route, build_tree

    rng = random.Random(1234)
    alphabet = "ab/"
    for _ in range(200):
        keys = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 25))}
        entries = []
        for k in keys:
            r = _Route()
            r.id = k
            entries.append(_Entry(r, k + "*", k, "prefix", None, (), None, None))
        tree = build_tree(entries)
        for _ in range(30):
            path = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            got = [lst[0].key for lst in tree._nodes(path)]
            want = sorted((k for k in keys if path.startswith(k)), key=len)
            assert got == want, (sorted(keys), path)


def _oracle(routes: dict[str, dict[str, Any]], req: Req, kind: str) -> str | None:
    """Brute force over every (route, uri, host) with an explicit precedence key."""
    ranked = []
    for order, (rid, r) in enumerate(routes.items()):
        if r.get("status") == 0:
            continue
        if r.get("methods") and req.method not in r["methods"]:
            continue
        hosts = [h.lower() for h in r.get("hosts", [])]

        def host_ok(h: str) -> bool:
            return req.host.endswith(h[1:]) if h.startswith("*") else req.host == h

        for u in r.get("uris", [r.get("uri")]):
            if u.endswith("*"):
                key, stage = u[:-1], 1
                if not req.path.startswith(key):
                    continue
            else:
                key, stage = u, 0
                if req.path != u:
                    continue
            uri_rank = (stage, -len(key), -r.get("priority", 0), -len(u), order)
            if kind == "radixtree_host_uri" and hosts:
                for h in hosts:
                    if host_ok(h):
                        host_rank = (0, 0) if not h.startswith("*") else (1, -len(h))
                        ranked.append(((0, host_rank) + uri_rank, rid))
            elif kind == "radixtree_host_uri":
                ranked.append(((1, (0, 0)) + uri_rank, rid))
            elif not hosts or any(host_ok(h) for h in hosts):
                ranked.append(((0, (0, 0)) + uri_rank, rid))
    return min(ranked)[1] if ranked else None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_randomized_against_oracle(kind: str) -> None:
    import random

    rng = random.Random(20240601 + ALL_KINDS.index(kind))
    segs = ["a", "b", "ab"]
    host_pool = ["x.com", "a.x.com", "b.a.x.com", "*.x.com", "*.a.x.com", "*x.com", "*"]

    def rand_path() -> str:
        return "/" + "/".join(rng.choice(segs) for _ in range(rng.randint(0, 3)))

    for _ in range(150):
        routes: dict[str, dict[str, Any]] = {}
        for i in range(rng.randint(1, 12)):
            p = rand_path()
            u = rng.choice([p, p + "*", p.rstrip("/") + "/*", p]) if p != "/" else rng.choice(["/", "/*"])
            r: dict[str, Any] = {"uri": u}
            if rng.random() < 0.2:
                r = {"uris": sorted({u, rand_path()})}
            if rng.random() < 0.4:
                r["priority"] = rng.randint(-2, 2)
            if rng.random() < 0.3:
                r["methods"] = rng.sample(["GET", "POST", "PUT"], rng.randint(1, 2))
            if rng.random() < 0.4:
                r["hosts"] = rng.sample(host_pool, rng.randint(1, 2))
            if rng.random() < 0.05:
                r["status"] = 0
            routes[f"r{i}"] = r
        router = compile_router(snap(routes), kind=kind)  # type: ignore[arg-type]
        assert not router.errors
        for _ in range(25):
            req = Req(rand_path() + rng.choice(["", "/", "b"]), rng.choice(["GET", "POST", "PUT"]),
                      host=rng.choice(["x.com", "a.x.com", "b.a.x.com", "c.b.a.x.com", "zx.com", "y.org"]))
            assert matched(router, req) == _oracle(routes, req, kind), (routes, req)


# --------------------------------------------------------------------------- path shapes

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_star_inside_a_segment(kind: str) -> None:
    r = compile_router(snap([{"uri": "/img/*.png"}, {"uri": "/a/b*c"}, {"uri": "/x/*/y*"}]), kind=kind)  # type: ignore[arg-type]
    assert matched(r, Req("/img/a/b.png")) == "1"
    assert matched(r, Req("/img/.png")) == "1"
    assert matched(r, Req("/img/a.jpg")) is None
    assert matched(r, Req("/a/bc")) == "2"
    assert matched(r, Req("/a/b/z/c")) == "2"
    assert matched(r, Req("/a/bz")) is None
    hit = r.match(Req("/x/1/2/yz"))
    assert hit is not None and hit.route_id == "3" and dict(hit.params) == {"ext": "1/2"}
    assert matched(r, Req("/x/1/z")) is None


def test_parameter_at_root_and_multiple_uris() -> None:
    r = compile_router(snap([{"uris": ["/:tenant", "/:tenant/home"]}, {"uri": "/static/*"}]),
                       kind="radixtree_uri_with_parameter")
    hit = r.match(Req("/acme"))
    assert hit is not None and dict(hit.params) == {"tenant": "acme"} and hit.matched_uri == "/:tenant"
    hit = r.match(Req("/acme/home"))
    assert hit is not None and dict(hit.params) == {"tenant": "acme"} and hit.matched_uri == "/:tenant/home"
    # "/static/*" is a longer tree node than "/" (where "/:tenant" lives).
    assert matched(r, Req("/static/app.js")) == "2"
    assert matched(r, Req("/static")) == "1"


@pytest.mark.parametrize(
    "entries, addr, expected",
    [
        (["10.0.0.1"], "10.0.0.1", True),
        (["10.0.0.1"], "010.0.0.1", False),          # no octal/leading zeros
        (["10.0.0.0/8"], "10.255.255.255", True),
        (["0.0.0.0/0"], "8.8.8.8", True),
        (["0.0.0.0/0"], "::1", False),               # families are separate
        (["::/0"], "::1", True),
        (["2001:db8::1"], "2001:DB8:0:0:0:0:0:1", True),
        (["fe80::/10"], "fe80::1%eth0", True),       # zone index ignored
        (["10.0.0.0/8"], "::ffff:10.0.0.1", False),
        (["10.0.0.0/8"], "", False),
        (["10.0.0.0/8"], "10.0.0", False),
        (["192.168.1.0/24", "10.0.0.0/8", "10.1.0.0/16"], "10.1.2.3", True),
    ],
)
def test_remote_addr_matching(entries: list[str], addr: str, expected: bool) -> None:
    r = compile_router(snap([{"uri": "/", "remote_addrs": entries}]))
    assert (matched(r, Req("/", remote_addr=addr)) == "1") is expected


def test_compile_never_raises_on_junk_routes() -> None:
    import random

    rng = random.Random(99)
    atoms: list[Any] = [None, True, False, 0, 1, -1, 1.5, float("nan"), "", "*", "/", "x", "GET", "10.0.0.0/8",
                        "::1", ":", "/a/:b/*c", "*.x.com", "a.com:80", "==", "~~", "(", "AND", "!"]

    def junk(depth: int = 0) -> Any:
        roll = rng.random()
        if depth < 3 and roll < 0.25:
            return [junk(depth + 1) for _ in range(rng.randint(0, 4))]
        if depth < 2 and roll < 0.3:
            return {rng.choice(["a", "hosts", "uri"]): junk(depth + 1)}
        return rng.choice(atoms)

    fields = ["uri", "uris", "methods", "host", "hosts", "remote_addr", "remote_addrs", "vars", "priority",
              "status", "service_id", "filter_func"]
    for _ in range(400):
        routes = {}
        for i in range(5):
            value = {"uri": "/ok"} if rng.random() < 0.3 else {}
            for f in rng.sample(fields, rng.randint(1, 5)):
                value[f] = junk()
            routes[str(i)] = value
        services = {"x": {"hosts": junk()}, "*": {"hosts": ["a.com"]}}
        for kind in ALL_KINDS:
            r = compile_router(snap(routes, services), kind=kind)  # type: ignore[arg-type]
            assert r.route_count + len(r.errors) <= len(routes)
            for path in ("/ok", "/", "/a/b/c"):
                req = Req(path, host=rng.choice(["a.com", "x.com"]), http_host="a.com:80")
                matched(r, req)
