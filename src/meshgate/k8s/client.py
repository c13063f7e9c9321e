"""A thin async layer over kube-apiserver: config, REST on plain dicts, and an informer.

lightkube loads the configuration (``--kubeconfig`` file, else the in-cluster service
account, else ``$KUBECONFIG`` / ``~/.kube/config``) and builds the authenticated HTTP client
(bearer tokens, token files, exec plugins, client certificates, CA bundles).  Requests go
through that client on plain JSON dicts, because the translators (``k8s/translate``) take the
objects as the API server returns them and the CRDs have no typed models.

Theory of operation of :class:`Informer` (ingress-controller.md section 8, "watch
discipline"; client-go's reflector does the same):

1. **list** (paged) → the cache is replaced by the listed objects and the difference is
   emitted: ``ADDED`` / ``MODIFIED`` for new or changed objects, ``DELETED`` only for objects
   that were cached and are absent from a *complete* list.  A list that fails part way changes
   nothing (never delete anything because a list failed);
2. **watch** from the list's ``resourceVersion`` with ``allowWatchBookmarks``: events update
   the cache; ``BOOKMARK`` only advances the resourceVersion; when the server closes the
   stream (``timeoutSeconds``) the watch resumes from the last resourceVersion seen;
3. **410 Gone** (``ERROR`` event or HTTP status: the resourceVersion is too old) → back to 1;
4. any other failure → exponential backoff (0.5 s doubling to 30 s), then resume the watch from
   the last resourceVersion (or relist when there is none).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube.config.client_adapter import AsyncClient as _adapter_client, ConnectionParams
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ConfigError as _LightkubeConfigError

from ..errors import MeshgateError

__all__ = ["KubeError", "KubeConfigError", "Resource", "KubeClient", "Informer", "ObjKey", "obj_key",
           "APISIX_ROUTE", "APISIX_UPSTREAM", "APISIX_PLUGIN_CONFIG", "APISIX_TLS", "APISIX_CONSUMER",
           "APISIX_GLOBAL_RULE", "SERVICE", "ENDPOINT_SLICE", "SECRET", "POD", "LEASE", "LeaderElector"]

log = logging.getLogger("meshgate.k8s")

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


def obj_key(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class KubeError(MeshgateError):
    """kube-apiserver answered an error (``status``) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        self.status, self.message, self.reason = status, message, reason
        super().__init__(f"kube-apiserver: {status} {reason}: {message}" if status else f"kube-apiserver: {message}")


class KubeConfigError(MeshgateError):
    """No usable Kubernetes configuration."""


