"""The run report: `summary.json` (a contract), `report.html` (for the data team) and Prefect artifacts.

Where the numbers come from (a run's own files under `<data_dir>/runs/<run_id>/` and the store):

- the ops of a run (`run_ops`): its journal rows when the apply stage recorded any (one row per op with
  its final status: done, failed, stale, quarantined, held...), else its `plan.parquet` (a dry run:
  status planned or quarantined), else none;
- conflicts: `conflicts.csv` (else the count the run row's plan summary recorded);
- check results: the `check_results` rows of the run; GX Data Docs: the run's own site,
  `<run dir>/data_docs/index.html` (`checks/data_docs.py`), so an old report shows its own results;
- requests: the run's snapshot (the snapshot run row's `requests_used_json`, found through the plan
  summary's `snapshot_run_id`) plus what the caller hands in (the apply's `RequestStats`; for an old run
  `requests_from_run` of the run row's `apply` figures); the budget is what the run could spend
  (`run_budgets`): GHL's daily allowance left when the snapshot began (the snapshot's request plans,
  `daily_remaining` summed over the locations), else the apply's `daily_left` plus what it used; None for
  a system without a daily allowance (TinyEmail);
- tripped guards: handed in by the caller, else the run's `held_reasons` (`recon report`);
- the Prefect flow run: the run row's `flow_run_id` (a held run) or the caller's (`report_run` inside a flow
  run), linked at `PREFECT_UI_URL` when Prefect knows its UI (`flow_run_url`);
- people: names, emails and GHL links from the run's saved state (`report/applied.py`); TinyEmail lists by
  name (`list_names_of`: the store's list names, when it has them);
- the policy the run planned with: the run row's `policy_version` and `policy_source` (summary keys of the
  same names, and the header of report.html and of the markdown artifact);
- what the snapshot could not read: the plan summary's `failed_locations` (a location whose snapshot
  failed, left out of the plan) and `unreadable` (records present but unreadable, their persons held
  back), summary keys of the same names and report.html's "Read problems".

`build_summary` makes the summary dict (`SUMMARY_SCHEMA` is its JSON Schema: the contract keys;
extra keys may be added, never removed). Status: a run held by a guard is `held`; one that ended
(`completed`, or `planned`/`approved` for a dry run) is `completed`; anything else (`failed`, or a run
left `running`/`applying` by a dead process) is `failed`. `counts` has, per target system, every op
kind (0 when none; `delete` too: no op ever deletes, it is there because the contract names it), and
`counts.applied` the same shape for the journal's `done` ops. `tags_folded` counts the second spellings of a
tag the run folds away (`model/tags.py`: `planned`, its fold ops; `applied`, those done), shown among the
report's figures when there are any.

`write_run_files` writes `summary.json` and `report.html`, each whole or not at all (a temporary file
renamed into place). The HTML is one file with inline CSS and inline SVG charts (`contact_recon/report/charts.py`):
drift over the last 30 reconcile/plan runs (log scale), trends over the same runs (`report/trends.py`: small
multiples of ops by kind, conflicts open, quarantine, check failures), ops by kind and direction, check
failures, requests against budget; then the run's files (conflicts.csv, identity.csv when written,
plan.parquet, relative links) and its Prefect flow run, the applied changes grouped by field and reason
with names and emails (`report/applied.py`), tables of conflicts and of failed, stale and quarantined ops
(capped, with how many more; payloads as readable fields, lists by name; the quarantined ones with their
person, values and age from `quarantine.parquet`, dismissed ones apart), the open identity reviews
(`identity.csv`), and a relative link to the Data
Docs. Every value is escaped (`html.escape`); the only absolute links are GHL contact pages and the
Prefect UI; error texts pass through `contact_recon.systems.redaction.redact` again, and no credential is
ever read here.

`publish_artifacts` mirrors the report into the Prefect UI from inside a flow run: a markdown summary,
tables of conflicts, failed and quarantined ops (capped), and a file:// link to the HTML report.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl

from contact_recon.engine.conflicts import CSV_SCHEMA as CONFLICT_ROWS
from contact_recon.model.cells import guard, unguarded
from contact_recon.model.context import GHL_CONTACT_URL
from contact_recon.model.ops import TARGETS, Kind
from contact_recon.model.tags import TAG_FOLDED
from contact_recon.report import charts
from contact_recon.report.applied import APPLIED_COLUMNS, applied_changes, list_names_of, readable_values, run_context
from contact_recon.report.trends import trend_history, trends_chart
from contact_recon.store.db import Store, UnknownRun
from contact_recon.store.files import (
    CONFLICTS_FILE,
    DOCS_DIR,
    IDENTITY_FILE,
    PLAN_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    atomic_text,
    run_dir,
)
from contact_recon.store.journal import Journal
from contact_recon.store.reviews import Reviews, load_identity_file, load_quarantine_file
from contact_recon.systems.redaction import redact

KINDS: tuple[str, ...] = (*(k.value for k in Kind), "delete")  # delete: named by the contract, always 0
SYSTEMS: tuple[str, ...] = TARGETS
REQUEST_FIELDS = ("used", "rate_limited", "retried")
STATUSES = ("completed", "held", "failed")
HISTORY_KINDS = ("plan", "reconcile")  # the runs the drift chart shows
HISTORY_RUNS = 30
ROW_CAP = 100  # rows per table in report.html
ARTIFACT_ROWS = 50  # rows per Prefect table artifact
CELL_CAP = 160  # characters per table cell
LONG_COLUMNS = ("expected", "new", "old", "last_error", "base", "tinyemail", "ghl", "quarantined_by", "ghl_url",
                "detail", "contact_ids")  # wrapped
READABLE_COLUMNS = ("expected", "new", "base", "tinyemail", "ghl")  # payloads as fields, list ids as names
GHL_LINK_PREFIX = GHL_CONTACT_URL.split("{", 1)[0]  # the one kind of absolute link a table cell may hold
DONE, FAILED, STALE, QUARANTINED, HELD = "done", "failed", "stale", "quarantined", "held"
REJECTED = "rejected"  # refused by the API (400/422): not sent again until its value changes or a person retries it
OPS_VIEW = pl.Schema({**{c: pl.String() for c in ("op_id", "target", "kind", "key", "field", "expected", "new",
                                                  "reason", "status", "quarantined_by", "error_kind",
                                                  "last_error")}, "attempts": pl.Int64()})
DIRECTION = {"ghl": "TinyEmail → GHL", "tinyemail": "GHL → TinyEmail"}  # by target system
ARTIFACT_KEY = re.compile(r"^[a-z0-9-]+$")

_COUNTS_OF_SYSTEM = {"type": "object", "required": list(KINDS),
                     "additionalProperties": {"type": "integer", "minimum": 0},
                     "properties": {k: {"type": "integer", "minimum": 0} for k in KINDS}}
_PER_SYSTEM: dict[str, Any] = {"type": "object", "required": list(SYSTEMS),
                               "properties": {s: _COUNTS_OF_SYSTEM for s in SYSTEMS}}
_COUNT = {"type": "integer", "minimum": 0}
_TIME = {"type": "string", "format": "date-time", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"}
SUMMARY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "contact-recon run summary (summary.json)",
    "type": "object",
    "required": ["run_id", "status", "started_at", "finished_at", "dry_run", "locations", "counts", "conflicts",
                 "quarantined", "stale", "failed", "requests", "guards"],
    "properties": {
        "run_id": {"type": "string", "minLength": 1},
        "status": {"enum": list(STATUSES)},
        "started_at": _TIME,
        "finished_at": {"oneOf": [_TIME, {"type": "null"}]},  # null only for a run that never finished
        "dry_run": {"type": "boolean"},
        "locations": {"type": "array", "items": {"type": "string"}},
        "counts": {**_PER_SYSTEM, "required": [*SYSTEMS, "applied"],
                   "properties": {**_PER_SYSTEM["properties"], "applied": _PER_SYSTEM}},
        "conflicts": _COUNT, "quarantined": _COUNT, "stale": _COUNT, "failed": _COUNT, "rejected": _COUNT,
        "requests": {"type": "object", "required": list(SYSTEMS), "additionalProperties": {
            "type": "object", "required": list(REQUEST_FIELDS),
            "properties": {**{f: _COUNT for f in REQUEST_FIELDS},
                           "budget": {"oneOf": [_COUNT, {"type": "null"}]}}}},
        "guards": {"type": "array", "items": {
            "type": "object", "required": ["name", "reason"],
            "properties": {"name": {"type": "string", "minLength": 1}, "reason": {"type": "string"}}}},
        # the policy the run planned with (contact_recon/systems/policy_source.py); null for runs before it was recorded
        "policy_version": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "null"}]},
        "policy_source": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "null"}]},
        # second spellings of a tag folded away (model/tags.py): the run's fold ops, and those applied
        "tags_folded": {"type": "object", "required": ["planned", "applied"],
                        "properties": {"planned": _COUNT, "applied": _COUNT}},
    },
}


@dataclass(frozen=True)
class RunFiles:
    directory: Path
    summary: Path
    report: Path


# ------------------------------------------------------------------------------------------- inputs


def run_ops(store: Store, data_dir: str | Path, run_id: str) -> pl.DataFrame:
    """A run's ops with their status (OPS_VIEW): the journal when it has rows, else plan.parquet, else none."""
    journal = Journal(store).frame(run_id)
    if journal.height:
        return journal.select(list(OPS_VIEW)).cast(OPS_VIEW)
    path = run_dir(data_dir, run_id) / PLAN_FILE
    if not path.exists():
        return pl.DataFrame(schema=OPS_VIEW)
    plan = pl.read_parquet(path)
    return plan.with_columns(error_kind=pl.lit(None, pl.String), last_error=pl.lit(None, pl.String),
                             attempts=pl.lit(0, pl.Int64)).select(list(OPS_VIEW)).cast(OPS_VIEW)


