"""ip-restriction: schema, behaviour through the real gateway, ``_meta``.

Mirrors t/plugin/ip-restriction.t: the client is always 127.0.0.1, so other addresses come
through real-ip (APISIX's tests use nginx's set_real_ip_from for the same purpose).
"""

from __future__ import annotations

import asyncio

import pytest
from gwtools import Upstream, read_response, start_gateway

from meshgate.errors import ConfigError

NAME = "ip-restriction"
PTR = "/plugins/ip-restriction"


def err(registry, conf) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value


# -- schema ------------------------------------------------------------------------------------

@pytest.mark.parametrize("conf", [
    {"whitelist": ["10.255.254.0/24", "192.168.0.0/16"]},
    {"blacklist": ["127.0.0.1"]},
    {"whitelist": ["::1", "fe80::/32", "2001:DB8:0:23:8:800:200C:417A"]},
    {"whitelist": ["10.0.0.7/24"], "message": "x", "response_code": 404},
])
def test_schema_valid(registry, conf):
    registry.validate(NAME, conf, pointer=PTR)


def test_schema_errors(registry):
    e = err(registry, {})
    assert e.message == ("failed to check the configuration of plugin ip-restriction err: "
                         "value should match only one schema, but matches none")
    assert e.pointer == PTR
    e = err(registry, {"whitelist": ["172.17.40.0/24"], "blacklist": ["10.255.0.0/16"]})
    assert e.message.startswith("failed to check the configuration of plugin ip-restriction err: ")
    e = err(registry, {"blacklist": []})
    assert e.message.endswith('property "blacklist" validation failed: expect array to have at least 1 items')
    e = err(registry, {"whitelist": ["127.0.0.1"], "message": ""})
    assert e.message.endswith('property "message" validation failed: string too short, expected at least 1, got 0')
    e = err(registry, {"whitelist": ["127.0.0.1"], "message": "-1Aa#" * 205})
    assert e.message.endswith("string too long, expected at most 1024, got 1025")
    e = err(registry, {"whitelist": ["127.0.0.1"], "response_code": 409})
    assert e.message.endswith('property "response_code" validation failed: expected 409 to be at most 404')


@pytest.mark.parametrize("bad", ["10.255.256.0/24", "10.255.254.0/38", "::1/129", "::ffgg", "1.1.1.1.1"])
def test_schema_bad_addresses(registry, bad):
    e = err(registry, {"whitelist": ["192.168.0.0/16", bad]})
    assert e.message.startswith("failed to check the configuration of plugin ip-restriction err: ")
    # either the pattern (item 2) or the address parser names it
    assert "failed to validate item 2" in e.message or e.message.endswith(f"invalid ip address: {bad}")


# -- behaviour ---------------------------------------------------------------------------------

def routes(up: Upstream) -> dict:
    def r(rid: str, uri: str, plugins: dict) -> dict:
        return {"id": rid, "uri": uri, "plugins": plugins,
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    xff = {"real-ip": {"source": "http_x_forwarded_for"}}
    return {"routes": [
        r("w", "/white", {"ip-restriction": {"whitelist": ["127.0.0.0/24", "113.74.26.106"]}}),
        r("wx", "/white-xff", {**xff, "ip-restriction": {"whitelist": ["127.0.0.0/24", "113.74.26.106"]}}),
        r("b", "/black", {"ip-restriction": {"blacklist": ["127.0.0.0/24", "113.74.26.106"]}}),
        r("bx", "/black-xff", {**xff, "ip-restriction": {"blacklist": ["127.0.0.0/24", "113.74.26.106"]}}),
        r("b6", "/black6", {**xff, "ip-restriction": {"blacklist": ["::1", "fe80::/32", "10.1.0.0/16"]}}),
        r("msg", "/msg", {**xff, "ip-restriction": {"blacklist": ["127.0.0.0/24"],
                                                    "message": "Do you want to do something bad?"}}),
        r("404", "/code", {**xff, "ip-restriction": {"whitelist": ["127.0.0.0/24"], "response_code": 404}}),
        r("off", "/off", {"ip-restriction": {"blacklist": ["127.0.0.0/24"], "_meta": {"disable": True}}}),
        r("er", "/errresp", {"ip-restriction": {"blacklist": ["127.0.0.0/24"],
                                                "_meta": {"error_response": {"msg": "go away"}}}}),
        r("flt", "/filter", {"ip-restriction": {"blacklist": ["127.0.0.0/24"],
                                                "_meta": {"filter": [["arg_check", "==", "yes"]]}}}),
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


DENIED = b'{"message":"Your IP address is not allowed"}\n'


async def test_whitelist_blacklist(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        r = await get(gw.addr, "/white")
        assert r.status == 200
        r = await get(gw.addr, "/white-xff", [("X-Forwarded-For", "113.74.26.106")])
        assert r.status == 200
        for xff in ("114.114.114.114", "2001:db8::2"):
            r = await get(gw.addr, "/white-xff", [("X-Forwarded-For", xff)])
            assert (r.status, r.body) == (403, DENIED)
            assert r.header("content-type") == "text/plain"   # nginx default_type, as APISIX

        r = await get(gw.addr, "/black")
        assert (r.status, r.body) == (403, DENIED)
        r = await get(gw.addr, "/black-xff", [("X-Forwarded-For", "113.74.26.106")])
        assert (r.status, r.body) == (403, DENIED)
        for xff in ("114.114.114.114", "2001:db8::2"):
            r = await get(gw.addr, "/black-xff", [("X-Forwarded-For", xff)])
            assert r.status == 200

        # IPv6 and CIDRs; an IPv4-mapped IPv6 spelling is the same client
        for xff, status in (("::1", 403), ("fe80::1:1", 403), ("::ffff:10.1.2.3", 403), ("10.1.255.255", 403),
                            ("10.2.0.1", 200), ("2001:db8::1", 200)):
            r = await get(gw.addr, "/black6", [("X-Forwarded-For", xff)])
            assert r.status == status, xff

        r = await get(gw.addr, "/msg")
        assert (r.status, r.body) == (403, b'{"message":"Do you want to do something bad?"}\n')
        r = await get(gw.addr, "/code", [("X-Forwarded-For", "114.114.114.114")])
        assert r.status == 404
        r = await get(gw.addr, "/code")
        assert r.status == 200
        assert len(up.requests) == 7
    finally:
        gw.stop()


async def test_meta(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        r = await get(gw.addr, "/off")
        assert r.status == 200
        r = await get(gw.addr, "/errresp")
        assert r.status == 403
        assert r.json() == {"msg": "go away"}
        r = await get(gw.addr, "/filter")
        assert r.status == 200
        r = await get(gw.addr, "/filter?check=yes")
        assert (r.status, r.body) == (403, DENIED)
    finally:
        gw.stop()
