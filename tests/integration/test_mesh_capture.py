"""A sidecar for real: `meshgate iptables` + `meshgate mesh` in a "pod" network namespace.

The world (built per test, deleted in a finally): a pod namespace (10.203.0.2) and a peer
namespace (10.203.0.1) joined by a veth pair.  In the pod: the capture rules (as istio-init
applies them), an app on 8080 run as an unprivileged uid, and `meshgate mesh` run as root
with the proxy's gid 1337, which the rules exclude (the owner match of Istio's rules).  The
xDS server runs in the test process and is reached over a unix socket (a filesystem path
crosses network namespaces).  In the peer: a backend on 9080 and a client.

What it shows: the app calling a service VIP is sent through 15001 and routed by the
listener of the original destination (port 9080, route table "9080") to the service's
endpoint; a destination nobody configured passes through to where it was going; a peer
calling the pod's app is sent through 15006 and reaches the app from 127.0.0.6.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns import need_root, run

from adsserver import CDS, LDS, RDS, AdsServer
from meshtools import HCM, ROUTER, TCP, cluster, listener, route_config

PY = sys.executable
POD, PEER = "10.203.0.2", "10.203.0.1"
VIP = "10.96.0.50"
ISTIO_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
              "-b", "*", "-d", "15090,15021,15020"]

# an HTTP server answering who it is, where it was reached and from where; "--as UID" drops
# root after the imports (the venv is unreadable to other uids)
SERVER = r'''
import json, os, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"name": name, "local": self.connection.getsockname()[:2],
                           "peer": self.client_address[0], "path": self.path,
                           "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = ThreadingHTTPServer((host, port), H)
if len(sys.argv) > 4:
    os.setgroups([]); os.setgid(int(sys.argv[4])); os.setuid(int(sys.argv[4]))
print("ready", flush=True)
srv.serve_forever()
'''

CLIENT = r'''
import encodings.idna, http.client, json, os, sys, urllib.error, urllib.request
"x".encode("idna")
url, host = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[3]))
req = urllib.request.Request(url, headers={"Host": host})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
except Exception as e:
    print(json.dumps({"error": repr(e)}))
'''
APP_UID = "4040"


class World:
    def __init__(self, tag: str) -> None:
        self.pod = f"mgmesh-{tag}-pod"
        self.peer = f"mgmesh-{tag}-peer"
        self.procs: list[subprocess.Popen[Any]] = []
        self.sock = f"/tmp/mgxds-{tag}.sock"

    def sh(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *argv, check=check)

    def serve(self, ns: str, name: str, host: str, port: int, uid: str | None = None) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-c", SERVER, name, host, str(port),
                              *([uid] if uid else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise AssertionError(f"server {name} did not start: {p.stderr.read() if p.stderr else ''}")

    async def get(self, ns: str, url: str, host: str, uid: str | None = None) -> dict[str, Any]:
        r = await asyncio.to_thread(self.sh, ns, PY, "-c", CLIENT, url, host, *([uid] if uid else []))
        out: dict[str, Any] = json.loads(r.stdout.strip())
        return out


@pytest.fixture
def world() -> Iterator[World]:
    need_root()
    tag = secrets.token_hex(3)
    w = World(tag)
    va, vb = f"mgm{tag}a", f"mgm{tag}b"
    try:
        run("ip", "netns", "add", w.pod)
        run("ip", "netns", "add", w.peer)
        run("ip", "link", "add", va, "netns", w.pod, "type", "veth", "peer", "name", vb, "netns", w.peer)
        for ns, dev, ip in ((w.pod, va, POD), (w.peer, vb, PEER)):
            w.sh(ns, "ip", "link", "set", "lo", "up")
            w.sh(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            w.sh(ns, "ip", "link", "set", dev, "up")
        w.sh(w.pod, "ip", "route", "add", "default", "via", PEER)
        yield w
    finally:
        for p in w.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for ns in (w.pod, w.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        if os.path.exists(w.sock):
            os.unlink(w.sock)


def _resources() -> dict[str, dict[str, Any]]:
    hcm_rds = {"@type": HCM, "stat_prefix": "outbound_0.0.0.0_9080",
               "rds": {"route_config_name": "9080", "config_source": {"ads": {}, "resource_api_version": "V3"}},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    inbound_hcm = {"@type": HCM, "stat_prefix": "inbound_0.0.0.0_8080",
                   "route_config": {"name": "inbound|8080||", "virtual_hosts": [{
                       "name": "inbound|http|8080", "domains": ["*"], "routes": [{
                           "name": "default", "match": {"prefix": "/"},
                           "route": {"cluster": "inbound|8080||", "timeout": "0s"}}]}]},
                   "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}

    def tcp(name: str) -> dict[str, Any]:
        return {"name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": TCP, "stat_prefix": name, "cluster": name}}

    return {
        CDS: {
            "outbound|9080||svc.default.svc.cluster.local": cluster({
                "name": "outbound|9080||svc.default.svc.cluster.local", "type": "STATIC",
                "connect_timeout": "2s", "load_assignment": {
                    "cluster_name": "outbound|9080||svc.default.svc.cluster.local",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": PEER, "port_value": 9080}}}}]}]}}),
            "PassthroughCluster": cluster({"name": "PassthroughCluster", "type": "ORIGINAL_DST",
                                           "connect_timeout": "2s", "lb_policy": "CLUSTER_PROVIDED"}),
            "BlackHoleCluster": cluster({"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "2s"}),
            "inbound|8080||": cluster({"name": "inbound|8080||", "type": "ORIGINAL_DST", "connect_timeout": "2s",
                                       "lb_policy": "CLUSTER_PROVIDED",
                                       "upstream_bind_config": {"source_address": {"address": "127.0.0.6",
                                                                                   "port_value": 0}}}),
        },
        LDS: {
            "virtualOutbound": listener({
                "name": "virtualOutbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                "use_original_dst": True, "traffic_direction": "OUTBOUND",
                "filter_chains": [
                    {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": 15001},
                     "filters": [tcp("BlackHoleCluster")]},
                    {"name": "virtualOutbound-catchall-tcp", "filters": [tcp("PassthroughCluster")]}]}),
            "0.0.0.0_9080": listener({
                "name": "0.0.0.0_9080", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
                "bind_to_port": False, "traffic_direction": "OUTBOUND",
                "listener_filters": [{"name": "envoy.filters.listener.http_inspector", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
                "filter_chains": [{"filter_chain_match": {"transport_protocol": "raw_buffer",
                                                          "application_protocols": ["http/1.1", "h2c"]},
                                   "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm_rds}]}]}),
            "virtualInbound": listener({
                "name": "virtualInbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                "traffic_direction": "INBOUND",
                "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}],
                "filter_chains": [
                    {"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": 15006},
                     "filters": [tcp("BlackHoleCluster")]},
                    {"name": "0.0.0.0_8080", "filter_chain_match": {"destination_port": 8080},
                     "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                  "typed_config": inbound_hcm}]}]}),
        },
        RDS: {"9080": route_config({"name": "9080", "virtual_hosts": [
            {"name": "svc.default.svc.cluster.local:9080",
             "domains": ["svc.default.svc.cluster.local", "svc", VIP],
             "routes": [{"name": "default", "match": {"prefix": "/"},
                         "route": {"cluster": "outbound|9080||svc.default.svc.cluster.local",
                                   "prefix_rewrite": "/via-mesh/"}}]}]})},
    }


async def test_outbound_and_inbound_go_through_meshgate(world: World, tmp_path: Path) -> None:
    from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
    from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
    assert http_inspector_pb2 and original_dst_pb2   # registered for the JSON above
    w = world
    ads = AdsServer()
    await ads.start(unix=w.sock)
    try:
        for t, res in _resources().items():
            ads.set(t, res)
        v = ads.push()
        w.serve(w.peer, "backend", "0.0.0.0", 9080)
        w.serve(w.peer, "other", "0.0.0.0", 7777)
        w.serve(w.pod, "app", "0.0.0.0", 8080, uid=APP_UID)
        r = w.sh(w.pod, PY, "-m", "meshgate", "iptables", *ISTIO_ARGS)
        assert r.returncode == 0, r.stderr
        log = open(tmp_path / "mesh.log", "wb")
        md = json.dumps({"NAMESPACE": "default", "INSTANCE_IPS": POD, "LABELS": {"app": "app"}})
        mesh = subprocess.Popen(
            ["ip", "netns", "exec", w.pod, PY, "-m", "meshgate", "--log-level", "INFO", "mesh",
             "--xds-address", f"unix:{w.sock}", "--node-id", f"sidecar~{POD}~app-1.default~default.svc.cluster.local",
             "--node-metadata", md, "--workers", "1", "--sotw"],
            stdout=log, stderr=subprocess.STDOUT, group=1337, extra_groups=[])
        w.procs.append(mesh)
        await ads.wait_acked(RDS, v, timeout=20)
        await asyncio.sleep(0.5)   # the worker binds the listeners it just compiled

        def mesh_log() -> str:
            return (tmp_path / "mesh.log").read_text(errors="replace")

        # the app (captured uid) calls the service VIP: 15001 → listener 0.0.0.0_9080 → route
        # table "9080" → the service's endpoint in the peer namespace, path rewritten
        got = await w.get(w.pod, f"http://{VIP}:9080/hello", "svc", uid=APP_UID)
        assert got.get("status") == 200, (got, mesh_log())
        assert got["body"]["name"] == "backend" and got["body"]["path"] == "/via-mesh/hello"
        assert got["body"]["peer"] == POD              # Meshgate's own connection, not captured again
        headers = {k.lower(): v for k, v in got["body"]["headers"].items()}
        assert headers.get("x-envoy-original-path") == "/hello"
        # a destination no listener knows: virtualOutbound's catch-all passes it through
        got = await w.get(w.pod, f"http://{PEER}:7777/x", "anything", uid=APP_UID)
        assert got.get("status") == 200 and got["body"]["name"] == "other", (got, mesh_log())
        # inbound: the peer calls the app; 15006 → chain of port 8080 → inbound|8080|| (the
        # original destination, connected from 127.0.0.6)
        got = await w.get(w.peer, f"http://{POD}:8080/in", "app")
        assert got.get("status") == 200, (got, mesh_log())
        assert got["body"]["name"] == "app" and got["body"]["peer"] == "127.0.0.6"
    finally:
        await ads.stop()
    mesh.terminate()
    assert mesh.wait(timeout=30) == 0
