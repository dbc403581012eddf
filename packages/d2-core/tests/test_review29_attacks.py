"""Review 29 attacks (hostile reviewer): each asserts the secure behaviour."""

from __future__ import annotations

from typing import Any

import pytest
from d2.core import PermissionDeniedError, d2_guard, set_user


def test_a_keyword_named_like_kwargs_does_not_hide_the_rest_from_its_rule(
    configure: Any,
) -> None:
    # A rule on the name of `**opts` reads the dict it collects: `not_contains: force`
    # refuses `run(force=1)`. Passing a decoy keyword named `opts` made the rule read
    # only the decoy, and `force=1` (and any other key) ran unchecked.
    configure(
        {
            "role": "r",
            "permissions": [
                {"tool": "run", "conditions": {"input": {"opts": {"not_contains": "force"}}}}
            ],
        }
    )
    ran: list[dict[str, Any]] = []

    @d2_guard("run")
    def run(**opts: Any) -> str:
        ran.append(opts)
        return "ran"

    set_user("u", roles=["r"])
    with pytest.raises(PermissionDeniedError):
        run(force=1)
    with pytest.raises(PermissionDeniedError):
        run(opts={}, force=1)
    assert ran == []


def test_a_decoy_named_like_kwargs_does_not_skip_an_approval(configure: Any) -> None:
    # the same decoy against approval.when: {opts: {contains: prod}} asked a person
    # for run(prod=1) but not for run(opts="x", prod=1)
    configure(
        {
            "role": "r",
            "permissions": [
                {
                    "tool": "deploy",
                    "approval": {"approvers": ["lead"], "when": {"opts": {"contains": "prod"}}},
                }
            ],
        },
        {"role": "lead", "permissions": ["deploy"]},
    )

    @d2_guard("deploy")
    def deploy(**opts: Any) -> str:
        return "deployed"

    set_user("u-decoy", roles=["r"])
    assert deploy(opts="dev", stage=1) == "deployed"  # neither holds: no approval
    with pytest.raises(PermissionDeniedError) as info:
        deploy(opts="dev", prod=1)
    assert info.value.reason == "approval_required"
