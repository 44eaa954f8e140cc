"""The official HighLevel Python SDK (`gohighlevel-api-client` 3.x, import name `highlevel`) against the sandbox.

The SDK is async only (an `httpx.AsyncClient`), sends `Version: v3` on every call and authenticates here
with a Private Integration token from the fixture. It has no base-URL option: both its HTTP client and its
OAuth service read the class attribute `HighLevel.BASE_URL`, so `sdk_client` builds a subclass whose
BASE_URL is the sandbox URL (no module or global state is patched).

Each scenario drives one object's lifecycle through the SDK and checks, after every step, what the sandbox
actually holds via the loopback-only `GET /__sandbox/state` (the ghl part of a fixture). Every answer
the SDK receives is also validated against the spec (tests/support/ghl_openapi.py). Each scenario is a test of
its own, and `test_sdk_reached_every_operation` runs all of them again with its own coverage record, so it
holds alone, in any order and on any xdist worker.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from highlevel import GHLError, HighLevel

from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.server import serve_in_thread
from tests.support.ghl_openapi import Coverage, validate_exchange

LOC = "LocSdkSSSSSSSSSSSSS1"
PIT = "pit-sdk-full-scopes"
CONTACT = "SdkContact0000000001"
DUE = "2026-12-24T09:00:00.000Z"
Scenario = Callable[[HighLevel, httpx.Client], Awaitable[None]]  # (sdk, admin client of the sandbox)

FIXTURE: dict[str, Any] = {
    "oauthClients": [],
    "tokens": [
        {"token": PIT, "locationId": LOC, "scopes": ["contacts.readonly", "contacts.write", "locations/tasks.readonly"]}
    ],
    "locations": {
        LOC: {
            "allowDuplicateContacts": False,
            "contacts": [
                {"id": CONTACT, "firstName": "Margaret", "lastName": "Hamilton", "email": "mh@example.com",
                 "phone": "+14155550199", "tags": ["apollo"], "dnd": False},
            ],
            "tasks": [],
            "notes": [],
        }
    },
}


def sdk_client(base_url: str, token: str, coverage: Coverage | None = None) -> HighLevel:
    """A HighLevel SDK client aimed at `base_url` (see the module docstring for why a subclass).

    With `coverage`, every answer the SDK receives is also checked against the spec (before the SDK's
    own hook turns 4xx into GHLError); its requests are not, since the spec's Version enum lacks `v3`.
    """
    sandbox_sdk = type("SandboxHighLevel", (HighLevel,), {"BASE_URL": base_url})
    sdk = sandbox_sdk(private_integration_token=token, log_level="error")
    if coverage is not None:

        async def check(response: httpx.Response) -> None:
            await response.aread()
            validate_exchange(response.request, response, coverage=coverage, check_request=False)

        sdk.http_client.event_hooks["response"].insert(0, check)
    return sdk


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from contact_recon.sandbox.ghl import create_app

    server = serve_in_thread(create_app(validate_fixture({"ghl": copy.deepcopy(FIXTURE)})["ghl"], search_lag_s=0))
    yield server.base_url
    server.stop()


@pytest.fixture
def admin(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        client.post("/__sandbox/reset").raise_for_status()
        yield client


def run_scenario(base_url: str, admin: httpx.Client, scenario: Scenario, coverage: Coverage | None = None) -> None:
    """Run an async scenario with a fresh SDK client (one event loop per scenario, client closed after); every
    answer is checked against the spec and recorded in `coverage` (a throwaway record when None)."""
    async def main() -> None:
        sdk = sdk_client(base_url, PIT, coverage or Coverage())
        try:
            await scenario(sdk, admin)
        finally:
            await sdk.close()

    asyncio.run(main())


def _all(admin: httpx.Client, kind: str) -> list[dict[str, Any]]:
    response = admin.get("/__sandbox/state")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["locations"][LOC][kind]
    return items


def _stored(admin: httpx.Client, kind: str, item_id: str) -> dict[str, Any] | None:
    return next((item for item in _all(admin, kind) if item.get("id") == item_id), None)


def test_sdk_points_at_the_sandbox(base_url: str) -> None:
    async def main() -> None:  # made inside the loop that closes it (the SDK makes a loop of its own otherwise)
        sdk = sdk_client(base_url, PIT)
        try:
            assert str(sdk.get_http_client().base_url).rstrip("/") == base_url
            assert sdk.get_headers()["Version"] == "v3"
        finally:
            await sdk.close()

    asyncio.run(main())
    assert HighLevel.BASE_URL == "https://services.leadconnectorhq.com"  # the SDK class itself is untouched


async def contact_lifecycle(sdk: HighLevel, admin: httpx.Client) -> None:
    created = await sdk.contacts.create_contact(
        {"locationId": LOC, "firstName": "Dorothy", "lastName": "Vaughan", "email": "dv@example.com"}
    )
    contact_id = created["contact"]["id"]
    assert _stored(admin, "contacts", contact_id)["email"] == "dv@example.com"  # type: ignore[index]

    read = await sdk.contacts.get_contact(contact_id)
    assert (read["contact"]["firstName"], read["contact"]["locationId"]) == ("Dorothy", LOC)

    updated = await sdk.contacts.update_contact(contact_id, {"lastName": "Johnson-Vaughan", "city": "Hampton"})
    assert updated["contact"]["lastName"] == "Johnson-Vaughan"
    stored = _stored(admin, "contacts", contact_id)
    assert (stored["lastName"], stored["city"]) == ("Johnson-Vaughan", "Hampton")  # type: ignore[index]

    found = await sdk.contacts.search_contacts_advanced(
        {"locationId": LOC, "pageLimit": 10,
         "filters": [{"field": "email", "operator": "eq", "value": "dv@example.com"}]}
    )
    assert [c["id"] for c in found["contacts"]] == [contact_id] and found["total"] == 1

    deleted = await sdk.contacts.delete_contact(contact_id)
    assert deleted["succeded"] is True
    assert _stored(admin, "contacts", contact_id) is None
    with pytest.raises(GHLError) as gone:
        await sdk.contacts.get_contact(contact_id)
    assert gone.value.status_code == 400



def test_sdk_contact_lifecycle(base_url: str, admin: httpx.Client) -> None:
    run_scenario(base_url, admin, contact_lifecycle)


async def task_lifecycle(sdk: HighLevel, admin: httpx.Client) -> None:
    created = await sdk.contacts.create_task(
        CONTACT, {"title": "Review code", "body": "Lunar module", "dueDate": DUE, "completed": False}
    )
    task_id = created["task"]["id"]
    stored = _stored(admin, "tasks", task_id)
    assert (stored["contactId"], stored["title"], stored["completed"]) == (CONTACT, "Review code", False)  # type: ignore[index]

    read = await sdk.contacts.get_task(CONTACT, task_id)
    assert read["task"]["body"] == "Lunar module"

    await sdk.contacts.update_task(CONTACT, task_id, {"title": "Review all code"})
    assert _stored(admin, "tasks", task_id)["title"] == "Review all code"  # type: ignore[index]

    done = await sdk.contacts.update_task_completed(CONTACT, task_id, {"completed": True})
    assert done["task"]["completed"] is True
    assert _stored(admin, "tasks", task_id)["completed"] is True  # type: ignore[index]

    listed = await sdk.contacts.get_all_tasks(CONTACT)
    assert [t["id"] for t in listed["tasks"]] == [task_id]

    deleted = await sdk.contacts.delete_task(CONTACT, task_id)
    assert deleted["succeded"] is True
    assert _stored(admin, "tasks", task_id) is None



def test_sdk_task_lifecycle(base_url: str, admin: httpx.Client) -> None:
    run_scenario(base_url, admin, task_lifecycle)


async def note_lifecycle(sdk: HighLevel, admin: httpx.Client) -> None:
    created = await sdk.contacts.create_note(CONTACT, {"body": "Wrote the flight software"})
    note_id = created["note"]["id"]
    stored = _stored(admin, "notes", note_id)
    assert (stored["contactId"], stored["body"]) == (CONTACT, "Wrote the flight software")  # type: ignore[index]

    read = await sdk.contacts.get_note(CONTACT, note_id)
    assert read["note"]["body"] == "Wrote the flight software"

    updated = await sdk.contacts.update_note(CONTACT, note_id, {"body": "Led the flight software team"})
    assert updated["note"]["body"] == "Led the flight software team"
    assert _stored(admin, "notes", note_id)["body"] == "Led the flight software team"  # type: ignore[index]

    deleted = await sdk.contacts.delete_note(CONTACT, note_id)
    assert deleted["succeded"] is True
    assert _stored(admin, "notes", note_id) is None



def test_sdk_note_lifecycle(base_url: str, admin: httpx.Client) -> None:
    run_scenario(base_url, admin, note_lifecycle)


async def tags_add_and_remove(sdk: HighLevel, admin: httpx.Client) -> None:
    added = await sdk.contacts.add_tags(CONTACT, {"tags": ["nasa", "mit"]})
    assert {"nasa", "mit"} <= set(added["tags"])
    assert sorted(_stored(admin, "contacts", CONTACT)["tags"]) == ["apollo", "mit", "nasa"]  # type: ignore[index]

    await sdk.contacts.remove_tags(CONTACT, {"tags": ["apollo", "mit"]})
    assert _stored(admin, "contacts", CONTACT)["tags"] == ["nasa"]  # type: ignore[index]



def test_sdk_tags_add_and_remove(base_url: str, admin: httpx.Client) -> None:
    run_scenario(base_url, admin, tags_add_and_remove)


async def spec_errors(sdk: HighLevel, admin: httpx.Client) -> None:
    with pytest.raises(GHLError) as unknown:
        await sdk.contacts.create_contact({"locationId": LOC, "email": "x@example.com", "shoeSize": 9})
    assert unknown.value.status_code == 422
    assert unknown.value.response["message"] == ["property shoeSize should not exist"]
    with pytest.raises(GHLError) as duplicate:
        await sdk.contacts.create_contact({"locationId": LOC, "email": "mh@example.com"})
    assert duplicate.value.status_code == 400
    assert duplicate.value.response["meta"] == {"contactId": CONTACT, "matchingField": "email"}

    assert len(_all(admin, "contacts")) == 1  # nothing was created


def test_sdk_surfaces_spec_errors(base_url: str, admin: httpx.Client) -> None:
    run_scenario(base_url, admin, spec_errors)


SCENARIOS: tuple[Scenario, ...] = (contact_lifecycle, task_lifecycle, note_lifecycle, tags_add_and_remove, spec_errors)


def test_sdk_reached_every_operation(base_url: str, admin: httpx.Client) -> None:
    coverage = Coverage()
    for scenario in SCENARIOS:  # each on the sandbox as the fixture made it
        admin.post("/__sandbox/reset").raise_for_status()
        run_scenario(base_url, admin, scenario, coverage)
    expected = {
        ("POST", "/contacts/"), ("GET", "/contacts/{contactId}"), ("PUT", "/contacts/{contactId}"),
        ("POST", "/contacts/search"), ("DELETE", "/contacts/{contactId}"),
        ("POST", "/contacts/{contactId}/tasks"), ("GET", "/contacts/{contactId}/tasks/{taskId}"),
        ("PUT", "/contacts/{contactId}/tasks/{taskId}"), ("PUT", "/contacts/{contactId}/tasks/{taskId}/completed"),
        ("GET", "/contacts/{contactId}/tasks"), ("DELETE", "/contacts/{contactId}/tasks/{taskId}"),
        ("POST", "/contacts/{contactId}/notes"), ("GET", "/contacts/{contactId}/notes/{id}"),
        ("PUT", "/contacts/{contactId}/notes/{id}"), ("DELETE", "/contacts/{contactId}/notes/{id}"),
        ("POST", "/contacts/{contactId}/tags"), ("DELETE", "/contacts/{contactId}/tags"),
    }
    missing = sorted(expected - coverage.operations())
    assert not missing, f"SDK calls that never reached the sandbox: {missing}"
