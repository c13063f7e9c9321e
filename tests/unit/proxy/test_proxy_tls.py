"""proxy/tls.py: the SNI table (APISIX radixtree_sni semantics), per-object contexts and their
reuse across config versions, the listener's handshake decisions (in memory, no sockets), the
connection's nginx variables and per-request mTLS checks."""

from __future__ import annotations

import datetime
import ssl
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshgate.config.store import ConfigStore
from meshgate.model import Resource
from meshgate.proxy import build_runtime
from meshgate.proxy import tls as tlsmod
from meshgate.proxy.tls import NATIVE, SNITable, TLSListener, build_sni_table, normalize_sni, tls_connection

# --- certificates (in process) ----------------------------------------------------------------------


def _name(cn: str, **extra: str) -> x509.Name:
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME}
    attrs = [x509.NameAttribute(oids[k], v) for k, v in extra.items()]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class CA:
    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(1)
                     .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, cn: str, *, dns: tuple[str, ...] = (), client: bool = False, use_rsa: bool = False,
              serial: int = 0x1A2B, **extra: str) -> tuple[str, str]:
        key: Any = rsa.generate_private_key(65537, 2048) if use_rsa else ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(_name(cn, **extra)).issuer_name(self.name)
             .public_key(key.public_key()).serial_number(serial)
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                   else x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        if dns:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


@pytest.fixture(scope="module")
def pki() -> SimpleNamespace:
    ca = CA("Unit CA")
    client_ca = CA("Unit Client CA")
    return SimpleNamespace(
        ca=ca, client_ca=client_ca, other_ca=CA("Other CA"),
        server=lambda cn, **kw: ca.issue(cn, dns=(cn.split(" ")[0],), **kw),
    )


def _ssl(pki: SimpleNamespace, id: str, snis: Any, *, cn: str | None = None, **extra: Any) -> dict[str, Any]:
    names = [snis] if isinstance(snis, str) else snis
    cert, key = pki.server(cn or names[0].replace("*", "star"))
    return {"id": id, ("sni" if isinstance(snis, str) else "snis"): snis, "cert": cert, "key": key, **extra}


def _items(*values: dict[str, Any]) -> dict[str, Resource]:
    return {v["id"]: Resource(kind="ssls", id=v["id"], value=v) for v in values}


def _cn(ctx_entry: Any) -> str | None:
    return ctx_entry.id if ctx_entry is not None else None


# --- matching ---------------------------------------------------------------------------------------

def test_exact_wins_then_longest_wildcard_then_star(pki: SimpleNamespace) -> None:
    t = build_sni_table(_items(
        _ssl(pki, "star", "*"),
        _ssl(pki, "wild", "*.foo.com"),
        _ssl(pki, "deeper", "*.b.foo.com"),
        _ssl(pki, "exact", "a.foo.com"),
        _ssl(pki, "both", ["bar.com", "*.bar.com"]),
    ))
    assert not t.errors
    m = lambda s: _cn(t.match(s))  # noqa: E731
    assert m("a.foo.com") == "exact"
    assert m("x.foo.com") == "wild"
    assert m("x.b.foo.com") == "deeper"
    assert m("bar.com") == "both" and m("q.bar.com") == "both"
    assert m("unrelated.org") == "star"
    # the longest wildcard decides alone: x.y.foo.com matched *.foo.com, which covers one label
    # only, so the handshake fails although '*' would cover it (radixtree_sni.lua)
    assert m("x.y.foo.com") is None
    assert m("foo.com") == "star"              # '*.foo.com' needs a label in front


def test_one_label_wildcards_without_star(pki: SimpleNamespace) -> None:
    t = build_sni_table(_items(_ssl(pki, "w", "*.test2.com"), _ssl(pki, "p", "*foo.com")))
    assert _cn(t.match("www.test2.com")) == "w"
    assert t.match("aa.bb.test2.com") is None          # t/router/radixtree-sni.t TEST 11
    assert t.match("test2.com") is None
    # '*foo.com' (the schema allows it): any run of characters without a dot, none included
    assert _cn(t.match("foo.com")) == "p" and _cn(t.match("barfoo.com")) == "p"
    assert t.match("x.foo.com") is None


