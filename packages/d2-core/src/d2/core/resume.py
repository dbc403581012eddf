"""A held request continues where it stopped.

When a call waits for an approval, the request scope that made it (its history,
its data-flow facts, its ``per: request`` budgets) is saved with the approval
request as a *snapshot*, and saved again after every later call of that scope while
the request lives. When the same user's identical call comes back (typically in a
fresh request scope after ``set_user``, possibly in another process), the
snapshots of its request are merged into the current scope before the call is
decided: facts are united, the history continues after the held request's, budgets
count on. Every sequence and data-flow rule holds across the pause.

A scope's history is a list of *blocks*: first the blocks it restored, in the order
it restored them, then its own calls. A snapshot names each block by the random
*token* of the scope that made those calls, so restoring one origin twice (two held
calls of one request, or a request that was itself resumed) adds only what is new,
never a second copy. A snapshot names its user; it is restored only into a request
of that user (:func:`restore` raises :class:`ValueError` otherwise).

A snapshot carries the history as the policy in force reads it, so its size follows
what the policy tracks, not how long the request ran: a call no sequence step
matches and that records no data-flow label is kept as one gap (``""``, never a
tool id) however many such calls come in a row, and a run of one tool is kept only
as long as the longest sequence rule (more of it cannot move a rule further). Each
scope keeps its own calls in that form as they come (:class:`Lineage`), so saving
after every call costs what the calls since the last save cost. A snapshot holds
at most :data:`MAX_CALLS` history entries and :data:`MAX_BYTES` of JSON;
:func:`snapshot` raises :class:`SnapshotTooLarge` beyond that (the evaluator then
denies the call: what cannot be saved is never forgotten silently).

A resumed run can also ask for its paused request by the approval request's id,
before any call (:func:`d2.core.approvals.restore_request`, which the agent
adapters call at the start of the run they resume): the scope then remembers the
request as *continued* (:func:`continues`), so asking again costs no store lookup.

This module only reads and writes scopes; the evaluator decides when (see
``evaluate.py``, step 6c).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .context import RequestScope, request_lock

if TYPE_CHECKING:
    from .policy.model import CompiledPolicy

__all__ = [
    "GAP",
    "MAX_BYTES",
    "MAX_CALLS",
    "Lineage",
    "SnapshotTooLarge",
    "continued",
    "continues",
    "lineage",
    "restore",
    "snapshot",
    "tethered",
]

_VERSION = 1
GAP = ""  # calls no rule of the policy reads, in a row (never a tool id)
MAX_CALLS = 4096  # history entries one snapshot carries, all blocks together
MAX_BYTES = 256 * 1024  # a snapshot's JSON text


_lock = threading.Lock()  # a scope's blocks and saved calls; held calls only


class SnapshotTooLarge(ValueError):
    """A request scope's snapshot would exceed :data:`MAX_CALLS` history entries
    or :data:`MAX_BYTES` of text: it cannot be saved."""


class _Key:
    """The key of a scope's :class:`Lineage` in ``RequestScope.progress`` (which
    otherwise holds what each policy has read of the history)."""

    def __repr__(self) -> str:
        return "<lineage>"


_LINEAGE = _Key()


class Lineage:
    """Where a request scope's history came from, and which held requests it
    feeds.

    ``token``: this scope's random id. ``blocks``: for each origin token restored,
    ``[calls restored, {budget key: count}]``, in restore order (their calls sit at
    the start of the history, in that order). ``held``: the approval requests this
    scope asked for and that still live, ``(namespace, call digest, request id) ->
    expires_at``: each later call of the scope is saved with them. ``saved``: the
    scope's own calls as a snapshot carries them under ``saved_for`` (a policy),
    covering the first ``saved_of`` of them (extended as calls come). ``continued``:
    the ids of the approval requests whose paused request this scope restored by
    id (see :func:`continues`).
    """

    __slots__ = (
        "blocks", "continued", "held", "relevant", "saved", "saved_for", "saved_of", "token",
    )  # fmt: skip

    def __init__(self) -> None:
        import secrets  # off the cold path: only a held call needs one

        self.token = secrets.token_hex(16)
        self.blocks: dict[str, list[Any]] = {}
        self.held: dict[tuple[str, str, str], float] = {}
        self.saved: list[str] = []
        self.saved_of = 0
        self.saved_for: CompiledPolicy | None = None
        self.relevant: dict[str, bool] = {}  # tool id -> whether saved_for reads it
        self.continued: set[str] = set()

    def restored(self) -> int:
        """How many history entries came from restored blocks."""
        return sum(count for count, _ in self.blocks.values())


def lineage(scope: RequestScope) -> Lineage:
    """The scope's lineage (made on first use)."""
    found = scope.progress.get(_LINEAGE)
    if found is None:
        found = scope.progress.setdefault(_LINEAGE, Lineage())
    assert isinstance(found, Lineage)
    return found


