"""cors: schema, behaviour through the real gateway, plugin metadata, ``_meta``
(t/plugin/cors.t, cors2.t, cors3.t, cors4.t)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from gwtools import Upstream, UpstreamRequest, read_response, start_gateway

from meshgate.errors import ConfigError

NAME = "cors"
PTR = "/plugins/cors"
PREFIX = "failed to check the configuration of plugin cors err: "
CRED = PREFIX + "you can not set '*' for other option when 'allow_credential' is true"
ALL = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"
CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-methods", "access-control-allow-headers",
                "access-control-expose-headers", "access-control-max-age", "access-control-allow-credentials",
                "timing-allow-origin", "vary")


def err(registry, conf, **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR, **kw)
    return ei.value.message


# -- schema ------------------------------------------------------------------------------------

def test_schema(registry):
    registry.validate(NAME, {}, pointer=PTR)
    registry.validate(NAME, {"allow_origins": "http://test.com", "allow_methods": "", "allow_headers": "",
                             "expose_headers": "", "max_age": 600, "allow_credential": True}, pointer=PTR)
    assert err(registry, {"max_age": "600"}) == \
        PREFIX + 'property "max_age" validation failed: wrong type: expected integer, got string'
    # allow_credential with "*" anywhere, including the defaults (t/plugin/cors.t tests 24-27)
    assert err(registry, {"allow_credential": True}) == CRED
    base = {"allow_origins": "http://a.com", "allow_methods": "GET", "allow_headers": "x", "allow_credential": True}
    registry.validate(NAME, base, pointer=PTR)
    for key in ("allow_origins", "allow_methods", "allow_headers", "expose_headers", "timing_allow_origins"):
        assert err(registry, {**base, key: "*"}) == CRED, key
    assert err(registry, {"allow_origins_by_regex": ["ok", "bad("]}).startswith(
        PREFIX + "failed to compile regex 'bad('")
    assert err(registry, {"allow_origins_by_regex": []}) == \
        PREFIX + 'property "allow_origins_by_regex" validation failed: expect array to have at least 1 items'


GOOD_ORIGINS = ["*", "**", "null", "http://y.com.uk", "https://x.com", "https://x.com,http://y.com.uk",
                "https://x.com,http://y.com.uk,http://c.tv", "https://x.com,http://y.com.uk:12000,http://c.tv"]
BAD_ORIGINS = ["", "*a", "*,http://y.com", "nulll", "http//y.com.uk", "x.com", "https://x.com,y.com.uk",
               "https://x.com,*,https://y.com.uk", "https://x.com,http://y.com.uk,http:c.tv"]


@pytest.mark.parametrize("value", GOOD_ORIGINS)
def test_schema_good_origins(registry, value):
    registry.validate(NAME, {"allow_origins": value}, pointer=PTR)
    registry.validate(NAME, {"timing_allow_origins": value}, pointer=PTR)
    registry.validate(NAME, {"allow_origins": {"k": value}}, pointer=PTR, schema_type="metadata")


@pytest.mark.parametrize("value", BAD_ORIGINS)
def test_schema_bad_origins(registry, value):
    assert err(registry, {"allow_origins": value}).startswith(
        PREFIX + 'property "allow_origins" validation failed: failed to match pattern')
    assert err(registry, {"allow_origins": {"key": value}}, schema_type="metadata").startswith(PREFIX)


# -- behaviour ---------------------------------------------------------------------------------

def headers_upstream(req: UpstreamRequest):
    """Like APISIX's test server /headers: every query argument becomes a response header."""
    hdrs = dict(parse_qsl(urlsplit(req.path).query))
    body = json.dumps({"path": req.path}).encode()
    return 200, {"Content-Type": "application/json", **hdrs}, body


@pytest.fixture
async def hup():
    u = await Upstream(handler=headers_upstream).start()
    yield u
    await u.close()


