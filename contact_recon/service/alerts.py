"""Alerts (`recon alerts setup`): one of Prefect's own notification blocks and seven automations.

The block, named `BLOCK_NAME`, is the target chosen at setup (`choose_target`):
- `--slack URL`: a `SlackWebhook` block for a hooks.slack.com (or hooks.slack-gov.com) webhook. Apprise's Slack
  plugin posts to slack.com whatever the URL's host, so a Slack-compatible incoming webhook elsewhere
  (Mattermost, Rocket.Chat, a local receiver) gets a `CustomWebhookNotificationBlock` that POSTs the Slack body
  `{"text": "*subject*\\nbody"}` to that URL instead.
- `--teams URL`: a `MicrosoftTeamsWebhook` block (a Power Automate Workflows URL).
- `--email ADDRESS...`: Apprise's email plugin (`mailto://` or `mailtos://`, built from `SmtpServer`; smtplib,
  no extra package); `--apprise URL`: any Apprise URL. Prefect 3.9 has no concrete block for a raw Apprise
  URL (`AppriseNotificationBlock` is abstract), but `SlackWebhook` hands every URL that is not a Slack
  webhook to Apprise unchanged (its `block_initialization`), so both are saved as a `SlackWebhook` block
  ("Slack Webhook" in the UI) holding that URL.
- `--webhook-url URL`: a `CustomWebhookNotificationBlock` POSTing the Slack `text` plus the older fields
  `{"subject", "body", "source": "contact-recon"}`.
Every URL is a secret (webhook paths hold tokens): the Slack and Teams blocks keep it in their `SecretStr` url,
the custom webhook in its `secrets` (its `url` is the template `{{webhook_url}}`), and only `Target.shown`
(scheme and host, or the email recipients) is ever printed. A block of another type left under the same name
by an earlier setup is deleted once the automations point at the new one.

The automations (`automations`), all notifying through that block:
| name | trigger |
|---|---|
| `recon: flow run failed` | a flow run entered Failed or Crashed (`--flow`: only those flows) |
| `recon: run held` | `recon.run.held`; its payload's `url` is the flow run's page, where the run is approved |
| `recon: failed operations` | `recon.run.failed_ops`: the failed share passed `ALERT_FAILED_OP_SHARE` |
| `recon: nightly did not complete` | proactive: no Completed nightly run within the window after the last |
| `recon: run longer than usual` | proactive: a `reconcile` (or `--flow`) run still Running after the limit |
| `recon: webhooks refused` | `recon.webhooks.unauthorized`: the webhook receiver answered a sustained share of 401s |
| `recon: service stopped` | proactive: a service's heartbeat not followed by another within `service_stale_s` |
The first three and `webhooks refused` are reactive, a threshold of one event, so each event notifies once. The
proactive ones fire on the *absence* of events (`Posture.Proactive`): after an `after` event, fewer than
`threshold` `expect` events within `within`. The nightly's is armed by each Completed run and satisfied by the next
(the same event in `after` and `expect` restarts the window, the pattern of Prefect's heartbeat crash detection);
with no bucket per run (`for_each` empty) the server also opens a window on its own, so it fires even if no nightly
ever completed since the setup (and again every other window while none does). The long run's bucket is per flow
run: Running starts it, and leaving Running (a terminal state, or Paused/Suspended while a held run waits for its
approval; a resume starts a new window) satisfies it. The service one (`recon.service.heartbeat`) has a bucket per
service (`recon.service.<name>`, service/heartbeat.py): each heartbeat satisfies its window and opens the next, so
a service that stops beating (killed, hung, its host down) alerts once its window ends.
Links: the run events' `url` is computed in the flow run's own process (`contact_recon.events.flow_run_url`); the
failed and long-run alerts link the run through the server's `ui_url` template filter, which gives a link only
when the server knows its UI URL (PREFECT_UI_URL, or PREFECT_API_URL, in the server's environment).
The Prefect server's trigger and action services evaluate them (in `prefect server start` and in the test
harness's server alike; proactive triggers every `PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY`, 5 s by
default). Setting up again updates the block and the automations in place, by name, and deletes the automations
of `RETIRED_AUTOMATIONS`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit
from uuid import UUID

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contact_recon.events import (
    ALERT_FAILED_OP_SHARE,
    FLOW_RUN_COMPLETED,
    FLOW_RUN_CRASHED,
    FLOW_RUN_FAILED,
    FLOW_RUN_LEFT_RUNNING,
    FLOW_RUN_RUNNING,
    RUN_FAILED_OPS,
    RUN_HELD,
    RUN_RESOURCE,
    SERVICE_HEARTBEAT,
    SERVICE_RESOURCE,
    WEBHOOKS_RESOURCE,
    WEBHOOKS_UNAUTHORIZED,
)
from contact_recon.settings import Settings
from contact_recon.systems.redaction import register_secret

BLOCK_NAME = "recon-alerts"
FLOW_FAILED_AUTOMATION = "recon: flow run failed"
RUN_HELD_AUTOMATION = "recon: run held"
FAILED_OPS_AUTOMATION = "recon: failed operations"
NIGHTLY_AUTOMATION = "recon: nightly did not complete"
LONG_RUN_AUTOMATION = "recon: run longer than usual"
WEBHOOKS_REFUSED_AUTOMATION = "recon: webhooks refused"
SERVICE_STOPPED_AUTOMATION = "recon: service stopped"
RETIRED_AUTOMATIONS = ("recon: run held or failing",)  # earlier names, deleted by the setup

NIGHTLY_DEPLOYMENT = "nightly-reconcile"  # prefect.yaml
RECONCILE_FLOW = "reconcile"  # flows/reconcile.py
SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")  # what Prefect's SlackWebhook posts to itself
SLACK_TEXT = "*{{subject}}*\n{{body}}"  # the Slack incoming-webhook body, in the custom webhook's placeholders
URL_SECRET = "webhook_url"  # the custom webhook's URL, kept in its `secrets`
PROACTIVE_MINIMUM = timedelta(seconds=10)  # the shortest `within` Prefect takes for a proactive trigger

FLOW_FAILED_SUBJECT = "contact-recon: flow run {{ flow_run.name }} {{ flow_run.state.name }}"
RUN_LINK = "{% if flow_run|ui_url %} {{ flow_run|ui_url }}{% endif %}"  # the server may know no UI URL
FLOW_FAILED_BODY = ("Flow {{ flow.name }}, run {{ flow_run.name }} ({{ flow_run.id }}) entered "
                    "{{ flow_run.state.name }}: {{ flow_run.state.message }}" + RUN_LINK)
RUN_HELD_SUBJECT = "contact-recon: run {{ event.payload.run_id }} held for approval"
RUN_HELD_BODY = ("Run {{ event.payload.run_id }} was held by its guards: {{ event.payload.reasons | join('; ') }}. "
                 "{% if event.payload.url %}Approve or reject it: {{ event.payload.url }}"
                 "{% else %}Approve it with `recon approve {{ event.payload.run_id }}`{% endif %}. "
                 "Report: {{ event.payload.report }}")
FAILED_OPS_SUBJECT = ("contact-recon: run {{ event.payload.run_id }}: {{ event.payload.failed_ops }} of "
                      "{{ event.payload.total_ops }} operations failed")
FAILED_OPS_BODY = ("Run {{ event.payload.run_id }} ({{ event.payload.status }}): {{ event.payload.failed_ops }} of "
                   "{{ event.payload.total_ops }} operations failed, more than the alert share of "
                   f"{ALERT_FAILED_OP_SHARE:.0%}. "
                   "{% if event.payload.url %}Run: {{ event.payload.url }} {% endif %}"
                   "Report: {{ event.payload.report }}")
SERVICE_STOPPED_SUBJECT = "contact-recon: service {{ event.resource['prefect.resource.name'] }} silent for "
WEBHOOKS_REFUSED_SUBJECT = ("contact-recon: {{ event.payload.refused }} of {{ event.payload.requests }} GHL webhooks "
                            "refused (bad signature)")
WEBHOOKS_REFUSED_BODY = ("`recon webhooks serve` refused {{ event.payload.refused }} of the last "
                         "{{ event.payload.requests }} webhooks (within {{ event.payload.window_s }} s) with 401: no "
                         "valid signature under the configured keys ({{ event.payload.key_types | join(', ') }}). "
                         "GHL does not retry a 401, so these changes wait for the nightly run. If GHL rotated its key, "
                         "or signs only X-GHL-Signature (Ed25519) and no Ed25519 key is configured, set "
                         "RECON_GHL_WEBHOOK_PUBLIC_KEY and restart the receiver; `recon doctor` shows the key types.")


# -------------------------------------------------------------------------- the target


class AlertTargetError(ValueError):
    """The setup was given no target, several, one that is not valid (the message never holds the URL), or a
    window too short."""


@dataclass(frozen=True)
class Target:
    block: Any  # an unsaved Prefect notification block
    shown: str  # what to print: the block type and a redacted target


@dataclass(frozen=True)
class SmtpServer:
    """Where `--email` alerts are sent from (Apprise's email plugin speaks SMTP itself)."""

    host: str
    port: int = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str | None = None  # the From address; default: the username if it is an address


def shown_url(url: str) -> str:
    """A URL as it may be printed: scheme and host only (the path and query hold the tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _http_url(url: str, option: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertTargetError(f"{option} takes an http(s) URL")
    register_secret(url)
    return url


def slack_target(url: str) -> Target:
    """`--slack URL` (the module docstring: SlackWebhook for Slack itself, the Slack body for other hosts)."""
    from prefect.blocks.notifications import SlackWebhook

    if urlsplit(_http_url(url, "--slack")).hostname in SLACK_HOSTS:
        return Target(SlackWebhook(url=SecretStr(url)), f"Slack webhook {shown_url(url)}")
    return Target(_custom_webhook(url, {"text": SLACK_TEXT}), f"Slack-compatible webhook {shown_url(url)}")


def teams_target(url: str) -> Target:
    from prefect.blocks.notifications import MicrosoftTeamsWebhook

    try:
        block = MicrosoftTeamsWebhook(url=SecretStr(_http_url(url, "--teams")))
    except ValueError:  # its own message may quote the URL
        raise AlertTargetError("--teams takes a Microsoft Teams Workflows (Power Automate) URL") from None
    return Target(block, f"Microsoft Teams webhook {shown_url(url)}")


def apprise_target(url: str) -> Target:
    """`--apprise URL`: any URL Apprise knows, in a SlackWebhook block (the module docstring says why)."""
    from apprise import Apprise
    from prefect.blocks.notifications import SlackWebhook

    register_secret(url)
    if Apprise.instantiate(url) is None:
        raise AlertTargetError("--apprise takes a URL Apprise knows (https://github.com/caronc/apprise/wiki)")
    return Target(SlackWebhook(url=SecretStr(url)), f"Apprise {url.split('://', 1)[0]}://…")


def email_url(addresses: Sequence[str], smtp: SmtpServer) -> str:
    """The Apprise email URL: `mailtos://` for TLS (STARTTLS or implicit), `mailto://` for plain SMTP."""
    scheme = "mailto" if smtp.security == "none" else "mailtos"
    auth = ""
    if smtp.username:
        password = smtp.password.get_secret_value() if smtp.password else ""
        auth = quote(smtp.username, safe="") + (f":{quote(password, safe='')}" if password else "") + "@"
    query: dict[str, str] = {"to": ",".join(addresses), "smtp": smtp.host}
    if smtp.security != "none":
        query["mode"] = smtp.security
    sender = smtp.sender or (smtp.username if smtp.username and "@" in smtp.username else None)
    if sender:
        query["from"] = sender
    return f"{scheme}://{auth}{smtp.host}:{smtp.port}?{urlencode(query)}"


def email_target(addresses: Sequence[str], smtp: SmtpServer) -> Target:
    from prefect.blocks.notifications import SlackWebhook

    if not addresses or not all("@" in address for address in addresses):
        raise AlertTargetError("--email takes email addresses")
    if smtp.password:
        register_secret(smtp.password.get_secret_value())
    url = email_url(addresses, smtp)
    register_secret(url)
    return Target(SlackWebhook(url=SecretStr(url)),
                  f"email to {', '.join(addresses)} through {smtp.host}:{smtp.port} ({smtp.security})")


def webhook_target(url: str) -> Target:
    """`--webhook-url URL`: the Slack `text` and the older `subject`, `body`, `source` fields."""
    fields = {"text": SLACK_TEXT, "subject": "{{subject}}", "body": "{{body}}", "source": "contact-recon"}
    return Target(_custom_webhook(_http_url(url, "--webhook-url"), fields), f"webhook {shown_url(url)}")


def _custom_webhook(url: str, json_data: dict[str, str]) -> Any:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.types import SecretDict

    return CustomWebhookNotificationBlock(  # type: ignore[call-arg]  # headers, cookies: optional fields
        name=BLOCK_NAME, url="{{" + URL_SECRET + "}}", method="POST", json_data=json_data,
        secrets=SecretDict({URL_SECRET: url}),
    )


def choose_target(*, slack: str | None = None, teams: str | None = None, email: Sequence[str] = (),
                  smtp: SmtpServer | None = None, apprise: str | None = None,
                  webhook_url: str | None = None) -> Target:
    """The one target `recon alerts setup` was given (AlertTargetError for none or several)."""
    given = {"--slack": slack, "--teams": teams, "--email": list(email) or None, "--apprise": apprise,
             "--webhook-url": webhook_url}
    chosen = [option for option, value in given.items() if value]
    if len(chosen) != 1:
        raise AlertTargetError(f"give exactly one of {', '.join(given)} (got {', '.join(chosen) or 'none'})")
    if slack:
        return slack_target(slack)
    if teams:
        return teams_target(teams)
    if email:
        if smtp is None:
            raise AlertTargetError("--email needs --smtp-host")
        return email_target(email, smtp)
    if apprise:
        return apprise_target(apprise)
    assert webhook_url
    return webhook_target(webhook_url)


# -------------------------------------------------------------------------- the automations


@dataclass(frozen=True)
class AlertRules:
    """What the automations watch (the CLI's `--flow`, `--nightly-*` and `--long-run-minutes`)."""

    nightly_window: timedelta  # a day and a grace (RECON_ALERT_NIGHTLY_WINDOW_HOURS)
    long_run: timedelta  # RECON_ALERT_LONG_RUN_MINUTES
    flow_names: tuple[str, ...] = ()  # failed runs of only these flows (empty: every flow); long runs of these
    nightly_deployment: str = NIGHTLY_DEPLOYMENT
    service_stale: timedelta = timedelta(minutes=3)  # RECON_SERVICE_STALE_S: a service silent this long stopped

    def __post_init__(self) -> None:
        if min(self.nightly_window, self.long_run, self.service_stale) < PROACTIVE_MINIMUM:
            raise AlertTargetError(f"an alert window is at least {human(PROACTIVE_MINIMUM)} (Prefect's minimum for a "
                                   "proactive trigger)")

    @classmethod
    def from_settings(cls, settings: Settings, *, flow_names: Sequence[str] = (),
                      nightly_deployment: str = NIGHTLY_DEPLOYMENT, nightly_window_hours: float | None = None,
                      long_run_minutes: float | None = None) -> AlertRules:
        """The rules with the windows not given taken from the settings."""
        hours = settings.alert_nightly_window_hours if nightly_window_hours is None else nightly_window_hours
        minutes = settings.alert_long_run_minutes if long_run_minutes is None else long_run_minutes
        return cls(timedelta(hours=hours), timedelta(minutes=minutes), tuple(flow_names), nightly_deployment,
                   timedelta(seconds=settings.service_stale_s))

    @property
    def long_run_flows(self) -> list[str]:
        return list(self.flow_names) or [RECONCILE_FLOW]


@dataclass(frozen=True)
class AlertSetup:
    block_id: UUID
    automation_ids: dict[str, UUID]
    created: list[str]  # automations created by this call (the others were updated)


def human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def automations(block_id: UUID, rules: AlertRules) -> list[Any]:
    """The seven automations (the module docstring), notifying through the block `block_id`."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore

    def automation(name: str, description: str, trigger: Any, subject: str, body: str) -> Any:
        action = SendNotification(block_document_id=block_id, subject=subject, body=body)
        return AutomationCore(name=name, description=description, trigger=trigger, actions=[action])

    nightly, long_run, stale = human(rules.nightly_window), human(rules.long_run), human(rules.service_stale)
    return [
        automation(FLOW_FAILED_AUTOMATION, "A contact-recon flow run failed or crashed.", _failed_trigger(rules),
                   FLOW_FAILED_SUBJECT, FLOW_FAILED_BODY),
        automation(RUN_HELD_AUTOMATION, "A reconciliation run was held by a guard and waits for its approval.",
                   _run_event_trigger(RUN_HELD), RUN_HELD_SUBJECT, RUN_HELD_BODY),
        automation(FAILED_OPS_AUTOMATION, "A run's failed-operation share passed the alert threshold.",
                   _run_event_trigger(RUN_FAILED_OPS), FAILED_OPS_SUBJECT, FAILED_OPS_BODY),
        automation(NIGHTLY_AUTOMATION, f"No run of {rules.nightly_deployment} completed within {nightly} of the "
                   "previous one.", _nightly_trigger(rules), f"contact-recon: no {rules.nightly_deployment} run "
                   f"completed in {nightly}", _nightly_body(rules.nightly_deployment, nightly)),
        automation(LONG_RUN_AUTOMATION, f"A reconciliation run is still running after {long_run}.",
                   _long_run_trigger(rules), "contact-recon: flow run {{ flow_run.name }} still running after "
                   + long_run, _long_run_body(long_run)),
        automation(WEBHOOKS_REFUSED_AUTOMATION, "The GHL webhook receiver refused a sustained share of webhooks with "
                   "401 (a rotated or missing key).", _webhooks_refused_trigger(), WEBHOOKS_REFUSED_SUBJECT,
                   WEBHOOKS_REFUSED_BODY),
        automation(SERVICE_STOPPED_AUTOMATION, f"A contact-recon service sent no heartbeat for {stale}.",
                   _service_stopped_trigger(rules), SERVICE_STOPPED_SUBJECT + stale, _service_stopped_body(stale)),
    ]


def _long_run_body(limit: str) -> str:
    return ("Flow {{ flow.name }}, run {{ flow_run.name }} started running at {{ event.occurred }} and has not "
            f"finished after {limit} (now {{{{ flow_run.state.name }}}}).{RUN_LINK}")


def _nightly_body(deployment: str, window: str) -> str:
    return (f"No run of the deployment {deployment} completed within {window} "
            "{% if event %}of the previous one, {{ flow_run.name }} (completed {{ event.occurred }})"
            "{% else %}of the alert setup{% endif %}: the run did not start (the schedule, the work pool's "
            "worker) or did not finish.")


def _failed_trigger(rules: AlertRules) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    related: dict[str, Any] = {}
    if rules.flow_names:  # only these flows' runs alert; otherwise every failed flow run on this server does
        related = {"prefect.resource.role": "flow", "prefect.resource.name": list(rules.flow_names)}
    return EventTrigger(expect={FLOW_RUN_FAILED, FLOW_RUN_CRASHED}, match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related=related, posture=Posture.Reactive, threshold=1, within=timedelta(0))


def _run_event_trigger(event: str) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(expect={event}, match={"prefect.resource.id": f"{RUN_RESOURCE}*"},
                        posture=Posture.Reactive, threshold=1, within=timedelta(0))


def _webhooks_refused_trigger() -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    # the receiver itself emits at most one per window of refusals (service/webhooks.py UnauthorizedWatch)
    return EventTrigger(expect={WEBHOOKS_UNAUTHORIZED}, match={"prefect.resource.id": WEBHOOKS_RESOURCE},
                        posture=Posture.Reactive, threshold=1, within=timedelta(0))


def _nightly_trigger(rules: AlertRules) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    # one bucket for all the deployment's runs (no for_each): each Completed satisfies the window and opens the next
    return EventTrigger(after={FLOW_RUN_COMPLETED}, expect={FLOW_RUN_COMPLETED},
                        match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related={"prefect.resource.role": "deployment",
                                       "prefect.resource.name": rules.nightly_deployment},
                        for_each=set(), posture=Posture.Proactive, threshold=1, within=rules.nightly_window)


def _service_stopped_body(stale: str) -> str:
    return ("The contact-recon service {{ event.resource['prefect.resource.name'] }} sent no heartbeat for "
            f"{stale}" + "{% if event %} (its last: {{ event.occurred }}, pid {{ event.payload.pid }} on "
            "{{ event.payload.host }}){% endif %}. Changes between nights wait until it runs again (the nightly "
            "reads everyone); `recon services` shows each service's state.")


def _service_stopped_trigger(rules: AlertRules) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    # a bucket per service; each heartbeat satisfies the window and opens the next (Prefect's heartbeat pattern)
    return EventTrigger(after={SERVICE_HEARTBEAT}, expect={SERVICE_HEARTBEAT},
                        match={"prefect.resource.id": f"{SERVICE_RESOURCE}*"}, for_each={"prefect.resource.id"},
                        posture=Posture.Proactive, threshold=1, within=rules.service_stale)


def _long_run_trigger(rules: AlertRules) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    # a bucket per flow run; Running is in both `after` and `expect`, so a resumed run starts a window of its own
    return EventTrigger(after={FLOW_RUN_RUNNING}, expect={FLOW_RUN_RUNNING, *FLOW_RUN_LEFT_RUNNING},
                        match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related={"prefect.resource.role": "flow", "prefect.resource.name": rules.long_run_flows},
                        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                        within=rules.long_run)


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


def _drop_other_blocks(client: Any, keep: Any) -> None:
    """Delete the `BLOCK_NAME` blocks of the other notification types an earlier setup may have left."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook
    from prefect.exceptions import ObjectNotFound

    for block_type in (CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook):
        slug = block_type.get_block_type_slug()
        if slug == keep.get_block_type_slug():
            continue
        try:
            document = client.read_block_document_by_name(BLOCK_NAME, slug, include_secrets=False)
        except ObjectNotFound:
            continue
        client.delete_block_document(document.id)


def setup_alerts(target: Target, rules: AlertRules) -> AlertSetup:
    """Create or update the notification block and the automations on the configured Prefect server."""
    from prefect.client.orchestration import get_client

    block_id = target.block.save(BLOCK_NAME, overwrite=True)
    ids, created = {}, []
    with get_client(sync_client=True) as client:
        for automation in automations(block_id, rules):
            ids[automation.name], new = _upsert_automation(client, automation)
            if new:
                created.append(automation.name)
        for name in RETIRED_AUTOMATIONS:
            for retired in client.read_automations_by_name(name):
                client.delete_automation(retired.id)
        _drop_other_blocks(client, target.block)
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
