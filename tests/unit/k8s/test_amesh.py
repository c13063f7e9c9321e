"""AmeshPluginConfig → per-pod plugin sets (meshgate.k8s.amesh) and the mesh controller's
status of each config (meshgate.k8s.mesh_controller, caches filled by hand, no network)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from meshgate.k8s.amesh import check_selector, parse_config, pod_state, selector_matches
from meshgate.k8s.mesh_controller import MeshController
from meshgate.plugins import PluginRegistry

from k8stools import load, put

SAMPLE = '{"body":"BODY_REWRITE","headers":{"X-Header":"Rewrite"}}'


def ampc(name: str, plugins: list[dict[str, Any]], *, ns: str = "default", selector: Any = None,
         created: str = "2026-12-01T10:00:00Z", generation: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"plugins": plugins}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "apisix.apache.org/v1alpha1", "kind": "AmeshPluginConfig",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "generation": generation,
                         "creationTimestamp": created}, "spec": spec}


def pod(name: str, labels: dict[str, str], *, ns: str = "default", phase: str = "Running") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "status": {"phase": phase}}


def test_amesh_sample_config_string_parsed_and_checked(registry: PluginRegistry) -> None:
    c = parse_config(ampc("ameshpluginconfig-sample", [{"name": "response-rewrite", "type": "", "config": SAMPLE}]),
                     registry)
    assert c.ok and c.plugins == (("response-rewrite", {"body": "BODY_REWRITE", "headers": {"X-Header": "Rewrite"}}),)
    # Meshgate also takes the config as an object
    c = parse_config(ampc("o", [{"name": "fault-injection", "config": {"abort": {"http_status": 418}}}]), registry)
    assert c.ok and c.plugins[0][1] == {"abort": {"http_status": 418}}


@pytest.mark.parametrize("entry, text", [
    ({"name": "response-rewrite", "config": "{"}, "/spec/plugins/0/config: not valid JSON"),
    ({"name": "response-rewrite", "config": "[1]"}, "/spec/plugins/0/config: expected a JSON object, got list"),
    ({"name": "nope", "config": "{}"}, "unknown plugin 'nope'"),
    ({"name": "limit-count", "config": '{"count": -1, "time_window": 60}'},
     "/spec/plugins/0/config/count: failed to check the configuration of plugin limit-count"),
    ({"name": "my-runner", "type": "pre-req", "config": "{}"},
     "/spec/plugins/0/type: 'pre-req' sends the plugin to an external plugin runner (ext-plugin-pre-req), which "
     "Meshgate does not run"),
    ({"config": "{}"}, "/spec/plugins/0/name: required"),
])
def test_bad_entries_name_the_field(registry: PluginRegistry, entry: dict[str, Any], text: str) -> None:
    c = parse_config(ampc("bad", [entry]), registry)
    assert not c.ok and text in c.errors[0], c.errors


def test_selector_semantics_and_errors() -> None:
    labels = {"app": "reviews", "version": "v2"}
    assert selector_matches(None, labels) and selector_matches({}, labels)
    assert selector_matches({"matchLabels": {"app": "reviews"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "ratings"}}, labels)
    exprs = [{"key": "version", "operator": "In", "values": ["v2", "v3"]},
             {"key": "canary", "operator": "DoesNotExist"}, {"key": "app", "operator": "Exists"},
             {"key": "version", "operator": "NotIn", "values": ["v1"]}]
    assert selector_matches({"matchExpressions": exprs}, labels)
    assert not selector_matches({"matchExpressions": exprs}, {**labels, "canary": "yes"})
    assert check_selector({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}) == [
        "/spec/selector/matchExpressions/0/operator: expected one of In, NotIn, Exists, DoesNotExist, got 'Equals'"]
    assert check_selector({"matchExpressions": [{"key": "a", "operator": "In"}]}) == [
        "/spec/selector/matchExpressions/0/values: operator In needs at least one value"]
    bad = {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
    assert check_selector(bad) and not selector_matches(bad, {"a": "1"})   # invalid matches nothing


def test_merge_newest_config_wins_and_namespaces_stay_apart(registry: PluginRegistry) -> None:
    old = parse_config(ampc("old", [{"name": "response-rewrite", "config": '{"body": "old"}'},
                                    {"name": "fault-injection", "config": '{"abort": {"http_status": 500}}'}],
                            created="2026-12-01T10:00:00Z"), registry)
    new = parse_config(ampc("new", [{"name": "response-rewrite", "config": '{"body": "new"}'}],
                            selector={"matchLabels": {"app": "reviews"}}, created="2026-12-02T10:00:00Z"), registry)
    other_ns = parse_config(ampc("x", [{"name": "echo", "config": '{"body": "x"}'}], ns="other"), registry)
    st = pod_state("default", {"app": "reviews"}, [new, other_ns, old])
    assert st["plugins"] == {"fault-injection": {"abort": {"http_status": 500}}, "response-rewrite": {"body": "new"}}
    assert [s["name"] for s in st["sources"]] == ["old", "new"]
    assert pod_state("default", {"app": "ratings"}, [new, old])["plugins"]["response-rewrite"] == {"body": "old"}
    assert pod_state("nobody", {}, [new, old]) == {}


def _version(state: Any) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


class Delivery:
    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1

    def version(self, state: Any) -> str:
        return _version(state)


def controller(registry: PluginRegistry) -> tuple[MeshController, Delivery]:
    d = Delivery()
    ctl = MeshController(None, d, registry=registry)  # type: ignore[arg-type]
    return ctl, d


def test_status_counts_applied_pending_failed_pods(registry: PluginRegistry) -> None:
    ctl, d = controller(registry)
    for name, app in (("reviews-v1", "reviews"), ("reviews-v2", "reviews"), ("reviews-v3", "reviews"),
                      ("ratings-v1", "ratings")):
        put(ctl, pod(name, {"app": app}))
    put(ctl, pod("reviews-old", {"app": "reviews"}, phase="Succeeded"))     # finished: not counted
    cfg = ampc("rw", [{"name": "response-rewrite", "config": SAMPLE}], selector={"matchLabels": {"app": "reviews"}})
    n = d.notified
    put(ctl, cfg)
    assert d.notified > n                     # the channel re-resolves the sidecars
    want = _version(ctl.state_for("default", "reviews-v1"))
    assert ctl.state_for("default", "ratings-v1") == {}
    ctl.on_ack("default/reviews-v1", want, None)
    ctl.on_ack("default/reviews-v2", "0000", "AmeshPluginConfig default/rw: unknown plugin")
    st = ctl.status_of(cfg)
    conds = {c["type"]: c for c in st["conditions"]}
    assert (conds["Sync"]["status"], conds["Sync"]["reason"], conds["Sync"]["message"]) == (
        "True", "Reconciled", "Sync Success")
    assert conds["Applied"]["status"] == "False" and conds["Applied"]["reason"] == "Rejected"
    assert st["pods"] == {"matched": 3, "applied": 1, "appliedPods": ["reviews-v1"], "pendingPods": ["reviews-v3"],
                          "failedPods": [{"name": "reviews-v2",
                                          "message": "AmeshPluginConfig default/rw: unknown plugin"}]}
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])
    for p in ("reviews-v2", "reviews-v3"):
        ctl.on_ack(f"default/{p}", want, None)
    st2 = ctl.status_of(cfg, st)
    applied = {c["type"]: c for c in st2["conditions"]}["Applied"]
    assert (applied["status"], applied["reason"], applied["message"]) == ("True", "Applied", "applied by 3 of 3 pods")
    # a sidecar that goes away is pending again
    ctl.on_ack("default/reviews-v3", None, None)
    assert ctl.status_of(cfg, st2)["pods"]["pendingPods"] == ["reviews-v3"]


def test_invalid_edit_keeps_the_last_good_generation(registry: PluginRegistry) -> None:
    ctl, _ = controller(registry)
    put(ctl, pod("reviews-v1", {"app": "reviews"}))
    good = ampc("f", [{"name": "fault-injection", "config": '{"abort": {"http_status": 503}}'}])
    put(ctl, good)
    before = ctl.state_for("default", "reviews-v1")
    assert before["plugins"] == {"fault-injection": {"abort": {"http_status": 503}}}
    bad = ampc("f", [{"name": "fault-injection", "config": '{"abort": {"http_status": "x"}}'}], generation=2)
    put(ctl, bad, "MODIFIED")
    assert ctl.state_for("default", "reviews-v1") == before        # pods keep generation 1
    conds = {c["type"]: c for c in ctl.status_of(bad)["conditions"]}
    assert conds["Sync"]["status"] == "False" and conds["Sync"]["reason"] == "InvalidSpec"
    assert "/spec/plugins/0/config/abort/http_status" in conds["Sync"]["message"]
    assert conds["Sync"]["message"].endswith("pods keep running generation 1")
    assert conds["Sync"]["observedGeneration"] == 2
    put(ctl, bad, "DELETED")
    assert ctl.state_for("default", "reviews-v1") == {}


def test_relabelled_pod_gets_another_set_and_unknown_pod_uses_sidecar_labels(registry: PluginRegistry) -> None:
    ctl, d = controller(registry)
    put(ctl, ampc("r", [{"name": "response-rewrite", "config": SAMPLE}], selector={"matchLabels": {"app": "reviews"}}))
    put(ctl, pod("p", {"app": "ratings"}))
    assert ctl.state_for("default", "p", {"app": "reviews"}) == {}     # the Pod object decides
    n = d.notified
    put(ctl, pod("p", {"app": "reviews"}), "MODIFIED")
    assert d.notified == n + 1 and ctl.state_for("default", "p")["plugins"]
    put(ctl, {**pod("p", {"app": "reviews"}), "status": {"phase": "Running", "podIP": "10.0.0.9"}}, "MODIFIED")
    assert d.notified == n + 1                   # nothing that decides a plugin set changed
    assert ctl.state_for("default", "not-in-cache", {"app": "reviews"})["plugins"]


def test_yaml_fixture_per_pod_sets(registry: PluginRegistry) -> None:
    objs = load("amesh.yaml")
    configs = [parse_config(o, registry) for o in objs if o["kind"] == "AmeshPluginConfig"]
    assert all(c.ok for c in configs), [c.errors for c in configs]
    pods = {o["metadata"]["name"]: o["metadata"]["labels"] for o in objs if o["kind"] == "Pod"}
    v2 = pod_state("bookinfo", pods["reviews-v2-7d9f"], configs)
    # the sample (every pod) then reviews-limits (newer): its response-rewrite wins
    assert v2["plugins"] == {"limit-count": {"count": 100, "time_window": 60, "rejected_code": 429},
                             "response-rewrite": {"headers": {"set": {"X-Reviews": "limited"}}}}
    assert v2["sources"] == [{"namespace": "bookinfo", "name": "ameshpluginconfig-sample", "generation": 1},
                             {"namespace": "bookinfo", "name": "reviews-limits", "generation": 3}]
    v1 = pod_state("bookinfo", pods["reviews-v1-5c8b"], configs)
    assert v1["plugins"] == {"response-rewrite": {"body": "BODY_REWRITE", "headers": {"X-Header": "Rewrite"}}}
