"""``d2_guard``: the decorator that puts the policy in front of a function.

The wrapper asks the instance's :class:`~d2.core.evaluate.Evaluator` before the
function runs; a denial raises :class:`PermissionDeniedError` (or returns the
``on_deny`` fallback) and the function never runs. The check is pure memory, so a
sync tool called inside a running event loop runs inline; ``strict=True`` (or
``D2_STRICT_SYNC=1``) turns that case into an error, and ``await tool.aio(...)``
runs the sync tool in a worker thread with the caller's context.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._functions import (
    Arguments,
    bound_method_type,
    first_parameter,
    forwards_unchanged,
    is_async_generator_function,
    is_coroutine_function,
    is_generator_function,
    method_descriptor_type,
)
from ._lazy import LAZY, rechecked, resolve, stream_async, stream_sync
from .errors import ConfigurationError, D2Error, PermissionDeniedError
from .evaluate import evaluator_for
from .threads import run_in_thread

if TYPE_CHECKING:
    import inspect

    from .evaluate import Evaluator, Kept
    from .policy.model import ToolRules
    from .policy.output import OutputRules
    from .telemetry import Metrics

__all__ = ["d2", "d2_guard"]

F = TypeVar("F", bound=Callable[..., Any])


class _Raise:
    def __repr__(self) -> str:
        return "<raise>"


RAISE: Any = _Raise()
# Guards made per request (adapters guarding client-named tools) must not grow the
# registry without bound; past this many ids, new ones are guarded but not listed.
_MAX_REGISTERED = 100_000  # default ``on_deny``: raise the denial


def _fallback(on_deny: Any, is_async: bool, tool_id: str) -> Callable[[PermissionDeniedError], Any]:
    """Build ``handle(err)`` from ``on_deny``: raise, return a value, or call it
    with the error when its signature accepts one positional argument."""
    if on_deny is RAISE:

        def reraise(err: PermissionDeniedError) -> Any:
            raise err

        return reraise
    if not callable(on_deny):
        return lambda err: on_deny
    import inspect  # only for callables given as on_deny, at decoration time

    if not is_async and (
        is_coroutine_function(on_deny) or is_coroutine_function(getattr(on_deny, "__call__", None))  # noqa: B004
    ):
        raise ConfigurationError(
            f"on_deny for the sync tool {tool_id!r} is an async function, which a sync "
            "call cannot await; give a sync callable or a plain value"
        )
    try:
        sig = inspect.signature(on_deny)
    except (TypeError, ValueError):
        return lambda err: on_deny(err)
    try:
        sig.bind(None)
        return lambda err: on_deny(err)
    except TypeError:
        pass
    try:
        sig.bind()
    except TypeError:
        raise ConfigurationError(
            f"on_deny {on_deny!r} for {tool_id!r} must accept one argument (the "
            "PermissionDeniedError) or none"
        ) from None
    return lambda err: on_deny()


def _timed_call(
    evaluator: Evaluator,
    tool_id: str,
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    *,
    is_async: bool,
) -> Any:
    """Call ``fn``; with metrics on, record how long it ran (for a coroutine
    function the returned awaitable is timed when awaited)."""
    timer = evaluator.timer
    if timer is None:
        return fn(*args, **kwargs)
    if is_async:
        return _timed_await(timer, tool_id, fn(*args, **kwargs))
    start = perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        timer.ran(tool_id, perf_counter() - start)


async def _timed_await(timer: Metrics, tool_id: str, awaitable: Any) -> Any:
    start = perf_counter()
    try:
        return await awaitable
    finally:
        timer.ran(tool_id, perf_counter() - start)


async def _finish_later(
    finish: Callable[..., Any], rules: ToolRules, out: OutputRules, awaitable: Any
) -> Any:
    return finish(rules, out, await awaitable)


def _build(
    fn: Callable[..., Any], tool_id: str, on_deny: Any, strict: bool | None, instance_name: str
) -> Callable[..., Any]:
    """The wrapper. Its hot path is ``check`` (steps 1-3); only when the policy has
    more for this tool (``rules.guarded``) does it ``admit`` (steps 4-7) and
    ``finish`` (step 8, output rules). Denials never reach the tool; denials raised
    by the tool's own code (a nested guarded call) are not this guard's and pass
    through ``on_deny`` untouched."""
    evaluator = evaluator_for(instance_name)
    name = getattr(fn, "__name__", tool_id)
    arguments = Arguments(fn)
    if len(evaluator.guarded_tools) < _MAX_REGISTERED or tool_id in evaluator.guarded_tools:
        evaluator.guarded_tools[tool_id] = arguments  # for allowed_tools() and explain()
    check, admit, finish = evaluator.check, evaluator.admit, evaluator.finish
    admit_async, passed = evaluator.admit_async, evaluator.passed
    is_async = is_coroutine_function(fn)
    is_agen = is_async_generator_function(fn)
    is_gen = is_generator_function(fn)
    handle = _fallback(on_deny, is_async or is_agen, tool_id)
    raising = on_deny is RAISE
    wrapper: Callable[..., Any]
    recheck, judged = evaluator.recheck, evaluator.judged
    fallback = None if raising else handle

    # A generator or async generator function always returns a body that starts
    # later: what its call was judged on is kept by admit(). A tool that returns one
    # (or a coroutine) now and then is judged again (step 4) when it returns it,
    # unless an approval was used: then what admit() kept (the digest) is needed.
    later = is_gen or is_agen

    def lazy(keep: list[Kept] | None, rules: ToolRules, args: Any, kwargs: Any, result: Any) -> Any:
        # the tool's body starts later than the call: its arguments are checked
        # again when it starts
        kept = keep[0] if keep else judged(rules, args, kwargs, arguments)
        if kept is None:  # audit mode: nothing is refused
            return result
        again = functools.partial(recheck, kept, rules, args, kwargs, arguments)
        return rechecked(again, result, fallback)

    def sanitized(rules: ToolRules, out: OutputRules, result: Any) -> Any:
        # Output rules reach whatever the caller will actually see: items of a
        # (async) iterator, the value of an awaitable (a sync wrapper around an
        # async function, an object with async __call__), or the result itself.
        if is_agen or (hasattr(result, "__aiter__") and hasattr(result, "__anext__")):
            return (finish(rules, out, item) async for item in result)
        if is_gen or (hasattr(result, "__next__") and hasattr(result, "__iter__")):
            return (finish(rules, out, item) for item in result)
        if hasattr(result, "__await__"):
            return _finish_later(finish, rules, out, result)
        return finish(rules, out, result)

    if is_async:

        async def slow_async(rules: ToolRules, args: Any, kwargs: Any) -> Any:
            # a store may be asked (budgets, approvals, a request that feeds a held
            # one): without blocking the loop
            keep: list[Kept] | None = (
                [] if rules.approvals or (later and rules.conditional) else None
            )
            if rules.budgeted or (rules.guarded and evaluator.holding):
                out = await admit_async(rules, args, kwargs, arguments, keep)
            elif rules.guarded:
                out = admit(rules, args, kwargs, arguments, keep=keep)
            else:
                out = None
                if evaluator.wants_args:
                    passed(rules, args, kwargs, arguments)
            timer = evaluator.timer
            if timer is None:
                result = await fn(*args, **kwargs)
            else:
                start = perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                finally:
                    timer.ran(tool_id, perf_counter() - start)
            if (keep or rules.conditional) and id(type(result)) in LAZY:
                result = lazy(keep, rules, args, kwargs, result)
            return result if out is None else sanitized(rules, out, result)

        if raising:

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                rules = check(tool_id)
                if rules.guarded or evaluator.slow:
                    return await slow_async(rules, args, kwargs)
                return await fn(*args, **kwargs)
        else:

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    rules = check(tool_id)
                    keep: list[Kept] | None = (
                        [] if rules.approvals or (later and rules.conditional) else None
                    )
                    if rules.budgeted or (rules.guarded and evaluator.holding):
                        out = await admit_async(rules, args, kwargs, arguments, keep)
                    elif rules.guarded:
                        out = admit(rules, args, kwargs, arguments, keep=keep)
                    else:
                        out = None
                        if evaluator.wants_args:
                            passed(rules, args, kwargs, arguments)
                except PermissionDeniedError as err:
                    return await resolve(handle(err))
                result = await _timed_call(evaluator, tool_id, fn, args, kwargs, is_async=True)
                if (keep or rules.conditional) and id(type(result)) in LAZY:
                    result = lazy(keep, rules, args, kwargs, result)
                if out is None:
                    return result
                try:
                    return sanitized(rules, out, result)
                except PermissionDeniedError as err:
                    return await resolve(handle(err))

    else:

        def in_loop() -> None:
            asyncio = sys.modules.get("asyncio")  # not imported: no loop can be running
            if asyncio is not None and asyncio._get_running_loop() is not None:
                raise D2Error(
                    f"sync tool {tool_id!r} called inside a running event loop while strict "
                    "sync mode is on (strict=True or D2_STRICT_SYNC=1): it would block the "
                    f"loop. Use `await {name}.aio(...)` or make the tool async"
                )

        async def budgeted_stream(rules: ToolRules, args: Any, kwargs: Any) -> Any:
            # An async generator tool with budgets or approvals: the store is asked
            # with the async client when iteration starts, never blocking the loop.
            try:
                out = await admit_async(rules, args, kwargs, arguments)
            except PermissionDeniedError as err:
                if raising:
                    raise
                async for item in stream_async(handle(err)):
                    yield item
                return
            result = _timed_call(evaluator, tool_id, fn, args, kwargs, is_async=False)
            if out is not None:
                result = sanitized(rules, out, result)
            async for item in result:
                yield item

        def slow_sync(rules: ToolRules, args: Any, kwargs: Any) -> Any:
            if is_agen and (rules.budgeted or (rules.guarded and evaluator.holding)):
                return budgeted_stream(rules, args, kwargs)
            keep: list[Kept] | None = (
                [] if rules.approvals or (later and rules.conditional) else None
            )
            out = admit(rules, args, kwargs, arguments, keep=keep) if rules.guarded else None
            if out is None and not rules.guarded and evaluator.wants_args:
                passed(rules, args, kwargs, arguments)
            result = _timed_call(evaluator, tool_id, fn, args, kwargs, is_async=False)
            if (keep or rules.conditional) and id(type(result)) in LAZY:
                result = lazy(keep, rules, args, kwargs, result)
            return result if out is None else sanitized(rules, out, result)

        check_loop = not (is_agen or strict is False)
        if raising:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if check_loop and (strict or evaluator.strict):
                    in_loop()
                rules = check(tool_id)
                if rules.guarded or evaluator.slow:
                    return slow_sync(rules, args, kwargs)
                return fn(*args, **kwargs)
        else:
            stream = stream_async if is_agen else stream_sync if is_gen else None

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if check_loop and (strict or evaluator.strict):
                    in_loop()
                try:
                    rules = check(tool_id)
                    if is_agen and (rules.budgeted or (rules.guarded and evaluator.holding)):
                        return budgeted_stream(rules, args, kwargs)
                    keep: list[Kept] | None = (
                        [] if rules.approvals or (later and rules.conditional) else None
                    )
                    out = None
                    if rules.guarded:
                        out = admit(rules, args, kwargs, arguments, keep=keep)
                    if not rules.guarded and evaluator.wants_args:
                        passed(rules, args, kwargs, arguments)
                except PermissionDeniedError as err:
                    fallback = handle(err)
                    return fallback if stream is None else stream(fallback)
                result = _timed_call(evaluator, tool_id, fn, args, kwargs, is_async=False)
                if (keep or rules.conditional) and id(type(result)) in LAZY:
                    result = lazy(keep, rules, args, kwargs, result)
                if out is None:
                    return result
                try:
                    return sanitized(rules, out, result)
                except PermissionDeniedError as err:
                    return handle(err)

    functools.update_wrapper(wrapper, fn)
    forwards_unchanged(wrapper)  # a guard over this one binds like ``fn``
    wrapper.__dict__["tool_id"] = tool_id
    wrapper.__dict__["_d2_arguments"] = arguments
    if not (is_async or is_agen or is_gen):
        guarded = wrapper

        async def aio(*args: Any, **kwargs: Any) -> Any:
            return await run_in_thread(guarded, *args, **kwargs)

        aio.__name__ = f"{name}.aio"
        aio.__qualname__ = f"{getattr(fn, '__qualname__', name)}.aio"
        aio.__doc__ = f"Await {name} in a worker thread (caller's context kept)."
        wrapper.__dict__["aio"] = aio
    return wrapper


@bound_method_type  # a guard over it binds ``__func__`` with ``__self__`` first
class _BoundTool:
    """A guarded sync method bound to its instance (or class), with a bound ``.aio``."""

    __slots__ = ("__self__", "_guarded")

    def __init__(self, guarded: Callable[..., Any], owner: object) -> None:
        self._guarded = guarded
        self.__self__ = owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._guarded(self.__self__, *args, **kwargs)

    @property
    def __func__(self) -> Callable[..., Any]:
        """The guarded function (``__self__`` comes first), as on a bound method:
        what binding a call of this object reads."""
        return self._guarded

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Await the method in a worker thread with the caller's context."""
        return await self._guarded.aio(self.__self__, *args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._guarded, name)

    @property
    def __signature__(self) -> inspect.Signature:
        import inspect

        sig = inspect.signature(self._guarded)
        return sig.replace(parameters=list(sig.parameters.values())[1:])

    def __repr__(self) -> str:
        return f"<guarded method {self._guarded.__qualname__} of {self.__self__!r}>"


