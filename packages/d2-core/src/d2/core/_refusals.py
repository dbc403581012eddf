"""The refusals of steps 6b-6c: budgets and approvals, and a store that cannot
answer. Message builders only; :mod:`d2.core.evaluate` decides when each applies."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from ._trace import TraceStep, base_trace, rbac_step, refusal
from .errors import ApprovalRequiredError, PermissionDeniedError
from .resume import MAX_CALLS

if TYPE_CHECKING:
    from .approval_data import ApprovalRequest
    from .context import UserContext
    from .policy.model import Grant, Limit, ToolRules
    from .resume import SnapshotTooLarge
    from .stores.base import Store

__all__ = [
    "Admitted",
    "approval_error",
    "budget_error",
    "changed_error",
    "log_store_problem",
    "too_large_error",
    "unapprovable_error",
    "unavailable_error",
    "unscoped_error",
]


class Admitted(Protocol):
    """The call being admitted, as a refusal reads it."""

    @property
    def rules(self) -> ToolRules:
        """The tool's rules under the policy in force."""

    @property
    def ctx(self) -> UserContext:
        """The caller's context."""

    @property
    def grant(self) -> Grant | None:
        """The entry that granted the call, once step 4 chose it."""


def _grant_path(adm: Admitted) -> str | None:
    return adm.grant.path if adm.grant is not None else None


def budget_error(
    rules: ToolRules, ctx: UserContext, limit: Limit, retry_after: float | None
) -> PermissionDeniedError:
    """A budget used up (``retry_after``: seconds until its window resets, ``None``
    for a ``per: request`` budget)."""
    if retry_after is None:
        detail = f"the budget of {limit.describe()} is used up (it resets with the request)"
    else:
        detail = (
            f"the budget of {limit.describe()} is used up; the window resets in {retry_after:.0f}s"
        )
    return refusal(
        rules, ctx, "budget_exceeded", "budget", detail, limit.path, retry_after=retry_after
    )


def unavailable_error(adm: Admitted, problem: BaseException | None) -> PermissionDeniedError:
    """The store could not answer (or answered nonsense): the call is denied."""
    log_store_problem(problem)
    detail = (
        f"the budget/approval store could not answer ({type(problem).__name__}: "
        f"{problem}); the call is denied until it is reachable again"
    )
    return refusal(
        adm.rules, adm.ctx, "budget_unavailable", "budget", detail, _grant_path(adm), cite=False
    )


def too_large_error(adm: Admitted, exc: SnapshotTooLarge) -> PermissionDeniedError:
    """A request scope that feeds a held request grew past what is saved with it:
    the call is denied rather than left out of the saved history."""
    detail = (
        f"this request asked for an approval, and each of its calls is saved with the "
        f"approval request so the request can resume where it paused; {exc}, so it "
        f"cannot be saved (the limit is {MAX_CALLS} calls that sequence or data-flow "
        "rules read). Start a new request (set_user) for new work, or let the pending "
        "approval be decided or expire"
    )
    return refusal(
        adm.rules, adm.ctx, "budget_unavailable", "approval", detail, _grant_path(adm), cite=False
    )


def unscoped_error(adm: Admitted, store: Store) -> PermissionDeniedError:
    """An unnamed policy on a shared store: its keys could be another app's."""
    detail = (
        f"the policy has no metadata.name, and its budgets and approvals live in a shared "
        f"store ({type(store).__name__}), where the name keeps each app's counters and "
        "requests apart; give the policy a metadata.name"
    )
    return refusal(
        adm.rules, adm.ctx, "budget_unavailable", "budget", detail, _grant_path(adm), cite=False
    )


