"""The fast paths of proxy/http1.py answer exactly as the full parser does.

``ClientConnection._lite_request`` takes a read that is one complete request head and nothing
else; ``UpstreamConnection._lite_response`` takes a read that is one complete response with
Content-Length.  Everything else goes through the llhttp parser with per-field callbacks.

Both head codecs (proxy/codec.py: the native one and the Python reference) run every test here
(the ``codec`` fixture); a status answered by the codec itself must be the full path's.

This is a differential test, in process, with recording transports: every request of the
bad-input table and a corpus of valid requests and responses is handled twice, once in a
single read (the fast path, when it applies) and once split after the request line / status
line (the full path), and the bytes sent to the client and to the upstream must be identical.
The test also checks (with the server's fast-path counters) that the fast path did run for
the cases it is meant to take, so the comparison cannot pass by both runs taking the same path.
"""

from __future__ import annotations

import gc
import re
import types
from typing import Any

import pytest
from test_bad_input import PATHS, REJECT

from meshgate.config.store import ConfigStore
from meshgate.plugins import PluginRegistry
from meshgate.proxy import ProxyServer, ProxySettings
from meshgate.proxy import codec as head_codec
from meshgate.http.request import use_field_finder
from meshgate.proxy.http1 import ClientConnection
from meshgate.proxy.upstream_conn import UpstreamConnection
from meshgate.proxy.runtime import build_runtime

UP_PORT = 19999
CODECS: dict[str, head_codec.Codec | None] = {"python": head_codec.PYTHON, "native": head_codec.load_native(ignore_env=True)[0]}
_use: list[head_codec.Codec] = [head_codec.PYTHON]


@pytest.fixture(autouse=True, params=list(CODECS))
def codec(request: pytest.FixtureRequest) -> Any:
    """Every test runs once per head codec (the native one when it was built)."""
    c = CODECS[request.param]
    if c is None:
        pytest.skip(f"native head codec not built: {head_codec.load_native(ignore_env=True)[1]}")
    _use[0] = c
    yield c
    _use[0] = head_codec.PYTHON


def use_codec(server: ProxyServer, c: head_codec.Codec) -> None:
    server.scan_request, server.scan_response, server.resp_fields = c.scan_request, c.scan_response, c.resp_fields
    server.relay_response = c.relay_response
    use_field_finder(c.find_field if c is not head_codec.PYTHON else None)


class Transport:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.out: list[bytes] = []
        self.closed = False

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return self.info.get(key, default)

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(bytes(d) for d in data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Run:
    """One gateway worker in process with one pooled upstream connection."""

    def __init__(self, *, settings: ProxySettings | None = None, plugins: dict[str, Any] | None = None,
                 registry: PluginRegistry | None = None, tls: bool = False,
                 consumers: dict[str, Any] | None = None) -> None:
        store = ConfigStore()
        store.replace_all({"routes": {
            "1": {"id": "1", "uri": "/*", "plugins": plugins or {},
                  "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{UP_PORT}": 1}}},
        }, **({"consumers": consumers} if consumers else {})})
        reg = registry or PluginRegistry()
        reg.load_builtin()
        rt = build_runtime(store.snapshot, plugins=reg)
        self.server = ProxyServer(settings or ProxySettings(), rt)
        use_codec(self.server, _use[0])
        up = rt.upstreams["routes/1"]
        self.upconn = UpstreamConnection(self.server, (up.key, "127.0.0.1", UP_PORT, "http"))
        self.up_t = Transport({})
        self.upconn.connection_made(self.up_t)  # type: ignore[arg-type]
        self.server.pool.put(self.upconn, 10, self.server.loop.time())
        self.client = ClientConnection(self.server)
        info: dict[str, Any] = {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 9080)}
        if tls:   # what an SSL transport adds (the handshake's SSLObject: a stand-in)
            info.update(sslcontext=object(), ssl_object=types.SimpleNamespace(selected_alpn_protocol=lambda: "http/1.1"))
        self.client_t = Transport(info)
        self.client.connection_made(self.client_t)  # type: ignore[arg-type]

    def send(self, reads: list[bytes]) -> None:
        for r in reads:
            if r and not self.client_t.closed:
                self.client.data_received(r)
                self.server.writes.flush()    # what the loop does when its turn ends

    def respond(self, reads: list[bytes]) -> None:
        for r in reads:
            if r and not self.upconn.closed:
                self.upconn.data_received(r)
                self.server.writes.flush()

    @property
    def to_client(self) -> bytes:
        return _no_date(b"".join(self.client_t.out))

    @property
    def to_upstream(self) -> bytes:
        return b"".join(self.up_t.out)


