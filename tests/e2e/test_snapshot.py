"""The snapshot stage (contact_recon/stages/snapshot.py) against both sandboxes over HTTP.

Every test judges by the sandbox's own state and request log (`/__sandbox/requests`) and by what the
store holds afterwards: first snapshot complete, a change seen, unchanged contacts cost no request,
deletions, dirty marks, the sweep, the planner under a small allowance, an outage and an emptied side
leaving the previous snapshot and watermark intact, the `recon snapshot` command, and the Prefect tasks
inside a flow.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import SecretStr
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.engine.identity import SideCameBackEmpty
from contact_recon.sandbox import tinyemail as sandbox_tinyemail
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.stages.snapshot import SnapshotFailed, SnapshotOptions, run_snapshot, sweep_slice
from contact_recon.store.db import Store, open_db
from contact_recon.systems.auth import StaticToken
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.tinyemail.client import TinyEmailClient

RATE_SCALE = 50
ENTITIES = ("ghl_contacts", "ghl_tasks", "ghl_notes", "te_customers")


async def short_backoff(seconds: float) -> None:
    await asyncio.sleep(min(seconds, 0.01))


@dataclass
class World:
    """Both sandboxes, settings pointing at them, a store, and client factories with budgets of their own."""

    fixture: dict[str, Any]
    ghl: RunningServer
    te: RunningServer
    settings: Settings
    store: Store
    daily_limit: int = 200_000

    @property
    def location(self) -> str:
        return self.fixture["ghl"]["tokens"][0]["locationId"]

    def ghl_client(self, location_id: str) -> GHLClient:
        return GHLClient.from_settings(self.settings, location_id, sleep=short_backoff,
                                       budget=RateBudget(100 * RATE_SCALE, 10.0, self.daily_limit))

    def te_client(self) -> TinyEmailClient:
        return TinyEmailClient.from_settings(self.settings, sleep=short_backoff,
                                             budget=RateBudget(60 * RATE_SCALE, 60.0, None))

    def snapshot(self, night: int = 0, **kwargs: Any) -> Any:
        return run_snapshot(self.settings, self.store, [self.location], night_index=night, ghl_client=self.ghl_client,
                            tinyemail_client=self.te_client, **kwargs)

    def ghl_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.fixture['ghl']['tokens'][0]['token']}", "Version": "2021-07-28"}
        answer = httpx.request(method, self.ghl.base_url + path, json=body, headers=headers)
        answer.raise_for_status()
        return answer.json()

    def log_offset(self, server: RunningServer) -> int:
        return httpx.get(server.base_url + "/__sandbox/requests").json()["total"]

    def requests_since(self, server: RunningServer, offset: int) -> list[dict[str, Any]]:
        return httpx.get(server.base_url + "/__sandbox/requests", params={"offset": offset}).json()["requests"]

    def notes_requested(self, offset: int) -> set[str]:
        return {r["path"].split("/")[2] for r in self.requests_since(self.ghl, offset)
                if r["method"] == "GET" and r["path"].endswith("/notes")}

    def state(self) -> dict[str, Any]:
        return httpx.get(self.ghl.base_url + "/__sandbox/state").json()["locations"][self.location]

    def latest(self) -> dict[str, pl.DataFrame]:
        return {entity: self.store.latest_snapshot(entity) for entity in ENTITIES}


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path) -> Iterator[World]:
    fixture = validate_fixture(generate_fixture(80, seed=21, tasks_per_contact=1.0, notes_per_contact=1.5))
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    settings = Settings(_env_file=None, data_dir=tmp_path, ghl_base_url=ghl.base_url,
                        ghl_token=fixture["ghl"]["tokens"][0]["token"], tinyemail_base_url=te.base_url + "/v1",
                        tinyemail_api_key=fixture["tinyemail"]["apiKeys"][0],
                        tinyemail_rate_per_minute=60 * RATE_SCALE, notes_sweep_k=8)
    with open_db(tmp_path / "recon.duckdb") as store:
        yield World(fixture, ghl, te, settings, store)


def unchanged_ids(world: World, night: int, *also_changed: str) -> set[str]:
    """Contacts that are neither in tonight's sweep, nor within the safety lag of the watermark, nor edited."""
    contacts = world.store.latest_snapshot("ghl_contacts")
    watermark = world.store.watermark(world.location, "ghl_contacts")
    assert watermark is not None
    lag_start = datetime.fromisoformat(watermark) - timedelta(seconds=world.settings.notes_safety_lag_s)
    recent = {cid for cid, updated in contacts.select("contact_id", "date_updated").iter_rows()
              if datetime.fromisoformat(updated) >= lag_start}
    swept = set(sweep_slice(contacts["contact_id"], world.settings.notes_sweep_k, night))
    return set(contacts["contact_id"]) - recent - swept - set(also_changed)


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("read_chunk", [5_000, 7])
def test_first_snapshot_writes_everything(world: World, monkeypatch: pytest.MonkeyPatch, read_chunk: int) -> None:
    """Every record once; with a read chunk of 7 contacts the tasks and notes become frames a few contacts at a time
    (a first night of a million contacts reads them in chunks of 5,000) and still every one is there once."""
    from contact_recon.stages import snapshot as snapshot_module
    from contact_recon.store import spill

    monkeypatch.setattr(snapshot_module, "READ_CHUNK", read_chunk)
    monkeypatch.setattr(spill, "FLUSH_ROWS", read_chunk)  # the rows wait on disk in files of that many rows
    offset = world.log_offset(world.ghl)
    result = world.snapshot()
    assert world.store.path is not None
    assert not list(world.store.path.parent.glob(f"{spill.PREFIX}*"))  # the spilled rows went with the snapshot
    state = world.state()
    latest = world.latest()
    assert sorted(latest["ghl_contacts"]["contact_id"]) == sorted(c["id"] for c in state["contacts"])
    assert sorted(latest["ghl_tasks"]["task_id"]) == sorted(t["id"] for t in state["tasks"])
    assert sorted(latest["ghl_notes"]["note_id"]) == sorted(n["id"] for n in state["notes"])
    assert len(state["contacts"]) > 3 * read_chunk or read_chunk > len(state["contacts"])
    te_emails = {c["email"].strip().lower() for c in world.fixture["tinyemail"]["customers"]}
    assert latest["te_customers"].height == len(te_emails) > 0
    # every contact's notes were read once (no watermark yet), and the run records plan and usage
    assert world.notes_requested(offset) == {c["id"] for c in state["contacts"]}
    run = world.store.runs().row(-1, named=True)
    assert run["status"] == "succeeded" and run["run_id"] == result.run_id
    plan = json.loads(run["plan_json"])[f"ghl:{world.location}"]
    used = json.loads(run["requests_used_json"])[f"ghl:{world.location}"]
    assert plan["changed"] == len(state["contacts"]) and plan["status"] == "ok"
    assert used["total"] == len(world.requests_since(world.ghl, offset))
    assert world.store.watermark(world.location, "ghl_contacts") is not None


