"""Load balancers: ``roundrobin``, ``chash``, ``least_conn``, ``ewma``, with priority groups.

Theory of operation
-------------------
A worker compiles one balancer per upstream per Snapshot (``create_balancer``).  Each
``pick`` narrows the node list in the same order APISIX does (``apisix/balancer.lua`` +
``balancer/priority.lua``):

1. *candidates*: nodes with ``weight > 0`` (weight 0 is never selected);
2. *health*: candidates for which ``healthy(node)`` is true; when none is, all candidates are
   kept (APISIX never black-holes an upstream because its checker says everything is down);
3. *priority*: the survivors are grouped by ``priority``, highest first; the first group that
   still has a node not in ``tried`` is used, so a lower group is reached only after every
   (eligible) node of the higher groups was tried for this request;
4. the algorithm chooses among that group's untried nodes.

``None`` means nothing is eligible: no nodes, every weight 0, or every eligible node tried.

Per-request counters (``least_conn``, ``ewma``) are updated by the caller: ``on_start`` once
the request is sent to the chosen node, ``on_finish`` when that attempt ends (success or
failure).  ``pick`` itself only advances round-robin state.  Counters live in the balancer
object, i.e. per worker and per Snapshot, like APISIX's per-worker pickers.

Nothing here does I/O; the clock and the random source are injectable for tests.
"""

from __future__ import annotations

import math
import random
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Literal, Protocol, runtime_checkable

from meshgate.errors import ConfigError

from .nodes import Node

__all__ = [
    "BalanceContext",
    "DictContext",
    "Balancer",
    "BalancerType",
    "HashOn",
    "BALANCER_TYPES",
    "RoundRobinBalancer",
    "ChashBalancer",
    "LeastConnBalancer",
    "EwmaBalancer",
    "create_balancer",
    "default_retries",
    "chash_key",
]

BalancerType = Literal["roundrobin", "chash", "least_conn", "ewma"]
HashOn = Literal["vars", "header", "cookie", "consumer", "vars_combinations"]
BALANCER_TYPES: tuple[str, ...] = ("roundrobin", "chash", "least_conn", "ewma")
_HASH_ON: tuple[str, ...] = ("vars", "header", "cookie", "consumer", "vars_combinations")


# --------------------------------------------------------------------------- seams


@runtime_checkable
class BalanceContext(Protocol):
    """What a balancer may read from the request (the chash key sources).

    ``var`` follows nginx variable naming: ``uri``, ``remote_addr``, ``arg_<name>``,
    ``http_<lowercased_header_with_underscores>``, ``cookie_<name>``...; ``None`` = not set.
    """

    def var(self, name: str) -> str | None: ...

    @property
    def consumer_name(self) -> str | None: ...


@dataclass(slots=True)
class DictContext:
    """A :class:`BalanceContext` over a plain mapping of variables (tests, tools)."""

    vars: Mapping[str, str] = field(default_factory=dict)
    consumer_name: str | None = None

    def var(self, name: str) -> str | None:
        return self.vars.get(name)


class Balancer(Protocol):
    def pick(
        self,
        ctx: BalanceContext,
        *,
        tried: Collection[Node] = (),
        healthy: Callable[[Node], bool] | None = None,
    ) -> Node | None:
        """Choose a node for this attempt; ``tried`` = nodes already attempted by this request.

        ``None``: nothing eligible (no nodes, all weights 0, every eligible node tried).
        """
        ...

    def on_start(self, node: Node) -> None:
        """The request was sent to ``node`` (counts it in flight)."""
        ...

    def on_finish(self, node: Node, latency_s: float, *, failed: bool = False) -> None:
        """The attempt on ``node`` ended after ``latency_s``; ``failed`` when it did not
        complete (connect error, timeout, retried 5xx)."""
        ...


# --------------------------------------------------------------------------- shared filtering


