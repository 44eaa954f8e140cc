"""Normalisation: emails, phones, birthdays, consent, record mapping, hashes and frames (pure, no server)."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contact_recon.model.normalise import normalise_birthday, normalise_email, normalise_phone, to_frame
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, GHL_TASKS, TINYEMAIL_CUSTOMERS
from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_note_record, ghl_task_record
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record

EMAIL_CASES = [
    # (case, raw, key, valid)
    ("plain", "bob@example.com", "bob@example.com", True),
    ("case and whitespace", "  Bob.Smith@Example.COM \t", "bob.smith@example.com", True),
    ("unicode domain to lower-cased U-label", "user@Bücher.example", "user@bücher.example", True),
    ("punycode domain meets its unicode spelling", "user@xn--bcher-kva.example", "user@bücher.example", True),
    ("internationalised local part lower-cased", "Ünï@bücher.de", "ünï@bücher.de", True),
    ("cyrillic domain upper-case", "IVAN@ПРИМЕР.РФ", "ivan@пример.рф", True),
    ("no dot in domain: invalid, kept lower-cased", "Bob@Localhost", "bob@localhost", False),
    ("double at: invalid, kept", "x@@example", "x@@example", False),
    ("no at sign: invalid, kept", " Kevin.Example.com ", "kevin.example.com", False),
    ("double dot: invalid, kept", "x@example..com", "x@example..com", False),
    ("special-use domain is not a real address", "a@foo.invalid", "a@foo.invalid", False),
]


@pytest.mark.parametrize(("case", "raw", "key", "valid"), EMAIL_CASES, ids=[c[0] for c in EMAIL_CASES])
def test_normalise_email(case: str, raw: str, key: str, valid: bool) -> None:
    value, ok, reason = normalise_email(raw)
    assert (value, ok) == (key, valid)
    assert (reason is None) == valid


@pytest.mark.parametrize(("raw", "reason"), [(None, "missing"), ("", "missing"), ("   ", "missing"),
                                             ({"a": 1}, "not a string"), (["x@y.com"], "not a string")])
def test_missing_email_is_none_and_flagged(raw: object, reason: str) -> None:
    assert normalise_email(raw) == (None, False, reason)


PHONE_CASES = [
    # (case, raw, region, country, value, valid)
    ("E.164 stays", "+14152007919", "US", None, "+14152007919", True),
    ("US national with punctuation", "(415) 200-7919", "US", None, "+14152007919", True),
    ("US dotted", "415.200.7919", "US", None, "+14152007919", True),
    ("US with trunk 1 and dashes", "1-415-200-7919", "US", None, "+14152007919", True),
    ("spaced international", "+1 415 200 7919", "US", None, "+14152007919", True),
    ("default region decides a national number", "020 7946 0018", "GB", None, "+442079460018", True),
    ("the record's country before the default region", "020 7946 0018", "US", "GB", "+442079460018", True),
    ("a country that fails falls back to the default region", "1-415-200-7919", "US", "GB", "+14152007919", True),
    ("00 international prefix read as +", "00442079460018", "US", None, "+442079460018", True),
    ("possible but unassigned number: E.164, flagged", "+44 7700 900001", "US", None, "+447700900001", False),
    ("not a phone number: kept trimmed, flagged", "  call me  ", "US", None, "call me", False),
    ("too short: kept, flagged", "12", "US", None, "12", False),
]


@pytest.mark.parametrize(("case", "raw", "region", "country", "value", "valid"), PHONE_CASES,
                         ids=[c[0] for c in PHONE_CASES])
def test_normalise_phone(case: str, raw: str, region: str, country: str | None, value: str, valid: bool) -> None:
    got, ok, reason = normalise_phone(raw, region, country)
    assert (got, ok) == (value, valid)
    assert (reason is None) == valid


def test_missing_phone() -> None:
    assert normalise_phone(None, "US") == (None, False, "missing")
    assert normalise_phone("  ", "US") == (None, False, "missing")


@pytest.mark.parametrize(("raw", "expected"), [
    (654220800000, "1990-09-25"),  # epoch ms, as GHL search answers give it
    ("1990-09-25T00:00:00.000Z", "1990-09-25"),  # ISO date-time
    ("1990-09-25", "1990-09-25"),
    ("1990/9/5", "1990-09-05"),  # documented YYYY/MM/DD
    ("09.25.1990", "1990-09-25"),  # documented MM.DD.YYYY
    ("25.09.1990", "25.09.1990"),  # not a documented form (month 25): kept as given
    ("sometime in May", "sometime in May"),
    (None, None), ("", None),
])
def test_normalise_birthday(raw: object, expected: str | None) -> None:
    assert normalise_birthday(raw) == expected


GHL_CONTACT = {
    "id": "c1", "locationId": "L1", "email": " Bob@Example.COM ", "firstName": " Bob ", "lastName": "Smith",
    "phone": "(415) 200-7919", "companyName": "Acme", "address": "1 Main St", "city": "Austin", "state": "TX",
    "country": "US", "postalCode": "73301", "dateOfBirth": 654220800000, "source": "form",
    "tags": ["vip", "lead", "vip", " "], "dnd": False, "dndSettings": {"Email": {"status": "inactive"}},
    "dateAdded": "2025-01-01T00:00:00.000Z", "dateUpdated": "2025-02-01T00:00:00.000Z", "searchAfter": [1, "c1"],
}


def test_ghl_contact_record_maps_every_canonical_column() -> None:
    row = ghl_contact_record(GHL_CONTACT, "L1", "US")
    assert list(row) == list(GHL_CONTACTS)
    assert row | {"raw": None, "content_hash": None} == {
        "contact_id": "c1", "location_id": "L1", "email": "bob@example.com", "first_name": "Bob",
        "last_name": "Smith", "phone": "+14152007919", "company": "Acme", "address1": "1 Main St",
        "city": "Austin", "state": "TX", "country": "US", "postal_code": "73301", "birthday": "1990-09-25",
        "source": "form", "tags": ["lead", "vip"], "consent": "subscribed", "email_raw": " Bob@Example.COM ",
        "email_valid": True, "phone_raw": "(415) 200-7919", "phone_valid": True,
        "date_added": "2025-01-01T00:00:00.000Z", "date_updated": "2025-02-01T00:00:00.000Z",
        "raw": None, "content_hash": None, "custom": None}
    assert row["raw"].startswith('{"address":"1 Main St","city":"Austin"')  # sorted keys, payload as given


@pytest.mark.parametrize(("dnd", "settings", "consent"), [
    (False, None, "subscribed"),  # nothing set
    (False, {"Email": {"status": "inactive"}}, "subscribed"),  # email DND switched off
    (False, {"Email": {"status": "active"}}, "dnd"),  # email DND on
    (False, {"Email": {"status": "permanent"}}, "dnd"),  # email DND permanent
    (True, {"Email": {"status": "inactive"}}, "dnd"),  # global DND wins
    (False, {"SMS": {"status": "active"}}, "subscribed"),  # another channel's DND is not email consent
])
def test_ghl_consent(dnd: bool, settings: dict | None, consent: str) -> None:
    payload = {"id": "c", "dnd": dnd} | ({"dndSettings": settings} if settings else {})
    assert ghl_contact_record(payload, "L1")["consent"] == consent


def test_tinyemail_customer_record() -> None:
    payload = {"email": "Ann@Example.com", "firstName": "Ann", "company": "Co", "province": "ON",
               "country": "CA", "phone": "416 555 0134", "status": "Unsubscribed",
               "unsubscribedAt": "2025-03-01T00:00:00Z", "tags": ["b", "a"], "birthday": "1985-01-02"}
    row = tinyemail_customer_record(payload, ["list-2", "list-1", "list-2"], "US")
    assert list(row) == list(TINYEMAIL_CUSTOMERS)
    assert (row["email"], row["state"], row["company"], row["consent"], row["status"]) == \
        ("ann@example.com", "ON", "Co", "unsubscribed", "Unsubscribed")
    assert (row["lists"], row["tags"], row["birthday"]) == (["list-1", "list-2"], ["a", "b"], "1985-01-02")


def test_missing_tinyemail_status_is_not_assumed_subscribed() -> None:
    assert tinyemail_customer_record({"email": "a@example.com"}, [])["consent"] is None


def test_content_hash_follows_canonical_fields_only() -> None:
    base = ghl_contact_record(GHL_CONTACT, "L1")
    # Same canonical values in other spellings, another dateUpdated, an extra API field: same hash.
    cosmetic = GHL_CONTACT | {"email": "bob@example.com", "phone": "+14152007919", "dateUpdated": "2026-01-01",
                              "tags": ["lead", "vip"], "unknownField": 1}
    assert ghl_contact_record(cosmetic, "L1")["content_hash"] == base["content_hash"]
    assert ghl_contact_record(GHL_CONTACT | {"city": "Dallas"}, "L1")["content_hash"] != base["content_hash"]
    assert len(base["content_hash"]) == 64
    # The payload's key order does not matter.
    assert ghl_contact_record({"id": "c", "email": "a@example.com"}, "L")["content_hash"] == \
        ghl_contact_record({"email": "a@example.com", "id": "c"}, "L")["content_hash"]


def test_task_and_note_records() -> None:
    task = ghl_task_record({"id": "t1", "contactId": "c1", "title": "Call", "completed": True,
                            "dueDate": "2026-01-01T00:00:00Z", "assignedTo": "u1"}, "L1")
    note = ghl_note_record({"id": "n1", "contactId": "c1", "body": "Hello", "userId": "u1"}, "L1")
    assert list(task) == list(GHL_TASKS) and list(note) == list(GHL_NOTES)
    assert (task["task_id"], task["completed"], note["note_id"], note["body"]) == ("t1", True, "n1", "Hello")


def test_to_frame_has_exactly_the_schema() -> None:
    rows = [ghl_contact_record(GHL_CONTACT | {"id": f"c{i}"}, "L1") for i in range(3)]
    frame = to_frame(rows, GHL_CONTACTS)
    assert frame.schema == GHL_CONTACTS and frame.height == 3
    assert to_frame([], TINYEMAIL_CUSTOMERS).schema == TINYEMAIL_CUSTOMERS
    assert frame["tags"].to_list()[0] == ["lead", "vip"]
    assert isinstance(frame, pl.DataFrame)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.emails(), st.none(), st.integers(), st.binary()))
def test_normalise_email_never_raises_and_is_idempotent(raw: object) -> None:
    value, valid, reason = normalise_email(raw)
    assert (reason is None) == valid
    if value is not None:
        assert normalise_email(value)[:2] == (value, valid)


@settings(max_examples=300, deadline=None)
@given(st.emails())
def test_valid_emails_stay_valid_whatever_their_case(raw: str) -> None:
    value, valid, _ = normalise_email(raw)
    assert valid
    assert normalise_email(raw.upper())[:2] == normalise_email(raw.lower())[:2]
    assert value == value.strip()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.from_regex(r"\+?[0-9 ().-]{0,20}", fullmatch=True), st.none()),
       st.sampled_from(["US", "GB", "DE", "ZZ"]))
def test_normalise_phone_never_raises_and_is_idempotent(raw: object, region: str) -> None:
    value, valid, reason = normalise_phone(raw, region)
    assert (reason is None) == valid
    if valid:
        assert value is not None and value.startswith("+")
        assert normalise_phone(value, region)[:2] == (value, True)


def test_a_planned_phone_matches_a_live_number_written_nationally_in_its_country():
    from contact_recon.model.normalise import phone_region
    from contact_recon.systems.writer import live_value

    assert phone_region("+447700900456") == "GB" and phone_region("+14155550100") == "US"
    assert phone_region("07700 900456") is None and phone_region(None) is None
    live = {"phone": "07700 900456", "phone_raw": "07700 900456"}  # read in the default region (US): no number
    assert live_value(live, "phone", "+447700900456") == "+447700900456"
    assert live_value(live, "phone", "+447700900999") == "07700 900456"  # another number: as it reads
    assert live_value({"city": "Paris"}, "city", "Paris") == "Paris"
