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


_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08


class Arguments:
    """Reads one named argument of a call, defaults applied, as the function's own
    signature would bind it; built once per guarded function from its code object
    (following ``__wrapped__`` to the original function). For a callable without
    code (a builtin), arguments are read from the keywords only."""

    __slots__ = ("defaults", "keywords", "plans", "positions", "varargs", "varkw")

    def __init__(self, fn: Any) -> None:
        seen = 0
        while hasattr(fn, "__wrapped__") and seen < 100:
            fn, seen = fn.__wrapped__, seen + 1
        code = _code(fn)
        self.positions: dict[str, int] = {}
        self.defaults: dict[str, Any] = {}
        self.keywords: frozenset[str] | None = None  # None: accept any keyword
        self.varargs: tuple[str, int] | None = None
        self.varkw: str | None = None
        self.plans: dict[Any, Any] = {}  # evaluator's per-grant reading plans (memo)
        if code is None:
            return
        names = code.co_varnames
        npos, nposonly, nkw = code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount
        self.positions = {names[i]: i for i in range(npos)}
        self.keywords = frozenset(names[nposonly : npos + nkw])
        func = fn
        while hasattr(func, "__func__"):
            func = func.__func__
        defaults = getattr(func, "__defaults__", None) or ()
        if defaults:
            self.defaults.update(zip(names[npos - len(defaults) : npos], defaults, strict=True))
        self.defaults.update(getattr(func, "__kwdefaults__", None) or {})
        extra = npos + nkw
        if code.co_flags & _CO_VARARGS:
            self.varargs = (names[extra], npos)
            extra += 1
        if code.co_flags & _CO_VARKEYWORDS:
            self.varkw = names[extra]

    def position(self, name: str) -> int | None:
        """Where ``name`` is read from when a plain lookup is enough: its position
        (-1 when keyword-only), or None when :meth:`value` must decide."""
        if self.keywords is None or name not in self.keywords:
            return None
        return self.positions.get(name, -1)

    def value(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], missing: Any) -> Any:
        """The value ``name`` gets in this call (its default when not passed), or
        ``missing``. The ``*args`` / ``**kwargs`` parameters read as the tuple and
        dict they collect."""
        i = self.positions.get(name)
        if i is not None and i < len(args):
            return args[i]
        if name in kwargs and (
            self.keywords is None or name in self.keywords or self.varkw is not None
        ):
            return kwargs[name]
        if self.varargs is not None and name == self.varargs[0]:
            return args[self.varargs[1] :]
        if self.varkw is not None and name == self.varkw:
            named = self.keywords or frozenset()
            return {k: v for k, v in kwargs.items() if k not in named}
        return self.defaults.get(name, missing)
