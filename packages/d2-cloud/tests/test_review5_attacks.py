"""Attacks on cloud mode across fork() from the fifth hostile review (wt-review5),
against commit 55f7e29.

Each test asserts the SAFE behaviour and fails on the code it was written against
(the attack succeeds there). Nothing here fixes anything.
"""

from __future__ import annotations

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
def test_a_worker_forked_while_the_parent_flushes_its_decision_log_is_not_frozen(
    plane: FakePlane, cloud_options: Any
) -> None:
    """Attack: the fourth review closed the window between stopping the poller and
    marking the manager closed (a child now sees ``runtime.stopping`` and completes
    the shutdown). A second window remains after it: ``PolicyManager._retire`` marks
    the manager closed, *then* closes the source, flushes and closes the decision
    log (a callable sink: a SIEM, a queue; up to a 5 s join, then a flush) and closes
    the store, and only then does ``shutdown`` drop the policy. A worker forked in
    that window is skipped by both fork hooks (``manager._closed``): no poller is
    restarted, nothing completes the shutdown, and the worker enforces the copied
    policy until the bundle's ``exp``, blind to a revocation, while the parent
    denies everything. Safe: the child denies (shutdown completed) or polls (sees
    the revocation)."""
    slow = threading.Event()

    def sink(record: dict[str, Any]) -> None:  # a decision sink that is slow to answer
        if slow.is_set():
            time.sleep(3)

    manager = configure_rbac_sync(**cloud_options(decision_log=sink))
    manager.runtime.interval = 5.0  # the shortest (the fake says 30): a child polls within 5 s
    search = d2_guard("search")(lambda: "results")
    set_user("u", roles=["agent"])
    assert is_allowed("search")

    slow.set()
    assert search() == "results"  # one record queued: the flush at shutdown waits on it
    stopping = threading.Thread(target=shutdown_rbac, daemon=True)
    stopping.start()
    deadline = time.monotonic() + 10
    while not manager._closed and time.monotonic() < deadline:  # the window opens
        time.sleep(0.01)
    assert manager._closed and manager.policy is not None, "the window was not reached"

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
    stopping.join(15)
    assert status == 0, "the forked worker kept serving the copied policy with no poller"
