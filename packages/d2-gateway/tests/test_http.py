"""The gateway over Streamable HTTP (a real uvicorn) in front of real upstream MCP
servers from the package index, driven by the real ``mcp`` client. One gateway and
one redis-server serve the module; each test acts as users of its own, so budgets
and approvals never mix."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from d2.core import configure_rbac_sync
from d2.core.local import LocalFileSource
from d2.core.testing import redis_server, reset
from d2.gateway import Gateway, UpstreamSpec
from d2.gateway.http import http_app
from gateway_testkit import (
    HeaderIdentity,
    Recorder,
    Served,
    client_for,
    upstream_command,
    write_policy,
)
from mcp import types
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

RECORDS: list[dict[str, Any]] = []  # the decision log of the module's gateway
TIME_ARGS = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}


def policy_doc(repo: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    entries: list[dict[str, Any]] = [
        {"role": "admin", "permissions": ["*"]},
        {
            "role": "dev",
            "permissions": [
                "git.git_log",
                {"tool": "git.git_status", "limits": [{"max": 2, "per": "request"}]},
                "fetch.fetch",
                {
                    "tool": "time.get_current_time",
                    "conditions": {
                        "input": {"timezone": {"type": "string", "in": ["UTC", "Europe/Paris"]}},
                        "output": {"day_of_week": {"action": "redact"}},
                    },
                    "limits": [{"max": 3, "per": "user", "window": "1d"}],
                },
                {"tool": "time.convert_time", "approval": {"approvers": ["lead"]}},
                "prompt:fetch:fetch",
            ],
            "sequence": [
                {"deny": ["git.git_status", "git.git_log"], "reason": "no log after status"}
            ],
        },
        {"role": "viewer", "permissions": ["time.get_current_time"]},
        {
            "role": "auditor",
            "permissions": [
                {
                    "tool": "git.git_log",
                    "conditions": {"output": {"deny_if_patterns": ["(?i)roadmap"]}},
                }
            ],
        },
        {"role": "lead", "permissions": ["time.convert_time"]},
    ]
    metadata = {
        "name": "gateway-tests",
        "tool_groups": {"repo_read": ["git.git_log", "git.git_status"], "egress": ["fetch.fetch"]},
        "data_flow": {
            "labels": {"@repo_read": ["PRIVATE_REPO"]},
            "blocks": {"PRIVATE_REPO": ["@egress"]},
        },
    }
    return entries, metadata


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory: pytest.TempPathFactory, git_repo: Path) -> Path:
    entries, metadata = policy_doc(git_repo)
    return write_policy(tmp_path_factory.mktemp("policy") / "policy.json", *entries, **metadata)


@pytest.fixture(scope="module")
def gateway(policy_path: Path, redis_url: str, git_repo: Path) -> Iterator[tuple[Gateway, Served]]:
    reset()
    RECORDS.clear()
    configure_rbac_sync(
        source=LocalFileSource(policy_path, poll_interval=0.1),
        store=redis_url,
        decision_log=RECORDS.append,
    )
    specs = [
        UpstreamSpec("time", command=upstream_command("mcp-server-time")),
        UpstreamSpec(
            "git", command=upstream_command("mcp-server-git"), args=("--repository", str(git_repo))
        ),
        UpstreamSpec("fetch", command=upstream_command("mcp-server-fetch")),
    ]
    gw = Gateway(specs)
    served = Served(HeaderIdentity(http_app(gw, wrap=None)))
    try:
        anyio.run(_connected, gw)
        yield gw, served
    finally:
        served.close()
        reset()


async def _connected(gw: Gateway) -> None:
    with anyio.fail_after(30):
        while any(u.connections == 0 for u in gw.upstreams.values()):
            await anyio.sleep(0.05)


@pytest.fixture
def url(gateway: tuple[Gateway, Served]) -> str:
    return gateway[1].url


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def names(client: Any) -> list[str]:
    return sorted(t.name for t in (await client.list_tools()).tools)


async def test_tools_list_shows_each_role_exactly_its_tools(url: str) -> None:
    async with client_for(url, "ada", "admin") as admin:
        everything = await names(admin)
    assert "git__git_commit" in everything and "time__convert_time" in everything
    assert "fetch__fetch" in everything and len(everything) == 15  # 12 git + 2 time + 1 fetch
    async with client_for(url, "dev1", "dev") as dev:
        assert await names(dev) == [
            "fetch__fetch",
            "git__git_log",
            "git__git_status",
            "time__convert_time",
            "time__get_current_time",
        ]
    async with client_for(url, "vic", "viewer") as viewer:
        assert await names(viewer) == ["time__get_current_time"]
    async with client_for(url, "nobody", "") as nobody:
        assert await names(nobody) == []
    # the schema and description are the upstream's own; the output schema is
    # dropped where output rules may reshape the result (a client would refuse it)
    async with client_for(url, "vic", "viewer") as viewer:
        (tool,) = (await viewer.list_tools()).tools
        assert "timezone" in tool.input_schema["properties"]
        assert tool.output_schema is None
    async with client_for(url, "ada", "admin") as admin:
        tools = {t.name: t for t in (await admin.list_tools()).tools}
        assert tools["time__convert_time"].output_schema is not None


async def test_a_hidden_tool_cannot_be_told_from_a_missing_one(url: str, git_repo: Path) -> None:
    async with client_for(url, "vic", "viewer") as viewer:
        hidden = await viewer.call_tool("git__git_log", {"repo_path": str(git_repo)})
        missing = await viewer.call_tool("git__no_such_tool", {"repo_path": str(git_repo)})
        odd = await viewer.call_tool("git.git_log", {})
    for result, name in ((hidden, "git__git_log"), (missing, "git__no_such_tool")):
        assert result.is_error and text(result) == f"Unknown tool: {name}"
        assert result.structured_content is None
    assert text(odd) == "Unknown tool: git.git_log"
    assert "private roadmap" not in text(hidden)


async def test_an_allowed_call_reaches_the_upstream_and_output_rules_apply(url: str) -> None:
    async with client_for(url, "dev-out", "dev") as dev:
        result = await dev.call_tool("time__get_current_time", {"timezone": "UTC"})
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["timezone"] == "UTC"
    assert result.structured_content["day_of_week"] == "[REDACTED]"
    # the JSON text the model reads is rewritten too
    shown = json.loads(text(result))
    assert shown["day_of_week"] == "[REDACTED]" and shown["timezone"] == "UTC"


async def test_input_validation_refuses_before_the_upstream(url: str) -> None:
    async with client_for(url, "dev-in", "dev") as dev:
        result = await dev.call_tool("time__get_current_time", {"timezone": "Asia/Tokyo"})
    assert result.is_error
    assert "input_validation" in text(result) and "time.get_current_time" in text(result)
    assert "Asia/Tokyo" not in text(result)  # never the argument value
    assert result.structured_content is not None
    assert result.structured_content["d2_reason"] == "input_validation"
    assert result.structured_content["d2_tool_id"] == "time.get_current_time"
    assert result.structured_content["d2_upstream"] == "time"


async def test_a_sequence_rule_spans_the_session(url: str, git_repo: Path) -> None:
    repo = {"repo_path": str(git_repo)}
    async with client_for(url, "dev-seq", "dev") as dev:
        first = await dev.call_tool("git__git_status", repo)
        assert not first.is_error
        refused = await dev.call_tool("git__git_log", repo)
        assert refused.is_error and "sequence_violation" in text(refused)
        assert refused.structured_content["d2_reason"] == "sequence_violation"
        assert "private roadmap" not in text(refused)
    async with client_for(url, "dev-seq", "dev") as fresh:  # a new session, a new request
        assert not (await fresh.call_tool("git__git_log", repo)).is_error


async def test_data_flow_read_private_repo_then_egress_is_refused(
    url: str, git_repo: Path, recorder: Recorder
) -> None:
    async with client_for(url, "dev-flow", "dev") as dev:
        log = await dev.call_tool("git__git_log", {"repo_path": str(git_repo)})
        assert not log.is_error and "private roadmap" in text(log)
        refused = await dev.call_tool("fetch__fetch", {"url": recorder.url + "exfil?q=roadmap"})
    assert refused.is_error and "data_flow_violation" in text(refused)
    assert refused.structured_content["d2_reason"] == "data_flow_violation"
    assert refused.structured_content["d2_tool_id"] == "fetch.fetch"
    assert recorder.hits == []  # the fetch server was never asked to fetch
    # the decision log tells the story, both calls in one D2 request (the session)
    mine = await records_of("dev-flow", 2)
    assert [(r["tool_id"], r["decision"], r["reason"]) for r in mine] == [
        ("git.git_log", "allowed", None),
        ("fetch.fetch", "denied", "data_flow_violation"),
    ]
    assert mine[0]["request_id"] == mine[1]["request_id"]
    assert [r["upstream"] for r in mine] == ["git", "fetch"]  # whose tool each was


async def records_of(user: str, count: int) -> list[dict[str, Any]]:
    with anyio.fail_after(5):
        while len([r for r in RECORDS if r["user_id"] == user]) < count:
            await anyio.sleep(0.02)
    return [r for r in RECORDS if r["user_id"] == user]


async def test_a_per_user_budget_spans_sessions(url: str) -> None:
    call = ("time__get_current_time", {"timezone": "UTC"})
    async with client_for(url, "dev-budget", "dev") as one:
        for _ in range(2):
            assert not (await one.call_tool(*call)).is_error
    async with client_for(url, "dev-budget", "dev") as two:
        assert not (await two.call_tool(*call)).is_error
        refused = await two.call_tool(*call)
    assert refused.is_error and "budget_exceeded" in text(refused)
    assert "retry after" in text(refused)
    retry = refused.structured_content["d2_retry_after"]
    assert isinstance(retry, (int, float)) and 0 < retry <= 86400
    async with client_for(url, "dev-budget-2", "dev") as other:  # another user: own budget
        assert not (await other.call_tool(*call)).is_error


async def test_concurrent_sessions_of_different_users_stay_apart(
    url: str, git_repo: Path, recorder: Recorder
) -> None:
    results: dict[str, Any] = {}

    async def reader(user: str) -> None:
        async with client_for(url, user, "dev") as dev:
            await dev.call_tool("git__git_log", {"repo_path": str(git_repo)})
            results[user] = await dev.call_tool("fetch__fetch", {"url": recorder.url})

    async def viewer(user: str) -> None:
        async with client_for(url, user, "viewer") as v:
            results[user] = (await names(v), await v.call_tool("fetch__fetch", {"url": "x"}))

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(reader, f"conc-dev-{i}")
            tg.start_soon(viewer, f"conc-view-{i}")
    for i in range(3):
        assert results[f"conc-dev-{i}"].structured_content["d2_reason"] == "data_flow_violation"
        listed, refused = results[f"conc-view-{i}"]
        assert listed == ["time__get_current_time"]
        assert text(refused) == "Unknown tool: fetch__fetch"
    assert recorder.hits == []


async def test_no_identity_is_refused_with_401(url: str) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_prompts_are_hidden_unless_granted(url: str) -> None:
    async with client_for(url, "dev-p", "dev") as dev:
        assert [p.name for p in (await dev.list_prompts()).prompts] == ["fetch__fetch"]
        assert (await dev.list_resources()).resources == []
    async with client_for(url, "vic", "viewer") as viewer:
        assert (await viewer.list_prompts()).prompts == []
        with pytest.raises(Exception, match="Unknown prompt: fetch__fetch"):
            await viewer.get_prompt("fetch__fetch", {"url": "x"})


async def test_an_approval_end_to_end_with_the_cli(
    url: str, policy_path: Path, redis_url: str
) -> None:
    async with client_for(url, "dana", "dev") as dev:
        held = await dev.call_tool("time__convert_time", TIME_ARGS)
        assert held.is_error and "approval required" in text(held)
        facts = held.structured_content
        assert facts["d2_reason"] == "approval_required" and facts["d2_approvers"] == ["lead"]
        request_id = facts["d2_approval_request"]
        assert request_id in text(held) and "lead" in text(held)
        again = await dev.call_tool("time__convert_time", TIME_ARGS)  # still pending: same id
        assert again.structured_content["d2_approval_request"] == request_id

    where = ["--store", redis_url, "--policy", str(policy_path)]
    d2 = [sys.executable, "-m", "d2"]
    refused = subprocess.run(
        [*d2, "approvals", "approve", request_id, "--as", "dana", "--roles", "lead", *where],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0  # the requester never approves their own call
    done = subprocess.run(
        [*d2, "approvals", "approve", request_id, "--as", "lena", "--roles", "lead", *where],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    async with client_for(url, "dana", "dev") as dev:
        ran = await dev.call_tool("time__convert_time", TIME_ARGS)
        assert not ran.is_error and "Europe/Paris" in text(ran)
        changed = await dev.call_tool("time__convert_time", {**TIME_ARGS, "time": "13:00"})
        assert changed.structured_content["d2_reason"] == "approval_required"
        once = await dev.call_tool("time__convert_time", TIME_ARGS)  # runs once only
        assert once.structured_content["d2_reason"] == "approval_required"
        assert once.structured_content["d2_approval_request"] != request_id


def sse_json(response: Any) -> dict[str, Any]:
    """The JSON-RPC message of a Streamable HTTP answer (JSON or one SSE event)."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return dict(response.json())
    for line in response.text.splitlines():
        if line.startswith("data:"):
            return dict(json.loads(line[5:]))
    raise AssertionError(f"no message in {response.text!r}")


