"""Sidecar traffic capture for real: `meshgate iptables` inside network namespaces.

Each test builds its own world (deleted in a finally): a "pod" namespace and a "peer" namespace
joined by a veth pair (pod 10.199.0.2 / fd00:199::2, peer 10.199.0.1 / fd00:199::1, the peer is
the pod's default gateway).  `meshgate iptables` runs in the pod namespace as a subprocess of the
CLI, as istio-init would.  A tiny test "proxy" listens in the pod on 15001 / 15006 / 15021 and
on the app port 8080 and answers each connection with one JSON line: the port it was accepted
on and what ``proxy.origdst.original_dst()`` says about it; the peer runs the same server on
9080 (a real destination outside the pod).

Who is "the proxy": the default Istio invocation excludes uid 1337 (and gid 1337).  A process
started as uid 1337 could not even exec the interpreter here (it lives under /root, mode 0700;
see the reference's warning), so the helper processes start as root, import what they need,
then drop to uid/gid 1337 with setgroups/setgid/setuid *before* creating their sockets.  The
netfilter owner match looks at the credentials the socket was created with, so this is exactly
the identity a real proxy running as 1337 has, with nothing of the venv readable by 1337 needed.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from netns import need_root, run

from meshgate.proxy.origdst import original_dst

PY = sys.executable
POD_IP, PEER_IP = "10.199.0.2", "10.199.0.1"
POD_IP6, PEER_IP6 = "fd00:199::2", "fd00:199::1"
SERVICE_VIP = "10.96.0.10"          # a "ClusterIP": nothing has this address anywhere
ISTIO_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
              "-b", "*", "-d", "15090,15021,15020"]

# Both helpers take "--as UID:GID" first (optional): drop privileges after the imports.
_DROP = r'''
import errno, json, os, selectors, socket, sys
args = sys.argv[1:]
ident = None
if args and args[0] == "--as":
    ident, args = args[1], args[2:]
def drop():
    if ident:
        uid, gid = (int(x) for x in ident.split(":"))
        os.setgroups([]); os.setgid(gid); os.setuid(uid)
'''

SERVER = _DROP + r'''
from meshgate.proxy.origdst import original_dst
drop()
sel = selectors.DefaultSelector()
for spec in args:
    dual = spec.startswith("dual:")
    host, port = spec.removeprefix("dual:").rsplit(":", 1)
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
    s.bind((host, int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, peer = key.fileobj.accept()
        with c:
            c.sendall((json.dumps({"port": c.getsockname()[1], "orig": original_dst(c)}) + "\n").encode())
'''

CLIENT = _DROP + r'''
host, port = args[0], int(args[1])
src = args[2] if len(args) > 2 else None
drop()
try:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.5)
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print(data.decode().strip() or json.dumps({"error": "closed"}))
except OSError as e:
    print(json.dumps({"error": errno.errorcode.get(e.errno, "") if e.errno else type(e).__name__}))
'''

PROXY = "1337:1337"
# A connection that was not captured and has nobody at its destination (nothing routes 10.96/12).
LOST = {"error": "TimeoutError"}


@dataclass
class World:
    pod: str
    peer: str
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def sh(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *argv, check=check)

    def meshgate(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`meshgate iptables ARGS` inside the pod namespace, as istio-init would run it."""
        return self.sh(self.pod, PY, "-m", "meshgate", "iptables", *args, check=False)

    def nat(self, family: str = "ipv4") -> str:
        tool = "iptables-save" if family == "ipv4" else "ip6tables-save"
        out = self.sh(self.pod, tool, "-t", "nat").stdout
        return "\n".join(ln for ln in out.splitlines() if not ln.startswith("#"))

    def serve(self, ns: str, *specs: str, as_: str | None = None) -> None:
        argv = ["ip", "netns", "exec", ns, PY, "-c", SERVER, *(["--as", as_] if as_ else []), *specs]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.servers.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise AssertionError(f"test server in {ns} did not start: {p.stderr.read() if p.stderr else ''}")

    def connect(self, ns: str, host: str, port: int, *, as_: str | None = None, src: str | None = None) -> dict[str, Any]:
        argv = [PY, "-c", CLIENT, *(["--as", as_] if as_ else []), host, str(port), *([src] if src else [])]
        out = self.sh(ns, *argv).stdout.strip()
        res: dict[str, Any] = json.loads(out)
        if isinstance(res.get("orig"), list):
            res["orig"] = tuple(res["orig"])
        return res


def _ipv6_nat_usable(w: World) -> bool:
    return w.sh(w.pod, "ip6tables", "-t", "nat", "-S", check=False).returncode == 0


