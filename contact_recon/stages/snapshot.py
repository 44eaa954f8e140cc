"""The snapshot stage: read both systems into one complete, consistent snapshot in the store.

Per GHL location (`fetch_ghl_location`, the Prefect task `snapshot_ghl_location`):
1. Plan the listing: the contact listing must fit in the day's allowance left minus the write reserve
   (contact_recon/engine/budget_plan.py); if it cannot, `SnapshotFailed` before any request.
2. List *every* contact through `POST /contacts/search` (500 a page, searchAfter): a contact missing
   from the listing is deleted, so deletions are seen every night; but search results lag writes by
   seconds (NOTES.md), so a contact the previous snapshot held, or one the base holds as in GHL (a
   contact our last apply created), that the listing misses is read with `GET /contacts/{id}`: only a
   not-found makes it a deletion (one request per deletion). Likewise a contact we wrote within the
   safety lag (`notes_safety_lag_s`, the journal's `sent_at`) that search shows with an older
   `dateUpdated` is read again with GET: search still shows it as it was before our write. A listing
   that does not end is a `PagingStalled` (systems/ghl/client.py): that location's snapshot fails. A
   contact the model cannot read (systems/models.py `Unreadable`) is *present but unreadable*: its
   previous row is carried as it was, never taken for a deletion; it is listed in
   `SnapshotResult.unreadable` and the plan holds its person back (stages/plan.py). The listing is folded
   page by page (`Listing.add`): no contact object outlives its page. A contact whose payload has the md5 of
   its previous row's `raw` (computed in DuckDB: the previous rows are never read into Python, only their ids
   and digests, `PREVIOUS_COLUMNS`) keeps that row, copied inside the store (`contacts_carried`, as in step
   5); the others are held as payloads and normalised, while the task and note reads of step 4 run.
   Normalising is CPU work on the event loop that carries the requests: done before the reads it would
   leave the request budget idle for tens of seconds at 100,000 contacts, and done in one go beside them
   it would starve them. So it goes `NORMALISE_CHUNK` rows at a time and, after each chunk, sleeps as long
   as the chunk took: it takes at most half of the loop, and the requests in flight keep their pace. When
   a listed contact carries custom fields, the location's definitions are read once (`GET /locations/{id}/customFields`,
   `GHLClient.custom_keys_for`) so each row's `custom` names them by fieldKey (model/custom_fields.py);
   unreadable definitions leave them unresolved (held by the merge, never read as blank), and a kept row read
   while they were unresolved (or stored before rows had `custom`) is normalised again once they are known.
3. Choose whose tasks and notes to read tonight:
   - *changed*: new contacts, contacts whose payload changed, and contacts whose `dateUpdated` is at
     or after the previous watermark minus the safety lag (`notes_safety_lag_s`, 10 min: search
     results lag writes by seconds, and a contact edited during the previous listing may have been
     read before the edit). With no watermark (first snapshot) every contact is changed.
   - *dirty*: contacts a webhook marked (`Store.dirty_contacts`); their marks are cleared after the
     snapshot commits, except marks that arrived meanwhile (`clear_dirty`).
   - *sweep*: the others whose `crc32(contact_id) % K == night_index % K` (K = `notes_sweep_k`, 30;
     night_index = the run's UTC date ordinal): every contact is swept once every K nights, catching
     what dateUpdated and webhooks miss (a note or task write never moves the contact's dateUpdated).
   The plan is made with the exact counts before any task or note request, and with the allowance the
   server reported on the listing's answers (`X-RateLimit-Daily-Remaining`), not the one this process
   assumed before its first answer (another run may have spent part of today's); when the allowance is
   short the sweep shrinks (first ids of the slice in id order), then changed/dirty contacts are
   deferred and marked dirty so they come first tomorrow.
4. Tasks: the bulk task search in batches of 100 contact ids, for the chosen contacts only, and for the
   deferred ones too when those searches fit (`plan.deferred_tasks_read`: a deferred contact's notes wait,
   its tasks, which make the fact tags, are still read: 100 contacts a request). Tasks are
   bulk-cheap (all of them would cost ~2% of the contacts in requests), but a task write does not
   move dateUpdated either, so a full read would still not make the per-contact signal exact; reading
   tasks with the notes keeps "an unchanged contact costs no request" and one rule for both (webhooks
   TaskCreate/Complete/Delete mark contacts dirty; the sweep catches the rest within K nights). A location
   whose tasks a contact-less task webhook marked (`Store.tasks_dirty`; real TaskCreate payloads may lack
   `contactId`) has the tasks of *every* listed contact searched tonight (about one request per 100
   contacts), if the allowance left after the plan has room for them, else the mark waits for tomorrow;
   the mark is cleared after the snapshot commits (`clear_tasks_dirty`, except a mark that arrived meanwhile).
   Notes: `GET /contacts/{id}/notes`, one request per chosen contact.
   Both run `concurrency` (10) requests in flight, paced by the location's `RateBudget`.
5. Tasks and notes of the contacts not read tonight are carried over from the previous snapshot (and
   those of deleted contacts dropped), so each location's snapshot is complete: the store copies those rows
   inside DuckDB in the snapshot's one transaction (`Store.write_snapshot`'s `carried`), so the previous tasks
   and notes are never read into Python (only their count, for the plan's tasks per contact).

TinyEmail (`fetch_tinyemail`, the Prefect task `snapshot_tinyemail`): every list, every member (it has
no updated-since filter), one row per customer with its lists. Lists are read side by side, each one
page after page (the connector's paging guards need the pages in order), folded member by member
(`_Audience`: no customer object outlives its page; a customer is held as compact JSON text, or only as the md5
of that text when a previous row has the same payload, with its lists as a bit mask). A customer whose payload's
md5 and lists equal those of a row of the previous snapshot (`TE_PREVIOUS_COLUMNS`, computed in DuckDB, matched
in polars) keeps that row, copied inside the store (`customers_carried`); one whose payload a previous row has but
whose lists changed is normalised from that row's `raw` with tonight's lists (`resolve_again`, in the stage once
the fetch is done: the store is read there); the others are normalised (in chunks, at most half of the loop, as
above: on the first night the GHL reads are still running); a row stored before rows had `custom` is normalised
again when its payload holds a field `custom` keeps.
`full_sweep` normalises every contact and customer again.

The GHL rows built tonight (contacts normalised, tasks and notes read) wait for the write as Parquet files in a
private directory of the data dir (`Spill`, store/spill.py), removed when the stage ends: a first night never holds
a location's rows in memory, and the store inserts them streamed (`read_parquet`). A contact's JSON text is dropped
from the listing as soon as its row is made (`_chunks(release=True)`).

`run_snapshot` runs every location and TinyEmail concurrently (asyncio tasks; inside a Prefect flow, the
Prefect tasks on the flow's task runner), then checks that no side came back empty while its previous
snapshot was not (`SideCameBackEmpty`), and writes all frames and the new watermarks in ONE transaction
(`Store.write_snapshot`). A failure of TinyEmail (auth, outage) stops everything with
`SnapshotFailed(system, reason)` before anything is written, so the previous snapshot and the watermarks
stay as they were. A failure of one GHL location (auth, outage, budget, a listing that does not end)
stops that location only: it is logged as an error, named in `SnapshotResult.failed` (and the run row's
`error`, with the requests it used), its previous snapshot and watermark stay, and the other locations
and TinyEmail are written; the plan then covers the locations that were read. When every location
failed, the first failure is raised as above. The run row records the plans and the requests actually
used (per phase: the count and `phase_s`, the seconds since the previous phase ended).

Shapes (systems/models.py): the clients' API models become canonical rows here (`as_payload`, then each
system's `mapping.py`), the shape every later stage works on; the API payload stays beside it as `raw`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from contact_recon.engine.budget_plan import DEFAULT_TASKS_PER_CONTACT, RequestPlan, contact_pages, plan_requests
from contact_recon.engine.identity import SideCameBackEmpty, check_not_emptied
from contact_recon.model.custom_fields import TE_FIELDS, UNDEFINED_PREFIX
from contact_recon.model.normalise import normalise_email, raw_json, to_frame
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, GHL_TASKS, TINYEMAIL_CUSTOMERS
from contact_recon.settings import Settings
from contact_recon.stages import progress as bars
from contact_recon.store.db import Store
from contact_recon.store.journal import Journal
from contact_recon.store.spill import Spill, spill_root
from contact_recon.systems.errors import ConnectorError, MalformedResponse, NotFound
from contact_recon.systems.ghl.client import TASK_SEARCH_BATCH, TASK_SEARCH_PAGE, GHLClient, iso
from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_note_record, ghl_task_record
from contact_recon.systems.ghl.models import Contact
from contact_recon.systems.http import RequestStats
from contact_recon.systems.models import Unreadable, as_payload
from contact_recon.systems.redaction import redact
from contact_recon.systems.tinyemail.client import TinyEmailClient, member_key
from contact_recon.systems.tinyemail.contract import email_key
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record
from contact_recon.systems.tinyemail.models import Customer

log = logging.getLogger("contact_recon.stages.snapshot")

WATERMARK_ENTITY = "ghl_contacts"  # watermarks[(location, "ghl_contacts")] = max dateUpdated seen
TE_PAGE = 100
NORMALISE_CHUNK = 100  # rows normalised between two pauses (about 20 ms of CPU)
READ_CHUNK = 5_000  # contacts whose tasks or notes are read before their rows become a frame
POSITION = "_position"  # a TinyEmail row's place in the audience, until `resolve_again` has put every row in order
LIST_SEPARATOR = "\x1f"  # between the list ids of a customer, as the fetch compares them with the previous rows'
T = TypeVar("T")
R = TypeVar("R")

GHLFactory = Callable[[str], GHLClient]
TinyEmailFactory = Callable[[], TinyEmailClient]


class SnapshotFailed(Exception):  # noqa: N818 - the name is the contract
    """One system could not be snapshotted (auth, outage, budget): the run stops before any diff."""

    def __init__(self, system: str, reason: str, used: dict[str, Any] | None = None):
        self.system, self.reason, self.used = system, redact(reason), used or {}  # used: requests until it failed
        super().__init__(f"snapshot of {system} failed: {self.reason}")


@dataclass(frozen=True)
class SnapshotOptions:
    sweep_k: int = 30
    safety_lag_s: float = 600.0
    write_reserve: int = 20_000
    concurrency: int = 10
    full_sweep: bool = False  # read every contact's tasks and notes (and normalise every contact again)
    night_index: int = 0
    region: str = "US"
    allow_empty: bool = False
    spill_root: Path | None = None  # where the GHL rows wait as Parquet chunks (store/spill.py); run_snapshot's own

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SnapshotOptions:
        return cls(sweep_k=settings.notes_sweep_k, safety_lag_s=settings.notes_safety_lag_s,
                   write_reserve=settings.write_reserve, concurrency=settings.snapshot_concurrency,
                   region=settings.default_region, **overrides)


# what a location's fetch reads of its previous contacts besides the id, computed in DuckDB (`PreviousState.load`):
# the md5 of the payload (`raw`), compared with tonight's, and whether its custom fields are unresolved (`id:<id>`,
# read while the definitions were unknown, or not read at all: a row stored before the store had `custom`)
PREVIOUS_COLUMNS: dict[str, tuple[str, pl.DataType]] = {
    "raw_md5": ("md5(s.raw)", pl.String()),
    "unresolved": (f"""coalesce(contains(s.custom, '"{UNDEFINED_PREFIX}'), false) OR (s.custom IS NULL AND """
                   """coalesce(contains(s.raw, '"customFields":[{'), false))""", pl.Boolean()),
}


@dataclass(frozen=True)
class PreviousState:
    """What one location's fetch needs from the store: its latest contacts, how many tasks they have (the rows
    of tasks and notes stay in the store: the ones carried over are copied there, step 5), watermark and dirty
    marks."""

    contacts: pl.DataFrame  # contact_id, raw_md5, unresolved (PREVIOUS_COLUMNS)
    tasks_count: int
    watermark: str | None
    dirty: frozenset[str] = frozenset()
    tasks_dirty: bool = False  # a task webhook without a contact marked the location's tasks
    # the location's contacts that the base holds as in GHL (ours included) but the previous snapshot does not: the
    # contacts our last apply created (the others are among `contacts`; a million ids held twice cost ~100 MB)
    paired: frozenset[str] = frozenset()
    written: dict[str, datetime] = field(default_factory=dict)  # contact -> our last write sent, lately

    @classmethod
    def load(cls, store: Store, location_id: str, written_within_s: float = 600.0) -> PreviousState:
        """The location's previous state; of its contacts only `PREVIOUS_COLUMNS` (id, the md5 of the payload,
        whether the stored custom fields are unresolved), computed in DuckDB: the rows themselves stay there."""
        dirty = store.dirty_contact_ids(location_id)
        paired = store.paired_outside_snapshot(location_id)  # in SQL: three tables of a million rows stay there
        written = Journal(store).ghl_writes_since(location_id, store.clock() - timedelta(seconds=written_within_s))
        contacts = store.latest_snapshot("ghl_contacts", location_id, computed=PREVIOUS_COLUMNS,
                                         without=[c for c in GHL_CONTACTS if c != "contact_id"])
        return cls(contacts, store.latest_row_count("ghl_tasks", location_id),
                   store.watermark(location_id, WATERMARK_ENTITY),
                   frozenset(dirty.to_list()), tasks_dirty=store.tasks_dirty(location_id),
                   paired=frozenset(paired.to_list()), written=written)

    @property
    def tasks_per_contact(self) -> float:
        return self.tasks_count / self.contacts.height if self.contacts.height else DEFAULT_TASKS_PER_CONTACT


@dataclass
class Progress:
    """Plans and requests used, filled in while fetching, so a failed run still records them."""

    plans: dict[str, Any] = field(default_factory=dict)
    used: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocationSnapshot:
    location_id: str
    contacts: Spill  # the contacts normalised tonight (the kept ones are `contacts_carried`), on disk
    tasks: Spill  # the tasks read tonight
    notes: Spill  # the notes read tonight
    watermark: str | None
    plan: RequestPlan
    used: dict[str, Any]
    dirty_read: tuple[str, ...]  # dirty marks to clear once the snapshot is committed
    deferred: tuple[str, ...]  # changed/dirty contacts not read tonight (marked dirty)
    tasks_dirty_read: bool = False  # every task of the location was read: its mark is cleared once committed
    unreadable: tuple[Unreadable, ...] = ()  # present but unreadable: previous rows carried, persons held
    tasks_carried: tuple[str, ...] = ()  # present contacts whose tasks were not read: their rows are copied over
    notes_carried: tuple[str, ...] = ()  # likewise for notes (step 5, in the store: `Store.write_snapshot`)
    contacts_carried: tuple[str, ...] = ()  # contacts whose previous row is kept: copied in the store likewise

    @property
    def present(self) -> int:
        """The contacts of the location's snapshot: tonight's rows and the kept ones."""
        return self.contacts.height + len(self.contacts_carried)


@dataclass(frozen=True)
class TinyEmailSnapshot:
    customers: pl.DataFrame  # the rows normalised tonight (with their `POSITION` until `resolve_again`)
    plan: dict[str, int]
    used: dict[str, Any]
    lists: tuple[tuple[str, str | None], ...] = ()  # (id, name) of every list read
    unreadable: tuple[Unreadable, ...] = ()  # present but unreadable: previous rows carried, persons held
    # emails whose previous row is kept, copied inside the store: a column, not a million Python strings
    customers_carried: pl.Series = field(default_factory=lambda: pl.Series("email", [], pl.String))
    again: tuple[Again, ...] = ()  # a previous row's payload with other lists: normalised by `resolve_again`

    @property
    def present(self) -> int:
        return self.customers.height + self.customers_carried.len() + len(self.again)


@dataclass(frozen=True)
class Again:
    """A customer whose payload a previous row has, with other lists tonight: normalised from that row's `raw`."""

    position: int  # its place in the audience
    email: str  # the previous row's
    lists: tuple[str, ...]


