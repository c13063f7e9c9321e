"""Shared by the translator tests: YAML fixtures (tests/fixtures/k8s) and the check that
what a translator produced passes the gateway's own validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshgate.k8s.translate import Translation, validate_translation
from meshgate.plugins import PluginRegistry

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "k8s"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in __import__("yaml").safe_load_all((FIXTURES / name).read_text()) if d]


def valid(t: Translation, registry: PluginRegistry) -> Translation:
    """``t``, once every item it produced passed the gateway's schemas and plugin schemas."""
    checked = validate_translation(t, registry)
    assert t.items and len(checked.items) == len(t.items), checked.messages()
    return t


def put(ctl: Any, obj: dict[str, Any], typ: str = "ADDED") -> None:
    """An informer event, as a watch delivers it, to a controller (ingress or mesh) whose
    informers are filled by hand: the cache updated, then the controller's event handler."""
    kind = obj["kind"]
    inf = ctl.informers[kind][0]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    prev = inf.cache.get(key)
    if typ == "DELETED":
        inf.cache.pop(key, None)
    else:
        inf.cache[key] = obj
    ctl._on_event(kind, typ, obj, prev)
