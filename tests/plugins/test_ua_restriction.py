"""ua-restriction: schema, behaviour through the real gateway, ``_meta`` (t/plugin/ua-restriction.t)."""

from __future__ import annotations

import asyncio

import pytest
from gwtools import Upstream, read_response, start_gateway

from meshgate.errors import ConfigError

NAME = "ua-restriction"
PTR = "/plugins/ua-restriction"
PREFIX = "failed to check the configuration of plugin ua-restriction err: "


def err(registry, conf) -> str:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value.message


def test_schema(registry):
    registry.validate(NAME, {"denylist": ["my-bot1", "(Baiduspider)/(\\d+)\\.(\\d+)"]}, pointer=PTR)
    registry.validate(NAME, {"allowlist": ["a"], "bypass_missing": True, "message": "m"}, pointer=PTR)
    assert err(registry, {"bypass_missing": "foo", "allowlist": ["a"]}) == \
        PREFIX + 'property "bypass_missing" validation failed: wrong type: expected boolean, got string'
    assert err(registry, {"allowlist": "my-bot1"}) == \
        PREFIX + 'property "allowlist" validation failed: wrong type: expected array, got string'
    assert err(registry, {"denylist": 100}) == \
        PREFIX + 'property "denylist" validation failed: wrong type: expected array, got number'
    assert err(registry, {"denylist": ["a"], "message": 100}) == \
        PREFIX + 'property "message" validation failed: wrong type: expected string, got number'
    assert err(registry, {"denylist": ["a"], "message": ""}) == \
        PREFIX + 'property "message" validation failed: string too short, expected at least 1, got 0'
    assert err(registry, {"denylist": ["a"], "message": "-1Aa#" * 205}) == \
        PREFIX + 'property "message" validation failed: string too long, expected at most 1024, got 1025'
    assert err(registry, {}).startswith(PREFIX + "value should match only one schema")
    assert err(registry, {"allowlist": ["a"], "denylist": ["b"]}).startswith(PREFIX)


def test_schema_bad_regex(registry):
    msg = err(registry, {"denylist": ["ok", "bad("]})
    assert msg.startswith(PREFIX + "failed to compile regex 'bad(': missing ), unterminated subpattern")


def routes(up: Upstream) -> dict:
    def r(rid: str, plugins: dict) -> dict:
        return {"id": rid, "uri": f"/{rid}", "plugins": plugins,
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    rules = ["my-bot1", "(Baiduspider)/(\\d+)\\.(\\d+)"]
    return {"routes": [
        r("deny", {"ua-restriction": {"denylist": rules}}),
        r("allow", {"ua-restriction": {"allowlist": rules}}),
        r("anchored", {"ua-restriction": {"denylist": ["^evil$"]}}),
        r("flags", {"ua-restriction": {"denylist": ["my-bot1", "(?i)^evilbot", "(x)\\1"]}}),
        r("msg", {"ua-restriction": {"denylist": rules, "message": "Do you want to do something bad?"}}),
        r("bypass", {"ua-restriction": {"denylist": rules, "bypass_missing": True}}),
        r("off", {"ua-restriction": {"denylist": rules, "_meta": {"disable": True}}}),
        r("errresp", {"ua-restriction": {"denylist": rules, "_meta": {"error_response": "no bots"}}}),
    ]}


async def get(addr, path: str, headers: list[tuple[str, str]] = ()):
    reader, writer = await asyncio.open_connection(*addr)
    head = f"GET {path} HTTP/1.1\r\nHost: test.local\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    writer.write(head.encode())
    try:
        resp = await read_response(reader)
    finally:
        writer.close()
    assert resp is not None
    return resp


NOT_ALLOWED = (403, b'{"message":"Not allowed"}\n')


async def test_lists(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        ua = "User-Agent"
        # denylist (tests 7-11)
        assert (await get(gw.addr, "/deny", [(ua, "my-bot1")])).status == 403
        r = await get(gw.addr, "/deny", [(ua, "my-bot1"), (ua, "my-bot2")])
        assert (r.status, r.body) == NOT_ALLOWED
        r = await get(gw.addr, "/deny", [(ua, "my-bot2"), (ua, "my-bot1")])
        assert (r.status, r.body) == NOT_ALLOWED
        r = await get(gw.addr, "/deny", [(ua, "Baiduspider/3.0")])
        assert (r.status, r.body) == NOT_ALLOWED
        assert (await get(gw.addr, "/deny", [(ua, "foo/bar")])).status == 200
        # no User-Agent: refused unless bypass_missing (tests 30-33)
        assert (await get(gw.addr, "/deny")).status == 403
        assert (await get(gw.addr, "/bypass")).status == 200
        assert (await get(gw.addr, "/bypass", [(ua, "my-bot1")])).status == 403

        # allowlist (tests 13-17)
        assert (await get(gw.addr, "/allow", [(ua, "my-bot1")])).status == 200
        assert (await get(gw.addr, "/allow", [(ua, "Baiduspider/3.0")])).status == 200
        r = await get(gw.addr, "/allow", [(ua, "foo/bar")])
        assert (r.status, r.body) == NOT_ALLOWED
        assert (await get(gw.addr, "/allow", [(ua, "foo/bar"), (ua, "my-bot1")])).status == 200
        assert (await get(gw.addr, "/allow", [(ua, "my-bot1"), (ua, "foo/bar")])).status == 200
        assert (await get(gw.addr, "/allow")).status == 403

        # an anchored rule sees each field, stripped: a second field cannot hide the first
        assert (await get(gw.addr, "/anchored", [(ua, "  evil ")])).status == 403
        assert (await get(gw.addr, "/anchored", [(ua, "evil"), (ua, "good")])).status == 403
        assert (await get(gw.addr, "/anchored", [(ua, "good"), (ua, "evil")])).status == 403
        assert (await get(gw.addr, "/anchored", [(ua, "evilish")])).status == 200

        # each rule keeps its own inline flags and group numbers
        for value, status in (("EvilBot/1", 403), ("a-xx-b", 403), ("my-bot1", 403), ("x-bot", 200)):
            assert (await get(gw.addr, "/flags", [(ua, value)])).status == status, value

        r = await get(gw.addr, "/msg", [(ua, "Baiduspider/1.0")])
        assert (r.status, r.body) == (403, b'{"message":"Do you want to do something bad?"}\n')
    finally:
        gw.stop()


async def test_meta(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        assert (await get(gw.addr, "/off", [("User-Agent", "my-bot1")])).status == 200
        r = await get(gw.addr, "/errresp", [("User-Agent", "my-bot1")])
        assert (r.status, r.body) == (403, b"no bots")
        assert len(up.requests) == 1
    finally:
        gw.stop()
