"""Code written for d2-sdk 1.x runs unchanged on 2.x: each test below is a call,
attribute or behaviour the 1.x documentation shows (the package-index page and the
1.x API reference), exercised as a 1.x user wrote it."""

from __future__ import annotations

import asyncio
import logging
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import d2
import httpx
import pytest
from d2.core.testing import isolate, policy_document, reset


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    isolate(monkeypatch, tmp_path)
    yield
    reset()


@pytest.fixture
def local_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A policy file found by discovery (``./policy.json``), as a 1.x app has."""
    import json

    doc = policy_document(
        {"role": "admin", "permissions": ["*"]},
        {"role": "viewer", "permissions": ["billing:read"]},
    )
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    monkeypatch.chdir(tmp_path)
    return path


# -- names ----------------------------------------------------------------------------
NAMES_1X = [
    "d2_guard", "d2", "configure_rbac", "configure_rbac_async", "configure_rbac_sync",
    "get_policy_manager", "shutdown_rbac", "shutdown_all_rbac", "set_user_context",
    "get_user_context", "clear_user_context", "warn_if_context_set", "set_user",
    "UserContext", "ASGIMiddleware", "clear_context", "clear_context_async",
    "headers_extractor", "D2Error", "PermissionDeniedError", "PolicyError",
    "InvalidSignatureError", "PolicyTooLargeError", "MissingPolicyError",
    "ConfigurationError", "ContextLeakWarning", "BundleExpiredError", "TooManyToolsError",
    "D2PlanLimitError", "D2NoContextError",
]  # fmt: skip
EXCEPTIONS_1X = [
    "D2Error", "PermissionDeniedError", "PolicyError", "InvalidSignatureError",
    "PolicyTooLargeError", "MissingPolicyError", "ConfigurationError", "ContextLeakWarning",
    "BundleExpiredError", "TooManyToolsError", "D2PlanLimitError", "D2NoContextError",
    "STATUS_MAP",
]  # fmt: skip


def test_every_1x_name_imports_from_d2_and_d2_exceptions() -> None:
    import d2.exceptions
    import d2.threads

    for name in NAMES_1X:
        assert name in d2.__all__, name
        assert getattr(d2, name) is not None
    for name in EXCEPTIONS_1X:
        assert name in d2.exceptions.__all__, name
        assert getattr(d2.exceptions, name) is getattr(d2, name)
    assert d2.configure_rbac is d2.configure_rbac_async
    assert d2.d2 is d2.d2_guard
    assert callable(d2.threads.submit_with_context) and callable(d2.threads.thread_entrypoint)
    assert d2.exceptions.STATUS_MAP[402] is d2.D2PlanLimitError


def test_policy_errors_are_policy_errors_and_denials_stay_denials() -> None:
    from d2.exceptions import (
        BundleExpiredError,
        D2Error,
        D2NoContextError,
        InvalidSignatureError,
        PermissionDeniedError,
        PolicyError,
        PolicyTooLargeError,
        TooManyToolsError,
    )

    for cls in (BundleExpiredError, TooManyToolsError, PolicyTooLargeError, InvalidSignatureError):
        assert issubclass(cls, PolicyError) and issubclass(cls, D2Error), cls
    assert issubclass(BundleExpiredError, PermissionDeniedError)  # the 2.x hierarchy stays
    assert issubclass(D2NoContextError, PermissionDeniedError)
    assert issubclass(d2.InvalidPolicyError, d2.ConfigurationError)
    assert issubclass(d2.ContextLeakWarning, Warning)


# -- constructors -----------------------------------------------------------------------
def test_1x_constructor_calls_build_errors_with_their_attributes() -> None:
    from d2.exceptions import (
        BundleExpiredError,
        D2NoContextError,
        D2PlanLimitError,
        MissingPolicyError,
        PermissionDeniedError,
        PolicyTooLargeError,
        TooManyToolsError,
    )

    err = PermissionDeniedError("billing:read", "alice", {"viewer"}, reason="not allowed")
    assert (err.tool_id, err.user_id, err.roles, err.reason) == (
        "billing:read", "alice", frozenset({"viewer"}), "not allowed",
    )  # fmt: skip
    assert "billing:read" in str(err) and "alice" in str(err)
    bare = PermissionDeniedError("t", None, None)
    assert bare.user_id is None and bare.roles == frozenset() and bare.reason == "denied"

    missing = MissingPolicyError("billing:read")
    assert missing.tool_id == "billing:read" and "billing:read" in str(missing)
    assert isinstance(missing, PermissionDeniedError) and missing.reason == "missing_policy"

    no_ctx = D2NoContextError("billing:read")
    assert no_ctx.tool_id == "billing:read" and no_ctx.reason == "no_user"
    assert "set_user" in str(no_ctx)

    expired = BundleExpiredError("expired", "2025-12-01T00:00:00+00:00")
    assert expired.reason == "expired" and expired.expiry_date == "2025-12-01T00:00:00+00:00"
    assert "2025-12-01" in str(expired)
    assert BundleExpiredError("bad expiry").expiry_date is None
    by_keyword = BundleExpiredError("expired", expiry_date="2025-12-01")
    assert by_keyword.expiry_date == "2025-12-01" and by_keyword.reason == "expired"

    tools = TooManyToolsError(30, 25)
    assert (tools.tool_count, tools.limit) == (30, 25) and "30" in str(tools)
    large = PolicyTooLargeError(600_000, 524_288)
    assert (large.bundle_size, large.size_limit) == (600_000, 524_288)

    assert D2PlanLimitError().reason == "plan_limit"
    assert D2PlanLimitError("tool_limit").reason == "tool_limit"
    assert D2PlanLimitError(reason="feature").reason == "feature"


def test_2x_keyword_forms_keep_working_alongside() -> None:
    err = d2.PermissionDeniedError("nope", tool_id="t", user_id="u", roles=frozenset({"r"}))
    assert str(err) == "nope" and err.tool_id == "t" and err.reason == "denied"
    assert d2.MissingPolicyError("gone", reason="unknown_tool").tool_id is None
    expired = d2.BundleExpiredError("stale", reason="policy_expired", expiry_date="2026-01-01")
    assert expired.reason == "policy_expired" and str(expired) == "stale"
    assert d2.TooManyToolsError("too many", tool_count=3, limit=2).limit == 2
    assert str(d2.D2PlanLimitError("x", message="plan says no")) == "plan says no"


@pytest.mark.parametrize(
    "err",
    [
        d2.PermissionDeniedError("t", "alice", {"r"}, reason="why"),
        d2.MissingPolicyError("t"),
        d2.BundleExpiredError("expired", "2025-12-01"),
        d2.D2NoContextError("t"),
    ],
    ids=["denied", "missing", "expired", "no-context"],
)
def test_1x_built_errors_survive_pickling(err: d2.PermissionDeniedError) -> None:
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err) and str(copy) == str(err)
    assert (copy.tool_id, copy.user_id, copy.roles, copy.reason) == (
        err.tool_id, err.user_id, err.roles, err.reason,
    )  # fmt: skip
    assert getattr(copy, "expiry_date", None) == getattr(err, "expiry_date", None)


# -- no user ------------------------------------------------------------------------------
def test_a_guarded_call_without_a_user_raises_d2_no_context_error(local_policy: Path) -> None:
    d2.configure_rbac_sync()

    @d2.d2_guard("billing:read")
    def read_billing() -> str:
        return "ok"

    with pytest.raises(d2.D2NoContextError) as info:
        read_billing()
    assert info.value.reason == "no_user" and info.value.tool_id == "billing:read"
    with pytest.raises(d2.PermissionDeniedError) as denied:  # the 1.x except clause
        read_billing()
    assert isinstance(denied.value, d2.D2NoContextError)
    d2.set_user("alice", ["viewer"])  # roles positional, as 1.x showed
    assert read_billing() == "ok"


# -- context ---------------------------------------------------------------------------
def test_set_user_context_as_a_block_restores_the_previous_user_and_nests() -> None:
    d2.set_user("outer", ["a"])
    with d2.set_user_context("alice", ["admin"]):
        assert d2.get_user_context().user_id == "alice"
        with d2.set_user_context(user_id="bob", roles=["viewer"]) as ctx:
            assert ctx.user_id == "bob" and d2.get_user_context().roles == frozenset({"viewer"})
        assert d2.get_user_context().user_id == "alice"
    assert d2.get_user_context().user_id == "outer"
    with pytest.raises(RuntimeError), d2.set_user_context("carol", ["x"]):
        raise RuntimeError("boom")
    assert d2.get_user_context().user_id == "outer"  # restored on an error too


def test_set_user_context_without_with_still_sets_the_user() -> None:
    d2.set_user_context("alice", ["admin"])
    assert d2.get_user_context().user_id == "alice"


async def test_set_user_context_as_an_async_block() -> None:
    async with d2.set_user_context("alice", ["admin"]):
        assert d2.get_user_context().user_id == "alice"
    assert d2.get_user_context().user_id is None


def test_user_context_is_built_with_all_fields_optional_and_reads_the_request() -> None:
    empty = d2.UserContext()
    assert empty.user_id is None and empty.roles == frozenset()
    bob = d2.UserContext(user_id="bob", roles=frozenset(["viewer"]))
    assert bob.roles == frozenset({"viewer"})
    assert d2.UserContext("bob", ["viewer"]) == bob
    assert bob.call_history == () and bob.facts == frozenset()
    assert isinstance(bob.request_id, str) and bob.request_id
    assert d2.UserContext("bob").request_id != bob.request_id
    for name in ("user_id", "roles", "call_history", "request_id", "facts"):
        with pytest.raises(AttributeError):
            setattr(bob, name, None)


def test_call_history_and_facts_follow_the_request() -> None:
    # history is kept while the policy has sequence or data-flow rules (migration.md)
    doc = policy_document(
        {
            "role": "viewer",
            "permissions": ["billing:read", "mail:send"],
            "sequence": [{"deny": ["billing:read", "mail:send"], "reason": "no leaks"}],
        }
    )
    d2.configure_rbac_sync(source=d2.InMemorySource(doc))
    tool = d2.d2_guard("billing:read")(lambda: "ok")
    d2.set_user("alice", ["viewer"])
    tool()
    tool()
    d2.record_fact("PII")
    ctx = d2.get_user_context()
    assert ctx.call_history == ("billing:read", "billing:read") and ctx.facts == {"PII"}
    request = ctx.request_id
    d2.set_user("alice", ["viewer"])  # a new request
    assert d2.get_user_context().call_history == ()
    assert d2.get_user_context().request_id != request


def test_warn_if_context_set_returns_true_on_a_leak_and_logs_to_the_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("myapp")
    assert d2.warn_if_context_set(logger=log) is False
    d2.set_user("alice", ["viewer"])
    with caplog.at_level(logging.WARNING, logger="myapp"):
        assert d2.warn_if_context_set(logger=log) is True
    assert any(r.name == "myapp" and "alice" in r.getMessage() for r in caplog.records)
    d2.clear_user_context()
    assert d2.warn_if_context_set() is False


# -- configure / shutdown ---------------------------------------------------------------
def test_configure_with_the_instance_name_positional_and_1x_cloud_keywords_in_local_mode(
    local_policy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="d2"):
        manager = d2.configure_rbac_sync(
            "default",
            api_url="https://control-plane.invalid",
            jwks_url="https://control-plane.invalid/jwks",
        )
    assert manager.mode == "local" and d2.get_policy_manager("default") is manager
    assert "ignores the cloud option" in caplog.text
    # pinned keys never fall back to an unsigned local file (fail closed)
    with pytest.raises(d2.ConfigurationError, match="D2_TOKEN is not set"):
        d2.configure_rbac_sync("default", "https://control-plane.invalid", ["abc"])
    with pytest.raises(d2.ConfigurationError, match="unknown option"):
        d2.configure_rbac_sync("default", no_such_option=1)


async def test_configure_rbac_async_and_its_1x_name_take_the_instance_positional(
    local_policy: Path,
) -> None:
    manager = await d2.configure_rbac("other", "https://ignored.invalid")
    assert manager.name == "other" and manager.mode == "local"
    manager = await d2.configure_rbac_async("default")
    assert manager.name == "default"


async def test_await_shutdown_rbac_and_shutdown_all_rbac_as_in_1x(local_policy: Path) -> None:
    await d2.configure_rbac_async()
    d2.configure_rbac_sync("second")
    tool = d2.d2_guard("billing:read")(lambda: "ok")
    d2.set_user("alice", ["viewer"])
    assert tool() == "ok"
    assert await d2.shutdown_rbac() is None
    with pytest.raises(d2.MissingPolicyError):
        tool()
    assert await d2.shutdown_all_rbac() is None
    with pytest.raises(d2.ConfigurationError):
        d2.get_policy_manager("second")


def test_plain_shutdown_calls_work_and_warn_about_nothing(local_policy: Path) -> None:
    import gc

    d2.configure_rbac_sync()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        d2.shutdown_rbac()
        d2.shutdown_all_rbac()
        gc.collect()
    assert seen == []
    with pytest.raises(d2.ConfigurationError):
        d2.get_policy_manager()


def test_cloud_mode_reads_the_1x_positional_api_url_pins_and_jwks_url(
    d2_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d2.cloud import thumbprint

    d2_server.register_key()
    d2_server.publish(d2_server.policy({"role": "agent", "permissions": ["search"]}))
    keys = httpx.get(d2_server.jwks_url).json()["keys"]
    monkeypatch.setenv("D2_TOKEN", d2_server.runtime_token)
    monkeypatch.setenv("D2_STATE_PATH", ":memory:")
    manager = d2.configure_rbac_sync(
        "default",
        d2_server.base_url,  # api_url, positional as in 1.x
        [thumbprint(k) for k in keys],  # pin_jwks_thumbprints
        d2_server.jwks_url,
        clock=d2_server.clock,
        first_fetch_timeout=10.0,
    )
    assert manager.mode == "cloud" and manager.policy is not None
    d2.set_user("u", ["agent"])
    assert d2.d2_guard("search")(lambda: "found")() == "found"
    d2.shutdown_all_rbac()

    # a pin that matches no key of the control plane: no bundle is trusted
    try:
        manager = d2.configure_rbac_sync(
            api_url=d2_server.base_url,
            pin_jwks_thumbprints=["A" * 43],
            clock=d2_server.clock,
            first_fetch_timeout=5.0,
        )
    except d2.D2Error:
        pass
    else:
        assert manager.policy is None
    with pytest.raises(d2.PermissionDeniedError):
        d2.d2_guard("search")(lambda: "found")()


# -- threads -------------------------------------------------------------------------------
def test_submit_with_context_runs_as_the_caller_or_as_an_explicit_actor(
    local_policy: Path,
) -> None:
    from d2.threads import submit_with_context

    d2.configure_rbac_sync()
    who = d2.d2_guard("billing:read")(lambda: d2.get_user_context().user_id)
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(d2.D2NoContextError):
            submit_with_context(pool, who)  # no user anywhere: nothing is submitted
        d2.set_user("alice", ["viewer"])
        assert submit_with_context(pool, who).result() == "alice"
        actor = d2.UserContext(user_id="bob", roles=frozenset(["admin"]))
        assert submit_with_context(pool, who, actor=actor).result() == "bob"
        with pytest.raises(TypeError, match="UserContext"):
            submit_with_context(pool, who, actor={"user_id": "bob"})  # type: ignore[arg-type]
        # the worker thread keeps no user after the job
        assert pool.submit(lambda: d2.get_user_context().user_id).result() is None
    assert d2.get_user_context().user_id == "alice"


def test_submit_with_context_passes_arguments_through(local_policy: Path) -> None:
    from d2.threads import submit_with_context

    d2.set_user("alice", ["viewer"])
    with ThreadPoolExecutor(1) as pool:
        future = submit_with_context(pool, lambda a, *, b: (a, b), 1, b=2)
        assert future.result() == (1, 2)


def test_thread_entrypoint_requires_or_falls_back_to_the_ambient_user(
    local_policy: Path,
) -> None:
    from d2.threads import thread_entrypoint

    d2.configure_rbac_sync()
    read = d2.d2_guard("billing:read")(lambda: "ok")

    @thread_entrypoint(require_actor=True)
    def rebuild(index: str) -> tuple[str, str | None]:
        return read() + index, d2.get_user_context().user_id

    @thread_entrypoint(require_actor=False)
    def routine() -> str | None:
        return d2.get_user_context().user_id

    with pytest.raises(d2.D2NoContextError):
        rebuild("1")
    with pytest.raises(TypeError):
        rebuild("1", actor="bob")
    assert rebuild("1", actor=d2.UserContext(user_id="bob", roles=["viewer"])) == ("ok1", "bob")
    with pytest.raises(d2.D2NoContextError):
        routine()
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(routine(actor=d2.UserContext(user_id="carol")))
    )
    worker.start()
    worker.join()
    assert results == ["carol"]
    d2.set_user("alice", ["viewer"])
    assert routine() == "alice"
    assert d2.get_user_context().user_id == "alice"  # the caller's context is untouched


# -- star import ---------------------------------------------------------------------------
def test_star_import_works_and_names_needing_a_missing_extra_say_which() -> None:
    script = textwrap.dedent(
        """
        import sys
        # as if d2-asgi were not installed (plain d2-sdk): its folder is off the path
        sys.path[:] = [p for p in sys.path if "d2-asgi" not in p]
        from d2 import *
        assert callable(d2_guard) and PolicyError
        assert "ASGIMiddleware" not in globals()
        import d2
        assert "ASGIMiddleware" not in d2.__all__
        try:
            d2.ASGIMiddleware
        except ImportError as exc:
            assert "d2-sdk[asgi]" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_star_import_binds_everything_when_all_extras_are_installed() -> None:
    namespace: dict[str, Any] = {}
    exec("from d2 import *", namespace)
    assert {"ASGIMiddleware", "headers_extractor", "configure_rbac"} <= set(namespace)


def test_asyncio_apps_can_await_configure_and_shutdown_in_one_loop(local_policy: Path) -> None:
    async def lifespan() -> bool:
        await d2.configure_rbac_async()
        d2.set_user("alice", ["viewer"])
        ok = d2.is_allowed("billing:read")
        await d2.shutdown_all_rbac()
        return ok

    assert asyncio.run(lifespan()) is True


async def test_thread_entrypoint_on_a_coroutine_function_runs_as_the_actor() -> None:
    from d2.threads import thread_entrypoint

    @thread_entrypoint(require_actor=True)
    async def job() -> str | None:
        await asyncio.sleep(0)
        return d2.get_user_context().user_id

    assert await job(actor=d2.UserContext(user_id="bob")) == "bob"
    assert d2.get_user_context().user_id is None
    with pytest.raises(d2.D2NoContextError):
        await job()
