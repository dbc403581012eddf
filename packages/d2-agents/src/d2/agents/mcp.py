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
- ``tools/call`` of a tool the user may not call (``is_allowed`` is false, whatever
  the reason) is answered before the SDK looks at the arguments, with the very
  error an unknown tool gets (``Unknown tool: <name>``): a hidden tool cannot be
  told from a missing one, nor its parameters probed;
- every other call passes ``d2_guard``. On an ``MCPServer`` each registered tool's
  own function is guarded, so input rules bind to its parameters (defaults applied)
  and output rules see its return value. On a low-level ``Server`` the
  ``tools/call`` handler is guarded:

  - input rules read the call's ``arguments`` as the client sent them: there is no
    signature, so a handler's own defaults are invisible to them. Mark the
    arguments a rule depends on ``required: true`` (a missing one then denies);
  - output rules read the handler's ``CallToolResult`` as JSON: its
    ``structured_content``, and each text block on its own as the JSON object or
    array it holds (other text, which has no fields, refuses the result when a
    field rule meets it; ``deny_if_patterns`` and ``max_bytes`` read it whole);
    when there are several values, the rules apply to each (as to the items of a
    list). When the tool's grants have output rules, JSON text goes out written
    anew from the checked value, and JSON text that gives a key twice is refused
    (``output_validation``). Other content (images, audio, resources) cannot be
    read: a field rule meeting it refuses the result (``output_validation``);
    ``deny_if_patterns`` and ``max_bytes`` read its JSON;
- a guardrail denial is an MCP tool error (``isError: true``, text
  ``deny_message(err)``): the model reads it, the session goes on;
- a call that waits for a person (D2's ``ApprovalRequiredError``) and a call over a
  budget are MCP tool errors too, whose text says so (``approval required for
  payments.refund: request <id>, approvers: finance_lead``; ``budget exceeded for
  web.search; retry after 42s``) and whose ``structuredContent`` carries the same
  facts as JSON (``d2_reason``, ``d2_approval_request``, ``d2_approvers``,
  ``d2_expires_at``; ``d2_retry_after``). An approver (another user holding one of
  the roles) calls ``d2.approve(id)`` outside the session; the client's next
  identical call then runs once.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, MutableMapping
from contextvars import ContextVar
from typing import Any, TypeVar

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
    PermissionDeniedError,
    UserContext,
    d2_guard,
    is_allowed,
)
from d2.core.evaluate import evaluator_for

from ._common import (
    DenyMessage,
    ToolIds,
    approval_details,
    approval_of,
    denial_message,
    tool_id_resolver,
)
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
_GATES = 4_096  # guarded tool ids of a low-level server remembered (same)

_logger = logging.getLogger(__name__)
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Bounded(OrderedDict[_K, _V]):
    """A mapping that drops its least recently used entry past ``bound`` entries
    (setting or :meth:`hit` makes an entry the most recent)."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self._bound = bound

    def __setitem__(self, key: _K, value: _V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self._bound:
            self.popitem(last=False)

    def hit(self, key: _K) -> _V | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


def _structured(err: PermissionDeniedError) -> dict[str, Any] | None:
    """The JSON facts of a denial the client can act on (an approval to ask for, a
    budget to wait for), for a tool error's ``structuredContent``; else ``None``."""
    request = approval_of(err)
    if request is not None:
        return approval_details(request)
    if err.reason == "budget_exceeded":
        return {
            "d2_reason": err.reason,
            "d2_tool_id": err.tool_id,
            "d2_retry_after": err.retry_after,
        }
    return None


