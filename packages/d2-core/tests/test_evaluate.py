"""RBAC decisions (POLICY.md steps 1-3) and the compiled evaluator's agreement
with a naive reference evaluator written straight from the spec."""

from __future__ import annotations

import time
from typing import Any

import pytest
from d2.core import (
    BundleExpiredError,
    MissingPolicyError,
    PermissionDeniedError,
    allowed_tools,
    d2_guard,
    is_allowed,
    set_user,
)
from d2.core.context import UserContext
from d2.core.evaluate import Evaluator
from d2.core.policy import compile_policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def decide(policy_doc: dict[str, Any], roles: list[str], tool: str) -> str | None:
    ev = Evaluator("prop")
    ev.policy = compile_policy(policy_doc)
    err = ev.decide(tool, UserContext("u", frozenset(roles)))
    return None if err is None else err.reason


def test_exact_grant_allows_and_other_tools_are_denied() -> None:
    doc = {"policies": [{"role": "a", "permissions": ["x"]}, {"role": "b", "permissions": ["y"]}]}
    assert decide(doc, ["a"], "x") is None
    assert decide(doc, ["a"], "y") == "not_granted"
    assert decide(doc, ["a"], "z") == "unknown_tool"


def test_star_grants_everything_to_its_role_only() -> None:
    doc = {"policies": [{"role": "admin", "permissions": ["*"]}]}
    assert decide(doc, ["admin"], "anything.at.all") is None
    assert decide(doc, ["guest"], "anything.at.all") == "not_granted"


def test_prefix_wildcard_matches_ids_starting_with_the_prefix() -> None:
    doc = {"policies": [{"role": "a", "permissions": ["reports:*"]}]}
    assert decide(doc, ["a"], "reports:q1") is None
    assert decide(doc, ["a"], "reports:") is None
    assert decide(doc, ["a"], "reports") == "unknown_tool"
    assert decide(doc, ["a"], "xreports:q1") == "unknown_tool"


def test_group_grants_each_member() -> None:
    doc = {
        "metadata": {"tool_groups": {"g": ["m1", "m2"]}},
        "policies": [{"role": "a", "permissions": ["@g"]}],
    }
    assert decide(doc, ["a"], "m1") is None and decide(doc, ["a"], "m2") is None
    assert decide(doc, ["a"], "m3") == "unknown_tool"


def test_explicit_deny_overrides_every_grant_of_any_role() -> None:
    doc = {
        "policies": [
            {"role": "admin", "permissions": ["*"]},
            {"role": "intern", "permissions": ["db.read", {"tool": "db:*", "allow": False}]},
        ]
    }
    assert decide(doc, ["admin"], "db:drop") is None
    assert decide(doc, ["admin", "intern"], "db:drop") == "explicit_deny"
    assert decide(doc, ["intern"], "db.read") is None


def test_multi_role_entry_applies_to_each_role() -> None:
    doc = {"policies": [{"role": ["a", "b"], "permissions": ["t"]}]}
    assert decide(doc, ["a"], "t") is None and decide(doc, ["b"], "t") is None
    assert decide(doc, ["c"], "t") == "not_granted"


def test_user_role_star_grants_nothing_special() -> None:
    doc = {"policies": [{"role": "admin", "permissions": ["t"]}]}
    assert decide(doc, ["*"], "t") == "not_granted"


def test_role_named_star_in_policy_is_literal() -> None:
    doc = {"policies": [{"role": "*", "permissions": ["t"]}]}
    assert decide(doc, ["anyone"], "t") == "not_granted"
    assert decide(doc, ["*"], "t") is None


def test_no_roles_is_denied() -> None:
    assert decide({"policies": [{"role": "a", "permissions": ["*"]}]}, [], "t") == "not_granted"


def test_explicit_deny_error_names_the_role_and_path(configure: Any) -> None:
    configure({"role": "a", "permissions": ["*", {"tool": "db.drop", "allow": False}]})

    @d2_guard("db.drop")
    def drop() -> None:
        return None

    set_user("alice", roles=["a"])
    with pytest.raises(PermissionDeniedError) as info:
        drop()
    err = info.value
    assert err.reason == "explicit_deny"
    assert "policies[0].permissions[1]" in str(err)
    assert [s.step for s in err.trace] == ["policy", "user", "rbac"]
    assert err.trace[-1].outcome == "deny" and err.trace[-1].path == "policies[0].permissions[1]"


def test_unknown_tool_is_missing_policy_error(configure: Any) -> None:
    configure({"role": "a", "permissions": ["x"]})

    @d2_guard("never.named")
    def tool() -> None:
        return None

    set_user("alice", roles=["a"])
    with pytest.raises(MissingPolicyError) as info:
        tool()
    assert info.value.reason == "unknown_tool"
    assert "add it to a role's permissions" in str(info.value)


def test_no_user_is_denied_with_advice(configure: Any) -> None:
    configure({"role": "a", "permissions": ["*"]})

    @d2_guard("x")
    def tool() -> None:
        return None

    with pytest.raises(PermissionDeniedError) as info:
        tool()
    assert info.value.reason == "no_user" and "set_user" in str(info.value)


