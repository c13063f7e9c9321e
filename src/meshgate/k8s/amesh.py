"""AmeshPluginConfig (``apisix.apache.org/v1alpha1``) → the plugin set of each sidecar pod; pure.

ingress-controller.md section 9.  An AmeshPluginConfig lists plugins (``spec.plugins[]`` of
``{name, type, config}``) for the pods of its namespace that ``spec.selector`` (a
LabelSelector; empty = every pod) matches.  Amesh merges the plugins of every matching config
into every route of the pod's sidecar; so does Meshgate, with a documented order:

* configs apply in the order of their ``metadata.creationTimestamp``, then name: when two
  configs set the same plugin, **the most recently created one wins** (stable across restarts
  and replicas, unlike Amesh's "last written");
* ``config`` is the plugin's configuration as a JSON string (Amesh's CRD) or, with Meshgate,
  an object;
* ``type: ""`` is an APISIX plugin run by the sidecar; ``pre-req`` / ``post-req`` meant
  APISIX's external plugin runner (``ext-plugin-pre-req``), which Meshgate does not run (its
  plugins are Python already): such an entry is an error naming the alternative;
* every plugin is checked against the plugin schemas (the gateway's :class:`PluginRegistry`)
  before anything is delivered: a config with an error is reported on its status and, if an
  earlier generation of it was valid, that generation keeps being delivered (the last good
  config keeps serving).

The plugin set of a pod is the document ``{"plugins": {name: conf}, "sources": [{namespace,
name, generation}]}`` that ``meshgate mesh`` receives (``meshgate.xds.extconfig``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .translate.common import check_selector, selector_matches

__all__ = ["AmeshConfig", "parse_config", "selector_matches", "check_selector", "pod_state", "EXT_PLUGIN_TYPES"]

Obj = Mapping[str, Any]
EXT_PLUGIN_TYPES = {"pre-req": "ext-plugin-pre-req", "post-req": "ext-plugin-post-req"}


@dataclass(frozen=True, slots=True)
class AmeshConfig:
    """One AmeshPluginConfig as the controller uses it."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str                                  # creationTimestamp (RFC 3339 sorts as text)
    selector: Mapping[str, Any] | None
    plugins: tuple[tuple[str, dict[str, Any]], ...]
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def order(self) -> tuple[str, str]:
        return self.created, self.name

    def source(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "generation": self.generation}


def parse_config(obj: Obj, registry: Any) -> AmeshConfig:
    """An AmeshPluginConfig object → :class:`AmeshConfig`; every problem is in ``errors``
    (with a JSON pointer), nothing raises."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    errors: list[str] = []
    plugins: dict[str, dict[str, Any]] = {}
    entries = (spec or {}).get("plugins")
    if not isinstance(entries, list) or not entries:
        errors.append("/spec/plugins: required: at least one plugin {name, type, config}")
        entries = []
    for i, e in enumerate(entries):
        p = f"/spec/plugins/{i}"
        if not isinstance(e, Mapping) or not isinstance(e.get("name"), str) or not e.get("name"):
            errors.append(f"{p}/name: required: the plugin name")
            continue
        name, typ = str(e["name"]), e.get("type") or ""
        if typ in EXT_PLUGIN_TYPES:
            errors.append(f"{p}/type: {typ!r} sends the plugin to an external plugin runner "
                          f"({EXT_PLUGIN_TYPES[typ]}), which Meshgate does not run; its plugins are Python: "
                          "install the plugin on the sidecar and use type \"\"")
            continue
        if typ != "":
            errors.append(f"{p}/type: expected \"\", pre-req or post-req, got {typ!r}")
            continue
        raw = e.get("config", "{}")
        if isinstance(raw, str):
            try:
                conf = json.loads(raw)
            except json.JSONDecodeError as err:
                errors.append(f"{p}/config: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})")
                continue
        else:
            conf = raw
        if not isinstance(conf, dict):
            errors.append(f"{p}/config: expected a JSON object, got {type(conf).__name__}")
            continue
        if name in plugins:
            errors.append(f"{p}/name: plugin {name} is listed twice in this config")
            continue
        try:
            registry.validate(name, conf, pointer=f"{p}/config", kind="AmeshPluginConfig",
                              id=f"{meta.get('namespace')}/{meta.get('name')}")
        except ConfigError as err:
            errors.append(f"{err.pointer}: {err.message}")
            continue
        plugins[name] = conf
    sel = (spec or {}).get("selector")
    errors += check_selector(sel)
    return AmeshConfig(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                       uid=str(meta.get("uid") or ""), generation=int(meta.get("generation") or 0),
                       created=str(meta.get("creationTimestamp") or ""),
                       selector=sel if isinstance(sel, Mapping) else None,
                       plugins=tuple(plugins.items()), errors=tuple(errors))


def matching(namespace: str, labels: Mapping[str, str], configs: Iterable[AmeshConfig]) -> list[AmeshConfig]:
    """The configs that apply to a pod, in merge order (oldest first)."""
    return sorted((c for c in configs if c.namespace == namespace and selector_matches(c.selector, labels)),
                  key=lambda c: c.order)


def pod_state(namespace: str, labels: Mapping[str, str], configs: Sequence[AmeshConfig]) -> dict[str, Any]:
    """The plugin set of a pod of ``namespace`` with ``labels``: the plugins of every matching
    config (``configs`` are the deliverable ones), newer configs overriding older ones."""
    plugins: dict[str, Any] = {}
    sources = []
    for c in matching(namespace, labels, configs):
        for name, conf in c.plugins:
            plugins.pop(name, None)      # re-inserted: the dict's order is the override order
            plugins[name] = conf
        sources.append(c.source())
    return {"plugins": plugins, "sources": sources} if sources else {}
