"""``pip install .`` as a user of a package index would do it: the package's own build gives the
compiled hot path and the native head codec (setup.py), and falls back to pure Python and the
Python codec, saying so, without a C compiler and without Rust.

Each case builds a wheel from this checkout (``pip wheel --no-deps``: build isolation, mypy fetched
into the build environment as pyproject.toml asks), installs it into a fresh venv (dependencies from
the package index, or pip's cache), and runs the installed ``meshgate``: ``version``, and one request
through ``meshgate run``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


def build_and_install(tmp: Path, env: dict[str, str] | None = None) -> tuple[Path, str]:
    """(the venv's bin directory, the build's output)."""
    wheels = tmp / "wheels"
    # a clean build directory: the build must not pick up what another build left
    for d in (ROOT / "build").glob("*"):
        if d.name.startswith(("lib.", "temp.", "bdist.")):
            shutil.rmtree(d, ignore_errors=True)
    # the fresh venv's own pip builds the wheel: nothing of the project's venv (mypy, maturin) can help
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "maturin").exists())
    b = subprocess.run([str(venv / "bin" / "pip"), "wheel", "-v", "--no-deps", "-w", str(wheels), str(ROOT)],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "PATH": path, **(env or {})})
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    (wheel,) = wheels.glob("meshgate-*.whl")
    i = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                       timeout=600)
    assert i.returncode == 0, i.stdout[-3000:] + i.stderr[-3000:]
    return venv / "bin", b.stdout + b.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serves(bin_dir: Path, tmp: Path) -> None:
    """``meshgate run`` of the installed package answers a request (a route without upstream: 404)."""
    port, cport = free_port(), free_port()
    (tmp / "config.yaml").write_text(
        f"apisix:\n  node_listen: [{{ip: 127.0.0.1, port: {port}}}]\n  control: {{ip: 127.0.0.1, port: {cport}}}\n"
        "  ssl: {enable: false}\nnginx_config: {worker_processes: 1}\n"
        "deployment: {role: data_plane, role_data_plane: {config_provider: yaml}}\n")
    (tmp / "apisix.yaml").write_text("routes: []\n#END\n")
    log = open(tmp / "run.log", "wb")
    p = subprocess.Popen([str(bin_dir / "meshgate"), "run", "-c", str(tmp / "config.yaml")], cwd=tmp, stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=2)
            except urllib.error.HTTPError as e:
                assert e.code == 404 and e.read() == b'{"error_msg":"404 Route Not Found"}\n'
                return
            except OSError:
                assert p.poll() is None, (tmp / "run.log").read_text()
                assert time.monotonic() < deadline, (tmp / "run.log").read_text()
                time.sleep(0.2)
    finally:
        p.terminate()
        p.wait(30)


def test_pip_install_gives_the_compiled_hot_path(tmp_path: Path) -> None:
    bin_dir, out = build_and_install(tmp_path)
    assert "built without the compiled hot path" not in out
    v = subprocess.run([str(bin_dir / "meshgate"), "version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "hot path: compiled (" in v.stdout, v.stdout + v.stderr
    assert "head codec: native (Rust " in v.stdout, v.stdout
    serves(bin_dir, tmp_path)


def test_without_a_c_compiler_and_rust_the_package_runs_as_pure_python(tmp_path: Path) -> None:
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "cargo").exists())
    bin_dir, out = build_and_install(tmp_path, {"CC": "/bin/false", "PATH": path, "CARGO_HOME": str(tmp_path / "none")})
    notices = [line for line in out.splitlines() if "meshgate: built without the compiled hot path" in line]
    assert len(notices) == 1 and "the C compiler failed: /bin/false exited 1" in notices[0], out[-2000:]
    notices = [line.strip() for line in out.splitlines() if "meshgate: built without the native head codec" in line]
    assert notices == ["meshgate: built without the native head codec (cargo (Rust) not found); the Python codec runs"], \
        out[-2000:]
    v = subprocess.run([str(bin_dir / "meshgate"), "version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "hot path: pure Python (not built" in v.stdout, v.stdout
    assert "head codec: python (not built)" in v.stdout, v.stdout
    serves(bin_dir, tmp_path)
