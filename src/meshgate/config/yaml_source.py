"""Standalone configuration: parsing and validating ``apisix.yaml`` (pure, no I/O).

Rules (apisix-semantics.md 6.3, CONTRACT.md "Node config"):

* the text must end with ``#END`` (regex ``#END\\s*$``), the mark that a writer finished
  the file; without it the whole file is ignored (the previous config keeps serving);
* ``${{VAR}}`` and ``${{VAR:=default}}`` are substituted in the text before YAML parsing;
  a variable that is unset and has no default fails the whole file.  Whole-line comments
  are left alone, so a commented-out line never needs its variables.  Values are inserted
  verbatim, so they take YAML types (``port: ${{PORT}}`` is an integer) and a value
  containing YAML syntax changes the document: the environment is trusted like the file;
* top-level keys are the resource kinds (``routes``, ``upstreams``, ...), ``plugins``
  (the plugin list, overriding config.yaml) and the API-driven ``<kind>_conf_version``
  counters; anything else is reported as an error, and the rest of the file still applies;
* every item is validated alone (:func:`meshgate.model.validate_item`): a bad item is
  reported with kind, id and a pointer from the document root (``/routes/3/upstream/nodes``)
  and left out, the others are kept;
* ids are normalized to strings.  Items without an id (they cannot be referenced) are keyed
  ``<kind>#<n>`` with n the 1-based position, as APISIX standalone does; the key is not
  written into the value, so a document read back and pushed again keeps its shape.
  Consumers are keyed by ``username``, plugin metadata by ``id`` (the plugin name).  A
  consumer's credential is an item of ``consumers`` with no ``username`` and an ``id`` of the
  form ``<username>/credentials/<id>`` (APISIX stores it under that key, apisix/consumer.lua);
  it is keyed by that id.  The first item with an id owns it: later items with the same id
  are rejected (:class:`DuplicateItemError`).

Fatal problems (missing ``#END``, unset variable, YAML syntax, a top level that is not a
mapping) raise :class:`ConfigError`; everything else is collected in
:attr:`ParsedConfig.errors`.  The same validation serves the Admin API's
``PUT /apisix/admin/configs`` through :func:`parse_config_document`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from jsonschema import Draft7Validator

from ..errors import ConfigError
from ..model.describe import short_value as _short
from ..model.describe import type_name as _type
from ..model import KIND_NAMES, KINDS
from ..model.schemas import PLUGINS_LIST_SCHEMA
from ..model.validate import credential_owner, json_pointer, normalize_id, validate_item

__all__ = [
    "ParsedConfig",
    "DuplicateItemError",
    "parse_apisix_yaml",
    "parse_config_document",
    "substitute_env_vars",
    "load_yaml",
    "END_FLAG",
]

END_FLAG = re.compile(r"#END\s*\Z")

# ${{VAR}} / ${{ VAR }} / ${{VAR:=default}}; the default is trimmed (as APISIX).
_ENV_REF = re.compile(r"\$\{\{\s*([A-Za-z0-9_]+)\s*(?::=(.*?))?\s*\}\}")

# Limits on what a document may expand to (YAML aliases can make a small file huge).
_MAX_NODES = 1_000_000
_MAX_DEPTH = 128

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]
    """Safe loader that keeps JSON's data model: no timestamps (``2024-01-01`` stays a
    string; a ``date`` object would fail every string field), and a bare ``=`` is a string
    (PyYAML cannot construct its ``!!value`` tag)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


class DuplicateItemError(ConfigError):
    """An item whose key an earlier item of the same kind already owns; ``field`` is the
    field holding the key (``id``, or ``username`` for consumers)."""

    def __init__(self, pointer: str, message: str, *, kind: str, id: str, field: str) -> None:
        super().__init__(pointer, message, kind=kind, id=id)
        self.field = field


