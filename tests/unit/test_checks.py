"""Hygiene checks: the generator's awkward records are caught by the right expectation and quarantined,
a clean fixture passes every blocking expectation, results land in DuckDB and Data Docs are built.

Frames come from contact_recon.sandbox.generate fixtures through the normalise row builders (no server needed); the
plan comes from the real identity matcher and merge engine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import phonenumbers
import polars as pl
import pytest
from contact_recon.checks import apply_quarantine, run_checks, split_plan
from contact_recon.checks.quarantine import QUARANTINED
from contact_recon.checks.run import CheckReport, in_gx_worker
from contact_recon.checks.suites import SUITES, Thresholds

from contact_recon.engine.identity import ID_MAP, IdentityResult, match_identities, merge_sides
from contact_recon.engine.merge import plan
from contact_recon.model.normalise import to_frame
from contact_recon.model.ops import Op, ops_to_frame
from contact_recon.model.policy import GuardPolicy, Policy
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, GHL_TASKS, MERGE_SIDE, TINYEMAIL_CUSTOMERS
from contact_recon.model.tags import TAG_FOLDED
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.store.db import open_db
from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_note_record, ghl_task_record
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record

LOOSE_GUARDS = GuardPolicy(deletes_or_inactivations=1.0, field_updates=1.0, tag_removals=1.0)
NOT_A_PHONE = "call me maybe"
LONG_TAG = "x" * 101


def frames_of(fixture: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """The canonical frames of a fixture, as the snapshot stage would build them."""
    contacts, tasks, notes = [], [], []
    for loc, data in fixture["ghl"]["locations"].items():
        contacts += [ghl_contact_record(c, loc) for c in data["contacts"]]
        tasks += [ghl_task_record(t, loc) for t in data["tasks"]]
        notes += [ghl_note_record(n, loc) for n in data["notes"]]
    lists: dict[str, list[str]] = {}
    for lst in fixture["tinyemail"]["lists"]:
        for email in lst["members"]:
            lists.setdefault(email, []).append(lst["id"])
    customers = [tinyemail_customer_record(c, lists.get(c["email"], [])) for c in fixture["tinyemail"]["customers"]]
    return {"ghl_contacts": to_frame(contacts, GHL_CONTACTS), "te_customers": to_frame(customers, TINYEMAIL_CUSTOMERS),
            "ghl_tasks": to_frame(tasks, GHL_TASKS), "ghl_notes": to_frame(notes, GHL_NOTES)}


def planned(frames: dict[str, pl.DataFrame], today: dt.date) -> tuple[pl.DataFrame, IdentityResult, int]:
    """(ops, identity result, people) of a first run over the frames."""
    identity = match_identities(frames["ghl_contacts"], frames["te_customers"], pl.DataFrame(schema=ID_MAP))
    ghl_side, te_side = merge_sides(identity, frames["ghl_contacts"], frames["te_customers"])
    result = plan(pl.DataFrame(schema=MERGE_SIDE), te_side, ghl_side, Policy(), ghl_tasks=frames["ghl_tasks"],
                  today=today)
    return result.ops, identity, result.stats["people"]


def base_date(fixture: dict[str, Any]) -> dt.date:
    return dt.date.fromisoformat(fixture["_meta"]["baseDate"][:10])


def spoil(fixture: dict[str, Any]) -> dict[str, str]:
    """Add bad records the generator does not make; returns what was spoiled (name -> record id)."""
    loc, data = next(iter(fixture["ghl"]["locations"].items()))
    clean = [c for c in data["contacts"]
             if c.get("email") and "@" in c["email"] and c.get("phone", "").startswith("+1")]
    clean[0]["phone"] = NOT_A_PHONE
    clean[1]["tags"] = ["vip", LONG_TAG]
    customer = next(c for c in fixture["tinyemail"]["customers"] if c["email"].endswith(".com"))
    customer["tags"] = [f"t{i}" for i in range(101)]
    orphan = {**data["tasks"][0], "id": "task-orphan", "contactId": "no-such-contact"}
    far = {**data["tasks"][1], "id": "task-far", "dueDate": "2099-01-01T00:00:00.000Z"}
    blank = {**data["notes"][0], "id": "note-blank", "body": "   "}
    data["tasks"] += [orphan, far]
    data["notes"].append(blank)
    return {"bad_phone": clean[0]["id"], "long_tag": clean[1]["id"], "many_tags": customer["email"].lower(),
            "orphan_task": orphan["id"], "far_task": far["id"], "blank_note": blank["id"]}


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    fixture = generate_fixture(600, seed=7, awkward=0.3, locations=2, allow_duplicates=True)
    spoiled = spoil(fixture)
    frames = frames_of(fixture)
    ops, identity, people = planned(frames, base_date(fixture))
    data_dir = tmp_path_factory.mktemp("data")
    report = run_checks(frames, ops, None, "run-awkward", data_dir, today=base_date(fixture), guards=LOOSE_GUARDS,
                        people=people)
    return {"fixture": fixture, "spoiled": spoiled, "frames": frames, "ops": ops, "identity": identity,
            "report": report, "data_dir": data_dir}


def caught(report: CheckReport, qualified: str, column: str = "record_id") -> set[str]:
    suite, name = qualified.split(".")
    q = report.quarantined.filter((pl.col("suite") == suite) & (pl.col("expectation") == name))
    return set(q[column].to_list())


def test_every_invalid_email_is_caught_by_email_syntax(awkward: dict[str, Any]) -> None:
    report: CheckReport = awkward["report"]
    invalid = {e.lower() for e in awkward["fixture"]["_meta"]["awkward"]["invalid_email"]}
    assert invalid
    found = caught(report, "ghl_contacts.email_syntax", "email") | caught(report, "te_customers.email_syntax", "email")
    assert found == invalid
    assert not report.result("ghl_contacts.email_syntax").success
    te_found = caught(report, "te_customers.email_syntax")
    assert report.result("te_customers.email_syntax").unexpected_count == len(te_found) > 0


def test_every_duplicate_within_a_location_is_caught(awkward: dict[str, Any]) -> None:
    report: CheckReport = awkward["report"]
    contacts = awkward["frames"]["ghl_contacts"]
    duplicates = set(awkward["fixture"]["_meta"]["awkward"]["ghl_duplicate"])
    flagged = caught(report, "ghl_contacts.email_unique_in_location")
    assert duplicates and duplicates <= flagged
    # the originals are flagged with them, and nothing else: every flagged contact shares its email in its location
    groups = contacts.filter(pl.col("contact_id").is_in(list(flagged))).group_by("location_id", "email").len()
    assert groups["len"].min() >= 2 and len(flagged) == 2 * len(duplicates)


def test_bad_phones_are_caught_and_unassigned_ones_only_warned(awkward: dict[str, Any]) -> None:
    report: CheckReport = awkward["report"]
    meta = awkward["fixture"]["_meta"]["awkward"]
    flagged = caught(report, "ghl_contacts.phone_e164")
    assert awkward["spoiled"]["bad_phone"] in flagged
    contacts = awkward["frames"]["ghl_contacts"].filter(pl.col("contact_id").is_in(list(flagged)))
    for raw, country, email in contacts.select("phone_raw", "country", "email").iter_rows():
        # independently: phonenumbers finds no possible number in this text, in the record's country or the US
        assert not any(_possible(raw, region) for region in {country or "US", "US"}), raw
        assert raw == NOT_A_PHONE or email in meta["phone_format"]
    warned = report.result("ghl_contacts.phone_assigned")
    assert warned.severity == "warning" and warned.unexpected_count > 0 and warned.success
    assert not caught(report, "ghl_contacts.phone_assigned")


def _possible(raw: str, region: str) -> bool:
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(raw, region))
    except phonenumbers.NumberParseException:
        return False


def test_tags_tasks_and_notes_are_checked(awkward: dict[str, Any]) -> None:
    report: CheckReport = awkward["report"]
    spoiled = awkward["spoiled"]
    assert caught(report, "ghl_contacts.tags_clean") == {spoiled["long_tag"]}
    assert caught(report, "te_customers.tags_clean") == {spoiled["many_tags"]}
    assert caught(report, "ghl_tasks.contact_exists") == {spoiled["orphan_task"]}
    assert caught(report, "ghl_tasks.due_date_in_bounds") == {spoiled["far_task"]}
    blank = report.result("ghl_notes.body_present")
    assert (blank.severity, blank.unexpected_count, blank.sample_values) == ("warning", 1, (spoiled["blank_note"],))
    missing = report.result("ghl_contacts.email_present")
    assert missing.unexpected_count == len(awkward["fixture"]["_meta"]["awkward"]["no_email"]) > 0


def test_quarantined_records_get_no_write_in_either_direction(awkward: dict[str, Any]) -> None:
    report: CheckReport = awkward["report"]
    identity: IdentityResult = awkward["identity"]
    marked = apply_quarantine(awkward["ops"], report.quarantined, identity.matched)
    to_apply, held = split_plan(marked)
    assert to_apply.height + held.height == awkward["ops"].height and held.height > 0
    bad_emails = set(report.quarantined["email"].drop_nulls())
    contact_of = dict(identity.matched.select("email", "key").iter_rows())
    bad_keys = (set(report.quarantined["key"].drop_nulls()) | {f"te:{e}" for e in bad_emails}
                | {contact_of[e] for e in bad_emails if e in contact_of})
    assert not to_apply.filter(pl.col("key").is_in(list(bad_keys))).height
    # invalid emails had ops planned both ways (creates to either side, fills): all are held, named
    invalid = {e.lower() for e in awkward["fixture"]["_meta"]["awkward"]["invalid_email"]}
    their_keys = {f"te:{e}" for e in invalid} | {contact_of[e] for e in invalid if e in contact_of}
    theirs = marked.filter(pl.col("key").is_in(list(their_keys)))
    assert set(theirs["target"]) == {"ghl", "tinyemail"}
    assert set(theirs["status"]) == {QUARANTINED}
    assert all("email_syntax" in names for names in theirs["quarantined_by"])
    # the spoiled GHL phone: its contact's ops are held and name the phone expectation
    phone = marked.filter(pl.col("key") == awkward["spoiled"]["bad_phone"])
    assert phone.height and set(phone["quarantined_by"]) == {"ghl_contacts.phone_e164"}


def test_a_clean_fixture_passes_every_blocking_expectation(tmp_path: Path) -> None:
    fixture = generate_fixture(400, seed=11, awkward=0, locations=2)
    frames = frames_of(fixture)
    ops, _, people = planned(frames, base_date(fixture))
    report = run_checks(frames, ops, None, "run-clean", tmp_path, today=base_date(fixture), guards=LOOSE_GUARDS,
                        people=people, docs=False)
    blocking = [r for r in report.results if r.severity == "blocking"]
    assert len(blocking) == sum(1 for s in SUITES for x in s.expectations if x.severity == "blocking")
    assert [(r.qualified, r.unexpected_count) for r in blocking if not r.success] == []
    assert all(r.element_count > 0 for r in blocking)
    assert report.quarantined.height == 0
    assert split_plan(apply_quarantine(ops, report.quarantined))[1].height == 0


def test_results_go_to_duckdb_and_data_docs_are_built(awkward: dict[str, Any]) -> None:
    report: CheckReport = awkward["report"]
    data_dir: Path = awkward["data_dir"]
    with open_db(data_dir / "recon.duckdb") as store:
        store.save_check_results(report.run_id, report.to_frame())
    with open_db(data_dir / "recon.duckdb") as store:  # a real file, read back by a new connection
        rows = store.load_check_results("run-awkward")
    assert rows.height == len(report.results) == sum(len(s.expectations) for s in SUITES)
    is_email = (pl.col("suite") == "ghl_contacts") & (pl.col("expectation") == "email_syntax")
    row = rows.filter(is_email).row(0, named=True)
    expected = report.result("ghl_contacts.email_syntax")
    assert (row["success"], row["unexpected_count"], row["blocking"]) == (False, expected.unexpected_count, True)
    assert json.loads(row["sample_values"]) == list(expected.sample_values) and expected.sample_values
    assert report.docs_index is not None and report.docs_index.is_relative_to(data_dir / "gx")
    html = report.docs_index.read_text(encoding="utf-8")
    assert "run-awkward" in html and all(s.name in html for s in SUITES)
    assert "analytics_enabled: false" in (data_dir / "gx" / "great_expectations.yml").read_text()
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"


def _ops(*ops: Op) -> pl.DataFrame:
    return ops_to_frame(list(ops))


def test_the_plan_suite_catches_two_ops_writing_one_field(tmp_path: Path) -> None:
    ops = _ops(Op("tinyemail", "update", "c1", "first_name", "Ann", "Anne", "ghl_changed"),
               Op("tinyemail", "update", "c1", "first_name", "Ann", "Annie", "owned_by_ghl"),
               Op("ghl", "tag_add", "c2", "tags", None, "vip", "tag_added_on_tinyemail"),
               Op("ghl", "tag_remove", "c2", "tags", "vip", None, "tag_removed_on_tinyemail"),
               Op("ghl", "tag_add", "c3", "tags", None, "vip", "tag_added_on_tinyemail"),
               Op("ghl", "tag_add", "c3", "tags", None, "new", "tag_added_on_tinyemail"),
               Op("tinyemail", "update", "c3", "first_name", "Bo", "Bob", "ghl_changed"))
    report = run_checks({}, ops, None, "run-plan", tmp_path, people=100, docs=False)
    result = report.result("plan.one_write_per_field")
    assert (result.success, result.unexpected_count) == (False, 4)
    assert caught(report, "plan.one_write_per_field", "key") == {"c1", "c2"}
    marked = apply_quarantine(ops, report.quarantined)
    assert dict(marked.group_by("key").agg(pl.col("status").unique().sort().str.join(",")).iter_rows()) == {
        "c1": "quarantined", "c2": "quarantined", "c3": "planned"}


def test_the_plan_suite_holds_the_ops_of_a_guard_breach(tmp_path: Path) -> None:
    updates = [Op("tinyemail", "update", f"c{i}", "city", None, "Oslo", "ghl_changed") for i in range(30)]
    tag = Op("ghl", "tag_add", "c0", "tags", None, "vip", "tag_added_on_tinyemail")
    ops = _ops(*updates, tag)
    beyond = run_checks({}, ops, None, "run-guards", tmp_path, people=100, docs=False)
    result = beyond.result("plan.within_guards")
    assert (result.success, result.unexpected_count) == (False, 30)
    assert result.sample_values[0].startswith("field_updates: 30 of 100 people")
    marked = apply_quarantine(ops, beyond.quarantined)
    assert set(marked.filter(pl.col("kind") == "update")["quarantined_by"]) == {"plan.within_guards"}
    assert marked.filter(pl.col("kind") == "tag_add")["status"].to_list() == ["planned"]
    within = run_checks({}, ops, None, "run-guards", tmp_path, people=1_000, docs=False)
    assert within.result("plan.within_guards").success and within.quarantined.height == 0
    approved = run_checks({}, ops, Thresholds(severity={"plan.within_guards": "warning"}), "run-guards", tmp_path,
                          people=100, docs=False)
    assert approved.result("plan.within_guards").severity == "warning" and approved.quarantined.height == 0


def test_the_guard_leaves_out_folds_of_a_second_spelling(tmp_path: Path) -> None:
    # 30 of 100 people lose a second spelling of a tag (model/tags.py): no tag is removed, the guard holds nothing
    folds = [Op("ghl", "tag_remove", f"c{i}", "tags", "vip", None, TAG_FOLDED) for i in range(30)]
    report = run_checks({}, _ops(*folds), None, "run-folds", tmp_path, people=100, docs=False)
    assert report.result("plan.within_guards").success and report.quarantined.height == 0
    removals = [Op("ghl", "tag_remove", f"c{i}", "tags", "vip", None, "tag_removed_on_tinyemail") for i in range(30)]
    held = run_checks({}, _ops(*removals), None, "run-removals", tmp_path, people=100, docs=False)
    assert not held.result("plan.within_guards").success  # the same removals for real: held


def test_the_plan_suite_holds_empty_or_huge_notes(tmp_path: Path) -> None:
    ops = _ops(Op("ghl", "note_create", "c1", "unsubscribe_note", None, "  ", "tinyemail_unsubscribed"),
               Op("ghl", "note_create", "c2", "bounce_note", None, "x" * 20_001, "tinyemail_bounced"),
               Op("ghl", "note_create", "c3", "bounce_note", None, "bounced", "tinyemail_bounced"))
    report = run_checks({}, ops, None, "run-notes", tmp_path, people=100, docs=False)
    marked = apply_quarantine(ops, report.quarantined)
    assert dict(marked.select("key", "status").iter_rows()) == {"c1": "quarantined", "c2": "quarantined",
                                                               "c3": "planned"}


def test_quarantine_reaches_a_person_under_its_other_key() -> None:
    # a bad TinyEmail record (keyed te:a@b) whose person is C1, and a bad GHL contact C9 whose email z@y is
    # still held by an unmatched TinyEmail customer (te:z@y)
    quarantined = pl.DataFrame({"suite": ["te_customers", "ghl_contacts"], "expectation": ["email_syntax"] * 2,
                                "record_id": ["a@b", "C9"], "key": ["te:a@b", "C9"], "email": ["a@b", "z@y"],
                                "op_id": [None, None]})
    ops = _ops(Op("ghl", "update", "C1", "city", None, "Oslo", "tinyemail_changed"),
               Op("tinyemail", "update", "C2", "city", None, "Rome", "ghl_changed"),
               Op("ghl", "create", "te:a@b", None, None, "{}", "new_on_tinyemail"),
               Op("ghl", "create", "te:z@y", None, None, "{}", "new_on_tinyemail"))
    people = pl.DataFrame({"key": ["C1", "C2"], "email": ["a@b", "c@d"]})
    marked = apply_quarantine(ops, quarantined, people)
    assert dict(marked.select("key", "status").iter_rows()) == {"C1": "quarantined", "C2": "planned",
                                                               "te:a@b": "quarantined", "te:z@y": "quarantined"}
    assert marked["op_id"].to_list() == ops["op_id"].to_list()


@pytest.mark.parametrize("awkward", [0.0, 0.3])
def test_the_in_memory_results_of_a_run_without_docs_are_gxs_own(tmp_path: Path, awkward: float) -> None:
    """A run without Data Docs (a one-person sync) computes the results in memory (`quick_results`); over the same
    frames and plan, clean and awkward, every result equals what GX answers, samples included (a run with docs)."""
    fixture = generate_fixture(300, seed=19, awkward=awkward, locations=1)
    frames = frames_of(fixture)
    ops, _, people = planned(frames, base_date(fixture))
    thresholds = Thresholds(sample_size=5)
    common: dict[str, Any] = {"today": base_date(fixture), "people": people}
    gx = run_checks(frames, ops, thresholds, "run-gx", tmp_path / "gx", docs=True, **common)
    quick = run_checks(frames, ops, thresholds, "run-quick", tmp_path / "quick", docs=False, **common)
    assert quick.results == gx.results
    assert quick.docs_index is None and not (tmp_path / "quick" / "gx").exists()  # no GX project written
    assert quick.quarantined.equals(gx.quarantined)
    if awkward:  # the comparison covered failing expectations and their samples, not only clean ones
        assert any(r.unexpected_count and r.sample_values for r in gx.results)
        assert any(not r.success for r in gx.results)


def test_gx_runs_in_one_kept_child_that_is_replaced_when_it_dies(tmp_path: Path) -> None:
    fixture = generate_fixture(40, seed=5, awkward=0, locations=1)
    frames = frames_of(fixture)
    first = run_checks(frames, None, None, "run-1", tmp_path / "a", today=base_date(fixture), docs=True)
    child = in_gx_worker(os.getpid)
    second = run_checks(frames, None, None, "run-2", tmp_path / "b", today=base_date(fixture), docs=True)
    assert child != os.getpid() and in_gx_worker(os.getpid) == child  # the same child served both runs
    assert first.docs_index is not None and second.docs_index is not None and second.docs_index.exists()
    os.kill(child, signal.SIGKILL)  # a child killed between runs (the OOM killer, an operator)
    third = run_checks(frames, None, None, "run-3", tmp_path / "c", today=base_date(fixture), docs=True)
    assert in_gx_worker(os.getpid) not in (child, os.getpid())
    assert [(r.qualified, r.unexpected_count) for r in third.results] == \
        [(r.qualified, r.unexpected_count) for r in first.results]


def test_the_gx_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text("import os, time\nfrom contact_recon.checks.run import in_gx_worker\n"
                      "if __name__ == '__main__':\n    print(in_gx_worker(os.getpid), flush=True)\n"
                      "    time.sleep(120)\n")
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()  # SIGKILL: no atexit, no executor shutdown
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """A process that runs (a zombie has exited: only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
