"""GHL's API models (Contacts API v2, pydantic v2): `Contact`, `SearchPage`, `Task`, `Note`, `Appointment`,
`BulkTagsResult`, and a location's `CustomFieldDefinition` (apps/locations.json CustomFieldSchema).

Checked on the fields the pipeline uses and tolerant of the rest (`systems/models.py`, which also names the
shapes a contact takes between listing and write). What the real API is seen to send is forgiven on a
contact: `tags` or `customFields` null (an empty list), `dnd` null (false), a numeric `phone` (its text),
`dateAdded`/`dateUpdated` "" (no date). A search page keeps the contacts it cannot read apart
(`SearchPage.unreadable`) instead of refusing the page. The canonical rows are built from them by
`systems/ghl/mapping.py`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator, model_validator

from contact_recon.systems.models import ApiModel, Unreadable, split_records


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

    @field_validator("tags", "customFields", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value  # null where a list belongs: no tags, no custom fields

    @field_validator("dnd", mode="before")
    @classmethod
    def _null_flag(cls, value: Any) -> Any:
        return False if value is None else value  # null DND: not set (dndSettings still counts)

    @field_validator("phone", mode="before")
    @classmethod
    def _numeric_phone(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a phone sent as a number: its digits
        return value

    @field_validator("dateAdded", "dateUpdated", mode="before")
    @classmethod
    def _empty_date(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # "": no date

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
    """One page of POST /contacts/search. `contacts` is required: an answer without it is not an empty page.

    Each contact is read on its own: one the model refuses goes to `unreadable` (its id when readable), the
    page keeps the others (`systems/models.py split_records`).
    """

    contacts: list[Contact]
    total: int = 0
    traceId: str | None = None
    unreadable: list[Unreadable] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _per_record(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("contacts"), list):
            return data  # no array of contacts: the page itself is malformed
        contacts, unreadable = split_records(Contact, data["contacts"], "id", "contacts")
        return {**data, "contacts": contacts, "unreadable": unreadable}


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


class CustomFieldDefinition(ApiModel):
    """One custom field a location defines (GET /locations/{locationId}/customFields, CustomFieldSchema)."""

    id: str
    fieldKey: str | None = None
    name: str | None = None
    dataType: str | None = None
    model: str | None = None


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
