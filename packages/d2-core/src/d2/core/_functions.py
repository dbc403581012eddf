"""What kind of function is this? (``inspect`` answers too, but importing it costs
more than the whole guard; these read the code flags directly.)"""

from __future__ import annotations

import functools
from typing import Any

_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200


def _code(fn: Any) -> Any:
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__func__"):  # bound methods, static/class methods
            fn = fn.__func__
        else:
            return getattr(fn, "__code__", None)


def _flags(fn: Any) -> int:
    code = _code(fn)
    return code.co_flags if code is not None else 0


def is_coroutine_function(fn: Any) -> bool:
    """``async def`` (not an async generator)."""
    return bool(_flags(fn) & _CO_COROUTINE)


def is_async_generator_function(fn: Any) -> bool:
    """``async def`` with ``yield``."""
    return bool(_flags(fn) & _CO_ASYNC_GENERATOR)


def is_generator_function(fn: Any) -> bool:
    """``def`` with ``yield``."""
    return bool(_flags(fn) & _CO_GENERATOR)


def first_parameter(fn: Any) -> str | None:
    """The name of the first positional parameter, or ``None``."""
    code = _code(fn)
    if code is None or code.co_argcount == 0:
        return None
    name: str = code.co_varnames[0]
    return name
