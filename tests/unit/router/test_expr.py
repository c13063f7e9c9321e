"""vars expressions (lua-resty-expr semantics): apisix-semantics.md section 2."""

from __future__ import annotations

import math
from typing import Any

import pytest

from meshgate.errors import ConfigError
from meshgate.router import Expr, compile_expr, lua_tonumber


def ev(rule: list[Any], **variables: Any) -> bool:
    return bool(compile_expr(rule).eval(variables.get))


# --------------------------------------------------------------------------- tonumber

@pytest.mark.parametrize(
    "text, expected",
    [
        # decimal forms
        ("0", 0), ("42", 42), ("-7", -7), ("+7", 7), ("3.25", 3.25), (".5", 0.5), ("5.", 5),
        ("1e3", 1000), ("1E3", 1000), ("1e+3", 1000), ("2.5e-3", 0.0025), ("-1.5E2", -150),
        ("007", 7), ("1e400", math.inf),
        # surrounding C whitespace
        ("  12  ", 12), ("\t12\n", 12), ("\r\n 1e3 \v\f", 1000),
        # hexadecimal (strtod / luaO_str2d fallback)
        ("0x1A", 26), ("0X1a", 26), ("0xff", 255), ("-0x10", -16), (" 0x10 ", 16),
        ("0x1p4", 16), ("0x.8", 0.5), ("0x1.8", 1.5),
        # rejected
        ("", None), ("   ", None), ("1_000", None), ("0x1_0", None), ("١٢", None), ("１２", None),
        ("\u00a012", None), ("12\u2003", None), ("abc", None), ("1e", None), ("e3", None), ("0x", None),
        ("0xg", None), ("1.2.3", None), ("1 2", None), ("- 7", None), ("0b101", None), ("1,5", None),
        ("12abc", None), ("--1", None), (".", None), ("+", None), ("0x1e3p", None),
    ],
)
def test_lua_tonumber_strings(text: str, expected: float | int | None) -> None:
    got = lua_tonumber(text)
    if expected is None:
        assert got is None
    else:
        assert got == expected
        assert type(got) in (int, float)


def test_lua_tonumber_special_values() -> None:
    assert lua_tonumber("inf") == math.inf
    assert lua_tonumber("-Infinity") == -math.inf
    nan = lua_tonumber(" nan ")
    assert isinstance(nan, float) and math.isnan(nan)
    assert lua_tonumber("infinit") is None


def test_lua_tonumber_non_strings() -> None:
    assert lua_tonumber(5) == 5
    assert lua_tonumber(2.5) == 2.5
    assert lua_tonumber(True) is None
    assert lua_tonumber(False) is None
    assert lua_tonumber(None) is None
    assert lua_tonumber(["1"]) is None
    assert lua_tonumber({"a": 1}) is None


def test_lua_tonumber_integral_results_are_ints() -> None:
    assert lua_tonumber("26.0") == 26 and type(lua_tonumber("26.0")) is int
    assert type(lua_tonumber("0x1A")) is int
    assert type(lua_tonumber("2.5")) is float


# --------------------------------------------------------------------------- operators

