"""zipkin: schema, B3 propagation to the upstream, spans reported to a real Jaeger (Zipkin receiver).

Matches APISIX t/plugin/zipkin.t, zipkin2.t: sampling by ratio and by the x-b3-sampled /
x-b3-flags / b3 headers, the b3 single header (400 when it has no span id), the x-b3-*
headers the upstream receives, the span tree (v2: request/proxy/response, v1: five spans).
"""

from __future__ import annotations

import re

import pytest
from gwtools import Upstream, http, start_gateway
from meshgate.errors import ConfigError
from meshgate.observability.tracing import new_trace_id
from tracing_peer import BINARY, Jaeger, by_name, parent_of, service_of, tags

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
SID = "e457b5a2e4d86bd1"
PSID = "05e3ac9a4f6e3b90"


# -- schema -------------------------------------------------------------------------------------

def test_schema_valid(registry):
    registry.validate("zipkin", {"endpoint": "http://127.0.0.1", "sample_ratio": 0.001}, pointer="/plugins/zipkin")
    registry.validate("zipkin", {"endpoint": "http://127.0.0.1:9411/api/v2/spans", "sample_ratio": 1,
                                 "service_name": "gw", "server_addr": "1.2.3.4", "span_version": 1},
                      pointer="/plugins/zipkin")


