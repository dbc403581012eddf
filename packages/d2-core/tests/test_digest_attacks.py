"""Attacks on the approval digest and on arguments read after the check, from the
third hostile review (wt-review3). Each test asserts the SAFE behaviour and failed on
the code it was written against; docs/security.md describes each defence."""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import types
from collections.abc import AsyncIterator, Callable, Iterator
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


def _configure(tool: str) -> None:
    grant = {"tool": tool, "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="review3")
    configure_rbac_sync(source=InMemorySource(doc))


def _held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


def _approved_then(approved: Any, other: Any) -> list[Any]:
    """Approve ``send(approved)``, then call ``send(other)`` (a different call):
    what the tool acted on, in order. Safe: ``other`` is refused (it needs its own
    approval, or cannot be approved at all) and the list stays empty."""
    _configure("mail.send")
    acted: list[Any] = []

    @d2_guard("mail.send")
    def send(to: Any) -> str:
        acted.append(to.target if hasattr(to, "target") else to)
        return "sent"

    set_user("agent-7", roles=["agent"])
    _approve(_held(lambda: send(approved)))
    try:
        send(other)
    except PermissionDeniedError as err:
        assert err.reason in ("approval_required", "approval_unsupported")
    return acted


# -- 1. digests: two different calls, one digest ----------------------------------------


class _ShadowedDict:
    """A class attribute named ``__dict__`` (here a property) shadows the instance
    dictionary for ``object.__getattribute__(value, "__dict__")``; attribute access
    still reads the real one."""

    __dict__ = property(lambda self: {})  # type: ignore[assignment]

    def __init__(self, target: str) -> None:
        self.target = target


def test_a_class_level_dict_attribute_does_not_hide_the_instance_state() -> None:
    """Attack: ``_state`` reads the instance dictionary with
    ``object.__getattribute__(value, "__dict__")``, which a class attribute named
    ``__dict__`` (a property returning ``{}``) answers instead. Every instance digests
    as ``{}``: the approval of ``send(target="boss@corp")`` sends to anyone. Safe
    (since the eighth review): such a value is refused outright, as one whose
    attributes the interpreter's own descriptor cannot reach; the tool never runs
    (reading them another way, ``object.__getstate__``, ran the app's code)."""
    _configure("mail.send")
    acted: list[Any] = []

    @d2_guard("mail.send")
    def send(to: Any) -> str:
        acted.append(to.target)
        return "sent"

    set_user("agent-7", roles=["agent"])
    for target in ("boss@corp", "all@corp"):
        with pytest.raises(PermissionDeniedError) as info:
            send(_ShadowedDict(target))
        assert info.value.reason == "approval_unsupported"
    assert acted == []


class Mode(enum.Enum):
    SAFE = 1


class _PosingAsEnum:
    """Says it is a ``Mode`` through ``__class__``: ``isinstance(x, enum.Enum)`` is
    True, so ``_canon`` digests it as an enum member (its ``_name_`` and ``_value_``
    only)."""

    __class__ = property(lambda self: Mode)  # type: ignore[assignment]

    def __init__(self, target: str) -> None:
        self.target = target
        self._name_ = "SAFE"
        self._value_ = 1


def test_an_object_posing_as_an_enum_member_digests_its_whole_state() -> None:
    """Attack: ``_canon`` tests ``isinstance(value, enum.Enum)``, which honours a
    ``__class__`` property: any object that claims an enum class is digested by its
    ``_name_``/``_value_`` attributes, the rest of its state ignored."""
    acted = _approved_then(_PosingAsEnum("boss@corp"), _PosingAsEnum("all@corp"))
    assert "all@corp" not in acted


class _EqualToList(type):
    """A metaclass whose classes compare and hash equal to ``list``."""

    def __eq__(cls, other: object) -> bool:
        return other is list or type.__eq__(cls, other)

    def __hash__(cls) -> int:
        return hash(list)


class _ListLookalike(metaclass=_EqualToList):
    def __init__(self, target: str) -> None:
        self.target = target

    def __iter__(self) -> Any:
        return iter(())


def test_a_class_equal_to_a_builtin_type_is_not_digested_as_that_type() -> None:
    """Attack: ``_EXACT.get(type(value))`` (and ``base not in _BUILTIN_VALUE``,
    ``factory not in _EXACT``) look types up by ``==`` and ``hash``, which a metaclass
    defines: a class equal to ``list`` is digested by iterating it, as ``[]``, its
    state ignored (and the same as a real empty list)."""
    acted = _approved_then(_ListLookalike("boss@corp"), _ListLookalike("all@corp"))
    assert "all@corp" not in acted


def _in_euros(self: Any) -> None:
    self.currency = "EUR"  # some state of its own (an object holding none is refused)


def _limit_class(limit: int) -> type:
    return type(
        "Limit",
        (),
        {"max_refund": limit, "target": f"refund up to {limit}", "__init__": _in_euros},
    )


# The class the name ``<this module>.Limit`` leads to (the approved call needs one;
# a class its name does not lead to has no canonical form).
Limit = _limit_class(10)


def test_two_classes_of_one_name_are_different_types() -> None:
    """Attack: an instance is tagged ``object:<module>.<qualname>`` only. Two classes
    made with the same name (a factory, ``type()``, a reloaded module) but different
    class attributes digest the same, so the approval of a call with one runs the
    call with the other (the tool reads ``arg.max_refund``)."""
    acted = _approved_then(Limit(), _limit_class(10**9)())
    assert "refund up to 1000000000" not in acted


def test_nans_of_opposite_sign_are_different_calls() -> None:
    """Attack: a non-finite float is tagged by ``repr``, which is ``nan`` for both
    signs; ``math.copysign(1, x)`` (and ``struct.pack``) tell them apart. (The digest
    keeps Decimal NaN payloads apart, but not a float NaN's sign.)"""
    acted = _approved_then(float("nan"), -float("nan"))
    assert not acted  # -nan was never approved


def test_attributes_of_a_standard_library_value_are_part_of_the_call() -> None:
    """Attack: ``IPv4Network`` (also ``IPv6Network`` and the interfaces) has a
    ``__dict__``, but is digested by ``str()`` only: attributes an app sets on it,
    and the cached properties (``broadcast_address``), are ignored."""
    approved = ipaddress.IPv4Network("10.0.0.0/8")
    other = ipaddress.IPv4Network("10.0.0.0/8")
    other.target = "all@corp"  # type: ignore[attr-defined]
    acted = _approved_then(approved, other)
    assert "all@corp" not in acted


def test_shared_references_are_part_of_the_call() -> None:
    """Attack: the digest reads values, not which arguments are one object: ``move(a,
    a)`` digests like ``move(a, copy(a))``, but a tool that empties ``src`` and then
    sends ``dst`` acts differently on the two."""
    _configure("files.move")
    sent: list[list[str]] = []

    @d2_guard("files.move")
    def move(src: list[str], dst: list[str]) -> str:
        src.clear()
        sent.append(list(dst))
        return "moved"

    set_user("agent-7", roles=["agent"])
    one = ["a.txt"]
    _approve(_held(lambda: move(["a.txt"], ["a.txt"])))
    try:
        move(one, one)
    except PermissionDeniedError as err:
        assert err.reason in ("approval_required", "approval_unsupported")
    assert sent in ([], [["a.txt"]])  # never the call nobody approved


# -- 2. arguments read after the check: a generator tool's body -------------------------


def test_a_generator_tool_runs_on_the_arguments_that_were_approved() -> None:
    """Attack: for a generator tool the guard admits the call (digest checked again
    by ``_verify``) when the generator is made, but the body reads the arguments
    when it is consumed, any time later. A list changed in between (by the caller or
    another task sharing it) exports ``secrets.txt`` under the approval of exporting
    ``report.txt``; no check runs when the body starts."""
    _configure("files.export")
    exported: list[str] = []

    @d2_guard("files.export")
    def export(paths: list[str]) -> Any:
        for path in paths:
            exported.append(path)
            yield path

    set_user("agent-7", roles=["agent"])
    _approve(_held(lambda: export(["report.txt"])))
    paths = ["report.txt"]
    stream = export(paths)
    paths[0] = "secrets.txt"  # after the check, before the body reads it
    try:
        list(stream)
    except PermissionDeniedError as err:
        assert err.reason in ("approval_required", "approval_unsupported", "input_validation")
    assert "secrets.txt" not in exported


def _guard_paths(tool: str, instance_name: str = "default") -> None:
    """``tool`` granted to agents while its ``paths`` holds no ``secrets.txt``."""
    grant = {
        "tool": tool,
        "conditions": {"input": {"paths": {"not_contains": "secrets.txt"}}},
    }
    doc = policy_document({"role": "agent", "permissions": [grant]}, name="review3")
    configure_rbac_sync(source=InMemorySource(doc), instance_name=instance_name)
    set_user("agent-7", roles=["agent"])


def test_a_generator_tool_runs_on_the_arguments_its_input_rules_passed() -> None:
    """The input-rule form of the attack above: the rules pass ``["report.txt"]`` when
    the generator is made; the list is changed before the body reads it."""
    _guard_paths("files.export")
    exported: list[str] = []

    @d2_guard("files.export")
    def export(paths: list[str]) -> Iterator[str]:
        for path in paths:
            exported.append(path)
            yield path

    paths = ["report.txt"]
    stream = export(paths)
    paths.append("secrets.txt")
    with pytest.raises(PermissionDeniedError) as info:
        next(stream)
    assert info.value.reason == "input_validation"
    assert "between the call and the start of its body" in str(info.value)
    assert exported == []
    unchanged = ["report.txt"]
    assert list(export(unchanged)) == ["report.txt"]  # an unchanged call runs


def test_an_async_generator_tool_runs_on_the_arguments_its_input_rules_passed() -> None:
    """An async generator tool is admitted when called (no store to ask): its body
    reads the arguments at the first ``anext()``, re-checked there. (An instance of
    its own: one that ever held a call for approval admits async generator tools
    when iteration starts instead.)"""
    _guard_paths("files.export", instance_name="async-export")
    exported: list[str] = []

    @d2_guard("files.export", instance_name="async-export")
    async def export(paths: list[str]) -> AsyncIterator[str]:
        for path in paths:
            exported.append(path)
            yield path

    async def main() -> list[str]:
        paths = ["report.txt"]
        stream = export(paths)
        paths.append("secrets.txt")
        with pytest.raises(PermissionDeniedError) as info:
            await anext(stream)
        assert info.value.reason == "input_validation"
        return [path async for path in export(["report.txt"])]

    assert asyncio.run(main()) == ["report.txt"]
    assert exported == ["report.txt"]


def test_a_sync_tool_returning_a_coroutine_runs_on_the_approved_arguments() -> None:
    """A sync tool that returns a coroutine (a sync wrapper around an async function):
    the coroutine reads the arguments when awaited, re-checked then."""
    _configure("mail.send")
    acted: list[list[str]] = []

    async def deliver(to: list[str]) -> str:
        acted.append(list(to))
        return "sent"

    @d2_guard("mail.send")
    def send(to: list[str]) -> Any:
        return deliver(to)

    set_user("agent-7", roles=["agent"])
    _approve(_held(lambda: send(["boss@corp"])))
    to = ["boss@corp"]
    pending = send(to)
    to[0] = "all@corp"
    with pytest.raises(PermissionDeniedError) as info:
        asyncio.run(pending)
    assert info.value.reason == "approval_unsupported"
    assert acted == []


def test_a_plain_tool_returning_a_generator_runs_on_the_arguments_its_rules_passed() -> None:
    """A plain function (input rules, no approval) that returns a generator and an
    async one that returns a coroutine: judged again when they return it, checked
    when the body starts."""
    _guard_paths("files.export", instance_name="plain-export")
    exported: list[str] = []

    def each(paths: list[str]) -> Iterator[str]:
        for path in paths:
            exported.append(path)
            yield path

    async def deliver(paths: list[str]) -> list[str]:
        exported.extend(paths)
        return paths

    @d2_guard("files.export", instance_name="plain-export")
    def export(paths: list[str]) -> Iterator[str]:
        return each(paths)

    @d2_guard("files.export", instance_name="plain-export")
    async def export_later(paths: list[str]) -> Any:
        return deliver(paths)

    paths = ["report.txt"]
    stream = export(paths)
    paths.append("secrets.txt")
    with pytest.raises(PermissionDeniedError, match="start of its body"):
        next(stream)

    async def main() -> Any:
        later = ["report.txt"]
        pending = await export_later(later)
        later.append("secrets.txt")
        return await pending

    with pytest.raises(PermissionDeniedError, match="start of its body"):
        asyncio.run(main())
    assert exported == []
    assert list(export(["report.txt"])) == ["report.txt"]


def test_a_refusal_when_the_body_starts_streams_the_on_deny_fallback() -> None:
    """With ``on_deny``, a call refused when its body starts streams the fallback, as
    a call refused when it is made does."""
    _guard_paths("files.export")

    @d2_guard("files.export", on_deny=["<refused>"])
    def export(paths: list[str]) -> Iterator[str]:
        yield from paths

    paths = ["report.txt"]
    stream = export(paths)
    paths.append("secrets.txt")
    assert list(stream) == ["<refused>"]


def test_a_generator_tool_without_input_rules_or_approvals_is_not_wrapped() -> None:
    """The check when the body starts costs nothing for tools whose arguments decide
    nothing: their generator is the tool's own."""
    doc = policy_document({"role": "agent", "permissions": ["files.export"]})
    configure_rbac_sync(source=InMemorySource(doc))
    set_user("agent-7", roles=["agent"])

    @d2_guard("files.export")
    def export(paths: list[str]) -> Iterator[str]:
        yield from paths

    stream = export(["a"])
    assert isinstance(stream, types.GeneratorType)
    assert stream.gi_code is export.__wrapped__.__code__  # type: ignore[attr-defined]


def test_a_rechecked_generator_still_takes_send_throw_and_close() -> None:
    """The wrapper that re-checks at the first step passes ``send``, ``throw`` and
    ``close`` (``asend``, ``athrow``, ``aclose``) on to the tool's own generator."""
    _guard_paths("files.echo", instance_name="echo")
    closed: list[str] = []

    @d2_guard("files.echo", instance_name="echo")
    def echo(paths: list[str]) -> Any:
        try:
            got = yield paths[0]
            while True:
                try:
                    got = yield f"got {got}"
                except ValueError:
                    got = "thrown"
        finally:
            closed.append("sync")

    @d2_guard("files.echo", instance_name="echo")
    async def aecho(paths: list[str]) -> Any:
        try:
            got = yield paths[0]
            while True:
                try:
                    got = yield f"got {got}"
                except ValueError:
                    got = "thrown"
        finally:
            closed.append("async")

    stream = echo(["a.txt"])
    assert stream.gi_code is not echo.__wrapped__.__code__  # type: ignore[attr-defined]
    assert next(stream) == "a.txt"
    assert stream.send("x") == "got x"
    assert stream.throw(ValueError()) == "got thrown"
    stream.close()

    async def main() -> list[str]:
        astream = aecho(["a.txt"])
        seen = [await anext(astream), await astream.asend("y")]
        seen.append(await astream.athrow(ValueError()))
        await astream.aclose()
        return seen

    assert asyncio.run(main()) == ["a.txt", "got y", "got thrown"]
    assert closed == ["sync", "async"]
