"""Attacks on approvals from the eleventh and twelfth hostile reviews (of the
inbox, its desk and its store), against commits 4bd257b and 9b96056.

Each test asserts the SAFE behaviour: the approver is shown everything that makes
the call run as it will, the requester never decides their own request under a
spelling their identity source takes for theirs, and what the approver reads is
the store's own copy. Each failed on the commit the review was written against.
"""

from __future__ import annotations

import asyncio
import unicodedata
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
from d2.core.approval_desk import (
    ApprovalDesk,
    could_decide,
    same_person,
    shown_json,
    visible_text,
)
from d2.core.stores import MemoryStore
from d2.core.testing import policy_document, webhook_receiver
from hypothesis import given
from hypothesis import strategies as st

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


# -- the twelfth review ----------------------------------------------------------


class Payments:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    @d2_guard("payments.refund")
    def refund(self, order_id: str, amount: int) -> str:
        return "refunded"


def test_the_webhook_never_sends_the_object_a_method_runs_on() -> None:
    # twelfth review F1: the object (its API key) reached the chat channel with the
    # arguments; the approver still sees it, the webhook does not
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [{"tool": "payments.refund", "approval": {"approvers": ["lead"]}}],
        },
        {"role": "lead", "permissions": []},
        name="review12",
    )
    with webhook_receiver() as hook:
        configure_rbac_sync(
            source=InMemorySource(doc),
            approval_webhook=hook.url,
            approval_webhook_arguments=True,
        )
        set_user("agent-7", roles=["agent"])
        request = _held(Payments("sk_live_51HxSECRET").refund, "o_2", 250)
        assert request.arguments["self"]["api_key"] == "sk_live_51HxSECRET"  # the approver's
        assert hook.wait_for(1)
        sent = hook.events[0]
    assert sent["arguments"] == {"order_id": "o_2", "amount": 250}
    assert "sk_live" not in str(sent)


@pytest.mark.parametrize(
    ("requester", "alias"),
    [
        ("lukasz", "\u0142ukasz"),  # letters with a stroke do not decompose
        ("bjorn", "bj\u00f8rn"),
        ("aeron", "\u00e6ron"),
        ("dana", "\u0111ana"),
        ("agent-7", "agent-7\x01"),  # control characters collations ignore
        ("agent-7", "agent\x7f-7"),
    ],
)
def test_letters_collations_take_for_plain_ones_are_one_person(requester: str, alias: str) -> None:
    # twelfth review F4: accent-insensitive collations (the Unicode collation
    # tables) sign these in as one account
    assert same_person(alias, requester)
    _configure({"tool": "refund", "approval": {"approvers": ["lead"]}})
    refund = d2_guard("refund")(lambda amount: "refunded")
    set_user(requester, roles=["agent", "lead"])
    request = _held(refund, 9000)
    with pytest.raises(PermissionDeniedError) as info:
        asyncio.run(ApprovalDesk.of_instance().decide(request.id, True, alias, ["lead"]))
    assert info.value.reason == "approval_not_permitted"


def test_the_in_process_store_reads_a_request_outside_its_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # twelfth review F6: parsing megabytes of arguments under the store's lock
    # stalled every guarded call with a per-user budget meanwhile
    store = MemoryStore()
    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                {
                    "role": "agent",
                    "permissions": [{"tool": "pay", "approval": {"approvers": ["lead"]}}],
                },
                {"role": "lead", "permissions": []},
                name="review12",
            )
        ),
        store=store,
    )
    parsed_under_lock: list[bool] = []
    parse = ApprovalRequest.from_json

    def watched(text: str | bytes) -> ApprovalRequest:
        parsed_under_lock.append(store._lock.locked())
        return parse(text)

    monkeypatch.setattr(ApprovalRequest, "from_json", staticmethod(watched))
    pay = d2_guard("pay")(lambda to: "paid")
    set_user("agent-7", roles=["agent"])
    request = _held(pay, "x" * 1000)
    desk = ApprovalDesk.of_instance()
    asyncio.run(desk.pending("dana", ["lead"]))
    asyncio.run(desk.lookup(request.id, "dana", ["lead"]))
    asyncio.run(desk.decide(request.id, True, "dana", ["lead"]))
    set_user("agent-7", roles=["agent"])
    assert pay("x" * 1000) == "paid"
    assert parsed_under_lock and not any(parsed_under_lock)


@pytest.mark.parametrize(
    ("plain", "alike"),
    [
        ("acct-77", "acct-\U0001d7fd\U0001d7fd"),  # mathematical monospace digits
        ("payee", "p\U0001d68a\U0001d6a2ee"),  # mathematical monospace letters
        ("ACME", "\uff21\uff23\uff2d\uff25"),  # fullwidth
        ("file", "\ufb01le"),  # a ligature
    ],
)
def test_characters_that_draw_like_ascii_are_shown_as_escapes(plain: str, alike: str) -> None:
    # twelfth review F2: the mathematical monospace a and 7 (U+1D68A, U+1D7FD) drew
    # pixel-identical to "a" and "7" on the inbox page
    assert visible_text(alike) != visible_text(plain) == plain
    assert "\\u" in visible_text(alike)
    assert shown_json({"to": alike}) != shown_json({"to": plain})
    assert all(c.isascii() for c in shown_json({"to": alike}))


@given(text=st.text())
def test_no_character_shown_draws_like_ascii_it_is_not(text: str) -> None:
    for char in visible_text(text) + shown_json({"v": text}):
        if not char.isascii():
            folded = unicodedata.normalize("NFKC", char)
            assert folded == char or not folded.isascii(), repr(char)


# -- the fourteenth review (a re-check) ---------------------------------------------


@pytest.mark.parametrize(
    ("plain", "alike"),
    [
        ("ACME-77", "ACME\u201077"),  # HYPHEN: pixel-identical in the arguments box
        ("ACME-77", "ACME\u201177"),  # NON-BREAKING HYPHEN
        ("acct-8", "acct-\u09ea"),  # BENGALI DIGIT FOUR beside Latin
        ("code", "\u1d04ode"),  # LATIN LETTER SMALL CAPITAL C
        ("-5", "\u22125"),  # MINUS SIGN
    ],
)
def test_dashes_digits_and_small_capitals_that_draw_like_ascii_are_escaped(
    plain: str, alike: str
) -> None:
    assert visible_text(plain) == plain
    assert visible_text(alike) != plain and "\\u" in visible_text(alike)
    assert all(c.isascii() for c in shown_json({"payee": alike}))


@pytest.mark.parametrize(
    "alias",
    [f"agent{c}7" for c in "\x1c\x1d\x1e\x1f\u06dd\u070f\ufff9\ufffa\ufffb\ufffc\u1806"],
)
def test_characters_ldap_ignores_do_not_make_another_person(alias: str) -> None:
    # RFC 4518 string preparation (LDAP's caseIgnoreMatch) maps these to nothing
    assert same_person(alias, "agent7")


def test_katakana_and_hiragana_spellings_are_one_person() -> None:
    # collations that ignore kana type (SQL Server without _KS) sign them in as one
    assert same_person("\u30a2\u30a4\u30b3", "\u3042\u3044\u3053")
    assert not same_person("\u3042\u3044\u3053", "\u3042\u3044\u304b")
