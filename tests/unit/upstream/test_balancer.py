from __future__ import annotations

import random
from collections import Counter

import pytest

from meshgate.errors import ConfigError
from meshgate.upstream import (
    BALANCER_TYPES,
    ChashBalancer,
    DictContext,
    EwmaBalancer,
    LeastConnBalancer,
    Node,
    RoundRobinBalancer,
    chash_key,
    create_balancer,
    default_retries,
    parse_nodes,
)

CTX = DictContext({"remote_addr": "10.0.0.9", "uri": "/x"})


def upstream_for(kind: str) -> dict:
    if kind == "chash":
        return {"type": "chash", "hash_on": "vars", "key": "uri"}
    return {"type": kind}


def make(kind: str, nodes):
    return create_balancer(upstream_for(kind), nodes, rng=random.Random(7))


# ---------------------------------------------------------------- factory


def test_factory_types():
    nodes = parse_nodes({"a:1": 1})
    assert isinstance(create_balancer({}, nodes), RoundRobinBalancer)
    assert isinstance(create_balancer({"type": "roundrobin"}, nodes), RoundRobinBalancer)
    assert isinstance(create_balancer({"type": "chash", "key": "uri"}, nodes), ChashBalancer)
    assert isinstance(create_balancer({"type": "least_conn"}, nodes), LeastConnBalancer)
    assert isinstance(create_balancer({"type": "ewma"}, nodes), EwmaBalancer)


@pytest.mark.parametrize(
    ("upstream", "pointer"),
    [
        ({"type": "random"}, "/type"),
        ({"type": "chash"}, "/key"),
        ({"type": "chash", "hash_on": "header"}, "/key"),
        ({"type": "chash", "hash_on": "body", "key": "x"}, "/hash_on"),
    ],
)
def test_factory_errors(upstream, pointer):
    with pytest.raises(ConfigError) as exc:
        create_balancer(upstream, parse_nodes({"a:1": 1}))
    assert exc.value.pointer == pointer


def test_chash_consumer_needs_no_key():
    b = create_balancer({"type": "chash", "hash_on": "consumer"}, parse_nodes({"a:1": 1, "b:1": 1}))
    assert b.pick(DictContext(consumer_name="jack")) is not None


def test_default_retries():
    nodes = parse_nodes({"a:1": 1, "b:1": 1, "c:1": 0})
    assert default_retries({}, nodes) == 2
    assert default_retries({"retries": 0}, nodes) == 0
    assert default_retries({"retries": 5}, nodes) == 5
    assert default_retries({"retries": None}, nodes) == 2
    assert default_retries({}, []) == 0
    assert default_retries({}, nodes[:1]) == 0


# ---------------------------------------------------------------- roundrobin


def test_smooth_wrr_matches_nginx():
    b = create_balancer({}, parse_nodes({"a:80": 5, "b:80": 1, "c:80": 1}))
    seq = "".join(b.pick(CTX).host for _ in range(14))
    assert seq == "aabacaa" * 2


def test_wrr_proportions():
    b = create_balancer({}, parse_nodes({"a:80": 3, "b:80": 2, "c:80": 1}))
    counts = Counter(b.pick(CTX).host for _ in range(600))
    assert counts == {"a": 300, "b": 200, "c": 100}


def test_wrr_equal_weights_alternate():
    b = create_balancer({}, parse_nodes({"a:80": 1, "b:80": 1}))
    assert [b.pick(CTX).host for _ in range(4)] == ["a", "b", "a", "b"]


