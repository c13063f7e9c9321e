"""Plugin runtime: registry, loader and per-route compiled chains.

The contract is APISIX's (DESIGN.md seam 3): a plugin is a plain Python module with
``NAME``, ``PRIORITY``, ``VERSION``, ``SCHEMA`` (optional ``CONSUMER_SCHEMA``,
``METADATA_SCHEMA``) and any of the phase hooks ``rewrite``, ``access``,
``before_proxy``, ``header_filter``, ``body_filter``, ``log`` taking ``(conf, ctx)``.
In ``rewrite``/``access``/``before_proxy`` a hook returns ``None`` to continue or
``(status, body)`` to answer the request; a dict/list body is JSON-encoded.

Chains are compiled once per Snapshot: plugins sorted by priority (descending), the
injected ``_meta`` honoured (``disable``, ``priority``, ``filter``, ``error_response``),
and per phase only the plugins that implement that phase, so an unconfigured phase
costs nothing on the hot path.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Protocol


from ..errors import ConfigError, PluginError
from ..router import compile_expr

__all__ = ["PHASES", "Plugin", "PluginRegistry", "PluginChain", "PluginContext", "META_SCHEMA"]

log = logging.getLogger("meshgate.plugins")

PHASES = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")

META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "disable": {"type": "boolean"},
        "error_response": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "priority": {"type": "integer"},
        "filter": {"type": "array"},
    },
    "additionalProperties": False,
}


class PluginContext(Protocol):
    """What hooks receive as ``ctx`` (implemented by the proxy's exchange)."""

    def var(self, name: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Plugin:
    name: str
    priority: int
    version: str
    schema: Mapping[str, Any]
    module: ModuleType
    consumer_schema: Mapping[str, Any] | None = None
    metadata_schema: Mapping[str, Any] | None = None

    def hook(self, phase: str) -> Callable[[Any, Any], Any] | None:
        return getattr(self.module, phase, None)


def _encode_body(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


class PluginChain:
    """One route's (or the global rules') plugins, per phase, in execution order."""

    __slots__ = ("phases", "names")

    def __init__(self, phases: dict[str, tuple[tuple[Callable[[Any, Any], Any], Any, Any, Any], ...]],
                 names: tuple[str, ...]) -> None:
        self.phases = phases
        self.names = names

    def has(self, phase: str) -> bool:
        return phase in self.phases

    def run(self, phase: str, ctx: Any) -> tuple[int, bytes] | None:
        """Run one phase; returns (status, body bytes) when a plugin ends the request."""
        for hook, conf, flt, err_resp in self.phases.get(phase, ()):
            if flt is not None and not flt.eval(ctx.var):
                continue
            res = hook(conf, ctx)
            if res is not None and phase in ("rewrite", "access", "before_proxy"):
                status, body = res if isinstance(res, tuple) else (res, None)
                if err_resp is not None and status >= 400:
                    body = err_resp
                return int(status), _encode_body(body)
        return None


class PluginRegistry:
    """Known plugins by name: the built-in package plus directories / entry points."""

    def __init__(self) -> None:
        self._plugins: dict[str, Plugin] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._plugins

    def get(self, name: str) -> Plugin | None:
        return self._plugins.get(name)

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def register_module(self, module: ModuleType) -> Plugin:
        name = getattr(module, "NAME", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin module {module.__name__} has no NAME")
        schema = getattr(module, "SCHEMA", {"type": "object"})
        import jsonschema  # here, not at import: workers that load no plugin never need it

        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise PluginError(f"plugin {name}: invalid SCHEMA: {e.message}") from e
        p = Plugin(name=name, priority=int(getattr(module, "PRIORITY", 0)), version=str(getattr(module, "VERSION", "0.1")),
                   schema=schema, module=module, consumer_schema=getattr(module, "CONSUMER_SCHEMA", None),
                   metadata_schema=getattr(module, "METADATA_SCHEMA", None))
        self._plugins[name] = p
        return p

    def load_builtin(self) -> None:
        from . import builtin

        for info in pkgutil.iter_modules(builtin.__path__):
            mod = importlib.import_module(f"{builtin.__name__}.{info.name}")
            if hasattr(mod, "NAME"):
                self.register_module(mod)

    def load_directory(self, path: str | Path) -> list[str]:
        """Load every ``*.py`` in ``path`` as a plugin module (third-party plugins)."""
        loaded = []
        for f in sorted(Path(path).glob("*.py")):
            modname = f"meshgate_ext_plugins.{f.stem}"
            spec = importlib.util.spec_from_file_location(modname, f)
            if spec is None or spec.loader is None:
                continue
            mod = importlib.util.module_from_spec(spec)
            sys.modules[modname] = mod
            try:
                spec.loader.exec_module(mod)
                loaded.append(self.register_module(mod).name)
            except Exception as e:
                raise PluginError(f"cannot load plugin {f}: {e}") from e
        return loaded

    def validate(self, name: str, conf: Any, *, pointer: str, kind: str | None = None, id: str | None = None) -> None:
        p = self._plugins.get(name)
        if p is None:
            raise ConfigError(pointer, f"unknown plugin {name!r}", kind=kind, id=id)
        if not isinstance(conf, dict):
            raise ConfigError(pointer, "expected an object", kind=kind, id=id)
        import jsonschema

        meta = conf.get("_meta")
        body = {k: v for k, v in conf.items() if k != "_meta"} if meta is not None else conf
        if meta is not None:
            err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(META_SCHEMA).iter_errors(meta))
            if err is not None:
                raise ConfigError(pointer + "/_meta" + "".join(f"/{x}" for x in err.absolute_path), err.message,
                                  kind=kind, id=id)
        err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(p.schema).iter_errors(body))
        if err is not None:
            raise ConfigError(pointer + "".join(f"/{x}" for x in err.absolute_path),
                              f"failed to check the configuration of plugin {name}: {err.message}", kind=kind, id=id)
        check = getattr(p.module, "check_schema", None)
        if check is not None:
            msg = check(body)
            if msg:
                raise ConfigError(pointer, f"failed to check the configuration of plugin {name}: {msg}", kind=kind, id=id)

    def compile_chain(self, plugins: Mapping[str, Any], *, pointer: str = "/plugins", kind: str | None = None,
                      id: str | None = None) -> PluginChain | None:
        entries = []
        for name, conf in plugins.items():
            ptr = f"{pointer}/{name}"
            self.validate(name, conf, pointer=ptr, kind=kind, id=id)
            meta = conf.get("_meta") or {}
            if meta.get("disable"):
                continue
            p = self._plugins[name]
            flt = compile_expr(meta["filter"], ptr + "/_meta/filter") if meta.get("filter") else None
            body = {k: v for k, v in conf.items() if k != "_meta"}
            prepare = getattr(p.module, "prepare", None)
            if prepare is not None:  # optional: precompute per-Snapshot state from the conf
                body = prepare(body)
            entries.append((int(meta.get("priority", p.priority)), name, p, body, flt, meta.get("error_response")))
        if not entries:
            return None
        entries.sort(key=lambda e: -e[0])
        phases: dict[str, tuple[Any, ...]] = {}
        for phase in PHASES:
            hooks = tuple((h, body, flt, err) for _, _, p, body, flt, err in entries if (h := p.hook(phase)) is not None)
            if hooks:
                phases[phase] = hooks
        return PluginChain(phases, tuple(e[1] for e in entries))
