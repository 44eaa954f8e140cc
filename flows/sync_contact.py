"""`sync-contact`: one person kept in step between nights, triggered by an event (prefect.yaml).

A verified GHL webhook (`recon webhooks serve`) names a contact id, its location and the webhook type; the
TinyEmail watcher (`recon watch tinyemail`) names an email. A note or task webhook also marks the contact dirty,
so the next snapshot reads its notes and tasks again; a task webhook that named no contact marks the location's
tasks (stages/run.py `sync`). The flow hands the person to `contact_recon.stages.run.sync`, which
reads them from both systems (stages/sync.py), then plans, checks, applies and advances the state with the
very code of the nightly run, under the same per-location lock (a nightly run and a sync never write one
location at once).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from contact_recon.stages.process import prepare_process
from contact_recon.stages.run import sync
from contact_recon.tenants import get_tenant_settings

prepare_process()  # a worker's flow-run process starts here: secrets masked in every log, owner-only files


@flow(name="sync-contact", log_prints=True)
def sync_contact_flow(
    contact_id: str | None = Field(default=None, description="The GHL contact (from a GHL webhook)."),
    location_id: str | None = Field(default=None, description="Its GHL location; default: the first configured."),
    email: str | None = Field(default=None, description="A TinyEmail customer's email (from the watcher)."),
    webhook_type: str | None = Field(default=None, description="The GHL webhook type that triggered the sync "
                                     "(NoteCreate, TaskCreate...: the contact's notes and tasks are refetched)."),
    tenant: str | None = Field(default=None, description="The tenant of RECON_TENANTS_FILE that owns the change "
                               "(set by the webhook receiver); empty: the RECON_* settings."),
) -> dict[str, Any]:
    """Sync one contact both ways now."""
    return sync(get_tenant_settings(tenant or None), contact_id=contact_id or None, location_id=location_id or None,
                email=email or None, webhook_type=webhook_type or None, log=get_run_logger())
