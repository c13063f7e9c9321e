"""The APISIX ``vars`` expression language (lua-resty-expr v1), compiled once.

Used by route ``vars`` and, later, by plugin ``_meta.filter``, ``traffic-split`` match
rules, ``workflow`` and logger filters (apisix-semantics.md section 2).

Theory of operation
-------------------
``compile_expr(rule)`` validates the rule tree and turns every leaf into a closure
``f(getvar) -> bool`` with everything that can be decided early (operator, regex,
number conversion of the right-hand side, IP networks, set of ``in`` values) done at
compile time.  ``Expr.eval`` just calls the root closure; ``Expr.explain`` walks the
tree again to say which leaf decided the result (for the Control API ``/v1/match``).

Grammar: a rule is an array; an optional first element ``AND | OR | !AND | !OR``
(implicit ``AND``); the other elements are expressions ``[var, op, value]``,
``[var, "!", op, value]`` (negated), ``[var, value]`` (meaning ``==``) or nested rules
(an array whose first element is an array or a logical operator).  Comparison
operators are case-insensitive; logical operators are upper-case, as in lua-resty-expr.

Coercions are Lua's, because they are where ports go wrong:

* ``==`` with a **number** on the right converts the variable with Lua ``tonumber``;
  failure -> false.  Otherwise Lua equality: values of different types are never equal
  (``"80" == 80`` is false, ``true == 1`` is false), tables compare by identity.
* ``~=`` is the negation of the above, except a failed ``tonumber`` gives **true**.
* ``> >= < <=`` convert both sides with ``tonumber``; either side nil -> false.
* ``~~`` / ``~*``: unanchored regex search (case-insensitive for ``~*``); a nil or
  false variable -> false; numbers are searched in their Lua string form.
* ``in``: the variable equals (Lua equality) an element of the right-hand array;
  a right-hand side that is not an array never matches.
* ``has``: the variable is an array containing the right-hand value.
* ``ipmatch``: the variable is an IP string inside one of the right-hand IPs/CIDRs.

Regexes are Python ``re`` in ASCII mode (PCRE without the ``u`` flag is byte-oriented);
the PCRE named-group spelling ``(?<name>...)`` is accepted.  A regex Python cannot
compile is a :class:`ConfigError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ._ip import IPMatcher

__all__ = ["Expr", "compile_expr", "lua_tonumber", "GetVar"]

GetVar = Callable[[str], Any]
_Fn = Callable[[GetVar], bool]

LOGIC_OPS = frozenset({"AND", "OR", "!AND", "!OR"})
MAX_DEPTH = 32  # nesting levels; keeps compile and eval far from the recursion limit
COMPARE_OPS = frozenset({"==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch"})

# --------------------------------------------------------------------------- tonumber

# Lua's isspace() in the C locale.
_LUA_SPACE = " \t\n\v\f\r"
_DEC_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_HEX_RE = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?", re.ASCII)
_SPECIAL_RE = re.compile(r"([+-]?)(inf|infinity|nan)", re.ASCII | re.IGNORECASE)
_TWO53 = 2**53


def _num(f: float) -> float | int:
    # Lua 5.1 numbers are doubles; hand back an int when the double is integral so that
    # callers see 26 rather than 26.0 (comparisons are exact either way).
    if f.is_integer() and -_TWO53 <= f <= _TWO53:
        return int(f)
    return f


def lua_tonumber(value: object) -> float | int | None:
    """Lua 5.1 ``tonumber(value)`` (``luaO_str2d`` = C ``strtod`` + hex fallback).

    Numbers are returned as they are; strings are parsed: optional surrounding C-locale
    whitespace, optional sign, decimal with optional fraction/exponent (``1e3``,
    ``.5``, ``5.``), hexadecimal ``0x1A`` (also hex fractions/``p`` exponents, as
    ``strtod`` does), ``inf``/``infinity``/``nan``.  Anything else -> ``None``:
    empty or blank strings, ``_`` separators, non-ASCII digits or spaces, trailing
    garbage.  Booleans, ``None`` and containers -> ``None``.
    """
    if isinstance(value, str):
        s = value.strip(_LUA_SPACE)
    elif isinstance(value, bool):
        return None
    elif isinstance(value, (int, float)):
        return value
    else:
        return None
    if not s:
        return None
    if _DEC_RE.fullmatch(s):
        try:
            return _num(float(s))
        except (ValueError, OverflowError):  # pragma: no cover - regex admits only valid floats
            return None
    if _HEX_RE.fullmatch(s):
        try:
            return _num(float.fromhex(s))
        except (ValueError, OverflowError):
            # strtod saturates to HUGE_VAL on overflow.
            return -math.inf if s.startswith("-") else math.inf
    m = _SPECIAL_RE.fullmatch(s)
    if m:
        if m.group(2).lower() == "nan":
            return math.nan
        return -math.inf if m.group(1) == "-" else math.inf
    return None


def _lua_tostring(n: int | float) -> str:
    # LuaJIT formats numbers with "%.14g".
    if isinstance(n, int) and abs(n) < 10**14:
        return str(n)
    f = float(n)
    if math.isnan(f):
        return "nan" if math.copysign(1.0, f) > 0 else "-nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return "%.14g" % f


def _is_number(v: object) -> bool:
    return (type(v) is int or type(v) is float) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def lua_eq(a: object, b: object) -> bool:
    """Lua ``a == b`` for JSON-ish values: no cross-type equality, tables by identity.

    ``None`` is Lua ``nil`` on the variable side and ``cjson.null`` on the rule side;
    they are never equal to each other, so any ``None`` operand gives false.
    """
    if type(a) is str and type(b) is str:
        return a == b
    if a is None or b is None:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return a is b


# --------------------------------------------------------------------------- nodes

class _Leaf:
    __slots__ = ("var", "op", "value", "negate", "fn", "source")

    def __init__(self, var: str, op: str, value: Any, negate: bool, fn: _Fn, source: Any) -> None:
        self.var = var
        self.op = op
        self.value = value
        self.negate = negate
        self.fn = fn
        self.source = source


class _Group:
    __slots__ = ("logic", "children", "fn")

    def __init__(self, logic: str, children: Sequence[_Leaf | _Group], fn: _Fn) -> None:
        self.logic = logic
        self.children = tuple(children)
        self.fn = fn


class Expr:
    """A compiled ``vars`` rule.  ``eval(getvar)`` -> bool; ``getvar(name)`` returns the
    variable's value or ``None`` when absent."""

    __slots__ = ("rule", "eval", "_root")

    def __init__(self, rule: list[Any], root: _Group) -> None:
        self.rule = rule
        self._root = root
        # Bind the root closure directly: one call per evaluation, no method dispatch.
        self.eval: _Fn = root.fn

    def explain(self, getvar: GetVar) -> tuple[bool, str]:
        """Evaluate and say which expression decided the result (human-readable)."""
        return _explain(self._root, getvar)

    def __repr__(self) -> str:
        return f"Expr({json.dumps(self.rule)})"


