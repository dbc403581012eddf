"""Approvals and budgets through langchain-core tools: ``ApprovalPending`` (a
``ToolException``) carries the D2 request; with ``handle_tool_error=True`` the model
reads it as an error ``ToolMessage``. (LangGraph, with its ``interrupt``, is not
installed here.)"""

from __future__ import annotations

import re
from typing import Annotated, Any

import pytest
from d2.agents.langchain import ApprovalPending, ToolDenied, guard_tools
from d2.core import approve, set_user
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolArg, InjectedToolCallId, tool

RAN: list[str] = []
REFUND = {"order": "o1", "amount": 500}


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    message = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}])
    return dict(message.tool_calls[0], type="tool_call")


@pytest.fixture
def tools(hitl: dict[str, str]) -> dict[str, BaseTool]:
    RAN.clear()

    @tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        RAN.append(f"refund({amount})")
        return f"refunded {amount}"

    @tool
    def web_search(query: str) -> str:
        """Search the web."""
        RAN.append("web_search")
        return f"results for {query!r}"

    @tool
    async def web_fetch(url: str) -> str:
        """Fetch a page."""
        RAN.append("web_fetch")
        return "page"

    return {t.name: t for t in guard_tools([refund, web_search, web_fetch], tool_ids=hitl)}


def test_approval_pending_carries_the_request_and_the_approved_call_runs_once(
    tools: dict[str, BaseTool],
) -> None:
    set_user("alice", roles=["agent"])
    with pytest.raises(ApprovalPending) as held:
        tools["refund"].invoke(REFUND)
    request = held.value.request
    assert isinstance(held.value, ToolDenied) and held.value.error.reason == "approval_required"
    assert request.tool_id == "payments.refund" and request.approver_roles == ("finance_lead",)
    assert str(held.value) == (
        f"approval required for payments.refund: request {request.id}, approvers: finance_lead"
    )
    assert RAN == []
    set_user("bob", roles=["finance_lead"])
    approve(request.id)
    set_user("alice", roles=["agent"])
    assert tools["refund"].invoke(REFUND) == "refunded 500"
    with pytest.raises(ApprovalPending) as again:  # a second identical call asks again
        tools["refund"].invoke(REFUND)
    assert again.value.request.id != request.id  # a new request: the used one is dead
    assert RAN == ["refund(500)"]


async def test_the_model_reads_the_request_id_in_an_error_tool_message(
    tools: dict[str, BaseTool],
) -> None:
    refund = tools["refund"]
    refund.handle_tool_error = True
    set_user("alice", roles=["agent"])
    message = await refund.ainvoke(call("refund", REFUND, "call-1"))
    assert isinstance(message, ToolMessage) and message.status == "error"
    found = re.fullmatch(
        r"approval required for payments\.refund: request ([0-9a-f]{64}), approvers: finance_lead",
        str(message.content),
    )
    assert found is not None
    set_user("bob", roles=["finance_lead"])
    approve(found.group(1))
    set_user("alice", roles=["agent"])
    message = await refund.ainvoke(call("refund", REFUND, "call-2"))
    assert message.status == "success" and message.content == "refunded 500"
    assert RAN == ["refund(500)"]


async def test_an_exhausted_budget_is_a_short_tool_error(tools: dict[str, BaseTool]) -> None:
    for t in tools.values():
        t.handle_tool_error = True
    set_user("alice", roles=["agent"])
    searched = [tools["web_search"].invoke(call("web_search", {"query": q}, q)) for q in "abc"]
    assert [m.status for m in searched] == ["success", "success", "error"]
    assert searched[2].content == "budget exceeded for web.search for this request"
    fetched = [await tools["web_fetch"].ainvoke(call("web_fetch", {"url": u}, u)) for u in "xy"]
    assert fetched[0].content == "page" and fetched[1].status == "error"
    match = re.fullmatch(r"budget exceeded for web\.fetch; retry after (\d+)s", fetched[1].content)
    assert match is not None and 0 < int(match.group(1)) <= 3600
    tools["web_fetch"].handle_tool_error = False
    with pytest.raises(ToolDenied) as info:
        await tools["web_fetch"].ainvoke({"url": "z"})
    assert not isinstance(info.value, ApprovalPending)
    assert info.value.error.retry_after is not None


