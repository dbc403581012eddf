"""D2 for MCP servers built with the official ``mcp`` SDK (2.x): one call guards
every tool of a server, ``MCPServer`` (formerly FastMCP) or low-level ``Server``::

    from d2.agents.mcp import guard_server

    def identify(token):  # the request's AccessToken (None when unauthenticated)
        if token is None:
            return None  # no user: every tool is hidden and refused
        return token.subject, token.claims.get("roles", [])

    guard_server(server, identify=identify)

Through the SDK's own extension points:

- a middleware on ``server.middleware`` wraps every request: it maps the request's
  access token to a user with ``identify`` and acts as that user for the request
  only. The user's request scope (call history, data-flow facts) lives as long as
  the MCP session, so sequence and data-flow rules span the session's calls;
- ``tools/list`` answers only the tools the user may call (``is_allowed``);
- every call passes ``d2_guard``. On an ``MCPServer`` each registered tool's own
  function is guarded, so input rules bind to its parameters and output rules see
  its return value. On a low-level ``Server`` the ``tools/call`` handler is guarded,
  with the call's ``arguments`` as keywords and its ``CallToolResult`` as output;
- a denial is an MCP tool error (``isError: true``, text ``deny_message(err)``):
  the model reads it, the session goes on.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, MutableMapping
from typing import Any

try:
    from mcp import types
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.auth.provider import AccessToken
    from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.mcpserver.tools import Tool, ToolManager
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'd2.agents.mcp needs the MCP SDK 2.x (mcp.server.mcpserver): pip install "d2-sdk[mcp]"'
    ) from exc

from d2.core import (
    ConfigurationError,
    MissingPolicyError,
    PermissionDeniedError,
    UserContext,
    d2_guard,
    get_policy_manager,
    is_allowed,
)

from ._common import DenyMessage, ToolIds, denial_message, tool_id_resolver
from ._scope import enter, leave

__all__ = ["Identify", "Identity", "MCPGuard", "SessionKey", "guard_server"]

Identity = tuple[str | int, Iterable[str] | str]
"""``(user_id, roles)`` of the caller."""

Identify = Callable[[AccessToken | None], Identity | Awaitable[Identity | None] | None]
"""Maps the request's access token (``None`` when unauthenticated) to an
:data:`Identity`, or to ``None`` for "no user" (every tool hidden and refused).
May be ``async``."""

SessionKey = Callable[[ServerRequestContext[Any, Any]], Hashable | None]
"""Names the session whose request scope a request joins (``None``: this request
alone)."""

_STATE_KEY = "d2.agents.mcp"  # our slot in Connection.state
_UNGUARDED = frozenset({"initialize", "ping", "server/discover"})
_MARK = "__d2_agents_tool_id__"  # set on functions this module guarded
_SESSIONS = 10_000  # custom session keys remembered (least recently used dropped)


class _Sessions(OrderedDict[Hashable, UserContext]):
    """Request scopes by session key, the least recently used dropped past a bound."""

    def __setitem__(self, key: Hashable, value: UserContext) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > _SESSIONS:
            self.popitem(last=False)


async def _through(_d2_call: Callable[[], Awaitable[Any]], /, **arguments: Any) -> Any:
    """What a low-level server's tool calls pass through: ``d2_guard`` reads the
    call's arguments from the keywords, the handler runs inside."""
    return await _d2_call()


def _connection_state(ctx: ServerRequestContext[Any, Any]) -> MutableMapping[str, Any] | None:
    """The per-connection scratch state (``Connection.state``) of this request.

    The SDK gives handlers no public path from a request to its connection, so this
    reads the session's ``_connection``; without one, a request is its own session.
    """
    state = getattr(getattr(ctx.session, "_connection", None), "state", None)
    return state if isinstance(state, dict) else None


