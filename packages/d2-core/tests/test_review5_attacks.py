"""Attacks on the approval digest and the approver's view from the fifth hostile
review (wt-review5), against commit 55f7e29.

Each test asserts the SAFE behaviour and fails on the code it was written against
(the attack succeeds there). Nothing here fixes anything.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    configure_rbac_sync,
    d2_guard,
    pending_approvals,
    set_user,
)
from d2.core.testing import policy_document

LEAD = {"role": "finance_lead", "permissions": []}
REFUSED = ("approval_required", "approval_unsupported")


def _configure(tool: str) -> None:
    grant = {"tool": tool, "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="review5")
    configure_rbac_sync(source=InMemorySource(doc))


def _held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


def _shown_or_refused(*args: Any) -> ApprovalRequest | None:
    """The request an approver would be shown for ``tool(*args)`` (a tool that needs
    an approval), or None when the call is refused outright as one that cannot be
    approved (``approval_unsupported``: nothing misleading is shown)."""
    _configure("ops.send")

    @d2_guard("ops.send")
    def tool(*values: Any) -> str:
        return "sent"

    set_user("agent-7", roles=["agent"])
    try:
        return _held(lambda: tool(*args))
    except PermissionDeniedError as err:
        assert err.reason == "approval_unsupported", err.reason
        return None


# -- 1. an OrderedDict is digested (and shown) in its storage order, not its own -----


def _steps(*order: str) -> OrderedDict[str, str]:
    """Steps a runbook tool performs in the OrderedDict's order; built as
    backup-then-wipe, then reordered with ``move_to_end`` to ``order``."""
    steps: OrderedDict[str, str] = OrderedDict(
        [("backup", "snapshot db to s3"), ("wipe", "drop db")]
    )
    for name in order:
        steps.move_to_end(name)
    return steps


def test_an_ordered_dict_reordered_by_move_to_end_is_a_different_call() -> None:
    """Attack: the fourth review made a mapping's order part of the call ("a tool
    may act in that order; OrderedDict always was"), and reads every dict "from its
    own storage" (``dict.items(v)``). But an ``OrderedDict`` keeps its order in a
    linked list of its own: ``move_to_end`` (and ``popitem(last=False)`` + re-add
    patterns such as an LRU) reorders that list and leaves the underlying dict's
    storage order untouched. ``dict.items(od)`` yields insertion order, so
    ``OrderedDict(backup, wipe)`` and the same dict after ``move_to_end("backup")``
    (which the tool iterates as wipe, backup) have one digest: the approval of
    "back up, then wipe" runs "wipe, then back up". Safe: the reordered call is
    refused, and the tool never runs the steps in the order wipe, backup."""
    _configure("ops.runbook")
    ran: list[list[str]] = []

    @d2_guard("ops.runbook")
    def runbook(steps: OrderedDict[str, str]) -> str:
        ran.append(list(steps))  # the order the tool performs the steps in
        return "done"

    set_user("agent-7", roles=["agent"])
    approved = _steps()  # backup, then wipe
    assert list(approved) == ["backup", "wipe"]
    _approve(_held(lambda: runbook(approved)))

    reordered = _steps("backup")  # wipe, then backup
    assert list(reordered) == ["wipe", "backup"]
    try:
        runbook(reordered)
    except PermissionDeniedError as err:
        assert err.reason in REFUSED
    assert ["wipe", "backup"] not in ran, "the approval of backup-then-wipe ran wipe first"


def test_the_approver_is_shown_an_ordered_dict_in_the_order_the_tool_reads_it() -> None:
    """Attack (what the approver is shown): ``_shown_mapping`` reads a dict "from its
    own storage" too, so an ``OrderedDict`` reordered by ``move_to_end`` is shown in
    insertion order. The approver of ``runbook(steps)`` reads backup, then wipe; the
    tool performs wipe, then backup. Safe: the display lists the steps in the order
    the tool iterates them (or the call is refused outright)."""
    steps = _steps("backup")  # the tool reads: wipe, then backup
    request = _shown_or_refused(steps)
    if request is not None:
        # (since the sixth review an OrderedDict is shown with its class)
        shown = request.arguments["values"][0]["__value__"]
        assert list(shown) == list(steps), f"shown {list(shown)}, runs {list(steps)}"


def test_attributes_set_on_an_ordered_dict_are_part_of_the_call() -> None:
    """Attack: an exact ``OrderedDict``, unlike a ``dict``, has a ``__dict__``
    (``od.mode = "dry-run"`` works), and ``_EXACT`` digests it by its entries alone.
    A tool that reads an attribute its caller set on the mapping
    (``getattr(steps, "mode", "live")``) runs ``live`` under the approval of the
    ``dry-run`` call. Safe: the call without the attribute is refused, and the
    tool never runs ``live``."""
    _configure("ops.apply")
    modes: list[str] = []

    @d2_guard("ops.apply")
    def apply(steps: OrderedDict[str, str]) -> str:
        modes.append(getattr(steps, "mode", "live"))
        return "done"

    set_user("agent-7", roles=["agent"])
    dry: OrderedDict[str, str] = OrderedDict(wipe="drop db")
    dry.mode = "dry-run"  # type: ignore[attr-defined]
    _approve(_held(lambda: apply(dry)))
    try:
        apply(OrderedDict(wipe="drop db"))
    except PermissionDeniedError as err:
        assert err.reason in REFUSED
    assert "live" not in modes, "the approval of a dry run ran live"


# -- 2. the digest budget does not bound the work ------------------------------------

_BOUNDED = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from d2.core._canonical import NoCanonicalForm, canonical_arguments
{build}
start = time.perf_counter()
try:
    canonical_arguments({{"value": value}})
    print("digested")
except NoCanonicalForm as exc:  # (a MemoryError inside the digest becomes one too)
    print("out-of-memory" if str(exc).startswith("MemoryError") else "refused")
print(round(time.perf_counter() - start, 2))
"""


