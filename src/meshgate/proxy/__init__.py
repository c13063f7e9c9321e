"""The event-loop side: downstream codecs, the request's life, upstream connections, workers.

``http1`` parses HTTP/1.1 clients and feeds :class:`Exchange` (``exchange``: routing, plugin
phases, forwarding, retries, timeouts: what plugins see as ``ctx``); ``upstream_conn`` holds
the upstream connections and their pool; ``server`` a worker's listeners and sweeper; ``tls``
TLS termination (certificates by SNI from the ``ssls`` objects, mTLS, ``$ssl_*`` variables);
``runtime`` the per-Snapshot compiled state; ``supervisor``/``worker`` the processes.
"""

from .common import ProxySettings
from .exchange import Downstream, Exchange
from .runtime import RouteRuntime, Runtime, UpstreamRuntime, build_runtime
from .server import ProxyServer

__all__ = ["ProxySettings", "ProxyServer", "Exchange", "Downstream", "Runtime", "RouteRuntime", "UpstreamRuntime",
           "build_runtime"]
