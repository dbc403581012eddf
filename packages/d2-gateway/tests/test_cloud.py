"""Cloud mode end to end: ``d2-gateway serve --stdio`` with ``D2_TOKEN`` and no
``--policy``, against the real d2-server on loopback. The gateway fetches and
verifies the signed bundle, follows a new version (the client is told to list
again), stops every call on a revocation, and ships its decisions as usage
events, exactly as the SDK does."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from gateway_testkit import upstream_command
from mcp import Client, StdioServerParameters, types

pytest.importorskip("d2.server.testing")

from d2.server.testing import D2Server, start_server


def _gateway(server: D2Server, state: Path, messages: list[Any]) -> Client:
    env = {
        **server.env(),
        "D2_STATE_PATH": str(state),
        "D2_SILENT": "1",
        "PYTHONWARNINGS": "ignore",
    }
    params = StdioServerParameters(
        command=str(Path(sys.executable).with_name("d2-gateway")),
        args=[
            "serve", "--stdio", "--user", "ana", "--roles", "viewer",
            "--upstream", f"time=stdio:{upstream_command('mcp-server-time')}",
        ],
        env=env,
    )  # fmt: skip

    async def handler(message: Any) -> None:
        messages.append(message)

    return Client(params, mode="legacy", cache=None, message_handler=handler)


def _names(listing: types.ListToolsResult) -> list[str]:
    return sorted(t.name for t in listing.tools)


async def test_the_gateway_follows_the_control_planes_bundles(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    with start_server(tmp_path / "srv", poll_seconds=5) as server:
        server.register_key()
        viewer = {"role": "viewer", "permissions": ["time.get_current_time"]}
        assert server.publish(server.policy(viewer)).status_code in (200, 201)
        messages: list[Any] = []
        async with _gateway(server, tmp_path / "bundles.json", messages) as client:
            assert _names(await client.list_tools()) == ["time__get_current_time"]
            ok = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not ok.is_error and ok.structured_content["timezone"] == "UTC"
            hidden = await client.call_tool(
                "time__convert_time",
                {"source_timezone": "UTC", "time": "12:00", "target_timezone": "UTC"},
            )
            assert hidden.is_error and "Unknown tool" in hidden.content[0].text

            # version 2 grants convert_time: the session is told, and lists it
            wider = {"role": "viewer", "permissions": ["time.*"]}
            assert server.publish(server.policy(wider)).status_code in (200, 201)
            with anyio.fail_after(15):  # the poll interval is 5 s (+-10%)
                while not any(isinstance(m, types.ToolListChangedNotification) for m in messages):
                    await anyio.sleep(0.1)
            assert _names(await client.list_tools()) == [
                "time__convert_time",
                "time__get_current_time",
            ]
            converted = await client.call_tool(
                "time__convert_time",
                {"source_timezone": "UTC", "time": "12:00", "target_timezone": "UTC"},
            )
            assert not converted.is_error

            # a revocation stops everything at the next poll: nothing is listed or runs
            assert server.revoke().status_code in (200, 201)
            with anyio.fail_after(15):
                while (await client.list_tools()).tools:
                    await anyio.sleep(0.2)
            gone = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert gone.is_error and "Unknown tool" in gone.content[0].text

        # the decisions reached the control plane as usage events (flushed at exit)
        deadline = time.monotonic() + 15
        decided: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            events = [e for e in server.events() if e.event_type == "authz_decision"]
            decided = [json.loads(e.payload) for e in events]
            if len(decided) >= 4:
                break
            time.sleep(0.2)
        calls = sorted((d["tool_id"], d["decision"]) for d in decided)
        assert calls == [
            ("time.convert_time", "allowed"),
            ("time.convert_time", "denied"),  # while it was hidden: refused, and told
            ("time.get_current_time", "allowed"),
            ("time.get_current_time", "denied"),  # after the revocation
        ]