@pytest.fixture
def world() -> Iterator[World]:
    need_root()
    tag = secrets.token_hex(3)
    w = World(pod=f"mgcap-{tag}-pod", peer=f"mgcap-{tag}-peer")
    va, vb = f"mgc{tag}a", f"mgc{tag}b"
    try:
        run("ip", "netns", "add", w.pod)
        run("ip", "netns", "add", w.peer)
        run("ip", "link", "add", va, "netns", w.pod, "type", "veth", "peer", "name", vb, "netns", w.peer)
        for ns, dev, ip4, ip6 in ((w.pod, va, POD_IP, POD_IP6), (w.peer, vb, PEER_IP, PEER_IP6)):
            w.sh(ns, "ip", "link", "set", "lo", "up")
            w.sh(ns, "ip", "addr", "add", f"{ip4}/24", "dev", dev)
            w.sh(ns, "ip", "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad", check=False)
            w.sh(ns, "ip", "link", "set", dev, "up")
        w.sh(w.pod, "ip", "route", "add", "default", "via", PEER_IP)
        w.sh(w.pod, "ip", "-6", "route", "add", "default", "via", PEER_IP6, check=False)
        yield w
    finally:
        for p in w.servers:
            p.kill()
            p.wait(timeout=10)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for ns in (w.pod, w.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _start_servers(w: World, *, ipv6: bool = False) -> None:
    if ipv6:
        w.serve(w.pod, "dual:[::]:15001", "dual:[::]:15006", "dual:[::]:15021", "dual:[::]:8080", as_=PROXY)
        w.serve(w.peer, "dual:[::]:9080")
    else:
        w.serve(w.pod, "0.0.0.0:15001", "0.0.0.0:15006", "0.0.0.0:15021", "0.0.0.0:8080", as_=PROXY)
        w.serve(w.peer, "0.0.0.0:9080")


def test_original_dst_is_none_for_a_connection_nobody_redirected() -> None:
    # Runs anywhere (no root): a plain loopback connection has no NAT'ed original destination.
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()[:2], timeout=5):
            conn, _ = srv.accept()
            with conn:
                assert original_dst(conn) is None


def test_istio_invocation_captures_outbound_and_inbound(world: World) -> None:
    w = world
    _start_servers(w)
    r = w.meshgate(*ISTIO_ARGS)
    assert r.returncode == 0, r.stderr
    # App -> a service VIP that exists nowhere: lands on the outbound listener, which learns the VIP.
    assert w.connect(w.pod, SERVICE_VIP, 9080) == {"port": 15001, "orig": (SERVICE_VIP, 9080)}
    # App -> a real outside address: captured too.
    assert w.connect(w.pod, PEER_IP, 9080) == {"port": 15001, "orig": (PEER_IP, 9080)}
    # The proxy's own upstream connection (uid 1337) goes out untouched: no loop back to itself.
    assert w.connect(w.pod, PEER_IP, 9080, as_=PROXY) == {"port": 9080, "orig": None}
    # Another machine -> the pod's IP: lands on the inbound listener with the original (podIP, 8080).
    assert w.connect(w.peer, POD_IP, 8080) == {"port": 15006, "orig": (POD_IP, 8080)}
    # Health port excluded by -d: reaches 15021 directly, not redirected.
    assert w.connect(w.peer, POD_IP, 15021) == {"port": 15021, "orig": None}
    # Loopback inside the pod is the app talking to itself: never captured.
    assert w.connect(w.pod, "127.0.0.1", 8080) == {"port": 8080, "orig": None}
    assert w.connect(w.pod, POD_IP, 8080) == {"port": 8080, "orig": None}
    # The proxy calling its own pod's IP (a service whose endpoint is this pod) goes through inbound...
    assert w.connect(w.pod, POD_IP, 8080, as_=PROXY) == {"port": 15006, "orig": (POD_IP, 8080)}
    # ...unless it is the inbound passthrough, which binds 127.0.0.6 to reach the app.
    assert w.connect(w.pod, POD_IP, 8080, as_=PROXY, src="127.0.0.6") == {"port": 8080, "orig": None}
    # The nat table has Istio's chains.
    nat = w.nat()
    for chain in ("ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"):
        assert f":{chain} " in nat


def test_exclusions_and_lists(world: World) -> None:
    w = world
    _start_servers(w)
    # Only 10.96.0.0/12 captured, minus one address; port 9443 never; inbound only 8080; proxy by gid only.
    r = w.meshgate("-u", "4242", "-g", "4343", "-i", "10.96.0.0/12", "-x", "10.96.0.99/32",
                   "-o", "9443", "-b", "8080", "-d", "")
    assert r.returncode == 0, r.stderr
    assert w.connect(w.pod, SERVICE_VIP, 9080) == {"port": 15001, "orig": (SERVICE_VIP, 9080)}
    assert w.connect(w.pod, PEER_IP, 9080) == {"port": 9080, "orig": None}          # not in -i
    assert w.connect(w.pod, "10.96.0.99", 9080) == LOST                              # -x
    assert w.connect(w.pod, "10.96.0.11", 9443) == LOST                              # -o
    assert w.connect(w.pod, SERVICE_VIP, 9080, as_="5555:4343") == LOST              # the proxy, by gid
    assert w.connect(w.peer, POD_IP, 8080) == {"port": 15006, "orig": (POD_IP, 8080)}
    assert w.connect(w.peer, POD_IP, 15021) == {"port": 15021, "orig": None}       # not in -b