OPERATOR_CASES: list[tuple[list[Any], dict[str, Any], bool]] = [
    # == : string equality
    ([["arg_a", "==", "1"]], {"arg_a": "1"}, True),
    ([["arg_a", "==", "1"]], {"arg_a": "01"}, False),
    ([["arg_a", "==", "1"]], {}, False),
    # == with a number: tonumber on the left
    ([["arg_a", "==", 1]], {"arg_a": "1"}, True),
    ([["arg_a", "==", 1]], {"arg_a": "01"}, True),
    ([["arg_a", "==", 1]], {"arg_a": " 1.0 "}, True),
    ([["arg_a", "==", 26]], {"arg_a": "0x1A"}, True),
    ([["arg_a", "==", 1000]], {"arg_a": "1e3"}, True),
    ([["arg_a", "==", 1]], {"arg_a": "abc"}, False),
    ([["arg_a", "==", 1000]], {"arg_a": "1_000"}, False),
    ([["arg_a", "==", 1]], {}, False),
    # == Lua equality: no cross-type equality
    ([["x", "==", "80"]], {"x": 80}, False),
    ([["x", "==", True]], {"x": 1}, False),
    ([["x", "==", True]], {"x": True}, True),
    ([["x", "==", 1]], {"x": True}, False),
    ([["x", "==", None]], {}, False),
    ([["x", "==", ["a"]]], {"x": ["a"]}, False),  # tables compare by identity
    # two-element form means ==
    ([["arg_a", "1"]], {"arg_a": "1"}, True),
    ([["arg_a", "1"]], {"arg_a": "2"}, False),
    # ~=
    ([["arg_a", "~=", "1"]], {"arg_a": "2"}, True),
    ([["arg_a", "~=", "1"]], {"arg_a": "1"}, False),
    ([["arg_a", "~=", "1"]], {}, True),
    ([["arg_a", "~=", 1]], {"arg_a": "abc"}, True),   # tonumber fails -> true
    ([["arg_a", "~=", 1]], {}, True),
    ([["arg_a", "~=", 1]], {"arg_a": "1.0"}, False),
    ([["arg_a", "~=", 16]], {"arg_a": "0x10"}, False),
    ([["arg_a", "~=", 1]], {"arg_a": "2"}, True),
    # > >= < <= (both sides tonumber; nil -> false)
    ([["arg_a", ">", 10]], {"arg_a": "11"}, True),
    ([["arg_a", ">", 10]], {"arg_a": "10"}, False),
    ([["arg_a", ">", 10]], {"arg_a": "0x0B"}, True),
    ([["arg_a", ">", 10]], {"arg_a": "9e1"}, True),
    ([["arg_a", ">", 10]], {}, False),
    ([["arg_a", ">", 10]], {"arg_a": "eleven"}, False),
    ([["arg_a", ">", "10"]], {"arg_a": "9"}, False),     # numeric, not string, comparison
    ([["arg_a", ">", "10"]], {"arg_a": "100"}, True),
    ([["arg_a", ">", "abc"]], {"arg_a": "100"}, False),  # right side not a number
    ([["arg_a", ">=", 10]], {"arg_a": "10"}, True),
    ([["arg_a", ">=", 10]], {"arg_a": "9.99"}, False),
    ([["arg_a", "<", 10]], {"arg_a": " 9 "}, True),
    ([["arg_a", "<", 10]], {"arg_a": "10"}, False),
    ([["arg_a", "<", 10]], {}, False),
    ([["arg_a", "<=", 10]], {"arg_a": "10"}, True),
    ([["arg_a", "<=", 10]], {"arg_a": "1_0"}, False),
    ([["arg_a", "<", 0]], {"arg_a": "-0x1"}, True),
    ([["x", ">", 1]], {"x": 2}, True),               # numeric variables
    ([["x", ">", 1]], {"x": True}, False),
    # ~~ regex search (unanchored) and ~* case-insensitive
    ([["http_user_agent", "~~", "curl/[0-9]+"]], {"http_user_agent": "x curl/8 y"}, True),
    ([["http_user_agent", "~~", "^curl"]], {"http_user_agent": "x curl/8"}, False),
    ([["http_user_agent", "~~", "CURL"]], {"http_user_agent": "curl/8"}, False),
    ([["http_user_agent", "~*", "CURL"]], {"http_user_agent": "curl/8"}, True),
    ([["http_user_agent", "~~", ".*"]], {}, False),
    ([["x", "~~", "^8"]], {"x": 80}, True),           # numbers searched as strings
    ([["x", "~~", "^2$"]], {"x": 2.0}, True),         # Lua formats 2.0 as "2"
    ([["x", "~~", "\\d"]], {"x": "١"}, False),        # ASCII \d like PCRE without u
    ([["x", "~~", "(?<v>a)b"]], {"x": "ab"}, True),   # PCRE named groups accepted
    ([["x", "~~", "a"]], {"x": True}, False),
    # in
    ([["arg_a", "in", ["a", "b"]]], {"arg_a": "b"}, True),
    ([["arg_a", "in", ["a", "b"]]], {"arg_a": "c"}, False),
    ([["arg_a", "in", ["a", "b"]]], {}, False),
    ([["arg_a", "in", [1, 2]]], {"arg_a": "1"}, False),   # no coercion
    ([["x", "in", [1, 2]]], {"x": 2}, True),
    ([["x", "in", [1, 2]]], {"x": 2.0}, True),
    ([["x", "in", [True]]], {"x": 1}, False),
    ([["arg_a", "in", "abc"]], {"arg_a": "a"}, False),    # non-array right side never matches
    # has
    ([["graphql_root_fields", "has", "owner"]], {"graphql_root_fields": ["repo", "owner"]}, True),
    ([["graphql_root_fields", "has", "owner"]], {"graphql_root_fields": ["repo"]}, False),
    ([["graphql_root_fields", "has", "owner"]], {"graphql_root_fields": "owner"}, False),
    ([["graphql_root_fields", "has", "owner"]], {}, False),
    ([["x", "has", 1]], {"x": ["1"]}, False),
    # ipmatch
    ([["remote_addr", "ipmatch", "10.0.0.0/8"]], {"remote_addr": "10.1.2.3"}, True),
    ([["remote_addr", "ipmatch", "10.0.0.0/8"]], {"remote_addr": "11.1.2.3"}, False),
    ([["remote_addr", "ipmatch", ["127.0.0.1", "192.168.0.0/16"]]], {"remote_addr": "192.168.9.9"}, True),
    ([["remote_addr", "ipmatch", ["127.0.0.1", "192.168.0.0/16"]]], {"remote_addr": "127.0.0.1"}, True),
    ([["remote_addr", "ipmatch", ["127.0.0.1", "192.168.0.0/16"]]], {"remote_addr": "127.0.0.2"}, False),
    ([["remote_addr", "ipmatch", "2001:db8::/32"]], {"remote_addr": "2001:db8::1"}, True),
    ([["remote_addr", "ipmatch", "2001:db8::/32"]], {"remote_addr": "2001:db9::1"}, False),
    ([["remote_addr", "ipmatch", "::1"]], {"remote_addr": "0:0:0:0:0:0:0:1"}, True),
    ([["remote_addr", "ipmatch", "10.0.0.0/8"]], {"remote_addr": "not-an-ip"}, False),
    ([["remote_addr", "ipmatch", "10.0.0.0/8"]], {}, False),
    ([["remote_addr", "ipmatch", "10.0.0.0/8"]], {"remote_addr": "::ffff:10.0.0.1"}, False),
    ([["remote_addr", "ipmatch", "10.1.2.3/8"]], {"remote_addr": "10.9.9.9"}, True),  # host bits masked
    # case-insensitive operators
    ([["arg_a", "IN", ["x"]]], {"arg_a": "x"}, True),
    ([["arg_a", "HAS", "x"]], {"arg_a": ["x"]}, True),
    ([["remote_addr", "IPMATCH", "1.2.3.4"]], {"remote_addr": "1.2.3.4"}, True),
    # negation
    ([["arg_a", "!", "==", "1"]], {"arg_a": "1"}, False),
    ([["arg_a", "!", "==", "1"]], {"arg_a": "2"}, True),
    ([["arg_a", "!", "==", 1]], {"arg_a": "abc"}, True),
    ([["arg_a", "!", "~=", 1]], {"arg_a": "abc"}, False),
    ([["arg_a", "!", ">", 10]], {}, True),
    ([["arg_a", "!", "in", ["a", "b"]]], {"arg_a": "c"}, True),
    ([["arg_a", "!", "~~", "^a"]], {"arg_a": "abc"}, False),
    ([["remote_addr", "!", "ipmatch", "10.0.0.0/8"]], {"remote_addr": "11.0.0.1"}, True),
    ([["remote_addr", "!", "IPMATCH", "10.0.0.0/8"]], {"remote_addr": "10.0.0.1"}, False),
]


