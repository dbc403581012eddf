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
  the run goes on. A call over a budget reads ``budget exceeded for web.search;
  retry after 42s`` (or ``... for this request``).
- A call that D2 holds for a person becomes an SDK approval interruption: the
  copy's ``needs_approval`` asks D2 about the call before it runs, and when D2
  answers ``ApprovalRequiredError`` the run stops with a ``ToolApprovalItem`` in
  ``result.interruptions``. :func:`approval_request` gives the D2 request behind an
  item; :func:`approve_item`, run as an approver (another user holding one of the
  request's roles), calls ``d2.approve`` under that user and ``state.approve(item)``;
  resuming the run (as the requester) runs the call once. :func:`reject_item`
  rejects in both. The tool's own ``needs_approval`` still applies first.

  D2 is asked before the call only for a tool whose grant has an ``approval`` rule
  (``explain``); its answer is kept for the call, so each call is decided once.

The SDK runs tools in tasks and threads that inherit the caller's context, so the
user set before ``Runner.run`` is the user every tool sees, and one run is one D2
request scope: sequence and data-flow rules span its tool calls.
A run resumed after an approval (a fresh ``set_user``, same user) continues the
request that paused: its history and facts are restored when the approved call
runs, in another process too when both use the same store.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar
from typing import Any

try:
    from pydantic import ValidationError

    from agents import AgentBase, FunctionTool, RunContextWrapper, RunState, Tool, ToolApprovalItem
    from agents.function_schema import function_schema
    from agents.tool_context import ToolContext
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.openai_agents needs the OpenAI Agents SDK: pip install "d2-sdk[openai-agents]"'
    ) from exc

from d2.core import (
    ApprovalRequest,
    ConfigurationError,
    PermissionDeniedError,
    TraceStep,
    approve_async,
    d2_guard,
    get_policy_manager,
    get_user_context,
    is_allowed,
    reject_async,
)
from d2.core._functions import first_parameter, forwards_unchanged

from ._common import DenyMessage, ToolIds, approval_of, denial_message, tool_id_resolver

__all__ = ["approval_request", "approve_item", "guard_tool", "guard_tools", "reject_item"]

_MARK = "__d2_agents_tool_id__"  # set on invokers this module built

# The SDK's own invoker for the call being guarded: the guarded callables below take
# exactly the tool function's arguments, so the invoker travels beside them.
_INVOKE: ContextVar[Callable[[], Awaitable[Any]] | None] = ContextVar(
    "d2_agents_openai_invoke", default=None
)

CallArguments = tuple[list[Any], dict[str, Any]]


_REMEMBERED = 4_096  # calls decided before they run / approval items, per process


class _Recent(OrderedDict[Hashable, Any]):
    """A mapping that forgets its oldest entry past ``_REMEMBERED`` entries, and
    cancels a parked admission it forgets (see :class:`_Parked`)."""

    def __setitem__(self, key: Hashable, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > _REMEMBERED:
            _, old = self.popitem(last=False)
            if isinstance(old, _Parked):
                old.task.cancel()


class _Parked:
    """A call D2 admitted while the SDK asked whether it needs approval (an approval
    was given before the run asked): the admission waits, inside ``d2_guard``, for
    the SDK to invoke the tool, so it is decided (and counted) once."""

    __slots__ = ("handoff", "task")

    def __init__(self, task: asyncio.Future[Any], handoff: asyncio.Future[Any]) -> None:
        self.task = task
        self.handoff = handoff


# (request number, tool id, call id) -> what D2 decided when the SDK asked
_DECIDED: _Recent = _Recent()
# (tool name, call id, canonical arguments) -> {requesting user id: the D2 approval
# request of that user's held call}. One request per user: a newer hold of the same
# call by the same user (a later run reusing the call id, a new policy version)
# replaces the older; an entry goes when its call has run or been rejected, so a
# finished run never makes a later run's lookup ambiguous.
_REQUESTS: _Recent = _Recent()


def _canonical(arguments: Any) -> str:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)


def _request_key(name: str, call_id: str, arguments: Any) -> tuple[str, str, str]:
    return (name, call_id, _canonical(arguments))


def _remember(name: str, call_id: str, arguments: Any, request: ApprovalRequest) -> None:
    key = _request_key(name, call_id, arguments)
    known = _REQUESTS.get(key)
    _REQUESTS[key] = {**(known if isinstance(known, dict) else {}), request.user_id: request}


