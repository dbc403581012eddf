"""configure / shutdown / instances, and the hand-over to cloud mode."""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    ConfigurationError,
    InMemorySource,
    InvalidPolicyError,
    LocalFileSource,
    MissingPolicyError,
    PolicyManager,
    configure_rbac_async,
    configure_rbac_sync,
    d2_guard,
    get_policy_manager,
    is_allowed,
    set_user,
    shutdown_all_rbac,
    shutdown_rbac,
)


async def test_configure_async_loads_without_blocking_the_loop(
    tmp_path: Path, make_doc: Any
) -> None:
    import json

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(make_doc({"role": "a", "permissions": ["x"]})))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    manager = await configure_rbac_async(source=path)
    task.cancel()
    assert isinstance(manager, PolicyManager) and manager.mode == "local"
    assert ticks > 0  # the loop kept running while the file was read and compiled
    set_user("u", roles=["a"])
    assert is_allowed("x")


async def test_configure_async_errors_propagate(tmp_path: Path) -> None:
    with pytest.raises(MissingPolicyError):
        await configure_rbac_async(source=tmp_path / "absent.json")


def test_get_policy_manager_and_named_instances(configure: Any) -> None:
    with pytest.raises(ConfigurationError, match="configure_rbac_sync"):
        get_policy_manager()
    default = configure({"role": "a", "permissions": ["x"]})
    other = configure({"role": "a", "permissions": ["y"]}, instance_name="other")
    assert get_policy_manager() is default and get_policy_manager("other") is other
    set_user("u", roles=["a"])
    assert is_allowed("x") and not is_allowed("y")
    assert is_allowed("y", instance_name="other") and not is_allowed("x", instance_name="other")


def test_shutdown_denies_with_advice_and_reconfigure_restores(configure: Any) -> None:
    configure({"role": "a", "permissions": ["x"]})

    @d2_guard("x")
    def tool() -> str:
        return "ran"

    set_user("u", roles=["a"])
    assert tool() == "ran"
    shutdown_rbac()
    with pytest.raises(MissingPolicyError, match="shut down"):
        tool()
    shutdown_rbac()  # idempotent
    configure({"role": "a", "permissions": ["x"]})
    assert tool() == "ran"


def test_shutdown_all(configure: Any) -> None:
    configure({"role": "a", "permissions": ["x"]})
    configure({"role": "a", "permissions": ["x"]}, instance_name="two")
    shutdown_all_rbac()
    set_user("u", roles=["a"])
    assert not is_allowed("x") and not is_allowed("x", instance_name="two")
    with pytest.raises(ConfigurationError):
        get_policy_manager("two")


def test_reconfigure_replaces_the_policy(configure: Any) -> None:
    configure({"role": "a", "permissions": ["x"]})
    configure({"role": "a", "permissions": ["y"]})
    set_user("u", roles=["a"])
    assert is_allowed("y") and not is_allowed("x")


def test_failed_first_configure_leaves_calls_denied() -> None:
    with pytest.raises(InvalidPolicyError):
        configure_rbac_sync(source=InMemorySource({"policies": "nope"}))
    set_user("u", roles=["a"])
    assert not is_allowed("x")
    with pytest.raises(ConfigurationError):
        get_policy_manager()


def test_in_memory_source_update_swaps_and_invalid_update_keeps(make_doc: Any) -> None:
    source = InMemorySource(make_doc({"role": "a", "permissions": ["x"]}))
    configure_rbac_sync(source=source)
    set_user("u", roles=["a"])
    source.update(make_doc({"role": "a", "permissions": ["y"]}))
    assert is_allowed("y") and not is_allowed("x")
    with pytest.raises(InvalidPolicyError):
        source.update({"policies": [{"role": "a", "permissions": [1]}]})
    assert is_allowed("y")


def test_source_must_be_a_path_or_a_source() -> None:
    with pytest.raises(ConfigurationError, match="PolicySource"):
        configure_rbac_sync(source=42)  # type: ignore[arg-type]


def test_unknown_local_options_are_refused(configure: Any) -> None:
    with pytest.raises(ConfigurationError, match="poll_seconds"):
        configure_rbac_sync(source=InMemorySource({"policies": []}), poll_seconds=3)


def test_d2_token_without_cloud_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("D2_TOKEN", "d2_test")
    monkeypatch.setitem(sys.modules, "d2.cloud", None)  # not installed
    with pytest.raises(ConfigurationError, match=r'pip install "d2-sdk\[cloud\]"'):
        configure_rbac_sync()


async def test_d2_token_hands_over_to_the_cloud_package(
    monkeypatch: pytest.MonkeyPatch, make_doc: Any
) -> None:
    calls: list[tuple[str, Any, dict[str, Any]]] = []

    def configure_sync(evaluator: Any, *, token: str, **options: Any) -> PolicyManager:
        calls.append(("sync", token, options))
        return PolicyManager(evaluator, InMemorySource(make_doc()), limits=None)  # type: ignore[arg-type]

    async def configure_async(evaluator: Any, *, token: str, **options: Any) -> PolicyManager:
        calls.append(("async", token, options))
        return PolicyManager(evaluator, InMemorySource(make_doc()), limits=None)  # type: ignore[arg-type]

    fake = types.ModuleType("d2.cloud")
    fake.configure_sync = configure_sync  # type: ignore[attr-defined]
    fake.configure_async = configure_async  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "d2.cloud", fake)
    monkeypatch.setenv("D2_TOKEN", "d2_env")
    m1 = configure_rbac_sync(poll_seconds=5)
    m2 = await configure_rbac_async(token="d2_arg", instance_name="x")
    assert calls == [("sync", "d2_env", {"poll_seconds": 5}), ("async", "d2_arg", {})]
    assert get_policy_manager() is m1 and get_policy_manager("x") is m2


def test_refused_reconfigure_keeps_the_policy_in_force(tmp_path: Path, make_doc: Any) -> None:
    import json
    import time

    good = tmp_path / "good.json"
    good.write_text(json.dumps(make_doc({"role": "a", "permissions": ["x"]})))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(make_doc({"role": "a", "permissions": ["@nope"]})))
    first = configure_rbac_sync(source=LocalFileSource(good, poll_interval=0.02))
    set_user("u", roles=["a"])
    with pytest.raises(InvalidPolicyError):
        configure_rbac_sync(source=bad)
    assert is_allowed("x") and get_policy_manager() is first and first.policy is not None
    # and the first configuration's watcher still follows its file
    good.write_text(json.dumps(make_doc({"role": "a", "permissions": ["y"]})))
    deadline = time.monotonic() + 5
    while not is_allowed("y") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_allowed("y")


def test_replaced_manager_no_longer_updates_and_its_shutdown_is_harmless(
    tmp_path: Path, make_doc: Any
) -> None:
    import json
    import time

    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps(make_doc({"role": "a", "permissions": ["old"]})))
    old = configure_rbac_sync(source=LocalFileSource(old_file, poll_interval=0.02))
    new = configure_rbac_sync(
        source=InMemorySource(make_doc({"role": "a", "permissions": ["new"]}))
    )
    set_user("u", roles=["a"])
    old_file.write_text(json.dumps(make_doc({"role": "a", "permissions": ["old2"]})))
    time.sleep(0.2)
    assert is_allowed("new") and not is_allowed("old2")
    old.shutdown()
    assert is_allowed("new") and get_policy_manager() is new