async def test_a_session_is_bound_to_the_identity_that_opened_it(url: str) -> None:
    import httpx

    accept = {"accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient(timeout=10) as http:
        opened = await http.post(url, json=init, headers={**accept, "x-test-user": "ada;admin"})
        session = opened.headers["mcp-session-id"]
        headers = {**accept, "mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
        await http.post(
            url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers={**headers, "x-test-user": "ada;admin"},
        )
        own = sse_json(
            await http.post(url, json=listing, headers={**headers, "x-test-user": "ada;admin"})
        )
        assert len(own["result"]["tools"]) == 15
        # another user who learnt the session id gets nothing of it: not found
        stolen = await http.post(url, json=listing, headers={**headers, "x-test-user": "vic;admin"})
        assert stolen.status_code == 404 and "tools" not in stolen.text
        call = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}},
        }
        refused = await http.post(url, json=call, headers={**headers, "x-test-user": "vic;admin"})
        assert refused.status_code == 404 and "Session not found" in refused.text


async def test_the_default_client_gets_a_session_and_its_history_holds(
    url: str, git_repo: Path, recorder: Recorder
) -> None:
    # The SDK's default client (mode="auto") would speak the stateless 2026-07-28
    # revision, where every request starts from no history; the gateway refuses
    # it, the client falls back to the initialize handshake, and the session's
    # history refuses the exfiltration.
    async with client_for(url, "dev-auto", "dev", mode="auto") as dev:
        assert dev.session.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        log = await dev.call_tool("git__git_log", {"repo_path": str(git_repo)})
        assert not log.is_error and "private roadmap" in text(log)
        refused = await dev.call_tool("fetch__fetch", {"url": recorder.url + "exfil"})
        assert refused.structured_content["d2_reason"] == "data_flow_violation"
    assert recorder.hits == []
    repo = {"repo_path": str(git_repo)}
    async with client_for(url, "dev-auto-budget", "dev", mode="auto") as dev:
        assert [(await dev.call_tool("git__git_status", repo)).is_error for _ in range(2)] == [
            False,
            False,
        ]
        third = await dev.call_tool("git__git_status", repo)
        assert third.structured_content["d2_reason"] == "budget_exceeded"  # per: request


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` (nested exception groups flattened)."""
    inner = getattr(exc, "exceptions", None)
    if not isinstance(inner, tuple):
        return [exc]
    return [leaf for e in inner for leaf in leaves(e)]


async def test_a_stateless_protocol_request_is_refused_session_required(
    url: str, recorder: Recorder
) -> None:
    import httpx
    from mcp.shared.exceptions import MCPError

    caught: list[BaseException] = []
    try:  # a client pinned to the stateless revision
        async with client_for(url, "dev-modern", "dev", mode="2026-07-28") as modern:
            await modern.call_tool("fetch__fetch", {"url": recorder.url})
    except Exception as exc:
        caught = leaves(exc)
    (raised,) = caught
    assert isinstance(raised, MCPError)
    assert raised.error.code == types.UNSUPPORTED_PROTOCOL_VERSION
    assert "session_required" in raised.error.message
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "fetch__fetch",
            "arguments": {"url": recorder.url},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "fetch__fetch",
        "x-test-user": "dev-modern;dev",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(url, json=call, headers=headers)
    assert answer.status_code == 400
    error = answer.json()
    assert error["id"] == 7 and error["error"]["code"] == types.UNSUPPORTED_PROTOCOL_VERSION
    assert error["error"]["data"]["d2_reason"] == "session_required"
    assert error["error"]["data"]["supported"] == list(HANDSHAKE_PROTOCOL_VERSIONS)
    assert recorder.hits == []


async def test_the_handlers_refuse_a_request_outside_a_session(
    gateway: tuple[Gateway, Served], recorder: Recorder
) -> None:
    # Defence in depth: even a transport that serves requests without a session
    # (the SDK's stateless mode) gets no tools and no call from the gateway.
    from contextlib import asynccontextmanager

    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette

    gw = gateway[0]
    manager = StreamableHTTPSessionManager(app=gw.server, stateless=True)

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        async with manager.run():
            yield

    class Endpoint:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await manager.handle_request(scope, receive, send)

    from starlette.routing import Route

    bare = Served(HeaderIdentity(Starlette(routes=[Route("/mcp", Endpoint())], lifespan=lifespan)))
    try:
        async with client_for(bare.url, "dev-bare", "dev") as dev:
            assert await names(dev) == []
            refused = await dev.call_tool("fetch__fetch", {"url": recorder.url})
            assert refused.is_error and text(refused) == "Unknown tool: fetch__fetch"
    finally:
        bare.close()
    assert recorder.hits == []


async def test_an_output_rule_refuses_the_result_the_client_never_sees_it(
    url: str, git_repo: Path
) -> None:
    async with client_for(url, "aud", "auditor") as auditor:
        refused = await auditor.call_tool("git__git_log", {"repo_path": str(git_repo)})
    assert refused.is_error
    assert refused.structured_content["d2_reason"] == "output_validation"
    assert "output_validation" in text(refused)
    # the refusal names the rule (its pattern), never the upstream's answer
    assert "private roadmap" not in text(refused)
    assert "private roadmap" not in json.dumps(refused.structured_content)
