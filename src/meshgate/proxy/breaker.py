"""Envoy's circuit breakers on mesh clusters (a DestinationRule's ``connectionPool``).

Envoy counts a cluster's requests across all its worker threads; Meshgate's workers are
processes, so the count lives in a shared dict (``meshgate.shared``): one key per cluster and
worker slot, summed under the dict's lock.  A worker counts only into its own slot, and
resets that slot the first time it touches a cluster, so a worker that died with requests in
flight leaves nothing behind once its replacement starts.

What is limited: HTTP/1 requests in flight to the cluster.  Each holds one upstream connection,
and requests beyond ``max_connections`` are Envoy's pending ones, up to
``max_pending_requests``; ``max_requests`` bounds the parallel requests.  So a request is
refused when ``min(max_connections, max_requests) + max_pending_requests`` are already in
flight: Envoy's answer, 503 with ``x-envoy-overloaded: true`` ("reset reason: overflow").
Envoy would queue the pending ones until a connection frees; Meshgate lets them run at
once (the same number get through, sooner).  Only limits a cluster sets explicitly are
enforced: istiod's default 4294967295 and Envoy's implicit 1024 cost nothing per request.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..shared import SharedDict, open_dict

__all__ = ["Breakers", "cluster_limit"]

_UNLIMITED = 1 << 31


def cluster_limit(conf: Mapping[str, Any]) -> int | None:
    """The most requests a cluster takes in flight, or None when it sets no limit."""
    cb = ((conf.get("xds") or {}).get("circuit_breakers") or {}).get("default") or {}
    if not cb.get("explicit"):
        return None
    limit = min(int(cb.get("max_connections", _UNLIMITED)), int(cb.get("max_requests", _UNLIMITED)))
    limit += int(cb.get("max_pending_requests", 0))
    return limit if limit < _UNLIMITED else None


class Breakers:
    """A worker's view of the shared in-flight counts."""

    def __init__(self, slot: int, slots: int, *, dict_name: str = "mesh_breakers") -> None:
        self.slot = slot
        self.slots = max(1, slots)
        self.dict_name = dict_name
        self._d: SharedDict | None = None
        self._mine: dict[str, int] = {}

    def _dict(self) -> SharedDict:
        d = self._d
        if d is None:
            d = self._d = open_dict(self.dict_name, capacity=16384)
        return d

    def acquire(self, cluster: str, limit: int) -> bool:
        """One more request in flight on ``cluster``, unless ``limit`` are already."""
        d = self._dict()
        own = f"{cluster}#{self.slot}"
        with d.locked() as t:
            if cluster not in self._mine:
                t.set(own, 0.0)          # first touch by this process: nothing of ours in flight
                self._mine[cluster] = 0
            total = 0.0
            for i in range(self.slots):
                total += t.get(f"{cluster}#{i}") or 0.0
            if total >= limit:
                return False
            t.incr(own, 1.0, init=0.0)
        self._mine[cluster] += 1
        return True

    def release(self, cluster: str) -> None:
        n = self._mine.get(cluster, 0)
        if n <= 0:
            return
        self._mine[cluster] = n - 1
        self._dict().incr(f"{cluster}#{self.slot}", -1.0, init=0.0)

    def in_flight(self, cluster: str) -> int:
        """This worker's requests in flight on ``cluster``."""
        return self._mine.get(cluster, 0)
