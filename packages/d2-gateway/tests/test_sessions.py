"""MCP sessions over HTTP under attack (the gateway's first hostile review): a
session belongs to the identity that initialized it, for every request the
transport serves (POST, the GET stream, DELETE, a cancellation), not only for the
gateway's own handlers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from d2.core import configure_rbac_sync
from d2.core.local import LocalFileSource
from d2.core.testing import reset
from d2.gateway import Gateway, UpstreamSpec
from d2.gateway.http import http_app
from gateway_testkit import HeaderIdentity, Served, write_policy

FLAKY = str(Path(__file__).with_name("flaky_server.py"))
ACCEPT = {"accept": "application/json, text/event-stream"}
VERSION = "2025-11-25"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": VERSION,
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    policy = tmp_path_factory.mktemp("sessions") / "policy.json"
    write_policy(
        policy,
        {"role": "dev", "permissions": ["flaky.echo", "flaky.hang"]},
        {"role": "other", "permissions": ["flaky.echo"]},
        name="session-tests",
    )
    reset()
    configure_rbac_sync(source=LocalFileSource(policy, poll_interval=0.1))
    gw = Gateway([UpstreamSpec("flaky", command=sys.executable, args=(FLAKY,))], call_timeout=20)
    server = Served(HeaderIdentity(http_app(gw, wrap=None)))
    try:
        anyio.run(_connected, gw)
        yield server
    finally:
        server.close()
        reset()


async def _connected(gw: Gateway) -> None:
    with anyio.fail_after(20):
        while not gw.tools.entries:
            await anyio.sleep(0.05)


def rpc(number: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": number, "method": method, "params": params or {}}


def message(response: httpx.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("application/json"):
        return dict(response.json())
    for line in response.text.splitlines():
        if line.startswith("data:"):
            return dict(json.loads(line[5:]))
    raise AssertionError(f"no message in {response.text!r}")


async def open_session(http: httpx.AsyncClient, url: str, who: str) -> dict[str, str]:
    """Initialize a session as ``who`` (``USER;ROLES``); its request headers."""
    opened = await http.post(url, json=INIT, headers={**ACCEPT, "x-test-user": who})
    assert opened.status_code == 200
    headers = {
        **ACCEPT,
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": VERSION,
        "x-test-user": who,
    }
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(url, json=done, headers=headers)).status_code == 202
    return headers


async def test_another_user_cannot_squat_a_fresh_session(served: Served) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        alice = await open_session(http, served.url, "alice;dev")
        bob = {**alice, "x-test-user": "bob;other"}
        # bob, with alice's session id, speaks first in it: not found, bound to nothing
        squat = await http.post(served.url, json=rpc(2, "tools/list"), headers=bob)
        assert squat.status_code == 404
        own = message(await http.post(served.url, json=rpc(3, "tools/list"), headers=alice))
        assert sorted(t["name"] for t in own["result"]["tools"]) == ["flaky__echo", "flaky__hang"]
        # the same user with other roles is another identity
        wider = {**alice, "x-test-user": "alice;dev,other"}
        assert (await http.post(served.url, json=rpc(4, "ping"), headers=wider)).status_code == 404


async def test_another_user_cannot_cancel_an_in_flight_call(served: Served) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        alice = await open_session(http, served.url, "alice;dev")
        bob = {**alice, "x-test-user": "bob;other"}
        answers: list[dict[str, Any]] = []

        async def slow() -> None:
            call = rpc(10, "tools/call", {"name": "flaky__hang", "arguments": {"seconds": 1.0}})
            answers.append(message(await http.post(served.url, json=call, headers=alice)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.sleep(0.4)
            cancel = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 10, "reason": "bob"},
            }
            assert (await http.post(served.url, json=cancel, headers=bob)).status_code == 404
        (answer,) = answers
        assert answer["result"]["content"][0]["text"] == "late"


async def test_another_user_cannot_take_the_get_stream(served: Served) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        alice = await open_session(http, served.url, "alice;dev")
        bob = {**alice, "x-test-user": "bob;other", "accept": "text/event-stream"}
        async with http.stream("GET", served.url, headers=bob) as stream:
            assert stream.status_code == 404


async def test_another_user_cannot_delete_the_session(served: Served) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        alice = await open_session(http, served.url, "alice;dev")
        bob = {**alice, "x-test-user": "bob;other"}
        assert (await http.request("DELETE", served.url, headers=bob)).status_code == 404
        still = await http.post(served.url, json=rpc(2, "tools/list"), headers=alice)
        assert still.status_code == 200 and len(message(still)["result"]["tools"]) == 2
        assert (await http.request("DELETE", served.url, headers=alice)).status_code == 200
        gone = await http.post(served.url, json=rpc(3, "tools/list"), headers=alice)
        assert gone.status_code == 404


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, served: Served) -> Iterator[Served]:
    # the module's policy (configured by ``served``); a gateway of its own with
    # small limits: two sessions per user, idle sessions end after 1.5 s
    gw = Gateway([UpstreamSpec("flaky", command=sys.executable, args=(FLAKY,))], call_timeout=20)
    app = http_app(gw, wrap=None, max_sessions_per_user=2, session_idle_timeout=1.5)
    server = Served(HeaderIdentity(app))
    try:
        anyio.run(_connected, gw)
        yield server
    finally:
        server.close()


async def test_one_user_cannot_hold_every_session(capped: Served) -> None:
    url = capped.url
    async with httpx.AsyncClient(timeout=10) as http:
        first = await open_session(http, url, "mallory;dev")
        await open_session(http, url, "mallory;other")  # other roles: the same user
        over = await http.post(url, json=INIT, headers={**ACCEPT, "x-test-user": "mallory;dev"})
        assert over.status_code == 429 and "mcp-session-id" not in over.headers
        error = over.json()["error"]
        assert error["data"]["d2_reason"] == "too_many_sessions"
        assert "DELETE" in error["message"]
        # everyone else is served
        alice = await open_session(http, url, "alice;dev")
        listed = message(await http.post(url, json=rpc(2, "tools/list"), headers=alice))
        assert len(listed["result"]["tools"]) == 2
        # ending one makes room
        assert (await http.request("DELETE", url, headers=first)).status_code == 200
        await open_session(http, url, "mallory;dev")


async def test_an_idle_session_ends_after_the_idle_timeout(capped: Served) -> None:
    url = capped.url
    async with httpx.AsyncClient(timeout=10) as http:
        sessions = [await open_session(http, url, "idle-ivy;dev") for _ in range(2)]
        refused = await http.post(url, json=INIT, headers={**ACCEPT, "x-test-user": "idle-ivy;dev"})
        assert refused.status_code == 429
        await anyio.sleep(2.5)
        gone = await http.post(url, json=rpc(2, "tools/list"), headers=sessions[0])
        assert gone.status_code == 404
        await open_session(http, url, "idle-ivy;dev")
