"""Attacks on the approval digest and the approver's view from the sixth hostile
review, against commit 28a9759.

Each test asserts the SAFE behaviour: an approver approves what they are shown,
the digest binds exactly what the tool receives, the view never runs the app's
code nor shows two different values alike, and what cannot be represented
faithfully is refused. Each failed on the commit the review was written against.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    configure_rbac_sync,
    d2_guard,
    set_user,
)
from d2.core.approval_data import (
    NoCanonicalForm,
    call_digest,
    canonical_arguments,
    shown_arguments,
)
from d2.core.testing import policy_document

LEAD = {"role": "finance_lead", "permissions": []}
REFUSED = ("approval_required", "approval_unsupported")


def _configure(tool: str) -> None:
    grant = {"tool": tool, "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="review6")
    configure_rbac_sync(source=InMemorySource(doc))


def _held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


def _approved_then(approved: Any, other: Any, act: Callable[[Any], Any]) -> list[Any]:
    """Approve ``tool(approved)``, then call ``tool(other)``: what the tool acted on
    (``act(argument)``), in order. Safe: ``other`` is refused."""
    _configure("ops.run")
    acted: list[Any] = []

    @d2_guard("ops.run")
    def tool(arg: Any) -> str:
        acted.append(act(arg))
        return "done"

    set_user("agent-7", roles=["agent"])
    _approve(_held(lambda: tool(approved)))
    try:
        tool(other)
    except PermissionDeniedError as err:
        assert err.reason in REFUSED
    return acted


def _shown_or_refused(value: Any) -> ApprovalRequest | None:
    """The request an approver is shown for ``tool(value)``, or None when the call
    is refused outright as one that cannot be approved (nothing misleading shown)."""
    _configure("ops.send")

    @d2_guard("ops.send")
    def tool(arg: Any) -> str:
        return "sent"

    set_user("agent-7", roles=["agent"])
    try:
        return _held(lambda: tool(value))
    except PermissionDeniedError as err:
        assert err.reason == "approval_unsupported", err.reason
        return None


def _refused_by_digest_and_view(value: Any) -> None:
    with pytest.raises(NoCanonicalForm):
        canonical_arguments({"v": value})
    assert not shown_arguments({"v": value})[1], "shown whole"


# -- (c2) a forged enum member: its value is hashed ------------------------------------


class Slow:
    """A value whose hash is the app's code (it counts its calls)."""

    hashed: ClassVar[int] = 0

    def __hash__(self) -> int:
        Slow.hashed += 1
        return 1

    def __eq__(self, other: object) -> bool:
        return False


class Mode(enum.Enum):
    SAFE = 1


def test_a_forged_enum_member_is_refused_without_running_its_value_s_code() -> None:
    """Attack: an object made with ``object.__new__(Mode)`` and a name no member has
    was looked up by value (``_value2member_map_.get(value)``), which hashes the
    value: the app's ``__hash__`` ran inside the digest (a slow one held the caller
    10 s). Safe: it is refused without hashing its value."""
    forged = object.__new__(Mode)
    forged.__dict__.update(_name_="Z", _value_=Slow())
    Slow.hashed = 0
    with pytest.raises(NoCanonicalForm, match="not a member"):
        canonical_arguments({"v": forged})
    assert not shown_arguments({"v": forged})[1]
    assert Slow.hashed == 0


# -- (c3) many small sets --------------------------------------------------------------


def test_a_set_of_many_small_sets_is_refused_promptly() -> None:
    """Attack: a frozenset of 400,000 small frozensets took about 6 s of the caller's
    thread before the digest refused it (each item's sort key is a canonical text of
    its own). Safe: the digest refuses it, and the view gives up, within a second
    each (both well under on an idle machine)."""
    value = frozenset(frozenset({i, -i - 1, "x" * 40}) for i in range(400_000))
    start = time.perf_counter()
    with pytest.raises(NoCanonicalForm, match="too large"):
        call_digest("t", {"v": value}, "u", "v")
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    assert not shown_arguments({"v": value})[1]
    assert time.perf_counter() - start < 1.0
