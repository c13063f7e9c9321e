"""Backend resolution: a Service, its EndpointSlices (and Pods) → APISIX upstream nodes.

ingress-controller.md section 5, as AIC v2 (``translateBackendRef``,
``translateEndpointSlice``, ``filterEndpointSliceByTargetPod``):

* ``servicePort`` (number or port name) picks a port of the Service; its *name* selects the
  EndpointSlice port (an unnamed Service port matches the unnamed slice port), whose number
  (the target port) is the node port;
* every endpoint with ``conditions.ready != false`` contributes each address as a node
  ``{host, port, weight}``, weight = the backend weight (default 100);
* ``resolveGranularity: service`` → one node ``{clusterIP, service port}``; headless
  Services have no ClusterIP and are an error;
* ``type: ExternalName`` → one node ``{externalName, port}`` (port 80 when no servicePort);
* a Service port ``appProtocol`` gives the upstream scheme (``http``, ``https``;
  ``kubernetes.io/ws`` / ``kubernetes.io/wss`` also turn websocket on);
* ``subset`` (from the same-named ApisixUpstream's ``subsets``): an endpoint whose
  ``targetRef`` is a Pod is kept only when the Pod's labels include the subset's labels (a
  Pod that is not known is dropped; an endpoint without a Pod targetRef is kept).

Both ``discovery.k8s.io/v1`` and ``v1beta1`` slices work: only ``endpoints[].addresses``,
``conditions.ready``, ``targetRef`` and ``ports`` are read.  Nodes are de-duplicated and
sorted (host, port) so that the result does not depend on list order.

Problems raise :class:`BackendError` with a message a user can act on, e.g.
``service default/productpage has no port 9081; it has 9080 (http)``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import MeshgateError

__all__ = ["BackendError", "Backend", "Resolved", "resolve_backend", "find_service_port", "describe_ports",
           "app_protocol_scheme", "DEFAULT_WEIGHT"]

Obj = Mapping[str, Any]
DEFAULT_WEIGHT = 100  # AIC apiv2.DefaultWeight (ApisixRoute backends)


class BackendError(MeshgateError):
    """A backend cannot be resolved to nodes; ``message`` says why and what to change."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Backend:
    """An ``ApisixRoute`` backend (``http[].backends[]`` or ``stream[].backend``)."""

    service_name: str
    service_port: int | str | None = None
    resolve_granularity: Literal["endpoint", "service"] = "endpoint"
    weight: int = DEFAULT_WEIGHT
    subset: str | None = None

    @classmethod
    def from_spec(cls, spec: Obj) -> Backend:
        """From the CRD dict; raises :class:`BackendError` on a malformed entry."""
        name = spec.get("serviceName")
        if not isinstance(name, str) or not name:
            raise BackendError("serviceName is required")
        port = spec.get("servicePort")
        if isinstance(port, bool) or not (port is None or isinstance(port, (int, str))):
            raise BackendError(f"servicePort must be a port number or a port name, got {port!r}")
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # intstr: "9080" in YAML written as a string
        raw = spec.get("resolveGranularity") or "endpoint"
        if raw not in ("endpoint", "service"):
            raise BackendError(f"resolveGranularity must be endpoint or service, got {raw!r}")
        gran: Literal["endpoint", "service"] = "service" if raw == "service" else "endpoint"
        weight = spec.get("weight")
        if weight is None:
            weight = DEFAULT_WEIGHT
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise BackendError(f"weight must be an integer >= 0, got {weight!r}")
        subset = spec.get("subset") or None
        return cls(name, port, gran, weight, str(subset) if subset else None)


@dataclass(frozen=True, slots=True)
class Resolved:
    """Nodes (``[{host, port, weight}]``), the Service port number the backend chose (what
    ApisixUpstream ``portLevelSettings`` match), the scheme from ``appProtocol`` and whether
    ``appProtocol`` asks for websockets."""

    nodes: list[dict[str, Any]]
    port: int | None
    scheme: str | None = None
    websocket: bool = False


_APP_PROTOCOLS: dict[str, tuple[str, bool]] = {
    "http": ("http", False),
    "https": ("https", False),
    "kubernetes.io/ws": ("http", True),
    "kubernetes.io/wss": ("https", True),
}


def app_protocol_scheme(app_protocol: object) -> tuple[str | None, bool]:
    """``(scheme, websocket)`` for a Service port ``appProtocol`` (AIC
    ``appProtocolToUpstreamScheme``); unknown values give ``(None, False)``."""
    if not isinstance(app_protocol, str):
        return None, False
    got = _APP_PROTOCOLS.get(app_protocol)
    return (got[0], got[1]) if got else (None, False)


def describe_ports(service: Obj) -> str:
    """``9080 (http), 9443`` — the Service's ports for error messages."""
    parts = []
    for p in (service.get("spec") or {}).get("ports") or ():
        if not isinstance(p, Mapping):
            continue
        parts.append(f"{p.get('port')} ({p['name']})" if p.get("name") else str(p.get("port")))
    return ", ".join(parts) if parts else "no ports"