def _short(v: Any) -> str:
    try:
        s = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def _explain(node: _Leaf | _Group, getvar: GetVar) -> tuple[bool, str]:
    if isinstance(node, _Leaf):
        ok = node.fn(getvar)
        actual = getvar(node.var)
        return ok, f"{_short(node.source)} is {str(ok).lower()} ({node.var} = {_short(actual)})"
    results = []
    for child in node.children:
        ok, why = _explain(child, getvar)
        results.append((ok, why))
    ok = node.fn(getvar)
    base = node.logic.lstrip("!")
    # The child that decided: first false for AND, first true for OR.
    decisive = [w for (r, w) in results if r == (base == "OR")]
    if decisive:
        why = decisive[0]
    elif results:
        why = results[-1][1] if len(results) == 1 else f"all {len(results)} expressions are {str(base == 'AND').lower()}"
    else:
        why = "empty rule"
    if node.logic.startswith("!"):
        why = f"{node.logic} negates: {why}"
    return ok, why


# --------------------------------------------------------------------------- compile

_PCRE_NAMED = re.compile(r"\(\?<(?=[A-Za-z_])")


def _compile_regex(pattern: Any, pointer: str, flags: int) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ConfigError(pointer, f"expected a regular expression string, got {_short(pattern)}")
    try:
        return re.compile(_PCRE_NAMED.sub("(?P<", pattern), flags | re.ASCII)
    except (re.error, ValueError, OverflowError, RecursionError) as e:
        raise ConfigError(pointer, f"invalid regular expression {pattern!r}: {e}") from None