class _Base:
    """Candidate / health / priority / tried filtering shared by every algorithm."""

    __slots__ = ("nodes", "_weights", "_candidates", "_groups", "_index")

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self._weights = [n.weight for n in self.nodes]
        self._candidates = [i for i, n in enumerate(self.nodes) if n.weight > 0]
        # Priority levels present among candidates, highest first (priority.lua).
        self._groups = sorted({self.nodes[i].priority for i in self._candidates}, reverse=True)
        # Node -> first index (duplicates share counters, which is what their identity means).
        self._index: dict[Node, int] = {}
        for i, n in enumerate(self.nodes):
            self._index.setdefault(n, i)

    def _eligible(
        self, tried: Collection[Node], healthy: Callable[[Node], bool] | None
    ) -> list[int] | None:
        """Indices (in node order) the algorithm may choose from, or None."""
        nodes = self.nodes
        cands = self._candidates
        if not cands:
            return None
        if healthy is not None:
            alive = [i for i in cands if healthy(nodes[i])]
            if alive:  # all unhealthy -> use all (never black-hole)
                cands = alive
        if tried:
            tried_set = tried if isinstance(tried, (set, frozenset)) else set(tried)
        else:
            tried_set = None
        if len(self._groups) == 1:
            if tried_set is None:
                return cands
            left = [i for i in cands if nodes[i] not in tried_set]
            return left or None
        for prio in self._groups:
            left = [
                i
                for i in cands
                if nodes[i].priority == prio and (tried_set is None or nodes[i] not in tried_set)
            ]
            if left:
                return left
        return None

    def pick(
        self,
        ctx: BalanceContext,
        *,
        tried: Collection[Node] = (),
        healthy: Callable[[Node], bool] | None = None,
    ) -> Node | None:
        elig = self._eligible(tried, healthy)
        if elig is None:
            return None
        return self.nodes[self._choose(ctx, elig)]

    def _choose(self, ctx: BalanceContext, elig: list[int]) -> int:  # pragma: no cover
        raise NotImplementedError

    def on_start(self, node: Node) -> None:
        return None

    def on_finish(self, node: Node, latency_s: float, *, failed: bool = False) -> None:
        return None


# --------------------------------------------------------------------------- roundrobin


class RoundRobinBalancer(_Base):
    """nginx's smooth weighted round robin (``ngx_http_upstream_get_peer``).

    Each pick adds every eligible node's weight to its ``current`` value, chooses the largest
    (first in node order on ties) and subtracts the eligible total from the winner.  Weights
    {a:5, b:1, c:1} give ``a a b a c a a``.  Nodes excluded from a pick (tried, unhealthy,
    other priority group) neither gain nor lose, exactly as nginx skips down/tried peers.
    """

    __slots__ = ("_current",)

    def __init__(self, nodes: Sequence[Node]) -> None:
        super().__init__(nodes)
        self._current = [0] * len(self.nodes)

    def _swrr(self, elig: Sequence[int]) -> int:
        cur = self._current
        w = self._weights
        total = 0
        best = -1
        best_cur = 0
        for i in elig:
            wi = w[i]
            total += wi
            c = cur[i] + wi
            cur[i] = c
            if best < 0 or c > best_cur:
                best = i
                best_cur = c
        cur[best] -= total
        return best

    def _choose(self, ctx: BalanceContext, elig: list[int]) -> int:
        if len(elig) == 1:
            return elig[0]
        return self._swrr(elig)


# --------------------------------------------------------------------------- chash


_VAR_RE = re.compile(r"(\\?)\$(?:\{(\w+)\}|(\w+))")


def _resolve_template(template: str, ctx: BalanceContext) -> tuple[str, int]:
    """Expand ``$name`` / ``${name}`` from ``ctx``; ``\\$`` is a literal dollar.

    Returns the text and how many variables had a value (APISIX ``resolve_var``).
    """
    resolved = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal resolved
        if m.group(1):
            return m.group(0)[1:]
        value = ctx.var(m.group(2) or m.group(3))
        if value is None:
            return ""
        resolved += 1
        return value

    return _VAR_RE.sub(sub, template), resolved


def chash_key(ctx: BalanceContext, hash_on: str, key: str | None) -> str:
    """The string APISIX's chash hashes for this request (``fetch_chash_hash_key``).

    ``vars``: ``var(key)``; ``header``: ``var("http_" + normalized key)``; ``cookie``:
    ``var("cookie_" + key)``; ``consumer``: the consumer name; ``vars_combinations``: the
    template with variables expanded, missing when none of them had a value.  A missing key
    falls back to ``remote_addr`` (then to ``""``).
    """
    value: str | None
    if hash_on == "consumer":
        value = ctx.consumer_name
    elif key is None:
        value = None
    elif hash_on == "vars":
        value = ctx.var(key)
    elif hash_on == "header":
        value = ctx.var("http_" + key.lower().replace("-", "_"))
    elif hash_on == "cookie":
        value = ctx.var("cookie_" + key)
    elif hash_on == "vars_combinations":
        text, n = _resolve_template(key, ctx)
        value = text if n else None
    else:
        value = None
    if value is None:
        value = ctx.var("remote_addr")
    return value if value is not None else ""


