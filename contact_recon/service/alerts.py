"""Alerts (`recon alerts setup --webhook-url URL`): a Prefect notification block and two automations.

- The block is a `CustomWebhookNotificationBlock` named `BLOCK_NAME` that POSTs
  `{"subject": ..., "body": ..., "source": "contact-recon"}` to the URL (Slack-style hooks, an incident
  tool, or `recon alerts listen` writing to a file on 127.0.0.1).
- `recon: flow run failed` fires on every `prefect.flow-run.Failed` or `.Crashed` event (optionally only
  for the named flows, matched through the event's related `flow` resource).
- `recon: run held or failing` fires on `recon.run.held` and `recon.run.failed_ops`, which the
  reconciliation flow emits through `contact_recon.events.emit_run_alert`.
Both are reactive triggers with a threshold of one event, so each event notifies once; the Prefect
server's trigger and action services evaluate them (they run in `prefect server start` and in the test
harness's server alike). Setting up twice updates the block and the automations in place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contact_recon.events import FLOW_RUN_CRASHED, FLOW_RUN_FAILED, RUN_FAILED_OPS, RUN_HELD, RUN_RESOURCE

BLOCK_NAME = "recon-alerts"
FLOW_FAILED_AUTOMATION = "recon: flow run failed"
RUN_ALERT_AUTOMATION = "recon: run held or failing"

FLOW_FAILED_SUBJECT = "contact-recon: flow run {{ flow_run.name }} {{ flow_run.state.name }}"
FLOW_FAILED_BODY = ("Flow {{ flow.name }}, run {{ flow_run.name }} ({{ flow_run.id }}) entered "
                    "{{ flow_run.state.name }}: {{ flow_run.state.message }}")
RUN_ALERT_SUBJECT = "contact-recon: run {{ event.payload.run_id }} {{ event.payload.status }}"
RUN_ALERT_BODY = ("{{ event.event }}: run {{ event.payload.run_id }} is {{ event.payload.status }}. "
                  "Reasons: {{ event.payload.reasons | join('; ') }}. "
                  "Failed operations: {{ event.payload.failed_ops }} of {{ event.payload.total_ops }}. "
                  "Report: {{ event.payload.report }}")


@dataclass(frozen=True)
class AlertSetup:
    block_id: UUID
    automation_ids: dict[str, UUID]
    created: list[str]  # automations created by this call (the others were updated)


def notification_block(webhook_url: str) -> Any:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(  # type: ignore[call-arg]  # headers, cookies: optional fields
        name=BLOCK_NAME, url=webhook_url, method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "contact-recon"},
    )


def automations(block_id: UUID, flow_names: list[str] | None = None) -> list[Any]:
    """The two automations (the module docstring), notifying through the block `block_id`."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    related: dict[str, Any] = {}
    if flow_names:  # only these flows' runs alert; otherwise every failed flow run on this server does
        related = {"prefect.resource.role": "flow", "prefect.resource.name": list(flow_names)}
    failed = EventTrigger(expect={FLOW_RUN_FAILED, FLOW_RUN_CRASHED},
                          match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
                          posture=Posture.Reactive, threshold=1, within=timedelta(0))
    held = EventTrigger(expect={RUN_HELD, RUN_FAILED_OPS}, match={"prefect.resource.id": f"{RUN_RESOURCE}*"},
                        posture=Posture.Reactive, threshold=1, within=timedelta(0))
    return [
        AutomationCore(name=FLOW_FAILED_AUTOMATION, description="A contact-recon flow run failed or crashed.",
                       trigger=failed, actions=[SendNotification(block_document_id=block_id,
                                                                 subject=FLOW_FAILED_SUBJECT, body=FLOW_FAILED_BODY)]),
        AutomationCore(name=RUN_ALERT_AUTOMATION, description="A reconciliation run was held by a guard or "
                       "its failed-operation share passed the alert threshold.",
                       trigger=held, actions=[SendNotification(block_document_id=block_id,
                                                               subject=RUN_ALERT_SUBJECT, body=RUN_ALERT_BODY)]),
    ]


def _upsert_automation(client: Any, automation: Any) -> tuple[UUID, bool]:
    """Update the automation of that name (dropping extra copies), or create it: (id, created)."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        return client.create_automation(automation), True
    keep, *extra = existing
    client.update_automation(keep.id, automation)
    for duplicate in extra:
        client.delete_automation(duplicate.id)
    return keep.id, False


def setup_alerts(webhook_url: str, *, flow_names: list[str] | None = None) -> AlertSetup:
    """Create or update the notification block and both automations on the configured Prefect server."""
    from prefect.client.orchestration import get_client

    block_id = notification_block(webhook_url).save(BLOCK_NAME, overwrite=True)
    ids, created = {}, []
    with get_client(sync_client=True) as client:
        for automation in automations(block_id, flow_names):
            ids[automation.name], new = _upsert_automation(client, automation)
            if new:
                created.append(automation.name)
    return AlertSetup(block_id, ids, created)


# -------------------------------------------------------------------------- a local alert receiver


def sink_app(out: Path) -> Starlette:
    """`recon alerts listen`: append each POSTed alert as one JSON line to `out` (a local example target)."""

    async def receive(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            alert = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            alert = {"raw": raw.decode("utf-8", "replace")}
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(alert, ensure_ascii=False) + "\n")
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