def load_conflicts(data_dir: str | Path, run_id: str) -> pl.DataFrame | None:
    """The run's conflicts.csv (engine/conflicts.py CSV_SCHEMA; the columns an older file lacks are null), or None
    when it has none."""
    path = run_dir(data_dir, run_id) / CONFLICTS_FILE
    if not path.exists():
        return None
    frame = pl.read_csv(path, infer_schema=False)
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in CONFLICT_ROWS.items() if name not in frame.columns]
    frame = frame.with_columns(missing).select(list(CONFLICT_ROWS)).cast(CONFLICT_ROWS)
    return unguarded(frame)  # the cells `guarded` wrote


def problem_ops(ops: pl.DataFrame) -> pl.DataFrame:
    """The ops a person should look at: rejected, failed, stale and quarantined."""
    return ops.filter(pl.col("status").is_in([REJECTED, FAILED, STALE, QUARANTINED]))


def docs_index(data_dir: str | Path, run_id: str) -> Path | None:
    """The run's own GX Data Docs index (`<run dir>/data_docs/index.html`), if its checks built one."""
    path = run_dir(data_dir, run_id) / DOCS_DIR / "index.html"
    return path if path.exists() else None


def requests_from_run(run: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Requests per system from a run row's `requests_used_json`: the snapshot stage's per-location counts
    (`ghl:<location>`, `tinyemail`), or the apply stage's per-system figures (under `apply`)."""
    used = json.loads(run.get("requests_used_json") or "null") or {}
    if isinstance(used, dict) and isinstance(used.get("apply"), dict):
        return {system: {f: int(figures.get(f) or 0) for f in REQUEST_FIELDS}
                for system, figures in used["apply"].items() if isinstance(figures, dict)}
    out: dict[str, dict[str, int]] = {}
    for where, figures in used.items() if isinstance(used, dict) else ():
        if not isinstance(figures, dict):
            continue
        system = out.setdefault(where.split(":", 1)[0], dict.fromkeys(REQUEST_FIELDS, 0))
        system["used"] += int(figures.get("used", figures.get("total", 0)) or 0)
        system["rate_limited"] += int(figures.get("rate_limited", 0) or 0)
        system["retried"] += int(figures.get("retried", 0) or 0)
    return out


def snapshot_run(store: Store, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The snapshot run a plan run read (its plan summary's `snapshot_run_id`), None when it reused one."""
    plan = json.loads(run.get("plan_json") or "null") or {}
    snapshot_id = plan.get("snapshot_run_id") if isinstance(plan, dict) else None
    if not snapshot_id:
        return None
    try:
        return store.get_run(str(snapshot_id))
    except UnknownRun:
        return None


def run_requests(store: Store, run: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's requests per system: its snapshot's plus `given` (the apply's), each with its `budget`
    (`run_budgets`, unless `given` names one)."""
    snapshot = snapshot_run(store, run)
    ours = requests_from_run(snapshot) if snapshot else {}
    handed = normalise_requests(given) if given else {}
    budgets = run_budgets(snapshot, {system: _as_dict(figures) for system, figures in given.items()})
    out: dict[str, dict[str, Any]] = {}
    for system in (*SYSTEMS, *sorted((set(ours) | set(handed)) - set(SYSTEMS))):
        a, b = ours.get(system) or {}, handed.get(system) or {}
        out[system] = {f: int(a.get(f) or 0) + int(b.get(f) or 0) for f in REQUEST_FIELDS}
        out[system]["budget"] = b.get("budget") if b.get("budget") is not None else budgets.get(system)
    return out


def run_budgets(snapshot: Mapping[str, Any] | None, apply: Mapping[str, Mapping[str, Any]]) -> dict[str, int | None]:
    """What each system's requests could spend in the run: the daily allowance left when the snapshot began
    (its request plans), else what the apply used plus the `daily_left` it saw; None: no daily allowance."""
    plans = json.loads((snapshot or {}).get("plan_json") or "null") or {}
    budgets: dict[str, int | None] = {}
    for where, plan in plans.items() if isinstance(plans, dict) else ():
        remaining = plan.get("daily_remaining") if isinstance(plan, dict) else None
        if remaining is None:
            continue  # this budget tracks no daily allowance (TinyEmail: a rate per minute only)
        system = where.split(":", 1)[0]
        budgets[system] = (budgets.get(system) or 0) + int(remaining)
    for system, figures in apply.items():
        if system not in budgets and figures.get("daily_left") is not None:
            budgets[system] = int(figures["daily_left"]) + int(figures.get("used") or 0)
    return budgets


def flow_run_url(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI (`PREFECT_UI_URL`), None when either is unknown."""
    if not flow_run_id:
        return None
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def guards_from_run(run: Mapping[str, Any]) -> list[dict[str, str]]:
    """The tripped guards of a run row's `held_reasons` ("name: detail")."""
    return [{"name": reason.split(":", 1)[0].strip() or "guard", "reason": reason}
            for reason in run.get("held_reasons") or []]


# ------------------------------------------------------------------------------------------ summary


def build_summary(store: Store, data_dir: str | Path, run_id: str, *, dry_run: bool,
                  requests: Mapping[str, Any], guards: Sequence[Mapping[str, Any]],
                  status: str | None = None, flow_run_id: str | None = None) -> dict[str, Any]:
    """The summary.json of a run (SUMMARY_SCHEMA; see the module docstring).

    Args:
        store: the open store (the run row, its journal and check results).
        data_dir: `$RECON_DATA_DIR` (the run's plan.parquet and conflicts.csv).
        run_id: the run.
        dry_run: nothing was written (no journal: the plan file's ops are counted).
        requests: per system ("ghl", "tinyemail"): the apply's `used`, `rate_limited`, `retried` (a dict or a
            `contact_recon.systems.http.RequestStats`), optionally `budget` (the requests the run could spend)
            or `daily_left`; the snapshot's requests are added from the store (`run_requests`).
        guards: the tripped guards, each {name, reason}; empty: the run row's held_reasons.
        status: the run's final status when the caller has not recorded it in the run row yet.
        flow_run_id: the Prefect flow run reporting (default: the run row's, a held run's).
    """
    run = store.get_run(run_id)
    ops = run_ops(store, data_dir, run_id)
    conflicts = load_conflicts(data_dir, run_id)
    plan = json.loads(run["plan_json"] or "null") or {}
    by_status = dict(ops.group_by("status").len().iter_rows())
    return {
        "run_id": run_id, "status": summary_status(status or run["status"]),
        "started_at": iso_utc(run["started_at"]), "finished_at": iso_utc(run["finished_at"]),
        "dry_run": dry_run, "locations": list(run["location_ids"] or []),
        "counts": {**op_counts(ops), "applied": op_counts(ops.filter(pl.col("status") == DONE))},
        "tags_folded": tag_folds(ops),
        "conflicts": conflicts.height if conflicts is not None else int(plan.get("conflicts") or 0),
        "quarantined": by_status.get(QUARANTINED, 0), "stale": by_status.get(STALE, 0),
        "failed": by_status.get(FAILED, 0), "rejected": by_status.get(REJECTED, 0),
        "requests": normalise_requests(run_requests(store, run, requests)), "guards": _guards(guards, run),
        "kind": run["kind"], "run_status": status or run["status"], "ops": ops.height,
        "held": by_status.get(HELD, 0), "approved_at": iso_utc(run["approved_at"]),
        "error": redact(run["error"]) if run["error"] else None,
        "policy_version": run.get("policy_version"), "policy_source": run.get("policy_source"),
        "report": str(run_dir(data_dir, run_id) / REPORT_FILE),
        "docs_index": str(index) if (index := docs_index(data_dir, run_id)) else None,
        "flow_run_id": (flow_id := flow_run_id or run.get("flow_run_id")), "flow_run_url": flow_run_url(flow_id),
        "failed_locations": dict(plan.get("failed_locations") or {}), "unreadable": list(plan.get("unreadable") or []),
    }


def tag_folds(ops: pl.DataFrame) -> dict[str, int]:
    """How many second spellings of a tag the run folds away (`model/tags.py`): its fold ops, and those applied."""
    folds = ops.filter(pl.col("reason") == TAG_FOLDED)
    return {"planned": folds.height, "applied": folds.filter(pl.col("status") == DONE).height}


def summary_status(run_status: str) -> str:
    """completed | held | failed, from a run row's status."""
    if run_status == "held":
        return "held"  # a guard tripped and nobody approved: nothing was applied
    if run_status in ("completed", "planned", "approved", "succeeded"):
        return "completed"  # ended normally ('planned': a dry run; 'approved': a dry run approved afterwards)
    return "failed"  # 'failed', or left 'running' / 'applying' by a process that died


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z` (naive datetimes are taken as UTC)."""
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def op_counts(ops: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Per target system, ops per kind: every kind of KINDS present (0 when none), unknown kinds added."""
    seen = {(t, k): n for t, k, n in ops.group_by("target", "kind").len().iter_rows()}
    extra = sorted({k for _, k in seen if k not in KINDS})
    return {system: {kind: seen.get((system, kind), 0) for kind in (*KINDS, *extra)} for system in SYSTEMS}


def normalise_requests(requests: Mapping[str, Any]) -> dict[str, dict[str, int | None]]:
    """Per system (both always present): used, rate_limited, retried as ints, and budget (int or None)."""
    out: dict[str, dict[str, int | None]] = {}
    for system in (*SYSTEMS, *sorted(set(requests) - set(SYSTEMS))):
        figures = _as_dict(requests.get(system) or {})
        out[system] = {f: int(figures.get(f) or 0) for f in REQUEST_FIELDS}
        out[system]["budget"] = int(figures["budget"]) if figures.get("budget") is not None else None
    return out


def _as_dict(figures: Any) -> dict[str, Any]:
    """A system's request figures as a dict (a `RequestStats` dataclass or a mapping)."""
    return asdict(figures) if is_dataclass(figures) and not isinstance(figures, type) else dict(figures)


def _guards(guards: Sequence[Mapping[str, Any]], run: Mapping[str, Any]) -> list[dict[str, Any]]:
    given = [{"name": str(g["name"]), "reason": str(g.get("reason") or "")} for g in guards] or guards_from_run(run)
    return [{**g, "approved": run.get("approved_at") is not None} for g in given]


# -------------------------------------------------------------------------------------------- files


def write_run_files(store: Store, data_dir: str | Path, run_id: str, summary: Mapping[str, Any]) -> RunFiles:
    """Write `summary.json` and `report.html` into `<data_dir>/runs/<run_id>/`, each atomically."""
    directory = run_dir(data_dir, run_id)  # made (0700) by the first atomic_text
    files = RunFiles(directory, directory / SUMMARY_FILE, directory / REPORT_FILE)
    html = render_report(store, data_dir, run_id, summary)
    atomic_text(files.summary, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_text(files.report, html)
    return files


def read_summary(data_dir: str | Path, run_id: str) -> dict[str, Any] | None:
    path = run_dir(data_dir, run_id) / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def rebuild_run_files(store: Store, data_dir: str | Path, run_id: str) -> tuple[dict[str, Any], RunFiles]:
    """The run's summary and files, written again from the store when either file is missing (`recon report`):
    a kept summary.json is reused; else requests and guards come from the run row."""
    summary = read_summary(data_dir, run_id)
    directory = run_dir(data_dir, run_id)
    files = RunFiles(directory, directory / SUMMARY_FILE, directory / REPORT_FILE)
    if summary is not None and files.report.exists():
        return summary, files
    if summary is None:
        run = store.get_run(run_id)
        journaled = Journal(store).op_count(run_id)
        summary = build_summary(store, data_dir, run_id, dry_run=not journaled, requests=_apply_requests(run),
                                guards=guards_from_run(run))
    return summary, write_run_files(store, data_dir, run_id, summary)


def _apply_requests(run: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The apply's requests of a run row (a plan run's own are its snapshot's: `run_requests` counts those)."""
    used = json.loads(run.get("requests_used_json") or "null")
    return requests_from_run(run) if isinstance(used, dict) and "apply" in used else {}


# --------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1360px;color:#222;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0 0 12px}.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;
font-weight:600}.completed{background:#2e7d32}.held{background:#ef6c00}.failed{background:#c62828}
.figures{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}.fig{border:1px solid #ddd;border-radius:6px;
padding:8px 14px;min-width:92px}.fig b{display:block;font-size:20px}.fig span{color:#666;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(660px,1fr));gap:16px}
.charts figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:10px;overflow-x:auto}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}tr:nth-child(even) td{background:#fafafa}
td.short{white-space:nowrap}td.long{overflow-wrap:anywhere;min-width:120px}
.more{color:#666;font-style:italic}.none{color:#2e7d32}ul.guards li{margin:4px 0}
tr.group th{background:#e8eef6;text-align:left}ul.links{display:flex;flex-wrap:wrap;gap:6px 18px;padding:0;
list-style:none}.missing{color:#888}
"""


def render_report(store: Store, data_dir: str | Path, run_id: str, summary: Mapping[str, Any]) -> str:
    """The whole report.html of a run, as text."""
    ops = run_ops(store, data_dir, run_id)
    conflicts = load_conflicts(data_dir, run_id)
    checks = store.load_check_results(run_id)
    history = drift_history(store, data_dir, run_id)
    quarantine = load_quarantine_file(data_dir, run_id, Reviews(store).dismissed())
    trends = trend_history(store, data_dir, [(rid, at) for rid, at, _ in history])
    names = list_names_of(store)
    changes = applied_changes(ops, run_context(data_dir, run_id), names)
    sections = [_header(summary), _figures(summary), _guard_list(summary), _read_problems(summary),
                _links(data_dir, run_id, summary),
                _charts(summary, ops, checks, history, trends_chart(trends, run_id)), _applied_table(changes),
                *_tables(conflicts, ops, names, quarantine), _identity_section(data_dir, run_id, store),
                _docs(data_dir, run_id)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>contact-recon run {escape(run_id)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def _header(s: Mapping[str, Any]) -> str:
    status = str(s["status"])
    meta = (f"{escape(str(s.get('kind') or 'run'))} · started {escape(str(s['started_at']))} · finished "
            f"{escape(str(s['finished_at'] or '—'))} · {'dry run (nothing written)' if s['dry_run'] else 'applied'}"
            f" · locations: {escape(', '.join(s['locations']) or '—')}{_policy_meta(s)}")
    error = f'<p class="meta">error: {escape(redact(s["error"]))}</p>' if s.get("error") else ""
    return (f'<h1>contact-recon run {escape(str(s["run_id"]))} <span class="badge {escape(status)}">'
            f"{escape(status)}</span></h1><p class=\"meta\">{meta}</p>{error}")


def _policy_meta(s: Mapping[str, Any]) -> str:
    if not s.get("policy_version"):
        return ""
    return f" · policy {escape(str(s['policy_version']))} ({escape(str(s.get('policy_source') or '?'))})"


def _figures(s: Mapping[str, Any]) -> str:
    planned = sum(sum(s["counts"][system].values()) for system in SYSTEMS)
    applied = sum(sum(s["counts"]["applied"][system].values()) for system in SYSTEMS)
    figures = [("ops planned", planned), ("applied", applied), ("conflicts", s["conflicts"]),
               ("quarantined", s["quarantined"]), ("stale", s["stale"]), ("rejected", s.get("rejected", 0)),
               ("failed", s["failed"])]
    if (folds := (s.get("tags_folded") or {}).get("planned")):
        figures.append(("tag spellings folded", folds))
    cells = "".join(f'<div class="fig"><b>{n:,}</b><span>{escape(label)}</span></div>' for label, n in figures)
    return f'<div class="figures">{cells}</div>'


def _guard_list(s: Mapping[str, Any]) -> str:
    if not s["guards"]:
        return ""
    items = "".join(f"<li><b>{escape(g['name'])}</b>{' (approved)' if g.get('approved') else ''}: "
                    f"{escape(g['reason'])}</li>" for g in s["guards"])
    return f'<h2>Guards tripped</h2><ul class="guards">{items}</ul>'


def _read_problems(s: Mapping[str, Any]) -> str:
    """The locations whose snapshot failed (not planned) and the records read as present but unreadable."""
    failed = [f"<li><b>{escape(where)}</b> not planned: {escape(redact(why))}</li>"
              for where, why in (s.get("failed_locations") or {}).items()]
    unreadable = [f"<li>{escape(str(u.get('system')))} {escape(str(u.get('key') or '(no key)'))} at "
                  f"{escape(str(u.get('where')))}: {escape(str(u.get('problem')))} (last snapshot's row kept, "
                  "nothing planned)</li>" for u in s.get("unreadable") or []]
    if not failed and not unreadable:
        return ""
    return f'<h2>Read problems</h2><ul class="guards">{"".join(failed + unreadable)}</ul>'


def _links(data_dir: str | Path, run_id: str, s: Mapping[str, Any]) -> str:
    """The run's files (relative links, beside report.html) and its Prefect flow run."""
    directory = run_dir(data_dir, run_id)
    items = [f'<li><a id="file-{escape(name.split(".")[0])}" href="{escape(name)}">{escape(name)}</a></li>'
             if (directory / name).exists() else f'<li class="missing">{escape(name)} (not written)</li>'
             for name in (CONFLICTS_FILE, IDENTITY_FILE, PLAN_FILE)]
    url = s.get("flow_run_url")
    items.append(f'<li><a id="flow-run" href="{escape(str(url))}">Prefect flow run</a></li>' if url else
                 '<li class="missing">Prefect flow run (not run in Prefect, or its UI URL is unknown)</li>')
    return f'<h2>Files and links</h2><ul class="links">{"".join(items)}</ul>'


def _applied_table(changes: pl.DataFrame) -> str:
    """The applied changes, a heading row per (field, reason) group."""
    title = "Applied changes (grouped by field and reason)"
    if changes.height == 0:
        return f'<h2>{escape(title)}</h2><p class="none">none</p>'
    cols = [c for c in APPLIED_COLUMNS if c not in ("field", "reason")]
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    shown = changes.head(ROW_CAP)
    sizes = {(f, r): n for f, r, n in changes.group_by("field", "reason").len().iter_rows()}
    body, group = [], None
    for row in shown.iter_rows(named=True):
        if (row["field"], row["reason"]) != group:
            group = (row["field"], row["reason"])
            n = sizes.get(group, 0)
            body.append(f'<tr class="group"><th colspan="{len(cols)}">{escape(str(row["field"]))} · '
                        f"{escape(str(row['reason']))} ({n:,})</th></tr>")
        body.append(_row(row, cols))
    more = (f'<p class="more">… and {changes.height - ROW_CAP:,} more not shown ({changes.height:,} in all)</p>'
            if changes.height > ROW_CAP else "")
    return (f"<h2>{escape(title)} <small>({changes.height:,})</small></h2><table id=\"applied\"><tr>{head}</tr>"
            + "".join(body) + f"</table>{more}")


def _charts(s: Mapping[str, Any], ops: pl.DataFrame, checks: pl.DataFrame,
            history: list[tuple[str, datetime, dict[str, int]]], trends: str) -> str:
    figures = [drift_chart(history, str(s["run_id"])), trends, kinds_chart(ops), checks_chart(checks),
               requests_chart(s["requests"])]
    return "<h2>Charts</h2><div class=\"charts\">" + "".join(f"<figure>{f}</figure>" for f in figures) + "</div>"


def _tables(conflicts: pl.DataFrame | None, ops: pl.DataFrame, list_names: Mapping[str, str],
            quarantine: pl.DataFrame | None = None) -> list[str]:
    op_cols = ["target", "kind", "key", "field", "expected", "new", "reason"]
    ops = readable_values(ops.filter(pl.col("status").is_in([REJECTED, FAILED, STALE, QUARANTINED])),
                          READABLE_COLUMNS, list_names)
    conflicts = readable_values(conflicts, READABLE_COLUMNS, list_names) if conflicts is not None else None
    return [
        _table("Conflicts (decide them in conflicts.csv, then `recon conflicts import`)",
               conflicts if conflicts is not None else pl.DataFrame(schema=CONFLICT_ROWS), list(CONFLICT_COLUMNS)),
        _table("Rejected by the API (not sent again until the value changes or `recon quarantine retry OP_ID`)",
               ops.filter(pl.col("status") == REJECTED), ["op_id", *op_cols, "last_error"]),
        _table("Failed ops (the service did not take them: planned again next run)",
               ops.filter(pl.col("status") == FAILED), [*op_cols, "error_kind", "last_error", "attempts"]),
        _table("Stale ops (changed by a person since the snapshot: planned again next run)",
               ops.filter(pl.col("status") == STALE), op_cols),
        _table("Quarantined ops (held by a blocking check)", ops.filter(pl.col("status") == QUARANTINED),
               [*op_cols, "quarantined_by"]) if quarantine is None else _quarantine_section(
            readable_values(quarantine, READABLE_COLUMNS, list_names)),
    ]


QUARANTINE_COLUMNS = ["op_id", "email", "name", "location_id", "ghl_url", "target", "kind", "field", "new", "ghl",
                      "tinyemail", "quarantined_by", "first_seen", "nights_open"]
IDENTITY_COLUMNS = ["review_id", "kind", "email", "old_email", "name", "contact_ids", "ghl_url", "ghl", "tinyemail",
                    "first_seen", "nights_open", "detail"]


def _quarantine_section(quarantine: pl.DataFrame) -> str:
    """The quarantined ops with their person, values and age; those the team dismissed apart (`recon quarantine`)."""
    open_ops = quarantine.filter(~pl.col("dismissed"))
    dismissed = quarantine.filter(pl.col("dismissed"))
    return (_table("Quarantined ops (held by a blocking check; `recon quarantine dismiss OP_ID` accepts one as it "
                   "is)", open_ops, QUARANTINE_COLUMNS)
            + _table("Dismissed quarantined ops (accepted as they are, never written; `--undo` restores)",
                     dismissed, [*QUARANTINE_COLUMNS, "note"]))


def open_identity_reviews(data_dir: str | Path, run_id: str, store: Store) -> pl.DataFrame | None:
    """The run's identity reviews still open (identity.csv without the decisions the team has given since)."""
    rows = load_identity_file(data_dir, run_id)
    if rows is None:
        return None
    decided = Reviews(store).standing_decisions()["review_id"].to_list()
    return rows.filter(~pl.col("review_id").is_in(decided))


def _identity_section(data_dir: str | Path, run_id: str, store: Store) -> str:
    rows = open_identity_reviews(data_dir, run_id, store)
    if rows is None:
        return ""
    return _table("Identity reviews (held back: decide in identity.csv, then `recon identity resolve`)", rows,
                  IDENTITY_COLUMNS)


def _table(title: str, frame: pl.DataFrame, cols: Sequence[str]) -> str:
    if frame.height == 0:
        return f'<h2>{escape(title)}</h2><p class="none">none</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(_row(row, cols) for row in frame.head(ROW_CAP).select(cols).iter_rows(named=True))
    more = (f'<p class="more">… and {frame.height - ROW_CAP:,} more not shown ({frame.height:,} in all)</p>'
            if frame.height > ROW_CAP else "")
    return f"<h2>{escape(title)} <small>({frame.height:,})</small></h2><table><tr>{head}</tr>{body}</table>{more}"


# the conflicts shown in the report and the table artifact: who, what, since when, and the contact in GHL
CONFLICT_COLUMNS = ("email", "name", "field", "base", "tinyemail", "ghl", "reason", "first_seen", "nights_open",
                    "ghl_url", "key")


def _row(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    return "<tr>" + "".join(f'<td class="{_cell_class(c)}">{_cell_html(row[c], c)}</td>' for c in cols) + "</tr>"


def _cell_html(value: Any, column: str) -> str:
    """A cell's escaped text; a GHL contact page as a link (the only absolute link a cell may give)."""
    text = _cell(value, column)
    if column == "ghl_url" and text.startswith(GHL_LINK_PREFIX):
        return f'<a href="{escape(str(value))}">GHL contact</a>'
    return escape(text)


def _cell_class(column: str) -> str:
    return "long" if column in LONG_COLUMNS else "short"


def _cell(value: Any, column: str) -> str:
    text = "" if value is None else str(value)
    text = redact(text) if column == "last_error" else text
    return text if len(text) <= CELL_CAP else text[: CELL_CAP - 1] + "…"


def _docs(data_dir: str | Path, run_id: str) -> str:
    index = docs_index(data_dir, run_id)
    if index is None:
        return "<h2>Data Docs</h2><p>No Data Docs were built for this run (checks ran with docs off).</p>"
    href = Path(os.path.relpath(index, run_dir(data_dir, run_id))).as_posix()
    return (f'<h2>Data Docs</h2><p><a id="data-docs" href="{escape(href)}">Great Expectations Data Docs</a> '
            "of this run's checks (kept with the run; they open offline).</p>")


# ------------------------------------------------------------------------------------------- charts


def drift_history(store: Store, data_dir: str | Path, run_id: str,
                  limit: int = HISTORY_RUNS) -> list[tuple[str, datetime, dict[str, int]]]:
    """(run id, started date, ops per target) of the last `limit` plan/reconcile runs up to this one that
    left ops (a journal or a plan file), oldest first."""
    started = store.get_run(run_id)["started_at"]
    runs = store.runs_started_by(HISTORY_KINDS, started, limit * 2)
    from_journal = Journal(store).target_counts(runs["run_id"].to_list())
    history = []
    for rid, at in runs.iter_rows():
        counts = from_journal.get(rid) or _plan_counts(data_dir, rid)
        if counts is not None:
            history.append((rid, at, counts))
    return history[:limit][::-1]


def _plan_counts(data_dir: str | Path, run_id: str) -> dict[str, int] | None:
    path = run_dir(data_dir, run_id) / PLAN_FILE
    if not path.exists():
        return None
    return dict(pl.scan_parquet(path).group_by("target").len().collect().iter_rows())


def drift_chart(history: list[tuple[str, datetime, dict[str, int]]], run_id: str) -> str:
    """Stacked columns per run (oldest first), by target; labelled by day, or by time when all are one day."""
    series = [charts.Series(DIRECTION["ghl"], "#1f77b4"), charts.Series(DIRECTION["tinyemail"], "#ff7f0e")]
    one_day = len({at.date() for _, at, _ in history}) <= 1
    step = max(len(history) // 8, 1)
    rows = [charts.Row(rid, [counts.get("ghl", 0), counts.get("tinyemail", 0)],
                       note=(f"{at:%H:%M}" if one_day else f"{at:%m-%d}") if i % step == 0 else "",
                       tooltip=f"{rid} ({iso_utc(at)}): {sum(counts.values()):,} ops")
            for i, (rid, at, counts) in enumerate(history)]
    chart = charts.Chart("drift", f"Drift: ops planned per run (last {len(history)} runs, log scale)", series, rows)
    return charts.columns(chart, highlight=run_id, empty="no plan yet", log=True)


def kinds_chart(ops: pl.DataFrame) -> str:
    """Per (kind, direction) with ops: applied and not applied, stacked."""
    grouped = (ops.group_by("kind", "target").agg(applied=(pl.col("status") == DONE).sum(), total=pl.len())
               .with_columns(order=pl.col("kind").replace_strict({k: i for i, k in enumerate(KINDS)}, default=99))
               .sort("order", "target"))
    rows = [charts.Row(f"{kind} · {DIRECTION.get(target, target)}", [applied, total - applied],
                       note=f"{total:,}" + (f" ({applied:,} applied)" if applied else ""))
            for kind, target, applied, total, _ in grouped.iter_rows()]
    series = [charts.Series("applied", "#2e7d32"), charts.Series("planned, not applied", "#90a4ae")]
    return charts.hbars(charts.Chart("kinds", "Ops by kind and direction", series, rows), empty="no ops planned")


def checks_chart(checks: pl.DataFrame) -> str:
    failing = checks.filter((pl.col("unexpected_count") > 0) | ~pl.col("success")).sort(
        ["blocking", "unexpected_count"], descending=True).head(20)
    series = [charts.Series("blocking", "#c62828"), charts.Series("warning", "#f9a825")]
    rows = [charts.Row(f"{suite}.{name}", [n, 0] if blocking else [0, n], note=f"{n:,}",
                       tooltip=f"{suite}.{name}: {n:,} records ({'blocking' if blocking else 'warning'})")
            for suite, name, n, blocking in failing.select("suite", "expectation", "unexpected_count", "blocking")
            .iter_rows()]
    title = f"Check failures: records per expectation ({checks.height} checked)"
    return charts.hbars(charts.Chart("checks", title, series, rows), empty="every check passed")


def requests_chart(requests: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for system, r in requests.items():
        budget = r.get("budget")
        note = (f"{r['used']:,}" + (f" of {budget:,} left today" if budget is not None else " (no daily allowance)")
                + f" · 429s {r['rate_limited']:,}"
                + f" · retried {r['retried']:,}")
        rows.append(charts.Row(system, [r["used"]], note=note, marker=budget))
    chart = charts.Chart("requests", "Requests against budget (each system to its own scale; dashed: budget)",
                         [charts.Series("requests used", "#5e35b1")], rows)
    return charts.hbars(chart, empty="no requests recorded", per_row=True)


# ---------------------------------------------------------------------------------------- artifacts


def summary_markdown(summary: Mapping[str, Any], files: RunFiles, *, link: str | None = None,
                     history: Sequence[tuple[str, datetime, Mapping[str, int]]] = (),
                     checks: pl.DataFrame | None = None) -> str:
    """The run summary as markdown: the numbers, the requests, the guards, the figures of the report's drift
    and check charts (`history`: `drift_history`; `checks`: the run's check results), and the report's link."""
    s = summary
    lines = [f"# contact-recon run `{s['run_id']}`: **{s['status']}**", "",
             f"{'Dry run (nothing written)' if s['dry_run'] else 'Applied'} · locations: "
             f"{', '.join(s['locations']) or '-'} · {s['started_at']} → {s['finished_at'] or '-'}"
             + (f" · policy `{s['policy_version']}` ({_md(s.get('policy_source') or '?')})"
                if s.get("policy_version") else ""), "",
             "| system | kind | planned | applied |", "|---|---|---:|---:|"]
    for system in SYSTEMS:
        lines += [f"| {system} | {kind} | {n:,} | {s['counts']['applied'][system].get(kind, 0):,} |"
                  for kind, n in s["counts"][system].items() if n]
    lines += ["", f"conflicts **{s['conflicts']:,}** · quarantined **{s['quarantined']:,}** · stale "
              f"**{s['stale']:,}** · rejected **{s.get('rejected', 0):,}** · failed **{s['failed']:,}**", "",
              "| requests | used | rate limited | retried | budget |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {system} | {r['used']:,} | {r['rate_limited']:,} | {r['retried']:,} | "
              f"{'-' if r.get('budget') is None else format(r['budget'], ',')} |"
              for system, r in s["requests"].items()]
    lines += ["", "Guards tripped:" if s["guards"] else "No guard tripped."]
    lines += [f"- **{_md(g['name'])}**: {_md(g['reason'])}" for g in s["guards"]]
    lines += _history_markdown(history, s["run_id"]) + _checks_markdown(checks)
    lines += ["", f"Report: [{link}]({link})" if link else f"Report: `{files.report}` (on the worker; set "
              "RECON_REPORT_BASE_URL and run `recon report serve` to open it from here)"]
    return "\n".join(lines)


def _history_markdown(history: Sequence[tuple[str, datetime, Mapping[str, int]]], run_id: str) -> list[str]:
    if not history:
        return []
    lines = ["", f"Drift: ops planned per run (last {len(history)})", "",
             "| run | started | to GHL | to TinyEmail |", "|---|---|---:|---:|"]
    for rid, at, counts in history:
        mark = " (this run)" if rid == run_id else ""
        lines.append(f"| `{rid}`{mark} | {iso_utc(at)} | {counts.get('ghl', 0):,} | {counts.get('tinyemail', 0):,} |")
    return lines


def _checks_markdown(checks: pl.DataFrame | None) -> list[str]:
    if checks is None or checks.height == 0:
        return []
    failing = checks.filter((pl.col("unexpected_count") > 0) | ~pl.col("success")).sort(
        ["blocking", "unexpected_count"], descending=True).head(20)
    if failing.height == 0:
        return ["", f"Checks: all {checks.height} passed."]
    lines = ["", f"Check failures ({failing.height} of {checks.height} checks)", "",
             "| expectation | records | severity |", "|---|---:|---|"]
    lines += [f"| {_md(f'{suite}.{name}')} | {n:,} | {'blocking' if blocking else 'warning'} |"
              for suite, name, n, blocking in failing.select("suite", "expectation", "unexpected_count", "blocking")
              .iter_rows()]
    return lines


def report_url(base_url: str | None, run_id: str) -> str | None:
    """Where the team opens a run's report (`recon report serve` at RECON_REPORT_BASE_URL), None without one."""
    return f"{base_url.rstrip('/')}/runs/{run_id}/{REPORT_FILE}" if base_url else None


def _md(text: str) -> str:
    return escape(str(text)).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _table_rows(frame: pl.DataFrame, cols: Sequence[str]) -> list[dict[str, str]]:
    """An artifact table's rows (the Prefect UI downloads them as CSV: formula-like text is guarded)."""
    return [{c: guard(_cell(row[c], c)) for c in cols}
            for row in frame.head(ARTIFACT_ROWS).select(cols).iter_rows(named=True)]


def publish_artifacts(summary: Mapping[str, Any], files: RunFiles, *, conflicts: pl.DataFrame | None,
                      problems: pl.DataFrame, key_prefix: str = "recon", link: str | None = None,
                      history: Sequence[tuple[str, datetime, Mapping[str, int]]] = (),
                      checks: pl.DataFrame | None = None, applied: pl.DataFrame | None = None,
                      list_names: Mapping[str, str] | None = None, quarantine: pl.DataFrame | None = None,
                      identity: pl.DataFrame | None = None) -> dict[str, UUID]:
    """Create the run's Prefect artifacts; call it inside a flow or task run (it uses the sync client).

    Args:
        summary: `build_summary`'s dict.
        files: `write_run_files`'s paths (the link artifact points at `link`, else the file as a file:// URL).
        conflicts: the run's conflicts (the rows of its conflicts.csv, `load_conflicts`), or None.
        problems: ops with a status (`run_ops`, or `problem_ops` of it): the rejected, failed and quarantined
            ones become tables.
        key_prefix: artifact keys are `<prefix>-summary`, `-conflicts`, `-rejected-ops`, `-failed-ops`,
            `-quarantined-ops`,
            `-applied-changes`, `-report` (stable, so the Prefect UI keeps each one's history across runs of
            one kind).
        link: the report's URL (`report_url`), None: its file.
        history, checks: the drift and check figures for the summary (`summary_markdown`).
        applied: the applied changes (`report.applied.applied_changes`), None: none.
        list_names: TinyEmail list id -> name (`list_names_of`), for readable values.
        quarantine: the run's quarantine.parquet (`load_quarantine_file`): the quarantined-ops table then names
            the person, both sides' values and since when (open ones only); None: the ops as they are.
        identity: the run's open identity reviews (`open_identity_reviews`): an `-identity-reviews` table.
    Returns: artifact key -> artifact id.
    """
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    if not ARTIFACT_KEY.match(key_prefix):
        raise ValueError(f"artifact keys take lowercase letters, digits and dashes only, not {key_prefix!r}")
    run_id = summary["run_id"]
    # `_sync=True`: Prefect's sync/async-compatible functions take it; their stubs do not name it
    ids = {f"{key_prefix}-summary": create_markdown_artifact(  # type: ignore[call-arg]
        markdown=summary_markdown(summary, files, link=link, history=history, checks=checks),
        key=f"{key_prefix}-summary",
        description=f"run {run_id}: {summary['status']}", _sync=True)}
    tables = _artifact_tables(conflicts, problems, applied, list_names or {})
    if quarantine is not None:
        tables["quarantined-ops"] = (readable_values(quarantine.filter(~pl.col("dismissed")), READABLE_COLUMNS,
                                                     list_names or {}), QUARANTINE_COLUMNS)
    if identity is not None:
        tables["identity-reviews"] = (identity, IDENTITY_COLUMNS)
    for name, (frame, cols) in tables.items():
        shown = f"first {ARTIFACT_ROWS} of {frame.height:,}" if frame.height > ARTIFACT_ROWS else f"{frame.height:,}"
        table: Any = _table_rows(frame, cols) or {c: [] for c in cols}
        ids[f"{key_prefix}-{name}"] = create_table_artifact(  # type: ignore[call-arg]
            table=table, key=f"{key_prefix}-{name}", description=f"run {run_id}: {name} ({shown})", _sync=True)
    ids[f"{key_prefix}-report"] = create_link_artifact(  # type: ignore[call-arg]
        link=link or files.report.resolve().as_uri(), link_text=f"HTML report of run {run_id}",
        key=f"{key_prefix}-report",
        description=f"run {run_id}: report.html", _sync=True)
    return ids  # type: ignore[return-value]


def _artifact_tables(conflicts: pl.DataFrame | None, problems: pl.DataFrame, applied: pl.DataFrame | None,
                     list_names: Mapping[str, str]) -> dict[str, tuple[pl.DataFrame, list[str]]]:
    op_cols = ["target", "kind", "key", "field", "expected", "new", "reason"]
    conflicts = conflicts if conflicts is not None else pl.DataFrame(schema=CONFLICT_ROWS)
    problems = readable_values(problems, READABLE_COLUMNS, list_names)
    return {"conflicts": (readable_values(conflicts, READABLE_COLUMNS, list_names), list(CONFLICT_COLUMNS)),
            "applied-changes": (applied if applied is not None else pl.DataFrame(schema=dict.fromkeys(
                APPLIED_COLUMNS, pl.String)), list(APPLIED_COLUMNS)),
            "rejected-ops": (problems.filter(pl.col("status") == REJECTED), ["op_id", *op_cols, "last_error"]),
            "failed-ops": (problems.filter(pl.col("status") == FAILED), [*op_cols, "error_kind", "last_error"]),
            "quarantined-ops": (problems.filter(pl.col("status") == QUARANTINED), [*op_cols, "quarantined_by"])}
