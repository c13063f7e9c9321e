"""ApisixTls + Secrets → an APISIX ssl (ingress-controller.md section 2.3).

``hosts[]`` → ``snis`` (lowercased, de-duplicated), ``secret {name, namespace}`` → ``cert`` and
``key`` (keys ``cert``/``key`` or ``tls.crt``/``tls.key``), ``client {caSecret, depth,
skip_mtls_uri_regex}`` → ``client {ca, depth, skip_mtls_uri_regex}`` (the CA from ``cert``,
``tls.crt`` or ``ca.crt``).  Id: crc32 of ``ApisixTls_<ns>_<name>`` (AIC
``ComposeSSLName``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from .apisixupstream import cert_and_key
from .common import ClusterState, Item, Translation, TranslateError, object_ref
from .naming import DEFAULT_CONTROLLER_NAME, DESC, gen_id, labels as owner_labels, ssl_name

__all__ = ["translate_apisix_tls"]

Obj = Mapping[str, Any]


def translate_apisix_tls(tls: Obj, state: ClusterState, *,
                         controller_name: str = DEFAULT_CONTROLLER_NAME) -> Translation:
    """One ApisixTls → one ``ssls`` item; never raises for bad input."""
    kind, ns, name = object_ref(tls)
    kind = kind or "ApisixTls"
    own = owner_labels(kind, ns, name, controller_name=controller_name)
    try:
        ssl = _ssl(tls, ns, name, kind, state, own)
    except ConfigError as e:
        return Translation(kind, ns, name, own, errors=(TranslateError(e.pointer, e.message, kind=kind,
                                                                       id=f"{ns}/{name}"),))
    return Translation(kind, ns, name, own, items=(Item("ssls", ssl["id"], ssl),))


def _secret(ref: object, ns: str, state: ClusterState, pointer: str) -> Obj:
    if not isinstance(ref, Mapping) or not ref.get("name"):
        raise ConfigError(pointer + "/name", "required field is missing")
    sns = str(ref.get("namespace") or ns)
    secret = state.secret(sns, str(ref["name"]))
    if secret is None:
        raise ConfigError(pointer, f"secret {sns}/{ref['name']} not found")
    return secret


def _ssl(tls: Obj, ns: str, name: str, kind: str, state: ClusterState, own: dict[str, str]) -> dict[str, Any]:
    spec = tls.get("spec") or {}
    hosts: list[str] = []
    for h in spec.get("hosts") or ():
        h = str(h).strip().lower()
        if h and h not in hosts:
            hosts.append(h)
    if not hosts:
        raise ConfigError("/spec/hosts", "required field is missing: at least one host (SNI)")
    cert, key = cert_and_key(_secret(spec.get("secret"), ns, state, "/spec/secret"), pointer="/spec/secret")
    sid = gen_id(ssl_name(kind, ns, name))
    out: dict[str, Any] = {"id": sid, "desc": DESC, "labels": dict(own), "snis": hosts, "cert": cert, "key": key}
    client = spec.get("client")
    if isinstance(client, Mapping):
        ca, _ = cert_and_key(_secret(client.get("caSecret"), ns, state, "/spec/client/caSecret"),
                             pointer="/spec/client/caSecret", need_key=False)
        c: dict[str, Any] = {"ca": ca}
        depth = client.get("depth")
        if depth is not None:
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
                raise ConfigError("/spec/client/depth", f"expected an integer >= 0, got {depth!r}")
            c["depth"] = depth
        skip = [str(r) for r in client.get("skip_mtls_uri_regex") or ()]
        if skip:
            c["skip_mtls_uri_regex"] = list(dict.fromkeys(skip))
        out["client"] = c
    return out
