"""`recon plan` (the dry run), `recon mapping` and `recon approve`: show what a run would write, and why."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
from rich.console import Console

from contact_recon.cli.policy import describe, loaded_policy
from contact_recon.cli.views import mapping_table, plan_counts_table
from contact_recon.settings import Settings
from contact_recon.store.db import StoreError, db_path, open_db
from contact_recon.systems.redaction import redact

EXIT_PLANNED, EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 0, 1, 2, 3


def _error(err: Console, message: str) -> None:
    err.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True)


def run_plan_command(settings: Settings, locations: Sequence[str], approve: bool, full_sweep: bool,
                     reuse_snapshot: bool, console: Console, err: Console) -> int:
    """Plan a run; 0 planned, 3 held (with the reasons), 1 and one clear line when it failed."""
    from contact_recon.stages.plan import plan_run

    locations = list(locations) or list(settings.ghl_location_ids)
    if not locations:
        _error(err, "no GHL location: pass --location or set RECON_GHL_LOCATION_IDS")
        return EXIT_USAGE
    policy = loaded_policy(settings, err)
    if policy is None:
        return EXIT_USAGE
    try:
        with open_db(db_path(settings.data_dir)) as store:
            result = plan_run(settings, store, locations=locations, approve=approve, policy=policy,
                              full_sweep=full_sweep, reuse_snapshot=reuse_snapshot)
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback; the run row keeps the error
        _error(err, f"plan failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    console.print(f"run {result.run_id}: [bold]{result.status}[/]", highlight=False)
    for reason in result.held_reasons:
        label = "approved" if result.approved else "held"
        console.print(f"  {label}: {reason}", highlight=False, soft_wrap=True)
    if result.status == "held":
        console.print(f"  nothing will be applied until `recon approve {result.run_id}`", highlight=False)
    console.print(plan_counts_table(result.plan, title="Plan (dry run: nothing written)"))
    console.print(f"conflicts: {result.conflicts.height:,} ({result.conflicts_path})", highlight=False,
                  soft_wrap=True)
    console.print(f"quarantined: {result.quarantined.height:,} ops{_by_expectation(result.quarantined)}",
                  highlight=False, soft_wrap=True)
    console.print(f"plan: {result.plan_path}", highlight=False, soft_wrap=True)
    console.print(describe(policy), highlight=False, soft_wrap=True)
    return EXIT_HELD if result.status == "held" else EXIT_PLANNED


def _by_expectation(quarantined: pl.DataFrame) -> str:
    if quarantined.height == 0:
        return ""
    counts = (quarantined.select(pl.col("quarantined_by").str.split(",")).explode("quarantined_by")
              .group_by("quarantined_by").len().sort("quarantined_by").iter_rows())
    return " (" + ", ".join(f"{name} {n:,}" for name, n in counts) + ")"


def run_mapping_command(settings: Settings, policy_file: Path | None, console: Console, err: Console) -> int:
    """Print the active field map and rules (of `policy_file`, else the policy a run would use) and the policy's
    version and source; 2 and one clear line when the policy cannot be had."""
    policy = loaded_policy(settings, err, policy_file)
    if policy is None:
        return EXIT_USAGE
    console.print(mapping_table(policy.policy))
    console.print(describe(policy), highlight=False, soft_wrap=True)
    return EXIT_PLANNED


def run_approve_command(settings: Settings, run_id: str, console: Console, err: Console, *,
                        apply: bool = True) -> int:
    """Approve a held run and show what that approves; a held `reconcile` run is then applied (unless
    `apply` is False): 0 completed, 1 failed. 1 and one clear line when it is unknown or not held."""
    code = _approve(settings, run_id, console, err)
    if code != EXIT_PLANNED or not apply:
        return code
    with open_db(db_path(settings.data_dir)) as store:
        kind = store.get_run(run_id)["kind"]
    return _apply_approved(settings, run_id, console, err) if kind == "reconcile" else code


def _apply_approved(settings: Settings, run_id: str, console: Console, err: Console) -> int:
    """Apply an approved reconcile run now (fresh preconditions protect edits made since its snapshot)."""
    from contact_recon.report.build import build_summary, write_run_files
    from contact_recon.stages.lock import LocationBusy, location_lock
    from contact_recon.stages.run import apply_run

    try:
        with open_db(db_path(settings.data_dir)) as store:
            locations = list(store.get_run(run_id)["location_ids"] or [])
        with location_lock(settings, locations, 60.0), open_db(db_path(settings.data_dir)) as store:
            outcome = apply_run(settings, store, run_id)
            summary = build_summary(store, settings.data_dir, run_id, dry_run=False, requests=outcome.requests,
                                    guards=[])
            files = write_run_files(store, settings.data_dir, run_id, summary)
    except (LocationBusy, StoreError) as exc:
        _error(err, str(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - one clear line; the journal and the run row keep the details
        _error(err, f"apply failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    console.print(f"run {run_id}: applied, status [bold]{outcome.status}[/] ({outcome.journal})", highlight=False)
    console.print(f"report: {files.report}", highlight=False, soft_wrap=True)
    return EXIT_PLANNED if outcome.status == "completed" else EXIT_FAILED


def _approve(settings: Settings, run_id: str, console: Console, err: Console) -> int:
    from contact_recon.stages.plan import load_plan, ops_to_apply

    try:
        with open_db(db_path(settings.data_dir)) as store:
            run = store.approve_run(run_id)
    except StoreError as exc:
        _error(err, str(exc))
        return EXIT_FAILED
    console.print(f"run {run_id}: [bold]approved[/] (was held)", highlight=False)
    for reason in run["held_reasons"]:
        console.print(f"  approved: {reason}", highlight=False, soft_wrap=True)
    try:
        marked = load_plan(settings.data_dir, run_id)
    except OSError:
        console.print("  (its plan file is gone: no op counts to show)", highlight=False)
        return EXIT_PLANNED
    released = ops_to_apply(marked, approved=True).height - ops_to_apply(marked, approved=False).height
    console.print(plan_counts_table(ops_to_apply(marked, approved=True), title=f"Approved ops of {run_id}"))
    console.print(f"released by this approval: {released:,} ops held by the guards; still quarantined "
                  f"(bad records): {marked.height - ops_to_apply(marked, approved=True).height:,}", highlight=False)
    return EXIT_PLANNED
