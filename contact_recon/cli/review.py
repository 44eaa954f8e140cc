"""`recon identity list|resolve` and `recon quarantine list|dismiss`: the review loop of identity reviews and
quarantined ops, without SQL.

Both read the latest reconcile or plan run that wrote its review files (`identity.csv`, `quarantine.parquet`:
`contact_recon/stages/review.py`) and the store's decisions, so an answer given after the run is seen at once.
The store is opened through `cli/report.py _open` (waits for a run that holds it, then says "store busy").

- `recon identity resolve FILE`: a filled-in identity.csv (decision pair | apart | ignore | reopen, `contact`
  for a pair), checked row by row, one bad row imports nothing; `recon identity resolve REVIEW_ID --decision
  ... [--contact ID] [--note TEXT]` answers one review. `reopen` undoes a decision (kept as a record).
- `recon quarantine dismiss OP_ID [--note TEXT]`: the team accepts the record as it is (never written, no
  longer open); `--undo` restores it to the open quarantine.
- `recon quarantine list` also shows, beside the quarantined ops, the ops the API rejected (400/422) in the
  latest applied run: not sent again while their value is the same; `recon quarantine retry OP_ID [--note]`
  lets the next run send one once more (store/journal.py `retry_rejected`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from contact_recon.cli.report import EXIT_FAILED, EXIT_OK, EXIT_USAGE, REPORT_KINDS, _error, _open
from contact_recon.engine.reviews import (
    DECIDED,
    IDENTITY_CSV,
    QUARANTINE_VIEW,
    IdentityFileError,
    check_decision,
    nights,
)
from contact_recon.model.cells import guard
from contact_recon.model.context import with_context
from contact_recon.report.applied import run_context
from contact_recon.settings import Settings
from contact_recon.store.db import Store
from contact_recon.store.files import IDENTITY_FILE, QUARANTINE_FILE, run_dir
from contact_recon.store.journal import Journal
from contact_recon.store.reviews import Reviews, load_identity_file, load_quarantine_file, read_identity_decisions

RUNS_LOOKED_AT = 50  # the latest runs searched for one that wrote its review files
REJECTED_COLUMNS = ["op_id", "email", "name", "target", "kind", "field", "new", "last_error", "finished_at"]


def latest_review_run(store: Store, data_dir: Path, file: str) -> str | None:
    """The latest reconcile or plan run whose run dir has `file`."""
    runs = store.recent_runs(RUNS_LOOKED_AT)
    for run_id, kind in runs.select("run_id", "kind").iter_rows():
        if kind in REPORT_KINDS and (run_dir(data_dir, run_id) / file).exists():
            return str(run_id)
    return None


# ------------------------------------------------------------------------------------------- identity


def open_reviews(store: Store, data_dir: Path) -> tuple[str | None, pl.DataFrame]:
    """(run id, its identity.csv rows without a standing decision, nights_open as of now)."""
    run_id = latest_review_run(store, data_dir, IDENTITY_FILE)
    if run_id is None:
        return None, pl.DataFrame(schema=IDENTITY_CSV)
    rows = load_identity_file(data_dir, run_id)
    if rows is None:
        return run_id, pl.DataFrame(schema=IDENTITY_CSV)
    decided = Reviews(store).standing_decisions()["review_id"].to_list()
    return run_id, _aged(rows.filter(~pl.col("review_id").is_in(decided)), store.clock())


def _aged(rows: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """`nights_open` again from `first_seen` and now (the file says it as of its run)."""
    if rows.height == 0:
        return rows
    first = [datetime.fromisoformat(v.replace("Z", "+00:00")) for v in rows["first_seen"].to_list()]
    return rows.with_columns(pl.Series("nights_open", [nights(f, now) for f in first], pl.Int64()))


def run_identity_list(settings: Settings, as_json: bool, console: Console, err: Console) -> int:
    """The open identity reviews of the latest run, as a table or as JSON."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        run_id, rows = open_reviews(store, Path(settings.data_dir))
    if as_json:
        print(json.dumps({"run_id": run_id, "reviews": rows.to_dicts()}, indent=2, ensure_ascii=False))
        return EXIT_OK
    if rows.height == 0:
        console.print("no open identity review" + (f" (run {run_id})" if run_id else ""), highlight=False)
        return EXIT_OK
    console.print(_table(f"Open identity reviews (run {run_id})", rows,
                         ["review_id", "kind", "email", "old_email", "name", "contact_ids", "nights_open", "ghl",
                          "tinyemail"]))
    console.print(f"decide in {run_dir(settings.data_dir, run_id or '') / IDENTITY_FILE} (decision pair | apart | "
                  "ignore), then `recon identity resolve FILE`; or `recon identity resolve REVIEW_ID --decision ...`",
                  highlight=False, soft_wrap=True)
    return EXIT_OK


