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
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence


from ..errors import ConfigError, PluginError
from ..model import schema_type_name
from ..router import compile_expr

__all__ = ["PHASES", "Plugin", "PluginRegistry", "PluginChain", "PluginContext", "META_SCHEMA", "Pending", "Answer",
           "encode_body", "to_answer", "schema_message"]

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
    """What hooks receive as ``ctx`` (implemented by the proxy's exchange; docs/plugins.md)."""

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
    type: str | None = None              # "auth": identifies consumers
    run_policy: str | None = None        # "prefer_route": a route's conf wins over a global rule's
    source: str = "builtin"              # "builtin", a file path, or "entry point <name>"

    def hook(self, phase: str) -> Callable[[Any, Any], Any] | None:
        h = getattr(self.module, phase, None)
        return h if callable(h) else None   # a module-level ``log = logging.getLogger()`` is no hook

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if callable(getattr(self.module, p, None)))


from .chain import Answer, HookEntry, Pending, PluginChain, encode_body, to_answer  # noqa: F401  (re-exported)


class PluginRegistry:
    """Known plugins by name: the built-in package plus directories / entry points.

    Third-party plugins are plain modules with the built-ins' contract (docs/plugins.md),
    loaded from a directory (``*.py``) or from the ``meshgate.plugins`` entry-point group.
    A module that breaks the contract is refused with a message naming the file and the
    problem; the others still load.  :meth:`reload` re-imports the directory plugins
    (APISIX's plugin reload): the next config compile uses the new code.
    """

    ENTRY_POINT_GROUP = "meshgate.plugins"

    def __init__(self) -> None:
        self._plugins: dict[str, Plugin] = {}
        self._dirs: list[Path] = []
        self._enabled: frozenset[str] | None = None
        self.errors: list[str] = []      # plugins refused at the last load, one line each
        self.generation = 0              # bumped whenever the set of plugins changes
        # the installed entry points, (name, "module"), as found once (see load_entry_points)
        self.entry_points: list[tuple[str, str]] | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._plugins

    def get(self, name: str) -> Plugin | None:
        return self._plugins.get(name)

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def plugins(self) -> list[Plugin]:
        return [self._plugins[n] for n in sorted(self._plugins)]

    def register_module(self, module: ModuleType, *, source: str = "builtin") -> Plugin:
        p = _check_contract(module, source)
        old = self._plugins.get(p.name)
        if old is not None and old.source != source and old.source == "builtin" and source != "builtin":
            log.warning("plugin %s from %s replaces the built-in one", p.name, source)
        self._plugins[p.name] = p
        self.generation += 1
        init = getattr(module, "init", None)
        if callable(init) and source != "builtin":
            init()
        return p

    def load_all(self, dirs: Iterable[str | Path] = (), *, enabled: Iterable[str] | None = None,
                 entry_points: Iterable[Sequence[str]] | None = None) -> None:
        """What a gateway loads: the built-ins, installed entry points and ``apisix.plugin_dirs``,
        then, when ``config.yaml`` lists ``plugins``, only those (APISIX enables just the listed
        plugins; a conf naming another is refused as an unknown plugin).  ``entry_points``: the
        ones another registry found (a worker gets its supervisor's), instead of looking."""
        if entry_points is not None:
            self.entry_points = [(str(n), str(v)) for n, v in entry_points]
        self.load_builtin()
        self.load_entry_points()
        for d in dirs:
            self.load_directory(d)
        if enabled is not None:
            self._enabled = frozenset(enabled)
            self._keep_enabled()

    def _keep_enabled(self) -> None:
        if self._enabled is not None:
            for name in [n for n in self._plugins if n not in self._enabled]:
                del self._plugins[name]
                self.generation += 1

    def load_builtin(self) -> None:
        from . import builtin

        # the package's modules, as sources or compiled extensions (helpers start with "_")
        names = sorted({f.split(".", 1)[0] for d in builtin.__path__ for f in os.listdir(d)
                        if f.endswith((".py", ".so")) and not f.startswith("_")})
        for name in names:
            mod = importlib.import_module(f"{builtin.__name__}.{name}")
            if hasattr(mod, "NAME"):
                self.register_module(mod)

    def load_directory(self, path: str | Path) -> list[str]:
        """Load every ``*.py`` in ``path`` as a plugin module (third-party plugins).

        Returns the names loaded; a broken module is refused (``errors`` says why) and the
        rest still load."""
        d = Path(path)
        if d not in self._dirs:
            self._dirs.append(d)
        loaded = []
        for f in sorted(d.glob("*.py")):
            if f.name.startswith("_"):
                continue
            modname = f"meshgate_ext_plugins.{f.stem}"
            try:
                spec = importlib.util.spec_from_file_location(modname, f)
                if spec is None or spec.loader is None:
                    raise PluginError("not a loadable Python file")
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                loaded.append(self.register_module(mod, source=str(f)).name)
                sys.modules[modname] = mod
            except Exception as e:
                msg = f"plugin {f} refused: {e}"
                self.errors.append(msg)
                log.error("%s", msg)
        return loaded

    def load_entry_points(self) -> list[str]:
        """Plugins installed as packages: ``[project.entry-points."meshgate.plugins"]``, each
        naming a module.  They are looked up once per registry (``importlib.metadata`` reads
        every installed distribution, and brings the ``email`` package: a worker takes the
        list its supervisor found instead)."""
        if self.entry_points is None:
            from importlib import metadata
            self.entry_points = [(ep.name, ep.value) for ep in metadata.entry_points(group=self.ENTRY_POINT_GROUP)]
        loaded = []
        for name, value in self.entry_points:
            try:
                modname, _, attr = value.partition(":")
                mod: Any = importlib.import_module(modname.strip())
                for part in attr.strip().split(".") if attr.strip() else ():
                    mod = getattr(mod, part)
                if not isinstance(mod, ModuleType):
                    raise PluginError("the entry point must name a module")
                loaded.append(self.register_module(mod, source=f"entry point {name}").name)
            except Exception as e:
                msg = f"plugin entry point {name} ({value}) refused: {e}"
                self.errors.append(msg)
                log.error("%s", msg)
        return loaded

    def reload(self, *, enabled: Iterable[str] | None | bool = True) -> list[str]:
        """Re-import the directory plugins (new, changed and removed files); returns the names
        now loaded from directories.  Built-ins and entry points stay as they are, unless
        ``enabled`` gives a new list of enabled plugins (``None``: all), as APISIX's reload
        does with the list stored in etcd: then they are loaded again and filtered by it."""
        if enabled is not True:
            self._enabled = frozenset(enabled) if enabled is not None and enabled is not False else None
            self.load_builtin()        # those an earlier list left out come back
            self.load_entry_points()
        for name, p in list(self._plugins.items()):
            if p.source not in ("builtin",) and not p.source.startswith("entry point "):
                destroy = getattr(p.module, "destroy", None)
                if callable(destroy):
                    try:
                        destroy()
                    except Exception:
                        log.exception("plugin %s: destroy failed", name)
                del self._plugins[name]
        self.generation += 1
        self.errors = []
        loaded: list[str] = []
        for d in list(self._dirs):
            loaded += self.load_directory(d)
        self._keep_enabled()
        return [n for n in loaded if n in self._plugins]

    def describe(self) -> list[dict[str, Any]]:
        """What the Control API lists: name, priority, version, type, phases, source."""
        return [{"name": p.name, "priority": p.priority, "version": p.version, "type": p.type,
                 "run_policy": p.run_policy, "phases": list(p.phases), "source": p.source} for p in self.plugins()]

    def validate(self, name: str, conf: Any, *, pointer: str, kind: str | None = None, id: str | None = None,
                 schema_type: str = "route") -> None:
        """Check one plugin conf; ``schema_type`` ``consumer`` or ``metadata`` uses that schema."""
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
            if meta.get("filter"):
                try:
                    compile_expr(meta["filter"], pointer + "/_meta/filter")
                except ConfigError as e:
                    raise ConfigError(e.pointer, e.message, kind=kind, id=id) from e
        schema = p.schema
        if schema_type == "consumer" and p.consumer_schema is not None:
            schema = p.consumer_schema
        elif schema_type == "metadata":
            schema = p.metadata_schema or {"type": "object"}
        err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(body))
        if err is not None:
            raise ConfigError(pointer + "".join(f"/{x}" for x in err.absolute_path),
                              f"failed to check the configuration of plugin {name} err: {schema_message(err)}",
                              kind=kind, id=id)
        check = getattr(p.module, "check_schema", None)
        if check is not None:
            try:
                msg = check(body, schema_type) if _arity(check) >= 2 else check(body)
            except Exception as e:
                msg = f"check_schema raised {type(e).__name__}: {e}"
            if msg:
                raise ConfigError(pointer, f"failed to check the configuration of plugin {name} err: {msg}",
                                  kind=kind, id=id)

    def compile_chain(self, plugins: Mapping[str, Any], *, pointer: str = "/plugins", kind: str | None = None,
                      id: str | None = None, owner: str = "", owners: Mapping[str, str] | None = None
                      ) -> PluginChain | None:
        """``owner`` names the object the confs run for (``route:1``, ``global_rule:g``; per
        plugin in ``owners``): a plugin whose ``prepare`` takes two arguments gets it, so state
        such as limit counters is scoped as APISIX scopes it (conf_type + conf_id)."""
        entries: dict[str, tuple[Plugin, Any, Any]] = {}
        for name, conf in plugins.items():
            ptr = f"{pointer}/{name}"
            self.validate(name, conf, pointer=ptr, kind=kind, id=id)
            entries[name] = (self._plugins[name], conf, None)
        return self.chain_from(entries, pointer=pointer, owner=owner, owners=owners)

    def chain_from(self, entries: Mapping[str, tuple[Plugin, Any, Any]], *, pointer: str = "/plugins",
                   owner: str = "", owners: Mapping[str, str] | None = None) -> PluginChain | None:
        """A chain from already validated confs (name -> (plugin, conf, prepared or None))."""
        rows = []
        kept: dict[str, tuple[Plugin, Any, Any]] = {}
        for name, (p, conf, prepared) in entries.items():
            meta = conf.get("_meta") or {}
            if meta.get("disable"):
                continue
            ptr = f"{pointer}/{name}"
            flt = compile_expr(meta["filter"], ptr + "/_meta/filter") if meta.get("filter") else None
            if prepared is None:
                body = {k: v for k, v in conf.items() if k != "_meta"}
                prep = getattr(p.module, "prepare", None)
                # optional: precompute per-Snapshot state from the conf
                if prep is None:
                    prepared = body
                elif _arity(prep) >= 2:
                    prepared = prep(body, (owners or {}).get(name, owner))
                else:
                    prepared = prep(body)
            kept[name] = (p, conf, prepared)
            rows.append((int(meta.get("priority", p.priority)), name, p, prepared, flt, meta.get("error_response")))
        if not rows:
            return None
        rows.sort(key=lambda e: (-e[0], e[1]))
        phases: dict[str, tuple[HookEntry, ...]] = {}
        for phase in PHASES:
            hooks = tuple((h, body, flt, err, name) for _, name, p, body, flt, err in rows
                          if (h := p.hook(phase)) is not None)
            if hooks:
                phases[phase] = hooks
        return PluginChain(phases, tuple(e[1] for e in rows), kept)