@dataclass(frozen=True)
class SnapshotResult:
    run_id: str
    counts: dict[str, int]  # rows per entity written
    plans: dict[str, Any]  # per system/location: the request plan
    used: dict[str, Any]  # per system/location: requests actually used, by kind
    ingest_s: float
    wall_s: float
    load_s: float = 0.0  # reading the previous snapshot, watermarks and dirty marks before any request
    fetch_s: float = 0.0  # every system's fetch, from the first request to the last frame built
    failed: dict[str, str] = field(default_factory=dict)  # "ghl:<location>" -> why its snapshot failed
    unreadable: list[dict[str, Any]] = field(default_factory=list)  # `unreadable_rows`: held persons, reported
    locations: tuple[str, ...] = ()  # the locations snapshotted (those that did not fail)


# ------------------------------------------------------------------------------------------- GHL


async def fetch_ghl_location(client: GHLClient, previous: PreviousState, options: SnapshotOptions,
                             progress: Progress | None = None) -> LocationSnapshot:
    """Snapshot one location (module docstring, steps 1-5); raises SnapshotFailed, writes nothing."""
    loc, progress = client.location_id, progress or Progress()
    key = f"ghl:{loc}"
    used = _Used(client.stats)
    with _failing_as(key, used):
        daily = client.budget_snapshot().daily_remaining
        _check_listing_fits(key, previous.contacts.height, daily, options.write_reserve)
        listing, unreadable = await _list_contacts(client, previous, options)
        used.mark("contacts")
        progress.used[key] = used.counts
        # model/custom_fields.py: fieldKeys, per location (read once, when a listed contact carries custom fields)
        custom_keys = await client.custom_keys_when(listing.custom)
        listing = listing.resolving(custom_keys)
        carried = [u.key for u in unreadable if u.key is not None and u.key not in listing.present]
        present = listing.present | set(carried)
        # the server's word now (the listing's X-RateLimit-Daily-Remaining), not what this process assumed
        # before its first answer: an earlier run today, or a limit set above the server's, leaves less
        daily = _allowance_now(client, daily)
        plan, chosen, dirty_read, deferred = _choose(present, listing.changed, previous, options, daily)
        progress.plans[key] = plan.to_json()
        task_ids, all_tasks = _task_contacts(listing.present, chosen, deferred, previous.tasks_dirty, plan, daily)
        root = _spill_root(options)
        fresh = Spill.under(root, f"contacts-{loc}", GHL_CONTACTS)
        tasks, notes = Spill.under(root, f"tasks-{loc}", GHL_TASKS), Spill.under(root, f"notes-{loc}", GHL_NOTES)
        texts, listing = listing.fresh, replace(listing, fresh=[])  # let go one chunk at a time (`_chunks`)
        await _all_or_nothing([
            _read_tasks_and_notes(client, chosen, options.concurrency, used, task_ids, (tasks, notes)),
            _spilled(_chunks(texts, lambda text: ghl_contact_record(json.loads(text), loc, options.region,
                                                                    custom_keys), GHL_CONTACTS, release=True), fresh)])
    # the kept rows (and an unreadable contact's previous row) are copied inside the store (`contacts_carried`)
    kept = tuple(sorted({*listing.kept, *listing.previous.among(carried)}))
    present_ids = sorted({*kept, *fresh.column("contact_id").to_list()})
    return LocationSnapshot(
        loc, fresh, tasks, notes, listing.watermark or previous.watermark, plan, used.counts,
        dirty_read, deferred, tasks_dirty_read=all_tasks, unreadable=tuple(unreadable),
        tasks_carried=_not_read(present_ids, task_ids), notes_carried=_not_read(present_ids, chosen),
        contacts_carried=kept)


