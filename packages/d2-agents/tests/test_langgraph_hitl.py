"""Approvals through LangGraph's own human-in-the-loop, driven by a real offline chat
model (langchain-core's ``GenericFakeChatModel``) in the graph shapes users build.

A held call pauses the graph (``interrupt``) only where LangGraph can resume that
call alone: a checkpointer, and the call in a task of its own (a ``Send`` per tool
call, as ``langchain.agents.create_agent`` does). The other calls of the same model
message then run once: their results are kept by the checkpointer as the pending
writes of their own tasks. Anywhere else inside a graph (no checkpointer, or a
``ToolNode`` reached by an edge, which LangGraph re-runs whole on resume) the model
reads the approval message as the held call's result and the run goes on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any

import pytest
from d2.agents.langchain import ApprovalPending, guard_tools
from d2.core import approve, set_user
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import InjectedState, InjectedStore, ToolNode, ToolRuntime, tools_condition
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, Send
from pydantic import BaseModel

RAN: list[str] = []
SEARCH = {"name": "web_search", "args": {"query": "refund policy"}, "id": "call-search"}
BIG = {"name": "refund", "args": {"order": "o1", "amount": 500}, "id": "call-refund"}
SMALL = {"name": "refund", "args": {"order": "o2", "amount": 50}, "id": "call-small"}


class ScriptedChatModel(GenericFakeChatModel):
    """langchain-core's offline chat model, answering from a script; tools bound to
    it are accepted and ignored (the script says which tools it calls)."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self


def script(*tool_calls: dict[str, Any]) -> ScriptedChatModel:
    """A model that calls ``tool_calls`` in one message, then answers ``done``."""
    replies: Iterator[AIMessage | str] = iter(
        [AIMessage(content="", tool_calls=list(tool_calls)), AIMessage(content="done")]
    )
    return ScriptedChatModel(messages=replies)


@pytest.fixture
def tools(hitl: dict[str, str]) -> list[BaseTool]:
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

    return guard_tools([web_search, refund], tool_ids=hitl)


def send_each_call(state: MessagesState) -> list[Send] | str:
    """Route each tool call of the last message to the tools node as its own task."""
    last = state["messages"][-1]
    calls = getattr(last, "tool_calls", None)
    return [Send("tools", [call]) for call in calls] if calls else END


