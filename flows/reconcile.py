"""The nightly (and on-demand) reconciliation as a Prefect flow: lock -> recover -> snapshot, merge, checks ->
apply -> report; and a held run's answer.

`reconcile_flow` is the deployments' entrypoint (`prefect.yaml`). It reads the settings and hands the run to
the one orchestration, `contact_recon.stages.run.reconcile`, with the Prefect tasks of `tasks/reconcile.py`
as its steps (`recover`, `snapshot-merge-check`, `apply`, `report`); the module docstring of
`contact_recon/stages/run.py` has what each step does. It covers the locations it is given (default: every
configured one) and returns the run's summary dict (summary.json). `recon run` calls the same flow in-process.

How a flow run ends:
- completed (applied, or a dry run): state Completed, the summary as its result;
- held by a guard, in a deployment run: the flow run suspends itself with the approval form (flows/approval.py)
  and shows Suspended until someone answers in the UI (or `recon approve RUN_ID`). Resumed, its second attempt
  applies that same plan (Completed) or, rejected, writes nothing (Cancelled, named `Rejected`); unanswered, it
  expires before the next nightly (that run closes it as Cancelled, named `Expired`);
- held, outside a deployment (`recon run`): a Completed state named `Held` (it cannot wait: the CLI exits 3).

`apply_approved_flow` is what `recon approve RUN_ID` runs for a held run with no suspended flow run: the answer,
the apply and the report in a flow run of their own, with its artifacts and events.

A deployment run holds its tenant's one slot (`tenant_slot`, the global concurrency limit `recon-tenant:<tenant>`)
for its whole run: the nightly's per-tenant children run side by side on the work pool, and a second run of one
tenant waits up to `lock_wait_s` for the first, then fails busy (`LocationBusy`), as for a busy location. With
RECON_TENANTS_FILE and no `tenant`, a deployment run only fans out (`fan_out`) and returns.

While a flow runs, the project's loggers go to its Prefect logs and a progress artifact follows the snapshot
and the apply (flows/ui.py).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from contact_recon.flows.approval import (
    APPROVAL_KEY,
    HELD_KEY,
    approval_form,
    approval_window_s,
    form_description,
    to_approval,
)
from contact_recon.flows.ui import forwarded_logs, progress_artifact
from contact_recon.tasks.reconcile import PREFECT_STEPS
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.flow_runs import suspend_flow_run
from prefect.input.actions import create_flow_run_input, read_flow_run_input
from prefect.states import Cancelled, Completed, State
from pydantic import Field

from contact_recon.model.approval import Approval
from contact_recon.report.build import report_url
from contact_recon.settings import Settings
from contact_recon.stages.lock import tenant_slot
from contact_recon.stages.plan import HELD, load_plan
from contact_recon.stages.process import prepare_process
from contact_recon.stages.run import (
    REJECTED,
    NotApplicable,
    RunOutcome,
    answer_held,
    reconcile,
)
from contact_recon.store.db import Store
from contact_recon.tenants import get_tenant_settings

prepare_process()  # a worker's flow-run process starts here: secrets masked in every log, owner-only files


@flow(name="reconcile", log_prints=True)
def reconcile_flow(
    locations: list[str] | None = Field(default=None, description="GHL location ids to reconcile; empty: every "
                                        "configured location (RECON_GHL_LOCATION_IDS)."),
    dry_run: bool = Field(default=False, description="Plan and report only: nothing is written to either system."),
    approve: bool = Field(default=False, description="Approve up front any guard the plan trips (mass changes)."),
    full_sweep: bool = Field(default=False, description="Read every contact's notes and tasks, not only the "
                             "changed ones and tonight's rolling sweep."),
    lock_wait_s: float = Field(default=60.0, description="How long to wait for another run of the same "
                               "locations before giving up."),
    tenant: str | None = Field(default=None, description="The tenant of RECON_TENANTS_FILE to reconcile (its own "
                               "settings, data dir and budgets); empty: the RECON_* settings."),
) -> dict[str, Any] | State[Any]:
    """Reconcile GHL and TinyEmail: snapshot -> merge -> checks -> apply -> report (held: wait for approval)."""
    settings, flow_run = get_tenant_settings(tenant), _flow_run()
    if tenant is None and settings.tenants_file is not None and flow_run.deployment_id is not None:
        # the nightly of many tenants: one flow run of this deployment per tenant, each with its own settings
        return fan_out(settings, str(flow_run.deployment_id), {"locations": locations, "dry_run": dry_run,
                                                               "approve": approve, "full_sweep": full_sweep,
                                                               "lock_wait_s": lock_wait_s})
    # a deployment run holds its tenant's one slot: tenants side by side on the pool, one tenant's runs one at a
    # time (a later one waits up to lock_wait_s, then stops busy)
    one_at_a_time = tenant_slot(tenant, lock_wait_s) if flow_run.deployment_id is not None \
        else contextlib.nullcontext()
    with one_at_a_time, forwarded_logs(flow_run.id), progress_artifact("reconcile"):
        held = _held_input()
        if held is not None:  # this flow run held a plan and suspended; resumed, the answer is waiting
            return _answered(settings, held, lock_wait_s)
        waiting = flow_run.deployment_id is not None  # `recon run`: nobody can resume an in-process run
        outcome = reconcile(settings, locations=locations, dry_run=dry_run, approve=approve,
                            full_sweep=full_sweep, lock_wait_s=lock_wait_s, steps=PREFECT_STEPS,
                            on_held=(lambda store, run_id: _record_wait(settings, store, run_id, flow_run))
                            if waiting else None)
        _close_expired(outcome)
        assert outcome.summary is not None  # the flow always reports
        if outcome.status != HELD:
            return outcome.summary
        if not waiting:
            return Completed(name="Held", message=_held_message(outcome.summary), data=outcome.summary)
        _suspend_for_answer(_held_input() or {})
        return outcome.summary  # not reached in a deployment run: the suspension ends this attempt


@flow(name="apply-approved", log_prints=True)
def apply_approved_flow(run_id: str, locations: list[str], guards: list[str] | None = None, reject: bool = False,
                        note: str = "", lock_wait_s: float = 60.0,
                        tenant: str | None = None) -> dict[str, Any] | State[Any]:
    """Answer a held run of `locations` (approve all or the chosen `guards`, or `reject`), then apply it and
    report; `tenant`: the run is that tenant's (its settings and data dir), else the RECON_* settings'."""
    settings, flow_run = get_tenant_settings(tenant), _flow_run()
    approval = Approval("reject" if reject else "approve", None if guards is None else tuple(guards), note, "cli")
    with forwarded_logs(flow_run.id), progress_artifact("apply-approved"):
        return _apply_answer(settings, run_id, approval, locations, lock_wait_s)


def fan_out(settings: Settings, deployment_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """One flow run of the deployment per tenant of RECON_TENANTS_FILE (on the work pool, each under its own data
    dir and budgets); they run side by side, each holding its tenant's slot (stages/lock.py `tenant_slot`), so a
    tenant's run still waiting from the night before delays only that tenant. The flow run id of each tenant."""
    from prefect.deployments import run_deployment

    from contact_recon.tenants import tenants_of

    started = {}
    for name in tenants_of(settings):
        child = run_deployment(name=deployment_id, parameters={**parameters, "tenant": name}, timeout=0,
                               as_subflow=False, tags=[f"tenant:{name}"])
        started[name] = str(child.id)  # type: ignore[union-attr]
    logging.getLogger("contact_recon.flows.reconcile").info("one reconcile flow run per tenant: %s", started)
    return {"status": "fanned-out", "tenants": started}


