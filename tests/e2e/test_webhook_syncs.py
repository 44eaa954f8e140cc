"""Webhooks speed up what they name (issue 17, item 3): a note or task webhook's sync marks the contact dirty, so the
next snapshot reads its notes and tasks (not in 30 nights, when the sweep would come to it); a task webhook without a
contact marks the location's tasks, and the next snapshot reads every task of the location. And the sync service
(`recon services serve`, which replaced the sync-contact deployment's triggers, issue 19) follows every note and
task event and syncs it with the webhook type.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from contact_recon.events import GHL_NOTE_TASK_TYPES, GHL_WEBHOOK_EVENTS, ghl_contact_resource, ghl_location_resource
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.ghl_webhooks import ed25519_private_key, sign
from contact_recon.sandbox.server import RunningServer
from contact_recon.service.syncer import SYNCED_EVENTS, SyncService, change_of
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


def test_the_sync_service_follows_every_note_and_task_event() -> None:
    """The sync service (service/syncer.py) replaced the sync-contact deployment's triggers: it follows every note
    and task event, and reads a contact-less task event as its location's tasks, with the webhook type."""
    note_task_events = {GHL_WEBHOOK_EVENTS[t] for t in GHL_NOTE_TASK_TYPES}
    assert note_task_events <= SYNCED_EVENTS
    now = datetime.now(UTC)
    task = change_of("ghl.task.created", ghl_location_resource("Loc1"), {"webhook_type": "TaskCreate"}, now)
    assert task is not None and (task.location_id, task.contact_id, task.webhook_type) == ("Loc1", None, "TaskCreate")
    note = change_of("ghl.note.created", ghl_contact_resource("C1", "Loc1"), {"webhook_type": "NoteCreate"}, now)
    assert note is not None and (note.location_id, note.contact_id, note.webhook_type) == ("Loc1", "C1", "NoteCreate")
    assert change_of("ghl.contact.deleted", ghl_contact_resource("C1", "Loc1"), {}, now) is None  # the night's
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [deployment] = [d for d in spec["deployments"] if d["name"] == "sync-contact"]
    assert not deployment.get("triggers")  # one sync per change, by the service: no flow run per event


def test_note_and_contactless_task_webhooks_are_synced_by_the_service_and_mark(
        world: World, serve: Callable[..., RunningServer], tmp_path: Path, prefect_events: str) -> None:
    """The whole path: a signed webhook -> the receiver's spool -> the Prefect event -> the sync service (following the
    server's event stream) -> the sync-contact task with the webhook type -> the store's marks."""
    receiver = serve(create_app(Settings(_env_file=None, data_dir=tmp_path / "receiver",
                                         ghl_webhook_public_key="sandbox")))
    settings = world.settings.model_copy(update={"ghl_location_ids": [world.location], "sync_coalesce_s": 0.5})
    service = SyncService(settings).start()
    contact = world.state(world.ghl)["locations"][world.location]["contacts"][2]["id"]
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    note = {"type": "NoteCreate", "locationId": world.location, "contactId": contact, "id": f"n-{uuid.uuid4().hex}",
            "timestamp": now, "webhookId": str(uuid.uuid4())}
    task = {"type": "TaskCreate", "locationId": world.location, "id": f"t-{uuid.uuid4().hex}", "timestamp": now,
            "webhookId": str(uuid.uuid4())}  # no contactId, as real TaskCreate payloads sometimes come
    try:
        for body in (note, task):
            raw = json.dumps(body).encode()
            answer = httpx.post(receiver.base_url + PATH, content=raw, timeout=10,
                                headers={ED25519_SIGNATURE_HEADER: sign(raw, ed25519_private_key())})
            assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        deadline = time.monotonic() + 90
        while {s["status"] for s in service.history if contact in s["key"] or "tasks" in s["key"]} != {
                "completed", "marked"}:
            assert time.monotonic() < deadline, (list(service.history), service.current, service.details())
            time.sleep(0.3)
    finally:
        service.stop()
        receiver.app.state.forwarder.stop()
    with open_db(db_path(world.settings.data_dir)) as store:
        assert [(m["contact_id"], m["reason"]) for m in store.dirty_contacts().to_dicts()] == [
            (contact, "webhook NoteCreate")]
        assert store.tasks_dirty(world.location)
