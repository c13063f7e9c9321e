"""TLS termination with ``ssls`` objects, through the real gateway and real clients.

Certificates are made with the openssl CLI.  Clients: curl, Python's ssl, httpx and
``openssl s_client`` (for signature algorithms and TLS versions).  Every client call runs
in a thread (the upstream lives on the test's event loop) and is bounded.

APISIX behaviours matched (apisix/ssl/router/radixtree_sni.lua, apisix/ssl.lua,
apisix/init.lua; t/router/radixtree-sni*.t, t/node/client-mtls.t): certificate by SNI, exact
over wildcard, one-label wildcards, unknown SNI and missing SNI fail the handshake unless
``fallback_sni``, RSA and ECDSA on one SNI, ``ssl_protocols`` per object, ``status: 0``,
``type: client`` objects never served, mTLS refused in the handshake (or per URI with
``skip_mtls_uri_regex``), SNI/Host mismatch on an mTLS host -> 400.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from gwtools import Gateway, Upstream, free_port, http, start_gateway
from pki import PKI, make_ca, make_leaf

TIMEOUT = 10.0

# --- certificates ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca", "Meshgate Test CA")
    make_leaf(d, "a-rsa", "ca", "/CN=a.test RSA", dns=("a.test",), rsa=True)
    make_leaf(d, "a-ec", "ca", "/CN=a.test ECDSA", dns=("a.test",))
    make_leaf(d, "wild", "ca", "/CN=wildcard.wild.test", dns=("*.wild.test",))
    make_leaf(d, "exact", "ca", "/CN=exact.wild.test", dns=("exact.wild.test",))
    make_leaf(d, "rot1", "ca", "/CN=rot.test v1", dns=("rot.test",))
    make_leaf(d, "rot2", "ca", "/CN=rot.test v2", dns=("rot.test",))
    make_leaf(d, "v13", "ca", "/CN=v13.test", dns=("v13.test",))
    make_leaf(d, "off", "ca", "/CN=off.test", dns=("off.test",))
    make_leaf(d, "mtls", "ca", "/CN=mtls.test", dns=("mtls.test", "skip.test"))
    make_ca(d, "clientca", "Meshgate Client CA")
    make_leaf(d, "client", "clientca", "/C=US/O=Acme/CN=client one", client=True, serial="0x1A2B")
    make_ca(d, "otherca", "Another CA")
    make_leaf(d, "intruder", "otherca", "/CN=intruder", client=True)
    return PKI(d)


# --- the gateway ----------------------------------------------------------------------------------

# Writes what the plugin ctx sees of the request's TLS into request headers, for the upstream.
TLS_PLUGIN = '''
NAME = "t-tls"
PRIORITY = 100
SCHEMA = {"type": "object"}
VARS = ("scheme", "server_port", "https", "ssl_server_name", "ssl_protocol", "ssl_client_verify",
        "ssl_client_s_dn", "ssl_client_i_dn", "ssl_client_serial")

def access(conf, ctx):
    for name in VARS:
        value = ctx.var(name)
        if value is not None and value != "":
            ctx.set_req_header("X-Var-" + name.replace("_", "-"), str(value))
'''


def ssls(pki: PKI, *, rot: str = "rot1") -> list[dict[str, Any]]:
    a_rsa, a_ec = pki.pair("a-rsa"), pki.pair("a-ec")
    client_ca = pki.pem("clientca.crt")
    return [
        {"id": "a", "sni": "a.test", **a_rsa, "certs": [a_ec["cert"]], "keys": [a_ec["key"]]},
        {"id": "wild", "snis": ["*.wild.test"], **pki.pair("wild")},
        {"id": "exact", "sni": "EXACT.wild.test", **pki.pair("exact")},   # names are case-insensitive
        {"id": "rot", "sni": "rot.test", **pki.pair(rot)},
        {"id": "v13", "sni": "v13.test", **pki.pair("v13"), "ssl_protocols": ["TLSv1.3"]},
        {"id": "off", "sni": "off.test", **pki.pair("off"), "status": 0},
        {"id": "upstream-client", "type": "client", "sni": "client.test", **pki.pair("client")},
        {"id": "mtls", "sni": "mtls.test", **pki.pair("mtls"), "client": {"ca": client_ca, "depth": 1}},
        {"id": "skip", "sni": "skip.test", **pki.pair("mtls"),
         "client": {"ca": client_ca, "skip_mtls_uri_regex": ["^/public"]}},
    ]


def config(pki: PKI, up: Upstream, **kw: Any) -> dict[str, Any]:
    return {
        "routes": [{"id": "1", "uri": "/*", "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}],
        "global_rules": [{"id": "1", "plugins": {"t-tls": {}}}],
        "ssls": ssls(pki, **kw),
    }


class TLSGateway:
    def __init__(self, gw: Gateway, tls_port: int, pki: PKI) -> None:
        self.gw = gw
        self.port = tls_port
        self.pki = pki

    def context(self, *, cert: str | None = None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki.path("ca.crt"))
        if cert is not None:
            ctx.load_cert_chain(self.pki.path(f"{cert}.crt"), self.pki.path(f"{cert}.key"))
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx


def start_tls_gateway(tmp_path: Path, pki: PKI, up: Upstream, *, ssl_node: dict[str, Any] | None = None,
                      workers: int = 1) -> TLSGateway:
    plugins = tmp_path / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "t_tls.py").write_text(TLS_PLUGIN)
    tls_port = free_port()
    node = {"apisix": {"plugin_dirs": [str(plugins)],
                       "ssl": {"enable": True, "listen": [{"ip": "127.0.0.1", "port": tls_port}], **(ssl_node or {})}}}
    gw = start_gateway(tmp_path / "gw", config(pki, up), node=node, workers=workers)
    return TLSGateway(gw, tls_port, pki)


@pytest.fixture
async def tgw(tmp_path: Path, pki: PKI, echo_up: Upstream):
    g = start_tls_gateway(tmp_path, pki, echo_up)
    yield g
    g.gw.stop()


# --- clients --------------------------------------------------------------------------------------

def handshake(port: int, ctx: ssl.SSLContext, sni: str | None) -> dict[str, Any]:
    """A TLS handshake with SNI ``sni``; the server certificate as Python decodes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            assert s.version() is not None
            return s.getpeercert() or {}


