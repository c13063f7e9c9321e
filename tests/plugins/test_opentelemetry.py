"""opentelemetry: schema, W3C traceparent propagation, OTLP/HTTP export to a real Jaeger.

Matches APISIX t/plugin/opentelemetry*.t: samplers (always_on, always_off, trace_id_ratio,
parent_base), a valid incoming traceparent continued (its trace id kept), trace_id_source
x-request-id, the span name ``<method> <route uri>`` and its attributes (http.method,
http.status_code, http.route, apisix.route_id/route_name, http.target, net.host.name,
user agent, additional_attributes, additional_header_prefix_attributes), the collector taken
from plugin_metadata (nothing happens without it).
"""

from __future__ import annotations

import re

import pytest
from gwtools import Upstream, http, start_gateway
from meshgate.errors import ConfigError
from meshgate.observability.tracing import new_span_id, new_trace_id
from tracing_peer import BINARY, Jaeger, parent_of, service_of, tags

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


# -- schema -------------------------------------------------------------------------------------

@pytest.mark.parametrize("conf", [
    {},
    {"sampler": {"name": "always_on"}},
    {"sampler": {"name": "trace_id_ratio", "options": {"fraction": 0.5}}},
    {"sampler": {"name": "parent_base", "options": {"root": {"name": "trace_id_ratio", "options": {"fraction": 1}}}}},
    {"additional_attributes": ["http_user_agent", "arg_foo"], "additional_header_prefix_attributes": ["x-my-*"]},
])
def test_schema_valid(registry, conf):
    registry.validate("opentelemetry", conf, pointer="/plugins/opentelemetry")


