"""API-driven standalone mode: ``/apisix/admin/configs`` (``deployment.role: traditional`` with
``config_provider: yaml``), the full-state push used by apisix-ingress-controller and ADC.

Behaviour matched (APISIX 3.18, ``apisix/admin/standalone.lua``, ``apisix/admin/config_validate.lua``,
``apisix/core/config_yaml.lua``; tests ``t/admin/standalone.spec.ts``, ``t/admin/standalone.t``):

``GET /apisix/admin/configs``
    The last accepted document as it was pushed, plus ``<key>_conf_version`` for every key and
    the ``X-Last-Modified`` / ``X-Digest`` metadata (in the body, as APISIX keeps them in its
    shared dict, and as response headers).  Before the first push: every counter at 0 and no
    metadata.  YAML when ``Accept`` starts with ``application/yaml``, JSON otherwise.
``HEAD /apisix/admin/configs``
    200 with the two metadata headers only.
``PUT /apisix/admin/configs``
    ``X-Digest`` is required (400 ``missing digest header``); the body is YAML when
    ``Content-Type`` starts with ``application/yaml``, JSON otherwise.  A digest equal to the
    last accepted one answers 204 without looking further.  Then the whole document is validated
    and the first problem answers 400 ``{"error_msg": ...}``: nothing is applied.  Per key,
    ``<key>_conf_version`` greater than the current one rebuilds that kind from the document,
    equal keeps the kind as it is (whatever the document says), lower is refused; absent means
    current + 1.  Within a rebuilt kind an item whose ``modifiedIndex`` equals the one already
    served keeps its old value (config_yaml.lua ``sync_data``).  Answer: 202 with the metadata
    headers.
``POST /apisix/admin/configs/validate``
    The same validation, every problem listed: 400 ``{"error_msg": "Configuration validation
    failed", "errors": [{resource_type, resource_id, index, error}]}``, or 200 ``{}``.
Anything else
    nginx's 404 page (APISIX's admin router has no other route in this mode).

Validation is Meshgate's own, the same the rest of Meshgate applies: the document is read by
:func:`meshgate.config.parse_config_document` (``validate_item`` per item, ids, duplicates), every
plugin conf goes through :meth:`PluginRegistry.validate` as a worker compiles it, route ``vars``
compile.  Texts APISIX fixes (``unknown plugin [x]``, ``found duplicate id r1 in routes``, the
conf_version messages...) are APISIX's; schema problems read ``invalid configuration: <JSON
pointer in the document>: <what was expected>``.  Dangling references (``upstream_id`` ...) are
accepted and logged: APISIX validates pushes with ``skip_references_check`` (the request fails at
run time), and one missing object must not block the rest of a controller's state.

The counters, the document and the digest live as long as the process, shared by every
``StandaloneAPI`` built on the same :class:`ConfigStore` (APISIX keeps them in the
``standalone-config`` shared dict); the store's snapshot is what the workers serve.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config import ConfigStore, DuplicateItemError, ParsedConfig, load_yaml, parse_config_document
from ..errors import ConfigError
from ..model import KIND_NAMES, KINDS, check_references, json_pointer, short_value, type_name
from ..model.validate import credential_owner
from ..plugins import PluginRegistry
from ..router import compile_expr
from .httpserver import ApiRequest, Response, json_response

__all__ = ["StandaloneAPI"]

log = logging.getLogger("meshgate.admin")

# Every key of the document: the kinds plus the ``plugins`` list (APISIX: the etcd
# directories of apisix/constants.lua, each with its ``<key>_conf_version``).
CONFIG_KEYS: tuple[str, ...] = (*KIND_NAMES, "plugins")
VERSION_SUFFIX = "_conf_version"
# Not the standard Last-Modified: APISIX avoids it so client caches are not affected.
LAST_MODIFIED = "X-Last-Modified"
DIGEST = "X-Digest"
MAX_VALIDATE_BODY = 1572864  # config_validate.lua: 1.5 MiB, as other Admin API handlers

_NOT_FOUND_PAGE = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
                   b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>meshgate</center>\r\n"
                   b"</body>\r\n</html>\r\n")

Number = int | float


@dataclass(slots=True)
class _State:
    """What APISIX keeps in the ``standalone-config`` shared dict: the accepted document with
    its counters and metadata (None before the first push)."""

    config: dict[str, Any] | None = None

    def version(self, key: str) -> Number:
        v = self.config.get(key + VERSION_SUFFIX, 0) if self.config is not None else 0
        return v if _is_number(v) else 0


# One state per store, for the life of the process, whoever builds the handler.
_STATES: weakref.WeakKeyDictionary[ConfigStore, _State] = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class _Problem:
    """One validation problem; ``message`` is what PUT answers, ``detail`` (when set) what the
    validate endpoint lists."""

    resource_type: str | None
    message: str
    index: int | None = None
    resource_id: Any = None
    detail: str | None = None

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.resource_type is not None:
            out["resource_type"] = self.resource_type
        if self.index is not None:
            out["resource_id"] = self.resource_id if self.resource_id is not None else ""
            out["index"] = self.index
        out["error"] = self.detail if self.detail is not None else self.message
        return out


@dataclass(slots=True)
class _Checked:
    problems: list[_Problem] = field(default_factory=list)
    parsed: ParsedConfig | None = None
    versions: dict[str, Number] = field(default_factory=dict)        # <key>_conf_version given
    modified: dict[tuple[str, int], int] = field(default_factory=dict)  # (kind, index) -> modifiedIndex


class StandaloneAPI:
    """Handler of ``/apisix/admin/configs[/validate]``; authentication is the caller's."""

    def __init__(self, store: ConfigStore, plugins: PluginRegistry, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.plugins = plugins
        self._clock = clock
        state = _STATES.get(store)
        if state is None:
            state = _STATES[store] = _State()
        self._state = state

    # --- read-only views (Control API, tests) ----------------------------------------------

    @property
    def conf_versions(self) -> dict[str, Number]:
        return {key: self._state.version(key) for key in CONFIG_KEYS}

    @property
    def digest(self) -> str | None:
        cfg = self._state.config
        return None if cfg is None else cfg.get(DIGEST)

    # --- dispatch ----------------------------------------------------------------------------

    async def handle(self, req: ApiRequest, sub: str) -> Response:
        """``sub`` is the path after ``/apisix/admin/configs``: ``""`` or ``"/validate"``."""
        method = req.method.upper()
        if sub == "":
            if method == "GET":
                return self._get(req)
            if method == "HEAD":
                return 200, self._meta_headers(), b""
            if method == "PUT":
                return self._put(req)
        elif sub == "/validate" and method == "POST":
            return self._validate(req)
        # APISIX's admin router has no route for it: ngx.exit(404), nginx's page
        return 404, {"Content-Type": "text/html"}, _NOT_FOUND_PAGE

    # --- GET ---------------------------------------------------------------------------------

    def _meta_headers(self) -> dict[str, str]:
        cfg = self._state.config
        out: dict[str, str] = {}
        if cfg is not None:
            for name in (LAST_MODIFIED, DIGEST):
                if cfg.get(name) is not None:
                    out[name] = str(cfg[name])
        return out

    def _get(self, req: ApiRequest) -> Response:
        cfg = self._state.config
        if cfg is None:
            cfg = {key + VERSION_SUFFIX: 0 for key in CONFIG_KEYS}
        headers = self._meta_headers()
        if req.headers.get("accept", "application/json").startswith("application/yaml"):
            body = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, default_flow_style=False)
            return 200, {"Content-Type": "application/yaml", **headers}, body.encode()
        return 200, {"Content-Type": "application/json", **headers}, json.dumps(cfg, separators=(",", ":")).encode()

    # --- PUT ---------------------------------------------------------------------------------

    def _put(self, req: ApiRequest) -> Response:
        digest = req.headers.get("x-digest")
        if digest is None:
            return _error(400, "missing digest header")
        data, err = _decode(req)
        if err is not None:
            return _error(400, err)
        state = self._state
        if state.config is not None and state.config.get(DIGEST) == digest:
            # accepted, not modified: the client pushed this state already
            return 204, {}, b""
        if not isinstance(data, Mapping):
            return _error(400, f"invalid request body: expected an object at top level, got {type_name(data, json=True)}")
        checked = self._check(data)
        if checked.problems:
            first = checked.problems[0]
            log.warning("PUT /apisix/admin/configs refused: %s", first.message)
            return _error(400, first.message)
        assert checked.parsed is not None

        new_versions: dict[str, Number] = {}
        for key in CONFIG_KEYS:
            cur = state.version(key)
            given = checked.versions.get(key)
            if given is None:
                new_versions[key] = cur + 1
            elif given < cur:
                return _error(400, f"{key}{VERSION_SUFFIX} must be greater than or equal to ({_lua_num(cur)})")
            else:
                new_versions[key] = given

        old_cfg = state.config or {}
        snap = self.store.snapshot
        new_cfg: dict[str, Any] = {}
        items: dict[str, dict[str, Mapping[str, Any]]] = {}
        indexes: dict[tuple[str, str], tuple[int, int]] = {}
        for key in CONFIG_KEYS:
            version = new_versions[key]
            unchanged = version == state.version(key)
            pushed = old_cfg.get(key) if unchanged else data.get(key)
            if isinstance(pushed, list) and pushed:
                new_cfg[key] = _copy(pushed)
            new_cfg[key + VERSION_SUFFIX] = version
            if key not in KINDS:
                continue
            if unchanged:
                served = snap.items(key)
                items[key] = {id: res.value for id, res in served.items()}
                indexes.update({(key, id): (res.created_index, res.modified_index) for id, res in served.items()})
            else:
                items[key] = self._rebuild(key, checked, int(version), indexes)
        new_cfg[LAST_MODIFIED] = int(self._clock())
        new_cfg[DIGEST] = digest

        for ref in check_references(items):
            # APISIX: pushes are checked with skip_references_check; the request fails at run time
            log.warning("PUT /apisix/admin/configs: accepted with a dangling reference: %s", ref)
        new_snap = self.store.replace_all(items, indexes=indexes)
        state.config = new_cfg
        log.info("standalone config accepted (digest %s, %s)", digest,
                 f"snapshot version {new_snap.version}" if new_snap is not None else "nothing changed")
        return 202, self._meta_headers(), b""

    def _rebuild(self, kind: str, checked: _Checked, version: int,
                 indexes: dict[tuple[str, str], tuple[int, int]]) -> dict[str, Mapping[str, Any]]:
        """The new items of a rebuilt kind, with their (created, modified) indexes.

        ``modifiedIndex`` is the item's own or the kind's conf_version (config_yaml.lua);
        an item whose given ``modifiedIndex`` equals the served one keeps the served value.
        An item pushed again unchanged and without ``modifiedIndex`` keeps its Resource (and
        with it the workers' compiled state: balancers, health, counters).  Items already
        served keep their place, new ones follow in document order (APISIX's values array).
        """
        assert checked.parsed is not None
        served = self.store.snapshot.items(kind)
        positions = checked.parsed.positions.get(kind, {})
        new: dict[str, Mapping[str, Any]] = {}
        for id, value in checked.parsed.items[kind].items():
            given = checked.modified.get((kind, positions[id]))
            old = served.get(id)
            if old is not None and (old.modified_index == given if given is not None else old.value == value):
                new[id] = old.value
                indexes[(kind, id)] = (old.created_index, old.modified_index)
                continue
            mod = given if given is not None else version
            new[id] = value
            indexes[(kind, id)] = (old.created_index if old is not None else mod, mod)
        ordered = {id: new[id] for id in served if id in new}
        ordered.update((id, v) for id, v in new.items() if id not in ordered)
        return ordered

    # --- validate ----------------------------------------------------------------------------

    def _validate(self, req: ApiRequest) -> Response:
        if len(req.body) > MAX_VALIDATE_BODY:
            return _error(400, f"invalid request body: request size {len(req.body)} is greater than the "
                               f"maximum size {MAX_VALIDATE_BODY} allowed")
        data, err = _decode(req)
        if err is not None:
            return _error(400, err)
        if not isinstance(data, Mapping):
            return json_response(400, {"error_msg": "Configuration validation failed", "errors": [
                {"error": f"invalid configuration: expected an object at top level, got {type_name(data, json=True)}"}]})
        checked = self._check(data)
        if checked.problems:
            return json_response(400, {"error_msg": "Configuration validation failed",
                                       "errors": [p.entry() for p in checked.problems]})
        return json_response(200, {})

    # --- the checks --------------------------------------------------------------------------

    def _check(self, data: Mapping[str, Any]) -> _Checked:
        """Every problem of the document, in key order then item order."""
        out = _Checked()
        by_key: dict[str, list[_Problem]] = {key: [] for key in CONFIG_KEYS}
        version_problems: dict[str, _Problem] = {}
        doc: dict[str, Any] = {}
        for key in CONFIG_KEYS:
            vkey = key + VERSION_SUFFIX
            if vkey in data:
                v = data[vkey]
                if _is_number(v):
                    out.versions[key] = int(v) if isinstance(v, float) and v.is_integer() else v
                else:
                    version_problems[key] = _Problem(key, f"{vkey} must be a number",
                                                     detail=f"{vkey} must be a number, got {_lua_type(v)}")
            if key not in data:
                continue
            val = data[key]
            if key in KINDS and isinstance(val, list):
                # modifiedIndex is the push protocol's, not part of the object (APISIX adds it
                # to the resource schemas in standalone mode only)
                stripped: list[Any] = []
                for i, item in enumerate(val):
                    if isinstance(item, Mapping) and "modifiedIndex" in item:
                        m = item["modifiedIndex"]
                        if _is_integer(m):
                            out.modified[(key, i)] = int(m)
                        else:
                            by_key[key].append(_Problem(
                                key, f"invalid configuration: /{key}/{i}/modifiedIndex: expected integer, got "
                                     f"{short_value(m)}", index=i, resource_id=_raw_id(item)))
                        item = {k: v for k, v in item.items() if k != "modifiedIndex"}
                    stripped.append(item)
                val = stripped
            doc[key] = val

        try:
            parsed = parse_config_document(doc, source="PUT /apisix/admin/configs")
        except ConfigError as e:
            out.problems.append(_Problem(None, f"invalid configuration: {e.pointer}: {e.message}"))
            return out
        out.parsed = parsed

        for err in parsed.errors:
            where, index = _locate(err.pointer)
            raw = data.get(where) if where is not None else None
            item = raw[index] if isinstance(raw, list) and index is not None and index < len(raw) else None
            if isinstance(err, DuplicateItemError):
                what = "credential id" if err.kind == "consumers" and err.field == "id" else err.field
                text = f"found duplicate {what} {err.id} in {err.kind}"
            else:
                text = f"invalid configuration: {err.pointer}: {err.message}"
            by_key.setdefault(where or "", []).append(_Problem(where, text, index=index, resource_id=_raw_id(item)))

        for kind, table in parsed.items.items():
            positions = parsed.positions.get(kind, {})
            raw = data.get(kind)
            for id, value in table.items():
                i = positions[id]
                msg = self._check_item(kind, id, value, f"/{kind}/{i}")
                if msg is not None:
                    item = raw[i] if isinstance(raw, list) else None
                    by_key[kind].append(_Problem(kind, msg, index=i, resource_id=_raw_id(item)))

        for key in [*CONFIG_KEYS, *(k for k in by_key if k not in CONFIG_KEYS)]:
            if key in version_problems:
                out.problems.append(version_problems[key])
            out.problems.extend(sorted(by_key.get(key, []), key=lambda p: p.index if p.index is not None else -1))
        return out

    def _check_item(self, kind: str, id: str, value: Mapping[str, Any], base: str) -> str | None:
        """What APISIX's checkers add to the schema: plugin confs (as a worker compiles them)
        and route ``vars``; the first problem in APISIX's words, or None.  ``base`` is the
        item's pointer in the document."""
        if kind == "plugin_metadata":
            return self._check_metadata(id, value, base)
        if credential_owner(kind, id) is not None:
            return self._check_credential(id, value, base)
        if kind == "stream_routes":
            return None  # stream plugins are not Meshgate's (no stream proxy): nothing to check against
        plugins = value.get("plugins")
        if isinstance(plugins, Mapping):
            for name, conf in plugins.items():
                p = self.plugins.get(name)
                schema_type = "consumer" if kind == "consumers" and p is not None and p.type == "auth" else "route"
                msg = self._check_plugin(kind, id, name, conf, schema_type, base)
                if msg is not None:
                    # apisix/admin/consumers.lua words its plugin problems so
                    return f"invalid plugins configuration: {msg}" if kind == "consumers" else msg
        if kind == "routes" and value.get("vars") is not None:
            try:
                compile_expr(value["vars"], f"{base}/vars")
            except ConfigError as e:
                return f"failed to validate the 'vars' expression: {e.pointer}: {e.message}"
        return None

    def _check_plugin(self, kind: str, id: str, name: str, conf: Any, schema_type: str, base: str) -> str | None:
        # apisix/plugin.lua check_single_plugin_schema
        if not isinstance(conf, dict):
            return f"invalid plugin conf {json.dumps(conf)} for plugin [{name}]"
        if name not in self.plugins:
            return f"unknown plugin [{name}]"
        try:
            self.plugins.validate(name, conf, pointer=base + json_pointer(["plugins", name]), kind=kind, id=id,
                                  schema_type=schema_type)
        except ConfigError as e:
            if "/_meta/filter" in e.pointer:
                return f"failed to validate the 'vars' expression: {e.pointer}: {e.message}"
            prefix = f"failed to check the configuration of plugin {name} err: "
            if e.message.startswith(prefix):
                return e.message
            return f"{prefix}{e.pointer}: {e.message}"
        return None

    def _check_credential(self, id: str, value: Mapping[str, Any], base: str) -> str | None:
        # apisix/admin/credentials.lua: auth plugins only, with their consumer schema
        plugins = value.get("plugins")
        if not isinstance(plugins, Mapping):
            return None
        for name, conf in plugins.items():
            msg = self._check_plugin("consumers", id, name, conf, "consumer", base)
            if msg is not None:
                return f"invalid plugins configuration: {msg}"
        for name in plugins:
            p = self.plugins.get(name)
            if p is None or p.type != "auth":
                return "only supports auth type plugins in consumer credential"
        return None

    def _check_metadata(self, name: str, value: Mapping[str, Any], base: str) -> str | None:
        # apisix/admin/plugin_metadata.lua: the plugin must exist, the body passes its metadata_schema
        if name not in self.plugins:
            return "invalid plugin name"
        try:
            # the value as the worker checks it (proxy build_runtime)
            self.plugins.validate(name, dict(value), pointer=base, kind="plugin_metadata", id=name,
                                  schema_type="metadata")
        except ConfigError as e:
            prefix = f"failed to check the configuration of plugin {name} err: "
            return "invalid configuration: " + (e.message[len(prefix):] if e.message.startswith(prefix)
                                                else f"{e.pointer}: {e.message}")
        return None