def state_graph(
    model: ScriptedChatModel, tools: list[BaseTool], route: Callable[..., Any], **compile: Any
) -> Any:
    """The documented loop: a model node, a ``ToolNode``, a route between them."""

    def call_model(state: MessagesState) -> dict[str, list[AnyMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route, ["tools", END])
    builder.add_edge("tools", "model")
    return builder.compile(**compile)


PAUSING: dict[str, Callable[[ScriptedChatModel, list[BaseTool]], Any]] = {
    "StateGraph+ToolNode, a Send per call": lambda model, tools: state_graph(
        model, tools, send_each_call, checkpointer=InMemorySaver()
    ),
    "create_agent": lambda model, tools: create_agent(model, tools, checkpointer=InMemorySaver()),
}

ANSWERING: dict[str, Callable[[ScriptedChatModel, list[BaseTool]], Any]] = {
    "StateGraph+ToolNode, no checkpointer": lambda model, tools: state_graph(
        model, tools, send_each_call
    ),
    "StateGraph+ToolNode behind tools_condition": lambda model, tools: state_graph(
        model, tools, tools_condition, checkpointer=InMemorySaver()
    ),
    "create_agent, no checkpointer": lambda model, tools: create_agent(model, tools),
}


def tool_messages(result: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}


def approve_as_lead(request_id: str) -> None:
    set_user("bob", roles=["finance_lead"])
    approve(request_id)
    set_user("alice", roles=["agent"])


@pytest.mark.parametrize("shape", list(PAUSING))
def test_a_held_call_pauses_and_its_sibling_runs_once_across_the_resume(
    shape: str, tools: list[BaseTool]
) -> None:
    graph = PAUSING[shape](script(SEARCH, BIG), tools)
    config = {"configurable": {"thread_id": "t1"}}
    set_user("alice", roles=["agent"])
    paused = graph.invoke({"messages": [HumanMessage("refund o1")]}, config)
    (pause,) = paused["__interrupt__"]
    assert pause.value["d2_reason"] == "approval_required"
    assert pause.value["d2_tool_id"] == "payments.refund"
    assert pause.value["d2_approvers"] == ["finance_lead"]
    assert RAN == ["web_search"]  # the sibling ran; the held call did not
    approve_as_lead(pause.value["d2_approval_request"])
    done = graph.invoke(Command(resume="approved"), config)
    assert RAN == ["web_search", "refund(500)"]  # each body once, across the resume
    answers = tool_messages(done)
    assert answers["call-search"].content == "results for 'refund policy'"
    assert answers["call-refund"].content == "refunded 500"
    assert done["messages"][-1].content == "done" and "__interrupt__" not in done


@pytest.mark.parametrize("shape", list(PAUSING))
def test_two_held_calls_pause_together_and_resume_by_interrupt_id(
    shape: str, tools: list[BaseTool]
) -> None:
    big2 = {"name": "refund", "args": {"order": "o3", "amount": 900}, "id": "call-refund-2"}
    graph = PAUSING[shape](script(BIG, SEARCH, big2), tools)
    config = {"configurable": {"thread_id": "t2"}}
    set_user("alice", roles=["agent"])
    paused = graph.invoke({"messages": [HumanMessage("refund o1 and o3")]}, config)
    pauses = paused["__interrupt__"]
    assert len(pauses) == 2 and RAN == ["web_search"]
    for pause in pauses:
        approve_as_lead(pause.value["d2_approval_request"])
    done = graph.invoke(Command(resume={p.id: "approved" for p in pauses}), config)
    assert sorted(RAN) == ["refund(500)", "refund(900)", "web_search"]
    assert tool_messages(done)["call-refund-2"].content == "refunded 900"


@pytest.mark.parametrize("shape", list(PAUSING))
def test_resuming_without_an_approval_refuses_the_call(shape: str, tools: list[BaseTool]) -> None:
    graph = PAUSING[shape](script(BIG), tools)
    config = {"configurable": {"thread_id": "t3"}}
    set_user("alice", roles=["agent"])
    graph.invoke({"messages": [HumanMessage("refund o1")]}, config)
    with pytest.raises(ApprovalPending) as info:  # nobody approved it in D2
        graph.invoke(Command(resume="approved"), config)
    assert info.value.request.tool_id == "payments.refund"
    assert RAN == []


@pytest.mark.parametrize("shape", list(PAUSING))
def test_calls_below_the_approval_threshold_never_pause(shape: str, tools: list[BaseTool]) -> None:
    graph = PAUSING[shape](script(SEARCH, SMALL), tools)
    set_user("alice", roles=["agent"])
    done = graph.invoke(
        {"messages": [HumanMessage("refund o2")]}, {"configurable": {"thread_id": "t4"}}
    )
    assert "__interrupt__" not in done
    assert tool_messages(done)["call-small"].content == "refunded 50"
    assert sorted(RAN) == ["refund(50)", "web_search"]


@pytest.mark.parametrize("shape", list(ANSWERING))
def test_where_the_graph_cannot_pause_the_model_reads_the_approval_message(
    shape: str, tools: list[BaseTool]
) -> None:
    graph = ANSWERING[shape](script(SEARCH, BIG), tools)
    set_user("alice", roles=["agent"])
    done = graph.invoke(
        {"messages": [HumanMessage("refund o1")]}, {"configurable": {"thread_id": "t5"}}
    )
    assert "__interrupt__" not in done  # nothing left waiting that could never resume
    answers = tool_messages(done)
    assert answers["call-search"].content == "results for 'refund policy'"
    held = str(answers["call-refund"].content)
    assert held.startswith("approval required for payments.refund: request ")
    assert held.endswith(", approvers: finance_lead")
    assert done["messages"][-1].content == "done"  # the run went on to the model's answer
    assert RAN == ["web_search"]
    # once approved, the model's identical call runs once
    request_id = held.removeprefix("approval required for payments.refund: request ").split(",")[0]
    approve_as_lead(request_id)
    again = ANSWERING[shape](script(BIG), tools)
    done = again.invoke(
        {"messages": [HumanMessage("retry")]}, {"configurable": {"thread_id": "t6"}}
    )
    assert tool_messages(done)["call-refund"].content == "refunded 500"
    assert RAN == ["web_search", "refund(500)"]


def test_a_content_and_artifact_tool_reads_the_message_and_carries_the_request(
    hitl: dict[str, str],
) -> None:
    @tool(response_format="content_and_artifact")
    def refund(order: str, amount: int) -> tuple[str, dict[str, Any]]:
        """Refund an order."""
        return f"refunded {amount}", {"order": order}

    graph = ANSWERING["create_agent, no checkpointer"](
        script(BIG), guard_tools([refund], tool_ids=hitl)
    )
    set_user("alice", roles=["agent"])
    done = graph.invoke({"messages": [HumanMessage("refund o1")]})
    held = tool_messages(done)["call-refund"]
    assert str(held.content).startswith("approval required for payments.refund")
    assert held.artifact["d2_reason"] == "approval_required"
    assert held.artifact["d2_approvers"] == ["finance_lead"]


async def test_create_agent_human_in_the_loop_middleware_does_not_approve_in_d2(
    hitl: dict[str, str],
) -> None:
    """langchain's ``HumanInTheLoopMiddleware`` pauses before the tools run, with its
    own decisions; approving there is not a D2 approval: D2 then pauses the call
    itself, and it runs once after ``d2.approve`` (async graph, async tool)."""
    from langchain.agents.middleware import HumanInTheLoopMiddleware

    ran: list[int] = []

    @tool
    async def refund(order: str, amount: int) -> str:
        """Refund an order."""
        ran.append(amount)
        return f"refunded {amount}"

    graph = create_agent(
        script(BIG),
        guard_tools([refund], tool_ids=hitl),
        checkpointer=InMemorySaver(),
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"refund": True})],
    )
    config = {"configurable": {"thread_id": "t7"}}
    set_user("alice", roles=["agent"])
    paused = await graph.ainvoke({"messages": [HumanMessage("refund o1")]}, config)
    (review,) = paused["__interrupt__"]
    assert review.value["action_requests"][0]["name"] == "refund"
    paused = await graph.ainvoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    (pause,) = paused["__interrupt__"]  # D2 holds it all the same
    assert pause.value["d2_reason"] == "approval_required" and ran == []
    approve_as_lead(pause.value["d2_approval_request"])
    done = await graph.ainvoke(Command(resume="approved"), config)
    assert tool_messages(done)["call-refund"].content == "refunded 500" and ran == [500]


