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

The native HTTP/1 head codec (Rust, ``native/``, built by maturin into
``meshgate/proxy/_codec.abi3.so``; proxy/codec.py picks it at import) is built by the same
:func:`build` and by the package's own build (setup.py, through :func:`build_native`).  Its
``_codec.json`` records a SHA-256 of the crate's sources; in a source checkout a codec older than
its sources is not used.

Build: ``python -c 'from meshgate._accel import build; build()'`` (``make`` does it); ``meshgate
version`` tells which form is running.

This module imports only the standard library: setup.py loads it by path to build.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

__all__ = ["MODULES", "build", "build_native", "write_manifest", "compiled", "install", "native_sources_digest", "native_status",
           "status"]

# the modules every request runs through, leaves first, then the plugins most routes run
# (key-auth, limit-count, prometheus) and what they use per request
MODULES = (
    "meshgate.http.path",
    "meshgate.http.request",
    "meshgate.router.types",
    "meshgate.router.radixtree",
    "meshgate.proxy.runtime",
    "meshgate.proxy.common",
    "meshgate.proxy.headcodec",
    "meshgate.proxy.upstream_conn",
    "meshgate.proxy.exchange",
    "meshgate.proxy.http1",
    "meshgate.proxy.http2",
    "meshgate.proxy.server",
    "meshgate.shared.dict",
    "meshgate.observability.metrics",
    "meshgate.plugins.chain",
    "meshgate.plugins.builtin._auth",
    "meshgate.plugins.builtin._limit_common",
    "meshgate.plugins.builtin.key_auth",
    "meshgate.plugins.builtin.limit_count",
    "meshgate.plugins.builtin.prometheus",
)
GROUP = "meshgate._hotpath"            # the shared library: meshgate/_hotpath__mypyc.<suffix>
_SRC = Path(__file__).resolve().parent.parent    # the directory holding the meshgate package
MANIFEST = Path(__file__).resolve().with_name("_accel.json")
CRATE = _SRC.parent / "native"                   # the Rust crate, in a source checkout
CODEC_SO = "_codec.abi3.so"                     # in meshgate/proxy/, with _codec.json beside it

_state: dict[str, object] = {}


def _source(module: str) -> Path:
    return _SRC.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str) -> Path:
    return _SRC.joinpath(*module.split(".")).with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def abi() -> str:
    """What a compiled module is bound to: the interpreter and its minor version with the extension
    ABI tag (``cpython-3.11.cpython-311-x86_64-linux-gnu.so``), not the patch release, so a wheel
    built on 3.11.7 runs compiled on Debian's 3.11.2."""
    return f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}" \
        f"{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def _check() -> str | None:
    """None when every compiled module matches its source; else why not."""
    if os.environ.get("MESHGATE_PURE"):
        return "MESHGATE_PURE is set"
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "not built (python -m meshgate._accel build)"
    if manifest.get("python") != abi() or manifest.get("modules", {}).keys() != set(MODULES):
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


class _SourceFinder:
    """Import the accelerated modules from their .py files (ahead of the extension finder).
    A meta path finder is any object with ``find_spec``; not deriving from importlib.abc keeps
    that module (and importlib.resources with it, about 1 MB) out of every process."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        import importlib.util
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
    """Compile MODULES in place (the manifest is written only when every extension was built),
    and the native head codec."""
    why = build_native(_SRC / "meshgate" / "proxy", quiet=quiet)
    if why is not None:
        print(f"meshgate: native head codec not built ({why}); the Python codec runs", file=sys.stderr)
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
    write_manifest(MANIFEST, _source)
    return 0


def write_manifest(path: Path, source_of: Callable[[str], Path]) -> None:
    """The manifest :func:`install` checks: this interpreter's :func:`abi` and a SHA-256 per source of MODULES
    (``source_of``: where each module's .py is; setup.py's build directory, or the checkout)."""
    path.write_text(json.dumps({"python": abi(), "modules": {m: _digest(source_of(m)) for m in MODULES}},
                               indent=1))


def native_sources_digest(crate: Path = CRATE) -> str | None:
    """One SHA-256 over the crate's sources (None when there is no crate here)."""
    if not (crate / "Cargo.toml").exists():
        return None
    h = hashlib.sha256()
    for f in sorted([crate / "Cargo.toml", crate / "Cargo.lock", *(crate / "src").rglob("*.rs")]):
        if f.exists():
            h.update(f.relative_to(crate).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _cargo_env() -> dict[str, str] | None:
    """The environment for cargo (rustup's $CARGO_HOME/bin on PATH, a shared target directory, so
    that every checkout and every pip build reuses compiled crates); None without cargo."""
    import shutil
    env = dict(os.environ)
    home_bin = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo") / "bin"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", ""), str(home_bin)])
    if shutil.which("cargo", path=env["PATH"]) is None:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env.setdefault("CARGO_TARGET_DIR", str(cache / "meshgate" / "cargo-target"))
    return env


def build_native(dest: Path, *, quiet: bool = False) -> str | None:
    """Build the native head codec with maturin into ``dest`` (a ``meshgate/proxy`` directory).
    None when built; else why not (the Python codec then runs)."""
    import shutil
    import subprocess
    import tempfile
    import zipfile
    digest = native_sources_digest()
    if digest is None:
        return "no native/ crate in this source tree"
    env = _cargo_env()
    if env is None:
        return "cargo (Rust) not found"
    so = dest / CODEC_SO
    stamp = dest / "_codec.json"
    so.unlink(missing_ok=True)
    stamp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="meshgate-codec-") as out:
        # pip's isolated build environment puts its scripts (maturin's among them) on PATH
        maturin = shutil.which("maturin", path=env["PATH"])
        if maturin is None:
            return "maturin is not installed"
        cmd = [maturin, "build", "--release", "--locked", "-m", str(CRATE / "Cargo.toml"), "-i", sys.executable,
               "-o", out]
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"maturin could not run ({e})"
        if r.returncode != 0:
            lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else ""
            return f"maturin failed: {last[:160]}"
        if not quiet:
            sys.stderr.write(r.stderr)
        wheels = list(Path(out).glob("*.whl"))
        if len(wheels) != 1:
            return "maturin built no wheel"
        with zipfile.ZipFile(wheels[0]) as z:
            names = [n for n in z.namelist() if n.rsplit("/", 1)[-1].startswith("_codec") and n.endswith(".so")]
            if len(names) != 1:
                return "the wheel maturin built holds no _codec extension"
            dest.mkdir(parents=True, exist_ok=True)
            so.write_bytes(z.read(names[0]))
    stamp.write_text(json.dumps({"sources": digest}, indent=1))
    return None


def native_status(proxy_dir: Path) -> str | None:
    """None when the codec in ``proxy_dir`` may be used; else why not (stale in a checkout)."""
    try:
        built = json.loads((proxy_dir / "_codec.json").read_text()).get("sources")
    except (OSError, ValueError):
        return "not built"
    now = native_sources_digest()
    if now is not None and now != built:
        return "native/ changed since the build; rebuild (make)"
    return None
