"""The reconcile flow, `recon run` and the sync-contact flow end to end on a real Prefect server (the session's
test harness) against both sandboxes; and prefect.yaml deployed with `prefect deploy --all`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jsonschema
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.model.cells import unguarded
from contact_recon.report.build import SUMMARY_SCHEMA
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.store.db import db_path, open_db
from tests.support import REPO
from tests.support.chaos import disagreements
from tests.support.worlds import LOOSE, World, ghl_people, loose_policy, make_settings, te_people

CONTRACT_KEYS = {"run_id", "status", "started_at", "finished_at", "dry_run", "locations", "counts", "conflicts",
                 "quarantined", "stale", "failed", "requests", "guards"}


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path, prefect_server: str,  # noqa: F811
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    fixture = generate_fixture(40, seed=31, overlap=0.6, awkward=0.0)
    ghl, te = sandboxes(fixture, rate_scale=50)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    (tmp_path / "policy.toml").write_text(LOOSE)
    w = World(fixture, ghl, te, settings, None, loose_policy(tmp_path))  # type: ignore[arg-type]
    for name, value in {**w.env(), "RECON_POLICY_FILE": str(tmp_path / "policy.toml"),
                        "RECON_NOTES_SWEEP_K": "1"}.items():
        monkeypatch.setenv(name, value)
    yield w


def te_customers(state: dict) -> list[dict]:
    customers = state["customers"]
    return list(customers.values() if isinstance(customers, dict) else customers)


def reads_only(world: World) -> list[dict]:
    writes = []
    for server in (world.ghl, world.te):
        for r in world.requests(server):
            read = r["method"] == "GET" or (r["method"] == "POST" and r["path"].endswith("/search"))
            if not read:
                writes.append(r)
    return writes


def test_the_flow_converges_both_systems_after_a_day_of_drift(world: World) -> None:
    from contact_recon.flows.reconcile import reconcile_flow

    first = reconcile_flow()
    assert first["status"] == "completed" and not first["dry_run"]
    assert sum(first["counts"]["applied"]["ghl"].values()) + sum(first["counts"]["applied"]["tinyemail"].values()) > 0
    world.drift(25, seed=7)
    second = reconcile_flow()
    assert second["status"] == "completed" and second["failed"] == 0, second
    third = reconcile_flow(dry_run=True)
    planned = sum(n for system in ("ghl", "tinyemail") for kind, n in third["counts"][system].items()
                  if kind != "identity_review")
    assert planned == 0, third["counts"]
    ghl_state, te_state = world.state(world.ghl), world.state(world.te)
    ghl, te = ghl_people(ghl_state), te_people(te_state)
    conflicts = unguarded(pl.read_csv(Path(world.settings.data_dir) / "runs" / third["run_id"] / "conflicts.csv",
                                      infer_schema_length=0))
    # every GHL contact with an email is a TinyEmail customer; a TinyEmail customer without a GHL contact is
    # one whose contact a person deleted in GHL (TinyEmail has no delete): reported, never recreated blindly
    assert {e for e in ghl if "@" in e} <= set(te)
    # every shared field, the tags, lists and consent agree but for the conflicts the data team still has to
    # settle, field by field (a person on one side only is a `presence` row unless a conflict reports it); the
    # open-task fact too: RECON_NOTES_SWEEP_K=1 reads every contact's tasks each night (a task changed without
    # its contact changing is otherwise read by the sweep, 1/K of the contacts a night)
    identity = pl.read_csv(Path(world.settings.data_dir) / "runs" / third["run_id"] / "identity.csv",
                           infer_schema_length=0)  # people held for an identity decision
    pending = {e for e in [*identity["email"], *identity["old_email"]] if e and "@" in e}
    differ = disagreements(ghl_state, te_state, conflicts, world.policy, pending=pending)
    assert differ == [], f"the systems disagree (email, field, GHL, TinyEmail) outside the conflicts: {differ}"


def test_summary_json_report_and_artifacts_of_a_run(world: World) -> None:
    from contact_recon.flows.reconcile import reconcile_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )

    state = reconcile_flow(return_state=True)
    summary = state.result()
    directory = Path(world.settings.data_dir) / "runs" / summary["run_id"]
    written = json.loads((directory / "summary.json").read_text())
    jsonschema.validate(written, SUMMARY_SCHEMA)
    assert CONTRACT_KEYS <= set(written) and written["status"] == "completed"
    assert written["requests"]["ghl"]["used"] > 0 and written["requests"]["tinyemail"]["used"] > 0
    assert written["requests"]["ghl"]["budget"] > 0  # the day's allowance, not "no budget given"
    # the report links the flow run it was made in (its page in the Prefect UI when Prefect knows one)
    assert written["flow_run_id"] == str(state.state_details.flow_run_id)
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()  # the test server's (Prefect derives it from PREFECT_API_URL)
    assert ui and written["flow_run_url"] == f"{ui.rstrip('/')}/runs/flow-run/{written['flow_run_id']}"
    assert f'id="flow-run" href="{written["flow_run_url"]}"' in (directory / "report.html").read_text()
    for name in ("report.html", "conflicts.csv", "plan.parquet"):
        assert (directory / name).stat().st_size > 0, name
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_="recon")))}
        mine = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])), limit=200)
    # a flow run started in-process keeps its artifacts apart from the deployments' and the dry runs'
    assert {"recon-local-summary", "recon-local-report"} <= keys
    assert not {"recon-summary", "recon-report"} & keys
    summary_md = next(a for a in mine if a.key == "recon-local-summary").data
    assert summary["run_id"] in summary_md and "Drift: ops planned per run" in summary_md
    progress = [a for a in mine if a.type == "progress"]
    assert progress and progress[0].data == 100.0, [(a.type, a.data) for a in progress]
    # the stages' own loggers reach the flow run's logs in Prefect
    by_logger = {log.name for log in logs}
    assert {"contact_recon.stages.snapshot", "prefect.flow_runs"} <= by_logger, by_logger
    snapshot_line = next(log.message for log in logs if log.name == "contact_recon.stages.snapshot")
    assert "ghl_contacts" in snapshot_line and "requests" in snapshot_line, snapshot_line


def test_a_dry_run_writes_nothing(world: World) -> None:
    from contact_recon.flows.reconcile import reconcile_flow

    summary = reconcile_flow(dry_run=True)
    assert summary["dry_run"] and summary["status"] == "completed"
    assert reads_only(world) == []
    with open_db(db_path(world.settings.data_dir)) as store:
        assert store.load_base().height == 0


def test_recon_run_exits_3_when_a_guard_trips_and_recon_approve_applies_it(world: World, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text("[guards]\nfield_updates = 0.0\ntag_removals = 0.0\nmin_ops = 1\n")
    monkeypatch.setenv("RECON_POLICY_FILE", str(strict))
    held = CliRunner().invoke(app, ["run"])
    assert held.exit_code == 3, held.output
    assert "held" in held.output and "recon approve" in held.output
    assert reads_only(world) == []
    run_id = held.output.split("run ", 1)[1].split()[0]
    approved = CliRunner().invoke(app, ["approve", run_id])
    assert approved.exit_code == 0, approved.output
    assert "applied" in approved.output and "completed" in approved.output and "report:" in approved.output
    assert reads_only(world) != []  # the approved run wrote
    again = CliRunner().invoke(app, ["run", "--approve"])
    assert again.exit_code == 0, again.output


def test_sync_contact_carries_one_change_across(world: World) -> None:
    from contact_recon.flows.reconcile import reconcile_flow
    from contact_recon.flows.sync_contact import sync_contact_flow

    assert reconcile_flow()["status"] == "completed"
    customers = te_people(world.state(world.te))
    ghl = ghl_people(world.state(world.ghl))
    email = sorted(e for e in customers if e in ghl)[0]
    answer = httpx.put(world.te.base_url + "/v1/account/customer", headers={"X-API-KEY": world.env()[
        "RECON_TINYEMAIL_API_KEY"]}, json={"updateMembers": [{"email": email, "company": "Synced Between Nights"}]})
    assert answer.status_code == 200

    echo_file = Path(world.settings.data_dir) / "echo" / "ghl_writes.jsonl"
    te_echo_file = Path(world.settings.data_dir) / "echo" / "tinyemail_writes.jsonl"
    noted, te_noted = echo_file.read_text().count("\n"), te_echo_file.read_text().count("\n")
    assert noted > 0 and te_noted > 0, "the nightly run noted none of its writes as echoes"

    result = sync_contact_flow(email=email)

    assert result["status"] == "completed", result
    assert ghl_people(world.state(world.ghl))[email]["company"] == "Synced Between Nights"
    # a sync notes no GHL echo: the person's next GHL edit of that contact is synced at once, not at night (and it
    # wrote nothing to TinyEmail, so it noted no TinyEmail echo either)
    assert echo_file.read_text().count("\n") == noted and te_echo_file.read_text().count("\n") == te_noted
    # the change is now the base: the nightly run plans nothing for that person
    nightly = reconcile_flow(dry_run=True)
    assert sum(nightly["counts"]["ghl"].values()) == 0, nightly["counts"]


def test_a_syncs_tinyemail_write_is_noted_so_the_watcher_does_not_send_it_back(world: World) -> None:
    """A sync writing TinyEmail notes the customer (stages/echo.py `tinyemail_log`): the watcher's next poll takes
    the change as ours and emits nothing, where before each such write came back as a second sync of the person.
    A person's own TinyEmail edit after that poll is emitted as usual."""
    from contact_recon.flows.reconcile import reconcile_flow
    from contact_recon.flows.sync_contact import sync_contact_flow

    from contact_recon.service.watch import poll_once, share_budget
    from contact_recon.stages.echo import tinyemail_filter

    assert reconcile_flow()["status"] == "completed"
    sent: list[str] = []

    def emit(event: str, **kwargs: object) -> object:
        sent.append(kwargs["payload"]["email"])  # type: ignore[index]
        return object()

    echo = tinyemail_filter(world.settings.data_dir)
    assert asyncio.run(poll_once(world.settings, share_budget(world.settings, 0.5), emit, echo=echo)).baseline
    ghl = {(c.get("email") or "").lower(): c for c in next(iter(world.state(world.ghl)["locations"].values()))[
        "contacts"]}
    email = sorted(e for e in te_people(world.state(world.te)) if e in ghl)[0]
    headers = {"Authorization": f"Bearer {world.fixture['ghl']['tokens'][0]['token']}", "Version": "2021-07-28"}
    httpx.put(f"{world.ghl.base_url}/contacts/{ghl[email]['id']}", headers=headers,
              json={"city": "Echo City"}).raise_for_status()

    result = sync_contact_flow(contact_id=ghl[email]["id"], location_id=world.location)

    assert result["status"] == "completed", result
    cities = {c["email"].lower(): c.get("city") for c in te_customers(world.state(world.te))}
    assert cities[email] == "Echo City"
    polled = asyncio.run(poll_once(world.settings, share_budget(world.settings, 0.5), emit, echo=echo))
    assert ([c.email for c in polled.changes], polled.echoes, sent) == ([email], 1, [])
    httpx.put(world.te.base_url + "/v1/account/customer", headers={"X-API-KEY": world.env()[
        "RECON_TINYEMAIL_API_KEY"]}, json={"updateMembers": [{"email": email, "city": "Edited Later"}]}
              ).raise_for_status()
    later = asyncio.run(poll_once(world.settings, share_budget(world.settings, 0.5), emit, echo=echo))
    assert (later.echoes, sent) == (0, [email])


