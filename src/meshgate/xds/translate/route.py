"""RouteConfiguration (RDS, or inline in an HTTP connection manager) → a mesh route table.

Pure: an xDS message in, a plain JSON-able dict out (what the supervisor ships to its
workers, which compile it once per version, see ``meshgate.proxy.mesh``).  Everything
istiod emits for sidecars and gateways translates; a field whose semantics Meshgate does
not implement raises :class:`~meshgate.errors.ConfigError` naming it, which the xDS
session answers with a NACK (the previous table keeps serving), instead of serving a
route that would behave differently from Envoy's.

Shapes (every key always present unless marked optional)::

    table   {"name", "virtual_hosts": [vhost], "ignore_port": bool,
             "headers": mutation, "max_direct_body": int}
    vhost   {"name", "domains": [str], "routes": [route], "headers": mutation,
             "retry": retry | None, "fault": fault | None, "cors": cors | None,
             "require_tls": "NONE" | "EXTERNAL_ONLY" | "ALL", "attempt_count": bool}
    route   {"name", "match": match, "action": action, "headers": mutation,
             "timeout": float (0 = none), "idle_timeout": float | None,
             "retry": retry | None, "rewrite": rewrite, "mirrors": [{"cluster", "fraction"}],
             "hash": [hash], "fault": fault | None, "cors": cors | None,
             "metadata_config": str | None, "decorator": str | None}
    match   {"path": {"kind": "prefix" | "path" | "regex" | "sep_prefix", "value": str},
             "ci": bool, "headers": [hmatch], "query": [qmatch], "grpc": bool,
             "fraction": float | None}
    hmatch  {"name", "op": "exact" | "prefix" | "suffix" | "contains" | "regex" | "present"
             | "range", "value": str | [lo, hi] | bool, "ci": bool, "invert": bool,
             "missing_empty": bool}
    qmatch  {"name", "op": ... as hmatch minus range, "value", "ci": bool}
            ("ci" is always False for "regex": Envoy's ignore_case does not apply to safe_regex)
    action  {"kind": "cluster", "cluster"} | {"kind": "weighted", "clusters": [wc], "total"}
            ("total": the sum of the weights; Envoy ignores the deprecated total_weight)
            | {"kind": "cluster_header", "header", "not_found": int}
            | {"kind": "redirect", "scheme", "host", "port", "path", "prefix", "regex",
               "status", "strip_query"}
            | {"kind": "direct", "status", "body": str | None}
    wc      {"name", "weight", "headers": mutation, "fault": fault | None}
    mutation {"req_add": [[name, value, action]], "req_remove": [name],
              "resp_add": [[name, value, action]], "resp_remove": [name]}
              (action: "append" | "add_if_absent" | "overwrite_if_exists_or_add"
              | "overwrite_if_exists")
    retry   {"on": [str], "num": int, "per_try": float | None, "statuses": [int],
             "host_attempts": int, "previous_hosts": bool, "backoff": [base, max] | None}
    rewrite {"prefix": str | None, "regex": [pattern, substitution] | None,
             "host": str | None, "auto_host": bool, "host_header": str | None}
    fault   {"delay": [seconds, fraction] | None, "abort": [http_status | None,
             grpc_status | None, fraction] | None, "max_active": int | None}
    cors    {"origins": [smatch], "methods": str, "headers": str, "expose": str,
             "max_age": str, "credentials": bool | None, "enabled": float}
    hash    {"kind": "header" | "cookie" | "source_ip" | "query", "name": str, "terminal": bool}

Regular expressions are Envoy's RE2 ``google_re2`` programs; they are compiled with
Python's ``re`` here, which accepts the RE2 syntax istiod produces (an expression ``re``
refuses is a NACK with its error).  Envoy matches them against the whole value.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from google.protobuf.any_pb2 import Any as AnyMsg
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from ...errors import ConfigError

__all__ = ["translate_route_config", "duration", "fraction", "FAULT_FILTER", "CORS_FILTER",
           "DEFAULT_ROUTE_TIMEOUT"]

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
# Envoy's RouteAction.timeout when the field is absent (0 disables it).
DEFAULT_ROUTE_TIMEOUT = 15.0

_FAULT_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_CORS_URL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
_CONFIG_URL = "type.googleapis.com/envoy.config.route.v3.FilterConfig"

_APPEND = {
    base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD: "append",
    base_pb2.HeaderValueOption.ADD_IF_ABSENT: "add_if_absent",
    base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD: "overwrite_if_exists_or_add",
    base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS: "overwrite_if_exists",
}
_REDIRECT_CODES = {
    rc.RedirectAction.MOVED_PERMANENTLY: 301,
    rc.RedirectAction.FOUND: 302,
    rc.RedirectAction.SEE_OTHER: 303,
    rc.RedirectAction.TEMPORARY_REDIRECT: 307,
    rc.RedirectAction.PERMANENT_REDIRECT: 308,
}
_DENOMINATORS = {percent_pb2.FractionalPercent.HUNDRED: 100, percent_pb2.FractionalPercent.TEN_THOUSAND: 10_000,
                 percent_pb2.FractionalPercent.MILLION: 1_000_000}
# retry_on conditions Meshgate implements (Envoy's x-envoy-retry-on / x-envoy-retry-grpc-on
# names); others are refused with their name rather than silently never retried.
RETRY_ON = frozenset({"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
                      "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
                      "envoy-ratelimited", "http3-post-connect-failure",
                      "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"})
# HTTP filters whose per-route config Meshgate reads; Istio's own ones carry none that matter.
_IGNORED_PER_FILTER = ("istio.", "envoy.filters.http.grpc_stats", "envoy.filters.http.router")


def duration(d: Duration) -> float:
    return float(d.seconds) + float(d.nanos) / 1e9


def fraction(p: percent_pb2.FractionalPercent) -> float:
    """A FractionalPercent as a probability in [0, 1]."""
    den = _DENOMINATORS.get(p.denominator, 100)
    return min(1.0, float(p.numerator) / den)


class _Ctx:
    """Where in the route config we are, for error pointers."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def error(self, pointer: str, message: str) -> ConfigError:
        return ConfigError(pointer, message, kind="route_configs", id=self.name)