@pytest.mark.parametrize("conf,msg", [
    ({"sampler": {"name": "sometimes"}},
     'property "sampler" validation failed: property "name" validation failed: matches none of the enum values'),
    ({"sampler": {"name": "parent_base", "options": {"root": {"name": "parent_base"}}}},
     'property "sampler" validation failed: property "options" validation failed: property "root" validation '
     'failed: property "name" validation failed: matches none of the enum values'),
    ({"sampler": {"name": "trace_id_ratio", "options": {"fraction": "half"}}},
     'property "sampler" validation failed: property "options" validation failed: property "fraction" '
     'validation failed: wrong type: expected number, got string'),
    ({"additional_attributes": [""]},
     'property "additional_attributes" validation failed: failed to validate item 1: string too short, '
     'expected at least 1, got 0'),
    ({"additional_header_prefix_attributes": "x-my-*"},
     'property "additional_header_prefix_attributes" validation failed: wrong type: expected array, got string'),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as e:
        registry.validate("opentelemetry", conf, pointer="/plugins/opentelemetry")
    assert e.value.message == f"failed to check the configuration of plugin opentelemetry err: {msg}"


def test_metadata_schema(registry):
    registry.validate("opentelemetry", {"trace_id_source": "x-request-id", "resource": {"service.name": "gw"},
                                        "collector": {"address": "127.0.0.1:4318", "request_timeout": 3,
                                                      "request_headers": {"foo": "bar", "n": 1}},
                                        "batch_span_processor": {"max_export_batch_size": 1,
                                                                 "inactive_timeout": 0.5},
                                        "set_ngx_var": True},
                      pointer="/plugin_metadata/opentelemetry", schema_type="metadata")
    with pytest.raises(ConfigError) as e:
        registry.validate("opentelemetry", {"trace_id_source": "uuid"}, pointer="/plugin_metadata/opentelemetry",
                          schema_type="metadata")
    assert e.value.message.endswith('property "trace_id_source" validation failed: matches none of the enum values')
    with pytest.raises(ConfigError) as e:
        registry.validate("opentelemetry", {"collector": {"request_timeout": 1.5}},
                          pointer="/plugin_metadata/opentelemetry", schema_type="metadata")
    assert e.value.message.endswith('property "collector" validation failed: property "request_timeout" '
                                    'validation failed: wrong type: expected integer, got number')


# -- behaviour through the gateway, spans in Jaeger (OTLP/HTTP receiver) ------------------------

@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    if not BINARY.exists():
        pytest.skip(f"jaeger not built ({BINARY}): run tools/peers/jaeger.sh")
    j = Jaeger(tmp_path_factory.mktemp("jaeger"))
    yield j
    j.stop()


def metadata(jaeger: Jaeger, **kw) -> dict:
    return {"id": "opentelemetry", "collector": {"address": jaeger.otlp_address, "request_timeout": 3},
            "batch_span_processor": {"batch_timeout": 0.2}, **kw}


def config(up: Upstream, jaeger: Jaeger | None, *routes: dict, md: dict | None = None) -> dict:
    doc: dict = {"routes": [{"upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}, **r} for r in routes]}
    if jaeger is not None:
        doc["plugin_metadata"] = [md or metadata(jaeger)]
    return doc


def sent_traceparent(up: Upstream) -> tuple[str, str, str]:
    tp = up.requests[-1].header("traceparent")
    m = TRACEPARENT.fullmatch(tp or "")
    assert m, f"upstream got traceparent {tp!r}"
    return m.group(1), m.group(2), m.group(3)


def only_span(trace: dict) -> dict:
    assert len(trace["spans"]) == 1, trace
    return trace["spans"][0]


async def test_new_trace_span_and_attributes(tmp_path, up, jaeger):
    route = {"id": "1", "name": "route-name", "uri": "/articles/*/comments",
             "plugins": {"opentelemetry": {"sampler": {"name": "always_on"},
                                           "additional_attributes": ["arg_foo", "remote_addr", "nope"],
                                           "additional_header_prefix_attributes": ["x-my-*", "X-Exact"]}}}
    md = metadata(jaeger, resource={"service.name": "otel-new", "env": "test"})
    gw = start_gateway(tmp_path, config(up, jaeger, route, md=md))
    try:
        r = await http(gw.addr, "GET", "/articles/12345/comments?foo=bar", host="localhost",
                       headers={"User-Agent": "test-client", "X-My-A": "1", "X-My-B": "2", "X-Exact": "e"})
        assert r.status == 200
        trace_id, span_id, flags = sent_traceparent(up)
        assert flags == "01"
        span = only_span(await jaeger.wait_trace(trace_id))
        trace = await jaeger.wait_trace(trace_id)
        assert span["spanID"] == span_id                # the upstream is the gateway span's child
        assert parent_of(span) is None
        assert span["operationName"] == "GET /articles/*/comments"
        assert service_of(trace, span) == "otel-new"
        t = tags(span)
        assert t["span.kind"] == "server"
        assert t["http.method"] == "GET" and t["http.request.method"] == "GET"
        assert t["http.status_code"] == 200 and t["http.response.status_code"] == 200
        assert t["net.host.name"] == "localhost"
        assert t["http.target"] == "/articles/12345/comments?foo=bar"
        assert t["url.path"] == "/articles/12345/comments" and t["url.scheme"] == "http"
        assert t["http.user_agent"] == "test-client" and t["user_agent.original"] == "test-client"
        assert t["http.route"] == "/articles/*/comments"
        assert t["apisix.route_id"] == "1" and t["apisix.route_name"] == "route-name"
        assert t["apisix.response_source"] == "upstream"
        assert t["arg_foo"] == "bar" and t["remote_addr"] == "127.0.0.1" and "nope" not in t
        assert t["x-my-a"] == "1" and t["x-my-b"] == "2" and t["X-Exact"] == "e"
        assert t["otel.scope.name"] == "opentelemetry-lua"
        process_tags = {x["key"]: x["value"] for x in trace["processes"][span["processID"]]["tags"]}
        assert process_tags["env"] == "test" and process_tags["hostname"]
    finally:
        gw.stop()


async def test_continues_incoming_traceparent(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, config(up, jaeger, {"id": "1", "uri": "/*", "plugins": {
        "opentelemetry": {"sampler": {"name": "always_on"}}}}))
    try:
        tid, parent = new_trace_id(), new_span_id()
        r = await http(gw.addr, "GET", "/x", headers={"traceparent": f"00-{tid}-{parent}-01",
                                                      "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"})
        assert r.status == 200
        trace_id, span_id, flags = sent_traceparent(up)
        assert trace_id == tid and span_id != parent and flags == "01"
        assert up.requests[-1].header("tracestate") == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        trace = await jaeger.wait_trace(tid)
        span = only_span(trace)
        assert span["spanID"] == span_id and parent_of(span) == parent
        assert service_of(trace, span) == "APISIX"      # the default service.name

        # an invalid traceparent is ignored: a new trace starts (and its tracestate is dropped)
        r = await http(gw.addr, "GET", "/x", headers={"traceparent": f"00-{'0' * 32}-{parent}-01",
                                                      "tracestate": "rojo=1"})
        assert r.status == 200
        trace_id, _, flags = sent_traceparent(up)
        assert trace_id != "0" * 32 and flags == "01"
        assert up.requests[-1].header("tracestate") is None
        assert parent_of(only_span(await jaeger.wait_trace(trace_id))) is None
    finally:
        gw.stop()


async def test_samplers_and_unsampled_sends_nothing(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, config(
        up, jaeger,
        {"id": "off", "uri": "/off", "plugins": {"opentelemetry": {}}},     # default: always_off
        {"id": "ratio0", "uri": "/ratio0", "plugins": {"opentelemetry": {
            "sampler": {"name": "trace_id_ratio", "options": {"fraction": 0}}}}},
        {"id": "pb", "uri": "/pb", "plugins": {"opentelemetry": {
            "sampler": {"name": "parent_base", "options": {"root": {"name": "trace_id_ratio"}}}}}},
        {"id": "on", "uri": "/on", "plugins": {"opentelemetry": {
            "sampler": {"name": "trace_id_ratio", "options": {"fraction": 1}}}}},
    ))
    try:
        unsampled = []
        for path, headers in (("/off", {}), ("/ratio0", {}), ("/pb", {}),
                              ("/pb", {"traceparent": f"00-{new_trace_id()}-{new_span_id()}-00"}),
                              ("/off", {"traceparent": f"00-{new_trace_id()}-{new_span_id()}-01"})):
            r = await http(gw.addr, "GET", path, headers=headers)
            assert r.status == 200
            trace_id, _, flags = sent_traceparent(up)
            assert flags == "00", (path, headers)
            if "traceparent" in headers:
                assert trace_id == headers["traceparent"][3:35]   # the trace id is kept all the same
            unsampled.append(trace_id)

        # parent_base follows a sampled parent even with an always-off root
        tid = new_trace_id()
        r = await http(gw.addr, "GET", "/pb", headers={"traceparent": f"00-{tid}-{new_span_id()}-01"})
        assert sent_traceparent(up)[2] == "01"
        await jaeger.wait_trace(tid)
        r = await http(gw.addr, "GET", "/on")
        trace_id, _, flags = sent_traceparent(up)
        assert flags == "01"
        await jaeger.wait_trace(trace_id)
        # both sampled spans went through the same exporter queue after the unsampled requests
        for t in unsampled:
            assert jaeger.trace_or_none(t) is None
    finally:
        gw.stop()


async def test_trace_id_from_x_request_id(tmp_path, up, jaeger):
    md = metadata(jaeger, trace_id_source="x-request-id")
    gw = start_gateway(tmp_path, config(up, jaeger, {"id": "1", "uri": "/*", "plugins": {
        "opentelemetry": {"sampler": {"name": "always_on"}}}}, md=md))
    try:
        rid = new_trace_id()
        r = await http(gw.addr, "GET", "/rid", headers={"X-Request-Id": rid.upper()})
        assert r.status == 200
        assert sent_traceparent(up)[0] == rid
        await jaeger.wait_trace(rid)
        # not a 32-hex id (a UUID): a random trace id instead, the request is not affected
        r = await http(gw.addr, "GET", "/rid", headers={"X-Request-Id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"})
        assert r.status == 200
        assert sent_traceparent(up)[0] != rid
    finally:
        gw.stop()


async def test_5xx_marks_the_span_as_error(tmp_path, jaeger):
    up = await Upstream(handler=lambda req: (503, {}, b"busy")).start()
    gw = start_gateway(tmp_path, config(up, jaeger, {"id": "1", "uri": "/*", "plugins": {
        "opentelemetry": {"sampler": {"name": "always_on"}}}}))
    try:
        r = await http(gw.addr, "GET", "/busy")
        assert r.status == 503
        trace_id, _, _ = sent_traceparent(up)
        t = tags(only_span(await jaeger.wait_trace(trace_id)))
        assert t["http.status_code"] == 503
        assert t["otel.status_code"] == "ERROR" and t["otel.status_description"] == "upstream error: 503"
        assert t["error"] is True
    finally:
        gw.stop()
        await up.close()


async def test_without_metadata_nothing_happens(tmp_path, up):
    gw = start_gateway(tmp_path, config(up, None, {"id": "1", "uri": "/*", "plugins": {
        "opentelemetry": {"sampler": {"name": "always_on"}}}}))
    try:
        tp = f"00-{new_trace_id()}-{new_span_id()}-01"
        r = await http(gw.addr, "GET", "/x", headers={"traceparent": tp})
        assert r.status == 200
        assert up.requests[-1].header("traceparent") == tp       # passed through untouched
        r = await http(gw.addr, "GET", "/x")
        assert up.requests[-1].header("traceparent") is None
        assert "plugin_metadata is required for opentelemetry plugin" in gw.log()
    finally:
        gw.stop()


async def test_meta_disable(tmp_path, up, jaeger):
    gw = start_gateway(tmp_path, config(up, jaeger, {"id": "1", "uri": "/*", "plugins": {
        "opentelemetry": {"sampler": {"name": "always_on"}, "_meta": {"disable": True}}}}))
    try:
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 200
        assert up.requests[-1].header("traceparent") is None
    finally:
        gw.stop()


@pytest.mark.parametrize("set_vars", [True, False])
async def test_set_ngx_var_exposes_the_context_to_later_plugins(tmp_path, up, jaeger, set_vars):
    # opentelemetry3.t: with set_ngx_var the span context is in $opentelemetry_context_traceparent,
    # $opentelemetry_trace_id and $opentelemetry_span_id (read here by proxy-rewrite, which runs later)
    route = {"id": "1", "uri": "/*", "plugins": {
        "opentelemetry": {"sampler": {"name": "always_on"}},
        "proxy-rewrite": {"headers": {"set": {"X-Tp": "$opentelemetry_context_traceparent",
                                              "X-Ids": "$opentelemetry_trace_id/$opentelemetry_span_id"}}}}}
    gw = start_gateway(tmp_path, config(up, jaeger, route, md=metadata(jaeger, set_ngx_var=set_vars)))
    try:
        r = await http(gw.addr, "GET", "/vars")
        assert r.status == 200
        trace_id, span_id, _ = sent_traceparent(up)
        got = up.requests[-1]
        if set_vars:
            assert got.header("x-tp") == up.requests[-1].header("traceparent")
            assert got.header("x-ids") == f"{trace_id}/{span_id}"
        else:
            assert not got.header("x-tp") and got.header("x-ids") in (None, "/")
    finally:
        gw.stop()
