"""Test tools: the real gateway in a subprocess, recording upstreams, raw clients.

Everything runs on loopback with ephemeral ports, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import httptools
import yaml

__all__ = ["free_port", "Gateway", "start_gateway", "Upstream", "UpstreamRequest", "raw_request", "http",
           "Response", "read_response"]


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, and that this process never handed out before:
    a test picks ports for listeners bound later (a mesh listener waits for its LDS), and two
    picks must not return the same one meanwhile."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh loopback port after 100 tries")


def routes_yaml(doc: dict[str, Any] | str) -> str:
    if isinstance(doc, str):
        return doc
    return yaml.safe_dump(doc, sort_keys=False) + "#END\n"


@dataclass
class Gateway:
    dir: Path
    port: int
    control_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def write_routes(self, doc: dict[str, Any] | str) -> None:
        tmp = self.dir / "apisix.yaml.tmp"
        tmp.write_text(routes_yaml(doc))
        os.replace(tmp, self.dir / "apisix.yaml")

    def control(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.control_port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def version(self) -> int:
        return int(self.control("/v1/config")["version"])

    def wait_applied(self, version: int, timeout: float = 10.0) -> None:
        """Until every worker runs at least ``version``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cfg = self.control("/v1/config")
            if cfg["workers"] and all(w["version"] >= version for w in cfg["workers"]):
                return
            time.sleep(0.05)
        raise AssertionError(f"config version {version} not applied in {timeout}s: {self.control('/v1/config')}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("gateway did not stop in time")


def start_gateway(tmp: Path, routes: dict[str, Any] | str, *, workers: int = 1, node: dict[str, Any] | None = None,
                  http: dict[str, Any] | None = None, log_level: str = "INFO", wait: bool = True) -> Gateway:
    port, cport = free_port(), free_port()
    conf: dict[str, Any] = {
        "apisix": {"node_listen": [{"ip": "127.0.0.1", "port": port}], "control": {"ip": "127.0.0.1", "port": cport},
                   "ssl": {"enable": False}},
        "nginx_config": {"worker_processes": workers, "worker_shutdown_timeout": "10s", "http": http or {}},
        "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
    }
    for k, v in (node or {}).items():
        if isinstance(v, dict):
            conf.setdefault(k, {}).update(v)
        else:
            conf[k] = v
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.yaml").write_text(yaml.safe_dump(conf))
    (tmp / "apisix.yaml").write_text(routes_yaml(routes))
    log_path = tmp / "gateway.log"
    logf = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "meshgate", "--log-level", log_level, "run", "-c",
                             str(tmp / "config.yaml")], stdout=logf, stderr=subprocess.STDOUT, cwd=tmp)
    gw = Gateway(tmp, port, cport, proc, log_path)
    if wait:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}:\n{gw.log()}")
            try:
                gw.control("/v1/config")
                with socket.create_connection(gw.addr, timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            gw.stop(signal.SIGKILL)
            raise AssertionError(f"gateway did not start:\n{gw.log()}")
    return gw


# ---------------------------------------------------------------------------------------------
# upstream test servers
# ---------------------------------------------------------------------------------------------

@dataclass
class UpstreamRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def headers_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Handler = Callable[[UpstreamRequest], Any]


class _UpConn(asyncio.Protocol):
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self.cur: UpstreamRequest | None = None
        self.url = b""
        self.tunnel = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.up.connections += 1
        self.up.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.open.discard(self)

    def data_received(self, data: bytes) -> None:
        self.up.raw_bytes += data
        if self.tunnel:
            assert self.transport is not None
            self.transport.write(data)  # websocket-ish echo
            return
        self.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.tunnel = True
            rest = data[e.args[0]:]
            if rest:
                assert self.transport is not None
                self.transport.write(rest)
        except httptools.HttpParserError as e:
            self.up.errors.append(str(e))
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.cur = UpstreamRequest("", "", [], b"")
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        self.cur.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.cur is not None
        self.cur.method = self.parser.get_method().decode()
        self.cur.path = self.url.decode("latin-1")
        if self.up.upgrade and self.cur.header("upgrade"):
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        assert self.cur is not None
        if self.up.keep_bodies:
            self.cur.body += body
        self.up.body_bytes += len(body)

    def on_message_complete(self) -> None:
        req = self.cur
        assert req is not None and self.transport is not None
        req.raw = bytes(self.raw)
        self.raw.clear()
        self.up.requests.append(req)
        if self.tunnel or (self.up.upgrade and req.header("upgrade")):
            return
        res = self.up.handler(req)
        if asyncio.iscoroutine(res):
            asyncio.get_running_loop().create_task(self._send_async(res))
        else:
            self._send(res)

    async def _send_async(self, coro: Awaitable[Any]) -> None:
        self._send(await coro)

    def _send(self, res: Any) -> None:
        if res is None or self.transport is None or self.transport.is_closing():
            return
        if isinstance(res, bytes):  # raw bytes: the handler takes full control
            self.transport.write(res)
            return
        status, headers, body = res
        if callable(body):  # streaming producer
            asyncio.get_running_loop().create_task(body(self.transport))
            return
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            head += f"Content-Length: {len(body)}\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)


def echo(req: UpstreamRequest) -> Any:
    body = json.dumps({"method": req.method, "path": req.path, "headers": req.headers,
                       "body_len": len(req.body)}).encode()
    return 200, {"Content-Type": "application/json"}, body


@dataclass
class Upstream:
    handler: Handler = echo
    upgrade: bool = False
    keep_bodies: bool = True
    requests: list[UpstreamRequest] = field(default_factory=list)
    connections: int = 0
    raw_bytes: bytearray = field(default_factory=bytearray)
    body_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    open: set[Any] = field(default_factory=set)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    async def start(self, port: int = 0) -> Upstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpConn(self), "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for c in list(self.open):
                if c.transport is not None:
                    c.transport.close()
            await self.server.wait_closed()


# ---------------------------------------------------------------------------------------------
# clients
# ---------------------------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def headers_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False, timeout: float = 10.0) -> Response | None:
    """One response from ``reader``; None when the connection closed before any byte.

    Reads exactly that response's bytes (head, then Content-Length / chunked / until close), so
    pipelined responses that arrived in the same segment stay in ``reader`` for the next call.
    Interim 1xx responses (but 101) are skipped."""

    async def run() -> Response | None:
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    return None
                raise
            lines = raw[:-4].split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            headers = [(n.decode("latin-1").strip(), v.decode("latin-1").strip())
                       for n, _, v in (ln.partition(b":") for ln in lines[1:])]
            if not (100 <= status < 200 and status != 101):
                break
        fields = {k.lower(): v for k, v in headers}
        body = bytearray()
        if head or status in (101, 204, 304):
            pass
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailer fields
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        elif "content-length" in fields:
            body += await reader.readexactly(int(fields["content-length"]))
        else:
            body += await reader.read()  # delimited by close
        return Response(status, headers, bytes(body))

    return await asyncio.wait_for(run(), timeout)


async def raw_request(addr: tuple[str, int], data: bytes, *, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes; return everything received and whether the server closed."""
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    await writer.drain()
    out = bytearray()
    closed = False
    try:
        async def run() -> None:
            nonlocal closed
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    return
                out.extend(chunk)
        await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        pass
    writer.close()
    return bytes(out), closed


async def http(addr: tuple[str, int], method: str = "GET", path: str = "/", *, host: str = "test.local",
               headers: dict[str, str] | None = None, body: bytes = b"", timeout: float = 10.0) -> Response:
    reader, writer = await asyncio.open_connection(*addr)
    h = {"Host": host, **(headers or {})}
    if body or method in ("POST", "PUT", "PATCH"):
        h.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    writer.write(head.encode() + body)
    try:
        resp = await read_response(reader, head=method == "HEAD", timeout=timeout)
    finally:
        writer.close()
    assert resp is not None, "connection closed without a response"
    return resp