def _hash32(data: str) -> int:
    return int.from_bytes(blake2b(data.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "big")


class ChashBalancer(_Base):
    """Consistent hashing on a ring of virtual nodes (ketama style).

    Each node gets ``POINTS_PER_WEIGHT * weight / gcd(weights)`` points (scaled down
    proportionally when the ring would exceed ``MAX_POINTS``), placed at
    ``hash("host:port#i")``.  A point depends only on the node's own address, so removing a
    node remaps only the keys it owned (~1/N).  A request's key is hashed onto the ring and
    walks clockwise to the first eligible node; skipping ineligible nodes (unhealthy, tried,
    other priority group) is equivalent to a ring built without them, and on retry the walk
    reaches the next node on the ring, like APISIX's ``picker:next()``.
    """

    POINTS_PER_WEIGHT = 160
    MAX_POINTS = 160 * 1024

    __slots__ = ("hash_on", "key", "_hashes", "_owners", "_n_cands")

    def __init__(self, nodes: Sequence[Node], *, hash_on: str = "vars", key: str | None = None) -> None:
        super().__init__(nodes)
        self.hash_on = hash_on
        self.key = key
        self._n_cands = len(self._candidates)
        g = 0
        for i in self._candidates:
            g = math.gcd(g, self._weights[i])
        counts = {i: self.POINTS_PER_WEIGHT * self._weights[i] // g for i in self._candidates} if g else {}
        total = sum(counts.values())
        if total > self.MAX_POINTS:
            scale = self.MAX_POINTS / total
            counts = {i: max(1, int(c * scale)) for i, c in counts.items()}
        ring: list[tuple[int, int]] = []
        seen: set[str] = set()
        for i, count in counts.items():
            addr = self.nodes[i].addr
            if addr in seen:  # duplicate node entries share one set of points
                continue
            seen.add(addr)
            ring.extend((_hash32(f"{addr}#{k}"), i) for k in range(count))
        ring.sort()
        self._hashes = [h for h, _ in ring]
        self._owners = [i for _, i in ring]

    def _choose(self, ctx: BalanceContext, elig: list[int]) -> int:
        if len(elig) == 1:
            return elig[0]
        h = _hash32(chash_key(ctx, self.hash_on, self.key))
        n = len(self._hashes)
        pos = bisect_left(self._hashes, h)
        owners = self._owners
        if len(elig) == self._n_cands:  # nothing excluded: the first point owns the key
            return owners[pos % n]
        allowed = set(elig)
        for step in range(n):
            owner = owners[(pos + step) % n]
            if owner in allowed:
                return owner
        return elig[0]  # unreachable: every candidate has at least one point


# --------------------------------------------------------------------------- least_conn


class LeastConnBalancer(RoundRobinBalancer):
    """Lowest ``(active + 1) / weight`` (APISIX ``least_conn.lua``).

    Ties are broken by smooth weighted round robin among the tied nodes (what nginx's
    ``least_conn`` does), which is deterministic and spreads sequential traffic instead of
    always choosing the first node.
    """

    __slots__ = ("_active",)

    def __init__(self, nodes: Sequence[Node]) -> None:
        super().__init__(nodes)
        self._active = [0] * len(self.nodes)

    def active(self, node: Node) -> int:
        """In-flight requests counted for ``node`` (introspection)."""
        i = self._index.get(node)
        return 0 if i is None else self._active[i]

    def _choose(self, ctx: BalanceContext, elig: list[int]) -> int:
        if len(elig) == 1:
            return elig[0]
        act = self._active
        w = self._weights
        best: list[int] = []
        # Compare (a+1)/w exactly via cross-multiplication: (a_i+1)*w_j vs (a_j+1)*w_i.
        bn, bd = 0, 1
        for i in elig:
            num, den = act[i] + 1, w[i]
            if not best or num * bd < bn * den:
                best = [i]
                bn, bd = num, den
            elif num * bd == bn * den:
                best.append(i)
        return best[0] if len(best) == 1 else self._swrr(best)

    def on_start(self, node: Node) -> None:
        i = self._index.get(node)
        if i is not None:
            self._active[i] += 1

    def on_finish(self, node: Node, latency_s: float, *, failed: bool = False) -> None:
        i = self._index.get(node)
        if i is not None and self._active[i] > 0:
            self._active[i] -= 1


# --------------------------------------------------------------------------- ewma


class EwmaBalancer(_Base):
    """Latency-aware choice, after APISIX's ``ewma.lua`` (itself from ingress-nginx).

    * Each node keeps an exponentially weighted moving average of its latency, decayed by
      elapsed time: ``w = exp(-dt / DECAY_TIME)``, ``ewma = ewma * w + rtt * (1 - w)`` with
      ``DECAY_TIME`` = 10 s, as APISIX.  Reading a score decays it towards 0 (``rtt = 0``)
      without storing, so a node that was slow and then left alone becomes attractive again
      and gets re-measured.
    * Score = decayed ewma x (active + 1): in-flight requests count against a node (the
      brief's refinement; APISIX scores the ewma alone).
    * Choice: "power of two choices" like APISIX: with more than two eligible nodes, two
      distinct random ones are drawn and the better one wins; with two or fewer, the best
      overall.  Ties go to fewer in-flight requests, then to the first drawn.
    * Failed attempts (``failed=True``) do not update the average, as APISIX's
      ``after_balance`` ignores tries that did not complete; they only release the in-flight
      count.  Health checks are what take a fast-failing node out.
    Never-measured nodes score 0, so new nodes are tried early.
    """

    DECAY_TIME = 10.0
    PICK_SET_SIZE = 2

    __slots__ = ("_ewma", "_touched", "_measured", "_active", "_clock", "_rng")

    def __init__(
        self,
        nodes: Sequence[Node],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(nodes)
        n = len(self.nodes)
        self._ewma = [0.0] * n
        self._touched = [0.0] * n
        self._measured = [False] * n
        self._active = [0] * n
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()

    def _decayed(self, i: int, now: float, rtt: float = 0.0) -> float:
        dt = now - self._touched[i]
        weight = math.exp(-dt / self.DECAY_TIME) if dt > 0 else 1.0
        return self._ewma[i] * weight + rtt * (1.0 - weight)

    def score(self, node: Node) -> float:
        """Current score of ``node`` (lower is better; introspection and tests)."""
        i = self._index[node]
        return self._decayed(i, self._clock()) * (self._active[i] + 1)

    def _choose(self, ctx: BalanceContext, elig: list[int]) -> int:
        if len(elig) == 1:
            return elig[0]
        if len(elig) > self.PICK_SET_SIZE:
            elig = self._rng.sample(elig, self.PICK_SET_SIZE)
        now = self._clock()
        best = elig[0]
        best_key = (self._decayed(best, now) * (self._active[best] + 1), self._active[best])
        for i in elig[1:]:
            k = (self._decayed(i, now) * (self._active[i] + 1), self._active[i])
            if k < best_key:
                best, best_key = i, k
        return best

    def on_start(self, node: Node) -> None:
        i = self._index.get(node)
        if i is not None:
            self._active[i] += 1

    def on_finish(self, node: Node, latency_s: float, *, failed: bool = False) -> None:
        i = self._index.get(node)
        if i is None:
            return
        if self._active[i] > 0:
            self._active[i] -= 1
        if failed:
            return
        now = self._clock()
        if not self._measured[i]:
            # First sample: no history to blend with (APISIX's "last touched at 0" decays the
            # initial 0 away completely, which amounts to the same).
            self._ewma[i] = max(0.0, latency_s)
            self._measured[i] = True
        else:
            self._ewma[i] = self._decayed(i, now, max(0.0, latency_s))
        self._touched[i] = now


# --------------------------------------------------------------------------- factory


def create_balancer(
    upstream: Mapping[str, object],
    nodes: Sequence[Node],
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> Balancer:
    """Build the balancer named by ``upstream["type"]`` (default ``roundrobin``).

    ``chash`` reads ``hash_on`` (default ``vars``) and ``key`` (required unless ``hash_on`` is
    ``consumer``).  ``clock`` and ``rng`` are used by ``ewma`` only.
    """
    kind = upstream.get("type", "roundrobin")
    if kind is None:
        kind = "roundrobin"
    if kind == "roundrobin":
        return RoundRobinBalancer(nodes)
    if kind == "chash":
        hash_on = upstream.get("hash_on", "vars") or "vars"
        if hash_on not in _HASH_ON:
            raise ConfigError("/hash_on", f"unknown hash_on {hash_on!r}: expected one of {', '.join(_HASH_ON)}")
        key = upstream.get("key")
        if hash_on != "consumer" and (not isinstance(key, str) or not key):
            raise ConfigError("/key", f"required when type is chash and hash_on is {hash_on}")
        return ChashBalancer(nodes, hash_on=str(hash_on), key=key if isinstance(key, str) else None)
    if kind == "least_conn":
        return LeastConnBalancer(nodes)
    if kind == "ewma":
        return EwmaBalancer(nodes, clock=clock, rng=rng)
    raise ConfigError("/type", f"unknown balancer type {kind!r}: expected one of {', '.join(BALANCER_TYPES)}")


def default_retries(upstream: Mapping[str, object], nodes: Sequence[Node]) -> int:
    """``upstream["retries"]`` when set, else number of nodes - 1 (never below 0)."""
    retries = upstream.get("retries")
    if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0:
        return retries
    return max(0, len(nodes) - 1)
