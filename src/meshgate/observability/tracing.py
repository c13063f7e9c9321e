"""Distributed tracing, sans-IO: context propagation, ids, spans, samplers, wire encoders.

Theory of operation
-------------------
A traced request carries a *context* in its headers: W3C Trace Context (``traceparent``
+ ``tracestate``, https://www.w3.org/TR/trace-context/) or Zipkin's B3 (the
``X-B3-*`` multi-header form or the single ``b3`` header,
https://github.com/openzipkin/b3-propagation).  The parsers here turn those headers into a
:class:`TraceContext` (or ``None`` when the header is absent or malformed: a bad header is
ignored and a new trace starts, as both specs require) and the formatters do the reverse.

A :class:`Span` is a plain record (ids, name, kind, timestamps in nanoseconds since the
epoch, attributes, status).  Plugins build spans on the request path; finished spans go to
an exporter (``export.py``) which encodes a batch with :func:`encode_zipkin_v2` (Zipkin v2
JSON) or :func:`encode_otlp` (OTLP/HTTP protobuf, ``application/x-protobuf``, via the
official ``opentelemetry-proto`` messages).  Encoding happens off the request path, in the
exporter's batch, so the protobuf runtime is imported only by a worker that exports OTLP.

Nothing in this module does I/O or touches asyncio.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping, Sequence, Union

__all__ = [
    "TraceContext", "B3Headers", "Span", "SpanKind", "SpanStatus", "AttrValue",
    "new_trace_id", "new_span_id", "is_valid_trace_id", "is_valid_span_id",
    "parse_traceparent", "format_traceparent", "parse_tracestate", "format_tracestate",
    "parse_b3_multi", "parse_b3_single", "format_b3_multi", "format_b3_single",
    "Sampler", "AlwaysOn", "AlwaysOff", "TraceIdRatio", "ParentBased",
    "encode_zipkin_v2", "encode_otlp", "ZipkinEndpoint",
]

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
SpanStatus = Literal["unset", "ok", "error"]
AttrValue = Union[str, bool, int, float]

_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_HEX_LC = re.compile(r"[0-9a-f]+")
_HEX_ANY = re.compile(r"[0-9a-fA-F]+")


# ---------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------

def new_trace_id() -> str:
    """A random, non-zero 128-bit trace id as 32 lower-case hex digits.

    ``random`` (Mersenne Twister) is what the OpenTelemetry SDKs use: ids need to be unique,
    not secret, and the module reseeds itself in a forked worker."""
    while True:
        v = random.getrandbits(128)
        if v:
            return f"{v:032x}"


def new_span_id() -> str:
    """A random, non-zero 64-bit span id as 16 lower-case hex digits."""
    while True:
        v = random.getrandbits(64)
        if v:
            return f"{v:016x}"


def is_valid_trace_id(v: str) -> bool:
    """32 lower-case hex digits, not all zero (W3C ``trace-id``)."""
    return len(v) == 32 and _HEX_LC.fullmatch(v) is not None and v != _ZERO_TRACE


def is_valid_span_id(v: str) -> bool:
    """16 lower-case hex digits, not all zero (W3C ``parent-id``)."""
    return len(v) == 16 and _HEX_LC.fullmatch(v) is not None and v != _ZERO_SPAN


# ---------------------------------------------------------------------------------------------
# context
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TraceContext:
    """A remote span context taken from request headers.

    ``trace_id`` is lower-case hex, 32 digits (B3 may carry 16: it is kept as received so it
    is propagated unchanged, and :attr:`trace_id128` pads it for W3C/OTLP).  ``span_id`` is the
    caller's span (the parent of the span the gateway starts).  ``sampled`` is ``None`` when
    the caller deferred the decision (B3 without a sampling flag)."""

    trace_id: str
    span_id: str
    sampled: bool | None = None
    parent_span_id: str | None = None   # B3 only: the caller's parent
    debug: bool = False                 # B3 ``X-B3-Flags: 1`` / ``d``
    tracestate: str | None = None       # W3C only, already validated and re-serialised
    flags: int = 0                      # W3C trace-flags as received

    @property
    def trace_id128(self) -> str:
        return self.trace_id.rjust(32, "0")


def parse_traceparent(value: str | None) -> TraceContext | None:
    """``traceparent`` → context, or None if absent or invalid (W3C §3.2: ignore it).

    Version ``00`` must be exactly ``00-<32 hex>-<16 hex>-<2 hex>``.  A higher version is
    parsed by its version-00 prefix and may carry more fields after a ``-`` (§3.2.4 "future
    versions"); ``ff`` is forbidden.  Hex must be lower case; all-zero ids are invalid."""
    if not value:
        return None
    v = value.strip(" \t")
    if len(v) < 55:
        return None
    version = v[:2]
    if _HEX_LC.fullmatch(version) is None or version == "ff":
        return None
    if version == "00":
        if len(v) != 55:
            return None
    elif len(v) > 55 and v[55] != "-":
        return None
    if v[2] != "-" or v[35] != "-" or v[52] != "-":
        return None
    trace_id, span_id, flags_hex = v[3:35], v[36:52], v[53:55]
    if not is_valid_trace_id(trace_id) or not is_valid_span_id(span_id):
        return None
    if _HEX_LC.fullmatch(flags_hex) is None:
        return None
    flags = int(flags_hex, 16)
    return TraceContext(trace_id, span_id, bool(flags & 1), flags=flags)


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    """Version-00 ``traceparent`` for the span ``span_id`` (16-hex B3 trace ids are padded)."""
    return f"00-{trace_id.rjust(32, '0')}-{span_id}-{'01' if sampled else '00'}"


# tracestate list-member key: simple-key or tenant@system (W3C §3.3.1.3.1)
_TS_KEY = re.compile(r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})")
# value: printable ASCII but ',' and '=', no trailing space, at most 256 chars
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def parse_tracestate(value: str | None) -> list[tuple[str, str]] | None:
    """``tracestate`` → list of (key, value), or None when absent or invalid.

    W3C §3.3: members separated by ``,`` (optional white space, empty members allowed), at
    most 32, keys unique.  An invalid header is discarded as a whole."""
    if not value:
        return None
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or _TS_KEY.fullmatch(key) is None or _TS_VALUE.fullmatch(val) is None or key in seen:
            return None
        seen.add(key)
        out.append((key, val))
    if not out or len(out) > 32:
        return None
    return out


