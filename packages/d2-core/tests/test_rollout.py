"""Rollout and human control (POLICY.md v1.1): audit mode, budgets, approvals and
the decision log, through guarded calls as an app makes them."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    InMemorySource,
    MissingPolicyError,
    PermissionDeniedError,
    approve,
    approve_async,
    configure_rbac_sync,
    d2_guard,
    pending_approvals,
    pending_approvals_async,
    record_fact,
    reject,
    set_user,
    shutdown_rbac,
)
from d2.core.errors import ConfigurationError, InvalidPolicyError
from d2.core.evaluate import evaluator_for
from d2.core.policy.compile import compile_policy
from d2.core.stores import ApprovalKey, ApprovalState, Counter, MemoryStore, Store
from d2.core.testing import Clock, controlled_clock, expires_in, policy_document
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, SecretStr

Record = dict[str, Any]


def start(*entries: dict[str, Any], log: list[Record] | None = None, **meta: Any) -> Any:
    """Configure the default instance; decisions go to ``log`` when given."""
    return configure_rbac_sync(
        source=InMemorySource(policy_document(*entries, **meta)),
        decision_log=log.append if log is not None else None,
    )


def flushed(log: list[Record]) -> list[Record]:
    evaluator = evaluator_for("default")
    assert evaluator.log is not None
    evaluator.log.flush()
    return log


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(InvalidPolicyError) as info:
        compile_policy(doc, source="p.yaml")
    return list(info.value.errors)


def grant(**fields: Any) -> dict[str, Any]:
    return {"role": "agent", "permissions": [{"tool": "t", **fields}]}


# -- load-time validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where", "text"),
    [
        ({"limits": [{"max": 5, "per": "session"}]}, "limits[0].per", "'request' or 'user'"),
        ({"limits": [{"max": 5, "per": "user"}]}, "limits[0]", "needs a 'window'"),
        ({"limits": [{"max": 0, "per": "request"}]}, "limits[0].max", "positive integer"),
        ({"limits": [{"max": -2, "per": "request"}]}, "limits[0].max", "positive integer"),
        ({"limits": [{"max": True, "per": "request"}]}, "limits[0].max", "positive integer"),
        (
            {"limits": [{"max": 5, "per": "user", "window": "1w"}]},
            "limits[0].window",
            "like 30s, 15m, 2h or 1d",
        ),
        (
            {"limits": [{"max": 5, "per": "user", "window": 60}]},
            "limits[0].window",
            "like 30s",
        ),
        (
            {"limits": [{"max": 5, "per": "request", "window": "1h"}]},
            "limits[0].window",
            "has no window",
        ),
        ({"limits": []}, "limits", "non-empty list"),
        ({"limits": [{"max": 1, "per": "request", "burst": 2}]}, "limits[0].burst", "unknown"),
        ({"approval": {"approvers": ["ghost"]}}, "approval.approvers[0]", "no policy entry"),
        ({"approval": {"approvers": ["agent"], "ttl": "8d"}}, "approval.ttl", "7d maximum"),
        ({"approval": {"approvers": ["agent"], "ttl": "soon"}}, "approval.ttl", "duration"),
        ({"approval": {"approvers": []}}, "approval.approvers", "non-empty list"),
        (
            {"approval": {"approvers": ["agent"], "when": {"x": {"gt2": 1}}}},
            "approval.when.x",
            "",
        ),
        ({"allow": False, "limits": [{"max": 1, "per": "request"}]}, "limits", "allow: false"),
        ({"conditions": {"audit": "yes"}}, "conditions.audit", "true or false"),
    ],
)
def test_each_bad_rollout_key_is_refused_with_its_path(
    fields: dict[str, Any], where: str, text: str
) -> None:
    errs = errors_of({"policies": [grant(**fields)]})
    assert any(e.startswith(f"policies[0].permissions[0].{where}") and text in e for e in errs), (
        errs
    )


def test_audit_keys_on_rules_and_blocks_compile_and_bad_ones_are_refused() -> None:
    policy = compile_policy(
        {
            "metadata": {
                "data_flow": {
                    "labels": {"a": ["L"]},
                    "blocks": {"L": {"tools": ["b"], "audit": True}, "M": ["c"]},
                }
            },
            "policies": [
                {
                    "role": "r",
                    "permissions": ["a", "b", "c"],
                    "sequence": [{"deny": ["a", "c"], "audit": True}],
                },
                {
                    "role": "s",
                    "permissions": ["a"],
                    "sequence": {"mode": "deny", "audit": True, "rules": [{"allow": ["a"]}]},
                },
            ],
        }
    )
    assert policy.rules_for("b").blocked_by == {"L": ("metadata.data_flow.blocks.L", True)}
    assert policy.sequences["r"].rules[0].audit
    assert policy.sequences["s"].audit
    errs = errors_of(
        {
            "policies": [
                {
                    "role": "r",
                    "permissions": ["a"],
                    "sequence": {"mode": "deny", "rules": [{"allow": ["a"], "audit": True}]},
                }
            ]
        }
    )
    assert errs[0].startswith("policies[0].sequence.rules[0].audit")
    assert "on the block" in errs[0]


# -- budgets ---------------------------------------------------------------------------


def test_per_request_budget_admits_max_then_denies_without_retry_after_and_resets() -> None:
    start(grant(limits=[{"max": 2, "per": "request"}]))
    calls: list[int] = []
    tool = d2_guard("t")(lambda n: calls.append(n))
    set_user("u", roles=["agent"])
    tool(1)
    tool(2)
    with pytest.raises(PermissionDeniedError) as info:
        tool(3)
    assert info.value.reason == "budget_exceeded" and info.value.retry_after is None
    assert "2 per request" in str(info.value)
    assert info.value.trace[-1].path == "policies[0].permissions[0].limits[0]"
    assert calls == [1, 2]
    set_user("u", roles=["agent"])  # a new request: a fresh budget
    tool(4)
    assert calls == [1, 2, 4]


def test_per_user_window_is_aligned_to_the_epoch_and_reports_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = controlled_clock(monkeypatch, start=(time.time() // 3600) * 3600 + 3000)
    start(grant(limits=[{"max": 2, "per": "user", "window": "1h"}]))
    tool = d2_guard("t")(lambda: "ran")
    set_user("u", roles=["agent"])
    assert tool() == tool() == "ran"
    set_user("u", roles=["agent"])  # another request of the same user shares it
    with pytest.raises(PermissionDeniedError) as info:
        tool()
    assert info.value.reason == "budget_exceeded"
    assert info.value.retry_after == pytest.approx(600)
    set_user("other", roles=["agent"])
    assert tool() == "ran"  # per user
    set_user("u", roles=["agent"])
    clock.advance(600)  # the next window starts at the hour
    assert tool() == "ran"


def test_a_denied_call_consumes_nothing_on_the_other_limits() -> None:
    start(grant(limits=[{"max": 3, "per": "request"}, {"max": 1, "per": "user", "window": "1d"}]))
    tool = d2_guard("t")(lambda: "ran")
    set_user("u", roles=["agent"])
    assert tool() == "ran"
    for _ in range(5):
        with pytest.raises(PermissionDeniedError, match="1 per user per 1d"):
            tool()
    # the per-request budget was given back each time: 2 of 3 are left
    assert evaluator_for("default").store is not None
    assert set(set_user_spent().values()) == {1}


def set_user_spent() -> dict[str, int]:
    from d2.core.context import current_context

    return current_context().scope.spent


def test_group_limit_is_one_counter_shared_by_its_tools() -> None:
    start(
        {
            "role": "agent",
            "permissions": [{"tool": "@egress", "limits": [{"max": 2, "per": "request"}]}],
        },
        tool_groups={"egress": ["http", "mail"]},
    )
    http = d2_guard("http")(lambda: "h")
    mail = d2_guard("mail")(lambda: "m")
    set_user("u", roles=["agent"])
    assert (http(), mail()) == ("h", "m")
    with pytest.raises(PermissionDeniedError, match="budget"):
        http()


def test_tools_without_limits_stay_on_the_fast_path() -> None:
    start(
        {
            "role": "agent",
            "permissions": ["plain", {"tool": "t", "limits": [{"max": 1, "per": "request"}]}],
        }
    )
    policy = evaluator_for("default").policy
    assert policy is not None
    assert not policy.rules_for("plain").guarded
    assert policy.rules_for("t").guarded and policy.rules_for("t").budgeted


class BrokenStore(Store):
    """A store whose backend is down."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def take(self, namespace: str, counters: Sequence[Counter], approval: Any, now: float) -> int:
        self.calls.append("take")
        raise ConnectionError("connection refused")

    async def take_async(
        self, namespace: str, counters: Sequence[Counter], approval: Any, now: float
    ) -> int:
        self.calls.append("take_async")
        raise ConnectionError("connection refused")


