"""The per-request user context: normalisation, clearing, and isolation between
concurrent tasks and threads."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from d2.core import (
    ConfigurationError,
    PermissionDeniedError,
    UserContext,
    clear_context,
    clear_context_async,
    clear_user_context,
    d2_guard,
    get_user_context,
    run_in_thread,
    set_user,
    set_user_context,
    submit_with_context,
    warn_if_context_set,
)


def test_roles_are_stripped_deduplicated_and_immutable() -> None:
    ctx = set_user("alice", roles=[" analyst ", "analyst", "", "  ", "admin"])
    assert ctx.roles == frozenset({"analyst", "admin"})
    assert isinstance(ctx.roles, frozenset)
    with pytest.raises(AttributeError):
        ctx.roles = frozenset()  # type: ignore[misc]
    assert get_user_context() is ctx


def test_a_lone_string_is_one_role_not_its_characters() -> None:
    assert set_user("alice", roles="admin").roles == frozenset({"admin"})


def test_non_string_role_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="roles must be strings"):
        set_user("alice", roles=["ok", 3])  # type: ignore[list-item]


def test_integer_user_ids_become_strings_and_bad_ids_are_refused() -> None:
    assert set_user(42, roles=[]).user_id == "42"
    with pytest.raises(ConfigurationError):
        set_user(["alice"], roles=[])  # type: ignore[arg-type]


def test_set_user_context_is_set_user() -> None:
    ctx = set_user_context("bob", ["r"])
    assert ctx == UserContext("bob", frozenset({"r"}))
    assert get_user_context().user_id == "bob"


def test_clear_user_context_forgets_the_user() -> None:
    set_user("alice", roles=["a"])
    clear_user_context()
    ctx = get_user_context()
    assert ctx.user_id is None and ctx.roles == frozenset() and not ctx.is_set


def test_warn_if_context_set_detects_a_leak_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert warn_if_context_set() is False
    set_user("alice", roles=["a"])
    with caplog.at_level("WARNING", logger="d2"):
        assert warn_if_context_set() is True
    assert "alice" in caplog.text and "still set" in caplog.text


def test_warn_if_context_set_logs_to_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    mine = logging.getLogger("myapp.requests")
    with caplog.at_level("WARNING"):
        assert warn_if_context_set(logger=mine) is False
        assert caplog.records == []
        set_user("alice", roles=["a"])
        assert warn_if_context_set(logger=mine) is True
    assert [r.name for r in caplog.records] == ["myapp.requests"]


def test_clear_context_decorator_clears_after_return_and_after_raise() -> None:
    @clear_context
    def handler(fail: bool) -> str:
        set_user("alice", roles=["a"])
        if fail:
            raise ValueError("boom")
        return get_user_context().user_id or ""

    assert handler(False) == "alice"
    assert get_user_context().user_id is None
    with pytest.raises(ValueError, match="boom"):
        handler(True)
    assert get_user_context().user_id is None


async def test_clear_context_async_and_clear_context_on_async_functions() -> None:
    @clear_context_async
    async def one() -> str:
        set_user("alice", roles=["a"])
        return "done"

    @clear_context
    async def two() -> str:
        set_user("bob", roles=["b"])
        raise RuntimeError("x")

    assert await one() == "done"
    assert get_user_context().user_id is None
    with pytest.raises(RuntimeError):
        await two()
    assert get_user_context().user_id is None


def test_set_user_starts_a_new_request_scope() -> None:
    first = set_user("alice", roles=["a"])
    first.scope.history.append("x")
    second = set_user("alice", roles=["a"])
    assert second.scope is not first.scope and second.scope.history == []


def test_submit_with_context_carries_user_and_scope_into_executor() -> None:
    ctx = set_user("alice", roles=["a"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        seen = submit_with_context(pool, get_user_context).result()
        plain = pool.submit(get_user_context).result()
    assert seen.user_id == "alice" and seen.scope is ctx.scope
    assert plain.user_id is None  # a bare submit does not carry context


async def test_run_in_thread_carries_context() -> None:
    ctx = set_user("alice", roles=["a"])

    def work(x: int) -> tuple[int, Any, str]:
        return x, get_user_context(), threading.current_thread().name

    x, seen, name = await run_in_thread(work, 4)
    assert x == 4 and seen.user_id == "alice" and seen.scope is ctx.scope
    assert name != threading.current_thread().name


async def test_thousands_of_concurrent_tasks_never_see_each_others_user(configure: Any) -> None:
    configure(
        {"role": "even", "permissions": ["tool.even"]},
        {"role": "odd", "permissions": ["tool.odd"]},
    )

    @d2_guard("tool.even")
    async def even_tool() -> str | None:
        await asyncio.sleep(0)
        return get_user_context().user_id

    @d2_guard("tool.odd")
    async def odd_tool() -> str | None:
        await asyncio.sleep(0)
        return get_user_context().user_id

    async def request(i: int) -> None:
        role = "even" if i % 2 == 0 else "odd"
        set_user(f"user-{i}", roles=[role])
        for _ in range(3):
            await asyncio.sleep(random.random() / 1000)
            assert get_user_context().user_id == f"user-{i}"
            mine, other = (even_tool, odd_tool) if role == "even" else (odd_tool, even_tool)
            assert await mine() == f"user-{i}"
            with pytest.raises(PermissionDeniedError) as info:
                await other()
            assert info.value.user_id == f"user-{i}"

    await asyncio.gather(*(request(i) for i in range(2000)))
    assert get_user_context().user_id is None  # tasks never leak into the parent


def test_hundreds_of_threads_never_see_each_others_user(configure: Any) -> None:
    configure(
        {"role": "even", "permissions": ["tool.even"]},
        {"role": "odd", "permissions": ["tool.odd"]},
    )

    @d2_guard("tool.even", on_deny=None)
    def even_tool() -> str | None:
        return get_user_context().user_id

    @d2_guard("tool.odd", on_deny=None)
    def odd_tool() -> str | None:
        return get_user_context().user_id

    barrier = threading.Barrier(50)
    errors: list[str] = []

    def request(i: int) -> None:
        role = "even" if i % 2 == 0 else "odd"
        set_user(f"user-{i}", roles=[role])
        if i < 50:
            barrier.wait()  # make sure many threads are in flight at once
        for _ in range(200):
            mine, other = (even_tool, odd_tool) if role == "even" else (odd_tool, even_tool)
            if mine() != f"user-{i}" or other() is not None:
                errors.append(f"user-{i} saw another user")
                return

    with ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(request, range(1000)))
    assert errors == []