def _digest_outcome(build: str, seconds: float) -> tuple[str, float] | None:
    """Digest the value ``build`` makes in a child process limited to 1.5 GB of
    address space: ("digested", "refused" or "out-of-memory", seconds taken), or
    None when the child crashed or took longer than ``seconds`` (killed)."""
    code = _BOUNDED.format(build=textwrap.dedent(build))
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=seconds,
        )
    except subprocess.TimeoutExpired:
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        return None  # it died (or worse): the digest was not bounded
    return lines[0], float(lines[1])


@pytest.mark.parametrize(
    "build",
    [
        # a 1 MB integer listed 20,000 times: 160 KB of list, one budget unit each
        pytest.param("n = 1 << 8_000_000\nvalue = [n] * 20_000", id="one-big-int-repeated"),
        # a Decimal of a million digits listed 20,000 times (an atom: one unit)
        pytest.param(
            "import decimal\nd = decimal.Decimal('9' * 1_000_000)\nvalue = [d] * 20_000",
            id="one-long-decimal-repeated",
        ),
        # 1,023 emoji (one unit: under a KiB of characters, 12 KB of ASCII JSON)
        # listed a million times: 8 MB of list, a million units of two million
        pytest.param(
            "s = chr(0x1F600) * 1023\nvalue = [s] * 1_000_000",
            id="one-short-astral-string-repeated",
        ),
    ],
)
def test_a_value_cannot_make_the_digest_outgrow_its_budget(build: str) -> None:
    """Attack: the fourth review bounded the digest with a budget of two million
    "values, plus a unit per KiB of text", and writes every container met again as a
    reference. But immutable scalars are never references and are charged by count,
    not size: an ``int`` (``format(v, "x")``) or a ``Decimal``/``Fraction`` atom
    (``str(v)``) costs one unit however many megabytes its text is, and a string
    costs ``1 + len // 1024`` units by *characters*, while ``json.dumps`` writes an
    astral character as 12 ASCII bytes. A list repeating one such object (a few
    hundred kilobytes of memory) is written out in full at every meeting: 20,000
    meetings of a 1 MB int are 40 GB of canonical text, far under the budget, and the
    caller holds the GIL while the digest grows without bound (then dies of
    ``MemoryError``, or is killed by the OOM killer). Measured on the commit:
    ``[n] * 100`` with a 1 MB ``n`` gives 200 MB of canonical text in 0.8 s; the
    cases below exhaust a 1.5 GB address-space limit (``canonical_arguments`` then
    turns the ``MemoryError`` into a refusal: without a limit, the host swaps or is
    OOM-killed). Safe: the budget refuses the value (or it is digested) within
    1.5 GB of memory and 20 s."""
    outcome = _digest_outcome(build, 20)
    assert outcome is not None, "the digest died or ran out of time: the budget did not bound it"
    assert outcome[0] in ("refused", "digested"), "the digest ran out of memory under its budget"


# -- 3. what the approver is shown: the display cap hides a whole argument -----------