@method_descriptor_type  # as a ``__call__``, its ``__get__`` binds like a function's
class _GuardedMethod:
    """Descriptor for sync guarded methods and classmethods: binds like a method and
    keeps ``.aio`` bound too (a plain function attribute would lose ``self``)."""

    def __init__(self, guarded: Callable[..., Any], classmethod_: bool) -> None:
        self._guarded = guarded
        self._classmethod = classmethod_
        functools.update_wrapper(self, guarded)

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if self._classmethod:
            return _BoundTool(self._guarded, owner if owner is not None else type(obj))
        if obj is None:
            return self._guarded
        return _BoundTool(self._guarded, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._guarded(*args, **kwargs)


def _is_sync_plain(fn: Callable[..., Any]) -> bool:
    return not (
        is_coroutine_function(fn) or is_async_generator_function(fn) or is_generator_function(fn)
    )


def _looks_like_method(fn: Callable[..., Any]) -> bool:
    qual = getattr(fn, "__qualname__", "")
    if "." not in qual or qual.rsplit(".", 2)[-2] == "<locals>":
        return False
    return first_parameter(fn) == "self"


def _mark_method(guarded: Callable[..., Any]) -> None:
    """Tell explain() that calls of this tool start with self/cls."""
    guarded.__dict__["_d2_arguments"].method = True


def _default_id(fn: Any) -> str:
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        raise ConfigurationError(
            f'{fn!r} has no __qualname__ to name it by: give a tool id, @d2_guard("tool.id")'
        )
    return f"{getattr(fn, '__module__', None) or '__main__'}.{qualname}"


def _decorate(
    target: Any, tool_id: str | None, on_deny: Any, strict: bool | None, instance_name: str
) -> Any:
    if isinstance(target, (staticmethod, classmethod)):
        fn = target.__func__
        tid = tool_id or _default_id(fn)
        guarded = _build(fn, tid, on_deny, strict, instance_name)
        if isinstance(target, staticmethod):
            guarded.__dict__["_d2_arguments"].in_class = False  # no object: all arguments
            return staticmethod(guarded)
        _mark_method(guarded)
        if _is_sync_plain(fn):
            return _GuardedMethod(guarded, classmethod_=True)
        return classmethod(guarded)
    if not callable(target):
        raise ConfigurationError(f"d2_guard can only wrap functions, got {target!r}")
    tid = tool_id or _default_id(target)
    guarded = _build(target, tid, on_deny, strict, instance_name)
    if _looks_like_method(target):
        _mark_method(guarded)
        if _is_sync_plain(target):
            return _GuardedMethod(guarded, classmethod_=False)
    return guarded


@overload
def d2_guard(tool_id: F, /) -> F: ...
@overload
def d2_guard(
    tool_id: str | None = None,
    *,
    on_deny: Any = ...,
    strict: bool | None = None,
    instance_name: str = "default",
) -> Callable[[F], F]: ...
def d2_guard(
    tool_id: Any = None,
    *,
    on_deny: Any = RAISE,
    strict: bool | None = None,
    instance_name: str = "default",
) -> Any:
    """Guard a function with the policy: ``@d2_guard("billing:read")``.

    ``tool_id``: the id the policy names; bare ``@d2_guard`` uses
    ``module.qualname``. ``on_deny``: a value returned instead of raising, or a
    callable (sync or async) called with the :class:`PermissionDeniedError` when it
    takes one argument, else with none. For generator tools the fallback is
    streamed (``None`` streams nothing). ``strict``: refuse sync calls made inside a
    running event loop (default: ``D2_STRICT_SYNC``). ``instance_name``: which
    configured instance decides.

    Works on functions, ``async def``, methods, static and class methods and
    (async) generator functions, decided when called (an async generator tool with
    budgets or approvals is decided when iteration starts, so its store is asked
    without blocking the event loop). A generator, async generator or coroutine
    returned by a tool whose arguments decide the call (input rules, approvals)
    is checked again when its body starts: arguments changed since the call are
    refused by its first step. Sync tools get
    ``await tool.aio(...)``, which runs them in a worker thread.
    """
    if tool_id is not None and not isinstance(tool_id, str):
        if callable(tool_id) or isinstance(tool_id, (staticmethod, classmethod)):
            return _decorate(tool_id, None, on_deny, strict, instance_name)
        raise ConfigurationError(f"tool_id must be a string, got {tool_id!r}")
    if tool_id is not None and (not tool_id or tool_id != tool_id.strip()):
        raise ConfigurationError(f"tool_id {tool_id!r} is empty or has surrounding spaces")

    def decorator(fn: F) -> F:
        return _decorate(fn, tool_id, on_deny, strict, instance_name)  # type: ignore[no-any-return]

    return decorator


d2 = d2_guard