def _re2_refusal(pattern: str) -> str | None:
    """Why ``pattern`` is not an RE2 program Python's ``re`` runs the same way, or None.

    Python accepts constructs RE2 rejects (Envoy would NACK them) and reads RE2's POSIX
    classes as something else; both are refused rather than served differently."""
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if not in_class and nxt.isdigit() and nxt != "0":
                return f"backreference \\{nxt} (RE2 has none)"
            if nxt == "g" and pattern[i + 2:i + 3] == "<":
                return "backreference \\g<...> (RE2 has none)"
            i += 2
            continue
        if in_class:
            if c == "[" and pattern[i + 1:i + 2] == ":":
                return "POSIX character class [[:...:]] (Python's re reads it differently)"
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            i += 1
            # a ']' or '^]' right after '[' is a literal
            if pattern[i:i + 1] == "^":
                i += 1
            if pattern[i:i + 1] == "]":
                i += 1
            continue
        elif c == "(" and pattern[i + 1:i + 2] == "?":
            head = pattern[i + 2:i + 4]
            for lead, what in (("=", "lookahead"), ("!", "negative lookahead"), ("<=", "lookbehind"),
                               ("<!", "negative lookbehind"), (">", "atomic group"), ("(", "conditional group"),
                               ("P=", "named backreference")):
                if head.startswith(lead):
                    return f"{what} (?{lead}...) (RE2 has none)"
        elif c in "*+?" and pattern[i + 1:i + 2] == "+":
            return f"possessive quantifier {c}+ (RE2 has none)"
        i += 1
    return None


def _regex(ctx: _Ctx, pointer: str, pattern: str) -> str:
    why = _re2_refusal(pattern)
    if why is not None:
        raise ctx.error(pointer, f"invalid regex {pattern!r}: {why}")
    try:
        with warnings.catch_warnings():
            # "possible nested set" for a literal '[' in a class: RE2 reads it the same way
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(pattern)
    except re.error as e:
        raise ctx.error(pointer, f"invalid regex {pattern!r}: {e}") from None
    return pattern