def test_prefect_yaml_deploys_the_three_deployments(prefect_server: str, tmp_path: Path) -> None:  # noqa: F811
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert [d["name"] for d in spec["deployments"]] == ["nightly-reconcile", "reconcile-on-demand", "sync-contact"]
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    prefect = [sys.executable, "-m", "prefect"]
    pool = subprocess.run([*prefect, "work-pool", "create", "recon-pool", "--type", "process", "--overwrite"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deployed = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("reconcile/nightly-reconcile")
        sync = client.read_deployment_by_name("sync-contact/sync-contact")
        client.read_deployment_by_name("reconcile/reconcile-on-demand")
        automations = client.read_automations_by_name(f"{sync.name}__automation_1") if hasattr(
            client, "read_automations_by_name") else []
    assert nightly.schedules and nightly.schedules[0].schedule.cron == "0 2 * * *"
    form = set(nightly.parameter_openapi_schema["properties"])
    assert {"locations", "dry_run", "approve", "full_sweep", "lock_wait_s"} <= form
    assert "entities" not in form  # removed from the form: it was validated, then ignored
    # no deployment limit queues a late night any more: it waits for its tenant's slot (hours), it does not fail
    assert nightly.global_concurrency_limit is None and nightly.parameters["lock_wait_s"] >= 3600, nightly.parameters
    # no trigger: between nights the sync service (`recon services serve`) syncs each change in its own process
    assert not automations, "sync-contact must start no flow run per event (issue 19)"


def test_a_sync_of_an_unchanged_person_with_tasks_plans_nothing(world: World) -> None:
    """One person read now (contact_recon/stages/sync.py) must look exactly as the nightly snapshot saw them: a task's
    due date read as something else would be quarantined by the checks, and its open-task fact tag would flip."""
    from contact_recon.flows.reconcile import reconcile_flow
    from contact_recon.flows.sync_contact import sync_contact_flow

    assert reconcile_flow()["status"] == "completed"
    location = next(iter(world.state(world.ghl)["locations"].values()))
    customers = te_people(world.state(world.te))
    with_tasks = sorted({t["contactId"] for t in location.get("tasks", []) if not t.get("completed")})
    chosen = [c for c in location["contacts"] if c["id"] in with_tasks
              and (c.get("email") or "").lower() in customers][:4]
    assert chosen, "the fixture has no shared person with an open task"
    for contact in chosen:
        for how in ({"contact_id": contact["id"]}, {"email": contact["email"]}):
            result = sync_contact_flow(**how)
            assert result["status"] == "completed" and result["ops"] == 0, (how, result)
