"""JSON Schemas (draft 7) of every APISIX object kind.

The shapes follow APISIX 3.x core schemas (apisix-semantics.md sections 3.6 and 4): same
field names, types, ranges and ``additionalProperties: false`` where APISIX sets it, so that
an object accepted by APISIX's Admin API is accepted here and vice versa.  The schemas are
plain dicts so that ``GET /apisix/admin/schema/<name>`` can serve them as JSON; treat them
as read-only.

What the schemas deliberately do *not* cover (see :mod:`meshgate.model.validate`):

* per-plugin configuration: ``plugins`` only has to be an object of name -> object; the
  plugin registry validates each plugin's conf against that plugin's own ``SCHEMA``;
* checks APISIX performs in code rather than in the schema (chash ``key``, ``pass_host:
  rewrite`` without ``upstream_host``, config-supplied Lua, references between objects).

Schema defaults are documentation only: since APISIX 3.14 they are not written into stored
values, and nothing here injects them.
"""

from __future__ import annotations

from typing import Any

from .kinds import KINDS

__all__ = [
    "SCHEMAS",
    "ID_SCHEMA",
    "HOST_PATTERN",
    "HOST_SCHEMA",
    "IP_SCHEMA",
    "LABELS_SCHEMA",
    "TIMEOUT_SCHEMA",
    "HEALTH_CHECKER_SCHEMA",
    "NODES_SCHEMA",
    "UPSTREAM_SCHEMA",
    "ROUTE_SCHEMA",
    "SERVICE_SCHEMA",
    "CONSUMER_SCHEMA",
    "CREDENTIAL_SCHEMA",
    "CREDENTIAL_ID_PATTERN",
    "CONSUMER_GROUP_SCHEMA",
    "PLUGIN_CONFIG_SCHEMA",
    "GLOBAL_RULE_SCHEMA",
    "SSL_SCHEMA",
    "STREAM_ROUTE_SCHEMA",
    "PLUGIN_METADATA_SCHEMA",
    "PROTO_SCHEMA",
    "SECRET_SCHEMA",
    "SECRET_MANAGER_SCHEMAS",
    "PLUGINS_LIST_SCHEMA",
    "UPSTREAM_HASH_VARS_PATTERN",
    "UPSTREAM_HASH_HEADER_PATTERN",
    "schema_for",
]

Schema = dict[str, Any]

# --- shared definitions -------------------------------------------------------------------

ID_SCHEMA: Schema = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-zA-Z0-9-_.]+$"},
        {"type": "integer", "minimum": 1},
    ]
}

# A host name, optionally with a leading wildcard; "*" alone; bracketed IPv6 literals.
HOST_PATTERN = r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$"
HOST_SCHEMA: Schema = {"type": "string", "pattern": HOST_PATTERN}

_IPV4_SEG = r"([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
_IPV4 = r"\.".join([_IPV4_SEG] * 4)
# Loose on purpose (as APISIX): an exact IPv6/CIDR regex is unreadable; ipaddress checks
# the address part at compile time in the router.
_IPV6 = r"([a-fA-F0-9]{0,4}:){1,8}(:[a-fA-F0-9]{0,4}){0,8}([a-fA-F0-9]{0,4})?"
IP_SCHEMA: Schema = {
    "type": "string",
    "anyOf": [
        {"title": "IPv4", "type": "string", "format": "ipv4"},
        {"title": "IPv4/CIDR", "type": "string", "pattern": "^" + _IPV4 + r"/([12]?[0-9]|3[0-2])$"},
        {"title": "IPv6", "type": "string", "format": "ipv6"},
        {"title": "IPv6/CIDR", "type": "string", "pattern": "^" + _IPV6 + r"/[0-9]{1,3}$"},
    ],
}

