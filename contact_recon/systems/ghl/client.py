"""The GHL (HighLevel) Contacts API v2 connector for one location.

Every call goes through `contact_recon.systems.http.ApiClient`, so each one shares the location's process-wide
`RateBudget` (100 requests per 10 s and 200,000 a day per app and location; the budget adopts the
server's `X-RateLimit-*` figures), retries only what is safe, and turns a 5xx, timeout or reset on a
write into `UnknownOutcome`. The search POSTs (contacts and tasks) are reads and are sent with
`write=False`. GHL's error answers become typed errors in `classify` (see its table).

Full listing (`iter_contacts`): `POST /contacts/search` sorted by `dateAdded` ascending, paged with
`searchAfter` (page paging stops at 10,000 records). The sort is chosen for stability: the server
breaks ties by id, so the cursor (dateAdded, id) is a total order, and `dateAdded` never changes.
A contact edited while we list keeps its place, so it is returned exactly once; sorted by
`dateUpdated` instead, an edit would move it behind the cursor (returned twice) or, descending,
ahead of it (missed). Contacts created during the listing land at the end and are picked up;
contacts deleted before we reach them are not returned. As a last guard the iterator drops an id it
has already yielded.

A listing cannot run away (a GHL paging bug would otherwise spend the day's 200,000 requests, about 5.5
hours, and leave the location nothing for writes): `iter_contacts` raises `PagingStalled`
(systems/errors.py) when the cursor does not move (the search ignored `searchAfter`), when a full page
brings no id it has not yielded (a page repeated), or when it has read `PAGE_MARGIN` pages more than the
largest `total` announced needs (new ids without end). Each costs a few requests at most beyond the
planned page count. A contact the model cannot read is yielded as an `Unreadable` (systems/models.py)
with its id when that much is readable, so one odd record never fails the listing.

Incremental listing adds the filter `dateUpdated range {gte: since}` to the same
sorted listing; search results may lag writes by a few seconds (NOTES.md), so callers should pass
the start time of their previous listing minus a small overlap and treat the results as upserts.

Tasks in bulk (`search_tasks`): `POST /locations/{id}/tasks/search` takes an array of contact ids and
pages with `limit`/`skip`. Ids go in batches of `TASK_SEARCH_BATCH` (100): GHL documents no maximum,
100 ids keep the body near 2 KB, and at typical task counts (<1 per contact) one batch fits in one
page of `TASK_SEARCH_PAGE` (100), so it costs about one request per 100 contacts. Pages are read until
a short one; tasks are deduplicated by id in case skip-paging meets a concurrent change.

Custom fields (NOTES.md): `custom_field_keys` reads the location's definitions (`GET /locations/{id}/customFields`,
scope `locations/customFields.readonly`) once per client, so once per run and location; `custom_keys_for` only when
some contact carries custom fields, and tolerant of unreadable definitions (None, with a warning).

Tags: `tags` given to upsert or update *replaces* every tag (NOTES.md); use `add_tags`/`remove_tags`
or `bulk_update_tags` to change tags.

Answers are read through `_json`/`_one`/`_many` (`http.read_json`, `member`, `parse`): a 2xx answer
that is not JSON, lacks the record, or has a field of the wrong type is a `MalformedResponse` naming the
endpoint and the field (a single record; in a search page only that contact is set apart as unreadable).
What they parse into are the API models of
systems/ghl/models.py, the first of the shapes a contact takes (systems/models.py); writes take bodies
made by systems/ghl/writer.py.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from contact_recon.settings import Settings
from contact_recon.systems.auth import (
    Credentials,
    FileTokenStore,
    GHLOAuth,
    PrefectSecretTokenStore,
    StaticToken,
    TokenStore,
)
from contact_recon.systems.budget import BudgetSnapshot, RateBudget, budget_for
from contact_recon.systems.errors import (
    AuthError,
    ConnectorError,
    Duplicate,
    MalformedResponse,
    NotFound,
    PagingStalled,
    ScopeError,
    Validation,
)
from contact_recon.systems.ghl.agency import LocationFromCompany, installed_locations
from contact_recon.systems.ghl.models import (
    Appointment,
    BulkTagsResult,
    Contact,
    CustomFieldDefinition,
    Note,
    SearchPage,
    Task,
)
from contact_recon.systems.http import ApiBacked, ApiClient, json_object, member, parse
from contact_recon.systems.models import Unreadable

log = logging.getLogger("contact_recon.systems.ghl.client")

API_VERSION = "2021-07-28"
BURST_LIMIT, BURST_WINDOW_S, DAILY_LIMIT = 100, 10.0, 200_000
MAX_PAGE_LIMIT = 500
PAGE_MARGIN = 2  # pages a listing may read beyond what its largest `total` needs (contacts added meanwhile)
TASK_SEARCH_BATCH = 100
TASK_SEARCH_PAGE = 100
SYSTEM = "ghl"

M = TypeVar("M", Contact, SearchPage, Task, Note, Appointment, BulkTagsResult, CustomFieldDefinition)

_NOT_FOUND = re.compile(r"\b(Contact|Task|Note) with id \S+ not found", re.IGNORECASE)
_DUPLICATE = "does not allow duplicated contacts"
_SCOPE = "not authorized for this scope"


# ------------------------------------------------------------------------------------------ errors


def classify(response: httpx.Response, body: dict[str, Any]) -> ConnectorError | None:
    """GHL's error answers as typed errors; None leaves the answer to `http.default_error`.

    400 duplicate contact -> Duplicate (meta.contactId, meta.matchingField); 400 "<Kind> with id X not
    found" -> NotFound; 401 with the scope message, and 403 -> ScopeError; 422 and other 400 ->
    Validation with the API's messages; other 401s -> AuthError (by the default).
    """
    status, messages = response.status_code, _messages(body)
    text = "; ".join(messages)
    where: dict[str, Any] = {"system": SYSTEM, "method": response.request.method,
                             "path": response.request.url.path, "status": status}
    if status == 400 and _DUPLICATE in text:
        meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
        return Duplicate(text, contact_id=meta.get("contactId"), matching_field=meta.get("matchingField"), **where)
    if status == 400 and _NOT_FOUND.search(text):
        return NotFound(text, **where)
    if (status == 401 and _SCOPE in text) or status == 403:
        return ScopeError(f"the credentials lack access: {text}", **where)
    if status in (400, 422):
        return Validation(f"rejected ({status}): {text}", messages=messages, **where)
    return None


def _messages(body: dict[str, Any]) -> list[str]:
    message = body.get("message", body.get("error", ""))
    return [str(m) for m in message] if isinstance(message, list) else [str(message)]


def iso(moment: datetime) -> str:
    """GHL's date form: ISO 8601 in UTC with milliseconds and `Z` (a naive datetime is taken as UTC)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _PagingGuard:
    """What `iter_contacts` has seen of a listing, to stop one that would not end (module docstring)."""

    def __init__(self, size: int):
        self.size, self.pages, self.total = size, 0, 0
        self.seen: set[str] = set()

    def fresh(self, page: SearchPage) -> list[Contact]:
        """The page's contacts not yielded before; `PagingStalled` past the pages the largest total needs."""
        self.pages += 1
        self.total = max(self.total, page.total)
        if self.total and self.pages > math.ceil(self.total / self.size) + PAGE_MARGIN:
            raise self._stalled(f"{self.pages} pages read where a total of {self.total:,} needs "
                                f"{math.ceil(self.total / self.size)}: the listing does not end")
        fresh = [c for c in page.contacts if c.id not in self.seen]
        self.seen.update(c.id for c in fresh)
        return fresh

    def fresh_unreadable(self, page: SearchPage) -> list[Unreadable]:
        """The page's unreadable records not yielded before (a page starts after its last readable contact,
        so the unreadable ones behind it come again on the next page)."""
        fresh = [u for u in page.unreadable if u.key is None or u.key not in self.seen]
        self.seen.update(u.key for u in fresh if u.key is not None)
        return fresh

    def next_cursor(self, cursor: list[Any] | None, last: list[Any], brought_new: bool) -> list[Any]:
        if last == cursor:
            raise self._stalled(f"the searchAfter cursor did not move after page {self.pages} (the search "
                                "ignored it)")
        if not brought_new:
            raise self._stalled(f"page {self.pages} brought no contact not listed before (a page repeated)")
        return last

    def _stalled(self, reason: str) -> PagingStalled:
        return PagingStalled(f"{reason}; stopped after {self.pages} requests rather than spend the day's budget",
                             system=SYSTEM, method="POST", path="/contacts/search")


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------------------ client


