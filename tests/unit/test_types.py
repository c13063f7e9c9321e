"""DESIGN.md: `mypy --strict` on src/ is part of the checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_on_src() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "src/meshgate"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
