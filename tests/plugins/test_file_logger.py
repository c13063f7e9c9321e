"""file-logger: schema, one JSON line per request through the real gateway, rotation, ``_meta``.

Mirrors t/plugin/file-logger.t, file-logger2.t and file-logger-reopen.t."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError

NAME = "file-logger"
PTR = "/plugins/file-logger"


def test_schema(registry: Any) -> None:
    registry.validate(NAME, {"path": "file.log"}, pointer=PTR)
    registry.validate(NAME, {"path": "file.log", "include_resp_body": True,
                             "include_resp_body_expr": [["arg_foo", "==", "bar"]],
                             "match": [[["arg_name", "==", "jack"]]]}, pointer=PTR)
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"path": 1}, pointer=PTR)
    assert ei.value.message == ('failed to check the configuration of plugin file-logger err: '
                                'property "path" validation failed: wrong type: expected string, got number')
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"path": "f", "match": [[["arg_name", "<>", "jack"]]]}, pointer=PTR)
    assert ei.value.message.startswith("failed to check the configuration of plugin file-logger err: "
                                       "failed to validate the 'match' expression: ")
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, {"path": "f", "match": [[]] * 21}, pointer=PTR)
    assert ei.value.message.endswith('property "match" validation failed: expect array to have at most 20 items')


def routes(up: Upstream, conf: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"routes": [{"id": "1", "uri": "/hello*", "plugins": {NAME: conf},
                        "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}], **extra}


async def wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(x) for x in lines]
        assert time.monotonic() < deadline, f"{path}: {len(lines)} lines, expected {n}"
        await asyncio.sleep(0.02)


async def test_one_json_line_per_request(tmp_path, up):
    log = tmp_path / "file.log"
    gw = start_gateway(tmp_path, routes(up, {"path": str(log)}))
    try:
        assert (await http(gw.addr, "GET", "/hello?k=v", headers={"X-A": "1"})).status == 200
        assert (await http(gw.addr, "POST", "/hello2", body=b"abc")).status == 200
        first, second = await wait_lines(log, 2)
        raw = log.read_bytes()
        assert raw.endswith(b"\n") and raw.count(b"\n") == 2
        assert first["request"]["uri"] == "/hello?k=v" and first["request"]["method"] == "GET"
        assert first["request"]["headers"]["x-a"] == "1"
        assert first["request"]["querystring"] == {"k": "v"}
        assert first["response"]["status"] == 200
        assert first["route_id"] == "1" and first["client_ip"] == "127.0.0.1" and first["upstream"] == up.addr
        assert set(first) >= {"request", "response", "server", "upstream", "service_id", "route_id", "client_ip",
                              "start_time", "latency", "apisix_latency"}
        assert second["request"]["method"] == "POST" and second["request"]["uri"] == "/hello2"
    finally:
        gw.stop()


async def test_metadata_path_and_format_and_nesting(tmp_path, up):
    log = tmp_path / "meta.log"
    nested = tmp_path / "nested.log"
    doc = routes(up, {}, plugin_metadata=[{"id": NAME, "path": str(log),
                                           "log_format": {"host": "$host", "client_ip": "$remote_addr"}}])
    doc["routes"].append({"id": "2", "uri": "/n", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                          "plugins": {NAME: {"path": str(nested), "log_format": {
                              "request": {"method": "$request_method", "uri": "$request_uri",
                                          "headers": {"user_agent": "$http_user_agent"}},
                              "response": {"status": "$status"},
                              "a": {"b": {"c": {"d": {"e": {"f": {"g": "$host"}}}}}}}}}})
    gw = start_gateway(tmp_path, doc)
    try:
        assert (await http(gw.addr, "GET", "/hello", host="127.0.0.1")).status == 200
        assert await wait_lines(log, 1) == [{"host": "127.0.0.1", "client_ip": "127.0.0.1", "route_id": "1"}]
        assert (await http(gw.addr, "GET", "/n", headers={"User-Agent": "ua/1"})).status == 200
        [e] = await wait_lines(nested, 1)
        assert e["request"] == {"method": "GET", "uri": "/n", "headers": {"user_agent": "ua/1"}}
        assert e["response"] == {"status": 200}
        assert e["route_id"] == "2"
        assert e["a"] == {"b": {"c": {"d": {"e": {}}}}}      # nesting beyond 5 levels is cut
    finally:
        gw.stop()


async def test_bodies_and_match(tmp_path, up):
    log = tmp_path / "b.log"
    gw = start_gateway(tmp_path, routes(up, {"path": str(log), "include_req_body": True, "include_resp_body": True,
                                             "match": [[["arg_name", "==", "jack"]]]}))
    try:
        r = await http(gw.addr, "POST", "/hello?name=jack", body=b'{"sample_payload":"hello"}')
        assert r.status == 200
        assert (await http(gw.addr, "GET", "/hello?name=rose")).status == 200   # not matched: not logged
        assert (await http(gw.addr, "GET", "/hello?name=jack&x=1")).status == 200
        lines = await wait_lines(log, 2)
        await asyncio.sleep(0.2)
        assert len(log.read_text().splitlines()) == 2
        assert lines[0]["request"]["body"] == '{"sample_payload":"hello"}'
        assert lines[0]["response"]["body"] == r.body.decode()
        assert lines[1]["request"]["uri"] == "/hello?name=jack&x=1"
    finally:
        gw.stop()


async def test_reopens_after_rotation(tmp_path, up):
    log = tmp_path / "rot.log"
    gw = start_gateway(tmp_path, routes(up, {"path": str(log)}))
    try:
        assert (await http(gw.addr, "GET", "/hello/1")).status == 200
        await wait_lines(log, 1)
        os.rename(log, tmp_path / "rot.log.1")
        deadline = time.monotonic() + 10
        i = 2
        while not log.exists():        # the gateway checks the path at most once a second
            assert time.monotonic() < deadline
            assert (await http(gw.addr, "GET", f"/hello/{i}")).status == 200
            i += 1
            await asyncio.sleep(0.1)
        assert json.loads((tmp_path / "rot.log.1").read_text().splitlines()[0])["request"]["uri"] == "/hello/1"
        assert json.loads(log.read_text().splitlines()[-1])["request"]["uri"] == f"/hello/{i - 1}"
    finally:
        gw.stop()


async def test_unwritable_path_never_fails_the_request(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up, {"path": "/nonexistent-dir/file.log"}))
    try:
        assert (await http(gw.addr, "GET", "/hello")).status == 200
        deadline = time.monotonic() + 5
        while "failed to open file: /nonexistent-dir/file.log, error info: /nonexistent-dir/file.log: " \
              "No such file or directory" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            await asyncio.sleep(0.05)
    finally:
        gw.stop()


async def test_meta_disable(tmp_path, up):
    log = tmp_path / "off.log"
    gw = start_gateway(tmp_path, routes(up, {"path": str(log), "_meta": {"disable": True}}))
    try:
        assert (await http(gw.addr, "GET", "/hello")).status == 200
        await asyncio.sleep(0.2)
        assert not log.exists()
    finally:
        gw.stop()
