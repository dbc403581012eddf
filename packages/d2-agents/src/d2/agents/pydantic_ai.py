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
- A call that waits for a person (D2's ``ApprovalRequiredError``) raises
  pydantic-ai's own ``ApprovalRequired``, whose metadata carries the D2 request
  (``d2_approval_request``: the id for ``d2.approve``; ``d2_approvers``,
  ``d2_expires_at``, ``d2_tool_id``). Give the agent ``DeferredToolRequests`` as
  an output type: the run ends with the call in ``output.approvals``. Once an
  approver (another user with one of the roles) has called ``d2.approve(id)``,
  resume with ``DeferredToolResults(approvals={tool_call_id: True})`` and the call
  runs once. Approving in pydantic-ai alone is not enough: D2 still refuses the call
  (a failed tool result reading ``approval required for ...``).
- A call over a budget is a failed tool result reading ``budget exceeded for
  web.search; retry after 42s`` (or ``... for this request``).

pydantic-ai runs tools in tasks and threads that inherit the caller's context, so
the user set before ``agent.run`` is the user every tool sees, and one run is one
D2 request scope: sequence and data-flow rules span its tool calls.
A run resumed after an approval (a fresh ``set_user``, same user) continues the
request that paused: its history and facts are restored when the approved call
runs, in another process too when both use the same store.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

try:
    from pydantic_ai import RunContext, Tool
    from pydantic_ai._function_schema import FunctionSchema
    from pydantic_ai.exceptions import ApprovalRequired, ModelRetry, ToolFailed
    from pydantic_ai.tools import DeferredToolRequests, ToolDefinition
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.pydantic_ai needs pydantic-ai: pip install "d2-sdk[pydantic-ai]"'
    ) from exc

from d2.core import PermissionDeniedError, d2_guard, is_allowed
from d2.core._functions import first_parameter

from ._common import (
    DenyMessage,
    ToolIds,
    approval_details,
    approval_of,
    denial_message,
    tool_id_resolver,
)

__all__ = ["APPROVAL_KEY", "TOOL_ID_KEY", "approval_requests", "guard_tool", "guard_tools"]

TOOL_ID_KEY = "d2_tool_id"
"""Key in a guarded tool's ``metadata`` holding its D2 tool id."""

APPROVAL_KEY = "d2_approval_request"
"""Key in ``DeferredToolRequests.metadata[tool_call_id]`` holding the id of the D2
approval request (what an approver passes to ``d2.approve``)."""

# Whether pydantic-ai was told this call is approved (``RunContext.tool_call_approved``)
_APPROVED: ContextVar[bool] = ContextVar("d2_agents_pydantic_ai_approved", default=False)


@dataclasses.dataclass(kw_only=True)
class _ApprovalAware(FunctionSchema):
    """The tool's own function schema, telling the guard whether pydantic-ai
    approved the call it runs."""

    async def call(self, args_dict: dict[str, Any], ctx: RunContext[Any]) -> Any:
        token = _APPROVED.set(bool(ctx.tool_call_approved))
        try:
            return await super().call(args_dict, ctx)
        finally:
            _APPROVED.reset(token)


def approval_requests(requests: DeferredToolRequests) -> dict[str, str]:
    """``tool_call_id -> D2 approval request id`` for the calls of ``requests`` that
    D2 holds for a person (other deferred calls are left out)."""
    found = {}
    for call in requests.approvals:
        request_id = (requests.metadata.get(call.tool_call_id) or {}).get(APPROVAL_KEY)
        if isinstance(request_id, str):
            found[call.tool_call_id] = request_id
    return found


ToolLike = Tool[Any] | Callable[..., Any]
"""A ``Tool``, or a function to make one of."""


def _refuse(deny_message: DenyMessage) -> Callable[[PermissionDeniedError], Any]:
    def refuse(err: PermissionDeniedError) -> Any:
        request = approval_of(err)
        if request is not None and not _APPROVED.get():  # ask pydantic-ai's approver
            raise ApprovalRequired(metadata=approval_details(request)) from err
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
    if tool.takes_ctx:  # the RunContext is how the call runs, not what it does
        context = first_parameter(tool.function)
        if context is not None:
            function.__dict__["_d2_arguments"].hidden = frozenset((context,))
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
    schema = tool.function_schema
    fields = {f.name: getattr(schema, f.name) for f in dataclasses.fields(schema) if f.init}
    guarded.function_schema = _ApprovalAware(**{**fields, "function": function})
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
