"""``approval.when``, read fail-safe.

``when`` holds (a person must approve) unless some argument *certainly* fails its
rule. A value certainly fails an operator only when the operator can judge it
exactly, as ``POLICY.md`` defines it, and the judgement is "fails". Anything else
(NaN, an infinity, a list, tuple, set or dict where a scalar is compared, a string
under a numeric operator, an object of any other type, a subclass of a plain type,
a value equal only under Python's loose ``==``, such as ``False`` against ``0`` under
``eq``, ``in`` or ``contains``, or a bool under ``type: int``) cannot be judged, and
asks a person: skipping an approval must never be the way around it.

Judgeable values are *plain*: ``str``, ``int``, finite ``float``, ``bool``,
``None``, and ``list`` / ``tuple`` / ``dict`` (string keys) of plain values, each of
exactly that type.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from .constraints import _TYPES, MISSING, Constraint, same

__all__ = ["certainly_fails", "plain"]

_SCALARS = (str, int, bool, type(None))
_MAX_DEPTH = 64


def _scalar(v: Any) -> bool:
    cls = v.__class__
    return cls in _SCALARS or (cls is float and math.isfinite(v))


def plain(v: Any, depth: int = 0) -> bool:
    """Whether ``v`` is a plain JSON-like value every operator can judge exactly."""
    if _scalar(v):
        return True
    if depth > _MAX_DEPTH:
        return False
    cls = v.__class__
    if cls is list or cls is tuple:
        return all(plain(item, depth + 1) for item in v)
    if cls is dict:
        return all(k.__class__ is str and plain(item, depth + 1) for k, item in v.items())
    return False


def _kind(v: Any) -> str:
    """``scalar``, ``list`` or ``dict`` of a plain value."""
    cls = v.__class__
    if cls is list or cls is tuple:
        return "list"
    if cls is dict:
        return "dict"
    return "scalar"


def _json(v: Any) -> Any:
    """A plain value with tuples as lists (the policy can only write lists)."""
    cls = v.__class__
    if cls is list or cls is tuple:
        return [_json(item) for item in v]
    if cls is dict:
        return {k: _json(item) for k, item in v.items()}
    return v


def _identical(a: Any, b: Any) -> bool:
    """Equal under the strictest reading: type-aware all the way down (``True`` is
    not ``1`` at any depth). Both plain."""
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        return False
    if ka == "scalar":
        return same(a, b)
    if ka == "list":
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))
    return bool(a.keys() == b.keys()) and all(_identical(a[k], b[k]) for k in a)


def _alike(a: Any, b: Any) -> bool:
    """Equal under the loosest reading anyone uses: type-aware (as POLICY.md says)
    or Python's ``==`` (which a tool uses: ``False == 0``, ``True == 1.0``), at
    every depth (tuples read as lists). Both plain. Not alike means unequal under
    every reading."""
    if _kind(a) == "scalar" or _kind(b) == "scalar":
        return same(a, b) or bool(a == b)
    return bool(_json(a) == _json(b))


def _number(v: Any) -> bool:
    cls = v.__class__
    return cls is int or (cls is float and math.isfinite(v))


def _fails_type(arg: Any, v: Any) -> bool:
    if v.__class__ is bool and arg in ("int", "number"):
        return False  # not an int to the policy, an int to Python (and to the tool)
    return plain(v) and not _TYPES[arg](v)


def _fails_eq(arg: Any, v: Any) -> bool:
    return plain(v) and plain(arg) and _kind(v) == _kind(arg) and not _alike(v, arg)


def _fails_ne(arg: Any, v: Any) -> bool:
    return plain(v) and plain(arg) and _identical(v, arg)


def _compare(op: str) -> Callable[[Any, Any], bool]:
    def fails(arg: Any, v: Any) -> bool:
        if not _number(v):
            return False
        if op == "min":
            return bool(v < arg)
        if op == "max":
            return bool(v > arg)
        if op == "gt":
            return bool(v <= arg)
        return bool(v >= arg)

    return fails


def _fails_in(arg: Any, v: Any) -> bool:
    return _scalar(v) and all(plain(o) for o in arg) and not any(_alike(v, o) for o in arg)


def _fails_not_in(arg: Any, v: Any) -> bool:
    return _scalar(v) and any(plain(o) and _identical(v, o) for o in arg)


def _length(op: str) -> Callable[[Any, Any], bool]:
    def fails(arg: Any, v: Any) -> bool:
        if v.__class__ not in (str, list, tuple, dict):
            return False
        n = len(v)
        return bool(n < arg) if op == "minLength" else bool(n > arg)

    return fails


def _fails_max_bytes(arg: Any, v: Any) -> bool:
    cls = v.__class__
    if cls is str:
        size = len(v.encode("utf-8", "surrogatepass"))
    elif cls is bytes or cls is bytearray:
        size = len(v)
    elif plain(v):
        text = json.dumps(v, ensure_ascii=False)
        size = len(text.encode("utf-8", "surrogatepass"))
    else:
        return False
    return bool(size > arg)


def _search(arg: Any, v: Any) -> bool | None:
    """Whether the regex ``arg`` finds a match in ``v``; ``None`` when ``v`` is
    not exactly a ``str``."""
    if v.__class__ is not str:
        return None
    return re.search(arg, v) is not None


def _fails_matches(arg: Any, v: Any) -> bool:
    return _search(arg, v) is False


def _fails_not_matches(arg: Any, v: Any) -> bool:
    return _search(arg, v) is True


def _contains(needle: Any, v: Any, equal: Callable[[Any, Any], bool]) -> bool | None:
    """Whether ``v`` contains ``needle`` as POLICY.md reads ``contains``
    (substring, list item under ``equal``, dict key); ``None`` when that cannot be
    judged."""
    cls = v.__class__
    if cls is str:
        return needle in v if needle.__class__ is str else None
    if not (plain(v) and plain(needle)):
        return None
    if cls is list or cls is tuple:
        return any(equal(item, needle) for item in v)
    if cls is dict:
        return needle in v if needle.__class__ is str else False
    return None


def _fails_contains(arg: Any, v: Any) -> bool:
    return _contains(arg, v, _alike) is False


def _fails_not_contains(arg: Any, v: Any) -> bool:
    return _contains(arg, v, _identical) is True


def _fails_affix(op: str) -> Callable[[Any, Any], bool]:
    def fails(arg: Any, v: Any) -> bool:
        if v.__class__ is not str:
            return False
        return not (v.startswith(arg) if op == "startsWith" else v.endswith(arg))

    return fails


_FAILS: dict[str, Callable[[Any, Any], bool]] = {
    "type": _fails_type,
    "eq": _fails_eq,
    "ne": _fails_ne,
    "min": _compare("min"),
    "max": _compare("max"),
    "gt": _compare("gt"),
    "lt": _compare("lt"),
    "in": _fails_in,
    "not_in": _fails_not_in,
    "minLength": _length("minLength"),
    "maxLength": _length("maxLength"),
    "max_bytes": _fails_max_bytes,
    "matches": _fails_matches,
    "not_matches": _fails_not_matches,
    "contains": _fails_contains,
    "not_contains": _fails_not_contains,
    "startsWith": _fails_affix("startsWith"),
    "endsWith": _fails_affix("endsWith"),
}


def certainly_fails(constraint: Constraint, value: Any) -> bool:
    """Whether ``value`` fails ``constraint`` for certain: a missing value fails
    only ``required``; otherwise some operator judges the value exactly and finds
    that it fails."""
    if value is MISSING:
        return constraint.required
    if value is None and constraint.required:
        return True
    for op, arg in constraint.spec.items():
        fails = _FAILS.get(op)
        if fails is not None and fails(arg, value):
            return True
    return False
