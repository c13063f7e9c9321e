"""Router input/output types (the seam between the proxy and the router)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol

__all__ = ["RouterKind", "ROUTER_KINDS", "MatchInput", "RouteMatch", "Matcher"]

RouterKind = Literal["radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter"]
ROUTER_KINDS: tuple[RouterKind, ...] = ("radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter")

class MatchInput(Protocol):
    """What the proxy hands to :meth:`Router.match` (``meshgate.http.Request`` fits)."""

    method: str       # upper-case
    host: str         # lower-cased Host without port (nginx $host)
    http_host: str    # Host header as received, port included (route hosts containing ':')
    path: str         # normalized path (nginx $uri), no query
    remote_addr: str  # client IP after real-ip processing

    def var(self, name: str) -> Any:
        """Request variable for ``vars`` rules; ``None`` when absent."""
        ...


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route_id: str
    route: Mapping[str, Any]      # the route value (shared, read-only)
    params: Mapping[str, str]     # uri captures (name -> value); empty when the uri had none
    matched_uri: str              # the route uri pattern that matched
    matched_host: str | None      # the route host pattern that matched (None: hostless route)


class Matcher(Protocol):
    """What the proxy asks of a compiled router: APISIX's radixtree ``Router``, or the mesh's
    Envoy-style route table (``meshgate.proxy.mesh.MeshRouter``)."""

    @property
    def kind(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def errors(self) -> list[Any]: ...

    def match(self, req: Any) -> RouteMatch | None: ...
