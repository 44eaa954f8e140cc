"""`sync-contact`: one person kept in step, run by hand (the `sync-contact` deployment of prefect.yaml, *Run*).

Between nights the changes are synced by the sync service (`recon services serve`, contact_recon/service/syncer.py),
which runs the same `sync_change` (tasks/sync_contact.py) as a Prefect task in its own long-running process:
no process start per change, coalesced per person. This flow is that same sync as a flow run of its own, for a
person named by hand. A verified GHL webhook (`recon webhooks serve`) names a contact id, its location and the
webhook type; the TinyEmail watcher (`recon watch tinyemail`) names an email. A note or task webhook also marks
the contact dirty, so the next snapshot reads its notes and tasks again; a task webhook that named no contact
marks the location's tasks (stages/run.py `sync`). With tenants, the change is routed to the tenant that owns
its location (contact_recon/tenants.py `route_change`). The flow hands the person to
`contact_recon.stages.run.sync`, which reads them from both systems (stages/sync.py), then plans, checks, applies
and advances the state with the very code of the nightly run, under the same per-location lock (a nightly run
and a sync never write one location at once).
"""

from __future__ import annotations

from typing import Any

from contact_recon.tasks.sync_contact import sync_change
from prefect import flow, get_run_logger
from pydantic import Field

from contact_recon.settings import get_settings
from contact_recon.stages.process import prepare_process

prepare_process()  # a worker's flow-run process starts here: secrets masked in every log, owner-only files


@flow(name="sync-contact", log_prints=True)
def sync_contact_flow(
    contact_id: str | None = Field(default=None, description="The GHL contact (from a GHL webhook)."),
    location_id: str | None = Field(default=None, description="Its GHL location; default: the first configured."),
    email: str | None = Field(default=None, description="A TinyEmail customer's email (from the watcher)."),
    webhook_type: str | None = Field(default=None, description="The GHL webhook type that triggered the sync "
                                     "(NoteCreate, TaskCreate...: the contact's notes and tasks are refetched)."),
    tenant: str | None = Field(default=None, description="For a TinyEmail change with RECON_TENANTS_FILE: the tenant "
                               "whose account it is (a GHL change goes to the tenant that owns its location)."),
) -> dict[str, Any]:
    """Sync one contact both ways now."""
    return sync_change(get_settings(), contact_id=contact_id or None, location_id=location_id or None,
                       email=email or None, webhook_type=webhook_type or None, tenant=tenant or None,
                       log=get_run_logger())
