"""Usage events: recorded without blocking, shipped in chunks <= 32 KiB, 429 resends
the same chunk, 413 splits it, flushed at shutdown, off when D2_TELEMETRY says so."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from cloudfakes import BASE, FakePlane
from d2.cloud.client import ControlPlane
from d2.cloud.usage import MAX_CHUNK, UsageEvents
from d2.core import configure_rbac_sync, d2_guard, set_user
from d2.core.context import UserContext


def test_decisions_become_events_and_are_flushed_at_shutdown(
    plane: FakePlane, cloud_options: Any
) -> None:
    manager = configure_rbac_sync(**cloud_options())
    tool = d2_guard("search", on_deny=None)(lambda: "ok")
    set_user("alice", roles=["agent"])
    tool()
    set_user("mallory", roles=["guest"])
    tool()
    manager.shutdown()
    decisions = [e for e in plane.events if e["event_type"] == "authz_decision"]
    assert [
        (e["payload"]["user_id"], e["payload"]["decision"], e["payload"]["reason"])
        for e in decisions
    ] == [("alice", "allowed", None), ("mallory", "denied", "not_granted")]
    assert any(e["event_type"] == "policy_loaded" for e in plane.events)
    assert all(e["occurred_at"].endswith("Z") for e in plane.events)


@pytest.mark.parametrize("mode", ["off", "metrics"])
def test_no_usage_events_when_telemetry_says_so(
    plane: FakePlane, cloud_options: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("D2_TELEMETRY", mode)
    manager = configure_rbac_sync(**cloud_options())
    observers = manager.evaluator.observers
    assert not any(type(getattr(o, "__self__", None)).__name__ == "UsageEvents" for o in observers)
    if mode == "off":
        assert manager.evaluator.observer is None and manager.evaluator.timer is None
    set_user("alice", roles=["agent"])
    d2_guard("search")(lambda: "ok")()
    manager.shutdown()
    assert plane.events == [] and "/v1/events/ingest" not in plane.calls


def test_user_ids_can_be_sent_hashed(
    plane: FakePlane, cloud_options: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D2_USER_ID_HASH", "1")
    manager = configure_rbac_sync(**cloud_options())
    set_user("alice@example.com", roles=["agent"])
    d2_guard("search")(lambda: "ok")()
    manager.shutdown()
    sent = [e["payload"]["user_id"] for e in plane.events if e["event_type"] == "authz_decision"]
    assert sent and "alice" not in sent[0] and len(sent[0]) == 32


def _usage(handler: Any, **kwargs: Any) -> UsageEvents:
    api = ControlPlane(BASE, "d2_test", transport=httpx.MockTransport(handler))
    return UsageEvents(api, **kwargs)


def _fill(usage: UsageEvents, n: int) -> None:
    ctx = UserContext("u" * 40, frozenset({"r"}))
    for i in range(n):
        usage.observe(f"tool.{i:05d}", ctx, None if i % 2 else "not_granted")


async def test_chunks_are_at_most_32_kib_and_nothing_is_lost() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(202)

    usage = _usage(handler)
    _fill(usage, 2000)
    await usage.flush()
    assert len(bodies) > 3 and all(len(b) <= MAX_CHUNK for b in bodies)
    names = [e["payload"]["tool_id"] for b in bodies for e in json.loads(b)["events"]]
    assert names == [f"tool.{i:05d}" for i in range(2000)]


async def test_429_waits_and_sends_the_same_chunk_again(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[bytes] = []
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("d2.cloud.usage.asyncio.sleep", fake_sleep)

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if len(bodies) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"})
        return httpx.Response(202)

    usage = _usage(handler)
    _fill(usage, 10)
    await usage.flush()
    assert waits == [3.0] and bodies[0] == bodies[1] and usage.sent == 10 and usage.dropped == 0


async def test_413_splits_the_chunk() -> None:
    accepted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        if len(events) > 25:
            return httpx.Response(413)
        accepted.extend(e["payload"]["tool_id"] for e in events)
        return httpx.Response(202)

    usage = _usage(handler)
    _fill(usage, 100)
    await usage.flush()
    assert usage.sent == 100 and usage.dropped == 0
    assert accepted == [f"tool.{i:05d}" for i in range(100)]  # all of them, in order


async def test_a_full_buffer_drops_the_oldest_and_counts() -> None:
    usage = _usage(lambda request: httpx.Response(202), capacity=50)
    _fill(usage, 80)
    assert len(usage.buffer) == 50 and usage.dropped == 30
    assert usage.buffer[0]["payload"]["tool_id"] == "tool.00030"


async def test_server_errors_never_reach_the_app() -> None:
    usage = _usage(lambda request: httpx.Response(400, json={"detail": "bad"}))
    _fill(usage, 5)
    await usage.flush()  # no exception
    assert usage.dropped == 5


async def test_a_5xx_storm_holds_events_for_the_next_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_wait(seconds: float) -> None:
        return None

    monkeypatch.setattr("d2.cloud.usage.asyncio.sleep", no_wait)
    down = True
    received: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if down:
            return httpx.Response(503)
        received.extend(e["payload"]["tool_id"] for e in json.loads(request.content)["events"])
        return httpx.Response(202)

    usage = _usage(handler)
    _fill(usage, 30)
    await usage.flush()  # the server is down: nothing is lost
    assert usage.dropped == 0 and received == []
    down = False
    await usage.flush()
    assert received == [f"tool.{i:05d}" for i in range(30)] and usage.dropped == 0


async def test_many_429s_never_drop_and_event_batch_is_respected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_wait(seconds: float) -> None:
        return None

    monkeypatch.setattr("d2.cloud.usage.asyncio.sleep", no_wait)
    answers = iter([429] * 12)
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers, 202)
        if status == 202:
            sizes.append(len(json.loads(request.content)["events"]))
        return httpx.Response(status, headers={"Retry-After": "1"})

    usage = _usage(handler)
    usage.max_events = 7
    _fill(usage, 20)
    await usage.flush()
    assert usage.dropped == 0 and usage.sent == 20 and max(sizes) <= 7


def test_budget_denials_and_approvals_reach_the_usage_events(
    plane: FakePlane, cloud_options: Any, tmp_path: Any
) -> None:
    plane.publish(
        2,
        permissions=[
            {"tool": "search", "limits": [{"max": 1, "per": "request"}]},
            {"tool": "refund", "approval": {"approvers": ["agent"]}},
        ],
    )
    log: list[dict[str, Any]] = []
    manager = configure_rbac_sync(**cloud_options(), decision_log=log.append)
    search = d2_guard("search", on_deny=None)(lambda: "ok")
    refund = d2_guard("refund", on_deny=None)(lambda: "ok")
    set_user("alice", roles=["agent"])
    search()
    search()
    refund()
    manager.shutdown()
    decisions = [
        (e["payload"]["tool_id"], e["payload"]["decision"], e["payload"]["reason"])
        for e in plane.events
        if e["event_type"] == "authz_decision"
    ]
    assert decisions == [
        ("search", "allowed", None),
        ("search", "denied", "budget_exceeded"),
        ("refund", "denied", "approval_required"),
    ]
    # cloud mode: the policy version recorded is the bundle's version
    assert {r["policy_version"] for r in log} == {"2"}
    assert log[-1]["approval_id"] and log[-1]["reason"] == "approval_required"
