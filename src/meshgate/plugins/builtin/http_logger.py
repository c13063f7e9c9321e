"""http-logger: POST the requests' log entries, in batches, to an HTTP(S) collector
(APISIX ``apisix/plugins/http-logger.lua``).

A batch is a JSON array (``concat_method: json``; a single object when
``batch_max_size`` is 1) or the entries' JSON joined with newlines (``new_line``), sent with
``Content-Type: application/json`` resp. ``text/plain`` and the conf's ``auth_header`` as
``Authorization``.  A status >= 400 is a failure (retried per ``max_retry_count``).  The
log hook only queues the entry: a slow or dead collector never delays a response.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Hashable
from urllib.parse import urlsplit

import httptools

from ...observability.batch import (BatchConfig, BatchProcessorManager, Process, ProcessError, wrap_metadata_schema,
                                    wrap_schema)
from ...observability.logentry import (LOG_BODY_PROPERTIES, LOG_FORMAT_METADATA, check_log_schema, conf_key,
                                       encode_json, get_log_entry, LogOptions, max_pending, req_body_hook,
                                       resp_body_hook, send_error_reason)
from ...router import compile_expr

NAME = "http-logger"
PRIORITY = 410
VERSION = "0.1"

logger = logging.getLogger("meshgate.plugins.http-logger")

SCHEMA: dict[str, Any] = wrap_schema({
    "type": "object",
    "properties": {
        # APISIX core.schema.uri_def
        "uri": {"type": "string", "pattern": r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"},
        "auth_header": {"type": "string"},
        "timeout": {"type": "integer", "minimum": 1, "default": 3},
        **LOG_BODY_PROPERTIES,
        "concat_method": {"type": "string", "default": "json", "enum": ["json", "new_line"]},
        "ssl_verify": {"type": "boolean", "default": False},
    },
    "encrypt_fields": ["auth_header"],   # stored encrypted in etcd (APISIX data_encryption)
    "required": ["uri"],
}, "http logger")

METADATA_SCHEMA: dict[str, Any] = wrap_metadata_schema(LOG_FORMAT_METADATA)

_manager = BatchProcessorManager("http logger")


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    return check_log_schema(conf, schema_type, compile_expr)


@dataclass(slots=True)
class Conf:
    raw: dict[str, Any]
    opts: LogOptions
    batch: BatchConfig
    key: str
    scheme: str
    host: str
    port: int
    target: str
    timeout: float
    headers: bytes
    new_line: bool
    _ssl: ssl.SSLContext | None = field(default=None)

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            c = ssl.create_default_context()
            if not self.raw.get("ssl_verify", False):
                c.check_hostname = False
                c.verify_mode = ssl.CERT_NONE
            self._ssl = c
        return self._ssl


def prepare(conf: dict[str, Any]) -> Conf:
    u = urlsplit(conf["uri"])
    scheme = u.scheme.lower()
    host = u.hostname or ""
    port = u.port or (443 if scheme == "https" else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    new_line = conf.get("concat_method", "json") == "new_line"
    hdrs = f"Host: {u.hostname if ':' not in host else '[' + host + ']'}\r\n"
    hdrs += "Content-Type: " + ("text/plain" if new_line else "application/json") + "\r\n"
    if conf.get("auth_header") is not None:
        hdrs += f"Authorization: {conf['auth_header']}\r\n"
    return Conf(raw=conf, opts=LogOptions.from_conf(NAME, conf, compile_expr),
                batch=BatchConfig.from_conf(conf, "http logger"), key=conf_key(conf),
                scheme=scheme, host=host, port=port, target=target, timeout=float(conf.get("timeout", 3)),
                headers=hdrs.encode("latin-1", "replace"), new_line=new_line)


# the request body is read in access and the response body collected in body_filter only
# when the conf asks for them (APISIX log-util): the same two hooks for every logger
access = req_body_hook
body_filter = resp_body_hook


def log(conf: Conf, ctx: Any) -> None:
    entry = get_log_entry(conf.opts, ctx)
    if entry is None:
        return
    entry.setdefault("route_id", "no-matched")
    key: Hashable = (ctx.var("route_id"), conf.key)
    _manager.add_entry(key, entry, lambda: _make_process(conf), conf.batch,
                       max_pending=max_pending(ctx.plugin_metadata(NAME)))


def destroy() -> None:
    try:
        _manager.flush()
    except RuntimeError:   # no running loop: nothing can be sent any more
        pass


def _make_process(conf: Conf) -> Process:
    async def process(entries: list[Any], batch_max_size: int) -> None:
        if batch_max_size == 1:
            data = encode_json(entries[0])
        elif conf.new_line:
            data = "\n".join(encode_json(e) for e in entries)
        else:
            data = encode_json(entries)
        await send_http_data(conf, data.encode())
    return process



class _Resp:
    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, body: bytes) -> None:
        if len(self.body) < 4096:
            self.body += body[:4096]

    def on_message_complete(self) -> None:
        self.done = True


async def send_http_data(conf: Conf, body: bytes) -> None:
    """One POST; raises ProcessError with APISIX's texts."""
    host, port = conf.host, conf.port
    logger.info("sending a batch logs to %s", conf.raw["uri"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + conf.timeout
    https = conf.scheme == "https"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=conf.ssl_context() if https else None,
                                    server_hostname=host if https else None), conf.timeout)
    except ssl.SSLError as e:
        raise ProcessError(f"failed to perform SSL with host[{host}] port[{port}] {e}") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise ProcessError(f"failed to connect to host[{host}] port[{port}] {send_error_reason(e)}") from None
    try:
        head = (b"POST " + conf.target.encode("latin-1", "replace") + b" HTTP/1.1\r\n" + conf.headers
                + b"Content-Length: %d\r\nConnection: close\r\nUser-Agent: meshgate-http-logger\r\n\r\n" % len(body))
        resp = _Resp()
        parser = httptools.HttpResponseParser(resp)
        try:
            writer.write(head + body)
            await asyncio.wait_for(writer.drain(), max(0.0, deadline - loop.time()))
            while not resp.done:
                data = await asyncio.wait_for(reader.read(65536), max(0.0, deadline - loop.time()))
                if not data:
                    break
                parser.feed_data(data)
        except (OSError, asyncio.TimeoutError, httptools.HttpParserError) as e:
            raise ProcessError(f"error while sending data to [{host}] port[{port}] {send_error_reason(e)}") from None
        if not resp.done and not parser.get_status_code():
            raise ProcessError(f"error while sending data to [{host}] port[{port}] closed")
        status = parser.get_status_code()
        if status >= 400:
            raise ProcessError(f"server returned status code[{status}] host[{host}] port[{port}] "
                               f"body[{resp.body.decode('utf-8', 'replace')}]")
    finally:
        writer.close()
