"""Request-target parsing and path normalisation: one parse, one path.

Theory of operation
-------------------
CONTRACT.md ("one parse, one path") and hardening.md rule 1: routing, plugins, logs and the
request sent upstream must all see the *same* path, so nothing behind the gateway can read a
different path from the one that was routed and authorised (CVE-2019-9901, CVE-2021-29492,
CVE-2021-43557).  This module turns the raw request-target bytes into:

``path``
    nginx's ``$uri``: percent-decoded, dot segments resolved (after decoding, so
    ``/%2e%2e/x`` is ``/../x`` is ``/x``), duplicate slashes merged.  This is what the router,
    the plugins and the logs use.

``upstream_path``
    the canonical re-encoding of exactly that path: every character that may not appear
    literally in an RFC 3986 ``path-absolute`` (space, ``%``, ``?``, ``#``, ``"<>[]^`{|}``,
    non-ASCII) is percent-encoded as UTF-8 with upper-case hex; unreserved characters,
    sub-delims, ``:``, ``@`` and ``/`` are kept.  Any RFC 3986 decoder in the upstream therefore
    decodes ``upstream_path`` back to ``path`` (and ``normalize_path(upstream_path)`` returns
    the same pair again: the pair is a fixed point).

Policy (hardening.md sections 4 and 5, cases 27-30; each choice matches nginx or Envoy):

* the path must start with ``/`` (origin-form);
* invalid or truncated percent-encoding (``%zz``, ``%4``) -> 400: never decode leniently as
  ``urllib.parse.unquote`` would;
* control characters, raw or decoded (``%00``, ``%0a``, ``%7f``, and the C1 range
  U+0080-U+009F, which ``str.splitlines`` treats as line breaks), -> 400;
* raw ``\\`` -> 400 (Windows-style separators are an authz bypass on some backends);
* raw space, ``?`` or ``#`` in the path bytes -> 400: the caller splits the query off and
  fragments are never part of a request-target (CVE-2021-39156);
* ``%2F`` / ``%5C`` (escaped slash / backslash): ``escaped_slash="reject"`` (default, Envoy's
  advice for API clients) -> 400; ``"keep"`` keeps them encoded (upper-case) in both forms
  and they are not separators.  In ``"keep"`` mode ``%25`` also stays encoded in ``path`` so
  that ``path`` is unambiguous: every ``%`` in it starts one of ``%25``, ``%2F``, ``%5C``;
* the decoded bytes must be valid UTF-8 (strict: overlong ``%c0%ae``, surrogates and code
  points above U+10FFFF -> 400); no Unicode normalisation at all (NFKC would turn ``／`` into
  ``/`` and ``‥`` into ``..``);
* ``..`` above the root is clamped to ``/`` (Envoy's ``normalize_path`` and RFC 3986 section
  5.2.4; nginx answers 400 instead).  Clamping cannot escape the root, and clamped and
  unclamped spellings route identically, so the choice is safe for file-serving plugins;
* trailing slash preserved (``/a/`` stays ``/a/``; ``/a/b/..`` is ``/a/``, as RFC 3986);
* ``;params`` are ordinary characters (nginx and Envoy do not strip them); ``/admin;x``
  therefore routes as ``/admin;x``, which prefix rules such as ``/admin*`` still match;
* no case folding (``/ADMIN`` is not ``/admin``: nginx locations and APISIX's radixtree are
  case-sensitive), trailing ``.`` and ``%20`` are kept as they are.

Fast path: a path made only of characters that need no escaping and containing none of
``%``, ``/.``, ``//`` is already canonical: it is returned as one ``str`` object used for both
members of the pair, with no work beyond the ASCII decode.

``parse_target`` splits a whole request-target (origin-form or absolute-form) into a
:class:`Target`.  The query is kept byte-exact (it is not part of the path and APISIX passes
``$args`` through), except that raw non-ASCII bytes are percent-encoded so that the query is an
ASCII ``str``; controls, space and ``#`` in it are rejected.  Asterisk-form (``OPTIONS *``)
and authority-form (``CONNECT host:port``) are refused with 400: a caller that supports them
must recognise them before calling.

Sans-IO, stdlib only, no asyncio.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple
from urllib.parse import quote

from meshgate.errors import ProtocolError

__all__ = [
    "EscapedSlashPolicy",
    "Target",
    "normalize_path",
    "parse_target",
    "split_target",
]

EscapedSlashPolicy = Literal["reject", "keep"]

# RFC 3986 pchar minus pct-encoded, plus "/": unreserved / sub-delims / ":" / "@".
_PATH_SAFE = "/!$&'()*+,;=:@"  # besides ALPHA / DIGIT / "-._~", which quote() always keeps
_PATH_SAFE_KEEP = _PATH_SAFE + "%"  # "keep" mode: the only %s in `path` are %25 %2F %5C

# Already-canonical path: only characters that never need escaping.  `/.` and `//` are
# checked with `in` (faster than a look-ahead in the regex).
_CANONICAL_BYTES = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_is_canonical = _CANONICAL_BYTES.fullmatch
_CANONICAL_STR = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_CANONICAL_STR_KEEP = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")

# Raw bytes that may never appear in the path part of a request-target.  Controls are
# checked once on the decoded string (which contains the raw characters too).
_RAW_FORBIDDEN = re.compile(rb"[ ?#\\]")
_RAW_REASONS = {
    b" ": "space in request-target path",
    b"?": "'?' in path (query not split off)",
    b"#": "fragment in request-target",
    b"\\": "backslash in path",
}
# C0 controls, DEL, C1 controls.  Applied to the decoded str.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Strict two-digit hex table: int(x, 16) would accept "+f", " f", "0x"... (hardening.md s.4).
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_HEX: dict[bytes, int] = {bytes((a, b)): int(chr(a) + chr(b), 16) for a in _HEX_DIGITS for b in _HEX_DIGITS}
_BYTE: tuple[bytes, ...] = tuple(bytes((i,)) for i in range(256))
_SLASH, _BACKSLASH, _PERCENT = 0x2F, 0x5C, 0x25
_KEEP_ENCODED = {_SLASH: b"%2F", _BACKSLASH: b"%5C", _PERCENT: b"%25"}

# Query: printable ASCII except '#' is kept byte-exact; >= 0x80 is percent-encoded.
_QUERY_PLAIN = re.compile(rb"[\x21-\x22\x24-\x7e]*")  # \x23 is '#'
_QUERY_BAD = re.compile(rb"[\x00-\x20\x7f#]")
_QUERY_HIGH = re.compile(rb"[\x80-\xff]")

# Absolute-form: scheme "://" authority [path-abempty] ["?" query] (RFC 9112 section 3.2.2).
_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://")
# Authority: reg-name (letters, digits, '-', '.', '_') or an IPv6 literal, optional port.
# No userinfo (RFC 9110 section 4.2.4 forbids it in http(s) URIs), no percent-encoding.
_AUTHORITY = re.compile(rb"(?:[A-Za-z0-9\-._]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")


class Target(NamedTuple):
    """A parsed request-target.

    ``path``/``upstream_path`` as :func:`normalize_path`; ``query`` is the text after the
    first ``?`` (``""`` for a bare ``?``, ``None`` when there is no ``?``); ``authority`` is
    the lower-cased ``host[:port]`` of an absolute-form target (``None`` for origin-form) and
    ``scheme`` its lower-cased scheme (``"http"`` or ``"https"``; the caller decides whether
    ``https`` absolute-form is acceptable on this listener).
    """

    path: str
    upstream_path: str
    query: str | None
    authority: str | None
    scheme: str | None = None


def normalize_path(
    raw: bytes,
    *,
    merge_slashes: bool = True,
    escaped_slash: EscapedSlashPolicy = "reject",
) -> tuple[str, str]:
    """Normalise the path part (bytes before ``?``) of an origin-form request-target.

    Returns ``(path, upstream_path)``; raises ``ProtocolError(400, reason)`` on rejection.
    See the module docstring for the exact policy.
    """
    if escaped_slash != "reject" and escaped_slash != "keep":
        raise ValueError(f"escaped_slash must be 'reject' or 'keep', not {escaped_slash!r}")
    # Fast path: nothing to decode, resolve, merge or escape.
    if (
        _is_canonical(raw) is not None
        and b"/." not in raw
        and b"//" not in raw
    ):
        s = raw.decode("ascii")
        return s, s
    return _normalize_slow(raw, merge_slashes, escaped_slash == "keep")


def _normalize_slow(raw: bytes, merge_slashes: bool, keep: bool) -> tuple[str, str]:
    if not raw.startswith(b"/"):
        raise ProtocolError(400, "path must start with '/'")
    m = _RAW_FORBIDDEN.search(raw)
    if m is not None:
        raise ProtocolError(400, _RAW_REASONS[m.group()])

    # 1. Percent-decode on bytes.
    if b"%" in raw:
        chunks = raw.split(b"%")
        out = [chunks[0]]
        for chunk in chunks[1:]:
            value = _HEX.get(chunk[:2])
            if value is None:
                raise ProtocolError(400, "invalid percent-encoding in path")
            if value == _SLASH or value == _BACKSLASH:
                if not keep:
                    raise ProtocolError(400, "encoded slash or backslash in path")
                out.append(_KEEP_ENCODED[value])
            elif value == _PERCENT and keep:
                out.append(b"%25")
            else:
                out.append(_BYTE[value])
            out.append(chunk[2:])
        decoded = b"".join(out)
    else:
        decoded = raw

    # 2. Strict UTF-8 (rejects overlong forms such as %c0%ae, surrogates, > U+10FFFF).
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(400, "path is not valid UTF-8") from None
    if _CONTROL.search(text) is not None:
        raise ProtocolError(400, "control character in path")

    # 3. Dot segments and duplicate slashes.  Without "/." there is no dot segment, since
    #    every segment follows a "/".
    if "/." in text or (merge_slashes and "//" in text):
        text = _resolve(text, merge_slashes)

    # 4. Canonical re-encoding for upstream.
    if keep:
        if _CANONICAL_STR_KEEP.fullmatch(text) is not None:
            return text, text
        return text, quote(text, safe=_PATH_SAFE_KEEP)
    if _CANONICAL_STR.fullmatch(text) is not None:
        return text, text
    return text, quote(text, safe=_PATH_SAFE)


def _resolve(text: str, merge_slashes: bool) -> str:
    """RFC 3986 section 5.2.4 remove_dot_segments on an absolute path, clamping at the root,
    optionally dropping empty segments (Envoy ``merge_slashes``, nginx ``merge_slashes on``)."""
    segments = text.split("/")  # segments[0] == "" since text starts with "/"
    last = len(segments) - 1
    stack: list[str] = []
    trailing = False
    for i in range(1, last + 1):
        seg = segments[i]
        if seg == "..":
            if stack:
                stack.pop()
            trailing = i == last
        elif seg == ".":
            trailing = i == last
        elif seg == "" and merge_slashes:
            trailing = i == last
        else:
            stack.append(seg)
            trailing = False
    if not stack:
        return "/"
    path = "/" + "/".join(stack)
    return path + "/" if trailing else path


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """Split an origin-form request-target into ``(path, query)`` at the first ``?``.

    ``query`` is ``None`` when there is no ``?``.  A fragment (``#``) anywhere -> 400; a target
    that is not origin-form -> 400 (use :func:`parse_target` for absolute-form).
    """
    if not target.startswith(b"/"):
        raise ProtocolError(400, "request-target is not origin-form")
    if b"#" in target:
        raise ProtocolError(400, "fragment in request-target")
    path, sep, query = target.partition(b"?")
    return path, (query if sep else None)


_PATH_CACHE: Final[dict[bytes, tuple[str, str]]] = {}
_PATH_CACHE_MAX: Final = 4096
_CACHE_LEN: Final = 256
_TARGET_CACHE: Final[dict[bytes, Target]] = {}


def parse_target(
    target: bytes,
    *,
    merge_slashes: bool = True,
    escaped_slash: EscapedSlashPolicy = "reject",
) -> Target:
    """Parse an origin-form (``/p?q``) or absolute-form (``http://host[:port]/p?q``) target.

    ``*`` and authority-form, unknown schemes, userinfo, an empty or malformed authority,
    fragments and everything :func:`normalize_path` rejects -> ``ProtocolError(400)``.
    """
    # Caches only for the default policy and short targets: bounded to ~4096 x 2 x 256 bytes.
    default = merge_slashes and escaped_slash == "reject" and len(target) <= _CACHE_LEN
    if default:
        cached = _TARGET_CACHE.get(target)
        if cached is not None:
            return cached
    authority: str | None = None
    scheme: str | None = None
    if target.startswith(b"/"):
        raw_path, sep, raw_query = target.partition(b"?")
    else:
        if target == b"*":
            raise ProtocolError(400, "asterisk-form request-target not supported here")
        m = _SCHEME.match(target)
        if m is None:
            # authority-form ("host:port", CONNECT) or garbage
            raise ProtocolError(400, "invalid request-target")
        scheme = m.group(1).decode("ascii").lower()
        if scheme != "http" and scheme != "https":
            raise ProtocolError(400, f"unsupported scheme in absolute-form: {scheme[:16]!r}")
        rest = target[m.end():]
        end = len(rest)
        for delim in (b"/", b"?", b"#"):
            j = rest.find(delim)
            if j != -1 and j < end:
                end = j
        raw_authority = rest[:end]
        am = _AUTHORITY.fullmatch(raw_authority)
        if am is None:
            raise ProtocolError(400, "invalid authority in absolute-form request-target")
        port = am.group(1)
        if port is not None and int(port) > 65535:  # digits checked by the regex
            raise ProtocolError(400, "invalid port in absolute-form request-target")
        authority = raw_authority.decode("ascii").lower()
        raw_path, sep, raw_query = rest[end:].partition(b"?")
        if not raw_path:
            raw_path = b"/"  # RFC 9112 section 3.2.2: empty path means "/"
    if b"#" in raw_path:
        raise ProtocolError(400, "fragment in request-target")
    if default:
        # Default policy: paths repeat, so their normalised forms are cached (pure function).
        got = _PATH_CACHE.get(raw_path)
        if got is None:
            got = normalize_path(raw_path)
            if len(_PATH_CACHE) >= _PATH_CACHE_MAX:
                _PATH_CACHE.clear()
            _PATH_CACHE[raw_path] = got
        path, upstream_path = got
    else:
        path, upstream_path = normalize_path(raw_path, merge_slashes=merge_slashes, escaped_slash=escaped_slash)
    query: str | None = None
    if sep:
        query = _check_query(raw_query)
    t = Target(path, upstream_path, query, authority, scheme)
    if default and not sep and authority is None:
        # Query-less origin-form targets repeat (the same few paths): cache the whole result.
        if len(_TARGET_CACHE) >= _PATH_CACHE_MAX:
            _TARGET_CACHE.clear()
        _TARGET_CACHE[target] = t
    return t


def _check_query(raw: bytes) -> str:
    if _QUERY_PLAIN.fullmatch(raw) is not None:
        return raw.decode("ascii")
    m = _QUERY_BAD.search(raw)
    if m is not None:
        if m.group() == b"#":
            raise ProtocolError(400, "fragment in request-target")
        raise ProtocolError(400, "control character or space in query")
    # Only bytes >= 0x80 remain: encode them so the query is ASCII and decodes to the same bytes.
    return _QUERY_HIGH.sub(lambda mm: b"%%%02X" % mm.group()[0], raw).decode("ascii")
