"""Hostile review 17: attacks on d2-gateway that succeed today. Each test asserts
the secure behaviour, so it fails while the attack works."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from d2.gateway import UpstreamSpec
from d2.gateway.upstream import result_size
from gateway_testkit import (
    BIN,
    Served,
    call_listed,
    free_port,
    served_gateway,
    write_policy,
)
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

SERVER = str(Path(__file__).with_name("review17_server.py"))
SECRET = "AKIAABCDEFGHIJKLMNOP"
WHOLE = {"deny_if_patterns": ["AKIA[0-9A-Z]{16}"]}
LIMIT = 120_000  # --max-result-bytes of the gateway under test


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("review17") / "policy.json"
    write_policy(
        policy,
        {
            "role": "dev",
            "permissions": [
                {"tool": "review17.annotated", "conditions": {"output": WHOLE}},
                {"tool": "review17.exponents", "conditions": {"output": WHOLE}},
            ],
        },
        name="review17",
    )
    with served_gateway(
        policy,
        [UpstreamSpec("review17", command=sys.executable, args=(SERVER,))],
        max_result_bytes=LIMIT,
    ) as url:
        yield url


async def call(url: str, tool: str) -> types.CallToolResult:
    result: types.CallToolResult = await call_listed(url, f"review17__{tool}")
    return result


async def test_a_secret_in_a_text_blocks_annotations_does_not_pass_the_output_rules(
    url: str,
) -> None:
    # The grant denies any AKIA key in the result; the upstream puts one in the
    # annotations (lastModified, a free string) of a clean JSON text block. The
    # rules read the text only; _meta is dropped, annotations go out as they came.
    result = await call(url, "annotated")
    assert SECRET not in result.model_dump_json()


async def test_max_result_bytes_bounds_what_the_client_receives(url: str) -> None:
    # 100 kB of JSON numbers (1e15, 5 bytes each) is under the 120 kB limit; the
    # gateway writes the checked value back with json.dumps (1000000000000000.0,
    # 18 bytes each, plus ", "): the client receives about 4x the limit.
    result = await call(url, "exponents")
    received = result_size(result)
    assert result.is_error or received <= LIMIT, f"{received} bytes passed a {LIMIT}-byte limit"


def _listening_gateway(
    where: Path, args: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    with (where / "gateway.log").open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "d2-gateway"), "serve", "--listen", f"127.0.0.1:{port}", *args],
            env={**clean, "D2_SILENT": "1", **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((where / "gateway.log").read_text()) from None
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/mcp"


async def test_sigterm_shuts_an_http_gateway_down_and_flushes_its_usage_events(
    tmp_path: Path,
) -> None:
    # cli._serve_http awaited _shut_down() after uvicorn's serve() returned, but
    # uvicorn re-raises the SIGTERM it captured when serve() ends: the process
    # died of the signal before the finally block ran, so the cloud instance's
    # last usage events (shipped every 10 s) were never flushed. D2 now shuts
    # down in the lifespan's exit, before the upstreams stop.
    d2_testing = pytest.importorskip("d2.server.testing")
    from d2.asgi.testing import TokenIssuer

    idp = TokenIssuer(audience="review17")
    jwks = Served(idp.jwks_app())
    (tmp_path / "srv").mkdir()
    try:
        with d2_testing.start_server(tmp_path / "srv", poll_seconds=5) as server:
            server.register_key()
            dev = {"role": "dev", "permissions": ["review17.slow"]}
            assert server.publish(server.policy(dev)).status_code in (200, 201)
            env = {**server.env(), "D2_STATE_PATH": str(tmp_path / "bundles.json")}
            args = [
                "--upstream", f"review17=stdio:{sys.executable} {SERVER}",
                "--jwks-url", f"{jwks.url.removesuffix('/mcp')}/jwks", "--audience", "review17",
            ]  # fmt: skip
            proc, url = _listening_gateway(tmp_path, args, env)
            try:
                bearer = idp.token("alice", None, claims={"roles": ["dev"]})
                async with (
                    create_mcp_http_client(headers={"Authorization": f"Bearer {bearer}"}) as http,
                    Client(streamable_http_client(url, http_client=http), mode="legacy") as c,
                ):
                    with anyio.fail_after(20):
                        while not (await c.list_tools()).tools:
                            await anyio.sleep(0.05)
                    done = await c.call_tool("review17__slow", {"seconds": 0})
                    assert not done.is_error
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(15)
            finally:
                if proc.poll() is None:
                    proc.kill()
            deadline = time.monotonic() + 5
            decided: list[Any] = []
            while time.monotonic() < deadline and not decided:
                decided = [e for e in server.events() if e.event_type == "authz_decision"]
                time.sleep(0.2)
            log = (tmp_path / "gateway.log").read_text()
            assert decided, f"the last usage events were lost at shutdown (exit {code}):\n{log}"
            # uvicorn ends a graceful shutdown by re-raising the signal it caught
            # (the exit status says SIGTERM); D2 shut down before that
            assert code in (0, -signal.SIGTERM), f"exit {code}:\n{log}"
    finally:
        jwks.close()
