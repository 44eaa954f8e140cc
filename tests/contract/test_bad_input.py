"""Malformed API answers against both connectors' reads, served over HTTP on 127.0.0.1 by a route-table server.

The corpus: broken and truncated JSON, HTML error pages with 200, empty and non-object bodies, bytes that are not
UTF-8, absurd nesting, a 20 MB junk body, missing fields, wrong types, null where a list belongs, lone UTF-16
surrogates (escaped in JSON), and merely odd but valid text (NUL, RTL marks, emoji, combining marks, a 20 MB note).
Each read either returns the normal records (odd but valid data, kept exactly as sent) or raises a typed
`ConnectorError` (`MalformedResponse` for a body it cannot read) whose message names the endpoint, stays short and
never holds the token or API key. Nothing hangs: every read is bounded by `asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contact_recon.model.normalise import to_frame
from contact_recon.model.records import GHL_CONTACTS, TINYEMAIL_CUSTOMERS
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.errors import ConnectorError, MalformedResponse, Unavailable
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.ghl.mapping import ghl_contact_record
from contact_recon.systems.ghl.models import Contact
from contact_recon.systems.models import Unreadable
from contact_recon.systems.tinyemail.client import TinyEmailClient
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record
from contact_recon.systems.tinyemail.models import Customer

TOKEN = "pit-bad-input-0123456789abcdef"
API_KEY = "te-key-bad-input-fedcba9876543210"
LOCATION = "loc1"
MB = 1 << 20
ODD = {"nul": "Ann\x00e", "rtl": "\u202eevilbox\u202c", "emoji": "Zoë 👩\u200d👩\u200d👧 🎉", "combining": "Jose\u0301",
       "arabic": "\u0645\u0631\u062d\u0628\u0627 \u200fRTL", "zero width": "a\u200bb\ufeff"}

Serve = Callable[[Starlette], RunningServer]


@dataclass(frozen=True)
class Answer:
    """What the route-table server answers: a status, raw body bytes and a content type; `cut` declares 1000
    more bytes than it sends (the connection ends mid-body)."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200
    cut: bool = False

    def response(self) -> Response:
        response = Response(self.body, status_code=self.status, media_type=self.content_type)
        if self.cut:
            response.headers["content-length"] = str(len(self.body) + 1000)
        return response


def as_json(value: Any) -> Answer:
    return Answer(json.dumps(value).encode())


def route_table(routes: dict[tuple[str, str], Answer]) -> Starlette:
    """An app answering each (method, path) from the table, 404 for anything else."""

    async def handle(request: Request) -> Response:
        answer = routes.get((request.method, request.url.path))
        return answer.response() if answer else JSONResponse({"message": "no such route"}, 404)

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST", "PUT", "DELETE"])])


async def no_wait(seconds: float) -> None:
    return None


def ghl_client(url: str) -> GHLClient:
    settings = Settings(_env_file=None, ghl_base_url=url, ghl_token=TOKEN)
    return GHLClient.from_settings(settings, LOCATION, budget=RateBudget(10_000, 10.0, None), max_attempts=2,
                                   sleep=no_wait, timeout=20)


def te_client(url: str) -> TinyEmailClient:
    settings = Settings(_env_file=None, tinyemail_base_url=url + "/v1", tinyemail_api_key=API_KEY)
    return TinyEmailClient.from_settings(settings, budget=RateBudget(10_000, 60.0, None), max_attempts=2,
                                         sleep=no_wait, timeout=20)


async def first_page(client: TinyEmailClient) -> list[Customer | Unreadable]:
    async for page in client.iter_pages("L1"):
        return page
    return []


# (system, endpoint name) -> (method, path served, the read)
Read = Callable[[Any], Awaitable[Any]]
READS: dict[tuple[str, str], tuple[str, str, Read]] = {
    ("ghl", "get contact"): ("GET", "/contacts/c1", lambda c: c.get_contact("c1")),
    ("ghl", "search page"): ("POST", "/contacts/search", lambda c: c.search_contacts(page_limit=10)),
    ("ghl", "tasks"): ("GET", "/contacts/c1/tasks", lambda c: c.list_tasks("c1")),
    ("ghl", "task search"): ("POST", f"/locations/{LOCATION}/tasks/search", lambda c: c.search_tasks(["c1"])),
    ("ghl", "notes"): ("GET", "/contacts/c1/notes", lambda c: c.list_notes("c1")),
    ("tinyemail", "get customer"): ("GET", "/v1/account/customer/a@x.com", lambda c: c.get_customer("a@x.com")),
    ("tinyemail", "lists"): ("GET", "/v1/contacts", lambda c: c.lists()),
    ("tinyemail", "customers page"): ("GET", "/v1/contacts/L1/members", first_page),
}


