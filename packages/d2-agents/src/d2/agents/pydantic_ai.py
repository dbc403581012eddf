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

A run resumed after an approval (a fresh ``set_user``, same user, then
``agent.run(message_history=..., deferred_tool_results=...)``) continues the request
that paused from its start, whether the held call was approved or denied: when D2
holds a call, the guarded tool writes the D2 request's id into the ``metadata`` of
the model response that made the call (:data:`LINKS_KEY`; pydantic-ai keeps it in
the message history and never sends it to the model), and every guarded call
begins by restoring the paused request's history, facts and ``per: request``
counts (``d2.restore_request``) for every D2 request the last model response
names. The first call of the resumed run (the approved deferred call, or any call
the model makes after a denial) pays one store lookup; the others none. When that
cannot be done (the request is gone: expired, used by another resume, or the
store is not shared; the store does not answer) every guarded call of that run
fails (the model reads why), never runs on a fresh history.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

try:
    from pydantic_ai import RunContext, Tool
    from pydantic_ai._function_schema import FunctionSchema
    from pydantic_ai.exceptions import ApprovalRequired, ModelRetry, ToolFailed
    from pydantic_ai.messages import (
        ModelRequest,
        ModelResponse,
        RetryPromptPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.tools import DeferredToolRequests, ToolDefinition
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.pydantic_ai needs pydantic-ai: pip install "d2-sdk[pydantic-ai]"'
    ) from exc

from d2.core import (
    PermissionDeniedError,
    d2_guard,
    get_user_context,
    is_allowed,
    restore_request_async,
)
from d2.core._functions import first_parameter
from d2.core.resume import continues

from ._common import (
    DenyMessage,
    ToolIds,
    approval_details,
    approval_of,
    denial_message,
    resume_stopped,
    tool_id_resolver,
)

__all__ = [
    "APPROVAL_KEY",
    "LINKS_KEY",
    "TOOL_ID_KEY",
    "approval_requests",
    "guard_tool",
    "guard_tools",
]

TOOL_ID_KEY = "d2_tool_id"
"""Key in a guarded tool's ``metadata`` holding its D2 tool id."""

APPROVAL_KEY = "d2_approval_request"
"""Key in ``DeferredToolRequests.metadata[tool_call_id]`` holding the id of the D2
approval request (what an approver passes to ``d2.approve``)."""

LINKS_KEY = "d2_approval_requests"
"""Key in a ``ModelResponse.metadata`` holding ``tool_call_id -> {"request": id,
"instance": name}`` (plus ``"done": true`` once a later hold carries it) for the
calls of that response D2 holds for a person: how a resumed run finds the requests
it continues (never sent to the model)."""

# Whether pydantic-ai was told this call is approved (``RunContext.tool_call_approved``)
_APPROVED: ContextVar[bool] = ContextVar("d2_agents_pydantic_ai_approved", default=False)


def _prompt_starts(message: Any) -> bool:
    """Whether ``message`` starts a new turn of the conversation: a request with a
    user prompt and no tool results (resuming with a prompt puts the prompt beside
    the results of the deferred calls: the same turn goes on)."""
    if not isinstance(message, ModelRequest):
        return False
    parts = message.parts
    return any(isinstance(p, UserPromptPart) for p in parts) and not any(
        isinstance(p, (ToolReturnPart, RetryPromptPart)) for p in parts
    )


def _readable(link: dict[str, Any]) -> bool:
    request_id, instance = link.get("request"), link.get("instance")
    return isinstance(request_id, str) and bool(request_id) and isinstance(instance, str)


def _turn_links(messages: Sequence[Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``(tool_call_id, request id, instance, links)`` for every live link of the
    model responses of the current turn (since the last user prompt): what
    :func:`_link` wrote, ``links`` being the dict that holds it. Malformed links
    raise ``PermissionDeniedError``."""
    found = []
    for message in reversed(messages):
        if _prompt_starts(message):
            break
        if not isinstance(message, ModelResponse):
            continue
        metadata = message.metadata
        links = metadata.get(LINKS_KEY) if isinstance(metadata, dict) else None
        if links is None:
            continue
        for call_id, link in links.items() if isinstance(links, dict) else [(None, None)]:
            if not isinstance(link, dict) or not _readable(link):
                raise PermissionDeniedError(
                    f"the {LINKS_KEY!r} metadata of a model response cannot be read; the "
                    "run cannot continue the request that paused",
                    reason="budget_unavailable",
                )
            if not link.get("done"):
                found.append((str(call_id), link["request"], link["instance"], links))
    return found


def _link(ctx: RunContext[Any], request_id: str, instance: str) -> None:
    """Write into the model response that made this call which D2 request it waits
    for (the resumed run restores the paused request from it). The links of the
    turn whose requests this request scope holds are settled: the new hold's saved
    state carries their history, and a later resume needs only the new link (an
    older request may have expired or been used by then)."""
    call_id = ctx.tool_call_id
    scope = get_user_context().scope
    for other, held, _, links in _turn_links(ctx.messages):
        if other != call_id and continues(scope, held):
            links[other] = {**links[other], "done": True}
    for message in reversed(ctx.messages):
        if isinstance(message, ModelResponse) and any(
            isinstance(part, ToolCallPart) and part.tool_call_id == call_id
            for part in message.parts
        ):
            metadata = dict(message.metadata or {})
            links = dict(metadata.get(LINKS_KEY) or {})
            links[str(call_id)] = {"request": request_id, "instance": instance}
            metadata[LINKS_KEY] = links
            message.metadata = metadata
            return


async def _continue(ctx: RunContext[Any]) -> None:
    """Continue, in the current D2 request scope, every request the current turn
    paused for (``d2.restore_request``): every guarded call starts here, so a
    resumed run restores them before any guarded call is decided (the first call
    pays a store lookup, the others none). Raises ``PermissionDeniedError`` when one
    cannot be continued."""
    for _, request_id, instance, _ in _turn_links(ctx.messages):
        await restore_request_async(request_id, instance_name=instance)


@dataclasses.dataclass(kw_only=True)
class _ApprovalAware(FunctionSchema):
    """The tool's own function schema, telling the guard whether pydantic-ai
    approved the call it runs, continuing the paused request a resumed run comes
    from, and linking a call D2 holds to its request."""

    refuse: Callable[[PermissionDeniedError], Any] | None = None
    instance: str = "default"

    async def call(self, args_dict: dict[str, Any], ctx: RunContext[Any]) -> Any:
        try:
            await _continue(ctx)
        except PermissionDeniedError as err:  # the run cannot continue its request
            resume_stopped(err)
            if self.refuse is not None:
                self.refuse(err)
            raise ToolFailed(str(err)) from err
        token = _APPROVED.set(bool(ctx.tool_call_approved))
        try:
            return await super().call(args_dict, ctx)
        except ApprovalRequired as held:
            request_id = (held.metadata or {}).get(APPROVAL_KEY)
            if isinstance(request_id, str):
                _link(ctx, request_id, self.instance)
            raise
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
    refuse = _refuse(deny_message)
    function = d2_guard(tool_id, on_deny=refuse, instance_name=instance_name)(tool.function)
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
    guarded.function_schema = _ApprovalAware(
        **{**fields, "function": function}, refuse=refuse, instance=instance_name
    )
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
