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
warning, as if there were none; so is a file that is not format 2 JSON, or larger
than :data:`MAX_BYTES`. What is read back is a starting point only: the bundle in it
is verified again, and it never outranks the control plane (``poller.py``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from .seal import SealError, StateSeal

__all__ = ["FORMAT", "MAX_BYTES", "StateFile", "default_state_path"]

log = logging.getLogger("d2.cloud")
FORMAT = 2
MAX_BYTES = 16 * 1024 * 1024  # far above any real file: entries are a few bundles


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
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            warn("d2: ignoring unreadable state file %s: %s", self.path, type(exc).__name__)
            return {}
        if len(raw) > MAX_BYTES:
            warn("d2: ignoring state file %s: larger than %d bytes", self.path, MAX_BYTES)
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
        are kept as they are. A file in another format is replaced. Failures are
        logged, never raised (the policy in memory is what counts)."""
        entries = dict(self._read_all(quiet=True))
        if entry is None:
            entries.pop(self.seal.entry_id, None)
        else:
            entries[self.seal.entry_id] = self.seal.seal(entry)
        if not self.persistent:
            self._memory = entries
            return
        try:
            self._write({"format": FORMAT, "entries": entries})
        except (OSError, ValueError) as exc:
            log.warning("d2: could not write state file %s: %s", self.path, exc)

    def _write(self, data: dict[str, Any]) -> None:
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
