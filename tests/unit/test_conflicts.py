"""The pure parts of reviewing conflicts: tracking since when they are open, skips that hold while nothing
changed, the CSV rows (contact_recon/engine/conflicts.py); decisions read in the contact's own country and refused
with the check named (engine/decisions.py); phones of matched records read in the person's country
(engine/identity.py localise_phones); a fix released from the quarantine of the defect it fixes
(checks/quarantine.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from contact_recon.checks.quarantine import FIXES, apply_quarantine
from contact_recon.checks.run import QUARANTINE_SCHEMA
from contact_recon.checks.suites import SUITES

from contact_recon.engine.conflicts import (
    CSV_COLUMNS,
    PRESENCE,
    SEEN,
    SKIPS,
    nights,
    review_rows,
    track,
    without_skipped,
)
from contact_recon.engine.decisions import PHONE_CHECKS, DecisionFileError, check_decisions
from contact_recon.engine.identity import IdentityResult, localise_phones
from contact_recon.model.context import CONTEXT
from contact_recon.model.ops import CONFLICTS_SCHEMA, Op, ops_to_frame

T0 = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC)


def conflicts(*rows: tuple[str | None, ...]) -> pl.DataFrame:
    return pl.DataFrame([dict(zip(CONFLICTS_SCHEMA, r, strict=True)) for r in rows], schema=CONFLICTS_SCHEMA,
                        orient="row")


C = conflicts(("c1", "first_name", None, "Ann", "Anne", "initial_conflict"),
              ("c2", None, "b@x.io", "b@x.io", None, "deleted_in_ghl"),
              ("c3", "consent", "dnd", "subscribed", "dnd", "consent_loosened_on_tinyemail"))


# ------------------------------------------------------------------------------------------ tracking


def test_a_conflict_keeps_its_first_night_and_closes_when_gone() -> None:
    first = track(C, pl.DataFrame(schema=SEEN), T0, ["c1", "c2", "c3"])
    assert first.schema == SEEN and set(first["first_seen"]) == {T0} and first["open"].all()
    assert sorted(first["field"]) == ["", "consent", "first_name"]  # a presence row's field is PRESENCE

    later = T0 + dt.timedelta(hours=1)  # past midnight: the next night
    second = track(C.filter(pl.col("key") != "c3"), first, later, ["c1", "c2", "c3"])
    rows = {r["key"]: r for r in second.iter_rows(named=True)}
    assert rows["c1"]["first_seen"] == T0 and rows["c1"]["last_seen"] == later and rows["c1"]["open"]
    assert not rows["c3"]["open"] and rows["c3"]["first_seen"] == T0  # settled: closed
    assert nights(rows["c1"]["first_seen"], later.date()) == 1 and nights(T0, T0.date()) == 0

    # a person this run did not plan (another location, one sync) stays open; a closed one that comes back is new
    third = track(C, second.filter(pl.col("key") != "c2"), later + dt.timedelta(days=3), ["c1"])
    rows = {r["key"]: r for r in third.iter_rows(named=True)}
    assert rows["c3"]["first_seen"] == later + dt.timedelta(days=3)  # reopened: counted from now
    assert rows["c1"]["first_seen"] == T0


def test_skips_hold_while_the_conflict_is_unchanged() -> None:
    skips = pl.DataFrame([{"key": "c2", "field": PRESENCE, "reason": "deleted_in_ghl", "base": "b@x.io",
                           "tinyemail": "b@x.io", "ghl": None},
                          {"key": "c1", "field": "first_name", "reason": "initial_conflict", "base": None,
                           "tinyemail": "Ann", "ghl": "Anna"}], schema=SKIPS)
    left = without_skipped(C, skips)
    # the deletion was acknowledged as it is; c1 was skipped when GHL said "Anna": it changed since
    assert sorted(left["key"]) == ["c1", "c3"] and left.schema == CONFLICTS_SCHEMA
    assert without_skipped(C, pl.DataFrame(schema=SKIPS)).equals(C)


def test_review_rows_have_the_csv_columns_with_context_and_nights() -> None:
    seen = track(C, pl.DataFrame(schema=SEEN), T0, ["c1", "c2", "c3"])
    context = pl.DataFrame([{"key": "c1", "location_id": "L", "email": "a@x.io", "name": "Ann B",
                             "ghl_url": "https://app.gohighlevel.com/v2/location/L/contacts/detail/c1"}],
                           schema=CONTEXT)
    rows = review_rows(C, context, seen, dt.date(2026, 3, 4))
    assert rows.columns == list(CSV_COLUMNS)
    first = rows.row(0, named=True)
    assert first["email"] == "a@x.io" and first["name"] == "Ann B" and first["first_seen"] == "2026-03-01T23:30:00Z"
    assert first["nights_open"] == 3 and first["decision"] is None and first["note"] is None
    assert rows["field"].to_list() == ["first_name", None, "consent"]  # presence rows keep their empty field
    assert rows.row(1, named=True)["email"] is None  # a key the context does not know


# ----------------------------------------------------------------------------------------- decisions


def check(rows: list[dict[str, Any]], countries: dict[str, str | None] | None = None) -> Any:
    return check_decisions(Path("d.csv"), list(enumerate(rows, start=2)), {"c1", "c2", "te:x@y.io"},
                           countries=countries)


@pytest.mark.parametrize("spelling", ["07700 900006", "+44 7700 900006", "0044 7700 900006", "  +447700900006 "])
def test_a_phone_is_read_in_the_contacts_country(spelling: str) -> None:
    read = check([{"key": "c1", "field": "phone", "decision": "value", "value": spelling}], {"c1": "GB"})
    # 07700 900xxx is the UK's drama range: E.164, but unassigned, which only warns (phone_assigned)
    assert read.decisions.rows() == [("c1", "phone", "value", "+447700900006")]


def test_refusals_name_the_check_and_a_presence_skip_is_kept_with_its_values() -> None:
    with pytest.raises(DecisionFileError) as caught:
        check([{"key": "c1", "field": "phone", "decision": "value", "value": "12"},
               {"key": "c2", "field": "phone", "decision": "tinyemail", "tinyemail": "call me", "ghl": "+14155550100"}])
    assert caught.value.problems == [
        "line 2: phone '12' is not a phone number: it fails ghl_contacts.phone_e164, te_customers.phone_e164",
        "line 3: decision 'tinyemail' would write phone 'call me' to ghl, which fails ghl_contacts.phone_e164 "
        "(not a phone number); decide 'value' with a phone number instead"]
    read = check([{"key": "c2", "field": "", "decision": " SKIP ", "reason": "deleted_in_ghl", "base": "b@x.io",
                   "tinyemail": "b@x.io", "ghl": ""}])
    assert read.decisions.rows() == [("c2", PRESENCE, "skip", None)]
    assert read.skips.rows(named=True) == [{"key": "c2", "field": PRESENCE, "reason": "deleted_in_ghl",
                                            "base": "b@x.io", "tinyemail": "b@x.io", "ghl": None}]


def test_the_named_checks_exist_and_are_blocking() -> None:
    specs = {f"{suite.name}.{spec.name}": spec for suite in SUITES for spec in suite.expectations}
    for name in (*PHONE_CHECKS.values(), *FIXES):
        assert specs[name].severity == "blocking", name


# ------------------------------------------------------------------------------------------- phones


def _identity(pairs: list[tuple[str, str]]) -> IdentityResult:
    matched = pl.DataFrame([{"key": c, "contact_id": c, "location_id": "L", "email": e, "matched_by": "email",
                             "in_ghl": True, "in_te": True} for c, e in pairs])
    empty = pl.DataFrame()
    return IdentityResult(matched, empty, empty, empty, empty, empty, frozenset(), frozenset())


def test_a_record_without_a_country_reads_its_phone_in_its_partners_country() -> None:
    ghl = pl.DataFrame({"contact_id": ["c1", "c2"], "email": ["a@x.io", "b@x.io"], "country": ["GB", None],
                        "phone_raw": ["+447700900003", "(415) 555-0100"], "phone": ["+447700900003", "+14155550100"],
                        "phone_valid": [False, True]})
    te = pl.DataFrame({"email": ["a@x.io", "b@x.io", "z@x.io"], "country": [None, "US", None],
                       "phone_raw": ["07700 900003", "415 555 0100", "07700 900004"],
                       "phone": ["07700 900003", "+14155550100", "07700 900004"], "phone_valid": [False] * 3})
    new_ghl, new_te = localise_phones(_identity([("c1", "a@x.io"), ("c2", "b@x.io")]), ghl, te, "US")
    assert new_te["phone"].to_list() == ["+447700900003", "+14155550100", "07700 900004"]  # z is unmatched
    assert new_ghl["phone"].to_list() == ghl["phone"].to_list()  # read in US (TinyEmail's) already


# ---------------------------------------------------------------------------------------- quarantine


def test_a_fix_is_not_held_by_the_defect_it_fixes() -> None:
    ops = ops_to_frame([
        Op("tinyemail", "update", "c1", "phone", "call me", "+14155550100", "decided_ghl"),  # the fix
        Op("ghl", "update", "c1", "phone", "+14155550100", "call me", "decided_tinyemail"),  # copies the defect
        Op("tinyemail", "update", "c1", "city", "Paris", "Lyon", "ghl_changed"),  # another field
        Op("tinyemail", "update", "c1", "phone", "call me", "still not", "decided_value"),  # no fix
    ])
    held = pl.DataFrame([{"suite": "te_customers", "expectation": "phone_e164", "record_id": "a@x.io",
                          "key": "te:a@x.io", "email": "a@x.io", "op_id": None}], schema=QUARANTINE_SCHEMA)
    marked = apply_quarantine(ops, held, people=pl.DataFrame({"key": ["c1"], "email": ["a@x.io"]}))
    status = {(r["target"], r["field"], r["new"]): r["status"] for r in marked.iter_rows(named=True)}
    assert status == {("tinyemail", "phone", "+14155550100"): "planned", ("ghl", "phone", "call me"): "quarantined",
                      ("tinyemail", "city", "Lyon"): "quarantined", ("tinyemail", "phone", "still not"): "quarantined"}


def test_a_phone_conflict_shows_each_side_as_written_there_and_a_skip_of_it_holds():
    from contact_recon.engine.conflicts import SKIPS, as_held, without_skipped

    conflicts = pl.DataFrame({"key": ["c1", "c2"], "field": ["phone", "city"], "base": [None, None],
                              "tinyemail": ["+447700900456", "Paris"], "ghl": ["+447700900123", "Lyon"],
                              "reason": ["initial_conflict"] * 2})
    people = pl.DataFrame({"key": ["c1", "c2"], "email": ["a@x.io", "b@x.io"], "contact_id": ["c1", "c2"]})
    ghl = pl.DataFrame({"contact_id": ["c1", "c2"], "phone_raw": ["+44 7700 900123", None]})
    te = pl.DataFrame({"email": ["a@x.io", "b@x.io"], "phone_raw": ["07700 900456", "0612"]})
    shown = as_held(conflicts, people, ghl, te)
    assert shown.columns == conflicts.columns
    assert shown.rows() == [("c1", "phone", None, "07700 900456", "+44 7700 900123", "initial_conflict"),
                            ("c2", "city", None, "Paris", "Lyon", "initial_conflict")]  # not a phone: as it was
    # a person skipped the phone conflict as the file showed it: it stays acknowledged while nothing changes
    skips = pl.DataFrame([{"key": "c1", "field": "phone", "reason": "initial_conflict", "base": None,
                           "tinyemail": "07700 900456", "ghl": "+44 7700 900123"}], schema=SKIPS)
    assert without_skipped(shown, skips)["key"].to_list() == ["c2"]
    changed = as_held(conflicts, people, ghl, te.with_columns(phone_raw=pl.lit("07700 900999")))
    assert without_skipped(changed, skips)["key"].to_list() == ["c1", "c2"]


def test_a_tinyemail_key_pasted_back_in_any_case_or_spacing_is_the_person():
    from contact_recon.engine.decisions import person_key

    assert person_key(" TE:Ann.Lee@Example.COM ".strip()) == "te:ann.lee@example.com"
    assert person_key("te: ann.lee@example.com") == "te:ann.lee@example.com"
    assert person_key("0YA6I86wiSRgBBYtFav6") == "0YA6I86wiSRgBBYtFav6" and person_key(None) is None
    rows = [(2, {"key": "TE:Ann.Lee@Example.com", "field": "city", "decision": "value", "value": " Paris "})]
    decided = check_decisions(Path("d.csv"), rows, {"te:ann.lee@example.com"})
    assert decided.decisions.rows() == [("te:ann.lee@example.com", "city", "value", "Paris")]
