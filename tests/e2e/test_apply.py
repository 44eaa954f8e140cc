"""The apply stage (contact_recon/stages/apply.py, contact_recon/store/journal.py, contact_recon/engine/state.py,
contact_recon/stages/run.py) against both sandboxes.

A real reconciliation converges both systems (a second plan is empty but for the conflicts), a day of drift
is carried across, a person's edit between snapshot and apply survives, quarantined records get no write,
rejections keep the API's message and are not re-sent, and write faults (5xx applied or not, resets) make
no duplicate and lose nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest

from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.stages.plan import plan_run
from contact_recon.store.db import open_db
from contact_recon.store.journal import Journal
from tests.support.chaos import disagreements
from tests.support.worlds import World, duplicates, ghl_people, loose_policy, make_settings, te_people

SHARED = ("first", "last", "company")


def fixture_for(n: int = 40, seed: int = 5, awkward: float = 0.0) -> dict:
    return generate_fixture(n, seed=seed, overlap=0.6, awkward=awkward)


@pytest.fixture
def world_of(sandboxes: Callable[..., tuple[RunningServer, RunningServer]],
             tmp_path: Path) -> Iterator[Callable[..., World]]:
    stores = []

    def make(fixture: dict, **options: object) -> World:
        ghl, te = sandboxes(fixture, rate_scale=50, **options)
        settings = make_settings(ghl, te, fixture, tmp_path / f"data{len(stores)}")
        store = open_db(settings.data_dir / "recon.duckdb")
        stores.append(store)
        return World(fixture, ghl, te, settings, store, loose_policy(tmp_path))

    yield make
    for store in stores:
        store.close()


def test_a_reconciliation_converges_and_the_next_plan_is_empty(world_of: Callable[..., World]) -> None:
    world = world_of(fixture_for())
    first = world.reconcile()

    assert first.status == "completed", first.error
    assert first.journal.get("done", 0) > 20 and first.journal.get("failed", 0) == 0, first.journal
    ghl, te = ghl_people(world.state(world.ghl)), te_people(world.state(world.te))
    # every person with an email is now on both sides
    assert {e for e in ghl if "@" in e} == set(te)
    assert duplicates(world.state(world.ghl)) == {}
    second = world.reconcile()
    assert second.status == "completed"
    assert second.plan is not None
    left = second.plan.plan.filter(pl.col("kind") != "identity_review")
    assert left.height == 0, left.select("target", "kind", "key", "field", "reason", "status").rows()[:10]


def test_a_day_of_drift_is_carried_across(world_of: Callable[..., World]) -> None:
    world = world_of(fixture_for(seed=8))
    assert world.reconcile().status == "completed"
    report = world.drift(30, seed=4)
    assert report["changes"] == 30

    second = world.reconcile()
    failed = Journal(world.store).frame(second.run_id).filter(pl.col("status") == "failed")
    assert second.status == "completed" and failed.height == 0, failed.select("error_kind", "last_error").rows()
    third = world.reconcile()
    assert third.plan is not None
    left = third.plan.plan.filter(pl.col("kind") != "identity_review")
    assert left.height == 0, left.select("target", "kind", "key", "field", "reason", "status").rows()[:10]
    # conflicts (both sides edited one field) stay for the data team; everything else agrees, field by field
    assert duplicates(world.state(world.ghl)) == {}
    reviews = third.plan.plan.filter(pl.col("kind") == "identity_review")  # people held for an identity decision
    pending = {e for e in [*reviews["expected"], *reviews["new"]] if e and "@" in e}
    differ = disagreements(world.state(world.ghl), world.state(world.te), third.plan.conflicts, world.policy,
                           pending=pending)
    assert differ == [], f"the systems disagree (email, field, GHL, TinyEmail) outside the conflicts: {differ}"


def test_a_persons_edit_between_snapshot_and_apply_survives(world_of: Callable[..., World]) -> None:
    fixture = fixture_for(seed=9)
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    customers = {c["email"]: c for c in fixture["tinyemail"]["customers"]}
    person = next(c for c in contacts if c.get("email") in customers)
    person["city"] = ""  # GHL blank, TinyEmail has a city: the plan fills GHL
    customers[person["email"]]["city"] = "Springfield From TinyEmail"
    world = world_of(fixture)
    planned = plan_run(world.settings, world.store, locations=[world.location], policy=world.policy, docs=False,
                       ghl_client=world.ghl_client, tinyemail_client=world.te_client)
    fill = planned.plan.filter((pl.col("key") == person["id"]) & (pl.col("field") == "city"))
    assert fill.height == 1 and fill["target"][0] == "ghl"
    # a person types another company into GHL after the snapshot
    token = fixture["ghl"]["tokens"][0]["token"]
    answer = httpx.put(f"{world.ghl.base_url}/contacts/{person['id']}", json={"city": "Typed By Hand"},
                       headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
    assert answer.status_code == 200, answer.text

    outcome = world.apply(planned.run_id)

    assert outcome.status == "completed"
    row = Journal(world.store).frame(planned.run_id).filter(pl.col("op_id") == fill["op_id"][0]).to_dicts()[0]
    assert row["status"] == "stale" and row["error_kind"] == "precondition"
    contact = next(c for c in next(iter(world.state(world.ghl)["locations"].values()))["contacts"]
                   if c["id"] == person["id"])
    assert contact["city"] == "Typed By Hand"
    # the base did not take the stale op's value: the next run sees the difference again
    base = world.store.load_base().filter(pl.col("key") == person["id"])
    assert base["city"][0] != "Springfield From TinyEmail"


def test_write_faults_make_no_duplicate_and_lose_nothing(world_of: Callable[..., World]) -> None:
    world = world_of(fixture_for(60, seed=12), faults="5xx=0.15,applied_5xx=0.5,reset=0.05", seed=3)
    outcomes = [world.reconcile() for _ in range(3)]

    assert all(o.status == "completed" for o in outcomes), [o.error for o in outcomes]
    # the faults did hit writes: some ops needed a re-read and another attempt
    resent = world.store.con.execute("SELECT count(*) FROM journal WHERE attempts > 1").fetchall()[0][0]
    assert resent > 0
    assert duplicates(world.state(world.ghl)) == {}
    last = world.reconcile()
    left = last.plan.plan.filter(pl.col("kind") != "identity_review") if last.plan else None
    assert left is not None and left.height == 0, left.to_dicts()[:5] if left is not None else None
    ghl, te = ghl_people(world.state(world.ghl)), te_people(world.state(world.te))
    assert {e for e in ghl if "@" in e} == set(te)


def test_records_failing_a_blocking_check_get_no_write_in_either_direction(world_of: Callable[..., World]) -> None:
    """The generator's awkward records (bad emails and phones, huge notes...) are quarantined, and a real
    reconciliation leaves both systems' copies of them exactly as they were."""
    world = world_of(fixture_for(60, seed=14, awkward=0.3))
    before_ghl, before_te = world.state(world.ghl), world.state(world.te)

    outcome = world.reconcile()

    assert outcome.status == "completed", outcome.error
    journal = Journal(world.store).frame(outcome.run_id)
    quarantined = journal.filter(pl.col("status") == "quarantined")
    assert quarantined.height > 0 and journal.filter(pl.col("status") == "done").height > 0
    assert quarantined["quarantined_by"].str.contains(r"\.").all()  # named by suite.expectation
    people = pl.read_parquet(Path(world.settings.data_dir) / "runs" / outcome.run_id / "state" / "people.parquet")
    keys = set(quarantined["key"])
    emails = {k.removeprefix("te:") for k in keys if k.startswith("te:")} | set(
        people.filter(pl.col("key").is_in(list(keys)))["email"].drop_nulls())
    contact_ids = {k for k in keys if not k.startswith("te:")}
    contacts = lambda state: {c["id"]: c for c in next(iter(state["locations"].values()))["contacts"]}  # noqa: E731
    customers = lambda state: {c["email"].strip().lower(): c for c in (  # noqa: E731
        state["customers"].values() if isinstance(state["customers"], dict) else state["customers"])}
    after_ghl, after_te = world.state(world.ghl), world.state(world.te)
    for contact_id in contact_ids:
        assert contacts(after_ghl).get(contact_id) == contacts(before_ghl).get(contact_id), contact_id
    for email in emails:
        assert customers(after_te).get(email.lower()) == customers(before_te).get(email.lower()), email
        # nor was a GHL contact made from a quarantined customer
        made = [c for c in contacts(after_ghl).values() if (c.get("email") or "").lower() == email.lower()]
        was = [c for c in contacts(before_ghl).values() if (c.get("email") or "").lower() == email.lower()]
        assert len(made) == len(was), email