def approval_error(
    rules: ToolRules,
    ctx: UserContext,
    request: ApprovalRequest | None,
    path: str,
    state: str | None,
) -> PermissionDeniedError:
    """The call needs an approval: asked for (``ApprovalRequiredError``), rejected,
    approved meanwhile, or (``request`` None, audit mode) never asked."""
    base = (*base_trace(rules.policy, ctx), rbac_step(rules, ctx))
    fields: dict[str, Any] = {"tool_id": rules.tool_id, "user_id": ctx.user_id, "roles": ctx.roles}
    if state == "rejected" and request is not None:
        detail = (
            f"approval request {request.id[:12]} for this exact call was rejected; the "
            "request is closed, and the next identical call asks for a new approval"
        )
        return refusal(rules, ctx, "approval_rejected", "approval", detail, path)
    if request is None:  # audit mode: nobody is asked
        detail = "the call needs an approval (audit mode: none was requested)"
        return PermissionDeniedError(
            f"{rules.tool_id!r} for user {ctx.user_id!r}: {detail} ({path})",
            reason="approval_required",
            trace=(*base, TraceStep("approval", "would_deny", detail, path)),
            **fields,
        )
    roles = ", ".join(request.approver_roles)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(request.expires_at))
    if state == "approved":  # approved between two questions to the store: rare
        detail = f"approval request {request.id} was approved meanwhile; retry the call"
    else:
        detail = (
            f"this exact call needs an approval by a user with role [{roles}]; approval "
            f"request {request.id} waits until {when}"
        )
    return ApprovalRequiredError(
        f"{rules.tool_id!r} for user {ctx.user_id!r}: {detail}. An approver calls "
        f"d2.approve({request.id!r}); then retry the identical call",
        request=request,
        trace=(*base, TraceStep("approval", "deny", detail, path)),
        **fields,
    )


def unapprovable_error(
    rules: ToolRules, ctx: UserContext, path: str, problem: str
) -> PermissionDeniedError:
    """The call needs an approval but its arguments have no exact digest."""
    detail = (
        f"the call needs an approval, but its arguments cannot be digested exactly "
        f"({problem}), so no approval could be tied to this call alone; pass plain "
        "values (JSON types, dataclasses, pydantic models, enums, dates, instances of "
        "your own classes): a file, a stream, a lock, a socket or a function is never "
        "approved"
    )
    return refusal(rules, ctx, "approval_unsupported", "approval", detail, path)


def changed_error(adm: Admitted, path: str, later: bool = False) -> PermissionDeniedError:
    """The arguments changed between the decision and the run (another task or
    thread mutated an argument while the store answered; ``later``: before the
    body of a generator, or of a returned coroutine, started): the call is
    refused."""
    rules = adm.rules
    if later:
        detail = (
            "an argument changed between the call and the start of its body (a "
            "generator's first step, a returned coroutine awaited), so the tool would "
            "read arguments other than the ones judged and approved; do not change an "
            "argument before the generator or coroutine of a guarded call is consumed, "
            "and call the tool again"
        )
    else:
        detail = (
            "an argument changed while the store answered (another task or thread "
            "mutated it after the call was judged), so the tool would receive arguments "
            "other than the ones judged and approved; do not share a mutable argument "
            "between concurrent calls, and retry the call"
        )
    if rules.approvals:
        return refusal(rules, adm.ctx, "approval_unsupported", "approval", detail, path)
    return refusal(rules, adm.ctx, "input_validation", "input", detail, path)


_LOG_EVERY = 60.0  # seconds between two store-failure warnings, at least
_clock = time.monotonic
_store_log = [-_LOG_EVERY, 0]  # when the last warning was logged, failures since


def log_store_problem(exc: BaseException | None) -> None:
    """Log a store failure (a warning), at most once a minute with the count of
    failures since the last one: an outage must not flood the app's log, and one
    failure must not silence the next outage."""
    now = _clock()
    last, quiet = _store_log
    if now - last < _LOG_EVERY:
        _store_log[1] = quiet + 1
        return
    _store_log[:] = [now, 0]
    import logging  # off the cold path: only a failing store logs

    logging.getLogger("d2").warning(
        "d2: the budget/approval store failed (%s: %s)%s; calls of tools with per-user "
        "limits or approvals are denied (budget_unavailable) until it answers again",
        type(exc).__name__,
        exc,
        f" ({quiet} more since the last warning)" if quiet else "",
    )
