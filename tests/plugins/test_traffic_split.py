"""traffic-split: schema, rule matching and weighted upstream choice (through the real gateway)."""

from __future__ import annotations

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.traffic_split import SmoothRR

NAME = "traffic-split"


def tagged(tag):
    return lambda req: (200, {"Content-Type": "text/plain"}, tag.encode())


@pytest.fixture
async def ups():
    us = [await Upstream(handler=tagged(t)).start() for t in ("A", "B", "C")]
    yield us
    for u in us:
        await u.close()


def nodes(u):
    return {"type": "roundrobin", "nodes": {u.addr: 1}}


def test_schema(registry):
    registry.validate(NAME, {"rules": [{"match": [{"vars": [["arg_name", "==", "jack"]]}],
                                        "weighted_upstreams": [{"upstream_id": "u1", "weight": 2},
                                                               {"upstream": {"type": "roundrobin",
                                                                             "nodes": {"127.0.0.1:1": 1}}},
                                                               {"weight": 1}]}]}, pointer="/plugins/x")
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"rules": [{"weighted_upstreams": [{"weight": -1}]}]}, pointer="/plugins/x")
    assert ei.value.message == (
        "failed to check the configuration of plugin traffic-split err: property \"rules\" validation failed: "
        "failed to validate item 1: property \"weighted_upstreams\" validation failed: failed to validate item 1: "
        "property \"weight\" validation failed: expected -1 to be at least 0")
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"rules": [{"weighted_upstreams": []}]}, pointer="/plugins/x")
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"rules": [{"match": [{"vars": [["arg_a", "nope", "1"]]}]}]}, pointer="/plugins/x")
    assert ei.value.message.startswith("failed to check the configuration of plugin traffic-split err: "
                                       "failed to validate the 'vars' expression: ")


def test_smooth_rr_spreads_by_weight():
    rr = SmoothRR([("a", 5), ("b", 1), ("c", 1), ("z", 0)])
    picks = [rr.pick() for _ in range(70)]
    assert picks.count("a") == 50 and picks.count("b") == 10 and picks.count("c") == 10
    assert "z" not in picks
    # smooth: never more than a run of 'a' as long as its share
    assert "aaaaaa" not in "".join(picks)
    assert SmoothRR([("x", 0)]).pick() is None


async def test_weighted_inline_upstream_and_route_upstream(tmp_path, ups):
    a, b, _ = ups
    doc = {"routes": [{"id": "1", "uri": "/*", "upstream": nodes(a), "plugins": {NAME: {"rules": [{
        "match": [{"vars": [["arg_name", "==", "jack"], ["arg_age", "!", "<", "16"]]}],
        "weighted_upstreams": [{"upstream": {"name": "upstream_B", "type": "roundrobin", "nodes": {b.addr: 2},
                                             "timeout": {"connect": 15, "send": 15, "read": 15}}, "weight": 2},
                               {"weight": 1}]}]}}}]}
    gw = start_gateway(tmp_path, doc)
    try:
        # the expression fails: the route's own upstream
        assert (await http(gw.addr, "GET", "/server_port?name=jack&age=14")).body == b"A"
        bodies = [(await http(gw.addr, "GET", "/server_port?name=jack&age=16")).body for _ in range(6)]
        assert bodies.count(b"B") == 4 and bodies.count(b"A") == 2
    finally:
        gw.stop()


async def test_upstream_id_rules_in_order(tmp_path, ups):
    a, b, c = ups
    doc = {"upstreams": [{"id": "ub", **nodes(b)}, {"id": "uc", **nodes(c)}],
           "routes": [{"id": "1", "uri": "/*", "upstream": nodes(a), "plugins": {NAME: {"rules": [
               {"match": [{"vars": [["http_x_to", "==", "b"]]}, {"vars": [["arg_to", "==", "b"]]}],
                "weighted_upstreams": [{"upstream_id": "ub"}]},
               {"match": [{"vars": [["http_x_to", "==", "c"]]}], "weighted_upstreams": [{"upstream_id": "uc"}]},
               {"match": [{"vars": [["arg_to", "==", "missing"]]}],
                "weighted_upstreams": [{"upstream_id": "missing"}]},
           ]}}}]}
    gw = start_gateway(tmp_path, doc)
    try:
        assert (await http(gw.addr, "GET", "/", headers={"X-To": "b"})).body == b"B"
        assert (await http(gw.addr, "GET", "/?to=b")).body == b"B"
        assert (await http(gw.addr, "GET", "/", headers={"X-To": "c"})).body == b"C"
        assert (await http(gw.addr, "GET", "/")).body == b"A"
        r = await http(gw.addr, "GET", "/?to=missing")
        assert r.status == 500 and r.body == b"failed to fetch upstream info by upstream id: missing"
    finally:
        gw.stop()


async def test_rule_without_match_and_zero_weight(tmp_path, ups):
    a, b, _ = ups
    doc = {"routes": [{"id": "1", "uri": "/*", "upstream": nodes(a), "plugins": {NAME: {"rules": [
        {"weighted_upstreams": [{"upstream": nodes(b), "weight": 1}, {"weight": 0}]}]}}}]}
    gw = start_gateway(tmp_path, doc)
    try:
        for _ in range(3):
            assert (await http(gw.addr, "GET", "/")).body == b"B"
    finally:
        gw.stop()
