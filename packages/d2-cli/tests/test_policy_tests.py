"""``d2 test``: policy unit tests in YAML."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from cli_testkit import Invoke, as_json

POLICY = """
metadata:
  expires: "2020-01-01T00:00:00Z"   # expired: tests check rules, not the clock
  tool_groups:
    sensitive: [db.read_users]
  data_flow:
    labels: {}
    blocks: {PII: [email.send]}
policies:
  - role: analyst
    permissions:
      - billing:read
      - db.read_users
      - http.request
      - email.send
      - tool: crm.lookup
        conditions:
          input: {customer_id: {type: string, matches: "^c_[0-9]+$"}}
      - tool: db.drop
        allow: false
    sequence:
      - deny: ["@sensitive", http.request]
        reason: exfiltration
"""

CASES = """
policy: policy.yaml
cases:
  - name: analysts read billing
    roles: [analyst]
    tool: billing:read
    expect: allow
  - name: customer id is checked
    roles: analyst
    tool: crm.lookup
    args: {customer_id: "nope"}
    expect: deny
    reason: input_validation
  - name: no exfiltration
    roles: [analyst]
    calls: [db.read_users, {tool: billing:read, args: {}}]
    tool: http.request
    expect: deny
    reason: sequence_violation
  - name: labelled data stays in
    roles: [analyst]
    facts: [PII]
    user: alice
    tool: email.send
    expect: deny
    reason: data_flow_violation
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    tests = tmp_path / "policy_tests"
    tests.mkdir()
    (tests / "rules_test.yaml").write_text(CASES.replace("policy.yaml", "../policy.yaml"))
    return tests / "rules_test.yaml"


def test_all_cases_pass(d2: Invoke, suite: Path) -> None:
    result = d2("test", str(suite))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("PASS") == 4
    assert "4 passed, 0 failed, 1 files" in result.stdout


def test_directories_are_searched_for_test_files(d2: Invoke, suite: Path) -> None:
    result = d2("test")  # the working directory (tmp_path)
    assert result.exit_code == 0 and "4 passed" in result.stdout


def test_a_failing_case_prints_its_trace_and_exits_1(d2: Invoke, suite: Path) -> None:
    suite.write_text(
        suite.read_text() + "  - name: wrong on purpose\n    roles: [analyst]\n    tool: db.drop\n"
        "    expect: allow\n  - name: wrong reason\n    roles: [guest]\n    tool: billing:read\n"
        "    expect: deny\n    reason: explicit_deny\n"
    )
    result = d2("test", str(suite))
    assert result.exit_code == 1
    out = result.stdout
    assert "FAIL  wrong on purpose: expected allow, got deny (explicit_deny)" in out
    assert "FAIL  wrong reason: expected deny (explicit_deny), got deny (not_granted)" in out
    assert "has 'allow: false' for 'db.drop'" in out  # the trace
    assert "4 passed, 2 failed" in out
    report = as_json(d2("test", str(suite), "--json"))
    assert report["passed"] == 4 and report["failed"] == 2 and report["ok"] is False
    failed = [c for c in report["files"][0]["cases"] if not c["passed"]]
    assert failed[0]["trace"][-1]["outcome"] == "deny"


def test_verbose_prints_traces_of_passing_cases(d2: Invoke, suite: Path) -> None:
    result = d2("test", str(suite), "-v")
    assert "earlier call db.read_users: allowed" in result.stdout
    assert "granted by 'billing:read'" in result.stdout


def test_inline_policy_and_policy_override(d2: Invoke, tmp_path: Path, suite: Path) -> None:
    inline = tmp_path / "inline_test.json"
    inline.write_text(
        json.dumps(
            {
                "policy": {"policies": [{"role": "r", "permissions": ["t"]}]},
                "cases": [{"name": "t ok", "roles": ["r"], "tool": "t", "expect": "allow"}],
            }
        )
    )
    assert d2("test", str(inline)).exit_code == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"policies": [{"role": "r", "permissions": ["u"]}]}))
    overridden = d2("test", str(inline), "--policy", str(other))
    assert overridden.exit_code == 1 and "unknown_tool" in overridden.stdout


