"""ApisixUpstream → the upstream fields it contributes (ingress-controller.md section 2.2).

An ApisixUpstream owns no APISIX object of its own: it configures the upstreams of the
backends that use the Service of the same name in the same namespace
(:func:`upstream_fields`), and, with ``externalNodes``, is an upstream that
``ApisixRoute.http[].upstreams[]`` refers to (:func:`external_upstream`).

Mapping (AIC ``internal/adc/translator/apisixupstream.go``):

========================================  ==================================================
``loadbalancer {type, hashOn, key}``      ``type``, ``hash_on``, ``key`` (chash only)
``scheme``, ``retries``                   ``scheme``, ``retries``
``timeout {connect, send, read}``         ``timeout`` in seconds, missing parts 60
``healthCheck.active`` / ``.passive``     ``checks.active`` / ``checks.passive``
``passHost``, ``upstreamHost``            ``pass_host``, ``upstream_host``
``tlsSecret {name, namespace}``           ``tls {client_cert, client_key}`` from the Secret
``discovery {serviceName, type, args}``   ``service_name``, ``discovery_type``,
                                          ``discovery_args`` (then no ``nodes``)
``portLevelSettings[] {port, ...}``       the same fields for that Service port, over the
                                          top level (fields not set there are inherited)
``externalNodes[] {name, type, weight,    ``nodes``: a ``Domain`` name as is, a ``Service``
port}``                                   (ExternalName) by its ``externalName``; port from
                                          the scheme (80/443) when not given
========================================  ==================================================

``subsets`` are read by backend resolution (:mod:`.endpoints`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from .common import ClusterState, Translation, TranslateError, object_ref, parse_duration, secret_data, seconds
from .naming import DEFAULT_CONTROLLER_NAME, labels as owner_labels

__all__ = ["upstream_fields", "external_upstream", "check_apisix_upstream", "subsets_of", "has_discovery",
           "cert_and_key"]

Obj = Mapping[str, Any]

_LB_TYPES = ("roundrobin", "chash", "ewma", "least_conn")
_HASH_ON = ("vars", "header", "cookie", "consumer", "vars_combinations")
_SCHEMES = ("http", "https", "grpc", "grpcs", "tcp", "tls", "udp")
_PASS_HOST = ("pass", "node", "rewrite")
_DEFAULT_TIMEOUT = 60.0  # AIC apiv2.DefaultUpstreamTimeout
_SCHEME_PORT = {"https": 443, "grpcs": 443}
# A lowercase RFC 1123 subdomain (AIC utils.MatchHostDef) for Domain external nodes.
_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def subsets_of(au: Obj | None) -> list[Obj] | None:
    """``spec.subsets`` of an ApisixUpstream (``None`` without one)."""
    if au is None:
        return None
    return [s for s in (au.get("spec") or {}).get("subsets") or () if isinstance(s, Mapping)]


def has_discovery(au: Obj | None, port: int | None = None) -> bool:
    """Whether the upstream comes from APISIX service discovery instead of endpoints."""
    if au is None:
        return False
    spec = au.get("spec") or {}
    if spec.get("discovery"):
        return True
    return any(isinstance(p, Mapping) and p.get("port") == port and p.get("discovery")
               for p in spec.get("portLevelSettings") or ())


def upstream_fields(au: Obj, state: ClusterState, *, port: int | None = None) -> dict[str, Any]:
    """The APISIX upstream fields (no ``nodes``) an ApisixUpstream gives a backend on Service
    port ``port``.  Raises :class:`ConfigError` (pointer into the ApisixUpstream)."""
    _, ns, _ = object_ref(au)
    spec = au.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise ConfigError("/spec", "expected an object")
    out: dict[str, Any] = {}
    _apply_config(spec, ns, state, out, "/spec")
    if port is not None:
        for i, pls in enumerate(spec.get("portLevelSettings") or ()):
            if isinstance(pls, Mapping) and pls.get("port") == port:
                _apply_config(pls, ns, state, out, f"/spec/portLevelSettings/{i}")
    if "discovery_type" in out:
        out.pop("nodes", None)
    return out


def external_upstream(au: Obj, state: ClusterState) -> dict[str, Any]:
    """An ApisixUpstream used as an upstream of its own (``http[].upstreams[]``): its fields
    plus ``nodes`` from ``externalNodes`` (or discovery).  Raises :class:`ConfigError`."""
    _, ns, name = object_ref(au)
    out = upstream_fields(au, state)
    spec = au.get("spec") or {}
    ext = spec.get("externalNodes") or []
    if "discovery_type" in out:
        return out
    if not ext:
        raise ConfigError("/spec/externalNodes", f"ApisixUpstream {ns}/{name} has no externalNodes (nor discovery) "
                                                 "and cannot be used in http[].upstreams; add externalNodes")
    scheme = str(spec.get("scheme") or "http")
    nodes = []
    for i, n in enumerate(ext):
        ptr = f"/spec/externalNodes/{i}"
        if not isinstance(n, Mapping) or not n.get("name"):
            raise ConfigError(ptr + "/name", "required field is missing")
        weight = n.get("weight", 100)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ConfigError(ptr + "/weight", f"expected an integer >= 0, got {weight!r}")
        node_name = str(n["name"])
        if (n.get("type") or "Domain") == "Domain":
            if not _DOMAIN.match(node_name):
                raise ConfigError(ptr + "/name", f"expected a lowercase RFC 1123 domain name, got {node_name!r}")
            host = node_name
        else:
            svc = state.service(ns, node_name)
            if svc is None:
                raise ConfigError(ptr + "/name", f"service {ns}/{node_name} not found")
            sspec = svc.get("spec") or {}
            if sspec.get("type") != "ExternalName" or not sspec.get("externalName"):
                raise ConfigError(ptr + "/type", f"service {ns}/{node_name} is not of type ExternalName; an "
                                                 "externalNodes entry of type Service must name an ExternalName "
                                                 "service (or use type Domain)")
            host = str(sspec["externalName"])
        port = n.get("port")
        if port is None:
            port = _SCHEME_PORT.get(scheme, 80)
        nodes.append({"host": host, "port": port, "weight": weight})
    out["nodes"] = nodes
    return out


def check_apisix_upstream(au: Obj, state: ClusterState, *,
                          controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    """Status of an ApisixUpstream: no items (it owns none), the errors of its top level and
    of each ``portLevelSettings`` entry, each checked by the gateway's upstream validation."""
    from ...model.validate import validate_item

    kind, ns, name = object_ref(au)
    kind = kind or "ApisixUpstream"
    errors: list[TranslateError] = []
    spec = au.get("spec") or {}
    ports: list[int | None] = [None]
    ports += [p.get("port") for p in spec.get("portLevelSettings") or ()
                                        if isinstance(p, Mapping) and isinstance(p.get("port"), int)]
    for port in ports:
        try:
            fields = upstream_fields(au, state, port=port)
            if spec.get("externalNodes"):
                fields = external_upstream(au, state) if port is None else fields
        except ConfigError as e:
            errors.append(TranslateError(e.pointer, e.message, kind=kind, id=f"{ns}/{name}"))
            continue
        probe = {**fields}
        if "discovery_type" not in probe and "nodes" not in probe:
            probe["nodes"] = []
        where = "/spec" if port is None else f"/spec/portLevelSettings (port {port})"
        for ve in validate_item("upstreams", probe):
            errors.append(TranslateError(where, f"upstream{ve.pointer}: {ve.message}", kind=kind, id=f"{ns}/{name}"))
    uniq = list({str(e): e for e in errors}.values())
    return Translation(kind, ns, name, owner_labels(kind, ns, name, controller_name=controller_name),
                       errors=tuple(uniq))


