"""The apply stage's write-ahead journal in DuckDB: every op of a run is recorded before anything is sent.

Life of an op (`status`):

    planned --send--> sending --answer--> done | rejected | failed | stale
    quarantined, held: recorded, never sent (a blocking check; a guard nobody approved, an identity review)

`rejected`: the API refused the op's content (400/422); `failed`: the service did not take it (outage, rate
limit, unknown outcome not resolved) and the next run plans it again.

Each transition is its own committed statement, and `sending` is committed *before* the request leaves,
so after a crash (SIGKILL included) the journal tells exactly which ops may have landed: those left in
`sending`. `recover` (contact_recon/stages/apply.py) resolves them by reading the target before anything else is sent.

Columns beyond the op (contact_recon/model/ops.py): `seq` (plan order), `location_id` (the GHL location), `attempts`,
`error_kind` (rejected | unknown | unavailable | precondition | dependency | not_found | auth), `last_error`
(redacted), `result_id` (the id an API returned, e.g. a created contact's), `quarantined_by`, and times.
A `rejected` op (400/422) is not sent again while it writes the same value (`rejected_before`: same target,
kind, key, field and new, whatever the planner's reason), until a person retries it (`retry_rejected`, from
`recon quarantine retry OP_ID`): then the next run sends it once more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from contact_recon.model.keys import is_te_key
from contact_recon.store.db import Store
from contact_recon.systems.redaction import redact

PLANNED, SENDING, DONE, FAILED, STALE = "planned", "sending", "done", "failed", "stale"
QUARANTINED, HELD = "quarantined", "held"
REJECTED, UNKNOWN, UNAVAILABLE, PRECONDITION, DEPENDENCY = "rejected", "unknown", "unavailable", "precondition", \
    "dependency"
FINAL = (DONE, REJECTED, FAILED, STALE, QUARANTINED, HELD)  # REJECTED: a status and an error_kind
HOME_LIST_KEY = "tinyemail:home-list"  # created_objects row of the list our created customers join
OP_COLUMNS = ("op_id", "target", "kind", "key", "field", "expected", "new", "reason")
# two journal rows `a` and `b` write the same value the same way (whatever the planner's reason)
_SAME_WRITE = ("{a}.target = {b}.target AND {a}.kind = {b}.kind AND {a}.key = {b}.key AND {a}.field IS NOT "
               "DISTINCT FROM {b}.field AND {a}.new IS NOT DISTINCT FROM {b}.new")


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal row as the executor handles it."""

    run_id: str
    op_id: str
    seq: int
    target: str
    kind: str
    key: str
    field: str | None
    expected: str | None
    new: str | None
    reason: str
    location_id: str | None
    status: str
    attempts: int
    result_id: str | None = None

    @property
    def rule(self) -> str:
        """The task/note rule id (task_create and note_create carry it in `field`)."""
        return self.field or ""


