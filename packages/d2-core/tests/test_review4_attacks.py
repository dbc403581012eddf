"""Attacks on the approval digest from the fourth hostile review (wt-review4).

Each test asserts the SAFE behaviour and fails on the code it was written against
(the attack succeeds there). Nothing here fixes anything.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import types
import zoneinfo
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
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
from d2.core.testing import policy_document

LEAD = {"role": "finance_lead", "permissions": []}
REFUSED = ("approval_required", "approval_unsupported")


def _configure(tool: str) -> None:
    grant = {"tool": tool, "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="review4")
    configure_rbac_sync(source=InMemorySource(doc))


def _held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


def _approved_then(
    approved: Any, other: Any, act: Callable[[Any], Any], refusable: bool = False
) -> list[Any]:
    """Approve ``tool(approved)``, then call ``tool(other)``: what the tool acted on
    (``act(argument)``), in order. Safe: ``other`` is refused and nothing ran.
    ``refusable``: since the sixth review such a value may be refused outright
    (``approval_unsupported``: a class that overrides its built-in's methods), which
    is safe too."""
    _configure("ops.run")
    acted: list[Any] = []

    @d2_guard("ops.run")
    def tool(arg: Any) -> str:
        acted.append(act(arg))
        return "done"

    set_user("agent-7", roles=["agent"])
    if refusable:
        try:
            tool(approved)
        except ApprovalRequiredError as err:
            _approve(err.request)
        except PermissionDeniedError as err:
            assert err.reason == "approval_unsupported", err.reason
            return acted
    else:
        _approve(_held(lambda: tool(approved)))
    try:
        tool(other)
    except PermissionDeniedError as err:
        assert err.reason in REFUSED
    return acted


# -- 1. a dict subclass: the digest reads its overridable keys()/__getitem__ ------------


class Headers(dict):  # type: ignore[type-arg]
    """A header map that lists only the headers an operator should see: ``keys()``
    leaves out ``x-internal-*`` ones (``items()``, what an HTTP client sends, does
    not). It overrides ``__iter__`` too (here a plain pass-through)."""

    def __iter__(self) -> Iterator[Any]:
        return dict.__iter__(self)

    def keys(self) -> Any:
        return [k for k in dict.keys(self) if not str(k).startswith("x-internal-")]


def test_a_dict_subclass_is_digested_with_the_entries_it_really_holds() -> None:
    """Attack: a subclass of a built-in type is digested as "its built-in value, read
    through the built-in's own methods, never an override" (``dict.copy``). But
    ``dict.copy`` of a dict subclass whose ``__iter__`` is overridden copies
    through the Python-level ``keys()`` and ``__getitem__``: entries ``keys()`` does
    not list are left out of the digest. The approval of sending
    ``Headers(accept="json")`` sends ``Headers(accept="json",
    x-internal-forward-to="evil")``. Safe: the second call (different entries) is
    refused."""
    approved = Headers({"accept": "json"})
    other = Headers({"accept": "json", "x-internal-forward-to": "https://evil"})
    acted = _approved_then(approved, other, lambda h: dict(dict.items(h)), refusable=True)
    assert {"accept": "json", "x-internal-forward-to": "https://evil"} not in acted


def test_a_werkzeug_multidict_is_digested_with_every_value_it_holds() -> None:
    """Attack (the same flaw, with a class users pass as it is): werkzeug's
    ``MultiDict`` (Flask's ``request.form`` and ``request.args``) is a dict subclass
    that keeps a list per key, overrides ``__iter__``, and answers ``md[key]`` with
    the first value. ``dict.copy`` copies it through that ``__getitem__``, so the
    digest sees one value per key: ``MultiDict([("to", "alice@corp")])`` and
    ``MultiDict([("to", "alice@corp"), ("to", "all@corp")])`` have one digest, and
    the approval of mailing Alice mails everyone (``getlist("to")``). Safe: the
    second call is refused."""
    datastructures = pytest.importorskip("werkzeug.datastructures")
    approved = datastructures.MultiDict([("to", "alice@corp")])
    other = datastructures.MultiDict([("to", "alice@corp"), ("to", "all@corp")])
    acted = _approved_then(approved, other, lambda form: form.getlist("to"), refusable=True)
    assert ["alice@corp", "all@corp"] not in acted


def test_the_approver_is_shown_every_value_of_a_multidict() -> None:
    """Attack (what the approver is shown): ``json_arguments`` shows a mapping
    through its own ``items()``; a werkzeug ``MultiDict`` answers with the first
    value of each key. The approver of ``send(MultiDict([("to", "alice@corp"),
    ("to", "all@corp")]))`` reads ``{"to": "alice@corp"}`` and approves a call
    that mails everyone. Safe: ``all@corp`` appears in what the approver is shown
    (or the call is refused as one that cannot be shown exactly)."""
    datastructures = pytest.importorskip("werkzeug.datastructures")
    _configure("ops.run")

    @d2_guard("ops.run")
    def tool(arg: Any) -> str:
        return "done"

    set_user("agent-7", roles=["agent"])
    form = datastructures.MultiDict([("to", "alice@corp"), ("to", "all@corp")])
    try:
        request = _held(lambda: tool(form))
    except PermissionDeniedError as err:  # refused outright: nothing misleading shown
        assert err.reason == "approval_unsupported"
        return
    assert "all@corp" in repr(request.arguments)


# -- 2. a plain dict: its order is not part of the call ------------------------------


def test_the_order_of_a_dict_the_tool_follows_is_part_of_the_call() -> None:
    """Attack: a plain dict is digested by sorted keys, but a dict is ordered and a
    tool may act in its order (``run_steps({"backup": ..., "wipe": ...})`` backs up,
    then wipes). ``{"backup": .., "wipe": ..}`` and ``{"wipe": .., "backup": ..}``
    have one digest: approving backup-then-wipe runs wipe-then-backup (an
    ``OrderedDict`` is digested in order; a plain dict, which the tool iterates
    exactly the same way, is not). Safe: the reordered call needs its own
    approval."""
    approved = {"backup": "pg_dump prod > /backup", "wipe": "dropdb prod"}
    other = {"wipe": "dropdb prod", "backup": "pg_dump prod > /backup"}
    acted = _approved_then(approved, other, lambda steps: list(steps))
    assert ["wipe", "backup"] not in acted


# -- 3. a ZoneInfo read from a file digests as the zone its key names -----------------


def _tokyo_file() -> Any:
    path = Path("/usr/share/zoneinfo/Asia/Tokyo")
    if path.exists():
        return path.open("rb")
    tzdata = pytest.importorskip("tzdata")
    return (Path(tzdata.__file__).parent / "zoneinfo" / "Asia" / "Tokyo").open("rb")


def test_a_zone_read_from_a_file_is_not_digested_as_the_zone_its_key_names() -> None:
    """Attack: ``_zone`` digests a ``ZoneInfo`` by its ``key`` and refuses one made by
    ``ZoneInfo.from_file`` only when it has no key; ``from_file(f, key="UTC")``
    accepts any key. A datetime at 12:00 in a zone read from Asia/Tokyo's file but
    keyed ``"UTC"`` digests like 12:00 UTC: the approval of a transfer scheduled at
    12:00 UTC runs one scheduled 9 hours earlier (``timestamp()`` differs). Safe:
    the second call is refused."""
    with _tokyo_file() as f:
        fake_utc = zoneinfo.ZoneInfo.from_file(f, key="UTC")
    approved = datetime(2027, 1, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo("UTC"))
    other = datetime(2027, 1, 1, 12, 0, tzinfo=fake_utc)
    assert approved.timestamp() != other.timestamp()  # two different instants
    acted = _approved_then(approved, other, lambda at: at.timestamp())
    assert other.timestamp() not in acted


# -- 4. two classes with one tag: module "a.b" + "C" and module "a" + "b.C" ----------


def _two_classes_one_tag(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    """``r4shop.refunds.Refund`` (class ``Refund`` of module ``r4shop.refunds``) and
    ``r4shop.refunds.Refund`` (class ``refunds.Refund`` of module ``r4shop``): each
    name leads to its own class, read as the digest reads it."""
    inner = types.ModuleType("r4shop.refunds")
    outer = types.ModuleType("r4shop")
    exec(
        textwrap.dedent(
            """
            class Refund:
                def __init__(self, amount):
                    self.amount = amount
                def run(self):
                    return f"refund {self.amount} to the customer"
            """
        ),
        inner.__dict__,
    )
    exec(
        textwrap.dedent(
            """
            class refunds:
                class Refund:
                    def __init__(self, amount):
                        self.amount = amount
                    def run(self):
                        return f"wire {self.amount} to the operator's account"
            """
        ),
        outer.__dict__,
    )
    monkeypatch.setitem(sys.modules, "r4shop", outer)
    monkeypatch.setitem(sys.modules, "r4shop.refunds", inner)
    return inner.Refund, outer.refunds.Refund


def test_two_classes_whose_module_and_qualname_join_alike_are_different_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: an instance is tagged ``object:{module}.{qualname}``. Module
    ``r4shop.refunds`` with class ``Refund`` and module ``r4shop`` with class
    ``refunds.Refund`` give the same tag, and ``_named`` accepts both (each name
    leads to its class). Instances with equal state of the two classes digest alike:
    the approval of ``pay(Refund(5))`` (refund the customer) runs the other class's
    ``run()`` (wire to the operator). Safe: the second call is refused."""
    harmless, harmful = _two_classes_one_tag(monkeypatch)
    acted = _approved_then(harmless(5), harmful(5), lambda order: order.run())
    assert "wire 5 to the operator's account" not in acted


# -- 5. denial of service: digesting a small value takes exponential time ------------

_DOS = """
import sys, time
from d2.core import (ApprovalRequiredError, InMemorySource, PermissionDeniedError,
    configure_rbac_sync, d2_guard, set_user)
from d2.core.testing import policy_document
grant = {{"tool": "ops.run", "approval": {{"approvers": ["finance_lead"]}}}}
doc = policy_document({{"role": "agent", "permissions": [grant]}},
    {{"role": "finance_lead", "permissions": []}}, name="review4")
configure_rbac_sync(source=InMemorySource(doc))

@d2_guard("ops.run")
def tool(arg):
    return "ran"

set_user("agent-7", roles=["agent"])
{build}
try:
    tool(value)
    print("ran")
except PermissionDeniedError as err:
    print(err.reason)
"""


def _decided_within(build: str, seconds: float) -> str | None:
    """Run a guarded call (that needs an approval) on the value ``build`` makes, in a
    child process: its decision (a reason, or "ran"), or None if none came within
    ``seconds`` (the child is killed)."""
    code = _DOS.format(build=textwrap.dedent(build))
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
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_small_nested_set_is_decided_promptly() -> None:
    """Attack: ``_in_order`` sorts a set's items by their canonical text, then
    canonicalises each item again: a set nested in a set (through frozensets, or
    tuples holding them) costs twice its contents per level, so the digest of a
    value of 40 nested one-item frozensets (a few kilobytes) runs for days,
    holding the GIL (a sync call blocks every thread; an async one the event loop).
    Depth 18 already takes ~10 s. Safe: the call is decided (held or refused)
    within seconds."""
    build = """
        value = frozenset({1})
        for _ in range(40):
            value = frozenset({value})
    """
    assert _decided_within(build, 20) in REFUSED


def test_a_small_value_sharing_tuples_is_decided_promptly() -> None:
    """Attack: only objects that can change are written as a reference when met
    again; a tuple is expanded every time. ``x = (x, x)`` 60 times is 60 small
    tuples, but the canonical form has 2**60 leaves: the digest never ends (and
    grows its memory without bound). Safe: the call is decided within seconds (a
    shared tuple as a reference, or a size limit that refuses it)."""
    build = """
        value = ()
        for _ in range(60):
            value = (value, value)
    """
    assert _decided_within(build, 20) in REFUSED


# -- 6. the lazy re-check: a generator-based coroutine is wrapped as a generator -------


@types.coroutine
def _legacy_wait(paths: list[str]) -> Any:
    """A generator-based coroutine (``types.coroutine``; asyncio's own ``sleep(0)``
    is one): awaitable, yet its type is ``GeneratorType``."""
    yield
    return list(paths)


def test_a_generator_based_coroutine_returned_by_a_tool_stays_awaitable() -> None:
    """Defect (availability) in the re-check of lazy results: a sync tool with input
    rules that returns a generator-based coroutine (``types.coroutine``) gets back
    ``_started_sync(...)``, a plain generator, which ``await`` refuses
    (``TypeError: object generator can't be used in 'await' expression``): the
    same tool without input rules works. Safe: the re-checked result is still
    awaitable and gives the tool's value (the re-check runs when it starts)."""
    grant = {"tool": "files.read", "conditions": {"input": {"paths": {"maxLength": 5}}}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, name="review4")
    configure_rbac_sync(source=InMemorySource(doc))

    @d2_guard("files.read")
    def read(paths: list[str]) -> Any:
        return _legacy_wait(paths)

    set_user("agent-7", roles=["agent"])

    async def main() -> Any:
        return await read(["report.txt"])

    assert asyncio.run(main()) == ["report.txt"]


# -- 7. a classmethod tool with an approval can never be approved -----------------------


class Payouts:
    """A service whose tool is a class method (``cls`` is part of the call)."""

    sent: list[int] = []  # noqa: RUF012 - the test's record

    @d2_guard("ops.payout")
    @classmethod
    def pay(cls, amount: int) -> str:
        cls.sent.append(amount)
        return "paid"


def test_a_classmethod_tool_can_be_approved() -> None:
    """Defect (availability): approvals digest a method's object with the call
    (``keep_self=True``); for a class method that is the class, and a class has no
    canonical form ("a class or module" is refused), so every call of a guarded
    class method that needs an approval is refused ``approval_unsupported`` and no
    approver is ever asked (docs/approvals.md says a method's object is part of the
    call, and lists class methods among guarded callables). Safe: the call is held,
    and once approved it runs (the class is told by the name that leads to it)."""
    _configure("ops.payout")
    set_user("agent-7", roles=["agent"])
    Payouts.sent.clear()
    _approve(_held(lambda: Payouts.pay(5)))
    assert Payouts.pay(5) == "paid"
    assert Payouts.sent == [5]
