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
  ``result.interruptions``. D2 writes the link from the call to its D2 request into
  the run's own state (see *The link* below), so it travels with the ``RunState``.
  :func:`approval_request` gives the D2 request behind an item of a state;
  :func:`approve_item`, run as an approver (another user holding one of the
  request's roles), calls ``d2.approve`` on that request and ``state.approve(item)``;
  resuming the run (as the requester) runs the call once. :func:`reject_item`
  rejects in both. An item whose D2 request its state cannot prove is refused
  (``ConfigurationError``), never matched by its tool, call id and arguments. The
  tool's own ``needs_approval`` still applies first.

  D2 is asked before the call only for a tool whose grant has an ``approval`` rule
  (``explain``); its answer is kept for the call, so each call is decided once.

The SDK runs tools in tasks and threads that inherit the caller's context, so the
user set before ``Runner.run`` is the user every tool sees, and one run is one D2
request scope: sequence and data-flow rules span its tool calls.

A run resumed after an approval (a fresh ``set_user``, same user, then
``Runner.run(agent, state)``) continues the request that paused from its start:
every guarded call begins by restoring, for every D2 request the state links, the
paused request's history, facts and ``per: request`` counts
(``d2.restore_request``; its ``needs_approval`` or its invocation, whichever comes
first, and only the first call of the run pays a store lookup), so no guarded tool
of the resumed run is decided without them, whether the held call was approved or
rejected. When that cannot be done (the request is gone: used by another resume,
expired, or the store is not shared; the store does not answer) every guarded call
of that run is refused (the model reads why), never run on a fresh history.

*The link.* The SDK serialises a run's approval decisions with its ``RunState``
(``RunContextWrapper._approvals``, tool key -> record of decisions, whose
``rejection_messages`` map call ids to text). D2 keeps one record of its own there,
under a key no tool name can take (``d2:approval-requests``), mapping each held
call id to its D2 request (id, tool, instance). The SDK never shows it to the
model, and ignores it in every decision (the record approves and rejects nothing).
It is private SDK state: if a future SDK cannot carry it, D2 does not pause the
run (the model reads ``approval required ...``) rather than pause without a link.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar
from typing import Any, NamedTuple

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
    pending_approvals,
    pending_approvals_async,
    reject_async,
    restore_request_async,
)
from d2.core._functions import first_parameter, forwards_unchanged
from d2.core.resume import continues

from ._common import (
    DenyMessage,
    ToolIds,
    approval_of,
    denial_message,
    resume_stopped,
    tool_id_resolver,
)

_ApprovalRecord: Any
try:  # where a run's approval decisions travel (see "The link" above)
    from agents.run_context import _ApprovalRecord
except ImportError:  # pragma: no cover - another SDK layout: no run is paused by D2
    _ApprovalRecord = None

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
# D2 request id -> the request, for the requests held in this process (what
# approval_request shows without asking the store)
_HELD: _Recent = _Recent()


def _call_key(tool_id: str, call_id: str) -> tuple[int, str, str]:
    return (get_user_context().scope.number, tool_id, call_id)


# -- the link from a held call to its D2 request, in the run's own state --------------

_BINDINGS = "d2:approval-requests"  # no tool name can contain ":"


class _Bound(NamedTuple):
    """What D2 wrote for one held call: its D2 request (``None``: the tool's own
    ``needs_approval`` asked, not D2), the SDK tool name, the D2 tool id, the D2
    instance, and whether the link is settled: its call ran or was refused for good,
    or a later hold of a run that continued its request carries its history."""

    request_id: str | None
    tool: str
    tool_id: str
    instance: str
    done: bool = False

    def text(self) -> str:
        data = {"r": self.request_id, "t": self.tool, "d": self.tool_id, "i": self.instance}
        if self.done:
            data["s"] = "done"
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def read(cls, text: object) -> _Bound | None:
        """The link written by :meth:`text`, or ``None`` when it is not one."""
        try:
            data = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        request_id, tool, tool_id, instance = (data.get(k) for k in ("r", "t", "d", "i"))
        if not (request_id is None or (isinstance(request_id, str) and request_id)):
            return None
        if not (
            isinstance(tool, str)
            and isinstance(tool_id, str)
            and isinstance(instance, str)
            and tool
            and tool_id
            and instance
            and data.get("s") in (None, "done")
        ):
            return None
        return cls(request_id, tool, tool_id, instance, data.get("s") == "done")


def _bindings(wrapper: Any, *, create: bool = False) -> dict[str, str] | None:
    """The run's links (call id -> :class:`_Bound` text), kept in the run context's
    approval records so they travel with its ``RunState``; ``None`` when there are
    none (or, with ``create``, when this SDK gives no place for them)."""
    approvals = getattr(wrapper, "_approvals", None)
    if not isinstance(approvals, dict):
        return None
    record = approvals.get(_BINDINGS)
    if record is None:
        if not create or _ApprovalRecord is None:
            return None
        record = approvals[_BINDINGS] = _ApprovalRecord()
    found = getattr(record, "rejection_messages", None)
    return found if isinstance(found, dict) else None


