"""GHL's API models (Contacts API v2, pydantic v2): `Contact`, `SearchPage`, `Task`, `Note`, `Appointment`,
`BulkTagsResult`.

Strict on the fields the pipeline uses and tolerant of the rest (`systems/models.py`, which also names the
shapes a contact takes between listing and write). The canonical rows are built from them by
`systems/ghl/mapping.py`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator, model_validator

from contact_recon.systems.models import ApiModel


class Contact(ApiModel):
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


class SearchPage(ApiModel):
    """One page of POST /contacts/search. `contacts` is required: an answer without it is not an empty page."""

    contacts: list[Contact]
    total: int = 0
    traceId: str | None = None


class Task(ApiModel):
    id: str
    contactId: str | None = None
    title: str | None = None
    body: str | None = None
    dueDate: datetime | None = None
    completed: bool = False
    assignedTo: str | None = None


class Note(ApiModel):
    id: str
    contactId: str | None = None
    body: str | None = None
    userId: str | None = None
    title: str | None = None
    dateAdded: datetime | None = None


class Appointment(ApiModel):
    """An event of GET /contacts/{id}/appointments (GetEventSchema)."""

    id: str
    calendarId: str | None = None
    contactId: str | None = None
    title: str | None = None
    status: str | None = None
    appointmentStatus: str | None = None
    startTime: str | None = None
    endTime: str | None = None


class BulkTagsResult(ApiModel):
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