def _leaf_fn(var: str, op: str, value: Any, vptr: str) -> _Fn:
    """Build the closure for one comparison (without negation); ``vptr`` points at the value."""
    if op == "==" or op == "~=":
        want_eq = op == "=="
        if _is_number(value):
            r = value

            def num_eq(g: GetVar) -> bool:
                l = lua_tonumber(g(var))
                if l is None:
                    return not want_eq  # ~= with a non-number on the left is true
                return (l == r) is want_eq

            return num_eq
        if isinstance(value, str):
            rs = value

            def str_eq(g: GetVar) -> bool:
                l = g(var)
                return (isinstance(l, str) and l == rs) is want_eq

            return str_eq
        rv = value

        def any_eq(g: GetVar) -> bool:
            return lua_eq(g(var), rv) is want_eq

        return any_eq

    if op in (">", ">=", "<", "<="):
        rn = lua_tonumber(value)
        if rn is None:
            return lambda g: False
        rnum = rn
        if op == ">":
            def gt(g: GetVar) -> bool:
                l = lua_tonumber(g(var))
                return l is not None and l > rnum
            return gt
        if op == ">=":
            def ge(g: GetVar) -> bool:
                l = lua_tonumber(g(var))
                return l is not None and l >= rnum
            return ge
        if op == "<":
            def lt(g: GetVar) -> bool:
                l = lua_tonumber(g(var))
                return l is not None and l < rnum
            return lt

        def le(g: GetVar) -> bool:
            l = lua_tonumber(g(var))
            return l is not None and l <= rnum
        return le

    if op == "~~" or op == "~*":
        search = _compile_regex(value, vptr, re.IGNORECASE if op == "~*" else 0).search

        def regex(g: GetVar) -> bool:
            l = g(var)
            if isinstance(l, str):
                return search(l) is not None
            if _is_number(l):
                return search(_lua_tostring(l)) is not None
            # nil/false -> false; true or a table would raise in ngx.re.find: no match.
            return False

        return regex

    if op == "in":
        if not isinstance(value, list):
            # lua-resty-expr: a non-table right-hand side never matches.
            return lambda g: False
        strs = frozenset(v for v in value if type(v) is str)
        others = tuple(v for v in value if type(v) is not str)

        def in_(g: GetVar) -> bool:
            l = g(var)
            if type(l) is str:
                return l in strs
            for v in others:
                if lua_eq(l, v):
                    return True
            return False

        return in_

    if op == "has":
        rh = value

        def has(g: GetVar) -> bool:
            l = g(var)
            if not isinstance(l, (list, tuple)):
                return False
            for v in l:
                if lua_eq(v, rh):
                    return True
            return False

        return has

    if op == "ipmatch":
        if isinstance(value, list):
            matcher = IPMatcher(value, vptr)
        else:
            try:
                matcher = IPMatcher([value], vptr)
            except ConfigError as e:
                raise ConfigError(vptr, e.message) from None
        m = matcher.match
        return lambda g: m(g(var))

    raise AssertionError(op)  # pragma: no cover - checked by the caller