def _runtime_tools(ran: list[str]) -> dict[str, BaseTool]:
    """Refund tools that also take what LangChain or LangGraph fill in for the run,
    never the model: the run's config, its callbacks, the tool call id, the graph
    state and store, a ``ToolRuntime``."""

    @tool
    def with_config(order: str, amount: int, config: RunnableConfig) -> str:
        """Refund an order."""
        ran.append(f"config:{bool(config)}")
        return f"refunded {amount}"

    @tool
    def with_callbacks(order: str, amount: int, callbacks: Any = None) -> str:
        """Refund an order."""
        ran.append("callbacks")
        return f"refunded {amount}"

    @tool
    def with_call_id(
        order: str, amount: int, tool_call_id: Annotated[str, InjectedToolCallId]
    ) -> str:
        """Refund an order."""
        ran.append(f"call_id:{tool_call_id}")
        return f"refunded {amount}"

    @tool
    def with_state(order: str, amount: int, state: Annotated[dict[str, Any], InjectedState]) -> str:
        """Refund an order."""
        ran.append(f"state:{len(state['messages'])}")
        return f"refunded {amount}"

    @tool
    def with_store(
        order: str, amount: int, store: Annotated[BaseStore | None, InjectedStore()] = None
    ) -> str:
        """Refund an order."""
        ran.append("store")
        return f"refunded {amount}"

    @tool
    async def with_runtime(order: str, amount: int, runtime: ToolRuntime) -> str:
        """Refund an order."""
        ran.append(f"runtime:{runtime.tool_call_id}")
        return f"refunded {amount}"

    class StateArgs(BaseModel):
        order: str
        amount: int
        state: Annotated[dict[str, Any], InjectedState]

    class StateRefund(BaseTool):  # guarded as a whole: LangGraph injects into its schema
        name: str = "subclass_with_state"
        description: str = "Refund an order."
        args_schema: type[BaseModel] = StateArgs

        def _run(self, order: str, amount: int, state: dict[str, Any], **kw: Any) -> str:
            ran.append(f"subclass:{len(state['messages'])}")
            return f"refunded {amount}"

    return {
        t.name: t
        for t in (
            with_config,
            with_callbacks,
            with_call_id,
            with_state,
            with_store,
            with_runtime,
            StateRefund(),
        )
    }


@pytest.mark.parametrize(
    "name",
    [
        "with_config",
        "with_callbacks",
        "with_call_id",
        "with_state",
        "with_store",
        "with_runtime",
        "subclass_with_state",
    ],
)
async def test_what_the_run_injects_is_not_part_of_the_approved_call(
    name: str, hitl: dict[str, str]
) -> None:
    """A tool that takes the run's config, callbacks, call id, state, store or
    ``ToolRuntime`` pauses, is approved on the model's arguments alone (what the
    approver sees), and runs once when resumed: the injected values, new or changed
    on the resume, are how the call runs, not what it does."""
    from d2.core import pending_approvals

    ran: list[str] = []
    tools = guard_tools([_runtime_tools(ran)[name]], tool_ids={name: "payments.refund"})
    big = {"name": name, "args": {"order": "o1", "amount": 500}, "id": "call-refund"}
    graph = create_agent(script(big), tools, checkpointer=InMemorySaver(), store=InMemoryStore())
    config = {"configurable": {"thread_id": f"inject-{name}"}}
    set_user("alice", roles=["agent"])
    paused = await graph.ainvoke({"messages": [HumanMessage("refund o1")]}, config)
    (pause,) = paused["__interrupt__"]
    set_user("bob", roles=["finance_lead"])
    [request] = pending_approvals()
    assert request.arguments == {"order": "o1", "amount": 500}  # nothing the run injects
    approve(pause.value["d2_approval_request"])
    set_user("alice", roles=["agent"])
    done = await graph.ainvoke(Command(resume="approved"), config)
    assert tool_messages(done)["call-refund"].content == "refunded 500"
    assert len(ran) == 1
