"""Consumers as auth plugins see them, indexed once per config version.

APISIX (apisix/consumer.lua) builds, per auth plugin, a table from a credential field
(key-auth ``key``, basic-auth ``username``, jwt-auth ``key``, hmac-auth ``key_id``) to the
consumer, cached on the consumers' conf version.  :class:`ConsumerSet` is that: built
with the Snapshot, its indexes built lazily on the first lookup and kept until the next
config version.  Consumer groups (``group_id``) are resolved here too, since a consumer's
group plugins are merged with its own when it is identified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Consumer", "ConsumerSet"]


@dataclass(frozen=True, slots=True)
class Consumer:
    username: str
    plugins: Mapping[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    desc: str | None = None
    credential_id: str | None = None
    custom_id: str | None = None

    @property
    def consumer_name(self) -> str:
        return self.username

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access (APISIX plugins read ``consumer.username`` etc.)."""
        return getattr(self, key, default)


class ConsumerSet:
    """All consumers of one config version, with per-(plugin, field) indexes."""

    __slots__ = ("by_name", "groups", "_index", "_lists")

    def __init__(self, consumers: Mapping[str, Mapping[str, Any]],
                 groups: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.by_name: dict[str, Consumer] = {}
        for username, v in consumers.items():
            gid = v.get("group_id")
            self.by_name[str(username)] = Consumer(
                username=str(v.get("username", username)), plugins=v.get("plugins") or {},
                group_id=str(gid) if gid is not None else None, labels=v.get("labels") or {},
                desc=v.get("desc"), custom_id=v.get("custom_id"))
        self.groups: dict[str, Mapping[str, Any]] = {str(k): v for k, v in (groups or {}).items()}
        self._index: dict[tuple[str, str], dict[Any, tuple[Consumer, Any]]] = {}
        self._lists: dict[str, list[tuple[Consumer, Any]]] = {}

    def __len__(self) -> int:
        return len(self.by_name)

    def configuring(self, plugin: str) -> list[tuple[Consumer, Any]]:
        """Every (consumer, its conf of ``plugin``), in load order."""
        got = self._lists.get(plugin)
        if got is None:
            got = [(c, c.plugins[plugin]) for c in self.by_name.values() if plugin in c.plugins]
            self._lists[plugin] = got
        return got

    def find(self, plugin: str, field: str, value: Any) -> tuple[Consumer, Any] | None:
        """The consumer whose ``plugin`` conf has ``field == value`` (first in load order)."""
        key = (plugin, field)
        idx = self._index.get(key)
        if idx is None:
            idx = {}
            for c, conf in self.configuring(plugin):
                v = conf.get(field) if isinstance(conf, Mapping) else None
                if v is not None and v not in idx:
                    idx[v] = (c, conf)
            self._index[key] = idx
        return idx.get(value)

    def group_plugins(self, consumer: Consumer) -> Mapping[str, Any]:
        if consumer.group_id is None:
            return {}
        g = self.groups.get(consumer.group_id)
        return (g.get("plugins") or {}) if g is not None else {}
