"""prometheus: schema, the metrics a request leaves (APISIX names and labels), one page summing
every worker (served by the supervisor on plugin_attr.prometheus.export_addr), ``_meta``,
and ``run_policy: prefer_route`` (a global rule and a route count a request once)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

import pytest
from gwtools import Gateway, Upstream, free_port, http, read_response, start_gateway
from prometheus_client.parser import text_string_to_metric_families

import meshgate
from meshgate.errors import ConfigError

Samples = dict[str, list[tuple[dict[str, str], float]]]


# -- helpers ---------------------------------------------------------------------------------

def export_node(port: int, **extra: Any) -> dict[str, Any]:
    return {"plugin_attr": {"prometheus": {"export_addr": {"ip": "127.0.0.1", "port": port}, **extra}}}


def gateway(tmp_path: Any, routes: dict[str, Any], *, workers: int = 1, **attr: Any) -> tuple[Gateway, int]:
    port = free_port()
    return start_gateway(tmp_path, routes, workers=workers, node=export_node(port, **attr)), port


async def scrape(port: int, path: str = "/apisix/prometheus/metrics", method: str = "GET") -> tuple[int, str]:
    r = await http(("127.0.0.1", port), method, path)
    return r.status, r.body.decode()


def parse(page: str) -> Samples:
    """Every sample by its name on the page; the whole page must be accepted by the parser."""
    out: Samples = {}
    for fam in text_string_to_metric_families(page):
        for s in fam.samples:
            name = s.name
            if fam.type == "counter" and f"# TYPE {fam.name} counter\n" in page:
                name = fam.name  # the parser renames counter samples <family>_total
            out.setdefault(name, []).append((s.labels, s.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


async def send(gw: Gateway, paths: list[str], *, host: str = "test.local") -> list[int]:
    """Requests on one keep-alive connection; their statuses."""
    reader, writer = await asyncio.open_connection(*gw.addr)
    out = []
    try:
        for p in paths:
            writer.write(f"GET {p} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            r = await read_response(reader)
            assert r is not None
            out.append(r.status)
    finally:
        writer.close()
    return out


def upstream(up: Upstream) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {up.addr: 1}}


# -- schema ------------------------------------------------------------------------------------

def test_schema_valid(registry: Any) -> None:
    registry.validate("prometheus", {}, pointer="/plugins/prometheus")
    registry.validate("prometheus", {"prefer_name": True}, pointer="/plugins/prometheus")
    registry.validate("prometheus", {"prefer_name": False, "_meta": {"disable": True}}, pointer="/plugins/prometheus")


def test_schema_invalid(registry: Any) -> None:
    with pytest.raises(ConfigError) as e:
        registry.validate("prometheus", {"prefer_name": "yes"}, pointer="/plugins/prometheus")
    assert e.value.pointer == "/plugins/prometheus/prefer_name"
    assert e.value.message == ('failed to check the configuration of plugin prometheus err: '
                               'property "prefer_name" validation failed: wrong type: expected boolean, got string')


def test_plugin_declares_apisix_identity(registry: Any) -> None:
    p = registry.get("prometheus")
    assert (p.priority, p.version, p.run_policy) == (500, "0.2", "prefer_route")


def test_metadata_schema(registry: Any) -> None:
    ok = {"disabled_labels": {"http_status": ["node", "matched_host"], "bandwidth": ["consumer"]}}
    registry.validate("prometheus", ok, pointer="", schema_type="metadata")
    # structural labels (code, type) cannot be disabled; unknown metrics are refused (APISIX label-filter.t)
    for bad in ({"disabled_labels": {"http_status": ["code"]}}, {"disabled_labels": {"http_latency": ["type"]}},
                {"disabled_labels": {"unknown_metric": ["node"]}}):
        with pytest.raises(ConfigError):
            registry.validate("prometheus", bad, pointer="", schema_type="metadata")


# -- what the log hook records when variables are missing (in-process) ---------------------------

class FakeCtx:
    def __init__(self, **vars: Any) -> None:
        self.vars = vars

    def var(self, name: str) -> Any:
        return self.vars.get(name)

    def plugin_metadata(self, name: str) -> Any:
        return None


def test_log_without_route_upstream_or_status() -> None:
    """No route, no upstream, no status (the client left first): APISIX records route="",
    node="", no upstream latency, the whole latency as apisix's, and nginx's 499."""
    from meshgate.plugins.builtin import prometheus

    ctx = FakeCtx(request_time=0.004, request_length=None, bytes_sent=0, matched_uri=None)
    tail = ("", "", "", "", "traditional_http", "", "")
    status_key = ("499", "", "", "", "", "", "", "traditional_http", "", "", "apisix")
    before = prometheus.STATUS.value(status_key)
    apisix_before = list(prometheus.LATENCY.series.get(("apisix",) + tail, [0.0] * 17))
    prometheus.log({}, ctx)
    assert prometheus.STATUS.value(status_key) == before + 1
    assert ("upstream",) + tail not in prometheus.LATENCY.series
    row = prometheus.LATENCY.series[("apisix",) + tail]
    assert row[-1] - apisix_before[-1] == pytest.approx(4.0)       # milliseconds
    assert row[2] - apisix_before[2] == 1                            # the le="5" bucket
    assert ("ingress",) + tail in prometheus.BANDWIDTH.series


def test_log_long_model_names_are_cut() -> None:
    from meshgate.plugins.builtin import prometheus

    ctx = FakeCtx(status=200, route_id="m", request_type="ai_chat", request_llm_model="x" * 500, llm_model=["a"],
                  request_time=0.001, upstream_response_time=0.002)
    prometheus.log({}, ctx)
    keys = [k for k in prometheus.STATUS.series if k[1] == "m"]
    assert keys == [("200", "m", "", "", "", "", "", "ai_chat", "x" * 128, "<non-scalar>", "upstream")]
    # the upstream took longer than the request by the clocks: apisix's share is 0, not negative
    row = prometheus.LATENCY.series[("apisix", "m", "", "", "", "ai_chat", "x" * 128, "<non-scalar>")]
    assert row[0] == 1 and row[-1] == 0


class MetaCtx(FakeCtx):
    def __init__(self, meta: Any, **vars: Any) -> None:
        super().__init__(**vars)
        self.meta = meta

    def plugin_metadata(self, name: str) -> Any:
        return self.meta


def test_repeated_label_sets_keep_counting_and_follow_new_metadata() -> None:
    """The log hook remembers the label sets of a request like the last one: repeats still add
    to every series, and new plugin metadata (disabled_labels) applies to a label set already seen."""
    from meshgate.plugins.builtin import prometheus

    vars = dict(status=200, route_id="rows", balancer_ip="10.0.0.9", request_time=0.003,
                upstream_response_time=0.001, request_length=10, bytes_sent=20)
    status_key = ("200", "rows", "", "", "", "", "10.0.0.9", "traditional_http", "", "", "upstream")
    tail = ("rows", "", "", "10.0.0.9", "traditional_http", "", "")
    def count(kind: str, t: tuple[str, ...]) -> float:   # observations in a latency series
        return sum(prometheus.LATENCY.series.get((kind,) + t, [0.0] * 17)[:-1])

    s0 = prometheus.STATUS.value(status_key)
    c0 = {kind: count(kind, tail) for kind in ("request", "upstream", "apisix")}
    e0 = prometheus.BANDWIDTH.value(("egress",) + tail)
    for _ in range(5):
        prometheus.log({}, MetaCtx(None, **vars))
    assert prometheus.STATUS.value(status_key) == s0 + 5
    assert {kind: count(kind, tail) - c0[kind] for kind in c0} == {"request": 5, "upstream": 5, "apisix": 5}
    assert prometheus.BANDWIDTH.value(("egress",) + tail) == e0 + 100

    meta = {"disabled_labels": {"http_status": ["node"], "http_latency": ["node"], "bandwidth": ["node"]}}
    blank_status = status_key[:6] + ("",) + status_key[7:]
    blank_tail = tail[:3] + ("",) + tail[4:]
    b0 = prometheus.STATUS.value(blank_status)
    r0 = count("request", blank_tail)
    for _ in range(3):
        prometheus.log({}, MetaCtx(meta, **vars))
    assert prometheus.STATUS.value(blank_status) == b0 + 3
    assert prometheus.STATUS.value(status_key) == s0 + 5
    assert count("request", blank_tail) == r0 + 3
    # metadata removed again: back to the full label set
    prometheus.log({}, MetaCtx(None, **vars))
    assert prometheus.STATUS.value(status_key) == s0 + 6


def test_histogram_rows_and_overflow_count_per_update() -> None:
    from meshgate.observability.metrics import OVERFLOW, Registry

    reg = Registry(max_series=1)
    h = reg.histogram("lat", "x", ("route",), buckets=(1, 10))
    assert h.own_row(("a",)) is None              # no series yet
    h.observe(("a",), 0.5)
    row = h.own_row(("a",))
    assert row is not None
    h.observe_row(row, 5.0)
    assert h.series[("a",)] == [1.0, 1.0, 0.0, 5.5]
    h.observe(("b",), 20.0)                        # past the cap: the overflow series
    h.observe(("b",), 20.0)
    assert h.own_row(("b",)) is None and h.series[(OVERFLOW,)][-1] == 40.0
    assert h.overflowed == 2


# -- behaviour through the gateway ----------------------------------------------------------------

async def test_one_scrape_sums_both_workers(tmp_path: Any, up: Upstream) -> None:
    routes = {"routes": [{"id": "1", "uri": "/hello", "plugins": {"prometheus": {}}, "upstream": upstream(up)}]}
    gw, port = gateway(tmp_path, routes, workers=2)
    try:
        conns, per_conn = 16, 5
        statuses = await asyncio.gather(*(send(gw, ["/hello"] * per_conn) for _ in range(conns)))
        assert all(s == 200 for batch in statuses for s in batch)
        n = conns * per_conn
        code, page = await scrape(port)
        assert code == 200
        s = parse(page)
        assert total(s, "apisix_http_status", route="1") == n
        labels = [lab for lab, _ in s["apisix_http_status"] if lab.get("route") == "1"]
        assert labels == [{"code": "200", "route": "1", "matched_uri": "/hello", "matched_host": "", "service": "",
                           "consumer": "", "node": "127.0.0.1", "request_type": "traditional_http",
                           "request_llm_model": "", "llm_model": "", "response_source": "upstream"}]
        assert total(s, "apisix_http_latency_count", type="request", route="1") == n
        assert total(s, "apisix_http_latency_count", type="upstream", route="1") == n
        assert total(s, "apisix_http_latency_count", type="apisix", route="1") == n
        assert total(s, "apisix_http_latency_bucket", type="request", route="1", le="+Inf") == n
        assert total(s, "apisix_bandwidth", type="egress", route="1") > 0
        assert total(s, "apisix_bandwidth", type="ingress", route="1") >= n * len(b"GET /hello HTTP/1.1\r\n")
        # always on the page, as APISIX's exporter; no etcd metrics in standalone mode (prometheus.t TEST 41)
        assert total(s, "apisix_http_requests_total") >= n
        assert "apisix_nginx_http_current_connections" in s
        assert s["apisix_node_info"] == [({"hostname": socket.gethostname(), "version": meshgate.__version__}, 1.0)]
        assert "etcd" not in page
        assert total(s, "apisix_metric_overflow_total") == 0
        # latency buckets are APISIX's defaults
        les = {lab["le"] for lab, _ in s["apisix_http_latency_bucket"]}
        assert les == {"1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "2000", "5000", "10000",
                       "30000", "60000", "+Inf"}
        # a second scrape does not count twice
        _, page2 = await scrape(port)
        assert total(parse(page2), "apisix_http_status", route="1") == n
        # the export server answers only GET <export_uri> (prometheus.t TEST 7)
        assert (await scrape(port, method="PATCH"))[0] == 404
        assert (await scrape(port, path="/other"))[0] == 404
        # and it is not on the data port (t/cli/test_prometheus.sh)
        r = await http(gw.addr, "GET", "/apisix/prometheus/metrics")
        assert r.status == 404
    finally:
        assert gw.stop() == 0


async def test_meta_disable(tmp_path: Any, up: Upstream) -> None:
    routes = {"routes": [
        {"id": "off", "uri": "/off", "plugins": {"prometheus": {"_meta": {"disable": True}}}, "upstream": upstream(up)},
        {"id": "on", "uri": "/on", "plugins": {"prometheus": {}}, "upstream": upstream(up)},
    ]}
    gw, port = gateway(tmp_path, routes)
    try:
        assert await send(gw, ["/off", "/off", "/on"]) == [200, 200, 200]
        _, page = await scrape(port)
        s = parse(page)
        assert total(s, "apisix_http_status", route="on") == 1
        assert total(s, "apisix_http_status", route="off") == 0
    finally:
        gw.stop()


async def test_global_rule_and_route_count_once(tmp_path: Any, up: Upstream) -> None:
    """prometheus3.t TEST 5-7: prefer_route; prometheus.t TEST 19-21 and prometheus2.t TEST 10-11:
    a global rule's prometheus counts routes without one and requests that matched no route."""
    routes = {
        "global_rules": [{"id": "1", "plugins": {"prometheus": {}}}],
        "routes": [
            {"id": "1", "uri": "/both", "plugins": {"prometheus": {}}, "upstream": upstream(up)},
            {"id": "2", "uri": "/global", "upstream": upstream(up)},
        ],
    }
    gw, port = gateway(tmp_path, routes, workers=2)
    try:
        await asyncio.gather(send(gw, ["/both"] * 3), send(gw, ["/both", "/global", "/nope"]))
        _, page = await scrape(port)
        s = parse(page)
        assert total(s, "apisix_http_status", route="1") == 4
        assert total(s, "apisix_http_latency_count", type="request", route="1") == 4
        assert total(s, "apisix_http_status", route="2", code="200", matched_uri="/global") == 1
        assert total(s, "apisix_http_status", route="", code="404", matched_uri="", node="") == 1
    finally:
        gw.stop()


