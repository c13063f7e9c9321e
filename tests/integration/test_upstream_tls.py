"""HTTPS upstreams with mTLS: the gateway's client certificate (``tls.client_cert`` /
``client_key``, or an ssl object of type client named by ``tls.client_cert_id``) and, with
``tls.verify``, the upstream's certificate checked against ``apisix.ssl.ssl_trusted_certificate``
and the SNI name, as APISIX does.

The upstream is a real TLS server on loopback that requires a client certificate and answers
with the subject it verified; clients see 200 or the gateway's 502.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from gwtools import http, start_gateway
from pki import PKI, make_ca, make_leaf

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("upstream-pki")
    make_ca(d, "ca", "Upstream CA")
    make_leaf(d, "server", "ca", "/CN=backend.test", dns=("backend.test", "localhost"))
    make_ca(d, "otherca", "Other CA")
    make_leaf(d, "imposter", "otherca", "/CN=backend.test", dns=("backend.test",))
    make_ca(d, "clientca", "Gateway Client CA")
    make_leaf(d, "gw", "clientca", "/O=Meshgate/CN=gateway one", client=True)
    make_ca(d, "strangerca", "Stranger CA")
    make_leaf(d, "stranger", "strangerca", "/CN=stranger", client=True)
    return PKI(d)


class MtlsBackend:
    """HTTPS on loopback, client certificate required (issued by ``clientca``)."""

    def __init__(self, pki: PKI, cert: str) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.path("clientca.crt"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(pki.path(f"{cert}.crt"), pki.path(f"{cert}.key"))
        self.ctx = ctx
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.snis: list[str | None] = []

    async def start(self) -> MtlsBackend:
        def sni_cb(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            self.snis.append(name)
        self.ctx.sni_callback = sni_cb
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            peer = w.get_extra_info("peercert") or {}
            subject = {k: v for rdn in peer.get("subject", ()) for k, v in rdn}
            body = json.dumps({"client_cn": subject.get("commonName"), "client_o": subject.get("organizationName")})
            w.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n{body}".encode())
            await w.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def route(id: str, port: int, **tls: Any) -> dict[str, Any]:
    ups: dict[str, Any] = {"type": "roundrobin", "scheme": "https", "nodes": {f"127.0.0.1:{port}": 1},
                           "pass_host": "rewrite", "upstream_host": "backend.test"}
    if tls:
        ups["tls"] = tls
    return {"id": id, "uri": f"/{id}", "upstream": ups}


async def test_client_certificates_and_verification(tmp_path: Path, pki: PKI) -> None:
    good = await MtlsBackend(pki, "server").start()
    imposter = await MtlsBackend(pki, "imposter").start()
    gw_pair = pki.pair("gw")
    routes = {
        "ssls": [{"id": "gw-client", "type": "client", **gw_pair},
                 {"id": "stranger", "type": "client", **pki.pair("stranger")}],
        "routes": [
            route("inline", good.port, client_cert=gw_pair["cert"], client_key=gw_pair["key"]),
            route("by-id", good.port, client_cert_id="gw-client"),
            route("none", good.port),
            route("stranger", good.port, client_cert_id="stranger"),
            route("verified", good.port, client_cert_id="gw-client", verify=True),
            route("imposter", imposter.port, client_cert_id="gw-client", verify=True),
            route("unverified-imposter", imposter.port, client_cert_id="gw-client"),
            route("missing-id", good.port, client_cert_id="nope"),
        ]}
    gw = start_gateway(tmp_path, routes, node={"apisix": {"ssl": {"enable": False,
                                                                  "ssl_trusted_certificate": pki.path("ca.crt")}}})
    try:
        for path in ("/inline", "/by-id", "/verified", "/unverified-imposter"):
            r = await http(gw.addr, "GET", path)
            assert r.status == 200, (path, r.status, r.body, gw.log()[-2000:])
            assert json.loads(r.body) == {"client_cn": "gateway one", "client_o": "Meshgate"}, path
        # the upstream refuses a gateway without a certificate, or with one it does not trust
        assert (await http(gw.addr, "GET", "/none")).status == 502
        assert (await http(gw.addr, "GET", "/stranger")).status == 502
        # tls.verify: a certificate from a CA outside ssl_trusted_certificate is refused
        assert (await http(gw.addr, "GET", "/imposter")).status == 502
        assert "backend.test" in good.snis            # the SNI is the upstream host
        # a client_cert_id naming no ssl object of type client: that upstream is refused (502 from
        # its route, as for any upstream that does not compile) and the log says why
        assert (await http(gw.addr, "GET", "/missing-id")).status == 502
        assert "no ssl object of type client with id nope" in gw.log()
    finally:
        gw.stop()
        await good.close()
        await imposter.close()
