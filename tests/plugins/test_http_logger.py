"""http-logger: schema, batched delivery to a real loopback collector, ``_meta``.

Mirrors t/plugin/http-logger*.t: the collector is a recording HTTP server on loopback
(gwtools.Upstream); a dead or hanging collector never slows the proxied request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError

NAME = "http-logger"
PTR = "/plugins/http-logger"


def err(registry: Any, conf: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value


# -- schema ------------------------------------------------------------------------------------

@pytest.mark.parametrize("conf", [
    {"uri": "http://127.0.0.1"},
    {"uri": "http://127.0.0.1", "auth_header": "Basic 123", "timeout": 3, "name": "http-logger",
     "max_retry_count": 2, "retry_delay": 2, "buffer_duration": 2, "inactive_timeout": 2, "batch_max_size": 500,
     "ssl_verify": False},
    {"uri": "http://127.0.0.1:1024/x?aa=b"}, {"uri": "http://127.0.0.1:1024?aa=b"}, {"uri": "http://127.0.0.1:1024"},
    {"uri": "http://x.con"}, {"uri": "https://x.con"}, {"uri": "http://[::1]:80/x"},
    {"uri": "http://a", "concat_method": "new_line", "include_req_body": True,
     "include_req_body_expr": [["arg_bar", "==", "foo"]], "include_resp_body": True},
])
def test_schema_valid(registry: Any, conf: dict[str, Any]) -> None:
    registry.validate(NAME, conf, pointer=PTR)


def test_schema_errors(registry: Any) -> None:
    e = err(registry, {"auth_header": "Basic 123", "timeout": 3, "batch_max_size": 500})
    assert e.message == 'failed to check the configuration of plugin http-logger err: property "uri" is required'
    assert e.pointer == PTR
    for bad in ("127.0.0.1", "127.0.0.1:1024"):
        e = err(registry, {"uri": bad})
        assert e.message.startswith('failed to check the configuration of plugin http-logger err: '
                                    'property "uri" validation failed: failed to match pattern')
        assert e.pointer == PTR + "/uri"
    e = err(registry, {"uri": "http://a", "concat_method": "csv"})
    assert e.message.endswith('property "concat_method" validation failed: matches none of the enum values')
    e = err(registry, {"uri": "http://a", "batch_max_size": 0})
    assert e.message.endswith('property "batch_max_size" validation failed: expected 0 to be at least 1')
    e = err(registry, {"uri": "http://a", "timeout": "3"})
    assert e.message.endswith('property "timeout" validation failed: wrong type: expected integer, got string')
    e = err(registry, {"uri": "http://a", "include_resp_body": True, "include_resp_body_expr": [["bar", "<>", "foo"]]})
    assert e.message.startswith("failed to check the configuration of plugin http-logger err: "
                                "failed to validate the 'include_resp_body_expr' expression: ")
    assert "'<>'" in e.message


def test_schema_metadata(registry: Any) -> None:
    registry.validate(NAME, {"log_format": {"host": "$host"}, "max_pending_entries": 10}, pointer="",
                      schema_type="metadata")
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"max_pending_entries": 0}, pointer="", schema_type="metadata")
    assert ei.value.message.endswith('property "max_pending_entries" validation failed: expected 0 to be at least 1')


# -- behaviour ---------------------------------------------------------------------------------

def routes(up: Upstream, conf: dict[str, Any], *, metadata: list[dict[str, Any]] | None = None,
           uri: str = "/hello*") -> dict[str, Any]:
    doc: dict[str, Any] = {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                                       "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}
    if metadata is not None:
        doc["plugin_metadata"] = metadata
    return doc


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def posts(col: Upstream) -> list[Any]:
    return [r for r in col.requests if r.method == "POST"]


@pytest.fixture
async def col():
    u = await Upstream().start()
    yield u
    await u.close()


async def test_full_entry_batch_of_one(tmp_path, up, col):
    gw = start_gateway(tmp_path, routes(up, {"uri": f"http://{col.addr}/log?src=gw", "batch_max_size": 1,
                                             "auth_header": "Bearer xyz"}))
    try:
        r = await http(gw.addr, "GET", "/hello?a=1&b=x&b=y&flag", host="example.com",
                       headers={"User-Agent": "curl/8", "X-Test": "t"})
        assert r.status == 200
        await wait_for(lambda: len(posts(col)) == 1)
        req = posts(col)[0]
        assert req.path == "/log?src=gw"
        assert req.header("content-type") == "application/json"
        assert req.header("authorization") == "Bearer xyz"
        assert req.header("host") == "127.0.0.1"
        assert b"\\/hello" in req.body          # APISIX's cjson escapes "/"
        entry = json.loads(req.body)
        assert isinstance(entry, dict)          # batch_max_size 1: one object, not an array
        rq = entry["request"]
        assert rq["url"] == f"http://example.com:{gw.port}/hello?a=1&b=x&b=y&flag"
        assert rq["uri"] == "/hello?a=1&b=x&b=y&flag"
        assert rq["method"] == "GET"
        assert rq["headers"]["user-agent"] == "curl/8" and rq["headers"]["x-test"] == "t"
        assert rq["querystring"] == {"a": "1", "b": ["x", "y"], "flag": True}
        assert isinstance(rq["size"], int) and rq["size"] > 0
        rs = entry["response"]
        assert rs["status"] == 200
        assert rs["headers"]["content-type"] == "application/json"
        assert isinstance(rs["size"], int) and rs["size"] >= len(r.body)
        assert entry["server"]["hostname"] == socket.gethostname()
        assert isinstance(entry["server"]["version"], str)
        assert entry["upstream"] == up.addr
        assert entry["route_id"] == "1"
        assert entry["service_id"] == ""
        assert entry["client_ip"] == "127.0.0.1"
        assert "consumer" not in entry
        assert abs(entry["start_time"] - time.time() * 1000) < 60_000
        assert entry["latency"] >= 0 and entry["apisix_latency"] >= 0 and entry["upstream_latency"] >= 0
        assert entry["latency"] >= entry["upstream_latency"]
        assert "body" not in rq and "body" not in rs
    finally:
        gw.stop()


async def test_batches_json_array_and_new_line(tmp_path, up, col):
    doc = routes(up, {"uri": f"http://{col.addr}/json", "batch_max_size": 2, "inactive_timeout": 30})
    doc["routes"].append({"id": "2", "uri": "/nl*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                          "plugins": {NAME: {"uri": f"http://{col.addr}/nl", "batch_max_size": 2,
                                             "concat_method": "new_line", "inactive_timeout": 30}}})
    gw = start_gateway(tmp_path, doc)
    try:
        for p in ("/hello1", "/nl1", "/hello2", "/nl2"):
            assert (await http(gw.addr, "GET", p)).status == 200
        await wait_for(lambda: len(posts(col)) == 2)
        by_path = {r.path: r for r in posts(col)}
        arr = json.loads(by_path["/json"].body)
        assert [e["request"]["uri"] for e in arr] == ["/hello1", "/hello2"]
        nl = by_path["/nl"]
        assert nl.header("content-type") == "text/plain"
        lines = nl.body.split(b"\n")
        assert [json.loads(x)["request"]["uri"] for x in lines] == ["/nl1", "/nl2"]
    finally:
        gw.stop()


async def test_flush_on_inactive_timeout(tmp_path, up, col):
    gw = start_gateway(tmp_path, routes(up, {"uri": f"http://{col.addr}/log", "inactive_timeout": 1}))
    try:
        assert (await http(gw.addr, "GET", "/hello")).status == 200
        t0 = time.monotonic()
        await wait_for(lambda: len(posts(col)) == 1, timeout=10)
        assert time.monotonic() - t0 >= 0.5     # it waited for inactivity, not sent at once
        assert isinstance(json.loads(posts(col)[0].body), list)
    finally:
        gw.stop()


async def test_request_and_response_bodies(tmp_path, up, col):
    gw = start_gateway(tmp_path, routes(up, {"uri": f"http://{col.addr}/log", "batch_max_size": 1,
                                             "include_req_body": True, "include_resp_body": True,
                                             "include_resp_body_expr": [["arg_bar", "==", "foo"]]}))
    try:
        r = await http(gw.addr, "POST", "/hello?bar=foo", body=b'{"sample_payload":"hello"}')
        assert r.status == 200
        assert up.requests[-1].body == b'{"sample_payload":"hello"}'    # still sent upstream
        await wait_for(lambda: len(posts(col)) == 1)
        entry = json.loads(posts(col)[0].body)
        assert entry["request"]["body"] == '{"sample_payload":"hello"}'
        assert entry["response"]["body"] == r.body.decode()
        r = await http(gw.addr, "POST", "/hello?bar=bar", body=b'{"sample_payload":"hello"}')
        await wait_for(lambda: len(posts(col)) == 2)
        entry = json.loads(posts(col)[1].body)
        assert entry["request"]["body"] == '{"sample_payload":"hello"}'
        assert "body" not in entry["response"]          # expression not hit
    finally:
        gw.stop()


async def test_log_format_from_metadata_and_conf(tmp_path, up, col):
    meta = [{"id": NAME, "log_format": {"host": "$host", "client_ip": "$remote_addr", "lit": "x",
                                        "req": {"m": "$request_method", "missing": "$http_nope"}}}]
    doc = routes(up, {"uri": f"http://{col.addr}/log", "batch_max_size": 1}, metadata=meta)
    doc["routes"].append({"id": "2", "uri": "/own", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                          "plugins": {NAME: {"uri": f"http://{col.addr}/own", "batch_max_size": 1,
                                             "log_format": {"vip": "$remote_addr", "st": "$status"}}}})
    gw = start_gateway(tmp_path, doc)
    try:
        assert (await http(gw.addr, "GET", "/hello", host="localhost")).status == 200
        assert (await http(gw.addr, "GET", "/own")).status == 200
        await wait_for(lambda: len(posts(col)) == 2)
        by_path = {r.path: json.loads(r.body) for r in posts(col)}
        assert by_path["/log"] == {"host": "localhost", "client_ip": "127.0.0.1", "lit": "x", "req": {"m": "GET"},
                                   "route_id": "1"}
        assert by_path["/own"] == {"vip": "127.0.0.1", "st": 200, "route_id": "2"}   # conf wins over metadata
    finally:
        gw.stop()


async def test_dead_collector_never_slows_or_fails_the_request(tmp_path, up):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                   # nothing listens there: connection refused
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(100)                               # accepts (backlog) but never answers
    hport = hang.getsockname()[1]
    doc = routes(up, {"uri": f"http://127.0.0.1:{port}/log", "batch_max_size": 1, "max_retry_count": 1,
                      "retry_delay": 0})
    doc["routes"].append({"id": "2", "uri": "/hang", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                          "plugins": {NAME: {"uri": f"http://127.0.0.1:{hport}/log", "batch_max_size": 1,
                                             "timeout": 2}}})
    gw = start_gateway(tmp_path, doc)
    try:
        t0 = time.monotonic()
        for i in range(20):
            r = await http(gw.addr, "GET", f"/hello{i}", timeout=5)
            assert r.status == 200
            r = await http(gw.addr, "GET", "/hang", timeout=5)
            assert r.status == 200
        assert time.monotonic() - t0 < 5           # 40 requests; one collector timeout alone is 2 s
        expect = (f"Batch Processor[http logger] failed to process entries: failed to connect to "
                  f"host[127.0.0.1] port[{port}] connection refused")
        await wait_for(lambda: expect in gw.log())
        await wait_for(lambda: "Batch Processor[http logger] exceeded the max_retry_count[2] dropping the entries"
                       in gw.log())
        await wait_for(lambda: f"error while sending data to [127.0.0.1] port[{hport}] timeout" in gw.log())
        for i in range(5):   # batches in flight to the hanging collector do not hold up shutdown
            assert (await http(gw.addr, "GET", "/hang", timeout=5)).status == 200
        t0 = time.monotonic()
        assert gw.stop() == 0
        assert time.monotonic() - t0 < 10
    finally:
        gw.stop()
        hang.close()


async def test_collector_error_status_is_a_failure(tmp_path, up):
    bad = await Upstream(handler=lambda req: (500, {}, b"oops")).start()
    try:
        gw = start_gateway(tmp_path, routes(up, {"uri": f"http://{bad.addr}/log", "batch_max_size": 1}))
        try:
            assert (await http(gw.addr, "GET", "/hello")).status == 200
            await wait_for(lambda: f"server returned status code[500] host[127.0.0.1] port[{bad.port}] body[oops]"
                           in gw.log())
        finally:
            gw.stop()
    finally:
        await bad.close()


async def test_meta_disable_and_filter(tmp_path, up, col):
    doc = routes(up, {"uri": f"http://{col.addr}/off", "batch_max_size": 1, "_meta": {"disable": True}})
    doc["routes"].append({"id": "2", "uri": "/f", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                          "plugins": {NAME: {"uri": f"http://{col.addr}/f", "batch_max_size": 1,
                                             "_meta": {"filter": [["arg_log", "==", "yes"]]}}}})
    gw = start_gateway(tmp_path, doc)
    try:
        assert (await http(gw.addr, "GET", "/hello")).status == 200
        assert (await http(gw.addr, "GET", "/f?log=no")).status == 200
        assert (await http(gw.addr, "GET", "/f?log=yes")).status == 200
        await wait_for(lambda: len(posts(col)) == 1)
        await asyncio.sleep(0.3)
        assert [r.path for r in posts(col)] == ["/f"]
        assert json.loads(posts(col)[0].body)["request"]["uri"] == "/f?log=yes"
    finally:
        gw.stop()
