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
    approve,
    d2_guard,
    pending_approvals,
    reject,
    set_user,
)
from d2.core._invisible import LOOK_ALIKE_SCRIPTS, foreign
from d2.core.approval_desk import (
    ApprovalDesk,
    could_decide,
    namespace_of,
    same_person,
    shown_json,
    visible_text,
)
from d2.core.errors import ConfigurationError
from d2.core.evaluate import evaluator_for
from d2.core.manager import PolicyManager
from d2.core.stores import MemoryStore
from d2.core.testing import controlled_clock
from hypothesis import example, given
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
    from d2.core._invisible import _like_ascii, invisible

    shown = visible_text(text)
    hidden = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"}
    assert all(c == " " or unicodedata.category(c) not in hidden for c in shown)
    if (
        not any(c != " " and invisible(c) for c in text)
        and not any(unicodedata.category(c)[0] == "M" for c in text)
        and unicodedata.is_normalized("NFC", text)
        and not foreign(text)  # what the text around it makes misleading (below)
        and not _like_ascii(text)  # what draws like ASCII it is not (twelfth review)
        and "\\u" not in text.lower()
    ):
        assert shown == text  # letters, digits and symbols of every script are kept


def test_a_direction_override_cannot_disguise_an_argument() -> None:
    # "\u202e" shows what follows right to left: "moc.live@" would read "@evil.com"
    assert shown_json({"to": "x\u202emoc.live@"}) == '{\n  "to": "x\\u202emoc.live@"\n}'
    assert visible_text("pay\u200bments") == "pay\\u200bments"


# -- the ninth review: characters that draw nothing, or draw like other text ---------

# Each of these drew nothing (or a blank) on the inbox page and in `d2 approvals
# show`: U+034F + U+FE0F after "acct-77" rendered pixel-identical in Chromium.
DRAW_NOTHING = [
    "\u034f",  # COMBINING GRAPHEME JOINER (Mn)
    "\ufe00",  # VARIATION SELECTOR-1 (Mn)
    "\ufe0f",  # VARIATION SELECTOR-16 (Mn)
    "\U000e0100",  # VARIATION SELECTOR-17 (Mn)
    "\U000e01ef",  # VARIATION SELECTOR-256 (Mn)
    "\u3164",  # HANGUL FILLER (Lo)
    "\u115f",  # HANGUL CHOSEONG FILLER (Lo)
    "\u1160",  # HANGUL JUNGSEONG FILLER (Lo)
    "\uffa0",  # HALFWIDTH HANGUL FILLER (Lo)
    "\u17b4",  # KHMER VOWEL INHERENT AQ (Mn)
    "\u17b5",  # KHMER VOWEL INHERENT AA (Mn)
    "\u180b",  # MONGOLIAN FREE VARIATION SELECTOR ONE (Mn)
    "\u180c",
    "\u180d",
    "\u180f",  # MONGOLIAN FREE VARIATION SELECTOR FOUR (Mn)
    "\u2800",  # BRAILLE PATTERN BLANK (So)
    "\U0001d159",  # MUSICAL SYMBOL NULL NOTEHEAD (So)
    "\u00ad",  # SOFT HYPHEN (Cf)
    "\U000e0041",  # TAG LATIN CAPITAL LETTER A (Cf)
]


@pytest.mark.parametrize("char", DRAW_NOTHING, ids=lambda c: f"U+{ord(c):04X}")
def test_a_character_that_draws_nothing_is_shown_as_its_escape(char: str) -> None:
    plain, hidden = {"to": "acct-77"}, {"to": "acct-77" + char}
    escaped = json.dumps(char)[1:-1]  # \\uXXXX, or the surrogate pair beyond U+FFFF
    assert escaped.startswith("\\u")
    assert shown_json(hidden) == shown_json(plain).replace("acct-77", "acct-77" + escaped)
    assert visible_text("acct-77" + char) == "acct-77" + escaped
    assert visible_text(char + "x") == escaped + "x"