def run_in_process(**parameters: Any) -> dict[str, Any]:
    """`reconcile_flow` in this process (`recon run`, the demo): its summary (a held run's too: outside a
    deployment the flow never suspends)."""
    summary = reconcile_flow(**parameters)
    if not isinstance(summary, dict):
        raise RuntimeError(f"the reconcile flow ended {summary!r} instead of returning its summary")
    return summary


def _flow_run() -> Any:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "called outside a flow run"
    return context.flow_run


def _record_wait(settings: Settings, store: Store, run_id: str, flow_run: Any) -> None:
    """Inside the run's lock: the held run waits in this flow run until its window ends (the store), and what
    the second attempt needs (the run, its guards and locations, the form's description) is kept with the flow
    run itself (a flow run input under HELD_KEY), so that attempt reads nothing of the store before its lock."""
    window = approval_window_s(settings, flow_run.flow_id)
    expires = datetime.now(UTC) + timedelta(seconds=window)
    store.hold_for_approval(run_id, str(flow_run.id), expires)
    run = store.get_run(run_id)
    description = form_description(run, load_plan(settings.data_dir, run_id), expires,
                                   report_url(settings.report_base_url, run_id))
    create_flow_run_input(HELD_KEY, {"run_id": run_id, "held_reasons": run["held_reasons"],
                                     "locations": list(run["location_ids"] or []), "window_s": window,
                                     "description": description})
    get_run_logger().warning("run %s held: %s; waiting for an answer in the Prefect UI until %s UTC (or "
                             "`recon approve %s`)", run_id, "; ".join(run["held_reasons"]),
                             f"{expires:%Y-%m-%d %H:%M}", run_id)