# ---------------------------------------------------------------- common behaviour, every type


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_weight_zero_never_picked(kind):
    nodes = parse_nodes({"a:80": 0, "b:80": 1, "c:80": 0})
    b = make(kind, nodes)
    assert {b.pick(DictContext({"uri": f"/{i}"})).host for i in range(50)} == {"b"}
    # Even when b is already tried, weight-0 nodes stay out.
    assert b.pick(CTX, tried={nodes[1]}) is None


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_none_when_nothing_eligible(kind):
    assert make(kind, []).pick(CTX) is None
    assert make(kind, parse_nodes({"a:80": 0, "b:80": 0})).pick(CTX) is None
    nodes = parse_nodes({"a:80": 1, "b:80": 1})
    assert make(kind, nodes).pick(CTX, tried=list(nodes)) is None


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_retry_goes_to_a_different_node(kind):
    nodes = parse_nodes({"a:80": 1, "b:80": 1, "c:80": 1})
    b = make(kind, nodes)
    for i in range(20):
        ctx = DictContext({"uri": f"/{i}", "remote_addr": "1.2.3.4"})
        tried: list[Node] = []
        for _ in range(3):
            n = b.pick(ctx, tried=tried)
            assert n is not None and n not in tried
            tried.append(n)
        assert b.pick(ctx, tried=tried) is None


def prio_nodes():
    return parse_nodes(
        [
            {"host": "hi1", "port": 80, "weight": 1, "priority": 10},
            {"host": "lo", "port": 80, "weight": 5, "priority": -1},
            {"host": "hi2", "port": 80, "weight": 1, "priority": 10},
            {"host": "mid", "port": 80, "weight": 100, "priority": 0},
        ]
    )


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_priority_lower_group_only_after_all_higher_tried(kind):
    nodes = prio_nodes()
    hi1, lo, hi2, mid = nodes
    b = make(kind, nodes)
    for i in range(30):
        ctx = DictContext({"uri": f"/{i}"})
        assert b.pick(ctx).host in {"hi1", "hi2"}
        assert b.pick(ctx, tried={hi1}) == hi2
        assert b.pick(ctx, tried={hi2}) == hi1
        assert b.pick(ctx, tried={hi1, hi2}) == mid
        assert b.pick(ctx, tried={hi1, hi2, mid}) == lo
        assert b.pick(ctx, tried={hi1, mid}) == hi2  # mid tried early changes nothing
        assert b.pick(ctx, tried=set(nodes)) is None


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_unhealthy_nodes_are_skipped(kind):
    nodes = parse_nodes({"a:80": 1, "b:80": 1, "c:80": 1})
    down = {"a", "c"}
    b = make(kind, nodes)
    for i in range(30):
        assert b.pick(DictContext({"uri": f"/{i}"}), healthy=lambda n: n.host not in down).host == "b"


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_all_unhealthy_uses_all(kind):
    nodes = parse_nodes({"a:80": 1, "b:80": 1, "c:80": 1})
    b = make(kind, nodes)
    picked = {b.pick(DictContext({"uri": f"/{i}"}), healthy=lambda n: False).host for i in range(60)}
    assert picked == {"a", "b", "c"}


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_unhealthy_high_priority_group_fails_over(kind):
    nodes = prio_nodes()
    b = make(kind, nodes)
    healthy = lambda n: n.priority < 10  # noqa: E731
    for i in range(20):
        assert b.pick(DictContext({"uri": f"/{i}"}), healthy=healthy).host == "mid"
    # everything down: back to the normal priority order
    assert b.pick(CTX, healthy=lambda n: False).host in {"hi1", "hi2"}


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_healthy_nodes_all_tried_gives_none(kind):
    # APISIX builds the picker from the healthy set; unhealthy nodes are not retry targets.
    nodes = parse_nodes({"a:80": 1, "b:80": 1})
    b = make(kind, nodes)
    assert b.pick(CTX, tried={nodes[0]}, healthy=lambda n: n.host == "a") is None


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_tried_accepts_any_collection(kind):
    nodes = parse_nodes({"a:80": 1, "b:80": 1})
    b = make(kind, nodes)
    for tried in ([nodes[0]], (nodes[0],), {nodes[0]}, frozenset({nodes[0]})):
        assert b.pick(CTX, tried=tried) == nodes[1]