def test_look_alikes_that_normalisation_would_merge_are_escaped() -> None:
    # A precomposed letter and its decomposed spelling draw alike: the second is
    # shown with its mark escaped. So are NFC singletons and overlay marks.
    assert visible_text("caf\u00e9") == "caf\u00e9"
    assert visible_text("cafe\u0301") == "cafe\\u0301"
    assert visible_text("\u212a") == "\\u212a"  # KELVIN SIGN, not K
    assert visible_text("x\u037ey") == "x\\u037ey"  # GREEK QUESTION MARK, not ;
    assert visible_text("o\u0338") == "o\\u0338"  # draws "ø"
    assert visible_text("\u1100\u1161") == "\u1100\\u1161"  # jamo that compose to U+AC00
    assert visible_text("\uac00") == "\uac00"
    # text that reads like an escape is not one
    assert visible_text("CORP\\u200b") == "CORP\\u005cu200b"
    assert visible_text("CORP\\alice") == "CORP\\alice"
    # a surrogate on its own never reads as half of a character beyond U+FFFF
    assert visible_text("\U000e0100") == "\\udb40\\udd00"
    assert visible_text("\udb40\udd00") == "\\uDB40\\uDD00"


def test_a_stack_of_combining_marks_is_cut_after_three() -> None:
    zalgo = "x" + "\u0301" * 300
    shown = visible_text(zalgo)
    assert shown == "x\u0301\u0301\u0301" + "\\u0301" * 297
    assert sum(unicodedata.category(c).startswith("M") for c in shown) == 3
    # scripts that stack marks keep them (Tibetan: three on one letter)
    assert visible_text("\u0f56\u0f66\u0f92\u0fb2\u0f74\u0f56\u0f66") == (
        "\u0f56\u0f66\u0f92\u0fb2\u0f74\u0f56\u0f66"
    )
    assert visible_text("\u0915\u093f") == "\u0915\u093f"  # Devanagari "ki"
    # a mark with no letter to sit on (after a space, a quote, an escape) is escaped
    assert visible_text(" \u0301") == " \\u0301"
    assert shown_json({"k": "\u0301x"}) == '{\n  "k": "\\u0301x"\n}'
    assert visible_text("\u200b\u0301") == "\\u200b\\u0301"


def unshown(text: str) -> str:
    """The text ``visible_text`` was given, read back from what it shows: proof
    that two different texts are never shown alike."""
    out: list[str] = []
    i = 0
    while i < len(text):
        hexa = text[i + 2 : i + 6]
        if (
            text.startswith("\\u", i)
            and len(hexa) == 4
            and all(c in "0123456789abcdefABCDEF" for c in hexa)
        ):
            code = int(hexa, 16)
            if 0xD800 <= code <= 0xDBFF and hexa.islower():  # the first of a pair
                low = int(text[i + 8 : i + 12], 16)
                assert text.startswith("\\u", i + 6) and 0xDC00 <= low <= 0xDFFF
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                i += 12
                continue
            out.append(chr(code))
            i += 6
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


TRICKY = st.sampled_from(
    DRAW_NOTHING
    + list("\u0301\u0316\u0323\u0338\u20e3\u093f\u0f74\u1161\u11a8\u1100\u212a\u037e")
    + list("\\uU e\u00e9\ud83d\ude00\udb40\udd00\u200b\u202e\n\t\x7f\u2028 \u3000\u00a0")
    # right to left (Hebrew, its points and punctuation, Arabic, Arabic-Indic and
    # Persian digits) and the scripts that look like Latin
    + list("\u05d0\u05e9\u05b8\u05f3\u05be\u0627\u064e\u0661\u06f1\u200f\u061c1")
    + list("a\u0430\u0410\u0414\u03b1\u03bf\u03a9\uff41\u0585\u13aa")
)
# a list joined, not st.text: st.text merges the alphabets and the tricky ones drown
ANY_TEXT = st.lists(st.one_of(TRICKY, st.characters(codec=None)), max_size=40).map("".join)


def drawn_well(shown: str) -> None:
    """What a reader is shown: nothing invisible, nothing that composes or
    reorders (NFC), no mark without a letter, never more than three on one."""
    from d2.core._invisible import invisible

    assert not any(invisible(c) for c in shown if c != " ")
    assert unicodedata.is_normalized("NFC", shown)
    run, base = 0, False
    for char in shown:
        if unicodedata.category(char).startswith("M"):
            run += 1
            assert base and run <= 3 and unicodedata.combining(char) != 1
        else:
            run, base = 0, unicodedata.category(char)[0] in "LN"