async def _list_contacts(client: GHLClient, previous: PreviousState,
                         options: SnapshotOptions) -> tuple[Listing, list[Unreadable]]:
    """The listing folded page by page into a `Listing` (no contact is held but those to normalise), and each
    contact we knew that it misses confirmed by `GET /contacts/{id}` (module docstring, step 2): search results
    lag writes, so a missing contact is deleted only when GET says so."""
    listing = Listing.starting(previous, options)
    unreadable: list[Unreadable] = []
    listed: set[str] = set()
    stale: list[str] = []
    page: list[Contact] = []  # folded LISTING_BATCH at a time: the previous digests are looked up together
    async for record in client.iter_contacts():
        if not isinstance(record, Contact):
            unreadable.append(record)
            if record.key:
                listed.add(record.key)
            continue
        if _older_than_our_write(record, previous.written):
            stale.append(record.id)  # search shows it as before our write: read again below
            listed.add(record.id)
        else:
            page.append(record)
            if len(page) == LISTING_BATCH:
                listing.add_many(page)
                page = []
    listing.add_many(page)
    # listed: the contacts the listing holds (`present`) and the few it does not (stale, unreadable): no second
    # set of a million ids
    missing = sorted({*listing.previous.missing(listing.present, listed),
                      *(c for c in previous.paired if c not in listing.present and c not in listed)})
    for contact_id in [*missing, *sorted(stale)]:
        try:
            listing.add(await client.get_contact(contact_id))  # lagging behind a write: still there
        except NotFound:
            continue  # deleted: it leaves the snapshot
        except MalformedResponse as exc:
            unreadable.append(Unreadable(contact_id, f"GET /contacts/{contact_id}", str(exc)))
    return listing, unreadable


def _older_than_our_write(contact: Contact, written: dict[str, datetime]) -> bool:
    """Search shows the contact as it was before our last write to it (search lags writes): read it again."""
    sent = written.get(contact.id)
    if sent is None:
        return False  # not written by us lately: what search shows is what there is
    updated = contact.dateUpdated
    if updated is None:
        return True  # nothing says it is as new as our write
    return _aware(updated) < _aware(sent)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _allowance_now(client: GHLClient, before: int | None) -> int | None:
    """Today's requests left for the plan: the lower of what the budget said before the listing and what it says
    after it (the server's last `X-RateLimit-Daily-Remaining` when an answer carried one). The plan counts the
    listing's pages in its cost either way, so either figure errs on the safe side."""
    now = client.budget_snapshot().daily_remaining
    if now is None or before is None:  # one side knows no daily limit: the other's word (None if neither knows)
        return before if now is None else now
    return min(before, now)  # both known: the tighter one


def _check_listing_fits(key: str, previous_count: int, daily: int | None, reserve: int) -> None:
    if daily is not None and contact_pages(previous_count) > daily - reserve:
        raise SnapshotFailed(key, f"the contact listing needs about {contact_pages(previous_count)} requests but "
                                  f"only {max(0, daily - reserve)} are left today after the write reserve")


def contact_payload(contact: Contact) -> dict[str, Any]:
    """A contact as JSON (the search answer as the model reads it), without the search cursor."""
    payload = as_payload(contact)
    payload.pop("searchAfter", None)
    return payload