async def read(serve: Serve, system: str, endpoint: str, answer: Answer) -> Any:
    """Serve `answer` at the endpoint and make the read (bounded: a hang fails the test)."""
    method, path, call = READS[(system, endpoint)]
    server = serve(route_table({(method, path): answer}))
    client = ghl_client(server.base_url) if system == "ghl" else te_client(server.base_url)
    async with client:
        return await asyncio.wait_for(call(client), timeout=60)


def assert_clear(error: BaseException, system: str, endpoint: str, kind: type[ConnectorError] = MalformedResponse,
                 *mentions: str) -> None:
    """A typed error naming the endpoint (and `mentions`), short, with neither secret in it."""
    method, path, _ = READS[(system, endpoint)]
    text = str(error)
    assert type(error) is kind, f"{type(error).__name__}: {text}"
    endpoint_named = text.split(": ", 1)[0]  # "<system> <method> <path>", the path with or without the /v1 base
    assert error.system == system and endpoint_named.startswith(f"{system} {method} "), text
    assert endpoint_named.endswith(path.removeprefix("/v1")), text
    assert TOKEN not in text and API_KEY not in text and "pit-" not in text
    assert len(text) < 1000
    for mention in mentions:
        assert mention in text


# ------------------------------------------------------------------------------ bodies no read can use

UNREADABLE = {
    "broken JSON": Answer(b'{"contact": {"id": "c1", "firstName": "Ann"'),
    "HTML error page with 200": Answer(b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1>"
                                       b"<p>nginx</p></body></html>", "text/html"),
    "JSON array": as_json([{"id": "c1"}]),
    "JSON string": as_json("ok"),
    "JSON null": Answer(b"null"),
    "not UTF-8": Answer(b'{"contact": {"id": "\xff\xfe\xfa"}}'),
    "nested 100,000 deep": Answer(b"[" * 100_000 + b"]" * 100_000),
    "empty object": as_json({}),
}


@pytest.mark.parametrize("body", list(UNREADABLE), ids=list(UNREADABLE))
@pytest.mark.parametrize("system,endpoint", list(READS), ids=[f"{s}-{e}" for s, e in READS])
def test_an_unreadable_body_is_a_malformed_response_naming_the_endpoint(serve: Serve, system: str, endpoint: str,
                                                                         body: str) -> None:
    with pytest.raises(ConnectorError) as caught:
        asyncio.run(read(serve, system, endpoint, UNREADABLE[body]))
    assert_clear(caught.value, system, endpoint)


def test_an_empty_200_is_malformed_where_a_record_is_expected(serve: Serve) -> None:
    for system, endpoint in READS:
        with pytest.raises(MalformedResponse) as caught:
            asyncio.run(read(serve, system, endpoint, Answer(b"")))
        assert_clear(caught.value, system, endpoint)


@pytest.mark.parametrize("system,endpoint", [("ghl", "get contact"), ("tinyemail", "customers page")])
def test_a_20_mb_junk_body_is_a_short_error(serve: Serve, system: str, endpoint: str) -> None:
    junk = Answer(b"<html>" + b"Bearer " + TOKEN.encode() + b" " + b"x" * (20 * MB) + b"</html>", "text/html")
    with pytest.raises(MalformedResponse) as caught:
        asyncio.run(read(serve, system, endpoint, junk))
    assert_clear(caught.value, system, endpoint, MalformedResponse, "not JSON", "text/html")


@pytest.mark.parametrize("system,endpoint", [("ghl", "get contact"), ("ghl", "notes"), ("tinyemail", "lists")])
def test_a_body_cut_off_midway_is_unavailable_after_the_retries(serve: Serve, system: str, endpoint: str) -> None:
    with pytest.raises(Unavailable) as caught:
        asyncio.run(read(serve, system, endpoint, Answer(b'{"contact": {"id": "c1"}', cut=True)))
    assert_clear(caught.value, system, endpoint, Unavailable, "no answer")


# ------------------------------------------------------------------------------ shapes that are wrong