def format_tracestate(members: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in members)


# ---------------------------------------------------------------------------------------------
# B3
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class B3Headers:
    """B3 fields as received (ids unvalidated), from either header form.

    ``sampled``: ``"1"``/``"true"`` → True, ``"0"``/``"false"`` → False, else None (deferred).
    :meth:`context` validates the ids: a trace id of 16 or 32 hex digits, span ids of 16 (the
    B3 spec; upper case is tolerated as Zipkin's own tracers do).  Any invalid id drops the
    whole context (the sampling decision still stands)."""

    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    sampled: bool | None = None
    debug: bool = False

    def context(self) -> TraceContext | None:
        t, s, p = self.trace_id, self.span_id, self.parent_span_id
        if t is None or s is None:
            return None
        if len(t) not in (16, 32) or _HEX_ANY.fullmatch(t) is None:
            return None
        if len(s) != 16 or _HEX_ANY.fullmatch(s) is None:
            return None
        if p is not None and (len(p) != 16 or _HEX_ANY.fullmatch(p) is None):
            return None
        t, s = t.lower(), s.lower()
        if int(t, 16) == 0 or int(s, 16) == 0:
            return None
        sampled = True if self.debug else self.sampled
        return TraceContext(t, s, sampled, parent_span_id=p.lower() if p else None, debug=self.debug)


def _b3_sampled(v: str | None) -> bool | None:
    if v in ("1", "true"):
        return True
    if v in ("0", "false"):
        return False
    return None


def parse_b3_multi(get: Callable[[str], str | None]) -> B3Headers | None:
    """The ``X-B3-*`` headers through ``get(lower_case_name)``; None when none is present."""
    t, s, p = get("x-b3-traceid"), get("x-b3-spanid"), get("x-b3-parentspanid")
    sampled, flags = get("x-b3-sampled"), get("x-b3-flags")
    if t is None and s is None and p is None and sampled is None and flags is None:
        return None
    return B3Headers(t, s, p, _b3_sampled(sampled), flags == "1")


