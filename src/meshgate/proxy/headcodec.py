"""The HTTP/1 head codec in Python: the reference for the native one (native/src/lib.rs).

Both have this interface; ``proxy/codec.py`` picks one at import.

``scan_request(data, extra)``
    ``data`` is a read that may be exactly one complete request head and nothing else.  Returns
    ``(method, target, host, fields, fwd_fields)`` when the fast path of ``http1.py`` may take it
    (``fields``: every field line as received, each as "\\r\\nName: value"; ``fwd_fields``: the
    same without Host), else an int: ``0`` when the full path (llhttp with a callback per field)
    must decide, or the HTTP status the full path would answer (the native codec answers the
    grammar errors it finds itself; this reference always leaves them to the full path).
    ``extra``: the lower-cased name of a configured ``real_ip_header`` besides X-Real-IP, or
    empty.  Requests naming framing, hop-by-hop, identity or forwarding fields (``SKIP_NAMES``,
    ``SKIP_PREFIXES``), or ``extra``, are left to the full path.

``scan_response(data)``
    ``data`` may be exactly one complete HTTP/1.1 response with one ``Content-Length``.  Returns
    ``(status, content_length, keep_alive, head, status_line, fields)`` or ``0``.

``relay_response(data, pre, post, below, absent)``
    For a ``data`` that ``scan_response`` accepts, whose status line is the canonical
    ``HTTP/1.1 NNN reason``, whose status is below ``below`` and none of whose field names
    starts with ``absent`` (lower case; empty: no such check): ``(status, keep_alive,
    content_length, out)``,
    ``out`` being the whole response as the client gets it when no plugin touches it (the
    status line, the relayed fields, ``pre``, ``Content-Length``, ``post``, the blank line and
    the body: what ``http1.ClientConnection.response_head`` and the body relay would send);
    else ``0``.

``resp_fields(head)``
    The upstream's head (status line and field lines, each ending CRLF) as ``(status_line,
    fields)``: the fields to relay, hop-by-hop and framing ones removed (also those the
    Connection field names).  The native one may return None (then this one is used).

Heads are validated by llhttp here (a parser without callbacks), by the same grammar in Rust
there; tests/integration/test_fast_path.py and tests/integration/test_codec_fuzz.py hold the two
to the same answers.
"""

from __future__ import annotations

import re
from typing import Any

import httptools


__all__ = ["LITE_MAX", "RESP_DROP", "SKIP_NAMES", "SKIP_PREFIXES", "relay_response", "relayed_as_sent", "resp_fields",
           "scan_request", "scan_response"]

LITE_MAX = 4096
MAX_HEADERS = 100
MAX_RESP_HEAD = 64 * 1024
SKIP_NAMES = (b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"connection", b"keep-alive",
              b"proxy-connection", b"te", b"trailer", b"http2-settings", b"proxy-authenticate", b"x-real-ip",
              b"forwarded", b"x-userinfo", b"x-id-token", b"x-access-token", b"x-credential-identifier")
SKIP_PREFIXES = (b"x-forwarded-", b"x-envoy-", b"x-apisix-", b"x-consumer-")
RESP_DROP = (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
             b"proxy-authenticate", b"http2-settings", b"server", b"date", b"content-length")

# each field starts with CRLF in the raw head, so a search cannot hit a value (on the lower-cased head)
_SKIP = (rb"\r\n(?:(?:" + b"|".join(re.escape(n) for n in SKIP_NAMES) + rb")[ \t]*:|"
         + b"|".join(re.escape(p) for p in SKIP_PREFIXES))
_SKIP_RE: dict[bytes, Any] = {}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_RESP_DROP_RE = re.compile(rb"\r\n(?:" + b"|".join(re.escape(n) for n in RESP_DROP) + rb")[ \t]*:[^\r]*", re.I)
_PLAIN_CONN = frozenset({b"keep-alive", b"close"})   # Connection values that name no other field
_req_parser: Any = None      # callback-less llhttp parsers (replaced when one refuses a read)
_resp_parser: Any = None


class _NoCallbacks:
    """The protocol of a validating-only llhttp parser: no callbacks at all."""


NO_CALLBACKS = _NoCallbacks()


def validated(parser: Any, make: Any, data: bytes) -> Any:
    """``parser`` (a new callback-less one when None) once llhttp accepted ``data``; None when it
    refused them (the parser is then unusable and dropped)."""
    if parser is None:
        parser = make(NO_CALLBACKS)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    return parser


def skip_pattern(extra: bytes) -> Any:
    """The compiled skip pattern for ``extra`` (see the module doc)."""
    got = _SKIP_RE.get(extra)
    if got is None:
        got = _SKIP_RE[extra] = re.compile(_SKIP + (rb"|" + re.escape(extra) + rb"[ \t]*:)" if extra else b")"))
    return got


