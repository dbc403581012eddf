"""Attacks on the sealed state file (attacker: can write ``D2_STATE_PATH`` or its
folder, does not hold the runtime token), from a hostile review, kept as regression
tests: a named pipe at the path (the start hung, the poller froze), a state file
shared by two apps (a concurrent save lost a revocation tombstone), and the defences
that held (JSON tricks, a link to a huge file, entries moved between slots)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudfakes import BASE, FakePlane
from d2.cloud import state as state_module
from d2.cloud.seal import StateSeal
from d2.cloud.state import StateFile
from d2.core import (
    MissingPolicyError,
    configure_rbac_async,
    configure_rbac_sync,
    d2_guard,
    set_user,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

BUNDLE = {
    "kind": "bundle",
    "audience": "d2-policy:acc1:app1",
    "app": "app1",
    "jws": "eyJh.eyJi.c2ln",
    "version": 5,
    "digest": "ab" * 32,
    "jwks": {"keys": []},
}
TOMBSTONE = {k: BUNDLE[k] for k in ("audience", "app", "version", "digest")} | {"kind": "revoked"}


def _unblock_fifo(path: Path) -> None:
    """Release any thread stuck opening ``path`` (a FIFO) for reading."""
    for _ in range(50):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader waiting (yet)
            time.sleep(0.02)
            continue
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
async def test_a_fifo_at_the_state_path_does_not_hang_configure(
    plane: FakePlane, cloud_options: Any, tmp_path: Path
) -> None:
    """Attack: replace the state file with a named pipe. ``open()`` of a FIFO for
    reading blocks until a writer appears, and ``_restore`` awaits it with no
    timeout, so ``configure_rbac_async`` never returns (the host app hangs at
    startup; the stuck worker thread also blocks interpreter exit). A state file
    that is "not usable" is documented as ignored with a warning."""
    state = tmp_path / "state.json"
    os.mkfifo(state)
    try:
        task = asyncio.ensure_future(configure_rbac_async(**cloud_options()))
        done, _ = await asyncio.wait({task}, timeout=8)
        assert done, "configure_rbac_async hangs on a FIFO at D2_STATE_PATH"
        manager = task.result()
        assert manager.policy is not None  # the control plane answered: its bundle
    finally:
        _unblock_fifo(state)
        if not task.done():
            task.cancel()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_swapped_in_later_does_not_freeze_the_poller(
    plane: FakePlane, cloud_options: Any, tmp_path: Path
) -> None:
    """Attack (freeze): once the app runs, swap the state file for a FIFO. The next
    verified bundle is installed, then ``_save`` blocks forever in ``open()``, so
    the poll task never polled again: a later revocation (410) was never applied and
    the revoked policy kept granting until its ``exp`` (days)."""
    manager = configure_rbac_sync(**cloud_options())
    state = tmp_path / "state.json"
    os.unlink(state)
    os.mkfifo(state)
    try:
        plane.publish(2, permissions=["search", "summarize"])
        runtime = manager.runtime  # type: ignore[attr-defined]
        fut = asyncio.run_coroutine_threadsafe(runtime.poll_once(), manager._loop)  # type: ignore[attr-defined]
        try:
            fut.result(timeout=8)
        except TimeoutError:
            pytest.fail("a poll that saves the state file hangs on a FIFO: the poller is frozen")
    finally:
        _unblock_fifo(state)


def test_two_apps_sharing_the_state_file_lose_a_tombstone_to_a_concurrent_save(
    tmp_path: Path,
) -> None:
    """Attack (or plain bad luck): two apps (two tokens) share the default state file
    (``~/.config/d2/bundles.json`` holds one entry per token). ``save`` is an
    unlocked read-modify-write: app B reads the file, app A writes its revocation
    tombstone, app B writes back what it read plus its own entry. A's tombstone is
    gone and A's revoked bundle entry is back: after an offline restart A runs the
    revoked bundle until its ``exp``. (Deterministic here: A's save starts while B is
    between its read and its write, and B writes only once A's save has either
    finished, as it did before the fix, or has been blocked for half a second by the
    writers' lock.)"""
    path = str(tmp_path / "bundles.json")
    a = StateFile(path, StateSeal("token-of-app-a", BASE))
    b = StateFile(path, StateSeal("token-of-app-b", BASE))
    a.save(BUNDLE)  # A's verified bundle v5

    real_write = b._write
    revoking = threading.Thread(target=a.save, args=(TOMBSTONE,))

    def b_write_after_a_revokes(data: dict[str, Any]) -> None:
        revoking.start()  # A receives a 410 while B is between its read and its write
        revoking.join(timeout=0.5)
        real_write(data)

    b._write = b_write_after_a_revokes  # type: ignore[method-assign]
    b.save({**BUNDLE, "audience": "d2-policy:acc1:app2", "app": "app2"})
    revoking.join(timeout=10)
    assert not revoking.is_alive()
    entry = a.load()
    assert entry is not None and entry["kind"] == "revoked", (
        "app A's revocation tombstone was overwritten by app B's stale copy of the file: "
        f"A's entry is now {entry and entry['kind']} v{entry and entry['version']}"
    )


# -- defences that held (kept as regression tests) --------------------------------


def test_json_tricks_in_the_file_never_yield_or_crash(tmp_path: Path) -> None:
    """Duplicate keys (the attacker's copy last), NaN, a 5000-digit int, nesting at the
    recursion limit and a ``format: true`` (== 1) downgrade: nothing is trusted,
    nothing raises, and a later save still writes a sealed entry."""
    path = tmp_path / "bundles.json"
    file = StateFile(str(path), StateSeal("d2_test", BASE))
    file.save(BUNDLE)
    genuine = json.loads(path.read_text())["entries"][file.seal.entry_id]
    forged = {"body": json.dumps({**BUNDLE, "version": 10**9}), "mac": genuine["mac"]}
    eid = file.seal.entry_id

    def entries(inner: str) -> str:
        return '{"format":2,"entries":{' + inner + "}}"

    pair = f'"{eid}":{json.dumps(genuine)},"{eid}":{json.dumps(forged)}'
    samples = [
        entries(pair),  # duplicate key: json keeps the last, the forged one
        entries(f'"{eid}":{{"body":NaN,"mac":NaN}}'),
        entries(f'"{eid}":' + "9" * 5000),
        entries('"x":' + "[" * 990 + "]" * 990),
        entries('"x":' + "[" * 100000 + "]" * 100000),
        '{"format":true,"entries":{}}',
        '{"format":2.0,"entries":{' + f'"{eid}":{json.dumps(forged)}' + "}}",
    ]
    for text in samples:
        path.write_text(text)
        assert file.load() is None
        file.save(TOMBSTONE)
        assert file.load() == TOMBSTONE


def test_a_symlink_to_a_huge_file_is_bounded(tmp_path: Path) -> None:
    """A symlink to /dev/zero: at most MAX_BYTES + 1 are read, then ignored."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    path = tmp_path / "bundles.json"
    os.symlink("/dev/zero", path)
    file = StateFile(str(path), StateSeal("d2_test", BASE))
    assert file.load() is None
    file.save(BUNDLE)  # replaces the link itself, never writes through it
    assert not os.path.islink(path) and stat.S_ISREG(os.stat(path).st_mode)
    assert file.load() == BUNDLE


def test_an_entry_moved_between_slots_or_urls_never_opens(tmp_path: Path) -> None:
    """Copying a genuine record under another token's slot, or sealing for a URL
    that differs only by a trailing path, never opens."""
    record = StateSeal("d2_test", BASE).seal(BUNDLE)
    for seal in (StateSeal("d2_other", BASE), StateSeal("d2_test", BASE + "/v1")):
        path = tmp_path / f"f{threading.get_ident()}{id(seal)}.json"
        path.write_text(json.dumps({"format": 2, "entries": {seal.entry_id: record}}))
        assert StateFile(str(path), seal).load() is None


# -- a state file that is not a regular file, or a disk that does not answer -------


def _promptly(fn: Any, timeout: float = 8.0) -> Any:
    """``fn()`` in a thread: fails, rather than hanging the suite, if it blocks."""
    box: list[Any] = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"{fn} blocked for {timeout}s"
    return box[0]


def _make(kind: str, path: Path) -> None:
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("POSIX FIFOs")
        os.mkfifo(path)
    elif kind == "device":
        if not os.path.exists("/dev/null"):
            pytest.skip("no /dev/null")
        os.symlink("/dev/null", path)
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_path_that_is_not_a_regular_file_is_ignored_with_a_warning_then_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A pipe, a device or a directory at the path is never read (opened without
    blocking, checked with fstat) and never written through: a save replaces a pipe
    or a link with a regular file, and gives up on a directory with a warning."""
    path = tmp_path / "bundles.json"
    _make(kind, path)
    file = StateFile(str(path), StateSeal("d2_test", BASE))
    with caplog.at_level(logging.WARNING, "d2.cloud"):
        assert _promptly(file.load) is None
        assert "not a regular file" in caplog.text
        _promptly(lambda: file.save(BUNDLE))
    if kind == "directory":
        assert path.is_dir() and "could not write state file" in caplog.text
        assert [p.name for p in tmp_path.iterdir()] == ["bundles.json", "bundles.json.lock"]
    else:
        assert stat.S_ISREG(os.lstat(path).st_mode) and file.load() == BUNDLE
    if kind == "device":
        assert os.path.getsize("/dev/null") == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
async def test_an_offline_start_with_a_pipe_at_the_state_path_denies_at_once(
    plane: FakePlane, cloud_options: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Offline, the pipe holds no entry: configure returns within its timeout and
    every guarded call is denied (fail closed), with the warning saying why."""
    os.mkfifo(tmp_path / "state.json")
    plane.network_down = True
    started = time.monotonic()
    try:
        manager = await asyncio.wait_for(
            configure_rbac_async(**cloud_options(first_fetch_timeout=1.0)), 8
        )
    finally:
        _unblock_fifo(tmp_path / "state.json")
    assert time.monotonic() - started < 4
    assert manager.policy is None
    set_user("u", roles=["agent"])
    with pytest.raises(MissingPolicyError, match="cannot reach the control plane"):
        d2_guard("search")(lambda: "results")()
    assert "not a regular file" in caplog.text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_sync_app_with_a_pipe_at_the_state_path_starts_with_the_control_plane_s_bundle(
    plane: FakePlane, cloud_options: Any, tmp_path: Path
) -> None:
    """Sync apps waited first_fetch_timeout + 5 s, then got a bare TimeoutError."""
    os.mkfifo(tmp_path / "state.json")
    try:
        manager = _promptly(lambda: configure_rbac_sync(**cloud_options()))
    finally:
        _unblock_fifo(tmp_path / "state.json")
    assert manager.policy is not None and manager.policy.version == 1
    assert stat.S_ISREG(os.lstat(tmp_path / "state.json").st_mode)  # replaced, not written


def _poll(manager: Any, timeout: float = 8.0) -> None:
    runtime = manager.runtime
    asyncio.run_coroutine_threadsafe(runtime.poll_once(), manager._loop).result(timeout)


def _saved(path: Path) -> dict[str, Any] | None:
    return StateFile(str(path), StateSeal("d2_test", BASE)).load()


def test_a_save_that_never_returns_does_not_stop_the_poller_and_the_newest_entry_wins(
    plane: FakePlane,
    cloud_options: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A disk that does not answer (a hung network mount; simulated by a write that
    waits for an event): the poll that saves gives up after SAVE_TIMEOUT and the
    poller goes on, so a later revocation is applied at once; when the disk answers,
    the tombstone is what ends up in the file, never the older bundle."""
    from d2.cloud import poller

    manager = configure_rbac_sync(**cloud_options())
    path = tmp_path / "state.json"
    disk = threading.Event()
    write = StateFile._write

    def hung_write(self: StateFile, data: dict[str, Any]) -> None:
        disk.wait(30)
        write(self, data)

    monkeypatch.setattr(poller, "SAVE_TIMEOUT", 0.3)
    monkeypatch.setattr(StateFile, "_write", hung_write)
    try:
        plane.publish(2, permissions=["search", "summarize"])
        started = time.monotonic()
        _poll(manager)
        assert time.monotonic() - started < 3
        assert manager.policy is not None and manager.policy.version == 2
        plane.fail["/v1/policy/bundle"] = (410, {})
        started = time.monotonic()
        _poll(manager)
        assert time.monotonic() - started < 1  # behind a stuck write: not waited for
        assert manager.policy is None
        entry = _saved(path)
        assert entry is not None and entry["version"] == 1  # the disk has not answered
        assert "did not finish within 0.3s" in caplog.text
    finally:
        disk.set()
    deadline = time.monotonic() + 8
    while manager.runtime.state_io._running and time.monotonic() < deadline:
        time.sleep(0.02)
    entry = _saved(path)
    assert entry is not None and (entry["kind"], entry["version"]) == ("revoked", 2)


@pytest.mark.parametrize("online", [True, False])
async def test_a_state_file_read_that_never_returns_does_not_hold_up_the_start(
    plane: FakePlane, cloud_options: Any, monkeypatch: pytest.MonkeyPatch, online: bool
) -> None:
    """The read gets half of first_fetch_timeout: online, the first fetch still has
    the other half (each request of this control plane takes 0.2 s) and its bundle is
    in force; offline, every call is denied. configure returns either way."""
    disk = threading.Event()

    def hung_load(self: StateFile) -> None:
        disk.wait(30)

    monkeypatch.setattr(StateFile, "load", hung_load)
    plane.network_down = not online
    plane.delay = 0.2
    started = time.monotonic()
    try:
        manager = await asyncio.wait_for(
            configure_rbac_async(**cloud_options(first_fetch_timeout=2.0)), 8
        )
    finally:
        disk.set()
    assert time.monotonic() - started < 4
    assert (manager.policy is not None) is online


_EXIT_SCRIPT = """
import asyncio, sys, threading
sys.path.insert(0, sys.argv[1])
from cloudfakes import BASE, Clock, FakePlane
from d2.cloud import poller
from d2.cloud.state import StateFile
from d2.core import configure_rbac_async, configure_rbac_sync, shutdown_all_rbac

poller.SAVE_TIMEOUT = 0.5
StateFile._write = lambda self, data: threading.Event().wait()  # a disk that never answers
clock = Clock()
plane = FakePlane(clock)
options = dict(token="d2_test", api_url=BASE, transport=plane.transport(), clock=clock,
               state_path=sys.argv[2], first_fetch_timeout=5.0)

async def main():
    manager = await configure_rbac_async(**options)
    assert manager.policy is not None
    await manager.ashutdown()

if sys.argv[3] == "async":
    asyncio.run(main())
else:
    assert configure_rbac_sync(**options).policy is not None
    shutdown_all_rbac()
print("exited cleanly", flush=True)
"""


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_state_write_that_never_returns_does_not_block_the_app_or_its_exit(
    tmp_path: Path, mode: str
) -> None:
    """A real interpreter: configure returns, the app shuts down and the process
    exits, although the state write it started never returns (before: the async app
    hung in configure, the sync one raised a TimeoutError, and a thread stuck in the
    loop's default executor held up ``asyncio.run``'s exit)."""
    tests = os.path.dirname(os.path.abspath(__file__))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, tests, str(tmp_path / "state.json"), mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "D2_SILENT": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exited cleanly" in done.stdout
    assert time.monotonic() - started < 30


# -- concurrent writers -------------------------------------------------------------


def _hold_the_lock_in_another_process(lock_path: str) -> Callable[[], None]:
    """A forked process takes the writers' record lock and keeps it until the
    returned function is called (a record lock is the process's: the holder must be
    another process)."""
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the holder
        try:
            os.close(ready_r)
            os.close(release_w)  # else its read below never sees the end of the pipe
            fd = os.open(lock_path, os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(ready_w, b"1")
            os.read(release_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(release_r)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)

    def release() -> None:
        os.close(release_w)
        os.waitpid(pid, 0)

    return release


@pytest.mark.skipif(fcntl is None, reason="no fcntl: saves are not locked (documented)")
def test_a_writer_holding_the_lock_too_long_does_not_stop_a_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock is waited for at most LOCK_TIMEOUT: past that the save goes on,
    unlocked, with a warning (a process stuck holding it cannot stop revocations
    from being saved)."""
    monkeypatch.setattr(state_module, "LOCK_TIMEOUT", 0.2)
    path = tmp_path / "bundles.json"
    file = StateFile(str(path), StateSeal("d2_test", BASE))
    file.save(BUNDLE)
    holder = _hold_the_lock_in_another_process(file.lock_path)
    try:
        started = time.monotonic()
        _promptly(lambda: file.save(TOMBSTONE))
        assert time.monotonic() - started < 2
    finally:
        holder()
    assert file.load() == TOMBSTONE
    assert "without its lock" in caplog.text and "held it for 0.2s" in caplog.text


@pytest.mark.skipif(fcntl is None, reason="no fcntl: saves are not locked (documented)")
def test_the_lock_file_is_private_and_a_link_in_its_place_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bundles.json"
    file = StateFile(str(path), StateSeal("d2_test", BASE))
    file.save(BUNDLE)
    assert stat.S_IMODE(os.stat(file.lock_path).st_mode) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.unlink(file.lock_path)
    os.symlink(victim, file.lock_path)
    file.save(TOMBSTONE)
    assert file.load() == TOMBSTONE and victim.read_text() == "keep"
    assert stat.S_IMODE(os.stat(victim).st_mode) != 0 and "without its lock" in caplog.text


_WRITER_SCRIPT = """
import sys
from d2.cloud.seal import StateSeal
from d2.cloud.state import StateFile

path, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
file = StateFile(path, StateSeal(token, "http://127.0.0.1:9"))
base = {"audience": "d2-policy:acc1:" + token, "app": token, "digest": "ab" * 32}
for version in range(1, n + 1):
    if version % 2:
        entry = {**base, "kind": "revoked", "version": version}
    else:
        entry = {**base, "kind": "bundle", "version": version, "jws": "a.b.c",
                 "jwks": {"keys": []}}
    file.save(entry)
    mine = file.load()
    if mine != entry:
        print(f"lost: saved v{version} {entry['kind']}, read back {mine}", flush=True)
        sys.exit(1)
"""


@pytest.mark.skipif(fcntl is None, reason="no fcntl: saves are not locked (documented)")
def test_processes_sharing_one_state_file_never_lose_each_other_s_entries(
    tmp_path: Path,
) -> None:
    """Three processes (three tokens) save into one file as fast as they can; each
    reads its own entry back after every save. Unlocked, a save of one process
    wrote back another's stale entry (a tombstone turned back into a bundle)."""
    path = str(tmp_path / "bundles.json")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_SCRIPT, path, f"app{i}", "60"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outputs = [w.communicate(timeout=90)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], outputs
    entries = json.loads(Path(path).read_text())["entries"]
    assert len(entries) == 3


@pytest.mark.skipif(fcntl is None, reason="no fcntl: saves are not locked (documented)")
def test_threads_of_one_process_sharing_one_state_file_never_lose_each_other_s_entries(
    tmp_path: Path,
) -> None:
    """Three instances of one process (three tokens, each saving from a thread of its
    own, as their ``d2-state`` threads do) save into one file. The writers' record
    lock is the process's, so it alone would let all three in at once: saves of one
    process take turns on a lock of the process as well."""
    path = str(tmp_path / "bundles.json")
    lost: list[str] = []

    def writer(token: str) -> None:
        file = StateFile(path, StateSeal(token, BASE))
        base = {"audience": "d2-policy:acc1:" + token, "app": token, "digest": "ab" * 32}
        for version in range(1, 41):
            kind = "revoked" if version % 2 else "bundle"
            entry: dict[str, Any] = {**base, "kind": kind, "version": version}
            if kind == "bundle":
                entry |= {"jws": "a.b.c", "jwks": {"keys": []}}
            file.save(entry)
            if file.load() != entry:
                lost.append(f"{token} v{version}")

    threads = [threading.Thread(target=writer, args=(f"app{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not lost, lost
    assert len(json.loads(Path(path).read_text())["entries"]) == 3
