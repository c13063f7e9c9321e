"""Node configuration (``config.yaml``), APISIX 3.x layout.

The supported keys and their defaults are CONTRACT.md "Node config" plus the APISIX keys
listed in apisix-semantics.md section 7 that Meshgate honours.  The user file is
deep-merged over the defaults (mappings merge, lists and scalars replace, ``null`` means
"not set"), as APISIX merges ``config.yaml`` over its defaults, and then read into frozen
dataclasses.

* Unknown keys (including APISIX keys Meshgate does not implement) are not errors: each
  one becomes a warning naming the dotted key (``apisix.enable_ipv6``) so that an APISIX
  ``config.yaml`` still loads and the operator sees what is ignored.
* Wrong types or values are errors with a JSON pointer
  (``/nginx_config/http/keepalive_timeout: expected duration like 60s, got "soon"``);
  every error is collected and :class:`NodeConfigErrors` is raised once with all of them.
* ``${{VAR}}`` / ``${{VAR:=default}}`` in string values are substituted from the
  environment (as APISIX does for config.yaml); a value that becomes a number or
  ``true``/``false`` takes that type.
* ``apisix.data_encryption`` (the keyring of the fields APISIX stores encrypted in etcd) is
  the one place where ``null`` removes a default, as APISIX's merge does: ``keyring: null``
  is APISIX's way to store clear text, and a node keeping the default keyring would write
  values that APISIX could not read.
* Nothing checks here that an admin key exists: only the CLI knows whether the Admin API
  will run (``NodeConfig.admin_enabled``).

Durations use nginx syntax (``60s``, ``1m``, ``500ms``, ``1h30m``; a bare number is seconds)
and become float seconds; sizes use nginx syntax (``0``, ``8m``, ``1k``; a bare integer is
bytes) and become int bytes.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

from ..errors import ConfigError
from ..model.describe import short_value as _short
from ..model.describe import type_name as _type
from .encryption import DEFAULT_KEYRING
from .yaml_source import _ENV_REF, load_yaml

__all__ = [
    "NodeConfig",
    "NodeConfigErrors",
    "Listen",
    "StreamListen",
    "ProxyMode",
    "SSLConfig",
    "DEFAULT_SSL_CIPHERS",
    "HttpConfig",
    "UpstreamKeepalive",
    "AdminKey",
    "AdminConfig",
    "EtcdConfig",
    "EtcdTLS",
    "PrometheusConfig",
    "DataEncryption",
    "RouterName",
    "Role",
    "ConfigProvider",
    "AdminRole",
    "DEFAULTS",
    "EMBEDDED_DEFAULT",
    "load_node_config",
    "parse_node_config",
    "parse_duration",
    "parse_size",
]

RouterName = Literal["radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter"]
Role = Literal["traditional", "data_plane", "control_plane"]
ConfigProvider = Literal["etcd", "yaml", "json", "xds"]
AdminRole = Literal["admin", "viewer"]


# --- result types -------------------------------------------------------------------------


class NodeConfigErrors(ConfigError):
    """Every problem found in one node config, raised at once.

    ``errors`` holds one :class:`ConfigError` per problem (pointer + message); ``source``
    names the file (or ``<embedded default>``); ``warnings`` are the unknown keys seen.
    """

    def __init__(
        self, errors: list[ConfigError], *, source: str = "config.yaml", warnings: tuple[str, ...] = ()
    ) -> None:
        self.errors = list(errors)
        self.source = source
        self.warnings = tuple(warnings)
        super().__init__("/", f"{len(self.errors)} error(s) in {source}")

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.errors)} error(s)"]
        lines += [f"  {e}" for e in self.errors]
        return "\n".join(lines)

    def __iter__(self) -> Any:
        return iter(self.errors)

    def __len__(self) -> int:
        return len(self.errors)


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    """An address to listen on (or, for prometheus, to export on)."""

    ip: str = "0.0.0.0"
    port: int

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


# APISIX's default ``apisix.ssl.ssl_ciphers`` (apisix/cli/config.lua): what the TLS listeners
# offer up to TLS 1.2 (TLS 1.3 suites are OpenSSL's, as with nginx's ssl_ciphers)
DEFAULT_SSL_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))
# the names nginx's ssl_protocols takes that OpenSSL 3 still speaks
TLS_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamListen:
    """An ``apisix.stream_proxy`` address: ``tcp`` (``tls`` terminates TLS first) or ``udp``."""

    ip: str = "0.0.0.0"
    port: int
    kind: Literal["tcp", "tls", "udp"] = "tcp"

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.kind} {host}:{self.port}"


ProxyMode = Literal["http", "stream", "http&stream"]


@dataclass(frozen=True, slots=True)
class SSLConfig:
    """``apisix.ssl``: the HTTPS listeners (certificates come from ``ssls`` objects)."""

    enable: bool = True
    listen: tuple[Listen, ...] = (Listen(port=9443),)
    ssl_protocols: str = "TLSv1.2 TLSv1.3"
    ssl_ciphers: str = DEFAULT_SSL_CIPHERS
    # the SNI assumed when a client sends none (APISIX apisix/ssl.lua server_name); None: such
    # handshakes fail, as in APISIX
    fallback_sni: str | None = None
    # CA bundle for the certificates Meshgate verifies as a client (APISIX: etcd's among
    # them); None = the system's trusted roots
    ssl_trusted_certificate: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamKeepalive:
    """``nginx_config.http.upstream``: defaults of the upstream connection pools."""

    keepalive: int = 320
    keepalive_requests: int = 1000
    keepalive_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """``nginx_config.http``: client-side limits (seconds / bytes) and real-IP handling."""

    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    send_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 1000
    client_max_body_size: int = 0  # 0 = unlimited
    underscores_in_headers: bool = True
    real_ip_header: str = "X-Real-IP"
    real_ip_recursive: bool = False
    real_ip_from: tuple[str, ...] = ("127.0.0.1", "unix:")
    upstream: UpstreamKeepalive = UpstreamKeepalive()


@dataclass(frozen=True, slots=True)
class AdminKey:
    name: str
    key: str
    role: AdminRole = "admin"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``deployment.admin`` (plus ``apisix.enable_admin``)."""

    admin_key: tuple[AdminKey, ...] = ()
    admin_listen: Listen = Listen(ip="127.0.0.1", port=9180)
    allow_admin: tuple[str, ...] = ("127.0.0.0/24",)
    admin_key_required: bool = True
    enable_admin_cors: bool = True
    admin_api_version: str = "v3"
    enable_admin: bool = True


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    sni: str | None = None


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    host: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/apisix"
    timeout: float = 30.0
    user: str | None = None
    password: str | None = None
    watch_timeout: float = 50.0
    startup_retry: int = 2
    resync_delay: float = 5.0
    health_check_timeout: float = 10.0
    tls: EtcdTLS | None = None


