"""The TinyEmail contract in code: every assumption in one place, and the answer shapes as JSON Schemas.

TinyEmail publishes no OpenAPI file; ../shared/specs/tinyemail/CONTRACT.md collects what is known and
marks what is **Assumed**. This module is the single place where those assumptions, and the choices the
sandbox makes where the contract is silent, live in code (`ASSUMPTIONS`), so that the sandbox server and
the TinyEmail client change together when a real account shows otherwise. The JSON Schemas below are
the machine-checkable answer shapes of CONTRACT.md; they are plain dicts (no jsonschema import here), to
be validated with any Draft 2020-12 validator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BASE_PATH = "/v1"  # CONTRACT: "Base URL `https://api.tinyemail.com/v1`; version in the path."
API_KEY_HEADER = "X-API-KEY"  # CONTRACT: "Auth header `X-API-KEY: <key>`, no prefix"
STATUSES = ("Subscribed", "Unsubscribed", "Bounced", "Inactive", "Spam")  # CONTRACT: customer fields
STRING_FIELDS = ("firstName", "lastName", "phone", "company", "address1", "address2", "city", "province",
                 "country", "postalCode", "birthday", "source", "currency")
READ_ONLY_FIELDS = ("lastPurchaseOrder", "lastPurchasePrice", "latestOrderId", "lastPurchaseDate",
                    "unsubscribedAt")
WRITABLE_FIELDS = ("email", *STRING_FIELDS, "tags", "status")


@dataclass(frozen=True)
class Assumptions:
    """Each field is one **Assumed** line of CONTRACT.md (quoted) or one sandbox choice where it is silent.

    The sandbox honours every field, so changing a value here changes the served behaviour.
    """

    # --- Assumed in CONTRACT.md -----------------------------------------------------------------
    # "**Assumed:** a bearer token is accepted wherever the key is." Sandbox: `Authorization: Bearer <t>`
    # passes when <t> equals one of the fixture's apiKeys (no OAuth server in the sandbox).
    bearer_accepted: bool = True
    # "`GET /account/customer/{email}` ... unknown email: **Assumed** 404 `{"message": ...}`"
    unknown_customer_status: int = 404
    # "**Assumed:** fields omitted from a member are left unchanged" (False: an update replaces the
    # whole customer, omitted fields are cleared).
    omitted_fields_unchanged: bool = True
    # "`tags` given replaces the whole tag array" (False: given tags are added to the existing ones).
    tags_replace: bool = True
    # "at most 500 members a call (400 beyond)"
    max_members_per_call: int = 500
    # "**Assumed:** size at most 100, and `last` is present as on the campaign listing"; pages 1-indexed.
    max_page_size: int = 100
    # PostHog pages with size 100; a missing `size` means this.
    default_page_size: int = 100
    # "**Assumed:** 60 requests a minute per key ... above it 429 with `{"message": "Too many requests"}`
    # and a `Retry-After` header in seconds."
    requests_per_minute: int = 60
    too_many_requests_message: str = "Too many requests"
    # "401 "API key is missing or invalid""
    unauthorized_message: str = "API key is missing or invalid"

    # --- Sandbox choices where CONTRACT.md is silent ----------------------------------------------
    # "A customer has no id. It is identified by its email address." Matching: the (URL-decoded) email is
    # trimmed and lower-cased, then matched exactly against stored emails normalised the same way.
    # Stored emails are kept as given (fixture) or as sent (a created customer).
    email_match_trimmed: bool = True
    email_match_case_insensitive: bool = True
    # A member field that is neither a customer field of the contract nor read-only -> 400 naming the
    # member's index and the field (catches client typos such as `firstname`).
    reject_unknown_fields: bool = True
    # Read-only fields (purchase fields, `unsubscribedAt`) sent in a member are ignored, so a customer
    # as read by GET can be sent back by the documented read-modify-write (False: 400).
    ignore_read_only_fields: bool = True
    # A string field sent as `null` is removed from the customer (the only way to clear a field).
    null_clears_field: bool = True
    # A customer created without `status` gets this one; without `tags` it gets [].
    default_status: str = "Subscribed"
    # Setting `status: "Unsubscribed"` on a customer already unsubscribed keeps its `unsubscribedAt`;
    # any other status removes `unsubscribedAt` ("only when unsubscribed").
    keep_unsubscribed_at_on_repeat: bool = True
    # The 500-member cap of PUT /account/customer also applies to `members` of POST /audiences and to
    # `assignMembers` / `unAssignMembers` of PUT /audiences/{id}.
    member_cap_on_audiences: bool = True
    # When both `X-API-KEY` and `Authorization: Bearer` are sent, the key alone decides.
    api_key_header_wins: bool = True
    # Sandbox-only `X-RateLimit-Limit` / `X-RateLimit-Remaining` headers on every answer. Off: TinyEmail
    # publishes none, so a client must not come to rely on them.
    sandbox_rate_headers: bool = False

    # --- Fixed sandbox choices (not switches; listed here so that all choices are in one place) ------
    # - Routing comes before auth: an unknown path -> 404 `{"message": "Not Found"}`, a known path with
    #   another method -> 405 `{"message": "Method Not Allowed"}` and an `Allow` header.
    # - Every error body is `{"message": ...}` (CONTRACT: "400 `{"message": "..."}`"); a bad body or
    #   member says what is wrong and where (`updateMembers[3].status must be one of ...`).
    # - A batch is checked whole before anything is written: a 400 changes nothing.
    # - A "valid-looking" email is a string that, trimmed, is `local@domain` without spaces.
    # - Bodies must be JSON objects; unknown top-level keys are rejected like unknown member fields.
    # - `numberOfUpdatedMembers` counts every existing customer sent, changed or not; the same email
    #   twice in one batch counts as one created and then one updated.
    # - `page` defaults to 1; a non-integer `page`/`size`, `page` < 1 or `size` outside 1..max -> 400;
    #   a page past the end -> 200 with empty `content` and `last: true`. Members come in list order
    #   (fixture order, then order of assignment); a list member without a customer shows as
    #   `{"email": ...}`. An unknown list id -> 404.
    # - POST /audiences: `name` is required and non-empty; names need not be unique; the id is a UUID4
    #   drawn from the sandbox seed (reproducible); answer 200 as the contract's table says.
    # - PUT /audiences/{id}: both arrays are optional; assignMembers are upserted then added (each
    #   customer once), then unAssignMembers are removed (an email in both ends up removed); emails
    #   not in the list are ignored; unknown id -> 404.
    # - Rate budget is per credential (the key or bearer token, hashed), 60 s sliding window, scaled
    #   by `rate_scale`, at least 1; requests without credentials are not counted (they get the 401).


ASSUMPTIONS = Assumptions()

# --- JSON Schemas (Draft 2020-12) ----------------------------------------------------------------

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_SCALAR: dict[str, Any] = {"type": ["string", "number", "null"]}  # purchase fields: types unpublished
ISO_8601 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$"
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

CUSTOMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string"},
        **{name: _NULLABLE_STRING for name in STRING_FIELDS},
        "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        "status": {"enum": [*STATUSES, None]},
        "unsubscribedAt": {"type": ["string", "null"], "pattern": ISO_8601},
        "lastPurchaseOrder": _SCALAR,
        "lastPurchasePrice": _SCALAR,
        "latestOrderId": _SCALAR,
        "lastPurchaseDate": _NULLABLE_STRING,
    },
    "additionalProperties": True,  # FORMAT.md: fields not listed are kept as given
}

CUSTOMER_PAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["members"],
    "properties": {
        "members": {
            "type": "object",
            "required": ["content", "last"],
            "properties": {"content": {"type": "array", "items": CUSTOMER_SCHEMA},
                           "last": {"type": "boolean"}},
        },
    },
}

LISTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["contacts"],
    "properties": {
        "contacts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "name", "numberOfMembers"],
                "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                               "numberOfMembers": {"type": "integer", "minimum": 0}},
            },
        },
    },
}

AUDIENCES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["contacts"],
    "properties": {
        "contacts": {
            "type": "array",
            "items": {"type": "object", "required": ["id", "name"],
                      "properties": {"id": {"type": "string"}, "name": {"type": "string"}}},
        },
    },
}

AUDIENCE_CREATED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": {"type": "string", "pattern": UUID}},
}

UPSERT_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["numberOfCreatedMembers", "numberOfUpdatedMembers"],
    "properties": {"numberOfCreatedMembers": {"type": "integer", "minimum": 0},
                   "numberOfUpdatedMembers": {"type": "integer", "minimum": 0}},
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string", "minLength": 1}},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "customer": CUSTOMER_SCHEMA,
    "customer_page": CUSTOMER_PAGE_SCHEMA,
    "lists": LISTS_SCHEMA,
    "audiences": AUDIENCES_SCHEMA,
    "audience_created": AUDIENCE_CREATED_SCHEMA,
    "upsert_answer": UPSERT_ANSWER_SCHEMA,
    "error": ERROR_SCHEMA,
}


def email_key(email: str) -> str:
    """How TinyEmail matches an email to a customer (`ASSUMPTIONS.email_match_*`): the client keys its reads
    by it, the sandbox its store. (Our own matching key, `model.normalise.normalise_email`, is stricter.)"""
    key = email.strip() if ASSUMPTIONS.email_match_trimmed else email
    return key.lower() if ASSUMPTIONS.email_match_case_insensitive else key
