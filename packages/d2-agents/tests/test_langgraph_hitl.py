"""Approvals through LangGraph's own human-in-the-loop: a guarded tool run by the
prebuilt ``ToolNode`` pauses the graph with ``interrupt``; the app shows the
request to an approver and resumes with ``Command(resume=...)``."""

from __future__ import annotations

from typing import Any

import pytest
from d2.agents.langchain import ApprovalPending, guard_tools
from d2.core import approve, set_user
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command

RAN: list[int] = []


@pytest.fixture
def graph(hitl: dict[str, str]) -> Any:
    RAN.clear()

    @tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        RAN.append(amount)
        return f"refunded {amount}"

    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode(guard_tools([refund], tool_ids=hitl)))
    builder.add_edge(START, "tools")
    return builder.compile(checkpointer=InMemorySaver())


def ask(amount: int, call_id: str) -> dict[str, Any]:
    call = {"name": "refund", "args": {"order": "o1", "amount": amount}, "id": call_id}
    return {"messages": [AIMessage(content="", tool_calls=[call])]}


def last_tool_message(result: dict[str, Any]) -> ToolMessage:
    message = result["messages"][-1]
    assert isinstance(message, ToolMessage)
    return message


def test_a_held_call_pauses_the_graph_and_runs_once_after_approval(graph: Any) -> None:
    config = {"configurable": {"thread_id": "t1"}}
    set_user("alice", roles=["agent"])
    paused = graph.invoke(ask(500, "c1"), config)
    (pause,) = paused["__interrupt__"]
    assert pause.value["d2_reason"] == "approval_required"
    assert pause.value["d2_approvers"] == ["finance_lead"] and RAN == []
    set_user("bob", roles=["finance_lead"])
    approve(pause.value["d2_approval_request"])
    set_user("alice", roles=["agent"])
    done = graph.invoke(Command(resume="approved"), config)
    assert last_tool_message(done).content == "refunded 500" and RAN == [500]
    # the identical call later: paused again, the approval was used up
    again = graph.invoke(ask(500, "c2"), {"configurable": {"thread_id": "t2"}})
    assert (  # a new request: the used one is dead
        again["__interrupt__"][0].value["d2_approval_request"]
        != (pause.value["d2_approval_request"])
    )
    assert RAN == [500]


def test_resuming_without_an_approval_refuses_the_call(graph: Any) -> None:
    config = {"configurable": {"thread_id": "t3"}}
    set_user("alice", roles=["agent"])
    graph.invoke(ask(500, "c1"), config)
    with pytest.raises(ApprovalPending) as info:  # nobody approved it in D2
        graph.invoke(Command(resume="approved"), config)
    assert info.value.request.tool_id == "payments.refund"
    assert RAN == []


def test_small_calls_never_pause(graph: Any) -> None:
    set_user("alice", roles=["agent"])
    result = graph.invoke(ask(50, "c1"), {"configurable": {"thread_id": "t4"}})
    assert "__interrupt__" not in result
    assert last_tool_message(result).content == "refunded 50" and RAN == [50]