class MCPGuard:
    """The middleware :func:`guard_server` installs; see the module docstring.

    It is a plain ``ServerMiddleware``: ``await guard(ctx, call_next)``.
    """

    def __init__(
        self,
        *,
        identify: Identify,
        tool_ids: ToolIds = None,
        session_key: SessionKey | None = None,
        instance_name: str = "default",
        deny_message: DenyMessage = denial_message,
    ) -> None:
        if not callable(identify):
            raise ConfigurationError(
                f"identify must be a function of the access token, got {identify!r}"
            )
        self._identify = identify
        self._tool_id = tool_id_resolver(tool_ids)
        self._session_key = session_key
        self._sessions = _Sessions()
        self._instance = instance_name
        self._deny_message = deny_message
        self._tools: ToolManager | None = None  # an MCPServer's registry
        self._gates: dict[str, Callable[..., Awaitable[Any]]] = {}  # low-level servers

    # -- the middleware ------------------------------------------------------------
    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Act as the request's user around the rest of the chain; filter listings."""
        if ctx.request_id is None or ctx.method in _UNGUARDED:
            return await call_next(ctx)
        user_id, roles = await self._caller()
        store, key = self._session(ctx)
        previous = store.get(key) if store is not None else None
        current, token = enter(user_id, roles, previous)
        if store is not None:
            store[key] = current
        try:
            if ctx.method == "tools/call" and self._tools is not None:
                self._guard_registered(ctx)
            result = await call_next(ctx)
            return self._visible(result) if ctx.method == "tools/list" else result
        finally:
            leave(token)

    async def _caller(self) -> tuple[str | int | None, Iterable[str] | str]:
        identity = self._identify(get_access_token())
        if inspect.isawaitable(identity):
            identity = await identity
        if identity is None:
            return None, ()
        if not isinstance(identity, tuple) or len(identity) != 2:
            raise ConfigurationError(
                f"identify must return (user_id, roles) or None, got {identity!r}"
            )
        return identity

    def _session(
        self, ctx: ServerRequestContext[Any, Any]
    ) -> tuple[MutableMapping[Any, UserContext] | None, Hashable]:
        if self._session_key is not None:
            key = self._session_key(ctx)
            return (self._sessions, key) if key is not None else (None, None)
        return _connection_state(ctx), _STATE_KEY

    def _allowed(self, name: object) -> bool:
        return isinstance(name, str) and is_allowed(
            self._tool_id(name), instance_name=self._instance
        )

    def _visible(self, result: HandlerResult) -> HandlerResult:
        """A ``tools/list`` result with only the tools the current user may call."""
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            listed = [
                t for t in result["tools"] if isinstance(t, dict) and self._allowed(t.get("name"))
            ]
            filtered = {**result, "tools": listed}
            if "cacheScope" in filtered:
                filtered["cacheScope"] = "private"  # the listing is this user's
            return filtered
        if isinstance(result, types.ListToolsResult):
            tools = [t for t in result.tools if self._allowed(t.name)]
            return result.model_copy(update={"tools": tools, "cache_scope": "private"})
        return result

    # -- MCPServer: guard each registered tool's function ---------------------------
    def guard_tools(self, registry: ToolManager) -> None:
        """Guard every tool in an ``MCPServer``'s registry, and remember the registry
        so tools registered later are guarded before their first call."""
        self._tools = registry
        for tool in registry.list_tools():
            self._guard_tool(tool)

    def _guard_registered(self, ctx: ServerRequestContext[Any, Any]) -> None:
        name = (ctx.params or {}).get("name")
        if self._tools is None or not isinstance(name, str):
            return
        tool = self._tools.get_tool(name)
        if tool is not None:
            self._guard_tool(tool)

    def _guard_tool(self, tool: Tool) -> None:
        if getattr(tool.fn, _MARK, None) is not None:
            return
        tool_id = self._tool_id(tool.name)
        guarded = d2_guard(tool_id, on_deny=self._tool_error, instance_name=self._instance)(tool.fn)
        setattr(guarded, _MARK, tool_id)
        tool.fn = guarded

    def _tool_error(self, err: PermissionDeniedError) -> Any:
        raise ToolError(self._deny_message(err)) from err

    # -- low-level Server: guard the tools/call handler ----------------------------
    def guard_handler(self, server: Server[Any]) -> None:
        """Route a low-level server's ``tools/call`` handler through ``d2_guard``."""
        entry = server.get_request_handler("tools/call")
        if entry is None:
            raise ConfigurationError(
                "this MCP server has no tools/call handler (on_call_tool) to guard; "
                "register the tools before calling guard_server()"
            )
        inner = entry.handler

        async def call_tool(ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
            return await self._call(inner, ctx, params)

        server.add_request_handler("tools/call", entry.params_type, call_tool)

    async def _call(
        self,
        inner: Callable[[ServerRequestContext[Any, Any], Any], Awaitable[HandlerResult]],
        ctx: ServerRequestContext[Any, Any],
        params: types.CallToolRequestParams,
    ) -> HandlerResult:
        tool_id = self._tool_id(params.name)
        try:
            gate = self._gates.get(tool_id)
            if gate is None:
                # RBAC first: names the policy refuses never become guarded tool ids
                self._refuse_unless_allowed(tool_id)
                gate = d2_guard(tool_id, instance_name=self._instance)(_through)
                self._gates[tool_id] = gate
            result = await gate(lambda: inner(ctx, params), **(params.arguments or {}))
        except PermissionDeniedError as err:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=self._deny_message(err))],
                is_error=True,
            )
        if isinstance(result, dict) and "content" in result:  # sanitized by output rules
            return types.CallToolResult.model_validate(result)
        return result  # type: ignore[no-any-return]

    def _refuse_unless_allowed(self, tool_id: str) -> None:
        if is_allowed(tool_id, instance_name=self._instance):
            return
        try:
            err = get_policy_manager(self._instance).explain(tool_id).error
        except ConfigurationError:
            err = MissingPolicyError(
                f"{tool_id!r} denied: D2 instance {self._instance!r} is not configured",
                tool_id=tool_id,
            )
        raise err or PermissionDeniedError(f"{tool_id!r} denied", tool_id=tool_id)


