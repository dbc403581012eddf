"""A tiny upstream MCP server for the supervision tests: ``echo``, ``hang`` (a
call that stays in flight), ``crash`` (the process exits at once), ``block`` (a
synchronous handler: the server answers nothing, not even a ping, meanwhile) and
``big`` (a result of ``size`` characters), ``big_meta`` (a short text whose
result carries ``size`` characters in ``_meta``) and the prompt ``long`` (a
message of ``size`` characters)."""

from __future__ import annotations

import os
import time

import anyio
from mcp import types
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
async def block(seconds: float) -> str:
    """Block the server's event loop (a synchronous wait in a coroutine), then answer."""
    time.sleep(seconds)  # the point: nothing else runs meanwhile
    return "unblocked"


@server.tool()
def big(size: int) -> str:
    """A long text."""
    return "A" * size


@server.tool()
def big_meta(size: int) -> types.CallToolResult:
    """A short text; the bulk of the result is in its ``_meta``."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text="small")], _meta={"pad": "M" * size}
    )


@server.prompt()
def long(size: int) -> str:
    """A prompt of ``size`` characters."""
    return "P" * int(size)


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