def _string_match(ctx: _Ctx, pointer: str, m: string_pb2.StringMatcher) -> dict[str, Any]:
    which = m.WhichOneof("match_pattern")
    if which is None:
        raise ctx.error(pointer, "string matcher without a pattern; expected exact, prefix, suffix, contains "
                                 "or safe_regex")
    if which == "safe_regex":
        # Envoy: ignore_case has no effect on safe_regex (write (?i) in the regex instead)
        return {"op": "regex", "value": _regex(ctx, pointer + "/safe_regex/regex", m.safe_regex.regex),
                "ci": False}
    if which not in ("exact", "prefix", "suffix", "contains"):
        raise ctx.error(pointer + "/" + which, f"string matcher {which} is not supported; expected exact, prefix, "
                                               "suffix, contains or safe_regex")
    return {"op": which, "value": getattr(m, which), "ci": m.ignore_case}


def _header_match(ctx: _Ctx, pointer: str, h: rc.HeaderMatcher) -> dict[str, Any]:
    out: dict[str, Any] = {"name": h.name.lower(), "invert": h.invert_match,
                           "missing_empty": h.treat_missing_header_as_empty, "ci": False}
    which = h.WhichOneof("header_match_specifier")
    if which is None:
        # no specifier: the header must be present (Envoy's documented default)
        out.update(op="present", value=True)
    elif which == "exact_match":
        out.update(op="exact", value=h.exact_match)
    elif which == "safe_regex_match":
        out.update(op="regex", value=_regex(ctx, pointer + "/safe_regex_match/regex", h.safe_regex_match.regex))
    elif which == "range_match":
        out.update(op="range", value=[h.range_match.start, h.range_match.end])
    elif which == "present_match":
        out.update(op="present", value=h.present_match)
    elif which in ("prefix_match", "suffix_match", "contains_match"):
        out.update(op=which[:-6], value=getattr(h, which))
    elif which == "string_match":
        out.update(_string_match(ctx, pointer + "/string_match", h.string_match))
    else:
        raise ctx.error(pointer + "/" + which, f"header matcher {which} is not supported")
    return out


def _query_match(ctx: _Ctx, pointer: str, q: rc.QueryParameterMatcher) -> dict[str, Any]:
    out: dict[str, Any] = {"name": q.name}
    which = q.WhichOneof("query_parameter_match_specifier")
    if which is None or which == "present_match":
        out.update(op="present", value=True, ci=False)
    else:
        out.update(_string_match(ctx, pointer + "/string_match", q.string_match))
    return out


def _match(ctx: _Ctx, pointer: str, m: rc.RouteMatch) -> dict[str, Any]:
    which = m.WhichOneof("path_specifier")
    if which == "prefix":
        path = {"kind": "prefix", "value": m.prefix}
    elif which == "path":
        path = {"kind": "path", "value": m.path}
    elif which == "safe_regex":
        path = {"kind": "regex", "value": _regex(ctx, pointer + "/safe_regex/regex", m.safe_regex.regex)}
    elif which == "path_separated_prefix":
        v = m.path_separated_prefix
        if not v.startswith("/") or len(v) < 2 or v.endswith("/") or "?" in v or "#" in v:
            raise ctx.error(pointer + "/path_separated_prefix",
                            f"path_separated_prefix {v!r} must start with '/', not end with '/' and contain "
                            "no '?' or '#'")
        path = {"kind": "sep_prefix", "value": v}
    elif which is None:
        raise ctx.error(pointer, "route match without a path specifier; expected prefix, path, safe_regex or "
                                 "path_separated_prefix")
    else:
        raise ctx.error(pointer + "/" + which, f"path specifier {which} is not supported; expected prefix, path, "
                                               "safe_regex or path_separated_prefix")
    frac = None
    if m.HasField("runtime_fraction"):
        frac = fraction(m.runtime_fraction.default_value)
    for f in ("tls_context", "dynamic_metadata", "filter_state"):
        if (f == "tls_context" and m.HasField(f)) or (f != "tls_context" and len(getattr(m, f))):
            raise ctx.error(pointer + "/" + f, f"route match on {f} is not supported")
    return {
        "path": path,
        "ci": not (m.case_sensitive.value if m.HasField("case_sensitive") else True),
        "headers": [_header_match(ctx, f"{pointer}/headers/{i}", h) for i, h in enumerate(m.headers)],
        "query": [_query_match(ctx, f"{pointer}/query_parameters/{i}", q)
                  for i, q in enumerate(m.query_parameters)],
        "grpc": m.HasField("grpc"),
        "fraction": frac,
    }


