"""The one exception tree of Meshgate (DESIGN.md, Conventions).

Every user-visible error names the object, the field (as a JSON pointer) and what
was expected.  Third-party errors are wrapped where they are raised.
"""

from __future__ import annotations

__all__ = [
    "MeshgateError",
    "ConfigError",
    "ProtocolError",
    "UpstreamError",
    "ConnectError",
    "UpstreamTimeout",
    "NoHealthyUpstream",
    "PluginError",
]


class MeshgateError(Exception):
    """Root of every error Meshgate raises on purpose."""


class ConfigError(MeshgateError):
    """A configuration item (or node config key) is invalid.

    ``pointer`` is an RFC 6901 JSON pointer into the item (``/upstream/nodes/0/port``);
    ``kind`` and ``id`` name the object when the error is about a resource.
    """

    def __init__(self, pointer: str, message: str, *, kind: str | None = None, id: str | None = None) -> None:
        self.pointer = pointer
        self.message = message
        self.kind = kind
        self.id = id
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.kind is not None:
            where = f"{self.kind}"
            if self.id is not None:
                where += f" id={self.id}"
            where += ": "
        ptr = self.pointer or "/"
        return f"{where}{ptr}: {self.message}"


class ProtocolError(MeshgateError):
    """The peer sent bytes that violate HTTP; ``status`` is what we answer (400, 413, 414, 431, 501...)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


class UpstreamError(MeshgateError):
    """Forwarding to the upstream failed; ``status`` is what the client gets."""

    status = 502


class ConnectError(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class NoHealthyUpstream(UpstreamError):
    status = 503


class PluginError(MeshgateError):
    """A plugin failed to load or raised while handling a request."""
