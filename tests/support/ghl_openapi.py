"""Contract checks of GHL HTTP exchanges against GHL's published OpenAPI files.

Every request a test sends through `contract_client` and every answer it gets back is checked here:

1. The spec files (`apps/contacts.json`, `apps/locations.json`, `apps/oauth.json` under the shared specs
   directory) are loaded with openapi-core from their file path, so the base URI is the file's URI and
   `$ref: ../common/common-schemas.json#...` resolves. openapi-core's own check of the spec document is off:
   the upstream files fail it (their `http` security schemes also carry `name`/`in`, and
   `/contacts/bulk/tags/update/{type}` never declares `type`); see SPEC_DOCUMENT_DEFECTS.
2. The operation is found by method and path only. The spec's server is https://services.leadconnectorhq.com,
   so the request is presented to openapi-core as if sent there, whatever host the sandbox listens on.
3. The request is validated (path, query and header parameters, the `Version` enum, the bearer scheme, the
   body schema). On top of openapi-core, top-level body properties the schema does not list are errors:
   the API answers 422 to them (NOTES.md). Where the spec gives a body no properties, NOTES.md supplies the
   shape (NOTES_REQUEST_SHAPES). A test that sends a bad request on purpose marks it (`expect_invalid`);
   such a request must then fail these checks, so the test provably sends what it claims to.
4. The response is checked by how much the spec says about its status:
   - "schema": the status has a JSON schema: openapi-core validates content type and body.
   - "erratum": the spec's schema is broken beyond use; a corrected schema from SPEC_ERRATA is used instead.
   - "notes-shape": the status is documented without a body schema, and NOTES.md states the shape.
   - "no-schema": documented without a body schema and nothing else known: the body must be a JSON object.
   - "undocumented-status": the status is not in the spec at all (429, 403, 5xx...): openapi-core would reject
     it, so it is checked as an error envelope instead.
   Every 4xx/5xx answer must also be the API's error envelope: a JSON object whose `statusCode` equals the
   HTTP status and that carries a `message`. In every JSON answer, `dateAdded`/`dateUpdated` must be ISO
   8601 with milliseconds and `Z`, and `traceId` a UUID (NOTES_FORMATS).
   Each checked exchange is recorded as (method, path template, status, check) in a `Coverage`.

Failures raise `ContractError` (an AssertionError) naming the operation, the status and the failing field.
Messages never include request headers, so tokens do not leak into test output.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from jsonschema_path import SchemaPath
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.templating.responses.finders import ResponseFinder
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_SERVER = "https://services.leadconnectorhq.com"
SPEC_FILES = ("apps/contacts.json", "apps/locations.json", "apps/oauth.json")
API_VERSION = "2021-07-28"
EXPECT_INVALID = "contract_expect_invalid"  # key in httpx request extensions

SPEC_DOCUMENT_DEFECTS = (
    "components.securitySchemes.*: type http with extra name/in (fails openapi-spec-validator)",
    "paths./contacts/bulk/tags/update/{type}.post: path parameter `type` is not declared",
    "paths./locations/{locationId}/timezones.get: path parameter `locationId` is not declared",
)

# NOTES.md: `POST /contacts/search` body (the spec's SearchBodyV2DTO has no properties).
_SEARCH_BODY = {
    "type": "object",
    "required": ["locationId", "pageLimit"],
    "properties": {
        "locationId": {"type": "string"},
        "page": {"type": "integer", "minimum": 1},
        "pageLimit": {"type": "integer", "minimum": 1, "maximum": 500},
        "searchAfter": {"type": "array"},
        "query": {"type": "string"},
        "filters": {"type": "array"},
        "sort": {"type": "array"},
    },
    "additionalProperties": False,
}

# NOTES.md: search answers `{contacts, total, traceId}`; each contact carries its `searchAfter`.
_SEARCH_RESPONSE = {
    "type": "object",
    "required": ["contacts", "total", "traceId"],
    "properties": {
        "contacts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "locationId", "searchAfter"],
                "properties": {
                    "id": {"type": "string"},
                    "locationId": {"type": "string"},
                    "searchAfter": {"type": "array"},
                },
            },
        },
        "total": {"type": "integer", "minimum": 0},
        "traceId": {"type": "string"},
    },
}

NOTES_REQUEST_SHAPES: dict[tuple[str, str], dict[str, Any]] = {("post", "/contacts/search"): _SEARCH_BODY}
NOTES_RESPONSE_SHAPES: dict[tuple[str, str, str], dict[str, Any]] = {
    ("post", "/contacts/search", "200"): _SEARCH_RESPONSE,
}

# The spec declares the task-search answer as `{"tasks": [[...], ...]}` (an array of arrays): a generator
# slip (the item DTO was lost). A list of task objects is what the operation returns.
SPEC_ERRATA: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {
    ("post", "/locations/{locationId}/tasks/search", "200"): (
        "LocationTaskListSuccessfulResponseDto.tasks.items is `type: array`; tasks are objects",
        {
            "type": "object",
            "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "items": {"type": "object"}}},
        },
    ),
}


# NOTES.md: dates are ISO 8601 with milliseconds and `Z`; `traceId` is a UUID.
NOTES_FORMATS: dict[str, re.Pattern[str]] = {
    "dateAdded": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"),
    "dateUpdated": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"),
    "traceId": re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE),
}


class ContractError(AssertionError):
    """An exchange that does not follow the spec (or a test request that does not do what it claims)."""


@dataclass(frozen=True)
class Operation:
    """One spec operation: which file, which method and path template, and its openapi-core handles."""

    spec_file: str
    method: str
    template: str
    app: OpenAPI = field(compare=False)
    node: SchemaPath = field(compare=False)

    def label(self) -> str:
        operation_id = (self.node / "operationId").read_str(default="?")
        return f"{self.method.upper()} {self.template} ({operation_id}, {self.spec_file})"


@dataclass(frozen=True)
class Exercised:
    method: str
    template: str
    status: int
    check: str


@dataclass
class Coverage:
    """What a session exercised: every checked exchange, thread-safe (the SDK may run concurrently)."""

    records: list[Exercised] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, record: Exercised) -> None:
        with self._lock:
            self.records.append(record)

    def operations(self) -> set[tuple[str, str]]:
        return {(r.method.upper(), r.template) for r in self.records}

    def statuses(self) -> set[tuple[str, str, int]]:
        return {(r.method.upper(), r.template, r.status) for r in self.records}


def specs_dir() -> Path:
    """The shared specs directory: env RECON_SPECS_DIR, else `<repo>/../shared/specs`."""
    env = os.environ.get("RECON_SPECS_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "specs"
    if not (path / "ghl" / SPEC_FILES[0]).is_file():
        raise FileNotFoundError(f"GHL specs not found under {path} (set RECON_SPECS_DIR)")
    return path


@lru_cache(maxsize=1)
def load_specs() -> dict[str, OpenAPI]:
    """Each GHL spec file as an openapi-core app whose base URI is the file (so relative $refs resolve)."""
    config = Config(spec_validator_cls=None)  # the upstream documents fail validation: SPEC_DOCUMENT_DEFECTS
    root = specs_dir() / "ghl"
    return {name: OpenAPI.from_file_path(str(root / name), config=config) for name in SPEC_FILES}


def find_operation(method: str, path: str) -> Operation:
    """The spec operation serving `method path`, searched in every spec file, host ignored."""
    for spec_file, app in load_specs().items():
        try:
            found = APICallPathFinder(app.spec).find(method.lower(), SPEC_SERVER + path)
        except (PathNotFound, OperationNotFound):
            continue
        template = found.path.parts[-1]
        return Operation(spec_file, method.lower(), template, app, found.operation)
    raise ContractError(f"{method.upper()} {path}: no operation in the GHL spec files {SPEC_FILES}")


class _SpecRequest:
    """An httpx request seen by openapi-core as a request to the spec's server."""

    def __init__(self, request: httpx.Request) -> None:
        self.host_url = SPEC_SERVER
        self.path = request.url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "").lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(request.url.params.multi_items())),
            header=Headers(list(request.headers.multi_items())),
            cookie=ImmutableMultiDict(),
        )