def _header_options(ctx: _Ctx, pointer: str, opts: Any) -> list[list[str]]:
    out = []
    for i, o in enumerate(opts):
        name = o.header.key
        if not name:
            raise ctx.error(f"{pointer}/{i}/header/key", "empty header name")
        if o.HasField("append"):
            # deprecated BoolValue: true appends, false overwrites (Envoy's mapping)
            action = "append" if o.append.value else "overwrite_if_exists_or_add"
        else:
            action = _APPEND.get(o.append_action, "append")
        value = o.header.value if o.header.value else o.header.raw_value.decode("latin-1")
        if not value and not o.keep_empty_value:
            continue   # Envoy drops a header whose value is empty unless keep_empty_value
        out.append([name, value, action])
    return out


def _mutation(ctx: _Ctx, pointer: str, msg: Any) -> dict[str, Any]:
    return {
        "req_add": _header_options(ctx, pointer + "/request_headers_to_add", msg.request_headers_to_add),
        "req_remove": [h.lower() for h in msg.request_headers_to_remove],
        "resp_add": _header_options(ctx, pointer + "/response_headers_to_add", msg.response_headers_to_add)
        if hasattr(msg, "response_headers_to_add") else [],
        "resp_remove": [h.lower() for h in msg.response_headers_to_remove]
        if hasattr(msg, "response_headers_to_remove") else [],
    }


def _retry(ctx: _Ctx, pointer: str, r: rc.RetryPolicy) -> dict[str, Any]:
    on = [c.strip() for c in r.retry_on.split(",") if c.strip()]
    for c in on:
        if c not in RETRY_ON:
            raise ctx.error(pointer + "/retry_on", f"retry condition {c!r} is not supported; expected some of "
                                                   + ", ".join(sorted(RETRY_ON)))
    previous = False
    for i, p in enumerate(r.retry_host_predicate):
        if p.name in ("envoy.retry_host_predicates.previous_hosts",) or \
                p.typed_config.type_url.endswith("PreviousHostsPredicate"):
            previous = True
        elif p.name.startswith("envoy.retry_host_predicates."):
            continue   # omit_canary_hosts, omit_host_metadata: no canary/metadata hosts here
        else:
            raise ctx.error(f"{pointer}/retry_host_predicate/{i}", f"retry host predicate {p.name!r} is not supported")
    for field in ("retriable_headers", "retriable_request_headers"):
        if len(getattr(r, field)):
            raise ctx.error(f"{pointer}/{field}", f"retry {field} are not supported")
    backoff = None
    if r.HasField("retry_back_off"):
        base = duration(r.retry_back_off.base_interval)
        mx = duration(r.retry_back_off.max_interval) if r.retry_back_off.HasField("max_interval") else base * 10
        backoff = [base, mx]
    return {
        "on": on,
        "num": r.num_retries.value if r.HasField("num_retries") else 1,
        "per_try": duration(r.per_try_timeout) if r.HasField("per_try_timeout") else None,
        "statuses": list(r.retriable_status_codes),
        "host_attempts": int(r.host_selection_retry_max_attempts) or 1,
        "previous_hosts": previous,
        "backoff": backoff,
    }


def _unpack(ctx: _Ctx, pointer: str, anymsg: AnyMsg, msg: Any) -> Any:
    try:
        if not anymsg.Unpack(msg):
            raise ctx.error(pointer, f"expected {msg.DESCRIPTOR.full_name}, got {anymsg.type_url}")
    except DecodeError as e:
        raise ctx.error(pointer, f"cannot decode {anymsg.type_url}: {e}") from None
    return msg