def test_tool_subclasses_with_their_own_run_are_guarded_whole(hitl: dict[str, str]) -> None:
    from langchain_core.tools import StructuredTool, Tool
    from pydantic import BaseModel

    ran: list[Any] = []

    class Args(BaseModel):
        order: str
        amount: int

    class Refund(StructuredTool):
        def _run(self, order: str, amount: int, **kw: Any) -> str:
            ran.append(amount)
            return f"refunded {amount}"

    class Shell(Tool):
        async def _arun(self, *args: Any, **kw: Any) -> str:
            ran.append("async shell")
            return "ran"

    refund = Refund(name="refund", description="Refund", args_schema=Args, func=None)
    shell = Shell(name="shell", description="Shell", func=lambda q: ran.append(q) or "ran")
    guarded, gshell = guard_tools([refund, shell], tool_ids={**hitl, "shell": "web.search"})
    set_user("mallory", roles=["nobody"])
    for run in (lambda: guarded.invoke({"order": "o1", "amount": 5}), lambda: gshell.invoke("x")):
        with pytest.raises(ToolDenied):
            run()
    assert ran == []
    set_user("alice", roles=["agent"])
    assert guarded.invoke({"order": "o1", "amount": 5}) == "refunded 5"
    assert gshell.invoke("ls") == "ran"
    with pytest.raises(ApprovalPending) as info:
        guarded.invoke({"order": "o1", "amount": 500}, {"run_name": "first"})
    request = info.value.request
    assert request.arguments == {"order": "o1", "amount": 500}  # the run's config is not shown
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("alice", roles=["agent"])
    # another run config, the same call: the approval covers it
    assert guarded.invoke({"order": "o1", "amount": 500}, {"run_name": "retry"}) == "refunded 500"


def test_an_approval_covers_the_model_arguments_not_the_tool_call_id(
    hitl: dict[str, str],
) -> None:
    """The call id LangChain injects differs on every model call: the approved call
    runs when the model asks again, under a new id, and the approver never sees it."""
    ran: list[str] = []

    @tool
    def refund(order: str, amount: int, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
        """Refund an order."""
        ran.append(tool_call_id)
        return f"refunded {amount}"

    [guarded] = guard_tools([refund], tool_ids=hitl)
    set_user("alice", roles=["agent"])
    with pytest.raises(ApprovalPending) as held:
        guarded.invoke(call("refund", REFUND, "call-1"))
    assert held.value.request.arguments == REFUND
    set_user("bob", roles=["finance_lead"])
    approve(held.value.request.id)
    set_user("alice", roles=["agent"])
    message = guarded.invoke(call("refund", REFUND, "call-2"))
    assert message.content == "refunded 500" and ran == ["call-2"]


def test_a_value_the_app_injects_stays_part_of_the_approved_call(hitl: dict[str, str]) -> None:
    """A plain ``InjectedToolArg`` is a value the app chose for the call (an account,
    a tenant): the approver sees it, and an approval for one value runs nothing else."""
    ran: list[str] = []

    @tool
    def refund(order: str, amount: int, account: Annotated[str, InjectedToolArg]) -> str:
        """Refund an order."""
        ran.append(account)
        return f"refunded {amount} from {account}"

    [guarded] = guard_tools([refund], tool_ids=hitl)
    set_user("alice", roles=["agent"])
    with pytest.raises(ApprovalPending) as held:
        guarded.invoke({**REFUND, "account": "a-1"})
    assert held.value.request.arguments == {**REFUND, "account": "a-1"}
    set_user("bob", roles=["finance_lead"])
    approve(held.value.request.id)
    set_user("alice", roles=["agent"])
    with pytest.raises(ApprovalPending):
        guarded.invoke({**REFUND, "account": "a-2"})
    assert guarded.invoke({**REFUND, "account": "a-1"}) == "refunded 500 from a-1"
    assert ran == ["a-1"]
