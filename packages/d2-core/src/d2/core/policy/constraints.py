"""Constraint operators, compiled once at load into small checks.

A :class:`Constraint` is a tuple of ``(operator, test)`` pairs; ``failure(value)``
returns the first operator the value violates (or ``None``). Messages name the
operator and the rule, never the value: arguments can be secrets.

Values are compared type-aware: ``True`` is not ``1`` and ``"1"`` is not ``1``;
``1`` and ``1.0`` are the same number. A value of the wrong type for an operator
violates it (fail closed): ``min`` on a string, ``matches`` on an int.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ._text import short, suggest

__all__ = ["MISSING", "OPERATORS", "Constraint", "compile_constraint", "same"]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()  # an argument or field that is not there

OPERATORS = (
    "type", "required", "eq", "ne", "min", "max", "gt", "lt", "in", "not_in",
    "minLength", "maxLength", "matches", "not_matches", "contains", "not_contains",
    "startsWith", "endsWith", "max_bytes",
)  # fmt: skip

_NUMBER = (int, float)
_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and v.__class__ is not bool,
    "float": lambda v: isinstance(v, float),
    "number": lambda v: isinstance(v, _NUMBER) and v.__class__ is not bool,
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, (list, tuple)),
    "dict": lambda v: isinstance(v, Mapping),
    "null": lambda v: v is None,
}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def same(a: object, b: object) -> bool:
    """Type-aware equality: bools only equal bools, numbers equal numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    return bool(a == b)


def _key(v: object) -> tuple[str, object] | None:
    """A hashable key under which ``same`` values collide, or None."""
    if isinstance(v, bool):
        return ("b", v)
    if _is_number(v):
        return ("n", v)
    if isinstance(v, str):
        return ("s", v)
    if v is None:
        return ("z", None)
    return None


def _member(options: list[Any]) -> Callable[[Any], bool]:
    keys = {_key(o) for o in options}
    others = tuple(o for o in options if _key(o) is None)
    keys.discard(None)
    strings = frozenset(o for o in options if isinstance(o, str))

    def test(v: Any) -> bool:
        if v.__class__ is str:  # the common case: one set lookup
            return v in strings
        k = _key(v)
        if k is not None and k in keys:
            return True
        return any(same(v, o) for o in others)

    return test


def _loose_member(options: list[Any]) -> Callable[[Any], bool]:
    """Membership under Python's own equality (``False in [0]`` is True)."""
    hashable = []
    for o in options:
        try:
            hash(o)
            hashable.append(o)
        except TypeError:
            pass
    plain = frozenset(hashable)

    def test(v: Any) -> bool:
        try:
            if v in plain:
                return True
        except TypeError:
            pass
        return any(_loosely_equal(v, o) for o in options)

    return test


def _size(v: Any) -> float:
    """Bytes of ``v`` (UTF-8, or its JSON form); a value that cannot be measured is
    infinitely large (fail closed)."""
    try:
        if isinstance(v, str):
            return len(v.encode("utf-8", "surrogatepass"))
        if isinstance(v, (bytes, bytearray)):
            return len(v)
        text = json.dumps(v, default=str, ensure_ascii=False)
        return len(text.encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError, OverflowError):
        return float("inf")


def _contains(needle: Any) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:
        if isinstance(v, str):
            return isinstance(needle, str) and needle in v
        if isinstance(v, (list, tuple)):
            return any(same(item, needle) for item in v)
        if isinstance(v, Mapping):
            return needle in v
        return False

    return test


def _has_len(v: Any) -> bool:
    return isinstance(v, (str, list, tuple, Mapping))


class Constraint:
    """Compiled constraints of one argument or field."""

    __slots__ = ("checks", "ok", "regex", "required", "spec")

    def __init__(
        self,
        checks: tuple[tuple[str, Callable[[Any], bool]], ...],
        required: bool,
        spec: Mapping[str, Any],
        regex: re.Pattern[str] | None,
    ) -> None:
        self.checks = checks
        self.required = required
        self.spec = spec
        self.regex = regex
        self.ok = _all_of(tuple(test for _, test in checks), required)

    def failure(self, value: Any) -> str | None:
        """The first operator ``value`` violates, or ``None``. A missing value
        violates only ``required``."""
        if value is MISSING or (value is None and self.required):
            return "required" if self.required else None
        for op, test in self.checks:
            if not test(value):
                return op
        return None

    def describe(self, op: str) -> str:
        """``op`` and its rule as written, e.g. ``matches '^c_[0-9]+$'``."""
        if op == "required":
            return "required (the value is missing)"
        return f"{op} {short(self.spec[op], 80)}"