def test_a_change_is_seen_and_an_unchanged_contact_costs_no_request(world: World) -> None:
    world.snapshot(night=0)
    contacts = world.store.latest_snapshot("ghl_contacts")
    edited = contacts["contact_id"][3]
    world.ghl_call("PUT", f"/contacts/{edited}", {"firstName": "Renamed"})
    quiet = unchanged_ids(world, 1, edited)
    assert len(quiet) > contacts.height // 2  # the check below means something

    offset = world.log_offset(world.ghl)
    world.snapshot(night=1)
    requested = world.notes_requested(offset)
    row = world.store.latest_snapshot("ghl_contacts").filter(pl.col("contact_id") == edited)
    assert row["first_name"].to_list() == ["Renamed"]
    assert edited in requested
    assert not requested & quiet, "unchanged contacts outside the sweep had their notes read"
    # per-contact task reads never happen; task searches only for the contacts read tonight
    paths = [r["path"] for r in world.requests_since(world.ghl, offset)]
    assert not [p for p in paths if p.endswith("/tasks")]
    assert len([p for p in paths if p.endswith("/tasks/search")]) == 1
    # the notes and tasks of the contacts not read were carried over: the snapshot is complete
    state = world.state()
    assert sorted(world.store.latest_snapshot("ghl_notes")["note_id"]) == sorted(n["id"] for n in state["notes"])
    assert sorted(world.store.latest_snapshot("ghl_tasks")["task_id"]) == sorted(t["id"] for t in state["tasks"])


