"""Kubernetes objects → APISIX objects of the one model, pure code (no I/O, no asyncio).

Inputs are plain dicts as kube-apiserver returns them, indexed in a :class:`ClusterState`;
each ``translate_*`` function turns one Kubernetes object into a :class:`Translation`: the
APISIX :class:`Item` s (``kind``, ``id``, Admin API v3 ``value``) with AIC v2 names, ids and
ownership labels, plus per-object :class:`TranslateError` s for its status.  Nothing here
raises for bad input.  Never imports ``meshgate.xds`` (DESIGN.md).
"""

from .apisixconsumer import translate_apisix_consumer
from .apisixglobalrule import translate_apisix_global_rule
from .apisixpluginconfig import plugin_config_plugins, translate_apisix_plugin_config
from .apisixroute import authentication_plugin, exprs_to_vars, translate_apisix_route
from .apisixtls import translate_apisix_tls
from .apisixupstream import check_apisix_upstream, external_upstream, upstream_fields
from .common import ClusterState, Item, Translation, TranslateError, parse_duration, validate_translation
from .ingress import ingress_class_matches, ingress_service_refs, is_canary, translate_ingress
from .gatewayapi import (Attachment, ParentResult, RefError, gateway_class_accepted, gateway_class_status,
                         gateway_status, http_route_gateway_refs, http_route_parents, http_route_priority,
                         http_route_service_refs, http_route_status, translate_gateway, translate_http_route)
from .endpoints import Backend, BackendError, Resolved, find_service_port, resolve_backend
from .naming import DEFAULT_CONTROLLER_NAME, DESC, gen_id, labels

__all__ = [
    "ClusterState",
    "Item",
    "Translation",
    "TranslateError",
    "BackendError",
    "Backend",
    "Resolved",
    "resolve_backend",
    "find_service_port",
    "translate_apisix_route",
    "exprs_to_vars",
    "authentication_plugin",
    "upstream_fields",
    "external_upstream",
    "check_apisix_upstream",
    "translate_apisix_tls",
    "translate_apisix_consumer",
    "translate_apisix_plugin_config",
    "plugin_config_plugins",
    "translate_apisix_global_rule",
    "translate_ingress",
    "ingress_class_matches",
    "ingress_service_refs",
    "is_canary",
    "translate_gateway",
    "gateway_status",
    "gateway_class_accepted",
    "gateway_class_status",
    "translate_http_route",
    "http_route_parents",
    "http_route_status",
    "http_route_service_refs",
    "http_route_gateway_refs",
    "http_route_priority",
    "Attachment",
    "ParentResult",
    "RefError",
    "validate_translation",
    "parse_duration",
    "gen_id",
    "labels",
    "DESC",
    "DEFAULT_CONTROLLER_NAME",
]
