"""Meshgate's container images (deploy/images/build.py), built offline with buildah.

The images are built (or reused from the cache) once per session, then checked from the outside,
as a container runtime would see them: each docker-archive tar's manifest and config (RepoTags,
Entrypoint, Cmd, User, layers), and, unpacked layer by layer into a temporary rootfs, what the
image runs: ``meshgate version`` on the image's own python3 (compiled hot path, native codec), the
proxyv2 drop-in entrypoint (``istio-iptables ...`` and ``proxy sidecar ...``), a request through
``meshgate run``, the pause binary's signals, and a Bookinfo demo service answering HTTP as uid 1000.

Needs root, buildah, debootstrap, gcc (static libc) and chroot; skipped without them.  A cold build
takes about 3 minutes (debootstrap, the wheel), a warm one under a second.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "images" / "build.py"
pytestmark = pytest.mark.timeout(1800)

TOOLS = {"buildah": "buildah", "debootstrap": "debootstrap", "gcc": "gcc", "chroot": "coreutils"}
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}
IPTABLES_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
                 "-d", "15090,15021,15020"]


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshgate_images_build", BUILD)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def missing() -> str | None:
    if os.geteuid() != 0:
        return "building images needs root (debootstrap, buildah storage, chroot)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for tool, pkg in TOOLS.items():
        if shutil.which(tool, path=path) is None:
            return f"{tool} not found (Debian package {pkg})"
    return None


@pytest.fixture(scope="session")
def images() -> dict[str, tuple[str, Path]]:
    why = missing()
    if why:
        pytest.skip(why)
    built: dict[str, tuple[str, Path]] = load_build().build_images()
    return built


# --- reading a docker-archive ------------------------------------------------------------------


def archive(tar: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the manifest entry, the image config) of a single-image docker-archive."""
    with tarfile.open(tar) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert len(manifest) == 1, manifest
        config = json.load(tf.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    return manifest[0], config


def _layer(tf: tarfile.TarFile, name: str) -> tarfile.TarInfo:
    member = tf.getmember(name)
    while member.issym():      # c/image's archives hold <id>/layer.tar -> ../<digest>.tar links
        member = tf.getmember(os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname)))
    return member


def unpack(tar: Path, dest: Path) -> None:
    """Apply the image's layers in order into dest, as a runtime's snapshotter would (whiteouts too)."""
    dest.mkdir()
    entry, _ = archive(tar)
    extra: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    with tarfile.open(tar) as outer:
        for name in entry["Layers"]:
            f = outer.extractfile(_layer(outer, name))
            assert f is not None
            with tarfile.open(fileobj=f, mode="r|*") as layer:
                for m in layer:
                    path = dest / m.name
                    base = os.path.basename(m.name)
                    if base == ".wh..wh..opq":
                        for child in path.parent.iterdir():
                            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                        continue
                    if base.startswith(".wh."):
                        gone = path.parent / base[4:]
                        if gone.is_dir() and not gone.is_symlink():
                            shutil.rmtree(gone)
                        elif os.path.lexists(gone):
                            gone.unlink()
                        continue
                    if os.path.lexists(path) and not (m.isdir() and path.is_dir() and not path.is_symlink()):
                        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                    layer.extract(m, dest, numeric_owner=True, **extra)


