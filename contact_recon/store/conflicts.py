"""Conflicts across runs in the store: since when each is open (`conflict_seen`) and those skipped (`conflict_skips`).

`ConflictLog(store)` keeps the two tables of migration 7 (`contact_recon/store/db.py`); the pure rules are in
`contact_recon/engine/conflicts.py`. The plan stage reads `seen()` and `skips()`, and `record`s what it
reported: the tracked rows (`engine.conflicts.track`) with the values and the person's context of this run's
`conflicts.csv` rows. `recon conflicts import` `save_skips` the rows answered `skip`; `recon conflicts list`
reads `open_conflicts()` (with the pending decisions); `recon conflicts undo KEY FIELD` `undo`es a decision
and its skip, so the conflict is reported again by the next run.
"""

from __future__ import annotations

import polars as pl

from contact_recon.engine.conflicts import PRESENCE, SEEN, SKIPS, field_key
from contact_recon.store.db import Store

_SHOWN = ("reason", "base", "tinyemail", "ghl", "location_id", "email", "name", "ghl_url")
_SEEN_COLUMNS = ("key", "field", *_SHOWN, "first_seen", "last_seen", "last_run", "open")


class ConflictLog:
    """The `conflict_seen` and `conflict_skips` rows of the store's DuckDB connection."""

    def __init__(self, store: Store):
        self.store = store

    def seen(self) -> pl.DataFrame:
        """Every tracked conflict (SEEN columns), open or closed."""
        frame = self.store._frame("SELECT key, field, reason, first_seen, last_seen, open FROM conflict_seen")
        return frame.cast(SEEN)

    def record(self, tracked: pl.DataFrame, review: pl.DataFrame, run_id: str) -> int:
        """Store this run's tracked rows (SEEN): the open ones with what the review rows (engine.conflicts
        CSV_SCHEMA) show, the closed ones marked closed (keeping what they showed last); how many rows."""
        shown = field_key(review).select("key", "field", *_SHOWN).unique(["key", "field"], keep="first")
        opened = (tracked.filter(pl.col("open")).drop("reason")
                  .join(shown, on=["key", "field"], how="left").with_columns(last_run=pl.lit(run_id)))
        closed = tracked.filter(~pl.col("open")).select("key", "field")
        with self.store.transaction():
            if opened.height:
                self.store._insert("INSERT OR REPLACE INTO conflict_seen BY NAME SELECT * FROM _frame",
                                   opened.select(list(_SEEN_COLUMNS)))
            if closed.height:
                self.store.con.executemany("UPDATE conflict_seen SET open = false WHERE key = ? AND field = ?",
                                           [list(row) for row in closed.iter_rows()])
        return tracked.height

    def skips(self) -> pl.DataFrame:
        """The conflicts acknowledged with `skip` (SKIPS columns)."""
        return self.store._frame("SELECT key, field, reason, base, tinyemail, ghl FROM conflict_skips").cast(
            SKIPS)

    def save_skips(self, skips: pl.DataFrame, source: str) -> int:
        """Upsert skipped conflicts by (key, field), with the values the person saw."""
        if skips.height == 0:
            return 0
        with self.store.transaction():
            self.store._insert("INSERT OR REPLACE INTO conflict_skips BY NAME SELECT *, ?::TIMESTAMPTZ AS "
                               "skipped_at, ?::VARCHAR AS source FROM _frame",
                               skips.select(list(SKIPS)), [self.store.clock(), source])
        return skips.height

    def open_conflicts(self) -> pl.DataFrame:
        """The open conflicts as the last run that saw them showed them, with the pending decision of each."""
        return self.store._frame(
            "SELECT s.key, s.location_id, s.email, s.name, nullif(s.field, '') AS field, s.base, s.tinyemail, s.ghl, "
            "s.reason, s.first_seen, s.last_seen, s.last_run, s.ghl_url, d.choice AS decision, d.value "
            "FROM conflict_seen s LEFT JOIN conflict_decisions d "
            "ON d.key = s.key AND d.field = s.field AND d.used_by_run IS NULL "
            "WHERE s.open ORDER BY s.first_seen, s.key, s.field")

    def undo(self, key: str, field: str | None) -> int:
        """Forget the decision (pending or used) and the skip of one conflict; how many rows were removed."""
        where = [key, field or PRESENCE]
        with self.store.transaction():
            removed = 0
            for table in ("conflict_decisions", "conflict_skips"):
                row = self.store.con.execute(f"DELETE FROM {table} WHERE key = ? AND field = ? RETURNING key",
                                             where).fetchall()
                removed += len(row)
        return removed
