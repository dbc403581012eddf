"""The error hierarchy: every denial is a PermissionDeniedError; errors keep data."""

from __future__ import annotations

import pickle

import pytest
from d2.core import (
    BundleExpiredError,
    ConfigurationError,
    D2Error,
    D2PlanLimitError,
    InvalidPolicyError,
    InvalidSignatureError,
    MissingPolicyError,
    PermissionDeniedError,
    PolicyTooLargeError,
    TooManyToolsError,
    d2_guard,
    errors,
    set_user,
)


def test_every_error_is_a_d2error_and_denials_are_permission_denied() -> None:
    for cls in (
        BundleExpiredError,
        ConfigurationError,
        D2PlanLimitError,
        InvalidPolicyError,
        InvalidSignatureError,
        MissingPolicyError,
        PermissionDeniedError,
        PolicyTooLargeError,
        TooManyToolsError,
    ):
        assert issubclass(cls, D2Error)
    assert issubclass(MissingPolicyError, PermissionDeniedError)
    assert issubclass(BundleExpiredError, PermissionDeniedError)
    assert issubclass(InvalidPolicyError, ConfigurationError)


def test_error_module_exports_exactly_its_public_classes_and_the_status_map() -> None:
    public = {
        n
        for n, v in vars(errors).items()
        if isinstance(v, type)
        and issubclass(v, (Exception, Warning))
        and v.__module__ == errors.__name__
        and not n.startswith("_")
    }
    assert set(errors.__all__) == public | {"STATUS_MAP"}


def test_invalid_policy_error_lists_source_and_paths() -> None:
    err = InvalidPolicyError("p.yaml", ["policies[0]: bad", "policies[1]: worse"])
    assert err.source == "p.yaml" and err.errors == ("policies[0]: bad", "policies[1]: worse")
    assert "p.yaml (2 problems)" in str(err) and "policies[1]: worse" in str(err)


def test_denial_survives_pickling_with_its_data(configure: object) -> None:
    configure({"role": "a", "permissions": ["x"]})  # type: ignore[operator]

    @d2_guard("y")
    def tool() -> None:
        return None

    set_user("alice", roles=["a"])
    with pytest.raises(PermissionDeniedError) as info:
        tool()
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value)
    assert (copy.tool_id, copy.user_id, copy.roles, copy.reason) == (
        "y",
        "alice",
        frozenset({"a"}),
        "unknown_tool",
    )
    assert str(copy) == str(info.value) and copy.trace == info.value.trace


def test_permission_denied_built_by_users_works() -> None:
    err = PermissionDeniedError("nope", tool_id="t", reason="custom")
    assert str(err) == "nope" and err.reason == "custom" and err.trace == ()
    assert PermissionDeniedError("x").reason == "denied"
    assert MissingPolicyError("x", tool_id="t").reason == "missing_policy"
    expired = BundleExpiredError("x", tool_id="t", expiry_date="2026-01-01T00:00:00Z")
    assert expired.reason == "policy_expired" and str(expired) == "x"
    assert expired.expiry_date == "2026-01-01T00:00:00Z"


def test_errors_d2_raises_while_loading_keep_their_reason_codes(tmp_path: object) -> None:
    from pathlib import Path

    from d2.core import Limits, LocalFileSource

    folder = Path(str(tmp_path))
    stale = folder / "p.json"
    stale.write_text(
        '{"metadata": {"name": "x", "expires": "2020-01-01T00:00:00Z"}, '
        '"policies": [{"role": "a", "permissions": ["t"]}]}'
    )
    with pytest.raises(BundleExpiredError) as info:
        LocalFileSource(stale).load(Limits())
    assert info.value.reason == "policy_expired"
    assert info.value.expiry_date == "2020-01-01T00:00:00Z"
    with pytest.raises(MissingPolicyError) as missing:
        LocalFileSource(folder / "absent.json").load(Limits())
    assert missing.value.reason == "missing_policy" and missing.value.tool_id is None
    many = folder / "many.json"
    many.write_text(
        '{"metadata": {"name": "x", "expires": "2999-01-01T00:00:00Z"}, "policies": '
        '[{"role": "a", "permissions": ["t1", "t2", "t3"]}]}'
    )
    with pytest.raises(TooManyToolsError) as too_many:
        LocalFileSource(many).load(Limits(max_tools=2, max_expiry_seconds=10**12))
    assert (too_many.value.tool_count, too_many.value.limit) == (3, 2)
    with pytest.raises(PolicyTooLargeError) as large:
        LocalFileSource(many).load(Limits(max_bytes=10, max_expiry_seconds=10**12))
    assert large.value.size_limit == 10 and large.value.bundle_size == len(many.read_bytes())
