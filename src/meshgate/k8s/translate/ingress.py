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

Backends: ``service {name, port {number | name}}`` resolved by :func:`resolve_backend`, in the
Ingress's namespace or the ``svc-namespace`` annotation's; ``resource`` backends and
``spec.defaultBackend`` are not supported (an error).

Annotations are parsed against a strict schema, one parser per key (:data:`_PARSERS`); a value
never reaches configuration text, it only fills typed plugin fields (CVE-2021-25742 family).  A
bad value is an error naming the annotation and what is expected, and the Ingress produces no
route.  Unknown keys under the two prefixes are warnings, and so is a setting whose switch is
absent (``csrf-key`` without ``enable-csrf``...).  Names, values and semantics are those of
apisix-ingress-controller (AIC) v2; lists are comma-separated (empty items dropped).
``k8s.apisix.apache.org/`` (:data:`APISIX`):

* ``enable-websocket``, ``use-regex`` (above), ``rewrite-target`` → ``proxy-rewrite.uri``;
  ``rewrite-target-regex`` + ``-template`` (together) → ``proxy-rewrite.regex_uri``;
* ``http-to-https`` → ``redirect {http_to_https}``; ``http-redirect`` (a path or http(s) URL)
  and ``http-redirect-code`` (301, 302, 303, 307, 308; default 301) → ``redirect {uri,
  ret_code}``; with both, http-to-https wins (as AIC; a warning);
* ``enable-cors`` with ``cors-allow-origin`` / ``-headers`` / ``-methods`` → ``cors``;
* ``enable-csrf`` + ``csrf-key`` (required then; never repeated in messages) → ``csrf {key}``;
* ``enable-response-rewrite`` with ``response-rewrite-status-code`` (200-598), ``-body`` (empty:
  left alone), ``-body-base64`` (the body must then be base64), ``-add-header``
  (``Name:value,...``), ``-set-header`` (``Name:value,...``) and ``-remove-header`` (names) →
  ``response-rewrite {status_code, body, body_base64, headers {add, set, remove}}``;
* ``auth-uri`` (http(s) URL) with ``auth-ssl-verify`` (default true), ``auth-request-headers``,
  ``auth-upstream-headers``, ``auth-client-headers`` → ``forward-auth``;
* ``allowlist-source-range`` / ``blocklist-source-range`` (not both) → ``ip-restriction``;
* ``http-allow-methods`` / ``http-block-methods`` (method names, upper-cased) → AIC v2's
  ``fault-injection {abort {http_status: 405, vars: [[["request_method", "!", "in" | "in",
  [...]]]]}}``: a refused method gets 405 before any other plugin runs; with both, only the allow
  list applies (AIC's documented rule; a warning);
* ``auth-type`` (``basicAuth`` | ``keyAuth``) → ``basic-auth {}`` | ``key-auth {}`` (consumers
  from ApisixConsumer);
* ``svc-namespace``: the backends' (and :func:`ingress_service_refs`') namespace;
* ``plugin-config-name``: an ApisixPluginConfig of the Ingress's namespace whose plugins
  (:func:`plugin_config_plugins`: disabled ones dropped, ``secretRef`` merged) are the base of
  every route's plugins, the annotations' plugins winning by name (as AIC v2).  A missing or
  broken config is an error and the Ingress produces no route;
* ``upstream-scheme``, ``upstream-retries``, ``upstream-connect-timeout`` / ``-read-`` /
  ``-send-`` (durations; an unset one is 60 s) → the route's upstream.

``nginx.ingress.kubernetes.io/`` (:data:`NGINX`): ``rewrite-target``, ``use-regex``,
``ssl-redirect``, ``enable-cors`` and ``cors-allow-*``, ``whitelist-source-range``,
``proxy-body-size`` (→ ``client-control``) and the canary ones below.

