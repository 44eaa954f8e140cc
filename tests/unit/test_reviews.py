"""The pure part of the review loop (contact_recon/engine/reviews.py and the matcher's decisions): review ids,
the checks of a filled-in identity.csv, what the standing decisions make the matcher do, and ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from contact_recon.engine.identity import ID_MAP, match_identities, with_decisions
from contact_recon.engine.reviews import (
    AGES,
    DECIDED,
    IdentityFileError,
    check_identity_rows,
    decided_effects,
    identity_rows,
    nights,
    review_id,
)
from contact_recon.model.cells import guarded, unguarded
from tests.unit.test_identity import ghl, id_map, te

T0 = datetime(2026, 1, 10, 2, 0, tzinfo=UTC)


def known(*reviews: tuple[str, list[str], str | None, str | None, list[str]]) -> pl.DataFrame:
    rows = [{"review_id": review_id(k, ids, e, o), "kind": k, "contact_ids": ids, "email": e, "old_email": o,
             "location_ids": locs} for k, ids, e, o, locs in reviews]
    return pl.DataFrame(rows, schema={"review_id": pl.String, "kind": pl.String, "contact_ids": pl.List(pl.String),
                                      "email": pl.String, "old_email": pl.String, "location_ids": pl.List(pl.String)})


SHARED = ("email_shared_by_several", ["c1", "c2"], "a@x.com", None, ["L1", "L1"])
CHANGED = ("email_changed", ["c3"], "new@x.com", "old@x.com", ["L1"])
COLLISION = ("te_email_collision", [], "b@x.com", None, [])


def test_review_ids_are_stable_and_name_the_situation() -> None:
    assert review_id("email_shared_by_several", ["c2", "c1"], "a@x.com", None) == \
        review_id("email_shared_by_several", ["c1", "c2"], "a@x.com", None)
    assert review_id("email_shared_by_several", ["c1", "c2", "c9"], "a@x.com", None) != \
        review_id("email_shared_by_several", ["c1", "c2"], "a@x.com", None)  # a third contact: a new review


def test_a_filled_in_file_is_checked_row_by_row() -> None:
    reviews = known(SHARED, CHANGED, COLLISION)
    rid = reviews["review_id"].to_list()
    good = check_identity_rows(Path("i.csv"), ["review_id", "decision", "contact"], [
        (2, {"review_id": rid[0], "decision": " PAIR ", "contact": "c2"}),
        (3, {"review_id": rid[1], "decision": "pair", "contact": ""}),  # an email change: its own contact
        (4, {"review_id": rid[2], "decision": ""}),
    ], reviews)
    assert good.undecided == 1 and good.rows == 3
    assert good.decisions.select("decision", "contact_id", "location_id").rows() == [
        ("pair", "c2", "L1"), ("pair", "c3", "L1")]
    with pytest.raises(IdentityFileError) as bad:
        check_identity_rows(Path("i.csv"), ["review_id", "decision", "contact"], [
            (2, {"review_id": rid[2], "decision": "pair"}),
            (3, {"review_id": rid[0], "decision": "apart"}),
            (4, {"review_id": rid[0], "decision": "ignore"}),
        ], reviews)
    assert bad.value.problems == [
        "line 2: decision 'pair' is not one of ignore, reopen for a te_email_collision review",
        f"line 4: review {rid[0]} was already decided on line 3"]
    with pytest.raises(IdentityFileError, match="missing column"):
        check_identity_rows(Path("i.csv"), ["review_id"], [], reviews)


def test_standing_decisions_steer_the_matcher() -> None:
    g = ghl(("c1", "a@x.com"), ("c2", "a@x.com"), ("c3", "new@x.com"), ("c4", "d@x.com"), ("c5", "d@x.com"))
    t = te("a@x.com", "old@x.com", "new@x.com", "d@x.com")
    stored = id_map(("c3", "L1", "old@x.com", "email"))
    before = match_identities(g, t, stored)
    assert {"c1", "c2", "c3", "c4", "c5"} <= before.held_contact_ids
    rows = [{"review_id": "r1", "kind": "email_shared_by_several", "contact_ids": ["c1", "c2"], "email": "a@x.com",
             "old_email": None, "decision": "pair", "contact_id": "c1", "location_id": "L1", "note": None},
            {"review_id": "r2", "kind": "email_changed", "contact_ids": ["c3"], "email": "new@x.com",
             "old_email": "old@x.com", "decision": "apart", "contact_id": None, "location_id": None, "note": None},
            {"review_id": "r3", "kind": "email_shared_by_several", "contact_ids": ["c4", "c5"], "email": "d@x.com",
             "old_email": None, "decision": "apart", "contact_id": None, "location_id": None, "note": None}]
    effects = decided_effects(pl.DataFrame(rows, schema=DECIDED))
    assert effects.links.schema == ID_MAP and effects.broken == {"c3"} and effects.apart == {
        ("c4", "d@x.com"), ("c5", "d@x.com")}
    after = match_identities(g, t, with_decisions(stored, effects.links, effects.broken), apart=effects.apart)
    paired = dict(after.matched.select("contact_id", "email").iter_rows())
    assert paired["c1"] == "a@x.com" and paired["c3"] == "new@x.com"  # the manual link; matched by its new email
    assert after.held_contact_ids == {"c2", "c4", "c5"}  # the other duplicate; those kept apart
    assert [r["kind"] for r in after.review.iter_rows(named=True)] == ["email_shared_by_several"]  # c1+c2, decided
    assert "te:old@x.com" in set(after.unmatched_te["key"])  # the old email's customer stands alone


def test_identity_rows_carry_context_and_age_and_survive_the_guard() -> None:
    g = ghl(("c1", "a@x.com"), ("c2", "a@x.com")).with_columns(
        first_name=pl.Series(["Ann", '=HYPERLINK("http://evil.example/")']), last_name=pl.lit("Lee"),
        email_raw=pl.lit(" A@x.com"), phone_raw=pl.lit("07700 900006"))
    t = te("a@x.com").with_columns(email_raw=pl.lit("a@X.com"), first_name=pl.lit("Annie"), last_name=pl.lit(None),
                                   status=pl.lit("subscribed"))
    result = match_identities(g, t, id_map())
    rid = review_id("email_shared_by_several", ["c1", "c2"], "a@x.com", None)
    ages = pl.DataFrame({"item_id": [rid], "first_seen": [T0]}, schema=AGES)
    rows = identity_rows(result.review, g, t, ages, T0 + timedelta(days=3, hours=1))
    row = rows.row(0, named=True)
    assert (row["review_id"], row["name"], row["location_id"], row["nights_open"]) == (rid, "Ann Lee", "L1", 3)
    assert row["ghl_url"] == "https://app.gohighlevel.com/v2/location/L1/contacts/detail/c1"
    assert row["ghl"] == ('c1: Ann Lee,  A@x.com, 07700 900006 | c2: =HYPERLINK("http://evil.example/") Lee,  A@x.com, '
                          "07700 900006")
    assert row["tinyemail"] == "a@X.com, Annie, subscribed"
    assert unguarded(guarded(rows)).equals(rows) and not guarded(rows)["ghl"][0].startswith("=")
    assert nights(T0, T0 - timedelta(hours=1)) == 0
