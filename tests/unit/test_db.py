"""The DuckDB store: migrations, atomic snapshots (a SIGKILL mid-write included), retention, base, id_map."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from contact_recon.engine.identity import ID_MAP, REVIEW
from contact_recon.model.normalise import to_frame
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, MERGE_SIDE, TINYEMAIL_CUSTOMERS
from contact_recon.store import db
from contact_recon.store.db import (
    ENTITIES,
    MIGRATIONS,
    PRESENCE,
    Migration,
    SchemaTooNew,
    StoreError,
    open_db,
)
from contact_recon.store.journal import Journal
from contact_recon.store.reviews import Reviews
from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_note_record
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record
from tests.support import REPO


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def contacts(*ids: str, location: str = "L1", city: str = "Austin") -> pl.DataFrame:
    rows = [ghl_contact_record({"id": i, "email": f"{i}@example.com", "city": city}, location) for i in ids]
    return to_frame(rows, GHL_CONTACTS)


def customers(*emails: str) -> pl.DataFrame:
    return to_frame([tinyemail_customer_record({"email": e, "status": "Subscribed"}, ["l1"]) for e in emails],
                    TINYEMAIL_CUSTOMERS)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    with open_db(tmp_path / "recon.duckdb", clock=clock) as s:
        yield s


# ------------------------------------------------------------------------------------------ migrations


def test_fresh_database_is_at_the_latest_version(store) -> None:
    assert store.schema_version == len(MIGRATIONS)
    tables = {r[0] for r in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"runs", "snap_ghl_contacts", "snap_ghl_tasks", "snap_ghl_notes", "snap_te_customers", "base",
            "id_map", "identity_review", "watermarks", "dirty_contacts", "schema_version"} <= tables


@pytest.mark.parametrize("entity", sorted(ENTITIES))
def test_snapshot_tables_match_records_py(store, entity: str) -> None:
    # records.py changed without a migration? This fails until a migration adds the columns.
    spec = ENTITIES[entity]
    columns = [r[0] for r in store.con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [spec.table]).fetchall()]
    assert columns == ["run_id", *spec.schema]


def test_base_table_matches_merge_side(store) -> None:
    columns = [r[0] for r in store.con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'base' "
        "ORDER BY ordinal_position").fetchall()]
    # `custom` came with migration 12, after the columns of the first table (the store writes by name)
    assert columns == [*(n for n in MERGE_SIDE if n != "custom"), "updated_at", "run_id", *PRESENCE, "custom"]


def test_a_new_migration_runs_once_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "recon.duckdb"
    open_db(path).close()
    n = len(MIGRATIONS)  # the test's migrations come after the real ones
    v2 = Migration(n + 1, "add a column", ("ALTER TABLE runs ADD COLUMN note VARCHAR",
                                           "CREATE TABLE migration_log (version INTEGER)",
                                           f"INSERT INTO migration_log VALUES ({n + 1})"))
    v3 = Migration(n + 2, "log", (f"INSERT INTO migration_log VALUES ({n + 2})",))
    for _ in range(2):  # the second open finds nothing to do
        with open_db(path, migrations=(*MIGRATIONS, v2, v3)) as s:
            assert s.schema_version == n + 2
            log = s.con.execute("SELECT list(version ORDER BY rowid) FROM migration_log").fetchall()[0][0]
            applied = s.con.execute("SELECT list(version ORDER BY version) FROM schema_version").fetchall()[0][0]
            assert (log, applied) == ([n + 1, n + 2], list(range(1, n + 3)))


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    path = tmp_path / "recon.duckdb"
    bad = Migration(len(MIGRATIONS) + 1, "half done", ("CREATE TABLE half (x INTEGER)", "SELECT * FROM no_such_table"))
    with pytest.raises(duckdb.Error):
        open_db(path, migrations=(*MIGRATIONS, bad))
    with open_db(path) as s:
        assert s.schema_version == len(MIGRATIONS)
        half = s.con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name='half'").fetchall()
        assert half == [(0,)]


def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recon.duckdb"
    open_db(path, migrations=(*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "future", ("SELECT 1",)))).close()
    with pytest.raises(SchemaTooNew):
        open_db(path)


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        open_db(tmp_path / "x.duckdb", migrations=(Migration(2, "skip", ()),))


# ------------------------------------------------------------------------------------------- snapshots


def test_snapshot_round_trip_in_records_shape(store) -> None:
    run = store.start_run("snapshot", ["L1"])
    frame, te = contacts("b", "a"), customers("x@example.com")
    store.write_snapshot(run, {"ghl_contacts": frame, "te_customers": te}, {("L1", "ghl_contacts"): "2026-03-01"})
    got = store.latest_snapshot("ghl_contacts")
    assert got.schema == GHL_CONTACTS
    assert got.equals(frame.sort("contact_id"))
    assert store.latest_snapshot("te_customers").equals(te)
    assert store.watermark("L1", "ghl_contacts") == "2026-03-01"


def test_latest_snapshot_is_per_location(store, clock: Clock) -> None:
    # Case: run 1 covers L1 and L2, run 2 only L1: the latest of L2 is still run 1's.
    r1 = store.start_run("snapshot", ["L1", "L2"])
    store.write_snapshot(r1, {"ghl_contacts": pl.concat([contacts("a"), contacts("b", location="L2")])})
    clock.advance(days=1)
    r2 = store.start_run("snapshot", ["L1"])
    store.write_snapshot(r2, {"ghl_contacts": contacts("a", city="Dallas")})
    latest = store.latest_snapshot("ghl_contacts")
    assert latest.select("contact_id", "city").rows() == [("a", "Dallas"), ("b", "Austin")]
    assert store.latest_snapshot("ghl_contacts", "L2")["contact_id"].to_list() == ["b"]


def test_latest_snapshot_leaves_columns_out_and_reads_some_records(store) -> None:
    run = store.start_run("snapshot", ["L1"])
    frame = contacts("b", "a", "c")
    store.write_snapshot(run, {"ghl_contacts": frame})
    light = store.latest_snapshot("ghl_contacts", without=("raw",))
    assert light.columns == [name for name in GHL_CONTACTS if name != "raw"]
    assert light.equals(frame.sort("contact_id").drop("raw"))
    some = store.latest_snapshot("ghl_contacts", ids=["c", "a", "zz"])
    assert some["contact_id"].to_list() == ["a", "c"] and some.schema == GHL_CONTACTS
    assert store.latest_snapshot("ghl_contacts", ids=[]).height == 0


def test_carried_rows_are_copied_from_the_latest_part_inside_the_store(store, clock: Clock) -> None:
    # Case: night 1 has notes of a, b (L1) and c (L2); night 2 reads a's notes again, carries b's and c's.
    def notes(*pairs: tuple[str, str, str]) -> pl.DataFrame:
        return to_frame([ghl_note_record({"id": n, "contactId": c, "body": n}, loc) for n, c, loc in pairs], GHL_NOTES)

    r1 = store.start_run("snapshot", ["L1", "L2"])
    store.write_snapshot(r1, {"ghl_notes": notes(("n1", "a", "L1"), ("n2", "b", "L1"), ("n3", "c", "L2"))},
                         location_ids=["L1", "L2"])
    clock.advance(days=1)
    r2 = store.start_run("snapshot", ["L1", "L2"])
    carried = pl.DataFrame({"location_id": ["L1", "L2", "L1"], "contact_id": ["b", "c", "gone"]})
    written = store.write_snapshot(r2, {"ghl_notes": notes(("n4", "a", "L1"))}, location_ids=["L1", "L2"],
                                   carried={"ghl_notes": carried})
    assert written == {"ghl_notes": 3}
    latest = store.latest_snapshot("ghl_notes")
    assert latest.select("note_id", "contact_id", "location_id").rows() == [
        ("n2", "b", "L1"), ("n3", "c", "L2"), ("n4", "a", "L1")]
    assert latest.filter(pl.col("note_id") == "n2").equals(notes(("n2", "b", "L1")))  # copied as it was
    assert store.latest_row_count("ghl_notes", "L1") == 2 and store.latest_row_count("ghl_notes", "L2") == 1
    # written again (the same run): the carried rows still come from night 1, not from this run's own rows
    assert store.write_snapshot(r2, {"ghl_notes": notes(("n4", "a", "L1"))}, location_ids=["L1", "L2"],
                                carried={"ghl_notes": carried}) == {"ghl_notes": 3}


def test_planning_frames_carry_raw_only_where_tags_are_folded(store) -> None:
    from contact_recon.stages.plan import latest_frames

    run = store.start_run("snapshot", ["L1"])
    rows = [ghl_contact_record({"id": "a", "email": "a@example.com", "tags": ["VIP", "vip"]}, "L1"),
            ghl_contact_record({"id": "b", "email": "b@example.com", "tags": ["vip"]}, "L1")]
    store.write_snapshot(run, {"ghl_contacts": to_frame(rows, GHL_CONTACTS), "te_customers": customers("x@example.com"),
                               "ghl_notes": to_frame([], GHL_NOTES)})
    frames = latest_frames(store, ["L1"])
    ghl = frames["ghl_contacts"]
    assert ghl.schema == GHL_CONTACTS
    assert ghl.select("contact_id", raw=pl.col("raw").is_not_null()).rows() == [("a", True), ("b", False)]
    assert frames["te_customers"]["raw"].null_count() == 1 and frames["te_customers"].schema == TINYEMAIL_CUSTOMERS


def test_an_empty_location_is_recorded_as_empty(store) -> None:
    # Case: L2 answered with no contacts: its latest snapshot is empty, not the older one.
    r1 = store.start_run("snapshot", ["L2"])
    store.write_snapshot(r1, {"ghl_contacts": contacts("b", location="L2")})
    r2 = store.start_run("snapshot", ["L2"])
    store.write_snapshot(r2, {"ghl_contacts": contacts()}, location_ids=["L2"])
    assert store.latest_snapshot("ghl_contacts", "L2").is_empty()
    parts = store.snapshot_parts().filter(pl.col("run_id") == r2)
    assert parts.select("location_id", "row_count").rows() == [("L2", 0)]


def test_rewriting_a_run_replaces_its_rows(store) -> None:
    run = store.start_run("snapshot", ["L1"])
    store.write_snapshot(run, {"ghl_contacts": contacts("a", "b")})
    store.write_snapshot(run, {"ghl_contacts": contacts("a")})
    assert store.latest_snapshot("ghl_contacts")["contact_id"].to_list() == ["a"]


def test_a_frame_of_the_wrong_shape_is_refused(store) -> None:
    run = store.start_run("snapshot")
    with pytest.raises(StoreError):
        store.write_snapshot(run, {"ghl_contacts": contacts("a").drop("raw")})
    with pytest.raises(StoreError):
        store.write_snapshot(run, {"ghl_deals": contacts("a")})


def test_a_failure_inside_the_transaction_keeps_the_previous_snapshot_and_watermark(store) -> None:
    r1 = store.start_run("snapshot", ["L1"])
    store.write_snapshot(r1, {"ghl_contacts": contacts("a")}, {("L1", "ghl_contacts"): "w1"})
    r2 = store.start_run("snapshot", ["L1"])
    with pytest.raises(duckdb.Error):  # a NULL watermark violates NOT NULL after the frames went in
        store.write_snapshot(r2, {"ghl_contacts": contacts("a", "b")}, {("L1", "ghl_contacts"): None})
    assert store.latest_snapshot("ghl_contacts")["contact_id"].to_list() == ["a"]
    assert store.watermark("L1", "ghl_contacts") == "w1"
    assert store.con.execute("SELECT count(*) FROM snap_ghl_contacts WHERE run_id = ?", [r2]).fetchall()[0][0] == 0


_CHILD = textwrap.dedent("""
    import sys, time
    import polars as pl
    from contact_recon.store.db import Store, open_db
    from contact_recon.model.normalise import to_frame
    from contact_recon.systems.ghl.mapping import ghl_contact_record
    from contact_recon.model.records import GHL_CONTACTS

    mode, path = sys.argv[1], sys.argv[2]
    row = ghl_contact_record({"id": "x", "email": "x@example.com", "city": "Big"}, "L1")
    frame = to_frame([row], GHL_CONTACTS)
    frame = frame.select(pl.all().repeat_by(200_000).explode()).with_columns(
        contact_id=pl.format("big{}", pl.int_range(pl.len())))
    store = open_db(path)
    run = store.start_run("snapshot", ["L1"])
    if mode == "during_insert":
        # a failpoint inside the INSERT: the snapshot rows reach DuckDB as a stream of batches; after two of the
        # four, the stream says so and stalls, so the statement is under way (its first rows taken) when killed
        import pyarrow as pa

        class Connection:
            def __init__(self, real):
                self.real = real

            def __getattr__(self, name):
                return getattr(self.real, name)

            def register(self, name, data):
                if name != "_snapshot_frame":
                    return self.real.register(name, data)
                table = data.to_arrow()

                def batches():
                    for i, batch in enumerate(table.to_batches(max_chunksize=50_000)):
                        if i == 2:
                            print("inserting", flush=True)
                            time.sleep(60)
                        yield batch

                return self.real.register(name, pa.RecordBatchReader.from_batches(table.schema, batches()))

        store.con = Connection(store.con)
    if mode == "before_commit":  # a failpoint after every row and the watermark, before the commit
        real = Store._set_watermarks
        def stop(self, run_id, watermarks):
            real(self, run_id, watermarks)
            print("inserted", flush=True)
            time.sleep(60)
        Store._set_watermarks = stop
    print("ready", flush=True)
    store.write_snapshot(run, {"ghl_contacts": frame}, {("L1", "ghl_contacts"): "w2"})
    print("committed", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("mode", ["before_commit", "during_insert"])
def test_sigkill_mid_snapshot_keeps_previous_snapshot_and_watermark(tmp_path: Path, mode: str) -> None:
    # Case: the process dies inside write_snapshot (all rows inserted but not committed / during the insert).
    path = tmp_path / "recon.duckdb"
    with open_db(path) as s:
        run = s.start_run("snapshot", ["L1"])
        s.write_snapshot(run, {"ghl_contacts": contacts("a", "b")}, {("L1", "ghl_contacts"): "w1"})
    child = subprocess.Popen([sys.executable, "-c", _CHILD, mode, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "ready"
        # killed only once the child says it is inside the insert (or past it, before the commit)
        assert child.stdout.readline().strip() == {"during_insert": "inserting", "before_commit": "inserted"}[mode]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with open_db(path) as s:
        assert s.latest_snapshot("ghl_contacts")["contact_id"].to_list() == ["a", "b"]
        assert s.watermark("L1", "ghl_contacts") == "w1"
        assert s.con.execute("SELECT count(*) FROM snap_ghl_contacts").fetchall()[0][0] == 2


def test_prune_keeps_recent_runs_and_every_latest_part(store, clock: Clock) -> None:
    runs = []
    for i in range(4):
        run = store.start_run("snapshot", ["L1"])
        frames = {"ghl_contacts": contacts(f"c{i}")}
        if i == 0:  # only the first run saw L2 and notes
            frames = {"ghl_contacts": pl.concat([contacts("c0"), contacts("z", location="L2")]),
                      "ghl_notes": to_frame([ghl_note_record({"id": "n", "contactId": "c0"}, "L1")], GHL_NOTES)}
        store.write_snapshot(run, frames)
        runs.append(run)
        clock.advance(days=10)
    # Now is day 40; runs were written on days 0, 10, 20, 30.
    assert store.prune(keep_runs=2) == 2  # the L1 contacts of runs 0 and 1
    left = set(store.snapshot_parts().select("run_id", "entity", "location_id").rows())
    assert left == {(runs[0], "ghl_contacts", "L2"), (runs[0], "ghl_notes", "L1"),  # still the latest of theirs
                    (runs[2], "ghl_contacts", "L1"), (runs[3], "ghl_contacts", "L1")}
    assert store.latest_snapshot("ghl_contacts", "L2")["contact_id"].to_list() == ["z"]
    assert store.prune(keep_days=15) == 1  # run 2 (20 days old); run 0's parts are still the latest
    assert {r[0] for r in store.snapshot_parts().select("run_id").rows()} == {runs[0], runs[3]}
    assert store.con.execute("SELECT count(*) FROM snap_ghl_contacts").fetchall()[0][0] == 2
    assert len(store.runs()) == 4  # run history is kept


def test_prune_needs_a_rule(store) -> None:
    with pytest.raises(StoreError):
        store.prune()


# ------------------------------------------------------------------------------ runs, base, id_map, etc.


def test_runs_record_plan_usage_and_a_redacted_error(store, clock: Clock) -> None:
    run = store.start_run("snapshot", ["L1"], plan={"ghl": {"pages": 3}})
    clock.advance(minutes=5)
    store.finish_run(run, "failed", {"ghl": 12}, error="401 for Authorization: Bearer abcdef123456789")
    row = store.runs().to_dicts()[0]
    assert (row["status"], row["location_ids"], row["plan_json"], row["requests_used_json"]) == \
        ("failed", ["L1"], '{"ghl": {"pages": 3}}', '{"ghl": 12}')
    assert "abcdef123456789" not in row["error"] and row["finished_at"] - row["started_at"] == timedelta(minutes=5)


def test_a_run_records_its_policy_and_older_runs_keep_none(tmp_path: Path) -> None:
    """Migration 5 adds the policy columns to a store that already has runs; those runs keep null."""
    path = tmp_path / "recon.duckdb"
    with open_db(path, migrations=MIGRATIONS[:4]) as old:  # a run recorded by the code before migration 5
        before = "20260301T000000Z-00000000"
        old.con.execute("INSERT INTO runs (run_id, kind, status, started_at) VALUES (?, 'plan', 'planned', ?)",
                        [before, datetime(2026, 3, 1, tzinfo=UTC)])
    with open_db(path) as store:
        assert store.schema_version == len(MIGRATIONS)  # 5 and on
        planned = store.start_run("plan", ["L1"], policy_version="0123456789ab",
                                  policy_source="block recon-policy/nightly")
        snapshot = store.start_run("snapshot", ["L1"])
        assert {k: store.get_run(planned)[k] for k in ("policy_version", "policy_source")} == \
            {"policy_version": "0123456789ab", "policy_source": "block recon-policy/nightly"}
        assert store.get_run(before)["policy_version"] is None and store.get_run(snapshot)["policy_source"] is None
        listed = dict(store.recent_runs(10).select("run_id", "policy_version").iter_rows())
        assert listed == {planned: "0123456789ab", before: None, snapshot: None}


def base_rows(*rows: tuple[str, str | None, str]) -> pl.DataFrame:
    return pl.DataFrame([{"key": k, "contact_id": c, "first_name": n} for k, c, n in rows]).select(
        pl.col(name).cast(dtype) if name in ("key", "contact_id", "first_name") else pl.lit(None, dtype).alias(name)
        for name, dtype in MERGE_SIDE.items())


def test_base_upsert_delete_and_rekey(store) -> None:
    store.save_base(base_rows(("c1", "c1", "Ann"), ("te:b@example.com", None, "Bob")), "r1")
    store.save_base(base_rows(("c1", "c1", "Anna")), "r2")  # upsert: c1 changes, the other key stays
    assert store.load_base().select("key", "first_name").rows() == [("c1", "Anna"), ("te:b@example.com", "Bob")]
    moved = store.rekey_base(pl.DataFrame({"old_key": ["te:b@example.com"], "new_key": ["c2"]}))
    assert moved == 1
    assert store.load_base().select("key", "contact_id", "first_name").rows() == [("c1", "c1", "Anna"),
                                                                                  ("c2", "c2", "Bob")]
    store.delete_base(["c1"])
    assert store.load_base()["key"].to_list() == ["c2"] and store.load_base().schema == MERGE_SIDE


def test_a_base_larger_than_a_write_batch_is_upserted_in_slices_with_one_outcome(store, monkeypatch) -> None:
    monkeypatch.setattr(db, "WRITE_BATCH", 2)  # 5 rows: three statements, one transaction
    store.save_base(base_rows(*((f"c{i}", f"c{i}", f"N{i}") for i in range(5))), "r1")
    with store.transaction():
        store.save_base(base_rows(*((f"c{i}", f"c{i}", f"M{i}") for i in range(1, 4)),
                                  ("c9", "c9", "New")), "r2")
    assert store.load_base().select("key", "first_name").rows() == [
        ("c0", "N0"), ("c1", "M1"), ("c2", "M2"), ("c3", "M3"), ("c4", "N4"), ("c9", "New")]
    with pytest.raises(RuntimeError), store.transaction():  # a failure after some slices: none of them stays
        store.save_base(base_rows(*((f"c{i}", f"c{i}", "Lost") for i in range(5))), "r3")
        raise RuntimeError("mid-advance")
    assert "Lost" not in store.load_base()["first_name"].to_list()


def test_a_statement_failing_inside_a_transaction_raises_its_own_error_and_leaves_the_store_usable(store) -> None:
    # DuckDB refuses every later call in an aborted transaction, the frame's unregister included: that refusal
    # ("Current transaction is aborted") once hid the error that mattered (an out-of-memory at 1,000,000 rows)
    with pytest.raises(duckdb.ConstraintException), store.transaction():
        store.save_base(base_rows(("c1", "c1", "Ann")).with_columns(key=pl.lit(None, pl.String)), "r1")
    store.save_base(base_rows(("c1", "c1", "Ann")), "r2")
    assert store.load_base()["key"].to_list() == ["c1"]


def test_a_large_transaction_gets_a_larger_memory_limit_and_gives_it_back(store, monkeypatch) -> None:
    def limit() -> int | None:
        return db.limit_bytes(store.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])

    configured = limit()
    assert configured is not None and abs(configured - 256 * 10**6) < 2**20
    with store.memory_for_rows(10):  # a night's few rows: the configured limit
        assert limit() == configured
    with store.memory_for_rows(2_000_000):  # a first night's million base and settled rows
        grown = limit()
        assert grown is not None and grown - configured > 2_000_000 * db.TRANSACTION_ROW_BYTES * 0.99
    assert limit() == configured
    monkeypatch.setenv("RECON_DUCKDB_MEMORY_LIMIT", "80%")  # not a size: left alone
    with store.memory_for_rows(2_000_000):
        assert limit() == configured
    assert db.limit_bytes("1.5 GiB") == 3 * 2**29 and db.limit_bytes("lots") is None


def test_memory_for_rows_makes_room_for_the_key_indexes_a_transaction_loads(store, monkeypatch) -> None:
    """Deleting and upserting a few of a big table's rows loads its whole key index, which does not spill before the
    commit: at night 2 of a million people the advance's transaction ran out of the limit (stages/advance.py). With
    the table named, the limit grows by INDEX_ROW_BYTES a row of it; without, the same transaction runs out."""
    store.con.execute("INSERT INTO settled (key, generation, settled_at) SELECT md5(i::VARCHAR), 'g', now() "
                      "FROM range(300000) t(i)")
    assert store.row_count("settled") == 300_000
    monkeypatch.setenv("RECON_DUCKDB_MEMORY_LIMIT", "16MB")
    store.reopen()  # the index is on disk again, the limit the small one

    def touch_a_tenth() -> None:
        with store.transaction():
            store.con.execute("DELETE FROM settled WHERE key IN (SELECT md5((i * 7)::VARCHAR) FROM range(30000) t(i))")
            store.con.execute("INSERT OR REPLACE INTO settled (key, generation, settled_at) "
                              "SELECT md5((i * 7)::VARCHAR), 'h', now() FROM range(30000) t(i)")

    with pytest.raises(duckdb.OutOfMemoryException), store.memory_for_rows(30_000):
        touch_a_tenth()
    with store.memory_for_rows(30_000, ["settled"]):
        touch_a_tenth()
    assert store.con.execute("SELECT count(*) FROM settled WHERE generation = 'h'").fetchall() == [(30_000,)]
    with pytest.raises(StoreError, match="no table"):
        store.row_count("nonesuch")


def test_reopen_gives_a_fresh_connection_to_the_same_data_with_the_configured_limit(store, monkeypatch) -> None:
    """Planning after a snapshot starts on a new connection (stages/plan.py): the old one is closed, what it held in
    memory goes with it (here a table in its own memory), the file's rows and the memory limit are as configured."""
    store.start_run("plan", ["loc"])
    old = store.con
    old.execute("CREATE TEMP TABLE held AS SELECT range AS i FROM range(1000)")
    old.execute("SET memory_limit = '1GB'")
    store.reopen()
    assert store.con is not old
    with pytest.raises(duckdb.ConnectionException):
        old.execute("SELECT 1")
    assert store.con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]
    assert not store.con.execute("SELECT * FROM duckdb_tables() WHERE table_name = 'held'").fetchall()
    configured = db.limit_bytes(store.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
    assert configured is not None and abs(configured - 256 * 10**6) < 2**20
    with open_db(":memory:") as memory:  # nothing to reopen: a store in memory keeps its data
        memory.start_run("plan", ["loc"])
        memory.reopen()
        assert memory.con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]


def test_journal_and_reviews_made_before_a_reopen_use_the_new_connection(store) -> None:
    """A Journal or Reviews built on the store before `Store.reopen` reads and writes through the store's connection of
    now, not the closed one (a reopen between the stages of a run broke them: ConnectionException)."""
    run_id = store.start_run("reconcile", ["loc"])
    journal, reviews = Journal(store), Reviews(store)
    store.reopen()
    assert journal.op_count(run_id) == 0
    reviews.seen("conflict", ["k1|email"], run_id)
    assert store.con.execute("SELECT item_id FROM review_ages").fetchall() == [("k1|email",)]


def test_id_map_and_review(store, clock: Clock) -> None:
    store.save_id_map(pl.DataFrame([{"contact_id": "c1", "location_id": "L1", "email": "a@example.com",
                                     "matched_by": "email"}], schema=ID_MAP), "r1")
    store.save_id_map(pl.DataFrame([{"contact_id": "c1", "location_id": "L1", "email": "b@example.com",
                                     "matched_by": "manual"}], schema=ID_MAP), "r2")
    assert store.load_id_map().select("contact_id", "email", "matched_by", "run_id").rows() == [
        ("c1", "b@example.com", "manual", "r2")]
    review = pl.DataFrame([{"kind": "email_changed", "contact_ids": ["c1"], "email": "n@example.com",
                            "old_email": "o@example.com", "detail": "d"}], schema=REVIEW)
    store.save_review(review, "r1")
    clock.advance(hours=1)
    store.save_review(review.with_columns(email=pl.lit("m@example.com")), "r2")
    assert store.load_review()["email"].to_list() == ["m@example.com"]
    assert store.load_review("r1")["email"].to_list() == ["n@example.com"]


def test_dirty_marks_arriving_during_a_refetch_survive_it(store, clock: Clock) -> None:
    store.mark_dirty("L1", "c1", "NoteCreate")
    refetch_started = clock()
    clock.advance(seconds=1)
    store.mark_dirty("L1", "c2", "NoteUpdate")  # arrives while the refetch runs
    store.clear_dirty([("L1", "c1"), ("L1", "c2")], marked_before=refetch_started + timedelta(microseconds=1))
    assert store.dirty_contacts()["contact_id"].to_list() == ["c2"]


def test_many_dirty_marks_go_in_one_statement_and_clear_only_their_own(store, clock: Clock) -> None:
    """A first snapshot larger than the day's allowance defers most contacts: marked in bulk (a repeated id once,
    a mark already there re-dated), then cleared in bulk for one location only, a newer mark kept."""
    store.mark_dirty("L1", "c0", "NoteCreate")
    clock.advance(seconds=1)
    ids = [f"c{i}" for i in range(20_000)]
    assert store.mark_dirty_many("L1", [*ids, "c7"], "deferred: request budget") == 20_000
    assert store.mark_dirty_many("L2", ["c1"], "deferred: request budget") == 1
    assert store.mark_dirty_many("L1", [], "deferred: request budget") == 0
    marks = store.dirty_contacts()
    assert marks.height == 20_001
    assert set(marks.filter(pl.col("contact_id") == "c0")["reason"]) == {"deferred: request budget"}
    read_started = clock()
    clock.advance(seconds=1)
    store.mark_dirty("L1", "c5", "NoteUpdate")  # arrives while the refetch runs
    store.clear_dirty([("L1", c) for c in ids[:10_000]], marked_before=read_started + timedelta(microseconds=1))
    left = store.dirty_contacts()
    assert sorted(left.filter(pl.col("location_id") == "L1")["contact_id"]) == sorted(["c5", *ids[10_000:]])
    assert left.filter(pl.col("location_id") == "L2")["contact_id"].to_list() == ["c1"]
    store.clear_dirty([], marked_before=clock())
    assert store.dirty_contacts().height == left.height
