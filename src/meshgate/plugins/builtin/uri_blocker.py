"""uri-blocker: refuse requests whose URI matches one of the block rules (APISIX ``uri-blocker``).

APISIX semantics (``apisix/plugins/uri-blocker.lua``, ``t/plugin/uri-blocker.t``): the rules
(regular expressions, searched anywhere) are joined with ``|`` (prefixed ``(?i)`` with
``case_insensitive``) and searched in ``$request_uri`` (path and query as the client sent
them); a hit answers ``rejected_code`` (default 403) with ``{"error_msg": <rejected_msg>}``,
or no body when ``rejected_msg`` is not set.

Matching the raw request-target alone lets a client dodge a rule by spelling the same path
differently (``//internal``, ``/./internal``, ``/%69nternal``, ``/internal;x``...).  Every
spelling a backend may act upon is therefore tried, and one hit blocks:

* ``$request_uri``, raw (APISIX's subject, so every APISIX rule keeps its meaning);
* the normalised path ``$uri`` (percent-decoded, dot segments resolved, slashes merged: what
  the gateway routes on and sends upstream), alone and followed by ``?`` and the query;
* the same with the query percent-decoded (``+`` as space, as form decoders read it);
* the path with ``;parameters`` removed from every segment (``/admin;jsessionid=1/x`` is
  ``/admin/x`` to Tomcat/Spring-style backends);
* the path with any escape the normaliser kept (``%2F``, ``%5C``, ``%25`` when escaped
  slashes are kept) decoded once more.

With ``case_insensitive`` all of them are matched ignoring case.  The rules are compiled once
per config version in :func:`prepare`, one by one (:class:`RuleSet`: a rule's inline flags and
group numbers keep their meaning, which a ``|``-joined pattern would change).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_plus

from .ua_restriction import RuleSet

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "candidates", "rewrite"]

NAME = "uri-blocker"
PRIORITY = 2900
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "block_rules": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4096},
                        "uniqueItems": True},
        "rejected_code": {"type": "integer", "minimum": 200, "default": 403},
        "rejected_msg": {"type": "string", "minLength": 1},
        "case_insensitive": {"type": "boolean", "default": False},
    },
    "required": ["block_rules"],
}


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    flags = re.IGNORECASE if conf.get("case_insensitive") else 0
    for rule in conf.get("block_rules") or ():
        try:
            re.compile(rule, flags)
        except re.error as e:
            return f"failed to compile regex {rule!r}: {e}"
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    rules: RuleSet | None
    code: int
    body: dict[str, str] | None


def prepare(conf: dict[str, Any]) -> Prepared:
    rules = conf.get("block_rules") or []
    flags = re.IGNORECASE if conf.get("case_insensitive") else 0
    msg = conf.get("rejected_msg")
    return Prepared(rules=RuleSet(rules, flags) if rules else None, code=int(conf.get("rejected_code", 403)),
                    body={"error_msg": msg} if msg is not None else None)


_PARAMS = re.compile(r";[^/]*")


def candidates(request_uri: str, path: str, query: str | None) -> list[str]:
    """Every spelling of the request's URI that a rule is tried on (see the module doc)."""
    out = [request_uri]
    paths = [path]
    if ";" in path:
        paths.append(_PARAMS.sub("", path))
    if "%" in path:
        paths.append(unquote(path))
    queries: list[str] = []
    if query is not None:
        queries.append(query)
        if "%" in query or "+" in query:
            queries.append(unquote_plus(query))
    for p in paths:
        out.append(p)
        out.extend(f"{p}?{q}" for q in queries)
    return out


def rewrite(conf: Prepared, ctx: Any) -> tuple[int, dict[str, str] | None] | None:
    rules = conf.rules
    if rules is None:
        return None
    request_uri = ctx.var("request_uri") or ""
    path = ctx.var("uri") or ""
    # Fast path: a canonical target with no query is its own normalised form.
    if request_uri == path:
        hit = rules.search(path)
        if not hit and (";" in path or "%" in path):
            hit = any(rules.search(c) for c in candidates(request_uri, path, None))
    else:
        hit = any(rules.search(c) for c in candidates(request_uri, path, ctx.var("query_string")))
    if hit:
        return conf.code, conf.body
    return None
