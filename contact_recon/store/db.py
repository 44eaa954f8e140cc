"""The DuckDB store at `$RECON_DATA_DIR/recon.duckdb`: run history, snapshots, base, id_map, watermarks.

`open_db(path)` opens (creating) the file and brings its schema up to date: `schema_version` holds
one row per applied migration; `MIGRATIONS` is an ordered list and every migration whose version is
above the stored one runs, in order, each in its own transaction together with its
`schema_version` row, so a migration is applied exactly once or not at all. A file newer than the
code (a version above the last known migration) is refused with `SchemaTooNew`.

Snapshots are written in ONE transaction per run (`write_snapshot`): the frames of every entity,
their `snapshot_parts` rows and the new watermarks commit together or not at all. A crash before the
commit leaves the previous snapshot and watermarks as they were (DuckDB's WAL only replays committed
transactions). Frames go in through DuckDB's Arrow scan of the polars frame (`INSERT ... SELECT
FROM` a registered frame), without a Python loop over rows.

A run's snapshot of an entity is complete for each location it covers (an incremental fetch is
overlaid on the previous snapshot by the snapshot stage before it is written; the GHL tasks and notes of the
contacts not read tonight are copied from the latest part inside DuckDB, in the same transaction:
`write_snapshot`'s `carried`, so they never pass through Python). `snapshot_parts`
records which (run, entity, location) were written, even when empty, so `latest_snapshot` takes per
location the most recently written part, and an empty answer is told apart from "never fetched".

Schema (version 1; timestamps are TIMESTAMPTZ in UTC; list columns are VARCHAR[]; keys in brackets):

- `schema_version` [version]: version, description, applied_at.
- `runs` [run_id]: run_id, kind ('snapshot', 'plan', 'reconcile', 'sync'), status ('running', then
  'succeeded' or 'failed' for a snapshot; the plan and apply statuses of `contact_recon/stages/run.py`),
  started_at, finished_at, location_ids, plan_json (the request plan, or a plan run's summary),
  requests_used_json, error (redacted).
- `snap_ghl_contacts` [run_id, location_id, contact_id]: run_id + records.GHL_CONTACTS.
- `snap_ghl_tasks` [run_id, location_id, task_id]: run_id + records.GHL_TASKS.
- `snap_ghl_notes` [run_id, location_id, note_id]: run_id + records.GHL_NOTES.
- `snap_te_customers` [run_id, email]: run_id + records.TINYEMAIL_CUSTOMERS.
- `snapshot_parts` [run_id, entity, location_id]: location_id ('' for TinyEmail), row_count,
  seq (write order, from the `snapshot_seq` sequence), written_at.
- `base` [key]: records.MERGE_SIDE + updated_at, run_id: the last reconciled state per person key.
- `id_map` [location_id, contact_id]: contact_id, location_id, email, matched_by ('email',
  'manual', ...), matched_at, run_id.
- `identity_review`: run_id, kind ('email_shared_by_several', 'email_changed',
  'te_email_collision'), contact_ids, email, old_email, detail, created_at.
- `watermarks` [location_id, entity]: value, run_id, updated_at.
- `dirty_contacts` [location_id, contact_id]: reason, marked_at (webhooks mark contacts whose
  notes must be refetched; `clear_dirty` keeps marks that arrived during the refetch).
- `check_results` [run_id, suite, expectation] (version 2): success, unexpected_count, sample_values
  (JSON text: a list of strings), blocking, checked_at: the hygiene checks of each run (`checks/`).
- `runs` gains (version 3): held_reasons (JSON text: the guards a plan run tripped, a list of strings),
  approved_at (when a person approved it: `recon approve`, or a run with `--approve`). A plan run
  ends 'planned' or 'held'; `approve_run` turns 'held' into 'approved' (`contact_recon/stages/plan.py`).
- version 4: `journal` [run_id, op_id] (the apply stage's, `journal.py`), `created_objects` [key, rule]
  (the tasks and notes we created), `conflict_decisions` [key, field] (`decisions.py`); `base` gains
  in_ghl and in_tinyemail (on which sides the person was at the base).
- `runs` gains (version 5): policy_version (the short hash of the policy a plan used) and policy_source
  (`block recon-policy/<name>`, `file <path>`, `defaults` or `given`: `contact_recon/systems/policy_source.py`);
  null for a snapshot run, which uses no policy, and for runs recorded before version 5.
- version 6: `runs` gains flow_run_id (the Prefect flow run a held run waits in), approval_json (its answer,
  `contact_recon/model/approval.py`: approve all or chosen guards, or reject, with a note and who answered)
  and approval_expires_at. A held run ends 'approved', 'rejected' (`approve_run`) or, left unanswered past
  its window, 'expired' (`expire_held`); nothing of an expired or rejected run is ever written.
- version 7: `te_lists` [list_id] (TinyEmail's lists and their names) and `te_list_labels` [list_id, label]
  (every label a list's GHL tag has had: `contact_recon/model/list_tags.py`).
- version 8: `identity_decisions` [review_id] (the team's answers to identity reviews, `recon identity resolve`),
  `quarantine_dismissals` [op_id] (quarantined ops accepted as they are, `recon quarantine dismiss`) and
  `review_ages` [item_kind, item_id] (when each identity review or quarantined op was first and last seen);
  `contact_recon/store/reviews.py` holds their SQL.
- version 9: `conflict_seen` [key, field] (field '' for a presence conflict): reason, the values
  and the person's context it showed last, first_seen, last_seen, last_run, open; `conflict_skips` [key,
  field]: the conflicts a person answered `skip`, with the reason and values they saw, skipped_at, source
  (`conflicts.py`).
- version 10: `dirty_task_locations` [location_id]: reason, marked_at: a task webhook that named no contact
  (real TaskCreate payloads may lack `contactId`) marks its location's tasks; the next snapshot reads every
  task of that location, then clears the mark (`clear_tasks_dirty` keeps a mark that arrived meanwhile).

Every SQL statement of the product runs in this package: `Store` here (runs, snapshots, base, id_map,
review, dirty contacts, check results, and the run list `recon runs` and the report read), `Journal`
(`journal.py`), `Decisions` (`decisions.py`) and `ConflictLog` (`conflicts.py`) over the same connection.
Callers use named methods.

The snapshot tables carry no index or constraint (the keys above are logical): bulk ingest stays
fast and history rows of one key across runs are expected. `prune(keep_runs=, keep_days=)` deletes
old snapshot parts, never the latest part of an (entity, location); run history is kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from contact_recon.engine.identity import ID_MAP, REVIEW
from contact_recon.model.approval import Approval, tripped_guards
from contact_recon.model.list_tags import ListNames, labels
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, GHL_TASKS, MERGE_SIDE, TINYEMAIL_CUSTOMERS
from contact_recon.store.files import make_private, private_dir
from contact_recon.store.spill import Spill
from contact_recon.systems.redaction import redact

DB_FILE = "recon.duckdb"
WRITE_BATCH = 100_000  # rows per upsert statement: one of 1,000,000 base rows ran out of the 256 MB limit
# what a transaction's upserts hold in memory per row beyond the limit: the keys' index of the transaction's
# own rows does not spill (a first night's 1,000,000 base and 1,000,000 settled rows needed more than 256 MB and
# went through with 768 MB: about 256 bytes a row)
TRANSACTION_ROW_BYTES = 320
# what the key index (ART) of a table a transaction deletes from or upserts into holds a row of the table: it is loaded
# into memory as the statements touch it and does not spill before the commit (night 2 of 1,000,000 people: deleting and
# upserting a few thousand base and settled rows loaded 197 MB of index, and the advance stopped out of the 256 MB
# limit; 300,000 rows upserted into a 1,000,000-row table loaded 116 MB of it: about 120 bytes a row)
INDEX_ROW_BYTES = 160
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
DEFAULT_MEMORY_LIMIT = "256MB"  # DuckDB's buffers: reads of whole tables leave them; see memory_limit()
NO_LOCATION = ""  # snapshot_parts.location_id of entities that have no location (TinyEmail)


@dataclass(frozen=True)
class Entity:
    table: str
    schema: pl.Schema
    id_column: str
    has_location: bool


ENTITIES: dict[str, Entity] = {
    "ghl_contacts": Entity("snap_ghl_contacts", GHL_CONTACTS, "contact_id", True),
    "ghl_tasks": Entity("snap_ghl_tasks", GHL_TASKS, "task_id", True),
    "ghl_notes": Entity("snap_ghl_notes", GHL_NOTES, "note_id", True),
    "te_customers": Entity("snap_te_customers", TINYEMAIL_CUSTOMERS, "email", False),
}


PRESENCE = pl.Schema({"in_ghl": pl.Boolean(), "in_tinyemail": pl.Boolean()})  # on which sides, at the base


class StoreError(Exception):
    """A misuse of the store (unknown entity, a frame of the wrong shape, bad retention...)."""


class SchemaTooNew(StoreError):
    """The database file was migrated by a newer version of this code."""


class StoreBusy(StoreError):
    """Another process holds the store's file (`open_db(..., wait_s=...)` waited for it in vain)."""


