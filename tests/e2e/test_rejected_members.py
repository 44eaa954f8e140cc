"""One rejected record never sinks its batch (issue 22): TinyEmail refuses a whole upsert call for one member it
will not take; the writer (systems/writer.py `send_isolating`) leaves that member out and sends the rest again,
or halves the batch when the 400 names no member. Against the TinyEmail sandbox with its `te_reject` fault (a
member is refused by a hash of its email and the seed), a real DuckDB journal and the apply stage's Applier.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.model.ops import Op, canonical_json, ops_to_frame
from contact_recon.sandbox.faults import FaultInjector, FaultSpec
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.stages.apply import Applier
from contact_recon.store.db import open_db
from contact_recon.store.journal import Journal
from tests.support.worlds import World, loose_policy, make_settings

SEED = 3
SHARE = 0.25
UPSERT = "/v1/account/customer"


def split_emails(spec: FaultSpec, refused: int, accepted: int, tag: str) -> tuple[list[str], list[str]]:
    """`refused` emails the fault refuses and `accepted` ones it takes (drawn as the sandbox draws them)."""
    injector = FaultInjector(spec, SEED)
    bad: list[str] = []
    good: list[str] = []
    for i in range(10_000):
        email = f"{tag}.{i}@example.com"
        (bad if injector.refuses_member(email) else good).append(email)
        if len(bad) >= refused and len(good) >= accepted:
            return bad[:refused], good[:accepted]
    raise AssertionError("the draw never gave enough emails")


@pytest.fixture
def world_with(sandboxes: Callable[..., tuple[RunningServer, RunningServer]],
               tmp_path: Path) -> Iterator[Callable[[str], World]]:
    stores = []

    def make(faults: str) -> World:
        fixture = generate_fixture(6, seed=2, overlap=0.5)
        ghl, te = sandboxes(fixture, rate_scale=50, faults=faults, seed=SEED)
        settings = make_settings(ghl, te, fixture, tmp_path / "data")
        store = open_db(settings.data_dir / "recon.duckdb")
        stores.append(store)
        return World(fixture, ghl, te, settings, store)

    yield make
    for store in stores:
        store.close()


def create_op(email: str, first: str = "Ada") -> Op:
    return Op("tinyemail", "create", f"contact-{email.split('@')[0]}", None, None,
              canonical_json({"email": email, "first_name": first, "tags": []}), "new in ghl")


def apply_ops(w: World, ops: list[Op]) -> pl.DataFrame:
    """Journal `ops` as a run and apply them (TinyEmail only); the run's journal rows."""
    run_id = w.store.start_run("reconcile", [w.location])
    plan = ops_to_frame(ops).with_columns(location_id=pl.lit(w.location), status=pl.lit("planned"),
                                          quarantined_by=pl.lit(None, pl.String))
    journal = Journal(w.store)
    journal.record(run_id, plan)
    client = w.te_client()

    async def go() -> None:
        try:
            await Applier(journal, {}, client, {}, default_location=w.location).run(run_id)
        finally:
            await client.aclose()

    asyncio.run(go())
    w.store.finish_run(run_id, "completed")
    return journal.frame(run_id)


def upserts(w: World, since: int) -> list[dict[str, Any]]:
    return [r for r in w.requests(w.te)[since:] if r["method"] == "PUT" and r["path"] == UPSERT]


def status_of(rows: pl.DataFrame, emails: list[str]) -> dict[str, str]:
    by_email = {json.loads(r["new"])["email"]: r["status"] for r in rows.iter_rows(named=True)}
    return {e: by_email[e] for e in emails}


def customers(w: World) -> set[str]:
    return {c["email"] for c in w.state(w.te)["customers"]}


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_refused_member_costs_only_itself_wherever_it_stands(world_with: Callable[[str], World],
                                                                 where: str) -> None:
    w = world_with(f"te_reject={SHARE}")
    (bad,), good = split_emails(FaultSpec(te_reject=SHARE), 1, 8, where)
    at = {"start": 0, "middle": 4, "end": 8}[where]
    batch = [*good[:at], bad, *good[at:]]
    before = len(w.requests(w.te))
    rows = apply_ops(w, [create_op(e) for e in batch])
    # the refused member's op is rejected with the API's message; every other member landed
    assert status_of(rows, [bad]) == {bad: "rejected"}
    refused = rows.filter(pl.col("status") == "rejected").row(0, named=True)
    assert refused["error_kind"] == "rejected" and "was refused" in refused["last_error"]
    assert set(status_of(rows, good).values()) == {"done"}
    assert set(good) <= customers(w) and bad not in customers(w)
    # the refusal named its member: one more call, without it
    calls = upserts(w, before)
    assert [c["status"] for c in calls] == [400, 200]


def test_two_refused_members_cost_one_call_each(world_with: Callable[[str], World]) -> None:
    w = world_with(f"te_reject={SHARE}")
    bad, good = split_emails(FaultSpec(te_reject=SHARE), 2, 5, "two")
    batch = [good[0], bad[0], good[1], good[2], bad[1], good[3], good[4]]
    before = len(w.requests(w.te))
    rows = apply_ops(w, [create_op(e) for e in batch])
    assert status_of(rows, bad) == {b: "rejected" for b in bad}
    assert set(status_of(rows, good).values()) == {"done"} and set(good) <= customers(w)
    assert [c["status"] for c in upserts(w, before)] == [400, 400, 200]


