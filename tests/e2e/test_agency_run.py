"""A run of an agency install against the sandboxes over HTTP (a real `recon run`, a real Prefect server): with no
explicit location ids it covers what `GET /oauth/installedLocations` lists, less what an UNINSTALL webhook retired,
plus what an INSTALL webhook brought back; explicit ids win and skip the listing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.store.db import db_path, open_db
from contact_recon.store.installs import record_install
from tests.support.worlds import LOOSE

Sandboxes = Callable[..., tuple[RunningServer, RunningServer]]
COMPANY = "AgencyCompany0000002"
SCOPES = ["contacts.readonly", "contacts.write", "locations/tasks.readonly", "oauth.readonly", "oauth.write"]


def log_of(server: RunningServer) -> list[dict[str, Any]]:
    return list(httpx.get(server.base_url + "/__sandbox/requests").json()["requests"])


def count(server: RunningServer, method: str, path: str) -> int:
    return sum(1 for r in log_of(server) if (r["method"], r["path"]) == (method, path))


def covered(data: Path) -> list[list[str]]:
    """Each reconcile run's locations, oldest first."""
    import polars as pl

    with open_db(db_path(data)) as store:
        runs = store.runs().filter(pl.col("kind") == "reconcile").sort("started_at")
    return [sorted(ids) for ids in runs["location_ids"].to_list()]


def test_an_agency_run_covers_the_installed_locations_less_the_retired(sandboxes: Sandboxes, tmp_path: Path,
                                                                      prefect_server: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = generate_fixture(30, seed=17, overlap=0.6, awkward=0.0, locations=2)
    ghl, te = sandboxes(fixture, rate_scale=50)
    first, second = sorted(fixture["ghl"]["locations"])
    second_ids = {c["id"] for c in fixture["ghl"]["locations"][second]["contacts"]}
    for location in (first, second):
        httpx.post(ghl.base_url + "/__sandbox/oauth/install", json={"companyId": COMPANY, "locationId": location,
                                                                    "installed": True}).raise_for_status()
    client = fixture["ghl"]["oauthClients"][0]
    (tmp_path / "policy.toml").write_text(LOOSE)
    for name in ("RECON_GHL_TOKEN", "RECON_GHL_LOCATION_IDS", "RECON_GHL_LOCATION_TOKENS", "RECON_GHL_TOKEN_BLOCK",
                 "RECON_TENANTS_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"RECON_GHL_BASE_URL": ghl.base_url, "RECON_GHL_CLIENT_ID": client["client_id"],
           "RECON_GHL_CLIENT_SECRET": client["client_secret"], "RECON_GHL_COMPANY_ID": COMPANY,
           "RECON_TINYEMAIL_BASE_URL": te.base_url + "/v1",
           "RECON_TINYEMAIL_API_KEY": fixture["tinyemail"]["apiKeys"][0],
           "RECON_DATA_DIR": str(tmp_path / "data"), "RECON_POLICY_FILE": str(tmp_path / "policy.toml"),
           "RECON_TINYEMAIL_RATE_PER_MINUTE": "3000", "RECON_GHL_RATE_SCALE": "50"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = httpx.post(ghl.base_url + "/__sandbox/oauth/code", json={"client_id": client["client_id"], "scopes": SCOPES,
                                                                    "userType": "Company", "companyId": COMPANY})
    auth = CliRunner().invoke(app, ["auth", "ghl", "--agency", "--code", code.json()["code"]])
    assert auth.exit_code == 0, auth.output
    # the UNINSTALL webhook of the second location came in (GHL still lists it: the webhook is ahead of the list)
    record_install(tmp_path / "data", installed=False, location_id=second, company_id=COMPANY,
                   at=datetime.now(UTC).isoformat())

    result = CliRunner().invoke(app, ["run", "--approve"])
    assert result.exit_code == 0, result.output
    assert covered(tmp_path / "data") == [[first]]
    assert count(ghl, "GET", "/oauth/installedLocations") == 1
    assert count(ghl, "POST", "/oauth/locationToken") == 1  # a token for the covered location only
    ghl_writes = [r for r in log_of(ghl) if r["method"] in ("PUT", "POST", "DELETE")
                  and r["path"].startswith("/contacts/") and not r["path"].startswith("/contacts/search")]
    assert ghl_writes, "the run wrote nothing to GHL"
    assert not [r for r in ghl_writes if r["path"].split("/")[2] in second_ids]  # retired: no write, data kept

    # an INSTALL webhook brings it back: the next run covers both
    record_install(tmp_path / "data", installed=True, location_id=second, company_id=COMPANY,
                   at=datetime.now(UTC).isoformat())
    again = CliRunner().invoke(app, ["run", "--dry-run"])
    assert again.exit_code == 0, again.output
    assert covered(tmp_path / "data")[-1] == sorted([first, second])
    assert count(ghl, "GET", "/oauth/installedLocations") == 2

    # explicit ids win: no listing at all
    monkeypatch.setenv("RECON_GHL_LOCATION_IDS", second)
    explicit = CliRunner().invoke(app, ["run", "--dry-run", "--approve"])
    assert explicit.exit_code == 0, explicit.output
    assert covered(tmp_path / "data")[-1] == [second]
    assert count(ghl, "GET", "/oauth/installedLocations") == 2
    for server in (ghl, te):  # no token ever refused
        assert not [r for r in log_of(server) if r["status"] in (401, 403)]
