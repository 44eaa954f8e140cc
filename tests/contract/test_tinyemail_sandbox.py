"""The TinyEmail sandbox against CONTRACT.md, over real HTTP on 127.0.0.1.

Every answer is checked against the shared JSON Schemas of `contact_recon.systems.tinyemail.contract` and against
exact values. The fixture goes through the lead's `validate_fixture` first, as the served one does.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from starlette.requests import Request

from contact_recon.sandbox.common import iso_from_epoch
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.sandbox.tinyemail import create_app, rate_key
from contact_recon.sandbox.tinyemail_store import TinyEmailStore, check_member, merge_customer
from contact_recon.systems.tinyemail.contract import SCHEMAS, email_key

KEY, KEY2 = "te-key-primary-0001", "te-key-second-0002"
NEWSLETTER, VIP = "6f1c1a52-9d8e-4c1b-8f0e-1d2a3b4c5d6e", "0b7e6f5d-4c3b-4a29-8f17-e6d5c4b3a291"
MEMBERS = [f"m{i:03d}@example.com" for i in range(250)]
ADA = {"email": "Ada@Example.com", "firstName": "Ada", "lastName": "Lovelace", "phone": "+44 20 7946 0000",
       "company": "Analytical Engines", "status": "Subscribed", "tags": ["vip", "uk"],
       "lastPurchasePrice": 12.5, "loyaltyTier": "gold"}
BOB = {"email": "bob@example.com", "firstName": "Bob", "status": "Unsubscribed",
       "unsubscribedAt": "2026-01-02T03:04:05.000Z", "tags": []}


def fixture_part() -> dict[str, Any]:
    members = [{"email": e, "firstName": f"M{i}", "status": "Subscribed", "tags": []}
               for i, e in enumerate(MEMBERS)]
    data = {"tinyemail": {
        "apiKeys": [KEY, KEY2],
        "customers": [dict(ADA), dict(BOB), *members],
        "lists": [{"id": NEWSLETTER, "name": "Newsletter", "members": list(MEMBERS)},
                  {"id": VIP, "name": "VIP", "members": ["Ada@Example.com"]}],
    }}
    return validate_fixture(data)["tinyemail"]


def valid(response: httpx.Response, status: int, schema: str) -> Any:
    """The answer's JSON after checking its status and its shape against the shared schema."""
    assert response.status_code == status, response.text
    body = response.json()
    jsonschema.validate(body, SCHEMAS[schema])
    return body


def error(response: httpx.Response, status: int) -> str:
    return valid(response, status, "error")["message"]


@pytest.fixture
def start(serve, clock) -> Callable[..., RunningServer]:
    def start_app(**options: Any) -> RunningServer:
        options.setdefault("rate_scale", 100.0)
        return serve(create_app(fixture_part(), clock=clock, **options))
    return start_app


@pytest.fixture
def server(start) -> RunningServer:
    return start()


@pytest.fixture
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + "/v1", headers={"X-API-KEY": KEY}) as client:
        yield client


@pytest.fixture
def anon(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + "/v1") as client:
        yield client


def customer(api: httpx.Client, email: str) -> dict[str, Any]:
    return valid(api.get(f"/account/customer/{email}"), 200, "customer")


def upsert(api: httpx.Client, members: list[Any]) -> httpx.Response:
    return api.put("/account/customer", json={"updateMembers": members})


def page_of(api: httpx.Client, list_id: str, **params: int) -> dict[str, Any]:
    return valid(api.get(f"/contacts/{list_id}/members", params=params), 200, "customer_page")


def member_emails(api: httpx.Client, list_id: str, **params: int) -> list[str]:
    return [c["email"] for c in page_of(api, list_id, **params)["members"]["content"]]


def lists(api: httpx.Client) -> list[dict[str, Any]]:
    return valid(api.get("/contacts"), 200, "lists")["contacts"]


# --- auth ----------------------------------------------------------------------------------------

def test_api_key_and_bearer_token_are_both_accepted(anon):
    path = "/account/customer/bob@example.com"
    by_key = valid(anon.get(path, headers={"X-API-KEY": KEY2}), 200, "customer")
    by_bearer = valid(anon.get(path, headers={"Authorization": f"Bearer {KEY}"}), 200, "customer")
    assert by_key == by_bearer == BOB


