"""An APISIX full configuration document, checked as APISIX checks it.

A full configuration is ``{"routes": [...], "routes_conf_version": N, "consumers": [...], ...}``:
one list per kind (and the ``plugins`` list), each with an optional ``<key>_conf_version``.
Three endpoints take one, and all three validate it here, with :func:`check_document`:

* ``PUT /apisix/admin/configs`` (API-driven standalone, :class:`.standalone.StandaloneAPI`):
  the first problem is the answer, nothing is applied;
* ``POST /apisix/admin/configs/validate`` in that mode, and in etcd mode
  (:class:`.admin_api.AdminAPI`): every problem is listed.

Behaviour matched: APISIX 3.18 ``apisix/admin/config_validate.lua`` ``validate_configuration``
(used by ``apisix/admin/standalone.lua`` for PUT with ``collect_all_errors = false``):

* per key, ``<key>_conf_version`` when present must be a number (``routes_conf_version must
  be a number``; the validate endpoint adds ``, got <Lua type>``);
* every item goes through the checker of its kind, the Admin API's own
  (:func:`.checks.check_item`, APISIX's ``apisix/admin/<resource>.lua`` ``check_conf``) with
  ``skip_references_check``: references (``upstream_id`` ...) need not exist, the request
  fails at run time;
* a ``consumers`` item whose id contains ``/credentials/`` is a credential
  (``<username>/credentials/<id>``) and goes through the credential checker; a ``secrets``
  item's id is ``<manager>/<id>`` (``invalid secret id: x`` otherwise); a ``plugin_metadata``
  item's id is the plugin name;
* after its check, an item whose id (consumers: ``id or username``) was seen before in the
  same key is a duplicate (``found duplicate id r1 in routes``, ``found duplicate username
  jack in consumers``, ``found duplicate credential id ... in consumers``);
* the problem list is ``{resource_type, resource_id, index, error}`` (the kind, ``id or
  username or ""``, the 0-based position), ``{resource_type, error}`` for a conf_version.

APISIX walks its keys in hash order; here they go in :data:`CONFIG_KEYS` order, items in
document order, an item's check before its duplicate check, so the first problem is stable.

What Meshgate adds, in the same shape:

* in API-driven standalone mode, ``modifiedIndex`` is the push protocol's (standalone.lua
  ``patch_schema`` adds ``modifiedIndex: {type: integer}`` to the resource schemas in that
  mode only): it must be an integer and is taken out of the item before the checks;
* a key that is not a list is refused (APISIX fails on it with a Lua error; an empty object,
  lua-cjson's empty table, reads as no items); the ``plugins`` list's entries are
  ``{name, stream}``;
* ids are compared as the store keys them (``1`` and ``"1"`` are one id);
* a document that passes is turned into the store's items by
  :func:`meshgate.config.parse_config_document` (ids, copies, positions); whatever that still
  refuses (it applies the same item validator, so nothing in practice) is reported in the
  same shape rather than applied half-way.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import DuplicateItemError, ParsedConfig, parse_config_document
from ..model import KIND_NAMES, KINDS
from ..model.describe import lua_type
from ..model.schemas import PLUGINS_LIST_SCHEMA
from ..plugins import PluginRegistry
from .checks import CheckInput, check_item, model_message, schema_error

__all__ = ["CONFIG_KEYS", "VERSION_SUFFIX", "Number", "Problem", "CheckedDocument", "check_document",
           "validation_answer", "is_number", "lua_tostring"]

# Every key of the document: the kinds plus the ``plugins`` list (APISIX: the etcd
# directories of apisix/constants.lua, HTTP and stream, each with its ``<key>_conf_version``).
CONFIG_KEYS: tuple[str, ...] = (*KIND_NAMES, "plugins")
VERSION_SUFFIX = "_conf_version"

# what lua-cjson decodes a JSON null to: type() says userdata
_CJSON_NULL = "userdata"
_CREDENTIALS = "/credentials/"
_MODIFIED_INDEX = {"properties": {"modifiedIndex": {"type": "integer"}}}

Number = int | float


@dataclass(slots=True)
class Problem:
    """One problem: ``error`` is what the validate endpoint lists, ``message`` what PUT answers."""

    resource_type: str | None
    error: str
    index: int | None = None
    resource_id: Any = None
    short: str | None = None      # PUT's text, where it is shorter (conf_version)

    @property
    def message(self) -> str:
        return self.short if self.short is not None else self.error

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.resource_type is not None:
            out["resource_type"] = self.resource_type
        if self.index is not None:
            out["resource_id"] = self.resource_id if self.resource_id is not None else ""
            out["index"] = self.index
        out["error"] = self.error
        return out


@dataclass(slots=True)
class CheckedDocument:
    problems: list[Problem] = field(default_factory=list)
    versions: dict[str, Number] = field(default_factory=dict)           # <key>_conf_version given
    modified: dict[tuple[str, int], int] = field(default_factory=dict)  # (kind, index) -> modifiedIndex
    parsed: ParsedConfig | None = None                                  # the store's items, when valid

    @property
    def first_error(self) -> str | None:
        """What PUT answers (``validate_configuration(body, false)``), None when valid."""
        return self.problems[0].message if self.problems else None


def validation_answer(checked: CheckedDocument) -> tuple[int, dict[str, Any]]:
    """The validate endpoint's (status, body) (config_validate.lua ``validate``)."""
    if checked.problems:
        return 400, {"error_msg": "Configuration validation failed", "errors": [p.entry() for p in checked.problems]}
    return 200, {}


