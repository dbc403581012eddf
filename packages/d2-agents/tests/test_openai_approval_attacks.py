"""Red-team review (wt-review2): the Agents SDK adapter's interruption -> D2 request
lookup across worker processes. A failing test marks a defect (see the report)."""

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
    """DEFECT: ``approval_request(item)`` finds the D2 request by (tool name, call
    id, arguments) in this process's memory only. When the item's own request was
    held in another worker and another user's identical call (same call id: a
    provider that numbers call ids per response, ``call_0``) was held here,
    ``approve_item`` on Alice's interruption approves Mallory's D2 request: the
    approver never saw it, and Mallory's call now runs."""
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
    approved = await approve_item(state, item)
    assert found is None or found.user_id == "alice", found
    assert approved is None or approved.user_id == "alice", approved

    # consequence: Mallory's identical call (a new run) now runs, approved by
    # nobody who looked at Mallory's request
    again = ScriptedModel(
        [[function_call("refund", REFUND, call_id="call_1")], [assistant_message("done")]]
    )
    set_user("mallory", roles=["agent"])
    await Runner.run(Agent(name="support", model=again, tools=tools), "refund o1")
    assert ran == []
