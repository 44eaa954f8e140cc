"""Functional tests of the GHL sandbox over real HTTP (uvicorn on 127.0.0.1, httpx), plus its pure hooks."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from contact_recon.sandbox.common import iso_from_epoch
from contact_recon.sandbox.ghl import create_app, is_write, rate_headers, rate_key_for
from contact_recon.sandbox.ghl_store import GHLStore
from contact_recon.sandbox.ratelimit import Decision
from contact_recon.sandbox.server import RunningServer
from tests.support.servers import FakeClock

LOC_A, LOC_B = "LocationAAAAAAAAAAA1", "LocationBBBBBBBBBBB2"
FULL_A, READ_A, FULL_B = "token-full-a", "token-read-a", "token-full-b"
SCOPES = ["contacts.readonly", "contacts.write", "locations/tasks.readonly"]
ADA, GRACE, ALAN, BEA = "AdaLovelace000000001", "GraceHopper000000002", "AlanTuring0000000003", "BeaLocationB00000004"
T1, T2, N1 = "TaskOne0000000000001", "TaskTwo0000000000002", "NoteOne0000000000001"
V = {"Version": "2021-07-28"}

FIXTURE: dict[str, Any] = {
    "oauthClients": [{"client_id": "client-1", "client_secret": "secret-1"}],
    "tokens": [
        {"token": FULL_A, "locationId": LOC_A, "scopes": SCOPES},
        {"token": READ_A, "locationId": LOC_A, "scopes": ["contacts.readonly"]},
        {"token": FULL_B, "locationId": LOC_B, "scopes": SCOPES},
    ],
    "locations": {
        LOC_A: {
            "allowDuplicateContacts": False,
            "contacts": [
                {"id": ADA, "firstName": "Ada", "lastName": "Lovelace", "email": "Ada@Example.com",
                 "phone": "+1 (415) 555-0101", "companyName": "Engines", "tags": ["vip"], "address1": "1 Road",
                 "dateOfBirth": "1815-12-10", "dateAdded": "2026-01-01T00:00:00.000Z",
                 "dateUpdated": "2026-01-01T00:00:00.000Z"},
                {"id": GRACE, "firstName": "Grace", "lastName": "Hopper", "email": "grace@example.com",
                 "phone": "+14155550102", "tags": ["newsletter"], "dateAdded": "2026-01-02T00:00:00.000Z",
                 "dateUpdated": "2026-03-01T00:00:00.000Z"},
                {"id": ALAN, "firstName": "Alan", "lastName": "Turing", "email": "alan@example.com",
                 "dateAdded": "2026-01-03T00:00:00.000Z", "dateUpdated": "2026-02-01T00:00:00.000Z"},
            ],
            "tasks": [
                {"id": T1, "contactId": ADA, "title": "Call Ada", "body": "engines", "completed": False,
                 "dueDate": "2026-05-01T10:00:00.000Z", "assignedTo": "User1"},
                {"id": T2, "contactId": GRACE, "title": "Mail Grace", "completed": True,
                 "dueDate": "2026-05-02T10:00:00.000Z"},
            ],
            "notes": [{"id": N1, "contactId": ADA, "body": "Met at the fair", "userId": "User1",
                       "dateAdded": "2026-01-05T00:00:00.000Z"}],
        },
        LOC_B: {
            "allowDuplicateContacts": True,
            "contacts": [{"id": BEA, "firstName": "Bea", "email": "bea@example.com"}],
        },
    },
}


@pytest.fixture
def start(serve: Callable[..., RunningServer], clock: FakeClock) -> Callable[..., str]:
    """Start a GHL sandbox on the fake clock and return its base URL."""

    def run(fixture: dict[str, Any] | None = None, rate_scale: float = 100.0) -> str:
        app = create_app(copy.deepcopy(fixture or FIXTURE), rate_scale=rate_scale, seed=3, clock=clock, search_lag_s=0)
        return serve(app).base_url

    return run


@pytest.fixture
def client_for(start: Callable[..., str]) -> Iterator[Callable[..., httpx.Client]]:
    base = start()
    clients: list[httpx.Client] = []

    def make(token: str | None = FULL_A, version: str | None = "2021-07-28") -> httpx.Client:
        headers = {"Version": version} if version else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        clients.append(httpx.Client(base_url=base, headers=headers, timeout=30))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def api(client_for: Callable[..., httpx.Client]) -> httpx.Client:
    return client_for()


def state(api: httpx.Client, location: str = LOC_A) -> dict[str, Any]:
    return api.get("/__sandbox/state").json()["locations"][location]


# --- contacts ---------------------------------------------------------------------------------------


def test_contact_crud(api: httpx.Client, clock: FakeClock) -> None:
    created = api.post("/contacts/", json={"locationId": LOC_A, "name": "Katherine Johnson",
                                           "email": "kj@example.com", "tags": ["a"], "dateOfBirth": "08/26/1918"})
    assert created.status_code == 201
    contact = created.json()["contact"]
    cid = contact["id"]
    assert len(cid) == 20 and cid.isalnum()
    assert (contact["firstName"], contact["lastName"], contact["locationId"]) == ("Katherine", "Johnson", LOC_A)
    assert contact["dateAdded"] == contact["dateUpdated"] == iso_from_epoch(clock())
    assert contact["dateOfBirth"] == "1918-08-26"
    clock.advance(5)
    updated = api.put(f"/contacts/{cid}", json={"city": "Hampton", "tags": ["b", "c"]})
    assert updated.status_code == 200 and updated.json()["succeded"] is True
    got = api.get(f"/contacts/{cid}").json()["contact"]
    assert (got["city"], got["tags"], got["dateUpdated"]) == ("Hampton", ["b", "c"], iso_from_epoch(clock()))
    assert got["emailLowerCase"] == "kj@example.com"
    deleted = api.delete(f"/contacts/{cid}")
    assert deleted.status_code == 200 and deleted.json() == {"succeded": True}
    missing = api.get(f"/contacts/{cid}")
    assert missing.status_code == 400
    assert missing.json() == {"statusCode": 400, "message": f"Contact with id {cid} not found"}


def test_delete_contact_removes_its_tasks_and_notes(api: httpx.Client) -> None:
    assert api.delete(f"/contacts/{ADA}").status_code == 200
    stored = state(api)
    assert [t["id"] for t in stored["tasks"]] == [T2] and stored["notes"] == []


def test_duplicate_email_or_phone_is_refused(api: httpx.Client) -> None:
    by_email = api.post("/contacts/", json={"locationId": LOC_A, "email": "  ADA@example.COM "})
    assert by_email.status_code == 400
    assert by_email.json() == {"statusCode": 400, "message": "This location does not allow duplicated contacts.",
                               "meta": {"contactId": ADA, "matchingField": "email"}}
    by_phone = api.post("/contacts/", json={"locationId": LOC_A, "email": "other@x.com", "phone": "14155550101"})
    assert by_phone.status_code == 400 and by_phone.json()["meta"] == {"contactId": ADA, "matchingField": "phone"}
    assert len(state(api)["contacts"]) == 3


def test_duplicates_allowed_where_location_allows(client_for: Callable[..., httpx.Client]) -> None:
    api_b = client_for(FULL_B)
    again = api_b.post("/contacts/", json={"locationId": LOC_B, "email": "bea@example.com"})
    assert again.status_code == 201 and again.json()["contact"]["id"] != BEA
    emails = [c.get("email") for c in state(api_b, LOC_B)["contacts"]]
    assert emails == ["bea@example.com", "bea@example.com"]


def test_body_validation_422(api: httpx.Client) -> None:
    unknown = api.post("/contacts/", json={"locationId": LOC_A, "nickname": "x"})
    assert unknown.status_code == 422
    assert unknown.json() == {"statusCode": 422, "message": ["property nickname should not exist"],
                              "error": "Unprocessable Entity"}
    missing = api.post("/contacts/", json={"email": "q@x.com"})
    assert missing.status_code == 422 and "locationId should not be empty" in missing.json()["message"]
    wrong = api.put(f"/contacts/{ADA}", json={"firstName": 5, "tags": "vip", "dnd": "yes"})
    assert sorted(wrong.json()["message"]) == ["dnd must be a boolean value", "firstName must be a string",
                                               "tags must be an array"]
    nested = api.put(f"/contacts/{ADA}", json={"dndSettings": {"Email": {"status": "active", "x": 1}}})
    assert nested.json()["message"] == ["dndSettings.Email.property x should not exist"]
    no_company = api.put(f"/contacts/{ADA}", json={"companyName": "X"})  # not in UpdateContactDto
    assert no_company.json()["message"] == ["property companyName should not exist"]
    assert api.get(f"/contacts/{ADA}").json()["contact"]["firstName"] == "Ada"


def test_deprecated_list_pages_oldest_first(api: httpx.Client) -> None:
    first = api.get("/contacts/", params={"locationId": LOC_A, "limit": 2}).json()
    assert [c["id"] for c in first["contacts"]] == [ADA, GRACE] and first["count"] == 3
    rest = api.get("/contacts/", params={"locationId": LOC_A, "startAfterId": first["meta"]["startAfterId"],
                                         "startAfter": first["meta"]["startAfter"]}).json()
    assert [c["id"] for c in rest["contacts"]] == [ALAN]
    assert api.get("/contacts/", params={"locationId": LOC_A, "limit": 101}).status_code == 422


def test_duplicate_lookup_get_and_post(api: httpx.Client) -> None:
    by_email = api.get("/contacts/search/duplicate", params={"locationId": LOC_A, "email": "ada@example.com"})
    assert by_email.json()["contact"]["id"] == ADA
    by_phone = api.post("/contacts/search/duplicate", json={"locationId": LOC_A, "number": "+14155550102"})
    assert by_phone.status_code == 200 and by_phone.json()["contact"]["id"] == GRACE
    none = api.get("/contacts/search/duplicate", params={"locationId": LOC_A, "email": "zz@example.com"})
    assert none.json() == {"contact": None}


# --- auth, version, location --------------------------------------------------------------------------


def test_version_header_required(client_for: Callable[..., httpx.Client]) -> None:
    missing = client_for(version=None).get(f"/contacts/{ADA}")
    assert missing.status_code == 400 and missing.json()["statusCode"] == 400
    assert client_for(version="2020-01-01").get(f"/contacts/{ADA}").status_code == 400
    assert client_for(version="v3").get(f"/contacts/{ADA}").json()["contact"]["id"] == ADA


def test_tokens_and_scopes(client_for: Callable[..., httpx.Client]) -> None:
    no_token = client_for(token=None).get(f"/contacts/{ADA}")
    assert no_token.status_code == 401
    assert no_token.json() == {"statusCode": 401, "message": "Invalid JWT", "error": "Unauthorized"}
    assert client_for(token="forged").get(f"/contacts/{ADA}").status_code == 401
    reader = client_for(READ_A)
    assert reader.get(f"/contacts/{ADA}").status_code == 200
    refused = reader.put(f"/contacts/{ADA}", json={"firstName": "Eve"})
    assert refused.status_code == 401
    assert refused.json()["message"] == "The token is not authorized for this scope."
    assert reader.post(f"/locations/{LOC_A}/tasks/search", json={}).status_code == 401
    assert client_for().get(f"/contacts/{ADA}").json()["contact"]["firstName"] == "Ada"


def test_other_location_is_403(api: httpx.Client) -> None:
    forbidden = {"statusCode": 403, "message": "The token does not have access to this location."}
    assert api.get(f"/contacts/{BEA}").status_code == 403
    assert api.get(f"/contacts/{BEA}").json() == forbidden
    assert api.post("/contacts/", json={"locationId": LOC_B, "email": "n@x.com"}).json() == forbidden
    assert api.post("/contacts/search", json={"locationId": LOC_B, "pageLimit": 5}).status_code == 403
    assert api.post(f"/locations/{LOC_B}/tasks/search", json={}).status_code == 403


def test_rate_limit_headers_and_429(start: Callable[..., str]) -> None:
    base = start(rate_scale=0.03)  # 3 requests per 10 s
    with httpx.Client(base_url=base, headers={**V, "Authorization": f"Bearer {FULL_A}"}) as c:
        answers = [c.get(f"/contacts/{ADA}") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["X-RateLimit-Max"] == "3" and answers[0].headers["X-RateLimit-Remaining"] == "2"
    assert answers[0].headers["X-RateLimit-Limit-Daily"] == "200000"
    assert answers[0].headers["X-RateLimit-Interval-Milliseconds"] == "10000"
    assert answers[2].headers["X-RateLimit-Daily-Remaining"] == "199997"
    assert answers[3].json() == {"statusCode": 429, "message": "Too many requests"}


# --- tags -----------------------------------------------------------------------------------------------


def test_tags_add_remove_bump_date_updated(api: httpx.Client, clock: FakeClock) -> None:
    clock.advance(60)
    added = api.post(f"/contacts/{ADA}/tags", json={"tags": ["hot", "vip"]})
    assert added.status_code == 201 and added.json() == {"tags": ["vip", "hot"]}
    assert api.get(f"/contacts/{ADA}").json()["contact"]["dateUpdated"] == iso_from_epoch(clock())
    clock.advance(60)
    api.post(f"/contacts/{ADA}/tags", json={"tags": ["hot"]})  # nothing new: no change
    assert api.get(f"/contacts/{ADA}").json()["contact"]["dateUpdated"] == iso_from_epoch(clock() - 60)
    removed = api.request("DELETE", f"/contacts/{ADA}/tags", json={"tags": ["vip"]})
    assert removed.status_code == 200 and removed.json() == {"tags": ["hot"]}
    assert api.get(f"/contacts/{ADA}").json()["contact"]["dateUpdated"] == iso_from_epoch(clock())
    clock.advance(60)
    api.put(f"/contacts/{ADA}", json={"dndSettings": {"Email": {"status": "active"}}})
    assert api.get(f"/contacts/{ADA}").json()["contact"]["dateUpdated"] == iso_from_epoch(clock())


def test_notes_and_tasks_do_not_touch_date_updated(api: httpx.Client, clock: FakeClock) -> None:
    clock.advance(60)
    api.post(f"/contacts/{ADA}/notes", json={"body": "hello"})
    api.put(f"/contacts/{ADA}/tasks/{T1}/completed", json={"completed": True})
    assert api.get(f"/contacts/{ADA}").json()["contact"]["dateUpdated"] == "2026-01-01T00:00:00.000Z"


def test_bulk_tags(api: httpx.Client) -> None:
    body = {"contacts": [ADA, GRACE, "NoSuchContact0000000", BEA], "tags": ["bulk"], "locationId": LOC_A}
    added = api.post("/contacts/bulk/tags/update/add", json=body)
    assert added.status_code == 201
    assert (added.json()["succeded"], added.json()["errorCount"]) == (True, 2)
    assert all(isinstance(r, str) for r in added.json()["responses"])
    tags = {c["id"]: c.get("tags") for c in state(api)["contacts"]}
    assert tags == {ADA: ["vip", "bulk"], GRACE: ["newsletter", "bulk"], ALAN: None}
    assert state(api, LOC_B)["contacts"][0].get("tags") is None
    removed = api.post("/contacts/bulk/tags/update/remove", json={**body, "contacts": [ADA, GRACE]})
    assert removed.status_code == 201 and removed.json()["errorCount"] == 0
    wipe = api.post("/contacts/bulk/tags/update/remove", json={**body, "contacts": [GRACE], "removeAllTags": True})
    assert wipe.status_code == 201
    assert {c["id"]: c.get("tags") for c in state(api)["contacts"]} == {ADA: ["vip"], GRACE: [], ALAN: None}
    assert api.post("/contacts/bulk/tags/update/swap", json=body).status_code == 400


# --- upsert ---------------------------------------------------------------------------------------------


def test_upsert_matches_email_then_phone_and_replaces_tags(api: httpx.Client) -> None:
    by_email = api.post("/contacts/upsert", json={"locationId": LOC_A, "email": " ada@EXAMPLE.com", "tags": ["x"]})
    assert by_email.status_code == 200
    assert (by_email.json()["new"], by_email.json()["contact"]["id"]) == (False, ADA)
    assert by_email.json()["contact"]["tags"] == ["x"] and len(by_email.json()["traceId"]) == 36
    by_phone = api.post("/contacts/upsert", json={"locationId": LOC_A, "phone": "+1 415-555-0102", "city": "NYC"})
    assert (by_phone.json()["new"], by_phone.json()["contact"]["id"]) == (False, GRACE)
    # email matches Ada, phone matches Grace: the first match (email) wins and Grace is untouched
    both = api.post("/contacts/upsert", json={"locationId": LOC_A, "email": "ada@example.com",
                                              "phone": "+14155550102", "lastName": "Byron"})
    assert both.json()["contact"]["id"] == ADA and both.json()["contact"]["lastName"] == "Byron"
    grace = api.get(f"/contacts/{GRACE}").json()["contact"]
    assert (grace["lastName"], grace["city"]) == ("Hopper", "NYC")
    fresh = api.post("/contacts/upsert", json={"locationId": LOC_A, "email": "new@example.com"})
    assert fresh.json()["new"] is True and len(state(api)["contacts"]) == 4


# --- tasks and notes ------------------------------------------------------------------------------------


def test_tasks_lifecycle(api: httpx.Client) -> None:
    assert [t["id"] for t in api.get(f"/contacts/{ADA}/tasks").json()["tasks"]] == [T1]
    created = api.post(f"/contacts/{ALAN}/tasks", json={"title": "Decode", "dueDate": "2026-06-01T00:00:00Z",
                                                         "completed": False, "assignedTo": "User2"})
    assert created.status_code == 201
    task = created.json()["task"]
    assert (task["contactId"], task["title"], task["completed"]) == (ALAN, "Decode", False)
    updated = api.put(f"/contacts/{ALAN}/tasks/{task['id']}", json={"body": "enigma"})
    assert updated.json()["task"]["body"] == "enigma" and updated.json()["task"]["title"] == "Decode"
    done = api.put(f"/contacts/{ALAN}/tasks/{task['id']}/completed", json={"completed": True})
    assert done.json()["task"]["completed"] is True
    assert api.get(f"/contacts/{ALAN}/tasks/{task['id']}").json()["task"]["completed"] is True
    assert api.post(f"/contacts/{ALAN}/tasks", json={"title": "x"}).status_code == 422
    assert api.delete(f"/contacts/{ALAN}/tasks/{task['id']}").json() == {"succeded": True}
    gone = api.get(f"/contacts/{ALAN}/tasks/{task['id']}")
    assert gone.status_code == 400 and gone.json()["message"] == f"Task with id {task['id']} not found"
    assert api.get(f"/contacts/{GRACE}/tasks/{T1}").status_code == 400  # T1 belongs to Ada


def test_notes_lifecycle(api: httpx.Client, clock: FakeClock) -> None:
    assert [n["body"] for n in api.get(f"/contacts/{ADA}/notes").json()["notes"]] == ["Met at the fair"]
    created = api.post(f"/contacts/{ADA}/notes", json={"body": "second", "userId": "User9"})
    note = created.json()["note"]
    assert created.status_code == 201 and note["dateAdded"] == iso_from_epoch(clock())
    assert api.put(f"/contacts/{ADA}/notes/{note['id']}", json={"body": "edited"}).json()["note"]["body"] == "edited"
    assert api.get(f"/contacts/{ADA}/notes/{note['id']}").json()["note"]["userId"] == "User9"
    assert api.delete(f"/contacts/{ADA}/notes/{note['id']}").json() == {"succeded": True}
    gone = api.get(f"/contacts/{ADA}/notes/{note['id']}")
    assert gone.json() == {"statusCode": 400, "message": f"Note with id {note['id']} not found"}


def test_task_search_by_contact_ids(api: httpx.Client) -> None:
    def search(body: dict[str, Any]) -> list[str]:
        response = api.post(f"/locations/{LOC_A}/tasks/search", json=body)
        assert response.status_code == 200
        return [t["id"] for t in response.json()["tasks"]]

    assert search({"contactId": [ADA, GRACE]}) == [T1, T2]
    assert search({"contactId": [GRACE]}) == [T2]
    assert search({"contactId": [ADA, GRACE], "completed": False}) == [T1]
    assert search({"limit": 1, "skip": 1}) == [T2]
    assert search({"contactId": [ALAN]}) == []
    assert api.post(f"/locations/{LOC_A}/tasks/search", json={"contactId": ADA}).status_code == 422


def test_appointments_empty(api: httpx.Client) -> None:
    assert api.get(f"/contacts/{ADA}/appointments").json() == {"events": []}


# --- search ---------------------------------------------------------------------------------------------


def search(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/contacts/search", json={"locationId": LOC_A, **body})


def test_search_shape_and_query(api: httpx.Client) -> None:
    body = search(api, pageLimit=10, query="engines").json()
    assert body["total"] == 1 and len(body["traceId"]) == 36
    ada = body["contacts"][0]
    assert (ada["id"], ada["address"], "address1" in ada) == (ADA, "1 Road", False)
    assert ada["dateOfBirth"] == -4861728000000  # 1815-12-10 in epoch ms
    assert ada["searchAfter"] == [1767225600000, ADA]  # default sort: dateAdded desc
    assert [c["id"] for c in search(api, pageLimit=10, query="415555").json()["contacts"]] == [GRACE, ADA]


def test_search_limits(api: httpx.Client) -> None:
    assert search(api, pageLimit=501).status_code == 422
    assert search(api, pageLimit=501).json()["message"] == ["pageLimit must not be greater than 500"]
    assert search(api).status_code == 422
    assert api.post("/contacts/search", json={"pageLimit": 5}).status_code == 422
    assert search(api, pageLimit=500, page=20).status_code == 200
    too_far = search(api, pageLimit=500, page=21)
    assert too_far.status_code == 400 and "searchAfter" in too_far.json()["message"]
    assert search(api, pageLimit=5, filters=[{"field": "email", "operator": "like", "value": "x"}]).status_code == 422
    assert search(api, pageLimit=5, searchAfter=["x"]).status_code == 422


def test_search_date_updated_range_and_sort(api: httpx.Client) -> None:
    window = {"gte": "2026-01-15T00:00:00.000Z", "lte": "2026-03-01T00:00:00.000Z"}
    flt = [{"field": "dateUpdated", "operator": "range", "value": window}]
    desc = search(api, pageLimit=10, filters=flt, sort=[{"field": "dateUpdated", "direction": "desc"}]).json()
    assert [c["id"] for c in desc["contacts"]] == [GRACE, ALAN] and desc["total"] == 2
    asc = search(api, pageLimit=10, filters=flt, sort=[{"field": "dateUpdated", "direction": "asc"}]).json()
    assert [c["id"] for c in asc["contacts"]] == [ALAN, GRACE]
    strict = [{"field": "dateUpdated", "operator": "range", "value": {"gt": "2026-02-01T00:00:00.000Z"}}]
    assert [c["id"] for c in search(api, pageLimit=10, filters=strict).json()["contacts"]] == [GRACE]


def test_search_operators(api: httpx.Client) -> None:
    def ids(*filters: dict[str, Any]) -> set[str]:
        return {c["id"] for c in search(api, pageLimit=10, filters=list(filters)).json()["contacts"]}

    assert ids({"field": "tags", "operator": "eq", "value": "vip"}) == {ADA}
    assert ids({"field": "email", "operator": "not_eq", "value": "ada@example.com"}) == {GRACE, ALAN}
    assert ids({"field": "lastName", "operator": "contains", "value": "ur"}) == {ALAN}
    assert ids({"field": "firstName", "operator": "not_contains", "value": "a"}) == set()
    assert ids({"field": "phone", "operator": "exists"}) == {ADA, GRACE}
    assert ids({"field": "phone", "operator": "not_exists"}) == {ALAN}
    group = {"group": "OR", "filters": [{"field": "firstName", "operator": "eq", "value": "alan"},
                                        {"field": "tags", "operator": "eq", "value": "newsletter"}]}
    assert ids(group) == {GRACE, ALAN}


def _big_fixture(n: int) -> tuple[dict[str, Any], list[str]]:
    """A location of `n` contacts whose dateUpdated values repeat in pairs (ties broken by id)."""
    base = 1_750_000_000
    contacts = [
        {"id": f"Big{i:017d}", "email": f"p{i}@example.com",
         "dateAdded": iso_from_epoch(base), "dateUpdated": iso_from_epoch(base + (n - i) // 2)}
        for i in range(n)
    ]
    expected = [c["id"] for c in sorted(contacts, key=lambda c: (c["dateUpdated"], c["id"]))]
    fixture = copy.deepcopy(FIXTURE)
    fixture["locations"][LOC_A]["contacts"] = contacts
    fixture["locations"][LOC_A]["tasks"], fixture["locations"][LOC_A]["notes"] = [], []
    return fixture, expected


def test_search_after_walks_12000_contacts_once_in_order(start: Callable[..., str]) -> None:
    fixture, expected = _big_fixture(12_000)
    sort = [{"field": "dateUpdated", "direction": "asc"}]
    seen: list[str] = []
    with httpx.Client(base_url=start(fixture), headers={**V, "Authorization": f"Bearer {FULL_A}"}, timeout=30) as c:
        assert search(c, pageLimit=500, page=21, sort=sort).status_code == 400
        after: list[Any] | None = None
        while True:
            body = {"pageLimit": 500, "sort": sort} | ({"searchAfter": after} if after else {})
            page = search(c, **body).json()
            assert page["total"] == 12_000
            if not page["contacts"]:
                break
            seen += [x["id"] for x in page["contacts"]]
            after = page["contacts"][-1]["searchAfter"]
    assert seen == expected and len(set(seen)) == 12_000


# --- OAuth ----------------------------------------------------------------------------------------------


def test_oauth_code_refresh_rotation(client_for: Callable[..., httpx.Client], clock: FakeClock) -> None:
    anon = client_for(token=None, version=None)
    code = anon.post("/__sandbox/oauth/code", json={"client_id": "client-1", "locationId": LOC_A,
                                                    "scopes": ["contacts.readonly"]})
    assert code.status_code == 201
    form = {"client_id": "client-1", "client_secret": "secret-1"}
    issued = anon.post("/oauth/token", data=form | {"grant_type": "authorization_code", "code": code.json()["code"]})
    assert issued.status_code == 200
    first = issued.json()
    assert (first["expires_in"], first["token_type"], first["locationId"], first["scope"]) == (
        86399, "Bearer", LOC_A, "contacts.readonly")
    reused_code = anon.post("/oauth/token", data=form | {"grant_type": "authorization_code",
                                                         "code": code.json()["code"]})
    assert reused_code.status_code == 400
    assert client_for(first["access_token"]).get(f"/contacts/{ADA}").status_code == 200
    assert client_for(first["access_token"]).put(f"/contacts/{ADA}", json={"city": "x"}).status_code == 401
    refreshed = anon.post("/oauth/token", data=form | {"grant_type": "refresh_token",
                                                       "refresh_token": first["refresh_token"]})
    second = refreshed.json()
    assert refreshed.status_code == 200 and second["refresh_token"] != first["refresh_token"]
    old = anon.post("/oauth/token", data=form | {"grant_type": "refresh_token",
                                                 "refresh_token": first["refresh_token"]})
    assert old.status_code == 400 and old.json()["error"] == "invalid_grant"
    assert client_for(second["access_token"]).get(f"/contacts/{ADA}").json()["contact"]["id"] == ADA
    bad_secret = anon.post("/oauth/token", data={**form, "client_secret": "nope", "grant_type": "refresh_token",
                                                 "refresh_token": second["refresh_token"]})
    assert bad_secret.status_code == 401
    clock.advance(86_399)
    assert client_for(second["access_token"]).get(f"/contacts/{ADA}").status_code == 401


def test_oauth_form_validation(client_for: Callable[..., httpx.Client]) -> None:
    anon = client_for(token=None, version=None)
    missing = anon.post("/oauth/token", data={"client_id": "client-1", "grant_type": "refresh_token"})
    assert missing.status_code == 422 and "client_secret should not be empty" in missing.json()["message"]
    bad_grant = anon.post("/oauth/token", data={"client_id": "c", "client_secret": "s", "grant_type": "password"})
    assert bad_grant.status_code == 422
    unknown_client = anon.post("/__sandbox/oauth/code", json={"client_id": "nope", "locationId": LOC_A, "scopes": []})
    assert unknown_client.status_code == 400


# --- state and pure hooks -------------------------------------------------------------------------------


def test_state_round_trip_and_reset(api: httpx.Client) -> None:
    api.post("/contacts/", json={"locationId": LOC_A, "email": "temp@example.com"})
    exported = api.get("/__sandbox/state").json()
    assert len(exported["locations"][LOC_A]["contacts"]) == 4
    assert GHLStore(exported).to_fixture() == exported
    api.post("/__sandbox/reset")
    assert [c["id"] for c in state(api)["contacts"]] == [ADA, GRACE, ALAN]
    assert state(api, LOC_B)["contacts"][0]["locationId"] == LOC_B  # filled in at load


def test_store_generates_reproducible_ids() -> None:
    fixture = {"locations": {"L": {"contacts": [{"email": "a@x.com"}], "tasks": [], "notes": []}}}
    ids = [GHLStore(copy.deepcopy(fixture), seed=9).to_fixture()["locations"]["L"]["contacts"][0]["id"]
           for _ in range(2)]
    assert ids[0] == ids[1] and len(ids[0]) == 20
    other = GHLStore(copy.deepcopy(fixture), seed=10).to_fixture()["locations"]["L"]["contacts"][0]["id"]
    assert other != ids[0]


def test_store_rejects_task_of_unknown_contact() -> None:
    bad = {"locations": {"X": {"contacts": [], "tasks": [{"contactId": "nobody"}], "notes": []}}}
    with pytest.raises(ValueError, match=r"ghl\.locations\.X\.tasks\[0\]\.contactId"):
        GHLStore(bad)


def test_is_write() -> None:
    assert is_write("POST", "/contacts/") and is_write("PUT", "/contacts/abc") and is_write("DELETE", "/contacts/a")
    assert is_write("POST", "/contacts/bulk/tags/update/add") and is_write("POST", "/oauth/token")
    assert not is_write("POST", "/contacts/search") and not is_write("POST", "/locations/L/tasks/search")
    assert not is_write("POST", "/contacts/search/duplicate") and not is_write("GET", "/contacts/abc")


def test_rate_key_and_headers() -> None:
    key = rate_key_for(GHLStore(copy.deepcopy(FIXTURE)))

    def req(auth: str | None) -> Any:
        from starlette.requests import Request

        headers = [(b"authorization", auth.encode())] if auth else []
        return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})

    assert key(req(f"Bearer {FULL_A}")) == f"{LOC_A}:{hashlib.sha256(FULL_A.encode()).hexdigest()[:16]}"
    assert key(req("Bearer unknown")) is None and key(req(None)) is None
    decision = Decision(True, 100, 99, 10_000, 200_000, 199_999, 0)
    assert rate_headers(decision) == {
        "X-RateLimit-Limit-Daily": "200000", "X-RateLimit-Daily-Remaining": "199999",
        "X-RateLimit-Interval-Milliseconds": "10000", "X-RateLimit-Max": "100", "X-RateLimit-Remaining": "99",
    }