def test_names_are_case_insensitive_without_trailing_dot(pki: SimpleNamespace) -> None:
    t = build_sni_table(_items(_ssl(pki, "u", "*.TesT2.com."), _ssl(pki, "v", ["A.com"])))
    assert _cn(t.match(normalize_sni("WWW.test2.COM."))) == "u"
    assert _cn(t.match(normalize_sni("a.com"))) == "v"


def test_disabled_client_and_duplicate_objects(pki: SimpleNamespace) -> None:
    first, second = _ssl(pki, "1", "dup.test"), _ssl(pki, "2", "dup.test")
    cert, key = pki.client_ca.issue("client", client=True)
    t = build_sni_table(_items(first, second, _ssl(pki, "off", "off.test", status=0),
                               {"id": "c", "type": "client", "sni": "client.test", "cert": cert, "key": key}))
    assert _cn(t.match("dup.test")) == "1"       # the first object naming it wins
    assert t.match("off.test") is None and t.match("client.test") is None
    assert set(t.entries) == {"1", "2"}


def test_bad_objects_are_rejected_alone(pki: SimpleNamespace) -> None:
    good = _ssl(pki, "good", "good.test")
    cert, _ = pki.server("bad.test")
    _, other_key = pki.server("other.test")
    t = build_sni_table(_items(
        good,
        {"id": "mismatch", "sni": "bad.test", "cert": cert, "key": other_key},
        {"id": "garbage", "sni": "g.test", "cert": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n" * 3,
         "key": other_key},
        {**_ssl(pki, "pairs", "p.test"), "certs": [cert], "keys": [other_key]},
        {**_ssl(pki, "ca", "ca.test"), "client": {"ca": "not a certificate" * 10}},
        {**_ssl(pki, "re", "re.test"), "client": {"ca": pki.client_ca.pem, "skip_mtls_uri_regex": ["("]}},
        {**_ssl(pki, "vault", "v.test"), "cert": "$secret://vault/1/cert"},
        {**_ssl(pki, "env", "e.test"), "key": "$env://MESHGATE_TEST_UNSET_KEY"},
    ))
    assert list(t.entries) == ["good"]
    got = {(e.id, e.pointer) for e in t.errors}
    assert got == {("mismatch", "/cert"), ("garbage", "/cert"), ("pairs", "/certs/0"), ("ca", "/client/ca"),
                   ("re", "/client/skip_mtls_uri_regex/0"), ("vault", "/cert"), ("env", "/key")}
    assert all(e.kind == "ssls" for e in t.errors)
    msgs = {e.id: e.message for e in t.errors}
    assert msgs["mismatch"].startswith("cannot load the certificate and its key")
    assert "only $env://NAME" in msgs["vault"] and "MESHGATE_TEST_UNSET_KEY is not set" in msgs["env"]


def test_env_references(pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = pki.server("env.test")
    monkeypatch.setenv("MG_CERT", cert)
    monkeypatch.setenv("MG_KEY", key)
    t = build_sni_table(_items({"id": "e", "sni": "env.test", "cert": "$env://MG_CERT", "key": "$ENV://MG_KEY"}))
    assert not t.errors and _cn(t.match("env.test")) == "e"


def test_entries_are_reused_by_identity(pki: SimpleNamespace) -> None:
    a, b = _ssl(pki, "a", "a.test"), _ssl(pki, "b", "b.test")
    t1 = build_sni_table(_items(a, b))
    b2 = dict(b)
    t2 = build_sni_table(_items(a, b2), previous=t1)
    assert t2.entries["a"] is t1.entries["a"]                 # same value object: same context
    assert t2.entries["b"] is not t1.entries["b"]             # a new value: rebuilt
    assert t2.entries["b"].ctx is not t1.entries["b"].ctx


def test_runtime_rebuilds_the_table_only_when_ssls_change(pki: SimpleNamespace) -> None:
    store = ConfigStore()
    store.replace_all({"ssls": {"1": _ssl(pki, "1", "one.test")},
                       "routes": {"r": {"id": "r", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}}}})
    rt1 = build_runtime(store.snapshot)
    assert rt1.tls is not None and _cn(rt1.tls.match("one.test")) == "1"
    store.replace_all({"ssls": {"1": store.snapshot.get("ssls", "1").value},   # type: ignore[union-attr]
                       "routes": {"r": {"id": "r", "uri": "/x", "upstream": {"nodes": {"127.0.0.1:1": 1}}}}})
    rt2 = build_runtime(store.snapshot, previous=rt1)
    assert rt2.tls is rt1.tls
    store.replace_all({"ssls": {"1": store.snapshot.get("ssls", "1").value,  # type: ignore[union-attr]
                                "2": _ssl(pki, "2", "two.test")},
                       "routes": {"r": {"id": "r", "uri": "/x", "upstream": {"nodes": {"127.0.0.1:1": 1}}}}})
    rt3 = build_runtime(store.snapshot, previous=rt2)
    assert rt3.tls is not rt2.tls and rt3.tls is not None
    assert rt3.tls.entries["1"] is rt1.tls.entries["1"] and _cn(rt3.tls.match("two.test")) == "2"


