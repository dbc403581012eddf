"""Steps 4-6 of a decision, the guardrails: input rules (which granting entry's
``conditions.input`` hold), call sequences and data flow, read against the request's
history; and the approval's ``when``. Pure functions of the policy, the call and the
request scope: :mod:`d2.core.evaluate` runs them and records what they allow.
"""

from __future__ import annotations

from typing import Any

from ._functions import UNBOUND, Arguments
from ._trace import TraceStep, base_trace, rbac_step
from .context import RequestScope, UserContext
from .errors import PermissionDeniedError
from .policy.constraints import MISSING
from .policy.model import Approval, CompiledPolicy, Grant, ToolRules
from .policy.output import OutputRules
from .policy.when import certainly_fails

__all__ = [
    "NOTHING_PICKED",
    "Denial",
    "Picked",
    "Track",
    "audit_error",
    "check_input",
    "guardrail_error",
    "input_step",
    "layers",
    "needs_approval",
    "progress_of",
    "record_call",
    "when_holds",
]


class Track:
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


def progress_of(scope: RequestScope, policy: CompiledPolicy) -> Track:
    """``policy``'s view of this request's history, caught up incrementally: each
    recorded call is read once per policy, O(rules mentioning it)."""
    cache = scope.progress  # a restore replaces it: what is read from an older
    track: Track | None = cache.get(policy)  # history is never cached in the new one
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
    track = Track(
        tuple(new_progress) if new_progress is not None else progress,
        new_labels if new_labels is not None else labels,
        end,
    )
    cache[policy] = track
    return track


def record_call(rules: ToolRules, scope: RequestScope) -> None:
    """Step 7: the call joins the request's history and its labels the facts.
    History is kept while the policy has sequence or data-flow rules (a request
    that never meets one keeps no history, however long it runs)."""
    if rules.policy.sequences or rules.policy.flow_labels:
        scope.history.append(rules.tool_id)
        scope.version += 1
    if rules.labels:
        for label in rules.labels:
            scope.facts.setdefault(label, rules.tool_id)
        scope.version += 1


def needs_approval(approval: Approval, call: tuple[Any, ...], holds: bool | None) -> bool:
    """Whether a call ``(args, kwargs, arguments)`` needs ``approval``: always
    without ``when``; else as ``when`` reads (``holds`` answers for it in a replay
    of calls whose arguments were not recorded)."""
    if not approval.input:
        return True
    if holds is not None:
        return holds
    args, kwargs, arguments = call
    return when_holds(approval, args, kwargs, arguments)


def when_holds(
    approval: Approval, args: tuple[Any, ...], kwargs: dict[str, Any], arguments: Arguments | None
) -> bool:
    """``approval.when``, read fail-safe: it does not hold only when some argument
    certainly fails its rule (see :mod:`d2.core.policy.when`). A value the operator
    cannot judge exactly (NaN, a list where a scalar is compared, ``"500"`` for
    ``gt: 100``, an unbindable argument) asks a person: skipping the approval must
    never be the way around it."""
    if arguments is not None:
        arguments = arguments.current()
    if check_input(approval, args, kwargs, arguments) is None:
        return True
    for name, constraint in approval.input:
        if arguments is not None:
            if not arguments.takes(name):
                return True  # a rule on an argument the tool does not take: a typo
            value = arguments.value(name, args, kwargs, MISSING)
        else:
            value = kwargs.get(name, MISSING)
        if value is UNBOUND:
            return True
        if certainly_fails(constraint, value):
            if arguments is not None and name == arguments.varkw and name in kwargs:
                # a decoy under the name of ``**kwargs``: ask unless the other
                # keywords certainly fail too
                rest = {k: v for k, v in arguments.collected(kwargs).items() if k != name}
                if not certainly_fails(constraint, rest):
                    continue
            return False
    return True


DOUBT = (
    "the guarded callable declares a __signature__ whose defaults are not the ones the "
    "function it wraps (__wrapped__) has now (changed after the wrapper was made?), so "
    "which value a call would run with is unknown. Set __signature__ again after "
    "changing the defaults, or put @d2_guard directly on the function"
)

# A guardrail denial before it becomes an error: (reason, detail, path).
Denial = tuple[str, str, "str | None"]


def input_plan(grant: Grant | Approval, arguments: Arguments | None) -> tuple[Any, ...]:
    """How to read and check each argument of ``grant.input`` for one function:
    ``(position, name, default, ok)``; position -2 means "ask ``arguments``", -3,
    -4 and -5 that the rule can never be read (a typo; a forwarding wrapper; a
    declared signature whose defaults are not the wrapped function's)."""
    plan = []
    for name, constraint in grant.input:
        pos = arguments.position(name) if arguments is not None else -1
        default = arguments.defaults.get(name, MISSING) if arguments is not None else MISSING
        if arguments is not None and arguments.doubt:
            pos = -5  # a declared signature that contradicts the wrapped function's defaults
        elif arguments is not None and arguments.forwarding and not arguments.declares(name):
            pos = -4  # passed on by a forwarding wrapper: where it lands is unknown
        elif arguments is not None and not arguments.takes(name):
            pos = -3  # a rule on an argument the tool does not take: a typo, fail closed
        plan.append((-2 if pos is None else pos, name, default, constraint.ok))
    return tuple(plan)