def _per_filter(ctx: _Ctx, pointer: str, typed: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(fault, cors) from a typed_per_filter_config map; other filters' configs are checked."""
    fault = cors = None
    for name, anymsg in typed.items():
        p = f"{pointer}/{name}"
        url = anymsg.type_url
        optional = False
        if url == _CONFIG_URL:
            # envoy.config.route.v3.FilterConfig wraps a config (disabled / optional flags)
            fc = _unpack(ctx, p, anymsg, rc.FilterConfig())
            if fc.disabled or not fc.HasField("config"):
                continue
            optional = fc.is_optional
            anymsg = fc.config
            url = anymsg.type_url
            p += "/config"
        if name == FAULT_FILTER or url == _FAULT_URL:
            fault = _fault(ctx, p, _unpack(ctx, p, anymsg, fault_pb2.HTTPFault()))
        elif name == CORS_FILTER or url == _CORS_URL:
            cors = _cors(ctx, p, _unpack(ctx, p, anymsg, cors_pb2.CorsPolicy()))
        elif name.startswith(_IGNORED_PER_FILTER) or optional:
            continue   # an optional per-route config of an unknown filter is skipped, as Envoy does
        else:
            raise ctx.error(p, f"per-route config of HTTP filter {name!r} ({url}) is not supported")
    return fault, cors


def _fault(ctx: _Ctx, pointer: str, f: fault_pb2.HTTPFault) -> dict[str, Any] | None:
    delay = abort = None
    if f.HasField("delay"):
        d = f.delay
        if d.WhichOneof("fault_delay_secifier") == "header_delay":
            raise ctx.error(pointer + "/delay/header_delay", "header-controlled fault delays are not supported")
        # Envoy reads an unset percentage as its default FractionalPercent: 0 %
        delay = [duration(d.fixed_delay), fraction(d.percentage)]
    if f.HasField("abort"):
        a = f.abort
        which = a.WhichOneof("error_type")
        if which == "header_abort":
            raise ctx.error(pointer + "/abort/header_abort", "header-controlled fault aborts are not supported")
        pct = fraction(a.percentage)
        if which == "http_status":
            if not 200 <= a.http_status < 600:
                raise ctx.error(pointer + "/abort/http_status", f"abort status {a.http_status} out of [200, 600)")
            abort = [a.http_status, None, pct]
        elif which == "grpc_status":
            abort = [None, a.grpc_status, pct]
        else:
            raise ctx.error(pointer + "/abort", "fault abort without http_status or grpc_status")
    if f.HasField("response_rate_limit"):
        raise ctx.error(pointer + "/response_rate_limit", "fault response_rate_limit is not supported")
    # restrictions of which requests get the fault: dropping them would fault every request
    for field in ("headers", "downstream_nodes"):
        if len(getattr(f, field)):
            raise ctx.error(f"{pointer}/{field}", f"fault {field} restrictions are not supported")
    if f.upstream_cluster:
        raise ctx.error(pointer + "/upstream_cluster", "fault upstream_cluster restrictions are not supported")
    if delay is None and abort is None:
        return None
    return {"delay": delay, "abort": abort,
            "max_active": f.max_active_faults.value if f.HasField("max_active_faults") else None}


def _cors(ctx: _Ctx, pointer: str, c: Any) -> dict[str, Any]:
    """A cors.v3.CorsPolicy, or the deprecated route.v3.CorsPolicy (same field names)."""
    enabled = 1.0
    if c.HasField("filter_enabled"):
        enabled = fraction(c.filter_enabled.default_value)
    return {
        "origins": [_string_match(ctx, f"{pointer}/allow_origin_string_match/{i}", m)
                    for i, m in enumerate(c.allow_origin_string_match)],
        "methods": c.allow_methods, "headers": c.allow_headers, "expose": c.expose_headers,
        "max_age": c.max_age,
        "credentials": c.allow_credentials.value if c.HasField("allow_credentials") else None,
        "enabled": enabled,
    }


def _redirect(ctx: _Ctx, pointer: str, r: rc.RedirectAction) -> dict[str, Any]:
    scheme = None
    if r.WhichOneof("scheme_rewrite_specifier") == "https_redirect" and r.https_redirect:
        scheme = "https"
    elif r.WhichOneof("scheme_rewrite_specifier") == "scheme_redirect":
        scheme = r.scheme_redirect
    path = prefix = regex = None
    which = r.WhichOneof("path_rewrite_specifier")
    if which == "path_redirect":
        path = r.path_redirect
    elif which == "prefix_rewrite":
        prefix = r.prefix_rewrite
    elif which == "regex_rewrite":
        regex = [_regex(ctx, pointer + "/regex_rewrite/pattern/regex", r.regex_rewrite.pattern.regex),
                 r.regex_rewrite.substitution]
    return {"kind": "redirect", "scheme": scheme, "host": r.host_redirect or None,
            "port": r.port_redirect or None, "path": path, "prefix": prefix, "regex": regex,
            "status": _REDIRECT_CODES.get(r.response_code, 301), "strip_query": r.strip_query}


def _hash(ctx: _Ctx, pointer: str, hp: Any) -> list[dict[str, Any]]:
    out = []
    for i, h in enumerate(hp):
        which = h.WhichOneof("policy_specifier")
        if which == "header":
            out.append({"kind": "header", "name": h.header.header_name.lower(), "terminal": h.terminal})
        elif which == "cookie":
            out.append({"kind": "cookie", "name": h.cookie.name, "terminal": h.terminal})
        elif which == "connection_properties":
            out.append({"kind": "source_ip", "name": "", "terminal": h.terminal})
        elif which == "query_parameter":
            out.append({"kind": "query", "name": h.query_parameter.name, "terminal": h.terminal})
        elif which is None:
            raise ctx.error(f"{pointer}/{i}", "hash policy without a policy specifier; expected header, cookie, "
                                              "connection_properties or query_parameter")
        else:
            raise ctx.error(f"{pointer}/{i}/{which}", f"hash policy {which} is not supported")
    return out


_UNSUPPORTED_ACTION = ("cluster_specifier_plugin", "inline_cluster_specifier_plugin")


def _route(ctx: _Ctx, pointer: str, r: rc.Route, max_body: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": r.name,
        "match": _match(ctx, pointer + "/match", r.match),
        "headers": _mutation(ctx, pointer, r),
        "timeout": DEFAULT_ROUTE_TIMEOUT, "idle_timeout": None, "retry": None,
        "rewrite": {"prefix": None, "regex": None, "host": None, "auto_host": False, "host_header": None},
        "mirrors": [], "hash": [], "fault": None, "cors": None,
        "metadata_config": None, "decorator": r.decorator.operation or None,
    }
    istio_md = r.metadata.filter_metadata.get("istio")
    if istio_md is not None and "config" in istio_md.fields:
        out["metadata_config"] = istio_md.fields["config"].string_value
    out["fault"], out["cors"] = _per_filter(ctx, pointer + "/typed_per_filter_config", r.typed_per_filter_config)
    if out["cors"] is None and r.WhichOneof("action") == "route" and r.route.HasField("cors"):
        out["cors"] = _cors(ctx, pointer + "/route/cors", r.route.cors)   # deprecated field, pre-1.16 istiod
    which = r.WhichOneof("action")
    if which == "route":
        a = r.route
        p = pointer + "/route"
        spec = a.WhichOneof("cluster_specifier")
        if spec == "cluster":
            out["action"] = {"kind": "cluster", "cluster": a.cluster}
        elif spec == "weighted_clusters":
            wcs = []
            for i, wc in enumerate(a.weighted_clusters.clusters):
                if not wc.name:
                    raise ctx.error(f"{p}/weighted_clusters/clusters/{i}/name",
                                    "weighted cluster without a name (cluster_header is not supported)")
                wfault, _wcors = _per_filter(ctx, f"{p}/weighted_clusters/clusters/{i}/typed_per_filter_config",
                                             wc.typed_per_filter_config)
                wcs.append({"name": wc.name, "weight": wc.weight.value if wc.HasField("weight") else 0,
                            "headers": _mutation(ctx, f"{p}/weighted_clusters/clusters/{i}", wc), "fault": wfault})
            # total_weight is deprecated: Envoy picks by the sum of the weights
            total = sum(w["weight"] for w in wcs)
            if total <= 0:
                raise ctx.error(p + "/weighted_clusters", "weighted clusters sum to 0; expected a positive total")
            out["action"] = {"kind": "weighted", "clusters": wcs, "total": total}
        elif spec == "cluster_header":
            nf = 503 if a.cluster_not_found_response_code == rc.RouteAction.SERVICE_UNAVAILABLE else (
                404 if a.cluster_not_found_response_code == rc.RouteAction.NOT_FOUND else 500)
            out["action"] = {"kind": "cluster_header", "header": a.cluster_header.lower(), "not_found": nf}
        else:
            raise ctx.error(p + (f"/{spec}" if spec else ""),
                            f"route action {spec or 'without a cluster'} is not supported; expected cluster, "
                            "weighted_clusters or cluster_header")
        if a.HasField("timeout"):
            out["timeout"] = duration(a.timeout)
        if a.HasField("max_stream_duration") and a.max_stream_duration.HasField("max_stream_duration"):
            msd = duration(a.max_stream_duration.max_stream_duration)
            if msd and (not out["timeout"] or msd < out["timeout"]):
                out["timeout"] = msd
        if a.HasField("idle_timeout"):
            out["idle_timeout"] = duration(a.idle_timeout)
        if a.HasField("retry_policy"):
            out["retry"] = _retry(ctx, p + "/retry_policy", a.retry_policy)
        elif a.HasField("retry_policy_typed_config"):
            raise ctx.error(p + "/retry_policy_typed_config", "typed retry policies are not supported")
        rw = out["rewrite"]
        if a.prefix_rewrite:
            rw["prefix"] = a.prefix_rewrite
        if a.HasField("regex_rewrite"):
            if a.prefix_rewrite:
                raise ctx.error(p + "/regex_rewrite", "prefix_rewrite and regex_rewrite are mutually exclusive")
            rw["regex"] = [_regex(ctx, p + "/regex_rewrite/pattern/regex", a.regex_rewrite.pattern.regex),
                           a.regex_rewrite.substitution]
        if a.HasField("path_rewrite_policy"):
            raise ctx.error(p + "/path_rewrite_policy", "path rewrite policies (URI templates) are not supported")
        hw = a.WhichOneof("host_rewrite_specifier")
        if hw == "host_rewrite_literal":
            rw["host"] = a.host_rewrite_literal
        elif hw == "auto_host_rewrite":
            rw["auto_host"] = a.auto_host_rewrite.value
        elif hw == "host_rewrite_header":
            rw["host_header"] = a.host_rewrite_header.lower()
        elif hw is not None:
            raise ctx.error(f"{p}/{hw}", f"host rewrite {hw} is not supported")
        for i, m in enumerate(a.request_mirror_policies):
            frac = fraction(m.runtime_fraction.default_value) if m.HasField("runtime_fraction") else 1.0
            if not m.cluster:
                raise ctx.error(f"{p}/request_mirror_policies/{i}/cluster", "mirror policy without a cluster")
            out["mirrors"].append({"cluster": m.cluster, "fraction": frac})
        out["hash"] = _hash(ctx, p + "/hash_policy", a.hash_policy)
        for f in _UNSUPPORTED_ACTION:
            if a.HasField(f):
                raise ctx.error(f"{p}/{f}", f"{f} is not supported")
    elif which == "redirect":
        out["action"] = _redirect(ctx, pointer + "/redirect", r.redirect)
    elif which == "direct_response":
        d = r.direct_response
        body: str | None = None
        src = None
        if d.HasField("body"):
            src = d.body.WhichOneof("specifier")
            if src == "inline_string":
                body = d.body.inline_string
            elif src == "inline_bytes":
                body = d.body.inline_bytes.decode("latin-1")
            else:
                raise ctx.error(pointer + "/direct_response/body", f"direct response body from {src} is not "
                                                                   "supported; expected inline_string or inline_bytes")
        if not 200 <= d.status < 600:
            raise ctx.error(pointer + "/direct_response/status", f"status {d.status} out of [200, 600)")
        if body is not None and len(body.encode("latin-1" if src == "inline_bytes" else "utf-8")) > max_body:
            raise ctx.error(pointer + "/direct_response/body", f"body of {len(body)} bytes exceeds "
                                                               f"max_direct_response_body_size_bytes {max_body}")
        out["action"] = {"kind": "direct", "status": d.status, "body": body}
    elif which == "non_forwarding_action":
        out["action"] = {"kind": "direct", "status": 404, "body": None}
    else:
        raise ctx.error(pointer, f"route action {which or 'missing'} is not supported; expected route, redirect "
                                 "or direct_response")
    return out


def _vhost(ctx: _Ctx, pointer: str, v: rc.VirtualHost, max_body: int) -> dict[str, Any]:
    if not v.domains:
        raise ctx.error(pointer + "/domains", "virtual host without domains")
    if v.HasField("matcher"):
        raise ctx.error(pointer + "/matcher", "generic matcher trees are not supported; expected routes")
    if len(v.request_mirror_policies):
        raise ctx.error(pointer + "/request_mirror_policies", "virtual-host mirror policies are not supported; "
                                                              "expected them on the routes")
    fault, cors = _per_filter(ctx, pointer + "/typed_per_filter_config", v.typed_per_filter_config)
    if cors is None and v.HasField("cors"):
        cors = _cors(ctx, pointer + "/cors", v.cors)   # deprecated field
    return {
        "name": v.name,
        "domains": [d.lower() for d in v.domains],
        "routes": [_route(ctx, f"{pointer}/routes/{i}", r, max_body) for i, r in enumerate(v.routes)],
        "headers": _mutation(ctx, pointer, v),
        "retry": _retry(ctx, pointer + "/retry_policy", v.retry_policy) if v.HasField("retry_policy") else None,
        "fault": fault, "cors": cors,
        "require_tls": rc.VirtualHost.TlsRequirementType.Name(v.require_tls),
        "attempt_count": v.include_request_attempt_count,
    }


def translate_route_config(rcfg: route_pb2.RouteConfiguration, *, name: str | None = None) -> dict[str, Any]:
    """The mesh route table for one RouteConfiguration (``name``: the RDS name, or the inline
    config's owner).  Domains are checked as Envoy does: one vhost per domain, a wildcard
    only at the start or end, no duplicate domain across vhosts."""
    ctx = _Ctx(name or rcfg.name)
    max_body = rcfg.max_direct_response_body_size_bytes.value \
        if rcfg.HasField("max_direct_response_body_size_bytes") else 4096
    seen: dict[str, str] = {}
    vhosts = []
    for i, v in enumerate(rcfg.virtual_hosts):
        vh = _vhost(ctx, f"/virtual_hosts/{i}", v, max_body)
        for d in vh["domains"]:
            if d != "*" and "*" in d[1:-1]:
                raise ctx.error(f"/virtual_hosts/{i}/domains", f"domain {d!r}: a wildcard is allowed only as "
                                                               "the first or last character")
            if d in seen:
                raise ctx.error(f"/virtual_hosts/{i}/domains",
                                f"domain {d!r} is already used by virtual host {seen[d]!r}; domains must be unique")
            seen[d] = vh["name"]
        vhosts.append(vh)
    if rcfg.vhds.ByteSize():
        raise ctx.error("/vhds", "on-demand virtual hosts (VHDS) are not supported")
    if len(rcfg.request_mirror_policies):
        raise ctx.error("/request_mirror_policies", "route-configuration mirror policies are not supported; "
                                                    "expected them on the routes")
    fault, cors = _per_filter(ctx, "/typed_per_filter_config", rcfg.typed_per_filter_config)
    if fault is not None or cors is not None:
        raise ctx.error("/typed_per_filter_config", "route-configuration fault / CORS configs are not supported; "
                                                    "expected them on the virtual hosts or routes")
    return {
        "name": rcfg.name,
        "virtual_hosts": vhosts,
        "ignore_port": rcfg.ignore_port_in_host_matching,
        "headers": _mutation(ctx, "", rcfg),
        "max_direct_body": max_body,
    }
