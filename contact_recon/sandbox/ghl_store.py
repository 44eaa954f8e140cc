"""In-memory state of the GHL sandbox: locations holding contacts, tasks and notes, plus OAuth grants.

Loading (../shared/fixtures/FORMAT.md): each location keeps its contacts, tasks and notes in the API's
own field names, exactly as given; a missing id is generated from the seeded generator (20
alphanumerics), a missing contact `locationId` becomes the location key and a missing
`dateAdded`/`dateUpdated` the load time. Bad data (odd emails, phones in any format, duplicates) is kept.

Contacts:
- identity for duplicates and upsert: the email trimmed and lower-cased, else the phone's digits;
- a change to any stored field (tags and DND included) sets `dateUpdated`; a write that changes
  nothing leaves it alone; task and note writes never touch the contact;
- `tags` given to an update replaces the whole list; `add_tags`/`remove_tags` edit it.

Custom fields (NOTES.md, apps/locations.json): each location defines its contact custom fields (`customFields`
of the fixture's location, CustomFieldSchema items; without them `DEFAULT_CUSTOM_FIELDS` are seeded, each with
an id made from the location and the fieldKey), served by `GET /locations/{id}/customFields`. A write's
`customFields` items (`{"id" or "key", "field_value"}`, customFieldsInput*Schema) are checked against them: an
id the location does not define, or a key that names none, is refused with 422 (the spec lists 422 and NOTES.md
says nothing more); a `key` is the fieldKey, with or without its `contact.` prefix. Items are merged into the
contact's custom fields by id (an empty value removes one), and reads show them as `{"id", "value"}`
(CustomFieldSchema of apps/contacts.json).

Search (`search_contacts`): filter the location's contacts, sort them by the requested keys plus the
id (so equal dates still give a total order), then cut a page either by offset (`page`) or after the
cursor (`searchAfter` = the sort values of the last contact seen, as returned on every contact).
`GHLStore.search_contacts` gives the same answers without sorting on every page (a 100,000-contact
listing would otherwise re-sort everything 200 times):
- each location keeps one `ContactOrder` per sort it was asked for: the order keys (sort values + id)
  in a sorted list, built on the first search with that sort and then kept current by every contact
  write (`Location.touch`/`forget`: the old key is removed and the new one inserted with bisect);
- a search with a query or filters keeps its matching keys (in order) in a small per-location cache
  keyed by (sort, query, filters) (`HITS_CACHED` entries); any contact write empties it;
- a page is then a bisect (cursor) or a slice (offset) of those keys: O(log n + page) per page.

Search lag (NOTES.md: results lag writes by a few seconds): search reads an index of its own
(`Location.indexed`), not the store. With `search_lag_s` > 0 every contact write (create, update, tags,
delete) reaches that index `search_lag_s` seconds later (`Location.catch_up`, run before each search):
until then search shows the contact as it was (a copy), or not at all when it is new, or still after it
was deleted. Everything else reads the store at once: `GET /contacts/{id}`, the duplicate check of a
create or upsert (400 with `meta.contactId`), `GET /contacts/search/duplicate`. With 0 (`lag_s` of
`set_search`) the index is the store itself.

Paging faults (`set_search(paging={location: mode})`, to provoke what a client must survive): `stall`
ignores `searchAfter` (every page is the first one, the cursor never moves); `repeat` answers, for a
cursor, the page before the one asked for in reverse order (the cursor moves, but back: no new id).
`normal` undoes either.

OAuth: a code (minted by the sandbox-only admin route) is single-use and lives 10 minutes; an access
token lives 86,399 s; a refresh token lives a year and is single-use: every refresh returns a new
pair and the old refresh token is rejected from then on.

Agency installs (apps/oauth.json, NOTES.md): a code minted for a company (`userType` Company) trades for a
Company pair (no `locationId`, the company's `approvedLocations`); the company's installed locations are
kept per company (`installs`, changed by the sandbox-only install route, as GHL's INSTALL / UNINSTALL
would), listed by `installed_locations` and the only ones `location_token` mints a token for (an access
token only, no refresh token, living as long as any access token).
"""

from __future__ import annotations

import bisect
import collections
import copy
import hashlib
import json
import random
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from contact_recon.sandbox.common import Clock, iso_from_epoch, new_id, now_iso

ACCESS_TOKEN_TTL_S = 86_399
REFRESH_TOKEN_TTL_S = 365 * 86_400
CODE_TTL_S = 600
PAGE_WINDOW = 10_000
PAGING_MODES = ("normal", "stall", "repeat")
HITS_CACHED = 16  # filtered searches whose matches a location keeps (per contact-data version)
SORT_FIELDS = ("dateAdded", "dateUpdated")
OPERATORS = ("eq", "not_eq", "contains", "not_contains", "exists", "not_exists", "range")
RANGE_KEYS = ("gt", "gte", "lt", "lte")
FIELD_ALIASES = {"address": "address1", "contactName": "name"}
QUERY_FIELDS = ("firstName", "lastName", "email", "companyName", "phone")
DERIVED_LOWER = {"emailLowerCase": "email", "firstNameLowerCase": "firstName", "lastNameLowerCase": "lastName"}
_DOB_PATTERNS = (
    re.compile(r"^(?P<y>\d{4})[/\-._](?P<m>\d{1,2})[/\-._](?P<d>\d{1,2})$"),
    re.compile(r"^(?P<m>\d{1,2})[/\-._](?P<d>\d{1,2})[/\-._](?P<y>\d{4})$"),
)


class NotFound(Exception):
    """An id that does not exist (the API answers 400 "<Kind> with id X not found")."""


