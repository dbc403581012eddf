"""Type aliases shared by the modules of the server."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Clock"]

Clock = Callable[[], float]
"""A callable returning the current time in seconds since the epoch. Every time
decision of the server (bundle ``iat``/``exp``, re-signing, rate-limit windows, key
overlap) reads it, so tests can control time."""