def routes(up: Upstream) -> dict:
    def r(rid: str, conf: dict, **extra) -> dict:
        return {"id": rid, "uri": f"/{rid}", "plugins": {"cors": conf, **extra},
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    specified = {"allow_origins": "http://sub.domain.com,http://sub2.domain.com", "allow_methods": "GET,POST",
                 "allow_headers": "headr1,headr2", "expose_headers": "ex-headr1,ex-headr2", "max_age": 50,
                 "allow_credential": True}
    force = {"allow_origins": "**", "allow_methods": "**", "allow_headers": "**", "expose_headers": "*"}
    return {
        "routes": [
            r("default", {}),
            r("specified", specified),
            r("force", force),
            r("cred", {"allow_origins": "**", "allow_methods": "**", "allow_headers": "request-h",
                       "expose_headers": "expose-h", "allow_credential": True}),
            r("denied", {"allow_origins": "**", "allow_methods": "**", "allow_headers": "*", "expose_headers": "*"},
              **{"ip-restriction": {"blacklist": ["127.0.0.1"]}}),
            r("regex", {**specified, "allow_origins_by_regex": [".*\\.test.com$", ".*\\.example.org$"]}),
            r("regex-default", {"allow_origins": "*", "allow_methods": "GET,POST", "allow_headers": "request-h",
                                "expose_headers": "expose-h", "max_age": 10,
                                "allow_origins_by_regex": [".*\\.domain.com$"]}),
            r("meta", {"allow_origins": "https://test.com", "allow_origins_by_metadata": ["key_1", "key_2"]}),
            r("meta-star", {"allow_origins": "https://test.com", "allow_origins_by_metadata": ["key_3"]}),
            r("meta-default", {"allow_origins": "*", "allow_origins_by_metadata": ["key_1"]}),
            r("timing", {"allow_origins": "http://one.domain.com",
                         "timing_allow_origins": "http://another.domain.com"}),
            r("timing-any", {"timing_allow_origins": "http://sub.domain.com"}),
            r("timing-regex", {"allow_origins_by_regex": ["http://.*?\\.domain\\.com"],
                               "timing_allow_origins_by_regex": ["http://test.*?\\.domain\\.com"],
                               "timing_allow_origins": "http://nonexistent.newdomain.com"}),
            r("off", {"_meta": {"disable": True}}),
            r("filter", {"_meta": {"filter": [["arg_cors", "==", "1"]]}}),
        ],
        "plugin_metadata": [{"id": "cors", "allow_origins": {
            "key_1": "https://domain.com", "key_2": "https://sub.domain.com,https://sub2.domain.com", "key_3": "*"},
            "inactive_timeout": 1}],
    }


async def send(addr, method: str, path: str, headers: list[tuple[str, str]] = ()):
    reader, writer = await asyncio.open_connection(*addr)
    head = f"{method} {path} HTTP/1.1\r\nHost: test.local\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + \
        "\r\n"
    writer.write(head.encode())
    try:
        resp = await read_response(reader, head=method == "HEAD")
    finally:
        writer.close()
    assert resp is not None
    return resp


def cors(r) -> dict[str, str]:
    """The CORS headers of a response (repeated ones joined as a client reads them)."""
    out: dict[str, str] = {}
    for k, v in r.headers:
        k = k.lower()
        if k in CORS_HEADERS:
            out[k] = out[k] + ", " + v if k in out else v
    return out


def origin(o: str) -> list[tuple[str, str]]:
    return [("Origin", o)]


async def test_defaults_and_lists(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup))
    try:
        r = await send(gw.addr, "GET", "/default")
        assert r.status == 200
        assert cors(r) == {"access-control-allow-origin": "*", "access-control-allow-methods": "*",
                           "access-control-allow-headers": "*", "access-control-max-age": "5"}

        r = await send(gw.addr, "GET", "/specified?Vary=Via", origin("http://sub2.domain.com"))
        assert cors(r) == {"access-control-allow-origin": "http://sub2.domain.com", "vary": "Via, Origin",
                           "access-control-allow-methods": "GET,POST", "access-control-allow-headers": "headr1,headr2",
                           "access-control-expose-headers": "ex-headr1,ex-headr2", "access-control-max-age": "50",
                           "access-control-allow-credentials": "true"}
        r = await send(gw.addr, "GET", "/specified", origin("http://sub3.domain.com"))
        assert r.status == 200
        assert cors(r) == {"vary": "Origin"}
        r = await send(gw.addr, "GET", "/specified")
        assert cors(r) == {"vary": "Origin"}

        r = await send(gw.addr, "GET", "/force", [("Origin", "https://sub.domain.com"),
                                                  ("Access-Control-Request-Headers", "req-header1,req-header2")])
        assert cors(r) == {"access-control-allow-origin": "https://sub.domain.com", "vary": "Origin",
                           "access-control-allow-methods": ALL,
                           "access-control-allow-headers": "req-header1,req-header2",
                           "access-control-expose-headers": "*", "access-control-max-age": "5"}
        r = await send(gw.addr, "GET", "/force")
        assert cors(r) == {"access-control-allow-origin": "*", "vary": "Origin", "access-control-allow-methods": ALL,
                           "access-control-expose-headers": "*", "access-control-max-age": "5"}
    finally:
        gw.stop()


