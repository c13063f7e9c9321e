"""csrf: schema, behaviour through the real gateway, ``_meta`` (t/plugin/csrf.t)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from email.utils import parsedate_to_datetime

import pytest
from gwtools import Upstream, read_response, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin import csrf

NAME = "csrf"
PTR = "/plugins/csrf"
PREFIX = "failed to check the configuration of plugin csrf err: "


def err(registry, conf) -> str:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value.message


def test_schema(registry):
    registry.validate(NAME, {"name": "_csrf", "expires": 3600, "key": "testkey"}, pointer=PTR)
    registry.validate(NAME, {"key": "k"}, pointer=PTR)
    assert err(registry, {}) == PREFIX + 'property "key" is required'
    assert err(registry, {"key": "k", "expires": "1"}) == \
        PREFIX + 'property "expires" validation failed: wrong type: expected integer, got string'
    assert err(registry, {"key": 1}) == \
        PREFIX + 'property "key" validation failed: wrong type: expected string, got number'


def test_token_roundtrip():
    conf = csrf.prepare({"key": "userkey", "expires": 100})
    now = int(time.time())
    tok = csrf.make_token(conf, now)
    data = json.loads(base64.b64decode(tok))
    assert set(data) == {"random", "expires", "sign"} and data["expires"] == now
    assert csrf.verify_token(conf, tok, now + 100)
    assert not csrf.verify_token(conf, tok, now + 101)                 # expired
    assert not csrf.verify_token(csrf.prepare({"key": "other"}), tok, now)
    assert csrf.verify_token(csrf.prepare({"key": "userkey", "expires": 0}), tok, now + 10 ** 9)
    forged = dict(data, random=0.5)
    assert not csrf.verify_token(conf, base64.b64encode(json.dumps(forged).encode()).decode(), now)
    for junk in ("", "!!!", base64.b64encode(b"[]").decode(), base64.b64encode(b'{"random":1}').decode(),
                 base64.b64encode(b'{"random":1,"expires":"x","sign":"y"}').decode()):
        assert not csrf.verify_token(conf, junk, now)


KEY = "userkey"


def routes(up: Upstream) -> dict:
    def r(rid: str, conf: dict) -> dict:
        return {"id": rid, "uri": f"/{rid}", "plugins": {"csrf": conf},
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    return {"routes": [
        r("csrf", {"key": KEY, "expires": 1000000000}),
        r("short", {"key": KEY}),
        r("never", {"key": KEY, "expires": 0}),
        r("named", {"key": KEY, "name": "X-Token"}),
        r("off", {"key": KEY, "_meta": {"disable": True}}),
        r("errresp", {"key": KEY, "_meta": {"error_response": "csrf says no"}}),
    ]}


async def send(addr, method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes = b""):
    reader, writer = await asyncio.open_connection(*addr)
    hs = [("Host", "test.local"), *headers]
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        hs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    writer.write(head.encode() + body)
    try:
        resp = await read_response(reader, head=method == "HEAD")
    finally:
        writer.close()
    assert resp is not None
    return resp


COOKIE = re.compile(r"^apisix-csrf-token=([^;]+);path=/;SameSite=Lax;Expires=(.+ GMT)$")


async def test_flow(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        r = await send(gw.addr, "GET", "/short")
        assert r.status == 200
        m = COOKIE.match(r.header("set-cookie") or "")
        assert m is not None, r.header("set-cookie")
        token = m.group(1)
        expires_at = parsedate_to_datetime(m.group(2)).timestamp()
        assert abs(expires_at - (time.time() + 7200)) < 10

        # unsafe methods need the header and the cookie
        r = await send(gw.addr, "POST", "/short")
        assert (r.status, r.body) == (401, b'{"error_msg":"no csrf token in headers"}\n')
        assert COOKIE.match(r.header("set-cookie") or "")   # a fresh token on the refusal too
        r = await send(gw.addr, "POST", "/short", [("apisix-csrf-token", "wrongtoken")])
        assert (r.status, r.body) == (401, b'{"error_msg":"no csrf cookie"}\n')
        r = await send(gw.addr, "POST", "/short", [("Cookie", "apisix-csrf-token=testcookie")])
        assert (r.status, r.body) == (401, b'{"error_msg":"no csrf token in headers"}\n')
        r = await send(gw.addr, "POST", "/short", [("apisix-csrf-token", "wrongtoken"),
                                                   ("Cookie", "apisix-csrf-token=testcookie")])
        assert (r.status, r.body) == (401, b'{"error_msg":"csrf token mismatch"}\n')
        bad = ("eyJyYW5kb20iOjAuMTYwOTgzMDYwMTg0NDksInNpZ24iOiI2YTEyYmViYTI4MzAyNDg4MDRmNGU0N2VkZDY5MWFmNjg5N2IyNzQ4"
               "YTY1YWMwMDJiMGFjMzFlN2NlMDdlZTViIiwiZXhwaXJlcyI6MTc0MzExOTkxMX0=")
        r = await send(gw.addr, "POST", "/short", [("apisix-csrf-token", bad), ("Cookie", f"apisix-csrf-token={bad}")])
        assert (r.status, r.body) == (401, b'{"error_msg":"Failed to verify the csrf token signature"}\n')

        up.requests.clear()
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            r = await send(gw.addr, method, "/short", [("apisix-csrf-token", token),
                                                       ("Cookie", f"other=1; apisix-csrf-token={token}")])
            assert r.status == 200, method
        for method in ("GET", "HEAD", "OPTIONS"):
            assert (await send(gw.addr, method, "/short")).status == 200, method
        assert len(up.requests) == 7
    finally:
        gw.stop()


async def test_expiry_and_keys(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        def hdrs(tok: str, name: str = "apisix-csrf-token") -> list[tuple[str, str]]:
            return [(name, tok), ("Cookie", f"{name}={tok}")]

        now = int(time.time())
        old = csrf.make_token(csrf.prepare({"key": KEY}), now - 7300)
        r = await send(gw.addr, "POST", "/short", hdrs(old))
        assert (r.status, r.body) == (401, b'{"error_msg":"Failed to verify the csrf token signature"}\n')
        assert (await send(gw.addr, "POST", "/csrf", hdrs(old))).status == 200
        ancient = csrf.make_token(csrf.prepare({"key": KEY}), now - 10 ** 9 - 100)
        assert (await send(gw.addr, "POST", "/csrf", hdrs(ancient))).status == 401
        assert (await send(gw.addr, "POST", "/never", hdrs(ancient))).status == 200   # expires 0: never
        # a token signed with another key
        other = csrf.make_token(csrf.prepare({"key": "not-the-key"}), now)
        assert (await send(gw.addr, "POST", "/csrf", hdrs(other))).status == 401
        # custom name: header and cookie both use it
        tok = csrf.make_token(csrf.prepare({"key": KEY}), now)
        r = await send(gw.addr, "POST", "/named", hdrs(tok, "X-Token"))
        assert r.status == 200
        assert (r.header("set-cookie") or "").startswith("X-Token=")
        assert (await send(gw.addr, "POST", "/named", hdrs(tok))).status == 401
    finally:
        gw.stop()


async def test_meta(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        r = await send(gw.addr, "POST", "/off")
        assert r.status == 200
        assert r.header("set-cookie") is None
        r = await send(gw.addr, "POST", "/errresp")
        assert (r.status, r.body) == (401, b"csrf says no")
    finally:
        gw.stop()
