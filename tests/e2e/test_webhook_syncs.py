"""Webhooks speed up what they name (issue 17, item 3): a note or task webhook's `sync-contact` run marks the contact
dirty, so the next snapshot reads its notes and tasks (not in 30 nights, when the sweep would come to it); a task
webhook without a contact marks the location's tasks, and the next snapshot reads every task of the location. And
prefect.yaml's triggers start `sync-contact` for every note and task event, with the webhook type, which the flow
run honours (deployed with `prefect deploy`, the flow run executed with `prefect flow-run execute`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contact_recon.events import GHL_NOTE_TASK_TYPES, GHL_WEBHOOK_EVENTS
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.ghl_webhooks import ed25519_private_key, sign
from contact_recon.sandbox.server import RunningServer
from contact_recon.service.webhooks import PATH, create_app
from contact_recon.settings import Settings
from contact_recon.stages.run import sync
from contact_recon.stages.snapshot import run_snapshot
from contact_recon.store.db import db_path, open_db
from contact_recon.systems.ghl.contract import ED25519_SIGNATURE_HEADER
from tests.support import REPO
from tests.support.worlds import World, make_settings

SWEEP_K = 30


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path) -> Iterator[World]:
    fixture = generate_fixture(40, seed=17, overlap=0.8, awkward=0.0)
    ghl, te = sandboxes(fixture, rate_scale=50)
    settings = make_settings(ghl, te, fixture, tmp_path / "data", ghl_location_ids=[fixture["ghl"]["tokens"][0][
        "locationId"]])
    yield World(fixture, ghl, te, settings, None)  # type: ignore[arg-type]  # the code under test opens the store


def snapshot(world: World, night: int) -> dict[str, set[str]]:
    """One snapshot of the location on `night` (its sweep slice); the task and note ids it stored, by kind."""
    with open_db(db_path(world.settings.data_dir)) as store:
        run_snapshot(world.settings, store, [world.location], night_index=night, ghl_client=world.ghl_client,
                     tinyemail_client=world.te_client)
        return {kind: set(store.latest_snapshot(f"ghl_{kind}", world.location)[f"{kind[:-1]}_id"].to_list())
                for kind in ("tasks", "notes")}


def quiet_night(avoid: set[str]) -> int:
    """A night whose sweep slice holds none of `avoid`."""
    return next(n for n in range(SWEEP_K) if all(zlib.crc32(c.encode()) % SWEEP_K != n for c in avoid))


def add_item(world: World, kind: str, contact_id: str) -> str:
    token = world.fixture["ghl"]["tokens"][0]["token"]
    body = ({"title": "call back", "dueDate": "2031-01-01T00:00:00.000Z", "completed": False} if kind == "tasks"
            else {"body": "spoke on the phone"})
    answer = httpx.post(f"{world.ghl.base_url}/contacts/{contact_id}/{kind}", json=body, timeout=10,
                        headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["task" if kind == "tasks" else "note"]["id"])


def test_a_note_webhook_sync_marks_the_contact_and_the_next_snapshot_reads_its_notes(world: World) -> None:
    contacts = [c["id"] for c in world.state(world.ghl)["locations"][world.location]["contacts"]]
    noted, tasked = contacts[3], contacts[5]
    night = quiet_night({noted, tasked})
    snapshot(world, night)  # the first snapshot reads everyone; from now on only changed, dirty and sweep
    note_id = add_item(world, "notes", noted)  # a note write does not move the contact's dateUpdated
    task_id = add_item(world, "tasks", tasked)
    assert note_id not in snapshot(world, night)["notes"]  # unmarked, it would wait for the sweep

    result = sync(world.settings, contact_id=noted, location_id=world.location, webhook_type="NoteCreate",
                  ghl_client=world.ghl_client, tinyemail_client=world.te_client)
    assert result["status"] == "completed", result
    with open_db(db_path(world.settings.data_dir)) as store:
        marks = store.dirty_contacts().to_dicts()
    assert [(m["contact_id"], m["reason"]) for m in marks] == [(noted, "webhook NoteCreate")]

    read = snapshot(world, night)
    assert note_id in read["notes"]  # read tonight because the webhook marked the contact
    assert task_id not in read["tasks"]  # the other contact had no webhook: still waiting
    with open_db(db_path(world.settings.data_dir)) as store:
        assert store.dirty_contacts().height == 0  # the mark was read and cleared


def test_a_task_webhook_without_a_contact_marks_the_locations_tasks(world: World) -> None:
    contacts = [c["id"] for c in world.state(world.ghl)["locations"][world.location]["contacts"]]
    tasked = contacts[7]
    night = quiet_night({tasked})
    snapshot(world, night)
    task_id = add_item(world, "tasks", tasked)
    assert task_id not in snapshot(world, night)["tasks"]

    result = sync(world.settings, location_id=world.location, webhook_type="TaskCreate")
    assert result == {"status": "marked", "location_id": world.location, "webhook_type": "TaskCreate"}
    with open_db(db_path(world.settings.data_dir)) as store:
        assert store.tasks_dirty(world.location) and store.dirty_contacts().height == 0

    assert task_id in snapshot(world, night)["tasks"]  # every task of the location was read
    with open_db(db_path(world.settings.data_dir)) as store:
        assert not store.tasks_dirty(world.location)  # and the mark cleared
    with pytest.raises(ValueError, match="needs a contact_id or an email"):
        sync(world.settings, location_id=world.location, webhook_type="NoteCreate")  # a note always has a contact


def test_the_sync_contact_triggers_cover_every_note_and_task_event() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [deployment] = [d for d in spec["deployments"] if d["name"] == "sync-contact"]
    by_resource = {t["match"]["prefect.resource.id"]: t for t in deployment["triggers"]}
    contact, location = by_resource["ghl.contact.*"], by_resource["ghl.location.*"]
    note_task_events = {GHL_WEBHOOK_EVENTS[t] for t in GHL_NOTE_TASK_TYPES}
    assert note_task_events <= set(contact["expect"])
    assert set(location["expect"]) == {e for e in note_task_events if e.startswith("ghl.task.")}
    for trigger in (contact, location):
        assert trigger["parameters"]["webhook_type"] == "{{ event.payload.webhook_type }}"


def wait_for_flow_run(deployment_id: Any, parameters: dict[str, str], timeout: float = 60.0) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    flt = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=flt)
        found = [r for r in runs if all(r.parameters.get(k) == v for k, v in parameters.items())]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no flow run with {parameters}; got {[r.parameters for r in runs]}"
        time.sleep(0.5)


def test_note_and_contactless_task_webhooks_start_sync_contact_runs_that_mark(
        world: World, serve: Callable[..., RunningServer], tmp_path: Path, prefect_server: str) -> None:
    """The whole path: a signed webhook -> the receiver's spool -> the Prefect event -> the deployment's trigger ->
    a sync-contact flow run with the webhook type -> executed (`prefect flow-run execute`) -> the store's mark."""
    from prefect.client.orchestration import get_client

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    prefect = [sys.executable, "-m", "prefect"]
    pool = subprocess.run([*prefect, "work-pool", "create", "recon-pool", "--type", "process", "--overwrite"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deployed = subprocess.run([*prefect, "--no-prompt", "deploy", "--name", "sync-contact"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("sync-contact/sync-contact")
    time.sleep(1)  # the server loads a new automation in a task scheduled after the commit

    receiver = serve(create_app(Settings(_env_file=None, data_dir=tmp_path / "receiver",
                                         ghl_webhook_public_key="sandbox")))
    contact = world.state(world.ghl)["locations"][world.location]["contacts"][2]["id"]
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    note = {"type": "NoteCreate", "locationId": world.location, "contactId": contact, "id": f"n-{uuid.uuid4().hex}",
            "timestamp": now, "webhookId": str(uuid.uuid4())}
    task = {"type": "TaskCreate", "locationId": world.location, "id": f"t-{uuid.uuid4().hex}", "timestamp": now,
            "webhookId": str(uuid.uuid4())}  # no contactId, as real TaskCreate payloads sometimes come
    for body in (note, task):
        raw = json.dumps(body).encode()
        answer = httpx.post(receiver.base_url + PATH, content=raw, timeout=10,
                            headers={ED25519_SIGNATURE_HEADER: sign(raw, ed25519_private_key())})
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text

    note_run = wait_for_flow_run(deployment.id, {"contact_id": contact, "webhook_type": "NoteCreate"})
    task_run = wait_for_flow_run(deployment.id, {"location_id": world.location, "webhook_type": "TaskCreate"})
    receiver.app.state.forwarder.stop()
    assert not task_run.parameters.get("contact_id")
    run_env = {**env, **world.env(), "RECON_GHL_LOCATION_IDS": world.location}
    for flow_run in (note_run, task_run):
        done = subprocess.run([*prefect, "flow-run", "execute", str(flow_run.id)], cwd=REPO, env=run_env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
        assert state is not None and state.is_completed(), state
    with open_db(db_path(world.settings.data_dir)) as store:
        assert [(m["contact_id"], m["reason"]) for m in store.dirty_contacts().to_dicts()] == [
            (contact, "webhook NoteCreate")]
        assert store.tasks_dirty(world.location)
