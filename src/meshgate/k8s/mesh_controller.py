"""`meshgate mesh-controller`'s reconcile side: AmeshPluginConfigs and Pods → each sidecar's
plugin set, and the configs' status (which pods applied them).

Theory of operation (ingress-controller.md section 9; the merge rules are in ``amesh.py``):

* Informers keep AmeshPluginConfigs and Pods (of the watched namespaces).  Every config is
  parsed and checked against the plugin schemas when it changes; the last valid generation of
  each config (by uid) is kept, so a bad edit never takes plugins away from running pods.
* The delivery channel (``meshgate.xds.extconfig``, wired by the CLI: this package may not
  import ``xds``) asks :meth:`MeshController.state_for` for a connected sidecar's pod, and is
  told to re-resolve (``Delivery.notify``) on any change of a config or of a pod's labels.
  Every replica serves the channel from its own caches (Amesh's non-leader replicas served
  empty caches).
* The channel reports each sidecar's ACK / NACK / disconnect (:meth:`on_ack`); the status of a
  config counts the pods its selector matches and, for each, whether its sidecar runs the
  version of the plugin set that includes this generation (``applied``), refused it
  (``failed``, with the sidecar's reason) or has not (``pending``: no sidecar connected, or not
  yet).  Written through the status subresource (debounced), only when it changed:
  ``conditions`` ``Sync`` (Amesh's: ``Reconciled`` / ``Sync Success``, or ``InvalidSpec``) and
  ``Applied`` (``Applied``, ``Pending``, ``Rejected``, ``NoPods``), both with
  ``observedGeneration``, and ``pods`` (counts and up to 50 names per list).
* Status is what this replica's sidecars reported: run one replica (the Helm chart's default),
  or give every replica all sidecars.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

from .amesh import AmeshConfig, parse_config, pod_state, selector_matches
from .client import POD, Informer, KubeClient, KubeError, Resource
from .controller import conditions_equal, make_condition, merge_conditions

__all__ = ["AMESH_PLUGIN_CONFIG", "Delivery", "MeshController", "PodAck"]

log = logging.getLogger("meshgate.k8s.mesh_controller")

AMESH_PLUGIN_CONFIG = Resource("apisix.apache.org", "v1alpha1", "ameshpluginconfigs", "AmeshPluginConfig")
Obj = Mapping[str, Any]
_LISTED = 50
_DONE_PHASES = ("Succeeded", "Failed")


class Delivery(Protocol):
    def notify(self) -> None: ...

    def version(self, state: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True, slots=True)
class PodAck:
    version: str | None      # the plugin set version the sidecar runs
    error: str | None        # its last NACK, if the newest push was refused


class MeshController:
    def __init__(self, kube: KubeClient, delivery: Delivery, *, namespaces: Iterable[str] = (),
                 registry: Any = None, status_delay: float = 0.5) -> None:
        self.kube, self.delivery = kube, delivery
        if registry is None:
            from ..plugins import PluginRegistry

            registry = PluginRegistry()
            registry.load_builtin()
        self.registry = registry
        self.namespaces = tuple(dict.fromkeys(namespaces))
        self.status_delay = status_delay
        self.informers: dict[str, list[Informer]] = {
            "AmeshPluginConfig": self._make(AMESH_PLUGIN_CONFIG, "AmeshPluginConfig"),
            "Pod": self._make(POD, "Pod"),
        }
        self.current: dict[tuple[str, str], AmeshConfig] = {}
        self.good: dict[str, AmeshConfig] = {}              # uid -> last valid generation
        self.acks: dict[str, PodAck] = {}                   # "ns/pod" -> what its sidecar said
        self._written: dict[tuple[str, str], Any] = {}
        self._wake = asyncio.Event()

    def _make(self, res: Resource, kind: str) -> list[Informer]:
        def on_event(typ: str, obj: Obj, prev: Obj | None) -> None:
            self._on_event(kind, typ, obj, prev)
        if not self.namespaces:
            return [Informer(self.kube, res, None, on_event)]
        return [Informer(self.kube, res, ns, on_event) for ns in self.namespaces]

    # -- caches -----------------------------------------------------------------------------

    def _objects(self, kind: str) -> Iterable[Obj]:
        return chain.from_iterable(i.cache.values() for i in self.informers[kind])

    def _pod(self, namespace: str, name: str) -> Obj | None:
        for inf in self.informers["Pod"]:
            o = inf.cache.get((namespace, name))
            if o is not None:
                return o
        return None

    def _on_event(self, kind: str, typ: str, obj: Obj, prev: Obj | None) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if kind == "AmeshPluginConfig":
            if typ == "DELETED":
                gone = self.current.pop(key, None)
                if gone is not None:
                    self.good.pop(gone.uid, None)
                self._written.pop(key, None)
            else:
                if prev is not None and prev.get("spec") == obj.get("spec") and key in self.current:
                    return      # our own status write
                cfg = parse_config(obj, self.registry)
                self.current[key] = cfg
                if cfg.ok:
                    self.good[cfg.uid] = cfg
                else:
                    log.warning("AmeshPluginConfig %s/%s: %s", *key, "; ".join(cfg.errors))
        elif kind == "Pod" and prev is not None and typ == "MODIFIED" and \
                (prev.get("metadata") or {}).get("labels") == meta.get("labels") and \
                (prev.get("status") or {}).get("phase") == (obj.get("status") or {}).get("phase"):
            return              # nothing that decides a plugin set
        self.delivery.notify()
        self._wake.set()

    # -- the plugin sets --------------------------------------------------------------------

    def deliverable(self) -> list[AmeshConfig]:
        """The generation of every config that sidecars run: the current one when valid, else
        the last valid one (if any)."""
        out = []
        for cfg in self.current.values():
            use = cfg if cfg.ok else self.good.get(cfg.uid)
            if use is not None:
                out.append(use)
        return out

    def state_for(self, namespace: str, pod: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The plugin set of pod ``namespace/pod``: its labels from the Pod cache (authoritative:
        a relabelled pod gets a new set at once), else ``labels`` (the sidecar's own metadata)."""
        obj = self._pod(namespace, pod)
        if obj is not None:
            labels = (obj.get("metadata") or {}).get("labels") or {}
        return pod_state(namespace, labels or {}, self.deliverable())

    def on_ack(self, key: str, version: str | None, error: str | None) -> None:
        """The delivery channel's report for sidecar ``ns/pod``: (version, None) ACK,
        (version or None, error) NACK, (None, None) disconnected."""
        if version is None and error is None:
            self.acks.pop(key, None)
        else:
            self.acks[key] = PodAck(version, error)
        self._wake.set()

    # -- status -----------------------------------------------------------------------------

    def _live_pods(self, namespace: str) -> list[Obj]:
        return [p for p in self._objects("Pod") if (p.get("metadata") or {}).get("namespace") == namespace
                and (p.get("status") or {}).get("phase") not in _DONE_PHASES]

    def status_of(self, obj: Obj, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``status`` of one AmeshPluginConfig object (see the module docstring)."""
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        gen = int(meta.get("generation") or 0)
        cfg = self.current.get((ns, name)) or parse_config(obj, self.registry)
        prev_conds = (previous or {}).get("conditions") or []
        if cfg.ok:
            sync = make_condition("Sync", "True", "Reconciled", "Sync Success", generation=gen, previous=prev_conds)
        else:
            kept = self.good.get(cfg.uid)
            tail = (f"; pods keep running generation {kept.generation}" if kept is not None else
                    "; nothing is delivered")
            sync = make_condition("Sync", "False", "InvalidSpec", "; ".join(cfg.errors) + tail, generation=gen,
                                  previous=prev_conds)
        applied, pending, failed = [], [], []
        configs = self.deliverable()
        if cfg.ok:
            for pod in self._live_pods(ns):
                pmeta = pod.get("metadata") or {}
                labels = pmeta.get("labels") or {}
                if not selector_matches(cfg.selector, labels):
                    continue
                pname = str(pmeta.get("name") or "")
                want = self.delivery.version(pod_state(ns, labels, configs))
                ack = self.acks.get(f"{ns}/{pname}")
                if ack is not None and ack.version == want and ack.error is None:
                    applied.append(pname)
                elif ack is not None and ack.error:
                    failed.append({"name": pname, "message": ack.error[:500]})
                else:
                    pending.append(pname)
        total = len(applied) + len(pending) + len(failed)
        if not cfg.ok:
            app = make_condition("Applied", "False", "InvalidSpec", "this generation is not delivered",
                                 generation=gen, previous=prev_conds)
        elif total == 0:
            app = make_condition("Applied", "True", "NoPods", "no running pod matches the selector",
                                 generation=gen, previous=prev_conds)
        elif failed:
            app = make_condition("Applied", "False", "Rejected",
                                 f"refused by {len(failed)} of {total} pods: {failed[0]['name']}: "
                                 f"{failed[0]['message']}", generation=gen, previous=prev_conds)
        elif pending:
            app = make_condition("Applied", "False", "Pending", f"applied by {len(applied)} of {total} pods; "
                                 f"waiting for {', '.join(sorted(pending)[:5])}", generation=gen, previous=prev_conds)
        else:
            app = make_condition("Applied", "True", "Applied", f"applied by {total} of {total} pods",
                                 generation=gen, previous=prev_conds)
        conds = merge_conditions(merge_conditions(prev_conds, sync), app)
        return {"conditions": conds, "pods": {"matched": total, "applied": len(applied),
                                              "appliedPods": sorted(applied)[:_LISTED],
                                              "pendingPods": sorted(pending)[:_LISTED],
                                              "failedPods": sorted(failed, key=lambda f: f["name"])[:_LISTED]}}

    async def write_statuses(self) -> None:
        for obj in list(self._objects("AmeshPluginConfig")):
            meta = obj.get("metadata") or {}
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            previous = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
            st = self.status_of(obj, self._written.get(key) or previous)
            if _same_status(st, previous) or _same_status(st, self._written.get(key)):
                continue
            try:
                await self.kube.patch_status(AMESH_PLUGIN_CONFIG, key[1], key[0], st)
                self._written[key] = st
            except KubeError as e:
                if e.status != 404:
                    log.warning("status of AmeshPluginConfig %s/%s: %s", *key, e)

    async def run(self, *, ready: Callable[[], None] | None = None) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(i.run(), name=repr(i)) for infs in self.informers.values() for i in infs]
            try:
                await asyncio.gather(*(i.synced.wait() for infs in self.informers.values() for i in infs))
                if ready is not None:
                    ready()
                self.delivery.notify()
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    await asyncio.sleep(self.status_delay)
                    await self.write_statuses()
            finally:
                for t in tasks:
                    t.cancel()


def _same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    if not a or not b or a.get("pods") != b.get("pods"):
        return False
    ca = {c.get("type"): c for c in a.get("conditions") or ()}
    cb = {c.get("type"): c for c in b.get("conditions") or ()}
    return set(ca) == set(cb) and all(conditions_equal(ca[t], cb[t]) for t in ca)
