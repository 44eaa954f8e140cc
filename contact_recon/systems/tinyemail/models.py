"""TinyEmail's API models (pydantic v2): `Customer` (identified by its email: TinyEmail customers have no id)
and `ContactList`.

Strict on the fields the pipeline uses and tolerant of the rest (`systems/models.py`, which also names the
shapes a contact takes between listing and write). The canonical rows are built from them by
`systems/tinyemail/mapping.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from contact_recon.systems.models import ApiModel

CustomerStatus = Literal["Subscribed", "Unsubscribed", "Bounced", "Inactive", "Spam"]


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
    status: CustomerStatus = "Subscribed"
    unsubscribedAt: str | None = None

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
