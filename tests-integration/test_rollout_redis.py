"""Budgets and approvals shared by many processes through a real redis-server on a
free 127.0.0.1 port (the Debian package ``redis-server``; ``.ci/run`` installs it).

Each worker is a fresh interpreter configured exactly like an app process: the same
policy file, ``D2_STORE_URL`` pointing at the server, one user, guarded calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    ApprovalRequiredError,
    PermissionDeniedError,
    approve,
    configure_rbac_async,
    configure_rbac_sync,
    d2_guard,
    set_user,
    shutdown_rbac,
)
from d2.core.testing import RedisServer, controlled_clock, expires_in, redis_server, reset

REQUIRE_REDIS = os.environ.get("D2_REQUIRE_REDIS") == "1"
WORKERS = 8


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        message = "these tests need redis-server (Debian package redis-server)"
        if REQUIRE_REDIS:
            pytest.fail(message)
        pytest.skip(message)
    with redis_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("D2_SILENT", "1")
    yield
    reset()


def write_policy(path: Path, name: str) -> Path:
    doc = {
        "metadata": {"name": name, "expires": expires_in()},
        "policies": [
            {
                "role": "agent",
                "permissions": [
                    {"tool": "search", "limits": [{"max": 100, "per": "user", "window": "1d"}]},
                    {"tool": "refund", "approval": {"approvers": ["finance_lead"], "ttl": "1h"}},
                    "ping",
                ],
            },
            {"role": "finance_lead", "permissions": ["refund"]},
        ],
    }
    path.write_text(json.dumps(doc))
    return path


WORKER = textwrap.dedent(
    """
    import json, sys
    from d2.core import PermissionDeniedError, configure_rbac_sync, d2_guard, set_user
    policy, tool, calls, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    configure_rbac_sync(source=policy)  # the store comes from D2_STORE_URL
    ran = []
    @d2_guard(tool)
    def work(order="o1", amount=500):
        ran.append(1)
    set_user("agent-7", roles=["agent"])
    reasons = {}
    sys.stdin.readline()  # start together
    for _ in range(calls):
        try:
            work()
        except PermissionDeniedError as err:
            reasons[err.reason] = reasons.get(err.reason, 0) + 1
    with open(out, "w") as fh:
        json.dump({"ran": len(ran), "reasons": reasons}, fh)
    """
)


def race(
    tmp_path: Path, redis: RedisServer, policy: Path, tool: str, calls: int
) -> list[dict[str, Any]]:
    env = {**os.environ, "D2_STORE_URL": redis.url, "D2_SILENT": "1", "D2_TELEMETRY": "off"}
    procs = []
    for i in range(WORKERS):
        out = tmp_path / f"worker-{i}.json"
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(policy), tool, str(calls), str(out)],
                    stdin=subprocess.PIPE,
                    env=env,
                ),
                out,
            )
        )
    time.sleep(0.5)  # let every worker import and configure
    for proc, _ in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    results = []
    for proc, out in procs:
        assert proc.wait(timeout=60) == 0
        results.append(json.loads(out.read_text()))
    return results


def test_eight_processes_racing_fifty_calls_admit_exactly_the_budget(
    tmp_path: Path, redis: RedisServer
) -> None:
    policy = write_policy(tmp_path / "policy.json", "race-budget")
    results = race(tmp_path, redis, policy, "search", 50)
    assert sum(r["ran"] for r in results) == 100
    assert sum(r["reasons"].get("budget_exceeded", 0) for r in results) == 300
    assert all(set(r["reasons"]) <= {"budget_exceeded"} for r in results)


def test_eight_processes_racing_for_one_approval_run_the_call_once(
    tmp_path: Path, redis: RedisServer
) -> None:
    policy = write_policy(tmp_path / "policy.json", "race-approval")
    configure_rbac_sync(source=str(policy), store=redis.url)
    refund = d2_guard("refund")(lambda order="o1", amount=500: None)
    set_user("agent-7", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as info:
        refund()
    set_user("dana", roles=["finance_lead"])
    approve(info.value.request.id)
    shutdown_rbac()
    results = race(tmp_path, redis, policy, "refund", 1)
    assert sum(r["ran"] for r in results) == 1
    assert sum(r["reasons"].get("approval_required", 0) for r in results) == WORKERS - 1


def test_redis_stopped_mid_run_denies_budgets_and_the_app_keeps_running(
    tmp_path: Path, redis: RedisServer
) -> None:
    policy = write_policy(tmp_path / "policy.json", "outage")
    configure_rbac_sync(source=str(policy), store=redis.url)
    search = d2_guard("search")(lambda: "found")
    ping = d2_guard("ping")(lambda: "pong")
    set_user("agent-7", roles=["agent"])
    assert search() == "found"
    redis.stop()
    for _ in range(3):
        with pytest.raises(PermissionDeniedError) as info:
            search()
        assert info.value.reason == "budget_unavailable"
    assert ping() == "pong"  # tools without budgets never ask the store
    redis.start()
    assert search() == "found"


def test_windows_roll_over_on_the_controlled_clock_with_redis(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = 86400
    clock = controlled_clock(monkeypatch, start=(time.time() // day) * day + day - 5)
    doc = json.loads(write_policy(tmp_path / "p.json", "windows").read_text())
    doc["policies"][0]["permissions"][0]["limits"] = [{"max": 2, "per": "user", "window": "1d"}]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    configure_rbac_sync(source=str(tmp_path / "p.json"), store=redis.url)
    search = d2_guard("search")(lambda: "found")
    set_user("agent-7", roles=["agent"])
    search()
    search()
    with pytest.raises(PermissionDeniedError) as info:
        search()
    assert info.value.retry_after == pytest.approx(5)
    clock.advance(5)  # 00:00 UTC: a new window
    assert search() == "found"


def test_async_tools_use_the_asyncio_client(tmp_path: Path, redis: RedisServer) -> None:
    policy = write_policy(tmp_path / "policy.json", "async")

    async def scenario() -> tuple[list[str], str]:
        await configure_rbac_async(source=str(policy), store=redis.url)

        @d2_guard("search")
        async def search() -> str:
            await asyncio.sleep(0)
            return "found"

        set_user("agent-7", roles=["agent"])
        results = [await search() for _ in range(3)]
        redis.stop()
        try:
            await search()
        except PermissionDeniedError as err:
            reason = err.reason
        store = __import__("d2.core.evaluate", fromlist=["x"]).evaluator_for("default").store
        await store.aclose()
        return results, reason

    results, reason = asyncio.run(scenario())
    assert results == ["found"] * 3 and reason == "budget_unavailable"


def test_one_store_serves_apps_that_run_several_event_loops(
    tmp_path: Path, redis: RedisServer
) -> None:
    policy = write_policy(tmp_path / "policy.json", "loops")
    configure_rbac_sync(source=str(policy), store=redis.url)

    @d2_guard("search")
    async def search() -> str:
        return "found"

    async def once() -> str:
        set_user("agent-7", roles=["agent"])
        return await search()

    # asyncio.run per call (scripts, tests, serverless handlers): a fresh loop each time
    assert [asyncio.run(once()) for _ in range(4)] == ["found"] * 4
