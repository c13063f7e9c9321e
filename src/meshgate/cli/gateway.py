"""`meshgate run`: wiring of node config, config source, supervisor and Control API."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..admin.control import ControlAPI
from ..admin.httpserver import ApiServer
from ..config import ConfigStore, FileSource, NodeConfig, NodeConfigErrors, load_node_config
from ..errors import ConfigError
from ..plugins import PluginRegistry
from ..proxy.supervisor import MetricsExport, Supervisor

__all__ = ["proxy_settings", "run_gateway", "run_control_plane", "GatewayError", "resolve_node_config",
           "check_admin_keys"]

if TYPE_CHECKING:
    # Imported where used: a standalone data plane never loads grpc, aetcd or the Admin API.
    from ..admin.admin_api import AdminAPI
    from ..config import FieldCipher
    from ..config.etcd import EtcdClient
    from ..config.etcd_source import EtcdSource

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
        "http2": node.enable_http2,
        "drain_grace": node.worker_shutdown_timeout,
        # what plugins may read of the node config (ctx.plugin_attr / ctx.node_ssl)
        "plugin_attr": node.plain("plugin_attr") or {},
        "node_ssl": {**(node.plain("apisix", "ssl") or {}),
                     # resolved (relative to the config file): the upstream CAs for tls.verify
                     "ssl_trusted_certificate": node.ssl.ssl_trusted_certificate},
        # the TLS listeners
        "ssl_protocols": node.ssl.ssl_protocols,
        "ssl_ciphers": node.ssl.ssl_ciphers,
        "fallback_sni": node.ssl.fallback_sni,
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
    """The HTTP addresses (none with ``apisix.proxy_mode: stream``)."""
    return [(l.ip, l.port) for l in node.node_listen] if node.proxy_mode != "stream" else []


def _tls_listen(node: NodeConfig) -> list[tuple[str, int]]:
    """The HTTPS addresses (``apisix.ssl.listen``), unless ``apisix.ssl.enable`` is false or
    the node proxies streams only."""
    return [(l.ip, l.port) for l in node.ssl.listen] if node.ssl.enable and node.proxy_mode != "stream" else []


def _stream_listen(node: NodeConfig) -> list[tuple[str, str, int]]:
    """The ``apisix.stream_proxy`` addresses (``proxy_mode`` with stream)."""
    return [(l.kind, l.ip, l.port) for l in node.stream_listen]


def check_admin_keys(node: NodeConfig) -> None:
    """The Admin API refuses to start without a key of its own (CONTRACT.md), nor with one of
    the keys APISIX 2.x shipped enabled (CVE-2020-13945)."""
    from ..admin.admin_api import WELL_KNOWN_KEYS

    adm = node.admin
    if not adm.admin_key_required:
        log.warning("%s: deployment.admin.admin_key_required is false: the Admin API accepts requests "
                    "without a key", node.source)
        return
    if not adm.admin_key:
        raise GatewayError(f"{node.source}: the Admin API needs deployment.admin.admin_key "
                           "([{name, key, role}]); there is no built-in default key")
    for i, k in enumerate(adm.admin_key):
        if not k.key:
            raise GatewayError(f"{node.source}: deployment.admin.admin_key[{i}] ({k.name}): empty key")
        if k.key in WELL_KNOWN_KEYS:
            raise GatewayError(f"{node.source}: deployment.admin.admin_key[{i}] ({k.name}) is APISIX's published "
                               "default key (CVE-2020-13945); choose a random key")


def _beside(node: NodeConfig, p: str | None) -> str | None:
    """A file named in config.yaml: relative to the config file's directory."""
    if p is None:
        return None
    return p if Path(p).is_absolute() else str(node.config_dir / p)


def etcd_client(node: NodeConfig) -> EtcdClient:
    from ..config.etcd import EtcdClient

    e = node.etcd
    tls = e.tls
    ca = node.ssl.ssl_trusted_certificate
    if tls is not None and not tls.verify:
        log.warning("deployment.etcd.tls.verify: false is not supported by the gRPC client; the etcd server "
                    "certificate is verified against %s", ca or "the system's trusted roots")
    try:
        return EtcdClient(list(e.host), user=e.user, password=e.password, timeout=e.timeout, ca_file=ca,
                          cert_file=_beside(node, tls.cert) if tls else None,
                          key_file=_beside(node, tls.key) if tls else None, sni=tls.sni if tls else None)
    except ValueError as err:
        raise GatewayError(f"{node.source}: {err}") from None


