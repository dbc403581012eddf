"""The decision: may the current user call this tool under the policy in force?

One :class:`Evaluator` per instance name holds the policy in force (swapped
atomically by a single attribute assignment when a new policy loads). A decision
reads that attribute, the user context and the per-tool rules: a handful of dict and
set operations on immutable data, with no lock and no I/O.

Decision steps (``POLICY.md``), in order; the first that fails denies:
1. a policy is in force and not expired, else ``MissingPolicyError`` /
   ``BundleExpiredError``;
2. a user is set, else ``D2NoContextError`` (reason ``no_user``);
3. RBAC: some role of the user is granted the tool, and no role of the user has an
   ``allow: false`` matching it (that overrides every grant). A tool no entry can
   match is ``MissingPolicyError`` (reason ``unknown_tool``);
4. input: the first granting entry (policy order) whose ``conditions.input`` hold
   wins and supplies the output rules (``input_validation``);
5. sequence: for some role of the user that grants the tool, the call passes that
   role's sequence rules (``sequence_violation``);
6. data flow: no label recorded in the request blocks the tool
   (``data_flow_violation``);
6b. budgets: every ``limits`` item of the chosen grant has room
   (``budget_exceeded``; ``budget_unavailable`` when the store cannot answer);
6c. approval: when the grant's ``approval.when`` holds (read fail-safe, see
   :mod:`d2.core.policy.when`), an approval of this exact call was given
   (``approval_required``), and it is used up. A call that needs an approval first
   continues the request that asked for it: while that request lives, its saved
   history and facts are restored into this request scope before steps 5-6 judge
   the call (see :mod:`d2.core.resume`); a scope that asked for an approval saves
   each of its later calls with the request;
7. the call is recorded (history, labels) and the tool runs;
8. output: the chosen entry's ``conditions.output`` validate and sanitize the
   result (``output_validation`` / ``output_sanitization``).

Steps 1-3 are :meth:`Evaluator.check`, the hot path; a tool for which the policy
has nothing beyond RBAC stops there. Steps 4-7 are :meth:`Evaluator.admit` (or
:meth:`Evaluator.admit_async` when a store is asked), step 8
:meth:`Evaluator.finish`. Every store key is scoped by the app's namespace
(:meth:`Evaluator.namespace`). A tool whose body starts after the call (a
generator, a returned coroutine) has its arguments checked again when the body
starts (:meth:`Evaluator.recheck`).

Audit: in a policy with ``metadata.mode: audit`` a call that steps 3-8 would deny
runs anyway, its result unchanged, and is reported as ``would_deny`` (it is not
recorded in the request's history: enforce would not have run it). An audited rule
(``audit: true``) in an enforced policy only reports ``would_deny``; the call is
decided by the other rules. Steps 1-2 deny in every mode.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Generator
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from ._functions import Arguments, bound_arguments
from ._guardrails import (
    DOUBT,
    Denial,
    Picked,
    audit_error,
    guardrail_error,
    input_step,
    layers,
    needs_approval,
    record_call,
    when_holds,
)
from ._refusals import (
    approval_error,
    budget_error,
    changed_error,
    log_store_problem,
    too_large_error,
    unapprovable_error,
    unavailable_error,
    unscoped_error,
)
from ._trace import TraceStep, base_trace, rbac_step, roles_text
from .approval_data import (
    TOO_LARGE,
    ApprovalRequest,
    NoCanonicalForm,
    call_digest,
    new_request_id,
    read_once,
    shown_with_reason,
)
from .context import UserContext, _forks, current_context, request_lock
from .errors import (
    BundleExpiredError,
    D2NoContextError,
    MissingPolicyError,
    PermissionDeniedError,
)
from .policy._text import short
from .policy.model import Approval, CompiledPolicy, Grant, Limit, ToolRules
from .policy.output import OutputRules, OutputViolation
from .resume import (
    Lineage,
    SnapshotTooLarge,
    lineage,
    restore,
    snapshot,
    tethered,
    version,
)
from .stores.base import APPROVAL_MISSING, TAKEN, ApprovalKey, ApprovalState, Counter, Store
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from .decisionlog import DecisionSink
    from .telemetry import Metrics
    from .webhook import ApprovalWebhook

__all__ = ["Decision", "Evaluator", "TraceStep", "evaluator_for"]

_now = time.time


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


# Observers are told (tool_id, context, reason or None, decision) where decision is
# "allowed", "denied" or "would_deny".
Observer = Callable[[str, UserContext, "str | None", str], None]
_spend_lock = threading.Lock()  # per-request budgets of tools that have them, only
_store_lock = threading.Lock()  # making an instance's in-process store (once)


class Evaluator:
    """The decision point of one instance (``"default"`` unless named).

    ``policy`` is the policy in force, or ``None`` (then ``absent_reason`` says why).
    ``store`` keeps ``per: user`` budgets and approvals; ``log`` is the decision log
    (``None``: off).
    """

    __slots__ = (
        "absent_detail",
        "absent_reason",
        "guarded_tools",
        "holding",
        "log",
        "name",
        "observer",
        "observers",
        "policy",
        "private_store",
        "slow",
        "store",
        "strict",
        "timed",
        "timer",
        "wants_args",
        "webhook",
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
        # Told of every decision of a guarded call (see _note). None costs one
        # attribute test per call (telemetry and decision log off).
        self.observer: Callable[..., None] | None = None
        self.observers: tuple[Observer, ...] = ()
        # Metrics: times decisions and tool runs when set (None: nothing measured).
        self.timer: Metrics | None = None
        self.log: DecisionSink | None = None
        self.timed = False  # timer or log set: decisions take the timed path
        self.wants_args = False  # the log records arguments: the guard reports calls
        self.slow = False  # timer set or wants_args: the guard takes its slow path
        self.store: Store | None = None  # created on first use (MemoryStore)
        # the in-process store this instance made for itself (store_for_use, or a
        # memory:// URL): the only store an unnamed policy may use
        self.private_store: Store | None = None
        # a call of this instance was held for approval: from then on, calls of a
        # request scope that feeds a held request take the full path (see _feed)
        self.holding = False
        # told of each approval request this instance opens (None: no webhook)
        self.webhook: ApprovalWebhook | None = None

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer(tool_id, context, reason, decision)`` of every decision of
        a guarded call (``decision``: ``allowed``, ``denied`` or ``would_deny``;
        ``reason`` is ``None`` when allowed). It must be cheap and must not raise."""
        self._set_observers((*self.observers, observer))

    def remove_observer(self, observer: Observer) -> None:
        """Stop telling ``observer``; unknown observers are ignored."""
        self._set_observers(tuple(o for o in self.observers if o != observer))

    def set_log(self, log: DecisionSink | None) -> None:
        """Send every decision to ``log`` (``None``: stop)."""
        self.log = log
        self._set_observers(self.observers)

    def set_timer(self, timer: Metrics | None) -> None:
        """Time decisions and tool runs into ``timer`` (``None``: stop)."""
        self.timer = timer
        self._set_observers(self.observers)

    def _set_observers(self, observers: tuple[Observer, ...]) -> None:
        self.observers = observers
        self.timed = self.timer is not None or self.log is not None
        self.wants_args = self.log is not None and self.log.arguments
        self.slow = self.timer is not None or self.wants_args
        self.observer = self._note if observers or self.log is not None else None

    def passed(
        self,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
    ) -> None:
        """Report an allowed call of a tool with nothing beyond RBAC, with its
        arguments (the guard calls it only when the decision log records them).
        A call that audit mode let through (RBAC would deny: no grants) was
        reported already."""
        if self.observer is not None and rules.grants:
            ctx = current_context()
            self.observer(
                rules.tool_id, ctx, None, "allowed", rules, 0.0, None, None,
                (args, kwargs, arguments),
            )  # fmt: skip

    def _note(
        self,
        tool_id: str,
        ctx: UserContext,
        reason: str | None,
        decision: str = "allowed",
        rules: ToolRules | None = None,
        started: float = 0.0,
        err: PermissionDeniedError | None = None,
        grant: Grant | None = None,
        call: tuple[Any, ...] | None = None,
        approval: str | None = None,
    ) -> None:
        """Tell the observers and the decision log of one decision. ``call`` is
        ``(args, kwargs, arguments)`` when the arguments are known."""
        for observer in self.observers:
            observer(tool_id, ctx, reason, decision)
        log = self.log
        if log is not None:
            duration = perf_counter() - started if started else 0.0
            policy = rules.policy if rules is not None else self.policy
            log.add(
                tool_id, ctx, reason, decision, policy, rules, err, grant, duration, call, approval
            )

    def store_for_use(self) -> Store:
        """The store (an in-process one, made for this instance, unless configured
        otherwise)."""
        store = self.store
        if store is None:
            with _store_lock:  # once per instance: two threads make one store
                store = self.store
                if store is None:
                    store = self.private_store = MemoryStore()
                    self.store = store
        return store

    def namespace(self, policy: CompiledPolicy) -> str | None:
        """What scopes this app's keys in the store: the policy's namespace
        (``local:<metadata.name>``, or ``cloud:<account>:<app>``); ``""`` for an
        unnamed policy on the in-process store this instance made for itself;
        ``None`` for an unnamed policy on any other store (a ``store=`` object may
        be shared with another instance), whose calls that need the store are
        denied (another app's requests and counters could be this app's)."""
        if policy.namespace:
            return policy.namespace
        store = self.store_for_use()
        return "" if store is self.private_store else None

    # -- the hot path ---------------------------------------------------------------
    def check(self, tool_id: str, _started: float = 0.0) -> ToolRules:
        """Decide for the current user; return the tool's rules or raise a denial."""
        if self.timed and not _started:
            return self._timed_check(tool_id)
        policy = self.policy
        ctx = current_context()
        if policy is None or not _now() < policy.expires_at or ctx.user_id is None:
            raise self._refuse(self._denial(policy, tool_id, ctx), ctx, _started)
        rules = policy.rules_for(tool_id)
        roles = ctx.roles
        if rules.deny_roles.isdisjoint(roles) and not rules.allow_roles.isdisjoint(roles):
            if self.observer is not None and not rules.guarded and not self.wants_args:
                self.observer(tool_id, ctx, None, "allowed", rules, _started)
            return rules
        err = self._denial(policy, tool_id, ctx)
        if policy.audit:
            return self._would_deny_rbac(policy, err, ctx, _started)
        raise self._refuse(err, ctx, _started)

    def _timed_check(self, tool_id: str) -> ToolRules:
        """:meth:`check`, timed for the metrics and the decision log."""
        timer = self.timer
        start = perf_counter()
        try:
            return self.check(tool_id, start)
        finally:
            if timer is not None:
                timer.decided(tool_id, perf_counter() - start)

    def _would_deny_rbac(
        self, policy: CompiledPolicy, err: PermissionDeniedError, ctx: UserContext, started: float
    ) -> ToolRules:
        """Audit mode: RBAC would deny; report it and let the call run untouched."""
        if self.observer is not None:
            self.observer(err.tool_id or "", ctx, err.reason, "would_deny", None, started, err)
        rules = ToolRules(err.tool_id or "", (), policy)
        rules.guarded = False  # nothing more to decide: it runs as it is
        return rules

    def _refuse(
        self,
        err: PermissionDeniedError,
        ctx: UserContext,
        started: float = 0.0,
        call: tuple[Any, ...] | None = None,
        approval: str | None = None,
    ) -> PermissionDeniedError:
        """Report a denial (``call``: the arguments, when known; ``approval``: the
        approval request the call continued or was refused by) and return it."""
        if self.observer is not None:
            self.observer(
                err.tool_id or "", ctx, err.reason, "denied", None, started, err, None, call,
                approval,
            )  # fmt: skip
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
            cls, reason = D2NoContextError, "no_user"
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
        who = TraceStep("user", "pass", f"{user!r} with roles [{roles_text(roles)}]")
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
        detail = f"no role of the user ([{roles_text(roles)}]) is granted {tool_id!r}"
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
        *,
        inputs: bool = True,
        approval_holds: bool | None = None,
        keep: list[Kept] | None = None,
    ) -> OutputRules | None:
        """Steps 4-7 for a call that passed RBAC: raise the denial, or record the
        call and return the output rules to apply to its result.

        ``keep``: for a tool whose body starts later (a generator, a returned
        coroutine), a list to which the call is added when its arguments decided
        it (input rules, an approval), for :meth:`recheck` when the body starts.

        For ``d2 replay`` of calls whose arguments were not recorded:
        ``inputs=False`` skips the input rules (the first granting entry is
        chosen) and ``approval_holds`` answers for ``approval.when``."""
        fed = self.holding and tethered(current_context().scope) is not None
        if not rules.stored and not fed:  # nothing to ask a store
            if not rules.budgeted:  # no budget either: the lean path
                return self._admit_plain(rules, args, kwargs, arguments, inputs, keep)
            if rules.request_only and self.log is None and self._within_request_budget(rules):
                return None
            adm = _Admission(rules, current_context(), (args, kwargs, arguments))
            if self.log is not None:
                adm.started = perf_counter()
            self._judge(adm, inputs, None)
            return self._admitted(adm, keep)
        if not rules.approvals and not fed:  # per-user budgets only: one take
            return self._admit_counted(rules, args, kwargs, arguments, inputs, keep)
        steps = self._admission(rules, args, kwargs, arguments, inputs, approval_holds, keep)
        try:
            op = next(steps)
            while True:
                try:
                    answer = getattr(self.store_for_use(), op[0])(*op[1:])
                except Exception as exc:
                    answer = _Failed(exc)
                except BaseException:  # cancelled or interrupted: the call does not run
                    steps.close()
                    raise
                op = steps.send(answer)
        except StopIteration as done:
            result: OutputRules | None = done.value
            return result

    def _admit_counted(
        self,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
        inputs: bool,
        keep: list[Kept] | None,
    ) -> OutputRules | None:
        """:meth:`admit` for a tool whose store work is one ``take`` of its
        ``per: user`` counters (no approval, no held request to feed): the
        generator of :meth:`_admission` without its cost."""
        adm = _Admission(rules, current_context(), (args, kwargs, arguments))
        if self.log is not None:
            adm.started = perf_counter()
        if self._judge(adm, inputs, None) and adm.store_needed:
            namespace = adm.namespace
            assert namespace is not None
            now = _now()
            try:
                answer = self.store_for_use().take(namespace, adm.counters, None, now)
                result = _answer(answer, adm)
            except Exception as exc:
                result, adm.problem = _UNAVAILABLE, exc
            except BaseException:  # cancelled or interrupted: the call does not run
                self._release(adm)
                raise
            self._taken(adm, result, now)
            self._verify(adm, inputs, None)
        return self._admitted(adm, keep)

    async def admit_async(
        self,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
        keep: list[Kept] | None = None,
    ) -> OutputRules | None:
        """:meth:`admit` for async tools: the store is asked without blocking the
        event loop."""
        if not rules.stored and not (self.holding and tethered(current_context().scope)):
            return self.admit(rules, args, kwargs, arguments, keep=keep)  # no store to ask
        steps = self._admission(rules, args, kwargs, arguments, True, None, keep)
        try:
            op = next(steps)
            while True:
                try:
                    method = getattr(self.store_for_use(), op[0] + "_async")
                    answer = await method(*op[1:])
                except Exception as exc:
                    answer = _Failed(exc)
                except BaseException:  # cancelled or interrupted: the call does not run
                    steps.close()
                    raise
                op = steps.send(answer)
        except StopIteration as done:
            result: OutputRules | None = done.value
            return result

    def _within_request_budget(self, rules: ToolRules) -> bool:
        """The short cut for a tool whose only layer is ``per: request`` budgets:
        count the call and report it, or return False (a budget is used up: the
        full path denies it, or reports the would-deny in audit mode)."""
        ctx = current_context()
        grant = rules.allow_grants(ctx.roles)[0]
        limits = grant.request_limits
        if limits:
            spent = ctx.scope.spent
            with _spend_lock:
                for limit in limits:
                    if spent.get(limit.key, 0) >= limit.max:
                        return False
                for limit in limits:
                    spent[limit.key] = spent.get(limit.key, 0) + 1
        if self.observer is not None:
            self.observer(rules.tool_id, ctx, None, "allowed", rules, 0.0, None, grant)
        return True

    # -- steps 4-7 with a store: a generator of store operations ----------------------
    # _admission yields (method name, *arguments) for each store operation and is sent
    # the answer (or a _Failed); admit() runs them with the sync methods,
    # admit_async() with the async twins. One decision procedure, two drivers.

    def _admission(
        self,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
        inputs: bool,
        approval_holds: bool | None,
        keep: list[Kept] | None = None,
    ) -> _Steps:
        """Steps 4-7; returns the output rules (or ``None``), raises the denial. A
        call abandoned while the store answers (cancelled, interrupted: the driver
        closes the generator) gives its per-request reservations back."""
        ctx = current_context()
        adm = _Admission(rules, ctx, (args, kwargs, arguments))
        if self.log is not None:
            adm.started = perf_counter()
        try:
            # One reading of the arguments, before the store is asked: step 4 (the
            # grant), approval.when and the call's digest. What the store answers is
            # judged against that reading, and the live arguments are checked
            # against it once more at the end (_verify).
            adm.picked = input_step(rules, ctx.roles, args, kwargs, arguments, inputs)
            chosen, denial, _ = adm.picked
            if denial is None and rules.approvals:
                grant = chosen or rules.allow_grants(ctx.roles)[0]
                if grant.approval is not None:
                    hold = adm.hold = _Hold(grant.approval)
                    if needs_approval(grant.approval, adm.call, approval_holds):
                        hold.needs = grant.approval
                        if not rules.policy.audit:
                            self._digest(adm, hold)
                            # 6c, first part: a call that needs an approval continues
                            # the request that asked for it, so steps 5-6 judge it on
                            # that request's history
                            yield from self._resume(adm, hold)
            if not self._judge(adm, inputs, approval_holds):
                return self._admitted(adm)
            if adm.store_needed:
                yield from self._take(adm)
                if adm.would is not None:
                    return self._admitted(adm)
            # step 7 in a request that feeds held requests: they learn of it first
            line = tethered(ctx.scope) if self.holding else None
            if line is not None and not (yield from self._feed(adm, line, True)):
                self._stop(adm, unavailable_error(adm, adm.problem))
            self._verify(adm, inputs, approval_holds)
            return self._admitted(adm, keep)
        except GeneratorExit:
            self._release(adm)
            raise

    def _judge(self, adm: _Admission, inputs: bool, holds: bool | None) -> bool:
        """Steps 4-6, and 6b-6c in memory: raise the denial (enforce), or return
        False when audit mode lets a call it would deny run (``adm.would``)."""
        rules, ctx = adm.rules, adm.ctx
        args, kwargs, arguments = adm.call
        if adm.picked is None:
            adm.picked = input_step(rules, ctx.roles, args, kwargs, arguments, inputs)
        adm.seen = _seen(adm)  # before steps 5-6 read the history
        output, denial, grant, audited = layers(
            rules, ctx, args, kwargs, arguments, None, inputs, adm.picked
        )
        if denial is not None:
            err = guardrail_error(rules, ctx, denial, args, kwargs, arguments, adm.picked)
            if not rules.policy.audit:
                raise self._refuse(err, ctx, adm.started, adm.call, adm.consulted())
            adm.would = err
            return False
        adm.output, adm.audited = output, audited
        if rules.budgeted:
            self._budgets(adm, grant, holds)
        return adm.would is None

    def _verify(
        self, adm: _Admission, inputs: bool, holds: bool | None, later: bool = False
    ) -> None:
        """After the store's last answer, before the tool runs: the live arguments
        must still be the ones the call was judged on. The tool receives the
        caller's own objects; another task or thread that changed one while the
        store answered would otherwise run a call nobody judged (or approved).
        ``later``: checked when a lazy body starts (see :meth:`recheck`)."""
        rules, ctx = adm.rules, adm.ctx
        if rules.policy.audit or adm.would is not None:
            return  # audit mode: it runs as it is, reported only
        args, kwargs, arguments = adm.call
        hold = adm.hold
        if hold is not None and hold.digest is not None:
            try:
                exact = bound_arguments(arguments, args, kwargs, keep_self=True)
                version_text = rules.policy.version_text
                again = call_digest(rules.tool_id, exact, ctx.user_id or "", version_text)
            except NoCanonicalForm:
                again = None
            if again != hold.digest:
                self._stop(adm, changed_error(adm, hold.judged.path, later))
            return
        if not rules.conditional and not rules.approvals:
            return  # nothing the arguments decide
        picked = input_step(rules, ctx.roles, args, kwargs, arguments, inputs)
        assert adm.picked is not None
        changed = picked[0] is not adm.picked[0] or picked[1] is not None
        grant = picked[0] or rules.allow_grants(ctx.roles)[0]
        if not changed and grant.approval is not None:
            changed = needs_approval(grant.approval, adm.call, holds)  # needed now, not before
        if changed:
            self._stop(adm, changed_error(adm, grant.path, later))

    def judged(
        self,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
    ) -> Kept | None:
        """What step 4 reads of the arguments now, for :meth:`recheck` (``None`` in
        audit mode, where nothing is refused): for a tool with input rules that
        returned a generator or coroutine, the arguments as its call returned."""
        if rules.policy.audit:
            return None
        ctx = current_context()
        return (ctx, input_step(rules, ctx.roles, args, kwargs, arguments))

    def recheck(
        self,
        kept: Kept,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
    ) -> None:
        """When the body of an admitted call starts later than the call (a generator
        tool's first step, a returned coroutine awaited): raise the denial when its
        arguments are no longer the ones judged (the digest of an approved call, the
        input rules), as :meth:`_verify` does after the store answers. The call was
        admitted: its budgets and approval stay used, and it stays in the request's
        history. ``kept``: what :meth:`admit` kept (``keep``) for this call."""
        if isinstance(kept, _Admission):
            adm = kept
        else:
            adm = _Admission(rules, kept[0], (args, kwargs, arguments))
            adm.picked = kept[1]
        adm.reserved = ()  # spent by the admitted call: never given back here
        if self.log is not None:
            adm.started = perf_counter()
        self._verify(adm, True, None, later=True)

    def _digest(self, adm: _Admission, hold: _Hold) -> None:
        """The call needs an approval: its digest, and the request an approver
        would be shown, from one reading of the arguments (no I/O): a private copy
        (:func:`read_once`) that both read, so a thread changing an argument
        meanwhile cannot get one call shown and another digested."""
        rules, ctx = adm.rules, adm.ctx
        policy = rules.policy
        approval = hold.judged
        args, kwargs, arguments = adm.call
        if arguments is not None:
            arguments = arguments.current()
            if arguments.doubt:
                hold.unapprovable = DOUBT  # what would run is unknown: nothing to show
                return
        try:
            reading = read_once(bound_arguments(arguments, args, kwargs, keep_self=True))
        except NoCanonicalForm as exc:
            hold.unapprovable = str(exc)  # refused after steps 5-6 (approval_unsupported)
            return
        # the view first: a call too large to show is refused at once, before the
        # digest (which would write and hash it) runs; an approver never approves a
        # part of a call they were not shown. A method's object (``self`` / ``cls``)
        # is shown too: its state is part of what runs, and of the digest
        shown, missing = shown_with_reason(reading, escape=True)
        if missing in TOO_LARGE:
            hold.unapprovable = (
                "the arguments are too large or nested too deeply to show an approver "
                "whole: pass a smaller value, or a reference to the data instead of the data"
            )
            return
        try:
            hold.digest = call_digest(
                rules.tool_id, reading, ctx.user_id or "", policy.version_text
            )
        except NoCanonicalForm as exc:
            hold.unapprovable = str(exc)  # (within the view's bounds: the precise reason)
            return
        if missing:
            hold.digest = None
            hold.unapprovable = f"the arguments cannot be shown to an approver whole: {missing}"
            return
        now = _now()
        hold.request = ApprovalRequest(
            id=new_request_id(),
            tool_id=rules.tool_id,
            user_id=ctx.user_id or "",
            arguments=shown,
            policy_version=policy.version_text,
            expires_at=now + approval.ttl,
            approver_roles=approval.approvers,
            asked_at=now,
            object_argument=(arguments.object_name() or "") if arguments is not None else "",
        )

    def _resume(self, adm: _Admission, hold: _Hold) -> _Steps:
        """The call needs an approval (digested by :meth:`_digest`): when its
        request lives, restore that request's snapshots into this request scope (a
        pause for an approval never forgets what the request did before it)."""
        rules, ctx = adm.rules, adm.ctx
        policy = rules.policy
        if hold.digest is None:
            return None  # refused after steps 5-6 (approval_unsupported)
        namespace = self.namespace(policy)
        if namespace is None:
            return None  # refused after steps 5-6 (an unnamed app on a shared store)
        adm.namespace = namespace
        found = yield ("find_approval", namespace, hold.digest, _now())
        if isinstance(found, _Failed):
            self._stop(adm, unavailable_error(adm, found.exc))
            return None
        if found is None:
            return None
        if not isinstance(found, ApprovalState) or found.request.user_id != ctx.user_id:
            self._stop(adm, unavailable_error(adm, TypeError(f"find_approval() -> {found!r}")))
            return None
        hold.found = found
        own = lineage(ctx.scope).token
        texts = [text for holder, text in found.snapshots if holder != own]
        try:
            with _spend_lock:
                restore(ctx.scope, texts, ctx.user_id or "")
        except Exception as exc:  # a snapshot this user's request did not write
            broken = ValueError(
                f"the saved state of approval request {found.request.id[:12]} cannot be "
                f"restored ({type(exc).__name__}: {exc})"
            )
            self._stop(adm, unavailable_error(adm, broken))
        return None

    def _budgets(self, adm: _Admission, grant: Grant | None, holds: bool | None) -> None:
        """Steps 6b-6c in memory: ``per: request`` budgets (reserved here; a later
        denial gives them back), the counters and the approval to ask the store
        for."""
        rules, ctx = adm.rules, adm.ctx
        policy = rules.policy
        if grant is None:
            grant = rules.allow_grants(ctx.roles)[0]
        adm.grant = grant
        spent = ctx.scope.spent
        for limit in grant.request_limits:  # 6b first: a used-up budget wins
            if spent.get(limit.key, 0) >= limit.max:
                self._stop(adm, budget_error(rules, ctx, limit, None))
                return
        if grant.user_limits:
            adm.counters = _counters(policy, grant.user_limits, ctx.user_id or "", _now())
            adm.store_needed = True
        approval = grant.approval
        if approval is not None:
            hold = adm.hold
            if hold is None or hold.judged is not approval:
                # _admission reads every grant with an approval before the store is
                # asked; another grant chosen now means the arguments changed
                self._stop(adm, changed_error(adm, approval.path))
                return
            if hold.needs is approval:
                if policy.audit:  # never ask a person on behalf of an audited policy
                    self._stop(adm, approval_error(rules, ctx, None, approval.path, None))
                    return
                if hold.unapprovable is not None:
                    err = unapprovable_error(rules, ctx, approval.path, hold.unapprovable)
                    self._stop(adm, err)
                    return
                if hold.digest is None or hold.request is None:  # never take without it
                    self._stop(adm, changed_error(adm, approval.path))
                    return
                found = hold.found
                hold.key = ApprovalKey(hold.digest, found.request.id if found is not None else "")
                adm.store_needed = True
        if adm.store_needed and adm.namespace is None:
            adm.namespace = self.namespace(policy)
            if adm.namespace is None:
                self._stop(adm, unscoped_error(adm, self.store_for_use()))
                return
        if grant.request_limits:  # reserved last: nothing above can leak a reservation
            full = None
            with _spend_lock:
                for limit in grant.request_limits:
                    if spent.get(limit.key, 0) >= limit.max:
                        full = limit
                        break
                else:
                    for limit in grant.request_limits:
                        spent[limit.key] = spent.get(limit.key, 0) + 1
            if full is not None:  # another thread of this request took the last one
                self._stop(adm, budget_error(rules, ctx, full, None))
                return
            adm.reserved = grant.request_limits

    def _take(self, adm: _Admission) -> _Steps:
        """Steps 6b-6c in the store: take the counters and use the approval at once;
        a missing approval is asked for (or its rejection reported)."""
        namespace = adm.namespace
        assert namespace is not None
        hold = adm.hold
        key = hold.key if hold is not None else None
        now = _now()
        answer = yield ("take", namespace, adm.counters, key, now)
        try:
            result = _answer(answer, adm)
        except Exception as exc:
            result, adm.problem = _UNAVAILABLE, exc
        if result == TAKEN and hold is not None and key is not None:
            hold.used = key.request_id
            line = tethered(adm.ctx.scope)
            if line is not None:  # this scope asked for it earlier: nothing left to feed
                line.held.pop((namespace, key.call, key.request_id), None)
        elif result == APPROVAL_MISSING and hold is not None and hold.request is not None:
            self._release(adm)  # refused whatever the answer: saved without this call
            state = yield from self._hold(adm, hold, namespace, now)
            if state is None:
                result = _UNAVAILABLE
        self._taken(adm, result, now)
        return None

    def _hold(self, adm: _Admission, hold: _Hold, namespace: str, now: float) -> _Steps:
        """Ask for the approval, saving this request scope with it: from now on this
        scope feeds the request (each later call of the scope is saved with it,
        see :meth:`_feed`). Returns the state in force, or ``None`` when the store
        failed (``adm.problem``)."""
        ctx, key, request = adm.ctx, hold.key, hold.request
        assert key is not None and request is not None
        scope = ctx.scope
        line = lineage(scope)
        before = version(scope)
        try:
            text = snapshot(scope, ctx.user_id or "", policy=adm.rules.policy)
        except SnapshotTooLarge as exc:
            self._stop(adm, too_large_error(adm, exc))
            return None
        found = hold.found
        replaces = [
            (holder, _sha1(old))
            for holder, old in (found.snapshots if found is not None else ())
            if holder != line.token
        ]
        state = yield ("request_approval", namespace, request, key.call, line.token, text,
                       replaces, now)  # fmt: skip
        if isinstance(state, _Failed) or not isinstance(state, ApprovalState):
            adm.problem = (
                state.exc
                if isinstance(state, _Failed)
                else TypeError(f"the store answered request_approval() with {state!r}")
            )
            return None
        hold.state = state
        webhook = self.webhook
        if webhook is not None and state.state == "pending" and state.request.id == request.id:
            webhook.opened(request, namespace)  # opened now, by this call: queued, not sent
        if state.state != "rejected":
            line.held[(namespace, key.call, state.request.id)] = state.request.expires_at
            self.holding = True
            if version(scope) != before:  # the request went on while the store answered
                yield from self._feed(adm, line, False)
        return state

    def _feed(self, adm: _Admission, line: Lineage, with_call: bool) -> _Steps:
        """Save this request scope (``with_call``: with the call being admitted)
        with every held request it feeds that still lives. Returns False when the
        store failed (``adm.problem``)."""
        rules, ctx = adm.rules, adm.ctx
        now = _now()
        groups: dict[str, list[ApprovalKey]] = {}
        for (namespace, call, request_id), until in list(line.held.items()):
            if until <= now:
                line.held.pop((namespace, call, request_id), None)
            else:
                groups.setdefault(namespace, []).append(ApprovalKey(call, request_id))
        if not groups:
            return True
        policy = rules.policy
        tool = rules.tool_id if with_call and (policy.sequences or policy.flow_labels) else None
        labels = rules.labels if with_call else ()
        try:
            text = snapshot(ctx.scope, ctx.user_id or "", tool, labels, policy)
        except SnapshotTooLarge as exc:
            self._stop(adm, too_large_error(adm, exc))
            return False
        for namespace, keys in groups.items():
            saved = yield ("save_snapshot", namespace, keys, line.token, text, now)
            if isinstance(saved, _Failed):
                adm.problem = saved.exc
                return False
            if not (isinstance(saved, list) and len(saved) == len(keys)):
                adm.problem = TypeError(f"the store answered save_snapshot() with {saved!r}")
                return False
            for key, live in zip(keys, saved, strict=True):
                if not live:
                    line.held.pop((namespace, key.call, key.request_id), None)
        return True

    def _stop(self, adm: _Admission, err: PermissionDeniedError) -> None:
        """A budget or approval denial: give the reservations back, then deny (or,
        in audit mode, note that enforce would have)."""
        self._release(adm)
        adm.store_needed = False
        if adm.rules.policy.audit:
            adm.would = err
            return
        raise self._refuse(err, adm.ctx, adm.started, adm.call, adm.consulted())

    @staticmethod
    def _release(adm: _Admission) -> None:
        if adm.reserved:
            spent = adm.ctx.scope.spent
            with _spend_lock:
                for limit in adm.reserved:
                    spent[limit.key] = max(spent.get(limit.key, 0) - 1, 0)
            adm.reserved = ()

    def _taken(self, adm: _Admission, result: int, now: float) -> None:
        """Act on the store's answer to ``take``."""
        rules, ctx = adm.rules, adm.ctx
        if result == TAKEN:
            return
        if result == _UNAVAILABLE:
            log_store_problem(adm.problem)
            err = unavailable_error(adm, adm.problem)
        elif result >= 0:
            assert adm.grant is not None
            counter = adm.counters[result]
            limit = adm.grant.user_limits[result]
            err = budget_error(rules, ctx, limit, max(counter.expires_at - now, 0.0))
        else:  # approval missing
            assert adm.grant is not None and adm.grant.approval is not None
            hold = adm.hold
            state = hold.state if hold is not None else None
            err = approval_error(
                rules,
                ctx,
                state.request if state is not None else hold.request if hold else None,
                adm.grant.approval.path,
                state.state if state is not None else None,
            )
        self._stop(adm, err)

    def _admit_plain(
        self,
        rules: ToolRules,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None,
        inputs: bool,
        keep: list[Kept] | None = None,
    ) -> OutputRules | None:
        """:meth:`admit` for a tool without budgets or approvals (the lean path:
        steps 4-7 with nothing allocated when the call passes, unless ``keep``
        asks for what the input rules chose)."""
        ctx = current_context()
        started = perf_counter() if self.log is not None else 0.0
        picked = None
        if keep is not None and rules.conditional and not rules.policy.audit:
            picked = input_step(rules, ctx.roles, args, kwargs, arguments, inputs)
        if rules.history:
            # judged on the history and recorded in it under the request's lock:
            # two threads of one request never both pass on the same history.
            # Input rules may run app code (an argument's __eq__): read first.
            if picked is None and rules.conditional:
                picked = input_step(rules, ctx.roles, args, kwargs, arguments, inputs)
            scope = ctx.scope
            lock = scope.lock if scope.forks == _forks[0] else request_lock(scope)
            denial: Denial | None
            if not lock.acquire(False) and not lock.acquire(timeout=_LOCK_WAIT):
                output, denial, grant, audited = None, _busy(rules), None, None
            else:
                try:
                    output, denial, grant, audited = layers(
                        rules, ctx, args, kwargs, arguments, None, inputs, picked
                    )
                    if denial is None:
                        record_call(rules, scope)
                finally:
                    lock.release()
        else:
            output, denial, grant, audited = layers(
                rules, ctx, args, kwargs, arguments, None, inputs, picked
            )
            if denial is None:
                record_call(rules, ctx.scope)
        if denial is not None:
            err = guardrail_error(rules, ctx, denial, args, kwargs, arguments)
            if not rules.policy.audit:
                raise self._refuse(err, ctx, started, (args, kwargs, arguments))
            if self.observer is not None:  # audit mode: it runs, unrecorded
                self.observer(
                    rules.tool_id, ctx, err.reason, "would_deny", rules, started, err, None,
                    (args, kwargs, arguments),
                )  # fmt: skip
            return None
        if self.observer is not None:
            would = audit_error(rules, ctx, audited) if audited is not None else None
            self.observer(
                rules.tool_id, ctx, would.reason if would else None,
                "would_deny" if would else "allowed", rules, started, would, grant,
                (args, kwargs, arguments),
            )  # fmt: skip
        if picked is not None and keep is not None:
            keep.append((ctx, picked))  # the lean form: an _Admission when rechecked
        return output

    def _admitted(self, adm: _Admission, keep: list[Kept] | None = None) -> OutputRules | None:
        """Report the decision and record the call (step 7); ``keep``: see
        :meth:`admit`."""
        rules, ctx = adm.rules, adm.ctx
        history = rules.history
        if adm.would is None and history:
            self._record_judged(adm)  # may refuse, or note a would-deny (audit)
        if adm.would is not None:  # audit mode: enforce would deny; it runs unrecorded
            if self.observer is not None:
                err = adm.would
                self.observer(
                    rules.tool_id, ctx, err.reason, "would_deny", rules, adm.started, err,
                    adm.grant, adm.call,
                )  # fmt: skip
            return None
        if self.observer is not None:
            if adm.audited is not None:
                err = audit_error(rules, ctx, adm.audited)
                self.observer(
                    rules.tool_id, ctx, err.reason, "would_deny", rules, adm.started, err,
                    adm.grant, adm.call, adm.hold.used if adm.hold else None,
                )  # fmt: skip
            else:
                self.observer(
                    rules.tool_id, ctx, None, "allowed", rules, adm.started, None,
                    adm.grant, adm.call, adm.hold.used if adm.hold else None,
                )  # fmt: skip
        if not history:
            record_call(rules, ctx.scope)
        if keep is not None and (rules.conditional or rules.approvals) and not rules.policy.audit:
            keep.append(adm)
        return adm.output

    def _record_judged(self, adm: _Admission) -> None:
        """Step 7 under a policy that keeps history, under the request's lock: when
        the request recorded anything since steps 5-6 judged this call (another
        task or thread of the request, a call admitted while the store answered),
        judge them again on what it holds now, then record the call. Refused here,
        a call keeps what the store took (a ``per: user`` budget stays spent: the
        safe side); in audit mode it runs, reported as ``would_deny``."""
        rules, ctx = adm.rules, adm.ctx
        scope = ctx.scope
        args, kwargs, arguments = adm.call
        err = None
        lock = request_lock(scope)
        if not lock.acquire(False) and not lock.acquire(timeout=_LOCK_WAIT):
            err = guardrail_error(rules, ctx, _busy(rules), args, kwargs, arguments, adm.picked)
        else:
            try:
                if (
                    adm.seen is not None
                    and _seen(adm) != adm.seen
                    and (rules.policy.sequences or rules.blocked_by)
                ):
                    _, denial, _, audited = layers(
                        rules, ctx, args, kwargs, arguments, None, True, adm.picked
                    )
                    if denial is not None:
                        err = guardrail_error(
                            rules, ctx, denial, args, kwargs, arguments, adm.picked
                        )
                    else:
                        adm.audited = adm.audited or audited
                if err is None:
                    record_call(rules, scope)
            finally:
                lock.release()
        if err is not None:
            self._stop(adm, err)

    def finish(self, rules: ToolRules, output: OutputRules, result: Any) -> Any:
        """Step 8: the sanitized result, or raise the output denial. Audited output
        rules (and an audit-mode policy) leave the result as it is and only report
        what enforce would have refused."""
        audit = output.audit or rules.policy.audit
        try:
            sanitized = output.apply(result)
        except OutputViolation as exc:
            ctx = current_context()
            step = TraceStep("output", "would_deny" if audit else "deny", exc.detail, exc.path)
            err = PermissionDeniedError(
                f"{rules.tool_id!r} result refused for user {ctx.user_id!r}: {exc.detail}"
                + (f" ({exc.path})" if exc.path else ""),
                tool_id=rules.tool_id,
                user_id=ctx.user_id,
                roles=ctx.roles,
                reason=exc.reason,
                trace=(*base_trace(rules.policy, ctx), rbac_step(rules, ctx), step),
            )
            if audit:
                if self.observer is not None:
                    self.observer(rules.tool_id, ctx, exc.reason, "would_deny", rules, 0.0, err)
                return result
            raise self._refuse(err, ctx) from None
        return result if audit else sanitized

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
        trace = [*base_trace(policy, ctx), rbac_step(rules, ctx)]
        allowed = rules.allow_grants(ctx.roles)
        output, denial, chosen, _ = layers(rules, ctx, args, kwargs, arguments, trace)
        if denial is not None:
            err = guardrail_error(rules, ctx, denial, args, kwargs, arguments)
            return Decision(False, err.reason, err.trace, None, err)
        chosen = chosen or allowed[0]
        for limit in chosen.limits:
            if limit.per == "request":
                used = ctx.scope.spent.get(limit.key, 0)
                detail = f"limited to {limit.describe()}: {used} used in this request"
                if used >= limit.max and not policy.audit:
                    trace.append(TraceStep("budget", "deny", detail, limit.path))
                    err = budget_error(rules, ctx, limit, None)
                    return Decision(False, err.reason, tuple(trace), None, err)
            else:
                detail = f"limited to {limit.describe()} (explain does not ask the store)"
            trace.append(TraceStep("budget", "pass", detail, limit.path))
        if chosen.approval is not None:
            approval = chosen.approval
            needed = not approval.input or when_holds(approval, args, kwargs, arguments)
            detail = (
                f"needs an approval by [{', '.join(approval.approvers)}] unless one was given"
                if needed
                else "approval.when does not hold: no approval needed"
            )
            trace.append(TraceStep("approval", "pass", detail, approval.path))
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