@pytest.mark.parametrize("rule, variables, expected", OPERATOR_CASES)
def test_operators(rule: list[Any], variables: dict[str, Any], expected: bool) -> None:
    expr = compile_expr(rule)
    assert expr.eval(variables.get) is expected
    ok, why = expr.explain(variables.get)
    assert ok is expected and why


# --------------------------------------------------------------------------- logic

LOGIC_CASES: list[tuple[list[Any], dict[str, Any], bool]] = [
    ([], {}, True),  # empty rule: no condition
    # implicit AND
    ([["a", "==", "1"], ["b", "==", "2"]], {"a": "1", "b": "2"}, True),
    ([["a", "==", "1"], ["b", "==", "2"]], {"a": "1", "b": "3"}, False),
    (["AND", ["a", "==", "1"], ["b", "==", "2"]], {"a": "1", "b": "2"}, True),
    (["AND", ["a", "==", "1"], ["b", "==", "2"]], {"a": "0", "b": "2"}, False),
    (["OR", ["a", "==", "1"], ["b", "==", "2"]], {"a": "0", "b": "2"}, True),
    (["OR", ["a", "==", "1"], ["b", "==", "2"]], {"a": "0", "b": "0"}, False),
    (["!AND", ["a", "==", "1"], ["b", "==", "2"]], {"a": "1", "b": "2"}, False),
    (["!AND", ["a", "==", "1"], ["b", "==", "2"]], {"a": "1", "b": "0"}, True),
    (["!OR", ["a", "==", "1"], ["b", "==", "2"]], {"a": "0", "b": "0"}, True),
    (["!OR", ["a", "==", "1"], ["b", "==", "2"]], {"a": "1", "b": "0"}, False),
    # nesting
    (["OR", ["AND", ["a", "==", "1"], ["b", "==", "2"]], ["c", "==", "3"]], {"a": "1", "b": "2"}, True),
    (["OR", ["AND", ["a", "==", "1"], ["b", "==", "2"]], ["c", "==", "3"]], {"a": "1", "c": "3"}, True),
    (["OR", ["AND", ["a", "==", "1"], ["b", "==", "2"]], ["c", "==", "3"]], {"a": "1"}, False),
    ([["a", "==", "1"], ["OR", ["b", "==", "2"], ["b", "==", "3"]]], {"a": "1", "b": "3"}, True),
    ([["a", "==", "1"], ["OR", ["b", "==", "2"], ["b", "==", "3"]]], {"a": "1", "b": "4"}, False),
    ([["a", "==", "1"], [["b", "==", "2"], ["c", "==", "3"]]], {"a": "1", "b": "2", "c": "3"}, True),
    ([["a", "==", "1"], [["b", "==", "2"], ["c", "==", "3"]]], {"a": "1", "b": "2"}, False),
    (["!OR", ["!AND", ["a", "==", "1"], ["b", "==", "2"]]], {"a": "1", "b": "2"}, True),
    (["AND", ["OR", ["a", ">", 5], ["a", "<", 0]], ["a", "!", "==", 100]], {"a": "7"}, True),
    (["AND", ["OR", ["a", ">", 5], ["a", "<", 0]], ["a", "!", "==", 100]], {"a": "100"}, False),
    (["AND", ["OR", ["a", ">", 5], ["a", "<", 0]], ["a", "!", "==", 100]], {"a": "3"}, False),
    (["OR"], {}, False),
    (["AND"], {}, True),
]


