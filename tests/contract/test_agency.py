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


# ------------------------------------------------------------------------------- across processes

MINTER = """
import asyncio, hashlib, sys, time
from pathlib import Path
import httpx
from contact_recon.settings import Settings
from contact_recon.systems.ghl.client import credentials_from_settings

location, barrier, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
settings = Settings()
credentials = credentials_from_settings(settings, location)

async def main() -> None:
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    token = await credentials.token()
    answer = httpx.post(settings.ghl_base_url + "/contacts/search", json={"locationId": location, "pageLimit": 1},
                        headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
    print(hashlib.sha256(token.encode()).hexdigest(), answer.status_code, credentials.mints)

asyncio.run(main())
"""


def authorize_agency(agency: dict[str, Any]) -> None:
    code = httpx.post(agency["url"] + "/__sandbox/oauth/code", json={"client_id": agency["client"]["client_id"],
                                                                     "scopes": SCOPES, "userType": "Company",
                                                                     "companyId": COMPANY}).json()["code"]
    result = CliRunner().invoke(app, ["auth", "ghl", "--agency", "--code", code], env=agency["env"])
    assert result.exit_code == 0, result.output


def test_two_processes_share_one_minted_location_token_until_it_expires(agency: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    """Two real processes need the same location's token at once: the mint is slowed, so without the token file
    and its lock both would mint. With them: one POST /oauth/locationToken reaches the sandbox, both processes
    use the same token, a later process reuses it from the file, and once it is about to expire one is minted
    again."""
    import hashlib
    import subprocess
    import sys
    from dataclasses import replace

    from contact_recon.systems.auth import FileTokenStore

    authorize_agency(agency)
    url, location = agency["url"], agency["locations"][0]
    httpx.post(url + "/__sandbox/faults", json={"faults": "latency=400ms"}).raise_for_status()
    before = posts(url, "/oauth/locationToken")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, **{k: v for k, v in agency["env"].items() if v}}
    for name in ("RECON_GHL_TOKEN_BLOCK", "RECON_GHL_TOKEN", "RECON_GHL_LOCATION_TOKENS"):
        env.pop(name, None)
    procs = [subprocess.Popen([sys.executable, "-c", MINTER, location, str(barrier), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    httpx.post(url + "/__sandbox/faults", json={"faults": ""}).raise_for_status()

    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    assert posts(url, "/oauth/locationToken") - before == 1  # one mint for both processes
    results = [out.split() for out, _ in outputs]
    assert sorted(int(mints) for _, _, mints in results) == [0, 1]  # one minted, the other read it
    assert [status for _, status, _ in results] == ["200", "200"]
    store = FileTokenStore(settings_of(agency).ghl_token_file_for(location))
    cached = store.load()
    assert cached is not None and cached.refresh_token == "" and cached.location_id == location
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert {digest for digest, _, _ in results} == {hashlib.sha256(cached.access_token.encode()).hexdigest()}
    for _, err in outputs:
        assert cached.access_token not in err

    async def later() -> tuple[str, int]:
        credentials = credentials_from_settings(settings_of(agency), location)
        assert isinstance(credentials, LocationFromCompany)
        return await credentials.token(), credentials.mints

    assert asyncio.run(later()) == (cached.access_token, 0)  # a later process: from the file, no mint
    assert posts(url, "/oauth/locationToken") - before == 1
    store.save(replace(cached, expires_at=cached.expires_at - 86_399 + 60))  # about to expire
    fresh, mints = asyncio.run(later())
    assert mints == 1 and fresh != cached.access_token and posts(url, "/oauth/locationToken") - before == 2
    assert store.load().access_token == fresh  # type: ignore[union-attr]