def run_identity_resolve(settings: Settings, target: str, decision: str | None, contact: str | None,
                         note: str | None, console: Console, err: Console) -> int:
    """Store decisions on identity reviews: a filled-in identity.csv, or one REVIEW_ID with --decision."""
    path = Path(target)
    if decision is None and not path.exists():
        _error(err, f"{target}: no such file; to answer one review give --decision pair|apart|ignore|reopen")
        return EXIT_USAGE
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        reviews = Reviews(store)
        known = reviews.known_reviews()
        if decision is None:
            try:
                result = read_identity_decisions(path, known)
            except IdentityFileError as exc:
                _error(err, str(exc))
                return EXIT_FAILED
            decided, source, undecided = result.decisions, str(path.resolve()), result.undecided
        else:
            row = check_decision(target, decision.strip().lower(), contact, note,
                                 {r["review_id"]: r for r in known.iter_rows(named=True)})
            if isinstance(row, str):
                _error(err, f"{target}: {row}")
                return EXIT_FAILED
            decided, source, undecided = pl.DataFrame([row], schema=DECIDED), "command line", 0
        saved = reviews.decide(decided, source)
    by_choice = dict(decided.group_by("decision").len().sort("decision").iter_rows())
    detail = ", ".join(f"{choice} {n:,}" for choice, n in by_choice.items())
    console.print(f"recorded {saved:,} identity decision(s){f' ({detail})' if detail else ''}"
                  f"{f'; {undecided:,} row(s) without a decision left alone' if undecided else ''}. "
                  "The next run honours them.", highlight=False, soft_wrap=True)
    return EXIT_OK


# ----------------------------------------------------------------------------------------- quarantine


def quarantine_view(store: Store, data_dir: Path) -> tuple[str | None, pl.DataFrame]:
    """(run id, its quarantined ops (QUARANTINE_VIEW) with dismissals and nights_open as of now)."""
    run_id = latest_review_run(store, data_dir, QUARANTINE_FILE)
    if run_id is None:
        return None, pl.DataFrame(schema=QUARANTINE_VIEW)
    rows = load_quarantine_file(data_dir, run_id, Reviews(store).dismissed())
    if rows is None:
        return run_id, pl.DataFrame(schema=QUARANTINE_VIEW)
    return run_id, _aged(rows, store.clock()).cast(QUARANTINE_VIEW)


