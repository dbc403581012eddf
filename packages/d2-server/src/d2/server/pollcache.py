"""A replica's cache of poll state that cannot go stale.

A poll (``GET /v1/policy/bundle``) decides on :class:`~d2.server.storage.PollState`,
one row per token. Reading it from PostgreSQL costs a thread hop and a join per
request. :class:`PollCache` keeps each token's state with the *poll epoch* it was
read under (:meth:`~d2.server.storage.Storage.poll_epoch`: a random token that
every write to the tables a poll reads replaces, in the same transaction, by
triggers), and serves it only to a request that read the same epoch.

Each entry is kept under the epoch read in the same snapshot as the state (one
statement), so an entry always matches its epoch exactly, even after a database
is restored from a backup. The epoch is read once per request *that started
before the read did*: reads are
coalesced (:class:`EpochReader`), so under load one small query answers every
request that arrived while the previous one was in flight, and still no request
is answered from an epoch read before it arrived. A publish, revocation, key
rotation or token change committed on any replica before a request arrives is
therefore seen by that request, on every replica; there is no window and no
notification to miss. Any failure to read the epoch is raised to the request
(whose route then takes the full path); nothing is served from the cache on doubt.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool

from .storage import PollState, Storage

__all__ = ["EpochReader", "PollCache"]

_MAX_ENTRIES = 100_000


class _Pending:
    """One event loop's share of an :class:`EpochReader`."""

    __slots__ = ("next", "runner")

    def __init__(self) -> None:
        self.next: asyncio.Future[str] | None = None  # the fetch not started yet
        self.runner: asyncio.Task[None] | None = None


class EpochReader:
    """Coalesced reads of one value: :meth:`read` returns the result of a call of
    ``fetch`` that began after :meth:`read` was called. While a fetch is in
    flight, every new caller waits for the next one, which starts as soon as
    the current one ends and answers them all. Each event loop coalesces its
    own callers (one application may be served by several loops)."""

    def __init__(self, fetch: Callable[[], Awaitable[str]]) -> None:
        self._fetch = fetch
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pending] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # only to add a loop's entry

    def _pending(self, loop: asyncio.AbstractEventLoop) -> _Pending:
        pending = self._loops.get(loop)
        if pending is None:
            with self._lock:
                pending = self._loops.setdefault(loop, _Pending())
        return pending

    async def read(self) -> str:
        """The value, as read by a fetch that began after this call."""
        loop = asyncio.get_running_loop()
        pending = self._pending(loop)
        waiting = pending.next
        if waiting is None:
            waiting = pending.next = loop.create_future()
        if pending.runner is None or pending.runner.done():
            pending.runner = loop.create_task(self._run(pending))
        # a caller that goes away must not cancel the others' read
        return await asyncio.shield(waiting)

    async def _run(self, pending: _Pending) -> None:
        while pending.next is not None:
            waiting, pending.next = pending.next, None  # later callers: the next fetch
            try:
                value = await self._fetch()
            except BaseException as exc:  # every waiter sees the failure
                if not waiting.done():
                    if isinstance(exc, Exception):
                        waiting.set_exception(exc)
                    else:
                        waiting.cancel()
                if not isinstance(exc, Exception):
                    raise
            else:
                if not waiting.done():
                    waiting.set_result(value)


class PollCache:
    """Each token's poll state, served while the poll epoch is unchanged.

    :meth:`state` costs one coalesced epoch read (:class:`EpochReader`, in the
    thread pool) and, when the token's entry was read under another epoch, one
    :meth:`~d2.server.storage.Storage.poll_state`. At most ``max_entries``
    tokens are kept (the cache empties when full); unknown tokens are never kept."""

    def __init__(self, storage: Storage, *, max_entries: int = _MAX_ENTRIES) -> None:
        self._storage = storage
        self._max = max_entries
        self._entries: dict[str, tuple[str, PollState]] = {}
        self._epochs = EpochReader(lambda: run_in_threadpool(storage.poll_epoch))

    async def state(self, token_hash: str) -> PollState | None:
        """The token's poll state as of a read that began after this call."""
        epoch = await self._epochs.read()
        entry = self._entries.get(token_hash)
        if entry is not None and entry[0] == epoch:
            return entry[1]
        # read after the request's epoch (so not older than what it must see), and
        # kept under the epoch of its own snapshot: an entry always matches its epoch
        state = await run_in_threadpool(self._storage.poll_state, token_hash)
        if state is None or state.epoch is None:
            self._entries.pop(token_hash, None)
            return state
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[token_hash] = (state.epoch, state)
        return state