def test_a_refusal_naming_no_member_is_halved_down_within_the_bound(world_with: Callable[[str], World]) -> None:
    w = world_with(f"te_reject={SHARE},te_reject_unnamed=1")
    bad, good = split_emails(FaultSpec(te_reject=SHARE), 1, 31, "unnamed")
    batch = [*good[:20], *bad, *good[20:]]
    before = len(w.requests(w.te))
    rows = apply_ops(w, [create_op(e) for e in batch])
    assert status_of(rows, bad) == {bad[0]: "rejected"}
    assert "the batch was refused" in rows.filter(pl.col("status") == "rejected")["last_error"][0]
    assert set(status_of(rows, good).values()) == {"done"} and set(good) <= customers(w)
    calls = upserts(w, before)
    extra = len(calls) - 1
    assert 0 < extra <= 2 * math.ceil(math.log2(len(batch)))  # 32 members: at most 10 more calls
    assert sum(c["status"] == 200 for c in calls) >= 1 and calls[0]["status"] == 400


def cli(w: World, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    for name, value in {**w.env(), "COLUMNS": "250"}.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, list(args))


def test_a_refused_member_is_not_sent_again_until_its_value_changes_or_a_person_retries_it(
        world_with: Callable[[str], World], monkeypatch: pytest.MonkeyPatch) -> None:
    w = world_with(f"te_reject={SHARE}")
    (bad,), good = split_emails(FaultSpec(te_reject=SHARE), 1, 3, "again")
    first = apply_ops(w, [create_op(e) for e in [bad, *good]])
    assert status_of(first, [bad]) == {bad: "rejected"}
    # the next run plans the same op (same content): it is not sent again, and says why
    before = len(w.requests(w.te))
    second = apply_ops(w, [create_op(bad)])
    assert upserts(w, before) == []
    row = second.row(0, named=True)
    assert row["status"] == "rejected" and row["last_error"].startswith("rejected by an earlier run")
    # `recon quarantine list` shows it beside the quarantined ops, with its person and the API's message
    listed = cli(w, monkeypatch, "quarantine", "list", "--json")
    assert listed.exit_code == 0, listed.output
    shown = json.loads(listed.output)["rejected"]
    assert [r["op_id"] for r in shown["ops"]] == [row["op_id"]] and "was refused" in shown["ops"][0]["last_error"]
    # its value changed: a new op, sent (and refused again by this fault, which hangs on the email)
    before = len(w.requests(w.te))
    changed = apply_ops(w, [create_op(bad, first="Grace")])
    assert [c["status"] for c in upserts(w, before)] == [400]
    assert changed.row(0, named=True)["status"] == "rejected"
    # a person retries it: the next run sends it once more; then it stands rejected again
    op = changed.row(0, named=True)["op_id"]
    retried = cli(w, monkeypatch, "quarantine", "retry", op, "--note", "TinyEmail support fixed the account")
    assert retried.exit_code == 0 and "sends it again" in retried.output
    assert cli(w, monkeypatch, "quarantine", "retry", "not-an-op").exit_code != 0
    before = len(w.requests(w.te))
    apply_ops(w, [create_op(bad, first="Grace")])
    assert [c["status"] for c in upserts(w, before)] == [400]
    before = len(w.requests(w.te))
    apply_ops(w, [create_op(bad, first="Grace")])
    assert upserts(w, before) == []


def test_a_reconciliation_lands_everyone_else_and_shows_the_refused_in_the_report_and_explain(
        sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from contact_recon.report.build import build_summary

    fixture = generate_fixture(60, seed=7, overlap=0.5)
    ghl, te = sandboxes(fixture, rate_scale=50, faults="te_reject=0.1", seed=SEED)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    with open_db(settings.data_dir / "recon.duckdb") as store:
        w = World(fixture, ghl, te, settings, store, loose_policy(tmp_path))
        first = w.reconcile()
        journal = Journal(store).frame(first.run_id)
        rejected = journal.filter(pl.col("status") == "rejected")
        te_ops = journal.filter(pl.col("target") == "tinyemail")
        assert rejected.height > 0 and set(rejected["target"]) == {"tinyemail"}
        # everyone else landed: no TinyEmail op failed or was left unsent
        assert te_ops.filter(pl.col("status").is_in(["failed", "planned", "sending"])).height == 0
        summary = build_summary(store, settings.data_dir, first.run_id, dry_run=False, requests={}, guards=[])
        assert summary["rejected"] == rejected.height and summary["failed"] == 0
        # the next run sends none of them again: no TinyEmail call is refused
        before = len(w.requests(te))
        second = w.reconcile()
        assert not [r for r in w.requests(te)[before:] if r["status"] == 400]
        # the same writes are rejected again, without a call, though the planner's reason may differ (a first
        # fill last night, a change on one side tonight)
        again = Journal(store).frame(second.run_id).filter(pl.col("status") == "rejected")
        same_write = ["target", "kind", "key", "field", "new"]
        assert again.select(same_write).sort(same_write).rows() == rejected.select(same_write).sort(same_write).rows()
        assert all(e.startswith("rejected by an earlier run") for e in again["last_error"])
        key = rejected["key"][0]
    # `recon explain` tells the person's story with the API's message
    shown = cli(w, monkeypatch, "explain", key, "--json")
    assert shown.exit_code == 0, shown.output
    ops = [op for run in json.loads(shown.output)["runs"] for op in run.get("ops", [])]
    assert any(op["status"] == "rejected" and "was refused" in (op["last_error"] or "") for op in ops), ops
