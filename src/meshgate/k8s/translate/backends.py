"""One APISIX upstream per Service port, shared by every route that sends traffic there.

AIC v2 writes an upstream per route rule and backend (``<ns>_<name>_<i>_<j>``), so a pod
restart behind a Service that 1,000 routes use is 1,000 upstream writes (and 1,000 chances
for the version skew users complain about, ingress-controller.md section 10.1).  Meshgate
writes the upstream of a backend once per *what decides its nodes*:

``Service_<ns>_<service>_<port>`` plus ``_<subset>`` (ApisixUpstream subset),
``_service`` (``resolveGranularity: service``) and ``_w<weight>`` (node weight other than
100), the ``<Kind>_<ns>_<name>_<port>`` form AIC uses for Gateway API backendRefs.  Routes
point at it by ``upstream_id`` (and ``traffic-split`` by ``weighted_upstreams[].upstream_id``);
an EndpointSlice change is then one node-only write, whatever the number of routes.

Its ownership labels name the Service (``k8s/kind: Service``), not a route: every route that
uses it produces the same item, and the controller keeps it while one of them is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .apisixupstream import subsets_of, upstream_fields
from .common import ClusterState, Item
from .endpoints import DEFAULT_WEIGHT, Backend, find_service_port, resolve_backend
from .naming import DESC, DEFAULT_CONTROLLER_NAME, fit_name, gen_id, labels

__all__ = ["service_upstream_name", "service_upstream"]

Obj = Mapping[str, Any]


def service_upstream_name(namespace: str, b: Backend, port: int | str | None) -> str:
    name = f"Service_{namespace}_{b.service_name}_{port if port is not None else ''}"
    if b.subset:
        name += f"_{b.subset}"
    if b.resolve_granularity == "service":
        name += "_service"
    if b.weight != DEFAULT_WEIGHT:
        name += f"_w{b.weight}"
    return name


def service_upstream(namespace: str, b: Backend, state: ClusterState, *,
                     controller_name: str = DEFAULT_CONTROLLER_NAME) -> tuple[Item, bool]:
    """The shared upstream of backend ``b`` of ``namespace`` and whether its Service port asks
    for websockets (``appProtocol``).  The same-named ApisixUpstream's settings apply (as for
    every route reaching the Service).  Raises BackendError / ConfigError (an ApisixUpstream
    pointer) when the backend cannot be resolved."""
    au = state.apisix_upstream(namespace, b.service_name)
    svc = state.service(namespace, b.service_name)
    port: int | None = None
    if svc is not None and (svc.get("spec") or {}).get("type") != "ExternalName":
        port = int(find_service_port(svc, b.service_port).get("port") or 0) or None
    elif isinstance(b.service_port, int):
        port = b.service_port
    fields = upstream_fields(au, state, port=port) if au is not None else {}
    value: dict[str, Any] = {"type": "roundrobin", **fields}
    websocket = False
    if "discovery_type" not in fields:
        res = resolve_backend(svc, state.slices_of(namespace, b.service_name), b, namespace=namespace,
                              pods=state.pods, subsets=subsets_of(au), upstream_name=f"{namespace}/{b.service_name}")
        value["nodes"] = res.nodes
        if res.scheme and "scheme" not in value:
            value["scheme"] = res.scheme
        websocket = res.websocket
    name = service_upstream_name(namespace, b, port if port is not None else b.service_port)
    uid = gen_id(name)
    value = {"id": uid, "name": fit_name(name), "desc": DESC,
             "labels": labels("Service", namespace, b.service_name, controller_name=controller_name), **value}
    return Item("upstreams", uid, value), websocket
