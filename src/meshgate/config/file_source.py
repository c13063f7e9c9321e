"""Standalone ``apisix.yaml`` source: load, then watch for changes.

APISIX checks the file's mtime every second and reloads it (apisix-semantics.md 6.3).
A file without ``#END`` (e.g. half-written), with a YAML error or a missing variable
is ignored as a whole and the last good config keeps serving.  A bad item is rejected
alone, logged with kind, id and JSON pointer; the rest applies.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Mapping

from ..errors import ConfigError
from .background import Background
from .store import ConfigStore
from .yaml_source import ParsedConfig, parse_apisix_yaml

__all__ = ["FileSource", "load_file"]

log = logging.getLogger("meshgate.config")


def load_file(path: Path, env: Mapping[str, str] | None = None) -> ParsedConfig:
    """Parse the file; raises ConfigError when the file as a whole is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("/", f"cannot read {path}: {e.strerror}") from e
    return parse_apisix_yaml(text, env=os.environ if env is None else env, source=str(path))


class FileSource(Background):
    def __init__(self, path: Path, store: ConfigStore, *, interval: float = 1.0) -> None:
        self.path = path
        self.store = store
        self.interval = interval
        self._stamp: tuple[float, int, int] | None = None
        self.last_error: str | None = None
        self.item_errors: list[ConfigError] = []

    def _stat(self) -> tuple[float, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size, st.st_ino)

    def load(self) -> bool:
        """Load now; True when applied.  Logs and keeps the last good config otherwise."""
        self._stamp = self._stat()
        try:
            parsed = load_file(self.path)
        except ConfigError as e:
            self.last_error = str(e)
            log.error("%s: not applied, keeping the last good config: %s", self.path, e)
            return False
        self.last_error = None
        self.item_errors = list(parsed.errors)
        for err in parsed.errors:
            log.error("%s: item rejected: %s", self.path, err)
        snap = self.store.replace_all(parsed.items)
        if snap is not None:
            log.warning("%s: config version %d applied", self.path, snap.version)
        return True

    def start(self) -> None:
        self._spawn(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            stamp = self._stat()
            if stamp is not None and stamp != self._stamp:
                self.load()

    async def stop(self) -> None:
        await self._cancel()
