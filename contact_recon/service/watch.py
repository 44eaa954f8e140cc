"""`recon watch tinyemail`: TinyEmail sends no webhooks, so poll it and emit an event per changed customer.

Each poll reads every customer of every list (`TinyEmailClient.all_customers`, the only full listing the
API has) through a rate budget of its own sized to `budget_share` of the key's allowance, so the nightly
flow keeps the rest. Each customer is reduced to a content hash (sha256 of its fields and list ids as
canonical JSON) keyed by its normalised email. `diff_hashes` (pure) compares the poll with the previous
one kept in `data_dir/watch/tinyemail_hashes.json`:
- an email not seen before -> `tinyemail.customer.created`;
- an email whose hash changed -> `tinyemail.customer.updated`;
- an unchanged email, or one that left every list -> nothing (the nightly reconciliation covers removals).
With tenants (`RECON_TENANTS_FILE`), one watcher polls every tenant's account in turn (`watched_accounts`: each
TinyEmail key routed to its owner by `owner_of_api_key`), each with its own budget, state and echo file in the
tenant's data dir, and each event carries its `tenant` in the payload, so its sync runs with that tenant's settings.
The first poll, with no saved state, only records the baseline: announcing every customer as created
would trigger a sync per customer. The state is saved after the events were handed to Prefect, so a
crash between the two repeats events (harmless: sync_contact is idempotent) rather than losing them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contact_recon.events import (
    TINYEMAIL_CUSTOMER_CREATED,
    TINYEMAIL_CUSTOMER_UPDATED,
    tinyemail_customer_resource,
)
from contact_recon.settings import Settings
from contact_recon.stages.echo import EchoFilter, tinyemail_filter
from contact_recon.store.files import atomic_text
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.tinyemail.client import AudienceSnapshot, TinyEmailClient
from contact_recon.tenants import owner_of_api_key, tenants_of

STATE_VERSION = 1
Emit = Callable[..., Any]


@dataclass(frozen=True)
class CustomerChange:
    email: str
    kind: Literal["created", "updated"]

    @property
    def event(self) -> str:
        return TINYEMAIL_CUSTOMER_CREATED if self.kind == "created" else TINYEMAIL_CUSTOMER_UPDATED


def customer_hashes(snapshot: AudienceSnapshot) -> dict[str, str]:
    """Normalised email -> sha256 of the customer's fields and sorted list ids (canonical JSON)."""
    out = {}
    for email, customer in snapshot.customers.items():
        content = {"customer": customer.model_dump(mode="json"), "lists": sorted(snapshot.memberships.get(email, ()))}
        out[email] = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return out


def diff_hashes(previous: Mapping[str, str], current: Mapping[str, str]) -> list[CustomerChange]:
    """The customers created or changed between two polls, by email (sorted, so events go out in order)."""
    changes = []
    for email in sorted(current):
        if email not in previous:  # new since the last poll
            changes.append(CustomerChange(email, "created"))
        elif previous[email] != current[email]:  # its content or its lists changed
            changes.append(CustomerChange(email, "updated"))
        # same hash: unchanged, nothing to announce
    return changes


# ------------------------------------------------------------------------------------------ state


def state_path(settings: Settings) -> Path:
    return settings.data_dir / "watch" / "tinyemail_hashes.json"


