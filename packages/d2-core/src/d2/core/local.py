"""Policy sources for local mode: a watched file, or a document held in memory.

A source loads a policy once (``load``) and may then report changes (``watch``).
The file source reads the file from one daemon thread at each poll; a change is
handed over once the same content was read at several consecutive checks and it
loads (a half-written file never is), an invalid one is logged and the policy in
force stays.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, D2Error, InvalidPolicyError
from .limits import Limits
from .policy.load import (
    discover_policy_file,
    load_policy_bytes,
    read_policy_bytes,
)
from .policy.model import CompiledPolicy

__all__ = ["InMemorySource", "LocalFileSource", "PolicySource"]

_SETTLE_LIMIT = 10  # stability windows a starting process waits for a file still written


def _log() -> Any:
    import logging  # only when there is something to say

    return logging.getLogger("d2")


OnChange = Callable[[CompiledPolicy], None]


@runtime_checkable
class PolicySource(Protocol):
    """Where a local-mode policy comes from (the test seam: swap in
    :class:`InMemorySource`)."""

    def describe(self) -> str:
        """Where the policy comes from, for logs (a path or ``<memory>``)."""
        ...

    def load(self, limits: Limits) -> CompiledPolicy:
        """Load and compile the policy now; raise a :class:`D2Error` when it is bad."""
        ...

    def watch(self, limits: Limits, on_change: OnChange) -> None:
        """Start reporting valid changes to ``on_change`` (may do nothing)."""
        ...

    def close(self) -> None:
        """Stop watching; idempotent."""
        ...


class LocalFileSource:
    """A policy file, re-read when it changes.

    ``path``: the file (default: discovery, see
    :func:`~d2.core.policy.load.discover_policy_file`). ``poll_interval``: seconds
    between checks of the file; ``None`` disables watching. ``stable_checks``: how
    many consecutive checks must read the same content (SHA-256) before a change is
    put in force (at least 2; the default 3 means unchanged for two poll intervals),
    so a slow write in place is not loaded half-written. The content must then also
    parse and compile. The first load follows the same rule when the file was
    modified within that window (a process started during a write waits for it to
    end). A deleted file is logged once; the policy in force stays until its
    ``expires``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        poll_interval: float | None = 1.0,
        stable_checks: int = 3,
    ) -> None:
        if poll_interval is not None and not poll_interval > 0:
            raise ConfigurationError(
                f"poll_interval must be a positive number of seconds or None, got {poll_interval!r}"
            )
        if (
            isinstance(stable_checks, bool)
            or not isinstance(stable_checks, int)
            or stable_checks < 2
        ):
            raise ConfigurationError(
                f"stable_checks must be an integer of at least 2, got {stable_checks!r}: one "
                "check cannot tell a finished write from one still going on"
            )
        self._explicit = os.path.expanduser(os.fspath(path)) if path is not None else None
        self.path: str | None = self._explicit
        self.poll_interval = poll_interval
        self.stable_checks = stable_checks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watching: tuple[Limits, OnChange] | None = None
        # the watcher's state (only its thread writes it, but for load())
        self._digest: bytes | None = None  # SHA-256 of the content in force
        self._expires: float | None = None  # its expiry, for the deletion warning
        self._candidate: bytes | None = None  # content read at the last checks...
        self._seen = 0  # ...at this many consecutive checks
        self._refused: bytes | None = None  # content already refused (logged once)
        self._gone = False  # the file is missing (warned once)

    def describe(self) -> str:
        """The file's path (once known)."""
        return self.path if self.path is not None else "<policy file discovery>"

    def load(self, limits: Limits) -> CompiledPolicy:
        """Find (unless given) and load the file."""
        if self._explicit is None:
            self.path = discover_policy_file()
        elif not os.path.exists(self._explicit):
            from .errors import MissingPolicyError

            raise MissingPolicyError(
                f"policy file {self._explicit!r} does not exist; check the path",
                reason="missing_policy",
            )
        assert self.path is not None
        policy = load_policy_bytes(self._settled_bytes(limits), self.path, limits)
        self._digest, self._expires = _sha256(policy.raw), policy.expires_at
        self._candidate, self._seen, self._gone = None, 0, False
        return policy

    def _settled_bytes(self, limits: Limits) -> bytes:
        """The file's content once no write is going on: at once when it was last
        modified longer ago than the watcher's stability window; else read again at
        each poll interval until the same content was read ``stable_checks`` times
        in a row (a process started during a slow write never loads the prefix).
        A file that keeps changing for ``_SETTLE_LIMIT`` windows is refused."""
        assert self.path is not None
        interval = self.poll_interval or 1.0
        window = interval * (self.stable_checks - 1)
        data = read_policy_bytes(self.path, limits)
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except OSError:
            age = 0.0
        if age > window:  # also true of a file written a moment ago, then left alone
            return data
        digest, seen = _sha256(data), 1
        deadline = time.monotonic() + window * _SETTLE_LIMIT
        while seen < self.stable_checks:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"policy file {self.path!r} kept changing for {window * _SETTLE_LIMIT:g} s; "
                    "write it atomically (a temporary file renamed over it), then configure again"
                )
            time.sleep(interval)
            data = read_policy_bytes(self.path, limits)
            now = _sha256(data)
            digest, seen = now, (seen + 1 if now == digest else 1)
        return data

    def watch(self, limits: Limits, on_change: OnChange) -> None:
        """Poll the file from a daemon thread until :meth:`close`. One source
        serves one instance: watching it twice at once is a configuration error."""
        if self._thread is not None and self._thread.is_alive():
            raise ConfigurationError(
                f"{self.describe()} is already watched by another D2 instance; give each "
                "instance its own LocalFileSource"
            )
        self._watching = (limits, on_change)
        if self.poll_interval is None or self.path is None:
            return
        self._stop = threading.Event()  # a closed source can be watched again
        self._thread = threading.Thread(
            target=self._run,
            args=(self._stop, limits, on_change),
            name=f"d2-watch:{os.path.basename(self.path)}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, stop: threading.Event, limits: Limits, on_change: OnChange) -> None:
        interval = self.poll_interval
        assert interval is not None
        while not stop.wait(interval):
            try:
                self._check(limits, on_change, stop)
            except Exception:  # never let the watcher die on a surprise
                self._candidate, self._seen = None, 0
                _log().exception(
                    "d2: unexpected error checking %s; the policy in force stays", self.path
                )

    def _check(
        self, limits: Limits, on_change: OnChange, stop: threading.Event | None = None
    ) -> None:
        """One check: read the file; put its content in force once the same content
        was read at ``stable_checks`` consecutive checks and it loads."""
        path = self.path
        assert path is not None
        data: bytes | None = None
        try:
            data = read_policy_bytes(path, limits)
        except D2Error as exc:
            if not os.path.lexists(path):
                self._candidate, self._seen = None, 0
                if not self._gone:
                    self._gone = True
                    _log().warning(
                        "d2: policy file %s was deleted; the policy loaded from it stays in "
                        "force until it expires (%s), then every guarded call is refused "
                        "(policy_expired). Restore the file to change the policy",
                        path,
                        _when(self._expires),
                    )
                return
            problem: D2Error | None = exc  # unreadable, too large, not a regular file
        else:
            problem = None
        if self._gone:
            self._gone = False
            _log().info("d2: policy file %s is back; it loads once it is stable", path)
        # a file that cannot be read is judged like content: its error, once stable
        digest = _sha256(data if data is not None else b"\0" + str(problem).encode())
        if digest == self._digest:  # back to (or still) the content in force
            self._candidate, self._seen = None, 0
            return
        if digest == self._candidate:
            self._seen += 1
        else:
            self._candidate, self._seen = digest, 1
        if self._seen < self.stable_checks or digest == self._refused:
            return
        try:
            if problem is not None:
                raise problem
            assert data is not None
            policy = load_policy_bytes(data, path, limits)
        except D2Error as exc:
            self._refused = digest
            _log().error(
                "d2: policy file %s changed but was refused; the previous policy stays in "
                "force. %s",
                path,
                exc,
            )
            return
        self._digest, self._expires = digest, policy.expires_at
        self._candidate, self._seen, self._refused = None, 0, None
        if stop is None or not stop.is_set():
            _log().info("d2: reloaded policy %s", path)
            on_change(policy)

    def restart_after_fork(self) -> None:
        """In a forked child: the watcher thread did not survive the fork; start a
        new one so the child keeps following the file."""
        self._thread = None
        if self._watching is not None and not self._stop.is_set():
            self.watch(*self._watching)

    def close(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()
        self._watching = None
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _when(expires: float | None) -> str:
    if expires is None:
        return "unknown"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))