def test_unreachable_store_denies_with_budget_unavailable_and_the_app_goes_on() -> None:
    store = BrokenStore()
    configure_rbac_sync(
        source=InMemorySource(
            policy_document(grant(limits=[{"max": 9, "per": "user", "window": "1m"}]))
        ),
        store=store,
    )
    tool = d2_guard("t")(lambda: "ran")
    atool = d2_guard("t")(_async_ran)
    set_user("u", roles=["agent"])
    for _ in range(3):
        with pytest.raises(PermissionDeniedError) as info:
            tool()
        assert info.value.reason == "budget_unavailable"
        assert "ConnectionError" in str(info.value)
    with pytest.raises(PermissionDeniedError, match="store could not answer"):
        asyncio.run(atool())
    assert store.calls == ["take"] * 3 + ["take_async"]  # async tools never block the loop
    # per-request reservations were given back
    assert not any(set_user_spent().values())


async def _async_ran() -> str:
    return "ran"


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.just(("call",)),
            st.just(("new_request",)),
            st.tuples(st.just("wait"), st.integers(min_value=1, max_value=50)),
        ),
        max_size=80,
    ),
    user_max=st.integers(min_value=1, max_value=6),
    request_max=st.integers(min_value=1, max_value=4),
)
def test_in_process_budgets_never_admit_more_than_max_in_any_window(
    steps: list[tuple[Any, ...]], user_max: int, request_max: int
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        clock = controlled_clock(mp)
        evaluator_for("default").store = None  # each example starts with no counts
        start(
            grant(
                limits=[
                    {"max": user_max, "per": "user", "window": "1m"},
                    {"max": request_max, "per": "request"},
                ]
            )
        )
        tool = d2_guard("t")(lambda: None)
        per_window: dict[int, int] = {}
        per_request = 0
        set_user("u", roles=["agent"])
        for step in steps:
            if step[0] == "call":
                window = int(clock.now // 60)
                try:
                    tool()
                except PermissionDeniedError as err:
                    assert err.reason == "budget_exceeded"
                    # denied only when one of the budgets is really used up
                    assert per_window.get(window, 0) >= user_max or per_request >= request_max
                    continue
                per_window[window] = per_window.get(window, 0) + 1
                per_request += 1
                assert per_window[window] <= user_max and per_request <= request_max
            elif step[0] == "new_request":
                set_user("u", roles=["agent"])
                per_request = 0
            else:
                clock.advance(step[1])
        shutdown_rbac()


# -- approvals -------------------------------------------------------------------------

REFUND = {
    "role": "agent",
    "permissions": [
        {
            "tool": "refund",
            "approval": {
                "when": {"amount": {"gt": 100}},
                "approvers": ["finance_lead"],
                "ttl": "15m",
            },
        }
    ],
}
LEAD = {"role": "finance_lead", "permissions": ["refund"]}


@pytest.fixture
def refund() -> Callable[..., str]:
    ran: list[tuple[str, int]] = []

    @d2_guard("refund")
    def refund(order: str, amount: int = 0) -> str:
        ran.append((order, amount))
        return f"refunded {amount}"

    refund.ran = ran  # type: ignore[attr-defined]
    return refund


def ask(tool: Callable[..., Any], *args: Any, **kwargs: Any) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        tool(*args, **kwargs)
    assert info.value.reason == "approval_required"
    return info.value.request


def as_user(user: str, *roles: str) -> None:
    set_user(user, roles=list(roles))


def test_small_refunds_run_and_large_ones_wait_for_a_lead(refund: Any) -> None:
    start(REFUND, LEAD)
    as_user("agent-7", "agent")
    assert refund("o1", 40) == "refunded 40"
    request = ask(refund, "o1", amount=250)
    assert request.tool_id == "refund" and request.user_id == "agent-7"
    assert request.arguments == {"order": "o1", "amount": 250}
    assert request.approver_roles == ("finance_lead",)
    policy = evaluator_for("default").policy
    assert policy is not None and request.policy_version == policy.digest
    assert request.expires_at == pytest.approx(time.time() + 900, abs=5)
    # asking again does not create a second request
    assert ask(refund, "o1", 250).id == request.id
    as_user("dana", "finance_lead")
    assert [r.id for r in pending_approvals()] == [request.id]
    assert approve(request.id) == request
    assert pending_approvals() == []
    as_user("agent-7", "agent")
    assert refund("o1", 250) == "refunded 250"  # positional or keyword: the same call
    assert refund.ran == [("o1", 40), ("o1", 250)]
    # second use: approval required again, by a new request
    assert ask(refund, "o1", 250).id != request.id
    assert refund.ran == [("o1", 40), ("o1", 250)]


def test_an_approval_covers_only_the_same_user_arguments_and_policy(refund: Any) -> None:
    expires = expires_in()  # one document, whatever second the test reaches its end in
    start(REFUND, LEAD, expires=expires)
    as_user("agent-7", "agent")
    request = ask(refund, "o1", 250)
    as_user("dana", "finance_lead")
    approve(request.id)
    as_user("agent-8", "agent")  # another user
    assert ask(refund, "o1", 250).id != request.id
    as_user("agent-7", "agent")
    assert ask(refund, "o1", 251).id != request.id  # a changed argument
    assert ask(refund, "o2", 250).id != request.id
    # a new policy version: same rules, different document
    start(REFUND, LEAD, description="v2", expires=expires)
    assert ask(refund, "o1", 250).id != request.id
    start(REFUND, LEAD, expires=expires)  # the original version again: still approved
    assert refund("o1", 250) == "refunded 250"


def test_an_approval_expires_with_its_ttl(refund: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = controlled_clock(monkeypatch)
    start(REFUND, LEAD)
    as_user("agent-7", "agent")
    request = ask(refund, "o1", 250)
    as_user("dana", "finance_lead")
    approve(request.id)
    clock.advance(15 * 60 + 1)
    as_user("agent-7", "agent")
    fresh = ask(refund, "o1", 250)  # expired: a new request (new id, new expiry)
    assert fresh.id != request.id and fresh.expires_at > request.expires_at
    clock.advance(15 * 60 + 1)
    as_user("dana", "finance_lead")
    with pytest.raises(PermissionDeniedError) as info:
        approve(fresh.id)  # too late to approve too
    assert info.value.reason == "approval_not_found"


def test_self_approval_and_non_approvers_are_not_permitted(refund: Any) -> None:
    start(REFUND, LEAD, {"role": "support", "permissions": ["refund"]})
    as_user("agent-7", "agent", "finance_lead")  # holds the approver role itself
    request = ask(refund, "o1", 250)
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id)
    assert info.value.reason == "approval_not_permitted" and "cannot" in str(info.value)
    as_user("sam", "support")
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id)
    assert info.value.reason == "approval_not_permitted"
    assert "finance_lead" in str(info.value)
    assert pending_approvals() == []  # sam may decide none of them
    as_user("dana", "finance_lead")
    assert [r.id for r in pending_approvals()] == [request.id]


def test_a_rejection_refuses_the_next_identical_call_once(refund: Any) -> None:
    start(REFUND, LEAD)
    as_user("agent-7", "agent")
    request = ask(refund, "o1", 250)
    as_user("dana", "finance_lead")
    reject(request.id)
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id)  # decided: not pending any more
    assert info.value.reason == "approval_not_found"
    as_user("agent-7", "agent")
    with pytest.raises(PermissionDeniedError) as denied:
        refund("o1", 250)
    assert denied.value.reason == "approval_rejected"
    assert not isinstance(denied.value, ApprovalRequiredError)
    assert refund.ran == []
    # the rejection was told once: the request is closed, the next call asks anew
    again = ask(refund, "o1", 250)
    assert again.id != request.id
    as_user("dana", "finance_lead")
    assert [r.id for r in pending_approvals()] == [again.id]
    with pytest.raises(PermissionDeniedError) as info:
        reject(request.id)  # the rejected request is dead
    assert info.value.reason == "approval_not_found"