def parse_b3_single(value: str) -> B3Headers:
    """The single ``b3`` header: ``{trace}-{span}[-{sampling}[-{parent}]]`` or just a
    sampling state (``0``, ``1``, ``d``).

    Raises ValueError (with the reason) when the ids are missing: APISIX's zipkin plugin
    answers 400 to such a header, unlike an invalid-but-present id, which is ignored."""
    if value in ("0", "1", "d"):
        return B3Headers(sampled=value != "0", debug=value == "d")
    parts = value.split("-", 3)
    if not parts[0]:
        raise ValueError("missing trace_id")
    if len(parts) < 2 or not parts[1]:
        raise ValueError("missing span_id")
    state = parts[2] if len(parts) > 2 else None
    parent = parts[3] if len(parts) > 3 else None
    debug = state == "d"
    return B3Headers(parts[0], parts[1], parent or None, True if debug else _b3_sampled(state), debug)


def format_b3_multi(trace_id: str, span_id: str, parent_span_id: str | None, sampled: bool,
                    debug: bool = False) -> list[tuple[str, str]]:
    """``X-B3-*`` headers (lower-case names, as APISIX sets them) for the span ``span_id``."""
    out = [("x-b3-traceid", trace_id), ("x-b3-spanid", span_id)]
    if parent_span_id:
        out.append(("x-b3-parentspanid", parent_span_id))
    out.append(("x-b3-sampled", "1" if sampled else "0"))
    if debug:
        out.append(("x-b3-flags", "1"))
    return out


def format_b3_single(trace_id: str, span_id: str, parent_span_id: str | None, sampled: bool,
                     debug: bool = False) -> str:
    state = "d" if debug else ("1" if sampled else "0")
    s = f"{trace_id}-{span_id}-{state}"
    return f"{s}-{parent_span_id}" if parent_span_id else s


# ---------------------------------------------------------------------------------------------
# spans and samplers
# ---------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Span:
    """One finished (or in-progress) span; times are nanoseconds since the Unix epoch."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    kind: SpanKind = "internal"
    start_ns: int = 0
    end_ns: int = 0
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    status: SpanStatus = "unset"
    status_message: str = ""
    tracestate: str | None = None

    def child(self, name: str, start_ns: int, *, kind: SpanKind = "internal") -> Span:
        return Span(name, self.trace_id, new_span_id(), self.span_id, kind, start_ns)

    def set_status(self, status: SpanStatus, message: str = "") -> None:
        self.status = status
        self.status_message = message

    def finish(self, end_ns: int) -> None:
        self.end_ns = max(end_ns, self.start_ns)


class Sampler:
    """Decides whether a new span is recorded (OpenTelemetry's sampler interface, reduced to
    what the gateway needs: the trace id and the remote parent, if any)."""

    def should_sample(self, trace_id: str, parent: TraceContext | None) -> bool:
        raise NotImplementedError


class AlwaysOn(Sampler):
    def should_sample(self, trace_id: str, parent: TraceContext | None) -> bool:
        return True


class AlwaysOff(Sampler):
    def should_sample(self, trace_id: str, parent: TraceContext | None) -> bool:
        return False


class TraceIdRatio(Sampler):
    """Sample when the trace id's low 64 bits fall under ``fraction * 2**64`` (OpenTelemetry's
    TraceIdRatioBased): every gateway with the same fraction takes the same decision."""

    def __init__(self, fraction: float) -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        self.bound = round(f * (1 << 64))

    def should_sample(self, trace_id: str, parent: TraceContext | None) -> bool:
        return int(trace_id[-16:], 16) < self.bound


class ParentBased(Sampler):
    """Follow the remote parent's sampled flag; without a parent, ask ``root``."""

    def __init__(self, root: Sampler) -> None:
        self.root = root

    def should_sample(self, trace_id: str, parent: TraceContext | None) -> bool:
        if parent is not None and parent.sampled is not None:
            return parent.sampled
        return self.root.should_sample(trace_id, parent)


# ---------------------------------------------------------------------------------------------
# encoders
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ZipkinEndpoint:
    service_name: str
    ipv4: str | None = None
    port: int | None = None

    def as_json(self) -> dict[str, object]:
        d: dict[str, object] = {"serviceName": self.service_name}
        if self.ipv4:
            d["ipv4"] = self.ipv4
        if self.port:
            d["port"] = self.port
        return d


