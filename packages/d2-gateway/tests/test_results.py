"""The gateway's output rules against an upstream that shapes its answers to slip
past them (tests/hostile_server.py), over real HTTP with the real client: what
the client receives is always what the rules checked."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from d2.core import configure_rbac_sync
from d2.core.local import LocalFileSource
from d2.core.testing import reset
from d2.gateway import Gateway, UpstreamSpec
from d2.gateway.http import http_app
from gateway_testkit import HeaderIdentity, Served, client_for, write_policy
from mcp import types
from mcp.shared.exceptions import MCPError

HOSTILE = str(Path(__file__).with_name("hostile_server.py"))
SECRET = "AKIAABCDEFGHIJKLMNOP"
SSN = "123-45-6789"
WHOLE = {"deny_if_patterns": ["AKIA[0-9A-Z]{16}", "[0-9]{3}-[0-9]{2}-[0-9]{4}"]}
FIELDS = {"ssn": {"action": "filter"}}


def grant(tool: str, output: dict[str, Any]) -> dict[str, Any]:
    return {"tool": f"hostile.{tool}", "conditions": {"output": output}}


ENTRIES = [
    {
        "role": "dev",
        "permissions": [
            grant("dupkeys", {"notes": {"matches": "(?i)secret", "action": "deny"}, **WHOLE}),
            grant("mirrordup", WHOLE),
            grant("padded", {"max_bytes": 1000}),
            grant("rpcerror", WHOLE),
            grant("rpccode", WHOLE),
            grant("meta", {**FIELDS, **WHOLE}),
            *(grant(t, FIELDS) for t in ("plain", "fenced", "ndjson", "double", "split")),
            grant("records", {**FIELDS, "records.ssn": {"action": "filter"}}),
        ],
    },
    {"role": "reader", "permissions": ["resource:hostile:note://broken"]},
    {"role": "root", "permissions": ["*"]},
    {"role": "named", "permissions": ["resource:hostile:*", "prompt:hostile:hello"]},
    {
        "role": "picky",
        "permissions": [
            {
                "tool": "hostile.records",
                "conditions": {
                    "input": {
                        "tz": {"type": "string", "in": ["UTC", "internal-only-zone"]},
                        "q": {"type": "string", "not_matches": "(?i)project-x"},
                    }
                },
            },
            "hostile.plain",
        ],
    },
    {"role": "patterns", "permissions": [grant("plain", WHOLE), grant("records", WHOLE)]},
]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("results") / "policy.json"
    flow = {"labels": {"hostile.records": ["PRIVATE"]}, "blocks": {"PRIVATE": ["hostile.plain"]}}
    write_policy(policy, *ENTRIES, name="results-tests", data_flow=flow)
    reset()
    configure_rbac_sync(source=LocalFileSource(policy, poll_interval=0.1))
    gw = Gateway([UpstreamSpec("hostile", command=sys.executable, args=(HOSTILE,))])
    served = Served(HeaderIdentity(http_app(gw, wrap=None)))
    try:
        yield served.url
    finally:
        served.close()
        reset()


async def call(url: str, tool: str, roles: str = "dev") -> types.CallToolResult:
    return await session_calls(url, roles, [(tool, {})])


async def session_calls(
    url: str, roles: str, calls: list[tuple[str, dict[str, Any]]]
) -> types.CallToolResult:
    """Make ``calls`` in one session; the last result."""
    async with client_for(url, "alice", roles) as client:
        with anyio.fail_after(20):
            while not (await client.list_tools()).tools:
                await anyio.sleep(0.05)
        for name, arguments in calls:
            result: types.CallToolResult = await client.call_tool(f"hostile__{name}", arguments)
        return result


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


@pytest.mark.parametrize("tool", ["dupkeys", "mirrordup"])
async def test_json_text_with_a_duplicate_key_is_refused(url: str, tool: str) -> None:
    result = await call(url, tool)
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["d2_reason"] == "output_validation"
    assert SECRET not in result.model_dump_json()


async def test_json_text_goes_out_rewritten_from_the_checked_value(url: str) -> None:
    result = await call(url, "padded")  # 20 kB of padding around 15 bytes, max_bytes 1000
    assert not result.is_error
    assert texts(result) == ['{"notes": "ok"}']


async def test_an_upstream_error_message_reaches_the_log_only(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The upstream's JSON-RPC error text would skip the output rules: the client
    # gets the code, the gateway log the text (escaped: no terminal escapes).
    with caplog.at_level(logging.WARNING, logger="d2.gateway"):
        result = await call(url, "rpcerror")
    assert result.is_error
    assert texts(result) == ["upstream 'hostile' failed 'hostile.rpcerror' (error -32603)"]
    assert result.structured_content == {
        "d2_reason": "upstream_error",
        "d2_upstream": "hostile",
        "d2_error_code": -32603,
    }
    assert SECRET not in result.model_dump_json() and SSN not in result.model_dump_json()
    logged = [r.getMessage() for r in caplog.records if "JSON-RPC error" in r.getMessage()]
    assert len(logged) == 1 and SECRET in logged[0]
    assert "\x1b" not in logged[0] and "\\x1b" in logged[0]


async def test_an_upstream_error_on_a_resource_reaches_the_log_only(url: str) -> None:
    async with client_for(url, "rita", "reader") as client:
        with anyio.fail_after(20):
            while not (await client.list_resources()).resources:
                await anyio.sleep(0.05)
        with pytest.raises(MCPError) as raised:
            await client.read_resource("note://broken")
    assert "error -32603" in str(raised.value) and SECRET not in str(raised.value)


@pytest.mark.parametrize("tool", ["plain", "fenced", "ndjson", "double", "split"])
async def test_field_rules_refuse_text_they_cannot_read(url: str, tool: str) -> None:
    # "ssn: filter" finds no field in text that is not one JSON object or array
    # (a code fence, NDJSON, JSON in a JSON string, JSON split over two blocks).
    result = await call(url, tool)
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["d2_reason"] == "output_validation"
    assert SSN not in result.model_dump_json()


async def test_field_rules_rewrite_every_json_block(url: str) -> None:
    result = await call(url, "records")
    assert not result.is_error
    assert result.structured_content == {"records": [{"id": 1}]}
    assert [json.loads(t) for t in texts(result)] == [[{"id": 1}], {"id": 1}]


async def test_whole_value_rules_read_plain_text(url: str) -> None:
    result = await call(url, "plain", roles="patterns")
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["d2_reason"] == "output_validation"
    assert SSN not in result.model_dump_json()


POLICY_WORDS = ("internal-only-zone", "project-x", "PRIVATE", "AKIA", "[0-9]", "picky", "dev")


@pytest.mark.parametrize(
    ("roles", "calls", "reason", "said"),
    [
        ("picky", [("records", {"tz": "Mars", "q": "a"})], "input_validation", "argument 'tz'"),
        ("picky", [("records", {"tz": "UTC", "q": "project-x"})], "input_validation", "'q'"),
        ("picky", [("records", {"tz": "UTC", "q": "a"}), ("plain", {})], "data_flow_violation", ""),
        ("patterns", [("plain", {})], "output_validation", "holds text the policy denies"),
        ("dev", [("plain", {})], "output_validation", "output field 'ssn'"),
    ],
    ids=["allowed-values", "regex", "data-flow-label", "deny-pattern", "field-rule"],
)
async def test_a_refusal_never_shows_the_policy(
    url: str, roles: str, calls: list[tuple[str, dict[str, Any]]], reason: str, said: str
) -> None:
    # The client is not the policy's author: the argument or field and the reason
    # code, never allowed values, patterns, labels or roles.
    result = await session_calls(url, roles, calls)
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["d2_reason"] == reason
    shown = " ".join(texts(result))
    assert reason in shown and said in shown
    assert not [w for w in POLICY_WORDS if w in shown]


async def test_a_star_grant_opens_tools_never_resources_or_prompts(url: str) -> None:
    async with client_for(url, "root", "root") as client:
        with anyio.fail_after(20):
            while not (await client.list_tools()).tools:
                await anyio.sleep(0.05)
        assert (await client.list_resources()).resources == []
        assert (await client.list_prompts()).prompts == []
        with pytest.raises(MCPError, match="Unknown resource"):
            await client.read_resource("note://one")
        with pytest.raises(MCPError, match="Unknown prompt"):
            await client.get_prompt("hostile__hello", {})
    async with client_for(url, "nina", "named") as client:
        listed = [str(r.uri) for r in (await client.list_resources()).resources]
        assert sorted(listed) == ["note://broken", "note://one"]
        assert [p.name for p in (await client.list_prompts()).prompts] == ["hostile__hello"]
        assert (await client.read_resource("note://one")).contents
        assert (await client.get_prompt("hostile__hello", {})).messages


async def test_an_upstream_error_code_outside_json_rpcs_own_is_not_passed_on(url: str) -> None:
    # gateway re-check review: a huge integer code carried the upstream's bytes
    result = await call(url, "rpccode")
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["d2_error_code"] is None
    assert texts(result) == ["upstream 'hostile' failed 'hostile.rpccode' (error None)"]


async def test_meta_does_not_go_out_under_output_rules(url: str) -> None:
    # gateway re-check review: _meta (of the result and of a text block) is no
    # value the rules read; under output rules it is dropped
    result = await call(url, "meta")
    assert not result.is_error
    assert result.meta is None and all(c.meta is None for c in result.content)
    sent = result.model_dump_json(by_alias=True)
    assert SSN not in sent and SECRET not in sent