@pytest.mark.parametrize("headers", [
    {},
    {"X-API-KEY": "not-a-key"},
    {"X-API-KEY": ""},
    {"Authorization": "Bearer not-a-key"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": KEY},
    {"X-API-KEY": "not-a-key", "Authorization": f"Bearer {KEY}"},  # the key header decides
])
def test_missing_or_wrong_credentials_get_401(anon, headers):
    paths = ("/account/customer/bob@example.com", "/contacts", f"/contacts/{NEWSLETTER}/members",
             "/audiences")
    for path in paths:
        response = anon.get(path, headers=headers)
        assert error(response, 401) == "API key is missing or invalid"
    assert error(anon.put("/account/customer", json={"updateMembers": []}, headers=headers), 401)


def test_a_rejected_write_changes_nothing(anon, api):
    response = anon.put("/account/customer", json={"updateMembers": [{"email": "new@example.com"}]},
                        headers={"X-API-KEY": "wrong"})
    assert response.status_code == 401
    assert error(api.get("/account/customer/new@example.com"), 404) == "Customer not found"


# --- customers -----------------------------------------------------------------------------------

def test_customer_is_served_as_stored_with_unknown_fields_kept(api):
    assert customer(api, "Ada@Example.com") == ADA
    assert customer(api, "bob@example.com")["unsubscribedAt"] == "2026-01-02T03:04:05.000Z"


def test_email_in_path_is_matched_trimmed_and_case_insensitively(api):
    assert customer(api, "ada@example.com")["email"] == "Ada@Example.com"
    assert customer(api, "%20ADA@EXAMPLE.COM%20")["firstName"] == "Ada"


def test_plus_in_email_path_is_kept(api):
    assert upsert(api, [{"email": "ann+news@example.com"}]).status_code == 200
    assert customer(api, "ann%2Bnews@example.com")["email"] == "ann+news@example.com"
    assert customer(api, "ann+news@example.com")["email"] == "ann+news@example.com"
    assert api.get("/account/customer/ann news@example.com").status_code == 404


def test_unknown_customer_is_404_with_message(api):
    assert error(api.get("/account/customer/nobody@example.com"), 404) == "Customer not found"


def test_upsert_counts_created_and_updated_members(api):
    answer = valid(upsert(api, [{"email": "ADA@example.com ", "firstName": "Augusta"},
                                {"email": "carol@example.com", "firstName": "Carol"},
                                {"email": "m001@example.com"}]), 200, "upsert_answer")
    assert answer == {"numberOfCreatedMembers": 1, "numberOfUpdatedMembers": 2}
    assert customer(api, "carol@example.com") == {"email": "carol@example.com", "firstName": "Carol",
                                                  "status": "Subscribed", "tags": []}
    assert customer(api, "ada@example.com")["firstName"] == "Augusta"


def test_same_email_twice_in_a_batch_is_created_then_updated(api):
    answer = valid(upsert(api, [{"email": "dup@example.com", "firstName": "One"},
                                {"email": "DUP@example.com", "lastName": "Two"}]), 200, "upsert_answer")
    assert answer == {"numberOfCreatedMembers": 1, "numberOfUpdatedMembers": 1}
    assert customer(api, "dup@example.com") == {"email": "dup@example.com", "firstName": "One",
                                                "lastName": "Two", "status": "Subscribed", "tags": []}


def test_omitted_fields_are_left_unchanged_and_identity_email_kept(api):
    assert upsert(api, [{"email": "ada@EXAMPLE.com", "company": "Babbage & Co"}]).status_code == 200
    assert customer(api, "ada@example.com") == {**ADA, "company": "Babbage & Co"}


def test_tags_given_replace_the_whole_array(api):
    assert upsert(api, [{"email": "ada@example.com", "tags": ["newsletter"]}]).status_code == 200
    assert customer(api, "ada@example.com")["tags"] == ["newsletter"]
    assert upsert(api, [{"email": "ada@example.com", "tags": []}]).status_code == 200
    assert customer(api, "ada@example.com")["tags"] == []


def test_null_clears_a_field(api):
    assert upsert(api, [{"email": "ada@example.com", "phone": None}]).status_code == 200
    got = customer(api, "ada@example.com")
    assert "phone" not in got and got["lastName"] == "Lovelace"


def test_read_only_fields_sent_back_are_ignored(api):
    as_read = customer(api, "ada@example.com")
    sent = {k: v for k, v in as_read.items() if k != "loyaltyTier"}
    sent.update({"lastPurchasePrice": 99.0, "unsubscribedAt": "2020-01-01T00:00:00.000Z", "city": "London"})
    answer = valid(upsert(api, [sent]), 200, "upsert_answer")
    assert answer == {"numberOfCreatedMembers": 0, "numberOfUpdatedMembers": 1}
    assert customer(api, "ada@example.com") == {**ADA, "city": "London"}


def test_500_members_are_accepted_and_501_rejected(api, server):
    batch = [{"email": f"bulk{i:04d}@example.com", "tags": ["bulk"]} for i in range(501)]
    message = error(upsert(api, batch), 400)
    assert "501" in message and "500" in message
    assert api.get("/account/customer/bulk0000@example.com").status_code == 404
    answer = valid(upsert(api, batch[:500]), 200, "upsert_answer")
    assert answer == {"numberOfCreatedMembers": 500, "numberOfUpdatedMembers": 0}
    assert customer(api, "bulk0499@example.com")["tags"] == ["bulk"]
    state = httpx.get(server.base_url + "/__sandbox/state").json()
    assert len(state["customers"]) == 2 + 250 + 500


@pytest.mark.parametrize(("member", "named"), [
    ({"firstName": "No email"}, "updateMembers[1].email"),
    ({"email": ""}, "updateMembers[1].email"),
    ({"email": 42}, "updateMembers[1].email"),
    ({"email": "not-an-email"}, "updateMembers[1].email"),
    ({"email": "x@example.com", "status": "Active"}, "updateMembers[1].status"),
    ({"email": "x@example.com", "status": "subscribed"}, "updateMembers[1].status"),
    ({"email": "x@example.com", "tags": "vip"}, "updateMembers[1].tags"),
    ({"email": "x@example.com", "tags": ["vip", 3]}, "updateMembers[1].tags"),
    ({"email": "x@example.com", "firstName": 7}, "updateMembers[1].firstName"),
    ({"email": "x@example.com", "firstname": "typo"}, "updateMembers[1].firstname"),
    ("x@example.com", "updateMembers[1]"),
])
def test_invalid_member_is_400_naming_it_and_nothing_is_written(api, member, named):
    message = error(upsert(api, [{"email": "first@example.com"}, member]), 400)
    assert message.startswith(named)
    assert api.get("/account/customer/first@example.com").status_code == 404


@pytest.mark.parametrize(("body", "expected"), [
    (b"{not json", "Malformed JSON body"),
    (b"", "Request body must be a JSON object"),
    (b"[]", "Request body must be a JSON object"),
    (b"{}", "updateMembers is required"),
    (b'{"updateMembers": {}}', "updateMembers must be an array of customers"),
    (b'{"updateMembers": [], "extra": 1}', "extra is not a known field"),
])
def test_broken_upsert_bodies_are_400(api, body, expected):
    response = api.put("/account/customer", content=body, headers={"Content-Type": "application/json"})
    assert error(response, 400) == expected


def test_valid_statuses_are_accepted(api):
    for status in ("Subscribed", "Unsubscribed", "Bounced", "Inactive", "Spam"):
        assert upsert(api, [{"email": "s@example.com", "status": status}]).status_code == 200
        assert customer(api, "s@example.com")["status"] == status


def test_unsubscribing_stamps_unsubscribed_at_from_the_clock(api, clock):
    assert upsert(api, [{"email": "ada@example.com", "status": "Unsubscribed"}]).status_code == 200
    stamped = iso_from_epoch(clock())
    assert stamped.endswith("Z") and len(stamped) == len("2026-11-26T22:59:48.123Z")
    assert customer(api, "ada@example.com")["unsubscribedAt"] == stamped
    clock.advance(3600)
    assert upsert(api, [{"email": "ada@example.com", "status": "Unsubscribed"}]).status_code == 200
    assert customer(api, "ada@example.com")["unsubscribedAt"] == stamped  # a repeat keeps the first date
    assert upsert(api, [{"email": "ada@example.com", "status": "Subscribed"}]).status_code == 200
    again = customer(api, "ada@example.com")
    assert again["status"] == "Subscribed" and "unsubscribedAt" not in again


def test_new_unsubscribed_customer_and_resubscribed_fixture_customer(api, clock):
    assert upsert(api, [{"email": "gone@example.com", "status": "Unsubscribed"},
                        {"email": "bob@example.com", "status": "Bounced"}]).status_code == 200
    assert customer(api, "gone@example.com")["unsubscribedAt"] == iso_from_epoch(clock())
    assert customer(api, "bob@example.com") == {"email": "bob@example.com", "firstName": "Bob",
                                                "status": "Bounced", "tags": []}


# --- lists ---------------------------------------------------------------------------------------

def test_lists_are_listed_with_member_counts(api):
    body = valid(api.get("/contacts"), 200, "lists")
    assert body == {"contacts": [{"id": NEWSLETTER, "name": "Newsletter", "numberOfMembers": 250},
                                 {"id": VIP, "name": "VIP", "numberOfMembers": 1}]}


def test_members_are_paged_1_indexed_in_stable_order(api):
    first = page_of(api, NEWSLETTER, page=1, size=100)
    assert [c["email"] for c in first["members"]["content"]] == MEMBERS[:100]
    assert first["members"]["last"] is False
    assert first["members"]["content"][7] == {"email": "m007@example.com", "firstName": "M7",
                                              "status": "Subscribed", "tags": []}
    assert member_emails(api, NEWSLETTER, page=2, size=100) == MEMBERS[100:200]
    short = page_of(api, NEWSLETTER, page=3, size=100)
    assert [c["email"] for c in short["members"]["content"]] == MEMBERS[200:]
    assert short["members"]["last"] is True


def test_default_size_is_100_and_a_full_final_page_is_last(api):
    assert member_emails(api, NEWSLETTER) == MEMBERS[:100]
    final = page_of(api, NEWSLETTER, page=5, size=50)
    assert len(final["members"]["content"]) == 50 and final["members"]["last"] is True
    before = page_of(api, NEWSLETTER, page=4, size=50)
    assert before["members"]["last"] is False
    past = page_of(api, NEWSLETTER, page=9)
    assert past == {"members": {"content": [], "last": True}}


def test_paging_walks_every_member_exactly_once(api):
    seen, page = [], 1
    while True:
        body = page_of(api, NEWSLETTER, page=page, size=37)
        seen += [c["email"] for c in body["members"]["content"]]
        if body["members"]["last"]:
            break
        page += 1
    assert seen == MEMBERS and page == 7


@pytest.mark.parametrize(("params", "expected"), [
    ({"size": 101}, "size must be between 1 and 100"),
    ({"size": 0}, "size must be between 1 and 100"),
    ({"page": 0}, "page must be 1 or more (pages are 1-indexed)"),
    ({"page": -1}, "page must be 1 or more (pages are 1-indexed)"),
    ({"page": "two"}, "page must be an integer"),
    ({"size": "1.5"}, "size must be an integer"),
])
def test_bad_paging_is_400(api, params, expected):
    assert error(api.get(f"/contacts/{NEWSLETTER}/members", params=params), 400) == expected


def test_unknown_list_is_404(api):
    assert error(api.get("/contacts/no-such-list/members"), 404) == "Contact list not found"


# --- audiences -----------------------------------------------------------------------------------

def test_audiences_are_the_lists_by_id_and_name(api):
    assert valid(api.get("/audiences"), 200, "audiences") == {
        "contacts": [{"id": NEWSLETTER, "name": "Newsletter"}, {"id": VIP, "name": "VIP"}]}


def test_create_audience_upserts_and_adds_its_members(api):
    body = valid(api.post("/audiences", json={"name": "Promo", "members": [
        {"email": "ADA@example.com", "tags": ["promo"]}, {"email": "dan@example.com", "firstName": "Dan"}]}),
        200, "audience_created")
    assert uuid.UUID(body["id"]).version == 4
    assert {"id": body["id"], "name": "Promo", "numberOfMembers": 2} in lists(api)
    assert member_emails(api, body["id"]) == ["Ada@Example.com", "dan@example.com"]
    assert customer(api, "ada@example.com")["tags"] == ["promo"]
    assert customer(api, "dan@example.com") == {"email": "dan@example.com", "firstName": "Dan",
                                                "status": "Subscribed", "tags": []}


def test_audience_ids_are_reproducible_under_the_seed(api, server):
    first = valid(api.post("/audiences", json={"name": "A"}), 200, "audience_created")["id"]
    second = valid(api.post("/audiences", json={"name": "A"}), 200, "audience_created")["id"]
    assert first != second
    assert httpx.post(server.base_url + "/__sandbox/reset").status_code == 200
    assert valid(api.post("/audiences", json={"name": "A"}), 200, "audience_created")["id"] == first


def test_assign_and_unassign_audience_members(api):
    response = api.put(f"/audiences/{VIP}", json={
        "assignMembers": [{"email": "erin@example.com", "status": "Subscribed"},
                          {"email": "m005@example.com"}, {"email": "ada@example.com"}],
        "unAssignMembers": ["ADA@EXAMPLE.COM", "never@example.com"]})
    assert response.status_code == 204 and response.content == b""
    assert member_emails(api, VIP) == ["erin@example.com", "m005@example.com"]
    assert customer(api, "erin@example.com")["status"] == "Subscribed"
    assert {"id": VIP, "name": "VIP", "numberOfMembers": 2} in lists(api)
    again = api.put(f"/audiences/{VIP}", json={"assignMembers": [{"email": "ERIN@example.com"}]})
    assert again.status_code == 204 and member_emails(api, VIP) == ["erin@example.com", "m005@example.com"]


@pytest.mark.parametrize(("body", "expected"), [
    ({"members": []}, "name is required"),
    ({"name": "  "}, "name must be a non-empty string"),
    ({"name": "X", "members": [{"email": "bad"}]},
     "members[0].email is missing or not a valid email address"),
    ({"name": "X", "owner": "me"}, "owner is not a known field"),
])
def test_bad_audience_creation_is_400(api, body, expected):
    assert error(api.post("/audiences", json=body), 400) == expected
    assert len(valid(api.get("/audiences"), 200, "audiences")["contacts"]) == 2


@pytest.mark.parametrize(("body", "expected"), [
    ({"assignMembers": [{"email": "ok@example.com"}, {"name": "x"}]}, "assignMembers[1].email"),
    ({"unAssignMembers": [{"email": "a@example.com"}]}, "unAssignMembers must be an array of email strings"),
    ({"unAssignMembers": ["x@example.com"] * 501}, "unAssignMembers holds 501 emails"),
    ({"assign": []}, "assign is not a known field"),
])
def test_bad_audience_update_is_400_and_changes_nothing(api, body, expected):
    assert error(api.put(f"/audiences/{VIP}", json=body), 400).startswith(expected)
    assert member_emails(api, VIP) == ["Ada@Example.com"]
    assert api.get("/account/customer/ok@example.com").status_code == 404


def test_update_of_unknown_audience_is_404(api):
    response = api.put("/audiences/no-such-id", json={"assignMembers": [{"email": "z@example.com"}]})
    assert error(response, 404) == "Audience not found"
    assert api.get("/account/customer/z@example.com").status_code == 404


# --- routing -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/v1/account/customer/ada@example.com", "GET"),
    ("PUT", "/v1/account/customer/ada@example.com", "GET"),
    ("GET", "/v1/account/customer", "PUT"),
    ("POST", "/v1/contacts", "GET"),
    ("DELETE", f"/v1/audiences/{VIP}", "PUT"),
    ("PATCH", "/v1/audiences", "GET, POST"),
])
def test_wrong_method_on_a_known_path_is_405(server, method, path, allow):
    response = httpx.request(method, server.base_url + path, headers={"X-API-KEY": KEY})
    assert error(response, 405) == "Method Not Allowed"
    assert response.headers["Allow"] == allow


