"""What kind of function is this, and which parameter does each argument of a call
bind to? (``inspect`` answers too, but importing it costs more than the whole guard;
these read code objects directly, and a declared ``__signature__`` when there is one.)"""

from __future__ import annotations

import functools
import operator
import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

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

# Code of wrappers known to pass every argument on to ``__wrapped__`` unchanged (the
# guard's own wrappers, D2's context decorators, adapters' stand-ins): binding
# follows them. Any other ``(*args, **kwargs)`` wrapper may reorder, inject or drop
# arguments, so binding stops at it.
_FORWARDERS: set[Any] = set()

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def forwards_unchanged(fn: F) -> F:
    """Declare that ``fn`` (a function with ``__wrapped__``) calls ``__wrapped__``
    with exactly the arguments it was given, so a guard binds a call of ``fn``
    like a call of ``__wrapped__``. Only for D2's own wrappers: the declaration
    covers every function made by the same ``def``."""
    _FORWARDERS.add(fn.__code__)
    return fn


class _Spec:
    """A signature reduced to what binding needs."""

    __slots__ = ("defaults", "kwonly", "positional", "posonly", "varargs", "varkw")

    def __init__(
        self,
        positional: tuple[str, ...],
        posonly: int,
        kwonly: tuple[str, ...],
        varargs: str | None,
        varkw: str | None,
        defaults: dict[str, Any],
    ) -> None:
        self.positional = positional
        self.posonly = posonly
        self.kwonly = kwonly
        self.varargs = varargs
        self.varkw = varkw
        self.defaults = defaults


def _spec_of_code(
    code: Any, positional_defaults: tuple[Any, ...], kw_defaults: tuple[tuple[str, Any], ...]
) -> _Spec:
    """The spec of a function with this code and these defaults (read once by the
    caller, which watches them: see :meth:`Arguments.current`)."""
    names = code.co_varnames
    npos, nkw = code.co_argcount, code.co_kwonlyargcount
    defaults: dict[str, Any] = {}
    if positional_defaults:
        defaults.update(
            zip(names[npos - len(positional_defaults) : npos], positional_defaults, strict=True)
        )
    kwonly = code.co_varnames[npos : npos + nkw]
    defaults.update((name, value) for name, value in kw_defaults if name in kwonly)
    extra = npos + nkw
    varargs = varkw = None
    if code.co_flags & _CO_VARARGS:
        varargs = names[extra]
        extra += 1
    if code.co_flags & _CO_VARKEYWORDS:
        varkw = names[extra]
    return _Spec(
        names[:npos], code.co_posonlyargcount, names[npos : npos + nkw], varargs, varkw, defaults
    )


def _spec_of_signature(sig: Any) -> _Spec:
    positional: list[str] = []
    kwonly: list[str] = []
    posonly = 0
    varargs = varkw = None
    defaults: dict[str, Any] = {}
    for param in sig.parameters.values():
        kind = int(param.kind)  # inspect.Parameter kinds, in signature order
        if kind == 0:
            posonly += 1
            positional.append(param.name)
        elif kind == 1:
            positional.append(param.name)
        elif kind == 2:
            varargs = param.name
        elif kind == 3:
            kwonly.append(param.name)
        else:
            varkw = param.name
        if kind in (0, 1, 3) and param.default is not param.empty:
            defaults[param.name] = param.default
    return _Spec(tuple(positional), posonly, tuple(kwonly), varargs, varkw, defaults)


class _Opaque:
    pass


_OPAQUE: Any = _Opaque()  # a ``__signature__`` that is not a Signature
_NOTHING: Any = _Opaque()  # no such attribute

_FUNCTION = types.FunctionType
_METHOD = types.MethodType
_mro_of = type.__dict__["__mro__"].__get__
_namespace_of = type.__dict__["__dict__"].__get__
_PARTIAL_CALL: Any = functools.partial.__dict__["__call__"]
_partial_func = functools.partial.__dict__["func"].__get__
_partial_args = functools.partial.__dict__["args"].__get__
_partial_keywords = functools.partial.__dict__["keywords"].__get__
_static_func = staticmethod.__dict__["__func__"].__get__
_class_func = classmethod.__dict__["__func__"].__get__