def test_cleanup_removes_everything_and_is_idempotent(world: World) -> None:
    w = world
    _start_servers(w)
    pristine = w.nat()
    assert w.meshgate(*ISTIO_ARGS).returncode == 0
    again = w.meshgate(*ISTIO_ARGS)                       # applying twice: same table, no duplicate jumps
    assert again.returncode == 0, again.stderr
    assert w.nat().count("-j ISTIO_INBOUND") == 1 and w.nat().count("-j ISTIO_OUTPUT") == 1
    assert w.connect(w.peer, POD_IP, 8080)["port"] == 15006
    r = w.meshgate("--cleanup")
    assert r.returncode == 0, r.stderr
    assert "ISTIO" not in w.nat()
    assert w.nat() == pristine
    assert w.connect(w.peer, POD_IP, 8080) == {"port": 8080, "orig": None}
    assert w.connect(w.pod, SERVICE_VIP, 9080) == LOST
    r = w.meshgate("--cleanup")
    assert r.returncode == 0, r.stderr
    assert w.nat() == pristine


def test_cleanup_leaves_foreign_rules_alone(world: World) -> None:
    w = world
    w.sh(w.pod, "iptables", "-t", "nat", "-N", "APP_CHAIN")
    w.sh(w.pod, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "25", "-j", "APP_CHAIN")
    before = w.nat()
    assert w.meshgate(*ISTIO_ARGS).returncode == 0
    assert w.meshgate("--cleanup").returncode == 0
    assert w.nat() == before


def test_dry_run_changes_nothing(world: World) -> None:
    w = world
    before = w.nat()
    r = w.meshgate("--dry-run", *ISTIO_ARGS)
    assert r.returncode == 0, r.stderr
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in r.stdout
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in r.stdout
    assert w.nat() == before
    assert w.meshgate(*ISTIO_ARGS).returncode == 0
    applied = w.nat()
    r = w.meshgate("--cleanup", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "-X ISTIO_OUTPUT" in r.stdout
    assert w.nat() == applied


def test_failed_apply_changes_nothing(world: World) -> None:
    w = world
    assert w.meshgate(*ISTIO_ARGS).returncode == 0
    applied = w.nat()
    # A proxy user that does not exist: iptables refuses the batch; the previous rules stay as they were.
    r = w.meshgate("-u", "no-such-user-mg")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-user-mg" in lines[0] and "nothing was applied" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert w.nat() == applied


def test_ipv6_capture(world: World) -> None:
    w = world
    if not _ipv6_nat_usable(w):
        pytest.skip("this kernel has no IPv6 nat table (ip6table_nat) in network namespaces")
    _start_servers(w, ipv6=True)
    r = w.meshgate(*ISTIO_ARGS, "--enable-ipv6")
    assert r.returncode == 0, r.stderr
    assert ":ISTIO_OUTPUT " in w.nat("ipv6")
    assert w.connect(w.peer, POD_IP6, 8080) == {"port": 15006, "orig": (POD_IP6, 8080)}
    assert w.connect(w.pod, "fd00:96::10", 9080) == {"port": 15001, "orig": ("fd00:96::10", 9080)}
    assert w.connect(w.pod, PEER_IP6, 9080, as_=PROXY) == {"port": 9080, "orig": None}
    # IPv4 still captured; the dual-stack listener sees it as ::ffff:a.b.c.d and still gets the IPv4 address.
    assert w.connect(w.peer, POD_IP, 8080) == {"port": 15006, "orig": (POD_IP, 8080)}
    assert w.meshgate("--cleanup").returncode == 0
    assert "ISTIO" not in w.nat("ipv6") and "ISTIO" not in w.nat()


@pytest.mark.parametrize("args,needle", [
    (["-m", "TPROXY"], "--istio-inbound-interception-mode: TPROXY is not supported"),
    (["-b", "80,http"], "--istio-inbound-ports: 'http' is not a port"),
    (["-i", "10.0.0.0"], "--istio-service-cidr: '10.0.0.0' is not a CIDR"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_exit_2_with_one_line(args: list[str], needle: str) -> None:
    # No root needed: validation happens before anything touches iptables.
    r = subprocess.run([PY, "-m", "meshgate", "iptables", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