def _forget(name: str, call_id: str, arguments: Any, user_id: str | None) -> None:
    """Drop ``user_id``'s held request for this call: the call ran, or was rejected."""
    _forget_key(_request_key(name, call_id, arguments), user_id)


def _forget_key(key: tuple[str, str, str], user_id: str | None) -> None:
    known = _REQUESTS.get(key)
    if not isinstance(known, dict) or user_id not in known:
        return
    rest = {user: request for user, request in known.items() if user != user_id}
    if rest:
        _REQUESTS[key] = rest
    else:
        del _REQUESTS[key]


def _call_key(tool_id: str, call_id: str) -> tuple[int, str, str]:
    return (get_user_context().scope.number, tool_id, call_id)


def _item_key(item: ToolApprovalItem) -> tuple[str, str, str] | None:
    """The ``_REQUESTS`` key of an interruption: its tool, call id and arguments."""
    raw = item.raw_item
    get = raw.get if isinstance(raw, dict) else lambda key: getattr(raw, key, None)
    call_id, arguments = get("call_id"), get("arguments")
    if not isinstance(call_id, str) or not isinstance(arguments, str) or item.name is None:
        return None
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return None
    return _request_key(item.name, call_id, parsed)


def _held_for(item: ToolApprovalItem) -> dict[str | None, ApprovalRequest]:
    """The D2 requests held for this interruption's call, by requesting user."""
    key = _item_key(item)
    found = _REQUESTS.get(key) if key is not None else None
    return found if isinstance(found, dict) else {}


def approval_request(item: ToolApprovalItem) -> ApprovalRequest | None:
    """The D2 approval request behind an interruption of a guarded tool, or ``None``
    when D2 did not ask for it (the tool's own ``needs_approval`` did, say), or its
    call has run or been rejected since. Known in the process that ran the call (a
    ``RunState`` read back elsewhere: find it with ``d2.pending_approvals()``)."""
    found = _held_for(item)
    if len(found) != 1:
        return None  # unknown, or ambiguous (see approve_item)
    (request,) = found.values()
    return request


def _ambiguous(item: ToolApprovalItem) -> int:
    """How many distinct D2 requests share this interruption's call id, tool and
    arguments (more than one: several users' runs produced the same call id)."""
    return len(_held_for(item))


async def approve_item(
    state: RunState[Any, Any], item: ToolApprovalItem, *, instance_name: str = "default"
) -> ApprovalRequest | None:
    """Approve an interruption as the current user: first the D2 request behind it
    (``d2.approve_async``, which refuses, with ``PermissionDeniedError``, a user who
    holds none of its approver roles or asked for the call), then the SDK's
    ``state.approve(item)``. Resume the run as the requester: the call runs once.
    Returns the D2 request (``None`` when D2 did not ask for this call)."""
    if _ambiguous(item) > 1:
        raise ConfigurationError(
            "several D2 approval requests match this interruption (runs of different "
            "users produced the same call id and arguments): approve the right one with "
            "d2.approve(request_id), picked from d2.pending_approvals()"
        )
    request = approval_request(item)
    if request is not None:
        await approve_async(request.id, instance_name=instance_name)
    state.approve(item)
    return request


async def reject_item(
    state: RunState[Any, Any],
    item: ToolApprovalItem,
    *,
    rejection_message: str | None = None,
    instance_name: str = "default",
) -> ApprovalRequest | None:
    """Reject an interruption as the current user: the D2 request behind it
    (``d2.reject_async``, same rules as :func:`approve_item`), then
    ``state.reject(item)``; the model reads ``rejection_message`` (or the SDK's)."""
    if _ambiguous(item) > 1:
        raise ConfigurationError(
            "several D2 approval requests match this interruption (runs of different "
            "users produced the same call id and arguments): reject the right one with "
            "d2.reject(request_id), picked from d2.pending_approvals()"
        )
    request = approval_request(item)
    if request is not None:
        await reject_async(request.id, instance_name=instance_name)
        key = _item_key(item)
        if key is not None:
            _forget_key(key, request.user_id)
    state.reject(item, rejection_message=rejection_message)
    return request


def _has_approval_rule(
    tool_id: str, instance_name: str, args: list[Any], kwargs: dict[str, Any]
) -> bool:
    """Whether the grant that would allow this call has an ``approval`` rule (then
    D2 is asked before the call runs)."""
    try:
        decision = get_policy_manager(instance_name).explain(tool_id, *args, **kwargs)
    except Exception:  # no policy, unbindable arguments: the call decides as usual
        return False
    return decision.allowed and any(step.step == "approval" for step in decision.trace)