class _SpecResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.data = response.content
        self.headers = Headers(list(response.headers.multi_items()))
        self.content_type = response.headers.get("content-type", "").lower()


def _describe(exc: BaseException) -> list[str]:
    """Readable lines for an openapi-core error: what failed, then each failing field and why."""
    lines = [f"{type(exc).__name__}: {_first_line(exc)}"]
    cause: BaseException | None = exc
    while cause is not None:
        schema_errors = getattr(cause, "schema_errors", None)
        if schema_errors:
            return lines + ["  " + _schema_error_line(e) for e in schema_errors]
        cause = cause.__cause__
    for inner in getattr(exc, "context", None) or []:
        if isinstance(inner, BaseException):
            lines += ["  " + line for line in _describe(inner)]
    return lines


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    if "not valid for schema" in text or not text:  # openapi-core repeats the whole value: unreadable
        return type(exc.__cause__).__name__ if exc.__cause__ else type(exc).__name__
    return text.splitlines()[0][:300]


def _schema_error_line(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "<root>"
    line = f"field {where}: {error.message}"
    for sub in error.context or []:
        line += f"\n      | {_schema_error_line(sub)}"
    return line


def _json_body(raw: bytes | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _NOT_JSON


_NOT_JSON = object()


def _schema_properties(schema: SchemaPath) -> set[str]:
    if "properties" not in schema:
        return set()
    return set((schema / "properties").str_keys())


def _request_body_schema(op: Operation, content_type: str) -> SchemaPath | None:
    if "requestBody" not in op.node:
        return None
    content = op.node / "requestBody" / "content"
    media = content_type.split(";")[0].strip()
    if media not in content or "schema" not in content / media:
        return None
    return content / media / "schema"


def _extra_request_errors(op: Operation, request: httpx.Request) -> list[str]:
    """Errors openapi-core does not see: unknown top-level properties, NOTES.md body shapes."""
    body = _json_body(request.content) if "json" in request.headers.get("content-type", "") else None
    if not isinstance(body, dict):
        return []
    notes_shape = NOTES_REQUEST_SHAPES.get((op.method, op.template))
    if notes_shape is not None:
        validator = jsonschema.Draft202012Validator(notes_shape)
        return [f"(NOTES.md shape) {_schema_error_line(e)}" for e in validator.iter_errors(body)]
    schema = _request_body_schema(op, request.headers.get("content-type", ""))
    known = _schema_properties(schema) if schema is not None else set()
    return [
        f"field {key}: property {key} should not exist (API answers 422)"
        for key in body
        if known and key not in known
    ]


def validate_request(request: httpx.Request, *, expect_invalid: bool = False) -> Operation:
    """Check a request we send; with `expect_invalid`, insist that it is in fact outside the spec."""
    op = find_operation(request.method, request.url.path)
    errors = [
        line for exc in op.app.request_validator.iter_errors(_SpecRequest(request)) for line in _describe(exc)
    ]
    errors += _extra_request_errors(op, request)
    if expect_invalid and not errors:
        raise ContractError(f"request {op.label()} is marked as invalid on purpose, but the spec accepts it")
    if errors and not expect_invalid:
        raise ContractError(f"request {op.label()} breaks the spec:\n  " + "\n  ".join(errors))
    return op


def _error_envelope_errors(response: httpx.Response) -> list[str]:
    body = _json_body(response.content)
    if body is _NOT_JSON or not isinstance(body, dict):
        return [f"error body is not a JSON object: {response.text[:200]!r}"]
    errors = []
    if body.get("statusCode") != response.status_code:
        errors.append(f"field statusCode: expected {response.status_code}, got {body.get('statusCode')!r}")
    if "message" not in body:
        errors.append("field message: missing")
    return errors


def _content_type_errors(response: httpx.Response) -> list[str]:
    ctype = response.headers.get("content-type", "")
    return (
        [] if ctype.split(";")[0].strip() == "application/json" else [f"content-type is {ctype!r}, not JSON"]
    )


def _json_schema_errors(response: httpx.Response, schema: dict[str, Any], tag: str) -> list[str]:
    body = _json_body(response.content)
    if body is _NOT_JSON:
        return [f"body is not JSON: {response.text[:200]!r}"]
    validator = jsonschema.Draft202012Validator(schema)
    return [f"({tag}) {_schema_error_line(e)}" for e in validator.iter_errors(body)]


def _format_errors(body: Any, where: str = "") -> list[str]:
    """NOTES_FORMATS violations anywhere in a JSON body (string values of the listed keys)."""
    if isinstance(body, list):
        return [e for i, item in enumerate(body) for e in _format_errors(item, f"{where}{i}.")]
    if not isinstance(body, dict):
        return []
    errors = []
    for key, value in body.items():
        pattern = NOTES_FORMATS.get(key)
        if pattern is not None and isinstance(value, str) and not pattern.match(value):
            errors.append(f"(NOTES.md format) field {where}{key}: {value!r} does not match {pattern.pattern}")
        errors += _format_errors(value, f"{where}{key}.")
    return errors


def _documented_response(op: Operation, status: int) -> SchemaPath | None:
    try:
        return ResponseFinder(op.node / "responses").find(str(status))
    except ResponseNotFound:
        return None


def _check_response(op: Operation, request: httpx.Request, response: httpx.Response) -> tuple[str, list[str]]:
    """(check kind, errors) for one response, per the rules in the module docstring."""
    key = (op.method, op.template, str(response.status_code))
    documented = _documented_response(op, response.status_code)
    if documented is None and response.status_code < 400:
        listed = list((op.node / "responses").str_keys())
        return "undocumented-status", [
            f"success status {response.status_code} is not documented (spec: {listed})"
        ]
    errors = _error_envelope_errors(response) if response.status_code >= 400 else []
    if documented is None:
        return "undocumented-status", errors
    errors += _content_type_errors(response)
    if key in SPEC_ERRATA:
        return "erratum", errors + _json_schema_errors(response, SPEC_ERRATA[key][1], "erratum")
    if "content" in documented:
        found = op.app.response_validator.iter_errors(_SpecRequest(request), _SpecResponse(response))
        return "schema", errors + [line for exc in found for line in _describe(exc)]
    if key in NOTES_RESPONSE_SHAPES:
        return "notes-shape", errors + _json_schema_errors(response, NOTES_RESPONSE_SHAPES[key], "NOTES.md")
    if not isinstance(_json_body(response.content), dict):
        errors.append(f"body is not a JSON object: {response.text[:200]!r}")
    return "no-schema", errors


def validate_exchange(
    request: httpx.Request,
    response: httpx.Response,
    *,
    coverage: Coverage | None = None,
    expect_invalid: bool = False,
    check_request: bool = True,
) -> Exercised:
    """Validate a request and its (already read) response; record and return what was exercised.

    `check_request=False` is for requests built by code outside our control (the official SDK sends
    `Version: v3`, which the spec's enum does not list): only the response is checked then.
    """
    if check_request:
        op = validate_request(request, expect_invalid=expect_invalid)
    else:
        op = find_operation(request.method, request.url.path)
    check, errors = _check_response(op, request, response)
    body = _json_body(response.content)
    errors += _format_errors(body) if body is not _NOT_JSON else []
    if errors:
        detail = "\n  ".join(errors)
        raise ContractError(f"response {response.status_code} of {op.label()} breaks the spec:\n  {detail}")
    record = Exercised(op.method.upper(), op.template, response.status_code, check)
    if coverage is not None:
        coverage.add(record)
    return record


def contract_hooks(coverage: Coverage) -> dict[str, list[Callable[..., None]]]:
    """httpx event hooks validating every request as sent and every response as received."""

    def on_request(request: httpx.Request) -> None:
        validate_request(request, expect_invalid=bool(request.extensions.get(EXPECT_INVALID)))

    def on_response(response: httpx.Response) -> None:
        response.read()
        request = response.request
        expect_invalid = bool(request.extensions.get(EXPECT_INVALID))
        validate_exchange(request, response, coverage=coverage, expect_invalid=expect_invalid)

    return {"request": [on_request], "response": [on_response]}


def contract_client(
    base_url: str, token: str | None, *, coverage: Coverage | None = None, version: str = API_VERSION
) -> httpx.Client:
    """An httpx client for the GHL API (or the sandbox) that validates and records every exchange.

    Pass `extensions={EXPECT_INVALID: True}` on a request that breaks the spec on purpose.
    The coverage is `client.coverage` (a new one unless given).
    """
    headers = {"Version": version, "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    cov = coverage if coverage is not None else Coverage()
    client = httpx.Client(base_url=base_url, headers=headers, timeout=10.0, event_hooks=contract_hooks(cov))
    client.coverage = cov  # type: ignore[attr-defined]
    return client