def unreadable(grant: Grant | Approval, name: str, pos: int) -> Denial:
    """The denial for a rule the plan found it can never read (see :func:`input_plan`)."""
    if pos == -5:
        detail = DOUBT
    elif pos == -3:
        detail = (
            f"the policy constrains argument {name!r}, which this tool does not take: "
            "fix the argument name in the policy"
        )
    else:
        detail = (
            f"argument {name!r} cannot be bound: the guarded callable is a forwarding "
            "wrapper (it has __wrapped__ and takes *args/**kwargs: a functools.wraps "
            "function, a class-based decorator or a proxy such as wrapt's), which may "
            "reorder or inject arguments before the wrapped function sees them. Put "
            "@d2_guard directly on the function (innermost decorator), or give the "
            "wrapper an honest __signature__"
        )
    return ("input_validation", detail, f"{grant.input_path}.{name}")


def check_input(
    grant: Grant | Approval,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arguments: Arguments | None,
) -> Denial | None:
    if arguments is not None:
        # the defaults the function has now: Arguments.current(), its common case
        # (a function without keyword-only parameters, no partial) inline
        latest = arguments.latest
        fn = latest.watched
        if latest.contents or (
            fn is not None
            and (fn.__code__ is not latest.code_seen or fn.__defaults__ is not latest.defaults_seen)
        ):
            latest = arguments.current()
        arguments = latest
        plans = latest.plans
    else:
        plans = None
    plan = plans.get(grant) if plans is not None else None
    if plan is None:
        plan = input_plan(grant, arguments)
        if plans is not None:
            plans[grant] = plan
    n = len(args)
    for pos, name, default, ok in plan:
        if pos < -2:
            return unreadable(grant, name, pos)
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
                f"{grant.input_path}.{name}",
            )
        if ok(value) and arguments is not None and name == arguments.varkw and name in kwargs:
            # a keyword passed under the very name of ``**kwargs`` is read as itself;
            # what the dict collects besides must pass the rule too (a decoy hides
            # nothing)
            value = {k: v for k, v in arguments.collected(kwargs).items() if k != name}
        if not ok(value):
            constraint = next(c for a, c in grant.input if a == name)
            op = constraint.failure(value) or "required"
            return (
                "input_validation",
                f"argument {name!r} fails {constraint.describe(op)}",
                f"{grant.input_path}.{name}",
            )
    return None


# Step 4's choice: (the chosen grant or None, the denial or None, the audited input
# rule that would have denied or None).
Picked = tuple["Grant | None", "Denial | None", "Denial | None"]
NOTHING_PICKED: Picked = (None, None, None)