_UNAVAILABLE = -3  # the store raised (beside the store's own answers)


class _Failed(NamedTuple):
    """What a store operation raised, sent into :meth:`Evaluator._admission`."""

    exc: Exception


# steps 4-7: yields (store method, *arguments), is sent each answer
_Steps = Generator[tuple[Any, ...], Any, Any]
# What admit() keeps of a call for Evaluator.recheck: the admission, or (for a call
# that asked no store) the user context and step 4's choice.
Kept: TypeAlias = "_Admission | tuple[UserContext, Picked]"


class _Hold:
    """What a call that may need an approval carries between steps (internal)."""

    __slots__ = ("digest", "found", "judged", "key", "needs", "request", "state",
                 "unapprovable", "used")  # fmt: skip

    def __init__(self, judged: Approval) -> None:
        self.judged = judged  # the approval whose `when` was read
        self.needs: Approval | None = None  # the approval this call needs
        self.digest: str | None = None  # the call's digest
        self.unapprovable: str | None = None  # why the call has no digest
        self.found: ApprovalState | None = None  # the live request of the call
        self.key: ApprovalKey | None = None  # the approval to use
        self.used: str | None = None  # the id of the approval request used
        self.request: ApprovalRequest | None = None  # the request to open if none lives
        self.state: ApprovalState | None = None  # the request in force after asking


