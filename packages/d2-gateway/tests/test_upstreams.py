"""Upstreams over Streamable HTTP, and per-user budgets shared by two gateway
processes through one Redis (the deployment with several replicas)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from d2.core import configure_rbac_sync
from d2.core.testing import redis_server, reset
from d2.gateway import Gateway, UpstreamSpec
from gateway_testkit import free_port, time_gateway, write_policy
from mcp import Client, types

FLAKY = str(Path(__file__).with_name("flaky_server.py"))


@pytest.fixture
def http_upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, FLAKY, "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_http_upstream_is_listed_and_called(http_upstream: str, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "p.json", {"role": "dev", "permissions": ["remote.echo"]}, name="up-tests"
    )
    reset()
    configure_rbac_sync(source=str(policy))
    gateway = Gateway([UpstreamSpec("remote", url=http_upstream)], identity=("u", ("dev",)))
    try:
        async with gateway.running():
            await gateway.wait_connected(20)
            async with Client(gateway.server, mode="legacy", cache=None) as client:
                listed = [t.name for t in (await client.list_tools()).tools]
                assert listed == ["remote__echo"]
                result = await client.call_tool("remote__echo", {"text": "over http"})
                assert not result.is_error
                assert [c.text for c in result.content if isinstance(c, types.TextContent)] == [
                    "echo: over http"
                ]
    finally:
        reset()


async def test_a_per_user_budget_holds_across_two_gateway_processes(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "p.json",
        {
            "role": "dev",
            "permissions": [
                {
                    "tool": "time.get_current_time",
                    "limits": [{"max": 2, "per": "user", "window": "1h"}],
                }
            ],
        },
        name="replica-tests",
    )
    call = ("time__get_current_time", {"timezone": "UTC"})
    with redis_server() as redis:
        store = {"D2_STORE_URL": redis.url}
        one = Client(time_gateway(policy, "rita", "dev", store), mode="legacy", cache=None)
        two = Client(time_gateway(policy, "rita", "dev", store), mode="legacy", cache=None)
        async with one as a, two as b:
            assert not (await a.call_tool(*call)).is_error
            assert not (await b.call_tool(*call)).is_error
            refused = await a.call_tool(*call)  # the third call, whichever replica takes it
            assert refused.is_error
            assert refused.structured_content["d2_reason"] == "budget_exceeded"
            assert 0 < refused.structured_content["d2_retry_after"] <= 3600
            assert (await b.call_tool(*call)).structured_content["d2_reason"] == ("budget_exceeded")


async def test_an_http_upstream_gets_its_headers(tmp_path: Path) -> None:
    # The upstream is another gateway over HTTP, which wants an identity header:
    # with the header its tools appear; without it (401) the upstream is absent.
    from d2.gateway.http import http_app
    from gateway_testkit import HeaderIdentity, Served

    policy = write_policy(
        tmp_path / "p.json",
        {"role": "admin", "permissions": ["*"]},
        name="chain-tests",
    )
    reset()
    configure_rbac_sync(source=str(policy))
    inner = Gateway([UpstreamSpec("flaky", command=sys.executable, args=(FLAKY,))])
    served = Served(HeaderIdentity(http_app(inner, wrap=None)))
    outer = Gateway(
        [
            UpstreamSpec("inner", url=served.url, headers={"x-test-user": "ada;admin"}),
            UpstreamSpec("anon", url=served.url),
        ],
        identity=("u", ("admin",)),
    )
    try:
        async with outer.running():
            await outer.wait_tried(20)
            async with Client(outer.server, mode="legacy", cache=None) as client:
                names = sorted(t.name for t in (await client.list_tools()).tools)
                assert names == [
                    "inner__flaky__big",
                    "inner__flaky__big_meta",
                    "inner__flaky__block",
                    "inner__flaky__crash",
                    "inner__flaky__echo",
                    "inner__flaky__hang",
                ]
                echoed = await client.call_tool("inner__flaky__echo", {"text": "hi"})
                assert [c.text for c in echoed.content if isinstance(c, types.TextContent)] == [
                    "echo: hi"
                ]
            assert outer.upstreams["anon"].connections == 0
            assert "error response" in (outer.upstreams["anon"].last_error or "")  # the 401
    finally:
        served.close()
        reset()