def _unknown_tool(name: str) -> types.CallToolResult:
    """The answer to a tool the user may not call: word for word what ``MCPServer``
    answers for a tool it does not have."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"Unknown tool: {name}")], is_error=True
    )


# The handler run of the call being guarded: it travels beside the arguments, so the
# bound arguments (what input rules read, what an approval request digests) are the
# call's arguments alone.
_HANDLE: ContextVar[Callable[[], Awaitable[Any]] | None] = ContextVar(
    "d2_agents_mcp_handle", default=None
)


async def _through(**arguments: Any) -> Any:
    """What a low-level server's tool calls pass through: ``d2_guard`` reads the
    call's arguments from the keywords; the handler runs inside and what it returns
    is the value output rules read (:class:`_Readable`)."""
    handle = _HANDLE.get()
    if handle is None:  # pragma: no cover - defensive: only _call sets it
        raise RuntimeError("a guarded MCP tools/call ran outside its handler")
    return await handle()


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
_URL_SAFE = str.maketrans("-_", "+/")


def _base64(text: str) -> bytes:
    """The bytes base64 ``text`` holds as the most lenient decoder reads it (line
    breaks, other characters outside the alphabet and missing padding ignored,
    the URL-safe alphabet too)."""
    letters = _NOT_BASE64.sub("", text.translate(_URL_SAFE))
    if len(letters) % 4 == 1:  # one stray letter decodes to nothing
        letters = letters[:-1]
    return base64.b64decode(letters + "=" * (-len(letters) % 4))


def _decoded(text: str) -> str | None:
    """The UTF-8 text base64 ``text`` holds (read leniently, see :func:`_base64`),
    or ``None`` (bytes that are not UTF-8 text: an image)."""
    try:
        return _base64(text).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _readings(raw: bytes) -> list[str]:
    """The texts a client could make of ``raw`` in any charset: UTF-8 with bad bytes
    replaced (the ASCII of any 8-bit charset stays as it is), and, when it holds
    NUL bytes, the bytes without them (the ASCII of UTF-16 and UTF-32)."""
    found = [raw.decode("utf-8", errors="replace")]
    if b"\x00" in raw:
        found.append(raw.replace(b"\x00", b"").decode("latin-1"))
    return found


def _data_uri(text: str) -> bytes | None:
    """The bytes a ``data:`` URI (RFC 2397) holds, or ``None`` (not one)."""
    if text[:5].lower() != "data:" or "," not in text:
        return None
    header, _, body = text[5:].partition(",")
    if header.lower().endswith(";base64"):
        return _base64(body)
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(body)


def _leaves(value: Any, out: list[str]) -> None:
    """Append every key, string and number of a JSON value to ``out``, as it is
    (no JSON escapes: a line break stays one), and the text clients could make of
    encoded data: a resource's ``blob`` and any ``data:`` URI in every charset
    (:func:`_readings`), a block's ``data`` (an image, audio) when it is UTF-8 text."""
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(str(key))
            _leaves(item, out)
            if isinstance(item, str) and key == "blob":
                out.extend(_readings(_base64(item)))
            elif isinstance(item, str) and key == "data":
                text = _decoded(item)
                if text is not None:
                    out.append(text)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _leaves(item, out)
    elif isinstance(value, str):
        out.append(value)
        raw = _data_uri(value)
        if raw is not None:
            out.extend(_readings(raw))
    elif value is not None and not isinstance(value, bool):
        out.append(str(value))


class _Opaque:
    """Content the output rules cannot read as fields (an image, audio, a
    resource, a resource link, a result that is not a ``CallToolResult``): a field
    rule that meets it refuses the result; ``deny_if_patterns`` and ``max_bytes``
    read its text (``str``): every key, string and number in it, one per line,
    unescaped (a secret on its own line in a resource's text is on its own line
    here too), and encoded data also as the text clients could make of it (see
    :func:`_leaves`; an image's data only when it is UTF-8 text)."""

    __slots__ = ("text",)

    def __init__(self, value: Any) -> None:
        try:
            if hasattr(value, "model_dump"):
                value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
            else:
                value = json.loads(json.dumps(value, default=str))
            found: list[str] = []
            _leaves(value, found)
            self.text: str | None = "\n".join(found)
        except Exception:  # unreadable: any rule that reads it refuses (fail closed)
            self.text = None

    def __str__(self) -> str:
        if self.text is None:
            raise TypeError("content that cannot be read cannot be checked")
        return self.text

    def __repr__(self) -> str:
        return "<MCP content the output rules cannot read>"


class _Unreadable:
    """A text block that looks like JSON but cannot be read as one value (a key
    given twice, so readers disagree on its value; nesting too deep to parse): any
    output rule that meets it refuses the result (``output_validation``)."""

    __slots__ = ()

    def __str__(self) -> str:  # deny_if_patterns and max_bytes cannot read it either
        raise TypeError("JSON text that cannot be read as one value cannot be checked")

    def __repr__(self) -> str:
        return "<MCP text the output rules cannot read>"


