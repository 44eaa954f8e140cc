"""The nightly (and on-demand) reconciliation as a Prefect flow: snapshot -> merge -> checks -> apply -> report.

`reconcile_flow` takes the locations it covers (default: every configured one) and:

1. holds every location it covers exclusively (`location_lock`: a file lock per location, plus a Prefect global
   concurrency limit `recon-run:<location>` when several machines share the work), so a second run of the same
   location waits up to `lock_wait_s` and then exits with a clear message; it never writes concurrently (the
   DuckDB file lock is another line of defence);
2. `recover` (task): resolves what an interrupted run left unfinished (tasks/apply.py);
3. `plan` (task, retried: it only reads): snapshots every location side by side (each with its own rate
   budget) and TinyEmail, matches identities, merges, checks and quarantines (tasks/pipeline.py);
4. `apply` (task, never retried by Prefect: the journal makes re-sending safe, a blind retry would not be):
   unless a dry run or held, writes the allowed ops; GHL ops of each location go through that location's
   client and budget (tasks/reconcile.py);
5. `report` (task): `summary.json` and `report.html` under `runs/<run_id>/`, Prefect artifacts, and the
   events `recon.run.held` / `recon.run.failed_ops` that the alert automation listens to.

The flow returns the summary dict. `recon run` calls the same flow in-process.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from contact_recon.settings import Settings, get_settings
from tasks.db import Store, db_path, open_db
from tasks.reconcile import GHLFactory, RunOutcome, TinyEmailFactory, apply_run, recover_interrupted

ENTITIES = ("contacts", "tags", "tasks", "notes")
LOCK_PREFIX = "recon-run:"


class LocationBusy(Exception):  # noqa: N818 - the name is the contract
    """Another run holds one of this run's locations."""


@contextlib.contextmanager
def location_lock(settings: Settings, locations: Sequence[str], wait_s: float) -> Iterator[None]:
    """Hold every location of the run exclusively, or raise LocationBusy after `wait_s`.

    Always: an OS file lock per location under `<data_dir>/locks/` (flock), which the kernel releases the
    moment the process dies, so a killed run never blocks the next one. With `use_global_limits` (several
    machines): also one slot of the Prefect global concurrency limit `recon-run:<location>` (limit 1); a
    killed run's slot is freed when its lease (60 s, renewed while alive) runs out.
    """
    names = sorted(set(locations))
    deadline = time.monotonic() + wait_s
    with contextlib.ExitStack() as held:
        for name in names:
            held.enter_context(_file_lock(Path(settings.data_dir) / "locks" / f"{_safe(name)}.lock", deadline, names))
        if settings.use_global_limits:
            held.enter_context(_global_lock(names, max(deadline - time.monotonic(), 1.0)))
        yield


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float, names: list[str]) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LocationBusy(_busy(names)) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _global_lock(names: list[str], wait_s: float) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    limits = [LOCK_PREFIX + name for name in names]
    with get_client(sync_client=True) as client:
        for limit in limits:
            client.upsert_global_concurrency_limit_by_name(limit, 1)
    try:
        with concurrency(limits, occupy=1, timeout_seconds=wait_s, strict=True, lease_duration=60):
            yield
    except TimeoutError as exc:
        raise LocationBusy(_busy(names)) from exc


def _busy(names: list[str]) -> str:
    return (f"another run is reconciling {', '.join(names)}; try again when it has finished (`recon runs`), or "
            "raise lock_wait_s")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


@task(name="recover", cache_policy=NO_CACHE)
def recover_task(store: Store, locations: list[str], ghl_client: GHLFactory) -> dict[str, int]:
    return recover_interrupted(store, locations, ghl_client)


@task(name="snapshot-merge-check", retries=1, retry_delay_seconds=30, cache_policy=NO_CACHE)
def plan_task(settings: Settings, store: Store, locations: list[str], approve: bool, full_sweep: bool,
              ghl_client: GHLFactory | None, tinyemail_client: TinyEmailFactory | None, docs: bool) -> Any:
    from tasks.pipeline import plan_run

    return plan_run(settings, store, locations=locations, approve=approve, full_sweep=full_sweep, docs=docs,
                    ghl_client=ghl_client, tinyemail_client=tinyemail_client, kind="reconcile")


@task(name="apply", cache_policy=NO_CACHE)
def apply_task(settings: Settings, store: Store, run_id: str, ghl_client: GHLFactory | None,
               tinyemail_client: TinyEmailFactory | None) -> RunOutcome:
    return apply_run(settings, store, run_id, ghl_client=ghl_client, tinyemail_client=tinyemail_client)


