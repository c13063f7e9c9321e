from __future__ import annotations

from meshgate.config.store import Change, ConfigStore

UP = {"nodes": {"127.0.0.1:80": 1}}


def test_replace_all_versions_and_revisions():
    store = ConfigStore()
    seen = []
    store.subscribe(seen.append)
    s1 = store.replace_all({"routes": {"1": {"id": "1", "uri": "/a", "upstream": UP}}})
    assert s1 is not None and s1.version == 1 and seen == [s1]
    r1 = s1.get("routes", "1")
    assert r1 is not None and r1.created_index == r1.modified_index == 1
    # same content again: no new version
    assert store.replace_all({"routes": {"1": {"id": "1", "uri": "/a", "upstream": UP}}}) is None
    # a new item: the unchanged one keeps its identity (workers reuse compiled state)
    s2 = store.replace_all({"routes": {"1": {"id": "1", "uri": "/a", "upstream": UP},
                                       "2": {"id": "2", "uri": "/b", "upstream": UP}}})
    assert s2 is not None and s2.version == 2
    assert s2.get("routes", "1") is r1
    r2 = s2.get("routes", "2")
    assert r2 is not None and r2.created_index == 2
    # changed content: same createdIndex, new modifiedIndex
    s3 = store.replace_all({"routes": {"1": {"id": "1", "uri": "/c", "upstream": UP}}})
    assert s3 is not None
    r1b = s3.get("routes", "1")
    assert r1b is not None and r1b.created_index == 1 and r1b.modified_index == 3
    assert s3.get("routes", "2") is None


def test_order_change_is_a_new_version():
    store = ConfigStore()
    a = {"id": "a", "uri": "/a", "upstream": UP}
    b = {"id": "b", "uri": "/b", "upstream": UP}
    store.replace_all({"routes": {"a": a, "b": b}})
    snap = store.replace_all({"routes": {"b": b, "a": a}})
    assert snap is not None and list(snap.items("routes")) == ["b", "a"]


def test_apply_puts_and_deletes():
    store = ConfigStore()
    s1 = store.apply([Change("upstreams", "u1", UP), Change("routes", "1", {"id": "1", "uri": "/", "upstream_id": "u1"})])
    assert s1 is not None and s1.counts()["routes"] == 1 and s1.counts()["upstreams"] == 1
    s2 = store.apply([Change("routes", "1", None)])
    assert s2 is not None and s2.counts()["routes"] == 0
    assert s2.items("upstreams") is s1.items("upstreams")  # untouched kinds are shared
    assert store.apply([]) is None


def test_subscriber_failure_does_not_break_the_store():
    store = ConfigStore()
    got = []

    def bad(_):
        raise RuntimeError("boom")

    store.subscribe(bad)
    store.subscribe(got.append)
    snap = store.replace_all({"routes": {"1": {"id": "1", "uri": "/", "upstream": UP}}})
    assert got == [snap] and store.snapshot is snap
