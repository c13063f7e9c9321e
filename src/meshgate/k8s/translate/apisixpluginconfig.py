"""ApisixPluginConfig → its plugins (ingress-controller.md section 2.4).

AIC v2 inlines the plugins into every ApisixRoute rule that names the config
(``plugin_config_name`` / ``plugin_config_namespace``), the rule's own plugins winning:
:mod:`.apisixroute` does that.  :func:`translate_apisix_plugin_config` gives the config as an
APISIX ``plugin_config`` (id = crc32 of ``<ns>_<name>``, as AIC v1) so that the object can be
checked on its own (its status) and exported to gateways that want v1-style references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from .common import ClusterState, Item, Translation, TranslateError, build_plugins, object_ref
from .naming import DEFAULT_CONTROLLER_NAME, DESC, fit_name, gen_id, labels as owner_labels, plugin_config_name

__all__ = ["translate_apisix_plugin_config", "plugin_config_plugins"]

Obj = Mapping[str, Any]


def plugin_config_plugins(apc: Obj, state: ClusterState) -> dict[str, Any]:
    """The APISIX ``plugins`` of an ApisixPluginConfig (``enable: false`` dropped, Secrets of
    its own namespace merged).  Raises :class:`ConfigError`."""
    _, ns, _ = object_ref(apc)
    return build_plugins((apc.get("spec") or {}).get("plugins"), ns, state, pointer="/spec/plugins")


def translate_apisix_plugin_config(apc: Obj, state: ClusterState, *,
                                   controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    kind, ns, name = object_ref(apc)
    kind = kind or "ApisixPluginConfig"
    own = owner_labels(kind, ns, name, controller_name=controller_name,
                       object_labels=(apc.get("metadata") or {}).get("labels"))
    try:
        plugins = plugin_config_plugins(apc, state)
    except ConfigError as e:
        return Translation(kind, ns, name, own, errors=(TranslateError(e.pointer, e.message, kind=kind,
                                                                       id=f"{ns}/{name}"),))
    pname = plugin_config_name(ns, name)
    pid = gen_id(pname)
    value = {"id": pid, "name": fit_name(pname), "desc": DESC, "labels": dict(own), "plugins": plugins}
    return Translation(kind, ns, name, own, items=(Item("plugin_configs", pid, value),))
