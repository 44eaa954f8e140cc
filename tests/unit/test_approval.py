"""A held run's answer (contact_recon/model/approval.py) and how the store keeps it (approve, reject, expiry), on a
temporary DuckDB file with a settable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contact_recon.model.approval import Approval, tripped_guards
from contact_recon.store.db import RunNotHeld, open_db

REASONS = ["field_updates: 40 of 300 people (13.3%); threshold 30", "tag_removals: 50 of 300 people; threshold 20"]


def test_an_answer_releases_the_kinds_of_the_guards_it_approves() -> None:
    tripped = tripped_guards(REASONS)
    assert tripped == ("field_updates", "tag_removals")
    assert Approval("approve").released_kinds(tripped) is None  # every guard
    assert Approval("approve", ("field_updates", "tag_removals")).released_kinds(tripped) is None
    assert Approval("approve", ("field_updates",)).released_kinds(tripped) == frozenset({"update"})
    assert Approval("approve", ()).released_kinds(tripped) == frozenset()  # only what no guard held
    assert Approval("reject").released_kinds(tripped) == frozenset()
    with pytest.raises(ValueError, match="did not trip"):
        Approval("approve", ("deletes_or_inactivations",)).effective(tripped)


def test_leaving_out_a_whole_run_guard_rejects() -> None:
    tripped = ("field_updates", "tinyemail_empty")
    answer = Approval("approve", ("field_updates",), "ok").effective(tripped)
    assert answer.decision == "reject" and "tinyemail_empty" in answer.note
    assert Approval("approve", tripped).effective(tripped).decision == "approve"
    assert Approval.from_dict(Approval("approve", ("field_updates",), "n", "prefect-ui").as_dict()) == \
        Approval("approve", ("field_updates",), "n", "prefect-ui")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def held_run(store, clock: Clock, window: timedelta | None) -> str:  # type: ignore[no-untyped-def]
    run_id = store.start_run("reconcile", ["L1"])
    store.finish_run(run_id, "held", held_reasons=REASONS)
    store.hold_for_approval(run_id, "flow-run-1", clock.now + window if window else None)
    return run_id


def test_the_store_keeps_the_answer_and_refuses_a_second_one(tmp_path: Path) -> None:
    clock = Clock()
    with open_db(tmp_path / "recon.duckdb", clock=clock) as store:
        run_id = held_run(store, clock, timedelta(hours=1))
        run = store.approve_run(run_id, Approval("approve", ("tag_removals",), "tags only", "prefect-ui"))
        assert run["status"] == "approved" and run["approved_at"] is not None
        assert store.approval(run_id) == Approval("approve", ("tag_removals",), "tags only", "prefect-ui")
        with pytest.raises(RunNotHeld, match="not held"):
            store.approve_run(run_id, Approval("reject"))
        other = held_run(store, clock, timedelta(hours=1))
        assert store.approve_run(other, Approval("reject", note="no"))["status"] == "rejected"
        assert store.get_run(other)["approved_at"] is None


def test_an_unanswered_run_expires_and_cannot_be_approved_after(tmp_path: Path) -> None:
    clock = Clock()
    with open_db(tmp_path / "recon.duckdb", clock=clock) as store:
        late = held_run(store, clock, timedelta(minutes=30))
        open_ended = held_run(store, clock, None)
        clock.now += timedelta(minutes=29)
        assert store.expire_held() == []
        clock.now += timedelta(minutes=2)
        assert store.expire_held() == [{"run_id": late, "flow_run_id": "flow-run-1"}]
        assert store.get_run(late)["status"] == "expired"
        with pytest.raises(RunNotHeld, match="expired unanswered"):
            store.approve_run(late)
        assert store.get_run(open_ended)["status"] == "held"  # no window: it waits
