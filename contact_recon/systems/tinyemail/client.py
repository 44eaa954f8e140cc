"""The TinyEmail client: lists, members paging, customers, batch upserts and list membership.

TinyEmail customers have no id: a customer *is* its email address, and a "contact list" or
"audience" is a list of emails (CONTRACT.md). Every assumption about the API lives in
`contact_recon.systems.tinyemail.contract.ASSUMPTIONS`, shared with the sandbox server, so both change together.

Reading:
- `lists()` is one call (not paginated).
- `iter_members(list_id)` walks `GET /contacts/{id}/members?page=&size=` from page 1 (pages are
  1-indexed) and stops on `last`, on a short page or on an empty page. A server that never says
  `last` and keeps answering the same page is caught: a page seen before raises `PagingStalled`
  (systems/errors.py, the one class both connectors raise) instead of looping (or silently returning
  a partial list); `max_pages` bounds the walk. A member seen twice in one walk (the list shifted
  under us) is yielded once. Members are validated one by one: a member the model refuses is yielded
  as an `Unreadable` (systems/models.py), its email kept when readable, so one odd customer costs that
  customer, not the page.
- `all_customers()` walks every list and returns an `AudienceSnapshot`: each customer once, keyed
  by its normalised email, and the set of list ids it belongs to. There is no updated-since filter,
  so every snapshot is a full one.
- `get_customer(email)` answers None for an unknown email (the assumed 404).

Writing (every call is a write that `ApiClient` never resends after a 5xx, timeout or reset):
- `upsert_customers()` sends `PUT /account/customer` in batches of at most
  `ASSUMPTIONS.max_members_per_call`; the counts of the batches are summed. A batch whose fate is
  unknown raises `BatchUnknownOutcome` naming its index and emails (and the counts of the batches
  before it), so the caller re-reads exactly those customers before trying again; later batches
  are not sent. Only the contract's writable fields are sent, and only those that were set: the
  PUT leaves omitted fields unchanged, so defaults are never sent by accident.
- `set_tags()` is a read-modify-write: TinyEmail has no tag endpoint and a PUT with `tags`
  replaces the whole array. Nothing is written when the tags already match. Two writers racing
  between our read and our write cannot be detected (TinyEmail has no version or ETag).
- `add_to_list()`, `remove_from_list()` and `create_list()` use the audiences endpoints, batched
  like upserts. Adding members upserts them and starts any workflow attached to the list.

Answers are read through `http.read_json`/`member`/`parse`: a 2xx answer that is not JSON, lacks
`contacts` / `members.content`, or a single customer (`get_customer`) of the wrong shape is a
`MalformedResponse` naming the endpoint and the field (an answer we cannot read never passes for an
empty list). What they parse into are the API models of systems/tinyemail/models.py, the first of
the shapes a contact takes (systems/models.py); the members written are made by systems/tinyemail/writer.py.

Auth is `X-API-KEY: <key>` or, for an OAuth token, `Authorization: Bearer <token>`. The rate budget
is one per key (hashed) for the whole process; TinyEmail sends no rate headers, so its limit comes
from `Settings.tinyemail_rate_per_minute`. Keys are registered for redaction before any request.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pydantic

from contact_recon.settings import Settings
from contact_recon.systems.auth import Credentials, StaticToken
from contact_recon.systems.budget import RateBudget, budget_for
from contact_recon.systems.errors import (
    AuthError,
    ConnectorError,
    MalformedResponse,
    NotFound,
    PagingStalled,
    UnknownOutcome,
    Validation,
)
from contact_recon.systems.http import ApiBacked, ApiClient, member, parse, read_json, where_of
from contact_recon.systems.models import Unreadable, split_records
from contact_recon.systems.redaction import register_secret
from contact_recon.systems.tinyemail.contract import (
    API_KEY_HEADER,
    ASSUMPTIONS,
    STATUSES,
    WRITABLE_FIELDS,
    email_key,
)
from contact_recon.systems.tinyemail.models import ContactList, Customer

SYSTEM = "tinyemail"
BATCH_SIZE = ASSUMPTIONS.max_members_per_call  # members per PUT /account/customer (400 beyond)
PAGE_SIZE = ASSUMPTIONS.max_page_size  # members per page of GET /contacts/{id}/members
MAX_PAGES = 100_000  # a walk longer than this is a broken server, not a big list (10 M members)

CustomerLike = Customer | dict[str, Any]
log = logging.getLogger("contact_recon.systems.tinyemail.client")


class BatchUnknownOutcome(UnknownOutcome):
    """A batch write whose fate is unknown: re-read `emails` before sending that batch again.

    `batch_index` is 0-based; `created`/`updated` are the counts of the batches that were answered
    before it. Later batches were not sent.
    """

    def __init__(self, cause: UnknownOutcome, *, batch_index: int, batches: int, emails: list[str],
                 created: int = 0, updated: int = 0):
        message = (f"batch {batch_index + 1} of {batches} ({len(emails)} customers) has an unknown outcome: "
                   f"re-read these customers before retrying ({cause})")
        super().__init__(message, status=cause.status)
        self.system, self.method, self.path = cause.system, cause.method, cause.path
        self.batch_index, self.batches, self.emails = batch_index, batches, emails
        self.created, self.updated = created, updated


@dataclass(frozen=True)
class UpsertResult:
    created: int = 0
    updated: int = 0
    calls: int = 0


@dataclass
class AudienceSnapshot:
    """Every TinyEmail customer reachable through a list, once, with the lists it is in.

    `customers` and `memberships` are keyed by the normalised email (`email_key`); `unreadable` holds the
    members the model refused (systems/models.py), keyed the same way when their email is readable.
    """

    lists: list[ContactList] = field(default_factory=list)
    customers: dict[str, Customer] = field(default_factory=dict)
    memberships: dict[str, set[str]] = field(default_factory=dict)
    unreadable: dict[str, Unreadable] = field(default_factory=dict)

    def add(self, list_id: str, customer: Customer | Unreadable) -> None:
        key = member_key(customer, list_id)
        if isinstance(customer, Unreadable):
            self.unreadable.setdefault(key, customer)
            return
        self.customers.setdefault(key, customer)
        self.memberships.setdefault(key, set()).add(list_id)


def member_key(customer: Customer | Unreadable, list_id: str) -> str:
    """A list member's key: its normalised email (`email_key`); for a member the model refused without a readable
    email, its place in that list."""
    if isinstance(customer, Unreadable):
        return email_key(customer.key) if customer.key else f"?{customer.where}@{list_id}"
    return email_key(customer.email)


class TinyEmailClient(ApiBacked):
    """Async TinyEmail API calls over one `ApiClient` (one key, one budget)."""

    def __init__(self, api: ApiClient, *, page_size: int = PAGE_SIZE, batch_size: int = BATCH_SIZE,
                 max_pages: int = MAX_PAGES):
        self.api, self.page_size, self.batch_size, self.max_pages = api, page_size, batch_size, max_pages

    @classmethod
    def from_settings(cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None,
                      credentials: Credentials | None = None, bearer: bool = False,
                      budget: RateBudget | None = None, **api_options: Any) -> TinyEmailClient:
        """A client for the configured TinyEmail account.

        Args:
            settings: `tinyemail_base_url` (with `/v1`), `tinyemail_api_key`, `tinyemail_rate_per_minute`.
            transport: an httpx transport (tests, proxies); the default connects directly.
            credentials: overrides the key from settings (e.g. an OAuth token source).
            bearer: send the key or token as `Authorization: Bearer <token>` instead of `X-API-KEY`.
            budget: a rate budget of its own (tests); by default the process-wide one of this key.
            api_options: passed to `ApiClient` (timeout, max_attempts, sleep...).
        """
        key = settings.tinyemail_api_key.get_secret_value() if settings.tinyemail_api_key else ""
        register_secret(key)
        if credentials is None:
            if not key:
                raise AuthError("no TinyEmail API key configured (RECON_TINYEMAIL_API_KEY)", system=SYSTEM)
            credentials = StaticToken(key)
        if budget is None:
            budget_key = hashlib.sha256(key.encode()).hexdigest()[:12] if key else f"credentials-{id(credentials):x}"
            rate = int(settings.tinyemail_rate_per_minute)
            budget = budget_for(SYSTEM, budget_key, lambda: RateBudget(rate, 60.0, None))
        api = ApiClient(system=SYSTEM, base_url=settings.tinyemail_base_url, credentials=credentials,
                        budget=budget, auth_header=bearer_header if bearer else key_header,
                        headers={"Accept": "application/json"}, classify=classify, transport=transport,
                        **api_options)
        return cls(api)

    # --- reading ---------------------------------------------------------------------------------

    async def lists(self) -> list[ContactList]:
        response = await self.api.request("GET", "/contacts")
        items = member(SYSTEM, response, read_json(SYSTEM, response), "contacts", list)
        return [parse(SYSTEM, response, ContactList, item, f"contacts[{i}]") for i, item in enumerate(items)]

    async def iter_pages(self, list_id: str, size: int | None = None) -> AsyncIterator[list[Customer | Unreadable]]:
        """The pages of a list's members, from page 1 until the last (see the module docstring)."""
        size = min(size or self.page_size, PAGE_SIZE)  # a larger size is a 400
        path = f"/contacts/{quote(list_id, safe='')}/members"
        seen_pages: set[tuple[str | None, ...]] = set()
        for page in range(1, self.max_pages + 1):
            response = await self.api.request("GET", path, params={"page": page, "size": size})
            members = member(SYSTEM, response, read_json(SYSTEM, response), "members", dict)
            raws = member(SYSTEM, response, members, "content", list)
            customers, unreadable = split_records(Customer, raws, "email", "members.content")
            if not raws:
                return  # an empty page ends the walk, whatever `last` says
            fingerprint = tuple([email_key(c.email) for c in customers] + [u.key for u in unreadable])
            if fingerprint in seen_pages:
                raise PagingStalled(f"page {page} repeats an earlier page without `last`", system=SYSTEM,
                                    method="GET", path=path)
            seen_pages.add(fingerprint)
            yield [*customers, *unreadable]
            if members.get("last") or len(raws) < size:
                return
        raise PagingStalled(f"more than {self.max_pages} pages without `last`", system=SYSTEM, method="GET",
                            path=path)

    async def iter_members(self, list_id: str, size: int | None = None) -> AsyncIterator[Customer | Unreadable]:
        """Each member of a list once, fetched page by page; one the model refuses as an `Unreadable`."""
        seen: set[str] = set()
        async for page in self.iter_pages(list_id, size):
            for customer in page:
                key = email_key(customer.email) if isinstance(customer, Customer) else customer.key
                if key is None or key not in seen:  # the list shifted between pages: keep the first sighting
                    seen.add(key or "")
                    yield customer

    async def all_customers(self) -> AudienceSnapshot:
        """Every customer of every list once, with its list memberships (and the unreadable ones apart)."""
        snapshot = AudienceSnapshot(lists=await self.lists())
        for contact_list in snapshot.lists:
            async for customer in self.iter_members(contact_list.id):
                snapshot.add(contact_list.id, customer)
        return snapshot

    async def get_customer(self, email: str) -> Customer | None:
        try:
            response = await self.api.request("GET", customer_path(email))
        except NotFound:
            return None
        return parse(SYSTEM, response, Customer, read_json(SYSTEM, response), "customer")

    # --- writing ---------------------------------------------------------------------------------

    async def upsert_customers(self, customers: Sequence[CustomerLike]) -> UpsertResult:
        """Create or update customers by email, in batches; the summed counts of the answers."""
        members = to_members(customers)
        created = updated = calls = 0
        batches = chunks(members, self.batch_size)
        for index, batch in enumerate(batches):
            with _batch_errors(index, len(batches), batch, created, updated):
                response = await self.api.request("PUT", "/account/customer", json={"updateMembers": batch})
            body = read_json(SYSTEM, response, empty={})
            created += _count(response, body, "numberOfCreatedMembers")
            updated += _count(response, body, "numberOfUpdatedMembers")
            calls += 1
        return UpsertResult(created, updated, calls)

    async def set_tags(self, email: str, tags: Iterable[str]) -> Customer:
        """Make the customer's tags exactly `tags` (read-modify-write; TinyEmail replaces the whole array).

        Raises `NotFound` for an unknown email (a PUT would create the customer). Returns the customer
        as it should now be; nothing is written when the tags already match.
        """
        current = await self.get_customer(email)
        if current is None:
            raise NotFound("no TinyEmail customer with this email", system=SYSTEM, method="GET",
                           path=customer_path(email))
        wanted = list(dict.fromkeys(tags))
        if current.tags == wanted:
            return current
        # omitted fields stay unchanged (assumed): send only the tags; otherwise the whole customer
        member = {"email": current.email, "tags": wanted} if ASSUMPTIONS.omitted_fields_unchanged \
            else {**to_member(current), "tags": wanted}
        await self.api.request("PUT", "/account/customer", json={"updateMembers": [member]})
        return current.model_copy(update={"tags": wanted})

    async def change_tags(self, email: str, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> Customer:
        """Add and remove tags, keeping the others (read-modify-write through `set_tags`)."""
        current = await self.get_customer(email)
        if current is None:
            raise NotFound("no TinyEmail customer with this email", system=SYSTEM, method="GET",
                           path=customer_path(email))
        gone = set(remove)
        return await self.set_tags(email, [t for t in [*current.tags, *add] if t not in gone])

    async def add_to_list(self, list_id: str, customers: Sequence[CustomerLike | str]) -> None:
        """Add customers (upserted as given; a bare email creates a Subscribed customer when unknown)."""
        members = to_members(customers)
        await self._update_audience(list_id, "assignMembers", members)

    async def remove_from_list(self, list_id: str, emails: Sequence[str]) -> None:
        """Remove emails from a list; emails not in it are ignored. The customers stay."""
        await self._update_audience(list_id, "unAssignMembers", list(emails))

    async def create_list(self, name: str, members: Sequence[CustomerLike | str] = ()) -> ContactList:
        """Create a list (names need not be unique) and add its members, the first batch with the create.

        An `UnknownOutcome` on the create means a list may exist: look for it by name before retrying.
        """
        wire = to_members(members)
        first, rest = wire[:self.batch_size], wire[self.batch_size:]
        response = await self.api.request("POST", "/audiences", json={"name": name, "members": first})
        list_id = member(SYSTEM, response, read_json(SYSTEM, response), "id", str)
        if rest:
            await self._update_audience(list_id, "assignMembers", rest, first_index=1)
        return ContactList(id=list_id, name=name, numberOfMembers=len({email_key(m["email"]) for m in wire}))

    async def _update_audience(self, list_id: str, key: str, items: list[Any], first_index: int = 0) -> None:
        path = f"/audiences/{quote(list_id, safe='')}"
        batches = chunks(items, self.batch_size)
        for offset, batch in enumerate(batches):
            with _batch_errors(first_index + offset, first_index + len(batches), batch):
                await self.api.request("PUT", path, json={key: batch})


# --- helpers -------------------------------------------------------------------------------------

def key_header(token: str) -> dict[str, str]:
    return {API_KEY_HEADER: token}


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def customer_path(email: str) -> str:
    """The customer's path, the email percent-encoded whole ('+', '/', '@' and non-ASCII included)."""
    return "/account/customer/" + quote(email.strip(), safe="")


def to_member(customer: CustomerLike) -> dict[str, Any]:
    """A customer as the PUT wants it: the writable fields that were set (read-only and unknown ones dropped).

    TinyEmail (as assumed) rejects a whole batch for one unknown field, and a customer read back carries
    read-only and unknown fields, so they are left out here rather than sent.
    """
    model = customer if isinstance(customer, Customer) else Customer.model_validate(customer)
    member = {k: v for k, v in model.to_api().items() if k in WRITABLE_FIELDS}
    dropped = sorted(set(model.model_extra or {}))
    if dropped:
        log.debug("tinyemail: fields not sent (not writable): %s", ", ".join(dropped))
    return member


def to_members(customers: Sequence[CustomerLike | str]) -> list[dict[str, Any]]:
    """`to_member` of each (a bare string is an email); a customer the model refuses, or whose status is not
    one TinyEmail knows (a read keeps such a status as raw text), is a `Validation` naming its index, raised
    before anything is sent."""
    members = []
    for index, customer in enumerate(customers):
        try:
            members.append(to_member({"email": customer} if isinstance(customer, str) else customer))
        except pydantic.ValidationError as exc:
            problems = [f"customers[{index}].{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            raise Validation("; ".join(problems), messages=problems, system=SYSTEM) from None
        if members[-1].get("status", STATUSES[0]) not in STATUSES:  # read as raw text, never written
            problem = f"customers[{index}].status: must be one of {', '.join(STATUSES)}"
            raise Validation(problem, messages=[problem], system=SYSTEM)
    return members


def _count(response: httpx.Response, body: Any, key: str) -> int:
    """A count of an upsert answer (0 when absent); MalformedResponse when it is not a whole number."""
    value = body.get(key, 0) if isinstance(body, dict) else None
    whole = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not whole or value < 0:  # type: ignore[operator]  # a whole number here, never None
        raise MalformedResponse(f"`{key}` must be a whole number", **where_of(SYSTEM, response))
    return int(value)  # type: ignore[arg-type]


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@contextmanager
def _batch_errors(index: int, batches: int, batch: list[Any], created: int = 0, updated: int = 0) -> Iterator[None]:
    """Turn an `UnknownOutcome` of batch `index` into `BatchUnknownOutcome`, and name the batch in a 400."""
    try:
        yield
    except BatchUnknownOutcome:
        raise
    except UnknownOutcome as exc:
        emails = [m["email"] if isinstance(m, dict) else m for m in batch]
        raise BatchUnknownOutcome(exc, batch_index=index, batches=batches, emails=emails, created=created,
                                  updated=updated) from exc
    except Validation as exc:
        if batches == 1:
            raise
        raise Validation(f"batch {index + 1} of {batches}: {'; '.join(exc.messages)}", messages=exc.messages,
                         system=exc.system, method=exc.method, path=exc.path, status=exc.status) from exc


def classify(response: httpx.Response, body: dict[str, Any]) -> ConnectorError | None:
    """TinyEmail's error bodies are `{"message": ...}`; a 401/403 means the key is unusable (no scopes)."""
    status = response.status_code
    message = str(body.get("message") or response.reason_phrase or status)
    where: dict[str, Any] = {"system": SYSTEM, "method": response.request.method,
                             "path": response.request.url.path, "status": status}
    if status in (401, 403):
        return AuthError(f"the API key or token was refused ({status}): {message}; check RECON_TINYEMAIL_API_KEY",
                         **where)
    if status == 404:
        return NotFound(message, **where)
    if status == 400:
        return Validation(message, messages=[message], **where)
    return None
