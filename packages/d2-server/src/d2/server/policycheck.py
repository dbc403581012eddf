"""Checks a policy document must pass before it is published or saved as a draft:
size and tool-count plan limits (402), the policy language (d2-core's validator,
422 with the error paths), and the app it names."""

from __future__ import annotations

from typing import Any

from d2.core import InvalidPolicyError
from d2.core.policy import compile_policy

from .config import Quotas
from .errors import ApiError
from .strictjson import JSONError, canonical_json, loads_strict

__all__ = ["check_policy", "check_size", "parse_policy"]

_MAX_ERRORS = 100


def check_size(size: int, quotas: Quotas) -> None:
    """402 ``plan_limit_bundle_size`` when ``size`` bytes exceed the plan."""
    if size > quotas.bundle_size_bytes:
        raise ApiError(
            402,
            "plan_limit_bundle_size",
            limit=quotas.bundle_size_bytes,
            value=size,
            message=(
                f"the policy is {size} bytes; the plan allows {quotas.bundle_size_bytes}. "
                "Shorten it with tool groups or prefix wildcards, or upgrade the plan"
            ),
        )


def parse_policy(body: bytes) -> Any:
    """The policy document in a publish body; 422 when it is not JSON."""
    try:
        return loads_strict(body)
    except JSONError as exc:
        raise ApiError(422, "invalid_policy", errors=[f"<root>: not valid JSON: {exc}"]) from None


def check_policy(document: Any, *, app_name: str, quotas: Quotas, now: float) -> str:
    """Validate ``document`` for the app ``app_name``; returns its canonical JSON.

    422 ``invalid_policy`` with ``errors`` (one ``"<path>: <problem>"`` line each)
    when the policy language refuses it, when ``metadata.name`` is missing (it is
    required in cloud mode) or names another app, or when ``metadata.expires`` is
    already past at ``now`` (clients honour it inside bundles too); 402
    ``plan_limit_max_tools`` when it names more tools than the plan allows.
    """
    try:
        compiled = compile_policy(document, source="<publish>")
    except InvalidPolicyError as exc:
        raise ApiError(422, "invalid_policy", errors=list(exc.errors[:_MAX_ERRORS])) from None
    name = compiled.name
    if name is None:
        raise ApiError(
            422,
            "invalid_policy",
            errors=[f"metadata.name: required in cloud mode; set it to {app_name!r}"],
        )
    if name != app_name:
        raise ApiError(
            422,
            "invalid_policy",
            errors=[
                f"metadata.name: {name[:100]!r} is not the app this token publishes to "
                f"({app_name!r})"
            ],
        )
    if compiled.expires_at <= now:
        raise ApiError(
            422,
            "invalid_policy",
            errors=["metadata.expires: already past; set a future time or remove it"],
        )
    if compiled.tool_count > quotas.max_tools:
        raise ApiError(
            402,
            "plan_limit_max_tools",
            limit=quotas.max_tools,
            value=compiled.tool_count,
            message=(
                f"the policy names {compiled.tool_count} tools; the plan allows "
                f"{quotas.max_tools}. Use prefix wildcards or groups, or upgrade the plan"
            ),
        )
    return canonical_json(document)