def _all_of(tests: tuple[Callable[[Any], bool], ...], required: bool) -> Callable[[Any], bool]:
    """One function that is True when every test passes (the hot path); the
    failing operator is looked up with :meth:`Constraint.failure` only on failure."""
    if required:
        inner = _all_of(tests, False)
        return lambda v: v is not MISSING and v is not None and inner(v)
    if not tests:
        return lambda v: True
    if len(tests) == 1:
        (a,) = tests
        return lambda v: v is MISSING or a(v)
    if len(tests) == 2:
        a, b = tests
        return lambda v: v is MISSING or (a(v) and b(v))
    if len(tests) == 3:
        a, b, c = tests
        return lambda v: v is MISSING or (a(v) and b(v) and c(v))

    def every(v: Any) -> bool:
        if v is MISSING:
            return True
        for test in tests:  # noqa: SIM110 - a loop is faster than all(genexpr)
            if not test(v):
                return False
        return True

    return every


def _num(
    c: Any, path: str, op: str, value: Any
) -> float | None:  # c: the compile checker (has .error)
    if not _is_number(value) or (isinstance(value, float) and math.isnan(value)):
        c.error(f"{path}.{op}", f"expected a number, got {short(value)}")
        return None
    return float(value) if isinstance(value, float) else value


def _count(c: Any, path: str, op: str, value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        c.error(f"{path}.{op}", f"expected a non-negative integer, got {short(value)}")
        return None
    return value


def _regex(c: Any, path: str, op: str, value: Any) -> re.Pattern[str] | None:
    if not isinstance(value, str):
        c.error(f"{path}.{op}", f"expected a regular expression (string), got {short(value)}")
        return None
    try:
        return value_regex(value)
    except re.error as exc:
        c.error(f"{path}.{op}", f"bad regular expression {short(value)}: {exc}")
        return None


def value_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled for judging a whole argument value: a ``$`` means the end
    of the value, as ``\\Z`` does. Python's ``$`` also matches before a final
    newline, so ``^c_[0-9]+$`` would let ``"c_1\\n"`` through (the tool receives the
    newline). A pattern in MULTILINE mode (``(?m)``) keeps its line-end ``$``."""
    compiled = re.compile(pattern)
    if "$" not in pattern or compiled.flags & re.MULTILINE or "(?m" in pattern:
        return compiled
    out: list[str] = []
    escaped = in_class = False
    start = -1  # where the current character class began
    for i, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            # a "]" right after "[" or "[^" is a member, not the class's end
            if char == "]" and i > start + 1 and pattern[start + 1 : i] != "^":
                in_class = False
        elif char == "[":
            in_class, start = True, i
        elif char == "$":
            out.append("\\Z")
            continue
        out.append(char)
    return re.compile("".join(out))


Test = Callable[[Any], bool]


def _b_type(c: Any, path: str, arg: Any) -> Test | None:
    if not isinstance(arg, str) or arg not in _TYPES:
        c.error(f"{path}.type", f"unknown type {short(arg)}{suggest_type(arg)}")
        return None
    return _TYPES[arg]


def _b_required(c: Any, path: str, arg: Any) -> Test | None:
    if not isinstance(arg, bool):
        c.error(f"{path}.required", f"expected true or false, got {short(arg)}")
    return None  # handled by Constraint.required


def _b_eq(c: Any, path: str, arg: Any) -> Test:
    return lambda v: same(v, arg)


def _loosely_equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _b_ne(c: Any, path: str, arg: Any) -> Test:
    # Deny-lists fail closed: a value equal under either the type-aware or Python's
    # own equality (False == 0, 1.0 == 1) is the forbidden value.
    return lambda v: not same(v, arg) and not _loosely_equal(v, arg)


def _b_compare(op: str) -> Callable[[Any, str, Any], Test | None]:
    def build(c: Any, path: str, arg: Any) -> Test | None:
        n = _num(c, path, op, arg)
        if n is None:
            return None
        if op == "min":
            return lambda v: isinstance(v, _NUMBER) and v.__class__ is not bool and v >= n
        if op == "max":
            return lambda v: isinstance(v, _NUMBER) and v.__class__ is not bool and v <= n
        if op == "gt":
            return lambda v: isinstance(v, _NUMBER) and v.__class__ is not bool and v > n
        return lambda v: isinstance(v, _NUMBER) and v.__class__ is not bool and v < n

    return build


def _b_in(negate: bool) -> Callable[[Any, str, Any], Test | None]:
    def build(c: Any, path: str, arg: Any) -> Test | None:
        if not isinstance(arg, list):
            c.error(
                f"{path}.{'not_in' if negate else 'in'}",
                f"expected a list of values, got {short(arg)}",
            )
            return None
        member = _member(arg)
        if not negate:
            return member
        loose = _loose_member(arg)
        return lambda v: not member(v) and not loose(v)

    return build


def _b_length(op: str) -> Callable[[Any, str, Any], Test | None]:
    def build(c: Any, path: str, arg: Any) -> Test | None:
        n = _count(c, path, op, arg)
        if n is None:
            return None
        if op == "minLength":
            return lambda v: _has_len(v) and len(v) >= n
        if op == "maxLength":
            return lambda v: _has_len(v) and len(v) <= n
        return lambda v: _size(v) <= n

    return build


def _b_matches(negate: bool) -> Callable[[Any, str, Any], Test | None]:
    def build(c: Any, path: str, arg: Any) -> Test | None:
        rx = _regex(c, path, "not_matches" if negate else "matches", arg)
        if rx is None:
            return None
        search = rx.search
        if negate:
            return lambda v: isinstance(v, str) and search(v) is None
        return lambda v: isinstance(v, str) and search(v) is not None

    return build


def _b_contains(negate: bool) -> Callable[[Any, str, Any], Test | None]:
    def build(c: Any, path: str, arg: Any) -> Test | None:
        has = _contains(arg)
        if negate:
            loose = _loose_member([arg])
            return lambda v: (
                isinstance(v, (str, list, tuple, Mapping))
                and not has(v)
                and not (isinstance(v, (list, tuple)) and any(loose(item) for item in v))
            )
        return has

    return build


def _b_affix(op: str) -> Callable[[Any, str, Any], Test | None]:
    def build(c: Any, path: str, arg: Any) -> Test | None:
        if not isinstance(arg, str):
            c.error(f"{path}.{op}", f"expected a string, got {short(arg)}")
            return None
        if op == "startsWith":
            return lambda v: isinstance(v, str) and v.startswith(arg)
        return lambda v: isinstance(v, str) and v.endswith(arg)

    return build


_BUILDERS: dict[str, Callable[[Any, str, Any], Test | None]] = {
    "type": _b_type,
    "required": _b_required,
    "eq": _b_eq,
    "ne": _b_ne,
    "min": _b_compare("min"),
    "max": _b_compare("max"),
    "gt": _b_compare("gt"),
    "lt": _b_compare("lt"),
    "in": _b_in(False),
    "not_in": _b_in(True),
    "minLength": _b_length("minLength"),
    "maxLength": _b_length("maxLength"),
    "max_bytes": _b_length("max_bytes"),
    "matches": _b_matches(False),
    "not_matches": _b_matches(True),
    "contains": _b_contains(False),
    "not_contains": _b_contains(True),
    "startsWith": _b_affix("startsWith"),
    "endsWith": _b_affix("endsWith"),
}


def compile_constraint(
    c: Any, path: str, spec: Mapping[str, Any], *, extra_keys: tuple[str, ...] = ()
) -> Constraint | None:
    """Compile ``spec`` (operator -> argument). Problems go to ``c.error`` with the
    path of the bad entry; unknown operators name the closest valid one.
    ``extra_keys`` are keys the caller handles itself (``action``)."""
    checks: list[tuple[str, Test]] = []
    before = len(c.errors)
    for op, arg in spec.items():
        if op in extra_keys:
            continue
        build = _BUILDERS.get(op)
        if build is None:
            c.error(f"{path}.{op}", f"unknown operator{suggest(str(op), OPERATORS)}")
            continue
        test = build(c, path, arg)
        if test is not None:
            checks.append((op, test))
    if len(c.errors) > before:
        return None
    regex = value_regex(spec["matches"]) if "matches" in spec else None
    return Constraint(tuple(checks), spec.get("required") is True, dict(spec), regex)


def suggest_type(name: object) -> str:
    """`` (did you mean 'string'?)`` for a near-miss type name."""
    return suggest(str(name), tuple(_TYPES))
