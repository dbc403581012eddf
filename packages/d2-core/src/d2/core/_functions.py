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


class _Unbound:
    def __repr__(self) -> str:
        return "<unbound>"


UNBOUND: Any = _Unbound()  # a positional argument of a callable whose signature is unknown


def _is_pass_through(code: Any) -> bool:
    """``def wrapper(*args, **kwargs)``: a decorator that forwards everything."""
    flags = code.co_flags
    return (
        code.co_argcount == 0
        and code.co_kwonlyargcount == 0
        and bool(flags & _CO_VARARGS)
        and bool(flags & _CO_VARKEYWORDS)
    )


def _resolve(fn: Any) -> tuple[Any, list[tuple[Any, ...]], dict[str, Any]]:
    """The function whose code binds a call of ``fn``; the leading arguments bound
    before the call, outermost first (a partial's values; ``self`` as one item);
    and the keywords a partial fixes."""
    bound: list[tuple[Any, ...]] = []
    fixed_kw: dict[str, Any] = {}
    for _ in range(100):
        if isinstance(fn, functools.partial):
            bound.append(tuple(fn.args))
            fixed_kw = {**fn.keywords, **fixed_kw}
            fn = fn.func
        elif hasattr(fn, "__func__") and hasattr(fn, "__self__"):  # bound method
            bound.append((fn.__self__,))
            fn = fn.__func__
        elif hasattr(fn, "__func__"):  # staticmethod / classmethod objects
            fn = fn.__func__
        elif getattr(fn, "__code__", None) is not None:
            wrapped = getattr(fn, "__wrapped__", None)
            if wrapped is not None and _is_pass_through(fn.__code__):
                fn = wrapped  # a forwarding decorator: bind like the function it wraps
                continue
            return fn, bound, fixed_kw
        elif not isinstance(fn, type) and callable(fn):
            call = getattr(type(fn), "__call__", None)  # noqa: B004
            if getattr(call, "__code__", None) is None:
                return None, bound, fixed_kw
            bound.append((fn,))  # a callable object: its __call__ after self
            fn = call
        else:
            return None, bound, fixed_kw
    return None, bound, fixed_kw


