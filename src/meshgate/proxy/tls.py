"""TLS termination: certificates chosen by SNI from the ``ssls`` objects of the current config.

Theory of operation
-------------------
APISIX terminates TLS with one nginx ``server`` whose certificate is chosen per handshake
(``apisix/ssl/router/radixtree_sni.lua``, ``apisix/ssl.lua``, ``apisix/init.lua``
``ssl_client_hello_phase``): the client's SNI picks one server ``ssls`` object, whose
certificates (``cert``/``key`` plus the ``certs``/``keys`` pairs, e.g. RSA and ECDSA),
``ssl_protocols`` and ``client`` (mTLS) settings apply to that connection.  Here:

* **Per config version** (``build_runtime`` -> :func:`build_sni_table`): one
  ``ssl.SSLContext`` per enabled server ssl object holding all its certificate pairs (OpenSSL
  then picks RSA or ECDSA from the client's signature algorithms) and its client CA; the
  contexts of ssl objects whose value is the very object of the previous version are reused.
  The :class:`SNITable` indexes them as APISIX's radixtree does on reversed SNIs: an exact
  name wins over a wildcard, the longest wildcard suffix wins among wildcards, a wildcard
  ``*.example.com`` covers exactly one label (``a.b.example.com`` fails the handshake even
  when a shorter wildcard would match, as APISIX's post-match check does), ``*`` covers
  everything.  Names are compared lower-cased without a trailing dot.
* **Per listener** (:class:`TLSListener`): a base context with no certificate of its own.
  Its SNI callback looks the client's name (or ``apisix.ssl.fallback_sni`` when the client
  sent none) up in the table of the worker's *current* Runtime and switches the handshake to
  that object's context, so a new certificate applies to the next handshake and established
  connections keep theirs.  No match: the handshake fails, as in APISIX.
* **What Python's ssl module does not expose** (:class:`_Native`, ctypes on the very libssl
  the ``_ssl`` module uses, after a self-check; without it, ssl objects that need it are
  rejected rather than served unprotected):

  - switching an ``SSL`` to another ``SSL_CTX`` keeps the verify mode and depth it was
    created with, so the per-SNI client verification is set on the ``SSL`` in the callback,
    as nginx does in its own servername callback;
  - the TLS version is chosen before the SNI callback runs, so ``ssl_protocols`` (the
    node's, or the ssl object's, which overrides it as APISIX's ``set_protocols`` does) is
    applied in a ClientHello callback, as APISIX does in ``ssl_client_hello_by_lua``;
  - session resumption is off (no tickets, no session cache): a session established under
    one SNI must never skip the client verification of another (APISIX checks the session's
    SNI for the same reason, ``verify_tls_session_resumption``).
* **Per request** (:meth:`TLSConnection.allows`, APISIX ``verify_https_client``): with
  ``client.skip_mtls_uri_regex`` the handshake asks for a certificate without requiring one,
  and a URI matching none of the patterns needs a verified certificate; and a request whose
  Host names an mTLS-protected ssl object must have come in with that very SNI (no
  domain fronting past mTLS).  Both answer 400.

With ``skip_mtls_uri_regex``, as in APISIX, a certificate that fails verification does not
fail the handshake: ``$ssl_client_verify`` says ``FAILED:<reason>`` and only the URIs the
patterns skip are served.  ``$env://NAME`` references in ``cert``/``key``/``client.ca`` are
resolved; ``$secret://`` (vault & co.) ones are not: such an object is rejected (logged).
Sessions are not resumed (APISIX resumes, then checks the resumed session's SNI): every
connection pays a full handshake.  A refused handshake closes the connection without the TLS
alert (asyncio's and uvloop's SSL transports drop what OpenSSL queued when the handshake
fails).  ``skip_mtls_uri_regex`` patterns are Python regular expressions searched in the
normalized path (APISIX: PCRE, ``ngx.re.match`` on ``$uri``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote

from ..errors import ConfigError
from ..model import Resource

__all__ = ["SNITable", "SSLEntry", "TLSListener", "TLSConnection", "build_sni_table", "tls_connection",
           "normalize_sni", "NATIVE", "TLS_VARS", "ALPN_H2", "ALPN_H1", "ALPN_NONE"]

log = logging.getLogger("meshgate.proxy")

# TLS versions as OpenSSL numbers them (SSL_version) and the option that disables each
_VERSIONS = {"TLSv1": (0x301, int(ssl.OP_NO_TLSv1)), "TLSv1.1": (0x302, int(ssl.OP_NO_TLSv1_1)),
             "TLSv1.2": (0x303, int(ssl.OP_NO_TLSv1_2)), "TLSv1.3": (0x304, int(ssl.OP_NO_TLSv1_3))}
_ALL_VERSIONS_OFF = sum(off for _, off in _VERSIONS.values())

# SSL_set_verify modes (openssl/ssl.h)
VERIFY_NONE, VERIFY_PEER, VERIFY_FAIL_IF_NO_PEER_CERT = 0, 1, 2
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_SESS_CACHE_OFF = 0
_TLSEXT_SERVER_NAME = 0


def normalize_sni(name: str) -> str:
    """APISIX ``ssl.lua`` server_name / ``ssl_filter``: lower-case, no trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def protocol_mask(names: Any) -> int:
    """The ``SSL_OP_NO_TLSv1*`` options that leave exactly ``names`` enabled."""
    off = _ALL_VERSIONS_OFF
    for n in names:
        v = _VERSIONS.get(n)
        if v is not None:
            off &= ~v[1]
    return off


