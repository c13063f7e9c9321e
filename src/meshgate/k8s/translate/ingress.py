"""Ingress (``networking.k8s.io/v1``) → APISIX routes, upstreams and ssls
(ingress-controller.md section 3).

Names and ids (naming.py): each ``spec.rules[i].http.paths[j]`` becomes one route
``<ns>_<name>_<i>_<j>`` (id = crc32 of that name), with the Ingress's ownership labels
(``k8s/kind: Ingress``).  ``spec.tls[k]`` becomes an ssl ``Ingress_<ns>_<name>_<k>``.  A canary
upstream (below) is an upstream ``<ns>_<name>_<i>_<j>_canary`` owned by the *main* Ingress.

Paths: ``Exact`` → ``uris [p]``; ``Prefix`` → ``[p, rstrip(p, "/") + "/*"]`` (segment-aware);
``ImplementationSpecific`` → ``[p]`` as written (``/*`` works).  In regex mode
(``k8s.apisix.apache.org/use-regex``, ``nginx.ingress.kubernetes.io/use-regex``, or an
ingress-nginx ``rewrite-target``, which implies it there) a path is a regular expression:
``uris ["/*"]`` and ``vars [["uri", "~~", "^" + p]]`` (``~*``, case-insensitive, for the
ingress-nginx annotations, as ingress-nginx's regex locations).

Backends: ``service {name, port {number | name}}`` resolved by :func:`resolve_backend`;
``resource`` backends and ``spec.defaultBackend`` are not supported (an error).

Annotations are parsed against a strict schema, one parser per key; a value never reaches
configuration text, it only fills typed plugin fields (CVE-2021-25742 family).  A bad value
is an error naming the annotation and what is expected; its path's route is left out.
Unknown keys under the two prefixes are warnings.  See :data:`APISIX` and :data:`NGINX`.

Canary (ingress-nginx semantics): an Ingress annotated ``nginx.ingress.kubernetes.io/canary:
"true"`` produces no route of its own.  For each of its host+path, the non-canary Ingress of the
same namespace with the same host+path (``peers``) gets an extra upstream from the canary's
backend and a ``traffic-split`` plugin: ``canary-by-header`` (with
``canary-by-header-value``: that value selects the canary; without it ``always`` does and
``never`` forces the main backend), then ``canary-by-cookie`` (``always`` / ``never``), then
``canary-weight`` (percentage of the rest, out of ``canary-weight-total``, default 100).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError
from ...plugins.builtin.cors import ORIGINS_PATTERN
from ...router import compile_expr
from .apisixupstream import cert_and_key
from .common import ClusterState, Item, Translation, TranslateError, object_ref, parse_duration, seconds
from .endpoints import Backend, BackendError, resolve_backend
from .naming import DEFAULT_CONTROLLER_NAME, DESC, fit_name, gen_id, labels as owner_labels, route_name, ssl_name

__all__ = ["translate_ingress", "ingress_class_matches", "ingress_service_refs", "is_canary", "APISIX", "NGINX",
           "CLASS_ANNOTATION"]

Obj = Mapping[str, Any]

APISIX = "k8s.apisix.apache.org/"
NGINX = "nginx.ingress.kubernetes.io/"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
_DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"
_PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")
_SCHEMES = ("http", "https", "grpc", "grpcs")
_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE"}
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")
_SIZE_UNIT = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_CAPTURE = re.compile(r"\$(\d+)")


# --- class filter -----------------------------------------------------------------------------


def ingress_class_matches(ing: Obj, classes: Sequence[Obj], *, ingress_class: str = "apisix", require: bool = False,
                          controller_name: str = DEFAULT_CONTROLLER_NAME) -> bool:
    """Is this Ingress ours?  Its class is ``spec.ingressClassName`` or the legacy
    ``kubernetes.io/ingress.class`` annotation; it is ours when that is ``ingress_class`` or
    names an IngressClass whose ``spec.controller`` is ``controller_name``.  Without a class:
    ours when the default IngressClass (``ingressclass.kubernetes.io/is-default-class``) is
    ours; when a default class belongs to another controller, not ours; with no default
    class, ours unless ``require`` (CONTRACT)."""
    spec = ing.get("spec") if isinstance(ing.get("spec"), Mapping) else {}
    ann = (ing.get("metadata") or {}).get("annotations") or {}
    cls = (spec or {}).get("ingressClassName") or (ann.get(CLASS_ANNOTATION) if isinstance(ann, Mapping) else None)
    by_name = {str((c.get("metadata") or {}).get("name") or ""): c for c in classes if isinstance(c, Mapping)}
    if cls:
        if str(cls) == ingress_class:
            return True
        ic = by_name.get(str(cls))
        return ic is not None and (ic.get("spec") or {}).get("controller") == controller_name
    defaults = [c for c in by_name.values()
                if str(((c.get("metadata") or {}).get("annotations") or {}).get(_DEFAULT_CLASS)).lower() == "true"]
    if defaults:
        return any((c.get("spec") or {}).get("controller") == controller_name for c in defaults)
    return not require


def is_canary(ing: Obj) -> bool:
    ann = (ing.get("metadata") or {}).get("annotations") or {}
    return isinstance(ann, Mapping) and str(ann.get(NGINX + "canary", "")).strip().lower() == "true"


def ingress_service_refs(ing: Obj) -> set[tuple[str, str]]:
    """``(namespace, Service)`` an Ingress's backends name."""
    _, ns, _ = object_ref(ing)
    out: set[tuple[str, str]] = set()
    for _i, _j, _rule, path in _paths(ing):
        svc = ((path.get("backend") or {}).get("service") or {}) if isinstance(path.get("backend"), Mapping) else {}
        if isinstance(svc, Mapping) and svc.get("name"):
            out.add((ns, str(svc["name"])))
    return out


