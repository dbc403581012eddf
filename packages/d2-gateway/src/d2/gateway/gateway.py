"""The gateway: one MCP server (the SDK's low-level ``Server``) in front of the
upstreams, with every request decided by d2-core.

- ``tools/list`` answers exactly the tools the session's user may call
  (``is_allowed`` of each ``NAME.TOOL``), under their shown names ``NAME__TOOL``.
- ``tools/call`` of a name that is not listed for the user, or does not exist,
  gets the same answer (``Unknown tool: <name>``, a tool error). Every other call
  passes a ``d2_guard`` of its tool id whose body calls the upstream: argument
  rules, sequences, data flow, budgets, approvals, the decision log and metrics
  are d2-core's (each decision labelled with its ``upstream``); output rules read
  the upstream's result (structured content and JSON text) before the client
  sees it. A refusal is a tool error whose text and
  ``structuredContent`` say what was refused and why; the upstream is not called.
- One MCP session is one D2 request: a :class:`~d2.core.UserContext` made at the
  session's first request carries its history, facts and per-request budgets, and
  is attached around each of the session's requests. A session is bound to the
  identity that opened it: a request of another identity in it is refused. A
  stdio gateway (one client) is one D2 request for the whole process; over HTTP a
  request outside a session (a stateless protocol revision) is refused.
- Resources and prompts are exposed only when the policy grants
  ``resource:NAME:<uri>`` / ``prompt:NAME:<name>`` (default deny) by a grant that
  names them (``resource:...``, ``prompt:...``, a tool group): a bare ``*`` grant
  opens tools only.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import anyio
from d2.agents._common import approval_details, approval_of, denial_message
from d2.agents.mcp import _output_checked, _Readable
from d2.core import (
    PermissionDeniedError,
    UserContext,
    attach,
    d2_guard,
    detach,
    get_user_context,
    is_allowed,
)
from d2.core.evaluate import evaluator_for
from d2.core.labels import set_tool_labels
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.shared.exceptions import MCPError

from ._version import __version__
from .config import UpstreamSpec
from .naming import Entry, Table, resource_id
from .upstream import DEFAULT_MAX_RESULT_BYTES, ResultTooLarge, Upstream, UpstreamUnavailable

__all__ = ["Gateway", "Identity", "USER_SCOPE_KEY"]

Identity = tuple[str, tuple[str, ...]]
"""``(user_id, roles)`` of the caller."""

USER_SCOPE_KEY = "d2.user"
"""The ASGI scope key where the identity layer in front of ``/mcp`` puts the
verified ``(user_id, roles)``; plain headers are never read."""

_STATE_KEY = "d2.gateway"
_logger = logging.getLogger("d2.gateway")

_HANDLE: ContextVar[Callable[[], Awaitable[Any]] | None] = ContextVar(
    "d2_gateway_handle", default=None
)


async def _upstream_call(**arguments: Any) -> Any:
    """The body every gate guards: the upstream call travels beside the
    arguments (in a context variable), so input rules and approval digests read
    the call's arguments alone."""
    handle = _HANDLE.get()
    if handle is None:  # pragma: no cover - defensive: only the gateway sets it
        raise RuntimeError("a guarded upstream call ran outside the gateway")
    return await handle()


def _text_result(text: str, structured: dict[str, Any] | None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=structured,
        is_error=True,
    )


def _unknown_tool(name: object) -> types.CallToolResult:
    shown = name if isinstance(name, str) else repr(name)
    return _text_result(f"Unknown tool: {shown}", None)


def _after(path: str | None, marker: str) -> str | None:
    if not path or marker not in path:
        return None
    return path.split(marker, 1)[1] or None


_RBAC_REASONS = frozenset({"not_granted", "explicit_deny", "unknown_tool"})
"""Refusals of the RBAC step, which an audit-mode policy lets run."""

_OUTPUT_KEYS = {  # output rules that are not about one field: what a refusal says
    "max_bytes": "the result is larger than the policy allows",
    "deny_if_patterns": "the result holds text the policy denies",
    "require_fields_absent": "the result holds a field the policy forbids",
}


