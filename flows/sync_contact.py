"""`sync-contact`: one person kept in step between nights, triggered by an event (prefect.yaml).

A verified GHL webhook (`recon webhooks serve`) names a contact id and location; the TinyEmail watcher
(`recon watch tinyemail`) names an email. The flow reads that person from both systems (contact_recon/stages/sync.py),
then plans, checks, applies and advances the state with the very code of the nightly run, under the same
per-location lock (a nightly run and a sync never write one location at once).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from contact_recon.settings import Settings, get_settings
from contact_recon.stages.lock import location_lock
from contact_recon.stages.plan import plan_person
from contact_recon.stages.run import GHLFactory, TinyEmailFactory, apply_run
from contact_recon.stages.sync import person_frames
from contact_recon.store.db import db_path, open_db
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.tinyemail.client import TinyEmailClient


@flow(name="sync-contact", log_prints=True)
def sync_contact_flow(
    contact_id: str | None = Field(default=None, description="The GHL contact (from a GHL webhook)."),
    location_id: str | None = Field(default=None, description="Its GHL location; default: the first configured."),
    email: str | None = Field(default=None, description="A TinyEmail customer's email (from the watcher)."),
) -> dict[str, Any]:
    """Sync one contact both ways now."""
    return run_sync(get_settings(), contact_id=contact_id or None, location_id=location_id or None,
                    email=email or None)


def run_sync(settings: Settings, *, contact_id: str | None = None, location_id: str | None = None,
             email: str | None = None, ghl_client: GHLFactory | None = None,
             tinyemail_client: TinyEmailFactory | None = None, lock_wait_s: float = 120.0) -> dict[str, Any]:
    """The flow's body: read, plan, apply one person; returns what happened (run id, status, ops)."""
    logger = get_run_logger()
    if not (contact_id or email):
        raise ValueError("sync-contact needs a contact_id or an email")
    location = location_id or (settings.ghl_location_ids[0] if settings.ghl_location_ids else None)
    if not location:
        raise ValueError("no GHL location: pass location_id or set RECON_GHL_LOCATION_IDS")
    ghl_client = ghl_client or (lambda loc: GHLClient.from_settings(settings, loc))
    tinyemail_client = tinyemail_client or (lambda: TinyEmailClient.from_settings(settings))
    with location_lock(settings, [location], lock_wait_s), open_db(db_path(settings.data_dir)) as store:
        person = asyncio.run(_read(ghl_client(location), tinyemail_client(), store, contact_id, email,
                                   settings.default_region))
        planned = plan_person(settings, store, location_id=location, frames=person.frames, keys=person.keys)
        result: dict[str, Any] = {"run_id": planned.run_id, "ops": planned.plan.height, "status": planned.status,
                                  "contact_id": person.contact_id}
        if planned.status == "held":
            logger.warning("sync of %s held by a guard: %s", person.keys, planned.held_reasons)
            return result
        if planned.plan.height:
            outcome = apply_run(settings, store, planned.run_id, ghl_client=ghl_client,
                                tinyemail_client=tinyemail_client)
            result.update(status=outcome.status, journal=outcome.journal)
        else:
            store.finish_run(planned.run_id, "completed")
            result["status"] = "completed"
    logger.info("sync of %s: %s", person.keys, result)
    return result


async def _read(ghl: GHLClient, te: TinyEmailClient, store: Any, contact_id: str | None, email: str | None,
                region: str) -> Any:
    try:
        return await person_frames(ghl, te, store, contact_id=contact_id, email=email, region=region)
    finally:
        await ghl.aclose()
        await te.aclose()
