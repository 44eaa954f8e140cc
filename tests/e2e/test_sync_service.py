"""The sync service (issue 19): changes between nights synced in one long-running process, coalesced per person,
waiting out a nightly run, routed to their tenant; the services' heartbeats and `recon services`.

Every test runs the real path: signed webhooks to the receiver (its spool and forwarder), the Prefect events on the
session's server, the service following them over the server's event stream, and the `sync-contact` task syncing
against both sandboxes. What each sync did is read from the sandbox's request log, the store and Prefect's task runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from contact_recon.cli.events import run_services_status
from contact_recon.events import SERVICE_RESOURCE, SERVICE_SYNCS
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.ghl_webhooks import ed25519_private_key, sign
from contact_recon.sandbox.server import RunningServer
from contact_recon.service.syncer import SyncService, status_path
from contact_recon.service.webhooks import PATH, create_app
from contact_recon.settings import Settings
from contact_recon.store.db import db_path, open_db
from contact_recon.systems.ghl.contract import ED25519_SIGNATURE_HEADER
from tests.support import REPO
from tests.support.prefect import events_of
from tests.support.worlds import make_settings

Sandboxes = Callable[..., tuple[RunningServer, RunningServer]]
Serve = Callable[..., RunningServer]


@pytest.fixture
def receiver(serve: Serve, tmp_path: Path, prefect_events: str) -> Iterator[RunningServer]:
    """The webhook receiver (sandbox keys), forwarding to the session's Prefect server."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "receiver", ghl_webhook_public_key="sandbox")
    server = serve(create_app(settings))
    yield server
    server.app.state.forwarder.stop()


@pytest.fixture
def services() -> Iterator[Callable[[Settings], SyncService]]:
    started: list[SyncService] = []

    def start(settings: Settings) -> SyncService:
        service = SyncService(settings).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def post_webhook(receiver: RunningServer, kind: str, location: str, contact: str | None) -> None:
    body: dict[str, Any] = {"type": kind, "locationId": location, "webhookId": str(uuid.uuid4()),
                            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    if contact is not None:
        body["id" if kind.startswith("Contact") else "contactId"] = contact
    if not kind.startswith("Contact"):
        body["id"] = f"o-{uuid.uuid4().hex[:12]}"
    raw = json.dumps(body).encode()
    answer = httpx.post(receiver.base_url + PATH, content=raw, timeout=10,
                        headers={ED25519_SIGNATURE_HEADER: sign(raw, ed25519_private_key())})
    assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text


def wait_until(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not seen within {timeout:.0f} s"
        time.sleep(0.2)


def syncs_of(service: SyncService, key_part: str) -> list[dict[str, Any]]:
    return [s for s in list(service.history) if key_part in s["key"]]


def contact_reads(ghl: RunningServer, contact: str) -> int:
    log = httpx.get(ghl.base_url + "/__sandbox/requests").json()["requests"]
    return sum(1 for r in log if r["method"] == "GET" and r["path"] == f"/contacts/{contact}")


def sync_task_runs() -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return list(client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="sync-contact"))))


def sync_flow_runs() -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return list(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["sync-contact"]))))