class UnknownRun(StoreError):
    """No run has this id."""


class RunNotHeld(StoreError):
    """Only a held run can be approved."""


# ------------------------------------------------------------------------------------------- schema

_PERSON_COLUMNS = """
    email VARCHAR, first_name VARCHAR, last_name VARCHAR, phone VARCHAR, company VARCHAR, address1 VARCHAR,
    city VARCHAR, state VARCHAR, country VARCHAR, postal_code VARCHAR, birthday VARCHAR, source VARCHAR,
    tags VARCHAR[], consent VARCHAR"""
_FLAG_COLUMNS = "email_raw VARCHAR, email_valid BOOLEAN, phone_raw VARCHAR, phone_valid BOOLEAN"

_V1 = (
    """CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, status VARCHAR NOT NULL,
        started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ, location_ids VARCHAR[], plan_json VARCHAR,
        requests_used_json VARCHAR, error VARCHAR)""",
    f"""CREATE TABLE snap_ghl_contacts (run_id VARCHAR NOT NULL, contact_id VARCHAR, location_id VARCHAR,
        {_PERSON_COLUMNS}, {_FLAG_COLUMNS}, date_added VARCHAR, date_updated VARCHAR, raw VARCHAR,
        content_hash VARCHAR)""",
    """CREATE TABLE snap_ghl_tasks (run_id VARCHAR NOT NULL, task_id VARCHAR, contact_id VARCHAR,
        location_id VARCHAR, title VARCHAR, body VARCHAR, due_date VARCHAR, completed BOOLEAN,
        assigned_to VARCHAR, raw VARCHAR, content_hash VARCHAR)""",
    """CREATE TABLE snap_ghl_notes (run_id VARCHAR NOT NULL, note_id VARCHAR, contact_id VARCHAR,
        location_id VARCHAR, body VARCHAR, user_id VARCHAR, date_added VARCHAR, raw VARCHAR,
        content_hash VARCHAR)""",
    f"""CREATE TABLE snap_te_customers (run_id VARCHAR NOT NULL, {_PERSON_COLUMNS}, {_FLAG_COLUMNS},
        status VARCHAR, unsubscribed_at VARCHAR, lists VARCHAR[], raw VARCHAR, content_hash VARCHAR)""",
    "CREATE SEQUENCE snapshot_seq",
    """CREATE TABLE snapshot_parts (run_id VARCHAR NOT NULL, entity VARCHAR NOT NULL, location_id VARCHAR NOT NULL,
        row_count BIGINT NOT NULL, seq BIGINT NOT NULL, written_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (run_id, entity, location_id))""",
    f"""CREATE TABLE base (key VARCHAR PRIMARY KEY, contact_id VARCHAR, {_PERSON_COLUMNS}, lists VARCHAR[],
        updated_at TIMESTAMPTZ NOT NULL, run_id VARCHAR)""",
    """CREATE TABLE id_map (contact_id VARCHAR NOT NULL, location_id VARCHAR NOT NULL, email VARCHAR NOT NULL,
        matched_by VARCHAR NOT NULL, matched_at TIMESTAMPTZ NOT NULL, run_id VARCHAR,
        PRIMARY KEY (location_id, contact_id))""",
    """CREATE TABLE identity_review (run_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, contact_ids VARCHAR[],
        email VARCHAR, old_email VARCHAR, detail VARCHAR, created_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE watermarks (location_id VARCHAR NOT NULL, entity VARCHAR NOT NULL, value VARCHAR NOT NULL,
        run_id VARCHAR, updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (location_id, entity))""",
    """CREATE TABLE dirty_contacts (location_id VARCHAR NOT NULL, contact_id VARCHAR NOT NULL, reason VARCHAR,
        marked_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (location_id, contact_id))""",
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_V2 = (
    """CREATE TABLE check_results (run_id VARCHAR NOT NULL, suite VARCHAR NOT NULL, expectation VARCHAR NOT NULL,
        success BOOLEAN NOT NULL, unexpected_count BIGINT NOT NULL, sample_values VARCHAR, blocking BOOLEAN NOT NULL,
        checked_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (run_id, suite, expectation))""",
)

_V3 = (
    "ALTER TABLE runs ADD COLUMN held_reasons VARCHAR",
    "ALTER TABLE runs ADD COLUMN approved_at TIMESTAMPTZ",
)

_V4 = (
    # the apply stage's write-ahead journal: one row per op of a run, written before anything is sent
    """CREATE TABLE journal (run_id VARCHAR NOT NULL, op_id VARCHAR NOT NULL, seq INTEGER NOT NULL,
        target VARCHAR NOT NULL, kind VARCHAR NOT NULL, key VARCHAR NOT NULL, field VARCHAR, expected VARCHAR,
        new VARCHAR, reason VARCHAR NOT NULL, location_id VARCHAR, status VARCHAR NOT NULL,
        attempts INTEGER NOT NULL, error_kind VARCHAR, last_error VARCHAR, result_id VARCHAR,
        quarantined_by VARCHAR, planned_at TIMESTAMPTZ NOT NULL, sent_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
        PRIMARY KEY (run_id, op_id))""",
    # what we created in GHL by rule (tasks, notes): never created twice for one (key, rule)
    """CREATE TABLE created_objects (key VARCHAR NOT NULL, rule VARCHAR NOT NULL, kind VARCHAR NOT NULL,
        object_id VARCHAR, op_id VARCHAR, run_id VARCHAR, created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (key, rule))""",
    # the data team's decisions on conflicts (`recon conflicts import`), used by the next run
    """CREATE TABLE conflict_decisions (key VARCHAR NOT NULL, field VARCHAR NOT NULL, choice VARCHAR NOT NULL,
        value VARCHAR, imported_at TIMESTAMPTZ NOT NULL, source VARCHAR, used_by_run VARCHAR,
        PRIMARY KEY (key, field))""",
    # on which sides a person existed at the base (the merge engine's in_ghl / in_tinyemail)
    "ALTER TABLE base ADD COLUMN in_ghl BOOLEAN",
    "ALTER TABLE base ADD COLUMN in_tinyemail BOOLEAN",
)

_V5 = (
    "ALTER TABLE runs ADD COLUMN policy_version VARCHAR",
    "ALTER TABLE runs ADD COLUMN policy_source VARCHAR",
)

_V6 = (
    # a held run's answer and the Prefect flow run that waits for it (contact_recon/model/approval.py)
    "ALTER TABLE runs ADD COLUMN flow_run_id VARCHAR",
    "ALTER TABLE runs ADD COLUMN approval_json VARCHAR",
    "ALTER TABLE runs ADD COLUMN approval_expires_at TIMESTAMPTZ",
)

_V7 = (
    # TinyEmail's lists by id, with their names (GHL holds a list as the tag `list:<label>`:
    # contact_recon/model/list_tags.py), and every label a list's tag has had, so a renamed list's old tag is
    # still known as that list and is respelled once
    """CREATE TABLE te_lists (list_id VARCHAR PRIMARY KEY, name VARCHAR, first_seen TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL, run_id VARCHAR)""",
    """CREATE TABLE te_list_labels (list_id VARCHAR NOT NULL, label VARCHAR NOT NULL, seen_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (list_id, label))""",
)

_V8 = (
    # the team's answers to identity reviews; reopened_at set: undone (kept as a record), reviewed again
    """CREATE TABLE identity_decisions (review_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, contact_ids VARCHAR[],
        email VARCHAR, old_email VARCHAR, decision VARCHAR NOT NULL, contact_id VARCHAR, location_id VARCHAR,
        note VARCHAR, decided_at TIMESTAMPTZ NOT NULL, source VARCHAR, reopened_at TIMESTAMPTZ)""",
    # quarantined ops the team accepts as they are (never written, no longer open); restored_at set: undone
    """CREATE TABLE quarantine_dismissals (op_id VARCHAR PRIMARY KEY, note VARCHAR, dismissed_at TIMESTAMPTZ NOT NULL,
        restored_at TIMESTAMPTZ)""",
    # since when an identity review or a quarantined op has been open
    """CREATE TABLE review_ages (item_kind VARCHAR NOT NULL, item_id VARCHAR NOT NULL, first_seen TIMESTAMPTZ NOT NULL,
        first_run VARCHAR, last_seen TIMESTAMPTZ NOT NULL, last_run VARCHAR, PRIMARY KEY (item_kind, item_id))""",
)

_V9 = (
    # since when each conflict is open, with what it showed last (contact_recon/store/conflicts.py)
    """CREATE TABLE conflict_seen (key VARCHAR NOT NULL, field VARCHAR NOT NULL, reason VARCHAR, base VARCHAR,
        tinyemail VARCHAR, ghl VARCHAR, location_id VARCHAR, email VARCHAR, name VARCHAR, ghl_url VARCHAR,
        first_seen TIMESTAMPTZ NOT NULL, last_seen TIMESTAMPTZ NOT NULL, last_run VARCHAR, open BOOLEAN NOT NULL,
        PRIMARY KEY (key, field))""",
    # conflicts a person acknowledged with `skip`, with the values they saw
    """CREATE TABLE conflict_skips (key VARCHAR NOT NULL, field VARCHAR NOT NULL, reason VARCHAR, base VARCHAR,
        tinyemail VARCHAR, ghl VARCHAR, skipped_at TIMESTAMPTZ NOT NULL, source VARCHAR, PRIMARY KEY (key, field))""",
)

_V10 = (
    # a person's "send it again" for an op the API rejected (`recon quarantine retry`, store/journal.py)
    "CREATE TABLE rejection_retries (op_id VARCHAR PRIMARY KEY, retried_at TIMESTAMPTZ NOT NULL, note VARCHAR)",
)

_V11 = (
    # locations whose tasks a contact-less task webhook marked (contact_recon/stages/snapshot.py reads them all)
    """CREATE TABLE dirty_task_locations (location_id VARCHAR PRIMARY KEY, reason VARCHAR,
        marked_at TIMESTAMPTZ NOT NULL)""",
)

_V13 = (
    # contact_recon/store/settled.py: a person the last applied plan had nothing for, and what it had read of them;
    # the next plan leaves the person out while every digest is the same
    """CREATE TABLE settled (key VARCHAR PRIMARY KEY, contact_id VARCHAR, email VARCHAR, location_id VARCHAR,
        ghl_hash VARCHAR, te_hash VARCHAR, tasks_hash VARCHAR, facts VARCHAR, base_at TIMESTAMPTZ,
        person_case VARCHAR, generation VARCHAR NOT NULL, run_id VARCHAR, settled_at TIMESTAMPTZ NOT NULL)""",
)

_V12 = (
    # a person's custom fields as JSON text (records.py `custom`, model/custom_fields.py): GHL's by fieldKey,
    # TinyEmail's unmapped customer fields, the base's in the policy's names
    "ALTER TABLE snap_ghl_contacts ADD COLUMN custom VARCHAR",
    "ALTER TABLE snap_te_customers ADD COLUMN custom VARCHAR",
    "ALTER TABLE base ADD COLUMN custom VARCHAR",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, snapshots, base, id_map, identity review, watermarks, dirty contacts", _V1),
    Migration(2, "check_results: the hygiene checks of each run", _V2),
    Migration(3, "runs.held_reasons, runs.approved_at: guards tripped by a plan and its approval", _V3),
    Migration(4, "journal, created_objects, conflict_decisions; base.in_ghl/in_tinyemail", _V4),
    Migration(5, "runs.policy_version, runs.policy_source: the policy each run used", _V5),
    Migration(6, "runs.flow_run_id, approval_json, approval_expires_at: a held run's answer", _V6),
    Migration(7, "te_lists, te_list_labels: TinyEmail's list names, and the labels their GHL tags have had", _V7),
    Migration(8, "identity_decisions, quarantine_dismissals, review_ages: the review loop", _V8),
    Migration(9, "conflict_seen, conflict_skips: since when conflicts are open, and those skipped", _V9),
    Migration(10, "rejection_retries: rejected ops a person asked to send again", _V10),
    Migration(11, "dirty_task_locations: locations whose tasks a contact-less task webhook marked", _V11),
    Migration(12, "custom: a person's custom-field values in the snapshots and the base", _V12),
    Migration(13, "settled: people a run found nothing to do for, with the digests they were settled at", _V13),
)


def db_path(data_dir: str | Path) -> Path:
    """Where the store lives under a data dir (`$RECON_DATA_DIR/recon.duckdb`)."""
    return Path(data_dir) / DB_FILE


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_db(path: str | Path, *, migrations: Sequence[Migration] = MIGRATIONS,
            clock: Callable[[], datetime] = utc_now, wait_s: float | None = None) -> Store:
    """Open (creating) the store at `path` and apply every pending migration, in order, once.

    Args:
        path: the database file (its directory is created); ":memory:" for a throwaway store.
        migrations: the ordered migration list (versions 1, 2, ... without gaps); tests add their own.
        clock: gives the aware UTC datetimes written to every timestamp column.
        wait_s: while another process holds the file (a run: DuckDB locks it for one process), retry for this
            long, then raise StoreBusy; None: DuckDB's own error at once.
    """
    _check_migrations(migrations)
    on_disk = str(path) != ":memory:"
    if on_disk:
        private_dir(Path(path).parent)
        _drop_empty_file(Path(path))
    con = _connect(str(path), wait_s)
    try:
        _migrate(con, migrations, clock)
    except BaseException:
        con.close()
        raise
    store = Store(con, clock, Path(path) if on_disk else None)
    store.make_private()
    return store


def columns_but(entity: str, *kept: str) -> list[str]:
    """The columns of `entity` other than `kept`: the `without` of a read that takes only `kept`."""
    return [name for name in _entity(entity).schema if name not in kept]


def batches(frame: pl.DataFrame, size: int | None = None) -> Iterator[pl.DataFrame]:
    """`frame` in slices of `size` rows (default WRITE_BATCH; at least one slice, empty when the frame is): a
    statement's working memory (an upsert's index probes, a join's hash table) stays within the store's limit
    however large the frame, and inside one transaction the slices still commit together."""
    size = size or WRITE_BATCH
    for start in range(0, max(1, frame.height), size):
        yield frame.slice(start, size)


def memory_limit() -> str:
    """DuckDB's memory limit for the store: RECON_DUCKDB_MEMORY_LIMIT, default DEFAULT_MEMORY_LIMIT."""
    return os.environ.get("RECON_DUCKDB_MEMORY_LIMIT", "").strip() or DEFAULT_MEMORY_LIMIT


def limit_bytes(text: str) -> int | None:
    """A DuckDB memory size ("256MB", "1.5 GiB") in bytes; None when it is not one (a percentage, say)."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if found is None or found.group(2).upper() not in _UNITS:
        return None
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


REOPEN_WAIT_S = 60.0  # Store.reopen: another process that took the file in between has this long to let go


def _connect(path: str, wait_s: float | None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + (wait_s or 0.0)
    while True:
        try:
            con = duckdb.connect(path)
            # no progress bar: DuckDB draws it on stdout for a long query, into a command's output
            con.execute("SET enable_progress_bar = false")
            # DuckDB's buffers (a snapshot's carried rows, a transaction's appends) stay within this, spilling to
            # disk beyond it: by default DuckDB takes up to 80% of the machine (docs/configuration.md)
            con.execute("SET memory_limit = ?", [memory_limit()])
            return con
        except duckdb.IOException as exc:
            if wait_s is None or "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise StoreBusy(f"store busy: {path} is held by another process (a run in progress?); waited "
                                f"{wait_s:.0f} s, try again when it ends") from None
            time.sleep(0.25)


def _drop_empty_file(path: Path) -> None:
    """Remove an empty database file that nobody holds: what a creation cut short leaves (a full disk), which
    DuckDB refuses ever after as "not a valid DuckDB database file". DuckDB write-locks (fcntl) every file it
    has open, so a file we can lock is no process's database in the making."""
    try:
        if path.stat().st_size != 0:
            return
        with path.open("r+b") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.stat().st_size == 0:
                path.unlink()
    except (FileNotFoundError, BlockingIOError, PermissionError):
        return  # absent, or held by another process: DuckDB decides


def _check_migrations(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"migrations must be numbered 1, 2, ... in order, got {versions}")


def _migrate(con: duckdb.DuckDBPyConnection, migrations: Sequence[Migration], clock: Callable[[], datetime]) -> None:
    con.execute("""CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, description VARCHAR,
                   applied_at TIMESTAMPTZ NOT NULL)""")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
    if current > len(migrations):
        raise SchemaTooNew(f"database schema version {current} is newer than this code ({len(migrations)})")
    for migration in migrations[current:]:
        con.begin()
        try:
            for statement in migration.statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, ?, ?)",
                        [migration.version, migration.description, clock()])
            con.commit()
        except BaseException:
            con.rollback()
            raise


