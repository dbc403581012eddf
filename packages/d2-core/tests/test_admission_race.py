"""Calls of one request that overlap while the store answers (the twenty-third
hostile review): steps 5-6 (sequences, data flow) judged a call before its store
work, and another call of the request admitted meanwhile was never seen. They are
judged again on what the request holds once the store has answered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from d2.core import PermissionDeniedError, d2_guard, set_user
from d2.core.context import get_user_context
from race_kit import pause_redis


def _policy(configure: Any, redis_url: str, **metadata: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                {"tool": "read", "limits": [{"max": 100, "per": "user", "window": "1d"}]},
                "write",
                "secrets",
            ],
            "sequence": [{"deny": ["write", "read"]}],
        },
        metadata=metadata,
        store=redis_url,
    )


async def _overlap(first: Any, second: Any, redis_url: str) -> tuple[Any, Any]:
    """``first`` waits for the store while ``second`` (no store work) runs."""
    pause_redis(redis_url, 300)
    one = asyncio.ensure_future(first())
    await asyncio.sleep(0.1)
    two = await second()
    done = await asyncio.gather(one, return_exceptions=True)
    return done[0], two


async def test_a_sequence_holds_for_a_call_whose_store_work_was_in_flight(
    configure: Any, redis_url: str
) -> None:
    _policy(configure, redis_url)
    read = d2_guard("read")(_ran("read"))
    write = d2_guard("write")(_ran("write"))
    set_user("u-seq", roles=["r"])
    first, second = await _overlap(read, write, redis_url)
    assert second == "write"
    assert isinstance(first, PermissionDeniedError), first  # read after write: refused
    assert first.reason == "sequence_violation"
    assert get_user_context().call_history == ("write",)  # the refused call is not in it


async def test_a_data_flow_block_holds_for_a_call_whose_store_work_was_in_flight(
    configure: Any, redis_url: str
) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                {"tool": "send", "limits": [{"max": 100, "per": "user", "window": "1d"}]},
                "secrets",
            ],
        },
        metadata={"data_flow": {"labels": {"secrets": ["SECRET"]}, "blocks": {"SECRET": ["send"]}}},
        store=redis_url,
    )
    send = d2_guard("send")(_ran("send"))
    secrets = d2_guard("secrets")(_ran("secrets"))
    set_user("u-flow", roles=["r"])
    first, second = await _overlap(send, secrets, redis_url)
    assert second == "secrets"
    assert isinstance(first, PermissionDeniedError), first
    assert first.reason == "data_flow_violation"


async def test_calls_that_do_not_overlap_are_judged_as_before(
    configure: Any, redis_url: str
) -> None:
    _policy(configure, redis_url)
    read = d2_guard("read")(_ran("read"))
    write = d2_guard("write")(_ran("write"))
    set_user("u-calm", roles=["r"])
    assert await read() == "read"
    assert await write() == "write"
    with pytest.raises(PermissionDeniedError) as info:
        await read()
    assert info.value.reason == "sequence_violation"


def _ran(name: str) -> Any:
    async def tool() -> str:
        return name

    tool.__name__ = name
    return tool
