"""Attacks on the 1.x-compatible API found by a hostile review, kept as regression
tests (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from d2.core import (
    ConfigurationError,
    D2NoContextError,
    InMemorySource,
    PermissionDeniedError,
    UserContext,
    configure_rbac_sync,
    d2_guard,
    get_user_context,
    is_allowed,
    set_user,
    set_user_context,
    submit_with_context,
    thread_entrypoint,
)
from d2.core.testing import policy_document


def test_cloud_settings_without_a_token_do_not_fall_back_to_a_discovered_file(
    tmp_path: Path,
) -> None:
    """Attack: the app is written for cloud mode the 1.x way,
    ``configure_rbac_sync("default", api_url, pin_jwks_thumbprints)``, and its
    ``D2_TOKEN`` is missing in one deployment (a secret that failed to mount). The
    call silently selects local mode, drops the control-plane URL and the key pins
    with a DEBUG log, and enforces whatever ``policy.yaml`` file discovery finds in
    the working directory (unsigned; anyone who can write there decides), instead of
    failing closed. The caller asked for signed bundles pinned to one key."""
    permissive = policy_document({"role": "agent", "permissions": ["*"]})
    (tmp_path / "policy.yaml").write_text(json.dumps(permissive))
    with pytest.raises(ConfigurationError):
        configure_rbac_sync("default", "https://d2.internal.example", ["pinned-thumbprint"])
    set_user("mallory", roles=["agent"])
    assert not is_allowed("payments.refund")


def test_pins_in_the_environment_without_a_token_fail_closed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    permissive = policy_document({"role": "agent", "permissions": ["*"]})
    (tmp_path / "policy.yaml").write_text(json.dumps(permissive))
    monkeypatch.setenv("D2_JWKS_THUMBPRINTS", "pinned-thumbprint")
    with pytest.raises(ConfigurationError, match="D2_TOKEN is not set"):
        configure_rbac_sync()
    monkeypatch.delenv("D2_JWKS_THUMBPRINTS")
    configure_rbac_sync("default", "https://d2.internal.example")  # URLs alone: local mode
    set_user("mallory", roles=["agent"])
    assert is_allowed("payments.refund")


# -- defences that held ---------------------------------------------------------------


def test_a_with_block_restores_the_outer_user_and_request_even_if_the_body_sets_another() -> None:
    outer = set_user("alice", roles=["viewer"])
    with set_user_context("svc", roles=["admin"]):
        set_user("bob", roles=["admin"])
    assert get_user_context() is outer


def test_pooled_threads_never_keep_an_actor_for_their_next_job() -> None:
    """``submit_with_context(..., actor=)`` and ``thread_entrypoint`` run the job in a
    copy of the context: the worker's next plain job sees no user."""
    configure_rbac_sync(
        source=InMemorySource(policy_document({"role": "admin", "permissions": ["*"]}))
    )
    seen: list[object] = []

    @d2_guard("t")
    def tool() -> str:
        return "ran"

    @thread_entrypoint
    def job() -> str:
        return str(tool())

    with ThreadPoolExecutor(max_workers=1) as pool:
        admin = UserContext(user_id="root", roles=["admin"])
        assert submit_with_context(pool, tool, actor=admin).result() == "ran"
        assert pool.submit(job, actor=admin).result() == "ran"
        seen.append(pool.submit(get_user_context).result().user_id)
        with pytest.raises(D2NoContextError):
            pool.submit(job).result()  # no actor, and the worker has no user of its own
    assert seen == [None]


def test_a_with_block_ended_in_another_task_does_not_leave_the_user_set() -> None:
    async def main() -> object:
        block = set_user_context("svc", roles=["admin"])

        async def other() -> None:
            block.__exit__(None, None, None)  # wrong context: the user is cleared there

        await asyncio.create_task(other())
        return get_user_context().user_id

    assert asyncio.run(main()) == "svc"  # our own context: unchanged by the other task
    assert threading.current_thread() is threading.main_thread()


def _admin_and_guest_policy() -> None:
    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                {"role": "admin", "permissions": ["*"]},
                {"role": "guest", "permissions": ["search"]},
            )
        )
    )


def test_a_generator_entrypoint_runs_as_its_actor_not_as_the_caller() -> None:
    """Attack (confused deputy): an admin's request starts a job on behalf of a guest,
    ``job(actor=UserContext("guest", roles=["guest"]))``, to drop privileges. For a
    generator function ``thread_entrypoint`` only *creates* the generator inside the
    actor's context; its body runs later, in the consumer's context, as the admin:
    ``delete_everything`` runs although the actor may only ``search``."""
    _admin_and_guest_policy()
    ran: list[str] = []

    @d2_guard("delete_everything")
    def delete_everything() -> None:
        ran.append(str(get_user_context().user_id))

    @thread_entrypoint
    def job():  # type: ignore[no-untyped-def]
        delete_everything()
        yield "done"

    set_user("root", roles=["admin"])
    guest = UserContext(user_id="guest", roles=["guest"])
    try:
        list(job(actor=guest))
    except PermissionDeniedError:
        pass
    assert ran == [], f"the job's tool ran as {ran}, not as its actor 'guest'"


def test_an_async_generator_entrypoint_runs_as_its_actor_not_as_the_caller() -> None:
    """Same with ``async def`` + ``yield`` (the docstring says ``async def`` works):
    ``is_coroutine_function`` is False for an async generator, so the sync branch
    returns the async generator and its body runs as the caller."""
    _admin_and_guest_policy()
    ran: list[str] = []

    @d2_guard("delete_everything")
    def delete_everything() -> None:
        ran.append(str(get_user_context().user_id))

    @thread_entrypoint
    async def job():  # type: ignore[no-untyped-def]
        delete_everything()
        yield "done"

    async def main() -> None:
        set_user("root", roles=["admin"])
        guest = UserContext(user_id="guest", roles=["guest"])
        try:
            async for _ in job(actor=guest):
                pass
        except PermissionDeniedError:
            pass

    asyncio.run(main())
    assert ran == [], f"the job's tool ran as {ran}, not as its actor 'guest'"
