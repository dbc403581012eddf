"""The state file: the last verified bundle per app, so a process can start offline.

``D2_STATE_PATH`` (default ``~/.config/d2/bundles.json``; ``:memory:`` keeps
nothing). One entry per control plane and token (keyed by a digest of the base URL
and the token): the audience, the JWS, its ETag and version, and the JWKS
it verified with. Written atomically (temp file, then rename) with mode 0600.
Everything read back is verified again before use; a corrupt file is ignored with a
warning.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

__all__ = ["StateFile", "default_state_path"]

log = logging.getLogger("d2.cloud")
_FORMAT = 1


def default_state_path() -> str:
    """``D2_STATE_PATH`` or ``~/.config/d2/bundles.json``."""
    return os.environ.get("D2_STATE_PATH") or os.path.join(
        os.path.expanduser("~"), ".config", "d2", "bundles.json"
    )


class StateFile:
    """Reads and writes one state file; ``path`` ``:memory:`` keeps it in memory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._memory: dict[str, Any] = {}

    @property
    def persistent(self) -> bool:
        """False for ``:memory:``."""
        return self.path != ":memory:"

    def _read_all(self) -> dict[str, Any]:
        if not self.persistent:
            return self._memory
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("d2: ignoring unreadable state file %s: %s", self.path, type(exc).__name__)
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or not isinstance(data.get("apps"), dict)
        ):
            log.warning("d2: ignoring state file %s: unknown format", self.path)
            return {}
        apps: dict[str, Any] = data["apps"]
        return apps

    def get(self, app: str) -> dict[str, Any] | None:
        """The saved entry of ``app`` (unverified: the caller verifies it)."""
        entry = self._read_all().get(app)
        if entry is None:
            return None
        revoked = isinstance(entry, dict) and entry.get("revoked") is True
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("version"), int)
            or not (
                revoked
                or (isinstance(entry.get("jws"), str) and isinstance(entry.get("jwks"), dict))
            )
        ):
            log.warning("d2: ignoring corrupt state for %s in %s", app, self.path)
            return None
        return entry

    def put(self, app: str, entry: dict[str, Any] | None) -> None:
        """Save (or with ``None`` forget) ``app``'s entry; failures are logged, never
        raised (the policy in memory is what counts)."""
        apps = dict(self._read_all())
        if entry is None:
            apps.pop(app, None)
        else:
            apps[app] = entry
        if not self.persistent:
            self._memory = apps
            return
        try:
            self._write({"format": _FORMAT, "apps": apps})
        except OSError as exc:
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