Canary (ingress-nginx semantics): an Ingress annotated ``nginx.ingress.kubernetes.io/canary:
"true"`` produces no route of its own.  For each of its host+path, the non-canary Ingress of the
same namespace with the same host+path (``peers``) gets an extra upstream from the canary's
backend and a ``traffic-split`` plugin: ``canary-by-header`` (with
``canary-by-header-value``: that value selects the canary; without it ``always`` does and
``never`` forces the main backend), then ``canary-by-cookie`` (``always`` / ``never``), then
``canary-weight`` (percentage of the rest, out of ``canary-weight-total``, default 100).
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ...errors import ConfigError
from ...plugins.builtin.cors import ORIGINS_PATTERN
from ...router import compile_expr
from .apisixpluginconfig import plugin_config_plugins
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
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_AUTH_TYPES = {"basicAuth": "basic-auth", "keyAuth": "key-auth"}
_REDIRECT_CODES = (301, 302, 303, 307, 308)


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
    """``(namespace, Service)`` an Ingress's backends name (``svc-namespace`` honoured)."""
    _, ns, _ = object_ref(ing)
    ann = (ing.get("metadata") or {}).get("annotations") or {}
    other = ann.get(APISIX + "svc-namespace") if isinstance(ann, Mapping) else None
    if isinstance(other, str):
        try:
            ns = _dns_label(other)
        except _Bad:
            pass
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


def _text(v: str) -> str:
    return v  # a response body: any text, it only fills the plugin's body field


def _url(v: str) -> str:
    s = v.strip()
    try:
        u = urlsplit(s) if s and not any(c.isspace() or ord(c) < 32 for c in s) else None
        ok = u is not None and u.scheme in ("http", "https") and bool(u.hostname) and len(s) <= 4096
        _ = u and u.port  # an invalid port raises
    except ValueError:
        ok = False
    if not ok:
        raise _Bad("expected an http:// or https:// URL such as https://auth.example.com/verify "
                   "(no spaces or control characters)")
    return s


def _header_list(v: str) -> list[str]:
    parts = list(dict.fromkeys(p.strip() for p in v.split(",") if p.strip()))
    if not parts or any(not _TOKEN.match(p) for p in parts):
        raise _Bad("expected a comma-separated list of header names")
    return parts


def _header_pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.match(name) or any(ord(c) < 32 for c in value):
        raise _Bad("expected a comma-separated list of Name:value headers")
    return name, value


def _add_headers(v: str) -> list[str]:
    out: list[str] = []
    for item in (p.strip() for p in v.split(",")):
        if not item:
            continue
        name, value = _header_pair(item)
        if not value or ":" in value or value.endswith("/"):
            raise _Bad("expected a comma-separated list of Name:value headers, each value non-empty, "
                       "without : and not ending with /")
        out.append(f"{name}:{value}")
    if not out:
        raise _Bad("expected a comma-separated list of Name:value headers")
    return out


