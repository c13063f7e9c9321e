"""Helpers shared by the traffic/transformation plugins (no NAME: not a plugin).

They reproduce the few OpenResty/APISIX primitives those plugins are built on:

* ``resolve_var``: APISIX ``core.utils.resolve_var`` (``$var``, ``${var}``, ``${var ?? default}``,
  ``\\$`` escapes the dollar);
* ``resolve_captures``: ``core.utils.resolve_var_with_captures`` (``$1`` / ``${1}``);
* ``uri_safe_encode``: nginx ``ngx_escape_uri(..., NGX_ESCAPE_URI)`` (space, ``#``, ``%``,
  ``?``, control characters and bytes >= 0x7f);
* ``compile_pcre`` / ``Substitution``: ``ngx.re.sub`` / ``ngx.re.gsub`` with their replacement
  templates (``$0``, ``$1``, ``${1}``, ``$$``) on Python's ``re``;
* ``nginx_page``: the body nginx sends for a status that a plugin returns without a body.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Literal

__all__ = ["resolve_var", "resolve_captures", "lua_str", "uri_safe_encode", "escape_control_chars",
           "compile_pcre", "Substitution", "captures_of", "iter_pairs", "nginx_page", "HTML_TYPE", "GetVar"]

GetVar = Callable[[str], Any]

HTML_TYPE = "text/html; charset=utf-8"

_VAR_RE = re.compile(r"(?<!\\)\$(\{\s*([^}]+?)\s*\}|([\w.]+))")
_DEFAULT_SPLIT = re.compile(r"\s*\?\?\s*")
_CAPTURE_RE = re.compile(r"(?<!\\)\$\{?(\d+)\}?")


def lua_str(v: Any) -> str:
    """``tostring`` of a JSON scalar as Lua prints it (``1.0`` decodes to the integer 1)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return "%.14g" % v
    return str(v)


def resolve_var(tpl: str, getvar: GetVar, escaper: Callable[[str], str] | None = None) -> str:
    """Substitute ``$name`` / ``${name}`` / ``${name ?? default}`` with variables; unknown ones
    become the empty string (APISIX ``core.utils.resolve_var``)."""
    if "$" not in tpl:
        return tpl

    def one(m: re.Match[str]) -> str:
        segs = _DEFAULT_SPLIT.split(m.group(2) or m.group(3))
        v = getvar(segs[0])
        if v is None:
            if len(segs) == 1:
                return ""
            v = segs[1]
        s = lua_str(v)
        return escaper(s) if escaper is not None else s

    return _VAR_RE.sub(one, tpl)


def resolve_captures(tpl: str, captures: list[str | None] | None) -> str:
    """``$N`` / ``${N}`` from the regex captures (index 0 is the whole match); missing ones are ''."""
    if "$" not in tpl:
        return tpl
    caps = captures or []

    def one(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return (caps[i] or "") if i < len(caps) else ""

    return _CAPTURE_RE.sub(one, tpl)


# nginx NGX_ESCAPE_URI: " ", "#", "%", "?", controls, DEL and every byte >= 0x80.
_URI_ESCAPE = frozenset(list(range(0x21)) + [0x23, 0x25, 0x3F] + list(range(0x7F, 0x100)))
_HEX = "0123456789ABCDEF"


def uri_safe_encode(uri: str) -> str:
    raw = uri.encode("utf-8", "surrogateescape")
    if not any(b in _URI_ESCAPE for b in raw):
        return uri
    out = []
    for b in raw:
        if b in _URI_ESCAPE:
            out.append("%" + _HEX[b >> 4] + _HEX[b & 15])
        else:
            out.append(chr(b))
    return "".join(out)


_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]")


def escape_control_chars(s: str) -> str:
    return _CTRL_RE.sub(lambda m: "%%%02X" % ord(m.group(0)), s)


# -- ngx.re -----------------------------------------------------------------------------------
_KNOWN_OPTIONS = frozenset("adDijJmosuUx")
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
# PCRE named groups (?<name>...) are (?P<name>...) in Python; lookbehinds (?<= (?<! are not.
_PCRE_NAMED = re.compile(r"\(\?<(?![=!])")


