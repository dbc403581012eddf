"""The decision: may the current user call this tool under the policy in force?

One :class:`Evaluator` per instance name holds the policy in force (swapped
atomically by a single attribute assignment when a new policy loads). A decision
reads that attribute, the user context and the per-tool rules: a handful of dict and
set operations on immutable data, with no lock and no I/O.

Decision steps (``POLICY.md``), in order; the first that fails denies:
1. a policy is in force and not expired, else ``MissingPolicyError`` /
   ``BundleExpiredError``;
2. a user is set, else reason ``no_user``;
3. RBAC: some role of the user is granted the tool, and no role of the user has an
   ``allow: false`` matching it (that overrides every grant). A tool no entry can
   match is ``MissingPolicyError`` (reason ``unknown_tool``);
4. input: the first granting entry (policy order) whose ``conditions.input`` hold
   wins and supplies the output rules (``input_validation``);
5. sequence: for some role of the user that grants the tool, the call passes that
   role's sequence rules (``sequence_violation``);
6. data flow: no label recorded in the request blocks the tool
   (``data_flow_violation``);
7. the call is recorded (history, labels) and the tool runs;
8. output: the chosen entry's ``conditions.output`` validate and sanitize the
   result (``output_validation`` / ``output_sanitization``).

Steps 1-3 are :meth:`Evaluator.check`, the hot path; a tool for which the policy
has nothing beyond RBAC stops there. Steps 4-7 are :meth:`Evaluator.admit`, step 8
:meth:`Evaluator.finish`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple

from ._functions import UNBOUND, Arguments
from .context import RequestScope, UserContext, current_context
from .errors import BundleExpiredError, MissingPolicyError, PermissionDeniedError
from .policy._text import short
from .policy.constraints import MISSING
from .policy.model import CompiledPolicy, Grant, ToolRules
from .policy.output import OutputRules, OutputViolation

if TYPE_CHECKING:
    from .telemetry import Metrics

__all__ = ["Decision", "Evaluator", "TraceStep", "evaluator_for"]

_now = time.time


class TraceStep(NamedTuple):
    """One step of a decision: ``step`` (``policy``, ``user``, ``rbac``, ...),
    ``outcome`` (``pass`` or ``deny``), a human ``detail`` and, when a rule of the
    policy decided, its ``path`` in the document."""

    step: str
    outcome: str
    detail: str
    path: str | None = None


class Decision(NamedTuple):
    """What :func:`~d2.core.explain` found: ``allowed``, the denial ``reason``
    (``None`` when allowed), the ``trace`` of steps, the ``grant_path`` of the entry
    that allowed the call (its output rules apply) and the ``error`` a call would
    raise."""

    allowed: bool
    reason: str | None
    trace: tuple[TraceStep, ...]
    grant_path: str | None
    error: PermissionDeniedError | None


Observer = Callable[[str, UserContext, "str | None"], None]


class _Track:
    """What one policy has read of a request's history: sequence progress per
    tracked rule, the data-flow labels the calls carry under this policy (so a
    policy swapped in mid-request still sees the calls made before), and how many
    history entries it has read. Replaced, never mutated: threads racing to catch
    up each compute the same value from the same input, so no lock is needed."""

    __slots__ = ("labels", "progress", "read")

    def __init__(self, progress: tuple[int, ...], labels: dict[str, str], read: int) -> None:
        self.progress = progress
        self.labels = labels
        self.read = read


def _track(scope: RequestScope, policy: CompiledPolicy) -> _Track:
    """``policy``'s view of this request's history, caught up incrementally: each
    recorded call is read once per policy, O(rules mentioning it)."""
    track: _Track | None = scope.progress.get(policy)
    history = scope.history
    end = len(history)
    if track is not None and track.read >= end:
        return track
    if track is None:
        progress: tuple[int, ...] = (0,) * len(policy.tracked)
        labels: dict[str, str] = {}
        read = 0
    else:
        progress, labels, read = track.progress, track.labels, track.read
    new_progress: list[int] | None = None  # copied only when something moves
    new_labels: dict[str, str] | None = None
    for tool_id in history[read:end]:
        rules = policy.rules_for(tool_id)
        for slot, hits, last in rules.advance:
            done = (new_progress or progress)[slot]
            if done < last and done in hits:
                if new_progress is None:
                    new_progress = list(progress)
                new_progress[slot] = done + 1
        if rules.labels:
            if new_labels is None:
                new_labels = dict(labels)
            for label in rules.labels:
                new_labels.setdefault(label, tool_id)
    track = _Track(
        tuple(new_progress) if new_progress is not None else progress,
        new_labels if new_labels is not None else labels,
        end,
    )
    scope.progress[policy] = track
    return track


def _roles_text(roles: frozenset[str]) -> str:
    return ", ".join(sorted(roles)) or "none"


class Evaluator:
    """The decision point of one instance (``"default"`` unless named).

    ``policy`` is the policy in force, or ``None`` (then ``absent_reason`` says why).
    """

    __slots__ = (
        "absent_detail",
        "absent_reason",
        "guarded_tools",
        "name",
        "observer",
        "observers",
        "policy",
        "strict",
        "timer",
    )

    guarded_tools: dict[str, Arguments | None]

    def __init__(self, name: str) -> None:
        self.name = name
        self.policy: CompiledPolicy | None = None
        self.absent_reason = "missing_policy"
        self.absent_detail = (
            f"D2 is not configured (instance {name!r}): call d2.configure_rbac_sync() or "
            "await d2.configure_rbac_async() once at startup, before calling guarded tools"
        )
        self.strict = False
        self.guarded_tools = {}  # tool id -> how to read its arguments
        # Told of every decision of a guarded call: (tool_id, context, reason or None
        # when allowed). None costs one attribute test per call (telemetry off).
        self.observer: Observer | None = None
        self.observers: tuple[Observer, ...] = ()
        # Metrics: times decisions and tool runs when set (None: nothing measured).
        self.timer: Metrics | None = None

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` of every decision of a guarded call (telemetry: usage
        events, metrics, decision logs). It must be cheap and must not raise."""
        self._set_observers((*self.observers, observer))

    def remove_observer(self, observer: Observer) -> None:
        """Stop telling ``observer``; unknown observers are ignored."""
        self._set_observers(tuple(o for o in self.observers if o != observer))

    def _set_observers(self, observers: tuple[Observer, ...]) -> None:
        self.observers = observers
        if not observers:
            self.observer = None
        elif len(observers) == 1:
            self.observer = observers[0]
        else:

            def fan_out(tool_id: str, ctx: UserContext, reason: str | None) -> None:
                for observer in observers:
                    observer(tool_id, ctx, reason)

            self.observer = fan_out

    # -- the hot path ---------------------------------------------------------------
    def check(self, tool_id: str, _untimed: bool = False) -> ToolRules:
        """Decide for the current user; return the tool's rules or raise a denial."""
        if self.timer is not None and not _untimed:
            return self._timed_check(tool_id)
        policy = self.policy
        ctx = current_context()
        if policy is None or not _now() < policy.expires_at or ctx.user_id is None:
            raise self._refuse(self._denial(policy, tool_id, ctx), ctx)
        rules = policy.rules_for(tool_id)
        roles = ctx.roles
        if rules.deny_roles.isdisjoint(roles) and not rules.allow_roles.isdisjoint(roles):
            if self.observer is not None and not rules.guarded:
                self.observer(tool_id, ctx, None)
            return rules
        raise self._refuse(self._denial(policy, tool_id, ctx), ctx)

    def _timed_check(self, tool_id: str) -> ToolRules:
        """:meth:`check`, timed for the metrics (only when they are on)."""
        timer = self.timer
        start = perf_counter()
        try:
            return self.check(tool_id, True)
        finally:
            if timer is not None:
                timer.decided(tool_id, perf_counter() - start)

    def _refuse(self, err: PermissionDeniedError, ctx: UserContext) -> PermissionDeniedError:
        if self.observer is not None:
            self.observer(err.tool_id or "", ctx, err.reason)
        return err

    # -- everything below runs only for denials or queries ---------------------------
    def decide(self, tool_id: str, ctx: UserContext | None = None) -> PermissionDeniedError | None:
        """The denial the call would get, or ``None`` when it is allowed. Never raises."""
        ctx = current_context() if ctx is None else ctx
        if not isinstance(tool_id, str) or not tool_id:
            return PermissionDeniedError(
                f"{short(tool_id)} is not a tool id", reason="unknown_tool"
            )
        policy = self.policy
        if policy is None or not _now() < policy.expires_at or ctx.user_id is None:
            return self._denial(policy, tool_id, ctx)
        # queries may carry ids from model output: remember only ids this process guards
        rules = policy.rules_for(tool_id, remember=tool_id in self.guarded_tools)
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
        elif not _now() < policy.expires_at:
            cls, reason = BundleExpiredError, "policy_expired"
        elif ctx.user_id is None:
            reason = "no_user"
        else:
            rules = policy.rules_for(tool_id, remember=False)
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
        rules = policy.rules_for(tool_id, remember=False)
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

    def admit(
        self,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
    ) -> OutputRules | None:
        """Steps 4-7 for a call that passed RBAC: raise the denial, or record the
        call and return the output rules to apply to its result."""
        ctx = current_context()
        output, denial = _layers(rules, ctx, args, kwargs, arguments, None)
        if denial is not None:
            raise self._refuse(_guardrail_error(rules, ctx, denial, args, kwargs, arguments), ctx)
        if self.observer is not None:
            self.observer(rules.tool_id, ctx, None)
        scope = ctx.scope
        # Step 7. History is kept while the policy has sequence or data-flow rules
        # (a request that never meets one keeps no history, however long it runs).
        if rules.policy.sequences or rules.policy.flow_labels:
            scope.history.append(rules.tool_id)
        if rules.labels:
            for label in rules.labels:
                scope.facts.setdefault(label, rules.tool_id)
        return output

    def finish(self, rules: ToolRules, output: OutputRules, result: Any) -> Any:
        """Step 8: the sanitized result, or raise the output denial."""
        try:
            return output.apply(result)
        except OutputViolation as exc:
            ctx = current_context()
            step = TraceStep("output", "deny", exc.detail, exc.path)
            raise self._refuse(
                PermissionDeniedError(
                    f"{rules.tool_id!r} result refused for user {ctx.user_id!r}: {exc.detail}"
                    + (f" ({exc.path})" if exc.path else ""),
                    tool_id=rules.tool_id,
                    user_id=ctx.user_id,
                    roles=ctx.roles,
                    reason=exc.reason,
                    trace=(*_base_trace(rules.policy, ctx), _rbac_step(rules, ctx), step),
                ),
                ctx,
            ) from None

    def explain(
        self, tool_id: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Decision:
        """The decision a call ``tool_id(*args, **kwargs)`` would get now, with the
        trace of every step; nothing runs and nothing is recorded."""
        kwargs = kwargs or {}
        ctx = current_context()
        err = self.decide(tool_id, ctx)
        if err is not None:
            return Decision(False, err.reason, err.trace, None, err)
        policy = self.policy
        assert policy is not None
        rules = policy.rules_for(tool_id, remember=False)
        arguments = self.guarded_tools.get(tool_id)
        if arguments is not None and arguments.method:
            args = (None, *args)  # the guard sees self/cls first; explain() is given none
        trace = [*_base_trace(policy, ctx), _rbac_step(rules, ctx)]
        allowed = rules.allow_grants(ctx.roles)
        output, denial = _layers(rules, ctx, args, kwargs, arguments, trace)
        if denial is not None:
            err = _guardrail_error(rules, ctx, denial, args, kwargs, arguments)
            return Decision(False, err.reason, err.trace, None, err)
        chosen = next(
            (g for g in allowed if not g.input or _check_input(g, args, kwargs, arguments) is None),
            allowed[0],
        )
        if output is not None:
            trace.append(
                TraceStep(
                    "output",
                    "pass",
                    "result will be checked by the output rules of the chosen entry",
                    f"{chosen.path}.conditions.output",
                )
            )
        return Decision(True, None, tuple(trace), chosen.path, None)

    def allowed_tools(self, ctx: UserContext | None = None) -> tuple[str, ...]:
        """Concrete tool ids the user may call: those the policy names plus those
        guarded in this process, filtered by :meth:`decide`; sorted."""
        ctx = current_context() if ctx is None else ctx
        policy = self.policy
        if policy is None:
            return ()
        candidates = policy.concrete_tools | self.guarded_tools.keys()
        return tuple(sorted(t for t in candidates if self.decide(t, ctx) is None))


def _rbac_step(rules: ToolRules, ctx: UserContext) -> TraceStep:
    grant = rules.allow_grants(ctx.roles)[0]
    roles = ", ".join(sorted(ctx.roles & rules.allow_roles))
    return TraceStep("rbac", "pass", f"granted by {grant.pattern!r} to role(s) {roles}", grant.path)


def _base_trace(policy: CompiledPolicy, ctx: UserContext) -> tuple[TraceStep, ...]:
    return (
        TraceStep("policy", "pass", f"{policy.source} ({policy.digest[:12]})"),
        TraceStep("user", "pass", f"{ctx.user_id!r} with roles [{_roles_text(ctx.roles)}]"),
    )


# A guardrail denial before it becomes an error: (reason, detail, path).
_Denial = tuple[str, str, "str | None"]


def _plan(grant: Grant, arguments: Arguments | None) -> tuple[Any, ...]:
    """How to read and check each argument of ``grant.input`` for one function:
    ``(position, name, default, ok)``; position -2 means "ask ``arguments``"."""
    plan = []
    for name, constraint in grant.input:
        pos = arguments.position(name) if arguments is not None else -1
        default = arguments.defaults.get(name, MISSING) if arguments is not None else MISSING
        if arguments is not None and not arguments.takes(name):
            pos = -3  # a rule on an argument the tool does not take: a typo, fail closed
        plan.append((-2 if pos is None else pos, name, default, constraint.ok))
    return tuple(plan)


def _check_input(
    grant: Grant, args: tuple[Any, ...], kwargs: dict[str, Any], arguments: Arguments | None
) -> _Denial | None:
    plans = arguments.plans if arguments is not None else None
    plan = plans.get(grant) if plans is not None else None
    if plan is None:
        plan = _plan(grant, arguments)
        if plans is not None:
            plans[grant] = plan
    n = len(args)
    for pos, name, default, ok in plan:
        if pos == -3:
            return (
                "input_validation",
                f"the policy constrains argument {name!r}, which this tool does not take: "
                "fix the argument name in the policy",
                f"{grant.path}.conditions.input.{name}",
            )
        if -1 < pos < n:
            value = args[pos]
        elif pos == -2 and arguments is not None:
            value = arguments.value(name, args, kwargs, MISSING)
        else:
            value = kwargs.get(name, default)
        if value is UNBOUND:
            return (
                "input_validation",
                f"argument {name!r} cannot be bound to the tool's signature (it is "
                "positional in a call to a callable whose parameters are unknown); pass "
                "it by keyword",
                f"{grant.path}.conditions.input.{name}",
            )
        if not ok(value):
            constraint = next(c for a, c in grant.input if a == name)
            op = constraint.failure(value) or "required"
            return (
                "input_validation",
                f"argument {name!r} fails {constraint.describe(op)}",
                f"{grant.path}.conditions.input.{name}",
            )
    return None


def _layers(
    rules: ToolRules,
    ctx: UserContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arguments: Arguments | None,
    trace: list[TraceStep] | None,
) -> tuple[OutputRules | None, _Denial | None]:
    """Steps 4-6. Returns (output rules of the chosen entry, None) or (None, denial).
    ``trace`` (explain, denials) collects the steps; the hot path passes None."""
    roles = ctx.roles
    output = None
    # 4. input: the first granting entry whose input conditions hold
    if rules.conditional:
        first_failure: _Denial | None = None
        chosen = None
        for grant in rules.allow_grants(roles):
            failure = _check_input(grant, args, kwargs, arguments) if grant.input else None
            if failure is None:
                chosen = grant
                break
            first_failure = first_failure or failure
        if chosen is None:
            assert first_failure is not None
            return None, first_failure
        output = chosen.output
        if trace is not None:
            n = len(chosen.input)
            trace.append(
                TraceStep("input", "pass", f"{n} argument rule{'s' * (n != 1)} hold", chosen.path)
            )
    policy = rules.policy
    scope = ctx.scope
    # 5. sequence: some granting role's rules pass
    if policy.sequences:
        state = _track(scope, policy).progress
        history = scope.history
        blocked: _Denial | None = None
        passed = False
        for role in sorted(roles & rules.allow_roles):
            seq = policy.sequences.get(role)
            if seq is None:
                passed = True
                break
            if seq.mode == "allow":
                hit = None
                excepted = False
                for rule in rules.completes.get(role, ()):
                    if state[rule.slot] >= len(rule.steps) - 1:
                        if rule.kind == "allow":
                            excepted = True
                        elif hit is None:
                            hit = rule
                if hit is None or excepted:
                    passed = True
                    break
                blocked = blocked or (
                    "sequence_violation",
                    f"the call would complete the forbidden sequence {hit.describe()} "
                    f"of role {role!r}",
                    hit.path,
                )
            else:
                if history:
                    ok = any(m(history[-1]) for m in rules.follows.get(role, ()))
                    why = f"{rules.tool_id!r} may not follow {history[-1]!r}"
                else:
                    ok = role in rules.firsts
                    why = f"{rules.tool_id!r} may not start the request"
                if ok:
                    passed = True
                    break
                blocked = blocked or (
                    "sequence_violation",
                    f"role {role!r} allows only the call chains of its allow rules: {why}",
                    seq.path,
                )
        if not passed:
            assert blocked is not None
            return None, blocked
        if trace is not None:
            trace.append(
                TraceStep("sequence", "pass", f"history of {len(history)} call(s) allows it")
            )
    # 6. data flow: no recorded label blocks the tool
    if rules.blocked_by:
        facts = scope.facts
        carried = _track(scope, policy).labels  # labels of earlier calls, this policy
        for label, path in rules.blocked_by.items():
            origin = facts.get(label) or carried.get(label)
            if origin is not None:
                return None, (
                    "data_flow_violation",
                    f"label {label!r} (recorded by {origin!r} earlier in "
                    f"this request) blocks {rules.tool_id!r}",
                    path,
                )
        if trace is not None:
            trace.append(TraceStep("data_flow", "pass", "no recorded label blocks it"))
    return output, None


def _guardrail_error(
    rules: ToolRules,
    ctx: UserContext,
    denial: _Denial,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arguments: Arguments | None,
) -> PermissionDeniedError:
    reason, detail, path = denial
    step = {
        "input_validation": "input",
        "sequence_violation": "sequence",
        "data_flow_violation": "data_flow",
    }[reason]
    # Re-run the layers with a trace (deterministic, records nothing) to list the
    # steps that passed before the one that denied.
    trace = [*_base_trace(rules.policy, ctx), _rbac_step(rules, ctx)]
    _layers(rules, ctx, args, kwargs, arguments, trace)
    trace.append(TraceStep(step, "deny", detail, path))
    return PermissionDeniedError(
        f"{rules.tool_id!r} denied for user {ctx.user_id!r}: {detail} ({path})",
        tool_id=rules.tool_id,
        user_id=ctx.user_id,
        roles=ctx.roles,
        reason=reason,
        trace=trace,
    )


_evaluators: dict[str, Evaluator] = {}


def evaluator_for(name: str) -> Evaluator:
    """The evaluator of instance ``name`` (created on first use, kept for good)."""
    ev = _evaluators.get(name)
    if ev is None:
        ev = _evaluators.setdefault(name, Evaluator(name))
    return ev