def scan_request(data: bytes, extra: bytes) -> Any:
    global _req_parser
    n = len(data)
    if n > LITE_MAX or data[-4:] != b"\r\n\r\n" or data.find(b"\r\n\r\n") != n - 4:
        return 0
    ld = data.lower()
    if skip_pattern(extra).search(ld) is not None:
        return 0
    hs = ld.find(b"\r\nhost:")
    if hs < 0 or ld.find(b"\r\nhost:", hs + 7) >= 0:
        return 0
    he = data.find(b"\r\n", hs + 7)
    sp = data.find(b" ")
    eol = data.find(b"\r\n")
    if b"  " in data[:eol]:
        return 0    # llhttp takes repeated SP; the full path refuses it (RFC 9112 3)
    method = _METHODS.get(data[:sp])
    if method is None or data[eol - 9:eol] != b" HTTP/1.1" or data[sp + 1:sp + 2] != b"/":
        return 0
    if data.count(b"\r\n") > MAX_HEADERS + 2:
        return 0
    _req_parser = validated(_req_parser, httptools.HttpRequestParser, data)
    if _req_parser is None:
        return 0
    host = data[hs + 7:he].strip(b" \t")
    if not host:
        return 0
    return method, data[sp + 1:eol - 9], host.decode("latin-1"), data[eol:-4], data[eol:hs] + data[he:-4]


def scan_response(data: bytes) -> Any:
    global _resp_parser
    end = data.find(b"\r\n\r\n")
    if end < 0 or data[:9] != b"HTTP/1.1 " or end > MAX_RESP_HEAD:
        return 0
    code = data[9:12]
    if not code.isdigit() or data[12:13] not in (b" ", b"\r"):
        return 0
    status = int(code)
    if status < 200 or status == 204 or status == 304:
        return 0
    head = data[:end + 2]
    lh = head.lower()
    i = lh.find(b"\r\ncontent-length:")
    if i < 0 or b"\r\ntransfer-encoding" in lh:
        return 0
    i += 17
    cl = lh[i:lh.find(b"\r\n", i)].strip(b" \t")
    if not cl.isdigit() or len(data) != end + 4 + int(cl):
        return 0
    keep = True
    i = lh.find(b"\r\nconnection:")
    if i >= 0:
        # llhttp's keep-alive verdict, for the values whose verdict is plain (else the full path)
        value = lh[i + 13:lh.find(b"\r\n", i + 13)].strip(b" \t")
        if value == b"close":
            keep = False
        elif value != b"keep-alive" or lh.find(b"\r\nconnection:", i + 13) >= 0:
            return 0
    if b"\r\nupgrade:" in lh or b"\r\nproxy-connection:" in lh:
        return 0
    _resp_parser = validated(_resp_parser, httptools.HttpResponseParser, data)
    if _resp_parser is None:
        return 0
    if not keep:
        _resp_parser = None     # llhttp refuses anything after a "Connection: close" message
    status_line, fields = _split(head, lh)
    return status, int(cl), keep, head, status_line, fields


def relayed_as_sent(status_line: bytes) -> bool:
    """Whether the gateway relays an upstream's status line as it came: ``HTTP/1.1 NNN reason``
    with a reason phrase and no trailing whitespace (else it writes its own)."""
    return status_line[:9] == b"HTTP/1.1 " and len(status_line) >= 14 and status_line[-1:] not in (b" ", b"\t")


def relay_response(data: bytes, pre: bytes, post: bytes, below: int, absent: bytes) -> Any:
    r = scan_response(data)
    if type(r) is int:
        return 0
    status, cl, keep, head, status_line, fields = r
    if status >= below or not relayed_as_sent(status_line):
        return 0
    if absent and b"\r\n" + absent in head.lower():
        return 0
    out = b"".join((status_line, fields, b"\r\n", pre, b"Content-Length: %d\r\n" % cl, post, b"\r\n",
                    data[len(head) + 2:]))
    return status, keep, cl, out


def resp_fields(head: bytes) -> tuple[bytes, bytes]:
    return _split(head, head.lower())


def _split(head: bytes, lh: bytes) -> tuple[bytes, bytes]:
    """resp_fields, with ``lh`` = ``head.lower()`` at hand."""
    sl = head.find(b"\r\n")
    # each field as "\r\nName: value": drop hop-by-hop and framing fields in one C pass
    fields = _RESP_DROP_RE.sub(b"", head[sl:-2])
    i = lh.find(b"\r\nconnection:", sl)   # llhttp refuses whitespace before the colon
    if i >= 0:
        value = lh[i + 13:lh.find(b"\r\n", i + 13)].strip(b" \t")
        if value not in _PLAIN_CONN:
            # fields named by Connection are hop-by-hop too (RFC 9110 7.6.1)
            names = [re.escape(n) for n in (t.strip(b" \t") for t in value.split(b","))
                     if n and n not in (b"close", b"keep-alive", b"upgrade")]
            if names:
                fields = re.sub(rb"\r\n(?:" + b"|".join(names) + rb")[ \t]*:[^\r]*", b"", fields, flags=re.I)
    return head[:sl], fields