class InvalidRequest(Exception):
    """A request whose content the API rejects with 422; `messages` are class-validator style."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


class OAuthError(Exception):
    """A token request the API rejects; carries the HTTP status and the OAuth error code."""

    def __init__(self, status: int, message: str, error: str):
        super().__init__(message)
        self.status, self.message, self.error = status, message, error


@dataclass(frozen=True)
class TokenInfo:
    location_id: str
    scopes: frozenset[str]
    expires_at: float | None = None  # None: a fixture token (private integration), never expires
    client_id: str | None = None
    company_id: str | None = None  # set on a Company token, whose location_id is ""


@dataclass
class Grant:
    client_id: str
    location_id: str
    scopes: tuple[str, ...]
    expires_at: float
    company_id: str | None = None  # a Company grant (agency install): location_id is ""


@dataclass(frozen=True)
class SortKey:
    field: str
    desc: bool


OrderKey = tuple[Any, ...]  # ascending: the signed sort values, then the id (see `_order_key`)


class ContactOrder:
    """One location's contacts in the order of one sort, kept current on writes (module docstring)."""

    def __init__(self, sort: tuple[SortKey, ...], contacts: Iterable[dict[str, Any]]):
        self.sort = sort
        self.key_of = {c["id"]: contact_order_key(c, sort) for c in contacts}
        self.keys: list[OrderKey] = sorted(self.key_of.values())

    def put(self, contact: dict[str, Any]) -> None:
        """Insert a new contact, or move an edited one to its new place."""
        key = contact_order_key(contact, self.sort)
        old = self.key_of.get(contact["id"])
        if old == key:
            return  # its sort values did not change: it keeps its place
        if old is not None:
            self.remove(contact["id"])
        self.key_of[contact["id"]] = key
        bisect.insort(self.keys, key)

    def remove(self, contact_id: str) -> None:
        key = self.key_of.pop(contact_id, None)
        if key is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]


@dataclass
class Location:
    id: str
    allow_duplicates: bool = False
    custom_fields: list[dict[str, Any]] = field(default_factory=list)  # definitions (CustomFieldSchema)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of the fixture, kept as given
    # search indexes (module docstring): the contacts search sees, one order per sort, the cached hits of
    # filtered searches, and the writes not yet indexed (due time, contact id) while a lag is on
    indexed: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    orders: dict[tuple[SortKey, ...], ContactOrder] = field(default_factory=dict, repr=False)
    hits: dict[tuple[Any, ...], list[OrderKey]] = field(default_factory=dict, repr=False)
    pending: collections.deque[tuple[float, str]] = field(default_factory=collections.deque, repr=False)
    lag_s: float = 0.0
    paging: str = "normal"  # "normal" | "stall" | "repeat" (module docstring)
    # the duplicate check's index, built on its first use and then kept by every create, email/phone edit and
    # delete: (field, key) -> contact ids, and each contact's place in `contacts` (the scan it replaces answered
    # the first in that order; a scan of a million contacts took a second a POST /contacts/)
    dup_ids: dict[tuple[str, str], set[str]] | None = field(default=None, repr=False)
    dup_place: dict[str, int] = field(default_factory=dict, repr=False)
    dup_next: int = field(default=0, repr=False)  # the next place: never reused (a delete shrinks dup_place)

    def duplicate_ids(self, name: str, wanted: str) -> list[str]:
        """The ids of the contacts whose `name` ("email" | "phone") has the key `wanted`, in `contacts` order."""
        if self.dup_ids is None:
            self.dup_ids = {}
            for contact in self.contacts.values():
                self.dup_add(contact)
        return sorted(self.dup_ids.get((name, wanted), ()), key=self.dup_place.__getitem__)

    def dup_add(self, contact: dict[str, Any]) -> None:
        """Index a new or just edited contact (nothing to do before the index is first built)."""
        if self.dup_ids is None:
            return
        if contact["id"] not in self.dup_place:
            self.dup_place[contact["id"]], self.dup_next = self.dup_next, self.dup_next + 1
        for key in _dup_keys(contact):
            self.dup_ids.setdefault(key, set()).add(contact["id"])

    def dup_remove(self, contact: dict[str, Any], *, deleted: bool = False) -> None:
        """Unindex a contact about to be edited (it keeps its place) or deleted."""
        if self.dup_ids is None:
            return
        for key in _dup_keys(contact):
            self.dup_ids.get(key, set()).discard(contact["id"])
        if deleted:
            self.dup_place.pop(contact["id"], None)

    def before_change(self, contact_id: str) -> None:
        """A contact is about to change in place: while a lag is on, search goes on seeing it as it was. The index
        holds the contacts themselves and copies one only here, when it is written (copy on write): a copy of every
        contact doubled the sandbox's memory (gigabytes at a million contacts)."""
        contact = self.contacts.get(contact_id)
        if self.lag_s > 0 and contact is not None and self.indexed.get(contact_id) is contact:
            self.indexed[contact_id] = copy.deepcopy(contact)

    def touch(self, contact: dict[str, Any], now: float = 0.0) -> None:
        """A contact was created or changed: search sees it now, or `lag_s` after `now`."""
        self._queue(contact["id"], now)

    def forget(self, contact_id: str, now: float = 0.0) -> None:
        """A contact was deleted: search stops showing it now, or `lag_s` after `now`."""
        self._queue(contact_id, now)

    def _queue(self, contact_id: str, now: float) -> None:
        if self.lag_s <= 0:
            self._index(contact_id)
        else:
            self.pending.append((now + self.lag_s, contact_id))

    def catch_up(self, now: float) -> None:
        """Index the writes whose lag has passed."""
        while self.pending and self.pending[0][0] <= now:
            self._index(self.pending.popleft()[1])

    def set_lag(self, lag_s: float) -> None:
        """Search lags writes by `lag_s` from now on (pending writes are indexed first)."""
        while self.pending:
            self._index(self.pending.popleft()[1])
        self.lag_s = lag_s
        # the index holds the records themselves; with a lag, a record about to change in place is copied first
        # (`before_change`), so search sees the edit only when it is indexed
        self.indexed = dict(self.contacts)
        self.orders.clear()
        self.hits.clear()

    def _index(self, contact_id: str) -> None:
        self.hits.clear()
        contact = self.contacts.get(contact_id)
        if contact is None:  # deleted
            self.indexed.pop(contact_id, None)
            for order in self.orders.values():
                order.remove(contact_id)
            return
        self.indexed[contact_id] = contact
        for order in self.orders.values():
            order.put(contact)

    def order(self, sort: tuple[SortKey, ...]) -> ContactOrder:
        if sort not in self.orders:
            self.orders[sort] = ContactOrder(sort, self.indexed.values())
        return self.orders[sort]


