"""The in-process store: budgets and approvals of this process only."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence

from ..approval_data import ApprovalRequest
from .base import APPROVAL_MISSING, TAKEN, ApprovalKey, ApprovalState, Counter, Store

__all__ = ["MemoryStore"]

_SWEEP_EVERY = 4096  # takes between sweeps of expired counters and requests


class _Request:
    """One stored request (mutable, under the store's lock)."""

    __slots__ = ("by", "call", "request", "snapshots", "state", "text")

    def __init__(self, request: ApprovalRequest, call: str, holder: str, snapshot: str) -> None:
        # the store's own copy, as a shared store keeps its text: the caller's request
        # (``err.request``, whose arguments app code may edit) is never what is shown
        self.text = request.to_json()
        self.request = request._replace(arguments={})  # the fields read under the lock
        self.call = call
        self.state = "pending"
        self.by: str | None = None
        self.snapshots: dict[str, str] = {holder: snapshot}

    def view(self, with_snapshots: bool = False) -> ApprovalState:
        snapshots = tuple(self.snapshots.items()) if with_snapshots else ()
        # a fresh copy per reader: one reader's edits never reach the next
        return ApprovalState(ApprovalRequest.from_json(self.text), self.state, self.by, snapshots)


def _sha1(text: str) -> str:
    import hashlib  # off the cold path: only replacing snapshots needs it

    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class MemoryStore(Store):
    """The default store: dicts behind one lock, held for a few dict operations
    (only calls of tools with ``per: user`` limits or approvals take it). A
    ``per: user`` limit is then counted per process; use
    :class:`~d2.core.stores.redis.RedisStore` to share it between processes.

    After ``os.fork`` the child keeps a copy of the counters (each process counts
    on alone) but none of the approval requests: an approval is used once, in the
    process that holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (namespace, key) -> (count, expires_at)
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}
        self._requests: dict[tuple[str, str], _Request] = {}  # (namespace, id) -> request
        self._calls: dict[tuple[str, str], str] = {}  # (namespace, call digest) -> live id
        self._takes = 0
        _stores.add(self)

    def _count(self, key: tuple[str, str], now: float) -> int:
        found = self._counts.get(key)
        if found is None or found[1] <= now:
            return 0
        return found[0]

    def _sweep(self, now: float) -> None:
        self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        self._requests = {k: v for k, v in self._requests.items() if v.request.expires_at > now}
        self._calls = {k: v for k, v in self._calls.items() if (k[0], v) in self._requests}

    def _live(self, namespace: str, call: str, now: float) -> _Request | None:
        """The live request of ``call`` (lock held)."""
        request_id = self._calls.get((namespace, call))
        if request_id is None:
            return None
        found = self._requests.get((namespace, request_id))
        if found is None or not now < found.request.expires_at or found.call != call:
            return None
        return found

    def _kill(self, namespace: str, found: _Request) -> None:
        """The request dies: its id is gone for good (lock held)."""
        self._requests.pop((namespace, found.request.id), None)
        if self._calls.get((namespace, found.call)) == found.request.id:
            del self._calls[(namespace, found.call)]

    def take(
        self,
        namespace: str,
        counters: Sequence[Counter],
        approval: ApprovalKey | None,
        now: float,
    ) -> int:
        with self._lock:
            self._takes += 1
            if self._takes % _SWEEP_EVERY == 0:
                self._sweep(now)
            for i, counter in enumerate(counters):
                if self._count((namespace, counter.key), now) >= counter.max:
                    return i
            if approval is not None:
                found = self._live(namespace, approval.call, now)
                if (
                    found is None
                    or found.request.id != approval.request_id
                    or found.state != "approved"
                ):
                    return APPROVAL_MISSING
                self._kill(namespace, found)
            for counter in counters:
                key = (namespace, counter.key)
                self._counts[key] = (self._count(key, now) + 1, counter.expires_at)
            return TAKEN

    def find_approval(self, namespace: str, call: str, now: float) -> ApprovalState | None:
        with self._lock:
            found = self._live(namespace, call, now)
            return found.view(with_snapshots=True) if found is not None else None

    def request_approval(
        self,
        namespace: str,
        request: ApprovalRequest,
        call: str,
        holder: str,
        snapshot: str,
        replaces: Sequence[tuple[str, str]],
        now: float,
    ) -> ApprovalState:
        with self._lock:
            found = self._live(namespace, call, now)
            if found is not None:
                if found.state == "rejected":
                    self._kill(namespace, found)
                    return found.view()
                for other, digest in replaces:
                    text = found.snapshots.get(other)
                    if text is not None and _sha1(text) == digest:
                        del found.snapshots[other]
                found.snapshots[holder] = snapshot
                return found.view()
            made = _Request(request, call, holder, snapshot)
            self._requests[(namespace, request.id)] = made
            self._calls[(namespace, call)] = request.id
            return made.view()

    def save_snapshot(
        self,
        namespace: str,
        held: Sequence[ApprovalKey],
        holder: str,
        snapshot: str,
        now: float,
    ) -> list[bool]:
        saved = []
        with self._lock:
            for key in held:
                found = self._live(namespace, key.call, now)
                live = (
                    found is not None
                    and found.request.id == key.request_id
                    and found.state != "rejected"
                )
                if found is not None and live:
                    found.snapshots[holder] = snapshot
                saved.append(live)
        return saved

    def get_approval(self, namespace: str, request_id: str, now: float) -> ApprovalState | None:
        with self._lock:
            found = self._requests.get((namespace, request_id))
            if found is None or not now < found.request.expires_at:
                return None
            return found.view()

    def read_approval(self, namespace: str, request_id: str, now: float) -> ApprovalState | None:
        with self._lock:
            found = self._requests.get((namespace, request_id))
            if found is None or not now < found.request.expires_at:
                return None
            return found.view(with_snapshots=True)

    def decide_approval(
        self, namespace: str, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        with self._lock:
            found = self._requests.get((namespace, request_id))
            if found is None or found.state != "pending" or not now < found.request.expires_at:
                return False
            found.state = "approved" if approve else "rejected"
            found.by = by
            return True

    def pending_approvals(self, namespace: str, now: float) -> list[ApprovalRequest]:
        with self._lock:
            found = [
                s
                for (ns, _), s in self._requests.items()
                if ns == namespace and s.state == "pending" and now < s.request.expires_at
            ]
        found.sort(key=lambda s: (s.request.expires_at, s.request.id))
        return [ApprovalRequest.from_json(s.text) for s in found]

    def __repr__(self) -> str:
        return f"<MemoryStore counters={len(self._counts)} approvals={len(self._requests)}>"


_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child starts with a copy of every in-process store. Its locks are
    renewed (a fork while another thread held one would leave it held for good),
    and its approval requests are dropped: a copied approved request would run its
    call once in the parent and once more in every child. The child's requests are
    its own from then on. Counters stay as copied and count on in the child alone:
    a per-process store counts per process (share budgets with a RedisStore)."""
    for store in list(_stores):
        store._lock = threading.Lock()
        store._requests = {}
        store._calls = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
