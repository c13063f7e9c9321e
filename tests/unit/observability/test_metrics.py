"""observability.metrics: the per-worker registry, the cardinality cap, merge and exposition."""

from __future__ import annotations

import pickle

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshgate.observability import OVERFLOW, Family, Registry, merge, render


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted label items: value}, every sample of the page (the parser must accept it)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name
            # the parser names every counter sample <family>_total; key it by its name on the page
            if fam.type == "counter" and f"# TYPE {fam.name} counter\n" in text:
                name = fam.name
            out.setdefault(name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_counter_gauge_histogram_roundtrip() -> None:
    r = Registry()
    c = r.counter("http_status", "HTTP status codes", ("code", "route"))
    c.inc(("200", "1"))
    c.inc(("200", "1"), 2)
    c.inc(("404", ""))
    g = r.gauge("conns", "Connections", ("state",))
    g.set(("active",), 3)
    h = r.histogram("lat", "Latency", ("type",), buckets=(1, 5, 10))
    for v in (0.5, 1, 4, 7, 100):
        h.observe(("request",), v)
    page = render(r.collect(), prefix="apisix_")
    got = parse(page)
    assert got["apisix_http_status"] == {(("code", "200"), ("route", "1")): 3.0,
                                         (("code", "404"), ("route", "")): 1.0}
    assert got["apisix_conns"] == {(("state", "active"),): 3.0}
    buckets = got["apisix_lat_bucket"]
    # cumulative, with le="+Inf" = count; 1 is in the le="1" bucket (le is inclusive)
    assert [buckets[(("le", le), ("type", "request"))] for le in ("1", "5", "10", "+Inf")] == [2, 3, 4, 5]
    assert got["apisix_lat_count"] == {(("type", "request"),): 5.0}
    assert got["apisix_lat_sum"] == {(("type", "request"),): 112.5}
    assert "# HELP apisix_http_status HTTP status codes\n# TYPE apisix_http_status counter\n" in page
    assert "# TYPE apisix_lat histogram\n" in page
    # integral bucket bounds are written as APISIX writes them
    assert 'apisix_lat_bucket{type="request",le="10"} 4\n' in page
    assert 'apisix_lat_bucket{type="request",le="+Inf"} 5\n' in page


def test_label_values_and_help_are_escaped() -> None:
    r = Registry()
    c = r.counter("x", 'help with \\ and\nnewline', ("v",))
    nasty = 'a"b\\c\nd'
    c.inc((nasty,))
    page = render(r.collect())
    assert '# HELP x help with \\\\ and\\nnewline\n' in page
    assert 'x{v="a\\"b\\\\c\\nd"} 1\n' in page
    assert parse(page)["x"] == {(("v", nasty),): 1.0}


def test_non_string_label_values_are_one_series() -> None:
    r = Registry()
    c = r.counter("s", "h", ("code",))
    c.inc((200,))  # type: ignore[arg-type]
    c.inc(("200",))
    c.inc((None,))  # type: ignore[arg-type]
    assert c.family().series == {("200",): 2.0, ("",): 1.0}


def test_cardinality_cap_folds_into_overflow_and_keeps_totals() -> None:
    r = Registry(max_series=3)
    c = r.counter("http_status", "h", ("code", "route"), keep_on_overflow=("code",))
    for i in range(10):
        c.inc(("200", f"r{i}"))
    c.inc(("500", "r99"), 5)
    c.inc(("200", "r0"))        # an existing series still counts as itself
    assert len(c.series) <= 3 + 2
    assert c.value(("200", "r0")) == 2
    assert c.value(("200", OVERFLOW)) == 7
    assert c.value(("500", OVERFLOW)) == 5
    assert sum(c.family().series.values()) == 16          # nothing lost
    got = parse(render(r.collect(), prefix="apisix_"))
    assert got["apisix_metric_overflow_total"] == {(("metric", "http_status"),): 8.0}
    assert sum(got["apisix_http_status"].values()) == 16


def test_histogram_cap_keeps_structural_label() -> None:
    r = Registry()
    h = r.histogram("lat", "h", ("type", "route"), buckets=(10,), keep_on_overflow=("type",), max_series=1)
    h.observe(("request", "a"), 1)
    h.observe(("upstream", "b"), 20)
    h.observe(("request", "c"), 3)
    assert h.series[("upstream", OVERFLOW)] == [0, 1, 20]
    assert h.series[("request", OVERFLOW)] == [1, 0, 3]
    assert h.overflowed == 2


def test_registration_is_idempotent_and_checked() -> None:
    r = Registry()
    a = r.counter("c", "h", ("x",))
    assert r.counter("c", "h", ("x",)) is a
    with pytest.raises(ValueError):
        r.counter("c", "h", ("y",))
    with pytest.raises(ValueError):
        r.gauge("c", "h", ("x",))
    with pytest.raises(ValueError):
        r.histogram("h", "h", ("le",), buckets=(1,))
    with pytest.raises(ValueError):
        r.histogram("h2", "h", (), buckets=(5, 1))
    with pytest.raises(ValueError):
        r.counter("bad-name", "h")
    with pytest.raises(ValueError):
        a.inc(("1", "2"))


def test_merge_sums_workers() -> None:
    def worker(n: int) -> list[Family]:
        r = Registry()
        c = r.counter("http_status", "h", ("code",))
        h = r.histogram("lat", "h", (), buckets=(1, 10))
        conns = r.gauge("conns", "h", ("state",))
        info = r.gauge("info", "h", ("v",), aggregate="max")
        for _ in range(n):
            c.inc(("200",))
            h.observe((), 5)
        conns.set(("active",), n)
        info.set(("x",), 1)
        # what a worker sends to the supervisor travels pickled
        return pickle.loads(pickle.dumps(r.collect()))

    merged = merge([worker(3), worker(4)])
    got = parse(render(merged))
    assert got["http_status"] == {(("code", "200"),): 7.0}
    assert got["lat_count"] == {(): 7.0}
    assert got["lat_sum"] == {(): 35.0}
    assert got["conns"] == {(("state", "active"),): 7.0}
    assert got["info"] == {(("v", "x"),): 1.0}


def test_merge_skips_a_family_of_another_shape() -> None:
    a = Family("m", "counter", "h", ("x",), {("1",): 1.0})
    b = Family("m", "counter", "h", ("y",), {("1",): 5.0})
    (m,) = merge([[a], [b]])
    assert m.series == {("1",): 1.0}
    assert a.series == {("1",): 1.0}  # inputs untouched


def test_empty_registry_and_unlabelled_metrics_render() -> None:
    r = Registry()
    r.gauge("http_requests_total", "total").set((), 12)
    r.counter("nothing_yet", "h", ("a",))
    page = render(r.collect(), prefix="apisix_")
    assert "apisix_http_requests_total 12\n" in page
    got = parse(page)
    assert got["apisix_http_requests_total"] == {(): 12.0}
    assert "apisix_nothing_yet" not in got


def test_special_values() -> None:
    r = Registry()
    g = r.gauge("g", "h", ("k",))
    g.set(("inf",), float("inf"))
    g.set(("frac",), 0.25)
    g.set(("big",), 2.0 ** 60)
    page = render(r.collect())
    assert 'g{k="inf"} +Inf\n' in page
    assert 'g{k="frac"} 0.25\n' in page
    assert parse(page)["g"][(("k", "big"),)] == 2.0 ** 60
