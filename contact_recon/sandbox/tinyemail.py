"""Sandbox server of the TinyEmail API v1, as ../shared/specs/tinyemail/CONTRACT.md describes it.

Every assumption and every choice made where the contract is silent is in
`contact_recon.systems.tinyemail.contract.ASSUMPTIONS`; this module only follows it. A request goes through:
1. routing: a path not in the table -> 404 `{"message": "Not Found"}`; a known path with another method
   -> 405 `{"message": "Method Not Allowed"}` with `Allow` (both before auth);
2. auth: `X-API-KEY: <key>` or `Authorization: Bearer <key>` must name one of the fixture's apiKeys,
   else 401 `{"message": "API key is missing or invalid"}`;
3. the handler: bodies must be JSON objects without unknown keys, member batches are checked whole
   before anything is written (400 `{"message": ...}` names the index and field), then the store acts.
Rate limits (60 a minute per credential, scaled), faults, the request log and the admin routes come
from `contact_recon.sandbox.middleware.wrap_sandbox`; this module hands it `rate_key`, `rate_headers` and `is_write`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contact_recon.sandbox.common import Clock, json_response
from contact_recon.sandbox.middleware import wrap_sandbox
from contact_recon.sandbox.ratelimit import Decision, SlidingWindowLimiter
from contact_recon.sandbox.tinyemail_store import TinyEmailStore, check_members
from contact_recon.systems.tinyemail.contract import API_KEY_HEADER, ASSUMPTIONS, BASE_PATH

Handler = Callable[[Request], Awaitable[Response]]
WINDOW_S = 60.0
AUDIENCE_CAP = ASSUMPTIONS.member_cap_on_audiences
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]  # the 405s are ours
_INTEGER = re.compile(r"-?[0-9]+")


def create_app(fixture_part: dict[str, Any], *, rate_scale: float = 1.0, faults: str | None = None,
               seed: int = 0, clock: Clock = time.time, owned: bool = False) -> Starlette:
    """The served TinyEmail sandbox for the fixture's `tinyemail` part.

    Args:
        fixture_part: `{"apiKeys": [...], "customers": [...], "lists": [...]}` (FORMAT.md).
        rate_scale: multiplies the per-minute request budget of each credential (at least 1 request).
        faults: a `FaultSpec` string such as `"5xx=0.02,latency=20ms"`, or None.
        seed: makes faults and generated audience ids reproducible.
        clock: epoch seconds; drives rate limits and `unsubscribedAt`.
        owned: the caller lets go of `fixture_part`: the store serves its objects, not a copy (`recon sandbox serve`).
    """
    store = TinyEmailStore(fixture_part, clock=clock, seed=seed, owned=owned)
    limit = max(1, round(ASSUMPTIONS.requests_per_minute * rate_scale))
    return wrap_sandbox(
        routes(store), name="tinyemail", store=store, rate_key=rate_key, rate_headers=rate_headers,
        limiter=SlidingWindowLimiter(limit, WINDOW_S, clock=clock),
        too_many_body={"message": ASSUMPTIONS.too_many_requests_message},
        fault_body=lambda status, message: {"message": message},
        faults=faults, seed=seed, is_write=is_write, clock=clock,
    )


# --- hooks for the middleware --------------------------------------------------------------------

def credential(request: Request) -> str | None:
    """The credential a request carries: its API key, else (when accepted) its bearer token."""
    key = request.headers.get(API_KEY_HEADER, "").strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and ASSUMPTIONS.bearer_accepted else ""
    if key and (ASSUMPTIONS.api_key_header_wins or not bearer):
        return key
    return bearer or key or None


def rate_key(request: Request) -> str | None:
    """The rate-limit bucket: the credential hashed (never stored), None without one (the 401 answers)."""
    found = credential(request)
    return None if found is None else f"te:{hashlib.sha256(found.encode()).hexdigest()[:16]}"


def rate_headers(decision: Decision) -> dict[str, str]:
    """None unless `ASSUMPTIONS.sandbox_rate_headers`: TinyEmail publishes no rate headers, only the
    429's `Retry-After` (added by the middleware)."""
    if not ASSUMPTIONS.sandbox_rate_headers:
        return {}
    return {"X-RateLimit-Limit": str(decision.limit), "X-RateLimit-Remaining": str(decision.remaining)}