@dataclass(frozen=True)
class SearchQuery:
    location_id: str
    page_limit: int
    page: int = 1
    search_after: list[Any] | None = None
    query: str | None = None
    filters: list[dict[str, Any]] = field(default_factory=list)
    sort: tuple[SortKey, ...] = (SortKey("dateAdded", True),)


# ----------------------------------------------------------------------------------------- helpers


def email_key(value: Any) -> str | None:
    return value.strip().lower() or None if isinstance(value, str) else None


def phone_key(value: Any) -> str | None:
    return re.sub(r"\D", "", value) or None if isinstance(value, str) else None


def _dup_keys(contact: dict[str, Any]) -> list[tuple[str, str]]:
    keys = (("email", email_key(contact.get("email"))), ("phone", phone_key(contact.get("phone"))))
    return [(name, key) for name, key in keys if key is not None]


@lru_cache(maxsize=200_000)
def iso_ms(value: str) -> int | None:
    """Epoch milliseconds of an ISO date or a plain YYYY-MM-DD, None when it is neither."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def to_ms(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    return iso_ms(value) if isinstance(value, str) else None


def normalize_dob(value: Any) -> str | None:
    """A birth date in any of the documented formats as YYYY-MM-DD; InvalidRequest when unreadable."""
    if value is None or value == "":
        return None
    text = value.strip() if isinstance(value, str) else ""
    for pattern in _DOB_PATTERNS:
        if m := pattern.match(text):
            return datetime(int(m["y"]), int(m["m"]), int(m["d"])).strftime("%Y-%m-%d")
    if text and iso_ms(text) is not None:
        return text[:10]
    raise InvalidRequest(["dateOfBirth must be a valid date"])


def _stable_id(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------- views


def contact_view(contact: dict[str, Any]) -> dict[str, Any]:
    """A stored contact as GET /contacts/{id} shows it (null fields dropped, lower-case copies added)."""
    out = {k: v for k, v in contact.items() if v is not None}
    for derived, source in DERIVED_LOWER.items():
        if isinstance(out.get(source), str):
            out[derived] = out[source].lower()
    full = " ".join(p for p in (out.get("firstName"), out.get("lastName")) if isinstance(p, str) and p)
    if full:
        out["fullNameLowerCase"] = full.lower()
    out.setdefault("tags", [])
    out.setdefault("customFields", [])
    out.setdefault("dnd", False)
    return out


def search_view(contact: dict[str, Any], sort: Iterable[SortKey]) -> dict[str, Any]:
    """A contact as POST /contacts/search shows it: `address`, `dateOfBirth` in epoch ms, `searchAfter`."""
    out = contact_view(contact)
    if "address1" in out:
        out["address"] = out.pop("address1")
    dob = out.pop("dateOfBirth", None)
    if isinstance(dob, str) and (ms := iso_ms(dob)) is not None:
        out["dateOfBirth"] = ms
    out["searchAfter"] = [_sort_value(contact, key.field) for key in sort] + [contact["id"]]
    return out


# ----------------------------------------------------------------------------------------- filters


def field_value(contact: dict[str, Any], name: str) -> Any:
    """The value a search filter sees for `name` (aliases, lower-case copies and dotted paths)."""
    name = FIELD_ALIASES.get(name, name)
    if name in DERIVED_LOWER:
        lower = contact.get(DERIVED_LOWER[name])
        return lower.lower() if isinstance(lower, str) else lower
    value: Any = contact
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _scalar_eq(actual: Any, wanted: Any) -> bool:
    if isinstance(actual, str) and isinstance(wanted, str):
        return actual.strip().lower() == wanted.strip().lower()
    return actual == wanted and type(actual) is type(wanted)


def _eq(actual: Any, wanted: Any) -> bool:
    wanted_list = wanted if isinstance(wanted, list) else [wanted]
    actual_list = actual if isinstance(actual, list) else [actual]
    return any(_scalar_eq(a, w) for a in actual_list for w in wanted_list)


def _contains(actual: Any, wanted: Any) -> bool:
    needle = str(wanted).lower()
    actual_list = actual if isinstance(actual, list) else [actual]
    return any(isinstance(a, str) and needle in a.lower() for a in actual_list)


def _exists(actual: Any) -> bool:
    return actual not in (None, "", [], {})


def _in_range(actual: Any, bounds: dict[str, Any]) -> bool:
    value = to_ms(actual)
    if value is None:
        return False
    checks = {"gt": value.__gt__, "gte": value.__ge__, "lt": value.__lt__, "lte": value.__le__}
    return all(checks[k](to_ms(v)) for k, v in bounds.items())  # type: ignore[arg-type]  # None: not in range


def filter_errors(filters: Any, prefix: str = "filters") -> list[str]:
    """Why the filter list is unusable (empty when it is fine); groups nest as {group, filters}."""
    if not isinstance(filters, list):
        return [f"{prefix} must be an array"]
    errors: list[str] = []
    for i, item in enumerate(filters):
        errors += _one_filter_errors(item, f"{prefix}.{i}")
    return errors


def _one_filter_errors(item: Any, path: str) -> list[str]:
    if not isinstance(item, dict):
        return [f"{path} must be an object"]
    if "group" in item:
        if item["group"] not in ("AND", "OR"):
            return [f"{path}.group must be one of the following values: AND, OR"]
        return filter_errors(item.get("filters"), f"{path}.filters")
    if not isinstance(item.get("field"), str) or not item["field"]:
        return [f"{path}.field must be a string"]
    operator = item.get("operator")
    if operator not in OPERATORS:
        return [f"{path}.operator must be one of the following values: {', '.join(OPERATORS)}"]
    if operator == "range":
        bounds = item.get("value")
        if not isinstance(bounds, dict) or not bounds or set(bounds) - set(RANGE_KEYS):
            return [f"{path}.value must be an object with any of {', '.join(RANGE_KEYS)}"]
        if any(to_ms(v) is None for v in bounds.values()):
            return [f"{path}.value bounds must be ISO 8601 dates or numbers"]
    elif operator not in ("exists", "not_exists") and "value" not in item:
        return [f"{path}.value should not be empty"]
    return []


def matches(contact: dict[str, Any], item: dict[str, Any]) -> bool:
    """Whether `contact` passes one (already validated) filter or filter group."""
    if "group" in item:
        results = (matches(contact, sub) for sub in item["filters"])
        return all(results) if item["group"] == "AND" else any(results)
    actual = field_value(contact, item["field"])
    op, wanted = item["operator"], item.get("value")
    if op == "eq":
        return _eq(actual, wanted)
    if op == "not_eq":
        return not _eq(actual, wanted)
    if op == "contains":
        return _contains(actual, wanted)
    if op == "not_contains":
        return not _contains(actual, wanted)
    if op == "exists":
        return _exists(actual)
    if op == "not_exists":
        return not _exists(actual)
    return _in_range(actual, wanted or {})


def matches_query(contact: dict[str, Any], query: str) -> bool:
    """Free text: a case-insensitive substring of the name, email, company or phone (or its digits)."""
    needle = query.strip().lower()
    if not needle:
        return True
    texts = [contact.get(f) for f in QUERY_FIELDS]
    texts.append(" ".join(str(contact.get(f) or "") for f in ("firstName", "lastName")))
    if any(isinstance(t, str) and needle in t.lower() for t in texts):
        return True
    digits = re.sub(r"\D", "", needle)
    return len(digits) >= 3 and digits in (phone_key(contact.get("phone")) or "")


# ------------------------------------------------------------------------------------------ search


def _sort_value(contact: dict[str, Any], name: str) -> int:
    return to_ms(contact.get(name)) or 0


def _order_key(values: list[Any], sort: tuple[SortKey, ...]) -> tuple[Any, ...]:
    """Ascending tuple for the sort values + id (descending keys are negated)."""
    signed = [-int(v) if key.desc else int(v) for v, key in zip(values, sort, strict=False)]
    return (*signed, str(values[-1]))


def cursor_errors(search_after: Any, sort: tuple[SortKey, ...]) -> list[str]:
    want = len(sort) + 1
    if not isinstance(search_after, list) or len(search_after) != want:
        return [f"searchAfter must be an array of {want} values, as returned in a contact's searchAfter"]
    values, last = search_after[:-1], search_after[-1]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values) or not isinstance(last, str):
        return ["searchAfter must hold the sort values (numbers) followed by the contact id"]
    return []


def contact_order_key(contact: dict[str, Any], sort: tuple[SortKey, ...]) -> OrderKey:
    return _order_key([_sort_value(contact, k.field) for k in sort] + [contact["id"]], sort)


def search_matches(contact: dict[str, Any], q: SearchQuery) -> bool:
    return (not q.query or matches_query(contact, q.query)) and all(matches(contact, f) for f in q.filters)


def page_start(keys: list[OrderKey], q: SearchQuery) -> int:
    """Where the page of `q` starts in the sorted keys: after the cursor, else at the page's offset."""
    if q.search_after is not None:
        return bisect.bisect_right(keys, _order_key(q.search_after, q.sort))
    return (q.page - 1) * q.page_limit


