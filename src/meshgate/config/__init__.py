"""config: node config (config.yaml) and the standalone apisix.yaml source.

The ConfigStore and the etcd source will join this package; for now it exports the
node config reader and the pure apisix.yaml parser.
"""

from .node import (
    DEFAULTS,
    EMBEDDED_DEFAULT,
    AdminConfig,
    AdminKey,
    AdminRole,
    ConfigProvider,
    EtcdConfig,
    EtcdTLS,
    HttpConfig,
    Listen,
    NodeConfig,
    NodeConfigErrors,
    PrometheusConfig,
    Role,
    RouterName,
    SSLConfig,
    UpstreamKeepalive,
    load_node_config,
    parse_duration,
    parse_node_config,
    parse_size,
)
from .yaml_source import (
    END_FLAG,
    ParsedConfig,
    load_yaml,
    parse_apisix_yaml,
    parse_config_document,
    substitute_env_vars,
)

__all__ = [
    "NodeConfig",
    "NodeConfigErrors",
    "Listen",
    "SSLConfig",
    "HttpConfig",
    "UpstreamKeepalive",
    "AdminKey",
    "AdminConfig",
    "EtcdConfig",
    "EtcdTLS",
    "PrometheusConfig",
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
    "ParsedConfig",
    "parse_apisix_yaml",
    "parse_config_document",
    "substitute_env_vars",
    "load_yaml",
    "END_FLAG",
]
