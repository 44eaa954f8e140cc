"""Alerts end to end on the session's real Prefect server: its trigger and action services (they run in
the test harness's server: `RunInEphemeralServers`, and the proactive triggers' perpetual service every
5 s, `PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY`) turn a `recon.run.*` event, a failed flow run, a missing
nightly or a long run into a POST from the notification block to `recon alerts listen`'s app on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import SecretStr

from contact_recon.events import (
    FLOW_RUN_COMPLETED,
    FLOW_RUN_RUNNING,
    RUN_FAILED_OPS,
    RUN_HELD,
    emit_run_alert,
    failed_ops_exceeded,
    run_alert_payload,
)
from contact_recon.report.publish import emit_alert_events
from contact_recon.sandbox.server import RunningServer
from contact_recon.service.alerts import (
    BLOCK_NAME,
    FAILED_OPS_AUTOMATION,
    FLOW_FAILED_AUTOMATION,
    LONG_RUN_AUTOMATION,
    NIGHTLY_AUTOMATION,
    RUN_HELD_AUTOMATION,
    SERVICE_STOPPED_AUTOMATION,
    URL_SECRET,
    WEBHOOKS_REFUSED_AUTOMATION,
    AlertRules,
    AlertSetup,
    AlertTargetError,
    SmtpServer,
    Target,
    apprise_target,
    choose_target,
    email_target,
    setup_alerts,
    sink_app,
    slack_target,
    teams_target,
    webhook_target,
)
from tests.support.prefect import prefect_events  # noqa: F401

RECON = [sys.executable, "-m", "contact_recon.cli.main"]
RULES = AlertRules(nightly_window=timedelta(hours=26), long_run=timedelta(hours=2))
ALL_AUTOMATIONS = [FLOW_FAILED_AUTOMATION, RUN_HELD_AUTOMATION, FAILED_OPS_AUTOMATION, NIGHTLY_AUTOMATION,
                   LONG_RUN_AUTOMATION, WEBHOOKS_REFUSED_AUTOMATION, SERVICE_STOPPED_AUTOMATION]
TEAMS_URL = ("https://prod-00.westus.logic.azure.com:443/workflows/abc123/triggers/manual/paths/invoke"
             "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=TEAMSSIGNATURE")


def read_alerts(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_alert(path: Path, needle: str, timeout: float = 45.0) -> dict[str, Any]:
    """The first alert with `needle` in one of its string fields (text, subject, body, message...)."""
    deadline = time.monotonic() + timeout
    while True:
        for alert in read_alerts(path):
            if any(isinstance(value, str) and needle in value for value in alert.values()):
                return alert
        assert time.monotonic() < deadline, f"no alert mentioning {needle}; got {read_alerts(path)}"
        time.sleep(0.3)


def delete_automations(setup: AlertSetup) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # leave no automation pointing at a stopped sink
        for automation_id in setup.automation_ids.values():
            client.delete_automation(automation_id)


def set_up(target: Target, rules: AlertRules = RULES) -> AlertSetup:
    setup = setup_alerts(target, rules)
    time.sleep(0.5)  # on SQLite the server loads a changed automation in a task scheduled after the commit
    return setup


@pytest.fixture
def alerts(serve: Any, tmp_path: Path, prefect_events: str) -> Iterator[tuple[AlertSetup, Path, RunningServer]]:  # noqa: F811
    """The automations notifying a Slack-compatible receiver (`--slack` at a host that is not Slack's)."""
    out = tmp_path / "alerts.jsonl"
    sink = serve(sink_app(out))
    setup = set_up(slack_target(sink.base_url + "/slack/T0K3N"))
    yield setup, out, sink
    delete_automations(setup)


def test_setup_creates_the_block_and_automations_once(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import Posture

    setup, _, sink = alerts
    assert sorted(setup.automation_ids) == sorted(ALL_AUTOMATIONS)
    block = CustomWebhookNotificationBlock.load(BLOCK_NAME)
    assert block.json_data == {"text": "*{{subject}}*\n{{body}}"}
    assert block.url == "{{" + URL_SECRET + "}}"  # the URL (a token in its path) is kept as a secret
    assert block.secrets.get_secret_value() == {URL_SECRET: sink.base_url + "/slack/T0K3N"}

    again = set_up(slack_target(sink.base_url + "/slack/T0K3N"))  # idempotent: same block and automations
    assert again.block_id == setup.block_id and again.automation_ids == setup.automation_ids
    assert again.created == []
    with get_client(sync_client=True) as client:
        found = {name: client.read_automations_by_name(name) for name in ALL_AUTOMATIONS}
    assert all(len(copies) == 1 for copies in found.values())
    held, failed, nightly, long_run = (found[name][0].trigger for name in (
        RUN_HELD_AUTOMATION, FLOW_FAILED_AUTOMATION, NIGHTLY_AUTOMATION, LONG_RUN_AUTOMATION))
    assert held.expect == {RUN_HELD} and held.threshold == 1 and held.posture == Posture.Reactive
    assert found[FAILED_OPS_AUTOMATION][0].trigger.expect == {RUN_FAILED_OPS}
    assert failed.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert nightly.posture == Posture.Proactive and nightly.within == timedelta(hours=26)
    assert nightly.after == nightly.expect == {FLOW_RUN_COMPLETED} and not nightly.for_each
    assert nightly.match_related.root == {"prefect.resource.role": "deployment",
                                          "prefect.resource.name": "nightly-reconcile"}
    assert long_run.posture == Posture.Proactive and long_run.within == timedelta(hours=2)
    assert long_run.after == {FLOW_RUN_RUNNING} and {"prefect.flow-run.Suspended", "prefect.flow-run.Completed"} \
        <= long_run.expect and long_run.for_each == {"prefect.resource.id"}
    assert {tuple(a.type for a in found[name][0].actions) for name in ALL_AUTOMATIONS} == {("send-notification",)}
    assert found[RUN_HELD_AUTOMATION][0].actions[0].block_document_id == setup.block_id


def test_a_held_run_posts_a_slack_body_with_the_link_to_its_approval(
        alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    from prefect import flow
    from prefect.runtime import flow_run

    _, out, _ = alerts
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    summary = {"run_id": run_id, "status": "held", "guards": [{"name": "mass_delete", "reason": "mass delete: 40%"}],
               "counts": {"ghl": {"delete": 40}}, "failed": 0, "report": "/data/runs/x/report.html"}

    @flow(name=f"recon-held-probe-{run_id}")
    def held_run() -> str:  # the report step of a held run, inside its flow run
        emit_alert_events(summary)
        return str(flow_run.id)

    flow_run_id = held_run()
    alert = wait_for_alert(out, run_id)
    assert list(alert) == ["text"]  # the Slack incoming-webhook shape
    subject, body = alert["text"].split("\n", 1)
    assert subject == f"*contact-recon: run {run_id} held for approval*"
    assert "mass delete: 40%" in body and "/data/runs/x/report.html" in body
    assert "Approve or reject it: http://127.0.0.1:" in body and f"/runs/flow-run/{flow_run_id}" in body


def test_a_failed_op_share_notifies(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    _, out, _ = alerts
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    assert emit_run_alert(RUN_FAILED_OPS, run_id, "completed", failed_ops=7, total_ops=100,
                          report="/data/runs/y/report.html") is not None
    text = wait_for_alert(out, run_id)["text"]
    assert text.startswith(f"*contact-recon: run {run_id}: 7 of 100 operations failed*\n")
    assert "more than the alert share of 5%" in text and "/data/runs/y/report.html" in text
    assert "Run: " not in text  # emitted outside a flow run: no page to link


def test_webhooks_refused_with_401_notify(alerts: tuple[AlertSetup, Path, RunningServer], serve: Any,
                                          tmp_path: Path) -> None:
    """A key GHL rotated: the receiver refuses every webhook; past the 401 rule it emits its event, and the
    automation notifies the team (the receiver's forwarder carries the event to the server)."""
    from contact_recon.sandbox.ghl_webhooks import sign
    from contact_recon.service.webhooks import PATH, create_app
    from contact_recon.settings import Settings
    from contact_recon.systems.ghl.contract import ED25519_SIGNATURE_HEADER

    _, out, _ = alerts
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", ghl_webhook_public_key="sandbox",
                        webhook_401_alert_min=3, webhook_401_alert_share=0.5)
    receiver = serve(create_app(settings))
    rotated = ed25519.Ed25519PrivateKey.generate()
    for _ in range(3):
        raw = json.dumps({"type": "ContactUpdate", "webhookId": str(uuid.uuid4())}).encode()
        answer = httpx.post(receiver.base_url + PATH, content=raw,
                            headers={ED25519_SIGNATURE_HEADER: sign(raw, rotated)}, timeout=10)
        assert answer.status_code == 401
    text = wait_for_alert(out, "GHL webhooks refused")["text"]
    receiver.app.state.forwarder.stop()
    assert text.startswith("*contact-recon: 3 of 3 GHL webhooks refused (bad signature)*\n")
    assert "(Ed25519, RSA)" in text and "RECON_GHL_WEBHOOK_PUBLIC_KEY" in text


def test_a_failed_flow_run_notifies(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    from prefect import flow

    _, out, _ = alerts
    name = f"recon-alert-probe-{uuid.uuid4().hex[:6]}"

    @flow(name=name, retries=0)
    def failing() -> None:
        raise RuntimeError("probe failure")

    state = failing(return_state=True)
    assert state.is_failed()
    text = wait_for_alert(out, name)["text"]
    assert "Failed*\n" in text and "probe failure" in text
    assert text.endswith("probe failure")  # the harness's server knows no UI URL: no link, and no "None"


def test_the_nightly_and_long_run_automations_fire_after_a_short_window(
        serve: Any, tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    """10 s windows (Prefect's minimum for a proactive trigger) on a deployment and flow of this test's own."""
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    out = tmp_path / "alerts.jsonl"
    sink = serve(sink_app(out))
    tag = uuid.uuid4().hex[:6]
    flow_name, deployment, window = f"recon-probe-{tag}", f"nightly-probe-{tag}", timedelta(seconds=10)
    setup = set_up(slack_target(sink.base_url + "/slack"), AlertRules(window, window, (flow_name,), deployment))
    try:
        with get_client(sync_client=True) as client:
            deployment_id = client.create_deployment(client.create_flow_from_name(flow_name), deployment)

            def start(name: str) -> Any:
                run = client.create_flow_run_from_deployment(deployment_id, name=f"{name}-{tag}")
                client.set_flow_run_state(run.id, Running(), force=True)
                return run

            first = start("first")
            client.set_flow_run_state(first.id, Completed(), force=True)
            time.sleep(4)
            second = start("second")  # completes 4 s later: the nightly's window restarts from it
            client.set_flow_run_state(second.id, Completed(), force=True)
            armed = time.monotonic()
            stuck = start("stuck")  # Running, and never finishes

            text = wait_for_alert(out, f"no {deployment} run completed")["text"]
            assert time.monotonic() - armed >= window.total_seconds() - 1.5, "fired before the window ended"
            assert text.startswith(f"*contact-recon: no {deployment} run completed in 10 s*\n")
            assert second.name in text and first.name not in text  # "of the previous one": the second run

            text = wait_for_alert(out, "still running")["text"]
            assert text.startswith(f"*contact-recon: flow run {stuck.name} still running after 10 s*\n")
            assert text.endswith("(now Running).")  # and no link: the harness's server knows no UI URL
            time.sleep(1)  # the finished runs' windows ended at the same time: none of them alerts
            long_runs = [a["text"] for a in read_alerts(out) if "still running" in a["text"]]
            assert len(long_runs) == 1, long_runs
            client.set_flow_run_state(stuck.id, Completed(), force=True)
    finally:
        delete_automations(setup)


def test_the_webhook_url_target_keeps_the_older_fields(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    _, out, sink = alerts
    set_up(webhook_target(sink.base_url + "/hook"))  # the same automations (the fixture deletes them), a new body
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    emit_run_alert(RUN_HELD, run_id, "held", reasons=["consent loosening"], report="r.html")
    alert = wait_for_alert(out, run_id)
    assert sorted(alert) == ["body", "source", "subject", "text"] and alert["source"] == "contact-recon"
    assert alert["text"] == f"*{alert['subject']}*\n{alert['body']}"
    assert "consent loosening" in alert["body"] and "recon approve " + run_id in alert["body"]  # no flow run


def test_an_apprise_url_is_sent_through_apprise_and_replaces_the_other_block(
        alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    from prefect.blocks.notifications import SlackWebhook
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    _, out, sink = alerts
    url = sink.base_url.replace("http://", "json://") + "/apprise"
    set_up(apprise_target(url))
    assert SlackWebhook.load(BLOCK_NAME).url.get_secret_value() == url
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):  # the custom webhook is gone
        client.read_block_document_by_name(BLOCK_NAME, "custom-webhook")
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    emit_run_alert(RUN_HELD, run_id, "held", reasons=["mass update"])
    alert = wait_for_alert(out, run_id)  # Apprise's JSON plugin: title and message
    assert alert["title"] == f"contact-recon: run {run_id} held for approval" and "mass update" in alert["message"]


class SmtpSink(socketserver.ThreadingTCPServer):
    """Just enough SMTP on 127.0.0.1 for Apprise's email plugin (plain, no login): keeps each message."""

    daemon_threads = allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SmtpSession)
        self.messages: list[email.message.EmailMessage] = []


class SmtpSession(socketserver.StreamRequestHandler):
    server: SmtpSink

    def handle(self) -> None:
        self.wfile.write(b"220 sink\r\n")
        lines: list[bytes] | None = None  # the message's lines while in DATA
        while line := self.rfile.readline():
            if lines is not None:
                if line.rstrip(b"\r\n") != b".":
                    lines.append(line[1:] if line.startswith(b"..") else line)
                    continue
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                self.server.messages.append(message)  # type: ignore[arg-type]  # the default policy: EmailMessage
                lines = None
                reply = b"250 queued"
            else:
                verb = line[:4].upper()
                reply = {b"DATA": b"354 go on", b"QUIT": b"221 bye"}.get(verb, b"250 ok")
                lines = [] if verb == b"DATA" else None
            self.wfile.write(reply + b"\r\n")
            if reply.startswith(b"221"):
                return


def test_an_email_target_mails_through_the_smtp_server(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    sink = SmtpSink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        set_up(email_target(["ops@example.org"], SmtpServer("127.0.0.1", sink.server_address[1], "none",
                                                            sender="recon@example.org")))
        run_id = f"run-{uuid.uuid4().hex[:8]}"
        emit_run_alert(RUN_HELD, run_id, "held", reasons=["identity ambiguous"])
        deadline = time.monotonic() + 45
        while not sink.messages:
            assert time.monotonic() < deadline, "no email arrived"
            time.sleep(0.3)
        [message] = sink.messages
        assert message["Subject"] == f"contact-recon: run {run_id} held for approval"
        assert message["To"] == "ops@example.org" and "recon@example.org" in message["From"]
        body = message.get_body(("plain", "html"))
        assert body is not None and "identity ambiguous" in body.get_content()
    finally:
        sink.shutdown()
        sink.server_close()


def test_targets_choose_a_prefect_block_and_never_show_the_secret() -> None:
    from apprise import Apprise
    from prefect.blocks.notifications import MicrosoftTeamsWebhook, SlackWebhook

    slack = choose_target(slack="https://hooks.slack.com/services/T000/B000/SLACKSECRET")
    assert isinstance(slack.block, SlackWebhook) and isinstance(slack.block.url, SecretStr)
    assert slack.shown == "Slack webhook https://hooks.slack.com/…"
    teams = choose_target(teams=TEAMS_URL)
    assert isinstance(teams.block, MicrosoftTeamsWebhook) and "TEAMSSIGNATURE" not in teams.shown
    assert choose_target(webhook_url="https://incident.example/hook/SECRET").shown == "webhook https://incident.example/…"
    assert choose_target(apprise="discord://WEBHOOKID/WEBHOOKTOKEN").shown == "Apprise discord://…"

    email = email_target(["a@x.org", "b@y.org"], SmtpServer("smtp.x.org", 587, "starttls", "bot@x.org",
                                                            SecretStr("p@ss/w:rd")))
    assert email.shown == "email to a@x.org, b@y.org through smtp.x.org:587 (starttls)" and "p@ss" not in email.shown
    plugin = Apprise.instantiate(email.block.url.get_secret_value())  # what the block will send through
    assert [address for _, address in plugin.targets] == ["a@x.org", "b@y.org"]
    assert (plugin.smtp_host, plugin.port, plugin.secure_mode, plugin.password) == ("smtp.x.org", 587, "starttls",
                                                                                    "p@ss/w:rd")

    for bad, message in [({}, "got none"), ({"slack": "https://hooks.slack.com/x", "teams": TEAMS_URL}, "got --slack"),
                         ({"teams": "https://example.com/SECRETPATH"}, "Workflows"),
                         ({"slack": "ftp://host/SECRETPATH"}, "an http"), ({"apprise": "nope://SECRETPATH"}, "Apprise"),
                         ({"email": ["ops@x.org"]}, "--smtp-host")]:
        with pytest.raises(AlertTargetError, match=message) as caught:
            choose_target(**bad)
        assert "SECRETPATH" not in str(caught.value)
    with pytest.raises(AlertTargetError):
        teams_target("https://example.com/nope")
    with pytest.raises(AlertTargetError, match="at least 10 s"):  # Prefect refuses a shorter proactive window
        AlertRules(nightly_window=timedelta(seconds=5), long_run=timedelta(hours=1))


def test_failed_op_share_and_payload() -> None:
    assert failed_ops_exceeded(6, 100) and not failed_ops_exceeded(5, 100) and not failed_ops_exceeded(0, 0)
    assert failed_ops_exceeded(2, 10, threshold=0.1)
    assert run_alert_payload("r1", "completed", failed_ops=3, total_ops=9) == {
        "run_id": "r1", "status": "completed", "reasons": [], "failed_ops": 3, "total_ops": 9, "report": "",
        "url": ""}
    with pytest.raises(ValueError):
        emit_run_alert("recon.run.other", "r1", "held")


def test_recon_alerts_setup_cli(tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    env = {**os.environ, "PREFECT_API_URL": prefect_events, "COLUMNS": "200"}
    slack = "https://hooks.slack.com/services/T000/B000/SLACKSECRET"
    hook = "http://127.0.0.1:9/never-called/HOOKSECRET"

    def recon_alerts_setup(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RECON, "alerts", "setup", *args], env=env, capture_output=True, text=True, timeout=120)

    def windows(client: Any) -> tuple[timedelta, timedelta]:
        [nightly] = client.read_automations_by_name(NIGHTLY_AUTOMATION)
        [long_run] = client.read_automations_by_name(LONG_RUN_AUTOMATION)
        return nightly.trigger.within, long_run.trigger.within

    first = recon_alerts_setup("--slack", slack, "--nightly-window-hours", "30", "--long-run-minutes", "45")
    assert first.returncode == 0, first.stderr
    assert f"automation '{NIGHTLY_AUTOMATION}' created" in first.stdout
    assert "(Slack Webhook, " in first.stdout and "sends to Slack webhook https://hooks.slack.com/…" in first.stdout
    assert SlackWebhook.load(BLOCK_NAME).url.get_secret_value() == slack
    with get_client(sync_client=True) as client:
        assert windows(client) == (timedelta(hours=30), timedelta(minutes=45))

    second = recon_alerts_setup("--webhook-url", hook, "--flow", "reconcile")
    assert second.returncode == 0, second.stderr
    assert f"automation '{NIGHTLY_AUTOMATION}' updated" in second.stdout
    assert "sends to webhook http://127.0.0.1:9/…" in second.stdout
    assert not any(secret in r.stdout + r.stderr for r in (first, second) for secret in ("SLACKSECRET", "HOOKSECRET"))
    assert CustomWebhookNotificationBlock.load(BLOCK_NAME).secrets.get_secret_value() == {URL_SECRET: hook}
    with get_client(sync_client=True) as client:
        with pytest.raises(ObjectNotFound):  # the Slack block of the first call was replaced
            client.read_block_document_by_name(BLOCK_NAME, "slack-webhook")
        [failed] = client.read_automations_by_name(FLOW_FAILED_AUTOMATION)
        assert failed.trigger.match_related.root == {"prefect.resource.role": "flow",
                                                     "prefect.resource.name": ["reconcile"]}
        assert windows(client) == (timedelta(hours=26), timedelta(hours=2))  # the settings' defaults
        for name in ALL_AUTOMATIONS:
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)

    none = recon_alerts_setup()
    assert none.returncode == 2 and "give exactly one of --slack" in none.stderr


def test_the_service_stopped_automation_fires_when_a_services_heartbeats_stop(
        serve: Any, tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    """A service of this test's own beats every second (service/heartbeat.py, 10 s window: Prefect's minimum); while
    it beats nothing fires; stopped, the automation names it once its window has passed."""
    from contact_recon.service.heartbeat import Heartbeat

    out = tmp_path / "alerts.jsonl"
    sink = serve(sink_app(out))
    name, window = f"probe-{uuid.uuid4().hex[:6]}", timedelta(seconds=10)
    setup = set_up(slack_target(sink.base_url + "/slack"), AlertRules(window, window, service_stale=window))
    try:
        beating = Heartbeat(name, 1.0).start()
        try:
            wait_until_beats(name, 12)  # beat past a whole window: no alert for a live service
        finally:
            beating.stop()
        assert not [a for a in read_alerts(out) if name in a["text"]]
        text = wait_for_alert(out, name)["text"]
        assert text.startswith(f"*contact-recon: service {name} silent for 10 s*\n"), text
        assert "`recon services`" in text and "pid" in text
    finally:
        delete_automations(setup)


def wait_until_beats(name: str, count: int, timeout: float = 60.0) -> None:
    from tests.support.prefect import events_of

    deadline = time.monotonic() + timeout
    while len(events_of(f"recon.service.{name}")) < count:
        assert time.monotonic() < deadline, f"{name}: fewer than {count} heartbeats"
        time.sleep(0.5)
