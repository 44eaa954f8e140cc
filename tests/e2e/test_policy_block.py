"""The reconciliation policy as a Prefect block (contact_recon/systems/policy_block.py, policy_source.py), on the
session's Prefect server and both sandboxes.

A block saved by `recon policy push` and edited the way the Prefect UI edits it (a PATCH of the block document's
data, which the server stores without validating) changes the next run's plan, and every run records the
version it used (store, summary.json, report.html, `recon runs`); an invalid edit is stored by the server but
refused by the next run, before it plans, with the field named; `prefect block register -m` registers the type.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.model.policy import Policy
from contact_recon.systems.policy_block import BLOCK_TYPE_SLUG
from contact_recon.systems.policy_source import PolicyMissing, policy_version
from tests.support import REPO
from tests.support.servers import Sandboxes
from tests.support.worlds import World, awkward_fixture, planning_world


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path, prefect_server: str,  # noqa: F811
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The awkward fixture's world, its settings naming a block of its own (the server is the session's)."""
    for w in planning_world(sandboxes, tmp_path, *awkward_fixture()):
        name = f"policy-{uuid.uuid4().hex[:8]}"
        w.settings = w.settings.model_copy(update={"policy_block": name})
        for key, value in {**w.env(), "RECON_POLICY_BLOCK": name}.items():
            monkeypatch.setenv(key, value)
        yield w


def push(world: World) -> str:
    pushed = CliRunner().invoke(app, ["policy", "push"])
    assert pushed.exit_code == 0, pushed.output
    return pushed.output


def edit_in_ui(name: str, change: Any) -> dict[str, Any]:
    """What the UI's edit page does on Save: the whole form's values as the block document's new data
    (PATCH /block_documents/{id}, merge_existing_data false). Returns the data the server then holds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name=name, block_type_slug=BLOCK_TYPE_SLUG)
        data = dict(document.data)
        change(data)
        client.update_block_document(document.id, BlockDocumentUpdate(data=data, merge_existing_data=False))
        return dict(client.read_block_document_by_name(name=name, block_type_slug=BLOCK_TYPE_SLUG).data)


def first_name_ops(world: World, run_id: str) -> pl.DataFrame:
    plan = pl.read_parquet(world.settings.data_dir / "runs" / run_id / "plan.parquet")
    return plan.filter((pl.col("field") == "first_name") & pl.col("key").is_in(world.edited["renamed"]))


def test_a_policy_edited_as_a_block_changes_the_next_runs_plan(world: World) -> None:
    name = world.settings.policy_block
    assert name
    output = push(world)
    default = policy_version(Policy())
    assert f"policy {default} (block {BLOCK_TYPE_SLUG}/{name})" in output and "from defaults" in output

    first = world.reconcile(dry_run=True).summary
    assert first is not None
    assert (first["policy_version"], first["policy_source"]) == (default, f"block {BLOCK_TYPE_SLUG}/{name}")
    # names are settled by hand by default: the two renamed first names are conflicts, no op writes them
    assert first_name_ops(world, first["run_id"]).height == 0
    conflicts = pl.read_csv(world.settings.data_dir / "runs" / first["run_id"] / "conflicts.csv")
    assert set(conflicts.filter(pl.col("field") == "first_name")["key"]) == set(world.edited["renamed"])

    # the data lead sets first_name's tie-break to TinyEmail in the form
    stored = edit_in_ui(name, lambda data: data["fields"]["first_name"].update(tie_break="tinyemail"))
    assert stored["fields"]["first_name"]["tie_break"] == "tinyemail"
    edited = policy_version(Policy(fields={"first_name": {"tie_break": "tinyemail"}}))
    assert edited != default

    second = world.reconcile(dry_run=True).summary
    assert second is not None and second["policy_version"] == edited
    ops = first_name_ops(world, second["run_id"])
    assert set(ops["key"]) == set(world.edited["renamed"])
    assert set(ops["target"]) == {"ghl"} and set(ops["new"]) == {"Renamed"}
    conflicts = pl.read_csv(world.settings.data_dir / "runs" / second["run_id"] / "conflicts.csv")
    assert conflicts.filter(pl.col("field") == "first_name").height == 0

    # each run keeps the version it used: the store, summary.json, report.html and `recon runs`
    for summary, version in ((first, default), (second, edited)):
        run = world.store.get_run(summary["run_id"])
        assert (run["policy_version"], run["policy_source"]) == (version, f"block {BLOCK_TYPE_SLUG}/{name}")
        directory = world.settings.data_dir / "runs" / summary["run_id"]
        assert json.loads((directory / "summary.json").read_text())["policy_version"] == version
        assert f"policy {version} (block {BLOCK_TYPE_SLUG}/{name})" in (directory / "report.html").read_text()
    world.store.close()  # the CLI opens the store itself
    listed = CliRunner().invoke(app, ["runs"], env={"COLUMNS": "220"})
    assert listed.exit_code == 0 and default in listed.output and edited in listed.output, listed.output
    shown = CliRunner().invoke(app, ["policy", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["version"] == edited


def test_an_invalid_edit_is_stored_by_the_server_and_refused_by_the_run(world: World) -> None:
    from contact_recon.flows.reconcile import reconcile_flow

    name = world.settings.policy_block
    assert name
    push(world)
    # the server keeps what the form sent, valid or not (it does not check data against the block schema)
    stored = edit_in_ui(name, lambda data: data["guards"].update(field_updates="lots"))
    assert stored["guards"]["field_updates"] == "lots"
    runs_before = world.store.runs().height

    state = reconcile_flow(return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert f"policy block {BLOCK_TYPE_SLUG}/{name} is invalid" in message, message
    assert "guards.field_updates: Input should be a valid number" in message, message
    # refused before planning: no run was started, nothing was read from either system
    assert world.store.runs().height == runs_before
    assert world.requests(world.ghl) == [] and world.requests(world.te) == []

    shown = CliRunner().invoke(app, ["policy", "show"])
    assert shown.exit_code == 2 and "guards.field_updates" in shown.output, shown.output

    # a block that does not exist is named, and never replaced by the file or the defaults
    with pytest.raises(PolicyMissing, match=f"{BLOCK_TYPE_SLUG}/no-such-policy not found"):
        world.settings = world.settings.model_copy(update={"policy_block": "no-such-policy"})
        world.plan()
    assert world.store.runs().height == runs_before

    # pushing again does not replace the data lead's block unasked
    again = CliRunner().invoke(app, ["policy", "push"])
    assert again.exit_code == 1 and "--overwrite" in again.output, again.output
    replaced = CliRunner().invoke(app, ["policy", "push", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert CliRunner().invoke(app, ["policy", "show"]).exit_code == 0


def test_prefect_block_register_registers_the_block_type(prefect_server: str) -> None:  # noqa: F811
    registered = subprocess.run([sys.executable, "-m", "prefect", "block", "register", "-m",
                                 "contact_recon.systems.policy_block"], cwd=REPO, capture_output=True, text=True,
                                timeout=120, env={**_env(), "PREFECT_API_URL": prefect_server})
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "Recon Policy" in registered.stdout
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug(BLOCK_TYPE_SLUG)
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
    assert block_type.name == "Recon Policy"
    assert schema is not None and list(schema.fields["properties"]) == [
        "fields", "tags", "consent", "create", "delete", "tasks", "guards", "initial", "custom_fields"]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "PREFECT_"))} | {
        "PYTHONPATH": str(REPO)}