# --- helpers ----------------------------------------------------------------------------------


def _error(status: int, msg: str) -> Response:
    return json_response(status, {"error_msg": msg})


def _decode(req: ApiRequest) -> tuple[Any, str | None]:
    """The body as data, or the ``error_msg`` to answer (standalone.lua / config_validate.lua)."""
    if not req.body:
        return None, "invalid request body: empty request body"
    if req.headers.get("content-type", "application/json").startswith("application/yaml"):
        try:
            text = req.body.decode("utf-8")
            data = load_yaml(text)
        except UnicodeDecodeError as e:
            return None, f"invalid request body: invalid yaml request body: not UTF-8 ({e.reason} at byte {e.start})"
        except ConfigError as e:
            return None, f"invalid request body: invalid yaml request body: {e.message}"
        if not isinstance(data, (Mapping, list)):
            return None, "invalid request body: invalid yaml request body"
        return data, None
    try:
        return json.loads(req.body), None
    except UnicodeDecodeError as e:
        return None, f"invalid request body: not UTF-8 ({e.reason} at byte {e.start})"
    except (ValueError, RecursionError) as e:
        return None, f"invalid request body: {e}"


def _copy(v: Any) -> Any:
    """A JSON-shaped deep copy (what APISIX's shared dict round trip keeps)."""
    return json.loads(json.dumps(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and not math.isfinite(v))


def _is_integer(v: Any) -> bool:
    return _is_number(v) and (isinstance(v, int) or float(v).is_integer())


def _lua_type(v: Any) -> str:
    """Lua's ``type()`` of a decoded JSON value (cjson's null is a userdata)."""
    if v is None:
        return "userdata"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "table"


def _lua_num(v: Number) -> str:
    """A number as Lua's ``..`` prints it (LuaJIT: ``%.14g``)."""
    if isinstance(v, int) or v.is_integer():
        return str(int(v))
    return format(v, ".14g")


def _raw_id(item: Any) -> Any:
    """``item.id or item.username or ""`` (config_validate.lua)."""
    if not isinstance(item, Mapping):
        return ""
    for k in ("id", "username"):
        if item.get(k) not in (None, False):
            return item[k]
    return ""


def _locate(pointer: str) -> tuple[str | None, int | None]:
    """(key, item index) of a document pointer ``/routes/3/...``."""
    parts = pointer.split("/")
    key = parts[1].replace("~1", "/").replace("~0", "~") if len(parts) > 1 and parts[1] else None
    index = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return key, index
