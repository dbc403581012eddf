"""The state file: the last verified bundle of an app, so a process can start offline.

``D2_STATE_PATH`` (default ``~/.config/d2/bundles.json``; ``:memory:`` keeps
nothing). Written atomically (temp file, ``fsync``, rename) with mode 0600::

    {"format": 2, "entries": {"<entry id>": {"body": "<JSON text>", "mac": "<tag>"}}}

One entry per token and control plane, sealed by :class:`~d2.cloud.seal.StateSeal`
(an HMAC keyed by the token; the id is keyed by it too). Its body is one of:

- ``{"kind": "bundle", "audience", "app", "jws", "version", "digest", "jwks"}``: the
  last bundle verified from the control plane, still signed, and the keys it was
  verified with;
- ``{"kind": "revoked", "audience", "app", "version", "digest"}``: a tombstone, after
  a ``410``.

Trust: an entry whose seal does not check (altered, another token's, another control
plane's, or written by the format-1 code, which had no seal) is ignored with a
warning, as if there were none; so is a file that is not format 2 JSON, larger than
:data:`MAX_BYTES`, or not a regular file (a named pipe, a device, a directory: it
is opened without blocking and never read). What is read back is a starting point
only: the bundle in it is verified again, and it never outranks the control plane
(``poller.py``).

Writers: a save is a read-modify-write of the whole file (other tokens' entries are
kept), so it holds the writers' lock for that read, change and rename: two processes
sharing the file cannot lose each other's entries. The lock is a POSIX record lock
(``fcntl.lockf``) on ``<path>.lock`` beside the file (created 0600, never removed),
taken under a lock of the process (one thread of a process saves at a time). A
record lock belongs to the process that took it: a child forked while a save holds
it does not hold it (an ``flock`` would be shared with the child, which would keep
it for as long as it lives), and the process lock is renewed in the child. The lock
is waited for at most :data:`LOCK_TIMEOUT` seconds; past that, or where it cannot be
taken (no ``fcntl``, as on Windows; a lock path that is not a regular file), the
save goes on unlocked with a warning. Nothing is ever written through the path: a
temporary file in the same folder replaces it. Readers need no lock (the rename is
atomic).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .seal import SealError, StateSeal

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: saves are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT", "LOCK_TIMEOUT", "MAX_BYTES", "StateFile", "default_state_path"]

log = logging.getLogger("d2.cloud")
FORMAT = 2
MAX_BYTES = 16 * 1024 * 1024  # far above any real file: entries are a few bundles
LOCK_TIMEOUT = 5.0
"""Seconds a save waits for another writer's lock (held for milliseconds)."""
# never block opening a pipe, never become a terminal's controlling process
_OPEN_FLAGS = os.O_NONBLOCK | os.O_NOCTTY if os.name == "posix" else 0
_OPEN_FLAGS |= getattr(os, "O_CLOEXEC", 0)
# One save at a time per process, across every StateFile: POSIX record locks are the
# process's, so two threads would both "hold" one, and closing any descriptor of the
# lock file drops the process's lock. Renewed in a forked child (see below).
_writers = threading.Lock()
_held: set[int] = set()  # descriptors of lock files held now (closed in a forked child)


class _Unusable(Exception):
    """The state file is there but cannot be used (the message says why)."""


def default_state_path() -> str:
    """``D2_STATE_PATH`` or ``~/.config/d2/bundles.json``."""
    return os.environ.get("D2_STATE_PATH") or os.path.join(
        os.path.expanduser("~"), ".config", "d2", "bundles.json"
    )


def _entry_problem(entry: dict[str, Any]) -> str | None:
    """Why an opened entry has not the shape of a bundle or a tombstone (or None)."""
    kind, version = entry.get("kind"), entry.get("version")
    if kind not in ("bundle", "revoked"):
        return f"unknown kind {str(kind)[:40]!r}"
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return "no valid version"
    for name in ("audience", "app", "digest") + (("jws",) if kind == "bundle" else ()):
        if not isinstance(entry.get(name), str):
            return f"no {name}"
    if kind == "bundle":
        jwks = entry.get("jwks")
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            return "no jwks"
    return None


