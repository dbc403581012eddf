"""D2 for LangChain tools (``langchain-core``)::

    from d2.agents.langchain import guard_tools, permitted_tools

    tools = guard_tools([search, read_users, http_request])  # every run guarded
    set_user("alice", roles=["analyst"])                      # per request
    model_with_tools = model.bind_tools(permitted_tools(tools))

:func:`guard_tools` returns guarded copies; the originals are untouched. For a
function tool (``@tool``, ``StructuredTool``, ``Tool``) the function itself is
guarded, sync and async, so input rules bind to its parameters and output rules
see its return value. Any other ``BaseTool`` runs behind a ``StructuredTool`` with
the same name and schema whose function is guarded and invokes the original with
the arguments LangChain validated. A denial raises :class:`ToolDenied`, a
``ToolException``: with ``handle_tool_error=True`` on the tool (or LangGraph's
``ToolNode(..., handle_tool_errors=True)``) the model reads it as an error
``ToolMessage``.

A call that waits for a person raises :class:`ApprovalPending` (a ``ToolDenied``
whose ``request`` is D2's :class:`~d2.core.ApprovalRequest`): catch it to ask an
approver, or let the model read ``approval required for payments.refund: request
<id>, approvers: finance_lead``. Once an approver (another user with one of the
roles) calls ``d2.approve(request.id)``, the same user's identical call runs once.
A loop of your own resumes as a fresh request (``set_user``) that first calls
``d2.restore_request(request.id)``: the paused request's history, facts and
``per: request`` counts then hold from the resumed run's first call, approved or
rejected (after a rejection the identical call never comes back to restore them).
Inside a LangGraph graph (extra ``d2-sdk[langgraph]``) the graph handles a held call:
where the graph can resume that call alone (a checkpointer, and the call in a task
of its own, a ``Send`` per tool call as ``langchain.agents.create_agent`` routes
them) it pauses the graph through LangGraph's own ``interrupt``, whose value names
the request (``d2_approval_request``, ``d2_approvers``, ...); once it is approved,
resume with ``Command(resume=...)`` and the call runs once, while the other calls of
the same model message, finished in their own tasks, are not run again; the resumed
request continues the paused one from its start: the resumed task is the held call
itself, which LangGraph runs first, and it restores the paused request's history,
facts and ``per: request`` counts whether it was approved (it runs) or rejected (it
is refused, ``approval_rejected``). Resumed without a decision, it is refused with
``ApprovalPending``. In any other graph (no
checkpointer, or a ``ToolNode`` reached by an edge, which LangGraph re-runs whole on
resume) the model reads the approval message as the call's result and the run goes
on.
A call over a budget is a ``ToolDenied`` reading ``budget exceeded for web.search;
retry after 42s``.

An approval covers the arguments the model fills in: what LangChain or LangGraph pass
a tool for the run (its ``config`` and ``callbacks``, the tool call id, the graph
state and store, a ``ToolRuntime``) is not part of the approved call, so the call
resumed or asked again matches the one that was held, and approvers never see it.
A plain ``InjectedToolArg`` (a value the app chose) stays part of the call.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, cast

try:
    from langchain_core.runnables import RunnableConfig
    from langchain_core.tools import (
        BaseTool,
        InjectedToolCallId,
        StructuredTool,
        Tool,
        ToolException,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.langchain needs langchain-core: pip install "d2-sdk[langchain]"'
    ) from exc

from d2.core import ApprovalRequest, PermissionDeniedError, d2_guard, is_allowed

from ._common import (
    DenyMessage,
    ToolIds,
    approval_details,
    approval_of,
    denial_message,
    tool_id_resolver,
)

__all__ = [
    "TOOL_ID_KEY",
    "ApprovalPending",
    "ToolDenied",
    "guard_tool",
    "guard_tools",
    "permitted_tools",
]

TOOL_ID_KEY = "d2_tool_id"
"""Key in a guarded tool's ``metadata`` holding its D2 tool id."""


class ToolDenied(ToolException):
    """D2 refused a tool run; ``error`` is the :class:`~d2.core.PermissionDeniedError`
    and the message is what the model reads (``deny_message(error)``)."""

    def __init__(self, message: str, error: PermissionDeniedError) -> None:
        super().__init__(message)
        self.error = error