@dataclass(frozen=True, slots=True)
class PrometheusConfig:
    """``plugin_attr.prometheus``."""

    export_addr: Listen = Listen(ip="127.0.0.1", port=9091)
    export_uri: str = "/apisix/prometheus/metrics"
    enable_export_server: bool = True
    metric_prefix: str = "apisix_"


@dataclass(frozen=True, slots=True)
class DataEncryption:
    """``apisix.data_encryption``: the keyring of the fields APISIX stores encrypted in etcd
    (:class:`~meshgate.config.FieldCipher`).  ``enable_encrypt_fields`` switches the plugin
    fields; ssl private keys follow the keyring alone, as in APISIX.  An empty keyring
    (``keyring: null``) stores everything in clear text."""

    enable_encrypt_fields: bool = True
    keyring: tuple[str, ...] = DEFAULT_KEYRING


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path | None
    config_dir: Path
    source: str
    # apisix
    node_listen: tuple[Listen, ...]
    proxy_mode: ProxyMode
    stream_listen: tuple[StreamListen, ...]   # apisix.stream_proxy tcp + udp (proxy_mode with stream)
    ssl: SSLConfig
    router_http: RouterName
    enable_control: bool
    control: Listen
    delete_uri_tail_slash: bool
    normalize_uri_like_servlet: bool
    show_upstream_status_in_response_header: bool
    trusted_addresses: tuple[str, ...]
    data_encryption: DataEncryption
    enable_http2: bool            # h2 by ALPN on the TLS listeners, h2c by prior knowledge on node_listen
    # nginx_config
    worker_processes: int
    worker_shutdown_timeout: float
    http: HttpConfig
    # deployment
    role: Role
    config_provider: ConfigProvider
    admin: AdminConfig
    etcd: EtcdConfig
    # plugins
    plugins: tuple[str, ...] | None
    stream_plugins: tuple[str, ...] | None
    plugin_attr: Mapping[str, Any]
    plugin_dirs: tuple[str, ...]          # apisix.plugin_dirs: third-party plugin directories
    prometheus: PrometheusConfig
    discovery: Mapping[str, Any]
    # the merged document and what was ignored in it
    raw: Mapping[str, Any] = field(repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def admin_enabled(self) -> bool:
        """Whether this node serves the Admin API (and therefore needs an admin key)."""
        return self.admin.enable_admin and self.role in ("traditional", "control_plane")

    def apisix_yaml_path(self) -> Path:
        """Where the standalone routes file lives: ``apisix.yaml`` next to the node config."""
        return self.config_dir / "apisix.yaml"

    def plain(self, *path: str) -> Any:
        """A subtree of the merged document as plain dicts and lists (to send to workers)."""
        return _plain(_get(self.raw, path))

    def plugin_conf(self, name: str) -> Mapping[str, Any]:
        """``plugin_attr.<name>`` (empty mapping when absent)."""
        got = self.plugin_attr.get(name)
        return got if isinstance(got, Mapping) else MappingProxyType({})


# --- defaults -----------------------------------------------------------------------------

DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "apisix": {
            "node_listen": [9080],
            "proxy_mode": "http",
            "enable_admin": True,
            "ssl": {"enable": True, "listen": [{"port": 9443}], "ssl_protocols": "TLSv1.2 TLSv1.3",
                    "ssl_ciphers": DEFAULT_SSL_CIPHERS},
            "router": {"http": "radixtree_host_uri", "ssl": "radixtree_sni"},
            "enable_control": True,
            "control": {"ip": "127.0.0.1", "port": 9090},
            "delete_uri_tail_slash": False,
            "normalize_uri_like_servlet": False,
            "show_upstream_status_in_response_header": False,
            "enable_http2": True,
            "trusted_addresses": [],
            "data_encryption": {"enable_encrypt_fields": True, "keyring": list(DEFAULT_KEYRING)},
        },
        "nginx_config": {
            "worker_processes": "auto",
            "worker_shutdown_timeout": "240s",
            "http": {
                "client_header_timeout": "60s",
                "client_body_timeout": "60s",
                "send_timeout": "10s",
                "keepalive_timeout": "60s",
                "keepalive_requests": 1000,
                "client_max_body_size": 0,
                "underscores_in_headers": "on",
                "real_ip_header": "X-Real-IP",
                "real_ip_recursive": "off",
                "real_ip_from": ["127.0.0.1", "unix:"],
                "upstream": {"keepalive": 320, "keepalive_requests": 1000, "keepalive_timeout": "60s"},
            },
        },
        "deployment": {
            "role": "traditional",
            "role_traditional": {"config_provider": "etcd"},
            "role_data_plane": {"config_provider": "yaml"},
            "role_control_plane": {"config_provider": "etcd"},
            "admin": {
                "admin_key": [],
                "admin_listen": {"ip": "127.0.0.1", "port": 9180},
                "allow_admin": ["127.0.0.0/24"],
                "admin_key_required": True,
                "enable_admin_cors": True,
                "admin_api_version": "v3",
            },
            "etcd": {
                "host": ["http://127.0.0.1:2379"],
                "prefix": "/apisix",
                "timeout": 30,
                "watch_timeout": 50,
                "startup_retry": 2,
                "resync_delay": 5,
                "health_check_timeout": 10,
            },
        },
        "plugin_attr": {
            "prometheus": {
                "export_addr": {"ip": "127.0.0.1", "port": 9091},
                "export_uri": "/apisix/prometheus/metrics",
                "enable_export_server": True,
                "metric_prefix": "apisix_",
            }
        },
    }
)
"""APISIX's defaults for the supported keys (Meshgate's contract where it differs)."""

