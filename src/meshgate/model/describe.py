"""How error messages name a value and its type.

Config files speak YAML (mapping, list); JSON Schema errors speak JSON (object, array);
texts reproduced from APISIX speak Lua (table, nil).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["type_name", "short_value", "lua_type", "schema_type_name"]


def type_name(v: Any, *, json: bool = False) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, Mapping):
        return "object" if json else "mapping"
    if isinstance(v, list) or (json and isinstance(v, tuple)):
        return "array" if json else "list"
    return type(v).__name__


def schema_type_name(v: Any) -> str:
    """lua-jsonschema's name for a value's type (as APISIX's schema errors print it): JSON's,
    with every number a ``number``."""
    t = type_name(v, json=True)
    return "number" if t == "integer" else t


def short_value(v: Any) -> str:
    """The value as the user wrote it, cut to 64 characters; containers by their type."""
    if isinstance(v, str):
        s = '"' + v.replace('"', '\\"') + '"'
        return s if len(s) <= 64 else s[:61] + "..."
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (Mapping, list)):
        return type_name(v)
    return str(v)


def lua_type(v: Any, *, null: str = "nil") -> str:
    """Lua's ``type()`` of a decoded JSON/YAML value, as APISIX's messages print it.

    Objects and arrays are both ``table``.  ``None`` reads ``null``: ``"nil"`` where APISIX
    sees a missing value, ``"userdata"`` where it sees lua-cjson's ``null`` (a JSON ``null``
    in a request body)."""
    if v is None:
        return null
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "table"
