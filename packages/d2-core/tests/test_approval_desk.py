"""``ApprovalDesk``: approvers named explicitly read and decide one app's requests,
with the rules of ``approve()``: only an approver role, never the requester, one
pending unexpired request, and another app's request is invisible."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from d2.core import (
    ApprovalRequiredError,
    MissingPolicyError,
    PermissionDeniedError,
    d2_guard,
    set_user,
)
from d2.core.approval_desk import ApprovalDesk, namespace_of, shown_json, visible_text
from d2.core.errors import ConfigurationError
from d2.core.evaluate import evaluator_for
from d2.core.manager import PolicyManager
from d2.core.stores import MemoryStore
from d2.core.testing import controlled_clock
from hypothesis import given
from hypothesis import strategies as st

REFUND = {
    "role": "agent",
    "permissions": [
        {
            "tool": "payments.refund",
            "approval": {"approvers": ["finance_lead", "cfo"], "ttl": "10m"},
        }
    ],
}
LEAD = {"role": "finance_lead", "permissions": []}
CFO = {"role": "cfo", "permissions": []}


@d2_guard("payments.refund")
def refund(order_id: str, amount: int) -> str:
    return f"refunded {amount} on {order_id}"


def hold(user: str = "agent-7", order: str = "o_1", amount: int = 250) -> Any:
    set_user(user, roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as info:
        refund(order, amount)
    return info.value.request


async def test_an_approver_sees_decides_and_the_call_runs_once(
    configure: Callable[..., PolicyManager],
) -> None:
    configure(REFUND, LEAD, CFO, metadata={"name": "refund-desk"})
    desk = ApprovalDesk.of_instance()
    request = hold()
    assert request.asked_at == pytest.approx(time.time(), abs=5)
    assert request.expires_at == pytest.approx(request.asked_at + 600)
    assert [r.id for r in await desk.pending("dana", ["finance_lead"])] == [request.id]
    assert [r.id for r in await desk.pending("carl", "cfo")] == [request.id]
    assert await desk.pending("agent-7", ["agent", "finance_lead"]) == []  # the requester
    assert await desk.pending("eve", ["agent"]) == []  # no approver role
    assert await desk.pending(None, ["finance_lead"]) == []
    state = await desk.lookup(request.id, "dana", ["finance_lead"])
    assert state is not None and state.state == "pending"
    for who, roles in (("agent-7", ["finance_lead"]), ("eve", ["agent"]), (None, ["cfo"])):
        assert await desk.lookup(request.id, who, roles) is None
    assert await desk.lookup("0" * 64, "dana", ["finance_lead"]) is None

    decided = await desk.decide(request.id, True, "dana", ["finance_lead"])
    assert decided.id == request.id
    state = await desk.lookup(request.id, "carl", ["cfo"])
    assert state is not None and (state.state, state.decided_by) == ("approved", "dana")
    assert await desk.pending("carl", ["cfo"]) == []
    set_user("agent-7", roles=["agent"])
    assert refund("o_1", 250) == "refunded 250 on o_1"
    assert await desk.lookup(request.id, "dana", ["finance_lead"]) is None  # used: gone
    with pytest.raises(PermissionDeniedError) as again:
        await desk.decide(request.id, True, "dana", ["finance_lead"])
    assert again.value.reason == "approval_not_found"


@pytest.mark.parametrize(
    ("who", "roles", "reason"),
    [
        ("agent-7", ["finance_lead"], "approval_not_permitted"),  # the requester
        ("eve", ["agent", "auditor"], "approval_not_permitted"),
        (None, ["finance_lead"], "no_user"),
    ],
)
async def test_nobody_but_an_approver_who_did_not_ask_decides(
    configure: Callable[..., PolicyManager], who: str | None, roles: list[str], reason: str
) -> None:
    configure(REFUND, LEAD, CFO, metadata={"name": "refund-desk"})
    desk = ApprovalDesk.of_instance()
    request = hold()
    with pytest.raises(PermissionDeniedError) as info:
        await desk.decide(request.id, True, who, roles)
    assert info.value.reason == reason
    state = await desk.lookup(request.id, "dana", ["finance_lead"])
    assert state is not None and state.state == "pending"


async def test_a_rejection_refuses_the_call_and_an_expired_request_cannot_be_decided(
    configure: Callable[..., PolicyManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = controlled_clock(monkeypatch)
    configure(REFUND, LEAD, CFO, metadata={"name": "refund-desk"})
    desk = ApprovalDesk.of_instance()
    first = hold(order="o_1")
    await desk.decide(first.id, False, "dana", ["finance_lead"])
    set_user("agent-7", roles=["agent"])
    with pytest.raises(PermissionDeniedError) as info:
        refund("o_1", 250)
    assert info.value.reason == "approval_rejected"

    late = hold(order="o_2")
    clock.advance(601)
    assert await desk.pending("dana", ["finance_lead"]) == []
    assert await desk.lookup(late.id, "dana", ["finance_lead"]) is None
    with pytest.raises(PermissionDeniedError) as expired:
        await desk.decide(late.id, True, "dana", ["finance_lead"])
    assert expired.value.reason == "approval_not_found"


async def test_a_desk_on_a_store_sees_its_own_app_only(
    configure: Callable[..., PolicyManager],
) -> None:
    store = MemoryStore()
    configure(REFUND, LEAD, CFO, metadata={"name": "refund-desk"}, store=store)
    request = hold()
    mine = ApprovalDesk(store, namespace_of("refund-desk"))
    other = ApprovalDesk(store, namespace_of("other-app"))
    assert [r.id for r in await mine.pending("dana", ["finance_lead"])] == [request.id]
    assert await other.pending("dana", ["finance_lead"]) == []
    assert await other.lookup(request.id, "dana", ["finance_lead"]) is None
    with pytest.raises(PermissionDeniedError) as info:
        await other.decide(request.id, True, "dana", ["finance_lead"])
    assert info.value.reason == "approval_not_found"
    await mine.decide(request.id, True, "dana", ["finance_lead"])
    set_user("agent-7", roles=["agent"])
    assert refund("o_1", 250) == "refunded 250 on o_1"


async def test_an_instance_without_a_policy_is_refused_with_what_to_do() -> None:
    desk = ApprovalDesk.of_instance("nothing-here")
    with pytest.raises(MissingPolicyError, match="configure"):
        await desk.pending("dana", ["finance_lead"])
    assert evaluator_for("nothing-here").policy is None
    for bad in ("", "  "):
        with pytest.raises(ConfigurationError):
            namespace_of(bad)
    with pytest.raises(ConfigurationError):
        ApprovalDesk(MemoryStore(), "")
    with pytest.raises(ConfigurationError):
        ApprovalDesk("redis://x", "local:a")  # type: ignore[arg-type]
    assert namespace_of(" refund-desk ") == "local:refund-desk"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(value=st.dictionaries(st.text(), json_values, max_size=5))
def test_shown_json_is_the_same_json_with_nothing_hidden(value: dict[str, Any]) -> None:
    text = shown_json(value)
    assert json.loads(text) == value  # the approver reads the exact values
    hidden = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"}
    assert all(c in " \n" or unicodedata.category(c) not in hidden for c in text)


@given(text=st.text())
def test_visible_text_escapes_every_invisible_character(text: str) -> None:
    shown = visible_text(text)
    hidden = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"}
    assert all(c == " " or unicodedata.category(c) not in hidden for c in shown)
    if all(c == " " or unicodedata.category(c) not in hidden for c in text):
        assert shown == text


def test_a_direction_override_cannot_disguise_an_argument() -> None:
    # "\u202e" shows what follows right to left: "moc.live@" would read "@evil.com"
    assert shown_json({"to": "x\u202emoc.live@"}) == '{\n  "to": "x\\u202emoc.live@"\n}'
    assert visible_text("pay\u200bments") == "pay\\u200bments"
