"""The names and shapes of every Prefect event contact-recon emits or reacts to, in one place.

Three families:
- `ghl.*`: a verified GHL webhook, emitted by `recon webhooks serve` (contact_recon/service/webhooks.py). The
  resource is the contact: `{"prefect.resource.id": "ghl.contact.<contactId>", "ghl.contact.id": ...,
  "ghl.location.id": ...}`, so a deployment trigger can match `ghl.contact.*` and pass
  `{{ event.resource['ghl.contact.id'] }}` / `{{ event.resource['ghl.location.id'] }}` (and the payload's
  `webhook_type`) to `sync_contact`. A task webhook that names no contact (real TaskCreate payloads may lack
  `contactId`) is about the location's tasks: resource `ghl.location.<locationId>` with `ghl.location.id`.
- `recon.webhooks.unauthorized`: the receiver refused a sustained share of requests with 401 (a rotated or
  missing key); resource `recon.webhooks.receiver`; `service/alerts.py` notifies on it.
- `recon.service.heartbeat`: each long-running service (`SERVICES`) says it is alive, once a minute; resource
  `recon.service.<name>` (service/heartbeat.py).
- `tinyemail.*`: a customer that changed between two polls of `recon watch tinyemail`
  (contact_recon/service/watch.py). Resource `tinyemail.customer.<email>` with the label `tinyemail.customer.email`;
  with tenants the payload carries the `tenant` whose TinyEmail key the watcher polled.
- `recon.run.*`: emitted by the reconciliation flow when a run is held by a guard or its failed-op share
  passes `ALERT_FAILED_OP_SHARE`; `service/alerts.py` turns them (and Prefect's own flow-run state events:
  failed runs, a nightly that did not complete, a run that runs too long) into notifications. Use
  `emit_run_alert` so the payload matches the notification templates; inside a flow run it carries the run's
  Prefect UI page as `url` (where a held run is approved).
"""

from __future__ import annotations

from typing import Any

# --- GHL webhooks: webhook `type` -> event name (types not listed are acknowledged and not emitted)
GHL_CONTACT_CREATED = "ghl.contact.created"
GHL_CONTACT_UPDATED = "ghl.contact.updated"
GHL_CONTACT_DELETED = "ghl.contact.deleted"
GHL_CONTACT_TAG_UPDATED = "ghl.contact.tag.updated"
GHL_CONTACT_DND_UPDATED = "ghl.contact.dnd.updated"
GHL_NOTE_CREATED = "ghl.note.created"
GHL_NOTE_UPDATED = "ghl.note.updated"
GHL_NOTE_DELETED = "ghl.note.deleted"
GHL_TASK_CREATED = "ghl.task.created"
GHL_TASK_COMPLETED = "ghl.task.completed"
GHL_TASK_DELETED = "ghl.task.deleted"

GHL_WEBHOOK_EVENTS: dict[str, str] = {
    "ContactCreate": GHL_CONTACT_CREATED,
    "ContactUpdate": GHL_CONTACT_UPDATED,
    "ContactDelete": GHL_CONTACT_DELETED,
    "ContactTagUpdate": GHL_CONTACT_TAG_UPDATED,
    "ContactDndUpdate": GHL_CONTACT_DND_UPDATED,
    "NoteCreate": GHL_NOTE_CREATED,
    "NoteUpdate": GHL_NOTE_UPDATED,
    "NoteDelete": GHL_NOTE_DELETED,
    "TaskCreate": GHL_TASK_CREATED,
    "TaskComplete": GHL_TASK_COMPLETED,
    "TaskDelete": GHL_TASK_DELETED,
}
GHL_CONTACT_RESOURCE = "ghl.contact."  # + contactId
GHL_LOCATION_RESOURCE = "ghl.location."  # + locationId: a task webhook without a contact
GHL_CONTACT_ID_LABEL, GHL_LOCATION_ID_LABEL = "ghl.contact.id", "ghl.location.id"
# the webhook types whose change is a contact's notes or tasks (not the contact record): the sync marks them dirty
GHL_NOTE_TASK_TYPES = frozenset(t for t in GHL_WEBHOOK_EVENTS if t.startswith(("Note", "Task")))
GHL_TASK_TYPES = frozenset(t for t in GHL_WEBHOOK_EVENTS if t.startswith("Task"))

# --- the webhook receiver's own health (service/webhooks.py), notified by service/alerts.py
WEBHOOKS_UNAUTHORIZED = "recon.webhooks.unauthorized"
WEBHOOKS_RESOURCE = "recon.webhooks.receiver"