class ApprovalPending(ToolDenied):
    """D2 holds the call until a person approves it: ``request`` is the
    :class:`~d2.core.ApprovalRequest` (its ``id`` goes to ``d2.approve``, its
    ``approver_roles`` say who may). The same user's identical call, once approved,
    runs once."""

    def __init__(self, message: str, error: PermissionDeniedError, request: ApprovalRequest):
        super().__init__(message, error)
        self.request = request


_OUTSIDE, _ANSWER, _RESUMED = "outside", "answer", "resumed"


def _hold_in_graph(request: ApprovalRequest) -> str:
    """What a held call does where it runs: ``_OUTSIDE`` a LangGraph graph, raise
    :class:`ApprovalPending`; inside one that can resume this call alone, pause it
    through LangGraph's ``interrupt`` (which raises, the first time) and, once
    resumed, ``_RESUMED``; inside any other graph, ``_ANSWER``: the model reads the
    approval message as the call's result.

    A graph can resume the call alone when it has a checkpointer and the call runs in
    a task of its own, a ``Send`` (``langgraph_path`` starts with ``__pregel_push``),
    as ``create_agent`` routes each tool call: the other calls of the same message
    then finish in their own tasks, and the checkpointer keeps their results for the
    resume. A ``ToolNode`` reached by an edge runs every call of the message in one
    task, and LangGraph re-runs a paused task whole, so a pause there would run the
    other calls again; without a checkpointer nothing could resume at all."""
    if "langgraph" not in sys.modules:  # no graph can be running
        return _OUTSIDE
    try:
        from langgraph.config import get_config
        from langgraph.types import interrupt
    except ImportError:  # pragma: no cover - a partial install
        return _OUTSIDE
    try:  # public since langgraph 0.x, kept "for backwards compatibility" in 1.x
        from langgraph.constants import CONFIG_KEY_CHECKPOINTER
    except ImportError:  # pragma: no cover - the value it has always had
        CONFIG_KEY_CHECKPOINTER = "__pregel_checkpointer"
    try:
        config = get_config()
    except RuntimeError:  # no runnable config at all
        return _OUTSIDE
    path = (config.get("metadata") or {}).get("langgraph_path")
    if not isinstance(path, tuple) or not path:  # a plain LangChain run
        return _OUTSIDE
    checkpointer = (config.get("configurable") or {}).get(CONFIG_KEY_CHECKPOINTER)
    if checkpointer is None or path[0] != "__pregel_push":
        return _ANSWER
    interrupt(approval_details(request))
    return _RESUMED


def _refuse(
    deny_message: DenyMessage, *, with_artifact: bool = False
) -> Callable[[PermissionDeniedError], Any]:
    def refuse(err: PermissionDeniedError) -> Any:
        request = approval_of(err)
        if request is not None:
            if _hold_in_graph(request) == _ANSWER:
                text = deny_message(err)
                return (text, approval_details(request)) if with_artifact else text
            raise ApprovalPending(deny_message(err), err, request) from err
        raise ToolDenied(deny_message(err), err) from err

    return refuse


_CONFIG: contextvars.ContextVar[Any] = contextvars.ContextVar("d2_langchain_config")
# what travels beside the guarded arguments of a facade: the run's config and the
# arguments the run injects (see _run_context)
_BESIDE: contextvars.ContextVar[tuple[Any, dict[str, Any]]] = contextvars.ContextVar(
    "d2_langchain_beside"
)


def _model_fields(tool: BaseTool) -> frozenset[str] | None:
    """The names of the arguments the model fills in (``tool.tool_call_schema``),
    or ``None`` when they cannot be read."""
    try:
        schema = tool.tool_call_schema
    except Exception:
        return None
    if isinstance(schema, Mapping):
        properties = schema.get("properties")
        return frozenset(properties) if isinstance(properties, Mapping) else None
    fields = getattr(schema, "model_fields", None)
    return frozenset(fields) if isinstance(fields, Mapping) else None


_FILLED_BY_NAME = frozenset({"callbacks", "run_manager"})  # LangChain's FILTERED_ARGS


def _filled_markers() -> tuple[type, ...]:
    """The annotations by which LangChain and LangGraph fill in an argument for the
    run: the tool call id, and (when LangGraph's tool node is loaded, as it is for
    any tool that names them) the graph state, the store and ``ToolRuntime``."""
    markers: list[type] = [InjectedToolCallId]
    node = sys.modules.get("langgraph.prebuilt.tool_node")
    for name in ("InjectedState", "InjectedStore", "ToolRuntime"):
        found = getattr(node, name, None)
        if isinstance(found, type):
            markers.append(found)
    return tuple(markers)


