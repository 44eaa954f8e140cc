"""`recon runs`, `recon report [RUN_ID]` and `recon conflicts import FILE | list | undo KEY FIELD`: what runs did,
the conflicts they left open, and the data team's answers to them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table
from rich.text import Text

from contact_recon.settings import Settings
from contact_recon.store.db import Store, StoreBusy, StoreError, db_path, open_db
from contact_recon.systems.redaction import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
REPORT_KINDS = ("reconcile", "plan")  # `recon report` without a run id: the latest of these


def _error(err: Console, message: str) -> None:
    err.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True)


REVIEW_WAIT_S = 10.0  # a review command waits this long for a run that holds the store, then says "store busy"


def _open(settings: Settings, err: Console) -> Store | None:
    path = db_path(settings.data_dir)
    if not path.exists():
        _error(err, f"no store at {path}: nothing has run yet (set RECON_DATA_DIR?)")
        return None
    try:
        return open_db(path, wait_s=REVIEW_WAIT_S)
    except StoreBusy as exc:
        _error(err, str(exc))
        return None


# ------------------------------------------------------------------------------------------- runs


def run_runs_command(settings: Settings, limit: int, console: Console, err: Console) -> int:
    """A table of the most recent runs, newest first."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        runs = store.recent_runs(limit)
    if runs.height == 0:
        console.print("no runs yet")
        return EXIT_OK
    console.print(runs_table(runs))
    return EXIT_OK


_STATUS_STYLE = {"completed": "green", "planned": "green", "succeeded": "green", "approved": "green",
                 "held": "yellow", "failed": "red", "running": "cyan", "applying": "cyan"}


def runs_table(runs: pl.DataFrame) -> Table:
    table = Table(title="Recent runs (newest first)")
    for column in ("run id", "kind", "status", "started (UTC)", "duration", "ops", "failed", "policy"):
        table.add_column(column, justify="right" if column in ("duration", "ops", "failed") else "left")
    for r in runs.iter_rows(named=True):
        style = _STATUS_STYLE.get(r["status"], "")
        table.add_row(r["run_id"], r["kind"], f"[{style}]{r['status']}[/]" if style else r["status"],
                      f"{r['started_at']:%Y-%m-%d %H:%M:%S}", _duration(r["started_at"], r["finished_at"]),
                      "-" if r["ops"] is None else f"{r['ops']:,}", "-" if r["failed"] is None else f"{r['failed']:,}",
                      r.get("policy_version") or "-")
    return table


def _duration(started: datetime, finished: datetime | None) -> str:
    if finished is None:
        return "-"
    seconds = (finished - started).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


# ----------------------------------------------------------------------------------------- report


def run_report_command(settings: Settings, run_id: str | None, as_json: bool, console: Console,
                       err: Console) -> int:
    """Print a run's summary and where its report is, writing the report files again when they are missing."""
    from contact_recon.report.build import rebuild_run_files

    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        run_id = run_id or store.latest_run(REPORT_KINDS)
        if run_id is None:
            _error(err, "no reconcile or plan run yet: `recon plan` or `recon run` first")
            return EXIT_FAILED
        try:
            summary, files = rebuild_run_files(store, settings.data_dir, run_id)
        except StoreError as exc:
            _error(err, str(exc))
            return EXIT_FAILED
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_summary(console, summary)
    console.print(f"report: {files.report}", highlight=False, soft_wrap=True)
    return EXIT_OK


def print_summary(console: Console, s: dict[str, Any]) -> None:
    """The summary.json of a run, as a person reads it."""
    style = {"completed": "green", "held": "yellow", "failed": "red"}.get(s["status"], "")
    console.print(f"run {s['run_id']}: [bold {style}]{s['status']}[/]"
                  f"{' (dry run: nothing written)' if s['dry_run'] else ''}", highlight=False)
    console.print(f"  {s['started_at']} → {s['finished_at'] or '-'} · locations: {', '.join(s['locations']) or '-'}",
                  highlight=False)
    for guard in s["guards"]:
        console.print(f"  guard {guard['name']}: {guard['reason']}", highlight=False, soft_wrap=True)
    console.print(_counts_table(s))
    console.print(f"conflicts {s['conflicts']:,} · quarantined {s['quarantined']:,} · stale {s['stale']:,} · "
                  f"failed {s['failed']:,}", highlight=False)
    for system, r in s["requests"].items():
        budget = f" of {r['budget']:,}" if r.get("budget") is not None else ""
        console.print(f"requests {system}: {r['used']:,}{budget} used, {r['rate_limited']:,} rate limited, "
                      f"{r['retried']:,} retried", highlight=False)