_ZIPKIN_KIND = {"server": "SERVER", "client": "CLIENT", "producer": "PRODUCER", "consumer": "CONSUMER"}


def _tag(v: AttrValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def encode_zipkin_v2(spans: Sequence[Span], local: ZipkinEndpoint) -> bytes:
    """A JSON array of Zipkin v2 spans (POST /api/v2/spans, ``application/json``).

    Timestamps and durations are integer microseconds; tag values are strings.  As APISIX's
    zipkin reporter does, the ``peer.ipv4``/``peer.port`` attributes become the
    ``remoteEndpoint`` instead of tags."""
    out = []
    for s in spans:
        tags = {k: _tag(v) for k, v in s.attributes.items()}
        remote: dict[str, object] | None = None
        peer_port = tags.pop("peer.port", None)
        peer_ip = tags.pop("peer.ipv4", None)
        if peer_port is not None or peer_ip is not None:
            remote = {}
            if peer_ip:
                remote["ipv4"] = peer_ip
            if peer_port and peer_port.isdigit():
                remote["port"] = int(peer_port)
        d: dict[str, object] = {"traceId": s.trace_id, "id": s.span_id, "name": s.name}
        if s.parent_span_id:
            d["parentId"] = s.parent_span_id
        kind = _ZIPKIN_KIND.get(s.kind)
        if kind:
            d["kind"] = kind
        d["timestamp"] = s.start_ns // 1000
        # Zipkin: duration in microseconds, at least 1 for a finished span (0 means "unknown")
        d["duration"] = max(1, (s.end_ns - s.start_ns) // 1000)
        d["localEndpoint"] = local.as_json()
        if remote:
            d["remoteEndpoint"] = remote
        if s.status == "error":
            tags.setdefault("error", s.status_message or "true")
        d["tags"] = tags
        out.append(d)
    return json.dumps(out, separators=(",", ":")).encode()


_OTLP_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_OTLP_STATUS = {"unset": 0, "ok": 1, "error": 2}


def encode_otlp(spans: Sequence[Span], *, resource: Mapping[str, AttrValue], scope_name: str,
                scope_version: str = "") -> bytes:
    """An OTLP ``ExportTraceServiceRequest`` (protobuf), as POSTed to ``/v1/traces`` with
    ``Content-Type: application/x-protobuf`` (OTLP/HTTP binary, the encoding APISIX sends)."""
    # imported here: only a worker that exports OTLP pays for the protobuf runtime
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan, Status

    def kv(key: str, v: AttrValue) -> KeyValue:
        if isinstance(v, bool):
            val = AnyValue(bool_value=v)
        elif isinstance(v, int):
            val = AnyValue(int_value=v)
        elif isinstance(v, float):
            val = AnyValue(double_value=v)
        else:
            val = AnyValue(string_value=str(v))
        return KeyValue(key=key, value=val)

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    if "scope_spans" not in rs.DESCRIPTOR.fields_by_name:
        # xds-protos bundles a pre-1.0 copy of these modules under the same paths
        raise RuntimeError("the installed opentelemetry.proto modules predate OTLP 1.0 (no scope_spans): "
                           "another package overwrote opentelemetry-proto's; run "
                           "pip install --force-reinstall --no-deps opentelemetry-proto")
    rs.resource.attributes.extend(kv(k, v) for k, v in resource.items())
    ss = rs.scope_spans.add()
    ss.scope.name = scope_name
    if scope_version:
        ss.scope.version = scope_version
    for s in spans:
        pb = PbSpan(
            trace_id=bytes.fromhex(s.trace_id.rjust(32, "0")),
            span_id=bytes.fromhex(s.span_id),
            parent_span_id=bytes.fromhex(s.parent_span_id) if s.parent_span_id else b"",
            name=s.name,
            kind=_OTLP_KIND[s.kind],  # type: ignore[arg-type]
            start_time_unix_nano=s.start_ns,
            end_time_unix_nano=s.end_ns,
            attributes=[kv(k, v) for k, v in s.attributes.items()],
            status=Status(code=_OTLP_STATUS[s.status], message=s.status_message),  # type: ignore[arg-type]
        )
        if s.tracestate:
            pb.trace_state = s.tracestate
        ss.spans.append(pb)
    return bytes(req.SerializeToString())