class _DuplicateKey(ValueError):
    """A JSON object names one key twice."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _DuplicateKey("a key is given twice")
    return value


class _Text:
    """A text block that is not one JSON object or array (plain text, a code fence,
    NDJSON, a JSON string or number): field rules cannot find fields in it, so a
    field rule that meets it refuses the result (``output_validation``) rather than
    let it pass unread; ``deny_if_patterns`` and ``max_bytes`` read its text (a
    JSON string as the string it holds)."""

    __slots__ = ("json", "text", "value")

    def __init__(self, text: str, value: Any = None, is_json: bool = False) -> None:
        self.text = value if is_json and isinstance(value, str) else text
        self.value = value
        self.json = is_json

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return "<MCP text the field rules cannot read>"


def _parse(text: str) -> tuple[Any, bool]:
    """``(value, True)`` for a JSON object or array; JSON text that gives a key
    twice (or nests too deeply) is :class:`_Unreadable`, any other text
    :class:`_Text`."""
    try:
        value = json.loads(text, object_pairs_hook=_pairs)
    except (_DuplicateKey, RecursionError):
        return _Unreadable(), True
    except ValueError:
        return _Text(text), False
    if isinstance(value, (dict, list)):
        return value, True
    return _Text(text, value, is_json=True), True


def _dumps(value: Any) -> str:
    """The JSON text of a checked value (UTF-8 unless it holds a lone surrogate)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, default=str)
    return text


def _output_checked(tool_id: str, instance_name: str) -> bool:
    """Whether an allowing grant of ``tool_id`` has output rules (or there is no
    policy to tell): then a result goes out rebuilt from the values they checked."""
    policy = evaluator_for(instance_name).policy
    if policy is None:
        return True
    return any(g.allow and g.output is not None for g in policy.rules_for(tool_id).grants)


def _unread_of(block: types.TextContent) -> dict[str, Any]:
    """What of a text block output rules did not read, to leave out: its ``_meta``
    and the annotations that can carry any data (``lastModified``, a free string;
    ``priority``, a float of fifteen digits); ``audience`` stays as the set of
    roles it names, sorted (a list of any length would carry bits)."""
    drop: dict[str, Any] = {"meta": None}
    notes = block.annotations
    if notes is not None:
        roles = sorted(set(notes.audience)) if notes.audience else None
        kept = types.Annotations(audience=roles) if roles else None
        drop["annotations"] = kept
    return drop


