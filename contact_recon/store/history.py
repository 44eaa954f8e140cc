"""One person's story across runs (`recon explain EMAIL|CONTACT_ID`), gathered from the store and the runs' files.

`person_history(store, data_dir, query)` answers "why isn't this record syncing?":

1. **Who**: an email (normalised as the snapshot normalises it) or a GHL contact id; the person's keys are every
   contact id the snapshots, the id_map or the base tie to it, and `te:<email>` for each of its emails.
2. **Snapshots**: both sides' values in every snapshot that holds the person (GHL contacts by id or email,
   TinyEmail customers by email), under the snapshot run that read them.
3. **Plans and writes**: every op of the person's keys, planned, applied, failed, stale or quarantined and why
   (the journal's rows for a run that applied; the run's `plan.parquet` for a dry run), and the conflicts the
   run left for the data team (its `conflicts.csv`).
4. **Now**: the base, the id_map links, identity reviews naming the person, and the data team's decisions.

Each run carries its id, kind, status, times and the policy version it planned with. The result is plain
JSON-ready data (dicts, lists, ISO times); `contact_recon/cli/explain.py` prints it for a person.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from contact_recon.model.cells import unguarded
from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.normalise import normalise_email
from contact_recon.model.records import SHARED_TEXT_FIELDS
from contact_recon.store.db import Store, StoreError
from contact_recon.store.files import CONFLICTS_FILE, PLAN_FILE, run_dir

PERSON_FIELDS = (*SHARED_TEXT_FIELDS, "tags", "consent")
GHL_FIELDS = ("contact_id", "location_id", *PERSON_FIELDS, "phone_raw", "email_raw")
TE_FIELDS = (*PERSON_FIELDS, "status", "lists", "phone_raw", "email_raw")
OP_FIELDS = ("op_id", "target", "kind", "key", "field", "expected", "new", "reason", "status", "quarantined_by",
             "error_kind", "last_error", "attempts")
RUN_KINDS = ("snapshot", "plan", "reconcile", "sync", "apply")
MAX_RUNS = 90  # the newest runs whose plan files are read


class PersonNotFound(StoreError):  # noqa: N818 - the name says what happened
    """No snapshot, base row or id_map link names this email or contact id."""


def person_history(store: Store, data_dir: str | Path, query: str) -> dict[str, Any]:
    """The person's story (module docstring); PersonNotFound when the store has never seen them."""
    emails, contact_ids = _who(store, query.strip())
    names = store.list_tags()
    keys = sorted({*contact_ids, *(TE_KEY_PREFIX + e for e in emails)})
    if not contact_ids and not store.con.execute(
            "SELECT 1 FROM snap_te_customers WHERE list_contains(?, email) UNION SELECT 1 FROM base "
            "WHERE list_contains(?, key) LIMIT 1", [emails, keys]).fetchall():
        raise PersonNotFound(f"no snapshot, base row or id_map link names {query!r}")
    runs = _runs(store)
    story = {run_id: {**run, "ghl": [], "tinyemail": [], "ops": [], "conflicts": []} for run_id, run in runs.items()}
    for row in _rows(store, f"SELECT run_id, {', '.join(GHL_FIELDS)} FROM snap_ghl_contacts "
                            "WHERE list_contains(?, contact_id) OR list_contains(?, email)", [contact_ids, emails]):
        _add(story, row, "ghl")
    for row in _rows(store, f"SELECT run_id, {', '.join(TE_FIELDS)} FROM snap_te_customers "
                            "WHERE list_contains(?, email)", [emails]):
        _add(story, row, "tinyemail")
    _ops_and_conflicts(store, Path(data_dir), story, keys)
    spelled = _list_spelling(store)
    told = [spelled(run) for run in story.values() if run["ghl"] or run["tinyemail"] or run["ops"] or run["conflicts"]]
    return {
        "query": query, "emails": emails, "contact_ids": contact_ids, "keys": keys,
        "base": [{**row, "tags": [names.spell(t) for t in row.get("tags") or []]} for row in _rows(
            store, "SELECT * FROM base WHERE list_contains(?, key)", [keys])],
        "id_map": _rows(store, "SELECT * FROM id_map WHERE list_contains(?, contact_id) OR list_contains(?, email) "
                               "ORDER BY matched_at", [contact_ids, emails]),
        "identity_reviews": _rows(store, "SELECT * FROM identity_review WHERE list_has_any(contact_ids, ?) "
                                         "OR list_contains(?, email) OR list_contains(?, old_email) "
                                         "ORDER BY created_at", [contact_ids or [""], emails, emails]),
        "decisions": _rows(store, "SELECT * FROM conflict_decisions WHERE list_contains(?, key) ORDER BY imported_at",
                           [keys]),
        # in the order things happened: a reconcile's snapshot run starts after it and ends before it
        "runs": sorted(told, key=lambda r: (r["finished_at"] or r["started_at"] or "", r["run_id"])),
    }