LISTING_BATCH = 500  # listed contacts folded at once into a `Listing`


@dataclass(frozen=True)
class PreviousDigests:
    """The previous rows' contact ids (sorted) and payload md5s as two columns, looked up by binary search: as a
    Python dict of a million ids and digests they held about 210 MB through the whole fetch."""

    ids: pl.Series
    md5: pl.Series

    @classmethod
    def of(cls, frame: pl.DataFrame) -> PreviousDigests:
        rows = frame.select(pl.col("contact_id").cast(pl.String), pl.col("raw_md5").cast(pl.String))
        rows = rows.drop_nulls("contact_id").unique("contact_id", keep="first").sort("contact_id")
        return cls(rows["contact_id"], rows["raw_md5"])

    def __len__(self) -> int:
        return self.ids.len()

    def md5s(self, contact_ids: Sequence[str]) -> list[str | None]:
        """The previous md5 of each contact id, None for a contact the previous rows do not have."""
        return self._lookup(contact_ids)["md5"].to_list()

    def among(self, contact_ids: Iterable[str]) -> list[str]:
        """The ids of `contact_ids` the previous rows have."""
        return self._lookup(list(contact_ids)).filter("found")["contact_id"].to_list()

    def _lookup(self, contact_ids: Sequence[str]) -> pl.DataFrame:
        """contact_id, found (the previous rows have it), md5 (its digest, null when not found) of each id."""
        wanted = pl.Series("contact_id", list(contact_ids), dtype=pl.String)
        if not len(self) or not wanted.len():  # a first night: nothing to look up
            return pl.DataFrame({"contact_id": wanted, "found": pl.Series([False] * wanted.len(), dtype=pl.Boolean),
                                 "md5": pl.Series([None] * wanted.len(), dtype=pl.String)})
        at = self.ids.search_sorted(wanted).clip(0, len(self) - 1)
        found = (self.ids.gather(at) == wanted).alias("found")
        md5 = pl.select(pl.when(found).then(self.md5.gather(at))).to_series().alias("md5")
        return pl.DataFrame([wanted, found, md5])

    def missing(self, *listed: set[str]) -> list[str]:
        """The previous ids in none of the `listed` sets (they are scanned, not copied into another set)."""
        return [c for c in self.ids if not any(c in ids for ids in listed)]


@dataclass
class Listing:
    """Tonight's contact listing against the previous snapshot (module docstring, steps 2-3), folded one contact
    at a time (`add`): a contact whose payload has the md5 of its previous row keeps that row (only its id is
    held); the others' payloads are held to be normalised."""

    previous: PreviousDigests  # the previous rows: contact id -> md5 of the payload
    unresolved_before: frozenset[str]  # previous rows whose custom fields are unresolved
    since: datetime | None  # the watermark less the safety lag: a contact updated since is changed
    full_sweep: bool
    present: set[str] = field(default_factory=set)  # every contact id listed
    kept: list[str] = field(default_factory=list)  # payload as in the previous snapshot: its row is kept
    # payloads to normalise, as compact JSON text: on a first night every contact is one (as dicts, about 3 KB each)
    fresh: list[str] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # new, changed, or updated within the safety lag
    custom: bool = False  # a listed contact carries custom fields
    newest: datetime | None = None  # the newest dateUpdated listed
    unresolved: dict[str, str] = field(default_factory=dict)  # kept, unresolved: id -> payload (JSON text)

    @classmethod
    def starting(cls, previous: PreviousState, options: SnapshotOptions) -> Listing:
        frame = previous.contacts
        return cls(PreviousDigests.of(frame), frozenset(frame.filter(pl.col("unresolved"))["contact_id"].to_list()),
                   _since(previous.watermark, options.safety_lag_s), options.full_sweep)

    def add(self, contact: Contact) -> None:
        self.add_many([contact])

    def add_many(self, contacts: Sequence[Contact]) -> None:
        """Fold contacts in listing order; their previous digests are looked up at once (`PreviousDigests`)."""
        for contact, before in zip(contacts, self.previous.md5s([c.id for c in contacts]), strict=True):
            self._add(contact, before)

    def _add(self, contact: Contact, before: str | None) -> None:
        if contact.id in self.present:
            return  # listed twice (pages shifting under a write): the first one stands
        self.present.add(contact.id)
        text = raw_json(contact_payload(contact))
        same = before == hashlib.md5(text.encode()).hexdigest()
        if same and not self.full_sweep:  # a full sweep normalises all again
            self.kept.append(contact.id)
            if contact.id in self.unresolved_before:  # normalised again once the definitions are known
                self.unresolved[contact.id] = text
        else:
            self.fresh.append(text)
        updated = _aware(contact.dateUpdated) if contact.dateUpdated is not None else None
        if self.since is None or not same or updated is None or updated >= self.since:
            self.changed.add(contact.id)  # no date: nothing says it is unchanged
        if updated is not None and (self.newest is None or updated > self.newest):
            self.newest = updated
        self.custom = self.custom or bool(contact.customFields)

    @property
    def watermark(self) -> str | None:
        return iso(self.newest) if self.newest is not None else None

    def resolving(self, keys: dict[str, str] | None) -> Listing:
        """The listing with every kept contact whose stored custom fields are unresolved normalised again, now
        that the definitions are known."""
        if not keys or not self.unresolved:
            return self
        again = self.unresolved
        return replace(self, kept=[i for i in self.kept if i not in again], fresh=[*self.fresh, *again.values()],
                       unresolved={})


def _since(watermark: str | None, lag_s: float) -> datetime | None:
    if watermark is None:
        return None
    return datetime.fromisoformat(watermark.replace("Z", "+00:00")) - timedelta(seconds=lag_s)


def sweep_slice(contact_ids: Iterable[str], k: int, night_index: int) -> list[str]:
    """Tonight's sweep: the ids with crc32(id) % k == night_index % k, in id order (1/k of all, stable)."""
    return sorted(c for c in contact_ids if zlib.crc32(c.encode()) % k == night_index % k)


def _choose(present: set[str], changed: set[str], previous: PreviousState, options: SnapshotOptions,
            daily: int | None) -> tuple[RequestPlan, list[str], tuple[str, ...], tuple[str, ...]]:
    """Plan tonight's task and note reads: (plan, contacts to read, dirty marks read, contacts deferred)."""
    k = 1 if options.full_sweep else options.sweep_k
    changed_ids = sorted(changed & present)
    dirty_ids = sorted((previous.dirty & present) - changed)
    taken = set(changed_ids) | set(dirty_ids)
    sweep = [c for c in sweep_slice(present, k, options.night_index) if c not in taken]
    plan = plan_requests(len(present), len(changed_ids), len(dirty_ids), k, TASK_SEARCH_BATCH, daily,
                         options.write_reserve, sweep_candidates=len(sweep),
                         tasks_per_contact=previous.tasks_per_contact, tasks_page=TASK_SEARCH_PAGE)
    must = (changed_ids + dirty_ids)[: plan.changed + plan.dirty]
    deferred = tuple((changed_ids + dirty_ids)[len(must):])
    chosen = sorted(must + sweep[: plan.sweep])
    dirty_gone = previous.dirty - present  # marks of deleted contacts: nothing left to read
    dirty_read = tuple(sorted((previous.dirty & set(chosen)) | dirty_gone))  # read as changed counts too
    return plan, chosen, dirty_read, deferred