def is_write(method: str, path: str) -> bool:
    return method in ("PUT", "POST")


# --- routing -------------------------------------------------------------------------------------

def routes(store: TinyEmailStore) -> list[Route]:
    api = TinyEmailApi(store)
    table: dict[str, dict[str, Handler]] = {
        "/account/customer/{email}": {"GET": api.get_customer},
        "/account/customer": {"PUT": api.upsert_customers},
        "/contacts": {"GET": api.get_lists},
        "/contacts/{list_id}/members": {"GET": api.get_list_members},
        "/audiences": {"GET": api.get_audiences, "POST": api.create_audience},
        "/audiences/{list_id}": {"PUT": api.update_audience},
    }
    known = [_resource(BASE_PATH + path, handlers, store) for path, handlers in table.items()]
    return [*known, Route("/{rest:path}", _not_found, methods=ALL_METHODS)]


def _resource(path: str, handlers: dict[str, Handler], store: TinyEmailStore) -> Route:
    """A route taking every method: 405 for the ones not handled, then auth, then the handler."""
    allow = ", ".join(sorted(handlers))

    async def endpoint(request: Request) -> Response:
        handler = handlers.get(request.method)
        if handler is None:
            return json_response({"message": "Method Not Allowed"}, 405, {"Allow": allow})
        if credential(request) not in store.api_keys:
            return error(401, ASSUMPTIONS.unauthorized_message)
        return await handler(request)

    return Route(path, endpoint, methods=ALL_METHODS)


async def _not_found(request: Request) -> Response:
    return error(404, "Not Found")


def error(status: int, message: str) -> Response:
    return json_response({"message": message}, status)


# --- handlers ------------------------------------------------------------------------------------

class TinyEmailApi:
    """The endpoint handlers; each answers as the table in CONTRACT.md says."""

    def __init__(self, store: TinyEmailStore):
        self.store = store

    async def get_customer(self, request: Request) -> Response:
        found = self.store.customer(request.path_params["email"])
        if found is None:
            return error(ASSUMPTIONS.unknown_customer_status, "Customer not found")
        return json_response(found)

    async def upsert_customers(self, request: Request) -> Response:
        body, problem = await read_object(request, required=("updateMembers",), optional=())
        problem = problem or check_members(body.get("updateMembers"), "updateMembers")
        problem = problem or refused_member(request, body["updateMembers"], "updateMembers")
        if problem is not None:
            return error(400, problem)
        created, updated = self.store.upsert(body["updateMembers"])
        return json_response({"numberOfCreatedMembers": created, "numberOfUpdatedMembers": updated})

    async def get_lists(self, request: Request) -> Response:
        lists = [{"id": i["id"], "name": i.get("name", ""), "numberOfMembers": len(i["members"])}
                 for i in self.store.lists]
        return json_response({"contacts": lists})

    async def get_list_members(self, request: Request) -> Response:
        item = self.store.list_by_id(request.path_params["list_id"])
        if item is None:
            return error(404, "Contact list not found")
        page, size, problem = page_params(request)
        if problem is not None:
            return error(400, problem)
        content, last = self.store.page_of_members(item, page, size)
        return json_response({"members": {"content": content, "last": last}})

    async def get_audiences(self, request: Request) -> Response:
        audiences = [{"id": i["id"], "name": i.get("name", "")} for i in self.store.lists]
        return json_response({"contacts": audiences})

    async def create_audience(self, request: Request) -> Response:
        body, problem = await read_object(request, required=("name",), optional=("members",))
        if problem is None and not (isinstance(body["name"], str) and body["name"].strip()):
            problem = "name must be a non-empty string"
        problem = problem or check_members(body.get("members", []), "members", capped=AUDIENCE_CAP)
        problem = problem or refused_member(request, body.get("members", []), "members")
        if problem is not None:
            return error(400, problem)
        item = self.store.create_list(body["name"])
        self._assign(item, body.get("members", []))
        return json_response({"id": item["id"]})

    async def update_audience(self, request: Request) -> Response:
        item = self.store.list_by_id(request.path_params["list_id"])
        if item is None:
            return error(404, "Audience not found")
        body, problem = await read_object(request, required=(), optional=("assignMembers", "unAssignMembers"))
        assign = body.get("assignMembers", [])
        problem = problem or check_members(assign, "assignMembers", capped=AUDIENCE_CAP)
        problem = problem or refused_member(request, assign, "assignMembers")
        problem = problem or check_emails(body.get("unAssignMembers", []), "unAssignMembers")
        if problem is not None:
            return error(400, problem)
        self._assign(item, assign)
        self.store.unassign(item, body.get("unAssignMembers", []))  # after assigning: both -> removed
        return Response(status_code=204)

    def _assign(self, item: dict[str, Any], members: list[dict[str, Any]]) -> None:
        self.store.upsert(members)
        self.store.assign(item, [m["email"] for m in members])


