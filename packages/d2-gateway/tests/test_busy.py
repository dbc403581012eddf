"""A busy upstream is not a dead one (the gateway's first hostile review): a call
that keeps the upstream from answering pings, or a large result, neither restarts
the upstream nor fails other users' calls; a result over ``max_result_bytes`` is a
tool error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from d2.core import configure_rbac_sync
from d2.core.local import LocalFileSource
from d2.core.testing import reset
from d2.gateway import Gateway, UpstreamSpec
from d2.gateway.http import http_app
from gateway_testkit import HeaderIdentity, Served, client_for, write_policy
from mcp import types

FLAKY = str(Path(__file__).with_name("flaky_server.py"))
LIMIT = 200_000


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Served]]:
    policy = tmp_path_factory.mktemp("busy") / "policy.json"
    grants = ["flaky.echo", "flaky.hang", "flaky.block", "flaky.big", "flaky.big_meta"]
    grants += ["resource:flaky:*", "prompt:flaky:*"]
    write_policy(policy, {"role": "dev", "permissions": grants}, name="busy-tests")
    reset()
    configure_rbac_sync(source=LocalFileSource(policy, poll_interval=0.1))
    gw = Gateway(
        [UpstreamSpec("flaky", command=sys.executable, args=(FLAKY,))],
        call_timeout=30,
        max_result_bytes=LIMIT,
    )
    served = Served(HeaderIdentity(http_app(gw, wrap=None)))
    try:
        anyio.run(_connected, gw)
        yield gw, served
    finally:
        served.close()
        reset()


async def _connected(gw: Gateway) -> None:
    with anyio.fail_after(20):
        while not gw.tools.entries:
            await anyio.sleep(0.05)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_call_that_blocks_the_upstream_past_the_ping_timeout_completes(
    busy: tuple[Gateway, Served],
) -> None:
    gw, served = busy
    before = gw.upstreams["flaky"].connections
    results: dict[str, types.CallToolResult] = {}
    async with (
        client_for(served.url, "bob", "dev") as bob,
        client_for(served.url, "alice", "dev") as alice,
    ):

        async def other_user() -> None:
            results["alice"] = await alice.call_tool("flaky__hang", {"seconds": 0.5})

        async with anyio.create_task_group() as tg:
            tg.start_soon(other_user)
            await anyio.sleep(0.2)
            # 6.5 s without a single answer, pings included (the ping timeout is 5 s)
            results["bob"] = await bob.call_tool("flaky__block", {"seconds": 6.5})
        assert not results["bob"].is_error and text(results["bob"]) == "unblocked"
        assert not results["alice"].is_error and text(results["alice"]) == "late"
        assert not (await alice.call_tool("flaky__echo", {"text": "x"})).is_error
    assert gw.upstreams["flaky"].connections == before  # never restarted


async def test_a_result_over_the_limit_is_a_tool_error(busy: tuple[Gateway, Served]) -> None:
    gw, served = busy
    before = gw.upstreams["flaky"].connections
    async with client_for(served.url, "carol", "dev") as carol:
        # the text and its structured copy ({"result": ...}) both count
        fits = await carol.call_tool("flaky__big", {"size": LIMIT // 3})
        assert not fits.is_error and len(text(fits)) == LIMIT // 3
        refused = await carol.call_tool("flaky__big", {"size": LIMIT + 1})
        assert refused.is_error
        assert refused.structured_content["d2_reason"] == "result_too_large"
        assert "AAAA" not in text(refused) and "result_too_large" in text(refused)
        assert len(text(refused)) < 500
        assert not (await carol.call_tool("flaky__echo", {"text": "x"})).is_error
    assert gw.upstreams["flaky"].connections == before


async def test_every_field_of_a_result_counts_and_prompts_are_bounded_too(
    busy: tuple[Gateway, Served],
) -> None:
    # gateway re-check review (low): the bound counted text, data and structured
    # content only, so a result could carry any size in its _meta, and a prompt
    # was not bounded at all
    gw, served = busy
    before = gw.upstreams["flaky"].connections
    async with client_for(served.url, "dave", "dev") as dave:
        fits = await dave.call_tool("flaky__big_meta", {"size": LIMIT // 2})
        assert not fits.is_error
        refused = await dave.call_tool("flaky__big_meta", {"size": LIMIT + 1})
        assert refused.is_error and refused.structured_content["d2_reason"] == "result_too_large"
        short = await dave.get_prompt("flaky__long", {"size": "100"})
        assert "P" * 100 in str(short.messages[0].content)
        with pytest.raises(Exception, match="result_too_large") as info:
            await dave.get_prompt("flaky__long", {"size": str(LIMIT + 1)})
        assert "PPPP" not in str(info.value)
        assert not (await dave.call_tool("flaky__echo", {"text": "x"})).is_error
    assert gw.upstreams["flaky"].connections == before  # never restarted