UNKNOWN_PATHS = ["/v1/customers", "/v2/contacts", "/v1/contacts/", "/v1/account/customer/a/b", "/",
                 "/v1/audiences/x/members"]


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
def test_unknown_paths_are_404(server, path):
    assert error(httpx.get(server.base_url + path, headers={"X-API-KEY": KEY}), 404) == "Not Found"


# --- rate limit ----------------------------------------------------------------------------------

def test_rate_limit_per_key_with_retry_after(start, clock):
    server = start(rate_scale=3 / 60)  # 3 requests a minute per key
    url = server.base_url + "/v1/contacts"
    assert [httpx.get(url, headers={"X-API-KEY": KEY}).status_code for _ in range(3)] == [200, 200, 200]
    limited = httpx.get(url, headers={"X-API-KEY": KEY})
    assert valid(limited, 429, "error") == {"message": "Too many requests"}
    assert limited.headers["Retry-After"] == "60"
    assert "X-RateLimit-Limit" not in limited.headers  # TinyEmail publishes no rate headers
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 429  # same credential
    assert httpx.get(url, headers={"X-API-KEY": KEY2}).status_code == 200
    assert httpx.get(url).status_code == 401  # no credentials: no budget, the 401 answers
    clock.advance(60)
    assert httpx.get(url, headers={"X-API-KEY": KEY}).status_code == 200