WRONG_SHAPES: list[tuple[str, str, str, Any, tuple[str, ...]]] = [
    # (system, endpoint, case, JSON answer, words the message must hold)
    ("ghl", "get contact", "contact missing", {"traceId": "t"}, ("no `contact`",)),
    ("ghl", "get contact", "contact null", {"contact": None}, ("`contact` must be an object, got null",)),
    ("ghl", "get contact", "contact a string", {"contact": "c1"}, ("`contact` must be an object",)),
    ("ghl", "get contact", "id missing", {"contact": {"firstName": "Ann"}}, ("contact.id",)),
    ("ghl", "get contact", "id a number", {"contact": {"id": 123}}, ("contact.id",)),
    ("ghl", "get contact", "tags a string holding the token", {"contact": {"id": "c1", "tags": f"Bearer {TOKEN}"}},
     ("contact.tags",)),
    ("ghl", "get contact", "dnd a list", {"contact": {"id": "c1", "dnd": [True]}}, ("contact.dnd",)),
    ("ghl", "get contact", "dateAdded not a date", {"contact": {"id": "c1", "dateAdded": "yesterday"}},
     ("contact.dateAdded",)),
    ("ghl", "get contact", "dateOfBirth far beyond year 9999", {"contact": {"id": "c1", "dateOfBirth": 1e300}},
     ("dateOfBirth",)),
    ("ghl", "search page", "contacts missing", {"total": 3}, ("contacts",)),
    ("ghl", "search page", "contacts null", {"contacts": None, "total": 0}, ("contacts",)),
    ("ghl", "search page", "contacts an object", {"contacts": {"id": "c1"}, "total": 1}, ("contacts",)),
    ("ghl", "search page", "total a word", {"contacts": [], "total": "many"}, ("answer.total",)),
    ("ghl", "tasks", "tasks missing", {}, ("no `tasks`",)),
    ("ghl", "tasks", "tasks null", {"tasks": None}, ("`tasks` must be an array, got null",)),
    ("ghl", "tasks", "task without id", {"tasks": [{"title": "call"}]}, ("tasks[0].id",)),
    ("ghl", "tasks", "completed a word", {"tasks": [{"id": "t1", "completed": "maybe"}]}, ("tasks[0].completed",)),
    ("ghl", "task search", "tasks null", {"tasks": None}, ("`tasks` must be an array",)),
    ("ghl", "task search", "tasks a number", {"tasks": 5}, ("`tasks` must be an array, got a number",)),
    ("ghl", "notes", "notes null", {"notes": None}, ("`notes` must be an array, got null",)),
    ("ghl", "notes", "note id an object", {"notes": [{"id": {"$oid": "n1"}}]}, ("notes[0].id",)),
    ("ghl", "notes", "note body a number", {"notes": [{"id": "n1", "body": 42}]}, ("notes[0].body",)),
    ("tinyemail", "get customer", "email missing", {"firstName": "Ann"}, ("customer.email",)),
    ("tinyemail", "get customer", "email null", {"email": None}, ("customer.email",)),
    ("tinyemail", "lists", "contacts missing", {"lists": []}, ("no `contacts`",)),
    ("tinyemail", "lists", "contacts null", {"contacts": None}, ("`contacts` must be an array, got null",)),
    ("tinyemail", "lists", "list id a number", {"contacts": [{"id": 5, "name": "News"}]}, ("contacts[0].id",)),
    ("tinyemail", "customers page", "members missing", {"content": []}, ("no `members`",)),
    ("tinyemail", "customers page", "members null", {"members": None}, ("`members` must be an object",)),
    ("tinyemail", "customers page", "members a list", {"members": [{"email": "a@x.com"}]},
     ("`members` must be an object",)),
    ("tinyemail", "customers page", "content null", {"members": {"content": None, "last": True}},
     ("`content` must be an array, got null",)),
]


@pytest.mark.parametrize("system,endpoint,case,body,mentions", WRONG_SHAPES,
                         ids=[f"{s}-{e}-{c}" for s, e, c, _, _ in WRONG_SHAPES])
def test_a_wrong_shape_is_a_malformed_response_naming_the_field(serve: Serve, system: str, endpoint: str, case: str,
                                                                body: Any, mentions: tuple[str, ...]) -> None:
    with pytest.raises(ConnectorError) as caught:
        asyncio.run(read(serve, system, endpoint, as_json(body)))
    assert_clear(caught.value, system, endpoint, MalformedResponse, *mentions)


# ------------------------------------------------------- what the real APIs send: one record, never the page

