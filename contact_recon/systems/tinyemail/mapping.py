"""TinyEmail's API models and payloads <-> the canonical records of model/records.py, both ways.

Read (API -> canonical): `tinyemail_customer_record` maps one customer payload (an API model through
`systems.models.as_payload`, or a fixture's dict) and the lists it was read from to one TINYEMAIL_CUSTOMERS
row, with the system-neutral helpers of model/normalise.py; the customer's `status` lower-cased is the
canonical `consent`; its fields that no standard field maps (`address2`, `currency`) are its `custom`.

Write (canonical -> API): `member` turns a create op's canonical record into a member of
`PUT /account/customer`, `field_name` gives TinyEmail's name of a canonical field, and `customer_status`
the status that spells a canonical consent. Batching and re-reads are the writer's
(systems/tinyemail/writer.py).

Of the shapes a contact takes (systems/models.py: API model -> canonical record -> op -> request body),
this module is the two crossings between TinyEmail's names and ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from contact_recon.model.custom_fields import te_custom_values
from contact_recon.model.normalise import clean_text, finish_row, person_columns
from contact_recon.model.records import TINYEMAIL_CUSTOMERS, TINYEMAIL_FIELD_NAMES
from contact_recon.systems.models import as_payload
from contact_recon.systems.tinyemail.contract import STATUSES
from contact_recon.systems.tinyemail.models import Customer

_STATUS_OF = {status.lower(): status for status in STATUSES}  # canonical consent -> TinyEmail status


# ------------------------------------------------------------------------------------ API -> canonical


def tinyemail_customer_record(payload: Mapping[str, Any], lists: Iterable[str], region: str = "US") -> dict[str, Any]:
    """One TinyEmail customer as a TINYEMAIL_CUSTOMERS row; `lists` are the ids of the lists it was read from."""
    row = person_columns(payload, TINYEMAIL_FIELD_NAMES, region)
    status = clean_text(payload.get("status"))
    # An absent status stays None: consent is never assumed.
    row["consent"] = status.lower() if status else None
    row["status"] = status
    row["unsubscribed_at"] = clean_text(payload.get("unsubscribedAt"))
    row["lists"] = sorted({str(x) for x in lists})
    row["custom"] = te_custom_values(payload)  # the customer fields no standard field maps (model/custom_fields.py)
    return finish_row(row, payload, TINYEMAIL_CUSTOMERS)


def customer_row(customer: Customer, region: str) -> dict[str, Any]:
    """A customer read now (the apply stage's precondition) as a TINYEMAIL_CUSTOMERS row; its lists are not
    read with it (TinyEmail's customer answer carries none), so they are left empty."""
    return tinyemail_customer_record(as_payload(customer), [], region)


# ------------------------------------------------------------------------------------ canonical -> API


def field_name(canonical: str) -> str:
    """TinyEmail's name of a canonical field (records.py TINYEMAIL_FIELD_NAMES)."""
    return TINYEMAIL_FIELD_NAMES[canonical]


def customer_status(consent: str) -> str:
    """The TinyEmail status that spells a canonical consent value ("unsubscribed" -> "Unsubscribed")."""
    try:
        return _STATUS_OF[consent]
    except KeyError:
        raise ValueError(f"no TinyEmail status spells the consent {consent!r}; known: {', '.join(_STATUS_OF)}") \
            from None


def member(record: Mapping[str, Any], tight_status: str) -> dict[str, Any]:
    """A create op's canonical record as a TinyEmail member (lists are assigned after the upsert); a record
    that carries a consent (the planner only sets a tight one) gets `tight_status`."""
    body = {TINYEMAIL_FIELD_NAMES[name]: value for name, value in record.items() if name in TINYEMAIL_FIELD_NAMES}
    if record.get("consent"):
        body["status"] = tight_status
    return body
