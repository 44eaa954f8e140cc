"""Sandbox of the GHL (HighLevel) Contacts API v2, following ../shared/specs/ghl exactly.

Every API route runs the same gate before its handler, in this order:
1. `Version` header: `2021-07-28` (the spec) or `v3` (the SDKs since 3.0); missing or other -> 400.
2. `Authorization: Bearer <token>`: a fixture token or one minted through OAuth and not expired;
   missing -> 401 "Invalid JWT", unknown/expired -> 401 (UnauthorizedDTO).
3. The scope the spec's `security` lists for the operation (NOTES.md for the rest) -> else 401
   "The token is not authorized for this scope.".
4. The JSON body against the operation's request schema, loaded from the spec files at import with
   every `$ref` resolved: unknown properties, missing required ones and wrong types -> 422 with
   class-validator style messages (`property X should not exist`, `X must be a string`...).
5. The handler: a location other than the token's -> 403; an unknown contact, task or note id -> 400
   "<Kind> with id X not found".
Handlers never await, so each state change is atomic on uvicorn's single event loop.

Custom fields (apps/locations.json, NOTES.md): `GET /locations/{locationId}/customFields` answers the location's
definitions (scope `locations/customFields.readonly`, `model` contact | opportunity | all); contact writes take
`customFields` items, checked against them (an undefined id or key -> 422), and reads show them
(ghl_store.py, "Custom fields").

Search results lag writes by `search_lag_s` (default `DEFAULT_SEARCH_LAG_S`, 2 s; NOTES.md), and a
location's search can be made to stall or repeat a page (ghl_store.py, "Search lag", "Paging faults").

Sandbox-only routes: `POST /__sandbox/search` with `{"lag_s": seconds, "paging": {locationId: "stall" |
"repeat" | "normal"}}` (either key) changes those and answers them (`GET` answers them too);
`POST /__sandbox/oauth/code` with `{"client_id", "locationId", "scopes": [...]}`
mints a single-use authorization code (there is no user to consent), loopback clients only; trade it
at `POST /oauth/token` (form-encoded, per apps/oauth.json). With `"userType": "Company"` and a
`companyId` (and no `locationId`), the code is an agency install's, traded with `user_type=Company`
for a Company pair; `POST /__sandbox/oauth/install` with `{"companyId", "locationId", "installed"}`
installs the app on a company's location or removes it (what GHL's INSTALL / UNINSTALL webhooks
announce). A Company token lists them at `GET /oauth/installedLocations` (`companyId`, `appId`: the
client id's part before its first `-`) and mints a location access token at `POST
/oauth/locationToken` (form `companyId`, `locationId`; an uninstalled location -> 400).

Choices where the spec and reality disagree (see NOTES.md): search results use `address` and epoch-ms
`dateOfBirth`; task search answers task objects (the spec's `items: {type: array}` is a generator
slip); the bulk-tags `responses` are strings as the schema says, each the JSON of the per-contact
object shown in the spec's example.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contact_recon.sandbox.common import Clock, json_response, read_json
from contact_recon.sandbox.ghl_store import (
    PAGE_WINDOW,
    SORT_FIELDS,
    GHLStore,
    InvalidRequest,
    NotFound,
    OAuthError,
    SearchQuery,
    SortKey,
    TokenInfo,
    contact_view,
    cursor_errors,
    filter_errors,
    matches_query,
    to_ms,
)
from contact_recon.sandbox.middleware import is_loopback, wrap_sandbox
from contact_recon.sandbox.ratelimit import Decision, SlidingWindowLimiter

VERSIONS = ("2021-07-28", "v3")
BURST_LIMIT, BURST_WINDOW_S, DAILY_LIMIT = 100, 10.0, 200_000
SPEC_FILES = ("contacts.json", "locations.json", "oauth.json")
READ_SCOPE, WRITE_SCOPE = "contacts.readonly", "contacts.write"
TOO_MANY = {"statusCode": 429, "message": "Too many requests"}
READ_POSTS = ("/contacts/search", "/contacts/search/duplicate")
DEFAULT_SEARCH_LAG_S = 2.0  # NOTES.md: search results lag writes by a few seconds

# ------------------------------------------------------------------------------------------ the spec


VENDORED_SPECS = Path(__file__).resolve().parent / "specs"


def specs_dir() -> Path:
    """The GHL spec files: $RECON_SPECS_DIR/ghl when set, else the unmodified copy shipped in sandbox/specs/
    (so the sandbox runs on a machine without ../shared; tests/contract/test_vendored_specs.py keeps it identical)."""
    root = os.environ.get("RECON_SPECS_DIR") or VENDORED_SPECS
    return Path(root) / "ghl"


def _resolve(node: Any, doc: dict[str, Any], base: Path, depth: int = 0) -> Any:
    """`node` with every `$ref` (local or `../common/...`) replaced by its target."""
    if depth > 30:
        return {}
    if isinstance(node, list):
        return [_resolve(n, doc, base, depth + 1) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        file_part, _, pointer = node["$ref"].partition("#")
        target_doc = json.loads((base / file_part).read_text()) if file_part else doc
        target: Any = target_doc
        for part in pointer.strip("/").split("/"):
            target = target[part]
        return _resolve(target, target_doc, (base / file_part).parent if file_part else base, depth + 1)
    return {k: _resolve(v, doc, base, depth + 1) for k, v in node.items()}


@dataclass(frozen=True)
class Operation:
    scopes: tuple[str, ...]
    body: dict[str, Any] | None
    query: tuple[dict[str, Any], ...]


def load_operations() -> dict[tuple[str, str], Operation]:
    """(METHOD, spec path) -> the operation's scopes, resolved body schema and query parameters."""
    ops: dict[tuple[str, str], Operation] = {}
    for name in SPEC_FILES:
        path = specs_dir() / "apps" / name
        doc = json.loads(path.read_text())
        for spec_path, methods in doc["paths"].items():
            for method, op in methods.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                scopes = tuple(s for req in op.get("security") or [] for v in req.values() for s in v)
                content: dict[str, Any] = (op.get("requestBody") or {}).get("content") or {}
                first: dict[str, Any] = next(iter(content.values()), {})
                schema = first.get("schema")
                body = _resolve(schema, doc, path.parent) if schema else None
                query = tuple(_resolve(p, doc, path.parent) for p in op.get("parameters", []))
                query_params = tuple(q for q in query if q["in"] == "query")
                ops[(method.upper(), spec_path)] = Operation(scopes, body, query_params)
    return ops


