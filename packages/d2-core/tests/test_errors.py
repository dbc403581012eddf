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


def test_error_module_exports_exactly_its_classes() -> None:
    public = {
        n
        for n, v in vars(errors).items()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__
    }
    assert set(errors.__all__) == public


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
    assert MissingPolicyError("x").reason == "missing_policy"
    assert BundleExpiredError("x").reason == "policy_expired"