def refusal_text(err: PermissionDeniedError) -> str:
    """What a client reads for a refused call: the tool, the reason code and, for a
    guardrail, the argument or output field whose rule refused it, in general
    words. Never a value, a pattern, a list of allowed values, a data-flow label or
    a role: the client is not the policy's author (the decision log has the
    details). Approvals and budgets read as in the SDK (request id and approver
    roles; when to retry)."""
    if approval_of(err) is not None or err.reason == "budget_exceeded":
        return denial_message(err)
    step = err.trace[-1] if err.trace else None
    path = step.path if step is not None else None
    if err.reason == "input_validation":
        name = _after(path, ".conditions.input.")
        why = (
            f"argument {name!r} did not pass its rule"
            if name
            else "an argument did not pass its rule"
        )
    elif err.reason in ("output_validation", "output_sanitization"):
        key = _after(path, ".conditions.output.")
        special = key.split("[", 1)[0] if key else None
        if key is None:
            why = "the result could not be checked by the output rules"
        elif special in _OUTPUT_KEYS:
            why = _OUTPUT_KEYS[special]
        else:
            why = f"the result did not pass the rule on output field {key!r}"
    elif err.reason == "sequence_violation":
        why = "the calls made earlier in this session do not allow it"
    elif err.reason == "data_flow_violation":
        why = "data read earlier in this session may not flow to this tool"
    else:
        return f"Permission denied: the current user may not call {err.tool_id!r} ({err.reason})."
    return f"Permission denied: {err.tool_id!r} was refused ({err.reason}): {why}."


def refusal(err: PermissionDeniedError, upstream: str) -> types.CallToolResult:
    """The tool error a refused call gets: :func:`refusal_text`;
    ``structuredContent`` with the same facts (``d2_reason``, ``d2_tool_id``,
    ``d2_upstream``, ``d2_retry_after``, and for a held call
    ``d2_approval_request``, ``d2_approvers``, ``d2_expires_at``)."""
    text = refusal_text(err)
    if err.reason not in text:
        text = f"{text} (reason: {err.reason})"
    structured: dict[str, Any] = {
        "d2_reason": err.reason,
        "d2_tool_id": err.tool_id,
        "d2_upstream": upstream,
        "d2_retry_after": err.retry_after,
    }
    request = approval_of(err)
    if request is not None:
        structured.update(approval_details(request))
    return _text_result(text, structured)


def _only_text(result: types.CallToolResult) -> str:
    block = result.content[0]
    return block.text if isinstance(block, types.TextContent) else ""


def _unavailable(upstream: str, tool: str, why: str) -> types.CallToolResult:
    return _text_result(
        f"upstream {upstream!r} is unavailable, {tool!r} did not complete: {why}; try again later",
        {"d2_reason": "upstream_unavailable", "d2_tool_id": tool, "d2_upstream": upstream},
    )


def _logged(text: str, limit: int = 500) -> str:
    """An upstream's text as the gateway log shows it: escaped (ASCII, no control
    characters) and cut to ``limit`` characters."""
    cut = text[:limit]
    return ascii(cut) + (f" (+{len(text) - limit} characters)" if len(text) > limit else "")


def _error_code(exc: MCPError) -> int | None:
    """The upstream's JSON-RPC error code when it is one of JSON-RPC's own
    (-32768..-32000), else None: any other integer could carry the upstream's data
    past the output rules."""
    code = getattr(exc.error, "code", None)
    if isinstance(code, int) and not isinstance(code, bool) and -32768 <= code <= -32000:
        return code
    return None


def _upstream_error(upstream: str, tool: str, exc: MCPError) -> types.CallToolResult:
    """The tool error a call gets when its upstream answered with a JSON-RPC error:
    the code only. The upstream's message never reaches the client (output rules
    cannot read it); the gateway log keeps it, escaped."""
    code = _error_code(exc)
    _logger.warning(
        "d2-gateway: upstream %r answered %s with JSON-RPC error %s: %s",
        upstream,
        tool,
        code,
        _logged(str(exc.error.message)),
    )
    return _text_result(
        f"upstream {upstream!r} failed {tool!r} (error {code})",
        {"d2_reason": "upstream_error", "d2_upstream": upstream, "d2_error_code": code},
    )


def _too_large(upstream: str, tool: str, exc: ResultTooLarge) -> types.CallToolResult:
    return _text_result(
        f"{tool!r} result refused: {exc}; ask for less (reason: result_too_large)",
        {"d2_reason": "result_too_large", "d2_tool_id": tool, "d2_upstream": upstream},
    )