def _compile_leaf(expr: list[Any], pointer: str) -> _Leaf:
    n = len(expr)
    negate = False
    if n == 4:
        if expr[1] != "!":
            raise ConfigError(f"{pointer}/1", f"expected \"!\" in a 4-element expression [var, \"!\", op, value], got {_short(expr[1])}")
        negate = True
        var, op, value = expr[0], expr[2], expr[3]
        op_ptr = f"{pointer}/2"
    elif n == 3:
        var, op, value = expr
        op_ptr = f"{pointer}/1"
    elif n == 2:
        var, op, value = expr[0], "==", expr[1]
        op_ptr = f"{pointer}/1"
    else:
        raise ConfigError(
            pointer,
            f"expected an expression [var, op, value], [var, value] or [var, \"!\", op, value], got {n} element(s)",
        )
    if not isinstance(var, str) or not var:
        raise ConfigError(f"{pointer}/0", f"expected a variable name string, got {_short(var)}")
    if not isinstance(op, str):
        raise ConfigError(op_ptr, f"expected an operator string, got {_short(op)}")
    lop = op.lower()
    if lop not in COMPARE_OPS:
        raise ConfigError(op_ptr, f"unknown operator {op!r}; expected one of {', '.join(sorted(COMPARE_OPS))}")
    value_index = 3 if n == 4 else (2 if n == 3 else 1)
    fn = _leaf_fn(var, lop, value, f"{pointer}/{value_index}")
    if negate:
        inner = fn

        def neg(g: GetVar) -> bool:
            return not inner(g)

        fn = neg
    return _Leaf(var, lop, value, negate, fn, expr)


def _is_nested(item: list[Any]) -> bool:
    return bool(item) and (isinstance(item[0], list) or (isinstance(item[0], str) and item[0] in LOGIC_OPS))


def _compile_group(rule: list[Any], pointer: str, depth: int = 0) -> _Group:
    if depth > MAX_DEPTH:
        raise ConfigError(pointer, f"rule nested deeper than {MAX_DEPTH} levels")
    logic = "AND"
    start = 0
    if rule and isinstance(rule[0], str):
        if rule[0] in LOGIC_OPS:
            logic = rule[0]
            start = 1
        elif rule[0].upper() in LOGIC_OPS and all(isinstance(x, list) for x in rule[1:]):
            raise ConfigError(f"{pointer}/0", f"logical operator must be upper-case: expected {rule[0].upper()!r}, got {rule[0]!r}")
    children: list[_Leaf | _Group] = []
    for i in range(start, len(rule)):
        item = rule[i]
        ptr = f"{pointer}/{i}"
        if not isinstance(item, list):
            hint = " (a single expression must still be wrapped in an outer array: [[var, op, value]])" if i == 0 else ""
            raise ConfigError(ptr, f"expected an expression array or a nested rule, got {_short(item)}{hint}")
        if _is_nested(item):
            children.append(_compile_group(item, ptr, depth + 1))
        else:
            children.append(_compile_leaf(item, ptr))
    fns = tuple(c.fn for c in children)
    fn: _Fn
    if len(fns) == 1 and logic in ("AND", "OR"):
        fn = fns[0]
    elif logic == "AND":
        def and_(g: GetVar) -> bool:
            for f in fns:
                if not f(g):
                    return False
            return True
        fn = and_
    elif logic == "OR":
        def or_(g: GetVar) -> bool:
            for f in fns:
                if f(g):
                    return True
            return False
        fn = or_
    elif logic == "!AND":
        def nand(g: GetVar) -> bool:
            for f in fns:
                if not f(g):
                    return True
            return False
        fn = nand
    else:
        def nor(g: GetVar) -> bool:
            for f in fns:
                if f(g):
                    return False
            return True
        fn = nor
    return _Group(logic, children, fn)


def compile_expr(rule: list[Any], pointer: str = "/vars") -> Expr:
    """Compile a ``vars`` rule; raise :class:`ConfigError` (with a JSON pointer under
    ``pointer``) on an unknown operator, wrong arity, bad regex, bad IP/CIDR or a shape
    that is not a rule.  An empty rule is always true."""
    if not isinstance(rule, list):
        raise ConfigError(pointer, f"expected an array of expressions, got {_short(rule)}")
    if rule and not _is_nested(rule) and not (isinstance(rule[0], str) and rule[0].upper() in LOGIC_OPS):
        # A bare expression at the top (["arg_a", "==", "1"]) is the classic mistake.
        if isinstance(rule[0], str):
            raise ConfigError(
                f"{pointer}/0",
                f"expected an array of expressions, got a bare expression {_short(rule)}; wrap it: [{_short(rule)}]",
            )
    return Expr(rule, _compile_group(rule, pointer))
