"""apisix.trusted_addresses as APISIX 3.x defines it (cases of its t/core/trusted-addresses.t):
which forwarding headers reach routing, plugins and the upstream, from trusted and other clients."""

from __future__ import annotations

from typing import Any

import pytest
from gwtools import Upstream, http, start_gateway

@pytest.fixture
async def up():
    u = await Upstream().start()
    yield u
    await u.close()


FWD = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "example.com",
       "X-Forwarded-Port": "8443"}


def doc(up: Upstream, **route: Any) -> dict[str, Any]:
    return {"routes": [{"id": "1", "uri": "/old_uri", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
                        **route}]}


def seen(up: Upstream) -> dict[str, str | None]:
    got = up.requests[-1]
    return {h: got.header(h) for h in ("x-forwarded-for", "x-forwarded-host", "x-forwarded-port",
                                       "x-forwarded-proto", "x-real-ip", "forwarded")}


async def test_without_trusted_addresses_xff_is_extended_others_overridden(tmp_path, up):
    gw = start_gateway(tmp_path, doc(up))
    try:
        await http(gw.addr, "GET", "/old_uri", host="localhost", headers=FWD)
        assert seen(up) == {"x-forwarded-for": "1.2.3.4, 127.0.0.1", "x-forwarded-host": "localhost",
                            "x-forwarded-port": str(gw.port), "x-forwarded-proto": "http", "x-real-ip": "127.0.0.1",
                            "forwarded": None}
    finally:
        gw.stop()


@pytest.mark.parametrize("trusted", [["127.0.0.1"], ["127.0.0.0/24", "1.1.1.0/24"], ["0.0.0.0/0"]])
async def test_trusted_client_keeps_its_forwarding_headers(tmp_path, up, trusted):
    gw = start_gateway(tmp_path, doc(up), node={"apisix": {"trusted_addresses": trusted}})
    try:
        await http(gw.addr, "GET", "/old_uri", host="localhost",
                   headers={**FWD, "Forwarded": "for=1.2.3.4;host=evil.com;proto=https"})
        assert seen(up) == {"x-forwarded-for": "1.2.3.4, 127.0.0.1", "x-forwarded-host": "example.com",
                            "x-forwarded-port": "8443", "x-forwarded-proto": "https", "x-real-ip": "127.0.0.1",
                            "forwarded": "for=1.2.3.4;host=evil.com;proto=https"}
        # a trusted client that sent none (or an empty one) gets the observed values
        await http(gw.addr, "GET", "/old_uri", host="Example.COM:8443", headers={"X-Forwarded-Proto": ""})
        assert seen(up) == {"x-forwarded-for": "127.0.0.1", "x-forwarded-host": "Example.COM:8443",
                            "x-forwarded-port": "8443", "x-forwarded-proto": "http", "x-real-ip": "127.0.0.1",
                            "forwarded": None}
    finally:
        gw.stop()


async def test_untrusted_client_has_every_forwarding_header_dropped(tmp_path, up):
    gw = start_gateway(tmp_path, {
        "routes": [
            {"id": "1", "uri": "/old_uri", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
            # routing must not see the dropped chain either (TEST 18)
            {"id": "2", "uri": "/match", "vars": [["http_x_forwarded_for", "==", "9.9.9.9"]],
             "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}},
        ]}, node={"apisix": {"trusted_addresses": ["1.0.0.1", "10.0.0.0/8"]}})
    try:
        await http(gw.addr, "GET", "/old_uri", host="localhost",
                   headers={**FWD, "X-Forwarded-For": "9.9.9.9", "Forwarded": "for=1.2.3.4"})
        assert seen(up) == {"x-forwarded-for": "127.0.0.1", "x-forwarded-host": "localhost",
                            "x-forwarded-port": str(gw.port), "x-forwarded-proto": "http", "x-real-ip": "127.0.0.1",
                            "forwarded": None}
        r = await http(gw.addr, "GET", "/match", headers={"X-Forwarded-For": "9.9.9.9"})
        assert r.status == 404
    finally:
        gw.stop()


async def test_proxy_rewrite_may_set_forwarding_headers(tmp_path, up):
    gw = start_gateway(tmp_path, doc(up, plugins={"proxy-rewrite": {"headers": {"X-Forwarded-Proto": "https"}}}),
                       node={"apisix": {"trusted_addresses": ["127.0.0.1"]}})
    try:
        await http(gw.addr, "GET", "/old_uri", host="localhost", headers={"X-Forwarded-Proto": "grpc"})
        assert seen(up)["x-forwarded-proto"] == "https"
    finally:
        gw.stop()


async def test_original_xff_stays_readable_by_plugins(tmp_path, up):
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "xff_spy.py").write_text(
        "NAME = 'xff-spy'\nPRIORITY = 0\n"
        "def access(conf, ctx):\n"
        "    ctx.set_req_header('X-Orig', ctx.var('original_x_forwarded_for') or '-')\n"
        "    ctx.set_req_header('X-Seen', ctx.req_header('x-forwarded-for') or '-')\n")
    gw = start_gateway(tmp_path / "gw", doc(up, plugins={"xff-spy": {}}),
                       node={"apisix": {"trusted_addresses": ["10.0.0.0/8"], "plugin_dirs": [str(plugin)]}})
    try:
        await http(gw.addr, "GET", "/old_uri", headers={"X-Forwarded-For": "9.9.9.9, 8.8.8.8"})
        got = up.requests[-1]
        assert got.header("x-orig") == "9.9.9.9, 8.8.8.8" and got.header("x-seen") == "-"
        assert got.header("x-forwarded-for") == "127.0.0.1"
    finally:
        gw.stop()


@pytest.mark.parametrize("header,value,expect", [
    ("CF-Connecting-IP", "203.0.113.7", "203.0.113.7"),
    ("X-Forwarded-For", "198.51.100.1, 203.0.113.9", "203.0.113.9"),   # nginx realip: the last address
    ("X-Real-IP", "203.0.113.5", "203.0.113.5"),
])
async def test_real_ip_header_is_honoured(tmp_path, up, header, value, expect):
    gw = start_gateway(tmp_path, doc(up, remote_addrs=[expect]),
                       http={"real_ip_header": header, "real_ip_from": ["127.0.0.1"]})
    try:
        r = await http(gw.addr, "GET", "/old_uri", headers={header: value})
        assert r.status == 200   # routing saw the real address (remote_addrs)
        assert up.requests[-1].header("x-real-ip") == expect
        r = await http(gw.addr, "GET", "/old_uri")
        assert r.status == 404   # without the header: the peer, which the route does not allow
    finally:
        gw.stop()
