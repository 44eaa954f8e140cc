"""`recon plan` (the dry run), `recon mapping` and `recon approve`: show what a run would write, and why."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def run_approve_command(settings: Settings, run_id: str, console: Console, err: Console, *, apply: bool = True,
                        guards: Sequence[str] = (), reject: bool = False, note: str = "",
                        tenant: str | None = None) -> int:
    """Answer a held run: approve every guard it tripped (or only `guards`), or `reject` it, with a `note`.

    - held by a deployment run that waits in the Prefect UI: that flow run is resumed with this answer, and
      applies there (its artifacts and events in the same flow run);
    - held by `recon run`: the answer, the apply and the report run as an `apply-approved` flow run here
      (unless `apply` is False: then it is only recorded, for `recon run --approve` or the next run);
    - a `recon plan` run: the answer is recorded.
    `settings` are the tenant's (`recon approve --tenant NAME`): its store, its run files, its credentials; the
    apply-approved flow run is given `tenant` to read the same ones.
    0 done, 1 and one clear line when the run is unknown, not held, expired or its apply failed.
    """
    from contact_recon.model.approval import Approval, tripped_guards

    approval = Approval("reject" if reject else "approve", tuple(guards) or None, note, "cli")
    try:
        with open_db(db_path(settings.data_dir)) as store:
            store.expire_held()
            run = store.get_run(run_id)
        if run["status"] != "held":
            raise StoreError(f"run {run_id} is {run['status']}, not held: nothing to answer"
                             + (" (it expired unanswered; the next run plans afresh)" if run["status"] == "expired"
                                else ""))
        approval.effective(tripped_guards(run["held_reasons"]))  # unknown guard names: refused here
    except (StoreError, ValueError) as exc:
        _error(err, str(exc))
        return EXIT_FAILED
    _show_release(settings, run, approval, console)
    if run["kind"] == "reconcile" and run["flow_run_id"]:
        return _resume_in_prefect(run, approval, console, err)
    if run["kind"] == "reconcile" and apply:
        return _answer_in_flow(settings, run_id, list(run["location_ids"] or []), approval, console, err, tenant)
    return _record(settings, run_id, approval, console, err)


def _show_release(settings: Settings, run: dict[str, Any], approval: Any, console: Console) -> None:
    from contact_recon.model.approval import tripped_guards
    from contact_recon.stages.plan import load_plan, ops_to_apply

    verb = "rejecting" if approval.decision == "reject" else "approving"
    for reason in run["held_reasons"]:
        chosen = approval.guards is None or reason.split(":", 1)[0] in approval.guards
        console.print(f"  {verb if chosen else 'still held'}: {reason}", highlight=False, soft_wrap=True)
    if approval.decision == "reject":
        return
    try:
        marked = load_plan(settings.data_dir, run["run_id"])
    except OSError:
        console.print("  (its plan file is gone: no op counts to show)", highlight=False)
        return
    kinds = approval.released_kinds(tripped_guards(run["held_reasons"]))
    approved = ops_to_apply(marked, approved=True, kinds=kinds)
    console.print(plan_counts_table(approved, title=f"Ops this approval lets {run['run_id']} write"))
    console.print(f"released by this approval: {approved.height - ops_to_apply(marked, approved=False).height:,} "
                  f"ops held by the guards; not written: {marked.height - approved.height:,}", highlight=False)


def _resume_in_prefect(run: dict[str, Any], approval: Any, console: Console, err: Console) -> int:
    """Resume the suspended deployment run that waits for this answer (its form's input)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    from contact_recon.flows.approval import answer_input

    flow_run_id = UUID(run["flow_run_id"])
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        if state is None or not state.is_paused():
            raise RuntimeError(f"its Prefect flow run {flow_run_id} is {state.name if state else 'unknown'}, "
                               "not waiting for an answer")
        answer = answer_input(approval)
        resume_flow_run(flow_run_id, run_input={**answer, "note": f"{answer['note']} (recon approve)".strip()})
    except Exception as exc:  # noqa: BLE001 - one clear line (the Prefect API unreachable, the pause expired)
        _error(err, f"could not resume run {run['run_id']}: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    console.print(f"run {run['run_id']}: answered ({approval.decision}); its Prefect flow run {flow_run_id} is "
                  "resumed and applies on the worker", highlight=False, soft_wrap=True)
    return EXIT_PLANNED


def _answer_in_flow(settings: Settings, run_id: str, locations: list[str], approval: Any, console: Console,
                    err: Console, tenant: str | None = None) -> int:
    """The answer, the apply and the report as an `apply-approved` flow run in this process."""
    from contact_recon.flows.reconcile import apply_approved_flow

    try:
        guards = list(approval.guards) if approval.guards is not None else None
        state = apply_approved_flow(run_id, locations, guards=guards, reject=approval.decision == "reject",
                                    note=approval.note, tenant=tenant, return_state=True)
    except Exception as exc:  # noqa: BLE001 - one clear line; the journal and the run row keep the details
        _error(err, f"apply failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    if state.is_completed():
        summary: dict[str, Any] = state.result()  # type: ignore[assignment]  # a completed run's summary
        console.print(f"run {run_id}: applied, status [bold]{summary['status']}[/]", highlight=False)
        console.print(f"report: {summary.get('report')}", highlight=False, soft_wrap=True)
        return EXIT_PLANNED if summary["status"] == "completed" else EXIT_FAILED
    if state.is_cancelled():
        console.print(f"run {run_id}: [bold]{(state.name or 'cancelled').lower()}[/]: {state.message}", highlight=False,
                      soft_wrap=True)
        return EXIT_PLANNED if state.name == "Rejected" else EXIT_FAILED
    _error(err, f"run {run_id}: {state.name}: {state.message}")
    return EXIT_FAILED


def _record(settings: Settings, run_id: str, approval: Any, console: Console, err: Console) -> int:
    try:
        with open_db(db_path(settings.data_dir)) as store:
            run = store.approve_run(run_id, approval)
    except StoreError as exc:
        _error(err, str(exc))
        return EXIT_FAILED
    console.print(f"run {run_id}: [bold]{run['status']}[/] (was held)", highlight=False)
    return EXIT_PLANNED
