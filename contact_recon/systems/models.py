"""Typed results of both connectors (pydantic v2).

Strict on the fields the pipeline uses (types are checked, required ones must be present) and
tolerant of everything else: unknown fields are kept (`extra="allow"`) so a record read and written
back loses nothing, and the APIs may add fields without breaking us.

GHL (Contacts API v2): `Contact`, `SearchPage`, `Task`, `Note`, `Appointment`, `BulkTagsResult`.
TinyEmail: `Customer` (identified by its email: TinyEmail customers have no id), `ContactList`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CustomerStatus = Literal["Subscribed", "Unsubscribed", "Bounced", "Inactive", "Spam"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ------------------------------------------------------------------------------------------ TinyEmail


class Customer(_Record):
    """A TinyEmail customer (CONTRACT.md "Customer fields"); `email` is its identity."""

    email: str
    firstName: str | None = None
    lastName: str | None = None
    phone: str | None = None
    company: str | None = None
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    province: str | None = None
    country: str | None = None
    postalCode: str | None = None
    birthday: str | None = None
    source: str | None = None
    currency: str | None = None
    tags: list[str] = Field(default_factory=list)
    status: CustomerStatus = "Subscribed"
    unsubscribedAt: str | None = None

    def to_api(self) -> dict[str, Any]:
        """The body for `PUT /account/customer`: only the fields that were set (read or given).

        Defaults are left out on purpose: the PUT leaves omitted fields unchanged, while a default
        `tags=[]` or `status="Subscribed"` sent by accident would wipe tags or resubscribe someone.
        """
        return self.model_dump(exclude_unset=True)


class ContactList(_Record):
    """A TinyEmail list ("contacts" / "audiences" in the API are lists of customers)."""

    id: str
    name: str
    numberOfMembers: int | None = None


# ------------------------------------------------------------------------------------------------ GHL


class Contact(_Record):
    """A GHL contact as GET /contacts/{id} or POST /contacts/search shows it.

    Search results name the street `address` and give `dateOfBirth` in epoch ms (NOTES.md); both
    are brought to the GET form (`address1`, `YYYY-MM-DD`) so one model serves both answers.
    """

    id: str
    locationId: str | None = None
    email: str | None = None
    phone: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    companyName: str | None = None
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    country: str | None = None
    source: str | None = None
    dateOfBirth: str | None = None
    tags: list[str] = Field(default_factory=list)
    dnd: bool = False
    customFields: list[dict[str, Any]] = Field(default_factory=list)
    dateAdded: datetime | None = None
    dateUpdated: datetime | None = None
    searchAfter: list[Any] | None = None  # the cursor value of this contact (search results only)

    @model_validator(mode="before")
    @classmethod
    def _search_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "address" in data and "address1" not in data:
            data = {**data, "address1": data["address"]}
            del data["address"]
        dob = data.get("dateOfBirth")
        if isinstance(dob, int | float) and not isinstance(dob, bool):
            try:
                data = {**data, "dateOfBirth": datetime.fromtimestamp(dob / 1000, UTC).strftime("%Y-%m-%d")}
            except (OverflowError, OSError, ValueError):  # NaN, infinity, or beyond the years datetime holds
                raise ValueError("dateOfBirth is not a date in epoch milliseconds") from None
        return data


class SearchPage(_Record):
    """One page of POST /contacts/search. `contacts` is required: an answer without it is not an empty page."""

    contacts: list[Contact]
    total: int = 0
    traceId: str | None = None


class Task(_Record):
    id: str
    contactId: str | None = None
    title: str | None = None
    body: str | None = None
    dueDate: datetime | None = None
    completed: bool = False
    assignedTo: str | None = None


class Note(_Record):
    id: str
    contactId: str | None = None
    body: str | None = None
    userId: str | None = None
    title: str | None = None
    dateAdded: datetime | None = None


class Appointment(_Record):
    """An event of GET /contacts/{id}/appointments (GetEventSchema)."""

    id: str
    calendarId: str | None = None
    contactId: str | None = None
    title: str | None = None
    status: str | None = None
    appointmentStatus: str | None = None
    startTime: str | None = None
    endTime: str | None = None


class BulkTagsResult(_Record):
    """POST /contacts/bulk/tags/update/{type}: `responses` come as JSON strings (one per contact), parsed here."""

    succeded: bool = False  # sic, as the API spells it
    errorCount: int = 0
    responses: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("responses", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [json.loads(v) if isinstance(v, str) else v for v in value]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.responses if r.get("type") == "error"]