def _counts_table(s: dict[str, Any]) -> Table:
    table = Table(title="Ops per system and kind")
    for column in ("target", "kind", "planned", "applied"):
        table.add_column(column, justify="right" if column in ("planned", "applied") else "left")
    for system in ("ghl", "tinyemail"):
        for kind, n in s["counts"][system].items():
            if n:
                table.add_row(system, kind, f"{n:,}", f"{s['counts']['applied'][system].get(kind, 0):,}")
    return table


# -------------------------------------------------------------------------------------- conflicts


def run_conflicts_import_command(settings: Settings, path: Path, console: Console, err: Console) -> int:
    """Check a filled-in conflicts.csv and store its decisions for the next run; nothing when a row is bad."""
    from contact_recon.engine.decisions import DecisionFileError
    from contact_recon.store.conflicts import ConflictLog
    from contact_recon.store.decisions import Decisions, read_decisions

    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        decisions = Decisions(store)
        try:
            result = read_decisions(path, decisions.known_keys(), default_region=settings.default_region,
                                    countries=decisions.countries())
        except DecisionFileError as exc:
            _error(err, str(exc))
            return EXIT_FAILED
        saved = decisions.save(result.decisions, source=str(path.resolve()))
        ConflictLog(store).save_skips(result.skips, source=str(path.resolve()))
    by_choice = dict(result.decisions.group_by("choice").len().sort("choice").iter_rows())
    detail = ", ".join(f"{choice} {n:,}" for choice, n in by_choice.items())
    console.print(f"imported {saved:,} decision(s) from {path}{f' ({detail})' if detail else ''}; "
                  f"{result.undecided:,} row(s) without a decision left alone. They apply on the next run.",
                  highlight=False, soft_wrap=True)
    return EXIT_OK


LIST_COLUMNS = ("key", "email", "name", "field", "tinyemail", "ghl", "reason", "first_seen", "nights_open",
                "decision", "value", "ghl_url")


def run_conflicts_list_command(settings: Settings, as_json: bool, console: Console, err: Console) -> int:
    """The open conflicts (as the last run that saw them showed them), since when, and any pending decision."""
    from contact_recon.store.conflicts import ConflictLog

    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        frame = ConflictLog(store).open_conflicts()
        today = store.clock().date()
    rows = [_listed(row, today) for row in frame.iter_rows(named=True)]
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        console.print("no open conflicts")
        return EXIT_OK
    console.print(conflicts_table(rows))
    pending = sum(1 for r in rows if r["decision"])
    console.print(f"{len(rows):,} open conflict(s), {pending:,} with a pending decision (applied by the next run)",
                  highlight=False)
    return EXIT_OK


def _listed(row: dict[str, Any], today: Any) -> dict[str, Any]:
    from contact_recon.engine.conflicts import nights

    first = row["first_seen"]
    return {**{c: row.get(c) for c in LIST_COLUMNS if c not in ("first_seen", "nights_open")},
            "location_id": row["location_id"], "base": row["base"],
            "first_seen": first.strftime("%Y-%m-%dT%H:%M:%SZ"), "nights_open": nights(first, today),
            "last_run": row["last_run"]}


def conflicts_table(rows: list[dict[str, Any]]) -> Table:
    """Open conflicts as a terminal table; cells are plain text (a name is never read as markup)."""
    table = Table(title="Open conflicts (oldest first)")
    for column in LIST_COLUMNS:
        table.add_column(column.replace("_", " "), justify="right" if column == "nights_open" else "left",
                         overflow="fold")
    for r in rows:
        table.add_row(*(Text("-" if r[c] is None else str(r[c])) for c in LIST_COLUMNS))
    return table


def run_conflicts_undo_command(settings: Settings, key: str, field: str, console: Console, err: Console) -> int:
    """Forget the decision (pending or used) and the skip of one conflict: the next run reports it again."""
    from contact_recon.store.conflicts import ConflictLog

    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    presence = field.strip() in ("", "-")
    with store:
        removed = ConflictLog(store).undo(key, None if presence else field.strip())
    shown = "(no field)" if presence else field.strip()
    if removed == 0:
        _error(err, f"no decision on {key} {shown}: nothing to undo (see `recon conflicts list`)")
        return EXIT_FAILED
    console.print(f"undone: the decision on {key} {shown} is forgotten; the next run reports the conflict again",
                  highlight=False, soft_wrap=True)
    return EXIT_OK


def run_report_serve(settings: Settings, host: str, port: int, console: Console) -> int:
    """Serve the runs' reports (contact_recon/service/reports.py) until interrupted."""
    import uvicorn

    from contact_recon.service.reports import report_app

    console.print(f"serving the reports of {settings.data_dir} at http://{host}:{port}/ "
                  f"(RECON_REPORT_BASE_URL={settings.report_base_url or 'unset'})", highlight=False, soft_wrap=True)
    uvicorn.run(report_app(settings.data_dir), host=host, port=port, log_level="warning", access_log=False)
    return 0
