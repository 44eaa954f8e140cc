"""Identity matching: id_map first, then normalised email; ambiguous cases held back for review (pure polars)."""

from __future__ import annotations

import polars as pl
import pytest

from contact_recon.engine.identity import (
    ID_MAP,
    IdentityResult,
    SideCameBackEmpty,
    check_not_emptied,
    match_identities,
    merge_sides,
)
from contact_recon.model.normalise import to_frame
from contact_recon.model.records import GHL_CONTACTS, MERGE_SIDE, TINYEMAIL_CUSTOMERS
from contact_recon.systems.ghl.mapping import ghl_contact_record
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record


def ghl(*contacts: tuple[str, str | None] | tuple[str, str | None, str]) -> pl.DataFrame:
    """GHL contacts from (id, raw email[, location]) tuples."""
    rows = [ghl_contact_record({"id": c[0], "email": c[1], "firstName": f"G{c[0]}"}, c[2] if len(c) > 2 else "L1")
            for c in contacts]
    return to_frame(rows, GHL_CONTACTS)


def te(*emails: str) -> pl.DataFrame:
    rows = [tinyemail_customer_record({"email": e, "firstName": f"T{e}", "status": "Subscribed"}, ["list1"])
            for e in emails]
    return to_frame(rows, TINYEMAIL_CUSTOMERS)


def id_map(*pairs: tuple[str, str, str, str]) -> pl.DataFrame:
    """Stored pairings from (contact_id, location_id, email, matched_by) tuples."""
    return pl.DataFrame([dict(zip(ID_MAP, p, strict=True)) for p in pairs], schema=ID_MAP)


def pairs(result: IdentityResult) -> set[tuple[str, str, str]]:
    return set(result.matched.select("key", "email", "matched_by").iter_rows())


def review(result: IdentityResult) -> set[tuple[str, tuple[str, ...], str | None, str | None]]:
    return {(k, tuple(ids), e, o) for k, ids, e, o in result.review.select("kind", "contact_ids", "email",
                                                                              "old_email").iter_rows()}


def test_exact_email_match_after_normalisation() -> None:
    # Case: same person, GHL email with capitals and spaces -> paired by email, a new id_map row, a re-key.
    result = match_identities(ghl(("c1", "  Ann@Example.COM ")), te("ann@example.com"), id_map())
    assert pairs(result) == {("c1", "ann@example.com", "email")}
    assert result.new_id_map.to_dicts() == [{"contact_id": "c1", "location_id": "L1", "email": "ann@example.com",
                                             "matched_by": "email"}]
    assert result.rekeys.to_dicts() == [{"old_key": "te:ann@example.com", "new_key": "c1"}]
    assert result.review.is_empty() and result.unmatched_ghl.is_empty() and result.unmatched_te.is_empty()


def test_id_map_first_even_when_email_would_match_elsewhere() -> None:
    # Case: a manual pairing is honoured as stored and creates no new id_map row.
    result = match_identities(ghl(("c1", "ann@example.com")), te("ann@example.com"),
                              id_map(("c1", "L1", "ann@example.com", "manual")))
    assert pairs(result) == {("c1", "ann@example.com", "manual")}
    assert result.new_id_map.is_empty() and result.rekeys.is_empty()


def test_one_email_several_ghl_contacts_goes_to_review() -> None:
    # Case: two GHL contacts in one location share an email -> review, neither matched, customer held back.
    result = match_identities(ghl(("c1", "dup@example.com"), ("c2", "DUP@example.com")), te("dup@example.com"),
                              id_map())
    assert result.matched.is_empty() and result.new_id_map.is_empty()
    assert review(result) == {("email_shared_by_several", ("c1", "c2"), "dup@example.com", None)}
    assert result.held_contact_ids == {"c1", "c2"} and result.held_emails == {"dup@example.com"}
    assert result.unmatched_te.is_empty()  # the customer is not offered as TinyEmail-only either


def test_a_new_duplicate_of_a_paired_contact_is_reviewed_and_the_pairing_stands() -> None:
    # Case: c1 is paired; c2 appears with the same email -> c2 held for review, c1 stays paired.
    result = match_identities(ghl(("c1", "a@example.com"), ("c2", "a@example.com")), te("a@example.com"),
                              id_map(("c1", "L1", "a@example.com", "email")))
    assert pairs(result) == {("c1", "a@example.com", "email")}
    assert review(result) == {("email_shared_by_several", ("c1", "c2"), "a@example.com", None)}
    assert result.held_contact_ids == {"c2"} and result.held_emails == set()


