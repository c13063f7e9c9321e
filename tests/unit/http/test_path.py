"""Tests for meshgate.http.path: request-target parsing and path normalisation.

Covers hardening.md cases 27-30, the fast path, idempotence (the upstream form re-normalises
to the same routed path) and a seeded random-bytes property test.
"""

from __future__ import annotations

import random
import re

import pytest

from meshgate.errors import ProtocolError
from meshgate.http.path import Target, normalize_path, parse_target, split_target

# (raw, expected path, expected upstream_path) under the defaults (merge, reject).
ACCEPT = [
    # plain
    (b"/", "/", "/"),
    (b"/a/b", "/a/b", "/a/b"),
    (b"/a/b/", "/a/b/", "/a/b/"),
    (b"/index.html", "/index.html", "/index.html"),
    (b"/a.b/c..d/...", "/a.b/c..d/...", "/a.b/c..d/..."),
    (b"/.well-known/x", "/.well-known/x", "/.well-known/x"),
    (b"/a/.b", "/a/.b", "/a/.b"),
    # dot segments
    (b"/a/b/..", "/a/", "/a/"),
    (b"/a/b/../", "/a/", "/a/"),
    (b"/a/b/.", "/a/b/", "/a/b/"),
    (b"/a/./b", "/a/b", "/a/b"),
    (b"/a/b/../../c", "/c", "/c"),
    (b"/a/../../../c/", "/c/", "/c/"),
    (b"/.", "/", "/"),
    (b"/./", "/", "/"),
    # duplicate slashes
    (b"//", "/", "/"),
    (b"///a//b///", "/a/b/", "/a/b/"),
    (b"/a//../b", "/b", "/b"),
    # percent-decoding, canonical re-encoding
    (b"/%41%62c", "/Abc", "/Abc"),
    (b"/%7e%2D%5f%2E", "/~-_.", "/~-_."),
    (b"/a%20b", "/a b", "/a%20b"),
    (b"/a%25b", "/a%b", "/a%25b"),
    (b"/a%3fb%23c", "/a?b#c", "/a%3Fb%23c"),
    (b"/%c3%a9t%C3%A9", "/\u00e9t\u00e9", "/%C3%A9t%C3%A9"),
    (b"/\xc3\xa9", "/\u00e9", "/%C3%A9"),  # raw UTF-8 accepted, re-encoded
    (b"/%e2%82%ac", "/\u20ac", "/%E2%82%AC"),
    (b"/%f0%9f%98%80", "/\U0001f600", "/%F0%9F%98%80"),
    (b"/a%2520b", "/a%20b", "/a%2520b"),  # double encoding decoded once only
    (b'/{"x"}|<y>^`[z]', '/{"x"}|<y>^`[z]', "/%7B%22x%22%7D%7C%3Cy%3E%5E%60%5Bz%5D"),
    (b"/%21%24%26%27%28%29%2a%2b%2c%3b%3d%3a%40", "/!$&'()*+,;=:@", "/!$&'()*+,;=:@"),
    (b"/a%2e", "/a.", "/a."),
    # sub-delims, params, case: kept verbatim
    (b"/a;b=c,d", "/a;b=c,d", "/a;b=c,d"),
    (b"/ADMIN", "/ADMIN", "/ADMIN"),
    (b"/admin.", "/admin.", "/admin."),
    (b"/admin%20", "/admin ", "/admin%20"),
    (b"/a+b", "/a+b", "/a+b"),
]

# (raw, reason fragment) rejected with 400 under the defaults.
REJECT = [
    (b"", "start with '/'"),
    (b"a/b", "start with '/'"),
    (b"*", "start with '/'"),
    (b"/a%zz", "percent-encoding"),
    (b"/a%", "percent-encoding"),
    (b"/a%4", "percent-encoding"),
    (b"/a%g0", "percent-encoding"),
    (b"/a% 1", "space"),
    (b"/a%+1", "percent-encoding"),
    (b"/a%-1", "percent-encoding"),
    (b"/a%00", "control"),
    (b"/a%0a", "control"),
    (b"/a%0D%0Ax", "control"),
    (b"/a%1f", "control"),
    (b"/a%7f", "control"),
    (b"/a%c2%85", "control"),  # U+0085 NEL (C1)
    (b"/a\x00b", "control"),
    (b"/a\tb", "control"),
    (b"/a\x7f", "control"),
    (b"/a b", "space"),
    (b"/a?b", "'?'"),
    (b"/a#b", "fragment"),
    (b"/a\\b", "backslash"),
    (b"/a%2fb", "encoded slash"),
    (b"/a%2Fb", "encoded slash"),
    (b"/a%5cb", "encoded slash"),
    (b"/a%5Cb", "encoded slash"),
    (b"/%c0%ae", "UTF-8"),  # overlong '.'
    (b"/%c0%af", "UTF-8"),  # overlong '/'
    (b"/%e0%80%ae", "UTF-8"),
    (b"/%ed%a0%80", "UTF-8"),  # surrogate
    (b"/%f4%90%80%80", "UTF-8"),  # > U+10FFFF
    (b"/%ff", "UTF-8"),
    (b"/\xff", "UTF-8"),
    (b"/%c3", "UTF-8"),  # truncated sequence
]


