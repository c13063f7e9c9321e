"""etcd with user/password auth and with TLS (server certificate + client certificate).

Real etcd servers configured as operators do; the gateway follows them through the same
node config keys as APISIX (``deployment.etcd.user/password/tls``,
``apisix.ssl.ssl_trusted_certificate``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from etcdpeer import ETCD_BIN, EtcdCluster
from gwtools import Upstream, free_port, http, start_gateway
from meshgate.config.etcd import EtcdClient, EtcdUnavailable

ETCDCTL = str(Path(ETCD_BIN).parent / "etcdctl")


@pytest.fixture
def up(echo_up: Upstream) -> Upstream:
    return echo_up


def _route(rid: str, uri: str, up: Upstream) -> bytes:
    return json.dumps({"id": rid, "uri": uri, "upstream": {"type": "roundrobin",
                                                           "nodes": {f"127.0.0.1:{up.port}": 1}}}).encode()


def _ctl(url: str, *args: str, user: str | None = None) -> None:
    cmd = [ETCDCTL, "--endpoints", url, *args]
    if user:
        cmd[1:1] = ["--user", user]
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


async def test_user_password_auth_and_token_renewal(tmp_path: Path, up: Upstream) -> None:
    # tokens live one second: the client must re-authenticate by itself
    cluster = EtcdCluster.start(tmp_path / "etcd", extra=["--auth-token", "simple", "--auth-token-ttl", "1"])
    url = cluster.url
    try:
        _ctl(url, "user", "add", "root:rootpw")
        _ctl(url, "user", "add", "gw:gwpw")
        _ctl(url, "role", "add", "gateway")
        _ctl(url, "role", "grant-permission", "gateway", "--prefix=true", "readwrite", "/apisix/")
        _ctl(url, "user", "grant-role", "gw", "gateway")
        _ctl(url, "auth", "enable")

        anon = EtcdClient([url], timeout=5)
        with pytest.raises(Exception):
            await anon.put("/apisix/routes/x", b"{}")
        await anon.close()
        wrong = EtcdClient([url], user="gw", password="nope", timeout=5)
        with pytest.raises(EtcdUnavailable) as err:
            await wrong.get("/apisix/routes/x")
        assert "authentication failed" in str(err.value)
        await wrong.close()

        client = EtcdClient([url], user="gw", password="gwpw", timeout=5)
        await client.put("/apisix/routes/1", _route("1", "/one", up))
        await asyncio.sleep(2.5)       # the token has expired
        await client.put("/apisix/routes/2", _route("2", "/two", up))
        assert (await client.get("/apisix/routes/2")) is not None

        gw = start_gateway(tmp_path / "gw", {"routes": []}, workers=2, node={"deployment": {
            "role": "data_plane", "role_data_plane": {"config_provider": "etcd"},
            "etcd": {"host": [url], "prefix": "/apisix", "user": "gw", "password": "gwpw"}}})
        try:
            assert (await http(gw.addr, "GET", "/one")).status == 200
            await asyncio.sleep(2.5)   # the gateway's token expired too: its watch still follows
            await client.put("/apisix/routes/3", _route("3", "/three", up))
            for _ in range(200):
                if (await http(gw.addr, "GET", "/three")).status == 200:
                    break
                await asyncio.sleep(0.05)
            assert (await http(gw.addr, "GET", "/three")).status == 200
        finally:
            gw.stop()
        await client.close()
    finally:
        cluster.stop()


def _pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d, timeout=30)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=meshgate test CA", "-keyout", "ca.key", "-out", "ca.pem")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.cnf", "-out", f"{name}.pem")
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


async def test_tls_with_client_certificates(tmp_path: Path, up: Upstream) -> None:
    pki = _pki(tmp_path / "pki")
    port, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [ETCD_BIN, "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
         f"http://127.0.0.1:{peer}", "--initial-cluster", f"default=http://127.0.0.1:{peer}",
         "--cert-file", str(pki["server.pem"]), "--key-file", str(pki["server.key"]),
         "--client-cert-auth", "--trusted-ca-file", str(pki["ca.pem"]), "--log-level", "warn"],
        stdout=open(tmp_path / "etcd.log", "wb"), stderr=subprocess.STDOUT)
    try:
        client = EtcdClient([url], ca_file=str(pki["ca.pem"]), cert_file=str(pki["client.pem"]),
                            key_file=str(pki["client.key"]), timeout=5)
        for _ in range(100):
            try:
                await client.put("/apisix/routes/1", _route("1", "/one", up))
                break
            except EtcdUnavailable:
                await asyncio.sleep(0.1)
        assert (await client.get("/apisix/routes/1")) is not None
        # without a client certificate the server refuses the connection
        bare = EtcdClient([url], ca_file=str(pki["ca.pem"]), timeout=3)
        with pytest.raises(EtcdUnavailable):
            await bare.get("/apisix/routes/1")
        await bare.close()
        # a server certificate from an unknown CA is refused
        other = _pki(tmp_path / "other")
        wrong_ca = EtcdClient([url], ca_file=str(other["ca.pem"]), cert_file=str(pki["client.pem"]),
                              key_file=str(pki["client.key"]), timeout=3)
        with pytest.raises(EtcdUnavailable):
            await wrong_ca.get("/apisix/routes/1")
        await wrong_ca.close()

        gw = start_gateway(tmp_path / "gw", {"routes": []}, workers=2, node={
            "apisix": {"ssl": {"enable": False, "ssl_trusted_certificate": str(pki["ca.pem"])}},
            "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "etcd"},
                           "etcd": {"host": [url], "prefix": "/apisix",
                                    "tls": {"cert": str(pki["client.pem"]), "key": str(pki["client.key"])}}}})
        try:
            assert (await http(gw.addr, "GET", "/one")).status == 200
            await client.put("/apisix/routes/2", _route("2", "/two", up))
            for _ in range(200):
                if (await http(gw.addr, "GET", "/two")).status == 200:
                    break
                await asyncio.sleep(0.05)
            assert (await http(gw.addr, "GET", "/two")).status == 200
        finally:
            gw.stop()
        await client.close()
    finally:
        proc.kill()
        proc.wait(10)
