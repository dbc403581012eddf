"""The fourteenth hostile review (a re-check of the approvals).

Each test asserts the safe behaviour and failed before its fix: a decorator with an
honest ``__signature__`` hid a default changed on the function it wraps; the
webhook got a method's object when it was not the first key; two different strings
had one digest.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

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
from d2.core.approval_data import call_digest, canonical_arguments
from d2.core.testing import policy_document
from hypothesis import assume, given, settings
from hypothesis import strategies as st

GOOD, BAD = "supplier-iban", "attacker-iban"


def _configure(*grants: dict[str, Any]) -> None:
    doc = policy_document(
        {"role": "agent", "permissions": list(grants)},
        {"role": "lead", "permissions": []},
        name="r14",
    )
    configure_rbac_sync(source=InMemorySource(doc))
    set_user("agent-7", roles=["agent"])


def _held(call: Any, *args: Any, **kwargs: Any) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call(*args, **kwargs)
    return info.value.request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


def _honest(fn: Any) -> Any:
    """A decorator that declares the signature of what it wraps (what D2's errors
    recommend), and passes every argument on."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return wrapper


@pytest.mark.parametrize("keyword_only", [False, True])
def test_default_changed_under_an_honest_signature_is_never_approved(keyword_only: bool) -> None:
    ran: list[str] = []
    _configure({"tool": "pay", "approval": {"approvers": ["lead"]}})
    if keyword_only:

        def pay(amount: int, *, to: str = GOOD) -> None:
            ran.append(to)
    else:

        def pay(amount: int, to: str = GOOD) -> None:
            ran.append(to)

    guarded = d2_guard("pay")(_honest(pay))
    request = _held(guarded, 5000)
    assert request.arguments == {"amount": 5000, "to": GOOD}
    _approve(request)
    if keyword_only:
        pay.__kwdefaults__ = {"to": BAD}
    else:
        pay.__defaults__ = (BAD,)
    # the declared signature still says GOOD, the function runs with BAD: refused
    with pytest.raises(PermissionDeniedError) as info:
        guarded(5000)
    assert info.value.reason == "approval_unsupported"
    assert "__signature__" in str(info.value)
    assert ran == []


def test_default_changed_under_an_honest_signature_fails_input_rules_closed() -> None:
    ran: list[str] = []
    _configure({"tool": "pay", "conditions": {"input": {"to": {"in": [GOOD]}}}})

    def pay(amount: int, to: str = GOOD) -> None:
        ran.append(to)

    guarded = d2_guard("pay")(_honest(pay))
    guarded(5)
    pay.__defaults__ = (BAD,)
    with pytest.raises(PermissionDeniedError) as info:
        guarded(5)
    assert "__signature__" in str(info.value)
    assert ran == [GOOD]
    pay.__defaults__ = (GOOD,)  # as declared again: trusted again
    guarded(5)
    assert ran == [GOOD, GOOD]


def test_honest_signature_with_unchanged_defaults_still_binds() -> None:
    ran: list[str] = []
    _configure({"tool": "pay", "approval": {"approvers": ["lead"]}})

    def pay(amount: int, to: str = GOOD) -> None:
        ran.append(to)

    guarded = d2_guard("pay")(_honest(pay))
    request = _held(guarded, 5000)
    assert request.arguments == {"amount": 5000, "to": GOOD}
    _approve(request)
    guarded(5000)
    assert ran == [GOOD]


class Payments:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def refund(self, order_id: str, amount: int) -> str:
        return "refunded"


class Other:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    @d2_guard("this.refund")
    def refund(this, order_id: str, amount: int) -> str:
        return "ok"


class Data:
    def __init__(self, to: str) -> None:
        self.to = to


