"""``d2 inspect``, ``d2 diagnose`` and ``d2 check`` on local policy files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_testkit import Invoke, as_json
from d2.core.testing import expires_in

WritePolicy = Callable[..., Path]

RICH = [
    {"role": "admin", "permissions": ["*"]},
    {
        "role": ["analyst", "senior"],
        "permissions": [
            "billing:read",
            "reports:*",
            "@sensitive",
            {
                "tool": "crm.lookup",
                "conditions": {
                    "input": {"customer_id": {"type": "string", "matches": "^c_[0-9]+$"}},
                    "output": {"ssn": {"action": "filter"}},
                },
            },
            {"tool": "db.drop", "allow": False},
            "http.request",
        ],
        "sequence": [{"deny": ["@sensitive", "http.request"], "reason": "exfiltration"}],
    },
]
GROUPS = {"sensitive": ["db.read_users", "secrets.get"]}


@pytest.fixture
def rich_policy(write_policy: WritePolicy) -> Path:
    return write_policy(*RICH, name="policy.json", tool_groups=GROUPS, version=7)


# -- inspect ---------------------------------------------------------------------------
def test_inspect_shows_roles_by_tools_groups_guardrails_and_sequences(
    d2: Invoke, rich_policy: Path
) -> None:
    result = d2("inspect")  # found in the working directory by discovery
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in (
        "roles x tools",
        "billing:read",
        "@sensitive",
        "db.read_users, secrets.get",
        "crm.lookup",
        "conditional",
        "deny",
        "customer_id",
        "exfiltration",
        "version  7",
    ):
        assert expected in text, expected
    assert "\x1b[" not in result.output  # no colours when not on a terminal


def test_inspect_json_has_the_matrix_with_effective_access(d2: Invoke, rich_policy: Path) -> None:
    data = as_json(d2("inspect", "--json", "--verbose"))
    assert data["in_force"] and data["origin"] == "local"
    assert data["roles"] == ["admin", "analyst", "senior"]
    assert data["matrix"]["db.drop"] == {"admin": "allow", "analyst": "deny", "senior": "deny"}
    assert data["matrix"]["crm.lookup"]["analyst"] == "conditional"
    assert data["matrix"]["*"] == {"admin": "allow"}
    assert "db.read_users" in data["matrix"] and "@sensitive" not in data["matrix"]  # verbose
    assert data["guardrails"][0]["conditions"]["output"] == {"ssn": {"action": "filter"}}
    assert data["sequences"][0]["rules"][0]["reason"] == "exfiltration"
    assert data["version"] == 7 and data["expires_in_seconds"] > 0


def test_inspect_an_expired_policy_says_it_is_not_in_force(
    d2: Invoke, write_policy: WritePolicy
) -> None:
    path = write_policy({"role": "r", "permissions": ["t"]}, expires="2020-01-01T00:00:00Z")
    result = d2("inspect", "--policy", str(path))
    assert result.exit_code == 1
    assert "NOT IN FORCE" in result.stdout and "expired" in result.stdout


def test_inspect_invalid_policy_lists_paths_and_exits_1(d2: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "metadata": {"expires": expires_in()},
                "policies": [{"role": "r", "permissions": [{"tool": "t", "alow": True}]}],
            }
        )
    )
    result = d2("inspect", "--policy", str(bad))
    assert result.exit_code == 1
    assert "policies[0].permissions[0].alow: unknown key" in result.stderr
    data = as_json(d2("inspect", "--policy", str(bad), "--json"))
    assert data["ok"] is False and data["error"]["exit_code"] == 1
    assert any("alow" in d for d in data["error"]["details"])


def test_inspect_without_any_policy_is_a_configuration_error(d2: Invoke) -> None:
    result = d2("inspect")
    assert result.exit_code == 2
    assert "no local policy file found" in result.stderr and "d2 init" in result.stderr


# -- diagnose --------------------------------------------------------------------------
def code(root: Path, body: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "tools.py").write_text("from d2 import d2_guard\n\n" + body)
    return root


def test_diagnose_passes_a_clean_policy(
    d2: Invoke, tmp_path: Path, write_policy: WritePolicy
) -> None:
    src = code(tmp_path / "src", '@d2_guard("a")\ndef a(x): ...\n')
    write_policy({"role": "r", "permissions": ["a"]})
    result = d2("diagnose", "--path", str(src), "--strict")
    assert result.exit_code == 0, result.output
    assert "passed (0 errors, 0 warnings)" in result.stdout


def test_diagnose_reports_drift_as_warnings_and_strict_fails_on_them(
    d2: Invoke, tmp_path: Path, write_policy: WritePolicy
) -> None:
    src = code(
        tmp_path / "src",
        '@d2_guard("billing.read")\ndef a(): ...\n\n@d2_guard("only.star")\ndef b(): ...\n',
    )
    write_policy(
        {"role": "admin", "permissions": ["*"]},
        {"role": "r", "permissions": ["billing.reed", "gone:*"]},
    )
    result = d2("diagnose", "--path", str(src))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "only.star (tools.py:7): only '*' grants it" in out
    assert "billing.read (tools.py:4): only '*' grants it" in out
    assert "billing.reed (did you mean 'billing.read'?)" in out
    assert "gone:* (matches no guarded tool)" in out
    strict = d2("diagnose", "--path", str(src), "--strict", "--json")
    assert strict.exit_code == 1
    report = as_json(strict)
    assert report["ok"] is False and report["errors"] == 0 and report["warnings"] == 2


def test_diagnose_validation_errors_come_with_paths(d2: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"metadata:\n  expires: '{expires_in()}'\npolicies:\n"
        "  - role: r\n    permissions:\n      - tool: t\n        conditions:\n"
        "          input: {n: {maxx: 3}}\n"
    )
    result = d2("diagnose", "--no-scan")
    assert result.exit_code == 1
    assert "policies[0].permissions[0].conditions.input.n" in result.stdout
    assert "max" in result.stdout  # names the closest operator


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        (None, "no metadata.expires"),
        ("2020-01-01T00:00:00Z", "expired at 2020-01-01"),
        (expires_in(30 * 86400), "more than 7 days ahead"),
    ],
    ids=["none", "past", "far"],  # stable ids: parallel workers collect the same tests
)
def test_diagnose_expiry_errors(
    d2: Invoke, write_policy: WritePolicy, expires: str | None, message: str
) -> None:
    path = write_policy({"role": "r", "permissions": ["t"]}, expires=expires)
    if expires is None:
        doc = json.loads(path.read_text())
        del doc["metadata"]["expires"]
        path.write_text(json.dumps(doc))
    result = d2("diagnose", "--no-scan", "--json")
    assert result.exit_code == 1
    expiry = next(f for f in as_json(result)["findings"] if f["check"] == "expiry")
    assert expiry["status"] == "error" and message in expiry["message"]


def test_diagnose_soon_expiring_and_near_limit_are_warnings(
    d2: Invoke, write_policy: WritePolicy
) -> None:
    write_policy(
        {"role": "r", "permissions": [f"t{i}" for i in range(21)]}, expires=expires_in(600)
    )
    report = as_json(d2("diagnose", "--no-scan", "--json"))
    statuses = {f["check"]: f["status"] for f in report["findings"]}
    assert statuses["expiry"] == "warn" and statuses["tool count"] == "warn"
    assert report["ok"] is True


def test_diagnose_over_the_tool_limit_is_an_error(d2: Invoke, write_policy: WritePolicy) -> None:
    write_policy({"role": "r", "permissions": [f"t{i}" for i in range(26)]})
    result = d2("diagnose", "--no-scan")
    assert result.exit_code == 1 and "26 / 25 tools" in result.stdout


def test_diagnose_input_conditions_must_name_real_parameters(
    d2: Invoke, tmp_path: Path, write_policy: WritePolicy
) -> None:
    src = code(
        tmp_path / "src",
        '@d2_guard("crm")\ndef crm(customer_id): ...\n\n@d2_guard("open")\ndef open_(**kw): ...\n',
    )
    write_policy(
        {
            "role": "r",
            "permissions": [
                {"tool": "crm", "conditions": {"input": {"customer": {"type": "string"}}}},
                {"tool": "open", "conditions": {"input": {"anything": {"type": "string"}}}},
            ],
        }
    )
    result = d2("diagnose", "--path", str(src))
    assert result.exit_code == 1
    assert (
        "policies[0].permissions[0].conditions.input.customer: crm (tools.py:4) has no "
        "parameter 'customer' (it has: customer_id)" in result.stdout
    )
    assert "anything" not in result.stdout  # **kw takes any name


def test_diagnose_warns_when_no_code_is_found(
    d2: Invoke, tmp_path: Path, write_policy: WritePolicy
) -> None:
    write_policy({"role": "r", "permissions": ["t"]})
    (tmp_path / "empty").mkdir()
    result = d2("diagnose", "--path", str(tmp_path / "empty"))
    assert result.exit_code == 0 and "no guarded functions found" in result.stdout
    assert d2("diagnose", "--path", str(tmp_path / "nope")).exit_code == 2


# -- check -----------------------------------------------------------------------------
def test_check_allowed_exits_0_with_the_granting_rule(d2: Invoke, rich_policy: Path) -> None:
    result = d2("check", "--role", "analyst", "billing:read")
    assert result.exit_code == 0
    assert "ALLOWED" in result.stdout and "policies[1].permissions[0]" in result.stdout


def test_check_denied_exits_1_with_reason_and_trace(d2: Invoke, rich_policy: Path) -> None:
    result = d2("check", "-r", "analyst", "-r", "guest", "db.drop")
    assert result.exit_code == 1
    assert "DENIED" in result.stdout and "explicit_deny" in result.stdout
    data = as_json(d2("check", "-r", "guest", "billing:read", "--json"))
    assert data["allowed"] is False and data["reason"] == "not_granted"
    assert [s["step"] for s in data["trace"]] == ["policy", "user", "rbac"]


def test_check_arguments_are_json_when_they_parse(d2: Invoke, rich_policy: Path) -> None:
    ok = d2("check", "-r", "analyst", "crm.lookup", "--arg", "customer_id=c_42")
    assert ok.exit_code == 0, ok.output
    bad = as_json(d2("check", "-r", "analyst", "crm.lookup", "-a", "customer_id=42", "--json"))
    assert bad["reason"] == "input_validation" and bad["args"] == {"customer_id": 42}
    quoted = d2("check", "-r", "analyst", "crm.lookup", "-a", 'customer_id="c_1"')
    assert quoted.exit_code == 0


def test_check_with_earlier_calls_and_facts(d2: Invoke, rich_policy: Path) -> None:
    assert d2("check", "-r", "analyst", "http.request").exit_code == 0
    seq = as_json(d2("check", "-r", "analyst", "--call", "db.read_users", "http.request", "--json"))
    assert seq["reason"] == "sequence_violation"
    assert seq["earlier"] == [{"tool": "db.read_users", "allowed": True, "reason": None}]


def test_check_data_flow_fact(d2: Invoke, write_policy: WritePolicy) -> None:
    write_policy(
        {"role": "r", "permissions": ["mail"]},
        data_flow={"labels": {}, "blocks": {"SECRET": ["mail"]}},
    )
    assert d2("check", "-r", "r", "mail").exit_code == 0
    denied = d2("check", "-r", "r", "--fact", "SECRET", "mail")
    assert denied.exit_code == 1 and "data_flow_violation" in denied.stdout


def test_check_usage_errors(d2: Invoke, rich_policy: Path) -> None:
    no_role = d2("check", "billing:read")
    assert no_role.exit_code == 2 and "--role" in no_role.stderr
    bad_arg = d2("check", "-r", "analyst", "billing:read", "--arg", "novalue")
    assert bad_arg.exit_code == 2 and "NAME=VALUE" in bad_arg.stderr
    assert d2("check", "-r", "analyst").exit_code == 2  # TOOL missing (click)


def test_check_an_unknown_tool_is_denied(d2: Invoke, rich_policy: Path) -> None:
    data = as_json(d2("check", "-r", "senior", "nope.tool", "--json"))
    assert data["reason"] == "not_granted" or data["reason"] == "unknown_tool"
    only_named = as_json(d2("check", "-r", "r", "x", "--json", "--policy", str(rich_policy)))
    assert only_named["allowed"] is False


def test_check_denies_when_the_policy_would_not_load(d2: Invoke, write_policy: WritePolicy) -> None:
    path = write_policy({"role": "r", "permissions": [f"t{i}" for i in range(40)]})
    result = d2("check", "t0", "--role", "r", "--policy", str(path), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["allowed"] is False and report["reason"] == "policy_not_in_force"
    assert "would not load" in report["message"]


def test_check_uses_literal_defaults_of_the_scanned_function(
    d2: Invoke, write_policy: WritePolicy, tmp_path: Path
) -> None:
    grant = {"tool": "crm.export", "conditions": {"input": {"limit": {"max": 10}}}}
    path = write_policy({"role": "r", "permissions": [grant]})
    (tmp_path / "tools.py").write_text(
        'from d2 import d2_guard\n\n@d2_guard("crm.export")\ndef export(limit=500): ...\n'
    )
    denied = d2("check", "crm.export", "--role", "r", "--policy", str(path), "--json")
    assert denied.exit_code == 1, denied.output
    report = json.loads(denied.stdout)
    assert report["defaults_used"] == {"limit": 500} and report["allowed"] is False
    assert report["reason"] == "input_validation"
    given = d2("check", "crm.export", "--role", "r", "--policy", str(path), "-a", "limit=3")
    assert given.exit_code == 0, given.output


def test_check_without_the_default_says_it_is_not_given(
    d2: Invoke, write_policy: WritePolicy, tmp_path: Path
) -> None:
    grant = {"tool": "crm.export", "conditions": {"input": {"limit": {"max": 10}}}}
    path = write_policy({"role": "r", "permissions": [grant]})
    (tmp_path / "tools.py").write_text(
        'from d2 import d2_guard\nN = 5\n\n@d2_guard("crm.export")\ndef export(limit=N): ...\n'
    )
    result = d2("check", "crm.export", "--role", "r", "--policy", str(path))
    assert result.exit_code == 1, result.output
    assert "UNDECIDED" in result.stdout and "not given: the function's default" in result.stdout
    report = json.loads(
        d2("check", "crm.export", "--role", "r", "--policy", str(path), "--json").stdout
    )
    assert report["allowed"] is None and report["reason"] == "argument_not_given"
    assert list(report["not_given"]) == ["limit"]