def input_step(
    rules: ToolRules,
    roles: frozenset[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arguments: Arguments | None,
    inputs: bool = True,
) -> Picked:
    """Step 4: the first granting entry whose input conditions hold; when none
    does, the first audited one that failed (a would-deny), else the denial."""
    if not rules.conditional:
        return NOTHING_PICKED
    first_failure: Denial | None = None
    audit_pick: tuple[Grant, Denial] | None = None
    for grant in rules.allow_grants(roles):
        failure = check_input(grant, args, kwargs, arguments) if grant.input and inputs else None
        if failure is None:
            return grant, None, None
        if grant.audit and audit_pick is None:
            audit_pick = (grant, failure)
        first_failure = first_failure or failure
    if audit_pick is None:
        assert first_failure is not None
        return None, first_failure, None
    return audit_pick[0], None, audit_pick[1]


def layers(
    rules: ToolRules,
    ctx: UserContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arguments: Arguments | None,
    trace: list[TraceStep] | None,
    inputs: bool = True,
    picked: Picked | None = None,
) -> tuple[OutputRules | None, Denial | None, Grant | None, Denial | None]:
    """Steps 4-6. Returns (output rules of the chosen entry, the denial or None,
    the chosen grant when conditions chose one, the first audited rule that would
    have denied or None). ``trace`` (explain, denials) collects the steps; the hot
    path passes None. ``picked``: step 4 as :func:`input_step` read it already
    (the arguments are then not read again)."""
    roles = ctx.roles
    if picked is None:
        picked = (
            input_step(rules, roles, args, kwargs, arguments, inputs)
            if rules.conditional
            else NOTHING_PICKED
        )
    chosen, denial, audited = picked
    failure: Denial | None
    if denial is not None:
        return None, denial, None, None
    output = None
    if chosen is not None:
        output = chosen.output
        if trace is not None:
            n = len(chosen.input)
            outcome = "pass" if audited is None else "would_deny"
            detail = f"{n} argument rule{'s' * (n != 1)} hold" if audited is None else audited[1]
            trace.append(
                TraceStep("input", outcome, detail, audited[2] if audited else chosen.path)
            )
    policy = rules.policy
    scope = ctx.scope
    # 5. sequence: some granting role's rules pass (audited rules only report)
    if policy.sequences:
        state = progress_of(scope, policy).progress
        history = scope.history
        blocked: Denial | None = None
        would: Denial | None = None
        passed = lenient = False
        for role in sorted(roles & rules.allow_roles):
            seq = policy.sequences.get(role)
            if seq is None:
                passed = True
                break
            if seq.mode == "allow":
                hit = audit_hit = None
                excepted = False
                for rule in rules.completes.get(role, ()):
                    if state[rule.slot] >= len(rule.steps) - 1:
                        if rule.kind == "allow":
                            excepted = True
                        elif rule.audit:
                            audit_hit = audit_hit or rule
                        elif hit is None:
                            hit = rule
                if excepted or (hit is None and audit_hit is None):
                    passed = True
                    break
                first = hit or audit_hit
                assert first is not None
                failure = (
                    "sequence_violation",
                    f"the call would complete the forbidden sequence {first.describe()} "
                    f"of role {role!r}",
                    first.path,
                )
                if hit is None:
                    lenient = True
                    would = would or failure
                else:
                    blocked = blocked or failure
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
                failure = (
                    "sequence_violation",
                    f"role {role!r} allows only the call chains of its allow rules: {why}",
                    seq.path,
                )
                if seq.audit:
                    lenient = True
                    would = would or failure
                else:
                    blocked = blocked or failure
        if not passed:
            if not lenient:
                assert blocked is not None
                return None, blocked, None, None
            audited = audited or would
        if trace is not None:
            if passed:
                trace.append(
                    TraceStep("sequence", "pass", f"history of {len(history)} call(s) allows it")
                )
            elif would is not None:
                trace.append(TraceStep("sequence", "would_deny", would[1], would[2]))
    # 6. data flow: no recorded label blocks the tool (audited blocks only report)
    if rules.blocked_by:
        facts = scope.facts
        carried = progress_of(scope, policy).labels  # labels of earlier calls, this policy
        flow_would: Denial | None = None
        for label, (path, audit) in rules.blocked_by.items():
            origin = facts.get(label) or carried.get(label)
            if origin is not None:
                failure = (
                    "data_flow_violation",
                    f"label {label!r} (recorded by {origin!r} earlier in "
                    f"this request) blocks {rules.tool_id!r}",
                    path,
                )
                if not audit:
                    return None, failure, None, None
                flow_would = flow_would or failure
        audited = audited or flow_would
        if trace is not None:
            if flow_would is None:
                trace.append(TraceStep("data_flow", "pass", "no recorded label blocks it"))
            else:
                trace.append(TraceStep("data_flow", "would_deny", flow_would[1], flow_would[2]))
    return output, None, chosen, audited


def guardrail_error(
    rules: ToolRules,
    ctx: UserContext,
    denial: Denial,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arguments: Arguments | None,
    picked: Picked | None = None,
) -> PermissionDeniedError:
    reason, detail, path = denial
    step = {
        "input_validation": "input",
        "sequence_violation": "sequence",
        "data_flow_violation": "data_flow",
    }[reason]
    # Re-run the layers with a trace (deterministic, records nothing) to list the
    # steps that passed before the one that denied.
    trace = [*base_trace(rules.policy, ctx), rbac_step(rules, ctx)]
    layers(rules, ctx, args, kwargs, arguments, trace, True, picked)
    trace.append(TraceStep(step, "would_deny" if rules.policy.audit else "deny", detail, path))
    return PermissionDeniedError(
        f"{rules.tool_id!r} denied for user {ctx.user_id!r}: {detail} ({path})",
        tool_id=rules.tool_id,
        user_id=ctx.user_id,
        roles=ctx.roles,
        reason=reason,
        trace=trace,
    )


def audit_error(rules: ToolRules, ctx: UserContext, denial: Denial) -> PermissionDeniedError:
    """What an audited rule would have refused (reported, never raised)."""
    reason, detail, path = denial
    step = {"input_validation": "input", "sequence_violation": "sequence"}.get(reason, "data_flow")
    return PermissionDeniedError(
        f"{rules.tool_id!r} would be denied for user {ctx.user_id!r}: {detail} ({path})",
        tool_id=rules.tool_id,
        user_id=ctx.user_id,
        roles=ctx.roles,
        reason=reason,
        trace=(TraceStep(step, "would_deny", detail, path),),
    )
