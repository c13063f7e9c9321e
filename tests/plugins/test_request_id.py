"""request-id: schema, generated/kept ids upstream and in the response (through the real gateway)."""

from __future__ import annotations

import re
import uuid

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin import request_id as rid

NAME = "request-id"


def routes(up, conf, uri="/*"):
    return {"routes": [{"id": "1", "uri": uri, "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}


@pytest.mark.parametrize("conf", [{}, {"algorithm": "nanoid"}, {"algorithm": "range_id",
                                                               "range_id": {"length": 8, "char_set": "abcdef"}},
                                  {"header_name": "X-Trace-Id", "include_in_response": False}])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer="/plugins/x")


@pytest.mark.parametrize("conf, msg", [
    ({"algorithm": "snowflake"}, 'property "algorithm" validation failed: matches none of the enum values'),
    ({"range_id": {"length": 5}},
     'property "range_id" validation failed: property "length" validation failed: expected 5 to be at least 6'),
    ({"range_id": {"char_set": "abc"}},
     'property "range_id" validation failed: property "char_set" validation failed: '
     'string too short, expected at least 6, got 3'),
])
def test_schema_invalid(registry, conf, msg):
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer="/plugins/x")
    assert ei.value.message == "failed to check the configuration of plugin request-id err: " + msg


def test_generators():
    assert uuid.UUID(rid.gen_uuid()).version == 4
    assert re.fullmatch(r"[-_0-9a-zA-Z]{21}", rid.gen_nanoid())
    assert re.fullmatch(r"[ab]{7}", rid.gen_range_id(7, "ab"))
    assert re.fullmatch(r"[0-9A-Za-z]{27}", rid.gen_ksuid())
    u7 = uuid.UUID(rid.gen_uuidv7())
    assert u7.version == 7 and u7.variant == uuid.RFC_4122
    assert len({rid.gen_nanoid() for _ in range(200)}) == 200


async def test_generates_and_echoes_uuid(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        got = up.requests[-1].header("x-request-id")
        assert got is not None and uuid.UUID(got).version == 4
        assert r.header("x-request-id") == got
        r2 = await http(gw.addr, "GET", "/hello")
        assert r2.header("x-request-id") != got
    finally:
        gw.stop()


async def test_keeps_client_id_custom_header_and_algorithms(tmp_path, up):
    doc = {"routes": [
        {"id": "1", "uri": "/keep", "plugins": {NAME: {"header_name": "Custom-Header-Name"}}},
        {"id": "2", "uri": "/nano", "plugins": {NAME: {"algorithm": "nanoid"}}},
        {"id": "3", "uri": "/range", "plugins": {NAME: {"algorithm": "range_id",
                                                        "range_id": {"length": 10, "char_set": "xyz123"}}}},
        {"id": "4", "uri": "/quiet", "plugins": {NAME: {"include_in_response": False}}},
    ]}
    for r in doc["routes"]:
        r["upstream"] = {"type": "roundrobin", "nodes": {up.addr: 1}}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/keep", headers={"Custom-Header-Name": "given-id"})
        assert up.requests[-1].headers_all("custom-header-name") == ["given-id"]
        assert r.header("custom-header-name") == "given-id"
        # an empty id is replaced
        r = await http(gw.addr, "GET", "/keep", headers={"Custom-Header-Name": ""})
        assert r.header("custom-header-name") and r.header("custom-header-name") == \
            up.requests[-1].header("custom-header-name")
        r = await http(gw.addr, "GET", "/nano")
        assert re.fullmatch(r"[-_0-9a-zA-Z]{21}", r.header("x-request-id"))
        r = await http(gw.addr, "GET", "/range")
        assert re.fullmatch(r"[xyz123]{10}", r.header("x-request-id"))
        r = await http(gw.addr, "GET", "/quiet")
        assert r.header("x-request-id") is None and up.requests[-1].header("x-request-id")
    finally:
        gw.stop()


async def test_upstream_id_wins_in_response(tmp_path):
    u = await Upstream(handler=lambda req: (200, {"X-Request-Id": "from-upstream"}, b"ok")).start()
    gw = start_gateway(tmp_path, routes(u, {}))
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert [v for k, v in r.headers if k.lower() == "x-request-id"] == ["from-upstream"]
    finally:
        gw.stop()
        await u.close()


async def test_global_rule_and_local_answer(tmp_path, up):
    doc = {"global_rules": [{"id": "1", "plugins": {NAME: {}}}],
           "routes": [{"id": "1", "uri": "/hello", "plugins": {"fault-injection": {"abort": {"http_status": 403,
                                                                                         "body": "no"}}},
                       "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}]}
    gw = start_gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/hello")
        assert r.status == 403 and uuid.UUID(r.header("x-request-id"))
    finally:
        gw.stop()