def field_cipher(node: NodeConfig, plugins: PluginRegistry) -> FieldCipher:
    from ..config import FieldCipher

    de = node.data_encryption
    return FieldCipher(de.keyring, plugins, enabled=de.enable_encrypt_fields)


async def load_from_etcd(node: NodeConfig, source: EtcdSource) -> None:
    """The first full read; APISIX retries ``startup_retry`` times before giving up."""
    from ..config.etcd import EtcdError

    tries = max(1, node.etcd.startup_retry)
    for attempt in range(1, tries + 1):
        try:
            await source.load()
            return
        except EtcdError as e:
            if attempt == tries:
                raise GatewayError(f"cannot read the configuration from etcd ({', '.join(node.etcd.host)}, "
                                   f"prefix {node.etcd.prefix}) after {tries} attempt(s): {e}") from None
            log.error("etcd: %s; retrying (%d/%d)", e, attempt, tries)
            await asyncio.sleep(1.0)


async def _serve_admin(node: NodeConfig, api: AdminAPI) -> ApiServer:
    server = ApiServer(api.handle, too_large=api.too_large)
    lst = node.admin.admin_listen
    try:
        await server.listen(lst.ip, lst.port)
    except OSError as e:
        raise GatewayError(f"cannot listen on the Admin API address {lst.ip}:{lst.port}: {e.strerror}") from None
    log.warning("Admin API on http://%s:%d/apisix/admin", lst.ip, lst.port)
    return server


async def run_control_plane(node: NodeConfig, *, stop_event: asyncio.Event | None = None) -> int:
    """``role: control_plane``: the Admin API over etcd, no data plane."""
    from ..admin.admin_api import AdminAPI

    check_admin_keys(node)
    plugins = PluginRegistry()
    plugins.load_all(node.plugin_dirs, enabled=node.plugins)
    client = etcd_client(node)
    api = AdminAPI(etcd=client, prefix=node.etcd.prefix, admin=node.admin, plugins=plugins,
                   cipher=field_cipher(node, plugins), config_provider="etcd",
                   stream_enabled="stream" in node.proxy_mode, reload_plugins=lambda: plugins.reload())
    server = await _serve_admin(node, api)
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    await client.close()
    return 0


