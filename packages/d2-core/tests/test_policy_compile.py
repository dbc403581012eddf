"""Load-time validation: refused whole, every problem named with its path."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from d2.core import InvalidPolicyError
from d2.core.policy import compile_policy
from d2.core.policy.compile import parse_expires


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(InvalidPolicyError) as info:
        compile_policy(doc, source="policy.yaml")
    assert "policy.yaml" in str(info.value)
    return list(info.value.errors)


def test_valid_policy_compiles_with_groups_wildcards_and_multi_role_entries() -> None:
    policy = compile_policy(
        {
            "metadata": {
                "name": "app",
                "expires": "2030-01-01T00:00:00Z",
                "tool_groups": {"sensitive": ["db.read", "secrets.get"]},
            },
            "policies": [
                {"role": "admin", "permissions": ["*"]},
                {"role": ["analyst", "senior"], "permissions": ["reports:*", "@sensitive"]},
                {"roles": ["ops"], "permissions": [{"tool": "db.drop", "allow": False}]},
            ],
        }
    )
    assert policy.name == "app"
    assert policy.roles == {"admin", "analyst", "senior", "ops"}
    assert policy.concrete_tools == {"db.read", "secrets.get", "db.drop"}
    assert policy.patterns == {"reports:*"}
    assert policy.tool_count == 4
    assert policy.expires_at == dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    grants = policy.rules_for("db.read").grants
    assert [g.path for g in grants] == ["policies[0].permissions[0]", "policies[1].permissions[1]"]


def test_not_a_mapping_is_refused() -> None:
    assert errors_of(["policies"]) == ["<root>: expected a mapping with 'policies', got list"]


def test_missing_policies_is_refused() -> None:
    assert errors_of({"metadata": {}}) == ["policies: expected a list of role entries, got null"]


def test_unknown_keys_suggest_the_closest_valid_key() -> None:
    errs = errors_of(
        {
            "metadata": {"expire": "2030-01-01"},
            "policies": [
                {"role": "a", "permisions": ["x"]},
                {"role": "b", "permissions": [{"tool": "x", "alow": True}]},
            ],
            "polices": [],
        }
    )
    assert "polices: unknown key (did you mean 'policies'?)" in errs
    assert "metadata.expire: unknown key (did you mean 'expires'?)" in errs
    assert "policies[0].permisions: unknown key (did you mean 'permissions'?)" in errs
    assert "policies[1].permissions[0].alow: unknown key (did you mean 'allow'?)" in errs


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    errs = errors_of(
        {
            "metadata": {"expires": "next tuesday", "tool_groups": {"g": ["a", "b*"]}},
            "policies": [
                {"permissions": ["x"]},
                {"role": "a", "role_": 1, "permissions": [3, {"allow": True}, "@nope", "a*b", ""]},
                {"role": ["ok", 5], "roles": ["x"], "permissions": "x"},
                "just a string",
                {"role": "b", "permissions": [{"tool": "t", "allow": "yes"}]},
            ],
        }
    )
    expected_prefixes = [
        "metadata.expires: expected an RFC 3339 time",
        "metadata.tool_groups.g[1]: 'b*': a group lists exact tool ids only",
        "policies[0]: missing 'role'",
        "policies[1].role_: unknown key",
        "policies[1].permissions[0]: expected a tool id (string), got int",
        "policies[1].permissions[1]: missing 'tool'",
        "policies[1].permissions[2]: unknown tool group '@nope'",
        "policies[1].permissions[3]: 'a*b': '*' is only allowed alone or at the end",
        "policies[1].permissions[4]: tool id '' is empty",
        "policies[2]: give either 'role' or 'roles', not both",
        "policies[2].permissions: expected a list, got str",
        "policies[3]: expected a mapping",
        "policies[4].permissions[0].allow: expected true or false, got 'yes'",
    ]
    for prefix in expected_prefixes:
        assert any(e.startswith(prefix) for e in errs), (prefix, errs)


def test_unknown_group_suggests_a_close_group_name() -> None:
    errs = errors_of(
        {
            "metadata": {"tool_groups": {"sensitive": ["a"]}},
            "policies": [{"role": "r", "permissions": ["@sensitiv"]}],
        }
    )
    assert errs == [
        "policies[0].permissions[0]: unknown tool group '@sensitiv' (did you mean 'sensitive'?)"
    ]


def test_audit_mode_is_accepted_and_an_unknown_mode_refused() -> None:
    assert compile_policy({"metadata": {"mode": "audit"}, "policies": []}).audit
    assert (
        "expected 'enforce' or 'audit'"
        in errors_of({"metadata": {"mode": "loose"}, "policies": []})[0]
    )


def test_enforce_mode_is_accepted() -> None:
    assert compile_policy({"metadata": {"mode": "enforce"}, "policies": []}).mode == "enforce"


def test_role_names_are_stripped_and_literal() -> None:
    policy = compile_policy({"policies": [{"role": [" a ", "a", "*"], "permissions": ["t"]}]})
    assert policy.roles == {"a", "*"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-01T00:00:00Z", dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)),
        ("2026-12-01T01:00:00+01:00", dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)),
        ("2026-12-01T00:00:00", dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)),  # naive: UTC
        (dt.datetime(2026, 12, 1), dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)),
        (dt.date(2026, 12, 1), dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)),
    ],
)
def test_expires_forms(value: Any, expected: dt.datetime) -> None:
    assert parse_expires(value) == expected.timestamp()


@pytest.mark.parametrize("value", ["soon", 12, None, ""])
def test_unreadable_expires(value: Any) -> None:
    assert parse_expires(value) is None


def test_digest_is_sha256_of_the_raw_bytes() -> None:
    import hashlib

    raw = b'{"policies": []}'
    assert compile_policy({"policies": []}, raw=raw).digest == hashlib.sha256(raw).hexdigest()