def tethered(scope: RequestScope) -> Lineage | None:
    """The scope's lineage when it feeds a held request, else ``None``."""
    found = scope.progress.get(_LINEAGE)
    return found if found is not None and found.held else None


def continues(scope: RequestScope, request_id: str) -> bool:
    """Whether ``scope`` already holds the state of the request that asked for
    approval request ``request_id``: the scope asked for it (while it lives) or
    restored it by id (:func:`continued`)."""
    found = scope.progress.get(_LINEAGE)
    if not isinstance(found, Lineage):
        return False
    return request_id in found.continued or any(key[2] == request_id for key in found.held)


def continued(scope: RequestScope, request_id: str) -> None:
    """Note that ``scope`` holds the state of approval request ``request_id``'s
    request (restored, or asked for by the scope itself)."""
    lineage(scope).continued.add(request_id)


def version(scope: RequestScope) -> tuple[int, int, int]:
    """Grows whenever the scope records something a snapshot carries."""
    return len(scope.history), len(scope.facts), sum(scope.spent.values())


def _reads(policy: CompiledPolicy, tool_id: str) -> bool:
    """Whether ``policy`` reads ``tool_id`` in a history: a sequence step matches
    it (a tracked step, or any step of an allowlist chain, where it may be the call
    the next one follows) or it records a data-flow label."""
    rules = policy.rules_for(tool_id, remember=False)
    if rules.advance or rules.labels:
        return True
    for seq in policy.sequences.values():
        if seq.mode != "allow":  # an allowlist: the last call is what the next follows
            for rule in seq.rules:
                if any(m(tool_id) for m in rule.matchers):
                    return True
    return False


def _longest(policy: CompiledPolicy) -> int:
    """How many calls of one tool in a row can still matter: the longest rule."""
    return max(
        (len(rule.steps) for seq in policy.sequences.values() for rule in seq.rules), default=1
    )


def _append(out: list[str], tool_id: str, reads: bool, run: int) -> None:
    """Add one call to a history kept as a policy reads it (see the module doc)."""
    if not reads:
        if not out or out[-1] != GAP:
            out.append(GAP)
        return
    if len(out) >= run and all(t == tool_id for t in out[-run:]):
        return  # one more of a run no rule can count further
    out.append(tool_id)


def _own_calls(own: Lineage, scope: RequestScope, policy: CompiledPolicy | None) -> list[str]:
    """The scope's own calls as ``policy`` reads them (verbatim without one),
    extended incrementally from what the last snapshot kept."""
    history = scope.history
    first = own.restored()
    if policy is None:
        return history[first:]
    count = len(history) - first
    if own.saved_for is not policy or own.saved_of > count:
        own.saved, own.saved_of, own.saved_for, own.relevant = [], 0, policy, {}
    if own.saved_of < count:
        run = _longest(policy)
        relevant = own.relevant
        for tool_id in history[first + own.saved_of :]:
            reads = relevant.get(tool_id)
            if reads is None:
                reads = relevant[tool_id] = _reads(policy, tool_id)
            _append(own.saved, tool_id, reads, run)
        own.saved_of = count
    return own.saved


def snapshot(
    scope: RequestScope,
    user_id: str,
    tool_id: str | None = None,
    labels: Iterable[str] = (),
    policy: CompiledPolicy | None = None,
    bounded: bool = True,
) -> str:
    """The scope as JSON (ASCII): its user, its blocks and its facts. ``tool_id``
    and ``labels``: a call about to be recorded, included as if it were.
    ``policy``: the policy in force; the scope's own calls are kept as it reads
    them (without one: verbatim). Raises :class:`SnapshotTooLarge` beyond
    :data:`MAX_CALLS` entries or :data:`MAX_BYTES` (``bounded=False``: no limit,
    for ``d2 replay``)."""
    own = lineage(scope)
    history = scope.history
    spent = dict(scope.spent)
    blocks: list[list[Any]] = []
    start = 0
    with _lock:  # threads of one request save it at once: one of them extends it
        for token, (count, budget) in own.blocks.items():
            blocks.append([token, history[start : start + count], dict(budget)])
            start += count
            for key, n in budget.items():
                spent[key] = spent.get(key, 0) - n
        mine = list(_own_calls(own, scope, policy))
    if tool_id is not None:
        if policy is None:
            mine.append(tool_id)
        else:
            _append(mine, tool_id, _reads(policy, tool_id), _longest(policy))
    entries = start + len(mine)
    if bounded and entries > MAX_CALLS:
        raise SnapshotTooLarge(
            f"its saved history would hold {entries} entries (at most {MAX_CALLS})"
        )
    blocks.append([own.token, mine, {k: n for k, n in spent.items() if n > 0}])
    facts = dict(scope.facts)
    for label in labels:
        facts.setdefault(label, tool_id or "")
    text = json.dumps(
        {"v": _VERSION, "user": user_id, "blocks": blocks, "facts": facts},
        separators=(",", ":"),
        ensure_ascii=True,
        sort_keys=True,
    )
    if bounded and len(text) > MAX_BYTES:
        raise SnapshotTooLarge(
            f"its saved state would take {len(text) // 1024} KiB (at most {MAX_BYTES // 1024} KiB)"
        )
    return text