def test_night_2_normalises_only_the_k_changed_contacts_and_carries_the_rest_as_they_were(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory follows the changes (issue 20): k edits normalise k contacts; the tasks and notes of the contacts
    not read are copied in the store row for row."""
    from contact_recon.stages import snapshot as snapshot_module

    world.snapshot(night=0)
    before = {entity: world.store.latest_snapshot(entity) for entity in ("ghl_tasks", "ghl_notes")}
    edited = world.store.latest_snapshot("ghl_contacts")["contact_id"].to_list()[5:8]
    for contact_id in edited:
        world.ghl_call("PUT", f"/contacts/{contact_id}", {"city": "Elsewhere"})
    built: list[str] = []
    record = snapshot_module.ghl_contact_record

    def counting(payload: dict[str, Any], *args: Any) -> dict[str, Any]:
        built.append(payload["id"])
        return record(payload, *args)

    monkeypatch.setattr(snapshot_module, "ghl_contact_record", counting)
    offset = world.log_offset(world.ghl)
    result = world.snapshot(night=1)
    assert sorted(built) == sorted(edited)
    assert result.plans[f"ghl:{world.location}"]["changed"] >= len(edited)
    read = world.notes_requested(offset)
    for entity, key in (("ghl_tasks", "task_id"), ("ghl_notes", "note_id")):
        unread = pl.col("contact_id").is_in(list(read)).not_()
        assert_frame_equal(world.store.latest_snapshot(entity).filter(unread).sort(key),
                           before[entity].filter(unread).sort(key))
    assert result.counts["ghl_notes"] == world.store.latest_snapshot("ghl_notes").height


def test_a_deletion_is_seen_the_next_night(world: World) -> None:
    world.snapshot(night=0)
    notes = world.store.latest_snapshot("ghl_notes")
    doomed = notes["contact_id"][0]
    world.ghl_call("DELETE", f"/contacts/{doomed}")
    world.snapshot(night=1)
    latest = world.latest()
    assert doomed not in set(latest["ghl_contacts"]["contact_id"])
    assert doomed not in set(latest["ghl_notes"]["contact_id"])
    assert doomed not in set(latest["ghl_tasks"]["contact_id"])
    assert latest["ghl_contacts"].height == len(world.state()["contacts"])


def test_a_dirty_contact_gets_its_notes_read_again(world: World) -> None:
    world.snapshot(night=0)
    marked, unmarked = sorted(unchanged_ids(world, 1))[:2]
    for contact_id in (marked, unmarked):  # a note write does not move the contact's dateUpdated
        world.ghl_call("POST", f"/contacts/{contact_id}/notes", {"body": f"new note of {contact_id}"})
    world.store.mark_dirty(world.location, marked, "NoteCreate")

    offset = world.log_offset(world.ghl)
    world.snapshot(night=1)
    bodies = set(world.store.latest_snapshot("ghl_notes")["body"])
    assert f"new note of {marked}" in bodies
    assert f"new note of {unmarked}" not in bodies  # no signal: left to the sweep
    assert world.notes_requested(offset) & {marked, unmarked} == {marked}
    assert world.store.dirty_contacts().height == 0


def test_the_sweep_covers_one_kth_each_night_and_everyone_in_k_nights() -> None:
    ids = [f"C{i:05d}" for i in range(4000)]
    nights = [set(sweep_slice(ids, 8, night)) for night in range(8)]
    assert all(abs(len(s) - 500) < 100 for s in nights)
    assert sum(len(s) for s in nights) == len(ids) and set().union(*nights) == set(ids)
    assert sweep_slice(ids, 8, 3) == sweep_slice(reversed(ids), 8, 11)  # stable, by night modulo K


def test_the_nightly_sweep_reads_tonights_slice(world: World) -> None:
    world.snapshot(night=0)
    offset = world.log_offset(world.ghl)
    result = world.snapshot(night=5)
    contacts = world.store.latest_snapshot("ghl_contacts")["contact_id"]
    plan = result.plans[f"ghl:{world.location}"]
    swept = set(sweep_slice(contacts, 8, 5))
    assert plan["sweep"] == plan["sweep_wanted"] > 0
    assert swept <= world.notes_requested(offset)
    assert len(swept) < len(contacts) // 4  # about 1/8, not everyone
    assert len(world.notes_requested(offset)) == plan["changed"] + plan["dirty"] + plan["sweep"]


def test_the_planner_shrinks_the_sweep_when_the_allowance_is_low(world: World) -> None:
    world.snapshot(night=0)
    world.daily_limit = 40  # what the budget says is left today, before tonight's first answer
    options = SnapshotOptions(sweep_k=8, safety_lag_s=world.settings.notes_safety_lag_s, write_reserve=15,
                              concurrency=4)
    offset = world.log_offset(world.ghl)
    result = world.snapshot(night=1, full_sweep=True, options=options)
    plan = result.plans[f"ghl:{world.location}"]
    assert plan["status"] == "shrunk" and "sweep shrunk" in plan["reason"]
    assert plan["sweep"] < plan["sweep_wanted"]
    assert plan["total"] <= 40 - 15
    used = world.requests_since(world.ghl, offset)
    assert len(used) == result.used[f"ghl:{world.location}"]["total"] <= 40 - 15
    assert len(world.notes_requested(offset)) == plan["note_requests"]


def test_the_plan_follows_the_allowance_the_server_reports_not_the_one_assumed(world: World) -> None:
    """The client assumes a whole day (200,000 requests) but the server has 40 left (an earlier run spent the rest):
    the plan, made after the listing, takes the server's word, reads what fits and defers the others; no request
    is refused and the snapshot completes (at a million contacts the first night needs five days' allowance)."""
    world.ghl.app.state.control.limiter.daily_limit = 40
    options = SnapshotOptions(sweep_k=8, write_reserve=15, concurrency=4)
    offset = world.log_offset(world.ghl)
    result = world.snapshot(night=0, options=options)
    plan = result.plans[f"ghl:{world.location}"]
    used = world.requests_since(world.ghl, offset)
    assert [r for r in used if r["status"] == 429] == []
    assert plan["status"] == "shrunk" and plan["daily_remaining"] == 40 - plan["contact_pages"]
    assert plan["deferred"] > 0 and plan["changed"] + plan["deferred"] == len(world.state()["contacts"])
    assert len(used) == result.used[f"ghl:{world.location}"]["total"] <= 40 - 15
    assert world.store.dirty_contacts().height == plan["deferred"]
    # only the deferred contacts' notes wait: their tasks (the fact tags) are read tonight, all of them
    state = world.state()
    assert plan["deferred_tasks_read"] and world.store.latest_snapshot("ghl_tasks").height == len(state["tasks"])
    assert sorted(world.store.latest_snapshot("ghl_tasks")["task_id"]) == sorted(t["id"] for t in state["tasks"])


def test_contacts_deferred_by_a_short_allowance_are_marked_dirty_and_read_next(world: World) -> None:
    world.daily_limit = 40
    options = SnapshotOptions(sweep_k=8, write_reserve=15, concurrency=4)
    first = world.snapshot(night=0, options=options).plans[f"ghl:{world.location}"]
    contacts = len(world.state()["contacts"])
    assert first["status"] == "shrunk" and first["changed"] + first["deferred"] == contacts
    assert first["deferred"] > 0 and world.store.dirty_contacts().height == first["deferred"]
    assert world.store.latest_snapshot("ghl_notes")["contact_id"].n_unique() <= first["changed"]

    deferred = set(world.store.dirty_contacts()["contact_id"])
    world.daily_limit = 200_000
    offset = world.log_offset(world.ghl)
    second = world.snapshot(night=0, options=options).plans[f"ghl:{world.location}"]
    assert second["deferred"] == 0 and second["dirty"] > 0
    assert deferred <= world.notes_requested(offset)
    assert world.store.dirty_contacts().height == 0
    state = world.state()
    assert sorted(world.store.latest_snapshot("ghl_notes")["note_id"]) == sorted(n["id"] for n in state["notes"])


def test_unchanged_tinyemail_customers_keep_their_rows(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Night 2 normalises only the customers whose payload or lists changed; the rows equal a full rebuild."""
    from contact_recon.stages import snapshot as snapshot_module

    world.snapshot(night=0)
    te = world.fixture["tinyemail"]
    first, second = te["customers"][0]["email"], te["customers"][1]["email"]
    other_list = next(lst["id"] for lst in te["lists"] if second not in lst["members"])
    headers = {"X-API-KEY": te["apiKeys"][0]}
    base = world.te.base_url + "/v1"
    httpx.put(f"{base}/account/customer", headers=headers,
              json={"updateMembers": [{"email": first, "firstName": "Renamed"}]}).raise_for_status()
    httpx.put(f"{base}/audiences/{other_list}", headers=headers,
              json={"assignMembers": [{"email": second}]}).raise_for_status()  # only its lists change
    built: list[str] = []
    record = snapshot_module.tinyemail_customer_record

    def counting(payload: dict[str, Any], lists: Any, region: str = "US") -> dict[str, Any]:
        built.append(payload["email"])
        return record(payload, lists, region)

    monkeypatch.setattr(snapshot_module, "tinyemail_customer_record", counting)
    result = world.snapshot(night=1)
    assert sorted(built) == sorted([first, second])
    assert result.plans["tinyemail"]["changed"] == 2  # the bench's "changed on night 2" figure
    incremental = world.store.latest_snapshot("te_customers").sort("email")
    row = incremental.filter(pl.col("email") == second.strip().lower())
    assert other_list in row["lists"].to_list()[0]
    assert incremental.filter(pl.col("email") == first.strip().lower())["first_name"].to_list() == ["Renamed"]
    built.clear()
    world.snapshot(night=1, full_sweep=True)  # normalises every customer again
    assert len(built) == result.counts["te_customers"]
    assert_frame_equal(world.store.latest_snapshot("te_customers").sort("email"), incremental)
    used = result.used[f"ghl:{world.location}"]
    assert set(used["phase_s"]) == {"contacts", "tasks", "notes"} and set(result.used["tinyemail"]["phase_s"]) == {
        "members"}


def test_several_locations_are_written_as_one_snapshot(sandboxes: Callable[..., tuple[RunningServer, RunningServer]],
                                                      tmp_path: Path) -> None:
    fixture = validate_fixture(generate_fixture(60, seed=4, locations=2))
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    tokens = {t["locationId"]: t["token"] for t in fixture["ghl"]["tokens"]}
    settings = Settings(_env_file=None, ghl_base_url=ghl.base_url, tinyemail_base_url=te.base_url + "/v1",
                        tinyemail_api_key=fixture["tinyemail"]["apiKeys"][0], tinyemail_rate_per_minute=3000)

    def client(location_id: str) -> GHLClient:
        return GHLClient.from_settings(settings, location_id, credentials=StaticToken(tokens[location_id]),
                                       budget=RateBudget(5000, 10.0, 200_000))

    with open_db(tmp_path / "recon.duckdb") as store:
        result = run_snapshot(settings, store, sorted(tokens), ghl_client=client,
                              tinyemail_client=lambda: TinyEmailClient.from_settings(
                                  settings, budget=RateBudget(3000, 60.0, None)))
        parts = store.snapshot_parts().filter(pl.col("run_id") == result.run_id)
        assert sorted(parts.filter(pl.col("entity") == "ghl_contacts")["location_id"]) == sorted(tokens)
        for location_id in tokens:
            expected = fixture["ghl"]["locations"][location_id]["contacts"]
            assert store.latest_snapshot("ghl_contacts", location_id).height == len(expected) > 0
            assert store.watermark(location_id, "ghl_contacts") is not None
        assert set(result.plans) == {f"ghl:{loc}" for loc in tokens} | {"tinyemail"}


def test_a_tinyemail_outage_stops_the_run_and_keeps_the_previous_snapshot(world: World,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world.snapshot(night=0)
    before, watermark = world.latest(), world.store.watermark(world.location, "ghl_contacts")
    world.ghl_call("PUT", f"/contacts/{before['ghl_contacts']['contact_id'][0]}", {"firstName": "Changed"})
    httpx.post(world.te.base_url + "/__sandbox/faults", json={"faults": "5xx=1"}).raise_for_status()

    with pytest.raises(SnapshotFailed) as failure:
        world.snapshot(night=1)
    assert failure.value.system == "tinyemail"
    assert "Unavailable" in failure.value.reason
    after = world.latest()
    for entity in ENTITIES:
        assert_frame_equal(after[entity], before[entity])
    assert world.store.watermark(world.location, "ghl_contacts") == watermark
    run = world.store.runs().row(-1, named=True)
    assert run["status"] == "failed" and "tinyemail" in run["error"]
    secrets = [world.fixture["tinyemail"]["apiKeys"][0], world.fixture["ghl"]["tokens"][0]["token"]]
    assert not [s for s in secrets if s in caplog.text or s in run["error"]]


def test_a_refused_ghl_token_is_a_named_failure(world: World) -> None:
    world.settings = world.settings.model_copy(update={"ghl_token": SecretStr("not-a-token")})
    with pytest.raises(SnapshotFailed) as failure:
        world.snapshot()
    assert failure.value.system == f"ghl:{world.location}" and "AuthError" in failure.value.reason
    assert all(world.store.latest_snapshot(e).height == 0 for e in ENTITIES)
    assert world.store.watermark(world.location, "ghl_contacts") is None


def test_an_emptied_side_is_a_named_error_not_mass_deletion(world: World,
                                                            serve: Callable[..., RunningServer]) -> None:
    world.snapshot(night=0)
    before = world.latest()
    empty = copy.deepcopy(world.fixture["tinyemail"])
    empty["customers"] = []
    for contact_list in empty["lists"]:
        contact_list["members"] = []
    world.te = serve(sandbox_tinyemail.create_app(empty, rate_scale=RATE_SCALE))
    world.settings = world.settings.model_copy(update={"tinyemail_base_url": world.te.base_url + "/v1"})

    with pytest.raises(SideCameBackEmpty) as failure:
        world.snapshot(night=1)
    assert failure.value.system == "tinyemail" and failure.value.base_count == before["te_customers"].height
    for entity in ENTITIES:
        assert_frame_equal(world.store.latest_snapshot(entity), before[entity])
    result = world.snapshot(night=1, allow_empty=True)  # the explicit override
    assert result.counts["te_customers"] == 0


def test_recon_snapshot_command(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.store.close()  # the command opens the store file itself
    env = {"RECON_DATA_DIR": str(world.settings.data_dir), "RECON_GHL_BASE_URL": world.ghl.base_url,
           "RECON_GHL_TOKEN": world.fixture["ghl"]["tokens"][0]["token"], "RECON_GHL_LOCATION_IDS": world.location,
           "RECON_TINYEMAIL_BASE_URL": world.te.base_url + "/v1",
           "RECON_TINYEMAIL_API_KEY": world.fixture["tinyemail"]["apiKeys"][0],
           "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * RATE_SCALE)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    ok = runner.invoke(app, ["snapshot", "--full-sweep"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    assert "rows ghl_contacts" in ok.output and "requests planned / used" in ok.output
    # TinyEmail's plan counts requests (the lists, then each list's member pages), not the records it read
    te_row = re.search(r"tinyemail requests planned / used\W+([\d,]+) / ([\d,]+)", ok.output)
    assert te_row is not None, ok.output
    te_planned, te_used = te_row.groups()
    assert te_planned == te_used and int(te_used.replace(",", "")) > 1
    monkeypatch.setenv("RECON_TINYEMAIL_API_KEY", "wrong-key-0123456789")
    failed = runner.invoke(app, ["snapshot", "--location", world.location], catch_exceptions=False)
    assert failed.exit_code == 1
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "snapshot of tinyemail failed: AuthError" in lines[0], lines
    assert "wrong-key-0123456789" not in failed.output


def test_the_prefect_tasks_run_inside_a_flow(world: World, prefect_server: str) -> None:  # noqa: F811
    from prefect import flow
    from prefect.client.orchestration import get_client

    from contact_recon.stages import snapshot as snapshot_module

    @flow
    def nightly_snapshot() -> tuple[str, dict[str, int], str, bool]:
        from prefect.runtime import flow_run

        result = world.snapshot(night=0)
        return result.run_id, result.counts, str(flow_run.id), snapshot_module._in_flow()

    run_id, counts, flow_run_id, in_flow = nightly_snapshot()
    assert in_flow  # run_snapshot saw the flow and submitted its Prefect tasks
    state = world.state()
    assert counts["ghl_contacts"] == len(state["contacts"]) and counts["ghl_notes"] == len(state["notes"])
    run = world.store.runs().row(-1, named=True)
    assert run["status"] == "succeeded" and run["run_id"] == run_id
    assert set(json.loads(run["plan_json"])) == {f"ghl:{world.location}", "tinyemail"}

    async def flow_state() -> str:
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state.type.value

    # the flow run is recorded by the Prefect server (task runs arrive through Prefect's event stream,
    # which is asynchronous, so they are not asserted here)
    assert asyncio.run(flow_state()) == "COMPLETED"


def test_inside_a_flow_a_stalled_location_fails_alone(sandboxes: Callable[..., tuple[RunningServer, RunningServer]],
                                                      tmp_path: Path, prefect_server: str) -> None:  # noqa: F811
    from prefect import flow

    fixture = validate_fixture(generate_fixture(1_400, seed=4, locations=2, notes_per_contact=0.1,
                                                tasks_per_contact=0.1))
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    tokens = {t["locationId"]: t["token"] for t in fixture["ghl"]["tokens"]}
    ok, stalled = sorted(tokens, key=lambda loc: len(fixture["ghl"]["locations"][loc]["contacts"]))
    assert len(fixture["ghl"]["locations"][stalled]["contacts"]) > 500
    httpx.post(ghl.base_url + "/__sandbox/search", json={"paging": {stalled: "stall"}}).raise_for_status()
    settings = Settings(_env_file=None, ghl_base_url=ghl.base_url, tinyemail_base_url=te.base_url + "/v1",
                        tinyemail_api_key=fixture["tinyemail"]["apiKeys"][0], tinyemail_rate_per_minute=3000)

    def client(location_id: str) -> GHLClient:
        return GHLClient.from_settings(settings, location_id, credentials=StaticToken(tokens[location_id]),
                                       budget=RateBudget(5000, 10.0, 200_000))

    with open_db(tmp_path / "recon.duckdb") as store:
        @flow
        def nightly_snapshot() -> Any:
            return run_snapshot(settings, store, sorted(tokens), ghl_client=client,
                                tinyemail_client=lambda: TinyEmailClient.from_settings(
                                    settings, budget=RateBudget(3000, 60.0, None)))

        result = nightly_snapshot()
        assert set(result.failed) == {f"ghl:{stalled}"} and "PagingStalled" in result.failed[f"ghl:{stalled}"]
        assert result.locations == (ok,)
        assert store.latest_snapshot("ghl_contacts", ok).height == len(fixture["ghl"]["locations"][ok]["contacts"])
        assert store.latest_snapshot("ghl_contacts", stalled).height == 0
        assert store.latest_snapshot("te_customers").height > 0