# D2's own classes that bind like Python's: bound methods (``__self__`` first, then
# ``__func__``), and descriptors whose ``__get__`` may be called to bind a ``__call__``.
_BOUND_METHODS: set[type] = set()
_METHOD_DESCRIPTORS: set[type] = set()


def _static(kind: type, name: str) -> Any:
    """``name`` as Python finds the special methods of ``kind``'s instances: in the
    ``__dict__`` of each class of its MRO, past any ``__getattr__``,
    ``__getattribute__`` or metaclass (``inspect.getattr_static`` on the type);
    ``_NOTHING`` when no class defines it."""
    for klass in _mro_of(kind):
        namespace = _namespace_of(klass)
        if name in namespace:
            return namespace[name]
    return _NOTHING


def _own_attribute(obj: Any, kind: type, name: str) -> Any:
    """``obj.name`` as the object itself defines it (its class, or its instance
    dictionary), never what a ``__getattr__`` or ``__getattribute__`` hands on from
    another object (a transparent proxy forwards every attribute of the function it
    wraps); ``_NOTHING`` when it defines none."""
    found = _static(kind, name)
    getter = _static(type(found), "__get__") if found is not _NOTHING else _NOTHING
    if getter is not _NOTHING and (
        _static(type(found), "__set__") is not _NOTHING
        or _static(type(found), "__delete__") is not _NOTHING
    ):
        return getter(found, obj, kind)  # a data descriptor (a property) wins
    slot = _static(kind, "__dict__")
    if type(slot) is types.GetSetDescriptorType:  # the real instance dictionary
        namespace = slot.__get__(obj, kind)
        if type(namespace) is dict and name in namespace:
            return namespace[name]
    if getter is not _NOTHING:
        return getter(found, obj, kind)
    return found


def _declared_signature(fn: Any, kind: type) -> Any:
    """``fn``'s own ``__signature__`` (what ``inspect.signature`` reports before
    anything else), ``None`` when it declares none, ``_OPAQUE`` when it is not a
    ``Signature``. One that ``functools.wraps`` copied from the wrapped function
    (the same object) is not a declaration of the wrapper's own and is ignored; so
    is one that only a ``__getattr__`` provides (a proxy's, of the function it wraps)."""
    try:
        if kind is _FUNCTION:
            sig = fn.__dict__.get("__signature__")
        else:
            sig = _own_attribute(fn, kind, "__signature__")
    except Exception:  # a property that fails: nothing can be trusted
        return _OPAQUE
    if sig is None or sig is _NOTHING:
        return None
    inspect = sys.modules.get("inspect")  # whoever made a Signature imported it
    if inspect is None or not isinstance(sig, inspect.Signature):
        return _OPAQUE
    try:
        inherited = getattr(getattr(fn, "__wrapped__", None), "__signature__", None)
    except Exception:
        return _OPAQUE
    return None if inherited is sig else sig


class _Target:
    """What binds a call: the signature (``None``: unknown), the leading values bound
    before the call (innermost first), a partial's keywords, whether the signature
    is a forwarding wrapper's (``*args``/``**kwargs`` with ``__wrapped__`` not known
    to forward unchanged), and what was read from objects the app may change later
    (``function``: the function whose code and defaults bind the call, as
    ``(function, __code__, __defaults__)``; ``kwdefaults``: its
    ``(function, __kwdefaults__)`` when it has keyword-only parameters;
    ``partials``: the partials on the way, as ``(partial, func, args, keywords)``;
    ``dicts``: each keywords dict read, as ``(dict, keys, values)``)."""

    __slots__ = (
        "dicts",
        "doubt",
        "fixed_kw",
        "forwarding",
        "function",
        "kwdefaults",
        "leading",
        "object_first",
        "partials",
        "spec",
    )

    def __init__(self) -> None:
        self.spec: _Spec | None = None
        self.leading: list[Any] = []
        self.fixed_kw: dict[str, Any] = {}
        self.forwarding = False
        self.function: tuple[Any, Any, Any] | None = None
        self.kwdefaults: tuple[Any, Any] | None = None
        self.partials: list[tuple[Any, Any, Any, Any]] = []
        self.dicts: list[tuple[dict[str, Any], tuple[str, ...], tuple[Any, ...]]] = []
        self.doubt = False  # a declared signature whose defaults are not the live ones
        # the first leading value is the object a method runs on (a bound method's
        # __self__, a callable object, a class method's class, a partial's first
        # argument of a function defined in a class body), not an argument
        self.object_first = False