def refused_member(request: Request, members: list[dict[str, Any]], where: str) -> str | None:
    """The 400 message of the `te_reject` fault (sandbox/faults.py) for the first member it refuses, or None: like a
    real batch API, one member TinyEmail will not take refuses the whole call, naming that member's index."""
    injector = request.app.state.control.injector
    for index, item in enumerate(members):
        email = str(item.get("email") or "")
        if injector.refuses_member(email):
            if not injector.names_refused_member(email):
                return "the batch was refused: a customer cannot be saved (sandbox fault te_reject_unnamed)"
            return f"{where}[{index}].email was refused: this customer cannot be saved (sandbox fault te_reject)"
    return None


# --- request reading -----------------------------------------------------------------------------

async def read_object(request: Request, *, required: tuple[str, ...],
                      optional: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
    """The JSON object body and the 400 message when it is missing, broken or has wrong keys."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}, "Malformed JSON body"
    if not isinstance(body, dict):
        return {}, "Request body must be a JSON object"
    missing = [key for key in required if key not in body]
    if missing:
        return body, f"{missing[0]} is required"
    unknown = [key for key in body if key not in (*required, *optional)]
    if unknown and ASSUMPTIONS.reject_unknown_fields:
        return body, f"{unknown[0]} is not a known field"
    return body, None


def check_emails(emails: Any, where: str) -> str | None:
    """The 400 message for an array of email strings, or None."""
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        return f"{where} must be an array of email strings"
    if AUDIENCE_CAP and ASSUMPTIONS.max_members_per_call < len(emails):
        return f"{where} holds {len(emails)} emails; at most {ASSUMPTIONS.max_members_per_call} a call"
    return None


def page_params(request: Request) -> tuple[int, int, str | None]:
    """`page` (1-indexed, default 1) and `size` (default and cap from ASSUMPTIONS), or the 400 message."""
    values: dict[str, int] = {}
    for name, default in (("page", 1), ("size", ASSUMPTIONS.default_page_size)):
        raw = request.query_params.get(name)
        if raw is not None and not _INTEGER.fullmatch(raw):
            return 0, 0, f"{name} must be an integer"
        values[name] = default if raw is None else int(raw)
    if values["page"] < 1:
        return 0, 0, "page must be 1 or more (pages are 1-indexed)"
    if not 1 <= values["size"] <= ASSUMPTIONS.max_page_size:
        return 0, 0, f"size must be between 1 and {ASSUMPTIONS.max_page_size}"
    return values["page"], values["size"], None