async def test_preflight_local_answers_and_overwrite(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup))
    try:
        # OPTIONS is answered by the gateway: 200, empty body, the CORS headers
        r = await send(gw.addr, "OPTIONS", "/specified", [("Origin", "http://sub.domain.com"),
                                                          ("Access-Control-Request-Method", "POST")])
        assert (r.status, r.body) == (200, b"")
        assert cors(r)["access-control-allow-origin"] == "http://sub.domain.com"
        assert cors(r)["access-control-allow-methods"] == "GET,POST"
        assert hup.requests == []

        # a plugin's refusal still carries the CORS headers (t/plugin/cors.t test 16)
        r = await send(gw.addr, "GET", "/denied", origin("https://sub.domain.com"))
        assert r.status == 403
        assert r.body == b'{"message":"Your IP address is not allowed"}\n'
        assert cors(r) == {"access-control-allow-origin": "https://sub.domain.com", "vary": "Origin",
                           "access-control-allow-methods": ALL, "access-control-allow-headers": "*",
                           "access-control-expose-headers": "*", "access-control-max-age": "5"}

        # the upstream's CORS headers are replaced (tests 18-23)
        q = ("/cred?Access-Control-Allow-Origin=https://evil.com&Access-Control-Allow-Methods=methods"
             "&Access-Control-Allow-Headers=a-headers&Access-Control-Expose-Headers=e-headers"
             "&Access-Control-Max-Age=10&Access-Control-Allow-Credentials=false")
        r = await send(gw.addr, "GET", q, origin("https://sub.domain.com"))
        assert cors(r) == {"access-control-allow-origin": "https://sub.domain.com", "vary": "Origin",
                           "access-control-allow-methods": ALL, "access-control-allow-headers": "request-h",
                           "access-control-expose-headers": "expose-h", "access-control-max-age": "5",
                           "access-control-allow-credentials": "true"}
    finally:
        gw.stop()


async def test_regex(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup))
    try:
        for o in ("http://a.test.com", "http://foo.example.org"):
            r = await send(gw.addr, "GET", "/regex", origin(o))
            assert cors(r)["access-control-allow-origin"] == o
            assert cors(r)["access-control-allow-credentials"] == "true"
        for o in ("http://a.test2.com", "http://foo.example.com", "http://sub.domain.com"):
            # allow_origins_by_regex replaces the allow_origins list
            r = await send(gw.addr, "GET", "/regex", origin(o))
            assert cors(r) == {"vary": "Origin"}, o
        assert cors(await send(gw.addr, "GET", "/regex")) == {"vary": "Origin"}

        # allow_origins "*" with a regex: no Vary from the plugin (cors2.t)
        r = await send(gw.addr, "GET", "/regex-default?Vary=Via", origin("http://sub.domain.com"))
        assert cors(r) == {"access-control-allow-origin": "http://sub.domain.com", "vary": "Via",
                           "access-control-allow-methods": "GET,POST", "access-control-allow-headers": "request-h",
                           "access-control-expose-headers": "expose-h", "access-control-max-age": "10"}
        assert cors(await send(gw.addr, "GET", "/regex-default", origin("http://sub.test.com"))) == {}
        assert cors(await send(gw.addr, "GET", "/regex-default")) == {}
    finally:
        gw.stop()


