"""Attacks on approvals from the eleventh hostile review (of the inbox, its desk
and its store), against commit 4bd257b.

Each test asserts the SAFE behaviour: the approver is shown everything that makes
the call run as it will, the requester never decides their own request under a
spelling their identity source takes for theirs, and what the approver reads is
the store's own copy. Each failed on the commit the review was written against.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    configure_rbac_sync,
    d2_guard,
    set_user,
)
from d2.core.approval_desk import ApprovalDesk, could_decide, same_person
from d2.core.testing import policy_document

RAN: list[str] = []


def _configure(*grants: Any) -> None:
    doc = policy_document(
        {"role": "agent", "permissions": list(grants)},
        {"role": "lead", "permissions": []},
        name="review11",
    )
    configure_rbac_sync(source=InMemorySource(doc))


def _held(call: Any, *args: Any) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call(*args)
    request = info.value.request
    assert request is not None
    return request


class Bank:  # at module level: a value's class is found by its name
    def __init__(self) -> None:
        self.payee = "supplier-iban"

    @d2_guard("bank.select_payee")
    def select_payee(self, iban: str) -> None:
        self.payee = iban

    @d2_guard("bank.transfer")
    def transfer(self, amount: int) -> str:
        RAN.append(self.payee)
        return f"sent {amount} to {self.payee}"


def test_the_approver_sees_the_object_a_method_runs_on() -> None:
    # F1: an earlier call (no approval needed) picked the payee; the approver was
    # shown {"amount": 5000} and approved a transfer to the attacker
    _configure("bank.select_payee", {"tool": "bank.transfer", "approval": {"approvers": ["lead"]}})
    set_user("agent-7", roles=["agent"])
    bank = Bank()
    bank.select_payee("attacker-iban")
    request = _held(bank.transfer, 5000)
    assert request.arguments["self"] == {"__class__": f"{__name__}.Bank", "payee": "attacker-iban"}
    assert list(request.arguments) == ["self", "amount"]  # the object first
    other = Bank()
    assert _held(other.transfer, 5000).arguments["self"]["payee"] == "supplier-iban"
    assert RAN == []


@pytest.mark.parametrize(
    ("requester", "alias"),
    [
        ("admin", "adm\u0131n"),  # dotless i: its upper case is "I" (Java, .NET, AD)
        ("agent-7", "\u00e1gent-7"),  # accent-insensitive collations
        ("agent-7", "a\u0301gent-7"),  # the same, decomposed
        ("rene", "REN\u00c9"),
    ],
)
def test_spellings_an_identity_source_takes_for_one_user_are_one_person(
    requester: str, alias: str
) -> None:
    # F3: the requester signed in to the inbox under a spelling their identity
    # source accepts, and approved their own refund
    _configure({"tool": "refund", "approval": {"approvers": ["lead"]}})
    refund = d2_guard("refund")(lambda amount: "refunded")
    set_user(requester, roles=["agent", "lead"])
    request = _held(refund, 9999)
    assert same_person(alias, requester)
    assert not could_decide(request, alias, ["lead"])
    desk = ApprovalDesk.of_instance()
    assert asyncio.run(desk.pending(alias, ["lead"])) == []
    with pytest.raises(PermissionDeniedError) as info:
        asyncio.run(desk.decide(request.id, True, alias, ["lead"]))
    assert info.value.reason == "approval_not_permitted"
    assert not same_person("admin", "adm1n") and not same_person("rene", "rena")


def test_editing_the_held_request_does_not_change_what_the_approver_reads() -> None:
    # F4: the in-process store kept the very request err.request handed out: app
    # code "tidying" its arguments changed the inbox's view, not what runs
    _configure({"tool": "pay", "approval": {"approvers": ["lead"]}})
    pay = d2_guard("pay")(lambda to, amount: RAN.append(to))
    set_user("agent-7", roles=["agent"])
    request = _held(pay, "attacker-iban", 9999)
    request.arguments["to"] = "supplier-iban"
    desk = ApprovalDesk.of_instance()
    state = asyncio.run(desk.lookup(request.id, "dana", ["lead"]))
    assert state is not None and state.request.arguments == {"to": "attacker-iban", "amount": 9999}
    state.request.arguments["to"] = "edited by one reader"  # not seen by the next
    listed = asyncio.run(desk.pending("dana", ["lead"]))
    assert [r.arguments["to"] for r in listed] == ["attacker-iban"]
