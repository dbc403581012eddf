"""Twenty-third hostile review of the gateway's enforcement: attacks that
succeeded, as tests asserting the secure behaviour (real uvicorn, real
redis-server, real mcp-server-time upstream, the real ``mcp`` client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from d2.core import configure_rbac_sync
from d2.core.local import LocalFileSource
from d2.core.testing import redis_server, reset
from d2.gateway import Gateway, UpstreamSpec
from d2.gateway.http import http_app
from gateway_testkit import HeaderIdentity, Served, client_for, upstream_command, write_policy
from mcp import types

RECORDS: list[dict[str, Any]] = []
CONVERT = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    # get_current_time has a per-user budget (a take in the shared store);
    # the sequence rule forbids get_current_time after convert_time.
    policy = write_policy(
        tmp_path_factory.mktemp("policy") / "policy.json",
        {
            "role": "agent",
            "permissions": [
                {
                    "tool": "time.get_current_time",
                    "limits": [{"max": 100, "per": "user", "window": "1d"}],
                },
                "time.convert_time",
            ],
            "sequence": [
                {"deny": ["time.convert_time", "time.get_current_time"], "reason": "no read after"}
            ],
        },
        name="review23",
    )
    reset()
    RECORDS.clear()
    configure_rbac_sync(
        source=LocalFileSource(policy, poll_interval=0.1),
        store=redis_url,
        decision_log=RECORDS.append,
    )
    gw = Gateway([UpstreamSpec("time", command=upstream_command("mcp-server-time"))])
    served = Served(HeaderIdentity(http_app(gw, wrap=None)))
    try:
        anyio.run(_connected, gw)
        yield served.url
    finally:
        served.close()
        reset()


async def _connected(gw: Gateway) -> None:
    with anyio.fail_after(30):
        while any(u.connections == 0 for u in gw.upstreams.values()):
            await anyio.sleep(0.05)


def _pause_store(redis_url: str, millis: int) -> None:
    """The shared store is slow for ``millis`` (a loaded or distant redis): every
    write, the budget's take among them, waits."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.execute_command("CLIENT", "PAUSE", str(millis), "WRITE")
    finally:
        client.close()


async def test_a_sequence_rule_holds_for_a_call_whose_budget_take_was_in_flight(
    url: str, redis_url: str
) -> None:
    """deny [convert_time, get_current_time]: get_current_time is judged (steps 4-6,
    history empty), then waits for its per-user budget in the store; meanwhile
    convert_time is admitted, recorded and runs in the same session. When the
    store answers, get_current_time runs AFTER convert_time: the forbidden
    sequence happened. Expected: it is refused (sequence_violation) and the
    upstream is not called."""
    async with client_for(url, "rhea", "agent") as control:  # the rule is live
        assert not (await control.call_tool("time__convert_time", CONVERT)).is_error
        after = await control.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert after.structured_content is not None
        assert after.structured_content["d2_reason"] == "sequence_violation"

    async with client_for(url, "rhea", "agent") as client:
        got: dict[str, types.CallToolResult] = {}

        async def first() -> None:
            got["read"] = await client.call_tool("time__get_current_time", {"timezone": "UTC"})

        _pause_store(redis_url, 400)
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.sleep(0.15)  # get_current_time is waiting for the store
            second = await client.call_tool("time__convert_time", CONVERT)
            assert not second.is_error  # convert_time ran (it needs no store)
        read = got["read"]
        assert read.is_error, "get_current_time ran after convert_time in the same session"
        assert read.structured_content is not None
        assert read.structured_content["d2_reason"] == "sequence_violation"