@pytest.mark.parametrize("rule, variables, expected", LOGIC_CASES)
def test_logic(rule: list[Any], variables: dict[str, Any], expected: bool) -> None:
    assert ev(rule, **variables) is expected
    ok, _ = compile_expr(rule).explain(variables.get)
    assert ok is expected


def test_explain_names_the_deciding_expression() -> None:
    expr = compile_expr([["arg_a", "==", "1"], ["http_x", "~~", "^v[0-9]"]])
    ok, why = expr.explain({"arg_a": "1", "http_x": "beta"}.get)
    assert not ok
    assert "http_x" in why and '"beta"' in why


def test_expr_is_reusable_and_keeps_rule() -> None:
    rule = [["arg_a", "==", "1"]]
    expr = compile_expr(rule)
    assert isinstance(expr, Expr)
    assert expr.rule is rule
    for _ in range(3):
        assert expr.eval({"arg_a": "1"}.get)
        assert not expr.eval({}.get)


def test_regex_compiled_once() -> None:
    import re

    calls = 0
    real = re.compile

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*a, **k)

    expr = compile_expr([["x", "~~", "^a"]])
    re.compile = counting  # type: ignore[assignment]
    try:
        for _ in range(10):
            expr.eval({"x": "abc"}.get)
    finally:
        re.compile = real
    assert calls == 0


