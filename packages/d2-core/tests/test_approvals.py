"""Approvals as a hostile reviewer attacks them, through guarded calls as an app
makes them: a resumed request keeps its history and facts (in-process, async, and
across two processes sharing a real redis-server), an approval id is good for one
request only, and apps sharing one Redis never see or decide each other's requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    ConfigurationError,
    InMemorySource,
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
)
from d2.core.evaluate import evaluator_for
from d2.core.resume import restore, snapshot
from d2.core.stores import MemoryStore
from d2.core.testing import RedisServer, expires_in, policy_document

FLOW = {"labels": {"db.read_users": ["PII"]}, "blocks": {"PII": ["http.request"]}}
SEQUENCE = [{"deny": ["db.read_users", "http.request"]}]
LEAD = {"role": "finance_lead", "permissions": ["payments.refund"]}


def agent(**extra: Any) -> dict[str, Any]:
    return {
        "role": "agent",
        "permissions": [
            "db.read_users",
            "http.request",
            "notes.write",
            {"tool": "payments.refund", "approval": {"approvers": ["finance_lead"]}},
        ],
        **extra,
    }


def policy(rule: str, name: str = "resume-app") -> dict[str, Any]:
    """``rule``: what stops ``http.request`` after ``db.read_users``: a data-flow
    block (``flow``) or a sequence rule (``sequence``)."""
    if rule == "flow":
        return policy_document(agent(), LEAD, name=name, data_flow=FLOW)
    return policy_document(agent(sequence=SEQUENCE), LEAD, name=name)


class Tools:
    def __init__(self, instance_name: str = "default") -> None:
        self.ran: list[str] = []
        guard = lambda tool_id: d2_guard(tool_id, instance_name=instance_name)  # noqa: E731
        self.read_users = guard("db.read_users")(lambda: self.ran.append("read") or "users")
        self.http = guard("http.request")(lambda url: self.ran.append("http") or "sent")
        self.notes = guard("notes.write")(lambda text: self.ran.append("notes") or "noted")
        self.refund = guard("payments.refund")(
            lambda order, amount: self.ran.append("refund") or f"refunded {amount}"
        )


def held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def denied(call: Callable[[], Any]) -> str:
    with pytest.raises(PermissionDeniedError) as info:
        call()
    return info.value.reason


BLOCKED = {"flow": "data_flow_violation", "sequence": "sequence_violation"}


# -- 4. a resumed request keeps what it did before the pause ----------------------------


@pytest.mark.parametrize("rule", ["flow", "sequence"])
def test_a_resumed_request_keeps_its_history_and_facts(rule: str) -> None:
    configure_rbac_sync(source=InMemorySource(policy(rule)))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    t.read_users()
    request = held(lambda: t.refund("o1", 500))
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])  # the documented resume: a fresh request scope
    assert t.refund("o1", 500) == "refunded 500"
    assert denied(lambda: t.http("https://example.invalid")) == BLOCKED[rule]
    assert t.ran == ["read", "refund"]
    # a request that never read users is not blocked: the history came from the hold
    set_user("agent-7", roles=["agent"])
    assert t.http("https://example.invalid") == "sent"


@pytest.mark.parametrize("rule", ["flow", "sequence"])
def test_what_the_held_request_did_after_the_hold_is_kept_too(rule: str) -> None:
    """The held request goes on (a parallel tool call, the rest of the model's
    turn) before it pauses: its later calls travel with the request as well."""
    configure_rbac_sync(source=InMemorySource(policy(rule)))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    request = held(lambda: t.refund("o1", 500))
    t.read_users()  # after the hold, in the same request
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])
    assert t.refund("o1", 500) == "refunded 500"
    assert denied(lambda: t.http("u")) == BLOCKED[rule]


def test_the_resumed_call_is_judged_on_the_restored_history() -> None:
    """A sequence rule that the restored history completes denies the resumed call
    itself (the approval is not used), and an allowlist chain that only the restored
    history satisfies admits it."""
    deny_rule = [{"deny": ["db.read_users", "payments.refund"]}]
    configure_rbac_sync(source=InMemorySource(policy_document(agent(sequence=deny_rule), LEAD)))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    request = held(lambda: t.refund("o1", 500))
    t.read_users()  # completes [read_users, refund] for the resumed call
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])
    assert denied(lambda: t.refund("o1", 500)) == "sequence_violation"
    assert t.ran == ["read"]

    chain = {"mode": "deny", "rules": [{"allow": ["db.read_users", "payments.refund"]}]}
    configure_rbac_sync(source=InMemorySource(policy_document(agent(sequence=chain), LEAD)))
    set_user("agent-7", roles=["agent"])
    t.read_users()
    request = held(lambda: t.refund("o2", 500))
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])  # alone, refund may not start a request
    assert t.refund("o2", 500) == "refunded 500"


def test_per_request_budgets_count_on_and_a_fact_recorded_by_hand_is_kept() -> None:
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {"tool": "http.request", "limits": [{"max": 2, "per": "request"}]},
                {"tool": "payments.refund", "approval": {"approvers": ["finance_lead"]}},
                "notes.write",
            ],
        },
        LEAD,
        data_flow={"blocks": {"UNTRUSTED": ["notes.write"]}},
    )
    configure_rbac_sync(source=InMemorySource(doc))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    record_fact("UNTRUSTED")
    t.http("a")
    request = held(lambda: t.refund("o1", 500))
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])
    t.refund("o1", 500)
    t.http("b")  # the second of 2 in this request
    assert denied(lambda: t.http("c")) == "budget_exceeded"
    assert denied(lambda: t.notes("x")) == "data_flow_violation"


def test_two_held_calls_of_one_request_restore_its_history_once() -> None:
    allow_once = [{"deny": ["db.read_users", "db.read_users", "http.request"]}]
    configure_rbac_sync(source=InMemorySource(policy_document(agent(sequence=allow_once), LEAD)))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    t.read_users()
    first = held(lambda: t.refund("o1", 500))
    second = held(lambda: t.refund("o2", 700))
    set_user("dana", roles=["finance_lead"])
    approve(first.id)
    approve(second.id)
    set_user("agent-7", roles=["agent"])
    t.refund("o1", 500)
    t.refund("o2", 700)  # the same history again: not a second copy
    assert t.http("u") == "sent"  # one read_users in the history, not two
    t.read_users()
    assert denied(lambda: t.http("u")) == "sequence_violation"


def test_async_tools_resume_and_a_call_made_while_the_store_answers_is_kept() -> None:
    configure_rbac_sync(source=InMemorySource(policy("flow")))

    class SlowStore(MemoryStore):
        async def request_approval_async(self, *args: Any) -> Any:
            await asyncio.sleep(0.05)  # the model's other tool call runs meanwhile
            return self.request_approval(*args)

    evaluator_for("default").store = SlowStore()

    @d2_guard("payments.refund")
    async def refund(order: str, amount: int) -> str:
        return f"refunded {amount}"

    @d2_guard("db.read_users")
    async def read_users() -> str:
        return "users"

    @d2_guard("http.request")
    async def http(url: str) -> str:
        return "sent"

    async def first_turn() -> ApprovalRequest:
        set_user("agent-7", roles=["agent"])
        results = await asyncio.gather(refund("o1", 500), read_users(), return_exceptions=True)
        assert results[1] == "users"
        assert isinstance(results[0], ApprovalRequiredError)
        return results[0].request

    async def approver(request_id: str) -> None:
        set_user("dana", roles=["finance_lead"])
        assert [r.id for r in await pending_approvals_async()] == [request_id]
        await approve_async(request_id)

    async def resumed() -> str:
        set_user("agent-7", roles=["agent"])
        assert await refund("o1", 500) == "refunded 500"
        try:
            await http("u")
        except PermissionDeniedError as err:
            return err.reason
        return "sent"

    request = asyncio.run(first_turn())
    asyncio.run(approver(request.id))
    assert asyncio.run(resumed()) == "data_flow_violation"


def test_async_tools_resume_through_redis(redis_url: str) -> None:
    configure_rbac_sync(source=InMemorySource(policy("sequence", "resume-async")), store=redis_url)

    @d2_guard("payments.refund")
    async def refund(order: str, amount: int) -> str:
        return f"refunded {amount}"

    @d2_guard("db.read_users")
    async def read_users() -> str:
        return "users"

    @d2_guard("http.request")
    async def http(url: str) -> str:
        return "sent"

    async def scenario() -> str:
        set_user("agent-7", roles=["agent"])
        await read_users()
        try:
            await refund("o1", 500)
        except ApprovalRequiredError as err:
            request = err.request
        set_user("dana", roles=["finance_lead"])
        await approve_async(request.id)
        set_user("agent-7", roles=["agent"])
        assert await refund("o1", 500) == "refunded 500"
        try:
            await http("u")
        except PermissionDeniedError as err:
            return err.reason
        return "sent"

    assert asyncio.run(scenario()) == "sequence_violation"


def test_a_call_the_held_request_cannot_save_does_not_run() -> None:
    class Failing(MemoryStore):
        def save_snapshot(self, *args: Any) -> list[bool]:
            raise ConnectionError("store down")

    configure_rbac_sync(source=InMemorySource(policy("flow")), store=Failing())
    t = Tools()
    set_user("agent-7", roles=["agent"])
    held(lambda: t.refund("o1", 500))
    # the request waits for a person: its next call must be saved with it first
    assert denied(t.read_users) == "budget_unavailable"
    assert t.ran == []
    set_user("agent-7", roles=["agent"])  # another request: nothing to save
    assert t.read_users() == "users"


def test_a_snapshot_never_carries_into_another_users_request() -> None:
    configure_rbac_sync(source=InMemorySource(policy("flow")))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    t.read_users()
    held(lambda: t.refund("o1", 500))
    # another user, the identical tool and arguments: another call, another request
    set_user("agent-8", roles=["agent"])
    other = held(lambda: t.refund("o1", 500))
    assert t.http("u") == "sent"  # agent-7's PII did not reach agent-8's request
    set_user("dana", roles=["finance_lead"])
    approve(other.id)
    set_user("agent-8", roles=["agent"])
    t.refund("o1", 500)
    assert t.http("u") == "sent"
    # a snapshot names its user: restoring it into another user's scope is refused
    from d2.core.context import RequestScope

    mine = RequestScope()
    mine.facts["PII"] = "db.read_users"
    text = snapshot(mine, "agent-7")
    with pytest.raises(ValueError, match="another user"):
        restore(RequestScope(), [text], "agent-8")


def test_a_tampered_snapshot_denies_the_call_and_restores_nothing() -> None:
    configure_rbac_sync(source=InMemorySource(policy("flow")))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    request = held(lambda: t.refund("o1", 500))
    store = evaluator_for("default").store
    assert isinstance(store, MemoryStore)
    entry = store._requests[("local:resume-app", request.id)]
    for holder in list(entry.snapshots):  # as if another user's history were planted
        entry.snapshots[holder] = json.dumps(
            {"v": 1, "user": "mallory", "blocks": [["x", ["db.read_users"], {}]], "facts": {}}
        )
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])
    assert denied(lambda: t.refund("o1", 500)) == "budget_unavailable"
    assert t.ran == []
    assert t.http("u") == "sent"  # nothing was restored


# -- 5. an approval is for one request -------------------------------------------------


def test_a_used_approval_id_is_dead_and_never_approves_the_next_identical_call() -> None:
    configure_rbac_sync(source=InMemorySource(policy("flow")))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    request = held(lambda: t.refund("o1", 500))
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])
    assert t.refund("o1", 500) == "refunded 500"
    again = held(lambda: t.refund("o1", 500))  # the next identical call: a new request
    assert again.id != request.id
    set_user("dana", roles=["finance_lead"])
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id)  # a stale second approve of the used id
    assert info.value.reason == "approval_not_found"
    set_user("agent-7", roles=["agent"])
    assert held(lambda: t.refund("o1", 500)).id == again.id  # still pending
    assert t.ran == ["refund"]


def test_a_rejected_id_is_dead_and_the_call_after_the_refusal_asks_anew() -> None:
    configure_rbac_sync(source=InMemorySource(policy("flow")))
    t = Tools()
    set_user("agent-7", roles=["agent"])
    request = held(lambda: t.refund("o1", 500))
    set_user("dana", roles=["finance_lead"])
    reject(request.id)
    set_user("agent-7", roles=["agent"])
    assert denied(lambda: t.refund("o1", 500)) == "approval_rejected"
    again = held(lambda: t.refund("o1", 500))
    assert again.id != request.id
    set_user("dana", roles=["finance_lead"])
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id)
    assert info.value.reason == "approval_not_found"
    approve(again.id)
    set_user("agent-7", roles=["agent"])
    assert t.refund("o1", 500) == "refunded 500"


def test_request_ids_are_random_and_the_log_names_the_request_used() -> None:
    log: list[dict[str, Any]] = []
    configure_rbac_sync(source=InMemorySource(policy("flow")), decision_log=log.append)
    t = Tools()
    ids = set()
    for _ in range(3):
        set_user("agent-7", roles=["agent"])
        request = held(lambda: t.refund("o1", 500))
        ids.add(request.id)
        set_user("dana", roles=["finance_lead"])
        approve(request.id)
        set_user("agent-7", roles=["agent"])
        t.refund("o1", 500)
    assert len(ids) == 3 and all(len(i) == 64 for i in ids)
    evaluator = evaluator_for("default")
    assert evaluator.log is not None
    evaluator.log.flush()
    used = [r["approval_id"] for r in log if r["decision"] == "allowed" and "approval_id" in r]
    assert set(used) == ids


# -- 2. apps sharing one store --------------------------------------------------------


def two_apps(url: str) -> tuple[Tools, Tools]:
    for name in ("a", "b"):
        doc = policy_document(
            agent(),
            LEAD,
            {"role": "agent", "permissions": [{"tool": "search", "limits": [
                {"max": 1, "per": "user", "window": "1h"}]}]},
            name=f"app-{name}",
        )  # fmt: skip
        configure_rbac_sync(instance_name=name, source=InMemorySource(doc), store=url)
    return Tools("a"), Tools("b")


def test_apps_sharing_one_redis_never_see_or_decide_each_others_requests(
    redis_url: str,
) -> None:
    a, b = two_apps(redis_url)
    set_user("agent-7", roles=["agent"])
    request = held(lambda: a.refund("o1", 500))
    other = held(lambda: b.refund("o1", 500))  # the same call in app b: b's own request
    assert other.id != request.id
    # a finance_lead of app b sees only b's request, and cannot decide a's
    set_user("mallory", roles=["finance_lead"])
    assert [r.id for r in pending_approvals(instance_name="b")] == [other.id]
    for decide in (approve, reject):
        with pytest.raises(PermissionDeniedError) as info:
            decide(request.id, instance_name="b")
        assert info.value.reason == "approval_not_found"
    approve(other.id, instance_name="b")
    set_user("agent-7", roles=["agent"])
    assert held(lambda: a.refund("o1", 500)).id == request.id  # a's still waits
    assert b.refund("o1", 500) == "refunded 500"
    set_user("dana", roles=["finance_lead"])
    assert [r.id for r in pending_approvals(instance_name="a")] == [request.id]
    # per-user counters too: the same user, limit and key, counted apart
    search_a = d2_guard("search", instance_name="a")(lambda: "found")
    search_b = d2_guard("search", instance_name="b")(lambda: "found")
    set_user("agent-7", roles=["agent"])
    assert search_a() == "found" and search_b() == "found"
    assert denied(search_a) == "budget_exceeded" and denied(search_b) == "budget_exceeded"


def test_an_unnamed_policy_cannot_use_a_shared_store(redis_url: str) -> None:
    doc = policy_document(agent(), LEAD)
    del doc["metadata"]["name"]
    with pytest.raises(ConfigurationError, match=r"no metadata\.name"):
        configure_rbac_sync(source=InMemorySource(doc), store=redis_url)
    # a reload that drops the name: calls that need the store are denied
    source = InMemorySource(policy_document(agent(), LEAD, name="named"))
    manager = configure_rbac_sync(source=source, store=redis_url)
    t = Tools()
    source.update(doc)
    assert manager.policy is not None and manager.policy.namespace is None
    set_user("agent-7", roles=["agent"])
    assert denied(lambda: t.refund("o1", 500)) == "budget_unavailable"
    assert t.read_users() == "users"  # calls that need no store go on
    set_user("dana", roles=["finance_lead"])
    with pytest.raises(PermissionDeniedError) as info:
        pending_approvals()
    assert info.value.reason == "budget_unavailable"


# -- 4, across processes: the requester's process pauses, another one resumes --------

WORKER = textwrap.dedent(
    """
    import json, sys
    from d2.core import (
        ApprovalRequiredError, PermissionDeniedError, configure_rbac_sync, d2_guard, set_user,
    )
    policy, step = sys.argv[1], sys.argv[2]
    configure_rbac_sync(source=policy)  # the store comes from D2_STORE_URL
    read_users = d2_guard("db.read_users")(lambda: "users")
    http = d2_guard("http.request")(lambda url: "sent")
    refund = d2_guard("payments.refund")(lambda order, amount: f"refunded {amount}")
    set_user("agent-7", roles=["agent"])

    def attempt(call):
        try:
            return call()
        except ApprovalRequiredError as err:
            return "held:" + err.request.id
        except PermissionDeniedError as err:
            return err.reason

    if step == "ask":
        out = [attempt(read_users), attempt(lambda: refund("o1", 500))]
    else:
        out = [attempt(lambda: refund("o1", 500)), attempt(lambda: http("u"))]
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("rule", ["flow", "sequence"])
def test_a_request_held_in_one_process_resumes_in_another(
    rule: str, redis_instance: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "policy.json"
    doc = policy(rule)
    doc["metadata"]["expires"] = expires_in()
    path.write_text(json.dumps(doc))
    env = {**os.environ, "D2_STORE_URL": redis_instance.url, "D2_SILENT": "1"}

    def worker(step: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(path), step],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result: list[str] = json.loads(done.stdout)
        return result

    asked = worker("ask")
    assert asked[0] == "users" and asked[1].startswith("held:")
    configure_rbac_sync(source=str(path), store=redis_instance.url)  # the approver's app
    set_user("dana", roles=["finance_lead"])
    approve(asked[1].removeprefix("held:"))
    assert worker("resume") == ["refunded 500", BLOCKED[rule]]