@pytest.mark.parametrize(("raw", "path", "upstream"), ACCEPT)
def test_accept(raw: bytes, path: str, upstream: str) -> None:
    assert normalize_path(raw) == (path, upstream)


@pytest.mark.parametrize(("raw", "reason"), REJECT)
def test_reject(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        normalize_path(raw)
    assert ei.value.status == 400
    assert reason in ei.value.reason


# --- hardening.md section 6 -------------------------------------------------------------

BLOCK_INTERNAL = re.compile(r"^/internal/")


def _gateway_view(raw: bytes) -> tuple[int, str | None]:
    """What a deny rule `^/internal/` answers, and what the upstream would receive."""
    try:
        path, upstream = normalize_path(raw)
    except ProtocolError as e:
        return e.status, None
    if BLOCK_INTERNAL.search(path):
        return 403, None
    return 200, upstream


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/internal/x", "/internal/x"),
        (b"//internal/x", "/internal/x"),
        (b"/a/../internal/x", "/internal/x"),
        (b"/./internal", "/internal"),
        (b"/./internal/x", "/internal/x"),
        (b"/%2e%2e/internal", "/internal"),
        (b"/%2e%2e/internal/x", "/internal/x"),
        (b"/%2E%2e/internal/x", "/internal/x"),
        (b"/a/%2E%2e/internal/x", "/internal/x"),
        (b"/%69nternal/x", "/internal/x"),
    ],
)
def test_case27_dot_and_slash_tricks_route_like_the_plain_path(raw: bytes, path: str) -> None:
    got, upstream = normalize_path(raw)
    assert got == path
    assert upstream == path  # upstream receives the normalised path
    assert _gateway_view(raw)[0] == _gateway_view(path.encode())[0]
    if path.startswith("/internal/"):
        assert _gateway_view(raw) == (403, None)


def test_case27_encoded_slash_variant_is_refused() -> None:
    # `/%2E%2e%2finternal` hides a separator: 400 under the default policy ...
    assert _gateway_view(b"/%2E%2e%2finternal") == (400, None)
    # ... and under "keep" it is one opaque segment, never `/internal`.
    path, upstream = normalize_path(b"/%2E%2e%2finternal", escaped_slash="keep")
    assert (path, upstream) == ("/..%2Finternal", "/..%2Finternal")


@pytest.mark.parametrize("raw", [b"/private%2f..%2fpublic", b"/admin%2Fx", b"/admin%5cx", b"/admin\\x"])
def test_case28_escaped_slashes_rejected_by_default(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as ei:
        normalize_path(raw)
    assert ei.value.status == 400


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/private%2f..%2fpublic", "/private%2F..%2Fpublic"),
        (b"/admin%2Fx", "/admin%2Fx"),
        (b"/admin%2fx", "/admin%2Fx"),
        (b"/admin%5cx", "/admin%5Cx"),
        (b"/a%2fb/%2e%2e/c", "/c"),  # %2F is not a separator: "a%2Fb" is one segment
    ],
)
def test_case28_keep_policy_keeps_them_encoded(raw: bytes, path: str) -> None:
    got = normalize_path(raw, escaped_slash="keep")
    assert got == (path, path)
    # never routed as a path below /admin/ or /public
    assert not got[0].startswith("/admin/")
    assert got[0] != "/public"


def test_case28_raw_backslash_rejected_under_keep_too() -> None:
    with pytest.raises(ProtocolError):
        normalize_path(b"/admin\\x", escaped_slash="keep")


def test_keep_mode_percent_stays_unambiguous() -> None:
    # An encoded slash and an encoded "%2F" text must not produce the same `path`.
    assert normalize_path(b"/a%2Fb", escaped_slash="keep")[0] == "/a%2Fb"
    assert normalize_path(b"/a%252Fb", escaped_slash="keep") == ("/a%252Fb", "/a%252Fb")
    assert normalize_path(b"/100%25", escaped_slash="keep") == ("/100%25", "/100%25")