async def _decide_early(
    gate: Callable[..., Awaitable[Any]], args: list[Any], kwargs: dict[str, Any]
) -> Any:
    """Run ``gate`` for a call the SDK has not invoked yet: the denial it raises, or
    a :class:`_Parked` admission waiting for the invocation."""
    loop = asyncio.get_running_loop()
    admitted = asyncio.Event()
    handoff: asyncio.Future[Any] = loop.create_future()

    async def park() -> Any:
        admitted.set()
        invoke = await handoff
        return await invoke()

    token = _INVOKE.set(park)
    try:
        task = asyncio.ensure_future(gate(*args, **kwargs))  # copies the context
    finally:
        _INVOKE.reset(token)
    waiter = asyncio.ensure_future(admitted.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if admitted.is_set():
        return _Parked(task, handoff)
    waiter.cancel()
    return task.exception()


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
    # the SDK calls ``fn`` with the arguments the gate is given: bind them like ``fn``
    return forwards_unchanged(call)


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


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        return bool(function_schema(fn, use_docstring_info=False).takes_context)
    except Exception:
        return False


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
        context = first_parameter(fn)
        if context is not None and _takes_context(fn):
            # the run context is how the call runs, not what it does: an approval
            # covers the model's arguments only
            gate.__dict__["_d2_arguments"].hidden = frozenset((context,))
    else:
        defaults = _schema_defaults(tool)

        def read(ctx: ToolContext[Any], input: str) -> CallArguments:
            return [], {**defaults, **_json_object(input)}

        gate = d2_guard(tool_id, instance_name=instance_name)(_by_keyword)
    invoke_inner = tool.on_invoke_tool
    enabled_inner = tool.is_enabled
    approval_inner = tool.needs_approval

    async def on_invoke_tool(ctx: ToolContext[Any], input: str) -> Any:
        try:
            output = await decide_and_run(ctx, input)
        except PermissionDeniedError as err:
            if approval_of(err) is None:
                settled(ctx, input)
            return deny_message(err)
        settled(ctx, input)
        return output

    held_any = False  # whether this tool ever held a call (others pay nothing here)

    def settled(ctx: ToolContext[Any], input: str) -> None:
        """The call ran, or was refused for good: a request held for it is done."""
        if not held_any or not _REQUESTS:
            return
        try:
            arguments = json.loads(input) if input else {}
        except ValueError:
            return
        _forget(guarded.name, ctx.tool_call_id, arguments, get_user_context().user_id)

    async def decide_and_run(ctx: ToolContext[Any], input: str) -> Any:
        """Run the call if D2 admits it; a denial raises ``PermissionDeniedError``."""
        early = _DECIDED.pop(_call_key(tool_id, ctx.tool_call_id), None)
        if isinstance(early, PermissionDeniedError):
            raise early
        if isinstance(early, _Parked):
            early.handoff.set_result(lambda: invoke_inner(ctx, input))
            return await early.task
        try:
            args, kwargs = read(ctx, input)
        except _Unreadable as exc:
            raise _refusal(tool_id, str(exc)) from None
        token = _INVOKE.set(lambda: invoke_inner(ctx, input))
        try:
            return await gate(*args, **kwargs)
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

    async def needs_approval(
        ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
    ) -> bool:
        if isinstance(approval_inner, bool):
            if approval_inner:
                return True
        else:
            own: Any = approval_inner(ctx, params, call_id)
            if inspect.isawaitable(own):
                own = await own
            if own:
                return True
        try:
            args, kwargs = read(ctx, json.dumps(params))  # type: ignore[arg-type]
        except _Unreadable:
            return False  # refused when invoked
        if not _has_approval_rule(tool_id, instance_name, args, kwargs):
            return False
        decided = await _decide_early(gate, args, kwargs)
        request = approval_of(decided) if isinstance(decided, PermissionDeniedError) else None
        if request is not None:  # hold the call: the SDK interrupts the run
            nonlocal held_any
            held_any = True
            _remember(guarded.name, call_id, params, request)
            return True
        if isinstance(decided, (PermissionDeniedError, _Parked)):
            _DECIDED[_call_key(tool_id, call_id)] = decided
        return False  # anything else: decided again when invoked

    setattr(on_invoke_tool, _MARK, tool_id)
    guarded = copy.copy(tool)
    guarded.on_invoke_tool = on_invoke_tool
    guarded.is_enabled = is_enabled
    guarded.needs_approval = needs_approval
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
