"""The demo's apisix.yaml and instructions."""

from __future__ import annotations

import re
import shlex
from importlib import resources
from typing import Any

import pytest
import yaml

from meshgate.demo import (
    DEFAULT_BASE_PORT,
    SERVICE_NAMES,
    default_ports,
    demo_apisix_yaml,
    demo_instructions,
    http_request,
    start_demo_services,
)

pytestmark = pytest.mark.timeout(60)

PORTS = {name: 30000 + i for i, name in enumerate(SERVICE_NAMES)}
ID_RE = re.compile(r"^[a-zA-Z0-9-_.]{1,64}$")  # APISIX id_schema
ROUTE_FIELDS = {"id", "name", "uri", "uris", "hosts", "upstream", "upstream_id", "service_id"}
UPSTREAM_FIELDS = {"id", "name", "type", "nodes"}
SERVICE_FIELDS = {"id", "name", "upstream"}


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_yaml_parses_and_ends_with_end_marker() -> None:
    text = demo_apisix_yaml(PORTS)
    assert text.endswith("#END\n")
    assert text.rstrip().splitlines()[-1] == "#END"
    doc = load(text)
    assert set(doc) == {"routes", "services", "upstreams"}


def test_only_core_fields_and_valid_references() -> None:
    doc = load(demo_apisix_yaml(PORTS))
    upstream_ids = {u["id"] for u in doc["upstreams"]}
    service_ids = {s["id"] for s in doc["services"]}
    assert len(doc["services"]) >= 1
    for kind in ("routes", "services", "upstreams"):
        ids = [item["id"] for item in doc[kind]]
        assert len(ids) == len(set(ids))
        assert all(ID_RE.match(i) for i in ids)
    for u in doc["upstreams"]:
        assert set(u) <= UPSTREAM_FIELDS
        assert u["type"] == "roundrobin"
    for s in doc["services"]:
        assert set(s) <= SERVICE_FIELDS
    for r in doc["routes"]:
        assert set(r) <= ROUTE_FIELDS
        assert ("uri" in r) != ("uris" in r)
        assert sum(k in r for k in ("upstream", "upstream_id", "service_id")) == 1
        if "upstream_id" in r:
            assert r["upstream_id"] in upstream_ids
        if "service_id" in r:
            assert r["service_id"] in service_ids
        if "upstream" in r:
            assert r["upstream"]["type"] == "roundrobin" and r["upstream"]["nodes"]
    kinds = {("upstream" in r, "upstream_id" in r, "service_id" in r) for r in doc["routes"]}
    assert len(kinds) == 3  # inline upstream, upstream_id and service_id are all exercised


# --- a tiny model of APISIX's radixtree_host_uri matching, enough for this file -----------


def _uri_matches(pattern: str, path: str) -> bool:
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


def match(doc: dict[str, Any], host: str, path: str) -> dict[str, Any] | None:
    """Host routes first, then hostless ones (radixtree_host_uri)."""
    routes: list[dict[str, Any]] = doc["routes"]
    for want_host in (True, False):
        for r in routes:
            hosts = r.get("hosts")
            if want_host != bool(hosts) or (hosts and host not in hosts):
                continue
            if any(_uri_matches(u, path) for u in r.get("uris") or [r["uri"]]):
                return r
    return None


def nodes_of(doc: dict[str, Any], route: dict[str, Any]) -> dict[str, int]:
    if "upstream" in route:
        return dict(route["upstream"]["nodes"])
    if "upstream_id" in route:
        return dict(next(u for u in doc["upstreams"] if u["id"] == route["upstream_id"])["nodes"])
    svc = next(s for s in doc["services"] if s["id"] == route["service_id"])
    return dict(svc["upstream"]["nodes"])


def port_names(nodes: dict[str, int]) -> set[str]:
    by_port = {p: n for n, p in PORTS.items()}
    return {by_port[int(addr.rsplit(":", 1)[1])] for addr in nodes}


