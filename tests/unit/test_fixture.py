"""Fixture loading: the FORMAT.md shape is accepted exactly; what cannot load names its JSON path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from contact_recon.sandbox.fixture import FixtureError, load_fixture, validate_fixture

GOOD = {
    "ghl": {
        "oauthClients": [{"client_id": "cid", "client_secret": "csecret"}],
        "tokens": [{"token": "t1", "locationId": "L1", "scopes": ["contacts.readonly"]}],
        "locations": {"L1": {
            "allowDuplicateContacts": False,
            "contacts": [{"id": "c1", "firstName": "Ann", "email": "not-an-email", "phone": "555 0100",
                          "tags": ["a"], "dnd": False, "dndSettings": {"Email": {"status": "active"}},
                          "customField": {"kept": True}},
                         {"email": "b@example.com"}],
            "tasks": [{"id": "t1", "contactId": "c1", "title": "Call", "dueDate": "2026-11-30T10:00:00.000Z",
                       "completed": False}],
            "notes": [{"contactId": "c1", "body": "hello", "dateAdded": "2026-11-01T00:00:00Z"}],
        }},
    },
    "tinyemail": {
        "apiKeys": ["k1"],
        "customers": [{"email": "b@example.com", "status": "Unsubscribed", "tags": [], "extra": 1}],
        "lists": [{"id": "0b4f6e0e-0000-4000-8000-000000000001", "name": "Newsletter", "members": ["b@example.com"]}],
    },
    "_meta": {"note": "unlisted top-level keys are kept"},
}


def test_good_fixture_loads_with_bad_data_and_unlisted_fields_kept():
    data = validate_fixture(json.loads(json.dumps(GOOD)))
    contact = data["ghl"]["locations"]["L1"]["contacts"][0]
    assert contact["email"] == "not-an-email" and contact["customField"] == {"kept": True}
    assert data["tinyemail"]["customers"][0]["extra"] == 1
    assert data["_meta"] == GOOD["_meta"]


def test_missing_parts_become_empty():
    data = validate_fixture({})
    assert data["ghl"] == {"oauthClients": [], "tokens": [], "locations": {}}
    assert data["tinyemail"] == {"apiKeys": [], "customers": [], "lists": []}


def _broken(mutate) -> dict:
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d["ghl"]["locations"]["L1"]["tasks"][0].update(contactId="nope"), "ghl.locations.L1.tasks[0].contactId"),
    (lambda d: d["ghl"]["locations"]["L1"]["notes"][0].update(contactId="nope"), "ghl.locations.L1.notes[0].contactId"),
    (lambda d: d["ghl"]["locations"]["L1"]["contacts"][0].update(tags="a,b"), "ghl.locations.L1.contacts[0].tags"),
    (lambda d: d["ghl"]["locations"]["L1"]["contacts"][1].update(tags=["a", 3]),
     "ghl.locations.L1.contacts[1].tags[1]"),
    (lambda d: d["ghl"]["locations"]["L1"]["contacts"][0].update(dnd="yes"), "ghl.locations.L1.contacts[0].dnd"),
    (lambda d: d["ghl"]["locations"]["L1"]["contacts"][0].update(dateUpdated="yesterday"),
     "ghl.locations.L1.contacts[0].dateUpdated"),
    (lambda d: d["ghl"]["locations"]["L1"]["contacts"][1].update(id="c1"), "ghl.locations.L1.contacts[1].id"),
    (lambda d: d["ghl"]["locations"]["L1"]["contacts"][0].update(locationId="L2"),
     "ghl.locations.L1.contacts[0].locationId"),
    (lambda d: d["ghl"]["locations"]["L1"].update(allowDuplicateContacts="no"),
     "ghl.locations.L1.allowDuplicateContacts"),
    (lambda d: d["ghl"]["tokens"][0].pop("locationId"), "ghl.tokens[0].locationId"),
    (lambda d: d["ghl"].update(locations=[]), "ghl.locations"),
    (lambda d: d["tinyemail"]["customers"][0].update(status="Active"), "tinyemail.customers[0].status"),
    (lambda d: d["tinyemail"]["customers"][0].pop("email"), "tinyemail.customers[0].email"),
    (lambda d: d["tinyemail"]["lists"][0].update(members="b@example.com"), "tinyemail.lists[0].members"),
    (lambda d: d["tinyemail"].update(apiKeys=[1]), "tinyemail.apiKeys[0]"),
])
def test_unloadable_fixture_names_the_path(mutate, path):
    with pytest.raises(FixtureError) as info:
        validate_fixture(_broken(mutate))
    assert info.value.path == path
    assert str(info.value).startswith(path + ":")


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"ghl": {', encoding="utf-8")
    with pytest.raises(FixtureError, match=r"^\$: not JSON \(line 1"):
        load_fixture(bad)
    with pytest.raises(FixtureError, match="cannot read"):
        load_fixture(tmp_path / "missing.json")


def test_serve_refuses_a_bad_fixture_naming_the_path(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(_broken(lambda d: d["ghl"]["locations"]["L1"]["tasks"][0].update(contactId="x"))))
    proc = subprocess.run([sys.executable, "-m", "contact_recon.cli.main", "sandbox", "serve", "--fixture", str(path),
                           "--ghl-port", "0", "--tinyemail-port", "0"], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "ghl.locations.L1.tasks[0].contactId" in proc.stderr
