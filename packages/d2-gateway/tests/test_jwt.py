"""``d2-gateway serve --listen`` as a subprocess, with users identified by bearer
JWTs of a test identity provider (RS256, its JWKS on loopback; found with
``--jwks-url`` or through OIDC discovery with ``--oidc-issuer``): the real
command, the real HTTP stack (d2-asgi's ``BearerProtected``), the real ``mcp``
client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from d2.asgi.testing import TokenIssuer
from gateway_testkit import Served, gateway_listening, upstream_command, write_policy
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

AUDIENCE = "d2-gateway-tests"


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(audience=AUDIENCE)


@pytest.fixture(scope="module")
def jwks(issuer: TokenIssuer) -> Iterator[str]:
    served = Served(issuer.jwks_app())
    base = served.url.removesuffix("/mcp")
    issuer.issuer = base  # the OIDC issuer is the loopback identity provider
    yield base
    served.close()


@pytest.fixture(scope="module", params=["--jwks-url", "--oidc-issuer"])
def gateway_url(
    issuer: TokenIssuer,
    jwks: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    keys = ["--jwks-url", f"{jwks}/jwks", "--issuer", issuer.issuer]
    if request.param == "--oidc-issuer":
        keys = ["--oidc-issuer", issuer.issuer]
    where = tmp_path_factory.mktemp("jwt")
    policy = write_policy(
        where / "policy.json",
        {"role": "viewer", "permissions": ["time.get_current_time"]},
        {"role": "admin", "permissions": ["*"]},
        name="jwt-tests",
    )
    args = [
        "--policy",
        str(policy),
        "--upstream",
        f"time=stdio:{upstream_command('mcp-server-time')}",
    ]
    args += [*keys, "--audience", AUDIENCE, "--roles-claim", "realm_access.roles"]
    with gateway_listening(where, args) as url:
        yield url


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
            issuer, "x", ["admin"], issuer="https://evil.test.invalid"
        )
    elif bad == "other-key":
        headers["authorization"] = "Bearer " + token(TokenIssuer(audience=AUDIENCE), "x", ["admin"])
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient() as http:
        answer = await http.post(gateway_url, json=body, headers=headers)
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    metadata = f"{gateway_url.removesuffix('/mcp')}/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="{metadata}"' in challenge
    assert ('error="invalid_token"' in challenge) == (bad is not None)
    assert "tools" not in answer.text


async def test_the_protected_resource_metadata_names_the_identity_provider(
    gateway_url: str, issuer: TokenIssuer
) -> None:
    base = gateway_url.removesuffix("/mcp")
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{base}/.well-known/oauth-protected-resource/mcp")
    assert answer.status_code == 200
    document = answer.json()
    assert document["resource"] == gateway_url
    assert document["authorization_servers"] == [issuer.issuer]
    assert document["bearer_methods_supported"] == ["header"]


async def test_two_http_replicas_share_budgets_and_approvals_through_redis(
    issuer: TokenIssuer, jwks: str, tmp_path: Path
) -> None:
    # Two `serve --listen` processes behind one identity provider, one Redis: what
    # a load balancer in front of replicas gives a user, whichever replica answers.
    from d2.core.testing import redis_server

    policy = write_policy(
        tmp_path / "policy.json",
        {
            "role": "dev",
            "permissions": [
                {
                    "tool": "time.get_current_time",
                    "limits": [{"max": 2, "per": "user", "window": "1h"}],
                },
                {"tool": "time.convert_time", "approval": {"approvers": ["lead"]}},
            ],
        },
        {"role": "lead", "permissions": ["time.convert_time"]},
        name="replicas",
    )
    args = [
        "--policy",
        str(policy),
        "--upstream",
        f"time=stdio:{upstream_command('mcp-server-time')}",
    ]
    args += ["--jwks-url", f"{jwks}/jwks", "--audience", AUDIENCE]
    args += ["--roles-claim", "realm_access.roles"]
    now = ("time__get_current_time", {"timezone": "UTC"})
    convert = {"source_timezone": "UTC", "time": "09:00", "target_timezone": "Asia/Tokyo"}
    rita = token(issuer, "rita", ["dev"])
    with redis_server() as redis:
        store = {"D2_STORE_URL": redis.url}
        with (
            gateway_listening(tmp_path, args, store) as one,
            gateway_listening(tmp_path, args, store) as two,
        ):
            async with session(one, rita) as a, session(two, rita) as b:
                assert not (await a.call_tool(*now)).is_error
                assert not (await b.call_tool(*now)).is_error
                for replica in (a, b):  # the third call, whichever replica takes it
                    refused = await replica.call_tool(*now)
                    assert refused.structured_content["d2_reason"] == "budget_exceeded"
                    assert 0 < refused.structured_content["d2_retry_after"] <= 3600

                held = await a.call_tool("time__convert_time", convert)
                request_id = held.structured_content["d2_approval_request"]
                decided = subprocess.run(
                    [sys.executable, "-m", "d2", "approvals", "approve", request_id,
                     "--as", "lena", "--roles", "lead",
                     "--store", redis.url, "--policy", str(policy)],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert decided.returncode == 0, decided.stderr
                ran = await b.call_tool("time__convert_time", convert)  # the other replica
                assert not ran.is_error and "Asia/Tokyo" in str(ran.structured_content)
                again = await a.call_tool("time__convert_time", convert)  # once only
                assert again.structured_content["d2_reason"] == "approval_required"
                assert again.structured_content["d2_approval_request"] != request_id