def _task_contacts(present: set[str], chosen: list[str], deferred: Sequence[str], tasks_dirty: bool,
                   plan: RequestPlan, daily: int | None) -> tuple[list[str], bool]:
    """Whose tasks to search tonight, and whether that is every present contact: the chosen contacts (with the
    deferred ones when the plan has room for their searches: only their notes wait), or all when the location's
    tasks are marked and the allowance left after the plan has room for the extra searches."""
    wanted = sorted({*chosen, *deferred}) if plan.deferred_tasks_read else chosen
    if not tasks_dirty:  # the usual night: tasks go with the notes (and the deferred contacts' when they fit)
        return wanted, False
    extra = -(-len(present) // TASK_SEARCH_BATCH) - -(-len(wanted) // TASK_SEARCH_BATCH)
    if daily is not None and plan.total + extra > daily - plan.write_reserve:  # no room: the mark waits a night
        return wanted, False
    return sorted(present), True


async def _read_tasks_and_notes(client: GHLClient, contact_ids: Sequence[str], concurrency: int,
                                used: _Used, task_ids: Sequence[str], into: tuple[Spill, Spill]) -> None:
    await _read_tasks(client, task_ids, concurrency, into[0])
    used.mark("tasks")
    await _read_notes(client, contact_ids, concurrency, into[1])
    used.mark("notes")


async def _read_tasks(client: GHLClient, contact_ids: Sequence[str], concurrency: int, into: Spill) -> None:
    batches = [list(contact_ids[i:i + TASK_SEARCH_BATCH]) for i in range(0, len(contact_ids), TASK_SEARCH_BATCH)]
    stage = f"snapshot {client.location_id}: task searches"
    bars.begin(stage, len(batches))

    async def search(batch: list[str]) -> Any:
        found = await client.search_tasks(batch)
        bars.advance(stage)
        return found

    wanted = set(contact_ids)
    async for found in _chunked(batches, search, concurrency, max(1, READ_CHUNK // TASK_SEARCH_BATCH)):
        # by id: skip paging may repeat a task within a batch (a task is in one batch: that of its contact)
        rows = {t.id: ghl_task_record(as_payload(t), client.location_id)
                for batch in found for t in batch if t.contactId in wanted}
        into.add(to_frame(list(rows.values()), GHL_TASKS))


async def _read_notes(client: GHLClient, contact_ids: Sequence[str], concurrency: int, into: Spill) -> None:
    stage = f"snapshot {client.location_id}: note reads"
    bars.begin(stage, len(contact_ids))

    async def notes_of(contact_id: str) -> list[dict[str, Any]]:
        try:
            notes = await client.list_notes(contact_id)
        except NotFound:
            return []  # deleted since the listing: it disappears from tomorrow's listing
        finally:
            bars.advance(stage)
        return [ghl_note_record({"contactId": contact_id, **as_payload(n)},
                                client.location_id) for n in notes]

    async for found in _chunked(list(contact_ids), notes_of, concurrency, READ_CHUNK):
        into.add(to_frame([row for rows in found for row in rows], GHL_NOTES))


def _not_read(present: Sequence[str], read: Sequence[str]) -> tuple[str, ...]:
    """The present contacts whose previous rows are carried over: those not read tonight (deleted ones are not
    present, so their rows are dropped)."""
    wanted = set(read)
    return tuple(c for c in present if c not in wanted)


# -------------------------------------------------------------------------------------- TinyEmail


async def fetch_tinyemail(client: TinyEmailClient, options: SnapshotOptions, progress: Progress | None = None,
                          previous: pl.DataFrame | None = None) -> TinyEmailSnapshot:
    """Every customer of every list once, with its lists (an unchanged customer's row kept from `previous`, the
    latest snapshot's `TE_PREVIOUS_COLUMNS`); raises SnapshotFailed, writes nothing. A customer whose payload a
    previous row has but whose lists changed is left in `again` (`resolve_again` reads that payload from the store
    and normalises it)."""
    progress = progress or Progress()
    with _failing_as("tinyemail"):
        used = _Used(client.stats)
        lists = await client.lists()
        pages = sum((lst.numberOfMembers or 0) // client.page_size + 1 for lst in lists)
        plan = {"lists": 1, "member_pages": pages, "total": 1 + pages}  # requests; "changed" below counts records
        progress.plans["tinyemail"] = plan
        audience = _Audience(_digests(previous) if previous is not None and not options.full_sweep else frozenset())

        async def members(indexed: tuple[int, str]) -> None:
            async for customer in client.iter_members(indexed[1]):
                audience.add(indexed, customer)

        # lists are read side by side (each one page after page); a customer in several lists is the one of the
        # first list (list order, as the lists are listed), whatever list answered first
        await _pool(list(enumerate(lst.id for lst in lists)), members, options.concurrency)
        used.mark("members")
        progress.used["tinyemail"] = used.counts
    list_ids = [str(lst.id) for lst in lists]
    frame, kept, again = await _customers_frame(audience, previous, list_ids, options)
    plan["changed"] = frame.height + len(again)
    carried = pl.concat([kept, pl.Series("email", _carried_customers(previous, audience), pl.String)])
    return TinyEmailSnapshot(frame, plan, used.counts, tuple((lst.id, lst.name) for lst in lists),
                             tuple(audience.unreadable.values()), customers_carried=carried, again=again)


@dataclass
class _Audience:
    """Every customer reachable through a list, folded member by member as the pages come: by normalised email
    (`email_key`), `[list index, order, payload, lists]`: the place it was first seen (list index, order), the
    payload as compact JSON text (`raw_json`: no customer object outlives its page), or only its md5 digest when a
    previous row has that payload (`known`: the row is kept, or read from the store when its lists changed), and
    its lists as a bit mask of list indexes; the members the model refused (keyed likewise when their email is
    readable). At a million customers the texts alone were about 550 MB."""

    known: frozenset[bytes] = frozenset()  # md5 digests of the previous rows' payloads
    members: dict[str, list[Any]] = field(default_factory=dict)
    unreadable: dict[str, Unreadable] = field(default_factory=dict)

    def add(self, indexed: tuple[int, str], customer: Customer | Unreadable) -> None:
        index, list_id = indexed
        key = member_key(customer, list_id)
        if isinstance(customer, Unreadable):
            self.unreadable.setdefault(key, customer)
            return
        seen = self.members.get(key)
        if seen is not None and seen[0] < index:  # the first list's copy stands: this one only adds its list
            seen[3] |= 1 << index
            return
        raw = raw_json(as_payload(customer))
        digest = hashlib.md5(raw.encode()).digest()
        held = digest if digest in self.known else raw
        if seen is None:
            self.members[key] = [index, len(self.members), held, 1 << index]
        else:  # a copy from a list listed earlier: it stands, seen at this point of the fold
            seen[0], seen[1], seen[2], seen[3] = index, len(self.members), held, seen[3] | 1 << index


def _digests(previous: pl.DataFrame) -> frozenset[bytes]:
    """The md5 digests (16 bytes) of the previous rows' payloads."""
    return frozenset(previous["raw_md5"].to_list())


# what the TinyEmail fetch reads of the previous customers besides the email, computed in DuckDB: the md5 of the
# payload (16 bytes), its lists as one text (sorted list ids joined by LIST_SEPARATOR, '' for none: tonight's are
# spelled alike), and whether the row can be kept (a row stored before rows had `custom` is normalised again
# when its payload holds a value of a field `custom` keeps, as `te_custom_values` reads it; a list or an object
# counts as a value here, so at worst a few more are normalised again)
TE_PREVIOUS_COLUMNS: dict[str, tuple[str, pl.DataType]] = {
    "raw_md5": ("unhex(md5(s.raw))", pl.Binary()),
    "lists_key": (f"coalesce(array_to_string(list_sort(s.lists), chr({ord(LIST_SEPARATOR)})), '')", pl.String()),
    "reusable": ("s.custom IS NOT NULL OR (" + " AND ".join(
        f"""coalesce(trim(json_extract_string(s.raw, '$.{name}')), '') IN ('', 'true', 'false')"""
        for name in TE_FIELDS) + ")", pl.Boolean()),
}


def _previous_customers(store: Store) -> pl.DataFrame:
    """The latest TinyEmail snapshot as the fetch compares it: email and `TE_PREVIOUS_COLUMNS`."""
    return store.latest_snapshot("te_customers", computed=TE_PREVIOUS_COLUMNS,
                                 without=[c for c in TINYEMAIL_CUSTOMERS if c != "email"])


def _carried_customers(previous: pl.DataFrame | None, audience: _Audience) -> list[str]:
    """The emails of the customers present but unreadable tonight whose previous rows are carried as they were."""
    wanted = [normalise_email(u.key)[0] for u in audience.unreadable.values()
              if u.key and email_key(u.key) not in audience.members]  # read in another list: that row wins
    if previous is None or not wanted:
        return []
    return previous.filter(pl.col("email").is_in(wanted))["email"].to_list()


async def _customers_frame(audience: _Audience, previous: pl.DataFrame | None, list_ids: Sequence[str],
                           options: SnapshotOptions) -> tuple[pl.DataFrame, pl.Series, tuple[Again, ...]]:
    """The TINYEMAIL_CUSTOMERS rows of the customers normalised tonight (new, or a payload not in `previous`) in
    audience order with their `POSITION`, the emails of the previous rows kept (same payload and lists), and the
    customers whose payload a previous row has but not with these lists (`Again`: normalised by `resolve_again`).
    Only the new and the `Again` ones become Python objects: at a million customers the kept ones stay a column."""
    ordered = sorted(audience.members.values(), key=lambda member: (member[0], member[1]))
    matched = _matched(ordered, previous, list_ids, options).with_row_index("position")
    kept = matched.filter(pl.col("email").is_not_null() & ~pl.col("again"))["email"]
    again = tuple(Again(position, email, tuple(_list_names(ordered[position][3], list_ids)))
                  for position, email in matched.filter(pl.col("again")).select("position", "email").iter_rows())
    # (position, payload as JSON text, lists): parsed when normalised
    fresh = [(position, ordered[position][2], _list_names(ordered[position][3], list_ids))
             for position in matched.filter(pl.col("email").is_null())["position"].to_list()]
    del ordered, matched
    await asyncio.sleep(0)
    built = await _normalised(fresh, lambda item: tinyemail_customer_record(json.loads(item[1]), item[2],
                                                                            options.region), TINYEMAIL_CUSTOMERS)
    return built.with_columns(pl.Series(POSITION, [p for p, _, _ in fresh], pl.Int64)), kept, again


def _list_names(mask: int, list_ids: Sequence[str]) -> list[str]:
    return sorted({list_ids[i] for i in range(len(list_ids)) if mask >> i & 1})


def _matched(ordered: Sequence[list[Any]], previous: pl.DataFrame | None, list_ids: Sequence[str],
             options: SnapshotOptions) -> pl.DataFrame:
    """For each member in order: `email`, the email of a previous row to take (null: none), and `again`, whether
    only its payload matches. A reusable previous row with the same payload md5 and lists is kept as it is; one
    with the same payload only gives the payload; none is a new payload. Joined in polars on the md5 alone (a
    snapshot has one row per email and the payload holds it, so one row per md5), tonight's lists as a code per
    distinct set: a million members as Python tuples, or joined on (md5, lists) texts, cost hundreds of MB."""
    if previous is None or options.full_sweep or previous.is_empty():  # a full sweep normalises all again
        return pl.DataFrame({"email": [None] * len(ordered), "again": [False] * len(ordered)},
                            schema={"email": pl.String, "again": pl.Boolean})
    codes: dict[int, int] = {}  # list mask -> its code (a handful of distinct sets of lists)
    tonight = pl.DataFrame({
        "md5": [m[2] if isinstance(m[2], bytes) else None for m in ordered],
        "code": [codes.setdefault(m[3], len(codes)) for m in ordered]},
        schema={"md5": pl.Binary, "code": pl.Int64})
    spelled = pl.DataFrame({"code": list(codes.values()),
                            "lists": [LIST_SEPARATOR.join(_list_names(mask, list_ids)) for mask in codes]},
                           schema={"code": pl.Int64, "lists": pl.String})
    rows = previous.select("email", "raw_md5", "reusable", "lists_key").unique("raw_md5", keep="first")
    found = (tonight.join(spelled, on="code", how="left", maintain_order="left")
             .join(rows, left_on="md5", right_on="raw_md5", how="left", maintain_order="left"))
    same = pl.col("reusable").fill_null(False) & (pl.col("lists") == pl.col("lists_key")).fill_null(False)
    return found.select("email", (pl.col("email").is_not_null() & ~same).alias("again"))


def resolve_again(store: Store, te: TinyEmailSnapshot, options: SnapshotOptions) -> TinyEmailSnapshot:
    """The TinyEmail snapshot in its final shape: the `again` customers normalised from their previous rows' `raw`
    with tonight's lists (read here, in the stage's thread: the store is not the fetch's to read), every row in
    audience order without its `POSITION`, one row per email (the first), and the carried emails less those
    normalised tonight."""
    frames = [te.customers]
    if te.again:
        wanted = pl.DataFrame({"email": list(dict.fromkeys(a.email for a in te.again))}, schema={"email": pl.String})
        raws = store.latest_snapshot("te_customers", only=wanted,
                                     without=[c for c in TINYEMAIL_CUSTOMERS if c not in ("email", "raw")])
        payloads = dict(zip(raws["email"].to_list(), raws["raw"].to_list(), strict=True))
        rows = [tinyemail_customer_record(json.loads(payloads[a.email]), list(a.lists), options.region)
                for a in te.again]
        frames.append(to_frame(rows, TINYEMAIL_CUSTOMERS).with_columns(
            pl.Series(POSITION, [a.position for a in te.again], pl.Int64)))
    frame = pl.concat(frames).sort(POSITION).drop(POSITION)
    carried = te.customers_carried.filter(~te.customers_carried.is_in(frame["email"].implode()))
    return replace(te, customers=frame.unique("email", keep="first", maintain_order=True), again=(),
                   customers_carried=carried.unique(maintain_order=True))


async def _normalised(items: Sequence[T], build: Callable[[T], dict[str, Any]], schema: pl.Schema) -> pl.DataFrame:
    """`build` of every item as one frame of `schema` (`_chunks`)."""
    frames = [to_frame([], schema)]
    async for frame in _chunks(items, build, schema):
        frames.append(frame)
    return pl.concat(frames, rechunk=True)


async def _spilled(chunks: AsyncIterator[pl.DataFrame], into: Spill) -> None:
    """Every chunk written to `into` as it comes (store/spill.py): none is held once written."""
    async for frame in chunks:
        into.add(frame)


async def _chunks(items: Sequence[T] | list[T | None], build: Callable[[T], dict[str, Any]], schema: pl.Schema, *,
                  release: bool = False) -> AsyncIterator[pl.DataFrame]:
    """`build` of every item, as frames of `schema` of `NORMALISE_CHUNK` rows; after each chunk it sleeps as long
    as the chunk took, so it never holds more than half of the event loop (module docstring, step 2). `release`
    (`items` a list the caller gave up): each item is dropped from it once built, so the payloads (a first night's
    every contact, as JSON text) go as their rows are made."""
    for start in range(0, len(items), NORMALISE_CHUNK):
        began = time.perf_counter()
        chunk = items[start:start + NORMALISE_CHUNK]
        if release and isinstance(items, list):
            items[start:start + len(chunk)] = [None] * len(chunk)
        yield to_frame([build(item) for item in chunk], schema)  # type: ignore[arg-type]
        await asyncio.sleep(time.perf_counter() - began)


# ----------------------------------------------------------------------------------- Prefect tasks


def _prefect_task(fn: Callable[..., Any], name: str) -> Any:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(fn, name=name, cache_policy=NO_CACHE, persist_result=False, retries=0)  # type: ignore[call-overload]


async def _snapshot_ghl_location(location_id: str, settings: Settings, previous: PreviousState,
                                 options: SnapshotOptions, progress: Progress | None = None,
                                 client_factory: GHLFactory | None = None) -> LocationSnapshot:
    """Prefect task: snapshot one GHL location (see `fetch_ghl_location`)."""
    client = client_factory(location_id) if client_factory else GHLClient.from_settings(settings, location_id)
    async with client:
        return await fetch_ghl_location(client, previous, options, progress)


async def _snapshot_tinyemail(settings: Settings, options: SnapshotOptions, progress: Progress | None = None,
                              client_factory: TinyEmailFactory | None = None,
                              previous: pl.DataFrame | None = None) -> TinyEmailSnapshot:
    """Prefect task: snapshot TinyEmail (see `fetch_tinyemail`)."""
    with _failing_as("tinyemail"):
        client = client_factory() if client_factory else TinyEmailClient.from_settings(settings)
    async with client:
        return await fetch_tinyemail(client, options, progress, previous)


snapshot_ghl_location = _prefect_task(_snapshot_ghl_location, "snapshot_ghl_location")
snapshot_tinyemail = _prefect_task(_snapshot_tinyemail, "snapshot_tinyemail")


# ------------------------------------------------------------------------------------- the stage


def run_snapshot(settings: Settings, store: Store, locations: Sequence[str], *, full_sweep: bool = False,
                 night_index: int | None = None, allow_empty: bool = False,
                 ghl_client: GHLFactory | None = None, tinyemail_client: TinyEmailFactory | None = None,
                 options: SnapshotOptions | None = None) -> SnapshotResult:
    """Snapshot every location and TinyEmail into `store` in one transaction (module docstring).

    Args:
        settings: connection settings and the snapshot knobs (notes_sweep_k, notes_safety_lag_s,
            write_reserve, snapshot_concurrency, default_region).
        store: the open store; read before fetching, written once after every fetch succeeded.
        locations: the GHL location ids to snapshot (usually `settings.ghl_location_ids`).
        full_sweep: read every contact's tasks and notes tonight (K = 1).
        night_index: selects the sweep slice (default: the UTC date ordinal of the run).
        allow_empty: accept a side that came back empty while its previous snapshot was not.
        ghl_client, tinyemail_client: client factories (tests: isolated budgets); default from settings.
        options: overrides every knob at once (tests).
    Raises:
        SnapshotFailed: TinyEmail or every location failed (auth, outage, budget); nothing was written. A
            location that failed while others did not is in the result's `failed` instead.
        SideCameBackEmpty: a side answered with no records while its previous snapshot had some.
    """
    started, t0 = store.clock(), time.perf_counter()
    night = night_index if night_index is not None else started.date().toordinal()
    options = replace(options or SnapshotOptions.from_settings(settings), full_sweep=full_sweep or
                      (options.full_sweep if options else False), night_index=night, allow_empty=allow_empty)
    run_id = store.start_run("snapshot", locations)
    progress = Progress()
    # the GHL rows wait in `spill_dir` as Parquet files until the write (store/spill.py)
    with spill_root(store.path.parent if store.path is not None else None) as spill_dir:
        options = replace(options, spill_root=spill_dir)
        try:
            previous = {loc: PreviousState.load(store, loc, options.safety_lag_s) for loc in locations}
            te_previous = _previous_customers(store)
            # the fetch starts with DuckDB's memory free (Store.reopen): reading a million rows' digests left about
            # 490 MB held by the connection, which the fetch never uses (it writes nothing until `_write`)
            store.reopen()
            loaded = time.perf_counter()
            results, te = _fetch_all(settings, previous, te_previous, options, progress, ghl_client, tinyemail_client)
            te = resolve_again(store, te, options)
            fetched = time.perf_counter()
            ghl, failed = _without_failed(results, progress)
            # the results carry their own plan and usage (a task runner may have worked on copies of `progress`)
            progress.plans.update({f"ghl:{s.location_id}": s.plan.to_json() for s in ghl} | {"tinyemail": te.plan})
            progress.used.update({f"ghl:{s.location_id}": s.used for s in ghl} | {"tinyemail": te.used})
            unreadable = unreadable_rows(ghl, te)
            _check_sides(ghl, te, previous, te_previous.height, options.allow_empty)
            store.set_plan(run_id, progress.plans)
            done = [s.location_id for s in ghl]
            ingest_s, counts = _write(store, run_id, ghl, te, done, started)
        except BaseException as exc:
            store.set_plan(run_id, progress.plans)
            store.finish_run(run_id, "failed", progress.used, error=str(exc) or type(exc).__name__)
            raise
    store.finish_run(run_id, "succeeded", progress.used, error="; ".join(f"snapshot of {where} failed: {why}"
                                                                         for where, why in failed.items()) or None)
    result = SnapshotResult(run_id, counts, progress.plans, progress.used, ingest_s, time.perf_counter() - t0,
                            loaded - t0, fetched - loaded, failed, unreadable, tuple(done))
    log.info("snapshot %s: %s in %.1f s (fetch %.1f s, write %.1f s); requests %s", run_id,
             ", ".join(f"{n:,} {entity}" for entity, n in counts.items()), result.wall_s, result.fetch_s, ingest_s,
             "; ".join(f"{where} {_total(used)}" for where, used in progress.used.items()))
    return result


def _spill_root(options: SnapshotOptions) -> Path:
    if options.spill_root is None:
        raise ValueError("SnapshotOptions.spill_root is not set: run_snapshot sets it (store/spill.py)")
    return options.spill_root


def _total(used: Any) -> str:
    """A system's requests used and where they went, e.g. "412 (contacts 2, tasks 120, notes 290, rate_limited 0,
    retried 0)": the run's `total` (`_Used`), else the sum of its phases; `rate_limited` and `retried` are counts of
    the same requests (a 429, a retry), never added to it."""
    if not isinstance(used, dict):
        return str(used)
    numbers = {kind: n for kind, n in used.items() if isinstance(n, int) and not isinstance(n, bool)}
    total = numbers.pop("total", None)
    if total is None:
        total = sum(n for kind, n in numbers.items() if kind not in ("rate_limited", "retried"))
    return f"{total:,}" + (f" ({', '.join(f'{k} {v:,}' for k, v in numbers.items())})" if numbers else "")


def _fetch_all(settings: Settings, previous: dict[str, PreviousState], te_previous: pl.DataFrame,
               options: SnapshotOptions, progress: Progress, ghl_client: GHLFactory | None,
               te_client: TinyEmailFactory | None) -> tuple[list[LocationSnapshot | SnapshotFailed], TinyEmailSnapshot]:
    """Every location and TinyEmail at once: Prefect tasks inside a flow run, else asyncio tasks. A location
    whose snapshot failed is its `SnapshotFailed` in the list (the others go on); TinyEmail's failure raises."""
    if _in_flow():
        futures = [snapshot_ghl_location.submit(loc, settings, prev, options, progress, ghl_client)
                   for loc, prev in previous.items()]
        te_future = snapshot_tinyemail.submit(settings, options, progress, te_client, te_previous)
        te = te_future.result()
        return [_outcome(f.result) for f in futures], te

    async def gather() -> tuple[list[LocationSnapshot | SnapshotFailed], TinyEmailSnapshot]:
        jobs: list[Awaitable[Any]] = [_isolated(_snapshot_ghl_location(loc, settings, prev, options, progress,
                                                                       ghl_client))
                                      for loc, prev in previous.items()]
        jobs.append(_snapshot_tinyemail(settings, options, progress, te_client, te_previous))
        results = await _all_or_nothing(jobs)
        return results[:-1], results[-1]

    return asyncio.run(gather())


def _outcome(result: Callable[[], LocationSnapshot]) -> LocationSnapshot | SnapshotFailed:
    try:
        return result()
    except SnapshotFailed as failure:
        return failure


async def _isolated(job: Awaitable[LocationSnapshot]) -> LocationSnapshot | SnapshotFailed:
    """One location's snapshot, its `SnapshotFailed` returned rather than raised (it stops that location only)."""
    try:
        return await job
    except SnapshotFailed as failure:
        return failure


def _without_failed(results: Sequence[LocationSnapshot | SnapshotFailed],
                    progress: Progress) -> tuple[list[LocationSnapshot], dict[str, str]]:
    """The locations snapshotted and, by "ghl:<location>", why the others failed; the first failure is raised
    when every location failed (nothing would go on)."""
    done = [r for r in results if isinstance(r, LocationSnapshot)]
    failures = [r for r in results if isinstance(r, SnapshotFailed)]
    if failures and not done:
        raise failures[0]
    for failure in failures:
        log.error("snapshot of %s failed, the other locations go on: %s", failure.system, failure.reason)
        progress.used[failure.system] = failure.used
    return done, {f.system: f.reason for f in failures}


def unreadable_rows(ghl: Sequence[LocationSnapshot], te: TinyEmailSnapshot) -> list[dict[str, Any]]:
    """Every record present but unreadable tonight: system, location, key (id or email), where, problem."""
    rows = [{"system": "ghl", "location_id": s.location_id, "key": u.key, "where": u.where, "problem": u.problem}
            for s in ghl for u in s.unreadable]
    return rows + [{"system": "tinyemail", "location_id": None, "key": u.key, "where": u.where, "problem": u.problem}
                   for u in te.unreadable]


def _in_flow() -> bool:
    try:
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover - prefect is a dependency
        return False
    return FlowRunContext.get() is not None


def _check_sides(ghl: list[LocationSnapshot], te: TinyEmailSnapshot, previous: dict[str, PreviousState],
                 te_previous: int, allow_empty: bool) -> None:
    for snap in ghl:
        check_not_emptied(f"ghl:{snap.location_id}", snap.present,
                          previous[snap.location_id].contacts.height, allow_empty=allow_empty)
    check_not_emptied("tinyemail", te.present, te_previous, allow_empty=allow_empty)


def _write(store: Store, run_id: str, ghl: list[LocationSnapshot], te: TinyEmailSnapshot,
           locations: Sequence[str], started: datetime) -> tuple[float, dict[str, int]]:
    """Mark deferred contacts dirty, write everything in one transaction (the tasks and notes not read tonight
    copied over inside the store), then clear the dirty marks read; the seconds the write took, the rows written."""
    for snap in ghl:
        store.mark_dirty_many(snap.location_id, snap.deferred, "deferred: request budget")
    frames: dict[str, pl.DataFrame | Spill] = {
        "ghl_contacts": Spill.joined([s.contacts for s in ghl], GHL_CONTACTS),
        "ghl_tasks": Spill.joined([s.tasks for s in ghl], GHL_TASKS),
        "ghl_notes": Spill.joined([s.notes for s in ghl], GHL_NOTES),
        "te_customers": te.customers}
    watermarks = {(s.location_id, WATERMARK_ENTITY): s.watermark for s in ghl if s.watermark is not None}
    carried = {"te_customers": pl.DataFrame({"email": te.customers_carried}, schema={"email": pl.String}),
               "ghl_contacts": _carried_frame([(s.location_id, s.contacts_carried) for s in ghl]),
               "ghl_tasks": _carried_frame([(s.location_id, s.tasks_carried) for s in ghl]),
               "ghl_notes": _carried_frame([(s.location_id, s.notes_carried) for s in ghl])}
    t0 = time.perf_counter()
    counts = store.write_snapshot(run_id, frames, watermarks, location_ids=locations, carried=carried)
    store.save_lists(te.lists, run_id)  # their names: GHL spells a list tag with it (model/list_tags.py)
    ingest_s = time.perf_counter() - t0
    for snap in ghl:
        store.clear_dirty(((snap.location_id, c) for c in snap.dirty_read), marked_before=started)
        if snap.tasks_dirty_read:  # every task of the location was read tonight
            store.clear_tasks_dirty(snap.location_id, marked_before=started)
    return ingest_s, counts


def _carried_frame(carried: Sequence[tuple[str, Sequence[str]]]) -> pl.DataFrame:
    """(location_id, contact_id) rows of the contacts whose previous rows are copied over."""
    return pl.DataFrame({"location_id": [loc for loc, ids in carried for _ in ids],
                         "contact_id": [c for _, ids in carried for c in ids]},
                        schema={"location_id": pl.String, "contact_id": pl.String})


# ------------------------------------------------------------------------------------------ helpers


class _Used:
    """Requests used per phase, from the client's stats (each phase runs alone on its client)."""

    def __init__(self, stats: RequestStats):
        self.stats, self.first, self.last = stats, stats.used, stats.used
        self.started = self.phase_started = time.perf_counter()
        self.counts: dict[str, Any] = {"phase_s": {}}

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.counts[phase], self.last = self.stats.used - self.last, self.stats.used
        self.counts["phase_s"][phase], self.phase_started = round(now - self.phase_started, 3), now
        self.counts.update(total=self.stats.used - self.first, rate_limited=self.stats.rate_limited,
                           retried=self.stats.retried, wall_s=round(now - self.started, 3))


@contextmanager
def _failing_as(system: str, used: _Used | None = None) -> Iterator[None]:
    """A connector error of `system` becomes SnapshotFailed(system, reason), with the requests `used` so far."""
    try:
        yield
    except ConnectorError as exc:
        if used is not None:
            used.mark("failed")
        raise SnapshotFailed(system, f"{type(exc).__name__}: {exc}", used.counts if used else None) from exc


async def _pool(items: Sequence[T], fn: Callable[[T], Awaitable[R]], concurrency: int) -> list[R]:
    """`fn` of every item, at most `concurrency` at once, in order; the first error cancels the rest."""
    results: list[Any] = [None] * len(items)
    queue: Iterator[tuple[int, T]] = iter(enumerate(items))

    async def worker() -> None:
        for index, item in queue:
            results[index] = await fn(item)

    await _all_or_nothing([worker() for _ in range(max(1, min(concurrency, len(items))))])
    return results


async def _chunked(items: Sequence[T], fn: Callable[[T], Awaitable[R]], concurrency: int,
                   size: int) -> AsyncIterator[list[R]]:
    """`_pool` over `size` items at a time, each chunk's results yielded in order: the caller turns them into a
    frame before the next chunk, so a first night's two million notes are never Python dicts all at once."""
    for start in range(0, len(items), size):
        yield await _pool(items[start:start + size], fn, concurrency)


async def _all_or_nothing(jobs: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await all jobs concurrently; on the first failure cancel the others and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(job)) for job in jobs]
    except BaseExceptionGroup as group_error:
        raise _first_failure(group_error) from None
    return [t.result() for t in tasks]


async def _as_coroutine(job: Awaitable[Any]) -> Any:
    return await job


def _first_failure(group: BaseExceptionGroup) -> BaseException:
    """The failure to report: a SnapshotFailed or SideCameBackEmpty first, else the first error."""
    leaves = list(_leaves(group))
    named = [e for e in leaves if isinstance(e, SnapshotFailed | SideCameBackEmpty)]
    return (named or leaves)[0]


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