def test_a_burst_of_one_persons_webhooks_is_one_sync_in_the_services_own_process(
        sandboxes: Sandboxes, tmp_path: Path, receiver: RunningServer,
        services: Callable[[Settings], SyncService]) -> None:
    """Six webhooks of one contact (updates, a tag change, a note) inside the coalescing window: the contact is read
    once from GHL, one sync runs, as a task run in this process (its pid, no flow run), and the note's type marks the
    contact dirty; another contact's single webhook is a sync of its own."""
    fixture = generate_fixture(30, seed=191, overlap=0.8, awkward=0.0)
    ghl, te = sandboxes(fixture, rate_scale=50)
    location = fixture["ghl"]["tokens"][0]["locationId"]
    settings = make_settings(ghl, te, fixture, tmp_path / "data", ghl_location_ids=[location], sync_coalesce_s=4.0)
    contacts = [c["id"] for c in httpx.get(ghl.base_url + "/__sandbox/state").json()["locations"][location]["contacts"]]
    busy, quiet = contacts[1], contacts[2]
    flow_runs_before = len(sync_flow_runs())
    kinds = ("ContactUpdate", "ContactUpdate", "ContactTagUpdate", "NoteCreate", "ContactUpdate", "ContactUpdate")
    for kind in kinds:
        post_webhook(receiver, kind, location, busy)
    post_webhook(receiver, "ContactUpdate", location, quiet)
    # every event on the server before the service starts: its replay of the last minute hands them over at once,
    # so the six fall in one window whatever the machine's load (and a restarted service loses none of them)
    wait_until(lambda: len(events_of(f"ghl.contact.{busy}")) == len(kinds), "the busy contact's six events")
    wait_until(lambda: events_of(f"ghl.contact.{quiet}"), "the quiet contact's event")
    service = services(settings)

    [synced] = wait_until(lambda: syncs_of(service, busy), "the busy contact's sync")
    wait_until(lambda: syncs_of(service, quiet), "the quiet contact's sync")
    assert synced["events"] == 6 and synced["status"] == "completed", synced
    assert synced["pid"] == os.getpid()  # run by the service's own process: no process started for it
    assert [len(syncs_of(service, c)) for c in (busy, quiet)] == [1, 1]
    with open_db(db_path(settings.data_dir)) as store:
        marks = [(m["contact_id"], m["reason"]) for m in store.dirty_contacts().to_dicts()]
        sync_runs = store.runs().filter(store.runs()["kind"] == "sync").height
    assert marks == [(busy, "webhook NoteCreate")]  # the note among its events marked it
    assert sync_runs == 2
    runs = [t for t in sync_task_runs() if t.state is not None and t.state.is_final()]
    assert len([t for t in runs if t.state.is_completed()]) >= 2 and not [t for t in runs if t.state.is_failed()]
    assert len(sync_flow_runs()) == flow_runs_before  # task runs, no flow run
    saved = json.loads(status_path(settings).read_text())
    # the file follows every sync; its last may be another test's event the replay handed over (another location:
    # `unowned`, counted), so only its own are checked by status
    assert saved["by_status"]["completed"] >= 2 and saved["last"]["status"] in saved["by_status"], saved


HOLDER = """
import sys, time
from pathlib import Path
from contact_recon.settings import Settings
from contact_recon.stages.lock import location_lock
from contact_recon.store.db import db_path, open_db
settings = Settings(_env_file=None, data_dir=Path(sys.argv[1]))
with location_lock(settings, [sys.argv[2]], 5), open_db(db_path(settings.data_dir)):
    print("held", flush=True)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.1)
"""


