"""syslog: send the requests' log entries to a syslog server over TCP or UDP (APISIX
``apisix/plugins/syslog.lua`` + ``syslog/init.lua``, framing ``apisix/utils/rfc5424.lua``).

Each entry is framed at log time as RFC 5424, facility SYSLOG, severity INFO:
``<46>1 2024-01-02T03:04:05.678Z {host} apisix {pid} - - {json}\\n`` (``host`` is the
request's host, as APISIX passes ``ctx.var.host``).  The batch processor hands a batch of
frames to a per-processor logger that behaves like lua-resty-logger-socket: frames are
buffered until ``flush_limit`` bytes are reached, then written (TCP: one kept-alive
connection, reconnected on error; UDP: one datagram per flush, split on frame boundaries
when larger than a datagram can be); a frame that would grow the buffer past
``drop_limit`` is dropped.  Unlike lua-resty-logger-socket, a buffer below ``flush_limit``
does not wait for more traffic forever: it is flushed after ``inactive_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any, Hashable

from ...observability.batch import BatchConfig, BatchProcessorManager, Process, ProcessError, wrap_metadata_schema, \
    wrap_schema
from ...observability.logentry import (LOG_BODY_PROPERTIES, LOG_FORMAT_METADATA, check_log_schema, conf_key,
                                       encode_json, get_log_entry, LogOptions, max_pending, req_body_hook,
                                       resp_body_hook, rfc3339_zulu, send_error_reason, unverified_tls_context)
from ...router import compile_expr

NAME = "syslog"
PRIORITY = 401
VERSION = "0.1"

logger = logging.getLogger("meshgate.plugins.syslog")

SCHEMA: dict[str, Any] = wrap_schema({
    "type": "object",
    "properties": {
        "host": {"type": "string"},
        "port": {"type": "integer"},
        "flush_limit": {"type": "integer", "minimum": 1, "default": 4096},
        "drop_limit": {"type": "integer", "default": 1048576},
        "timeout": {"type": "integer", "minimum": 1, "default": 3000},
        "sock_type": {"type": "string", "default": "tcp", "enum": ["tcp", "udp"]},
        "pool_size": {"type": "integer", "minimum": 5, "default": 5},
        "tls": {"type": "boolean", "default": False},
        **LOG_BODY_PROPERTIES,
    },
    "required": ["host", "port"],
}, "sys logger")

METADATA_SCHEMA: dict[str, Any] = wrap_metadata_schema(LOG_FORMAT_METADATA)

_manager = BatchProcessorManager("sys logger")

# RFC 5424 section 6.2.1: PRI = facility * 8 + severity
FACILITY = {"KERN": 0, "USER": 1, "MAIL": 2, "DAEMON": 3, "AUTH": 4, "SYSLOG": 5, "LPR": 6, "NEWS": 7,
            "UUCP": 8, "CRON": 9, "AUTHPRIV": 10, "FTP": 11, "LOCAL0": 16, "LOCAL1": 17, "LOCAL2": 18,
            "LOCAL3": 19, "LOCAL4": 20, "LOCAL5": 21, "LOCAL6": 22, "LOCAL7": 23}
SEVERITY = {"EMEGR": 0, "ALERT": 1, "CRIT": 2, "ERR": 3, "WARNING": 4, "NOTICE": 5, "INFO": 6, "DEBUG": 7}
MAX_DATAGRAM = 65000


def rfc5424_encode(facility: str, severity: str, hostname: str | None, appname: str | None, pid: int, msg: str,
                   structured_data: list[tuple[str, str]] | None = None, ts: float | None = None) -> str:
    pri = FACILITY[facility] * 8 + SEVERITY[severity]
    sd = "-"
    if structured_data:
        sd = "[logservice" + "".join(f' {n}="{v}"' for n, v in structured_data) + "]"
    return f"<{pri}>1 {rfc3339_zulu(ts)} {hostname or '-'} {appname or '-'} {pid} - {sd} {msg}\n"


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
    udp: bool
    tls: bool
    timeout: float
    flush_limit: int
    drop_limit: int


def prepare(conf: dict[str, Any]) -> Conf:
    return Conf(raw=conf, opts=LogOptions.from_conf(NAME, conf, compile_expr),
                batch=BatchConfig.from_conf(conf, "sys logger"), key=conf_key(conf), host=conf["host"],
                port=int(conf["port"]), udp=conf.get("sock_type", "tcp") == "udp", tls=bool(conf.get("tls", False)),
                timeout=int(conf.get("timeout", 3000)) / 1000.0, flush_limit=int(conf.get("flush_limit", 4096)),
                drop_limit=int(conf.get("drop_limit", 1048576)))


# the request body is read in access and the response body collected in body_filter only
# when the conf asks for them (APISIX log-util): the same two hooks for every logger
access = req_body_hook
body_filter = resp_body_hook


def log(conf: Conf, ctx: Any) -> None:
    entry = get_log_entry(conf.opts, ctx)
    if entry is None:
        return
    frame = rfc5424_encode("SYSLOG", "INFO", ctx.var("host"), "apisix", os.getpid(), encode_json(entry))
    key: Hashable = (ctx.var("route_id"), conf.key)
    _manager.add_entry(key, frame, lambda: _make_process(conf), conf.batch,
                       max_pending=max_pending(ctx.plugin_metadata(NAME)))


def destroy() -> None:
    try:
        _manager.flush()
    except RuntimeError:
        pass


def _make_process(conf: Conf) -> Process:
    sender = SyslogSender(conf)

    async def process(entries: list[Any], batch_max_size: int) -> None:
        await sender.log("".join(entries))
    return process




class _Datagram(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:
        logger.debug("syslog udp: %s", exc)


class SyslogSender:
    """lua-resty-logger-socket's buffering over one socket (see the module docstring)."""

    def __init__(self, conf: Conf) -> None:
        self.conf = conf
        self.buffer: list[str] = []
        self.size = 0
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._later: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    async def log(self, msg: str) -> None:
        conf = self.conf
        logger.info("sending a batch logs to %s:%s", conf.host, conf.port)
        n = len(msg.encode())
        if self.size + n < conf.flush_limit:
            self._append(msg, n)
            self._flush_later()
            return
        if self.size + n <= conf.drop_limit:
            self._append(msg, n)
            await self.flush()
            return
        await self.flush()
        raise ProcessError("failed to log message: logger buffer is full, message dropped")

    def _append(self, msg: str, n: int) -> None:
        self.buffer.append(msg)
        self.size += n

    def _flush_later(self) -> None:
        if self._later is None:
            loop = asyncio.get_running_loop()
            self._later = loop.call_later(self.conf.batch.inactive_timeout, self._flush_task)

    def _flush_task(self) -> None:
        self._later = None

        async def run() -> None:
            try:
                await self.flush()
            except ProcessError as e:
                logger.error("failed to flush message: %s", e.message)
        t = asyncio.get_running_loop().create_task(run())
        _bg.add(t)
        t.add_done_callback(_bg.discard)

    async def flush(self) -> None:
        async with self._lock:
            if not self.buffer:
                return
            frames, self.buffer, self.size = self.buffer, [], 0
            if self._later is not None:
                self._later.cancel()
                self._later = None
            try:
                if self.conf.udp:
                    await self._send_udp(frames)
                else:
                    await self._send_tcp("".join(frames).encode())
            except ProcessError:
                raise
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                raise ProcessError(f"failed to log message: {send_error_reason(e)}") from None

    async def _send_tcp(self, data: bytes) -> None:
        conf = self.conf
        for attempt in (0, 1):
            old = self._writer
            reused = old is not None and not old.is_closing()
            if old is not None and reused:
                w = old
            else:
                try:
                    _, w = await asyncio.wait_for(asyncio.open_connection(
                        conf.host, conf.port, ssl=unverified_tls_context() if conf.tls else None,
                        server_hostname=conf.host if conf.tls else None), conf.timeout)
                except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                    raise ProcessError(f"failed to log message: failed to connect: {send_error_reason(e)}") from None
                self._writer = w
            try:
                w.write(data)
                await asyncio.wait_for(w.drain(), conf.timeout)
                return
            except (OSError, asyncio.TimeoutError):
                w.close()
                self._writer = None
                if not reused or attempt:
                    raise

    async def _send_udp(self, frames: list[str]) -> None:
        conf = self.conf
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(_Datagram, remote_addr=(conf.host, conf.port))
        packet = bytearray()
        for f in frames:
            b = f.encode()
            if packet and len(packet) + len(b) > MAX_DATAGRAM:
                self._udp.sendto(bytes(packet))
                packet.clear()
            packet += b
        if packet:
            self._udp.sendto(bytes(packet))


_bg: set[asyncio.Task[None]] = set()
