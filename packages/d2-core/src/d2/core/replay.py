"""Replay a decision log against a candidate policy: what would change?

A decision log (``configure_rbac_*(decision_log=...)``) records every decision of
guarded calls. :func:`replay` runs each recorded call again, through the real
:class:`~d2.core.evaluate.Evaluator`, under a *candidate* policy, and reports the
calls whose decision (``allowed``, ``denied``, ``would_deny``) or reason changes.
Nothing runs and nothing is stored: no tool is called, no budget is spent, no
approval is asked of anyone.

How each recorded call is judged:

- calls are grouped by ``request_id`` (file order kept); each request gets its own
  fresh request scope, so sequences, data flow and ``per: request`` budgets are
  recomputed from the request's recorded order, as the candidate sees it; a call
  that consulted an approval request another request asked for (the same
  ``approval_id``) continues that request's history and facts, as it did live;
- the call runs as the recorded ``user_id`` with the recorded ``roles``; RBAC is
  always decided; input rules only when the log recorded the ``arguments``
  (``decision_log_arguments=True``), and are skipped otherwise;
- approvals recorded as given count as given: a call allowed with an
  ``approval_id`` had its approval; a call the log shows needing one
  (``approval_id``, ``approval_required``) is taken to meet ``approval.when`` when
  its arguments are not recorded;
- ``per: user`` budgets are taken as recorded: full only for a call refused with
  ``budget_exceeded`` and a ``retry_after`` (``per: request`` budgets have none and
  are recounted);
- calls refused at the output stage (``output_validation``,
  ``output_sanitization``) need the tool's result and are skipped, as are calls
  refused because the store was unreachable (``budget_unavailable``); refusals no
  policy can change (``no_user``, ``missing_policy``, ``policy_expired``) stay as
  they were.

The candidate's own ``metadata.expires`` does not matter to a replay (a review may
replay a policy whose expiry is far ahead or already passed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._functions import UNBOUND
from .approval_data import ApprovalRequest
from .context import (
    RequestScope,
    UserContext,
    attach,
    current_context,
    detach,
    normalise_roles,
)
from .decisionlog import deciding_rule
from .errors import ConfigurationError, PermissionDeniedError
from .evaluate import Evaluator
from .policy.compile import compile_policy
from .resume import lineage, snapshot
from .stores.base import APPROVAL_MISSING, TAKEN, ApprovalKey, ApprovalState, Counter, Store

if TYPE_CHECKING:
    from .policy.model import CompiledPolicy, Grant, ToolRules

__all__ = ["DECISIONS", "Change", "ReplayReport", "read_log", "replay"]

DECISIONS = ("allowed", "denied", "would_deny")
_OUTPUT_REASONS = frozenset({"output_validation", "output_sanitization"})
_FIXED_REASONS = frozenset({"no_user", "missing_policy", "policy_expired"})
_SKIP_OUTPUT = "output stage (needs the tool's result)"
_SKIP_STORE = "store unavailable when recorded (budget_unavailable)"


@dataclass(frozen=True)
class Change:
    """One recorded call whose decision differs under the candidate.

    ``before`` / ``before_reason``: what the log recorded; ``after`` / ``reason``:
    what the candidate decides (``reason`` is ``None`` when allowed); ``rule``:
    the candidate's deciding rule (its path in the policy), when one decided.
    """

    tool_id: str
    user_id: str | None
    roles: tuple[str, ...]
    request_id: str | None
    before: str
    after: str
    reason: str | None
    before_reason: str | None
    rule: str | None


@dataclass
class ReplayReport:
    """What a replay found: ``records`` read, ``changed`` (``len(changes)``), the
    ``changes`` in log order, ``unchanged`` records, and ``skipped`` records that
    cannot be judged again with ``skip_reasons`` (why -> count). ``notes`` counts
    records judged only in part: input rules or ``approval.when`` of the candidate
    that could not be checked (no recorded arguments), and ``per: user`` budgets
    taken as recorded rather than counted again."""

    records: int = 0
    changed: int = 0
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def note(self, what: str) -> None:
        """Count one record that was judged only in part (``notes``: what -> count)."""
        self.notes[what] = self.notes.get(what, 0) + 1

    def skip(self, why: str) -> None:
        """Count one skipped record."""
        self.skipped += 1
        self.skip_reasons[why] = self.skip_reasons.get(why, 0) + 1


# -- reading a log ------------------------------------------------------------------
def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _problem(record: object) -> str | None:
    """What is wrong with one record, or None when it can be replayed."""
    if not isinstance(record, dict):
        return f"expected a JSON object (one decision), got {_kind(record)}"
    tool_id = record.get("tool_id")
    if not isinstance(tool_id, str) or not tool_id:
        return f"'tool_id' must be a non-empty string, got {_kind(tool_id)}"
    decision = record.get("decision")
    if decision not in DECISIONS:
        return f"'decision' must be one of {', '.join(DECISIONS)}, got {decision!r}"
    if "user_id" not in record:
        return "'user_id' is missing (a string, or null when no user was set)"
    if record["user_id"] is not None and not isinstance(record["user_id"], str):
        return f"'user_id' must be a string or null, got {_kind(record['user_id'])}"
    roles = record.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return f"'roles' must be a list of strings, got {_kind(roles)}"
    reason = record.get("reason")
    if reason is not None and not isinstance(reason, str):
        return f"'reason' must be a string or null, got {_kind(reason)}"
    if decision != "allowed" and not reason:
        return f"a {decision!r} record needs its 'reason'"
    request_id = record.get("request_id")
    if request_id is not None and not isinstance(request_id, (str, int)):
        return f"'request_id' must be a string, got {_kind(request_id)}"
    approval = record.get("approval_id")
    if approval is not None and not isinstance(approval, str):
        return f"'approval_id' must be a string, got {_kind(approval)}"
    retry = record.get("retry_after")
    if retry is not None and (
        isinstance(retry, bool) or not isinstance(retry, (int, float)) or math.isnan(retry)
    ):
        return f"'retry_after' must be a number of seconds, got {_kind(retry)}"
    return None


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of the JSON Lines decision log at ``path``, in file order.

    Blank lines are skipped. An unreadable file, or a line that is not a decision
    record, raises :class:`~d2.core.errors.ConfigurationError` naming
    ``file:line`` and what is wrong.
    """
    name = os.fspath(path)
    try:
        fh = open(name, "rb")  # noqa: SIM115 - closed below; bytes: decode per line
    except OSError as exc:
        raise ConfigurationError(f"cannot read decision log {name}: {exc.strerror or exc}") from exc
    records: list[dict[str, Any]] = []
    with fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise ConfigurationError(f"{name}:{number}: not UTF-8 text: {exc}") from None
            except (ValueError, RecursionError) as exc:
                raise ConfigurationError(f"{name}:{number}: not valid JSON: {exc}") from None
            problem = _problem(record)
            if problem is not None:
                raise ConfigurationError(f"{name}:{number}: {problem}")
            records.append(record)
    return records


