"""Names, ids and ownership labels of generated APISIX objects, as AIC v2.

ingress-controller.md section 6 (AIC ``api/adc/types.go``, ``internal/id``,
``internal/controller/label``):

* ``id = crc32(IEEE)(name)`` as lowercase hex, so ids survive restarts and every replica
  computes the same ones (rare collisions are possible, as in AIC);
* names: route ``<ns>_<name>_<rule>``, upstream ``<ns>_<name>_<ruleIndex>_<backendIndex>``,
  stream route ``<ns>_<name>_<rule>_<PROTO>``, ssl ``<Kind>_<ns>_<name>``, consumer, plugin
  config and global rule ``<ns>_<name>``;
* labels ``k8s/kind``, ``k8s/namespace``, ``k8s/name``, ``k8s/controller-name`` and
  ``manager-by: apisix-ingress-controller`` (spelled so by AIC v2), which scope ownership.

APISIX limits names to 256 characters and label values to 1-256 non-blank characters
(``model/schemas.py``), consumer usernames to ``^[a-zA-Z0-9_-]+$``: Kubernetes names can
exceed or break these, so such values are shortened with a hash suffix (ids are always the
crc32 of the full, unshortened name, so they stay AIC's).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping

__all__ = [
    "DESC",
    "DEFAULT_CONTROLLER_NAME",
    "MANAGED_BY",
    "gen_id",
    "route_name",
    "upstream_name",
    "stream_route_name",
    "ssl_name",
    "consumer_name",
    "plugin_config_name",
    "global_rule_name",
    "global_rule_prefix",
    "global_rule_id",
    "fit_name",
    "labels",
]

DESC = "Created by apisix-ingress-controller, DO NOT modify it manually"
DEFAULT_CONTROLLER_NAME = "apisix.apache.org/apisix-ingress-controller"
MANAGED_BY = "apisix-ingress-controller"

_MAX = 256  # APISIX name / label value / username length limit


def gen_id(name: str) -> str:
    """AIC ``id.GenID``: crc32 (IEEE) of the name as lowercase hex, no padding; ``""`` → ``""``."""
    if not name:
        return ""
    return format(zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF, "x")


def fit_name(name: str, limit: int = _MAX) -> str:
    """``name`` if it fits, else its head plus ``-`` and the crc32 of the whole name."""
    if len(name) <= limit:
        return name
    suffix = "-" + gen_id(name)
    return name[: limit - len(suffix)] + suffix


def route_name(namespace: str, name: str, rule: str) -> str:
    return f"{namespace}_{name}_{rule}"


def upstream_name(namespace: str, name: str, rule_index: int, backend_index: int) -> str:
    return f"{namespace}_{name}_{rule_index}_{backend_index}"


def stream_route_name(namespace: str, name: str, rule: str, protocol: str = "TCP") -> str:
    return f"{namespace}_{name}_{rule}_{protocol or 'TCP'}"


def ssl_name(kind: str, namespace: str, name: str) -> str:
    return f"{kind}_{namespace}_{name}"


_USERNAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def consumer_name(namespace: str, name: str) -> str:
    """``<ns>_<name>``, made a valid APISIX username: characters outside ``[a-zA-Z0-9_-]``
    (a Kubernetes name may contain ``.``) become ``_``, and it is shortened to 256."""
    raw = f"{namespace}_{name}"
    clean = _USERNAME_BAD.sub("_", raw)
    if len(clean) <= _MAX:
        return clean
    suffix = "-" + gen_id(raw)
    return clean[: _MAX - len(suffix)] + suffix


def plugin_config_name(namespace: str, name: str) -> str:
    return f"{namespace}_{name}"


def global_rule_name(namespace: str, name: str) -> str:
    return f"{namespace}_{name}"


def global_rule_prefix(controller_name: str = DEFAULT_CONTROLLER_NAME) -> str:
    """APISIX's global_rule schema has no ``labels``: the controller's global rules are known
    by their id, ``k8s-<crc32 of the controller name>-<crc32 of <ns>_<name>>`` (a shape no
    hand-written rule is likely to have), so a restart can still find and delete the ones
    whose ApisixGlobalRule went away meanwhile."""
    return f"k8s-{gen_id(controller_name)}-"


def global_rule_id(namespace: str, name: str, controller_name: str = DEFAULT_CONTROLLER_NAME) -> str:
    return global_rule_prefix(controller_name) + gen_id(global_rule_name(namespace, name))


_BLANK = re.compile(r"\s+")


def _label_value(v: object) -> str | None:
    s = _BLANK.sub("_", str(v)) if v is not None else ""
    if not s:
        return None
    return fit_name(s)


def labels(kind: str, namespace: str, name: str, *, controller_name: str = DEFAULT_CONTROLLER_NAME,
           object_labels: Mapping[str, object] | None = None) -> dict[str, str]:
    """The ownership labels (AIC ``label.GenLabel``); with ``object_labels`` the Kubernetes
    object's own labels first, overridden by the ownership ones (``GenLabelWithObjectLabels``).

    Values APISIX would reject are fixed: empty values (valid in Kubernetes) are left out,
    blanks become ``_``, values over 256 characters are shortened.
    """
    out: dict[str, str] = {}
    for k, v in (object_labels or {}).items():
        val = _label_value(v)
        if val is not None and k:
            out[str(k)] = val
    for k, v in (("k8s/kind", kind), ("k8s/namespace", namespace), ("k8s/name", name),
                 ("k8s/controller-name", controller_name), ("manager-by", MANAGED_BY)):
        val = _label_value(v)
        if val is not None:
            out[k] = val
        else:
            out.pop(k, None)
    return out