_TIMESTAMP: Schema = {"type": "integer"}
_NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 256}
_DESC: Schema = {"type": "string", "maxLength": 256}
_LABEL_VALUE: Schema = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^\S+$"}
LABELS_SCHEMA: Schema = {"type": "object", "patternProperties": {".*": _LABEL_VALUE}}

# name -> object; each plugin's own schema is checked by the plugin registry.
_PLUGINS: Schema = {"type": "object", "additionalProperties": {"type": "object"}}

_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
TIMEOUT_SCHEMA: Schema = {
    "type": "object",
    "properties": {"connect": dict(_POSITIVE), "send": dict(_POSITIVE), "read": dict(_POSITIVE)},
    "required": ["connect", "send", "read"],
}

_CERT: Schema = {"type": "string", "minLength": 128, "maxLength": 64 * 1024}
_PRIVATE_KEY: Schema = {"type": "string", "minLength": 128, "maxLength": 64 * 1024}
_SECRET_REF: Schema = {"type": "string", "pattern": r"^\$(secret|env|ENV)://"}

_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"]
_METHOD: Schema = {"type": "string", "enum": _METHODS}


def _meta_fields() -> dict[str, Schema]:
    """Common metadata fields: id, name, desc, labels, create_time, update_time."""
    return {
        "id": ID_SCHEMA,
        "name": _NAME,
        "desc": _DESC,
        "labels": LABELS_SCHEMA,
        "create_time": _TIMESTAMP,
        "update_time": _TIMESTAMP,
    }


def _statuses(default: list[int]) -> Schema:
    return {
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {"type": "integer", "minimum": 200, "maximum": 599},
        "default": default,
    }


def _counter(minimum: int, default: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": 254, "default": default}


# --- upstream (section 4) -----------------------------------------------------------------

_ACTIVE_CHECK: Schema = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["http", "https", "tcp"], "default": "http"},
        "timeout": {"type": "number", "default": 1},
        "concurrency": {"type": "integer", "default": 10},
        "host": HOST_SCHEMA,
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "http_path": {"type": "string", "default": "/"},
        "http_method": {"type": "string", "enum": _METHODS, "default": "GET"},
        "http_req_body": {"type": "string", "default": ""},
        "https_verify_certificate": {"type": "boolean", "default": True},
        "healthy": {
            "type": "object",
            "properties": {
                "interval": {"type": "integer", "minimum": 1, "default": 1},
                "http_statuses": _statuses([200, 302]),
                "successes": _counter(1, 2),
            },
        },
        "unhealthy": {
            "type": "object",
            "properties": {
                "interval": {"type": "integer", "minimum": 1, "default": 1},
                "http_statuses": _statuses([429, 404, 500, 501, 502, 503, 504, 505]),
                "http_failures": _counter(1, 5),
                "tcp_failures": _counter(1, 2),
                "timeouts": _counter(1, 3),
            },
        },
        "req_headers": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    },
}

_PASSIVE_CHECK: Schema = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["http", "https", "tcp"], "default": "http"},
        "healthy": {
            "type": "object",
            "properties": {
                "http_statuses": _statuses(
                    [200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308]
                ),
                "successes": _counter(0, 5),
            },
        },
        "unhealthy": {
            "type": "object",
            "properties": {
                "http_statuses": _statuses([429, 500, 503]),
                "tcp_failures": _counter(0, 2),
                "timeouts": _counter(0, 7),
                "http_failures": _counter(0, 5),
            },
        },
    },
}

# APISIX writes "anyOf: [{required: [active]}, {required: [active, passive]}]", which is
# the same constraint as "active is required".
HEALTH_CHECKER_SCHEMA: Schema = {
    "type": "object",
    "properties": {"active": _ACTIVE_CHECK, "passive": _PASSIVE_CHECK},
    "required": ["active"],
}