def _dates(value: object) -> str:
    import datetime as dt

    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not allowed in a policy document")


class InMemorySource:
    """A policy document held in memory (tests, embedded policies).

    ``document`` is a mapping, or JSON/YAML text. :meth:`update` swaps in a new
    document (raising, and keeping the old policy, when it is invalid).
    """

    def __init__(
        self, document: Mapping[str, Any] | str | bytes, *, name: str = "<memory>"
    ) -> None:
        self.name = name
        self._document = document
        self._limits: Limits | None = None
        self._on_change: OnChange | None = None

    def describe(self) -> str:
        """The source's name."""
        return self.name

    def _compile(self, document: Mapping[str, Any] | str | bytes, limits: Limits) -> CompiledPolicy:
        if isinstance(document, (str, bytes)):
            data = document.encode() if isinstance(document, str) else document
        else:
            try:
                data = json.dumps(document, separators=(",", ":"), default=_dates).encode()
            except (TypeError, ValueError) as exc:
                raise InvalidPolicyError(
                    self.name, [f"<root>: not a JSON-like document: {exc}"]
                ) from None
        return load_policy_bytes(data, self.name, limits)

    def load(self, limits: Limits) -> CompiledPolicy:
        """Compile the held document."""
        self._limits = limits
        return self._compile(self._document, limits)

    def watch(self, limits: Limits, on_change: OnChange) -> None:
        """Remember where :meth:`update` reports to (one instance per source)."""
        if self._on_change is not None:
            raise ConfigurationError(
                f"{self.name} already serves another D2 instance; give each instance its "
                "own InMemorySource"
            )
        self._limits = limits
        self._on_change = on_change

    def update(self, document: Mapping[str, Any] | str | bytes) -> CompiledPolicy:
        """Compile ``document`` and, if valid, put it in force."""
        policy = self._compile(document, self._limits or Limits())
        self._document = document
        if self._on_change is not None:
            self._on_change(policy)
        return policy

    def close(self) -> None:
        """Stop reporting updates."""
        self._on_change = None