async def check_document(doc: Any, plugins: PluginRegistry, *, standalone: bool,
                         source: str = "/apisix/admin/configs") -> CheckedDocument:
    """Every problem of ``doc``, in key order then item order.

    ``standalone``: API-driven standalone mode (items may carry ``modifiedIndex``).  When
    there is no problem, ``parsed`` holds the items as the store takes them."""
    out = CheckedDocument()
    if not isinstance(doc, Mapping):
        out.problems.append(Problem(None, "invalid configuration: wrong type: expected object, got "
                                          + lua_type(doc, null=_CJSON_NULL)))
        return out
    kept: dict[str, list[Any]] = {}
    for key in CONFIG_KEYS:
        vkey = key + VERSION_SUFFIX
        if vkey in doc:
            v = doc[vkey]
            if is_number(v):
                out.versions[key] = int(v) if isinstance(v, float) and v.is_integer() else v
            else:
                out.problems.append(Problem(key, f"{vkey} must be a number, got {lua_type(v, null=_CJSON_NULL)}",
                                            short=f"{vkey} must be a number"))
        items = doc.get(key)
        if items is None or (isinstance(items, Mapping) and not items):
            continue
        if not isinstance(items, list):
            out.problems.append(Problem(key, f"invalid configuration: wrong type: expected array, got "
                                             f"{lua_type(items)}"))
            continue
        kept[key] = await _check_items(key, items, plugins, standalone, out)
    if not out.problems:
        _convert(doc, kept, out, source)
    return out


async def _check_items(key: str, items: list[Any], plugins: PluginRegistry, standalone: bool,
                       out: CheckedDocument) -> list[Any]:
    """Check the items of one key into ``out``; the items as the store is to take them."""
    seen: set[str] = set()
    kept: list[Any] = []
    for index, item in enumerate(items):
        if index and index % 64 == 0:
            # thousands of new items take seconds to check: let the process's other work
            # (workers' messages, health checks, metrics) run in between
            await asyncio.sleep(0)
        rid = _raw_id(item)
        err: str | None = None
        if standalone and key in KINDS and isinstance(item, Mapping) and "modifiedIndex" in item:
            m = item["modifiedIndex"]
            bad = schema_error(_MODIFIED_INDEX, {"modifiedIndex": m})
            if bad is None:
                out.modified[(key, index)] = int(m)
            else:
                err = "invalid configuration: " + bad
            item = {k: v for k, v in item.items() if k != "modifiedIndex"}
        kept.append(item)
        if err is None:
            err = await _item_error(key, item, plugins)
        if err is not None:
            out.problems.append(Problem(key, err, index=index, resource_id=rid))
        dup = _duplicate(key, item, seen)
        if dup is not None:
            out.problems.append(Problem(key, dup, index=index, resource_id=rid))
    return kept


# Controllers push the whole state again and again, mostly unchanged: an item already found
# valid (same kind, same JSON, same plugins loaded) is not checked again.
_VALID: dict[tuple[str, int, str], None] = {}
_VALID_MAX = 65536