EMBEDDED_DEFAULT: Mapping[str, Any] = MappingProxyType(
    {"deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}}}
)
"""What ``meshgate run`` uses without a config file: standalone, routes from apisix.yaml."""

# Known keys, for the unknown-key warnings.  A dict is a section (descended into), None a
# value (checked by its reader), _FREE a free-form subtree.
_FREE = "free-form"
_KNOWN: dict[str, Any] = {
    "apisix": {
        "node_listen": None,
        "proxy_mode": None,
        "stream_proxy": {"tcp": None, "udp": None},
        "enable_admin": None,
        "ssl": {"enable": None, "listen": None, "ssl_protocols": None, "ssl_ciphers": None, "fallback_sni": None,
                "ssl_trusted_certificate": None},
        "router": {"http": None, "ssl": None},
        "enable_control": None,
        "control": {"ip": None, "port": None},
        "delete_uri_tail_slash": None,
        "normalize_uri_like_servlet": None,
        "show_upstream_status_in_response_header": None,
        "enable_http2": None,
        "trusted_addresses": None,
        "plugin_dirs": None,
        "data_encryption": {"enable_encrypt_fields": None, "keyring": None},
    },
    "nginx_config": {
        "worker_processes": None,
        "worker_shutdown_timeout": None,
        "http": {
            "client_header_timeout": None,
            "client_body_timeout": None,
            "send_timeout": None,
            "keepalive_timeout": None,
            "keepalive_requests": None,
            "client_max_body_size": None,
            "underscores_in_headers": None,
            "real_ip_header": None,
            "real_ip_recursive": None,
            "real_ip_from": None,
            "upstream": {"keepalive": None, "keepalive_requests": None, "keepalive_timeout": None},
        },
    },
    "deployment": {
        "role": None,
        "role_traditional": {"config_provider": None},
        "role_data_plane": {"config_provider": None},
        "role_control_plane": {"config_provider": None},
        "admin": {
            "admin_key": None,
            "admin_listen": {"ip": None, "port": None},
            "allow_admin": None,
            "admin_key_required": None,
            "enable_admin_cors": None,
            "admin_api_version": None,
        },
        "etcd": {
            "host": None,
            "prefix": None,
            "timeout": None,
            "user": None,
            "password": None,
            "watch_timeout": None,
            "startup_retry": None,
            "resync_delay": None,
            "health_check_timeout": None,
            "tls": {"cert": None, "key": None, "verify": None, "sni": None},
        },
    },
    "plugins": None,
    "stream_plugins": None,
    "plugin_attr": _FREE,
    "discovery": _FREE,
}


# --- nginx value syntax -------------------------------------------------------------------

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "M": 30 * 86400.0,
    "y": 365 * 86400.0,
}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|M|y)?\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|M|y)?")
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(v: Any) -> float:
    """nginx time (``"60s"``, ``"1m"``, ``"500ms"``, ``"1h 30m"``) or a number of seconds ->
    float seconds.  Raises :class:`ValueError`."""
    if isinstance(v, bool):
        raise ValueError("boolean is not a duration")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError("negative duration")
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if s and _DURATION.match(s):
            return sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in _DURATION_PART.findall(s))
    raise ValueError(f"not a duration: {v!r}")


def parse_size(v: Any) -> int:
    """nginx size (``"0"``, ``"8m"``, ``"1k"``, ``"1g"``) or integer bytes -> int bytes.
    Raises :class:`ValueError`."""
    if isinstance(v, bool):
        raise ValueError("boolean is not a size")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("negative size")
        return v
    if isinstance(v, str):
        m = _SIZE.match(v.strip())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise ValueError(f"not a size: {v!r}")


# --- loading ------------------------------------------------------------------------------