def _declared(target: _Target, sig: Any, fn: Any) -> None:
    """Bind with ``fn``'s declared signature ``sig``, and watch what the wrapped
    function reads at each call. A wrapper that declares the signature of the
    function it wraps (``functools.wraps`` plus ``__signature__``) usually passes its
    arguments on: the wrapped function's own ``__defaults__`` / ``__kwdefaults__``
    (and a partial's keywords) then fill what the call omits, and the app may change
    them after the wrapper was made. So the innermost ``__wrapped__`` is resolved
    too: its function, defaults and partials are watched (a change rebinds, see
    :meth:`Arguments.current`), and a default the declared signature gives otherwise
    than it (another object, even an equal one) is a doubt: the binding is then
    unknown and approvals are refused (see :attr:`Arguments.doubt`)."""
    target.spec = spec = _spec_of_signature(sig)
    inner = fn
    for _ in range(100):
        wrapped = getattr(inner, "__wrapped__", None)
        if wrapped is None:
            break
        inner = wrapped
    else:
        target.doubt = True  # a cycle of __wrapped__: nothing to trust
        return
    if inner is fn:
        return  # declares its own signature, wraps nothing: what runs is fn
    found = _resolve(inner)
    target.function, target.kwdefaults = found.function, found.kwdefaults
    target.partials.extend(found.partials)
    target.dicts.extend(found.dicts)
    if found.doubt:
        target.doubt = True
        return
    if found.spec is None:
        return  # a builtin or unknown callable: no defaults of its own to compare
    live = {**found.spec.defaults, **found.fixed_kw}
    for name, default in spec.defaults.items():
        if name in live and live[name] is not default:
            target.doubt = True
            return


