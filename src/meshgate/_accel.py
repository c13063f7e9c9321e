"""Compiled hot path: the per-request modules built with mypyc, and the guard that keeps them honest.

The modules in :data:`MODULES` are plain, fully typed Python.  ``make`` compiles them in place
with mypyc into C extensions next to their sources, the way black and mypy ship themselves; the
per-request Python then costs about a third less (docs/performance.md).  Without a C compiler, or with ``MESHGATE_PURE=1``, the
same modules run as Python.

A compiled module must never run instead of a source that changed after it was built: the
build records a SHA-256 of every source in ``_accel.json``, and at import :func:`install`
checks them all.  Compiled modules call each other directly (one shared library), so the
choice is all or nothing: if any source differs, or any extension is missing, every module
in the set is imported from its ``.py``.

Build: ``python -c 'from meshgate._accel import build; build()'`` (``make`` does it); ``meshgate
version`` tells which form is running.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

__all__ = ["MODULES", "compiled", "install", "status"]

# the modules every request runs through, leaves first, then the plugins most routes run
# (key-auth, limit-count, prometheus) and what they use per request
MODULES = (
    "meshgate.http.path",
    "meshgate.http.request",
    "meshgate.router.radixtree",
    "meshgate.proxy.runtime",
    "meshgate.proxy.common",
    "meshgate.proxy.upstream_conn",
    "meshgate.proxy.exchange",
    "meshgate.proxy.http1",
    "meshgate.proxy.http2",
    "meshgate.proxy.server",
    "meshgate.shared.dict",
    "meshgate.observability.metrics",
    "meshgate.plugins.builtin._auth",
    "meshgate.plugins.builtin._limit_common",
    "meshgate.plugins.builtin.key_auth",
    "meshgate.plugins.builtin.limit_count",
    "meshgate.plugins.builtin.prometheus",
)
GROUP = "meshgate._hotpath"            # the shared library: meshgate/_hotpath__mypyc.<suffix>
_SRC = Path(__file__).resolve().parent.parent    # the directory holding the meshgate package
MANIFEST = Path(__file__).resolve().with_name("_accel.json")

_state: dict[str, object] = {}


def _source(module: str) -> Path:
    return _SRC.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str) -> Path:
    return _SRC.joinpath(*module.split(".")).with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check() -> str | None:
    """None when every compiled module matches its source; else why not."""
    if os.environ.get("MESHGATE_PURE"):
        return "MESHGATE_PURE is set"
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "not built (python -m meshgate._accel build)"
    if manifest.get("python") != sys.version or manifest.get("modules", {}).keys() != set(MODULES):
        return "built for another interpreter or module set; rebuild"
    for module in MODULES:
        if not _extension(module).exists():
            return f"{module}: compiled extension missing"
        try:
            if _digest(_source(module)) != manifest["modules"][module]:
                return f"{module}: source changed since the build"
        except OSError as e:
            return f"{module}: {e}"
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Import the accelerated modules from their .py files (ahead of the extension finder)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        src = _source(fullname)
        return importlib.util.spec_from_file_location(fullname, src) if src.exists() else None


def install() -> None:
    """Decide once per process, before any accelerated module is imported."""
    if "reason" in _state:
        return
    reason = _check()
    _state["reason"] = reason
    if reason is not None:
        sys.meta_path.insert(0, _SourceFinder())


def compiled() -> bool:
    install()
    return _state["reason"] is None


def status() -> str:
    install()
    reason = _state["reason"]
    if reason is None:
        return f"compiled ({len(MODULES)} modules, mypyc)"
    return f"pure Python ({reason})"


def build(*, quiet: bool = False) -> int:
    """Compile MODULES in place; write the manifest only when every extension was built."""
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as e:
        print(f"meshgate: compiled hot path not built ({e}); running as pure Python", file=sys.stderr)
        return 1
    MANIFEST.unlink(missing_ok=True)
    root = _SRC.parent
    work = root / "build" / "accel"
    work.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rel = [str(_source(m).relative_to(root)) for m in MODULES]
        exts = mypycify(rel, opt_level="3", group_name=GROUP, target_dir=str(work / "c"))
        dist = Distribution({"name": "meshgate-hotpath", "ext_modules": exts, "package_dir": {"": "src"}})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        cmd.build_temp = str(work / "tmp")
        dist.verbose = 0 if quiet else 1
        dist.run_command("build_ext")
    except (Exception, SystemExit) as e:  # a compiler error is a reason to run pure, not to fail
        print(f"meshgate: compiled hot path not built ({e}); running as pure Python", file=sys.stderr)
        return 1
    finally:
        os.chdir(cwd)
    missing = [m for m in MODULES if not _extension(m).exists()]
    if missing:
        print(f"meshgate: compiled hot path incomplete ({', '.join(missing)}); running as pure Python",
              file=sys.stderr)
        return 1
    MANIFEST.write_text(json.dumps({"python": sys.version,
                                    "modules": {m: _digest(_source(m)) for m in MODULES}}, indent=1))
    return 0
