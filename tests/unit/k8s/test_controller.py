"""meshgate.k8s.controller without an apiserver: plan (desired vs owned actual), status
conditions, class filtering, event routing, and one reconcile pass against in-memory fakes of
the Admin API and the status subresource."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.k8s.client import KubeError, Resource
from meshgate.k8s.controller import (AdminClient, AdminError, Controller, ControllerOptions, accepted_condition,
                                     class_matches, conditions_equal, format_plan, merge_conditions, owned, plan,
                                     service_refs)
from meshgate.k8s.translate import labels

from k8stools import put

OWN = labels("ApisixRoute", "ns", "r")


def route(id_: str, uri: str = "/a", **extra: Any) -> dict[str, Any]:
    return {"id": id_, "uris": [uri], "labels": dict(OWN), "upstream": {"type": "roundrobin", "nodes": []}, **extra}


# --- plan -------------------------------------------------------------------------------------


def test_plan_creates_updates_deletes_in_dependency_order() -> None:
    desired = {("routes", "1"): route("1"), ("upstreams", "u"): {"id": "u", "labels": dict(OWN)},
               ("routes", "2"): route("2", "/new")}
    actual = {("routes", "2"): route("2", "/old", create_time=1, update_time=2),
              ("routes", "3"): route("3"), ("upstreams", "old"): {"id": "old", "labels": dict(OWN)}}
    changes = plan(desired, actual)
    assert [(c.op, c.kind, c.id) for c in changes] == [
        ("create", "upstreams", "u"),       # referenced objects first
        ("create", "routes", "1"),
        ("update", "routes", "2"),
        ("delete", "routes", "3"),          # referencing objects deleted first
        ("delete", "upstreams", "old"),
    ]
    assert changes[3].owner == ("ApisixRoute", "ns", "r"), "the owner comes from the labels"
    text = format_plan(changes)
    assert 'uris: ["/old"] -> ["/new"]' in text and "2 to create, 1 to update, 2 to delete" in text


def test_plan_is_empty_when_in_sync_ignoring_server_fields() -> None:
    desired = {("routes", "1"): route("1")}
    actual = {("routes", "1"): route("1", create_time=5, update_time=6)}
    assert plan(desired, actual) == []
    assert format_plan([]) == "no changes"


def test_plan_ssl_key_is_compared_through_what_was_written() -> None:
    want = {"id": "s", "snis": ["a"], "cert": "C", "key": "K2", "labels": dict(OWN)}
    shown = {"id": "s", "snis": ["a"], "cert": "C", "labels": dict(OWN)}  # GET never shows the key
    k = ("ssls", "s")
    assert plan({k: want}, {k: shown}, applied={k: dict(want)}) == []
    assert [c.op for c in plan({k: want}, {k: shown}, applied={k: {**want, "key": "K1"}})] == ["update"]
    assert [c.op for c in plan({k: want}, {k: shown})] == ["update"], "unknown key (after restart): rewrite once"


def test_owned_needs_both_labels() -> None:
    assert owned({"labels": OWN})
    assert not owned({"labels": {**OWN, "k8s/controller-name": "someone-else"}})
    assert not owned({"labels": {"manager-by": "apisix-ingress-controller"}})
    assert not owned({"id": "manual"})
    assert owned({"labels": {**OWN, "k8s/controller-name": "x"}}, "x")


# --- class filter -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls,require,ok", [
    (None, False, True), (None, True, False), ("apisix", False, True), ("apisix", True, True),
    ("nginx", False, False), ("nginx", True, False), ("", False, True)])
def test_class_matches(cls: str | None, require: bool, ok: bool) -> None:
    obj: dict[str, Any] = {"spec": {} if cls is None else {"ingressClassName": cls}}
    assert class_matches(obj, "apisix", require=require) is ok


# --- status -----------------------------------------------------------------------------------


def test_accepted_condition_reasons() -> None:
    c = accepted_condition(generation=3, errors=[], now="T1")
    assert c == {"type": "Accepted", "status": "True", "reason": "Accepted", "message": c["message"],
                 "observedGeneration": 3, "lastTransitionTime": "T1"}
    bad = accepted_condition(generation=1, errors=["ApisixRoute ns/r: /spec/http/0/backends/0: no port 9"], now="T")
    assert (bad["status"], bad["reason"]) == ("False", "InvalidSpec") and "no port 9" in bad["message"]
    sf = accepted_condition(generation=1, errors=[], sync_error="gateway unavailable", now="T")
    assert (sf["status"], sf["reason"], sf["message"]) == ("False", "SyncFailed", "gateway unavailable")
    assert len(accepted_condition(generation=1, errors=["x" * 100000], now="T")["message"]) <= 8192


def test_last_transition_time_changes_only_on_flip() -> None:
    prev = [accepted_condition(generation=1, errors=[], now="T1")]
    same = accepted_condition(generation=2, errors=[], previous=prev, now="T2")
    assert same["lastTransitionTime"] == "T1" and same["observedGeneration"] == 2
    assert not conditions_equal(prev[0], same), "observedGeneration moved: write"
    flip = accepted_condition(generation=2, errors=["e"], previous=prev, now="T3")
    assert flip["lastTransitionTime"] == "T3"
    again = accepted_condition(generation=1, errors=[], previous=prev, now="T9")
    assert conditions_equal(prev[0], again), "unchanged: no write"


def test_merge_conditions_keeps_other_types() -> None:
    other = {"type": "Ready", "status": "True"}
    old = {"type": "Accepted", "status": "False"}
    new = {"type": "Accepted", "status": "True"}
    assert merge_conditions([other, old], new) == [other, new]
    assert merge_conditions(None, new) == [new]


def test_service_refs() -> None:
    ar = {"metadata": {"namespace": "n"}, "spec": {
        "http": [{"backends": [{"serviceName": "a"}, {"serviceName": "b", "subset": "v1"}],
                  "upstreams": [{"name": "ext"}]}, {"backend": {"serviceName": "old"}}],
        "stream": [{"backend": {"serviceName": "tcp"}}]}}
    refs, subset = service_refs(ar)
    assert refs == {("n", "a"), ("n", "b"), ("n", "ext"), ("n", "old"), ("n", "tcp")} and subset


# --- one reconcile pass against fakes -------------------------------------------------------


class FakeAdmin(AdminClient):
    def __init__(self) -> None:
        self.store: dict[str, dict[str, dict[str, Any]]] = {}
        self.refuse: set[str] = set()
        self.calls: list[tuple[str, str, str]] = []

    async def list(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.store.get(kind, {}).items()}

    async def put(self, kind: str, id: str, value: Any) -> None:
        self.calls.append(("PUT", kind, id))
        if id in self.refuse:
            raise AdminError(400, "invalid configuration: nope")
        self.store.setdefault(kind, {})[id] = {**value, "create_time": 1, "update_time": 1}

    async def delete(self, kind: str, id: str) -> None:
        self.calls.append(("DELETE", kind, id))
        self.store.get(kind, {}).pop(id, None)


class FakeKube:
    def __init__(self) -> None:
        self.status: list[tuple[str, str, dict[str, Any]]] = []

    async def patch_status(self, res: Resource, name: str, namespace: str | None, status: Any) -> Any:
        self.status.append((namespace or "", name, status))
        return {}


def svc(ns: str, name: str, port: int = 80) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"namespace": ns, "name": name, "resourceVersion": "1"},
            "spec": {"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": port, "targetPort": 8080}]}}


def eps(ns: str, service: str, *addrs: str) -> dict[str, Any]:
    return {"kind": "EndpointSlice", "metadata": {"namespace": ns, "name": service + "-x", "resourceVersion": "1",
                                                  "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs]}


def ar(ns: str, name: str, service: str, port: int = 80, cls: str | None = None, gen: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"http": [{"name": "r1", "match": {"paths": ["/" + name + "/*"]},
                                      "backends": [{"serviceName": service, "servicePort": port}]}]}
    if cls:
        spec["ingressClassName"] = cls
    return {"kind": "ApisixRoute", "apiVersion": "apisix.apache.org/v2",
            "metadata": {"namespace": ns, "name": name, "generation": gen, "resourceVersion": str(gen)}, "spec": spec}


@pytest.fixture
def ctl() -> Controller:
    return Controller(FakeKube(), FakeAdmin(), ControllerOptions())  # type: ignore[arg-type]


async def test_pass_syncs_valid_isolates_invalid_and_writes_status_once(ctl: Controller) -> None:
    admin, kube = ctl.admin, ctl.kube
    assert isinstance(admin, FakeAdmin) and isinstance(kube, FakeKube)
    admin.store["routes"] = {"manual": {"id": "manual", "uris": ["/m"]},              # not ours: kept
                             "stale": route("stale")}                                 # ours, not desired
    put(ctl, svc("ns", "web"))
    put(ctl, eps("ns", "web", "10.0.0.1"))
    put(ctl, ar("ns", "good", "web"))
    put(ctl, ar("ns", "bad", "web", port=9999))
    put(ctl, ar("ns", "foreign", "web", cls="nginx"))
    assert await ctl.sync_once()
    ids = set(admin.store["routes"])
    assert "manual" in ids and "stale" not in ids and len(ids) == 3, ids   # manual, good, bad (no nodes)
    st = {name: s["conditions"][0] for _, name, s in kube.status}
    assert set(st) == {"good", "bad"}, "the foreign-class object is ignored"
    assert st["good"]["reason"] == "Accepted" and st["good"]["observedGeneration"] == 1
    assert st["bad"]["reason"] == "InvalidSpec" and "no port 9999" in st["bad"]["message"]

    # nothing changed: a second pass writes nothing
    n_calls, n_status = len(admin.calls), len(kube.status)
    assert await ctl.sync_once()
    assert len(admin.calls) == n_calls and len(kube.status) == n_status


async def test_endpoint_change_retranslates_only_referencing_routes(ctl: Controller) -> None:
    admin = ctl.admin
    assert isinstance(admin, FakeAdmin)
    for s in ("web", "api"):
        put(ctl, svc("ns", s))
        put(ctl, eps("ns", s, "10.0.0.1"))
    put(ctl, ar("ns", "r-web", "web"))
    put(ctl, ar("ns", "r-web-2", "web"))
    put(ctl, ar("ns", "r-api", "api"))
    assert await ctl.sync_once()
    assert not ctl.dirty
    assert len(admin.store["upstreams"]) == 2   # one per Service port, shared by its routes
    put(ctl, eps("ns", "web", "10.0.0.1", "10.0.0.2"), "MODIFIED")
    assert ctl.dirty == {("ApisixRoute", "ns", "r-web"), ("ApisixRoute", "ns", "r-web-2")}
    admin.calls.clear()
    assert await ctl.sync_once()
    # the endpoint change is one node-only write of the Service's upstream, however many routes
    assert [c[:2] for c in admin.calls] == [("PUT", "upstreams")], admin.calls
    (value,) = [v for v in admin.store["routes"].values() if v["name"] == "ns_r-web_r1"]
    up = admin.store["upstreams"][value["upstream_id"]]
    assert {n["host"] for n in up["nodes"]} == {"10.0.0.1", "10.0.0.2"}
    # the last route leaving takes the shared upstream with it
    for name in ("r-web", "r-web-2"):
        put(ctl, ar("ns", name, "web"), "DELETED")
        assert await ctl.sync_once()
        assert (value["upstream_id"] in admin.store["upstreams"]) == (name == "r-web")


async def test_status_only_modification_is_not_retranslated(ctl: Controller) -> None:
    obj = ar("ns", "r", "web")
    put(ctl, obj)
    ctl.dirty.clear()
    put(ctl, {**obj, "status": {"conditions": []}, "metadata": {**obj["metadata"], "resourceVersion": "9"}},
        "MODIFIED")
    assert not ctl.dirty


async def test_gateway_refusal_is_sync_failed_and_others_proceed(ctl: Controller) -> None:
    admin, kube = ctl.admin, ctl.kube
    assert isinstance(admin, FakeAdmin) and isinstance(kube, FakeKube)
    put(ctl, svc("ns", "web"))
    put(ctl, eps("ns", "web", "10.0.0.1"))
    put(ctl, ar("ns", "a", "web"))
    put(ctl, ar("ns", "b", "web"))
    a_id = next(it.id for it in ctl.translate(("ApisixRoute", "ns", "a"), ctl._state()).translation.items  # type: ignore[union-attr]
                if it.kind == "routes")
    admin.refuse.add(a_id)
    assert await ctl.sync_once()
    st = {name: s["conditions"][0] for _, name, s in kube.status}
    assert st["a"]["reason"] == "SyncFailed" and "nope" in st["a"]["message"], st["a"]
    assert st["b"]["reason"] == "Accepted"
    admin.refuse.clear()
    assert await ctl.sync_once()   # the retry
    st = {name: s["conditions"][0] for _, name, s in kube.status}
    assert st["a"]["reason"] == "Accepted"


async def test_failed_list_deletes_nothing(ctl: Controller) -> None:
    admin = ctl.admin
    assert isinstance(admin, FakeAdmin)
    admin.store["routes"] = {"stale": route("stale")}

    async def broken(kind: str) -> dict[str, dict[str, Any]]:
        raise AdminError(0, "connection refused")

    admin.list = broken  # type: ignore[method-assign]
    assert not await ctl.sync_once()
    assert "stale" in admin.store["routes"] and not admin.calls


async def test_dry_run_plan_writes_nothing(ctl: Controller) -> None:
    admin, kube = ctl.admin, ctl.kube
    assert isinstance(admin, FakeAdmin) and isinstance(kube, FakeKube)
    put(ctl, svc("ns", "web"))
    put(ctl, eps("ns", "web", "10.0.0.1"))
    put(ctl, ar("ns", "r", "web"))
    changes = await ctl.compute_plan()
    assert [(c.op, c.kind) for c in changes] == [("create", "upstreams"), ("create", "routes")]
    assert not admin.calls and not kube.status


# --- the informer's watch discipline (scripted client; the real apiserver is in tests/e2e) ----


class ScriptedKube:
    """list() answers from ``lists`` (an exception is raised), watch() replays ``watches``."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.watch_rvs: list[str] = []

    async def list(self, res: Resource, namespace: str | None = None) -> Any:
        nxt = self.lists.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    async def watch(self, res: Resource, namespace: str | None, rv: str, *, timeout_seconds: int = 300) -> Any:
        self.watch_rvs.append(rv)
        if not self.watches:
            import asyncio
            await asyncio.sleep(3600)
        for ev in self.watches.pop(0):
            if isinstance(ev, Exception):
                raise ev
            yield ev


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"namespace": "n", "name": name, "resourceVersion": rv}}


