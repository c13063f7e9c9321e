"""Validation of APISIX objects: JSON Schema plus the checks APISIX performs in code.

:func:`validate_item` returns every problem of one item as :class:`ConfigError` values with
an RFC 6901 pointer relative to the item and an "expected ..., got ..." message, e.g.
``/upstream/nodes/0/port: expected integer 1..65535, got "x"``.  It never raises for bad
input; callers decide whether an error rejects the item (every config source does: a bad
item is rejected alone, apisix-semantics.md 6.2/6.3).

Schema errors come from ``jsonschema`` (draft 7) and are rewritten here: combinators
(``anyOf``/``oneOf``) are resolved to the branch matching the value's type so that the
message names the deepest offending field.  Whole-object rules that APISIX expresses with
combinators on the route, upstream and ssl schemas (uri xor uris, host xor hosts, nodes xor
discovery, sni/snis...) are reported by explicit checks instead, with APISIX's wording where
APISIX has one (``upstream_host`` with ``pass_host: rewrite``).

Config-supplied Lua (route ``filter_func``, ``script``/``script_id``, a plugin's
``_meta.pre_function``) is rejected: executing code taken from configuration is how
CVE-2020-13945 turned a leaked admin key into remote code execution.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from ..errors import ConfigError
from .describe import type_name
from .kinds import KINDS
from .schemas import (
    CREDENTIAL_ID_PATTERN,
    CREDENTIAL_SCHEMA,
    ROUTE_SCHEMA,
    SCHEMAS,
    SECRET_MANAGER_SCHEMAS,
    SSL_SCHEMA,
    UPSTREAM_HASH_HEADER_PATTERN,
    UPSTREAM_HASH_VARS_PATTERN,
    UPSTREAM_SCHEMA,
    _UPSTREAM_TLS,
)

__all__ = ["validate_item", "check_references", "normalize_id", "json_pointer", "credential_owner"]

Path = list[str | int]
_Add = Callable[[Path, str], None]

_FORMAT_CHECKER = Draft7Validator.FORMAT_CHECKER


# Schema nodes whose combinators (whole-object rules: uri xor uris, nodes xor discovery,
# sni/snis...) are enforced by the explicit checks below, with clearer messages.  They are
# left out of the schemas we validate with, which also halves the validation time.
_COVERED = {
    id(ROUTE_SCHEMA),
    id(UPSTREAM_SCHEMA),
    id(SSL_SCHEMA),
    id(_UPSTREAM_TLS["dependencies"]["client_cert_id"]),
}
_COMBINATORS = {"allOf", "anyOf", "oneOf", "not", "if", "then", "else"}


def _without_covered(node: Any) -> Any:
    """Copy of a schema without the combinators of the _COVERED nodes."""
    if isinstance(node, Mapping):
        drop = _COMBINATORS if id(node) in _COVERED else ()
        return {k: _without_covered(v) for k, v in node.items() if k not in drop}
    if isinstance(node, list):
        return [_without_covered(v) for v in node]
    return node


def _validator(schema: Mapping[str, Any]) -> Draft7Validator:
    return Draft7Validator(_without_covered(schema), format_checker=_FORMAT_CHECKER)


_VALIDATORS: dict[str, Draft7Validator] = {kind: _validator(s) for kind, s in SCHEMAS.items()}
_VALIDATORS["credentials"] = _validator(CREDENTIAL_SCHEMA)
_SECRET_VALIDATORS = {m: _validator(s) for m, s in SECRET_MANAGER_SCHEMAS.items()}

_LUA_CVE = "Meshgate does not execute Lua code supplied in configuration (CVE-2020-13945)"


# --- public helpers -----------------------------------------------------------------------


def normalize_id(v: object) -> str:
    """The canonical (string) form of an object id: ``1`` and ``"1"`` are the same object.

    Raises :class:`TypeError` for values that cannot be ids (bool, null, objects...).
    """
    if isinstance(v, bool):
        raise TypeError("expected id string or integer, got boolean")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, str):
        return v
    raise TypeError(f"expected id string or integer, got {type_name(v, json=True)}")


def json_pointer(path: Iterable[str | int]) -> str:
    """RFC 6901 pointer for a path of keys/indexes (``""`` is the whole document)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


