"""Snapshot -> compiled HTTP route matcher with APISIX radixtree semantics, and the
``vars`` expression engine (apisix-semantics.md sections 1 and 2).

Routers: ``radixtree_host_uri`` (default), ``radixtree_uri``,
``radixtree_uri_with_parameter``.  No asyncio, no I/O: imports only ``meshgate.model``,
``meshgate.errors`` and the standard library.
"""

from .expr import Expr, compile_expr, lua_tonumber
from .radixtree import HTTP_METHODS, Router, compile_router
from .types import ROUTER_KINDS, MatchInput, Matcher, RouteMatch, RouterKind

__all__ = [
    "RouterKind",
    "ROUTER_KINDS",
    "HTTP_METHODS",
    "MatchInput",
    "RouteMatch",
    "Matcher",
    "Router",
    "compile_router",
    "Expr",
    "compile_expr",
    "lua_tonumber",
]
