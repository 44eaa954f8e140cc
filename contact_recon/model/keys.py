"""Person keys, and how a person is addressed, between the snapshot and the apply stage.

A GHL contact (matched or not) is keyed by its contact id; a TinyEmail customer that matches no GHL contact
by `te:<email>` (the normalised email, `model.normalise.normalise_email`). The identity matcher
(`engine/identity.py`) assigns the keys; a create in GHL re-keys `te:<email>` to the new contact id.

A key names a person; a `Person` says where to find them in each system when their ops are written (the
planner's `people` state, one per key). The ops carry only the key, so the address is looked up at apply time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TE_KEY_PREFIX = "te:"


def te_key(email: str) -> str:
    """The key of a TinyEmail-only person."""
    return TE_KEY_PREFIX + email


def is_te_key(key: str) -> bool:
    return key.startswith(TE_KEY_PREFIX)


@dataclass(frozen=True)
class Person:
    """How to address a person of the plan: its TinyEmail email, GHL contact id and GHL location."""

    email: str | None
    contact_id: str | None
    location_id: str | None


def address(people: Mapping[str, Person], key: str) -> Person:
    """The person `key` names: as the plan's `people` give it, else what the key itself says (`te:<email>` an
    email, any other key a GHL contact id)."""
    if known := people.get(key):
        return known
    if is_te_key(key):
        return Person(key.removeprefix(TE_KEY_PREFIX), None, None)
    return Person(None, key, None)