def test_approving_without_a_user_or_an_unknown_id_says_what_to_do() -> None:
    start(REFUND, LEAD)
    with pytest.raises(PermissionDeniedError, match="set_user"):
        approve("abc")
    as_user("dana", "finance_lead")
    with pytest.raises(PermissionDeniedError, match="not pending"):
        approve("abc")


def test_async_tools_and_async_approvals(refund: Any) -> None:
    start(REFUND, LEAD)
    ran: list[int] = []

    @d2_guard("refund")
    async def arefund(order: str, amount: int = 0) -> str:
        ran.append(amount)
        return "ok"

    async def scenario() -> None:
        as_user("agent-7", "agent")
        with pytest.raises(ApprovalRequiredError) as info:
            await arefund("o1", 500)
        as_user("dana", "finance_lead")
        assert [r.id for r in await pending_approvals_async()] == [info.value.request.id]
        await approve_async(info.value.request.id)
        as_user("agent-7", "agent")
        assert await arefund("o1", 500) == "ok"
        with pytest.raises(ApprovalRequiredError):
            await arefund("o1", 500)

    asyncio.run(scenario())
    assert ran == [500]


def test_approval_error_pickles_with_its_request(refund: Any) -> None:
    import pickle

    start(REFUND, LEAD)
    as_user("agent-7", "agent")
    with pytest.raises(ApprovalRequiredError) as info:
        refund("o1", 250)
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, ApprovalRequiredError) and again.request == info.value.request
    assert ApprovalRequest.from_json(info.value.request.to_json()) == info.value.request