def test_bad_certificate_is_a_runtime_error(pki: SimpleNamespace) -> None:
    store = ConfigStore()
    cert, _ = pki.server("x.test")
    _, key = pki.server("y.test")
    store.replace_all({"ssls": {"1": {"id": "1", "sni": "x.test", "cert": cert, "key": key}}})
    rt = build_runtime(store.snapshot)
    assert [str(e) for e in rt.errors] == [
        "ssls id=1: /cert: cannot load the certificate and its key: KEY_VALUES_MISMATCH"]


# --- handshakes in memory ---------------------------------------------------------------------------

def _handshake(listener: TLSListener, client: ssl.SSLContext, sni: str | None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Drive one handshake between two SSLObjects over memory BIOs; raise the first SSLError,
    then make the client send one byte so a TLS 1.3 server finishes verifying the client."""
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(ci, co, server_hostname=sni)
    s = listener.context.wrap_bio(si, so, server_side=True)
    done = {id(c): False, id(s): False}
    for _ in range(10):
        for side, out, peer_in in ((c, co, si), (s, so, ci)):
            if not done[id(side)]:
                try:
                    side.do_handshake()
                    done[id(side)] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done.values()):
            break
    c.write(b"x")
    si.write(co.read())
    assert s.read(1) == b"x"
    return c, s


def _client(pki: SimpleNamespace, *, cert: tuple[str, str] | None = None,
            max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki.ca.pem)
    if cert is not None:
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            cp, kp = os.path.join(d, "c"), os.path.join(d, "k")
            open(cp, "w").write(cert[0])
            open(kp, "w").write(cert[1])
            ctx.load_cert_chain(cp, kp)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def _peer_cn(obj: ssl.SSLObject) -> str:
    return next(v for rdn in obj.getpeercert()["subject"] for k, v in rdn if k == "commonName")


@pytest.fixture(scope="module")
def table(pki: SimpleNamespace) -> SNITable:
    mtls = _ssl(pki, "mtls", "mtls.test", client={"ca": pki.client_ca.pem})
    skip = _ssl(pki, "skip", "skip.test", client={"ca": pki.client_ca.pem, "skip_mtls_uri_regex": ["^/public"]})
    t = build_sni_table(_items(_ssl(pki, "a", "a.test"), _ssl(pki, "v13", "v13.test", ssl_protocols=["TLSv1.3"]),
                               _ssl(pki, "v12", "v12.test", ssl_protocols=["TLSv1.2"]), mtls, skip))
    assert not t.errors
    return t


def test_native_layer_is_available_here() -> None:
    assert NATIVE.ok, NATIVE.why


def test_listener_picks_the_context_by_sni(pki: SimpleNamespace, table: SNITable) -> None:
    lst = TLSListener(lambda: table)
    c, s = _handshake(lst, _client(pki), "a.test")
    assert _peer_cn(c) == "a.test" and s.selected_alpn_protocol() is None
    conn = tls_connection(s)
    assert conn.entry is table.entries["a"] and conn.sni == "a.test" and conn.server_name == "a.test"
    assert conn.var("ssl_client_verify") == "NONE" and conn.var("ssl_client_s_dn") is None
    assert conn.var("ssl_protocol") == "TLSv1.3" and conn.var("ssl_session_reused") == "."
    with pytest.raises(ssl.SSLError):
        _handshake(lst, _client(pki), "b.test")


def test_listener_reads_the_current_table(pki: SimpleNamespace, table: SNITable) -> None:
    current: list[SNITable | None] = [None]
    lst = TLSListener(lambda: current[0])
    with pytest.raises(ssl.SSLError):
        _handshake(lst, _client(pki), "a.test")
    current[0] = table
    _handshake(lst, _client(pki), "a.test")


def test_fallback_sni(pki: SimpleNamespace, table: SNITable) -> None:
    nocheck = _client(pki)
    nocheck.check_hostname = False
    with pytest.raises(ssl.SSLError):
        _handshake(TLSListener(lambda: table), nocheck, None)
    c, s = _handshake(TLSListener(lambda: table, fallback_sni="A.TEST."), nocheck, None)
    assert _peer_cn(c) == "a.test"
    conn = tls_connection(s)
    assert conn.sni == "a.test" and conn.server_name is None and conn.var("ssl_server_name") is None


def test_versions_node_and_per_object(pki: SimpleNamespace, table: SNITable) -> None:
    lst = TLSListener(lambda: table)          # node default: TLSv1.2 TLSv1.3
    _, s = _handshake(lst, _client(pki, max_version=ssl.TLSVersion.TLSv1_2), "a.test")
    assert s.version() == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        _handshake(lst, _client(pki, max_version=ssl.TLSVersion.TLSv1_2), "v13.test")
    # an object allowing TLS 1.2 only negotiates 1.2 with a 1.3-capable client (not a refusal)
    _, s = _handshake(lst, _client(pki), "v12.test")
    assert s.version() == "TLSv1.2"
    only13 = TLSListener(lambda: table, ssl_protocols="TLSv1.3")
    with pytest.raises(ssl.SSLError):
        _handshake(only13, _client(pki, max_version=ssl.TLSVersion.TLSv1_2), "a.test")
    _, s = _handshake(only13, _client(pki, max_version=ssl.TLSVersion.TLSv1_2), "v12.test")  # the object's wins
    assert s.version() == "TLSv1.2"


@pytest.mark.parametrize("maxv", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mtls_handshake_and_variables(pki: SimpleNamespace, table: SNITable, maxv: ssl.TLSVersion) -> None:
    lst = TLSListener(lambda: table)
    with pytest.raises(ssl.SSLError):
        _handshake(lst, _client(pki, max_version=maxv), "mtls.test")
    with pytest.raises(ssl.SSLError):
        _handshake(lst, _client(pki, max_version=maxv, cert=pki.other_ca.issue("x", client=True)), "mtls.test")
    cert = pki.client_ca.issue("client one", client=True, serial=0xAB, C="US", O="Acme, Inc.")
    _, s = _handshake(lst, _client(pki, max_version=maxv, cert=cert), "mtls.test")
    conn = tls_connection(s)
    assert conn.var("ssl_client_verify") == "SUCCESS"
    assert conn.var("ssl_client_s_dn") == r"CN=client one,O=Acme\, Inc.,C=US"
    assert conn.var("ssl_client_i_dn") == "CN=Unit Client CA"
    assert conn.var("ssl_client_serial") == "AB"
    assert len(conn.var("ssl_client_fingerprint") or "") == 40
    assert (conn.var("ssl_client_raw_cert") or "").startswith("-----BEGIN CERTIFICATE-----")
    assert (conn.var("ssl_client_escaped_cert") or "").startswith("-----BEGIN%20CERTIFICATE-----")
    assert (conn.var("ssl_client_v_end") or "").endswith(" GMT") and conn.var("ssl_client_v_remain") in ("1", "2")


def _req(path: str, host: str) -> SimpleNamespace:
    return SimpleNamespace(path=path, host=host)


def test_per_request_checks(pki: SimpleNamespace, table: SNITable) -> None:
    lst = TLSListener(lambda: table)
    good = pki.client_ca.issue("client", client=True)
    bad = pki.other_ca.issue("intruder", client=True)
    # skip_mtls_uri_regex: a certificate is asked for, not required; the URI decides
    conn = tls_connection(_handshake(lst, _client(pki), "skip.test")[1])
    assert conn.var("ssl_client_verify") == "NONE"
    assert conn.allows(table, _req("/public/x", "skip.test")) and not conn.allows(table, _req("/x", "skip.test"))
    conn = tls_connection(_handshake(lst, _client(pki, cert=bad), "skip.test")[1])
    assert (conn.var("ssl_client_verify") or "").startswith("FAILED:")
    assert conn.allows(table, _req("/public", "skip.test")) and not conn.allows(table, _req("/x", "skip.test"))
    conn = tls_connection(_handshake(lst, _client(pki, cert=good), "skip.test")[1])
    assert conn.allows(table, _req("/x", "skip.test"))
    # the Host of an mTLS object needs that SNI (and its verified certificate)
    conn = tls_connection(_handshake(lst, _client(pki), "a.test")[1])
    assert conn.allows(table, _req("/", "a.test")) and conn.allows(table, _req("/", "elsewhere.test"))
    assert not conn.allows(table, _req("/", "mtls.test")) and not conn.allows(table, _req("/x", "skip.test"))
    conn = tls_connection(_handshake(lst, _client(pki, cert=good), "mtls.test")[1])
    assert conn.allows(table, _req("/", "mtls.test")) and not conn.allows(table, _req("/x", "skip.test"))
    # a connection made before its SNI turned mTLS is not let through by the new config
    plain = build_sni_table(_items(_ssl(pki, "mtls", "mtls.test")))
    conn = tls_connection(_handshake(TLSListener(lambda: plain), _client(pki), "mtls.test")[1])
    assert conn.allows(plain, _req("/", "mtls.test")) and not conn.allows(table, _req("/", "mtls.test"))


def test_without_the_native_layer_mtls_and_versions_are_refused(pki: SimpleNamespace,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsmod.NATIVE, "ok", False)
    monkeypatch.setattr(tlsmod.NATIVE, "why", "test")
    t = build_sni_table(_items(_ssl(pki, "m", "m.test", client={"ca": pki.client_ca.pem}),
                               _ssl(pki, "p", "p.test", ssl_protocols=["TLSv1.3"]), _ssl(pki, "a", "a.test")))
    assert list(t.entries) == ["a"]
    assert {(e.id, e.pointer) for e in t.errors} == {("m", "/client"), ("p", "/ssl_protocols")}
    # the listener then applies the node's versions as a range
    lst = TLSListener(lambda: t, ssl_protocols="TLSv1.3")
    assert lst.context.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        _handshake(lst, _client(pki, max_version=ssl.TLSVersion.TLSv1_2), "a.test")
    _handshake(lst, _client(pki), "a.test")


def test_rsa_and_ecdsa_in_one_context(pki: SimpleNamespace) -> None:
    rsa_cert, rsa_key = pki.ca.issue("dual.test", dns=("dual.test",), use_rsa=True)
    ec_cert, ec_key = pki.ca.issue("dual.test", dns=("dual.test",))
    t = build_sni_table(_items({"id": "d", "sni": "dual.test", "cert": rsa_cert, "key": rsa_key,
                                "certs": [ec_cert], "keys": [ec_key]}))
    lst = TLSListener(lambda: t)
    for kind, key_type in (("ECDSA", ec.EllipticCurvePublicKey), ("RSA", rsa.RSAPublicKey)):
        c = _client(pki, max_version=ssl.TLSVersion.TLSv1_2)
        c.set_ciphers(f"ECDHE-{kind}-AES128-GCM-SHA256")    # what the client can verify decides
        der = _handshake(lst, c, "dual.test")[0].getpeercert(True)
        assert der is not None and isinstance(x509.load_der_x509_certificate(der).public_key(), key_type)
