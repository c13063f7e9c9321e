"""ApisixConsumer → an APISIX consumer (ingress-controller.md section 2.5).

Username ``<ns>_<name>`` (made a valid APISIX username, :func:`.naming.consumer_name`).
``authParameter`` holds exactly one of ``basicAuth``, ``keyAuth``, ``jwtAuth``, ``hmacAuth``
(``wolfRBAC`` and ``ldapAuth`` are refused: Meshgate has no such plugin), each given inline as
``value`` or through ``secretRef`` (a Secret of the same namespace):

=============  ===========================================  ==============================
auth           ``value`` fields / Secret keys               plugin conf
=============  ===========================================  ==============================
keyAuth        ``key``                                      key-auth ``{key}``
basicAuth      ``username``, ``password``                   basic-auth ``{username, password}``
jwtAuth        ``key`` (required), ``secret``,              jwt-auth, same names; ``exp``
               ``public_key``, ``private_key``,             < 1 → 86400 (AIC)
               ``algorithm``, ``exp``, ``base64_secret``,
               ``lifetime_grace_period``
hmacAuth       ``key_id`` (or the older ``access_key``),    hmac-auth ``{key_id, secret_key}``
               ``secret_key``
=============  ===========================================  ==============================

Then the consumer-scoped ``plugins[]`` (a plugin of the same name as the auth one wins, as
AIC).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from .common import ClusterState, Item, Translation, TranslateError, build_plugins, object_ref, secret_data
from .naming import DEFAULT_CONTROLLER_NAME, DESC, consumer_name, labels as owner_labels

__all__ = ["translate_apisix_consumer", "AUTH_PLUGINS"]

Obj = Mapping[str, Any]

AUTH_PLUGINS = {"keyAuth": "key-auth", "basicAuth": "basic-auth", "jwtAuth": "jwt-auth", "hmacAuth": "hmac-auth"}
_UNSUPPORTED = {"wolfRBAC": "wolf-rbac", "ldapAuth": "ldap-auth"}
_JWT_EXP = 86400


def translate_apisix_consumer(ac: Obj, state: ClusterState, *,
                              controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    kind, ns, name = object_ref(ac)
    kind = kind or "ApisixConsumer"
    own = owner_labels(kind, ns, name, controller_name=controller_name,
                       object_labels=(ac.get("metadata") or {}).get("labels"))
    warnings: list[str] = []
    try:
        plugins = _auth_plugins((ac.get("spec") or {}).get("authParameter"), ns, state, warnings)
        build_plugins((ac.get("spec") or {}).get("plugins"), ns, state, pointer="/spec/plugins", into=plugins)
    except ConfigError as e:
        return Translation(kind, ns, name, own, errors=(TranslateError(e.pointer, e.message, kind=kind,
                                                                       id=f"{ns}/{name}"),))
    username = consumer_name(ns, name)
    value: dict[str, Any] = {"username": username, "desc": DESC, "labels": dict(own)}
    if plugins:
        value["plugins"] = plugins
    return Translation(kind, ns, name, own, items=(Item("consumers", username, value),), warnings=tuple(warnings))


def _auth_plugins(ap: object, ns: str, state: ClusterState, warnings: list[str]) -> dict[str, Any]:
    if ap is None:
        return {}
    if not isinstance(ap, Mapping):
        raise ConfigError("/spec/authParameter", "expected an object")
    given = [k for k in (*AUTH_PLUGINS, *_UNSUPPORTED) if ap.get(k) is not None]
    if len(given) > 1:
        raise ConfigError("/spec/authParameter", f"expected exactly one authentication, got {', '.join(given)}; "
                                                 "use one ApisixConsumer per credential")
    if not given:
        return {}
    typ = given[0]
    ptr = f"/spec/authParameter/{typ}"
    if typ in _UNSUPPORTED:
        raise ConfigError(ptr, f"{typ} is not supported: Meshgate has no {_UNSUPPORTED[typ]} plugin; use one of "
                               f"{', '.join(AUTH_PLUGINS)}")
    src = ap[typ]
    if not isinstance(src, Mapping):
        raise ConfigError(ptr, "expected an object {value} or {secretRef}")
    if isinstance(src.get("value"), Mapping):
        data: Mapping[str, Any] = src["value"]
        origin = ptr + "/value"
    elif isinstance(src.get("secretRef"), Mapping) and src["secretRef"].get("name"):
        sname = str(src["secretRef"]["name"])
        secret = state.secret(ns, sname)
        origin = ptr + "/secretRef"
        if secret is None:
            raise ConfigError(origin, f"secret {ns}/{sname} not found; create it in namespace {ns}")
        try:
            data = secret_data(secret)
        except ValueError as e:
            raise ConfigError(origin, str(e)) from None
    else:
        raise ConfigError(ptr, "required field is missing: value or secretRef")
    from_secret = origin.endswith("secretRef")
    conf = {"keyAuth": _key_auth, "basicAuth": _basic_auth, "jwtAuth": _jwt_auth, "hmacAuth": _hmac_auth}[typ](
        data, origin, from_secret, warnings)
    return {AUTH_PLUGINS[typ]: conf}


def _need(data: Mapping[str, Any], key: str, origin: str, from_secret: bool) -> str:
    v = data.get(key)
    if v is None or v == "":
        where = "key in the secret" if from_secret else "field"
        raise ConfigError(f"{origin}" + ("" if from_secret else f"/{key}"), f"required {where} {key!r} is missing or "
                                                                           "empty")
    return str(v)


def _key_auth(data: Mapping[str, Any], origin: str, from_secret: bool, warnings: list[str]) -> dict[str, Any]:
    return {"key": _need(data, "key", origin, from_secret)}


def _basic_auth(data: Mapping[str, Any], origin: str, from_secret: bool, warnings: list[str]) -> dict[str, Any]:
    return {"username": _need(data, "username", origin, from_secret),
            "password": _need(data, "password", origin, from_secret)}


def _int(v: object, key: str, origin: str) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{origin}/{key}", f"expected an integer, got {v!r}")
    try:
        return int(str(v).strip()) if not isinstance(v, int) else v
    except ValueError:
        raise ConfigError(f"{origin}/{key}", f"expected an integer, got {v!r}") from None


def _bool(v: object) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")


def _jwt_auth(data: Mapping[str, Any], origin: str, from_secret: bool, warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"key": _need(data, "key", origin, from_secret)}
    for k in ("secret", "public_key", "private_key", "algorithm"):
        if data.get(k):
            out[k] = str(data[k])
    exp = _int(data["exp"], "exp", origin) if data.get("exp") not in (None, "") else 0
    out["exp"] = exp if exp >= 1 else _JWT_EXP
    if _bool(data.get("base64_secret")):
        out["base64_secret"] = True
    if data.get("lifetime_grace_period") not in (None, ""):
        grace = _int(data["lifetime_grace_period"], "lifetime_grace_period", origin)
        if grace > 0:
            out["lifetime_grace_period"] = grace
    return out


_HMAC_LEGACY = ("algorithm", "clock_skew", "signed_headers", "keep_headers", "encode_uri_params",
                "validate_request_body", "max_req_body")


def _hmac_auth(data: Mapping[str, Any], origin: str, from_secret: bool, warnings: list[str]) -> dict[str, Any]:
    key_id = data.get("key_id") or data.get("access_key")
    if not key_id:
        where = "key in the secret" if from_secret else "field"
        raise ConfigError(origin, f"required {where} 'key_id' (or the older 'access_key') is missing or empty")
    legacy = [k for k in _HMAC_LEGACY if data.get(k) not in (None, "", [], False)]
    if legacy:
        warnings.append(f"{origin}: {', '.join(legacy)} ignored: APISIX 3.x hmac-auth takes them on the route "
                        "(plugin conf), not on the consumer")
    return {"key_id": str(key_id), "secret_key": _need(data, "secret_key", origin, from_secret)}