def _identity(value: object) -> Identity | None:
    """A well-formed ``(user_id, roles)`` or ``None`` (fail closed)."""
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    user, roles = value
    if not isinstance(user, str) or not user:
        return None
    if isinstance(roles, str) or not isinstance(roles, Iterable):
        return None
    listed = tuple(roles)
    if not all(isinstance(r, str) for r in listed):
        return None
    return user, tuple(sorted(set(listed)))


class Gateway:
    """The MCP gateway over ``upstreams``.

    ``identity``: the fixed ``(user_id, roles)`` of a stdio gateway (one client);
    ``None`` (HTTP): each request's identity is read from the ASGI scope key
    :data:`USER_SCOPE_KEY`, set by the identity layer in front of ``/mcp``.
    ``instance_name``: the configured D2 instance that decides; ``call_timeout``:
    seconds an upstream call may take; ``max_result_bytes``: the largest upstream
    result passed on (a larger one is a ``result_too_large`` tool error). Run the upstreams
    with ``async with gateway.running():``; serve ``gateway.server``.
    """

    def __init__(
        self,
        upstreams: Iterable[UpstreamSpec],
        *,
        identity: Identity | None = None,
        instance_name: str = "default",
        call_timeout: float = 120.0,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        specs = list(upstreams)
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            from d2.core import ConfigurationError

            raise ConfigurationError(f"upstream name(s) given twice: {dupes}")
        self.upstreams: dict[str, Upstream] = {
            s.name: Upstream(
                s, self._changed, call_timeout=call_timeout, max_result_bytes=max_result_bytes
            )
            for s in specs
        }
        self._fixed = _identity(identity) if identity is not None else None
        if identity is not None and self._fixed is None:
            from d2.core import ConfigurationError

            raise ConfigurationError(f"identity must be (user_id, roles), got {identity!r}")
        self._instance = instance_name
        # --stdio: one client, one D2 request for the process (history, facts and
        # per-request budgets span every call, whatever the protocol revision).
        self._fixed_context = (
            UserContext(self._fixed[0], self._fixed[1]) if self._fixed is not None else None
        )
        self.tools = Table({})
        self.prompts = Table({}, ())
        self.resources: dict[str, Entry] = {}
        self._gates: dict[str, Callable[..., Awaitable[Any]]] = {}
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.server: Server[Any] = self._build_server()

    # -- serving ---------------------------------------------------------------------
    def initialization_options(self) -> Any:
        """The SDK's initialization options (tools, resources and prompts announce
        ``listChanged``)."""
        return self.server.create_initialization_options(
            NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Supervise every upstream (and follow policy reloads) while the block runs."""
        async with anyio.create_task_group() as tg:
            for upstream in self.upstreams.values():
                tg.start_soon(upstream.run)
            tg.start_soon(self._follow_policy)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until every upstream is connected (``TimeoutError`` after
        ``timeout`` seconds)."""
        with anyio.fail_after(timeout):
            for upstream in self.upstreams.values():
                while upstream.connections == 0 or upstream._client is None:
                    await upstream.connected.wait()

    async def wait_tried(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until every upstream has connected or
        failed once: what start-up waits for, so one upstream that cannot start
        does not hold the others back."""
        with anyio.move_on_after(timeout):
            for upstream in self.upstreams.values():
                await upstream.tried.wait()

    async def _follow_policy(self) -> None:
        """A new policy may show or hide tools: tell the sessions to list again."""
        evaluator = evaluator_for(self._instance)
        seen = evaluator.policy
        while True:
            await anyio.sleep(0.5)
            if evaluator.policy is not seen:
                seen = evaluator.policy
                await self._broadcast(tools=True, resources=True, prompts=True)

    async def _changed(self) -> None:
        """An upstream connected, disconnected or re-listed: rebuild the tables."""
        old_tools, old_prompts, old_resources = (
            set(self.tools.entries),
            set(self.prompts.entries),
            set(self.resources),
        )
        ups = list(self.upstreams.values())
        self.tools = Table.build({u.name: [(t.name, t) for t in u.tools] for u in ups})
        self.prompts = Table.build(
            {u.name: [(p.name, p) for p in u.prompts] for u in ups}, kind="prompt"
        )
        resources: dict[str, Entry] = {}
        for u in ups:
            for r in u.resources:
                uri = str(r.uri)
                if uri in resources:
                    _logger.warning(
                        "d2-gateway: resource %r of upstream %r is not exposed: upstream %r "
                        "has one with the same URI",
                        uri,
                        u.name,
                        resources[uri].upstream,
                    )
                    continue
                resources[uri] = Entry(u.name, uri, resource_id(u.name, uri), r)
        self.resources = resources
        await self._broadcast(
            tools=set(self.tools.entries) != old_tools,
            prompts=set(self.prompts.entries) != old_prompts,
            resources=set(self.resources) != old_resources,
        )

    async def _broadcast(self, *, tools: bool, resources: bool, prompts: bool) -> None:
        for connection in list(self._connections):
            try:  # best effort: the SDK's notify never raises; a dead stream drops it
                if tools:
                    await connection.send_tool_list_changed()
                if resources:
                    await connection.send_resource_list_changed()
                if prompts:
                    await connection.send_prompt_list_changed()
            except Exception:  # pragma: no cover - defensive
                _logger.debug("d2-gateway: a list_changed notification was dropped")

    # -- who is calling ----------------------------------------------------------------
    def _caller(self, ctx: ServerRequestContext[Any, Any]) -> Identity | None:
        if self._fixed is not None:
            return self._fixed
        scope = getattr(ctx.request, "scope", None)
        if not isinstance(scope, Mapping):
            return None
        return _identity(scope.get(USER_SCOPE_KEY))

    def context(self, ctx: ServerRequestContext[Any, Any]) -> UserContext | None:
        """The D2 request of this caller, or ``None`` (refused): no identity, an
        identity other than the one that opened the session, or (HTTP) no
        session at all.

        ``--stdio`` (one client, a fixed identity): one D2 request for the whole
        process, whatever the protocol revision the client speaks. HTTP: one D2
        request per MCP session, made at its first request; a request outside a
        session (a stateless protocol revision) would start from no history, so
        data flow, sequences and per-request budgets could never fire: refused."""
        identity = self._caller(ctx)
        if identity is None:
            return None
        connection = getattr(ctx.session, "_connection", None)  # no public accessor
        state = getattr(connection, "state", None)
        if self._fixed_context is not None:
            if isinstance(state, dict) and _STATE_KEY not in state:
                state[_STATE_KEY] = True
                self._track(connection)
            return self._fixed_context
        if not isinstance(state, dict) or getattr(connection, "session_id", None) is None:
            _logger.warning(
                "d2-gateway: a request of user %r came outside a session; refused "
                "(reason: session_required)",
                identity[0],
            )
            return None
        held = state.get(_STATE_KEY)
        if held is None:
            current = UserContext(identity[0], identity[1])
            state[_STATE_KEY] = (identity, current)
            self._track(connection)
            return current
        if held[0] != identity:
            _logger.warning(
                "d2-gateway: a request for the session of user %r came with the identity "
                "of user %r; refused",
                held[0][0],
                identity[0],
            )
            return None
        context: UserContext = held[1]
        return context

    def _track(self, connection: Any) -> None:
        try:
            self._connections.add(connection)
        except TypeError:  # pragma: no cover - not weakly referenceable
            pass

    def _allowed(self, policy_id: str) -> bool:
        return is_allowed(policy_id, instance_name=self._instance)

    def _runs(self, policy_id: str) -> bool:
        """Whether a call of tool ``policy_id`` would run for the current user:
        allowed, or refused by RBAC alone under an audit-mode policy (which runs it
        and records ``would_deny``, as in the SDK)."""
        evaluator = evaluator_for(self._instance)
        denial = evaluator.decide(policy_id)
        if denial is None:
            return True
        policy = evaluator.policy
        return bool(policy is not None and policy.audit and denial.reason in _RBAC_REASONS)

    def _named(self, policy_id: str) -> bool:
        """Whether the current user may use a resource or prompt: allowed, and
        granted by a permission that names resources (``resource:...``) or prompts
        (``prompt:...``), or a tool group listing it. A bare ``*`` grant opens
        every tool, never a resource or prompt."""
        if not self._allowed(policy_id):
            return False
        policy = evaluator_for(self._instance).policy
        if policy is None:
            return False
        kind = policy_id.split(":", 1)[0] + ":"
        grants = policy.rules_for(policy_id).allow_grants(get_user_context().roles)
        return any(g.pattern.startswith((kind, "@")) for g in grants)

    def _gate(self, entry: Entry) -> Callable[..., Awaitable[Any]]:
        """The ``d2_guard`` of ``entry``'s id, made at its first call; its decisions
        carry the label ``upstream`` (decision log and metrics)."""
        gate = self._gates.get(entry.policy_id)
        if gate is None:
            set_tool_labels(entry.policy_id, {"upstream": entry.upstream})
            gate = d2_guard(entry.policy_id, instance_name=self._instance)(_upstream_call)
            self._gates[entry.policy_id] = gate
        return gate

    # -- handlers ------------------------------------------------------------------------
    def _build_server(self) -> Server[Any]:
        return Server(
            "d2-gateway",
            version=__version__,
            instructions=None,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        """The tools this session's user may call, under their shown names."""
        current = self.context(ctx)
        if current is None:
            return types.ListToolsResult(tools=[])
        policy = evaluator_for(self._instance).policy
        token = attach(current)
        try:
            shown = [
                self._shown_tool(name, entry, policy)
                for name, entry in self.tools.entries.items()
                if self._runs(entry.policy_id)
            ]
        finally:
            detach(token)
        return types.ListToolsResult(tools=shown)

    @staticmethod
    def _shown_tool(name: str, entry: Entry, policy: Any) -> types.Tool:
        """The upstream's tool under its shown name. When output rules may reshape
        its results (filter a field, redact a number), its ``outputSchema`` is
        dropped: a client validating results against it would refuse them."""
        tool: types.Tool = entry.item  # type: ignore[assignment]
        update: dict[str, Any] = {"name": name}
        if tool.output_schema is not None and policy is not None:
            grants = policy.rules_for(entry.policy_id).grants
            if any(getattr(g, "output", None) is not None for g in grants):
                update["output_schema"] = None
        return tool.model_copy(update=update)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """Decide the call with d2-core, then call the upstream (see the module
        docstring)."""
        entry = self.tools.get(params.name)
        current = self.context(ctx)
        if entry is None or current is None:
            return _unknown_tool(params.name)
        arguments = dict(params.arguments or {})
        token = attach(current)
        try:  # a hidden tool's call is refused by its gate too: the decision log has it
            return await self._guarded_call(entry, arguments)
        finally:
            detach(token)

    async def _guarded_call(self, entry: Entry, arguments: dict[str, Any]) -> types.CallToolResult:
        upstream = self.upstreams[entry.upstream]
        readable: list[_Readable] = []
        checked: list[bool] = []

        async def handle() -> Any:
            checked.append(_output_checked(entry.policy_id, self._instance))  # rules just chosen
            result = _Readable(await upstream.call_tool(entry.name, arguments))
            readable.append(result)
            return result.view

        handle_token = _HANDLE.set(handle)
        try:
            sanitized = await self._gate(entry)(**arguments)
        except PermissionDeniedError as err:
            if not self._allowed(entry.policy_id):  # hidden meanwhile (a new policy)
                return _unknown_tool(f"{entry.upstream}__{entry.name}")
            _logger.info(
                "d2-gateway: refused %s for %r: %s", entry.policy_id, err.user_id, err.reason
            )
            return refusal(err, entry.upstream)
        except UpstreamUnavailable as exc:
            return _unavailable(entry.upstream, entry.policy_id, str(exc))
        except ResultTooLarge as exc:
            return _too_large(entry.upstream, entry.policy_id, exc)
        except MCPError as exc:  # the upstream answered the call with a protocol error
            return _upstream_error(entry.upstream, entry.policy_id, exc)
        except Exception as exc:  # a malformed answer, a transport fault: never a crash
            _logger.warning(
                "d2-gateway: %s failed upstream: %s: %s",
                entry.policy_id,
                type(exc).__name__,
                _logged(str(exc)),
            )
            return _text_result(
                f"upstream {entry.upstream!r} failed {entry.policy_id!r} "
                f"({type(exc).__name__}); try again later",
                {"d2_reason": "upstream_error", "d2_upstream": entry.upstream},
            )
        finally:
            _HANDLE.reset(handle_token)
        try:
            checks = checked[0] or _output_checked(entry.policy_id, self._instance)
            result: types.CallToolResult = readable[0].rebuilt(sanitized, checks)
            if checks:  # JSON written anew may be longer than the upstream's
                upstream.bounded(result)
        except ValueError:  # defensive: the rules never change its shape; fail closed
            return _text_result(
                f"{entry.policy_id!r} result refused: it cannot be rebuilt after its output "
                "rules (reason: output_validation)",
                {"d2_reason": "output_validation", "d2_tool_id": entry.policy_id},
            )
        except ResultTooLarge as exc:
            return _too_large(entry.upstream, entry.policy_id, exc)
        return result

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        """The resources the policy grants this user (``resource:NAME:<uri>``)."""
        current = self.context(ctx)
        if current is None:
            return types.ListResourcesResult(resources=[])
        token = attach(current)
        try:
            listed = [e.item for e in self.resources.values() if self._named(e.policy_id)]
        finally:
            detach(token)
        return types.ListResourcesResult(resources=listed)  # type: ignore[arg-type]

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        """Resource templates are not exposed: only listed resources can be read."""
        return types.ListResourceTemplatesResult(resource_templates=[])

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        """Read a granted resource through its gate (decision log, budgets, ...)."""
        uri = str(params.uri)
        entry = self.resources.get(uri)
        current = self.context(ctx)
        unknown = MCPError(types.INVALID_PARAMS, f"Unknown resource: {uri}")
        if entry is None or current is None:
            raise unknown
        token = attach(current)
        try:
            if not self._named(entry.policy_id):
                raise unknown
            result: types.ReadResourceResult = await self._plain_call(
                entry, {"uri": uri}, lambda: self.upstreams[entry.upstream].read_resource(uri)
            )
            return result
        finally:
            detach(token)

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        """The prompts the policy grants this user (``prompt:NAME:<name>``), shown
        as ``NAME__PROMPT``."""
        current = self.context(ctx)
        if current is None:
            return types.ListPromptsResult(prompts=[])
        token = attach(current)
        try:
            listed = [
                entry.item.model_copy(update={"name": name})  # type: ignore[attr-defined]
                for name, entry in self.prompts.entries.items()
                if self._named(entry.policy_id)
            ]
        finally:
            detach(token)
        return types.ListPromptsResult(prompts=listed)

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        """Get a granted prompt through its gate."""
        entry = self.prompts.get(params.name)
        current = self.context(ctx)
        unknown = MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        if entry is None or current is None:
            raise unknown
        arguments = dict(params.arguments or {})
        token = attach(current)
        try:
            if not self._named(entry.policy_id):
                raise unknown
            result: types.GetPromptResult = await self._plain_call(
                entry,
                arguments,
                lambda: self.upstreams[entry.upstream].get_prompt(entry.name, arguments),
            )
            return result
        finally:
            detach(token)

    async def _plain_call(
        self, entry: Entry, arguments: dict[str, Any], call: Callable[[], Awaitable[Any]]
    ) -> Any:
        """A resource read or prompt get through its gate; a refusal or an
        unavailable upstream is a protocol error naming the reason."""
        handle_token = _HANDLE.set(call)
        try:
            return await self._gate(entry)(**arguments)
        except PermissionDeniedError as err:
            detail = json.dumps(
                {"d2_reason": err.reason, "d2_retry_after": err.retry_after}, default=str
            )
            text = refusal_text(err)
            if err.reason not in text:
                text = f"{text} (reason: {err.reason})"
            raise MCPError(types.INVALID_REQUEST, text, detail) from None
        except UpstreamUnavailable as exc:
            raise MCPError(types.INTERNAL_ERROR, str(exc)) from None
        except ResultTooLarge as exc:
            raise MCPError(
                types.INTERNAL_ERROR,
                f"{exc} (reason: result_too_large)",
                {"d2_reason": "result_too_large"},
            ) from None
        except MCPError as exc:  # the upstream's own error: its text stays in the log
            refused = _upstream_error(entry.upstream, entry.policy_id, exc)
            raise MCPError(types.INTERNAL_ERROR, _only_text(refused)) from None
        except Exception as exc:  # a malformed answer: never the upstream's text
            _logger.warning(
                "d2-gateway: %s failed upstream: %s: %s",
                entry.policy_id,
                type(exc).__name__,
                _logged(str(exc)),
            )
            raise MCPError(
                types.INTERNAL_ERROR,
                f"upstream {entry.upstream!r} failed {entry.policy_id!r} "
                f"({type(exc).__name__}); try again later",
            ) from None
        finally:
            _HANDLE.reset(handle_token)
