"""One person read now from both systems, as the frames the planning pipeline takes (the `sync-contact` flow).

Between nights a webhook (GHL) or the TinyEmail watcher names one person. `person_frames` reads just that
person: the GHL contact (by id, or by email through the duplicate search), its tasks, and the TinyEmail
customer by email. TinyEmail answers a customer without its lists, so the lists come from the latest
snapshot (a list change waits for the night); notes are not read (the nightly sweep covers them); a contact
with custom fields has them named by the location's definitions (read once per client,
`GHLClient.custom_keys_for`). The frames
then go through the same identity, merge, checks, quarantine, apply and state code as the nightly run
(`contact_recon/stages/plan.py plan_person`, `contact_recon/stages/run.py apply_run`).

Shapes (systems/models.py): the API models read here become the same canonical rows the snapshot makes
(each system's `mapping.py`), so the one person is planned exactly as the night would plan them.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.normalise import to_frame
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, GHL_TASKS, TINYEMAIL_CUSTOMERS
from contact_recon.store.db import Store
from contact_recon.systems.errors import NotFound
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_task_record
from contact_recon.systems.ghl.models import Contact
from contact_recon.systems.models import as_payload
from contact_recon.systems.tinyemail.client import TinyEmailClient
from contact_recon.systems.tinyemail.contract import email_key
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record


class NobodyToSync(Exception):  # noqa: N818 - the name is the contract
    """Neither system has the person the event named."""


@dataclass(frozen=True)
class PersonFrames:
    """One person's data read now from both systems, as the snapshot's frames, with the keys the base may know
    them by. Not `model.keys.Person`, which only says how the apply stage addresses a person of a plan: this
    is the input of planning one person, that is an address used when their ops are written."""

    frames: dict[str, pl.DataFrame]
    keys: tuple[str, ...]  # the person's possible base keys (contact id, te:<email>)
    contact_id: str | None
    email: str | None


async def person_frames(ghl: GHLClient, te: TinyEmailClient, store: Store, *, contact_id: str | None = None,
                        email: str | None = None, region: str = "US") -> PersonFrames:
    """Read one person from both systems (module docstring); NobodyToSync when neither has it."""
    contact = await _contact(ghl, contact_id, email)
    email = email or (contact.email if contact else None)
    customer = await te.get_customer(email) if email else None
    if contact is None and customer is None:
        raise NobodyToSync(f"no GHL contact {contact_id or ''} and no TinyEmail customer {email or ''}".strip())
    loc = ghl.location_id
    tasks = await ghl.list_tasks(contact.id) if contact else []
    custom_keys = await ghl.custom_keys_for([contact] if contact else [])  # its custom fields by fieldKey
    te_rows = [tinyemail_customer_record(as_payload(customer), _lists(store, customer.email), region)] \
        if customer else []
    frames = {
        "ghl_contacts": to_frame([ghl_contact_record(as_payload(contact), loc, region, custom_keys)] if contact
                                 else [], GHL_CONTACTS),
        "te_customers": to_frame(te_rows, TINYEMAIL_CUSTOMERS),
        "ghl_tasks": to_frame([ghl_task_record({**as_payload(t), "contactId": contact.id}, loc) for t in tasks]
                              if contact else [], GHL_TASKS),
        "ghl_notes": to_frame([], GHL_NOTES),
    }
    keys = tuple(k for k in ((contact.id if contact else contact_id),
                             (TE_KEY_PREFIX + email_key(email)) if email else None) if k)
    return PersonFrames(frames, keys, contact.id if contact else contact_id, email)


async def _contact(ghl: GHLClient, contact_id: str | None, email: str | None) -> Contact | None:
    if contact_id:
        try:
            return await ghl.get_contact(contact_id)
        except NotFound:
            return None
    return await ghl.find_duplicate(email=email) if email else None


def _lists(store: Store, email: str) -> list[str]:
    """The customer's lists as of the latest snapshot (TinyEmail's customer answer carries none)."""
    key = pl.DataFrame({"email": [email_key(email)]}, schema={"email": pl.String})
    latest = store.latest_snapshot("te_customers", without=("raw",), only=key)
    return latest["lists"][0].to_list() if latest.height and latest["lists"][0] is not None else []
