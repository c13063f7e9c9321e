"""Shared pieces of the translators (meshgate.k8s.translate.common)."""

from __future__ import annotations

import base64

import pytest

from meshgate.errors import ConfigError
from meshgate.k8s.translate import ClusterState, Item, Translation, TranslateError, parse_duration, validate_translation
from meshgate.k8s.translate.common import build_plugins, insert_dotted, secret_data
from meshgate.plugins import PluginRegistry


@pytest.mark.parametrize("text,secs", [("5s", 5), ("1m30s", 90), ("500ms", 0.5), ("1.5h", 5400), ("2h45m", 9900),
                                       ("0", 0), (7, 7), (2.5, 2.5), ("10", 10), ("100us", 0.0001)])
def test_parse_duration(text: object, secs: float) -> None:
    assert parse_duration(text) == pytest.approx(secs)


@pytest.mark.parametrize("bad", ["5 seconds", "s", "-5s", "1d", True, None, -1, "nan", "5s3"])
def test_parse_duration_errors(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_insert_dotted() -> None:
    d: dict[str, object] = {"a": 1}
    insert_dotted(d, "a.b", "x")
    insert_dotted(d, "c.d.e", "y")
    insert_dotted(d, "", "z")
    assert d == {"a": {"b": "x"}, "c": {"d": {"e": "y"}}}


def test_secret_data() -> None:
    s = {"metadata": {"name": "s", "namespace": "n"}, "data": {"a": base64.b64encode(b"A").decode()},
         "stringData": {"b": "B"}}
    assert secret_data(s) == {"a": "A", "b": "B"}
    with pytest.raises(ValueError, match="secret n/s key 'a' is not base64"):
        secret_data({"metadata": {"name": "s", "namespace": "n"}, "data": {"a": "!!!"}})


def test_build_plugins_order_and_errors() -> None:
    st = ClusterState()
    out = build_plugins([{"name": "a", "config": {"x": 1}}, {"name": "b", "enable": False},
                         {"name": "a", "config": {"y": 2}}], "ns", st, pointer="/spec/plugins")
    assert out == {"a": {"y": 2}}
    with pytest.raises(ConfigError) as ei:
        build_plugins({"a": {}}, "ns", st, pointer="/spec/plugins")
    assert ei.value.pointer == "/spec/plugins"


def test_cluster_state_from_objects_ignores_others() -> None:
    st = ClusterState.from_objects([{"kind": "ConfigMap", "metadata": {"name": "x"}},
                                    {"kind": "EndpointSlice", "metadata": {"name": "no-label"}},
                                    {"kind": "Service", "metadata": {"name": "s"}}, "junk"])  # type: ignore[list-item]
    assert st.service("default", "s") is not None and not st.endpoint_slices


def test_validate_translation_drops_invalid_items() -> None:
    reg = PluginRegistry()
    reg.load_builtin()
    bad = Item("routes", "1", {"id": "1", "uris": ["/"], "plugins": {"no-such-plugin": {}}})
    good = Item("upstreams", "2", {"id": "2", "nodes": []})
    t = validate_translation(Translation("ApisixRoute", "ns", "r", {}, (bad, good)), reg)
    assert t.items == (good,)
    (e,) = t.errors
    assert isinstance(e, TranslateError)
    assert str(e) == "ApisixRoute ns/r: route 1 is invalid: /plugins/no-such-plugin: unknown plugin 'no-such-plugin'"