async def test_prefer_name_metadata_and_export_attrs(tmp_path: Any, up: Upstream) -> None:
    """prometheus2.t TEST 38-40 (prefer_name), TEST 16-17 (export_uri), label-filter (disabled_labels),
    t/cli/test_prometheus.sh (metric_prefix)."""
    routes = {
        "services": [{"id": "s1", "name": "service_name", "upstream": upstream(up)}],
        "routes": [
            {"id": "1", "name": "route_name", "uri": "/named", "service_id": "s1",
             "plugins": {"prometheus": {"prefer_name": True}}},
            {"id": "2", "name": "other", "uri": "/ids", "service_id": "s1", "plugins": {"prometheus": {}}},
        ],
        "plugin_metadata": [{"id": "prometheus", "disabled_labels": {"bandwidth": ["node"]}}],
    }
    gw, port = gateway(tmp_path, routes, export_uri="/a", metric_prefix="mg_")
    try:
        assert await send(gw, ["/named", "/ids"]) == [200, 200]
        assert (await scrape(port))[0] == 404
        code, page = await scrape(port, "/a")
        assert code == 200
        s = parse(page)
        assert total(s, "mg_http_status", route="route_name", service="service_name", node="127.0.0.1") == 1
        assert total(s, "mg_http_status", route="2", service="s1") == 1
        assert total(s, "mg_bandwidth", type="egress", route="route_name", node="") > 0
        assert all(lab["node"] == "" for lab, _ in s["mg_bandwidth"])
        assert "apisix_" not in page
    finally:
        gw.stop()