def _arity(fn: Callable[..., Any]) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return 1


def _num(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def schema_message(err: Any) -> str:
    """A jsonschema error in lua-jsonschema's words, as APISIX reports schema errors:
    ``property "count" validation failed: expected 0 to be greater than 0``.

    The wrapping follows the schema path as lua-jsonschema nests its messages
    (``property "x" validation failed: ``, ``failed to validate item N: ``,
    ``failed to validate K (matching "P"): `` for patternProperties, ``allOf N failed: ``,
    ``failed to validate dependent schema for P: ``)."""
    v, inst, val = err.validator, err.instance, err.validator_value
    if v == "required":
        missing = [k for k in val if isinstance(inst, dict) and k not in inst]
        msg = f'property "{missing[0] if missing else val[0]}" is required'
    elif v == "type":
        want = val if isinstance(val, str) else " or ".join(val)
        msg = f"wrong type: expected {want}, got {schema_type_name(inst)}"
    elif v == "exclusiveMinimum":
        msg = f"expected {_num(inst)} to be greater than {_num(val)}"
    elif v == "minimum":
        msg = f"expected {_num(inst)} to be at least {_num(val)}"
    elif v == "exclusiveMaximum":
        msg = f"expected {_num(inst)} to be smaller than {_num(val)}"
    elif v == "maximum":
        msg = f"expected {_num(inst)} to be at most {_num(val)}"
    elif v == "enum":
        msg = "matches none of the enum values"
    elif v == "minLength":
        msg = f"string too short, expected at least {val}, got {len(inst)}"
    elif v == "maxLength":
        msg = f"string too long, expected at most {val}, got {len(inst)}"
    elif v == "pattern":
        msg = f'failed to match pattern "{val}" with "{inst}"'
    elif v == "minItems":
        msg = f"expect array to have at least {val} items"
    elif v == "maxItems":
        msg = f"expect array to have at most {val} items"
    elif v == "uniqueItems":
        msg = "expected unique items but items are not unique"
    elif v == "additionalProperties":
        extra = sorted(k for k in inst if k not in (err.schema.get("properties") or {})) if isinstance(inst, dict) else []
        msg = f"additional properties forbidden, found {extra[0] if extra else '?'}"
    elif v == "minProperties":
        msg = f"expect object to have at least {val} properties"
    elif v == "maxProperties":
        msg = f"expect object to have at most {val} properties"
    elif v == "oneOf":
        both = _matching_branches(val, inst) if not err.context else []
        msg = (f"value should match only one schema, but matches both schemas {both[0] + 1} and {both[1] + 1}"
               if len(both) >= 2 else "value should match only one schema, but matches none")
    elif v == "anyOf":
        msg = "object matches none of the required"
    elif v == "dependencies":
        msg = _dependency_message(val, inst) or str(err.message)
    elif v == "not":
        msg = "value wasn't supposed to match schema"
    elif v == "const":
        msg = "failed to check const value"
    elif v == "format" and val in ("ipv4", "ipv6", "email"):
        msg = f"expect valid {val} address but got: {inst}"
    else:
        msg = str(err.message)
    return _wrap_schema_path(err, msg)


def _wrap_schema_path(err: Any, msg: str) -> str:
    """Prefix ``msg`` with lua-jsonschema's nesting, walking the schema path of ``err``
    alongside its instance path (each of properties / patternProperties /
    additionalProperties / items consumes one instance path element)."""
    tokens = list(err.absolute_schema_path)
    path = list(err.absolute_path)
    prefixes: list[str] = []
    i = j = 0
    last = len(tokens) - 1          # the failing keyword itself
    while i < last:
        t, nxt = tokens[i], tokens[i + 1]
        here = path[j] if j < len(path) else "?"
        if t == "properties":
            prefixes.append(f'property "{nxt}" validation failed: ')
            i, j = i + 2, j + 1
        elif t == "patternProperties":
            prefixes.append(f'failed to validate {here} (matching "{nxt}"): ')
            i, j = i + 2, j + 1
        elif t == "additionalProperties":
            prefixes.append(f"failed to validate additional property {here}: ")
            i, j = i + 1, j + 1
        elif t == "items":
            idx = nxt if isinstance(nxt, int) else here
            prefixes.append(f"failed to validate item {idx + 1 if isinstance(idx, int) else idx}: ")
            i, j = i + (2 if isinstance(nxt, int) else 1), j + 1
        elif t == "additionalItems":
            prefixes.append(f"failed to validate additional item {here + 1 if isinstance(here, int) else here}: ")
            i, j = i + 1, j + 1
        elif t == "allOf" and isinstance(nxt, int):
            prefixes.append(f"allOf {nxt + 1} failed: ")
            i += 2
        elif t == "dependencies":
            prefixes.append(f"failed to validate dependent schema for {nxt}: ")
            i += 2
        elif t in ("then", "else"):   # jsonschema files if/then errors under "then"/"else"
            return "".join(prefixes) + f"{t} clause did not match"
        else:   # anyOf/oneOf branch indexes (best_match digs into them), $ref...
            i += 1
    if not tokens:   # an error built by hand: nest by the instance path alone
        for part in reversed(path):
            msg = f'property "{part}" validation failed: {msg}' if isinstance(part, str) else \
                f"failed to validate item {part + 1}: {msg}"
        return msg
    return "".join(prefixes) + msg


def _matching_branches(branches: Any, inst: Any) -> list[int]:
    import jsonschema

    if not isinstance(branches, list):
        return []
    return [i for i, b in enumerate(branches) if jsonschema.Draft7Validator(b).is_valid(inst)]


def _dependency_message(deps: Any, inst: Any) -> str | None:
    if not isinstance(deps, Mapping) or not isinstance(inst, dict):
        return None
    for prop, need in deps.items():
        if prop in inst and isinstance(need, list):
            for d in need:
                if d not in inst:
                    return f'property "{d}" is required when {prop} is set'
    return None


def _check_contract(module: ModuleType, source: str) -> Plugin:
    """The module as a Plugin, or PluginError naming what breaks the contract."""
    name = getattr(module, "NAME", None)
    where = module.__name__ if source == "builtin" else source
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin module {where} has no NAME (a non-empty string)")
    prio = getattr(module, "PRIORITY", None)
    if not isinstance(prio, int) or isinstance(prio, bool):
        raise PluginError(f"plugin {name} ({where}): PRIORITY must be an integer")
    # non-callable attributes with a phase's name (a ``log`` logger) are not hooks
    hooks = [ph for ph in PHASES if callable(getattr(module, ph, None))]
    for ph in hooks:
        if _arity(getattr(module, ph)) != 2:
            raise PluginError(f"plugin {name} ({where}): {ph} must take (conf, ctx)")
    for ph in ("header_filter", "body_filter"):
        if inspect.iscoroutinefunction(getattr(module, ph, None)):
            raise PluginError(f"plugin {name} ({where}): {ph} cannot be async (the response is being written)")
    schema = getattr(module, "SCHEMA", {"type": "object"})
    for attr in ("SCHEMA", "CONSUMER_SCHEMA", "METADATA_SCHEMA"):
        sch = getattr(module, attr, None)
        if sch is None:
            continue
        if not isinstance(sch, Mapping):
            raise PluginError(f"plugin {name} ({where}): {attr} must be a JSON schema object")
        if source == "builtin":
            continue   # ours, checked by tests/unit/plugins: a worker without plugin confs never loads jsonschema
        import jsonschema  # here, not at import

        try:
            jsonschema.Draft7Validator.check_schema(sch)
        except jsonschema.SchemaError as e:
            raise PluginError(f"plugin {name} ({where}): invalid {attr}: {e.message}") from e
    ptype = getattr(module, "TYPE", None)
    if ptype not in (None, "auth"):
        raise PluginError(f"plugin {name} ({where}): TYPE must be \"auth\" or absent")
    policy = getattr(module, "RUN_POLICY", None)
    if policy not in (None, "prefer_route"):
        raise PluginError(f"plugin {name} ({where}): RUN_POLICY must be \"prefer_route\" or absent")
    return Plugin(name=name, priority=prio, version=str(getattr(module, "VERSION", "0.1")), schema=schema,
                  module=module, consumer_schema=getattr(module, "CONSUMER_SCHEMA", None),
                  metadata_schema=getattr(module, "METADATA_SCHEMA", None), type=ptype, run_policy=policy,
                  source=source)
