"""Consumers as auth plugins see them, indexed once per config version.

APISIX (apisix/consumer.lua) builds, per auth plugin, a table from a credential field
(key-auth ``key``, basic-auth ``username``, jwt-auth ``key``, hmac-auth ``key_id``) to the
consumer, cached on the consumers' conf version.  :class:`ConsumerSet` is that: built
with the Snapshot, its indexes built lazily on the first lookup and kept until the next
config version.  Consumer groups (``group_id``) are resolved here too, since a consumer's
group plugins are merged with its own when it is identified.

Credentials (APISIX 3.x): items of the ``consumers`` kind whose id is
``<username>/credentials/<id>`` (their etcd key).  Each one identifies its consumer by the
credential's auth plugin conf, as ``construct_consumer_data`` does: the consumer that
attaches is a clone of the owner (username, group, labels and so ``custom_id``, desc, and
its plugins, whose non-auth ones still merge into the route: t/node/credential-plugin-work-
with-other-plugin.t), with ``credential_id`` set to the part after ``/credentials/`` so that
the upstream gets ``X-Credential-Identifier``.  Only the credential's confs identify it; the
owner's own auth confs identify the owner.  A credential whose consumer does not exist is
ignored with an error log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Consumer", "ConsumerSet"]

log = logging.getLogger("meshgate.plugins.consumers")

_CREDENTIALS = "/credentials/"


def _value(text: str) -> bytes:
    """A header value: latin-1 as every other field the gateway writes; text beyond it (a
    custom_id label) as its UTF-8 bytes, which is what APISIX sends."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Consumer:
    username: str
    plugins: Mapping[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    desc: str | None = None
    credential_id: str | None = None
    custom_id: str | None = None
    # identified through a credential: the credential's plugins (the confs that identify
    # it), while ``plugins`` stays the owner's (APISIX clones the owner: consumer.lua)
    credential_plugins: Mapping[str, Any] | None = None
    # the lines an identified request carries upstream (X-Consumer-Username, ...), made once
    up_lines: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        lines = [b"X-Consumer-Username: " + _value(self.username) + b"\r\n"]
        if self.credential_id:
            lines.append(b"X-Credential-Identifier: " + _value(self.credential_id) + b"\r\n")
        if self.custom_id:
            lines.append(b"X-Consumer-Custom-ID: " + _value(str(self.custom_id)) + b"\r\n")
        object.__setattr__(self, "up_lines", b"".join(lines))

    @property
    def consumer_name(self) -> str:
        return self.username

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access (APISIX plugins read ``consumer.username`` etc.)."""
        return getattr(self, key, default)

    @property
    def auth_plugins(self) -> Mapping[str, Any]:
        """The plugin confs that identify this consumer: a credential's, or the consumer's own."""
        return self.credential_plugins if self.credential_plugins is not None else self.plugins


class ConsumerSet:
    """All consumers of one config version, with per-(plugin, field) indexes.

    ``consumers`` maps the ``consumers`` kind's ids to values: consumers by username, and
    credentials by ``<username>/credentials/<id>``.  ``by_name`` holds the consumers only
    (APISIX ``filter_consumers_list``); lookups by plugin see both, in the given order."""

    __slots__ = ("by_name", "groups", "_all", "_index", "_lists")

    def __init__(self, consumers: Mapping[str, Mapping[str, Any]],
                 groups: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.by_name: dict[str, Consumer] = {}
        order: list[tuple[str, str, Mapping[str, Any]]] = []   # (kind of entry, id, value)
        for cid, v in consumers.items():
            cid = str(cid)
            if _CREDENTIALS in cid:
                order.append(("credential", cid, v))
                continue
            order.append(("consumer", cid, v))
            labels = v.get("labels") or {}
            gid = v.get("group_id")
            self.by_name[cid] = Consumer(
                username=str(v.get("username", cid)), plugins=v.get("plugins") or {},
                group_id=str(gid) if gid is not None else None, labels=labels, desc=v.get("desc"),
                # APISIX sets custom_id from the consumer's labels (consumer.lua)
                custom_id=_custom_id(labels, v))
        self._all: list[Consumer] = []
        for what, cid, v in order:
            if what == "consumer":
                self._all.append(self.by_name[cid])
                continue
            username, _, cred_id = cid.partition(_CREDENTIALS)
            owner = self.by_name.get(username)
            if owner is None:
                log.error("credential %s ignored: its consumer %s does not exist", cid, username)
                continue
            self._all.append(Consumer(
                username=owner.username, plugins=owner.plugins, group_id=owner.group_id, labels=owner.labels,
                desc=owner.desc, credential_id=cred_id, custom_id=owner.custom_id,
                credential_plugins=v.get("plugins") or {}))
        self.groups: dict[str, Mapping[str, Any]] = {str(k): v for k, v in (groups or {}).items()}
        self._index: dict[tuple[str, str], dict[Any, tuple[Consumer, Any]]] = {}
        self._lists: dict[str, list[tuple[Consumer, Any]]] = {}

    def __len__(self) -> int:
        return len(self.by_name)

    def configuring(self, plugin: str) -> list[tuple[Consumer, Any]]:
        """Every (consumer, its conf of ``plugin``), in load order; a consumer identified
        through a credential appears once per credential configuring ``plugin``."""
        got = self._lists.get(plugin)
        if got is None:
            got = [(c, c.auth_plugins[plugin]) for c in self._all if plugin in c.auth_plugins]
            self._lists[plugin] = got
        return got

    def find(self, plugin: str, field: str, value: Any) -> tuple[Consumer, Any] | None:
        """The consumer whose ``plugin`` conf has ``field == value`` (first in load order)."""
        return self.index(plugin, field).get(value)

    def index(self, plugin: str, field: str) -> dict[Any, tuple[Consumer, Any]]:
        """``plugin``'s confs by their ``field`` (the first in load order for a value), built
        on first use; the request path keeps it with its Runtime and looks up in it."""
        key = (plugin, field)
        idx = self._index.get(key)
        if idx is None:
            idx = {}
            for c, conf in self.configuring(plugin):
                v = conf.get(field) if isinstance(conf, Mapping) else None
                if v is not None and v not in idx:
                    idx[v] = (c, conf)
            self._index[key] = idx
        return idx

    def group_plugins(self, consumer: Consumer) -> Mapping[str, Any]:
        if consumer.group_id is None:
            return {}
        g = self.groups.get(consumer.group_id)
        return (g.get("plugins") or {}) if g is not None else {}


def _custom_id(labels: Any, v: Mapping[str, Any]) -> str | None:
    got = labels.get("custom_id") if isinstance(labels, Mapping) else None
    if got is None:
        got = v.get("custom_id")
    return None if got is None else str(got)