NODES_SCHEMA: Schema = {
    "anyOf": [
        {
            "type": "object",
            "patternProperties": {".*": {"type": "integer", "minimum": 0}},
        },
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "host": HOST_SCHEMA,
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "weight": {"type": "integer", "minimum": 0},
                    "priority": {"type": "integer", "default": 0},
                    "update_time": _TIMESTAMP,
                    "metadata": {"type": "object"},
                },
                "required": ["host", "weight"],
            },
        },
    ]
}

_UPSTREAM_TLS: Schema = {
    "type": "object",
    "properties": {
        "client_cert_id": ID_SCHEMA,
        "client_cert": _CERT,
        "client_key": _PRIVATE_KEY,
        "verify": {"type": "boolean", "default": False},
    },
    "dependencies": {
        "client_cert": ["client_key"],
        "client_key": ["client_cert"],
        "client_cert_id": {"not": {"required": ["client_cert", "client_key"]}},
    },
}

UPSTREAM_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        **_meta_fields(),
        "nodes": NODES_SCHEMA,
        "retries": {"type": "integer", "minimum": 0},
        "retry_timeout": {"type": "number", "minimum": 0},
        "timeout": TIMEOUT_SCHEMA,
        "tls": _UPSTREAM_TLS,
        "keepalive_pool": {
            "type": "object",
            "properties": {
                "size": {"type": "integer", "minimum": 1, "default": 320},
                "idle_timeout": {"type": "number", "minimum": 0, "default": 60},
                "requests": {"type": "integer", "minimum": 1, "default": 1000},
            },
        },
        # Any balancer name is accepted by the schema (loaded by name), as APISIX.
        "type": {"type": "string", "default": "roundrobin"},
        "checks": HEALTH_CHECKER_SCHEMA,
        "hash_on": {
            "type": "string",
            "enum": ["vars", "header", "cookie", "consumer", "vars_combinations"],
            "default": "vars",
        },
        "key": {"type": "string"},
        "scheme": {
            "type": "string",
            "enum": ["grpc", "grpcs", "http", "https", "tcp", "tls", "udp", "kafka"],
            "default": "http",
        },
        "discovery_type": {"type": "string"},
        "discovery_args": {
            "type": "object",
            "properties": {
                "namespace_id": {"type": "string"},
                "group_name": {"type": "string"},
                "metadata": {"type": "object"},
            },
        },
        "pass_host": {"type": "string", "enum": ["pass", "node", "rewrite"], "default": "pass"},
        "upstream_host": HOST_SCHEMA,
        "service_name": {"type": "string", "minLength": 1, "maxLength": 256},
    },
    "oneOf": [
        {"required": ["nodes"]},
        {"required": ["service_name", "discovery_type"]},
    ],
    "additionalProperties": False,
}

# chash keys (checked in code, as APISIX does, because the rule depends on hash_on).
UPSTREAM_HASH_VARS_PATTERN = (
    r"^((uri|server_name|server_addr|request_uri|remote_port|remote_addr|query_string"
    r"|host|hostname|mqtt_client_id)|arg_[0-9a-zA-Z_-]+)$"
)
UPSTREAM_HASH_HEADER_PATTERN = r"^[a-zA-Z0-9-_]+$"

# --- route / service ----------------------------------------------------------------------

