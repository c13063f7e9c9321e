"""ConfigStore: the single place where configuration changes become Snapshots.

Theory of operation
-------------------
Every source (standalone file, Admin API, etcd, xDS, Kubernetes) hands the store
*validated* items.  The store keeps a monotonic revision counter with etcd's meaning
(``createdIndex`` / ``modifiedIndex``), builds a new immutable :class:`Snapshot` for each
accepted change and notifies subscribers with it.  Unchanged items keep the very same
``Resource`` object across versions, so workers can reuse compiled state (balancers,
health checkers, connection pools) by identity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..model import KINDS, Resource, Snapshot

__all__ = ["ConfigStore", "Change"]

log = logging.getLogger("meshgate.config")


@dataclass(frozen=True, slots=True)
class Change:
    """One item put (``value`` set) or deleted (``value`` None)."""

    kind: str
    id: str
    value: Mapping[str, Any] | None


Subscriber = Callable[[Snapshot], None]


class ConfigStore:
    def __init__(self) -> None:
        self._snapshot = Snapshot(version=0, resources={k: {} for k in KINDS})
        self._revision = 0
        self._subscribers: list[Subscriber] = []

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def revision(self) -> int:
        return self._revision

    def subscribe(self, cb: Subscriber) -> None:
        self._subscribers.append(cb)

    def _publish(self, resources: Mapping[str, Mapping[str, Resource]]) -> Snapshot:
        snap = Snapshot(version=self._snapshot.version + 1, resources=resources)
        self._snapshot = snap
        for cb in list(self._subscribers):
            try:
                cb(snap)
            except Exception:  # a subscriber must never break the store
                log.exception("config subscriber failed")
        return snap

    def _put(self, old: Resource | None, kind: str, id: str, value: Mapping[str, Any]) -> Resource:
        if old is not None and old.value == value:
            return old
        self._revision += 1
        created = old.created_index if old is not None else self._revision
        return Resource(kind=kind, id=id, value=value, created_index=created, modified_index=self._revision)

    def replace_all(self, items: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Snapshot | None:
        """Full-state replace (standalone file, ``PUT /apisix/admin/configs``).

        Returns the new snapshot, or None when nothing changed (no new version).
        """
        cur = self._snapshot.resources
        new: dict[str, dict[str, Resource]] = {}
        changed = False
        for kind in KINDS:
            old_items = cur.get(kind, {})
            want = items.get(kind, {})
            out: dict[str, Resource] = {}
            for id, value in want.items():
                res = self._put(old_items.get(id), kind, id, value)
                changed |= res is not old_items.get(id)
                out[id] = res
            if list(out) != list(old_items):
                changed = True
            new[kind] = out
        if not changed:
            return None
        return self._publish(new)

    def apply(self, changes: Iterable[Change]) -> Snapshot | None:
        """Incremental changes (Admin API, etcd watch).  Order of new ids is arrival order."""
        cur = self._snapshot.resources
        touched: dict[str, dict[str, Resource]] = {}   # copies of the kinds this batch changes
        for ch in changes:
            if ch.kind not in KINDS:
                raise KeyError(f"unknown kind {ch.kind!r}")
            bucket = touched.get(ch.kind)
            if bucket is None:
                bucket = touched[ch.kind] = dict(cur.get(ch.kind, {}))
            if ch.value is None:
                if bucket.pop(ch.id, None) is not None:
                    self._revision += 1
            else:
                bucket[ch.id] = self._put(bucket.get(ch.id), ch.kind, ch.id, ch.value)
        if not touched:
            return None
        return self._publish({**cur, **touched})