# --- one config block (top level or a portLevelSettings entry) ----------------------------


def _apply_config(c: Obj, ns: str, state: ClusterState, out: dict[str, Any], base: str) -> None:
    if c.get("scheme"):
        if c["scheme"] not in _SCHEMES:
            raise ConfigError(base + "/scheme", f"expected one of {', '.join(_SCHEMES)}, got {c['scheme']!r}")
        out["scheme"] = c["scheme"]
    lb = c.get("loadbalancer")
    if isinstance(lb, Mapping) and lb.get("type"):
        t = lb["type"]
        if t not in _LB_TYPES:
            raise ConfigError(base + "/loadbalancer/type", f"expected one of {', '.join(_LB_TYPES)}, got {t!r}")
        out["type"] = t
        for k in ("hash_on", "key"):
            out.pop(k, None)
        if t == "chash":
            hash_on = lb.get("hashOn") or "vars"
            if hash_on not in _HASH_ON:
                raise ConfigError(base + "/loadbalancer/hashOn",
                                  f"expected one of {', '.join(_HASH_ON)}, got {hash_on!r}")
            out["hash_on"] = hash_on
            if lb.get("key"):
                out["key"] = str(lb["key"])
    if c.get("retries") is not None:
        r = c["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(base + "/retries", f"expected an integer >= 0, got {r!r}")
        out["retries"] = r
    if isinstance(c.get("timeout"), Mapping):
        out["timeout"] = timeout_of(c["timeout"], base + "/timeout")
    if c.get("passHost"):
        if c["passHost"] not in _PASS_HOST:
            raise ConfigError(base + "/passHost", f"expected one of {', '.join(_PASS_HOST)}, got {c['passHost']!r}")
        out["pass_host"] = c["passHost"]
    if c.get("upstreamHost"):
        out["upstream_host"] = str(c["upstreamHost"])
    hc = c.get("healthCheck")
    if isinstance(hc, Mapping) and (hc.get("active") or hc.get("passive")):
        out["checks"] = _checks(hc, base + "/healthCheck")
    tls = c.get("tlsSecret")
    if isinstance(tls, Mapping) and tls.get("name"):
        sns = str(tls.get("namespace") or ns)
        secret = state.secret(sns, str(tls["name"]))
        if secret is None:
            raise ConfigError(base + "/tlsSecret", f"secret {sns}/{tls['name']} not found")
        cert, key = cert_and_key(secret, pointer=base + "/tlsSecret")
        out["tls"] = {"client_cert": cert, "client_key": key}
    d = c.get("discovery")
    if isinstance(d, Mapping) and (d.get("serviceName") or d.get("type")):
        if not d.get("serviceName") or not d.get("type"):
            raise ConfigError(base + "/discovery", "discovery needs both serviceName and type")
        out["service_name"] = str(d["serviceName"])
        out["discovery_type"] = str(d["type"])
        if d.get("args"):
            out["discovery_args"] = dict(d["args"])


def timeout_of(t: Obj, pointer: str) -> dict[str, int | float]:
    """``{connect, send, read}`` durations → seconds; missing or zero parts are 60 s (APISIX
    needs all three)."""
    out: dict[str, int | float] = {}
    for part in ("connect", "send", "read"):
        v = t.get(part)
        try:
            secs = parse_duration(v) if v not in (None, "") else 0.0
        except ValueError as e:
            raise ConfigError(f"{pointer}/{part}", str(e)) from None
        out[part] = seconds(secs or _DEFAULT_TIMEOUT)
    return out


def cert_and_key(secret: Obj, *, pointer: str, need_key: bool = True) -> tuple[str, str]:
    """``(cert, key)`` from a Secret with keys ``cert``/``key`` (APISIX style) or
    ``tls.crt``/``tls.key`` (``kubernetes.io/tls``); without ``need_key`` also ``ca.crt``
    (AIC ``ExtractKeyPair``).  Raises :class:`ConfigError`."""
    _, ns, name = object_ref(secret)
    try:
        data = secret_data(secret)
    except ValueError as e:
        raise ConfigError(pointer, str(e)) from None
    for ck, kk in (("cert", "key"), ("tls.crt", "tls.key")):
        if ck in data:
            if need_key and kk not in data:
                raise ConfigError(pointer, f"secret {ns}/{name} has {ck!r} but no {kk!r}")
            return data[ck], data.get(kk) or ""
    if not need_key and "ca.crt" in data:
        return data["ca.crt"], ""
    wanted = "cert and key, or tls.crt and tls.key" if need_key else "cert, tls.crt or ca.crt"
    raise ConfigError(pointer, f"secret {ns}/{name} has no certificate: expected keys {wanted}")


def _int_seconds(v: object, pointer: str) -> int:
    try:
        s = parse_duration(v)
    except ValueError as e:
        raise ConfigError(pointer, str(e)) from None
    if s < 1:
        raise ConfigError(pointer, f"expected an interval of at least 1s, got {v!r}")
    return int(s)


def _checks(hc: Obj, base: str) -> dict[str, Any]:
    active = hc.get("active")
    if not isinstance(active, Mapping):
        raise ConfigError(base + "/active", "required field is missing: APISIX runs passive health checks only "
                                            "together with active ones")
    a: dict[str, Any] = {"type": active.get("type") or "http"}
    if active.get("timeout") is not None:
        try:
            a["timeout"] = seconds(parse_duration(active["timeout"]))
        except ValueError as e:
            raise ConfigError(base + "/active/timeout", str(e)) from None
    for src, dst in (("concurrency", "concurrency"), ("host", "host"), ("port", "port"), ("httpPath", "http_path")):
        if active.get(src):
            a[dst] = active[src]
    if active.get("requestHeaders"):
        a["req_headers"] = list(active["requestHeaders"])
    a["https_verify_certificate"] = active.get("strictTLS") is not False
    for part in ("healthy", "unhealthy"):
        block = active.get(part)
        if not isinstance(block, Mapping):
            continue
        d = _counts(block, part)
        if block.get("interval") not in (None, "", 0):
            d["interval"] = _int_seconds(block["interval"], f"{base}/active/{part}/interval")
        if d:
            a[part] = d
    out: dict[str, Any] = {"active": a}
    passive = hc.get("passive")
    if isinstance(passive, Mapping):
        p: dict[str, Any] = {"type": passive.get("type") or "http"}
        for part in ("healthy", "unhealthy"):
            block = passive.get(part)
            if isinstance(block, Mapping):
                d = _counts(block, part)
                if d:
                    p[part] = d
        out["passive"] = p
    return out


def _counts(src: Obj, part: str) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if src.get("httpCodes"):
        d["http_statuses"] = list(src["httpCodes"])
    names = (("successes", "successes"),) if part == "healthy" else (
        ("httpFailures", "http_failures"), ("tcpFailures", "tcp_failures"), ("timeout", "timeouts"))
    for s, dst in names:
        if src.get(s):
            d[dst] = src[s]
    return d
