"""The twelfth hostile review: a function's defaults and a partial's arguments,
replaced after the guard wrapped it.

Python reads ``__defaults__``, ``__kwdefaults__`` and a partial's ``args`` and
``keywords`` at each call. The guard read them once, when it wrapped the function:
app code that changed them later (a settings tool, a hot reload, a test helper left
in) had the approver shown, and input rules judge, the old value while the call ran
with the new one. Each test asserts the safe behaviour (what is judged and shown is
what runs), for a plain function, keyword-only defaults, a partial's keywords and
its positional arguments, sync and async; each failed before the fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
from d2.core._functions import Arguments
from d2.core.testing import policy_document

GOOD, BAD = "supplier-iban", "attacker-iban"

# A tool whose payee comes from a default (or a partial), and how app code changes
# that default after the guard wrapped it: (the callable to guard, the change).
Case = tuple[Callable[..., Any], Callable[[], None]]


def _case(kind: str, is_async: bool, ran: list[tuple[int, str]]) -> Case:
    if is_async:

        async def positional(amount: int, to: str = GOOD) -> str:
            ran.append((amount, to))
            return to

        async def keyword_only(amount: int, *, to: str = GOOD) -> str:
            ran.append((amount, to))
            return to

        async def payee_first(to: str, amount: int) -> str:
            ran.append((amount, to))
            return to
    else:

        def positional(amount: int, to: str = GOOD) -> str:
            ran.append((amount, to))
            return to

        def keyword_only(amount: int, *, to: str = GOOD) -> str:
            ran.append((amount, to))
            return to

        def payee_first(to: str, amount: int) -> str:
            ran.append((amount, to))
            return to

    if kind == "__defaults__":

        def change() -> None:
            positional.__defaults__ = (BAD,)

        return positional, change
    if kind == "__kwdefaults__":

        def change() -> None:
            keyword_only.__kwdefaults__ = {"to": BAD}

        return keyword_only, change
    if kind == "__kwdefaults__ edited":

        def change() -> None:
            kwdefaults = keyword_only.__kwdefaults__
            assert kwdefaults is not None
            kwdefaults["to"] = BAD  # the same dict, edited

        return keyword_only, change
    if kind == "partial keywords":
        keywords = functools.partial(positional, to=GOOD)

        def change() -> None:
            keywords.keywords["to"] = BAD  # the partial's own dict, edited

        return keywords, change
    assert kind == "partial args"
    leading = functools.partial(payee_first, GOOD)

    def change() -> None:
        leading.__setstate__((payee_first, (BAD,), {}, None))

    return leading, change


KINDS = [
    "__defaults__",
    "__kwdefaults__",
    "__kwdefaults__ edited",
    "partial keywords",
    "partial args",
]


def _configure() -> None:
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {"tool": "pay", "approval": {"approvers": ["lead"]}},
                {"tool": "wire", "conditions": {"input": {"to": {"in": [GOOD]}}}},
            ],
        },
        {"role": "lead", "permissions": []},
        name="review12",
    )
    configure_rbac_sync(source=InMemorySource(doc))
    set_user("agent-7", roles=["agent"])


async def _call(tool: Callable[..., Any], is_async: bool, *args: Any) -> Any:
    return await tool(*args) if is_async else tool(*args)


async def _held(tool: Callable[..., Any], is_async: bool, *args: Any) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        await _call(tool, is_async, *args)
    request = info.value.request
    assert request is not None
    return request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", KINDS)
async def test_the_approver_is_shown_the_default_the_call_runs_with(
    kind: str, is_async: bool
) -> None:
    _configure()
    ran: list[tuple[int, str]] = []
    fn, change = _case(kind, is_async, ran)
    pay = d2_guard("pay")(fn)
    change()  # after the guard wrapped it
    request = await _held(pay, is_async, 5000)
    assert request.arguments["to"] == BAD
    _approve(request)
    assert await _call(pay, is_async, 5000) == BAD
    assert ran == [(5000, BAD)]  # the call the approver was shown


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_default_changed_after_the_approval_needs_a_new_one(
    kind: str, is_async: bool
) -> None:
    _configure()
    ran: list[tuple[int, str]] = []
    fn, change = _case(kind, is_async, ran)
    pay = d2_guard("pay")(fn)
    request = await _held(pay, is_async, 5000)
    assert request.arguments["to"] == GOOD
    _approve(request)
    change()  # between the approval and the approved call
    again = await _held(pay, is_async, 5000)
    assert again.id != request.id and again.arguments["to"] == BAD
    assert ran == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", KINDS)
async def test_an_input_rule_judges_the_default_the_call_runs_with(
    kind: str, is_async: bool
) -> None:
    _configure()
    ran: list[tuple[int, str]] = []
    fn, change = _case(kind, is_async, ran)
    wire = d2_guard("wire")(fn)
    assert await _call(wire, is_async, 100) == GOOD  # judged (and its reading kept) first
    change()
    with pytest.raises(PermissionDeniedError) as info:
        await _call(wire, is_async, 5000)
    assert info.value.reason == "input_validation"
    assert ran == [(100, GOOD)]


def test_an_equal_value_of_another_type_is_a_change() -> None:
    # compared by identity: the policy tells True from 1, so must the binding
    def pay(amount: int, flag: object = 1) -> None:
        pass

    keywords = functools.partial(pay, flag=1)
    arguments = Arguments(keywords)
    assert arguments.value("flag", (5,), {}, None) == 1
    keywords.keywords["flag"] = True
    assert arguments.current().value("flag", (5,), {}, None) is True


def test_a_binding_is_made_again_only_when_something_changed() -> None:
    def pay(amount: int, to: str = GOOD, *, memo: str = "") -> None:
        pass

    for fn in (pay, functools.partial(pay, to=GOOD)):
        arguments = Arguments(fn)
        assert arguments.current() is arguments and arguments.current() is arguments
    pay.__defaults__ = (BAD,)
    arguments = Arguments(pay)
    assert arguments.current() is arguments
    pay.__code__ = (lambda amount, to=GOOD, *, memo="": None).__code__
    fresh = arguments.current()
    assert fresh is not arguments and fresh.current() is fresh  # kept, not made each time
    assert arguments.current() is fresh
