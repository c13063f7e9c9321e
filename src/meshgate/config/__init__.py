"""config: node config (config.yaml), the ConfigStore, and its sources (standalone apisix.yaml).

The etcd source will join this package.
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
from .file_source import FileSource, load_file
from .store import Change, ConfigStore
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
    "ConfigStore",
    "Change",
    "FileSource",
    "load_file",
]
