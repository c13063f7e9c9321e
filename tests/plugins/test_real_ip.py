"""real-ip: schema, behaviour through the real gateway, ``_meta`` (t/plugin/real-ip.t).

The effect is observed as a user sees it: ip-restriction (which runs later and reads
``remote_addr``) and the ``X-Real-IP`` the upstream receives.
"""

from __future__ import annotations

import asyncio

import pytest
from gwtools import Upstream, read_response, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.real_ip import parse_addr

NAME = "real-ip"
PTR = "/plugins/real-ip"
PREFIX = "failed to check the configuration of plugin real-ip err: "


def err(registry, conf) -> str:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value.message


def test_schema(registry):
    registry.validate(NAME, {"source": "http_xff"}, pointer=PTR)
    registry.validate(NAME, {"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.1", "10.0.0.0/8",
                                                                                      "::1", "fe80::/10"],
                             "recursive": True}, pointer=PTR)
    assert err(registry, {}) == PREFIX + 'property "source" is required'
    assert err(registry, {"source": ""}) == \
        PREFIX + 'property "source" validation failed: string too short, expected at least 1, got 0'
    assert err(registry, {"source": "x", "recursive": "yes"}) == \
        PREFIX + 'property "recursive" validation failed: wrong type: expected boolean, got string'
    assert err(registry, {"source": "x", "trusted_addresses": []}) == \
        PREFIX + 'property "trusted_addresses" validation failed: expect array to have at least 1 items'
    for bad in ("127.0.0.1/33", "::1/129"):
        msg = err(registry, {"source": "http_xff", "trusted_addresses": [bad]})
        assert msg in (PREFIX + f"invalid ip address: {bad}",
                       PREFIX + 'property "trusted_addresses" validation failed: failed to validate item 1: '
                                'object matches none of the required'), msg


@pytest.mark.parametrize("text, want", [
    ("1.1.1.1", ("1.1.1.1", None)),
    ("1.1.1.1:80", ("1.1.1.1", 80)),
    (" 1.1.1.1 ", ("1.1.1.1", None)),
    ("::2", ("::2", None)),
    ("[::2]", ("::2", None)),
    ("[::2]:80", ("::2", 80)),
    ("2001:DB8::1", ("2001:db8::1", None)),
    ("1.1.1.1.1", None),
    ("1.1.1.1:65536", None),
    ("1.1.1.1:0", None),
    ("1.1.1.1:abc", None),
    ("[::2]x", None),
    ("fe80::1%eth0", None),
    ("localhost", None),
    ("01.1.1.1", None),
    ("", None),
])
def test_parse_addr(text, want):
    assert parse_addr(text) == want


def routes(up: Upstream) -> dict:
    def r(rid: str, plugins: dict) -> dict:
        return {"id": rid, "uri": f"/{rid}", "plugins": plugins,
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    only1 = {"ip-restriction": {"whitelist": ["1.1.1.1"]}}
    return {"routes": [
        r("xff", {"real-ip": {"source": "http_xff"}, **only1}),
        r("v6", {"real-ip": {"source": "http_xff"}, "ip-restriction": {"whitelist": ["::2"]}}),
        r("std6", {"real-ip": {"source": "http_x_forwarded_for"}, "ip-restriction": {"whitelist": ["::2"]}}),
        r("arg", {"real-ip": {"source": "arg_realip"}, **only1}),
        r("untrusted", {"real-ip": {"source": "http_x_forwarded_for", "trusted_addresses": ["192.128.0.0/16"]},
                        **only1}),
        r("trusted", {"real-ip": {"source": "http_x_forwarded_for",
                                  "trusted_addresses": ["192.128.0.0/16", "127.0.0.0/24"]}, **only1}),
        r("recursive", {"real-ip": {"source": "http_x_forwarded_for", "recursive": True,
                                    "trusted_addresses": ["192.128.0.0/16", "127.0.0.0/24"]}, **only1}),
        # remote_port is visible to later plugins: ip-restriction only runs when it is 7090
        r("port", {"real-ip": {"source": "http_xff"},
                   "ip-restriction": {"blacklist": ["1.1.1.1"], "_meta": {"filter": [["remote_port", "==", "7090"]]}}}),
        r("echo", {"real-ip": {"source": "http_xff"}}),
        r("off", {"real-ip": {"source": "http_xff", "_meta": {"disable": True}}, **only1}),
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


async def test_source_variable(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        for value, status in (("1.1.1.1", 200), ("1.1.1.1:80", 200), (None, 403), ("1.1.1.1.1", 403),
                              ("1.1.1.1:65536", 403), ("2.2.2.2", 403)):
            r = await get(gw.addr, "/xff", [("XFF", value)] if value else [])
            assert r.status == status, value
        for value in ("::2", "[::2]:80", "[::2]"):
            assert (await get(gw.addr, "/v6", [("XFF", value)])).status == 200, value
        assert (await get(gw.addr, "/arg?realip=1.1.1.1")).status == 200
        assert (await get(gw.addr, "/arg?realip=1.1.1.2")).status == 403

        # X-Forwarded-For: the last address; several fields are one list
        assert (await get(gw.addr, "/std6", [("X-Forwarded-For", "::1, ::2")])).status == 200
        assert (await get(gw.addr, "/std6", [("X-Forwarded-For", "::1"), ("X-Forwarded-For", "::2")])).status == 200
        assert (await get(gw.addr, "/std6", [("X-Forwarded-For", "::2, ::1")])).status == 403
        assert (await get(gw.addr, "/std6")).status == 403

        # what the upstream and later plugins see
        up.requests.clear()
        r = await get(gw.addr, "/echo", [("XFF", "9.8.7.6:7090")])
        assert r.status == 200
        assert up.requests[-1].header("x-real-ip") == "9.8.7.6"
        assert (await get(gw.addr, "/port", [("XFF", "1.1.1.1:7090")])).status == 403
        assert (await get(gw.addr, "/port", [("XFF", "1.1.1.1:7091")])).status == 200
        assert (await get(gw.addr, "/port", [("XFF", "1.1.1.1")])).status == 200
    finally:
        gw.stop()


async def test_trusted_addresses(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        xff = "X-Forwarded-For"
        # the client (127.0.0.1) is not trusted: its header is never believed
        assert (await get(gw.addr, "/untrusted", [(xff, "1.1.1.1")])).status == 403
        up.requests.clear()
        assert (await get(gw.addr, "/trusted", [(xff, "1.1.1.1")])).status == 200
        assert up.requests[-1].header("x-real-ip") == "1.1.1.1"
        # not recursive: the last element, even a trusted one
        assert (await get(gw.addr, "/trusted", [(xff, "1.1.1.1, 127.0.0.1")])).status == 403
        # recursive: the right-most untrusted address; a forged prefix does not win
        assert (await get(gw.addr, "/recursive", [(xff, "1.1.1.1, 192.128.1.1, 127.0.0.1")])).status == 200
        assert (await get(gw.addr, "/recursive", [(xff, "6.6.6.6, 1.1.1.1, 127.0.0.1")])).status == 200
        assert (await get(gw.addr, "/recursive", [(xff, "1.1.1.1, 6.6.6.6, 127.0.0.1")])).status == 403
        assert (await get(gw.addr, "/recursive", [(xff, "1.1.1.1,192.128.1.1")])).status == 200
        assert (await get(gw.addr, "/recursive", [(xff, "1.1.1.1")])).status == 200
    finally:
        gw.stop()


async def test_meta_disable(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        assert (await get(gw.addr, "/off", [("XFF", "1.1.1.1")])).status == 403
    finally:
        gw.stop()