@pytest.mark.parametrize("conf,msg", [
    ({"endpoint": "http://127.0.0.1", "sample_ratio": -0.1},
     'property "sample_ratio" validation failed: expected -0.1 to be at least 1e-05'),
    ({"endpoint": "http://127.0.0.1", "sample_ratio": 2},
     'property "sample_ratio" validation failed: expected 2 to be at most 1'),
    ({"endpoint": "http://127.0.0.1", "sample_ratio": 0.001, "server_addr": "badip"},
     'property "server_addr" validation failed: failed to match pattern '
     '"^[0-9]{1,3}.[0-9]{1,3}.[0-9]{1,3}.[0-9]{1,3}$" with "badip"'),
    ({"sample_ratio": 1}, 'property "endpoint" is required'),
    ({"endpoint": "http://127.0.0.1"}, 'property "sample_ratio" is required'),
    ({"endpoint": "http://127.0.0.1", "sample_ratio": 1, "span_version": 3},
     'property "span_version" validation failed: matches none of the enum values'),
    ({"endpoint": 1, "sample_ratio": 1},
     'property "endpoint" validation failed: wrong type: expected string, got number'),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as e:
        registry.validate("zipkin", conf, pointer="/plugins/zipkin")
    assert e.value.message == f"failed to check the configuration of plugin zipkin err: {msg}"


# -- behaviour through the gateway, spans in Jaeger -------------------------------------------

@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    if not BINARY.exists():
        pytest.skip(f"jaeger not built ({BINARY}): run tools/peers/jaeger.sh")
    j = Jaeger(tmp_path_factory.mktemp("jaeger"))
    yield j
    j.stop()


def routes(up: Upstream, conf: dict, *, uri: str = "/*", extra: dict | None = None) -> dict:
    return {"routes": [{"id": "1", "uri": uri, "plugins": {"zipkin": conf, **(extra or {})},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


def zconf(jaeger: Jaeger, **kw) -> dict:
    return {"endpoint": jaeger.zipkin_url, "sample_ratio": 1, **kw}


async def test_new_trace_propagated_and_reported(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger, service_name="zipkin-new")))
    try:
        r = await http(gw.addr, "GET", "/hello?a=1", headers={"User-Agent": "t"})
        assert r.status == 200
        got = up.requests[-1]
        trace_id, span_id, parent = got.header("x-b3-traceid"), got.header("x-b3-spanid"), got.header(
            "x-b3-parentspanid")
        assert HEX32.fullmatch(trace_id) and HEX16.fullmatch(span_id) and HEX16.fullmatch(parent)
        assert got.header("x-b3-sampled") == "1"
        assert got.header("b3") is None and got.header("x-b3-flags") is None

        trace = await jaeger.wait_trace(trace_id, spans=3)
        spans = by_name(trace)
        assert set(spans) == {"apisix.request", "apisix.proxy", "apisix.response_span"}
        req, proxy, resp = spans["apisix.request"], spans["apisix.proxy"], spans["apisix.response_span"]
        # the upstream is a child of apisix.proxy, itself a child of apisix.request (the root)
        assert proxy["spanID"] == span_id and req["spanID"] == parent
        assert parent_of(req) is None and parent_of(proxy) == parent and parent_of(resp) == parent
        assert service_of(trace, req) == "zipkin-new"
        t = tags(req)
        assert t["span.kind"] == "server"
        assert t["http.method"] == "GET" and t["http.url"] == "/hello?a=1" and t["component"] == "apisix"
        assert t["http.status_code"] == "200" and t["apisix.response_source"] == "upstream"
        assert t["net.host.port"] == gw.port and t["net.peer.ip"] == "127.0.0.1"
        assert req["duration"] >= proxy["duration"]
    finally:
        gw.stop()


async def test_continues_b3_single_header(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger, service_name="zipkin-b3")))
    TID = new_trace_id()
    try:
        r = await http(gw.addr, "GET", "/x", headers={"b3": f"{TID}-{SID}-1-{PSID}"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("b3") is None                      # not passed on: x-b3-* carry it
        assert got.header("x-b3-traceid") == TID and got.header("x-b3-sampled") == "1"
        trace = await jaeger.wait_trace(TID, spans=3)
        req = by_name(trace)["apisix.request"]
        assert parent_of(req) == SID                          # the caller's span is the parent
        assert got.header("x-b3-parentspanid") == req["spanID"]
        assert by_name(trace)["apisix.proxy"]["spanID"] == got.header("x-b3-spanid")
    finally:
        gw.stop()


async def test_continues_b3_multi_headers_and_unsampled_is_not_reported(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger, service_name="zipkin-multi")))
    TID = new_trace_id()
    try:
        unsampled_tid = "1" * 32
        r = await http(gw.addr, "GET", "/off", headers={"X-B3-TraceId": unsampled_tid, "X-B3-SpanId": SID,
                                                         "X-B3-Sampled": "0"})
        assert r.status == 200
        got = up.requests[-1]
        # not sampled: the upstream gets the request span's context, sampled 0
        assert got.header("x-b3-traceid") == unsampled_tid and got.header("x-b3-sampled") == "0"
        assert got.header("x-b3-parentspanid") == SID and HEX16.fullmatch(got.header("x-b3-spanid"))

        r = await http(gw.addr, "GET", "/on", headers={"X-B3-TraceId": TID, "X-B3-SpanId": SID,
                                                        "X-B3-ParentSpanId": PSID, "X-B3-Sampled": "true"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("x-b3-traceid") == TID and got.header("x-b3-sampled") == "1"
        trace = await jaeger.wait_trace(TID, spans=3)
        assert parent_of(by_name(trace)["apisix.request"]) == SID
        # the sampled trace went through the same queue after the unsampled one: had the
        # unsampled one been sent, Jaeger would hold it by now
        assert jaeger.trace_or_none(unsampled_tid) is None
        assert {t["traceID"] for t in await jaeger.traces("zipkin-multi")} == {TID}
    finally:
        gw.stop()


async def test_sampling_by_ratio_and_headers(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger, sample_ratio=0.00001, service_name="zipkin-ratio")))
    try:
        async def sampled(headers: dict) -> str | None:
            r = await http(gw.addr, "GET", "/echo", headers=headers)
            assert r.status == 200
            return up.requests[-1].header("x-b3-sampled")

        assert await sampled({}) == "0"                        # TEST 18: don't sample by default
        assert await sampled({"x-b3-sampled": "1"}) == "1"     # TEST 19
        assert await sampled({"x-b3-flags": "1"}) == "1"       # TEST 20: debug
        assert await sampled({"x-b3-sampled": "true"}) == "1"  # TEST 21
        assert await sampled({"x-b3-sampled": "0"}) == "0"     # TEST 22: not cached per route
        assert await sampled({"x-b3-sampled": "false"}) == "0"
        assert await sampled({"b3": "0"}) == "0"              # zipkin2 TEST 5
        tid = up.requests[-1].header("x-b3-traceid")
        assert HEX32.fullmatch(tid) and HEX16.fullmatch(up.requests[-1].header("x-b3-spanid"))
    finally:
        gw.stop()


async def test_b3_debug_and_short_forms(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger, service_name="zipkin-debug")))
    TID = new_trace_id()
    try:
        r = await http(gw.addr, "GET", "/d", headers={"b3": f"{TID}-{SID}-d-{PSID}"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("x-b3-sampled") == "1" and got.header("x-b3-flags") == "1"
        r = await http(gw.addr, "GET", "/d", headers={"b3": f"{TID}-{SID}"})   # no sampled, no parent
        assert r.status == 200
        assert up.requests[-1].header("x-b3-traceid") == TID and up.requests[-1].header("x-b3-sampled") == "1"
        # an invalid id drops the incoming context (a new trace starts), not the request
        r = await http(gw.addr, "GET", "/d", headers={"x-b3-traceid": "nothex", "x-b3-spanid": SID})
        assert r.status == 200
        assert up.requests[-1].header("x-b3-traceid") not in ("nothex", None)
    finally:
        gw.stop()


async def test_b3_without_span_id_is_400(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger)))
    TID = new_trace_id()
    try:
        n = len(up.requests)
        r = await http(gw.addr, "GET", "/echo", headers={"b3": TID})
        assert r.status == 400
        assert len(up.requests) == n
        assert "invalid b3 header" in gw.log()
    finally:
        gw.stop()


