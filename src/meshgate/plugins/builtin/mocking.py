"""mocking: answer with a mock response instead of proxying.

As APISIX ``apisix/plugins/mocking.lua``: the body is ``response_example`` (``$var`` resolved)
or an example generated from ``response_schema`` (JSON for json/text-plain content types, XML
under a ``<data>`` root for xml ones; values from ``example`` when given, random otherwise);
``Content-Type`` is ``content_type``; ``x-mock-by: APISIX/<version>`` unless
``with_mock_header`` is false; ``response_headers`` are added (``$var`` resolved); ``delay``
seconds are waited before answering.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from ... import __version__
from ._traffic_util import lua_str, resolve_var

__all__ = ["NAME", "PRIORITY", "VERSION", "SCHEMA", "check_schema", "prepare", "access", "generate"]


def xml_escape(s: str) -> str:
    """&, < and > as entities (what xml.sax.saxutils.escape does; that module pulls in
    urllib.request and http.client, about 2 MB in every worker)."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


NAME = "mocking"
PRIORITY = 10900
VERSION = "0.1"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "delay": {"type": "integer", "default": 0},
        "response_status": {"type": "integer", "default": 200, "minimum": 100},
        "content_type": {"type": "string", "default": "application/json;charset=utf8"},
        "response_example": {"type": "string"},
        "response_schema": {"type": "object"},
        "with_mock_header": {"type": "boolean", "default": True},
        "response_headers": {
            "type": "object",
            "minProperties": 1,
            "patternProperties": {"^[^:]+$": {"oneOf": [{"type": "string"}, {"type": "number"}]}},
        },
    },
    "anyOf": [
        {"required": ["response_example"]},
        {"required": ["response_schema"]},
    ],
}

_SUPPORTED = frozenset({"application/xml", "application/json", "text/plain", "text/html", "text/xml"})
_CT_RE = re.compile(r"([ -~]*);([ -~]*)")


def _media_type(content_type: str) -> str:
    m = _CT_RE.match(content_type)
    return m.group(1) if m is not None else content_type


def check_schema(conf: dict[str, Any], schema_type: str | None = None) -> str | None:
    if _media_type(conf.get("content_type", "application/json;charset=utf8")) not in _SUPPORTED:
        return "unsupported content type!"
    return None


# -- example generation from a JSON schema (as APISIX: properties, items, example) ------------
def _gen(prop: Any) -> Any:
    if not isinstance(prop, dict) or not isinstance(prop.get("type"), str):
        return None
    typ = prop["type"].lower()
    ex = prop.get("example")
    if typ == "array":
        items = prop.get("items")
        if items is None:
            return None
        return [_gen(items) for _ in range(random.randint(1, 3))]
    if typ == "object":
        return _gen_object(prop)
    if typ == "string":
        if isinstance(ex, str):
            return ex
        return "".join(chr(random.randint(97, 122)) for _ in range(random.randint(1, 10)))
    if typ == "number":
        if isinstance(ex, (int, float)) and not isinstance(ex, bool):
            return ex
        return random.random() * 10000
    if typ == "integer":
        if isinstance(ex, (int, float)) and not isinstance(ex, bool):
            return math.floor(ex)
        return random.randint(1, 10000)
    if typ == "boolean":
        if isinstance(ex, bool):
            return ex
        return random.randint(0, 1) == 1
    return None


def _gen_object(prop: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (prop.get("properties") or {}).items():
        val = _gen(v)
        if val is not None:   # a Lua table drops nil values
            out[k] = val
    return out


def _json(v: Any) -> str:
    # cjson: compact, '/' escaped, an empty table is an object
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")


def _xml(v: Any, tag: str, out: list[str], indent: int) -> None:
    pad = "  " * indent
    if isinstance(v, dict):
        out.append(f"{pad}<{tag}>\n")
        for k, sub in v.items():
            _xml(sub, k, out, indent + 1)
        out.append(f"{pad}</{tag}>\n")
    elif isinstance(v, list):
        for sub in v:   # xml2lua repeats the element for each item
            _xml(sub, tag, out, indent)
    else:
        s = lua_str(v)
        out.append(f"{pad}<{tag}>{xml_escape(s)}</{tag}>\n")


def generate(schema: dict[str, Any], content_type: str) -> str:
    """A body generated from ``schema`` for the media type (APISIX: json and text/plain get
    JSON, xml types get XML, others an empty body)."""
    output = _gen_object(schema)
    typ = _media_type(content_type)
    if typ in ("application/xml", "text/xml"):
        parts: list[str] = []
        _xml(output, "data", parts, 0)
        return "".join(parts)
    if typ in ("application/json", "text/plain"):
        return _json(output)
    return ""


@dataclass(frozen=True, slots=True)
class Conf:
    delay: int
    status: int
    content_type: str
    example: str | None
    schema: dict[str, Any] | None
    mock_header: bool
    headers: tuple[tuple[str, str], ...]


def prepare(conf: dict[str, Any]) -> Conf:
    return Conf(delay=int(conf.get("delay", 0)), status=int(conf.get("response_status", 200)),
                content_type=conf.get("content_type", "application/json;charset=utf8"),
                example=conf.get("response_example"), schema=conf.get("response_schema"),
                mock_header=bool(conf.get("with_mock_header", True)),
                headers=tuple((k, lua_str(v)) for k, v in (conf.get("response_headers") or {}).items()))


async def access(conf: Conf, ctx: Any) -> Any:
    if conf.example is not None:
        content = conf.example
    else:
        content = generate(conf.schema or {}, conf.content_type)
    headers = {"Content-Type": conf.content_type}
    if conf.mock_header:
        headers["x-mock-by"] = "APISIX/" + __version__
    getvar = ctx.var
    for k, v in conf.headers:
        ctx.add_resp_header(k, resolve_var(v, getvar))
    if conf.delay > 0:
        await asyncio.sleep(conf.delay)
    return conf.status, resolve_var(content, getvar), headers