def _filled_for_the_run(name: str, hint: Any, markers: tuple[type, ...]) -> bool:
    """Whether the argument ``name`` (type hint ``hint``) is one LangChain or
    LangGraph fill in for the run: the run's config or callbacks, or an argument
    marked with one of ``markers`` (directly, ``ToolRuntime``, or in ``Annotated``)."""
    if name in _FILLED_BY_NAME or hint is RunnableConfig:
        return True
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return any(
            isinstance(m, markers) or (isinstance(m, type) and issubclass(m, markers))
            for m in hint.__metadata__
        )
    direct = origin if origin is not None else hint
    return isinstance(direct, type) and issubclass(direct, markers)


def _run_context(tool: BaseTool, names: Iterable[str], annotated: Any) -> frozenset[str]:
    """Of ``names`` (the parameters of the tool's function, or the fields of its
    ``args_schema``, whose type hints ``annotated`` holds), those LangChain or
    LangGraph fill in for the run, never the model: the run's config and callbacks,
    the tool call id, the graph state or store, a ``ToolRuntime``. They say how the
    call runs, not what it does, and change from one run (or resume) to the next,
    so they are not part of the call an approval covers, and approvers never see
    them. Anything else stays part of the call: what the model fills in, and any
    other injected value (a plain ``InjectedToolArg``: an account, a tenant the app
    chose). Nothing is set apart when the tool's schema cannot be read, and only
    ``callbacks`` and ``run_manager`` when its type hints cannot: the call then
    stays whole (an approval may then fail to match a retried call, but never
    covers a call the approver did not see)."""
    fields = _model_fields(tool)
    if fields is None:
        return frozenset()
    try:
        hints = typing.get_type_hints(annotated, include_extras=True)
    except Exception:
        hints = {}
    markers = _filled_markers()
    return frozenset(
        name
        for name in names
        if name not in fields and _filled_for_the_run(name, hints.get(name), markers)
    )