_Block = tuple[str, list[str], dict[str, int]]


def _parsed(text: str, user_id: str) -> tuple[list[_Block], dict[str, str]]:
    """A snapshot's blocks and facts, checked; :class:`ValueError` when it is not
    one this module wrote for ``user_id``."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("v") != _VERSION:
        raise ValueError("not a request snapshot of a known version")
    if data.get("user") != user_id:
        raise ValueError("the snapshot belongs to another user")
    raw_blocks, raw_facts = data.get("blocks"), data.get("facts")
    if not isinstance(raw_blocks, list) or not isinstance(raw_facts, dict):
        raise ValueError("a snapshot holds blocks and facts")
    blocks: list[_Block] = []
    for block in raw_blocks:
        if not (isinstance(block, list) and len(block) == 3):
            raise ValueError("a block is [token, calls, budgets]")
        token, calls, budget = block
        if not (
            isinstance(token, str)
            and token
            and isinstance(calls, list)
            and all(isinstance(c, str) for c in calls)
            and isinstance(budget, dict)
            and all(isinstance(k, str) and type(n) is int and n >= 0 for k, n in budget.items())
        ):
            raise ValueError("a block is [token, calls, budgets]")
        blocks.append((token, calls, budget))
    facts: dict[str, str] = {}
    for label, origin in raw_facts.items():
        if not (isinstance(label, str) and isinstance(origin, str)):
            raise ValueError("facts map labels to what recorded them")
        facts[label] = origin
    return blocks, facts


_HISTORY_WAIT = 0.1
"""Seconds a restore waits for its request's lock (held for microseconds by a
call being judged) while its caller holds the shared budget lock."""


def restore(scope: RequestScope, snapshots: Sequence[str], user_id: str) -> bool:
    """Merge ``snapshots`` (of one request of ``user_id``) into ``scope``: for each
    block, only the calls and budget counts the scope does not have yet; facts
    united. Returns whether anything changed. Raises :class:`ValueError` (and
    changes nothing) when a snapshot is malformed or names another user.

    The caller holds the lock that guards ``scope.spent``."""
    parsed = [_parsed(text, user_id) for text in snapshots]  # all checked first
    history = request_lock(scope)  # no call judged on the history meanwhile
    if not history.acquire(timeout=_HISTORY_WAIT):  # the caller holds shared locks
        raise TimeoutError(
            "the request's history stayed in use by another call (a restore from a "
            "signal handler?); try again"
        )
    try:
        with _lock:
            changed = _merge(scope, parsed)
            if changed:
                scope.version += 1
            return changed
    finally:
        history.release()


def _merge(scope: RequestScope, parsed: list[tuple[list[_Block], dict[str, str]]]) -> bool:
    own = lineage(scope)
    changed = False
    for blocks, facts in parsed:
        for token, calls, budget in blocks:
            if token == own.token:
                continue  # this scope's own calls: it has them
            found = own.blocks.get(token)
            if found is None:
                at = own.restored()
                own.blocks[token] = found = [0, {}]
            else:
                at = 0
                for other, (count, _) in own.blocks.items():
                    if other == token:
                        break
                    at += count
            have, counted = found
            known = scope.history[at : at + have]
            if known == calls[:have]:  # the block went on: add what is new
                if len(calls) > have:
                    scope.history[at + have : at + have] = calls[have:]
                    found[0] = len(calls)
                    changed = True
            elif len(calls) >= have:  # saved under another policy: the later one wins
                scope.history[at : at + have] = calls
                found[0] = len(calls)
                changed = True
            for key, n in budget.items():
                extra = n - counted.get(key, 0)
                if extra > 0:
                    counted[key] = n
                    scope.spent[key] = scope.spent.get(key, 0) + extra
                    changed = True
        for label, origin in facts.items():
            if label not in scope.facts:
                scope.facts[label] = origin
                changed = True
    if changed:  # the history moved: every policy reads it again from the start, in a
        # new cache (a reader of the old history writes what it read to the old one)
        scope.progress = {_LINEAGE: own}
    return changed


def _fresh_lock_after_fork() -> None:
    # a fork while another thread held the lock would leave it held for good
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_after_fork)
