"""The steps of a decision (:class:`TraceStep`) and the refusals built from them.

Data types and message builders only: the evaluator (:mod:`d2.core.evaluate`), the
guardrail steps (:mod:`d2.core._guardrails`) and the store refusals
(:mod:`d2.core._refusals`) sit above this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import PermissionDeniedError

if TYPE_CHECKING:
    from .context import UserContext
    from .policy.model import CompiledPolicy, ToolRules

__all__ = ["TraceStep", "base_trace", "rbac_step", "refusal", "roles_text"]


class TraceStep(NamedTuple):
    """One step of a decision: ``step`` (``policy``, ``user``, ``rbac``, ...),
    ``outcome`` (``pass`` or ``deny``), a human ``detail`` and, when a rule of the
    policy decided, its ``path`` in the document."""

    step: str
    outcome: str
    detail: str
    path: str | None = None


def roles_text(roles: frozenset[str]) -> str:
    """The roles as a message shows them (sorted; ``none`` when there are none)."""
    return ", ".join(sorted(roles)) or "none"


def rbac_step(rules: ToolRules, ctx: UserContext) -> TraceStep:
    """Step 3 as passed: which entry granted the tool to which of the user's roles."""
    grant = rules.allow_grants(ctx.roles)[0]
    roles = ", ".join(sorted(ctx.roles & rules.allow_roles))
    return TraceStep("rbac", "pass", f"granted by {grant.pattern!r} to role(s) {roles}", grant.path)


def base_trace(policy: CompiledPolicy, ctx: UserContext) -> tuple[TraceStep, ...]:
    """Steps 1-2 as passed: the policy in force and the user."""
    return (
        TraceStep("policy", "pass", f"{policy.source} ({policy.digest[:12]})"),
        TraceStep("user", "pass", f"{ctx.user_id!r} with roles [{roles_text(ctx.roles)}]"),
    )


def refusal(
    rules: ToolRules,
    ctx: UserContext,
    reason: str,
    step: str,
    detail: str,
    path: str | None,
    *,
    cite: bool = True,
    **fields: Any,
) -> PermissionDeniedError:
    """The denial of a call RBAC allowed, refused at ``step`` for ``detail``: its
    trace lists steps 1-3 as passed, then this step. ``cite``: end the message with
    the rule's ``path``. ``fields``: more keywords of the error (``retry_after``)."""
    where = f" ({path})" if cite else ""
    return PermissionDeniedError(
        f"{rules.tool_id!r} denied for user {ctx.user_id!r}: {detail}{where}",
        tool_id=rules.tool_id,
        user_id=ctx.user_id,
        roles=ctx.roles,
        reason=reason,
        trace=(
            *base_trace(rules.policy, ctx),
            rbac_step(rules, ctx),
            TraceStep(step, "deny", detail, path),
        ),
        **fields,
    )