def _function_context(tool: BaseTool, fn: Callable[..., Any]) -> frozenset[str]:
    """:func:`_run_context` for the parameters of a function tool's ``fn``."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset()
    named = [
        name
        for name, parameter in parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    return _run_context(tool, named, fn) if named else frozenset()


def _hide(guarded: Callable[..., Any], names: frozenset[str]) -> Callable[..., Any]:
    """Leave ``names`` out of the call an approval covers (see :func:`_run_context`);
    input rules still read them."""
    if names:
        guarded.__dict__["_d2_arguments"].hidden = names
    return guarded


def _facade(
    tool: BaseTool, guard: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Sync and async functions that run ``tool`` with the validated arguments,
    passing the run's config on so callbacks nest under the outer run. Only the
    arguments the call is made of pass through ``guard``: the config, and the
    arguments the run injects (:func:`_run_context`), travel beside them (they are
    not part of the call an approval covers, and approvers never see them)."""
    schema = tool.args_schema
    fields = getattr(schema, "model_fields", None)
    beside = (
        _run_context(tool, list(fields), schema)
        if isinstance(schema, type) and isinstance(fields, Mapping)
        else frozenset()
    )

    @guard
    def guarded_run(**arguments: Any) -> Any:
        config, injected = _BESIDE.get((None, {}))
        return tool.invoke({**arguments, **injected}, config)

    @guard
    async def guarded_arun(**arguments: Any) -> Any:
        config, injected = _BESIDE.get((None, {}))
        return await tool.ainvoke({**arguments, **injected}, config)

    def split(arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if not beside:
            return arguments, {}
        own = {k: v for k, v in arguments.items() if k not in beside}
        return own, {k: v for k, v in arguments.items() if k in beside}

    def run(config: RunnableConfig, **arguments: Any) -> Any:
        own, injected = split(arguments)
        token = _BESIDE.set((config, injected))
        try:
            return guarded_run(**own)
        finally:
            _BESIDE.reset(token)

    async def arun(config: RunnableConfig, **arguments: Any) -> Any:
        own, injected = split(arguments)
        token = _BESIDE.set((config, injected))
        try:
            return await guarded_arun(**own)
        finally:
            _BESIDE.reset(token)

    return run, arun


def _single_facade(
    tool: Tool, guard: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """:func:`_facade` for a single-input ``Tool``: the one input is the argument."""

    @guard
    def guarded_run(tool_input: Any) -> Any:
        return tool.invoke(tool_input, _CONFIG.get(None))

    @guard
    async def guarded_arun(tool_input: Any) -> Any:
        return await tool.ainvoke(tool_input, _CONFIG.get(None))

    def run(tool_input: Any, config: RunnableConfig) -> Any:
        token = _CONFIG.set(config)
        try:
            return guarded_run(tool_input)
        finally:
            _CONFIG.reset(token)

    async def arun(tool_input: Any, config: RunnableConfig) -> Any:
        token = _CONFIG.set(config)
        try:
            return await guarded_arun(tool_input)
        finally:
            _CONFIG.reset(token)

    return run, arun


def _is_function_tool(tool: BaseTool) -> bool:
    """A StructuredTool / Tool that runs its ``func`` / ``coroutine`` (a subclass
    with its own ``_run`` or ``_arun`` does not: it is guarded as a whole)."""
    for base in (StructuredTool, Tool):
        if isinstance(tool, base):
            cls = type(tool)
            return cls._run is base._run and cls._arun is base._arun
    return False


def guard_tool(
    tool: BaseTool,
    *,
    tool_id: str | None = None,
    instance_name: str = "default",
    deny_message: DenyMessage = denial_message,
) -> BaseTool:
    """A copy of ``tool`` whose every run (``invoke``, ``ainvoke``, ``run``, ...)
    passes ``d2_guard(tool_id)`` first; ``tool_id`` defaults to the tool's name.
    A tool this module already guarded is returned as it is."""
    if not isinstance(tool, BaseTool):
        raise TypeError(f"guard_tool takes a langchain BaseTool, got {tool!r}")
    if (tool.metadata or {}).get(TOOL_ID_KEY) is not None:
        return tool
    tool_id = tool_id or tool.name
    refuse = _refuse(deny_message, with_artifact=tool.response_format == "content_and_artifact")
    guard = d2_guard(tool_id, on_deny=refuse, instance_name=instance_name)
    metadata = {**(tool.metadata or {}), TOOL_ID_KEY: tool_id}
    if _is_function_tool(tool):
        func, coroutine = getattr(tool, "func", None), getattr(tool, "coroutine", None)
        copied = tool.model_copy(
            update={
                "func": None if func is None else _hide(guard(func), _function_context(tool, func)),
                "coroutine": (
                    None
                    if coroutine is None
                    else _hide(guard(coroutine), _function_context(tool, coroutine))
                ),
                "metadata": metadata,
            }
        )
        return cast("BaseTool", copied)
    if isinstance(tool, Tool):  # a single-input Tool with its own _run / _arun
        run1, arun1 = _single_facade(tool, guard)
        return Tool(
            name=tool.name,
            description=tool.description,
            func=run1,
            coroutine=arun1,
            return_direct=tool.return_direct,
            handle_tool_error=tool.handle_tool_error,
            handle_validation_error=tool.handle_validation_error,
            tags=tool.tags,
            metadata=metadata,
        )
    run, arun = _facade(tool, guard)
    return StructuredTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema if tool.args_schema is not None else tool.get_input_schema(),
        func=run,
        coroutine=arun,
        return_direct=tool.return_direct,
        handle_tool_error=tool.handle_tool_error,
        handle_validation_error=tool.handle_validation_error,
        tags=tool.tags,
        metadata=metadata,
    )


def guard_tools(
    tools: Iterable[BaseTool],
    *,
    tool_ids: ToolIds = None,
    instance_name: str = "default",
    deny_message: DenyMessage = denial_message,
) -> list[BaseTool]:
    """Guarded copies of ``tools`` (see :func:`guard_tool`). ``tool_ids`` maps tool
    names to D2 tool ids (default: the name is the id)."""
    resolve = tool_id_resolver(tool_ids)
    return [
        guard_tool(
            t,
            tool_id=resolve(t.name),
            instance_name=instance_name,
            deny_message=deny_message,
        )
        for t in tools
    ]


def permitted_tools(
    tools: Iterable[BaseTool], *, tool_ids: ToolIds = None, instance_name: str = "default"
) -> list[BaseTool]:
    """The tools the current user may call, in order: bind only these to a model.

    A guarded tool is checked under the id it was guarded with; any other under
    ``tool_ids`` (default: its name). Call it per request, after ``set_user``.
    """
    resolve = tool_id_resolver(tool_ids)
    permitted = []
    for tool in tools:
        tool_id = (tool.metadata or {}).get(TOOL_ID_KEY) or resolve(tool.name)
        if is_allowed(tool_id, instance_name=instance_name):
            permitted.append(tool)
    return permitted