# --------------------------------------------------------------------------- errors

BAD_RULES: list[tuple[Any, str, str]] = [
    ("not a list", "/vars", "expected an array"),
    (["arg_a", "==", "1"], "/vars/0", "wrap it"),
    ([["arg_a", "=~", "1"]], "/vars/0/1", "unknown operator '=~'"),
    ([["arg_a", "between", [1, 2]]], "/vars/0/1", "unknown operator"),
    ([["arg_a", "!", "like", "1"]], "/vars/0/2", "unknown operator 'like'"),
    ([["arg_a", "==", "1"], ["b", 5, "1"]], "/vars/1/1", "expected an operator string"),
    ([["arg_a"]], "/vars/0", "got 1 element"),
    ([["a", "==", "1", "x", "y"]], "/vars/0", "got 5 element"),
    ([[]], "/vars/0", "got 0 element"),
    ([["a", "not", "==", "1"]], "/vars/0/1", 'expected "!"'),
    ([[5, "==", "1"]], "/vars/0/0", "expected a variable name"),
    ([["ua", "~~", "(unclosed"]], "/vars/0/2", "invalid regular expression"),
    ([["ua", "~*", "a**"]], "/vars/0/2", "invalid regular expression"),
    ([["ua", "!", "~~", "[z-a]"]], "/vars/0/3", "invalid regular expression"),
    ([["ua", "~~", 5]], "/vars/0/2", "expected a regular expression string"),
    ([["ip", "ipmatch", "10.0.0.0/33"]], "/vars/0/2", "expected an IPv4/IPv6 address or CIDR"),
    ([["ip", "ipmatch", "not-an-ip"]], "/vars/0/2", "expected an IPv4/IPv6 address or CIDR"),
    ([["ip", "ipmatch", ["10.0.0.1", "300.0.0.1"]]], "/vars/0/2/1", "expected an IPv4/IPv6"),
    ([["ip", "ipmatch", []]], "/vars/0/2", "at least one"),
    ([["ip", "ipmatch", 5]], "/vars/0/2", "expected an IPv4/IPv6"),
    (["OR", ["a", "==", "1"], "b"], "/vars/2", "expected an expression array"),
    (["OR", ["a", "==", "1"], ["AND", ["b", "=", "1"]]], "/vars/2/1/1", "unknown operator '='"),
    ([["a", "==", "1"], [["b", "==", "2"], ["c", "~~", "("]]], "/vars/1/1/2", "invalid regular expression"),
    (["or", ["a", "==", "1"], ["b", "==", "2"]], "/vars/0", "upper-case"),
    ([["a", "==", "1"]] + [["b", "~~", "x" * 10 + "{99999999999}"]], "/vars/1/2", "invalid regular expression"),
]


@pytest.mark.parametrize("rule, pointer, text", BAD_RULES)
def test_bad_rules_raise_config_error_with_pointer(rule: Any, pointer: str, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        compile_expr(rule)
    assert exc.value.pointer == pointer
    assert text in exc.value.message


def test_custom_pointer_prefix() -> None:
    with pytest.raises(ConfigError) as exc:
        compile_expr([["a", "??", 1]], "/plugins/limit-count/_meta/filter")
    assert exc.value.pointer == "/plugins/limit-count/_meta/filter/0/1"
    assert "/plugins/limit-count/_meta/filter/0/1" in str(exc.value)


def test_deep_nesting_is_rejected_not_a_crash() -> None:
    rule: list[Any] = [["a", "==", "1"]]
    for _ in range(2000):
        rule = ["AND", rule]
    with pytest.raises(ConfigError) as exc:
        compile_expr(rule)
    assert "nested deeper" in exc.value.message
    ok: list[Any] = [["a", "==", "1"]]
    for _ in range(20):
        ok = ["OR", ok]
    assert compile_expr(ok).eval({"a": "1"}.get)
