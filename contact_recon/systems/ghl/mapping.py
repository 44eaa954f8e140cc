"""GHL's API models and payloads <-> the canonical records of model/records.py, both ways.

Read (API -> canonical): `ghl_contact_record`, `ghl_task_record`, `ghl_note_record` map one payload (an
API model through `systems.models.as_payload`, or a fixture's dict) to one row of GHL_CONTACTS /
GHL_TASKS / GHL_NOTES, with the system-neutral helpers of model/normalise.py; `ghl_consent` reads GHL's
two DND signals as the one canonical `consent`.

A contact's `customFields` become the row's `custom` (JSON by fieldKey, `model/custom_fields.py`).

Write (canonical -> API): `contact_body` turns a create op's canonical record into a contact body,
`field_name` gives GHL's name of a canonical field, `custom_field_item` the `customFields` item of a custom
field's value (`{"id", "field_value"}`, the spec's customFieldsInputStringSchema), and `dnd_on` is the
`dndSettings` that switches the Email channel's DND on. Which body a write sends, and its quirks, are the
writer's (systems/ghl/writer.py).

Of the shapes a contact takes (systems/models.py: API model -> canonical record -> op -> request body),
this module is the two crossings between GHL's names and ours.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from contact_recon.model.custom_fields import ghl_custom_values
from contact_recon.model.normalise import clean_text, finish_row, person_columns
from contact_recon.model.records import GHL_CONTACTS, GHL_FIELD_NAMES, GHL_NOTES, GHL_TASKS
from contact_recon.systems.ghl.models import Contact
from contact_recon.systems.models import as_payload

_DND_STATUSES = ("active", "permanent")  # dndSettings.Email.status that means "do not email"
_DND_MESSAGE = "contact-recon: unsubscribed in TinyEmail"


# ------------------------------------------------------------------------------------ API -> canonical


def ghl_contact_record(payload: Mapping[str, Any], location_id: str, region: str = "US",
                       custom_keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One GHL contact (GET or search shape) as a GHL_CONTACTS row; `custom_keys` (custom field id -> fieldKey, the
    location's definitions, `GHLClient.custom_field_keys`) names its custom fields (model/custom_fields.py)."""
    source = dict(payload)
    if "address1" not in source and "address" in source:
        source["address1"] = source["address"]  # search answers name the street `address`
    row: dict[str, Any] = {"contact_id": clean_text(source.get("id")),
                           "location_id": clean_text(source.get("locationId")) or location_id}
    row.update(person_columns(source, GHL_FIELD_NAMES, region))
    row["consent"] = ghl_consent(source)
    customs = source.get("customFields")
    row["custom"] = ghl_custom_values(customs if isinstance(customs, list) else [], custom_keys)
    row["date_added"] = clean_text(source.get("dateAdded"))
    row["date_updated"] = clean_text(source.get("dateUpdated"))
    return finish_row(row, payload, GHL_CONTACTS)


def contact_row(contact: Contact, location_id: str, region: str,
                custom_keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A contact read now (the apply stage's precondition and re-read) as the same GHL_CONTACTS row."""
    return ghl_contact_record(as_payload(contact), location_id, region, custom_keys)


def ghl_consent(payload: Mapping[str, Any]) -> str:
    """"dnd" when global DND is on or the Email channel's DND is active/permanent, else "subscribed"."""
    settings = payload.get("dndSettings")
    email = settings.get("Email") if isinstance(settings, Mapping) else None
    status = email.get("status") if isinstance(email, Mapping) else None
    return "dnd" if payload.get("dnd") is True or status in _DND_STATUSES else "subscribed"


def ghl_task_record(payload: Mapping[str, Any], location_id: str) -> dict[str, Any]:
    """One GHL task as a GHL_TASKS row."""
    row = {"task_id": clean_text(payload.get("id")), "contact_id": clean_text(payload.get("contactId")),
           "location_id": location_id, "title": clean_text(payload.get("title")),
           "body": clean_text(payload.get("body")), "due_date": clean_text(payload.get("dueDate")),
           "completed": bool(payload.get("completed")), "assigned_to": clean_text(payload.get("assignedTo"))}
    return finish_row(row, payload, GHL_TASKS)


def ghl_note_record(payload: Mapping[str, Any], location_id: str) -> dict[str, Any]:
    """One GHL note as a GHL_NOTES row."""
    row = {"note_id": clean_text(payload.get("id")), "contact_id": clean_text(payload.get("contactId")),
           "location_id": location_id, "body": clean_text(payload.get("body")),
           "user_id": clean_text(payload.get("userId")), "date_added": clean_text(payload.get("dateAdded"))}
    return finish_row(row, payload, GHL_NOTES)


# ------------------------------------------------------------------------------------ canonical -> API


def field_name(canonical: str) -> str:
    """GHL's name of a canonical field (records.py GHL_FIELD_NAMES)."""
    return GHL_FIELD_NAMES[canonical]


def custom_field_item(field_id: str, value: str | None) -> dict[str, Any]:
    """One `customFields` item of a contact update: the field's id and its new value ("" clears it)."""
    return {"id": field_id, "field_value": value or ""}


def dnd_on() -> dict[str, Any]:
    """The `dndSettings` that turn the Email channel's DND on (GHL's form of a tight canonical consent)."""
    return {"Email": {"status": "active", "message": _DND_MESSAGE}}


def contact_body(record: Mapping[str, Any], tight: Container[str]) -> dict[str, Any]:
    """A create op's canonical record (model/ops.py create_payload) as a GHL contact body; a `consent` in
    `tight` (the policy's GHL tight values) switches the Email DND on."""
    body = {GHL_FIELD_NAMES[name]: value for name, value in record.items() if name in GHL_FIELD_NAMES}
    if record.get("consent") in tight:
        body["dndSettings"] = dnd_on()
    return body