def test_an_argument_past_the_display_cap_is_never_approved_unseen() -> None:
    """Attack: what the approver is shown stops after 100,000 values; every further
    value, a whole argument included, is shown as ``<not shown: ...>``. The digest's
    budget is two million values, so the call is still approvable. An agent puts
    100,000 short items in an earlier argument (``notes``) and the harmful one after
    it: the approver of ``send(notes, to)`` reads ``"to": "<not shown: ...>"`` and
    approves a call whose recipient nobody saw. Safe: the recipient appears in what
    the approver is shown, or the call is refused outright (a call that cannot be
    shown whole is not approved)."""
    _configure("mail.send")

    @d2_guard("mail.send")
    def send(notes: list[str], to: str) -> str:
        return f"sent {len(notes)} notes to {to}"

    set_user("agent-7", roles=["agent"])
    notes = [f"n{i}" for i in range(100_000)]
    try:
        request = _held(lambda: send(notes, "attacker@evil.example"))
    except PermissionDeniedError as err:
        assert err.reason == "approval_unsupported"
        return
    assert request.arguments["to"] == "attacker@evil.example", request.arguments["to"]


# -- 4. what the approver is shown: state the digest reads and the display drops ----


class Transfer:
    """A transfer order of an app (a plain class with slots: no dataclass, no
    pydantic, no ``__repr__``): the digest accepts it (it reads both slots)."""

    __slots__ = ("amount", "to")

    def __init__(self, to: str, amount: int) -> None:
        self.to = to
        self.amount = amount


class Recipient(str):
    """An address that carries its blind-copy list as an attribute (a ``str``
    subclass with a ``__dict__``): the digest reads the text and the attribute."""

    bcc: list[str]


def _shown_text(request: ApprovalRequest) -> str:
    import json

    return json.dumps(request.arguments)


def test_the_approver_is_shown_the_state_of_a_plain_object_it_approves() -> None:
    """Attack: the digest reads every slot and ``__dict__`` entry of an app's plain
    object, but the approver is shown only its ``repr``: for a class without a
    ``__repr__`` that is ``<app.Transfer object at 0x7f...>``. The approver of
    ``pay(Transfer("attacker@evil.example", 1_000_000))`` sees neither payee nor
    amount, and two different transfers look the same. Safe: the state the digest
    ties the approval to (the payee) is in what the approver is shown, or the call
    is refused outright."""
    request = _shown_or_refused(Transfer("attacker@evil.example", 1_000_000))
    if request is not None:
        assert "attacker@evil.example" in _shown_text(request), request.arguments


@dataclasses.dataclass
class SignedTransfer:
    """A dataclass with an ``InitVar`` (used by ``__post_init__``, as dataclasses
    that derive state do): the digest reads the instance's whole ``__dict__``."""

    to: str
    amount: int
    signing_key: dataclasses.InitVar[str]

    def __post_init__(self, signing_key: str) -> None:
        self.signature = f"signed-by-{signing_key}"


def test_the_approver_is_shown_a_dataclass_that_has_an_init_var() -> None:
    """Attack: a dataclass is shown field by field with ``getattr(value, name)`` for
    every name in ``__dataclass_fields__``, which also lists ``InitVar`` (and
    ``ClassVar``) pseudo-fields. An ``InitVar`` without a default is not an
    attribute: ``getattr`` raises, and the whole value is shown as
    ``"<SignedTransfer>"``: the approver of ``pay(SignedTransfer("attacker@evil",
    1_000_000, ...))`` sees neither payee nor amount (the digest reads them all).
    Safe: the payee is in what the approver is shown, or the call is refused."""
    request = _shown_or_refused(SignedTransfer("attacker@evil.example", 1_000_000, "k1"))
    if request is not None:
        assert "attacker@evil.example" in _shown_text(request), request.arguments


class Mail(pydantic.BaseModel):
    """An outgoing mail; ``bcc`` is kept out of API responses and logs."""

    to: str
    bcc: list[str] = pydantic.Field(default_factory=list, exclude=True)


def test_the_approver_is_shown_a_pydantic_field_excluded_from_serialisation() -> None:
    """Attack: a pydantic model is shown as ``model_dump(mode="json")``, which
    leaves out fields declared ``Field(exclude=True)`` (kept out of API responses
    and logs), and private attributes; the digest reads them all, and the agent can
    still set such a field (``exclude`` governs output, not input). The approver of
    ``send(Mail(to="alice@corp", bcc=["all-staff@corp"]))`` reads
    ``{"to": "alice@corp"}``. Safe: the blind copy is in what the approver is
    shown, or the call is refused outright."""
    request = _shown_or_refused(Mail(to="alice@corp", bcc=["all-staff@corp"]))
    if request is not None:
        assert "all-staff@corp" in _shown_text(request), request.arguments


