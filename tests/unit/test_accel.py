"""The compiled hot path is used only when every extension matches its source (meshgate._accel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshgate import _accel


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest in tmp_path that matches the current sources, extensions assumed present."""
    manifest = tmp_path / "_accel.json"
    manifest.write_text(json.dumps({"python": sys.version,
                                    "modules": {m: _accel._digest(_accel._source(m)) for m in _accel.MODULES}}))
    monkeypatch.setattr(_accel, "MANIFEST", manifest)
    monkeypatch.setattr(_accel, "_extension", _accel._source)   # "exists" for the check
    monkeypatch.delenv("MESHGATE_PURE", raising=False)
    return manifest


def test_matching_build_is_used(built: Path) -> None:
    assert _accel._check() is None


def test_changed_source_means_pure_python(built: Path) -> None:
    data = json.loads(built.read_text())
    data["modules"]["meshgate.router.radixtree"] = "0" * 64
    built.write_text(json.dumps(data))
    assert _accel._check() == "meshgate.router.radixtree: source changed since the build"


def test_other_interpreter_or_module_set_means_pure_python(built: Path) -> None:
    data = json.loads(built.read_text())
    del data["modules"]["meshgate.http.path"]
    built.write_text(json.dumps(data))
    assert "rebuild" in (_accel._check() or "")
    built.write_text(json.dumps({**data, "python": "2.7"}))
    assert "rebuild" in (_accel._check() or "")


def test_missing_extension_or_manifest_means_pure_python(built: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(_accel, "_extension", lambda m: tmp_path / "nope.so")
    assert "compiled extension missing" in (_accel._check() or "")
    built.unlink()
    assert "not built" in (_accel._check() or "")


def test_meshgate_pure_forces_python(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_PURE", "1")
    assert _accel._check() == "MESHGATE_PURE is set"


def test_pure_process_imports_every_hot_module_from_source() -> None:
    code = ("import importlib, meshgate\n"
            f"for m in {list(_accel.MODULES)!r}:\n"
            "    print(importlib.import_module(m).__file__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"MESHGATE_PURE": "1", "PATH": "/usr/bin:/bin"}).stdout.split()
    assert len(out) == len(_accel.MODULES) and all(f.endswith(".py") for f in out), out
