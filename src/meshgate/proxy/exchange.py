"""The request's life, independent of the downstream protocol: what plugins see as ``ctx``.

Theory of operation
-------------------
A downstream codec (``http1.ClientConnection`` today, HTTP/2 next) parses a request into a
:class:`~meshgate.http.Request`, creates an :class:`Exchange` and feeds it: ``start()``
once the head is complete, ``on_req_body(chunk)`` / ``on_req_complete()`` as the body
arrives, ``on_client_lost()`` if the client goes away.  The exchange routes, runs the plugin
phases, picks a node, takes a pooled keep-alive ``UpstreamConnection`` (or connects), sends a
re-serialised head with exactly one framing, and streams the body both ways with
back-pressure.  It talks back to its codec only through the :class:`Downstream` interface.

Retries (APISIX/nginx ``proxy_next_upstream error timeout``) go to another node while
nothing has been sent to the client, the request body can be replayed, and either
nothing was sent upstream or the method is idempotent.  A pooled connection that the
server closed under us is retried transparently.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from urllib.parse import urlencode
from typing import TYPE_CHECKING, Any, Callable, Final, Sequence

from mypy_extensions import trait

from ..errors import ProtocolError
from ..http import HOP_BY_HOP, Request, split_fields
from ..plugins import Consumer, Pending, PluginChain, to_answer
from ..plugins.chain import CtxBase
from ..router.radixtree import Router
from ..upstream import Node
from . import headcodec
from .common import HTML, NOT_FOUND, P_BUFFER, REASONS, date_server_lines, error_body
from .upstream_conn import UpstreamConnection

if TYPE_CHECKING:
    from .runtime import RouteRuntime, Runtime, UpstreamRuntime
    from .server import ProxyServer

__all__ = ["Exchange", "Downstream"]

log = logging.getLogger("meshgate.proxy")
access_log = logging.getLogger("meshgate.access")

REPLAY_LIMIT = 1 << 20          # request bodies up to 1 MiB are kept for retries
HIGH_WATER = 64 * 1024          # buffered request body before reading is paused

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# Request headers never copied upstream: hop-by-hop, framing we re-create, and the
# forwarding headers the gateway sets itself (hardening case 31/37).
_DROP_REQ: Final = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-real-ip", b"x-forwarded-for",
                          b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"}
# Headers a client must not be able to strip by naming them in Connection (hardening case 38).
_PROTECTED: Final = frozenset({b"authorization", b"x-api-key", b"apikey", b"host", b"content-length", b"cookie"})
# Response fields handled on the raw head (each field is "\r\nName: value").

_TEXT = b"text/plain"            # nginx default_type: what APISIX's local answers carry
# never taken from a plugin's answer headers: framing is the codec's
_LOCAL_SKIP = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date", b"server"})
_NO_UPSTREAM: Final = b'{"error_msg":"missing upstream configuration in Route or Service"}\n'
MAX_READ_BODY = 16 << 20        # ctx.read_body() without a limit and without client_max_body_size
_FWD_NAMES = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
                        "x-real-ip"})

_FWD_OUT: Final = ((b"x-real-ip", b"X-Real-IP: "), (b"x-forwarded-for", b"X-Forwarded-For: "),
            (b"x-forwarded-proto", b"X-Forwarded-Proto: "), (b"x-forwarded-port", b"X-Forwarded-Port: "),
            (b"x-forwarded-host", b"X-Forwarded-Host: "))

# the pipeline's steps (Exchange._pipeline)
# (Final: compiled as constants, not global lookups)
ST_MATCH: Final = 0
ST_GREWRITE: Final = 1
ST_REWRITE: Final = 2
ST_CONSUMER: Final = 3
ST_GACCESS: Final = 4
ST_ACCESS: Final = 5
ST_UPSTREAM: Final = 6
ST_BEFORE: Final = 7
ST_PROXY: Final = 8
_NO_NAMES: Final[frozenset[str]] = frozenset()


def _apply_op(headers: list[tuple[bytes, bytes]], op: int, name: str, value: str | None) -> None:
    """Set (op 0: replace, None removes) or add (op 1) one header in a (name, value) list."""
    bname = name.encode("latin-1")
    if op == 0:
        lname = bname.lower()
        headers[:] = [(n, v) for n, v in headers if n.lower() != lname]
    if value is not None:
        headers.append((bname, value.encode("latin-1")))


@trait
class Downstream:
    """What an exchange needs from the downstream codec that feeds it: an HTTP/1 connection
    (``http1.ClientConnection``) or one HTTP/2 stream (``http2.H2Stream``).  ``send_local`` with
    an empty ``content_type`` sends neither Content-Type nor a body (Envoy's bare local replies).

    A trait (mypyc): both codecs derive from it, so when compiled the exchange reads these
    attributes and calls these methods natively instead of by name."""

    handle: Any          # mesh: the connection's filter chain (proxy/mesh.ChainHandle), else None
    orig_dst: tuple[str, int] | None   # mesh: (ip, port) the connection was sent to before capture
    server_name: bytes | None   # mesh: the Server header value, else None (the gateway's)

    server: ProxyServer
    peer_ip: str
    peer_trusted: bool          # peer in apisix.trusted_addresses
    peer_real_ip_ok: bool       # peer in real_ip_from
    fwd_lines: bytes            # X-Real-IP/-For/-Proto lines for a request with no forwarding headers

    def is_closing(self) -> bool:
        raise NotImplementedError

    def fwd_tail_for(self, hh: str, req: Request) -> bytes:
        """X-Forwarded-Port/-Host lines for a request whose Host value is ``hh`` (what
        ``forwarded_tail`` makes), cached per connection: clients repeat their Host."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def send_continue(self) -> None:
        raise NotImplementedError

    def send_local(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"application/json",
                   extra: bytes = b"", head_only: bool = False) -> None:
        raise NotImplementedError

    def response_head(self, ex: Exchange, status_line: bytes, fields: bytes, status: int, cl: int | None,
                      no_body: bool, keep: bool) -> tuple[bytes, bool, bool]:
        raise NotImplementedError

    def start_tunnel(self, upstream: UpstreamConnection, early: bytes) -> None:
        raise NotImplementedError

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def exchange_done(self, ex: Exchange, keep_alive: bool) -> None:
        raise NotImplementedError

    def pause_read(self, reason: int) -> None:
        raise NotImplementedError

    def resume_read(self, reason: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def is_idle(self) -> bool:
        raise NotImplementedError


def forwarded_tail(hh: str, req: Request) -> bytes:
    """X-Forwarded-Port and X-Forwarded-Host for a request with no forwarding headers to honour
    (APISIX: the Host as sent, port included; the port it carries, else the port the request
    came in on)."""
    obs_host = hh.encode("latin-1") if hh else (req.host or req.server_addr).encode("latin-1")
    return (b"X-Forwarded-Port: " + (_host_port(hh) or b"%d" % req.server_port)
            + b"\r\nX-Forwarded-Host: " + obs_host + b"\r\n")


class Exchange(CtxBase):
    """One request through routing, plugins, the upstream, and back.  Also the plugin ctx
    (compiled plugins call :class:`~meshgate.plugins.chain.CtxBase`'s methods natively).

    Defaults are class attributes: an exchange stores only what it changes, which keeps
    the per-request allocation small (hot path).
    """

    route: RouteRuntime | None = None
    up: UpstreamRuntime | None = None
    tmo: Any = None                          # Timeouts in force (route's, else upstream's)
    node: Node | None = None
    tried: Sequence[Node] = ()
    upstream: UpstreamConnection | None = None
    req_done = False
    body_buf: list[bytes] | None = None      # body chunks not yet sent upstream (as received)
    body_size = 0
    replay: list[bytes] | None = None        # body chunks kept for retries...
    replay_ok = True                         # ...until it grows past REPLAY_LIMIT
    sent_upstream = False
    resp_started = False
    resp_status = 0
    resp_chunked = False
    finished = False
    deadline = 0.0
    up_phase = 0                             # 0 idle, 1 connecting, 2 request sent / reading
    first_try_at = 0.0
    wants_tunnel = False
    tunnel_early: list[bytes] | None = None  # client bytes after an Upgrade head, until the 101
    consumer: Any = None
    vars: dict[str, Any] | None = None
    t_connect = 0.0
    resp_body_allowed = True
    upstream_status = 0
    continue_sent = False
    retrying = False                         # mesh: a retriable response was dropped, next try soon
    cb_key: str | None = None                # mesh: the cluster whose circuit breaker counts this request
    conf_override: Any = None
    _resp_fields = b""
    _resp_headers: list[tuple[bytes, bytes]] | None = None
    _resp_raw: bytes | None = None           # relay_whole: the raw response, split when a plugin asks
    _resp_block = b""                        # relay_whole: the batch's lines it added ("Name: value\r\n" each)
    lite_resp = True                         # the response may take UpstreamConnection._lite_response
    whole = False                            # ... and relay_whole: an HTTP/1.1 gateway client, not HEAD
    resp_trailers: list[tuple[bytes, bytes]] | None = None   # the upstream's trailers (HTTP/2 upstream)
    up_h2 = False                            # this try talks HTTP/2 to the upstream
    # plugin pipeline state
    chain: PluginChain | None = None         # the route's chain (merged with the consumer's once known)
    gchain: PluginChain | None = None        # the global rules' chain as it runs for this route
    added: frozenset[str] = _NO_NAMES        # plugins a consumer added (their rewrite runs after auth)
    no_route = False
    fwd_set: dict[bytes, bytes | None] | None = None   # X-Forwarded-*/X-Real-IP set by plugins
    up_extra = b""                           # header lines the gateway adds upstream (X-Consumer-*)
    collect: list[bytes] | None = None       # raw request body, once a plugin asked for it
    collect_size = 0
    collect_limit = 0
    body_waiter: Any = None                  # future: the request body is complete
    resp_ops: list[tuple[int, str, str | None]] | None = None   # response header edits before a response
    resp_batch: tuple[tuple[str, ...], tuple[Any, ...]] | None = None   # set_resp_headers, not yet in resp_ops
    in_resp = False                          # response headers exist (resp_fields is live)
    body_mod = False                         # a header_filter said the body changes length
    resp_len: int | None = None              # the response body's length when known (header filters)
    body_filters = False                     # the response body goes through body_filter hooks
    chunk = b""                              # body_filter: the current chunk ...
    eof = False                              # ... and whether it is the last
    bytes_sent = 0
    t_up_start = 0.0
    t_up_end = 0.0
    t_end = 0.0
    now = 0.0                                # the clock while the read that carried the request is handled

    def __init__(self, conn: Downstream, req: Request, conn_tokens: list[bytes] | None) -> None:
        self.conn = conn
        self.server = server = conn.server
        self.req = req
        self.conn_tokens = conn_tokens
        h = conn.handle
        # a mesh connection runs with its filter chain's current route table (proxy/mesh.py)
        self.runtime: Runtime = server.runtime if h is None or h.view is None else h.view.runtime
        self.client_keep = req.keep_alive
        self.out: list[bytes] = []
        upg = req.upgrade
        if upg is not None and upg.lower() == b"websocket":
            self.wants_tunnel = True
            self.tunnel_early = []
            self.lite_resp = False
        if req.method == "HEAD":
            self.lite_resp = False

    # -- plugin ctx API (docs/plugins.md) ------------------------------------------------------
    def var(self, name: str) -> Any:
        if self.vars is not None:
            v = self.vars.get(name)
            if v is not None:
                return v
        f = _EX_VARS.get(name)
        if f is not None:
            return f(self)
        if name.startswith("upstream_trailer_"):
            # nginx $upstream_trailer_<name>: a field of the upstream's trailers (HTTP/2)
            want = name[17:].replace("_", "-").encode("latin-1")
            for n, v in self.resp_trailers or ():
                if n.lower() == want:
                    return v.decode("latin-1")
            return None
        if name.startswith("sent_http_"):
            # nginx $sent_http_<name>: a response header as the client gets it
            return self.resp_header(name[10:].replace("_", "-")) if self.in_resp else None
        return self.req.var(name)

    def metric_fields(self) -> tuple[Any, ...]:
        """What a metrics or logging plugin reads of a finished request, in one call:
        ``(route_id, route_name, service_id, service_name, matched_uri, matched_host,
        consumer_name, balancer_ip, status, upstream_response_time, request_time,
        request_length, bytes_sent, response_source, request_type, request_llm_model,
        llm_model)``, each what :meth:`var` answers for that name (thirteen variable
        lookups cost the prometheus plugin more than its own work)."""
        if self.vars is not None:      # a plugin set some variable: answer them as var() does
            v = self.var
            return (v("route_id"), v("route_name"), v("service_id"), v("service_name"), v("matched_uri"),
                    v("matched_host"), v("consumer_name"), v("balancer_ip"), v("status"),
                    v("upstream_response_time"), v("request_time"), v("request_length"), v("bytes_sent"),
                    v("response_source"), v("request_type"), v("request_llm_model"), v("llm_model"))
        r = self.route
        c = self.consumer
        n = self.node
        return (r.id if r is not None else None, r.name if r is not None else None,
                r.service_id if r is not None else None, r.service_name if r is not None else None,
                r.matched_uri if r is not None else None, r.matched_host if r is not None else None,
                c.username if c is not None else None, n.host if n is not None else None,
                self.resp_status or None, _upstream_time(self), _request_time(self), _request_length(self),
                self.bytes_sent,
                "upstream" if self.upstream_status else "nginx" if n is not None else "apisix",
                None, None, None)

    def set_var(self, name: str, value: Any) -> None:
        if self.vars is None:
            self.vars = {}
        self.vars[name] = value
        if name == "remote_addr" and value:
            self.req.remote_addr = str(value)   # real-ip: later plugins, logs and X-Real-IP see it
        elif name == "remote_port" and value:
            self.req.remote_port = int(value)

    @property
    def consumer_name(self) -> str | None:
        c = self.consumer
        return c.username if c is not None else None

    @property
    def method(self) -> str:
        return self.req.method

    @property
    def uri(self) -> str:
        return self.req.path

    @property
    def remote_addr(self) -> str:
        return self.req.remote_addr

    @property
    def route_id(self) -> str | None:
        return self.route.id if self.route is not None else None

    @property
    def route_conf(self) -> Any:
        return self.route.conf if self.route is not None else None

    def req_header(self, name: str) -> str | None:
        if self.up_extra:
            got = _extra_field(self.up_extra, name)
            if got is not None:
                return got
        return self.req.header(name)

    def req_headers(self) -> dict[str, str]:
        return self.req.header_index()

    def set_req_header(self, name: str, value: Any) -> None:
        ln = name.lower()
        if self.up_extra and _extra_field(self.up_extra, name) is not None:
            self.up_extra = b"".join(line + b"\r\n" for line in self.up_extra.split(b"\r\n")
                                     if line and not line.lower().startswith(ln.encode("latin-1") + b":"))
        if ln == "host":
            self.set_var("upstream_host", None if value is None else str(value))
            return
        if ln in _FWD_NAMES:
            if self.fwd_set is None:
                self.fwd_set = {}
            self.fwd_set[ln.encode()] = None if value is None else str(value).encode("latin-1")
            return
        self.req.set_header(name, None if value is None else str(value))

    def add_req_header(self, name: str, value: Any) -> None:
        req = self.req
        req.headers.append((name.encode("latin-1"), str(value).encode("latin-1")))
        req._hindex = None

    def args(self) -> dict[str, str]:
        return self.req.args()

    def set_args(self, args: Any) -> None:
        """Replace the query sent upstream (a dict, or an already encoded string)."""
        q = args if isinstance(args, str) else urlencode(args, doseq=True)
        self.req.query = q or None
        self.req._args = None

    async def read_body(self, max_size: int | None = None) -> bytes:
        """The whole request body (buffered before proxying; 413 above the limit)."""
        req = self.req
        if not req.chunked and not req.content_length:
            return b""
        node_limit = self.server.settings.client_max_body_size
        limit = min(max_size, node_limit) if max_size and node_limit else max_size or node_limit or MAX_READ_BODY
        if self.collect is None:
            buf = self.body_buf or []
            self.collect = [b"".join(buf)] if buf else []
            self.collect_size = sum(len(b) for b in self.collect)
            self.collect_limit = limit
            self.conn.resume_read(P_BUFFER)
        if self.collect_size > limit:
            raise ProtocolError(413, "request body too large")
        if not self.req_done:
            if req.expect_continue and not self.continue_sent:
                # the client waits for this before it sends the body the plugin is waiting for
                self.conn.send_continue()
                self.continue_sent = True
            fut = self.body_waiter
            if fut is None:
                fut = self.body_waiter = self.server.loop.create_future()
            await fut
        return b"".join(self.collect)

    def set_body(self, data: bytes) -> None:
        """Replace the body sent upstream (after read_body, or on a request without one)."""
        req = self.req
        if (req.chunked or req.content_length) and not self.req_done:
            raise RuntimeError("set_body before the request body was read (await ctx.read_body() first)")
        req.chunked = False
        req.content_length = len(data)
        self.body_buf = [data] if data else None
        self.replay = [data] if data else None
        self.replay_ok = True
        self.body_size = len(data)
        self.collect = [data]
        self.collect_size = len(data)

    def resp_header(self, name: str) -> str | None:
        lname = name.lower().encode("latin-1")
        if lname == b"content-length" and self.in_resp:
            # the codec writes the framing; filters still see the length (gzip's min_length)
            return None if self.resp_len is None or self.body_mod else str(self.resp_len)
        if self.in_resp:
            for n, v in reversed(self.resp_fields):
                if n.lower() == lname:
                    return v.decode("latin-1")
            return None
        for op, n2, v2 in reversed(self._ops() or ()):
            if n2.lower() == name.lower():
                return v2
        return None

    def set_resp_header(self, name: str, value: Any) -> None:
        self._resp_op(0, name, value)

    def add_resp_header(self, name: str, value: Any) -> None:
        self._resp_op(1, name, value)

    def set_resp_headers(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        """``set_resp_header`` for each name and value, in one call: for headers a plugin sets on
        every request before the response exists (limit-count's X-RateLimit-*), which then cost
        one search of the upstream's fields and one append when the upstream did not send them."""
        if (not self.in_resp and self.resp_ops is None and self.resp_batch is None and type(values) is tuple
                and len(names) == len(values)):
            for v in values:
                if type(v) is not str:
                    break
            else:
                self.resp_batch = (names, values)   # kept as is until someone needs the edits one by one
                return
        for name, value in zip(names, values):
            self._resp_op(0, name, value)

    def _ops(self) -> list[tuple[int, str, str | None]] | None:
        """The header edits made before the response (a pending batch turned into edits)."""
        batch = self.resp_batch
        if batch is not None:
            self.resp_batch = None
            ops = self.resp_ops
            if ops is None:
                ops = self.resp_ops = []
            for name, value in zip(batch[0], batch[1]):
                ops.append((0, name, value))
        return self.resp_ops

    def _resp_op(self, op: int, name: str, value: Any) -> None:
        sval = None if value is None else (value if isinstance(value, str) else str(value))
        if self.in_resp:
            _apply_op(self.resp_fields, op, name, sval)
        else:
            ops = self._ops()
            if ops is None:
                ops = self.resp_ops = []
            ops.append((op, name, sval))

    def set_resp_status(self, code: int) -> None:
        self.resp_status = int(code)

    def body_modified(self) -> None:
        self.body_mod = True

    def attach_consumer(self, consumer: Consumer, conf: Any = None) -> None:
        """Identify the consumer: its plugins merge in after the rewrite phase, and the
        upstream gets X-Consumer-Username (+ X-Credential-Identifier, X-Consumer-Custom-ID),
        as APISIX sends them.  A client's own X-Consumer-* fields never got this far (they
        are stripped when the request is parsed), so these lines are added, not replaced."""
        self.consumer = consumer
        self.up_extra = consumer.up_lines

    def find_consumer(self, plugin: str, field: str, value: Any) -> tuple[Consumer, Any] | None:
        rt = self.runtime
        key = (plugin, field)
        idx = rt.consumer_index.get(key)
        if idx is None:
            idx = rt.consumer_index[key] = rt.consumers.index(plugin, field)
        return idx.get(value)

    def consumers(self, plugin: str) -> list[tuple[Consumer, Any]]:
        return self.runtime.consumers.configuring(plugin)

    def consumer_by_name(self, username: str) -> Consumer | None:
        return self.runtime.consumers.by_name.get(username)

    def plugin_metadata(self, name: str) -> Any:
        return self.runtime.plugin_metadata.get(name)

    def plugin_attr(self, name: str) -> Any:
        """``plugin_attr.<name>`` of the node config (config.yaml), or None."""
        return self.server.settings.plugin_attr.get(name)

    def node_ssl(self) -> Any:
        """The node config's ``apisix.ssl`` section (redirect's http_to_https port), or None."""
        return self.server.settings.node_ssl

    def set_upstream(self, ref: Any) -> None:
        """Send this request to another upstream: an upstream id or an inline conf (traffic-split)."""
        up = self.runtime.upstream_for(ref)
        if up is None:
            raise ProtocolError(502, f"upstream {ref} not found")
        self.conf_override = up

    @property
    def upstream_rt(self) -> Any:
        return self.up

    # -- request side ------------------------------------------------------------------------
    def start(self) -> None:
        try:
            tls = self.req.tls
            if tls is not None and not tls.allows(self.runtime.tls, self.req):
                # APISIX verify_https_client, before routing and plugins: a bare 400
                self.respond(400, error_body(400), content_type=HTML)
                return
            self._pipeline(0, 0)
        except ProtocolError as e:
            self._error(e.status)
        except Exception:
            log.exception("request failed")
            self._error(500)

    def _error(self, status: int) -> None:
        if not self.resp_started:
            self.respond(status, error_body(status), content_type=HTML)
        else:
            self.conn.close()

    def _pipeline(self, step: int, start: int) -> None:
        """Route, then APISIX's phases in order (apisix-semantics.md 5.2), from ``step``.

        A hook that returns an awaitable suspends the pipeline (``_resume`` continues it
        after the await, at the next hook of the same phase); sync hooks never leave here."""
        rt = self.runtime
        res: Any = None
        while step < ST_PROXY:
            if step == ST_MATCH:
                if not self._match():
                    g = rt.global_chain
                    if g is None:
                        if rt.mesh:
                            self.respond(404, b"", content_type=b"")   # Envoy: 404, no body (NR)
                        else:
                            self.respond(404, NOT_FOUND)
                        return
                    self.gchain = g
                    self.no_route = True
                    step = ST_GREWRITE
                    continue
                route = self.route
                assert route is not None
                if route.error is not None:
                    self.respond(*route.error)
                    return
                self.chain = route.chain
                self.gchain = route.gchain
                if self.chain is None and self.gchain is None:
                    step = ST_UPSTREAM
                    continue
            elif step == ST_GREWRITE:
                g = self.gchain
                if g is not None:
                    res = g.run("rewrite", self, start)
            elif step == ST_REWRITE:
                if self.no_route:
                    step = ST_GACCESS
                    continue
                c = self.chain
                if c is not None:
                    res = c.run("rewrite", self, start)
            elif step == ST_CONSUMER:
                consumer = self.consumer
                if consumer is not None and self.route is not None:
                    if start == 0:
                        self.chain, self.added = rt.chain_with_consumer(self.route, consumer)
                    c = self.chain
                    if c is not None and self.added:
                        res = c.run("rewrite", self, start, self.added)
            elif step == ST_GACCESS:
                g = self.gchain
                if g is not None:
                    res = g.run("access", self, start)
                if res is None and self.no_route:
                    self.respond(404, NOT_FOUND)
                    return
            elif step == ST_ACCESS:
                c = self.chain
                if c is not None:
                    res = c.run("access", self, start)
            elif step == ST_UPSTREAM:
                route = self.route
                assert route is not None
                up = self.conf_override or route.upstream
                if up is None:
                    self.respond(502, _NO_UPSTREAM)
                    return
                self.up = up
                self.tmo = route.timeouts or up.timeouts
            elif step == ST_BEFORE:
                c = self.chain
                if c is not None:
                    res = c.run("before_proxy", self, start)
            start = 0
            if res is not None:
                if type(res) is Pending:
                    self._suspend(res, step)
                else:
                    self._answer(res)
                return
            step += 1
        self._proxy()

    def _suspend(self, p: Pending, step: int) -> None:
        self.server.loop.create_task(self._resume(p, step))

    async def _resume(self, p: Pending, step: int) -> None:
        try:
            value = await p.awaitable
            if self.finished:
                return
            if value is not None:
                self._answer(to_answer(value, p.err_resp))
                return
            self._pipeline(step, p.index + 1)
        except ProtocolError as e:
            if not self.finished:
                self._error(e.status)
        except Exception:
            log.exception("plugin failed")
            if not self.finished:
                self._error(500)

    def _answer(self, res: Any) -> None:
        status, body, headers = res
        if headers:
            for name, value in headers:
                self._resp_op(0, name, value)
        if body is None:
            # APISIX: core.response.exit(code) without a body is nginx's page for the code
            if status >= 300:
                self.respond(status, error_body(status), content_type=HTML)
            else:
                self.respond(status, b"", content_type=b"")
            return
        self.respond(status, body, content_type=b"")

    def _proxy(self) -> None:
        route = self.route
        assert route is not None
        if self.wants_tunnel and not route.enable_websocket:
            self.wants_tunnel = False
        if self.req.expect_continue and not self.req_done and not self.continue_sent:
            self.conn.send_continue()
            self.continue_sent = True
        self.first_try_at = self.req.start_time
        up = self.up
        if up is not None and up.cb_limit is not None and route.mesh is not None:
            # Envoy's circuit breaker (a DestinationRule connectionPool): too many in flight
            brk = self.server.breakers
            if brk is not None:
                if not brk.acquire(up.key, up.cb_limit):
                    self._mesh_overflow()
                    return
                self.cb_key = up.key
        self._try_node()

    def _mesh_overflow(self) -> None:
        self.set_var("_xds_flags", "UO")
        self._resp_op(0, "x-envoy-overloaded", "true")
        self._mesh_reply(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow")

    def _release_breaker(self) -> None:
        key = self.cb_key
        if key is not None:
            self.cb_key = None
            self.server.breakers.release(key)

    def _match(self) -> bool:
        rt = self.runtime
        router = rt.router
        # the gateway's radixtree router: a native call when compiled (else a mesh route table)
        m = router.match(self.req) if isinstance(router, Router) else router.match(self.req)
        if m is None:
            return False
        rr = rt.routes.get(m.route_id)
        if rr is None:
            return False
        self.route = rr
        if m.params:
            self.req.params = dict(m.params)
        return True

    def on_req_body(self, chunk: bytes) -> None:
        col = self.collect
        if col is not None:
            col.append(chunk)
            self.collect_size += len(chunk)
            if self.collect_size > self.collect_limit and self.body_waiter is not None \
                    and not self.body_waiter.done():
                self.body_waiter.set_exception(ProtocolError(413, "request body too large"))
        size = self.body_size = self.body_size + len(chunk)
        if self.replay_ok:
            if size <= REPLAY_LIMIT:
                if self.replay is None:
                    self.replay = []
                self.replay.append(chunk)
            else:
                self.replay_ok = False
                self.replay = None
        up = self.upstream
        if up is not None and self.sent_upstream and not up.closed:
            if self.req.chunked and not up.h2:
                up.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                up.transport.write(chunk)
            self._touch_upstream()
        else:
            if self.body_buf is None:
                self.body_buf = []
            self.body_buf.append(chunk)
            if size > HIGH_WATER and not self.replay_ok and col is None:
                self.conn.pause_read(P_BUFFER)

    def on_req_complete(self) -> None:
        self.req_done = True
        fut = self.body_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)
        up = self.upstream
        if up is not None and self.sent_upstream and not up.closed:
            if up.h2:
                up.transport.write_eof()          # END_STREAM
            elif self.req.chunked:
                up.transport.write(b"0\r\n\r\n")

    def _framed(self, chunks: list[bytes], h2: bool) -> bytes:
        """Body chunks as they go to the upstream (chunked to an HTTP/1.1 one when the length
        is unknown; the last chunk once the request is complete)."""
        if not self.req.chunked or h2:
            return b"".join(chunks)
        out: list[bytes] = []
        for c in chunks:
            out.extend((b"%x\r\n" % len(c), c, b"\r\n"))
        if self.req_done:
            out.append(b"0\r\n\r\n")
        return b"".join(out)

    # -- upstream selection / connection --------------------------------------------------
    def _try_node(self) -> None:
        up = self.up
        assert up is not None
        nodes = up.nodes
        if up.original_dst:
            # ORIGINAL_DST / passthrough cluster: where the client was going before capture
            od = self.conn.orig_dst
            if od is None:
                self._mesh_reply(503, "no healthy upstream")
                return
            node: Node | None = Node(od[0], od[1], 1)
        elif len(nodes) == 1:
            # APISIX: a one-node upstream skips the balancer (health and weight included),
            # so retries go to that node again.
            node = nodes[0]
        else:
            node = up.balancer.pick(self, tried=self.tried, healthy=up.healthy if up.unhealthy else None)
            if node is None and self.tried and self.route is not None and self.route.mesh is not None:
                # Envoy retries may land on a host already tried (unless previous_hosts says
                # otherwise and another one exists)
                node = up.balancer.pick(self, healthy=up.healthy if up.unhealthy else None)
        if node is None:
            if self.route is not None and self.route.mesh is not None:
                self.server.waiting.discard(self)
                self._mesh_reply(503, "no healthy upstream")
                return
            if self.tried:
                log.error("route %s: all upstream nodes tried", self.route.id if self.route else "?")
            else:
                log.error("route %s: no valid upstream node", self.route.id if self.route else "?")
            self.server.waiting.discard(self)
            self.respond(502, error_body(502), content_type=HTML)
            return
        self.node = node
        server = self.server
        key = self._pool_key(up, node)
        h2 = self.up_h2 = up.h2 or (up.h2_downstream and self.req.version == "2.0")
        if h2:
            # grpc/grpcs, HTTP/2 mesh clusters: a new stream on a shared connection (upstream_h2.py)
            h2c = server.h2pool.get(key)
            conn = h2c.stream() if h2c is not None else None
        else:
            conn = server.pool.get(key, up.pool_idle_timeout, self.now or server.clock())
        server.waiting.add(self)
        if up.track_load:
            up.balancer.on_start(node)
            self.t_connect = self.now or server.clock()
        if conn is not None:
            self._attach(conn, reused=True)
        else:
            self._connect_later(node, up, key)

    def _pool_key(self, up: UpstreamRuntime, node: Node) -> tuple[Any, ...]:
        if up.ssl_context is None:
            return (up.key, node.host, node.port, up.scheme)
        # TLS sessions are per SNI (APISIX pool name scheme#host#port#sni).
        return (up.key, node.host, node.port, up.scheme, self._sni(node))

    def _sni(self, node: Node) -> str | None:
        name = self._upstream_host_for(node)
        if name.startswith("["):
            return None
        name = name.rsplit(":", 1)[0] if ":" in name else name
        try:
            ipaddress.ip_address(name)
            return None  # no SNI for IP literals
        except ValueError:
            return name

    def _connect_later(self, node: Node, up: UpstreamRuntime, key: tuple[Any, ...]) -> None:
        self.up_phase = 1  # connecting
        self.deadline = self.server.clock() + self.tmo.connect
        self.server.loop.create_task(self._connect(node, up, key))

    async def _connect(self, node: Node, up: UpstreamRuntime, key: tuple[Any, ...]) -> None:
        loop = self.server.loop
        host = node.host[1:-1] if node.host.startswith("[") else node.host
        kw: dict[str, Any] = {}
        if up.ssl_context is not None:
            # no SNI for an IP literal; a verified certificate must then name that address
            kw = {"ssl": up.ssl_context, "server_hostname": key[4] or (host if up.ssl_context.check_hostname else "")}
        if up.bind_source is not None:
            kw["local_addr"] = (up.bind_source, 0)
        try:
            if self.up_h2:
                h2c = await self.server.h2pool.connect(key, up.scheme, host, node.port, kw)
                if self.finished or self.up_phase != 1 or self.node is not node:
                    return
                self._attach(h2c.stream(), reused=False)
                return
            _, conn = await loop.create_connection(lambda: UpstreamConnection(self.server, key), host, node.port, **kw)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self.finished or self.up_phase != 1 or self.node is not node:
                return
            log.warning("connect to %s failed: %s", node.addr, e)
            self._report(node, "tcp_failure", 0)
            self._failed(502, "connect")
            return
        if self.finished or self.up_phase != 1 or self.node is not node:
            conn.transport.close()
            return
        self._attach(conn, reused=False)

    def _attach(self, conn: UpstreamConnection, *, reused: bool) -> None:
        self.upstream = conn
        conn.ex = self
        conn.reused = reused
        conn.bytes_in = 0
        conn.requests += 1
        self.up_phase = 2
        now = self.now or self.server.clock()
        self.deadline = now + self.tmo.read
        if not self.t_up_start:
            self.t_up_start = now
        head = self._build_head()
        h2 = conn.h2
        if self.tried and self.replay is not None:
            # a retry: replay what was received so far; later chunks stream as they come
            data = head + self._framed(self.replay, h2)
            self.body_buf = None
        elif self.body_buf:
            data = head + self._framed(self.body_buf, h2)
            self.body_buf = None
            self.conn.resume_read(P_BUFFER)
        elif self.req.chunked:
            data = head + self._framed([], h2)      # the last chunk, once the request is complete
        else:
            data = head
        conn.tx(data)
        self.sent_upstream = True
        if h2 and self.req_done:
            conn.transport.write_eof()

    def _upstream_host_for(self, node: Node) -> str:
        up = self.up
        assert up is not None
        ph = up.pass_host
        if ph == "node":
            default = 443 if up.scheme in ("https", "grpcs") else 80
            host = f"[{node.host}]" if ":" in node.host and not node.host.startswith("[") else node.host
            return host if node.port == default else f"{host}:{node.port}"
        if ph == "rewrite" and up.upstream_host:
            return up.upstream_host
        return self.req.http_host or node.host

    def _build_head(self) -> bytes:
        """The request head sent upstream, re-serialised from the parsed request."""
        req = self.req
        node = self.node
        assert node is not None
        vars = self.vars
        target = req.upstream_path if req.query is None else f"{req.upstream_path}?{req.query}"
        fwd = req.forward_fields()
        conn = self.conn
        if (fwd is not None and not vars and conn.handle is None and not conn.peer_trusted and self.fwd_set is None
                and req.remote_addr == conn.peer_ip and not req.chunked
                and req.content_length is None and not self.wants_tunnel):
            # the common request (the fast path's fields, no variable set by plugins, no body;
            # an identified consumer's X-Consumer-* lines): what the general code below writes
            # for it, in one join
            return b"".join((
                f"{req.method} {target} HTTP/1.1\r\nHost: {self._upstream_host_for(node)}".encode("latin-1"),
                fwd, b"\r\n", conn.fwd_lines, conn.fwd_tail_for(req.http_host, req), self.up_extra, b"\r\n"))
        host = method = None
        if vars:
            host = vars.get("upstream_host")
            target = vars.get("upstream_uri") or target
            method = vars.get("request_method_override") or vars.get("request_method")
        if host is None:
            host = self._upstream_host_for(node)
        parts = [f"{method or req.method} {target} HTTP/1.1\r\nHost: {host}".encode("latin-1")]
        ap = parts.append
        xff_prev = fproto = fhost = fport = None
        if fwd is not None:
            ap(fwd)   # fast path: validated fields, nothing to drop (see _lite_request)
        else:
            drop = _DROP_REQ
            if self.conn_tokens:
                extra = {t for t in self.conn_tokens if t and t not in _PROTECTED}
                if extra:
                    drop = drop | extra
            for name, value in req.headers:
                ln = name.lower()
                if ln in drop:
                    if ln == b"x-forwarded-for":
                        xff_prev = value if xff_prev is None else xff_prev + b", " + value
                    elif ln == b"x-forwarded-proto":
                        fproto = value
                    elif ln == b"x-forwarded-host":
                        fhost = value
                    elif ln == b"x-forwarded-port":
                        fport = value
                    continue
                ap(b"\r\n" + name + b": " + value)
        ap(b"\r\n")
        # APISIX: X-Forwarded-Host is the Host as sent (port included), X-Forwarded-Port the
        # port it carries, else the port the request came in on
        hh = req.http_host
        if conn.handle is not None:
            # a sidecar (Envoy, use_remote_address false): the client's forwarding headers go
            # on as they came, and only X-Forwarded-Proto is set
            if xff_prev is not None:
                ap(b"X-Forwarded-For: " + xff_prev + b"\r\n")
            ap(b"X-Forwarded-Proto: " + (fproto or req.scheme.encode()) + b"\r\n")
            pol = self.route.mesh if self.route is not None else None
            if pol is not None and pol.attempt_count:
                # Envoy (include_request_attempt_count): every try carries its number, 1 first
                ap(b"x-envoy-attempt-count: %d\r\n" % (len(self.tried) + 1))
            if fhost is not None:
                ap(b"X-Forwarded-Host: " + fhost + b"\r\n")
            if fport is not None:
                ap(b"X-Forwarded-Port: " + fport + b"\r\n")
        elif xff_prev is None and not conn.peer_trusted and req.remote_addr == conn.peer_ip and self.fwd_set is None:
            # common case: no forwarding headers to honour; the lines are per connection (and
            # per Host value: clients repeat theirs)
            ap(conn.fwd_lines)
            ap(conn.fwd_tail_for(hh, req))
        else:
            obs_host = hh.encode("latin-1") if hh else (req.host or req.server_addr).encode("latin-1")
            obs_port = _host_port(hh) or b"%d" % req.server_port
            remote = req.remote_addr.encode()
            # the client's chain is kept (and extended) unless it was dropped as untrusted
            xff = xff_prev + b", " + remote if xff_prev is not None else remote
            if not conn.peer_trusted:
                fproto = fhost = fport = None
            fwdh: dict[bytes, bytes | None] = {
                b"x-real-ip": remote, b"x-forwarded-for": xff, b"x-forwarded-proto": fproto or req.scheme.encode(),
                b"x-forwarded-port": fport or obs_port, b"x-forwarded-host": fhost or obs_host}
            if self.fwd_set:
                fwdh.update(self.fwd_set)   # set by a plugin (proxy-rewrite), after the gateway's own
            for k, label in _FWD_OUT:
                fv = fwdh.get(k)
                if fv is not None:
                    ap(label + fv + b"\r\n")
        if self.up_extra:
            ap(self.up_extra)
        if req.chunked:
            ap(b"Transfer-Encoding: chunked\r\n")
        elif req.content_length is not None:
            ap(b"Content-Length: %d\r\n" % req.content_length)
        if self.wants_tunnel:
            ap(b"Upgrade: websocket\r\nConnection: upgrade\r\n")
        ap(b"\r\n")
        return b"".join(parts)

    def _touch_upstream(self) -> None:
        self.deadline = self.server.clock() + self.tmo.read

    def check_upstream_deadline(self, now: float) -> None:
        if self.finished or self.up_phase == 0 or now < self.deadline:
            return
        node = self.node
        log.warning("upstream %s timed out (%s)", node.addr if node else "?", "connect" if self.up_phase == 1 else "read")
        if node is not None:
            self._report(node, "timeout", 0)
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.ex = None
            conn.transport.close()
        if self.resp_started:
            self._finish_abort()
            return
        self._failed(504, "timeout")

    def _failed(self, status: int, kind: str = "reset") -> None:
        """A try failed before any response byte reached the client: retry or answer."""
        up = self.up
        assert up is not None
        route = self.route
        if route is not None and route.mesh is not None:
            self._mesh_failed(kind)
            return
        self._count_failed_try()
        can_replay = self.replay_ok and (self.req_done or not self.body_size)
        retries_left = up.retries - (len(self.tried) - 1)
        # nginx proxy_next_upstream: a non-idempotent request already sent is not replayed.
        safe = not self.sent_upstream or self.req.method in IDEMPOTENT
        if retries_left > 0 and can_replay and safe and not self.conn.is_closing():
            if up.retry_timeout and self.server.clock() - self.first_try_at >= up.retry_timeout:
                status = 502  # APISIX: retry deadline passed -> 502
            else:
                self.sent_upstream = False
                self._try_node()
                return
        self.server.waiting.discard(self)
        self.respond(status, error_body(status), content_type=HTML)

    def _count_failed_try(self) -> None:
        """The try on ``self.node`` failed: the balancer hears it, the node joins the tried ones."""
        node = self.node
        up = self.up
        assert up is not None
        if node is not None:
            if up.track_load:
                up.balancer.on_finish(node, self.server.clock() - self.t_connect, failed=True)
            self.tried = [*self.tried, node]
        self.up_phase = 0
        self.upstream = None

    def _report(self, node: Node, kind: str, status: int) -> None:
        up = self.up
        if up is None or not up.passive:
            return
        rep = self.server.passive_report
        if rep is not None:
            rep(up.key, node.addr, kind, status)

    # -- response side (called by UpstreamConnection) ---------------------------------------
    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.finished or conn is not self.upstream:
            return
        if conn.tunnel:
            self.conn.close()
            return
        if self.resp_started:
            if conn.until_close and conn.got_headers:
                self.on_resp_complete(conn)
                return
            self._finish_abort()
            return
        node = self.node
        up = self.up
        route = self.route
        # Envoy has no such silent re-send: a reused connection reset before any response
        # byte is a reset like any other, retried only as the route's retry policy says
        # (retry_on reset), else 503 "... reset reason: connection termination"
        if conn.reused and conn.bytes_in == 0 and self.replay_ok and node is not None and up is not None \
                and (route is None or route.mesh is None):
            # The server closed an idle keep-alive connection as we reused it: retry on a
            # fresh connection without counting a try (nginx does the same).
            self.upstream = None
            self.sent_upstream = False
            if self.replay is not None:
                self.body_buf = list(self.replay)  # _attach sends it after the head
            self._connect_later(node, up, self._pool_key(up, node))
            return
        if node is not None:
            self._report(node, "tcp_failure", 0)
        self._failed(502, "reset")

    # -- mesh routes: Envoy's retry policy and local replies -------------------------------
    def _mesh_reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.respond(status, body, content_type=_TEXT if body else b"")

    def _mesh_send_bare(self, status: int, *, close: bool, extra: bytes) -> None:
        """An empty local reply as Envoy sends it: no Content-Type, no body."""
        self.conn.send_local(status, b"", close=close, content_type=b"", extra=extra)

    def _mesh_retry_ok(self) -> bool:
        pol = self.route.mesh   # type: ignore[union-attr]
        if len(self.tried) > pol.num_retries or self.conn.is_closing():
            return False
        if not (self.replay_ok and (self.req_done or not self.body_size)):
            return False
        return bool(self.server.clock() - self.first_try_at < pol.timeout)

    def _mesh_failed(self, kind: str) -> None:
        """Envoy's router after a failed try: retry as the route's policy says, else its reply
        (503 for a connect failure or reset, 504 for the route or per-try timeout)."""
        self._count_failed_try()
        pol = self.route.mesh   # type: ignore[union-attr]
        if pol.retry_failure(kind) and self._mesh_retry_ok():
            self.sent_upstream = False
            self._try_node()
            return
        self.server.waiting.discard(self)
        if kind == "timeout":
            self._mesh_reply(504, "upstream request timeout")
        elif kind == "connect":
            self._mesh_reply(503, "upstream connect error or disconnect/reset before headers. "
                                  "reset reason: connection failure")
        else:
            self._mesh_reply(503, "upstream connect error or disconnect/reset before headers. "
                                  "reset reason: connection termination")

    def _mesh_retry_status(self, conn: UpstreamConnection, status: int) -> bool:
        """A retriable response status: drop this response and try again (Envoy buffers
        nothing of it for the client).  True when a retry was started."""
        pol = self.route.mesh   # type: ignore[union-attr]
        if not pol.num_retries or not pol.retry_status(status):
            return False
        node = self.node
        if node is None or len(self.tried) + 1 > pol.num_retries or not self._mesh_retry_ok():
            return False
        self.tried = [*self.tried, node]
        self.upstream = None
        self.up_phase = 0
        conn.ex = None
        conn.dirty = True
        conn.transport.close()
        self.sent_upstream = False
        self.retrying = True
        self.server.loop.call_soon(self._mesh_next_try)
        return True

    def _mesh_next_try(self) -> None:
        self.retrying = False
        if self.finished:
            return
        self._try_node()

    def resp_headers(self) -> dict[str, str]:
        """The response's header fields as the client gets them (lower-case names, repeated
        ones joined with ", "); empty before a response exists."""
        out: dict[str, str] = {}
        if not self.in_resp and self._resp_headers is None and not self._fields():
            return out
        for n, v in self.resp_fields:
            k = n.decode("latin-1").lower()
            val = v.decode("latin-1")
            out[k] = out[k] + ", " + val if k in out else val
        return out

    @property
    def resp_fields(self) -> list[tuple[bytes, bytes]]:
        """Response header fields as (name, value) for plugins; settable in header_filter."""
        h = self._resp_headers
        if h is None:
            h = self._resp_headers = split_fields(self._fields())
        return h

    @resp_fields.setter
    def resp_fields(self, value: list[tuple[bytes, bytes]]) -> None:
        self._resp_headers = value

    def relay_whole(self, conn: UpstreamConnection, data: bytes) -> bool:
        """The whole-response fast path: ``data`` is one complete upstream response and nothing
        may change it (no header or body filter, no pending response header edit, no mesh
        policy, no retry), so the head codec rewrites it for the client in one call
        (``relay_response``: the bytes ``on_resp_head`` and ``on_resp_body`` would have queued).
        Headers set before the response as one batch (limit-count's X-RateLimit-*) go in with
        the gateway's own lines when the upstream sent none of them.  The relayed fields are
        split from the raw response only if a plugin asks for them (``_fields``).  False,
        before any state changed, when the general path must take it (statuses from 500 on
        carry X-APISIX-Upstream-Status; odd status lines are rewritten there)."""
        route = self.route
        chain = self.chain
        gchain = self.gchain
        if (self.resp_ops is not None or self._resp_headers is not None or self.retrying or conn is not self.upstream
                or (route is not None and route.mesh is not None)
                or (chain is not None and (chain.header_filter or chain.body_filter))
                or (gchain is not None and (gchain.header_filter or gchain.body_filter))):
            return False
        server = self.server
        pre = date_server_lines(None)
        batch = self.resp_batch
        lines = b""
        absent = b""
        if batch is not None:
            plan = _RELAY_PLANS.get(batch[0])
            if plan is None:
                plan = _relay_plan(batch[0])
            absent, starts = plan
            if not absent:
                return False    # names without a common prefix: the general path checks them
            parts: list[str] = []
            i = 0
            for v in batch[1]:      # all str (set_resp_headers keeps only such a batch)
                parts.append(starts[i])
                parts.append(v)
                i += 1
            parts.append("\r\n")
            lines = "".join(parts).encode("latin-1")
            pre = lines + pre
        keep = self.client_keep and self.req_done and not server.draining
        # an upstream field named like a batch header (``absent``): the general path replaces it
        r = server.relay_response(data, pre, b"" if keep else b"Connection: close\r\n", 500, absent)
        if type(r) is int:
            return False
        whole: tuple[int, bool, int, bytes] = r   # typed: the items come straight out of the tuple
        status, keep_up, cl, out = whole
        conn.took_whole(len(data), status, keep_up)
        server.whole_responses += 1
        self.upstream_status = self.resp_status = status
        up = self.up
        if up is not None and up.passive and self.node is not None:
            self._report(self.node, "http", status)
        if chain is not None or gchain is not None:
            # what on_resp_head leaves for the plugins' log phase
            self.in_resp = True
            self.resp_len = cl
            self.resp_batch = None
            self._resp_raw = data
            self._resp_block = lines
        self.client_keep = keep
        self.resp_started = True
        self.out.append(out)
        self.on_resp_complete(conn)
        return True

    def _fields(self) -> bytes:
        """The response's relayed field block ("\r\nName: value" each); after ``relay_whole``
        split from the raw response on first use."""
        raw = self._resp_raw
        if raw is not None:
            self._resp_raw = None
            head = raw[:raw.find(b"\r\n\r\n") + 2]
            split = self.server.resp_fields(head)
            if split is None:
                split = headcodec.resp_fields(head)
            lines = self._resp_block     # "Name: value\r\n" each: as field lines, "\r\nName: value"
            self._resp_fields = split[1] + (b"\r\n" + lines[:-2] if lines else b"")
        return self._resp_fields

    def on_resp_head(self, conn: UpstreamConnection, status: int, head: bytes, cl: int | None, chunked: bool, *,
                     complete: bool = False, split: tuple[bytes, bytes] | None = None) -> None:
        """``head`` is the upstream's status line and fields exactly as the codec validated them
        (each field line ends with CRLF; the blank line is not included).  ``complete``: the
        whole response is in hand (no read deadline to extend); ``split``: the head codec's
        ``resp_fields(head)`` when the caller has it already."""
        req = self.req
        route = self.route
        if route is not None and route.mesh is not None and self._mesh_retry_status(conn, status):
            return
        self.upstream_status = status
        up = self.up
        if up is not None:
            if not complete:
                self.deadline = self.server.clock() + self.tmo.read
            if up.passive and self.node is not None:
                self._report(self.node, "http", status)
        self.resp_status = status
        if split is None:
            split = self.server.resp_fields(head)
            if split is None:   # the native codec leaves odd heads to the Python one
                split = headcodec.resp_fields(head)
        status_line, fields = split
        self._resp_fields = fields
        chain = self.chain
        gchain = self.gchain
        batch = self.resp_batch
        if chain is not None or gchain is not None or self.resp_ops is not None or batch is not None:
            self.in_resp = True
            self.resp_len = cl
            filters = (gchain is not None and gchain.header_filter) or (chain is not None and chain.header_filter)
            if batch is not None and not filters:
                block = _batch_block(batch[0], batch[1], fields)
                if block is not None:
                    fields = self._resp_fields = fields + block
                    self.resp_batch = None
            ops = self._ops()
            if ops is not None:
                block = None if filters else _appended(ops, fields)
                if block is not None:
                    # headers the upstream did not send, and nobody looks at the list: append
                    # them to the raw block instead of splitting it (limit-count's X-RateLimit-*)
                    fields = self._resp_fields = fields + block
                    ops = None
                else:
                    hl = self.resp_fields
                    for op, hn, hv in ops:
                        _apply_op(hl, op, hn, hv)
            self._run_header_filters()
            status = self.resp_status
            if self._resp_headers is not None:
                fields = b"".join(b"\r\n" + n + b": " + v for n, v in self._resp_headers)
            if (gchain is not None and gchain.body_filter) or (chain is not None and chain.body_filter):
                self.body_filters = True
            if self.body_mod:
                # a header_filter said the body changes: its length is known only at the end
                # (APISIX: core.response.clear_header_as_body_modified)
                cl = None
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if no_body:
            self.resp_body_allowed = False
        keep = self.client_keep and self.req_done and not self.server.draining
        head_bytes, self.resp_chunked, keep = self.conn.response_head(self, status_line, fields, status, cl, no_body,
                                                                      keep)
        self.client_keep = keep
        self.out.append(head_bytes)
        self.resp_started = True

    def _has_phase(self, phase: str) -> bool:
        """Whether a plugin in force (global rules or the route's chain) hooks ``phase``."""
        g = self.gchain
        c = self.chain
        return (g is not None and g.has(phase)) or (c is not None and c.has(phase))

    def _run_header_filters(self) -> None:
        """The header_filter hooks, global rules first (upstream and local answers alike)."""
        g = self.gchain
        if g is not None and g.header_filter:
            g.run_filters("header_filter", self)
        c = self.chain
        if c is not None and c.header_filter:
            c.run_filters("header_filter", self)

    def _filter_body(self, chunk: bytes, eof: bool) -> bytes:
        """Run the body_filter hooks (global rules first) over one chunk."""
        self.chunk = chunk
        self.eof = eof
        g = self.gchain
        if g is not None and g.body_filter:
            g.run_filters("body_filter", self)
        c = self.chain
        if c is not None and c.body_filter:
            c.run_filters("body_filter", self)
        out = self.chunk
        self.chunk = b""
        return out if isinstance(out, bytes) else str(out).encode()

    def on_resp_body(self, chunk: bytes) -> None:
        if not self.resp_body_allowed or self.retrying:
            return
        if self.body_filters:
            chunk = self._filter_body(chunk, False)
            if not chunk:
                return
        if self.resp_chunked:
            self.out.extend((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.out.append(chunk)

    def flush(self) -> None:
        out = self.out
        if out:
            if self.conn.is_closing():
                out.clear()
                return
            data = out[0] if len(out) == 1 else b"".join(out)
            self.bytes_sent += len(data)
            self.conn.write(data)
            out.clear()
            if not self.finished:
                self._touch_upstream()

    def on_resp_complete(self, conn: UpstreamConnection) -> None:
        if conn is not self.upstream and self.retrying:
            return
        if self.body_filters and self.resp_body_allowed:
            tail = self._filter_body(b"", True)
            if tail:
                self.on_resp_body_raw(tail)
        if self.resp_chunked:
            self.out.append(b"0\r\n\r\n")
        self.finished = True
        self.flush()
        server = self.server
        server.waiting.discard(self)
        self.upstream = None
        conn.ex = None
        if self.cb_key is not None:
            self._release_breaker()
        node = self.node
        up = self.up
        if up is not None and node is not None:
            if up.track_load:
                up.balancer.on_finish(node, server.clock() - self.t_connect)
            if (self.req_done and conn._ka and not conn.until_close and not conn.closed and not conn.dirty
                    and conn.requests < up.pool_requests):
                # Pooled once the current read is fully parsed (see UpstreamConnection).
                conn.release = up.pool_size
            else:
                conn.transport.close()
        if self.chain is not None or self.gchain is not None or server.access_log_on:
            # upstream_response_time and request_time, for loggers and metrics: one clock read
            self.t_up_end = self.t_end = server.clock()
            self._log()
        self.conn.exchange_done(self, self.client_keep and self.req_done)

    def on_resp_trailers(self, conn: UpstreamConnection, fields: list[tuple[bytes, bytes]]) -> None:
        """The upstream's trailers (an HTTP/2 upstream: gRPC's grpc-status and trailing metadata),
        passed on by a downstream that can carry them (HTTP/2); HTTP/1.1 responses go without."""
        if conn is self.upstream and self.resp_body_allowed:
            self.resp_trailers = fields
            self.conn.send_trailers(fields)

    def on_resp_body_raw(self, chunk: bytes) -> None:
        if self.resp_chunked:
            self.out.extend((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.out.append(chunk)

    def on_resp_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        """101 Switching Protocols: both sides become a raw tunnel."""
        if not self.wants_tunnel or self.resp_status != 101:
            self.on_upstream_protocol_error(conn, "unexpected upgrade")
            return
        self.flush()
        self.finished = True
        self.server.waiting.discard(self)
        self._release_breaker()
        early = b"".join(self.tunnel_early or ())
        self.tunnel_early = None
        self.conn.start_tunnel(conn, early)
        if rest:
            self.conn.write(rest)
        self._log()

    def on_upstream_protocol_error(self, conn: UpstreamConnection, why: str) -> None:
        log.warning("upstream %s sent an invalid response: %s", self.node.addr if self.node else "?", why)
        conn.dirty = True
        conn.ex = None
        conn.transport.close()
        if self.resp_started:
            self._finish_abort()
            return
        self.upstream = None
        self.out.clear()
        self._failed(502)

    def on_client_lost(self) -> None:
        fut = self.body_waiter
        if fut is not None and not fut.done():
            fut.cancel()   # a plugin awaiting the body of a request that will never complete
        if self.finished:
            return
        self.finished = True
        self.server.waiting.discard(self)
        self._release_breaker()
        self.abort_upstream()

    def abort_upstream(self) -> None:
        conn = self.upstream
        self.upstream = None
        self.up_phase = 0
        if conn is not None:
            conn.ex = None
            if not conn.closed:
                conn.transport.close()

    def _finish_abort(self) -> None:
        self.finished = True
        self.server.waiting.discard(self)
        self._release_breaker()
        self.abort_upstream()
        self.flush()
        self.conn.close()

    def respond(self, status: int, body: bytes, *, content_type: bytes = _TEXT, extra: bytes = b"") -> None:
        """Answer locally (route miss, plugin exit, upstream failure).

        As in APISIX, the header_filter and body_filter hooks of the plugins in force see a
        local answer too (cors adds its headers to a 401, response-rewrite may change it).
        ``content_type`` empty: the plugin's own headers say it, else nginx's default."""
        if self.resp_started or self.finished:
            return
        self.finished = True
        self.resp_started = True
        self.resp_status = status
        self.server.waiting.discard(self)
        if self.cb_key is not None:
            self._release_breaker()
        self.abort_upstream()
        chain = self.chain
        gchain = self.gchain
        # Envoy: a local reply without a body carries no Content-Type (no route, redirects,
        # direct responses without a body, cluster not found)
        bare = not body and not content_type and self.runtime.mesh
        ops = self._ops()
        if chain is not None or gchain is not None or ops is not None:
            hl: list[tuple[bytes, bytes]] = [] if bare else [(b"Content-Type", content_type or _TEXT)]
            self._resp_headers = hl
            self.in_resp = True
            self.resp_len = len(body)
            if ops is not None:
                for op, name, value in ops:
                    _apply_op(hl, op, name, value)
            self._run_header_filters()
            status = self.resp_status
            if self._has_phase("body_filter"):
                body = self._filter_body(body, True)
            content_type = b""
            lines = []
            for n, v in self._resp_headers or ():
                ln = n.lower()
                if ln == b"content-type" and not content_type:
                    content_type = v
                elif ln not in _LOCAL_SKIP:
                    lines.append(n + b": " + v + b"\r\n")
            extra = b"".join(lines) + extra
            bare = bare and not content_type and not body
            content_type = content_type or (b"" if bare else _TEXT)
        elif not content_type and not bare:
            content_type = _TEXT
        # If the client still has body bytes in flight we cannot keep the connection in sync.
        keep = self.client_keep and self.req_done and not self.server.draining
        if status >= 500 and self.upstream_status and self.conn.handle is None:
            extra += b"X-APISIX-Upstream-Status: %d\r\n" % self.upstream_status
        self.bytes_sent += len(body)
        if self.req.grpc:
            # a gRPC client reads the status from grpc-status: a trailers-only answer (Envoy)
            self.conn.send_local(200, b"", close=not keep, content_type=b"application/grpc",
                                 extra=extra + _grpc_status_lines(status, body))
        elif bare:
            self._mesh_send_bare(status, close=not keep, extra=extra)
        else:
            self.conn.send_local(status, body, close=not keep, content_type=content_type, extra=extra,
                                 head_only=self.req.method == "HEAD")
        self._log()
        self.conn.exchange_done(self, keep)
        if not keep and self.conn.is_idle() and not self.conn.is_closing():
            self.conn.close()

    def _log(self) -> None:
        if not self.t_end:
            self.t_end = self.server.clock()
        gchain = self.gchain
        if gchain is not None and gchain.log:
            gchain.run_filters("log", self)
        chain = self.chain
        if chain is not None and chain.log:
            chain.run_filters("log", self)
        if self.server.access_log_on:
            req = self.req
            access_log.info('%s - "%s %s HTTP/%s" %d upstream=%s route=%s', req.remote_addr, req.method,
                            req.request_uri, req.version, self.resp_status,
                            self.node.addr if self.node else "-", self.route.id if self.route else "-")


# the gRPC status for a gateway's HTTP answer (gRPC's "HTTP to gRPC status code mapping")
_GRPC_CODES = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def _grpc_status_lines(status: int, body: bytes) -> bytes:
    """grpc-status and grpc-message (percent-encoded as gRPC says) for a local answer."""
    code = 0 if status < 300 else _GRPC_CODES.get(status, 2)
    msg = ""
    if body[:1] == b"{":
        try:
            doc = json.loads(body)
            msg = str(doc.get("error_msg") or doc.get("message") or "") if isinstance(doc, dict) else ""
        except ValueError:
            msg = ""
    if not msg and code:
        msg = f"{status} {REASONS.get(status, 'Error')}"
    enc = "".join(c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode()) for c in msg)
    return b"grpc-status: %d\r\n" % code + (b"grpc-message: " + enc.encode() + b"\r\n" if enc else b"")


_FIELD_KEYS: dict[str, tuple[bytes, bytes]] = {}


def _field_key(name: str) -> tuple[bytes, bytes]:
    """(``\\r\\nname:`` lower-cased, to search a lower-cased head; ``\\r\\nName: ``, to append a
    line): plugins set the same few names on every request (limit-count's X-RateLimit-*)."""
    k = _FIELD_KEYS.get(name)
    if k is None:
        b = name.encode("latin-1")
        k = (b"\r\n" + b.lower() + b":", b"\r\n" + b + b": ")
        if len(_FIELD_KEYS) < 4096:
            _FIELD_KEYS[name] = k
    return k


def _appended(ops: list[tuple[int, str, str | None]], fields: bytes) -> bytes | None:
    """The lines header edits add when they only add fields the upstream's (filtered) field
    block does not have, and set none twice; else None (the caller edits the split list)."""
    lower: bytes | None = None
    keys: list[bytes] = []
    out = b""
    for op, name, value in ops:
        key, line = _field_key(name)
        if op == 0:
            for k in keys:
                if k == key:
                    return None   # set twice: the last one wins, in the list
        keys.append(key)
        if lower is None:
            lower = fields.lower()
        if lower.find(key) >= 0:
            return None
        if value is not None:
            out += line + value.encode("latin-1")
    return out


# names of a set_resp_headers batch -> (the common start of their lower-cased keys, the keys,
# a %-template of their lines); no keys when a name repeats (never appended)
_BATCH_PLANS: Final[dict[tuple[str, ...], tuple[bytes, tuple[bytes, ...], str]]] = {}


def _batch_block(names: tuple[str, ...], values: tuple[str, ...], fields: bytes) -> bytes | None:
    """The lines of a set_resp_headers batch when the upstream's (filtered) field block has none
    of its names; else None (the caller edits the split list)."""
    plan = _BATCH_PLANS.get(names)
    if plan is None:
        plan = _batch_plan(names)
    prefix, keys, template = plan
    if not keys:
        return None
    lower = fields.lower()
    if lower.find(prefix) >= 0:
        for k in keys:
            if lower.find(k) >= 0:
                return None
    return (template % values).encode("latin-1")


_RELAY_PLANS: Final[dict[tuple[str, ...], tuple[bytes, tuple[str, ...]]]] = {}


def _relay_plan(names: tuple[str, ...]) -> tuple[bytes, tuple[str, ...]]:
    """For relay_whole: the lower-cased name prefix the batch's names share (empty when there is
    none, or when a name repeats) and what goes before each value ("Name: ", after the previous
    line's CRLF)."""
    # without the CRLF the field keys start with, and the colon a single name's key ends with
    prefix = _batch_plan(names)[0][2:].rstrip(b":")
    plan = (prefix, tuple([("\r\n" if i else "") + n + ": " for i, n in enumerate(names)]))
    if len(_RELAY_PLANS) < 1024:
        _RELAY_PLANS[names] = plan
    return plan


def _batch_plan(names: tuple[str, ...]) -> tuple[bytes, tuple[bytes, ...], str]:
    keys = tuple([_field_key(n)[0] for n in names])
    plan: tuple[bytes, tuple[bytes, ...], str] = (b"", (), "")
    if len(set(keys)) == len(keys) and keys:
        prefix = keys[0]
        for k in keys[1:]:
            i = 0
            while i < len(prefix) and i < len(k) and prefix[i] == k[i]:
                i += 1
            prefix = prefix[:i]
        plan = (prefix, keys, "".join("\r\n" + n.replace("%", "%%") + ": %s" for n in names))
    if len(_BATCH_PLANS) < 1024:
        _BATCH_PLANS[names] = plan
    return plan


def _extra_field(block: bytes, name: str) -> str | None:
    """One field of a block of "Name: value\\r\\n" lines (the gateway's own additions)."""
    lb = name.lower().encode("latin-1") + b":"
    for line in block.split(b"\r\n"):
        if line.lower().startswith(lb):
            return line[len(lb):].strip().decode("latin-1")
    return None


def _host_port(hh: str) -> bytes | None:
    """The port a Host value carries ("a:8080" -> b"8080", "[::1]:81" -> b"81"), else None."""
    i = hh.rfind(":")
    if i < 0 or "]" in hh[i:]:
        return None
    p = hh[i + 1:]
    return p.encode() if p.isdigit() else None


def _route_attr(attr: str) -> Callable[[Exchange], Any]:
    def get(ex: Exchange) -> Any:
        r = ex.route
        return getattr(r, attr) if r is not None else None
    return get


def _node_attr(ex: Exchange, i: int) -> Any:
    n = ex.node
    if n is None:
        return None
    return (n.addr, n.host, str(n.port))[i]


def _ms(seconds: float) -> float:
    """Seconds to millisecond resolution, as nginx's $request_time (half up; cheaper than round())."""
    return int(seconds * 1000.0 + 0.5) / 1000.0 if seconds > 0.0 else 0.0


def _request_time(ex: Exchange) -> float:
    end = ex.t_end or ex.server.clock()
    return _ms(end - ex.req.start_time)


def _upstream_time(ex: Exchange) -> float | None:
    if not ex.t_up_start:
        return None
    end = ex.t_up_end or ex.server.clock()
    return _ms(end - ex.t_up_start)


def _request_length(ex: Exchange) -> int:
    r = ex.req
    return len(r.method) + len(r.target) + 12 + len(r.fields or b"".join(b"\r\n" + n + b": " + v
                                                                  for n, v in r.headers)) + 4 + ex.body_size


def _upstream_uri(ex: Exchange) -> str:
    r = ex.req
    return r.upstream_path if r.query is None else f"{r.upstream_path}?{r.query}"


# Variables the exchange knows (after the plugin-set ones, before the request's own).
_EX_VARS: Final[dict[str, Callable[[Exchange], Any]]] = {
    "remote_addr": lambda ex: ex.req.remote_addr,     # the limiters' default key: answered here, not by req.var
    "route_id": _route_attr("id"),
    "route_name": _route_attr("name"),
    "service_id": _route_attr("service_id"),
    "service_name": _route_attr("service_name"),
    "matched_uri": _route_attr("matched_uri"),
    "matched_host": _route_attr("matched_host"),
    # APISIX variables of features Meshgate does not have (AI proxying): answered at once
    # instead of falling through every lookup of the request's own variables
    "request_type": lambda ex: None,
    "request_llm_model": lambda ex: None,
    "llm_model": lambda ex: None,
    "consumer_name": lambda ex: ex.consumer.username if ex.consumer is not None else None,
    "consumer_group_id": lambda ex: ex.consumer.group_id if ex.consumer is not None else None,
    "status": lambda ex: ex.resp_status or None,
    "upstream_status": lambda ex: ex.upstream_status or None,
    "upstream_addr": lambda ex: _node_attr(ex, 0),
    "balancer_ip": lambda ex: _node_attr(ex, 1),
    "balancer_port": lambda ex: _node_attr(ex, 2),
    "upstream_scheme": lambda ex: ex.up.scheme if ex.up is not None else None,
    # APISIX core.response.get_response_source: the upstream answered, the gateway failed to
    # reach the node it picked ("nginx"), or the gateway answered by itself (a plugin, no route)
    "response_source": lambda ex: "upstream" if ex.upstream_status else "nginx" if ex.node is not None else "apisix",
    "upstream_uri": _upstream_uri,
    "request_time": _request_time,
    "upstream_response_time": _upstream_time,
    "request_length": _request_length,
    "bytes_sent": lambda ex: ex.bytes_sent,
    "start_time": lambda ex: time.time() - (ex.server.clock() - ex.req.start_time),
}
