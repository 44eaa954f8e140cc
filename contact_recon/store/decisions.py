"""The data team's decisions in the store: the filled-in conflicts.csv read from disk, and `conflict_decisions`.

`read_decisions(path, known_keys)` reads a filled-in conflicts.csv and hands its header and rows to the pure
checks of `contact_recon/engine/decisions.py` (one bad row imports nothing: `DecisionFileError`).
`Decisions(store)` is the `conflict_decisions` table (`contact_recon/store/db.py`, migration 4): `save`
upserts by (key, field) with `used_by_run` null, pending for the next run; the plan stage turns `pending()`
into ops (`decision_ops`); the apply stage `mark_used`s those the run carried out.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from contact_recon.engine.decisions import DECISIONS, DecisionFile, DecisionFileError, check_columns, check_decisions
from contact_recon.model.cells import unguard_row
from contact_recon.store.db import Store, columns_but


def read_decisions(path: Path, known_keys: Iterable[str], *, default_region: str = "US",
                   countries: Mapping[str, str | None] | None = None) -> DecisionFile:
    """Read and check a filled-in conflicts.csv (phones read in each key's country of `countries`, else
    `default_region`); DecisionFileError (every bad line named) if any row is bad."""
    known = set(known_keys)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            check_columns(path, reader.fieldnames)
            rows = [(reader.line_num, unguard_row(row)) for row in reader]  # the cells `guarded` wrote
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DecisionFileError(path, [f"cannot read the file: {exc}"]) from exc
    return check_decisions(path, rows, known, default_region=default_region, countries=countries)


class Decisions:
    """The `conflict_decisions` rows of the store's DuckDB connection."""

    def __init__(self, store: Store):
        self.store = store

    def known_keys(self) -> set[str]:
        """Every person key the store knows: the base, every snapshotted GHL contact and TinyEmail customer."""
        rows = self.store.con.execute(
            "SELECT key FROM base UNION SELECT contact_id FROM snap_ghl_contacts WHERE contact_id IS NOT NULL "
            "UNION SELECT 'te:' || email FROM snap_te_customers WHERE email IS NOT NULL").fetchall()
        return {row[0] for row in rows}

    def countries(self) -> dict[str, str | None]:
        """Each person key's country as the latest snapshots hold it: a contact's own, else that of the
        TinyEmail customer with its email; a `te:<email>` key the customer's (phones are read in it)."""
        ghl = self.store.latest_snapshot("ghl_contacts", without=columns_but("ghl_contacts", "contact_id", "email",
                                                                             "country"))
        te = self.store.latest_snapshot("te_customers", without=columns_but("te_customers", "email", "country"))
        te_country = {e: c for e, c in te.iter_rows() if e and c}
        out: dict[str, str | None] = {f"te:{e}": c for e, c in te_country.items()}
        for contact_id, email, country in ghl.iter_rows():
            out[contact_id] = country or te_country.get(email or "")
        return out

    def save(self, decisions: pl.DataFrame, source: str) -> int:
        """Upsert decisions by (key, field), pending (used_by_run null) for the next run; returns how many."""
        rows = [[*row, self.store.clock(), source] for row in decisions.select(list(DECISIONS)).iter_rows()]
        if not rows:
            return 0
        with self.store.transaction():
            self.store.con.executemany(
                "INSERT OR REPLACE INTO conflict_decisions (key, field, choice, value, imported_at, source, "
                "used_by_run) VALUES (?, ?, ?, ?, ?, ?, NULL)", rows)
        return len(rows)

    def pending(self) -> pl.DataFrame:
        """Decisions no run has used yet (DECISIONS columns), the input of `decision_ops`."""
        frame = self.store._frame("SELECT key, field, choice, value FROM conflict_decisions "
                                  "WHERE used_by_run IS NULL ORDER BY key, field")
        return frame.cast(DECISIONS)

    def mark_used(self, decisions: pl.DataFrame, run_id: str) -> None:
        """Record that `run_id` applied these decisions (they are no longer pending)."""
        with self.store.transaction():
            for key, field in decisions.select("key", "field").iter_rows():
                self.store.con.execute("UPDATE conflict_decisions SET used_by_run = ? WHERE key = ? AND field = ?",
                                       [run_id, key, field])