def test_the_call_that_waits_consumes_no_budget(refund: Any) -> None:
    start(
        {
            "role": "agent",
            "permissions": [
                {
                    "tool": "refund",
                    "limits": [{"max": 1, "per": "request"}],
                    "approval": {"approvers": ["finance_lead"]},
                }
            ],
        },
        LEAD,
    )
    as_user("agent-7", "agent")
    request = ask(refund, "o1", 5)
    ask(refund, "o1", 5)  # still approval_required, not budget_exceeded
    as_user("dana", "finance_lead")
    approve(request.id)
    as_user("agent-7", "agent")
    assert refund("o1", 5) == "refunded 5"


# -- audit -------------------------------------------------------------------------------


def audit_case(
    log: list[Record], tool_id: str, call: Callable[[], Any], expected: Any, reason: str
) -> None:
    assert call() == expected
    records = [r for r in flushed(log) if r["tool_id"] == tool_id]
    assert records[-1]["decision"] == "would_deny", records
    assert records[-1]["reason"] == reason
    assert records[-1]["mode"] in ("audit", "enforce")


def test_audit_mode_runs_each_layers_would_deny_unchanged_and_logs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[Record] = []
    start(
        {
            "role": "agent",
            "permissions": [
                {"tool": "typed", "conditions": {"input": {"n": {"max": 3}}}},
                {"tool": "secret", "conditions": {"output": {"ssn": {"action": "deny"}}}},
                "read",
                "send",
                {"tool": "budget", "limits": [{"max": 1, "per": "request"}]},
                {"tool": "approve_me", "approval": {"approvers": ["lead"]}},
                {"tool": "denied", "allow": False},
            ],
            "sequence": [{"deny": ["read", "send"]}],
        },
        {"role": "lead", "permissions": ["approve_me"]},
        log=log,
        mode="audit",
        data_flow={"labels": {"read": ["PII"]}, "blocks": {"PII": ["send"]}},
    )
    set_user("u", roles=["agent"])
    audit_case(log, "typed", lambda: d2_guard("typed")(lambda n: n * 2)(9), 18, "input_validation")
    audit_case(log, "nope", lambda: d2_guard("nope")(lambda: "ran")(), "ran", "unknown_tool")
    audit_case(log, "denied", lambda: d2_guard("denied")(lambda: "ran")(), "ran", "explicit_deny")
    secret = {"ssn": "123", "name": "x"}
    audit_case(
        log, "secret", lambda: d2_guard("secret")(lambda: secret)(), secret, "output_sanitization"
    )
    assert d2_guard("read")(lambda: "r")() == "r"
    audit_case(log, "send", lambda: d2_guard("send")(lambda: "s")(), "s", "sequence_violation")
    budget = d2_guard("budget")(lambda: "b")
    assert budget() == "b"
    audit_case(log, "budget", budget, "b", "budget_exceeded")
    audit_case(
        log, "approve_me", lambda: d2_guard("approve_me")(lambda: "a")(), "a", "approval_required"
    )
    assert pending_approvals() == []  # audit never asks a person
    set_user("u", roles=["someone"])
    audit_case(log, "read", lambda: d2_guard("read")(lambda: "r")(), "r", "not_granted")
    assert {r["mode"] for r in log} == {"audit"}