def load_state(path: Path) -> tuple[dict[str, str], float | None] | None:
    """The hashes of the previous poll and when it began, or None before the first poll (or after a version
    change)."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("version") != STATE_VERSION:
        return None
    return dict(data["hashes"]), data.get("polled_at")


def save_state(path: Path, hashes: Mapping[str, str], polled_at: float) -> None:
    atomic_text(path, json.dumps({"version": STATE_VERSION, "polled_at": polled_at, "hashes": dict(hashes)}))


# ------------------------------------------------------------------------------------------- poll


@dataclass
class PollResult:
    customers: int
    baseline: bool
    changes: list[CustomerChange] = field(default_factory=list)
    emitted: int = 0
    echoes: int = 0  # changes that were our own writes (contact_recon/stages/echo.py), not emitted
    requests: int = 0
    seconds: float = 0.0
    tenant: str | None = None  # the tenant whose account was polled (RECON_TENANTS_FILE)

    @property
    def created(self) -> int:
        return sum(1 for c in self.changes if c.kind == "created")

    @property
    def updated(self) -> int:
        return sum(1 for c in self.changes if c.kind == "updated")


def share_budget(settings: Settings, share: float) -> RateBudget:
    """A budget of `share` of the key's requests a minute (at least one), separate from the flow's."""
    return RateBudget(max(1, int(settings.tinyemail_rate_per_minute * share)), 60.0, None)


def emit_change(emit: Emit, change: CustomerChange, tenant: str | None = None) -> bool:
    """Emit one change (with the tenant whose account it is in, if any); whether Prefect took it."""
    payload = {"email": change.email, "change": change.kind}
    if tenant is not None:  # routed: the sync runs with this tenant's settings
        payload["tenant"] = tenant
    event = emit(change.event, resource=tinyemail_customer_resource(change.email), payload=payload)
    return event is not None


def watched_accounts(settings: Settings) -> list[tuple[str | None, Settings]]:
    """The TinyEmail accounts to poll: the configured one, or with tenants each tenant's (by its key's owner)."""
    if settings.tenants_file is None:  # single tenant: the RECON_* account
        return [(None, settings)]
    tenants = tenants_of(settings)
    accounts: list[tuple[str | None, Settings]] = []
    for tenant in tenants.values():
        key = tenant.tinyemail_api_key.get_secret_value() if tenant.tinyemail_api_key else ""
        owner = owner_of_api_key(tenants, key) if key else None
        if owner is not None:  # a tenant without a TinyEmail key has nothing to watch
            accounts.append((owner, tenant))
    return accounts


async def poll_once(settings: Settings, budget: RateBudget, emit: Emit,
                    clock: Callable[[], float] = time.time, echo: EchoFilter | None = None,
                    tenant: str | None = None) -> PollResult:
    """One poll: read every customer, diff with the saved state, emit the changes (but for our own writes of the
    last minutes, `echo`), save the new state."""
    started, path = clock(), state_path(settings)
    async with TinyEmailClient.from_settings(settings, budget=budget) as client:
        snapshot = await client.all_customers()
        requests = client.stats.used
    hashes, saved = customer_hashes(snapshot), load_state(path)
    result = PollResult(customers=len(hashes), baseline=saved is None, requests=requests, tenant=tenant)
    if saved is not None:
        previous, since = saved
        result.changes = diff_hashes(previous, hashes)
        # our own writes since the previous poll began (stages/echo.py); earlier ones are in its hashes already
        ours = [c for c in result.changes if echo is not None and echo.is_echo(None, c.email, since=since)]
        result.echoes = len(ours)
        result.emitted = sum(emit_change(emit, change, tenant) for change in result.changes if change not in ours)
    save_state(path, hashes, started)
    result.seconds = clock() - started
    return result


def _default_emit(*args: Any, **kwargs: Any) -> Any:
    from prefect.events import emit_event

    return emit_event(*args, **kwargs)


def watch(settings: Settings, *, interval_s: float, budget_share: float, once: bool,
          on_poll: Callable[[PollResult], None], emit: Emit | None = None) -> None:
    """Poll until interrupted (or once): each poll waits for `interval_s` after the previous one ended; with tenants,
    a poll reads every tenant's account in turn."""
    accounts = [(tenant, account, share_budget(account, budget_share), tinyemail_filter(account.data_dir))
                for tenant, account in watched_accounts(settings)]
    while True:
        for tenant, account, budget, echo in accounts:
            on_poll(asyncio.run(poll_once(account, budget, emit or _default_emit, echo=echo, tenant=tenant)))
        if once:
            return
        time.sleep(interval_s)