# ---------------------------------------------------------------- chash


def ten_nodes():
    return parse_nodes({f"10.0.0.{i}:80": 1 for i in range(10)})


def test_chash_same_key_same_node():
    b = create_balancer({"type": "chash", "key": "uri"}, ten_nodes())
    for i in range(200):
        ctx = DictContext({"uri": f"/item/{i}"})
        first = b.pick(ctx)
        assert all(b.pick(ctx) == first for _ in range(3))
    # a fresh balancer over the same nodes agrees (no per-process randomness)
    b2 = create_balancer({"type": "chash", "key": "uri"}, ten_nodes())
    for i in range(200):
        ctx = DictContext({"uri": f"/item/{i}"})
        assert b.pick(ctx) == b2.pick(ctx)


def test_chash_removing_a_node_remaps_about_one_nth():
    nodes = ten_nodes()
    keys = [DictContext({"uri": f"/k/{i}"}) for i in range(5000)]
    before = create_balancer({"type": "chash", "key": "uri"}, nodes)
    removed = nodes[3]
    after = create_balancer({"type": "chash", "key": "uri"}, [n for n in nodes if n != removed])
    moved = 0
    for ctx in keys:
        a, b = before.pick(ctx), after.pick(ctx)
        if a != b:
            moved += 1
            assert a == removed  # only keys owned by the removed node move
    assert 0.05 * len(keys) < moved < 0.16 * len(keys)


def test_chash_unhealthy_node_equivalent_to_removal():
    nodes = ten_nodes()
    full = create_balancer({"type": "chash", "key": "uri"}, nodes)
    without = create_balancer({"type": "chash", "key": "uri"}, nodes[:3] + nodes[4:])
    for i in range(500):
        ctx = DictContext({"uri": f"/h/{i}"})
        assert full.pick(ctx, healthy=lambda n: n != nodes[3]) == without.pick(ctx)


def test_chash_distribution_follows_weight():
    nodes = parse_nodes({"a:80": 1, "b:80": 3})
    b = create_balancer({"type": "chash", "key": "uri"}, nodes)
    counts = Counter(b.pick(DictContext({"uri": f"/{i}"})).host for i in range(8000))
    assert 0.65 < counts["b"] / 8000 < 0.85


def test_chash_retry_is_deterministic_next_on_ring():
    nodes = ten_nodes()
    b = create_balancer({"type": "chash", "key": "uri"}, nodes)
    ctx = DictContext({"uri": "/retry"})
    first = b.pick(ctx)
    second = b.pick(ctx, tried={first})
    assert second != first
    assert b.pick(ctx, tried={first}) == second


def hosts_by_key(b, ctxs):
    return [b.pick(c).host for c in ctxs]


def test_chash_hash_on_modes():
    nodes = ten_nodes()

    def check(upstream, make_ctx, var_name):
        b = create_balancer({"type": "chash", **upstream}, nodes)
        ref = create_balancer({"type": "chash", "key": "k"}, nodes)
        for i in range(100):
            v = f"value-{i}"
            assert b.pick(make_ctx(v)) == ref.pick(DictContext({"k": v})), var_name

    check({"hash_on": "vars", "key": "arg_id"}, lambda v: DictContext({"arg_id": v}), "vars")
    check({"hash_on": "header", "key": "X-User-Id"}, lambda v: DictContext({"http_x_user_id": v}), "header")
    check({"hash_on": "cookie", "key": "sid"}, lambda v: DictContext({"cookie_sid": v}), "cookie")
    check({"hash_on": "consumer"}, lambda v: DictContext(consumer_name=v), "consumer")


