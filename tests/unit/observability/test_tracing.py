"""observability/tracing.py: W3C / B3 propagation, ids, samplers, Zipkin and OTLP encoders."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshgate.observability.tracing import (AlwaysOff, AlwaysOn, B3Headers, ParentBased, Span, TraceContext,
                                            TraceIdRatio, ZipkinEndpoint, encode_otlp, encode_zipkin_v2,
                                            format_b3_multi, format_b3_single, format_traceparent,
                                            format_tracestate, is_valid_span_id, is_valid_trace_id, new_span_id,
                                            new_trace_id, parse_b3_multi, parse_b3_single, parse_traceparent,
                                            parse_tracestate)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"


# -- ids --------------------------------------------------------------------------------------

def test_ids_are_random_lowercase_hex_of_the_right_size():
    tids = {new_trace_id() for _ in range(200)}
    sids = {new_span_id() for _ in range(200)}
    assert len(tids) == 200 and len(sids) == 200
    assert all(is_valid_trace_id(t) for t in tids)
    assert all(is_valid_span_id(s) for s in sids)


@pytest.mark.parametrize("v,ok", [(TID, True), ("0" * 32, False), (TID.upper(), False), (TID[:-1], False),
                                  (TID + "0", False), ("g" * 32, False)])
def test_trace_id_validity(v, ok):
    assert is_valid_trace_id(v) is ok


# -- W3C traceparent / tracestate --------------------------------------------------------------

def test_traceparent_round_trip_sampled_and_not():
    for flags, sampled in (("01", True), ("00", False), ("03", True), ("02", False)):
        ctx = parse_traceparent(f"00-{TID}-{SID}-{flags}")
        assert ctx == TraceContext(TID, SID, sampled, flags=int(flags, 16))
        assert format_traceparent(ctx.trace_id, ctx.span_id, sampled) == f"00-{TID}-{SID}-{'01' if sampled else '00'}"


@pytest.mark.parametrize("bad", [
    None, "", "garbage",
    f"00-{'0' * 32}-{SID}-01",              # all-zero trace id
    f"00-{TID}-{'0' * 16}-01",              # all-zero parent id
    f"00-{TID.upper()}-{SID}-01",           # upper-case hex is not allowed
    f"00-{TID}-{SID}-0g",                   # bad flags
    f"00-{TID}-{SID}-01-extra",             # version 00 has exactly four fields
    f"ff-{TID}-{SID}-01",                   # version ff is forbidden
    f"00-{TID[:-2]}-{SID}-01",              # short trace id
    f"00_{TID}_{SID}_01",                   # wrong separators
    f"0x-{TID}-{SID}-01",
])
def test_bad_traceparent_is_ignored(bad):
    assert parse_traceparent(bad) is None


def test_future_traceparent_version_is_parsed_by_its_prefix():
    assert parse_traceparent(f"01-{TID}-{SID}-01-what-ever").trace_id == TID
    assert parse_traceparent(f"01-{TID}-{SID}-01") is not None
    assert parse_traceparent(f"01-{TID}-{SID}-01x") is None


def test_tracestate_parse_and_format():
    members = parse_tracestate("rojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE,tenant@sys=v")
    assert members == [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"), ("tenant@sys", "v")]
    assert format_tracestate(members) == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@sys=v"


@pytest.mark.parametrize("bad", [None, "", "Upper=1", "k", "k=", "a=1,a=2", "k=v=w", "k=v ,x=" ,
                                 ",".join(f"k{i}=v" for i in range(33))])
def test_bad_tracestate_is_discarded_whole(bad):
    assert parse_tracestate(bad) is None


# -- B3 ---------------------------------------------------------------------------------------

def _getter(d):
    return lambda name: d.get(name)


def test_b3_multi_parse_and_context():
    h = parse_b3_multi(_getter({"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-parentspanid": "05e3ac9a4f6e3b90",
                                "x-b3-sampled": "1"}))
    assert h == B3Headers(TID, SID, "05e3ac9a4f6e3b90", True, False)
    assert h.context() == TraceContext(TID, SID, True, parent_span_id="05e3ac9a4f6e3b90")
    assert parse_b3_multi(_getter({})) is None


@pytest.mark.parametrize("value,want", [("1", True), ("true", True), ("0", False), ("false", False),
                                        ("yes", None)])
def test_b3_sampled_values(value, want):
    assert parse_b3_multi(_getter({"x-b3-sampled": value})).sampled is want


def test_b3_flags_debug_forces_sampling():
    h = parse_b3_multi(_getter({"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-flags": "1"}))
    assert h.debug and h.context().sampled is True


@pytest.mark.parametrize("headers", [
    {"x-b3-traceid": "xyz", "x-b3-spanid": SID},                      # not hex
    {"x-b3-traceid": TID[:20], "x-b3-spanid": SID},                   # 80 bits: neither 64 nor 128
    {"x-b3-traceid": TID, "x-b3-spanid": SID + "0"},                  # span id too long
    {"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-parentspanid": "abc"},
    {"x-b3-spanid": SID},                                              # no trace id
    {"x-b3-traceid": TID},                                             # no span id
])
def test_b3_invalid_ids_drop_the_context(headers):
    assert parse_b3_multi(_getter(headers)).context() is None


def test_b3_64bit_trace_id_is_kept_and_padded_for_w3c():
    ctx = parse_b3_multi(_getter({"x-b3-traceid": "A3CE929D0E0E4736", "x-b3-spanid": SID})).context()
    assert ctx.trace_id == "a3ce929d0e0e4736"
    assert ctx.trace_id128 == "0000000000000000a3ce929d0e0e4736"
    assert format_traceparent(ctx.trace_id, SID, True) == f"00-0000000000000000a3ce929d0e0e4736-{SID}-01"


def test_b3_single_forms():
    full = parse_b3_single(f"{TID}-{SID}-1-05e3ac9a4f6e3b90")
    assert full == B3Headers(TID, SID, "05e3ac9a4f6e3b90", True, False)
    assert parse_b3_single(f"{TID}-{SID}") == B3Headers(TID, SID, None, None, False)
    assert parse_b3_single(f"{TID}-{SID}-d") == B3Headers(TID, SID, None, True, True)
    assert parse_b3_single(f"{TID}-{SID}-0-05e3ac9a4f6e3b90").sampled is False
    assert parse_b3_single("0") == B3Headers(sampled=False)
    assert parse_b3_single("d") == B3Headers(sampled=True, debug=True)


@pytest.mark.parametrize("bad,why", [(TID, "missing span_id"), ("", "missing trace_id"),
                                     (f"{TID}-", "missing span_id"), (f"-{SID}", "missing trace_id")])
def test_b3_single_without_ids_is_an_error(bad, why):
    with pytest.raises(ValueError, match=why):
        parse_b3_single(bad)


def test_b3_format_round_trips():
    hs = dict(format_b3_multi(TID, SID, "05e3ac9a4f6e3b90", True))
    assert hs == {"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-parentspanid": "05e3ac9a4f6e3b90",
                  "x-b3-sampled": "1"}
    assert parse_b3_multi(_getter(hs)).context() == TraceContext(TID, SID, True, parent_span_id="05e3ac9a4f6e3b90")
    assert "x-b3-parentspanid" not in dict(format_b3_multi(TID, SID, None, False))
    assert dict(format_b3_multi(TID, SID, None, True, debug=True))["x-b3-flags"] == "1"
    single = format_b3_single(TID, SID, "05e3ac9a4f6e3b90", False)
    assert single == f"{TID}-{SID}-0-05e3ac9a4f6e3b90"
    assert parse_b3_single(single).context() == TraceContext(TID, SID, False, parent_span_id="05e3ac9a4f6e3b90")
    assert format_b3_single(TID, SID, None, True, debug=True) == f"{TID}-{SID}-d"


# -- samplers -----------------------------------------------------------------------------------

def test_samplers():
    assert AlwaysOn().should_sample(TID, None) and not AlwaysOff().should_sample(TID, None)
    assert TraceIdRatio(1.0).should_sample("f" * 32, None)
    assert not TraceIdRatio(0.0).should_sample("0" * 31 + "1", None)
    half = TraceIdRatio(0.5)
    assert half.should_sample("f" * 16 + "7" + "f" * 15, None)
    assert not half.should_sample("0" * 16 + "8" + "0" * 15, None)
    hits = sum(TraceIdRatio(0.25).should_sample(new_trace_id(), None) for _ in range(4000))
    assert 700 < hits < 1300
    pb = ParentBased(AlwaysOff())
    assert pb.should_sample(TID, TraceContext(TID, SID, True))
    assert not ParentBased(AlwaysOn()).should_sample(TID, TraceContext(TID, SID, False))
    assert not pb.should_sample(TID, None)
    assert ParentBased(AlwaysOn()).should_sample(TID, None)


# -- encoders -----------------------------------------------------------------------------------

def _span(**kw):
    s = Span("apisix.request", TID, SID, "05e3ac9a4f6e3b90", "server", 1_700_000_000_123_456_789, **kw)
    s.finish(1_700_000_000_223_456_789)
    return s


def test_zipkin_v2_json():
    s = _span(attributes={"http.method": "GET", "http.status_code": 200, "peer.ipv4": "10.0.0.1",
                          "peer.port": 4242, "ok": True})
    child = Span("apisix.proxy", TID, "1111111111111111", SID, "internal", s.start_ns)
    child.finish(s.start_ns + 1)    # sub-microsecond: still a duration of 1
    out = json.loads(encode_zipkin_v2([s, child], ZipkinEndpoint("APISIX", "127.0.0.1", 9080)))
    assert out[0] == {
        "traceId": TID, "id": SID, "parentId": "05e3ac9a4f6e3b90", "name": "apisix.request", "kind": "SERVER",
        "timestamp": 1_700_000_000_123_456, "duration": 100_000,
        "localEndpoint": {"serviceName": "APISIX", "ipv4": "127.0.0.1", "port": 9080},
        "remoteEndpoint": {"ipv4": "10.0.0.1", "port": 4242},
        "tags": {"http.method": "GET", "http.status_code": "200", "ok": "true"},
    }
    assert out[1]["duration"] == 1 and "kind" not in out[1] and "remoteEndpoint" not in out[1]
    assert out[1]["parentId"] == SID and out[1]["tags"] == {}


def test_zipkin_error_status_becomes_error_tag():
    s = _span()
    s.set_status("error", "upstream error: 502")
    assert json.loads(encode_zipkin_v2([s], ZipkinEndpoint("x")))[0]["tags"] == {"error": "upstream error: 502"}


def test_otlp_protobuf_decodes_with_the_official_messages():
    s = _span(attributes={"http.method": "GET", "http.status_code": 200, "ok": False, "ratio": 0.5},
              tracestate="rojo=1")
    s.set_status("error", "upstream error: 503")
    root = Span("GET /", "a3ce929d0e0e4736", "2222222222222222", None, "server", 10)
    root.finish(20)
    body = encode_otlp([s, root], resource={"service.name": "APISIX", "hostname": "h"}, scope_name="scope",
                       scope_version="1")
    req = ExportTraceServiceRequest.FromString(body)
    rs = req.resource_spans[0]
    assert {kv.key: kv.value.string_value for kv in rs.resource.attributes} == {"service.name": "APISIX",
                                                                                "hostname": "h"}
    ss = rs.scope_spans[0]
    assert (ss.scope.name, ss.scope.version) == ("scope", "1")
    p = ss.spans[0]
    assert p.trace_id.hex() == TID and p.span_id.hex() == SID and p.parent_span_id.hex() == "05e3ac9a4f6e3b90"
    assert p.name == "apisix.request" and p.kind == 2   # SPAN_KIND_SERVER
    assert (p.start_time_unix_nano, p.end_time_unix_nano) == (s.start_ns, s.end_ns)
    attrs = {kv.key: kv.value for kv in p.attributes}
    assert attrs["http.method"].string_value == "GET"
    assert attrs["http.status_code"].int_value == 200
    assert attrs["ok"].WhichOneof("value") == "bool_value" and attrs["ok"].bool_value is False
    assert attrs["ratio"].double_value == 0.5
    assert (p.status.code, p.status.message) == (2, "upstream error: 503")
    assert p.trace_state == "rojo=1"
    q = ss.spans[1]
    assert q.trace_id.hex() == "0000000000000000a3ce929d0e0e4736" and q.parent_span_id == b""
