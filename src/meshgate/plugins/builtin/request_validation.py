"""request-validation: check request headers and body against JSON schemas (APISIX plugin).

APISIX semantics (``apisix/plugins/request-validation.lua``, ``t/plugin/request-validation*.t``):

* ``header_schema`` is checked against the request headers (lower-case names); ``body_schema``
  against the body, parsed as ``application/x-www-form-urlencoded`` when the Content-Type says
  so (any case, parameters allowed) and as JSON otherwise.
* A failure answers ``rejected_code`` (default 400) with ``rejected_msg`` when set, else with
  the error text (lua-jsonschema's words: ``property "x" is required``), sent as plain text.
  No body, a body above ``max_req_body_size`` (default 64 MiB) or several Content-Type fields
  answer ``rejected_code`` with ``rejected_msg`` (no body without one).
* Both schemas must themselves be valid (``check_schema``).

What the upstream reads must be what was validated (the JSON-interoperability attacks,
https://bishopfox.com/blog/json-interoperability-vulnerabilities).  APISIX re-encodes the
decoded JSON; Meshgate instead refuses what parsers disagree on and forwards the validated
bytes unchanged: duplicate object keys, ``NaN``/``Infinity``, lone UTF-16 surrogates, and
bodies that are not UTF-8 are rejected as undecodable.  Form bodies are forwarded as they are;
a repeated field is validated as an array of its values (as ngx.decode_args gives it) and a
field without ``=`` as ``true``.

The validators are compiled once per config version in :func:`prepare`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from meshgate.errors import ProtocolError

from ...model.describe import lua_type
from ..runtime import schema_message

if TYPE_CHECKING:
    from jsonschema import Draft7Validator

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "decode_json", "decode_form",
           "rewrite"]

NAME = "request-validation"
PRIORITY = 2800
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "header_schema": {"type": "object"},
        "body_schema": {"type": "object"},
        "max_req_body_size": {"type": "integer", "minimum": 1, "default": 67108864,
                              "description": "maximum request body size in bytes buffered into memory; "
                                             "larger request bodies are rejected"},
        "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 400},
        "rejected_msg": {"type": "string", "minLength": 1, "maxLength": 256},
    },
    "anyOf": [{"required": ["header_schema"]}, {"required": ["body_schema"]}],
}


def _schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a valid JSON schema, in APISIX's words where they are known."""
    import jsonschema  # lazily, as the registry does: a worker without this plugin never loads it

    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        path = list(e.path)
        if path and path[-1] == "type" and isinstance(e.instance, str):
            return f"invalid JSON type: {e.instance}"
        if e.validator == "type" and e.validator_value in ("array", "object"):
            return f"table expected, got {lua_type(e.instance)}"
        return str(e.message)
    return None


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    for key in ("body_schema", "header_schema"):
        if key in conf:
            err = _schema_problem(conf[key])
            if err:
                return err
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    header: Draft7Validator | None
    body: Draft7Validator | None
    max_size: int
    code: int
    msg: str | None


def _validator(schema: Any) -> Draft7Validator | None:
    if schema is None:
        return None
    import jsonschema

    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def prepare(conf: dict[str, Any]) -> Prepared:
    return Prepared(header=_validator(conf.get("header_schema")), body=_validator(conf.get("body_schema")),
                    max_size=int(conf.get("max_req_body_size", 67108864)),
                    code=int(conf.get("rejected_code", 400)), msg=conf.get("rejected_msg"))


# -- body decoding -------------------------------------------------------------------------------

class DecodeError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DecodeError(f"duplicate key \"{k}\" in JSON object")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise DecodeError(f"invalid number {name}")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode_json(body: bytes) -> Any:
    """The JSON value of ``body``, or :class:`DecodeError` for anything parsers may read apart."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except DecodeError:
        raise
    except UnicodeDecodeError:
        raise DecodeError("body is not valid UTF-8") from None
    except ValueError as e:     # json.JSONDecodeError included
        raise DecodeError(str(e)) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:    # a valid pair is fine; a lone surrogate cannot be encoded to UTF-8
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError("lone UTF-16 surrogate in JSON string") from None
    return value


def decode_form(body: bytes) -> dict[str, Any]:
    """``application/x-www-form-urlencoded`` as ngx.decode_args reads it (no limit on fields)."""
    out: dict[str, Any] = {}
    for part in body.decode("latin-1").split("&"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        key = unquote_plus(k, encoding="latin-1")
        val: Any = unquote_plus(v, encoding="latin-1") if sep else True
        if key in out:
            prev = out[key]
            out[key] = prev + [val] if isinstance(prev, list) else [prev, val]
        else:
            out[key] = val
    return out


def _first_error(validator: Draft7Validator, instance: Any) -> str | None:
    errors = validator.iter_errors(instance)
    first = next(errors, None)
    if first is None:
        return None
    from jsonschema.exceptions import best_match  # the failure path only

    return schema_message(best_match([first, *errors]))


async def rewrite(conf: Prepared, ctx: Any) -> tuple[int, str | None] | None:
    headers = ctx.req_headers()
    if conf.header is not None:
        err = _first_error(conf.header, headers)
        if err is not None:
            return conf.code, conf.msg or err

    if conf.body is None:
        return None
    try:
        body = await ctx.read_body(conf.max_size)
    except ProtocolError as e:
        if e.status != 413:
            raise
        return conf.code, conf.msg     # APISIX: "request size ... is greater than the maximum size"
    if not body:
        return conf.code, conf.msg
    content_type = headers.get("content-type")
    if content_type is not None and "," in content_type:
        # several Content-Type fields (joined by the ctx): ambiguous, refused as APISIX does
        return conf.code, conf.msg
    try:
        if content_type is not None and content_type.lower().startswith("application/x-www-form-urlencoded"):
            value: Any = decode_form(body)
        else:   # JSON by default
            value = decode_json(body)
    except DecodeError as e:
        return conf.code, conf.msg or str(e)
    err = _first_error(conf.body, value)
    if err is not None:
        return conf.code, conf.msg or err
    return None