def _held_input() -> dict[str, Any] | None:
    """The held run this flow run waits for (`_record_wait`), None on a flow run that held nothing."""
    value: Any = read_flow_run_input(HELD_KEY)
    return value if isinstance(value, dict) else None


def _suspend_for_answer(held: dict[str, Any]) -> Any:
    """Suspend with the approval form (the first attempt ends here); on the second attempt the same call
    returns the answer."""
    form = approval_form(held["held_reasons"]).with_initial_data(description=held["description"])
    return suspend_flow_run(wait_for_input=form, timeout=held["window_s"], key=APPROVAL_KEY)


def _answered(settings: Settings, held: dict[str, Any], lock_wait_s: float) -> dict[str, Any] | State[Any]:
    """The second attempt of a held flow run: read the form's answer, then apply or reject."""
    answer = _suspend_for_answer(held)
    return _apply_answer(settings, held["run_id"], to_approval(answer), held["locations"], lock_wait_s)


def _apply_answer(settings: Settings, run_id: str, approval: Approval, locations: list[str],
                  lock_wait_s: float) -> dict[str, Any] | State[Any]:
    try:
        outcome = answer_held(settings, run_id, approval, locations, lock_wait_s=lock_wait_s, steps=PREFECT_STEPS)
    except NotApplicable as exc:
        return Cancelled(name="Superseded", message=str(exc))
    assert outcome.summary is not None
    if outcome.status == REJECTED:
        answer = f": {approval.note}" if approval.note else ""
        return Cancelled(name="Rejected", message=f"run {run_id} rejected by {approval.by}{answer}; nothing written")
    return outcome.summary


def _close_expired(outcome: RunOutcome) -> None:
    """Held runs this run found expired: their suspended Prefect flow runs end Cancelled, named `Expired`."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    waiting = [run for run in outcome.expired if run.get("flow_run_id")]
    if not waiting:
        return
    with get_client(sync_client=True) as client:
        for run in waiting:
            state: State[Any] = Cancelled(name="Expired", message=f"run {run['run_id']} was not answered in time: "
                                          f"nothing written; run {outcome.run_id} planned afresh")
            client.set_flow_run_state(UUID(run["flow_run_id"]), state, force=True)


def _held_message(summary: dict[str, Any]) -> str:
    reasons = "; ".join(g.get("reason") or g.get("name") or "" for g in summary.get("guards", []))
    return f"run {summary['run_id']} held: {reasons}. Approve with `recon approve {summary['run_id']}`."
