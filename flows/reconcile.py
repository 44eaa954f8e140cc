"""The nightly (and on-demand) reconciliation as a Prefect flow: lock -> recover -> snapshot, merge, checks ->
apply -> report.

`reconcile_flow` is the deployments' entrypoint (`prefect.yaml`). It reads the settings and hands the run to
the one orchestration, `contact_recon.stages.run.reconcile`, with the Prefect tasks of `tasks/reconcile.py`
as its steps (`recover`, `snapshot-merge-check`, `apply`, `report`); the module docstring of
`contact_recon/stages/run.py` has what each step does. It covers the locations it is given (default: every
configured one) and returns the run's summary dict (summary.json). `recon run` calls the same flow in-process.
"""

from __future__ import annotations

from typing import Any

from contact_recon.tasks.reconcile import PREFECT_STEPS
from prefect import flow, get_run_logger
from pydantic import Field

from contact_recon.model.records import RUN_ENTITIES
from contact_recon.settings import get_settings
from contact_recon.stages.process import prepare_process
from contact_recon.stages.run import reconcile

prepare_process()  # a worker's flow-run process starts here: secrets masked in every log, owner-only files


@flow(name="reconcile", log_prints=True)
def reconcile_flow(
    locations: list[str] | None = Field(default=None, description="GHL location ids to reconcile; empty: every "
                                        "configured location (RECON_GHL_LOCATION_IDS)."),
    dry_run: bool = Field(default=False, description="Plan and report only: nothing is written to either system."),
    approve: bool = Field(default=False, description="Approve up front any guard the plan trips (mass changes)."),
    entities: list[str] = Field(default=list(RUN_ENTITIES), description="What to reconcile: contacts, tags, tasks, "
                                "notes (contacts are always read: they carry the identity)."),
    full_sweep: bool = Field(default=False, description="Read every contact's notes and tasks, not only the "
                             "changed ones and tonight's rolling sweep."),
    lock_wait_s: float = Field(default=60.0, description="How long to wait for another run of the same "
                               "locations before giving up."),
) -> dict[str, Any]:
    """Reconcile GHL and TinyEmail: snapshot -> merge -> checks -> apply -> report."""
    check_entities(entities)
    outcome = reconcile(get_settings(), locations=locations, dry_run=dry_run, approve=approve,
                        full_sweep=full_sweep, lock_wait_s=lock_wait_s, steps=PREFECT_STEPS)
    assert outcome.summary is not None  # the flow always reports
    return outcome.summary


def check_entities(entities: list[str]) -> None:
    """Refuse an unknown entity name (the form's values). Contacts are always read: they carry the identity."""
    unknown = sorted(set(entities) - set(RUN_ENTITIES))
    if unknown:
        raise ValueError(f"unknown entities {unknown}; known: {list(RUN_ENTITIES)}")
    if "contacts" not in entities:
        get_run_logger().info("contacts are always reconciled: they carry the identity of everything else")
