"""A cluster's APISIX upstream conf with its current endpoints (pure).

``upstream_conf(cluster, nodes)`` combines the output of
:func:`~meshgate.xds.translate.cluster.translate_cluster` with the nodes of the latest EDS
push (:func:`~meshgate.xds.translate.endpoint.translate_cla`) into the conf
``meshgate.proxy.runtime.UpstreamRuntime("upstreams/<name>", conf)`` compiles:

* EDS cluster, ``nodes`` given: ``conf["nodes"]`` = ``select_nodes(nodes, ...)`` with the
  cluster's ``panic_threshold``, ``locality_weighted`` and ``fail_traffic_on_panic``;
  ``xds.warming`` = False; ``xds.no_healthy`` = endpoints exist but none may take traffic
  (Envoy answers 503 "no healthy upstream"); ``xds.endpoints`` = how many EDS endpoints;
* EDS cluster, ``nodes is None`` (no ClusterLoadAssignment yet): no nodes and
  ``xds.warming`` = True.  Envoy does not use a warming cluster (istiod sets
  ``initial_fetch_timeout: 0s``: wait for EDS forever), so the mesh runtime should keep the
  previous version of the cluster, or answer 503 like Envoy's "cluster not found";
* STATIC / DNS / ORIGINAL_DST clusters: their nodes are part of the cluster (Envoy ignores EDS
  for them), ``nodes`` is ignored and ``xds.warming`` is False.

The input dicts are not modified; the result shares nothing mutable with ``cluster`` except
nested values that are never written (checks, circuit breakers...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .endpoint import DEFAULT_PANIC_THRESHOLD, select_nodes

__all__ = ["upstream_conf"]


def upstream_conf(cluster: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The APISIX upstream conf of ``cluster`` with ``nodes`` (None = EDS not received yet)."""
    conf = dict(cluster)
    xds = dict(cluster.get("xds") or {})
    conf["xds"] = xds
    if xds.get("type", "EDS") != "EDS":
        conf["nodes"] = list(cluster.get("nodes") or [])
        xds["warming"] = False
        return conf
    if nodes is None:
        conf["nodes"] = []
        xds["warming"] = True
        xds["no_healthy"] = False
        xds["endpoints"] = 0
        return conf
    selected = select_nodes(nodes, float(xds.get("panic_threshold", DEFAULT_PANIC_THRESHOLD)),
                            locality_weighted=bool(xds.get("locality_weighted", False)),
                            fail_traffic_on_panic=bool(xds.get("fail_traffic_on_panic", False)))
    conf["nodes"] = selected
    xds["warming"] = False
    xds["no_healthy"] = bool(nodes) and not selected
    xds["endpoints"] = len(nodes)
    return conf
