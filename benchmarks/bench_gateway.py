"""make bench-gateway: the latency a ``tools/call`` gains by going through
d2-gateway, over the same call made directly to the upstream.

The upstream is a small MCP server (``echo``, written to a temporary directory)
run over stdio. Three clients, all the real ``mcp`` client over stdio:

- direct: the client starts the upstream itself;
- sdk proxy: the client starts a bare proxy written with the same ``mcp`` SDK (a
  low-level ``Server`` whose handlers forward to a ``Client`` of the upstream; no
  policy, no checks): the cost of one more MCP hop, whoever makes it;
- through: the client starts ``d2-gateway serve --stdio`` (policy: the echo tool
  granted with an input rule), which starts the same upstream.

Calls rotate between the three in batches (so machine noise hits all alike);
the table gives p50 and p99 per call, the latency the gateway adds over the
direct call, and what it adds over the bare SDK proxy (D2's part of it).
A last row isolates the gateway's own work per call, in process: the D2 decision
(an input rule), attaching the session's context, and reading and rebuilding the
result, with an upstream that answers at once (no transport).
``--quick``: fewer calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from d2.core.testing import expires_in
from mcp import Client, StdioServerParameters

ECHO = '''
from mcp.server.mcpserver import MCPServer

server = MCPServer("echo")


@server.tool()
def echo(text: str) -> str:
    """Echo the text."""
    return text


server.run()
'''

PROXY = """
import sys

import anyio
from mcp import Client, StdioServerParameters, types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server


async def main():
    upstream = StdioServerParameters(command=sys.executable, args=[sys.argv[1]], env={})
    async with Client(upstream, mode="legacy", cache=None) as client:

        async def list_tools(ctx, params):
            return await client.list_tools()

        async def call_tool(ctx, params):
            return await client.call_tool(params.name, params.arguments or {})

        server = Server("proxy", on_list_tools=list_tools, on_call_tool=call_tool)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


anyio.run(main)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(calls: int, batch: int, where: Path) -> dict[str, list[float]]:
    echo = where / "echo.py"
    echo.write_text(ECHO)
    policy = where / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "metadata": {"name": "bench-gateway", "expires": expires_in()},
                "policies": [
                    {
                        "role": "bench",
                        "permissions": [
                            {
                                "tool": "echo.echo",
                                "conditions": {"input": {"text": {"type": "string"}}},
                            }
                        ],
                    }
                ],
            }
        )
    )
    env = {"D2_SILENT": "1"}
    proxy = where / "proxy.py"
    proxy.write_text(PROXY)
    paths = {
        "direct": (
            StdioServerParameters(command=sys.executable, args=[str(echo)], env=env),
            "echo",
        ),
        "sdk proxy": (
            StdioServerParameters(command=sys.executable, args=[str(proxy), str(echo)], env=env),
            "echo",
        ),
        "through": (
            StdioServerParameters(
                command=str(Path(sys.executable).with_name("d2-gateway")),
                args=[
                    "serve",
                    "--stdio",
                    "--policy",
                    str(policy),
                    "--user",
                    "bench",
                    "--roles",
                    "bench",
                    "--upstream",
                    f"echo=stdio:{sys.executable} {echo}",
                ],
                env=env,
            ),
            "echo__echo",
        ),
    }
    times: dict[str, list[float]] = {label: [] for label in paths}
    async with AsyncExitStack() as stack:
        pairs: list[tuple[str, Any, str]] = []
        for label, (params, name) in paths.items():
            client = await stack.enter_async_context(Client(params, mode="legacy", cache=None))
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == [name], names
            pairs.append((label, client, name))
        for _, client, name in pairs:  # warm up every path
            for _ in range(50):
                await client.call_tool(name, {"text": "warm"})
        done = 0
        while done < calls:
            for label, client, name in pairs:
                for _ in range(batch):
                    start = time.perf_counter()
                    result = await client.call_tool(name, {"text": "hello"})
                    times[label].append(time.perf_counter() - start)
                    assert not result.is_error
            pairs.append(pairs.pop(0))  # rotate: no path always runs first
            done += batch
    return times


def own_work(calls: int, where: Path) -> list[float]:
    """Seconds per call of the gateway's own work (see the module docstring)."""
    from d2.core import UserContext, attach, configure_rbac_sync, detach, shutdown_rbac
    from d2.gateway import Gateway, UpstreamSpec
    from d2.gateway.naming import Table
    from mcp import types

    configure_rbac_sync(source=str(where / "policy.json"))
    gateway = Gateway([UpstreamSpec("echo", command="unused")])
    answer = types.CallToolResult(content=[types.TextContent(type="text", text="hello")])

    async def upstream(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return answer

    gateway.upstreams["echo"].call_tool = upstream  # type: ignore[method-assign]
    tool = types.Tool(name="echo", input_schema={"type": "object"})
    gateway.tools = Table.build({"echo": [("echo", tool)]})
    entry = gateway.tools.get("echo__echo")
    assert entry is not None
    session = UserContext("bench", ["bench"])

    async def run() -> list[float]:
        times = []
        for i in range(calls + 1000):
            start = time.perf_counter()
            token = attach(session)
            try:
                result = await gateway._guarded_call(entry, {"text": "hello"})
            finally:
                detach(token)
            if i >= 1000:
                times.append(time.perf_counter() - start)
            assert not result.is_error
        return times

    try:
        return anyio.run(run)
    finally:
        shutdown_rbac()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    args = parser.parse_args()
    calls, batch = (400, 50) if args.quick else (3000, 100)
    with tempfile.TemporaryDirectory() as where:
        times = anyio.run(measure, calls, batch, Path(where))
        own = own_work(calls * 10, Path(where))
    ms = {k: [v * 1000 for v in vs] for k, vs in times.items()}
    p50 = {k: statistics.median(v) for k, v in ms.items()}
    p99 = {k: percentile(v, 0.99) for k, v in ms.items()}
    print(
        f"tools/call over stdio, {calls} calls each "
        f"({sys.platform}, Python {sys.version.split()[0]})"
    )
    print()
    print("| path | p50 (ms) | p99 (ms) |")
    print("|---|---:|---:|")
    for label in ("direct", "sdk proxy", "through"):
        print(f"| {label} | {p50[label]:.3f} | {p99[label]:.3f} |")
    for label, over in (
        ("added by the gateway", "direct"),
        ("the gateway over the sdk proxy", "sdk proxy"),
    ):
        print(f"| {label} | {p50['through'] - p50[over]:.3f} | {p99['through'] - p99[over]:.3f} |")
    own_ms = [v * 1000 for v in own]
    print(
        f"| the gateway's own work (in process) | {statistics.median(own_ms):.3f} | "
        f"{percentile(own_ms, 0.99):.3f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
