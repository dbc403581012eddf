"""Hostile review 20: arguments the gateway passes upstream that the input rules
and approvals did not read as sent, and base64 the output rules did not decode.
Each test asserts the secure behaviour, so it fails while the attack works."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from d2.agents.mcp import guard_server
from d2.core import InMemorySource, configure_rbac_sync
from d2.core.testing import expires_in, reset
from d2.gateway import UpstreamSpec
from gateway_testkit import (
    act_as_alice,
    call_listed,
    dumped,
    identify,
    served_gateway,
    write_policy,
)
from mcp import Client, types
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.lowlevel import Server

SERVER = str(Path(__file__).with_name("review20_server.py"))
SECRET = "AKIAABCDEFGHIJKLMNOP"
PATTERNS = {"deny_if_patterns": [r"\bAKIA[0-9A-Z]{16}\b"]}
BLOBS = ["blob_padded", "blob_unpadded", "blob_lines", "image_unpadded"]
# an input rule on a tool parameter named "arguments" (a command runner's argv)
LOOSE = {"arguments": {"maxLength": 16, "not_contains": "--force"}}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("review20") / "policy.json"
    write_policy(
        policy,
        {
            "role": "dev",
            "permissions": [
                {"tool": "review20.run", "conditions": {"input": LOOSE}},
                *({"tool": f"review20.{t}", "conditions": {"output": PATTERNS}} for t in BLOBS),
            ],
        },
        {
            "role": "ops",
            "permissions": [
                {
                    "tool": "review20.run",
                    "approval": {
                        "when": {"arguments": {"contains": "prod"}},
                        "approvers": ["lead"],
                    },
                }
            ],
        },
        {"role": "lead", "permissions": ["review20.blob_padded"]},
        name="review20",
        data_flow={
            "labels": {"review20.blob_padded": ["SECRET"]},
            "blocks": {"SECRET": ["review20.run"]},
        },
    )
    with served_gateway(
        policy, [UpstreamSpec("review20", command=sys.executable, args=(SERVER,))]
    ) as url:
        yield url


async def call(
    url: str, tool: str, arguments: dict[str, Any] | None = None, roles: str = "dev"
) -> types.CallToolResult:
    result: types.CallToolResult = await call_listed(
        url, f"review20__{tool}", arguments, roles=roles
    )
    return result


async def test_an_input_rule_on_an_argument_named_arguments_reads_that_argument(
    url: str,
) -> None:
    # The gate wraps `async def _upstream_call(**arguments)`: d2-core reads a rule on
    # "arguments" as the **kwargs parameter, i.e. the dict of every argument (two
    # keys long, no key "--force"), never the client's string. maxLength 16 and
    # not_contains "--force" pass a 60-character "--force" string to the upstream.
    ok = await call(url, "run", {"command": "rm", "arguments": "-r tmp"})
    assert not ok.is_error, dumped(ok)
    bad = "--force -r / " * 5
    result = await call(url, "run", {"command": "rm", "arguments": bad})
    assert result.is_error, dumped(result)[:300]
    assert "ran with" not in dumped(result)


async def test_an_approval_when_on_an_argument_named_arguments_is_asked(url: str) -> None:
    # approval.when {arguments: {contains: prod}} reads the dict of every argument
    # (no key "prod"): it "certainly fails", so no person is asked and the call runs.
    result = await call(url, "run", {"command": "deploy", "arguments": "prod"}, roles="ops")
    assert result.is_error, dumped(result)[:300]
    assert (result.structured_content or {}).get("d2_reason") == "approval_required"


@pytest.mark.parametrize("tool", ["blob_unpadded", "blob_lines", "image_unpadded"])
async def test_a_secret_in_base64_any_decoder_reads_is_refused(url: str, tool: str) -> None:
    # The nineteenth review decodes blob/data with a validating decoder: base64
    # without its "=" padding (RFC 4648 allows leaving it out; browsers' atob and
    # Node's Buffer read it) or with MIME line breaks (RFC 2045) is not decoded, so
    # the pattern reads only the base64, and the client decodes the key.
    control = await call(url, "blob_padded")
    assert control.is_error and SECRET not in dumped(control)
    result = await call(url, tool)
    assert result.is_error, dumped(result)[:300]


async def test_guard_server_input_rule_on_an_argument_named_arguments() -> None:
    # d2-agents' low-level guard wraps `async def _through(**arguments)`: the same
    # name, the same misreading, for every low-level MCP server guard_server guards.
    doc = {
        "metadata": {"name": "review20", "expires": expires_in()},
        "policies": [
            {
                "role": "dev",
                "permissions": [{"tool": "run", "conditions": {"input": LOOSE}}],
            }
        ],
    }
    reset()
    configure_rbac_sync(source=InMemorySource(doc))
    ran: list[Any] = []

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="run", input_schema={"type": "object"})]
        )

    async def on_call_tool(ctx: Any, params: Any) -> types.CallToolResult:
        ran.append(params.arguments)
        return types.CallToolResult(content=[types.TextContent(type="text", text="ran")])

    server = Server("review20", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    guard_server(server, identify=identify)
    try:
        async with Client(server, mode="legacy") as client:
            act_as_alice()
            result = await client.call_tool("run", {"arguments": "--force " * 10})
    finally:
        auth_context_var.set(None)
        reset()
    assert result.is_error and not ran, (dumped(result)[:300], ran)
