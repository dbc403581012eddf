"""The decision: may the current user call this tool under the policy in force?

One :class:`Evaluator` per instance name holds the policy in force (swapped
atomically by a single attribute assignment when a new policy loads). A decision
reads that attribute, the user context and the per-tool rules: a handful of dict and
set operations on immutable data, with no lock and no I/O.

Decision steps implemented here (``POLICY.md``):
1. a policy is in force and not expired, else ``MissingPolicyError`` /
   ``BundleExpiredError``;
2. a user is set, else reason ``no_user``;
3. RBAC: some role of the user is granted the tool, and no role of the user has an
   ``allow: false`` matching it (that overrides every grant). A tool no entry can
   match is ``MissingPolicyError`` (reason ``unknown_tool``).
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

from .context import UserContext, current_context
from .errors import BundleExpiredError, MissingPolicyError, PermissionDeniedError
from .policy.model import CompiledPolicy, ToolRules

__all__ = ["Evaluator", "TraceStep", "evaluator_for"]

_now = time.time


class TraceStep(NamedTuple):
    """One step of a decision: ``step`` (``policy``, ``user``, ``rbac``, ...),
    ``outcome`` (``pass`` or ``deny``), a human ``detail`` and, when a rule of the
    policy decided, its ``path`` in the document."""

    step: str
    outcome: str
    detail: str
    path: str | None = None


def _roles_text(roles: frozenset[str]) -> str:
    return ", ".join(sorted(roles)) or "none"


class Evaluator:
    """The decision point of one instance (``"default"`` unless named).

    ``policy`` is the policy in force, or ``None`` (then ``absent_reason`` says why).
    """

    __slots__ = ("absent_detail", "absent_reason", "guarded_tools", "name", "policy", "strict")

    def __init__(self, name: str) -> None:
        self.name = name
        self.policy: CompiledPolicy | None = None
        self.absent_reason = "missing_policy"
        self.absent_detail = (
            f"D2 is not configured (instance {name!r}): call d2.configure_rbac_sync() or "
            "await d2.configure_rbac_async() once at startup, before calling guarded tools"
        )
        self.strict = False
        self.guarded_tools: set[str] = set()

    # -- the hot path ---------------------------------------------------------------
    def check(self, tool_id: str) -> ToolRules:
        """Decide for the current user; return the tool's rules or raise a denial."""
        policy = self.policy
        ctx = current_context()
        if policy is None or _now() >= policy.expires_at or ctx.user_id is None:
            raise self._denial(policy, tool_id, ctx)
        rules = policy.rules_for(tool_id)
        roles = ctx.roles
        if rules.deny_roles.isdisjoint(roles) and not rules.allow_roles.isdisjoint(roles):
            return rules
        raise self._denial(policy, tool_id, ctx)

    # -- everything below runs only for denials or queries ---------------------------
    def decide(self, tool_id: str, ctx: UserContext | None = None) -> PermissionDeniedError | None:
        """The denial the call would get, or ``None`` when it is allowed. Never raises."""
        ctx = current_context() if ctx is None else ctx
        policy = self.policy
        if policy is None or _now() >= policy.expires_at or ctx.user_id is None:
            return self._denial(policy, tool_id, ctx)
        rules = policy.rules_for(tool_id)
        if rules.deny_roles.isdisjoint(ctx.roles) and not rules.allow_roles.isdisjoint(ctx.roles):
            return None
        return self._denial(policy, tool_id, ctx)

    def _denial(
        self, policy: CompiledPolicy | None, tool_id: str, ctx: UserContext
    ) -> PermissionDeniedError:
        """Classify the refusal now (cheap); the message and trace are built only
        when someone reads them."""
        cls: type[PermissionDeniedError] = PermissionDeniedError
        if policy is None:
            cls, reason = MissingPolicyError, self.absent_reason
        elif _now() >= policy.expires_at:
            cls, reason = BundleExpiredError, "policy_expired"
        elif ctx.user_id is None:
            reason = "no_user"
        else:
            rules = policy.rules_for(tool_id)
            if not rules.known:
                cls, reason = MissingPolicyError, "unknown_tool"
            elif not rules.deny_roles.isdisjoint(ctx.roles):
                reason = "explicit_deny"
            else:
                reason = "not_granted"
        return cls.deferred(
            reason,
            tool_id,
            ctx.user_id,
            ctx.roles,
            functools.partial(self._explain, reason, policy, tool_id, ctx),
        )

    def _explain(
        self, reason: str, policy: CompiledPolicy | None, tool_id: str, ctx: UserContext
    ) -> tuple[str, tuple[TraceStep, ...]]:
        user, roles = ctx.user_id, ctx.roles
        if policy is None:
            return (
                f"{tool_id!r} denied: {self.absent_detail}",
                (TraceStep("policy", "deny", self.absent_detail),),
            )
        loaded = TraceStep("policy", "pass", f"{policy.source} ({policy.digest[:12]})")
        if reason == "policy_expired":
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(policy.expires_at))
            detail = f"the policy expired at {when}"
            return (
                f"{tool_id!r} denied: {detail}; load a renewed policy (local: update "
                "metadata.expires in the file; cloud: publish a new bundle)",
                (TraceStep("policy", "deny", detail),),
            )
        if reason == "no_user":
            detail = "no user context is set"
            return (
                f"{tool_id!r} denied: {detail}; call d2.set_user(user_id, roles=[...]) for "
                "this request before calling guarded tools",
                (loaded, TraceStep("user", "deny", detail)),
            )
        who = TraceStep("user", "pass", f"{user!r} with roles [{_roles_text(roles)}]")
        rules = policy.rules_for(tool_id)
        if reason == "unknown_tool":
            detail = f"no entry of the policy names {tool_id!r} (or a wildcard matching it)"
            return (
                f"{tool_id!r} denied: {detail}; add it to a role's permissions in {policy.source}",
                (loaded, who, TraceStep("rbac", "deny", detail)),
            )
        deny = rules.deny_grant(roles)
        if reason == "explicit_deny" and deny is not None:
            role = next(r for r in deny.roles if r in roles)
            detail = f"role {role!r} has 'allow: false' for {deny.pattern!r}"
            return (
                f"{tool_id!r} denied for user {user!r}: {detail} at {deny.path} "
                "(an explicit deny overrides every grant)",
                (loaded, who, TraceStep("rbac", "deny", detail, deny.path)),
            )
        detail = f"no role of the user ([{_roles_text(roles)}]) is granted {tool_id!r}"
        granted = sorted(rules.allow_roles)
        hint = f" (roles that may: {', '.join(granted[:10])})" if granted else ""
        return (
            f"{tool_id!r} denied for user {user!r}: {detail}{hint}",
            (loaded, who, TraceStep("rbac", "deny", detail)),
        )

    def allowed_tools(self, ctx: UserContext | None = None) -> tuple[str, ...]:
        """Concrete tool ids the user may call: those the policy names plus those
        guarded in this process, filtered by :meth:`decide`; sorted."""
        ctx = current_context() if ctx is None else ctx
        policy = self.policy
        if policy is None:
            return ()
        candidates = policy.concrete_tools | self.guarded_tools
        return tuple(sorted(t for t in candidates if self.decide(t, ctx) is None))


_evaluators: dict[str, Evaluator] = {}


def evaluator_for(name: str) -> Evaluator:
    """The evaluator of instance ``name`` (created on first use, kept for good)."""
    ev = _evaluators.get(name)
    if ev is None:
        ev = _evaluators.setdefault(name, Evaluator(name))
    return ev
