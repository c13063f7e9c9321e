"""ApisixGlobalRule → an APISIX global rule (ingress-controller.md section 2.6).

``plugins[]`` (``enable: false`` dropped, ``secretRef`` merged) → ``plugins``.  APISIX's
global_rule schema has only ``id`` and ``plugins``, so the item carries no labels: its id says
whose it is (``naming.global_rule_id``: ``k8s-<crc32 of the controller name>-<crc32 of
<ns>_<name>>``), and the Translation carries the ownership labels for the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from .common import ClusterState, Item, Translation, TranslateError, build_plugins, object_ref
from .naming import DEFAULT_CONTROLLER_NAME, global_rule_id, labels as owner_labels

__all__ = ["translate_apisix_global_rule"]

Obj = Mapping[str, Any]


def translate_apisix_global_rule(agr: Obj, state: ClusterState, *,
                                 controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    kind, ns, name = object_ref(agr)
    kind = kind or "ApisixGlobalRule"
    own = owner_labels(kind, ns, name, controller_name=controller_name)
    try:
        plugins = build_plugins((agr.get("spec") or {}).get("plugins"), ns, state, pointer="/spec/plugins")
    except ConfigError as e:
        return Translation(kind, ns, name, own, errors=(TranslateError(e.pointer, e.message, kind=kind,
                                                                       id=f"{ns}/{name}"),))
    if not plugins:
        return Translation(kind, ns, name, own, warnings=("no enabled plugin: nothing to apply",))
    gid = global_rule_id(ns, name, controller_name)
    return Translation(kind, ns, name, own, items=(Item("global_rules", gid, {"id": gid, "plugins": plugins}),))
