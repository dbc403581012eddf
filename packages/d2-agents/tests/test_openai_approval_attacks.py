"""Attacks on the Agents SDK adapter's link from an interruption to its D2 request
(from a hostile review): two users' identical calls with one call id, held in two
worker processes on a shared store, must never be confused by an approver who
loads one user's stored ``RunState``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import agents
import pytest
from agents import Agent, Runner, RunState, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from d2.agents.openai_agents import approval_request, approve_item, guard_tools
from d2.core import InMemorySource, configure_rbac_sync, set_user
from d2.core.testing import redis_server

from .conftest import HITL_IDS, hitl_policy

agents.set_tracing_disabled(True)

REFUND = {"order": "o1", "amount": 500}

# Alice's run, in another worker process of the same app (same Redis): it is held,
# and its RunState is saved for the approver's UI, as the SDK's HITL recipe does.
ALICE_WORKER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import agents
    from agents import Agent, Runner, function_tool
    from agents.testing import ScriptedModel, assistant_message, function_call
    from d2.agents.openai_agents import guard_tools
    from d2.core import InMemorySource, configure_rbac_sync, set_user

    agents.set_tracing_disabled(True)
    doc = json.loads(os.environ["POLICY"])
    configure_rbac_sync(source=InMemorySource(doc), store=os.environ["STORE"])

    @function_tool
    def refund(order: str, amount: int) -> str:
        \"\"\"Refund an order.\"\"\"
        return f"refunded {amount}"

    tools = guard_tools([refund], tool_ids={"refund": "payments.refund"})

    async def main():
        model = ScriptedModel([
            [function_call("refund", {"order": "o1", "amount": 500}, call_id="call_0")],
            [assistant_message("ok")],
        ])
        set_user("alice", roles=["agent"])
        result = await Runner.run(Agent(name="support", model=model, tools=tools), "refund")
        assert len(result.interruptions) == 1
        sys.stdout.write(result.to_state().to_string())

    asyncio.run(main())
    """
)


@pytest.fixture
def store_url() -> Any:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    with redis_server() as server:
        yield server.url


async def test_approving_one_users_interruption_never_approves_another_users_request(
    store_url: str,
) -> None:
    """Alice's call was held in another worker, Mallory's identical call (same call
    id: a provider that numbers call ids per response, ``call_0``) here. The
    approver loads Alice's stored run and approves its interruption: that approves
    Alice's D2 request, proven by the link D2 wrote into her ``RunState`` when it
    held the call, never Mallory's (which a lookup by tool name, call id and
    arguments in this process's memory used to find), and Mallory's call still
    waits for an approval of its own."""
    doc = hitl_policy()
    configure_rbac_sync(source=InMemorySource(doc), store=store_url)
    env = {**os.environ, "POLICY": json.dumps(doc), "STORE": store_url, "D2_SILENT": "1"}
    alice = subprocess.run(
        [sys.executable, "-c", ALICE_WORKER],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alice.returncode == 0, alice.stderr

    ran: list[str] = []

    @function_tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        ran.append(f"refund({amount})")
        return f"refunded {amount}"

    tools = guard_tools([refund], tool_ids=HITL_IDS)
    model = ScriptedModel(
        [[function_call("refund", REFUND, call_id="call_0")], [assistant_message("ok")]]
    )
    agent = Agent(name="support", model=model, tools=tools)
    set_user("mallory", roles=["agent"])
    mallory = await Runner.run(agent, "refund o1")  # held in this worker
    assert len(mallory.interruptions) == 1

    # the approver's UI, in this worker, loads Alice's saved run and approves it
    state = await RunState.from_string(agent, alice.stdout)
    [item] = state.get_interruptions()
    set_user("bob", roles=["finance_lead"])
    found = approval_request(item)
    proven = approval_request(item, state)  # the state carries the link
    approved = await approve_item(state, item)
    assert found is None or found.user_id == "alice", found
    assert approved is None or approved.user_id == "alice", approved
    assert proven is not None and proven.user_id == "alice" and approved == proven

    # consequence: Mallory's identical call (a new run) now runs, approved by
    # nobody who looked at Mallory's request
    again = ScriptedModel(
        [[function_call("refund", REFUND, call_id="call_1")], [assistant_message("done")]]
    )
    set_user("mallory", roles=["agent"])
    await Runner.run(Agent(name="support", model=again, tools=tools), "refund o1")
    assert ran == []


def searched(model: ScriptedModel) -> dict[str, str]:
    items = model.calls[-1].input
    return {i["call_id"]: i["output"] for i in items if i.get("type") == "function_call_output"}


async def test_a_run_state_resumed_twice_runs_no_guarded_tool_the_second_time(
    hitl: dict[str, str],
) -> None:
    """The paused run searched twice (``max: 2 per request``) and its refund was
    approved; the app resumed it and the refund ran. Resuming the same stored state
    again (a replayed job, a double submit) starts a fresh request scope whose
    paused request is gone (used): it cannot continue that request, so no guarded
    call of that run is decided on a fresh history. The model's searches (a fresh
    budget) and the refund are refused, and it reads why."""
    ran: list[str] = []

    @function_tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        ran.append(f"refund({amount})")
        return f"refunded {amount}"

    @function_tool
    def web_search(query: str) -> str:
        """Search the web."""
        ran.append(f"search {query}")
        return "results"

    tools = guard_tools([refund, web_search], tool_ids=hitl)

    turns: list[Any] = [
        [function_call("web_search", {"query": q}, call_id=f"s{q}") for q in "ab"],
        [function_call("refund", REFUND, call_id="c1")],
        [function_call("web_search", {"query": q}, call_id=f"s{q}") for q in "cd"],
        [assistant_message("done")],
    ]

    def agent(after_pause: bool = False) -> tuple[Agent[Any], ScriptedModel]:
        model = ScriptedModel(turns[2:] if after_pause else turns)
        return Agent(name="support", model=model, tools=tools), model

    first, _ = agent()
    set_user("alice", roles=["agent"])
    paused = await Runner.run(first, "refund o1")
    state = paused.to_state()
    set_user("bob", roles=["finance_lead"])
    await approve_item(state, paused.interruptions[0])
    stored = state.to_string()

    set_user("alice", roles=["agent"])
    await Runner.run(first, await RunState.from_string(first, stored))
    assert ran == ["search a", "search b", "refund(500)"]  # the budget held: c, d refused

    replayed, model = agent(after_pause=True)
    set_user("alice", roles=["agent"])  # the documented recipe, on the same stored state
    await Runner.run(replayed, await RunState.from_string(replayed, stored))
    assert ran == ["search a", "search b", "refund(500)"]
    outputs = searched(model)
    assert "approval_not_found" in outputs["c1"] and "approval_not_found" in outputs["sc"]
