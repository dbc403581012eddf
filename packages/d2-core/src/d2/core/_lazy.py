"""What a guarded tool hands back to be consumed later: streams and lazy bodies.

* :func:`stream_sync` / :func:`stream_async` stream an ``on_deny`` fallback for a
  generator tool (a value is one item, an iterable its items, ``None`` nothing).
* :func:`rechecked` wraps a generator, an async generator or a coroutine so that
  a check runs when its body starts, before it reads the call's arguments: the
  guard passes :meth:`~d2.core.evaluate.Evaluator.recheck`. A refusal then is
  raised by the first ``next()``, ``anext()`` or ``await`` (or, with ``on_deny``,
  the fallback is streamed or returned); ``send``, ``throw`` and ``close`` (and
  their async forms) reach the tool's own generator.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from .errors import PermissionDeniedError

__all__ = ["LAZY", "Fallback", "rechecked", "resolve", "stream_async", "stream_sync"]

Fallback = Callable[[PermissionDeniedError], Any] | None
# the results whose body has not started yet (looked up by id: a metaclass can
# make a class compare equal to these)
_ITERABLE_COROUTINE = 0x100  # inspect.CO_ITERABLE_COROUTINE: a types.coroutine generator
LAZY = frozenset(map(id, (types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType)))


def stream_sync(value: Any) -> Any:
    """``value`` as the items of a stream (see the module docstring)."""
    if value is None:
        return
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        yield value
    else:
        yield from value


async def stream_async(value: Any) -> Any:
    """``value`` (awaited first when awaitable) as the items of an async stream."""
    if hasattr(value, "__await__"):
        value = await value
    if value is None:
        return
    if hasattr(value, "__aiter__"):
        async for item in value:
            yield item
    elif isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        yield value
    else:
        for item in value:
            yield item


async def resolve(value: Any) -> Any:
    """``value``, awaited when it is awaitable."""
    return (await value) if hasattr(value, "__await__") else value


def _started_sync(recheck: Callable[[], None], body: Any, fallback: Fallback) -> Any:
    try:
        recheck()
    except PermissionDeniedError as err:
        if fallback is None:
            raise
        yield from stream_sync(fallback(err))
        return None
    return (yield from body)


@types.coroutine
def _started_legacy(recheck: Callable[[], None], body: Any, fallback: Fallback) -> Any:
    """:func:`_started_sync` for a generator-based coroutine (``types.coroutine``):
    awaitable, as the tool's own result was."""
    return (yield from _started_sync(recheck, body, fallback))


async def _started_async(recheck: Callable[[], None], body: Any, fallback: Fallback) -> Any:
    try:
        recheck()
    except PermissionDeniedError as err:
        if fallback is None:
            raise
        async for item in stream_async(fallback(err)):
            yield item
        return
    try:
        item = await body.__anext__()
    except StopAsyncIteration:
        return
    while True:  # asend, athrow and aclose reach the tool's own generator
        try:
            value = yield item
        except GeneratorExit:
            await body.aclose()
            raise
        except BaseException as exc:
            step = body.athrow(exc)
        else:
            step = body.asend(value)
        try:
            item = await step
        except StopAsyncIteration:
            return


async def _started_await(recheck: Callable[[], None], body: Any, fallback: Fallback) -> Any:
    try:
        recheck()
    except PermissionDeniedError as err:
        body.close()  # never runs (and never warns that it was not awaited)
        if fallback is None:
            raise
        return await resolve(fallback(err))
    return await body


def rechecked(recheck: Callable[[], None], result: Any, fallback: Fallback) -> Any:
    """``result`` (a generator, an async generator or a coroutine) with
    ``recheck`` run when its body starts."""
    kind = type(result)
    if kind is types.GeneratorType:
        if result.gi_code.co_flags & _ITERABLE_COROUTINE:  # awaitable: keep it so
            return _started_legacy(recheck, result, fallback)
        return _started_sync(recheck, result, fallback)
    if kind is types.AsyncGeneratorType:
        return _started_async(recheck, result, fallback)
    return _started_await(recheck, result, fallback)
