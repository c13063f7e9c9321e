"""uri-blocker: schema, behaviour through the real gateway, bypass attempts, ``_meta``
(t/plugin/uri-blocker.t)."""

from __future__ import annotations

import asyncio

import pytest
from gwtools import Upstream, read_response, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.uri_blocker import candidates

NAME = "uri-blocker"
PTR = "/plugins/uri-blocker"
PREFIX = "failed to check the configuration of plugin uri-blocker err: "


def err(registry, conf) -> str:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value.message


def test_schema(registry):
    registry.validate(NAME, {"block_rules": ["^a", "^b"]}, pointer=PTR)
    registry.validate(NAME, {"block_rules": ["aa"], "rejected_code": 200, "rejected_msg": "x",
                             "case_insensitive": True}, pointer=PTR)
    assert err(registry, {"block_rules": [".+("]}).startswith(
        PREFIX + "failed to compile regex '.+(': missing ), unterminated subpattern")
    assert err(registry, {"block_rules": ["^a", "^b("]}).startswith(PREFIX + "failed to compile regex '^b('")
    assert err(registry, {}) == PREFIX + 'property "block_rules" is required'
    assert err(registry, {"block_rules": ["^a"], "rejected_msg": ""}) == \
        PREFIX + 'property "rejected_msg" validation failed: string too short, expected at least 1, got 0'
    assert err(registry, {"block_rules": ["^a"], "rejected_msg": True}) == \
        PREFIX + 'property "rejected_msg" validation failed: wrong type: expected string, got boolean'
    assert err(registry, {"block_rules": ["^a"], "rejected_code": 199}) == \
        PREFIX + 'property "rejected_code" validation failed: expected 199 to be at least 200'
    assert err(registry, {"block_rules": ["a", "a"]}) == \
        PREFIX + 'property "block_rules" validation failed: expected unique items but items are not unique'


def test_candidates():
    assert candidates("/a;x/b?q=%41+b", "/a;x/b", "q=%41+b") == [
        "/a;x/b?q=%41+b", "/a;x/b", "/a;x/b?q=%41+b", "/a;x/b?q=A b", "/a/b", "/a/b?q=%41+b", "/a/b?q=A b"]


def routes(up: Upstream) -> dict:
    def r(rid: str, uri: str, conf: dict) -> dict:
        return {"id": rid, "uri": uri, "plugins": {"uri-blocker": conf},
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    return {"routes": [
        r("one", "/one", {"block_rules": ["aa"]}),
        r("multi", "/multi", {"block_rules": ["aa", "bb", "c\\d+"]}),
        r("sql", "/sql", {"block_rules": ["select.+(from|limit)", "(?:(union(.*?)select))"]}),
        r("literal", "/literal", {"block_rules": ["union select"], "rejected_msg": "access is not allowed"}),
        r("msg", "/msg", {"block_rules": ["aa"], "rejected_msg": "access is not allowed"}),
        r("ci", "/ci", {"block_rules": ["AA"], "rejected_msg": "access is not allowed", "case_insensitive": True}),
        r("anchor", "/*", {"block_rules": ["^/internal/", "^/admin$"], "rejected_code": 451}),
        r("anchor-ci", "/ci/*", {"block_rules": ["^/ci/admin"], "case_insensitive": True}),
        r("flags", "/flags/*", {"block_rules": ["^/flags/a$", "(?i)/SECRET", "/(x)\\1"]}),
        r("off", "/off", {"block_rules": ["aa"], "_meta": {"disable": True}}),
        r("errresp", "/errresp", {"block_rules": ["aa"], "_meta": {"error_response": {"blocked": True}}}),
    ]}


async def req(addr, target: str):
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode())
    try:
        resp = await read_response(reader)
    finally:
        writer.close()
    assert resp is not None
    return resp


async def test_rules(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        r = await req(gw.addr, "/one?aa=1")
        assert r.status == 403
        # no rejected_msg: APISIX exits with the bare status (nginx's own error page, which the
        # runtime renders for a body-less answer), never a JSON error_msg
        assert b"error_msg" not in r.body
        assert (await req(gw.addr, "/one?bb=2")).status == 200
        for target, status in (("/multi?x=bb", 403), ("/multi?bb=2", 403), ("/multi?c1=2", 403),
                               ("/multi?cc=2", 200)):
            assert (await req(gw.addr, target)).status == status, target
        assert (await req(gw.addr, "/sql?name=;select%20from%20sys")).status == 403
        assert (await req(gw.addr, "/sql?name=;union%20select%20")).status == 403
        assert (await req(gw.addr, "/sql?cc=2")).status == 200

        r = await req(gw.addr, "/msg?aa=1")
        assert (r.status, r.body) == (403, b'{"error_msg":"access is not allowed"}\n')
        r = await req(gw.addr, "/ci?aa=1")
        assert (r.status, r.body) == (403, b'{"error_msg":"access is not allowed"}\n')
        assert (await req(gw.addr, "/ci?AA=1")).status == 403
        assert (await req(gw.addr, "/ci?bb=1")).status == 200
        # each rule keeps its own inline flags and group numbers
        for target, status in (("/flags/Secret", 403), ("/flags/xx", 403), ("/flags/a", 403), ("/flags/x", 200),
                               ("/flags/A", 200)):
            assert (await req(gw.addr, target)).status == status, target
        assert len(up.requests) == 6
    finally:
        gw.stop()


async def test_no_bypass(tmp_path, up):
    """The same URI spelled differently is blocked the same way (normalised path and query)."""
    gw = start_gateway(tmp_path, routes(up))
    try:
        assert (await req(gw.addr, "/internal/x")).status == 451
        for target in ("/./internal/x?aa=1", "//internal/x", "/a/../internal/x", "/%69nternal/x",
                       "/%2e/internal/x", "/%2E%2E/internal/x", "/x/%2e%2e/internal/x", "/internal;jsessionid=1/x",
                       "/admin", "/admin?x=1", "/admin;x", "//admin", "/adm%69n"):
            r = await req(gw.addr, target)
            assert r.status == 451, target
        # an escaped slash is refused by the gateway itself: nothing gets through either way
        for target in ("/internal%2fx", "/%2finternal/x", "/internal%5cx"):
            r = await req(gw.addr, target)
            assert r.status in (400, 451), target
        assert up.requests == []
        # what is not blocked passes
        for target in ("/internalx", "/admin/", "/administrator", "/x/internal/"):
            assert (await req(gw.addr, target)).status == 200, target

        # query decoding: "+" and %20 are a space to the application
        for target in ("/literal?q=union+select", "/literal?q=union%20select", "/literal?q=union%20%73elect"):
            r = await req(gw.addr, target)
            assert (r.status, r.body) == (403, b'{"error_msg":"access is not allowed"}\n'), target
        assert (await req(gw.addr, "/literal?q=union")).status == 200

        # case tricks with case_insensitive, also through percent-encoding
        for target in ("/ci/admin", "/ci/ADMIN", "/ci/%41dmin", "/CI/../ci/Admin"):
            r = await req(gw.addr, target)
            assert r.status == 403, target
        # without case_insensitive the rule is case-sensitive, as in APISIX
        assert (await req(gw.addr, "/ADMIN")).status == 200
    finally:
        gw.stop()


async def test_meta(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        assert (await req(gw.addr, "/off?aa=1")).status == 200
        r = await req(gw.addr, "/errresp?aa=1")
        assert r.status == 403
        assert r.json() == {"blocked": True}
    finally:
        gw.stop()
