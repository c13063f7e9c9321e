"""`meshgate mesh`: the sidecar / gateway data plane that istiod (or any xDS server) drives.

Wiring only: the node identity (flags, Istio's injector environment, or an Envoy
bootstrap), one ADS stream (``meshgate.xds.client``) whose accepted resources
(``meshgate.xds.state``) become changes of the one model in a ConfigStore, the worker
processes that serve them (``meshgate.proxy``), and the admin (15000) and status (15021)
endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, Mapping

from ..admin.httpserver import ApiRequest, ApiServer, json_response
from ..config import Change, ConfigStore, load_node_config
from ..proxy.supervisor import MetricsExport, Supervisor
from ..errors import ConfigError
from ..xds.ads import XdsRejected
from ..xds.client import XdsClient, make_node
from ..xds.extconfig import ExtConfigClient, parse_address
from ..xds.dump import config_dump
from ..xds.state import MeshState, ModelChange
from .gateway import GatewayError, proxy_settings

__all__ = ["add_parser", "run_mesh", "mesh_identity", "MeshError"]

log = logging.getLogger("meshgate.mesh")

DEFAULT_XDS = "istiod.istio-system.svc:15010"


class MeshError(GatewayError):
    """A bad flag value or bootstrap: one line, exit 1."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("mesh", help="sidecar / gateway data plane fed by xDS (Istio)",
                       description="Serve what an xDS control plane (istiod) sends over one ADS stream, "
                                   "in place of Envoy. Without flags, reads the environment Istio's "
                                   "injector gives the istio-proxy container.")
    p.add_argument("--xds-address", help=f"xDS server HOST:PORT or unix:/path (default $XDS_ADDRESS, else "
                                         f"{DEFAULT_XDS})")
    p.add_argument("--node-id", help="node id, e.g. sidecar~10.1.1.10~productpage-v1-x.default~default.svc."
                                     "cluster.local (default: from POD_NAME, POD_NAMESPACE, INSTANCE_IP)")
    p.add_argument("--node-metadata", help="node metadata: a JSON object, or a file holding one "
                                           "(merged over ISTIO_META_* and the pod environment)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--delta", dest="delta", action="store_true", default=None,
                      help="incremental xDS (Istio's default since 1.22)")
    mode.add_argument("--sotw", dest="delta", action="store_false", help="state-of-the-world xDS")
    p.add_argument("--bootstrap", help="an Envoy bootstrap (JSON/YAML) to take node, xDS cluster and admin port from")
    p.add_argument("--admin-port", type=int, default=None, help="admin port: /config_dump, /ready (default 15000)")
    p.add_argument("--status-port", type=int, default=None, help="status port: /healthz/ready (default 15021)")
    p.add_argument("--stats-port", type=int, default=15090,
                   help="Prometheus port: /stats/prometheus with Istio's metrics (default 15090)")
    p.add_argument("--stats-address", default="0.0.0.0", help="address of the Prometheus port (default 0.0.0.0)")
    p.add_argument("--admin-address", default="127.0.0.1", help="address of the admin port (default 127.0.0.1)")
    p.add_argument("--status-address", default="0.0.0.0",
                   help="address of the status port (default 0.0.0.0: the kubelet probes it)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: PROXY_CONFIG "
                                                             "concurrency, else 2)")
    p.add_argument("-c", "--config", help="node config (config.yaml) for timeouts and plugins (optional)")
    p.add_argument("--plugins-address",
                   help="the mesh controller's plugin stream (HOST:PORT or unix:/path; default "
                        "$MESHGATE_PLUGINS_ADDRESS, else none): the AmeshPluginConfig plugins of this pod, run on "
                        "every route")
    # what Istio's injector passes to istio-proxy: `proxy sidecar --domain ns.svc.cluster.local ...`
    p.add_argument("istio_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _json_arg(value: str, what: str) -> Any:
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise MeshError(f"{what}: {value!r} is neither a JSON object nor a readable file")
        text = path.read_text()
    try:
        got = json.loads(text)
    except json.JSONDecodeError as e:
        raise MeshError(f"{what}: invalid JSON: {e}") from None
    if not isinstance(got, dict):
        raise MeshError(f"{what}: expected a JSON object, got {type(got).__name__}")
    return got


def _bootstrap(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise MeshError(f"--bootstrap {path}: {e}") from None
    if not isinstance(data, dict):
        raise MeshError(f"--bootstrap {path}: expected an Envoy bootstrap object")
    out: dict[str, Any] = {}
    node = data.get("node") or {}
    out["node_id"] = node.get("id")
    out["metadata"] = node.get("metadata") or {}
    out["cluster"] = node.get("cluster") or ""
    ads = ((data.get("dynamic_resources") or {}).get("ads_config") or {})
    out["delta"] = ads.get("api_type") == "DELTA_GRPC" if ads.get("api_type") else None
    grpc_cluster = None
    for gs in ads.get("grpc_services") or ():
        grpc_cluster = (gs.get("envoy_grpc") or {}).get("cluster_name")
    for c in (data.get("static_resources") or {}).get("clusters") or ():
        if c.get("name") == (grpc_cluster or "xds-grpc"):
            for ep in (c.get("load_assignment") or {}).get("endpoints") or ():
                for lb in ep.get("lb_endpoints") or ():
                    sa = ((lb.get("endpoint") or {}).get("address") or {}).get("socket_address") or {}
                    if sa.get("address") and sa.get("port_value"):
                        out["xds"] = f"{sa['address']}:{sa['port_value']}"
    adm = (((data.get("admin") or {}).get("address") or {}).get("socket_address") or {})
    if adm.get("port_value"):
        out["admin_port"] = int(adm["port_value"])
    return out


def mesh_identity(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """Node id, metadata, xDS address and mode from flags, bootstrap and Istio's environment
    (flags win, then the bootstrap, then the environment)."""
    boot = _bootstrap(args.bootstrap) if args.bootstrap else {}
    istio = list(args.istio_args or [])
    node_type = "sidecar"
    domain = ""
    if istio[:1] == ["proxy"]:
        istio = istio[1:]
    if istio[:1] and istio[0] in ("sidecar", "router"):
        node_type = istio[0]
        istio = istio[1:]
    for i, a in enumerate(istio):
        if a == "--domain" and i + 1 < len(istio):
            domain = istio[i + 1]
        elif a.startswith("--domain="):
            domain = a.split("=", 1)[1]
    ns = env.get("POD_NAMESPACE", "")
    pod = env.get("POD_NAME", "")
    ip = env.get("INSTANCE_IP", "")
    md: dict[str, Any] = {}
    for k, v in env.items():
        if k.startswith("ISTIO_META_") and len(k) > 11:
            key = k[11:]
            if key in ("LABELS",) or v.lstrip().startswith("{"):
                try:
                    md[key] = json.loads(v)
                    continue
                except json.JSONDecodeError:
                    pass
            md[key] = v
    if ns:
        md.setdefault("NAMESPACE", ns)
    if ip:
        md.setdefault("INSTANCE_IPS", env.get("INSTANCE_IPS", ip))
    if env.get("SERVICE_ACCOUNT"):
        md.setdefault("SERVICE_ACCOUNT", env["SERVICE_ACCOUNT"])
    if pod:
        md.setdefault("NAME", pod)
    if env.get("PROXY_CONFIG"):
        try:
            md.setdefault("PROXY_CONFIG", json.loads(env["PROXY_CONFIG"]))
        except json.JSONDecodeError:
            raise MeshError("PROXY_CONFIG: invalid JSON") from None
    md.setdefault("INTERCEPTION_MODE", "REDIRECT")
    md.setdefault("CLUSTER_ID", env.get("ISTIO_META_CLUSTER_ID", "Kubernetes"))
    md.update(boot.get("metadata") or {})
    if args.node_metadata:
        md.update(_json_arg(args.node_metadata, "--node-metadata"))
    node_id = args.node_id or boot.get("node_id")
    if not node_id:
        if not (ip and pod and ns):
            raise MeshError("no node id: give --node-id (or --bootstrap), or run with POD_NAME, POD_NAMESPACE "
                            "and INSTANCE_IP set as Istio's injector does")
        node_id = f"{node_type}~{ip}~{pod}.{ns}~{domain or ns + '.svc.cluster.local'}"
    parts = node_id.split("~")
    if len(parts) != 4 or parts[0] not in ("sidecar", "router"):
        raise MeshError(f"--node-id {node_id!r}: expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN with TYPE "
                        "sidecar or router (istiod refuses other shapes)")
    if "NAMESPACE" not in md and "." in parts[2]:
        md["NAMESPACE"] = parts[2].rsplit(".", 1)[1]
    xds = args.xds_address or boot.get("xds") or env.get("XDS_ADDRESS") or DEFAULT_XDS
    if xds.startswith("unix:"):
        # a unix socket (istio-agent's XDS proxy socket, as Envoy's bootstrap uses it)
        if len(xds) <= 5:
            raise MeshError(f"--xds-address {xds!r}: expected unix:/path/to/socket")
    else:
        host, _, port = xds.rpartition(":")
        if not host or not port.isdigit():
            raise MeshError(f"--xds-address {xds!r}: expected HOST:PORT or unix:/path")
    plugins_address = getattr(args, "plugins_address", None) or env.get("MESHGATE_PLUGINS_ADDRESS") or None
    if plugins_address:
        try:
            parse_address(plugins_address)
        except ValueError as e:
            raise MeshError(f"--plugins-address: {e}") from None
    delta = args.delta if args.delta is not None else boot.get("delta")
    if delta is None:
        delta = env.get("ISTIO_DELTA_XDS", "true").lower() != "false"
    concurrency = (md.get("PROXY_CONFIG") or {}).get("concurrency") if isinstance(md.get("PROXY_CONFIG"), dict) \
        else None
    return {"node_id": node_id, "metadata": md, "cluster": boot.get("cluster", ""), "xds": xds,
            "plugins_address": plugins_address,
            "delta": bool(delta), "admin_port": args.admin_port or boot.get("admin_port") or 15000,
            "status_port": args.status_port or 15021, "stats_port": args.stats_port,
            "workers": args.workers or (int(concurrency) if concurrency else 2)}


class MeshPlugins:
    """The mesh controller's plugin set for this pod (``meshgate.xds.extconfig``): every
    plugin checked against this sidecar's plugins and schemas before the ACK (a bad set is
    NACKed and the last good one keeps running), then one ``mesh_plugins`` change for the
    workers, which merge it into every route."""

    def __init__(self, store: ConfigStore, sup: Supervisor) -> None:
        self.store, self.sup = store, sup
        self.state: dict[str, Any] = {}

    def apply(self, state: dict[str, Any], version: str) -> None:
        plugins = state.get("plugins") or {}
        if not isinstance(plugins, dict):
            raise XdsRejected(f"plugins: expected an object, got {type(plugins).__name__}")
        for name, conf in plugins.items():
            try:
                self.sup.plugins.validate(name, conf, pointer=f"/plugins/{name}", kind="mesh_plugins", id="amesh")
            except ConfigError as e:
                raise XdsRejected(f"{_sources(state)}: {e}") from None
        value = {"id": "amesh", "plugins": plugins, "sources": state.get("sources") or [], "version": version}
        self.store.apply([Change("mesh_plugins", "amesh", value if plugins else None)])
        self.state = state
        log.warning("mesh plugins %s applied: %s", version, ", ".join(sorted(plugins)) or "none")


def _sources(state: Mapping[str, Any]) -> str:
    src = [f"{s.get('namespace')}/{s.get('name')}" for s in state.get("sources") or () if isinstance(s, Mapping)]
    return "AmeshPluginConfig " + ", ".join(src) if src else "plugin set"


class MeshAdmin:
    """Envoy-like admin (15000) and Istio's status port (15021)."""

    def __init__(self, client: XdsClient, state: MeshState, node: Any, sup: Supervisor,
                 plugins: ExtConfigClient | None = None, plugin_set: MeshPlugins | None = None) -> None:
        self.client = client
        self.state = state
        self.node = node
        self.sup = sup
        self.plugins = plugins
        self.plugin_set = plugin_set

    @property
    def live(self) -> bool:
        """The first CDS and LDS were applied and their listeners are warm (Envoy's LIVE)."""
        return self.client.ready and not self.state.initializing

    def _versions(self) -> tuple[dict[str, str], dict[str, str]]:
        st = self.client.stats.types
        versions = {t: s.version for t, s in st.items()}
        errors = {t: s.last_nack for t, s in st.items() if s.last_nack}
        return versions, errors

    async def admin(self, req: ApiRequest) -> tuple[int, dict[str, str], bytes]:
        if req.method not in ("GET", "HEAD"):
            return 405, {"Content-Type": "text/plain"}, b"method not allowed\n"
        if req.path == "/config_dump":
            versions, errors = self._versions()
            return json_response(200, config_dump(self.state, node=self.node, versions=versions, errors=errors,
                                                  include_eds=req.arg("include_eds") is not None,
                                                  resource=req.arg("resource")))
        if req.path == "/ready":
            ok = self.live
            return (200 if ok else 503), {"Content-Type": "text/plain"}, b"LIVE\n" if ok else b"PRE_INITIALIZING\n"
        if req.path == "/xds":
            snap = self.sup.snapshot
            return json_response(200, {**self.client.status(), "resources": self.state.counts(),
                                       "config_version": snap.version if snap is not None else 0,
                                       "workers": self.sup.worker_versions()})
        if req.path == "/plugins":
            if self.plugins is None or self.plugin_set is None:
                return json_response(200, {"enabled": False})
            return json_response(200, {"enabled": True, **self.plugins.status(),
                                       "plugins": self.plugin_set.state.get("plugins") or {},
                                       "sources": self.plugin_set.state.get("sources") or []})
        if req.path == "/server_info":
            return json_response(200, {"version": "meshgate", "state": "LIVE" if self.live else
                                       "PRE_INITIALIZING", "node": {"id": getattr(self.client.node, "id", "")}})
        if req.path == "/clusters":
            lines = []
            for name, conf in self.state.upstream_confs():
                for n in conf.get("nodes") or ():
                    addr = f"[{n['host']}]:{n['port']}" if ":" in str(n["host"]) else f"{n['host']}:{n['port']}"
                    lines.append(f"{name}::{addr}::weight::{n.get('weight', 1)}")
                    lines.append(f"{name}::{addr}::priority::{n.get('priority', 0)}")
            return 200, {"Content-Type": "text/plain"}, ("\n".join(lines) + "\n").encode()
        if req.path == "/listeners":
            return 200, {"Content-Type": "text/plain"}, ("\n".join(self.state.listeners) + "\n").encode()
        return 404, {"Content-Type": "text/plain"}, b"not found\n"

    async def status(self, req: ApiRequest) -> tuple[int, dict[str, str], bytes]:
        if req.path == "/healthz/ready":
            if self.live:
                return 200, {"Content-Type": "text/plain"}, b""
            if self.client.ready:
                return 503, {"Content-Type": "text/plain"}, \
                    f"not ready: listeners warming, waiting for RDS ({', '.join(sorted(self.state.warming))})\n".encode()
            return 503, {"Content-Type": "text/plain"}, b"not ready: waiting for the first CDS and LDS\n"
        return 404, {"Content-Type": "text/plain"}, b"not found\n"


async def run_mesh(args: argparse.Namespace, *, log_level: str = "WARNING",
                   stop_event: asyncio.Event | None = None) -> int:
    ident = mesh_identity(args, os.environ)
    node_cfg = load_node_config(args.config)
    store = ConfigStore()
    sup = Supervisor(workers=ident["workers"], listen=[], settings=proxy_settings(node_cfg),
                     log_level=log_level, grace=node_cfg.worker_shutdown_timeout, plugin_dirs=node_cfg.plugin_dirs,
                     enabled_plugins=node_cfg.plugins, mesh=True, mesh_node=dict(ident["metadata"]),
                     metrics_export=MetricsExport(ip=args.stats_address, port=ident["stats_port"],
                                                  uri="/stats/prometheus", prefix=""))
    try:
        await sup.start(store.snapshot)
    except (RuntimeError, asyncio.TimeoutError, OSError) as e:
        sup.stopping = True
        await sup.stop()
        raise MeshError(str(e) or "workers did not become ready") from None
    store.subscribe(sup.publish)

    def on_change(changes: list[ModelChange]) -> None:
        store.apply([Change(kind, id, value) for kind, id, value in changes])

    state = MeshState(on_change=on_change)
    node = make_node(ident["node_id"], ident["metadata"], ident["cluster"])
    client = XdsClient(ident["xds"], node, state, delta=ident["delta"])
    plugin_set = MeshPlugins(store, sup) if ident["plugins_address"] else None
    plugins = ExtConfigClient(ident["plugins_address"], node, plugin_set.apply) if plugin_set is not None else None
    admin = MeshAdmin(client, state, node, sup, plugins, plugin_set)
    servers: list[ApiServer] = []
    try:
        a = ApiServer(admin.admin)
        await a.listen(args.admin_address, ident["admin_port"])
        servers.append(a)
        s = ApiServer(admin.status)
        await s.listen(args.status_address, ident["status_port"])
        servers.append(s)
    except OSError as e:
        for srv in servers:
            await srv.close()
        await sup.stop()
        raise MeshError(f"cannot listen on the admin/status ports: {e.strerror}") from None
    task = asyncio.get_running_loop().create_task(client.run())
    ptask = asyncio.get_running_loop().create_task(plugins.run()) if plugins is not None else None
    log.warning("meshgate mesh: node %s, %s xDS from %s; admin %s:%d, status %s:%d, %d worker(s)%s",
                ident["node_id"], "delta" if ident["delta"] else "SotW", ident["xds"], args.admin_address,
                ident["admin_port"], args.status_address, ident["status_port"], sup.nworkers,
                f"; plugins from {ident['plugins_address']}" if plugins is not None else "")
    loop = asyncio.get_running_loop()
    stop = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.warning("meshgate mesh: draining (grace %.0fs)", sup.grace)
    await client.stop()
    task.cancel()
    if plugins is not None and ptask is not None:
        await plugins.stop()
        ptask.cancel()
    for srv in servers:
        await srv.close()
    await sup.stop()
    return 0
