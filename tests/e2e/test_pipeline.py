"""The planning pipeline (contact_recon/stages/plan.py) and `recon plan` / `recon mapping` / `recon approve`, against
both sandboxes over HTTP.

A plan reads both systems and writes to neither (judged by each sandbox's request log and state), its files
match what it returned, a plan beyond the guards is held until approved, re-planning with no change gives the
same op ids, quarantined ops name the expectation that held them, and the commands exit 0 / 3 / 1.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.engine.conflicts import CSV_SCHEMA
from contact_recon.model.cells import unguarded
from contact_recon.model.ops import CONFLICTS_SCHEMA
from contact_recon.model.policy import Policy, load_policy
from contact_recon.stages.plan import (
    GUARD_EXPECTATION,
    NoSnapshot,
    load_plan,
    ops_to_apply,
)
from contact_recon.store.db import open_db
from tests.support.servers import Sandboxes
from tests.support.worlds import LOOSE_GUARDS, World, awkward_fixture, planning_world, run_cli, table_rows


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path) -> Iterator[World]:
    yield from planning_world(sandboxes, tmp_path, *awkward_fixture())


def is_read(request: dict[str, Any]) -> bool:
    return request["method"] == "GET" or (request["method"] == "POST" and request["path"].endswith("/search"))


# ------------------------------------------------------------------------------------------ tests


def test_a_plan_reads_both_systems_and_writes_to_neither(world: World) -> None:
    before = (world.state(world.ghl), world.state(world.te))
    result = world.plan()

    ghl_requests, te_requests = world.requests(world.ghl), world.requests(world.te)
    assert ghl_requests and te_requests
    assert [r for r in ghl_requests + te_requests if not is_read(r)] == []
    assert {r["path"] for r in ghl_requests if r["method"] == "POST"} == {
        "/contacts/search", f"/locations/{world.location}/tasks/search"}
    assert (world.state(world.ghl), world.state(world.te)) == before
    # the plan wants writes in both directions: the dry run held them all back
    assert set(result.plan["target"]) == {"ghl", "tinyemail"} and result.plan.height > 20
    # nor did the dry run move the synchronisation state
    assert world.store.load_base().height == 0
    assert world.store.load_id_map().height == 0


def test_the_plan_files_match_the_result_and_the_run_records_it(world: World) -> None:
    result = world.plan()

    assert result.plan_path == world.settings.data_dir / "runs" / result.run_id / "plan.parquet"
    assert_frame_equal(pl.read_parquet(result.plan_path), result.plan)
    assert_frame_equal(load_plan(world.settings.data_dir, result.run_id), result.plan)
    written = pl.read_csv(result.conflicts_path, schema=CSV_SCHEMA)
    # as the plan has them, once the guard is undone, with who and since when (engine/conflicts.py)
    assert_frame_equal(unguarded(written).select(list(CONFLICTS_SCHEMA)), result.conflicts)
    assert not written.select(pl.concat_list(pl.col(pl.String)).explode()).filter(  # and nothing a sheet would run
        pl.first().str.contains(r"^[=+\-@\t\r]")).height
    # the two renamed first names are conflicts for the data team (names are settled by hand)
    renamed = result.conflicts.filter(pl.col("field") == "first_name")
    assert set(renamed["key"]) == set(world.edited["renamed"]) and set(renamed["tinyemail"]) == {"Renamed"}
    run = world.store.get_run(result.run_id)
    assert run["kind"] == "plan" and run["status"] == result.status
    recorded = json.loads(run["plan_json"])
    assert recorded["ops"] == result.plan.height and recorded["conflicts"] == result.conflicts.height
    assert recorded["quarantined"] == result.quarantined.height > 0
    assert recorded["snapshot_run_id"] == result.snapshot_run_id
    assert world.store.get_run(result.snapshot_run_id)["status"] == "succeeded"
    checks = world.store.load_check_results(result.run_id)
    assert checks.height == len(result.checks.results) > 0


def test_a_plan_beyond_the_guards_is_held_until_recon_approve(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    result = world.plan()

    assert result.status == "held" and not result.approved
    assert any(r.startswith("field_updates: ") for r in result.held_reasons), result.held_reasons
    run = world.store.get_run(result.run_id)
    assert run["status"] == "held" and run["held_reasons"] == list(result.held_reasons) and run["approved_at"] is None
    # every field update waits for the approval, held back by the guard expectation
    updates = result.plan.filter(pl.col("kind") == "update")
    assert updates.height > 0 and set(updates["status"]) == {"quarantined"}
    assert all(GUARD_EXPECTATION in names.split(",") for names in updates["quarantined_by"])
    assert ops_to_apply(result.plan, approved=False).filter(pl.col("kind") == "update").height == 0

    runner = CliRunner()
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    approved = runner.invoke(app, ["approve", result.run_id])
    assert approved.exit_code == 0, approved.output
    assert result.run_id in approved.output and "field_updates" in approved.output and "update" in approved.output
    run = world.store.get_run(result.run_id)
    assert run["status"] == "approved" and run["approved_at"] is not None
    released = ops_to_apply(result.plan, approved=True)
    only_guard = updates.filter(pl.col("quarantined_by") == GUARD_EXPECTATION)
    assert only_guard.height > 0 and set(only_guard["op_id"]) <= set(released["op_id"])
    # a bad record stays quarantined whatever is approved
    assert not set(released["quarantined_by"].drop_nulls()) - {GUARD_EXPECTATION}

    again = runner.invoke(app, ["approve", result.run_id])
    assert again.exit_code == 1 and "approved, not held" in again.output
    unknown = runner.invoke(app, ["approve", "no-such-run"])
    assert unknown.exit_code == 1 and "unknown run 'no-such-run'" in unknown.output
    assert "Traceback" not in again.output + unknown.output


def test_approving_up_front_plans_the_guarded_ops(world: World) -> None:
    result = world.plan(approve=True)

    assert result.status == "planned" and result.approved and result.held_reasons
    assert GUARD_EXPECTATION not in ",".join(result.plan["quarantined_by"].drop_nulls())
    assert result.plan.filter((pl.col("kind") == "update") & (pl.col("status") == "planned")).height > 0
    run = world.store.get_run(result.run_id)
    assert run["status"] == "planned" and run["approved_at"] is not None


def test_planning_again_with_no_change_gives_the_same_op_ids(world: World) -> None:
    first = world.plan()
    second = world.plan()  # a fresh snapshot of unchanged systems, e.g. after a crash

    assert second.run_id != first.run_id and second.snapshot_run_id != first.snapshot_run_id
    assert second.plan["op_id"].to_list() == first.plan["op_id"].to_list()
    assert_frame_equal(second.plan, first.plan)
    assert_frame_equal(second.conflicts, first.conflicts)
    reused = world.plan(reuse_snapshot=True)
    assert reused.snapshot_run_id is None and reused.plan["op_id"].to_list() == first.plan["op_id"].to_list()


def test_quarantined_ops_carry_the_expectation_that_held_them(world: World) -> None:
    result = world.plan(approve=True)  # approved: only bad records are quarantined

    failed = {r.qualified for r in result.checks.blocking_failures}
    quarantined = result.quarantined
    assert quarantined.height > 0
    for names in quarantined["quarantined_by"]:
        assert set(names.split(",")) <= failed
    # the contact whose phone is not a phone: nothing is copied to it or from it
    bad = result.plan.filter(pl.col("key") == world.edited["bad_phone"][0])
    assert bad.height > 0 and set(bad["status"]) == {"quarantined"}
    assert all("ghl_contacts.phone_e164" in names.split(",") for names in bad["quarantined_by"])
    # the generator's invalid emails are caught by email_syntax
    assert {"ghl_contacts.email_syntax", "te_customers.email_syntax"} & failed


def test_reusing_a_snapshot_that_does_not_exist_fails_the_run(world: World) -> None:
    with pytest.raises(NoSnapshot, match="no snapshot to reuse"):
        world.plan(reuse_snapshot=True)
    run = world.store.runs().row(-1, named=True)
    assert run["kind"] == "plan" and run["status"] == "failed" and "no snapshot to reuse" in run["error"]
    assert world.requests(world.ghl) == [] and world.requests(world.te) == []


def test_recon_mapping_prints_every_field_of_the_policy(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[fields.phone]\nowner = "ghl"\n[fields.city]\nenabled = false\n', encoding="utf-8")
    policy = load_policy(policy_file)
    assert policy != Policy()

    shown = run_cli("mapping", "--policy", str(policy_file), env={"RECON_DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    rows = table_rows(shown.stdout)
    for rule in policy.fields.values():
        assert rule.canonical in rows, f"no row for {rule.canonical}"
        assert rows[rule.canonical][1:3] == [rule.ghl, rule.tinyemail]
    assert {"email", "tags", "lists", "consent"} <= set(rows)
    assert rows["phone"][3] == "ghl" and "GHL -> TinyEmail" in rows["phone"][6]
    assert rows["city"][3] == "disabled" and rows["city"][6] == "not synced"
    # the same file through RECON_POLICY_FILE
    by_env = run_cli("mapping", env={"RECON_DATA_DIR": str(tmp_path), "RECON_POLICY_FILE": str(policy_file)},
                     cwd=tmp_path)
    assert by_env.stdout == shown.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('[fields.no_such_field]\nowner = "ghl"\n', encoding="utf-8")
    broken = run_cli("mapping", "--policy", str(bad), env={"RECON_DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert broken.returncode == 2 and "no_such_field" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1 and "Traceback" not in broken.stderr


def recon(world: World, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={**world.env(), **env}, cwd=world.settings.data_dir)


def assert_clean(text: str, world: World, *also: str) -> None:
    assert "Traceback" not in text
    for secret in [*world.secrets(), *also]:
        assert secret not in text


def test_recon_plan_exits_3_when_a_guard_holds_the_run(world: World) -> None:
    world.store.close()  # the command opens the store itself (one process at a time)
    held = recon(world, "plan")
    assert held.returncode == 3, held.stdout + held.stderr
    run_id = held.stdout.split()[1].rstrip(":")
    with open_db(world.settings.data_dir / "recon.duckdb") as store:
        run = store.get_run(run_id)
    assert run["status"] == "held" and run["held_reasons"]
    for reason in run["held_reasons"]:
        assert f"held: {reason}" in held.stdout
    assert f"recon approve {run_id}" in held.stdout
    for kind in ("update", "tag_add", "create"):
        assert f" {kind} " in held.stdout
    marked = load_plan(world.settings.data_dir, run_id)
    conflicts = pl.read_csv(world.settings.data_dir / "runs" / run_id / "conflicts.csv", schema=CSV_SCHEMA)
    assert conflicts.height >= 2 and f"conflicts: {conflicts.height} " in held.stdout
    quarantined = marked.filter(pl.col("status") == "quarantined").height
    assert quarantined > 0 and f"quarantined: {quarantined} ops (" in held.stdout
    assert f"plan: {world.settings.data_dir / 'runs' / run_id / 'plan.parquet'}" in held.stdout
    assert_clean(held.stdout + held.stderr, world)


def test_recon_plan_exits_0_when_planned_and_1_when_it_fails(world: World, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    world.store.close()
    loose = tmp_path / "loose.toml"
    loose.write_text(LOOSE_GUARDS, encoding="utf-8")
    planned = recon(world, "plan", RECON_POLICY_FILE=str(loose))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert planned.stdout.splitlines()[0].endswith(": planned") and " update " in planned.stdout
    assert_clean(planned.stdout + planned.stderr, world)

    wrong_key = "sbx-te-wrong-key-0000000000"
    for name, value in {**world.env(), "RECON_TINYEMAIL_API_KEY": wrong_key}.items():
        monkeypatch.setenv(name, value)
    failed = CliRunner().invoke(app, ["plan"])
    assert failed.exit_code == 1
    lines = failed.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: plan failed: SnapshotFailed: snapshot of tinyemail failed")
    assert_clean(failed.output, world, wrong_key)
    with open_db(world.settings.data_dir / "recon.duckdb") as store:
        assert store.runs().filter(pl.col("kind") == "plan")["status"].to_list() == ["planned", "failed"]


# ------------------------------------------------------------------------------------------ search lag

SEARCH_LAG_S = 60.0  # longer than the test: nothing it writes reaches GHL's search while it runs


def test_the_pipeline_converges_with_no_duplicate_while_search_lags_writes(sandboxes: Sandboxes,
                                                                          tmp_path: Path) -> None:
    from contact_recon.sandbox.generate import generate_fixture
    from contact_recon.stages.run import reconcile, sync
    from tests.support.worlds import RATE_SCALE, duplicates, ghl_people, loose_policy, make_settings, te_people

    fixture = generate_fixture(50, seed=23, overlap=0.5, awkward=0.0)
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE, search_lag_s=SEARCH_LAG_S)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    world = World(fixture, ghl, te, settings, None, loose_policy(tmp_path))  # type: ignore[arg-type]
    location = world.location

    def run() -> Any:
        return reconcile(settings, None, locations=[location], approve=True, policy=world.policy, docs=False,
                         ghl_client=world.ghl_client, tinyemail_client=world.te_client)

    def search_ids() -> set[str]:
        async def listing() -> set[str]:
            async with world.ghl_client(location) as client:
                return {c.id async for c in client.iter_contacts()}
        import asyncio
        return asyncio.run(listing())

    first = run()
    assert first.status == "completed" and first.plan is not None
    created = first.plan.plan.filter((pl.col("kind") == "create") & (pl.col("target") == "ghl")).height
    assert created > 0  # TinyEmail-only people became contacts, which search will not show for a minute
    with open_db(settings.data_dir / "recon.duckdb") as store:
        new_ids = set(store.load_id_map()["contact_id"]) - {c["id"] for c in fixture["ghl"]["locations"][location][
            "contacts"]}
    assert len(new_ids) == created and not new_ids & search_ids()  # the lag is on

    offset = len(world.requests(ghl))
    second = run()  # seconds later
    assert second.status == "completed" and second.plan is not None
    gets = {r["path"].split("/")[2] for r in world.requests(ghl)[offset:]
            if r["method"] == "GET" and r["path"].count("/") == 2 and r["path"].startswith("/contacts/")}
    assert new_ids <= gets  # missing from search, confirmed by GET: present, not deleted
    planned = second.plan.plan.filter(pl.col("status") == "planned")
    assert planned.height == 0, planned.select("kind", "target", "field", "reason").to_dicts()  # converged
    assert duplicates(world.state(ghl)) == {}
    assert len(world.state(ghl)["locations"][location]["contacts"]) == len(
        fixture["ghl"]["locations"][location]["contacts"]) + created
    with open_db(settings.data_dir / "recon.duckdb") as store:
        assert set(store.latest_snapshot("ghl_contacts", location)["contact_id"]) >= new_ids

    # sync-contact right after a write: read by id, never through the lagging search
    people = te_people(world.state(te))
    contact = next(c for c in world.state(ghl)["locations"][location]["contacts"]
                   if (c.get("email") or "").strip().lower() in people)
    headers = {"Authorization": f"Bearer {fixture['ghl']['tokens'][0]['token']}", "Version": "2021-07-28"}
    httpx.put(ghl.base_url + f"/contacts/{contact['id']}", headers=headers,
              json={"city": "Written Just Now"}).raise_for_status()
    result = sync(settings, contact_id=contact["id"], location_id=location, ghl_client=world.ghl_client,
                  tinyemail_client=world.te_client)
    assert result["status"] == "completed", result
    customer = next(c for c in world.state(te)["customers"]
                    if c["email"].strip().lower() == contact["email"].strip().lower())
    assert customer["city"] == "Written Just Now"
    assert duplicates(world.state(ghl)) == {} and len(ghl_people(world.state(ghl))) == len(
        world.state(ghl)["locations"][location]["contacts"])
