"""Run the hygiene suites with great-expectations: results, quarantined records, Data Docs.

Algorithm (`run_checks`):
1. For each suite of `checks/suites.py` whose frame was given, compute its check columns with polars
   (one column per expectation: null where the record is fine, the offending value where not) next to
   the record id and the person key. Only these narrow columns go to pandas (`to_pandas()`).
2. Quarantine is read from the polars columns, not from GX: every non-null value of a *blocking*
   expectation is a quarantined record `(suite, expectation, record_id, key, email, op_id)`. `key` is the
   person key the merge engine plans under (the contact id; `te:<email>` for a TinyEmail customer;
   the task's or note's contact; the op's key), `email` lets `checks/quarantine.py` reach the same
   person under its other key; an expectation that holds single ops gives `op_id` and no key.
3. GX validates each suite's frame (a pandas data source, one dataframe asset and a whole-dataframe
   batch definition per suite, `expect_column_values_to_be_null` per check column with the
   expectation's `mostly`, result format SUMMARY with `sample_size` partial unexpected values). GX's
   answer gives `success`, `unexpected_count` and the sample values.
   The frame GX sees has its text HTML-escaped and GX's sample values are unescaped back
   (`checks/data_docs.py`): GX writes unexpected values into its pages as markup.
   A run that builds no Data Docs (`docs=False`: a one-person sync between nights, a dry run without pages)
   computes the same answer in memory instead (`quick_results`, on GX's very input frame): GX's validation
   graph and project stores cost seconds a run, and nothing of them would be kept.
   GX runs in a child process (`validate_and_build`): its import and validation graph are the largest part of
   a nightly's memory, and the flow's process never needs them. The child is spawned on the first run that
   builds Data Docs and kept for the process's later runs (`in_gx_worker`; spawning it and importing GX again
   takes about 8 s a run); a child that died is replaced on the next run, and it exits with its parent.
4. The GX project under `<data_dir>/gx/` is rebuilt from scratch each run that builds Data Docs (suites follow the
   current thresholds; run history lives in DuckDB's `check_results`), and Data Docs are built once at the
   end into the run's own folder (`docs_dir`: the plan stage gives `<data_dir>/runs/<run_id>/data_docs/`,
   so an older run's report still shows that run's results; default `<data_dir>/gx/` + `DOCS_INDEX`),
   as a site that needs no network (`checks/data_docs.py`), linked from the run report.
GX's telemetry is off: GX_ANALYTICS_ENABLED=false before GX is imported, and the project's
`analytics_enabled` is false. GX is imported on first use (its import takes seconds).
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
from contact_recon.checks.data_docs import escaped, prune_assets, site_config, unescaped
from contact_recon.checks.suites import SUITES, Context, Suite, Thresholds, mostly, severity

from contact_recon.engine.guards import NO_HISTORY, GuardHistory
from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.policy import GuardPolicy

_T = TypeVar("_T")

os.environ["GX_ANALYTICS_ENABLED"] = "false"  # before great_expectations is imported anywhere

GX_DIR = "gx"
DOCS_INDEX = Path("uncommitted") / "data_docs" / "local_site" / "index.html"  # the default site's index
DOCS_SITE = "run"  # the site's name in the GX project
QUARANTINE_SCHEMA = pl.Schema({"suite": pl.String(), "expectation": pl.String(), "record_id": pl.String(),
                               "key": pl.String(), "email": pl.String(), "op_id": pl.String()})
RESULTS_SCHEMA = pl.Schema({"suite": pl.String(), "expectation": pl.String(), "severity": pl.String(),
                            "success": pl.Boolean(), "unexpected_count": pl.Int64(), "element_count": pl.Int64(),
                            "sample_values": pl.List(pl.String()), "meaning": pl.String(), "blocking": pl.Boolean()})


@dataclass(frozen=True)
class ExpectationResult:
    suite: str
    expectation: str
    severity: str  # "blocking" | "warning"
    success: bool
    unexpected_count: int
    element_count: int
    sample_values: tuple[str, ...]
    meaning: str

    @property
    def qualified(self) -> str:
        return f"{self.suite}.{self.expectation}"


@dataclass(frozen=True)
class CheckReport:
    run_id: str
    results: tuple[ExpectationResult, ...]
    quarantined: pl.DataFrame  # QUARANTINE_SCHEMA, one row per (blocking expectation, failing record)
    docs_index: Path | None

    @property
    def blocking_failures(self) -> tuple[ExpectationResult, ...]:
        return tuple(r for r in self.results if r.severity == "blocking" and r.unexpected_count > 0)

    @property
    def warnings(self) -> tuple[ExpectationResult, ...]:
        return tuple(r for r in self.results if r.severity == "warning" and r.unexpected_count > 0)

    def result(self, qualified: str) -> ExpectationResult:
        return next(r for r in self.results if r.qualified == qualified)

    def quarantined_keys(self) -> dict[str, frozenset[str]]:
        """Qualified expectation name -> the person keys (or op ids, for op-level ones) it quarantined."""
        grouped = self.quarantined.group_by("suite", "expectation").agg(pl.coalesce("key", "op_id").unique())
        return {f"{s}.{x}": frozenset(keys) for s, x, keys in grouped.iter_rows()}

    def to_frame(self) -> pl.DataFrame:
        """The results as rows (RESULTS_SCHEMA), the shape `Store.save_check_results` takes."""
        rows = [{**r.__dict__, "sample_values": list(r.sample_values), "blocking": r.severity == "blocking"}
                for r in self.results]
        return pl.DataFrame(rows, schema=RESULTS_SCHEMA)


# Per suite: the person key and the email a quarantined record stands for.
_KEYS: dict[str, tuple[pl.Expr, pl.Expr]] = {
    "ghl_contacts": (pl.col("contact_id"), pl.col("email")),
    "te_customers": (TE_KEY_PREFIX + pl.col("email"), pl.col("email")),
    "ghl_tasks": (pl.col("contact_id"), pl.lit(None, pl.String)),
    "ghl_notes": (pl.col("contact_id"), pl.lit(None, pl.String)),
    "plan": (pl.col("key"), pl.lit(None, pl.String)),
}


def run_checks(frames: Mapping[str, pl.DataFrame], plan_ops: pl.DataFrame | None, thresholds: Thresholds | None,
               run_id: str, data_dir: str | Path, *, today: dt.date | None = None,
               guards: GuardPolicy | None = None, people: int | None = None,
               guard_history: GuardHistory = NO_HISTORY, docs: bool = True,
               docs_dir: Path | None = None) -> CheckReport:
    """Validate the snapshot frames and the plan; return the results and the quarantined records.

    Args:
        frames: "ghl_contacts", "te_customers", "ghl_tasks", "ghl_notes" (records.py schemas); a missing
            frame skips its suite.
        plan_ops: the plan (ops.OPS_SCHEMA), or None to skip the plan suite.
        thresholds: bounds, pass rates and severity overrides (default: `Thresholds()`).
        run_id: the run these results belong to (the Data Docs run name).
        data_dir: `$RECON_DATA_DIR`; the GX project and Data Docs are rebuilt under `<data_dir>/gx/`.
        today: the date due-date bounds are measured from (default: today in UTC).
        guards: the plan guard thresholds (the policy's `guards`; default `GuardPolicy()`).
        people: the people in play, the guards' denominator (the merge stats' "people"); default: the
            larger of the GHL contact and TinyEmail customer counts.
        guard_history: the location's usual guard figures (`contact_recon/engine/guards.py`), so the guard
            expectation uses the merge engine's very thresholds; default none (the floors only).
        docs: build Data Docs (tests of pure results may skip it).
        docs_dir: the folder of this run's Data Docs site (made afresh); default `<data_dir>/gx/` + the
            folder of `DOCS_INDEX` (rebuilt by every run).
    """
    t = thresholds or Thresholds()
    ctx = _context(frames, t, today, guards, people, guard_history)
    inputs = {**frames, **({"plan": plan_ops} if plan_ops is not None else {})}
    checked = {s.name: _checked(s, inputs[s.frame], ctx) for s in SUITES if s.frame in inputs}
    quarantined = _quarantined(checked, t)
    if not docs:  # nothing to build pages from: GX's own rule, evaluated in memory (`quick_results`)
        results = tuple(r for s in SUITES if s.name in checked for r in quick_results(s, checked[s.name], t))
        return CheckReport(run_id, results, quarantined, None)
    directory = docs_dir or (Path(data_dir) / GX_DIR / DOCS_INDEX).parent
    # GX in a process of its own: its import and validation graph are the largest part of a run's memory
    # (about 220 MiB for the import alone), and the nightly process never needs them
    results, index = in_gx_worker(validate_and_build, Path(data_dir) / GX_DIR, run_id, t, checked, directory)
    return CheckReport(run_id, results, quarantined, index)


_GX_WORKER: list[ProcessPoolExecutor] = []  # the live child, once a run has spawned it
_GX_WORKER_LOCK = threading.Lock()  # runs in threads of one process share one child


def in_gx_worker(fn: Callable[..., _T], *args: Any, retry: bool = True) -> _T:
    """`fn(*args)` in the child process GX runs in: spawned on first use, kept for later runs.

    A child that died (killed, or crashed) is replaced, and the call made once more in the new child: `fn` must be
    safe to repeat (`validate_and_build` rebuilds its GX project and site from scratch).
    """
    with _GX_WORKER_LOCK:
        if not _GX_WORKER:
            _GX_WORKER.append(ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_exit_with_parent))
        worker = _GX_WORKER[0]
    try:
        return worker.submit(fn, *args).result()
    except BrokenProcessPool:
        with _GX_WORKER_LOCK:
            if _GX_WORKER and _GX_WORKER[0] is worker:  # not replaced yet by another thread's call
                _GX_WORKER.pop().shutdown(wait=False)
        if not retry:  # a fresh child died during this very call: the call itself kills it, so fail
            raise
        return in_gx_worker(fn, *args, retry=False)  # the child died before or during the call: once more


def _exit_with_parent() -> None:
    """In the GX child: exit when the parent does, even when it was killed (an idle child would wait forever)."""
    parent = multiprocessing.parent_process()
    if parent is not None:  # always, in a spawned child
        sentinel = parent.sentinel
        threading.Thread(target=lambda: (wait([sentinel]), os._exit(0)), daemon=True).start()


def validate_and_build(root: Path, run_id: str, t: Thresholds, checked: Mapping[str, pl.DataFrame],
                       directory: Path) -> tuple[tuple[ExpectationResult, ...], Path]:
    """GX's part of `run_checks` (step 3 and 4), run in a child process: every suite's results, the Data Docs index."""
    gx_run = _GxRun(root, run_id, t)
    results = tuple(r for s in SUITES if s.name in checked for r in gx_run.validate(s, checked[s.name]))
    return results, gx_run.build_docs(directory)


def _context(frames: Mapping[str, pl.DataFrame], t: Thresholds, today: dt.date | None, guards: GuardPolicy | None,
             people: int | None, guard_history: GuardHistory) -> Context:
    contacts = frames.get("ghl_contacts")
    ids = contacts["contact_id"].drop_nulls() if contacts is not None else pl.Series("contact_id", [], pl.String)
    if people is None:
        people = max((frames[n].height for n in ("ghl_contacts", "te_customers") if n in frames), default=0)
    return Context(t, today or dt.datetime.now(dt.UTC).date(), ids, guards or GuardPolicy(), people, guard_history)


def _checked(suite: Suite, frame: pl.DataFrame, ctx: Context) -> pl.DataFrame:
    """record_id, key, email and one check column per expectation."""
    key, email = _KEYS[suite.name]
    return frame.select(
        pl.col(suite.record_id).cast(pl.String).alias("record_id"), key.alias("key"), email.alias("email"),
        *[x.check(ctx).alias(x.column()) for x in suite.expectations],
    )


def _quarantined(checked: Mapping[str, pl.DataFrame], t: Thresholds) -> pl.DataFrame:
    parts = []
    for suite in SUITES:
        if suite.name not in checked:
            continue
        for x in suite.expectations:
            if severity(suite, x, t) != "blocking":
                continue
            failing = checked[suite.name].filter(pl.col(x.column()).is_not_null())
            op_only = x.holds == "op"  # the op alone (record_id is its op_id), not its person
            parts.append(failing.select(
                suite=pl.lit(suite.name), expectation=pl.lit(x.name), record_id="record_id",
                key=pl.lit(None, pl.String) if op_only else pl.col("key"), email="email",
                op_id=pl.col("record_id") if op_only else pl.lit(None, pl.String)))
    return pl.concat([pl.DataFrame(schema=QUARANTINE_SCHEMA), *[p.cast(QUARANTINE_SCHEMA) for p in parts]])


# ------------------------------------------------------------------------------------------------ GX


class _GxRun:
    """One run's GX project: a fresh file context under `root`, one pandas source, suites added as validated."""

    def __init__(self, root: Path, run_id: str, thresholds: Thresholds):
        import great_expectations as gx

        self.gx, self.run_id, self.thresholds = gx, run_id, thresholds
        shutil.rmtree(root, ignore_errors=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(root.parent))
        self._configure()
        self.source = self.context.data_sources.add_pandas("recon")
        self.run_time = dt.datetime.now(dt.UTC)

    def _configure(self) -> None:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        variables = self.context.variables
        variables.analytics_enabled = False
        variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        variables.save()

    def validate(self, suite: Suite, checked: pl.DataFrame) -> list[ExpectationResult]:
        """Validate one suite's check columns; one result per expectation, in suite order."""
        gx = self.gx
        from great_expectations.core.run_identifier import RunIdentifier

        batch = self.source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe("whole")
        gx_suite = self.context.suites.add(gx.ExpectationSuite(name=suite.name))
        for x in suite.expectations:
            sev = severity(suite, x, self.thresholds)
            gx_suite.add_expectation(gx.expectations.ExpectColumnValuesToBeNull(
                column=x.column(), mostly=mostly(sev, self.thresholds), description=f"{x.name}: {x.meaning}",
                meta={"severity": sev, "meaning": x.meaning}))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=gx_suite))
        frame = escaped(checked.select(x.column() for x in suite.expectations)).to_pandas()  # GX's pages: text
        answer = definition.run(batch_parameters={"dataframe": frame}, result_format=self._result_format(),
                                run_id=RunIdentifier(run_name=self.run_id, run_time=self.run_time))
        by_column = {_column(r): r for r in answer.results}
        return [self._result(suite, x, by_column[x.column()], checked.height) for x in suite.expectations]

    def _result_format(self) -> dict[str, Any]:
        return {"result_format": "SUMMARY", "partial_unexpected_count": self.thresholds.sample_size}

    def _result(self, suite: Suite, x: Any, r: Any, rows: int) -> ExpectationResult:
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise RuntimeError(f"GX failed on {suite.name}.{x.name}: {r.exception_info.get('exception_message')}")
        result = r.result or {}
        samples = tuple(unescaped(v) for v in (result.get("partial_unexpected_list") or []))
        return ExpectationResult(suite.name, x.name, severity(suite, x, self.thresholds), bool(r.success),
                                 int(result.get("unexpected_count") or 0), int(result.get("element_count", rows)),
                                 samples, x.meaning)

    def build_docs(self, directory: Path) -> Path:
        """Build the run's offline Data Docs site into `directory` (made afresh); its index page."""
        shutil.rmtree(directory, ignore_errors=True)
        for name in list(self.context.list_data_docs_sites()):
            self.context.delete_data_docs_site(name)  # GX's default site would rebuild the latest run elsewhere
        self.context.add_data_docs_site(DOCS_SITE, site_config(directory.resolve()))  # type: ignore[arg-type]
        self.context.build_data_docs(site_names=[DOCS_SITE])
        prune_assets(directory)
        return directory / "index.html"


