"""Attacks on the approval digest and on arguments read after the check, from the
third hostile review (wt-review3). Each test asserts the SAFE behaviour and failed on
the code it was written against; docs/security.md describes each defence."""

from __future__ import annotations

import asyncio
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
