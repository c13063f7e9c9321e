"""request-validation: schema, behaviour through the real gateway, ``_meta``
(t/plugin/request-validation.t, request-validation2.t).

Besides APISIX's cases: what the upstream reads is exactly what was validated (duplicate JSON
keys and other parser disagreements are refused, the bytes are forwarded untouched).
"""

from __future__ import annotations

import asyncio

import pytest
from gwtools import Upstream, read_response, start_gateway

from meshgate.errors import ConfigError
from meshgate.plugins.builtin.request_validation import DecodeError, decode_form, decode_json

NAME = "request-validation"
PTR = "/plugins/request-validation"
PREFIX = "failed to check the configuration of plugin request-validation err: "

BODY_SCHEMA = {"type": "object", "required": ["required_payload"],
               "properties": {"required_payload": {"type": "string"}, "boolean_payload": {"type": "boolean"},
                              "timeouts": {"type": "integer", "minimum": 1, "maximum": 254, "default": 3},
                              "req_headers": {"type": "array", "minItems": 1, "items": {"type": "string"}}}}
HEADER_SCHEMA = {"type": "object", "properties": {"test": {"type": "string", "enum": ["a", "b", "c"]}},
                 "required": ["test"]}


def err(registry, conf) -> str:
    with pytest.raises(ConfigError) as ei:
        registry.validate(NAME, conf, pointer=PTR)
    return ei.value.message


def test_schema(registry):
    registry.validate(NAME, {"body_schema": {}}, pointer=PTR)
    registry.validate(NAME, {"header_schema": HEADER_SCHEMA, "body_schema": BODY_SCHEMA, "rejected_code": 505,
                             "rejected_msg": "x", "max_req_body_size": 1}, pointer=PTR)
    assert err(registry, {}).startswith(PREFIX + "object matches none of the required")
    assert err(registry, {"rejected_msg": "x"}).startswith(PREFIX + "object matches none of the required")
    for key in ("body_schema", "header_schema"):
        assert err(registry, {key: {"type": "test"}}) == PREFIX + "invalid JSON type: test"
        assert err(registry, {key: {"type": "object", "properties": {"a": {"type": "string", "enum": "a"}}}}) == \
            PREFIX + "table expected, got string"
        assert err(registry, {key: {"type": "object", "required": "a"}}) == PREFIX + "table expected, got string"
        assert err(registry, {key: "x"}) == \
            PREFIX + f'property "{key}" validation failed: wrong type: expected object, got string'
    assert err(registry, {"body_schema": {}, "rejected_msg": "x" * 257}) == \
        PREFIX + 'property "rejected_msg" validation failed: string too long, expected at most 256, got 257'
    assert err(registry, {"body_schema": {}, "rejected_code": 10000}) == \
        PREFIX + 'property "rejected_code" validation failed: expected 10000 to be at most 599'
    assert err(registry, {"body_schema": {}, "max_req_body_size": 0}) == \
        PREFIX + 'property "max_req_body_size" validation failed: expected 0 to be at least 1'


@pytest.mark.parametrize("raw", [
    b'{"a": 1, "a": 2}', b'{"x": {"a": 1, "a": 1}}', b'[{"k": 1, "k": 1}]', b'{"a": NaN}', b'{"a": Infinity}',
    b'{"a": -Infinity}', b'{"a": "\\ud800"}', b'{"a": "\\udc00x"}', b'\xef\xbb\xbf{}', b'{"a": "\xff"}',
    '{"a": 1}'.encode("utf-16"), b"[" * 100000, b'{"a": 1', b"",
])
def test_decode_json_refuses(raw):
    with pytest.raises(DecodeError):
        decode_json(raw)


def test_decode_json_and_form():
    assert decode_json(b'{"a": "\\ud83d\\ude00", "b": [1, 2.5, null]}') == {"a": "\U0001f600", "b": [1, 2.5, None]}
    assert decode_json(b"12") == 12
    assert decode_form(b"a=1&b=x+y%21&a=2&c&d=&&a=3") == {"a": ["1", "2", "3"], "b": "x y!", "c": True, "d": ""}


