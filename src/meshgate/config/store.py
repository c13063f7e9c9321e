"""ConfigStore: the single place where configuration changes become Snapshots.

Theory of operation
-------------------
Every source (standalone file, Admin API, etcd, xDS, Kubernetes) hands the store
*validated* items.  The store keeps a monotonic revision counter with etcd's meaning
(``createdIndex`` / ``modifiedIndex``); a source that has real revisions (etcd) passes
them along and they are kept as they are.  It builds a new immutable :class:`Snapshot` for each
accepted change and notifies subscribers with it.  Unchanged items keep the very same
``Resource`` object across versions, so workers can reuse compiled state (balancers,
health checkers, connection pools) by identity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..model import KINDS, Resource, Snapshot, is_kind

__all__ = ["ConfigStore", "Change"]

log = logging.getLogger("meshgate.config")


@dataclass(frozen=True, slots=True)
class Change:
    """One item put (``value`` set) or deleted (``value`` None)."""

    kind: str
    id: str
    value: Mapping[str, Any] | None
    created_index: int = 0     # etcd's create_revision / mod_revision when the source has them
    modified_index: int = 0


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

    def _publish(self, resources: Mapping[str, Mapping[str, Resource]],
                 changed: Mapping[str, tuple[tuple[str, bool], ...]] | None = None) -> Snapshot:
        snap = Snapshot(version=self._snapshot.version + 1, resources=resources, changed=changed)
        self._snapshot = snap
        for cb in list(self._subscribers):
            try:
                cb(snap)
            except Exception:  # a subscriber must never break the store
                log.exception("config subscriber failed")
        return snap

    def _put(self, old: Resource | None, kind: str, id: str, value: Mapping[str, Any],
             indexes: tuple[int, int] | None = None) -> Resource:
        if indexes is not None:
            if old is not None and old.modified_index == indexes[1] and old.value == value:
                return old
            self._revision = max(self._revision, indexes[1])
            return Resource(kind=kind, id=id, value=value, created_index=indexes[0], modified_index=indexes[1])
        if old is not None and old.value == value:
            return old
        self._revision += 1
        created = old.created_index if old is not None else self._revision
        return Resource(kind=kind, id=id, value=value, created_index=created, modified_index=self._revision)

    def replace_all(self, items: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                    indexes: Mapping[tuple[str, str], tuple[int, int]] | None = None,
                    revision: int | None = None) -> Snapshot | None:
        """Full-state replace (standalone file, ``PUT /apisix/admin/configs``, etcd re-list).

        ``indexes`` gives (created, modified) revisions per (kind, id) when the source has
        them, ``revision`` the source's revision of the whole read.  Returns the new
        snapshot, or None when nothing changed (no new version).
        """
        cur = self._snapshot.resources
        new: dict[str, dict[str, Resource]] = {}
        changed = False
        for kind in KINDS:
            old_items = cur.get(kind, {})
            want = items.get(kind, {})
            out: dict[str, Resource] = {}
            for id, value in want.items():
                res = self._put(old_items.get(id), kind, id, value,
                                indexes.get((kind, id)) if indexes is not None else None)
                changed |= res is not old_items.get(id)
                out[id] = res
            if list(out) != list(old_items):
                changed = True
            # an unchanged kind keeps its mapping object: compiles reuse what did not change
            new[kind] = old_items if isinstance(old_items, dict) and _same(old_items, out) else out
        if revision is not None:
            self._revision = max(self._revision, revision)
        if not changed:
            return None
        return self._publish(new)

    def apply(self, changes: Iterable[Change], *, revision: int | None = None) -> Snapshot | None:
        """Incremental changes (Admin API, etcd watch).  Order of new ids is arrival order.

        Returns the new snapshot, or None when nothing changed.  The snapshot records the
        ids it changed (``Snapshot.changed``), so what reaches the workers costs the size
        of the change, not of the config."""
        cur = self._snapshot.resources
        touched: dict[str, dict[str, Resource]] = {}   # copies of the kinds this batch changes
        # per kind: id -> "removed at some point of this batch", ordered so that the ids
        # appended to the kind (new, or removed and put again) come in the order they were
        changed: dict[str, dict[str, bool]] = {}
        for ch in changes:
            if not is_kind(ch.kind):
                raise KeyError(f"unknown kind {ch.kind!r}")
            bucket = touched.get(ch.kind)
            if bucket is None:
                bucket = touched[ch.kind] = dict(cur.get(ch.kind, {}))
            order = changed.setdefault(ch.kind, {})
            if ch.value is None:
                if bucket.pop(ch.id, None) is not None:
                    self._revision = max(self._revision + 1, ch.modified_index)
                    order.pop(ch.id, None)
                    order[ch.id] = True
            else:
                old = bucket.get(ch.id)
                res = bucket[ch.id] = self._put(old, ch.kind, ch.id, ch.value,
                                                (ch.created_index, ch.modified_index) if ch.modified_index else None)
                if old is None:             # appended: moves to the end of the order too
                    removed = order.pop(ch.id, False)
                    order[ch.id] = removed
                elif res is not old:
                    order.setdefault(ch.id, False)
        if revision is not None:
            self._revision = max(self._revision, revision)
        changed = {k: v for k, v in changed.items() if v}
        if not changed:
            return None
        return self._publish({**cur, **{k: touched[k] for k in changed}},
                             changed={k: tuple(v.items()) for k, v in changed.items()})


def _same(a: Mapping[str, Resource], b: Mapping[str, Resource]) -> bool:
    """Same items, same objects, same order."""
    if len(a) != len(b):
        return False
    return all(ka == kb and va is vb for (ka, va), (kb, vb) in zip(a.items(), b.items()))
