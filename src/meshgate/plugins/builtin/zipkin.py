"""zipkin: B3 propagation and Zipkin v2 span reporting (APISIX ``apisix/plugins/zipkin.lua``).

Per request, as APISIX does:

- ``rewrite``: read the incoming context (the single ``b3`` header, removed from the request
  sent upstream, else ``X-B3-TraceId/SpanId/ParentSpanId/Sampled/Flags``).  A ``b3`` header
  without a span id is refused with 400; an invalid id only drops the incoming context.
  Sampling: ``X-B3-Flags: 1`` or a sampled flag ``1``/``true`` forces it on, ``0``/``false``
  off, else ``random() < sample_ratio``.  The server span ``apisix.request`` starts (child of
  the incoming span), with ``apisix.proxy`` under it (``span_version`` 2) or the
  ``apisix.rewrite`` span (``span_version`` 1).
- ``access``: (v1: ``apisix.access`` and ``apisix.proxy``) and the ``x-b3-*`` headers are set
  on the upstream request: the proxy span's ids when sampled, the request span's when not
  (``x-b3-sampled: 0``, so the services behind do not sample either).
- ``header_filter``: v2 ends ``apisix.proxy`` and starts ``apisix.response_span``; v1 starts
  ``apisix.body_filter`` under ``apisix.proxy``.
- ``log``: the spans end, ``apisix.request`` gets ``http.status_code`` and
  ``apisix.response_source``, and sampled spans are queued to the worker's exporter, which
  POSTs them in batches as Zipkin v2 JSON to ``endpoint``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from ...observability import (B3Headers, Exporter, Span, ZipkinEndpoint, encode_zipkin_v2, format_b3_multi,
                              get_exporter, new_span_id, new_trace_id, parse_b3_multi, parse_b3_single)

NAME = "zipkin"
PRIORITY = 12011
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "endpoint": {"type": "string"},
        "sample_ratio": {"type": "number", "minimum": 0.00001, "maximum": 1},
        "service_name": {"type": "string", "description": "service name for zipkin reporter", "default": "APISIX"},
        "server_addr": {
            "type": "string",
            "description": "default is $server_addr, you can specify your external ip address",
            "pattern": "^[0-9]{1,3}.[0-9]{1,3}.[0-9]{1,3}.[0-9]{1,3}$",
        },
        "span_version": {"enum": [1, 2], "default": 2},
    },
    "required": ["endpoint", "sample_ratio"],
}

logger = logging.getLogger("meshgate.plugins.zipkin")

_STATE = "_zipkin"      # the per-request state, kept as a plugin variable of ctx
# APISIX's batch processor for zipkin: 1000 spans a batch, no retry (max_retry_count 0).
# It waits 5 s of inactivity before sending; one second here keeps traces fresh.
_BATCH_SIZE = 1000
_BATCH_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Conf:
    endpoint: str
    sample_ratio: float
    service_name: str
    server_addr: str | None
    span_version: int


def prepare(conf: dict[str, Any]) -> Conf:
    return Conf(endpoint=conf["endpoint"], sample_ratio=float(conf["sample_ratio"]),
                service_name=conf.get("service_name", "APISIX"), server_addr=conf.get("server_addr") or None,
                span_version=int(conf.get("span_version", 2)))


@dataclass(slots=True)
class _State:
    sampled: bool
    request: Span
    exporter: Exporter | None
    spans: list[Span] = field(default_factory=list)      # children to report with the request span
    proxy: Span | None = None
    response: Span | None = None
    body_filter: Span | None = None
    rewrite_end: int = 0


def _now_ns() -> int:
    return time.time_ns()


def _start_ns(ctx: Any) -> int:
    # ngx.req.start_time(): when the request arrived, not when the plugin ran
    st = ctx.var("start_time")
    return int(st * 1e9) if isinstance(st, (int, float)) and st > 0 else _now_ns()


def _exporter(conf: Conf, ctx: Any) -> Exporter:
    addr = conf.server_addr or ctx.var("server_addr") or ""
    port_s = ctx.var("server_port")
    port = int(port_s) if port_s and str(port_s).isdigit() else None
    local = ZipkinEndpoint(conf.service_name, addr or None, port)

    def make() -> Exporter:
        return Exporter(conf.endpoint, lambda spans: encode_zipkin_v2(spans, local),
                        content_type="application/json", batch_size=_BATCH_SIZE, batch_timeout=_BATCH_TIMEOUT,
                        max_retries=0, name="zipkin")

    return get_exporter(("zipkin", conf.endpoint, local), make)


def rewrite(conf: Conf, ctx: Any) -> Any:
    forced: bool | None = True if ctx.req_header("x-b3-flags") == "1" else None
    b3 = ctx.req_header("b3")
    h: B3Headers | None
    if b3 is not None:
        # not passed upstream: the x-b3-* headers carry the context on (as APISIX does)
        ctx.set_req_header("b3", None)
        try:
            h = parse_b3_single(b3)
        except ValueError as e:
            logger.error("invalid b3 header: %s, ignored: %s", b3, e)
            return 400
        if h.debug:
            ctx.set_req_header("x-b3-flags", "1")
    else:
        h = parse_b3_multi(ctx.req_header)
    parent = None
    if h is not None:
        if h.sampled is not None:
            forced = h.sampled
        parent = h.context()
        if parent is None and (h.trace_id or h.span_id or h.parent_span_id):
            logger.warning("b3 trace context invalid; ignoring it")
    sampled = forced if forced is not None else random.random() < conf.sample_ratio

    start = _start_ns(ctx)
    if parent is not None:
        req_span = Span("apisix.request", parent.trace_id, new_span_id(), parent.span_id, "server", start)
    else:
        req_span = Span("apisix.request", new_trace_id(), new_span_id(), None, "server", start)
    st = _State(sampled, req_span, _exporter(conf, ctx) if sampled else None)
    ctx.set_var(_STATE, st)
    if not sampled:
        return None
    port = ctx.var("remote_port")
    req_span.attributes.update({
        "component": "apisix",
        "http.method": ctx.var("request_method") or "",
        "http.url": ctx.var("request_uri") or "",
        "peer.ipv4": ctx.var("remote_addr") or "",
    })
    if port:
        req_span.attributes["peer.port"] = int(port)
    if conf.span_version == 1:
        rw = req_span.child("apisix.rewrite", start)
        st.rewrite_end = _now_ns()
        rw.finish(st.rewrite_end)
        st.spans.append(rw)
    else:
        st.proxy = req_span.child("apisix.proxy", start)
        st.spans.append(st.proxy)
    return None


def access(conf: Conf, ctx: Any) -> Any:
    st: _State | None = ctx.var(_STATE)
    if st is None:
        return None
    if st.sampled and conf.span_version == 1:
        acc = st.request.child("apisix.access", st.rewrite_end or st.request.start_ns)
        end = _now_ns()
        acc.finish(end)
        st.proxy = st.request.child("apisix.proxy", end)
        st.spans += [acc, st.proxy]
    span = st.proxy if st.sampled and st.proxy is not None else st.request
    for k, v in format_b3_multi(span.trace_id, span.span_id, span.parent_span_id, st.sampled):
        ctx.set_req_header(k, v)
    if not span.parent_span_id:
        ctx.set_req_header("x-b3-parentspanid", None)   # never pass a stale parent on
    return None


def header_filter(conf: Conf, ctx: Any) -> None:
    st: _State | None = ctx.var(_STATE)
    if st is None or not st.sampled:
        return
    now = _now_ns()
    if conf.span_version == 1:
        if st.proxy is not None and st.body_filter is None:
            st.body_filter = st.proxy.child("apisix.body_filter", now)
            st.spans.append(st.body_filter)
    elif st.proxy is not None and st.response is None:
        st.proxy.finish(now)
        st.response = st.request.child("apisix.response_span", now)
        st.spans.append(st.response)




def log(conf: Conf, ctx: Any) -> None:
    st: _State | None = ctx.var(_STATE)
    if st is None or not st.sampled or st.exporter is None:
        return
    end = _now_ns()
    if conf.span_version == 2 and st.proxy is not None and st.response is None:
        # no header_filter ran (the answer was local): the proxy part ends now
        st.proxy.finish(end)
        st.response = st.request.child("apisix.response_span", end)
        st.spans.append(st.response)
    for s in st.spans:
        if not s.end_ns:
            s.finish(end)
    status = ctx.var("status")
    req = st.request
    req.attributes["http.status_code"] = int(status) if status else 0
    req.attributes["apisix.response_source"] = ctx.var("response_source")
    req.finish(end)
    st.exporter.submit(req)
    for s in st.spans:
        st.exporter.submit(s)