ROUTE_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        **_meta_fields(),
        "uri": {"type": "string", "minLength": 1, "maxLength": 4096},
        "uris": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True},
        "priority": {"type": "integer", "default": 0},
        "methods": {"type": "array", "items": _METHOD, "uniqueItems": True},
        "host": HOST_SCHEMA,
        "hosts": {"type": "array", "items": HOST_SCHEMA, "minItems": 1, "uniqueItems": True},
        "remote_addr": IP_SCHEMA,
        "remote_addrs": {"type": "array", "items": IP_SCHEMA, "minItems": 1, "uniqueItems": True},
        "timeout": TIMEOUT_SCHEMA,
        "vars": {"type": "array"},
        # Accepted by the schema for APISIX compatibility of /schema/route; rejected by
        # validate_item (Meshgate does not run config-supplied Lua, CVE-2020-13945).
        "filter_func": {"type": "string", "minLength": 10, "pattern": "^function"},
        "script": {"type": "string", "minLength": 10, "maxLength": 102400},
        "script_id": ID_SCHEMA,
        "plugins": _PLUGINS,
        "plugin_config_id": ID_SCHEMA,
        "upstream": UPSTREAM_SCHEMA,
        "service_id": ID_SCHEMA,
        "upstream_id": ID_SCHEMA,
        "enable_websocket": {"type": "boolean"},
        "status": {"type": "integer", "enum": [1, 0], "default": 1},
    },
    "allOf": [
        {"oneOf": [{"required": ["uri"]}, {"required": ["uris"]}]},
        {
            "oneOf": [
                {"not": {"anyOf": [{"required": ["host"]}, {"required": ["hosts"]}]}},
                {"required": ["host"]},
                {"required": ["hosts"]},
            ]
        },
        {
            "oneOf": [
                {"not": {"anyOf": [{"required": ["remote_addr"]}, {"required": ["remote_addrs"]}]}},
                {"required": ["remote_addr"]},
                {"required": ["remote_addrs"]},
            ]
        },
    ],
    "anyOf": [
        {"required": ["plugins"]},
        {"required": ["upstream"]},
        {"required": ["upstream_id"]},
        {"required": ["service_id"]},
        {"required": ["plugin_config_id"]},
        {"required": ["script"]},
    ],
    "not": {"anyOf": [{"required": ["script", "plugins"]}, {"required": ["script", "plugin_config_id"]}]},
    "additionalProperties": False,
}

SERVICE_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        **_meta_fields(),
        "plugins": _PLUGINS,
        "upstream": UPSTREAM_SCHEMA,
        "upstream_id": ID_SCHEMA,
        "script": {"type": "string", "minLength": 10, "maxLength": 102400},
        "enable_websocket": {"type": "boolean"},
        "hosts": {"type": "array", "items": HOST_SCHEMA, "minItems": 1, "uniqueItems": True},
    },
    "additionalProperties": False,
}

# --- consumers ----------------------------------------------------------------------------

CONSUMER_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,   # APISIX's schema has it; the standalone file may key a consumer by it
        "username": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[a-zA-Z0-9_\-]+$"},
        "desc": _DESC,
        "labels": LABELS_SCHEMA,
        "create_time": _TIMESTAMP,
        "update_time": _TIMESTAMP,
        "group_id": ID_SCHEMA,
        "plugins": _PLUGINS,
    },
    "required": ["username"],
    "additionalProperties": False,
}

# A credential's id: its own (``a``, as the Admin API stores it) or the full
# ``<username>/credentials/<id>`` the standalone file and Meshgate's model key it by.
CREDENTIAL_ID_PATTERN = r"^[a-zA-Z0-9-_]+/credentials/[a-zA-Z0-9-_.]+$"

CREDENTIAL_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        **_meta_fields(),
        "id": {"oneOf": [ID_SCHEMA, {"type": "string", "minLength": 15, "maxLength": 128,
                                     "pattern": CREDENTIAL_ID_PATTERN}]},
        "plugins": {"type": "object", "additionalProperties": {"type": "object"}, "maxProperties": 1},
    },
    "additionalProperties": False,
}

CONSUMER_GROUP_SCHEMA: Schema = {
    "type": "object",
    "properties": {**_meta_fields(), "plugins": _PLUGINS},
    "required": ["id", "plugins"],
    "additionalProperties": False,
}

PLUGIN_CONFIG_SCHEMA: Schema = {
    "type": "object",
    "properties": {**_meta_fields(), "name": {"type": "string"}, "plugins": _PLUGINS},
    "required": ["id", "plugins"],
    "additionalProperties": False,
}

