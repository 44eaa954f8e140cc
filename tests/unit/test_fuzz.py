"""Hypothesis fuzzing of what reads untrusted input: the fixture loader, the connectors' record parsers and the
normalisers.

- `contact_recon.sandbox.fixture`: any JSON document (and any bytes in a file) loads or raises `FixtureError` with a
  JSON path; documents are made by replacing one value anywhere in a valid fixture with arbitrary JSON, so the
  fuzzing reaches every level of the format, not just the top.
- `contact_recon.systems.{ghl,tinyemail}.models`: any JSON value gives a record or a pydantic `ValidationError`
  (which `http.parse` turns into `MalformedResponse`), never another exception; fields the pipeline uses keep
  their types.
- `contact_recon.model.normalise`: the email, phone, birthday and tag normalisers never raise on arbitrary text or
  values, and the row builders (`systems/*/mapping.py`) give rows that build a frame, whatever text sits in the
  fields.

`RECON_FUZZ_EXAMPLES` sets the examples per test (300 by default).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contact_recon.model.normalise import normalise_birthday, normalise_email, normalise_phone, normalise_tags, to_frame
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, GHL_TASKS, TINYEMAIL_CUSTOMERS
from contact_recon.sandbox.fixture import FixtureError, load_fixture, validate_fixture
from contact_recon.systems.errors import MalformedResponse
from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_note_record, ghl_task_record
from contact_recon.systems.ghl.models import Appointment, BulkTagsResult, Contact, Note, SearchPage, Task
from contact_recon.systems.http import parse, read_json
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record
from contact_recon.systems.tinyemail.models import ContactList, Customer

EXAMPLES = int(os.environ.get("RECON_FUZZ_EXAMPLES", "300"))  # raise it for a longer hunt
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)  # any Unicode text a store can hold (no lone surrogates)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=20)

VALID_FIXTURE = {
    "ghl": {
        "oauthClients": [{"client_id": "cid", "client_secret": "csecret"}],
        "tokens": [{"token": "t1", "locationId": "L1", "scopes": ["contacts.readonly"]}],
        "locations": {"L1": {
            "allowDuplicateContacts": False,
            "contacts": [{"id": "c1", "locationId": "L1", "firstName": "Ann", "email": "a@x.com", "phone": "555 0100",
                          "tags": ["a"], "dnd": False, "dndSettings": {"Email": {"status": "active"}},
                          "dateAdded": "2026-01-01T00:00:00Z", "dateOfBirth": 0},
                         {"id": "c2", "email": "b@x.com"}],
            "tasks": [{"id": "t1", "contactId": "c1", "title": "Call", "dueDate": "2026-11-30T10:00:00.000Z",
                       "completed": False}],
            "notes": [{"id": "n1", "contactId": "c1", "body": "hello", "dateAdded": "2026-11-01T00:00:00Z"}],
        }},
    },
    "tinyemail": {
        "apiKeys": ["k1"],
        "customers": [{"email": "b@x.com", "status": "Unsubscribed", "tags": ["t"], "firstName": "Bea"}],
        "lists": [{"id": "l1", "name": "News", "members": ["b@x.com"]}],
    },
}


def _containers(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) to a value inside `doc`, the document itself included."""
    paths = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += _containers(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            paths += _containers(value, (*path, index))
    return paths


PATHS = _containers(VALID_FIXTURE)


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> Any:
    """A valid fixture with one value (anywhere, the whole document included) replaced by arbitrary JSON, or a
    new key of arbitrary JSON added to one object."""
    doc = copy.deepcopy(VALID_FIXTURE)
    path = draw(st.sampled_from(PATHS))
    value = draw(JSON)
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent[path[-1]], dict) and draw(st.booleans()):
        parent[path[-1]][draw(TEXT)] = value  # an added (maybe unlisted, maybe listed) field
    else:
        parent[path[-1]] = value
    return doc


# ------------------------------------------------------------------------------------------ the fixture loader


def test_the_valid_fixture_loads() -> None:
    assert validate_fixture(copy.deepcopy(VALID_FIXTURE))["ghl"]["locations"]["L1"]["contacts"][1]["id"] == "c2"


@FUZZ
@given(mutated_fixtures())
def test_any_fixture_document_loads_or_names_its_path(doc: Any) -> None:
    try:
        out = validate_fixture(doc)
    except FixtureError as error:
        assert error.path == "$" or error.path.startswith(("ghl", "tinyemail")), error.path
        assert str(error).startswith(f"{error.path}: ")
        return
    assert isinstance(out["ghl"]["locations"], dict) and isinstance(out["tinyemail"]["customers"], list)


@FUZZ
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
@example(b"[" * 50_000 + b"]" * 50_000)  # deeper than the JSON parser's recursion limit
@example(b'{"ghl": {"locations": {"L1": {"contacts": [{"id": "\\ud800"}]}}}}')
@example("{\"ghl\": {}}".encode("utf-16"))
def test_any_fixture_file_loads_or_names_its_path(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("fixture") / "fixture.json"
    path.write_bytes(raw)
    try:
        load_fixture(path)
    except FixtureError as error:
        assert error.path == "$" or error.path.startswith(("ghl", "tinyemail"))


def test_a_missing_fixture_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match="cannot read") as caught:
        load_fixture(tmp_path / "nope.json")
    assert caught.value.path == "$"


# ------------------------------------------------------------------------------------------ record parsers