@pytest.mark.parametrize("held", ["its own location", "another location"])
def test_a_sync_that_meets_a_nightly_waits_for_it_and_completes(
        held: str, sandboxes: Sandboxes, tmp_path: Path, receiver: RunningServer,
        services: Callable[[Settings], SyncService]) -> None:
    """A nightly run (another process holding the location's lock and the DuckDB file, as `reconcile` does) of the
    sync's own location, or of another location (then only the file is in the way): the sync waits, reads nothing
    while the run holds them, and completes once it ends; no failed task run."""
    fixture = generate_fixture(30, seed=193 if held == "another location" else 192, overlap=0.8, awkward=0.0)
    ghl, te = sandboxes(fixture, rate_scale=50)
    location = fixture["ghl"]["tokens"][0]["locationId"]
    settings = make_settings(ghl, te, fixture, tmp_path / "data", ghl_location_ids=[location], sync_coalesce_s=0.5)
    contact = httpx.get(ghl.base_url + "/__sandbox/state").json()["locations"][location]["contacts"][3]["id"]
    release = tmp_path / "release"
    nightly = subprocess.Popen([sys.executable, "-c", HOLDER, str(settings.data_dir),
                                location if held == "its own location" else "AnotherLocation0001", str(release)],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert nightly.stdout is not None and nightly.stdout.readline().strip() == "held"
        service = services(settings)
        post_webhook(receiver, "ContactUpdate", location, contact)
        wait_until(lambda: service.current is not None and contact in service.current.change.key,
                   "the sync to start")  # taken out of the coalescer: it is waiting for the run
        assert not syncs_of(service, contact) and contact_reads(ghl, contact) == 0  # waiting, nothing read
    finally:
        released = datetime.now(UTC)
        release.touch()
        nightly.wait(30)
        if nightly.stdout is not None:
            nightly.stdout.close()
    [synced] = wait_until(lambda: syncs_of(service, contact), "the sync after the nightly")
    assert synced["status"] == "completed", synced
    assert contact_reads(ghl, contact) >= 1
    with open_db(db_path(settings.data_dir)) as store:
        [started] = store.runs().filter(store.runs()["kind"] == "sync")["started_at"].to_list()
    assert started > released  # its run began only once the nightly had let go
    failed = [t for t in sync_task_runs() if t.state is not None and t.state.is_failed()]
    assert not failed, [t.state.message for t in failed]


def test_webhooks_of_two_tenants_sync_in_their_own_data_dirs_and_an_unowned_one_is_refused(
        sandboxes: Sandboxes, tmp_path: Path, receiver: RunningServer,
        services: Callable[[Settings], SyncService]) -> None:
    from tests.e2e.test_tenants import tenant_table

    fixtures = {"north": generate_fixture(20, seed=194, overlap=0.8, awkward=0.0),
                "south": generate_fixture(20, seed=195, overlap=0.8, awkward=0.0)}
    pairs = {name: sandboxes(fixture, rate_scale=50) for name, fixture in fixtures.items()}
    locations = {name: f["ghl"]["tokens"][0]["locationId"] for name, f in fixtures.items()}
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("\n".join(tenant_table(name, *pairs[name], fixtures[name], tmp_path) for name in fixtures))
    settings = Settings(_env_file=None, tenants_file=tenants, data_dir=tmp_path / "service", sync_coalesce_s=0.5)
    service = services(settings)
    contacts = {name: httpx.get(pairs[name][0].base_url + "/__sandbox/state").json()["locations"][locations[name]][
        "contacts"][0]["id"] for name in fixtures}
    for name in fixtures:
        post_webhook(receiver, "ContactUpdate", locations[name], contacts[name])
    post_webhook(receiver, "ContactUpdate", "NoTenantsLocation001", "SomeContact000000001")

    for name in fixtures:
        [synced] = wait_until(lambda n=name: syncs_of(service, contacts[n]), f"{name}'s sync")
        assert synced["status"] == "completed" and synced["tenant"] == name, synced
        other = next(n for n in fixtures if n != name)
        assert contact_reads(pairs[name][0], contacts[name]) >= 1  # read from its own tenant's GHL only
        assert contact_reads(pairs[other][0], contacts[name]) == 0
        with open_db(db_path(tmp_path / name)) as store:  # synced in its own data dir
            runs = store.runs().filter(store.runs()["kind"] == "sync")
            assert [ids for ids in runs["location_ids"].to_list()] == [[locations[name]]]
    [refused] = wait_until(lambda: syncs_of(service, "SomeContact000000001"), "the unowned change")
    assert refused["status"] == "unowned" and service.details()["unowned"] >= 1  # counted (replays of earlier
    # tests' events, owned by no tenant here, are refused and counted too)
    assert not db_path(tmp_path / "service").exists()  # nothing of it was written anywhere


def test_heartbeats_reach_prefect_and_recon_services_shows_a_stopped_service_stale(
        tmp_path: Path, prefect_events: str) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", service_heartbeat_s=1.0, service_stale_s=4.0)
    service = SyncService(settings).start(follow_events=False)
    mine = datetime.fromtimestamp(service.heartbeat.started_at, tz=UTC).isoformat()
    try:
        beats = wait_until(lambda: [e for e in events_of(SERVICE_RESOURCE + SERVICE_SYNCS)
                                    if e.payload.get("started_at") == mine], "a heartbeat of this service")
        assert beats[0].event == "recon.service.heartbeat" and beats[0].payload["pid"] == os.getpid()
        assert {"events", "syncs", "pending", "unowned"} <= set(beats[0].payload)
        wait_until(lambda: status_lines(settings)[SERVICE_SYNCS].split()[1] == "up", "the service shown up")
        assert len(wait_until(lambda: [e for e in events_of(SERVICE_RESOURCE + SERVICE_SYNCS)
                                       if e.payload.get("started_at") == mine][2:], "three beats")) >= 1
    finally:
        service.stop()
    stale = wait_until(lambda: (lines := status_lines(settings))[SERVICE_SYNCS].split()[1] == "stale" and lines,
                       "the stopped service shown stale", timeout=60)
    assert "last heartbeat" in stale[SERVICE_SYNCS]


def status_lines(settings: Settings) -> dict[str, str]:
    console = Console(record=True, width=200)
    run_services_status(settings, False, console, console)
    return {line.split()[0]: line for line in console.export_text().splitlines() if line.strip()}