async def test_totals_survive_a_reload(tmp_path: Any, up: Upstream) -> None:
    """SIGHUP replaces the workers: the counters they kept are not lost (APISIX keeps them in shm)."""
    routes = {"routes": [{"id": "1", "uri": "/hello", "plugins": {"prometheus": {}}, "upstream": upstream(up)}]}
    gw, port = gateway(tmp_path, routes, workers=2)
    try:
        await asyncio.gather(*(send(gw, ["/hello"] * 3) for _ in range(4)))
        _, page = await scrape(port)
        assert total(parse(page), "apisix_http_status", route="1") == 12
        pids = {w["pid"] for w in gw.control("/v1/config")["workers"]}
        os.kill(gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, page = await scrape(port)
            assert total(parse(page), "apisix_http_status", route="1") == 12
            now = {w["pid"] for w in gw.control("/v1/config")["workers"]}
            if now and not now & pids:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("workers were not replaced")
        assert await send(gw, ["/hello"]) == [200]
        _, page = await scrape(port)
        assert total(parse(page), "apisix_http_status", route="1") == 13
    finally:
        gw.stop()


async def test_upstream_status_from_health_checks(tmp_path: Any, up: Upstream) -> None:
    """apisix_upstream_status{name,ip,port}: 1 for a healthy node, 0 for an unhealthy one (the
    supervisor owns the health checkers; prometheus.md "upstream_status")."""
    dead = free_port()
    checks = {"active": {"type": "http", "http_path": "/", "timeout": 1,
                         "healthy": {"interval": 1, "successes": 1},
                         "unhealthy": {"interval": 1, "http_failures": 1, "tcp_failures": 1, "timeouts": 1}}}
    routes = {"upstreams": [{"id": "u1", "type": "roundrobin", "checks": checks,
                             "nodes": {up.addr: 1, f"127.0.0.1:{dead}": 1}}],
              "routes": [{"id": "1", "uri": "/hc", "upstream_id": "u1", "plugins": {"prometheus": {}}}]}
    gw, port = gateway(tmp_path, routes)
    try:
        want = {("/apisix/upstreams/u1", "127.0.0.1", str(up.port)): 1.0,
                ("/apisix/upstreams/u1", "127.0.0.1", str(dead)): 0.0}
        deadline = time.monotonic() + 15
        got: dict[tuple[str, str, str], float] = {}
        while time.monotonic() < deadline:
            _, page = await scrape(port)
            got = {(lab["name"], lab["ip"], lab["port"]): v for lab, v in parse(page).get("apisix_upstream_status", [])}
            if got == want:
                break
            await asyncio.sleep(0.2)
        assert got == want
    finally:
        gw.stop()
