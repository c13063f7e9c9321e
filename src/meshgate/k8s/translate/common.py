"""What every Kubernetes translator shares: inputs, results, errors, Secrets, plugins, durations.

Inputs are plain dicts as kube-apiserver returns them.  :class:`ClusterState` indexes the
objects a translation may look at (Services, EndpointSlices, Pods, Secrets, ApisixUpstreams,
ApisixPluginConfigs); a translator never fetches anything itself.

A translation never raises for bad input: it returns a :class:`Translation` with the APISIX
objects it could build and one :class:`TranslateError` per problem, each naming the
Kubernetes object, the field (a JSON pointer into that object, e.g.
``/spec/http/0/backends/1``) and what to do.  The controller writes them into that object's
``status.conditions`` (``Accepted=False``) and never lets them block other objects (AIC's
"one bad object blocks the whole sync", ingress-controller.md section 10.2).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError

__all__ = [
    "TranslateError",
    "Item",
    "Translation",
    "ClusterState",
    "object_ref",
    "secret_data",
    "parse_duration",
    "build_plugins",
    "plugin_conf",
    "insert_dotted",
    "validate_translation",
    "make_condition",
    "check_selector",
    "selector_matches",
    "now_rfc3339",
]

Obj = Mapping[str, Any]
Key = tuple[str, str]


class TranslateError(ConfigError):
    """A Kubernetes object cannot be translated (or only partly).

    ``kind`` is the Kubernetes kind (``ApisixRoute``), ``id`` is ``<namespace>/<name>``,
    ``pointer`` points into that object (``/spec/http/0/match/filter_func``).
    """

    def __str__(self) -> str:
        where = f"{self.kind} {self.id}: " if self.kind and self.id else (f"{self.kind}: " if self.kind else "")
        ptr = f"{self.pointer}: " if self.pointer else ""
        return f"{where}{ptr}{self.message}"


@dataclass(frozen=True, slots=True)
class Item:
    """One APISIX object: ``kind`` is a model kind (``routes``, ``upstreams``,
    ``stream_routes``, ``ssls``, ``consumers``, ``plugin_configs``, ``global_rules``), ``id``
    its key (a consumer's username), ``value`` the Admin API v3 body."""

    kind: str
    id: str
    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Translation:
    """What one Kubernetes object becomes.

    ``labels`` are the ownership labels (also set on every item whose schema has ``labels``;
    a ``global_rules`` item cannot carry them, APISIX's schema has no such field, so the
    controller keeps ownership by ``(kind, namespace, name)`` → item ids).  ``errors`` empty
    means ``Accepted=True``.
    """

    kind: str
    namespace: str
    name: str
    labels: dict[str, str]
    items: tuple[Item, ...] = ()
    errors: tuple[TranslateError, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        """``id -> value`` of the items of one model kind, in translation order."""
        return {i.id: i.value for i in self.items if i.kind == kind}

    def messages(self) -> list[str]:
        return [str(e) for e in self.errors]


def object_ref(obj: Obj) -> tuple[str, str, str]:
    """``(kind, namespace, name)`` of a Kubernetes object dict (namespace ``default`` when absent)."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return str(obj.get("kind") or ""), str(meta.get("namespace") or "default"), str(meta.get("name") or "")


# --- inputs -------------------------------------------------------------------------------

_SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_GATEWAY_API = "gateway.networking.k8s.io/"


@dataclass(frozen=True)
class ClusterState:
    """The Kubernetes objects translations read, keyed by ``(namespace, name)``.

    EndpointSlices are keyed by ``(namespace, <kubernetes.io/service-name label>)``
    (ingress-controller.md section 5) and kept sorted by name so that the output does not
    depend on list order.

    Gateway API objects (``gateway.networking.k8s.io``): Gateways and ReferenceGrants by
    ``(namespace, name)``; the cluster-scoped GatewayClasses and Namespaces (read for
    ``allowedRoutes.namespaces.selector``) by ``("", name)``.
    """

    services: Mapping[Key, Obj] = field(default_factory=dict)
    endpoint_slices: Mapping[Key, Sequence[Obj]] = field(default_factory=dict)
    pods: Mapping[Key, Obj] = field(default_factory=dict)
    secrets: Mapping[Key, Obj] = field(default_factory=dict)
    apisix_upstreams: Mapping[Key, Obj] = field(default_factory=dict)
    apisix_plugin_configs: Mapping[Key, Obj] = field(default_factory=dict)
    gateways: Mapping[Key, Obj] = field(default_factory=dict)
    gateway_classes: Mapping[Key, Obj] = field(default_factory=dict)
    reference_grants: Mapping[Key, Obj] = field(default_factory=dict)
    namespaces: Mapping[Key, Obj] = field(default_factory=dict)

    @classmethod
    def from_objects(cls, objects: Iterable[Obj]) -> ClusterState:
        """Index a mixed list of objects by their ``kind`` (others are ignored)."""
        services: dict[Key, Obj] = {}
        slices: dict[Key, list[Obj]] = {}
        pods: dict[Key, Obj] = {}
        secrets: dict[Key, Obj] = {}
        aus: dict[Key, Obj] = {}
        apcs: dict[Key, Obj] = {}
        gws: dict[Key, Obj] = {}
        gcs: dict[Key, Obj] = {}
        grants: dict[Key, Obj] = {}
        nss: dict[Key, Obj] = {}
        for o in objects:
            if not isinstance(o, Mapping):
                continue
            kind, ns, name = object_ref(o)
            if str(o.get("apiVersion") or "").startswith(_GATEWAY_API):
                gtable = {"Gateway": gws, "ReferenceGrant": grants}.get(kind)
                if gtable is not None:
                    gtable[(ns, name)] = o
                elif kind == "GatewayClass":
                    gcs[("", name)] = o
                continue
            if kind == "Namespace":
                nss[("", name)] = o
                continue
            if kind == "EndpointSlice":
                meta = o.get("metadata") or {}
                svc = (meta.get("labels") or {}).get(_SERVICE_NAME_LABEL)
                if svc:
                    slices.setdefault((ns, str(svc)), []).append(o)
                continue
            table = {"Service": services, "Pod": pods, "Secret": secrets, "ApisixUpstream": aus,
                     "ApisixPluginConfig": apcs}.get(kind)
            if table is not None:
                table[(ns, name)] = o
        for k in slices:
            slices[k].sort(key=lambda s: str((s.get("metadata") or {}).get("name") or ""))
        return cls(services, slices, pods, secrets, aus, apcs, gateways=gws, gateway_classes=gcs,
                   reference_grants=grants, namespaces=nss)

    def service(self, namespace: str, name: str) -> Obj | None:
        return self.services.get((namespace, name))

    def slices_of(self, namespace: str, service: str) -> Sequence[Obj]:
        return self.endpoint_slices.get((namespace, service), ())

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self.secrets.get((namespace, name))

    def apisix_upstream(self, namespace: str, name: str) -> Obj | None:
        return self.apisix_upstreams.get((namespace, name))

    def plugin_config(self, namespace: str, name: str) -> Obj | None:
        return self.apisix_plugin_configs.get((namespace, name))

    def gateway(self, namespace: str, name: str) -> Obj | None:
        return self.gateways.get((namespace, name))

    def gateway_class(self, name: str) -> Obj | None:
        return self.gateway_classes.get(("", name))

    def namespace(self, name: str) -> Obj | None:
        return self.namespaces.get(("", name))


# --- Secrets ------------------------------------------------------------------------------


def secret_data(secret: Obj, *, where: str = "") -> dict[str, str]:
    """A Secret's keys as text: ``data`` (base64, as the API server returns it) and
    ``stringData`` (write-only in the API, handy in fixtures; it wins, as on a write).

    Raises :class:`ValueError` naming the key when a value is not base64 or not UTF-8.
    """
    _, ns, name = object_ref(secret)
    out: dict[str, str] = {}
    data = secret.get("data") or {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            try:
                out[str(k)] = base64.b64decode(str(v), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise ValueError(f"secret {ns}/{name} key {k!r} is not base64-encoded UTF-8 text") from None
    sdata = secret.get("stringData") or {}
    if isinstance(sdata, Mapping):
        for k, v in sdata.items():
            out[str(k)] = str(v)
    return out


# --- durations ----------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(v: object) -> float:
    """Seconds in a Kubernetes ``metav1.Duration`` (Go syntax: ``5s``, ``1m30s``, ``500ms``,
    ``1.5h``); a bare number is taken as seconds.  Raises :class:`ValueError`."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration such as 5s or 1m30s, got {v!r}")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError(f"expected a positive duration, got {v!r}")
        return float(v)
    if not isinstance(v, str):
        raise ValueError(f"expected a duration such as 5s or 1m30s, got {v!r}")
    s = v.strip()
    if s in ("0", ""):
        return 0.0
    if re.fullmatch(r"\d+(\.\d*)?|\.\d+", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        _bad_duration(v)
    return total


def _bad_duration(v: object) -> float:
    raise ValueError(f"expected a duration such as 5s, 500ms or 1m30s, got {v!r}")


def seconds(v: float) -> int | float:
    """An integer when whole (``60`` rather than ``60.0`` in the APISIX object)."""
    return int(v) if float(v).is_integer() else v


# --- plugins ------------------------------------------------------------------------------


def insert_dotted(dest: dict[str, Any], key: str, value: Any) -> None:
    """``a.b.c = v`` → ``{"a": {"b": {"c": v}}}`` (a non-object on the way is replaced),
    as AIC's secretRef merge (``pkg/utils.InsertKeyInMap``)."""
    if not key:
        return
    head, dot, rest = key.partition(".")
    if not dot:
        dest[head] = value
        return
    sub = dest.get(head)
    if not isinstance(sub, dict):
        sub = {}
        dest[head] = sub
    insert_dotted(sub, rest, value)


def plugin_conf(plugin: Obj, namespace: str, state: ClusterState, *, pointer: str) -> dict[str, Any]:
    """One ``{name, enable, config, secretRef}`` entry's APISIX conf.

    ``secretRef`` names a Secret of ``namespace`` whose keys are merged into ``config``
    (dotted keys create nested objects; keys are applied in sorted order so that the
    result does not depend on map order).  Raises :class:`ConfigError` (pointer relative to
    the Kubernetes object) on a missing Secret or a non-object config.
    """
    raw = plugin.get("config")
    if raw is None:
        conf: dict[str, Any] = {}
    elif isinstance(raw, Mapping):
        conf = _deep_copy(raw)
    else:
        raise ConfigError(pointer + "/config", f"expected an object, got {type(raw).__name__}")
    ref = plugin.get("secretRef")
    if ref:
        secret = state.secret(namespace, str(ref))
        if secret is None:
            raise ConfigError(pointer + "/secretRef", f"secret {namespace}/{ref} not found; create it in namespace "
                                                      f"{namespace} or remove secretRef")
        try:
            data = secret_data(secret)
        except ValueError as e:
            raise ConfigError(pointer + "/secretRef", str(e)) from None
        for k in sorted(data):
            insert_dotted(conf, k, data[k])
    return conf


def build_plugins(entries: object, namespace: str, state: ClusterState, *, pointer: str,
                  into: dict[str, Any] | None = None) -> dict[str, Any]:
    """``plugins[]`` (``enable: false`` entries dropped; ``enable`` defaults to true) →
    APISIX ``plugins`` (a later entry of the same name wins).  Raises :class:`ConfigError`."""
    out: dict[str, Any] = into if into is not None else {}
    if entries is None:
        return out
    if not isinstance(entries, list):
        raise ConfigError(pointer, "expected an array of {name, enable, config, secretRef}")
    for i, p in enumerate(entries):
        ptr = f"{pointer}/{i}"
        if not isinstance(p, Mapping) or not p.get("name"):
            raise ConfigError(ptr + "/name", "required field is missing: a plugin needs a name")
        if p.get("enable", True) is False:
            continue
        out[str(p["name"])] = plugin_conf(p, namespace, state, pointer=ptr)
    return out


def _deep_copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _deep_copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deep_copy(x) for x in v]
    return v


# --- validation by the gateway's own rules ---------------------------------------------------


def validate_translation(t: Translation, registry: Any) -> Translation:
    """Check every item with the gateway's validation (``validate_item`` and each plugin's
    schema through ``registry``, a :class:`~meshgate.plugins.PluginRegistry`); invalid items
    are dropped and reported as errors of the Kubernetes object."""
    from ...model.validate import validate_item

    keep: list[Item] = []
    errors = list(t.errors)
    for it in t.items:
        problems: list[str] = [f"{e.pointer or '/'}: {e.message}" for e in validate_item(it.kind, it.value, id=it.id)]
        problems += _plugin_problems(it.value, registry, kind=it.kind, id=it.id)
        if problems:
            errors += [TranslateError("", f"{_singular(it.kind)} {it.id} is invalid: {p}", kind=t.kind,
                                      id=f"{t.namespace}/{t.name}") for p in problems]
        else:
            keep.append(it)
    return Translation(t.kind, t.namespace, t.name, t.labels, tuple(keep), tuple(errors), t.warnings)


def _plugin_problems(value: Mapping[str, Any], registry: Any, *, kind: str, id: str) -> list[str]:
    out: list[str] = []
    schema_type = "consumer" if kind == "consumers" else "route"

    def check(plugins: object, base: str) -> None:
        if not isinstance(plugins, Mapping):
            return
        for name, conf in plugins.items():
            try:
                registry.validate(name, conf, pointer=f"{base}/{name}", kind=kind, id=id, schema_type=schema_type)
            except ConfigError as e:
                out.append(f"{e.pointer}: {e.message}")
            if name == "traffic-split" and isinstance(conf, Mapping):
                for ri, rule in enumerate(conf.get("rules") or ()):
                    for wi, wu in enumerate((rule or {}).get("weighted_upstreams") or ()):
                        up = (wu or {}).get("upstream")
                        if isinstance(up, Mapping):
                            from ...model.validate import validate_item
                            for ue in validate_item("upstreams", up):
                                out.append(f"{base}/{name}/rules/{ri}/weighted_upstreams/{wi}/upstream"
                                           f"{ue.pointer}: {ue.message}")

    check(value.get("plugins"), "/plugins")
    return out


def _singular(kind: str) -> str:
    return {"routes": "route", "upstreams": "upstream", "stream_routes": "stream route", "ssls": "ssl",
            "consumers": "consumer", "plugin_configs": "plugin config", "global_rules": "global rule"}.get(kind, kind)


# --- status conditions and label selectors (shared by every controller) ---------------------

MAX_CONDITION_MESSAGE = 8192  # what users read (the CRDs allow 32768; AIC #2783)


def now_rfc3339() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_condition(type_: str, status: str, reason: str, message: str, *, generation: int,
                   previous: Sequence[Mapping[str, Any]] | None = None, now: str | None = None) -> dict[str, Any]:
    """A metav1.Condition; the message is truncated to :data:`MAX_CONDITION_MESSAGE` and
    ``lastTransitionTime`` is the previous one of that type unless the status flips."""
    if len(message) > MAX_CONDITION_MESSAGE:
        message = message[:MAX_CONDITION_MESSAGE - 20] + " ... (truncated)"
    prev = next((c for c in previous or () if isinstance(c, Mapping) and c.get("type") == type_), None)
    ltt = str(prev["lastTransitionTime"]) if prev is not None and prev.get("status") == status and \
        prev.get("lastTransitionTime") else (now or now_rfc3339())
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": int(generation), "lastTransitionTime": ltt}


_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def check_selector(sel: object, pointer: str = "/spec/selector") -> list[str]:
    """The problems of a metav1.LabelSelector (empty list: valid; None is valid)."""
    if sel is None:
        return []
    if not isinstance(sel, Mapping):
        return [f"{pointer}: expected an object {{matchLabels, matchExpressions}}"]
    out = []
    ml = sel.get("matchLabels")
    if ml is not None and (not isinstance(ml, Mapping) or not all(isinstance(v, str) for v in ml.values())):
        out.append(f"{pointer}/matchLabels: expected a map of label names to string values")
    exprs = sel.get("matchExpressions")
    if exprs is not None and not isinstance(exprs, list):
        return out + [f"{pointer}/matchExpressions: expected an array"]
    for i, e in enumerate(exprs or ()):
        p = f"{pointer}/matchExpressions/{i}"
        if not isinstance(e, Mapping) or not isinstance(e.get("key"), str) or not e.get("key"):
            out.append(f"{p}: expected {{key, operator, values}}")
            continue
        op, values = e.get("operator"), e.get("values") or []
        if op not in _SELECTOR_OPERATORS:
            out.append(f"{p}/operator: expected one of {', '.join(_SELECTOR_OPERATORS)}, got {op!r}")
        elif op in ("In", "NotIn") and not values:
            out.append(f"{p}/values: operator {op} needs at least one value")
        elif op in ("Exists", "DoesNotExist") and values:
            out.append(f"{p}/values: operator {op} takes no values")
    return out


def selector_matches(sel: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics: every requirement holds (an empty selector selects
    everything).  An invalid selector (:func:`check_selector`) matches nothing."""
    if not sel:
        return True
    if check_selector(sel):
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(str(k)) != v:
            return False
    for e in sel.get("matchExpressions") or ():
        key, op, values = e["key"], e["operator"], [str(v) for v in e.get("values") or ()]
        has = key in labels
        if (op == "In" and not (has and labels[key] in values)) or (op == "NotIn" and has and labels[key] in values) \
                or (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True
