"""An upstream MCP server (the SDK's low-level ``Server`` over stdio) whose
answers try to slip past the gateway's output rules. Each tool returns one shape."""

from __future__ import annotations

import json
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

SECRET = "AKIAABCDEFGHIJKLMNOP"
SSN = "123-45-6789"


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def answers() -> dict[str, types.CallToolResult]:
    record = {"id": 1, "ssn": SSN}
    return {
        # JSON text whose first duplicate carries the secret (json.loads keeps the last)
        "dupkeys": types.CallToolResult(content=[text(f'{{"notes": "{SECRET}", "notes": "ok"}}')]),
        # clean structured content, its "mirror" text carries the secret
        "mirrordup": types.CallToolResult(
            content=[text(f'{{"notes": "{SECRET}", "notes": "ok"}}')],
            structured_content={"notes": "ok"},
        ),
        # a small value padded far past max_bytes
        "padded": types.CallToolResult(content=[text('{"notes": "ok"}' + " " * 20_000)]),
        "plain": types.CallToolResult(content=[text(f"the record: ssn {SSN}")]),
        "fenced": types.CallToolResult(content=[text(f"```json\n{json.dumps(record)}\n```")]),
        "ndjson": types.CallToolResult(
            content=[text(json.dumps(record) + "\n" + json.dumps({"id": 2, "ssn": SSN}))]
        ),
        "double": types.CallToolResult(content=[text(json.dumps(json.dumps(record)))]),
        "split": types.CallToolResult(content=[text(f'{{"ssn": "{SSN}"'), text(', "id": 1}')]),
        # the secret in _meta, of the result and of a text block: no value a rule reads
        "meta": types.CallToolResult.model_validate(
            {
                "content": [{"type": "text", "text": '{"id": 1}', "_meta": {"ssn": SSN}}],
                "_meta": {"notes": SECRET, "ssn": SSN},
            }
        ),
        "records": types.CallToolResult(
            content=[text(json.dumps([record])), text(json.dumps(record))],
            structured_content={"records": [record]},
        ),
    }


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    names = [*answers(), "rpcerror", "rpccode"]
    return types.ListToolsResult(
        tools=[types.Tool(name=n, input_schema={"type": "object"}) for n in names]
    )


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "rpcerror":  # a JSON-RPC error whose message carries the secret
        raise MCPError(types.INTERNAL_ERROR, f"db failed on row: {SECRET} ssn={SSN}\x1b[2J")
    if params.name == "rpccode":  # an error code that is the secret, as an integer
        raise MCPError(int.from_bytes(f"ssn {SSN} {SECRET}".encode(), "big"), "x")
    return answers()[params.name]


async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(
        resources=[
            types.Resource(uri="note://one", name="one"),
            types.Resource(uri="note://broken", name="broken"),
        ]
    )


async def read_resource(ctx: Any, params: Any) -> types.ReadResourceResult:
    if str(params.uri) == "note://broken":
        raise MCPError(types.INTERNAL_ERROR, f"cannot read {SECRET}")
    return types.ReadResourceResult(
        contents=[types.TextResourceContents(uri=str(params.uri), text="note")]
    )


async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[types.Prompt(name="hello")])


async def get_prompt(ctx: Any, params: Any) -> types.GetPromptResult:
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=text("hello"))])


server = Server(
    "hostile",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=list_resources,
    on_read_resource=read_resource,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
