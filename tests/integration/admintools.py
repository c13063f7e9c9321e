"""The Admin API under test: AdminAPI served by ApiServer on a loopback port, backed by a
real etcd, and a small HTTP client (urllib in a thread, so the server keeps running in
the test's event loop)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from gwtools import free_port

from meshgate.admin.admin_api import AdminAPI
from meshgate.admin.httpserver import ApiServer
from meshgate.config import AdminConfig, AdminKey
from meshgate.config.etcd import EtcdClient
from meshgate.plugins import PluginRegistry

KEY = "a3f1c0de9b8e4f7aa1b2c3d4e5f60718"
VIEWER = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


def http(port: int, method: str, path: str, body: Any = None, *, key: str | None = KEY,
         headers: dict[str, str] | None = None) -> Resp:
    if body is None or isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if key is not None:
        r.add_header("X-API-KEY", key)
    for k, v in (headers or {}).items():
        r.add_header(k, v)
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return Resp(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as e:
        return Resp(e.code, dict(e.headers), e.read())


@dataclass
class Admin:
    port: int
    prefix: str
    etcd: EtcdClient
    api: AdminAPI
    plugins: PluginRegistry
    reloads: list[int] = field(default_factory=list)

    async def call(self, method: str, path: str, body: Any = None, *, key: str | None = KEY,
                   headers: dict[str, str] | None = None) -> Resp:
        if not path.startswith("/"):
            path = "/apisix/admin/" + path
        return await asyncio.to_thread(http, self.port, method, path, body, key=key, headers=headers)

    async def stored(self, rel: str) -> Any | None:
        """The value etcd holds at ``<prefix><rel>`` (decoded JSON), None when absent."""
        kv = await self.etcd.get(self.prefix + rel)
        return None if kv is None else json.loads(kv.value)

    async def keys(self) -> list[str]:
        _, kvs = await self.etcd.get_prefix(self.prefix + "/")
        return [kv.key[len(self.prefix):] for kv in kvs]


_REGISTRY: PluginRegistry | None = None


def registry() -> PluginRegistry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = PluginRegistry()
        _REGISTRY.load_builtin()
    return _REGISTRY


@asynccontextmanager
async def running_admin(etcd_urls: list[str], *, keys: tuple[AdminKey, ...] | None = None,
                        allow_admin: tuple[str, ...] = ("127.0.0.0/24",), cors: bool = True,
                        key_required: bool = True, etcd_timeout: float = 10.0, **kw: Any) -> AsyncIterator[Admin]:
    etcd = EtcdClient(etcd_urls, timeout=etcd_timeout)
    prefix = "/t" + uuid.uuid4().hex[:12]
    conf = AdminConfig(admin_key=keys if keys is not None else (AdminKey("admin", KEY), AdminKey("v", VIEWER, "viewer")),
                       allow_admin=allow_admin, enable_admin_cors=cors, admin_key_required=key_required)
    reloads: list[int] = []
    kw.setdefault("reload_plugins", lambda: reloads.append(1))
    plugins = kw.pop("plugins", None) or registry()
    api = AdminAPI(etcd=etcd, prefix=prefix, admin=conf, plugins=plugins, **kw)
    server = ApiServer(api.handle, too_large=api.too_large)
    port = free_port()
    await server.listen("127.0.0.1", port)
    try:
        yield Admin(port, prefix, etcd, api, plugins, reloads)
    finally:
        await server.close()
        await etcd.close()


def up(*addrs: str) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {a: 1 for a in (addrs or ("127.0.0.1:1980",))}}


def self_signed(cn: str = "test.com") -> tuple[str, str]:
    """A fresh self-signed certificate and its key, PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())