class StateFile:
    """Reads and writes the entry of one token and control plane (``seal`` says
    which, and checks it) in the file at ``path``; ``:memory:`` keeps it in memory."""

    def __init__(self, path: str, seal: StateSeal) -> None:
        self.path = path
        self.seal = seal
        self._memory: dict[str, Any] = {}

    @property
    def persistent(self) -> bool:
        """False for ``:memory:``."""
        return self.path != ":memory:"

    def _read_all(self, *, quiet: bool = False) -> dict[str, Any]:
        """The records of every entry in the file; ``{}`` when it is missing or not
        usable (with a warning unless ``quiet``)."""
        if not self.persistent:
            return self._memory
        warn = (lambda *args: None) if quiet else log.warning
        try:
            raw = self._read_bytes()
        except FileNotFoundError:
            return {}
        except _Unusable as exc:
            warn("d2: ignoring state file %s: %s", self.path, exc)
            return {}
        except OSError as exc:
            warn("d2: ignoring unreadable state file %s: %s", self.path, type(exc).__name__)
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            warn("d2: ignoring unreadable state file %s: %s", self.path, type(exc).__name__)
            return {}
        if isinstance(data, dict) and data.get("format") == 1:
            warn(
                "d2: ignoring state file %s: written by an older d2 without integrity "
                "protection, so not trusted; it is rewritten at the next verified fetch",
                self.path,
            )
            return {}
        if not (
            isinstance(data, dict)
            and data.get("format") == FORMAT
            and isinstance(data.get("entries"), dict)
        ):
            warn("d2: ignoring state file %s: unknown format", self.path)
            return {}
        entries: dict[str, Any] = data["entries"]
        return entries

    def _read_bytes(self) -> bytes:
        """The file's bytes; :class:`_Unusable` when it is not a regular file or is
        larger than :data:`MAX_BYTES` (then it is not read). Opening never blocks
        (``O_NONBLOCK``: a named pipe with no writer would hold ``open`` forever)."""
        too_large = _Unusable(f"larger than {MAX_BYTES} bytes")
        fd = os.open(self.path, os.O_RDONLY | _OPEN_FLAGS)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _Unusable("not a regular file (a pipe, a device or a directory)")
            if info.st_size > MAX_BYTES:
                raise too_large
            fh = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with fh:
            raw = fh.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:  # it grew while being read
            raise too_large
        return raw

    def load(self) -> dict[str, Any] | None:
        """Our entry, once its seal and shape are checked; ``None`` when there is
        none or it is not trusted (logged as a warning). Never raises."""
        record = self._read_all().get(self.seal.entry_id)
        if record is None:
            return None
        try:
            entry = self.seal.open(record)
        except SealError as exc:
            log.warning("d2: ignoring the saved entry in %s: %s", self.path, exc)
            return None
        problem = _entry_problem(entry)
        if problem is not None:
            log.warning("d2: ignoring the saved entry in %s: %s", self.path, problem)
            return None
        return entry

    def save(self, entry: dict[str, Any] | None) -> None:
        """Seal and save our entry (``None`` forgets it); other entries of the file
        are kept as they are, under an exclusive lock (see the module's docstring). A
        file in another format, or that is not a regular file, is replaced. Failures
        are logged, never raised (the policy in memory is what counts)."""
        record = None if entry is None else self.seal.seal(entry)
        if not self.persistent:
            self._memory = self._changed(self._memory, record)
            return
        try:
            with self._locked():
                entries = self._changed(self._read_all(quiet=True), record)
                self._write({"format": FORMAT, "entries": entries})
        except (OSError, ValueError) as exc:
            log.warning("d2: could not write state file %s: %s", self.path, exc)

    def _changed(self, entries: dict[str, Any], record: Any) -> dict[str, Any]:
        out = dict(entries)
        if record is None:
            out.pop(self.seal.entry_id, None)
        else:
            out[self.seal.entry_id] = record
        return out

    @property
    def lock_path(self) -> str:
        """The lock file of writers: ``<path>.lock``."""
        return self.path + ".lock"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the writers' lock (or go on without it, with a warning, when it cannot
        be had within :data:`LOCK_TIMEOUT`)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        writers = _writers  # the one released below, even if a fork renews the global
        if not writers.acquire(timeout=LOCK_TIMEOUT):
            log.warning(
                "d2: saving state file %s without its lock: another save of this process "
                "held it for %gs",
                self.path,
                LOCK_TIMEOUT,
            )
            yield
            return
        try:
            fd = self._lock() if fcntl is not None else None
            if fd is not None:
                _held.add(fd)
            try:
                yield
            finally:
                if fd is not None and fd in _held:  # else a fork closed it (the child)
                    _held.discard(fd)
                    os.close(fd)  # releases the lock
        finally:
            writers.release()

    def _lock(self) -> int | None:
        """Open ``<path>.lock`` and take the record lock on it (waiting at most
        :data:`LOCK_TIMEOUT`); its descriptor (closing it releases the lock), or
        ``None`` with a warning. Callers hold the process's writers' lock."""
        flags = os.O_RDWR | os.O_CREAT | _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError as exc:
            log.warning(
                "d2: saving state file %s without its lock: cannot open %s: %s",
                self.path,
                self.lock_path,
                type(exc).__name__,
            )
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{self.lock_path} is not a regular file")
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        raise OSError(f"another writer held it for {LOCK_TIMEOUT:g}s") from None
                    time.sleep(0.01)
        except OSError as exc:
            os.close(fd)
            log.warning(
                "d2: saving state file %s without its lock (%s): %s",
                self.path,
                self.lock_path,
                exc,
            )
            return None

    def _write(self, data: dict[str, Any]) -> None:
        """Replace the file whole: a new file in the same folder, then a rename over
        the path (which never writes through a pipe, a device or a link there)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bundles.", dir=folder)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _after_fork_in_child() -> None:
    """A forked child holds none of its parent's locks: a record lock is not copied
    by ``fork``, and the process lock is renewed (a save running in another thread at
    the fork would otherwise leave it held for good). Descriptors of lock files held
    at the fork are closed (the child never took their lock)."""
    global _writers
    _writers = threading.Lock()
    for fd in list(_held):
        _held.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
