"""The log entry APISIX's loggers send (``apisix/utils/log-util.lua``), and the request /
response body collection they share.

``get_log_entry`` gives either the full entry (``get_full_log``: request, response,
server, upstream, service_id, route_id, consumer, client_ip, start_time, latencies) or,
when ``log_format`` is set on the conf or in the plugin metadata, the custom entry whose
``$var`` values are resolved through ``ctx.var``.  As Lua tables do, keys whose value is
absent (nil) are left out.

Request bodies are read in the ``access`` phase (:func:`read_req_body`, only when the conf
asks for them and its expression matches), response bodies collected in ``body_filter``
(:func:`collect_resp_body`, capped, gzip/deflate decoded as APISIX does).  The
expressions are compiled by the plugin (this package does not depend on the router): any
object with ``eval(getvar) -> bool`` will do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from .. import __version__

__all__ = ["LOG_BODY_PROPERTIES", "LOG_FORMAT_METADATA", "req_body_hook", "resp_body_hook", "check_log_schema",
           "send_error_reason", "unverified_tls_context", "LogOptions", "Predicate", "LogContext", "compile_log_format", "get_log_entry", "get_full_log",
           "get_custom_format_log", "read_req_body", "collect_resp_body", "encode_json", "rfc3339_zulu",
           "parse_query", "MAX_LOG_FORMAT_DEPTH", "check_log_exprs", "conf_key", "max_pending"]

log = logging.getLogger("meshgate.observability.log")

MAX_REQ_BODY = 524288
MAX_RESP_BODY = 524288
MAX_LOG_FORMAT_DEPTH = 5
REQ_BODY_VAR = "_meshgate_log_req_body"   # shared by the loggers of one request: read once


class Predicate(Protocol):
    def eval(self, getvar: Callable[[str], Any]) -> bool: ...


class LogContext(Protocol):
    """The parts of the plugin ``ctx`` (docs/plugins.md) the loggers use."""

    consumer: Any

    def var(self, name: str) -> Any: ...
    def set_var(self, name: str, value: Any) -> None: ...
    def req_headers(self) -> Mapping[str, str]: ...
    def resp_header(self, name: str) -> str | None: ...
    def plugin_metadata(self, name: str) -> Any: ...


# A compiled log_format: key -> (is_var, var name | literal | nested format)
Format = dict[str, tuple[bool, Any]]


def compile_log_format(fmt: Mapping[str, Any], depth: int = 1) -> Format:
    """``{"host": "$host", "x": {"y": "$uri"}, "k": "literal"}`` compiled once; nesting
    deeper than MAX_LOG_FORMAT_DEPTH becomes an empty object (APISIX truncates and warns)."""
    out: Format = {}
    for k, v in fmt.items():
        if isinstance(v, dict):
            if depth >= MAX_LOG_FORMAT_DEPTH:
                log.warning("log_format nesting exceeds max depth %d, truncating", MAX_LOG_FORMAT_DEPTH)
                out[k] = (False, {})
            else:
                out[k] = (False, compile_log_format(v, depth + 1))
        elif isinstance(v, str) and v.startswith("$"):
            out[k] = (True, v[1:])
        else:
            out[k] = (False, v)
    return out


@dataclass(slots=True)
class LogOptions:
    """What a logger conf says about the entry, compiled once per config version."""

    plugin: str
    log_format: Format | None = None
    log_format_extra: Mapping[str, Any] | None = None
    include_req_body: bool = False
    req_body_expr: Predicate | None = None
    include_resp_body: bool = False
    resp_body_expr: Predicate | None = None
    max_req_body_bytes: int = MAX_REQ_BODY
    max_resp_body_bytes: int = MAX_RESP_BODY
    match: Sequence[Predicate] | None = None
    _meta_cache: list[Any] = field(default_factory=lambda: [None, None, None])   # [metadata, format, extra]

    @property
    def resp_var(self) -> str:
        return "_meshgate_log_resp_body." + self.plugin

    @classmethod
    def from_conf(cls, plugin: str, conf: Mapping[str, Any],
                  compile_expr: Callable[[list[Any]], Predicate]) -> LogOptions:
        fmt = conf.get("log_format")
        match = conf.get("match")
        return cls(
            plugin=plugin,
            log_format=compile_log_format(fmt) if isinstance(fmt, dict) else None,
            log_format_extra=conf.get("log_format_extra"),
            include_req_body=bool(conf.get("include_req_body", False)),
            req_body_expr=compile_expr(conf["include_req_body_expr"]) if conf.get("include_req_body_expr") else None,
            include_resp_body=bool(conf.get("include_resp_body", False)),
            resp_body_expr=compile_expr(conf["include_resp_body_expr"]) if conf.get("include_resp_body_expr") else None,
            max_req_body_bytes=int(conf.get("max_req_body_bytes", MAX_REQ_BODY)),
            max_resp_body_bytes=int(conf.get("max_resp_body_bytes", MAX_RESP_BODY)),
            # APISIX: the entry is logged when any one of the expressions matches
            match=[compile_expr([m]) for m in match] if match else None,
        )

    def metadata_formats(self, ctx: LogContext) -> tuple[Format | None, Mapping[str, Any] | None]:
        """The metadata's log_format (compiled, cached per metadata object) and log_format_extra."""
        meta = ctx.plugin_metadata(self.plugin)
        if not isinstance(meta, Mapping):
            return None, None
        cache = self._meta_cache
        if cache[0] is not meta:
            fmt = meta.get("log_format")
            cache[1] = compile_log_format(fmt) if isinstance(fmt, dict) and fmt else None
            extra = meta.get("log_format_extra")
            cache[2] = extra if isinstance(extra, dict) else None
            cache[0] = meta
        return cache[1], cache[2]