def _webhook_case(name: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """(the guarded tool, its call's arguments, what the webhook must send)."""
    client = Payments("sk_live_SECRET")
    plain = {"order_id": "o_2", "amount": 250}
    if name == "bound":
        return d2_guard(name)(client.refund), ("o_2", 250), plain
    if name == "partial":
        return d2_guard(name)(functools.partial(Payments.refund, client)), ("o_2", 250), plain
    if name == "this.refund":
        return Other("sk_live_SECRET").refund, ("o_2", 250), plain

    def payee(self: Data, amount: int) -> str:  # a plain function: "self" is data
        return "ok"

    shown = {"self": {"__class__": f"{__name__}.Data", "to": GOOD}, "amount": 5000}
    return d2_guard(name)(payee), (Data(GOOD), 5000), shown


@pytest.mark.parametrize("name", ["bound", "partial", "this.refund", "selfdata"])
def test_the_webhook_leaves_out_exactly_the_object_a_method_runs_on(name: str) -> None:
    from d2.core.testing import webhook_receiver

    tool, args, expected = _webhook_case(name)
    doc = policy_document(
        {"role": "agent", "permissions": [{"tool": name, "approval": {"approvers": ["lead"]}}]},
        {"role": "lead", "permissions": []},
        name="r14",
    )
    with webhook_receiver() as hook:
        configure_rbac_sync(
            source=InMemorySource(doc), approval_webhook=hook.url, approval_webhook_arguments=True
        )
        set_user("agent-7", roles=["agent"])
        request = _held(tool, *args)
        assert hook.wait_for(1)
        sent = hook.events[0]
    assert sent["arguments"] == expected
    assert "sk_live" not in str(sent)
    if name != "selfdata":  # the approver sees the object, first
        first = next(iter(request.arguments))
        assert request.arguments[first]["api_key"] == "sk_live_SECRET"
        assert request.object_argument == first
    else:
        assert request.object_argument == ""


def test_a_request_stored_before_object_argument_still_reads() -> None:
    request = ApprovalRequest("r1", "t", "u", {"self": {"__class__": "x.C"}, "a": 1}, "v", 1.0, ())
    text = request.to_json()
    assert ApprovalRequest.from_json(text) == request
    old = text.replace(',"object_argument":null', "")
    assert "object_argument" not in old
    assert ApprovalRequest.from_json(old).object_argument is None
    named = request._replace(object_argument="self")
    assert ApprovalRequest.from_json(named.to_json()) == named


def _as_surrogates(char: str) -> str:
    """A character beyond U+FFFF as the two lone surrogates UTF-16 writes it with."""
    code = ord(char) - 0x10000
    return chr(0xD800 + (code >> 10)) + chr(0xDC00 + (code & 0x3FF))


# any string, lone surrogates included, and often the two surrogates of an astral
# character (what JSON's ASCII escapes wrote like the character itself)
_ASTRAL = st.characters(min_codepoint=0x10000)
_ANY_TEXT = st.lists(
    st.one_of(
        st.characters(codec=None, exclude_categories=()),
        _ASTRAL,
        _ASTRAL.map(_as_surrogates),
        st.sampled_from(["\U0001f600", _as_surrogates("\U0001f600")]),
    ),
    max_size=6,
).map("".join)


def test_an_astral_character_and_its_two_lone_surrogates_are_two_calls() -> None:
    astral, pair = "\U0001f600", "\ud83d\ude00"
    for arguments in ({"memo": astral}, {"memo": pair}):
        assert call_digest("pay", arguments, "agent-7", "v")  # both digest
    assert call_digest("pay", {"memo": astral}, "u", "v") != call_digest(
        "pay", {"memo": pair}, "u", "v"
    )
    assert call_digest("pay", {astral: 1}, "u", "v") != call_digest("pay", {pair: 1}, "u", "v")
    assert call_digest("pay", {}, astral, "v") != call_digest("pay", {}, pair, "v")
    ran: list[str] = []
    _configure({"tool": "pay", "approval": {"approvers": ["lead"]}})
    pay = d2_guard("pay")(lambda memo: ran.append(memo))
    _approve(_held(pay, astral))
    _held(pay, pair)  # the approval of the other string does not run this one
    assert ran == []


@settings(max_examples=300, deadline=None)
@given(_ANY_TEXT, _ANY_TEXT)
def test_distinct_strings_never_share_a_digest(a: str, b: str) -> None:
    split = "".join(_as_surrogates(c) if ord(c) > 0xFFFF else c for c in a)
    if split != a:  # the same text, as UTF-16 would spell it: another string
        assert canonical_arguments({"s": a}) != canonical_arguments({"s": split})
    assume(a != b)
    assert canonical_arguments({"s": a}) != canonical_arguments({"s": b})
    assert canonical_arguments({a: 0}) != canonical_arguments({b: 0})
    assert call_digest("t", {"s": a}, "u", "v") != call_digest("t", {"s": b}, "u", "v")
    assert call_digest("t", {}, a, "v") != call_digest("t", {}, b, "v")


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=12))
def test_a_string_without_lone_surrogates_keeps_its_digest(text: str) -> None:
    assume(text != "s")
    # what ensure_ascii wrote before: pending approvals of such calls still match
    written = canonical_arguments({"s": text, text: [text]})
    before = json.dumps({"__t": "dict", "v": [["s", text], [text, [text]]]}, separators=(",", ":"))
    assert written == before
    assert written.isascii()
