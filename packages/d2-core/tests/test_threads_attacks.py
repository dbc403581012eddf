"""Attacks on d2.threads from the third hostile review, kept as regression tests:
lazy work returned by a job runs as its actor, never as whoever consumes it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from d2.core import (
    InMemorySource,
    PermissionDeniedError,
    UserContext,
    configure_rbac_sync,
    d2_guard,
    get_user_context,
    set_user,
    thread_entrypoint,
)
from d2.core.testing import policy_document


def _admin_and_guest() -> list[str]:
    doc = policy_document(
        {"role": "admin", "permissions": ["*"]},
        {"role": "guest", "permissions": ["search"]},
    )
    configure_rbac_sync(source=InMemorySource(doc))
    return []


class _Lazy:
    """An iterator that is not a generator: ``__next__`` runs as its consumer."""

    def __init__(self, step: Callable[[], Any]) -> None:
        self.step = step
        self.done = False

    def __iter__(self) -> _Lazy:
        return self

    def __next__(self) -> Any:
        if self.done:
            raise StopIteration
        self.done = True
        return self.step()


@pytest.mark.parametrize("kind", ["map", "iterator-class", "async-returning-generator"])
def test_lazy_work_returned_by_an_entrypoint_never_runs_as_the_caller(kind: str) -> None:
    """Attack (confused deputy, as the generator attack of review 2): ``_carried``
    binds generators, async generators and coroutines to the actor, but not other
    lazy work: ``return map(delete, paths)``, an iterator class, or an ``async def``
    entrypoint that returns a generator (the async branch never calls ``_carried``).
    Consumed by the admin who started the job, the guest's job deletes as admin."""
    ran = _admin_and_guest()

    @d2_guard("delete_everything")
    def delete_everything(path: str = "/") -> str:
        ran.append(str(get_user_context().user_id))
        return path

    @thread_entrypoint
    def job_map(paths: list[str]) -> Any:
        return map(delete_everything, paths)

    @thread_entrypoint
    def job_iterator() -> Any:
        return _Lazy(delete_everything)

    @thread_entrypoint
    async def job_async() -> Any:
        return (delete_everything(p) for p in ["/"])

    set_user("root", roles=["admin"])
    guest = UserContext(user_id="guest", roles=["guest"])
    try:
        if kind == "map":
            list(job_map(["/"], actor=guest))
        elif kind == "iterator-class":
            list(job_iterator(actor=guest))
        else:
            list(asyncio.run(job_async(actor=guest)))
    except (PermissionDeniedError, TypeError):
        pass  # safe: denied as the guest, or lazy work refused
    assert "root" not in ran, f"the guest's job ran a tool as {ran}"


class _LazyAwaitable:
    def __init__(self, step: Callable[[], Any]) -> None:
        self.step = step

    def __await__(self) -> Any:
        self.step()
        return (yield from asyncio.sleep(0).__await__())


def test_an_awaitable_returned_by_an_entrypoint_never_runs_as_the_caller() -> None:
    """Attack: a sync entrypoint returning an awaitable that is not a coroutine (a
    class with ``__await__``): its body runs when awaited, in the awaiting task, as
    the caller."""
    ran = _admin_and_guest()

    @d2_guard("delete_everything")
    def delete_everything() -> None:
        ran.append(str(get_user_context().user_id))

    @thread_entrypoint
    def job() -> Any:
        return _LazyAwaitable(delete_everything)

    async def main() -> None:
        set_user("root", roles=["admin"])
        await job(actor=UserContext(user_id="guest", roles=["guest"]))

    try:
        asyncio.run(main())
    except (PermissionDeniedError, TypeError):
        pass
    assert "root" not in ran, f"the guest's job ran a tool as {ran}"
