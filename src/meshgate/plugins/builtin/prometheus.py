"""prometheus: per-request HTTP metrics with APISIX's names and labels.

In the log phase each request adds to (APISIX ``apisix/plugins/prometheus/exporter.lua``):

- ``apisix_http_status{code,route,matched_uri,matched_host,service,consumer,node,
  request_type,request_llm_model,llm_model,response_source}`` (counter),
- ``apisix_http_latency{type=request|upstream|apisix,route,service,consumer,node,
  request_type,request_llm_model,llm_model}`` (histogram, milliseconds, APISIX's default
  buckets 1 ms .. 60 s; ``upstream`` only when the request reached an upstream),
- ``apisix_bandwidth{type=ingress|egress,...}`` (counter, bytes).

Label values follow APISIX: ``route``/``service`` are the ids (their names with
``prefer_name: true``), absent values are ``""``, ``request_type`` defaults to
``traditional_http``, model names are cut to 128 characters.  ``plugin_metadata``
``disabled_labels`` blanks the named labels of a metric (structural labels such as
``code`` or ``type`` cannot be disabled).  ``RUN_POLICY = "prefer_route"``: a global
rule's prometheus is skipped when the route configures its own, so a request counts once.

Recording is a dict update in this worker's :data:`meshgate.observability.REGISTRY`;
the supervisor's export server (``plugin_attr.prometheus.export_addr``) sums all workers
per scrape.  Each metric caps its label sets (see ``observability.metrics``) and folds
the excess into an overflow series instead of losing it.
"""

from __future__ import annotations

from typing import Any, Final

from ..chain import CtxBase
from ...observability import REGISTRY, Counter

NAME: Final = "prometheus"
PRIORITY = 500
VERSION = "0.2"
RUN_POLICY = "prefer_route"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prefer_name": {"type": "boolean", "default": False},
    },
}

# APISIX exporter.lua: DEFAULT_BUCKETS, 1 ms to 60 s.
DEFAULT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
# Client-supplied model names are cut before they become label values (APISIX MAX_MODEL_LABEL_LEN).
MAX_MODEL_LABEL_LEN = 128

METRIC_LABELS: dict[str, tuple[str, ...]] = {
    "http_status": ("code", "route", "matched_uri", "matched_host", "service", "consumer", "node",
                    "request_type", "request_llm_model", "llm_model", "response_source"),
    "http_latency": ("type", "route", "service", "consumer", "node", "request_type", "request_llm_model",
                     "llm_model"),
    "bandwidth": ("type", "route", "service", "consumer", "node", "request_type", "request_llm_model",
                  "llm_model"),
}
# Labels that make a metric what it is (APISIX structural_labels): never disabled, and kept
# in the overflow series so that, e.g., request and upstream latencies never mix.
STRUCTURAL = {"http_status": ("code",), "http_latency": ("type",), "bandwidth": ("type",)}

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "disabled_labels": {
            "type": "object",
            "properties": {
                metric: {"type": "array",
                         "items": {"type": "string", "enum": [ln for ln in labels if ln not in STRUCTURAL[metric]]}}
                for metric, labels in METRIC_LABELS.items()
            },
            "additionalProperties": False,
        },
    },
}

STATUS: Final = REGISTRY.counter("http_status", "HTTP status codes per service in APISIX", METRIC_LABELS["http_status"],
                          keep_on_overflow=STRUCTURAL["http_status"])
LATENCY: Final = REGISTRY.histogram("http_latency", "HTTP request latency in milliseconds per service in APISIX",
                             METRIC_LABELS["http_latency"], buckets=DEFAULT_BUCKETS,
                             keep_on_overflow=STRUCTURAL["http_latency"])
BANDWIDTH: Final = REGISTRY.counter("bandwidth", "Total bandwidth in bytes consumed per service in APISIX",
                             METRIC_LABELS["bandwidth"], keep_on_overflow=STRUCTURAL["bandwidth"])