@dataclass(frozen=True, slots=True)
class Resource:
    """A REST resource: ``group`` "" is the core API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


_G = "apisix.apache.org"
APISIX_ROUTE = Resource(_G, "v2", "apisixroutes", "ApisixRoute")
APISIX_UPSTREAM = Resource(_G, "v2", "apisixupstreams", "ApisixUpstream")
APISIX_PLUGIN_CONFIG = Resource(_G, "v2", "apisixpluginconfigs", "ApisixPluginConfig")
APISIX_TLS = Resource(_G, "v2", "apisixtlses", "ApisixTls")
APISIX_CONSUMER = Resource(_G, "v2", "apisixconsumers", "ApisixConsumer")
APISIX_GLOBAL_RULE = Resource(_G, "v2", "apisixglobalrules", "ApisixGlobalRule")
SERVICE = Resource("", "v1", "services", "Service")
ENDPOINT_SLICE = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
SECRET = Resource("", "v1", "secrets", "Secret")
POD = Resource("", "v1", "pods", "Pod")
LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease")


def _status_error(resp: httpx.Response, body: bytes) -> KubeError:
    try:
        st = json.loads(body)
        return KubeError(resp.status_code, str(st.get("message") or body[:300].decode("utf-8", "replace")),
                         reason=str(st.get("reason") or ""))
    except (ValueError, AttributeError):
        return KubeError(resp.status_code, body[:300].decode("utf-8", "replace"))


class KubeClient:
    """REST on plain dicts over lightkube's authenticated HTTP client."""

    def __init__(self, http: httpx.AsyncClient, *, namespace: str = "default") -> None:
        self._http = http
        self.namespace = namespace  # the namespace of the kubeconfig context / service account

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, *, context: str | None = None,
                    timeout: float = 15.0) -> KubeClient:
        """``kubeconfig`` file, else in-cluster (service account), else ``$KUBECONFIG`` or
        ``~/.kube/config`` (lightkube's ``KubeConfig.from_env``)."""
        try:
            if kubeconfig:
                if not Path(kubeconfig).is_file():
                    raise KubeConfigError(f"--kubeconfig {kubeconfig}: no such file")
                kc = KubeConfig.from_file(kubeconfig)
            else:
                kc = KubeConfig.from_env()
            conf = kc.get(context)
        except (_LightkubeConfigError, OSError, KeyError, ValueError) as e:
            raise KubeConfigError(f"cannot load the Kubernetes configuration: {e}") from None
        if conf is None:
            raise KubeConfigError("the Kubernetes configuration has no current context")
        params = ConnectionParams(timeout=httpx.Timeout(timeout))
        try:
            http = _adapter_client(conf, params)
        except (_LightkubeConfigError, OSError, AssertionError, ValueError) as e:
            raise KubeConfigError(f"cannot use the Kubernetes configuration: {e}") from None
        return cls(http, namespace=conf.namespace or "default")

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Obj:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            resp = await self._http.request(method, path, params={k: v for k, v in (params or {}).items()
                                                                  if v is not None},
                                            content=data, headers=headers)
        except httpx.HTTPError as e:
            raise KubeError(0, f"{method} {path}: {type(e).__name__}: {e}") from None
        if resp.status_code >= 400:
            raise _status_error(resp, resp.content)
        out = resp.json()
        return out if isinstance(out, dict) else {}

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self.request("GET", res.path(namespace, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        return await self.request("POST", res.path(namespace), body=obj)

    async def replace(self, res: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        """PUT (with ``metadata.resourceVersion`` in ``obj``: 409 when it changed since)."""
        return await self.request("PUT", res.path(namespace, obj["metadata"]["name"]), body=obj)

    async def patch_status(self, res: Resource, name: str, namespace: str | None, status: Obj) -> Obj:
        """JSON merge patch of the ``status`` subresource."""
        return await self.request("PATCH", res.path(namespace, name, "status"), body={"status": status},
                                  content_type="application/merge-patch+json")

    async def list(self, res: Resource, namespace: str | None = None, *, limit: int = 500) -> tuple[list[Obj], str]:
        """Every object (paged with ``limit``/``continue``) and the list's resourceVersion.
        Raises :class:`KubeError` when any page fails (never a partial result)."""
        items: list[Obj] = []
        cont: str | None = None
        rv = ""
        while True:
            page = await self.request("GET", res.path(namespace), params={"limit": limit, "continue": cont})
            for it in page.get("items") or ():
                if isinstance(it, dict):
                    it.setdefault("kind", res.kind)
                    it.setdefault("apiVersion", res.api_version)
                    items.append(it)
            meta = page.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            cont = meta.get("continue") or None
            if not cont:
                return items, rv

    async def watch(self, res: Resource, namespace: str | None, resource_version: str, *,
                    timeout_seconds: int = 300) -> AsyncIterator[Obj]:
        """Watch events (``{"type", "object"}``) from ``resource_version``, bookmarks on, until
        the server closes the stream.  An HTTP error status raises :class:`KubeError`."""
        params: dict[str, str | int] = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": timeout_seconds}
        timeout = httpx.Timeout(15.0, read=timeout_seconds + 30.0)
        try:
            async with self._http.stream("GET", res.path(namespace), params=params, timeout=timeout,
                                         headers={"Accept": "application/json"}) as resp:
                if resp.status_code >= 400:
                    raise _status_error(resp, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        raise KubeError(0, f"watch {res.plural}: undecodable event") from None
                    if isinstance(ev, dict):
                        yield ev
        except httpx.HTTPError as e:
            raise KubeError(0, f"watch {res.plural}: {type(e).__name__}: {e}") from None


EventHandler = Callable[[str, Obj, "Obj | None"], None]  # (type, object, previous object or None)


class Informer:
    """List → watch with a cache of one resource in one namespace (None: all namespaces);
    ``handler(type, obj, old)`` is called for every change of the cache (type ``ADDED``,
    ``MODIFIED`` or ``DELETED``).  See the module docstring."""

    def __init__(self, client: KubeClient, res: Resource, namespace: str | None, handler: EventHandler, *,
                 backoff_min: float = 0.5, backoff_max: float = 30.0, watch_timeout: int = 300) -> None:
        self.client, self.res, self.namespace, self.handler = client, res, namespace, handler
        self.cache: dict[ObjKey, Obj] = {}
        self.synced = asyncio.Event()
        self.relists = 0
        self._rv = ""
        self._backoff_min, self._backoff_max, self._watch_timeout = backoff_min, backoff_max, watch_timeout

    def __repr__(self) -> str:
        return f"Informer({self.res.plural}, {self.namespace or '*'})"

    async def run(self) -> None:
        delay = self._backoff_min
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch_once()
                delay = self._backoff_min  # a clean server close: resume at once
            except asyncio.CancelledError:
                raise
            except KubeError as e:
                if e.status == 410:
                    log.info("%r: resourceVersion %s expired (410 Gone): relisting", self, self._rv)
                    need_list = True
                    continue
                if not self._rv:
                    need_list = True
                log.warning("%r: %s; retrying in %.1fs", self, e, delay)
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self._backoff_max)

    async def _relist(self) -> None:
        items, rv = await self.client.list(self.res, self.namespace)  # raises before touching the cache
        self.relists += 1
        fresh = {obj_key(o): o for o in items}
        old = self.cache
        self.cache = fresh
        self._rv = rv
        for k, o in fresh.items():
            prev = old.get(k)
            if prev is None:
                self._emit("ADDED", o, None)
            elif _rv(prev) != _rv(o):
                self._emit("MODIFIED", o, prev)
        for k, prev in old.items():
            if k not in fresh:
                self._emit("DELETED", prev, prev)
        self.synced.set()

    async def _watch_once(self) -> None:
        async for ev in self.client.watch(self.res, self.namespace, self._rv, timeout_seconds=self._watch_timeout):
            typ = ev.get("type")
            obj = ev.get("object")
            if not isinstance(obj, dict):
                continue
            if typ == "ERROR":
                code = int(obj.get("code") or 0)
                raise KubeError(code, str(obj.get("message") or "watch error"), reason=str(obj.get("reason") or ""))
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if typ == "BOOKMARK":
                self._rv = rv or self._rv
                continue
            obj.setdefault("kind", self.res.kind)
            obj.setdefault("apiVersion", self.res.api_version)
            k = obj_key(obj)
            prev = self.cache.get(k)
            if typ == "DELETED":
                if self.cache.pop(k, None) is not None:
                    self._emit("DELETED", obj, prev)
            elif typ in ("ADDED", "MODIFIED"):
                self.cache[k] = obj
                self._emit("ADDED" if prev is None else "MODIFIED", obj, prev)
            self._rv = rv or self._rv

    def _emit(self, typ: str, obj: Obj, prev: Obj | None) -> None:
        try:
            self.handler(typ, obj, prev)
        except Exception:  # a handler bug must not stop the watch
            log.exception("%r: event handler failed", self)


def _rv(o: Mapping[str, Any]) -> str:
    return str((o.get("metadata") or {}).get("resourceVersion") or "")


# --- leader election ------------------------------------------------------------------------


def _micro_time() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Lease-based leader election (``coordination.k8s.io/v1``), as client-go's
    ``leaderelection`` with a LeaseLock:

    * every ``retry_period`` the candidate reads the Lease; a free Lease, or one whose holder has
      not renewed it for ``leaseDurationSeconds`` *as observed locally* (clocks of different
      machines are never compared: the record must stay unchanged for that long), is taken with
      an update conditioned on its ``resourceVersion`` (a 409 means another candidate won);
    * the leader renews every ``retry_period``; when no renewal succeeded for ``renew_deadline``
      it stops being the leader at once (the controller checks :attr:`is_leader` before every
      write);
    * :meth:`release` on shutdown empties ``holderIdentity`` so that a follower takes over
      without waiting for the expiry.
    """

    def __init__(self, client: KubeClient, *, name: str, namespace: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.client, self.name, self.namespace, self.identity = client, name, namespace, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.on_change = on_change
        self._leader = False
        self._last_renew = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def is_leader(self) -> bool:
        if self._leader and asyncio.get_running_loop().time() - self._last_renew > self.renew_deadline:
            self._set(False)
        return self._leader

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.warning("leader election: %s %s lease %s/%s", self.identity,
                        "acquired" if leader else "lost", self.namespace, self.name)
            if self.on_change is not None:
                self.on_change(leader)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                ok = await self._try()
            except KubeError as e:
                log.warning("leader election: %s", e)
                ok = False
            now = loop.time()
            if ok:
                self._last_renew = now
                self._set(True)
            elif self._leader and now - self._last_renew > self.renew_deadline:
                self._set(False)
            period = self.retry_period if self._leader else self.retry_period * (1 + 0.2 * random.random())
            await asyncio.sleep(period)

    async def _try(self) -> bool:
        now = asyncio.get_running_loop().time()
        lease = await self.client.get(LEASE, self.name, self.namespace)
        stamp = _micro_time()
        if lease is None:
            body = {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.lease_duration)),
                             "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}
            try:
                await self.client.create(LEASE, body, self.namespace)
                return True
            except KubeError as e:
                if e.status == 409:
                    return False
                raise
        spec = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder and holder != self.identity:
            if self._leader:
                self._set(False)  # somebody else holds it: stop writing now
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if now < self._observed_at + duration:
                return False
        if holder != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = stamp
        spec.update(holderIdentity=self.identity, renewTime=stamp,
                    leaseDurationSeconds=int(round(self.lease_duration)))
        lease["spec"] = spec
        try:
            await self.client.replace(LEASE, lease, self.namespace)
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def release(self) -> None:
        """Give the Lease up (only when held): a follower need not wait for the expiry."""
        if not self._leader:
            return
        self._set(False)
        try:
            lease = await self.client.get(LEASE, self.name, self.namespace)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1,
                             "renewTime": _micro_time()}
            await self.client.replace(LEASE, lease, self.namespace)
        except KubeError as e:
            log.warning("leader election: could not release the lease: %s", e)
