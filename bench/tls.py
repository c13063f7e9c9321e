"""TLS termination: Meshgate (`apisix.ssl.listen`, certificate from an `ssls` object) side by side
with nginx, both proxying to the same upstream nginx on loopback.

Measures, in one run, with interleaved repetitions (default 3 × 10 s, medians, ratios taken within
one repetition):

* handshakes per second: a new TLS connection per request (wrk, `-H "Connection: close"`: wrk
  reconnects after every response and does a full handshake; neither server resumes sessions), with
  an ECDSA P-256 certificate and with an RSA 2048 one;
* keep-alive HTTPS requests per second (wrk over https, c=50 like the other benches);
* for reference, plain HTTP through the same processes, keep-alive and with a new connection per
  request (so what TLS adds per request and per connection shows);
* CPU µs per request of each proxy's process tree (/proc), util, p50/p99, wrk's and the upstream's
  CPU, and the CPU other processes used during each run.

Same layout as bench/run.py (which it reuses): upstream nginx and wrk on the load CPU, each proxy
on the proxy CPU, one worker each. Session cache and tickets are off on both sides (Meshgate never
resumes sessions), TLSv1.2 + TLSv1.3, the same cipher list (APISIX's default `ssl_ciphers`) with
server preference, the same certificates (made with the openssl CLI in a temp dir).

Before measuring it waits (at most --ci-wait s, polling every 30 s) until no `.ci/run` or
`pytest` process is running, then records the load average it measured under.

    .venv/bin/python bench/tls.py [--reps 3] [--duration 10] [--conns 50] [--no-rsa] [--no-plain] [--no-docs]
    .venv/bin/python bench/tls.py --from-json bench/results/tls-<stamp>.json   # only re-render the section

Writes bench/results/tls-<stamp>.json and the "TLS" section of docs/benchmarks.md (between the tls
markers; bench/run.py keeps that section when it regenerates the page).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402  (bench/run.py: servers, /proc accounting, wrk parsing)

sys.path.insert(0, str(B.ROOT / "tests" / "integration"))
from pki import make_ca, make_leaf  # noqa: E402  (openssl CLI helpers of the TLS tests)

MARK_BEGIN = "<!-- tls:begin -->"
MARK_END = "<!-- tls:end -->"
SNI = B.LOOPBACK        # wrk sends the URL's host as SNI: the ssls object is for that name
TARGETS = ["nginx", "meshgate"]
CI_PATTERNS = (r"\.ci/run", "pytest")
try:   # the cipher list Meshgate offers by default (APISIX's), given to nginx too
    from meshgate.config.node import DEFAULT_SSL_CIPHERS as CIPHERS
except Exception:   # pragma: no cover - only without the package installed
    CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
               "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
               "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")

# scenario -> (listener, new connection per request, label)
SCENARIOS: dict[str, tuple[str, bool, str]] = {
    "hs-ecdsa": ("ecdsa", True, "new TLS connection per request, ECDSA P-256 certificate"),
    "hs-rsa": ("rsa", True, "new TLS connection per request, RSA 2048 certificate"),
    "keepalive": ("ecdsa", False, "keep-alive HTTPS (ECDSA P-256 certificate)"),
    "keepalive-http": ("plain", False, "keep-alive plain HTTP (reference)"),
    "close-http": ("plain", True, "new plain-HTTP connection per request (reference)"),
}


# --------------------------------------------------------------------------- waiting for the CI

def ci_processes() -> list[str]:
    out = []
    for pat in CI_PATTERNS:
        p = subprocess.run(["pgrep", "-af", pat], capture_output=True, text=True, timeout=10)
        for line in p.stdout.splitlines():
            pid = int(line.split()[0])
            if pid != os.getpid():
                out.append(line[:160])
    return out


def wait_for_ci(limit_s: float, poll_s: float = 30.0) -> dict[str, Any]:
    """Wait (bounded: at most limit_s, polling every poll_s) until no CI/pytest process runs."""
    t0 = time.monotonic()
    polls = 0
    max_polls = int(limit_s // poll_s) + 1
    seen: list[str] = []
    while True:
        procs = ci_processes()
        if not procs:
            return {"waited_s": round(time.monotonic() - t0, 1), "quiet": True, "seen": seen[:5]}
        if not seen:
            seen = procs
        polls += 1
        if polls >= max_polls or time.monotonic() - t0 + poll_s > limit_s:
            B.log(f"CI still running after {time.monotonic() - t0:.0f} s: measuring anyway")
            return {"waited_s": round(time.monotonic() - t0, 1), "quiet": False, "seen": procs[:5]}
        B.log(f"waiting for {len(procs)} CI/pytest process(es) to finish ({polls}/{max_polls}): {procs[0][:80]}")
        time.sleep(poll_s)


def machine() -> dict[str, Any]:
    a = B.cpu_stat()
    time.sleep(1.0)
    b = B.cpu_stat()
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "kernel": platform.release(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "busy_cores_before": B.busy_seconds(a, b), "steal_before": B.steal_fraction(a, b)}


# --------------------------------------------------------------------------- configs

def make_certs(d: Path) -> None:
    make_ca(d, "ca", "Meshgate Bench CA")
    make_leaf(d, "ecdsa", "ca", "/CN=bench ECDSA", dns=("bench.test",))
    make_leaf(d, "rsa", "ca", "/CN=bench RSA", dns=("bench.test",), rsa=True)


def nginx_tls_conf(tmp: Path, ports: dict[str, int], up_port: int, certs: Path) -> str:
    def server(listen: str, cert: str | None) -> str:
        tls = ""
        if cert:
            tls = (f"        ssl_certificate {certs / (cert + '.crt')};\n"
                   f"        ssl_certificate_key {certs / (cert + '.key')};\n"
                   "        ssl_protocols TLSv1.2 TLSv1.3;\n"
                   f"        ssl_ciphers {CIPHERS};\n"
                   "        ssl_prefer_server_ciphers on;\n"
                   "        ssl_session_cache off;\n"
                   "        ssl_session_tickets off;\n")
        return (f"    server {{\n        listen {B.LOOPBACK}:{listen} backlog=4096;\n{tls}"
                "        location / {\n"
                "            proxy_pass http://up;\n"
                "            proxy_http_version 1.1;\n"
                "            proxy_set_header Connection \"\";\n"
                "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                "            proxy_set_header X-Forwarded-Proto $scheme;\n"
                "        }\n    }\n")
    return B.nginx_common(tmp, "nginx") + (
        "    upstream up {\n"
        f"        server {B.LOOPBACK}:{up_port};\n"
        "        keepalive 512;\n        keepalive_requests 1000000000;\n        keepalive_timeout 300s;\n"
        "    }\n"
        + server(str(ports["plain"]), None)
        + server(f"{ports['ecdsa']} ssl", "ecdsa")
        + (server(f"{ports['rsa']} ssl", "rsa") if "rsa" in ports else "")
        + "}\n")


def meshgate_tls_files(d: Path, port: int, tls_port: int, up_port: int, prom_port: int, certs: Path,
                       cert: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(
        f"apisix:\n  node_listen: [{{ip: {B.LOOPBACK}, port: {port}}}]\n  enable_control: false\n"
        f"  ssl:\n    enable: true\n    listen: [{{ip: {B.LOOPBACK}, port: {tls_port}}}]\n"
        "    ssl_protocols: TLSv1.2 TLSv1.3\n"
        "nginx_config:\n  worker_processes: 1\n  http:\n    keepalive_requests: 1000000000\n"
        "deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n"
        f"plugin_attr:\n  prometheus:\n    export_addr: {{ip: {B.LOOPBACK}, port: {prom_port}}}\n")
    doc = {"routes": [{"id": "1", "uri": "/*",
                       "upstream": {"type": "roundrobin", "nodes": {f"{B.LOOPBACK}:{up_port}": 1}}}],
           "ssls": [{"id": "bench", "sni": SNI, "cert": (certs / f"{cert}.crt").read_text(),
                     "key": (certs / f"{cert}.key").read_text()}]}
    (d / "apisix.yaml").write_text(json.dumps(doc, indent=1) + "\n#END\n")   # JSON is valid YAML


# --------------------------------------------------------------------------- probes

def s_client(port: int, cafile: Path) -> dict[str, str]:
    """One GET with `openssl s_client` (OpenSSL's client defaults, like wrk's; SNI 127.0.0.1 as wrk sends
    it, which Python's ssl would not): the status, whether the certificate verified against the bench
    CA, what was negotiated (version, cipher, key exchange, signature), whether a ticket was offered."""
    p = subprocess.run(["openssl", "s_client", "-connect", f"{B.LOOPBACK}:{port}", "-servername", SNI,
                        "-CAfile", str(cafile), "-ign_eof"],
                       input="GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n",
                       capture_output=True, text=True, timeout=20)
    out = p.stdout + p.stderr
    info: dict[str, str] = {}
    m = re.search(r"^HTTP/1\.1 (\d+)", out, re.M)
    info["status"] = m.group(1) if m else "none"
    m = re.search(r"Verify return code: (\d+ \([^)]*\))", out)
    info["verify"] = m.group(1) if m else "?"
    for key, pat in (("protocol", r"^New, (TLSv[\d.]+), Cipher is (\S+)"),
                     ("temp_key", r"^Server Temp Key: (.+)$"),
                     ("peer_sig", r"^Peer signature type: (\S+)"),
                     ("peer_digest", r"^Peer signing digest: (\S+)"),
                     ("pubkey", r"^Server public key is (\d+) bit")):
        m = re.search(pat, out, re.M)
        if m:
            if key == "protocol":
                info["protocol"], info["cipher"] = m.group(1), m.group(2)
            else:
                info[key] = m.group(1).strip()
    info["ticket"] = "yes" if re.search(r"TLS session ticket:|New Session Ticket arrived", out) else "no"
    return info


def resumed(port: int, cafile: Path, tmp: Path) -> str:
    """Offer the session of a first connection on a second one: does the server resume it?"""
    sess = tmp / f"session-{port}.pem"
    base = ["openssl", "s_client", "-connect", f"{B.LOOPBACK}:{port}", "-servername", SNI, "-CAfile", str(cafile),
            "-ign_eof"]
    req = "GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n"
    subprocess.run(base + ["-sess_out", str(sess)], input=req, capture_output=True, text=True, timeout=20)
    if not sess.exists() or not sess.stat().st_size:
        return "no session to offer"   # no ticket: s_client has nothing resumable to write
    p = subprocess.run(base + ["-sess_in", str(sess)], input=req, capture_output=True, text=True, timeout=20)
    m = re.search(r"^(New|Reused), TLSv", p.stdout, re.M)
    return "?" if not m else ("yes" if m.group(1) == "Reused" else "no")


# --------------------------------------------------------------------------- measuring

def measure(args: argparse.Namespace, res: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-tls-"))
    taken: set[int] = set()
    lua = tmp / "summary.lua"
    lua.write_text(B.WRK_LUA)
    servers: dict[str, B.Server] = {}
    certs = tmp / "pki"
    certs.mkdir()
    scenarios = [s for s in SCENARIOS if not (s == "hs-rsa" and args.no_rsa)
                 and not (SCENARIOS[s][0] == "plain" and args.no_plain)]
    kinds = ["ecdsa"] + ([] if args.no_rsa else ["rsa"])
    # (target, listener) -> (server name, port)
    where: dict[tuple[str, str], tuple[str, int]] = {}
    failed = False
    try:
        make_certs(certs)
        servers["upstream"] = B.upstream_server(args.nginx, tmp, taken, args.load_cpu)
        up_port = servers["upstream"].port
        nports = {"plain": B.free_port(taken), **{k: B.free_port(taken) for k in kinds}}
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_tls_conf(tmp, nports, up_port, certs))
        servers["nginx"] = B.Server("nginx", [args.nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                                              "-c", str(conf)], nports["plain"], args.proxy_cpu, tmp)
        for listener, port in nports.items():
            where[("nginx", listener)] = ("nginx", port)
        for k in kinds:   # one Meshgate per certificate type (wrk cannot choose: the SNI picks the object)
            name = f"meshgate-{k}"
            d = tmp / name
            port, tls_port = B.free_port(taken), B.free_port(taken)
            meshgate_tls_files(d, port, tls_port, up_port, B.free_port(taken), certs, k)
            servers[name] = B.Server(name, [args.meshgate, "run", "-c", str(d / "config.yaml")], port,
                                     args.proxy_cpu, d)
            where[("meshgate", k)] = (name, tls_port)
            if k == "ecdsa":
                where[("meshgate", "plain")] = (name, port)
        for name, srv in servers.items():
            B.log(f"starting {name} on {B.LOOPBACK}:{srv.port} (CPU{srv.cpu})")
            srv.start()
            ok, why = srv.wait_ready(args.ready_timeout)
            if not ok:
                raise RuntimeError(f"{name} failed to start: {why}\n{srv.log_tail()}")
            pin = B.pinning_warning(name, srv)
            if pin:
                res["warnings"].append(pin)
        # sanity: every TLS listener answers 200 with a verified certificate; what gets negotiated
        res["negotiated"] = {}
        for (t, listener), (name, port) in sorted(where.items()):
            if listener == "plain":
                st, _ = B.http_get(port, "/", timeout=3)
                if st != 200:
                    raise RuntimeError(f"{t} plain: GET / answered {st}")
                continue
            info = s_client(port, certs / "ca.crt")
            if info["status"] != "200" or not info["verify"].startswith("0 "):
                raise RuntimeError(f"{t} {listener}: GET / over TLS: status {info['status']}, "
                                   f"certificate verification {info['verify']}")
            info["resumed"] = resumed(port, certs / "ca.crt", tmp)
            if info["resumed"] not in ("no", "no session to offer"):
                res["warnings"].append(f"{t} {listener}: a second connection offering the first one's session: "
                                       f"resumed {info['resumed']}")
            res["negotiated"][f"{t} {listener}"] = info
            B.log(f"{t:8s} {listener:5s} {res['negotiated'][f'{t} {listener}']}")
        res["env"]["meshgate_python_ssl"] = B._cmd_out([str(B.meshgate_python(args.meshgate)), "-c",
                                                        "import ssl; print(ssl.OPENSSL_VERSION)"])
        res["machine"] = machine()
        B.log(f"load average {' '.join(res['machine']['loadavg'])}, "
              f"{res['machine']['busy_cores_before']:.2f} cores busy in the last second")

        def url(t: str, sc: str) -> tuple[B.Server, str]:
            name, port = where[(t, SCENARIOS[sc][0])]
            scheme = "http" if SCENARIOS[sc][0] == "plain" else "https"
            return servers[name], f"{scheme}://{B.LOOPBACK}:{port}/"

        for sc in scenarios:   # warm-up, not recorded
            for t in TARGETS:
                _, u = url(t, sc)
                B.run_wrk_url(u, args.conns, args.warmup, args.load_cpu, lua,
                        ["Connection: close"] if SCENARIOS[sc][1] else [])
        up = servers["upstream"]
        total = args.reps * len(scenarios) * len(TARGETS)
        B.log(f"{total} runs of {args.duration:g} s, about {total * (args.duration + args.pause + 0.5) / 60:.1f} min")
        stat0 = B.cpu_stat()
        k = 0
        for rep in range(args.reps):
            order = TARGETS[rep % len(TARGETS):] + TARGETS[:rep % len(TARGETS)]
            for sc in scenarios:
                for t in order:
                    k += 1
                    srv, u = url(t, sc)
                    if srv.proc is None or srv.proc.poll() is not None:
                        raise RuntimeError(f"{srv.name} died: {srv.log_tail()}")
                    time.sleep(args.pause)
                    p0 = B._all_stats()
                    c0, u0 = B.tree_cpu_seconds(srv.pid, p0), B.tree_cpu_seconds(up.pid, p0)
                    s0, k0, h0, w0 = B.cpu_stat(), B.children_cpu_seconds(), B.self_cpu_seconds(), time.monotonic()
                    out, err, rc = B.run_wrk_url(u, args.conns, args.duration, args.load_cpu, lua,
                                           ["Connection: close"] if SCENARIOS[sc][1] else [])
                    w1, k1, s1 = time.monotonic(), B.children_cpu_seconds(), B.cpu_stat()
                    p1 = B._all_stats()
                    h1 = B.self_cpu_seconds()
                    c1, u1 = B.tree_cpu_seconds(srv.pid, p1), B.tree_cpu_seconds(up.pid, p1)
                    srv.remember_tree()
                    r = B.parse_wrk(out)
                    n = r.get("requests") or 0
                    wall = w1 - w0
                    cpu_s, up_s, wrk_s = c1 - c0, u1 - u0, k1 - k0
                    ours = B.bench_pids(servers, p0, p1)
                    bg = max(0.0, B.busy_seconds(s0, s1) - cpu_s - up_s - wrk_s - (h1 - h0)) / wall
                    errs = r.get("errors") or {}
                    row = {"rep": rep + 1, "scenario": sc, "target": t, "server": srv.name, "url": u,
                           "requests": n, "rps": r.get("rps") or 0.0,
                           "cpu_us": cpu_s / n * 1e6 if n else None, "util": cpu_s / wall if wall else None,
                           "wrk_cpu_us": wrk_s / n * 1e6 if n else None,
                           "upstream_cpu_us": up_s / n * 1e6 if n else None,
                           "p50_us": r.get("p50_us"), "p99_us": r.get("p99_us"),
                           "errors": errs, "error_count": sum(errs.values()),
                           "background": bg, "background_top": B.foreign_top(p0, p1, ours),
                           "disturbed": bg > args.busy_threshold, "steal": B.steal_fraction(s0, s1),
                           "wrk_rc": rc, "wrk_output": out, "wrk_stderr": err.strip()}
                    res["runs"].append(row)
                    B.log(f"[{k}/{total}] rep {rep + 1} {sc:10s} {t:8s} {row['rps']:9.0f} rps  "
                          f"{row['cpu_us'] or 0:7.1f} us/req  util {row['util'] or 0:4.2f}  "
                          f"p50 {(row['p50_us'] or 0) / 1000:6.2f} ms  p99 {(row['p99_us'] or 0) / 1000:6.2f} ms  "
                          f"errors {row['error_count']}" + (f"  other load {bg:.2f}" if row["disturbed"] else ""))
        res["steal_fraction"] = B.steal_fraction(stat0, B.cpu_stat())
        res["scenarios"] = scenarios
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

def summarize(res: dict[str, Any]) -> dict[str, Any]:
    by: dict[tuple[str, str, int], dict[str, Any]] = {(r["scenario"], r["target"], r["rep"]): r for r in res["runs"]}
    reps = sorted({r["rep"] for r in res["runs"]})
    out: dict[str, Any] = {}
    for sc in res["scenarios"]:
        rows: dict[str, Any] = {}
        for t in TARGETS:
            rs = [by[(sc, t, k)] for k in reps if (sc, t, k) in by]
            rows[t] = {key: B.med([r[key] for r in rs if r[key] is not None])
                       for key in ("rps", "cpu_us", "util", "p50_us", "p99_us", "wrk_cpu_us", "upstream_cpu_us",
                                   "background")}
            rows[t]["errors"] = sum(r["error_count"] for r in rs)
            rows[t]["disturbed"] = [r["rep"] for r in rs if r["disturbed"]]
        ratios: dict[str, Any] = {}
        for key in ("rps", "cpu_us", "p50_us", "p99_us"):
            per = []
            for k in reps:
                a, b = by.get((sc, "meshgate", k)), by.get((sc, "nginx", k))
                per.append(a[key] / b[key] if a and b and a.get(key) and b.get(key) else None)
            ratios[key] = B.med([x for x in per if x is not None])
            ratios[key + "_per_rep"] = per
        out[sc] = {"rows": rows, "x_nginx": ratios}
    # CPU TLS adds: per new connection (TLS new connection minus plain new connection, same rep), and
    # per keep-alive request (HTTPS keep-alive minus plain keep-alive)
    extra: dict[str, Any] = {}
    for sc, base in (("hs-ecdsa", "close-http"), ("hs-rsa", "close-http"), ("keepalive", "keepalive-http")):
        for t in TARGETS:
            d = [by[(sc, t, k)]["cpu_us"] - by[(base, t, k)]["cpu_us"] for k in reps
                 if (sc, t, k) in by and (base, t, k) in by and by[(sc, t, k)]["cpu_us"] and by[(base, t, k)]["cpu_us"]]
            extra[f"{sc} {t}"] = B.med(d)
    out["tls_cpu_per_conn"] = extra
    return out


def render(res: dict[str, Any], s: dict[str, Any], cmd: str) -> str:
    f, fi = B.fmt_f, B.fmt_int
    env, m = res["env"], res["machine"]
    ms = lambda x: "–" if x is None else f"{x / 1000:.2f}"  # noqa: E731
    ci = res["ci_wait"]
    L = [MARK_BEGIN, "", "## TLS termination: handshakes and keep-alive HTTPS, Meshgate vs nginx", "",
         f"Command: `{cmd}` ({res['started']}; {res['reps']} interleaved repetitions × {res['duration']:g} s per run, "
         f"c={res['conns']} for every run, medians; ratios taken within one repetition, then their median). "
         f"Raw results: `bench/results/{res['results_file']}`.", "",
         (f"Machine: {env.get('cpu_model')} × {env.get('cpus')}"
         + (f" ({env['virtualization']})" if env.get("virtualization") else "")
         + f", {env.get('mem_total_gib')} GiB, kernel {env.get('kernel')}, {env.get('os')}. "
         f"Load average when measuring started {' '.join(m['loadavg'])}, {m['busy_cores_before']:.2f} cores busy in "
         f"the second before, CPU steal {f(100 * (res.get('steal_fraction') or 0), 1)} % during the runs. "
         + (f"The harness first waited {ci['waited_s']:.0f} s for a CI run / pytest on this machine to finish. "
            if ci["waited_s"] >= 1 and ci["quiet"] else "")
         + ("⚠ A CI run / pytest was still running when measuring started (gave up waiting after "
            f"{ci['waited_s']:.0f} s). " if not ci["quiet"] else "")).rstrip(),
         "",
         f"Versions: nginx {env.get('nginx')} ({env.get('nginx_package')}); Meshgate {env.get('meshgate')} at commit "
         f"{env.get('meshgate_commit')}, Python {env.get('meshgate_env_python')}, uvloop {env.get('uvloop')}, "
         f"hot path: {env.get('hot_path') or '–'}; {env.get('wrk')}. OpenSSL: nginx runs with "
         f"{res.get('nginx_openssl', '?')}, Meshgate's Python `ssl` with {env.get('meshgate_python_ssl', '?')}, "
         f"wrk with {res.get('wrk_openssl', '?')}.", "",
         "Setup:", "",
         f"- Upstream: nginx, 1 worker on CPU{res['load_cpu']}, `return 200 \"ok\"`; wrk (`-t1`) on the same CPU. "
         f"Each proxy alone on CPU{res['proxy_cpu']}, one worker, both in front of that upstream with keep-alive "
         "upstream connections.",
         "- nginx: the plain proxy of the other sections plus `listen … ssl` server blocks (one per certificate), "
         "`ssl_protocols TLSv1.2 TLSv1.3`, `ssl_ciphers` = APISIX's default list (what Meshgate offers by "
         "default), `ssl_prefer_server_ciphers on`, **`ssl_session_cache off`, `ssl_session_tickets off`**, "
         "X-Forwarded-For/-Proto.",
         "- Meshgate: `meshgate run`, `worker_processes: 1`, `apisix.ssl.listen` on a loopback port, one route `/*`, "
         f"one `ssls` object (`sni: {SNI}`, what wrk sends as SNI) holding the certificate; one instance per "
         "certificate type, since wrk cannot pick a certificate. `nginx_config.http.keepalive_requests` is raised "
         "to nginx's value here so neither side closes keep-alive connections during a run.",
         "- **No session resumption on either side.** Meshgate never resumes TLS sessions (no tickets, no "
         "session cache: see docs/gateway.md, TLS), so nginx's cache and tickets are turned off too and every "
         "new connection is a full handshake on both. (wrk does not offer a previous session anyway.) A "
         "production nginx/APISIX with resumption on would pay less per returning client than shown here.",
         "- Handshakes are driven by **wrk** with `-H \"Connection: close\"`: each response closes the "
         "connection and wrk opens a new one, with a full handshake, so handshakes/s = requests/s and the CPU "
         "per request includes the TCP accept/close and one proxied request. wrk's latency percentiles start "
         "after the handshake (they time the request on the new connection). The plain-HTTP row does the same "
         "without TLS, so the difference is what TLS adds per connection.",
         "- Certificates: made with the openssl CLI (a throwaway CA; leaves ECDSA P-256 and RSA 2048, "
         "SHA-256 signatures). CPU µs/req = Δ(utime+stime) of the proxy's process tree ÷ requests; util = "
         "CPU-s ÷ wall-s (1.00 = the proxy's core fully used); other load = CPU used by processes outside the "
         f"benchmark during the run, in cores (⚡ above {res['busy_threshold']:.2f}).", ""]
    neg = res.get("negotiated") or {}
    if neg:
        L += ["Negotiated with OpenSSL client defaults (`openssl s_client`, the same library and defaults as wrk):",
              "", "| proxy, certificate | protocol | cipher | key exchange | server signature | session ticket "
              "sent | session resumed when offered |", "|---|---|---|---|---|---|---|"]
        for key, v in neg.items():
            L.append(f"| {key} | {v.get('protocol', '?')} | {v.get('cipher', '?')} | {v.get('temp_key', '?')} | "
                     f"{v.get('peer_sig', '?')} {v.get('peer_digest', '')} ({v.get('pubkey', '?')}-bit key) | "
                     f"{v.get('ticket', '?')} | {v.get('resumed', '?')} |")
        L += ["", "nginx 1.22 with `ssl_session_tickets off` still sends TLS 1.3 NewSessionTicket messages (stateful "
              "ones, OpenSSL's behaviour under `SSL_OP_NO_TICKET`), but with `ssl_session_cache off` there is "
              "nothing to resume them against: the resumption probe above (a second `s_client` offering the "
              "first one's session) gets a full handshake from both proxies. Meshgate sends no ticket "
              "(`num_tickets = 0`).", ""]

    def table(sc: str, title: str, unit: str) -> None:
        d = s.get(sc)
        if not d:
            return
        x = d["x_nginx"]
        L.extend([f"### {title}", "",
                  f"| target | {unit} | CPU µs/req | util | 1 core ÷ CPU/req (derived) | p50 ms | p99 ms | "
                  "wrk CPU µs/req | errors | other load |",
                  "|---|---|---|---|---|---|---|---|---|---|"])
        for t in TARGETS:
            r = d["rows"][t]
            L.append(f"| {'**meshgate**' if t == 'meshgate' else t} | {fi(r['rps'])} | {f(r['cpu_us'], 1)} | "
                     f"{f(r['util'])} | {fi(1e6 / r['cpu_us'] if r['cpu_us'] else None)} | "
                     f"{ms(r['p50_us'])} | {ms(r['p99_us'])} | {f(r['wrk_cpu_us'], 1)} | "
                     f"{r['errors']} | {f(r['background'])}"
                     + (" ⚡ reps " + ",".join(map(str, r["disturbed"])) if r["disturbed"] else "") + " |")
        per = lambda key: " / ".join(f(v) for v in x[key + "_per_rep"])  # noqa: E731
        L.extend([f"| Meshgate ÷ nginx | {f(x['rps'])}× | {f(x['cpu_us'])}× | | {f(1 / x['cpu_us'] if x['cpu_us'] else None)}× "
                  f"| {f(x['p50_us'])}× | {f(x['p99_us'])}× | | | |", "",
                  f"Per repetition, Meshgate ÷ nginx: {unit} {per('rps')}; CPU/req {per('cpu_us')}.", ""])

    table("hs-ecdsa", "1a. TLS handshakes per second: new connection per request, ECDSA P-256", "handshakes/s")
    table("hs-rsa", "1b. TLS handshakes per second: new connection per request, RSA 2048", "handshakes/s")
    table("keepalive", "2. Keep-alive HTTPS requests per second (ECDSA P-256)", "rps")
    table("keepalive-http", "Reference: keep-alive plain HTTP (no TLS), same processes", "rps")
    table("close-http", "Reference: new plain-HTTP connection per request (no TLS)", "connections/s")
    extra = s.get("tls_cpu_per_conn") or {}
    if any(v is not None for v in extra.values()):
        L += ["What TLS adds, in proxy CPU µs per request (same repetition, median): a new TLS connection per "
              "request minus a new plain connection per request (the handshake and TLS setup/teardown), and "
              "keep-alive HTTPS minus keep-alive plain HTTP (record encryption and the TLS layer per request):", "",
              "| what | nginx | Meshgate | Meshgate ÷ nginx |", "|---|---|---|---|"]
        for sc, label in (("hs-ecdsa", "per new connection, ECDSA P-256"), ("hs-rsa", "per new connection, RSA 2048"),
                          ("keepalive", "per keep-alive request")):
            a, b = extra.get(f"{sc} meshgate"), extra.get(f"{sc} nginx")
            if a is not None or b is not None:
                L.append(f"| {label} | {f(b, 1)} | {f(a, 1)} | {f(a / b if a and b else None)}× |")
        L.append("")
    L += ["Reading: the issue sets no goal for TLS, only the comparison with nginx, so this section reports "
          "ratios and no verdict. "]
    for note in res.get("notes", []):
        L[-1] += note + " "
    L[-1] = L[-1].rstrip()
    L.append("")
    inc = [f"- {w}" for w in res.get("warnings", [])]
    for r in res["runs"]:
        if r["error_count"] or r["wrk_rc"]:
            inc.append(f"- {r['scenario']} {r['target']} rep {r['rep']}: "
                       + ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v)
                       + (f"; wrk exit {r['wrk_rc']}" if r["wrk_rc"] else ""))
    dist = [r for r in res["runs"] if r["disturbed"]]
    if dist:
        top: dict[str, float] = {}
        for r in dist:
            for comm, sec in r["background_top"]:
                top[comm] = top.get(comm, 0.0) + sec
        inc.append(f"- {len(dist)} of {len(res['runs'])} runs had other load above {res['busy_threshold']:.2f} core; "
                   "busiest other processes: " + ", ".join(f"`{c}` {v:.1f} CPU-s" for c, v in
                                                             sorted(top.items(), key=lambda kv: -kv[1])[:5]))
    L += ["Incidents:" + (" none (no socket errors, no error statuses, no other load above the threshold)."
                           if not inc else ""), *inc, "", MARK_END, ""]
    return "\n".join(L)


def auto_notes(res: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Plain-language caveats computed from the numbers (saturation of the proxy or of the load side)."""
    notes = []
    low = [(sc, s[sc]["rows"]["nginx"]["util"]) for sc in res["scenarios"]
           if s[sc]["rows"]["nginx"]["util"] is not None and s[sc]["rows"]["nginx"]["util"] < 0.85]
    if low:
        notes.append("nginx did not use its whole core in " + ", ".join(f"`{sc}` (util {u:.2f})" for sc, u in low)
                     + f": there its rate was limited by the load side (wrk and the upstream share "
                     f"CPU{res['load_cpu']}; in the handshake runs wrk's client half of a handshake costs it more "
                     "CPU than nginx's server half, see the wrk column), so the rate ratio flatters Meshgate and "
                     "CPU µs/req (or the 1-core rate derived from it) is the fairer comparison.")
    hp = str(res["env"].get("hot_path") or "")
    if hp and not hp.startswith("compiled"):
        notes.append(f"⚠ Meshgate ran its hot path as pure Python here (`meshgate version`: {hp}); the sections "
                     "of this page that say \"compiled (mypyc)\" ran the compiled build, which costs about a third "
                     "less Python per request (docs/performance.md), so compare per-request figures across "
                     "sections with care. The TLS work itself (OpenSSL, uvloop's SSL layer) is not compiled by it.")
    mg = [(sc, s[sc]["rows"]["meshgate"]["util"]) for sc in res["scenarios"]
          if s[sc]["rows"]["meshgate"]["util"] is not None and s[sc]["rows"]["meshgate"]["util"] < 0.85]
    if mg:
        notes.append("Meshgate did not use its whole core in " + ", ".join(f"`{sc}` (util {u:.2f})"
                                                                            for sc, u in mg) + ".")
    return notes


def openssl_of(binary: str) -> str:
    """The libssl a binary loads; the system one is named with `openssl version`'s answer."""
    out = B._cmd_out(["ldd", binary])
    m = re.search(r"(libssl\.so\S*) => (\S+)", out)
    if not m:
        return "?"
    system = B._cmd_out(["openssl", "version"]).split("(")[0].strip()
    return f"{system} (system {m.group(1)})" if m.group(2).startswith(("/lib", "/usr/lib")) else m.group(2)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--conns", type=int, default=50, help="wrk connections, the same for every run (50)")
    ap.add_argument("--no-rsa", action="store_true", help="skip the RSA 2048 handshake runs")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-HTTP new-connection reference runs")
    ap.add_argument("--load-cpu", default="0")
    ap.add_argument("--proxy-cpu", default="1")
    ap.add_argument("--busy-threshold", type=float, default=0.10)
    ap.add_argument("--ci-wait", type=float, default=1500.0,
                    help="wait at most this many seconds for .ci/run / pytest processes to finish (1500)")
    ap.add_argument("--ready-timeout", type=float, default=20.0)
    ap.add_argument("--meshgate", default=str(B.DEFAULT_VENV / "bin" / "meshgate"))
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--keep-tmp-on-error", action="store_true")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--from-json", metavar="FILE", help="only regenerate the docs section from a results file")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        res["summary"] = s = summarize(res)
        res["notes"] = auto_notes(res, s)
        B.write_section(B.DOCS_MD, render(res, s, res.get("command", ".venv/bin/python bench/tls.py")), "tls")
        B.log(f"wrote the tls section of {B.DOCS_MD} from {args.from_json}")
        return 0
    if args.reps < 1 or not 0 < args.duration <= 600 or args.conns < 1:
        ap.error("--reps >= 1, --duration in (0, 600], --conns >= 1")
    for tool in ("wrk", "taskset", "openssl", "pgrep"):
        if not shutil.which(tool):
            B.log(f"{tool} not found (bench/setup.sh installs wrk)")
            return 1

    B.harness_setup(args.load_cpu)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    res: dict[str, Any] = {
        "schema": 1, "reps": args.reps, "duration": args.duration, "conns": args.conns, "warmup": args.warmup,
        "load_cpu": args.load_cpu, "proxy_cpu": args.proxy_cpu, "busy_threshold": args.busy_threshold,
        "ciphers": CIPHERS, "sni": SNI, "warnings": [], "runs": [],
        "env": B.environment(args, None), "nginx_openssl": "", "wrk_openssl": openssl_of(shutil.which("wrk") or "wrk"),
        "results_file": f"tls-{stamp}.json"}
    nv = B._cmd_out([args.nginx, "-V"])
    mm = re.search(r"running with (OpenSSL [^)]+)\)", nv) or re.search(r"built with (OpenSSL \S+ \S+ \S+ \S+)", nv)
    res["nginx_openssl"] = mm.group(1) if mm else "?"
    res["env"].pop("envoy", None)
    res["env"]["wrk"] = str(res["env"].get("wrk", "")).split(" Copyright")[0]
    res["ci_wait"] = wait_for_ci(args.ci_wait)
    res["started"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    B.WATCH = B.Watchdog()
    try:
        measure(args, res)
    finally:
        B.WATCH.close()
        B.WATCH = None
    res["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    res["command"] = ".venv/bin/python bench/tls.py" + ("" if not argv else " " + " ".join(
        a for a in argv if a != "--no-docs"))
    s = summarize(res)
    res["summary"] = s
    res["notes"] = auto_notes(res, s)
    out = B.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / res["results_file"]).write_text(json.dumps(res, indent=1))
    B.log(f"wrote {out / res['results_file']}")
    section = render(res, s, res["command"])
    print(section)
    if not args.no_docs:
        B.write_section(B.DOCS_MD, section, "tls")
        B.log(f"wrote the tls section of {B.DOCS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
