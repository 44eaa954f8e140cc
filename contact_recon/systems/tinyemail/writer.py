"""TinyEmail's writer: executes the apply stage's TinyEmail ops in batches of up to 500 customers a call.

Order: creates (up to `BATCH_SIZE` members a call, then the other lists of the customers confirmed created),
then updates (a read per customer for the precondition, then upserts
of up to `BATCH_SIZE` customers a call), then list memberships in batches of `BATCH_SIZE` per list.

A create goes into the home list (policy `create.tinyemail_list`) in the same call, `PUT /audiences/{id}` with
the whole member (`assignMembers` upserts it, as `PUT /account/customer` does): the customer and its membership
land together. As two calls, a crash between them left a customer in no list, which no snapshot sees (the
snapshot reads the lists' members), so the next run created it again. Without a home list a create is an upsert.

TinyEmail refuses a whole call (400) when one member is bad, naming its index (`updateMembers[3]...`): every
batched call goes through `send_isolating` (systems/writer.py), which sends the batch again without the
refused member (or splits it in halves when the 400 names none), so one value TinyEmail will not take costs
that one person's ops (`rejected`, with the message), never the other 499. `isolation` counts the calls made
and the members refused.

Body quirks:
- a customer has no id: it is addressed by its email, a member carries the email and the fields to change
  only (the PUT leaves omitted fields unchanged);
- a tight consent is the status `customer_status(consent.tinyemail_tight_value)` ("Unsubscribed");
- `tags` in a member replace the whole array, so tag ops are merged into the live set just read: a tag
  somebody added or removed meanwhile keeps that change;
- a custom field op (`custom:<fieldKey>`, model/custom_fields.py) writes the policy's TinyEmail target: its
  customer field (`te_field`), or its tag pattern, where the new value's tag replaces every tag the pattern
  matches (in the same live tag set, so `plan:gold` -> `plan:silver` is one upsert).

The precondition reads go the cheaper way (`_prefetch`): one GET per customer, or, when that would take more
requests than walking every list, the walk. Unknown outcomes are re-read before anything is sent again:
an upsert by reading back every customer of the batch (all as sent: confirmed; else the batch is sent again,
an upsert of exact values being idempotent); a list membership is a set, so it is simply sent again.

Shapes (systems/models.py): the op (model/ops.py) becomes a member here; the customer read for the
precondition becomes a canonical TINYEMAIL_CUSTOMERS row (`mapping.customer_row`), which the op is checked on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Container, Mapping, Sequence
from functools import partial
from typing import Any, Generic

from contact_recon.model.custom_fields import is_custom, loads, matches, merge_text, name_of, tag_for, te_value
from contact_recon.model.keys import Person, address
from contact_recon.model.ops import Kind
from contact_recon.model.policy import ConsentPolicy, CustomFieldRule
from contact_recon.model.tags import has_tag
from contact_recon.systems.errors import ConnectorError, UnknownOutcome, Validation
from contact_recon.systems.tinyemail.client import BATCH_SIZE, TinyEmailClient
from contact_recon.systems.tinyemail.contract import email_key
from contact_recon.systems.tinyemail.mapping import customer_row, customer_status, field_name, member
from contact_recon.systems.tinyemail.models import Customer
from contact_recon.systems.writer import (
    FIELD_KINDS,
    LIST_KINDS,
    TAG_KINDS,
    BatchItem,
    Echo,
    Isolation,
    Ledger,
    OpT,
    Unsent,
    WriteOp,
    blank,
    by_key,
    named_member,
    premises,
    resend_on_unknown,
    send_isolating,
)

log = logging.getLogger("contact_recon.systems.tinyemail.writer")


class TinyEmailWriter(Generic[OpT]):
    """Writes one run's TinyEmail ops (module docstring); `people` says how each person of the plan is addressed,
    `home_list` names the list every customer we create joins (policy `create.tinyemail_list`)."""

    def __init__(self, client: TinyEmailClient, people: Mapping[str, Person], ledger: Ledger[OpT], *,
                 region: str = "US", concurrency: int = 16, max_attempts: int = 3, home_list: str | None = None,
                 consent: ConsentPolicy = ConsentPolicy(), echo: Echo | None = None,
                 custom: Mapping[str, CustomFieldRule] | None = None):
        self.client, self.people, self.ledger = client, people, ledger
        self.custom = dict(custom or {})  # the policy's custom fields by fieldKey: where each one lives here
        self.region, self.max_attempts, self.home_list_name, self.echo = region, max_attempts, home_list, echo
        self.tight_values = consent.tinyemail_tight
        self.tight_status = customer_status(consent.tinyemail_tight_value)
        self.gate = asyncio.Semaphore(concurrency)  # precondition reads in flight
        self.created: dict[str, str] = {}  # TinyEmail gives a created customer no id
        self.live_customers: dict[str, Customer] = {}  # normalised email -> customer read for the preconditions
        self.isolation = Isolation()  # batched calls made, and members found refused (module docstring)

    async def write(self, ops: Sequence[OpT]) -> None:
        """Creates (and their lists), then updates, then list memberships."""
        emails = [self._email_of(op) for op in ops]
        if self.echo is not None:
            self.echo.wrote(emails=[e for e in emails if e])  # what the watcher will see is ours (stages/echo.py)
        await self._creates([op for op in ops if op.kind == Kind.CREATE])
        await self._updates([op for op in ops if op.kind not in (Kind.CREATE, *LIST_KINDS)])
        await self._lists([op for op in ops if op.kind in LIST_KINDS])
        if self.echo is not None:
            self.echo.wrote(emails=[e for e in emails if e])  # the window counts from the last write

    def _tight(self, consent: Any) -> bool:
        return consent in self.tight_values

    def email(self, key: str) -> str | None:
        return address(self.people, key).email

    def _email_of(self, op: WriteOp) -> str | None:
        if op.kind == Kind.CREATE:
            return json.loads(op.new or "{}").get("email")
        return self.email(op.key)

    # ---------------------------------------------------------------------------------- creates

    async def _creates(self, ops: list[OpT]) -> None:
        members = [(op, member(json.loads(op.new or "{}"), self.tight_status)) for op in ops]
        home = await self._home_list() if members else None
        for start in range(0, len(members), BATCH_SIZE):
            batch = members[start:start + BATCH_SIZE]
            await self._upsert([BatchItem([op], m) for op, m in batch], into=home)
        lists: dict[str, list[str]] = defaultdict(list)
        for op, created in members:
            if self.ledger.confirmed(op):
                for list_id in json.loads(op.new or "{}").get("lists", []):
                    if list_id != home:  # joined with the create
                        lists[list_id].append(created["email"])
        for list_id, emails in lists.items():
            for start in range(0, len(emails), BATCH_SIZE):
                await self._created_lists(list_id, emails[start:start + BATCH_SIZE])

    async def _created_lists(self, list_id: str, emails: list[str]) -> None:
        """Add created customers to a list: a set operation, re-sent whole on an unknown outcome. A refused member
        is left out and the others sent again; its membership is not lost (the customer exists, so the next run
        plans it as a list op of its own, reported if refused again)."""
        while emails:
            try:
                await resend_on_unknown(partial(self.client.add_to_list, list_id, emails), self.max_attempts)
                return
            except Validation as exc:
                named = named_member(exc.messages, len(emails))
                if named is None:
                    log.warning("tinyemail: list %s refused %d created customers, left to the next run: %s",
                                list_id, len(emails), exc)
                    return
                log.warning("tinyemail: list %s refused a created customer, left to the next run: %s", list_id, exc)
                emails = [e for i, e in enumerate(emails) if i != named]

    async def _home_list(self) -> str | None:
        """The id of the list every customer we create joins, made when missing and remembered in the store, so
        the planner can leave its membership out of the list sync."""
        if not self.home_list_name:
            return None
        lists = {lst.name: lst.id for lst in await self.client.lists()}
        list_id = lists.get(self.home_list_name)
        if list_id is None:
            try:
                list_id = (await self.client.create_list(self.home_list_name)).id
            except UnknownOutcome:
                # it may exist now: look for it by name before anything else (never two lists)
                list_id = {lst.name: lst.id for lst in await self.client.lists()}.get(self.home_list_name)
                if list_id is None:
                    raise
        self.ledger.remember_home_list(self.home_list_name, list_id)
        return list_id

    async def _upsert(self, items: list[BatchItem[OpT, dict[str, Any]]], into: str | None = None) -> None:
        """One upsert call (at most BATCH_SIZE members, each with the ops it carries), through the list `into`
        when given (its members upserted and assigned in one call); a refused member is left out and the rest
        sent again (`send_isolating`)."""
        async def send(members: list[dict[str, Any]]) -> None:
            if into is None:
                await self.client.upsert_customers(members)
            else:
                await self.client.add_to_list(into, members)

        async def landed(members: list[dict[str, Any]]) -> bool:
            # re-read each customer: all as sent -> confirmed; otherwise the batch is sent again (an upsert
            # of exact values is idempotent, so a partial landing cannot duplicate anything)
            found = [await self.client.get_customer(m["email"]) for m in members]
            return all(c is not None and member_applied(m, c, self.tight_values)
                       for m, c in zip(members, found, strict=True))

        self._count(await send_isolating(self.ledger, items, send, landed))

    def _count(self, done: Isolation) -> None:
        self.isolation.calls += done.calls
        self.isolation.refused += done.refused

    # ---------------------------------------------------------------------------------- updates

    async def _updates(self, ops: list[OpT]) -> None:
        """Per customer: read it (the precondition, concurrently within the budget), then upsert BATCH_SIZE at a
        time."""
        groups = list(by_key(ops).items())
        self.live_customers = await self._prefetch([self.email(key) or "" for key, _ in groups])
        for start in range(0, len(groups), BATCH_SIZE):
            chunk = groups[start:start + BATCH_SIZE]
            built = await asyncio.gather(*(self._member_for(key, group) for key, group in chunk))
            ready = [BatchItem(group, m) for group, m in (b for b in built if b)]
            if ready:
                await self._upsert(ready)

    async def _member_for(self, key: str, ops: list[OpT]) -> tuple[list[OpT], dict[str, Any]] | None:
        """Read the customer (the precondition) and build the member that carries every op that still holds."""
        email = self.email(key)
        if not email:
            self.ledger.close(ops, Unsent.DEPENDENCY, "no TinyEmail email known")
            return None
        try:
            customer = self.live_customers.get(email_key(email))
            if customer is None:
                async with self.gate:
                    customer = await self.client.get_customer(email)
        except ConnectorError as exc:
            self.ledger.refused(ops, exc)
            return None
        if customer is None:
            self.ledger.close(ops, Unsent.NOT_FOUND, "no TinyEmail customer")
            return None
        live = self._live(customer, ops)
        unmapped = [op for op in ops if is_custom(op.field) and name_of(op.field or "") not in self.custom]
        if unmapped:
            # a custom field op the policy no longer maps (changed since the plan): nowhere to write it
            self.ledger.close(unmapped, Unsent.HELD, "custom field no longer in the policy")
        wanted = [op for op in ops if op.kind in FIELD_KINDS
                  and not (is_custom(op.field) and name_of(op.field or "") not in self.custom)]
        fields = premises(self.ledger, wanted, live, tight=self._tight)
        body: dict[str, Any] = {"email": customer.email}
        tags = list(customer.tags)
        for op in fields:
            if op.kind == Kind.CONSENT_TIGHTEN:
                body["status"] = self.tight_status
            elif is_custom(op.field):
                tags = self._custom_value(body, tags, self.custom[name_of(op.field or "")], op.new)
            else:
                body[field_name(op.field or "")] = op.new or ""
        tag_ops = [op for op in ops if op.kind in TAG_KINDS]
        if tag_ops:
            # merged into the live set: a tag somebody added or removed meanwhile keeps that change, and a tag
            # the customer holds in another spelling is not added twice (model/tags.py)
            gone = {op.expected for op in tag_ops if op.kind == Kind.TAG_REMOVE}
            added = [op.new for op in tag_ops
                     if op.kind == Kind.TAG_ADD and op.new and not has_tag(tags, op.new)]
            tags = [t for t in dict.fromkeys([*tags, *added]) if t not in gone]
        if tag_ops or tags != list(customer.tags):
            body["tags"] = tags
        todo = [*fields, *tag_ops]
        return (todo, body) if todo else None

    def _live(self, customer: Customer, ops: Sequence[OpT]) -> dict[str, Any]:
        """The customer as a canonical row, plus `custom:<fieldKey>` of each mapped custom field op: its value here
        now (its field's text, or what its pattern tags spell)."""
        live = customer_row(customer, self.region)
        values = loads(live.get("custom"))
        for op in ops:
            name = name_of(op.field or "") if is_custom(op.field) else None
            if name in self.custom:
                live[op.field or ""] = merge_text(te_value(self.custom[name], values, customer.tags))
        return live

    @staticmethod
    def _custom_value(body: dict[str, Any], tags: list[str], rule: CustomFieldRule, value: str | None) -> list[str]:
        """Write one custom field's value into the member: its TinyEmail field, or its pattern's tag (every tag
        the pattern matches removed, the new value's tag added; a blank value leaves none). The tags result."""
        if rule.te_field:
            body[rule.te_field] = value or ""
            return tags
        pattern = rule.tag_pattern or ""
        kept = [t for t in tags if not matches(pattern, t)]
        return [*kept, tag_for(pattern, value)] if value and value.strip() else kept

    async def _prefetch(self, emails: list[str]) -> dict[str, Customer]:
        """The live customers for the preconditions, read the cheaper way: one GET per customer, or, when that
        would take more requests than walking every list (100 customers a page), the walk. A customer the walk
        does not reach (in no list) is read by GET later."""
        wanted = {email_key(e) for e in emails if e}
        if not wanted:
            return {}
        lists = await self.client.lists()
        pages = sum((lst.numberOfMembers or 0) // self.client.page_size + 1 for lst in lists)
        if len(wanted) <= pages:
            return {}
        audience = await self.client.all_customers()
        return {email: c for email, c in audience.customers.items() if email in wanted}

    # ------------------------------------------------------------------------------------ lists

    async def _lists(self, ops: list[OpT]) -> None:
        groups: dict[tuple[str, str], list[OpT]] = defaultdict(list)
        for op in ops:
            groups[(op.kind, (op.new if op.kind == Kind.LIST_ADD else op.expected) or "")].append(op)
        for (kind, list_id), group in groups.items():
            for start in range(0, len(group), BATCH_SIZE):
                await self._list_batch(kind, list_id, group[start:start + BATCH_SIZE])

    async def _list_batch(self, kind: str, list_id: str, ops: list[OpT]) -> None:
        ready = [op for op in ops if self.email(op.key)]
        missing = [op for op in ops if not self.email(op.key)]
        if missing:
            self.ledger.close(missing, Unsent.DEPENDENCY, "no TinyEmail email known")
        async def send(emails: list[str]) -> None:
            if kind == Kind.LIST_ADD:
                await self.client.add_to_list(list_id, emails)
            else:
                await self.client.remove_from_list(list_id, emails)

        async def landed(emails: list[str]) -> bool:
            # list membership is a set: assigning or unassigning again cannot duplicate, so send again
            return False

        if ready:
            items = [BatchItem([op], self.email(op.key) or "") for op in ready]
            self._count(await send_isolating(self.ledger, items, send, landed))


def member_applied(sent: Mapping[str, Any], customer: Customer, tight: Container[str]) -> bool:
    """Whether a customer read back carries every value the member sent; a sent status counts as landed when the
    live one, lower-cased, is any of the `tight` consent values."""
    live = customer.model_dump()
    for name, value in sent.items():
        if name == "email":
            continue
        if name == "tags":
            if list(live.get("tags") or []) != list(value):
                return False
        elif name == "status":
            if str(live.get("status") or "").lower() not in tight:
                return False
        elif blank(live.get(name)) != blank(value):
            return False
    return True