def test_audit_mode_data_flow_would_deny_and_would_deny_calls_are_not_history() -> None:
    log: list[Record] = []
    start(
        {
            "role": "agent",
            "permissions": ["read", "send", "other"],
            "sequence": [{"deny": ["other", "send"]}],
        },
        log=log,
        mode="audit",
        data_flow={"labels": {"read": ["PII"]}, "blocks": {"PII": ["send"]}},
    )
    set_user("u", roles=["agent"])
    record_fact("PII")
    audit_case(log, "send", lambda: d2_guard("send")(lambda: "s")(), "s", "data_flow_violation")
    set_user("u", roles=["someone-else"])
    other = d2_guard("other")(lambda: "o")
    assert other() == "o"  # not granted: would_deny, and enforce would not have run it
    set_user("u", roles=["agent"])
    assert d2_guard("send")(lambda: "s")() == "s"
    assert flushed(log)[-1]["decision"] == "allowed"


def test_audit_never_opens_a_missing_policy_or_a_missing_user() -> None:
    log: list[Record] = []
    start({"role": "agent", "permissions": ["t"]}, log=log, mode="audit")
    tool = d2_guard("t")(lambda: "ran")
    with pytest.raises(PermissionDeniedError) as info:
        tool()
    assert info.value.reason == "no_user"
    shutdown_rbac()
    set_user("u", roles=["agent"])
    with pytest.raises(MissingPolicyError):
        tool()


def test_audited_rules_report_in_an_enforced_policy_while_others_enforce() -> None:
    log: list[Record] = []
    start(
        {
            "role": "agent",
            "permissions": [
                "read",
                "send",
                "mail",
                {"tool": "calc", "conditions": {"input": {"n": {"max": 3}}, "audit": True}},
                {
                    "tool": "card",
                    "conditions": {"output": {"pan": {"action": "redact"}}, "audit": True},
                },
            ],
            "sequence": [{"deny": ["read", "send"], "audit": True}, {"deny": ["read", "mail"]}],
        },
        log=log,
        data_flow={
            "labels": {"read": ["PII"]},
            "blocks": {"PII": {"tools": ["send"], "audit": True}},
        },
    )
    set_user("u", roles=["agent"])
    audit_case(log, "calc", lambda: d2_guard("calc")(lambda n: n)(7), 7, "input_validation")
    assert d2_guard("card")(lambda: {"pan": "4111"})() == {"pan": "4111"}  # unchanged
    assert d2_guard("read")(lambda: "r")() == "r"
    audit_case(log, "send", lambda: d2_guard("send")(lambda: "s")(), "s", "sequence_violation")
    with pytest.raises(PermissionDeniedError) as info:
        d2_guard("mail")(lambda: "m")()  # the enforced rule still denies
    assert info.value.reason == "sequence_violation"
    assert {r["mode"] for r in log} == {"enforce"}


def test_audit_mode_is_announced_loudly(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("D2_SILENT")
    start({"role": "agent", "permissions": ["t"]}, mode="audit", description="announce")
    assert "D2 AUDIT MODE" in capsys.readouterr().err
    assert any("AUDIT MODE" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


# -- the decision log ------------------------------------------------------------------------


def test_decision_log_file_has_every_field_and_arguments_only_when_asked(tmp_path: Any) -> None:
    path = tmp_path / "decisions.jsonl"
    configure_rbac_sync(
        source=InMemorySource(policy_document({"role": "agent", "permissions": ["t"]})),
        decision_log=str(path),
    )
    tool = d2_guard("t")(lambda secret: "ok")
    set_user("u", roles=["agent"])
    tool("hunter2")
    set_user("u", roles=["nobody"])
    with pytest.raises(PermissionDeniedError):
        tool("x")
    shutdown_rbac()  # flushes
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["decision"] for r in lines] == ["allowed", "denied"]
    first, second = lines
    assert set(first) == {
        "ts", "request_id", "user_id", "roles", "tool_id", "decision", "reason", "rule",
        "policy_version", "mode", "duration_us",
    }  # fmt: skip
    assert first["rule"] == "policies[0].permissions[0]" and first["reason"] is None
    assert second["reason"] == "not_granted" and second["request_id"] != first["request_id"]
    assert first["duration_us"] >= 0 and abs(first["ts"] - time.time()) < 60
    assert (path.stat().st_mode & 0o777) == 0o600
    assert "hunter2" not in path.read_text()

    path2 = tmp_path / "with-args.jsonl"
    configure_rbac_sync(
        source=InMemorySource(policy_document({"role": "agent", "permissions": ["t"]})),
        decision_log=path2,
        decision_log_arguments=True,
    )
    set_user("u", roles=["agent"])
    tool("hunter2")
    shutdown_rbac()
    assert json.loads(path2.read_text())["arguments"] == {"secret": "hunter2"}


def test_decision_log_from_the_environment_and_off_costs_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D2_TELEMETRY", "off")
    start({"role": "agent", "permissions": ["t"]})
    assert evaluator_for("default").observer is None and evaluator_for("default").log is None
    monkeypatch.setenv("D2_DECISION_LOG", str(tmp_path / "env.jsonl"))
    start({"role": "agent", "permissions": ["t"]})
    set_user("u", roles=["agent"])
    d2_guard("t")(lambda: None)()
    shutdown_rbac()
    assert json.loads((tmp_path / "env.jsonl").read_text())["tool_id"] == "t"


def test_a_full_queue_drops_and_counts_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    from d2.core.decisionlog import DecisionLog, dropped_total

    seen: list[Record] = []
    log = DecisionLog(seen.append, capacity=3, interval=3600)
    evaluator_for("default")
    configure_rbac_sync(
        source=InMemorySource(policy_document({"role": "agent", "permissions": ["t"]}))
    )
    evaluator_for("default").set_log(log)
    before = dropped_total()
    tool = d2_guard("t")(lambda: None)
    set_user("u", roles=["agent"])
    for _ in range(10):
        tool()
    assert dropped_total() - before == 7
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 1
    log.close()
    assert len(seen) == 3


def test_a_failing_sink_never_breaks_the_app(caplog: pytest.LogCaptureFixture) -> None:
    def sink(record: Record) -> None:
        raise OSError("disk full")

    configure_rbac_sync(
        source=InMemorySource(policy_document({"role": "agent", "permissions": ["t"]})),
        decision_log=sink,
    )
    set_user("u", roles=["agent"])
    assert d2_guard("t")(lambda: "ran")() == "ran"
    shutdown_rbac()
    assert any("disk full" in r.getMessage() for r in caplog.records)


def test_an_unwritable_log_path_fails_configure_naming_it(tmp_path: Any) -> None:
    from d2.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="decision log"):
        configure_rbac_sync(
            source=InMemorySource(policy_document({"role": "agent", "permissions": ["t"]})),
            decision_log=str(tmp_path / "missing-dir" / "log.jsonl"),
        )


