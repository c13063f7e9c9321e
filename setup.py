"""The package build, with the compiled hot path: ``pip install .`` and ``pip wheel .`` give what ``make`` gives.

Everything but the extensions is declared in pyproject.toml.  ``build_ext`` compiles the modules
listed in ``meshgate._accel.MODULES`` with mypyc (one shared library, as ``_accel.build`` does in
place for ``make``) into the build directory, then writes the manifest that ``_accel`` checks at
import (a SHA-256 per source), so the installed package runs compiled.  When mypyc or a C compiler
is missing, or the compile fails, the build goes on without them and says so on one line: the
installed package then runs as pure Python (``meshgate version`` tells which).

The same command builds the native HTTP/1 head codec (the Rust crate in native/, with maturin,
which pyproject.toml lists among the build requirements) into ``meshgate/proxy/_codec.abi3.so``
(``_accel.build_native``).  Without cargo, or when that build fails, the build goes on and says so
on one line: the installed package then runs the Python codec.  Compiled crates are cached under
``~/.cache/meshgate/cargo-target`` (``CARGO_TARGET_DIR`` overrides it).

An editable install (``pip install -e .``, what ``make`` does) compiles nothing here: ``make``
compiles in place, and only when a hot-path source changed.  ``MESHGATE_PURE_BUILD=1`` builds a
pure-Python package (no mypyc, no native codec) on purpose.

The isolated build environment has mypy but not the runtime dependencies, so the modules are
type-checked with imports of those treated as untyped (``--ignore-missing-imports`` and the checks
that follow from it relaxed); the compiled code is the same code ``make`` compiles.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
MYPY_FLAGS = ["--ignore-missing-imports", "--no-warn-return-any", "--allow-subclassing-any",
              "--allow-untyped-calls", "--no-warn-unused-ignores"]


def accel_module() -> Any:
    """src/meshgate/_accel.py, loaded by path (it imports only the standard library): its
    ``MODULES``, ``GROUP``, ``write_manifest`` and ``build_native`` serve this build too."""
    spec = importlib.util.spec_from_file_location("meshgate_build_accel", ROOT / "src" / "meshgate" / "_accel.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ACCEL = accel_module()
GROUP: str = ACCEL.GROUP


def notice(why: object) -> None:
    cause: object = why
    while isinstance(cause, BaseException) and not isinstance(cause, subprocess.CalledProcessError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, subprocess.CalledProcessError):
        cmd = cause.cmd[0] if isinstance(cause.cmd, (list, tuple)) and cause.cmd else cause.cmd
        why = f"the C compiler failed: {cmd} exited {cause.returncode}"
    else:   # distutils' CompileError carries only the text
        m = re.match(r"Command '\['([^']+)'.* returned non-zero exit status (\d+)", str(why))
        if m is not None:
            why = f"the C compiler failed: {m.group(1)} exited {m.group(2)}"
    text = (str(why).splitlines() or [type(why).__name__])[0][:200] or type(why).__name__
    print(f"meshgate: built without the compiled hot path ({text}); it runs as pure Python", file=sys.stderr)


class BuildHotPath(build_ext):
    """mypyc-compile the hot path, or build on without it (see the module doc)."""

    def run(self) -> None:
        if self.inplace or getattr(self, "editable_mode", False):
            return      # make compiles in place (src/meshgate/_accel.py build)
        if os.environ.get("MESHGATE_PURE_BUILD"):
            notice("MESHGATE_PURE_BUILD is set")
            return
        why = ACCEL.build_native(Path(self.build_lib) / "meshgate" / "proxy", quiet=True)
        if why is not None:
            print(f"meshgate: built without the native head codec ({why}); the Python codec runs", file=sys.stderr)
        modules: tuple[str, ...] = ACCEL.MODULES
        try:
            from mypyc.build import mypycify
        except ImportError as e:
            notice(e)
            return
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            paths = ["src/" + m.replace(".", "/") + ".py" for m in modules]
            self.extensions = mypycify([*MYPY_FLAGS, *paths], opt_level="3", group_name=GROUP,
                                       target_dir=str(Path(self.build_temp) / "mypyc"))
            for ext in self.extensions:     # what finalize_options did for the stand-in
                ext._full_name = self.get_ext_fullname(ext.name)
                ext._links_to_dynamic = False
                ext._needs_stub = False
                self.ext_map[ext._full_name] = ext
                self.ext_map[ext._full_name.split(".")[-1]] = ext
            super().run()
        except (Exception, SystemExit) as e:   # a missing compiler is a reason to run pure, not to fail
            notice(e)
            self._remove_partial(modules)
            return
        finally:
            os.chdir(cwd)
        self._write_manifest()

    def _lib(self, module: str, suffix: str) -> Path:
        return Path(self.build_lib).joinpath(*module.split(".")).with_suffix(suffix)

    def _remove_partial(self, modules: tuple[str, ...]) -> None:
        from importlib.machinery import EXTENSION_SUFFIXES
        for m in (*modules, GROUP + "__mypyc"):
            self._lib(m, EXTENSION_SUFFIXES[0]).unlink(missing_ok=True)
        self._lib("meshgate._accel", ".json").unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        ACCEL.write_manifest(self._lib("meshgate._accel", ".json"), lambda m: self._lib(m, ".py"))

setup(
    # a stand-in: BuildHotPath.run replaces it with mypyc's extensions (it makes the wheel platform-specific)
    ext_modules=[Extension(GROUP + "__mypyc", sources=["src/meshgate/_accel.py"])],
    cmdclass={"build_ext": BuildHotPath},
)