@pytest.mark.parametrize(
    "raw", [b"/..", b"/../", b"/../../etc/passwd", b"/%2e%2e/%2e%2e/", b"/a/../../..", b"/./../.", b"/%2e%2E"]
)
def test_case29_never_above_root(raw: bytes) -> None:
    path, upstream = normalize_path(raw)
    assert path.startswith("/")
    assert ".." not in path.split("/")
    assert upstream == path


def test_case29_values() -> None:
    assert normalize_path(b"/..") == ("/", "/")
    assert normalize_path(b"/../../etc/passwd") == ("/etc/passwd", "/etc/passwd")
    assert normalize_path(b"/%2e%2e/%2e%2e/") == ("/", "/")


BLOCK_ADMIN = re.compile(r"^/admin")


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (b"/admin", "path:/admin"),
        (b"/admin#frag", 400),
        (b"/admin;jsessionid=x", "path:/admin;jsessionid=x"),
        (b"/ADMIN", "path:/ADMIN"),  # case-sensitive, as nginx/APISIX
        (b"/admin%00", 400),
        (b"/admin%zz", 400),
        (b"/%c0%ae%c0%ae/", 400),
        (b"/%c0%ae%c0%ae/admin", 400),
        ("/\uff0f\uff05\uff12\uff45".encode(), "path:/\uff0f\uff05\uff12\uff45"),  # no NFKC
        ("/\uff0fadmin".encode(), "path:/\uff0fadmin"),
        ("/\u2025/admin".encode(), "path:/\u2025/admin"),  # two-dot leader is not ".."
    ],
)
def test_case30(raw: bytes, outcome: int | str) -> None:
    if isinstance(outcome, int):
        with pytest.raises(ProtocolError) as ei:
            normalize_path(raw)
        assert ei.value.status == outcome
        return
    path, upstream = normalize_path(raw)
    assert "path:" + path == outcome
    # the deny rule and the upstream agree: upstream decodes to exactly `path`
    assert normalize_path(upstream.encode())[0] == path
    assert bool(BLOCK_ADMIN.search(path)) == path.startswith("/admin")


def test_case30_fullwidth_is_reencoded_not_folded() -> None:
    path, upstream = normalize_path("/\uff0f\uff05\uff12\uff45".encode())
    assert upstream == "/%EF%BC%8F%EF%BC%85%EF%BC%92%EF%BD%85"
    assert path != "/%2e" and path != "//."


def test_case30_fragment_in_target_rejected() -> None:
    for t in (b"/admin#frag", b"/admin?x=1#frag", b"http://a/admin#frag", b"http://a#frag"):
        with pytest.raises(ProtocolError) as ei:
            parse_target(t)
        assert ei.value.status == 400
    with pytest.raises(ProtocolError):
        split_target(b"/admin#frag")


# --- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"//a//b//", "//a//b//"),
        (b"/a//..", "/a/"),
        (b"//.", "//"),
        (b"/a/./", "/a/"),
        (b"/a/.", "/a/"),
        (b"//../a", "/a"),
        (b"/", "/"),
    ],
)
def test_no_merge_slashes(raw: bytes, path: str) -> None:
    assert normalize_path(raw, merge_slashes=False) == (path, path)


def test_invalid_policy_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        normalize_path(b"/a", escaped_slash="decode")  # type: ignore[arg-type]


# --- fast path and idempotence -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"/", b"/productpage", b"/api/v1/products/0", b"/a-b_c~d.e/f;g=h,i@j:k!$&'()*+", b"/a."]
)
def test_fast_path_returns_identity(raw: bytes) -> None:
    path, upstream = normalize_path(raw)
    assert path == raw.decode()
    assert path is upstream  # one object, no re-encoding


@pytest.mark.parametrize("raw", [b"/a%20b", b"/a//b", b"/a/./b", b"/\xc3\xa9", b"/{x}"])
def test_slow_path_inputs_are_not_identity(raw: bytes) -> None:
    path, upstream = normalize_path(raw)
    text = raw.decode("latin-1")
    assert path != text or upstream != text


@pytest.mark.parametrize("raw", [r for r, _, _ in ACCEPT] + [b"/a%2fb/c", b"/x%252F%5C", b"/%2e%2e%2F"])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("policy", ["reject", "keep"])
def test_idempotent(raw: bytes, merge: bool, policy: str) -> None:
    try:
        path, upstream = normalize_path(raw, merge_slashes=merge, escaped_slash=policy)  # type: ignore[arg-type]
    except ProtocolError:
        return
    assert upstream.isascii()
    again = normalize_path(upstream.encode("ascii"), merge_slashes=merge, escaped_slash=policy)  # type: ignore[arg-type]
    assert again == (path, upstream)
    # the canonical upstream form takes the fast path whenever it needs no escapes
    if "%" not in upstream and (merge or "//" not in upstream):
        assert again[0] is again[1]


