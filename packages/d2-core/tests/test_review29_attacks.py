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