GLOBAL_RULE_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "create_time": _TIMESTAMP,
        "update_time": _TIMESTAMP,
        "plugins": _PLUGINS,
    },
    "required": ["id", "plugins"],
    "additionalProperties": False,
}

# --- ssl ----------------------------------------------------------------------------------

SSL_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "desc": _DESC,
        "labels": LABELS_SCHEMA,
        "create_time": _TIMESTAMP,
        "update_time": _TIMESTAMP,
        "type": {"type": "string", "enum": ["server", "client"], "default": "server"},
        "cert": {"oneOf": [_CERT, _SECRET_REF]},
        "key": {"oneOf": [_PRIVATE_KEY, _SECRET_REF]},
        "sni": {"type": "string", "pattern": HOST_PATTERN},
        "snis": {"type": "array", "items": {"type": "string", "pattern": HOST_PATTERN}, "minItems": 1},
        "certs": {"type": "array", "items": {"oneOf": [_CERT, _SECRET_REF]}},
        "keys": {"type": "array", "items": {"oneOf": [_PRIVATE_KEY, _SECRET_REF]}},
        "client": {
            "type": "object",
            "properties": {
                "ca": _CERT,
                "depth": {"type": "integer", "minimum": 0, "default": 1},
                "skip_mtls_uri_regex": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"type": "string"},
                },
            },
            "required": ["ca"],
        },
        "status": {"type": "integer", "enum": [1, 0], "default": 1},
        "ssl_protocols": {
            "type": "array",
            "maxItems": 3,
            "uniqueItems": True,
            "items": {"type": "string", "enum": ["TLSv1.1", "TLSv1.2", "TLSv1.3"]},
        },
    },
    "if": {"properties": {"type": {"enum": ["server"]}}},
    "then": {"oneOf": [{"required": ["sni", "key", "cert"]}, {"required": ["snis", "key", "cert"]}]},
    "else": {"required": ["key", "cert"]},
    "additionalProperties": False,
}

# --- stream routes ------------------------------------------------------------------------

_XRPC_PROTOCOL: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "superior_id": ID_SCHEMA,
        "conf": {"type": "object"},
        "logger": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "filter": {"type": "array"},
                    "conf": {"type": "object"},
                },
                "dependencies": {"name": ["conf"]},
                "additionalProperties": False,
            },
        },
    },
    "required": ["name"],
}

STREAM_ROUTE_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        **_meta_fields(),
        "remote_addr": IP_SCHEMA,
        "server_addr": IP_SCHEMA,
        "server_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "sni": {"type": "string", "pattern": HOST_PATTERN},
        "upstream": UPSTREAM_SCHEMA,
        "upstream_id": ID_SCHEMA,
        "service_id": ID_SCHEMA,
        "plugins": _PLUGINS,
        "protocol": _XRPC_PROTOCOL,
    },
    "additionalProperties": False,
}

# --- plugin metadata, protos, secrets -----------------------------------------------------

# The body is validated by the plugin's own ``METADATA_SCHEMA`` (plugin registry); here only
# the envelope: ``id`` is the plugin name.
PLUGIN_METADATA_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 256},
        "create_time": _TIMESTAMP,
        "update_time": _TIMESTAMP,
    },
}

PROTO_SCHEMA: Schema = {
    "type": "object",
    "properties": {**_meta_fields(), "content": {"type": "string", "minLength": 1, "maxLength": 1024 * 1024}},
    "required": ["content"],
    "additionalProperties": False,
}