def test_chash_key_extraction():
    ctx = DictContext(
        {"request_uri": "/a?b=1", "remote_addr": "1.2.3.4", "http_x_id": "7", "cookie_s": "c"},
        consumer_name="jack",
    )
    assert chash_key(ctx, "vars", "request_uri") == "/a?b=1"
    assert chash_key(ctx, "header", "X-Id") == "7"
    assert chash_key(ctx, "cookie", "s") == "c"
    assert chash_key(ctx, "consumer", None) == "jack"
    assert chash_key(ctx, "vars_combinations", "$request_uri$remote_addr") == "/a?b=11.2.3.4"
    assert chash_key(ctx, "vars_combinations", "${request_uri}-${remote_addr}") == "/a?b=1-1.2.3.4"
    assert chash_key(ctx, "vars_combinations", "$request_uri$missing") == "/a?b=1"
    assert chash_key(ctx, "vars_combinations", r"\$x$http_x_id") == "$x7"


def test_chash_missing_key_falls_back_to_remote_addr():
    ctx = DictContext({"remote_addr": "9.9.9.9"})
    assert chash_key(ctx, "vars", "arg_id") == "9.9.9.9"
    assert chash_key(ctx, "header", "X-Id") == "9.9.9.9"
    assert chash_key(ctx, "cookie", "s") == "9.9.9.9"
    assert chash_key(ctx, "consumer", None) == "9.9.9.9"
    assert chash_key(ctx, "vars_combinations", "$a$b") == "9.9.9.9"
    assert chash_key(DictContext(), "vars", "uri") == ""
    # an empty (but present) value is a value, as in Lua
    assert chash_key(DictContext({"uri": "", "remote_addr": "x"}), "vars", "uri") == ""


def test_chash_vars_combinations_balances_by_both_vars():
    nodes = ten_nodes()
    b = create_balancer({"type": "chash", "hash_on": "vars_combinations", "key": "$uri$remote_addr"}, nodes)
    ref = create_balancer({"type": "chash", "key": "k"}, nodes)
    for i in range(50):
        ctx = DictContext({"uri": f"/u{i}", "remote_addr": f"10.1.1.{i}"})
        assert b.pick(ctx) == ref.pick(DictContext({"k": f"/u{i}10.1.1.{i}"}))


def test_chash_large_weights_are_capped():
    nodes = parse_nodes({f"n{i}:80": 1000 + i for i in range(200)})
    b = create_balancer({"type": "chash", "key": "uri"}, nodes)
    assert len(b._hashes) <= ChashBalancer.MAX_POINTS
    assert b.pick(CTX) is not None


# ---------------------------------------------------------------- least_conn


def test_least_conn_scores():
    nodes = parse_nodes({"a:80": 1, "b:80": 2})
    a, bnode = nodes
    b = create_balancer({"type": "least_conn"}, nodes)
    # scores: a 1/1, b 1/2 -> b
    assert b.pick(CTX) == bnode
    b.on_start(bnode)  # b 2/2 = a 1/1 -> tie
    b.on_start(bnode)  # b 3/2 > a -> a
    assert b.pick(CTX) == a
    b.on_start(a)  # a 2/1 > b 3/2 -> b
    assert b.pick(CTX) == bnode
    b.on_finish(bnode, 0.1)
    b.on_finish(bnode, 0.1)
    assert b.active(bnode) == 0 and b.active(a) == 1
    assert b.pick(CTX) == bnode
    b.on_finish(a, 0.1)
    b.on_finish(a, 0.1)  # never negative
    assert b.active(a) == 0


def test_least_conn_ties_are_deterministic_round_robin():
    nodes = parse_nodes({"a:80": 1, "b:80": 1, "c:80": 1})
    seqs = []
    for _ in range(2):
        b = create_balancer({"type": "least_conn"}, nodes)
        seqs.append([b.pick(CTX).host for _ in range(6)])
    assert seqs[0] == seqs[1] == ["a", "b", "c", "a", "b", "c"]


def test_least_conn_spreads_concurrent_load():
    nodes = parse_nodes({"a:80": 1, "b:80": 1, "c:80": 2})
    b = create_balancer({"type": "least_conn"}, nodes)
    for _ in range(40):
        b.on_start(b.pick(CTX))
    assert [b.active(n) for n in nodes] == [10, 10, 20]


