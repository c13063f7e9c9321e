"""opentelemetry: W3C Trace Context propagation and OTLP/HTTP export
(APISIX ``apisix/plugins/opentelemetry.lua``).

Where to send spans comes from the plugin's metadata (``plugin_metadata/opentelemetry``:
``collector {address, request_timeout, request_headers}``, ``resource``,
``batch_span_processor``, ``trace_id_source``), as in APISIX 3.x; without metadata the
plugin does nothing but log a warning, as APISIX does.

Per request:

- ``rewrite``: the incoming ``traceparent`` (+ ``tracestate``) is the parent when valid (an
  invalid one is ignored and a new trace starts).  The trace id is the parent's, else
  ``X-Request-Id`` when ``trace_id_source`` is ``x-request-id`` and it is 32 hex digits (not
  all zero), else random.  The sampler (``always_on``, ``always_off``, ``trace_id_ratio``,
  ``parent_base`` with a root sampler) decides; the server span is named
  ``<METHOD> <route uri>`` and the request sent upstream carries ``traceparent`` naming it
  (sampled flag included, so an unsampled trace stays unsampled downstream).
- ``log``: the span gets ``http.status_code``, ``http.response.status_code``,
  ``apisix.response_source``, an ERROR status at >= 500, the ``additional_attributes``
  variables and the ``additional_header_prefix_attributes`` headers, ends, and is queued to
  the worker's exporter, which POSTs batches as OTLP protobuf to
  ``http://<collector.address>/v1/traces``.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from ...observability import (AlwaysOff, AlwaysOn, AttrValue, Exporter, ParentBased, Sampler, Span, TraceIdRatio,
                              encode_otlp, format_traceparent, format_tracestate, get_exporter, is_valid_trace_id,
                              new_span_id, new_trace_id, parse_traceparent, parse_tracestate)

NAME = "opentelemetry"
PRIORITY = 12009
VERSION = "0.1"

_SCALAR = {"oneOf": [{"type": "boolean"}, {"type": "number"}, {"type": "string"}]}

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "trace_id_source": {"type": "string", "enum": ["x-request-id", "random"],
                            "description": "the source of trace id", "default": "random"},
        "resource": {"type": "object", "description": "additional resource", "additionalProperties": _SCALAR},
        "collector": {
            "type": "object",
            "description": "opentelemetry collector",
            "properties": {
                "address": {"type": "string", "description": "host:port", "default": "127.0.0.1:4318"},
                "request_timeout": {"type": "integer", "description": "second uint", "default": 3},
                "request_headers": {"type": "object", "description": "http headers",
                                    "additionalProperties": _SCALAR},
            },
            "default": {"address": "127.0.0.1:4318", "request_timeout": 3},
        },
        "batch_span_processor": {
            "type": "object",
            "description": "batch span processor",
            "properties": {
                "drop_on_queue_full": {"type": "boolean",
                                       "description": "if true, drop span when queue is full,"
                                                      " otherwise force process batches"},
                "max_queue_size": {"type": "integer",
                                   "description": "maximum queue size to buffer spans for delayed processing"},
                "batch_timeout": {"type": "number", "description": "maximum duration for constructing a batch"},
                "inactive_timeout": {"type": "number", "description": "maximum duration for processing batches"},
                "max_export_batch_size": {"type": "integer",
                                          "description": "maximum number of spans to process in a single batch"},
            },
            "default": {},
        },
        "set_ngx_var": {"type": "boolean", "description": "set nginx variables", "default": False},
    },
}

_ROOT_SAMPLER = {
    "type": "object",
    "description": "parent_base root sampler",
    "properties": {
        "name": {"type": "string", "enum": ["always_on", "always_off", "trace_id_ratio"],
                 "description": "sampling strategy", "default": "always_off"},
        "options": {
            "type": "object",
            "properties": {
                "fraction": {"type": "number", "description": "trace_id_ratio fraction parameter", "default": 0},
            },
            "default": {"fraction": 0},
        },
    },
    "default": {"name": "always_off", "options": {"fraction": 0}},
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sampler": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": ["always_on", "always_off", "trace_id_ratio", "parent_base"],
                         "description": "sampling strategy", "default": "always_off"},
                "options": {
                    "type": "object",
                    "properties": {
                        "fraction": {"type": "number", "description": "trace_id_ratio fraction", "default": 0},
                        "root": _ROOT_SAMPLER,
                    },
                    "default": {"fraction": 0, "root": {"name": "always_off"}},
                },
            },
            "default": {"name": "always_off", "options": {"fraction": 0, "root": {"name": "always_off"}}},
        },
        "additional_attributes": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "additional_header_prefix_attributes": {"type": "array", "items": {"type": "string", "minLength": 1}},
    },
}

logger = logging.getLogger("meshgate.plugins.opentelemetry")

_STATE = "_opentelemetry"   # per-request state, a plugin variable of ctx
# The instrumentation scope APISIX reports: collectors and dashboards that filter on it keep working.
_SCOPE = "opentelemetry-lua"


def _make_sampler(name: str, options: dict[str, Any]) -> Sampler:
    if name == "always_on":
        return AlwaysOn()
    if name == "trace_id_ratio":
        return TraceIdRatio(float(options.get("fraction", 0)))
    if name == "parent_base":
        root = options.get("root") or {}
        return ParentBased(_make_sampler(root.get("name", "always_off"), root.get("options") or {}))
    return AlwaysOff()


@dataclass(frozen=True, slots=True)
class Conf:
    sampler: Sampler
    additional_attributes: tuple[str, ...]
    header_attributes: tuple[tuple[str, str], ...]   # exact headers: (attribute key, lower-case name)
    header_prefixes: tuple[str, ...]            # "x-my-*" entries, without the "*"


def prepare(conf: dict[str, Any]) -> Conf:
    sampler = conf.get("sampler") or {}
    exact: list[tuple[str, str]] = []
    prefixes: list[str] = []
    for key in conf.get("additional_header_prefix_attributes") or ():
        if len(key) >= 2 and key.endswith("*"):
            prefixes.append(key[:-1].lower())
        else:
            exact.append((key, key.lower()))
    return Conf(_make_sampler(sampler.get("name", "always_off"), sampler.get("options") or {}),
                tuple(conf.get("additional_attributes") or ()), tuple(exact), tuple(prefixes))


@dataclass(frozen=True, slots=True)
class _Collector:
    """What one plugin_metadata object says, compiled once per metadata object."""

    exporter: Exporter
    trace_id_from_request_id: bool
    set_vars: bool


_cached: tuple[Any, _Collector] | None = None
_hostname: str | None = None


def _scalar(v: Any) -> AttrValue:
    return v if isinstance(v, (str, bool, int, float)) else str(v)


def _header_value(v: Any) -> str:
    # request_headers values may be booleans or numbers in the metadata
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _collector(md: Any) -> _Collector:
    global _cached, _hostname
    c = _cached
    if c is not None and c[0] is md:
        return c[1]
    if _hostname is None:
        _hostname = socket.gethostname()
    coll = md.get("collector") or {}
    address = str(coll.get("address", "127.0.0.1:4318"))
    url = address if address.startswith(("http://", "https://")) else "http://" + address
    url = url.rstrip("/") + "/v1/traces"
    timeout = float(coll.get("request_timeout", 3))
    headers = {str(k): _header_value(v) for k, v in (coll.get("request_headers") or {}).items()}
    resource: dict[str, AttrValue] = {"hostname": _hostname}
    res = md.get("resource") or {}
    resource["service.name"] = "APISIX"
    resource.update({str(k): _scalar(v) for k, v in res.items()})
    bsp = md.get("batch_span_processor") or {}
    # opentelemetry-lua's defaults: queue 2048, batch 256, batch_timeout 5 s (APISIX's default
    # config: 2 s); a full queue drops (never blocks the request, whatever drop_on_queue_full)
    max_queue = int(bsp.get("max_queue_size", 2048))
    batch_size = int(bsp.get("max_export_batch_size", 256))
    batch_timeout = float(bsp.get("batch_timeout", 2))
    key = ("otlp", url, timeout, tuple(sorted(headers.items())), tuple(sorted(resource.items(), key=str)),
           max_queue, batch_size, batch_timeout)
    frozen_resource = dict(resource)

    def make() -> Exporter:
        return Exporter(url, lambda spans: encode_otlp(spans, resource=frozen_resource, scope_name=_SCOPE),
                        content_type="application/x-protobuf", headers=headers, timeout=timeout,
                        max_queue=max_queue, batch_size=batch_size, batch_timeout=batch_timeout,
                        name="opentelemetry")

    out = _Collector(get_exporter(key, make), md.get("trace_id_source") == "x-request-id",
                     bool(md.get("set_ngx_var")))
    _cached = (md, out)
    return out


@dataclass(slots=True)
class _State:
    span: Span
    sampled: bool
    exporter: Exporter


_warned = False


def _trace_id_from_request(ctx: Any) -> str | None:
    rid = ctx.req_header("x-request-id") or ctx.var("request_id")
    if isinstance(rid, str):
        rid = rid.lower()
        if is_valid_trace_id(rid):
            return rid
    return None


def _start_ns(ctx: Any) -> int:
    st = ctx.var("start_time")
    return int(st * 1e9) if isinstance(st, (int, float)) and st > 0 else time.time_ns()


def rewrite(conf: Conf, ctx: Any) -> None:
    global _warned
    md = ctx.plugin_metadata(NAME)
    if md is None:
        if not _warned:
            logger.warning("plugin_metadata is required for opentelemetry plugin to working properly")
            _warned = True
        return
    coll = _collector(md)
    parent = parse_traceparent(ctx.req_header("traceparent"))
    tracestate = None
    if parent is not None:
        members = parse_tracestate(ctx.req_header("tracestate"))
        tracestate = format_tracestate(members) if members else None
        trace_id = parent.trace_id
    else:
        trace_id = (_trace_id_from_request(ctx) if coll.trace_id_from_request_id else None) or new_trace_id()
    sampled = conf.sampler.should_sample(trace_id, parent)
    span_id = new_span_id()

    method = ctx.var("request_method") or ""
    name = method
    attrs: dict[str, AttrValue] = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            attrs[key] = str(value)

    if sampled:
        ua = ctx.var("http_user_agent")
        put("net.host.name", ctx.var("host"))
        put("http.method", method)          # deprecated semantic conventions, kept as APISIX does
        put("http.scheme", ctx.var("scheme"))
        put("http.target", ctx.var("request_uri"))
        put("http.user_agent", ua)
        put("http.request.method", method)
        put("url.scheme", ctx.var("scheme"))
        put("url.path", ctx.var("uri"))
        put("user_agent.original", ua)
    route_id = ctx.var("route_id")
    if route_id is not None:
        path = ctx.var("matched_uri")
        if sampled:
            put("apisix.route_id", route_id)
            put("apisix.route_name", ctx.var("route_name"))
            put("http.route", path)
        if path:
            name = f"{method} {path}"
    service_id = ctx.var("service_id")
    if sampled and service_id is not None:
        put("apisix.service_id", service_id)
        put("apisix.service_name", ctx.var("service_name"))

    span = Span(name, trace_id, span_id, parent.span_id if parent else None, "server", _start_ns(ctx),
                attributes=attrs, tracestate=tracestate)
    ctx.set_var(_STATE, _State(span, sampled, coll.exporter))
    traceparent = format_traceparent(trace_id, span_id, sampled)
    if coll.set_vars:
        ctx.set_var("opentelemetry_context_traceparent", traceparent)
        ctx.set_var("opentelemetry_trace_id", trace_id)
        ctx.set_var("opentelemetry_span_id", span_id)
    # the upstream continues this trace, as a child of the gateway's span
    ctx.set_req_header("traceparent", traceparent)
    ctx.set_req_header("tracestate", tracestate)




def log(conf: Conf, ctx: Any) -> None:
    st: _State | None = ctx.var(_STATE)
    if st is None or not st.sampled:
        return
    span = st.span
    a = span.attributes
    source = ctx.var("response_source")
    a["apisix.response_source"] = source
    status_v = ctx.var("status")
    status = int(status_v) if status_v else 0
    if status >= 500:
        span.set_status("error", f"{source} error: {status}")
    a["http.status_code"] = status
    a["http.response.status_code"] = status
    for key in conf.additional_attributes:
        v = ctx.var(key)
        if v is not None:
            a[key] = _header_value(v)
    if conf.header_attributes or conf.header_prefixes:
        headers = ctx.req_headers()
        for key, lkey in conf.header_attributes:
            hv = headers.get(lkey)
            if hv is not None:
                a[key] = hv
        for prefix in conf.header_prefixes:
            for hk, hv in headers.items():
                if hk.startswith(prefix):
                    a[hk] = hv
    span.finish(time.time_ns())
    st.exporter.submit(span)