# --- what Python's ssl module does not expose ----------------------------------------------------

class _Native:
    """libssl calls on the ``SSL``/``SSL_CTX`` behind Python's ssl objects (ctypes).

    CPython's ``_ssl`` objects start with the OpenSSL pointer: ``PySSLContext`` is
    ``{PyObject_HEAD; SSL_CTX *ctx; ...}`` and ``PySSLSocket`` (an ``SSLObject``'s
    ``_sslobj``) is ``{PyObject_HEAD; PyObject *Socket; SSL *ssl; ...}``.  The layout is
    checked once against libssl itself before anything uses it; ``ok`` is False (with
    ``why``) when it cannot be, and the features that need it are refused.

    Loaded on first use (``ok``, ``why``, ``lib``...): a worker without TLS listeners or mTLS never
    imports ctypes nor builds the self-check's SSL context."""

    _LAZY = frozenset(("ok", "why", "lib", "verify_cb", "hello_cb", "accept_any", "no_cb"))
    ok: bool
    why: str
    lib: Any
    verify_cb: Any
    hello_cb: Any
    accept_any: Any
    no_cb: Any

    def __getattr__(self, name: str) -> Any:
        if name not in _Native._LAZY:
            raise AttributeError(name)
        self._init()
        return object.__getattribute__(self, name)

    def _init(self) -> None:
        import ctypes

        self.ok = False
        self.why = ""
        self.lib = None
        self.verify_cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
        self.hello_cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                         ctypes.c_void_p)
        # nginx's verify callback for "optional" verification: never fail the handshake, keep the
        # result for $ssl_client_verify (ngx_ssl_verify_callback)
        self.accept_any = self.verify_cb(lambda ok, store: 1)
        self.no_cb = self.verify_cb()
        try:
            self._load()
            self._self_check()
            self.ok = True
        except Exception as e:  # any failure only disables the features that need it
            self.why = f"{type(e).__name__}: {e}"

    def _load(self) -> None:
        if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13):
            raise RuntimeError(f"not a CPython 3.11-3.13 ({sys.implementation.name} {sys.version.split()[0]})")
        import _ssl
        import ctypes

        lib = ctypes.CDLL(_ssl.__file__)   # its symbols, and those of the libssl it was linked with
        vp, u64 = ctypes.c_void_p, ctypes.c_uint64
        for name, res, args in (
                ("SSL_CTX_get_verify_mode", ctypes.c_int, [vp]),
                ("SSL_CTX_ctrl", ctypes.c_long, [vp, ctypes.c_int, ctypes.c_long, vp]),
                ("SSL_CTX_set_client_hello_cb", None, [vp, self.hello_cb, vp]),
                ("SSL_get_SSL_CTX", vp, [vp]),
                ("SSL_is_server", ctypes.c_int, [vp]),
                ("SSL_set_verify", None, [vp, ctypes.c_int, self.verify_cb]),
                ("SSL_set_verify_depth", None, [vp, ctypes.c_int]),
                ("SSL_get_verify_result", ctypes.c_long, [vp]),
                ("SSL_get_options", u64, [vp]),
                ("SSL_set_options", u64, [vp, u64]),
                ("SSL_clear_options", u64, [vp, u64]),
                ("SSL_client_hello_get0_ext", ctypes.c_int,
                 [vp, ctypes.c_uint, ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)), ctypes.POINTER(ctypes.c_size_t)]),
                ("X509_verify_cert_error_string", ctypes.c_char_p, [ctypes.c_long])):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        self.lib = lib

    @staticmethod
    def ctx_ptr(ctx: ssl.SSLContext) -> int:
        import ctypes
        return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value or 0

    @staticmethod
    def ssl_ptr(obj: ssl.SSLObject) -> int:
        import ctypes
        inner = obj._sslobj  # type: ignore[attr-defined]
        return ctypes.c_void_p.from_address(id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)).value or 0

    def _self_check(self) -> None:
        lib = self.lib
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        p = self.ctx_ptr(ctx)
        for mode in (ssl.CERT_REQUIRED, ssl.CERT_NONE):
            ctx.verify_mode = mode
            if lib.SSL_CTX_get_verify_mode(p) != (3 if mode == ssl.CERT_REQUIRED else 0):
                raise RuntimeError("SSLContext layout check failed")
        obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
        s = self.ssl_ptr(obj)
        if lib.SSL_get_SSL_CTX(s) != p or lib.SSL_is_server(s) != 1:
            raise RuntimeError("SSLObject layout check failed")
        before = lib.SSL_get_options(s)
        lib.SSL_set_options(s, int(ssl.OP_NO_TLSv1_3))
        if not lib.SSL_get_options(s) & int(ssl.OP_NO_TLSv1_3):
            raise RuntimeError("SSL_set_options check failed")
        lib.SSL_clear_options(s, ~before & 0xFFFFFFFFFFFFFFFF)

    # -- used by the listener --------------------------------------------------------------------
    def no_session_cache(self, ctx: ssl.SSLContext) -> None:
        self.lib.SSL_CTX_ctrl(self.ctx_ptr(ctx), _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)

    def set_client_hello_cb(self, ctx: ssl.SSLContext, cb: Any) -> None:
        self.lib.SSL_CTX_set_client_hello_cb(self.ctx_ptr(ctx), cb, None)

    def hello_server_name(self, s: int) -> str | None:
        """The host_name of the ClientHello's server_name extension (RFC 6066 3)."""
        import ctypes
        out = ctypes.POINTER(ctypes.c_ubyte)()
        n = ctypes.c_size_t()
        if not self.lib.SSL_client_hello_get0_ext(s, _TLSEXT_SERVER_NAME, ctypes.byref(out), ctypes.byref(n)):
            return None
        data = ctypes.string_at(out, n.value)
        if len(data) < 2:
            return None
        end = min(len(data), 2 + int.from_bytes(data[:2], "big"))
        p = 2
        while p + 3 <= end:
            size = int.from_bytes(data[p + 1:p + 3], "big")
            if data[p] == 0:
                return data[p + 3:p + 3 + size].decode("ascii", "replace")
            p += 3 + size
        return None

    def set_protocols(self, s: int, off: int) -> None:
        self.lib.SSL_clear_options(s, _ALL_VERSIONS_OFF)
        if off:
            self.lib.SSL_set_options(s, off)

    def set_verify(self, obj: ssl.SSLObject, mode: int, depth: int) -> None:
        s = self.ssl_ptr(obj)
        self.lib.SSL_set_verify(s, mode, self.accept_any if mode == VERIFY_PEER else self.no_cb)
        self.lib.SSL_set_verify_depth(s, depth)

    def verify_result(self, obj: ssl.SSLObject) -> tuple[int, str]:
        code = int(self.lib.SSL_get_verify_result(self.ssl_ptr(obj)))
        text = self.lib.X509_verify_cert_error_string(code) if code else b"ok"
        return code, (text or b"").decode("latin-1")