def _ref(service: Obj) -> str:
    meta = service.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def find_service_port(service: Obj, port: int | str | None) -> Mapping[str, Any]:
    """The Service port a backend's ``servicePort`` names (number or name); with no
    ``servicePort`` the Service's only port.  Raises :class:`BackendError`."""
    ports = [p for p in (service.get("spec") or {}).get("ports") or () if isinstance(p, Mapping)]
    if port is None:
        if len(ports) == 1:
            return ports[0]
        raise BackendError(f"servicePort is required: service {_ref(service)} has {len(ports) or 'no'} ports "
                           f"({describe_ports(service)})")
    for p in ports:
        if (isinstance(port, int) and p.get("port") == port) or (isinstance(port, str) and p.get("name") == port):
            return p
    what = f"port {port}" if isinstance(port, int) else f"port named {port!r}"
    raise BackendError(f"service {_ref(service)} has no {what}; it has {describe_ports(service)}")


def resolve_backend(service: Obj | None, slices: Sequence[Obj], backend: Backend, *, namespace: str,
                    pods: Mapping[tuple[str, str], Obj] | None = None,
                    subsets: Sequence[Obj] | None = None, upstream_name: str | None = None) -> Resolved:
    """Resolve one backend of ``namespace`` to APISIX nodes.

    ``service`` is the backend's Service (``None`` when it does not exist), ``slices`` its
    EndpointSlices, ``pods`` the Pods by ``(namespace, name)`` (needed for ``subset``),
    ``subsets`` the ``spec.subsets`` of the same-named ApisixUpstream (``upstream_name``
    names it in messages).  Raises :class:`BackendError`.
    """
    ref = f"{namespace}/{backend.service_name}"
    if service is None:
        raise BackendError(f"service {ref} not found; create it or fix serviceName")
    spec = service.get("spec") or {}
    labels = _subset_labels(backend, subsets, upstream_name or ref)

    if spec.get("type") == "ExternalName":
        if labels is not None:
            raise BackendError(f"subset {backend.subset!r} cannot select pods of ExternalName service {ref}")
        host = spec.get("externalName")
        if not host:
            raise BackendError(f"service {ref} is of type ExternalName but has no externalName")
        if isinstance(backend.service_port, str):
            sp = find_service_port(service, backend.service_port)
            port = int(sp.get("port") or 80)
        else:
            port = backend.service_port or 80
            sp = next((p for p in spec.get("ports") or () if isinstance(p, Mapping) and p.get("port") == port), {})
        scheme, ws = app_protocol_scheme(sp.get("appProtocol"))
        return Resolved([{"host": str(host), "port": port, "weight": backend.weight}], port, scheme, ws)

    sp = find_service_port(service, backend.service_port)
    port_number = int(sp.get("port") or 0)
    scheme, ws = app_protocol_scheme(sp.get("appProtocol"))

    if backend.resolve_granularity == "service":
        if labels is not None:
            raise BackendError(f"subset {backend.subset!r} cannot be used with resolveGranularity: service (the "
                               f"ClusterIP of {ref} balances over every pod); use resolveGranularity: endpoint")
        cluster_ip = spec.get("clusterIP")
        if not cluster_ip or cluster_ip == "None":
            raise BackendError(f"service {ref} is headless (no clusterIP): resolveGranularity: service needs a "
                               "ClusterIP; use resolveGranularity: endpoint")
        return Resolved([{"host": str(cluster_ip), "port": port_number, "weight": backend.weight}],
                        port_number, scheme, ws)

    port_name = sp.get("name") or ""
    seen: set[tuple[str, int]] = set()
    for sl in slices:
        slice_port = None
        for p in sl.get("ports") or ():
            if isinstance(p, Mapping) and (p.get("name") or "") == port_name and p.get("port"):
                slice_port = int(p["port"])
                break
        if slice_port is None:
            continue
        for ep in sl.get("endpoints") or ():
            if not isinstance(ep, Mapping):
                continue
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            if labels is not None and not _pod_matches(ep, labels, pods or {}, namespace):
                continue
            for addr in ep.get("addresses") or ():
                seen.add((str(addr), slice_port))
    nodes = [{"host": h, "port": p, "weight": backend.weight} for h, p in sorted(seen, key=_node_order)]
    return Resolved(nodes, port_number, scheme, ws)


def _node_order(n: tuple[str, int]) -> tuple[int, Any, str, int]:
    try:
        ip = ipaddress.ip_address(n[0])
        return (ip.version, int(ip), "", n[1])
    except ValueError:
        return (9, 0, n[0], n[1])


def _subset_labels(backend: Backend, subsets: Sequence[Obj] | None, where: str) -> dict[str, str] | None:
    if not backend.subset:
        return None
    names = []
    for s in subsets or ():
        if isinstance(s, Mapping):
            names.append(str(s.get("name")))
            if s.get("name") == backend.subset:
                return {str(k): str(v) for k, v in (s.get("labels") or {}).items()}
    have = f"it has {', '.join(names)}" if names else "it defines no subsets"
    if subsets is None:
        raise BackendError(f"subset {backend.subset!r} needs an ApisixUpstream named {where} defining it in "
                           "spec.subsets")
    raise BackendError(f"subset {backend.subset!r} is not defined in ApisixUpstream {where}; {have}")


def _pod_matches(ep: Obj, labels: Mapping[str, str], pods: Mapping[tuple[str, str], Obj], namespace: str) -> bool:
    ref = ep.get("targetRef")
    if not isinstance(ref, Mapping) or ref.get("kind") != "Pod":
        return True  # as AIC: only Pod-backed endpoints are filtered
    pod = pods.get((str(ref.get("namespace") or namespace), str(ref.get("name") or "")))
    if pod is None:
        return False
    have = (pod.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
