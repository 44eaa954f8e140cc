"""The review loop's tables (`contact_recon/store/db.py`, migration 8) and the filled-in identity.csv read from disk.

`Reviews(store)`:
- `seen(item_kind, ids, run_id)`: a run's identity reviews and quarantined ops are upserted into `review_ages`
  (first_seen kept, last_seen moved), and `ages(item_kind)` gives each item's first_seen;
- `identity_decisions` [review_id]: `decide` upserts the team's answers (`reopen` sets `reopened_at`: the
  decision is undone and kept as a record); `standing_decisions()` are those not reopened, which the plan
  stage hands to the matcher (`contact_recon/engine/reviews.py decided_effects`);
- `quarantine_dismissals` [op_id]: `dismiss` / `restore` (sets `restored_at`); `dismissed()` the standing ones.

`read_identity_decisions(path, known)` reads a filled-in identity.csv (cells unguarded as `guarded` wrote them)
and hands its rows to the pure checks (`check_identity_rows`; one bad row imports nothing).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import duckdb
import polars as pl

from contact_recon.engine.reviews import (
    AGES,
    DECIDED,
    IDENTITY_CSV,
    QUARANTINE_VIEW,
    REOPEN,
    IdentityDecisionFile,
    IdentityFileError,
    check_identity_rows,
    with_review_ids,
)
from contact_recon.model.cells import unguard_row, unguarded
from contact_recon.store.db import Store
from contact_recon.store.files import IDENTITY_FILE, QUARANTINE_FILE, run_dir

KNOWN = pl.Schema({"review_id": pl.String(), "kind": pl.String(), "contact_ids": pl.List(pl.String()),
                   "email": pl.String(), "old_email": pl.String(), "location_ids": pl.List(pl.String())})


def load_identity_file(data_dir: str | Path, run_id: str) -> pl.DataFrame | None:
    """A run's identity.csv as it was before `guarded` (IDENTITY_CSV), None when the run has none."""
    path = run_dir(data_dir, run_id) / IDENTITY_FILE
    return unguarded(pl.read_csv(path, schema=IDENTITY_CSV)) if path.exists() else None


def load_quarantine_file(data_dir: str | Path, run_id: str,
                         dismissed: pl.DataFrame | None = None) -> pl.DataFrame | None:
    """A run's quarantine.parquet (QUARANTINE_VIEW), None when the run has none; with `dismissed` (Reviews.dismissed)
    the dismissals as they stand now."""
    path = run_dir(data_dir, run_id) / QUARANTINE_FILE
    if not path.exists():
        return None
    rows = pl.read_parquet(path)
    if dismissed is not None:
        notes = dict(dismissed.select("op_id", "note").iter_rows())
        rows = rows.with_columns(dismissed=pl.col("op_id").is_in(list(notes)),
                                 note=pl.col("op_id").replace_strict(notes, default=None, return_dtype=pl.String))
    return rows.cast(QUARANTINE_VIEW)


