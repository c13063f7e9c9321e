"""client-control: per-route limit on the size of the request body.

As APISIX ``apisix/plugins/client-control.lua``: ``max_body_size`` (bytes, 0 = no limit)
replaces nginx ``client_max_body_size`` for the request: a ``Content-Length`` above it is
answered ``413`` at once; a chunked body is read (bounded) and answered ``413`` as soon as it
grows past the limit, as nginx does for chunked bodies.
"""

from __future__ import annotations

from typing import Any

from ._traffic_util import HTML_TYPE, nginx_page

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "rewrite"]

NAME = "client-control"
PRIORITY = 22000
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "max_body_size": {"type": "integer", "minimum": 0,
                          "description": "Maximum message body size in bytes. No restriction when set to 0."},
    },
}

_TOO_LARGE = (413, nginx_page(413), {"Content-Type": HTML_TYPE})


async def rewrite(conf: dict[str, Any], ctx: Any) -> Any:
    limit = conf.get("max_body_size")
    if not limit:   # absent or 0: no restriction
        return None
    cl = ctx.var("content_length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            return None
        return _TOO_LARGE if n > limit else None
    if ctx.req_header("transfer-encoding"):
        # chunked: the size is known only while reading; read_body answers 413 past max_size
        await ctx.read_body(max_size=limit)
    return None
