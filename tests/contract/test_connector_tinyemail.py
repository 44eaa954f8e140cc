"""The TinyEmail client against the TinyEmail sandbox over real HTTP on 127.0.0.1.

`TestTinyEmailContract` runs the shared connector contract (listing under faults, read retries,
write UnknownOutcome, 429s, AuthError, no secrets in logs). `TestTinyEmailClient` pins what is
TinyEmail's own: 1-indexed members paging and its guards, customers in several lists, batch upserts
of at most 500, a batch with an unknown outcome, read-modify-write tags, list membership, emails that
need encoding in a path, and bearer tokens. Each test judges by the sandbox's own state and request log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contact_recon.sandbox import tinyemail as sandbox_tinyemail
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.errors import AuthError, NotFound, UnknownOutcome, Validation
from contact_recon.systems.tinyemail.client import (
    AudienceSnapshot,
    BatchUnknownOutcome,
    PagingStalled,
    TinyEmailClient,
    customer_path,
    to_member,
)
from contact_recon.systems.tinyemail.contract import email_key
from contact_recon.systems.tinyemail.models import Customer
from tests.support.connector_contract import ConnectorContract

FAST_RATE = 6000  # requests a minute, for the client's budget and (rate_scale=100) the sandbox's
CONTRACT_WRITE = "contract-write@example.com"


def settings_for(server: RunningServer, key: str, rate: float = FAST_RATE) -> Settings:
    return Settings(_env_file=None, tinyemail_base_url=server.base_url + "/v1", tinyemail_api_key=key,
                    tinyemail_rate_per_minute=rate)


def new_client(server: RunningServer, key: str, *, bearer: bool = False, rate: float = FAST_RATE,
               page_size: int | None = None) -> TinyEmailClient:
    """A client with a budget of its own (not the process registry's), so tests stay apart."""
    client = TinyEmailClient.from_settings(settings_for(server, key, rate), bearer=bearer,
                                           budget=RateBudget(int(rate), 60.0, None))
    if page_size:
        client.page_size = page_size
    return client


def admin(server: RunningServer, path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"{server.base_url}/__sandbox/{path}"
    answer = httpx.post(url, json=body) if body is not None else httpx.get(url)
    answer.raise_for_status()
    return answer.json()


def requests_to(server: RunningServer, method: str, path_prefix: str) -> list[dict[str, Any]]:
    return [r for r in admin(server, "requests")["requests"]
            if r["method"] == method and r["path"].startswith(path_prefix)]


def state_customer(server: RunningServer, email: str) -> dict[str, Any] | None:
    found = [c for c in admin(server, "state")["customers"] if email_key(c["email"]) == email_key(email)]
    assert len(found) <= 1
    return found[0] if found else None


def state_list(server: RunningServer, list_id: str) -> list[str]:
    return next(item["members"] for item in admin(server, "state")["lists"] if item["id"] == list_id)


# ------------------------------------------------------------------------------------------ contract


class TestTinyEmailContract(ConnectorContract):
    server_index = 1

    def make_client(self, server: RunningServer, fixture: dict[str, Any], *, bad_credentials: bool = False) -> Any:
        key = self.BAD_SECRET if bad_credentials else fixture["tinyemail"]["apiKeys"][0]
        return new_client(server, key, page_size=10)  # small pages: the listing spans many requests

    async def list_all(self, client: TinyEmailClient) -> list[str]:
        snapshot = await client.all_customers()
        return list(snapshot.customers)

    def expected_keys(self, state: dict[str, Any]) -> list[str]:
        # TinyEmail lists customers only through lists: the reachable ones are the members of some list
        return sorted({email_key(e) for item in state["lists"] for e in item["members"]})

    async def one_read(self, client: TinyEmailClient) -> object:
        return await client.lists()

    async def one_write(self, client: TinyEmailClient) -> None:
        await client.upsert_customers([{"email": CONTRACT_WRITE, "firstName": "Contract"}])

    def write_landed(self, state: dict[str, Any]) -> bool:
        return any(email_key(c["email"]) == CONTRACT_WRITE for c in state["customers"])

    def secrets(self, fixture: dict[str, Any]) -> list[str]:
        return list(fixture["tinyemail"]["apiKeys"])


# ------------------------------------------------------------------------------- TinyEmail's own


NEWSLETTER, VIP = "6f1c1a52-9d8e-4c1b-8f0e-1d2a3b4c5d6e", "0b7e6f5d-4c3b-4a29-8f17-e6d5c4b3a291"
PLUS = "ada+news@example.com"
UNICODE = "zoë.ñandú@exämple.com"


def people(n: int, prefix: str = "m") -> list[dict[str, Any]]:
    return [{"email": f"{prefix}{i:04d}@example.com", "firstName": f"M{i}", "status": "Subscribed", "tags": []}
            for i in range(n)]


class TestTinyEmailClient:
    @pytest.fixture
    def key(self) -> str:
        return f"sbx-te-test-{uuid.uuid4().hex}"

    @pytest.fixture(autouse=True)
    def _no_key_in_logs(self, caplog: pytest.LogCaptureFixture, key: str) -> Iterator[None]:
        caplog.set_level(logging.DEBUG)
        yield
        assert key not in caplog.text
        assert not [r for r in caplog.records if key in r.getMessage()]

    @pytest.fixture
    def start(self, serve: Callable[[Starlette], RunningServer], key: str) -> Callable[..., RunningServer]:
        """`start(customers, lists, **options)`: a TinyEmail sandbox holding them, fast by default."""

        def run(customers: list[dict[str, Any]], lists: list[dict[str, Any]], **options: Any) -> RunningServer:
            options.setdefault("rate_scale", 100.0)
            part = validate_fixture({"tinyemail": {"apiKeys": [key], "customers": customers, "lists": lists}})
            return serve(sandbox_tinyemail.create_app(part["tinyemail"], **options))

        return run

    @staticmethod
    def run(server: RunningServer, key: str, scenario: Callable[[TinyEmailClient], Any], **client_options: Any) -> Any:
        async def main() -> Any:
            async with new_client(server, key, **client_options) as client:
                return await scenario(client)

        return asyncio.run(main())

    # --- paging --------------------------------------------------------------------------------

    @pytest.mark.parametrize("count, pages", [(950, 10), (1000, 10), (7, 1)])
    def test_members_paging_returns_every_member_once(self, start, key, count, pages):
        members = people(count)
        server = start(members, [{"id": NEWSLETTER, "name": "Newsletter", "members": [m["email"] for m in members]}])

        async def walk(client: TinyEmailClient) -> tuple[list[int], list[str]]:
            sizes = [len(page) async for page in client.iter_pages(NEWSLETTER, size=100)]
            emails = [c.email async for c in client.iter_members(NEWSLETTER, size=100)]
            return sizes, emails

        sizes, emails = self.run(server, key, walk)
        assert emails == [m["email"] for m in members]  # every member once, in list order
        assert sum(sizes) == count and len(sizes) == pages
        assert all(size == 100 for size in sizes[:-1])
        asked = [r["path"] for r in requests_to(server, "GET", f"/v1/contacts/{NEWSLETTER}/members")]
        assert len(asked) == 2 * pages  # two walks, no page past the last one

    def test_a_server_that_never_says_last_is_stopped(self, serve):
        """A server ignoring `page` (same full page, `last: false`, forever) raises instead of looping."""
        same = [{"email": f"loop{i}@example.com"} for i in range(5)]
        hits: list[str] = []

        async def members(request: Request) -> JSONResponse:
            hits.append(request.query_params["page"])
            return JSONResponse({"members": {"content": same, "last": False}})

        server = serve(Starlette(routes=[Route("/v1/contacts/{list_id}/members", members)]))

        async def walk(client: TinyEmailClient) -> list[str]:
            client.max_pages = 50
            return [c.email async for c in client.iter_members("loop", size=5)]

        with pytest.raises(PagingStalled):
            self.run(server, "sbx-te-stub-key-000000", walk)
        assert hits == ["1", "2"]  # page 1 accepted, page 2 seen to repeat it

    @pytest.mark.parametrize("sizes, pages_asked", [([3, 3, 0, 3], 3), ([3, 2, 3, 3], 2)])
    def test_an_empty_or_short_page_without_last_ends_the_listing(self, serve, sizes, pages_asked):
        hits: list[int] = []

        async def members(request: Request) -> JSONResponse:
            page = int(request.query_params["page"])
            hits.append(page)
            content = [{"email": f"p{page}-{i}@example.com"} for i in range(sizes[page - 1])]
            return JSONResponse({"members": {"content": content, "last": False}})

        server = serve(Starlette(routes=[Route("/v1/contacts/{list_id}/members", members)]))

        async def walk(client: TinyEmailClient) -> list[str]:
            return [c.email async for c in client.iter_members("x", size=3)]

        emails = self.run(server, "sbx-te-stub-key-000000", walk)
        assert hits == list(range(1, pages_asked + 1))
        assert len(emails) == len(set(emails)) == sum(sizes[:pages_asked])

    def test_a_member_shifted_onto_the_next_page_is_yielded_once(self, serve):
        """A member inserted at the head of the list between two page reads pushes page 1's last member
        onto page 2: it is yielded once."""
        pages = {1: ["a", "b", "c"], 2: ["c", "d"]}

        async def members(request: Request) -> JSONResponse:
            page = int(request.query_params["page"])
            content = [{"email": f"{name}@example.com"} for name in pages.get(page, [])]
            return JSONResponse({"members": {"content": content, "last": page >= 2}})

        server = serve(Starlette(routes=[Route("/v1/contacts/{list_id}/members", members)]))

        async def walk(client: TinyEmailClient) -> list[str]:
            return [c.email async for c in client.iter_members("x", size=3)]

        assert self.run(server, "sbx-te-stub-key-000000", walk) == [f"{n}@example.com" for n in "abcd"]

    def test_a_customer_in_two_lists_appears_once_with_both_memberships(self, start, key):
        members = people(30)
        both = members[3]["email"]
        server = start(members, [
            {"id": NEWSLETTER, "name": "Newsletter", "members": [m["email"] for m in members[:20]]},
            {"id": VIP, "name": "VIP", "members": [both.upper(), *(m["email"] for m in members[20:])]},
        ])

        snapshot: AudienceSnapshot = self.run(server, key, lambda client: client.all_customers(), page_size=7)
        assert sorted(snapshot.customers) == sorted(m["email"] for m in members)
        assert snapshot.memberships[both] == {NEWSLETTER, VIP}
        assert snapshot.memberships[members[0]["email"]] == {NEWSLETTER}
        assert snapshot.memberships[members[25]["email"]] == {VIP}
        assert [item.id for item in snapshot.lists] == [NEWSLETTER, VIP]
        assert snapshot.customers[both].firstName == "M3"

    # --- customers -----------------------------------------------------------------------------

    def test_batch_upsert_of_1234_customers_makes_3_calls_with_right_counts(self, start, key):
        existing = people(34, prefix="n")
        server = start(existing, [])
        batch = [{**m, "firstName": "Changed"} for m in existing] + people(1200, prefix="new")

        result = self.run(server, key, lambda client: client.upsert_customers(batch))
        assert (result.created, result.updated, result.calls) == (1200, 34, 3)
        puts = requests_to(server, "PUT", "/v1/account/customer")
        assert [r["status"] for r in puts] == [200, 200, 200]
        customers = admin(server, "state")["customers"]
        assert len(customers) == 1234
        assert state_customer(server, existing[0]["email"])["firstName"] == "Changed"

    def test_a_batch_meeting_5xx_raises_unknown_outcome_naming_its_batch(self, start, key):
        server = start([], [])
        batch = people(1234, prefix="b")
        emails = [m["email"] for m in batch]
        for seed in range(60):  # find a seed whose 5xx falls on a batch after the first
            admin(server, "reset", {})
            admin(server, "faults", {"faults": "5xx=0.5", "seed": seed})
            try:
                self.run(server, key, lambda client: client.upsert_customers(batch))
            except BatchUnknownOutcome as exc:
                error = exc
                if exc.batch_index >= 1:
                    break
        else:
            pytest.fail("no seed put the 5xx on a later batch")
        assert key not in str(error) and isinstance(error, UnknownOutcome)
        i = error.batch_index
        assert (error.batches, error.emails) == (3, emails[500 * i:500 * (i + 1)])
        assert (error.created, error.updated) == (500 * i, 0)  # the batches answered before it
        puts = requests_to(server, "PUT", "/v1/account/customer")
        assert [r["status"] for r in puts][:i] == [200] * i and puts[i]["status"] >= 500
        assert len(puts) == i + 1  # the batch was not resent, and later batches were not sent
        admin(server, "faults", {"faults": "none"})
        stored = {email_key(c["email"]) for c in admin(server, "state")["customers"]}
        assert stored == set(emails[:500 * i])

    def test_a_batch_the_server_rejects_is_named_and_changes_nothing_of_it(self, start, key):
        server = start([], [])
        batch = people(600, prefix="v")
        batch[550]["email"] = "not-an-email"

        with pytest.raises(Validation) as caught:
            self.run(server, key, lambda client: client.upsert_customers(batch))
        assert "batch 2 of 2" in str(caught.value) and caught.value.status == 400
        assert any("updateMembers[50].email" in m for m in caught.value.messages)
        assert len(admin(server, "state")["customers"]) == 500

    def test_a_customer_the_model_refuses_sends_nothing(self, start, key):
        server = start([], [])
        batch = people(600, prefix="v")
        batch[550]["status"] = "Sleeping"

        with pytest.raises(Validation) as caught:
            self.run(server, key, lambda client: client.upsert_customers(batch))
        assert caught.value.messages[0].startswith("customers[550].status")
        assert admin(server, "requests")["requests"] == []

    def test_get_customer(self, start, key):
        server = start([{"email": "Ada@Example.com", "firstName": "Ada", "tags": ["vip"], "loyaltyTier": "gold"}], [])

        async def reads(client: TinyEmailClient) -> tuple[Customer | None, Customer | None]:
            return await client.get_customer("nobody@example.com"), await client.get_customer(" ada@example.COM ")

        unknown, ada = self.run(server, key, reads)
        assert unknown is None
        assert ada is not None and (ada.email, ada.firstName, ada.tags) == ("Ada@Example.com", "Ada", ["vip"])
        assert ada.model_extra == {"loyaltyTier": "gold"}  # unknown fields are kept

    def test_customer_path_encodes_the_whole_email(self):
        assert customer_path(" o'brien/x+y@exämple.org ") == "/account/customer/o%27brien%2Fx%2By%40ex%C3%A4mple.org"

    @pytest.mark.parametrize("email", [PLUS, UNICODE])
    def test_emails_needing_encoding_work_in_paths(self, start, key, email):
        server = start([{"email": email, "firstName": "Enc", "tags": ["a"]}],
                       [{"id": VIP, "name": "VIP", "members": [email]}])

        async def round_trip(client: TinyEmailClient) -> tuple[Customer | None, Customer]:
            found = await client.get_customer(email)
            return found, await client.set_tags(email, ["b"])

        found, tagged = self.run(server, key, round_trip)
        assert found is not None and found.email == email and tagged.tags == ["b"]
        assert state_customer(server, email)["tags"] == ["b"]
        paths = [r["path"] for r in requests_to(server, "GET", "/v1/account/customer/")]
        assert paths == [f"/v1/account/customer/{email}"] * 2  # get, and set_tags' read: decoded to our email

    def test_set_tags_replaces_the_whole_array_and_keeps_other_fields(self, start, key):
        server = start([{"email": "t@example.com", "firstName": "Tess", "phone": "+15550100", "tags": ["a", "b", "c"]}],
                       [])

        async def tag(client: TinyEmailClient) -> tuple[Customer, Customer, Customer]:
            first = await client.set_tags("t@example.com", ["c", "d", "d"])
            again = await client.set_tags("t@example.com", ["c", "d"])  # already so: no write
            changed = await client.change_tags("t@example.com", add=["e"], remove=["c"])
            return first, again, changed

        first, again, changed = self.run(server, key, tag)
        assert first.tags == ["c", "d"] and again.tags == ["c", "d"] and changed.tags == ["d", "e"]
        stored = state_customer(server, "t@example.com")
        assert (stored["tags"], stored["firstName"], stored["phone"]) == (["d", "e"], "Tess", "+15550100")
        assert len(requests_to(server, "PUT", "/v1/account/customer")) == 2

    def test_set_tags_on_an_unknown_customer_is_not_found_and_creates_nothing(self, start, key):
        server = start([], [])
        with pytest.raises(NotFound):
            self.run(server, key, lambda client: client.set_tags("ghost@example.com", ["x"]))
        assert admin(server, "state")["customers"] == []

    def test_only_writable_fields_are_sent(self):
        member = to_member(Customer.model_validate({"email": "a@example.com", "firstName": "A", "loyaltyTier": "x",
                                                    "lastPurchasePrice": 3, "unsubscribedAt": None}))
        assert member == {"email": "a@example.com", "firstName": "A"}
        assert to_member(Customer(email="b@example.com")) == {"email": "b@example.com"}  # no defaults sent

    # --- lists ---------------------------------------------------------------------------------

    def test_list_membership_add_and_remove(self, start, key):
        members = people(5)
        server = start(members, [{"id": VIP, "name": "VIP", "members": [members[0]["email"]]}])
        newcomer = Customer(email="new@example.com", firstName="Nina")

        async def change(client: TinyEmailClient) -> None:
            await client.add_to_list(VIP, [members[1]["email"], newcomer, members[0]["email"]])
            await client.remove_from_list(VIP, [members[0]["email"], "not-there@example.com"])

        self.run(server, key, change)
        assert state_list(server, VIP) == [members[1]["email"], "new@example.com"]
        assert state_customer(server, "new@example.com")["firstName"] == "Nina"
        assert state_customer(server, members[0]["email"]) is not None  # removed from the list, not deleted

    def test_create_list_with_more_members_than_one_call_takes(self, start, key):
        server = start([], [])
        emails = [m["email"] for m in people(700, prefix="c")]

        created = self.run(server, key, lambda client: client.create_list("Launch", emails))
        assert created.name == "Launch" and created.numberOfMembers == 700
        assert state_list(server, created.id) == emails
        assert len(requests_to(server, "POST", "/v1/audiences")) == 1
        assert len(requests_to(server, "PUT", f"/v1/audiences/{created.id}")) == 1

    def test_an_unknown_list_is_not_found(self, start, key):
        server = start([], [])
        with pytest.raises(NotFound):
            self.run(server, key, lambda client: client.add_to_list("no-such-list", ["a@example.com"]))

    # --- rate limits and auth ------------------------------------------------------------------

    def test_429s_are_waited_out_and_the_listing_finishes(self, start, key):
        members = people(40)
        server = start(members, [{"id": NEWSLETTER, "name": "N", "members": [m["email"] for m in members]}],
                       faults="429=0.3", seed=5)

        async def listing(client: TinyEmailClient) -> tuple[AudienceSnapshot, int]:
            return await client.all_customers(), client.api.stats.rate_limited

        snapshot, rate_limited = self.run(server, key, listing, page_size=10)
        assert sorted(snapshot.customers) == sorted(m["email"] for m in members)
        statuses = Counter(r["status"] for r in admin(server, "requests")["requests"])
        assert statuses[429] == rate_limited >= 1
        assert statuses[200] == 5  # the lists, then four pages of 10

    def test_a_bearer_token_is_sent_as_authorization(self, start, key):
        server = start(people(3), [])
        found = self.run(server, key, lambda client: client.get_customer("m0001@example.com"), bearer=True)
        assert found is not None and found.firstName == "M1"

    @pytest.mark.parametrize("bearer", [False, True])
    def test_a_bad_key_is_an_auth_error_without_the_key(self, start, key, bearer, caplog):
        server = start(people(3), [])
        bad = f"sbx-te-wrong-{uuid.uuid4().hex}"
        with pytest.raises(AuthError) as caught:
            self.run(server, bad, lambda client: client.lists(), bearer=bearer)
        assert caught.value.status == 401
        assert bad not in str(caught.value) and bad not in repr(caught.value)
        assert caplog.records and bad not in caplog.text

    def test_no_key_configured_is_an_auth_error(self):
        with pytest.raises(AuthError):
            TinyEmailClient.from_settings(Settings(_env_file=None, tinyemail_api_key=None))