@task(name="report", retries=1, cache_policy=NO_CACHE)
def report_task(settings: Settings, store: Store, run_id: str, dry_run: bool,
                requests: dict[str, dict[str, int]]) -> dict[str, Any]:
    from tasks.report import build_summary, load_conflicts, problem_ops, publish_artifacts, run_ops, write_run_files

    run = store.get_run(run_id)
    guards = [{"name": reason.split(":")[0], "reason": reason} for reason in run["held_reasons"]]
    summary = build_summary(store, settings.data_dir, run_id, dry_run=dry_run, requests=requests, guards=guards)
    files = write_run_files(store, settings.data_dir, run_id, summary)
    summary = {**summary, "report": str(files.report)}
    publish_artifacts(summary, files, conflicts=load_conflicts(settings.data_dir, run_id),
                      problems=problem_ops(run_ops(store, settings.data_dir, run_id)))
    emit_alert_events(summary)
    return summary


def emit_alert_events(summary: dict[str, Any]) -> None:
    """`recon.run.held` for a held run, `recon.run.failed_ops` when failed ops pass the alert share
    (flows/events.py; flows/alerts.py turns them into notifications)."""
    from flows.events import RUN_FAILED_OPS, RUN_HELD, emit_run_alert, failed_ops_exceeded

    run_id, status, report = summary["run_id"], summary["status"], summary.get("report")
    if status == "held":
        reasons = [g.get("reason") or g.get("name") or "" for g in summary.get("guards", [])]
        emit_run_alert(RUN_HELD, run_id, status, reasons=reasons, report=report)
    planned = sum(sum(kinds.values()) for system, kinds in summary.get("counts", {}).items()
                  if system != "applied" and isinstance(kinds, dict))
    failed = int(summary.get("failed") or 0)
    if failed_ops_exceeded(failed, planned):
        emit_run_alert(RUN_FAILED_OPS, run_id, status, failed_ops=failed, total_ops=planned, report=report)


@flow(name="reconcile", log_prints=True)
def reconcile_flow(
    locations: list[str] | None = Field(default=None, description="GHL location ids to reconcile; empty: every "
                                        "configured location (RECON_GHL_LOCATION_IDS)."),
    dry_run: bool = Field(default=False, description="Plan and report only: nothing is written to either system."),
    approve: bool = Field(default=False, description="Approve up front any guard the plan trips (mass changes)."),
    entities: list[str] = Field(default=list(ENTITIES), description="What to reconcile: contacts, tags, tasks, "
                                "notes (contacts are always read: they carry the identity)."),
    full_sweep: bool = Field(default=False, description="Read every contact's notes and tasks, not only the "
                             "changed ones and tonight's rolling sweep."),
    lock_wait_s: float = Field(default=60.0, description="How long to wait for another run of the same "
                               "locations before giving up."),
) -> dict[str, Any]:
    """Reconcile GHL and TinyEmail: snapshot -> merge -> checks -> apply -> report."""
    return run_reconcile(get_settings(), locations=locations, dry_run=dry_run, approve=approve, entities=entities,
                         full_sweep=full_sweep, lock_wait_s=lock_wait_s)


def run_reconcile(settings: Settings, *, locations: Sequence[str] | None = None, dry_run: bool = False,
                  approve: bool = False, entities: Sequence[str] = ENTITIES, full_sweep: bool = False,
                  lock_wait_s: float = 60.0, ghl_client: GHLFactory | None = None,
                  tinyemail_client: TinyEmailFactory | None = None, docs: bool = True) -> dict[str, Any]:
    """The flow's body (tests call it inside their own flow with sandbox clients)."""
    logger = get_run_logger()
    covered = list(locations or settings.ghl_location_ids)
    if not covered:
        raise ValueError("no GHL location: pass locations or set RECON_GHL_LOCATION_IDS")
    unknown = sorted(set(entities) - set(ENTITIES))
    if unknown:
        raise ValueError(f"unknown entities {unknown}; known: {list(ENTITIES)}")
    if "contacts" not in entities:
        logger.info("contacts are always reconciled: they carry the identity of everything else")
    with location_lock(settings, covered, lock_wait_s), open_db(db_path(settings.data_dir)) as store:
        ghl = ghl_client or _default_ghl(settings)
        recovered = recover_task(store, covered, ghl) if not dry_run else {}
        if recovered:
            logger.info("recovered after an interrupted run: %s", recovered)
        planned = plan_task(settings, store, covered, approve, full_sweep, ghl_client, tinyemail_client, docs)
        logger.info("run %s planned: %s ops, %s conflicts, status %s", planned.run_id, planned.plan.height,
                    planned.conflicts.height, planned.status)
        requests: dict[str, dict[str, int]] = {}
        if not dry_run and planned.status != "held":
            outcome = apply_task(settings, store, planned.run_id, ghl_client, tinyemail_client)
            requests = outcome.requests
            logger.info("run %s applied: %s", planned.run_id, outcome.journal)
        summary = report_task(settings, store, planned.run_id, dry_run, requests)
    logger.info("run %s %s; report %s", summary["run_id"], summary["status"], summary.get("report"))
    return summary


def _default_ghl(settings: Settings) -> GHLFactory:
    from connectors.ghl import GHLClient

    return lambda location: GHLClient.from_settings(settings, location)