class _Readable:
    """A low-level handler's result as the JSON values output rules can read, and
    the way back from their sanitized values to a ``CallToolResult``.

    The values: the ``structured_content`` (when present), then each content block
    on its own (a text block that repeats the structured content included): a text
    block as the JSON object or array it holds (other text as :class:`_Text`, JSON
    text with a key given twice as :class:`_Unreadable`), any other block as
    :class:`_Opaque`. One value is read as it is; several as a list (the rules
    apply to each)."""

    __slots__ = ("original", "parsed", "result", "structured", "values", "view")

    def __init__(self, result: Any) -> None:
        self.original = result
        self.result: types.CallToolResult | None = None
        self.values: list[Any] = []
        self.parsed: list[bool] = []  # per value: read from JSON text
        self.structured = False
        if isinstance(result, types.CallToolResult):
            self.result = result
        elif isinstance(result, dict):
            try:
                self.result = types.CallToolResult.model_validate(result)
            except Exception:  # not a tool result: unreadable
                self.result = None
        if self.result is None:
            self.values.append(_Opaque(result))
            self.parsed.append(False)
        else:
            self._read(self.result)
        self.view: Any = self.values[0] if len(self.values) == 1 else list(self.values)

    def _read(self, result: types.CallToolResult) -> None:
        if result.structured_content is not None:
            self.structured = True
            self.values.append(result.structured_content)
            self.parsed.append(False)
        for block in result.content:
            if not isinstance(block, types.TextContent):
                self.values.append(_Opaque(block))
                self.parsed.append(False)
                continue
            value, parsed = _parse(block.text)
            self.values.append(value)
            self.parsed.append(parsed)

    def rebuilt(self, sanitized: Any, checked: bool = True) -> Any:
        """The result carrying ``sanitized`` (what the output rules made of
        :attr:`view`). ``checked``: output rules may have read it; then every JSON
        text block is written anew from its checked value (never the upstream's
        bytes). Otherwise, when nothing changed, the original."""
        if sanitized is self.view and not checked:
            return self.original
        values = [sanitized] if len(self.values) == 1 else sanitized
        if self.result is None:
            if sanitized is self.view:
                return self.original
            raise ValueError("the output rules changed the shape of the result")
        if not isinstance(values, list) or len(values) != len(self.values):
            raise ValueError("the output rules changed the shape of the result")
        result = self.result
        first = 1 if self.structured else 0
        structured = values[0] if self.structured else result.structured_content
        # ``_meta`` (of the result, of a text block) and a text block's free-text
        # annotation (``lastModified``) are no values the rules read: under output
        # rules they do not go out (a block of another kind is read whole)
        unread: dict[str, Any] = {"meta": None} if checked else {}
        content: list[types.ContentBlock] = []
        for n, block in enumerate(result.content, start=first):
            new = values[n]
            if not isinstance(block, types.TextContent) or isinstance(new, _Unreadable):
                content.append(block)
                continue
            drop = _unread_of(block) if checked else {}
            changed = new is not self.values[n]
            if not changed and not (checked and self.parsed[n]):
                content.append(block.model_copy(update=drop) if drop else block)
                continue
            if isinstance(new, _Text):  # never changed by the rules: read as text
                text = _dumps(new.value) if new.json else new.text
            else:
                text = _dumps(new)
            content.append(block.model_copy(update={"text": text, **drop}))
        if checked:  # a free string on the newest revision: the core value only
            unread["result_type"] = "complete"
        return result.model_copy(
            update={"content": content, "structured_content": structured, **unread}
        )


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
        self._sessions: _Bounded[Hashable, UserContext] = _Bounded(_SESSIONS)
        self._instance = instance_name
        self._deny_message = deny_message
        self._tools: ToolManager | None = None  # an MCPServer's registry
        # low-level servers: one gate per tool id, the least recently used dropped
        self._gates: _Bounded[str, Callable[..., Awaitable[Any]]] = _Bounded(_GATES)

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

    def refuse_hidden(self, server: Server[Any]) -> None:
        """Answer ``tools/call`` of a tool the current user may not call before
        ``server``'s own handler runs (the SDK validates a call's arguments and runs
        its resolvers inside that handler, before the tool's function): the same
        answer an unknown tool gets, in the SDK's own response envelope."""
        entry = server.get_request_handler("tools/call")
        if entry is None:
            raise ConfigurationError(
                "this MCP server has no tools/call handler to guard; this version of "
                "the mcp SDK is not supported by d2.agents.mcp"
            )
        inner = entry.handler

        async def call_tool(ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
            name = getattr(params, "name", None)
            if not isinstance(name, str) or not self._allowed(name):
                return self._refused(name)
            return await inner(ctx, params)

        server.add_request_handler("tools/call", entry.params_type, call_tool)

    def _refused(self, name: object) -> types.CallToolResult:
        _logger.info("D2 refused tools/call of %r: not allowed for the current user", name)
        return _unknown_tool(name if isinstance(name, str) else repr(name))

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
        context = getattr(tool, "context_kwarg", None)
        if isinstance(context, str):  # the request's Context: how the call runs, not what
            guarded.__dict__["_d2_arguments"].hidden = frozenset((context,))
        setattr(guarded, _MARK, tool_id)
        tool.fn = guarded

    def _tool_error(self, err: PermissionDeniedError) -> Any:
        if _structured(err) is not None:  # an approval or a budget: the tool error as a result
            return self._denied(err)
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
        if not self._allowed(params.name):  # before the handler sees the call
            return self._refused(params.name)
        tool_id = self._tool_id(params.name)
        gate = self._gates.hit(tool_id)
        if gate is None:
            gate = d2_guard(tool_id, instance_name=self._instance)(_through)
            self._gates[tool_id] = gate
        readable: list[_Readable] = []
        checked: list[bool] = []

        async def handle() -> Any:
            checked.append(_output_checked(tool_id, self._instance))  # the rules just chosen
            result = _Readable(await inner(ctx, params))
            readable.append(result)
            return result.view

        token = _HANDLE.set(handle)
        try:
            sanitized = await gate(**(params.arguments or {}))
        except PermissionDeniedError as err:
            return self._denied(err)
        finally:
            _HANDLE.reset(token)
        try:
            checks = checked[0] or _output_checked(tool_id, self._instance)
            return readable[0].rebuilt(sanitized, checks)  # type: ignore[no-any-return]
        except ValueError:  # defensive: the rules never change its shape; fail closed
            return self._denied(
                PermissionDeniedError(
                    f"{tool_id!r} result refused: it cannot be rebuilt after its output rules",
                    tool_id=tool_id,
                    reason="output_validation",
                )
            )

    def _denied(self, err: PermissionDeniedError) -> types.CallToolResult:
        text = self._deny_message(err)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content=_structured(err),
            is_error=True,
        )


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
    is the text of the tool error of a call a guardrail refuses (a tool the user may
    not call at all is answered ``Unknown tool: <name>``, like a missing one).
    Returns the installed middleware.

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
        lowlevel = getattr(server, "_lowlevel_server", None)  # no public accessor either
        if not isinstance(lowlevel, Server):
            raise ConfigurationError(
                "cannot reach this MCPServer's request handlers; this version of the mcp "
                "SDK is not supported by d2.agents.mcp"
            )
        guard.refuse_hidden(lowlevel)
    else:
        guard.guard_handler(server)
    server.middleware.append(guard)
    return guard