def guard_server(
    server: MCPServer[Any] | Server[Any],
    *,
    identify: Identify,
    tool_ids: ToolIds = None,
    session_key: SessionKey | None = None,
    instance_name: str = "default",
    deny_message: DenyMessage = denial_message,
) -> MCPGuard:
    """Guard every tool of an MCP ``server`` (``MCPServer`` or low-level ``Server``).

    ``identify(token)`` maps the request's ``AccessToken`` (``None`` when the request
    is unauthenticated) to ``(user_id, roles)``, or ``None`` for no user; it may be
    async. ``tool_ids`` maps tool names to D2 tool ids (default: the name is the id).
    ``session_key(ctx)`` names the session whose call history a request joins; by
    default it is the connection (stdio, SSE, stateful Streamable HTTP). On the
    stateless 2026-07-28 transport every request is its own connection, so give a key
    the client cannot reset at will (for example a session claim of the access
    token), or sequence and data-flow rules only see one call. ``deny_message(err)``
    is the text of a refused call's tool error. Returns the installed middleware.

    Register the tools first: on an ``MCPServer``, tools added later are guarded on
    their first call; on a low-level ``Server`` the ``tools/call`` handler must exist.
    """
    if not isinstance(server, (MCPServer, Server)):
        raise ConfigurationError(f"guard_server takes an MCPServer or a Server, got {server!r}")
    if any(isinstance(m, MCPGuard) for m in server.middleware):
        raise ConfigurationError("this MCP server is already guarded by D2")
    guard = MCPGuard(
        identify=identify,
        tool_ids=tool_ids,
        session_key=session_key,
        instance_name=instance_name,
        deny_message=deny_message,
    )
    if isinstance(server, MCPServer):
        registry = getattr(server, "_tool_manager", None)  # no public accessor in mcp 2.x
        if not isinstance(registry, ToolManager):
            raise ConfigurationError(
                "cannot reach this MCPServer's tool registry; this version of the mcp "
                "SDK is not supported by d2.agents.mcp"
            )
        guard.guard_tools(registry)
    else:
        guard.guard_handler(server)
    server.middleware.append(guard)
    return guard
