"""D2 for pydantic-ai tools (``pydantic-ai-slim``)::

    from d2.agents.pydantic_ai import guard_tools

    agent = Agent(model, tools=guard_tools([search, read_users, http_request]))
    set_user("alice", roles=["analyst"])   # per request, before agent.run
    await agent.run("...")

:func:`guard_tools` takes ``Tool`` objects or plain functions and returns guarded
``Tool`` copies; the originals are untouched. Each copy

- is hidden through the tool's ``prepare`` hook whenever the current user may not
  call it (the tool's own ``prepare`` still runs for users who may);
- has its function guarded by ``d2_guard``, so input rules bind to the function's
  parameters (as pydantic-ai validated them) and output rules see its return value.
  A denial is a failed tool result the model reads (``ToolFailed``), or a retry
  prompt (``ModelRetry``) for an input-rule denial the model can correct.

pydantic-ai runs tools in tasks and threads that inherit the caller's context, so
the user set before ``agent.run`` is the user every tool sees, and one run is one
D2 request scope: sequence and data-flow rules span its tool calls.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any

try:
    from pydantic_ai import RunContext, Tool
    from pydantic_ai.exceptions import ModelRetry, ToolFailed
    from pydantic_ai.tools import ToolDefinition
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.pydantic_ai needs pydantic-ai: pip install "d2-sdk[pydantic-ai]"'
    ) from exc

from d2.core import PermissionDeniedError, d2_guard, is_allowed

from ._common import DenyMessage, ToolIds, denial_message, tool_id_resolver

__all__ = ["TOOL_ID_KEY", "guard_tool", "guard_tools"]

TOOL_ID_KEY = "d2_tool_id"
"""Key in a guarded tool's ``metadata`` holding its D2 tool id."""

ToolLike = Tool[Any] | Callable[..., Any]
"""A ``Tool``, or a function to make one of."""


def _refuse(deny_message: DenyMessage) -> Callable[[PermissionDeniedError], Any]:
    def refuse(err: PermissionDeniedError) -> Any:
        if err.reason == "input_validation":  # the model can fix its arguments
            raise ModelRetry(deny_message(err)) from err
        raise ToolFailed(deny_message(err)) from err

    return refuse


def guard_tool(
    tool: ToolLike,
    *,
    tool_id: str | None = None,
    instance_name: str = "default",
    deny_message: DenyMessage = denial_message,
) -> Tool[Any]:
    """A guarded copy of ``tool`` (a ``Tool`` or a function, made a ``Tool``),
    hidden from users who may not call it; ``tool_id`` defaults to the tool's name.
    A tool this module already guarded is returned as it is."""
    if not isinstance(tool, Tool):
        if not callable(tool):
            raise TypeError(f"guard_tool takes a pydantic-ai Tool or a function, got {tool!r}")
        tool = Tool(tool)
    if (tool.metadata or {}).get(TOOL_ID_KEY) is not None:
        return tool
    tool_id = tool_id or tool.name
    function = d2_guard(tool_id, on_deny=_refuse(deny_message), instance_name=instance_name)(
        tool.function
    )
    prepare_inner = tool.prepare

    async def prepare(ctx: RunContext[Any], tool_def: ToolDefinition) -> ToolDefinition | None:
        if not is_allowed(tool_id, instance_name=instance_name):
            return None
        if prepare_inner is None:
            return tool_def
        result = prepare_inner(ctx, tool_def)
        return await result if inspect.isawaitable(result) else result

    guarded = copy.copy(tool)
    guarded.function = function
    guarded.function_schema = dataclasses.replace(tool.function_schema, function=function)
    guarded.prepare = prepare
    guarded.metadata = {**(tool.metadata or {}), TOOL_ID_KEY: tool_id}
    return guarded


def guard_tools(
    tools: Iterable[ToolLike],
    *,
    tool_ids: ToolIds = None,
    instance_name: str = "default",
    deny_message: DenyMessage = denial_message,
) -> list[Tool[Any]]:
    """Guarded copies of ``tools`` (see :func:`guard_tool`). ``tool_ids`` maps tool
    names to D2 tool ids (default: the name is the id)."""
    resolve = tool_id_resolver(tool_ids)
    guarded = []
    for tool in tools:
        name = tool.name if isinstance(tool, Tool) else getattr(tool, "__name__", "")
        guarded.append(
            guard_tool(
                tool,
                tool_id=resolve(name) if name else None,
                instance_name=instance_name,
                deny_message=deny_message,
            )
        )
    return guarded