class _Admission:
    """One call between steps 4 and 7 (internal)."""

    __slots__ = (
        "audited",
        "call",
        "counters",
        "ctx",
        "grant",
        "hold",
        "namespace",
        "output",
        "picked",
        "problem",
        "reserved",
        "rules",
        "seen",
        "started",
        "store_needed",
        "would",
    )

    def __init__(self, rules: ToolRules, ctx: UserContext, call: tuple[Any, ...]) -> None:
        self.rules = rules
        self.ctx = ctx
        self.call = call
        self.started = 0.0
        self.output: OutputRules | None = None
        self.audited: Denial | None = None
        self.would: PermissionDeniedError | None = None
        self.grant: Grant | None = None
        self.reserved: tuple[Limit, ...] = ()
        self.counters: list[Counter] = []
        self.store_needed = False
        self.namespace: str | None = None  # the app's namespace in the store
        self.hold: _Hold | None = None  # the approval part, when the grant has one
        self.picked: Picked | None = None  # step 4, read once (see input_step)
        self.problem: BaseException | None = None
        self.seen: int | None = None  # the history's version steps 5-6 judged it on

    def consulted(self) -> str | None:
        """The id of the approval request this call consulted: the one it was
        refused by or asked for, else the live one it continued."""
        hold = self.hold
        if hold is None:
            return None
        if hold.state is not None:
            return hold.state.request.id
        return hold.found.request.id if hold.found is not None else None


