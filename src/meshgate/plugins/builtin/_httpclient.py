"""A small asyncio HTTP/1.1 client for plugins that call out (forward-auth, ...).

One request at a time per connection; idle keep-alive connections are pooled per
``(scheme, host, port, ssl_verify)`` in the worker and dropped after ``keepalive_timeout``.
A whole exchange is bounded by ``timeout`` (seconds). Header names and values are checked
for CR/LF/NUL (header injection) before anything is sent. Response bodies are capped.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["HTTPClientError", "Response", "request"]

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


class HTTPClientError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first field of that name (case-insensitive)."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_POOL: dict[tuple[str, str, int, bool], list[tuple[float, _Conn]]] = {}
_SSL: dict[bool, ssl.SSLContext] = {}


def _ssl_context(verify: bool) -> ssl.SSLContext:
    ctx = _SSL.get(verify)
    if ctx is None:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _SSL[verify] = ctx
    return ctx


def _check(text: str, what: str) -> None:
    if "\r" in text or "\n" in text or "\0" in text:
        raise HTTPClientError(f"invalid characters found in header {what}")


def _take(key: tuple[str, str, int, bool]) -> _Conn | None:
    idle = _POOL.get(key)
    now = time.monotonic()
    while idle:
        expires, conn = idle.pop()
        if expires > now and not conn[0].at_eof() and not conn[1].is_closing():
            return conn
        conn[1].close()
    return None


def _give(key: tuple[str, str, int, bool], conn: _Conn, keepalive_timeout: float, pool_size: int) -> None:
    idle = _POOL.setdefault(key, [])
    if len(idle) >= pool_size:
        conn[1].close()
        return
    idle.append((time.monotonic() + keepalive_timeout, conn))


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[Response, bool]:
    """The response and whether the connection may be reused."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise HTTPClientError("response head too large") from e
    except asyncio.IncompleteReadError as e:
        raise HTTPClientError("closed") from e
    if len(head) > MAX_HEAD:
        raise HTTPClientError("response head too large")
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPClientError("bad status line")
    status = int(parts[1])
    headers = []
    for ln in lines[1:]:
        name, sep, value = ln.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPClientError("bad header line")
        headers.append((name, value.strip()))
    resp = Response(status, headers)
    if 100 <= status < 200:
        return await _read_response(reader, method)  # interim response: the real one follows
    conn_hdr = (resp.header("connection") or "").lower()
    reusable = parts[0] == "HTTP/1.1" and "close" not in conn_hdr
    te = (resp.header("transfer-encoding") or "").lower()
    cl = resp.header("content-length")
    body = bytearray()
    if method == "HEAD" or status in (204, 304):
        pass
    elif "chunked" in te:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError as e:
                raise HTTPClientError("bad chunk size") from e
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            if len(body) + size > MAX_BODY:
                raise HTTPClientError("response body too large")
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif cl is not None:
        if not cl.isdigit() or int(cl) > MAX_BODY:
            raise HTTPClientError("bad content-length")
        body += await reader.readexactly(int(cl))
    else:
        reusable = False
        while len(body) <= MAX_BODY:
            chunk = await reader.read(65536)
            if not chunk:
                break
            body += chunk
        if len(body) > MAX_BODY:
            raise HTTPClientError("response body too large")
    resp.body = bytes(body)
    return resp, reusable


async def _exchange(conn: _Conn, data: bytes, method: str) -> tuple[Response, bool]:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await _read_response(reader, method)


async def request(method: str, url: str, *, headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                  timeout: float = 3.0, ssl_verify: bool = True, keepalive: bool = True,
                  keepalive_timeout: float = 60.0, keepalive_pool: int = 5) -> Response:
    """Send one request; raises HTTPClientError (or asyncio.TimeoutError / OSError)."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise HTTPClientError(f"unsupported url {url!r}")
    tls = u.scheme == "https"
    host = u.hostname
    port = u.port or (443 if tls else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    host_hdr = (f"[{host}]" if ":" in host else host) + (f":{u.port}" if u.port else "")
    fields = [("Host", host_hdr)]
    for name, value in headers or ():
        _check(name, "name")
        _check(value, "value")
        if name.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
            fields.append((name, value))
    if body is not None:
        fields.append(("Content-Length", str(len(body))))
    fields.append(("Connection", "keep-alive" if keepalive else "close"))
    data = (f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n").encode(
        "latin-1", "replace") + (body or b"")
    key = (u.scheme, host, port, ssl_verify)

    async def run() -> Response:
        conn = _take(key) if keepalive else None
        if conn is not None:
            try:
                resp, reusable = await _exchange(conn, data, method)
            except (HTTPClientError, OSError):
                conn[1].close()  # a stale pooled connection: one fresh attempt below
            else:
                _finish(conn, reusable)
                return resp
        conn = await asyncio.open_connection(host, port, ssl=_ssl_context(ssl_verify) if tls else None,
                                             server_hostname=host if tls else None, limit=MAX_HEAD)
        try:
            resp, reusable = await _exchange(conn, data, method)
        except BaseException:
            conn[1].close()
            raise
        _finish(conn, reusable)
        return resp

    def _finish(conn: _Conn, reusable: bool) -> None:
        if keepalive and reusable:
            _give(key, conn, keepalive_timeout, keepalive_pool)
        else:
            conn[1].close()

    return await asyncio.wait_for(run(), timeout)