class GHLClient(ApiBacked):
    """Async client of one GHL location. Build it with `from_settings`; close it with `aclose()`."""

    def __init__(self, api: ApiClient, location_id: str):
        self.api, self.location_id = api, location_id
        self._custom_keys: dict[str, str] | None = None  # custom field id -> fieldKey, read once per client (run)

    @classmethod
    def from_settings(cls, settings: Settings, location_id: str, *, transport: httpx.AsyncBaseTransport | None = None,
                      credentials: Credentials | None = None, clock: Callable[[], float] = time.monotonic,
                      budget: RateBudget | None = None, **api_options: Any) -> GHLClient:
        """A client for `location_id` configured from `Settings`.

        Args:
            settings: `contact_recon.settings.Settings` (base URL, token or OAuth client, data dir).
            location_id: the GHL location (sub-account) every call works in.
            transport: an httpx transport (tests, recording); None for the network.
            credentials: overrides the ones made from settings (a Private Integration token when
                `ghl_token` is set, else OAuth with tokens in the Prefect block or the 0600 file).
            clock: monotonic seconds for the rate budget.
            budget: overrides the process-wide budget of ("ghl", location_id) (isolated tests).
            api_options: passed to `ApiClient` (timeout, max_attempts, backoff_max_s, sleep).
        """
        scale = settings.ghl_rate_scale
        budget = budget or budget_for(SYSTEM, location_id, lambda: RateBudget(
            int(BURST_LIMIT * scale), BURST_WINDOW_S, int(DAILY_LIMIT * scale), clock=clock))
        api = ApiClient(system=SYSTEM, base_url=settings.ghl_base_url,
                        credentials=credentials or credentials_from_settings(settings, location_id), budget=budget,
                        auth_header=lambda token: {"Authorization": f"Bearer {token}"},
                        headers={"Version": API_VERSION, "Accept": "application/json"},
                        classify=classify, transport=transport, **api_options)
        return cls(api, location_id)

    def budget_snapshot(self) -> BudgetSnapshot:
        return self.api.budget.snapshot()

    async def _answer(self, method: str, path: str, *, write: bool | None = None,
                      **kwargs: Any) -> tuple[httpx.Response, dict[str, Any]]:
        """The answer and its JSON object (an empty body is `{}`); MalformedResponse for anything else."""
        answer = await self.api.request(method, path, write=write, **kwargs)
        return answer, json_object(SYSTEM, answer, empty={})

    async def _json(self, method: str, path: str, *, write: bool | None = None, **kwargs: Any) -> dict[str, Any]:
        return (await self._answer(method, path, write=write, **kwargs))[1]

    async def _one(self, model: type[M], method: str, path: str, key: str | None, *, write: bool | None = None,
                   **kwargs: Any) -> M:
        """The answer's `key` (the whole answer when None) as a `model`."""
        answer, body = await self._answer(method, path, write=write, **kwargs)
        data = body if key is None else member(SYSTEM, answer, body, key, dict)
        return parse(SYSTEM, answer, model, data, key or "answer")

    async def _many(self, model: type[M], method: str, path: str, key: str, *, write: bool | None = None,
                    **kwargs: Any) -> list[M]:
        """The answer's `key`, an array, as `model`s."""
        answer, body = await self._answer(method, path, write=write, **kwargs)
        items = member(SYSTEM, answer, body, key, list)
        return [parse(SYSTEM, answer, model, item, f"{key}[{i}]") for i, item in enumerate(items)]

    # -------------------------------------------------------------------------------- contacts

    async def get_contact(self, contact_id: str) -> Contact:
        return await self._one(Contact, "GET", f"/contacts/{contact_id}", "contact")

    async def search_contacts(self, *, page_limit: int = 100, page: int | None = None,
                              search_after: list[Any] | None = None, query: str | None = None,
                              filters: list[dict[str, Any]] | None = None,
                              sort: list[dict[str, str]] | None = None) -> SearchPage:
        """One page of `POST /contacts/search` (a read: retried like any GET)."""
        body: dict[str, Any] = {"locationId": self.location_id, "pageLimit": min(page_limit, MAX_PAGE_LIMIT)}
        optional = {"page": page, "searchAfter": search_after, "query": query, "filters": filters, "sort": sort}
        body |= {k: v for k, v in optional.items() if v is not None}
        return await self._one(SearchPage, "POST", "/contacts/search", None, write=False, json=body)

    async def iter_contacts(self, updated_since: datetime | None = None,
                            page_limit: int = MAX_PAGE_LIMIT) -> AsyncIterator[Contact | Unreadable]:
        """Every contact exactly once (or those updated at or after `updated_since`), an unreadable one as an
        `Unreadable`; `PagingStalled` rather than a listing without end (module docstring)."""
        filters = [{"field": "dateUpdated", "operator": "range", "value": {"gte": iso(updated_since)}}] \
            if updated_since else None
        sort = [{"field": "dateAdded", "direction": "asc"}]
        size = min(page_limit, MAX_PAGE_LIMIT)
        guard = _PagingGuard(size)
        cursor: list[Any] | None = None
        while True:
            page = await self.search_contacts(page_limit=size, search_after=cursor, filters=filters, sort=sort)
            fresh = guard.fresh(page)
            records: list[Contact | Unreadable] = [*fresh, *guard.fresh_unreadable(page)]
            for record in records:
                yield record
            if len(page.contacts) + len(page.unreadable) < size:
                return
            if not page.contacts:  # a full page of records we cannot read: no cursor to go on with
                raise MalformedResponse(f"no contact of a full page of {size} can be read, so the listing cannot "
                                        "go past it", system=SYSTEM, method="POST", path="/contacts/search")
            if page.contacts[-1].searchAfter is None:
                return
            cursor = guard.next_cursor(cursor, page.contacts[-1].searchAfter, bool(fresh))

    async def create_contact(self, fields: dict[str, Any]) -> Contact:
        """`POST /contacts/`; Duplicate (with the existing id) where the location refuses duplicates."""
        body = {**fields, "locationId": self.location_id}
        return await self._one(Contact, "POST", "/contacts/", "contact", json=body)

    async def upsert_contact(self, fields: dict[str, Any]) -> tuple[Contact, bool]:
        """`POST /contacts/upsert` (matches email, then phone); (the contact, whether it is new)."""
        response, answer = await self._answer("POST", "/contacts/upsert",
                                              json={**fields, "locationId": self.location_id})
        contact = parse(SYSTEM, response, Contact, member(SYSTEM, response, answer, "contact", dict), "contact")
        return contact, bool(answer.get("new"))

    async def update_contact(self, contact_id: str, fields: dict[str, Any]) -> Contact:
        """`PUT /contacts/{id}`; a `tags` field replaces every tag."""
        response, answer = await self._answer("PUT", f"/contacts/{contact_id}", json=fields)
        if not answer.get("contact"):
            return await self.get_contact(contact_id)
        return parse(SYSTEM, response, Contact, member(SYSTEM, response, answer, "contact", dict), "contact")

    async def find_duplicate(self, *, email: str | None = None, phone: str | None = None) -> Contact | None:
        """`GET /contacts/search/duplicate`: the location's contact with this email, else this phone (a read)."""
        params = {"locationId": self.location_id} | {k: v for k, v in {"email": email, "number": phone}.items() if v}
        response, answer = await self._answer("GET", "/contacts/search/duplicate", params=params)
        found = answer.get("contact")
        return parse(SYSTEM, response, Contact, found, "contact") if isinstance(found, dict) else None

    async def delete_contact(self, contact_id: str) -> None:
        await self._json("DELETE", f"/contacts/{contact_id}")

    # ------------------------------------------------------------------------------------ tags

    async def add_tags(self, contact_id: str, tags: list[str]) -> list[str]:
        """Add tags; returns the contact's tags after the change."""
        return list((await self._json("POST", f"/contacts/{contact_id}/tags", json={"tags": tags})).get("tags", []))

    async def remove_tags(self, contact_id: str, tags: list[str]) -> list[str]:
        """Remove tags; returns the contact's tags after the change."""
        answer = await self._json("DELETE", f"/contacts/{contact_id}/tags", json={"tags": tags})
        return list(answer.get("tags", []))

    async def bulk_update_tags(self, type: Literal["add", "remove"], contact_ids: list[str], tags: list[str], *,
                               remove_all: bool = False) -> BulkTagsResult:
        """`POST /contacts/bulk/tags/update/{add|remove}` (UpdateTagsDTO); per-contact results in `responses`."""
        body: dict[str, Any] = {"contacts": contact_ids, "tags": tags, "locationId": self.location_id}
        if remove_all:
            body["removeAllTags"] = True
        return await self._one(BulkTagsResult, "POST", f"/contacts/bulk/tags/update/{type}", None, json=body)

    # ----------------------------------------------------------------------------------- tasks

    async def list_tasks(self, contact_id: str) -> list[Task]:
        return await self._many(Task, "GET", f"/contacts/{contact_id}/tasks", "tasks")

    async def get_task(self, contact_id: str, task_id: str) -> Task:
        return await self._one(Task, "GET", f"/contacts/{contact_id}/tasks/{task_id}", "task")

    async def create_task(self, contact_id: str, *, title: str, due_date: datetime | str, body: str | None = None,
                          completed: bool = False, assigned_to: str | None = None) -> Task:
        fields: dict[str, Any] = {"title": title, "dueDate": iso(due_date) if isinstance(due_date, datetime)
                                  else due_date, "completed": completed}
        fields |= {k: v for k, v in {"body": body, "assignedTo": assigned_to}.items() if v is not None}
        return await self._one(Task, "POST", f"/contacts/{contact_id}/tasks", "task", json=fields)

    async def update_task(self, contact_id: str, task_id: str, fields: dict[str, Any]) -> Task:
        """`PUT` with any of title, body, dueDate, completed, assignedTo."""
        return await self._one(Task, "PUT", f"/contacts/{contact_id}/tasks/{task_id}", "task", json=fields)

    async def complete_task(self, contact_id: str, task_id: str, completed: bool = True) -> Task:
        return await self._one(Task, "PUT", f"/contacts/{contact_id}/tasks/{task_id}/completed", "task",
                               json={"completed": completed})

    async def delete_task(self, contact_id: str, task_id: str) -> None:
        await self._json("DELETE", f"/contacts/{contact_id}/tasks/{task_id}")

    async def search_tasks(self, contact_ids: Sequence[str], *, completed: bool | None = None,
                           batch_size: int = TASK_SEARCH_BATCH, page_size: int = TASK_SEARCH_PAGE) -> list[Task]:
        """The tasks of all `contact_ids`, in batches of ids, each paged with limit/skip (module docstring)."""
        found: dict[str, Task] = {}
        for batch in _chunks(list(contact_ids), batch_size):
            async for task in self._task_pages(list(batch), completed, page_size):
                found.setdefault(task.id, task)
        return list(found.values())

    async def _task_pages(self, contact_ids: list[str], completed: bool | None, page_size: int) -> AsyncIterator[Task]:
        skip = 0
        while True:
            body: dict[str, Any] = {"contactId": contact_ids, "limit": page_size, "skip": skip}
            if completed is not None:
                body["completed"] = completed
            tasks = await self._many(Task, "POST", f"/locations/{self.location_id}/tasks/search", "tasks",
                                     write=False, json=body)
            for task in tasks:
                yield task
            if len(tasks) < page_size:
                return
            skip += len(tasks)

    # ----------------------------------------------------------------------------------- notes

    async def list_notes(self, contact_id: str) -> list[Note]:
        return await self._many(Note, "GET", f"/contacts/{contact_id}/notes", "notes")

    async def get_note(self, contact_id: str, note_id: str) -> Note:
        return await self._one(Note, "GET", f"/contacts/{contact_id}/notes/{note_id}", "note")

    async def create_note(self, contact_id: str, body: str, *, title: str | None = None,
                          user_id: str | None = None) -> Note:
        fields = {"body": body} | {k: v for k, v in {"title": title, "userId": user_id}.items() if v is not None}
        return await self._one(Note, "POST", f"/contacts/{contact_id}/notes", "note", json=fields)

    async def update_note(self, contact_id: str, note_id: str, fields: dict[str, Any]) -> Note:
        """`PUT` with any of body, title, userId, color, pinned."""
        return await self._one(Note, "PUT", f"/contacts/{contact_id}/notes/{note_id}", "note", json=fields)

    async def delete_note(self, contact_id: str, note_id: str) -> None:
        await self._json("DELETE", f"/contacts/{contact_id}/notes/{note_id}")

    # ---------------------------------------------------------------------------- custom fields

    async def custom_fields(self) -> list[CustomFieldDefinition]:
        """The location's contact custom fields (GET /locations/{id}/customFields, scope
        locations/customFields.readonly)."""
        return await self._many(CustomFieldDefinition, "GET", f"/locations/{self.location_id}/customFields",
                                "customFields", params={"model": "contact"})

    async def custom_field_keys(self) -> dict[str, str]:
        """id -> fieldKey of the location's custom fields, read once per client (so once per run and location)."""
        if self._custom_keys is None:
            self._custom_keys = {d.id: d.fieldKey for d in await self.custom_fields() if d.fieldKey}
        return self._custom_keys

    async def custom_keys_for(self, contacts: Iterable[Contact]) -> dict[str, str] | None:
        """The id -> fieldKey map when any of `contacts` carries custom fields (None when none does: no request).

        A location whose definitions cannot be read (the token lacks `locations/customFields.readonly`, an outage)
        gives None with a warning: its custom fields stay unresolved (`id:<id>`), which the merge holds rather than
        reading as blank (model/custom_fields.py), so nothing fails and nothing is overwritten.
        """
        return await self.custom_keys_when(any(c.customFields for c in contacts))

    async def custom_keys_when(self, needed: bool) -> dict[str, str] | None:
        """The id -> fieldKey map when `needed` (some contact carries custom fields), else None without a request;
        None with a warning when the definitions cannot be read (`custom_keys_for`)."""
        if not needed:
            return None
        try:
            return await self.custom_field_keys()
        except ConnectorError as exc:
            log.warning("ghl %s: custom field definitions unreadable, custom fields held: %s", self.location_id, exc)
            return None

    async def custom_field_id(self, field_key: str) -> str | None:
        """The location's id of the custom field `field_key`, None when the location does not define it."""
        return next((i for i, key in (await self.custom_field_keys()).items() if key == field_key), None)

    # ---------------------------------------------------------------------------- appointments

    async def appointments(self, contact_id: str) -> list[Appointment]:
        return await self._many(Appointment, "GET", f"/contacts/{contact_id}/appointments", "events")


