"""file-logger: append one JSON line per request to a file (APISIX
``apisix/plugins/file-logger.lua``).

The path comes from the conf, else from the plugin metadata.  Files stay open (one
``O_APPEND`` descriptor per path, each line written with a single ``write`` so lines of
several workers never interleave) and are reopened when the path no longer names the open
file (log rotation by rename or delete), checked at most once a second.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

from ...observability.logentry import (LOG_BODY_PROPERTIES, LogOptions, check_log_exprs, encode_json, get_log_entry,
                                       req_body_hook, resp_body_hook)
from ...router import compile_expr

NAME = "file-logger"
PRIORITY = 399
VERSION = "0.1"

logger = logging.getLogger("meshgate.plugins.file-logger")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        **LOG_BODY_PROPERTIES,
        "match": {"type": "array", "maxItems": 20, "items": {"type": "array"}},
    },
}

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "log_format": {"type": "object"},
        "log_format_extra": {"type": "object"},
    },
}

REOPEN_CHECK_INTERVAL = 1.0
PATH_NOT_SET = 'property "path" is not set in either the plugin conf or the metadata'


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    if schema_type == "metadata":
        return None
    if conf.get("match"):
        try:
            compile_expr(conf["match"])
        except Exception as e:
            return f"failed to validate the 'match' expression: {getattr(e, 'message', e)}"
    # APISIX also refuses a conf without "path" when the metadata has none; the metadata is
    # not visible here, so that case is reported (APISIX's text) when a request is logged.
    return check_log_exprs(conf, compile_expr)


@dataclass(slots=True)
class Conf:
    raw: dict[str, Any]
    opts: LogOptions
    path: str | None


def prepare(conf: dict[str, Any]) -> Conf:
    return Conf(raw=conf, opts=LogOptions.from_conf(NAME, conf, compile_expr), path=conf.get("path"))


class _File:
    __slots__ = ("fd", "ino", "checked")

    def __init__(self, fd: int, ino: tuple[int, int], checked: float) -> None:
        self.fd = fd
        self.ino = ino
        self.checked = checked


_files: dict[str, _File] = {}


def _open(path: str) -> _File:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    st = os.fstat(fd)
    return _File(fd, (st.st_dev, st.st_ino), time.monotonic())


def _file(path: str) -> _File:
    f = _files.get(path)
    now = time.monotonic()
    if f is not None and now - f.checked >= REOPEN_CHECK_INTERVAL:
        f.checked = now
        try:
            st = os.stat(path)
            same = (st.st_dev, st.st_ino) == f.ino
        except OSError:
            same = False
        if not same:   # rotated: the path names another file now (or none)
            logger.info("reopen cached log file: %s", path)
            os.close(f.fd)
            del _files[path]
            f = None
    if f is None:
        f = _files[path] = _open(path)
    return f


def write_file_data(path: str, entry: Mapping[str, Any]) -> None:
    line = (encode_json(entry) + "\n").encode()
    try:
        f = _file(path)
    except OSError as e:
        logger.error("failed to open file: %s, error info: %s: %s", path, path, e.strerror or e)
        return
    try:
        os.write(f.fd, line)
    except OSError as e:
        logger.error("failed to write file: %s, error info: %s", path, e.strerror or e)


# the request body is read in access and the response body collected in body_filter only
# when the conf asks for them (APISIX log-util): the same two hooks for every logger
access = req_body_hook
body_filter = resp_body_hook


def log(conf: Conf, ctx: Any) -> None:
    entry = get_log_entry(conf.opts, ctx)
    if entry is None:
        return
    path = conf.path
    if path is None:
        meta = ctx.plugin_metadata(NAME)
        path = meta.get("path") if isinstance(meta, Mapping) else None
        if not isinstance(path, str):
            logger.error("%s", PATH_NOT_SET)
            return
    write_file_data(path, entry)


def destroy() -> None:
    for f in _files.values():
        try:
            os.close(f.fd)
        except OSError:
            pass
    _files.clear()
