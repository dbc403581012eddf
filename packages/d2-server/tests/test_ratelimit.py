"""The per-token rate limiter on a fake clock."""

from __future__ import annotations

import pytest
from d2.server.ratelimit import RateLimiter
from d2.server.testing import FakeClock


def test_a_burst_passes_then_the_next_request_learns_when_to_retry() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(3, 30.0, clock)  # 3 per 30 s: one every 10 s
    assert [limiter.acquire("t") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("t") == 10
    clock.advance(9.5)
    assert limiter.acquire("t") == 1
    clock.advance(0.5)
    assert limiter.acquire("t") == 0
    assert limiter.acquire("t") == 10


def test_keys_have_separate_buckets() -> None:
    limiter = RateLimiter(1, 60.0, FakeClock(0.0))
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") == 60
    assert limiter.acquire("b") == 0


def test_a_full_window_refills_the_whole_burst_and_no_more() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(2, 60.0, clock)
    limiter.acquire("t")
    limiter.acquire("t")
    clock.advance(10_000)
    assert [limiter.acquire("t") for _ in range(3)] == [0, 0, 30]


def test_a_refused_request_consumes_nothing() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(1, 10.0, clock)
    limiter.acquire("t")
    for _ in range(5):
        assert limiter.acquire("t") == 10
    clock.advance(10)
    assert limiter.acquire("t") == 0


def test_idle_buckets_are_dropped_past_the_key_cap() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(1, 1.0, clock, max_keys=10)
    for i in range(10):
        limiter.acquire(f"k{i}")
    clock.advance(5)
    limiter.acquire("new")
    assert len(limiter._buckets) == 1


def test_a_limiter_needs_a_positive_burst_and_window() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(0, 1.0, FakeClock())
