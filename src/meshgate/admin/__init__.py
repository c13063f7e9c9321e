"""admin: the Admin API v3 (``AdminAPI``), the Control API (``ControlAPI``) and their HTTP server."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .admin_api import AdminAPI
    from .control import ControlAPI
    from .httpserver import ApiRequest, ApiServer

__all__ = ["AdminAPI", "ControlAPI", "ApiServer", "ApiRequest"]

# Imported on first use: the Admin API pulls in jsonschema and the etcd client, which
# processes that only serve the Control API do not need.
_LAZY = {"AdminAPI": ".admin_api", "ControlAPI": ".control", "ApiServer": ".httpserver", "ApiRequest": ".httpserver"}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod, __name__), name)
