"""The one parsed view of a client request (hardening.md rule 1: one parse, one path).

Routing, plugins, logging and the request sent upstream all read this object.  It is
filled by the downstream protocol from llhttp callbacks and never re-parsed.  ``var``
implements APISIX/nginx request variables (apisix-semantics.md section 2) lazily: the
header index, query args and cookies are only built when a variable asks for them.
"""

from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import parse_qsl

__all__ = ["Request", "HOP_BY_HOP", "split_fields", "find_field", "use_field_finder"]

# Hop-by-hop headers (RFC 9110 7.6.1) plus legacy ones that must never cross the proxy.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
     b"proxy-authenticate", b"http2-settings"}
)


# one field of a raw block: "\r\nName:" OWS value OWS (the value without surrounding OWS)
_FIELD_RE = re.compile(rb"\r\n([^:\r]+):[ \t]*([^\r]*?)[ \t]*(?=\r|$)")


def split_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of a raw field block ("\r\nName: value" per field, already validated)."""
    return [(m.group(1), m.group(2)) for m in _FIELD_RE.finditer(block)]


def _decode(v: bytes) -> str:
    # latin-1 keeps every byte as one code point: the value stays byte-exact (hardening case 19).
    return v.decode("latin-1")


_NEEDLES: dict[str, bytes] = {}   # header name -> b"\r\nname:" (plugins ask for the same few)


def find_field(fields: bytes, name: str) -> str | int | None:
    """The value of the field ``name`` in a raw field block (each line after a CRLF, as the
    head codec keeps a fast-path request's fields), without splitting them all: auth plugins
    read one header per request.  None when absent; 1 when the field is repeated or ``name``
    is not ASCII (look it up in the full index then).  The native head codec has the same
    call (``_codec.find_field``, chosen by :func:`use_field_finder`)."""
    if not name.isascii():
        return 1
    needle = _NEEDLES.get(name)
    if needle is None:
        needle = b"\r\n" + name.lower().encode("latin-1") + b":"
        if len(_NEEDLES) < 1024:
            _NEEDLES[name] = needle
    lf = fields.lower()
    i = lf.find(needle)
    if i < 0:
        return None
    start = i + len(needle)
    end = lf.find(b"\r\n", start)
    if end < 0:
        return _decode(fields[start:].strip(b" \t"))
    if lf.find(needle, end) >= 0:
        return 1
    return _decode(fields[start:end].strip(b" \t"))


_FIND_FIELD: Callable[[bytes, str], Any] | None = None


def use_field_finder(fn: Callable[[bytes, str], Any] | None) -> None:
    """Look fields up with ``fn`` (the native head codec's ``find_field``); None: :func:`find_field`."""
    global _FIND_FIELD
    _FIND_FIELD = fn


class Request:
    # Defaults live on the class: a request only stores what differs (hot path: one
    # Request per HTTP request, most fields keep their default).
    method = "GET"
    target = b"/"
    path = "/"
    upstream_path = "/"
    query: str | None = None
    version = "1.1"
    host = ""
    http_host = ""
    remote_addr = ""
    remote_port = 0
    server_addr = ""
    server_port = 0
    scheme = "http"
    keep_alive = True
    content_length: int | None = None
    chunked = False
    expect_continue = False
    upgrade: bytes | None = None
    real_ip: bytes | None = None       # the real_ip_header value as received
    grpc = False                       # HTTP/2 with a gRPC content-type as the client sent it
    params: dict[str, str] | None = None
    _hindex: dict[str, str] | None = None
    _args: dict[str, str] | None = None
    _cookies: dict[str, str] | None = None
    start_time = 0.0
    # the TLS connection it came on (proxy.tls.TLSConnection: ``var(name)`` answers nginx's
    # $ssl_* variables, ``allows`` the per-request mTLS checks); None on plain HTTP
    tls: Any = None

    _ctx: dict[str, Any] | None = None
    # Header fields as received: either a list built field by field (``_headers``), or the
    # raw field block ``fields`` ("\r\nName: value" per field, as llhttp validated it) that
    # is split only when something asks for the list.
    _headers: list[tuple[bytes, bytes]] | None = None
    fields = b""
    # set by the fast path: ``fields`` minus those the proxy drops or sets itself, ready to
    # be sent upstream as long as nobody asked for (and so could change) the header list
    fwd_fields: bytes | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        h = self._headers
        if h is None:
            h = self._headers = split_fields(self.fields)
        return h

    @headers.setter
    def headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._headers = value

    def forward_fields(self) -> bytes | None:
        """The fast path's ready-to-send field block, unless the header list was handed out."""
        return self.fwd_fields if self._headers is None else None

    @property
    def ctx(self) -> dict[str, Any]:
        """Per-request variables set by the gateway and plugins (created on first use)."""
        c = self._ctx
        if c is None:
            c = self._ctx = {}
        return c

    # -- headers -----------------------------------------------------------------------
    def header_index(self) -> dict[str, str]:
        """Lower-case name -> value; repeated headers joined with ', ' (RFC 9110 5.3)."""
        idx = self._hindex
        if idx is None:
            idx = {}
            for name, value in self.headers:
                k = _decode(name).lower()
                v = _decode(value)
                if k in idx:
                    idx[k] = idx[k] + (", " if k != "cookie" else "; ") + v
                else:
                    idx[k] = v
            self._hindex = idx
        return idx

    def header(self, name: str) -> str | None:
        idx = self._hindex
        if idx is None and self._headers is None:
            # the raw field block of the fast path: find one field without splitting them all
            # (auth plugins read one header per request); repeated fields take the full index
            ff = _FIND_FIELD
            got = ff(self.fields, name) if ff is not None else find_field(self.fields, name)
            if not isinstance(got, int):
                return got
        return self.header_index().get(name.lower())

    def set_header(self, name: str, value: str | None) -> None:
        """Replace (or remove, with None) a request header before it is sent upstream."""
        lname = name.lower().encode("latin-1")
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lname]
        if value is not None:
            self.headers.append((name.encode("latin-1"), value.encode("latin-1")))
        self._hindex = None
        self._cookies = None

    # -- args / cookies ----------------------------------------------------------------
    def args(self) -> dict[str, str]:
        a = self._args
        if a is None:
            a = {}
            if self.query:
                for k, v in parse_qsl(self.query, keep_blank_values=True):
                    a.setdefault(k, v)   # nginx $arg_x is the first occurrence
            self._args = a
        return a

    def cookies(self) -> dict[str, str]:
        c = self._cookies
        if c is None:
            c = {}
            raw = self.header_index().get("cookie")
            if raw:
                for part in raw.split(";"):
                    k, sep, v = part.strip(" \t").partition("=")
                    if sep and k and k not in c:
                        c[k] = v.strip(" \t")
            self._cookies = c
        return c

    @property
    def request_uri(self) -> str:
        return _decode(self.target)

    # -- variables ---------------------------------------------------------------------
    def var(self, name: str) -> Any:
        """nginx/APISIX variable lookup; None when absent."""
        f = _FIXED.get(name)
        if f is not None:
            return f(self)
        if self._ctx is not None:
            v = self._ctx.get(name)
            if v is not None:
                return v
        if name.startswith("http_"):
            return self.header_index().get(name[5:].replace("_", "-"))
        if name.startswith("arg_"):
            return self.args().get(name[4:])
        if name.startswith("cookie_"):
            return self.cookies().get(name[7:])
        if name.startswith("uri_param_"):
            return (self.params or {}).get(name[10:])
        return None


def _query_string(r: Request) -> str | None:
    return r.query


_FIXED: dict[str, Callable[[Request], Any]] = {
    "uri": lambda r: r.path,
    "host": lambda r: r.host,
    "http_host": lambda r: r.http_host or None,
    "request_method": lambda r: r.method,
    "remote_addr": lambda r: r.remote_addr,
    "remote_port": lambda r: str(r.remote_port),
    "server_addr": lambda r: r.server_addr,
    "server_port": lambda r: str(r.server_port),
    "scheme": lambda r: r.scheme,
    "request_uri": lambda r: r.request_uri,
    "query_string": _query_string,
    "args": _query_string,
    "is_args": lambda r: "?" if r.query is not None else "",
    "server_protocol": lambda r: "HTTP/" + r.version,
    "content_length": lambda r: None if r.content_length is None else str(r.content_length),
    "content_type": lambda r: r.header_index().get("content-type"),
    "request_line": lambda r: f"{r.method} {r.request_uri} HTTP/{r.version}",
    "hostname": lambda r: _hostname(),
    "https": lambda r: "on" if r.scheme == "https" else "",
}


def _tls_var(name: str) -> Callable[[Request], Any]:
    def get(r: Request) -> Any:
        t = r.tls
        return t.var(name) if t is not None else None
    return get


# nginx's $ssl_* variables (proxy/tls.py TLS_VARS answers them)
_FIXED.update({n: _tls_var(n) for n in (
    "ssl_server_name", "ssl_protocol", "ssl_cipher", "ssl_session_reused", "ssl_alpn_protocol", "ssl_client_verify",
    "ssl_client_s_dn", "ssl_client_i_dn", "ssl_client_serial", "ssl_client_fingerprint", "ssl_client_raw_cert",
    "ssl_client_escaped_cert", "ssl_client_v_start", "ssl_client_v_end", "ssl_client_v_remain")})

_HOSTNAME: list[str] = []


def _hostname() -> str:
    if not _HOSTNAME:
        import socket

        _HOSTNAME.append(socket.gethostname())
    return _HOSTNAME[0]
