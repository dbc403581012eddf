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
from cloudfakes import BASE, FakePlane
from d2.core import (
    ConfigurationError,
    configure_rbac_async,
    configure_rbac_sync,
    d2_guard,
    is_allowed,
    set_user,
)

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
def test_a_forked_worker_keeps_following_the_control_plane(
    plane: FakePlane, cloud_options: Any
) -> None:
    """Attack (freeze, per worker): a pre-forking server (gunicorn --preload, a
    ``multiprocessing`` pool with fork) configures cloud mode, then forks. The poller
    runs on the ``d2-cloud`` thread, which does not survive ``fork``, and nothing
    restarts it (local mode restarts its watcher: ``_after_fork_in_child``). Each
    worker enforces the policy copied at fork until the bundle's ``exp``: a revocation
    never reaches it, and ``reload()`` waits 30 s on a loop nobody runs."""
    manager = configure_rbac_sync(**cloud_options())
    d2_guard("search")(lambda: "results")

    def child() -> bool:
        plane.fail["/v1/policy/bundle"] = (410, {})  # revoked in the control plane
        done = threading.Event()

        def reload() -> None:
            try:
                manager.reload()
            except Exception:
                pass  # a revoked policy: reload raises, and the calls deny
            done.set()

        threading.Thread(target=reload, daemon=True).start()
        if not done.wait(5):
            return False  # the worker's runtime is dead: it never polls again
        set_user("u", roles=["agent"])
        return not is_allowed("search")

    assert _in_child(child) == 0


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


def _reload_within(manager: Any, seconds: float) -> str:
    """``manager.reload()`` in a thread: ``"ok"``, ``"raised"``, or ``"hung"`` when
    it did not return within ``seconds`` (a runtime nobody runs)."""
    outcome: list[str] = []

    def run() -> None:
        try:
            manager.reload()
            outcome.append("ok")
        except Exception:
            outcome.append("raised")

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return outcome[0] if outcome else "hung"


@fork_only
def test_a_forked_worker_sees_a_new_publish_and_keeps_its_parent_polling(
    plane: FakePlane, cloud_options: Any
) -> None:
    """The child follows the control plane on a poller of its own (a new version
    reaches it) while the parent's poller, whose loop and connections the child
    inherited, keeps working after the child has polled and exited."""
    manager = configure_rbac_sync(**cloud_options())
    assert manager.policy.version == 1

    def child() -> bool:
        plane.publish(2, permissions=["search", "summarize"])
        if _reload_within(manager, 5) != "ok" or manager.policy.version != 2:
            return False
        set_user("u", roles=["agent"])
        return is_allowed("summarize") and threading.current_thread().name != "d2-cloud"

    assert _in_child(child) == 0
    assert _reload_within(manager, 5) == "ok"  # the parent's plane still serves v1
    assert manager.policy.version == 1
    plane.publish(3)
    assert _reload_within(manager, 5) == "ok" and manager.policy.version == 3


@fork_only
def test_a_fork_while_the_state_thread_is_busy_does_not_wedge_the_child(
    plane: FakePlane, cloud_options: Any, tmp_path: Path
) -> None:
    """A fork while the parent's ``d2-state`` machinery holds its lock: the child's
    first save (a revocation's tombstone) must neither wait for that lock (nobody in
    the child would release it) nor be handed to a thread that does not exist."""
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    manager = configure_rbac_sync(**cloud_options())
    state_io = manager.runtime.state_io
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with state_io._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(5)
    try:

        def child() -> bool:
            plane.fail["/v1/policy/bundle"] = (410, {})
            if _reload_within(manager, 5) != "raised":
                return False
            saved = StateFile(str(tmp_path / "state.json"), StateSeal("d2_test", BASE)).load()
            set_user("u", roles=["agent"])
            return saved is not None and saved["kind"] == "revoked" and not is_allowed("search")

        assert _in_child(child) == 0
    finally:
        release.set()
        holder.join(5)


@fork_only
async def test_an_async_app_s_forked_worker_polls_on_a_thread_of_its_own(
    plane: FakePlane, cloud_options: Any
) -> None:
    """``configure_rbac_async`` runs the poller on the app's loop, which a forked
    child does not run: there it polls on a ``d2-cloud`` thread of its own, so a
    publish and a revocation reach it and ``reload()`` works."""
    manager = await configure_rbac_async(**cloud_options())
    assert manager.policy.version == 1

    def child() -> bool:  # forked from inside the running loop, as a pool would be
        plane.publish(2)
        if _reload_within(manager, 5) != "ok" or manager.policy.version != 2:
            return False
        plane.fail["/v1/policy/bundle"] = (410, {})
        if _reload_within(manager, 5) != "raised":
            return False
        set_user("u", roles=["agent"])
        return not is_allowed("search")

    assert _in_child(child) == 0
    assert await manager.runtime.poll_once() > 0  # the parent's loop polls on
    assert manager.policy.version == 1