@dataclass(slots=True)
class ParsedConfig:
    """The outcome of parsing one standalone document.

    ``items`` has every kind of :data:`KIND_NAMES` (empty when absent), in that order; each
    maps id -> value in document order.  ``errors`` lists the rejected items and bad keys.
    ``plugins`` is the document's ``plugins`` list (``[{name, stream?}]``) or ``None`` when
    absent or invalid.  ``conf_versions`` holds ``<kind>_conf_version`` counters by kind.
    ``positions`` gives, per kind, each accepted item's index in the document's list.
    """

    items: dict[str, dict[str, dict[str, Any]]]
    errors: list[ConfigError] = field(default_factory=list)
    plugins: list[dict[str, Any]] | None = None
    conf_versions: dict[str, int] = field(default_factory=dict)
    source: str = "apisix.yaml"
    positions: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def count(self) -> int:
        return sum(len(v) for v in self.items.values())


# --- text level ---------------------------------------------------------------------------


def substitute_env_vars(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${{VAR}}`` / ``${{VAR:=default}}`` in ``text``.

    Lines whose first non-blank character is ``#`` are not touched.  Raises
    :class:`ConfigError` naming every unset variable without a default and its line.
    """
    if "${{" not in text:
        return text
    missing: list[str] = []
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        if "${{" not in line or line.lstrip().startswith("#"):
            out.append(line)
            continue

        def repl(m: re.Match[str], lineno: int = lineno) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default.strip()
            missing.append(f"{name} (line {lineno})")
            return ""

        out.append(_ENV_REF.sub(repl, line))
    if missing:
        what = "variable " + missing[0] + " is" if len(missing) == 1 else "variables " + ", ".join(missing) + " are"
        raise ConfigError("/", f"environment {what} not set and has no default (use ${{{{NAME:=default}}}})")
    return "".join(out)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` (C loader when available) with errors as :class:`ConfigError`
    giving line and column (1-based)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = e.problem or e.context or "syntax error"
        if e.context and e.problem:
            problem = f"{e.problem} ({e.context})"
        raise ConfigError("/", f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError("/", f"invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError("/", "invalid YAML: nested too deeply") from None


# --- document level -----------------------------------------------------------------------


def parse_apisix_yaml(text: str, *, env: Mapping[str, str], source: str = "apisix.yaml") -> ParsedConfig:
    """Parse and validate the text of an ``apisix.yaml``; see the module docstring."""
    if not END_FLAG.search(text):
        raise ConfigError(
            "/",
            "missing valid end flag #END: the file must end with a line '#END' "
            "(write it to a temporary file, then rename it into place)",
        )
    text = substitute_env_vars(text, env)
    data = load_yaml(text)
    if data is None:  # only comments: an empty configuration
        data = {}
    return _parse(data, source=source)


def parse_config_document(data: Mapping[str, Any], *, source: str) -> ParsedConfig:
    """Validate an already-parsed document (Admin API ``PUT /apisix/admin/configs``).

    The input is not modified and not aliased: accepted values are fresh copies.
    """
    return _parse(data, source=source)


def _parse(data: Any, *, source: str) -> ParsedConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("/", f"expected a mapping of resource kinds at top level (routes:, upstreams:, ...), got {_type(data)}")
    doc = _jsonify(data)
    parsed = ParsedConfig(items={k: {} for k in KIND_NAMES}, source=source)
    for key, val in doc.items():
        if key in KINDS:
            _parse_kind(key, val, parsed)
        elif key == "plugins":
            _parse_plugins(val, parsed)
        elif key.endswith("_conf_version") and key[: -len("_conf_version")] in KINDS:
            if isinstance(val, int) and not isinstance(val, bool) and val >= 0:
                parsed.conf_versions[key[: -len("_conf_version")]] = val
            else:
                parsed.errors.append(ConfigError(f"/{_esc(key)}", f"expected integer >= 0, got {_short(val)}"))
        else:
            parsed.errors.append(
                ConfigError(
                    f"/{_esc(key)}",
                    "unknown top-level key; expected one of " + ", ".join(KIND_NAMES) + ", plugins",
                )
            )
    return parsed


_ID_REQUIRED_IN_FILE = {"plugin_metadata": "the plugin name", "secrets": "<manager>/<id>"}


def _parse_kind(kind: str, val: Any, parsed: ParsedConfig) -> None:
    if val is None:
        return
    if not isinstance(val, list):
        parsed.errors.append(ConfigError(f"/{kind}", f"expected a list of items, got {_type(val)}", kind=kind))
        return
    table = parsed.items[kind]
    positions = parsed.positions.setdefault(kind, {})
    owner: dict[str, int] = {}
    for i, item in enumerate(val):
        base = f"/{kind}/{i}"
        if not isinstance(item, dict):
            parsed.errors.append(ConfigError(base, f"expected object, got {_type(item)}", kind=kind))
            continue

        key_field = KINDS[kind].key_field
        cred_id = item.get("id")
        if item.get(key_field) is None and isinstance(cred_id, str) and credential_owner(kind, cred_id) is not None:
            key_field = "id"  # a consumer's credential: keyed <username>/credentials/<id>
        raw_id = item.get(key_field)
        item_id: str | None
        generated = False
        if raw_id is None:
            if kind in _ID_REQUIRED_IN_FILE:
                parsed.errors.append(
                    ConfigError(f"{base}/{key_field}", f"required field is missing ({_ID_REQUIRED_IN_FILE[kind]})", kind=kind)
                )
                continue
            if key_field == "id":
                item_id, generated = f"{kind}#{i + 1}", True
            else:
                item_id = None  # consumer without username: validate_item reports it
        else:
            try:
                item_id = normalize_id(raw_id)
            except TypeError:
                item_id = None  # validate_item reports the bad id

        if item_id is not None:
            if item_id in owner:
                parsed.errors.append(
                    DuplicateItemError(
                        f"{base}/{key_field}",
                        f"duplicate {key_field} {_short(item_id)}: already used by /{kind}/{owner[item_id]}; item ignored",
                        kind=kind,
                        id=item_id,
                        field=key_field,
                    )
                )
                continue
            owner[item_id] = i

        errors = validate_item(kind, item, id=None if generated else item_id)
        if errors:
            parsed.errors.extend(
                ConfigError(base + e.pointer, e.message, kind=kind, id=item_id) for e in errors
            )
            continue
        assert item_id is not None  # a valid item has its key field
        if key_field == "id" and not generated:
            item["id"] = item_id  # stored ids are strings, as APISIX standalone stores them
        table[item_id] = item
        positions[item_id] = i


_PLUGINS_LIST = Draft7Validator(PLUGINS_LIST_SCHEMA)


def _parse_plugins(val: Any, parsed: ParsedConfig) -> None:
    if val is None:
        return
    bad = False
    for err in _PLUGINS_LIST.iter_errors(val):
        bad = True
        ptr = "/plugins" + json_pointer(err.absolute_path)
        if err.validator == "required":
            msg = "required field is missing: each plugin entry needs a name"
        elif err.validator == "additionalProperties":
            msg = "unknown field; allowed fields: name, stream"
        elif err.validator == "type" and not err.absolute_path:
            msg = f"expected a list of {{name, stream}} entries, got {_type(val)}"
        elif err.validator == "type" and len(err.absolute_path) == 1:
            msg = f"expected object {{name, stream}}, got {_short(err.instance)}"
        else:
            msg = f"expected {'boolean' if err.absolute_path[-1] == 'stream' else 'non-empty string'}, got {_short(err.instance)}"
        parsed.errors.append(ConfigError(ptr, msg))
    if not bad:
        parsed.plugins = val


# --- helpers ------------------------------------------------------------------------------


def _jsonify(data: Any) -> Any:
    """Deep copy into JSON's data model: string keys, lists, plain scalars.

    Aliased YAML nodes become independent copies; the copy is bounded in size and depth.
    """
    budget = [_MAX_NODES]

    def walk(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError("/", f"document too large (more than {_MAX_NODES} values after expanding aliases)")
        if depth > _MAX_DEPTH:
            raise ConfigError("/", f"document nested deeper than {_MAX_DEPTH} levels")
        if isinstance(v, Mapping):
            return {_key(k): walk(x, depth + 1) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x, depth + 1) for x in v]
        if v is None or isinstance(v, (str, bool, int, float)):
            return v
        return str(v)

    return walk(data, 0)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    return str(k)


def _esc(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
