"""`meshgate mesh` fed by a real gRPC ADS server: what istiod sends, served as Envoy serves it.

Each test starts the CLI as a user would, pushes xDS resources shaped as istiod's, and
checks what clients see: routes by virtual host and match, Envoy's local replies, NACKs
that change nothing, updates that keep keep-alive connections, readiness, config_dump,
TCP proxying and Istio's metrics.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from adsserver import CDS, EDS, LDS, RDS, AdsServer
from gwtools import Upstream, UpstreamRequest, free_port, http, read_response
from meshtools import (eds, eds_cluster, http_listener, route_config, start_mesh, started, static_cluster,
                       tcp_listener)

pytestmark = pytest.mark.timeout(90)


def named(name: str) -> Any:
    def handler(req: UpstreamRequest) -> Any:
        body = json.dumps({"backend": name, "path": req.path, "headers": req.headers}).encode()
        return 200, {"Content-Type": "application/json", "X-Backend": name}, body
    return handler


async def backends(*names: str) -> dict[str, Upstream]:
    out = {}
    for n in names:
        out[n] = await Upstream(handler=named(n)).start()
    return out


def vhost(name: str, domains: list[str], routes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "domains": domains, "routes": routes, **extra}




@pytest.fixture
async def ups():
    u = await backends("a", "b", "c")
    yield u
    for x in u.values():
        await x.close()


async def _mesh(tmp: Path, ads: AdsServer, **kw: Any) -> Any:
    m = await started(start_mesh(tmp, ads.address, **kw))
    return m


def routes_9080(routes: list[dict[str, Any]], **cfg: Any) -> Any:
    return route_config({"name": "9080", "virtual_hosts": [
        vhost("reviews.default.svc.cluster.local:9080",
              ["reviews.default.svc.cluster.local", "reviews", "reviews.default", "10.96.0.20"], routes),
        vhost("allow_any", ["*"], [{"name": "allow_any", "match": {"prefix": "/"},
                                    "direct_response": {"status": 502, "body": {"inline_string": "any"}}}]),
    ], **cfg})


async def test_routes_by_host_and_match_as_envoy(tmp_path: Path, ads: AdsServer, ups: dict[str, Upstream]) -> None:
    port = free_port()
    ads.set(CDS, {n: static_cluster(n, [u.addr]) for n, u in ups.items()})
    ads.set(LDS, {"l": http_listener("l", port, rds="9080")})
    ads.set(RDS, {"9080": routes_9080([
        {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
         "route": {"cluster": "b"}},
        {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "c"}},
        {"match": {"path": "/exact"}, "route": {"cluster": "c"}},
        {"match": {"prefix": "/API", "case_sensitive": False}, "route": {"cluster": "c", "prefix_rewrite": "/v2"}},
        {"match": {"prefix": "/", "query_parameters": [{"name": "debug", "present_match": True}]},
         "route": {"cluster": "c"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}},
    ])})
    ads.push()
    m = await _mesh(tmp_path, ads)
    try:
        await m.settled()
        addr = ("127.0.0.1", port)
        host = "reviews.default.svc.cluster.local"
        r = await http(addr, "GET", "/x", host=host)
        assert (r.status, r.header("x-backend")) == (200, "a")
        r = await http(addr, "GET", "/x", host=f"{host}:9080")          # ignore port? not set: literal
        assert r.status == 502 and r.body == b"any"                      # the allow_any vhost
        r = await http(addr, "GET", "/x", host="reviews", headers={"end-user": "jason"})
        assert r.header("x-backend") == "b"                              # first match wins, in order
        r = await http(addr, "GET", "/items/42", host=host)
        assert r.header("x-backend") == "c"
        r = await http(addr, "GET", "/items/42x", host=host)             # the regex must match whole
        assert r.header("x-backend") == "a"
        r = await http(addr, "GET", "/exact?q=1", host=host)
        assert r.header("x-backend") == "c"
        r = await http(addr, "GET", "/api/users", host="10.96.0.20")     # case-insensitive prefix + rewrite
        assert r.header("x-backend") == "c" and json.loads(r.body)["path"] == "/v2/users"
        r = await http(addr, "GET", "/y?debug", host=host)
        assert r.header("x-backend") == "c"
        # Istio's metrics for what went upstream
        text = m.metrics()
        assert 'istio_requests_total{reporter="source"' in text
        assert 'response_code="200"' in text
    finally:
        assert m.stop() == 0


async def test_actions_and_local_replies(tmp_path: Path, ads: AdsServer, ups: dict[str, Upstream]) -> None:
    port = free_port()
    ads.set(CDS, {n: static_cluster(n, [u.addr]) for n, u in ups.items()} | {
        "dead": static_cluster("dead", [f"127.0.0.1:{free_port()}"])})
    fault = {"envoy.filters.http.fault": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 500, "percentage": {"numerator": 100}}}}
    ads.set(LDS, {"l": http_listener("l", port, rds="r", http_filters=[
        {"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}])})
    ads.set(RDS, {"r": route_config({"name": "r", "virtual_hosts": [vhost("all", ["*"], [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hello"}}},
        {"match": {"prefix": "/redir"}, "redirect": {"host_redirect": "example.com", "path_redirect": "/new",
                                                       "response_code": "FOUND"}},
        {"match": {"prefix": "/https"}, "redirect": {"https_redirect": True}},
        {"match": {"prefix": "/abort"}, "route": {"cluster": "a"}, "typed_per_filter_config": fault},
        {"match": {"prefix": "/nocluster"}, "route": {"cluster": "missing"}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/hdr"}, "route": {"cluster": "a"},
         "request_headers_to_add": [{"header": {"key": "x-added", "value": "route"},
                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "request_headers_to_remove": ["x-secret"],
         "response_headers_to_add": [{"header": {"key": "x-resp", "value": "yes"}}],
         "response_headers_to_remove": ["x-backend"]},
        {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "b", "weight": 1}, {"name": "c", "weight": 3}]}}},
    ], response_headers_to_add=[{"header": {"key": "x-vhost", "value": "v"}}])]})})
    ads.push()
    m = await _mesh(tmp_path, ads)
    try:
        await m.settled()
        addr = ("127.0.0.1", port)
        r = await http(addr, "GET", "/direct")
        assert (r.status, r.body, r.header("content-type")) == (200, b"hello", "text/plain")
        r = await http(addr, "GET", "/redir?x=1", host="h.local")
        assert r.status == 302 and r.header("location") == "http://example.com/new?x=1"
        r = await http(addr, "GET", "/https/p", host="h.local:8080")
        # Envoy keeps a non-default port on a scheme change (test_mesh_envoy.py checks it against Envoy)
        assert r.status == 301 and r.header("location") == "https://h.local:8080/https/p"
        r = await http(addr, "GET", "/abort")
        assert (r.status, r.body) == (500, b"fault filter abort")
        assert not ups["a"].requests
        r = await http(addr, "GET", "/nocluster")
        assert r.status == 503
        r = await http(addr, "GET", "/dead")
        assert r.status == 503 and b"connection failure" in r.body
        r = await http(addr, "GET", "/hdr", headers={"x-added": "client", "x-secret": "s"})
        got = ups["a"].requests[-1]
        assert got.headers_all("x-added") == ["route"] and got.header("x-secret") is None
        assert r.header("x-resp") == "yes" and r.header("x-backend") is None and r.header("x-vhost") == "v"
        seen = {"b": 0, "c": 0}
        for _ in range(200):
            r = await http(addr, "GET", "/split")
            seen[r.header("x-backend") or "?"] += 1
        # 1:3 split; 200 draws: c between 120 and 180 with overwhelming probability
        assert 120 <= seen["c"] <= 180, seen
    finally:
        assert m.stop() == 0


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_nack_keeps_last_good_config_and_updates_keep_connections(
        tmp_path: Path, ads: AdsServer, ups: dict[str, Upstream], delta: bool) -> None:
    port = free_port()
    ads.set(CDS, {"svc": eds_cluster("svc")})
    ads.set(EDS, {"svc": eds("svc", [ups["a"].addr])})
    ads.set(LDS, {"l": http_listener("l", port, rds="r")})
    ads.set(RDS, {"r": route_config({"name": "r", "virtual_hosts": [vhost("all", ["*"], [
        {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}])]})})
    v1 = ads.push()
    m = await _mesh(tmp_path, ads, delta=delta)
    try:
        await m.settled()
        await ads.wait_acked(RDS, v1)
        assert all(r.delta == delta for r in ads.requests())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def get(path: str) -> Any:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            resp = await read_response(reader)
            assert resp is not None
            return resp

        assert (await get("/")).header("x-backend") == "a"
        # an invalid route config (a regex Python cannot compile) is NACKed; the old one serves
        ads.set(RDS, {"r": route_config({"name": "r", "virtual_hosts": [vhost("all", ["*"], [
            {"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "svc"}}])]})})
        ads.push(RDS)
        await m.until(lambda: bool(ads.nacks(RDS)), 10, "RDS NACK")
        nack = ads.nacks(RDS)[-1]
        assert "invalid regex" in nack.error and "/virtual_hosts/0/routes/0/match/safe_regex/regex" in nack.error
        if not delta:
            assert nack.version == v1      # a SotW NACK carries the last good version
        assert (await get("/")).header("x-backend") == "a"
        # EDS scale-out: the same keep-alive connection reaches the new endpoint set
        ads.set(EDS, {"svc": eds("svc", [ups["b"].addr, ups["c"].addr])})
        v3 = ads.push(EDS)
        await ads.wait_acked(EDS, v3)
        await m.settled()
        seen = {(await get("/")).header("x-backend") for _ in range(6)}
        assert seen == {"b", "c"}
        # RDS change on the same connection
        ads.set(RDS, {"r": route_config({"name": "r", "virtual_hosts": [vhost("all", ["*"], [
            {"match": {"prefix": "/"}, "direct_response": {"status": 204}}])]})})
        v4 = ads.push(RDS)
        await ads.wait_acked(RDS, v4)
        await m.settled()
        assert (await get("/")).status == 204
        writer.close()
        # config_dump shows what is active, in Envoy's shape
        dump = json.loads(m.get("/config_dump")[1])
        types = [c["@type"].rsplit(".", 1)[-1] for c in dump["configs"]]
        assert types == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "RoutesConfigDump"]
        routes = dump["configs"][3]["dynamic_route_configs"]
        assert routes[0]["route_config"]["virtual_hosts"][0]["routes"][0]["direct_response"]["status"] == 204
        dump = json.loads(m.get("/config_dump?include_eds")[1])
        eps = [c for c in dump["configs"] if c["@type"].endswith("EndpointsConfigDump")][0]
        assert len(eps["dynamic_endpoint_configs"][0]["endpoint_config"]["endpoints"][0]["lb_endpoints"]) == 2
    finally:
        assert m.stop() == 0


async def test_readiness_waits_for_clusters_and_listeners(tmp_path: Path, ads: AdsServer) -> None:
    # istiod refuses streams until its caches are synced: not ready meanwhile, then ready
    # once the first CDS and LDS are applied
    ads.refuse = "server is not ready to serve discovery information"
    m = await _mesh(tmp_path, ads)
    try:
        await m.until(lambda: m.xds()["last_error"] is not None, 10, "a refused stream")
        assert m.get("/healthz/ready", m.status_port)[0] == 503
        assert m.get("/ready")[1] == b"PRE_INITIALIZING\n"
        ads.refuse = None
        ads.set(CDS, {})
        ads.set(LDS, {})
        ads.push()
        await m.until(m.ready, 15, "ready")
        assert m.get("/ready")[1] == b"LIVE\n"
    finally:
        assert m.stop() == 0


async def test_listener_warms_until_its_route_config_arrives(tmp_path: Path, ads: AdsServer,
                                                              ups: dict[str, Upstream]) -> None:
    # Envoy's listener warming: a listener naming an RDS table not received yet neither serves
    # (no 404 from an empty table) nor counts as ready; it goes live when the table arrives
    port = free_port()
    ads.set(CDS, {"a": static_cluster("a", [ups["a"].addr])})
    ads.set(LDS, {"l": http_listener("l", port, rds="r")})
    ads.push()
    m = await _mesh(tmp_path, ads)
    try:
        await m.until(lambda: m.xds()["subscriptions"].get(RDS) == ["r"], 10, "RDS subscribed")
        await asyncio.sleep(0.5)
        code, body = m.get("/healthz/ready", m.status_port)
        assert (code, body) == (503, b"not ready: listeners warming, waiting for RDS (l)\n")
        assert m.get("/ready")[1] == b"PRE_INITIALIZING\n"
        with pytest.raises(OSError):
            await http(("127.0.0.1", port), "GET", "/")
        warming = json.loads(m.get("/config_dump?resource=dynamic_listeners")[1])["configs"][0]
        assert warming["name"] == "l" and "warming_state" in warming
        ads.set(RDS, {"r": route_config({"name": "r", "virtual_hosts": [vhost("all", ["*"], [
            {"match": {"prefix": "/"}, "route": {"cluster": "a"}}])]})})
        ads.push()
        await m.settled()
        r = await http(("127.0.0.1", port), "GET", "/")
        assert (r.status, r.header("x-backend")) == (200, "a")
    finally:
        assert m.stop() == 0


async def test_tcp_proxy_and_original_destination_listener(tmp_path: Path, ads: AdsServer) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    eport = srv.sockets[0].getsockname()[1]
    port = free_port()
    ads.set(CDS, {"echo": static_cluster("echo", [f"127.0.0.1:{eport}"])})
    ads.set(LDS, {"t": tcp_listener("t", port, "echo")})
    ads.push()
    m = await _mesh(tmp_path, ads)
    try:
        await m.settled()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = bytes(range(256)) * 4096   # 1 MiB
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert got == payload
        writer.close()
        # Istio's TCP metrics for the connection, once it closed
        await m.until(lambda: "istio_tcp_connections_closed_total{" in m.metrics(), 10, "TCP metrics")
        text = m.metrics()
        sent = [ln for ln in text.splitlines() if ln.startswith("istio_tcp_received_bytes_total{")]
        assert sent and float(sent[0].rsplit(" ", 1)[1]) == len(payload), sent
        assert 'istio_tcp_connections_opened_total{reporter="source"' in text
    finally:
        assert m.stop() == 0
        srv.close()


async def test_bad_flags_exit_2_and_bad_node_id_exit_1(tmp_path: Path) -> None:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "meshgate", "mesh", "--admin-port", "x"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "meshgate", "mesh", "--node-id", "a~b", "--xds-address", "h:1"],
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 1 and "expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN" in r.stderr
    assert "Traceback" not in r.stderr


async def test_hash_policy_keeps_a_user_on_one_endpoint(tmp_path: Path, ads: AdsServer,
                                                        ups: dict[str, Upstream]) -> None:
    # DestinationRule consistentHash {httpHeaderName: x-user} → a RING_HASH cluster and a route
    # hash_policy on the header: one user, one endpoint
    port = free_port()
    ads.set(CDS, {"h": static_cluster("h", [u.addr for u in ups.values()], lb_policy="RING_HASH")})
    ads.set(LDS, {"l": http_listener("l", port, rds="r")})
    ads.set(RDS, {"r": route_config({"name": "r", "virtual_hosts": [vhost("all", ["*"], [
        {"match": {"prefix": "/"}, "route": {"cluster": "h", "hash_policy": [{"header": {"header_name": "x-user"}}]}}
    ])]})})
    ads.push()
    m = await _mesh(tmp_path, ads)
    try:
        await m.settled()
        addr = ("127.0.0.1", port)
        chosen: dict[str, set[str]] = {}
        for user in ("ann", "bob", "cid", "dan", "eve", "fay", "gus", "hal"):
            for _ in range(4):
                r = await http(addr, "GET", "/", headers={"x-user": user})
                chosen.setdefault(user, set()).add(r.header("x-backend") or "?")
        assert all(len(v) == 1 for v in chosen.values()), chosen
        assert len({next(iter(v)) for v in chosen.values()}) > 1, chosen   # users spread over endpoints
    finally:
        assert m.stop() == 0


async def test_circuit_breaker_overflows_as_envoy(tmp_path: Path, ads: AdsServer) -> None:
    # DestinationRule connectionPool {tcp.maxConnections: 1, http.http1MaxPendingRequests: 1}:
    # two requests in flight at most, across both workers; the rest get Envoy's overflow 503
    async def slow(req: UpstreamRequest) -> Any:
        await asyncio.sleep(0.8)
        return 200, {"Content-Type": "text/plain", "X-Backend": "slow"}, b"ok"

    up = await Upstream(handler=slow).start()
    port = free_port()
    limits = {"thresholds": [{"max_connections": 1, "max_pending_requests": 1, "max_requests": 1024,
                              "max_retries": 1024}]}
    ads.set(CDS, {"cb": static_cluster("cb", [up.addr], circuit_breakers=limits)})
    ads.set(LDS, {"l": http_listener("l", port, rds="r")})
    ads.set(RDS, {"r": route_config({"name": "r", "virtual_hosts": [vhost("all", ["*"], [
        {"match": {"prefix": "/"}, "route": {"cluster": "cb"}}])]})})
    ads.push()
    m = await _mesh(tmp_path, ads, workers=2)
    try:
        await m.settled()
        addr = ("127.0.0.1", port)
        got = await asyncio.gather(*(http(addr, "GET", f"/{i}") for i in range(6)))
        ok = [r for r in got if r.status == 200]
        over = [r for r in got if r.status == 503]
        assert len(ok) == 2 and len(over) == 4, [(r.status, r.body) for r in got]
        assert all(r.header("x-envoy-overloaded") == "true" and r.body.endswith(b"reset reason: overflow")
                   for r in over)
        assert len(up.requests) == 2
        # the counts come back down: the next request goes through
        r = await http(addr, "GET", "/after")
        assert r.status == 200
        assert 'response_flags="UO"' in m.metrics()
    finally:
        assert m.stop() == 0
        await up.close()


async def test_idle_downstream_connections_follow_the_hcm_idle_timeout(
        tmp_path: Path, ads: AdsServer, ups: dict[str, Upstream]) -> None:
    """A mesh listener keeps an idle keep-alive connection as long as its HCM's idle_timeout
    says (Envoy's hour when unset), not the gateway's keepalive_timeout: the peer sidecar's pool
    keeps its connections an hour too, and a server closing them sooner races its next request."""
    short, unset = free_port(), free_port()
    conf = tmp_path / "config.yaml"
    conf.write_text("nginx_config:\n  http:\n    keepalive_timeout: 1s\n")
    route = {"name": "r", "virtual_hosts": [vhost("all", ["*"], [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}])]}
    ads.set(CDS, {"a": static_cluster("a", [ups["a"].addr])})
    ads.set(LDS, {"short": http_listener("short", short, routes=route,
                                         hcm_extra={"common_http_protocol_options": {"idle_timeout": "1.5s"}}),
                  "unset": http_listener("unset", unset, routes=route)})
    ads.push()
    m = await _mesh(tmp_path, ads, extra=["-c", str(conf)])
    try:
        await m.settled()
        conns = {}
        for name, port in (("short", short), ("unset", unset)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = await read_response(reader)
            assert resp is not None and resp.header("x-backend") == "a"
            conns[name] = (reader, writer)
        t0 = asyncio.get_running_loop().time()
        # the 1.5 s listener closes its idle connection...
        assert await asyncio.wait_for(conns["short"][0].read(), 10) == b""
        took = asyncio.get_running_loop().time() - t0
        assert 1.0 <= took < 5.0, took
        # ...the other one outlives the gateway's keepalive_timeout (1 s) and still serves
        await asyncio.sleep(2.5)
        reader, writer = conns["unset"]
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = await read_response(reader)
        assert resp is not None and resp.status == 200 and resp.header("x-backend") == "a"
        for _, w in conns.values():
            w.close()
    finally:
        assert m.stop() == 0