def _bind(wrapper: Any, call_id: str, bound: _Bound) -> bool:
    """Link ``call_id`` to ``bound`` in the run's state; False when it cannot."""
    found = _bindings(wrapper, create=True)
    if found is None or not call_id:
        return False
    found[call_id] = bound.text()
    return True


def _settle(found: dict[str, str], call_id: str) -> None:
    """Mark the link of ``call_id`` settled: nothing is left to decide or restore."""
    bound = _Bound.read(found.get(call_id))
    if bound is not None and not bound.done:
        found[call_id] = bound._replace(done=True).text()
        if bound.request_id is not None:
            _HELD.pop(bound.request_id, None)


def _wrapper_of(run: Any) -> Any:
    """The run context of a ``RunState`` or of a run result."""
    if isinstance(run, RunState):
        return run._context
    return getattr(run, "context_wrapper", None)


def _item_call_id(item: ToolApprovalItem) -> str | None:
    raw = item.raw_item
    call_id = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", None)
    return call_id if isinstance(call_id, str) and call_id else None


def _guarded(item: ToolApprovalItem) -> bool:
    """Whether the interruption is for a tool this module guards."""
    tools = getattr(getattr(item, "agent", None), "tools", None) or ()
    return any(
        isinstance(tool, FunctionTool)
        and tool.name == item.tool_name
        and getattr(tool.on_invoke_tool, _MARK, None) is not None
        for tool in tools
    )


def _sdk_asked_alone(item: ToolApprovalItem) -> bool:
    """Whether the SDK asked for approval without asking the tool: it does for a
    call whose arguments are not a JSON object (empty, invalid, ``NaN``...)."""
    raw = item.raw_item
    arguments = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", None)
    if not isinstance(arguments, str) or not arguments.strip():
        return True

    def constant(name: str) -> Any:
        raise ValueError(name)

    try:
        parsed = json.loads(arguments, parse_constant=constant)
    except ValueError:
        return True
    return not isinstance(parsed, dict)


def _bound_to(run: Any, item: ToolApprovalItem) -> _Bound | None:
    """The D2 request ``item`` waits for, as D2 linked it in the run's state when it
    held the call; ``None`` when D2 did not ask (the tool's own ``needs_approval``
    did, or the tool is not guarded here). Raises ``ConfigurationError`` when the
    item is a guarded tool's and its state holds no valid link for it: the request
    is never guessed from the tool, call id and arguments (another user's run can
    produce the very same)."""
    call_id = _item_call_id(item)
    found = _bindings(_wrapper_of(run))
    text = found.get(call_id) if found is not None and call_id is not None else None
    if text is None:
        if not _guarded(item) or _sdk_asked_alone(item):
            return None
        raise ConfigurationError(
            f"the run state holds no D2 link for the interruption of {item.tool_name!r} "
            f"(call {call_id!r}), so the D2 request it waits for cannot be proven (pass "
            "the RunState or run result the interruption came from). Decide the D2 "
            "request with d2.approve(request_id) / d2.reject(request_id), picked from "
            "d2.pending_approvals(), then state.approve(item) / state.reject(item)"
        )
    bound = _Bound.read(text)
    if bound is None or bound.tool != item.tool_name:
        raise ConfigurationError(
            f"the D2 link the run state holds for call {call_id!r} is not one D2 wrote for "
            f"{item.tool_name!r}: the state was altered; decide the D2 request with "
            "d2.approve(request_id) / d2.reject(request_id) from d2.pending_approvals()"
        )
    return None if bound.done else bound


async def _continue(wrapper: Any) -> None:
    """Continue, in the current D2 request scope, every request this run paused
    for (``d2.restore_request``): every guarded call of a run starts here (its
    ``needs_approval`` or its invocation), so a resumed run restores them before
    any guarded tool is decided. Raises ``PermissionDeniedError`` when one cannot
    be continued."""
    found = _bindings(wrapper)
    if not found:
        return
    for call_id, text in list(found.items()):
        bound = _Bound.read(text)
        if bound is None:
            raise PermissionDeniedError(
                f"the D2 link of call {call_id!r} in this run's state cannot be read; the "
                "run cannot continue the request that paused",
                reason="budget_unavailable",
            )
        if bound.request_id is not None and not bound.done:
            await restore_request_async(bound.request_id, instance_name=bound.instance)


def _carried(wrapper: Any, held: str) -> None:
    """The run paused again (call ``held``): the links of calls the SDK has decided
    (approved or rejected) and whose request this request scope holds are settled,
    because the new hold's saved state carries their history; a later resume then
    needs only the new link (a rejected request expires, and its link must not
    stop that resume)."""
    found = _bindings(wrapper)
    if not found:
        return
    scope = get_user_context().scope
    for call_id, text in list(found.items()):
        bound = _Bound.read(text)
        if call_id == held or bound is None or bound.request_id is None or bound.done:
            continue
        if _decided_by_the_sdk(wrapper, bound.tool, call_id) and continues(scope, bound.request_id):
            _settle(found, call_id)