def _list_spelling(store: Store) -> Any:
    """A run's ops with list tags as GHL spells them (`list:<name>`, not the list id the merge compares)."""
    names = store.list_tags()

    def spelled(run: dict[str, Any]) -> dict[str, Any]:
        for op in run["ops"]:
            if op.get("field") == "tags":
                op.update({c: names.spell(op[c]) for c in ("expected", "new") if op.get(c)})
        return run
    return spelled


def _who(store: Store, query: str) -> tuple[list[str], list[str]]:
    """(emails, contact ids) of the person `query` names."""
    if "@" in query:
        email = normalise_email(query)[0] or query.lower()
        ids = store.con.execute(
            "SELECT contact_id FROM snap_ghl_contacts WHERE email = ? AND contact_id IS NOT NULL "
            "UNION SELECT contact_id FROM id_map WHERE email = ? "
            "UNION SELECT contact_id FROM base WHERE email = ? AND contact_id IS NOT NULL",
            [email, email, email]).fetchall()
        return [email], sorted(r[0] for r in ids)
    found = store.con.execute(
        "SELECT email FROM snap_ghl_contacts WHERE contact_id = ? AND email IS NOT NULL "
        "UNION SELECT email FROM id_map WHERE contact_id = ? "
        "UNION SELECT email FROM base WHERE key = ? AND email IS NOT NULL", [query, query, query]).fetchall()
    known = store.con.execute("SELECT 1 FROM snap_ghl_contacts WHERE contact_id = ? UNION SELECT 1 FROM id_map "
                              "WHERE contact_id = ? UNION SELECT 1 FROM base WHERE key = ? LIMIT 1",
                              [query, query, query]).fetchall()
    return sorted(r[0] for r in found), [query] if known else []


def _runs(store: Store) -> dict[str, dict[str, Any]]:
    rows = _rows(store, "SELECT run_id, kind, status, started_at, finished_at, policy_version, policy_source, "
                        "location_ids FROM runs WHERE list_contains(?, kind) ORDER BY started_at DESC LIMIT ?",
                 [list(RUN_KINDS), MAX_RUNS])
    return {row["run_id"]: row for row in rows}


def _add(story: dict[str, dict[str, Any]], row: dict[str, Any], side: str) -> None:
    run = story.get(row.pop("run_id"))
    if run is not None:
        run[side].append(row)


def _ops_and_conflicts(store: Store, data_dir: Path, story: dict[str, dict[str, Any]], keys: list[str]) -> None:
    journaled = _rows(store, f"SELECT run_id, {', '.join(OP_FIELDS)}, planned_at, finished_at FROM journal "
                             "WHERE list_contains(?, key) ORDER BY planned_at, seq", [keys])
    with_journal = set()
    for row in journaled:
        with_journal.add(row["run_id"])
        _add(story, row, "ops")
    for run_id, run in story.items():
        folder = run_dir(data_dir, run_id)
        plan = folder / PLAN_FILE
        if run_id not in with_journal and plan.exists():
            # a dry run (or one held before it applied): its plan file says what it would write
            ops = pl.scan_parquet(plan).filter(pl.col("key").is_in(keys)).collect()
            run["ops"] = [_pick(r, OP_FIELDS) for r in ops.iter_rows(named=True)]
        conflicts = folder / CONFLICTS_FILE
        if conflicts.exists():
            frame = unguarded(pl.read_csv(conflicts, infer_schema_length=0))
            if frame.height and "key" in frame.columns:
                run["conflicts"] = [_plain(r) for r in frame.filter(pl.col("key").is_in(keys)).iter_rows(named=True)]


def _pick(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: _json(row.get(name)) for name in names if name in row}


def _rows(store: Store, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = store.con.execute(sql, params)
    names = [d[0] for d in cursor.description or []]
    return [_plain(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {name: _json(value) for name, value in row.items()}


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value
