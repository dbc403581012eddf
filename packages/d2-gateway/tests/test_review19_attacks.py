"""Hostile review 19: what an MCP tool result can carry past D2's output rules,
through the gateway and through ``guard_server``. Each test asserts the secure
behaviour, so it fails while the attack works."""

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

SERVER = str(Path(__file__).with_name("review19_server.py"))
SECRET = "AKIAABCDEFGHIJKLMNOP"
CARD = "4111111111111111"
# secret scanners' patterns, word-bounded as such patterns are
PATTERNS = {"deny_if_patterns": [r"\bAKIA[0-9A-Z]{16}\b", r"\b4[0-9]{15}\b"]}
PATTERNED = ["plain", "blob", "cardnum", "cardstruct", "cardtext"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("review19") / "policy.json"
    write_policy(
        policy,
        {
            "role": "dev",
            "permissions": [
                *({"tool": f"review19.{t}", "conditions": {"output": PATTERNS}} for t in PATTERNED),
                # a field rule: the result goes out rebuilt from what the rules read
                {
                    "tool": "review19.audience",
                    "conditions": {"output": {"ssn": {"action": "filter"}}},
                },
            ],
        },
        name="review19",
    )
    with served_gateway(
        policy, [UpstreamSpec("review19", command=sys.executable, args=(SERVER,))]
    ) as url:
        yield url


async def call(url: str, tool: str) -> types.CallToolResult:
    result: types.CallToolResult = await call_listed(url, f"review19__{tool}")
    return result


async def test_a_card_number_written_as_a_json_number_is_refused(url: str) -> None:
    # The digits in prose are refused; the same digits as a JSON number, in a
    # text block's JSON or in the structured content, are not read by
    # deny_if_patterns (numbers are skipped), and the model reads them all the same.
    control = await call(url, "cardtext")
    assert control.is_error and CARD not in dumped(control)
    for tool in ("cardnum", "cardstruct"):
        result = await call(url, tool)
        assert result.is_error, (tool, dumped(result)[:300])
        assert CARD not in dumped(result)


async def test_a_secret_in_the_base64_blob_of_a_text_resource_is_refused(url: str) -> None:
    # An embedded text/plain resource sent as a blob: the pattern reads the base64,
    # the client decodes it and shows the key.
    control = await call(url, "plain")
    assert control.is_error and SECRET not in dumped(control)
    result = await call(url, "blob")
    assert result.is_error, dumped(result)[:300]


async def test_a_text_blocks_audience_carries_no_upstream_data_past_field_rules(
    url: str,
) -> None:
    # annotations.audience is a list of "user"/"assistant" of any length, kept
    # under output rules as "a closed set": one bit per entry, here the 160 bits
    # of an AWS key (priority and lastModified are dropped for the same reason).
    result = await call(url, "audience")
    assert not result.is_error
    notes = result.content[0].annotations
    audience = [] if notes is None or notes.audience is None else notes.audience
    assert len(audience) == len(set(audience)) <= 2, len(audience)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_guard_server_result_type_carries_no_data_past_output_rules(mode: Any) -> None:
    # CallToolResult.resultType is a free string (the union is open). On a
    # 2026-07-28 connection the SDK sends a non-core resultType unsieved, and the
    # output rules never read it: the key goes out. (The gateway refuses that
    # revision, so there it held.)
    doc = {
        "metadata": {"name": "review19", "expires": expires_in()},
        "policies": [
            {
                "role": "dev",
                "permissions": [{"tool": "read", "conditions": {"output": PATTERNS}}],
            }
        ],
    }
    reset()
    configure_rbac_sync(source=InMemorySource(doc))

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="read", input_schema={"type": "object"})]
        )

    async def on_call_tool(ctx: Any, params: Any) -> types.CallToolResult:
        text = types.TextContent(type="text", text='{"id": 1}')
        return types.CallToolResult(content=[text], result_type=f"aws key {SECRET}")

    server = Server("review19", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    guard_server(server, identify=identify)
    try:
        async with Client(server, mode=mode) as client:
            act_as_alice()
            result = await client.call_tool("read", {})
    finally:
        auth_context_var.set(None)
        reset()
    assert SECRET not in dumped(result)
