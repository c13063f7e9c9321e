"""The loggers' entry (APISIX log-util.lua get_full_log / get_custom_format_log / collect_body)
built from a plain ctx double."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

from meshgate.observability.logentry import (LogOptions, collect_resp_body, compile_log_format, conf_key,
                                             encode_json, get_log_entry, max_pending, parse_query, read_req_body,
                                             rfc3339_zulu)
from meshgate.router import compile_expr


class Ctx:
    def __init__(self, **vars: Any) -> None:
        self.vars: dict[str, Any] = {
            "scheme": "http", "host": "example.com", "server_port": "9080", "request_uri": "/p?a=1",
            "uri": "/p", "query_string": "a=1", "request_method": "GET", "remote_addr": "10.0.0.1",
            "status": 200, "route_id": "r1", "service_id": None, "upstream_addr": "127.0.0.1:80",
            "request_time": 0.010, "upstream_response_time": 0.004, "request_length": 77, "bytes_sent": 120,
            "start_time": 1700000000.25, "hostname": "gw-host", **vars}
        self.consumer: Any = None
        self.metadata: dict[str, Any] = {}
        self.headers = {"host": "example.com", "user-agent": "t"}
        self.resp = [(b"Content-Type", b"text/plain"), (b"X-R", b"1"), (b"x-r", b"2")]
        self.chunk = b""
        self.eof = False
        self.body = b"payload"

    def var(self, name: str) -> Any:
        return self.vars.get(name)

    def set_var(self, name: str, value: Any) -> None:
        self.vars[name] = value

    def req_headers(self) -> dict[str, str]:
        return self.headers

    @property
    def resp_headers(self) -> list[tuple[bytes, bytes]]:
        return self.resp

    def resp_header(self, name: str) -> str | None:
        for k, v in self.resp:
            if k.decode().lower() == name.lower():
                return v.decode()
        return None

    def plugin_metadata(self, name: str) -> Any:
        return self.metadata.get(name)

    async def read_body(self) -> bytes:
        return self.body


def opts(**conf: Any) -> LogOptions:
    return LogOptions.from_conf("http-logger", conf, compile_expr)


def test_full_log_fields_and_latencies() -> None:
    e = get_log_entry(opts(), Ctx())
    assert e is not None
    assert e["request"] == {"url": "http://example.com:9080/p?a=1", "uri": "/p?a=1", "method": "GET",
                            "headers": {"host": "example.com", "user-agent": "t"}, "querystring": {"a": "1"},
                            "size": 77}
    assert e["response"] == {"status": 200, "headers": {"content-type": "text/plain", "x-r": "1, 2"}, "size": 120}
    assert e["server"]["hostname"] == "gw-host"
    assert e["upstream"] == "127.0.0.1:80" and e["route_id"] == "r1" and e["service_id"] == ""
    assert e["client_ip"] == "10.0.0.1" and e["start_time"] == 1700000000250.0
    assert abs(e["latency"] - 10.0) < 1e-6 and abs(e["upstream_latency"] - 4.0) < 1e-6
    assert abs(e["apisix_latency"] - 6.0) < 1e-6
    assert "consumer" not in e


def test_full_log_absent_values_are_left_out() -> None:
    ctx = Ctx(route_id=None, upstream_addr=None, upstream_response_time=None)
    ctx.consumer = type("C", (), {"username": "jack"})()
    e = get_log_entry(opts(), ctx)
    assert e is not None
    assert "route_id" not in e and "upstream" not in e and "upstream_latency" not in e
    assert e["service_id"] == "example.com"             # no route: the host, as APISIX
    assert e["apisix_latency"] == e["latency"]
    assert e["consumer"] == {"username": "jack"}


def test_negative_apisix_latency_is_zero() -> None:
    e = get_log_entry(opts(), Ctx(request_time=0.001, upstream_response_time=0.002))
    assert e is not None and e["apisix_latency"] == 0


def test_custom_format_conf_then_metadata() -> None:
    ctx = Ctx(service_id="s1")
    ctx.metadata["http-logger"] = {"log_format": {"h": "$host"}}
    assert get_log_entry(opts(), ctx) == {"h": "example.com", "service_id": "s1", "route_id": "r1"}
    o = opts(log_format={"ip": "$remote_addr", "n": {"m": "$request_method", "x": "$nope"}, "lit": 3})
    assert get_log_entry(o, ctx) == {"ip": "10.0.0.1", "n": {"m": "GET"}, "lit": 3, "service_id": "s1",
                                     "route_id": "r1"}
    # the metadata's compiled format is cached per metadata object, and follows a change
    o2 = opts()
    get_log_entry(o2, ctx)
    ctx.metadata["http-logger"] = {"log_format": {"u": "$uri"}}
    assert get_log_entry(o2, ctx) == {"u": "/p", "service_id": "s1", "route_id": "r1"}


def test_log_format_extra_adds_but_never_replaces() -> None:
    e = get_log_entry(opts(log_format_extra={"ua": "$uri", "route_id": "$host"}), Ctx())
    assert e is not None and e["ua"] == "/p" and e["route_id"] == "r1"


def test_log_format_depth_is_capped() -> None:
    f = compile_log_format({"a": {"b": {"c": {"d": {"e": {"f": "$host"}}}}}})
    e = get_log_entry(LogOptions(plugin="x", log_format=f), Ctx(route_id=None))
    assert e == {"a": {"b": {"c": {"d": {"e": {}}}}}}


def test_match_any_rule() -> None:
    o = LogOptions.from_conf("file-logger", {"match": [[["arg_a", "==", "1"]], [["uri", "==", "/x"]]]},
                             compile_expr)
    assert get_log_entry(o, Ctx(arg_a="1")) is not None
    assert get_log_entry(o, Ctx(uri="/x")) is not None
    assert get_log_entry(o, Ctx(arg_a="2")) is None


def test_parse_query_like_ngx_get_uri_args() -> None:
    assert parse_query("a=1&b=2&b=3&c&d=&e=%20x+y") == {"a": "1", "b": ["2", "3"], "c": True, "d": "", "e": " x y"}
    assert parse_query(None) == {} and parse_query("") == {}


async def test_request_body_read_in_access_and_logged() -> None:
    o = opts(include_req_body=True, include_req_body_expr=[["arg_log", "==", "y"]], max_req_body_bytes=4)
    ctx = Ctx()
    assert read_req_body(o, ctx) is None                 # expression not hit: the body is not read
    ctx.vars["arg_log"] = "y"
    aw = read_req_body(o, ctx)
    assert aw is not None
    await aw
    assert read_req_body(o, ctx) is None                 # read once per request
    e = get_log_entry(o, ctx)
    assert e is not None and e["request"]["body"] == "payl"     # max_req_body_bytes
    assert read_req_body(opts(), Ctx()) is None


def test_response_body_collected_capped_and_decoded() -> None:
    o = opts(include_resp_body=True, max_resp_body_bytes=5)
    ctx = Ctx()
    for chunk, eof in ((b"hel", False), (b"lo world", False), (b"", True)):
        ctx.chunk, ctx.eof = chunk, eof
        collect_resp_body(o, ctx)
    e = get_log_entry(o, ctx)
    assert e is not None and e["response"]["body"] == "hello"
    ctx = Ctx()
    ctx.resp = [(b"Content-Encoding", b"gzip")]
    ctx.chunk, ctx.eof = gzip.compress(b"hello world\n"), True
    collect_resp_body(opts(include_resp_body=True), ctx)
    e = get_log_entry(opts(include_resp_body=True), ctx)
    assert e is not None and e["response"]["body"] == "hello world\n"
    o = opts(include_resp_body=True, include_resp_body_expr=[["arg_bar", "==", "foo"]])
    ctx = Ctx(arg_bar="bar")
    ctx.chunk, ctx.eof = b"x", True
    collect_resp_body(o, ctx)
    e = get_log_entry(o, ctx)
    assert e is not None and "body" not in e["response"]


def test_helpers() -> None:
    assert encode_json({"u": "/a", "n": "é"}) == '{"u":"\\/a","n":"é"}'
    assert rfc3339_zulu(1700000000.5) == "2023-11-14T22:13:20.500Z"
    assert conf_key({"b": 1, "a": [{"y": 1, "x": 2}]}) == conf_key({"a": [{"x": 2, "y": 1}], "b": 1})
    assert max_pending({"max_pending_entries": 3}) == 3 and max_pending(None) == 8192


def test_read_req_body_returns_awaitable_only_when_needed() -> None:
    o = opts(include_req_body=True)
    ctx = Ctx()
    aw = read_req_body(o, ctx)
    assert asyncio.iscoroutine(aw)
    aw.close()
