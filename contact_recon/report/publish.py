"""The report step of a run: summary, files, Prefect artifacts and the alert events, in that order.

`report_run` is what every run ends with (`contact_recon.stages.run.reconcile`, through the Prefect task
`report` in a flow run): `build_summary` -> `write_run_files` -> `publish_artifacts` (only inside a Prefect
flow or task run: outside one there is no UI to publish to) -> `emit_alert_events`.
"""

from __future__ import annotations

import re
from typing import Any

from contact_recon.events import RUN_FAILED_OPS, RUN_HELD, emit_run_alert, failed_ops_exceeded
from contact_recon.report.applied import applied_changes, list_names_of, run_context
from contact_recon.report.build import (
    build_summary,
    drift_history,
    load_conflicts,
    open_identity_reviews,
    problem_ops,
    publish_artifacts,
    report_url,
    run_ops,
    write_run_files,
)
from contact_recon.settings import Settings
from contact_recon.store.db import Store
from contact_recon.store.reviews import Reviews, load_quarantine_file


def report_run(settings: Settings, store: Store, run_id: str, dry_run: bool,
               requests: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Write the run's summary.json and report.html, publish its artifacts, emit its alert events."""
    run = store.get_run(run_id)
    guards = [{"name": reason.split(":")[0], "reason": reason} for reason in run["held_reasons"]]
    summary = build_summary(store, settings.data_dir, run_id, dry_run=dry_run, requests=requests, guards=guards,
                            flow_run_id=_flow_run_id())
    files = write_run_files(store, settings.data_dir, run_id, summary)
    summary = {**summary, "report": str(files.report)}
    if _in_prefect_run():
        link = report_url(settings.report_base_url, run_id)
        ops, names = run_ops(store, settings.data_dir, run_id), list_names_of(store)
        publish_artifacts(summary, files, conflicts=load_conflicts(settings.data_dir, run_id),
                          problems=problem_ops(ops), list_names=names,
                          applied=applied_changes(ops, run_context(settings.data_dir, run_id), names),
                          key_prefix=artifact_prefix(dry_run), link=link,
                          history=drift_history(store, settings.data_dir, run_id),
                          checks=store.load_check_results(run_id),
                          quarantine=load_quarantine_file(settings.data_dir, run_id, Reviews(store).dismissed()),
                          identity=open_identity_reviews(settings.data_dir, run_id, store))
        emit_alert_events(summary)
    return summary


def _flow_run_id() -> str | None:
    """The Prefect flow run reporting, None outside one."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run is not None else None


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_prefix(dry_run: bool) -> str:
    """The artifact keys' prefix, so the UI keeps each kind of run's history apart: `recon-dry-run` for a dry
    run, `recon-<deployment name>` for a deployment's run (`recon-nightly-reconcile`, `recon-reconcile-on-demand`),
    `recon-local` for a flow run started in-process (`recon run`, `recon approve`)."""
    from prefect.context import FlowRunContext
    from prefect.runtime import deployment

    if dry_run:
        return "recon-dry-run"
    context = FlowRunContext.get()
    name = deployment.name if context is not None and context.flow_run and context.flow_run.deployment_id else None
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") if name else ""
    return f"recon-{slug}" if slug else "recon-local"


def emit_alert_events(summary: dict[str, Any]) -> None:
    """`recon.run.held` for a held run, `recon.run.failed_ops` when failed ops pass the alert share
    (contact_recon/events.py; contact_recon/service/alerts.py turns them into notifications). Both carry the
    flow run's Prefect UI page as `url`: a held run's approval is in that flow run."""
    run_id, status, report = summary["run_id"], summary["status"], summary.get("report")
    if status == "held":
        reasons = [g.get("reason") or g.get("name") or "" for g in summary.get("guards", [])]
        emit_run_alert(RUN_HELD, run_id, status, reasons=reasons, report=report)
    planned = sum(sum(kinds.values()) for system, kinds in summary.get("counts", {}).items()
                  if system != "applied" and isinstance(kinds, dict))
    failed = int(summary.get("failed") or 0)
    if failed_ops_exceeded(failed, planned):
        emit_run_alert(RUN_FAILED_OPS, run_id, status, failed_ops=failed, total_ops=planned, report=report)