def routes(up: Upstream) -> dict:
    def r(rid: str, conf: dict) -> dict:
        return {"id": rid, "uri": f"/{rid}", "plugins": {"request-validation": conf},
                "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}

    echo_schema = {"type": "object", "required": ["required_payload"],
                   "properties": {"required_payload": {"type": "string"}}}
    return {"routes": [
        r("body", {"body_schema": BODY_SCHEMA}),
        r("header", {"header_schema": HEADER_SCHEMA}),
        r("header-msg", {"header_schema": HEADER_SCHEMA,
                         "rejected_msg": "customize reject message for header_schema.required"}),
        r("body-msg", {"body_schema": HEADER_SCHEMA,
                       "rejected_msg": "customize reject message for body_schema.required"}),
        r("code", {"body_schema": HEADER_SCHEMA, "rejected_code": 505}),
        r("echo", {"body_schema": echo_schema}),
        r("dup-ct", {"body_schema": echo_schema, "rejected_code": 400, "rejected_msg": "duplicated content-type"}),
        r("small", {"max_req_body_size": 10, "body_schema": echo_schema}),
        r("small-msg", {"max_req_body_size": 10, "body_schema": echo_schema, "rejected_msg": "too big"}),
        r("format", {"body_schema": {"type": "object", "properties": {"ip": {"type": "string", "format": "ipv4"}}}}),
        r("off", {"body_schema": echo_schema, "_meta": {"disable": True}}),
        r("errresp", {"body_schema": echo_schema, "_meta": {"error_response": {"invalid": True}}}),
    ]}


async def send(addr, method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes = b"",
               chunked: bool = False):
    reader, writer = await asyncio.open_connection(*addr)
    hs = [("Host", "test.local"), *headers]
    if chunked:
        hs.append(("Transfer-Encoding", "chunked"))
        half = len(body) // 2
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            hs.append(("Content-Length", str(len(body))))
        payload = body
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    writer.write(head.encode() + payload)
    try:
        resp = await read_response(reader)
    finally:
        writer.close()
    assert resp is not None
    return resp


JSON = [("Content-Type", "application/json")]


async def test_body_and_headers(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        r = await send(gw.addr, "POST", "/body", JSON, b'{"boolean-payload": true}')
        assert (r.status, r.body) == (400, b'property "required_payload" is required')
        r = await send(gw.addr, "POST", "/body", JSON, b'{"required_payload": "x", "timeouts": 300}')
        assert (r.status, r.body) == (
            400, b'property "timeouts" validation failed: expected 300 to be at most 254')
        r = await send(gw.addr, "POST", "/body", JSON, b'{"required_payload": 1}')
        assert (r.status, r.body) == (
            400, b'property "required_payload" validation failed: wrong type: expected string, got number')
        body = b'{"boolean-payload": true,"required_payload": "hello"}'
        r = await send(gw.addr, "POST", "/body", JSON, body)
        assert r.status == 200
        assert up.requests[-1].body == body      # untouched (no default injected, no re-encoding)

        r = await send(gw.addr, "GET", "/header")
        assert (r.status, r.body) == (400, b'property "test" is required')
        r = await send(gw.addr, "GET", "/header", [("test", "abc")])
        assert (r.status, r.body) == (400, b'property "test" validation failed: matches none of the enum values')
        assert (await send(gw.addr, "GET", "/header", [("Test", "a")])).status == 200

        msg = b"customize reject message for header_schema.required"
        assert (await send(gw.addr, "GET", "/header-msg")).body == msg
        r = await send(gw.addr, "GET", "/header-msg", [("test", "abc")])
        assert (r.status, r.body) == (400, msg)
        assert (await send(gw.addr, "GET", "/header-msg", [("test", "b")])).status == 200

        msg = b"customize reject message for body_schema.required"
        r = await send(gw.addr, "GET", "/body-msg")                     # no body at all
        assert (r.status, r.body) == (400, msg)
        r = await send(gw.addr, "POST", "/body-msg", [], b'{"test":"abc"}')
        assert (r.status, r.body) == (400, msg)
        assert (await send(gw.addr, "POST", "/body-msg", [], b'{"test":"a"}')).status == 200

        assert (await send(gw.addr, "GET", "/code")).status == 505
        assert (await send(gw.addr, "POST", "/code", [], b'{"test":"abc"}')).status == 505
        assert (await send(gw.addr, "POST", "/code", [], b'{"test":"c"}')).status == 200

        # formats are checked (lua-jsonschema checks them too)
        assert (await send(gw.addr, "POST", "/format", JSON, b'{"ip": "1.2.3.4"}')).status == 200
        assert (await send(gw.addr, "POST", "/format", JSON, b'{"ip": "1.2.3"}')).status == 400
    finally:
        gw.stop()


async def test_form_size_and_content_type(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        body = b"a=b&" * 101 + b"required_payload=101-hello"
        for ct in ("application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8"):
            r = await send(gw.addr, "POST", "/echo", [("Content-Type", ct)], body)
            assert r.status == 200, ct
            assert up.requests[-1].body == body
        r = await send(gw.addr, "POST", "/echo", [("Content-Type", "application/x-www-form-urlencoded")],
                       b"required_payload=a&required_payload=b")
        assert (r.status, r.body) == (
            400, b'property "required_payload" validation failed: wrong type: expected string, got array')

        for cts in (("application/x-www-form-urlencoded", "application/json"),
                    ("application/json", "application/x-www-form-urlencoded")):
            r = await send(gw.addr, "POST", "/dup-ct", [("Content-Type", c) for c in cts],
                           b'{"required_payload": "hello"}')
            assert (r.status, r.body) == (400, b"duplicated content-type"), cts

        big = b'{"required_payload": "this body is well over ten bytes"}'
        r = await send(gw.addr, "POST", "/small", JSON, big)
        assert r.status == 400
        assert (await send(gw.addr, "POST", "/small-msg", JSON, big)).body == b"too big"
        assert (await send(gw.addr, "POST", "/small-msg", JSON, big, chunked=True)).body == b"too big"
        assert (await send(gw.addr, "POST", "/small", JSON, b'{"required_payload":""}'[:10])).status == 400

        # chunked bodies are read whole and forwarded as they were validated
        body = b'{"required_payload": "chunked"}'
        r = await send(gw.addr, "POST", "/echo", JSON, body, chunked=True)
        assert r.status == 200
        assert up.requests[-1].body == body
    finally:
        gw.stop()


async def test_upstream_reads_what_was_validated(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        up.requests.clear()
        # duplicate keys: a parser that keeps the first and one that keeps the last disagree
        for body in (b'{"required_payload": "ok", "required_payload": 1}',
                     b'{"required_payload": 1, "required_payload": "ok"}',
                     b'{"required_payload": "ok", "x": {"a": 1, "a": 2}}',
                     b'{"required_payload": "ok", "n": NaN}',
                     b'{"required_payload": "\\ud800"}',
                     b'{"required_payload": "\xff"}',
                     b'\xef\xbb\xbf{"required_payload": "ok"}',
                     b'{"required_payload": "ok"'):
            r = await send(gw.addr, "POST", "/echo", JSON, body)
            assert r.status == 400, body
        r = await send(gw.addr, "POST", "/echo", JSON, b'{"required_payload": 1, "required_payload": "ok"}')
        assert r.body == b'duplicate key "required_payload" in JSON object'
        assert up.requests == []

        body = b'{ "x" : 1 ,\n "required_payload" : "a\\/b\\u00e9" , "z": [1e2, -0] }'
        r = await send(gw.addr, "POST", "/echo", JSON, body)
        assert r.status == 200
        assert up.requests[-1].body == body
        assert up.requests[-1].header("content-length") == str(len(body))
    finally:
        gw.stop()


async def test_meta(tmp_path, up):
    gw = start_gateway(tmp_path, routes(up))
    try:
        assert (await send(gw.addr, "POST", "/off", JSON, b"{}")).status == 200
        r = await send(gw.addr, "POST", "/errresp", JSON, b"{}")
        assert r.status == 400
        assert r.json() == {"invalid": True}
    finally:
        gw.stop()