def test_without_a_policy_key_the_local_policy_is_used(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    xdg.mkdir(parents=True)
    (xdg / "policy.yaml").write_text("policies: [{role: r, permissions: [t]}]\n")
    (tmp_path / "x_test.yaml").write_text(
        "cases: [{roles: [r], tool: t, expect: allow}, {roles: [q], tool: t, expect: deny}]\n"
    )
    result = d2("test", str(tmp_path / "x_test.yaml"))
    assert result.exit_code == 0 and "2 passed" in result.stdout


def test_a_malformed_test_file_is_a_usage_error_with_paths(d2: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "bad_test.yaml"
    path.write_text(
        textwrap.dedent(
            """
            policy: 42
            extra: 1
            cases:
              - roles: [r]
                expect: maybe
                reason: 3
                colour: red
                calls: [5]
                args: [1]
            """
        )
    )
    result = d2("test", str(path))
    assert result.exit_code == 2
    err = result.stderr
    for expected in (
        "extra: unknown key",
        "policy: expected a path",
        "cases[0].tool: expected a tool id",
        "cases[0].expect: expected 'allow' or 'deny'",
        "cases[0].reason",
        "cases[0].colour: unknown key",
        "cases[0].calls[0]",
        "cases[0].args",
    ):
        assert expected in err, expected
    report = as_json(d2("test", str(path), "--json"))
    assert report["errors"][0]["exit_code"] == 2 and report["ok"] is False


def test_not_yaml_and_empty_cases(d2: Invoke, tmp_path: Path) -> None:
    (tmp_path / "a_test.yaml").write_text("cases: [\n")
    (tmp_path / "b_test.yaml").write_text("cases: []\n")
    result = d2("test")
    assert result.exit_code == 2
    assert "not a test file" in result.stderr and "non-empty list" in result.stderr


def test_an_invalid_policy_fails_the_file(d2: Invoke, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("policies: [{role: r, permissions: [{tol: t}]}]\n")
    (tmp_path / "p_test.yaml").write_text(
        "policy: p.yaml\ncases: [{roles: [r], tool: t, expect: allow}]\n"
    )
    result = d2("test")
    assert result.exit_code == 1 and "policies[0].permissions[0]" in result.stderr


def test_no_test_files_and_missing_paths(d2: Invoke, tmp_path: Path) -> None:
    none = d2("test")
    assert none.exit_code == 2 and "no policy test files found" in none.stderr
    assert d2("test", "missing_test.yaml").exit_code == 2
    (tmp_path / "m_test.yaml").write_text(
        "policy: gone.yaml\ncases: [{roles: [r], tool: t, expect: allow}]\n"
    )
    missing_policy = d2("test")
    assert missing_policy.exit_code == 2 and "no policy file at" in missing_policy.stderr


def test_a_policy_that_would_not_load_denies_every_case(d2: Invoke, tmp_path: Path) -> None:
    tools = [f"t{i}" for i in range(40)]  # more than local mode allows
    inline = tmp_path / "big_test.json"
    inline.write_text(
        json.dumps(
            {
                "policy": {"policies": [{"role": "r", "permissions": tools}]},
                "cases": [{"name": "t0 ok", "roles": ["r"], "tool": "t0", "expect": "allow"}],
            }
        )
    )
    result = d2("test", str(inline), "--json")
    assert result.exit_code == 1, result.output
    case = json.loads(result.stdout)["files"][0]["cases"][0]
    assert case["got"] == "deny" and case["reason"] == "policy_not_in_force"
    assert "not in force" in result.stderr


def test_arguments_not_given_use_literal_defaults_or_are_undecided(
    d2: Invoke, tmp_path: Path
) -> None:
    (tmp_path / "tools.py").write_text(
        "from d2 import d2_guard\nN = 5\n\n"
        '@d2_guard("crm.export")\ndef export(limit=500): ...\n\n'
        '@d2_guard("crm.peek")\ndef peek(limit=N): ...\n'
    )
    cond = {"input": {"limit": {"max": 10}}}
    inline = tmp_path / "defaults_test.json"
    inline.write_text(
        json.dumps(
            {
                "policy": {
                    "policies": [
                        {
                            "role": "r",
                            "permissions": [
                                {"tool": "crm.export", "conditions": cond},
                                {"tool": "crm.peek", "conditions": cond},
                            ],
                        }
                    ]
                },
                "cases": [
                    {"name": "default 500", "roles": ["r"], "tool": "crm.export", "expect": "deny"},
                    {"name": "unknown", "roles": ["r"], "tool": "crm.peek", "expect": "allow"},
                ],
            }
        )
    )
    result = d2("test", str(inline), "--json")
    assert result.exit_code == 1, result.output
    first, second = json.loads(result.stdout)["files"][0]["cases"]
    assert first["passed"] and first["defaults_used"] == {"limit": 500}
    assert not second["passed"] and second["got"] == "undecided"
    assert "not given: the function's default applies at run time" in second["message"]