MODELS = [Contact, SearchPage, Task, Note, Appointment, BulkTagsResult, Customer, ContactList]
CONTACT_FIELDS = list(Contact.model_fields) + ["address", "dndSettings", "customField"]
CUSTOMER_FIELDS = list(Customer.model_fields) + ["lastPurchaseOrder"]


def shaped(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts over a model's own field names with arbitrary JSON values: reaches each field's validation."""
    return st.dictionaries(st.sampled_from(fields), JSON, max_size=8)


@FUZZ
@given(st.sampled_from(MODELS), JSON | shaped(CONTACT_FIELDS) | shaped(CUSTOMER_FIELDS))
@example(Contact, {"id": "c", "dateOfBirth": 1e300})
@example(Contact, {"id": "c", "dateOfBirth": float("nan")})
@example(Contact, {"id": "c", "dateOfBirth": -(10**30)})
@example(BulkTagsResult, {"responses": ["{not json", "[1]", "{\"type\": \"error\"}"]})
def test_a_record_parser_gives_a_record_or_a_validation_error(model: type[pydantic.BaseModel], data: Any) -> None:
    try:
        record = model.model_validate(data)
    except pydantic.ValidationError:
        return
    if isinstance(record, Contact):
        assert isinstance(record.id, str) and all(isinstance(t, str) for t in record.tags)
        assert record.dateOfBirth is None or isinstance(record.dateOfBirth, str)
    if isinstance(record, Customer):
        known = ("Subscribed", "Unsubscribed", "Bounced", "Inactive", "Spam")
        assert isinstance(record.email, str) and (record.status is None or isinstance(record.status, str))
        # a case variant of a known status is that status; anything else is kept as sent
        assert record.status in known or record.status is None or record.status.strip().lower() not in \
            {k.lower() for k in known}
        record.to_api()  # what a write would send


@FUZZ
@given(st.sampled_from(MODELS), JSON)
def test_through_the_connector_a_bad_record_is_a_malformed_response(model: type[pydantic.BaseModel],
                                                                    data: Any) -> None:
    body = json.dumps(data, allow_nan=True).encode()
    response = httpx.Response(200, content=body, request=httpx.Request("GET", "http://127.0.0.1/contacts/c1"))
    try:
        parse("ghl", response, model, read_json("ghl", response), "contact")
    except MalformedResponse as error:
        assert str(error).startswith("ghl GET /contacts/c1: ")


# ------------------------------------------------------------------------------------------ normalisers

ANYTHING = TEXT | st.text(max_size=300) | SCALARS | st.lists(SCALARS, max_size=3)
REGIONS = st.sampled_from(["US", "GB", "DE", "IN", "BR", "ZZ", "", "us", "001"]) | TEXT


@FUZZ
@given(ANYTHING)
@example("  ")
@example("a@b@c")
@example("x@" + "a" * 300 + ".com")
@example("ünï@bücher.example")
@example("user@xn--")
@example("\x00@\x00")
def test_the_email_normaliser_never_raises(raw: Any) -> None:
    key, valid, reason = normalise_email(raw)
    assert key is None or (isinstance(key, str) and key == key.strip() and key)
    assert isinstance(valid, bool) and (valid or isinstance(reason, str))


@FUZZ
@given(ANYTHING, REGIONS, st.none() | REGIONS)
@example("+1 (555) 0100 ext. 9", "US", None)
@example("0044 20 7946 0958", "US", "GB")
@example("+" + "9" * 400, "US", None)
@example("tel:+1-202-555-0173", "ZZ", "ZZ")
def test_the_phone_normaliser_never_raises(raw: Any, region: str, country: Any) -> None:
    value, valid, reason = normalise_phone(raw, region if region.upper() in ("US", "GB", "DE") else "US", country)
    assert value is None or isinstance(value, str)
    assert isinstance(valid, bool) and (valid or isinstance(reason, str))
    if valid:
        assert value is not None and value.startswith("+")


@FUZZ
@given(JSON)
@example(1e300)
@example(float("inf"))
@example(-(10**40))
@example("02/30/1990")
def test_birthdays_and_tags_never_raise(raw: Any) -> None:
    birthday = normalise_birthday(raw)
    assert birthday is None or isinstance(birthday, str)
    tags = normalise_tags(raw)
    assert tags == sorted(set(tags)) and all(isinstance(t, str) and t == t.strip() and t for t in tags)


@FUZZ
@given(st.dictionaries(st.sampled_from(CONTACT_FIELDS), TEXT | st.none() | st.lists(TEXT, max_size=3), max_size=10),
       st.dictionaries(st.sampled_from(CUSTOMER_FIELDS), TEXT | st.none() | st.lists(TEXT, max_size=3), max_size=10),
       st.dictionaries(st.sampled_from(["id", "contactId", "title", "body", "dueDate", "completed", "userId",
                                        "dateAdded", "assignedTo"]), TEXT | st.none() | st.booleans(), max_size=9))
def test_the_row_builders_turn_any_text_into_rows_that_build_frames(contact: dict[str, Any],
                                                                    customer: dict[str, Any],
                                                                    item: dict[str, Any]) -> None:
    frames = [to_frame([ghl_contact_record(contact, "L1")], GHL_CONTACTS),
              to_frame([tinyemail_customer_record(customer, ["l1"])], TINYEMAIL_CUSTOMERS),
              to_frame([ghl_task_record(item, "L1")], GHL_TASKS), to_frame([ghl_note_record(item, "L1")], GHL_NOTES)]
    assert [f.height for f in frames] == [1, 1, 1, 1]
    assert len(frames[0]["content_hash"][0]) == 64
