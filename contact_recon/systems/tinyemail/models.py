"""TinyEmail's API models (pydantic v2): `Customer` (identified by its email: TinyEmail customers have no id)
and `ContactList`.

Checked on the fields the pipeline uses and tolerant of the rest (`systems/models.py`, which also names the
shapes a contact takes between listing and write). A customer's `tags` null is no tags; its `status` in any
case is that status ("subscribed" is "Subscribed"), and a status TinyEmail does not document is kept as its
raw text: the mapping makes it a consent value no policy counts as loose or tight, so it never loosens
consent (the `consent_known` check warns about it). The canonical rows are built from them by
`systems/tinyemail/mapping.py`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from contact_recon.systems.models import ApiModel
from contact_recon.systems.tinyemail.contract import STATUSES

_KNOWN_STATUS = {status.lower(): status for status in STATUSES}


class Customer(ApiModel):
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
    status: str | None = "Subscribed"  # one of contract.STATUSES, the raw text of another, or null (unknown)
    unsubscribedAt: str | None = None

    @field_validator("tags", mode="before")
    @classmethod
    def _null_tags(cls, value: Any) -> Any:
        return [] if value is None else value  # null where a list belongs: no tags

    @field_validator("status", mode="before")
    @classmethod
    def _status_spelling(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _KNOWN_STATUS.get(value.strip().lower(), value)  # a case variant is that status; else raw
        return value

    def to_api(self) -> dict[str, Any]:
        """The body for `PUT /account/customer`: only the fields that were set (read or given).

        Defaults are left out on purpose: the PUT leaves omitted fields unchanged, while a default
        `tags=[]` or `status="Subscribed"` sent by accident would wipe tags or resubscribe someone.
        """
        return self.model_dump(exclude_unset=True)


class ContactList(ApiModel):
    """A TinyEmail list ("contacts" / "audiences" in the API are lists of customers)."""

    id: str
    name: str
    numberOfMembers: int | None = None