def compile_pcre(pattern: str, options: str = "jo", *, binary: bool = False) -> re.Pattern[Any]:
    """Compile an ``ngx.re`` regex with its option letters (``j``/``o``/``u``/``d`` are engine
    hints without effect here).  Raises ``re.error``."""
    flags = 0
    for c in options:
        if c not in _KNOWN_OPTIONS:
            raise re.error(f'unknown flag "{c}" (flags "{options}")')
        flags |= _FLAGS.get(c, 0)
    src = _PCRE_NAMED.sub("(?P<", pattern)
    if binary:
        return re.compile(src.encode("utf-8"), flags)
    return re.compile(src, flags)


_TPL_RE = re.compile(r"\$(\$|\{(\d+)\}|(\d+))|\$")


def _compile_template(tpl: str) -> list[str | int]:
    """``ngx.re.sub`` template: ``$$`` is '$', ``$N``/``${N}`` a capture; any other '$' is an error."""
    parts: list[str | int] = []
    pos = 0
    for m in _TPL_RE.finditer(tpl):
        if m.start() > pos:
            parts.append(tpl[pos:m.start()])
        if m.group(1) is None:
            raise ValueError("invalid capturing variable name found")
        if m.group(1) == "$":
            parts.append("$")
        else:
            parts.append(int(m.group(2) or m.group(3)))
        pos = m.end()
    if pos < len(tpl):
        parts.append(tpl[pos:])
    return parts


class Substitution:
    """One ``ngx.re.sub``/``gsub`` (regex + template), compiled once."""

    __slots__ = ("regex", "parts", "anchored", "binary")

    def __init__(self, pattern: str, template: str, options: str = "jo", *, binary: bool = False) -> None:
        self.regex = compile_pcre(pattern, options, binary=binary)
        self.parts = _compile_template(template)
        self.anchored = "a" in options
        self.binary = binary

    def expand(self, m: re.Match[Any]) -> Any:
        out: list[Any] = []
        for p in self.parts:
            if isinstance(p, int):
                g = m.group(p) if p <= m.re.groups else None
                out.append(g if g is not None else (b"" if self.binary else ""))
            else:
                out.append(p.encode("utf-8") if self.binary else p)
        return (b"" if self.binary else "").join(out)

    def search(self, subject: Any) -> re.Match[Any] | None:
        return self.regex.match(subject) if self.anchored else self.regex.search(subject)

    def sub(self, subject: Any, *, scope: Literal["once", "global"] = "once") -> tuple[Any, int]:
        if scope == "once":
            m = self.search(subject)
            if m is None:
                return subject, 0
            return subject[:m.start()] + self.expand(m) + subject[m.end():], 1
        if self.anchored:
            res, n = self.sub(subject, scope="once")
            return res, n
        # a capture the regex does not have expands to '' (as ngx.re.gsub)
        return self.regex.subn(self.expand, subject)


def captures_of(m: re.Match[str]) -> list[str | None]:
    return [m.group(0), *m.groups()]


# -- nginx special response pages -------------------------------------------------------------
_REASONS = {
    301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Not Allowed", 406: "Not Acceptable", 408: "Request Time-out", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Large", 415: "Unsupported Media Type", 416: "Requested Range Not Satisfiable",
    421: "Misdirected Request", 429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out",
    505: "HTTP Version Not Supported", 507: "Insufficient Storage",
}


def nginx_page(status: int) -> bytes:
    """What nginx answers for ``ngx.exit(status)`` with no body: its error/redirect page for the
    statuses it knows, an empty body otherwise."""
    reason = _REASONS.get(status)
    if reason is None:
        return b""
    return (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>meshgate</center>\r\n"
            "</body>\r\n</html>\r\n").encode()


def iter_pairs(seq: Iterable[Any]) -> Iterable[tuple[Any, Any]]:
    it = iter(seq)
    return zip(it, it)
