"""Attacks on cloud mode across fork() from the fourth hostile review (wt-review4).

Each test asserts the SAFE behaviour and fails on the code it was written against
(the attack succeeds there). Nothing here fixes anything.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
from cloudfakes import FakePlane
from d2.core import configure_rbac_sync, d2_guard, is_allowed, set_user, shutdown_rbac

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(body: Any) -> int:
    """Run ``body()`` in a forked child; its exit status (0: body returned True)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if body() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@fork_only
def test_a_worker_forked_while_the_parent_shuts_down_does_not_keep_a_frozen_policy(
    plane: FakePlane, cloud_options: Any
) -> None:
    """Attack: ``shutdown`` (or a reconfigure retiring this manager) runs
    ``runtime.aclose()`` first, which sets ``_stopped`` and then flushes usage
    events and closes the pool (seconds against a slow control plane), and only
    afterwards marks the manager closed and drops the policy. A worker forked in that
    window restarts the manager (not closed yet), but ``resume()`` sees ``_stopped``
    and starts no poll task, and nothing finishes the shutdown in the child: the
    worker enforces the copied policy with no poller until the bundle's ``exp`` (a
    revocation never reaches it), while the parent denies everything. Safe: the
    child either completes the shutdown (denies) or polls (sees the revocation)."""
    manager = configure_rbac_sync(**cloud_options())
    manager.runtime.interval = 5.0  # the shortest (the fake says 30): a child polls within 5 s
    d2_guard("search")(lambda: "results")
    set_user("u", roles=["agent"])
    assert is_allowed("search")

    closing = threading.Event()
    close_pool = manager.runtime.api.aclose

    async def slow_close() -> None:  # the final flush to a slow control plane
        closing.set()
        await asyncio.sleep(3)
        await close_pool()

    manager.runtime.api.aclose = slow_close  # type: ignore[method-assign]
    stopping = threading.Thread(target=shutdown_rbac, daemon=True)
    stopping.start()
    assert closing.wait(5)

    def child() -> bool:
        plane.fail["/v1/policy/bundle"] = (410, {})  # revoked in the control plane
        set_user("u", roles=["agent"])
        deadline = time.monotonic() + 8  # more than one poll interval
        while time.monotonic() < deadline:
            if not is_allowed("search"):
                return True
            time.sleep(0.2)
        return False  # still allowed: no poller, and the shutdown never completed

    status = _in_child(child)
    stopping.join(10)
    assert status == 0, "the forked worker kept serving the copied policy with no poller"
