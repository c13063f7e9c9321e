"""Property test: the native head codec and the Python reference give the same verdicts.

Random and mutated request and response heads (hypothesis) go
* to the two codecs' calls directly: where both take a head, they return the same fields; where
  the reference takes one, the native codec takes it too; a status from the native codec is
  never given to a head the reference takes;
* through a whole gateway worker in process (test_fast_path.Run): the head in one read with the
  native codec against the same head split in two reads (the full path, llhttp with a callback
  per field): the bytes to the client and the fields upstream must be the same.

The examples are derandomised so that CI is repeatable; ``MESHGATE_FUZZ_EXAMPLES=5000`` runs more.
"""

from __future__ import annotations

import os

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fast_path import RESPONSE, VALID, Run, _fields, _split_request, use_codec

from meshgate.proxy import codec as head_codec
from meshgate.http.request import find_field
from meshgate.proxy import headcodec

NATIVE, WHY = head_codec.load_native(ignore_env=True)
pytestmark = pytest.mark.skipif(NATIVE is None, reason=f"native head codec not built: {WHY}")
EXAMPLES = int(os.environ.get("MESHGATE_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"get", b"PRI", b"CONNECT", b"TRACE",
           b"M-SEARCH", b"G\x00T"]
NAMES = [b"Host", b"host", b"HOST", b"User-Agent", b"Accept", b"Cookie", b"X-A", b"Content-Length", b"Transfer-Encoding",
         b"Connection", b"Upgrade", b"Expect", b"X-Forwarded-For", b"X-Real-IP", b"X-Apisix-Foo", b"Te", b"Test",
         b"Hostname", b"Host ", b" Host", b"X(A)", b"", b"X-Userinfo", b"Forwarded", b"Keep-Alive", b"Trailer"]
VALUE_BYTES = st.sampled_from([b"a", b"Z", b"0", b" ", b"\t", b"/", b":", b",", b"\xe9", b"\x00", b"\x7f", b"\r", b"\n",
                               b"close", b"chunked", b"127.0.0.1:9080", b"[::1]", b"..", b"%2e"])
TARGET_BYTES = st.sampled_from([b"/", b"a", b"%2e", b"%2f", b"?", b"#", b"=", b"&", b";", b".", b"..", b"//", b" ",
                                b"\t", b"\x7f", b"\x80", b"\"", b"<", b"~", b"*", b"http://x"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = b"".join(draw(st.lists(TARGET_BYTES, min_size=0, max_size=8)))
    if draw(st.booleans()):
        target = b"/" + target
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ",
                                    b"http/1.1"]))
    sep = draw(st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"]))
    lines = [method + sep + target + b" " + version]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(NAMES))
        colon = draw(st.sampled_from([b":", b": ", b":\t", b" :", b""]))
        value = b"".join(draw(st.lists(VALUE_BYTES, min_size=0, max_size=6)))
        lines.append(name + colon + value)
    if draw(st.integers(0, 3)) == 0:
        lines.insert(draw(st.integers(1, len(lines))), b"Host: " + draw(st.sampled_from([b"a", b"b", b"", b"a b"])))
    eol = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r"]))
    return eol.join(lines) + b"\r\n\r\n"


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A head with a few bytes flipped, inserted or deleted (the CRLFCRLF end kept)."""
    data = bytearray(draw(base)[:-4])
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 2))
        b = draw(st.integers(0, 255))
        if op == 0:
            data[i] = b
        elif op == 1:
            data.insert(i, b)
        else:
            del data[i]
    return bytes(data) + b"\r\n\r\n"


PRINTABLE = st.binary(min_size=1, max_size=12).map(lambda b: bytes(0x21 + x % 94 for x in b))
TOKEN = st.sampled_from(NAMES[:8] + [b"X-" + bytes([c]) for c in b"!#$%&'*+-.^_`|~09azAZ"])


@st.composite
def clean_heads(draw: st.DrawFn) -> bytes:
    """Heads the fast path should take (most of them), with printable targets and values."""
    method = draw(st.sampled_from(METHODS[:7]))
    target = b"/" + draw(PRINTABLE)
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + draw(st.sampled_from([b"a", b"A.example:80", b"[::1]"]))]
    for _ in range(draw(st.integers(0, 5))):
        ows = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
        lines.append(draw(TOKEN) + b":" + ows + draw(PRINTABLE) + ows)
    lines[1:] = draw(st.permutations(lines[1:]))
    return b"\r\n".join(lines) + b"\r\n\r\n"


HEADS = st.one_of(clean_heads(), mutated(clean_heads()), request_heads(), mutated(request_heads()),
                  mutated(st.sampled_from(VALID)), st.binary(max_size=64).map(lambda b: b + b"\r\n\r\n"))


def _header_count(raw: bytes) -> int:
    return raw.count(b"\r\n") - 3


@FUZZ
@given(HEADS)
def test_codec_calls_agree(raw: bytes) -> None:
    assert NATIVE is not None
    py = headcodec.scan_request(raw, b"")
    nat = NATIVE.scan_request(raw, b"")
    if isinstance(py, tuple):
        assert nat == py
    elif isinstance(nat, tuple):
        assert _header_count(raw) == headcodec.MAX_HEADERS   # (the reference stops one field short)
    elif nat != 0:
        # a status of the native codec: llhttp must refuse the head, or the full path refuse its Host
        assert nat in (400,)


ASKED = st.sampled_from(["Host", "host", "apikey", "X-A", "x-a", "Cookie", "user-agent", "X-!", "X-z", "Hos", "",
                         "a:b", "X-A:", "\u00e9", "K\u0130"])


@FUZZ
@given(HEADS, ASKED)
def test_field_lookup_agrees(raw: bytes, name: str) -> None:
    """The native field lookup (Request.header on the fast path) answers as the reference, for
    every field block the codec takes and for raw blocks it never would."""
    assert NATIVE is not None
    got = headcodec.scan_request(raw, b"")
    blocks = [raw[raw.find(b"\r\n"):-4] if b"\r\n" in raw else raw]
    if isinstance(got, tuple):
        blocks.append(got[3])
    for fields in blocks:
        assert NATIVE.find_field(fields, name) == find_field(fields, name), (fields, name)


def _verdict(run: Run) -> tuple[bytes, object, bool]:
    return run.to_client, _fields(run.to_upstream) if run.to_upstream else None, run.client_t.closed


async def _through_worker(raw: bytes) -> None:
    assert NATIVE is not None
    whole, split = Run(), Run()
    use_codec(whole.server, NATIVE)
    use_codec(split.server, head_codec.PYTHON)
    whole.send([raw])
    split.send(_split_request(raw))
    if whole.to_upstream or split.to_upstream:
        whole.respond([RESPONSE])
        split.respond([RESPONSE[:1], RESPONSE[1:]])
    assert _verdict(whole) == _verdict(split), raw


@FUZZ
@given(HEADS)
async def test_worker_answers_alike_with_either_codec(raw: bytes) -> None:
    await _through_worker(raw)


def _llhttp_ok(data: bytes) -> bool:
    try:
        httptools.HttpResponseParser(_NoCallbacks()).feed_data(data)
    except httptools.HttpParserError:
        return False
    return True


class _NoCallbacks:
    pass


RESP_NAMES = [b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection", b"Keep-Alive", b"Server",
              b"Date", b"X-Hop", b"X-Kept", b"Te", b"Upgrade", b"Set-Cookie", b"X(", b"", b"Content-Type"]
RESP_VALUES = st.sampled_from([b"2", b"0", b"02", b"-1", b" 2 ", b"close", b"keep-alive", b"X-Hop", b"x-hop, close",
                               b"chunked", b"a", b"\xe9", b"\x01", b"\t", b""])


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200", b"201", b"204", b"304", b"404", b"500", b"100", b"999", b"20", b"2x0"]))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" \x00odd", b" caf\xe9"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1 "]))
    lines = [version + b" " + status + reason]
    for _ in range(draw(st.integers(0, 5))):
        lines.append(draw(st.sampled_from(RESP_NAMES)) + draw(st.sampled_from([b": ", b":", b" :"]))
                     + draw(RESP_VALUES))
    body = draw(st.sampled_from([b"", b"ok", b"okk", b"x"]))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@st.composite
def clean_responses(draw: st.DrawFn) -> bytes:
    """Responses the fast path should take (most of them): one Content-Length that fits the body."""
    body = draw(st.binary(max_size=8))
    lines = [b"HTTP/1.1 " + draw(st.sampled_from([b"200 OK", b"201 Created", b"404 Not Found", b"500", b"302 Found"])),
             b"Content-Length: " + str(len(body)).encode()]
    for _ in range(draw(st.integers(0, 5))):
        lines.append(draw(st.sampled_from(RESP_NAMES[3:13] + [b"X-" + bytes([c]) for c in b"abc"])) + b": "
                     + draw(st.sampled_from([b"close", b"keep-alive", b"X-Hop, keep-alive", b"x-a", b"X-b , close",
                                             b"v", b"caf\xe9"])))
    lines[1:] = draw(st.permutations(lines[1:]))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


RESPS = st.one_of(clean_responses(), mutated(clean_responses()), responses(), mutated(responses()))


@FUZZ
@given(RESPS)
def test_response_calls_agree(data: bytes) -> None:
    assert NATIVE is not None
    py = headcodec.scan_response(data)
    nat = NATIVE.scan_response(data)
    if isinstance(py, tuple):
        assert nat == py or (nat == 0 and data.lower().count(b"\r\nconnection:") > 1)
    else:
        assert nat == 0
    end = data.find(b"\r\n\r\n")
    if end >= 0 and _llhttp_ok(data[:end + 4]):
        head = data[:end + 2]
        got = NATIVE.resp_fields(head)
        assert got is None or got == headcodec.resp_fields(head)
    for pre, post, below, absent in ((b"Date: d\r\nServer: s\r\n", b"", 500, b""),
                                     (b"", b"Connection: close\r\n", 300, b"x-"), (b"", b"", 600, b"x-b")):
        want = headcodec.relay_response(data, pre, post, below, absent)
        got = NATIVE.relay_response(data, pre, post, below, absent)
        assert got == want or (got == 0 and data.lower().count(b"\r\nconnection:") > 1)


@FUZZ
@given(RESPS)
async def test_response_relayed_alike_with_either_codec(data: bytes) -> None:
    assert NATIVE is not None
    whole, split = Run(), Run()
    use_codec(whole.server, NATIVE)
    use_codec(split.server, head_codec.PYTHON)
    for r in (whole, split):
        r.send([VALID[0]])
    whole.respond([data])
    split.respond([data[:1], data[1:]])
    assert whole.to_client == split.to_client, data
    assert whole.up_t.closed == split.up_t.closed