def read_identity_decisions(path: Path, known: pl.DataFrame) -> IdentityDecisionFile:
    """Read and check a filled-in identity.csv; IdentityFileError (every bad line named) if any row is bad."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames
            rows = [(reader.line_num, unguard_row(row)) for row in reader]  # the cells `guarded` wrote
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IdentityFileError(path, [f"cannot read the file: {exc}"]) from exc
    return check_identity_rows(path, columns, rows, known)


class Reviews:
    """The review loop's rows of the store's DuckDB connection."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The store's connection now (`Store.reopen` replaces it)."""
        return self.store.con

    # ---------------------------------------------------------------------------------------- ages

    def seen(self, item_kind: str, ids: Iterable[str], run_id: str) -> None:
        """Record that `run_id` had these items open: new ones get first_seen now, known ones last_seen."""
        now = self.store.clock()
        rows = [[item_kind, item_id, now, run_id, now, run_id] for item_id in sorted(set(ids))]
        if not rows:
            return
        with self.store.transaction():
            self.con.executemany(
                "INSERT INTO review_ages VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (item_kind, item_id) DO UPDATE "
                "SET last_seen = excluded.last_seen, last_run = excluded.last_run", rows)

    def ages(self, item_kind: str) -> pl.DataFrame:
        """AGES (item_id, first_seen) of every item of a kind."""
        frame = self.store._frame("SELECT item_id, first_seen FROM review_ages WHERE item_kind = ? ORDER BY item_id",
                                  [item_kind])
        return frame.select(pl.col("item_id").cast(pl.String),
                            pl.col("first_seen").cast(pl.Datetime("us", "UTC"))).cast(AGES)

    # ------------------------------------------------------------------------------ identity decisions

    def known_reviews(self) -> pl.DataFrame:
        """KNOWN: every identity review the store has recorded (any run), with the location of each contact."""
        reviews = self.store._frame("SELECT DISTINCT kind, contact_ids, email, old_email FROM identity_review")
        if reviews.height == 0:
            return pl.DataFrame(schema=KNOWN)
        frame = with_review_ids(reviews.cast({"contact_ids": pl.List(pl.String())})).unique("review_id")
        involved = sorted(set(frame["contact_ids"].explode().drop_nulls().to_list()))
        located = dict(self.con.execute("SELECT contact_id, any_value(location_id) FROM snap_ghl_contacts "
                                        "WHERE list_contains(?, contact_id) GROUP BY contact_id",
                                        [involved]).fetchall())
        locations = [[located.get(c) for c in ids or []] for ids in frame["contact_ids"].to_list()]
        return frame.with_columns(pl.Series("location_ids", locations, pl.List(pl.String()))).select(
            list(KNOWN)).cast(KNOWN).sort("review_id")

    def decide(self, decisions: pl.DataFrame, source: str) -> int:
        """Store DECIDED rows (a `reopen` undoes the standing decision of its review); returns how many."""
        now = self.store.clock()
        with self.store.transaction():
            for d in decisions.iter_rows(named=True):
                if d["decision"] == REOPEN:
                    self.con.execute("UPDATE identity_decisions SET reopened_at = ? WHERE review_id = ?",
                                     [now, d["review_id"]])
                    continue
                self.con.execute(
                    "INSERT OR REPLACE INTO identity_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    [d["review_id"], d["kind"], d["contact_ids"], d["email"], d["old_email"], d["decision"],
                     d["contact_id"], d["location_id"], d["note"], now, source])
        return decisions.height

    def standing_decisions(self) -> pl.DataFrame:
        """DECIDED rows of the decisions not reopened."""
        frame = self.store._frame(f"SELECT {', '.join(DECIDED)} FROM identity_decisions WHERE reopened_at IS NULL "
                                  "ORDER BY review_id")
        return frame.cast(DECIDED) if frame.height else pl.DataFrame(schema=DECIDED)

    def decision_log(self) -> pl.DataFrame:
        """Every identity decision, reopened ones included (decided_at, reopened_at)."""
        return self.store._frame("SELECT * FROM identity_decisions ORDER BY decided_at, review_id")

    # ---------------------------------------------------------------------------------- dismissals

    def dismiss(self, op_id: str, note: str | None) -> None:
        self.con.execute("INSERT OR REPLACE INTO quarantine_dismissals VALUES (?, ?, ?, NULL)",
                         [op_id, note, self.store.clock()])

    def restore(self, op_id: str) -> bool:
        """Undo a standing dismissal; False when there was none."""
        rows = self.con.execute("UPDATE quarantine_dismissals SET restored_at = ? WHERE op_id = ? AND restored_at "
                                "IS NULL RETURNING op_id", [self.store.clock(), op_id]).fetchall()
        return bool(rows)

    def dismissed(self) -> pl.DataFrame:
        """(op_id, note, dismissed_at) of the standing dismissals."""
        frame = self.store._frame("SELECT op_id, note, dismissed_at FROM quarantine_dismissals WHERE restored_at "
                                  "IS NULL ORDER BY op_id")
        return frame if frame.height else pl.DataFrame(schema={"op_id": pl.String(), "note": pl.String(),
                                                               "dismissed_at": pl.Datetime("us", "UTC")})