async def run_gateway(node: NodeConfig, *, log_level: str = "WARNING",
                      on_ready: Callable[[Supervisor], Awaitable[None]] | None = None,
                      stop_event: asyncio.Event | None = None) -> int:
    """Start the gateway in the node's deployment role (APISIX 3.x):

    * ``data_plane`` + ``yaml``: standalone ``apisix.yaml``, reloaded on change;
    * ``data_plane`` + ``etcd``: follow etcd, no Admin API;
    * ``traditional`` + ``etcd``: follow etcd and serve the Admin API, which writes to it;
    * ``traditional`` + ``yaml``: API-driven standalone, state pushed to ``/apisix/admin/configs``;
    * ``control_plane``: the Admin API only (:func:`run_control_plane`).
    """
    if node.role == "control_plane":
        return await run_control_plane(node, stop_event=stop_event)
    if node.config_provider not in ("yaml", "etcd"):
        raise GatewayError(
            f"{node.source}: deployment config_provider {node.config_provider!r} (role {node.role}) is not "
            "available for 'meshgate run'; use yaml or etcd (xDS is 'meshgate mesh')")
    admin = node.role == "traditional" and node.admin.enable_admin
    if admin:
        check_admin_keys(node)
    store = ConfigStore()
    file_source: FileSource | None = None
    etcd_source: EtcdSource | None = None
    client: EtcdClient | None = None
    where = ""
    if node.config_provider == "etcd":
        from ..config.etcd_source import EtcdSource

        client = etcd_client(node)
        # the cipher needs the plugins' encrypt_fields: the same plugin set the workers load
        reg = PluginRegistry()
        reg.load_all(node.plugin_dirs, enabled=node.plugins)
        etcd_source = EtcdSource(client, store, prefix=node.etcd.prefix, cipher=field_cipher(node, reg),
                                 resync_delay=node.etcd.resync_delay)
        await load_from_etcd(node, etcd_source)
        where = f"etcd {', '.join(node.etcd.host)} {node.etcd.prefix}"
    elif node.role == "data_plane":
        ypath = node.apisix_yaml_path()
        if not ypath.exists():
            if node.path is None:
                ypath.parent.mkdir(parents=True, exist_ok=True)
                ypath.write_text(EMPTY_APISIX_YAML)
            else:
                log.warning("%s does not exist yet; serving no routes until it appears", ypath)
        file_source = FileSource(ypath, store)
        if ypath.exists() and not file_source.load():
            raise GatewayError(f"{ypath}: {file_source.last_error}")
        where = str(ypath)
    else:
        where = "API-driven standalone (PUT /apisix/admin/configs)"
    # APISIX: a plugin list stored in etcd by a plugin reload wins over config.yaml's
    local_plugins = node.plugins
    enabled = local_plugins
    if etcd_source is not None and etcd_source.plugin_names is not None:
        enabled = tuple(etcd_source.plugin_names)
    sup = Supervisor(workers=node.worker_processes, listen=_listen(node), settings=proxy_settings(node),
                     router_kind=node.router_http, log_level=log_level, grace=node.worker_shutdown_timeout,
                     metrics_export=metrics_export(node), plugin_dirs=node.plugin_dirs,
                     enabled_plugins=enabled, tls_listen=_tls_listen(node), stream_listen=_stream_listen(node))
    try:
        await sup.start(store.snapshot)
    except (RuntimeError, asyncio.TimeoutError, OSError) as e:
        sup.stopping = True
        await sup.stop()
        if client is not None:
            await client.close()
        raise GatewayError(str(e) or "workers did not become ready") from None
    store.subscribe(sup.publish)
    if file_source is not None:
        file_source.start()
    local_enabled = list(local_plugins) if local_plugins is not None else None
    if etcd_source is not None:
        # from now on decrypt with the plugins the gateway runs (a reload may bring new ones)
        etcd_source.cipher = field_cipher(node, sup.plugins)
        etcd_source.on_plugins = lambda names: sup.reload_plugins(enabled=names if names is not None
                                                                  else local_enabled)
        etcd_source.start()
    servers: list[ApiServer] = []

    async def fail(msg: str) -> GatewayError:
        for srv in servers:
            await srv.close()
        if etcd_source is not None:
            await etcd_source.stop()
        await sup.stop()
        return GatewayError(msg)

    if node.enable_control:
        control = ApiServer(ControlAPI(sup, store_revision=lambda: store.revision, source=etcd_source).handle)
        try:
            await control.listen(node.control.ip, node.control.port)
        except OSError as e:
            raise await fail(f"cannot listen on control API {node.control.ip}:{node.control.port}: {e.strerror}")
        servers.append(control)
    if admin:
        from ..admin.admin_api import AdminAPI
        from ..admin.standalone import StandaloneAPI

        standalone = StandaloneAPI(store, sup.plugins) if node.config_provider == "yaml" else None
        api = AdminAPI(etcd=client, prefix=node.etcd.prefix, admin=node.admin, plugins=sup.plugins,
                       cipher=field_cipher(node, sup.plugins) if client is not None else None,
                       standalone=standalone, config_provider=node.config_provider,
                       stream_enabled="stream" in node.proxy_mode,
                       # APISIX reloads with config.yaml's list, then publishes the result
                       reload_plugins=lambda: sup.reload_plugins(enabled=local_enabled))
        try:
            servers.append(await _serve_admin(node, api))
        except GatewayError as e:
            raise await fail(str(e))
    addrs = ", ".join([f"{h}:{p}" for h, p in _listen(node)] + [f"https {h}:{p}" for h, p in _tls_listen(node)]
                      + [f"{k} {h}:{p}" for k, h, p in _stream_listen(node)])
    log.warning("meshgate %d worker(s) serving on %s (config version %d, %s)", sup.nworkers, addrs,
                store.snapshot.version, where)
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
                                  router_kind=node.router_http, tls_listen=_tls_listen(node),
                                  stream_listen=_stream_listen(node))

    loop.add_signal_handler(signal.SIGHUP, lambda: reloading.append(loop.create_task(reload_node())))
    if on_ready is not None:
        await on_ready(sup)
    await stop.wait()
    log.warning("meshgate: draining (grace %.0fs)", sup.grace)
    if file_source is not None:
        await file_source.stop()
    if etcd_source is not None:
        await etcd_source.stop()
    for srv in servers:
        await srv.close()
    await sup.stop()
    return 0
