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
  the tool's function will receive and the tool's result as output. For a tool
  made by ``function_tool`` the model's JSON is validated by the function's own
  parameter model (as the SDK does) and bound to its signature, so input rules see
  the values it runs with, defaults and coercions applied (``{}`` for
  ``read_users(limit: int = 1000)`` is checked as ``limit=1000``). For a
  ``FunctionTool`` built by hand (no Python function to read) they see the JSON
  object the model sent, with the ``default`` of each property of the tool's
  ``params_json_schema`` filled in. Arguments that are not a JSON object, or that
  the function's parameter model rejects, are refused (``input_validation``),
  never passed unchecked.
- A denial is returned to the model as the tool's output string
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
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

try:
    from pydantic import ValidationError

    from agents import AgentBase, FunctionTool, RunContextWrapper, Tool
    from agents.function_schema import function_schema
    from agents.tool_context import ToolContext
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.openai_agents needs the OpenAI Agents SDK: pip install "d2-sdk[openai-agents]"'
    ) from exc

from d2.core import PermissionDeniedError, TraceStep, d2_guard, is_allowed

from ._common import DenyMessage, ToolIds, denial_message, tool_id_resolver

__all__ = ["guard_tool", "guard_tools"]

_MARK = "__d2_agents_tool_id__"  # set on invokers this module built

# The SDK's own invoker for the call being guarded: the guarded callables below take
# exactly the tool function's arguments, so the invoker travels beside them.
_INVOKE: ContextVar[Callable[[], Awaitable[Any]] | None] = ContextVar(
    "d2_agents_openai_invoke", default=None
)

CallArguments = tuple[list[Any], dict[str, Any]]


class _Unreadable(Exception):
    """The model's arguments cannot become the function's arguments."""


async def _invoke() -> Any:
    invoke = _INVOKE.get()
    if invoke is None:  # pragma: no cover - defensive: only on_invoke_tool calls a gate
        raise RuntimeError("a guarded Agents SDK tool was called outside its invoker")
    return await invoke()


def _binding_like(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A coroutine function that ``d2_guard`` binds exactly like ``fn`` (a
    forwarding wrapper of it: its signature and defaults) and that runs the SDK's
    invoker for the call."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        return await _invoke()

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    call.__name__ = getattr(fn, "__name__", "tool")
    call.__qualname__ = getattr(fn, "__qualname__", call.__name__)
    return call


async def _by_keyword(**arguments: Any) -> Any:
    """The guarded callable of a hand-built tool: input rules read the keywords."""
    return await _invoke()


def _json_object(input: str) -> dict[str, Any]:
    """The model's arguments, parsed as the SDK parses them (empty input is ``{}``)."""
    try:
        parsed = json.loads(input) if input else {}
    except ValueError:
        raise _Unreadable("the arguments are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _Unreadable("the arguments are not a JSON object")
    return parsed


def _function_reader(
    tool: FunctionTool,
) -> tuple[Callable[..., Any], Callable[[ToolContext[Any], str], CallArguments]] | None:
    """For a tool made by ``function_tool``: its Python function, and how to turn
    the model's JSON into the arguments the SDK will call it with (its parameter
    model validates them, defaults filled, as the SDK's invoker does)."""
    try:
        fn = tool.__wrapped__  # the callable given to function_tool (recent SDKs)
    except AttributeError:
        return None
    if not callable(fn):
        return None
    try:
        schema = function_schema(
            fn, use_docstring_info=False, strict_json_schema=tool.strict_json_schema
        )
    except Exception:  # a callable function_schema cannot read: by keyword
        return None
    model = schema.params_pydantic_model

    def read(ctx: ToolContext[Any], input: str) -> CallArguments:
        data = _json_object(input)
        try:
            args, kwargs = schema.to_call_args(model(**data) if data else model())
        except ValidationError as exc:
            fields = sorted({".".join(map(str, e["loc"])) or "(all)" for e in exc.errors()})
            raise _Unreadable(
                f"the arguments do not fit the tool's parameters ({', '.join(fields)})"
            ) from None
        except Exception:  # a validator raised: the call cannot be checked
            raise _Unreadable("the arguments do not fit the tool's parameters") from None
        return ([ctx, *args] if schema.takes_context else list(args)), kwargs

    return fn, read


def _schema_defaults(tool: FunctionTool) -> dict[str, Any]:
    """The ``default`` of each property of a hand-built tool's parameter schema."""
    properties = tool.params_json_schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {
        name: spec["default"]
        for name, spec in properties.items()
        if isinstance(name, str) and isinstance(spec, dict) and "default" in spec
    }


def _refusal(tool_id: str, detail: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"{tool_id!r} denied: {detail}",
        tool_id=tool_id,
        reason="input_validation",
        trace=(TraceStep("input", "deny", detail),),
    )


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
    reader = _function_reader(tool)
    read: Callable[[ToolContext[Any], str], CallArguments]
    if reader is not None:
        fn, read = reader
        gate = d2_guard(tool_id, instance_name=instance_name)(_binding_like(fn))
    else:
        defaults = _schema_defaults(tool)

        def read(ctx: ToolContext[Any], input: str) -> CallArguments:
            return [], {**defaults, **_json_object(input)}

        gate = d2_guard(tool_id, instance_name=instance_name)(_by_keyword)
    invoke_inner = tool.on_invoke_tool
    enabled_inner = tool.is_enabled

    async def on_invoke_tool(ctx: ToolContext[Any], input: str) -> Any:
        try:
            args, kwargs = read(ctx, input)
        except _Unreadable as exc:
            return deny_message(_refusal(tool_id, str(exc)))
        token = _INVOKE.set(lambda: invoke_inner(ctx, input))
        try:
            return await gate(*args, **kwargs)
        except PermissionDeniedError as err:
            return deny_message(err)
        finally:
            _INVOKE.reset(token)

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
