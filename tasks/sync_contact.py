"""The `sync-contact` Prefect task: one person synced now, routed to its tenant, never a failure for a busy store.

The sync service (`recon services serve`, contact_recon/service/syncer.py) runs it in its own long-running process
for each coalesced change (no process start per change), and the `sync-contact` flow (flows/sync_contact.py, for
a run by hand from the UI) calls the same `sync_change`. Both hand the person to `contact_recon.stages.run.sync`:
the nightly's identity, merge, checks, apply and state code, under the same per-location lock.

`sync_change`, in order:
1. routing (contact_recon/tenants.py `route_change`): with `RECON_TENANTS_FILE`, a GHL change goes to the tenant
   that owns its location, a TinyEmail change to the tenant whose key the watcher polled; that tenant's settings
   (its data dir, store, policy and credentials) are the sync's. One no tenant owns: status `unowned`, nothing
   read or written (the service counts it);
2. the sync, waiting up to `sync_lock_wait_s` (6 h) for the location's lock and the DuckDB file: a change that
   arrives while the nightly holds them waits and is synced after it;
3. still busy after that: status `deferred`, logged, never raised; the nightly reads everyone anyway.
Caching is off: each sync reads both systems as they are now. Prefect never retries it (a retry is the next event).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from contact_recon.settings import Settings
from contact_recon.stages.lock import LocationBusy
from contact_recon.stages.run import GHLFactory, TinyEmailFactory, sync
from contact_recon.store.db import StoreBusy
from contact_recon.tenants import Unowned, route_change

UNOWNED, DEFERRED = "unowned", "deferred"


def sync_change(settings: Settings, *, contact_id: str | None = None, location_id: str | None = None,
                email: str | None = None, webhook_type: str | None = None, tenant: str | None = None,
                lock_wait_s: float | None = None, ghl_client: GHLFactory | None = None,
                tinyemail_client: TinyEmailFactory | None = None,
                log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None) -> dict[str, Any]:
    """Route, then sync one person (module docstring); the sync's result with `tenant` and the process `pid`."""
    log = log or logging.getLogger("contact_recon.sync")
    try:
        owner, routed = route_change(settings, tenant=tenant, location_id=location_id)
    except Unowned as exc:  # another install's change, or a tenant that is gone: refused, counted by the caller
        log.warning("change refused: %s", exc)
        return {"status": UNOWNED, "location_id": location_id, "tenant": tenant, "pid": os.getpid()}
    wait = routed.sync_lock_wait_s if lock_wait_s is None else lock_wait_s
    try:
        result = sync(routed, contact_id=contact_id, location_id=location_id, email=email, webhook_type=webhook_type,
                      ghl_client=ghl_client, tinyemail_client=tinyemail_client, lock_wait_s=wait, log=log)
    except (LocationBusy, StoreBusy) as exc:  # a run held the location or the store the whole wait: the night's
        log.warning("sync of %s left to the nightly run: %s", contact_id or email or location_id, exc)
        result = {"status": DEFERRED, "location_id": location_id}
    return {**result, "tenant": owner, "pid": os.getpid()}


@task(name="sync-contact", cache_policy=NO_CACHE, retries=0, log_prints=True)
def sync_contact_task(settings: Settings, contact_id: str | None = None, location_id: str | None = None,
                      email: str | None = None, webhook_type: str | None = None, tenant: str | None = None,
                      events: int = 1) -> dict[str, Any]:
    """One coalesced change (`events` events of one person) synced by the service's process."""
    result = sync_change(settings, contact_id=contact_id, location_id=location_id, email=email,
                         webhook_type=webhook_type, tenant=tenant, log=get_run_logger())
    return {**result, "events": events}
