"""Loading and checking sandbox fixtures (../shared/fixtures/FORMAT.md).

The format is accepted exactly: the listed fields must have the listed types, unlisted fields are kept
as given, and bad *data* (an invalid email, a phone in any format, duplicate emails) loads as given,
because a real account may hold it. What cannot be loaded stops the start with a `FixtureError` whose
message names the JSON path, e.g. `ghl.locations.X.tasks[3].contactId`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

CUSTOMER_STATUSES = ("Subscribed", "Unsubscribed", "Bounced", "Inactive", "Spam")
DND_STATUSES = ("active", "inactive", "permanent")

_CONTACT_STRINGS = ("id", "locationId", "firstName", "lastName", "email", "phone", "companyName", "source",
                    "address1", "city", "state", "country", "postalCode", "website", "timezone")
_CUSTOMER_STRINGS = ("email", "firstName", "lastName", "phone", "company", "address1", "address2", "city",
                     "province", "country", "postalCode", "birthday", "source", "currency", "unsubscribedAt")


class FixtureError(ValueError):
    """A fixture that cannot be loaded; `path` is the JSON path of the offending value."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


def load_fixture(path: str | Path) -> dict[str, Any]:
    """Read and check a fixture file; raise FixtureError naming the offending JSON path."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FixtureError("$", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FixtureError("$", f"{path} is not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FixtureError("$", f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise FixtureError("$", "not loadable: nested too deeply") from None
    return validate_fixture(data)


def validate_fixture(data: Any) -> dict[str, Any]:
    """Check a parsed fixture and return it with the missing optional parts as empty ones."""
    _expect(data, dict, "$")
    out = dict(data)
    out["ghl"] = _ghl(data.get("ghl", {}), "ghl")
    out["tinyemail"] = _tinyemail(data.get("tinyemail", {}), "tinyemail")
    return out


# --- GHL --------------------------------------------------------------------------------------------

def _ghl(ghl: Any, path: str) -> dict[str, Any]:
    _expect(ghl, dict, path)
    out = dict(ghl)
    out["oauthClients"] = _list_of_objects(ghl.get("oauthClients", []), f"{path}.oauthClients",
                                           required={"client_id": str, "client_secret": str})
    out["tokens"] = _list_of_objects(ghl.get("tokens", []), f"{path}.tokens",
                                     required={"token": str, "locationId": str, "scopes": list})
    for i, token in enumerate(out["tokens"]):
        _strings(token["scopes"], f"{path}.tokens[{i}].scopes")
    locations = ghl.get("locations", {})
    _expect(locations, dict, f"{path}.locations")
    out["locations"] = {loc_id: _location(loc, loc_id, f"{path}.locations.{loc_id}")
                        for loc_id, loc in locations.items()}
    return out


def _location(loc: Any, loc_id: str, path: str) -> dict[str, Any]:
    _expect(loc, dict, path)
    out = dict(loc)
    out["allowDuplicateContacts"] = loc.get("allowDuplicateContacts", False)
    _expect(out["allowDuplicateContacts"], bool, f"{path}.allowDuplicateContacts")
    out["contacts"] = _list_of_objects(loc.get("contacts", []), f"{path}.contacts")
    if "customFields" in loc:  # the location's custom field definitions (else the sandbox seeds its own)
        out["customFields"] = _list_of_objects(loc["customFields"], f"{path}.customFields",
                                               required={"id": str, "fieldKey": str})
    ids: set[str] = set()
    for i, contact in enumerate(out["contacts"]):
        _contact(contact, loc_id, f"{path}.contacts[{i}]", ids)
    out["tasks"] = _list_of_objects(loc.get("tasks", []), f"{path}.tasks", required={"contactId": str})
    out["notes"] = _list_of_objects(loc.get("notes", []), f"{path}.notes", required={"contactId": str})
    for kind in ("tasks", "notes"):
        _children(out[kind], kind, ids, path)
    return out


def _contact(contact: dict[str, Any], loc_id: str, path: str, ids: set[str]) -> None:
    _optional(contact, path, {name: str for name in _CONTACT_STRINGS} | {"tags": list, "dnd": bool,
                                                                       "dndSettings": dict})
    _strings(contact.get("tags", []), f"{path}.tags")
    _dates(contact, path, ("dateAdded", "dateUpdated", "dateOfBirth"))
    if contact.get("locationId", loc_id) != loc_id:
        raise FixtureError(f"{path}.locationId", f"is {contact['locationId']!r} under location {loc_id!r}")
    for channel, setting in (contact.get("dndSettings") or {}).items():  # null is as good as absent
        _expect(setting, dict, f"{path}.dndSettings.{channel}")
        if setting.get("status", "inactive") not in DND_STATUSES:
            raise FixtureError(f"{path}.dndSettings.{channel}.status", f"must be one of {DND_STATUSES}")
    if "id" in contact:
        if contact["id"] in ids:
            raise FixtureError(f"{path}.id", f"duplicate contact id {contact['id']!r}")
        ids.add(contact["id"])


def _children(items: list[dict[str, Any]], kind: str, contact_ids: set[str], path: str) -> None:
    seen: set[str] = set()
    types = {"id": str, "title": str, "body": str, "assignedTo": str, "userId": str, "completed": bool}
    for i, item in enumerate(items):
        item_path = f"{path}.{kind}[{i}]"
        _optional(item, item_path, types)
        _dates(item, item_path, ("dueDate", "dateAdded", "dateUpdated"))
        if item["contactId"] not in contact_ids:
            raise FixtureError(f"{item_path}.contactId", f"no contact {item['contactId']!r} in this location")
        if "id" in item:
            if item["id"] in seen:
                raise FixtureError(f"{item_path}.id", f"duplicate {kind[:-1]} id {item['id']!r}")
            seen.add(item["id"])


# --- TinyEmail --------------------------------------------------------------------------------------

def _tinyemail(te: Any, path: str) -> dict[str, Any]:
    _expect(te, dict, path)
    out = dict(te)
    out["apiKeys"] = te.get("apiKeys", [])
    _strings(out["apiKeys"], f"{path}.apiKeys")
    out["customers"] = _list_of_objects(te.get("customers", []), f"{path}.customers", required={"email": str})
    for i, customer in enumerate(out["customers"]):
        _customer(customer, f"{path}.customers[{i}]")
    out["lists"] = _list_of_objects(te.get("lists", []), f"{path}.lists",
                                    required={"id": str, "name": str})
    for i, lst in enumerate(out["lists"]):
        lst.setdefault("members", [])
        _strings(lst["members"], f"{path}.lists[{i}].members")
    return out


def _customer(customer: dict[str, Any], path: str) -> None:
    _optional(customer, path, {name: str for name in _CUSTOMER_STRINGS} | {"tags": list, "status": str})
    _strings(customer.get("tags", []), f"{path}.tags")
    if customer.get("status", "Subscribed") not in CUSTOMER_STATUSES:
        raise FixtureError(f"{path}.status", f"must be one of {', '.join(CUSTOMER_STATUSES)}")


# --- primitives -------------------------------------------------------------------------------------

_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "true or false"}


def _expect(value: Any, kind: type, path: str) -> None:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise FixtureError(path, f"must be {_TYPE_NAMES[kind]}, got {type(value).__name__}")


def _list_of_objects(value: Any, path: str, required: dict[str, type] | None = None) -> list[dict[str, Any]]:
    _expect(value, list, path)
    out = []
    for i, item in enumerate(value):
        _expect(item, dict, f"{path}[{i}]")
        for name, kind in (required or {}).items():
            if name not in item:
                raise FixtureError(f"{path}[{i}].{name}", "is required")
            _expect(item[name], kind, f"{path}[{i}].{name}")
        out.append(dict(item))
    return out


def _optional(obj: dict[str, Any], path: str, types: dict[str, type]) -> None:
    for name, kind in types.items():
        if name in obj and obj[name] is not None:
            _expect(obj[name], kind, f"{path}.{name}")


def _strings(values: Any, path: str) -> None:
    _expect(values, list, path)
    for i, v in enumerate(values):
        _expect(v, str, f"{path}[{i}]")


def _dates(obj: dict[str, Any], path: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = obj.get(name)
        if value is None or isinstance(value, int | float) and not isinstance(value, bool):
            continue  # dateOfBirth may be epoch ms, as GHL itself writes it
        _expect(value, str, f"{path}.{name}")
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise FixtureError(f"{path}.{name}", f"is not an ISO 8601 date: {value!r}") from None