async def _item_error(key: str, item: Any, plugins: PluginRegistry) -> str | None:
    """config_validate.lua ``check_conf``: the item through its kind's checker."""
    try:
        memo: tuple[str, int, str] | None = (key, plugins.generation,
                                             json.dumps(item, sort_keys=True, separators=(",", ":"),
                                                        allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        memo = None
    if memo is not None and memo in _VALID:
        return None
    err = await _check_conf(key, item, plugins)
    if err is None and memo is not None:
        if len(_VALID) >= _VALID_MAX:
            _VALID.pop(next(iter(_VALID)))
        _VALID[memo] = None
    return err


async def _check_conf(key: str, item: Any, plugins: PluginRegistry) -> str | None:
    if key == "plugins":
        err = schema_error(PLUGINS_LIST_SCHEMA["items"], item)
        return None if err is None else "invalid configuration: " + err
    if not isinstance(item, dict):
        return "invalid configuration: wrong type: expected object, got " + lua_type(item, null=_CJSON_NULL)
    conf = copy.deepcopy(item)   # a checker must not change what is applied (APISIX: tbl_deepcopy)
    rid = conf.get("id")
    str_id = lua_tostring(rid)
    res, secret_type, consumer = key, None, None
    if key == "consumers" and _CREDENTIALS in str_id:
        res, consumer = "credentials", str_id.partition(_CREDENTIALS)[0]
    elif key == "secrets":
        if "/" not in str_id:
            return f"invalid secret id: {str_id}"
        secret_type = str_id.partition("/")[0]
    ci = CheckInput(res, None if rid is None else str_id, conf, need_id=False, secret_type=secret_type,
                    consumer=consumer, skip_refs=True)
    return await check_item(ci, plugins, _NO_REFS)


def _duplicate(key: str, item: Any, seen: set[str]) -> str | None:
    """config_validate.lua ``check_duplicate``: the text when the item's id was seen before."""
    if not isinstance(item, Mapping):
        return None
    if key == "consumers":
        has_id = _truthy(item.get("id"))
        ident, what = (item.get("id"), "credential id") if has_id else (item.get("username"), "username")
    else:
        ident, what = item.get("id"), "id"
    if not _truthy(ident):
        return None
    text = lua_tostring(ident)
    if text in seen:
        return f"found duplicate {what} {text} in {key}"
    seen.add(text)
    return None


def _convert(doc: Mapping[str, Any], kept: Mapping[str, list[Any]], out: CheckedDocument, source: str) -> None:
    """The checked items as the store takes them (``out.parsed``); a refusal left becomes a problem."""
    parsed = parse_config_document({k: v for k, v in kept.items() if k in KINDS}, source=source)
    for err in parsed.errors:
        parts = err.pointer.split("/")
        key = parts[1] if len(parts) > 1 else ""
        index = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
        raw = doc.get(key)
        item = raw[index] if isinstance(raw, list) and index is not None and index < len(raw) else None
        if isinstance(err, DuplicateItemError):
            what = "credential id" if err.kind == "consumers" and err.field == "id" else err.field
            text = f"found duplicate {what} {err.id} in {err.kind}"
        elif index is not None:
            text = model_message(kept[key][index], "/" + "/".join(parts[3:]) if len(parts) > 3 else "", err.message)
        else:
            text = model_message(doc, err.pointer, err.message)
        out.problems.append(Problem(key or None, text, index=index, resource_id=_raw_id(item)))
    if not out.problems:
        out.parsed = parsed


# --- helpers ----------------------------------------------------------------------------------


class _NoRefs:
    """References are not looked up (``skip_references_check``): nothing is stored."""

    async def fetch(self, path: str) -> Any | None:
        return None

    async def values(self, path: str) -> list[tuple[str, Any]]:
        return []


_NO_REFS = _NoRefs()


def is_number(v: Any) -> bool:
    """A JSON number (Lua ``type(v) == "number"``); NaN and infinities are not."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and not math.isfinite(v))


def _truthy(v: Any) -> bool:
    """Lua truthiness of a decoded value (only nil and false are false)."""
    return v is not None and v is not False


def lua_tostring(v: Any) -> str:
    """``tostring(v)`` as LuaJIT prints an id or a number (``1``, not ``1.0``; ``%.14g``;
    ``nil`` when absent)."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else format(v, ".14g")
    if isinstance(v, (Mapping, list)):
        return "table"
    return str(v)


def _raw_id(item: Any) -> Any:
    """``item.id or item.username or ""`` (config_validate.lua)."""
    if not isinstance(item, Mapping):
        return ""
    for k in ("id", "username"):
        if _truthy(item.get(k)):
            return item[k]
    return ""