# --- the long-running services' heartbeats (service/heartbeat.py), one a minute each; `recon services` reads them and
# the `recon: service stopped` automation (service/alerts.py) fires when one stops
SERVICE_HEARTBEAT = "recon.service.heartbeat"
SERVICE_RESOURCE = "recon.service."  # + the service's name (SERVICES)
SERVICE_WEBHOOKS, SERVICE_WATCH, SERVICE_SYNCS = "webhooks", "watch-tinyemail", "syncs"
SERVICES = (SERVICE_WEBHOOKS, SERVICE_WATCH, SERVICE_SYNCS)  # `recon webhooks serve`, `recon watch tinyemail`,
# `recon services serve`

# --- TinyEmail watcher
TINYEMAIL_CUSTOMER_CREATED = "tinyemail.customer.created"
TINYEMAIL_CUSTOMER_UPDATED = "tinyemail.customer.updated"
TINYEMAIL_CUSTOMER_RESOURCE = "tinyemail.customer."  # + normalised email
TINYEMAIL_EMAIL_LABEL = "tinyemail.customer.email"

# --- reconciliation runs (emitted by the flow, turned into notifications by contact_recon/service/alerts.py)
RUN_HELD = "recon.run.held"
RUN_FAILED_OPS = "recon.run.failed_ops"
RUN_RESOURCE = "recon.run."  # + run_id
ALERT_FAILED_OP_SHARE = 0.05  # a run whose failed ops exceed this share of its ops emits RUN_FAILED_OPS

# --- Prefect's own flow-run state events that alert (`prefect.flow-run.<state name>`)
FLOW_RUN_FAILED = "prefect.flow-run.Failed"
FLOW_RUN_CRASHED = "prefect.flow-run.Crashed"
FLOW_RUN_COMPLETED = "prefect.flow-run.Completed"
FLOW_RUN_RUNNING = "prefect.flow-run.Running"
# a run is no longer running: a final state, or waiting (a held run suspended until its approval)
FLOW_RUN_LEFT_RUNNING = frozenset({FLOW_RUN_COMPLETED, FLOW_RUN_FAILED, FLOW_RUN_CRASHED, "prefect.flow-run.Cancelled",
                                   "prefect.flow-run.Paused", "prefect.flow-run.Suspended"})


def ghl_contact_resource(contact_id: str, location_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{GHL_CONTACT_RESOURCE}{contact_id}", GHL_CONTACT_ID_LABEL: contact_id,
            GHL_LOCATION_ID_LABEL: location_id}


def ghl_location_resource(location_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{GHL_LOCATION_RESOURCE}{location_id}", GHL_LOCATION_ID_LABEL: location_id}


def tinyemail_customer_resource(email: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{TINYEMAIL_CUSTOMER_RESOURCE}{email}", TINYEMAIL_EMAIL_LABEL: email}


def service_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{SERVICE_RESOURCE}{name}", "prefect.resource.name": name}


def run_resource(run_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{RUN_RESOURCE}{run_id}", "recon.run.id": run_id}


def failed_ops_exceeded(failed: int, total: int, threshold: float = ALERT_FAILED_OP_SHARE) -> bool:
    """Whether a run's failed operations pass the alert share (a run without operations never does)."""
    return total > 0 and failed / total > threshold


def run_alert_payload(run_id: str, status: str, *, reasons: list[str] | None = None, failed_ops: int = 0,
                      total_ops: int = 0, report: str | None = None, url: str | None = None) -> dict[str, Any]:
    """The payload `emit_run_alert` sends; the notification templates of service/alerts.py read these keys."""
    return {"run_id": run_id, "status": status, "reasons": list(reasons or []), "failed_ops": failed_ops,
            "total_ops": total_ops, "report": report or "", "url": url or ""}


def flow_run_url() -> str | None:
    """The Prefect UI page of the current flow run (from a flow or task run), or None outside one or without a UI."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    run_id = flow_run.id
    return url_for("flow-run", obj_id=run_id) if run_id else None


def emit_run_alert(event: str, run_id: str, status: str, **details: Any) -> Any:
    """Emit `RUN_HELD` or `RUN_FAILED_OPS` for a run (inside a flow run, Prefect adds the run as related).

    `details`: `reasons` (the tripped guards or a one-line cause), `failed_ops`, `total_ops`, `report`
    (the report path), `url` (default: the current flow run's UI page, `flow_run_url`). Returns the emitted
    event, or None when no Prefect API is configured.
    """
    from prefect.events import emit_event

    if event not in (RUN_HELD, RUN_FAILED_OPS):
        raise ValueError(f"not a run alert event: {event}")
    details.setdefault("url", flow_run_url())
    return emit_event(event, resource=run_resource(run_id), payload=run_alert_payload(run_id, status, **details))
