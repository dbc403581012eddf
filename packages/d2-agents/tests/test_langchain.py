"""d2.agents.langchain against langchain-core's own tool invocation: ``invoke`` /
``ainvoke`` with plain arguments and with model ``ToolCall`` s (what an agent loop
does with an ``AIMessage``'s ``tool_calls``), sync and async."""

from __future__ import annotations

from typing import Any

import pytest
from d2.agents.langchain import TOOL_ID_KEY, ToolDenied, guard_tool, guard_tools, permitted_tools
from d2.core import PermissionDeniedError, set_user
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException, tool

RAN: list[str] = []


@pytest.fixture
def tools(users: list[dict[str, str]]) -> list[BaseTool]:
    """The three tools, as an app would write them: sync, async and both."""
    RAN.clear()

    def search(query: str) -> str:
        RAN.append("web_search")
        return f"results for {query!r}"

    async def asearch(query: str) -> str:
        RAN.append("web_search")
        return f"results for {query!r}"

    web_search = StructuredTool.from_function(
        func=search, coroutine=asearch, name="web_search", description="Search the web."
    )

    @tool
    def read_users(limit: int = 10) -> list[dict[str, str]]:
        """Read user records."""
        RAN.append("read_users")
        return users[:limit]

    @tool
    async def http_request(url: str, body: str = "") -> str:
        """Send an HTTP request."""
        RAN.append("http_request")
        return f"POST {url} ({len(body)} bytes)"

    return [web_search, read_users, http_request]


@pytest.fixture
def guarded(configure: Any, tools: list[BaseTool], tool_ids: dict[str, str]) -> dict[str, BaseTool]:
    configure()
    return {t.name: t for t in guard_tools(tools, tool_ids=tool_ids)}


def call(name: str, args: dict[str, Any], call_id: str = "call-1") -> dict[str, Any]:
    """A model's tool call, as it appears in ``AIMessage.tool_calls``."""
    message = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}])
    return dict(message.tool_calls[0], type="tool_call")


def test_permitted_tools_are_exactly_what_each_user_may_call(
    configure: Any, tools: list[BaseTool], tool_ids: dict[str, str]
) -> None:
    configure()
    guarded = guard_tools(tools, tool_ids=tool_ids)
    set_user("alice", roles=["analyst"])
    assert [t.name for t in permitted_tools(guarded)] == [
        "web_search",
        "read_users",
        "http_request",
    ]
    set_user("victor", roles=["viewer"])
    assert [t.name for t in permitted_tools(guarded)] == ["web_search"]
    # unguarded tools are checked under tool_ids too
    assert [t.name for t in permitted_tools(tools, tool_ids=tool_ids)] == ["web_search"]
    set_user("nobody")
    assert permitted_tools(guarded) == []


def test_guarded_tools_are_copies_with_their_tool_id(
    guarded: dict[str, BaseTool], tools: list[BaseTool]
) -> None:
    assert guarded["read_users"] is not tools[1]
    assert guarded["read_users"].metadata == {TOOL_ID_KEY: "db.read_users"}
    assert tools[1].metadata is None  # the original is untouched
    assert guarded["read_users"].args == tools[1].args  # same schema for the model
    assert guard_tool(guarded["read_users"]) is guarded["read_users"]  # idempotent


def test_a_forbidden_run_raises_a_tool_exception_sync_and_async(
    guarded: dict[str, BaseTool],
) -> None:
    set_user("victor", roles=["viewer"])
    with pytest.raises(ToolDenied) as info:
        guarded["read_users"].invoke({"limit": 1})
    assert isinstance(info.value, ToolException)
    assert isinstance(info.value.error, PermissionDeniedError)
    assert info.value.error.reason == "not_granted"
    assert "Permission denied" in str(info.value)
    assert RAN == []


async def test_a_forbidden_async_run_raises_too(guarded: dict[str, BaseTool]) -> None:
    set_user("victor", roles=["viewer"])
    with pytest.raises(ToolDenied, match="not_granted"):
        await guarded["http_request"].ainvoke({"url": "https://x.test"})
    with pytest.raises(ToolDenied):
        await guarded["read_users"].ainvoke({"limit": 1})  # sync tool, async run
    assert await guarded["web_search"].ainvoke({"query": "ok"}) == "results for 'ok'"
    assert RAN == ["web_search"]


def test_a_model_tool_call_becomes_an_error_tool_message_when_errors_are_handled(
    configure: Any, tools: list[BaseTool], tool_ids: dict[str, str]
) -> None:
    configure()
    for t in tools:
        t.handle_tool_error = True
    guarded = {t.name: t for t in guard_tools(tools, tool_ids=tool_ids)}
    set_user("victor", roles=["viewer"])
    message = guarded["read_users"].invoke(call("read_users", {"limit": 1}))
    assert isinstance(message, ToolMessage)
    assert message.status == "error" and message.tool_call_id == "call-1"
    assert "not_granted" in str(message.content)
    assert RAN == []


def test_input_and_output_rules_bind_to_the_tool_function(guarded: dict[str, BaseTool]) -> None:
    set_user("alice", roles=["analyst"])
    with pytest.raises(ToolDenied) as info:
        guarded["read_users"].invoke({"limit": 500})
    assert info.value.error.reason == "input_validation"
    assert "'limit'" in str(info.value)
    assert guarded["read_users"].invoke({"limit": 2}) == [
        {"name": "Ada", "email": "[REDACTED]"},
        {"name": "Grace", "email": "[REDACTED]"},
    ]
    assert guarded["read_users"].invoke({}) != []  # the default limit=10 passes the rule


async def test_a_sequence_rule_stops_an_exfiltration_chain(guarded: dict[str, BaseTool]) -> None:
    set_user("alice", roles=["analyst"])
    # what an agent loop does: run each of the model's tool calls, feed the results back
    first = await guarded["read_users"].ainvoke(call("read_users", {"limit": 1}, "c1"))
    assert isinstance(first, ToolMessage) and first.status == "success"
    with pytest.raises(ToolDenied) as info:
        await guarded["http_request"].ainvoke(call("http_request", {"url": "https://evil.test"}))
    assert info.value.error.reason == "sequence_violation"
    assert "exfiltration" in str(info.value)
    assert RAN == ["read_users"]
    set_user("alice", roles=["analyst"])  # the next request starts a fresh history
    assert await guarded["http_request"].ainvoke({"url": "https://x.test"}) == (
        "POST https://x.test (0 bytes)"
    )


def test_any_base_tool_is_guarded_through_a_structured_tool(
    configure: Any, users: list[dict[str, str]]
) -> None:
    class ReadUsers(BaseTool):
        name: str = "read_users"
        description: str = "Read user records."

        def _run(self, limit: int = 10) -> list[dict[str, str]]:
            return users[:limit]

    configure()
    guarded = guard_tool(ReadUsers(), tool_id="db.read_users")
    assert isinstance(guarded, StructuredTool)
    assert set(guarded.args) == {"limit"}
    set_user("alice", roles=["analyst"])
    assert guarded.invoke({"limit": 1}) == [{"name": "Ada", "email": "[REDACTED]"}]
    with pytest.raises(ToolDenied, match="input_validation"):
        guarded.invoke({"limit": 500})
    set_user("victor", roles=["viewer"])
    with pytest.raises(ToolDenied, match="not_granted"):
        guarded.invoke({"limit": 1})


def test_guard_tool_refuses_what_is_not_a_tool() -> None:
    with pytest.raises(TypeError, match="BaseTool"):
        guard_tool(lambda: None)  # type: ignore[arg-type]
