"""`meshgate run`: wiring of node config, config source, supervisor and Control API."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..admin.control import ControlAPI
from ..admin.httpserver import ApiServer
from ..config import ConfigStore, FileSource, NodeConfig, NodeConfigErrors, load_node_config
from ..errors import ConfigError
from ..proxy.supervisor import MetricsExport, Supervisor

__all__ = ["proxy_settings", "run_gateway", "GatewayError", "resolve_node_config"]

log = logging.getLogger("meshgate")

EMPTY_APISIX_YAML = "# Meshgate standalone routes (APISIX format); reloaded on change.\nroutes: []\n#END\n"


class GatewayError(Exception):
    """A start-up problem reported as one line, exit code 1."""


def proxy_settings(node: NodeConfig) -> dict[str, Any]:
    h = node.http
    return {
        "client_header_timeout": h.client_header_timeout,
        "client_body_timeout": h.client_body_timeout,
        "send_timeout": h.send_timeout,
        "keepalive_timeout": h.keepalive_timeout,
        "keepalive_requests": h.keepalive_requests,
        "client_max_body_size": h.client_max_body_size,
        "real_ip_header": h.real_ip_header.lower(),
        "real_ip_from": tuple(h.real_ip_from),
        "trusted_addresses": tuple(node.trusted_addresses),
        "show_upstream_status": node.show_upstream_status_in_response_header,
        "drain_grace": node.worker_shutdown_timeout,
        # what plugins may read of the node config (ctx.plugin_attr / ctx.node_ssl)
        "plugin_attr": node.plain("plugin_attr") or {},
        "node_ssl": node.plain("apisix", "ssl"),
    }


def resolve_node_config(path: str | None) -> NodeConfig:
    """``-c FILE``, else ``conf/config.yaml`` when present, else the embedded default."""
    if path is None and Path("conf/config.yaml").is_file():
        path = "conf/config.yaml"
    node = load_node_config(path)
    for w in node.warnings:
        log.warning("%s: %s", node.source, w)
    return node


def metrics_export(node: NodeConfig) -> MetricsExport | None:
    """APISIX starts its export server when prometheus is an enabled plugin (the default list has it)."""
    p = node.prometheus
    if not p.enable_export_server or (node.plugins is not None and "prometheus" not in node.plugins):
        return None
    return MetricsExport(ip=p.export_addr.ip, port=p.export_addr.port, uri=p.export_uri, prefix=p.metric_prefix)


def _listen(node: NodeConfig) -> list[tuple[str, int]]:
    return [(l.ip, l.port) for l in node.node_listen]


async def run_gateway(node: NodeConfig, *, log_level: str = "WARNING",
                      on_ready: Callable[[Supervisor], Awaitable[None]] | None = None,
                      stop_event: asyncio.Event | None = None) -> int:
    if node.config_provider != "yaml":
        raise GatewayError(
            f"{node.source}: deployment config_provider {node.config_provider!r} (role {node.role}) is not "
            "available in this version; use deployment.role: data_plane with role_data_plane.config_provider: yaml")
    store = ConfigStore()
    ypath = node.apisix_yaml_path()
    if not ypath.exists():
        if node.path is None:
            ypath.parent.mkdir(parents=True, exist_ok=True)
            ypath.write_text(EMPTY_APISIX_YAML)
        else:
            log.warning("%s does not exist yet; serving no routes until it appears", ypath)
    source = FileSource(ypath, store)
    if ypath.exists() and not source.load():
        raise GatewayError(f"{ypath}: {source.last_error}")
    sup = Supervisor(workers=node.worker_processes, listen=_listen(node), settings=proxy_settings(node),
                     router_kind=node.router_http, log_level=log_level, grace=node.worker_shutdown_timeout,
                     metrics_export=metrics_export(node), plugin_dirs=node.plugin_dirs,
                     enabled_plugins=node.plugins)
    try:
        await sup.start(store.snapshot)
    except (RuntimeError, asyncio.TimeoutError, OSError) as e:
        sup.stopping = True
        await sup.stop()
        raise GatewayError(str(e) or "workers did not become ready") from None
    store.subscribe(sup.publish)
    source.start()
    control: ApiServer | None = None
    if node.enable_control:
        control = ApiServer(ControlAPI(sup, store_revision=lambda: store.revision).handle)
        try:
            await control.listen(node.control.ip, node.control.port)
        except OSError as e:
            await sup.stop()
            raise GatewayError(f"cannot listen on control API {node.control.ip}:{node.control.port}: {e.strerror}")
    addrs = ", ".join(f"{h}:{p}" for h, p in _listen(node))
    log.warning("meshgate %d worker(s) serving on %s (config version %d, %s)", sup.nworkers, addrs,
                store.snapshot.version, ypath)
    loop = asyncio.get_running_loop()
    stop = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    reloading: list[asyncio.Task[None]] = []

    async def reload_node() -> None:
        nonlocal node
        try:
            new = load_node_config(node.path) if node.path is not None else node
        except (NodeConfigErrors, ConfigError) as e:
            log.error("SIGHUP: node config not reloaded: %s", e)
            return
        node = new
        log.warning("SIGHUP: reloading node config %s", node.source)
        await sup.replace_workers(listen=_listen(node), settings=proxy_settings(node), workers=node.worker_processes,
                                  router_kind=node.router_http)

    loop.add_signal_handler(signal.SIGHUP, lambda: reloading.append(loop.create_task(reload_node())))
    if on_ready is not None:
        await on_ready(sup)
    await stop.wait()
    log.warning("meshgate: draining (grace %.0fs)", sup.grace)
    await source.stop()
    if control is not None:
        await control.close()
    await sup.stop()
    return 0