# disabled_labels, compiled once per metadata object: metric -> positions to blank.
_disabled_cache: tuple[Any, dict[str, tuple[int, ...]]] = (None, {})


def _disabled(meta: Any) -> dict[str, tuple[int, ...]]:
    global _disabled_cache
    if _disabled_cache[0] is meta:
        return _disabled_cache[1]
    out: dict[str, tuple[int, ...]] = {}
    dl = meta.get("disabled_labels") if isinstance(meta, dict) else None
    if isinstance(dl, dict):
        for metric, names in dl.items():
            labels = METRIC_LABELS.get(metric)
            if labels and isinstance(names, list):
                out[metric] = tuple(i for i, ln in enumerate(labels) if ln in names and ln not in STRUCTURAL[metric])
    _disabled_cache = (meta, out)
    return out


def _blank(labels: tuple[str, ...], positions: tuple[int, ...]) -> tuple[str, ...]:
    return tuple("" if i in positions else v for i, v in enumerate(labels))


_CODES: Final = {c: str(c) for c in range(100, 600)}


def _model(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (str, int, float)):
        return str(v)[:MAX_MODEL_LABEL_LEN]
    return "<non-scalar>"


def _num(v: Any) -> float:
    t = type(v)
    if t is float:
        return v if v == v else 0.0
    if t is int:
        return float(v)     # byte counts: the common case, no comparison with ""
    if v is None or v == "":
        return 0.0
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    return f if f == f else 0.0


def _var_fields(ctx: Any) -> tuple[Any, ...]:
    """What ``metric_fields`` answers, from a ctx of another kind (by its ``var``)."""
    fields = getattr(ctx, "metric_fields", None)
    if fields is not None:
        return tuple(fields())
    var = ctx.var
    return tuple(var(n) for n in ("route_id", "route_name", "service_id", "service_name", "matched_uri",
                                  "matched_host", "consumer_name", "balancer_ip", "status",
                                  "upstream_response_time", "request_time", "request_length", "bytes_sent",
                                  "response_source", "request_type", "request_llm_model", "llm_model"))


def log(conf: dict[str, Any], ctx: Any) -> None:
    if isinstance(ctx, CtxBase):   # the exchange answers every variable below in one call
        fields = ctx.metric_fields()
        meta = ctx.plugin_metadata(NAME)
    else:
        fields = _var_fields(ctx)
        meta = ctx.plugin_metadata(NAME)
    (route, route_name, service, service_name, matched_uri, matched_host, consumer, node, code,
     upstream_time, request_time, request_length, bytes_sent, source, request_type, req_model,
     llm_model) = fields
    route = route or ""
    service = service or ""
    if conf.get("prefer_name") is True:
        route = route_name or route
        if service:
            service = service_name or service
    consumer = consumer or ""
    node = node or ""
    request_type = request_type or "traditional_http"
    req_model = _model(req_model)
    llm_model = _model(llm_model)
    # APISIX core.response.get_response_source (the exchange provides it; a bare ctx: inferred)
    source = source or ("upstream" if upstream_time is not None else "apisix")
    # A request logged without a status never got an answer: the client went away first,
    # which nginx (and so APISIX) logs as 499.
    code = code or 499
    if type(code) is not str:
        code = _CODES.get(code) or str(code)

    # Values are strings already (ids, names, addresses); a label value of another type
    # is converted by the registry on the slow path, never mixed up with its string.
    status_labels: tuple[str, ...] = (code, route, matched_uri or "", matched_host or "", service,
                                      consumer, node, request_type, req_model, llm_model, source)
    row = _ROWS.get(status_labels)
    if row is None or row.meta is not meta:
        row = _row(status_labels, meta)

    cell = row.status_cell
    if cell is not None:
        cell[0] += 1.0
    else:
        row.status_cell = _count(STATUS, row.status, None, 1.0)
    # APISIX log-util latency_details_in_ms: the apisix share is what the upstream did not
    # take, never negative (nginx's clocks differ slightly between the two variables).
    latency = (request_time if type(request_time) is float else _num(request_time)) * 1000.0
    _observe(row, 0, latency)
    if upstream_time is not None:
        up_ms = (upstream_time if type(upstream_time) is float else _num(upstream_time)) * 1000.0
        _observe(row, 1, up_ms)
        apisix_ms = latency - up_ms
        _observe(row, 2, apisix_ms if apisix_ms > 0 else 0.0)
    else:
        _observe(row, 2, latency)
    row.bw_in_cell = _count(BANDWIDTH, row.bw_in, row.bw_in_cell, _num(request_length))
    row.bw_out_cell = _count(BANDWIDTH, row.bw_out, row.bw_out_cell, _num(bytes_sent))