def test_email_changed_is_reviewed_and_not_repointed() -> None:
    # Case: c1 was paired with old@, now has new@ (which TinyEmail also holds) -> review, no re-pointing.
    result = match_identities(ghl(("c1", "new@example.com")), te("old@example.com", "new@example.com"),
                              id_map(("c1", "L1", "old@example.com", "email")))
    assert result.matched.is_empty() and result.new_id_map.is_empty()
    assert review(result) == {("email_changed", ("c1",), "new@example.com", "old@example.com")}
    assert result.held_contact_ids == {"c1"}
    assert result.held_emails == {"old@example.com", "new@example.com"}
    assert result.unmatched_te.is_empty()


def test_email_removed_is_an_email_change() -> None:
    # Case: a paired contact whose email was deleted in GHL.
    stored = id_map(("c1", "L1", "old@example.com", "email"))
    result = match_identities(ghl(("c1", None)), te("old@example.com"), stored)
    assert review(result) == {("email_changed", ("c1",), None, "old@example.com")}
    assert result.unmatched_ghl.is_empty()


def test_old_email_of_a_changed_contact_is_not_taken_by_another() -> None:
    # Case: c1 moved from a@ to b@, and c2 now has a@ -> c2 is not silently paired with c1's old customer.
    result = match_identities(ghl(("c1", "b@example.com"), ("c2", "a@example.com")), te("a@example.com"),
                              id_map(("c1", "L1", "a@example.com", "email")))
    assert result.matched.is_empty()
    assert {r[0] for r in review(result)} == {"email_changed", "email_shared_by_several"}
    assert result.held_contact_ids == {"c1", "c2"}


def test_ghl_contact_without_email_is_kept_and_reported() -> None:
    # Case: no email -> unmatched 'no_email', still on the GHL merge side.
    g = ghl(("c1", None))
    result = match_identities(g, te(), id_map())
    assert result.unmatched_ghl.select("contact_id", "reason").rows() == [("c1", "no_email")]
    ghl_side, _ = merge_sides(result, g, te())
    assert ghl_side["key"].to_list() == ["c1"]


def test_unmatched_on_each_side() -> None:
    # Case: a GHL-only and a TinyEmail-only person: reported, keyed by contact id and te:<email>.
    g, t = ghl(("c1", "g@example.com")), te("t@example.com")
    result = match_identities(g, t, id_map())
    assert result.unmatched_ghl.select("contact_id", "reason").rows() == [("c1", "not_in_tinyemail")]
    assert result.unmatched_te.rows() == [("te:t@example.com", "t@example.com")]
    ghl_side, te_side = merge_sides(result, g, t)
    assert ghl_side["key"].to_list() == ["c1"] and te_side["key"].to_list() == ["te:t@example.com"]
    assert te_side["contact_id"].to_list() == [None]


def test_same_invalid_email_on_both_sides_pairs_up() -> None:
    # Case: the same bad address in both systems is the same person (flagged invalid, still matched).
    result = match_identities(ghl(("c1", "Ann@Localhost")), te("ann@localhost"), id_map())
    assert pairs(result) == {("c1", "ann@localhost", "email")}


def test_one_email_in_two_locations() -> None:
    # Case: the same email in two locations is a review by default, paired in each when sharing is allowed.
    g, t = ghl(("c1", "a@example.com", "L1"), ("c2", "a@example.com", "L2")), te("a@example.com")
    strict = match_identities(g, t, id_map())
    assert strict.matched.is_empty() and {r[0] for r in review(strict)} == {"email_shared_by_several"}
    shared = match_identities(g, t, id_map(), share_across_locations=True)
    assert pairs(shared) == {("c1", "a@example.com", "email"), ("c2", "a@example.com", "email")}