def _snapshot(target: _Target, mapping: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The items of a mutable keywords dict (a partial's, ``__kwdefaults__``), read
    once; the dict, its keys and its values are watched."""
    items = tuple(mapping.items())
    target.dicts.append((mapping, tuple(k for k, _ in items), tuple(v for _, v in items)))
    return items


def _call_of(obj: Any, kind: type, bound: list[tuple[Any, ...]]) -> Any:
    """What Python runs for ``obj(...)``: ``type(obj).__call__`` looked up statically
    and bound as Python binds it (the object first for a function, nothing for a
    staticmethod, the class for a classmethod), the values it puts first appended
    to ``bound``; ``_NOTHING`` when that is not known exactly (a builtin's slot, a
    descriptor of unknown behaviour)."""
    call = _static(kind, "__call__")
    if call is _NOTHING:
        return _NOTHING
    call_kind = type(call)
    if call_kind is _FUNCTION:
        bound.append((obj,))
        return call
    getter = _static(call_kind, "__get__")
    if getter is _NOTHING:  # no __get__: called as it is, without the object
        return call
    if issubclass(call_kind, staticmethod) and getter is _static(staticmethod, "__get__"):
        return _static_func(call)
    if issubclass(call_kind, classmethod) and getter is _static(classmethod, "__get__"):
        inner = _class_func(call)
        if type(inner) is _FUNCTION or _static(type(inner), "__get__") is _NOTHING:
            bound.append((kind,))
            return inner
        return _NOTHING  # a classmethod over another descriptor: chained, unknown
    if call_kind in _METHOD_DESCRIPTORS:  # D2's own: its __get__ binds like a method
        return getter(call, obj, kind)
    return _NOTHING


def _resolve(fn: Any) -> _Target:
    """Follow ``fn`` to the signature Python binds a call of it with, as
    ``inspect.signature(fn, follow_wrapped=False)`` does, except that D2's own
    forwarders are followed, an inherited ``__signature__`` is ignored, and only
    what a callable really is counts: ``__code__`` and ``__defaults__`` are read
    from real functions only, any other callable is bound through
    ``type(obj).__call__`` looked up statically (a transparent proxy forwards the
    wrapped function's ``__code__``, but Python calls the proxy's ``__call__``),
    and a non-function with ``__wrapped__`` is a wrapper like any other."""
    target = _Target()
    bound: list[tuple[Any, ...]] = []  # outermost first
    wrapper = False  # passed through a non-function with __wrapped__
    try:
        for _ in range(100):
            kind = type(fn)
            if kind is _METHOD or kind in _BOUND_METHODS:
                bound.append((fn.__self__,))
                target.object_first = True
                fn = fn.__func__
                continue
            if kind is _FUNCTION:
                code = fn.__code__
                wrapped = getattr(fn, "__wrapped__", None)
                if wrapped is not None and code in _FORWARDERS:
                    fn = wrapped
                    continue
                sig = _declared_signature(fn, kind)
                if sig is _OPAQUE:
                    break
                if sig is not None:
                    _declared(target, sig, fn)
                    break
                defaults = fn.__defaults__
                target.function = (fn, code, defaults)
                kw_items: tuple[tuple[str, Any], ...] = ()
                if code.co_kwonlyargcount:  # else Python never reads __kwdefaults__
                    kw_defaults = fn.__kwdefaults__
                    target.kwdefaults = (fn, kw_defaults)
                    kw_items = _snapshot(target, kw_defaults) if kw_defaults is not None else ()
                target.spec = _spec_of_code(code, defaults or (), kw_items)
                target.forwarding = (wrapper or wrapped is not None) and bool(
                    code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS)
                )
                break
            if issubclass(kind, type) or not callable(fn):
                break  # a class (its constructor) or not callable: unknown
            sig = _declared_signature(fn, kind)
            if sig is _OPAQUE:
                break
            if sig is not None:
                _declared(target, sig, fn)
                break
            if issubclass(kind, functools.partial) and _static(kind, "__call__") is _PARTIAL_CALL:
                func, fixed, keywords = _partial_func(fn), _partial_args(fn), _partial_keywords(fn)
                target.partials.append((fn, func, fixed, keywords))
                bound.append(tuple(fixed))
                if fixed:
                    target.object_first = _in_class_body(func)
                target.fixed_kw = {**dict(_snapshot(target, keywords)), **target.fixed_kw}
                fn = func
                continue
            if issubclass(kind, staticmethod) and _static(kind, "__call__") is _static(
                staticmethod, "__call__"
            ):
                fn = _static_func(fn)  # a staticmethod object called directly
                continue
            if getattr(fn, "__wrapped__", None) is not None:
                wrapper = True  # a proxy or a class-based decorator: it may move arguments
            before = len(bound)
            fn = _call_of(fn, kind, bound)
            if len(bound) > before:
                target.object_first = True  # the callable object, or a class method's class
            if fn is _NOTHING:
                break
    except Exception:  # an attribute that raises: the signature is unknown
        target.spec = None
        wrapper = True
    if target.doubt:
        target.spec = None
        wrapper = True
    if target.spec is None:
        target.forwarding = wrapper
    target.leading = [value for values in reversed(bound) for value in values]
    return target


def _in_class_body(fn: Any) -> bool:
    """Whether ``fn`` is a function defined in a class body (a method, called through
    its class: ``functools.partial(Payments.refund, client)``), by its qualified
    name: ``Payments.refund``, not ``refund`` nor ``make.<locals>.refund``."""
    if type(fn) is not _FUNCTION:
        return False
    qualname = fn.__qualname__
    if type(qualname) is not str:
        return False
    parts = qualname.split(".")
    return len(parts) > 1 and parts[-2] != "<locals>"


def bound_method_type(cls: type[T]) -> type[T]:
    """Declare that instances of D2's own class ``cls`` are called like bound
    methods: ``__func__`` with ``__self__`` first."""
    _BOUND_METHODS.add(cls)
    return cls


def method_descriptor_type(cls: type[T]) -> type[T]:
    """Declare that D2's own descriptor class ``cls`` binds like a function: its
    ``__get__`` may be called while binding a ``__call__`` it is found as."""
    _METHOD_DESCRIPTORS.add(cls)
    return cls


class Arguments:
    """Reads one named argument of a call, defaults applied, exactly as the
    signature of the callable actually called binds it: built once per guarded
    callable (through partials, bound methods, callable objects and their static or
    class ``__call__``, a declared ``__signature__`` and D2's own wrappers). A
    callable without one (a builtin) binds keywords only; its positional arguments
    read as ``UNBOUND`` (and fail closed). A *forwarding* wrapper (``__wrapped__``
    on a function or any other callable, a transparent proxy included, whose own
    signature takes ``*args``/``**kwargs`` or is unknown) binds to its own
    parameters: any other name reads as ``UNBOUND``, since the wrapper may reorder
    or inject arguments before the wrapped function sees them.

    Python reads a function's ``__code__``, ``__defaults__`` and ``__kwdefaults__``,
    and a partial's ``func``, ``args`` and ``keywords``, at each call; the app may
    replace them (or edit the dicts) after the guard wrapped the function. Every
    reading of a call starts with :meth:`current`, which rebinds when any of them
    changed, so what is judged, shown and digested is what the function receives."""

    __slots__ = (
        "code_seen",
        "contents",
        "defaults",
        "defaults_seen",
        "dicts",
        "doubt",
        "extra",
        "fixed",
        "forwarding",
        "hidden",
        "in_class",
        "keywords",
        "kwdefaults",
        "latest",
        "method",
        "opaque",
        "partials",
        "plans",
        "positional_only",
        "positions",
        "receiver",
        "source",
        "varargs",
        "varkw",
        "watched",
    )

    def __init__(self, fn: Any) -> None:
        self.source = fn
        self.latest = self  # the binding of the callable as it is now (see current())
        self.positions: dict[str, int] = {}
        self.defaults: dict[str, Any] = {}
        self.fixed: dict[str, Any] = {}  # values a partial binds for good
        self.extra: dict[str, Any] = {}  # a partial's keywords that **kwargs collects
        self.keywords: frozenset[str] = frozenset()
        self.positional_only: frozenset[str] = frozenset()
        # (name, first index of the call's args it collects, values bound before)
        self.varargs: tuple[str, int, tuple[Any, ...]] | None = None
        self.varkw: str | None = None
        self.plans: dict[Any, Any] = {}  # evaluator's per-grant reading plans (memo)
        self.method = False  # set by the guard for methods: explain() gets no self
        # parameters that are not part of the call an approval covers or a log shows
        # (a framework's run context); set by adapters
        self.hidden: frozenset[str] = frozenset()
        # the parameter a value bound before the call fills with the object a method
        # runs on (a bound method's object, a partial's first argument of a method)
        self.receiver: str | None = None
        # a function defined in a class body: called as a method, its first
        # parameter is the object (whatever its name); the guard clears it for a
        # staticmethod
        self.in_class = _in_class_body(fn)
        target = _resolve(fn)
        # what the binding was made from (see current())
        self.watched: Any = None
        self.code_seen: Any = None
        self.defaults_seen: Any = None
        if target.function is not None:
            self.watched, self.code_seen, self.defaults_seen = target.function
        self.kwdefaults = target.kwdefaults
        self.partials = tuple(target.partials)
        self.dicts = tuple(target.dicts)
        # more to check than a function's __code__ and __defaults__
        self.contents = bool(self.partials or self.dicts or self.kwdefaults)
        # a declared __signature__ that gives a default otherwise than the wrapped
        # function does now: what a call binds to is unknown (opaque, forwarding),
        # and no approval can show what would run
        self.doubt = target.doubt
        spec = target.spec
        self.opaque = spec is None
        self.forwarding = target.forwarding
        if spec is None:
            return
        names = spec.positional
        npos = len(names)
        leading = target.leading
        skip = len(leading)
        for i, value in enumerate(leading[:npos]):
            self.fixed[names[i]] = value
        if target.object_first and skip and npos:
            self.receiver = names[0]
        self.positions = {names[i]: i - skip for i in range(skip, npos)}
        self.positional_only = frozenset(names[: spec.posonly])
        self.keywords = frozenset(names[max(spec.posonly, skip) :] + spec.kwonly)
        self.defaults.update(spec.defaults)
        for key, value in target.fixed_kw.items():  # a partial's keywords: overridable
            if key in self.keywords:
                self.defaults[key] = value
            else:
                self.extra[key] = value
        if spec.varargs is not None:
            self.varargs = (spec.varargs, max(npos - skip, 0), tuple(leading[npos:]))
        self.varkw = spec.varkw

    def current(self) -> Arguments:
        """The binding of the guarded callable as Python would bind a call of it now:
        this one, or one made again when a function's code or defaults, or a
        partial's function, arguments or keywords, are no longer those read when it
        was made (replaced, or the dicts edited). Cheap when nothing changed: a few
        identity checks."""
        latest = self.latest
        fn = latest.watched
        if fn is not None and (
            fn.__code__ is not latest.code_seen or fn.__defaults__ is not latest.defaults_seen
        ):
            return self._rebind()
        if latest.contents and not _unchanged(latest):
            return self._rebind()
        if latest is not self:  # set on this one by the guard and adapters: kept
            latest.hidden, latest.method = self.hidden, self.method
            latest.in_class = self.in_class
        return latest

    def _rebind(self) -> Arguments:
        fresh = Arguments(self.source)
        fresh.hidden, fresh.method = self.hidden, self.method
        fresh.in_class = self.in_class
        self.latest = fresh  # one assignment: another thread sees the old or the new
        return fresh

    def object_name(self) -> str | None:
        """The parameter that holds the object a method runs on (its ``self`` or
        ``cls``, whatever its name), or ``None`` when the callable is no method."""
        if self.receiver is not None:
            return self.receiver
        if (self.method or self.in_class) and not self.opaque:
            first = next((n for n, i in self.positions.items() if i == 0), None)
            if first is not None and first not in self.fixed:
                return first
        return None

    def declares(self, name: str) -> bool:
        """Whether ``name`` is a parameter of the signature a call binds to."""
        return (
            name in self.positions
            or name in self.keywords
            or name in self.fixed
            or (self.varargs is not None and name == self.varargs[0])
            or name == self.varkw
        )

    def takes(self, name: str) -> bool:
        """Whether a call can pass ``name`` at all (always, when the signature is
        unknown or collects ``**kwargs``)."""
        if self.opaque or self.varkw is not None:
            return True
        return self.declares(name)

    def position(self, name: str) -> int | None:
        """Where ``name`` is read from when a plain lookup is enough: its position
        (-1 when keyword-only), or None when :meth:`value` must decide."""
        if self.opaque or name not in self.keywords or name in self.fixed:
            return None
        return self.positions.get(name, -1)

    def collected(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What ``**kwargs`` collects in this call: the keywords no parameter takes
        by name (a partial's first)."""
        passed = {k: v for k, v in kwargs.items() if k not in self.keywords}
        return {**self.extra, **passed} if self.extra else passed

    def value(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], missing: Any) -> Any:
        """The value ``name`` gets in this call (its default when not passed), or
        ``missing``. The ``*args`` / ``**kwargs`` parameters read as the tuple and
        dict they collect, unless the call passed a keyword of that very name."""
        if self.opaque:
            if self.forwarding:
                return UNBOUND  # a wrapper of unknown signature: where it passes on is unknown
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
        varargs = self.varargs
        if varargs is not None and name == varargs[0]:
            return varargs[2] + args[varargs[1] :]
        if self.varkw is not None and name == self.varkw:
            # a keyword passed under the very name of ``**kwargs`` (``f(**{"opts": 1})``
            # of ``def f(**opts)``, a client's argument ``arguments`` through a
            # gateway) is what a rule on that name reads, not the whole dict
            if name in kwargs:
                return kwargs[name]
            if name in self.extra:
                return self.extra[name]
            return self.collected(kwargs)
        if name in self.defaults or i is not None or name in self.keywords:
            return self.defaults.get(name, missing)
        # not a parameter of the signature: it can only travel in **kwargs or *args
        if self.forwarding:
            return UNBOUND  # where the wrapper passes it on is unknown: fail closed
        if self.varkw is not None and name in kwargs:
            return kwargs[name]
        if self.varkw is not None and name in self.extra:
            return self.extra[name]
        if varargs is not None and len(varargs[2]) + len(args) > varargs[1]:
            return UNBOUND  # maybe inside *args: cannot tell, fail closed
        return missing


def _unchanged(arguments: Arguments) -> bool:
    """Whether the partials and keywords dicts ``arguments`` was made from still
    hold what it read: the same objects, compared by identity (an equal value of
    another type, ``True`` for ``1``, is a change); and the function's
    ``__kwdefaults__``, when it has keyword-only parameters."""
    try:
        if arguments.kwdefaults is not None:
            fn, kwdefaults = arguments.kwdefaults
            if fn.__kwdefaults__ is not kwdefaults:
                return False
        for partial, func, fixed, keywords in arguments.partials:
            if (
                _partial_func(partial) is not func
                or _partial_args(partial) is not fixed
                or _partial_keywords(partial) is not keywords
            ):
                return False
        for mapping, keys, values in arguments.dicts:
            if not (
                len(mapping) == len(keys)
                and all(map(operator.is_, mapping, keys))
                and all(map(operator.is_, mapping.values(), values))
            ):
                return False
    except Exception:  # a dict changed size while read: changed
        return False
    return True


POSITIONAL = "*args"  # positional arguments of a callable whose signature is unknown
KEYWORDS = "**kwargs"  # keywords that cannot be shown by their own name (see below)


def bound_arguments(
    arguments: Arguments | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    keep_self: bool = False,
) -> dict[str, Any]:
    """Every argument of a call, defaults applied: what approvals digest
    (``keep_self=True``: a method's object is part of the call) and what approvers
    and decision logs are shown (``self`` / ``cls`` left out).

    Each parameter appears under its name (a ``*args`` parameter as the list it
    collects). A keyword that a ``**kwargs`` parameter collects appears under its own
    name too, unless that name is one of the function's parameters or is not an
    identifier: then it appears in a dict under ``"**kwargs"``, never merged with the
    parameter (with ``def send(to, /, **headers)``, ``send("a", to="b")`` is
    ``{"to": "a", "**kwargs": {"to": "b"}}``). So two calls that give the function
    different arguments never look the same, and each name shows what an input rule
    on it reads. A callable whose signature is unknown shows its keywords the same
    way and its positional arguments as a list under ``"*args"``."""
    bound: dict[str, Any] = {}
    if arguments is not None:
        arguments = arguments.current()  # the defaults the function has now
    if arguments is None or arguments.opaque:
        _add_keywords(bound, kwargs, None)
        if args:
            bound[POSITIONAL] = list(args)
        return bound
    # values bound before the call first (a bound method's object, a partial's
    # leading arguments), in parameter order; then the call's, keyword-only last
    fixed = arguments.fixed
    names = [*fixed]
    names += sorted(
        {*arguments.positions, *arguments.keywords} - fixed.keys(),
        key=lambda n: arguments.positions.get(n, 1 << 30),
    )
    if not keep_self and arguments.method and names and arguments.positions.get(names[0]) == 0:
        names = names[1:]
    for name in names:
        if name in arguments.hidden:
            continue
        value = arguments.value(name, args, kwargs, UNBOUND)
        if value is not UNBOUND:
            bound[name] = value
    if arguments.varargs is not None:
        name, start, lead = arguments.varargs
        bound[name] = [*lead, *args[start:]]
    if arguments.varkw is not None:
        _add_keywords(bound, arguments.collected(kwargs), arguments)
    return bound


def _add_keywords(
    bound: dict[str, Any], extra: dict[str, Any], arguments: Arguments | None
) -> None:
    """Add keywords no parameter takes by name to ``bound``: by their own name, or
    under ``"**kwargs"`` when that name is a parameter's or not an identifier."""
    nested: dict[str, Any] = {}
    for key, value in extra.items():
        if (
            type(key) is str
            and key.isidentifier()
            and (arguments is None or not arguments.declares(key))
        ):
            bound[key] = value
        else:
            nested[key] = value
    if nested:
        bound[KEYWORDS] = nested
