"""Approvals and budgets through pydantic-ai's deferred tools: ``ApprovalRequired``
-> ``DeferredToolRequests`` -> ``DeferredToolResults``, driven by FunctionModel."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from d2.agents.pydantic_ai import APPROVAL_KEY, approval_requests, guard_tools
from d2.core import approve, set_user
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext, models
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

RAN: list[str] = []
REFUND = {"order": "o1", "amount": 500}


@pytest.fixture(autouse=True)
def _no_model_requests() -> Iterator[None]:
    allowed, models.ALLOW_MODEL_REQUESTS = models.ALLOW_MODEL_REQUESTS, False
    yield
    models.ALLOW_MODEL_REQUESTS = allowed


@pytest.fixture
def tools(hitl: dict[str, str]) -> list[Any]:
    RAN.clear()

    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        RAN.append(f"refund({amount})")
        return f"refunded {amount}"

    def web_search(query: str) -> str:
        """Search the web."""
        RAN.append("web_search")
        return f"results for {query!r}"

    async def web_fetch(url: str) -> str:
        """Fetch a page."""
        RAN.append("web_fetch")
        return "page"

    return guard_tools([refund, web_search, web_fetch], tool_ids=hitl)


class Script:
    """One model turn per list of tool calls, then "done"; records tool returns."""

    def __init__(self, *turns: list[ToolCallPart]) -> None:
        self.turns = list(turns)
        self.returned: dict[str, ToolReturnPart] = {}

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        if isinstance(last, ModelRequest):
            for part in last.parts:
                if isinstance(part, ToolReturnPart):
                    self.returned[part.tool_call_id] = part
        if self.turns:
            return ModelResponse(parts=list(self.turns.pop(0)))
        return ModelResponse(parts=[TextPart("done")])


async def test_an_approval_defers_the_call_and_the_approved_call_runs_once(
    tools: list[Any],
) -> None:
    script = Script(
        [ToolCallPart("refund", REFUND, tool_call_id="c1")],
        [ToolCallPart("refund", REFUND, tool_call_id="c2")],
    )
    agent = Agent(FunctionModel(script), tools=tools, output_type=[str, DeferredToolRequests])
    set_user("alice", roles=["agent"])
    result = await agent.run("refund o1")
    deferred = result.output
    assert isinstance(deferred, DeferredToolRequests)
    assert [c.tool_call_id for c in deferred.approvals] == ["c1"] and RAN == []
    meta = deferred.metadata["c1"]
    assert meta["d2_approvers"] == ["finance_lead"] and meta["d2_tool_id"] == "payments.refund"
    assert approval_requests(deferred) == {"c1": meta[APPROVAL_KEY]}

    set_user("bob", roles=["finance_lead"])
    approve(meta[APPROVAL_KEY])
    set_user("alice", roles=["agent"])
    resumed = await agent.run(
        message_history=result.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={"c1": True}),
    )
    assert RAN == ["refund(500)"]
    assert script.returned["c1"].content == "refunded 500"
    again = resumed.output  # the identical call asks again
    assert isinstance(again, DeferredToolRequests)
    renewed = approval_requests(again)  # a new request: the used one is dead
    assert list(renewed) == ["c2"] and renewed["c2"] != meta[APPROVAL_KEY]


async def test_a_sibling_of_a_held_call_runs_once_across_the_resume(tools: list[Any]) -> None:
    script = Script(
        [
            ToolCallPart("web_search", {"query": "policy"}, tool_call_id="s1"),
            ToolCallPart("refund", REFUND, tool_call_id="c1"),
        ]
    )
    agent = Agent(FunctionModel(script), tools=tools, output_type=[str, DeferredToolRequests])
    set_user("alice", roles=["agent"])
    result = await agent.run("refund o1")
    deferred = result.output
    assert isinstance(deferred, DeferredToolRequests) and RAN == ["web_search"]
    set_user("bob", roles=["finance_lead"])
    approve(deferred.metadata["c1"][APPROVAL_KEY])
    set_user("alice", roles=["agent"])
    resumed = await agent.run(
        message_history=result.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={"c1": True}),
    )
    assert resumed.output == "done"
    assert RAN == ["web_search", "refund(500)"]  # each body once
    assert script.returned["s1"].content == "results for 'policy'"
    assert script.returned["c1"].content == "refunded 500"


async def test_approving_in_pydantic_ai_alone_does_not_run_the_call(tools: list[Any]) -> None:
    script = Script([ToolCallPart("refund", REFUND, tool_call_id="c1")])
    agent = Agent(FunctionModel(script), tools=tools, output_type=[str, DeferredToolRequests])
    set_user("alice", roles=["agent"])
    result = await agent.run("refund o1")
    resumed = await agent.run(
        message_history=result.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={"c1": True}),
    )
    assert resumed.output == "done" and RAN == []
    failed = script.returned["c1"]
    assert failed.outcome == "failed"
    assert re.fullmatch(
        r"approval required for payments\.refund: request [0-9a-f]{64}, approvers: finance_lead",
        str(failed.content),
    )


async def test_an_exhausted_budget_is_a_short_failed_tool_result(tools: list[Any]) -> None:
    script = Script(
        [ToolCallPart("web_search", {"query": q}, tool_call_id=f"s{q}") for q in "abc"],
        [ToolCallPart("web_fetch", {"url": u}, tool_call_id=f"f{u}") for u in "xy"],
    )
    set_user("alice", roles=["agent"])
    result = await Agent(FunctionModel(script), tools=tools).run("go")
    assert result.output == "done"
    denied = [p for p in script.returned.values() if p.outcome == "failed"]
    assert sorted(str(p.content) for p in denied)[0].startswith("budget exceeded for web.fetch")
    texts = {p.tool_call_id: str(p.content) for p in denied}
    assert list(texts.values()).count("budget exceeded for web.search for this request") == 1
    [fetch] = [t for t in texts.values() if "web.fetch" in t]
    match = re.fullmatch(r"budget exceeded for web\.fetch; retry after (\d+)s", fetch)
    assert match is not None and 0 < int(match.group(1)) <= 3600
    assert sorted(RAN) == ["web_fetch", "web_search", "web_search"]


async def test_tools_taking_the_run_context_can_be_approved(hitl: dict[str, str]) -> None:
    ran: list[int] = []

    async def refund(ctx: RunContext[None], order: str, amount: int) -> str:
        """Refund an order."""
        ran.append(amount)
        return f"refunded {amount}"

    tools = guard_tools([refund], tool_ids=hitl)
    script = Script([ToolCallPart("refund", REFUND, tool_call_id="c1")])
    agent = Agent(FunctionModel(script), tools=tools, output_type=[str, DeferredToolRequests])
    set_user("alice", roles=["agent"])
    result = await agent.run("refund o1")
    deferred = result.output
    assert isinstance(deferred, DeferredToolRequests)
    set_user("bob", roles=["finance_lead"])
    approve(approval_requests(deferred)["c1"])
    set_user("alice", roles=["agent"])
    await agent.run(
        message_history=result.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={"c1": True}),
    )
    assert ran == [500]  # the context (new each step) is not part of the approved call


async def test_a_history_resumed_twice_runs_no_guarded_tool_the_second_time(
    tools: list[Any],
) -> None:
    """The paused run searched twice (``max: 2 per request``) and its refund was
    approved; the resumed run ran the refund (a third search refused). Resuming
    the same message history again starts a fresh request scope whose paused
    request is gone (used): no guarded call of that run is decided on a fresh
    history (the deferred refund and the search fail, and the model reads why)."""
    searches = [ToolCallPart("web_search", {"query": q}, tool_call_id=f"s{q}") for q in "ab"]
    refund = [ToolCallPart("refund", REFUND, tool_call_id="c1")]
    later = [ToolCallPart("web_search", {"query": "c"}, tool_call_id="sc")]
    agent = Agent(
        FunctionModel(Script(searches, refund, later)),
        tools=tools,
        output_type=[str, DeferredToolRequests],
    )
    set_user("alice", roles=["agent"])
    paused = await agent.run("refund o1")
    assert isinstance(paused.output, DeferredToolRequests)
    set_user("bob", roles=["finance_lead"])
    approve(approval_requests(paused.output)["c1"])
    history = paused.all_messages()
    assert history[-1].metadata["d2_approval_requests"]["c1"]["request"]  # the link

    set_user("alice", roles=["agent"])
    results = DeferredToolResults(approvals={"c1": True})
    await agent.run(message_history=history, deferred_tool_results=results)
    assert RAN == ["web_search", "web_search", "refund(500)"]

    replay = Script(later)
    again = Agent(FunctionModel(replay), tools=tools, output_type=[str, DeferredToolRequests])
    set_user("alice", roles=["agent"])
    await again.run(message_history=history, deferred_tool_results=results)
    assert RAN == ["web_search", "web_search", "refund(500)"]
    assert "approval_not_found" in str(replay.returned["c1"].content)
    assert "approval_not_found" in str(replay.returned["sc"].content)


async def test_a_denied_call_s_link_never_stops_a_later_resume(
    tools: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two searches (``max: 2 per request``), then refund 1 is denied; the resumed
    run (with a new prompt beside the results: the same turn) continues its
    request, so its search is refused, then pauses on refund 2, approved after
    refund 1's request has expired (15m). The second resume continues refund 2's
    request and is not stopped by refund 1's expired one."""
    from d2.core import reject
    from d2.core.testing import controlled_clock

    clock = controlled_clock(monkeypatch)
    other = {"order": "o2", "amount": 700}
    script = Script(
        [ToolCallPart("web_search", {"query": q}, tool_call_id=f"s{q}") for q in "ab"],
        [ToolCallPart("refund", REFUND, tool_call_id="c1")],
        [ToolCallPart("web_search", {"query": "c"}, tool_call_id="sc")],
        [ToolCallPart("refund", other, tool_call_id="c2")],
    )
    agent = Agent(FunctionModel(script), tools=tools, output_type=[str, DeferredToolRequests])
    set_user("alice", roles=["agent"])
    first = await agent.run("refund o1")
    assert isinstance(first.output, DeferredToolRequests)
    set_user("bob", roles=["finance_lead"])
    reject(approval_requests(first.output)["c1"])
    clock.advance(60)
    set_user("alice", roles=["agent"])
    second = await agent.run(
        "go on",
        message_history=first.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={"c1": False}),
    )
    assert isinstance(second.output, DeferredToolRequests)
    assert str(script.returned["sc"].content) == (
        "budget exceeded for web.search for this request"
    )  # the paused request's two searches count on
    set_user("bob", roles=["finance_lead"])
    approve(approval_requests(second.output)["c2"])
    clock.advance(14 * 60 + 30)  # refund 1's request has expired, refund 2's lives
    set_user("alice", roles=["agent"])
    done = await agent.run(
        message_history=second.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={"c2": True}),
    )
    assert done.output == "done"
    assert RAN == ["web_search", "web_search", "refund(700)"]
