"""The native head codec's own Rust tests (native/src/lib.rs), run with cargo where there is one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meshgate import _accel

CRATE = Path(__file__).resolve().parents[2] / "native"


def test_the_crate_tests_pass() -> None:
    env = _accel._cargo_env()
    if env is None or not (CRATE / "Cargo.toml").exists():
        pytest.skip("no cargo (or no native/ crate) here: the Python codec runs")
    r = subprocess.run(["cargo", "test", "--locked", "--no-default-features", "-q"], cwd=CRATE, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "test result: ok" in r.stdout
