"""Observability: metrics (APISIX and Istio standard names), batched loggers, tracing."""

from .batch import flush_all

from .metrics import (CONTENT_TYPE, DEFAULT_MAX_SERIES, OVERFLOW, OVERFLOW_METRIC, REGISTRY, Counter, Family, Gauge,
                      Histogram, Registry, merge, render)
from .export import Exporter, close_exporters, get_exporter
from .tracing import (AlwaysOff, AlwaysOn, AttrValue, B3Headers, ParentBased, Sampler, Span, SpanKind, SpanStatus,
                      TraceContext, TraceIdRatio, ZipkinEndpoint, encode_otlp, encode_zipkin_v2, format_b3_multi,
                      format_b3_single, format_traceparent, format_tracestate, is_valid_span_id, is_valid_trace_id,
                      new_span_id, new_trace_id, parse_b3_multi, parse_b3_single, parse_traceparent,
                      parse_tracestate)

__all__ = ["CONTENT_TYPE", "DEFAULT_MAX_SERIES", "OVERFLOW", "OVERFLOW_METRIC", "REGISTRY", "Counter", "Family",
           "Gauge", "Histogram", "Registry", "merge", "render",
           "Exporter", "close_exporters", "get_exporter", "flush_all",
           "AlwaysOff", "AlwaysOn", "AttrValue", "B3Headers", "ParentBased", "Sampler", "Span", "SpanKind",
           "SpanStatus", "TraceContext", "TraceIdRatio", "ZipkinEndpoint", "encode_otlp", "encode_zipkin_v2",
           "format_b3_multi", "format_b3_single", "format_traceparent", "format_tracestate", "is_valid_span_id",
           "is_valid_trace_id", "new_span_id", "new_trace_id", "parse_b3_multi", "parse_b3_single",
           "parse_traceparent", "parse_tracestate"]