def _decided_by_the_sdk(wrapper: Any, tool: str, call_id: str) -> bool:
    try:
        return wrapper.is_tool_approved(tool, call_id) is not None
    except Exception:  # an SDK that cannot tell: keep the link
        return False


def approval_request(
    item: ToolApprovalItem, state: RunState[Any, Any] | Any = None
) -> ApprovalRequest | None:
    """The D2 approval request behind an interruption of a guarded tool.

    ``state``: the ``RunState`` (or run result) the interruption belongs to, which
    carries D2's link from the call to its request, in this process or any other.
    ``None`` when D2 did not ask for the call (the tool's own ``needs_approval``
    did), when no ``state`` is given (the item alone cannot prove whose request it
    is: two users' runs can produce the very same item), or when the request is
    neither held in this process nor pending for the current user to decide
    (``pending_approvals``). Raises ``ConfigurationError`` when the state holds no
    valid link for an interruption of a guarded tool."""
    if state is None:
        return None
    bound = _bound_to(state, item)
    if bound is None or bound.request_id is None:
        return None
    held = _HELD.get(bound.request_id)
    if isinstance(held, ApprovalRequest):
        return held
    for request in pending_approvals(instance_name=bound.instance):
        if request.id == bound.request_id:
            return request
    return None


async def _decide_bound(bound: _Bound, approve: bool) -> ApprovalRequest:
    """Approve or reject the linked request (as the current user), once it is
    known to be a request of the linked tool."""
    assert bound.request_id is not None
    for request in await pending_approvals_async(instance_name=bound.instance):
        if request.id == bound.request_id and request.tool_id != bound.tool_id:
            raise ConfigurationError(
                f"the D2 link of this interruption names request {request.id[:12]} of "
                f"{request.tool_id!r}, not of {bound.tool_id!r}: the state was altered"
            )
    decide = approve_async if approve else reject_async
    request = await decide(bound.request_id, instance_name=bound.instance)
    _HELD.pop(bound.request_id, None)  # decided: nothing left to show an approver
    return request


async def approve_item(
    state: RunState[Any, Any], item: ToolApprovalItem, *, instance_name: str = "default"
) -> ApprovalRequest | None:
    """Approve an interruption as the current user: first the D2 request the state
    links to it (``d2.approve_async``, which refuses, with ``PermissionDeniedError``,
    a user who holds none of its approver roles or asked for the call), then the
    SDK's ``state.approve(item)``. Resume the run as the requester: the call runs
    once. Returns the D2 request (``None`` when D2 did not ask for this call).
    Raises ``ConfigurationError``, approving nothing, when the state cannot prove
    which D2 request the item waits for. ``instance_name`` is kept for
    compatibility: the link names the D2 instance that held the call."""
    bound = _bound_to(state, item)
    request = None
    if bound is not None and bound.request_id is not None:
        request = await _decide_bound(bound, True)
    state.approve(item)
    return request


async def reject_item(
    state: RunState[Any, Any],
    item: ToolApprovalItem,
    *,
    rejection_message: str | None = None,
    instance_name: str = "default",
) -> ApprovalRequest | None:
    """Reject an interruption as the current user: the D2 request the state links
    to it (``d2.reject_async``, same rules as :func:`approve_item`), then
    ``state.reject(item)``; the model reads ``rejection_message`` (or the SDK's).
    The resumed run still continues the request that paused, from its start."""
    bound = _bound_to(state, item)
    request = None
    if bound is not None and bound.request_id is not None:
        request = await _decide_bound(bound, False)
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
            await _continue(ctx)
        except PermissionDeniedError as err:  # the run cannot continue its request
            resume_stopped(err)
            return deny_message(err)
        try:
            output = await decide_and_run(ctx, input)
        except PermissionDeniedError as err:
            if approval_of(err) is None:
                settled(ctx)
            return deny_message(err)
        settled(ctx)
        return output

    def settled(ctx: ToolContext[Any]) -> None:
        """The call ran, or was refused for good: its link to a D2 request goes."""
        found = _bindings(ctx)
        if found:
            _settle(found, ctx.tool_call_id)

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
        try:
            await _continue(ctx)
        except PermissionDeniedError as err:
            resume_stopped(err)
            return False  # the invocation refuses it
        if isinstance(approval_inner, bool):
            own: Any = approval_inner
        else:
            own = approval_inner(ctx, params, call_id)
            if inspect.isawaitable(own):
                own = await own
        if own:  # the tool's own approval, not D2's: linked to no D2 request
            _bind(ctx, call_id, _Bound(None, guarded.name, tool_id, instance_name))
            return True
        try:
            args, kwargs = read(ctx, json.dumps(params))  # type: ignore[arg-type]
        except _Unreadable:
            return False  # refused when invoked
        if not _has_approval_rule(tool_id, instance_name, args, kwargs):
            return False
        decided = await _decide_early(gate, args, kwargs)
        request = approval_of(decided) if isinstance(decided, PermissionDeniedError) else None
        if request is not None and _bind(
            ctx, call_id, _Bound(request.id, guarded.name, tool_id, instance_name)
        ):  # hold the call: the SDK interrupts the run, its state linked to the request
            _HELD[request.id] = request
            _carried(ctx, call_id)
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
