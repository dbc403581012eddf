"""Strict JSON decoding of request bodies.

Decoding refuses what a lenient parser would let through silently: invalid UTF-8,
duplicate keys, ``NaN``/``Infinity`` and nesting deep enough to exhaust the stack.
The shapes of the decoded values are checked by the models of :mod:`.bodies`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import ApiError

__all__ = ["JSONError", "canonical_json", "decode_json", "loads_strict"]

_MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONError(ValueError):
    """Bytes that are not acceptable JSON."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONError(f"number {text[:40]} is out of range")
    return value


def _depth_ok(data: bytes) -> bool:
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > _MAX_DEPTH:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def loads_strict(data: bytes) -> Any:
    """Decode JSON bytes strictly; raises :class:`JSONError` with the reason."""
    if not _depth_ok(data):
        raise JSONError(f"nested deeper than {_MAX_DEPTH} levels")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONError(f"not UTF-8: {exc.reason}") from None
    try:
        value = json.loads(
            text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=_finite
        )
    except JSONError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JSONError(str(exc)[:200]) from None
    if _SURROGATE_ESCAPE.search(text):  # an escaped lone surrogate cannot be stored
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JSONError("a string holds a lone UTF-16 surrogate") from None
    return value


def decode_json(data: bytes) -> Any:
    """Decode a request body; 400 ``invalid_json`` when it is not JSON."""
    try:
        return loads_strict(data)
    except JSONError as exc:
        raise ApiError(400, "invalid_json", errors=[f"<root>: {exc}"]) from None


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
