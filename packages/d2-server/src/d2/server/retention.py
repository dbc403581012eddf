"""Usage-event retention: a background thread deletes old events, and events beyond
each app's cap, in small batches.

What it promises:

- **Off the request path.** The pruner is a thread of its own, never the event loop
  nor a request's thread. Each batch is one short write transaction (``BEGIN
  IMMEDIATE`` on SQLite; on PostgreSQL it locks only the counts of the apps it
  deletes from) of at most ``ServerConfig.events_prune_batch`` deletions (5,000 by
  default), and the thread pauses between batches so waiting request writes get
  the lock.
- **Through indexes.** Expired events are found by ``events_by_received``, an app's
  oldest by ``events_by_app``; a pass never scans the events table.
- **When.** A pass runs at startup, then every ``events_prune_interval`` seconds
  (an hour by default): first the events received more than
  ``events_retention_days`` ago, then, per app over its cap, the oldest events
  until it is within. (Ingest keeps an app at its cap on its own, see
  :meth:`~d2.server.service.ControlPlane.ingest`; the pass catches up after the cap
  was lowered.)
- **Never fatal.** A failed pass (a locked or full disk, a lost database
  connection) is logged on the ``d2.server`` logger and retried at the next
  interval; the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from .service import ControlPlane

__all__ = ["PRUNE_PAUSE", "EventPruner", "PruneReport"]

PRUNE_PAUSE = 0.02
"""Seconds the pruner sleeps between two batches, leaving the write lock to requests."""

_log = logging.getLogger("d2.server")


@dataclass(frozen=True)
class PruneReport:
    """What one pass deleted: ``expired`` (older than the retention), ``over_cap``
    (an app's oldest beyond its cap), in ``batches`` transactions."""

    expired: int = 0
    over_cap: int = 0
    batches: int = 0


class EventPruner:
    """Prunes the usage events of ``plane``'s storage by its config: :meth:`prune`
    runs one pass now, in the calling thread; :meth:`start` runs passes in a
    background thread, at once and then every ``events_prune_interval`` seconds,
    until :meth:`stop`."""

    def __init__(self, plane: ControlPlane, *, pause: float = PRUNE_PAUSE) -> None:
        self.plane = plane
        self.pause = pause
        self.last: PruneReport | None = None
        """The report of the last completed background pass."""
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def prune(self) -> PruneReport:
        """One pass: expired events, then apps over their cap; each batch its own
        transaction. Returns early (with what it did) once :meth:`stop` is called."""
        config, storage = self.plane.config, self.plane.storage
        batch = config.events_prune_batch
        cutoff = self.plane.now() - config.events_retention_seconds
        expired = over_cap = batches = 0
        while not self._stopping.is_set():
            deleted = storage.delete_events_before(cutoff, batch)
            expired, batches = expired + deleted, batches + 1
            if deleted < batch:
                break
            self._stopping.wait(self.pause)
        for app_id in storage.apps_over_event_cap(self.plane.event_cap):
            while not self._stopping.is_set():
                deleted = storage.trim_events(app_id, self.plane.event_cap, batch)
                over_cap, batches = over_cap + deleted, batches + 1
                if deleted < batch:
                    break
                self._stopping.wait(self.pause)
        return PruneReport(expired, over_cap, batches)

    def start(self) -> None:
        """Start the background thread (its first pass begins at once)."""
        if self._thread is not None:
            raise RuntimeError("the pruner was already started")
        self._thread = threading.Thread(target=self._run, name="d2-server-pruner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next background pass now instead of at the end of the interval."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread: a batch in progress completes, the pass ends
        there. Waits up to ``timeout`` seconds."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                report = self.prune()
            except Exception:
                _log.exception("pruning usage events failed; retrying in the next interval")
            else:
                self.last = report
                if report.expired or report.over_cap:
                    _log.info(
                        "pruned %d expired and %d over-cap usage events in %d batches",
                        report.expired,
                        report.over_cap,
                        report.batches,
                    )
            self._wake.wait(self.plane.config.events_prune_interval)
