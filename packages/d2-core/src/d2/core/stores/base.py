"""The store protocol (see :mod:`d2.core.stores`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..approval_data import ApprovalRequest
from ..errors import D2Error

__all__ = [
    "APPROVAL_MISSING",
    "TAKEN",
    "ApprovalKey",
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


class ApprovalKey(NamedTuple):
    """The approval a call may use: ``call`` is the call's digest, ``request_id``
    the id of the live request for that call that the caller read (an approval is
    used only when both still match)."""

    call: str
    request_id: str


class ApprovalState(NamedTuple):
    """An approval request and where it stands: ``state`` is ``pending``,
    ``approved`` or ``rejected``; ``decided_by`` the approver's user id;
    ``snapshots`` the ``(holder, snapshot)`` pairs saved with it (the request
    scopes that asked for it, as :mod:`d2.core.resume` writes them; filled by
    :meth:`Store.find_approval` only)."""

    request: ApprovalRequest
    state: str
    decided_by: str | None = None
    snapshots: tuple[tuple[str, str], ...] = ()


class StoreUnavailableError(D2Error):
    """The budget/approval store could not answer (Redis down, timeout): the
    guarded call is denied with reason ``budget_unavailable``."""


class Store:
    """Budget counters and approval requests, consumed atomically.

    Every method takes the app's ``namespace`` first (the policy's
    ``metadata.name``, or the cloud app): what one namespace stores, another never
    reads, counts or decides. Subclasses implement the sync methods; the
    ``*_async`` twins default to calling them (right for a store that never waits,
    like :class:`MemoryStore`) and a network store overrides them with
    non-blocking versions.

    An approval request belongs to one call digest. While it lives (pending,
    approved or rejected, before its expiry) it is *the* request of its call; it
    dies when it is used, when a rejection is reported to the call, or when it
    expires, and its id never comes back.
    """

    def take(
        self,
        namespace: str,
        counters: Sequence[Counter],
        approval: ApprovalKey | None,
        now: float,
    ) -> int:
        """Atomically: if a counter is at its ``max``, return its index; else if
        ``approval`` is given and ``approval.request_id`` is not the live, approved
        request of ``approval.call``, return :data:`APPROVAL_MISSING`; else add one
        to every counter, use the approval (the request dies) and return
        :data:`TAKEN`. Nothing is consumed unless everything had room."""
        raise NotImplementedError

    def find_approval(self, namespace: str, call: str, now: float) -> ApprovalState | None:
        """The live request of ``call``, with its snapshots; ``None`` when there
        is none."""
        raise NotImplementedError

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
        """Ask for an approval of ``call``, atomically:

        * a live *rejected* request of ``call`` dies and is returned (the call is
          told of the rejection once; the next identical call asks anew);
        * a live pending or approved request of ``call`` is returned; ``snapshot``
          is saved with it under ``holder``, and each ``(holder, sha1)`` of
          ``replaces`` whose snapshot is still the one with that SHA-1 (hex, of its
          UTF-8) is dropped (the new snapshot carries it);
        * otherwise ``request`` (with its new id) becomes the pending request of
          ``call`` until ``request.expires_at``, with ``snapshot`` under
          ``holder``.

        Returns the state in force."""
        raise NotImplementedError

    def save_snapshot(
        self,
        namespace: str,
        held: Sequence[ApprovalKey],
        holder: str,
        snapshot: str,
        now: float,
    ) -> list[bool]:
        """Save ``snapshot`` under ``holder`` with each request of ``held`` that
        is still the live, unrejected request of its call; return, for each,
        whether it was."""
        raise NotImplementedError

    def get_approval(self, namespace: str, request_id: str, now: float) -> ApprovalState | None:
        """The unexpired request ``request_id``, or ``None`` (dead or unknown)."""
        raise NotImplementedError

    def read_approval(self, namespace: str, request_id: str, now: float) -> ApprovalState | None:
        """The unexpired request ``request_id`` with its snapshots (pending, approved
        or rejected: a request that lives), or ``None`` (dead or unknown). What
        :func:`d2.core.approvals.restore_request` reads; a store without it cannot
        restore a paused request by its id (the call is denied, never run blind)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement read_approval(): it cannot restore "
            "a paused request by its id"
        )

    def decide_approval(
        self, namespace: str, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        """Move a *pending*, unexpired request to ``approved`` (or ``rejected``);
        False when it is not pending any more (decided, used or expired)."""
        raise NotImplementedError

    def pending_approvals(self, namespace: str, now: float) -> list[ApprovalRequest]:
        """Unexpired pending requests, soonest expiry first."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the store is not used afterwards)."""

    async def take_async(
        self,
        namespace: str,
        counters: Sequence[Counter],
        approval: ApprovalKey | None,
        now: float,
    ) -> int:
        """Async twin of :meth:`take`."""
        return self.take(namespace, counters, approval, now)

    async def find_approval_async(
        self, namespace: str, call: str, now: float
    ) -> ApprovalState | None:
        """Async twin of :meth:`find_approval`."""
        return self.find_approval(namespace, call, now)

    async def request_approval_async(
        self,
        namespace: str,
        request: ApprovalRequest,
        call: str,
        holder: str,
        snapshot: str,
        replaces: Sequence[tuple[str, str]],
        now: float,
    ) -> ApprovalState:
        """Async twin of :meth:`request_approval`."""
        return self.request_approval(namespace, request, call, holder, snapshot, replaces, now)

    async def save_snapshot_async(
        self,
        namespace: str,
        held: Sequence[ApprovalKey],
        holder: str,
        snapshot: str,
        now: float,
    ) -> list[bool]:
        """Async twin of :meth:`save_snapshot`."""
        return self.save_snapshot(namespace, held, holder, snapshot, now)

    async def get_approval_async(
        self, namespace: str, request_id: str, now: float
    ) -> ApprovalState | None:
        """Async twin of :meth:`get_approval`."""
        return self.get_approval(namespace, request_id, now)

    async def read_approval_async(
        self, namespace: str, request_id: str, now: float
    ) -> ApprovalState | None:
        """Async twin of :meth:`read_approval`."""
        return self.read_approval(namespace, request_id, now)

    async def decide_approval_async(
        self, namespace: str, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        """Async twin of :meth:`decide_approval`."""
        return self.decide_approval(namespace, request_id, approve, by, now)

    async def pending_approvals_async(self, namespace: str, now: float) -> list[ApprovalRequest]:
        """Async twin of :meth:`pending_approvals`."""
        return self.pending_approvals(namespace, now)

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        self.close()
