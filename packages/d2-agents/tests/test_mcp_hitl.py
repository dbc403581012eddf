"""Approvals and budgets on a guarded MCP server, over the SDK's in-memory client:
a tool error (``isError``) whose text and ``structuredContent`` carry the D2
request; an approver approves outside the session; the retried call runs once."""

from __future__ import annotations

import re
from typing import Any

import pytest
from d2.agents.mcp import guard_server
from d2.core import approve, set_user
from mcp import Client, types
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer

REFUND = {"order": "o1", "amount": 500}


def act_as(subject: str, *roles: str) -> None:
    claims = {"roles": list(roles)}
    token = AccessToken(
        token=f"t-{subject}", client_id="a", scopes=[], subject=subject, claims=claims
    )
    auth_context_var.set(AuthenticatedUser(token))


def identify(token: AccessToken | None) -> tuple[str, list[str]] | None:
    if token is None or token.subject is None:
        return None
    return token.subject, (token.claims or {}).get("roles", [])


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def build(ran: list[str]) -> MCPServer:
    server = MCPServer("payments")

    @server.tool()
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        ran.append(f"refund({amount})")
        return f"refunded {amount}"

    @server.tool()
    def web_search(query: str) -> list[str]:
        """Search the web."""
        ran.append("web_search")
        return [query]

    @server.tool()
    async def web_fetch(url: str) -> str:
        """Fetch a page."""
        ran.append("web_fetch")
        return "page"

    return server


def build_lowlevel(ran: list[str]) -> Server:
    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        ran.append(params.name)
        return types.CallToolResult(content=[types.TextContent(type="text", text="refunded")])

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[])

    return Server("payments", on_call_tool=call_tool, on_list_tools=list_tools)


@pytest.mark.parametrize("kind", ["mcpserver", "lowlevel"])
async def test_approval_required_is_a_tool_error_and_the_approved_call_runs_once(
    hitl: dict[str, str], kind: str
) -> None:
    ran: list[str] = []
    server = build(ran) if kind == "mcpserver" else build_lowlevel(ran)
    guard_server(server, identify=identify, tool_ids=hitl)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "agent")
        held = await client.call_tool("refund", REFUND)
        assert held.is_error and ran == []
        found = re.fullmatch(
            r"approval required for payments\.refund: request ([0-9a-f]{64}), "
            r"approvers: finance_lead",
            text(held),
        )
        assert found is not None
        request_id = found.group(1)
        assert held.structured_content is not None
        assert held.structured_content["d2_approval_request"] == request_id
        assert held.structured_content["d2_approvers"] == ["finance_lead"]
        assert held.structured_content["d2_reason"] == "approval_required"

        set_user("bob", roles=["finance_lead"])  # an approver, outside the session
        approve(request_id)

        done = await client.call_tool("refund", REFUND)
        assert not done.is_error and "refunded" in text(done)
        again = await client.call_tool("refund", REFUND)
        assert again.is_error and "approval required" in text(again)
        assert request_id not in text(again)  # a new request: the used one is dead
        assert ran == ["refund(500)" if kind == "mcpserver" else "refund"]


async def test_an_exhausted_budget_is_a_short_tool_error(hitl: dict[str, str]) -> None:
    ran: list[str] = []
    server = build(ran)
    guard_server(server, identify=identify, tool_ids=hitl)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "agent")
        searched = [await client.call_tool("web_search", {"query": q}) for q in "abc"]
        assert [r.is_error for r in searched] == [False, False, True]
        assert text(searched[2]) == "budget exceeded for web.search for this request"
        assert searched[2].structured_content == {
            "d2_reason": "budget_exceeded",
            "d2_tool_id": "web.search",
            "d2_retry_after": None,
        }
        fetched = [await client.call_tool("web_fetch", {"url": u}) for u in "xy"]
        assert not fetched[0].is_error and fetched[1].is_error
        match = re.fullmatch(
            r"budget exceeded for web\.fetch; retry after (\d+)s", text(fetched[1])
        )
        assert match is not None and 0 < int(match.group(1)) <= 3600
        assert fetched[1].structured_content is not None
        assert 0 < fetched[1].structured_content["d2_retry_after"] <= 3600
    assert ran == ["web_search", "web_search", "web_fetch"]


async def test_a_tool_taking_the_request_context_is_approved_on_its_arguments(
    hitl: dict[str, str],
) -> None:
    """The ``Context`` the server passes a tool is new on every request: it is not
    part of the approved call (the approver sees the model's arguments), and the
    call retried in a new session runs once."""
    from d2.core import pending_approvals

    ran: list[int] = []
    server = MCPServer("payments")

    @server.tool()
    async def refund(order: str, amount: int, ctx: Context) -> str:
        """Refund an order."""
        ran.append(amount)
        return f"refunded {amount}"

    guard_server(server, identify=identify, tool_ids=hitl)
    async with Client(server, mode="legacy") as client:
        act_as("alice", "agent")
        held = await client.call_tool("refund", REFUND)
        assert held.is_error and held.structured_content is not None
    set_user("bob", roles=["finance_lead"])
    [request] = pending_approvals()
    assert request.arguments == REFUND
    approve(held.structured_content["d2_approval_request"])
    async with Client(server, mode="legacy") as client:  # a new session
        act_as("alice", "agent")
        done = await client.call_tool("refund", REFUND)
        assert not done.is_error and text(done) == "refunded 500"
    assert ran == [500]