async def test_informer_bookmarks_410_relist_diff_and_failed_list() -> None:
    import asyncio

    from meshgate.k8s.client import SERVICE, Informer, KubeError

    events: list[tuple[str, str]] = []
    kube = ScriptedKube(
        lists=[([obj("a", "1"), obj("b", "1")], "10"),
               KubeError(0, "connection refused"),             # a failed relist: nothing deleted
               ([obj("a", "1"), obj("c", "12")], "20")],       # the relist after 410: b is really gone
        watches=[[{"type": "ADDED", "object": obj("x", "11")},
                  {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}],
                 [{"type": "DELETED", "object": obj("x", "16")},
                  {"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "too old"}}]])
    inf = Informer(kube, SERVICE, None, lambda t, o, p: events.append((t, o["metadata"]["name"])),  # type: ignore[arg-type]
                   backoff_min=0.001, backoff_max=0.002)
    task = asyncio.create_task(inf.run())
    for _ in range(200):
        if len(kube.watch_rvs) >= 3:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    assert kube.watch_rvs == ["10", "15", "20"], "resume from the bookmark; relist after 410"
    assert events == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "x"), ("DELETED", "x"),
                      ("ADDED", "c"), ("DELETED", "b")], events  # a (unchanged) is not re-emitted
    assert set(inf.cache) == {("n", "a"), ("n", "c")} and inf.relists == 2


# --- Gateway API through the controller --------------------------------------------------------

GW = "gateway.networking.k8s.io/v1"


def gw_objs() -> list[dict[str, Any]]:
    return [
        {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "mg", "namespace": "", "generation": 1},
         "spec": {"controllerName": "apisix.apache.org/apisix-ingress-controller"}},
        {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "other", "namespace": "", "generation": 1},
         "spec": {"controllerName": "example.com/other"}},
        {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "ns", "generation": 1},
         "spec": {"gatewayClassName": "mg", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}},
        {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "theirs", "namespace": "ns", "generation": 1},
         "spec": {"gatewayClassName": "other", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}},
    ]


