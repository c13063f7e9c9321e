"""fault-injection: schema, aborts and delays (through the real gateway)."""

from __future__ import annotations

import time

import pytest
from gwtools import http, start_gateway

from meshgate.errors import ConfigError

NAME = "fault-injection"
PREFIX = "failed to check the configuration of plugin fault-injection err: "


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


@pytest.mark.parametrize("conf", [
    {"abort": {"http_status": 200, "body": "x", "headers": {"X-A": 1}, "percentage": 50,
               "vars": [[["arg_name", "==", "jack"]]]}},
    {"delay": {"duration": 0.1, "percentage": 100}},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/x")


@pytest.mark.parametrize("conf, msg", [
    ({}, "expect object to have at least 1 properties"),
    ({"abort": {"body": "x"}}, 'property "abort" validation failed: property "http_status" is required'),
    ({"abort": {"http_status": 100}},
     'property "abort" validation failed: property "http_status" validation failed: expected 100 to be at least 200'),
    ({"delay": {"duration": -1}},
     'property "delay" validation failed: property "duration" validation failed: expected -1 to be at least 0'),
    ({"abort": {"http_status": 200, "percentage": 101}},
     'property "abort" validation failed: property "percentage" validation failed: expected 101 to be at most 100'),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.message == PREFIX + msg


def test_schema_bad_vars_expression(registry):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"abort": {"http_status": 403, "vars": [[["arg_name", "~~~", "x"]]]}},
                          pointer="/plugins/x")
    assert ei.value.message.startswith(PREFIX + "/abort/vars/0")


async def test_abort_body_vars_and_headers(tmp_path, up):
    conf = {"abort": {"http_status": 403, "body": "client addr: $remote_addr\n",
                      "headers": {"X-Fault": "$arg_who", "X-Num": 1}}}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        r = await http(gw.addr, "GET", "/hello?who=me")
        assert r.status == 403
        assert r.body == b"client addr: 127.0.0.1\n"
        assert r.header("x-fault") == "me" and r.header("x-num") == "1"
        assert up.requests == []
    finally:
        gw.stop()


async def test_abort_without_body_and_percentage_zero(tmp_path, up):
    doc = {"routes": [
        {"id": "1", "uri": "/a", "plugins": {NAME: {"abort": {"http_status": 500}}}},
        {"id": "2", "uri": "/b", "plugins": {NAME: {"abort": {"http_status": 403, "percentage": 0}}}},
    ]}
    for r in doc["routes"]:
        r["upstream"] = {"type": "roundrobin", "nodes": {up.addr: 1}}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/a")
        assert r.status == 500 and b"<h1>500 Internal Server Error</h1>" in r.body
        r = await http(gw.addr, "GET", "/b")
        assert r.status == 200 and len(up.requests) == 1
    finally:
        gw.stop()


async def test_abort_vars_any_rule_matches(tmp_path, up):
    conf = {"abort": {"http_status": 403, "body": "Fault Injection!\n",
                      "vars": [[["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]],
                               [["http_apikey", "==", "api-key"]]]}}
    gw = start_gateway(tmp_path, routes(up, conf))
    try:
        assert (await http(gw.addr, "GET", "/hello?name=jack&age=18")).status == 403
        assert (await http(gw.addr, "GET", "/hello?name=jack&age=17")).status == 200
        assert (await http(gw.addr, "GET", "/hello", headers={"apikey": "api-key"})).status == 403
        assert (await http(gw.addr, "GET", "/hello")).status == 200
    finally:
        gw.stop()


async def test_delay_then_proxy_and_meta_error_response(tmp_path, up):
    doc = {"routes": [
        {"id": "1", "uri": "/slow", "plugins": {NAME: {"delay": {"duration": 0.5}}}},
        {"id": "2", "uri": "/err", "plugins": {NAME: {"abort": {"http_status": 503, "body": "x"},
                                                      "_meta": {"error_response": {"msg": "custom"}}}}},
    ]}
    for r in doc["routes"]:
        r["upstream"] = {"type": "roundrobin", "nodes": {up.addr: 1}}
    gw = start_gateway(tmp_path, doc)
    try:
        t0 = time.monotonic()
        r = await http(gw.addr, "GET", "/slow")
        assert r.status == 200 and time.monotonic() - t0 >= 0.5
        r = await http(gw.addr, "GET", "/err")
        assert r.status == 503 and r.json() == {"msg": "custom"}
    finally:
        gw.stop()