def test_budget_and_approval_records_carry_retry_after_and_the_request_id(refund: Any) -> None:
    log: list[Record] = []
    start(
        {
            "role": "agent",
            "permissions": [
                {"tool": "refund", "approval": {"approvers": ["finance_lead"]}},
                {"tool": "t", "limits": [{"max": 1, "per": "user", "window": "1h"}]},
            ],
        },
        LEAD,
        log=log,
    )
    as_user("agent-7", "agent")
    request = ask(refund, "o1", 5)
    tool = d2_guard("t")(lambda: None)
    tool()
    with pytest.raises(PermissionDeniedError):
        tool()
    as_user("dana", "finance_lead")
    approve(request.id)
    as_user("agent-7", "agent")
    refund("o1", 5)
    records = flushed(log)
    waited = next(r for r in records if r["reason"] == "approval_required")
    used = [r for r in records if r["tool_id"] == "refund" and r["decision"] == "allowed"]
    assert waited["approval_id"] == request.id == used[0]["approval_id"]
    assert waited["rule"] == "policies[0].permissions[0].approval"
    over = next(r for r in records if r["reason"] == "budget_exceeded")
    assert 0 < over["retry_after"] <= 3600


def test_metrics_and_observers_see_would_deny_and_budget_reasons() -> None:
    seen: list[tuple[str, str | None, str]] = []
    start(
        {"role": "agent", "permissions": [{"tool": "t", "limits": [{"max": 1, "per": "request"}]}]}
    )
    evaluator_for("default").add_observer(
        lambda tool, ctx, reason, decision: seen.append((tool, reason, decision))
    )
    tool = d2_guard("t")(lambda: None)
    set_user("u", roles=["agent"])
    tool()
    with pytest.raises(PermissionDeniedError):
        tool()
    assert seen == [("t", None, "allowed"), ("t", "budget_exceeded", "denied")]


def test_memory_store_protocol_round_trip() -> None:
    store = MemoryStore()
    request = ApprovalRequest("id1", "t", "u", {}, "v", 100.0, ("lead",))
    state = store.request_approval("app", request, "call", "h", "{}", (), 1.0)
    assert state == ApprovalState(request, "pending")
    assert store.decide_approval("app", "id1", True, "dana", 2.0)
    assert store.take("app", [], ApprovalKey("call", "id1"), 3.0) == -1
    assert store.take("app", [], ApprovalKey("call", "id1"), 3.0) == -2


def test_clock_helper_moves_time() -> None:
    clock = Clock(10.0)
    assert clock() == 10.0 and clock.advance(5) == 15.0


# -- regressions from a hostile review ------------------------------------------------


# Classes whose values are approved live at module level: an approval digests a
# value by the name of its class, and only a class that name leads to.
class Account:
    def __init__(self, name: str) -> None:
        self.name = name

    @d2_guard("refund")
    def pay(self, amount: int) -> str:
        return f"{self.name} paid {amount}"


def test_a_methods_object_is_part_of_the_approved_call() -> None:
    start(REFUND, LEAD)
    as_user("agent-7", "agent")
    request = ask(Account("acct-1").pay, 500)
    # the object is shown: its state is part of what runs (eleventh review)
    assert request.arguments == {
        "self": {"__class__": f"{__name__}.Account", "name": "acct-1"},
        "amount": 500,
    }
    assert ask(Account("acct-2").pay, 500).arguments["self"]["name"] == "acct-2"
    as_user("dana", "finance_lead")
    approve(request.id)
    as_user("agent-7", "agent")
    assert ask(Account("acct-2").pay, 500).id != request.id  # another object: not approved
    assert Account("acct-1").pay(500) == "acct-1 paid 500"  # an equal object: the same call


def test_arguments_without_an_exact_form_cannot_be_approved() -> None:
    start({"role": "agent", "permissions": [{"tool": "send", "approval": {"approvers": ["lead"]}}]},
          {"role": "lead", "permissions": ["send"]})  # fmt: skip

    import io

    class Opaque(io.StringIO):  # its text lives in C, where no attribute shows it
        def __repr__(self) -> str:
            return "Opaque()"

    send = d2_guard("send")(lambda what: "sent")
    as_user("agent-7", "agent")
    with pytest.raises(PermissionDeniedError) as info:
        send(Opaque("bob"))
    assert info.value.reason == "approval_unsupported"
    assert not isinstance(info.value, ApprovalRequiredError)
    assert "cannot be digested" in str(info.value)


