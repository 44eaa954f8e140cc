"""The reconcile flow's Prefect tasks, each a thin wrapper over one step of `contact_recon.stages.run.reconcile`.

`PREFECT_STEPS` hands them to that one orchestration, so a flow run shows each step as a task run with its
own state, logs and retries:

- `recover` and `apply` are never retried by Prefect: the journal makes re-sending safe, a blind retry
  would not be;
- `snapshot-merge-check` is retried once (it only reads);
- `report` is retried once (it writes files whole or not at all, and artifacts by key).

Caching is off everywhere: each run reads the systems as they are now.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from contact_recon.model.policy import Policy
from contact_recon.report.publish import report_run
from contact_recon.settings import Settings
from contact_recon.stages.plan import PlanRun, plan_run
from contact_recon.stages.run import GHLFactory, RunOutcome, Steps, TinyEmailFactory, apply_run, recover_interrupted
from contact_recon.store.db import Store
from contact_recon.systems.policy_source import LoadedPolicy


@task(name="recover", cache_policy=NO_CACHE)
def recover_task(store: Store, locations: list[str], ghl_client: GHLFactory) -> dict[str, int]:
    return recover_interrupted(store, locations, ghl_client)


@task(name="snapshot-merge-check", retries=1, retry_delay_seconds=30, cache_policy=NO_CACHE)
def plan_task(settings: Settings, store: Store, *, locations: list[str], approve: bool,
              policy: Policy | LoadedPolicy, full_sweep: bool, docs: bool, ghl_client: GHLFactory | None,
              tinyemail_client: TinyEmailFactory | None, kind: str) -> PlanRun:
    return plan_run(settings, store, locations=locations, approve=approve, policy=policy, full_sweep=full_sweep,
                    docs=docs, ghl_client=ghl_client, tinyemail_client=tinyemail_client, kind=kind)


@task(name="apply", cache_policy=NO_CACHE)
def apply_task(settings: Settings, store: Store, run_id: str, *, policy: Policy, ghl_client: GHLFactory | None,
               tinyemail_client: TinyEmailFactory | None) -> RunOutcome:
    return apply_run(settings, store, run_id, policy=policy, ghl_client=ghl_client,
                     tinyemail_client=tinyemail_client)


@task(name="report", retries=1, cache_policy=NO_CACHE)
def report_task(settings: Settings, store: Store, run_id: str, dry_run: bool,
                requests: dict[str, dict[str, int]]) -> dict[str, Any]:
    return report_run(settings, store, run_id, dry_run, requests)


PREFECT_STEPS = Steps(recover=recover_task, plan=plan_task, apply=apply_task, report=report_task,
                      logger=get_run_logger)
