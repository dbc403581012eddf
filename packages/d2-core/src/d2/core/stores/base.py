"""The store protocol (see :mod:`d2.core.stores`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..approvals import ApprovalRequest
from ..errors import D2Error

__all__ = [
    "APPROVAL_MISSING",
    "TAKEN",
    "ApprovalState",
    "Counter",
    "Store",
    "StoreUnavailableError",
]

TAKEN = -1  # take(): every counter had room and the approval (if any) was used
APPROVAL_MISSING = -2  # take(): the approval is not granted (nothing was consumed)


class Counter(NamedTuple):
    """One budget counter to take from: ``key`` (unique per limit, user and
    window), ``max`` calls, and ``expires_at`` (the window's end, Unix seconds)."""

    key: str
    max: int
    expires_at: float


class ApprovalState(NamedTuple):
    """An approval request and where it stands: ``state`` is ``pending``,
    ``approved`` or ``rejected``; ``decided_by`` the approver's user id."""

    request: ApprovalRequest
    state: str
    decided_by: str | None = None


class StoreUnavailableError(D2Error):
    """The budget/approval store could not answer (Redis down, timeout): the
    guarded call is denied with reason ``budget_unavailable``."""


class Store:
    """Budget counters and approval requests, consumed atomically.

    Subclasses implement the sync methods; the ``*_async`` twins default to calling
    them (right for a store that never waits, like :class:`MemoryStore`) and a
    network store overrides them with non-blocking versions.
    """

    def take(self, counters: Sequence[Counter], approval: str | None, now: float) -> int:
        """Atomically: if a counter is at its ``max``, return its index; else if
        ``approval`` (an id) is not an approved, unexpired request, return
        :data:`APPROVAL_MISSING`; else add one to every counter, use the approval up
        (it is deleted) and return :data:`TAKEN`. Nothing is consumed unless
        everything had room."""
        raise NotImplementedError

    def request_approval(self, request: ApprovalRequest, now: float) -> ApprovalState:
        """Record ``request`` as pending unless an unexpired request with its id
        exists; return the state in force."""
        raise NotImplementedError

    def get_approval(self, request_id: str, now: float) -> ApprovalState | None:
        """The unexpired request ``request_id``, or ``None``."""
        raise NotImplementedError

    def decide_approval(self, request_id: str, approve: bool, by: str, now: float) -> bool:
        """Move a *pending*, unexpired request to ``approved`` (or ``rejected``);
        False when it is not pending any more (decided, used or expired)."""
        raise NotImplementedError

    def pending_approvals(self, now: float) -> list[ApprovalRequest]:
        """Unexpired pending requests, oldest expiry first."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the store is not used afterwards)."""

    async def take_async(
        self, counters: Sequence[Counter], approval: str | None, now: float
    ) -> int:
        """Async twin of :meth:`take`."""
        return self.take(counters, approval, now)

    async def request_approval_async(self, request: ApprovalRequest, now: float) -> ApprovalState:
        """Async twin of :meth:`request_approval`."""
        return self.request_approval(request, now)

    async def get_approval_async(self, request_id: str, now: float) -> ApprovalState | None:
        """Async twin of :meth:`get_approval`."""
        return self.get_approval(request_id, now)

    async def decide_approval_async(
        self, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        """Async twin of :meth:`decide_approval`."""
        return self.decide_approval(request_id, approve, by, now)

    async def pending_approvals_async(self, now: float) -> list[ApprovalRequest]:
        """Async twin of :meth:`pending_approvals`."""
        return self.pending_approvals(now)

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        self.close()