# ------------------------------------------------------------------------------------- credentials


def credentials_from_settings(settings: Settings, location_id: str | None = None) -> Credentials:
    """The location's own Private Integration token (`ghl_location_tokens`) when it has one, else the token when
    configured, else OAuth (Prefect block in deployments, else the file of the location's own pair, or the older
    shared file when the location has none)."""
    own = settings.ghl_location_tokens.get(location_id or "")
    if own is not None and own.get_secret_value():
        return StaticToken(own.get_secret_value())
    if settings.ghl_token is not None and settings.ghl_token.get_secret_value():
        return StaticToken(settings.ghl_token.get_secret_value())
    if settings.ghl_client_id and settings.ghl_client_secret is not None and settings.ghl_company_id and location_id:
        return agency_credentials(settings, settings.ghl_company_id, location_id)  # an agency install
    if settings.ghl_client_id and settings.ghl_client_secret is not None:
        store: TokenStore = PrefectSecretTokenStore(settings.ghl_token_block) if settings.ghl_token_block \
            else FileTokenStore(oauth_token_file(settings, location_id))
        return GHLOAuth(store, client_id=settings.ghl_client_id,
                        client_secret=settings.ghl_client_secret.get_secret_value(), base_url=settings.ghl_base_url)
    raise AuthError("no GHL credentials: set RECON_GHL_TOKEN, or RECON_GHL_CLIENT_ID and RECON_GHL_CLIENT_SECRET",
                    system=SYSTEM)


