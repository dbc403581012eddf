"""Policy sources for local mode: a watched file, or a document held in memory.

A source loads a policy once (``load``) and may then report changes (``watch``).
The file source polls the file's metadata from one daemon thread; a valid change is
handed over, an invalid one is logged and the policy in force stays.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, D2Error, InvalidPolicyError
from .limits import Limits
from .policy.load import (
    discover_policy_file,
    load_policy_bytes,
    load_policy_file,
    read_policy_bytes,
)
from .policy.model import CompiledPolicy

__all__ = ["InMemorySource", "LocalFileSource", "PolicySource"]


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
    between checks of the file's size and modification time; ``None`` disables
    watching.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, poll_interval: float | None = 1.0
    ) -> None:
        self._explicit = os.path.expanduser(os.fspath(path)) if path is not None else None
        self.path: str | None = self._explicit
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._raw: bytes | None = None
        self._watching: tuple[Limits, OnChange] | None = None

    def describe(self) -> str:
        """The file's path (once known)."""
        return self.path if self.path is not None else "<policy file discovery>"

    def _stat(self, path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

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
        self._stamp = self._stat(self.path)
        policy = load_policy_file(self.path, limits)
        self._raw = policy.raw
        return policy

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
        path, interval = self.path, self.poll_interval
        assert path is not None
        assert interval is not None
        pending: tuple[int, int, int] | None = None
        while not stop.wait(interval):
            stamp = self._stat(path)
            if stamp is None or stamp == self._stamp:
                pending = None
                continue
            if stamp != pending:  # changed since the last look: let the writer finish
                pending = stamp
                continue
            try:
                data = read_policy_bytes(path, limits)
                if self._stat(path) != stamp:  # written to while we read: next round
                    continue
                self._stamp, pending = stamp, None
                if data == self._raw:
                    continue
                policy = load_policy_bytes(data, path, limits)
            except D2Error as exc:
                self._stamp, pending = stamp, None
                _log().error(
                    "d2: policy file %s changed but was refused; the previous policy "
                    "stays in force. %s",
                    path,
                    exc,
                )
                continue
            except Exception:  # never let the watcher die on a surprise
                self._stamp, pending = stamp, None
                _log().exception("d2: unexpected error reloading %s; previous policy kept", path)
                continue
            self._raw = data
            if not stop.is_set():
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
