"""A per-key token-bucket rate limiter on an injectable clock.

Each key (a token hash) holds up to ``burst`` requests; the bucket refills at
``burst / window`` requests per second. A refused request learns how many seconds
to wait (sent as ``Retry-After``). Memory is bounded: when more than ``max_keys``
buckets exist, full ones (which behave like absent ones) are dropped.
"""

from __future__ import annotations

import math
import threading

from .types import Clock

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allow ``burst`` requests per ``window`` seconds per key (token bucket)."""

    def __init__(self, burst: int, window: float, clock: Clock, *, max_keys: int = 100_000) -> None:
        if burst < 1 or window <= 0:
            raise ValueError("burst must be >= 1 and window > 0")
        self._burst = float(burst)
        self._rate = burst / window  # tokens per second
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> int:
        """Take one request for ``key``: 0 when allowed, else the whole seconds to wait
        before a retry can succeed (at least 1)."""
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + max(0.0, now - updated) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                self._prune(now)
                return 0
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self._rate
            return max(1, math.ceil(wait - 1e-9))  # 1e-9: float noise, not time

    def _prune(self, now: float) -> None:
        if len(self._buckets) <= self._max_keys:
            return
        for key, (tokens, updated) in list(self._buckets.items()):
            if tokens + (now - updated) * self._rate >= self._burst:
                del self._buckets[key]