def test_default_budget_is_60_a_minute(start):
    server = start(rate_scale=1.0)
    with httpx.Client(base_url=server.base_url + "/v1", headers={"X-API-KEY": KEY}) as api:
        codes = [api.get("/audiences").status_code for _ in range(61)]
    assert codes == [200] * 60 + [429]


def test_rate_key_hashes_the_credential():
    def request(headers: dict[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "method": "GET", "path": "/v1/contacts", "headers": raw})

    expected = "te:" + hashlib.sha256(KEY.encode()).hexdigest()[:16]
    assert rate_key(request({"X-API-KEY": KEY})) == expected
    assert rate_key(request({"Authorization": f"Bearer {KEY}"})) == expected
    assert rate_key(request({})) is None
    assert KEY not in rate_key(request({"X-API-KEY": KEY}))


# --- state, reset and the pure parts -------------------------------------------------------------

def test_state_is_the_fixture_part_and_reset_restores_it(api, server):
    state_url = server.base_url + "/__sandbox/state"
    assert httpx.get(state_url).json() == fixture_part()
    assert upsert(api, [{"email": "new@example.com"}]).status_code == 200
    assert api.put(f"/audiences/{VIP}", json={"unAssignMembers": ["ada@example.com"]}).status_code == 204
    changed = httpx.get(state_url).json()
    assert changed["customers"][-1] == {"email": "new@example.com", "status": "Subscribed", "tags": []}
    assert changed["lists"][1] == {"id": VIP, "name": "VIP", "members": []}
    assert httpx.post(server.base_url + "/__sandbox/reset").status_code == 200
    assert httpx.get(state_url).json() == fixture_part()
    assert api.get("/account/customer/new@example.com").status_code == 404


