"""Carry the user across threads.

A ``contextvars`` context does not follow work into a thread the app starts itself
(``threading.Thread``, ``executor.submit``): the worker would see no user, and
every guarded call there would be denied. These helpers carry it explicitly.

- :func:`submit_with_context`: ``executor.submit`` with the caller's user and
  request (or an explicit ``actor``).
- :func:`thread_entrypoint`: a decorator for functions that start a thread's work;
  they run as the ``actor=`` passed to them, or as the user current where called.
- :func:`run_in_thread`: await a sync function in the loop's thread pool with the
  caller's context.

Each runs the work in a copy of the context, so the user set for it never leaks
into the thread's next job. Without a user to run as they raise
:class:`~d2.core.errors.D2NoContextError` before any work starts (fail closed).
"""

from __future__ import annotations

import contextvars
import functools
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._functions import is_coroutine_function
from .context import UserContext, attach, current_context, detach
from .errors import D2NoContextError

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

__all__ = ["run_in_thread", "submit_with_context", "thread_entrypoint"]

P = ParamSpec("P")
R = TypeVar("R")


def _actor(actor: object, where: str) -> UserContext:
    """The context to run as: ``actor``, else the current one; never none."""
    if actor is not None:
        if not isinstance(actor, UserContext):
            raise TypeError(
                f"actor must be a d2.UserContext, for example UserContext(user_id='bob', "
                f"roles=['viewer']), not {type(actor).__name__}"
            )
        if actor.user_id is None:
            raise D2NoContextError(
                f"{where}: the actor has no user_id; give UserContext a user_id",
                reason="no_user",
            )
        return actor
    ctx = current_context()
    if ctx.user_id is None:
        raise D2NoContextError(
            f"{where}: no user context is set and no actor= was given; call "
            "d2.set_user(user_id, roles=[...]) first or pass actor=UserContext(...)",
            reason="no_user",
        )
    return ctx


def _context_as(actor: UserContext) -> contextvars.Context:
    ctx = contextvars.copy_context()
    ctx.run(attach, actor)
    return ctx


def _carried(result: Any, actor: UserContext, ctx: contextvars.Context) -> Any:
    """``result``, with the work it still holds bound to ``actor``: lazy work (a
    generator or any other iterator, an async generator or async iterator, a
    coroutine or any other awaitable) runs when it is consumed, in the consumer's
    context, so each of its steps runs as ``actor`` instead (a sync step in ``ctx``,
    the context the work was made in). Lazy work comes back wrapped: a generator,
    an async generator or a coroutine that yields, or returns, the same values."""
    if isinstance(result, types.GeneratorType):
        return _steps_in(result, ctx)
    if isinstance(result, types.AsyncGeneratorType):
        return _async_steps_as(result, actor)
    if isinstance(result, types.CoroutineType):
        return _awaited_as(result, actor)
    kind = type(result)
    if hasattr(kind, "__next__"):  # map(), a custom iterator: its __next__ does the work
        return _items_in(result, ctx)
    if hasattr(kind, "__anext__"):
        return _async_items_as(result, actor)
    if hasattr(kind, "__await__"):
        return _awaited_as(result, actor)
    return result


def _items_in(iterator: Any, ctx: contextvars.Context) -> Generator[Any, None, None]:
    while True:
        try:
            item = ctx.run(next, iterator)
        except StopIteration:
            return
        yield item


async def _async_items_as(iterator: Any, actor: UserContext) -> AsyncGenerator[Any, None]:
    while True:
        token = attach(actor)
        try:
            item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        finally:
            detach(token)
        yield item


def _steps_in(gen: Generator[Any, Any, Any], ctx: contextvars.Context) -> Generator[Any, Any, Any]:
    try:
        value = None
        while True:
            try:
                item = ctx.run(gen.send, value)
            except StopIteration as stop:
                return stop.value
            value = yield item
    finally:
        ctx.run(gen.close)