def load_node_config(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read and check a node config file; ``None`` -> :data:`EMBEDDED_DEFAULT`.

    ``env`` (default ``os.environ``) resolves ``${{VAR}}`` references.  Raises
    :class:`NodeConfigErrors` listing every problem.
    """
    if path is None:
        return parse_node_config(EMBEDDED_DEFAULT, source="<embedded default>")
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise NodeConfigErrors([ConfigError("/", f"cannot read {p}: {e.strerror or e}")], source=source) from None
    except UnicodeDecodeError as e:
        raise NodeConfigErrors([ConfigError("/", f"cannot read {p}: not UTF-8 ({e.reason})")], source=source) from None
    try:
        data = load_yaml(text)
    except ConfigError as e:
        raise NodeConfigErrors([e], source=source) from None
    if data is None:  # empty file: all defaults
        data = {}
    if not isinstance(data, Mapping):
        raise NodeConfigErrors([ConfigError("/", f"expected a mapping at top level, got {_type(data)}")], source=source)
    errors: list[ConfigError] = []
    data = _resolve_env(data, os.environ if env is None else env, [], errors)
    if errors:
        raise NodeConfigErrors(errors, source=source)
    return parse_node_config(data, source=source, path=p)


def _trusted_ca(value: str | None, base: Path) -> str | None:
    """``apisix.ssl.ssl_trusted_certificate``: a PEM bundle path (relative to the config
    file's directory) or ``system`` (the system's roots, as without the key)."""
    if value is None or value == "system":
        return None
    return str(base / value) if not Path(value).is_absolute() else value


def parse_node_config(data: Mapping[str, Any], *, source: str, path: str | Path | None = None) -> NodeConfig:
    """Check an already-parsed node config; see the module docstring.

    ``path`` (the file it came from, if any) sets ``NodeConfig.path`` and ``config_dir``
    (its directory; without a file, ``./conf``).  Raises :class:`NodeConfigErrors`.
    """
    r = _Reader()
    if not isinstance(data, Mapping):
        raise NodeConfigErrors([ConfigError("/", f"expected a mapping at top level, got {_type(data)}")], source=source)
    r.check_known(data, _KNOWN, [])
    merged = _merge(_plain(DEFAULTS), data)

    node_listen = r.listen_list(merged, ("apisix", "node_listen"), "0.0.0.0")
    proxy_mode = cast(ProxyMode, r.choice(merged, ("apisix", "proxy_mode"), get_args(ProxyMode)))
    stream_listen: tuple[StreamListen, ...] = ()
    if "stream" in proxy_mode:
        stream_listen = r.stream_listen(merged, ("apisix", "stream_proxy"))
        r.stream_conflicts(stream_listen, node_listen if proxy_mode != "stream" else ())
    base = Path(path).absolute().parent if path is not None else Path.cwd() / "conf"
    ssl = SSLConfig(
        enable=r.boolean(merged, ("apisix", "ssl", "enable")),
        listen=r.listen_list(merged, ("apisix", "ssl", "listen"), "0.0.0.0"),
        ssl_protocols=r.ssl_protocols(merged, ("apisix", "ssl", "ssl_protocols")),
        ssl_ciphers=r.ssl_ciphers(merged, ("apisix", "ssl", "ssl_ciphers")),
        fallback_sni=r.server_name(merged, ("apisix", "ssl", "fallback_sni")),
        ssl_trusted_certificate=_trusted_ca(r.opt_string(merged, ("apisix", "ssl", "ssl_trusted_certificate")),
                                            base),
    )
    if ssl.enable:
        r.listen_conflicts(node_listen, ssl.listen, ("apisix", "ssl", "listen"))
    router_http = cast(RouterName, r.choice(merged, ("apisix", "router", "http"), get_args(RouterName)))
    r.string(merged, ("apisix", "router", "ssl"))

    http_path = ("nginx_config", "http")
    http = HttpConfig(
        client_header_timeout=r.duration(merged, http_path + ("client_header_timeout",)),
        client_body_timeout=r.duration(merged, http_path + ("client_body_timeout",)),
        send_timeout=r.duration(merged, http_path + ("send_timeout",)),
        keepalive_timeout=r.duration(merged, http_path + ("keepalive_timeout",)),
        keepalive_requests=r.integer(merged, http_path + ("keepalive_requests",), 0),
        client_max_body_size=r.size(merged, http_path + ("client_max_body_size",)),
        underscores_in_headers=r.on_off(merged, http_path + ("underscores_in_headers",)),
        real_ip_header=r.string(merged, http_path + ("real_ip_header",), nonempty=True),
        real_ip_recursive=r.on_off(merged, http_path + ("real_ip_recursive",)),
        real_ip_from=r.addresses(merged, http_path + ("real_ip_from",), allow_unix=True),
        upstream=UpstreamKeepalive(
            keepalive=r.integer(merged, http_path + ("upstream", "keepalive"), 0),
            keepalive_requests=r.integer(merged, http_path + ("upstream", "keepalive_requests"), 1),
            keepalive_timeout=r.duration(merged, http_path + ("upstream", "keepalive_timeout")),
        ),
    )

    role = cast(Role, r.choice(merged, ("deployment", "role"), get_args(Role)))
    providers = get_args(ConfigProvider)
    provider_by_role = {
        rl: r.choice(merged, ("deployment", f"role_{rl}", "config_provider"), providers) for rl in get_args(Role)
    }
    admin = AdminConfig(
        admin_key=r.admin_keys(merged, ("deployment", "admin", "admin_key")),
        admin_listen=r.listen(merged, ("deployment", "admin", "admin_listen"), "127.0.0.1"),
        allow_admin=r.addresses(merged, ("deployment", "admin", "allow_admin"), allow_unix=False),
        admin_key_required=r.boolean(merged, ("deployment", "admin", "admin_key_required")),
        enable_admin_cors=r.boolean(merged, ("deployment", "admin", "enable_admin_cors")),
        admin_api_version=r.string(merged, ("deployment", "admin", "admin_api_version")),
        enable_admin=r.boolean(merged, ("apisix", "enable_admin")),
    )
    etcd_path = ("deployment", "etcd")
    etcd = EtcdConfig(
        host=r.etcd_hosts(merged, etcd_path + ("host",)),
        prefix=r.etcd_prefix(merged, etcd_path + ("prefix",)),
        timeout=r.number(merged, etcd_path + ("timeout",)),
        user=r.opt_string(merged, etcd_path + ("user",)),
        password=r.opt_string(merged, etcd_path + ("password",)),
        watch_timeout=r.number(merged, etcd_path + ("watch_timeout",)),
        startup_retry=r.integer(merged, etcd_path + ("startup_retry",), 0),
        resync_delay=r.number(merged, etcd_path + ("resync_delay",)),
        health_check_timeout=r.number(merged, etcd_path + ("health_check_timeout",)),
        tls=r.etcd_tls(merged, etcd_path + ("tls",)),
    )

    plugin_attr = _get(merged, ("plugin_attr",))
    if not isinstance(plugin_attr, Mapping):
        plugin_attr = {}
    prom_path = ("plugin_attr", "prometheus")
    prometheus = PrometheusConfig(
        export_addr=r.listen(merged, prom_path + ("export_addr",), "127.0.0.1"),
        export_uri=r.string(merged, prom_path + ("export_uri",), nonempty=True),
        enable_export_server=r.boolean(merged, prom_path + ("enable_export_server",)),
        metric_prefix=r.string(merged, prom_path + ("metric_prefix",)),
    )
    discovery = _get(merged, ("discovery",))  # a wrong type is reported by check_known

    cfg_path = Path(path) if path is not None else None
    config = NodeConfig(
        path=cfg_path,
        config_dir=cfg_path.absolute().parent if cfg_path is not None else Path.cwd() / "conf",
        source=source,
        node_listen=node_listen,
        proxy_mode=proxy_mode,
        stream_listen=stream_listen,
        ssl=ssl,
        router_http=router_http,
        enable_control=r.boolean(merged, ("apisix", "enable_control")),
        control=r.listen(merged, ("apisix", "control"), "127.0.0.1"),
        delete_uri_tail_slash=r.boolean(merged, ("apisix", "delete_uri_tail_slash")),
        normalize_uri_like_servlet=r.boolean(merged, ("apisix", "normalize_uri_like_servlet")),
        show_upstream_status_in_response_header=r.boolean(merged, ("apisix", "show_upstream_status_in_response_header")),
        trusted_addresses=r.addresses(merged, ("apisix", "trusted_addresses"), allow_unix=False),
        enable_http2=r.boolean(merged, ("apisix", "enable_http2")),
        data_encryption=r.data_encryption(data, merged, ("apisix", "data_encryption")),
        worker_processes=r.worker_processes(merged, ("nginx_config", "worker_processes")),
        worker_shutdown_timeout=r.duration(merged, ("nginx_config", "worker_shutdown_timeout")),
        http=http,
        role=role,
        config_provider=cast(ConfigProvider, provider_by_role.get(role, "etcd")),
        admin=admin,
        etcd=etcd,
        plugins=r.name_list(merged, ("plugins",)),
        stream_plugins=r.name_list(merged, ("stream_plugins",)),
        plugin_attr=MappingProxyType(dict(plugin_attr)),
        plugin_dirs=_plugin_dirs(r, merged, cfg_path),
        prometheus=prometheus,
        discovery=MappingProxyType(dict(discovery) if isinstance(discovery, Mapping) else {}),
        raw=MappingProxyType(merged),
        warnings=tuple(r.warnings),
    )
    if r.errors:
        raise NodeConfigErrors(r.errors, source=source, warnings=tuple(r.warnings))
    return config


# --- internals ----------------------------------------------------------------------------

Key = tuple[str | int, ...]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into ``base`` (in place): mappings merge, other values replace
    (a wrong type included: the readers report it), ``None`` leaves the default."""
    for k, v in over.items():
        if v is None:
            continue
        cur = base.get(k)
        if isinstance(cur, dict) and isinstance(v, Mapping):
            _merge(cur, v)
            continue
        base[k] = _plain(v)
    return base


def _plain(v: Any) -> Any:
    """Deep copy as plain dicts and lists (inputs may hold read-only mappings)."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _get(data: Any, path: Key) -> Any:
    for k in path:
        if isinstance(data, Mapping) and isinstance(k, str):
            data = data.get(k)
        elif isinstance(data, list) and isinstance(k, int) and 0 <= k < len(data):
            data = data[k]
        else:
            return None
    return data


def _pointer(path: Key) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _dotted(path: Key) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out




_SERVER_NAME = re.compile(r"^[0-9A-Za-z]([0-9A-Za-z-]*[0-9A-Za-z])?(\.[0-9A-Za-z]([0-9A-Za-z-]*[0-9A-Za-z])?)*\.?$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def _resolve_env(v: Any, env: Mapping[str, str], path: list[str | int], errors: list[ConfigError]) -> Any:
    """Substitute ``${{VAR}}`` in string values (keys are left alone), APISIX style."""
    if isinstance(v, Mapping):
        return {k: _resolve_env(x, env, path + [k], errors) for k, x in v.items()}
    if isinstance(v, list):
        return [_resolve_env(x, env, path + [i], errors) for i, x in enumerate(v)]
    if not isinstance(v, str) or "${{" not in v:
        return v

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default.strip()
        errors.append(
            ConfigError(_pointer(tuple(path)), f"environment variable {name} is not set and has no default (use ${{{{{name}:=default}}}})")
        )
        return ""

    out = _ENV_REF.sub(repl, v)
    if out == v:
        return v
    if _INT.match(out):
        return int(out)
    if _FLOAT.match(out):
        return float(out)
    if out in ("true", "false"):
        return out == "true"
    return out


class _Reader:
    """Typed access to the merged document, collecting errors and warnings."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []

    def error(self, path: Key, message: str) -> None:
        ptr = _pointer(path)
        # A section reported as malformed hides the errors of the values inside it.
        if any(ptr == e.pointer or ptr.startswith(e.pointer + "/") for e in self.errors):
            return
        self.errors.append(ConfigError(ptr, message))

    def warn_unknown(self, path: Key) -> None:
        self.warnings.append(f"unknown key {_dotted(path)} (not supported by Meshgate; ignored)")

    # unknown keys / section shapes (on the user's document, before merging)
    def check_known(self, data: Mapping[str, Any], spec: Mapping[str, Any], path: list[str | int]) -> None:
        for k, v in data.items():
            here = tuple(path + [k])
            if not isinstance(k, str) or k not in spec:
                self.warn_unknown(here)
                continue
            sub = spec[k]
            if sub is None or v is None:
                continue
            if not isinstance(v, Mapping):
                self.error(here, f"expected mapping, got {_short(v)}")
                continue
            if sub is not _FREE:
                self.check_known(v, sub, list(here))

    def check_fields(self, item: Mapping[str, Any], allowed: tuple[str, ...], path: Key) -> None:
        for k in item:
            if k not in allowed:
                self.warn_unknown(path + (k,))

    # scalars
    def boolean(self, data: Any, path: Key) -> bool:
        v = _get(data, path)
        if isinstance(v, bool):
            return v
        self.error(path, f"expected boolean (true or false), got {_short(v)}")
        return False

    def on_off(self, data: Any, path: Key) -> bool:
        v = _get(data, path)
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("on", "off"):
            return v.lower() == "on"
        self.error(path, f"expected on or off, got {_short(v)}")
        return False

    def integer(self, data: Any, path: Key, minimum: int, maximum: int | None = None) -> int:
        v = _get(data, path)
        if isinstance(v, int) and not isinstance(v, bool) and v >= minimum and (maximum is None or v <= maximum):
            return v
        rng = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        self.error(path, f"expected integer {rng}, got {_short(v)}")
        return minimum

    def number(self, data: Any, path: Key) -> float:
        v = _get(data, path)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
            return float(v)
        self.error(path, f"expected number >= 0 (seconds), got {_short(v)}")
        return 0.0

    def string(self, data: Any, path: Key, *, nonempty: bool = False) -> str:
        v = _get(data, path)
        if isinstance(v, str) and (v or not nonempty):
            return v
        self.error(path, f"expected {'non-empty ' if nonempty else ''}string, got {_short(v)}")
        return ""

    def opt_string(self, data: Any, path: Key) -> str | None:
        v = _get(data, path)
        if v is None or isinstance(v, str):
            return v
        self.error(path, f"expected string, got {_short(v)}")
        return None

    def ssl_protocols(self, data: Any, path: Key) -> str:
        """nginx ``ssl_protocols``: TLS versions separated by spaces."""
        v = _get(data, path)
        if isinstance(v, str) and v.split() and all(p in TLS_PROTOCOLS for p in v.split()):
            return " ".join(v.split())
        self.error(path, f"expected TLS versions separated by spaces (from {', '.join(TLS_PROTOCOLS)}), "
                         f"got {_short(v)}")
        return "TLSv1.2 TLSv1.3"

    def ssl_ciphers(self, data: Any, path: Key) -> str:
        """nginx ``ssl_ciphers``: an OpenSSL cipher list this OpenSSL understands."""
        v = _get(data, path)
        if isinstance(v, str) and v.strip():
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
                return v
            except ssl.SSLError:
                pass
        self.error(path, f"expected an OpenSSL cipher list that selects at least one cipher, got {_short(v)}")
        return DEFAULT_SSL_CIPHERS

    def server_name(self, data: Any, path: Key) -> str | None:
        """A host name (``fallback_sni``): lower-cased, without a trailing dot (APISIX ssl.lua)."""
        v = _get(data, path)
        if v is None:
            return None
        if isinstance(v, str) and _SERVER_NAME.match(v):
            return v.lower().removesuffix(".")
        self.error(path, f"expected a host name like www.example.com, got {_short(v)}")
        return None

    def listen_conflicts(self, http: tuple[Listen, ...], https: tuple[Listen, ...], path: Key) -> None:
        """An address cannot be both an HTTP and an HTTPS listener (a wildcard IP covers every
        address of its port)."""
        wild = ("0.0.0.0", "::")
        for i, s in enumerate(https):
            for h in http:
                if h.port == s.port and (h.ip == s.ip or h.ip in wild or s.ip in wild):
                    self.error(path + (i, "port"), f"port {s.port} is already an HTTP port "
                                                   f"(apisix.node_listen {h}); expected another port")
                    break

    def choice(self, data: Any, path: Key, choices: tuple[str, ...]) -> str:
        v = _get(data, path)
        if isinstance(v, str) and v in choices:
            return v
        self.error(path, f"expected one of {', '.join(choices)}, got {_short(v)}")
        return choices[0]

    def duration(self, data: Any, path: Key) -> float:
        v = _get(data, path)
        try:
            return parse_duration(v)
        except ValueError:
            self.error(path, f"expected duration like 60s, 1m or 500ms (or a number of seconds), got {_short(v)}")
            return 0.0

    def size(self, data: Any, path: Key) -> int:
        v = _get(data, path)
        try:
            return parse_size(v)
        except ValueError:
            self.error(path, f"expected size like 8m, 1k or a number of bytes (0 = unlimited), got {_short(v)}")
            return 0

    def worker_processes(self, data: Any, path: Key) -> int:
        v = _get(data, path)
        if v == "auto":
            return os.cpu_count() or 1
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
        if isinstance(v, str) and v.isdigit() and int(v) >= 1:
            return int(v)
        self.error(path, f"expected auto or integer >= 1, got {_short(v)}")
        return 1

    # addresses
    def _port(self, v: Any, path: Key) -> int:
        if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535:
            return v
        self.error(path, f"expected port 1..65535, got {_short(v)}")
        return 0

    def _ip(self, v: Any, path: Key) -> str:
        if isinstance(v, str) and v.strip() and not any(c.isspace() for c in v):
            return v[1:-1] if v.startswith("[") and v.endswith("]") else v
        self.error(path, f"expected IP address or host name, got {_short(v)}")
        return ""

    def listen(self, data: Any, path: Key, default_ip: str) -> Listen:
        v = _get(data, path)
        if not isinstance(v, Mapping):
            self.error(path, f"expected mapping {{ip, port}}, got {_short(v)}")
            return Listen(ip=default_ip, port=0)
        return self._listen_obj(v, path, default_ip, warn=False)

    def _listen_obj(self, v: Mapping[str, Any], path: Key, default_ip: str, *, warn: bool) -> Listen:
        if "enable_http2" in v and path[:2] in (("apisix", "node_listen"), ("apisix", "ssl")):
            where = "node_listen" if path[1] == "node_listen" else "ssl.listen"
            # APISIX 3.9+ refuses to start with it (apisix/cli/ops.lua)
            self.error(path + ("enable_http2",), f"port level enable_http2 in {where} is deprecated from 3.9 "
                                                 "version, and you should use enable_http2 in apisix level")
        if warn:
            self.check_fields(v, ("ip", "port", "enable_http2"), path)
        ip = self._ip(v["ip"], path + ("ip",)) if v.get("ip") is not None else default_ip
        if "port" not in v:
            self.error(path + ("port",), "required field is missing (expected port 1..65535)")
            return Listen(ip=ip, port=0)
        return Listen(ip=ip, port=self._port(v["port"], path + ("port",)))

    def stream_listen(self, data: Any, path: Key) -> tuple[StreamListen, ...]:
        """``apisix.stream_proxy``: ``tcp`` entries ``9100``, ``"127.0.0.1:9101"`` or ``{addr, tls}``;
        ``udp`` entries ``9200`` or ``"127.0.0.1:9211"`` (APISIX's forms)."""
        v = _get(data, path)
        if not isinstance(v, Mapping) or not (v.get("tcp") or v.get("udp")):
            self.error(path, "expected {tcp: [...], udp: [...]} with at least one address when apisix.proxy_mode "
                             f"includes stream, got {_short(v)}")
            return ()
        out: list[StreamListen] = []
        for proto in ("tcp", "udp"):
            items = v.get(proto)
            if items is None:
                continue
            here = path + (proto,)
            if not isinstance(items, list):
                self.error(here, f"expected a list of ports or addresses, got {_short(items)}")
                continue
            for i, item in enumerate(items):
                tls = False
                at = here + (i,)
                if proto == "tcp" and isinstance(item, Mapping):
                    self.check_fields(item, ("addr", "tls"), at)
                    tls = item.get("tls") is True
                    if item.get("tls") not in (None, True, False):
                        self.error(at + ("tls",), f"expected true or false, got {_short(item.get('tls'))}")
                    at, item = at + ("addr",), item.get("addr")
                ip, port = self._stream_addr(item, at)
                if port:
                    kind: Literal["tcp", "tls", "udp"] = "udp" if proto == "udp" else ("tls" if tls else "tcp")
                    out.append(StreamListen(ip=ip, port=port, kind=kind))
        return tuple(out)

    def _stream_addr(self, v: Any, path: Key) -> tuple[str, int]:
        if isinstance(v, int) and not isinstance(v, bool):
            return "0.0.0.0", self._port(v, path)
        if isinstance(v, str):
            host, sep, port = v.rpartition(":")
            if sep and host and port.isdigit():
                return self._ip(host, path), self._port(int(port), path)
            if v.isdigit():
                return "0.0.0.0", self._port(int(v), path)
        self.error(path, f"expected a port or \"IP:PORT\", got {_short(v)}")
        return "", 0

    def stream_conflicts(self, stream: tuple[StreamListen, ...], http: tuple[Listen, ...]) -> None:
        """A TCP port is either an HTTP or a stream port, and listed once."""
        wild = ("0.0.0.0", "::")
        seen: set[tuple[str, str, int]] = set()
        for s in stream:
            proto = "udp" if s.kind == "udp" else "tcp"
            if (proto, s.ip, s.port) in seen:
                self.error(("apisix", "stream_proxy", proto), f"{s.ip}:{s.port} is listed twice")
            seen.add((proto, s.ip, s.port))
            if proto == "tcp" and any(h.port == s.port and (h.ip == s.ip or h.ip in wild or s.ip in wild)
                                      for h in http):
                self.error(("apisix", "stream_proxy", "tcp"), f"port {s.port} is already an HTTP port "
                                                              "(apisix.node_listen); expected another port")

    def listen_list(self, data: Any, path: Key, default_ip: str) -> tuple[Listen, ...]:
        """``int | [int] | [{ip, port}]`` (entries may mix both forms)."""
        v = _get(data, path)
        if isinstance(v, int) and not isinstance(v, bool):
            return (Listen(ip=default_ip, port=self._port(v, path)),)
        if not isinstance(v, list) or not v:
            self.error(path, f"expected port, list of ports or list of {{ip, port}}, got {_short(v)}")
            return ()
        out = []
        for i, item in enumerate(v):
            here = path + (i,)
            if isinstance(item, Mapping):
                out.append(self._listen_obj(item, here, default_ip, warn=True))
            elif isinstance(item, int) and not isinstance(item, bool):
                out.append(Listen(ip=default_ip, port=self._port(item, here)))
            else:
                self.error(here, f"expected port or {{ip, port}}, got {_short(item)}")
        return tuple(out)

    def addresses(self, data: Any, path: Key, *, allow_unix: bool) -> tuple[str, ...]:
        """A list of IP addresses / CIDRs (``unix:`` too where nginx allows it)."""
        v = _get(data, path)
        if not isinstance(v, list):
            self.error(path, f"expected list of IP addresses or CIDRs, got {_short(v)}")
            return ()
        out = []
        for i, item in enumerate(v):
            if allow_unix and item == "unix:":
                out.append(item)
                continue
            try:
                if not isinstance(item, str):
                    raise ValueError
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                what = "IP address, CIDR or unix:" if allow_unix else "IP address or CIDR"
                self.error(path + (i,), f"expected {what}, got {_short(item)}")
                continue
            out.append(item)
        return tuple(out)

    # lists
    def str_list(self, data: Any, path: Key) -> tuple[str, ...]:
        v = _get(data, path)
        if v is None:
            return ()
        if not isinstance(v, list):
            self.error(path, f"expected list of strings, got {_short(v)}")
            return ()
        out = []
        for i, item in enumerate(v):
            if isinstance(item, str) and item:
                out.append(item)
            else:
                self.error(path + (i,), f"expected non-empty string, got {_short(item)}")
        return tuple(out)

    def name_list(self, data: Any, path: Key) -> tuple[str, ...] | None:
        v = _get(data, path)
        if v is None:
            return None
        if not isinstance(v, list):
            self.error(path, f"expected list of plugin names, got {_short(v)}")
            return None
        out = []
        for i, item in enumerate(v):
            if isinstance(item, str) and item:
                out.append(item)
            else:
                self.error(path + (i,), f"expected plugin name, got {_short(item)}")
        return tuple(out)

    def admin_keys(self, data: Any, path: Key) -> tuple[AdminKey, ...]:
        v = _get(data, path)
        if not isinstance(v, list):
            self.error(path, f"expected list of {{name, key, role}}, got {_short(v)}")
            return ()
        out = []
        for i, item in enumerate(v):
            here = path + (i,)
            if not isinstance(item, Mapping):
                self.error(here, f"expected mapping {{name, key, role}}, got {_short(item)}")
                continue
            self.check_fields(item, ("name", "key", "role"), here)
            name = item.get("name", "")
            key: Any = item.get("key")
            role = item.get("role", "admin")
            ok = True
            if not isinstance(name, str):
                self.error(here + ("name",), f"expected string, got {_short(name)}")
                ok = False
            # The key may be absent or empty here; whether one is needed is the CLI's call.
            if key is None:
                key = ""
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)  # an all-digit key in YAML
            if not isinstance(key, str):
                self.error(here + ("key",), f"expected string, got {_short(key)}")
                ok = False
            if role not in get_args(AdminRole):
                self.error(here + ("role",), f"expected one of admin, viewer, got {_short(role)}")
                ok = False
            if ok:
                out.append(AdminKey(name=name, key=key, role=cast(AdminRole, role)))
        return tuple(out)

    def etcd_hosts(self, data: Any, path: Key) -> tuple[str, ...]:
        v = _get(data, path)
        if not isinstance(v, list) or not v:
            self.error(path, f"expected non-empty list of URLs like http://127.0.0.1:2379, got {_short(v)}")
            return ()
        out = []
        for i, item in enumerate(v):
            if isinstance(item, str) and re.match(r"^https?://", item):
                out.append(item)
            else:
                self.error(path + (i,), f"expected URL like http://127.0.0.1:2379, got {_short(item)}")
        return tuple(out)

    def etcd_prefix(self, data: Any, path: Key) -> str:
        v = _get(data, path)
        if isinstance(v, str) and v.startswith("/"):
            return v
        self.error(path, f"expected string starting with /, got {_short(v)}")
        return "/apisix"

    def data_encryption(self, user: Mapping[str, Any], merged: Any, path: Key) -> DataEncryption:
        """``apisix.data_encryption``.  Unlike the rest of the file, an explicit ``null`` here
        removes the default, as APISIX's merge does (``apisix/cli/file.lua`` merge_conf):
        ``keyring: null`` is how APISIX turns encryption off (t/admin/ssl4.t), and a node
        that kept the default keyring would write values such an APISIX cannot read."""
        def removed(p: Key) -> bool:
            parent = _get(user, p[:-1])
            return isinstance(parent, Mapping) and p[-1] in parent and parent[p[-1]] is None

        if removed(path):
            return DataEncryption(enable_encrypt_fields=False, keyring=())
        flag, ring = path + ("enable_encrypt_fields",), path + ("keyring",)
        return DataEncryption(enable_encrypt_fields=False if removed(flag) else self.boolean(merged, flag),
                              keyring=() if removed(ring) else self.keyring(merged, ring))

    def keyring(self, data: Any, path: Key) -> tuple[str, ...]:
        """A key or a non-empty list of keys of 16 bytes (AES-128) or 32 bytes (AES-256), as
        APISIX's CLI schema requires (``apisix/cli/schema.lua``).  Keys are secrets: messages
        give their length, never their value."""
        v = _get(data, path)
        if isinstance(v, str):
            items: list[Any] = [v]
            here: list[Key] = [path]
        elif isinstance(v, list) and v:
            items = v
            here = [path + (i,) for i in range(len(v))]
        else:
            got = "an empty list" if isinstance(v, list) else _type(v)
            self.error(path, f"expected a 16 or 32 byte key, or a non-empty list of them, got {got}")
            return ()
        out = []
        for item, p in zip(items, here):
            if not isinstance(item, str):
                self.error(p, f"expected a 16 or 32 byte key (string), got {_type(item)}")
            elif len(item.encode()) not in (16, 32):
                self.error(p, f"expected a 16 byte (AES-128) or 32 byte (AES-256) key, got {len(item.encode())} bytes")
            else:
                out.append(item)
        return tuple(out)

    def etcd_tls(self, data: Any, path: Key) -> EtcdTLS | None:
        v = _get(data, path)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            return None  # reported by check_known
        verify = v.get("verify", True)
        if not isinstance(verify, bool):
            self.error(path + ("verify",), f"expected boolean (true or false), got {_short(verify)}")
            verify = True
        return EtcdTLS(
            cert=self.opt_string(data, path + ("cert",)),
            key=self.opt_string(data, path + ("key",)),
            verify=verify,
            sni=self.opt_string(data, path + ("sni",)),
        )


def _plugin_dirs(r: Any, merged: Mapping[str, Any], cfg_path: Path | None) -> tuple[str, ...]:
    """``apisix.plugin_dirs``: directories of third-party plugins (relative to the config file)."""
    base = cfg_path.absolute().parent if cfg_path is not None else Path.cwd()
    return tuple(str((base / d).resolve()) for d in r.str_list(merged, ("apisix", "plugin_dirs")))
