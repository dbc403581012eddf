"""Hostile review 18: attacks on d2-gateway that succeed today. Each test asserts
the secure behaviour, so it fails while the attack works."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from d2.gateway import UpstreamSpec
from gateway_testkit import (
    call_listed,
    client_for,
    served_gateway,
    write_policy,
)
from mcp import types

RAW = str(Path(__file__).with_name("raw_server.py"))
SERVER = str(Path(__file__).with_name("review18_server.py"))
SECRET = "AKIAABCDEFGHIJKLMNOP"
# a secret scanner's pattern, word-bounded as such patterns are
WHOLE = {"deny_if_patterns": [r"\bAKIA[0-9A-Z]{16}\b"]}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("review18") / "policy.json"
    tools = ["plain", "embedded", "linked", "priority"]
    extra = ["raw.again", "raw.count"]
    write_policy(
        policy,
        {
            "role": "dev",
            "permissions": [
                *({"tool": f"review18.{t}", "conditions": {"output": WHOLE}} for t in tools),
                *extra,
            ],
        },
        name="review18",
    )
    with served_gateway(
        policy,
        [
            UpstreamSpec("review18", command=sys.executable, args=(SERVER,)),
            UpstreamSpec("raw", command=sys.executable, args=(RAW,)),
        ],
    ) as url:
        yield url


async def call(url: str, tool: str) -> types.CallToolResult:
    result: types.CallToolResult = await call_listed(url, f"review18__{tool}")
    return result


async def test_a_secret_on_its_own_line_in_an_embedded_resource_is_refused(url: str) -> None:
    # The same key in a text block is refused; in an embedded text resource the
    # rules read the block's JSON, where "\n" is backslash + n: no word boundary
    # before AKIA, the pattern misses, the key goes out.
    control = await call(url, "plain")
    assert control.is_error and SECRET not in control.model_dump_json(by_alias=True)
    result = await call(url, "embedded")
    assert result.is_error, result.model_dump_json(by_alias=True)[:300]
    assert SECRET not in result.model_dump_json(by_alias=True)


async def test_a_secret_on_its_own_line_in_a_resource_link_is_refused(url: str) -> None:
    result = await call(url, "linked")
    assert result.is_error, result.model_dump_json(by_alias=True)[:300]
    assert SECRET not in result.model_dump_json(by_alias=True)


async def test_a_text_blocks_priority_carries_no_upstream_data_past_the_output_rules(
    url: str,
) -> None:
    # annotations.priority is any float in [0, 1]: 15 digits per block that the
    # rules never read (an SSN, a card number split over blocks, ...).
    result = await call(url, "priority")
    block = result.content[0]
    assert block.annotations is None or block.annotations.priority in (None, 0.0, 0.5, 1.0)


async def test_one_decision_is_one_upstream_call(url: str) -> None:
    # The reviewer's open question: an upstream that answers "input required"
    # could make an SDK client send the same call again (up to ten rounds): one
    # decision, one budget charge, many runs. It held: the gateway speaks the
    # handshake-era revision upstream, where the client refuses such an answer,
    # and it sets no rounds at all. The raw server (no SDK) sends it anyway.
    async with client_for(url, "alice", "dev") as client:
        with anyio.fail_after(20):
            while len((await client.list_tools()).tools) < 6:
                await anyio.sleep(0.05)
        asked = await client.call_tool("raw__again", {})
        assert asked.is_error and asked.structured_content["d2_reason"] == "upstream_error"
        count = await client.call_tool("raw__count", {})
    assert [c.text for c in count.content if isinstance(c, types.TextContent)] == ["1"]
