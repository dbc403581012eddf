"""Approvals and budgets through the Agents SDK's own human-in-the-loop path:
``needs_approval`` -> ``result.interruptions`` (``ToolApprovalItem``) ->
``RunState.approve`` -> ``Runner.run(agent, state)``, driven by ``ScriptedModel``."""

from __future__ import annotations

import re
from typing import Any

import agents
import pytest
from agents import Agent, RunContextWrapper, Runner, RunResult, Tool, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from d2.agents.openai_agents import approval_request, approve_item, guard_tools, reject_item
from d2.core import PermissionDeniedError, approve, set_user

agents.set_tracing_disabled(True)

RAN: list[str] = []
REFUND = {"order": "o1", "amount": 500}


@pytest.fixture
def tools(hitl: dict[str, str]) -> list[Tool]:
    RAN.clear()

    @function_tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        RAN.append(f"refund({amount})")
        return f"refunded {amount}"

    @function_tool
    def web_search(query: str) -> str:
        """Search the web."""
        RAN.append("web_search")
        return f"results for {query!r}"

    @function_tool
    def web_fetch(url: str) -> str:
        """Fetch a page."""
        RAN.append("web_fetch")
        return "page"

    return guard_tools([refund, web_search, web_fetch], tool_ids=hitl)


def outputs(model: ScriptedModel) -> dict[str, str]:
    items = model.calls[-1].input
    return {i["call_id"]: i["output"] for i in items if i.get("type") == "function_call_output"}


async def test_an_approval_interrupts_the_run_and_the_approved_call_runs_once(
    tools: list[Tool],
) -> None:
    model = ScriptedModel(
        [
            [function_call("refund", REFUND, call_id="c1")],
            [function_call("refund", {"order": "o2", "amount": 50}, call_id="c2")],
            [function_call("refund", REFUND, call_id="c3")],
            [assistant_message("done")],
        ]
    )
    agent = Agent(name="support", model=model, tools=tools)
    set_user("alice", roles=["agent"])
    result = await Runner.run(agent, "refund o1")
    [item] = result.interruptions
    assert item.name == "refund" and RAN == []
    assert approval_request(item) is None  # the item alone proves nothing: pass its run
    request = approval_request(item, result)
    assert request is not None
    assert request.tool_id == "payments.refund" and request.user_id == "alice"
    assert request.approver_roles == ("finance_lead",)
    state = result.to_state()
    assert approval_request(item, state) == request

    set_user("alice", roles=["agent"])  # the requester cannot approve her own call
    with pytest.raises(PermissionDeniedError, match="cannot approve"):
        await approve_item(state, item)
    set_user("bob", roles=["finance_lead"])
    assert await approve_item(state, item) == request

    set_user("alice", roles=["agent"])
    result = await Runner.run(agent, state)
    assert RAN == ["refund(500)", "refund(50)"]  # once, then a refund under the threshold
    [again] = result.interruptions  # the identical call needs a new approval
    assert again.raw_item.call_id == "c3"  # type: ignore[union-attr]
    renewed = approval_request(again, result)
    assert renewed is not None and renewed.id != request.id  # the same call, a new request
    assert outputs(model) == {"c1": "refunded 500", "c2": "refunded 50"}


async def test_approving_in_the_sdk_alone_does_not_run_the_call(tools: list[Tool]) -> None:
    model = ScriptedModel(
        [[function_call("refund", REFUND, call_id="c1")], [assistant_message("ok")]]
    )
    agent = Agent(name="support", model=model, tools=tools)
    set_user("alice", roles=["agent"])
    result = await Runner.run(agent, "refund o1")
    state = result.to_state()
    state.approve(result.interruptions[0])  # no D2 approval
    result = await Runner.run(agent, state)
    assert RAN == []
    assert re.fullmatch(
        r"approval required for payments\.refund: request [0-9a-f]{64}, approvers: finance_lead",
        outputs(model)["c1"],
    )


async def test_a_rejection_is_given_in_d2_and_the_sdk(tools: list[Tool]) -> None:
    model = ScriptedModel(
        [[function_call("refund", REFUND, call_id="c1")], [assistant_message("ok")]]
    )
    agent = Agent(name="support", model=model, tools=tools)
    set_user("alice", roles=["agent"])
    result = await Runner.run(agent, "refund o1")
    state = result.to_state()
    set_user("bob", roles=["finance_lead"])
    item = result.interruptions[0]
    assert approval_request(item, state) is not None
    await reject_item(state, item, rejection_message="no refund")
    assert approval_request(item, state) is None  # decided: nothing left to approve
    set_user("alice", roles=["agent"])
    await Runner.run(agent, state)
    assert RAN == [] and outputs(model)["c1"] == "no refund"


