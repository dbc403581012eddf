"""Server settings and plan quotas, each validated once when built."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .types import Clock

__all__ = [
    "EVENTS_MAX_BYTES",
    "EVENT_LIMITS",
    "Quotas",
    "ServerConfig",
    "check_event_setting",
]

EVENTS_MAX_BYTES = 32 * 1024
"""Largest accepted ``POST /v1/events/ingest`` body (PROTOCOL.md: 32 KiB)."""

EVENT_LIMITS: dict[str, tuple[float, float]] = {
    "events_retention_days": (1, 36_500),
    "events_max_per_app": (1, 10**12),
    "events_max_bytes_per_app": (EVENTS_MAX_BYTES, 10**15),
    "events_prune_interval": (0.001, 7 * 86400),
    "events_prune_batch": (1, 100_000),
}
"""The accepted range of each event retention setting, inclusive. A byte cap below
one request body would delete an upload as it is stored."""

_WHOLE = frozenset(EVENT_LIMITS) - {"events_prune_interval"}


def check_event_setting(name: str, value: object) -> None:
    """``ValueError`` unless ``value`` is in the range :data:`EVENT_LIMITS` gives
    ``name`` (a whole number, except the interval in seconds)."""
    low, high = EVENT_LIMITS[name]
    whole = name in _WHOLE
    kind = "a whole number" if whole else "a number of seconds"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (whole and not isinstance(value, int))
        or not low <= value <= high  # NaN fails too
    ):
        raise ValueError(f"must be {kind} from {low} to {high}, got {value!r}")


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
    - ``events_retention_days``: usage events received longer ago are deleted.
    - ``events_max_per_app`` / ``events_max_bytes_per_app``: the most events, and
      bytes of event data (``event_type``, ``payload``, ``occurred_at`` in UTF-8),
      kept per app; an ingest beyond either is stored and the app's oldest events
      are deleted in the same transaction.
    - ``events_prune_interval``: seconds between background prune passes (one runs
      at startup); ``events_prune_batch``: the most events one delete transaction
      removes.
    - ``clock``: the time source of every decision.
    """

    poll_seconds: int = 30
    bundle_lifetime: int = 7 * 86400
    bundle_refresh: int | None = None
    ingest_burst: int = 60
    ingest_window: float = 60.0
    max_body_bytes: int = 8 * 1024 * 1024
    events_retention_days: int = 30
    events_max_per_app: int = 1_000_000
    events_max_bytes_per_app: int = 256 * 1024 * 1024
    events_prune_interval: float = 3600.0
    events_prune_batch: int = 5000
    clock: Clock = field(default=time.time)

    def __post_init__(self) -> None:
        for name in ("poll_seconds", "bundle_lifetime", "ingest_burst", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            _positive(name, value)
        _positive("ingest_window", self.ingest_window)
        for name in EVENT_LIMITS:
            try:
                check_event_setting(name, getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name} {exc}") from None
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

    @property
    def events_retention_seconds(self) -> float:
        """How long a usage event is kept, in seconds."""
        return self.events_retention_days * 86400.0