@fork_only
def test_a_forked_worker_whose_poller_cannot_start_denies_every_call(
    plane: FakePlane, cloud_options: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: when the child cannot start its poller, the copied policy is not
    left in force (it would never learn of a revocation); ``reload()`` says what to
    do, and shutting down does not wait on the parent's loop."""
    import d2.cloud
    from d2.core import MissingPolicyError, shutdown_rbac

    manager = configure_rbac_sync(**cloud_options())
    guarded = d2_guard("search")(lambda: "results")

    class NoThread:
        def __init__(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(d2.cloud, "_LoopThread", NoThread)

    def child() -> bool:
        set_user("u", roles=["agent"])
        if is_allowed("search"):
            return False
        try:
            guarded()
            return False
        except MissingPolicyError as exc:
            if "fork" not in str(exc):
                return False
        try:
            manager.reload()
            return False
        except ConfigurationError as exc:
            if "configure D2 again" not in str(exc):
                return False
        started = time.monotonic()
        shutdown_rbac()
        return time.monotonic() - started < 2

    assert _in_child(child) == 0
    set_user("u", roles=["agent"])
    assert guarded() == "results"  # the parent is untouched


@fork_only
def test_a_forked_worker_does_not_send_its_parent_s_usage_events_again(
    plane: FakePlane, cloud_options: Any
) -> None:
    """Events buffered in the parent at the fork are the parent's to send: a child
    sending its copy would count every one of them twice. The child sends its own."""
    from d2.core import shutdown_rbac

    configure_rbac_sync(**cloud_options())
    guarded = d2_guard("search")(lambda: "results")
    set_user("parent", roles=["agent"])
    for _ in range(3):
        guarded()

    def child() -> bool:
        set_user("child", roles=["agent"])
        guarded()
        shutdown_rbac()  # flushes the child's events to its copy of the plane
        users = [
            e["payload"]["user_id"] for e in plane.events if e["event_type"] == "authz_decision"
        ]
        return users == ["child"]

    assert _in_child(child) == 0


@fork_only
def test_a_fork_while_another_thread_configures_does_not_hang_the_child(
    tmp_path: Path,
) -> None:
    """d2-core's instance registry lock, held by another thread (a configure or a
    shutdown under way) at the fork, is renewed in the child: configuring there
    does not hang."""
    from d2.core import InMemorySource
    from d2.core import manager as core_manager
    from d2.core.testing import policy_document

    holding, release = threading.Event(), threading.Event()

    def configuring() -> None:
        with core_manager._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=configuring, daemon=True)
    holder.start()
    assert holding.wait(5)
    try:

        def child() -> bool:
            done = threading.Event()
            source = InMemorySource(policy_document({"role": "agent", "permissions": ["search"]}))
            threading.Thread(
                target=lambda: (configure_rbac_sync(source=source), done.set()), daemon=True
            ).start()
            return done.wait(5)

        assert _in_child(child) == 0
    finally:
        release.set()
        holder.join(5)


_LOGGING_LATE_SCRIPT = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import d2.core  # an app importing d2 first: d2-core's after-fork hook comes before logging's
assert "logging" not in sys.modules
import logging
from cloudfakes import BASE, Clock, FakePlane
import d2.cloud
from d2.core import configure_rbac_sync

handler = logging.StreamHandler(sys.stdout)
logging.getLogger("d2").addHandler(handler)
clock = Clock()
plane = FakePlane(clock)
configure_rbac_sync(token="d2_test", api_url=BASE, transport=plane.transport(), clock=clock,
                    state_path=sys.argv[2], first_fetch_timeout=5.0)

class NoThread:
    def __init__(self):
        raise RuntimeError("can't start new thread")

d2.cloud._LoopThread = NoThread  # the child's restart fails, and logs it
holding, release = threading.Event(), threading.Event()

def emitting():  # another thread in the middle of writing a log record at the fork
    with handler.lock:
        holding.set()
        release.wait()

threading.Thread(target=emitting, daemon=True).start()
holding.wait()
pid = os.fork()
if pid == 0:
    os._exit(0)  # the after-fork hooks returned
deadline = time.monotonic() + 10
while os.waitpid(pid, os.WNOHANG) == (0, 0):
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        release.set()
        print("the child hung in an after-fork hook", flush=True)
        sys.exit(1)
    time.sleep(0.05)
release.set()
print("child done", flush=True)
"""


@fork_only
def test_a_child_restarting_cloud_mode_never_waits_for_a_log_lock_held_at_the_fork(
    tmp_path: Path,
) -> None:
    """An app that imports d2 before ``logging``: d2-core's after-fork hook runs
    before ``logging`` renews its locks. Cloud mode's restart logs (and its poller
    logs and saves), so it runs in a hook of its own, after those of ``logging`` and
    the state file: a log handler's lock held by another thread at the fork is
    renewed before it is used."""
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(
        [sys.executable, "-c", _LOGGING_LATE_SCRIPT, tests, str(tmp_path / "state.json")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "D2_SILENT": "1"},
    )
    assert done.returncode == 0 and "child done" in done.stdout, done.stdout + done.stderr[-2000:]
