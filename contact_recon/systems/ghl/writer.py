"""GHL's writer: executes the apply stage's GHL ops, one location client each, within the location's rate budget.

Order: creates first (a contact exists before its updates, tags, tasks and notes; ops on a person created
in this run are addressed through the id the create returned), then per contact: one read and one write
for all its field ops, one call for its tag adds and one for its removes, then its tasks and notes. Calls
run `concurrency` at a time; the client paces every request (systems/budget.py).

Body quirks:
- a tight consent is `dndSettings.Email` active (`mapping.dnd_on`), never the global `dnd`;
- `PUT /contacts/{id}` (UpdateContactDto) has no `companyName` (`UPSERT_ONLY`): such an update goes by
  `POST /contacts/upsert` matched by the contact's own email, and must land on this very contact; a
  contact without an email cannot be reached that way, so the op is rejected;
- a custom field op (`custom:<fieldKey>`, model/custom_fields.py) is a `customFields` item `{"id", "field_value"}`
  by the location's id of that fieldKey (read once per run, `GHLClient.custom_field_id`); a location that does
  not define the field gets no write (the op is held, with a warning);
- tags are never sent in an update (it would replace them all): adds and removes are their own calls; a
  list tag's removal reads the contact first, to remove the spelling of that list it holds (by tag key,
  `model/tags.py`) beside the spellings the list has had.

Unknown outcomes are re-read before anything is sent again: a create by the contact's email (or phone),
a field update by reading the contact, tags by reading its tag set, a task or note by the marker
`[recon:<op id>]` its body carries (`find_marked`, also what `recover` in stages/apply.py uses). A
duplicate answer to a create names the contact that exists: that contact is the person's.

Shapes (systems/models.py): the op (model/ops.py) becomes a request body here; the contact read for the
precondition becomes a canonical GHL_CONTACTS row (`mapping.contact_row`), which the op is checked on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Generic

from contact_recon.model.custom_fields import is_custom, loads, name_of, text_value
from contact_recon.model.keys import TE_KEY_PREFIX, Person, address, is_te_key
from contact_recon.model.list_tags import LIST_TAG_RESPELLED, ListNames
from contact_recon.model.ops import Kind
from contact_recon.model.policy import ConsentPolicy
from contact_recon.model.tags import TAG_FOLDED, tag_key
from contact_recon.systems.errors import ConnectorError, Duplicate, Validation
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.ghl.mapping import contact_body, contact_row, custom_field_item, dnd_on, field_name
from contact_recon.systems.writer import (
    EVENT_KINDS,
    FIELD_KINDS,
    TAG_KINDS,
    Echo,
    Ledger,
    OpT,
    Unsent,
    WriteOp,
    by_key,
    has_new,
    premises,
)

log = logging.getLogger("contact_recon.systems.ghl.writer")

UPSERT_ONLY = frozenset({"companyName"})  # in CreateContactDto/UpsertContactDto, not in UpdateContactDto


class GHLWriter(Generic[OpT]):
    """Writes one run's GHL ops (module docstring) through a client per location; `people` says how each person
    of the plan is addressed, `consent.ghl_tight` which canonical consent values mean DND."""

    def __init__(self, clients: Mapping[str, GHLClient], people: Mapping[str, Person], ledger: Ledger[OpT], *,
                 default_location: str, region: str = "US", concurrency: int = 16,
                 consent: ConsentPolicy = ConsentPolicy(), echo: Echo | None = None,
                 list_tags: ListNames | None = None):
        self.clients, self.people, self.ledger = clients, people, ledger
        self.default_location, self.region, self.echo = default_location, region, echo
        self.tight_values = consent.ghl_tight
        self.list_tags = list_tags or ListNames()
        self.gate = asyncio.Semaphore(concurrency)  # GHL calls in flight
        self.created: dict[str, str] = {}  # key -> GHL contact id made by this run

    async def write(self, ops: Sequence[OpT]) -> None:
        """Contacts first (their ids address everything else), then per contact."""
        await self._all(self._create(op) for op in ops if op.kind == Kind.CREATE)
        rest = [op for op in ops if op.kind != Kind.CREATE]
        await self._all(self._person(key, group) for key, group in by_key(rest).items())

    def _tight(self, consent: Any) -> bool:
        return consent in self.tight_values

    async def _all(self, jobs: Iterable[Awaitable[None]]) -> None:
        async def gated(job: Awaitable[None]) -> None:
            async with self.gate:
                await job
        results = await asyncio.gather(*(gated(job) for job in jobs), return_exceptions=True)
        stops = [r for r in results if isinstance(r, BaseException)]
        if stops:
            raise stops[0]

    # ------------------------------------------------------------------------------- addressing

    def person(self, key: str) -> Person:
        return address(self.people, key)

    def contact_id(self, key: str) -> str | None:
        return self.created.get(key) or self.person(key).contact_id

    def client(self, op: WriteOp) -> GHLClient:
        return self.clients[op.location_id or self.person(op.key).location_id or self.default_location]

    # ---------------------------------------------------------------------------------- creates

    async def _create(self, op: OpT) -> None:
        record = json.loads(op.new or "{}")
        record["tags"] = [self.list_tags.spell(t) for t in record.get("tags") or []]  # list:<id> -> list:<label>
        body = contact_body(record, self.tight_values)
        client = self.client(op)
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

        if await self.ledger.send([op], send, landed):
            self.created[op.key] = self.ledger.result(op) or ""
            if self.echo is not None:
                self.echo.wrote([self.created[op.key]])

    # ------------------------------------------------------------------------------ per contact

    async def _person(self, key: str, ops: list[OpT]) -> None:
        contact_id = self.contact_id(key)
        if not contact_id:
            self.ledger.close(ops, Unsent.DEPENDENCY, "the GHL contact does not exist (its create did not succeed)")
            return
        if self.echo is not None:
            self.echo.wrote([contact_id])  # its webhooks are our echo, not a person's edit (stages/echo.py)
        client = self.client(ops[0])
        fields = [op for op in ops if op.kind in FIELD_KINDS]
        if fields:
            await self._fields(client, contact_id, fields)
        for kind in TAG_KINDS:
            tags = [op for op in ops if op.kind == kind]
            if tags:
                await self._tags(client, contact_id, kind, tags)
        for op in (op for op in ops if op.kind in EVENT_KINDS):
            await self._event(client, contact_id, op)
        for op in (op for op in ops if op.kind not in (*FIELD_KINDS, *TAG_KINDS, *EVENT_KINDS)):
            self.ledger.close([op], Unsent.HELD, f"{op.kind} is reported, never written")

    async def _fields(self, client: GHLClient, contact_id: str, ops: list[OpT]) -> None:
        try:
            ids = await self._custom_ids(client, ops)
            live = await self._live(client, contact_id, ops)
        except ConnectorError as exc:
            self.ledger.refused(ops, exc)
            return
        undefined = [op for op in ops if is_custom(op.field) and not ids.get(op.field or "")]
        if undefined:
            # a custom field this location does not define: nothing to write it to; held, with a warning
            log.warning("ghl %s: custom fields %s not defined here; their ops held", client.location_id,
                        sorted({name_of(op.field or "") for op in undefined}))
            self.ledger.close(undefined, Unsent.HELD,
                              f"custom field not defined in location {client.location_id}")
        defined = [op for op in ops if not (is_custom(op.field) and not ids.get(op.field or ""))]
        todo = premises(self.ledger, defined, live, tight=self._tight)
        if not todo:
            return
        body = update_body(todo, ids)
        by_upsert = bool(UPSERT_ONLY & set(body))
        if by_upsert and not live.get("email_raw"):
            # the contact update cannot set these fields, and without an email no upsert can reach the contact
            self.ledger.close(todo, Unsent.REJECTED,
                              f"GHL's contact update cannot set {sorted(UPSERT_ONLY & set(body))} and the "
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
            now = await self._live(client, contact_id, todo)
            return all(has_new(op, now, tight=self._tight) for op in todo)

        await self.ledger.send(todo, send, landed)

    async def _custom_ids(self, client: GHLClient, ops: Sequence[OpT]) -> dict[str, str | None]:
        """The location's field id of each custom field op's field (`custom:<fieldKey>`), None where undefined."""
        fields = {op.field or "" for op in ops if is_custom(op.field)}
        return {f: await client.custom_field_id(name_of(f)) for f in sorted(fields)}

    async def _live(self, client: GHLClient, contact_id: str, ops: Sequence[OpT]) -> dict[str, Any]:
        """The contact now as a canonical row, plus `custom:<fieldKey>` of each custom field op (its value now)."""
        customs = [op.field or "" for op in ops if is_custom(op.field)]
        keys = await client.custom_field_keys() if customs else None
        live = contact_row(await client.get_contact(contact_id), client.location_id, self.region, keys)
        values = loads(live.get("custom"))
        live.update({f: text_value(values.get(name_of(f))) for f in customs})
        return live

    async def _tags(self, client: GHLClient, contact_id: str, kind: str, ops: list[OpT]) -> None:
        adding = kind == Kind.TAG_ADD
        tags = list(dict.fromkeys(t for op in ops for t in self._spelled(op, adding)))
        if not adding and any(self.list_tags.list_id(t) for t in tags):
            # a list tag GHL may hold in a spelling of its own (`list:newsletter` for `Newsletter`, model/tags.py):
            # the removal names every spelling the contact holds of it
            try:
                held = (await client.get_contact(contact_id)).tags or []
            except ConnectorError as exc:
                self.ledger.refused(ops, exc)
                return
            keys = {tag_key(t) for t in tags}
            tags = list(dict.fromkeys([*tags, *(t for t in held if tag_key(t) in keys)]))

        async def send() -> None:
            await (client.add_tags if adding else client.remove_tags)(contact_id, tags)

        async def landed() -> bool:
            now = set((await client.get_contact(contact_id)).tags or [])
            return set(tags) <= now if adding else not set(tags) & now

        await self.ledger.send(ops, send, landed)

    def _spelled(self, op: OpT, adding: bool) -> list[str]:
        """The tags GHL is sent for a tag op: a list as GHL spells it (model/list_tags.py); a removal removes every
        spelling the list has had; a respelling op and a fold op (model/tags.py) name their spelling themselves."""
        tag = op.new if adding else op.expected
        if not tag:
            return []
        if op.reason in (LIST_TAG_RESPELLED, TAG_FOLDED):
            return [tag]
        return [self.list_tags.spell(tag)] if adding else self.list_tags.spellings(tag)

    async def _event(self, client: GHLClient, contact_id: str, op: OpT) -> None:
        mark = marker(op.op_id)

        async def send() -> str | None:
            if op.kind == Kind.TASK_CREATE:
                task = json.loads(op.new or "{}")
                body = "\n\n".join(p for p in (task.get("body"), mark) if p)
                return (await client.create_task(contact_id, title=task.get("title") or "Follow up",
                                                 due_date=task.get("due_date") or "", body=body)).id
            return (await client.create_note(contact_id, f"{op.new or ''}\n\n{mark}")).id

        async def landed() -> str | bool:
            return await find_marked(client, contact_id, op) or False

        if await self.ledger.send([op], send, landed):
            self.ledger.remember_created(op, self.ledger.result(op), contact_id)


def update_body(ops: Sequence[WriteOp], custom_ids: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The contact body of a person's field ops: GHL's field names, a consent op as the Email DND, custom fields
    as `customFields` items by the location's field id (`custom_ids`: op field -> id)."""
    body: dict[str, Any] = {}
    for op in ops:
        if op.kind == Kind.CONSENT_TIGHTEN:
            body["dndSettings"] = dnd_on()
        elif is_custom(op.field):
            field_id = (custom_ids or {}).get(op.field or "")
            if field_id:
                body.setdefault("customFields", []).append(custom_field_item(field_id, op.new))
        else:
            body[field_name(op.field or "")] = op.new or ""
    return body


# -------------------------------------------------------------------------------- finding what landed


def marker(op_id: str) -> str:
    """The stable marker a created task or note carries, so a retry can find what a lost answer made."""
    return f"[recon:{op_id[:16]}]"


async def find_marked(client: GHLClient, contact_id: str | None, op: WriteOp) -> str | None:
    """The id of the task or note of `contact_id` whose body carries the op's marker."""
    if not contact_id:
        return None
    mark = marker(op.op_id)
    objects = await (client.list_tasks(contact_id) if op.kind == Kind.TASK_CREATE else client.list_notes(contact_id))
    return next((o.id for o in objects if mark in (getattr(o, "body", None) or "")), None)


async def contact_of(client: GHLClient, key: str, created: str | None) -> str | None:
    """The GHL contact of a person key: the key itself (a contact id), or for a `te:<email>` person the id its
    create returned (`created`, when the journal knows it), else the contact that now has the email."""
    if not is_te_key(key):
        return key
    if created:
        return created
    found = await client.find_duplicate(email=key.removeprefix(TE_KEY_PREFIX))
    return found.id if found else None
