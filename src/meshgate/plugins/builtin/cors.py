"""cors: Cross-Origin Resource Sharing headers (APISIX ``cors``).

APISIX semantics (``apisix/plugins/cors.lua``, ``t/plugin/cors*.t``):

* ``rewrite``: the request's ``Origin`` is remembered (later plugins may rewrite the header)
  and every ``OPTIONS`` request is answered at once with ``200`` and an empty body.
* ``header_filter`` (every response: upstream answers, the preflight, and local answers such
  as an auth plugin's 401): the allowed origin is chosen from, in order,
  ``allow_origins_by_metadata`` (keys into the plugin metadata's ``allow_origins`` map),
  ``allow_origins_by_regex`` (searched in the Origin; when set, it replaces ``allow_origins``)
  or ``allow_origins`` (``*``; ``**`` = echo the Origin, or ``*`` without one; one origin; or a
  comma list, where only an Origin in the list is echoed).  With an allowed origin the
  ``Access-Control-Allow-{Origin,Methods,Headers}``, ``-Max-Age``, ``-Expose-Headers`` (when
  not empty) and ``-Allow-Credentials: true`` (when ``allow_credential``) headers replace the
  upstream's; ``allow_methods: "**"`` is the full method list and ``allow_headers: "**"``
  echoes ``Access-Control-Request-Headers``.  ``Vary: Origin`` is added whenever
  ``allow_origins`` is not ``*``.  ``Timing-Allow-Origin`` comes from
  ``timing_allow_origins(_by_regex)`` the same way.
* ``allow_credential: true`` with ``*`` in any other option is refused by ``check_schema``.

Comma lists and regexes are compiled once per config version in :func:`prepare`; the metadata
lists are parsed once per distinct value (small LRU), since metadata changes independently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .ua_restriction import RuleSet

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "METADATA_SCHEMA", "check_schema", "prepare", "rewrite",
           "header_filter"]

NAME = "cors"
PRIORITY = 4000
VERSION = "0.1"

ORIGINS_PATTERN = r"^(\*|\*\*|null|\w+://[^,]+(,\w+://[^,]+)*)$"
ALL_METHODS = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"

_REGEX_LIST: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4096},
                               "minItems": 1, "uniqueItems": True}

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "allow_origins": {"type": "object",
                          "additionalProperties": {"type": "string", "pattern": ORIGINS_PATTERN}},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "allow_origins": {"type": "string", "pattern": ORIGINS_PATTERN, "default": "*"},
        "allow_methods": {"type": "string", "default": "*"},
        "allow_headers": {"type": "string", "default": "*"},
        "expose_headers": {"type": "string"},
        "max_age": {"type": "integer", "default": 5},
        "allow_credential": {"type": "boolean", "default": False},
        "allow_origins_by_regex": _REGEX_LIST,
        "allow_origins_by_metadata": _REGEX_LIST,
        "timing_allow_origins": {"type": "string", "pattern": ORIGINS_PATTERN},
        "timing_allow_origins_by_regex": _REGEX_LIST,
    },
}

_ORIGIN_KEY = "_cors_origin"   # ctx variable: the Origin as the client sent it


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    if schema_type == "metadata":
        return None   # METADATA_SCHEMA says it all
    if conf.get("allow_credential"):
        # APISIX applies the defaults first: an absent allow_origins/methods/headers is "*".
        if (conf.get("allow_origins", "*") == "*" or conf.get("allow_methods", "*") == "*"
                or conf.get("allow_headers", "*") == "*" or conf.get("expose_headers") == "*"
                or conf.get("timing_allow_origins") == "*"):
            return "you can not set '*' for other option when 'allow_credential' is true"
    for key in ("allow_origins_by_regex", "timing_allow_origins_by_regex"):
        for rule in conf.get(key) or ():
            try:
                re.compile(rule)
            except re.error as e:
                return f"failed to compile regex {rule!r}: {e}"
    return None


@dataclass(frozen=True, slots=True)
class Origins:
    """One ``allow_origins``-style value, parsed: ``*``, ``**``, one origin, or a set."""

    value: str
    many: frozenset[str] | None

    def allowed(self, req_origin: str | None) -> str | None:
        """APISIX process_with_allow_origins: the value to send, or None."""
        value = self.value
        if value == "**":
            return req_origin or "*"
        if self.many is not None:
            return req_origin if req_origin in self.many else None
        return value


@lru_cache(maxsize=256)
def parse_origins(value: str) -> Origins:
    if "," not in value or value == "**":
        return Origins(value, None)
    return Origins(value, frozenset(p for p in value.split(",") if p))


@dataclass(frozen=True, slots=True)
class Prepared:
    allow_origins: str
    origins: Origins
    regex: RuleSet | None
    by_metadata: tuple[str, ...] | None
    timing: Origins | None
    timing_regex: RuleSet | None
    headers: tuple[tuple[str, str], ...]    # Methods, Max-Age, Expose-Headers (fixed per conf)
    allow_headers: str | None               # None: echo Access-Control-Request-Headers ("**")
    credential: bool


def _alternation(rules: list[str] | None) -> RuleSet | None:
    # APISIX joins the rules with "|" and searches the Origin: a hit of any rule.
    return RuleSet(rules) if rules else None


def prepare(conf: dict[str, Any]) -> Prepared:
    allow_origins = conf.get("allow_origins", "*")
    methods = conf.get("allow_methods", "*")
    fixed = [("Access-Control-Allow-Methods", ALL_METHODS if methods == "**" else methods),
             ("Access-Control-Max-Age", str(conf.get("max_age", 5)))]
    expose = conf.get("expose_headers")
    if expose:
        fixed.append(("Access-Control-Expose-Headers", expose))
    allow_headers = conf.get("allow_headers", "*")
    timing = conf.get("timing_allow_origins")
    return Prepared(
        allow_origins=allow_origins, origins=parse_origins(allow_origins),
        regex=_alternation(conf.get("allow_origins_by_regex")),
        by_metadata=tuple(conf["allow_origins_by_metadata"]) if conf.get("allow_origins_by_metadata") else None,
        timing=parse_origins(timing) if timing else None,
        timing_regex=_alternation(conf.get("timing_allow_origins_by_regex")),
        headers=tuple(fixed), allow_headers=None if allow_headers == "**" else allow_headers,
        credential=bool(conf.get("allow_credential", False)))


def rewrite(conf: Prepared, ctx: Any) -> tuple[int, None] | None:
    ctx.set_var(_ORIGIN_KEY, ctx.req_header("origin") or "")
    if ctx.var("request_method") == "OPTIONS":
        return 200, None
    return None


def _matches(req_origin: str | None, allowed: str | None) -> bool:
    # APISIX match_origins; Lua's nil == nil makes "no Origin, nothing allowed" a match too.
    return allowed == "*" or req_origin == allowed


def _by_regex(regex: RuleSet, req_origin: str | None) -> str | None:
    if req_origin is None:
        return None
    return req_origin if regex.search(req_origin) else None


def _by_metadata(keys: tuple[str, ...] | None, ctx: Any, req_origin: str | None) -> str | None:
    if keys is None:
        return None
    meta = ctx.plugin_metadata(NAME)
    if not meta:
        return None
    table = meta.get("allow_origins")
    if not isinstance(table, dict):
        return None
    for key in keys:
        value = table.get(key)
        if not isinstance(value, str):
            continue
        if _matches(req_origin, parse_origins(value).allowed(req_origin)):
            return req_origin
    return None


def _request_origin(ctx: Any) -> str | None:
    saved = ctx.var(_ORIGIN_KEY)
    if saved is None:   # rewrite did not run (e.g. a global rule answered first)
        saved = ctx.req_header("origin")
    return saved or None


def header_filter(conf: Prepared, ctx: Any) -> None:
    req_origin = _request_origin(ctx)
    allow: str | None = None
    local = True
    if conf.by_metadata is not None:
        allow = _by_metadata(conf.by_metadata, ctx, req_origin)
        # allow_origins is only consulted besides the metadata when it is not the default "*"
        local = not _matches(req_origin, allow) and conf.allow_origins != "*"
    if local:
        if conf.regex is None:
            allow = conf.origins.allowed(req_origin)
        else:
            allow = _by_regex(conf.regex, req_origin)
    if not _matches(req_origin, allow):
        allow = _by_metadata(conf.by_metadata, ctx, req_origin)
    if conf.allow_origins != "*":
        ctx.add_resp_header("Vary", "Origin")
    if allow:
        ctx.set_resp_header("Access-Control-Allow-Origin", allow)
        ctx.set_var("cors_allow_origins", allow)   # APISIX ctx.cors_allow_origins (grpc-web reads it)
        for name, value in conf.headers:
            ctx.set_resp_header(name, value)
        if conf.allow_headers is None:
            ctx.set_resp_header("Access-Control-Allow-Headers", ctx.req_header("access-control-request-headers"))
        else:
            ctx.set_resp_header("Access-Control-Allow-Headers", conf.allow_headers)
        if conf.credential:
            ctx.set_resp_header("Access-Control-Allow-Credentials", "true")

    timing: str | None = None
    if conf.timing_regex is not None:
        timing = _by_regex(conf.timing_regex, req_origin)
    elif conf.timing is not None:
        timing = conf.timing.allowed(req_origin)
    if timing and _matches(req_origin, timing):
        ctx.set_resp_header("Timing-Allow-Origin", timing)