def _no_date(b: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", b)


def _fields(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A head as (start line, [(name, value)]): the fast path forwards validated fields as
    received, the full path re-serialises them as "Name: value"; OWS around a value is not
    part of it (RFC 9110 5.5), so that is the only difference allowed."""
    lines = head.split(b"\r\n")
    return lines[0], [(n, v.strip(b" \t")) for n, _, v in (ln.partition(b":") for ln in lines[1:] if ln)]


def _split_request(raw: bytes) -> list[bytes]:
    """Two reads: the request line (which keeps the start-of-read checks) and the rest."""
    eol = raw.find(b"\r\n")
    cut = eol + 2 if 0 <= eol < len(raw) - 2 else 1
    return [raw[:cut], raw[cut:]]


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def both(raw: bytes, response: bytes = RESPONSE, **kw: Any) -> tuple[Run, Run]:
    whole, split = Run(**kw), Run(**kw)
    whole.send([raw])
    split.send(_split_request(raw))
    if whole.to_upstream or split.to_upstream:
        whole.respond([response])
        split.respond([response[:1], response[1:]])
    return whole, split


# --- every rejected row of the bad-input table -------------------------------------------------

@pytest.mark.parametrize("name,raw,expect", REJECT, ids=[c[0] for c in REJECT])
async def test_rejected_request_answered_identically(name: str, raw: bytes, expect: frozenset[int]) -> None:
    whole, split = both(raw)
    assert whole.to_client == split.to_client
    # (with a pooled connection at hand a chunked head may go upstream before its bad body)
    assert whole.to_upstream == split.to_upstream
    assert whole.client_t.closed and split.client_t.closed


# --- valid requests ----------------------------------------------------------------------------

VALID = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9080\r\n\r\n",
    b"GET /a/b?x=1&y=%2e HTTP/1.1\r\nHost: Example.COM\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nhost: a\r\n\r\n",
    b"OPTIONS /o HTTP/1.1\r\nHOST:a\r\nX-Empty:\r\nX-Spaces:   v  \r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: [::1]:80\r\nCookie: a=1; b=2\r\nCookie: c=3\r\n\r\n",
    b"GET /obs HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9\r\n\r\n",
    b"GET /ows HTTP/1.1\r\nHost:\t a.example:8080 \t\r\n\r\n",
    b"GET /t HTTP/1.1\r\nHost: a.\r\nTest: te-is-a-prefix-of-this-name\r\nTEST2: x\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: X-Secret\r\nX-Secret: s\r\n\r\n",
    b"GET /f HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 5.6.7.8\r\n\r\n",
    b"GET /s HTTP/1.1\r\nHost: a\r\nX-Userinfo: forged\r\nX-Apisix-Foo: 1\r\n\r\n",
    b"GET /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET /10 HTTP/1.0\r\n\r\n",
    b"GET http://abs.example/x HTTP/1.1\r\nHost: other\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    *[b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n" for _, target, _, _ in PATHS],
]


@pytest.mark.parametrize("raw", VALID, ids=[str(i) for i in range(len(VALID))])
async def test_valid_request_forwarded_identically(raw: bytes) -> None:
    whole, split = both(raw)
    assert whole.to_upstream and _fields(whole.to_upstream) == _fields(split.to_upstream)
    assert whole.to_client == split.to_client
    assert whole.to_client.startswith(b"HTTP/1.1 200 OK\r\n"), whole.to_client


@pytest.mark.parametrize("raw", VALID, ids=[str(i) for i in range(len(VALID))])
async def test_valid_request_forwarded_identically_over_tls(raw: bytes) -> None:
    whole, split = both(raw, tls=True)
    assert whole.to_upstream and _fields(whole.to_upstream) == _fields(split.to_upstream)
    assert whole.to_client == split.to_client
    assert whole.to_client.startswith(b"HTTP/1.1 200 OK\r\n"), whole.to_client
    assert b"\r\nX-Forwarded-Proto: https\r\n" in whole.to_upstream
    assert whole.client.tls is not None


async def test_fast_path_takes_plain_requests_over_tls() -> None:
    whole, split = both(VALID[0], tls=True)
    assert (whole.server.fast_requests, split.server.fast_requests) == (1, 0)
    assert b"X-Forwarded-Proto: https\r\n" in whole.to_upstream


async def test_fast_path_takes_plain_requests_and_responses() -> None:
    whole, split = both(VALID[0])
    assert (whole.server.fast_requests, whole.server.fast_responses) == (1, 1)
    assert (split.server.fast_requests, split.server.fast_responses) == (0, 0)
    assert whole.to_upstream == (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9080\r\nX-Real-IP: 127.0.0.1\r\n"
                                 b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                                 b"X-Forwarded-Port: 9080\r\nX-Forwarded-Host: 127.0.0.1:9080\r\n\r\n")
    assert whole.upconn in whole.server.pool.idle[whole.upconn.key]  # back in the pool


@pytest.mark.parametrize("raw", [
    b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /f HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET /s HTTP/1.1\r\nHost: a\r\nX-Consumer-Username: forged\r\n\r\n",
    b"GET /10 HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET http://abs.example/x HTTP/1.1\r\nHost: other\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
])
async def test_fast_path_leaves_special_requests_to_the_full_parser(raw: bytes) -> None:
    r = Run()
    r.send([raw])
    assert r.server.fast_requests == 0


async def test_trusted_peer_forwarding_headers_identical() -> None:
    s = ProxySettings(trusted_addresses=("127.0.0.1",))
    whole, split = both(b"GET /f HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n",
                        settings=s)
    assert _fields(whole.to_upstream) == _fields(split.to_upstream)
    assert b"X-Forwarded-Proto: https\r\n" in whole.to_upstream


async def test_plugins_see_the_same_header_list() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []
    spy = types.ModuleType("header_spy")
    spy.NAME = "header-spy"  # type: ignore[attr-defined]
    spy.PRIORITY = 0  # type: ignore[attr-defined]
    spy.rewrite = lambda conf, ctx: seen.append(list(ctx.req.headers))  # type: ignore[attr-defined]
    reg = PluginRegistry()
    reg.register_module(spy)
    whole, split = both(b"GET / HTTP/1.1\r\nHost: a\r\nX-A:  1 \r\nx-b: 2\r\nX-A: 3\r\n\r\n",
                        plugins={"header-spy": {}}, registry=reg)
    assert whole.server.fast_requests == 1
    assert seen[0] == seen[1] == [(b"Host", b"a"), (b"X-A", b"1"), (b"x-b", b"2"), (b"X-A", b"3")]
    assert _fields(whole.to_upstream) == _fields(split.to_upstream)


# --- responses ---------------------------------------------------------------------------------

RESPONSES = [
    RESPONSE,
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 03:00:00 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 201 \r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n\r\nabc",
    b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 500 Oops\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: secret\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Obs: caf\xe9\r\n\r\nx",
]


@pytest.mark.parametrize("response", RESPONSES, ids=[str(i) for i in range(len(RESPONSES))])
async def test_response_relayed_identically(response: bytes) -> None:
    whole, split = both(VALID[0], response)
    assert whole.to_client == split.to_client
    assert whole.up_t.closed == split.up_t.closed
    assert (whole.upconn in whole.server.pool.idle.get(whole.upconn.key, ())) == \
        (split.upconn in split.server.pool.idle.get(split.upconn.key, ()))


@pytest.mark.parametrize("response", RESPONSES + [
    b"HTTP/1.1 200 OK\r\nX-RateLimit-Limit: 7\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nx-ratelimit-remaining: 1\r\n\r\nx",
], ids=[str(i) for i in range(len(RESPONSES) + 2)])
async def test_response_with_plugins_relayed_identically(response: bytes) -> None:
    """A route with plugins but no header or body filter (key-auth-like access, limit-count's
    X-RateLimit batch, a log phase that reads the response headers) gets whole responses
    rewritten in one codec call; the client and the log phase see what the full path gives."""
    logged: list[dict[str, str]] = []
    spy = types.ModuleType("log_spy")
    spy.NAME = "log-spy"  # type: ignore[attr-defined]
    spy.PRIORITY = 0  # type: ignore[attr-defined]
    spy.log = lambda conf, ctx: logged.append(ctx.resp_headers())  # type: ignore[attr-defined]
    reg = PluginRegistry()
    reg.register_module(spy)
    plugins = {"log-spy": {}, "limit-count": {"count": 100, "time_window": 60, "key": "remote_addr"}}
    whole, split = both(VALID[0], response, plugins=plugins, registry=reg)
    # the two runs share the limit-count counter (one process): the remaining count differs,
    # and the reset time may have ticked
    left = re.compile(rb"(X-RateLimit-(?:Remaining|Reset): )[0-9.]+")
    assert left.sub(rb"\1n", whole.to_client) == left.sub(rb"\1n", split.to_client)
    for h in logged:
        h.pop("x-ratelimit-remaining", None)
        h.pop("x-ratelimit-reset", None)
    assert len(logged) in (0, 2) and logged[:1] == logged[1:]     # none: the response never ended
    assert whole.up_t.closed == split.up_t.closed
    if response in (RESPONSE, RESPONSES[1]):
        assert whole.server.whole_responses == 1 and split.server.whole_responses == 0
        assert b"X-RateLimit-Limit: 100\r\n" in whole.to_client and logged[0]["x-ratelimit-limit"] == "100"
    if b"atelimit" in response.lower():
        assert whole.server.whole_responses == 0     # the upstream's own X-RateLimit field: general path


@pytest.mark.parametrize("raw", VALID[:9], ids=[str(i) for i in range(9)])
async def test_consumer_lines_forwarded_identically(raw: bytes) -> None:
    """key-auth identifies a consumer: its X-Consumer-* lines go upstream in the one-join head
    of the fast path as the general path writes them."""
    consumers = {"jack": {"username": "jack", "custom_id": "c-7", "plugins": {"key-auth": {"key": "k1"}}}}
    raw = raw.replace(b"\r\n", b"\r\napikey: k1\r\n", 1)
    whole, split = both(raw, plugins={"key-auth": {}}, consumers=consumers)
    assert whole.to_upstream and _fields(whole.to_upstream) == _fields(split.to_upstream)
    assert b"\r\nX-Consumer-Username: jack\r\n" in whole.to_upstream
    assert b"\r\nX-Consumer-Custom-ID: c-7\r\n" in whole.to_upstream
    assert whole.to_client == split.to_client and whole.to_client.startswith(b"HTTP/1.1 200 ")


async def test_head_response_goes_through_the_full_parser() -> None:
    whole = Run()
    whole.send([b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"])
    whole.respond([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"])
    assert (whole.server.fast_requests, whole.server.fast_responses) == (1, 0)
    assert b"Content-Length: 5\r\n" in whole.to_client


async def test_fast_path_keeps_serving_after_a_refused_read() -> None:
    # a read the fast path turns down must leave the connection usable for the next request
    r = Run()
    r.send([b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"])
    r.respond([RESPONSE])
    r.send([b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"])
    r.respond([RESPONSE])
    assert r.to_upstream.count(b"GET /") == 2
    assert r.to_client.count(b"HTTP/1.1 200 OK") == 2


async def test_closed_connections_are_freed_without_the_cyclic_gc() -> None:
    # A worker serving connection churn must not hold every closed connection (its parser,
    # buffers, exchange) until CPython's cyclic GC gets round to it: measured, that was 6-8 MB
    # of a 40 MB worker under wrk.  Closing breaks the cycles; reference counting frees them.
    from meshgate.proxy.exchange import Exchange

    def ours() -> list[str]:
        return [type(o).__name__ for o in gc.get_objects()
                if isinstance(o, (ClientConnection, UpstreamConnection, Exchange))]

    req = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    gc.collect()
    before = ours()
    gc.disable()
    try:
        for split in (False, True):
            r = Run()
            r.send(_split_request(req) if split else [req])            # the codec, then the parser
            r.respond([RESPONSE[:1], RESPONSE[1:]] if split else [RESPONSE])
            r.send([req])                                                 # in flight when both go
            r.client.connection_lost(None)
            r.upconn.connection_lost(None)
            r.server.pool.close_all()
            del r
        assert ours() == before
    finally:
        gc.enable()