# --- split_target / parse_target ---------------------------------------------------------


def test_split_target() -> None:
    assert split_target(b"/a") == (b"/a", None)
    assert split_target(b"/a?") == (b"/a", b"")
    assert split_target(b"/a?x=1?y") == (b"/a", b"x=1?y")
    assert split_target(b"/a%3F?b") == (b"/a%3F", b"b")
    for bad in (b"", b"*", b"a", b"http://a/b", b"/a#b", b"/a?b#c"):
        with pytest.raises(ProtocolError):
            split_target(bad)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", Target("/", "/", None, None)),
        (b"/a?x=1&y=2", Target("/a", "/a", "x=1&y=2", None)),
        (b"/a?", Target("/a", "/a", "", None)),
        (b"/a/../b?x=/../y", Target("/b", "/b", "x=/../y", None)),
        (b"/%41?%zz", Target("/A", "/A", "%zz", None)),  # query is not decoded or judged
        (b"/s?q=\xc3\xa9", Target("/s", "/s", "q=%C3%A9", None)),
        (b"/s?a=\"{|}\"", Target("/s", "/s", 'a="{|}"', None)),
        (b"http://Admin.Internal/x", Target("/x", "/x", None, "admin.internal", "http")),
        (b"http://a:8080", Target("/", "/", None, "a:8080", "http")),
        (b"http://a?x", Target("/", "/", "x", "a", "http")),
        (b"HTTPS://a.b/c//d?e", Target("/c/d", "/c/d", "e", "a.b", "https")),
        (b"http://[::1]:9080/p", Target("/p", "/p", None, "[::1]:9080", "http")),
        (b"http://10.0.0.1/%2e%2e/x", Target("/x", "/x", None, "10.0.0.1", "http")),
    ],
)
def test_parse_target(target: bytes, expected: Target) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        b"",
        b"*",  # OPTIONS * : caller handles
        b"example.com:443",  # CONNECT authority-form: caller handles
        b"hps://a/x",
        b"ftp://a/x",
        b"ws://a/x",
        b"http:/a",
        b"http://",
        b"http:///x",
        b"http://user@a/x",
        b"http://a b/x",
        b"http://a:99999/x",
        b"http://a:/x",
        b"http://a:+80/x",
        b"http://a%2eb/x",
        b"http://a/x%2fy",
        b"/a?b c",
        b"/a?b\x00",
        b"/a?b\x7f",
        b"/a?b#c",
        b"/a b?c",
    ],
)
def test_parse_target_rejects(target: bytes) -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_target(target)
    assert ei.value.status == 400


def test_parse_target_options_pass_through() -> None:
    t = parse_target(b"//a%2Fb?x", merge_slashes=False, escaped_slash="keep")
    assert t == Target("//a%2Fb", "//a%2Fb", "x", None)


# --- property test -----------------------------------------------------------------------

_ALPHABET = b"/.%2eEfF5cC0aA?#\\ ;=x\x00\x7f\xc0\xae\xc3\xa9\xff"


def _random_inputs(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        length = rng.randint(0, 24)
        if rng.random() < 0.5:
            b = bytes(rng.choice(_ALPHABET) for _ in range(length))
        else:
            b = bytes(rng.randrange(256) for _ in range(length))
        if rng.random() < 0.8:
            b = b"/" + b
        out.append(b)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_only_raise_protocol_error(seed: int) -> None:
    rng = random.Random(seed)
    accepted = 0
    for raw in _random_inputs(rng, 3000):
        for merge in (True, False):
            for policy in ("reject", "keep"):
                try:
                    path, upstream = normalize_path(raw, merge_slashes=merge, escaped_slash=policy)
                except ProtocolError as e:
                    assert e.status == 400
                    continue
                accepted += 1
                # invariants of every accepted path
                assert path.startswith("/") and upstream.startswith("/")
                assert upstream.isascii() and " " not in upstream
                assert "#" not in upstream and "?" not in upstream
                segs = path.split("/")
                assert "." not in segs and ".." not in segs
                if merge:
                    assert "//" not in path
                if policy == "reject":
                    assert "\\" not in path
                again = normalize_path(upstream.encode(), merge_slashes=merge, escaped_slash=policy)
                assert again == (path, upstream)
        try:
            parse_target(raw)
        except ProtocolError as e:
            assert e.status == 400
    assert accepted > 100  # the generator does reach the accepting paths
