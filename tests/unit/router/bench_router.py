"""Micro benchmark: ns per Router.match with 1, 100 and 10,000 routes (not a pytest module).

    .venv/bin/python tests/unit/router/bench_router.py [--n 200000]

Each scenario compiles the same target route alone, then among 99 and 9,999 others
(a mix of exact, prefix, parameter and host routes, some with methods/vars), and
times ``router.match(req)`` on a prebuilt request.  Lookup cost should not depend on
the number of routes (apisix-semantics.md section 10; DESIGN.md "hot path discipline").
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass, field
from typing import Any

from meshgate.model import Resource, Snapshot
from meshgate.router import ROUTER_KINDS, compile_router


@dataclass
class Req:
    path: str
    method: str = "GET"
    host: str = "example.com"
    http_host: str = "example.com"
    remote_addr: str = "10.1.2.3"
    vars: dict[str, Any] = field(default_factory=dict)

    def var(self, name: str) -> Any:
        return self.vars.get(name)


def filler(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        m = i % 5
        if m == 0:
            out.append({"uri": f"/api/v{i % 7}/res{i}/items"})
        elif m == 1:
            out.append({"uri": f"/svc{i}/*", "methods": ["GET", "POST"]})
        elif m == 2:
            out.append({"uri": f"/users{i}/:id/orders", "priority": i % 3})
        elif m == 3:
            out.append({"uri": f"/p{i}/*", "hosts": [f"h{i}.example.com", f"*.w{i}.example.org"]})
        else:
            out.append({"uri": f"/v{i}", "vars": [["arg_v", "==", str(i)]], "remote_addrs": ["10.0.0.0/8"]})
    return out


SCENARIOS: list[tuple[str, dict[str, Any], Req]] = [
    ("exact", {"uri": "/target/exact/path"}, Req("/target/exact/path")),
    ("prefix (deep path)", {"uri": "/target/*"}, Req("/target/a/b/c/d/e/f/g/h/i/j")),
    ("exact + methods + vars", {"uri": "/target/v", "methods": ["GET"], "vars": [["arg_a", "==", "1"]]},
     Req("/target/v", vars={"arg_a": "1"})),
    ("remote_addrs CIDR", {"uri": "/target/ip", "remote_addrs": ["10.0.0.0/8"]}, Req("/target/ip")),
    ("wildcard host", {"uri": "/target/*", "hosts": ["*.target.io"]}, Req("/target/x", host="a.b.target.io")),
    ("mid-path star", {"uri": "/target/*/edit"}, Req("/target/42/edit")),
    ("miss (404)", {"uri": "/target/exact/path"}, Req("/nothing/here/at/all")),
]


def snapshot(routes: list[dict[str, Any]]) -> Snapshot:
    items = {str(i + 1): Resource("routes", str(i + 1), {**r, "id": str(i + 1)}) for i, r in enumerate(routes)}
    return Snapshot(version=1, resources={"routes": items})


def bench(router: Any, req: Req, n: int) -> float:
    match = router.match
    for _ in range(1000):
        match(req)
    best = float("inf")
    for _ in range(5):  # best of 5 to damp noise
        gc.disable()
        t0 = time.perf_counter_ns()
        for _ in range(n):
            match(req)
        dt = time.perf_counter_ns() - t0
        gc.enable()
        best = min(best, dt / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000, help="matches per measurement")
    ap.add_argument("--routes", type=int, default=10_000)
    args = ap.parse_args()
    sizes = [1, 100, args.routes]
    print(f"{'router':<30} {'scenario':<24}" + "".join(f"{f'{n} routes':>14}" for n in sizes) + "   big/100")
    for kind in ROUTER_KINDS:
        for name, route, req in SCENARIOS:
            times = []
            for size in sizes:
                others = filler(size - 1)
                routes = others[: len(others) // 2] + [route] + others[len(others) // 2:]
                router = compile_router(snapshot(routes), kind=kind)
                assert not router.errors, router.errors[:3]
                hit = router.match(req)
                want_hit = "miss" not in name
                assert (hit is not None) == want_hit, (kind, name, size)
                if hit is not None:
                    assert hit.route_id == str(len(others) // 2 + 1), (kind, name, size, hit)
                times.append(bench(router, req, args.n))
            print(f"{kind:<30} {name:<24}" + "".join(f"{t:>12.0f}ns" for t in times)
                  + f"   {times[2] / times[1]:5.2f}x")


if __name__ == "__main__":
    main()
