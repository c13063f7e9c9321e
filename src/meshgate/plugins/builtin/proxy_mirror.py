"""proxy-mirror: send a copy of (a sample of) the requests to a mirror service.

As APISIX ``apisix/plugins/proxy-mirror.lua`` with nginx's ``mirror`` directive behind it:
in ``rewrite`` a request is sampled (``sample_ratio``) and its mirror uri fixed
(``$upstream_uri`` when already set, else ``$uri`` + args; ``path`` replaces it, or prefixes it
with ``path_concat_mode: prefix``); the copy (same method, headers and body, ``Host`` the
upstream host) leaves once the request is about to be proxied (nginx mirrors in the
precontent phase, after access), and nothing waits for the mirror: its answer, slowness or
failure never changes the client's response.  Each copy is one HTTP/1.1 request with
``Connection: close`` bounded by ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "prepare", "rewrite", "before_proxy", "send_mirror",
           "TIMEOUT", "MAX_BODY"]

log = logging.getLogger("meshgate.plugins.proxy-mirror")

NAME = "proxy-mirror"
PRIORITY = 1010
VERSION = "0.1"

TIMEOUT = 60.0             # nginx proxy_{connect,send,read}_timeout default: one bound for the whole copy
MAX_BODY = 8 * 1024 * 1024  # a request body larger than this is not mirrored (kept in memory)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "host": {"type": "string",
                 "pattern": r"^(http(s)?|grpc(s)?):\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?$"},
        "path": {"type": "string", "pattern": r"^/[^?&]+$"},
        "path_concat_mode": {"type": "string", "default": "replace", "enum": ["replace", "prefix"],
                             "description": "the concatenation mode for custom path"},
        "sample_ratio": {"type": "number", "minimum": 0.00001, "maximum": 1, "default": 1},
    },
    "required": ["host"],
}


@dataclass(frozen=True, slots=True)
class Conf:
    scheme: str
    host: str          # as the socket needs it (no brackets)
    port: int
    path: str | None
    prefix: bool
    sample_ratio: float


def prepare(conf: dict[str, Any]) -> Conf:
    u = urlsplit(conf["host"])
    scheme = u.scheme
    default_port = 443 if scheme in ("https", "grpcs") else 80
    return Conf(scheme=scheme, host=u.hostname or "", port=u.port or default_port, path=conf.get("path"),
                prefix=conf.get("path_concat_mode", "replace") == "prefix",
                sample_ratio=float(conf.get("sample_ratio", 1)))


_URI = "_proxy_mirror_uri"
_BODY = "_proxy_mirror_body"

# request fields never copied to the mirror (hop-by-hop, and the ones this client writes itself)
_SKIP = frozenset({"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                   "upgrade", "content-length", "expect"})


async def rewrite(conf: Conf, ctx: Any) -> None:
    if conf.sample_ratio < 1 and not random.random() < conf.sample_ratio:
        return
    var = ctx.var
    qs = var("is_args") or ""
    args = (var("args") or "") if qs else ""
    uri = var("upstream_uri") or ((var("uri") or "/") + qs + args)
    if conf.path is not None:
        uri = conf.path + uri if conf.prefix else conf.path + qs + args
    ctx.set_var(_URI, uri)
    if conf.scheme.startswith("grpc"):
        return
    cl = var("content_length")
    if (cl is not None and cl != "0") or ctx.req_header("transfer-encoding"):
        # nginx mirrors the request body too (mirror_request_body on): read it once for both
        ctx.set_var(_BODY, await ctx.read_body(max_size=None) if cl is None or int(cl) <= MAX_BODY else None)


_tasks: set[asyncio.Task[int | None]] = set()


def before_proxy(conf: Conf, ctx: Any) -> None:
    uri = ctx.var(_URI)
    if uri is None:
        return
    if conf.scheme.startswith("grpc"):
        log.warning("proxy-mirror: %s mirrors are not supported, request not mirrored", conf.scheme)
        return
    body = ctx.var(_BODY)
    if isinstance(body, str):
        body = body.encode()
    host = ctx.var("upstream_host") or ctx.req_header("host") or conf.host
    headers = [(k, v) for k, v in ctx.req_headers().items() if k not in _SKIP]
    task = asyncio.get_running_loop().create_task(
        send_mirror(conf, ctx.method, uri, host, headers, body if isinstance(body, bytes) else b""))
    _tasks.add(task)             # keep a reference until done (fire-and-forget)
    task.add_done_callback(_tasks.discard)


async def send_mirror(conf: Conf, method: str, uri: str, host: str, headers: list[tuple[str, str]],
                      body: bytes, *, timeout: float = TIMEOUT) -> int | None:
    """Send one copy; return the mirror's status (None when it failed).  Never raises."""
    try:
        return await asyncio.wait_for(_send(conf, method, uri, host, headers, body), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        log.info("proxy-mirror: copy to %s://%s:%d%s failed: %r", conf.scheme, conf.host, conf.port, uri, e)
        return None


async def _send(conf: Conf, method: str, uri: str, host: str, headers: list[tuple[str, str]],
                body: bytes) -> int:
    ctx: ssl.SSLContext | None = None
    if conf.scheme == "https":
        # nginx: proxy_ssl_verify off by default
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(conf.host, conf.port, ssl=ctx,
                                                   server_hostname=conf.host if ctx else None)
    try:
        lines = [f"{method} {uri} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"bad status line {status_line[:80]!r}")
        # drain the answer so the mirror sees a complete exchange, then close
        while await reader.read(65536):
            pass
        return int(parts[1])
    finally:
        writer.close()
