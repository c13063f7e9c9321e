"""The quick-start journey: `meshgate demo` run as a user runs it, then the printed curls.

This is the north-south story of the seeds (Bookinfo behind the gateway) on loopback.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_block(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def _get(url: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def demo(tmp_path):
    gw_port = _free_block(1)
    ctl_port = _free_block(1)
    svc_port = _free_block(6)
    proc = subprocess.Popen([sys.executable, "-m", "meshgate", "demo", "--port", str(gw_port), "--services-port",
                             str(svc_port), "--control-port", str(ctl_port), "--dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=tmp_path)
    out = b""
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while b"Ctrl-C to stop" not in out and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            out += proc.stdout.read1(65536)  # type: ignore[attr-defined]
    if b"Ctrl-C to stop" not in out:
        proc.kill()
        raise AssertionError(f"demo did not start:\n{out.decode(errors='replace')}")
    time.sleep(0.2)
    yield gw_port, out.decode(errors="replace"), proc, ctl_port
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def test_demo_prints_curls_and_they_work(demo):
    gw_port, printed, proc, _ = demo
    assert f"http://127.0.0.1:{gw_port}/productpage" in printed
    status, headers, body = _get(f"http://127.0.0.1:{gw_port}/productpage", host="bookinfo.local")
    assert status == 200
    assert b"<html" in body.lower() and b"Reviewer1" in body
    assert headers.get("x-demo-service") == "productpage"


def test_demo_reviews_versions_balanced(demo):
    gw_port, _, _, _ = demo
    versions = set()
    for _ in range(9):
        status, headers, body = _get(f"http://127.0.0.1:{gw_port}/reviews/0", host="bookinfo.local")
        assert status == 200
        versions.add(headers.get("x-demo-version"))
        json.loads(body)
    assert versions == {"v1", "v2", "v3"}
    status, headers, _ = _get(f"http://127.0.0.1:{gw_port}/reviews/0", host="reviews-v3.bookinfo.local")
    assert status == 200 and headers.get("x-demo-version") == "v3"


def test_demo_unknown_host_path_is_404_and_control_api_explains(demo):
    gw_port, _, _, ctl_port = demo
    status, _, body = _get(f"http://127.0.0.1:{gw_port}/nothing-here", host="bookinfo.local")
    assert status == 404 and json.loads(body) == {"error_msg": "404 Route Not Found"}
    status, _, body = _get(f"http://127.0.0.1:{ctl_port}/v1/match?host=bookinfo.local&uri=/reviews/0")
    explained = json.loads(body)
    assert status == 200 and explained["matched"] and explained["upstream"]["nodes"]
    assert "precedence" in explained


def test_demo_stops_cleanly_on_sigint(demo):
    _, _, proc, _ = demo
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