@pytest.mark.parametrize(
    ("host", "path", "services"),
    [
        ("bookinfo.local", "/productpage", {"productpage"}),
        ("bookinfo.local", "/", {"productpage"}),
        ("bookinfo.local", "/static/style.css", {"productpage"}),
        ("bookinfo.local", "/api/v1/products", {"productpage"}),
        ("bookinfo.local", "/api/v1/products/0/reviews", {"productpage"}),
        ("bookinfo.local", "/details/0", {"details"}),
        ("bookinfo.local", "/ratings/0", {"ratings"}),
        ("bookinfo.local", "/reviews/0", {"reviews-v1", "reviews-v2", "reviews-v3"}),
        ("reviews-v3.bookinfo.local", "/reviews/0", {"reviews-v3"}),
        ("reviews-v3.bookinfo.local", "/health", {"reviews-v3"}),
        ("bookinfo.local", "/health", {"productpage"}),
        ("anything.example", "/health", {"productpage"}),
        ("bookinfo.local", "/nope", None),
        ("other.example", "/productpage", None),
    ],
)
def test_routing(host: str, path: str, services: set[str] | None) -> None:
    doc = load(demo_apisix_yaml(PORTS))
    route = match(doc, host, path)
    if services is None:
        assert route is None
        return
    assert route is not None
    nodes = nodes_of(doc, route)
    assert port_names(nodes) == services
    assert all(addr.startswith("127.0.0.1:") for addr in nodes)
    if len(services) > 1:
        assert len(set(nodes.values())) == 1  # equal weights


def test_host_suffix_and_host() -> None:
    doc = load(demo_apisix_yaml(PORTS, host_suffix="shop.test", host="::1"))
    hosts = {h for r in doc["routes"] for h in r.get("hosts", [])}
    assert hosts == {"shop.test", "reviews-v3.shop.test"}
    assert all(addr.startswith("[::1]:") for u in doc["upstreams"] for addr in u["nodes"])


def test_missing_port_is_an_error() -> None:
    ports = dict(PORTS)
    del ports["ratings"]
    with pytest.raises(ValueError, match="ratings"):
        demo_apisix_yaml(ports)


def test_default_ports_and_shipped_file() -> None:
    assert default_ports() == {n: DEFAULT_BASE_PORT + i for i, n in enumerate(SERVICE_NAMES)}
    shipped = resources.files("meshgate.demo").joinpath("apisix.yaml").read_text(encoding="utf-8")
    assert shipped == demo_apisix_yaml(default_ports())


def test_instructions() -> None:
    text = demo_instructions(9080)
    assert "curl -i -H 'Host: bookinfo.local' http://127.0.0.1:9080/productpage" in text
    assert "Host: reviews-v3.bookinfo.local" in text
    assert "http://127.0.0.1:9080/health" in text
    assert "http://127.0.0.1:19999/" in demo_instructions(19999)


def _curls(text: str) -> list[tuple[str | None, str]]:
    """(Host header or None, path) of every curl in the instructions."""
    out = []
    for line in text.splitlines():
        if "curl " not in line:
            continue
        words = shlex.split(line.split("curl ", 1)[1].split("|")[0])
        host = None
        for i, w in enumerate(words):
            if w == "-H" and words[i + 1].lower().startswith("host:"):
                host = words[i + 1].split(":", 1)[1].strip()
        url = next(w for w in words if w.startswith("http://"))
        out.append((host, "/" + url.split("/", 3)[3]))
    return out


async def test_every_instruction_reaches_the_right_service() -> None:
    """Resolve each curl of the instructions through the yaml to a node and call it."""
    svc = await start_demo_services(base_port=0)
    try:
        doc = load(demo_apisix_yaml(svc.ports))
        curls = _curls(demo_instructions(9080))
        assert len(curls) >= 8
        for host, path in curls:
            route = match(doc, host or "127.0.0.1", path)
            if path == "/nope":
                assert route is None
                continue
            assert route is not None, (host, path)
            for addr in nodes_of(doc, route):
                resp = await http_request(f"http://{addr}{path}", host=host, timeout=5.0)
                assert resp.status == 200, (host, path, addr, resp.status)
                assert "x-demo-service" in resp.headers
    finally:
        await svc.close()
