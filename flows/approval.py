"""A held run's approval, in the Prefect UI: the form its flow run suspends with, and reading the answer back.

A deployment run whose plan trips a guard (flows/reconcile.py) records that it waits (in the store, and as a
flow run input under HELD_KEY: the run id, its guards and locations, the form's description) and suspends
itself with `suspend_flow_run(wait_for_input=<form>, key=APPROVAL_KEY, timeout=<window>)`: its state is
Suspended (not Completed) and the Prefect UI shows a Resume button with the form:

- the description: the guards that tripped with their figures, how many ops each holds, when it expires;
- `decision`: "approve all guards", "approve chosen guards" (the `guards` picked; the ops of the others stay
  unwritten) or "reject" (nothing is written);
- `note`: why, kept with the run and shown in the report.

Resuming reschedules the flow run: its second attempt finds the held run (the HELD_KEY input), calls
`suspend_flow_run` again with the same key, which now returns the answer instead of suspending, and applies
(contact_recon/stages/run.py `answer_held`). `recon approve RUN_ID` resumes it with the same form's input
(`answer_input`). The window ends before the flow's next scheduled run (`approval_window_s`); a suspended run
resumed after it fails in Prefect without running, and the next run marks the held run expired.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import polars as pl
from prefect.input import RunInput
from pydantic import Field, create_model

from contact_recon.model.approval import Approval, tripped_guards
from contact_recon.model.policy import GUARD_KINDS
from contact_recon.settings import Settings

APPROVAL_KEY = "approval"
HELD_KEY = "recon-held-run"  # a flow run input: the held run this flow run waits for (run id, guards, locations)
APPROVE_ALL, APPROVE_CHOSEN, REJECT = "approve all guards", "approve chosen guards", "reject"
NEXT_RUN_MARGIN = timedelta(minutes=10)  # a held plan expires this long before the next scheduled run


def approval_form(held_reasons: list[str]) -> type[RunInput]:
    """The form of a run that tripped these guards (the same form on every attempt: it parses the answer)."""
    names = tripped_guards(held_reasons) or ("none",)
    guard: Any = Literal[names]
    decision: Any = Literal[APPROVE_ALL, APPROVE_CHOSEN, REJECT]
    form: type[RunInput] = create_model(
        "ApproveHeldRun", __base__=RunInput,
        decision=(decision, Field(APPROVE_ALL, description="Approve every guard, only the chosen ones, or reject "
                                  "the run.")),
        guards=(list[guard], Field(default_factory=list, description="With 'approve chosen guards': the guards "
                                   "to approve. The ops the others hold are not written.")),
        note=(str, Field("", description="Why: kept with the run, shown in its report.")),
    )
    return form


def form_description(run: dict[str, Any], plan: pl.DataFrame | None, expires_at: datetime | None,
                     report_url: str | None) -> str:
    """The markdown the form opens with: the run, each tripped guard and what it holds, the window."""
    lines = [f"**Run `{run['run_id']}` is held** (locations {', '.join(run['location_ids'] or []) or '-'}).", "",
             "Guards tripped:"]
    for reason in run["held_reasons"]:
        name = reason.split(":", 1)[0]
        held = _held_ops(plan, name)
        lines.append(f"- {reason}" + (f" ({held:,} ops held)" if held is not None else ""))
    lines += ["", "Approving applies this plan; each write is still checked against the live record first. "
              "Rejecting writes nothing."]
    if expires_at is not None:
        lines.append(f"Unanswered, it expires at {expires_at:%Y-%m-%d %H:%M} UTC and the next run plans afresh.")
    if report_url:
        lines.append(f"[The run's report]({report_url})")
    return "\n".join(lines)


def _held_ops(plan: pl.DataFrame | None, guard: str) -> int | None:
    if plan is None or guard not in GUARD_KINDS:
        return None
    held = plan.filter((pl.col("quarantined_by") == "plan.within_guards") & pl.col("kind").is_in(GUARD_KINDS[guard]))
    return held.height


def to_approval(answer: Any) -> Approval:
    """The form's answer as the store's `Approval`."""
    if answer.decision == REJECT:
        return Approval("reject", None, answer.note, "prefect-ui")
    guards = None if answer.decision == APPROVE_ALL else tuple(answer.guards)
    return Approval("approve", guards, answer.note, "prefect-ui")


def answer_input(approval: Approval) -> dict[str, Any]:
    """`recon approve`'s answer as the form's input (for `resume_flow_run(run_input=...)`)."""
    if approval.decision == "reject":
        decision = REJECT
    else:
        decision = APPROVE_ALL if approval.guards is None else APPROVE_CHOSEN
    return {"decision": decision, "guards": list(approval.guards or ()), "note": approval.note}


def approval_window_s(settings: Settings, flow_id: Any, now: datetime | None = None) -> int:
    """Seconds a held run waits: `approval_window_hours`, ending at the latest NEXT_RUN_MARGIN before the next
    scheduled run of the same flow (the next nightly plans afresh). At least one second."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    now = now or datetime.now(UTC)
    window = timedelta(hours=settings.approval_window_hours)
    scheduled = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
    after: Any = now
    with get_client(sync_client=True) as client:
        upcoming = client.read_flow_runs(
            flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])),
            flow_run_filter=FlowRunFilter(state=scheduled,
                                          expected_start_time=FlowRunFilterExpectedStartTime(after_=after)),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
    if upcoming and upcoming[0].expected_start_time is not None:
        window = min(window, upcoming[0].expected_start_time - NEXT_RUN_MARGIN - now)
    return max(1, int(window.total_seconds()))
