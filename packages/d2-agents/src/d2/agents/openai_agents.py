"""D2 for the OpenAI Agents SDK (``openai-agents``) function tools::

    from d2.agents.openai_agents import guard_tools

    agent = Agent(name="analyst", tools=guard_tools([search, read_users, http_request]))
    set_user("alice", roles=["analyst"])   # per request, before Runner.run
    await Runner.run(agent, "...")

:func:`guard_tools` returns guarded copies (``copy.copy``, the SDK's own way to
copy a ``FunctionTool``); the originals are untouched. Each copy

- is hidden through the SDK's per-tool enable hook (``is_enabled``) whenever the
  current user may not call it, so the model is never offered it (the tool's own
  ``is_enabled`` still applies on top);
- passes ``d2_guard`` on every invocation (``on_invoke_tool``), with the arguments
  the model sent (the JSON object, by parameter name) and the tool's result as
  output. A denial is returned to the model as the tool's output string
  (``deny_message(err)``), the SDK's shape for a tool error the model should read;
  the run goes on.

The SDK runs tools in tasks and threads that inherit the caller's context, so the
user set before ``Runner.run`` is the user every tool sees, and one run is one D2
request scope: sequence and data-flow rules span its tool calls.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Iterable
from typing import Any

try:
    from agents import AgentBase, FunctionTool, RunContextWrapper, Tool
    from agents.tool_context import ToolContext
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.openai_agents needs the OpenAI Agents SDK: pip install "d2-sdk[openai-agents]"'
    ) from exc

from d2.core import PermissionDeniedError, d2_guard, is_allowed

from ._common import DenyMessage, ToolIds, denial_message, tool_id_resolver

__all__ = ["guard_tool", "guard_tools"]

_MARK = "__d2_agents_tool_id__"  # set on invokers this module built


async def _through(_d2_ctx: Any, _d2_input: str, _d2_invoke: Any, /, **arguments: Any) -> Any:
    """What a guarded tool's invocations pass through: ``d2_guard`` reads the
    model's arguments from the keywords, the SDK's own invoker runs inside (the
    positional names are unlikely to shadow a tool's parameter in an input rule)."""
    return await _d2_invoke(_d2_ctx, _d2_input)


def _arguments(input: str) -> dict[str, Any]:
    """The model's arguments as keywords; malformed JSON is left to the SDK's own
    invoker to report (the guard then sees no arguments)."""
    try:
        parsed = json.loads(input) if input else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def guard_tool(
    tool: FunctionTool,
    *,
    tool_id: str | None = None,
    instance_name: str = "default",
    deny_message: DenyMessage = denial_message,
) -> FunctionTool:
    """A copy of ``tool`` hidden from users who may not call it and guarded on every
    invocation; ``tool_id`` defaults to the tool's name. A tool this module already
    guarded is returned as it is."""
    if not isinstance(tool, FunctionTool):
        raise TypeError(
            f"guard_tool takes a FunctionTool, got {tool!r}; hosted tools run outside "
            "this process and cannot be guarded here"
        )
    if getattr(tool.on_invoke_tool, _MARK, None) is not None:
        return tool
    tool_id = tool_id or tool.name
    gate = d2_guard(tool_id, instance_name=instance_name)(_through)
    invoke_inner = tool.on_invoke_tool
    enabled_inner = tool.is_enabled

    async def on_invoke_tool(ctx: ToolContext[Any], input: str) -> Any:
        try:
            return await gate(ctx, input, invoke_inner, **_arguments(input))
        except PermissionDeniedError as err:
            return deny_message(err)

    async def is_enabled(ctx: RunContextWrapper[Any], agent: AgentBase[Any]) -> bool:
        if not is_allowed(tool_id, instance_name=instance_name):
            return False
        if isinstance(enabled_inner, bool):
            return enabled_inner
        result = enabled_inner(ctx, agent)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    setattr(on_invoke_tool, _MARK, tool_id)
    guarded = copy.copy(tool)
    guarded.on_invoke_tool = on_invoke_tool
    guarded.is_enabled = is_enabled
    return guarded


def guard_tools(
    tools: Iterable[FunctionTool],
    *,
    tool_ids: ToolIds = None,
    instance_name: str = "default",
    deny_message: DenyMessage = denial_message,
) -> list[Tool]:
    """Guarded copies of ``tools`` (see :func:`guard_tool`), typed for
    ``Agent(tools=...)``. ``tool_ids`` maps tool names to D2 tool ids (default: the
    name is the id)."""
    resolve = tool_id_resolver(tool_ids)
    return [
        guard_tool(
            t, tool_id=resolve(t.name), instance_name=instance_name, deny_message=deny_message
        )
        for t in tools
    ]
