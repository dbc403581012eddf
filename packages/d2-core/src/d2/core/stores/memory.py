"""The in-process store: budgets and approvals of this process only."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence

from ..approvals import ApprovalRequest
from .base import APPROVAL_MISSING, TAKEN, ApprovalState, Counter, Store

__all__ = ["MemoryStore"]

_SWEEP_EVERY = 4096  # takes between sweeps of expired counters


class MemoryStore(Store):
    """The default store: dicts behind one lock, held for a few dict operations
    (only calls of tools with ``per: user`` limits or approvals take it). A
    ``per: user`` limit is then counted per process; use
    :class:`~d2.core.stores.redis.RedisStore` to share it between processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, expires_at)
        self._approvals: dict[str, ApprovalState] = {}
        self._takes = 0
        _stores.add(self)

    def _count(self, key: str, now: float) -> int:
        found = self._counts.get(key)
        if found is None or found[1] <= now:
            return 0
        return found[0]

    def _sweep(self, now: float) -> None:
        self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        self._approvals = {k: v for k, v in self._approvals.items() if v.request.expires_at > now}

    def take(self, counters: Sequence[Counter], approval: str | None, now: float) -> int:
        with self._lock:
            self._takes += 1
            if self._takes % _SWEEP_EVERY == 0:
                self._sweep(now)
            for i, counter in enumerate(counters):
                if self._count(counter.key, now) >= counter.max:
                    return i
            if approval is not None:
                found = self._approvals.get(approval)
                if found is None or found.state != "approved" or not now < found.request.expires_at:
                    return APPROVAL_MISSING
                del self._approvals[approval]
            for counter in counters:
                count = self._count(counter.key, now)
                self._counts[counter.key] = (count + 1, counter.expires_at)
            return TAKEN

    def request_approval(self, request: ApprovalRequest, now: float) -> ApprovalState:
        with self._lock:
            found = self._approvals.get(request.id)
            if found is not None and now < found.request.expires_at:
                return found
            state = ApprovalState(request, "pending")
            self._approvals[request.id] = state
            return state

    def get_approval(self, request_id: str, now: float) -> ApprovalState | None:
        with self._lock:
            found = self._approvals.get(request_id)
            return found if found is not None and now < found.request.expires_at else None

    def decide_approval(self, request_id: str, approve: bool, by: str, now: float) -> bool:
        with self._lock:
            found = self._approvals.get(request_id)
            if found is None or found.state != "pending" or not now < found.request.expires_at:
                return False
            state = "approved" if approve else "rejected"
            self._approvals[request_id] = ApprovalState(found.request, state, by)
            return True

    def pending_approvals(self, now: float) -> list[ApprovalRequest]:
        with self._lock:
            found = [
                s.request
                for s in self._approvals.values()
                if s.state == "pending" and now < s.request.expires_at
            ]
        return sorted(found, key=lambda r: (r.expires_at, r.id))

    def __repr__(self) -> str:
        return f"<MemoryStore counters={len(self._counts)} approvals={len(self._approvals)}>"


_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _fresh_locks_after_fork() -> None:
    # a fork while another thread held a lock would leave it held for good
    for store in list(_stores):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_after_fork)
