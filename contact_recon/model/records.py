"""The record shapes shared by the snapshot, the merge engine, the checks and the apply stage.

Every stage speaks one canonical vocabulary for a person's shared fields, whatever system it came
from, so the merge engine never sees an API's own names:

| canonical     | GHL contact    | TinyEmail customer |
|---------------|----------------|--------------------|
| email         | email          | email              |
| first_name    | firstName      | firstName          |
| last_name     | lastName       | lastName           |
| phone         | phone          | phone              |
| company       | companyName    | company            |
| address1      | address1       | address1           |
| city          | city           | city               |
| state         | state          | province           |
| country       | country        | country            |
| postal_code   | postalCode     | postalCode         |
| birthday      | dateOfBirth    | birthday           |
| source        | source         | source             |
| tags          | tags           | tags               |
| consent       | dndSettings.Email / dnd | status    |

Custom fields are one canonical column, `custom`: JSON text (sorted keys, blank values left out, null when
none), GHL's keyed by `fieldKey`, TinyEmail's its customer fields that no standard field maps, and on the merge
sides and in the base the policy's custom fields by name (`contact_recon/model/custom_fields.py`).

Consent is one canonical column, `consent`: "subscribed" | "unsubscribed" | "bounced" | "spam" |
"inactive" for TinyEmail, and for GHL "dnd" (email channel DND active or permanent, or global `dnd`)
or "subscribed". Tags are a sorted list of unique strings. `email` and `phone` hold the normalised
values (lower-cased IDN-aware email, E.164 phone); the raw values stay beside them with a validity
flag, so nothing is ever dropped.

Frames (polars) use the column lists below; `key` is the person key after identity matching: the GHL
contact id for a GHL contact (matched or not) and `te:<email>` for a TinyEmail customer that matches
no GHL contact.
"""

from __future__ import annotations

import polars as pl

SHARED_TEXT_FIELDS: tuple[str, ...] = (
    "email", "first_name", "last_name", "phone", "company", "address1", "city", "state", "country",
    "postal_code", "birthday", "source",
)
GHL_FIELD_NAMES: dict[str, str] = {
    "email": "email", "first_name": "firstName", "last_name": "lastName", "phone": "phone",
    "company": "companyName", "address1": "address1", "city": "city", "state": "state", "country": "country",
    "postal_code": "postalCode", "birthday": "dateOfBirth", "source": "source", "tags": "tags",
}
TINYEMAIL_FIELD_NAMES: dict[str, str] = {
    "email": "email", "first_name": "firstName", "last_name": "lastName", "phone": "phone",
    "company": "company", "address1": "address1", "city": "city", "state": "province", "country": "country",
    "postal_code": "postalCode", "birthday": "birthday", "source": "source", "tags": "tags",
}
CONSENT_VALUES = ("subscribed", "unsubscribed", "bounced", "spam", "inactive", "dnd")

_PERSON: dict[str, pl.DataType] = {
    **{name: pl.String() for name in SHARED_TEXT_FIELDS},
    "tags": pl.List(pl.String()),
    "consent": pl.String(),
}
_CUSTOM = {"custom": pl.String()}  # last in every frame: the store's tables got it by a later migration (12)

GHL_CONTACTS = pl.Schema({
    "contact_id": pl.String(), "location_id": pl.String(),
    **_PERSON,
    "email_raw": pl.String(), "email_valid": pl.Boolean(),
    "phone_raw": pl.String(), "phone_valid": pl.Boolean(),
    "date_added": pl.String(), "date_updated": pl.String(),
    "raw": pl.String(), "content_hash": pl.String(),
    **_CUSTOM,
})

TINYEMAIL_CUSTOMERS = pl.Schema({
    **_PERSON,
    "email_raw": pl.String(), "email_valid": pl.Boolean(),
    "phone_raw": pl.String(), "phone_valid": pl.Boolean(),
    "status": pl.String(), "unsubscribed_at": pl.String(),
    "lists": pl.List(pl.String()),
    "raw": pl.String(), "content_hash": pl.String(),
    **_CUSTOM,
})

GHL_TASKS = pl.Schema({
    "task_id": pl.String(), "contact_id": pl.String(), "location_id": pl.String(), "title": pl.String(),
    "body": pl.String(), "due_date": pl.String(), "completed": pl.Boolean(), "assigned_to": pl.String(),
    "raw": pl.String(), "content_hash": pl.String(),
})

GHL_NOTES = pl.Schema({
    "note_id": pl.String(), "contact_id": pl.String(), "location_id": pl.String(), "body": pl.String(),
    "user_id": pl.String(), "date_added": pl.String(), "raw": pl.String(), "content_hash": pl.String(),
})

# One row per person key: what the three-way merge compares (base, TinyEmail now, GHL now).
MERGE_SIDE = pl.Schema({"key": pl.String(), "contact_id": pl.String(), **_PERSON, "lists": pl.List(pl.String()),
                        **_CUSTOM})

