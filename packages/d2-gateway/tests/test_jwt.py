"""``d2-gateway serve --listen`` as a subprocess, with users identified by bearer
JWTs of a test identity provider (RS256, its JWKS on loopback): the real command,
the real HTTP stack, the real ``mcp`` client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from d2.asgi.testing import TokenIssuer
from gateway_testkit import Served, free_port, upstream_command, write_policy
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

AUDIENCE = "d2-gateway-tests"


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(audience=AUDIENCE)


@pytest.fixture(scope="module")
def gateway_url(issuer: TokenIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    jwks = Served(issuer.jwks_app())
    where = tmp_path_factory.mktemp("jwt")
    policy = write_policy(
        where / "policy.json",
        {"role": "viewer", "permissions": ["time.get_current_time"]},
        {"role": "admin", "permissions": ["*"]},
        name="jwt-tests",
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    log = (where / "gateway.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("d2-gateway")),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--policy",
            str(policy),
            "--upstream",
            f"time=stdio:{upstream_command('mcp-server-time')}",
            "--jwks-url",
            jwks.url.replace("/mcp", "/jwks.json"),
            "--audience",
            AUDIENCE,
            "--issuer",
            issuer.issuer,
            "--roles-claim",
            "realm_access.roles",
        ],
        env={**env, "D2_SILENT": "1"},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    said = (where / "gateway.log").read_text()
                    raise RuntimeError(f"the gateway did not start: {said}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        jwks.close()


def token(idp: TokenIssuer, user: str, roles: list[str], **options: Any) -> str:
    return idp.token(user, None, claims={"realm_access": {"roles": roles}}, **options)


@asynccontextmanager
async def session(url: str, bearer: str) -> AsyncIterator[Any]:
    headers = {"Authorization": f"Bearer {bearer}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


async def test_a_verified_token_is_the_user_and_its_roles(
    gateway_url: str, issuer: TokenIssuer
) -> None:
    async with session(gateway_url, token(issuer, "vera", ["viewer"])) as viewer:
        assert [t.name for t in (await viewer.list_tools()).tools] == ["time__get_current_time"]
        ok = await viewer.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not ok.is_error
    async with session(gateway_url, token(issuer, "ada", ["admin"])) as admin:
        assert len((await admin.list_tools()).tools) == 2


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "not-a-jwt",
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "other-key",
    ],
)
async def test_no_bad_or_expired_token_is_401(
    gateway_url: str, issuer: TokenIssuer, bad: str | None
) -> None:
    headers = {"accept": "application/json, text/event-stream"}
    if bad == "not-a-jwt":
        headers["authorization"] = "Bearer not-a-jwt"
    elif bad == "expired":
        headers["authorization"] = "Bearer " + token(issuer, "x", ["admin"], expires_in=-120)
    elif bad == "wrong-audience":
        headers["authorization"] = "Bearer " + token(issuer, "x", ["admin"], audience="other")
    elif bad == "wrong-issuer":
        headers["authorization"] = "Bearer " + token(
            issuer, "x", ["admin"], issuer="https://evil.test.invalid/"
        )
    elif bad == "other-key":
        headers["authorization"] = "Bearer " + token(TokenIssuer(audience=AUDIENCE), "x", ["admin"])
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient() as http:
        answer = await http.post(gateway_url, json=body, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].lower().startswith("bearer")
    assert "tools" not in answer.text
