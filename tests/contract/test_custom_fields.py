"""Custom fields in the GHL sandbox and the connector, over real HTTP (apps/locations.json, apps/contacts.json,
NOTES.md "Custom fields"): definitions per location, writes in the customFieldsInput shapes, reads in the
CustomFieldSchema shape, an unknown id refused; and the connector resolving fieldKeys per location, once a client."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from contact_recon.sandbox.ghl import create_app
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.systems.errors import Validation
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.ghl.mapping import contact_row
from tests.support.servers import FakeClock

LOC_A, LOC_B = "LocationAAAAAAAAAAA1", "LocationBBBBBBBBBBB2"
TOKEN_A, TOKEN_B, NO_SCOPE = "token-a", "token-b", "token-no-custom-scope"
SCOPES = ["contacts.readonly", "contacts.write", "locations/tasks.readonly", "locations/customFields.readonly"]
ADA, BEA = "AdaLovelace000000001", "BeaLocationB00000004"
PLAN_B, TIER_B = "PlanFieldBBBBBBBBBB1", "TierFieldBBBBBBBBBB2"
V = {"Version": "2021-07-28"}

FIXTURE: dict[str, Any] = {
    "tokens": [
        {"token": TOKEN_A, "locationId": LOC_A, "scopes": SCOPES},
        {"token": TOKEN_B, "locationId": LOC_B, "scopes": SCOPES},
        {"token": NO_SCOPE, "locationId": LOC_A, "scopes": SCOPES[:3]},
    ],
    "locations": {
        # no definitions given: the sandbox seeds contact.plan (TEXT) and contact.score (NUMERICAL)
        LOC_A: {"contacts": [{"id": ADA, "email": "ada@example.com"}]},
        # its own definitions, other ids: the same fieldKey resolves to another id here
        LOC_B: {"customFields": [{"id": PLAN_B, "name": "Plan", "fieldKey": "contact.plan", "dataType": "TEXT"},
                                 {"id": TIER_B, "name": "Tier", "fieldKey": "contact.tier", "dataType": "TEXT"}],
                "contacts": [{"id": BEA, "email": "bea@example.com",
                              "customFields": [{"id": PLAN_B, "value": "silver"}]}]},
    },
}


@pytest.fixture
def base_url(serve: Callable[..., RunningServer], clock: FakeClock) -> str:
    app = create_app(copy.deepcopy(FIXTURE), rate_scale=100.0, seed=3, clock=clock, search_lag_s=0)
    return serve(app).base_url


def _http(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={**V, "Authorization": f"Bearer {token}"})


def _definitions(http: httpx.Client, location: str) -> dict[str, dict[str, Any]]:
    answer = http.get(f"/locations/{location}/customFields", params={"model": "contact"})
    assert answer.status_code == 200, answer.text
    return {d["fieldKey"]: d for d in answer.json()["customFields"]}


def test_definitions_per_location_in_the_spec_shape(base_url: str) -> None:
    with _http(base_url, TOKEN_A) as a, _http(base_url, TOKEN_B) as b:
        seeded, own = _definitions(a, LOC_A), _definitions(b, LOC_B)
        assert set(seeded) == {"contact.plan", "contact.score"}
        assert seeded["contact.plan"]["dataType"] == "TEXT" and seeded["contact.score"]["dataType"] == "NUMERICAL"
        assert all(set(d) >= {"id", "name", "fieldKey", "dataType", "locationId", "model"} for d in seeded.values())
        assert own["contact.plan"]["id"] == PLAN_B != seeded["contact.plan"]["id"]
        # another location's definitions are not this token's
        assert a.get(f"/locations/{LOC_B}/customFields").status_code == 403
    with _http(base_url, NO_SCOPE) as http:
        refused = http.get(f"/locations/{LOC_A}/customFields")
        assert refused.status_code == 401 and "scope" in refused.json()["message"]


def test_writes_are_stored_merged_by_id_and_read_back_in_both_shapes(base_url: str) -> None:
    with _http(base_url, TOKEN_A) as http:
        ids = {key: d["id"] for key, d in _definitions(http, LOC_A).items()}
        body = {"customFields": [{"id": ids["contact.plan"], "field_value": "gold"}]}
        assert http.put(f"/contacts/{ADA}", json=body).status_code == 200
        # a `key` (the fieldKey, with or without `contact.`) names a field too; others are left as they were
        assert http.put(f"/contacts/{ADA}", json={"customFields": [{"key": "score", "field_value": "7"}]}
                        ).status_code == 200
        got = http.get(f"/contacts/{ADA}").json()["contact"]["customFields"]
        assert sorted(got, key=lambda c: c["id"]) == sorted(
            [{"id": ids["contact.plan"], "value": "gold"}, {"id": ids["contact.score"], "value": "7"}],
            key=lambda c: c["id"])
        found = http.post("/contacts/search", json={"locationId": LOC_A, "pageLimit": 10}).json()["contacts"]
        assert {"id": ids["contact.plan"], "value": "gold"} in found[0]["customFields"]
        # an empty value clears the field
        http.put(f"/contacts/{ADA}", json={"customFields": [{"id": ids["contact.score"], "field_value": ""}]})
        assert http.get(f"/contacts/{ADA}").json()["contact"]["customFields"] == [
            {"id": ids["contact.plan"], "value": "gold"}]


def test_an_unknown_custom_field_is_refused_with_422_and_nothing_changes(base_url: str) -> None:
    with _http(base_url, TOKEN_A) as http:
        for item in ({"id": PLAN_B, "field_value": "gold"},  # location B's id, not A's
                     {"key": "contact.nowhere", "field_value": "x"}):
            answer = http.put(f"/contacts/{ADA}", json={"firstName": "Ada", "customFields": [item]})
            assert answer.status_code == 422, answer.text
            assert "is not a custom field of location" in " ".join(answer.json()["message"])
        contact = http.get(f"/contacts/{ADA}").json()["contact"]
        assert contact["customFields"] == [] and "firstName" not in contact
        created = http.post("/contacts/", json={"locationId": LOC_A, "email": "new@example.com",
                                                "customFields": [{"id": "NoSuchField000000001", "field_value": "1"}]})
        assert created.status_code == 422


class _Counting(httpx.AsyncHTTPTransport):
    """The real transport, keeping the path of every request sent."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


