"""``d2-gateway serve --stdio`` as a subprocess (what a desktop client starts),
driven by the real ``mcp`` client over its stdin/stdout; and the command's
usage errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from d2.gateway.cli import main
from gateway_testkit import time_gateway, write_policy
from mcp import Client, StdioServerParameters, types


def gateway_command(*args: str) -> StdioServerParameters:
    script = Path(sys.executable).with_name("d2-gateway")
    return StdioServerParameters(
        command=str(script), args=list(args), env={"D2_SILENT": "1", "PYTHONWARNINGS": "ignore"}
    )


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_stdio_serves_one_client_as_the_given_user(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "policy.json",
        {
            "role": "viewer",
            "permissions": [
                {
                    "tool": "time.get_current_time",
                    "conditions": {"input": {"timezone": {"in": ["UTC"]}}},
                }
            ],
        },
        name="stdio-tests",
    )
    params = time_gateway(policy, "alice", "viewer")
    async with Client(params, mode="legacy", cache=None) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["time__get_current_time"]
        ok = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not ok.is_error and ok.structured_content["timezone"] == "UTC"
        refused = await client.call_tool("time__get_current_time", {"timezone": "Asia/Tokyo"})
        assert refused.is_error and refused.structured_content["d2_reason"] == "input_validation"
        hidden = await client.call_tool("time__convert_time", {})
        assert text(hidden) == "Unknown tool: time__convert_time"


FLAKY = str(Path(__file__).with_name("flaky_server.py"))
HTTP_ARGS = [
    "--upstream",
    "g=stdio:x",
    "--listen",
    "127.0.0.1:1",
    "--audience",
    "gw",
    "--jwks-url",
    "http://127.0.0.1:1/jwks",
]


async def test_stdio_history_spans_the_process_with_the_default_client(tmp_path: Path) -> None:
    # The SDK's default client (mode="auto") speaks the stateless 2026-07-28
    # revision over stdio: every request gets a fresh connection state. The
    # gateway keeps one D2 request for its one client all the same, so data flow
    # and per-request budgets hold.
    policy = write_policy(
        tmp_path / "policy.json",
        {
            "role": "dev",
            "permissions": [
                {"tool": "flaky.echo", "limits": [{"max": 2, "per": "request"}]},
                "flaky.hang",
            ],
        },
        name="stdio-history",
        data_flow={"labels": {"flaky.echo": ["PRIVATE"]}, "blocks": {"PRIVATE": ["flaky.hang"]}},
    )
    params = gateway_command(
        "serve", "--stdio", "--policy", str(policy), "--user", "alice", "--roles", "dev",
        "--upstream", f"flaky=stdio:{sys.executable} {FLAKY}",
    )  # fmt: skip
    async with Client(params, cache=None) as client:  # the default mode
        assert client.session.protocol_version == "2026-07-28"
        assert not (await client.call_tool("flaky__echo", {"text": "secret"})).is_error
        exfil = await client.call_tool("flaky__hang", {"seconds": 0})
        assert exfil.is_error and exfil.structured_content["d2_reason"] == "data_flow_violation"
        assert not (await client.call_tool("flaky__echo", {"text": "again"})).is_error
        third = await client.call_tool("flaky__echo", {"text": "third"})
        assert third.is_error and third.structured_content["d2_reason"] == "budget_exceeded"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--stdio", "--user", "a"], "no upstream"),
        (["--upstream", "bad_name=stdio:x", "--stdio"], "is not allowed"),
        (["--upstream", "git=ftp://x"], "must start with stdio:"),
        (["--upstream", "git=stdio:x"], "exactly one of --listen"),
        (["--upstream", "git=stdio:x", "--stdio"], "--user ID"),
        (["--upstream", "git=stdio:x", "--listen", "127.0.0.1:1"], "--audience is required"),
        (
            ["--upstream", "git=stdio:x", "--listen", "127.0.0.1:1", "--audience", "gw"],
            "exactly one of --jwks-url",
        ),
        (["--upstream", "g=stdio:x", "--upstream", "g=stdio:y", "--stdio", "--user", "a"], "twice"),
        (
            [*HTTP_ARGS, "--max-sessions-per-user", "0"],
            "at least 1",
        ),
        (
            [*HTTP_ARGS, "--session-idle-timeout", "-1"],
            "positive number of seconds",
        ),
    ],
)
def test_usage_errors_say_what_to_do(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *args]) == 2
    assert said in capsys.readouterr().err


def test_a_config_file_holds_the_same_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("upstreams:\n  git: 'stdio:mcp-server-git'\nlisten: 127.0.0.1:1\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "--audience is required" in capsys.readouterr().err
    config.write_text("upstreams: {}\nbogus: 1\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "unknown option(s) ['bogus']" in capsys.readouterr().err


def test_the_version_is_the_repository_version(capsys: pytest.CaptureFixture[str]) -> None:
    version = (Path(__file__).resolve().parents[3] / "VERSION").read_text().strip()
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"d2-gateway {version} (d2-core {version})\n"


def _decisions(path: Path) -> list[tuple[str, str, str | None]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["tool_id"], r["decision"], r["reason"]) for r in records]


async def test_a_hidden_tools_call_is_in_the_decision_log(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "policy.json",
        {"role": "viewer", "permissions": ["time.get_current_time"]},
        name="hidden-logged",
    )
    log = tmp_path / "decisions.jsonl"
    params = time_gateway(policy, "eve", "viewer", {"D2_DECISION_LOG": str(log)})
    convert = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "UTC"}
    async with Client(params, mode="legacy", cache=None) as client:
        hidden = await client.call_tool("time__convert_time", convert)
        assert text(hidden) == "Unknown tool: time__convert_time"  # as if missing
        missing = await client.call_tool("time__no_such_tool", {})
        assert text(missing) == "Unknown tool: time__no_such_tool"
    # the client cannot tell them apart; the security team can
    assert _decisions(log) == [("time.convert_time", "denied", "unknown_tool")]


async def test_audit_mode_refuses_nothing_and_records_what_enforce_would(
    tmp_path: Path,
) -> None:
    policy = write_policy(
        tmp_path / "policy.json",
        {
            "role": "viewer",
            "permissions": [
                {
                    "tool": "time.get_current_time",
                    "conditions": {"input": {"timezone": {"in": ["UTC"]}}},
                }
            ],
        },
        name="audit-trial",
        mode="audit",
    )
    log = tmp_path / "decisions.jsonl"
    params = time_gateway(policy, "eve", "viewer", {"D2_DECISION_LOG": str(log)})
    convert = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    async with Client(params, mode="legacy", cache=None) as client:
        # every tool is listed and runs: audit mode is a trial, not a wall
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == ["time__convert_time", "time__get_current_time"]
        tokyo = await client.call_tool("time__get_current_time", {"timezone": "Asia/Tokyo"})
        assert not tokyo.is_error and tokyo.structured_content["timezone"] == "Asia/Tokyo"
        converted = await client.call_tool("time__convert_time", convert)
        assert not converted.is_error
        utc = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not utc.is_error
    assert _decisions(log) == [
        ("time.get_current_time", "would_deny", "input_validation"),
        ("time.convert_time", "would_deny", "unknown_tool"),
        ("time.get_current_time", "allowed", None),
    ]