class _Row:
    """The label sets one http_status label set implies (the others are its subsets), with the
    plugin metadata's disabled labels blanked, and the series they update (a request like an
    earlier one then builds no tuples and looks up no series: it adds to cells and rows)."""

    __slots__ = ("meta", "status", "lat", "hist", "bw_in", "bw_out", "status_cell", "bw_in_cell", "bw_out_cell")

    def __init__(self, meta: Any, status: tuple[str, ...], lat: tuple[tuple[str, ...], ...],
                 hist: tuple[list[float] | None, ...], bw_in: tuple[str, ...], bw_out: tuple[str, ...]) -> None:
        self.meta = meta
        self.status = status
        self.lat = lat            # request, upstream, apisix
        self.hist = hist          # their series rows (None: not cached, observe by labels)
        self.bw_in = bw_in
        self.bw_out = bw_out
        # the counters' cells, once their series exist (None: count by labels)
        self.status_cell: list[float] | None = STATUS.own_row(status)
        self.bw_in_cell: list[float] | None = BANDWIDTH.own_row(bw_in)
        self.bw_out_cell: list[float] | None = BANDWIDTH.own_row(bw_out)


_ROWS: Final[dict[tuple[str, ...], _Row]] = {}
_MAX_ROWS = 4096


def _row(status_labels: tuple[str, ...], meta: Any) -> _Row:
    code, route, _uri, _host, service, consumer, node, request_type, req_model, llm_model, _src = status_labels
    tail: tuple[str, ...] = (route, service, consumer, node, request_type, req_model, llm_model)
    lat = (("request",) + tail, ("upstream",) + tail, ("apisix",) + tail)
    bw_in = ("ingress",) + tail
    bw_out = ("egress",) + tail
    status = status_labels
    if meta is not None:
        dis = _disabled(meta)
        if dis:
            p = dis.get("http_status")
            if p:
                status = _blank(status, p)
            p = dis.get("http_latency")
            if p:
                lat = (_blank(lat[0], p), _blank(lat[1], p), _blank(lat[2], p))
            p = dis.get("bandwidth")
            if p:
                bw_in, bw_out = _blank(bw_in, p), _blank(bw_out, p)
    # a row is looked up once the label set has a series of its own (never the overflow one:
    # that is counted per update); until then every update goes through the metric
    hist = tuple(LATENCY.own_row(labels) for labels in lat)
    row = _Row(meta, status, lat, hist, bw_in, bw_out)
    if len(_ROWS) >= _MAX_ROWS:
        _ROWS.clear()
    _ROWS[status_labels] = row
    return row


def _count(metric: Counter, labels: tuple[str, ...], cell: list[float] | None, value: float) -> list[float] | None:
    """Add to a counter through its cell when the row has it; else by labels, returning the
    cell for the next request once the label set has a series of its own."""
    if cell is not None:
        cell[0] += value
        return cell
    metric.inc(labels, value)
    return metric.own_row(labels)


def _observe(row: _Row, i: int, value: float) -> None:
    h = row.hist[i]
    if h is None:
        LATENCY.observe(row.lat[i], value)
        h = LATENCY.own_row(row.lat[i])
        if h is not None:
            row.hist = row.hist[:i] + (h,) + row.hist[i + 1:]
    else:
        LATENCY.observe_row(h, value)