@given(text=ANY_TEXT)
def test_two_different_texts_are_never_shown_alike(text: str) -> None:
    shown = visible_text(text)
    assert unshown(shown) == text  # reversible: different texts, different shown text
    drawn_well(shown)


@given(first=ANY_TEXT, second=ANY_TEXT)
def test_two_different_arguments_are_never_shown_alike(first: str, second: str) -> None:
    one, two = shown_json({"to": first}), shown_json({"to": second})
    assert (one == two) == (first == second)
    drawn_well(one.replace("\n", " "))


def test_every_default_ignorable_or_blank_code_point_is_escaped() -> None:
    # Over every code point: a character Unicode calls default-ignorable (the
    # table of DerivedCoreProperties.txt), or whose name says it draws nothing, is
    # never shown as itself.
    from d2.core._invisible import DEFAULT_IGNORABLE

    words = (
        "HANGUL FILLER",
        "SEONG FILLER",
        "SCRIPT FILLER",
        "VARIATION SELECTOR",
        "ZERO WIDTH",
        "INVISIBLE",
        "PATTERN BLANK",
        "NULL NOTEHEAD",
    )  # not a "GAP FILLER": a punctuation mark that draws
    ignorable = {c for first, last in DEFAULT_IGNORABLE for c in range(first, last + 1)}
    for code in range(0x110000):
        name = unicodedata.name(chr(code), "")
        if code in ignorable or any(word in name for word in words):
            assert visible_text(chr(code)) != chr(code), f"U+{code:04X} {name}"
    # the table agrees with the runtime's Unicode where a category decides it
    for code in ignorable:
        assert unicodedata.category(chr(code)) in {"Cf", "Cn", "Mn", "Lo"}
    for name in ("COMBINING GRAPHEME JOINER", "HANGUL FILLER", "MONGOLIAN VOWEL SEPARATOR"):
        assert ord(unicodedata.lookup(name)) in ignorable


# -- the ninth review: a second spelling of the requester's id ----------------------

FULLWIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
ALIASES = [
    "AGENT-7",
    "Agent-7",
    "agent-7".translate(FULLWIDTH),  # fullwidth forms (NFKC maps them back)
    "AGENT-7".translate(FULLWIDTH),
    "agent\u200b-7",  # a zero-width space (default-ignorable)
    "agent-7\ufe0f",
]


@pytest.mark.parametrize("alias", ALIASES, ids=ascii)
async def test_a_second_spelling_of_the_requester_never_decides_their_request(
    configure: Callable[..., PolicyManager], alias: str
) -> None:
    # The ninth review: "AGENT-7" (an LDAP login typed in capitals, another claim
    # of one token) approved agent-7's refund of 9999, and the call ran.
    configure(REFUND, LEAD, CFO, metadata={"name": "refund-desk"})
    desk = ApprovalDesk.of_instance()
    request = hold()
    assert await desk.pending(alias, ["finance_lead"]) == []
    assert await desk.lookup(request.id, alias, ["finance_lead"]) is None
    assert not could_decide(request, alias, ["finance_lead"])
    for verdict in (True, False):
        with pytest.raises(PermissionDeniedError) as info:
            await desk.decide(request.id, verdict, alias, ["finance_lead"])
        assert info.value.reason == "approval_not_permitted"
    set_user(alias, roles=["finance_lead"])  # approve() as the current user: the same rule
    assert pending_approvals() == []
    for decide in (approve, reject):
        with pytest.raises(PermissionDeniedError) as info:
            decide(request.id)
        assert info.value.reason == "approval_not_permitted"
    set_user("agent-7", roles=["agent"])
    with pytest.raises(ApprovalRequiredError):
        refund("o_1", 250)  # still waiting: nobody decided it
    await desk.decide(request.id, True, "dana", ["finance_lead"])  # another person may
    assert refund("o_1", 250) == "refunded 250 on o_1"


