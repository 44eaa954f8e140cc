"""Trends over the last runs, for a data lead: ops by kind, conflicts open, quarantine and check failures.

The runs are those of the report's drift chart (`build.drift_history`: the last `HISTORY_RUNS` plan and
reconcile runs up to this one that left ops). Per run (`TrendPoint`):

- ops per kind: its journal's rows when it has any (`Journal.kind_counts`), else its plan.parquet's;
- conflicts open: the conflicts its plan recorded (the run row's plan summary, `conflicts`);
- quarantined: the ops its plan quarantined (the same summary, `quarantined`);
- check failures: the records its failing checks flagged (the sum of `unexpected_count` over its check results).

`trends_chart` draws them as small multiples (`charts.multiples`), each panel to its own scale, so a first
fill of thousands of creates does not flatten the nights after it; only the kinds some run has are shown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from contact_recon.model.ops import Kind
from contact_recon.report import charts
from contact_recon.store.db import Store
from contact_recon.store.files import PLAN_FILE, run_dir
from contact_recon.store.journal import Journal

KIND_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#393b79")
REVIEW_PANELS = (("conflicts open", "conflicts", "#c62828"), ("quarantined ops", "quarantined", "#ef6c00"),
                 ("check failures (records)", "check_failures", "#6a1b9a"))


@dataclass(frozen=True)
class TrendPoint:
    run_id: str
    started_at: datetime
    kinds: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    quarantined: int = 0
    check_failures: int = 0


def trend_history(store: Store, data_dir: str | Path, runs: Sequence[tuple[str, datetime]]) -> list[TrendPoint]:
    """A TrendPoint per run of `runs` ((run id, started), oldest first: `drift_history`'s runs)."""
    journaled = Journal(store).kind_counts([rid for rid, _ in runs])
    points = []
    for rid, at in runs:
        plan = json.loads(store.get_run(rid)["plan_json"] or "null") or {}
        checks = store.load_check_results(rid)
        failures = int(checks["unexpected_count"].sum() or 0) if checks.height else 0
        points.append(TrendPoint(rid, at, journaled.get(rid) or _plan_kinds(data_dir, rid),
                                 int(plan.get("conflicts") or 0), int(plan.get("quarantined") or 0), failures))
    return points


def _plan_kinds(data_dir: str | Path, run_id: str) -> dict[str, int]:
    path = run_dir(data_dir, run_id) / PLAN_FILE
    if not path.exists():
        return {}
    return dict(pl.scan_parquet(path).group_by("kind").len().collect().iter_rows())


def trends_chart(points: Sequence[TrendPoint], run_id: str) -> str:
    """Small multiples over the runs: one panel per op kind any run has, then conflicts, quarantine, checks."""
    labels = [f"{p.run_id} ({p.started_at:%Y-%m-%d %H:%M})" for p in points]
    known = [k.value for k in Kind]
    kinds = sorted({k for p in points for k in p.kinds}, key=lambda k: (known.index(k) if k in known else 99, k))
    panels = [charts.Panel(f"ops: {kind}", [p.kinds.get(kind, 0) for p in points],
                           KIND_COLORS[i % len(KIND_COLORS)]) for i, kind in enumerate(kinds)]
    panels += [charts.Panel(name, [getattr(p, attr) for p in points], color) for name, attr, color in REVIEW_PANELS]
    current = next((i for i, p in enumerate(points) if p.run_id == run_id), None)
    title = f"Trends over the last {len(points)} runs (each panel to its own scale; outlined: this run)"
    return charts.multiples("trends", title, labels, panels, highlight=current, empty="no runs yet")