def run_quarantine_list(settings: Settings, as_json: bool, show_all: bool, console: Console, err: Console) -> int:
    """The quarantined ops of the latest run (open ones; with --all the dismissed too)."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        run_id, rows = quarantine_view(store, Path(settings.data_dir))
        applied_run, rejected = rejected_view(store, Path(settings.data_dir))
    shown = rows if show_all else rows.filter(~pl.col("dismissed"))
    if as_json:
        print(json.dumps({"run_id": run_id, "ops": shown.to_dicts(),
                          "rejected": {"run_id": applied_run, "ops": rejected.to_dicts()}},
                         indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    if shown.height == 0:
        console.print("no open quarantined op" + (f" (run {run_id})" if run_id else ""), highlight=False)
    else:
        console.print(_table(f"Quarantined ops (run {run_id})", shown,
                             ["op_id", "email", "name", "target", "field", "new", "ghl", "tinyemail",
                              "quarantined_by", "nights_open", "dismissed"]))
    if rejected.height:
        console.print(_table(f"Rejected by the API (run {applied_run}): not sent again until the value changes or "
                             "`recon quarantine retry OP_ID`", rejected, REJECTED_COLUMNS))
    return EXIT_OK


def latest_applied_run(store: Store) -> str | None:
    """The latest reconcile or sync run that journaled its ops (an applied run, not a dry run)."""
    for (run_id,) in store.recent_runs(RUNS_LOOKED_AT).select("run_id").iter_rows():
        if Journal(store).op_count(str(run_id)):
            return str(run_id)
    return None


def rejected_view(store: Store, data_dir: Path) -> tuple[str | None, pl.DataFrame]:
    """(the latest applied run, its standing rejected ops (REJECTED_COLUMNS) with the person named)."""
    run_id = latest_applied_run(store)
    schema = dict.fromkeys(REJECTED_COLUMNS, pl.String())
    if run_id is None:
        return None, pl.DataFrame(schema=schema)
    rows = Journal(store).rejections(run_id)
    if rows.height == 0:
        return run_id, pl.DataFrame(schema=schema)
    named = with_context(rows, run_context(data_dir, run_id))
    return run_id, named.with_columns(pl.col("finished_at").cast(pl.String)).select(REJECTED_COLUMNS)


def run_quarantine_retry(settings: Settings, op_id: str, note: str | None, console: Console, err: Console) -> int:
    """Let the next run send a rejected op of the latest applied run again (once)."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        run_id = latest_applied_run(store)
        if run_id is None or not Journal(store).retry_rejected(op_id, run_id, note):
            _error(err, f"{op_id} is not a rejected op of the latest applied run ({run_id or 'none'}): "
                        "`recon quarantine list`")
            return EXIT_FAILED
    console.print(f"retry {op_id}: the next run sends it again, once (a new rejection stands again)",
                  highlight=False, soft_wrap=True)
    return EXIT_OK


def run_quarantine_dismiss(settings: Settings, op_id: str, note: str | None, undo: bool, console: Console,
                           err: Console) -> int:
    """Dismiss a quarantined op of the latest run (accepted as is), or with `undo` restore a dismissed one."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        reviews = Reviews(store)
        if undo:
            if not reviews.restore(op_id):
                _error(err, f"{op_id} is not dismissed")
                return EXIT_FAILED
            console.print(f"restored {op_id}: reported as quarantined again", highlight=False)
            return EXIT_OK
        run_id, rows = quarantine_view(store, Path(settings.data_dir))
        if op_id not in rows["op_id"].to_list():
            _error(err, f"{op_id} is not a quarantined op of the latest run ({run_id or 'none'}): "
                        "`recon quarantine list`")
            return EXIT_FAILED
        reviews.dismiss(op_id, note)
    console.print(f"dismissed {op_id}: accepted as it is, never written, no longer reported as open "
                  f"(`recon quarantine dismiss {op_id} --undo` restores it)", highlight=False, soft_wrap=True)
    return EXIT_OK


def _table(title: str, rows: pl.DataFrame, cols: list[str]) -> Table:
    table = Table(title=title)
    for column in cols:
        table.add_column(column, overflow="fold")
    for row in rows.select(cols).iter_rows(named=True):
        table.add_row(*[_cell(row[c]) for c in cols])
    return table


def _cell(value: Any) -> str:
    """A cell as a person reads it in a terminal (formula-like text made inert, as in the files)."""
    text = "-" if value is None else str(value)
    return str(guard(text)).replace("[", r"\[")