def unpacked(images: dict[str, tuple[str, Path]], factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    d = factory.mktemp(f"{name}-image") / "rootfs"
    unpack(images[name][1], d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def meshgate_root(images: dict[str, tuple[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from unpacked(images, tmp_path_factory, "meshgate")


@pytest.fixture(scope="module")
def bookinfo_root(images: dict[str, tuple[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from unpacked(images, tmp_path_factory, "bookinfo")


def chroot(root: Path, *argv: str, user: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = ["chroot", *([f"--userspec={user}:{user}"] if user is not None else []), str(root), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, deadline: float, proc: subprocess.Popen[str]) -> tuple[int, dict[str, str], bytes]:
    """GET url, retrying until it answers (or the process died, or the deadline passed)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
        except OSError:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"exited {proc.returncode} before answering:\n{out[-2000:]}\n{err[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer in time")
            time.sleep(0.2)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


# --- the archives ------------------------------------------------------------------------------


def test_archives_name_their_images_and_share_the_base_layer(images: dict[str, tuple[str, Path]]) -> None:
    assert set(images) == {"base", "pause", "meshgate", "bookinfo", "etcd"}
    layers = {}
    for name, (ref, tar) in images.items():
        assert tar.is_file() and tar.suffix == ".tar"
        entry, config = archive(tar)
        assert entry["RepoTags"] == [ref], (name, entry["RepoTags"])
        assert ref.startswith("localhost/") and ref.endswith(":local")
        layers[name] = entry["Layers"]
        assert len(config["rootfs"]["diff_ids"]) == len(entry["Layers"])
    assert images["meshgate"][0] == "localhost/meshgate:local"
    assert images["pause"][0] == "localhost/pause:local"
    assert images["bookinfo"][0] == "localhost/meshgate-bookinfo:local"
    assert images["etcd"][0] == "localhost/etcd:local" and len(layers["etcd"]) == 1
    # few layers: base = the rootfs; meshgate = base + one; bookinfo = meshgate + one (users/config only)
    assert [len(layers[n]) for n in ("base", "pause", "meshgate", "bookinfo")] == [1, 1, 2, 3]
    assert layers["meshgate"][0] == layers["base"][0]
    assert layers["bookinfo"][:2] == layers["meshgate"]


def test_image_configs(images: dict[str, tuple[str, Path]]) -> None:
    configs = {n: archive(t)[1]["config"] for n, (_, t) in images.items()}
    pause, mesh, book = configs["pause"], configs["meshgate"], configs["bookinfo"]
    assert pause["Entrypoint"] == ["/pause"] and not pause.get("Cmd")
    assert pause["User"] == "65535:65535"
    assert mesh["Entrypoint"] == ["/usr/local/bin/meshgate-entrypoint"]
    assert mesh["Cmd"] == ["version"]
    assert mesh.get("User", "") in ("", "0", "0:0", "root")      # like proxyv2; the injector sets runAsUser
    assert book["Entrypoint"] == ["python3", "-m", "meshgate.demo"]
    assert book["Cmd"] == ["--service", "productpage"]
    assert book["User"] == "1000:1000"
    assert "9080/tcp" in (book.get("ExposedPorts") or {})
    # the chart's bundled etcd runs `etcd ...` (command, found on PATH)
    etcd = configs["etcd"]
    assert etcd["Entrypoint"] == ["/usr/local/bin/etcd"] and "/usr/local/bin" in next(
        e for e in etcd["Env"] if e.startswith("PATH="))
    for name, c in configs.items():
        if name != "pause":
            assert any(e.startswith("PATH=") and "/usr/local/bin" in e for e in c["Env"]), (name, c["Env"])


def test_a_warm_build_reuses_every_tar(images: dict[str, tuple[str, Path]]) -> None:
    before = {n: (t.stat().st_mtime_ns, t.stat().st_ino) for n, (_, t) in images.items()}
    t0 = time.monotonic()
    again = load_build().build_images()
    assert time.monotonic() - t0 < 30
    assert again == images
    assert {n: (t.stat().st_mtime_ns, t.stat().st_ino) for n, (_, t) in again.items()} == before


def test_cli_prints_name_reference_and_path(images: dict[str, tuple[str, Path]]) -> None:
    r = subprocess.run([sys.executable, str(BUILD), "--images", "pause,meshgate",
                        "--print-paths"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{n} {images[n][0]} {images[n][1]}" for n in ("pause", "meshgate")]
    bad = subprocess.run([sys.executable, str(BUILD), "--images", "nginx"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown image" in bad.stderr


# --- what the images run -----------------------------------------------------------------------


def test_pause_exits_zero_on_term_and_int(images: dict[str, tuple[str, Path]], tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    unpack(images["pause"][1], root)
    assert sorted(p.name for p in root.iterdir()) == ["pause"]
    exe = root / "pause"
    head = exe.read_bytes()
    assert head[:4] == b"\x7fELF" and head[4] == 2, "pause must be a 64-bit ELF"
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    types = [struct.unpack_from("<I", head, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in types, "pause must be static (it has a PT_INTERP program header)"
    assert len(head) < 2_000_000
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = subprocess.Popen([str(exe)])
        time.sleep(0.3)
        assert p.poll() is None, "pause exited on its own"
        p.send_signal(sig)
        assert p.wait(timeout=10) == 0
    # SIGHUP at its default disposition in the child, whatever this process inherited (a run
    # started under nohup ignores it, and an ignored signal stays ignored across exec)
    p = subprocess.Popen([str(exe)], preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    time.sleep(0.3)
    p.send_signal(signal.SIGHUP)      # not one of its signals: the default action (terminate) applies
    assert p.wait(timeout=10) == -signal.SIGHUP


def test_meshgate_version_runs_the_fast_form_on_the_images_python(meshgate_root: Path) -> None:
    r = chroot(meshgate_root, "/usr/local/bin/meshgate-entrypoint", "version")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    assert lines[0].startswith("meshgate ")
    assert lines[1].startswith("hot path: compiled ("), lines[1]
    assert lines[2].startswith("head codec: native"), lines[2]
    py = chroot(meshgate_root, "python3", "-c", "import sys; print(sys.executable, sys.version.split()[0])")
    assert py.stdout.split()[0] == "/usr/bin/python3", py.stdout        # Debian's python3, no other
    assert not (meshgate_root / "usr/bin/gcc").exists() and not (meshgate_root / "usr/bin/cc").exists()


def test_istio_iptables_args_print_the_capture_rules(meshgate_root: Path) -> None:
    r = chroot(meshgate_root, "/usr/local/bin/meshgate-entrypoint", "istio-iptables", "--dry-run", *IPTABLES_ARGS)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("# iptables-restore --noflush\n*nat\n")
    assert out.rstrip().endswith("COMMIT")
    for rule in ("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                 "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                 "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                 "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
                 "-A OUTPUT -j ISTIO_OUTPUT"):
        assert rule in out.splitlines(), rule
    # pilot-agent in front (the symlink, and as first argument) is the same
    via_link = chroot(meshgate_root, "/usr/local/bin/pilot-agent", "istio-iptables", "-n", *IPTABLES_ARGS)
    via_arg = chroot(meshgate_root, "/usr/local/bin/meshgate-entrypoint", "pilot-agent", "istio-iptables", "-n",
                     *IPTABLES_ARGS)
    assert via_link.stdout == via_arg.stdout == out
    # a bad flag is meshgate iptables' own error, not the shell's
    bad = chroot(meshgate_root, "/usr/local/bin/meshgate-entrypoint", "istio-iptables", "-m", "TPROXY", "-n")
    assert bad.returncode != 0 and "meshgate iptables" in bad.stderr
    # the image has the iptables-restore the rules are meant for
    v = chroot(meshgate_root, "iptables-restore", "--version")
    assert v.returncode == 0 and "iptables-restore" in v.stdout + v.stderr


def test_proxy_args_reach_meshgate_mesh(meshgate_root: Path) -> None:
    # Istio's istio-proxy args; without the injector's env there is no node id: mesh's own error
    r = chroot(meshgate_root, "/usr/local/bin/meshgate-entrypoint", "proxy", "sidecar", "--domain",
               "default.svc.cluster.local", "--proxyLogLevel=warning", "--log_output_level=default:info")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no node id" in r.stderr and "POD_NAME" in r.stderr
    # anything else is a meshgate command
    h = chroot(meshgate_root, "/usr/local/bin/meshgate-entrypoint", "validate", "--help")
    assert h.returncode == 0 and "routes_file" in h.stdout


def test_istio_proxy_user_and_writable_dirs(meshgate_root: Path) -> None:
    passwd = (meshgate_root / "etc/passwd").read_text().splitlines()
    group = (meshgate_root / "etc/group").read_text().splitlines()
    assert any(ln.startswith("istio-proxy:x:1337:1337:") for ln in passwd)
    assert "istio-proxy:x:1337:" in group
    for d in ("etc/istio/proxy", "var/lib/meshgate"):
        st = (meshgate_root / d).stat()
        assert (st.st_uid, st.st_gid) == (1337, 1337), d
    w = chroot(meshgate_root, "sh", "-c", "touch /etc/istio/proxy/x /var/lib/meshgate/x && echo ok", user=1337)
    assert w.stdout.strip() == "ok", w.stderr
    ro = chroot(meshgate_root, "sh", "-c", "touch /usr/local/bin/x", user=1337)
    assert ro.returncode != 0


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_gateway_proxies_a_request_in_the_image(meshgate_root: Path) -> None:
    """``meshgate run`` from the image (compiled hot path, native codec, the image's python3)
    proxies to an upstream on the host's loopback."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, cport = free_port(), free_port()
    conf = meshgate_root / "var/lib/meshgate/conf"
    conf.mkdir(exist_ok=True)
    (conf / "config.yaml").write_text(
        f"apisix:\n  node_listen: [{{ip: 127.0.0.1, port: {port}}}]\n  control: {{ip: 127.0.0.1, port: {cport}}}\n"
        "  ssl: {enable: false}\nnginx_config: {worker_processes: 1}\n"
        "deployment:\n  role: data_plane\n  role_data_plane: {config_provider: yaml}\n")
    (conf / "apisix.yaml").write_text(
        "routes:\n  - id: here\n    uri: /here/*\n    upstream:\n      type: roundrobin\n"
        f"      nodes: {{\"127.0.0.1:{upstream.server_address[1]}\": 1}}\n#END\n")
    p = subprocess.Popen(["chroot", str(meshgate_root), "/usr/local/bin/meshgate-entrypoint", "run", "-c",
                          "/var/lib/meshgate/conf/config.yaml"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    try:
        deadline = time.monotonic() + 30
        get(f"http://127.0.0.1:{cport}/v1/healthcheck", deadline, p)   # up
        missing_status, _, _ = get(f"http://127.0.0.1:{port}/nowhere", deadline, p)
        assert missing_status == 404
        status, _, body = get(f"http://127.0.0.1:{port}/here/a?b=1", deadline, p)
        assert (status, body) == (200, b"upstream saw /here/a?b=1")
    finally:
        code, out, err = stop(p)
        upstream.shutdown()
        upstream.server_close()
    assert code == 0, err[-2000:]


def test_bookinfo_service_answers_as_uid_1000(images: dict[str, tuple[str, Path]], bookinfo_root: Path) -> None:
    _, config = archive(images["bookinfo"][1])
    port = free_port()
    # the image's ENTRYPOINT with a service's args, as the pod would run it, as the image's user
    argv = [*config["config"]["Entrypoint"], "--service", "ratings", "--version", "v1", "--host", "127.0.0.1",
            "--port", str(port)]
    p = subprocess.Popen(["chroot", "--userspec=1000:1000", str(bookinfo_root), *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 30
        status, headers, body = get(f"http://127.0.0.1:{port}/health", deadline, p)
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert headers.get("x-demo-service") == "ratings" and headers.get("x-demo-version") == "v1"
        status, _, body = get(f"http://127.0.0.1:{port}/ratings/0", deadline, p)
        assert status == 200
        assert json.loads(body)["ratings"] == {"Reviewer1": 5, "Reviewer2": 4}
        assert int(subprocess.run(["ps", "-o", "uid=", "-p", str(p.pid)], capture_output=True,
                                  text=True).stdout.strip()) == 1000
    finally:
        code, out, err = stop(p)
    assert code == 0, err[-2000:]
    assert f"demo ratings v1 listening on 127.0.0.1:{port}" in out
    passwd = (bookinfo_root / "etc/passwd").read_text()
    assert "bookinfo:x:1000:1000:" in passwd and "istio-proxy:x:1337:" in passwd
