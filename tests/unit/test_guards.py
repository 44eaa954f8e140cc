"""The guards that fit the location (contact_recon/engine/guards.py): tonight's figure against the floors (at least
`min_people`, above the share of the people in play) and the location's usual figure (`median_multiple` x the
median of its recent comparable runs, once there are `history_min_runs` of them); the plan expectation uses the
very same thresholds; the store's comparable runs leave out first fills, other locations, sync and plan runs,
and runs that never applied.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from contact_recon.checks.suites import Context, Thresholds, within_guards

from contact_recon.engine.guards import NO_HISTORY, GuardHistory, Usual, thresholds, tripped
from contact_recon.model.policy import GUARD_KINDS, GuardPolicy, load_policy
from contact_recon.store.db import open_db

DELETES = "deletes_or_inactivations"


def stats(people: int, deletes: int = 0, updates: int = 0, removals: int = 0) -> dict[str, int]:
    return {"people": people, f"guard_{DELETES}": deletes, "guard_field_updates": updates,
            "guard_tag_removals": removals}


def history(median: float, runs: int, name: str = DELETES) -> GuardHistory:
    return GuardHistory({name: Usual(median, runs)})


# (case, people, figure, history, policy overrides) -> (held, threshold): deletes_or_inactivations, default 5%
CASES = [
    # no history: the floors alone; the ordinary simulated day (6 of 310, held by the former 1%) passes
    ("no history, ordinary day", 310, 6, NO_HISTORY, {}, False, 16),
    ("no history, 30% of people", 310, 93, NO_HISTORY, {}, True, 16),
    # share: 5% of 300 is 15 exactly; 15 is not above it, 16 is
    ("share: exactly 5% passes", 300, 15, NO_HISTORY, {}, False, 16),
    ("share: one above 5% holds", 300, 16, NO_HISTORY, {}, True, 16),
    # floor: a small location's few changes never trip, however large their share
    ("floor: 4 of 20 people (20%)", 20, 4, NO_HISTORY, {}, False, 5),
    ("floor: 5 of 20 people (25%)", 20, 5, NO_HISTORY, {}, True, 5),
    ("floor raised to 30", 310, 29, NO_HISTORY, {"min_people": 30}, False, 30),
    # history: a busy location's usual figure lets its usual day through; 3x the usual figure is the bound
    ("history: busy usual day passes", 310, 40, history(20, 14), {}, False, 61),
    ("history: exactly 3x usual passes", 310, 60, history(20, 14), {}, False, 61),
    ("history: above 3x usual holds", 310, 61, history(20, 14), {}, True, 61),
    ("history: quiet location, mass change", 310, 93, history(2, 6), {}, True, 16),
    ("history: median of an even count", 310, 23, history(7.5, 4), {}, True, 23),
    ("history: multiple 5", 310, 61, history(20, 14), {"median_multiple": 5.0}, False, 101),
    # history never makes a guard stricter than its floors: a usual figure of 0 leaves the share in charge
    ("history: usual 0", 310, 15, history(0, 14), {}, False, 16),
    # too few comparable runs (e.g. only one night after the first fill): the usual figure is not used
    ("history: 2 runs, not used", 310, 40, history(20, 2), {}, True, 16),
    ("history: 2 runs, min 2", 310, 40, history(20, 2), {"history_min_runs": 2}, False, 61),
    # another guard's history says nothing about this one
    ("history of another guard", 310, 40, history(20, 14, "field_updates"), {}, True, 16),
]


@pytest.mark.parametrize(("case", "people", "figure", "usual", "overrides", "held", "at_least"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_guard_trips_above_every_bound(case: str, people: int, figure: int, usual: GuardHistory,
                                         overrides: dict[str, float], held: bool, at_least: int) -> None:
    policy = GuardPolicy(**overrides)
    trips = tripped(policy, stats(people, deletes=figure), usual)
    assert [t.name for t in trips] == ([DELETES] if held else [])
    assert thresholds(policy, people, usual)[DELETES].at_least == at_least


def test_each_guard_has_its_share() -> None:
    limits = thresholds(GuardPolicy(), 300)
    assert {name: t.at_least for name, t in limits.items()} == {DELETES: 16, "field_updates": 61, "tag_removals": 31}
    trips = tripped(GuardPolicy(), stats(300, deletes=15, updates=61, removals=31))
    assert [t.name for t in trips] == ["field_updates", "tag_removals"]


def test_the_held_reason_names_the_figure_the_usual_figure_and_the_threshold() -> None:
    (trip,) = tripped(GuardPolicy(), stats(310, deletes=93), history(2, 6))
    reason = trip.reason()
    assert reason == ("deletes_or_inactivations: 93 of 310 people (30.0%); usual 2 (median of 6 runs); "
                      "threshold 16 (above 5% of people, above 3x usual, at least 5 people)")
    assert reason.split(":")[0] == DELETES  # the report and the alerts name the guard by this prefix
    (few,) = tripped(GuardPolicy(), stats(310, deletes=40), history(20, 1))
    assert "usual 20 (median of 1 run; too few runs to count); threshold 16 (above 5% of people, at least 5" in \
        few.reason()
    (none,) = tripped(GuardPolicy(), stats(310, deletes=40))
    assert "usual unknown (no comparable run yet); threshold 16 (" in none.reason()


def test_the_usual_figure_is_the_median_of_the_recent_runs() -> None:
    runs = [stats(300, deletes=d, updates=u) for d, u in ((4, 10), (90, 11), (2, 12), (3, 13), (50, 14))]
    built = GuardHistory.from_stats(runs)
    # one approved mass change among them moves the median little
    assert built.usual[DELETES] == Usual(4.0, 5) and built.usual["field_updates"] == Usual(12.0, 5)
    assert GuardHistory.from_stats(runs, limit=2).usual[DELETES] == Usual(47.0, 2)  # newest first
    assert GuardHistory.from_stats(runs, limit=0) == NO_HISTORY
    assert GuardHistory.from_stats([]) == NO_HISTORY
    # a run recorded before a guard existed does not count for it
    older = [{"people": 300, f"guard_{DELETES}": 6}, stats(300, deletes=2, removals=8)]
    built = GuardHistory.from_stats(older)
    assert built.usual[DELETES] == Usual(4.0, 2) and built.usual["tag_removals"] == Usual(8.0, 1)


def test_the_guard_expectation_holds_at_the_very_same_threshold() -> None:
    # 20 people with a consent tightening, 2 with an update, of 310: the usual figure decides
    ops = pl.DataFrame({"key": [f"c{i}" for i in range(20)] + ["c0", "c1"],
                        "kind": ["consent_tighten"] * 20 + ["update"] * 2, "reason": ["merge"] * 22})
    for usual, held in ((history(2, 6), True), (history(10, 6), False), (NO_HISTORY, True)):
        ctx = Context(Thresholds(), dt.date(2026, 3, 1), pl.Series([], dtype=pl.String), GuardPolicy(), 310, usual)
        breach = ops.select(within_guards(ctx).alias("breach"))["breach"]
        engine_held = bool(tripped(GuardPolicy(), stats(310, deletes=20, updates=2), usual))
        assert engine_held is held
        assert breach.is_not_null().sum() == (20 if held else 0), (usual, breach.to_list())
        if held:
            at_least = thresholds(GuardPolicy(), 310, usual)[DELETES].at_least
            assert breach[0] == f"deletes_or_inactivations: 20 of 310 people, threshold {at_least}"


def test_policy_files_set_the_knobs_and_min_ops_still_reads(tmp_path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[guards]\ndeletes_or_inactivations = 0.02\nmin_ops = 1\nmedian_multiple = 4.0\n"
                    "history_runs = 7\nhistory_min_runs = 2\n")
    g = load_policy(path).guards
    assert (g.deletes_or_inactivations, g.min_people, g.median_multiple, g.history_runs, g.history_min_runs) == (
        0.02, 1, 4.0, 7, 2)
    path.write_text("[guards]\nmin_people = 9\n")
    assert load_policy(path).guards.min_people == 9
    path.write_text("[guards]\nhistory_min_runs = 0\n")
    with pytest.raises(ValueError, match="history_min_runs"):
        load_policy(path)
    assert set(GUARD_KINDS) == {DELETES, "field_updates", "tag_removals"}


def test_comparable_runs_are_completed_reconciles_of_the_same_locations_past_the_first_fill(tmp_path) -> None:
    now = [dt.datetime(2026, 3, 1, tzinfo=dt.UTC)]

    def tick() -> dt.datetime:  # one run a night, so "newest first" is by start time alone
        now[0] += dt.timedelta(days=1)
        return now[0]

    with open_db(":memory:", clock=tick) as store:
        def run(kind: str, locations: list[str], status: str, first_run: int, deletes: int) -> None:
            run_id = store.start_run(kind, locations)
            store.set_plan(run_id, {"ops": 1, "stats": stats(300, deletes=deletes) | {"first_run": first_run}})
            store.finish_run(run_id, status)

        run("reconcile", ["L1"], "completed", 1, 250)  # the first fill: not comparable
        run("reconcile", ["L1"], "completed", 0, 4)
        run("reconcile", ["L1"], "held", 0, 93)  # held and never approved: the abnormal figure itself
        run("reconcile", ["L1"], "approved", 0, 94)  # approved, never applied: the next run planned it again
        run("reconcile", ["L1"], "planned", 0, 95)  # a dry run: planned again by the next run
        run("plan", ["L1"], "planned", 0, 96)  # `recon plan`
        run("sync", ["L1"], "completed", 0, 1)  # one person
        run("reconcile", ["L1", "L2"], "completed", 0, 97)  # other locations
        run("reconcile", ["L1"], "completed", 0, 6)
        run("reconcile", ["L1"], "failed", 0, 98)
        found = store.comparable_stats(["L1"], limit=14)
        assert [s[f"guard_{DELETES}"] for s in found] == [6, 4]  # newest first
        assert [s[f"guard_{DELETES}"] for s in store.comparable_stats(["L1"], limit=1)] == [6]
        assert [s[f"guard_{DELETES}"] for s in store.comparable_stats(["L2", "L1", "L1"], limit=14)] == [97]
        assert store.comparable_stats(["L3"], limit=14) == []