async def test_metadata(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup))
    try:
        def allowed(o: str) -> dict[str, str]:
            return {"access-control-allow-origin": o, "vary": "Origin", "access-control-allow-methods": "*",
                    "access-control-allow-headers": "*", "access-control-max-age": "5"}

        assert cors(await send(gw.addr, "GET", "/meta", origin("http://foo.example.org"))) == {"vary": "Origin"}
        for o in ("https://test.com", "https://domain.com", "https://sub.domain.com", "https://sub2.domain.com"):
            assert cors(await send(gw.addr, "GET", "/meta", origin(o))) == allowed(o), o
        # "*" in the metadata: the Origin is echoed
        r = await send(gw.addr, "GET", "/meta-star", origin("http://foo.example.org"))
        assert cors(r) == allowed("http://foo.example.org")
        # allow_origins "*" is not consulted besides the metadata (cors3.t tests 13-15)
        assert cors(await send(gw.addr, "GET", "/meta-default", origin("http://foo.example.org"))) == {}
        r = await send(gw.addr, "GET", "/meta-default", origin("https://domain.com"))
        assert cors(r) == {k: v for k, v in allowed("https://domain.com").items() if k != "vary"}
    finally:
        gw.stop()


async def test_timing(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup))
    try:
        r = await send(gw.addr, "GET", "/timing", origin("http://one.domain.com"))
        assert cors(r)["access-control-allow-origin"] == "http://one.domain.com"
        assert "timing-allow-origin" not in cors(r)
        r = await send(gw.addr, "GET", "/timing", origin("http://another.domain.com"))
        assert cors(r) == {"vary": "Origin", "timing-allow-origin": "http://another.domain.com"}
        assert cors(await send(gw.addr, "GET", "/timing", origin("http://no.domain.com"))) == {"vary": "Origin"}

        r = await send(gw.addr, "GET", "/timing-any", origin("http://sub.domain.com"))
        assert cors(r)["access-control-allow-origin"] == "*"
        assert cors(r)["timing-allow-origin"] == "http://sub.domain.com"
        r = await send(gw.addr, "GET", "/timing-any", origin("http://other.domain.com"))
        assert "timing-allow-origin" not in cors(r)

        # regex over the list, for both headers (cors4.t test 25)
        r = await send(gw.addr, "GET", "/timing-regex", origin("http://testurl.domain.com"))
        assert cors(r)["access-control-allow-origin"] == "http://testurl.domain.com"
        assert cors(r)["timing-allow-origin"] == "http://testurl.domain.com"
        r = await send(gw.addr, "GET", "/timing-regex", origin("http://other.domain.com"))
        assert cors(r)["access-control-allow-origin"] == "http://other.domain.com"
        assert "timing-allow-origin" not in cors(r)
    finally:
        gw.stop()


async def test_meta(tmp_path, hup):
    gw = start_gateway(tmp_path, routes(hup))
    try:
        r = await send(gw.addr, "GET", "/off", origin("http://a.com"))
        assert r.status == 200 and cors(r) == {}
        r = await send(gw.addr, "OPTIONS", "/off")
        assert r.status == 200 and len(hup.requests) == 2    # no preflight answer: proxied
        assert cors(await send(gw.addr, "GET", "/filter", origin("http://a.com"))) == {}
        r = await send(gw.addr, "GET", "/filter?cors=1", origin("http://a.com"))
        assert cors(r)["access-control-allow-origin"] == "*"
    finally:
        gw.stop()
