"""Incremental compile: a router (and runtime) built from the previous version must match
exactly as one compiled from scratch, whatever changed in between."""

from __future__ import annotations

import random
from typing import Any

from meshgate.config import ConfigStore
from meshgate.config.store import Change
from meshgate.model import Snapshot
from meshgate.plugins import PluginRegistry
from meshgate.proxy.runtime import build_runtime
from meshgate.proxy.worker import snapshot_delta, snapshot_from_wire, snapshot_to_wire
from meshgate.router import MatchInput, compile_router

UP = {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}


class Req:
    def __init__(self, path: str, host: str = "a.test") -> None:
        self.path = path
        self.method = "GET"
        self.host = host
        self.http_host = host
        self.remote_addr = "127.0.0.1"

    def var(self, name: str) -> Any:
        return {"uri": self.path, "host": self.host}.get(name)


def _route(i: int, rng: random.Random) -> dict[str, Any]:
    r: dict[str, Any] = {"id": str(i), "uri": rng.choice([f"/p{i % 3}", f"/p{i % 2}/*", "/*", f"/x/{i}"]),
                         "upstream": UP}
    if rng.random() < 0.3:
        r["hosts"] = [rng.choice(["a.test", "*.test", "b.test"])]
    if rng.random() < 0.2:
        r["priority"] = rng.randint(-2, 2)
    return r


PATHS = [f"/p{i}" for i in range(8)] + [f"/p{i}/q" for i in range(6)] + ["/x/3", "/x/11", "/zzz"]


def _same_answers(a: Any, b: Any) -> None:
    for p in PATHS:
        for h in ("a.test", "b.test", "c.test", "other"):
            req: MatchInput = Req(p, h)  # type: ignore[assignment]
            ha, hb = a.match(req), b.match(req)
            assert (ha.route_id if ha else None) == (hb.route_id if hb else None), (p, h)


def test_router_from_previous_matches_like_a_fresh_compile() -> None:
    rng = random.Random(7)
    store = ConfigStore()
    store.replace_all({"routes": {str(i): _route(i, rng) for i in range(60)}})
    router = compile_router(store.snapshot)
    next_id = 60
    for step in range(60):
        op = rng.random()
        ids = list(store.snapshot.items("routes"))
        if op < 0.4:      # change one
            i = rng.choice(ids)
            store.apply([Change("routes", i, {**_route(int(i), rng), "id": i})])
        elif op < 0.6:    # delete one
            store.apply([Change("routes", rng.choice(ids), None)])
        elif op < 0.8:    # add one at the end
            store.apply([Change("routes", str(next_id), _route(next_id, rng))])
            next_id += 1
        else:             # full reload that inserts in the middle and reorders a little
            items = {i: r.value for i, r in store.snapshot.items("routes").items()}
            keys = list(items)
            keys.insert(rng.randrange(len(keys) + 1), str(next_id))
            items[str(next_id)] = _route(next_id, rng)
            next_id += 1
            if step % 3 == 0:
                rng.shuffle(keys)   # order breaks ties between equal routes: it must follow
            store.replace_all({"routes": {k: items[k] for k in keys}})
        incremental = compile_router(store.snapshot, previous=router)
        _same_answers(incremental, compile_router(store.snapshot))
        router = incremental


def test_a_service_change_recompiles_the_routes_that_use_it() -> None:
    store = ConfigStore()
    store.replace_all({"services": {"s": {"id": "s", "hosts": ["a.test"]}},
                       "routes": {"1": {"id": "1", "uri": "/p", "service_id": "s"}}})
    r1 = compile_router(store.snapshot)
    assert r1.match(Req("/p", "a.test")) is not None  # type: ignore[arg-type]
    store.apply([Change("services", "s", {"id": "s", "hosts": ["b.test"]})])
    r2 = compile_router(store.snapshot, previous=r1)
    assert r2.match(Req("/p", "a.test")) is None  # type: ignore[arg-type]
    assert r2.match(Req("/p", "b.test")) is not None  # type: ignore[arg-type]


def test_runtime_reuses_unchanged_routes_only() -> None:
    reg = PluginRegistry()
    reg.load_all()
    store = ConfigStore()
    store.replace_all({"routes": {str(i): {"id": str(i), "uri": f"/r{i}", "upstream": UP,
                                           "plugins": {"request-id": {}}} for i in range(20)},
                       "global_rules": {"g": {"id": "g", "plugins": {"prometheus": {}}}}})
    rt1 = build_runtime(store.snapshot, plugins=reg)
    store.apply([Change("routes", "3", {"id": "3", "uri": "/changed", "upstream": UP})])
    rt2 = build_runtime(store.snapshot, plugins=reg, previous=rt1)
    assert rt2.routes["4"] is rt1.routes["4"]
    assert rt2.routes["3"] is not rt1.routes["3"] and rt2.routes["3"].chain is None
    assert rt2.routes["3"].gchain is rt2.global_chain is rt1.global_chain
    assert rt2.upstreams.keys() == rt1.upstreams.keys()
    # a global rule change rebuilds every route's view of the global chain
    store.apply([Change("global_rules", "g", {"id": "g", "plugins": {"request-id": {}}})])
    rt3 = build_runtime(store.snapshot, plugins=reg, previous=rt2)
    assert rt3.routes["4"] is not rt2.routes["4"]
    assert rt3.routes["4"].gchain is not None and rt3.routes["4"].gchain.names == ("request-id",)
    # a plugin reload (same registry, new generation) rebuilds too
    reg.generation += 1
    rt4 = build_runtime(store.snapshot, plugins=reg, previous=rt3)
    assert rt4.routes["4"] is not rt3.routes["4"]


def _rows(s: Snapshot) -> dict[str, list[tuple[str, Any, int, int]]]:
    return snapshot_to_wire(s)["resources"]


def test_delta_wire_rebuilds_the_same_snapshot() -> None:
    rng = random.Random(3)
    store = ConfigStore()
    store.replace_all({"routes": {str(i): _route(i, rng) for i in range(30)},
                       "upstreams": {"u": {"id": "u", **UP}}})
    worker = snapshot_from_wire(snapshot_to_wire(store.snapshot), None)
    for step in range(40):
        prev = store.snapshot
        ids = list(prev.items("routes"))
        if step % 4 == 3:   # a reordering full replace crosses as whole kinds
            keys = ids[::-1]
            store.replace_all({"routes": {k: prev.items("routes")[k].value for k in keys},
                               "upstreams": {"u": {"id": "u", **UP}}})
        else:
            store.apply([Change("routes", rng.choice(ids), None),
                         Change("routes", f"n{step}", _route(step, rng)),
                         Change("routes", rng.choice(ids), {**_route(step, rng)})])
        msg = snapshot_delta(prev, store.snapshot)
        assert msg["base"] == worker.version
        new = snapshot_from_wire(msg, worker)
        assert new.version == store.snapshot.version
        assert _rows(new) == _rows(store.snapshot)
        # unchanged items keep their identity on the worker side (the compile reuses them)
        for k, r in new.items("routes").items():
            if k in worker.items("routes") and worker.items("routes")[k].modified_index == r.modified_index:
                assert r is worker.items("routes")[k]
        worker = new
