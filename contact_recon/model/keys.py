"""Person keys: how a person is named between the snapshot and the apply stage.

A GHL contact (matched or not) is keyed by its contact id; a TinyEmail customer that matches no GHL contact
by `te:<email>` (the normalised email, `model.normalise.normalise_email`). The identity matcher
(`engine/identity.py`) assigns the keys; a create in GHL re-keys `te:<email>` to the new contact id.
"""

from __future__ import annotations

TE_KEY_PREFIX = "te:"


def te_key(email: str) -> str:
    """The key of a TinyEmail-only person."""
    return TE_KEY_PREFIX + email


def is_te_key(key: str) -> bool:
    return key.startswith(TE_KEY_PREFIX)
