"""The per-request half of the plugin runtime: a route's compiled chain, run phase by phase.

Compiled with mypyc with the rest of the request path (meshgate._accel), so the exchange calls
:meth:`PluginChain.run` natively; building chains (sorting, ``_meta``, schemas) stays in
:mod:`meshgate.plugins.runtime`, once per config version.
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any, Awaitable, Callable, Final, Iterable, Mapping, TYPE_CHECKING

if TYPE_CHECKING:
    from .consumers import Consumer
    from .runtime import Plugin

__all__ = ["PluginChain", "Pending", "Answer", "Headers", "HookEntry", "CtxBase", "encode_body", "to_answer"]

log = logging.getLogger("meshgate.plugins")


def _cjson(body: Any) -> bytes:
    # APISIX encodes tables with lua-cjson: compact, raw UTF-8, "/" escaped, and
    # core.response.exit appends a newline.  "/" cannot occur outside strings in JSON.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/").encode() + b"\n"


def encode_body(body: Any) -> bytes:
    """A hook's answer body as APISIX sends it (tables as JSON + newline, strings as they are)."""
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return _cjson(body)


class CtxBase:
    """The part of a hook's ``ctx`` that the compiled built-in plugins call on every request.

    The proxy's exchange (the ctx of every HTTP request, docs/plugins.md) derives from it, so
    a compiled plugin that has checked ``isinstance(ctx, CtxBase)`` calls these methods
    natively instead of looking them up by name.  Plugins need not know it: any ctx works
    by duck typing, and the built-ins keep that path for other contexts (tests' stand-ins).
    """

    def var(self, name: str) -> Any:
        raise NotImplementedError

    def req_header(self, name: str) -> str | None:
        raise NotImplementedError

    def find_consumer(self, plugin: str, field: str, value: Any) -> tuple[Consumer, Any] | None:
        raise NotImplementedError

    def attach_consumer(self, consumer: Consumer, conf: Any = None) -> None:
        raise NotImplementedError

    def set_resp_headers(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def plugin_metadata(self, name: str) -> Any:
        raise NotImplementedError

    def metric_fields(self) -> tuple[Any, ...]:
        raise NotImplementedError


Headers = list[tuple[str, str]]
Answer = tuple[int, "bytes | None", "Headers | None"]


def to_answer(res: Any, err_resp: Any) -> Answer:
    """A hook result ``(status, body[, headers])`` (or a bare status) as an answer."""
    headers: Headers | None = None
    if isinstance(res, tuple):
        status = res[0]
        body = res[1] if len(res) > 1 else None
        if len(res) > 2 and res[2]:
            h = res[2]
            headers = list(h.items()) if isinstance(h, Mapping) else list(h)
    else:
        status, body = res, None
    status = int(status)
    if err_resp is not None and status >= 400:
        body = err_resp
    # no body: None, so the gateway sends nginx's page for the status (APISIX: ngx.exit(code))
    return status, (None if body is None else encode_body(body)), headers


class Pending:
    """A hook returned an awaitable: the chain stops there and the exchange resumes it."""

    __slots__ = ("awaitable", "chain", "phase", "index", "err_resp")

    def __init__(self, awaitable: Awaitable[Any], chain: PluginChain, phase: str, index: int, err_resp: Any) -> None:
        self.awaitable = awaitable
        self.chain = chain
        self.phase = phase
        self.index = index
        self.err_resp = err_resp


# (hook, conf, filter, error_response, name) for each plugin of a phase, in order
HookEntry = tuple[Callable[[Any, Any], Any], Any, Any, Any, str]
_ANSWERING: Final = frozenset(("rewrite", "access", "before_proxy"))


class PluginChain:
    """One route's (or the global rules') plugins, per phase, in execution order.

    ``entries`` keeps what the chain was compiled from (name -> (plugin, conf, meta)), so
    a consumer's plugins can be merged into a route's chain without re-validating."""

    __slots__ = ("phases", "names", "entries", "header_filter", "body_filter", "log")

    def __init__(self, phases: dict[str, tuple[HookEntry, ...]], names: tuple[str, ...],
                 entries: dict[str, tuple[Plugin, Any, Any]] | None = None) -> None:
        self.phases = phases
        self.names = names
        self.entries = entries or {}
        # the response-side phases, asked on every response: flags, not dict lookups
        self.header_filter = "header_filter" in phases
        self.body_filter = "body_filter" in phases
        self.log = "log" in phases

    def has(self, phase: str) -> bool:
        return phase in self.phases

    def run(self, phase: str, ctx: Any, start: int = 0, only: frozenset[str] | None = None) -> Answer | Pending | None:
        """Run one phase from hook ``start``; returns the answer when a plugin ends the request,
        a :class:`Pending` when a hook returned an awaitable (the caller awaits it and resumes
        at ``index + 1``), else None.  ``only``: run just these plugins (a consumer's additions)."""
        hooks = self.phases.get(phase)
        if hooks is None:
            return None
        n = len(hooks)
        i = start
        while i < n:
            hook, conf, flt, err_resp, name = hooks[i]
            i += 1
            if only is not None and name not in only:
                continue
            if flt is not None and not flt.eval(ctx.var):
                continue
            res = hook(conf, ctx)
            if res is None:
                continue
            if inspect.isawaitable(res):
                return Pending(res, self, phase, i - 1, err_resp)
            if phase in _ANSWERING:
                return to_answer(res, err_resp)
        return None

    def run_filters(self, phase: str, ctx: Any) -> None:
        """header_filter / body_filter / log: nothing to answer; a failing plugin is logged
        and the others still run (the response is already on its way).  An async ``log``
        hook runs as a task of its own."""
        for hook, conf, flt, _err, name in self.phases.get(phase, ()):
            try:
                if flt is not None and not flt.eval(ctx.var):
                    continue
                res = hook(conf, ctx)
                if res is not None and inspect.isawaitable(res):
                    if phase == "log":
                        _spawn(res, name)
                    else:
                        if inspect.iscoroutine(res):
                            res.close()
                        log.error("plugin %s: %s must not be async", name, phase)
            except Exception:
                log.exception("plugin %s failed in %s", name, phase)

    def without(self, names: Iterable[str]) -> PluginChain | None:
        """This chain minus some plugins (a global rule's prefer_route plugins a route configures)."""
        drop = set(names)
        if not drop & set(self.names):
            return self
        phases = {ph: tuple(e for e in hooks if e[4] not in drop) for ph, hooks in self.phases.items()}
        phases = {ph: hooks for ph, hooks in phases.items() if hooks}
        names = tuple(n for n in self.names if n not in drop)
        if not names:
            return None
        return PluginChain(phases, names, {k: v for k, v in self.entries.items() if k not in drop})


_tasks: set[Any] = set()


def _spawn(aw: Awaitable[Any], name: str) -> None:
    import asyncio

    async def run() -> None:
        try:
            await aw
        except Exception:
            log.exception("plugin %s failed in log", name)

    t = asyncio.get_event_loop().create_task(run())
    _tasks.add(t)   # keep a reference until done (asyncio holds tasks weakly)
    t.add_done_callback(_tasks.discard)
