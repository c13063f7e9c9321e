"""Plugin cost: Meshgate with 100 routes, the hot one carrying key-auth + limit-count + prometheus,
side by side with the same gateway without plugins, each plugin alone, and nginx's plain proxying.

Same layout and method as bench/run.py (which it reuses): the upstream nginx and wrk on the load
CPU, every proxy alone on the proxy CPU, one worker each, all started at once, interleaved
repetitions, medians of per-repetition ratios, CPU µs/request from /proc over each process tree.

    .venv/bin/python bench/plugins.py [--reps 3] [--duration 10] [--conns 50] [--no-docs]

Writes bench/results/plugins-<stamp>.json and the "Plugins" section of docs/benchmarks.md
(between the plugins markers; bench/run.py keeps that section when it regenerates the page).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402  (bench/run.py: servers, /proc accounting, wrk parsing)

N_ROUTES = 100
API_KEY = "bench-key-0001"
HOT = "/hot"
GOALS = {"all_x_none": 0.75, "all_x_nginx": 0.6}
PLUGIN_SETS: dict[str, dict[str, Any]] = {
    "mg-none": {},
    "mg-key-auth": {"key-auth": {}},
    "mg-limit-count": {"limit-count": {"count": 1 << 30, "time_window": 60, "rejected_code": 503}},
    "mg-prometheus": {"prometheus": {}},
    "mg-all": {"key-auth": {}, "limit-count": {"count": 1 << 30, "time_window": 60, "rejected_code": 503},
               "prometheus": {}},
}
MARK_BEGIN = "<!-- plugins:begin -->"
MARK_END = "<!-- plugins:end -->"


def meshgate_files(d: Path, port: int, up_port: int, prom_port: int, plugins: dict[str, Any]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(
        f"apisix:\n  node_listen: [{port}]\n  enable_control: false\n  ssl:\n    enable: false\n"
        "nginx_config:\n  worker_processes: 1\n"
        "deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n"
        f"plugin_attr:\n  prometheus:\n    export_addr: {{ip: {B.LOOPBACK}, port: {prom_port}}}\n")
    up = {"type": "roundrobin", "nodes": {f"{B.LOOPBACK}:{up_port}": 1}}
    routes: list[dict[str, Any]] = [{"id": str(i), "uri": f"/r/{i}", "upstream": up} for i in range(1, N_ROUTES)]
    routes.append({"id": "hot", "uri": HOT, "upstream": up, "plugins": plugins})
    doc = {"routes": routes,
           "consumers": [{"username": "bench", "plugins": {"key-auth": {"key": API_KEY}}}]}
    (d / "apisix.yaml").write_text(json.dumps(doc, indent=1) + "\n#END\n")   # JSON is valid YAML


def run_wrk(port: int, path: str, conns: int, duration: float, cpu: str, lua: Path) -> tuple[str, str, int]:
    return B.run_wrk(port, path, conns, duration, cpu, lua, headers=[f"apikey: {API_KEY}"])


def get_status(port: int, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection(B.LOOPBACK, port, timeout=2)
    try:
        conn.request("GET", path, headers={"Connection": "close", **headers})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def med(xs: list[float]) -> float | None:
    return B.med(xs)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-plugins-"))
    taken: set[int] = set()
    lua = tmp / "summary.lua"
    lua.write_text(B.WRK_LUA)
    servers: dict[str, B.Server] = {}
    targets = ["nginx", *PLUGIN_SETS]
    runs: list[dict[str, Any]] = []
    try:
        servers["upstream"] = B.upstream_server(args.nginx, tmp, taken, args.load_cpu)
        up_port = servers["upstream"].port
        port = B.free_port(taken)
        conf = tmp / "nginx.conf"
        conf.write_text(B.proxy_nginx_conf(tmp, port, up_port))
        servers["nginx"] = B.Server("nginx", [args.nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                                              "-c", str(conf)], port, args.proxy_cpu, tmp)
        for name, plugins in PLUGIN_SETS.items():
            d = tmp / name
            port = B.free_port(taken)
            meshgate_files(d, port, up_port, B.free_port(taken), plugins)
            servers[name] = B.Server(name, [args.meshgate, "run", "-c", str(d / "config.yaml")], port,
                                     args.proxy_cpu, d, ready_path="/r/1")
        for name, srv in servers.items():
            B.log(f"starting {name} on {B.LOOPBACK}:{srv.port} (CPU{srv.cpu})")
            srv.start()
            ok, why = srv.wait_ready(20)
            if not ok:
                raise RuntimeError(f"{name} failed to start: {why}\n{srv.log_tail()}")
        for t in targets:   # each answers 200 on the hot path with the key; key-auth refuses without it
            st = get_status(servers[t].port, HOT, {"apikey": API_KEY})
            if st != 200:
                raise RuntimeError(f"{t}: GET {HOT} answered {st}")
            if "key-auth" in PLUGIN_SETS.get(t, {}) and get_status(servers[t].port, HOT, {}) != 401:
                raise RuntimeError(f"{t}: key-auth did not refuse a request without the key")
        for t in targets:
            run_wrk(servers[t].port, HOT, args.conns, args.warmup, args.load_cpu, lua)
        for rep in range(args.reps):
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for t in order:
                srv = servers[t]
                time.sleep(args.pause)
                c0 = B.tree_cpu_seconds(srv.pid)
                out, err, rc = run_wrk(srv.port, HOT, args.conns, args.duration, args.load_cpu, lua)
                c1 = B.tree_cpu_seconds(srv.pid)
                r = B.parse_wrk(out)
                n = r.get("requests") or 0
                errs = r.get("errors") or {}
                row = {"rep": rep, "target": t, "rps": r.get("rps") or 0.0,
                       "cpu_us": (c1 - c0) / n * 1e6 if n else None,
                       "p50_us": r.get("p50_us"), "p99_us": r.get("p99_us"), "errors": sum(errs.values())}
                runs.append(row)
                B.log(f"rep {rep} {t:15s} {row['rps']:9.0f} rps  {row['cpu_us'] or 0:6.1f} us/req  "
                      f"errors {row['errors']}")
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"runs": runs, "targets": targets, "conns": args.conns, "duration": args.duration, "reps": args.reps,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "meshgate_version": B._cmd_out([args.meshgate, "version"]).strip().splitlines()}


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in res["runs"]:
        by.setdefault(r["target"], {})[r["rep"]] = r
    reps = sorted({r["rep"] for r in res["runs"]})

    def ratio(a: str, b: str, key: str) -> float | None:
        xs = [by[a][k][key] / by[b][k][key] for k in reps
              if k in by.get(a, {}) and k in by.get(b, {}) and by[a][k][key] and by[b][k][key]]
        return med(xs)

    out: dict[str, Any] = {"rows": {}, "ratios": {}, "plugin_cpu": {}}
    for t in res["targets"]:
        rows = list(by.get(t, {}).values())
        out["rows"][t] = {k: med([r[k] for r in rows if r[k] is not None]) for k in ("rps", "cpu_us", "p50_us",
                                                                                     "p99_us")}
        out["rows"][t]["errors"] = sum(r["errors"] for r in rows)
    out["ratios"]["all_x_none"] = ratio("mg-all", "mg-none", "rps")
    out["ratios"]["all_x_nginx"] = ratio("mg-all", "nginx", "rps")
    out["ratios"]["none_x_nginx"] = ratio("mg-none", "nginx", "rps")
    for t in PLUGIN_SETS:
        if t == "mg-none":
            continue
        deltas = [by[t][k]["cpu_us"] - by["mg-none"][k]["cpu_us"] for k in reps
                  if k in by.get(t, {}) and k in by.get("mg-none", {}) and by[t][k]["cpu_us"]
                  and by["mg-none"][k]["cpu_us"]]
        out["plugin_cpu"][t] = med(deltas)
    return out


def render(res: dict[str, Any], s: dict[str, Any], cmd: str) -> str:
    f = B.fmt_f
    L = [MARK_BEGIN, "", "## Plugins: 100 routes, key-auth + limit-count + prometheus on the hot route", "",
         f"Command: `{cmd}` ({res['started']}; {res['reps']} interleaved repetitions × {res['duration']:g} s at "
         f"c={res['conns']}, medians; proxies on CPU1 with one worker, wrk and the upstream nginx on CPU0).",
         f"Each Meshgate instance has {N_ROUTES} routes ({N_ROUTES - 1} exact `/r/<i>` plus the hot route `{HOT}`) "
         "and one consumer; wrk sends the consumer's `apikey` on every request. limit-count has a quota that is "
         "never reached (policy local: the shared-memory counter every worker uses), prometheus records APISIX's "
         "metrics in the log phase. " + " ".join(res.get("meshgate_version") or []), "",
         "| target | plugins on the hot route | rps | CPU µs/req | p50 µs | p99 µs | errors |",
         "|---|---|---|---|---|---|---|"]
    for t in res["targets"]:
        r = s["rows"][t]
        plugins = "plain proxy" if t == "nginx" else (", ".join(PLUGIN_SETS[t]) or "none")
        L.append(f"| {t} | {plugins} | {B.fmt_int(r['rps'])} | {f(r['cpu_us'], 1)} | {B.fmt_int(r['p50_us'])} | "
                 f"{B.fmt_int(r['p99_us'])} | {r['errors']} |")
    L += ["", "CPU per request each plugin adds (its instance minus `mg-none`, same repetition, median):", "",
          "| plugin | + CPU µs/req |", "|---|---|"]
    for t, v in s["plugin_cpu"].items():
        L.append(f"| {t.removeprefix('mg-')} | {f(v, 1)} |")
    a, b = s["ratios"]["all_x_none"], s["ratios"]["all_x_nginx"]
    L += ["", "| target | goal | result | |", "|---|---|---|---|",
          f"| key-auth + limit-count + prometheus vs the same gateway without plugins (rps) | ≥ {GOALS['all_x_none']}× "
          f"| {f(a)}× | {'PASS' if a is not None and a >= GOALS['all_x_none'] else 'FAIL'} |",
          f"| key-auth + limit-count + prometheus vs nginx's plain proxying (rps) | ≥ {GOALS['all_x_nginx']}× "
          f"| {f(b)}× | {'PASS' if b is not None and b >= GOALS['all_x_nginx'] else 'FAIL'} |",
          f"| (for reference) Meshgate without plugins vs nginx (rps) | – | {f(s['ratios']['none_x_nginx'])}× | |",
          "", MARK_END, ""]
    return "\n".join(L)


def write_section(md: Path, section: str) -> None:
    B.write_section(md, section, "plugins")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--load-cpu", default="0")
    ap.add_argument("--proxy-cpu", default="1")
    ap.add_argument("--meshgate", default=str(B.DEFAULT_VENV / "bin" / "meshgate"))
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            B.log(f"{tool} not found: run bench/setup.sh")
            return 1
    try:
        os.sched_setaffinity(0, {int(args.load_cpu)})
    except (OSError, ValueError):
        pass
    B.WATCH = B.Watchdog()
    try:
        res = measure(args)
    finally:
        B.WATCH.close()
        B.WATCH = None
    s = summarize(res)
    res["summary"] = s
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    (out / f"plugins-{stamp}.json").write_text(json.dumps(res, indent=1))
    cmd = ".venv/bin/python bench/plugins.py" + ("" if argv == [] else " " + " ".join(a for a in argv
                                                                                        if a != "--no-docs"))
    section = render(res, s, cmd)
    print(section)
    if not args.no_docs:
        write_section(B.DOCS_MD, section)
        B.log(f"wrote the plugins section of {B.DOCS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
