"""Alerts end to end on the session's real Prefect server: its trigger and action services (they run in
the test harness's server: `RunInEphemeralServers`) turn a `recon.run.held` event or a failed flow run
into a POST from the notification block to `recon alerts listen`'s app on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contact_recon.events import (
    RUN_FAILED_OPS,
    RUN_HELD,
    emit_run_alert,
    failed_ops_exceeded,
    run_alert_payload,
)
from contact_recon.sandbox.server import RunningServer
from contact_recon.service.alerts import (
    BLOCK_NAME,
    FLOW_FAILED_AUTOMATION,
    RUN_ALERT_AUTOMATION,
    AlertSetup,
    setup_alerts,
    sink_app,
)
from tests.support.prefect import prefect_events  # noqa: F401

RECON = [sys.executable, "-m", "contact_recon.cli.main"]


def read_alerts(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_alert(path: Path, needle: str, timeout: float = 45.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for alert in read_alerts(path):
            if needle in alert.get("body", "") or needle in alert.get("subject", ""):
                return alert
        assert time.monotonic() < deadline, f"no alert mentioning {needle}; got {read_alerts(path)}"
        time.sleep(0.3)


@pytest.fixture
def alerts(serve: Any, tmp_path: Path, prefect_events: str) -> Iterator[tuple[AlertSetup, Path, RunningServer]]:  # noqa: F811
    out = tmp_path / "alerts.jsonl"
    sink = serve(sink_app(out))
    setup = setup_alerts(sink.base_url + "/alerts")
    time.sleep(0.5)  # on SQLite the server loads a changed automation in a task scheduled after the commit
    yield setup, out, sink
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # leave no automation pointing at a stopped sink
        for automation_id in setup.automation_ids.values():
            client.delete_automation(automation_id)


def test_setup_creates_the_block_and_automations_once(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    setup, _, sink = alerts
    assert sorted(setup.automation_ids) == sorted([FLOW_FAILED_AUTOMATION, RUN_ALERT_AUTOMATION])
    assert CustomWebhookNotificationBlock.load(BLOCK_NAME).url == sink.base_url + "/alerts"

    again = setup_alerts(sink.base_url + "/alerts")  # idempotent: same block, same automations, updated
    assert again.block_id == setup.block_id and again.automation_ids == setup.automation_ids
    assert again.created == []
    with get_client(sync_client=True) as client:
        [held] = client.read_automations_by_name(RUN_ALERT_AUTOMATION)
        [failed] = client.read_automations_by_name(FLOW_FAILED_AUTOMATION)
    assert held.trigger.expect == {RUN_HELD, RUN_FAILED_OPS} and held.trigger.threshold == 1
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert [a.type for a in held.actions] == ["send-notification"]
    assert held.actions[0].block_document_id == setup.block_id


def test_a_held_run_event_notifies_the_local_receiver(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    _, out, _ = alerts
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    assert emit_run_alert(RUN_HELD, run_id, "held", reasons=["mass delete: 40% of contacts"], failed_ops=0,
                          total_ops=120, report="/data/runs/x/report.html") is not None
    alert = wait_for_alert(out, run_id)
    assert alert["subject"] == f"contact-recon: run {run_id} held"
    assert "recon.run.held" in alert["body"] and "mass delete: 40% of contacts" in alert["body"]
    assert "/data/runs/x/report.html" in alert["body"] and alert["source"] == "contact-recon"


def test_a_failed_flow_run_notifies_the_local_receiver(alerts: tuple[AlertSetup, Path, RunningServer]) -> None:
    from prefect import flow

    _, out, _ = alerts
    name = f"recon-alert-probe-{uuid.uuid4().hex[:6]}"

    @flow(name=name, retries=0)
    def failing() -> None:
        raise RuntimeError("probe failure")

    state = failing(return_state=True)
    assert state.is_failed()
    alert = wait_for_alert(out, name)
    assert "Failed" in alert["subject"] and "probe failure" in alert["body"]


def test_failed_op_share_and_payload() -> None:
    assert failed_ops_exceeded(6, 100) and not failed_ops_exceeded(5, 100) and not failed_ops_exceeded(0, 0)
    assert failed_ops_exceeded(2, 10, threshold=0.1)
    assert run_alert_payload("r1", "completed", failed_ops=3, total_ops=9) == {
        "run_id": "r1", "status": "completed", "reasons": [], "failed_ops": 3, "total_ops": 9, "report": ""}
    with pytest.raises(ValueError):
        emit_run_alert("recon.run.other", "r1", "held")


def test_recon_alerts_setup_cli(tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    from prefect.client.orchestration import get_client

    env = {**os.environ, "PREFECT_API_URL": prefect_events, "COLUMNS": "200"}
    url = "http://127.0.0.1:9/never-called"
    runs = [subprocess.run([*RECON, "alerts", "setup", "--webhook-url", url, "--flow", "reconcile"], env=env,
                           capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert f"automation '{RUN_ALERT_AUTOMATION}' created" in runs[0].stdout
    assert f"automation '{RUN_ALERT_AUTOMATION}' updated" in runs[1].stdout
    with get_client(sync_client=True) as client:
        [failed] = client.read_automations_by_name(FLOW_FAILED_AUTOMATION)
        related = failed.trigger.match_related.root
        assert related == {"prefect.resource.role": "flow", "prefect.resource.name": ["reconcile"]}
        for name in (FLOW_FAILED_AUTOMATION, RUN_ALERT_AUTOMATION):
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)
