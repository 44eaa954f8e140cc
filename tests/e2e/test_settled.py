"""Planning only the people in play (contact_recon/store/settled.py, stages/plan.py `in_play`), against both sandboxes.

After a run has applied and a second one found nothing more for most people, those are settled: a night of drift
later the plan reads only the changed people and their email neighbours, and its ops, conflicts, quarantine,
held reasons and stats (but `people_in_play`) are exactly those of a plan of everyone from the same snapshot
(`full_sweep`). A changed policy settles nobody; applying that night leaves the same base a plan of everyone
would, so the night after converges as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from contact_recon.model.policy import Policy
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.stages.plan import PlanRun, plan_run
from contact_recon.store.db import open_db
from contact_recon.store.settled import Settled
from tests.support.worlds import World, loose_policy, make_settings

OP_COLUMNS = ["op_id", "target", "kind", "key", "field", "expected", "new", "reason", "status", "quarantined_by"]


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path) -> Iterator[World]:
    fixture = generate_fixture(120, seed=21, overlap=0.6, awkward=0.2)
    ghl, te = sandboxes(fixture, rate_scale=50)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    with open_db(settings.data_dir / "recon.duckdb") as store:
        yield World(fixture, ghl, te, settings, store, loose_policy(tmp_path))


def settled_world(world: World) -> None:
    """Two runs: the first writes, the second finds little and settles the rest."""
    assert world.reconcile().status == "completed"
    second = world.reconcile()
    assert second.status == "completed"
    assert Settled(world.store).count() > 60


def plan(world: World, *, everyone: bool, policy: Policy | None = None) -> PlanRun:
    return plan_run(world.settings, world.store, locations=[world.location], policy=policy or world.policy,
                    docs=False, reuse_snapshot=everyone, full_sweep=everyone, ghl_client=world.ghl_client,
                    tinyemail_client=world.te_client)


def same_plans(part: PlanRun, whole: PlanRun) -> None:
    assert_frame_equal(part.plan.select(OP_COLUMNS).sort("op_id"), whole.plan.select(OP_COLUMNS).sort("op_id"))
    assert_frame_equal(part.conflicts, whole.conflicts)
    assert part.held_reasons == whole.held_reasons
    assert_frame_equal(part.checks.quarantined.sort(pl.all()), whole.checks.quarantined.sort(pl.all()))
    assert {k: v for k, v in part.stats.items() if k != "people_in_play"} == {
        k: v for k, v in whole.stats.items() if k != "people_in_play"}


def test_a_night_of_drift_plans_the_changed_people_only_and_the_same_ops_as_a_plan_of_everyone(world: World) -> None:
    settled_world(world)
    report = world.drift(12, seed=3)
    assert report["changes"] == 12

    part = plan(world, everyone=False)
    whole = plan(world, everyone=True)  # the same snapshot, everyone read
    assert whole.stats["people_in_play"] == whole.stats["people"]
    assert 0 < part.stats["people_in_play"] < whole.stats["people"] / 2, part.stats
    assert part.plan.height > 0
    same_plans(part, whole)


def test_another_policy_settles_nobody_but_other_guards_keep_them_settled(world: World) -> None:
    settled_world(world)
    assert world.policy is not None
    guards = world.policy.guards.model_copy(update={"history_runs": world.policy.guards.history_runs + 1})
    city = world.policy.fields["city"].model_copy(update={"tie_break": "tinyemail"})

    guarded = plan(world, everyone=False, policy=world.policy.model_copy(update={"guards": guards}))
    ruled = plan(world, everyone=False, policy=world.policy.model_copy(
        update={"fields": {**world.policy.fields, "city": city}}))

    assert guarded.stats["people_in_play"] < guarded.stats["people"] / 2
    assert ruled.stats["people_in_play"] == ruled.stats["people"]


def test_applying_a_night_planned_in_part_converges_as_before(world: World) -> None:
    settled_world(world)
    world.drift(12, seed=5)
    night = world.reconcile()
    assert night.status == "completed" and night.plan is not None
    assert night.plan.stats["people_in_play"] < night.plan.stats["people"]

    after = plan(world, everyone=False)
    whole = plan(world, everyone=True)
    same_plans(after, whole)
    left = whole.plan.filter((pl.col("kind") != "identity_review") & (pl.col("status") == "planned"))
    assert left.height == 0, left.select("target", "kind", "key", "field", "reason", "status").rows()[:10]


def test_the_digests_read_in_batches_of_people_are_those_of_one_query(world: World,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`Settled` reads a million people's digests a batch at a time (one query ran out of DuckDB's memory limit):
    in batches of 7 the digests and the unchanged people are row for row those of one query, in key order."""
    from contact_recon.store import settled as settled_module

    settled_world(world)
    world.drift(12, seed=3)
    plan(world, everyone=False)  # tonight's snapshot: a few of the settled people changed
    who = world.store._frame("SELECT key, contact_id, email, location_id FROM settled")
    generation = world.store.con.execute("SELECT any_value(generation) FROM settled").fetchall()[0][0]
    today = "2026-12-04"
    whole = Settled(world.store).digests(who, today), Settled(world.store).unchanged(who, generation, today)
    monkeypatch.setattr(settled_module, "PEOPLE_BATCH", 7)
    part = Settled(world.store).digests(who, today), Settled(world.store).unchanged(who, generation, today)
    assert who.height > 8 * 7 and whole[0].height == who.height
    assert 0 < whole[1].height < who.height  # the drift unsettled some: the comparison is not vacuous
    assert whole[0]["key"].to_list() == sorted(who["key"]) and whole[1]["key"].is_sorted()
    assert_frame_equal(part[0], whole[0])
    assert_frame_equal(part[1], whole[1])
