#!/usr/bin/env python3
"""Where a Meshgate worker spends its CPU under load, split by layer (``perf record``).

The c=50 setup of bench/run.py (upstream nginx and wrk on CPU0, the proxy alone on CPU1, plain
``/*`` route): ``perf record -e cpu-clock`` samples the worker process while wrk runs, and the
samples are grouped by the shared object they fell in: the kernel, libpython, uvloop, llhttp
(httptools), the native head codec, the compiled gateway modules (mypyc), libc, the rest.  Each
variant runs in turn with the same upstream and load:

* ``native``: ``make``'s build (compiled hot path, native head codec);
* ``python-codec``: the same build with ``MESHGATE_CODEC=python`` (the Python reference codec, which
  is what every build ran before the native codec);
* ``pure``: ``MESHGATE_PURE=1`` (no compiled module at all).

    .venv/bin/python bench/perfprofile.py [--duration 10] [--variants native,python-codec,pure] [--md docs/performance.md]

Needs ``perf`` (Debian linux-perf; the cpu-clock software event works in VMs without PMU access),
wrk and nginx (bench/setup.sh).  Loopback only; every run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402  (bench/run.py: servers, configs, wrk, the watchdog)

VARIANTS = {"native": {}, "python-codec": {"MESHGATE_CODEC": "python"}, "pure": {"MESHGATE_PURE": "1"}}
LAYERS = ("kernel", "libpython", "uvloop", "llhttp (httptools)", "native head codec", "compiled gateway modules",
          "libc", "other")
BEGIN, END = "<!-- profile:begin -->", "<!-- profile:end -->"


def layer(dso: str) -> str:
    if dso.startswith("[kernel") or dso in ("[vdso]",):
        return "kernel"
    if "libpython" in dso:
        return "libpython"
    if dso.startswith("loop.cpython"):
        return "uvloop"
    if dso.startswith("parser.cpython") or dso.startswith("url_parser.cpython"):
        return "llhttp (httptools)"
    if dso.startswith("_codec"):
        return "native head codec"
    if dso.startswith("_hotpath__mypyc") or (dso.endswith(".so") and dso.split(".")[0] in COMPILED):
        return "compiled gateway modules"
    if dso.startswith(("libc.so", "libc-", "ld-linux", "libm.so")):
        return "libc"
    return "other"


COMPILED = {"path", "request", "radixtree", "runtime", "common", "headcodec", "upstream_conn", "exchange", "http1", "http2",
            "server", "dict", "metrics", "_auth", "_limit_common", "key_auth", "limit_count", "prometheus", "_accel"}


def profile(meshgate: str, env: dict[str, str], up_port: int, duration: float, tmp: Path, taken: set[int],
            lua: Path) -> tuple[dict[str, float], float]:
    """(share of samples per layer, rps) for one variant."""
    port = B.free_port(taken)
    d = tmp / f"mg-{port}"
    B.meshgate_files(d, port, up_port, 1, B.free_port(taken))
    srv = B.Server("meshgate", [meshgate, "run", "-c", str(d / "config.yaml")], port, "1", d, env=env or None)
    srv.start()
    try:
        ok, why = srv.wait_ready(30)
        if not ok:
            raise RuntimeError(f"meshgate did not start: {why}\n{srv.log_tail()}")
        B.run_wrk(port, "/", 50, 2, "0", lua)   # warm-up
        workers = [p for p in B.process_tree(srv.pid)
                   if b"meshgate.proxy.worker" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 1, workers
        data = tmp / f"perf-{port}.data"
        # perf samples the middle of the wrk run (1 s in, 1 s before its end)
        secs = max(int(duration), 4)
        rec = subprocess.Popen(["sh", "-c", f"sleep 1; exec perf record -q -e cpu-clock -F 4999 -p {workers[0]} "
                                f"-o {data} -- sleep {secs - 2}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out, err, _ = B.run_wrk(port, "/", 50, secs, "0", lua)
        rec.wait(timeout=secs + 60)
        if "BENCHJSON" not in out:
            raise RuntimeError(f"wrk failed: {out[-500:]} {err[-500:]}")
        rps = B.parse_wrk(out)
        rep = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q", "-g", "none",
                              "--percentage", "relative"], capture_output=True, text=True, timeout=300)
        shares: dict[str, float] = collections.defaultdict(float)
        for line in rep.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
            if m:
                shares[layer(m.group(2))] += float(m.group(1))
        return dict(shares), rps.get("requests", 0) / max(rps.get("duration_s", 1), 1e-9)
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--meshgate", default=str(B.DEFAULT_VENV / "bin" / "meshgate"))
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--md", default=str(B.ROOT / "docs" / "performance.md"),
                    help="page whose profile section (between the profile markers) is rewritten; '' for none")
    args = ap.parse_args()
    B.harness_setup("0")
    B.WATCH = B.Watchdog()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-profile-"))
    taken: set[int] = set()
    lua = tmp / "summary.lua"
    lua.write_text(B.WRK_LUA)
    up_port = B.free_port(taken)
    conf = tmp / "upstream.conf"
    conf.write_text(B.upstream_nginx_conf(tmp, up_port, "ok"))
    up = B.Server("upstream", [args.nginx, "-p", str(tmp), "-e", str(tmp / "upstream-error.log"), "-c", str(conf)],
                  up_port, "0", tmp)
    up.start()
    results: dict[str, tuple[dict[str, float], float]] = {}
    try:
        ok, why = up.wait_ready(10)
        assert ok, why
        for v in args.variants.split(","):
            B.log(f"profiling {v} ({args.duration:g} s)")
            results[v] = profile(args.meshgate, VARIANTS[v], up_port, args.duration, tmp, taken, lua)
            B.log(f"  {results[v][1]:,.0f} rps; " + ", ".join(f"{k} {s:.1f}%" for k, s in
                                                          sorted(results[v][0].items(), key=lambda x: -x[1])))
    finally:
        up.stop()
        B.WATCH.close()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = [BEGIN, "", f"Measured {stamp} by `.venv/bin/python bench/perfprofile.py --duration {args.duration:g}` "
         "(c=50, one worker on CPU1, upstream nginx and wrk on CPU0; share of the worker's `perf` cpu-clock samples "
         "per shared object, grouped by layer):", "",
         "| layer | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for lay in LAYERS:
        L.append(f"| {lay} | " + " | ".join(f"{results[v][0].get(lay, 0.0):.1f} %" for v in results) + " |")
    L.append("| rps while sampled | " + " | ".join(f"{results[v][1]:,.0f}" for v in results) + " |")
    L += ["", END]
    text = "\n".join(L)
    print(text)
    if args.md:
        md = Path(args.md)
        page = md.read_text()
        if BEGIN in page and END in page:
            page = page[:page.index(BEGIN)] + text + page[page.index(END) + len(END):]
        else:
            page += "\n" + text + "\n"
        md.write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
