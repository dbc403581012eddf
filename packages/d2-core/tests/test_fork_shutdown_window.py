"""A worker forked while its parent shuts local mode down (review5, local twin of
d2-cloud's ``test_a_worker_forked_while_the_parent_flushes_its_decision_log_is_not_frozen``)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from d2.core import configure_rbac_sync, d2_guard, is_allowed, set_user, shutdown_rbac
from d2.core.testing import policy_document

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@fork_only
def test_a_worker_forked_while_local_mode_shuts_down_denies(tmp_path: Path) -> None:
    """The parent's manager is closed (its watcher stopping, its decision log
    flushing into a slow sink) but the policy is not yet dropped when a worker is
    forked. Nothing in the child would finish that shutdown or follow the file (no
    watcher is restarted for a closed manager): the child completes the shutdown
    and denies, rather than enforcing a frozen copy of the policy."""
    import json

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy_document({"role": "agent", "permissions": ["search"]})))
    slow = threading.Event()

    def sink(record: dict[str, Any]) -> None:
        if slow.is_set():
            time.sleep(3)

    manager = configure_rbac_sync(source=str(path), decision_log=sink)
    search = d2_guard("search")(lambda: "results")
    set_user("u", roles=["agent"])
    assert is_allowed("search")
    slow.set()
    assert search() == "results"  # one record queued: the flush at shutdown waits on it
    stopping = threading.Thread(target=shutdown_rbac, daemon=True)
    stopping.start()
    deadline = time.monotonic() + 10
    while not manager._closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager._closed and manager.policy is not None, "the window was not reached"

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            set_user("u", roles=["agent"])
            code = 0 if not is_allowed("search") else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    stopping.join(15)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked worker kept the frozen policy"
