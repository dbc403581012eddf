"""Upstream supervision and policy hot reload, over real HTTP: a stdio upstream
that crashes is restarted, calls in flight fail cleanly (a tool error, never a
hang), clients are told to list again; a new policy file changes what each user
sees without a restart."""

from __future__ import annotations

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

FLAKY = str(Path(__file__).with_name("flaky_server.py"))
ALL = ["flaky.echo", "flaky.hang", "flaky.crash", "resource:flaky:note://public"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Served, Path]]:
    policy = tmp_path_factory.mktemp("sup") / "policy.json"
    write_policy(policy, {"role": "dev", "permissions": ALL}, name="sup-tests")
    reset()
    configure_rbac_sync(source=LocalFileSource(policy, poll_interval=0.1))
    gw = Gateway([UpstreamSpec("flaky", command=sys.executable, args=(FLAKY,))], call_timeout=20)
    served = Served(HeaderIdentity(http_app(gw, wrap=None)))
    try:
        yield gw, served, policy
    finally:
        served.close()
        reset()


async def connections(gw: Gateway, at_least: int) -> None:
    with anyio.fail_after(20):
        while gw.upstreams["flaky"].connections < at_least or not gw.tools.entries:
            await anyio.sleep(0.05)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_crashed_upstream_is_restarted_and_calls_in_flight_fail_cleanly(
    setup: tuple[Gateway, Served, Path],
) -> None:
    gw, served, _ = setup
    await connections(gw, 1)
    before = gw.upstreams["flaky"].connections
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with client_for(served.url, "u1", "dev", message_handler=on_message) as client:
        assert sorted(t.name for t in (await client.list_tools()).tools) == [
            "flaky__crash",
            "flaky__echo",
            "flaky__hang",
        ]
        results: dict[str, types.CallToolResult] = {}

        async def in_flight() -> None:
            results["hang"] = await client.call_tool("flaky__hang", {"seconds": 60})

        with anyio.fail_after(15):  # a call in flight must not hang
            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                await anyio.sleep(0.3)
                results["crash"] = await client.call_tool("flaky__crash", {})
        for name in ("hang", "crash"):
            assert results[name].is_error, name
            assert results[name].structured_content["d2_reason"] == "upstream_unavailable"
            assert "flaky" in text(results[name])
        with anyio.fail_after(10):
            await changed.wait()  # the client is told to list again
        await connections(gw, before + 1)  # restarted
        ok = await client.call_tool("flaky__echo", {"text": "back"})
        assert not ok.is_error and text(ok) == "echo: back"


async def test_a_down_upstream_shows_no_tools_and_refuses_cleanly(
    setup: tuple[Gateway, Served, Path],
) -> None:
    gw, served, _ = setup
    await connections(gw, 1)
    async with client_for(served.url, "u2", "dev") as client:
        await client.call_tool("flaky__crash", {})
        with anyio.fail_after(5):
            while gw.upstreams["flaky"]._client is not None:
                await anyio.sleep(0.01)
        listed = [t.name for t in (await client.list_tools()).tools]
        if listed:  # already back (the restart is quick): then it works
            assert not (await client.call_tool("flaky__echo", {"text": "x"})).is_error
        else:
            missing = await client.call_tool("flaky__echo", {"text": "x"})
            assert missing.is_error and text(missing) == "Unknown tool: flaky__echo"
    await connections(gw, 1)


async def test_hot_reload_changes_what_each_user_sees(
    setup: tuple[Gateway, Served, Path],
) -> None:
    gw, served, policy = setup
    await connections(gw, 1)
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with client_for(served.url, "u3", "dev", message_handler=on_message) as client:
        assert len((await client.list_tools()).tools) == 3
        write_policy(policy, {"role": "dev", "permissions": ["flaky.echo"]}, name="sup-tests")
        with anyio.fail_after(10):
            await changed.wait()
        assert [t.name for t in (await client.list_tools()).tools] == ["flaky__echo"]
        hidden = await client.call_tool("flaky__hang", {"seconds": 0})
        assert hidden.is_error and text(hidden) == "Unknown tool: flaky__hang"
        changed = anyio.Event()
        write_policy(policy, {"role": "dev", "permissions": ALL}, name="sup-tests")
        with anyio.fail_after(10):
            await changed.wait()


async def test_resources_are_denied_unless_granted(setup: tuple[Gateway, Served, Path]) -> None:
    gw, served, _ = setup
    await connections(gw, 1)
    async with client_for(served.url, "u4", "dev") as client:
        listed = [str(r.uri) for r in (await client.list_resources()).resources]
        assert listed == ["note://public"]
        read = await client.read_resource("note://public")
        assert [c.text for c in read.contents] == ["public note"]  # type: ignore[union-attr]
        for uri in ("note://secret", "note://missing"):  # hidden == missing
            with pytest.raises(Exception, match=f"Unknown resource: {uri}"):
                await client.read_resource(uri)
        assert (await client.list_prompts()).prompts == []  # prompt:flaky:greet not granted
    async with client_for(served.url, "u5", "") as nobody:
        assert (await nobody.list_resources()).resources == []


async def test_an_upstream_that_cannot_start_is_absent_and_the_others_serve(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from mcp import Client

    gw = Gateway(
        [
            UpstreamSpec("broken", command=str(tmp_path / "no-such-server")),
            UpstreamSpec("flaky", command=sys.executable, args=(FLAKY,)),
        ],
        identity=("u6", ("dev",)),
    )
    with caplog.at_level(logging.WARNING, logger="d2.gateway"):
        async with gw.running():
            await gw.wait_tried(20)
            await connections(gw, 1)
            async with Client(gw.server, mode="legacy", cache=None) as client:
                names = sorted(t.name for t in (await client.list_tools()).tools)
                assert names == ["flaky__crash", "flaky__echo", "flaky__hang"]
                gone = await client.call_tool("broken__anything", {})
                assert text(gone) == "Unknown tool: broken__anything"
            assert gw.upstreams["broken"].connections == 0
    assert "upstream broken" in caplog.text and "retrying in" in caplog.text
    assert "no-such-server" in caplog.text
