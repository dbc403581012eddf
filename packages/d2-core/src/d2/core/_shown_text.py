"""How the approver's view writes numbers and text (:mod:`d2.core._display`).

* An int beyond 2**53 (where JSON readers such as JavaScript round) as its exact
  decimal digits, or hexadecimal beyond Python's int-to-text limit.
* A float that is not finite by name (``nan``, ``-nan``, ``inf``, ``-inf``) or, a
  NaN with a payload of its own, by its bits.
* Whether every character of a text can be seen (:func:`_seen`): a request shows a
  string holding a control, format (a bidi override, a zero-width space),
  separator or surrogate character as its ``repr``.

It imports nothing of D2.
"""

from __future__ import annotations

import math
import struct

__all__: list[str] = []

_SAFE_INT = 2**53  # beyond this, JSON readers (JavaScript) round: shown as text
_NAN = struct.pack(">d", math.nan)


def _int_text(value: int) -> int | str:
    if -_SAFE_INT <= value <= _SAFE_INT:
        return value
    if value.bit_length() > 14_000:  # over Python's 4,300 decimal digits: shown in hex
        return hex(value)
    return str(value)  # the exact decimal digits


def _float_text(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    bits = struct.pack(">d", value)
    if bits == _NAN:
        return "nan"
    if bits == struct.pack(">d", -math.nan):
        return "-nan"
    return f"nan:{bits.hex()}"  # a NaN with a payload of its own


def _seen(text: str) -> bool:
    """Whether every character of ``text`` can be seen: none is a control, format
    (a bidi override, a zero-width space), separator or surrogate character, line
    breaks and tabs excepted (what ``str.isprintable`` and ``repr`` call printable)."""
    return text.isprintable() or text.replace("\n", "").replace("\t", "").isprintable()
