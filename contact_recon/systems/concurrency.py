"""Sharing one provider budget between several worker processes: Prefect global concurrency limits.

Inside one process, every request of a (system, location or key) goes through the same `RateBudget`
(contact_recon/systems/budget.py). Several processes (Prefect workers, parallel flow runs) cannot see each
other's budgets, so they also take slots from one Prefect *global concurrency limit with slot decay*
per budget, named `ghl:<location>` or `tinyemail:<key id>`:

- The limit is a token bucket kept by the Prefect server: `limit` slots at most, and occupied slots
  free themselves at `slot_decay_per_second`, like requests leaving the provider's window. Slots are
  taken with `prefect.concurrency.asyncio.rate_limit(name, occupy=n)` (decay limits are never
  released by hand); when the bucket is short the server answers 423 + Retry-After and Prefect's
  client waits and asks again.
- Slots are taken *per batch*, not per request: a worker about to send N requests (a page run, a
  batch of writes) takes N slots in one round-trip to the Prefect server, then sends them through
  its own `RateBudget`, which paces them and follows the provider's headers. One Prefect call per
  batch instead of one per request keeps the coordination cost (a few ms each, and a database
  write on the server) negligible next to the API calls; it also makes fewer writes to the limit's
  row, which matters because the server computes decay as floor(decay * seconds since the row's
  last update), so every write (a grant or a 423) drops the fraction of a slot accrued since the
  last one. The loss only ever slows us down.
- Sizing (`window_limit`): a bucket of capacity C refilling at r grants up to C + r*W in any window
  of W seconds. The naive mapping (C = requests per window, r = C / W) therefore allows twice the
  provider's limit in a window right after an idle period. `window_limit` keeps C + r*W <= the
  provider's limit: C = two batches (at least one batch, at most half the limit) and
  r = (limit - C) / W. GHL, 100 per 10 s in batches of 10: C = 20, r = 8/s, i.e. at most 100 in any
  10 s and 80% of the limit sustained across all workers (batches of 5: 90%).
- Switched by the environment variable RECON_USE_GLOBAL_LIMITS (1/true/yes/on); unset, `batch_slots`
  is a no-op and no Prefect server is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

ENV_FLAG = "RECON_USE_GLOBAL_LIMITS"
_known_capacity: dict[str, int] = {}  # name -> limit, as ensured by this process


@dataclass(frozen=True)
class LimitSpec:
    limit: int  # bucket capacity (slots)
    slot_decay_per_second: float


def enabled() -> bool:
    """Settings.use_global_limits (RECON_USE_GLOBAL_LIMITS), read at call time."""
    from contact_recon.settings import get_settings

    return get_settings().use_global_limits


def limit_name(system: str, key: str) -> str:
    """The global limit of one budget, e.g. `ghl:<location id>`."""
    return f"{system}:{key}"


def window_limit(requests: int, window_s: float, batch: int) -> LimitSpec:
    """A bucket that never grants more than `requests` in any `window_s` and always fits one `batch`."""
    if batch < 1 or window_s <= 0 or requests < 2 * batch:
        raise ValueError(f"a batch of {batch} needs a limit of at least {2 * batch} requests per window")
    capacity = max(batch, min(2 * batch, requests // 2))
    return LimitSpec(capacity, (requests - capacity) / window_s)


async def ensure_limit(name: str, limit: int, slot_decay_per_second: float) -> None:
    """Create the global concurrency limit `name`, or update its limit and decay when they differ."""
    from prefect.client.orchestration import get_client

    if limit < 1 or slot_decay_per_second <= 0:
        raise ValueError("a rate limit needs limit >= 1 and slot_decay_per_second > 0")
    async with get_client() as client:
        await client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second)
    _known_capacity[name] = limit


async def ensure_budget_limit(system: str, key: str, requests: int, window_s: float, batch: int) -> LimitSpec:
    """`ensure_limit` for the budget of (system, key), sized by `window_limit`."""
    spec = window_limit(requests, window_s, batch)
    await ensure_limit(limit_name(system, key), spec.limit, spec.slot_decay_per_second)
    return spec


@asynccontextmanager
async def batch_slots(system: str, key: str, n: int, *, timeout_s: float | None = None) -> AsyncIterator[None]:
    """Wait for `n` slots of the (system, key) global limit, then run the batch; a no-op when disabled.

    Raises `prefect.concurrency.asyncio.ConcurrencySlotAcquisitionError` when the limit does not
    exist (strict: an unshared budget must not pass silently) and `TimeoutError` after `timeout_s`.
    """
    if enabled() and n > 0:
        from prefect.concurrency.asyncio import rate_limit

        name = limit_name(system, key)
        capacity = _known_capacity.get(name)
        if capacity is not None and n > capacity:
            raise ValueError(f"a batch of {n} can never fit the limit {name} ({capacity} slots)")
        await rate_limit(name, occupy=n, timeout_seconds=timeout_s, strict=True)
    yield