class Arguments:
    """Reads one named argument of a call, defaults applied, exactly as the
    callable's signature binds it: built once per guarded callable from its code
    object (through partials, bound methods, callable objects and forwarding
    ``functools.wraps`` decorators). A callable without code (a builtin) binds
    keywords only; its positional arguments read as ``UNBOUND`` (and fail closed)."""

    __slots__ = (
        "defaults",
        "fixed",
        "hidden",
        "keywords",
        "method",
        "opaque",
        "plans",
        "positional_only",
        "positions",
        "varargs",
        "varkw",
    )

    def __init__(self, fn: Any) -> None:
        self.positions: dict[str, int] = {}
        self.defaults: dict[str, Any] = {}
        self.fixed: dict[str, Any] = {}  # values a partial binds for good
        self.keywords: frozenset[str] = frozenset()
        self.positional_only: frozenset[str] = frozenset()
        self.varargs: tuple[str, int] | None = None
        self.varkw: str | None = None
        self.plans: dict[Any, Any] = {}  # evaluator's per-grant reading plans (memo)
        self.method = False  # set by the guard for methods: explain() gets no self
        # parameters that are not part of the call an approval covers or a log shows
        # (a framework's run context); set by adapters
        self.hidden: frozenset[str] = frozenset()
        target, bound, fixed_kw = _resolve(fn)
        self.opaque = target is None
        if target is None:
            return
        code = target.__code__
        names = code.co_varnames
        npos, nposonly, nkw = code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount
        leading = [value for values in reversed(bound) for value in values]  # innermost first
        skip = len(leading)
        for i, value in enumerate(leading[:npos]):
            self.fixed[names[i]] = value
        self.positions = {names[i]: i - skip for i in range(skip, npos)}
        self.positional_only = frozenset(names[:nposonly])
        self.keywords = frozenset(names[max(nposonly, skip) : npos + nkw])
        defaults = getattr(target, "__defaults__", None) or ()
        if defaults:
            self.defaults.update(zip(names[npos - len(defaults) : npos], defaults, strict=True))
        self.defaults.update(getattr(target, "__kwdefaults__", None) or {})
        self.defaults.update(fixed_kw)  # a partial's keywords act as overridable defaults
        extra = npos + nkw
        if code.co_flags & _CO_VARARGS:
            self.varargs = (names[extra], max(npos - skip, 0))
            extra += 1
        if code.co_flags & _CO_VARKEYWORDS:
            self.varkw = names[extra]

    def takes(self, name: str) -> bool:
        """Whether a call can pass ``name`` at all (always, when the signature is
        unknown or collects ``**kwargs``)."""
        if self.opaque or self.varkw is not None:
            return True
        return (
            name in self.positions
            or name in self.keywords
            or name in self.fixed
            or (self.varargs is not None and name == self.varargs[0])
        )

    def position(self, name: str) -> int | None:
        """Where ``name`` is read from when a plain lookup is enough: its position
        (-1 when keyword-only), or None when :meth:`value` must decide."""
        if self.opaque or name not in self.keywords or name in self.fixed:
            return None
        return self.positions.get(name, -1)

    def value(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], missing: Any) -> Any:
        """The value ``name`` gets in this call (its default when not passed), or
        ``missing``. The ``*args`` / ``**kwargs`` parameters read as the tuple and
        dict they collect."""
        if self.opaque:
            if name in kwargs:
                return kwargs[name]
            return UNBOUND if args else missing
        if name in self.fixed:
            return self.fixed[name]
        i = self.positions.get(name)
        if i is not None and i < len(args):
            return args[i]
        if name in kwargs and name in self.keywords:
            return kwargs[name]
        if self.varargs is not None and name == self.varargs[0]:
            return args[self.varargs[1] :]
        if self.varkw is not None and name == self.varkw:
            return {k: v for k, v in kwargs.items() if k not in self.keywords}
        if name in self.defaults or i is not None or name in self.keywords:
            return self.defaults.get(name, missing)
        # not a parameter of the signature: it can only travel in **kwargs or *args
        if self.varkw is not None and name in kwargs:
            return kwargs[name]
        if self.varargs is not None and len(args) > self.varargs[1]:
            return UNBOUND  # maybe inside *args: cannot tell, fail closed
        return missing


def bound_arguments(
    arguments: Arguments | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    keep_self: bool = False,
) -> dict[str, Any]:
    """Every argument of a call by parameter name, defaults applied: what
    approvals digest (``keep_self=True``: a method's object is part of the call)
    and what approvers and decision logs are shown (``self`` / ``cls`` left out).
    Extra keywords a ``**kwargs`` parameter collects appear under their own names. A
    callable whose signature is unknown records its keywords plus ``*args``."""
    if arguments is None or arguments.opaque:
        bound = dict(kwargs)
        if args:
            bound["*args"] = list(args)
        return bound
    names = sorted(
        {*arguments.positions, *arguments.keywords, *arguments.fixed},
        key=lambda n: arguments.positions.get(n, 1 << 30),
    )
    if not keep_self and arguments.method and names and arguments.positions.get(names[0]) == 0:
        names = names[1:]
    bound = {}
    for name in names:
        if name in arguments.hidden:
            continue
        value = arguments.value(name, args, kwargs, UNBOUND)
        if value is not UNBOUND:
            bound[name] = value
    if arguments.varargs is not None:
        bound[arguments.varargs[0]] = list(args[arguments.varargs[1] :])
    if arguments.varkw is not None:  # extra keywords by their own names
        for key, value in kwargs.items():
            if key not in arguments.keywords and key not in bound:
                bound[key] = value
    return bound