@given(
    user=st.text(min_size=1, max_size=20) | st.from_regex(r"[A-Za-z0-9._@-]{1,20}", fullmatch=True),
    data=st.data(),
)
def test_every_spelling_of_one_id_is_one_person(user: str, data: st.DataObject) -> None:
    spellings = [
        lambda u: u.translate(FULLWIDTH),  # fullwidth forms
        lambda u: "\u200b".join(u),  # zero-width spaces between the letters
        lambda u: u + "\u034f\ufe0f",
        lambda u: unicodedata.normalize("NFKD", u),  # decomposed, compatibility forms
    ]
    if user.isascii():  # a change of case; beyond ASCII, case maps are not all reversible
        spellings += [str.upper, str.lower, str.swapcase]
    alias = data.draw(st.sampled_from(spellings))(user)
    assert same_person(alias, user) and same_person(user, alias)
    assert not same_person(user + "x", user + "y")


@pytest.mark.parametrize("blank", ["", " ", "\u200b", "\u3000\t", "\u2060\ufe0f", "\u00a0"])
async def test_an_id_with_nothing_visible_is_no_approver(
    configure: Callable[..., PolicyManager], blank: str
) -> None:
    # an identity source that hands out an empty or invisible-only id must not let
    # that "person" decide: it cannot be told apart from the next such person
    configure(REFUND, LEAD, CFO, metadata={"name": "refund-desk"})
    desk = ApprovalDesk.of_instance()
    request = hold()
    assert await desk.pending(blank, ["finance_lead"]) == []
    assert not could_decide(request, blank, ["finance_lead"])
    for verdict in (True, False):
        with pytest.raises(PermissionDeniedError) as info:
            await desk.decide(request.id, verdict, blank, ["finance_lead"])
        assert info.value.reason == "no_user"
    if blank:  # "" is no user at all for set_user
        set_user(blank, roles=["finance_lead"])
        assert pending_approvals() == []
        with pytest.raises(PermissionDeniedError) as info:
            approve(request.id)
        assert info.value.reason == "no_user"
    await desk.decide(request.id, True, "dana", ["finance_lead"])  # still pending until now


@pytest.mark.parametrize(
    "alias", ["agent  7", " agent 7 ", "agent\t7", "agent\u30007", "AGENT \u00a07"]
)
async def test_runs_of_spaces_do_not_make_another_person(
    configure: Callable[..., PolicyManager], alias: str
) -> None:
    configure(REFUND, LEAD, CFO, metadata={"name": "refund-desk"})
    desk = ApprovalDesk.of_instance()
    request = hold(user="agent 7")
    assert same_person(alias, "agent 7")
    assert await desk.pending(alias, ["finance_lead"]) == []
    with pytest.raises(PermissionDeniedError) as info:
        await desk.decide(request.id, True, alias, ["finance_lead"])
    assert info.value.reason == "approval_not_permitted"


# -- the eleventh review: text that the text around it makes misleading --------------

DIRECTIONS = {"R", "AL", "AN"}


def directions(text: str) -> set[str]:
    return {unicodedata.bidirectional(c) for c in text}


def test_a_right_to_left_character_cannot_reorder_the_digits_after_it() -> None:
    # F2: one Hebrew punctuation mark (U+05F3 GERESH, drawn like an apostrophe;
    # U+05BE MAQAF, like a hyphen) made a terminal, chat or browser draw the digit
    # groups after it in another order: "1\u05be9999" drew like "19999\u05be".
    assert visible_text("DE44 \u05f3 2222 1111") == "DE44 \\u05f3 2222 1111"
    assert shown_json({"amount": "1\u05be9999"}) == '{\n  "amount": "1\\u05be9999"\n}'
    assert shown_json({"amount": "1\u05be9999"}) != shown_json({"amount": "19999\u05be"})
    # right-to-left letters beside a digit or a Latin letter, Arabic-Indic digits
    hebrew, arabic = "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627"
    assert visible_text(hebrew + " 12") == "\\u05e9\\u05dc\\u05d5\\u05dd 12"
    assert visible_text("dana " + hebrew) == "dana \\u05e9\\u05dc\\u05d5\\u05dd"
    assert visible_text("\u0661\u0662 \u0663\u0664") == "\\u0661\\u0662 \\u0663\\u0664"
    assert (
        visible_text(arabic + " \u0661")
        == visible_text(arabic).replace(arabic, "\\u0645\\u0631\\u062d\\u0628\\u0627") + " \\u0661"
    )
    # an escape is left to right: the right-to-left text beside it is escaped too
    assert visible_text("\u05d0\u200b\u05d1") == "\\u05d0\\u200b\\u05d1"
    assert visible_text("\u05d0\u202e\u05d1") == "\\u05d0\\u202e\\u05d1"
    # text only in a right-to-left script is kept: it reads in its own order
    assert visible_text(hebrew + " " + hebrew) == hebrew + " " + hebrew
    assert visible_text(arabic + "\u060c " + arabic) == arabic + "\u060c " + arabic
    assert visible_text("\u05e9\u05b8\u05c1") == "\u05e9\u05b8\u05c1"  # with its points
    assert shown_json({"\u05e9\u05dd": hebrew}) == '{\n  "\u05e9\u05dd": "' + hebrew + '"\n}'
    assert "\\u05e9" in shown_json({"name": hebrew})  # its key is Latin