class Level(enum.IntEnum):
    ONE = 1


@dataclasses.dataclass
class A:
    x: int


@dataclasses.dataclass
class B:
    x: int


class Summary:
    def __init__(self, rows: list[int]) -> None:
        self.rows = rows

    def __repr__(self) -> str:
        return f"Summary({len(self.rows)} rows)"


class Wire(BaseModel):
    account: SecretStr
    memo: str = Field(default="", exclude=True)


def test_canonical_form_tells_types_and_hidden_state_apart() -> None:
    from d2.core.approvals import canonical_arguments

    values = [
        (1, 2), [1, 2], b"\x01", {"bytes": "01"}, Level.ONE, 1, 1.0, True, "1", A(1), B(1),
        {1: "a"}, {"1": "a"}, {1, 2}, ["1", "2"], 10**5000, Summary([1]), Summary([2]),
        {1: "a", "b": 2},
    ]  # fmt: skip
    texts = [canonical_arguments({"v": v}) for v in values]
    assert len(set(texts)) == len(values)


def test_secret_and_excluded_model_fields_still_tell_calls_apart() -> None:
    from d2.core.approvals import call_digest, json_arguments

    ids = {
        call_digest("wire", {"w": Wire(account=SecretStr(a), memo=m)}, "u", "v")
        for a, m in (("ACC-BOB", ""), ("ACC-MALLORY", ""), ("ACC-BOB", "DROP TABLE"))
    }
    assert len(ids) == 3
    shown = json_arguments({"w": Wire(account=SecretStr("ACC-BOB"))})
    assert "ACC-BOB" not in json.dumps(shown)  # approvers never see the secret


def test_budgets_follow_the_limit_not_its_place_in_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    search = {"tool": "search", "limits": [{"max": 2, "per": "user", "window": "1d"}]}
    start({"role": "agent", "permissions": [search]})
    tool = d2_guard("search")(lambda: "found")
    mail = d2_guard("mail")(lambda: "sent")
    as_user("alice", "agent")
    tool()
    tool()
    mail_grant = {"tool": "mail", "limits": [{"max": 2, "per": "user", "window": "1d"}]}
    start({"role": "agent", "permissions": [mail_grant, search]})  # an entry inserted above
    as_user("alice", "agent")
    with pytest.raises(PermissionDeniedError, match="budget"):
        tool()  # still used up
    assert mail() == "sent"  # and the new limit starts fresh


def test_an_unnamed_policy_on_a_shared_store_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    class Shared(MemoryStore):
        pass

    doc = policy_document({"role": "agent", "permissions": ["t"]})
    del doc["metadata"]["name"]
    with pytest.raises(ConfigurationError, match=r"no metadata\.name"):
        configure_rbac_sync(source=InMemorySource(doc), store=Shared())
    assert evaluator_for("default").policy is None  # nothing was put in force
    configure_rbac_sync(source=InMemorySource(doc))  # the in-process store is this app's
    configure_rbac_sync(source=InMemorySource(doc), store="memory://")  # made for it alone
    with pytest.raises(ConfigurationError, match=r"no metadata\.name"):
        # a store= object may be handed to two instances: it counts as shared
        configure_rbac_sync(source=InMemorySource(doc), store=MemoryStore())


def test_one_bad_record_or_sink_call_loses_only_itself(tmp_path: Any) -> None:
    path = tmp_path / "log.jsonl"
    configure_rbac_sync(
        source=InMemorySource(policy_document({"role": "agent", "permissions": ["t"]})),
        decision_log=str(path),
        decision_log_arguments=True,
    )
    tool = d2_guard("t")(lambda q: q)
    as_user("u", "agent")
    for q in ("a", "x\ud800", "b"):
        tool(q)
    shutdown_rbac()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["arguments"]["q"] for r in lines] == ["a", "x\ud800", "b"]

    seen: list[str] = []

    def sink(record: Record) -> None:
        if record["arguments"]["q"] == "boom":
            raise ValueError("bad record")
        seen.append(record["arguments"]["q"])

    configure_rbac_sync(
        source=InMemorySource(policy_document({"role": "agent", "permissions": ["t"]})),
        decision_log=sink,
        decision_log_arguments=True,
    )
    as_user("u", "agent")
    for q in ("a", "boom", "c", "d"):
        tool(q)
    shutdown_rbac()
    assert seen == ["a", "c", "d"]


def test_odd_arguments_never_crash_the_guard_or_leak_a_reservation() -> None:
    start(
        {
            "role": "agent",
            "permissions": [
                {
                    "tool": "t",
                    "limits": [{"max": 2, "per": "request"}],
                    "approval": {"approvers": ["lead"]},
                }
            ],
        },
        {"role": "lead", "permissions": ["t"]},
    )
    tool = d2_guard("t")(lambda meta: "ran")
    as_user("u", "agent")
    for odd in ({1: "a", "b": 2}, 10**5000, [[[[]]]] * 3):
        with pytest.raises(ApprovalRequiredError):
            tool(odd)
    assert not any(set_user_spent().values())