_LOCK_WAIT = 2.0
"""Seconds a call waits for its request's lock (held for microseconds by another
call) before it is refused: only a call made while its own thread holds it (from a
signal handler) waits that long, and it is refused rather than hung."""


def _busy(rules: ToolRules) -> Denial:
    """The refusal of a call whose request's history stayed in use (see
    :data:`_LOCK_WAIT`)."""
    reason = "sequence_violation" if rules.policy.sequences else "data_flow_violation"
    return (
        reason,
        f"the request's history stayed in use by another call for {_LOCK_WAIT:.0f} s "
        "(a guarded call from a signal handler, or from code run while a call of the "
        "same thread is judged?): refused rather than judged on a history that may change",
        None,
    )


def _seen(adm: _Admission) -> int:
    """The version of the request's history and facts (bumped at every change)."""
    return adm.ctx.scope.version


def _answer(result: object, adm: _Admission) -> int:
    """The store's answer to ``take``, checked: anything but TAKEN, APPROVAL_MISSING
    or the index of one of the counters is a broken store (it denies)."""
    if isinstance(result, _Failed):
        raise result.exc
    if type(result) is not int or not APPROVAL_MISSING <= result < len(adm.counters):
        raise TypeError(f"the store answered take() with {result!r}")
    return result


def _sha1(text: str) -> str:
    import hashlib  # off the cold path: only held calls need it

    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _counters(
    policy: CompiledPolicy, limits: tuple[Limit, ...], user_id: str, now: float
) -> list[Counter]:
    """The store counters of ``per: user`` limits for this user and window: keys
    are digests (no user id in the store), scoped by the policy's name; memoised
    per limit (a few thousand users per window at most, then recomputed)."""
    found = []
    for limit in limits:
        window = limit.window or 1.0
        index = int(now // window)
        memo = limit.keys
        key = memo.get((user_id, policy.name, index))
        if key is None:
            import hashlib

            text = f"{policy.name or ''}\x1f{limit.key}\x1f{user_id}\x1f{window:g}\x1f{index}"
            # (a lone surrogate in a user id is hashed as itself: never an encoding error)
            data = text.encode("utf-8", "surrogatepass")
            key = "budget:" + hashlib.sha256(data).hexdigest()[:40]
            if len(memo) >= 4096:
                memo.clear()
            memo[(user_id, policy.name, index)] = key
        found.append(Counter(key, limit.max, (index + 1) * window))
    return found


def _fresh_lock_after_fork() -> None:
    # a fork while another thread held the lock would leave it held for good
    global _spend_lock
    _spend_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_after_fork)

_evaluators: dict[str, Evaluator] = {}


def evaluator_for(name: str) -> Evaluator:
    """The evaluator of instance ``name`` (created on first use, kept for good)."""
    ev = _evaluators.get(name)
    if ev is None:
        ev = _evaluators.setdefault(name, Evaluator(name))
    return ev