def http_route(name: str, gateway: str = "edge", service: str = "web") -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "ns", "generation": 1},
            "spec": {"parentRefs": [{"name": gateway}], "hostnames": [f"{name}.example"],
                     "rules": [{"backendRefs": [{"name": service, "port": 80}]}]}}


def gput(ctl: Controller, obj: dict[str, Any], typ: str = "ADDED") -> None:
    obj["metadata"].setdefault("namespace", "")
    put(ctl, obj, typ)


async def test_gateway_api_routes_statuses_and_ownership(ctl: Controller) -> None:
    admin, kube = ctl.admin, ctl.kube
    assert isinstance(admin, FakeAdmin) and isinstance(kube, FakeKube)
    put(ctl, svc("ns", "web"))
    put(ctl, eps("ns", "web", "10.0.0.1"))
    for o in gw_objs():
        gput(ctl, o)
    put(ctl, http_route("mine"))
    put(ctl, http_route("foreign", gateway="theirs"))
    assert await ctl.sync_once()
    names = sorted(v["name"] for v in admin.store["routes"].values())
    assert names == ["ns_mine_0_0"]                       # the other vendor's Gateway is not ours
    (up,) = admin.store["upstreams"].values()
    assert up["name"] == "Service_ns_web_80" and up["nodes"] == [{"host": "10.0.0.1", "port": 8080, "weight": 100}]
    written = {name: st for _, name, st in kube.status}
    (parent,) = written["mine"]["parents"]
    assert parent["controllerName"] == "apisix.apache.org/apisix-ingress-controller"
    assert {c["type"]: c["status"] for c in parent["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True"}
    assert "foreign" not in written and "theirs" not in written and "other" not in written
    assert written["edge"]["listeners"][0]["attachedRoutes"] == 1
    assert written["mg"]["conditions"][0]["status"] == "True"
    # statuses are written once: a second pass with the objects showing them writes nothing
    for kind, name in (("HTTPRoute", "mine"), ("Gateway", "edge"), ("GatewayClass", "mg")):
        inf = ctl.informers[kind][0]
        key = ("ns" if kind != "GatewayClass" else "", name)
        inf.cache[key] = {**inf.cache[key], "status": written[name]}
    kube.status.clear()
    ctl.dirty |= ctl.all_owners()
    assert await ctl.sync_once()
    assert kube.status == []
    # the Gateway changes (listener hostname) → its routes are re-translated
    edge = dict(gw_objs()[2])
    edge["spec"] = {**edge["spec"], "listeners": [{"name": "http", "protocol": "HTTP", "port": 80,
                                                   "hostname": "*.example"}], "generation": 2}
    gput(ctl, edge, "MODIFIED")
    assert ("HTTPRoute", "ns", "mine") in ctl.dirty
    put(ctl, http_route("mine"), "DELETED")
    assert ("Gateway", "ns", "edge") in ctl.dirty        # its attachedRoutes change
    assert await ctl.sync_once()
    assert not admin.store["routes"] and not admin.store["upstreams"]


class DiscoveryKube(FakeKube):
    def __init__(self, served: dict[str, list[str]]) -> None:
        super().__init__()
        self.served = served

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        version = path.rsplit("/", 1)[-1]
        if version not in self.served:
            raise KubeError(404, "the server could not find the requested resource")
        return {"resources": [{"name": r} for r in self.served[version]]}


async def test_gateway_api_watched_only_when_served() -> None:
    none = Controller(DiscoveryKube({}), FakeAdmin(), ControllerOptions())  # type: ignore[arg-type]
    assert not await none.detect_gateway_api()
    assert not {"HTTPRoute", "Gateway", "GatewayClass", "ReferenceGrant", "Namespace"} & set(none.informers)
    assert none.all_owners() == set()                       # and nothing breaks without them
    full = Controller(DiscoveryKube({"v1": ["gatewayclasses", "gateways", "httproutes", "referencegrants"],
                                     "v1beta1": ["referencegrants"]}), FakeAdmin(),
                      ControllerOptions())  # type: ignore[arg-type]
    assert await full.detect_gateway_api()
    assert {"HTTPRoute", "Gateway", "GatewayClass", "ReferenceGrant"} <= set(full.informers)


async def test_global_rules_synced_and_owned_by_id(ctl: Controller) -> None:
    from meshgate.k8s.translate.naming import gen_id, global_rule_id

    admin, kube = ctl.admin, ctl.kube
    assert isinstance(admin, FakeAdmin) and isinstance(kube, FakeKube)
    stale = global_rule_id("ns", "gone")          # ours, from an ApisixGlobalRule deleted while we were down
    admin.store["global_rules"] = {"manual": {"id": "manual", "plugins": {"prometheus": {}}}, stale: {
        "id": stale, "plugins": {"request-id": {}}}}
    agr = {"kind": "ApisixGlobalRule", "apiVersion": "apisix.apache.org/v2",
           "metadata": {"namespace": "ns", "name": "obs", "generation": 1},
           "spec": {"plugins": [{"name": "request-id", "enable": True, "config": {"header_name": "X-Trace"}}]}}
    put(ctl, agr)
    assert await ctl.sync_once()
    gid = global_rule_id("ns", "obs")
    assert gid.endswith(gen_id("ns_obs"))
    assert set(admin.store["global_rules"]) == {"manual", gid}       # the stale one deleted, the manual kept
    assert admin.store["global_rules"][gid]["plugins"] == {"request-id": {"header_name": "X-Trace"}}
    assert [s["conditions"][0]["reason"] for _, name, s in kube.status if name == "obs"] == ["Accepted"]
    put(ctl, agr, "DELETED")
    assert await ctl.sync_once()
    assert set(admin.store["global_rules"]) == {"manual"}


async def test_fan_out_keeps_several_gateways_identical_and_survives_one_down() -> None:
    from meshgate.k8s.controller import FanOut

    a, b = FakeAdmin(), FakeAdmin()
    fan = FanOut([("a", a), ("b", b)])
    ctl = Controller(FakeKube(), fan, ControllerOptions())  # type: ignore[arg-type]
    b.store["routes"] = {"stale": route("stale")}                  # ours, on one gateway only, not desired
    put(ctl, svc("ns", "web"))
    put(ctl, eps("ns", "web", "10.0.0.1"))
    put(ctl, ar("ns", "r", "web"))
    assert await ctl.sync_once()
    assert a.store["routes"].keys() == b.store["routes"].keys() and "stale" not in b.store["routes"]
    assert a.store["upstreams"] == b.store["upstreams"]
    # b loses an object behind our back (a restart with an empty store): the next full pass restores it
    b.store["routes"].clear()
    a.calls.clear()
    ctl._full = True
    assert await ctl.sync_once()
    assert b.store["routes"].keys() == a.store["routes"].keys()
    # b down: a still gets the changes; the controller comes back with a full pass
    real_list = b.list

    async def down(*args: Any) -> dict[str, dict[str, Any]]:
        raise AdminError(0, "connection refused")
    b.list = down  # type: ignore[method-assign]
    b.put = down  # type: ignore[assignment,method-assign]
    ctl._full = True
    put(ctl, ar("ns", "r2", "web"))
    assert await ctl.sync_once()
    assert len(a.store["routes"]) == 2 and fan.degraded and ctl._full and ctl._retry_delay > 0
    b.list = real_list  # type: ignore[method-assign]
    del b.put
    assert await ctl.sync_once()
    assert b.store["routes"].keys() == a.store["routes"].keys() and not fan.degraded
