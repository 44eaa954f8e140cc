"""The orchestration of a run: `reconcile` (a set of GHL locations with TinyEmail: lock, recover, plan, apply,
report) and `sync` (one person between nights: lock, read, plan, apply).

`reconcile` is the one orchestration: the Prefect flow (`contact_recon.flows.reconcile`, through the Prefect tasks of
`contact_recon.tasks.reconcile`), `recon run` (which runs that flow in-process), the tests and the benchmarks all call
it. `Steps` says how each step runs: plain calls (`DIRECT`, the default) or Prefect tasks
(`contact_recon.tasks.reconcile.PREFECT_STEPS`). In order:

0. `location_lock` (stages/lock.py): every covered location is held exclusively, or the run stops with
   `LocationBusy` after `lock_wait_s`; the DuckDB store is opened inside the lock.
1. `recover_interrupted`: ops an interrupted run left `sending` are resolved (stages/apply.py), and runs
   left 'applying' are closed as 'failed' (interrupted), before anything is planned. Not on a dry run.
2. `plan_run` (stages/plan.py): snapshot both systems, match identities, merge, check, quarantine; the plan
   goes to `runs/<run_id>/plan.parquet` and the state a later apply needs to `state/`.
3. Held (a guard tripped and nobody approved), or a dry run: nothing is written.
4. `apply_run`: journal every op, send the allowed ones (stages/apply.py), then advance the base, the
   id_map and the created-objects memory for the confirmed ops only (stages/advance.py).
5. `report_run` (report/publish.py): summary.json, report.html, and inside Prefect the artifacts and
   alert events.

`sync` (the sync service's `sync-contact` task, and the `sync-contact` flow) runs the same plan, apply and advance
code on one person read just now (`stages/sync.py person_frames`, `stages/plan.py plan_person`), under the same
per-location lock, then opens the DuckDB file, waiting for both within `lock_wait_s` (a nightly of its own
location holds the lock, one of another location the file: either way the sync waits, `LocationBusy` or
`StoreBusy` only once the wait is over); it recovers
nothing and writes no report (the nightly run does both). Started by a note or task webhook (`webhook_type`), it
first marks the contact dirty (`Store.mark_dirty`), so the next snapshot reads its notes and tasks again
(a sync reads the contact and its tasks, not its notes); a task webhook that named no contact marks the
location's tasks instead (`Store.mark_tasks_dirty`) and syncs nobody.

The covered locations (`covered_locations`): the run's own, else RECON_GHL_LOCATION_IDS, else (an agency install,
RECON_GHL_COMPANY_ID) the locations `GET /oauth/installedLocations` lists now, plus INSTALL-webhook additions,
less the retired ones; explicit ids always win.

A location an agency UNINSTALL retired (contact_recon/store/installs.py) gets no more writes: `reconcile` leaves
it out of the covered locations (and refuses a run that covers only retired ones), `sync` returns status
`retired` without reading or writing; its data stays in the store. `sync` of a location that is not among
the configured ones (another group's webhook) returns status `unowned` and touches nothing.

A run's status: running -> planned | held | failed -> applying -> completed | failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from contact_recon.checks.quarantine import QUARANTINED
from contact_recon.engine.state import Consent
from contact_recon.events import GHL_NOTE_TASK_TYPES, GHL_TASK_TYPES
from contact_recon.model.approval import Approval, tripped_guards
from contact_recon.model.policy import Policy
from contact_recon.report.publish import report_run
from contact_recon.settings import Settings
from contact_recon.stages import failpoints
from contact_recon.stages import progress as bars
from contact_recon.stages.advance import advance, load_state
from contact_recon.stages.apply import Applier, Person, StageStopped, recover
from contact_recon.stages.echo import EchoLog, tinyemail_log
from contact_recon.stages.lock import location_lock
from contact_recon.stages.plan import (
    APPROVED,
    GUARD_EXPECTATION,
    HELD,
    PLANNED,
    PlanRun,
    load_plan,
    plan_person,
    plan_run,
)
from contact_recon.stages.sync import PersonFrames, person_frames
from contact_recon.store import journal as J
from contact_recon.store.db import Store, db_path, open_db
from contact_recon.store.decisions import Decisions
from contact_recon.store.files import run_dir
from contact_recon.store.installs import read_installs, record_covered, retired_locations
from contact_recon.store.journal import Journal
from contact_recon.systems.ghl.agency import agency_locations
from contact_recon.systems.ghl.client import GHLClient, installed_location_ids, is_agency_install
from contact_recon.systems.http import ApiBacked
from contact_recon.systems.policy_source import resolve_policy
from contact_recon.systems.tinyemail.client import TinyEmailClient

APPLYING, COMPLETED, FAILED, REJECTED = "applying", "completed", "failed", "rejected"
GHLFactory = Callable[[str], GHLClient]
TinyEmailFactory = Callable[[], TinyEmailClient]


class NotApplicable(Exception):  # noqa: N818 - the name is the contract
    """The run cannot be applied in its state (held and not approved, already applied, failed)."""


@dataclass
class RunOutcome:
    run_id: str
    status: str  # completed | held | failed (a dry run that planned: completed)
    dry_run: bool
    plan: PlanRun | None = None
    journal: dict[str, int] = field(default_factory=dict)  # status -> ops
    requests: dict[str, dict[str, int]] = field(default_factory=dict)  # system -> used/rate_limited/retried
    recovered: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    summary: dict[str, Any] | None = None  # the report's summary.json, when the run reported
    expired: list[dict[str, Any]] = field(default_factory=list)  # held runs this run found expired


@dataclass(frozen=True)
class Steps:
    """How each step of `reconcile` runs. `DIRECT` calls the functions; a flow hands in its Prefect tasks."""

    recover: Callable[[Store, list[str], GHLFactory], dict[str, int]]
    plan: Callable[..., PlanRun]
    apply: Callable[..., RunOutcome]
    report: Callable[[Settings, Store, str, bool, dict[str, dict[str, int]]], dict[str, Any]]
    logger: Callable[[], logging.Logger | logging.LoggerAdapter[logging.Logger]]


def reconcile(settings: Settings, store: Store | None = None, *, locations: Sequence[str] | None = None,
              dry_run: bool = False, approve: bool = False, full_sweep: bool = False, policy: Policy | None = None,
              docs: bool = True, report: bool = True, lock_wait_s: float = 60.0,
              ghl_client: GHLFactory | None = None, tinyemail_client: TinyEmailFactory | None = None,
              steps: Steps | None = None, on_held: Callable[[Store, str], None] | None = None) -> RunOutcome:
    """Lock, recover, plan and (unless a dry run or held) apply, then report; the module docstring has the steps.

    `store`: an open store to use (tests), else the data dir's DuckDB file is opened inside the lock.
    `report`: False skips step 5 (the outcome's `summary` is then None).
    `on_held(store, run_id)`: called for a held run, still inside the lock (the flow records where it waits).
    """
    steps = steps or DIRECT
    log = steps.logger()
    covered = covered_locations(settings, locations)
    if not covered:
        raise ValueError("no GHL location: pass locations or set RECON_GHL_LOCATION_IDS (or RECON_GHL_COMPANY_ID "
                         "for an agency install)")
    retired = retired_locations(settings.data_dir)
    if retired & set(covered):  # uninstalled from an agency: no more writes there, its data kept
        log.warning("locations %s are retired (the app was uninstalled): left out of this run",
                    sorted(retired & set(covered)))
        covered = [loc for loc in covered if loc not in retired]
        if not covered:
            raise ValueError("every location of this run is retired (the app was uninstalled there)")
    loaded = resolve_policy(settings, policy)  # before anything runs: an invalid policy refuses the run
    ghl = ghl_client or (lambda loc: GHLClient.from_settings(settings, loc))
    with location_lock(settings, covered, lock_wait_s), _store(settings, store) as db:
        failpoints.rendezvous("locked", data_dir=str(settings.data_dir))  # the concurrency tests only
        expired = expire_held_runs(db)
        for run in expired:
            log.warning("run %s expired unanswered: nothing of it is written; this run plans afresh", run["run_id"])
        recovered = steps.recover(db, covered, ghl) if not dry_run else {}
        if recovered:
            log.info("recovered after an interrupted run: %s", recovered)
        started = time.perf_counter()
        planned = steps.plan(settings, db, locations=covered, approve=approve, policy=loaded,
                             full_sweep=full_sweep, docs=docs, ghl_client=ghl, tinyemail_client=tinyemail_client,
                             kind="reconcile")
        log.info("run %s planned in %.1f s: %s", planned.run_id, time.perf_counter() - started, plan_line(planned))
        for reason in planned.held_reasons:
            log.warning("run %s %s by guard %s", planned.run_id, "approved up front" if planned.approved else "held",
                        reason)
        if dry_run or planned.status == HELD:
            outcome = RunOutcome(planned.run_id, HELD if planned.status == HELD else COMPLETED, dry_run)
            if planned.status == HELD and on_held is not None:
                on_held(db, planned.run_id)
        else:
            db.reopen()  # the apply starts with DuckDB's memory free, as planning does (Store.reopen)
            started = time.perf_counter()
            outcome = steps.apply(settings, db, planned.run_id, policy=loaded.policy, ghl_client=ghl,
                                  tinyemail_client=tinyemail_client)
            log.info("run %s applied in %.1f s: %s", planned.run_id, time.perf_counter() - started,
                     apply_line(outcome))
        outcome.plan, outcome.recovered, outcome.expired = planned, recovered, expired
        if report:
            outcome.summary = steps.report(settings, db, planned.run_id, dry_run, outcome.requests)
            log.info("run %s %s; report %s", planned.run_id, outcome.summary["status"], outcome.summary["report"])
    return outcome


def covered_locations(settings: Settings, locations: Sequence[str] | None = None) -> list[str]:
    """The locations a run covers: those it is given, else the configured ones (RECON_GHL_LOCATION_IDS), else,
    for an agency install, the installed ones (`GET /oauth/installedLocations`) plus the INSTALL-webhook
    additions, less the retired ones (systems/ghl/agency.py `agency_locations`)."""
    if locations:  # the run's own choice
        return list(locations)
    if settings.ghl_location_ids:  # explicit ids win over an agency install's list
        return list(settings.ghl_location_ids)
    if settings.ghl_company_id and is_agency_install(settings):  # the agency's installed locations, read now
        installed = asyncio.run(installed_location_ids(settings))
        covered = agency_locations(installed, read_installs(settings.data_dir), settings.ghl_company_id)
        record_covered(settings.data_dir, covered)  # what routes these locations' webhooks to this tenant
        return covered
    return []  # nothing configured: the caller refuses the run


def plan_line(planned: PlanRun) -> str:
    """A plan in one log line: people, ops by kind and target, conflicts, quarantined, held."""
    by_kind = planned.plan.group_by("target", "kind").len().sort("target", "kind").iter_rows()
    ops = ", ".join(f"{kind} to {target} {n:,}" for target, kind, n in by_kind) or "none"
    return (f"{planned.stats.get('people', 0):,} people; ops {ops}; {planned.conflicts.height:,} conflicts; "
            f"{planned.quarantined.height:,} quarantined; status {planned.status}")


def apply_line(outcome: RunOutcome) -> str:
    """An apply in one log line: ops by journal status, requests per system, the error if it stopped."""
    requests = "; ".join(f"{system} {r.get('used', 0):,} requests ({r.get('rate_limited', 0):,} rate limited, "
                         f"{r.get('retried', 0):,} retried"
                         + (f", {r['daily_left']:,} left today" if "daily_left" in r else "") + ")"
                         for system, r in outcome.requests.items())
    return (f"status {outcome.status}; ops {outcome.journal}; {requests}"
            + (f"; stopped: {outcome.error}" if outcome.error else ""))


def sync(settings: Settings, *, contact_id: str | None = None, location_id: str | None = None,
         email: str | None = None, webhook_type: str | None = None, ghl_client: GHLFactory | None = None,
         tinyemail_client: TinyEmailFactory | None = None, lock_wait_s: float = 120.0,
         log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None) -> dict[str, Any]:
    """One person now (the `sync-contact` flow): lock the location, read the person from both systems
    (stages/sync.py), plan (`plan_person`: the nightly identity, merge, checks and quarantine), apply and
    advance; no recovery and no report (the nightly does both). Returns the run id, status and ops.

    `webhook_type`: the GHL webhook that triggered it; a note or task type marks the contact dirty first, and a
    task type without `contact_id` (and email) marks the location's tasks and returns status `marked`."""
    log = log or logging.getLogger("contact_recon.sync")
    location = location_id or (settings.ghl_location_ids[0] if settings.ghl_location_ids else None)
    location_tasks = webhook_type in GHL_TASK_TYPES and not (contact_id or email)
    if not (contact_id or email or location_tasks):
        raise ValueError("sync-contact needs a contact_id or an email")
    if not location:
        raise ValueError("no GHL location: pass location_id or set RECON_GHL_LOCATION_IDS")
    if settings.ghl_location_ids and location not in settings.ghl_location_ids:  # another group's location
        log.warning("location %s is not one of this install's locations: nothing synced", location)
        return {"status": "unowned", "location_id": location}
    if location in retired_locations(settings.data_dir):  # uninstalled: no more writes, data kept
        log.info("location %s is retired (the app was uninstalled): nothing synced", location)
        return {"status": "retired", "location_id": location}
    ghl = ghl_client or (lambda loc: GHLClient.from_settings(settings, loc))
    te = tinyemail_client or (lambda: TinyEmailClient.from_settings(settings))
    deadline = time.monotonic() + lock_wait_s
    # the location's lock, then the DuckDB file, which a run of another location may hold (one writer process):
    # waited for within the same `lock_wait_s`, so a sync meeting any run waits for it instead of failing at once
    with location_lock(settings, [location], lock_wait_s), \
            open_db(db_path(settings.data_dir), wait_s=max(deadline - time.monotonic(), 0.0)) as store:
        if location_tasks:  # a task naming no contact: the next snapshot reads every task of the location
            store.mark_tasks_dirty(location, f"webhook {webhook_type} without a contact")
            log.info("%s without a contact: the tasks of location %s are read again by the next snapshot",
                     webhook_type, location)
            return {"status": "marked", "location_id": location, "webhook_type": webhook_type}
        if contact_id and webhook_type in GHL_NOTE_TASK_TYPES:  # its notes or tasks changed: refetched tonight
            store.mark_dirty(location, contact_id, f"webhook {webhook_type}")
        person = asyncio.run(_read_person(ghl(location), te(), store, contact_id, email, settings.default_region))
        planned = plan_person(settings, store, location_id=location, frames=person.frames, keys=person.keys)
        result: dict[str, Any] = {"run_id": planned.run_id, "ops": planned.plan.height, "status": planned.status,
                                  "contact_id": person.contact_id}
        if planned.status == HELD:
            log.warning("sync of %s held by a guard: %s", person.keys, planned.held_reasons)
            return result
        if planned.plan.height:
            outcome = apply_run(settings, store, planned.run_id, ghl_client=ghl, tinyemail_client=te)
            result.update(status=outcome.status, journal=outcome.journal)
        else:
            store.finish_run(planned.run_id, COMPLETED)
            result["status"] = COMPLETED
    log.info("sync of %s: %s", person.keys, result)
    return result


async def _read_person(ghl: GHLClient, te: TinyEmailClient, store: Store, contact_id: str | None,
                       email: str | None, region: str) -> PersonFrames:
    try:
        return await person_frames(ghl, te, store, contact_id=contact_id, email=email, region=region)
    finally:
        await ghl.aclose()
        await te.aclose()


@contextlib.contextmanager
def _store(settings: Settings, store: Store | None) -> Iterator[Store]:
    if store is not None:
        yield store
        return
    with open_db(db_path(settings.data_dir)) as opened:
        yield opened


def recover_interrupted(store: Store, locations: Sequence[str], ghl_client: GHLFactory) -> dict[str, int]:
    """Close runs left 'applying' and resolve their unfinished ops (before anything is planned)."""
    journal = Journal(store)
    interrupted = store.runs().filter(pl.col("status") == APPLYING)["run_id"].to_list()
    for run_id in interrupted:
        store.finish_run(run_id, FAILED, error="interrupted during apply; resolved by the next run")
    if not journal.unfinished():
        return {"interrupted_runs": len(interrupted)} if interrupted else {}

    async def go() -> dict[str, int]:
        clients = {loc: ghl_client(loc) for loc in locations}
        try:
            return await recover(journal, clients, locations[0])
        finally:
            await asyncio.gather(*(c.aclose() for c in clients.values()))

    return {**asyncio.run(go()), "interrupted_runs": len(interrupted)}


def journal_frame(marked: pl.DataFrame, released: pl.Expr, people: pl.DataFrame,
                  default_location: str) -> pl.DataFrame:
    """The plan as journal rows: status planned (to send), quarantined, or held (a guard nobody approved,
    an identity review), with the GHL location of each op's person. `released` is true for the guard-held
    ops the run's approval releases (`released_by_approval`)."""
    guard_only = pl.col("quarantined_by") == GUARD_EXPECTATION
    status = (pl.when(pl.col("kind") == "identity_review").then(pl.lit(J.HELD))
              .when(pl.col("status") != QUARANTINED).then(pl.lit(J.PLANNED))
              .when(guard_only & released).then(pl.lit(J.PLANNED))
              .when(guard_only).then(pl.lit(J.HELD))
              .otherwise(pl.lit(J.QUARANTINED)))
    where = people.select("key", "location_id")
    return (marked.join(where, on="key", how="left", maintain_order="left")
            .with_columns(status=status, location_id=pl.col("location_id").fill_null(default_location)))


def apply_run(settings: Settings, store: Store, run_id: str, *, policy: Policy | None = None,
              ghl_client: GHLFactory | None = None, tinyemail_client: TinyEmailFactory | None = None) -> RunOutcome:
    """Apply a planned (or approved) run: journal, send, advance the state; the run ends completed or failed."""
    run = store.get_run(run_id)
    if run["status"] not in (PLANNED, APPROVED):
        raise NotApplicable(f"run {run_id} is {run['status']}: only a planned or approved run can be applied"
                            + (" (approve it first: recon approve RUN_ID)" if run["status"] == HELD else ""))
    _check_not_superseded(store, run)
    policy = resolve_policy(settings, policy).policy
    locations = list(run["location_ids"] or [])
    directory = run_dir(settings.data_dir, run_id)
    state = load_state(directory)
    journal = Journal(store, on_closed=lambda n: bars.advance("apply: ops", n))
    planned = journal_frame(load_plan(settings.data_dir, run_id), released_by_approval(store, run), state["people"],
                            locations[0])
    journal.record(run_id, planned)
    bars.begin("apply: ops", journal.counts(run_id).get(J.PLANNED, 0))
    store.set_run_status(run_id, APPLYING)
    failpoints.hit("journaled")
    # how to address the people the run writes to (its ops' keys), not everyone the plan saw
    keys = planned["key"].unique().implode()
    people = {r["key"]: Person(r["email"], r["contact_id"], r["location_id"])
              for r in state["people"].filter(pl.col("key").is_in(keys)).iter_rows(named=True)}
    ghl_client = ghl_client or (lambda loc: GHLClient.from_settings(settings, loc))
    tinyemail_client = tinyemail_client or (lambda: TinyEmailClient.from_settings(settings))
    # a nightly run's writes come back as thousands of webhooks: noted as echoes (contact_recon/stages/echo.py). A
    # sync's GHL writes are not: the receiver's echo window (120 s) would hold back the person's next edit of that
    # contact until the night. A sync's TinyEmail writes are: the watcher counts a noted write only when it falls
    # after its previous poll began (one poll interval), and without the note each sync's write came back as a
    # second sync of the person that found nothing to do, half of the service's time at 1 change a second
    echo = (EchoLog(settings.data_dir) if run["kind"] != "sync" else None, tinyemail_log(settings.data_dir))
    error, requests = _send(journal, run_id, locations, people, settings, ghl_client, tinyemail_client, policy, echo)
    advance(store, directory, journal.frame(run_id), run_id,
            Consent(tuple(policy.consent.tinyemail_tight), tuple(policy.consent.ghl_tight)), policy.tags.list_prefix)
    _settle_decisions(store, journal.frame(run_id), run_id)
    status = FAILED if error else COMPLETED
    store.finish_run(run_id, status, {"apply": requests}, error=error, held_reasons=run["held_reasons"],
                     approved=run["approved_at"] is not None)
    return RunOutcome(run_id, status, False, journal=journal.counts(run_id), requests=requests, error=error)


def released_by_approval(store: Store, run: dict[str, Any]) -> pl.Expr:
    """Which guard-held ops of `run` may be written: none unless it was approved; all when approved up front
    (`--approve`) or for every guard it tripped; else those of the approved guards' kinds (model/approval.py)."""
    if run["approved_at"] is None:
        return pl.lit(False)
    answer = store.approval(run["run_id"])
    kinds = answer.released_kinds(tripped_guards(run["held_reasons"])) if answer else None
    return pl.lit(True) if kinds is None else pl.col("kind").is_in(sorted(kinds))


def _check_not_superseded(store: Store, run: dict[str, Any]) -> None:
    """NotApplicable when a later reconcile run of one of this run's locations has planned since: its plan
    is of older snapshots than what that run already read and wrote (a held plan answered late)."""
    later = store.runs().filter((pl.col("kind") == "reconcile") & (pl.col("started_at") > run["started_at"]))
    covered, journal = set(run["location_ids"] or []), Journal(store)
    for other in later.iter_rows(named=True):
        # only a run that went on to apply supersedes (a dry run, a held or a failed plan wrote nothing)
        if covered & set(other["location_ids"] or []) and journal.counts(other["run_id"]):
            raise NotApplicable(f"run {run['run_id']} was superseded by run {other['run_id']}, which planned the "
                                "same locations after it: nothing of it is applied")


def answer_held(settings: Settings, run_id: str, approval: Approval, locations: Sequence[str], *,
                store: Store | None = None, lock_wait_s: float = 60.0, ghl_client: GHLFactory | None = None,
                tinyemail_client: TinyEmailFactory | None = None, steps: Steps | None = None) -> RunOutcome:
    """A held run's answer (the approval form of its flow run, or `recon approve`): record it, then apply the
    same plan (approve: each write still checked against the live record) or write nothing (reject), and report.

    Raises RunNotHeld (store/db.py) when the run is not held or its window expired; NotApplicable when a later
    run superseded it (it is then rejected, so it never waits again). `locations`: the run's, locked before the
    store is opened."""
    steps = steps or DIRECT
    log = steps.logger()
    with location_lock(settings, list(locations), lock_wait_s), _store(settings, store) as db:
        run = db.approve_run(run_id, approval)
        answer = db.approval(run_id)
        log.info("run %s %s by %s%s", run_id, run["status"], approval.by, f": {answer.note}" if answer and answer.note
                 else "")
        if run["status"] == REJECTED:
            outcome = RunOutcome(run_id, REJECTED, False)
        else:
            try:
                outcome = steps.apply(settings, db, run_id, policy=None, ghl_client=ghl_client,
                                      tinyemail_client=tinyemail_client)
            except NotApplicable:
                db.finish_run(run_id, REJECTED, error="superseded by a later run", held_reasons=run["held_reasons"])
                raise
            log.info("run %s applied: %s", run_id, outcome.journal)
        outcome.summary = steps.report(settings, db, run_id, False, outcome.requests)
    return outcome


def expire_held_runs(store: Store) -> list[dict[str, Any]]:
    """Held runs left unanswered past their window end 'expired' (nothing of theirs is written; this run plans
    afresh); returned (run_id, flow_run_id) so the flow can close their Prefect flow runs."""
    return store.expire_held()


def _settle_decisions(store: Store, journal: pl.DataFrame, run_id: str) -> None:
    """Pending decisions this run carried out (every op of theirs confirmed, or none needed) are used up; a
    decision whose op failed stays pending for the next run."""
    decisions = Decisions(store)
    pending = decisions.pending()
    if pending.height == 0:
        return
    open_ops = journal.filter(pl.col("reason").str.starts_with("decided_") & (pl.col("status") != J.DONE))
    used = pending.join(open_ops.select("key", "field").unique(), on=["key", "field"], how="anti")
    decisions.mark_used(used, run_id)


def _send(journal: Journal, run_id: str, locations: list[str], people: dict[str, Person], settings: Settings,
          ghl_client: GHLFactory, tinyemail_client: TinyEmailFactory, policy: Policy,
          echo: tuple[EchoLog | None, EchoLog | None]) -> tuple[str | None, dict[str, dict[str, int]]]:
    async def go() -> tuple[str | None, dict[str, dict[str, int]]]:
        ghl = {loc: ghl_client(loc) for loc in locations}
        te = tinyemail_client()
        applier = Applier(journal, ghl, te, people, default_location=locations[0], region=settings.default_region,
                          home_list=policy.create.tinyemail_list, echo=echo[0], te_echo=echo[1],
                          consent=policy.consent, list_tags=journal.store.list_tags(policy.tags.list_prefix),
                          custom=policy.active_custom())
        error = None
        try:
            await applier.run(run_id)
        except StageStopped as exc:
            error = f"apply stopped: {exc}"
        finally:
            clients: list[ApiBacked] = [*ghl.values(), te]
            await asyncio.gather(*(c.aclose() for c in clients))
        return error, request_counts(ghl, te)

    return asyncio.run(go())


def request_counts(ghl: dict[str, GHLClient], te: TinyEmailClient) -> dict[str, dict[str, int]]:
    """Requests per system (summed over locations): used, rate_limited, retried, and `daily_left` (the least
    daily allowance left over the system's budgets, when they track one)."""
    totals: dict[str, dict[str, int]] = {}
    for system, clients in (("ghl", list(ghl.values())), ("tinyemail", [te])):
        stats = [c.api.stats for c in clients]
        totals[system] = {name: sum(getattr(s, name) for s in stats) for name in ("used", "rate_limited", "retried")}
        left = [b.daily_remaining for b in (c.api.budget.snapshot() for c in clients) if b.daily_remaining is not None]
        if left:
            totals[system]["daily_left"] = min(left)
    return totals


DIRECT = Steps(recover=recover_interrupted, plan=plan_run, apply=apply_run, report=report_run,
               logger=lambda: logging.getLogger("contact_recon.run"))
