"""etcd as a config source: list, then watch, the APISIX key layout under the prefix.

Theory of operation
-------------------
As APISIX's ``config_etcd.lua``: one full range read of ``<prefix>/`` gives every item
and the store revision R; one watch from R+1 then follows every change.  The gateway's
supervisor runs this once and fans Snapshots out to its workers, so a gateway holds
exactly one watch however many workers it has.

* Keys: ``<prefix>/<kind>/<id>`` for the kinds of :data:`meshgate.model.KINDS`;
  credentials live under their consumer (``consumers/<user>/credentials/<id>``) and
  secrets under their manager (``secrets/<manager>/<id>``), so the id is the rest of
  the key.  Other keys (``/apisix/plugins``, ``/apisix/gen_id``, kinds this version
  does not know) and APISIX's ``init_dir`` directory placeholders are skipped.
* Values: JSON, decrypted with the data-encryption keyring (fields APISIX encrypts),
  then validated one by one.  A bad item (written by another tool, or by a newer
  APISIX) is rejected alone and logged with kind, id and JSON pointer; an item that
  was good keeps its last good value, so a bad write never takes a route down.
* Compaction (the watch's start revision is gone), a lost stream, an unreachable
  cluster: the watch ends, the last good config keeps serving, and after a backoff
  with jitter (``resync_delay``, growing from a short first retry) the source lists
  everything again and resumes watching from the new revision.  A re-list replaces
  the whole state, so nothing deleted during the outage survives it.
* Watch responses that arrive together are applied as one change (one new Snapshot).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from typing import Any, Callable, Protocol

from ..errors import ConfigError
from ..model import KINDS, validate_item
from .background import Background
from .etcd import KV, EtcdClient, EtcdCompacted, EtcdError, EtcdUnavailable
from .store import Change, ConfigStore

__all__ = ["EtcdSource", "key_to_item", "Cipher"]

log = logging.getLogger("meshgate.config.etcd")


class Cipher(Protocol):
    def decrypt_item(self, kind: str, value: Mapping[str, Any], *, id: str | None = None) -> dict[str, Any]: ...


def key_to_item(prefix: str, key: str) -> tuple[str, str] | None:
    """``/apisix/routes/1`` → ``("routes", "1")``; None for keys that are not items."""
    if not key.startswith(prefix + "/"):
        return None
    rest = key[len(prefix) + 1:]
    kind, sep, id = rest.partition("/")
    if not sep or not id or kind not in KINDS or id.endswith("/"):
        return None
    if "/" in id:
        # consumers/<user>/credentials/<id>, secrets/<manager>/<id>: the only nested ids
        parts = id.split("/")
        if kind == "consumers" and not (len(parts) == 3 and parts[1] == "credentials" and parts[0] and parts[2]):
            return None
        if kind == "secrets" and not (len(parts) == 2 and all(parts)):
            return None
        if kind not in ("consumers", "secrets"):
            return None
    return kind, id


class EtcdSource(Background):
    def __init__(self, client: EtcdClient, store: ConfigStore, *, prefix: str = "/apisix",
                 cipher: Cipher | None = None, resync_delay: float = 5.0, first_retry: float = 0.2) -> None:
        self.client = client
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.cipher = cipher
        self.resync_delay = resync_delay
        self.first_retry = first_retry
        self.revision = 0                  # the etcd revision the store has caught up with
        self.connected = False
        self.last_error: str | None = None
        self.rejected: dict[tuple[str, str], list[ConfigError]] = {}
        self.resyncs = 0                   # full re-lists after the first (compaction, outage)
        # APISIX's <prefix>/plugins: the enabled plugin list a plugin reload publishes
        # (None: the key is absent); on_plugins is called when it changes
        self.plugin_names: list[str] | None = None
        self.plugins_revision = 0
        self.on_plugins: Callable[[list[str] | None], Any] | None = None

    # -- decoding ----------------------------------------------------------------------------
    def _decode(self, kv: KV) -> tuple[str, str, dict[str, Any]] | None | ConfigError:
        """(kind, id, value), None to skip silently, or the error that rejects the item."""
        item = key_to_item(self.prefix, kv.key)
        if item is None:
            return None
        kind, id = item
        if kv.value in (b"init_dir", b'"init_dir"', b""):
            return None
        try:
            value = json.loads(kv.value)
        except (ValueError, UnicodeDecodeError) as e:
            return ConfigError("", f"expected a JSON object, got invalid JSON ({e})", kind=kind, id=id)
        if not isinstance(value, dict):
            return ConfigError("", f"expected a JSON object, got {type(value).__name__}", kind=kind, id=id)
        if self.cipher is not None:
            try:
                value = self.cipher.decrypt_item(kind, value, id=id)
            except Exception as e:  # a cipher bug must not stop the gateway
                return ConfigError("", f"cannot decrypt: {e}", kind=kind, id=id)
        errors = validate_item(kind, value, id=id)
        if errors:
            return errors[0] if len(errors) == 1 else _Many(errors, kind, id)
        return kind, id, value

    def _reject(self, kv: KV, err: ConfigError) -> None:
        errs = err.errors if isinstance(err, _Many) else [err]
        key = (err.kind or "", err.id or "")
        self.rejected[key] = errs
        for e in errs:
            log.error("etcd %s (revision %d): item rejected, %s", kv.key, kv.mod_revision, e)

    # -- the plugin list ---------------------------------------------------------------------
    def _plugins_key(self, kv: KV | None, mod_revision: int) -> None:
        """``<prefix>/plugins`` put (``kv``) or deleted (None): APISIX's plugin reload, which
        every node applies with the list it carries (``[{"name": "key-auth"}, {"name": "x",
        "stream": true}]``; stream plugins are not Meshgate's)."""
        if mod_revision == self.plugins_revision:
            return
        names: list[str] | None = None
        if kv is not None:
            try:
                data = json.loads(kv.value)
                if not isinstance(data, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str)
                                                         for p in data):
                    raise ValueError("expected a JSON array of {name, stream}")
            except ValueError as e:
                log.error("etcd %s (revision %d): plugin list ignored: %s", kv.key, kv.mod_revision, e)
                return
            names = [p["name"] for p in data if not p.get("stream")]
        first = self.plugins_revision == 0 and self.plugin_names is None
        self.plugins_revision = mod_revision
        self.plugin_names = names
        if self.on_plugins is not None and not (first and names is None):
            log.warning("etcd: plugin list changed (revision %d): reloading plugins", mod_revision)
            try:
                self.on_plugins(names)
            except Exception:   # a plugin that fails to load must not stop the watch
                log.exception("plugin reload from etcd failed")

    # -- list --------------------------------------------------------------------------------
    async def load(self) -> None:
        """Read everything under the prefix and replace the store's state with it.

        Raises EtcdUnavailable when the cluster cannot be read."""
        revision, kvs = await self.client.get_prefix(self.prefix + "/")
        items: dict[str, dict[str, Mapping[str, Any]]] = {k: {} for k in KINDS}
        indexes: dict[tuple[str, str], tuple[int, int]] = {}
        cur = self.store.snapshot
        self.rejected = {}
        plugins_kv = None
        for kv in kvs:
            if kv.key == self.prefix + "/plugins":
                plugins_kv = kv
                continue
            got = self._decode(kv)
            if got is None:
                continue
            if isinstance(got, ConfigError):
                self._reject(kv, got)
                old = cur.get(got.kind, got.id) if got.kind in KINDS and got.id else None
                if old is not None:   # keep its last good value
                    items[old.kind][old.id] = old.value
                    indexes[(old.kind, old.id)] = (old.created_index, old.modified_index)
                continue
            kind, id, value = got
            items[kind][id] = value
            indexes[(kind, id)] = (kv.create_revision, kv.mod_revision)
        snap = self.store.replace_all(items, indexes=indexes, revision=revision)
        if plugins_kv is not None:
            self._plugins_key(plugins_kv, plugins_kv.mod_revision)
        elif self.plugin_names is not None:      # deleted while the watch was down
            self._plugins_key(None, -revision)
        self.revision = revision
        self.connected = True
        self.last_error = None
        n = sum(len(v) for v in items.values())
        if snap is not None:
            log.warning("etcd: %d item(s) at revision %d: config version %d", n, revision, snap.version)

    # -- watch -------------------------------------------------------------------------------
    def _changes(self, batch_events: Any) -> list[Change]:
        out: list[Change] = []
        for ev in batch_events:
            kv = ev.kv
            if kv.key == self.prefix + "/plugins":
                self._plugins_key(kv if ev.type == "put" else None, kv.mod_revision)
                continue
            if ev.type == "delete":
                item = key_to_item(self.prefix, kv.key)
                if item is not None:
                    self.rejected.pop(item, None)
                    out.append(Change(item[0], item[1], None, modified_index=kv.mod_revision))
                continue
            got = self._decode(kv)
            if got is None:
                continue
            if isinstance(got, ConfigError):
                self._reject(kv, got)     # the item keeps its last good value
                continue
            kind, id, value = got
            self.rejected.pop((kind, id), None)
            out.append(Change(kind, id, value, created_index=kv.create_revision, modified_index=kv.mod_revision))
        return out

    async def _follow(self) -> None:
        """Watch from the loaded revision until the stream ends (by raising)."""
        pending: list[Change] = []
        flush_at: list[int] = []
        loop = asyncio.get_running_loop()

        def flush() -> None:
            changes, pending[:] = list(pending), []
            rev = flush_at.pop() if flush_at else self.revision
            flush_at.clear()
            snap = self.store.apply(changes, revision=rev)
            if snap is not None:
                log.info("etcd: revision %d applied as config version %d", rev, snap.version)

        async for batch in self.client.watch(self.prefix + "/", self.revision + 1):
            self.revision = max(self.revision, batch.revision)
            if not batch.events:
                continue
            pending.extend(self._changes(batch.events))
            if not flush_at:
                loop.call_soon(flush)   # responses read in this loop turn become one Snapshot
            flush_at[:] = [batch.revision]

    async def run(self) -> None:
        """List (unless loaded), then watch forever; every failure ends in a re-list."""
        delay = self.first_retry
        need_list = not self.connected
        while True:
            try:
                if need_list:
                    relist = self.revision > 0
                    await self.load()
                    self.resyncs += relist
                    need_list = False
                delay = self.first_retry
                await self._follow()
            except EtcdCompacted as e:
                log.warning("etcd: %s; listing everything again", e)
                need_list = True
                continue
            except (EtcdUnavailable, EtcdError) as e:
                self.connected = False
                self.last_error = str(e)
                log.error("etcd: %s; serving the last good config, retrying in %.1fs", e, delay)
            need_list = True
            await asyncio.sleep(delay * (1 + random.random() / 2))   # APISIX: resync_delay + 50% jitter
            delay = min(self.resync_delay, delay * 2)

    def start(self) -> None:
        self._spawn(self.run())

    async def stop(self) -> None:
        await self._cancel()
        await self.client.close()


class _Many(ConfigError):
    """Several errors of one item, carried as one."""

    def __init__(self, errors: list[ConfigError], kind: str, id: str) -> None:
        super().__init__(errors[0].pointer, errors[0].message, kind=kind, id=id)
        self.errors = errors
