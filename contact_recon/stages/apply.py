"""Apply a plan: journaled, idempotent, rate-limited writes to GHL and TinyEmail that survive a crash.

Neither API offers etags or idempotency keys, so safety comes from three habits:

1. **Journal first** (`contact_recon/store/journal.py`): every op of the run is recorded before anything is sent, and
   an op is marked `sending` (committed) before its request leaves. After a crash, only ops left in
   `sending` may have landed.
2. **Precondition**: before an update the live record is read and the field compared with the value the
   plan expected (`expected`). A person's edit since the snapshot makes the op `stale`: it is not sent,
   and the next run plans again from the new state. Tag and list ops are set operations (add x, remove x)
   merged into the live set, so a tag somebody added meanwhile is kept.
3. **Unknown outcomes** (timeout, reset, 5xx on a write): the target is re-read to learn whether the write
   landed before it is sent again. A create is looked for first: a GHL contact by email (or phone), a
   TinyEmail customer by email, a task or note by the marker `[recon:<op id>]` its body carries. So a
   retry never makes a duplicate.

Order: creates first (a contact exists before its updates, tags, tasks and notes; ops on a person created
in this run are addressed through the id the create returned), then GHL per contact (one read and one
PUT for all its field ops, one call for its tag adds and one for its removes), tasks and notes, then
TinyEmail (a read per customer for the precondition, then upserts of up to 500 customers a call, then list
memberships in batches of 500). GHL calls run concurrently within the location's rate budget (the
connectors pace every request, `contact_recon/systems/budget.py`).

Rejections (400/422) keep the API's message (`last_error`, error_kind `rejected`) and are not sent again
while the op's content is the same (its id is a hash of the content). Rate-limit exhaustion and outages
leave the op `failed` (error_kind `unavailable`); the next run plans it again, because the base advances
only for confirmed ops (`contact_recon/engine/state.py`). Authentication failures stop the stage.

`recover(journal, clients)` runs before planning: it resolves the ops an interrupted run left `sending`.
The new snapshot already shows whatever landed, except the memory of created tasks and notes, so a task or
note found by its marker is remembered (never created twice); every other unfinished op is closed as
`failed` (unknown) and the fresh plan covers it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.normalise import as_payload, ghl_contact_record, tinyemail_customer_record
from contact_recon.model.records import GHL_FIELD_NAMES, TINYEMAIL_FIELD_NAMES
from contact_recon.stages import failpoints
from contact_recon.stages.echo import EchoLog
from contact_recon.store import journal as J
from contact_recon.store.journal import Entry, Journal
from contact_recon.systems.errors import (
    AuthError,
    ConnectorError,
    Duplicate,
    NotFound,
    RateLimited,
    ScopeError,
    Unavailable,
    UnknownOutcome,
    Validation,
)
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.models import Contact, Customer
from contact_recon.systems.tinyemail.client import TinyEmailClient
from contact_recon.systems.tinyemail.contract import email_key

log = logging.getLogger("contact_recon.stages.apply")
BATCH = 500  # TinyEmail members per upsert / audience call
GHL_TIGHT, TE_TIGHT_STATUS = "dnd", "Unsubscribed"
TE_TIGHT = ("unsubscribed", "bounced", "spam")
FIELD_KINDS = ("update", "consent_tighten")
TAG_KINDS = ("tag_add", "tag_remove")
LIST_KINDS = ("list_add", "list_remove")
EVENT_KINDS = ("task_create", "note_create")
UPSERT_ONLY = frozenset({"companyName"})  # in CreateContactDto/UpsertContactDto, not in UpdateContactDto


@dataclass(frozen=True)
class Person:
    """How to address a person of the plan: its TinyEmail email, GHL contact id and location."""

    email: str | None
    contact_id: str | None
    location_id: str | None


@dataclass
class ApplyResult:
    counts: dict[str, int] = field(default_factory=dict)  # journal status -> ops of this run
    created_contacts: dict[str, str] = field(default_factory=dict)  # person key -> new GHL contact id


class StageStopped(Exception):  # noqa: N818 - the name is the contract
    """The apply stage stopped before the end (authentication or scope failure); the journal says where."""


def marker(op_id: str) -> str:
    """The stable marker a created task or note carries, so a retry can find what a lost answer made."""
    return f"[recon:{op_id[:16]}]"


def blank(value: Any) -> str | None:
    text = value.strip() if isinstance(value, str) else value
    return text or None


# ------------------------------------------------------------------------------------------- applier


class Applier:
    """Executes one run's journaled ops. Build with the journal, a GHL client per location and a TinyEmail
    client; `people` maps plan keys to how each person is addressed (contact_recon/stages/plan.py writes it)."""

    def __init__(self, journal: Journal, ghl: Mapping[str, GHLClient], te: TinyEmailClient,
                 people: Mapping[str, Person], *, default_location: str, region: str = "US",
                 concurrency: int = 16, max_attempts: int = 3, home_list: str | None = None,
                 echo: EchoLog | None = None, te_echo: EchoLog | None = None):
        self.journal, self.ghl, self.te, self.people = journal, ghl, te, dict(people)
        self.default_location, self.region = default_location, region
        self.max_attempts, self.home_list_name, self.echo = max_attempts, home_list, echo
        self.te_echo = te_echo
        self.gate = asyncio.Semaphore(concurrency)  # GHL calls in flight
        self.te_gate = asyncio.Semaphore(concurrency)  # TinyEmail precondition reads in flight
        self.created: dict[str, str] = {}  # key -> GHL contact id made by this run
        self.confirmed: dict[str, str | None] = {}  # op id -> the id the API returned, for ops confirmed here
        self.live_customers: dict[str, Customer] = {}  # normalised email -> customer read for the preconditions

    async def run(self, run_id: str) -> ApplyResult:
        """Send every `planned` op of the run (in the order of the module docstring)."""
        entries = self._not_rejected(self.journal.entries(run_id), run_id)
        ghl = [e for e in entries if e.target == "ghl"]
        te = [e for e in entries if e.target == "tinyemail"]
        # the two systems have budgets of their own and no op of one waits for the other: side by side
        results = await asyncio.gather(self._ghl_chain(ghl), self._te_chain(te), return_exceptions=True)
        stops = [r for r in results if isinstance(r, BaseException)]
        if stops:
            raise stops[0]
        return ApplyResult(self.journal.counts(run_id), dict(self.created))

    async def _ghl_chain(self, entries: list[Entry]) -> None:
        """GHL: contacts first (their ids address everything else), then per contact."""
        await self._all(self._ghl_create(e) for e in entries if e.kind == "create")
        rest = [e for e in entries if e.kind != "create"]
        await self._all(self._ghl_person(key, group) for key, group in _by_key(rest).items())

    async def _te_chain(self, entries: list[Entry]) -> None:
        """TinyEmail: creates (and their lists), then updates, then list memberships."""
        emails = [self._te_email(e) for e in entries]
        if self.te_echo is not None:
            self.te_echo.wrote(emails=[e for e in emails if e])  # what the watcher will see is ours (contact_recon/stages/echo.py)
        await self._te_creates([e for e in entries if e.kind == "create"])
        await self._te_updates([e for e in entries if e.kind not in ("create", *LIST_KINDS)])
        await self._te_lists([e for e in entries if e.kind in LIST_KINDS])
        if self.te_echo is not None:
            self.te_echo.wrote(emails=[e for e in emails if e])  # the window counts from the last write

    def _te_email(self, entry: Entry) -> str | None:
        if entry.kind == "create":
            return json.loads(entry.new or "{}").get("email")
        return self.email(entry.key)

    def _not_rejected(self, entries: list[Entry], run_id: str) -> list[Entry]:
        # an op the API rejected before, with the same content, is not sent again (issue: retried only
        # when its inputs change; changed inputs give another op id)
        rejected = self.journal.rejected_before([e.op_id for e in entries], run_id)
        for entry in (e for e in entries if e.op_id in rejected):
            self.journal.finish([entry], J.FAILED, error_kind=J.REJECTED,
                                error=f"rejected by an earlier run, not sent again: {rejected[entry.op_id]}")
        return [e for e in entries if e.op_id not in rejected]

    async def _all(self, jobs: Iterable[Awaitable[None]]) -> None:
        async def gated(job: Awaitable[None]) -> None:
            async with self.gate:
                await job
        results = await asyncio.gather(*(gated(job) for job in jobs), return_exceptions=True)
        stops = [r for r in results if isinstance(r, BaseException)]
        if stops:
            raise stops[0]

    # ---------------------------------------------------------------------------- the send loop

    async def _send(self, entries: list[Entry], send: Callable[[], Awaitable[str | None]],
                    landed: Callable[[], Awaitable[str | None | bool]]) -> bool:
        """Send one request for `entries` until it is confirmed, refused or out of attempts.

        `send` returns the id the API gave (or None); `landed` re-reads the target after an unknown
        outcome and returns False (not landed: send again) or the id / True (landed). Returns whether the
        write is confirmed; the journal has the outcome either way.
        """
        for attempt in range(1, self.max_attempts + 1):
            log.debug("%s: sending %d %s op(s), attempt %d", entries[0].target, len(entries), entries[0].kind, attempt)
            self.journal.sending(entries)
            failpoints.hit("sending", entries[0].kind)
            try:
                result_id = await send()
                failpoints.hit("answered", entries[0].kind)
            except UnknownOutcome as exc:
                found = await self._reread(entries, landed, exc)
                if found is None:
                    return False
                if found is not False:
                    self._confirm(entries, found if isinstance(found, str) else None)
                    return True
                continue  # re-read says it did not land: send again
            except ConnectorError as exc:
                self._refused(entries, exc)
                return False
            self._confirm(entries, result_id)
            return True
        self.journal.finish(entries, J.FAILED, error_kind=J.UNKNOWN,
                            error=f"not confirmed after {self.max_attempts} attempts")
        return False

    def _confirm(self, entries: list[Entry], result_id: str | None) -> None:
        self.journal.finish(entries, J.DONE, result_id=result_id)
        for entry in entries:
            self.confirmed[entry.op_id] = result_id

    async def _reread(self, entries: list[Entry], landed: Callable[[], Awaitable[str | None | bool]],
                      cause: Exception) -> str | bool | None:
        try:
            return await landed()
        except ConnectorError as exc:
            # the outcome stays unknown: the op stays unconfirmed and the next snapshot tells
            self.journal.finish(entries, J.FAILED, error_kind=J.UNKNOWN, error=f"{cause}; re-read failed: {exc}")
            if isinstance(exc, AuthError | ScopeError):
                raise StageStopped(str(exc)) from exc
            return None

    def _refused(self, entries: list[Entry], exc: ConnectorError) -> None:
        if isinstance(exc, Validation | Duplicate):
            self.journal.finish(entries, J.FAILED, error_kind=J.REJECTED, error="; ".join(
                getattr(exc, "messages", None) or [str(exc)]))
        elif isinstance(exc, NotFound):
            self.journal.finish(entries, J.FAILED, error_kind="not_found", error=str(exc))
        elif isinstance(exc, AuthError | ScopeError):
            self.journal.finish(entries, J.PLANNED, error_kind="auth", error=str(exc))
            raise StageStopped(str(exc)) from exc
        else:  # RateLimited, Unavailable after the connector's own retries, or anything else it raised
            kind = J.UNAVAILABLE if isinstance(exc, RateLimited | Unavailable) else "error"
            self.journal.finish(entries, J.FAILED, error_kind=kind, error=str(exc))

    # ------------------------------------------------------------------------------- addressing

    def person(self, key: str) -> Person:
        return self.people.get(key) or Person(key.removeprefix(TE_KEY_PREFIX) if key.startswith(TE_KEY_PREFIX)
                                              else None, None if key.startswith(TE_KEY_PREFIX) else key, None)

    def contact_id(self, key: str) -> str | None:
        return self.created.get(key) or self.person(key).contact_id

    def client(self, entry: Entry) -> GHLClient:
        return self.ghl[entry.location_id or self.person(entry.key).location_id or self.default_location]

    def email(self, key: str) -> str | None:
        return self.person(key).email

    # ------------------------------------------------------------------------------ GHL creates

    async def _ghl_create(self, entry: Entry) -> None:
        record = json.loads(entry.new or "{}")
        body = ghl_body(record)
        client = self.client(entry)
        if self.echo is not None:
            self.echo.wrote(emails=[record.get("email") or ""])  # its ContactCreate webhook is ours

        async def send() -> str | None:
            try:
                return (await client.create_contact(body)).id
            except Duplicate as exc:
                # somebody (or a lost answer of ours) made it already: that contact is the person's
                if exc.contact_id:
                    return exc.contact_id
                raise

        async def landed() -> str | bool:
            found = await client.find_duplicate(email=record.get("email"), phone=record.get("phone"))
            return found.id if found else False

        if await self._send([entry], send, landed):
            self.created[entry.key] = self.confirmed.get(entry.op_id) or ""
            if self.echo is not None:
                self.echo.wrote([self.created[entry.key]])

    # ---------------------------------------------------------------------- GHL, per contact

    async def _ghl_person(self, key: str, entries: list[Entry]) -> None:
        contact_id = self.contact_id(key)
        if not contact_id:
            self.journal.finish(entries, J.FAILED, error_kind=J.DEPENDENCY,
                                error="the GHL contact does not exist (its create did not succeed)")
            return
        if self.echo is not None:
            self.echo.wrote([contact_id])  # its webhooks are our echo, not a person's edit (contact_recon/stages/echo.py)
        client = self.client(entries[0])
        fields = [e for e in entries if e.kind in FIELD_KINDS]
        if fields:
            await self._ghl_fields(client, contact_id, fields)
        for kind in TAG_KINDS:
            tags = [e for e in entries if e.kind == kind]
            if tags:
                await self._ghl_tags(client, contact_id, kind, tags)
        for entry in (e for e in entries if e.kind in EVENT_KINDS):
            await self._ghl_event(client, contact_id, entry)
        for entry in (e for e in entries if e.kind not in (*FIELD_KINDS, *TAG_KINDS, *EVENT_KINDS)):
            self.journal.finish([entry], J.HELD, error=f"{entry.kind} is reported, never written")

    async def _ghl_fields(self, client: GHLClient, contact_id: str, entries: list[Entry]) -> None:
        try:
            live = ghl_row(await client.get_contact(contact_id), client.location_id, self.region)
        except ConnectorError as exc:
            self._refused(entries, exc)
            return
        todo = self._preconditions(entries, live, tight=lambda v: v == GHL_TIGHT)
        if not todo:
            return
        body = ghl_update_body(todo)
        by_upsert = bool(UPSERT_ONLY & set(body))
        if by_upsert and not live.get("email_raw"):
            # the contact update cannot set these fields, and without an email no upsert can reach the contact
            self.journal.finish(todo, J.FAILED, error_kind=J.REJECTED,
                                error=f"GHL's contact update cannot set {sorted(UPSERT_ONLY & set(body))} and the "
                                      "contact has no email to upsert by")
            return

        async def send() -> None:
            if not by_upsert:
                await client.update_contact(contact_id, body)
                return
            # PUT /contacts/{id} has no companyName (UpdateContactDto): the upsert, matched by the contact's
            # own email, is the documented way; it must land on this very contact
            contact, _ = await client.upsert_contact({"email": live["email_raw"], **body})
            if contact.id != contact_id:
                raise Validation(f"the upsert by email reached contact {contact.id}, not {contact_id}",
                                 system="ghl", method="POST", path="/contacts/upsert")

        async def landed() -> bool:
            now = ghl_row(await client.get_contact(contact_id), client.location_id, self.region)
            return all(_has_new(e, now, tight=lambda v: v == GHL_TIGHT) for e in todo)

        await self._send(todo, send, landed)

    def _preconditions(self, entries: list[Entry], live: Mapping[str, Any], *,
                       tight: Callable[[Any], bool]) -> list[Entry]:
        """The entries whose premise holds on the live record; the others are closed here."""
        todo = []
        for entry in entries:
            current = blank(live.get(entry.field or ""))
            if _has_new(entry, live, tight=tight):
                # already as planned (somebody made the same change): confirmed without a write
                self.journal.finish([entry], J.DONE, error="already as planned; nothing sent")
            elif current == blank(entry.expected) or (entry.kind == "consent_tighten" and not tight(current)):
                # the premise holds (a consent op only needs the live value to be loose): write it
                todo.append(entry)
            else:
                # changed by a person since the snapshot: never overwrite a fresh edit
                self.journal.finish([entry], J.STALE, error_kind=J.PRECONDITION,
                                    error="changed since the snapshot; planned again next run")
        return todo

    async def _ghl_tags(self, client: GHLClient, contact_id: str, kind: str, entries: list[Entry]) -> None:
        adding = kind == "tag_add"
        tags = [e.new if adding else e.expected for e in entries]
        tags = [t for t in tags if t]

        async def send() -> None:
            await (client.add_tags if adding else client.remove_tags)(contact_id, tags)

        async def landed() -> bool:
            now = set((await client.get_contact(contact_id)).tags or [])
            return set(tags) <= now if adding else not set(tags) & now

        await self._send(entries, send, landed)

    async def _ghl_event(self, client: GHLClient, contact_id: str, entry: Entry) -> None:
        mark = marker(entry.op_id)

        async def send() -> str | None:
            if entry.kind == "task_create":
                task = json.loads(entry.new or "{}")
                body = "\n\n".join(p for p in (task.get("body"), mark) if p)
                return (await client.create_task(contact_id, title=task.get("title") or "Follow up",
                                                 due_date=task.get("due_date") or "", body=body)).id
            return (await client.create_note(contact_id, f"{entry.new or ''}\n\n{mark}")).id

        async def landed() -> str | bool:
            return await find_marked(client, contact_id, entry) or False

        if await self._send([entry], send, landed):
            self.journal.remember_created(entry, self.confirmed.get(entry.op_id), contact_id)

    # -------------------------------------------------------------------------------- TinyEmail

    async def _te_creates(self, entries: list[Entry]) -> None:
        members = [(e, te_member(json.loads(e.new or "{}"))) for e in entries]
        for start in range(0, len(members), BATCH):
            await self._te_upsert(members[start:start + BATCH])
        lists: dict[str, list[str]] = defaultdict(list)
        home = await self._home_list() if members else None
        for entry, member in members:
            if self._done(entry):
                for list_id in [*json.loads(entry.new or "{}").get("lists", []), *([home] if home else [])]:
                    lists[list_id].append(member["email"])
        for list_id, emails in lists.items():
            # a created customer's lists: set operations, re-sent whole on an unknown outcome
            for start in range(0, len(emails), BATCH):
                await self._idempotent(lambda ids=emails[start:start + BATCH], lid=list_id:
                                       self.te.add_to_list(lid, ids))

    async def _home_list(self) -> str | None:
        """The id of the list every customer we create joins (policy `create.tinyemail_list`), made when missing
        and remembered in the store, so the planner can leave its membership out of the list sync."""
        if not self.home_list_name:
            return None
        lists = {lst.name: lst.id for lst in await self.te.lists()}
        list_id = lists.get(self.home_list_name)
        if list_id is None:
            try:
                list_id = (await self.te.create_list(self.home_list_name)).id
            except UnknownOutcome:
                # it may exist now: look for it by name before anything else (never two lists)
                list_id = {lst.name: lst.id for lst in await self.te.lists()}.get(self.home_list_name)
                if list_id is None:
                    raise
        self.journal.remember_home_list(self.home_list_name, list_id)
        return list_id

    def _done(self, entry: Entry) -> bool:
        return entry.op_id in self.confirmed

    async def _te_upsert(self, batch: list[tuple[Entry, dict[str, Any]]]) -> None:
        await self._te_send([e for e, _ in batch], [m for _, m in batch])

    async def _te_send(self, entries: list[Entry], members: list[dict[str, Any]]) -> None:
        """One upsert call (at most BATCH members) for `entries`."""
        async def send() -> None:
            await self.te.upsert_customers(members)

        async def landed() -> bool:
            # re-read each customer: all as sent -> confirmed; otherwise the batch is sent again (an upsert
            # of exact values is idempotent, so a partial landing cannot duplicate anything)
            found = [await self.te.get_customer(m["email"]) for m in members]
            return all(c is not None and _member_applied(m, c) for m, c in zip(members, found, strict=True))

        await self._send(entries, send, landed)

    async def _te_updates(self, entries: list[Entry]) -> None:
        """Per customer: read it (the precondition, concurrently within the budget), then upsert BATCH at a time."""
        groups = list(_by_key(entries).items())
        self.live_customers = await self._te_prefetch([self.email(key) or "" for key, _ in groups])
        for start in range(0, len(groups), BATCH):
            chunk = groups[start:start + BATCH]
            built = await asyncio.gather(*(self._te_member_for(key, group) for key, group in chunk))
            ready = [b for b in built if b]
            if ready:
                await self._te_upsert_groups(ready)

    async def _te_member_for(self, key: str, entries: list[Entry]) -> tuple[list[Entry], dict[str, Any]] | None:
        """Read the customer (the precondition) and build the member that carries every op that still holds."""
        email = self.email(key)
        if not email:
            self.journal.finish(entries, J.FAILED, error_kind=J.DEPENDENCY, error="no TinyEmail email known")
            return None
        try:
            customer = self.live_customers.get(email_key(email))
            if customer is None:
                async with self.te_gate:
                    customer = await self.te.get_customer(email)
        except ConnectorError as exc:
            self._refused(entries, exc)
            return None
        if customer is None:
            self.journal.finish(entries, J.FAILED, error_kind="not_found", error="no TinyEmail customer")
            return None
        live = tinyemail_customer_record(as_payload(customer), [], self.region)
        fields = self._preconditions([e for e in entries if e.kind in FIELD_KINDS], live,
                                     tight=lambda v: v in TE_TIGHT)
        member: dict[str, Any] = {"email": customer.email}
        for entry in fields:
            if entry.kind == "consent_tighten":
                member["status"] = TE_TIGHT_STATUS
            else:
                member[TINYEMAIL_FIELD_NAMES[entry.field or ""]] = entry.new or ""
        tag_ops = [e for e in entries if e.kind in TAG_KINDS]
        if tag_ops:
            # merged into the live set: a tag somebody added or removed meanwhile keeps that change
            gone = {e.expected for e in tag_ops if e.kind == "tag_remove"}
            added = [e.new for e in tag_ops if e.kind == "tag_add" and e.new]
            member["tags"] = [t for t in dict.fromkeys([*customer.tags, *added]) if t not in gone]
        todo = [*fields, *tag_ops]
        return (todo, member) if todo else None

    async def _te_prefetch(self, emails: list[str]) -> dict[str, Customer]:
        """The live customers for the preconditions, read the cheaper way: one GET per customer, or, when that
        would take more requests than walking every list (100 customers a page), the walk. A customer the walk
        does not reach (in no list) is read by GET later."""
        wanted = {email_key(e) for e in emails if e}
        if not wanted:
            return {}
        lists = await self.te.lists()
        pages = sum((lst.numberOfMembers or 0) // self.te.page_size + 1 for lst in lists)
        if len(wanted) <= pages:
            return {}
        audience = await self.te.all_customers()
        return {email: c for email, c in audience.customers.items() if email in wanted}

    async def _te_upsert_groups(self, groups: list[tuple[list[Entry], dict[str, Any]]]) -> None:
        await self._te_send([e for group, _ in groups for e in group], [m for _, m in groups])

    async def _te_lists(self, entries: list[Entry]) -> None:
        groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
        for entry in entries:
            groups[(entry.kind, (entry.new if entry.kind == "list_add" else entry.expected) or "")].append(entry)
        for (kind, list_id), group in groups.items():
            for start in range(0, len(group), BATCH):
                await self._te_list_batch(kind, list_id, group[start:start + BATCH])

    async def _te_list_batch(self, kind: str, list_id: str, entries: list[Entry]) -> None:
        ready = [e for e in entries if self.email(e.key)]
        missing = [e for e in entries if not self.email(e.key)]
        if missing:
            self.journal.finish(missing, J.FAILED, error_kind=J.DEPENDENCY, error="no TinyEmail email known")
        emails = [self.email(e.key) or "" for e in ready]

        async def send() -> None:
            if kind == "list_add":
                await self.te.add_to_list(list_id, emails)
            else:
                await self.te.remove_from_list(list_id, emails)

        async def landed() -> bool:
            # list membership is a set: assigning or unassigning again cannot duplicate, so send again
            return False

        if ready:
            await self._send(ready, send, landed)

    async def _idempotent(self, call: Callable[[], Awaitable[None]]) -> None:
        for attempt in range(self.max_attempts):
            try:
                await call()
                return
            except UnknownOutcome:
                if attempt == self.max_attempts - 1:
                    raise


# ----------------------------------------------------------------------------------------- recovery


async def recover(journal: Journal, ghl: Mapping[str, GHLClient], default_location: str) -> dict[str, int]:
    """Resolve ops an interrupted run left `sending` (module docstring); returns outcome -> count."""
    outcome: dict[str, int] = defaultdict(int)
    for entry in journal.unfinished():
        if entry.kind in EVENT_KINDS:
            client = ghl.get(entry.location_id or default_location)
            found = contact_id = None
            if client is not None and entry.result_id is None:
                contact_id = await _contact_of(journal, client, entry)
                found = await find_marked(client, contact_id, entry) if contact_id else None
            if found:
                journal.finish([entry], J.DONE, result_id=found, error="found by its marker after an interruption")
                journal.remember_created(entry, found, contact_id)
                outcome["found"] += 1
                continue
        journal.finish([entry], J.FAILED, error_kind=J.UNKNOWN,
                       error="interrupted while sending; the next snapshot shows whether it landed")
        outcome["unknown"] += 1
    return dict(outcome)


async def _contact_of(journal: Journal, client: GHLClient, entry: Entry) -> str | None:
    """The GHL contact of an entry's person: its key, or for a person created by that same run (`te:<email>`)
    the id its create returned, else the contact that now has the email."""
    if not entry.key.startswith(TE_KEY_PREFIX):
        return entry.key
    made = journal.result_of(entry.run_id, entry.key, "create", "ghl")
    if made:
        return made
    found = await client.find_duplicate(email=entry.key.removeprefix(TE_KEY_PREFIX))
    return found.id if found else None


async def find_marked(client: GHLClient, contact_id: str | None, entry: Entry) -> str | None:
    """The id of the task or note of `contact_id` whose body carries the entry's marker."""
    if not contact_id:
        return None
    mark = marker(entry.op_id)
    objects = await (client.list_tasks(contact_id) if entry.kind == "task_create" else client.list_notes(contact_id))
    return next((o.id for o in objects if mark in (getattr(o, "body", None) or "")), None)