OPERATIONS = load_operations()

# NOTES.md: the search body (the spec's SearchBodyV2DTO lists no properties).
SEARCH_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["locationId", "pageLimit"],
    "properties": {
        "locationId": {"type": "string"},
        "page": {"type": "integer", "minimum": 1},
        "pageLimit": {"type": "integer", "minimum": 1, "maximum": 500},
        "searchAfter": {"type": "array"},
        "query": {"type": "string"},
        "filters": {"type": "array"},
        "sort": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field"],
                "properties": {
                    "field": {"type": "string", "enum": list(SORT_FIELDS)},
                    "direction": {"type": "string", "enum": ["asc", "desc"]},
                },
            },
        },
    },
}
CODE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["client_id", "scopes"],  # and locationId, or companyId with userType Company
    "properties": {
        "client_id": {"type": "string"},
        "locationId": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "userType": {"type": "string"},
        "companyId": {"type": "string"},
    },
}
INSTALL_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["companyId", "locationId", "installed"],
    "properties": {"companyId": {"type": "string"}, "locationId": {"type": "string"}, "installed": {"type": "boolean"}},
}


def body_schema(method: str, spec_path: str) -> dict[str, Any] | None:
    """The request schema of an operation; NOTES.md's shape where the spec's lists no properties."""
    if (method, spec_path) == ("POST", "/contacts/search"):
        spec = OPERATIONS[(method, spec_path)].body or {}
        return spec if spec.get("properties") else SEARCH_BODY
    op = OPERATIONS.get((method, spec_path))
    return op.body if op else None


def query_schema(method: str, spec_path: str) -> dict[str, Any]:
    """A body schema built from an operation's query parameters (POST form of the duplicate search)."""
    params = OPERATIONS[(method, spec_path)].query
    return {
        "type": "object",
        "required": [p["name"] for p in params if p.get("required")],
        "properties": {p["name"]: p.get("schema", {}) for p in params},
    }


# ------------------------------------------------------------------------------------ body checking

_TYPE_MESSAGES = {
    "string": "must be a string",
    "boolean": "must be a boolean value",
    "number": "must be a number conforming to the specified constraints",
    "integer": "must be an integer number",
    "array": "must be an array",
    "object": "must be an object",
}