def subject_cn(cert: dict[str, Any]) -> str:
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")


def tls_get(port: int, ctx: ssl.SSLContext, sni: str, path: str = "/", *, host: str | None = None) -> tuple[int, dict[str, Any]]:
    """One request over TLS (Python ssl, raw HTTP/1.1); (status, echoed request as JSON)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or sni}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    if not data:
        raise ConnectionResetError("closed without a response")
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, (json.loads(body) if status == 200 else {"body": body.decode("latin-1")})


def upstream_headers(echo: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in echo["headers"]}


def curl(port: int, name: str, path: str = "/", *args: str, pki: PKI) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "-v", "--max-time", "10", "--cacert", pki.path("ca.crt"),
                           "--resolve", f"{name}:{port}:127.0.0.1", *args, f"https://{name}:{port}{path}"],
                          capture_output=True, text=True, timeout=20)


def s_client(port: int, sni: str | None, *args: str, pki: PKI) -> subprocess.CompletedProcess[str]:
    """``openssl s_client``: one handshake then EOF on stdin (``-brief`` prints the outcome)."""
    name = ["-servername", sni] if sni else ["-noservername"]
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *name, "-CAfile",
                           pki.path("ca.crt"), "-verify_return_error", *args],
                          input="", capture_output=True, text=True, timeout=20)


def negotiated(r: subprocess.CompletedProcess[str]) -> str | None:
    """The TLS version ``openssl s_client`` says it negotiated (None: no handshake)."""
    m = re.search(r"^New, (TLSv1(?:\.\d)?), Cipher is ", r.stdout, re.M)
    return m.group(1) if m else None


def run(fn: Any, *args: Any, **kw: Any) -> Any:
    return asyncio.wait_for(asyncio.to_thread(fn, *args, **kw), 30)


# --- certificate selection ------------------------------------------------------------------------

async def test_certificate_chosen_by_sni_with_python_ssl_and_curl(tgw: TLSGateway) -> None:
    ctx = tgw.context()
    cert = await run(handshake, tgw.port, ctx, "a.test")
    assert subject_cn(cert).startswith("a.test") and ("DNS", "a.test") in cert["subjectAltName"]
    cert = await run(handshake, tgw.port, ctx, "rot.test")
    assert subject_cn(cert) == "rot.test v1"
    r = await run(curl, tgw.port, "a.test", "/hello", pki=tgw.pki)
    assert r.returncode == 0, r.stderr
    assert re.search(r"subject: CN=a\.test (RSA|ECDSA)", r.stderr), r.stderr
    echo = json.loads(r.stdout)
    assert echo["path"] == "/hello"
    h = upstream_headers(echo)
    assert h["x-forwarded-proto"] == "https"
    assert h["x-var-scheme"] == "https" and h["x-var-https"] == "on"
    assert h["x-var-server-port"] == str(tgw.port)
    assert h["x-var-ssl-server-name"] == "a.test" and h["x-var-ssl-protocol"] in ("TLSv1.2", "TLSv1.3")
    assert h["x-var-ssl-client-verify"] == "NONE"


async def test_httpx_client(tgw: TLSGateway) -> None:
    async with httpx.AsyncClient(verify=tgw.context(), timeout=TIMEOUT) as c:
        r = await c.get(f"https://127.0.0.1:{tgw.port}/x", headers={"Host": "exact.wild.test"},
                        extensions={"sni_hostname": "exact.wild.test"})
        assert r.status_code == 200
        h = upstream_headers(r.json())
        assert h["x-forwarded-proto"] == "https" and h["x-var-ssl-server-name"] == "exact.wild.test"
        # a body: the request takes the full HTTP/1 parser (not the one-read fast path), over TLS too
        r = await c.post(f"https://127.0.0.1:{tgw.port}/post", content=b"x" * 70000,
                         headers={"Host": "exact.wild.test"}, extensions={"sni_hostname": "exact.wild.test"})
        assert r.status_code == 200 and r.json()["body_len"] == 70000
        assert upstream_headers(r.json())["x-forwarded-proto"] == "https"


async def test_exact_beats_wildcard_and_wildcards_cover_one_label(tgw: TLSGateway) -> None:
    ctx = tgw.context()
    assert subject_cn(await run(handshake, tgw.port, ctx, "exact.wild.test")) == "exact.wild.test"
    assert subject_cn(await run(handshake, tgw.port, ctx, "Other.Wild.Test")) == "wildcard.wild.test"
    # t/router/radixtree-sni.t TEST 11: aa.bb.test2.com does not match *.test2.com (a client
    # that checks nothing: the server itself must refuse)
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    assert await run(handshake, tgw.port, lax, "other.wild.test") == {}   # (lax works)
    for sni in ("a.b.wild.test", "wild.test"):
        with pytest.raises(ssl.SSLError):
            await run(handshake, tgw.port, lax, sni)


async def test_unknown_missing_disabled_and_client_sni_fail_the_handshake(tgw: TLSGateway) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # checks nothing: the server must refuse
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # unknown; an ssl object with status 0; one of type client (for upstream mTLS); no SNI
    for sni in ("nope.test", "off.test", "client.test", None):
        with pytest.raises(ssl.SSLError):
            await run(handshake, tgw.port, ctx, sni)
    r = await run(s_client, tgw.port, "nope.test", pki=tgw.pki)
    assert r.returncode != 0 and "no peer certificate available" in r.stdout, r.stdout
    log = tgw.gw.log()
    assert "failed to match any SSL certificate by SNI: nope.test" in log
    assert "without SNI" in log
    # the plain HTTP port is not affected by any of it
    resp = await http(tgw.gw.addr, "GET", "/plain", host="a.test")
    assert resp.status == 200
    h = upstream_headers(resp.json())
    assert h["x-forwarded-proto"] == "http" and h["x-var-scheme"] == "http" and "x-var-ssl-client-verify" not in h


async def test_fallback_sni_serves_clients_without_sni(tmp_path: Path, pki: PKI, echo_up: Upstream) -> None:
    g = start_tls_gateway(tmp_path, pki, echo_up, ssl_node={"fallback_sni": "rot.test"})
    try:
        ctx = g.context()
        ctx.check_hostname = False
        assert subject_cn(await run(handshake, g.port, ctx, None)) == "rot.test v1"
        assert subject_cn(await run(handshake, g.port, ctx, "a.test")).startswith("a.test")
        with pytest.raises(ssl.SSLError):
            await run(handshake, g.port, ctx, "nope.test")   # fallback_sni is for no SNI only
    finally:
        g.gw.stop()


async def test_rsa_or_ecdsa_by_the_clients_signature_algorithms(tgw: TLSGateway) -> None:
    for version in ("-tls1_2", "-tls1_3"):
        r = await run(s_client, tgw.port, "a.test", version, "-sigalgs", "ECDSA+SHA256", pki=tgw.pki)
        assert r.returncode == 0, r.stderr
        assert "CN = a.test ECDSA" in r.stdout, r.stdout
        r = await run(s_client, tgw.port, "a.test", version, "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256", pki=tgw.pki)
        assert r.returncode == 0, r.stderr
        assert "CN = a.test RSA" in r.stdout, r.stdout


async def test_tls_versions(tgw: TLSGateway) -> None:
    # node ssl_protocols "TLSv1.2 TLSv1.3" (the default): both accepted, TLS 1.1 refused even
    # by a client that would allow it
    for version, proto in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        r = await run(s_client, tgw.port, "a.test", version, pki=tgw.pki)
        assert r.returncode == 0 and negotiated(r) == proto, r.stdout + r.stderr
    r = await run(s_client, tgw.port, "a.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", pki=tgw.pki)
    assert r.returncode != 0 and negotiated(r) is None, r.stdout
    # an ssl object's ssl_protocols replaces the node's for its SNI (APISIX set_protocols)
    r = await run(s_client, tgw.port, "v13.test", "-tls1_2", pki=tgw.pki)
    assert r.returncode != 0 and negotiated(r) is None, r.stdout
    r = await run(s_client, tgw.port, "v13.test", "-tls1_3", pki=tgw.pki)
    assert r.returncode == 0 and negotiated(r) == "TLSv1.3", r.stderr
    with pytest.raises(ssl.SSLError):
        await run(handshake, tgw.port, tgw.context(max_version=ssl.TLSVersion.TLSv1_2), "v13.test")
    assert await run(handshake, tgw.port, tgw.context(max_version=ssl.TLSVersion.TLSv1_2), "a.test")
    # and a TLS 1.3-capable client negotiates 1.3 there
    status, echo = await run(tls_get, tgw.port, tgw.context(), "v13.test")
    assert status == 200 and upstream_headers(echo)["x-var-ssl-protocol"] == "TLSv1.3"


async def test_sessions_are_not_resumed(tgw: TLSGateway) -> None:
    def twice() -> tuple[bool, bool]:
        ctx = tgw.context(max_version=ssl.TLSVersion.TLSv1_2)
        with socket.create_connection(("127.0.0.1", tgw.port), timeout=TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test") as s:
                sess = s.session
        with socket.create_connection(("127.0.0.1", tgw.port), timeout=TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test", session=sess) as s:
                return sess is not None, s.session_reused
    offered, reused = await run(twice)
    assert offered and not reused


# --- hot swap -------------------------------------------------------------------------------------

async def test_rotated_certificate_applies_to_new_handshakes_only(tgw: TLSGateway, pki: PKI,
                                                                  echo_up: Upstream) -> None:
    ctx = tgw.context()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", tgw.port, ssl=ctx, server_hostname="rot.test"), TIMEOUT)
    try:
        from gwtools import read_response

        def peer_cn() -> str:
            obj = writer.get_extra_info("ssl_object")
            return subject_cn(obj.getpeercert())

        async def get(path: str) -> int:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: rot.test\r\n\r\n".encode())
            resp = await read_response(reader, timeout=TIMEOUT)
            assert resp is not None
            return resp.status

        assert await get("/before") == 200 and peer_cn() == "rot.test v1"
        v = tgw.gw.version()
        tgw.gw.write_routes(config(pki, echo_up, rot="rot2"))
        await run(tgw.gw.wait_applied, v + 1)
        # a new handshake gets the new certificate at once...
        assert subject_cn(await run(handshake, tgw.port, ctx, "rot.test")) == "rot.test v2"
        # ...the established keep-alive connection keeps working, with the one it started with
        assert await get("/after") == 200 and peer_cn() == "rot.test v1"
        assert [r.path for r in echo_up.requests if r.path in ("/before", "/after")] == ["/before", "/after"]
        # the other certificates were not rebuilt, and still serve
        assert subject_cn(await run(handshake, tgw.port, ctx, "exact.wild.test")) == "exact.wild.test"
    finally:
        writer.close()


# --- mTLS -----------------------------------------------------------------------------------------

async def test_mtls_refuses_missing_and_foreign_client_certificates(tgw: TLSGateway) -> None:
    r = await run(curl, tgw.port, "mtls.test", "/m", pki=tgw.pki)
    assert r.returncode != 0 and not r.stdout, r.stderr
    r = await run(curl, tgw.port, "mtls.test", "/m", "--cert", tgw.pki.path("intruder.crt"), "--key",
                  tgw.pki.path("intruder.key"), pki=tgw.pki)
    assert r.returncode != 0 and not r.stdout, r.stderr
    for cert in (None, "intruder"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await run(tls_get, tgw.port, tgw.context(cert=cert), "mtls.test", "/m")
    # the gateway never forwarded any of them
    r = await run(curl, tgw.port, "mtls.test", "/m", "--cert", tgw.pki.path("client.crt"), "--key",
                  tgw.pki.path("client.key"), pki=tgw.pki)
    assert r.returncode == 0, r.stderr
    h = upstream_headers(json.loads(r.stdout))
    assert h["x-var-ssl-client-verify"] == "SUCCESS"
    assert h["x-var-ssl-client-s-dn"] == "CN=client one,O=Acme,C=US"
    assert h["x-var-ssl-client-i-dn"] == "CN=Meshgate Client CA"
    assert h["x-var-ssl-client-serial"] == "1A2B"
    assert h["x-forwarded-proto"] == "https"


async def test_mtls_client_certificate_with_python_ssl(tgw: TLSGateway) -> None:
    for maxv in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        status, echo = await run(tls_get, tgw.port, tgw.context(cert="client", max_version=maxv), "mtls.test", "/py")
        assert status == 200
        assert upstream_headers(echo)["x-var-ssl-client-s-dn"] == "CN=client one,O=Acme,C=US"


async def test_host_of_an_mtls_object_needs_its_sni(tgw: TLSGateway) -> None:
    # t/node/client-mtls.t TEST 14: an SNI without mTLS cannot front an mTLS-protected Host
    status, echo = await run(tls_get, tgw.port, tgw.context(), "a.test", "/front", host="mtls.test")
    assert status == 400 and "400 Bad Request" in echo["body"]
    # a Host no mTLS object covers is fine
    status, _ = await run(tls_get, tgw.port, tgw.context(), "a.test", "/front", host="other.example")
    assert status == 200
    assert "client certificate verified with SNI a.test, but the host is mtls.test" in tgw.gw.log()


async def test_skip_mtls_uri_regex(tgw: TLSGateway) -> None:
    # t/node/client-mtls.t TEST 19-23: the handshake asks without requiring; the URI decides
    status, echo = await run(tls_get, tgw.port, tgw.context(), "skip.test", "/public/x")
    assert status == 200 and upstream_headers(echo)["x-var-ssl-client-verify"] == "NONE"
    status, _ = await run(tls_get, tgw.port, tgw.context(), "skip.test", "/private")
    assert status == 400
    status, echo = await run(tls_get, tgw.port, tgw.context(cert="intruder"), "skip.test", "/public/y")
    assert status == 200 and upstream_headers(echo)["x-var-ssl-client-verify"].startswith("FAILED:")
    status, _ = await run(tls_get, tgw.port, tgw.context(cert="intruder"), "skip.test", "/private")
    assert status == 400
    status, echo = await run(tls_get, tgw.port, tgw.context(cert="client"), "skip.test", "/private")
    assert status == 200 and upstream_headers(echo)["x-var-ssl-client-verify"] == "SUCCESS"
    assert "client certificate was not present" in tgw.gw.log()


# --- listeners ------------------------------------------------------------------------------------

async def test_every_worker_serves_tls_and_sighup_moves_the_listener(tmp_path: Path, pki: PKI,
                                                                     echo_up: Upstream) -> None:
    g = start_tls_gateway(tmp_path, pki, echo_up, workers=2)
    try:
        ctx = g.context()
        pids = {w["pid"] for w in g.gw.control("/v1/config")["workers"]}
        assert len(pids) == 2
        for _ in range(20):     # the kernel spreads new connections over both workers' sockets
            status, _ = await run(tls_get, g.port, ctx, "a.test")
            assert status == 200
        new_port = free_port()
        conf_path = g.gw.dir / "config.yaml"
        conf = yaml.safe_load(conf_path.read_text())
        conf["apisix"]["ssl"]["listen"] = [{"ip": "127.0.0.1", "port": new_port}]
        conf_path.write_text(yaml.safe_dump(conf))
        g.gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while {w["pid"] for w in g.gw.control("/v1/config")["workers"]} & pids:
            assert time.monotonic() < deadline, "workers not replaced"
            await asyncio.sleep(0.1)
        assert subject_cn(await run(handshake, new_port, ctx, "a.test")).startswith("a.test")
        deadline = time.monotonic() + 20
        while True:     # the old address closes once the old generation has drained
            try:
                await run(handshake, g.port, ctx, "a.test")
            except (ConnectionRefusedError, ssl.SSLError, ConnectionResetError):
                break
            assert time.monotonic() < deadline, "old TLS port still served"
            await asyncio.sleep(0.1)
    finally:
        g.gw.stop()


async def test_tls_port_in_use_fails_the_start(tmp_path: Path, pki: PKI) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(AssertionError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_gateway(tmp_path, {"routes": []},
                          node={"apisix": {"ssl": {"enable": True, "listen": [{"ip": "127.0.0.1", "port": port}]}}})


async def test_bad_certificate_is_rejected_alone(tmp_path: Path, pki: PKI, echo_up: Upstream) -> None:
    g = start_tls_gateway(tmp_path, pki, echo_up)
    try:
        doc = config(pki, echo_up)
        doc["ssls"].append({"id": "broken", "sni": "broken.test", "cert": pki.pem("a-ec.crt"),
                            "key": pki.pem("wild.key")})    # not this certificate's key
        v = g.gw.version()
        g.gw.write_routes(doc)
        await run(g.gw.wait_applied, v + 1)
        deadline = time.monotonic() + TIMEOUT
        while "ssls id=broken: /cert: cannot load the certificate and its key" not in g.gw.log():
            assert time.monotonic() < deadline, g.gw.log()
            await asyncio.sleep(0.05)
        with pytest.raises(ssl.SSLError):
            await run(handshake, g.port, g.context(), "broken.test")
        assert subject_cn(await run(handshake, g.port, g.context(), "rot.test")) == "rot.test v1"
    finally:
        g.gw.stop()
