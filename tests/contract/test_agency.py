"""An agency install end to end against the GHL sandbox over HTTP: `recon auth ghl --agency` stores the Company
pair, the installed locations are listed, each location's token is minted from it, cached until it expires and
minted again, and an uninstalled location gets no token (retired)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.settings import Settings
from contact_recon.systems.errors import AuthError
from contact_recon.systems.ghl.agency import LocationFromCompany, installed_locations
from contact_recon.systems.ghl.client import company_oauth, credentials_from_settings

COMPANY = "AgencyCompany0000001"
SCOPES = ["contacts.readonly", "contacts.write", "locations/tasks.readonly", "oauth.readonly", "oauth.write"]


@pytest.fixture
def agency(sandboxes: Any, tmp_path: Path) -> dict[str, Any]:
    """A GHL sandbox whose app is installed on two locations of one company, and an agency's settings."""
    fixture = generate_fixture(10, seed=5, locations=2)
    server, _ = sandboxes(fixture, rate_scale=20)
    locations = sorted(fixture["ghl"]["locations"])
    assert len(locations) == 2
    client = fixture["ghl"]["oauthClients"][0]
    for location in locations:
        install(server.base_url, location, True)
    env = {"RECON_GHL_BASE_URL": server.base_url, "RECON_GHL_CLIENT_ID": client["client_id"],
           "RECON_GHL_CLIENT_SECRET": client["client_secret"], "RECON_DATA_DIR": str(tmp_path),
           "RECON_GHL_TOKEN_BLOCK": "", "RECON_GHL_TOKEN": "", "RECON_GHL_COMPANY_ID": COMPANY}
    return {"url": server.base_url, "client": client, "locations": locations, "env": env, "data": tmp_path}


def install(url: str, location: str, installed: bool) -> None:
    httpx.post(url + "/__sandbox/oauth/install", json={"companyId": COMPANY, "locationId": location,
                                                       "installed": installed}).raise_for_status()


def posts(url: str, path: str) -> int:
    log = httpx.get(url + "/__sandbox/requests").json()["requests"]
    return sum(1 for r in log if (r["method"], r["path"]) == ("POST", path))


def settings_of(agency: dict[str, Any]) -> Settings:
    return Settings(**{k.removeprefix("RECON_").lower(): v for k, v in agency["env"].items() if v})


def test_agency_install_end_to_end(agency: dict[str, Any]) -> None:
    url = agency["url"]
    code = httpx.post(url + "/__sandbox/oauth/code", json={"client_id": agency["client"]["client_id"],
                                                           "scopes": SCOPES, "userType": "Company",
                                                           "companyId": COMPANY}).json()["code"]
    result = CliRunner().invoke(app, ["auth", "ghl", "--agency", "--code", code], env=agency["env"])
    assert result.exit_code == 0, result.output
    assert f"company {COMPANY}" in result.output
    company_file = agency["data"] / "secrets" / "ghl" / f"company-{COMPANY}.json"
    assert stat.S_IMODE(os.stat(company_file).st_mode) == 0o600
    settings = settings_of(agency)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            # list: the locations come from GET /oauth/installedLocations
            found = await installed_locations(company_oauth(settings, COMPANY), url, COMPANY, settings.ghl_app, http)
            assert [loc.location_id for loc in found] == agency["locations"]
            first = agency["locations"][0]
            # mint: each location's credentials mint its own token from the Company pair
            now = [1e9]
            credentials = credentials_from_settings(settings, first)
            assert isinstance(credentials, LocationFromCompany)
            credentials.clock = lambda: now[0]
            before = posts(url, "/oauth/locationToken")
            token = await credentials.token()
            assert await credentials.token() == token  # cached: no second mint
            assert posts(url, "/oauth/locationToken") - before == 1
            search = await http.post(url + "/contacts/search", json={"locationId": first, "pageLimit": 1},
                                     headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
            assert search.status_code == 200
            # expiry: past its expiry (less the margin) the token is minted again
            now[0] += 86_399 - 200
            again = await credentials.token()
            assert again != token and posts(url, "/oauth/locationToken") - before == 2
            # uninstall: the location leaves the list and gets no token any more
            install(url, first, False)
            found = await installed_locations(company_oauth(settings, COMPANY), url, COMPANY, settings.ghl_app, http)
            assert [loc.location_id for loc in found] == agency["locations"][1:]
            with pytest.raises(AuthError, match="not installed"):
                await credentials_from_settings(settings, first).token()

    asyncio.run(scenario())
    assert COMPANY in company_file.read_text() and "access_token" in company_file.read_text()