def test_contact_gone_from_a_covered_location_keeps_its_key() -> None:
    # Case: a paired contact deleted in GHL: the customer stays under the contact's key (the merge sees a deletion).
    t = te("a@example.com")
    result = match_identities(ghl(("c9", "z@example.com")), t, id_map(("c1", "L1", "a@example.com", "email")))
    row = result.matched.filter(pl.col("key") == "c1").to_dicts()
    assert row == [{"key": "c1", "contact_id": "c1", "location_id": "L1", "email": "a@example.com",
                    "matched_by": "email", "in_ghl": False, "in_te": True}]
    _, te_side = merge_sides(result, ghl(("c9", "z@example.com")), t)
    assert te_side["key"].to_list() == ["c1"]


def test_pairings_of_locations_not_covered_hold_their_emails_back() -> None:
    # Case: this run covers L1 only; L2's paired customer must not turn into a TinyEmail-only person.
    result = match_identities(ghl(("c1", "x@example.com")), te("a@example.com"),
                              id_map(("c2", "L2", "a@example.com", "email")), locations=["L1"])
    assert result.unmatched_te.is_empty() and result.held_emails == {"a@example.com"}
    assert "c2" not in set(result.matched["key"])


def test_tinyemail_customers_colliding_after_normalisation() -> None:
    # Case: TinyEmail holds Bob@ and bob@ as two customers -> review, the email and its GHL contact held back.
    g, t = ghl(("c1", "bob@example.com")), te("Bob@example.com", "bob@example.com")
    result = match_identities(g, t, id_map())
    assert {r[0] for r in review(result)} == {"te_email_collision"}
    assert result.matched.is_empty() and result.held_contact_ids == {"c1"}
    ghl_side, te_side = merge_sides(result, g, t)
    assert ghl_side.is_empty() and te_side.is_empty()


def test_merge_sides_shape_and_values() -> None:
    g, t = ghl(("c1", "a@example.com"), ("c2", None)), te("a@example.com", "b@example.com")
    ghl_side, te_side = merge_sides(match_identities(g, t, id_map()), g, t)
    assert ghl_side.schema == MERGE_SIDE and te_side.schema == MERGE_SIDE
    assert ghl_side.select("key", "first_name").rows() == [("c1", "Gc1"), ("c2", "Gc2")]
    assert te_side.select("key", "contact_id", "first_name").rows() == [
        ("c1", "c1", "Ta@example.com"), ("te:b@example.com", None, "Tb@example.com")]
    assert te_side["lists"].to_list() == [["list1"], ["list1"]] and ghl_side["lists"].to_list() == [None, None]


@pytest.mark.parametrize(("now", "base", "allow", "raises"), [
    (0, 10, False, True),  # a side came back empty while the base has records: named error
    (0, 10, True, False),  # explicit override
    (0, 0, False, False),  # first run, nothing known yet
    (3, 10, False, False),  # not empty: the merge engine's mass-delete guard decides
])
def test_check_not_emptied(now: int, base: int, allow: bool, raises: bool) -> None:
    if raises:
        with pytest.raises(SideCameBackEmpty) as info:
            check_not_emptied("tinyemail", now, base, allow_empty=allow)
        assert info.value.system == "tinyemail" and info.value.base_count == base
    else:
        check_not_emptied("tinyemail", now, base, allow_empty=allow)


def test_matching_a_generated_fixture_accounts_for_every_record() -> None:
    # Every GHL contact is matched, unmatched or held; every TinyEmail customer likewise.
    from contact_recon.sandbox.generate import generate_fixture

    fixture = generate_fixture(2000, seed=5, allow_duplicates=True, awkward=0.2)
    rows = [ghl_contact_record(c, loc) for loc, data in fixture["ghl"]["locations"].items() for c in data["contacts"]]
    g = to_frame(rows, GHL_CONTACTS)
    t = to_frame([tinyemail_customer_record(c, []) for c in fixture["tinyemail"]["customers"]], TINYEMAIL_CUSTOMERS)
    result = match_identities(g, t, id_map())
    ghl_ids = set(result.matched["contact_id"]) | set(result.unmatched_ghl["contact_id"]) | result.held_contact_ids
    assert ghl_ids == set(g["contact_id"])
    paired, te_only = set(result.matched.filter("in_te")["email"]), set(result.unmatched_te["email"])
    held = result.held_emails & set(t["email"])
    assert paired | te_only | held == set(t["email"])
    assert not (te_only & paired) and not (te_only & held)
    duplicates = set(fixture["_meta"]["awkward"]["ghl_duplicate"])
    assert duplicates and duplicates <= result.held_contact_ids
