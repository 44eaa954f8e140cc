"""One proactive rate budget per (system, location or key), shared by every request of the process.

The providers count requests in a sliding window (GHL: 100 per 10 s and 200,000 a day per app and
location; TinyEmail, assumed: 60 a minute per key). Waiting for 429s wastes requests and invites
penalties, so each request first *reserves* a send time here:

- the budget keeps the send times of its last requests; a new request goes at the earliest time when
  fewer than `limit * (1 - headroom)` requests fall in the window widened by `margin_s` (the headroom
  and margin absorb clock skew and network jitter between us and the server);
- a caller that had to wait books again when it wakes (`confirm`): requests answered meanwhile may
  have been settled later than they were booked, so its first slot can be too early;
- `settle()` moves a request's booked time to when its answer came (or the connection failed): the server
  counted it somewhere between the two, so the slot is kept until a full window after the later one. On
  a loaded machine or a slow network a request can reach the server well after its booked time, and a
  window counted from the booked time alone would end too early (a burst of 429s at the window's edge);
- `observe()` follows the server's `X-RateLimit-*` headers: a changed window or maximum is adopted, and
  when the server reports fewer remaining requests than our own log explains, someone else is
  spending the same budget, so phantom sends are added and we slow down before any 429;
- `pause()` honours a `Retry-After`; the daily allowance is tracked and exposed through `snapshot()`
  so a stage can plan within it, and an exhausted day raises `RateLimited` instead of sleeping for hours.

Reservation is thread-safe (a lock) and the waiting is done by the caller (`acquire` sleeps with
asyncio), so tasks on several threads and event loops share one budget. Several *processes* share a
budget through a Prefect global concurrency limit per (system, key), taken per batch (see the README).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from contact_recon.systems.errors import RateLimited


@dataclass(frozen=True)
class BudgetSnapshot:
    limit: int
    window_s: float
    in_window: int
    daily_limit: int | None
    daily_remaining: int | None
    paused_for_s: float
    sent: int
    rate_limited: int


class RateBudget:
    def __init__(self, limit: int, window_s: float, daily_limit: int | None = None, *,
                 headroom: float = 0.05, margin_s: float = 0.25, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.daily_limit = limit, window_s, daily_limit
        self.headroom, self.margin_s, self.clock = headroom, margin_s, clock
        self.daily_remaining = daily_limit
        self._sends: list[tuple[float, int]] = []  # (booked or settled time, token), sorted
        self._open: dict[int, float] = {}  # booked by `acquire`, not answered yet: token -> its time in _sends
        self._tokens = itertools.count()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.sent = 0
        self.rate_limited = 0

    @property
    def effective_limit(self) -> int:
        return max(1, int(self.limit * (1 - self.headroom)))

    @property
    def _span(self) -> float:
        return self.window_s + self.margin_s

    def reserve(self) -> float:
        """Book the next send, counted at its booked time; return how long the caller must wait before sending."""
        return self._book(settled=True)[0]

    def _book(self, settled: bool) -> tuple[float, int]:
        """Book the next send: (how long to wait, its token)."""
        with self._lock:
            now = self.clock()
            if self.daily_remaining is not None and self.daily_remaining <= 0:
                raise RateLimited("daily request allowance used up", retry_after_s=None)
            expired = bisect.bisect_right(self._sends, (now - self._span, math.inf))
            if expired:
                del self._sends[:expired]
            token = next(self._tokens)
            at = self._slot(now)
            bisect.insort(self._sends, (at, token))
            if not settled:
                self._open[token] = at
            self.sent += 1
            if self.daily_remaining is not None:
                self.daily_remaining -= 1
            return at - now, token

    def _slot(self, now: float) -> float:
        """The earliest time from `now` at which one more send keeps fewer than the limit in the window."""
        at = max(now, self._paused_until)
        n = self.effective_limit
        if len(self._sends) >= n:
            at = max(at, self._sends[-n][0] + self._span)
        return at

    def book(self) -> tuple[float, int]:
        """Book the next send, kept open until `settle(token)`: (how long to wait, token). A caller that waits
        calls `confirm(token)` when it wakes, and waits again while that says so."""
        return self._book(settled=False)

    def confirm(self, token: int) -> float:
        """The caller of `token` has waited until its booked time: book it again from what is known now (earlier
        requests settled since, later than they were booked, or a Retry-After came); return the further wait."""
        with self._lock:
            now = self.clock()
            booked = self._open.get(token)
            if booked is None:
                return 0.0
            _discard(self._sends, (booked, token))
            at = self._slot(now)
            bisect.insort(self._sends, (at, token))
            self._open[token] = at
            return at - now

    async def acquire(self) -> int:
        """Wait for a send slot; returns its token (for `settle`)."""
        delay, token = self.book()
        while delay > 0:
            await asyncio.sleep(delay)
            delay = self.confirm(token)
        return token

    def acquire_sync(self) -> int:
        delay, token = self.book()
        while delay > 0:
            time.sleep(delay)
            delay = self.confirm(token)
        return token

    def settle(self, token: int) -> None:
        """The answer to the request of `token` has come (or its connection failed): from now on count it as
        sent now, the latest moment the server can have counted it."""
        with self._lock:
            booked = self._open.pop(token, None)
            if booked is None:
                return
            now = self.clock()
            _discard(self._sends, (booked, token))
            bisect.insort(self._sends, (max(now, booked), token))

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (a Retry-After)."""
        with self._lock:
            self.rate_limited += 1
            self._paused_until = max(self._paused_until, self.clock() + seconds)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Follow the server's rate headers (GHL's five X-RateLimit-* names; absent ones are ignored)."""
        limit = _int(headers.get("x-ratelimit-max"))
        interval_ms = _int(headers.get("x-ratelimit-interval-milliseconds"))
        remaining = _int(headers.get("x-ratelimit-remaining"))
        daily_limit = _int(headers.get("x-ratelimit-limit-daily"))
        daily_remaining = _int(headers.get("x-ratelimit-daily-remaining"))
        with self._lock:
            if limit:
                self.limit = limit
            if interval_ms:
                self.window_s = interval_ms / 1000
            if daily_limit is not None:
                self.daily_limit = daily_limit
            if daily_remaining is not None:
                self.daily_remaining = daily_remaining
            if remaining is not None:
                self._account_for_others(remaining)

    def _account_for_others(self, remaining: int) -> None:
        now = self.clock()
        # the server counts arrivals, a little later than our booked send times: widen by the margin
        # _sends is sorted by time: ours are those booked within (now - span, now]
        ours = bisect.bisect_right(self._sends, (now, math.inf)) - bisect.bisect_right(self._sends,
                                                                                        (now - self._span, math.inf))
        foreign = (self.limit - remaining) - ours
        if foreign > 0:  # another client spends this budget: book its sends as ours, at now
            for _ in range(foreign):
                at = max(now, self._sends[-1][0] if self._sends else now)
                bisect.insort(self._sends, (at, next(self._tokens)))

    def snapshot(self) -> BudgetSnapshot:
        with self._lock:
            now = self.clock()
            in_window = len(self._sends) - bisect.bisect_right(self._sends, (now - self.window_s, math.inf))
            return BudgetSnapshot(self.limit, self.window_s, in_window,
                                  self.daily_limit, self.daily_remaining, max(0.0, self._paused_until - now),
                                  self.sent, self.rate_limited)


def _discard(sends: list[tuple[float, int]], entry: tuple[float, int]) -> None:
    i = bisect.bisect_left(sends, entry)
    if i < len(sends) and sends[i] == entry:  # absent when it left the window before its answer came
        del sends[i]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_registry: dict[tuple[str, str], RateBudget] = {}
_registry_lock = threading.Lock()


def budget_for(system: str, key: str, factory: Callable[[], RateBudget]) -> RateBudget:
    """The process-wide budget of (system, location or key), made by `factory` the first time."""
    with _registry_lock:
        if (system, key) not in _registry:
            _registry[(system, key)] = factory()
        return _registry[(system, key)]
