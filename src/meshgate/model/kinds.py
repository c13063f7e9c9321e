"""The registry of APISIX object kinds.

Names, etcd directory and id field are APISIX's (apisix-semantics.md section 3 and 6.1).
Everything that is generic over kinds (Admin API CRUD, the standalone file, etcd
layout, the ConfigStore) is driven by this table.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Kind", "KINDS", "KIND_NAMES", "MESH_KINDS", "is_kind"]


@dataclass(frozen=True, slots=True)
class Kind:
    name: str                 # plural, as in the Admin API path and the apisix.yaml key
    key_field: str = "id"     # field that identifies an item (consumers: username)
    singular: str = ""        # used in error messages: "wrong route id"
    methods: tuple[str, ...] = ("GET", "PUT", "POST", "PATCH", "DELETE")


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("routes", singular="route"),
        Kind("services", singular="service"),
        Kind("upstreams", singular="upstream"),
        Kind("consumers", key_field="username", singular="consumer", methods=("GET", "PUT", "DELETE")),
        Kind("consumer_groups", singular="consumer group", methods=("GET", "PUT", "PATCH", "DELETE")),
        Kind("plugin_configs", singular="plugin config", methods=("GET", "PUT", "PATCH", "DELETE")),
        Kind("global_rules", singular="global rule", methods=("GET", "PUT", "PATCH", "DELETE")),
        Kind("ssls", singular="ssl"),
        Kind("stream_routes", singular="stream route", methods=("GET", "PUT", "POST", "DELETE")),
        Kind("plugin_metadata", singular="plugin metadata", methods=("GET", "PUT", "DELETE")),
        Kind("protos", singular="proto", methods=("GET", "PUT", "POST", "DELETE")),
        Kind("secrets", singular="secret", methods=("GET", "PUT", "PATCH", "DELETE")),
    )
}

KIND_NAMES: tuple[str, ...] = tuple(KINDS)

# Kinds only the mesh data plane's xDS sources produce (``meshgate mesh``): the listeners
# and route tables translated from LDS / RDS, and the plugin set of the mesh controller.  Clusters become ``upstreams``.  They live in
# the same Snapshot (one model, one fan-out to workers) but are not APISIX objects: no
# Admin API path, no standalone-file key, no etcd directory.
MESH_KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("listeners", key_field="name", singular="listener", methods=()),
        Kind("route_configs", key_field="name", singular="route config", methods=()),
        # the plugins the mesh controller delivers to this sidecar (AmeshPluginConfig),
        # merged into every route of every table
        Kind("mesh_plugins", key_field="id", singular="mesh plugin set", methods=()),
    )
}


def is_kind(name: str) -> bool:
    """An APISIX kind or a mesh kind."""
    return name in KINDS or name in MESH_KINDS