def test_the_connector_resolves_field_keys_per_location_once_a_client(base_url: str, tmp_path: Path) -> None:
    transport = _Counting()

    async def scenario() -> None:
        settings = Settings(ghl_base_url=base_url, ghl_token=TOKEN_B, data_dir=tmp_path)
        async with GHLClient.from_settings(settings, LOC_B, transport=transport) as client:
            keys = await client.custom_field_keys()
            assert keys == {PLAN_B: "contact.plan", TIER_B: "contact.tier"}
            assert await client.custom_field_id("contact.plan") == PLAN_B
            assert await client.custom_field_id("contact.score") is None  # not defined in this location
            row = contact_row(await client.get_contact(BEA), LOC_B, "US", keys)
            assert json.loads(row["custom"]) == {"contact.plan": "silver"}
            await client.update_contact(BEA, {"customFields": [{"id": TIER_B, "field_value": "A"}]})
            row = contact_row(await client.get_contact(BEA), LOC_B, "US", await client.custom_field_keys())
            assert json.loads(row["custom"]) == {"contact.plan": "silver", "contact.tier": "A"}
            with pytest.raises(Validation):
                await client.update_contact(BEA, {"customFields": [{"id": "NoSuchField000000001", "field_value": "1"}]})
        # the definitions were read once for all of the above (cached per client, so once a run and location)
        assert [p for p in transport.paths if p.endswith("/customFields")] == [f"/locations/{LOC_B}/customFields"]

    asyncio.run(scenario())
