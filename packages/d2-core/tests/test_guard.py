"""d2_guard on every kind of callable, on_deny, strict sync mode and ``.aio``."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest
from d2.core import (
    ConfigurationError,
    D2Error,
    MissingPolicyError,
    PermissionDeniedError,
    d2,
    d2_guard,
    get_user_context,
    set_user,
)

ADMIN = {"role": "admin", "permissions": ["*"]}


@pytest.fixture
def policy(configure: Any) -> Any:
    return configure(
        ADMIN,
        {"role": "reader", "permissions": ["billing:read", "stream:*"]},
    )


def test_guarded_call_runs_for_granted_role_and_returns_real_value(policy: Any) -> None:
    calls = []

    @d2_guard("billing:read")
    def read(x: int, *, y: int = 2) -> int:
        calls.append(x)
        return x * y

    set_user("alice", roles=["reader"])
    assert read(3, y=5) == 15
    assert calls == [3]


def test_denied_call_never_runs_the_tool(policy: Any) -> None:
    ran = []

    @d2_guard("billing:write")
    def write() -> None:
        ran.append(1)

    set_user("alice", roles=["reader"])
    with pytest.raises(PermissionDeniedError) as info:
        write()
    assert ran == []
    err = info.value
    assert (err.tool_id, err.user_id, err.roles, err.reason) == (
        "billing:write",
        "alice",
        frozenset({"reader"}),
        "not_granted",
    )
    assert "billing:write" in str(err) and "admin" in str(err)


def test_alias_d2_is_the_same_decorator(policy: Any) -> None:
    assert d2 is d2_guard


def test_bare_decorator_uses_module_and_qualname_as_tool_id(configure: Any) -> None:
    @d2_guard
    def helper() -> str:
        return "ok"

    expected = f"{__name__}.test_bare_decorator_uses_module_and_qualname_as_tool_id.<locals>.helper"
    assert helper.tool_id == expected  # type: ignore[attr-defined]
    configure({"role": "dev", "permissions": [f"{__name__}.*"]})
    set_user("bob", roles=["dev"])
    assert helper() == "ok"
    set_user("eve", roles=["other"])
    with pytest.raises(PermissionDeniedError):
        helper()


def test_metadata_is_preserved() -> None:
    async def fetch(a: int, b: str = "x") -> str:
        """Fetch things."""
        return b * a

    def plain(a: int) -> int:
        """Plain doc."""
        return a

    g_async = d2_guard("t.async")(fetch)
    g_plain = d2_guard("t.plain")(plain)
    assert g_async.__name__ == "fetch" and g_async.__doc__ == "Fetch things."
    assert g_async.__wrapped__ is fetch
    assert inspect.signature(g_async) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(g_async)
    assert asyncio.iscoroutinefunction(g_async)
    assert not inspect.iscoroutinefunction(g_plain)
    assert g_plain.__name__ == "plain" and g_plain.__doc__ == "Plain doc."
    assert inspect.signature(g_plain) == inspect.signature(plain)


async def test_async_tool_allowed_and_denied(policy: Any) -> None:
    @d2_guard("billing:read")
    async def read() -> str:
        await asyncio.sleep(0)
        return "data"

    @d2_guard("db.drop")
    async def drop() -> str:
        return "dropped"

    set_user("alice", roles=["reader"])
    assert await read() == "data"
    with pytest.raises(PermissionDeniedError):
        await drop()


def test_methods_static_and_class_methods(policy: Any) -> None:
    class Repo:
        def __init__(self) -> None:
            self.n = 7

        @d2_guard("billing:read")
        def value(self, extra: int = 0) -> int:
            return self.n + extra

        @d2_guard("billing:read")
        @staticmethod
        def static(x: int) -> int:
            return x + 1

        @staticmethod
        @d2_guard("billing:read")
        def static2(x: int) -> int:
            return x + 2

        @d2_guard("billing:read")
        @classmethod
        def klass(cls) -> str:
            return cls.__name__

        @d2_guard("db.drop")
        def forbidden(self) -> None:
            raise AssertionError("must not run")

    set_user("alice", roles=["reader"])
    repo = Repo()
    assert repo.value() == 7
    assert repo.value(3) == 10
    assert Repo.value(repo, 1) == 8
    assert Repo.static(1) == 2 and repo.static(1) == 2
    assert Repo.static2(1) == 3
    assert Repo.klass() == "Repo" and repo.klass() == "Repo"
    with pytest.raises(PermissionDeniedError):
        repo.forbidden()
    assert list(inspect.signature(repo.value).parameters) == ["extra"]


async def test_method_aio_keeps_self_and_context(policy: Any) -> None:
    class Svc:
        @d2_guard("billing:read")
        def who(self, suffix: str) -> str:
            return f"{get_user_context().user_id}{suffix}:{threading.current_thread().name}"

        @d2_guard("billing:read")
        @classmethod
        def kind(cls) -> str:
            return cls.__name__

    set_user("alice", roles=["reader"])
    out = await Svc().who.aio("!")
    assert out.startswith("alice!:") and not out.endswith(threading.current_thread().name)
    assert await Svc.kind.aio() == "Svc"


def test_sync_generator_is_checked_when_called_not_when_iterated(policy: Any) -> None:
    @d2_guard("stream:numbers")
    def numbers(n: int) -> Any:
        yield from range(n)

    @d2_guard("db.dump")
    def dump() -> Any:
        yield "secret"

    set_user("alice", roles=["reader"])
    assert list(numbers(3)) == [0, 1, 2]
    with pytest.raises(PermissionDeniedError):
        dump()  # raises at the call, before any iteration


async def test_async_generator_is_checked_when_called(policy: Any) -> None:
    @d2_guard("stream:chunks")
    async def chunks() -> Any:
        for c in ("a", "b"):
            yield c

    @d2_guard("db.dump")
    async def dump() -> Any:
        yield "secret"

    set_user("alice", roles=["reader"])
    assert [c async for c in chunks()] == ["a", "b"]
    with pytest.raises(PermissionDeniedError):
        dump()


def test_on_deny_value_is_returned_instead_of_raising(policy: Any) -> None:
    @d2_guard("db.drop", on_deny={"error": "forbidden"})
    def drop() -> dict[str, str]:
        raise AssertionError("must not run")

    set_user("alice", roles=["reader"])
    assert drop() == {"error": "forbidden"}


def test_on_deny_callable_gets_the_error_when_it_takes_one_argument(policy: Any) -> None:
    seen: list[PermissionDeniedError] = []

    def handler(err: PermissionDeniedError) -> str:
        seen.append(err)
        return f"denied:{err.reason}"

    @d2_guard("db.drop", on_deny=handler)
    def drop() -> str:
        return "ran"

    set_user("alice", roles=["reader"])
    assert drop() == "denied:not_granted"
    assert seen[0].tool_id == "db.drop"


def test_on_deny_callable_without_parameters_is_called_with_none(policy: Any) -> None:
    @d2_guard("db.drop", on_deny=lambda: "fallback")
    def drop() -> str:
        return "ran"

    set_user("alice", roles=["reader"])
    assert drop() == "fallback"


def test_on_deny_decides_by_signature_not_by_catching_typeerror(policy: Any) -> None:
    # A one-argument handler that itself raises TypeError must not be retried
    # without arguments: the error surfaces as is.
    def handler(err: PermissionDeniedError) -> str:
        raise TypeError("handler bug")

    @d2_guard("db.drop", on_deny=handler)
    def drop() -> str:
        return "ran"

    set_user("alice", roles=["reader"])
    with pytest.raises(TypeError, match="handler bug"):
        drop()


def test_on_deny_with_optional_argument_receives_the_error(policy: Any) -> None:
    @d2_guard("db.drop", on_deny=lambda err=None: err)
    def drop() -> Any:
        return "ran"

    set_user("alice", roles=["reader"])
    assert isinstance(drop(), PermissionDeniedError)


def test_on_deny_requiring_two_arguments_is_refused_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match="one argument"):
        d2_guard("x", on_deny=lambda a, b: None)(lambda: None)


def test_async_on_deny_for_sync_tool_is_refused_at_decoration() -> None:
    async def handler(err: PermissionDeniedError) -> None:
        return None

    with pytest.raises(ConfigurationError, match="async"):
        d2_guard("x", on_deny=handler)(lambda: None)


async def test_async_tool_with_sync_and_async_on_deny(policy: Any) -> None:
    async def ahandler(err: PermissionDeniedError) -> str:
        await asyncio.sleep(0)
        return f"async:{err.reason}"

    @d2_guard("db.drop", on_deny=ahandler)
    async def drop1() -> str:
        return "ran"

    @d2_guard("db.drop", on_deny=lambda: "sync")
    async def drop2() -> str:
        return "ran"

    set_user("alice", roles=["reader"])
    assert await drop1() == "async:not_granted"
    assert await drop2() == "sync"


def test_on_deny_covers_missing_policy_and_no_user(configure: Any) -> None:
    @d2_guard("billing:read", on_deny=lambda e: e.reason)
    def read() -> str:
        return "ran"

    set_user("alice", roles=["reader"])
    assert read() == "missing_policy"  # not configured yet
    configure({"role": "reader", "permissions": ["billing:read"]})
    assert read() == "ran"
    set_user(None)
    assert read() == "no_user"


def test_on_deny_does_not_swallow_errors_of_the_tool_itself(policy: Any) -> None:
    @d2_guard("billing:read", on_deny="fallback")
    def read() -> str:
        raise PermissionDeniedError("raised by the tool's own code")

    set_user("alice", roles=["reader"])
    with pytest.raises(PermissionDeniedError, match="own code"):
        read()


def test_generator_on_deny_is_streamed(policy: Any) -> None:
    @d2_guard("db.dump", on_deny="denied")
    def dump() -> Any:
        yield "secret"

    @d2_guard("db.dump", on_deny=None)
    def dump_none() -> Any:
        yield "secret"

    set_user("alice", roles=["reader"])
    assert list(dump()) == ["denied"]
    assert list(dump_none()) == []


async def test_async_generator_on_deny_is_streamed(policy: Any) -> None:
    async def fallback() -> list[str]:
        return ["x", "y"]

    @d2_guard("db.dump", on_deny=fallback)
    async def dump() -> Any:
        yield "secret"

    set_user("alice", roles=["reader"])
    assert [c async for c in dump()] == ["x", "y"]


def test_calling_before_configure_says_to_configure() -> None:
    @d2_guard("billing:read")
    def read() -> None:
        return None

    set_user("alice", roles=["reader"])
    with pytest.raises(MissingPolicyError) as info:
        read()
    assert "configure_rbac" in str(info.value)
    assert isinstance(info.value, PermissionDeniedError)


async def test_sync_tool_inside_event_loop_runs_inline_and_returns_value(policy: Any) -> None:
    @d2_guard("billing:read")
    def read() -> tuple[str, str]:
        return "value", threading.current_thread().name

    set_user("alice", roles=["reader"])
    value, thread = read()
    assert value == "value" and thread == threading.current_thread().name


async def test_strict_true_refuses_sync_tool_inside_event_loop(policy: Any) -> None:
    @d2_guard("billing:read", strict=True)
    def read() -> str:
        return "value"

    set_user("alice", roles=["reader"])
    with pytest.raises(D2Error, match=r"\.aio"):
        read()
    assert await read.aio() == "value"  # type: ignore[attr-defined]


def test_strict_true_allows_sync_tool_outside_event_loop(policy: Any) -> None:
    @d2_guard("billing:read", strict=True)
    def read() -> str:
        return "value"

    set_user("alice", roles=["reader"])
    assert read() == "value"


async def test_d2_strict_sync_env_applies_at_configure(
    configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D2_STRICT_SYNC", "1")
    configure({"role": "reader", "permissions": ["billing:read"]})

    @d2_guard("billing:read")
    def read() -> str:
        return "value"

    @d2_guard("billing:read", strict=False)
    def lenient() -> str:
        return "value"

    set_user("alice", roles=["reader"])
    with pytest.raises(D2Error, match="strict"):
        read()
    assert lenient() == "value"


async def test_aio_runs_in_worker_thread_with_callers_context(policy: Any) -> None:
    @d2_guard("billing:read")
    def read(x: int) -> tuple[int, str | None, str]:
        return x, get_user_context().user_id, threading.current_thread().name

    @d2_guard("db.drop")
    def drop() -> None:
        return None

    set_user("alice", roles=["reader"])
    x, user, thread = await read.aio(5)  # type: ignore[attr-defined]
    assert (x, user) == (5, "alice")
    assert thread != threading.current_thread().name
    with pytest.raises(PermissionDeniedError):
        await drop.aio()  # type: ignore[attr-defined]


def test_tool_id_must_be_a_non_empty_string() -> None:
    with pytest.raises(ConfigurationError):
        d2_guard(" spaced ")
    with pytest.raises(ConfigurationError):
        d2_guard(42)  # type: ignore[call-overload]


def test_instance_name_selects_the_instance(configure: Any) -> None:
    configure({"role": "reader", "permissions": ["a"]}, instance_name="one")
    configure({"role": "reader", "permissions": ["b"]}, instance_name="two")

    @d2_guard("a", instance_name="one")
    def a1() -> str:
        return "a1"

    @d2_guard("a", instance_name="two")
    def a2() -> str:
        return "a2"

    set_user("alice", roles=["reader"])
    assert a1() == "a1"
    with pytest.raises(PermissionDeniedError):
        a2()
