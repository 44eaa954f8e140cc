"""Exact rate limiting for the sandboxes: a sliding-window log per key plus a daily allowance.

Every key (GHL: one token on one location; TinyEmail: one API key) keeps the times of its accepted
requests. A request is accepted while fewer than `limit` were accepted in the last `window_s` seconds
and the day's allowance (UTC calendar day, as a provider counts it) is not spent. Rejected requests
are not counted, so N requests inside one window always give exactly `min(N, limit)` successes,
whatever the timing. The clock is injected so tests are exact.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from contact_recon.sandbox.common import DAY_S, Clock


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    window_ms: int
    daily_limit: int | None
    daily_remaining: int | None
    retry_after_s: int  # whole seconds until a request would be accepted again (0 when allowed)


@dataclass
class _KeyState:
    hits: deque[float]
    day: int = -1
    day_count: int = 0


class SlidingWindowLimiter:
    """`limit` requests per `window_s` seconds and `daily_limit` per UTC day, per key."""

    def __init__(self, limit: int, window_s: float, daily_limit: int | None = None, clock: Clock = time.time):
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit, self.window_s, self.daily_limit, self.clock = limit, window_s, daily_limit, clock
        self._keys: dict[str, _KeyState] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._keys.clear()

    def hit(self, key: str) -> Decision:
        """Count one request for `key` if it is allowed, and say how much is left."""
        now = self.clock()
        with self._lock:
            state = self._keys.setdefault(key, _KeyState(hits=deque()))
            self._expire(state, now)
            if state.day_count >= (self.daily_limit or math.inf):
                return self._decision(state, False, self._seconds_to_midnight(now))
            if len(state.hits) >= self.limit:
                wait = state.hits[0] + self.window_s - now
                return self._decision(state, False, max(1, math.ceil(wait)))
            state.hits.append(now)
            state.day_count += 1
            return self._decision(state, True, 0)

    def _expire(self, state: _KeyState, now: float) -> None:
        while state.hits and state.hits[0] <= now - self.window_s:
            state.hits.popleft()
        day = int(now // DAY_S)
        if day != state.day:
            state.day, state.day_count = day, 0

    @staticmethod
    def _seconds_to_midnight(now: float) -> int:
        return max(1, math.ceil((now // DAY_S + 1) * DAY_S - now))

    def _decision(self, state: _KeyState, allowed: bool, retry_after: int) -> Decision:
        daily_left = None if self.daily_limit is None else max(0, self.daily_limit - state.day_count)
        return Decision(
            allowed=allowed,
            limit=self.limit,
            remaining=max(0, self.limit - len(state.hits)),
            window_ms=int(self.window_s * 1000),
            daily_limit=self.daily_limit,
            daily_remaining=daily_left,
            retry_after_s=retry_after,
        )
