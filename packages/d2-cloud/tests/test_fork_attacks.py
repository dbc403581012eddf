"""Attacks from the third hostile review (wt-review3) on cloud mode across fork()
and on the state file's writers' lock. Each test asserts the SAFE behaviour and
fails on the code it was written against."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cloudfakes import BASE

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
def test_a_process_forked_during_a_save_never_keeps_the_writers_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the writers' lock is an ``flock`` on ``<path>.lock``, held by the
    ``d2-state`` thread for the read-modify-write of a save. ``flock`` belongs to the
    open file description, which a child forked in that window shares (``O_CLOEXEC``
    only acts on exec): the lock then stays held for as long as the child lives, and
    every later save of every process waits ``LOCK_TIMEOUT`` and writes unlocked (two
    writers can then lose each other's entries, a tombstone included). A lock that a
    fork does not copy (``fcntl.lockf``/``F_SETLK``, or closing it in the child) is
    safe."""
    from d2.cloud import state as state_module
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    monkeypatch.setattr(state_module, "LOCK_TIMEOUT", 0.5)
    state = StateFile(str(tmp_path / "state.json"), StateSeal("d2_test", BASE))
    release_r, release_w = os.pipe()
    with state._locked():  # what the d2-state thread holds during a save
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a worker forked at that moment lives on
            os.close(release_w)
            os.read(release_r, 1)
            os._exit(0)
    os.close(release_r)
    try:
        fd = state._lock()  # the next save, once the save above is done
        if fd is not None:
            os.close(fd)
        assert fd is not None, "a forked child still holds the writers' lock"
    finally:
        os.close(release_w)
        os.waitpid(pid, 0)


@fork_only
def test_a_process_forked_while_another_thread_saves_saves_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork while another thread (a ``d2-state`` thread) is in a save copies the
    process's writers' lock held, with no thread left to release it: the child must
    renew it, or each of its saves waits ``LOCK_TIMEOUT`` and writes unlocked."""
    from d2.cloud import state as state_module
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    monkeypatch.setattr(state_module, "LOCK_TIMEOUT", 3.0)
    parent = StateFile(str(tmp_path / "parent.json"), StateSeal("d2_test", BASE))
    holding, release = threading.Event(), threading.Event()

    def save_in_progress() -> None:
        with parent._locked():
            holding.set()
            release.wait(10)

    saver = threading.Thread(target=save_in_progress, daemon=True)
    saver.start()
    assert holding.wait(5)
    try:
        entry = {
            "kind": "revoked",
            "audience": "d2-policy:acc1:app1",
            "app": "app1",
            "version": 3,
            "digest": "ab" * 32,
        }

        def child() -> bool:
            mine = StateFile(str(tmp_path / "child.json"), StateSeal("d2_test", BASE))
            started = time.monotonic()
            mine.save(entry)
            return time.monotonic() - started < 1.0 and mine.load() == entry

        assert _in_child(child) == 0
    finally:
        release.set()
        saver.join(5)
