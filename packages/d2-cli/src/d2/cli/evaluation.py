"""Decide a call without running anything: a private evaluator holding the policy,
a user with some roles, optional facts and earlier calls, then
:meth:`~d2.core.evaluate.Evaluator.explain` for the call asked about.

Everything happens in a copied context, so the caller's user context, history and
facts are untouched, and no D2 instance is configured or replaced.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from d2.core.context import record_fact, set_user
from d2.core.errors import PermissionDeniedError
from d2.core.evaluate import Decision, Evaluator
from d2.core.policy.model import CompiledPolicy

from .output import CliError

if TYPE_CHECKING:
    from .scan import ScanResult

__all__ = [
    "NOT_GIVEN",
    "Call",
    "Outcome",
    "Scenario",
    "evaluate",
    "parse_args",
    "parse_value",
    "trace_rows",
    "with_defaults",
]

NOT_GIVEN = "not given: the function's default applies at run time"


@dataclass(frozen=True)
class Call:
    """A call of ``tool`` with keyword ``args``."""

    tool: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """Who calls (``user``, ``roles``), what happened before in the request
    (``facts`` recorded, earlier ``calls``) and the ``call`` to decide."""

    roles: tuple[str, ...]
    call: Call
    user: str = "d2-cli-user"
    facts: tuple[str, ...] = ()
    calls: tuple[Call, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """The ``decision`` and, for each earlier call, whether it was allowed (a
    denied earlier call is not part of the history, exactly as at run time)."""

    decision: Decision
    earlier: tuple[tuple[Call, str | None], ...]


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``5``, ``true``, ``[1,2]``,
    ``"x"``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{"k": parse_value("v"), ...}``; a usage error otherwise."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--arg expects NAME=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def evaluate(
    policy: CompiledPolicy, scenario: Scenario, not_in_force: Sequence[str] = ()
) -> Outcome:
    """Decide ``scenario.call`` under ``policy`` (see the module docstring).

    ``not_in_force`` lists why the runtime would refuse to load ``policy`` (too many
    tools, expired...): then there is no policy, and every call is denied, as at run
    time."""
    evaluator = Evaluator("d2-cli")
    if not_in_force:
        evaluator.absent_reason = "policy_not_in_force"
        evaluator.absent_detail = "the policy would not load at run time: " + "; ".join(
            not_in_force
        )
    else:
        evaluator.policy = policy

    def run() -> Outcome:
        set_user(scenario.user, roles=list(scenario.roles))
        for fact in scenario.facts:
            record_fact(fact)
        earlier: list[tuple[Call, str | None]] = []
        for call in scenario.calls:
            try:  # as the guard does: RBAC, then the guardrails that record the call
                rules = evaluator.check(call.tool)
                if rules.guarded:
                    evaluator.admit(rules, (), dict(call.args), None)
            except PermissionDeniedError as exc:
                earlier.append((call, exc.reason))
            else:
                earlier.append((call, None))
        decision = evaluator.explain(scenario.call.tool, (), dict(scenario.call.args))
        return Outcome(decision, tuple(earlier))

    return contextvars.copy_context().run(run)


def trace_rows(decision: Decision) -> list[dict[str, Any]]:
    """The decision's trace as plain rows (``step``, ``outcome``, ``detail``, ``path``)."""
    return [
        {"step": s.step, "outcome": s.outcome, "detail": s.detail, "path": s.path}
        for s in decision.trace
    ]


def with_defaults(
    policy: CompiledPolicy, scenario: Scenario, scanned: Callable[[], ScanResult]
) -> tuple[Scenario, dict[str, Any], list[str]]:
    """Fill in the arguments the conditions of the grants that could allow the call
    name but the call does not give, from the literal defaults of the guarded
    function (``scanned()``, called only when needed). Returns the scenario, what
    was filled in, and the names still not given (their default is only known at
    run time)."""
    rules = policy.rules_for(scenario.call.tool, remember=False)
    named: list[str] = []
    for grant in rules.allow_grants(frozenset(scenario.roles)):
        named += [name for name, _ in grant.input if name not in named]
    missing = [n for n in named if n not in scenario.call.args]
    if not missing:
        return scenario, {}, []
    functions = [t for t in scanned().tools if t.tool_id == scenario.call.tool]
    filled: dict[str, Any] = {}
    for name in missing:
        values = [dict(t.defaults)[name] for t in functions if name in dict(t.defaults)]
        if functions and len(values) == len(functions) and all(v == values[0] for v in values):
            filled[name] = values[0]
    if not filled:
        return scenario, {}, missing
    call = Call(scenario.call.tool, {**scenario.call.args, **filled})
    rest = [n for n in missing if n not in filled]
    return dataclasses.replace(scenario, call=call), filled, rest
