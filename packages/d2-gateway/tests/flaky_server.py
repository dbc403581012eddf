"""A tiny upstream MCP server for the supervision tests: ``echo``, ``hang`` (a
call that stays in flight) and ``crash`` (the process exits at once)."""

from __future__ import annotations

import os

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("flaky")


@server.tool()
def echo(text: str) -> str:
    """Echo the text."""
    return f"echo: {text}"


@server.tool()
async def hang(seconds: float = 60) -> str:
    """Answer late."""
    await anyio.sleep(seconds)
    return "late"


@server.resource("note://public")
def public_note() -> str:
    """A note anyone granted may read."""
    return "public note"


@server.resource("note://secret")
def secret_note() -> str:
    """A note nobody is granted."""
    return "secret note"


@server.prompt()
def greet(name: str) -> str:
    """A prompt."""
    return f"Say hello to {name}"


@server.tool()
def crash() -> str:
    """Exit the process now."""
    os._exit(3)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--http":  # Streamable HTTP on 127.0.0.1:PORT
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