def _type_ok(kind: str | None, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    return True


def object_errors(schema: dict[str, Any], body: Any, prefix: str = "") -> list[str]:
    """class-validator style messages for `body` against an object schema (nested as `a.b.`)."""
    if not isinstance(body, dict):
        return [f"{prefix.rstrip('.') or 'body'} must be an object"]
    props: dict[str, Any] = schema.get("properties") or {}
    errors = [f"{prefix}property {key} should not exist" for key in body if key not in props]
    for name in schema.get("required") or []:
        if body.get(name) is None or body.get(name) == "":
            errors.append(f"{prefix}{name} should not be empty")
    for name, value in body.items():
        if name in props and value is not None:
            errors += value_errors(props[name], value, f"{prefix}{name}")
    return errors


def value_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    kind = schema.get("type")
    if kind == "object" or (kind is None and "properties" in schema):
        return object_errors(schema, value, f"{path}.") if schema.get("properties") else []
    if not _type_ok(kind, value):
        return [f"{path} {_TYPE_MESSAGES[str(kind)]}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path} must be one of the following values: {', '.join(map(str, schema['enum']))}"]
    if kind in ("number", "integer"):
        if "maximum" in schema and value > schema["maximum"]:
            return [f"{path} must not be greater than {schema['maximum']}"]
        if "minimum" in schema and value < schema["minimum"]:
            return [f"{path} must not be less than {schema['minimum']}"]
    if kind == "array":
        return _items_errors(schema.get("items") or {}, value, path)
    return []


def _items_errors(items: dict[str, Any], values: list[Any], path: str) -> list[str]:
    if "anyOf" in items or "oneOf" in items:
        bad = any(not isinstance(v, dict) for v in values)
        return [f"each value in {path} must be an object"] if bad else []
    kind = items.get("type")
    if kind in ("string", "boolean", "number", "integer") and not all(_type_ok(kind, v) for v in values):
        return [f"each value in {path} {_TYPE_MESSAGES[kind]}"]
    if kind == "object" and items.get("properties"):
        return [e for i, v in enumerate(values) for e in object_errors(items, v, f"{path}.{i}.")]
    return []


# ---------------------------------------------------------------------------------------- answers


def bad_request(message: str, **extra: Any) -> Response:
    return json_response({"statusCode": 400, "message": message, **extra}, 400)


def unauthorized(message: str) -> Response:
    return json_response({"statusCode": 401, "message": message, "error": "Unauthorized"}, 401)


def unprocessable(messages: list[str]) -> Response:
    return json_response({"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}, 422)


FORBIDDEN = {"statusCode": 403, "message": "The token does not have access to this location."}


class Forbidden(Exception):
    """The token belongs to another location."""


class BadRequest(Exception):
    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.message, self.extra = message, extra


# ------------------------------------------------------------------------------------ the gate


@dataclass
class Ctx:
    """What a handler gets: the store, the caller's token, the checked body and the request."""

    store: GHLStore
    token: TokenInfo
    body: dict[str, Any]
    request: Request

    @property
    def path(self) -> dict[str, str]:
        return self.request.path_params

    @property
    def query(self) -> QueryParams:
        return self.request.query_params

    def own(self, location_id: str) -> str:
        """`location_id` when it is the token's location; Forbidden otherwise."""
        if location_id != self.token.location_id:
            raise Forbidden()
        return location_id

    def contact(self, contact_id: str) -> dict[str, Any]:
        """The contact, when it exists (NotFound) and lives in the token's location (Forbidden)."""
        self.own(self.store.contact_location_id(contact_id))
        return self.store.contact(contact_id)


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _authenticate(store: GHLStore, request: Request, scopes: tuple[str, ...]) -> TokenInfo | Response:
    token = bearer(request)
    if token is None:
        return unauthorized("Invalid JWT")
    info = store.token_info(token)
    if info is None:
        return unauthorized("Invalid token: access token is invalid")
    if not set(scopes) <= info.scopes:
        return unauthorized("The token is not authorized for this scope.")
    return info


async def _checked_body(request: Request, schema: dict[str, Any] | None) -> dict[str, Any] | Response:
    if schema is None:
        return {}
    body, error = await read_json(request)
    if error is not None:
        return error
    errors = object_errors(schema, {} if body is None else body)
    return unprocessable(errors) if errors else body or {}


Handler = Callable[[Ctx], Response]


def api(store: GHLStore, handler: Handler, scopes: tuple[str, ...], schema: dict[str, Any] | None) -> Callable:
    """An endpoint running the gate (module docstring) before `handler`."""

    async def endpoint(request: Request) -> Response:
        if request.headers.get("version") not in VERSIONS:
            return bad_request("Version header is missing or not supported: send Version: 2021-07-28 (or v3)")
        token = _authenticate(store, request, scopes)
        if isinstance(token, Response):
            return token
        body = await _checked_body(request, schema)
        if isinstance(body, Response):
            return body
        try:
            return handler(Ctx(store, token, body, request))
        except NotFound as exc:
            return bad_request(str(exc))
        except BadRequest as exc:
            return bad_request(exc.message, **exc.extra)
        except InvalidRequest as exc:
            return unprocessable(exc.messages)
        except Forbidden:
            return json_response(FORBIDDEN, 403)

    return endpoint


# ---------------------------------------------------------------------------------------- contacts


def created_view(contact: dict[str, Any]) -> dict[str, Any]:
    return {**contact_view(contact), "deleted": False}


def get_contact(ctx: Ctx) -> Response:
    return json_response({"contact": contact_view(ctx.contact(ctx.path["contactId"]))})


def update_contact(ctx: Ctx) -> Response:
    contact = ctx.contact(ctx.path["contactId"])
    ctx.store.update_contact(contact, ctx.body)
    return json_response({"succeded": True, "contact": contact_view(contact)})


def delete_contact(ctx: Ctx) -> Response:
    ctx.contact(ctx.path["contactId"])
    ctx.store.delete_contact(ctx.path["contactId"])
    return json_response({"succeded": True})


def create_contact(ctx: Ctx) -> Response:
    location_id = ctx.own(ctx.body["locationId"])
    loc = ctx.store.location(location_id)
    if not loc.allow_duplicates:
        found = ctx.store.find_duplicate(loc, ctx.body.get("email"), ctx.body.get("phone"))
        if found is not None:
            meta = {"contactId": found[0]["id"], "matchingField": found[1]}
            raise BadRequest("This location does not allow duplicated contacts.", meta=meta)
    contact = ctx.store.create_contact(location_id, ctx.body)
    return json_response({"contact": created_view(contact)}, 201)


def upsert_contact(ctx: Ctx) -> Response:
    contact, new = ctx.store.upsert(ctx.own(ctx.body["locationId"]), ctx.body)
    return json_response({"new": new, "contact": contact_view(contact), "traceId": ctx.store.trace_id()})


def custom_fields(ctx: Ctx) -> Response:
    """GET /locations/{locationId}/customFields: the location's definitions (`model` contact, opportunity or all)."""
    loc = ctx.store.location(ctx.own(ctx.path["locationId"]))
    model = ctx.request.query_params.get("model") or "all"
    fields = [d for d in loc.custom_fields if model == "all" or d.get("model", "contact") == model]
    return json_response({"customFields": fields})


def _int_param(query: QueryParams, name: str, default: int, maximum: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise InvalidRequest([f"{name} {_TYPE_MESSAGES['number']}"]) from None
    if value < 0:
        raise InvalidRequest([f"{name} must not be less than 0"])
    if maximum is not None and value > maximum:
        raise InvalidRequest([f"{name} must not be greater than {maximum}"])
    return value


def _required_location(ctx: Ctx) -> str:
    location_id = ctx.query.get("locationId")
    if not location_id:
        raise InvalidRequest(["locationId should not be empty", "locationId must be a string"])
    return ctx.own(location_id)


def _list_cursor(ctx: Ctx, location_id: str) -> tuple[int, str] | None:
    """The (dateAdded ms, id) after which GET /contacts/ continues, from startAfter/startAfterId."""
    start_id = ctx.query.get("startAfterId")
    known = ctx.store.location(location_id).contacts.get(start_id or "")
    if known is not None:
        return to_ms(known.get("dateAdded")) or 0, known["id"]
    if ctx.query.get("startAfter"):
        return _int_param(ctx.query, "startAfter", 0), start_id or "\U0010ffff"
    return None


def list_contacts(ctx: Ctx) -> Response:
    """GET /contacts/ (deprecated): oldest first, `startAfter` (epoch ms) + `startAfterId` cursor."""
    location_id = _required_location(ctx)
    limit = max(1, _int_param(ctx.query, "limit", 20, 100))
    rows, total = ctx.store.contacts_page(location_id, limit, ctx.query.get("query"), _list_cursor(ctx, location_id))
    return json_response({"contacts": [contact_view(c) for c in rows], "count": total, "meta": _list_meta(rows, total)})


def _list_meta(rows: list[dict[str, Any]], total: int) -> dict[str, Any]:
    last = rows[-1] if rows else None
    return {"total": total, "startAfterId": last["id"] if last else None,
            "startAfter": to_ms(last.get("dateAdded")) if last else None,
            "nextPageUrl": None, "currentPage": None, "nextPage": None, "prevPage": None}


def _search_query(body: dict[str, Any]) -> SearchQuery:
    sort = tuple(SortKey(s["field"], s.get("direction", "desc") == "desc") for s in body.get("sort") or [])
    sort = sort or (SortKey("dateAdded", True),)
    errors = filter_errors(body.get("filters") or [])
    if body.get("searchAfter") is not None:
        errors += cursor_errors(body["searchAfter"], sort)
    if errors:
        raise InvalidRequest(errors)
    return SearchQuery(
        location_id=body["locationId"], page_limit=int(body["pageLimit"]), page=int(body.get("page") or 1),
        search_after=body.get("searchAfter"), query=body.get("query"), filters=body.get("filters") or [],
        sort=sort,
    )


def search_contacts(ctx: Ctx) -> Response:
    query = _search_query(ctx.body)
    ctx.own(query.location_id)
    if query.search_after is None and query.page * query.page_limit > PAGE_WINDOW:
        raise BadRequest(
            f"page * pageLimit may not exceed {PAGE_WINDOW}: page-based paging reaches the first "
            f"{PAGE_WINDOW} records only; use searchAfter to read further"
        )
    rows, total = ctx.store.search_contacts(query)  # from the store's sorted indexes
    return json_response({"contacts": rows, "total": total, "traceId": ctx.store.trace_id()})


def find_duplicate(ctx: Ctx) -> Response:
    """GET (query) or POST (JSON body) /contacts/search/duplicate: email first, then phone."""
    params = ctx.body if ctx.request.method == "POST" else dict(ctx.query)
    if ctx.request.method == "GET" and not params.get("locationId"):
        raise InvalidRequest(["locationId should not be empty", "locationId must be a string"])
    loc = ctx.store.location(ctx.own(params["locationId"]))
    found = ctx.store.find_duplicate(loc, params.get("email"), params.get("number"))
    return json_response({"contact": contact_view(found[0]) if found else None})


def contacts_by_business(ctx: Ctx) -> Response:
    location_id = _required_location(ctx)
    limit, skip = _int_param(ctx.query, "limit", 25), _int_param(ctx.query, "skip", 0)
    query, business = ctx.query.get("query"), ctx.path["businessId"]
    rows = [
        c for c in ctx.store.location(location_id).contacts.values()
        if c.get("businessId") == business and (not query or matches_query(c, query))
    ]
    return json_response({"contacts": [contact_view(c) for c in rows[skip : skip + limit]], "count": len(rows)})


def appointments(ctx: Ctx) -> Response:
    contact = ctx.contact(ctx.path["contactId"])
    events = ctx.store.location(contact["locationId"]).extra.get("appointments") or []
    return json_response({"events": [e for e in events if e.get("contactId") == contact["id"]]})


# -------------------------------------------------------------------------------------------- tags


def add_tags(ctx: Ctx) -> Response:
    return json_response({"tags": ctx.store.add_tags(ctx.contact(ctx.path["contactId"]), ctx.body["tags"])}, 201)


def remove_tags(ctx: Ctx) -> Response:
    return json_response({"tags": ctx.store.remove_tags(ctx.contact(ctx.path["contactId"]), ctx.body["tags"])})


def _bulk_one(ctx: Ctx, kind: str, contact_id: str) -> dict[str, Any]:
    """Add or remove the body's tags on one contact; the per-contact result object."""
    if ctx.store.contact_location.get(contact_id) is None:
        return {"contactId": contact_id, "message": "contact not found", "type": "error"}
    if ctx.store.contact_location[contact_id] != ctx.body["locationId"]:
        return {"contactId": contact_id, "message": "contact does not belong to location", "type": "error"}
    contact = ctx.store.contact(contact_id)
    old = list(contact.get("tags") or [])
    if kind == "add":
        new = ctx.store.add_tags(contact, ctx.body["tags"])
    else:
        new = ctx.store.remove_tags(contact, None if ctx.body.get("removeAllTags") else ctx.body["tags"])
    return {"contactId": contact_id, "message": "Tags updated", "type": "success", "oldTags": old,
            "tagsAdded": [t for t in new if t not in old], "tagsRemoved": [t for t in old if t not in new]}


def bulk_tags(ctx: Ctx) -> Response:
    kind = ctx.path["type"]
    if kind not in ("add", "remove"):
        raise BadRequest("type must be one of the following values: add, remove")
    if ctx.body.get("removeAllTags") and kind != "remove":
        raise InvalidRequest(["removeAllTags can only be used with the remove type"])
    ctx.own(ctx.body["locationId"])
    results = [_bulk_one(ctx, kind, cid) for cid in ctx.body["contacts"]]
    errors = sum(1 for r in results if r["type"] == "error")
    return json_response(
        {"succeded": True, "errorCount": errors, "responses": [json.dumps(r) for r in results]}, 201
    )


# ---------------------------------------------------------------------------------- tasks and notes


def _clean(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if v is not None}


def _items_of(kind: str, one: str) -> dict[str, Handler]:
    """The list/get/create/update/delete handlers of tasks or notes under a contact."""
    id_param = "taskId" if kind == "tasks" else "id"

    def target(ctx: Ctx) -> tuple[str, str]:
        return ctx.contact(ctx.path["contactId"])["locationId"], ctx.path["contactId"]

    def list_items(ctx: Ctx) -> Response:
        loc, cid = target(ctx)
        return json_response({kind: [_clean(i) for i in ctx.store.items(loc, kind, cid)]})

    def get_item(ctx: Ctx) -> Response:
        loc, cid = target(ctx)
        return json_response({one: _clean(ctx.store.item(loc, kind, cid, ctx.path[id_param]))})

    def create_item(ctx: Ctx) -> Response:
        loc, cid = target(ctx)
        return json_response({one: _clean(ctx.store.create_item(loc, kind, cid, ctx.body))}, 201)

    def update_item(ctx: Ctx) -> Response:
        loc, cid = target(ctx)
        item = ctx.store.item(loc, kind, cid, ctx.path[id_param])
        return json_response({one: _clean(ctx.store.update_item(item, ctx.body))})

    def delete_item(ctx: Ctx) -> Response:
        loc, cid = target(ctx)
        ctx.store.item(loc, kind, cid, ctx.path[id_param])
        ctx.store.delete_item(loc, kind, ctx.path[id_param])
        return json_response({"succeded": True})

    return {"list": list_items, "get": get_item, "create": create_item, "update": update_item, "delete": delete_item}


def search_tasks(ctx: Ctx) -> Response:
    location_id = ctx.own(ctx.path["locationId"])
    return json_response({"tasks": [_clean(t) for t in ctx.store.search_tasks(location_id, ctx.body)]})


# ------------------------------------------------------------------------------------------- OAuth


# SDK 3.x sends Version: v3 and camelCase form fields, and reads camelCase or snake_case answers.
V3_FORM_ALIASES = {"clientId": "client_id", "clientSecret": "client_secret", "grantType": "grant_type",
                   "refreshToken": "refresh_token", "userType": "user_type", "redirectUri": "redirect_uri"}
V3_ANSWER_ALIASES = {"access_token": "accessToken", "refresh_token": "refreshToken", "expires_in": "expiresIn",
                     "token_type": "tokenType"}


async def _token_form(request: Request) -> dict[str, str]:
    """The form fields (camelCase names mapped to the spec's under Version: v3)."""
    pairs = urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    form = dict(pairs)
    if request.headers.get("version") == "v3":
        form = {V3_FORM_ALIASES.get(k, k): v for k, v in form.items()}
    return form


def _oauth_error(exc: OAuthError) -> Response:
    return json_response({"statusCode": exc.status, "message": exc.message, "error": exc.error}, exc.status)


async def oauth_token(store: GHLStore, request: Request) -> Response:
    """POST /oauth/token (form-encoded): authorization_code or refresh_token for a Location token."""
    form = await _token_form(request)
    errors = object_errors(OPERATIONS[("POST", "/oauth/token")].body or {}, form)
    if errors:
        return unprocessable(errors)
    grant_type = form["grant_type"]
    secret_field = {"authorization_code": "code", "refresh_token": "refresh_token"}.get(grant_type)
    if secret_field is None:
        return _oauth_error(OAuthError(400, f"Unsupported grant_type {grant_type}", "unsupported_grant_type"))
    if not form.get(secret_field):
        return unprocessable([f"{secret_field} should not be empty"])
    user_type = form.get("user_type", "Location")
    if user_type not in ("Location", "Company"):
        return bad_request("user_type must be Location or Company")
    try:
        grant = store.exchange(form["client_id"], form["client_secret"], grant_type, form[secret_field], user_type)
    except OAuthError as exc:
        return _oauth_error(exc)
    if request.headers.get("version") == "v3":
        grant |= {camel: grant[snake] for snake, camel in V3_ANSWER_ALIASES.items()}
    return json_response(grant, headers={"Cache-Control": "no-store"})


async def mint_code(store: GHLStore, request: Request) -> Response:
    """Sandbox only: an authorization code for a client, location and scopes (loopback clients)."""
    if not is_loopback(request.client.host if request.client else None):
        return json_response({"statusCode": 403, "message": "sandbox routes answer loopback clients only"}, 403)
    body, error = await read_json(request)
    if error is not None:
        return error
    errors = object_errors(CODE_BODY, body or {})
    if errors:
        return unprocessable(errors)
    company_id = body.get("companyId") if body.get("userType") == "Company" else None
    owner = "companyId" if body.get("userType") == "Company" else "locationId"
    if not body.get(owner):
        return unprocessable([f"{owner} should not be empty"])
    try:
        code = store.mint_code(body["client_id"], body.get("locationId") or "", body["scopes"], company_id)
    except OAuthError as exc:
        return _oauth_error(exc)
    return json_response({"code": code, "expires_in": 600}, 201)


async def set_install(store: GHLStore, request: Request) -> Response:
    """Sandbox only: install the app on a company's location, or remove it (loopback clients)."""
    if not is_loopback(request.client.host if request.client else None):
        return json_response({"statusCode": 403, "message": "sandbox routes answer loopback clients only"}, 403)
    body, error = await read_json(request)
    if error is not None:
        return error
    errors = object_errors(INSTALL_BODY, body or {})
    if errors:
        return unprocessable(errors)
    store.set_installed(body["companyId"], body["locationId"], body["installed"])
    return json_response({"companyId": body["companyId"], "locations": list(store.installs.get(body["companyId"], {}))})


def _company_gate(store: GHLStore, request: Request, method: str, path: str) -> TokenInfo | Response:
    """The Version header and a Company token with the operation's scope."""
    if request.headers.get("version") not in VERSIONS:
        return bad_request("Version header is missing or not supported: send Version: 2021-07-28 (or v3)")
    return _authenticate(store, request, OPERATIONS[(method, path)].scopes)


async def installed_locations(store: GHLStore, request: Request) -> Response:
    """GET /oauth/installedLocations: the company's locations where the app is installed."""
    token = _company_gate(store, request, "GET", "/oauth/installedLocations")
    if isinstance(token, Response):
        return token
    query = request.query_params
    missing = [name for name in ("companyId", "appId") if not query.get(name)]
    if missing:
        return unprocessable([f"{name} should not be empty" for name in missing])
    if token.company_id != query["companyId"] or query["appId"] != (token.client_id or "").split("-")[0]:
        return json_response({"statusCode": 403, "message": "The token does not have access to this company."}, 403)
    everything = store.installed_locations(query["companyId"])
    skip, limit = int(query.get("skip") or 0), int(query.get("limit") or 20)
    return json_response({"locations": everything[skip:skip + limit], "count": len(everything),
                          "installToFutureLocations": False})


async def location_token(store: GHLStore, request: Request) -> Response:
    """POST /oauth/locationToken (form `companyId`, `locationId`): a location token from a Company token."""
    token = _company_gate(store, request, "POST", "/oauth/locationToken")
    if isinstance(token, Response):
        return token
    form = await _token_form(request)
    errors = object_errors(OPERATIONS[("POST", "/oauth/locationToken")].body or {}, form)
    if errors:
        return unprocessable(errors)
    try:
        answer = store.location_token(token, form["companyId"], form["locationId"])
    except OAuthError as exc:
        return _oauth_error(exc)
    return json_response(answer, headers={"Cache-Control": "no-store"})


# -------------------------------------------------------------------------------------- the routes


async def search_switch(store: GHLStore, request: Request) -> Response:
    """Sandbox only: the search lag and the paging faults (GET: as they are; POST: change them)."""
    if not is_loopback(request.client.host if request.client else None):
        return json_response({"statusCode": 403, "message": "sandbox routes answer loopback clients only"}, 403)
    if request.method == "GET":
        return json_response(store.set_search())
    body, error = await read_json(request)
    if error is not None:
        return error
    lag, paging = (body or {}).get("lag_s"), (body or {}).get("paging")
    if lag is not None and (not isinstance(lag, int | float) or isinstance(lag, bool) or lag < 0):
        return unprocessable(["lag_s must be a number of seconds >= 0"])
    if paging is not None and not isinstance(paging, dict):
        return unprocessable(["paging must be an object: locationId -> mode"])
    try:
        return json_response(store.set_search(lag_s=lag, paging=paging))
    except InvalidRequest as exc:
        return unprocessable(exc.messages)


def routes(store: GHLStore) -> list[Route]:
    tasks, notes = _items_of("tasks", "task"), _items_of("notes", "note")
    table: list[tuple[str, str, str, Handler, tuple[str, ...] | None, dict[str, Any] | None]] = [
        # (method, path served, spec path, handler, scopes override, body schema override)
        ("POST", "/contacts/search", "/contacts/search", search_contacts, None, None),
        ("GET", "/contacts/search/duplicate", "/contacts/search/duplicate", find_duplicate, None, None),
        ("POST", "/contacts/search/duplicate", "/contacts/search/duplicate", find_duplicate, None,
         query_schema("GET", "/contacts/search/duplicate")),
        ("POST", "/contacts/upsert", "/contacts/upsert", upsert_contact, None, None),
        ("POST", "/contacts/bulk/tags/update/{type}", "/contacts/bulk/tags/update/{type}", bulk_tags,
         (WRITE_SCOPE,), None),
        ("GET", "/contacts/business/{businessId}", "/contacts/business/{businessId}", contacts_by_business,
         None, None),
        ("GET", "/contacts/", "/contacts/", list_contacts, None, None),
        ("POST", "/contacts/", "/contacts/", create_contact, None, None),
        ("GET", "/contacts/{contactId}", "/contacts/{contactId}", get_contact, None, None),
        ("PUT", "/contacts/{contactId}", "/contacts/{contactId}", update_contact, None, None),
        ("DELETE", "/contacts/{contactId}", "/contacts/{contactId}", delete_contact, None, None),
        ("GET", "/contacts/{contactId}/appointments", "/contacts/{contactId}/appointments", appointments, None, None),
        ("POST", "/contacts/{contactId}/tags", "/contacts/{contactId}/tags", add_tags, None, None),
        ("DELETE", "/contacts/{contactId}/tags", "/contacts/{contactId}/tags", remove_tags, None, None),
        ("GET", "/contacts/{contactId}/tasks", "/contacts/{contactId}/tasks", tasks["list"], None, None),
        ("POST", "/contacts/{contactId}/tasks", "/contacts/{contactId}/tasks", tasks["create"], None, None),
        ("GET", "/contacts/{contactId}/tasks/{taskId}", "/contacts/{contactId}/tasks/{taskId}", tasks["get"],
         None, None),
        ("PUT", "/contacts/{contactId}/tasks/{taskId}", "/contacts/{contactId}/tasks/{taskId}", tasks["update"],
         None, None),
        ("PUT", "/contacts/{contactId}/tasks/{taskId}/completed", "/contacts/{contactId}/tasks/{taskId}/completed",
         tasks["update"], None, None),
        ("DELETE", "/contacts/{contactId}/tasks/{taskId}", "/contacts/{contactId}/tasks/{taskId}",
         tasks["delete"], None, None),
        ("GET", "/contacts/{contactId}/notes", "/contacts/{contactId}/notes", notes["list"], None, None),
        ("POST", "/contacts/{contactId}/notes", "/contacts/{contactId}/notes", notes["create"], None, None),
        ("GET", "/contacts/{contactId}/notes/{id}", "/contacts/{contactId}/notes/{id}", notes["get"], None, None),
        ("PUT", "/contacts/{contactId}/notes/{id}", "/contacts/{contactId}/notes/{id}", notes["update"], None, None),
        ("DELETE", "/contacts/{contactId}/notes/{id}", "/contacts/{contactId}/notes/{id}", notes["delete"],
         None, None),
        ("POST", "/locations/{locationId}/tasks/search", "/locations/{locationId}/tasks/search", search_tasks,
         None, None),
        ("GET", "/locations/{locationId}/customFields", "/locations/{locationId}/customFields", custom_fields,
         None, None),
    ]
    out = []
    for method, path, spec_path, handler, scopes, schema in table:
        spec_method = "GET" if path == "/contacts/search/duplicate" else method
        op_scopes = scopes or OPERATIONS[(spec_method, spec_path)].scopes
        body = schema if schema is not None else body_schema(method, spec_path)
        out.append(Route(path, api(store, handler, op_scopes, body), methods=[method]))
    out.append(Route("/oauth/token", functools.partial(oauth_token, store), methods=["POST"]))
    out.append(Route("/__sandbox/oauth/code", functools.partial(mint_code, store), methods=["POST"]))
    out.append(Route("/__sandbox/search", functools.partial(search_switch, store), methods=["GET", "POST"]))
    out.append(Route("/__sandbox/oauth/install", functools.partial(set_install, store), methods=["POST"]))
    out.append(Route("/oauth/installedLocations", functools.partial(installed_locations, store), methods=["GET"]))
    out.append(Route("/oauth/locationToken", functools.partial(location_token, store), methods=["POST"]))
    return out


# ---------------------------------------------------------------------------- middleware hooks


def rate_key_for(store: GHLStore) -> Callable[[Request], str | None]:
    """Per app per location: a valid token's `{locationId}:{sha256(token)[:16]}`, else no limit."""

    def rate_key(request: Request) -> str | None:
        token = bearer(request)
        info = store.token_info(token) if token else None
        if info is None or token is None:
            return None
        return f"{info.location_id}:{hashlib.sha256(token.encode()).hexdigest()[:16]}"

    return rate_key


def rate_headers(decision: Decision) -> dict[str, str]:
    """The five documented rate-limit headers (docs/oauth/Authorization.md)."""
    return {
        "X-RateLimit-Limit-Daily": str(decision.daily_limit),
        "X-RateLimit-Daily-Remaining": str(decision.daily_remaining),
        "X-RateLimit-Interval-Milliseconds": str(decision.window_ms),
        "X-RateLimit-Max": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
    }


def is_write(method: str, path: str) -> bool:
    """POST/PUT/DELETE that change data; the search POSTs read."""
    if method not in ("POST", "PUT", "PATCH", "DELETE") or path.startswith("/__sandbox/"):
        return False
    return path.rstrip("/") not in READ_POSTS and not path.endswith("/tasks/search")


def create_app(
    fixture_part: dict[str, Any],
    *,
    rate_scale: float = 1.0,
    faults: str | None = None,
    seed: int = 0,
    clock: Clock = time.time,
    webhook_url: str | None = None,
    webhook_signature: str = "ed25519",
    search_lag_s: float = DEFAULT_SEARCH_LAG_S,
    owned: bool = False,
) -> Starlette:
    """The served GHL sandbox for the fixture's `ghl` part.

    Args:
        fixture_part: the `ghl` part of a fixture (FORMAT.md), already checked by `contact_recon.sandbox.fixture`.
        rate_scale: multiplies the burst budget (100 requests per 10 s per token and location; at least 1).
        faults: a `FaultSpec` string such as `"5xx=0.02,latency=20ms"`, or None.
        seed: makes generated ids, trace ids and faults reproducible.
        clock: epoch seconds; drives dates, token expiry and rate limits.
        webhook_url: when set, contact, tag, note and task changes POST signed webhooks there
            (contact_recon/sandbox/ghl_webhooks.py; the emitter is `app.state.webhooks`).
        webhook_signature: "ed25519" (`X-GHL-Signature`, as GHL signs today) or "rsa" (the legacy
            `x-wh-signature`).
        search_lag_s: seconds before a write shows in `POST /contacts/search` (0: at once).
        owned: the caller lets go of `fixture_part`: the store serves its objects, not a copy (`recon sandbox serve`).
    """
    store = GHLStore(fixture_part, seed=seed, clock=clock, search_lag_s=search_lag_s, owned=owned)
    webhooks = None
    if webhook_url:
        from contact_recon.sandbox.ghl_webhooks import attach_webhooks

        webhooks = attach_webhooks(store, webhook_url, clock=clock, signature=webhook_signature)
    limiter = SlidingWindowLimiter(
        max(1, round(BURST_LIMIT * rate_scale)), BURST_WINDOW_S, daily_limit=DAILY_LIMIT, clock=clock
    )
    app = wrap_sandbox(
        routes(store), name="ghl", store=store, rate_key=rate_key_for(store), rate_headers=rate_headers,
        limiter=limiter, too_many_body=TOO_MANY, faults=faults, seed=seed, is_write=is_write, clock=clock,
    )
    app.state.webhooks = webhooks
    return app
