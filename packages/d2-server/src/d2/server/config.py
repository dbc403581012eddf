"""Server settings and plan quotas, each validated once when built."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .types import Clock

__all__ = ["EVENTS_MAX_BYTES", "Quotas", "ServerConfig"]

EVENTS_MAX_BYTES = 32 * 1024
"""Largest accepted ``POST /v1/events/ingest`` body (PROTOCOL.md: 32 KiB)."""


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Quotas:
    """The plan of an account and the limits it sets.

    ``max_tools``, ``bundle_size_bytes``, ``event_batch`` and ``ingest_interval`` are
    reported by ``GET /v1/accounts/me``; ``max_apps`` (apps with a policy in force)
    is enforced on publish (403 ``quota_apps_exceeded``) but not reported, because
    PROTOCOL.md lists the reported keys exactly.
    """

    plan: str = "self-hosted"
    max_tools: int = 10_000
    bundle_size_bytes: int = 512 * 1024
    event_batch: int = 500
    ingest_interval: int = 10
    max_apps: int = 100

    def __post_init__(self) -> None:
        if not self.plan or not isinstance(self.plan, str):
            raise ValueError("plan must be a non-empty string")
        for name in (
            "max_tools",
            "bundle_size_bytes",
            "event_batch",
            "ingest_interval",
            "max_apps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            _positive(name, value)

    def reported(self) -> dict[str, int]:
        """The ``quotas`` object of ``GET /v1/accounts/me``."""
        return {
            "max_tools": self.max_tools,
            "bundle_size_bytes": self.bundle_size_bytes,
            "event_batch": self.event_batch,
            "ingest_interval": self.ingest_interval,
        }


@dataclass(frozen=True)
class ServerConfig:
    """How a running server behaves.

    - ``poll_seconds``: sent as ``X-D2-Poll-Seconds`` and in ``/v1/accounts/me``.
    - ``bundle_lifetime``: ``exp - iat`` of every bundle, in seconds.
    - ``bundle_refresh``: once a served bundle is this old, the next
      ``GET /v1/policy/bundle`` re-signs the same version with fresh ``iat``/``exp``
      (default: half the lifetime), so a polling client never reaches ``exp``.
    - ``ingest_burst`` requests per token per ``ingest_window`` seconds are accepted by
      ``POST /v1/events/ingest`` (a token bucket); beyond that, 429 + ``Retry-After``.
    - ``max_body_bytes``: a request declaring a bigger body is refused (413) unread.
    - ``clock``: the time source of every decision.
    """

    poll_seconds: int = 30
    bundle_lifetime: int = 7 * 86400
    bundle_refresh: int | None = None
    ingest_burst: int = 60
    ingest_window: float = 60.0
    max_body_bytes: int = 8 * 1024 * 1024
    clock: Clock = field(default=time.time)

    def __post_init__(self) -> None:
        for name in ("poll_seconds", "bundle_lifetime", "ingest_burst", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            _positive(name, value)
        _positive("ingest_window", self.ingest_window)
        if self.bundle_refresh is not None:
            _positive("bundle_refresh", self.bundle_refresh)
            if self.bundle_refresh >= self.bundle_lifetime:
                raise ValueError(
                    "bundle_refresh must be shorter than bundle_lifetime, or polling "
                    "clients would hold expired bundles"
                )

    @property
    def refresh_after(self) -> int:
        """Age (seconds) after which a served bundle is re-signed."""
        if self.bundle_refresh is not None:
            return self.bundle_refresh
        return max(1, self.bundle_lifetime // 2)