async def test_an_approval_given_before_the_run_asks_is_used_once_without_interrupting(
    tools: list[Tool],
) -> None:
    first = ScriptedModel(
        [[function_call("refund", REFUND, call_id="c1")], [assistant_message("x")]]
    )
    set_user("alice", roles=["agent"])
    result = await Runner.run(Agent(name="support", model=first, tools=tools), "refund")
    request = approval_request(result.interruptions[0], result)
    assert request is not None
    set_user("bob", roles=["finance_lead"])
    approve(request.id)  # outside the SDK (a dashboard, the CLI)

    model = ScriptedModel(
        [
            [function_call("refund", REFUND, call_id="c2")],
            [assistant_message("done")],
        ]
    )
    set_user("alice", roles=["agent"])
    result = await Runner.run(Agent(name="support", model=model, tools=tools), "refund")
    assert result.interruptions == [] and result.final_output == "done"
    assert RAN == ["refund(500)"] and outputs(model) == {"c2": "refunded 500"}


async def test_an_exhausted_budget_is_a_short_tool_output(tools: list[Tool]) -> None:
    model = ScriptedModel(
        [
            [function_call("web_search", {"query": q}, call_id=f"s{q}") for q in "abc"],
            [function_call("web_fetch", {"url": u}, call_id=f"f{u}") for u in "xy"],
            [assistant_message("done")],
        ]
    )
    set_user("alice", roles=["agent"])
    result = await Runner.run(Agent(name="research", model=model, tools=tools), "go")
    assert result.final_output == "done"
    sent = outputs(model)
    assert sent["sc"] == "budget exceeded for web.search for this request"
    match = re.fullmatch(r"budget exceeded for web\.fetch; retry after (\d+)s", sent["fy"])
    assert match is not None and 0 < int(match.group(1)) <= 3600
    assert RAN == ["web_search", "web_search", "web_fetch"]


async def test_interruptions_of_two_users_with_one_call_id_are_never_confused(
    tools: list[Tool],
) -> None:
    from d2.core import ConfigurationError

    async def interrupted(user: str) -> tuple[Agent[None], RunResult]:
        model = ScriptedModel(
            [[function_call("refund", REFUND, call_id="same")], [assistant_message("ok")]]
        )
        agent = Agent(name="support", model=model, tools=tools)
        set_user(user, roles=["agent"])
        return agent, await Runner.run(agent, "refund o1")

    alice_agent, alice = await interrupted("alice")
    mallory_agent, mallory = await interrupted("mallory")
    item = alice.interruptions[0]
    assert approval_request(item) is None  # the item alone: never a guess
    state = alice.to_state()
    request = approval_request(item, state)  # the state proves it: alice's own request
    assert request is not None and request.user_id == "alice"
    set_user("bob", roles=["finance_lead"])
    assert await approve_item(state, item) == request
    set_user("mallory", roles=["agent"])
    mallory_state = mallory.to_state()
    mallory_state.approve(mallory.interruptions[0])  # the SDK alone: D2 still asks
    await Runner.run(mallory_agent, mallory_state)
    assert RAN == []
    set_user("alice", roles=["agent"])
    await Runner.run(alice_agent, state)
    assert RAN == ["refund(500)"]
    # a state without D2's link for a guarded tool's interruption proves nothing
    bare = mallory.to_state()
    bare._context._approvals.pop("d2:approval-requests")
    set_user("bob", roles=["finance_lead"])
    with pytest.raises(ConfigurationError, match="pending_approvals"):
        await approve_item(bare, mallory.interruptions[0])
    with pytest.raises(ConfigurationError, match="cannot be proven"):
        approval_request(mallory.interruptions[0], bare)


async def test_a_sibling_of_a_held_call_runs_once_across_the_resume(tools: list[Tool]) -> None:
    model = ScriptedModel(
        [
            [
                function_call("web_search", {"query": "policy"}, call_id="s1"),
                function_call("refund", REFUND, call_id="c1"),
            ],
            [assistant_message("done")],
        ]
    )
    agent = Agent(name="support", model=model, tools=tools)
    set_user("alice", roles=["agent"])
    result = await Runner.run(agent, "refund o1")
    [item] = result.interruptions
    state = result.to_state()
    set_user("bob", roles=["finance_lead"])
    await approve_item(state, item)
    set_user("alice", roles=["agent"])
    resumed = await Runner.run(agent, state)
    assert resumed.final_output == "done"
    assert RAN == ["web_search", "refund(500)"]  # each body once
    assert outputs(model) == {"s1": "results for 'policy'", "c1": "refunded 500"}


