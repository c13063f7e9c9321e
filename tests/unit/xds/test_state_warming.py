"""Listener warming, as Envoy does it: a listener whose route configurations (RDS) have not
arrived is accepted but not handed to the workers, the previous version keeps serving, and the
proxy is not ready until the first listeners are warm."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (registers the Any type)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from google.protobuf import json_format

from meshgate.xds.ads import LDS, RDS, XdsRejected
from meshgate.xds.dump import config_dump
from meshgate.xds.state import MeshState, ModelChange

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def listener(name: str, port: int, rds: str, timeout: str | None = None) -> listener_pb2.Listener:
    source: dict[str, Any] = {"ads": {}, "resource_api_version": "V3"}
    if timeout is not None:
        source["initial_fetch_timeout"] = timeout
    hcm = {"@type": HCM, "stat_prefix": name, "rds": {"route_config_name": rds, "config_source": source},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    return json_format.ParseDict({
        "name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}]}, listener_pb2.Listener())


def routes(name: str, cluster: str = "c") -> route_pb2.RouteConfiguration:
    return json_format.ParseDict({"name": name, "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        route_pb2.RouteConfiguration())


def recorder() -> tuple[MeshState, list[ModelChange]]:
    seen: list[ModelChange] = []
    return MeshState(on_change=seen.extend), seen


def kinds(changes: list[ModelChange]) -> list[tuple[str, str, bool]]:
    return [(k, n, v is not None) for k, n, v in changes]


def test_listener_waits_for_its_routes_then_goes_live() -> None:
    st, seen = recorder()
    st.apply(LDS, {"l": listener("l", 8080, "r")}, ())
    assert seen == [] and set(st.warming) == {"l"} and st.initializing
    assert st.wanted(RDS) == {"r"}                      # still subscribed while warming
    assert st.model() == []                             # a re-sync does not leak it either
    st.apply(RDS, {"r": routes("r")}, ())
    # the table first, then the listener, in one change set
    assert kinds(seen) == [("route_configs", "r", True), ("listeners", "l", True)]
    assert st.warming == {} and not st.initializing


def test_updated_listener_keeps_the_old_version_while_the_new_one_warms() -> None:
    st, seen = recorder()
    st.apply(RDS, {"r": routes("r")}, ())
    st.apply(LDS, {"l": listener("l", 8080, "r")}, ())
    old = seen[-1][2]
    assert not st.initializing
    seen.clear()
    st.apply(LDS, {"l": listener("l", 8080, "r2")}, ())
    assert seen == [] and set(st.warming) == {"l"}
    assert not st.initializing                          # readiness, once reached, stays
    assert [v for k, n, v in st.model() if k == "listeners"] == [old]
    assert st.wanted(RDS) == {"r2"}
    dumped = config_dump(st)["configs"][2]["dynamic_listeners"][0]
    assert "warming_state" in dumped and "active_state" not in dumped
    st.apply(RDS, {"r2": routes("r2")}, ())
    assert kinds(seen) == [("route_configs", "r2", True), ("listeners", "l", True)]
    assert seen[-1][2] is not None and seen[-1][2]["chains"][0]["http"]["rds"] == "r2"


def test_removed_while_warming_and_listeners_without_rds_are_not_held() -> None:
    st, seen = recorder()
    st.apply(LDS, {"a": listener("a", 1, "ra")}, ())
    st.apply(LDS, {}, ["a"])
    assert kinds(seen) == [("listeners", "a", False)] and st.warming == {}
    assert not st.initializing


def test_a_rejected_route_config_ends_the_warming() -> None:
    st, seen = recorder()
    st.apply(LDS, {"l": listener("l", 8080, "r", timeout="0s")}, ())
    bad = json_format.ParseDict({"name": "r", "virtual_hosts": [{   # a route without an action
        "name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}}]}]}, route_pb2.RouteConfiguration())
    with pytest.raises(XdsRejected):
        st.apply(RDS, {"r": bad}, ())
    # Envoy ends the initial fetch on a rejected update: the listener serves an empty table
    assert kinds(seen) == [("listeners", "l", True)] and not st.initializing


async def test_initial_fetch_timeout_bounds_the_wait() -> None:
    st, seen = recorder()
    st.apply(LDS, {"l": listener("l", 8080, "r", timeout="0.2s"),
                   "forever": listener("forever", 8081, "r2", timeout="0s")}, ())
    assert seen == []
    await asyncio.sleep(0.4)
    assert kinds(seen) == [("listeners", "l", True)]   # istiod's 0s: no limit
    assert set(st.warming) == {"forever"} and st.initializing


def test_translation_reads_the_initial_fetch_timeout() -> None:
    from meshgate.xds.translate.listener import translate_listener

    def timeout(lst: listener_pb2.Listener) -> Any:
        return translate_listener(lst)["chains"][0]["http"]["rds_timeout"]

    assert timeout(listener("l", 1, "r")) == 15.0           # Envoy's default
    assert timeout(listener("l", 1, "r", "0s")) is None     # what istiod sends: wait for ever
    assert timeout(listener("l", 1, "r", "2.5s")) == 2.5
