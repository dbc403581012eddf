"""``restore_request``: a run resumed after an approval pause continues the paused
request from its first call, whatever that call is.

The identical held call restores its request when it comes back; a resumed run
whose first calls are other tools (an upload before the approved refund runs, or
any call after a rejection, when the refund never comes back) is judged on the
paused request's history only if it asked for it first. The agent adapters call
``restore_request`` at the start of the runs they resume; these tests drive it as
an app without a framework does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    configure_rbac_sync,
    d2_guard,
    get_user_context,
    reject,
    restore_request,
    restore_request_async,
    set_user,
)
from d2.core.evaluate import evaluator_for
from d2.core.stores import MemoryStore, StoreUnavailableError
from d2.core.stores.redis import RedisStore
from d2.core.testing import policy_document

FLOW = {"labels": {"db.read_users": ["PII"]}, "blocks": {"PII": ["http.request"]}}
LEAD = {"role": "finance_lead", "permissions": []}


def agent(*extra: Any, sequence: list[Any] | None = None) -> dict[str, Any]:
    role: dict[str, Any] = {
        "role": "agent",
        "permissions": [
            "db.read_users",
            "http.request",
            {"tool": "web.search", "limits": [{"max": 2, "per": "request"}]},
            {"tool": "payments.refund", "approval": {"approvers": ["finance_lead"]}},
            *extra,
        ],
    }
    if sequence is not None:
        role["sequence"] = sequence
    return role


def configure(rule: str = "flow", **kwargs: Any) -> None:
    if rule == "flow":
        doc = policy_document(agent(), LEAD, name="restore-app", data_flow=FLOW)
    else:
        seq = [{"deny": ["db.read_users", "http.request"]}]
        doc = policy_document(agent(sequence=seq), LEAD, name="restore-app")
    configure_rbac_sync(source=InMemorySource(doc), **kwargs)


class Tools:
    def __init__(self) -> None:
        self.ran: list[str] = []
        self.read_users = d2_guard("db.read_users")(lambda: self.ran.append("read") or "users")
        self.post = d2_guard("http.request")(lambda body: self.ran.append("post") or "posted")
        self.search = d2_guard("web.search")(lambda q: self.ran.append(f"search {q}") or "hits")
        self.refund = d2_guard("payments.refund")(
            lambda order, amount: self.ran.append("refund") or "refunded"
        )


def held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def denied(call: Callable[[], Any]) -> str:
    with pytest.raises(PermissionDeniedError) as info:
        call()
    return str(info.value.reason)


def decide(request: ApprovalRequest, outcome: str) -> None:
    set_user("dana", roles=["finance_lead"])
    (approve if outcome == "approved" else reject)(request.id)


def as_requester() -> None:
    set_user("agent-7", roles=["agent"])  # the resumed run: a fresh request scope


@pytest.fixture
def tools() -> Tools:
    configure()
    return Tools()


@pytest.mark.parametrize("rule", ["flow", "sequence"])
@pytest.mark.parametrize("outcome", ["approved", "rejected"])
def test_a_resumed_run_is_blocked_before_it_repeats_the_held_call(outcome: str, rule: str) -> None:
    configure(rule)
    t = Tools()
    as_requester()
    users = t.read_users()
    request = held(lambda: t.refund("o9", 900))
    decide(request, outcome)
    as_requester()
    assert t.post(users) == "posted"  # without restoring: the gap this closes
    as_requester()
    restore_request(request.id)
    blocked = "data_flow_violation" if rule == "flow" else "sequence_violation"
    assert denied(lambda: t.post(users)) == blocked
    if outcome == "approved":  # the approved call still runs, once
        assert t.refund("o9", 900) == "refunded"
        assert denied(lambda: t.post(users)).endswith("_violation")
    else:
        assert denied(lambda: t.refund("o9", 900)) == "approval_rejected"
    assert t.ran.count("post") == 1  # the control, before restoring


@pytest.mark.parametrize("outcome", ["approved", "rejected"])
def test_a_per_request_budget_holds_across_the_pause_whatever_the_order(
    tools: Tools, outcome: str
) -> None:
    t = tools
    as_requester()
    t.search("a")
    t.search("b")
    request = held(lambda: t.refund("o9", 900))
    decide(request, outcome)
    as_requester()
    restore_request(request.id)
    assert denied(lambda: t.search("c")) == "budget_exceeded"
    if outcome == "approved":
        assert t.refund("o9", 900) == "refunded"
    assert denied(lambda: t.search("d")) == "budget_exceeded"
    assert [r for r in t.ran if r.startswith("search")] == ["search a", "search b"]


def test_restoring_is_idempotent_and_the_held_call_adds_nothing_twice(tools: Tools) -> None:
    t = tools
    as_requester()
    t.read_users()
    t.search("a")
    request = held(lambda: t.refund("o9", 900))
    decide(request, "approved")
    as_requester()
    restore_request(request.id)
    restore_request(request.id)
    scope = get_user_context().scope
    assert get_user_context().call_history == ("db.read_users",)
    assert list(scope.spent.values()) == [1]  # the search, counted once
    assert t.refund("o9", 900) == "refunded"  # the identical call restores again: no copy
    restore_request(request.id)  # used now, but this request continued it: no lookup
    assert get_user_context().call_history == ("db.read_users", "payments.refund")
    assert list(scope.spent.values()) == [1]


def test_the_scope_that_asked_needs_no_store_to_continue(tools: Tools) -> None:
    t = tools
    as_requester()
    t.read_users()
    request = held(lambda: t.refund("o9", 900))

    def broken(*args: Any) -> Any:
        raise StoreUnavailableError("down")

    store = evaluator_for("default").store
    assert isinstance(store, MemoryStore)
    store.read_approval = broken  # type: ignore[method-assign]
    restore_request(request.id)  # the same request: nothing to read
    assert denied(lambda: t.post("x")) == "data_flow_violation"


def test_another_users_request_is_refused_and_restores_nothing(tools: Tools) -> None:
    t = tools
    as_requester()
    t.read_users()
    request = held(lambda: t.refund("o9", 900))
    decide(request, "approved")
    set_user("mallory", roles=["agent"])
    with pytest.raises(PermissionDeniedError) as info:
        restore_request(request.id)
    assert info.value.reason == "approval_not_permitted"
    assert get_user_context().call_history == ()
    assert t.post("x") == "posted"
    assert denied(lambda: restore_request(request.id)) == "approval_not_permitted"


def test_a_request_whose_state_is_gone_is_refused(tools: Tools) -> None:
    t = tools
    as_requester()
    t.read_users()
    request = held(lambda: t.refund("o9", 900))
    decide(request, "approved")
    as_requester()
    assert t.refund("o9", 900) == "refunded"  # used, in another request scope
    as_requester()
    assert denied(lambda: restore_request(request.id)) == "approval_not_found"
    assert denied(lambda: restore_request("f" * 64)) == "approval_not_found"
    assert denied(lambda: restore_request("")) == "approval_not_found"
    set_user(None)
    assert denied(lambda: restore_request(request.id)) == "no_user"


def test_a_store_that_cannot_answer_fails_closed(tools: Tools) -> None:
    t = tools
    as_requester()
    t.read_users()
    request = held(lambda: t.refund("o9", 900))

    def broken(*args: Any) -> Any:
        raise StoreUnavailableError("the store is down")

    store = evaluator_for("default").store
    assert isinstance(store, MemoryStore)
    store.read_approval = broken  # type: ignore[method-assign]
    as_requester()
    with pytest.raises(PermissionDeniedError) as info:
        restore_request(request.id)
    assert info.value.reason == "budget_unavailable"
    assert "the store is down" in str(info.value)


def test_a_tampered_snapshot_is_refused_and_restores_nothing(tools: Tools) -> None:
    t = tools
    as_requester()
    t.read_users()
    request = held(lambda: t.refund("o9", 900))
    store = evaluator_for("default").store
    assert isinstance(store, MemoryStore)
    entry = store._requests[("local:restore-app", request.id)]
    for holder in list(entry.snapshots):
        entry.snapshots[holder] = json.dumps(
            {"v": 1, "user": "mallory", "blocks": [["x", ["web.search"], {}]], "facts": {}}
        )
    as_requester()
    assert denied(lambda: restore_request(request.id)) == "budget_unavailable"
    assert get_user_context().call_history == ()


def test_async_twin_restores_without_blocking(tools: Tools) -> None:
    t = tools
    as_requester()
    users = t.read_users()
    request = held(lambda: t.refund("o9", 900))
    decide(request, "rejected")

    async def resumed() -> str:
        as_requester()
        await restore_request_async(request.id)
        return denied(lambda: t.post(users))

    assert asyncio.run(resumed()) == "data_flow_violation"


def test_a_request_paused_in_one_process_is_restored_by_id_from_redis(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    try:
        configure(store=store)
        t = Tools()
        as_requester()
        t.read_users()
        t.search("a")
        request = held(lambda: t.refund("o9", 900))
        decide(request, "rejected")
        found = store.read_approval("local:restore-app", request.id, 0.0)
        assert found is not None and found.state == "rejected" and len(found.snapshots) == 1
        assert asyncio.run(store.read_approval_async("local:restore-app", request.id, 0.0)) == found
        assert store.read_approval("local:restore-app", "0" * 64, 0.0) is None
        assert store.read_approval("local:restore-app", request.id, request.expires_at) is None
        as_requester()
        restore_request(request.id)
        assert get_user_context().call_history == ("db.read_users",)
        assert list(get_user_context().scope.spent.values()) == [1]
        assert denied(lambda: t.post("x")) == "data_flow_violation"
    finally:
        store.close()