def test_store_round_trips_its_fixture_and_does_not_alias_it():
    part = fixture_part()
    store = TinyEmailStore(part)
    store.upsert([{"email": "ada@example.com", "tags": ["x"]}])
    assert part["customers"][0]["tags"] == ["vip", "uk"]
    store.reset()
    assert store.to_fixture() == fixture_part()


def test_merge_customer_rules():
    now = "2026-11-26T22:59:48.123Z"
    sent = {"email": " New@X.io", "status": "Unsubscribed", "lastPurchaseOrder": "9"}
    created = merge_customer(None, sent, now)
    assert created == {"email": " New@X.io", "status": "Unsubscribed", "tags": [], "unsubscribedAt": now}
    updated = merge_customer(ADA, {"email": "ada@example.com", "tags": ["a"], "company": None}, now)
    assert updated == {k: v for k, v in {**ADA, "tags": ["a"]}.items() if k != "company"}
    assert email_key("  MiXed@Example.COM ") == "mixed@example.com"
    assert check_member({"email": "a@b.c", "lastPurchaseDate": "2026-01-01"}) is None
    assert check_member({"email": "a b@c.d"}) == ".email is missing or not a valid email address"


def test_schemas_are_valid_and_can_fail():
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    bad = [("customer_page", {"members": {"content": [], "last": "no"}}),
           ("customer", {"firstName": "no email"}),
           ("customer", {"email": "a@b.c", "status": "Active"}),
           ("lists", {"contacts": [{"id": "x", "name": "y"}]}),
           ("audience_created", {"id": "not-a-uuid"}),
           ("upsert_answer", {"numberOfCreatedMembers": -1, "numberOfUpdatedMembers": 0}),
           ("error", {"error": "x"})]
    for name, body in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, SCHEMAS[name])
