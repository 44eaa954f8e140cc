"""In-memory TinyEmail account of the sandbox: customers keyed by email, and lists of their emails.

A customer has no id: it is found by its email, normalised as `ASSUMPTIONS` says (trimmed, lower-cased),
while the stored email stays as given. "Contacts" and "audiences" are both views of the same lists; a
list holds member emails in insertion order, each customer at most once.

Writes are upserts. `check_members` validates a whole batch first (a 400 changes nothing), then
`TinyEmailStore.upsert` merges each member into the stored customer with `merge_customer`: omitted
fields stay, `tags` replaces, `null` clears a field, read-only fields are ignored, and a move to
`Unsubscribed` stamps `unsubscribedAt` from the injected clock. The same email twice in one batch is
created once and then updated.

`to_fixture()` gives the current state in the fixture's `tinyemail` shape; `reset()` reloads the
fixture as it was given.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
import uuid
from typing import Any

from contact_recon.sandbox.common import Clock, now_iso
from contact_recon.systems.tinyemail.contract import (
    ASSUMPTIONS,
    READ_ONLY_FIELDS,
    STATUSES,
    STRING_FIELDS,
    WRITABLE_FIELDS,
    email_key,
)

Customer = dict[str, Any]
_EMAIL_LOOKS_VALID = re.compile(r"^[^@\s]+@[^@\s]+$")


def looks_like_email(value: Any) -> bool:
    return isinstance(value, str) and bool(_EMAIL_LOOKS_VALID.match(value.strip()))


# --- validation ----------------------------------------------------------------------------------

def check_members(members: Any, where: str, *, capped: bool = True) -> str | None:
    """The 400 message for a batch of customers sent as `where` (e.g. `updateMembers`), or None."""
    if not isinstance(members, list):
        return f"{where} must be an array of customers"
    if capped and ASSUMPTIONS.max_members_per_call < len(members):
        return f"{where} holds {len(members)} members; at most {ASSUMPTIONS.max_members_per_call} a call"
    for index, member in enumerate(members):
        problem = check_member(member)
        if problem is not None:
            return f"{where}[{index}]{problem}"
    return None


def check_member(member: Any) -> str | None:
    """What is wrong with one customer sent for an upsert (a suffix for its path), or None."""
    if not isinstance(member, dict):
        return " must be a customer object"
    if not looks_like_email(member.get("email")):
        return ".email is missing or not a valid email address"
    for key, value in member.items():
        problem = _check_field(key, value)
        if problem is not None:
            return f".{key} {problem}"
    return None


def _check_field(key: str, value: Any) -> str | None:
    if key in STRING_FIELDS:
        ok = isinstance(value, str) or (value is None and ASSUMPTIONS.null_clears_field)
        return None if ok else "must be a string" + (" or null" if ASSUMPTIONS.null_clears_field else "")
    if key == "tags":
        ok = isinstance(value, list) and all(isinstance(tag, str) for tag in value)
        return None if ok else "must be an array of strings"
    if key == "status":
        return None if value in STATUSES else f"must be one of {' | '.join(STATUSES)}"
    if key in READ_ONLY_FIELDS:
        return None if ASSUMPTIONS.ignore_read_only_fields else "is read-only"
    if key == "email" or not ASSUMPTIONS.reject_unknown_fields:
        return None
    return "is not a customer field"


# --- merging -------------------------------------------------------------------------------------

def merge_customer(existing: Customer | None, member: Customer, now: str) -> Customer:
    """The stored customer after upserting `member` (already checked) at time `now` (ISO 8601)."""
    merged = _base(existing, member)
    for key, value in member.items():
        if key == "email" or key in READ_ONLY_FIELDS or key not in WRITABLE_FIELDS:
            continue  # identity stays; read-only ignored; unknown only reaches here when allowed
        if value is None:
            merged.pop(key, None)
        elif key == "tags" and not ASSUMPTIONS.tags_replace:
            merged["tags"] = [*merged.get("tags", []), *(t for t in value if t not in merged.get("tags", []))]
        else:
            merged[key] = list(value) if key == "tags" else value
    if existing is None or not ASSUMPTIONS.omitted_fields_unchanged:
        merged.setdefault("status", ASSUMPTIONS.default_status)
        merged.setdefault("tags", [])
    _stamp_unsubscribe(merged, existing, member, now)
    return merged


def _base(existing: Customer | None, member: Customer) -> Customer:
    if existing is None:
        return {"email": member["email"]}
    if ASSUMPTIONS.omitted_fields_unchanged:
        return copy.deepcopy(existing)
    kept = {k: v for k, v in existing.items() if k in READ_ONLY_FIELDS}
    return {"email": existing["email"], **kept}


def _stamp_unsubscribe(merged: Customer, existing: Customer | None, member: Customer, now: str) -> None:
    """`unsubscribedAt` is present only while unsubscribed; it is stamped when the status is set to it."""
    if merged.get("status") != "Unsubscribed":
        merged.pop("unsubscribedAt", None)
        return
    before = existing or {}
    if before.get("status") == "Unsubscribed" and before.get("unsubscribedAt") \
            and ASSUMPTIONS.keep_unsubscribed_at_on_repeat:
        merged["unsubscribedAt"] = before["unsubscribedAt"]
    elif "status" in member:
        merged["unsubscribedAt"] = now


# --- the store -----------------------------------------------------------------------------------

class TinyEmailStore:
    """Customers and lists of one sandbox TinyEmail account, loaded from the fixture's `tinyemail` part."""

    def __init__(self, fixture_part: dict[str, Any] | None, *, clock: Clock = time.time, seed: int = 0,
                 owned: bool = False):
        """`owned`: the caller lets go of `fixture_part`, so the store serves those objects themselves."""
        self._loaded = json.dumps(fixture_part or {})  # for `reset`: JSON text weighs less than a copy of the objects
        self._clock, self._seed = clock, seed
        self.reset(fixture_part if owned else None)

    def reset(self, fixture_part: dict[str, Any] | None = None) -> None:
        """Back to the loaded fixture; from `fixture_part` itself when given (the objects become the store's)."""
        part = fixture_part if fixture_part is not None else json.loads(self._loaded)
        self._rng = random.Random(self._seed)
        self.api_keys: list[str] = list(part.get("apiKeys") or [])
        self.customers: list[Customer] = list(part.get("customers") or [])
        self._by_email: dict[str, Customer] = {}
        for customer in self.customers:  # on duplicate emails (bad data, loaded as given) the first wins
            if isinstance(customer.get("email"), str):
                self._by_email.setdefault(email_key(customer["email"]), customer)
        self.lists: list[dict[str, Any]] = [self._load_list(item) for item in part.get("lists") or []]
        # each list's member keys, built on its first assign or unassign and kept current by both: without it
        # every assign read the whole list (a third of a second a call at a million members)
        self._present: dict[str, set[str | None]] = {}

    def _load_list(self, item: dict[str, Any]) -> dict[str, Any]:
        item.setdefault("id", self._new_uuid())
        item.setdefault("members", [])
        return item

    def _new_uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def to_fixture(self) -> dict[str, Any]:
        return copy.deepcopy({"apiKeys": self.api_keys, "customers": self.customers, "lists": self.lists})

    # customers

    def customer(self, email: str) -> Customer | None:
        """A copy of the customer with this email, or None."""
        found = self._by_email.get(email_key(email))
        return copy.deepcopy(found) if found is not None else None

    def upsert(self, members: list[Customer]) -> tuple[int, int]:
        """Merge checked members into the customers; (created, updated) counts."""
        created = updated = 0
        now = now_iso(self._clock)
        for member in members:
            key = email_key(member["email"])
            existing = self._by_email.get(key)
            merged = merge_customer(existing, member, now)
            if existing is None:
                self.customers.append(merged)
                self._by_email[key] = merged
                created += 1
            else:
                existing.clear()
                existing.update(merged)  # in place: keeps its position in `customers`
                updated += 1
        return created, updated

    def stored_email(self, email: str) -> str:
        found = self._by_email.get(email_key(email))
        return found["email"] if found is not None else email

    # lists

    def list_by_id(self, list_id: str) -> dict[str, Any] | None:
        return next((item for item in self.lists if item.get("id") == list_id), None)

    def rename_list(self, list_id: str, name: str) -> dict[str, Any] | None:
        """What a person does in TinyEmail's app (the API has no rename): the list, renamed, or None."""
        item = self.list_by_id(list_id)
        if item is not None:
            item["name"] = name
        return item

    def create_list(self, name: str) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self._new_uuid(), "name": name, "members": []}
        self.lists.append(item)
        return item

    def assign(self, item: dict[str, Any], emails: list[str]) -> None:
        """Add customers (by email) to a list, each once, keeping the list's order."""
        present = self._member_keys(item)
        for email in emails:
            key = email_key(email)
            if key not in present:
                item["members"].append(self.stored_email(email))
                present.add(key)

    def unassign(self, item: dict[str, Any], emails: list[str]) -> None:
        """Remove customers (by email) from a list; emails not in it are ignored."""
        present = self._member_keys(item)
        gone = {email_key(e) for e in emails} & present
        if not gone:
            return  # none of them is a member: the list stays as it is, unread
        item["members"] = [e for e in item["members"]
                           if not (isinstance(e, str) and email_key(e) in gone)]
        present -= gone

    def _member_keys(self, item: dict[str, Any]) -> set[str | None]:
        """The list's member keys (`_present`), by list id (`item` is one of `self.lists`: ids are unique)."""
        keys = self._present.get(item["id"])
        if keys is None:
            keys = self._present[item["id"]] = {email_key(e) for e in item["members"] if isinstance(e, str)}
        return keys

    def page_of_members(self, item: dict[str, Any], page: int, size: int) -> tuple[list[Customer], bool]:
        """Page `page` (1-indexed) of a list's customers, in list order, and whether it is the last."""
        emails = item["members"][(page - 1) * size: page * size]
        # a member without a customer (bad fixture data, loaded as given) shows as its email only
        content = [(isinstance(e, str) and self.customer(e)) or {"email": e} for e in emails]
        return content, page * size >= len(item["members"])