def quick_results(suite: Suite, checked: pl.DataFrame, thresholds: Thresholds) -> list[ExpectationResult]:
    """One suite's results as GX's `expect_column_values_to_be_null` gives them, computed on the same pandas frame:
    `unexpected_count` the values that are not null (pandas' `notna`, GX's own test), `success` when the share of
    null values is at least the expectation's `mostly` (an empty frame succeeds), the first `sample_size` unexpected
    values in row order as samples. For a run that builds no Data Docs (`docs=False`: a one-person sync, many a
    minute between nights), where GX's validation graph costs seconds a run; tests/unit/test_checks.py holds the
    two answers equal."""
    frame = escaped(checked.select(x.column() for x in suite.expectations)).to_pandas()  # GX's very input
    rows, out = len(frame), []
    for x in suite.expectations:
        sev = severity(suite, x, thresholds)
        column = frame[x.column()]
        unexpected = column[column.notna()]
        success = rows == 0 or (rows - len(unexpected)) / rows >= mostly(sev, thresholds)
        samples = tuple(unescaped(v) for v in unexpected.head(thresholds.sample_size).tolist())
        out.append(ExpectationResult(suite.name, x.name, sev, bool(success), len(unexpected), rows, samples,
                                     x.meaning))
    return out


def results_json(report: CheckReport) -> str:
    """The results as JSON text (for the run report)."""
    return json.dumps([{**r.__dict__, "sample_values": list(r.sample_values)} for r in report.results],
                      ensure_ascii=False, sort_keys=True)


def _column(result: Any) -> str:
    """The column a GX validation result is about (every expectation of ours names one)."""
    config = result.expectation_config
    assert config is not None, "a validation result without its expectation"
    return str(config.kwargs["column"])
