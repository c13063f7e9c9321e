"""APISIX data encryption: the fields APISIX stores encrypted in etcd, both ways.

Meshgate shares an etcd with APISIX, so it must read what APISIX wrote there and write what
APISIX can read.  APISIX encrypts two families of fields (apisix-semantics.md section 8):

Theory of operation
-------------------
* The cipher (``apisix/core/data_encryption.lua``): each keyring entry is both the AES key
  and the IV (a 16-byte entry selects AES-128-CBC; a 32-byte entry AES-256-CBC whose IV is
  the entry's first 16 bytes, as lua-resty-string copies only a block's worth), PKCS#7
  padding, base64.  Encryption uses the first entry; decryption tries each entry in order
  and the first that unpads cleanly wins (``aes_cbc_decrypt``).  Entries of any other length
  are dropped with an error log (``init_iv_tbl``), and an empty keyring stores clear text.
* Plugin fields (``apisix/plugin.lua`` ``encrypt_conf``/``decrypt_conf``): every plugin conf
  of an item's ``plugins`` has the fields its schema lists in ``encrypt_fields`` processed:
  dotted paths of any depth, arrays traversed at intermediate nodes, and at the leaf a
  string, every string of an array, or every string value of a map
  (``process_encrypt_field``).  Consumers and their credentials use the plugin's consumer
  schema, falling back to its schema (``get_plugin_schema_for_gde``): a consumer's
  limit-count keeps its ``redis_password`` encrypted too.  ``plugin_metadata`` items are
  processed as a whole with the metadata schema of the plugin their id names.  Plugins that
  are not loaded are left alone.  Stream routes' plugins are neither encrypted by the Admin
  API (``admin/stream_routes.lua`` encrypts only the inline upstream) nor decrypted by the
  stream checker, so they are left alone here too.  This family is switched by
  ``apisix.data_encryption.enable_encrypt_fields`` (``enabled``).  (APISIX also requires
  ``config_provider: etcd`` for it: callers only use a cipher with etcd.)
* Private keys (``apisix/ssl.lua`` ``aes_encrypt_pkey``/``aes_decrypt_pkey``): an ssl's
  ``key`` and each of its ``keys``, and an upstream's ``tls.client_key`` (upstreams, and the
  inline upstream of routes, services and stream routes: ``apisix/upstream.lua``
  ``encrypt_conf``).  Only PEM text (starting with ``---``) is encrypted; on reading, PEM
  text is kept as it is and anything else is decrypted.  This family uses the same keyring
  but is *not* switched by ``enable_encrypt_fields``: ``aes_encrypt_pkey`` calls
  ``data_encryption.encrypt``, which only looks at the keyring.  Secret references
  (``$secret://``, ``$env://``) are never encrypted, and are not decrypted here either:
  APISIX resolves them before it decrypts.

A value that does not decrypt (written in clear by another tool, or with a key that left
the keyring) is kept as it is, with an info log naming the plugin and the field, as APISIX
does; nothing here raises on bad data.  ``encrypt_item``/``decrypt_item`` return deep copies.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from ..plugins import PluginRegistry

__all__ = ["FieldCipher", "DEFAULT_KEYRING"]

log = logging.getLogger("meshgate.config.encryption")

DEFAULT_KEYRING: tuple[str, ...] = ("qeddd145sfvddff3", "edd1c9f0985e76a2")
"""``apisix.data_encryption.keyring`` by default (``apisix/cli/config.lua``)."""

SchemaType = Literal["route", "consumer", "metadata"]

# kind -> the schema type its plugin confs are checked (and encrypted) with
_PLUGIN_KINDS: dict[str, SchemaType] = {
    "routes": "route",
    "services": "route",
    "plugin_configs": "route",
    "global_rules": "route",
    "consumer_groups": "route",
    "consumers": "consumer",      # consumers and their credentials (TYPE_CONSUMER)
}
# kinds with an inline upstream whose tls.client_key is a private key
_INLINE_UPSTREAM = frozenset(("routes", "services", "stream_routes"))
_SECRET_REF = re.compile(r"^\$(secret|env|ENV)://")
_B64_ALPHABET = re.compile(r"^[A-Za-z0-9+/]*$")

# APISIX's hint on a field that does not decrypt (plugin.lua, decrypt_hint)
_DECRYPT_HINT = (". This can happen after upgrading if the field was recently added to encrypt_fields; if the "
                 "value was encrypted, verify the data_encryption keyring. Re-save the configuration via the "
                 "Admin API to resolve.")

_Op = Callable[[str], "str | None"]


class FieldCipher:
    """Encrypts / decrypts the fields APISIX keeps encrypted in etcd (see the module doc).

    ``keyring``: the ``apisix.data_encryption.keyring`` entries (a single string is one
    entry, as APISIX accepts); ``plugins``: the loaded plugins, whose schemas name the
    ``encrypt_fields``; ``enabled``: ``enable_encrypt_fields`` (plugin fields only).
    """

    __slots__ = ("keyring", "enabled", "_plugins", "_ciphers")

    def __init__(self, keyring: Sequence[str] | str, plugins: PluginRegistry, *, enabled: bool = True) -> None:
        entries = (keyring,) if isinstance(keyring, str) else tuple(keyring)
        self._plugins = plugins
        self._ciphers: list[Any] = []
        usable: list[str] = []
        for entry in entries:
            raw = entry.encode() if isinstance(entry, str) else b""
            if len(raw) not in (16, 32):
                log.error("ignored data_encryption keyring entry: expected a 16 byte (AES-128) or 32 byte "
                          "(AES-256) key, got %d bytes", len(raw))
                continue
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            # key = the entry, IV = the entry (its first block for AES-256)
            self._ciphers.append(Cipher(algorithms.AES(raw), modes.CBC(raw[:16])))
            usable.append(entry)
        self.keyring: tuple[str, ...] = tuple(usable)
        self.enabled = bool(enabled)

    # -- strings ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether anything is encrypted at all (an empty keyring stores clear text)."""
        return bool(self._ciphers)

    def encrypt(self, s: str) -> str:
        """``s`` encrypted with the first keyring entry, base64; ``s`` itself without a keyring."""
        if not self._ciphers:
            return s
        from cryptography.hazmat.primitives import padding

        padder = padding.PKCS7(128).padder()
        data = padder.update(s.encode()) + padder.finalize()
        enc = self._ciphers[0].encryptor()
        return base64.b64encode(enc.update(data) + enc.finalize()).decode("ascii")

    def decrypt(self, s: str) -> str | None:
        """``s`` decrypted with the first keyring entry that fits; None when none does (bad
        base64, wrong keys, not encrypted).  ``s`` itself without a keyring."""
        if not self._ciphers:
            return s
        data = _ngx_decode_base64(s)
        if data is None or not data or len(data) % 16:
            return None
        from cryptography.hazmat.primitives import padding

        for cipher in self._ciphers:
            dec = cipher.decryptor()
            padded = dec.update(data) + dec.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            try:
                plain = unpadder.update(padded) + unpadder.finalize()
                # a wrong key that happens to unpad cleanly yields bytes that are not text;
                # values come from JSON strings, so try the next key (APISIX would stop here)
                return plain.decode("utf-8")
            except ValueError:
                continue
        return None

    # -- items -----------------------------------------------------------------------------

    def encrypt_item(self, kind: str, value: Mapping[str, Any], *, id: str | None = None) -> dict[str, Any]:
        """A deep copy of ``value`` (an item of ``kind``) as APISIX stores it in etcd.

        ``id`` names a ``plugin_metadata`` item's plugin when the value carries no ``id``."""
        return self._item(kind, value, id, "encrypt")

    def decrypt_item(self, kind: str, value: Mapping[str, Any], *, id: str | None = None) -> dict[str, Any]:
        """A deep copy of ``value`` (an item of ``kind`` read from etcd) in clear text.

        Values that do not decrypt are kept as they are (logged at info); never raises on
        bad data.  ``id`` names a ``plugin_metadata`` item's plugin when the value carries
        no ``id``."""
        return self._item(kind, value, id, "decrypt")

    def _item(self, kind: str, value: Mapping[str, Any], id: str | None, op_name: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            return cast(dict[str, Any], value)  # not an object: the validator reports it
        out: dict[str, Any] = _copy(value)
        if not self._ciphers:
            return out
        encrypting = op_name == "encrypt"
        op: _Op = self._encrypt_or_none if encrypting else self.decrypt
        if self.enabled:
            stype = _PLUGIN_KINDS.get(kind)
            if stype is not None:
                plugins = out.get("plugins")
                if isinstance(plugins, dict):
                    for name, conf in plugins.items():
                        if isinstance(conf, dict):
                            self._conf(str(name), conf, stype, op, op_name)
            elif kind == "plugin_metadata":
                # the key names the plugin; APISIX reads it from the value's id
                name = id if id is not None else out.get("id")
                if isinstance(name, str):
                    self._conf(name, out, "metadata", op, op_name)
        pkey = self._encrypt_pkey if encrypting else self._decrypt_pkey
        if kind == "ssls":
            if isinstance(out.get("key"), str):
                out["key"] = pkey(out["key"], "key", out)
            keys = out.get("keys")
            if isinstance(keys, list):
                for i, k in enumerate(keys):
                    if isinstance(k, str):
                        keys[i] = pkey(k, f"keys[{i}]", out)
        elif kind == "upstreams":
            self._upstream_key(out, pkey, out, "")
        elif kind in _INLINE_UPSTREAM and isinstance(out.get("upstream"), dict):
            self._upstream_key(out["upstream"], pkey, out, "upstream.")
        return out

    def _conf(self, name: str, conf: dict[str, Any], stype: SchemaType, op: _Op, op_name: str) -> None:
        schema = self._schema(name, stype)
        if schema is None:
            return
        fields = schema.get("encrypt_fields")
        if not isinstance(fields, (list, tuple)):
            return
        for path in fields:
            if isinstance(path, str) and path:
                _process_field(conf, path, op, name, op_name)

    def _schema(self, name: str, stype: SchemaType) -> Mapping[str, Any] | None:
        p = self._plugins.get(name)
        if p is None:
            return None  # not loaded: APISIX has no schema for it either
        if stype == "consumer":
            # a non-auth plugin on a consumer has no consumer schema: its own schema serves
            return p.consumer_schema if p.consumer_schema is not None else p.schema
        if stype == "metadata":
            return p.metadata_schema
        return p.schema

    def _encrypt_or_none(self, s: str) -> str | None:
        try:
            return self.encrypt(s)
        except Exception as e:  # never raise on data: keep the value (APISIX logs and keeps it)
            log.warning("failed to encrypt: %s", e)
            return None

    def _encrypt_pkey(self, s: str, field: str, item: Mapping[str, Any]) -> str:
        if not s.startswith("---"):
            return s  # not PEM: already encrypted, or a secret reference
        got = self._encrypt_or_none(s)
        return s if got is None else got

    def _decrypt_pkey(self, s: str, field: str, item: Mapping[str, Any]) -> str:
        if s.startswith("---") or _SECRET_REF.match(s):
            return s
        got = self.decrypt(s)
        if got is None:
            log.warning("failed to decrypt the %s of %s: decrypt ssl key failed; kept as it is", field,
                        f"item {item.get('id')}" if item.get("id") is not None else "an item")
            return s
        return got

    @staticmethod
    def _upstream_key(up: dict[str, Any], pkey: Callable[[str, str, Mapping[str, Any]], str],
                      item: Mapping[str, Any], prefix: str) -> None:
        tls = up.get("tls")
        if isinstance(tls, dict) and isinstance(tls.get("client_key"), str):
            tls["client_key"] = pkey(tls["client_key"], prefix + "tls.client_key", item)


def _process_field(conf: dict[str, Any], path: str, op: _Op, plugin: str, op_name: str, full: str = "") -> None:
    """One ``encrypt_fields`` path on one conf (``process_encrypt_field``): split at the first
    dot; an intermediate array is walked element by element, an intermediate map entered;
    at the leaf a string, the strings of an array, or the string values of a map.  Logs
    name the whole path (``full``; APISIX names what is left of it at the leaf)."""
    full = full or path
    info = op_name == "decrypt"
    hint = _DECRYPT_HINT if info else ""

    def failed(where: str) -> None:
        (log.info if info else log.warning)("failed to %s the conf of plugin [%s] key [%s], err: %s failed%s",
                                            op_name, plugin, where, op_name, hint)

    segment, dot, rest = path.partition(".")
    val = conf.get(segment)
    if val is None:
        return
    if dot:
        if isinstance(val, list):
            for item in val:
                if isinstance(item, dict):
                    _process_field(item, rest, op, plugin, op_name, full)
        elif isinstance(val, dict):
            _process_field(val, rest, op, plugin, op_name, full)
        return
    if isinstance(val, str):
        got = op(val)
        if got is None:
            failed(full)
        else:
            conf[segment] = got
    elif isinstance(val, list):
        for i, item in enumerate(val):
            if isinstance(item, str):
                got = op(item)
                if got is None:
                    failed(f"{full}] index [{i + 1}")
                else:
                    val[i] = got
    elif isinstance(val, dict):
        for k, v in val.items():
            if isinstance(v, str):
                got = op(v)
                if got is None:
                    failed(f"{full}.{k}")
                else:
                    val[k] = got


def _ngx_decode_base64(s: str) -> bytes | None:
    """base64 as nginx decodes it (``ngx.decode_base64``): the text up to the first ``=``,
    standard alphabet only, padding optional; None when that is not base64."""
    body = s.split("=", 1)[0]
    if len(body) % 4 == 1 or not _B64_ALPHABET.match(body):
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _copy(v: Any) -> Any:
    """Deep copy of a JSON-shaped value (mappings become dicts, sequences lists)."""
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_copy(x) for x in v]
    return v
