"""The sandboxes' write-side indexes: GHL's duplicate check and per-contact tasks and notes
(contact_recon/sandbox/ghl_store.py), TinyEmail's list membership (tinyemail_store.py). Whatever writes come in
between, each answers exactly what a scan of everything answers (the code they replaced, kept here as the
reference), and the index is used after it was first built, so the writes have to keep it current."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contact_recon.sandbox.ghl_store import GHLStore, email_key, phone_key
from contact_recon.sandbox.tinyemail_store import TinyEmailStore
from tests.support.servers import FakeClock

LOC = "LocationWrites000001"
BASE = 1_780_000_000
EMAILS = [f"p{i}@example.com" for i in range(4)] + ["P1@Example.com ", None]
PHONES = ["+14155550100", "(415) 555-0100", "+14155550101", None]


def ghl_fixture(n: int) -> dict[str, Any]:
    contacts = [{"id": f"Wr{i:018d}", "email": EMAILS[i % 4], "phone": PHONES[i % 3]} for i in range(n)]
    tasks = [{"id": f"T{i:019d}", "contactId": contacts[i % n]["id"], "title": f"t{i}"} for i in range(2 * n)]
    notes = [{"id": f"N{i:019d}", "contactId": contacts[i % n]["id"], "body": f"n{i}"} for i in range(n)]
    return {"tokens": [], "locations": {LOC: {"contacts": contacts, "tasks": tasks, "notes": notes}}}


def scanned_duplicate(store: GHLStore, email: Any, phone: Any, exclude: str | None) -> tuple[str, str] | None:
    """The scan find_duplicate used to make: the first contact, in the location's order, sharing the email, else
    the phone."""
    for name, key_of, wanted in (("email", email_key, email_key(email)), ("phone", phone_key, phone_key(phone))):
        for contact in store.location(LOC).contacts.values():
            if wanted is not None and contact["id"] != exclude and key_of(contact.get(name)) == wanted:
                return contact["id"], name
    return None


def scanned_items(store: GHLStore, kind: str, contact_id: str) -> list[str]:
    return [i for i, item in getattr(store.location(LOC), kind).items() if item.get("contactId") == contact_id]


ghl_ops = st.lists(st.tuples(st.sampled_from(["create", "email", "phone", "delete", "task", "untask", "note"]),
                             st.integers(0, 10_000), st.sampled_from(EMAILS), st.sampled_from(PHONES)),
                   min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ghl_ops)
def test_ghl_duplicates_and_items_follow_every_write(ops: list[tuple[str, int, Any, Any]]) -> None:
    store = GHLStore(ghl_fixture(6), seed=1, clock=FakeClock(BASE))
    loc = store.location(LOC)
    store.find_duplicate(loc, EMAILS[0], None)  # both indexes built before the writes
    store.items(LOC, "tasks", "Wr" + "0" * 18)
    store.items(LOC, "notes", "Wr" + "0" * 18)
    for kind, pick, email, phone in ops:
        ids = list(loc.contacts)
        target = ids[pick % len(ids)] if ids else None
        if kind == "create" or target is None:
            store.create_contact(LOC, {k: v for k, v in (("email", email), ("phone", phone)) if v is not None})
        elif kind in ("email", "phone"):
            store.update_contact(loc.contacts[target], {kind: email if kind == "email" else phone})
        elif kind == "delete":
            store.delete_contact(target)
        elif kind == "untask" and (owned := scanned_items(store, "tasks", target)):
            store.delete_item(LOC, "tasks", owned[pick % len(owned)])
        elif kind in ("task", "note"):
            store.create_item(LOC, kind + "s", target, {"title": "x"})
        for probe_email in EMAILS:
            for probe_phone in PHONES:
                found = store.find_duplicate(loc, probe_email, probe_phone, exclude=target)
                assert (None if found is None else (found[0]["id"], found[1])) == \
                    scanned_duplicate(store, probe_email, probe_phone, target)
        for contact_id in [*loc.contacts, target or ""]:
            for items in ("tasks", "notes"):
                assert [i["id"] for i in store.items(LOC, items, contact_id)] == \
                    scanned_items(store, items, contact_id)
    remaining = {item["contactId"] for kind in (loc.tasks, loc.notes) for item in kind.values()}
    assert remaining <= set(loc.contacts)  # a deleted contact took its tasks and notes with it


te_ops = st.lists(st.tuples(st.sampled_from(["assign", "unassign"]), st.integers(0, 1),
                            st.lists(st.sampled_from([f"m{i}@example.com" for i in range(5)] + ["M1@EXAMPLE.com"]),
                                     max_size=3)), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(te_ops)
def test_tinyemail_membership_follows_every_assign_and_unassign(ops: list[tuple[str, int, list[str]]]) -> None:
    customers = [{"email": f"m{i}@example.com", "status": "Subscribed"} for i in range(5)]
    lists = [{"id": "list-a", "name": "A", "members": ["m0@example.com", "m1@example.com"]},
             {"id": "list-b", "name": "B", "members": []}]
    store = TinyEmailStore({"apiKeys": [], "customers": customers, "lists": lists}, clock=FakeClock(BASE))
    reference = {item["id"]: list(item["members"]) for item in store.lists}
    for kind, which, emails in ops:
        item = store.lists[which]
        members = reference[item["id"]]
        if kind == "assign":
            store.assign(item, emails)
            for email in emails:  # the scan: each once, by email key, in the order they came
                if email.strip().lower() not in {m.strip().lower() for m in members}:
                    members.append(store.stored_email(email))
        else:
            store.unassign(item, emails)
            gone = {e.strip().lower() for e in emails}
            members[:] = [m for m in members if m.strip().lower() not in gone]
        assert {i["id"]: i["members"] for i in store.lists} == reference
