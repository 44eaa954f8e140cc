"""The sandbox rate limiter, exact under an injected clock."""

from __future__ import annotations

import pytest

from contact_recon.sandbox.ratelimit import SlidingWindowLimiter


def test_150_requests_in_one_window_give_exactly_100_successes(clock):
    limiter = SlidingWindowLimiter(100, 10.0, daily_limit=200_000, clock=clock)
    results = []
    for _ in range(150):
        results.append(limiter.hit("loc:tok"))
        clock.advance(0.0625)  # 150 requests over 9.4 s (binary-exact steps)
    assert sum(d.allowed for d in results) == 100
    assert [d.allowed for d in results] == [True] * 100 + [False] * 50
    assert results[99].remaining == 0 and results[0].remaining == 99
    # the oldest hit (t=0) leaves the window at t=10; the first 429 came at t=6.25
    assert results[100].retry_after_s == 4
    assert results[0].daily_remaining == 199_999 and results[-1].daily_remaining == 199_900


def test_window_slides_rather_than_resetting(clock):
    limiter = SlidingWindowLimiter(3, 10.0, clock=clock)
    for _ in range(3):
        assert limiter.hit("k").allowed
        clock.advance(4)  # hits at t=0, 4, 8; now t=12
    # a fixed 10 s window would have reset at t=10 and allow three; the sliding one frees only t=0's slot
    assert limiter.hit("k").allowed
    denied = limiter.hit("k")
    assert not denied.allowed and denied.retry_after_s == 2  # the t=4 hit leaves at t=14


def test_sliding_window_exact_edges(clock):
    limiter = SlidingWindowLimiter(2, 10.0, clock=clock)
    assert limiter.hit("k").allowed  # t=0
    clock.advance(5)
    assert limiter.hit("k").allowed  # t=5
    clock.advance(4.999)
    denied = limiter.hit("k")  # t=9.999: both still inside
    assert not denied.allowed and denied.retry_after_s == 1
    clock.advance(0.001)  # t=10: the t=0 hit leaves
    assert limiter.hit("k").allowed
    assert not limiter.hit("k").allowed


def test_keys_are_independent(clock):
    limiter = SlidingWindowLimiter(1, 10.0, clock=clock)
    assert limiter.hit("a").allowed
    assert limiter.hit("b").allowed
    assert not limiter.hit("a").allowed


def test_daily_allowance_resets_at_utc_midnight(clock):
    clock.t = 86_400 * 20_000 + 86_000  # 400 s before a UTC midnight
    limiter = SlidingWindowLimiter(10, 1.0, daily_limit=3, clock=clock)
    for _ in range(3):
        assert limiter.hit("k").allowed
        clock.advance(1)
    denied = limiter.hit("k")
    assert not denied.allowed and denied.daily_remaining == 0
    assert denied.retry_after_s == 397
    clock.advance(397)
    allowed = limiter.hit("k")
    assert allowed.allowed and allowed.daily_remaining == 2


def test_rejects_nonsense_limits():
    with pytest.raises(ValueError):
        SlidingWindowLimiter(0, 10.0)