ODD_BUT_READABLE: list[tuple[str, str, Any, str, Any]] = [
    # (system, endpoint, the record as sent, the field, as read)
    ("ghl", "get contact", {"id": "c1", "tags": None}, "tags", []),
    ("ghl", "get contact", {"id": "c1", "customFields": None}, "customFields", []),
    ("ghl", "get contact", {"id": "c1", "dnd": None}, "dnd", False),
    ("ghl", "get contact", {"id": "c1", "phone": 15550100}, "phone", "15550100"),
    ("ghl", "get contact", {"id": "c1", "dateAdded": ""}, "dateAdded", None),
    ("tinyemail", "get customer", {"email": "a@x.com", "tags": None}, "tags", []),
    ("tinyemail", "get customer", {"email": "a@x.com", "status": "subscribed"}, "status", "Subscribed"),
    ("tinyemail", "get customer", {"email": "a@x.com", "status": " UNSUBSCRIBED"}, "status", "Unsubscribed"),
    ("tinyemail", "get customer", {"email": "a@x.com", "status": "Paused"}, "status", "Paused"),
]


@pytest.mark.parametrize("system,endpoint,record,name,expected", ODD_BUT_READABLE,
                         ids=[f"{s}-{n}-{json.dumps(r[n])}" for s, _, r, n, _ in ODD_BUT_READABLE])
def test_an_odd_value_the_real_api_sends_is_read(serve: Serve, system: str, endpoint: str, record: dict[str, Any],
                                                  name: str, expected: Any) -> None:
    body = {"contact": record} if system == "ghl" else record
    read_back = asyncio.run(read(serve, system, endpoint, as_json(body)))
    assert getattr(read_back, name) == expected


def test_a_contact_the_model_refuses_costs_that_contact_not_the_page(serve: Serve) -> None:
    contacts = [{"id": "a", "tags": None}, "junk", {"id": "b", "tags": f"Bearer {TOKEN}"}, {"id": "c"}]
    page = asyncio.run(read(serve, "ghl", "search page", as_json({"contacts": contacts, "total": 4})))
    assert [c.id for c in page.contacts] == ["a", "c"]
    assert [(u.key, u.where) for u in page.unreadable] == [(None, "contacts[1]"), ("b", "contacts[2]")]
    assert "tags" in page.unreadable[1].problem and TOKEN not in page.unreadable[1].problem


def test_a_member_the_model_refuses_costs_that_member_not_the_page(serve: Serve) -> None:
    content = [{"email": "a@x.com"}, {"firstName": "No email"}, {"email": "b@x.com", "tags": "vip"},
               {"email": "c@x.com", "status": "subscribed"}]
    page = asyncio.run(read(serve, "tinyemail", "customers page", as_json({"members": {"content": content,
                                                                                       "last": True}})))
    read_ok = [c for c in page if isinstance(c, Customer)]
    refused = [c for c in page if isinstance(c, Unreadable)]
    assert [(c.email, c.status) for c in read_ok] == [("a@x.com", "Subscribed"), ("c@x.com", "Subscribed")]
    assert [(u.key, u.where) for u in refused] == [(None, "members.content[1]"), ("b@x.com", "members.content[2]")]


LONE_SURROGATES = [
    ("ghl", "get contact", b'{"contact": {"id": "c1", "firstName": "Ann\\ud800e"}}', "$.contact.firstName"),
    ("ghl", "search page", b'{"contacts": [{"id": "c1"}, {"id": "c2", "tags": ["ok", "\\udfff"]}], "total": 2}',
     "$.contacts[1].tags[1]"),
    ("ghl", "notes", b'{"notes": [{"id": "n1", "body": "\\ude00 then \\ud83d\\ude00"}]}', "$.notes[0].body"),
    ("tinyemail", "customers page", b'{"members": {"content": [{"email": "a@x.com", "lastName": "\\uDBFF"}]}}',
     "$.members.content[0].lastName"),
]


@pytest.mark.parametrize("system,endpoint,body,where", LONE_SURROGATES, ids=[w for *_, w in LONE_SURROGATES])
def test_a_lone_surrogate_is_malformed_and_its_place_is_named(serve: Serve, system: str, endpoint: str, body: bytes,
                                                              where: str) -> None:
    with pytest.raises(MalformedResponse) as caught:
        asyncio.run(read(serve, system, endpoint, Answer(body)))
    assert_clear(caught.value, system, endpoint, MalformedResponse, where, "surrogate")


# ------------------------------------------------------------------------------ odd but valid data