def _paths(ing: Obj) -> list[tuple[int, int, Obj, Obj]]:
    spec = ing.get("spec") if isinstance(ing.get("spec"), Mapping) else {}
    out: list[tuple[int, int, Obj, Obj]] = []
    rules = (spec or {}).get("rules") or []
    for i, rule in enumerate(rules if isinstance(rules, list) else ()):
        if not isinstance(rule, Mapping):
            continue
        http = rule.get("http") or {}
        paths = http.get("paths") if isinstance(http, Mapping) else None
        for j, p in enumerate(paths if isinstance(paths, list) else ()):
            if isinstance(p, Mapping):
                out.append((i, j, rule, p))
    return out


# --- annotations --------------------------------------------------------------------------------


class _Bad(Exception):
    pass


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s not in ("true", "false"):
        raise _Bad('expected "true" or "false"')
    return s == "true"


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(v: str) -> int:
        if not re.fullmatch(r"\d+", v.strip()):
            raise _Bad(f"expected an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
        n = int(v.strip())
        if n < lo or (hi is not None and n > hi):
            raise _Bad(f"expected an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
        return n
    return parse


def _uri(v: str) -> str:
    s = v.strip()
    if not s.startswith("/") or any(c.isspace() or ord(c) < 32 for c in s) or len(s) > 4096:
        raise _Bad("expected a path starting with / without spaces or control characters")
    return s


def _regex(v: str) -> str:
    s = v.strip()
    if not s:
        raise _Bad("expected a regular expression")
    try:
        compile_expr([["uri", "~~", s]], "/")
    except ConfigError as e:
        raise _Bad(f"expected a valid regular expression: {e.message}") from None
    return s


def _template(v: str) -> str:
    s = v.strip()
    if not s or any(c.isspace() or ord(c) < 32 for c in s):
        raise _Bad("expected a replacement such as /$1 (no spaces or control characters)")
    return s


def _scheme(v: str) -> str:
    s = v.strip().lower()
    if s not in _SCHEMES:
        raise _Bad(f"expected one of {', '.join(_SCHEMES)}")
    return s


def _duration(v: str) -> int | float:
    try:
        secs = parse_duration(v.strip())
    except ValueError:
        raise _Bad("expected a duration such as 5s, 500ms or 1m") from None
    if secs <= 0:
        raise _Bad("expected a duration > 0 such as 5s, 500ms or 1m")
    return seconds(secs)


def _ranges(v: str) -> list[str]:
    out: list[str] = []
    for part in v.split(","):
        s = part.strip()
        if not s:
            continue
        try:
            net = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise _Bad(f"expected a comma-separated list of IP addresses or CIDRs; {s!r} is neither") from None
        out.append(s if "/" in s else str(net.network_address))
    if not out:
        raise _Bad("expected a comma-separated list of IP addresses or CIDRs")
    return out


def _origins(v: str) -> str:
    s = ",".join(p.strip() for p in v.split(",") if p.strip())
    if not re.match(ORIGINS_PATTERN, s):
        raise _Bad("expected * or a comma-separated list of origins such as https://a.example.com")
    return s


def _methods(v: str) -> str:
    parts = [p.strip().upper() for p in v.split(",") if p.strip()]
    if parts == ["*"]:
        return "*"
    if not parts or any(p not in _METHODS for p in parts):
        raise _Bad(f"expected * or a comma-separated list of {', '.join(sorted(_METHODS))}")
    return ",".join(parts)


def _headers(v: str) -> str:
    parts = [p.strip() for p in v.split(",") if p.strip()]
    if parts == ["*"]:
        return "*"
    if not parts or any(not _TOKEN.match(p) for p in parts):
        raise _Bad("expected * or a comma-separated list of header names")
    return ",".join(parts)


def _size(v: str) -> int:
    m = _SIZE.match(v.strip())
    if not m:
        raise _Bad("expected a size such as 0 (no limit), 1048576, 8k, 8m or 1g")
    return int(m.group(1)) * _SIZE_UNIT[m.group(2).lower()]


def _header_name(v: str) -> str:
    s = v.strip()
    if not _TOKEN.match(s):
        raise _Bad("expected a header name")
    return s


def _cookie_name(v: str) -> str:
    s = v.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", s):
        raise _Bad("expected a cookie name (letters, digits, _ . -)")
    return s


def _value(v: str) -> str:
    if not v or any(ord(c) < 32 for c in v):
        raise _Bad("expected a non-empty value without control characters")
    return v


_PARSERS: dict[str, Callable[[str], Any]] = {
    APISIX + "enable-websocket": _bool,
    APISIX + "use-regex": _bool,
    APISIX + "rewrite-target": _uri,
    APISIX + "rewrite-target-regex": _regex,
    APISIX + "rewrite-target-regex-template": _template,
    APISIX + "http-to-https": _bool,
    APISIX + "enable-cors": _bool,
    APISIX + "cors-allow-origin": _origins,
    APISIX + "cors-allow-headers": _headers,
    APISIX + "cors-allow-methods": _methods,
    APISIX + "allowlist-source-range": _ranges,
    APISIX + "blocklist-source-range": _ranges,
    APISIX + "upstream-scheme": _scheme,
    APISIX + "upstream-retries": _int(0),
    APISIX + "upstream-connect-timeout": _duration,
    APISIX + "upstream-read-timeout": _duration,
    APISIX + "upstream-send-timeout": _duration,
    NGINX + "rewrite-target": _template,
    NGINX + "use-regex": _bool,
    NGINX + "ssl-redirect": _bool,
    NGINX + "enable-cors": _bool,
    NGINX + "cors-allow-origin": _origins,
    NGINX + "cors-allow-headers": _headers,
    NGINX + "cors-allow-methods": _methods,
    NGINX + "whitelist-source-range": _ranges,
    NGINX + "proxy-body-size": _size,
    NGINX + "canary": _bool,
    NGINX + "canary-by-header": _header_name,
    NGINX + "canary-by-header-value": _value,
    NGINX + "canary-by-cookie": _cookie_name,
    NGINX + "canary-weight": _int(0),
    NGINX + "canary-weight-total": _int(1),
}


@dataclass
class _Ann:
    values: dict[str, Any] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)   # (pointer, message)
    warnings: list[str] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def _ptr(key: str) -> str:
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


def _parse_annotations(ing: Obj) -> _Ann:
    out = _Ann()
    raw = (ing.get("metadata") or {}).get("annotations") or {}
    if not isinstance(raw, Mapping):
        return out
    for key in sorted(raw):
        k = str(key)
        if not (k.startswith(APISIX) or k.startswith(NGINX)):
            continue
        parser = _PARSERS.get(k)
        if parser is None:
            out.warnings.append(f"annotation {k} is not supported by Meshgate and is ignored")
            continue
        v = raw[key]
        try:
            if not isinstance(v, str):
                raise _Bad("expected a string")
            out.values[k] = parser(v)
        except _Bad as e:
            out.errors.append((_ptr(k), f"annotation {k}: {e}, got {v!r}"))
    ann = out.values
    # combinations
    if APISIX + "rewrite-target" in ann and APISIX + "rewrite-target-regex" in ann:
        out.errors.append((_ptr(APISIX + "rewrite-target-regex"), f"annotation {APISIX}rewrite-target-regex: "
                           f"cannot be combined with {APISIX}rewrite-target; use one of them"))
    if (APISIX + "rewrite-target-regex" in ann) != (APISIX + "rewrite-target-regex-template" in ann):
        missing = (APISIX + "rewrite-target-regex-template" if APISIX + "rewrite-target-regex" in ann
                   else APISIX + "rewrite-target-regex")
        out.errors.append((_ptr(missing), f"annotation {missing}: required with its pair "
                           f"({APISIX}rewrite-target-regex and {APISIX}rewrite-target-regex-template go together)"))
    if NGINX + "rewrite-target" in ann and (APISIX + "rewrite-target" in ann or APISIX + "rewrite-target-regex" in ann):
        out.errors.append((_ptr(NGINX + "rewrite-target"), f"annotation {NGINX}rewrite-target: cannot be combined "
                           f"with {APISIX}rewrite-target or {APISIX}rewrite-target-regex"))
    allow = ann.get(APISIX + "allowlist-source-range") or ann.get(NGINX + "whitelist-source-range")
    if allow and ann.get(APISIX + "blocklist-source-range"):
        out.errors.append((_ptr(APISIX + "blocklist-source-range"), f"annotation {APISIX}blocklist-source-range: "
                           "cannot be combined with an allowlist (allowlist-source-range / whitelist-source-range)"))
    total = ann.get(NGINX + "canary-weight-total", 100)
    if ann.get(NGINX + "canary-weight", 0) > total:
        out.errors.append((_ptr(NGINX + "canary-weight"), f"annotation {NGINX}canary-weight: expected an integer "
                           f"<= canary-weight-total ({total}), got {ann[NGINX + 'canary-weight']}"))
    return out


def _plugins(ann: _Ann, path: str) -> dict[str, Any]:
    a = ann.values
    plugins: dict[str, Any] = {}
    if a.get(APISIX + "rewrite-target"):
        plugins["proxy-rewrite"] = {"uri": a[APISIX + "rewrite-target"]}
    elif a.get(APISIX + "rewrite-target-regex") and a.get(APISIX + "rewrite-target-regex-template"):
        plugins["proxy-rewrite"] = {"regex_uri": [a[APISIX + "rewrite-target-regex"],
                                                  a[APISIX + "rewrite-target-regex-template"]]}
    elif a.get(NGINX + "rewrite-target"):
        # ingress-nginx: the whole URI becomes the target, $n from the path regex's groups
        plugins["proxy-rewrite"] = {"regex_uri": [f"^(?:{path}).*", a[NGINX + "rewrite-target"]]}
    if a.get(APISIX + "http-to-https") or a.get(NGINX + "ssl-redirect"):
        plugins["redirect"] = {"http_to_https": True}
    cors_on = a.get(APISIX + "enable-cors") or a.get(NGINX + "enable-cors")
    if cors_on:
        conf: dict[str, Any] = {}
        for part, field_ in (("origin", "allow_origins"), ("headers", "allow_headers"), ("methods", "allow_methods")):
            v = a.get(APISIX + f"cors-allow-{part}", a.get(NGINX + f"cors-allow-{part}"))
            if v is not None:
                conf[field_] = v
        plugins["cors"] = conf
    allow = a.get(APISIX + "allowlist-source-range") or a.get(NGINX + "whitelist-source-range")
    if allow:
        plugins["ip-restriction"] = {"whitelist": list(allow)}
    elif a.get(APISIX + "blocklist-source-range"):
        plugins["ip-restriction"] = {"blacklist": list(a[APISIX + "blocklist-source-range"])}
    if a.get(NGINX + "proxy-body-size") is not None:
        plugins["client-control"] = {"max_body_size": a[NGINX + "proxy-body-size"]}
    return plugins


def _upstream_extras(ann: _Ann) -> dict[str, Any]:
    a = ann.values
    out: dict[str, Any] = {}
    if a.get(APISIX + "upstream-scheme"):
        out["scheme"] = a[APISIX + "upstream-scheme"]
    if APISIX + "upstream-retries" in a:
        out["retries"] = a[APISIX + "upstream-retries"]
    parts = {p: a.get(APISIX + f"upstream-{p}-timeout") for p in ("connect", "send", "read")}
    if any(v is not None for v in parts.values()):
        out["timeout"] = {p: (v if v is not None else 60) for p, v in parts.items()}
    return out


# --- translation --------------------------------------------------------------------------------


def _uris(path: str, path_type: str, regex: bool) -> tuple[list[str], list[list[Any]]]:
    if regex:
        return ["/*"], []
    if path_type == "Exact":
        return [path], []
    if path_type == "Prefix":
        base = path.rstrip("/")
        return list(dict.fromkeys([path, base + "/*"])), []
    return [path], []


def _key(rule: Obj, path: Obj) -> tuple[str, str, str]:
    return (str(rule.get("host") or "").strip().lower(), str(path.get("path") or "/"),
            str(path.get("pathType") or ""))


class _Ctx:
    def __init__(self, kind: str, ns: str, name: str, state: ClusterState) -> None:
        self.kind, self.ns, self.name, self.state = kind, ns, name, state
        self.errors: list[TranslateError] = []
        self.warnings: list[str] = []

    def error(self, pointer: str, message: str) -> None:
        self.errors.append(TranslateError(pointer, message, kind=self.kind, id=f"{self.ns}/{self.name}"))

    def backend(self, path: Obj, ptr: str, weight: int = 100) -> dict[str, Any]:
        """The upstream (``type``, ``nodes``, ``scheme``) of a path's backend; raises BackendError."""
        b = path.get("backend")
        if not isinstance(b, Mapping):
            raise BackendError("required field is missing: backend.service {name, port}")
        if b.get("resource"):
            raise BackendError("resource backends are not supported; use backend.service")
        svc = b.get("service")
        if not isinstance(svc, Mapping) or not svc.get("name"):
            raise BackendError("required field is missing: backend.service.name")
        port = svc.get("port") or {}
        pv: int | str | None = None
        if isinstance(port, Mapping):
            if port.get("number") is not None:
                pv = port.get("number")
            elif port.get("name"):
                pv = str(port["name"])
        if isinstance(pv, bool) or not (pv is None or isinstance(pv, (int, str))):
            raise BackendError(f"backend.service.port.number must be an integer, got {pv!r}")
        sname = str(svc["name"])
        res = resolve_backend(self.state.service(self.ns, sname), self.state.slices_of(self.ns, sname),
                              Backend(sname, pv, weight=weight), namespace=self.ns, pods=self.state.pods)
        up: dict[str, Any] = {"type": "roundrobin", "nodes": res.nodes}
        if res.scheme:
            up["scheme"] = res.scheme
        return up


def translate_ingress(ing: Obj, state: ClusterState, *, controller_name: str = DEFAULT_CONTROLLER_NAME,
                      peers: Sequence[Obj] = ()) -> Translation:
    """One Ingress; ``peers`` are the other (class-matching) Ingresses of its namespace, read
    for canaries.  Never raises for bad input."""
    kind, ns, name = object_ref(ing)
    kind = kind or "Ingress"
    meta = ing.get("metadata") or {}
    own = owner_labels(kind, ns, name, controller_name=controller_name, object_labels=meta.get("labels"))
    ctx = _Ctx(kind, ns, name, state)
    ann = _parse_annotations(ing)
    for p, m in ann.errors:
        ctx.error(p, m)
    ctx.warnings += ann.warnings
    spec = ing.get("spec") if isinstance(ing.get("spec"), Mapping) else {}
    if (spec or {}).get("defaultBackend"):
        ctx.error("/spec/defaultBackend", "defaultBackend is not supported; add a rule with path / (Prefix)")
    items: list[Item] = []

    if is_canary(ing):
        _check_canary(ing, ctx, peers)
        return Translation(kind, ns, name, own, (), tuple(ctx.errors), tuple(ctx.warnings))
    if ann.errors:  # a bad annotation: no route rather than a route without the intended policy
        return Translation(kind, ns, name, own, (), tuple(ctx.errors), tuple(ctx.warnings))

    canaries = _canaries(ing, peers, ctx)
    a = ann.values
    regex = bool(a.get(APISIX + "use-regex"))
    nginx_regex = bool(a.get(NGINX + "use-regex") or a.get(NGINX + "rewrite-target"))
    if not isinstance((spec or {}).get("rules") or [], list):
        ctx.error("/spec/rules", "expected an array of rules")
    for i, j, rule, path in _paths(ing):
        ptr = f"/spec/rules/{i}/http/paths/{j}"
        p = path.get("path") or "/"
        ptype = path.get("pathType") or "ImplementationSpecific"
        if ptype not in _PATH_TYPES:
            ctx.error(ptr + "/pathType", f"expected one of {', '.join(_PATH_TYPES)}, got {ptype!r}")
            continue
        if not isinstance(p, str) or not p.startswith("/"):
            ctx.error(ptr + "/path", f"expected a path starting with /, got {p!r}")
            continue
        vars_: list[list[Any]] = []
        if regex or nginx_regex:
            vars_ = [["uri", "~*" if nginx_regex and not regex else "~~", "^" + p]]
            try:
                compile_expr(vars_, ptr + "/path")
            except ConfigError as e:
                ctx.error(ptr + "/path", f"with use-regex the path must be a valid regular expression: {e.message}")
                continue
        uris, _ = _uris(p, str(ptype), regex or nginx_regex)
        rname = route_name(ns, name, f"{i}_{j}")
        route: dict[str, Any] = {"id": gen_id(rname), "name": fit_name(rname), "desc": DESC, "labels": dict(own),
                                 "uris": uris}
        host = str(rule.get("host") or "").strip().lower()
        if host:
            route["hosts"] = [host]
        if vars_:
            route["vars"] = vars_
        if a.get(APISIX + "enable-websocket"):
            route["enable_websocket"] = True
        plugins = _plugins(ann, p)
        try:
            up = ctx.backend(path, ptr + "/backend")
        except BackendError as e:
            ctx.error(ptr + "/backend", e.message)
            up = {"type": "roundrobin", "nodes": []}  # answer (503), don't fall through to another route
        up.update(_upstream_extras(ann))
        route["upstream"] = up
        extra: list[Item] = []
        canary = canaries.get(_key(rule, path))
        if canary is not None:
            cing, cpath, cann = canary
            uname = rname + "_canary"
            try:
                cup = _Ctx(kind, ns, str((cing.get("metadata") or {}).get("name")), state).backend(cpath, "")
                cup.update(_upstream_extras(cann))
                uid = gen_id(uname)
                extra.append(Item("upstreams", uid, {"id": uid, "name": fit_name(uname), "desc": DESC,
                                                     "labels": dict(own), **cup}))
                split = _split_rules(cann, uid)
                if split:
                    plugins["traffic-split"] = {"rules": split}
            except BackendError as e:
                ctx.error(ptr, f"canary Ingress {ns}/{(cing.get('metadata') or {}).get('name')}: {e.message}")
        if plugins:
            route["plugins"] = plugins
        items.append(Item("routes", route["id"], route))
        items.extend(extra)

    for k, tls in enumerate((spec or {}).get("tls") or ()):
        ptr = f"/spec/tls/{k}"
        try:
            items.append(_ssl(tls, k, ns, name, kind, state, own, ing, ptr))
        except ConfigError as e:
            ctx.error(e.pointer, e.message)
    return Translation(kind, ns, name, own, tuple(items), tuple(ctx.errors), tuple(ctx.warnings))


def _ssl(tls: object, k: int, ns: str, name: str, kind: str, state: ClusterState, own: dict[str, str], ing: Obj,
         ptr: str) -> Item:
    if not isinstance(tls, Mapping):
        raise ConfigError(ptr, "expected an object {hosts, secretName}")
    hosts = [str(h).strip().lower() for h in tls.get("hosts") or () if str(h).strip()]
    if not hosts:
        hosts = [str(r.get("host")).strip().lower() for _, _, r, _ in _paths(ing) if r.get("host")]
    hosts = list(dict.fromkeys(hosts))
    if not hosts:
        raise ConfigError(ptr + "/hosts", "required field is missing: at least one host (SNI), here or in the rules")
    sname = tls.get("secretName")
    if not sname:
        raise ConfigError(ptr + "/secretName", "required field is missing: a kubernetes.io/tls Secret")
    secret = state.secret(ns, str(sname))
    if secret is None:
        raise ConfigError(ptr + "/secretName", f"secret {ns}/{sname} not found")
    cert, key = cert_and_key(secret, pointer=ptr + "/secretName")
    sid = gen_id(ssl_name(kind, ns, f"{name}_{k}"))
    return Item("ssls", sid, {"id": sid, "desc": DESC, "labels": dict(own), "snis": hosts, "cert": cert, "key": key})


def _split_rules(ann: _Ann, uid: str) -> list[dict[str, Any]]:
    a = ann.values
    canary, main = [{"upstream_id": uid, "weight": 1}], [{"weight": 1}]
    rules: list[dict[str, Any]] = []
    header = a.get(NGINX + "canary-by-header")
    if header:
        var = "http_" + header.lower().replace("-", "_")
        value = a.get(NGINX + "canary-by-header-value")
        if value is not None:
            rules.append({"match": [{"vars": [[var, "==", value]]}], "weighted_upstreams": canary})
        else:
            rules.append({"match": [{"vars": [[var, "==", "always"]]}], "weighted_upstreams": canary})
            rules.append({"match": [{"vars": [[var, "==", "never"]]}], "weighted_upstreams": main})
    cookie = a.get(NGINX + "canary-by-cookie")
    if cookie:
        var = "cookie_" + cookie
        rules.append({"match": [{"vars": [[var, "==", "always"]]}], "weighted_upstreams": canary})
        rules.append({"match": [{"vars": [[var, "==", "never"]]}], "weighted_upstreams": main})
    weight = a.get(NGINX + "canary-weight")
    if weight:
        total = a.get(NGINX + "canary-weight-total", 100)
        rules.append({"weighted_upstreams": [{"upstream_id": uid, "weight": weight}, {"weight": total - weight}]})
    return rules


def _canaries(ing: Obj, peers: Sequence[Obj], ctx: _Ctx) -> dict[tuple[str, str, str], tuple[Obj, Obj, _Ann]]:
    """``(host, path, pathType)`` → (canary Ingress, its path, its annotations): the first
    valid canary by name wins; a later one is a warning."""
    out: dict[tuple[str, str, str], tuple[Obj, Obj, _Ann]] = {}
    mine = {_key(r, p) for _, _, r, p in _paths(ing)}
    for peer in sorted((p for p in peers if is_canary(p)), key=lambda o: str((o.get("metadata") or {}).get("name"))):
        pann = _parse_annotations(peer)
        if pann.errors:
            continue
        for _, _, r, p in _paths(peer):
            k = _key(r, p)
            if k not in mine:
                continue
            if k in out:
                ctx.warnings.append(f"canary Ingress {object_ref(peer)[2]} ignored for host {k[0] or '*'} path "
                                    f"{k[1]}: {object_ref(out[k][0])[2]} is already its canary")
                continue
            out[k] = (peer, p, pann)
    return out


def _check_canary(ing: Obj, ctx: _Ctx, peers: Sequence[Obj]) -> None:
    ann = _parse_annotations(ing).values
    if not any(k in ann for k in (NGINX + "canary-by-header", NGINX + "canary-by-cookie", NGINX + "canary-weight")):
        ctx.warnings.append("canary Ingress without canary-by-header, canary-by-cookie or canary-weight: it gets no "
                            "traffic")
    mains = {_key(r, p) for peer in peers if not is_canary(peer) for _, _, r, p in _paths(peer)}
    for i, j, rule, path in _paths(ing):
        k = _key(rule, path)
        if k not in mains:
            ctx.error(f"/spec/rules/{i}/http/paths/{j}",
                      f"canary: no non-canary Ingress in namespace {ctx.ns} has host {k[0] or '(any)'} path {k[1]} "
                      f"({k[2]}); a canary only adds a backend to an existing Ingress path")
            continue
        try:
            ctx.backend(path, "")
        except BackendError as e:
            ctx.error(f"/spec/rules/{i}/http/paths/{j}/backend", e.message)
