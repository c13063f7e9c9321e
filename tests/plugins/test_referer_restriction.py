"""referer-restriction: schema, behaviour through the real gateway, ``_meta``
(t/plugin/referer-restriction.t)."""

from __future__ import annotations

import pytest
from gwtools import Upstream, http, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.referer_restriction import referer_host

NAME = "referer-restriction"
PTR = "/plugins/referer-restriction"
PREFIX = "failed to check the configuration of plugin referer-restriction err: "


def err(registry, conf) -> str:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value.message


def test_schema(registry):
    registry.validate(NAME, {"whitelist": ["*.xx.com", "yy.com", "*", "[::1]:8080"]}, pointer=PTR)
    registry.validate(NAME, {"blacklist": ["a.com"], "bypass_missing": True, "message": "m"}, pointer=PTR)
    for bad in ("x.*", "~y.xn"):
        assert err(registry, {"whitelist": [bad]}) == \
            PREFIX + ('property "whitelist" validation failed: failed to validate item 1: failed to match pattern '
                      f'"^\\*$|^\\*?[0-9a-zA-Z-._\\[\\]:]+$" with "{bad}"')
    assert err(registry, {}).startswith(PREFIX + "value should match only one schema")
    assert err(registry, {"whitelist": ["xx.com"], "blacklist": ["yy.com"]}).startswith(PREFIX)
    assert err(registry, {"whitelist": []}) == \
        PREFIX + 'property "whitelist" validation failed: expect array to have at least 1 items'
    assert err(registry, {"whitelist": ["a.com"], "message": ""}) == \
        PREFIX + 'property "message" validation failed: string too short, expected at least 1, got 0'


@pytest.mark.parametrize("referer, host", [
    ("http://www.xx.com", "www.xx.com"),
    ("https://yy.com/am", "yy.com"),
    ("//yy.com:8080/x?y", "yy.com"),
    ("https://[::1]:80/", "::1"),
    ("HTTP://WWW.XX.COM", "www.xx.com"),
    ("http://WWW.XX.COM/", "www.xx.com"),
    ("www.yy.com", None),
    ("ftp://yy.com", None),
    ("", None),
])
def test_referer_host(referer, host):
    assert referer_host(referer) == host


def routes(up: Upstream) -> dict:
    def r(rid: str, plugins: dict) -> dict:
        return {"id": rid, "uri": f"/{rid}", "plugins": plugins,
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    return {"routes": [
        r("white", {"referer-restriction": {"whitelist": ["*.xx.com", "yy.com"]}}),
        r("bypass", {"referer-restriction": {"whitelist": ["*.xx.com", "yy.com"], "bypass_missing": True}}),
        r("black", {"referer-restriction": {"blacklist": ["*.xx.com", "evil.com"],
                                            "message": "Your referer host is deny"}}),
        r("off", {"referer-restriction": {"whitelist": ["yy.com"], "_meta": {"disable": True}}}),
        r("errresp", {"referer-restriction": {"whitelist": ["yy.com"],
                                              "_meta": {"error_response": {"error": "referer"}}}}),
    ]}


DENIED = (403, b'{"message":"Your referer host is not allowed"}\n')


async def test_lists(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        async def ref(path: str, referer: str | None):
            return await http(gw.addr, "GET", path, headers={"Referer": referer} if referer is not None else {})

        assert (await ref("/white", "http://www.xx.com")).status == 200
        assert (await ref("/white", "https://yy.com/am")).status == 200
        r = await ref("/white", "https://www.yy.com/am")
        assert (r.status, r.body) == DENIED
        r = await ref("/white", "https://xx.com/")        # "*.xx.com" needs a sub-domain
        assert (r.status, r.body) == DENIED
        r = await ref("/white", None)
        assert (r.status, r.body) == DENIED
        r = await ref("/white", "www.yy.com")              # malformed: treated as missing
        assert (r.status, r.body) == DENIED

        assert (await ref("/bypass", None)).status == 200
        assert (await ref("/bypass", "www.yy.com")).status == 200
        assert (await ref("/bypass", "https://zz.com")).status == 403

        r = await ref("/black", "http://www.xx.com")
        assert (r.status, r.body) == (403, b'{"message":"Your referer host is deny"}\n')
        assert (await ref("/black", "https://yy.com")).status == 200
        # host names are case-insensitive: no way around a blacklist entry by upper case
        assert (await ref("/black", "https://EVIL.com/x")).status == 403
        assert (await ref("/black", "https://A.XX.COM")).status == 403
        assert (await ref("/black", "HTTPS://EVIL.COM")).status == 403
        assert (await ref("/black", None)).status == 403   # missing and no bypass_missing
    finally:
        gw.stop()


async def test_meta(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        assert (await http(gw.addr, "GET", "/off")).status == 200
        r = await http(gw.addr, "GET", "/errresp", headers={"Referer": "http://other.com"})
        assert r.status == 403
        assert r.json() == {"error": "referer"}
        assert (await http(gw.addr, "GET", "/errresp", headers={"Referer": "http://yy.com"})).status == 200
    finally:
        gw.stop()
