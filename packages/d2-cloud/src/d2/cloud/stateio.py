"""The state file's I/O, off the event loop and bounded in time.

Reads and writes of the state file run in a daemon thread of their own (``d2-state``),
one job at a time, and are awaited with a timeout. So a file system that never
answers (a hung network mount) cannot:

- block the host's event loop (nothing runs on it but the waiting);
- hold up a start or wedge the poll loop: the waiting coroutine gives up after its
  timeout with a warning, and the runtime goes on with what it has in memory;
- hold up interpreter exit: the thread is a daemon, and it is not in the loop's
  default executor, whose threads ``asyncio.run`` and interpreter shutdown wait for.

Saves keep their order and coalesce: a save queued behind a stuck one replaces any
save still waiting, so when the disk answers the newest entry (say, a revocation
tombstone) is the one written last, never an older bundle. While a job that was
given up on is still running, later saves are queued without being waited for.
The thread exits when there is nothing left to do.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from .state import StateFile

__all__ = ["LOAD_TIMEOUT", "SAVE_TIMEOUT", "StateIO"]

log = logging.getLogger("d2.cloud")
SAVE_TIMEOUT = 10.0
"""Seconds a poll waits for a save (it takes milliseconds; the lock wait is 5 s)."""
LOAD_TIMEOUT = 10.0
"""Seconds to wait for a read, when the caller gives no timeout of its own."""


class _Job:
    """One read or write and the future of the coroutine waiting for it."""

    def __init__(self, run: Callable[[], Any], loop: asyncio.AbstractEventLoop, save: bool) -> None:
        self.run = run
        self.loop = loop
        self.save = save
        self.future: asyncio.Future[Any] = loop.create_future()
        self.abandoned = False  # its waiter gave up (timed out or was cancelled)

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the waiting coroutine, from any thread."""

        def deliver() -> None:
            if self.future.done():
                return
            if error is not None and not self.abandoned:  # else nobody would read it
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class StateIO:
    """Runs ``state``'s :meth:`~StateFile.load` and :meth:`~StateFile.save` in a
    daemon thread and awaits them with a timeout (see the module's docstring)."""

    def __init__(self, state: StateFile) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._queue: collections.deque[_Job] = collections.deque()
        self._current: _Job | None = None
        self._running = False

    @property
    def stuck(self) -> bool:
        """A job whose waiter gave up is still running (the disk does not answer)."""
        current = self._current
        return current is not None and current.abandoned

    async def load(self, timeout: float = LOAD_TIMEOUT) -> dict[str, Any] | None:
        """Our checked entry, or ``None`` (none, not trusted, or not read within
        ``timeout`` seconds: then a warning, and the start goes on without it)."""
        if self.stuck:
            log.warning("d2: state file %s does not answer; starting without it", self.state.path)
            return None
        job = self._submit(self.state.load, save=False)
        if await self._wait(job, timeout):
            try:
                result: dict[str, Any] | None = job.future.result()
            except Exception:  # logged by the thread; fail closed: no saved entry
                return None
            return result
        log.warning(
            "d2: reading state file %s did not finish within %.1fs (a hung disk or "
            "mount?); starting without it",
            self.state.path,
            timeout,
        )
        return None

    async def save(self, entry: dict[str, Any] | None, timeout: float = SAVE_TIMEOUT) -> bool:
        """Save ``entry`` (``None`` forgets ours). ``True`` once done (a failure to
        write is logged by :meth:`StateFile.save`, which never raises) or replaced by
        a newer save; ``False`` when it is still queued or running after ``timeout``
        seconds (a warning says so; it is written when the disk answers, unless a
        newer save replaces it)."""
        stuck = self.stuck
        job = self._submit(lambda: self.state.save(entry), save=True)
        if stuck:  # behind a job already given up on: do not wait for the disk again
            job.abandoned = True
            log.warning(
                "d2: state file %s still does not answer; the newest entry is written when it does",
                self.state.path,
            )
            return False
        if await self._wait(job, timeout):
            return job.future.exception() is None
        log.warning(
            "d2: writing state file %s did not finish within %.1fs (a hung disk or "
            "mount?); polling goes on with the policy in memory, and the newest entry "
            "is written when the disk answers",
            self.state.path,
            timeout,
        )
        return False

    async def _wait(self, job: _Job, timeout: float) -> bool:
        """Whether the job finished (its future holds the outcome) within ``timeout``."""
        try:
            await asyncio.wait_for(asyncio.shield(job.future), max(0.0, timeout))
        except asyncio.CancelledError:
            job.abandoned = True
            raise
        except Exception:  # a timeout, or the job's own error (kept in its future)
            if not job.future.done():
                job.abandoned = True
                return False
        return True

    def _submit(self, run: Callable[[], Any], *, save: bool) -> _Job:
        job = _Job(run, asyncio.get_running_loop(), save)
        with self._lock:
            if save:  # a newer entry replaces saves not started yet
                for older in [j for j in self._queue if j.save]:
                    self._queue.remove(older)
                    older.settle(None)
            self._queue.append(job)
            if not self._running:
                try:
                    threading.Thread(target=self._work, name="d2-state", daemon=True).start()
                except RuntimeError as exc:  # no thread to be had: not saved, not read
                    self._queue.remove(job)
                    job.settle(error=exc)
                    return job
                self._running = True
        return job

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    self._current = None
                    return
                job = self._current = self._queue.popleft()
            try:
                result = job.run()
            except Exception as exc:  # StateFile logs and swallows; this is a backstop
                log.warning("d2: state file %s: %s", self.state.path, exc)
                job.settle(error=exc)
            else:
                job.settle(result)
            with self._lock:
                self._current = None
