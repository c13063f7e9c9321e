"""tcp-logger: send the requests' log entries, in batches, to a TCP (or TLS) server
(APISIX ``apisix/plugins/tcp-logger.lua``).

Each batch opens a connection (``timeout`` in milliseconds for connect and send), writes
the JSON array of the entries (one JSON object when ``batch_max_size`` is 1), and closes.
With ``tls`` the handshake uses ``tls_options`` as the server name and does not verify the
certificate, as APISIX's ``sslhandshake(true, tls_options, false)``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Hashable

from ...observability.batch import BatchConfig, BatchProcessorManager, Process, ProcessError, wrap_metadata_schema, \
    wrap_schema
from ...observability.logentry import (LOG_BODY_PROPERTIES, LOG_FORMAT_METADATA, check_log_schema, conf_key,
                                       encode_json, get_log_entry, LogOptions, max_pending, req_body_hook,
                                       resp_body_hook, send_error_reason, unverified_tls_context)
from ...router import compile_expr

NAME = "tcp-logger"
PRIORITY = 405
VERSION = "0.1"

logger = logging.getLogger("meshgate.plugins.tcp-logger")

SCHEMA: dict[str, Any] = wrap_schema({
    "type": "object",
    "properties": {
        "host": {"type": "string"},
        "port": {"type": "integer", "minimum": 0},
        "tls": {"type": "boolean", "default": False},
        "tls_options": {"type": "string"},
        "timeout": {"type": "integer", "minimum": 1, "default": 1000},
        **LOG_BODY_PROPERTIES,
    },
    "required": ["host", "port"],
}, "tcp logger")

METADATA_SCHEMA: dict[str, Any] = wrap_metadata_schema(LOG_FORMAT_METADATA)

_manager = BatchProcessorManager("tcp logger")


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    return check_log_schema(conf, schema_type, compile_expr)


@dataclass(slots=True)
class Conf:
    raw: dict[str, Any]
    opts: LogOptions
    batch: BatchConfig
    key: str
    host: str
    port: int
    timeout: float
    tls: bool
    server_name: str | None


def prepare(conf: dict[str, Any]) -> Conf:
    return Conf(raw=conf, opts=LogOptions.from_conf(NAME, conf, compile_expr),
                batch=BatchConfig.from_conf(conf, "tcp logger"), key=conf_key(conf), host=conf["host"],
                port=int(conf["port"]), timeout=int(conf.get("timeout", 1000)) / 1000.0,
                tls=bool(conf.get("tls", False)), server_name=conf.get("tls_options"))


# the request body is read in access and the response body collected in body_filter only
# when the conf asks for them (APISIX log-util): the same two hooks for every logger
access = req_body_hook
body_filter = resp_body_hook


def log(conf: Conf, ctx: Any) -> None:
    entry = get_log_entry(conf.opts, ctx)
    if entry is None:
        return
    key: Hashable = (ctx.var("route_id"), conf.key)
    _manager.add_entry(key, entry, lambda: _make_process(conf), conf.batch,
                       max_pending=max_pending(ctx.plugin_metadata(NAME)))


def destroy() -> None:
    try:
        _manager.flush()
    except RuntimeError:
        pass


def _make_process(conf: Conf) -> Process:
    async def process(entries: list[Any], batch_max_size: int) -> None:
        data = encode_json(entries[0] if batch_max_size == 1 else entries)
        await send_tcp_data(conf, data.encode())
    return process




async def send_tcp_data(conf: Conf, data: bytes) -> None:
    host, port = conf.host, conf.port
    logger.info("sending a batch logs to %s:%s", host, port)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), conf.timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise ProcessError(f"failed to connect to TCP server: host[{host}] port[{port}] err: {send_error_reason(e)}") from None
    try:
        if conf.tls:
            try:
                await asyncio.wait_for(writer.start_tls(unverified_tls_context(), server_hostname=conf.server_name or None),
                                       conf.timeout)
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                raise ProcessError(f"failed to perform TLS handshake to TCP server: host[{host}] port[{port}] "
                                   f"err: {send_error_reason(e)}") from None
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), conf.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ProcessError(f"failed to send data to TCP server: host[{host}] port[{port}] err: {send_error_reason(e)}") \
                from None
    finally:
        writer.close()
