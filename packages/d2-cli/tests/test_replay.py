"""``d2 replay`` (a decision log against a candidate policy) and how ``diagnose``
and ``inspect`` announce audit mode and audited rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_testkit import Invoke, as_json
from d2.core import InMemorySource, PermissionDeniedError, configure_rbac_sync, d2_guard, set_user
from d2.core import shutdown_rbac as shutdown
from d2.core.testing import policy_document

WritePolicy = Callable[..., Path]

AGENT: dict[str, Any] = {
    "role": "agent",
    "permissions": ["read", "mail", {"tool": "search", "limits": [{"max": 2, "per": "request"}]}],
}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """A real decision log: alice, bob and carol (agents) each read 4 times, search
    twice and mail once, in one request each; dave (an intern) is denied once."""
    path = tmp_path / "decisions.jsonl"
    configure_rbac_sync(source=InMemorySource(policy_document(AGENT)), decision_log=str(path))
    read = d2_guard("read")(lambda: "r")
    mail = d2_guard("mail")(lambda: "m")
    search = d2_guard("search")(lambda q: q)
    for user in ("alice", "bob", "carol"):
        set_user(user, roles=["agent"])
        for _ in range(4):
            read()
        search("a")
        search("b")
        mail()
    set_user("dave", roles=["intern"])
    with pytest.raises(PermissionDeniedError):
        read()
    shutdown()
    assert len(path.read_text().splitlines()) == 22
    return path


@pytest.fixture
def same(write_policy: WritePolicy) -> Path:
    """The policy that wrote ``log``."""
    return write_policy(AGENT, name="same.json")


@pytest.fixture
def tighter(write_policy: WritePolicy) -> Path:
    """Agents lose ``read``; ``mail`` may not follow ``search``; one search per
    request. Its expiry is long past: a replay does not care."""
    return write_policy(
        {
            "role": "agent",
            "permissions": ["mail", {"tool": "search", "limits": [{"max": 1, "per": "request"}]}],
            "sequence": [{"deny": ["search", "mail"]}],
        },
        {"role": "reader", "permissions": ["read"]},
        name="candidate.json",
        expires="2001-01-01T00:00:00Z",
    )


def test_replay_groups_changes_by_tool_and_roles_with_examples(
    d2: Invoke, log: Path, tighter: Path
) -> None:
    result = d2("replay", "--log", str(log), "--policy", str(tighter))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "read  roles [agent]: 12 changes (allowed -> denied: 12)"
    examples = lines[1:4]
    assert all(e.startswith("  user alice  request ") for e in examples)
    assert all(e.endswith(": allowed -> denied (not_granted)") for e in examples)
    assert lines[4] == "  ... and 9 more"
    assert "mail  roles [agent]: 3 changes (allowed -> denied: 3)" in lines
    assert "search  roles [agent]: 3 changes (allowed -> denied: 3)" in lines
    mail = lines[lines.index("mail  roles [agent]: 3 changes (allowed -> denied: 3)") + 1]
    assert mail.startswith("  user alice  request ")
    assert mail.endswith("allowed -> denied (sequence_violation)  rule policies[0].sequence[0]")
    assert any(
        "denied (budget_exceeded)  rule policies[0].permissions[1].limits[0]" in x for x in lines
    )
    assert lines[-1] == (
        f"replayed 22 records against {tighter}: 18 would change, 4 unchanged, 0 skipped"
    )
    assert "intern" not in result.stdout  # dave's denial stays a denial


def test_replay_json_has_exactly_the_documented_shape(d2: Invoke, log: Path, tighter: Path) -> None:
    result = d2("replay", "--log", str(log), "--policy", str(tighter), "--json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert set(report) == {"records", "changed", "changes"}
    assert report["records"] == 22 and report["changed"] == 18 == len(report["changes"])
    assert all(
        set(c) == {"tool_id", "user_id", "before", "after", "reason"} for c in report["changes"]
    )
    assert report["changes"][0] == {
        "tool_id": "read",
        "user_id": "alice",
        "before": "allowed",
        "after": "denied",
        "reason": "not_granted",
    }
    tools = [c["tool_id"] for c in report["changes"][:6]]
    assert tools == ["read", "read", "read", "read", "search", "mail"]  # log order
    assert {c["reason"] for c in report["changes"]} == {
        "not_granted",
        "budget_exceeded",
        "sequence_violation",
    }


def test_fail_on_change_exits_1_only_when_something_changes(
    d2: Invoke, log: Path, tighter: Path, same: Path
) -> None:
    assert (
        d2("replay", "--log", str(log), "--policy", str(tighter), "--fail-on-change").exit_code == 1
    )
    unchanged = d2("replay", "--log", str(log), "--policy", str(same), "--fail-on-change")
    assert unchanged.exit_code == 0, unchanged.output
    assert unchanged.stdout.splitlines() == [
        "no recorded call would change",
        f"replayed 22 records against {same}: 0 would change, 22 unchanged, 0 skipped",
    ]
    report = as_json(d2("replay", "--log", str(log), "--policy", str(same), "--json"))
    assert report == {"records": 22, "changed": 0, "changes": []}


def test_an_audit_mode_candidate_turns_denials_into_would_deny(
    d2: Invoke, log: Path, write_policy: WritePolicy
) -> None:
    audit = write_policy(AGENT, name="audit.json", mode="audit")
    result = d2("replay", "--log", str(log), "--policy", str(audit), "--json")
    assert result.exit_code == 0
    assert as_json(result)["changes"] == [
        {
            "tool_id": "read",
            "user_id": "dave",
            "before": "denied",
            "after": "would_deny",
            "reason": "not_granted",
        }
    ]
    assert "audit mode" in result.stderr


def test_a_yaml_candidate_is_read_too(d2: Invoke, log: Path, tmp_path: Path) -> None:
    pytest.importorskip("ruamel.yaml")
    path = tmp_path / "candidate.yaml"
    path.write_text(
        "metadata:\n  expires: '2099-01-01T00:00:00Z'\npolicies:\n"
        "  - role: agent\n    permissions: [read, mail, search]\n"
    )
    report = as_json(d2("replay", "--log", str(log), "--policy", str(path), "--json"))
    assert report["changed"] == 0  # no budget: nothing was denied for one in the log


def test_a_missing_log_is_a_usage_error(d2: Invoke, same: Path, tmp_path: Path) -> None:
    result = d2("replay", "--log", str(tmp_path / "nope.jsonl"), "--policy", str(same))
    assert result.exit_code == 2
    assert "cannot read decision log" in result.stderr and "nope.jsonl" in result.stderr


def test_a_bad_line_in_the_log_names_file_and_line(d2: Invoke, log: Path, same: Path) -> None:
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "", '{"tool_id": "x", oops}', *lines[1:]]) + "\n")
    result = d2("replay", "--log", str(log), "--policy", str(same))
    assert result.exit_code == 2
    assert f"{log}:3: not valid JSON" in result.stderr
    report = as_json(d2("replay", "--log", str(log), "--policy", str(same), "--json"))
    assert report["ok"] is False and report["error"]["exit_code"] == 2
    assert report["error"]["message"].startswith(f"{log}:3: ")


def test_an_invalid_candidate_lists_its_problems_and_exits_2(
    d2: Invoke, log: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "metadata": {"expires": "2099-01-01T00:00:00Z"},
                "policies": [
                    {
                        "role": "agent",
                        "permissions": [{"tool": "t", "limits": [{"max": 0, "per": "request"}]}],
                    }
                ],
            }
        )
    )
    result = d2("replay", "--log", str(log), "--policy", str(bad))
    assert result.exit_code == 2
    assert "invalid candidate policy" in result.stderr
    assert "policies[0].permissions[0].limits[0].max" in result.stderr
    report = as_json(d2("replay", "--log", str(log), "--policy", str(bad), "--json"))
    assert report["error"]["exit_code"] == 2
    assert any("limits[0].max" in d for d in report["error"]["details"])
    notjson = tmp_path / "broken.json"
    notjson.write_text("{nope")
    broken = d2("replay", "--log", str(log), "--policy", str(notjson))
    assert broken.exit_code == 2 and "not valid JSON" in broken.stderr


def test_a_missing_candidate_or_option_is_a_usage_error(
    d2: Invoke, log: Path, tmp_path: Path
) -> None:
    result = d2("replay", "--log", str(log), "--policy", str(tmp_path / "none.json"))
    assert result.exit_code == 2 and "no policy file" in result.stderr
    assert d2("replay", "--log", str(log)).exit_code == 2


# -- audit mode in diagnose and inspect -----------------------------------------------
def test_diagnose_says_loudly_that_a_policy_is_in_audit_mode(
    d2: Invoke, write_policy: WritePolicy
) -> None:
    write_policy(
        {
            "role": "agent",
            "permissions": ["read", "send"],
            "sequence": [{"deny": ["read", "send"], "audit": True}],
        },
        mode="audit",
    )
    result = d2("diagnose", "--no-scan")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("AUDIT MODE: this policy enforces nothing")
    assert "audited rule: policies[0].sequence[0]" in result.stdout
    assert "audit mode" in result.stderr
    assert d2("diagnose", "--no-scan", "--strict").exit_code == 1
    report = as_json(d2("diagnose", "--no-scan", "--json"))
    assert report["mode"] == "audit" and report["audited"] == ["policies[0].sequence[0]"]
    mode = next(f for f in report["findings"] if f["check"] == "mode")
    assert mode["status"] == "warn" and mode["message"].startswith("AUDIT MODE")
    assert report["warnings"] == 1 and report["ok"] is True


def test_diagnose_lists_audited_rules_of_an_enforced_policy(
    d2: Invoke, write_policy: WritePolicy
) -> None:
    write_policy(
        {
            "role": "agent",
            "permissions": [
                "read",
                "send",
                {"tool": "calc", "conditions": {"input": {"n": {"max": 3}}, "audit": True}},
            ],
            "sequence": [
                {"deny": ["read", "send"], "audit": True},
                {"deny": ["send", "read"]},
            ],
        },
        data_flow={
            "labels": {"read": ["PII"]},
            "blocks": {"PII": {"tools": ["send"], "audit": True}},
        },
    )
    result = d2("diagnose", "--no-scan", "--json")
    report = as_json(result)
    assert report["mode"] == "enforce"
    assert report["audited"] == [
        "policies[0].permissions[2].conditions",
        "policies[0].sequence[0]",
        "metadata.data_flow.blocks.PII",
    ]
    finding = next(f for f in report["findings"] if f["check"] == "audited rules")
    assert finding["status"] == "warn" and finding["details"] == report["audited"]
    human = d2("diagnose", "--no-scan")
    assert "AUDIT MODE" not in human.stdout
    assert "3 rules are audited" in human.stdout
    assert "  - metadata.data_flow.blocks.PII" in human.stdout


def test_diagnose_of_a_plain_policy_is_unchanged(d2: Invoke, write_policy: WritePolicy) -> None:
    write_policy({"role": "agent", "permissions": ["read"]})
    report = as_json(d2("diagnose", "--no-scan", "--json"))
    assert report["mode"] == "enforce" and report["audited"] == []
    assert [f["check"] for f in report["findings"]] == [
        "size",
        "validation",
        "tool count",
        "expiry",
    ]


def test_inspect_shows_audit_mode_and_audited_rules(d2: Invoke, write_policy: WritePolicy) -> None:
    path = write_policy(
        {
            "role": "agent",
            "permissions": ["read", "send"],
            "sequence": [{"deny": ["read", "send"], "audit": True}],
        },
        mode="audit",
    )
    result = d2("inspect", "--policy", str(path))
    assert result.exit_code == 0, result.output
    assert "AUDIT MODE: this policy enforces nothing" in result.stdout
    assert "  - policies[0].sequence[0]" in result.stdout
    data = as_json(d2("inspect", "--policy", str(path), "--json"))
    assert data["mode"] == "audit" and data["audited"] == ["policies[0].sequence[0]"]
