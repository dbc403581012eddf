"""Helpers for test suites of apps that use D2 (and D2's own).

``policy_document(*entries, **metadata)`` builds a valid document with an
``expires`` a few days ahead (local policies must expire within 7 days);
``reset()`` puts D2 back to a fresh process's state: every instance shut down, no
user, no telemetry hooks. Typical pytest use::

    @pytest.fixture(autouse=True)
    def _d2():
        yield
        d2.core.testing.reset()
"""

from __future__ import annotations

import os
import time
from typing import Any

from .context import clear_user_context
from .manager import shutdown_all_rbac

__all__ = ["expires_in", "isolate", "policy_document", "reset"]


def expires_in(seconds: float = 3 * 86400) -> str:
    """An RFC 3339 UTC time ``seconds`` from now."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def policy_document(*entries: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    """A valid policy document with ``entries`` as its ``policies``; ``metadata``
    adds to (or overrides) ``name: test-app`` and an ``expires`` three days ahead."""
    return {
        "metadata": {"name": "test-app", "expires": expires_in(), **metadata},
        "policies": list(entries),
    }


def reset() -> None:
    """Shut every instance down, clear the user, detach observers and timers."""
    from .evaluate import _evaluators

    shutdown_all_rbac()
    clear_user_context()
    for evaluator in _evaluators.values():
        evaluator._set_observers(())
        evaluator.timer = None


def isolate(monkeypatch: Any, directory: str | os.PathLike[str]) -> None:
    """For one test (``monkeypatch`` is pytest's): no ``D2_*`` variables,
    ``D2_SILENT=1``, ``HOME`` and ``XDG_CONFIG_HOME`` inside ``directory`` and the
    working directory there, so no policy file or state of the machine is read."""
    for key in list(os.environ):
        if key.startswith("D2_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("D2_SILENT", "1")
    monkeypatch.setenv("HOME", os.path.join(directory, "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", os.path.join(directory, "xdg"))
    monkeypatch.chdir(directory)
    clear_user_context()