def company_oauth(settings: Settings, company_id: str) -> GHLOAuth:
    """The Company pair of an agency install, in the company's own token file (refreshed under its lock)."""
    secret = settings.ghl_client_secret.get_secret_value() if settings.ghl_client_secret else ""
    return GHLOAuth(FileTokenStore(settings.ghl_token_file_for(company_id, "company")),
                    client_id=settings.ghl_client_id or "", client_secret=secret, base_url=settings.ghl_base_url,
                    user_type="Company")


def agency_credentials(settings: Settings, company_id: str, location_id: str) -> LocationFromCompany:
    """A location's token minted from the agency's Company pair, cached until it expires in the location's own token
    file (shared by every process, under its lock)."""
    return LocationFromCompany(company_oauth(settings, company_id), company_id=company_id, location_id=location_id,
                               base_url=settings.ghl_base_url,
                               store=FileTokenStore(settings.ghl_token_file_for(location_id)))


def is_agency_install(settings: Settings) -> bool:
    """An agency install: a company whose Company pair mints each location's token (and no static token)."""
    static = settings.ghl_token is not None and bool(settings.ghl_token.get_secret_value())
    return bool(settings.ghl_company_id and settings.ghl_client_id and settings.ghl_client_secret) and not static


async def installed_location_ids(settings: Settings, http: httpx.AsyncClient | None = None) -> list[str]:
    """The locations `GET /oauth/installedLocations` lists for the agency install's company and app."""
    assert settings.ghl_company_id, "not an agency install: RECON_GHL_COMPANY_ID is not set"
    client = http or httpx.AsyncClient(timeout=30)
    try:
        found = await installed_locations(company_oauth(settings, settings.ghl_company_id), settings.ghl_base_url,
                                          settings.ghl_company_id, settings.ghl_app, client)
    finally:
        if http is None:
            await client.aclose()
    return [loc.location_id for loc in found]


def oauth_token_file(settings: Settings, location_id: str | None) -> Path:
    """The location's own token file when it exists, else the shared file of installs authorized before."""
    if location_id:
        own = settings.ghl_token_file_for(location_id)
        if own.exists():
            return own
    return settings.ghl_token_file