async def test_tools_taking_the_run_context_can_be_approved(hitl: dict[str, str]) -> None:
    ran: list[int] = []

    @function_tool
    def refund(ctx: RunContextWrapper[None], order: str, amount: int) -> str:
        """Refund an order."""
        ran.append(amount)
        return f"refunded {amount}"

    tools = guard_tools([refund], tool_ids=hitl)
    model = ScriptedModel(
        [[function_call("refund", REFUND, call_id="c1")], [assistant_message("ok")]]
    )
    agent = Agent(name="support", model=model, tools=tools)
    set_user("alice", roles=["agent"])
    result = await Runner.run(agent, "refund o1")
    item = result.interruptions[0]
    request = approval_request(item, result)
    assert request is not None and request.arguments == REFUND
    set_user("bob", roles=["finance_lead"])
    state = result.to_state()
    await approve_item(state, item)
    set_user("alice", roles=["agent"])
    await Runner.run(agent, state)
    assert ran == [500]


async def held_run(tools: list[Tool], call_id: str = "c1") -> tuple[Agent, RunResult]:
    model = ScriptedModel(
        [[function_call("refund", REFUND, call_id=call_id)], [assistant_message("ok")]]
    )
    agent = Agent(name="support", model=model, tools=tools)
    result = await Runner.run(agent, "refund o1")
    assert len(result.interruptions) == 1
    return agent, result


async def test_an_earlier_run_with_the_same_call_id_never_hides_the_request(
    tools: list[Tool], configure: Any, hitl_doc: dict[str, Any]
) -> None:
    """The flake behind ``test_tools_taking_the_run_context_can_be_approved``: an
    earlier run (of another test, or an earlier request of the app) left a held call
    with the same call id and arguments, asked under another policy version, so
    with another request id; the new run's interruption must still name its own
    request, and the old one must not make the lookup ambiguous."""
    set_user("alice", roles=["agent"])
    _, first = await held_run(tools)  # never resumed
    old = approval_request(first.interruptions[0], first)
    assert old is not None
    hitl_doc["metadata"]["name"] = "agents-hitl-reloaded"  # a new policy version
    configure(hitl_doc)
    set_user("alice", roles=["agent"])
    agent, second = await held_run(tools)
    item = second.interruptions[0]
    request = approval_request(item, second)
    assert request is not None and request.id != old.id
    assert request.policy_version != old.policy_version
    state = second.to_state()
    set_user("bob", roles=["finance_lead"])
    assert await approve_item(state, item) == request
    set_user("alice", roles=["agent"])
    await Runner.run(agent, state)
    assert RAN == ["refund(500)"]


async def test_a_used_approval_is_forgotten_with_its_call(tools: list[Tool]) -> None:
    """Once the approved call ran, its interruption no longer names a request, and a
    later run's identical call (same call id) names the new one."""
    set_user("alice", roles=["agent"])
    agent, result = await held_run(tools)
    item = result.interruptions[0]
    state = result.to_state()
    set_user("bob", roles=["finance_lead"])
    request = await approve_item(state, item)
    set_user("alice", roles=["agent"])
    await Runner.run(agent, state)
    assert RAN == ["refund(500)"] and request is not None
    assert approval_request(item, state) is None  # used: nothing left to approve
    set_user("alice", roles=["agent"])
    _, again = await held_run(tools)
    assert approval_request(again.interruptions[0], again) is not None


async def test_a_rejected_link_never_stops_a_later_resume(
    tools: list[Tool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refund 1 is rejected; the resumed run continues its request, then pauses on
    refund 2, approved after refund 1's request has expired (15m). The second resume
    continues refund 2's request (whose saved state carries refund 1's history) and
    is not stopped by refund 1's expired request."""
    from agents import RunState
    from d2.core.testing import controlled_clock

    clock = controlled_clock(monkeypatch)
    other = {"order": "o2", "amount": 700}
    model = ScriptedModel(
        [
            [function_call("refund", REFUND, call_id="c1")],
            [function_call("refund", other, call_id="c2")],
            [assistant_message("done")],
        ]
    )
    agent = Agent(name="support", model=model, tools=tools)
    set_user("alice", roles=["agent"])
    first = await Runner.run(agent, "refund o1")
    state = first.to_state()
    set_user("bob", roles=["finance_lead"])
    await reject_item(state, first.interruptions[0])
    clock.advance(60)
    set_user("alice", roles=["agent"])
    second = await Runner.run(agent, await RunState.from_string(agent, state.to_string()))
    [item] = second.interruptions
    state = second.to_state()
    set_user("bob", roles=["finance_lead"])
    await approve_item(state, item)
    clock.advance(14 * 60 + 30)  # refund 1's request has expired, refund 2's lives
    set_user("alice", roles=["agent"])
    done = await Runner.run(agent, await RunState.from_string(agent, state.to_string()))
    assert done.final_output == "done"
    assert RAN == ["refund(700)"] and outputs(model)["c2"] == "refunded 700"