def test_the_data_teams_decisions_on_conflicts_are_written_by_the_next_run(world_of: Callable[..., World],
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from contact_recon.cli.main import app

    fixture = fixture_for(seed=16)
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    customers = {c["email"]: c for c in fixture["tinyemail"]["customers"]}
    both = [c for c in contacts if c.get("email") in customers][:2]
    for i, contact in enumerate(both):  # names are settled by hand: two conflicts
        customers[contact["email"]]["firstName"] = f"TinyName{i}"
        contact["firstName"] = f"GhlName{i}"
    world = world_of(fixture)
    first = world.reconcile()
    conflicts_csv = Path(world.settings.data_dir) / "runs" / first.run_id / "conflicts.csv"
    conflicts = pl.read_csv(conflicts_csv, infer_schema_length=0)
    mine = conflicts.filter(pl.col("field") == "first_name")
    assert set(mine["key"]) == {c["id"] for c in both}
    decided = mine.with_columns(
        decision=pl.when(pl.col("key") == both[0]["id"]).then(pl.lit("tinyemail")).otherwise(pl.lit("value")),
        value=pl.when(pl.col("key") == both[0]["id"]).then(pl.lit(None)).otherwise(pl.lit("Chosen")))
    filled = tmp_path / "decided.csv"
    decided.write_csv(filled)
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    imported = CliRunner().invoke(app, ["conflicts", "import", str(filled)])
    assert imported.exit_code == 0, imported.output

    second = world.reconcile()

    assert second.status == "completed", second.error
    ghl = {c["id"]: c for c in next(iter(world.state(world.ghl)["locations"].values()))["contacts"]}
    te = te_people(world.state(world.te))
    assert ghl[both[0]["id"]]["firstName"] == "TinyName0" and te[both[0]["email"].lower()]["first"] == "TinyName0"
    assert ghl[both[1]["id"]]["firstName"] == "Chosen" and te[both[1]["email"].lower()]["first"] == "Chosen"
    assert second.plan is not None and second.plan.conflicts.filter(pl.col("field") == "first_name").height == 0
    third = world.reconcile(dry_run=True)
    assert third.plan is not None and third.plan.conflicts.filter(pl.col("field") == "first_name").height == 0


def test_the_apply_stage_reports_its_progress_op_by_op(world_of: Callable[..., World]) -> None:
    """`recon run` draws a bar per long stage (contact_recon/stages/progress.py); the apply bar's total is the ops to
    send and it ends full, and the snapshot reports its note reads per location."""
    from contact_recon.stages import progress

    class Recorder:
        def __init__(self) -> None:
            self.totals: dict[str, int | None] = {}
            self.done: dict[str, int] = {}

        def begin(self, stage: str, total: int | None) -> None:
            self.totals[stage], self.done[stage] = total, 0

        def advance(self, stage: str, n: int) -> None:
            self.done[stage] = self.done.get(stage, 0) + n

    world = world_of(fixture_for(seed=12))
    recorder = Recorder()
    progress._sink = recorder
    try:
        outcome = world.reconcile()
    finally:
        progress._sink = None
    assert outcome.status == "completed", outcome
    sent = sum(n for status, n in outcome.journal.items() if status not in ("quarantined", "held"))
    assert recorder.totals["apply: ops"] == sent > 0
    assert recorder.done["apply: ops"] >= sent
    notes = f"snapshot {world.location}: note reads"
    assert recorder.totals[notes] == recorder.done[notes] == len(
        next(iter(world.fixture["ghl"]["locations"].values()))["contacts"])