async def test_span_version_1_reports_five_spans_with_server_addr(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger, service_name="zipkin-v1", span_version=1,
                                                  server_addr="1.2.3.4")))
    try:
        r = await http(gw.addr, "GET", "/opentracing")
        assert r.status == 200
        got = up.requests[-1]
        trace = await jaeger.wait_trace(got.header("x-b3-traceid"), spans=5)
        spans = by_name(trace)
        assert set(spans) == {"apisix.request", "apisix.rewrite", "apisix.access", "apisix.proxy",
                              "apisix.body_filter"}
        root = spans["apisix.request"]["spanID"]
        for n in ("apisix.rewrite", "apisix.access", "apisix.proxy"):
            assert parent_of(spans[n]) == root
        assert parent_of(spans["apisix.body_filter"]) == spans["apisix.proxy"]["spanID"]
        assert spans["apisix.proxy"]["spanID"] == got.header("x-b3-spanid")
        assert tags(spans["apisix.request"])["net.host.ip"] == "1.2.3.4"
    finally:
        gw.stop()


async def test_local_answer_is_traced_with_its_status(tmp_path, up, jaeger):
    # a lower-priority plugin answers in access: the span still ends with that status
    conf = routes(up, zconf(jaeger, service_name="zipkin-local"),
                  extra={"ip-restriction": {"blacklist": ["127.0.0.1"]}})
    gw = start_gateway(tmp_path, conf)
    TID = new_trace_id()
    try:
        r = await http(gw.addr, "GET", "/blocked", headers={"b3": f"{TID}-{SID}-1"})
        assert r.status == 403
        trace = await jaeger.wait_trace(TID, spans=3)
        t = tags(by_name(trace)["apisix.request"])
        assert t["http.status_code"] == "403" and t["apisix.response_source"] == "apisix"
    finally:
        gw.stop()


async def test_meta_disable_and_filter(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, {"routes": [
        {"id": "1", "uri": "/off", "plugins": {"zipkin": {**zconf(jaeger), "_meta": {"disable": True}}},
         "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
        {"id": "2", "uri": "/filtered", "plugins": {"zipkin": {**zconf(jaeger),
                                                                "_meta": {"filter": [["arg_trace", "==", "yes"]]}}},
         "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
    ]})
    try:
        assert (await http(gw.addr, "GET", "/off")).status == 200
        assert up.requests[-1].header("x-b3-traceid") is None
        assert (await http(gw.addr, "GET", "/filtered")).status == 200
        assert up.requests[-1].header("x-b3-traceid") is None
        assert (await http(gw.addr, "GET", "/filtered?trace=yes")).status == 200
        assert HEX32.fullmatch(up.requests[-1].header("x-b3-traceid") or "")
    finally:
        gw.stop()


async def test_every_worker_exports(tmp_path, up, jaeger):
    # each worker starts its own exporter lazily on its first span (SO_REUSEPORT spreads the
    # connections): every trace arrives whichever worker served it
    gw = start_gateway(tmp_path, routes(up, zconf(jaeger, service_name="zipkin-workers")), workers=2)
    try:
        tids = []
        for i in range(6):
            r = await http(gw.addr, "GET", f"/w{i}")
            assert r.status == 200
            tids.append(up.requests[-1].header("x-b3-traceid"))
        for tid in tids:
            await jaeger.wait_trace(tid, spans=3)
    finally:
        gw.stop()