def test_policy_past_expiry_at_run_time_denies_every_call(
    configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure({"role": "a", "permissions": ["*"]})

    @d2_guard("x", on_deny=lambda e: type(e))
    def tool() -> str:
        return "ran"

    set_user("alice", roles=["a"])
    assert tool() == "ran"
    real = time.time
    monkeypatch.setattr("d2.core.evaluate._now", lambda: real() + 4 * 86400)
    assert tool() is BundleExpiredError
    assert not is_allowed("x")


def test_is_allowed_and_allowed_tools_follow_the_current_user(configure: Any) -> None:
    configure(
        {"role": "admin", "permissions": ["*"]},
        {
            "role": "support",
            "permissions": ["crm.lookup", "kb:*", {"tool": "kb:admin", "allow": False}],
        },
        {"role": "ops", "permissions": ["db.read", "kb:admin"]},
    )

    @d2_guard("kb:search")
    def kb_search() -> None:
        return None

    assert allowed_tools() == () and not is_allowed("crm.lookup")  # no user
    set_user("s", roles=["support"])
    assert is_allowed("crm.lookup") and is_allowed("kb:search") and not is_allowed("kb:admin")
    assert allowed_tools() == ("crm.lookup", "kb:search")
    set_user("root", roles=["admin"])
    assert set(allowed_tools()) >= {"crm.lookup", "db.read", "kb:admin", "kb:search"}
    assert not is_allowed("x", instance_name="unconfigured")
    assert allowed_tools(instance_name="unconfigured") == ()


def test_decision_cost_does_not_depend_on_policy_size_only_on_memo() -> None:
    # The compiled index answers per tool id from a memo: the second lookup of the
    # same id returns the very same object (no recomputation).
    policy = compile_policy(
        {"policies": [{"role": "a", "permissions": [f"t{i}" for i in range(500)] + ["p:*"]}]}
    )
    assert policy.rules_for("t7") is policy.rules_for("t7")
    assert policy.rules_for("p:x").allow_roles == {"a"}


# --- property: compiled evaluator == naive reference -------------------------------

ROLES = ["admin", "dev", "ops", "*", "qa"]
TOOLS = ["a", "a:b", "a:c", "b", "b:x", "ab", ""]
PATTERNS = ["a", "a:b", "a:c", "b", "b:x", "ab", "*", "a:*", "a*", "b:*", "@g1", "@g2"]


def reference(doc: dict[str, Any], roles: set[str], tool: str) -> str | None:
    """POLICY.md steps 3, read literally."""
    groups = doc["metadata"]["tool_groups"]

    def matches(pattern: str) -> bool:
        if pattern == "*":
            return True
        if pattern.startswith("@"):
            return tool in groups[pattern[1:]]
        if pattern.endswith("*"):
            return tool.startswith(pattern[:-1])
        return pattern == tool

    named = granted = denied = False
    for entry in doc["policies"]:
        entry_roles = {entry["role"]} if isinstance(entry["role"], str) else set(entry["role"])
        for perm in entry["permissions"]:
            pattern, allow = (
                (perm, True) if isinstance(perm, str) else (perm["tool"], perm["allow"])
            )
            if matches(pattern):
                named = True
                if entry_roles & roles:
                    granted |= allow
                    denied |= not allow
    if not named:
        return "unknown_tool"
    if denied:
        return "explicit_deny"
    return None if granted else "not_granted"


perm_st = st.one_of(
    st.sampled_from(PATTERNS),
    st.builds(lambda t, a: {"tool": t, "allow": a}, st.sampled_from(PATTERNS), st.booleans()),
)
entry_st = st.builds(
    lambda r, p: {"role": r, "permissions": p},
    st.one_of(st.sampled_from(ROLES), st.lists(st.sampled_from(ROLES), min_size=1, max_size=3)),
    st.lists(perm_st, max_size=5),
)
doc_st = st.builds(
    lambda g1, g2, entries: {
        "metadata": {"tool_groups": {"g1": g1, "g2": g2}},
        "policies": entries,
    },
    st.lists(st.sampled_from([t for t in TOOLS if t]), max_size=3, unique=True),
    st.lists(st.sampled_from([t for t in TOOLS if t]), max_size=3, unique=True),
    st.lists(entry_st, max_size=6),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=doc_st,
    roles=st.sets(st.sampled_from(ROLES), max_size=3),
    tools=st.lists(st.sampled_from(TOOLS[:-1]), min_size=1, max_size=6),
)
def test_compiled_evaluator_agrees_with_reference(
    doc: dict[str, Any], roles: set[str], tools: list[str]
) -> None:
    ev = Evaluator("prop")
    ev.policy = compile_policy(doc)
    ctx = set_user("u", roles=roles)
    for tool in tools:  # several ids per policy: exercises the memo too
        err = ev.decide(tool, ctx)
        got = None if err is None else err.reason
        assert got == reference(doc, roles, tool), (doc, roles, tool)
        try:  # the hot path (raising) agrees with the query path
            ev.check(tool)
            hot = None
        except PermissionDeniedError as exc:
            hot = exc.reason
        assert hot == got
        in_list = tool in ev.allowed_tools(ctx)
        assert in_list == (got is None and tool in ev.policy.concrete_tools)
