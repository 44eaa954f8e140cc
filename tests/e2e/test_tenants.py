"""Tenants (RECON_TENANTS_FILE): two clients on two sandbox pairs reconciled by one `recon run`, each under its own
data dir with its own credentials, their writes disjoint; `recon doctor --tenant`; the file's refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.store.db import db_path, open_db
from contact_recon.tenants import TenantsError, owner_of_api_key, owner_of_location, tenants_of
from tests.support.worlds import LOOSE

Sandboxes = Callable[..., tuple[RunningServer, RunningServer]]


def tenant_table(name: str, ghl: RunningServer, te: RunningServer, fixture: dict[str, Any], root: Path) -> str:
    location = fixture["ghl"]["tokens"][0]["locationId"]
    return (f'[tenants.{name}]\nghl_base_url = "{ghl.base_url}"\nghl_token = "{fixture["ghl"]["tokens"][0]["token"]}"\n'
            f'ghl_location_ids = ["{location}"]\ntinyemail_base_url = "{te.base_url}/v1"\n'
            f'tinyemail_api_key = "{fixture["tinyemail"]["apiKeys"][0]}"\ndata_dir = "{root / name}"\n')


def writes(server: RunningServer) -> list[dict[str, Any]]:
    import httpx

    log = httpx.get(server.base_url + "/__sandbox/requests").json()["requests"]
    return [r for r in log if r["method"] != "GET" and not r["path"].endswith("/search")
            and not r["path"].startswith("/__sandbox")]


def test_two_tenants_on_two_sandbox_pairs_in_one_run(sandboxes: Sandboxes, tmp_path: Path, prefect_server: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fixtures = {"north": generate_fixture(30, seed=41, overlap=0.6, awkward=0.0),
                "south": generate_fixture(30, seed=42, overlap=0.6, awkward=0.0)}
    pairs = {name: sandboxes(fixture, rate_scale=50) for name, fixture in fixtures.items()}
    locations = {name: f["ghl"]["tokens"][0]["locationId"] for name, f in fixtures.items()}
    assert locations["north"] != locations["south"]
    (tmp_path / "policy.toml").write_text(LOOSE)
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("\n".join(tenant_table(name, *pairs[name], fixtures[name], tmp_path) for name in fixtures))
    for name in ("RECON_GHL_TOKEN", "RECON_GHL_LOCATION_IDS", "RECON_TINYEMAIL_API_KEY", "RECON_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"RECON_TENANTS_FILE": str(tenants), "RECON_POLICY_FILE": str(tmp_path / "policy.toml"),
                        "RECON_TINYEMAIL_RATE_PER_MINUTE": "3000", "RECON_GHL_RATE_SCALE": "50"}.items():
        monkeypatch.setenv(name, value)

    result = CliRunner().invoke(app, ["run", "--approve"])
    assert result.exit_code == 0, result.output
    assert "tenant north" in result.output and "tenant south" in result.output
    for name, (ghl, te) in pairs.items():
        assert writes(ghl) and writes(te), f"tenant {name} wrote nothing"
        with open_db(db_path(tmp_path / name)) as store:  # each tenant's own store, its own location only
            assert {loc for ids in store.runs()["location_ids"].to_list() for loc in ids} == {locations[name]}
            assert store.load_base().height > 0
    for ghl, te in pairs.values():  # no request was refused: no tenant's token ever reached the other's pair
        import httpx

        for server in (ghl, te):
            log = httpx.get(server.base_url + "/__sandbox/requests").json()["requests"]
            assert not [r for r in log if r["status"] in (401, 403)]

    settings = Settings(tenants_file=tenants)
    every = tenants_of(settings)
    assert owner_of_location(every, locations["south"]) == "south"
    assert owner_of_location(every, "NoSuchLocation000001") is None
    assert owner_of_api_key(every, fixtures["north"]["tinyemail"]["apiKeys"][0]) == "north"

    one = CliRunner().invoke(app, ["run", "--tenant", "south", "--dry-run"])
    assert one.exit_code == 0 and "tenant north" not in one.output, one.output
    doctor = CliRunner().invoke(app, ["doctor", "--tenant", "north"])
    assert doctor.exit_code == 0, doctor.output
    unknown = CliRunner().invoke(app, ["doctor", "--tenant", "west"])
    assert unknown.exit_code == 1 and "no tenant 'west'" in unknown.output


def test_tenants_that_would_share_a_data_dir_or_a_location_are_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared.toml"
    shared.write_text('[tenants.a]\nghl_location_ids = "L1"\n[tenants.b]\nghl_location_ids = "L2"\n')
    with pytest.raises(TenantsError, match="share a data dir"):  # both fall back to the environment's data dir
        tenants_of(Settings(_env_file=None, tenants_file=shared))
    location = tmp_path / "location.toml"
    location.write_text(f'[tenants.a]\nghl_location_ids = "L1"\ndata_dir = "{tmp_path / "a"}"\n'
                        f'[tenants.b]\nghl_location_ids = "L1"\ndata_dir = "{tmp_path / "b"}"\n')
    with pytest.raises(TenantsError, match="share a GHL location"):
        tenants_of(Settings(_env_file=None, tenants_file=location))
    typo = tmp_path / "typo.toml"
    typo.write_text('[tenants.a]\nRECON_DATA_DIR = "x"\n')
    with pytest.raises(TenantsError, match="unknown keys"):
        tenants_of(Settings(_env_file=None, tenants_file=typo))


def test_the_nightly_fans_out_one_flow_run_per_tenant(tmp_path: Path, prefect_server: str) -> None:  # noqa: F811
    import uuid

    from contact_recon.flows.reconcile import fan_out
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.north]\nghl_location_ids = "L-north"\ndata_dir = "{tmp_path / "north"}"\n'
                       f'[tenants.south]\nghl_location_ids = "L-south"\ndata_dir = "{tmp_path / "south"}"\n')
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("reconcile")
        deployment_id = client.create_deployment(flow_id=flow_id, name=f"fan-out-{uuid.uuid4().hex[:8]}")
    answer = fan_out(Settings(_env_file=None, tenants_file=tenants), str(deployment_id),
                     {"dry_run": False, "approve": False})
    assert answer["status"] == "fanned-out" and set(answer["tenants"]) == {"north", "south"}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                     flow_run_filter=FlowRunFilter())
    assert sorted(run.parameters["tenant"] for run in runs) == ["north", "south"]
    assert {str(run.id) for run in runs} == set(answer["tenants"].values())
    assert all(run.parameters["dry_run"] is False for run in runs)


def test_commands_on_a_data_dir_act_on_the_tenant_they_are_given(sandboxes: Sandboxes, tmp_path: Path,
                                                                 prefect_server: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`recon approve --tenant NAME` (and runs, report, quarantine, ...) read and write that tenant's store, run
    files and systems: a run held in south is unknown to the RECON_* data dir and to north, and approved in south
    it writes to south's pair only."""
    import re

    import httpx

    fixtures = {"north": generate_fixture(30, seed=43, overlap=0.6, awkward=0.0),
                "south": generate_fixture(30, seed=44, overlap=0.6, awkward=0.0)}
    pairs = {name: sandboxes(fixture, rate_scale=50) for name, fixture in fixtures.items()}
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("\n".join(tenant_table(name, *pairs[name], fixtures[name], tmp_path) for name in fixtures))
    monkeypatch.chdir(tmp_path)  # the RECON_* data dir (./data) is this test's too
    for name in ("RECON_GHL_TOKEN", "RECON_GHL_LOCATION_IDS", "RECON_TINYEMAIL_API_KEY", "RECON_DATA_DIR",
                 "RECON_POLICY_FILE", "RECON_POLICY_BLOCK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"RECON_TENANTS_FILE": str(tenants), "RECON_TINYEMAIL_RATE_PER_MINUTE": "3000",
                        "RECON_GHL_RATE_SCALE": "50"}.items():
        monkeypatch.setenv(name, value)
    cli = CliRunner()

    held = cli.invoke(app, ["run", "--tenant", "south"])  # the default policy: a first run trips a guard
    assert held.exit_code == 3, held.output
    match = re.search(r"^run (\S+)$", held.output, re.MULTILINE)
    assert match is not None, held.output
    run_id = match.group(1)
    assert not writes(pairs["south"][0]) and not writes(pairs["south"][1])  # held: nothing written yet

    south_runs = cli.invoke(app, ["runs", "--tenant", "south"]).output
    assert "reconc" in south_runs and "held" in south_runs, south_runs  # the table wraps the id: its kind, status
    north_runs = cli.invoke(app, ["runs", "--tenant", "north"])
    assert north_runs.exit_code == 1 and str(tmp_path / "north") in north_runs.output, north_runs.output  # none ran
    unknown = cli.invoke(app, ["runs", "--tenant", "west"])
    assert unknown.exit_code == 2 and "no tenant 'west'" in unknown.output
    elsewhere = cli.invoke(app, ["approve", run_id])  # the RECON_* data dir knows no such run
    assert elsewhere.exit_code == 1, elsewhere.output
    assert cli.invoke(app, ["approve", run_id, "--tenant", "north"]).exit_code == 1

    approved = cli.invoke(app, ["approve", run_id, "--tenant", "south"])
    assert approved.exit_code == 0, approved.output
    assert writes(pairs["south"][0]) and writes(pairs["south"][1])
    for server in pairs["north"]:  # north's pair saw no request at all
        assert not [r for r in httpx.get(server.base_url + "/__sandbox/requests").json()["requests"]
                    if not r["path"].startswith("/__sandbox")]
    with open_db(db_path(tmp_path / "south")) as store:
        assert store.get_run(run_id)["status"] == "completed"
    report = cli.invoke(app, ["report", run_id, "--tenant", "south", "--json"])
    assert report.exit_code == 0 and run_id in report.output, report.output
    assert cli.invoke(app, ["report", run_id, "--tenant", "north", "--json"]).exit_code != 0
    quarantine = cli.invoke(app, ["quarantine", "list", "--tenant", "south", "--json"])
    assert quarantine.exit_code == 0, quarantine.output
