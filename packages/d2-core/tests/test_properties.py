"""Property tests: sequence tracking against a brute-force reading of POLICY.md,
and the constraint operators against their definitions."""

from __future__ import annotations

import re
from typing import Any

from d2.core import PermissionDeniedError, set_user
from d2.core.evaluate import Evaluator
from d2.core.policy import compile_policy
from d2.core.policy.compile import _Checker
from d2.core.policy.constraints import MISSING, compile_constraint, same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOOLS = ["a", "b", "c", "x:1", "x:2"]
STEPS = ["a", "b", "c", "x:1", "x:2", "x:*", "@g"]
GROUP = ["b", "x:1"]


def step_matches(step: str, tool: str) -> bool:
    if step == "@g":
        return tool in GROUP
    if step.endswith("*"):
        return tool.startswith(step[:-1])
    return step == tool


def is_subsequence(steps: list[str], history: list[str]) -> bool:
    i = 0
    for tool in history:
        if i < len(steps) and step_matches(steps[i], tool):
            i += 1
    return i == len(steps)


def reference_allows(mode: str, rules: list[dict[str, Any]], history: list[str], tool: str) -> bool:
    if mode == "deny":
        if not history:
            return any(step_matches(r["allow"][0], tool) for r in rules)
        prev = history[-1]
        return any(
            step_matches(r["allow"][i], prev) and step_matches(r["allow"][i + 1], tool)
            for r in rules
            for i in range(len(r["allow"]) - 1)
        )

    def completes(steps: list[str]) -> bool:
        # brute force: try every way the earlier steps could sit in the history
        return step_matches(steps[-1], tool) and is_subsequence(steps[:-1], history)

    denied = any(completes(r["deny"]) for r in rules if "deny" in r)
    excepted = any(completes(r["allow"]) for r in rules if "allow" in r)
    return not denied or excepted


steps_st = st.lists(st.sampled_from(STEPS), min_size=1, max_size=4)
allow_mode_rules = st.lists(
    st.one_of(
        st.builds(lambda s: {"deny": s}, steps_st), st.builds(lambda s: {"allow": s}, steps_st)
    ),
    min_size=1,
    max_size=5,
)
deny_mode_rules = st.lists(st.builds(lambda s: {"allow": s}, steps_st), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    mode=st.sampled_from(["allow", "deny"]),
    calls=st.lists(st.sampled_from(TOOLS), min_size=1, max_size=25),
)
def test_sequences_admit_exactly_what_the_brute_force_reference_admits(
    data: st.DataObject, mode: str, calls: list[str]
) -> None:
    rules = data.draw(allow_mode_rules if mode == "allow" else deny_mode_rules)
    ev = Evaluator("seq-prop")
    ev.policy = compile_policy(
        {
            "metadata": {"tool_groups": {"g": GROUP}},
            "policies": [
                {"role": "r", "permissions": ["*"], "sequence": {"mode": mode, "rules": rules}}
            ],
        }
    )
    set_user("u", roles=["r"])
    history: list[str] = []
    for tool in calls:
        expected = reference_allows(mode, rules, history, tool)
        assert ev.explain(tool).allowed == expected  # explain agrees, and records nothing
        try:
            ev.admit(ev.check(tool), (), {}, None)
            allowed = True
        except PermissionDeniedError as err:
            assert err.reason == "sequence_violation"
            allowed = False
        assert allowed == expected, (mode, rules, history, tool)
        if allowed:
            history.append(tool)


# --- constraint operators -------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def _loose(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def constraint(spec: dict[str, Any]) -> Any:
    c = _Checker()
    compiled = compile_constraint(c, "x", spec)
    assert compiled is not None, c.errors
    return compiled


@given(options=st.lists(scalars, max_size=6), value=values)
def test_in_never_admits_a_value_outside_the_list(options: list[Any], value: Any) -> None:
    admitted = constraint({"in": options}).ok(value)
    assert admitted == any(same(value, o) for o in options)
    if admitted and isinstance(value, bool):
        assert any(o is value for o in options)  # True never passes for 1
    loosely = any(_loose(value, o) for o in options)
    # not_in (a deny-list) fails closed: Python's own equality counts too (False == 0)
    assert constraint({"not_in": options}).ok(value) == (not admitted and not loosely)


@given(bound=st.integers(-5, 5) | st.floats(-5, 5), value=values)
def test_numeric_bounds_hold_for_every_admitted_value(bound: float, value: Any) -> None:
    for op, holds in (
        ("min", lambda v: v >= bound),
        ("max", lambda v: v <= bound),
        ("gt", lambda v: v > bound),
        ("lt", lambda v: v < bound),
    ):
        if constraint({op: bound}).ok(value):
            assert isinstance(value, (int, float)) and not isinstance(value, bool)
            assert holds(value)  # NaN never passes: every comparison with NaN is False


@given(pattern=st.sampled_from(["^a", "b$", "[0-9]+", "(?i)secret"]), value=values)
def test_matches_and_not_matches(pattern: str, value: Any) -> None:
    found = isinstance(value, str) and re.search(pattern, value) is not None
    assert constraint({"matches": pattern}).ok(value) == found
    assert constraint({"not_matches": pattern}).ok(value) == (isinstance(value, str) and not found)


@given(n=st.integers(0, 4), value=values)
def test_lengths_and_types(n: int, value: Any) -> None:
    sized = isinstance(value, (str, list, tuple, dict))
    assert constraint({"maxLength": n}).ok(value) == (sized and len(value) <= n)
    assert constraint({"minLength": n}).ok(value) == (sized and len(value) >= n)
    assert constraint({"type": "string"}).ok(value) == isinstance(value, str)
    assert constraint({"type": "int"}).ok(value) == (
        isinstance(value, int) and not isinstance(value, bool)
    )


def test_missing_values_fail_only_required() -> None:
    assert constraint({"type": "string"}).ok(MISSING)
    assert not constraint({"required": True, "type": "string"}).ok(MISSING)
    assert not constraint({"required": True}).ok(None)
    assert constraint({"required": True}).failure(MISSING) == "required"


def test_every_operator_has_a_working_check() -> None:
    cases = {
        "eq": (3, 3.0, "3"),
        "ne": (3, "3", 3),
        "contains": ("ab", "xaby", "xy"),
        "not_contains": ("ab", ["x"], ["ab"]),
        "startsWith": ("ab", "abc", "cab"),
        "endsWith": ("ab", "cab", "abc"),
        "max_bytes": (3, "héj"[:2], "héj"),
    }
    for op, (arg, good, bad) in cases.items():
        compiled = constraint({op: arg})
        assert compiled.ok(good), (op, good)
        assert not compiled.ok(bad) and compiled.failure(bad) == op, (op, bad)