class Journal:
    """Journal rows of the store's DuckDB connection (`contact_recon/store/db.py`, migration 4)."""

    def __init__(self, store: Store, on_closed: Callable[[int], None] | None = None):
        """`on_closed(n)`: told each time `n` ops get a final status (the apply stage's progress bar)."""
        self.store, self.on_closed = store, on_closed

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The store's connection now (`Store.reopen` replaces it between the stages of a run)."""
        return self.store.con

    def record(self, run_id: str, plan: pl.DataFrame) -> int:
        """Insert a run's ops (OP_COLUMNS + status, quarantined_by, location_id) in plan order, once: ops already
        journaled for this run keep their row (a resumed run). Returns how many rows were added."""
        frame = plan.with_row_index("seq").select(
            pl.lit(run_id).alias("run_id"), *OP_COLUMNS, pl.col("seq").cast(pl.Int32),
            pl.col("location_id").cast(pl.String), pl.col("status"), pl.col("quarantined_by").cast(pl.String))
        with self.store.transaction():
            before = self.op_count(run_id)
            self.store._insert(
                "INSERT OR IGNORE INTO journal BY NAME SELECT *, 0 AS attempts, ?::TIMESTAMPTZ AS planned_at "
                "FROM _frame", frame, [self.store.clock()])
            return self.op_count(run_id) - before

    def op_count(self, run_id: str) -> int:
        """How many ops the run journaled (0: it never reached the apply stage)."""
        return int(self.con.execute("SELECT count(*) FROM journal WHERE run_id = ?", [run_id]).fetchall()[0][0])

    def entries(self, run_id: str, statuses: Sequence[str] = (PLANNED,)) -> list[Entry]:
        """The run's ops in the given statuses, in plan order."""
        return self._entries("run_id = ? AND list_contains(?, status)", [run_id, list(statuses)])

    def unfinished(self) -> list[Entry]:
        """Ops of any run left `sending` (a crash or a kill between send and answer)."""
        return self._entries("status = ?", [SENDING])

    def _entries(self, where: str, params: list[Any]) -> list[Entry]:
        rows = self.con.execute(
            "SELECT run_id, op_id, seq, target, kind, key, field, expected, new, reason, location_id, status, "
            f"attempts, result_id FROM journal WHERE {where} ORDER BY run_id, seq", params).fetchall()
        return [Entry(*row) for row in rows]

    def sending(self, entries: Iterable[Entry]) -> None:
        """Mark ops as being sent (committed before the request leaves) and count the attempt."""
        self._set(entries, "status = ?, attempts = attempts + 1, sent_at = ?", [SENDING, self.store.clock()])

    def finish(self, entries: Iterable[Entry], status: str, *, error_kind: str | None = None,
               error: str | None = None, result_id: str | None = None) -> None:
        """Close ops with a final status (or back to `planned` for a later attempt), error and returned id."""
        entries = list(entries)
        if status != PLANNED and self.on_closed is not None:
            self.on_closed(len(entries))
        self._set(entries, "status = ?, error_kind = ?, last_error = ?, result_id = coalesce(?, result_id), "
                           "finished_at = ?",
                  [status, error_kind, redact(error)[:2000] if error else None, result_id, self.store.clock()])

    def _set(self, entries: Iterable[Entry], assignments: str, params: list[Any]) -> None:
        keys = [(e.run_id, e.op_id) for e in entries]
        by_run: dict[str, list[str]] = {}
        for run_id, op in keys:
            by_run.setdefault(run_id, []).append(op)
        with self.store.transaction():
            for run_id, ops in by_run.items():
                if len(ops) == 1:  # a point update through the primary key
                    self.con.execute(f"UPDATE journal SET {assignments} WHERE run_id = ? AND op_id = ?",
                                     [*params, run_id, ops[0]])
                else:
                    self.con.execute(f"UPDATE journal SET {assignments} FROM (SELECT unnest(?::VARCHAR[]) AS id) "
                                     "AS ids WHERE journal.run_id = ? AND journal.op_id = ids.id",
                                     [*params, ops, run_id])

    def ghl_writes_since(self, location_id: str, since: datetime) -> dict[str, datetime]:
        """The GHL contacts of a location written (done) since `since`: contact id -> when the last write was
        sent (a created contact under the id GHL returned). The snapshot re-reads them if search shows them older."""
        rows = self.store.con.execute(
            "SELECT CASE WHEN kind = 'create' THEN result_id ELSE key END AS contact_id, max(sent_at) FROM journal "
            "WHERE target = 'ghl' AND status = ? AND location_id = ? AND sent_at >= ? GROUP BY 1",
            [DONE, location_id, since]).fetchall()
        return {contact_id: sent for contact_id, sent in rows if contact_id and sent is not None}

    def rejected_before(self, op_ids: Iterable[str], run_id: str) -> dict[str, str]:
        """op id -> the API's message, for the run's ops whose value an earlier run had rejected (400/422).

        An op is the same write as a rejected one when it writes the same value the same way (target, kind,
        key, field and new): the reason the planner gives can change from night to night (a first fill, then a
        change on one side) without the value changing. A person's retry of such a write (rejection_retries,
        `recon quarantine retry`) lifts the rejections made before it.
        """
        rows = self.con.execute(
            f"SELECT cur.op_id, arg_max(old.last_error, old.finished_at) FROM journal cur JOIN journal old "
            f"ON {_SAME_WRITE.format(a='old', b='cur')} WHERE cur.run_id = ? AND list_contains(?, cur.op_id) "
            "AND old.run_id <> ? AND old.error_kind = ? AND NOT EXISTS (SELECT 1 FROM rejection_retries r JOIN "
            f"journal rj ON rj.op_id = r.op_id WHERE {_SAME_WRITE.format(a='rj', b='cur')} "
            "AND r.retried_at > old.finished_at) GROUP BY cur.op_id",
            [run_id, list(op_ids), run_id, REJECTED]).fetchall()
        return dict(rows)

    def rejections(self, run_id: str) -> pl.DataFrame:
        """The run's rejected ops that no person retried since (what `recon quarantine list` shows beside the
        quarantined ops): each run marks again the rejected ops it still plans, so the latest run's are the
        standing ones."""
        return self.store._frame(
            "SELECT j.* FROM journal j LEFT JOIN rejection_retries r USING (op_id) WHERE j.run_id = ? AND "
            "j.status = ? AND (r.retried_at IS NULL OR j.finished_at > r.retried_at) ORDER BY j.seq",
            [run_id, REJECTED])

    def retry_rejected(self, op_id: str, run_id: str, note: str | None = None) -> bool:
        """Let the next run send a rejected op of `run_id` again (once: a new rejection stands again); False when
        the run has no standing rejection of that op."""
        if op_id not in self.rejections(run_id)["op_id"].to_list():
            return False
        self.con.execute("INSERT OR REPLACE INTO rejection_retries VALUES (?, ?, ?)", [op_id, self.store.clock(), note])
        return True

    def result_of(self, run_id: str, key: str, kind: str, target: str) -> str | None:
        """The id returned to a run's op of `kind` on `key` (e.g. the contact a create made), if any."""
        rows = self.con.execute("SELECT result_id FROM journal WHERE run_id = ? AND key = ? AND kind = ? "
                                "AND target = ? AND result_id IS NOT NULL", [run_id, key, kind, target]).fetchall()
        return rows[0][0] if rows else None

    def frame(self, run_id: str) -> pl.DataFrame:
        """Every journal row of the run, in plan order."""
        return self.store._frame("SELECT * FROM journal WHERE run_id = ? ORDER BY seq", [run_id])

    def counts(self, run_id: str) -> dict[str, int]:
        rows = self.con.execute("SELECT status, count(*) FROM journal WHERE run_id = ? GROUP BY status",
                                [run_id]).fetchall()
        return dict(rows)

    def target_counts(self, run_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """run id -> target system -> how many ops the run journaled for it (runs without a journal left out)."""
        rows = self.con.execute("SELECT run_id, target, count(*) AS n FROM journal WHERE list_contains(?, run_id) "
                                "GROUP BY ALL", [list(run_ids)]).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for run_id, target, n in rows:
            counts.setdefault(run_id, {})[target] = n
        return counts

    def kind_counts(self, run_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """run id -> op kind -> how many ops the run journaled of it (runs without a journal left out)."""
        rows = self.con.execute("SELECT run_id, kind, count(*) AS n FROM journal WHERE list_contains(?, run_id) "
                                "GROUP BY ALL", [list(run_ids)]).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for run_id, kind, n in rows:
            counts.setdefault(run_id, {})[kind] = n
        return counts

    # --------------------------------------------------------------------------- created memory

    def remember_created(self, entry: Entry, object_id: str | None, contact_id: str | None = None) -> None:
        """A task or note we created for (key, rule): never created again (merge table E). A person created in
        GHL by the same run is remembered under its contact id, the key every later plan gives it."""
        key = contact_id if contact_id and is_te_key(entry.key) else entry.key
        self.con.execute("INSERT OR REPLACE INTO created_objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [key, entry.rule, entry.kind, object_id, entry.op_id, entry.run_id,
                          self.store.clock()])

    def remember_home_list(self, name: str, list_id: str) -> None:
        """The TinyEmail list our created customers join (kept beside the created tasks and notes)."""
        self.con.execute("INSERT OR REPLACE INTO created_objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [HOME_LIST_KEY, name, "list", list_id, None, None, self.store.clock()])

    def home_lists(self) -> list[str]:
        rows = self.con.execute("SELECT object_id FROM created_objects WHERE key = ?", [HOME_LIST_KEY]).fetchall()
        return [r[0] for r in rows if r[0]]

    def created(self) -> pl.DataFrame:
        """The created memory as the merge engine takes it (merge.CREATED_SCHEMA)."""
        return self.store._frame("SELECT key, rule, object_id, kind FROM created_objects WHERE key <> ? "
                                 "ORDER BY key, rule", [HOME_LIST_KEY])


def now_iso(moment: datetime) -> str:
    return moment.isoformat()
