"""config: node config (config.yaml), the ConfigStore, its sources (standalone apisix.yaml), and
the field cipher APISIX's etcd data needs (FieldCipher).

The etcd source will join this package.
"""

from .encryption import DEFAULT_KEYRING, FieldCipher
from .node import (
    DEFAULTS,
    EMBEDDED_DEFAULT,
    AdminConfig,
    AdminKey,
    AdminRole,
    ConfigProvider,
    DataEncryption,
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
    DuplicateItemError,
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
    "DataEncryption",
    "FieldCipher",
    "DEFAULT_KEYRING",
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
    "DuplicateItemError",
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