# ------------------------------------------------------------------------------------------ shapes


def ghl_row(contact: Contact, location_id: str, region: str) -> dict[str, Any]:
    return ghl_contact_record(as_payload(contact), location_id, region)


def ghl_body(record: Mapping[str, Any]) -> dict[str, Any]:
    """A create op's canonical record (contact_recon/model/ops.py create_payload) as a GHL contact body."""
    body = {GHL_FIELD_NAMES[name]: value for name, value in record.items() if name in GHL_FIELD_NAMES}
    if record.get("consent") == GHL_TIGHT:
        body["dndSettings"] = {"Email": {"status": "active", "message": "contact-recon: unsubscribed in TinyEmail"}}
    return body


def ghl_update_body(entries: Sequence[Entry]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for entry in entries:
        if entry.kind == "consent_tighten":
            body["dndSettings"] = {"Email": {"status": "active", "message": "contact-recon: unsubscribed in TinyEmail"}}
        else:
            body[GHL_FIELD_NAMES[entry.field or ""]] = entry.new or ""
    return body


def te_member(record: Mapping[str, Any]) -> dict[str, Any]:
    """A create op's canonical record as a TinyEmail member (lists are assigned after the upsert)."""
    member = {TINYEMAIL_FIELD_NAMES[name]: value for name, value in record.items() if name in TINYEMAIL_FIELD_NAMES}
    if record.get("consent"):
        member["status"] = TE_TIGHT_STATUS
    return member


def _has_new(entry: Entry, live: Mapping[str, Any], *, tight: Callable[[Any], bool]) -> bool:
    if entry.kind == "consent_tighten":
        return tight(blank(live.get("consent")))
    return blank(live.get(entry.field or "")) == blank(entry.new)


def _member_applied(member: Mapping[str, Any], customer: Customer) -> bool:
    """Whether a customer read back carries every value the member sent."""
    live = customer.model_dump()
    for name, value in member.items():
        if name == "email":
            continue
        if name == "tags":
            if list(live.get("tags") or []) != list(value):
                return False
        elif name == "status":
            if str(live.get("status") or "").lower() not in TE_TIGHT:
                return False
        elif blank(live.get(name)) != blank(value):
            return False
    return True


def _by_key(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        groups[entry.key].append(entry)
    return groups