_CREDENTIAL_ID = re.compile(CREDENTIAL_ID_PATTERN)
_CREDENTIALS_SEP = "/credentials/"


def credential_owner(kind: str, id: str | None) -> tuple[str, str] | None:
    """``(username, credential id)`` when ``id`` names a consumer's credential: APISIX 3.x
    stores credentials under their consumer (``consumers/<username>/credentials/<id>``), so
    in the one model they are items of the ``consumers`` kind with that id; else None."""
    if kind != "consumers" or id is None or _CREDENTIALS_SEP not in id:
        return None
    username, _, cred = id.partition(_CREDENTIALS_SEP)
    return username, cred


# --- validate_item ------------------------------------------------------------------------


def validate_item(kind: str, value: Mapping[str, Any], *, id: str | None = None) -> list[ConfigError]:
    """Validate one object of ``kind`` (a :data:`KINDS` name, or ``"credentials"``).

    ``id`` is the key the object is stored under (Admin API URL, etcd key): it names the
    object in errors and, when the value carries no ``id`` field of its own, is used as its
    id for the schema (APISIX injects the URL id the same way).  A ``consumers`` item whose
    id is ``<username>/credentials/<id>`` is a credential and is checked as one (APISIX
    ``consumer.lua`` check_consumer: the credential schema for keys under ``credentials``).
    Returns ``[]`` when valid.
    """
    if kind not in _VALIDATORS:
        raise KeyError(f"unknown kind {kind!r}")
    rule = kind
    if credential_owner(kind, id) is not None:
        rule = "credentials"
    key_field = KINDS[kind].key_field if kind in KINDS and rule == kind else "id"

    err_id = id
    if err_id is None and isinstance(value, Mapping):
        try:
            err_id = normalize_id(value.get(key_field)) if value.get(key_field) is not None else None
        except TypeError:
            err_id = None

    out: list[ConfigError] = []
    seen: set[tuple[str, str]] = set()

    def add(path: Path, message: str) -> None:
        ptr = json_pointer(path)
        if (ptr, message) not in seen:
            seen.add((ptr, message))
            out.append(ConfigError(ptr, message, kind=kind, id=err_id))

    if not isinstance(value, Mapping):
        add([], f"expected object, got {_got(value)}")
        return out

    doc: Mapping[str, Any] = value
    if id is not None and key_field == "id" and "id" not in value:
        doc = {**value, "id": id}
    elif rule != kind and id is not None and not _CREDENTIAL_ID.match(id):
        # the value has an id of its own: the key is still checked (the schema checks an injected one)
        add([], f"expected id <username>/credentials/<id> matching {CREDENTIAL_ID_PATTERN}, got {_json(id)}")

    # Reloads (file, etcd resync, full-state push) re-validate mostly unchanged items:
    # remember which exact documents were valid.  Only JSON-shaped values are cached.
    try:
        cache_key: tuple[str, str | None, str] | None = (
            kind, id, json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        cache_key = None
    if cache_key is not None and cache_key in _VALID_CACHE:
        return out

    _schema_errors(_VALIDATORS[rule], doc, [], add)
    _CHECKS.get(rule, _no_check)(doc, add, id)
    if not out and cache_key is not None:
        if len(_VALID_CACHE) >= _VALID_CACHE_SIZE:
            try:
                _VALID_CACHE.pop(next(iter(_VALID_CACHE)), None)  # evict the oldest entry
            except (StopIteration, RuntimeError):  # emptied / resized by another thread
                pass
        _VALID_CACHE[cache_key] = None
    return out


_VALID_CACHE: dict[tuple[str, str | None, str], None] = {}
_VALID_CACHE_SIZE = 32768


def _schema_errors(validator: Draft7Validator, doc: Any, base: Path, add: _Add) -> None:
    try:
        errors = list(validator.iter_errors(doc))
    except TypeError:
        # jsonschema matches patternProperties with re.search on keys: non-string keys
        # (possible from YAML, never from JSON) would crash it.
        add(base, "expected object keys to be strings")
        return
    except RecursionError:
        add(base, "value is nested too deeply")
        return
    # One message per field: a value failing several keywords of the same schema (say
    # minLength and pattern) is reported once, by the first keyword.
    reported: set[str] = set()

    def add_once(path: Path, message: str) -> None:
        ptr = json_pointer(path)
        if ptr not in reported:
            reported.add(ptr)
            add(path, message)

    for err in errors:
        _convert(err, base, add_once)


def _convert(err: ValidationError, base: Path, add: _Add) -> None:
    """Rewrite one jsonschema error as ``add(pointer_path, "expected ..., got ...")``."""
    path: Path = base + list(err.absolute_path)
    v = err.validator
    schema: Mapping[str, Any] = err.schema if isinstance(err.schema, Mapping) else {}
    inst = err.instance
    vv: Any = err.validator_value

    if v in ("anyOf", "oneOf"):
        _convert_alternatives(err, path, base, add)
    elif v in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const", "pattern"):
        add(path, f"expected {_describe(schema)}, got {_got(inst)}")
    elif v in ("minLength", "maxLength"):
        n = len(inst) if isinstance(inst, str) else 0
        add(path, f"expected {_describe(schema)}, got {n} characters")
    elif v == "format":
        add(path, f"expected {_FORMATS.get(str(vv), str(vv))}, got {_got(inst)}")
    elif v == "required":
        props = schema.get("properties", {})
        for name in vv:
            if isinstance(inst, Mapping) and name not in inst:
                sub = props.get(name)
                hint = f" (expected {_describe(sub)})" if isinstance(sub, Mapping) else ""
                add(path + [name], f"required field is missing{hint}")
    elif v == "additionalProperties":
        props = schema.get("properties", {})
        patterns = list(schema.get("patternProperties", {}))
        allowed = ", ".join(props)
        if isinstance(inst, Mapping):
            for k in inst:
                if k in props or any(re.search(p, str(k)) for p in patterns):
                    continue
                add(path + [k], f"unknown field; allowed fields: {allowed}" if allowed else "unknown field")
    elif v == "dependencies":
        if isinstance(inst, Mapping):
            for prop, deps in vv.items():
                if prop in inst and isinstance(deps, list):
                    for d in deps:
                        if d not in inst:
                            add(path + [d], f"required field is missing (needed when {prop} is set)")
    elif v in ("minItems", "maxItems"):
        n = len(inst) if isinstance(inst, list) else 0
        word = "at least" if v == "minItems" else "at most"
        add(path, f"expected array of {word} {vv} item(s), got {n}")
    elif v in ("minProperties", "maxProperties"):
        n = len(inst) if isinstance(inst, Mapping) else 0
        word = "at least" if v == "minProperties" else "at most"
        add(path, f"expected {word} {vv} entr{'y' if vv == 1 else 'ies'}, got {n}")
    elif v == "uniqueItems":
        dup = _first_duplicate(inst)
        add(path, f"expected unique items, got duplicate {_got(dup)}")
    elif v == "not":
        add(path, "value is not allowed here")
    else:  # pragma: no cover - keywords our schemas do not use
        add(path, err.message)


def _convert_alternatives(err: ValidationError, path: Path, base: Path, add: _Add) -> None:
    alternatives: Any = err.validator_value
    branches: list[Mapping[str, Any]] = [b for b in alternatives if isinstance(b, Mapping)]
    inst = err.instance
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in err.context or ():
        by_branch.setdefault(int(sub.relative_schema_path[0]), []).append(sub)

    if all(set(b) == {"required"} for b in branches):
        names = [" + ".join(b["required"]) for b in branches]
        if not err.context:  # oneOf matched more than one branch
            add(path, f"only one of {_or(names)} is allowed")
        else:
            add(path, f"required field is missing: one of {_or(names)} is required")
        return

    if not err.context:
        add(path, f"expected exactly one of {_or([_describe(b) for b in branches])}, got {_got(inst)}")
        return

    compatible = [i for i, b in enumerate(branches) if _type_ok(b, inst)]
    # Prefer a branch whose errors are deeper than the value itself: the value has the
    # right shape and something inside it is wrong; report that.
    deep = [i for i in compatible if any(e.relative_path for e in by_branch.get(i, ()))]
    if len(compatible) == 1 or deep:
        pick = compatible[0] if len(compatible) == 1 else max(
            deep, key=lambda i: max(len(e.relative_path) for e in by_branch[i])
        )
        for sub in by_branch.get(pick, ()):
            _convert(sub, base, add)
        return
    shown = [branches[i] for i in compatible] or branches
    add(path, f"expected {_or([_describe(b) for b in shown])}, got {_got(inst)}")


# --- messages -----------------------------------------------------------------------------

_FORMATS = {"ipv4": "IPv4 address", "ipv6": "IPv6 address"}


def _describe(s: Mapping[str, Any]) -> str:
    if "title" in s:
        return str(s["title"])
    if "enum" in s:
        vals = [_json(v) for v in s["enum"]]
        return vals[0] if len(vals) == 1 else "one of " + ", ".join(vals)
    if "const" in s:
        return _json(s["const"])
    for comb in ("anyOf", "oneOf"):
        if comb in s and isinstance(s[comb], list):
            return _or([_describe(b) for b in s[comb] if isinstance(b, Mapping)])
    t = s.get("type")
    if isinstance(t, list):
        return _or([_describe({**s, "type": x}) for x in t])
    if t in ("integer", "number"):
        lo, hi = s.get("minimum"), s.get("maximum")
        if lo is not None and hi is not None:
            return f"{t} {lo}..{hi}"
        parts = []
        if lo is not None:
            parts.append(f">= {lo}")
        if s.get("exclusiveMinimum") is not None:
            parts.append(f"> {s['exclusiveMinimum']}")
        if hi is not None:
            parts.append(f"<= {hi}")
        if s.get("exclusiveMaximum") is not None:
            parts.append(f"< {s['exclusiveMaximum']}")
        return " ".join([t, " and ".join(parts)]) if parts else t
    if t == "string":
        lo, hi = s.get("minLength"), s.get("maxLength")
        if lo and hi:
            d = f"string of {lo}..{hi} characters"
        elif lo == 1:
            d = "non-empty string"
        elif lo:
            d = f"string of at least {lo} characters"
        elif hi is not None:
            d = f"string of at most {hi} characters"
        elif "format" in s:
            d = _FORMATS.get(s["format"], f"{s['format']} string")
        else:
            d = "string"
        if "pattern" in s:
            d += f" matching {s['pattern']}"
        return d
    if t == "array":
        if s.get("minItems"):
            return f"array of at least {s['minItems']} item(s)"
        return "array"
    if t in ("object", "boolean", "null"):
        return str(t)
    if "properties" in s or "required" in s:
        return "object"
    return "a valid value"


def _or(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _json(v: Any) -> str:
    try:
        return json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(v)


def _got(v: Any) -> str:
    if isinstance(v, Mapping):
        return "object"
    if isinstance(v, (list, tuple)):
        return "array"
    s = _json(v)
    return s if len(s) <= 64 else s[:61] + "..."


def _type_ok(schema: Mapping[str, Any], inst: Any) -> bool:
    t = schema.get("type")
    if t is None:
        return True
    kinds = t if isinstance(t, list) else [t]
    jt = type_name(inst, json=True)
    if jt == "integer" and "number" in kinds:
        return True
    if jt == "number" and "integer" in kinds and isinstance(inst, float) and inst.is_integer():
        return True
    return jt in kinds


def _first_duplicate(items: Any) -> Any:
    if not isinstance(items, list):
        return None
    seen: list[Any] = []
    for x in items:
        if x in seen:
            return x
        seen.append(x)
    return None


# --- the checks APISIX does in code -------------------------------------------------------


def _no_check(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    return None


def _exclusive(v: Mapping[str, Any], a: str, b: str, add: _Add) -> None:
    if a in v and b in v:
        add([b], f"only one of {a} or {b} is allowed")


def _check_lua(v: Mapping[str, Any], add: _Add, fields: tuple[str, ...]) -> None:
    for f in fields:
        if f in v:
            hint = "use vars expressions instead" if f == "filter_func" else "use plugins instead"
            add([f], f"not supported: {_LUA_CVE}; {hint}")


def _check_plugins(plugins: Any, base: Path, add: _Add) -> None:
    if not isinstance(plugins, Mapping):
        return
    for name, conf in plugins.items():
        meta = conf.get("_meta") if isinstance(conf, Mapping) else None
        if isinstance(meta, Mapping) and "pre_function" in meta:
            add(base + [name, "_meta", "pre_function"], f"not supported: {_LUA_CVE}")


def _check_route(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    if "uri" in v and "uris" in v:
        add(["uris"], "only one of uri or uris is allowed")
    elif "uri" not in v and "uris" not in v:
        add(["uri"], "required field is missing: a route needs uri or uris")
    if "host" in v and "hosts" in v:
        add(["hosts"], "only one of host or hosts is allowed")
    if "remote_addr" in v and "remote_addrs" in v:
        add(["remote_addrs"], "only one of remote_addr or remote_addrs is allowed")
    if not any(k in v for k in ("plugins", "upstream", "upstream_id", "service_id", "plugin_config_id")):
        add([], "a route needs at least one of plugins, upstream, upstream_id, service_id or plugin_config_id")
    _check_lua(v, add, ("filter_func", "script", "script_id"))
    _check_plugins(v.get("plugins"), ["plugins"], add)
    if isinstance(v.get("upstream"), Mapping):
        _check_upstream_at(v["upstream"], ["upstream"], add)


def _check_service(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    _check_lua(v, add, ("script",))
    _check_plugins(v.get("plugins"), ["plugins"], add)
    if isinstance(v.get("upstream"), Mapping):
        _check_upstream_at(v["upstream"], ["upstream"], add)


def _check_stream_route(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    _check_plugins(v.get("plugins"), ["plugins"], add)
    if isinstance(v.get("upstream"), Mapping):
        _check_upstream_at(v["upstream"], ["upstream"], add)


def _check_upstream(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    _check_upstream_at(v, [], add)


_BRACKETED = re.compile(r"^\[[0-9a-fA-F:.]+\](:(\d+))?$")


def _check_upstream_at(u: Mapping[str, Any], base: Path, add: _Add) -> None:
    has_nodes, has_sn, has_dt = "nodes" in u, "service_name" in u, "discovery_type" in u
    if has_nodes and has_sn and has_dt:
        add(base + ["service_name"], "only one of nodes or service_name + discovery_type is allowed")
    elif not has_nodes:
        if has_sn and not has_dt:
            add(base + ["discovery_type"], "required field is missing (needed when service_name is set)")
        elif has_dt and not has_sn:
            add(base + ["service_name"], "required field is missing (needed when discovery_type is set)")
        elif not has_sn:
            add(base + ["nodes"], "required field is missing: an upstream needs nodes, or service_name and discovery_type")

    nodes = u.get("nodes")
    if isinstance(nodes, Mapping):
        for addr in nodes:
            if isinstance(addr, str) and not _valid_node_addr(addr):
                add(base + ["nodes", addr], f'expected "host:port" with port 1..65535, got {_json(addr)}')

    if u.get("pass_host") == "rewrite" and not u.get("upstream_host"):
        # APISIX's exact wording (apisix/upstream.lua).
        add(base + ["upstream_host"], "`upstream_host` can't be empty when `pass_host` is `rewrite`")

    if u.get("type") == "chash":
        hash_on = u.get("hash_on", "vars")
        key = u.get("key")
        if hash_on != "consumer" and key is None:
            add(base + ["key"], f"required field is missing (needed by type chash with hash_on {hash_on})")
        elif isinstance(key, str):
            if hash_on == "vars" and not re.search(UPSTREAM_HASH_VARS_PATTERN, key):
                add(
                    base + ["key"],
                    "expected a variable for hash_on vars (uri, server_name, server_addr, request_uri, "
                    "remote_port, remote_addr, query_string, host, hostname, mqtt_client_id or "
                    f"arg_<name>), got {_json(key)}",
                )
            elif hash_on in ("header", "cookie") and not re.search(UPSTREAM_HASH_HEADER_PATTERN, key):
                add(
                    base + ["key"],
                    f"expected {hash_on} name matching {UPSTREAM_HASH_HEADER_PATTERN}, got {_json(key)}",
                )

    tls = u.get("tls")
    if isinstance(tls, Mapping) and "client_cert_id" in tls and "client_cert" in tls and "client_key" in tls:
        add(base + ["tls", "client_cert_id"], "only one of client_cert_id or client_cert + client_key is allowed")


def _valid_node_addr(addr: str) -> bool:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal."""
    if addr.startswith("["):
        m = _BRACKETED.match(addr)
        if m is None:
            return False
        return m.group(2) is None or 1 <= int(m.group(2)) <= 65535
    if addr.count(":") > 1:  # bare IPv6 literal, no port
        return True
    host, sep, port = addr.partition(":")
    if not host:
        return False
    if not sep:
        return True
    return port.isdigit() and 1 <= int(port) <= 65535


def _check_with_plugins(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    _check_plugins(v.get("plugins"), ["plugins"], add)


def _check_ssl(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    typ = v.get("type", "server")
    for f in ("cert", "key"):
        if f not in v:
            add([f], "required field is missing")
    if typ == "server":
        if "sni" in v and "snis" in v:
            add(["snis"], "only one of sni or snis is allowed")
        elif "sni" not in v and "snis" not in v:
            add(["sni"], "required field is missing: a server certificate needs sni or snis")
    certs, keys = v.get("certs"), v.get("keys")
    if isinstance(certs, list) or isinstance(keys, list):
        nc = len(certs) if isinstance(certs, list) else 0
        nk = len(keys) if isinstance(keys, list) else 0
        if nc != nk:
            add(["keys"], f"expected one key per extra certificate ({nc}), got {nk}")


def _check_secret(v: Mapping[str, Any], add: _Add, id: str | None) -> None:
    sid = id if id is not None else v.get("id")
    if not isinstance(sid, str):
        return
    manager = sid.split("/", 1)[0] if "/" in sid else ""
    validator = _SECRET_VALIDATORS.get(manager)
    if validator is not None:  # an unknown manager is reported by the id pattern
        _schema_errors(validator, v, [], add)


_CHECKS: dict[str, Callable[[Mapping[str, Any], _Add, str | None], None]] = {
    "routes": _check_route,
    "services": _check_service,
    "upstreams": _check_upstream,
    "stream_routes": _check_stream_route,
    "ssls": _check_ssl,
    "secrets": _check_secret,
    "consumers": _check_with_plugins,
    "consumer_groups": _check_with_plugins,
    "plugin_configs": _check_with_plugins,
    "global_rules": _check_with_plugins,
    "credentials": _check_with_plugins,
}


# --- references ---------------------------------------------------------------------------

_REFS: dict[str, tuple[tuple[str, str], ...]] = {
    "routes": (("service_id", "services"), ("upstream_id", "upstreams"), ("plugin_config_id", "plugin_configs")),
    "services": (("upstream_id", "upstreams"),),
    "stream_routes": (("upstream_id", "upstreams"), ("service_id", "services")),
    "consumers": (("group_id", "consumer_groups"),),
}
_INLINE_UPSTREAM = ("routes", "services", "stream_routes")


def check_references(snapshot_like: Mapping[str, Mapping[str, Any]]) -> list[ConfigError]:
    """Dangling references between objects (``service_id``, ``upstream_id``,
    ``plugin_config_id``, consumer ``group_id``, upstream ``tls.client_cert_id``, and the
    consumer a credential belongs to: APISIX ignores such a credential with an error log,
    ``consumer.lua`` construct_consumer_data).

    ``snapshot_like`` maps kind -> id -> value (plain dicts or objects with a ``.value``,
    such as :class:`~meshgate.model.snapshot.Resource`); a :class:`Snapshot` works too.
    APISIX refuses such writes through the Admin API but tolerates them from etcd and
    standalone files (the request then fails at run time), so sources report these as
    warnings, not as rejections.
    """
    resources = getattr(snapshot_like, "resources", snapshot_like)

    def values(kind: str) -> Mapping[str, Any]:
        got = resources.get(kind)
        return got if isinstance(got, Mapping) else {}

    def unwrap(v: Any) -> Any:
        return getattr(v, "value", v)

    def exists(kind: str, ref: Any) -> tuple[bool, Any]:
        try:
            rid = normalize_id(ref)
        except TypeError:
            return True, None  # a schema error, reported by validate_item
        table = values(kind)
        return rid in table, unwrap(table.get(rid))

    out: list[ConfigError] = []
    for kind, items in resources.items():
        if not isinstance(items, Mapping):
            continue
        refs = _REFS.get(kind, ())
        for item_id, raw in items.items():
            v = unwrap(raw)
            if not isinstance(v, Mapping):
                continue
            owner = credential_owner(kind, str(item_id))
            if owner is not None:
                if owner[0] not in values("consumers"):
                    out.append(ConfigError("", f"credential of consumer {_json(owner[0])}, which does not exist "
                                               "(the credential is ignored)", kind=kind, id=str(item_id)))
                continue  # a credential has no other references
            for field, target in refs:
                if v.get(field) is None:
                    continue
                ok, _ = exists(target, v[field])
                if not ok:
                    out.append(
                        ConfigError(
                            f"/{field}",
                            f"references {KINDS[target].singular} {_json(normalize_id(v[field]))}, which does not exist",
                            kind=kind,
                            id=str(item_id),
                        )
                    )
            ups: list[tuple[str, Mapping[str, Any]]] = []
            if kind == "upstreams":
                ups.append(("", v))
            elif kind in _INLINE_UPSTREAM and isinstance(v.get("upstream"), Mapping):
                ups.append(("/upstream", v["upstream"]))
            for prefix, up in ups:
                tls = up.get("tls")
                if not isinstance(tls, Mapping) or tls.get("client_cert_id") is None:
                    continue
                ok, ssl = exists("ssls", tls["client_cert_id"])
                ptr = f"{prefix}/tls/client_cert_id"
                ref = _json(normalize_id(tls["client_cert_id"]))
                if not ok:
                    out.append(ConfigError(ptr, f"references ssl {ref}, which does not exist", kind=kind, id=str(item_id)))
                elif isinstance(ssl, Mapping) and ssl.get("type", "server") != "client":
                    out.append(
                        ConfigError(ptr, f"expected an ssl of type client, ssl {ref} is of type server", kind=kind, id=str(item_id))
                    )
    return out