def check_log_exprs(conf: Mapping[str, Any], compile_expr: Callable[[list[Any]], Predicate]) -> str | None:
    """APISIX ``log_util.check_log_schema``: the body expressions must compile."""
    for key in ("include_req_body_expr", "include_resp_body_expr"):
        if conf.get(key):
            try:
                compile_expr(conf[key])
            except Exception as e:
                return f"failed to validate the '{key}' expression: {getattr(e, 'message', e)}"
    return None


def _sorted(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _sorted(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_sorted(x) for x in v]
    return v


def conf_key(conf: Mapping[str, Any]) -> str:
    """A stable identity of a conf's content (one batch processor per route and conf)."""
    return json.dumps(_sorted(conf), separators=(",", ":"), default=str)


def max_pending(meta: Any, default: int = 8192) -> int:
    """``max_pending_entries`` from a plugin's metadata."""
    if isinstance(meta, Mapping):
        v = meta.get("max_pending_entries")
        if isinstance(v, int) and v >= 1:
            return v
    return default


def encode_json(value: Any) -> str:
    """As APISIX's cjson: compact, raw UTF-8, ``/`` escaped as ``\\/``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")


def rfc3339_zulu(ts: float | None = None) -> str:
    """``2024-01-02T03:04:05.678Z`` (APISIX ``get_rfc3339_zulu_timestamp``)."""
    now = time.time() if ts is None else ts
    sec = int(now)
    ms = int((now - sec) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)) + f"{ms:03d}Z"


def parse_query(qs: str | None) -> dict[str, Any]:
    """``ngx.req.get_uri_args()``: repeated keys give a list, a key without ``=`` gives true."""
    from urllib.parse import unquote_plus

    out: dict[str, Any] = {}
    if not qs:
        return out
    for part in qs.split("&"):
        if not part:
            continue
        k, eq, v = part.partition("=")
        key = unquote_plus(k)
        if not key:
            continue
        val: Any = unquote_plus(v) if eq else True
        old = out.get(key)
        if old is None:
            out[key] = val
        elif isinstance(old, list):
            old.append(val)
        else:
            out[key] = [old, val]
    return out


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        # nginx joins the times of several tries: "0.002, 0.001"; APISIX's tonumber gives nil
        return None


def _int(v: Any) -> Any:
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return v


def _resp_headers(ctx: Any) -> dict[str, str]:
    """The response header fields (lower-case names; repeated ones joined with ``, ``).
    docs/plugins.md has no accessor for all of them in the log phase: the exchange's
    ``resp_headers`` (a list of byte pairs, or a method returning a mapping) is used."""
    h = getattr(ctx, "resp_headers", None)
    if callable(h):
        h = h()
    out: dict[str, str] = {}
    if isinstance(h, Mapping):
        for k, v in h.items():
            out[str(k).lower()] = v if isinstance(v, str) else ", ".join(v) if isinstance(v, list) else str(v)
        return out
    if isinstance(h, (list, tuple)):
        for k, v in h:
            name = (k.decode("latin-1") if isinstance(k, bytes) else str(k)).lower()
            val = v.decode("latin-1") if isinstance(v, bytes) else str(v)
            out[name] = out[name] + ", " + val if name in out else val
    return out


def _body_text(body: bytes | bytearray | str | None, limit: int | None) -> str | None:
    if body is None:
        return None
    if isinstance(body, str):
        return body[:limit] if limit is not None else body
    data = bytes(body[:limit]) if limit is not None else bytes(body)
    return data.decode("utf-8", "replace")


def _var(ctx: LogContext, name: str, opts: LogOptions) -> Any:
    if name == "request_body":
        return _body_text(ctx.var(REQ_BODY_VAR), opts.max_req_body_bytes)
    if name == "resp_body":
        return _body_text(ctx.var(opts.resp_var), None) or ""
    if name == "status":
        return _int(ctx.var("status"))   # a number, as in APISIX's entries
    return ctx.var(name)


def _build(ctx: LogContext, fmt: Format, opts: LogOptions) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for k, (is_var, v) in fmt.items():
        if is_var:
            val = _var(ctx, v, opts)
            if val is not None:
                entry[k] = val
        elif isinstance(v, dict):
            entry[k] = _build(ctx, v, opts)
        elif v is not None:
            entry[k] = v
    return entry


def get_custom_format_log(ctx: LogContext, fmt: Format, opts: LogOptions) -> dict[str, Any]:
    entry = _build(ctx, fmt, opts)
    route_id = ctx.var("route_id")
    if route_id is not None:
        sid = ctx.var("service_id")
        if sid is not None:
            entry["service_id"] = sid
        entry["route_id"] = route_id
    return entry


def get_full_log(ctx: LogContext, opts: LogOptions) -> dict[str, Any]:
    var = ctx.var
    host = var("host") or ""
    request_uri = var("request_uri")
    url = f"{var('scheme') or 'http'}://{host}:{var('server_port') or ''}{request_uri or ''}"
    route_id = var("route_id")
    if route_id is not None:
        service_id = var("service_id") or ""
    else:
        service_id = host
    start = _num(var("start_time"))
    rt = _num(var("request_time"))
    now = time.time()
    if start is None:
        start = now - (rt or 0.0)
    latency = rt * 1000 if rt is not None else (now - start) * 1000
    upstream_latency = None
    apisix_latency = latency
    urt = _num(var("upstream_response_time"))
    if urt is not None:
        upstream_latency = urt * 1000
        apisix_latency = max(0.0, latency - upstream_latency)
    request: dict[str, Any] = {
        "url": url,
        "uri": request_uri,
        "method": var("request_method"),
        "headers": dict(ctx.req_headers()),
        "querystring": parse_query(var("query_string")),
        "size": _int(var("request_length")),
    }
    response: dict[str, Any] = {
        "status": _int(var("status")),
        "headers": _resp_headers(ctx),
        "size": _int(var("bytes_sent")),
    }
    entry: dict[str, Any] = {
        "request": {k: v for k, v in request.items() if v is not None},
        "response": {k: v for k, v in response.items() if v is not None},
        "server": {"hostname": var("hostname"), "version": __version__},
        "upstream": var("upstream_addr"),
        "service_id": service_id,
        "route_id": route_id,
        "client_ip": var("remote_addr"),
        "start_time": start * 1000,
        "latency": latency,
        "upstream_latency": upstream_latency,
        "apisix_latency": apisix_latency,
    }
    consumer = getattr(ctx, "consumer", None)
    if consumer is not None:
        name = consumer.get("username") if isinstance(consumer, Mapping) else getattr(consumer, "username", None)
        entry["consumer"] = {"username": name}
    if opts.include_resp_body:
        body = ctx.var(opts.resp_var)
        if body is not None:
            entry["response"]["body"] = _body_text(body, None)
    if opts.include_req_body and (opts.req_body_expr is None or opts.req_body_expr.eval(ctx.var)):
        body = ctx.var(REQ_BODY_VAR)
        if body is not None:
            entry["request"]["body"] = _body_text(body, opts.max_req_body_bytes)
    return {k: v for k, v in entry.items() if v is not None}


def get_log_entry(opts: LogOptions, ctx: LogContext) -> dict[str, Any] | None:
    """The entry for this request, or None when ``match`` is set and no rule matches."""
    if opts.match is not None and not any(m.eval(ctx.var) for m in opts.match):
        return None
    meta_fmt, meta_extra = opts.metadata_formats(ctx)
    fmt = opts.log_format if opts.log_format is not None else meta_fmt
    if fmt is not None:
        return get_custom_format_log(ctx, fmt, opts)
    entry = get_full_log(ctx, opts)
    extra = opts.log_format_extra if opts.log_format_extra is not None else meta_extra
    if extra:
        # enrich the default entry; never replace one of its fields
        added = _build(ctx, compile_log_format(extra), opts)
        for k, v in added.items():
            entry.setdefault(k, v)
    return entry


def _wants_req_body(opts: LogOptions, ctx: LogContext) -> bool:
    if not opts.include_req_body:
        return False
    return opts.req_body_expr is None or bool(opts.req_body_expr.eval(ctx.var))


async def _read(ctx: Any) -> None:
    body = await ctx.read_body()
    ctx.set_var(REQ_BODY_VAR, body if body is not None else b"")


def read_req_body(opts: LogOptions, ctx: Any) -> Any:
    """access phase: nothing (None) unless the body is to be logged, else an awaitable that
    reads it (APISIX ``check_and_read_req_body``); the body still goes upstream."""
    if not _wants_req_body(opts, ctx) or ctx.var(REQ_BODY_VAR) is not None:
        return None
    return _read(ctx)


def collect_resp_body(opts: LogOptions, ctx: Any) -> None:
    """body_filter phase: keep up to ``max_resp_body_bytes`` of the response body (APISIX
    ``collect_body``), decoded when gzip/deflate encoded."""
    if not opts.include_resp_body:
        return
    key = opts.resp_var
    state = ctx.var(key + ".buf")
    if state is None:
        ok = opts.resp_body_expr is None or bool(opts.resp_body_expr.eval(ctx.var))
        state = bytearray() if ok else False
        ctx.set_var(key + ".buf", state)
    if state is False:
        return
    chunk = ctx.chunk
    if chunk:
        room = opts.max_resp_body_bytes - len(state)
        if room > 0:
            state += chunk[:room]
    if ctx.eof:
        body = bytes(state)
        enc = (ctx.resp_header("content-encoding") or "").strip().lower()
        if enc:
            wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(enc)
            if wbits is None:
                log.warning("unsupported compression encoding type: %s", enc)
            else:
                try:
                    body = zlib.decompressobj(wbits).decompress(body)
                except zlib.error as e:
                    log.warning("try decode compressed data err: %s", e)
        ctx.set_var(key, body)


_EXPR_ARRAY: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "array"}}

# The schema properties every logger shares (APISIX's log-util options).
LOG_BODY_PROPERTIES: dict[str, Any] = {
    "log_format": {"type": "object"},
    "log_format_extra": {"type": "object"},
    "include_req_body": {"type": "boolean", "default": False},
    "include_req_body_expr": _EXPR_ARRAY,
    "include_resp_body": {"type": "boolean", "default": False},
    "include_resp_body_expr": _EXPR_ARRAY,
    "max_req_body_bytes": {"type": "integer", "minimum": 1, "default": 524288},
    "max_resp_body_bytes": {"type": "integer", "minimum": 1, "default": 524288},
}


def req_body_hook(conf: Any, ctx: Any) -> Any:
    """A logger's access hook: read the request body when its conf includes it (``conf.opts``)."""
    return read_req_body(conf.opts, ctx)


def resp_body_hook(conf: Any, ctx: Any) -> None:
    """A logger's body_filter hook: collect the response body when its conf includes it."""
    collect_resp_body(conf.opts, ctx)


# plugin_metadata of the loggers: a log_format shared by every route (batch fields added by
# observability.batch.wrap_metadata_schema)
LOG_FORMAT_METADATA: dict[str, Any] = {
    "type": "object",
    "properties": {"log_format_extra": {"type": "object"}, "log_format": {"type": "object"}},
}


def check_log_schema(conf: Any, schema_type: str, compile_expr: Callable[[Any], Any]) -> str | None:
    """A logger's ``check_schema``: its body expressions compile (nothing to check in metadata)."""
    if schema_type == "metadata":
        return None
    return check_log_exprs(conf, compile_expr)


def send_error_reason(e: BaseException) -> str:
    """How a logger's send failure reads in the error log (APISIX's wording where it has one)."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    return str(e) or type(e).__name__


_UNVERIFIED: list[ssl.SSLContext] = []


def unverified_tls_context() -> ssl.SSLContext:
    """TLS without certificate checks, as APISIX's tcp-logger/syslog handshake (one per process)."""
    if not _UNVERIFIED:
        c = ssl.create_default_context()
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
        _UNVERIFIED.append(c)
    return _UNVERIFIED[0]
