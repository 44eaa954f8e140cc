"""The client-side rate budget, exact under an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from contact_recon.sandbox.ratelimit import SlidingWindowLimiter
from contact_recon.systems.budget import RateBudget, budget_for
from contact_recon.systems.errors import RateLimited


def test_schedule_never_exceeds_the_servers_sliding_window(clock):
    """Requests sent at the reserved times are all accepted by the sandbox's own limiter."""
    budget = RateBudget(100, 10.0, 200_000, headroom=0.05, margin_s=0.25, clock=clock)
    server = SlidingWindowLimiter(100, 10.0, 200_000, clock=clock)
    start = clock.t
    for _ in range(1000):
        clock.advance(budget.reserve())  # the caller waits, then sends
        assert server.hit("k").allowed
    elapsed = clock.t - start
    # 1000 requests at 95 per 10.25 s: close to the allowed rate (>= 90 % of 10/s), never above it
    assert 1000 / elapsed >= 9.0
    assert 1000 / elapsed <= 10.0


def test_first_requests_go_at_once_then_wait(clock):
    budget = RateBudget(10, 1.0, headroom=0.0, margin_s=0.0, clock=clock)
    assert [budget.reserve() for _ in range(10)] == [0.0] * 10
    assert budget.reserve() == pytest.approx(1.0)


def test_retry_after_pauses_everyone(clock):
    budget = RateBudget(100, 10.0, clock=clock)
    budget.pause(7)
    assert budget.reserve() == pytest.approx(7)
    assert budget.snapshot().rate_limited == 1


def test_headers_reveal_another_client_and_we_slow_down(clock):
    budget = RateBudget(100, 10.0, headroom=0.0, margin_s=0.0, clock=clock)
    budget.reserve()
    # the server says only 10 remain although we sent 1: another client spent 89
    budget.observe({"x-ratelimit-max": "100", "x-ratelimit-remaining": "10",
                    "x-ratelimit-interval-milliseconds": "10000"})
    waits = [budget.reserve() for _ in range(11)]
    assert waits[:10] == [0.0] * 10
    assert waits[10] > 0


def test_headers_change_limits_and_daily_allowance(clock):
    budget = RateBudget(100, 10.0, 200_000, clock=clock)
    budget.observe({"x-ratelimit-max": "50", "x-ratelimit-interval-milliseconds": "5000",
                    "x-ratelimit-limit-daily": "1000", "x-ratelimit-daily-remaining": "1"})
    snap = budget.snapshot()
    assert (snap.limit, snap.window_s, snap.daily_limit, snap.daily_remaining) == (50, 5.0, 1000, 1)
    budget.reserve()
    with pytest.raises(RateLimited, match="daily"):
        budget.reserve()


def test_registry_shares_one_budget_per_system_and_key():
    a = budget_for("ghl", "loc-A", lambda: RateBudget(100, 10.0))
    assert budget_for("ghl", "loc-A", lambda: RateBudget(1, 1.0)) is a
    assert budget_for("ghl", "loc-B", lambda: RateBudget(100, 10.0)) is not a


def _late_arrivals(clock, settle: bool) -> list[bool]:
    """Four bursts of 95 requests; in every other burst each request reaches the server (and is answered) up to
    1.5 s after its booked time, as on a loaded machine, and the next burst arrives at once; returns the
    server's verdicts."""
    budget = RateBudget(100, 10.0, 200_000, headroom=0.05, margin_s=0.25, clock=clock)
    server = SlidingWindowLimiter(100, 10.0, 200_000, clock=clock)
    verdicts = []
    for burst in range(4):
        booked = [(clock.t + wait, token) for wait, token in (budget.book() for _ in range(95))]
        lag = 1.5 if burst % 2 == 0 else 0.0
        arrivals = sorted((at + lag * i / 94, token) for i, (at, token) in enumerate(booked))
        for arrival, token in arrivals:
            clock.advance(max(0.0, arrival - clock.t))
            verdicts.append(server.hit("k").allowed)
            if settle:
                budget.settle(token)
    return verdicts


def test_a_request_that_reaches_the_server_late_keeps_its_slot_until_its_answer(clock):
    assert all(_late_arrivals(clock, settle=True))


def test_without_settling_late_arrivals_meet_429s_at_the_window_edge(clock):
    """The control of the test above: the booked times alone end the window too early."""
    assert not all(_late_arrivals(clock, settle=False))


def _concurrent_burst(clock, confirm: bool) -> tuple[list[bool], float]:
    """130 requests booked at once, as `asyncio.gather` does: the first 95 reach the server (and are answered)
    spread over 3 s, as on a loaded machine; the other 35 were booked a window after the *booked* times of the
    first ones and, when they wake, re-book (`confirm`) from the settled times. Returns the server's verdicts
    and when the last request went."""
    budget = RateBudget(100, 10.0, 200_000, headroom=0.05, margin_s=0.25, clock=clock)
    server = SlidingWindowLimiter(100, 10.0, 200_000, clock=clock)
    start = clock.t
    booked = [(clock.t + wait, token) for wait, token in (budget.book() for _ in range(130))]
    first, waiting = booked[:95], booked[95:]
    verdicts = []
    for i, (_at, token) in enumerate(first):
        clock.advance(3.0 / 95 if i else 0.0)
        verdicts.append(server.hit("k").allowed)
        budget.settle(token)
    pending = sorted(waiting)
    while pending:
        at, token = pending.pop(0)
        clock.advance(max(0.0, at - clock.t))
        more = budget.confirm(token) if confirm else 0.0
        if more > 0:
            pending = sorted([*pending, (clock.t + more, token)])
            continue
        verdicts.append(server.hit("k").allowed)
        budget.settle(token)
    return verdicts, clock.t - start


def test_requests_that_waited_rebook_from_the_settled_times_and_meet_no_429(clock):
    verdicts, took = _concurrent_burst(clock, confirm=True)
    assert len(verdicts) == 130 and all(verdicts)
    assert took < 14.0  # the last of them went soon after the slow first ones left the window, not a window later


def test_without_confirming_the_waiters_meet_429s(clock):
    """The control of the test above: slots booked before the first answers came are too early."""
    verdicts, _ = _concurrent_burst(clock, confirm=False)
    assert not all(verdicts)


def test_headers_count_only_our_sends_inside_the_window(clock):
    """Another client's share is the server's count less our sends within the window: those that left it and
    those booked for later are not ours to subtract."""
    budget = RateBudget(100, 10.0, headroom=0.0, margin_s=0.0, clock=clock)
    for _ in range(30):
        budget.reserve()  # t = 0: out of the window by t = 11
    clock.advance(6)
    for _ in range(20):
        budget.reserve()  # t = 6: inside it
    clock.advance(5)
    budget.observe({"x-ratelimit-remaining": "75"})  # the server counts 25: 20 ours, 5 someone else's
    assert budget.snapshot().in_window == 25
    waits = [budget.reserve() for _ in range(76)]
    assert waits[:75] == [0.0] * 75
    assert waits[75] == pytest.approx(5.0)  # the 101st waits until the sends of t = 6 leave the window (t = 16)
