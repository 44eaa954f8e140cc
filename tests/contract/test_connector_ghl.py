"""The GHL connector against the GHL sandbox over HTTP: the shared connector contract, plus listings
(faults, past the 10,000 page window, under concurrent edits, incremental, with search lag), listings that
would not end (a search ignoring its cursor, a page repeated, new ids past the total: `PagingStalled` within
a few requests), task search batches, typed errors, and the rate budget alone at the real limits and next
to a client that drains it."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.errors import ConnectorError, Duplicate, NotFound, PagingStalled, ScopeError, Validation
from contact_recon.systems.ghl.client import API_VERSION, PAGE_MARGIN, GHLClient, iso
from contact_recon.systems.tinyemail import client as tinyemail_client
from tests.support.connector_contract import ConnectorContract

WRITE_TAG = "contract-write"


def location_of(fixture: dict[str, Any]) -> str:
    return fixture["ghl"]["tokens"][0]["locationId"]


async def short_backoff(seconds: float) -> None:
    """The retry backoff, shortened so fault tests stay fast (429 waits go through the budget, unshortened)."""
    await asyncio.sleep(min(seconds, 0.02))


def with_contacts(n: int, *, seed: int = 1, ties: int = 7) -> dict[str, Any]:
    """A fixture with exactly `n` plain contacts (`ties` share each dateAdded, to exercise the id tie-break)."""
    fixture = generate_fixture(5, seed=seed)
    base = datetime(2025, 3, 1, tzinfo=UTC)
    contacts = []
    for i in range(n):
        added = iso(base + timedelta(seconds=i // ties))
        contacts.append({"id": f"C{seed:03d}{i:016d}", "firstName": f"P{i}", "email": f"p{i}@example.com",
                         "tags": [], "dateAdded": added, "dateUpdated": added})
    loc = fixture["ghl"]["locations"][location_of(fixture)]
    loc.update(contacts=contacts, tasks=[], notes=[])
    return fixture


class TestGHLConnector(ConnectorContract):
    server_index = 0

    # ------------------------------------------------------------------------ the contract's hooks

    def make_client(self, server: RunningServer, fixture: dict[str, Any], *, bad_credentials: bool = False,
                    token: str | None = None, location_id: str | None = None) -> GHLClient:
        token = self.BAD_SECRET if bad_credentials else token or fixture["ghl"]["tokens"][0]["token"]
        settings = Settings(ghl_base_url=server.base_url, ghl_token=token)
        return GHLClient.from_settings(settings, location_id or location_of(fixture),
                                       budget=RateBudget(100, 10.0, 200_000), sleep=short_backoff)

    async def list_all(self, client: GHLClient) -> list[str]:
        return [c.id async for c in client.iter_contacts(page_limit=10)]

    def expected_keys(self, state: dict[str, Any]) -> list[str]:
        return [c["id"] for loc in state["locations"].values() for c in loc["contacts"]]

    async def one_read(self, client: GHLClient) -> object:
        return await client.get_contact(self._first_id)

    async def one_write(self, client: GHLClient) -> None:
        await client.add_tags(self._first_id, [WRITE_TAG])

    def write_landed(self, state: dict[str, Any]) -> bool:
        contact = next(c for loc in state["locations"].values() for c in loc["contacts"] if c["id"] == self._first_id)
        return WRITE_TAG in (contact.get("tags") or [])

    def secrets(self, fixture: dict[str, Any]) -> list[str]:
        ghl = fixture["ghl"]
        return [t["token"] for t in ghl["tokens"]] + [c["client_secret"] for c in ghl["oauthClients"]] + \
            list(fixture["tinyemail"]["apiKeys"])

    @pytest.fixture(autouse=True)
    def _first(self, contract_fixture: dict[str, Any]) -> None:
        self._first_id = contract_fixture["ghl"]["locations"][location_of(contract_fixture)]["contacts"][0]["id"]

    # ------------------------------------------------------------------------------------ helpers

    def serve(self, sandboxes: Any, fixture: dict[str, Any], **options: Any) -> RunningServer:
        options.setdefault("rate_scale", self.FAST_RATE_SCALE)
        options.setdefault("seed", self.FAULT_SEED)
        return sandboxes(fixture, **options)[0]

    # ------------------------------------------------------------------------------------ listings

    def test_listing_5000_contacts_under_faults_returns_each_once(self, sandboxes, contract_fixture):
        fixture = generate_fixture(5900, seed=5)
        loc = fixture["ghl"]["locations"][location_of(fixture)]
        loc["contacts"] = loc["contacts"][:5000]
        kept = {c["id"] for c in loc["contacts"]}
        loc["tasks"] = [t for t in loc["tasks"] if t["contactId"] in kept]
        loc["notes"] = [n for n in loc["notes"] if n["contactId"] in kept]
        server = self.serve(sandboxes, fixture, faults="5xx=0.05,reset=0.02")

        async def listing(client: GHLClient) -> list[str]:
            return [c.id async for c in client.iter_contacts(page_limit=50)]

        ids, client = self.with_client(server, fixture, listing)
        assert len(ids) == 5000 and set(ids) == kept
        faults = Counter(r["fault"] for r in self.requests(server) if r["fault"])
        assert faults["5xx"] >= 1 and faults["reset"] >= 1, faults
        assert client.stats.retried == sum(faults.values())

    def test_listing_past_10000_records_through_search_after(self, sandboxes, contract_fixture):
        fixture = with_contacts(12_000)
        server = self.serve(sandboxes, fixture)

        async def listing(client: GHLClient) -> list[str]:
            try:
                await client.search_contacts(page=21, page_limit=500)
            except Validation as exc:
                self.seen(exc)
            else:
                raise AssertionError("page paging past 10,000 records should be refused")
            return [c.id async for c in client.iter_contacts()]

        ids, _ = self.with_client(server, fixture, listing)
        assert len(ids) == 12_000 == len(set(ids))
        assert ids == sorted(ids)  # dateAdded asc, ties by id: here the same order as the ids

    @pytest.mark.parametrize("mode, says", [("stall", "cursor did not move"), ("repeat", "brought no contact")])
    def test_a_listing_that_would_not_end_raises_paging_stalled_within_a_few_requests(self, sandboxes, mode, says):
        fixture = with_contacts(1_000)
        server = self.serve(sandboxes, fixture)
        switch = httpx.post(server.base_url + "/__sandbox/search", json={"paging": {location_of(fixture): mode}})
        assert switch.json()["paging"] == {location_of(fixture): mode}
        planned = 1_000 // 100  # the pages the listing needs

        async def listing(client: GHLClient) -> list[str]:
            return [c.id async for c in client.iter_contacts(page_limit=100)]

        with pytest.raises(PagingStalled) as stalled:
            self.with_client(server, fixture, listing)
        self.seen(stalled.value)
        searches = [r for r in self.requests(server) if r["path"] == "/contacts/search"]
        assert len(searches) == 2 <= planned  # page 1, then the page that gives it away: never the day's budget
        assert says in str(stalled.value) and "stopped after 2 requests" in str(stalled.value)

        httpx.post(server.base_url + "/__sandbox/search", json={"paging": {location_of(fixture): "normal"}})
        ids, _ = self.with_client(server, fixture, listing)
        assert len(ids) == 1_000 == len(set(ids))  # the switch is the only cause

    def test_new_ids_without_end_stop_near_the_pages_the_total_needs(self, serve):
        asked: list[Any] = []

        async def search(request: Request) -> JSONResponse:  # a server whose pages never run out
            body = await request.json()
            n = len(asked)
            asked.append(body.get("searchAfter"))
            contacts = [{"id": f"new{n:04d}{i:03d}", "searchAfter": [n, i, f"new{n:04d}{i:03d}"]} for i in range(100)]
            return JSONResponse({"contacts": contacts, "total": 250})

        server = serve(Starlette(routes=[Route("/contacts/search", search, methods=["POST"])]))
        client = GHLClient.from_settings(Settings(ghl_base_url=server.base_url, ghl_token="pit-stub"), "loc",
                                         budget=RateBudget(100, 10.0, 200_000), sleep=short_backoff)

        async def listing() -> list[str]:
            async with client:
                return [c.id async for c in client.iter_contacts(page_limit=100)]

        with pytest.raises(PagingStalled) as stalled:
            asyncio.run(listing())
        assert len(asked) == 3 + PAGE_MARGIN + 1 == client.stats.used  # 250 contacts need 3 pages
        assert "does not end" in str(stalled.value)

    def test_one_paging_stalled_for_both_connectors(self):
        assert tinyemail_client.PagingStalled is PagingStalled

    def test_with_search_lag_a_write_reaches_the_search_later_and_get_at_once(self, sandboxes, contract_fixture):
        server = self.serve(sandboxes, contract_fixture, search_lag_s=1.5)
        query = {"field": "email", "operator": "eq", "value": "lagging@example.com"}

        async def scenario(client: GHLClient) -> tuple[int, str, int, bool, int]:
            created = await client.create_contact({"email": "lagging@example.com", "firstName": "Lag"})
            at_once = (await client.search_contacts(filters=[query])).contacts
            got = await client.get_contact(created.id)
            try:  # the duplicate check reads the store, not the lagging index
                await client.create_contact({"email": "lagging@example.com"})
                duplicate = False
            except Duplicate as exc:
                duplicate = exc.contact_id == created.id
            await asyncio.sleep(1.6)
            later = (await client.search_contacts(filters=[query])).contacts
            return len(at_once), got.id == created.id and got.firstName or "", len(later), duplicate, \
                sum(1 for c in later if c.id == created.id)

        (at_once, got, later, duplicate, same), _ = self.with_client(server, contract_fixture, scenario)
        assert (at_once, got, later, duplicate, same) == (0, "Lag", 1, True, 1)

    def test_contacts_edited_during_the_listing_are_returned_once(self, sandboxes, contract_fixture):
        fixture = with_contacts(600)
        server = self.serve(sandboxes, fixture)
        every = [c["id"] for c in fixture["ghl"]["locations"][location_of(fixture)]["contacts"]]

        async def listing(client: GHLClient) -> list[str]:
            ids: list[str] = []
            async for contact in client.iter_contacts(page_limit=50):
                ids.append(contact.id)
                if len(ids) == 120:  # mid-listing: edit contacts already listed, and some not yet reached
                    for cid in every[100:110] + every[400:410]:
                        await client.update_contact(cid, {"lastName": "Edited"})
            return ids

        ids, _ = self.with_client(server, fixture, listing)
        assert len(ids) == 600 and set(ids) == set(every)

    def test_incremental_listing_returns_only_contacts_changed_since(self, sandboxes, contract_fixture):
        fixture = with_contacts(300)
        server = self.serve(sandboxes, fixture)
        every = [c["id"] for c in fixture["ghl"]["locations"][location_of(fixture)]["contacts"]]
        changed = every[5:300:37]

        async def incremental(client: GHLClient) -> tuple[list[str], list[str]]:
            since = datetime.now(UTC) - timedelta(seconds=1)
            for cid in changed:
                await client.add_tags(cid, ["changed"])
            recent = [c.id async for c in client.iter_contacts(updated_since=since, page_limit=3)]
            later = [c.id async for c in client.iter_contacts(updated_since=datetime.now(UTC) + timedelta(hours=1))]
            return recent, later

        (recent, later), _ = self.with_client(server, fixture, incremental)
        assert sorted(recent) == sorted(changed) and len(recent) == len(changed)
        assert later == []

    # -------------------------------------------------------------------------------- task search

    def test_task_search_batches_contact_ids_and_pages(self, sandboxes, contract_fixture):
        fixture = with_contacts(230)
        loc = fixture["ghl"]["locations"][location_of(fixture)]
        ids = [c["id"] for c in loc["contacts"]]
        loc["tasks"] = [{"id": f"T{i:03d}{k}AAAAAAAAAAAAAAA", "contactId": cid, "title": f"task {k}",
                         "dueDate": "2026-01-01T00:00:00.000Z", "completed": k == 1}
                        for i, cid in enumerate(ids) for k in range(i % 3)]
        server = self.serve(sandboxes, fixture)
        wanted = ids[:-10]  # the last ten contacts' tasks must not come back

        async def search(client: GHLClient) -> tuple[list[str], list[str]]:
            every = await client.search_tasks(wanted, batch_size=100, page_size=40)
            done = await client.search_tasks(wanted, completed=True, batch_size=100)
            return [t.id for t in every], [t.id for t in done]

        (found, done), _ = self.with_client(server, fixture, search)
        expected = [t["id"] for t in loc["tasks"] if t["contactId"] in set(wanted)]
        assert sorted(found) == sorted(expected) and len(found) == len(set(found))
        assert sorted(done) == sorted(t["id"] for t in loc["tasks"] if t["contactId"] in set(wanted) and t["completed"])
        searches = [r for r in self.requests(server) if r["path"].endswith("/tasks/search")]
        assert len(searches) >= 3 + 3  # three batches of ids (>= one page each), twice

    # ------------------------------------------------------------------------------- typed errors

    def test_typed_errors(self, sandboxes, contract_fixture):
        fixture = copy.deepcopy(contract_fixture)
        fixture["ghl"]["tokens"].append({"token": "sbx-ghl-readonly-0123456789abcdef", "scopes": ["contacts.readonly"],
                                         "locationId": location_of(fixture)})
        server = self.serve(sandboxes, fixture)
        existing = fixture["ghl"]["locations"][location_of(fixture)]["contacts"][0]

        async def errors(client: GHLClient) -> dict[str, ConnectorError]:
            calls = {
                "duplicate": client.create_contact({"email": existing["email"].upper()}),
                "contact": client.get_contact("NoSuchContact0000000"),
                "task": client.get_task(existing["id"], "NoSuchTask0000000000"),
                "note": client.delete_note(existing["id"], "NoSuchNote0000000000"),
                "validation": client.create_contact({"email": "x@example.com", "favouriteColour": "red"}),
                "bad_request": client.bulk_update_tags("swap", [existing["id"]], ["a"]),  # type: ignore[arg-type]
            }
            return {name: await _error_of(call) for name, call in calls.items()}

        found, _ = self.with_client(server, fixture, errors)
        for exc in found.values():
            self.seen(exc)
        duplicate = found["duplicate"]
        assert isinstance(duplicate, Duplicate)
        assert (duplicate.contact_id, duplicate.matching_field) == (existing["id"], "email")
        assert all(isinstance(found[k], NotFound) for k in ("contact", "task", "note"))
        validation = found["validation"]
        assert isinstance(validation, Validation) and validation.status == 422
        assert validation.messages == ["property favouriteColour should not exist"]
        assert isinstance(found["bad_request"], Validation) and found["bad_request"].status == 400

        async def scoped(client: GHLClient) -> list[ConnectorError]:
            return [await _error_of(client.add_tags(existing["id"], ["x"])),
                    await _error_of(client.search_tasks([existing["id"]]))]

        async def elsewhere(client: GHLClient) -> ConnectorError:
            return await _error_of(client.search_contacts())

        read_only = self.make_client(server, fixture, token="sbx-ghl-readonly-0123456789abcdef")
        scope_errors = asyncio.run(_closing(read_only, scoped(read_only)))
        other = self.make_client(server, fixture, location_id="AnotherLocation00000")
        forbidden = asyncio.run(_closing(other, elsewhere(other)))
        for exc in [*scope_errors, forbidden]:
            self.seen(exc)
            assert isinstance(exc, ScopeError), repr(exc)
        assert [e.status for e in scope_errors] == [401, 401] and forbidden.status == 403

    # -------------------------------------------------------------------------------- rate budget

    def test_alone_at_the_real_limit_no_request_is_rate_limited(self, sandboxes, contract_fixture):
        server = self.serve(sandboxes, contract_fixture, rate_scale=1)
        ids = [c["id"] for c in contract_fixture["ghl"]["locations"][location_of(contract_fixture)]["contacts"]]

        async def burst(client: GHLClient) -> int:
            calls = [client.get_contact(ids[i % len(ids)]) for i in range(130)]
            return len(await asyncio.gather(*calls))

        done, client = self.with_client(server, contract_fixture, burst)
        log = self.requests(server)
        assert done == 130 and len(log) == 130
        assert [r for r in log if r["status"] == 429] == []
        assert client.stats.rate_limited == 0 and client.budget.snapshot().limit == 100

    def test_backs_off_when_another_client_drained_the_budget(self, sandboxes, contract_fixture):
        server = self.serve(sandboxes, contract_fixture, rate_scale=1)
        token = contract_fixture["ghl"]["tokens"][0]["token"]
        ids = [c["id"] for c in contract_fixture["ghl"]["locations"][location_of(contract_fixture)]["contacts"]]
        headers = {"Authorization": f"Bearer {token}", "Version": API_VERSION}
        with httpx.Client(base_url=server.base_url, headers=headers) as other:
            drained = [other.get(f"/contacts/{ids[0]}").status_code for _ in range(100)]
        assert drained == [200] * 100

        async def calls(client: GHLClient) -> int:
            return len(await asyncio.gather(*(client.get_contact(ids[i % len(ids)]) for i in range(30))))

        done, client = self.with_client(server, contract_fixture, calls)
        assert done == 30
        assert client.stats.rate_limited >= 1  # it met the drained window, waited and finished
        ours = [r for r in self.requests(server)[100:] if r["status"] == 200]
        assert len(ours) == 30


async def _error_of(call: Any) -> ConnectorError:
    try:
        await call
    except ConnectorError as exc:
        return exc
    raise AssertionError("the call should have failed")


async def _closing(client: GHLClient, work: Any) -> Any:
    try:
        return await work
    finally:
        await client.aclose()