NATIVE = _Native()


# --- certificates ---------------------------------------------------------------------------------

@contextmanager
def _pem_path(text: str) -> Iterator[str]:
    """A path OpenSSL can read ``text`` from: an anonymous memory file (keys never touch a
    disk), else a private temporary file removed at once."""
    data = text.encode("latin-1")
    try:
        fd = os.memfd_create("meshgate-pem", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    import tempfile
    d = tempfile.mkdtemp(prefix="meshgate-pem-")
    path = os.path.join(d, "pem")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        try:
            os.unlink(path)
        finally:
            os.rmdir(d)


def _no_password() -> bytes:
    return b""   # an encrypted key fails to load instead of prompting on a terminal


_ENV_REF = re.compile(r"^\$(?:env|ENV)://([^/]+)$")


def _resolve(value: Any, pointer: str, id: str) -> str:
    """A PEM value, or an ``$env://NAME`` reference to one (APISIX secret references)."""
    if not isinstance(value, str):
        raise ConfigError(pointer, "expected a PEM string", kind="ssls", id=id)
    if value.startswith("$"):
        m = _ENV_REF.match(value)
        if m is None:
            raise ConfigError(pointer, f"secret references like {value.split('//')[0]}// are not supported "
                                       "(only $env://NAME)", kind="ssls", id=id)
        got = os.environ.get(m.group(1))
        if not got:
            raise ConfigError(pointer, f"environment variable {m.group(1)} is not set", kind="ssls", id=id)
        return got
    return value


# ALPN offers: HTTP listeners with apisix.enable_http2 (the default), without it, and the stream
# proxy's TLS listeners (no ALPN, as nginx's stream module: the bytes are relayed as they are)
ALPN_H2: tuple[str, ...] = ("h2", "http/1.1")
ALPN_H1: tuple[str, ...] = ("http/1.1",)
ALPN_NONE: tuple[str, ...] = ()


def _server_context(alpn: tuple[str, ...] = ALPN_H2) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # nginx with APISIX's defaults: no session tickets, no renegotiation, server cipher order
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass(slots=True, eq=False)
class SSLEntry:
    """One enabled server ssl object, compiled."""

    id: str
    value: Mapping[str, Any]                 # the config value it was built from (identity: reuse)
    ctx: ssl.SSLContext                      # offering ALPN_H2
    snis: tuple[str, ...]                    # normalized names and patterns
    verify: int = VERIFY_NONE                # SSL_set_verify mode for its handshakes
    depth: int = 1                           # client.depth (nginx ssl_verify_depth)
    skip: tuple[re.Pattern[str], ...] | None = None   # client.skip_mtls_uri_regex
    protocols_off: int | None = None         # ssl_protocols as SSL_OP_NO_* (None: the listener's)
    others: dict[tuple[str, ...], ssl.SSLContext] = field(default_factory=dict)   # other ALPN offers

    @property
    def mtls(self) -> bool:
        return self.verify != VERIFY_NONE

    def context(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        """The context offering ``alpn`` (OpenSSL takes the ALPN choice from the context the SNI
        callback switched to); other offers than ALPN_H2 are built on first use."""
        if alpn == ALPN_H2:
            return self.ctx
        ctx = self.others.get(alpn)
        if ctx is None:
            ctx = self.others[alpn] = _entry_context(self.id, self.value, alpn)
        return ctx


def _entry_context(id: str, v: Mapping[str, Any], alpn: tuple[str, ...]) -> ssl.SSLContext:
    """A context holding the certificates (and the client CA) of ssl object ``v``."""
    ctx = _server_context(alpn)
    pairs: list[tuple[str, Any, Any]] = [("/cert", v.get("cert"), v.get("key"))]
    certs, keys = v.get("certs") or [], v.get("keys") or []
    if len(certs) != len(keys):
        raise ConfigError("/keys", "mismatched number of certs and keys", kind="ssls", id=id)
    pairs += [(f"/certs/{i}", c, k) for i, (c, k) in enumerate(zip(certs, keys))]
    for ptr, cert, key in pairs:
        cert_pem = _resolve(cert, ptr, id)
        key_pem = _resolve(key, ptr.replace("cert", "key"), id)
        try:
            with _pem_path(cert_pem) as cp, _pem_path(key_pem) as kp:
                ctx.load_cert_chain(cp, kp, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise ConfigError(ptr, f"cannot load the certificate and its key: {_ssl_reason(e)}", kind="ssls",
                              id=id) from None
    client = v.get("client")
    if client:
        if not NATIVE.ok:
            raise ConfigError("/client", f"client certificate verification is not available here ({NATIVE.why})",
                              kind="ssls", id=id)
        try:
            ctx.load_verify_locations(cadata=_resolve(client.get("ca"), "/client/ca", id))
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError("/client/ca", f"cannot load the CA certificate: {_ssl_reason(e)}", kind="ssls",
                              id=id) from None
    return ctx


def _compile_entry(id: str, v: Mapping[str, Any]) -> SSLEntry:
    entry = SSLEntry(id=id, value=v, ctx=_entry_context(id, v, ALPN_H2), snis=_snis(v))
    client = v.get("client")
    if client:
        entry.depth = int(client.get("depth", 1))
        patterns = client.get("skip_mtls_uri_regex")
        if patterns:
            compiled = []
            for i, pat in enumerate(patterns):
                try:
                    compiled.append(re.compile(pat))
                except re.error as e:
                    raise ConfigError(f"/client/skip_mtls_uri_regex/{i}", f"invalid regular expression: {e}",
                                      kind="ssls", id=id) from None
            entry.skip = tuple(compiled)
            entry.verify = VERIFY_PEER    # ask, do not require: the URI decides (APISIX)
        else:
            entry.verify = VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT   # refused in the handshake
    if v.get("ssl_protocols") is not None:
        if not NATIVE.ok:
            raise ConfigError("/ssl_protocols", f"per-certificate TLS versions are not available here ({NATIVE.why})",
                              kind="ssls", id=id)
        entry.protocols_off = protocol_mask(v["ssl_protocols"])
    return entry


def _ssl_reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or e.strerror or str(e)
    return str(e)


def _snis(v: Mapping[str, Any]) -> tuple[str, ...]:
    names: list[Any] = list(v.get("snis") or []) or [v.get("sni")]
    return tuple(normalize_sni(n) for n in names if isinstance(n, str) and n)


@dataclass(slots=True, eq=False)
class SNITable:
    """The server certificates of one config version, indexed by SNI (see module doc)."""

    items: Mapping[str, Resource]                       # the Snapshot's ssls it was built from
    entries: dict[str, SSLEntry] = field(default_factory=dict)    # by ssl id
    exact: dict[str, SSLEntry] = field(default_factory=dict)
    wild: list[tuple[str, SSLEntry]] = field(default_factory=list)   # (suffix after '*', entry), longest first
    errors: list[ConfigError] = field(default_factory=list)
    has_mtls: bool = False
    has_protocols: bool = False

    def match(self, sni: str) -> SSLEntry | None:
        """The ssl object for a normalized SNI, as APISIX's radixtree_sni finds it."""
        e = self.exact.get(sni)
        if e is not None:
            return e
        for suffix, entry in self.wild:
            if sni.endswith(suffix):
                if not suffix:                                   # "*": every name
                    return entry
                # one label only; the longest wildcard decides alone (APISIX matched_sni check)
                return entry if "." not in sni[:len(sni) - len(suffix)] else None
        return None


def build_sni_table(ssls: Mapping[str, Resource], *, previous: SNITable | None = None) -> SNITable:
    """Compile the server ssl objects of a Snapshot; a bad one is rejected alone (``errors``).

    Objects whose value is the very object of ``previous`` keep their compiled entry."""
    table = SNITable(items=ssls)
    old = previous.entries if previous is not None else {}
    wild: dict[str, SSLEntry] = {}
    for id, res in ssls.items():
        v = res.value
        if v.get("type", "server") != "server" or v.get("status", 1) != 1:
            continue      # client certificates (upstream mTLS) and disabled objects serve nothing
        entry = old.get(id)
        if entry is None or entry.value is not v:
            try:
                entry = _compile_entry(id, v)
            except ConfigError as e:
                table.errors.append(e)
                log.error("ssl %s rejected: %s", id, e)
                continue
            except Exception as e:   # never let one bad item stop the compile
                err = ConfigError("/", f"cannot compile: {e}", kind="ssls", id=id)
                table.errors.append(err)
                log.exception("ssl %s rejected", id)
                continue
        table.entries[id] = entry
        table.has_mtls = table.has_mtls or entry.mtls
        table.has_protocols = table.has_protocols or entry.protocols_off is not None
        for name in entry.snis:
            if name.startswith("*"):
                wild.setdefault(name[1:], entry)      # the first object naming it wins
            else:
                table.exact.setdefault(name, entry)
    table.wild = sorted(wild.items(), key=lambda kv: -len(kv[0]))
    return table


# --- the listeners' side -------------------------------------------------------------------------

class TLSListener:
    """The base context of a worker's TLS listeners (see module doc)."""

    def __init__(self, current: Callable[[], SNITable | None], *, ssl_protocols: str = "TLSv1.2 TLSv1.3",
                 ssl_ciphers: str = "", fallback_sni: str | None = None, alpn: tuple[str, ...] = ALPN_H2) -> None:
        self.current = current
        self.fallback = normalize_sni(fallback_sni) if fallback_sni else None
        self.alpn = alpn
        names = ssl_protocols.split()
        self.protocols_off = protocol_mask(names)
        ctx = _server_context(alpn)
        if ssl_ciphers:
            ctx.set_ciphers(ssl_ciphers)
        self._hello: Any = None
        if NATIVE.ok:
            # every version OpenSSL allows here: the ClientHello callback applies the node's or
            # the ssl object's ssl_protocols to each handshake
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
            NATIVE.no_session_cache(ctx)
            self._hello = NATIVE.hello_cb(self._on_client_hello)
            NATIVE.set_client_hello_cb(ctx, self._hello)
        else:
            log.warning("TLS: %s; client certificates and per-certificate ssl_protocols are refused",
                        NATIVE.why)
            known = sorted(_VERSIONS[n][0] for n in names if n in _VERSIONS) or [0x303]
            ctx.minimum_version = ssl.TLSVersion(known[0])
            ctx.maximum_version = ssl.TLSVersion(known[-1])
        ctx.sni_callback = self._on_sni
        self.context = ctx

    def _on_client_hello(self, s: int | None, alert: Any, arg: Any) -> int:
        """APISIX ssl_client_hello_phase: the TLS versions of this handshake."""
        if not s:
            return 0
        try:
            off = self.protocols_off
            table = self.current()
            if table is not None and table.has_protocols:
                name = NATIVE.hello_server_name(s) or self.fallback
                entry = table.match(normalize_sni(name)) if name else None
                if entry is not None and entry.protocols_off is not None:
                    off = entry.protocols_off
            NATIVE.set_protocols(s, off)
            return 1
        except Exception:
            log.exception("TLS ClientHello callback failed")
            return 0

    def _on_sni(self, obj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> int | None:
        try:
            name = server_name or self.fallback
            if not name:
                log.warning("TLS handshake without SNI refused (no apisix.ssl.fallback_sni): the client "
                            "connects by IP or uses an outdated protocol")
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            sni = normalize_sni(name)
            table = self.current()
            entry = table.match(sni) if table is not None else None
            if entry is None:
                log.warning("failed to match any SSL certificate by SNI: %s", sni)
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            obj.context = entry.context(self.alpn)
            if entry.verify:
                NATIVE.set_verify(obj, entry.verify, entry.depth)
            setattr(obj, "_meshgate_tls", (entry, server_name, sni))
            return None
        except Exception:
            log.exception("TLS SNI callback failed")
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE


class TLSConnection:
    """What a request learns of its TLS connection: nginx's ``$ssl_*`` variables, and the
    per-request mTLS checks (:meth:`allows`)."""

    __slots__ = ("obj", "entry", "server_name", "sni", "_der", "_cert", "_verify")

    def __init__(self, obj: ssl.SSLObject, entry: SSLEntry | None, server_name: str | None,
                 sni: str | None) -> None:
        self.obj = obj
        self.entry = entry
        self.server_name = server_name    # as the client sent it ($ssl_server_name)
        self.sni = sni                    # normalized, fallback_sni when none was sent
        self._der: bytes | None = None
        self._cert: Any = None
        self._verify: str | None = None

    def var(self, name: str) -> str | None:
        f = TLS_VARS.get(name)
        return f(self) if f is not None else None

    def der(self) -> bytes | None:
        if self._der is None:
            self._der = self.obj.getpeercert(True) or b""
        return self._der or None

    def cert(self) -> Any:
        if self._cert is None:
            der = self.der()
            if der is None:
                return None
            from cryptography import x509

            self._cert = x509.load_der_x509_certificate(der)
        return self._cert

    def client_verify(self) -> str:
        """nginx ``$ssl_client_verify``: ``SUCCESS``, ``FAILED:<reason>`` or ``NONE``."""
        v = self._verify
        if v is None:
            if self.entry is None or not self.entry.mtls or self.der() is None or not NATIVE.ok:
                v = "NONE"
            else:
                code, text = NATIVE.verify_result(self.obj)
                v = "SUCCESS" if code == 0 else f"FAILED:{text}"
            self._verify = v
        return v

    def allows(self, table: SNITable | None, req: Any) -> bool:
        """APISIX ``verify_https_client`` (apisix/init.lua), before routing: False -> 400."""
        e = self.entry
        if e is not None and e.skip is not None and not any(p.search(req.path) for p in e.skip):
            if not self._verified():
                return False
        if table is None or not table.has_mtls:
            return True
        host = req.host
        he = table.match(host) if host else None
        if he is None or not he.mtls:
            return True
        if self.sni != host:
            # e.g. a '*.example.com' object: SNI a.example.com, Host b.example.com (APISIX refuses
            # it too), or an SNI without mTLS fronting an mTLS-protected Host
            log.error("client certificate verified with SNI %s, but the host is %s", self.sni, host)
            return False
        if he.skip is not None and any(p.search(req.path) for p in he.skip):
            return True
        return self._verified()

    def _verified(self) -> bool:
        res = self.client_verify()
        if res == "SUCCESS":
            return True
        if res == "NONE":
            log.error("client certificate was not present")
        else:
            log.error("client certificate verification is not passed: %s", res)
        return False


def tls_connection(obj: ssl.SSLObject) -> TLSConnection:
    """The TLS identity of a connection whose handshake :class:`TLSListener` completed."""
    got = getattr(obj, "_meshgate_tls", None)
    if got is None:
        return TLSConnection(obj, None, None, None)
    entry, server_name, sni = got
    return TLSConnection(obj, entry, server_name, sni)


# --- nginx's $ssl_* variables ---------------------------------------------------------------------

_DN_NAMES: dict[Any, str] = {}


def _dn(name: Any) -> str:
    """RFC 2253 form, as nginx's ``$ssl_client_s_dn`` (OpenSSL's short attribute names)."""
    if not _DN_NAMES:
        from cryptography.x509.oid import NameOID

        _DN_NAMES.update({NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.SERIAL_NUMBER: "serialNumber",
                          NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN", NameOID.TITLE: "title"})
    return str(name.rfc4514_string(_DN_NAMES))


def _asn1_time(t: Any) -> str:
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S %Y} GMT"


def _cert_attr(get: Callable[[Any], str]) -> Callable[[TLSConnection], str | None]:
    def var(c: TLSConnection) -> str | None:
        cert = c.cert()
        return get(cert) if cert is not None else None
    return var


def _serial(cert: Any) -> str:
    h = format(cert.serial_number, "X")
    return h if len(h) % 2 == 0 else "0" + h


def _pem(c: TLSConnection) -> str | None:
    der = c.der()
    return ssl.DER_cert_to_PEM_cert(der) if der is not None else None


def _remain(cert: Any) -> str:
    return str(max(0, int((cert.not_valid_after_utc.timestamp() - time.time()) // 86400)))


TLS_VARS: dict[str, Callable[[TLSConnection], str | None]] = {
    "ssl_server_name": lambda c: c.server_name,
    "ssl_protocol": lambda c: c.obj.version(),
    "ssl_cipher": lambda c: (c.obj.cipher() or (None,))[0],
    "ssl_session_reused": lambda c: "r" if c.obj.session_reused else ".",
    "ssl_alpn_protocol": lambda c: c.obj.selected_alpn_protocol() or "",
    "ssl_client_verify": lambda c: c.client_verify(),
    "ssl_client_s_dn": _cert_attr(lambda cert: _dn(cert.subject)),
    "ssl_client_i_dn": _cert_attr(lambda cert: _dn(cert.issuer)),
    "ssl_client_serial": _cert_attr(_serial),
    "ssl_client_fingerprint": lambda c: hashlib.sha1(der).hexdigest() if (der := c.der()) is not None else None,
    "ssl_client_raw_cert": _pem,
    "ssl_client_escaped_cert": lambda c: quote(pem, safe="") if (pem := _pem(c)) is not None else None,
    "ssl_client_v_start": _cert_attr(lambda cert: _asn1_time(cert.not_valid_before_utc)),
    "ssl_client_v_end": _cert_attr(lambda cert: _asn1_time(cert.not_valid_after_utc)),
    "ssl_client_v_remain": _cert_attr(_remain),
}
"""nginx ``$ssl_*`` variables answered from the connection (None on plain HTTP)."""