def _set_headers(v: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (p.strip() for p in v.split(",")):
        if item:
            name, value = _header_pair(item)
            out[name] = value
    if not out:
        raise _Bad("expected a comma-separated list of Name:value headers")
    return out


def _method_list(v: str) -> list[str]:
    parts = list(dict.fromkeys(p.strip().upper() for p in v.split(",") if p.strip()))
    if not parts or any(p not in _METHODS for p in parts):
        raise _Bad(f"expected a comma-separated list of {', '.join(sorted(_METHODS))}")
    return parts


def _auth_type(v: str) -> str:
    s = v.strip()
    if s not in _AUTH_TYPES:
        raise _Bad(f"expected one of {', '.join(_AUTH_TYPES)}")
    return _AUTH_TYPES[s]


def _dns_label(v: str) -> str:
    s = v.strip()
    if len(s) > 63 or not _DNS_LABEL.fullmatch(s):
        raise _Bad("expected a namespace name (lower-case letters, digits and -, at most 63 characters)")
    return s


def _dns_subdomain(v: str) -> str:
    s = v.strip()
    if len(s) > 253 or not re.fullmatch(rf"{_DNS_LABEL.pattern}(\.{_DNS_LABEL.pattern})*", s):
        raise _Bad("expected the name of an ApisixPluginConfig of this namespace (lower-case letters, digits, "
                   "- and .)")
    return s


def _redirect_uri(v: str) -> str:
    s = v.strip()
    if s.startswith(("http://", "https://")):
        return _url(s)
    if len(s) < 2 or not s.startswith("/") or any(c.isspace() or ord(c) < 32 for c in s) or len(s) > 4096:
        raise _Bad("expected a path starting with / or an http(s):// URL, without spaces or control characters")
    return s


def _redirect_code(v: str) -> int:
    s = v.strip()
    if s not in {str(c) for c in _REDIRECT_CODES}:
        raise _Bad(f"expected one of {', '.join(map(str, _REDIRECT_CODES))}")
    return int(s)


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
    APISIX + "http-redirect": _redirect_uri,
    APISIX + "http-redirect-code": _redirect_code,
    APISIX + "enable-csrf": _bool,
    APISIX + "csrf-key": _value,
    APISIX + "enable-response-rewrite": _bool,
    APISIX + "response-rewrite-status-code": _int(200, 598),
    APISIX + "response-rewrite-body": _text,
    APISIX + "response-rewrite-body-base64": _bool,
    APISIX + "response-rewrite-add-header": _add_headers,
    APISIX + "response-rewrite-set-header": _set_headers,
    APISIX + "response-rewrite-remove-header": _header_list,
    APISIX + "auth-uri": _url,
    APISIX + "auth-ssl-verify": _bool,
    APISIX + "auth-request-headers": _header_list,
    APISIX + "auth-upstream-headers": _header_list,
    APISIX + "auth-client-headers": _header_list,
    APISIX + "http-allow-methods": _method_list,
    APISIX + "http-block-methods": _method_list,
    APISIX + "auth-type": _auth_type,
    APISIX + "svc-namespace": _dns_label,
    APISIX + "plugin-config-name": _dns_subdomain,
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


# An annotation that only configures another one: ignored (a warning) when that one is absent.
_NEEDS: dict[str, str] = {
    APISIX + "http-redirect-code": APISIX + "http-redirect",
    APISIX + "csrf-key": APISIX + "enable-csrf",
    **{APISIX + f"response-rewrite-{k}": APISIX + "enable-response-rewrite"
       for k in ("status-code", "body", "body-base64", "add-header", "set-header", "remove-header")},
    **{APISIX + k: APISIX + "auth-uri"
       for k in ("auth-ssl-verify", "auth-request-headers", "auth-upstream-headers", "auth-client-headers")},
}
_SECRET = {APISIX + "csrf-key"}  # never repeated in messages


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
            got = "" if k in _SECRET else f", got {v!r}"
            out.errors.append((_ptr(k), f"annotation {k}: {e}{got}"))
    ann = out.values
    for k, switch in _NEEDS.items():
        if k in ann and switch not in raw:
            out.warnings.append(f"annotation {k} is ignored without {switch}"
                                + (': "true"' if switch.rpartition("/")[2].startswith("enable-") else ""))
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
    if ann.get(APISIX + "enable-csrf") and APISIX + "csrf-key" not in raw:
        out.errors.append((_ptr(APISIX + "csrf-key"), f'annotation {APISIX}csrf-key: required when {APISIX}enable-csrf '
                           'is "true" (the secret that signs the CSRF tokens)'))
    if ann.get(APISIX + "response-rewrite-body-base64"):
        body = ann.get(APISIX + "response-rewrite-body", "")
        try:
            ok = bool(body) and bool(base64.b64decode(body, validate=True))
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            out.errors.append((_ptr(APISIX + "response-rewrite-body"), f"annotation {APISIX}response-rewrite-body: "
                               f'expected non-empty base64 content when {APISIX}response-rewrite-body-base64 is "true"'
                               + (f", got {body!r}" if body else "")))
    if ann.get(APISIX + "http-allow-methods") and ann.get(APISIX + "http-block-methods"):
        out.warnings.append(f"annotation {APISIX}http-block-methods is ignored: {APISIX}http-allow-methods is set "
                            "and only the allow list applies (as apisix-ingress-controller)")
    if ann.get(APISIX + "http-redirect") and (ann.get(APISIX + "http-to-https") or ann.get(NGINX + "ssl-redirect")):
        out.warnings.append(f"annotation {APISIX}http-redirect is ignored: http-to-https is set and wins "
                            "(as apisix-ingress-controller)")
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
    elif a.get(APISIX + "http-redirect"):
        plugins["redirect"] = {"uri": a[APISIX + "http-redirect"],
                               "ret_code": a.get(APISIX + "http-redirect-code", 301)}
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
    if a.get(APISIX + "enable-csrf"):
        plugins["csrf"] = {"key": a[APISIX + "csrf-key"]}
    if a.get(APISIX + "enable-response-rewrite"):
        rr: dict[str, Any] = {}
        if APISIX + "response-rewrite-status-code" in a:
            rr["status_code"] = a[APISIX + "response-rewrite-status-code"]
        if a.get(APISIX + "response-rewrite-body"):  # empty: the body is left alone (as AIC)
            rr["body"] = a[APISIX + "response-rewrite-body"]
            if a.get(APISIX + "response-rewrite-body-base64"):
                rr["body_base64"] = True
        headers = {k: a[APISIX + f"response-rewrite-{k}-header"] for k in ("add", "set", "remove")
                   if APISIX + f"response-rewrite-{k}-header" in a}
        if headers:
            rr["headers"] = headers
        plugins["response-rewrite"] = rr
    if a.get(APISIX + "auth-uri"):
        fa: dict[str, Any] = {"uri": a[APISIX + "auth-uri"], "ssl_verify": a.get(APISIX + "auth-ssl-verify", True)}
        for k in ("request", "upstream", "client"):
            if APISIX + f"auth-{k}-headers" in a:
                fa[f"{k}_headers"] = list(a[APISIX + f"auth-{k}-headers"])
        plugins["forward-auth"] = fa
    allow_m, block_m = a.get(APISIX + "http-allow-methods"), a.get(APISIX + "http-block-methods")
    if allow_m or block_m:  # 405 for a method outside the allow list (it wins) or inside the block list
        cond = (["request_method", "!", "in", list(allow_m)] if allow_m
                else ["request_method", "in", list(block_m or ())])
        plugins["fault-injection"] = {"abort": {"http_status": 405, "vars": [[cond]]}}
    if a.get(APISIX + "auth-type"):
        plugins[a[APISIX + "auth-type"]] = {}
    return copy.deepcopy(plugins)  # each route its own lists and maps


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

    def backend(self, path: Obj, ptr: str, weight: int = 100, svc_ns: str | None = None) -> dict[str, Any]:
        """The upstream (``type``, ``nodes``, ``scheme``) of a path's backend, a Service of
        ``svc_ns`` (default: the Ingress's namespace); raises BackendError."""
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
        sname, sns = str(svc["name"]), svc_ns or self.ns
        res = resolve_backend(self.state.service(sns, sname), self.state.slices_of(sns, sname),
                              Backend(sname, pv, weight=weight), namespace=sns, pods=self.state.pods)
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

    a = ann.values
    shared: dict[str, Any] = {}  # the plugin-config-name's plugins, under each route's own
    pc_name = a.get(APISIX + "plugin-config-name")
    if pc_name:
        key, apc = APISIX + "plugin-config-name", state.plugin_config(ns, pc_name)
        problem = f"ApisixPluginConfig {ns}/{pc_name} not found" if apc is None else None
        if apc is not None:
            try:
                shared = plugin_config_plugins(apc, state)
            except ConfigError as e:
                problem = f"ApisixPluginConfig {ns}/{pc_name}: {e.pointer}: {e.message}"
        if problem:  # as a bad annotation: no route rather than one without the config's plugins
            ctx.error(_ptr(key), f"annotation {key}: {problem}")
            return Translation(kind, ns, name, own, (), tuple(ctx.errors), tuple(ctx.warnings))
    svc_ns = a.get(APISIX + "svc-namespace")
    canaries = _canaries(ing, peers, ctx)
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
        plugins = {**copy.deepcopy(shared), **_plugins(ann, p)}
        try:
            up = ctx.backend(path, ptr + "/backend", svc_ns=svc_ns)
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
                cup = _Ctx(kind, ns, str((cing.get("metadata") or {}).get("name")), state).backend(
                    cpath, "", svc_ns=cann.get(APISIX + "svc-namespace"))
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
    svc_ns = ann.get(APISIX + "svc-namespace")
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
            ctx.backend(path, "", svc_ns=svc_ns)
        except BackendError as e:
            ctx.error(f"/spec/rules/{i}/http/paths/{j}/backend", e.message)