_URI: Schema = {"type": "string", "pattern": r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"}

SECRET_MANAGER_SCHEMAS: dict[str, Schema] = {
    "vault": {
        "type": "object",
        "properties": {
            "uri": _URI,
            "prefix": {"type": "string"},
            "token": {"type": "string"},
            "namespace": {"type": "string"},
        },
        "required": ["uri", "prefix", "token"],
    },
    "aws": {
        "type": "object",
        "properties": {
            "access_key_id": {"type": "string"},
            "secret_access_key": {"type": "string"},
            "session_token": {"type": "string"},
            "region": {"type": "string", "default": "us-east-1"},
            "endpoint_url": _URI,
        },
        "required": ["access_key_id", "secret_access_key"],
    },
    "gcp": {
        "type": "object",
        "properties": {
            "auth_config": {
                "type": "object",
                "properties": {
                    "client_email": {"type": "string"},
                    "private_key": {"type": "string"},
                    "project_id": {"type": "string"},
                    "token_uri": {"type": "string"},
                    "scope": {"type": "array", "items": {"type": "string"}},
                    "entries_uri": {"type": "string"},
                },
                "required": ["client_email", "private_key", "project_id"],
            },
            "auth_file": {"type": "string"},
            "ssl_verify": {"type": "boolean", "default": True},
        },
        "oneOf": [{"required": ["auth_config"]}, {"required": ["auth_file"]}],
    },
}

# Secrets live at /apisix/secrets/<manager>/<id>; the manager-specific fields are checked
# against SECRET_MANAGER_SCHEMAS[manager] by validate_item.
SECRET_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": r"^(vault|aws|gcp)/[a-zA-Z0-9-_.]{1,64}$"},
        "create_time": _TIMESTAMP,
        "update_time": _TIMESTAMP,
    },
}

# Top-level ``plugins`` list of a standalone apisix.yaml / etcd ``/apisix/plugins``.
PLUGINS_LIST_SCHEMA: Schema = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}, "stream": {"type": "boolean"}},
        "required": ["name"],
        "additionalProperties": False,
    },
}

SCHEMAS: dict[str, Schema] = {
    "routes": ROUTE_SCHEMA,
    "services": SERVICE_SCHEMA,
    "upstreams": UPSTREAM_SCHEMA,
    "consumers": CONSUMER_SCHEMA,
    "consumer_groups": CONSUMER_GROUP_SCHEMA,
    "plugin_configs": PLUGIN_CONFIG_SCHEMA,
    "global_rules": GLOBAL_RULE_SCHEMA,
    "ssls": SSL_SCHEMA,
    "stream_routes": STREAM_ROUTE_SCHEMA,
    "plugin_metadata": PLUGIN_METADATA_SCHEMA,
    "protos": PROTO_SCHEMA,
    "secrets": SECRET_SCHEMA,
}
"""Kind name (as in :data:`~meshgate.model.kinds.KINDS`) -> schema."""

assert set(SCHEMAS) == set(KINDS), "every kind needs a schema"

# APISIX's names for ``GET /apisix/admin/schema/<name>`` (singular), plus extras.
_ALIASES: dict[str, Schema] = {
    "route": ROUTE_SCHEMA,
    "service": SERVICE_SCHEMA,
    "upstream": UPSTREAM_SCHEMA,
    "consumer": CONSUMER_SCHEMA,
    "consumer_group": CONSUMER_GROUP_SCHEMA,
    "plugin_config": PLUGIN_CONFIG_SCHEMA,
    "global_rule": GLOBAL_RULE_SCHEMA,
    "ssl": SSL_SCHEMA,
    "stream_route": STREAM_ROUTE_SCHEMA,
    "proto": PROTO_SCHEMA,
    "secret": SECRET_SCHEMA,
    "credential": CREDENTIAL_SCHEMA,
    "credentials": CREDENTIAL_SCHEMA,
    "plugins": PLUGINS_LIST_SCHEMA,
}


def schema_for(name: str) -> Schema:
    """The schema for a kind (``routes``) or an APISIX schema name (``route``, ``credential``).

    Raises :class:`KeyError` for unknown names.
    """
    try:
        return SCHEMAS[name]
    except KeyError:
        pass
    try:
        return _ALIASES[name]
    except KeyError:
        raise KeyError(f"no schema named {name!r}") from None
