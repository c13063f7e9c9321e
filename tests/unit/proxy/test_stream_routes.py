"""Stream route matching (meshgate.proxy.stream.StreamRoutes): APISIX's stream router order."""

from __future__ import annotations

from typing import Any

from meshgate.model import Resource, Snapshot
from meshgate.plugins import PluginRegistry
from meshgate.proxy.runtime import build_runtime
from meshgate.proxy.stream import StreamRoutes


def routes(*confs: dict[str, Any], extra: dict[str, Any] | None = None) -> StreamRoutes:
    res: dict[str, dict[str, Resource]] = {"stream_routes": {}, "upstreams": {}, "services": {}}
    for c in confs:
        res["stream_routes"][c["id"]] = Resource("stream_routes", c["id"], c)
    for kind, objs in (extra or {}).items():
        for o in objs:
            res[kind][o["id"]] = Resource(kind, o["id"], o)
    reg = PluginRegistry()
    reg.load_builtin()
    return StreamRoutes(build_runtime(Snapshot(version=1, resources=res), plugins=reg))


UP = {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}}


def test_first_match_in_config_order_with_every_field() -> None:
    r = routes({"id": "a", "server_port": 9100, "remote_addr": "10.0.0.0/8", "upstream": UP},
               {"id": "b", "server_addr": "127.0.0.2", "upstream": UP},
               {"id": "c", "server_port": 9100, "upstream": UP})
    assert r.match("127.0.0.1", 9100, "10.1.2.3").id == "a"      # type: ignore[union-attr]
    assert r.match("127.0.0.1", 9100, "192.168.1.1").id == "c"   # type: ignore[union-attr]
    assert r.match("127.0.0.2", 9200, "192.168.1.1").id == "b"   # type: ignore[union-attr]
    assert r.match("::ffff:127.0.0.2", 9200, "::ffff:10.0.0.1").id == "b"   # type: ignore[union-attr]
    assert r.match("127.0.0.1", 9200, "1.1.1.1") is None


def test_sni_routes_first_exact_then_longest_wildcard() -> None:
    r = routes({"id": "plain", "upstream": UP},
               {"id": "wild", "sni": "*.example.com", "upstream": UP},
               {"id": "exact", "sni": "A.Example.com", "upstream": UP})
    assert r.match("127.0.0.1", 1, "1.1.1.1", "a.example.com").id == "exact"    # type: ignore[union-attr]
    assert r.match("127.0.0.1", 1, "1.1.1.1", "b.example.com").id == "wild"     # type: ignore[union-attr]
    assert r.match("127.0.0.1", 1, "1.1.1.1", "x.b.example.com").id == "plain"  # type: ignore[union-attr]
    assert r.match("127.0.0.1", 1, "1.1.1.1").id == "plain"                     # type: ignore[union-attr]


def test_upstream_sources_and_refusals() -> None:
    r = routes({"id": "by-id", "server_port": 1, "upstream_id": "u"},
               {"id": "by-service", "server_port": 2, "service_id": "s"},
               {"id": "missing", "server_port": 3, "upstream_id": "nope"},
               {"id": "plugins", "server_port": 4, "upstream": UP, "plugins": {"syslog": {"host": "127.0.0.1"}}},
               {"id": "stream-plugin", "server_port": 5, "upstream": UP,
                "plugins": {"ip-restriction": {"whitelist": ["10.0.0.0/8"]}}},
               extra={"upstreams": [{"id": "u", **UP}], "services": [{"id": "s", "upstream": UP}]})
    assert r.match("127.0.0.1", 1, "1.1.1.1").upstream.key == "upstreams/u"      # type: ignore[union-attr]
    assert r.match("127.0.0.1", 2, "1.1.1.1").upstream is not None              # type: ignore[union-attr]
    assert r.match("127.0.0.1", 3, "1.1.1.1") is None and r.match("127.0.0.1", 4, "1.1.1.1") is None
    msgs = sorted(str(e) for e in r.errors)
    assert any("missing" in m and "no upstream" in m for m in msgs), msgs
    assert any("plugin syslog does not run on stream routes (Meshgate's stream plugins: ip-restriction, "
               "limit-conn)" in m for m in msgs), msgs
    sp = r.match("127.0.0.1", 5, "1.1.1.1")
    assert sp is not None and sp.chain is not None and sp.chain.names == ("ip-restriction",)
