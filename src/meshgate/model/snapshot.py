"""Immutable, versioned view of the whole configuration.

A :class:`Snapshot` is what a ConfigStore publishes and what workers compile into
routers, plugin chains and balancers.  Values are the validated APISIX JSON shapes
(plain dicts); they are shared between snapshot versions and must be treated as
read-only by every consumer.  Per-kind dict order is the load order, which the router
uses to break ties deterministically (APISIX: "insertion order").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from .kinds import KINDS, is_kind

__all__ = ["Resource", "Snapshot", "EMPTY"]


@dataclass(frozen=True, slots=True)
class Resource:
    """One stored object: ``/apisix/<kind>/<id>`` with its etcd-like revisions."""

    kind: str
    id: str
    value: Mapping[str, Any]
    created_index: int = 0
    modified_index: int = 0


_EMPTY_KIND: Mapping[str, Resource] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    resources: Mapping[str, Mapping[str, Resource]] = field(default_factory=dict)
    # When set: the only ids that differ from version - 1, per kind, as (id, removed at some
    # point): removing those marked, then putting every id still present in this order (in
    # place if it is there, else at the end) turns version - 1 into this one.  None: unknown.
    changed: Mapping[str, tuple[tuple[str, bool], ...]] | None = None

    def items(self, kind: str) -> Mapping[str, Resource]:
        if not is_kind(kind):
            raise KeyError(f"unknown kind {kind!r}")
        return self.resources.get(kind, _EMPTY_KIND)

    def get(self, kind: str, id: str) -> Resource | None:
        return self.items(kind).get(str(id))

    def values(self, kind: str) -> Iterator[Mapping[str, Any]]:
        for res in self.items(kind).values():
            yield res.value

    def counts(self) -> dict[str, int]:
        return {k: len(self.items(k)) for k in KINDS}


EMPTY = Snapshot(version=0, resources={})
