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
    manifest.write_text(json.dumps({"python": _accel.abi(),
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


# --- the native head codec ------------------------------------------------------------------------

PROXY_DIR = Path(_accel.__file__).resolve().parent / "proxy"


def test_native_codec_is_built_where_cargo_is() -> None:
    """make builds the Rust codec whenever cargo is there: a silent fall back would hide a broken build."""
    if _accel._cargo_env() is None:
        pytest.skip("no cargo on this machine: the Python codec runs")
    assert _accel.native_status(PROXY_DIR) is None
    from meshgate.proxy import codec
    native, why = codec.load_native(ignore_env=True)
    assert native is not None, why
    assert native.name.startswith("native (Rust")


def test_changed_crate_sources_mean_the_python_codec(tmp_path: Path) -> None:
    (tmp_path / "_codec.json").write_text(json.dumps({"sources": "0" * 64}))
    assert "rebuild" in (_accel.native_status(tmp_path) or "")
    assert _accel.native_status(tmp_path / "nowhere") == "not built"
    (tmp_path / "_codec.json").write_text(json.dumps({"sources": _accel.native_sources_digest()}))
    assert _accel.native_status(tmp_path) is None


def test_pure_forces_the_python_codec() -> None:
    out = subprocess.run([sys.executable, "-m", "meshgate", "version"], capture_output=True, text=True,
                         env={**__import__("os").environ, "MESHGATE_PURE": "1"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "head codec: python (MESHGATE_PURE is set)" in out.stdout