# -- the replay store and evaluator --------------------------------------------------
class _ReplayStore(Store):
    """Answers for the record being replayed, from what the log says: nothing is
    counted and nothing is stored.

    Approval requests are known by the ``approval_id`` of the records: the requests
    (replayed scopes) that asked for one are its *holders*, and a call of another
    request that consulted it continued them, as the live store's snapshots made it
    do (see :mod:`d2.core.resume`)."""

    def __init__(self) -> None:
        self.record: Mapping[str, Any] = {}
        self.holders: dict[str, dict[object, RequestScope]] = {}  # approval id -> scopes
        self.current: object = None  # the request (key) of the record being replayed

    def settle(self, key: object, scope: RequestScope) -> None:
        """After a record: the request it asked for now has this scope as a
        holder; a used or rejected request is gone."""
        approval = self.record.get("approval_id")
        if not isinstance(approval, str) or not approval:
            return
        if self.record.get("reason") == "approval_required":
            self.holders.setdefault(approval, {})[key] = scope
        elif self.record.get("decision") == "allowed" or (
            self.record.get("reason") == "approval_rejected"
        ):
            self.holders.pop(approval, None)

    def find_approval(self, namespace: str, call: str, now: float) -> ApprovalState | None:
        approval = self.record.get("approval_id")
        user = self.record.get("user_id")
        holders = self.holders.get(approval) if isinstance(approval, str) else None
        if not holders or not isinstance(user, str):
            return None
        assert isinstance(approval, str)
        request = ApprovalRequest(approval, self.record["tool_id"], user, {}, "", 0.0, ())
        snapshots = tuple(
            (lineage(scope).token, snapshot(scope, user, bounded=False))
            for key, scope in holders.items()
            if key != self.current
        )
        return ApprovalState(request, "pending", None, snapshots)

    def take(
        self,
        namespace: str,
        counters: Sequence[Counter],
        approval: ApprovalKey | None,
        now: float,
    ) -> int:
        record = self.record
        # per-user budgets as recorded: full only when the call was refused for one
        if (
            counters
            and record.get("reason") == "budget_exceeded"
            and record.get("retry_after") is not None
        ):
            return 0
        if approval is not None:
            given = record.get("decision") == "allowed" and bool(record.get("approval_id"))
            return TAKEN if given else APPROVAL_MISSING
        return TAKEN

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
        rejected = self.record.get("reason") == "approval_rejected"
        return ApprovalState(request, "rejected" if rejected else "pending")

    def save_snapshot(
        self,
        namespace: str,
        held: Sequence[ApprovalKey],
        holder: str,
        snapshot: str,
        now: float,
    ) -> list[bool]:
        return [False] * len(held)  # nothing is kept: no held request lives on

    def get_approval(self, namespace: str, request_id: str, now: float) -> ApprovalState | None:
        return None

    def decide_approval(
        self, namespace: str, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        return False

    def pending_approvals(self, namespace: str, now: float) -> list[ApprovalRequest]:
        return []


class _Capture:
    """The replay's decision sink: what the evaluator decided for the call being
    replayed, and the deciding rule (found as the decision log finds it)."""

    arguments = False

    def __init__(self) -> None:
        self.seen: tuple[str, str | None, str | None] | None = None

    def add(
        self,
        tool_id: str,
        ctx: UserContext,
        reason: str | None,
        decision: str,
        policy: CompiledPolicy | None,
        rules: ToolRules | None,
        err: PermissionDeniedError | None,
        grant: Grant | None,
        duration: float,
        call: tuple[Any, ...] | None,
        approval: str | None,
    ) -> None:
        self.seen = (decision, reason, deciding_rule(err, grant, rules, ctx.roles))


def _timeless(policy: CompiledPolicy) -> CompiledPolicy:
    """``policy`` without its expiry: the same rules, compiled again from the same
    document (and bytes: same digest) minus ``metadata.expires``."""
    if policy.expires_at == float("inf") and policy.namespace:
        return policy
    document: Any = policy.document
    meta = document.get("metadata") if isinstance(document, Mapping) else None
    if isinstance(meta, Mapping):
        document = {
            **document,
            "metadata": {k: v for k, v in meta.items() if k != "expires"},
        }
    # the replay store is nobody's: any namespace will do, even for an unnamed policy
    return compile_policy(
        document,
        source=policy.source,
        raw=policy.raw,
        version=policy.version,
        namespace=policy.namespace or "<replay>",
    )


class _Unbound(dict[str, Any]):
    """Keyword arguments none of which can be read: an input rule reads each of
    its arguments as unbound, which the evaluator refuses (fail closed)."""

    def get(self, key: str, default: Any = None) -> Any:
        return UNBOUND


def _approval_held(record: Mapping[str, Any]) -> bool:
    """Whether ``approval.when`` held for a call whose arguments were not recorded:
    the log shows an approval used or asked for (or refused, or needed in audit
    mode, where nobody is asked and no id is recorded)."""
    return bool(record.get("approval_id")) or record.get("reason") in (
        "approval_required",
        "approval_rejected",
    )


def _always_approved(rules: ToolRules, inputs_fail: bool) -> bool:
    """Whether the grant the evaluator will choose (the first granting entry, or
    when input rules fail, the first without input rules) has an approval without
    ``when``: it applies to every call, whatever ``approval_holds`` says."""
    ctx = current_context()
    for grant in rules.allow_grants(ctx.roles):
        if not (inputs_fail and grant.input):
            return grant.approval is not None and not grant.approval.input
    return False


NOTE_INPUTS = "input rules or approval.when not judged: the call's arguments were not recorded"
NOTE_USER_BUDGETS = "per: user budgets taken as recorded, not counted again"


def _evaluate(
    evaluator: Evaluator,
    capture: _Capture,
    store: _ReplayStore,
    record: Mapping[str, Any],
    report: ReplayReport,
) -> tuple[str, str | None, str | None]:
    """(decision, reason, rule) of the candidate for one record, in the current
    context."""
    store.record = record
    capture.seen = None
    tool_id: str = record["tool_id"]
    raised: PermissionDeniedError | None = None
    try:
        rules = evaluator.check(tool_id)
        if rules.budgeted or rules.conditional:
            grants = rules.allow_grants(current_context().roles)
            if not isinstance(record.get("arguments"), dict) and any(
                g.input or (g.approval is not None and g.approval.input) for g in grants
            ):
                report.note(NOTE_INPUTS)
            if any(g.user_limits for g in grants):
                report.note(NOTE_USER_BUDGETS)
        if rules.guarded:
            arguments = record.get("arguments")
            if isinstance(arguments, dict):
                evaluator.admit(rules, (), dict(arguments), None)
            else:
                # input rules are judged as recorded: they failed for a call refused
                # by them (every constrained argument then reads as unbound, which
                # the evaluator refuses), and are skipped for any other call
                failed = record.get("reason") == "input_validation"
                held = _approval_held(record) or _always_approved(rules, failed)
                if failed:
                    evaluator.admit(rules, (), _Unbound(), None, approval_holds=held)
                else:
                    evaluator.admit(rules, (), {}, None, inputs=False, approval_holds=held)
    except PermissionDeniedError as exc:
        raised = exc
    if capture.seen is not None:
        return capture.seen
    if raised is not None:
        return "denied", raised.reason, deciding_rule(raised, None, None, frozenset())
    return "allowed", None, None  # pragma: no cover - every decision is reported


def replay(records: Iterable[Mapping[str, Any]], policy: CompiledPolicy) -> ReplayReport:
    """Decide every recorded call again under ``policy`` (the candidate) and report
    what changes; see the module docstring for how each call is judged.

    ``records`` are decision-log records (from :func:`read_log`); a record that is
    not one raises :class:`~d2.core.errors.ConfigurationError`. The caller's user
    context is left as it was.
    """
    items = list(records)
    for index, record in enumerate(items):
        problem = _problem(record)
        if problem is not None:
            raise ConfigurationError(f"decision record {index + 1}: {problem}")

    evaluator = Evaluator("<replay>")  # the real one, registered nowhere
    capture = _Capture()
    evaluator.set_log(capture)
    store = _ReplayStore()
    evaluator.policy = _timeless(policy)
    evaluator.store = store

    report = ReplayReport(records=len(items))
    found: list[tuple[int, Change]] = []
    scopes: dict[object, RequestScope] = {}
    for index, record in enumerate(items):  # in file order: a resume reads its holders
        request_id = record.get("request_id")
        key: object = ("record", index) if request_id is None else ("request", str(request_id))
        scope = scopes.get(key)
        if scope is None:  # fresh per request: history, facts, per-request budgets
            scope = scopes[key] = RequestScope()
        before: str = record["decision"]
        before_reason: str | None = record.get("reason")
        if before_reason in _OUTPUT_REASONS:
            report.skip(_SKIP_OUTPUT)
            continue
        if before_reason == "budget_unavailable":
            report.skip(_SKIP_STORE)
            continue
        user_id: str | None = record["user_id"]
        if user_id is None or (before == "denied" and before_reason in _FIXED_REASONS):
            report.unchanged += 1  # refused before any rule: no policy changes it
            continue
        roles = normalise_roles(record["roles"])
        token = attach(UserContext(user_id, roles, scope))
        store.current = key
        try:
            after, reason, rule = _evaluate(evaluator, capture, store, record, report)
        finally:
            detach(token)
            store.settle(key, scope)
        if (after, reason) == (before, before_reason):
            report.unchanged += 1
            continue
        request_id = record.get("request_id")
        found.append(
            (
                index,
                Change(
                    tool_id=record["tool_id"],
                    user_id=user_id,
                    roles=tuple(sorted(roles)),
                    request_id=None if request_id is None else str(request_id),
                    before=before,
                    after=after,
                    reason=reason,
                    before_reason=before_reason,
                    rule=rule,
                ),
            )
        )
    report.changes = [change for _, change in found]
    report.changed = len(report.changes)
    return report