# ---------------------------------------------------------------- ewma


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ewma_prefers_fast_node():
    clock = FakeClock()
    nodes = parse_nodes({"fast:80": 1, "slow:80": 1})
    fast, slow = nodes
    b = create_balancer({"type": "ewma"}, nodes, clock=clock, rng=random.Random(1))
    b.on_start(fast); b.on_finish(fast, 0.010)  # noqa: E702
    b.on_start(slow); b.on_finish(slow, 0.500)  # noqa: E702
    picks = Counter()
    for _ in range(100):
        n = b.pick(CTX)
        picks[n.host] += 1
        b.on_start(n)
        clock.now += 0.01
        b.on_finish(n, 0.010 if n == fast else 0.500)
    assert picks["fast"] == 100


def test_ewma_among_many_prefers_fast_with_power_of_two_choices():
    clock = FakeClock()
    nodes = parse_nodes({f"n{i}:80": 1 for i in range(5)})
    b = create_balancer({"type": "ewma"}, nodes, clock=clock, rng=random.Random(3))
    latency = {n: (0.01 if n.host == "n2" else 0.3) for n in nodes}
    for n in nodes:
        b.on_start(n)
        b.on_finish(n, latency[n])
    picks = Counter()
    for _ in range(400):
        n = b.pick(CTX)
        picks[n.host] += 1
        b.on_start(n)
        clock.now += 0.001
        b.on_finish(n, latency[n])
    # P2C: the best node wins whenever drawn (2 of 5 -> 40%), the rest is spread.
    assert picks["n2"] > 120
    assert picks.most_common(1)[0][0] == "n2"


def test_ewma_in_flight_counts_against_node():
    clock = FakeClock()
    nodes = parse_nodes({"a:80": 1, "b:80": 1})
    a, bn = nodes
    b = create_balancer({"type": "ewma"}, nodes, clock=clock)
    b.on_start(a); b.on_finish(a, 0.1)  # noqa: E702
    b.on_start(bn); b.on_finish(bn, 0.15)  # noqa: E702
    assert b.pick(CTX) == a
    b.on_start(a)  # a: 0.1 * 2 = 0.2 > b: 0.15
    assert b.pick(CTX) == bn
    assert b.score(a) == pytest.approx(0.2)


def test_ewma_decays_over_time_and_ignores_failures():
    clock = FakeClock()
    nodes = parse_nodes({"a:80": 1})
    (a,) = nodes
    b = create_balancer({"type": "ewma"}, nodes, clock=clock)
    b.on_start(a)
    b.on_finish(a, 1.0)
    assert b.score(a) == pytest.approx(1.0)
    clock.now += 10.0  # one DECAY_TIME: read score decays towards 0
    assert b.score(a) == pytest.approx(0.367879, rel=1e-4)
    b.on_start(a)
    b.on_finish(a, 1.0)  # blends with the decayed value: e^-1*1 + (1-e^-1)*1 = 1
    assert b.score(a) == pytest.approx(1.0)
    b.on_start(a)
    b.on_finish(a, 50.0, failed=True)  # failed tries do not move the average
    assert b.score(a) == pytest.approx(1.0)
    clock.now += 1.0
    b.on_start(a)
    b.on_finish(a, 0.0)  # w = e^-0.1: 1.0 * 0.905
    assert b.score(a) == pytest.approx(0.904837, rel=1e-4)


def test_ewma_unmeasured_nodes_tried_first():
    clock = FakeClock()
    nodes = parse_nodes({"a:80": 1, "b:80": 1})
    a, bn = nodes
    b = create_balancer({"type": "ewma"}, nodes, clock=clock)
    b.on_start(a)
    b.on_finish(a, 0.05)
    assert b.pick(CTX) == bn