# -------------------------------------------------------------------------------------------- store


class Store:
    """One open connection to the store; use `open_db()` to get one. Not shared between threads."""

    def __init__(self, con: duckdb.DuckDBPyConnection, clock: Callable[[], datetime] = utc_now,
                 path: Path | None = None):
        self.con = con
        self.clock = clock
        self.path = path  # the database file; None in memory

    def close(self) -> None:
        self.con.close()
        self.make_private()

    def reopen(self) -> None:
        """The same file on a fresh connection, which starts with none of DuckDB's memory in use (a store in
        memory is kept as it is). After the second night's snapshot of a 1,000,000-contact location the connection
        still held its whole 256MB limit, and the plan's first read (the id map, a million rows) stopped out of
        memory; the same plan opened afresh ran in 20 s. What the snapshot left held was not found."""
        if self.path is None:
            return
        self.con.close()
        self.con = _connect(str(self.path), REOPEN_WAIT_S)

    def make_private(self) -> None:
        """The database file and its write-ahead log 0600: DuckDB creates them with the umask's mode. (A log that
        DuckDB makes again after a checkpoint has that mode until the next open or close: the data dir, 0700,
        keeps it from anyone else meanwhile.)"""
        if self.path is not None:
            make_private(self.path)
            make_private(self.path.with_name(self.path.name + ".wal"))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self.con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together, or is rolled back when anything raises."""
        self.con.begin()
        try:
            yield
            self.con.commit()  # a commit that fails is rolled back as well, so the connection stays usable
        except BaseException:
            with suppress(duckdb.TransactionException):  # a failed commit may have ended the transaction already
                self.con.rollback()
            raise

    @contextmanager
    def memory_for_rows(self, rows: int, indexed: Sequence[str] = ()) -> Iterator[None]:
        """DuckDB's limit raised by TRANSACTION_ROW_BYTES a row while a transaction writes `rows` rows (a first
        night's advance of a million people), and by INDEX_ROW_BYTES a row of each `indexed` table (those whose key
        index the transaction loads: it deletes from or upserts into them), then set back to the configured limit.
        Nothing changes for a few thousand rows, or when the configured limit is not a size."""
        configured = memory_limit()
        base = limit_bytes(configured)
        extra = rows * TRANSACTION_ROW_BYTES + INDEX_ROW_BYTES * sum(self.row_count(t) for t in indexed)
        if base is None or extra < 32 * 2**20:
            yield
            return
        self.con.execute("SET memory_limit = ?", [f"{(base + extra) // 2**20}MiB"])
        try:
            yield
        finally:
            try:
                self.con.execute("SET memory_limit = ?", [configured])
            except duckdb.OutOfMemoryException:  # the loaded indexes still held: a checkpoint writes and frees them
                self.con.execute("CHECKPOINT")
                self.con.execute("SET memory_limit = ?", [configured])

    def row_count(self, table: str) -> int:
        """How many rows a table of the store holds."""
        if not self.con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = ? AND NOT temporary",
                                [table]).fetchall():
            raise StoreError(f"no table {table!r} in the store")
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def _frame(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        frame: pl.DataFrame = self.con.sql(sql, params=list(params) if params else None).pl()
        return frame

    # ------------------------------------------------------------------------------------- runs

    def start_run(self, kind: str, location_ids: Iterable[str] = (), plan: Any = None,
                  run_id: str | None = None, *, policy_version: str | None = None,
                  policy_source: str | None = None) -> str:
        """Record a new run as 'running' and return its id (`YYYYmmddTHHMMSSZ-<8 hex>` unless given), with the
        version and source of the policy it plans with (a plan run; None for a snapshot)."""
        now = self.clock()
        run_id = run_id or f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        self.con.execute("INSERT INTO runs (run_id, kind, status, started_at, location_ids, plan_json, "
                         "policy_version, policy_source) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                         [run_id, kind, now, list(location_ids), _json(plan), policy_version, policy_source])
        return run_id

    def set_plan(self, run_id: str, plan: Any) -> None:
        """Record (or replace) a run's request plan, once the stage has made it."""
        self.con.execute("UPDATE runs SET plan_json = ? WHERE run_id = ?", [_json(plan), run_id])

    def finish_run(self, run_id: str, status: str, requests_used: Any = None, error: str | None = None, *,
                   held_reasons: Sequence[str] | None = None, approved: bool = False) -> None:
        """Close a run with its status, the requests it used and its (redacted) error; a plan run also
        records the guards it tripped and whether they were approved up front (`--approve`)."""
        self.con.execute("UPDATE runs SET status = ?, finished_at = ?, requests_used_json = ?, error = ?, "
                         "held_reasons = ?, approved_at = ? WHERE run_id = ?",
                         [status, self.clock(), _json(requests_used), redact(error) if error else None,
                          _json(list(held_reasons)) if held_reasons is not None else None,
                          self.clock() if approved else None, run_id])

    def set_run_status(self, run_id: str, status: str) -> None:
        """Move a run to `status` without closing it (the apply stage's 'applying')."""
        self.con.execute("UPDATE runs SET status = ? WHERE run_id = ?", [status, run_id])

    def runs(self) -> pl.DataFrame:
        return self._frame("SELECT * FROM runs ORDER BY started_at, run_id")

    def recent_runs(self, limit: int) -> pl.DataFrame:
        """The `limit` most recent runs, newest first (run_id, kind, status, started_at, finished_at, ops,
        failed, policy_version): `ops` is the journal's rows of the run, else the op count its plan summary
        recorded."""
        return self._frame(_RECENT_RUNS_SQL, [limit])

    def latest_run(self, kinds: Iterable[str]) -> str | None:
        """The id of the most recently started run of one of `kinds`, None when there is none."""
        rows = self.con.execute("SELECT run_id FROM runs WHERE list_contains(?, kind) ORDER BY started_at DESC, "
                                "run_id DESC LIMIT 1", [list(kinds)]).fetchall()
        return rows[0][0] if rows else None

    def runs_started_by(self, kinds: Iterable[str], started: datetime, limit: int) -> pl.DataFrame:
        """(run_id, started_at) of the `limit` latest runs of one of `kinds` started at or before `started`,
        newest first."""
        return self._frame("SELECT run_id, started_at FROM runs WHERE list_contains(?, kind) AND started_at <= ? "
                           "ORDER BY started_at DESC, run_id DESC LIMIT ?", [list(kinds), started, limit])

    def comparable_stats(self, location_ids: Iterable[str], limit: int) -> list[dict[str, int]]:
        """The merge stats (plan_json's `stats`) of the `limit` latest runs comparable with a run of these
        locations, newest first, for the guards' usual figures (`contact_recon/engine/guards.py`): 'reconcile'
        runs that completed (applied, so each change is counted once: a dry run's or an unapproved held run's
        changes are planned again by the next run; an approved one counts) over exactly these locations, and
        that were not a first fill (`first_run` 0)."""
        rows = self.con.execute(_COMPARABLE_STATS_SQL, [sorted(set(location_ids)), limit]).fetchall()
        return [json.loads(stats) for (stats,) in rows]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run as a dict of its columns (`held_reasons` decoded to a list); UnknownRun if there is none."""
        rows = self._frame("SELECT * FROM runs WHERE run_id = ?", [run_id]).to_dicts()
        if not rows:
            raise UnknownRun(f"unknown run {run_id!r}")
        run = rows[0]
        run["held_reasons"] = json.loads(run["held_reasons"]) if run["held_reasons"] else []
        return run

    def approve_run(self, run_id: str, approval: Approval | None = None) -> dict[str, Any]:
        """Answer a held run (default: approve every guard it tripped, from the CLI) and return it: 'approved'
        (stamped now) or 'rejected'. UnknownRun; RunNotHeld when it is not held or its approval expired."""
        answer = approval or Approval("approve")
        self.expire_held()
        with self.transaction():
            run = self.get_run(run_id)
            if run["status"] == "expired":
                raise RunNotHeld(f"run {run_id} was held until {run['approval_expires_at']:%Y-%m-%d %H:%M %Z}: it "
                                 "expired unanswered, and the next run plans afresh")
            if run["status"] != "held":
                raise RunNotHeld(f"run {run_id} is {run['status']}, not held: nothing to "
                                 f"{'approve' if answer.decision == 'approve' else 'reject'}")
            answer = answer.effective(tripped_guards(run["held_reasons"]))
            status = "approved" if answer.decision == "approve" else "rejected"
            self.con.execute("UPDATE runs SET status = ?, approved_at = ?, approval_json = ? WHERE run_id = ?",
                             [status, self.clock() if status == "approved" else None, _json(answer.as_dict()),
                              run_id])
        return self.get_run(run_id)

    def hold_for_approval(self, run_id: str, flow_run_id: str | None, expires_at: datetime | None) -> None:
        """A held run waits for its answer in Prefect flow run `flow_run_id` until `expires_at`."""
        self.con.execute("UPDATE runs SET flow_run_id = ?, approval_expires_at = ? WHERE run_id = ?",
                         [flow_run_id, expires_at, run_id])

    def expire_held(self) -> list[dict[str, Any]]:
        """Close every held run whose approval window has passed as 'expired' (nothing of theirs is ever
        written); return them (run_id, flow_run_id)."""
        now = self.clock()
        with self.transaction():
            rows = self._frame("SELECT run_id, flow_run_id FROM runs WHERE status = 'held' AND "
                               "approval_expires_at IS NOT NULL AND approval_expires_at <= ?", [now]).to_dicts()
            self.con.execute("UPDATE runs SET status = 'expired' WHERE status = 'held' AND "
                             "approval_expires_at IS NOT NULL AND approval_expires_at <= ?", [now])
        return rows

    def approval(self, run_id: str) -> Approval | None:
        """The answer a run was given, None when it has none (or was approved up front with `--approve`)."""
        raw = self.get_run(run_id)["approval_json"]
        return Approval.from_dict(json.loads(raw)) if raw else None

    # -------------------------------------------------------------------------------- snapshots

    def write_snapshot(self, run_id: str, frames: Mapping[str, pl.DataFrame | Spill],
                       watermarks: Mapping[tuple[str, str], str] | None = None, *,
                       location_ids: Iterable[str] | None = None,
                       carried: Mapping[str, pl.DataFrame] | None = None) -> dict[str, int]:
        """Write one run's snapshot frames and its new watermarks in ONE transaction; the rows written per entity.

        Args:
            run_id: the run the rows belong to; writing the same (run, entity, location) again replaces it.
            frames: entity name (see ENTITIES) -> frame of exactly that entity's records.py schema, or a `Spill`
                of it (store/spill.py: its Parquet files are inserted with `read_parquet`, streamed).
            watermarks: (location_id, entity) -> value, committed only together with the frames.
            location_ids: the GHL locations these frames cover, so a location that answered with no
                rows is recorded as an empty part; by default the locations present in each frame.
            carried: entity -> the keys of rows to carry: (location_id, contact_id) for the GHL entities (a
                contact's rows), `email` for TinyEmail customers; those rows of the entity's latest part (of that
                location; another run's) are copied into this run inside DuckDB, beside `frames` (never read into
                Python: the snapshot stage's carry-over of unchanged rows).
        """
        for entity, frame in frames.items():
            _check_frame(entity, frame)
        locations = None if location_ids is None else sorted(set(location_ids))
        carried = carried or {}
        written: dict[str, int] = {}
        with self.transaction():
            for entity, frame in frames.items():
                parts = self._parts_of(entity, frame, locations)
                self._replace_rows(run_id, entity, frame, parts)
                if entity in carried:
                    self._copy_carried(run_id, entity, carried[entity])
                written[entity] = self._record_parts(run_id, entity, frame, parts)
            self._set_watermarks(run_id, watermarks or {})
        return written

    def _copy_carried(self, run_id: str, entity: str, carried: pl.DataFrame) -> None:
        """Copy the `carried` rows of `entity` from its latest part (of each location) written by another run into
        `run_id` (write_snapshot's `carried`): rows keyed (location_id, contact_id), or by the id column (`email`)
        for an entity without locations."""
        spec = ENTITIES[entity]
        keys = ("location_id", "contact_id") if spec.has_location else (spec.id_column,)
        columns = ", ".join(f"s.{name}" for name in spec.schema)
        latest = ("SELECT location_id, arg_max(run_id, seq) AS run_id FROM snapshot_parts WHERE entity = ? "
                  "AND run_id <> ? GROUP BY location_id")
        join = "s.run_id = l.run_id" + (" AND s.location_id = l.location_id" if spec.has_location else "")
        match = " AND ".join(f"c.{key} = s.{key}" for key in keys)
        self.con.register("_carried_rows", carried.select(keys))
        try:
            self.con.execute(
                f"INSERT INTO {spec.table} BY NAME SELECT ?::VARCHAR AS run_id, {columns} FROM {spec.table} s "
                f"JOIN ({latest}) l ON {join} SEMI JOIN _carried_rows c ON {match}", [run_id, entity, run_id])
        finally:
            self.con.unregister("_carried_rows")

    @staticmethod
    def _parts_of(entity: str, frame: pl.DataFrame | Spill, locations: list[str] | None) -> list[str]:
        if not ENTITIES[entity].has_location:
            return [NO_LOCATION]
        present = set((frame.column("location_id") if isinstance(frame, Spill) else frame.get_column("location_id"))
                      .drop_nulls().unique().to_list())
        if locations is not None and not present <= set(locations):
            raise StoreError(f"{entity}: rows of locations {sorted(present - set(locations))} not in location_ids")
        return locations if locations is not None else sorted(present)

    def _replace_rows(self, run_id: str, entity: str, frame: pl.DataFrame | Spill, parts: list[str]) -> None:
        spec = ENTITIES[entity]
        if spec.has_location:
            self.con.execute(f"DELETE FROM {spec.table} WHERE run_id = ? AND list_contains(?, location_id)",
                             [run_id, parts])
        else:
            self.con.execute(f"DELETE FROM {spec.table} WHERE run_id = ?", [run_id])
        if isinstance(frame, Spill):
            if files := frame.files():  # streamed from the files, never whole in memory
                self.con.execute(f"INSERT INTO {spec.table} BY NAME SELECT ?::VARCHAR AS run_id, * FROM "
                                 "read_parquet(?)", [run_id, [str(p) for p in files]])
            return
        self.con.register("_snapshot_frame", frame)
        try:
            self.con.execute(f"INSERT INTO {spec.table} BY NAME SELECT ?::VARCHAR AS run_id, * FROM _snapshot_frame",
                             [run_id])
        finally:
            self.con.unregister("_snapshot_frame")

    def _record_parts(self, run_id: str, entity: str, frame: pl.DataFrame | Spill, parts: list[str]) -> int:
        """Record the parts written (with their row counts, carried rows included); the rows written."""
        spec = ENTITIES[entity]
        if spec.has_location:
            counts = dict(self.con.execute(f"SELECT location_id, count(*) FROM {spec.table} WHERE run_id = ? "
                                           "AND list_contains(?, location_id) GROUP BY location_id",
                                           [run_id, parts]).fetchall())
        else:
            counts = {NO_LOCATION: self.con.execute(f"SELECT count(*) FROM {spec.table} WHERE run_id = ?",
                                                    [run_id]).fetchall()[0][0]}
        now = self.clock()
        for location in parts:
            self.con.execute("INSERT OR REPLACE INTO snapshot_parts VALUES (?, ?, ?, ?, nextval('snapshot_seq'), ?)",
                             [run_id, entity, location, counts.get(location, 0), now])
        return sum(counts.get(location, 0) for location in parts)

    def latest_row_count(self, entity: str, location_id: str) -> int:
        """How many rows the latest part of `entity` in `location_id` holds (0 before the first snapshot)."""
        rows = self.con.execute("SELECT arg_max(row_count, seq) FROM snapshot_parts WHERE entity = ? AND "
                                "location_id = ?", [entity, location_id]).fetchall()
        return int(rows[0][0] or 0) if rows else 0

    def _set_watermarks(self, run_id: str, watermarks: Mapping[tuple[str, str], str]) -> None:
        now = self.clock()
        for (location_id, entity), value in watermarks.items():
            self.con.execute("INSERT OR REPLACE INTO watermarks VALUES (?, ?, ?, ?, ?)",
                             [location_id, entity, value, run_id, now])

    def latest_snapshot(self, entity: str, location_id: str | None = None, *, without: Sequence[str] = (),
                        ids: Sequence[str] | None = None,
                        computed: Mapping[str, tuple[str, pl.DataType]] | None = None,
                        only: pl.DataFrame | None = None) -> pl.DataFrame:
        """The most recently written snapshot of `entity` (per location, or of one location), records.py shape,
        less the columns `without` (planning leaves out `raw`: half of a snapshot's memory), only the records
        whose id column is one of `ids` when given, or whose value of `only`'s one column is among `only`'s (a
        semi-join: the tasks of some contacts), plus the `computed` columns: name -> (SQL expression over
        the row `s`, type), e.g. `md5(s.raw)`, so a column can be compared without being read into Python."""
        spec = _entity(entity)
        latest, params = self.latest_sql(entity, location_id)
        extra = dict(computed or {})
        schema = pl.Schema({name: dtype for name, dtype in spec.schema.items() if name not in without}
                           | {name: dtype for name, (_, dtype) in extra.items()})
        columns = ", ".join([f"s.{name}" for name in schema if name not in extra]
                            + [f"{sql} AS {name}" for name, (sql, _) in extra.items()])
        where = ""
        if ids is not None:
            where, params = f" WHERE list_contains(?, s.{spec.id_column})", [*params, list(ids)]
        elif only is not None:
            (column,) = only.columns
            where = f" WHERE s.{column} IN (SELECT {column} FROM _only)"
        sql = f"SELECT {columns} FROM ({latest}) s{where} ORDER BY s.{spec.id_column}"
        if only is None:
            return _cast(self._frame(sql, params), schema)
        self.con.register("_only", only)
        try:
            return _cast(self._frame(sql, params), schema)
        finally:
            self.con.unregister("_only")

    def latest_sql(self, entity: str, location_id: str | None = None) -> tuple[str, list[Any]]:
        """SQL (and its parameters) of the rows of `entity`'s latest snapshot: every column of its table."""
        spec = _entity(entity)
        latest = ("SELECT location_id, arg_max(run_id, seq) AS run_id FROM snapshot_parts WHERE entity = ? "
                  + ("AND location_id = ? " if location_id is not None else "") + "GROUP BY location_id")
        params: list[Any] = [entity] + ([location_id] if location_id is not None else [])
        join = "s.run_id = l.run_id" + (" AND s.location_id = l.location_id" if spec.has_location else "")
        return f"SELECT s.* FROM {spec.table} s JOIN ({latest}) l ON {join}", params

    def snapshot_parts(self) -> pl.DataFrame:
        return self._frame("SELECT * FROM snapshot_parts ORDER BY seq")

    def watermark(self, location_id: str, entity: str) -> str | None:
        rows = self.con.execute("SELECT value FROM watermarks WHERE location_id = ? AND entity = ?",
                                [location_id, entity]).fetchall()
        return rows[0][0] if rows else None

    def prune(self, keep_runs: int | None = None, keep_days: float | None = None) -> int:
        """Delete snapshot parts outside the retention; returns how many parts were deleted.

        A part is kept when its run is among the `keep_runs` most recent snapshot runs, or it was
        written within `keep_days`, or it is the latest part of its (entity, location).
        """
        if keep_runs is None and keep_days is None:
            raise StoreError("prune needs keep_runs or keep_days")
        cutoff = self.clock() - timedelta(days=keep_days) if keep_days is not None else None
        doomed = self._frame(_PRUNE_SQL, [keep_runs if keep_runs is not None else 0, cutoff])
        with self.transaction():
            for run_id, entity, location in doomed.iter_rows():
                spec = ENTITIES[entity]
                where = "run_id = ?" + (" AND location_id = ?" if spec.has_location else "")
                self.con.execute(f"DELETE FROM {spec.table} WHERE {where}",
                                 [run_id, location] if spec.has_location else [run_id])
                self.con.execute("DELETE FROM snapshot_parts WHERE run_id = ? AND entity = ? AND location_id = ?",
                                 [run_id, entity, location])
        return doomed.height

    # ------------------------------------------------------------------------------------- base

    def load_base(self, *, presence: bool = False, except_keys: pl.DataFrame | None = None) -> pl.DataFrame:
        """The last reconciled state, one MERGE_SIDE row per person key; with `presence` also `in_ghl` and
        `in_tinyemail` (null for rows saved before migration 4); without the keys of `except_keys` (key)."""
        schema = pl.Schema({**MERGE_SIDE, **PRESENCE}) if presence else MERGE_SIDE
        columns = ", ".join(schema)
        if except_keys is None or except_keys.height == 0:
            return _cast(self._frame(f"SELECT {columns} FROM base ORDER BY key"), schema)
        sql = f"SELECT {columns} FROM base WHERE key NOT IN (SELECT key FROM _frame) ORDER BY key"
        self.con.register("_frame", except_keys.select("key"))
        try:
            return _cast(self._frame(sql), schema)
        finally:
            self.con.unregister("_frame")

    def orphaned(self, entity: str) -> pl.DataFrame:
        """(contact_id) of the latest snapshot's tasks or notes (`entity`) whose contact is in no latest snapshot."""
        rows, params = self.latest_sql(entity)
        contacts, more = self.latest_sql("ghl_contacts")
        sql = (f"SELECT DISTINCT r.contact_id FROM ({rows}) r WHERE r.contact_id IS NOT NULL AND r.contact_id NOT IN "
               f"(SELECT contact_id FROM ({contacts}) c WHERE c.contact_id IS NOT NULL)")
        return _cast(self._frame(sql, [*params, *more]), pl.Schema({"contact_id": pl.String()}))

    def save_base(self, frame: pl.DataFrame, run_id: str) -> None:
        """Upsert reconciled rows (MERGE_SIDE, optionally with the PRESENCE flags) by key; keys not in `frame`
        keep their state."""
        _check_schema("base", frame.select(list(MERGE_SIDE)), MERGE_SIDE)
        if not set(PRESENCE) <= set(frame.columns):
            frame = frame.with_columns(**{name: pl.lit(None, pl.Boolean) for name in PRESENCE})
        frame = frame.select(*MERGE_SIDE, *PRESENCE)
        params = [self.clock(), run_id]  # one updated_at for every slice of the save
        for part in batches(frame):
            self._insert("INSERT OR REPLACE INTO base BY NAME SELECT *, ?::TIMESTAMPTZ AS updated_at, "
                         "?::VARCHAR AS run_id FROM _frame", part, params)

    def base_contact_ids(self) -> pl.Series:
        """The contact ids of the base rows that are (or, saved before migration 4, may be) in GHL."""
        frame = self._frame("SELECT contact_id FROM base WHERE coalesce(in_ghl, true) AND contact_id IS NOT NULL")
        return frame.get_column("contact_id").cast(pl.String) if frame.height else pl.Series("contact_id", [],
                                                                                                  pl.String)

    def delete_base(self, keys: Iterable[str]) -> None:
        self.con.execute("DELETE FROM base WHERE list_contains(?, key)", [list(keys)])

    def rekey_base(self, rekeys: pl.DataFrame) -> int:
        """Move base rows from `old_key` to `new_key` (a TinyEmail-only person now matched to a GHL contact).

        Rows whose new key already has a base row are left alone. Returns how many rows moved.
        """
        # stored rows, presence kept; stages/plan.py::planning_base re-keys in memory and sets in_ghl = False
        pairs = rekeys.select("old_key", "new_key")
        with self.transaction():
            moved = [row[0] for row in self._insert(
                "INSERT INTO base BY NAME SELECT r.new_key AS key, r.new_key AS contact_id, "
                "b.* EXCLUDE (key, contact_id) FROM base b JOIN _frame r ON b.key = r.old_key "
                "WHERE r.new_key NOT IN (SELECT key FROM base) RETURNING key", pairs)]
            self.con.execute("DELETE FROM base WHERE list_contains(?, key)",
                             [pairs.filter(pl.col("new_key").is_in(moved))["old_key"].to_list()])
        return len(moved)

    # ---------------------------------------------------------------------------- identity map

    def load_id_map(self) -> pl.DataFrame:
        return self._frame("SELECT * FROM id_map ORDER BY location_id, contact_id")

    def paired_outside_snapshot(self, location_id: str) -> pl.Series:
        """The location's paired contact ids that the base holds as in GHL (`base_contact_ids`) but its latest
        contacts snapshot does not (the contacts the last apply created), found in SQL: the id map, the base and the
        snapshot have a million rows each at a large location."""
        latest, params = self.latest_sql("ghl_contacts", location_id)
        frame = self._frame(
            "SELECT i.contact_id FROM id_map i WHERE i.location_id = ? AND i.contact_id IN (SELECT contact_id FROM "
            "base WHERE coalesce(in_ghl, true) AND contact_id IS NOT NULL) AND i.contact_id NOT IN (SELECT "
            f"s.contact_id FROM ({latest}) s WHERE s.contact_id IS NOT NULL) ORDER BY i.contact_id",
            [location_id, *params])
        return frame.get_column("contact_id").cast(pl.String) if frame.height else pl.Series("contact_id", [],
                                                                                                  pl.String)

    def save_id_map(self, rows: pl.DataFrame, run_id: str) -> None:
        """Insert or replace pairings (contact_id, location_id, email, matched_by), stamped now and with the run."""
        _check_schema("id_map", rows, ID_MAP)
        self._insert("INSERT OR REPLACE INTO id_map BY NAME SELECT *, ?::TIMESTAMPTZ AS matched_at, "
                     "?::VARCHAR AS run_id FROM _frame", rows, [self.clock(), run_id])

    def delete_id_map(self, contact_ids: Iterable[str]) -> None:
        """Forget the pairings of contacts that no longer exist (a contact deleted and created again)."""
        self.con.execute("DELETE FROM id_map WHERE list_contains(?, contact_id)", [list(contact_ids)])

    def save_review(self, rows: pl.DataFrame, run_id: str) -> None:
        """Record this run's identity review rows (kind, contact_ids, email, old_email, detail)."""
        _check_schema("identity_review", rows, REVIEW)
        self._insert("INSERT INTO identity_review BY NAME SELECT *, ?::VARCHAR AS run_id, "
                     "?::TIMESTAMPTZ AS created_at FROM _frame", rows, [run_id, self.clock()])

    def load_review(self, run_id: str | None = None) -> pl.DataFrame:
        """The review rows of one run (default: the latest run that recorded any)."""
        where = "run_id = ?" if run_id else "run_id = (SELECT arg_max(run_id, created_at) FROM identity_review)"
        sql = f"SELECT * FROM identity_review WHERE {where} ORDER BY kind, email"
        return self._frame(sql, [run_id] if run_id else None)

    # ------------------------------------------------------------------------------ TinyEmail lists

    def save_lists(self, lists: Iterable[tuple[str, str | None]], run_id: str) -> None:
        """Record TinyEmail's lists now (id, name) and their labels (`model/list_tags.labels`); labels seen before
        are kept, so an old spelling stays known."""
        rows = [(list_id, name) for list_id, name in lists]
        if not rows:
            return
        now = self.clock()
        with self.transaction():
            self.con.executemany(
                "INSERT INTO te_lists VALUES (?, ?, ?, ?, ?) ON CONFLICT (list_id) DO UPDATE SET "
                "name = excluded.name, updated_at = excluded.updated_at, run_id = excluded.run_id",
                [[list_id, name, now, now, run_id] for list_id, name in rows])
            self.con.executemany("INSERT OR IGNORE INTO te_list_labels VALUES (?, ?, ?)",
                                 [[list_id, label, now] for list_id, label in labels(dict(rows)).items()])

    def list_names(self) -> dict[str, str]:
        """list id -> name (as TinyEmail last named it; the id when it has none)."""
        rows = self.con.execute("SELECT list_id, name FROM te_lists ORDER BY list_id").fetchall()
        return {list_id: name or list_id for list_id, name in rows}

    def list_tags(self, prefix: str = "list:") -> ListNames:
        """How GHL spells the lists (`model/list_tags.ListNames`): labels now, and every label seen before."""
        current = dict(self.con.execute("SELECT list_id, name FROM te_lists").fetchall())
        seen = self.con.execute("SELECT list_id, label FROM te_list_labels ORDER BY seen_at, label").fetchall()
        return ListNames.build(current, [(i, label) for i, label in seen], prefix)

    # --------------------------------------------------------------------------- dirty contacts

    def mark_dirty(self, location_id: str, contact_id: str, reason: str) -> None:
        self.mark_dirty_many(location_id, [contact_id], reason)

    def mark_dirty_many(self, location_id: str, contact_ids: Iterable[str], reason: str) -> int:
        """Mark contacts of one location dirty in one statement (a first snapshot of a location larger than the
        day's allowance defers most of it: 800,000 marks at a million contacts); how many were marked."""
        frame = pl.DataFrame({"contact_id": list(contact_ids)}, schema={"contact_id": pl.String}).unique()
        if frame.is_empty():
            return 0
        self._insert("INSERT OR REPLACE INTO dirty_contacts SELECT ?::VARCHAR, contact_id, ?::VARCHAR, "
                     "?::TIMESTAMPTZ FROM _frame", frame, [location_id, reason, self.clock()])
        return frame.height

    def dirty_contacts(self) -> pl.DataFrame:
        return self._frame("SELECT * FROM dirty_contacts ORDER BY marked_at, contact_id")

    def dirty_contact_ids(self, location_id: str) -> pl.Series:
        """The contact ids of one location's dirty marks (a snapshot's read: the other locations' stay here)."""
        frame = self._frame("SELECT contact_id FROM dirty_contacts WHERE location_id = ? ORDER BY contact_id",
                            [location_id])
        return frame.get_column("contact_id").cast(pl.String) if frame.height else pl.Series("contact_id", [],
                                                                                                  pl.String)

    def clear_dirty(self, contacts: Iterable[tuple[str, str]], marked_before: datetime) -> None:
        """Clear marks of (location_id, contact_id) set before `marked_before` (the refetch's start), in one
        statement: a mark that arrived while the refetch ran is kept for the next run."""
        frame = pl.DataFrame(list(contacts), schema={"location_id": pl.String, "contact_id": pl.String},
                             orient="row")
        if frame.is_empty():
            return
        self._insert("DELETE FROM dirty_contacts d USING _frame f WHERE d.location_id = f.location_id "
                     "AND d.contact_id = f.contact_id AND d.marked_at < ?", frame, [marked_before])

    def mark_tasks_dirty(self, location_id: str, reason: str) -> None:
        """Every task of the location is read again by the next snapshot (a task webhook naming no contact)."""
        self.con.execute("INSERT OR REPLACE INTO dirty_task_locations VALUES (?, ?, ?)",
                         [location_id, reason, self.clock()])

    def tasks_dirty(self, location_id: str) -> bool:
        found = self.con.execute("SELECT count(*) FROM dirty_task_locations WHERE location_id = ?", [location_id])
        return bool(found.fetchall()[0][0])

    def clear_tasks_dirty(self, location_id: str, marked_before: datetime) -> None:
        """Clear the location's mark if set before `marked_before` (the snapshot's start)."""
        self.con.execute("DELETE FROM dirty_task_locations WHERE location_id = ? AND marked_at < ?",
                         [location_id, marked_before])

    # ---------------------------------------------------------------------------- check results

    def save_check_results(self, run_id: str, results: pl.DataFrame) -> None:
        """Record a run's check results (columns suite, expectation, success, unexpected_count,
        sample_values (list of strings), blocking); saving a run again replaces its rows."""
        rows = [[run_id, r["suite"], r["expectation"], r["success"], r["unexpected_count"],
                 json.dumps(list(r["sample_values"] or []), ensure_ascii=False), r["blocking"], self.clock()]
                for r in results.iter_rows(named=True)]
        with self.transaction():
            self.con.execute("DELETE FROM check_results WHERE run_id = ?", [run_id])
            if rows:
                self.con.executemany("INSERT INTO check_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def load_check_results(self, run_id: str | None = None) -> pl.DataFrame:
        """The check results of one run (default: every run), sample_values as JSON text."""
        where = "WHERE run_id = ? " if run_id else ""
        return self._frame(f"SELECT * FROM check_results {where}ORDER BY checked_at, run_id, suite, expectation",
                           [run_id] if run_id else None)

    def _insert(self, sql: str, frame: pl.DataFrame, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run `sql` with `frame` registered as `_frame` (an Arrow scan, no copy through Python)."""
        self.con.register("_frame", frame)
        try:
            rows = self.con.execute(sql, list(params)).fetchall()
        except BaseException:
            # a failed statement aborts the caller's transaction, and DuckDB then refuses the unregister too
            # ("Current transaction is aborted"): the statement's own error (an out-of-memory, say) is the one to raise
            with suppress(duckdb.TransactionException):
                self.con.unregister("_frame")
            raise
        self.con.unregister("_frame")
        return rows


_RECENT_RUNS_SQL = """
SELECT r.run_id, r.kind, r.status, r.started_at, r.finished_at,
       coalesce(j.ops, try_cast(json_extract(r.plan_json, '$.ops') AS BIGINT)) AS ops, j.failed, r.policy_version
FROM runs r
LEFT JOIN (SELECT run_id, count(*) AS ops, count(*) FILTER (WHERE status = 'failed') AS failed
           FROM journal GROUP BY run_id) j USING (run_id)
ORDER BY r.started_at DESC, r.run_id DESC LIMIT ?
"""

_COMPARABLE_STATS_SQL = """
SELECT json_extract(plan_json, '$.stats')::VARCHAR FROM runs
WHERE kind = 'reconcile' AND status = 'completed' AND list_sort(location_ids) = ?::VARCHAR[]
  AND try_cast(json_extract(plan_json, '$.stats.first_run') AS INTEGER) = 0
ORDER BY started_at DESC, run_id DESC LIMIT ?
"""

# Parts not kept: a part is kept when its run is among the last N snapshot runs (by last write), when it
# was written after the cutoff, or when it is the latest part of its (entity, location).
_PRUNE_SQL = """
WITH run_rank AS (
    SELECT run_id, dense_rank() OVER (ORDER BY max(seq) DESC) AS rank FROM snapshot_parts GROUP BY run_id),
latest AS (SELECT entity, location_id, max(seq) AS seq FROM snapshot_parts GROUP BY entity, location_id)
SELECT p.run_id, p.entity, p.location_id FROM snapshot_parts p JOIN run_rank r USING (run_id)
WHERE r.rank > $1
  AND ($2::TIMESTAMPTZ IS NULL OR p.written_at < $2::TIMESTAMPTZ)
  AND NOT EXISTS (SELECT 1 FROM latest l WHERE l.entity = p.entity AND l.location_id = p.location_id
                  AND l.seq = p.seq)
ORDER BY p.seq
"""


def _entity(entity: str) -> Entity:
    if entity not in ENTITIES:
        raise StoreError(f"unknown entity {entity!r}; known: {sorted(ENTITIES)}")
    return ENTITIES[entity]


def _check_frame(entity: str, frame: pl.DataFrame | Spill) -> None:
    _check_schema(entity, frame, _entity(entity).schema)


def _check_schema(what: str, frame: pl.DataFrame | Spill, schema: pl.Schema) -> None:
    if frame.schema != schema:
        raise StoreError(f"{what}: frame schema {dict(frame.schema)} is not {dict(schema)}")


def _cast(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """A query result in exactly `schema` (an empty result comes back with DuckDB's default types)."""
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)