def test_the_approver_is_shown_the_attributes_of_a_builtin_subclass() -> None:
    """Attack: a subclass of a built-in type is digested as its built-in value plus
    its attributes (so ``bcc`` is part of the call), but shown as the built-in value
    alone (``str.__str__``): the approver of ``send(Recipient("alice@corp"))`` reads
    ``"alice@corp"`` while the tool also mails ``recipient.bcc``. Safe: the blind
    copy appears in what the approver is shown, or the call is refused outright."""
    to = Recipient("alice@corp")
    to.bcc = ["all-staff@corp"]
    request = _shown_or_refused(to)
    if request is not None:
        assert "all-staff@corp" in _shown_text(request), request.arguments


# -- 5. a hidden secret argument is recoverable from the call digest in the store ----

_GUESS = """
import json, sys
from pydantic import SecretStr
from d2.core.approval_data import call_digest
request, digest = json.loads(sys.stdin.read())
for i in range(10_000):
    pin = f"{i:04d}"
    arguments = {"door": request["arguments"]["door"], "pin": SecretStr(pin)}
    if call_digest(request["tool_id"], arguments, request["user_id"],
                   request["policy_version"]) == digest:
        print(pin)
        break
"""


def test_a_hidden_secret_cannot_be_recovered_from_the_stored_call_digest() -> None:
    """Attack: a pydantic secret (``SecretStr``) is never shown to the approver nor
    written in the request (``**********``), and the docs say it is "digested,
    never in the text". But the call digest is an unkeyed SHA-256 over public parts
    (tool id, the other arguments, user id, policy version: all in the request
    JSON) and a plain SHA-256 of the secret, and the store keeps that digest beside
    the request (Redis: the request hash's ``call`` field and the
    ``{app}:call:{digest}`` key; a store other apps may share). Anyone who can read
    the store recovers a low-entropy secret (a PIN, a one-time code, a password from
    a word list) offline with D2 itself: 10,000 guesses take well under a second.
    Safe: a process without the app's secrets, given the request and its stored
    digest, cannot find the PIN among all 10,000."""
    import json

    from d2.core.evaluate import evaluator_for

    _configure("doors.unlock")

    @d2_guard("doors.unlock")
    def unlock(door: str, pin: Any) -> str:
        return "open"

    set_user("agent-7", roles=["agent"])
    request = _held(lambda: unlock("vault", pydantic.SecretStr("4821")))
    assert "4821" not in request.to_json()  # hidden from the approver, as documented
    ev = evaluator_for("default")
    store: Any = ev.store if ev.store is not None else ev.private_store  # in-process
    stored = [digest for (_, digest), rid in store._calls.items() if rid == request.id]
    assert len(stored) == 1, "the store keeps the call's digest beside its request"

    done = subprocess.run(
        [sys.executable, "-c", _GUESS],
        input=json.dumps([json.loads(request.to_json()), stored[0]]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() != "4821", "the PIN was recovered from the stored call digest"


# -- 6. the approver's view: repr() of a value whose digest is small -----------------

_SHOWN = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from d2.core import (ApprovalRequiredError, InMemorySource, PermissionDeniedError,
    configure_rbac_sync, d2_guard, set_user)
from d2.core.testing import policy_document
grant = {{"tool": "ops.run", "approval": {{"approvers": ["finance_lead"]}}}}
doc = policy_document({{"role": "agent", "permissions": [grant]}},
    {{"role": "finance_lead", "permissions": []}}, name="review5")
configure_rbac_sync(source=InMemorySource(doc))

@d2_guard("ops.run")
def tool(arg):
    return "ran"

class Batch:  # an app's class with the usual hand-written __repr__
    def __init__(self, items):
        self.items = items
    def __repr__(self):
        return f"Batch({{self.items!r}})"

set_user("agent-7", roles=["agent"])
{build}
try:
    tool(value)
    print("ran")
except ApprovalRequiredError:
    print("held")
except PermissionDeniedError as err:
    print(err.reason)
"""


def _held_within(build: str, seconds: float) -> str | None:
    """Call a guarded tool that needs an approval with the value ``build`` makes, in a
    child process (1.5 GB of address space): its outcome ("held", a refusal reason,
    or "ran"), or None when it crashed or none came within ``seconds`` (killed)."""
    code = _SHOWN.format(build=textwrap.dedent(build))
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=seconds,
        )
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.mark.parametrize(
    "build",
    [
        # a mapping key (any non-str key is shown by its repr): 30 levels of a
        # frozenset of two tuples sharing the level below (hashes are cached: cheap;
        # 62 deep, under the digest's limit of 64)
        pytest.param(
            """
            key = frozenset({0})
            for _ in range(30):
                key = frozenset({(key, 0), (key, 1)})
            value = {key: "x"}
            """,
            id="a-mapping-key",
        ),
        # an object of an app's class shown by its repr: 40 lists sharing the one below
        pytest.param(
            """
            items = ["x"]
            for _ in range(40):
                items = [items, items]
            value = Batch(items)
            """,
            id="an-object-s-repr",
        ),
    ],
)
def test_a_value_with_a_small_digest_is_shown_to_the_approver_promptly(build: str) -> None:
    """Attack: the fourth review bounded the digest (a container met again is a
    reference) and the approver's view (100,000 values). But the view falls back
    to ``repr()``, which has no such bound, for every mapping key when one key is
    not a string (``_shown_key``: ``repr(key)``, cut to 200 characters only after
    it is built) and for every object that is not a list, tuple, mapping, set,
    bytes, pydantic model or dataclass (an app's class with the usual
    ``__repr__`` that shows its attributes). A value of 30 or 40 levels that share
    the level below is a few kilobytes and digests in milliseconds, and its ``repr``
    has 2**30 or 2**40 parts: the guarded call never returns (holding the GIL) or dies of memory.
    Measured on the commit at 22 levels: digest 4.5 ms, the approver's view 8 s
    (mapping key) and 1.3 s (object); each level doubles it. Safe: the call is held
    for approval (or refused) within 20 s and 1.5 GB."""
    assert _held_within(build, 20) in ("held", "approval_unsupported")


# -- 7. a shared store sorts the keys of what the approver is shown ------------------


def test_an_approver_reading_a_shared_store_sees_a_dict_in_the_order_the_tool_reads_it(
    redis_url: str,
) -> None:
    """Attack: since the fourth review a dict is digested in its own order ("a tool
    may act in that order"): ``runbook({"wipe": ..., "backup": ...})`` and
    ``runbook({"backup": ..., "wipe": ...})`` are different calls. But a shared
    store keeps the request as ``ApprovalRequest.to_json()``, which writes the
    shown arguments with ``sort_keys=True``: the approver who lists the pending
    requests (``pending_approvals()``, from Redis), and the one the app is handed
    (``ApprovalRequiredError.request``, read back from Redis), read backup, then
    wipe, for the call that wipes first, and approve exactly that call. Safe: the approver reads
    the steps in the order the tool performs them."""
    grant = {"tool": "ops.runbook", "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="review5-order")
    configure_rbac_sync(source=InMemorySource(doc), store=redis_url)

    @d2_guard("ops.runbook")
    def runbook(steps: dict[str, str]) -> str:
        return "done"

    set_user("agent-7", roles=["agent"])
    steps = {"wipe": "drop db", "backup": "snapshot db to s3"}  # wipe first
    held = _held(lambda: runbook(steps))  # the request handed to the approver
    set_user("dana", roles=["finance_lead"])
    pending = [r for r in pending_approvals() if r.id == held.id]  # or listed
    assert len(pending) == 1
    for request in (held, pending[0]):
        shown = list(request.arguments["steps"])
        assert shown == ["wipe", "backup"], f"the approver reads {shown}; the tool wipes first"


_LOGGED = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from d2.core import InMemorySource, configure_rbac_sync, d2_guard, set_user
from d2.core.testing import policy_document
doc = policy_document({"role": "agent", "permissions": ["ops.run"]}, name="review5")
configure_rbac_sync(source=InMemorySource(doc), decision_log=lambda record: None,
                    decision_log_arguments=True)

@d2_guard("ops.run")
def tool(arg):
    return "ran"

class Batch:  # an app's class with the usual hand-written __repr__
    def __init__(self, items):
        self.items = items
    def __repr__(self):
        return f"Batch({self.items!r})"

items = ["x"]
for _ in range(40):
    items = [items, items]
set_user("agent-7", roles=["agent"])
print(tool(Batch(items)))
"""


def test_a_logged_call_of_a_tool_without_approvals_returns_promptly() -> None:
    """Attack (the same unbounded ``repr``, with no approval and no digest budget in
    front of it): with ``decision_log_arguments=True`` every guarded call is shown
    with ``json_arguments`` on the caller's thread when its decision is queued. An
    allowed call of a plain tool (no approval, no input rule) whose argument is an
    app object with a hand-written ``__repr__`` over 40 levels of shared lists
    never returns. Safe: the call returns within 20 s (and 1.5 GB)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOGGED],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the guarded call did not return within 20 s")
    assert done.stdout.strip() == "ran", done.stderr[-2000:]
