"""multi-auth: try several auth plugins in order; the first that identifies a consumer wins.

``auth_plugins`` is a list (at least two) of one-entry objects ``{<auth plugin>: <conf>}``.
Each listed plugin's ``rewrite`` runs with its own conf; when all of them fail the answer is
``401 {"message":"Authorization Failed"}`` (each failure is logged as
``<name> failed to authenticate the request, code: <code>. error: <why>``), carrying the
``WWW-Authenticate`` challenge of the last plugin that failed, as APISIX does.
Challenges of the plugins that failed before a later one succeeded are not sent.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from types import ModuleType
from typing import Any

from ..runtime import schema_message  # APISIX's wording of schema errors
from ._auth import UNDER_MULTI_AUTH

NAME = "multi-auth"
PRIORITY = 2600
VERSION = "0.1"
TYPE = "auth"

logger = logging.getLogger("meshgate.plugins.multi-auth")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "work with route or service object",
    "properties": {"auth_plugins": {"type": "array", "minItems": 2}},
    "required": ["auth_plugins"],
}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _auth_module(name: str) -> ModuleType | None:
    if not _NAME_RE.match(name):
        return None
    try:
        mod = importlib.import_module(f"{__package__}.{name.replace('-', '_')}")
    except ImportError:
        return None
    return mod if getattr(mod, "NAME", None) == name else None


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    import jsonschema

    for item in conf.get("auth_plugins") or ():
        if not isinstance(item, dict):
            return "auth_plugins items must be objects"
        for name, sub in item.items():
            mod = _auth_module(name)
            if mod is None:
                return f"{name} plugin did not found"
            if getattr(mod, "TYPE", None) != "auth":
                return f"{name} plugin is not supported"
            err = jsonschema.exceptions.best_match(
                jsonschema.Draft7Validator(getattr(mod, "SCHEMA", {"type": "object"})).iter_errors(sub))
            if err is not None:
                return f"plugin {name} check schema failed: {schema_message(err)}"
            check = getattr(mod, "check_schema", None)
            if check is not None:
                msg = check(sub, "route") if len(inspect.signature(check).parameters) >= 2 else check(sub)
                if msg:
                    return f"plugin {name} check schema failed: {msg}"
    return None


def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    chain = []
    for item in conf["auth_plugins"]:
        for name, sub in item.items():
            mod = _auth_module(name)
            assert mod is not None  # check_schema ran first
            prep = getattr(mod, "prepare", None)
            subconf = dict(prep(dict(sub)) if prep is not None else sub)
            subconf[UNDER_MULTI_AUTH] = True
            chain.append((name, mod.rewrite, subconf))
    return {"_chain": tuple(chain)}


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message", ""))
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return "" if body is None else str(body)


async def rewrite(conf: dict[str, Any], ctx: Any) -> Any:
    errors = []
    challenge: dict[str, str] = {}
    for name, hook, subconf in conf["_chain"]:
        res = hook(subconf, ctx)
        if inspect.isawaitable(res):
            res = await res
        if res is None:
            return None
        if isinstance(res, tuple):
            code, body = res[0], res[1] if len(res) > 1 else None
            if len(res) > 2 and res[2]:
                challenge = {k: v for k, v in res[2].items() if k.lower() == "www-authenticate"}
        else:
            code, body = res, None
        errors.append(f"{name} failed to authenticate the request, code: {code}. error: {_error_text(body)}")
    for e in errors:
        logger.warning("%s", e)
    return 401, {"message": "Authorization Failed"}, challenge