def test_a_cancelled_store_call_gives_the_reservation_back() -> None:
    class SlowStore(MemoryStore):
        async def take_async(
            self, namespace: str, counters: Sequence[Counter], approval: Any, now: float
        ) -> int:
            await asyncio.sleep(10)
            return -1

    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                grant(
                    limits=[{"max": 1, "per": "request"}, {"max": 9, "per": "user", "window": "1h"}]
                )
            )
        ),
        store=SlowStore(),
    )

    @d2_guard("t")
    async def fetch() -> str:
        return "ok"

    async def scenario() -> dict[str, int]:
        as_user("u", "agent")
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(fetch(), 0.01)
        return dict(set_user_spent())

    assert not any(asyncio.run(scenario()).values())


def test_async_generator_tools_ask_the_store_without_blocking() -> None:
    calls: list[str] = []

    class AsyncOnly(MemoryStore):
        def take(
            self, namespace: str, counters: Sequence[Counter], approval: Any, now: float
        ) -> int:
            calls.append("take")
            return super().take(namespace, counters, approval, now)

        async def take_async(
            self, namespace: str, counters: Sequence[Counter], approval: Any, now: float
        ) -> int:
            calls.append("take_async")
            return super().take(namespace, counters, approval, now)

    configure_rbac_sync(
        source=InMemorySource(
            policy_document(grant(limits=[{"max": 1, "per": "user", "window": "1h"}]))
        ),
        store=AsyncOnly(),
    )

    @d2_guard("t")
    async def stream() -> Any:
        yield 1
        yield 2

    async def scenario() -> list[int]:
        as_user("u", "agent")
        got = [i async for i in stream()]
        with pytest.raises(PermissionDeniedError, match="budget"):
            [i async for i in stream()]
        return got

    assert asyncio.run(scenario()) == [1, 2]
    assert calls == ["take_async", "take_async"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads
def test_a_fork_while_the_budget_lock_is_held_does_not_hang_the_child() -> None:
    import os
    import threading

    from d2.core import evaluate

    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    start(grant(limits=[{"max": 5, "per": "request"}]))
    tool = d2_guard("t")(lambda: "ran")
    as_user("u", "agent")
    holder = threading.Thread(target=lambda: (evaluate._spend_lock.acquire(), time.sleep(1)))
    holder.start()
    time.sleep(0.1)
    pid = os.fork()
    if pid == 0:  # the child: one budgeted call, then leave at once
        try:
            as_user("u", "agent")  # a forked child starts with no user
            os._exit(0 if tool() == "ran" else 1)
        except BaseException:
            os._exit(2)
    deadline = time.time() + 10
    status = None
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    holder.join()
    evaluate._spend_lock.release()
    assert status == 0


def test_limits_or_approval_behind_an_earlier_grant_are_refused() -> None:
    errs = errors_of(
        {
            "policies": [
                {
                    "role": "agent",
                    "permissions": [
                        "payments:*",
                        {"tool": "payments:refund", "approval": {"approvers": ["agent"]}},
                    ],
                }
            ]
        }
    )
    assert errs[0].startswith("policies[0].permissions[1]: its approval would never apply")
    assert "policies[0].permissions[0]" in errs[0]
    # a more specific grant first, or an earlier grant with input conditions, is fine
    compile_policy(
        {
            "policies": [
                {
                    "role": "agent",
                    "permissions": [
                        {"tool": "payments:refund", "limits": [{"max": 1, "per": "request"}]},
                        "payments:*",
                    ],
                },
                {
                    "role": "agent",
                    "permissions": [
                        {"tool": "x", "conditions": {"input": {"a": {"max": 1}}}},
                        {"tool": "x", "limits": [{"max": 1, "per": "request"}]},
                    ],
                },
            ]
        }
    )


def test_request_budget_records_carry_arguments_and_explain_reads_the_budget() -> None:
    from d2.core import explain

    log: list[Record] = []
    configure_rbac_sync(
        source=InMemorySource(policy_document(grant(limits=[{"max": 1, "per": "request"}]))),
        decision_log=log.append,
        decision_log_arguments=True,
    )
    tool = d2_guard("t")(lambda q: q)
    as_user("u", "agent")
    assert explain("t", "a").allowed
    tool("a")
    decision = explain("t", "b")
    assert not decision.allowed and decision.reason == "budget_exceeded"
    assert flushed(log)[0]["arguments"] == {"q": "a"}


def test_approval_when_is_read_fail_safe() -> None:
    start(REFUND, LEAD)
    loose = d2_guard("refund")(lambda **raw: "refunded")  # a handler reading raw JSON
    as_user("agent-7", "agent")
    assert loose(order="o1", amount=50) == "refunded"  # a real number below the bar
    for sneaky in ("500", "5e3", [500], None):
        with pytest.raises(ApprovalRequiredError):
            loose(order="o1", amount=sneaky)  # a value gt cannot judge: a person decides


@pytest.mark.parametrize("answer", [1, 5, True, None, "-1", b"-1", 0.5])
def test_a_store_answering_nonsense_denies_and_leaks_nothing(answer: Any) -> None:
    class Broken(MemoryStore):
        def take(
            self, namespace: str, counters: Sequence[Counter], approval: Any, now: float
        ) -> int:
            return answer  # type: ignore[no-any-return]

    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                grant(
                    limits=[{"max": 3, "per": "request"}, {"max": 9, "per": "user", "window": "1h"}]
                )
            )
        ),
        store=Broken(),
    )
    tool = d2_guard("t", on_deny="refused")(lambda: "ran")
    as_user("u", "agent")
    assert tool() == "refused"
    assert not any(set_user_spent().values())