async def _async_steps_as(
    agen: AsyncGenerator[Any, Any], actor: UserContext
) -> AsyncGenerator[Any, Any]:
    try:
        value = None
        while True:
            token = attach(actor)
            try:
                item = await agen.asend(value)
            except StopAsyncIteration:
                return
            finally:
                detach(token)
            value = yield item
    finally:
        token = attach(actor)
        try:
            await agen.aclose()
        finally:
            detach(token)


async def _awaited_as(coro: Awaitable[Any], actor: UserContext) -> Any:
    token = attach(actor)
    try:
        return await coro
    finally:
        detach(token)


def _caller_as(actor: UserContext) -> Callable[[Callable[..., Any], Any, Any], Any]:
    """A runner of ``fn(*args, **kwargs)`` in a copy of the caller's context (made
    now, in the caller's thread) with ``actor`` as the user."""
    ctx = _context_as(actor)

    def call(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        return _carried(ctx.run(fn, *args, **kwargs), actor, ctx)

    return call


def submit_with_context(
    executor: Executor,
    fn: Callable[..., R],
    /,
    *args: Any,
    actor: UserContext | None = None,
    **kwargs: Any,
) -> Future[R]:
    """``executor.submit(fn, *args, **kwargs)``, run as the current user (the same
    request: history and facts are shared) or as ``actor``. When ``fn`` returns a
    generator or a coroutine, its body runs as that user too, wherever it is consumed.

    Raises ``TypeError`` when ``actor`` is not a :class:`UserContext`, and
    :class:`D2NoContextError` when there is no user to run as (nothing is submitted).
    """
    run = _caller_as(_actor(actor, f"submit_with_context({_name(fn)})"))
    return executor.submit(run, fn, args, kwargs)


@overload
def thread_entrypoint(require_actor: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def thread_entrypoint(
    require_actor: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def thread_entrypoint(require_actor: Any = False) -> Any:
    """Decorator for a function that starts a thread's work (a worker loop, a job).

    The decorated function takes an extra keyword ``actor`` (a
    :class:`UserContext`), which it does not pass on: the function runs as that
    user. Without ``actor`` it runs as the user current where it is called, unless
    ``require_actor=True``. No user to run as raises :class:`D2NoContextError`; an
    ``actor`` that is not a ``UserContext`` raises ``TypeError``. The caller's own
    context is left as it was. Works on ``def`` and ``async def`` functions, and on
    generators (each step runs as the actor, wherever the generator is consumed).
    """
    if callable(require_actor):  # used bare: @thread_entrypoint
        return thread_entrypoint(False)(require_actor)
    required = bool(require_actor)

    def pick(fn: Callable[..., Any], kwargs: dict[str, Any]) -> UserContext:
        actor = kwargs.pop("actor", None)
        where = f"{_name(fn)} (thread_entrypoint)"
        if required and actor is None:
            raise D2NoContextError(
                f"{where} requires actor=UserContext(...) (require_actor=True)",
                reason="no_user",
            )
        return _actor(actor, where)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if is_coroutine_function(fn):
            coro_fn: Callable[..., Awaitable[Any]] = fn  # type: ignore[assignment]

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                actor = pick(fn, kwargs)
                token = attach(actor)
                try:
                    # what it returns may still hold work: bind that to the actor too
                    return _carried(await coro_fn(*args, **kwargs), actor, _context_as(actor))
                finally:
                    try:
                        detach(token)
                    except ValueError:  # finished in another context: nothing to restore
                        pass

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            return _caller_as(pick(fn, kwargs))(fn, args, kwargs)

        return run

    return decorate


async def run_in_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Await ``fn(*args, **kwargs)`` run in the loop's default thread pool with the
    caller's context (user and request scope) carried over."""
    import asyncio

    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, fn, *args, **kwargs)
    return await loop.run_in_executor(None, call)


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