def search_contacts(contacts: Iterable[dict[str, Any]], q: SearchQuery) -> tuple[list[dict[str, Any]], int]:
    """The page of matching contacts for `q` (in search view) and the number of all matches.

    The reference answer (sorts every time); `GHLStore.search_contacts` gives the same from its indexes.
    """
    keyed = sorted(((contact_order_key(c, q.sort), c) for c in contacts if search_matches(c, q)),
                   key=lambda pair: pair[0])
    start = page_start([k for k, _ in keyed], q)
    page = [search_view(c, q.sort) for _, c in keyed[start : start + q.page_limit]]
    return page, len(keyed)


# ------------------------------------------------------------------------------------------- store


class GHLStore:
    """The sandbox's state; every method runs without awaiting, so each mutation is atomic."""

    def __init__(self, fixture_part: dict[str, Any] | None, *, seed: int = 0, clock: Clock = time.time,
                 search_lag_s: float = 0.0, owned: bool = False):
        """`owned`: the caller lets go of `fixture_part`, so the store serves those objects themselves (not a
        copy: at a million contacts both at once weighed gigabytes more)."""
        # kept as JSON text for `reset`: a deep copy of the objects weighed about as much as the live data again
        self._fixture = json.dumps(fixture_part or {})
        self.seed, self.clock, self.search_lag_s = seed, clock, search_lag_s
        self.reset(fixture_part if owned else None)

    # -- loading

    def reset(self, fixture_part: dict[str, Any] | None = None) -> None:
        """Back to the loaded fixture (ids generated again from the same seed); from `fixture_part` itself when
        given (the objects become the store's)."""
        self.rng = random.Random(self.seed)
        self.trace_rng = random.Random(f"trace-{self.seed}")
        fx = fixture_part if fixture_part is not None else json.loads(self._fixture)
        self.oauth_clients: list[dict[str, Any]] = fx.get("oauthClients") or []
        self.fixture_tokens: list[dict[str, Any]] = fx.get("tokens") or []
        self.tokens = {
            t["token"]: TokenInfo(t["locationId"], frozenset(t.get("scopes") or [])) for t in self.fixture_tokens
        }
        self.codes: dict[str, Grant] = {}
        self.refresh_tokens: dict[str, Grant] = {}
        self.installs: dict[str, dict[str, float]] = {}  # company -> installed location -> installed at (epoch)
        self.locations: dict[str, Location] = {}
        self.contact_location: dict[str, str] = {}
        self._by_contact: dict[tuple[str, str], dict[str, list[str]]] = {}  # (location, kind) -> contact -> ids
        for location_id, raw in (fx.get("locations") or {}).items():
            self._load_location(location_id, raw)

    def _load_location(self, location_id: str, raw: dict[str, Any]) -> None:
        now = self.now()
        loc = Location(location_id, bool(raw.get("allowDuplicateContacts", False)))
        loc.custom_fields = custom_field_definitions(location_id, raw.get("customFields"))
        loc.extra = {k: v for k, v in raw.items()
                     if k not in ("allowDuplicateContacts", "contacts", "tasks", "notes", "customFields")}
        for contact in raw.get("contacts") or []:
            contact.setdefault("id", new_id(self.rng))
            contact.setdefault("locationId", location_id)
            contact.setdefault("dateAdded", now)
            contact.setdefault("dateUpdated", contact["dateAdded"])
            loc.contacts[contact["id"]] = contact
            self.contact_location[contact["id"]] = location_id
        for kind in ("tasks", "notes"):
            for i, item in enumerate(raw.get(kind) or []):
                if item.get("contactId") not in loc.contacts:
                    raise ValueError(f"ghl.locations.{location_id}.{kind}[{i}].contactId: no such contact")
                item.setdefault("id", new_id(self.rng))
                if kind == "notes":
                    item.setdefault("dateAdded", now)
                getattr(loc, kind)[item["id"]] = item
        loc.set_lag(self.search_lag_s)
        self.locations[location_id] = loc

    def to_fixture(self) -> dict[str, Any]:
        """The current data as the fixture's `ghl` part (minted OAuth tokens are not exported)."""
        locations = {
            loc.id: {
                **loc.extra,
                "allowDuplicateContacts": loc.allow_duplicates,
                "customFields": loc.custom_fields,
                "contacts": list(loc.contacts.values()),
                "tasks": list(loc.tasks.values()),
                "notes": list(loc.notes.values()),
            }
            for loc in self.locations.values()
        }
        return copy.deepcopy(
            {"oauthClients": self.oauth_clients, "tokens": self.fixture_tokens, "locations": locations}
        )

    # -- small accessors

    def now(self) -> str:
        return now_iso(self.clock)

    def new_id(self) -> str:
        return new_id(self.rng)

    def trace_id(self) -> str:
        b = bytearray(self.trace_rng.getrandbits(128).to_bytes(16, "big"))
        b[6], b[8] = (b[6] & 0x0F) | 0x40, (b[8] & 0x3F) | 0x80
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def location(self, location_id: str) -> Location:
        """The location, created empty when a token names one the fixture does not hold."""
        if location_id not in self.locations:
            self.locations[location_id] = Location(location_id, lag_s=self.search_lag_s,
                                                   custom_fields=custom_field_definitions(location_id, None))
        return self.locations[location_id]

    def set_search(self, *, lag_s: float | None = None, paging: dict[str, str] | None = None) -> dict[str, Any]:
        """Sandbox only: the search lag of every location, and paging faults by location (module docstring)."""
        if lag_s is not None:
            self.search_lag_s = lag_s
            for loc in self.locations.values():
                loc.set_lag(lag_s)
        for location_id, mode in (paging or {}).items():
            if mode not in PAGING_MODES:
                raise InvalidRequest([f"paging must be one of {', '.join(PAGING_MODES)}"])
            self.location(location_id).paging = mode
        return {"lag_s": self.search_lag_s,
                "paging": {loc.id: loc.paging for loc in self.locations.values() if loc.paging != "normal"}}

    def contact_location_id(self, contact_id: str) -> str:
        if contact_id not in self.contact_location:
            raise NotFound(f"Contact with id {contact_id} not found")
        return self.contact_location[contact_id]

    def contact(self, contact_id: str) -> dict[str, Any]:
        return self.locations[self.contact_location_id(contact_id)].contacts[contact_id]

    # -- contacts

    def find_duplicate(
        self, loc: Location, email: Any, phone: Any, exclude: str | None = None
    ) -> tuple[dict[str, Any], str] | None:
        """The first contact sharing the email, else the phone: (contact, "email"|"phone")."""
        for name, wanted in (("email", email_key(email)), ("phone", phone_key(phone))):
            if wanted is None:
                continue
            found = next((i for i in loc.duplicate_ids(name, wanted) if i != exclude), None)
            if found is not None:
                return loc.contacts[found], name
        return None

    def create_contact(self, location_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = self.now()
        customs = checked_custom_fields(self.location(location_id), fields.get("customFields"))
        contact: dict[str, Any] = {"id": self.new_id(), "locationId": location_id}
        contact.update(prepare_fields(fields))
        if customs is not None:
            contact["customFields"] = merged_custom_fields([], customs)
        contact.setdefault("tags", [])
        contact["dateAdded"] = contact["dateUpdated"] = now
        loc = self.location(location_id)
        loc.contacts[contact["id"]] = contact
        loc.dup_add(contact)
        loc.touch(contact, self.clock())
        self.contact_location[contact["id"]] = location_id
        return contact

    def update_contact(self, contact: dict[str, Any], fields: dict[str, Any]) -> bool:
        """Apply `fields` (None clears a field, `tags` replaces all, `customFields` merge by id); bump dateUpdated on a
        change."""
        customs = checked_custom_fields(self.location(self.contact_location_id(contact["id"])),
                                        fields.get("customFields"))
        prepared = prepare_fields(fields)
        if customs is not None:
            prepared["customFields"] = merged_custom_fields(contact.get("customFields") or [], customs)
        changes = {key: value for key, value in prepared.items()
                   if (value is None and key in contact) or (value is not None and contact.get(key) != value)}
        if not changes:
            return False
        self._before_change(contact)
        loc = self.locations[self.contact_location[contact["id"]]]
        rekey = "email" in changes or "phone" in changes
        if rekey:
            loc.dup_remove(contact)
        for key, value in changes.items():
            if value is None:
                del contact[key]
            else:
                contact[key] = value
        if rekey:
            loc.dup_add(contact)
        contact["dateUpdated"] = self.now()
        self._touch(contact)
        return True

    def add_tags(self, contact: dict[str, Any], tags: list[str]) -> list[str]:
        current = list(contact.get("tags") or [])
        merged = current + [t for t in dict.fromkeys(tags) if t not in current]
        if merged != current:
            self._before_change(contact)
            contact["tags"], contact["dateUpdated"] = merged, self.now()
            self._touch(contact)
        return list(contact.get("tags") or [])

    def remove_tags(self, contact: dict[str, Any], tags: list[str] | None) -> list[str]:
        """Remove `tags` (all tags when None)."""
        current = list(contact.get("tags") or [])
        kept = [] if tags is None else [t for t in current if t not in set(tags)]
        if kept != current:
            self._before_change(contact)
            contact["tags"], contact["dateUpdated"] = kept, self.now()
            self._touch(contact)
        return list(contact.get("tags") or [])

    def delete_contact(self, contact_id: str) -> None:
        """The contact and its tasks and notes (found through the per-contact index, not a scan of them all)."""
        location_id = self.contact_location[contact_id]
        loc = self.locations[location_id]
        owned = {kind: [item["id"] for item in self.items(location_id, kind, contact_id)]
                 for kind in ("tasks", "notes")}
        del self.contact_location[contact_id]
        loc.dup_remove(loc.contacts[contact_id], deleted=True)
        del loc.contacts[contact_id]
        loc.forget(contact_id, self.clock())
        for kind, ids in owned.items():
            store: dict[str, dict[str, Any]] = getattr(loc, kind)
            for item_id in ids:
                del store[item_id]
            self._by_contact[(location_id, kind)].pop(contact_id, None)

    def upsert(self, location_id: str, fields: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Update the contact matching the email, else the phone, or create one: (contact, created)."""
        loc = self.location(location_id)
        force_new = bool(fields.get("createNewIfDuplicateAllowed")) and loc.allow_duplicates
        fields = {k: v for k, v in fields.items() if k not in ("createNewIfDuplicateAllowed", "locationId")}
        found = None if force_new else self.find_duplicate(loc, fields.get("email"), fields.get("phone"))
        if found is None:
            return self.create_contact(location_id, fields), True
        self.update_contact(found[0], fields)
        return found[0], False

    def _before_change(self, contact: dict[str, Any]) -> None:
        self.locations[self.contact_location[contact["id"]]].before_change(contact["id"])

    def _touch(self, contact: dict[str, Any]) -> None:
        self.locations[self.contact_location[contact["id"]]].touch(contact, self.clock())

    def search_contacts(self, q: SearchQuery) -> tuple[list[dict[str, Any]], int]:
        """POST /contacts/search from the location's indexes: the same answer as `search_contacts`."""
        loc = self.location(q.location_id)
        loc.catch_up(self.clock())
        hits = self._sorted_hits(loc, q)
        start = page_start(hits, q)
        keys = hits[start : start + q.page_limit]
        if q.search_after is not None and loc.paging == "stall":
            keys = hits[: q.page_limit]  # the fault: searchAfter ignored, the first page again
        elif q.search_after is not None and loc.paging == "repeat":
            keys = hits[max(0, start - q.page_limit) : start][::-1]  # the fault: the page before, reversed
        return [search_view(loc.indexed[key[-1]], q.sort) for key in keys], len(hits)

    @staticmethod
    def _sorted_hits(loc: Location, q: SearchQuery) -> list[OrderKey]:
        """The order keys of the contacts matching `q`, sorted; cached until the next contact write."""
        keys = loc.order(q.sort).keys
        if not q.query and not q.filters:
            return keys  # nothing to filter: the order itself
        cache_key = (q.sort, q.query, json.dumps(q.filters, sort_keys=True))
        if cache_key not in loc.hits:
            if len(loc.hits) >= HITS_CACHED:
                del loc.hits[next(iter(loc.hits))]  # the oldest entry
            loc.hits[cache_key] = [k for k in keys if search_matches(loc.indexed[k[-1]], q)]
        return loc.hits[cache_key]

    def contacts_page(
        self, location_id: str, limit: int, query: str | None, after: tuple[int, str] | None
    ) -> tuple[list[dict[str, Any]], int]:
        """GET /contacts/ (deprecated): oldest first by (dateAdded, id), after the (ms, id) cursor."""
        rows = [c for c in self.location(location_id).contacts.values() if not query or matches_query(c, query)]
        rows.sort(key=lambda c: (_sort_value(c, "dateAdded"), c["id"]))
        if after is not None:
            keys = [(_sort_value(c, "dateAdded"), c["id"]) for c in rows]
            rows_after = rows[bisect.bisect_right(keys, after) :]
        else:
            rows_after = rows
        return rows_after[:limit], len(rows)

    # -- tasks and notes

    def items(self, location_id: str, kind: str, contact_id: str) -> list[dict[str, Any]]:
        store: dict[str, dict[str, Any]] = getattr(self.location(location_id), kind)
        index = self._by_contact.get((location_id, kind))
        if index is None:  # built once, then kept by every task/note write: a read stays O(own items)
            index = {}
            for item_id, item in store.items():
                index.setdefault(str(item.get("contactId")), []).append(item_id)
            self._by_contact[(location_id, kind)] = index
        return [store[item_id] for item_id in index.get(contact_id, ())]

    def item(self, location_id: str, kind: str, contact_id: str, item_id: str) -> dict[str, Any]:
        store: dict[str, dict[str, Any]] = getattr(self.location(location_id), kind)
        found = store.get(item_id)
        if found is None or found.get("contactId") != contact_id:
            raise NotFound(f"{'Task' if kind == 'tasks' else 'Note'} with id {item_id} not found")
        return found

    def create_item(self, location_id: str, kind: str, contact_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        item = {"id": self.new_id(), **{k: v for k, v in fields.items() if v is not None}, "contactId": contact_id}
        if kind == "notes":
            item["dateAdded"] = self.now()
        getattr(self.location(location_id), kind)[item["id"]] = item
        index = self._by_contact.get((location_id, kind))
        if index is not None:
            index.setdefault(contact_id, []).append(item["id"])
        return item

    def update_item(self, item: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        if "contactId" in fields:
            self._by_contact.clear()  # moved to another contact (the API does not offer it; a fixture might)
        for key, value in fields.items():
            if value is None:
                item.pop(key, None)
            else:
                item[key] = value
        return item

    def delete_item(self, location_id: str, kind: str, item_id: str) -> None:
        item = getattr(self.location(location_id), kind).pop(item_id)
        owned = self._by_contact.get((location_id, kind), {}).get(str(item.get("contactId")))
        if owned is not None and item_id in owned:
            owned.remove(item_id)

    def search_tasks(self, location_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST /locations/{id}/tasks/search: filter by contact, completion, assignee and text."""
        if body.get("contactId") is not None:  # the contacts' own tasks, from the per-contact index
            rows = [t for contact_id in dict.fromkeys(body["contactId"])
                    for t in self.items(location_id, "tasks", contact_id)]
        else:
            rows = list(self.location(location_id).tasks.values())
        if body.get("completed") is not None:
            rows = [t for t in rows if bool(t.get("completed")) == body["completed"]]
        if body.get("assignedTo") is not None:
            rows = [t for t in rows if t.get("assignedTo") in set(body["assignedTo"])]
        if body.get("query"):
            rows = [t for t in rows if _contains([t.get("title"), t.get("body")], body["query"])]
        rows.sort(key=lambda t: (str(t.get("dueDate") or ""), t["id"]))
        skip, limit = int(body.get("skip") or 0), int(body.get("limit") or 25)
        return rows[skip : skip + limit]

    # -- tokens and OAuth

    def token_info(self, token: str) -> TokenInfo | None:
        info = self.tokens.get(token)
        if info is None or (info.expires_at is not None and info.expires_at <= self.clock()):
            return None
        return info

    def client_ok(self, client_id: str, client_secret: str) -> bool:
        return any(
            c.get("client_id") == client_id and secrets.compare_digest(str(c.get("client_secret")), client_secret)
            for c in self.oauth_clients
        )

    def mint_code(self, client_id: str, location_id: str, scopes: list[str], company_id: str | None = None) -> str:
        """A code for a location, or (`company_id`, `location_id` "") for an agency install of the company."""
        if not any(c.get("client_id") == client_id for c in self.oauth_clients):
            raise OAuthError(400, f"Unknown client_id {client_id}", "invalid_client")
        code = secrets.token_hex(20)
        self.codes[code] = Grant(client_id, location_id, tuple(scopes), self.clock() + CODE_TTL_S, company_id)
        return code

    def set_installed(self, company_id: str, location_id: str, installed: bool) -> None:
        """The app installed on (INSTALL) or removed from (UNINSTALL) one location of a company."""
        if installed:
            self.installs.setdefault(company_id, {}).setdefault(location_id, self.clock())
        else:
            self.installs.get(company_id, {}).pop(location_id, None)

    def installed_locations(self, company_id: str) -> list[dict[str, Any]]:
        """`InstalledLocationSchema` items of the company's installed locations, in install order."""
        return [{"_id": loc, "name": f"Location {loc}", "address": "", "isInstalled": True,
                 "installedAt": iso_from_epoch(at)} for loc, at in self.installs.get(company_id, {}).items()]

    def location_token(self, company: TokenInfo, company_id: str, location_id: str) -> dict[str, Any]:
        """A location access token minted from a Company token, for a location the app is installed on."""
        if company.company_id is None or company.company_id != company_id:
            raise OAuthError(403, "The token does not have access to this company.", "forbidden")
        if location_id not in self.installs.get(company_id, {}):
            raise OAuthError(400, "The app is not installed on this location.", "invalid_request")
        access = secrets.token_hex(24)
        self.tokens[access] = TokenInfo(location_id, company.scopes, self.clock() + ACCESS_TOKEN_TTL_S,
                                        company.client_id)
        return {"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_TTL_S,
                "scope": " ".join(sorted(company.scopes)), "locationId": location_id,
                "userId": _stable_id("user", company.client_id or "", company_id)}

    def exchange(self, client_id: str, client_secret: str, grant_type: str, secret: str,
                 user_type: str = "Location") -> dict[str, Any]:
        """Trade a code or a refresh token (each single-use) for a new token pair of `user_type`."""
        if not self.client_ok(client_id, client_secret):
            raise OAuthError(401, "Invalid client credentials", "invalid_client")
        pool = self.codes if grant_type == "authorization_code" else self.refresh_tokens
        grant = pool.get(secret)
        if grant is None or grant.client_id != client_id or grant.expires_at <= self.clock():
            what = "authorization code" if grant_type == "authorization_code" else "refresh token"
            raise OAuthError(400, f"Invalid grant: {what} is invalid", "invalid_grant")
        if (grant.company_id is not None) != (user_type == "Company"):  # a Company grant asks user_type Company
            raise OAuthError(400, f"Invalid grant: not a {user_type} grant", "invalid_grant")
        del pool[secret]
        return self._issue(grant)

    def _issue(self, grant: Grant) -> dict[str, Any]:
        access, refresh, now = secrets.token_hex(24), secrets.token_hex(24), self.clock()
        self.tokens[access] = TokenInfo(
            grant.location_id, frozenset(grant.scopes), now + ACCESS_TOKEN_TTL_S, grant.client_id, grant.company_id
        )
        self.refresh_tokens[refresh] = Grant(grant.client_id, grant.location_id, grant.scopes,
                                             now + REFRESH_TOKEN_TTL_S, grant.company_id)
        if grant.company_id is not None:  # an agency install: a Company pair, no location
            return {"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_TTL_S,
                    "refresh_token": refresh, "scope": " ".join(grant.scopes), "userType": "Company",
                    "companyId": grant.company_id, "approvedLocations": list(self.installs.get(grant.company_id, {})),
                    "userId": _stable_id("user", grant.client_id, grant.company_id), "isBulkInstallation": True}
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_TTL_S,
            "refresh_token": refresh,
            "scope": " ".join(grant.scopes),
            "userType": "Location",
            "locationId": grant.location_id,
            "companyId": _stable_id("company", grant.location_id),
            "userId": _stable_id("user", grant.client_id, grant.location_id),
            "isBulkInstallation": False,
        }


# ------------------------------------------------------------------------------------ body → fields


def _split_name(name: str) -> dict[str, str]:
    first, _, last = name.strip().partition(" ")
    return {"firstName": first, "lastName": last.strip()} if last.strip() else {"firstName": first}


DEFAULT_CUSTOM_FIELDS = (("Plan", "contact.plan", "TEXT"), ("Score", "contact.score", "NUMERICAL"))


def custom_field_definitions(location_id: str, given: Any) -> list[dict[str, Any]]:
    """A location's custom field definitions: the fixture's, or `DEFAULT_CUSTOM_FIELDS` with stable ids."""
    if isinstance(given, list):
        return [{**d, "locationId": location_id, "model": d.get("model", "contact")} for d in given]
    return [{"id": hashlib.sha256(f"{location_id}:{key}".encode()).hexdigest()[:20], "name": name, "fieldKey": key,
             "placeholder": name, "dataType": kind, "position": i, "locationId": location_id, "model": "contact"}
            for i, (name, key, kind) in enumerate(DEFAULT_CUSTOM_FIELDS)]


def checked_custom_fields(loc: Location, items: Any) -> list[dict[str, Any]] | None:
    """A write's `customFields` as `{id, value}` items, each naming a field the location defines (else 422)."""
    if not isinstance(items, list):
        return None
    by_id = {d["id"]: d for d in loc.custom_fields}
    by_key = {k: d["id"] for d in loc.custom_fields if isinstance(d.get("fieldKey"), str)
              for k in (d["fieldKey"], d["fieldKey"].removeprefix("contact."))}
    out, errors = [], []
    for i, item in enumerate(items):
        field_id = item.get("id") if isinstance(item, dict) else None
        key = item.get("key") if isinstance(item, dict) else None
        resolved = field_id if field_id in by_id else by_key.get(key) if field_id is None else None
        if resolved is None:
            errors.append(f"customFields.{i} {'id ' + str(field_id) if field_id else 'key ' + str(key)} is not a "
                          f"custom field of location {loc.id}")
            continue
        out.append({"id": resolved, "value": item.get("field_value", item.get("value"))})
    if errors:
        raise InvalidRequest(errors)
    return out


def merged_custom_fields(current: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The contact's custom fields with `items` laid over them by id; an empty or null value removes the field."""
    merged = {c["id"]: c for c in current if isinstance(c, dict) and c.get("id")}
    for item in items:
        if item["value"] is None or item["value"] == "" or item["value"] == []:
            merged.pop(item["id"], None)
        else:
            merged[item["id"]] = {"id": item["id"], "value": item["value"]}
    return list(merged.values())


def prepare_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A validated create/update body as stored contact fields (`name` split, dates normalized)."""
    out = {k: v for k, v in fields.items() if k not in ("name", "locationId", "createNewIfDuplicateAllowed")}
    name = fields.get("name")
    if isinstance(name, str) and name.strip():
        for key, value in _split_name(name).items():
            out.setdefault(key, value)
    if "dateOfBirth" in out:
        out["dateOfBirth"] = normalize_dob(out["dateOfBirth"])
    out.pop("customFields", None)  # checked and merged by the store (`checked_custom_fields`)
    return out