@given(text=ANY_TEXT)
@example(text="1\u05be9999 \u0661")
def test_shown_text_never_mixes_directions(text: str) -> None:
    shown = visible_text(text)
    kinds = directions(shown)
    assert not (kinds & {"R", "AL"} and kinds & {"L", "EN", "AN"}), shown
    assert "AN" not in kinds
    if directions(text) & {"L", "EN", "AN"}:
        assert not kinds & DIRECTIONS
    as_json = shown_json({"to": text})  # "to" is left to right
    assert not directions(as_json) & DIRECTIONS
    assert not directions(shown_json([text])) & {"AN"}


def test_a_cyrillic_or_greek_letter_beside_latin_ones_is_escaped() -> None:
    # F5: "p\u0430ypal" (CYRILLIC SMALL LETTER A) and "\u0410\u0421ME-77" drew
    # exactly like "paypal" and "ACME-77".
    assert visible_text("p\u0430ypal.com") == "p\\u0430ypal.com"
    url = {"url": "https://p\u0430ypal.com/pay", "amount": 10}
    assert '"https://p\\u0430ypal.com/pay"' in shown_json(url)
    # the call's text holds Latin (its keys): a value wholly in Cyrillic is escaped
    assert shown_json({"payee": "\u0410\u0421ME-77"}) == ('{\n  "payee": "\\u0410\\u0421ME-77"\n}')
    assert visible_text("\u03bfmega") == "\\u03bfmega"  # GREEK SMALL LETTER OMICRON
    assert visible_text("\u0414\u03b1\u043d\u0430") == "\u0414\\u03b1\u043d\u0430"
    # one script alone is kept, and Latin letters beyond ASCII are Latin
    for word in (
        "\u0414\u0430\u043d\u0430",
        "\u03a9\u03bc\u03ad\u03b3\u03b1",
        "caf\u00e9",
        "\u0142\u00f3d\u017a",
    ):
        assert visible_text(word) == word
    # a fullwidth Latin letter draws like its ASCII letter: escaped as well (twelfth review)
    assert visible_text("\uff41\u0430") == "\\uff41\\u0430"
    # the other scripts with letters drawn like Latin ones: Armenian, Cherokee
    assert visible_text("g\u0585\u0585gle") == "g\\u0585\\u0585gle"  # ARMENIAN OH
    assert visible_text("\u13aaCME") == "\\u13aaCME"  # CHEROKEE LETTER GO
    assert visible_text("\u0585\u0585") == "\u0585\u0585"


@given(text=ANY_TEXT)
@example(text="p\u0430ypal \u0414\u03b1")
def test_shown_text_never_mixes_latin_with_cyrillic_or_greek(text: str) -> None:
    def scripts(value: str) -> set[str]:
        return {
            unicodedata.name(c, "").split(" ")[0]
            for c in value
            if unicodedata.category(c)[0] == "L" and not c.isascii()
        } | ({"LATIN"} if any(c.isascii() and c.isalpha() for c in value) else set())

    before, after = scripts(text), scripts(visible_text(text))
    if "LATIN" in before:
        assert not after & set(LOOK_ALIKE_SCRIPTS)
    assert len(after & set(LOOK_ALIKE_SCRIPTS)) <= 1