def odd_contact() -> dict[str, Any]:
    return {"id": "c1", "locationId": LOCATION, "firstName": ODD["nul"], "lastName": ODD["combining"],
            "companyName": ODD["rtl"], "city": ODD["arabic"], "address1": ODD["zero width"],
            "email": "zoë@bücher.example", "tags": [ODD["emoji"], "vip", ""], "unknownField": {"nested": [1, None]},
            "dateOfBirth": -2208988800000, "phone": None}


def test_odd_unicode_in_a_contact_is_kept_exactly_and_stored(serve: Serve) -> None:
    payload = odd_contact()
    contact = asyncio.run(read(serve, "ghl", "get contact", Answer(json.dumps({"contact": payload}).encode())))

    assert isinstance(contact, Contact)
    assert (contact.firstName, contact.lastName, contact.companyName, contact.city, contact.address1) == (
        ODD["nul"], ODD["combining"], ODD["rtl"], ODD["arabic"], ODD["zero width"])
    assert contact.tags == [ODD["emoji"], "vip", ""] and contact.dateOfBirth == "1900-01-01"
    assert contact.model_extra == {"unknownField": {"nested": [1, None]}}
    # the canonical row keeps the text and a real DuckDB table holds it
    frame = to_frame([ghl_contact_record(contact.model_dump(exclude_none=True), LOCATION)], GHL_CONTACTS)
    stored = duckdb.connect().execute("SELECT first_name, last_name, company, tags FROM frame").fetchone()
    assert stored is not None and stored[0] == ODD["nul"] and stored[2] == ODD["rtl"]
    assert stored[1] == "José" and frame["email"][0] == "zoë@bücher.example"  # NFC: e + U+0301 is é
    assert stored[3] == sorted([ODD["emoji"], "vip"])


def test_odd_unicode_on_a_members_page_is_kept_and_stored(serve: Serve) -> None:
    customers = [{"email": f"p{i}@x.com", "firstName": text, "tags": [text]} for i, text in enumerate(ODD.values())]
    page = asyncio.run(read(serve, "tinyemail", "customers page",
                            as_json({"members": {"content": customers, "last": True}})))

    assert [c.firstName for c in page] == list(ODD.values())
    frame = to_frame([tinyemail_customer_record(c.model_dump(exclude_none=True), ["L1"]) for c in page],
                     TINYEMAIL_CUSTOMERS)
    stored = duckdb.connect().execute("SELECT first_name FROM frame ORDER BY email").fetchall()
    assert [row[0] for row in stored] == [frame["first_name"][i] for i in range(len(ODD))]
    assert stored[0][0] == ODD["nul"] and len(stored) == len(ODD)


def test_a_surrogate_pair_escaped_in_json_is_just_an_emoji(serve: Serve) -> None:
    body = b'{"email": "a@x.com", "firstName": "\\ud83d\\ude00 smile", "tags": ["\\uD83C\\uDF89"]}'
    customer = asyncio.run(read(serve, "tinyemail", "get customer", Answer(body)))
    assert customer is not None and customer.firstName == "😀 smile" and customer.tags == ["🎉"]


def test_a_20_mb_note_is_read_whole(serve: Serve) -> None:
    unit = "Called Zoë about the 👩‍👩‍👧 family plan; she asked for the quote again. "
    body = (unit * (20 * MB // len(unit) + 1))[: 20 * MB]
    answer = {"notes": [{"id": "n1", "contactId": "c1", "body": body}, {"id": "n2", "body": ODD["nul"]}]}
    notes = asyncio.run(read(serve, "ghl", "notes", Answer(json.dumps(answer, ensure_ascii=False).encode())))
    assert [n.id for n in notes] == ["n1", "n2"]
    assert notes[0].body == body and len(notes[0].body) == 20 * MB and notes[1].body == ODD["nul"]


def test_nulls_where_values_are_optional_give_normal_records(serve: Serve) -> None:
    tasks = asyncio.run(read(serve, "ghl", "task search", as_json(
        {"tasks": [{"id": "t1", "contactId": "c1", "title": None, "body": None, "dueDate": None, "assignedTo": None,
                    "completed": False, "extra": None}], "traceId": None})))
    assert [(t.id, t.title, t.dueDate) for t in tasks] == [("t1", None, None)]
    page = asyncio.run(read(serve, "ghl", "search page", as_json(
        {"contacts": [{"id": "c1", "email": None, "firstName": None, "searchAfter": None}], "total": 1})))
    assert [c.id for c in page.contacts] == ["c1"] and page.total == 1
    empty = asyncio.run(read(serve, "tinyemail", "customers page", as_json({"members": {"content": [], "last": True}})))
    assert empty == []
