"""The GHL sandbox's search indexes (contact_recon/sandbox/ghl_store.py): the indexed search answers exactly what the
reference search (filter and sort everything) answers, whatever writes came in between, and the served
`POST /contacts/search` sees every write at once."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contact_recon.sandbox.common import iso_from_epoch
from contact_recon.sandbox.ghl import create_app
from contact_recon.sandbox.ghl_store import GHLStore, SearchQuery, SortKey, search_contacts
from contact_recon.sandbox.server import RunningServer
from tests.support.servers import FakeClock

LOC = "LocationIndex0000001"
TOKEN = "token-index"
BASE = 1_780_000_000
SORTS = [(SortKey("dateAdded", False),), (SortKey("dateAdded", True),), (SortKey("dateUpdated", False),),
         (SortKey("dateUpdated", True), SortKey("dateAdded", False))]
FILTERS: list[list[dict[str, Any]]] = [
    [],
    [{"field": "tags", "operator": "eq", "value": "vip"}],
    [{"field": "dateUpdated", "operator": "range", "value": {"gte": iso_from_epoch(BASE + 3)}}],
]


def fixture(n: int) -> dict[str, Any]:
    """`n` contacts whose dates repeat (ties are broken by id), a third tagged vip."""
    contacts = [{"id": f"Idx{i:017d}", "email": f"p{i}@example.com", "firstName": f"P{i % 5}",
                 "tags": ["vip"] if i % 3 == 0 else [], "dateAdded": iso_from_epoch(BASE + i // 3),
                 "dateUpdated": iso_from_epoch(BASE + (n - i) // 2)} for i in range(n)]
    return {"tokens": [{"token": TOKEN, "locationId": LOC, "scopes": ["contacts.readonly", "contacts.write"]}],
            "locations": {LOC: {"contacts": contacts, "tasks": [], "notes": []}}}


def both(store: GHLStore, q: SearchQuery) -> tuple[tuple[list[dict[str, Any]], int], tuple[list[dict[str, Any]], int]]:
    """(indexed answer, reference answer) of one search."""
    return store.search_contacts(q), search_contacts(list(store.location(LOC).contacts.values()), q)


def walk(store: GHLStore, sort: tuple[SortKey, ...], filters: list[dict[str, Any]], limit: int) -> None:
    """Page through with searchAfter, comparing every page with the reference."""
    after: list[Any] | None = None
    while True:
        q = SearchQuery(LOC, limit, search_after=after, filters=filters, sort=sort)
        indexed, reference = both(store, q)
        assert indexed == reference
        if len(indexed[0]) < limit:
            return
        after = indexed[0][-1]["searchAfter"]


write_ops = st.lists(st.tuples(st.sampled_from(["create", "edit", "tag", "untag", "delete", "noop"]),
                               st.integers(0, 10_000), st.integers(0, 2)), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=write_ops, sort=st.sampled_from(SORTS), filters=st.sampled_from(FILTERS),
       limit=st.sampled_from([1, 4, 50]), page=st.integers(1, 4))
def test_indexed_search_equals_reference_after_any_writes(ops: list[tuple[str, int, int]],
                                                          sort: tuple[SortKey, ...], filters: list[dict[str, Any]],
                                                          limit: int, page: int) -> None:
    clock = FakeClock(BASE + 10)
    store = GHLStore(fixture(30), seed=1, clock=clock)
    for sort_seen in SORTS:  # build every order first, so the writes must keep them current
        store.search_contacts(SearchQuery(LOC, 5, sort=sort_seen))
    store.search_contacts(SearchQuery(LOC, 5, filters=filters, sort=sort))
    for kind, pick, tick in ops:
        clock.advance(tick)  # 0: the same second as the previous write (a tie)
        ids = sorted(store.location(LOC).contacts)
        contact = store.contact(ids[pick % len(ids)]) if ids else None
        if kind == "create" or contact is None:
            store.create_contact(LOC, {"email": f"new{pick}@example.com", "tags": ["vip"] if pick % 2 else []})
        elif kind == "edit":
            store.update_contact(contact, {"firstName": f"E{pick}"})
        elif kind == "tag":
            store.add_tags(contact, ["vip"])
        elif kind == "untag":
            store.remove_tags(contact, None)
        elif kind == "delete":
            store.delete_contact(contact["id"])
        else:
            store.update_contact(contact, {"email": contact["email"]})  # changes nothing
        paged = SearchQuery(LOC, limit, page=page, filters=filters, sort=sort)
        assert both(store, paged)[0] == both(store, paged)[1]
    walk(store, sort, filters, limit)


def test_reset_rebuilds_the_indexes() -> None:
    store = GHLStore(fixture(10), seed=1, clock=FakeClock(BASE + 10))
    q = SearchQuery(LOC, 100, sort=SORTS[0])
    before = store.search_contacts(q)
    store.delete_contact("Idx00000000000000000")
    assert store.search_contacts(q)[1] == 9
    store.reset()
    assert store.search_contacts(q) == before


def test_served_search_sees_writes_at_once(serve: Callable[..., RunningServer], clock: FakeClock) -> None:
    """Walk a dateUpdated-ascending listing over HTTP while contacts are edited, created and deleted."""
    app = create_app(copy.deepcopy(fixture(1_200)), rate_scale=100, seed=2, clock=clock, search_lag_s=0)
    headers = {"Version": "2021-07-28", "Authorization": f"Bearer {TOKEN}"}
    sort = [{"field": "dateUpdated", "direction": "asc"}]
    with httpx.Client(base_url=serve(app).base_url, headers=headers, timeout=30) as api:
        def page(after: list[Any] | None = None) -> dict[str, Any]:
            body = {"locationId": LOC, "pageLimit": 500, "sort": sort} | ({"searchAfter": after} if after else {})
            return api.post("/contacts/search", json=body).json()

        first = page()
        edited, deleted = first["contacts"][0]["id"], "Idx00000000000000000"  # deleted: updated last, unseen
        clock.advance(3600)
        assert api.put(f"/contacts/{edited}", json={"firstName": "Moved"}).status_code == 200
        assert api.delete(f"/contacts/{deleted}").status_code == 200
        created = api.post("/contacts/", json={"locationId": LOC, "email": "late@example.com"}).json()["contact"]["id"]
        seen, after = [], first["contacts"][-1]["searchAfter"]
        while (answer := page(after))["contacts"]:
            assert answer["total"] == 1_200  # one deleted, one created
            seen += [c["id"] for c in answer["contacts"]]
            after = answer["contacts"][-1]["searchAfter"]
        assert seen[-2:] == sorted([edited, created])  # both now updated last (same second: by id)
        # the rest of the listing, without the deleted contact, plus the edited one moved to the end and the new one
        assert deleted not in seen and len(seen) == len(set(seen)) == 1_200 - 500 - 1 + 2
        renamed = api.post("/contacts/search", json={"locationId": LOC, "pageLimit": 10, "filters": [
            {"field": "firstName", "operator": "eq", "value": "Moved"}]}).json()
        assert [c["id"] for c in renamed["contacts"]] == [edited] and renamed["total"] == 1


def test_with_a_lag_search_shows_an_edited_contact_as_it_was_until_the_lag_has_passed() -> None:
    """The index holds the contacts themselves and copies one just before it changes in place (copy on write): an
    edit, a tag added or removed shows in search only `search_lag_s` later, while the store has it at once."""
    clock = FakeClock(BASE + 10)
    store = GHLStore(fixture(9), seed=1, clock=clock, search_lag_s=5)
    by_name = SearchQuery(LOC, 50, filters=[{"field": "firstName", "operator": "eq", "value": "Moved"}],
                          sort=SORTS[0])
    vip = SearchQuery(LOC, 50, filters=[{"field": "tags", "operator": "eq", "value": "vip"}], sort=SORTS[0])
    edited, tagged, untagged = "Idx00000000000000001", "Idx00000000000000002", "Idx00000000000000003"
    vips_before = {c["id"] for c in store.search_contacts(vip)[0]}
    assert untagged in vips_before and tagged not in vips_before
    store.update_contact(store.location(LOC).contacts[edited], {"firstName": "Moved"})
    store.add_tags(store.location(LOC).contacts[tagged], ["vip"])
    store.remove_tags(store.location(LOC).contacts[untagged], ["vip"])
    clock.advance(4)
    assert store.search_contacts(by_name)[0] == []
    assert {c["id"] for c in store.search_contacts(vip)[0]} == vips_before
    assert store.contact(edited)["firstName"] == "Moved"  # a GET reads the store
    clock.advance(2)
    assert [c["id"] for c in store.search_contacts(by_name)[0]] == [edited]
    assert {c["id"] for c in store.search_contacts(vip)[0]} == vips_before - {untagged} | {tagged}


def test_a_store_that_owns_its_fixture_serves_those_objects_and_resets_to_them_as_given() -> None:
    """`owned` (`recon sandbox serve`): no copy of the fixture's objects is made; `reset` still brings back the
    fixture as it was given, from the JSON text kept at load, whatever was written to the objects since."""
    given = fixture(5)
    first = given["locations"][LOC]["contacts"][0]
    store = GHLStore(given, seed=1, clock=FakeClock(BASE + 10), owned=True)
    assert store.location(LOC).contacts[first["id"]] is first
    q = SearchQuery(LOC, 100, sort=SORTS[0])
    before = store.search_contacts(q)
    store.update_contact(first, {"firstName": "Changed"})
    store.delete_contact("Idx00000000000000004")
    store.reset()
    assert store.search_contacts(q) == before
    assert store.contact(first["id"])["firstName"] == fixture(5)["locations"][LOC]["contacts"][0]["firstName"]
