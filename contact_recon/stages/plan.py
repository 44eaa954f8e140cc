"""The planning pipeline (`recon plan`, the dry run): both systems in, a plan on disk, nothing written to either.

`plan_run(settings, store, locations=...)`:
1. Resolve the policy (`contact_recon/systems/policy_source.py`: a Prefect block, a file or the defaults; an
   invalid one is refused here) and start a run of kind 'plan' in the store, with the policy's version.
2. Snapshot both systems (`contact_recon/stages/snapshot.py`, which records its own 'snapshot' run), or with
   `reuse_snapshot` take the latest snapshot in the store as it is. A location whose snapshot failed (its
   listing did not end, its token was refused...) is left out of this plan, named in the plan's
   `failed_locations` and the run row's `error`: its people are out of scope, and while it is missing no
   TinyEmail-only customer is planned (it may be that location's contact; `held_for_snapshot`).
3. Read the latest snapshots of the covered locations and of TinyEmail back from the store (`latest_frames`: their
   `raw` payloads only for the records whose tags are folded, the rest null: about half of the frames' memory),
   and fold every record's tags to one spelling per tag key (`folded_frames`, `contact_recon/model/tags.py`: tags
   that differ only in case or spacing are one tag; the spelling there first stays). Everything after sees the folded
   frames; the fold ops (`tag_remove`, reason `tag_case_folded`) join the plan after the merge (`with_folds`,
   the stat `tags_folded`), so neither the merge's guards nor the guard expectation count them. Records the
   snapshot found present but unreadable (`unreadable`: their rows are the previous snapshot's) have their
   persons held back like an open identity review (`held_for_snapshot`, `engine/identity.py hold_back`): no
   op is planned for them, no deletion, and the plan lists them (`PlanRun.unreadable`, the report).
4. Identity (`contact_recon/engine/identity.py`): match (the id_map with the team's standing identity
   decisions, `recon identity resolve`: `stages/review.py identity_input`), leave the held-back keys out of
   both sides and of the base, and apply this run's re-keys (`te:<email>` -> the contact id now matched by email) to the
   base, in memory (`planning_base`). A re-keyed person was on TinyEmail only at the base, so its row says
   `in_ghl = False`: the merge engine treats it as newly on GHL (fill blanks), never as "GHL removed every
   tag". A matched record without a country of its own has its phone read in its partner's country
   (`with_local_phones`), for the checks and the merge alike. `merge_sides` makes the two sides once (their
   custom fields then in the policy's names, `model/custom_fields.py canonical_sides`); the merge, the decisions
   and the saved state share them.
5. Merge (`contact_recon/engine/merge.py`): base, TinyEmail now, GHL now -> ops, conflicts, stats,
   held_reasons. `today` is the store clock's date; `created` is the created-objects memory
   (`Journal.created`); the guards compare with the usual figures of the last `guards.history_runs`
   comparable runs (`Store.comparable_stats`: completed reconcile runs of the same locations that were not a
   first fill; `contact_recon/engine/guards.py`). The data team's pending decisions (`recon conflicts
   import`) add their ops (`with_decisions`); conflicts a person skipped are left out while unchanged
   (`engine/conflicts.py` `without_skipped`).
6. Checks (`contact_recon.checks.run`) on the snapshot frames and the plan (the guard expectation with the
   merge's thresholds, from the same history), then quarantine (`contact_recon.checks.quarantine`): every
   op keeps its row, with `status` and `quarantined_by`. With `approve`, `plan.within_guards` is checked as
   a warning (its explicit override), so the guarded ops are not held back.
7. Save the check results and the identity review rows; track since when each conflict is open
   (`conflict_review`: `conflict_seen` in the store); write `<data_dir>/runs/<run_id>/plan.parquet`
   (the marked ops), `conflicts.csv` (engine/conflicts.py CSV_COLUMNS: who, since when, empty decision
   columns) and the state a later apply needs (`state/`,
   `contact_recon/stages/advance.py`), each atomically (a temporary file renamed into place); then the review
   files, `identity.csv` and `quarantine.parquet`, with the ages of their items (`contact_recon/stages/review.py`).
8. Finish the run 'held' when a guard tripped and nobody approved (the reasons in `held_reasons`), else
   'planned' (`approved_at` set when `approve` overrode a tripped guard). A failure finishes it
   'failed' with the redacted error and re-raises.

A dry run changes no synchronisation state: the base, the id_map and the created-objects memory move
only for confirmed writes (the apply stage). So planning again with no change on either side gives the
same ops with the same ids (ids hash content only, `contact_recon/model/ops.py`), e.g. after a crash.

`recon approve RUN_ID` turns a held run into 'approved' (`Store.approve_run`). `ops_to_apply(plan,
approved)` is what the apply stage may write from a plan file: the planned ops, and on an approved run
also the ops that only the guard expectation held back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from contact_recon.checks.quarantine import PLANNED, QUARANTINED, apply_quarantine
from contact_recon.checks.run import GX_DIR, CheckReport, run_checks
from contact_recon.checks.suites import Thresholds
from contact_recon.engine.conflicts import PRESENCE, as_held, field_key, review_rows, track, without_skipped
from contact_recon.engine.decisions import decision_ops
from contact_recon.engine.guards import GuardHistory
from contact_recon.engine.identity import IdentityResult, hold_back, localise_phones, match_identities, merge_sides
from contact_recon.engine.merge import MergeResult, Outside, plan
from contact_recon.model.cells import guarded
from contact_recon.model.context import person_context
from contact_recon.model.custom_fields import canonical_sides
from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.list_tags import ListNames, respelling_ops, with_list_ids
from contact_recon.model.normalise import normalise_email
from contact_recon.model.ops import sort_ops, with_ids
from contact_recon.model.policy import Policy
from contact_recon.model.tags import duplicated, fold_frame, fold_ops
from contact_recon.settings import Settings
from contact_recon.stages.advance import save_state
from contact_recon.stages.review import IdentityInput, identity_input, write_review_files
from contact_recon.stages.snapshot import GHLFactory, SnapshotOptions, SnapshotResult, TinyEmailFactory, run_snapshot
from contact_recon.store.conflicts import ConflictLog
from contact_recon.store.db import ENTITIES, NO_LOCATION, Store, columns_but
from contact_recon.store.decisions import Decisions
from contact_recon.store.files import (
    CONFLICTS_FILE,
    DOCS_DIR,
    PLAN_FILE,
    atomic_write,
    private_dir,
    private_tree,
    run_dir,
)
from contact_recon.store.journal import Journal
from contact_recon.store.settled import SETTLE, UNCHANGED, Settled
from contact_recon.systems.policy_source import LoadedPolicy, resolve_policy

GUARD_EXPECTATION = "plan.within_guards"  # the check that holds a guard's ops; approval releases them
HELD, APPROVED, FAILED = "held", "approved", "failed"  # run statuses besides PLANNED ("planned")
SETTLED_VERSION = "1"  # bump when what settles a person changes: every settled row then stops counting


class NoSnapshot(Exception):  # noqa: N818 - the name is the contract
    """`reuse_snapshot` was asked for, but the store has no snapshot of a covered location or of TinyEmail."""


@dataclass(frozen=True)
class PlanRun:
    run_id: str
    status: str  # "planned" | "held"
    held_reasons: tuple[str, ...]  # the guards the plan tripped (approved or not)
    approved: bool  # a tripped guard was approved up front (`approve=True`)
    plan: pl.DataFrame  # ops.OPS_SCHEMA + status ("planned" | "quarantined") + quarantined_by
    conflicts: pl.DataFrame  # ops.CONFLICTS_SCHEMA
    stats: dict[str, int]  # the merge stats
    checks: CheckReport
    review: pl.DataFrame  # identity.REVIEW rows of this run
    snapshot_run_id: str | None  # None when the latest snapshot was reused
    plan_path: Path
    conflicts_path: Path
    failed_locations: dict[str, str] = dataclasses.field(default_factory=dict)  # "ghl:<loc>" -> why, not planned
    unreadable: tuple[dict[str, Any], ...] = ()  # records present but unreadable: their persons held back

    @property
    def quarantined(self) -> pl.DataFrame:
        return self.plan.filter(pl.col("status") == QUARANTINED)


def plan_run(settings: Settings, store: Store, *, locations: Sequence[str], approve: bool = False,
             policy: Policy | LoadedPolicy | None = None, full_sweep: bool = False, reuse_snapshot: bool = False,
             docs: bool = True, ghl_client: GHLFactory | None = None,
             tinyemail_client: TinyEmailFactory | None = None,
             snapshot_options: SnapshotOptions | None = None, kind: str = "plan") -> PlanRun:
    """Plan a reconciliation without writing to GHL or TinyEmail (module docstring, steps 1-8).

    Args:
        settings: connections, the data dir (plan files, GX project), `policy_block` and `policy_file`.
        store: the open store; gets the runs, the snapshot, check results and review rows.
        locations: the GHL location ids this run covers.
        approve: approve up front whatever guard the plan trips (the run ends 'planned', not 'held').
        policy: the reconciliation policy; default `resolve_policy(settings)` (the block, the file or the
            defaults). Its version and source are recorded on the run row.
        full_sweep: the snapshot reads every contact's tasks and notes.
        reuse_snapshot: plan from the latest snapshot in the store, without reading either system.
        docs: build the checks' Data Docs.
        ghl_client, tinyemail_client, snapshot_options: passed to `run_snapshot` (tests).
        kind: the run's kind in the store: 'plan' (`recon plan`) or 'reconcile' (a run that may apply).
    Raises:
        NoSnapshot: `reuse_snapshot` without a snapshot to reuse.
        Whatever the snapshot raises (SnapshotFailed, SideCameBackEmpty); the run is then 'failed'.
    """
    locations = list(dict.fromkeys(locations))
    loaded = resolve_policy(settings, policy)
    policy = loaded.policy
    run_id = store.start_run(kind, locations, policy_version=loaded.version, policy_source=loaded.source)
    try:
        snapshot = None if reuse_snapshot else run_snapshot(
            settings, store, locations, full_sweep=full_sweep, ghl_client=ghl_client,
            tinyemail_client=tinyemail_client, options=snapshot_options)
        if snapshot is not None:
            store.reopen()  # planning starts with DuckDB's memory free (Store.reopen)
        # a location whose snapshot failed is left out of this plan (its people are out of scope: held back)
        planned = [loc for loc in locations if snapshot is None or loc in snapshot.locations]
        result = _plan(settings, store, run_id, planned, policy, approve, docs, snapshot, everyone=full_sweep)
    except BaseException as exc:
        store.finish_run(run_id, FAILED, error=str(exc) or type(exc).__name__)
        raise
    store.finish_run(run_id, result.status, snapshot.used if snapshot else None,
                     error=_failed_line(result.failed_locations), held_reasons=result.held_reasons,
                     approved=result.approved)
    return result


def _failed_line(failed: dict[str, str]) -> str | None:
    """The run row's `error` of a run that planned without some locations."""
    return "; ".join(f"snapshot of {where} failed, not planned: {why}" for where, why in failed.items()) or None


def snapshot_findings(store: Store, snapshot: SnapshotResult | None) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The failed locations and unreadable records of the snapshot a plan reads (the latest one when reused)."""
    if snapshot is not None:
        return snapshot.failed, snapshot.unreadable
    latest = store.latest_run(["snapshot"])
    runs = store.runs().filter(pl.col("kind").is_in(["plan", "reconcile"]) & pl.col("plan_json").is_not_null())
    for plan_json in reversed(runs["plan_json"].to_list()):  # the last plan of that snapshot listed them
        summary = json.loads(plan_json)
        if isinstance(summary, dict) and summary.get("snapshot_run_id") == latest:
            return {}, list(summary.get("unreadable") or [])
    return {}, []


def held_for_snapshot(identity: IdentityResult, failed: dict[str, str],
                      unreadable: Sequence[dict[str, Any]]) -> IdentityResult:
    """The identity with more persons held back for what the snapshot could not read: those of unreadable records
    (their rows are last night's), and while a location's snapshot failed every TinyEmail customer no contact
    matched (it may be a contact of that location: created in another one, it would be a duplicate)."""
    ids = [u["key"] for u in unreadable if u["system"] == "ghl" and u["key"]]
    emails = [normalise_email(u["key"])[0] for u in unreadable if u["system"] == "tinyemail" and u["key"]]
    if failed:
        emails += identity.unmatched_te["email"].to_list()
    return hold_back(identity, ids, [e for e in emails if e])


@dataclass(frozen=True)
class Scope:
    """Who a nightly plan reads in full (`in_play`): everyone but the settled people (`store/settled.py`)."""

    frames: dict[str, pl.DataFrame]  # the latest snapshot's records of the people in play (latest_frames' shape)
    identity: IdentityResult  # the matcher's answer over everyone, its pairings limited to the people in play
    outside: Outside  # the settled people left out, counted by case
    settled_keys: pl.DataFrame  # (key): their keys, whose base rows are not read either


_IDENTITY_COLUMNS = {"ghl_contacts": ("contact_id", "location_id", "email"), "te_customers": ("email", "email_raw")}


def plan_generation(policy: Policy, list_tags: ListNames, home: Sequence[str], region: str) -> str:
    """A digest of what a plan reads for everyone alike: when it changes, nobody stays settled (store/settled.py).
    The guards are left out: they weigh a whole plan (whose figures count the settled people), never a person's ops."""
    parts = [SETTLED_VERSION, policy.model_dump_json(exclude={"guards"}), json.dumps(sorted(list_tags.label.items())),
             json.dumps(sorted(list_tags.aliases.items())), list_tags.prefix, json.dumps(sorted(home)), region]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def in_play(store: Store, locations: Sequence[str], decided: IdentityInput, failed: dict[str, str],
            unreadable: Sequence[dict[str, Any]], generation: str, today: dt.date, *,
            everyone: bool = False) -> Scope:
    """The people tonight's plan reads: identity over everyone on a few columns, then every person not settled
    (`Settled.unchanged`: same records, tasks, facts, pairing and base row as when an applied plan had nothing for
    them, in this generation), those with a pending decision, and the settled people who share an email with one
    of them (the merge's re-keys and the email checks compare people with each other); `everyone` (a full sweep,
    or nobody settled yet) reads all."""
    covered = pl.col("location_id").is_in(list(locations))
    slim = {entity: store.latest_snapshot(entity, without=columns_but(entity, *kept))
            for entity, kept in _IDENTITY_COLUMNS.items()}
    slim["ghl_contacts"] = slim["ghl_contacts"].filter(covered)
    identity = match_identities(slim["ghl_contacts"], slim["te_customers"], decided.id_map, locations=locations,
                                apart=decided.apart)
    identity = held_for_snapshot(identity, failed, unreadable)
    settled = Settled(store)
    who = people(identity)
    unchanged = (settled.unchanged(who, generation, today.isoformat()) if not everyone and settled.count()
                 else pl.DataFrame(schema=UNCHANGED))
    if unchanged.height == 0:
        return Scope(latest_frames(store, locations), identity, Outside(), unchanged.select("key"))
    unchanged = unchanged.join(Decisions(store).pending().select("key"), on="key", how="anti")
    unchanged = unchanged.join(_neighbours(store, who, unchanged, slim["ghl_contacts"]), on="key", how="anti")
    playing = who.join(unchanged, on="key", how="anti")
    # the records of held people are read too: the checks compare them with the others (two contacts, one email)
    held_ids = pl.DataFrame({"contact_id": sorted(identity.held_contact_ids)}, schema={"contact_id": pl.String})
    held_emails = pl.DataFrame({"email": sorted(identity.held_emails)}, schema={"email": pl.String})
    ids = pl.concat([playing.select("contact_id").drop_nulls(), held_ids]).unique()
    emails = pl.concat([playing.select("email").drop_nulls(), held_emails]).unique()
    only = {"ghl_contacts": ids, "te_customers": emails,
            "ghl_tasks": pl.concat([ids, store.orphaned("ghl_tasks")]).unique(),
            "ghl_notes": pl.concat([ids, store.orphaned("ghl_notes")]).unique()}
    outside = Outside(dict(unchanged.group_by("person_case").len().iter_rows()),
                      on_tinyemail=int(unchanged["on_tinyemail"].sum()), on_ghl=int(unchanged["on_ghl"].sum()))
    return Scope(latest_frames(store, locations, only), _restricted(identity, playing), outside,
                 unchanged.select("key"))


def _neighbours(store: Store, who: pl.DataFrame, unchanged: pl.DataFrame, ghl: pl.DataFrame) -> pl.DataFrame:
    """(key) of the settled people who share an email with someone in play: their TinyEmail email, their contact's
    email or their base email is an email of an in-play person now or in the base (a re-key, an email that moved,
    two contacts with one email; law 9 of tests/unit/test_merge_properties.py)."""
    playing = who.join(unchanged, on="key", how="anti")
    base = store._frame("SELECT key, email FROM base").cast({"key": pl.String, "email": pl.String})
    contact_email = ghl.select("contact_id", ghl_email="email")
    emails = pl.concat([
        playing.select("email"),
        playing.join(contact_email, on="contact_id").select(email="ghl_email"),
        base.join(unchanged, on="key", how="anti").select("email"),
    ]).drop_nulls().unique()
    settled = (who.join(unchanged, on="key", how="semi").join(contact_email, on="contact_id", how="left")
               .join(base.select("key", base_email="email"), on="key", how="left"))
    near = emails["email"].implode()
    return settled.filter(pl.col("email").is_in(near) | pl.col("ghl_email").is_in(near)
                          | pl.col("base_email").is_in(near)).select("key")


def _restricted(identity: IdentityResult, playing: pl.DataFrame) -> IdentityResult:
    """The identity's pairings and unmatched records of the people in play; reviews and held people whole."""
    keys, ids = playing["key"].implode(), playing["contact_id"].drop_nulls().implode()
    return dataclasses.replace(identity, matched=identity.matched.filter(pl.col("key").is_in(keys)),
                               unmatched_ghl=identity.unmatched_ghl.filter(pl.col("contact_id").is_in(ids)),
                               unmatched_te=identity.unmatched_te.filter(pl.col("key").is_in(keys)))


def settle_rows(store: Store, identity: IdentityResult, marked: pl.DataFrame, unsettled: pl.Series,
                cases: pl.DataFrame | None, today: dt.date) -> pl.DataFrame:
    """SETTLE rows of the people in play this plan has nothing for: no op of any status, no conflict (a skipped one
    included), not held back; with the digests of what it read of them and their case."""
    who = people(identity).join(marked.select("key").unique(), on="key", how="anti")
    who = who.filter(~pl.col("key").is_in(unsettled.implode()) & ~pl.col("key").is_in(sorted(identity.held_keys)))
    if cases is None or who.height == 0:
        return pl.DataFrame(schema=SETTLE)
    digests = Settled(store).digests(who, today.isoformat())
    # someone with a record on neither side (a pairing whose contact and customer are gone) stays in play
    digests = digests.filter(pl.col("ghl_hash").is_not_null() | pl.col("te_hash").is_not_null())
    return digests.join(cases.select("key", person_case="case"), on="key", how="inner").select(list(SETTLE))


def _plan(settings: Settings, store: Store, run_id: str, locations: list[str], policy: Policy, approve: bool,
          docs: bool, snapshot: SnapshotResult | None, frames: dict[str, pl.DataFrame] | None = None,
          base_keys: Sequence[str] | None = None, everyone: bool = False) -> PlanRun:
    if snapshot is None and frames is None:
        _check_snapshot_exists(store, locations)
    today = store.clock().date()
    home = Journal(store).home_lists()
    list_tags = store.list_tags(policy.tags.list_prefix) if policy.tags.list_sync != "off" else ListNames()
    decided = identity_input(store, store.load_id_map())  # the team's identity decisions (`recon identity`)
    generation = plan_generation(policy, list_tags, home, settings.default_region)
    if frames is None:
        # a nightly plan: only the people in play are read in full (store/settled.py)
        failed, unreadable = snapshot_findings(store, snapshot)
        scope = in_play(store, locations, decided, failed, unreadable, generation, today, everyone=everyone)
        frames, identity, outside = scope.frames, scope.identity, scope.outside
    else:
        failed, unreadable, scope, outside = {}, [], None, Outside()
    frames = without_home_lists(frames, home)
    frames, folds = folded_frames(frames)  # one spelling per tag key; the others are folded away (model/tags.py)
    ghl_spelled = frames["ghl_contacts"]  # the tags as GHL spells them, for the respelling ops
    frames = {**frames, "ghl_contacts": with_list_ids(ghl_spelled, list_tags)}  # list:<label> -> list:<id>
    if scope is None:
        identity = match_identities(frames["ghl_contacts"], frames["te_customers"], decided.id_map,
                                    locations=locations, apart=decided.apart)
    frames = with_local_phones(frames, identity, settings.default_region)
    if scope is not None:
        stored = store.load_base(presence=True, except_keys=scope.settled_keys)
    else:
        stored = store.load_base(presence=True)
        if base_keys is not None:
            # one person (sync_contact): only its base rows are in play, nobody else "came back empty"
            stored = stored.filter(pl.col("key").is_in(list(base_keys)))
    base = planning_base(stored, identity)
    ghl_side, te_side = merge_sides(identity, frames["ghl_contacts"], frames["te_customers"])
    ghl_side, te_side = canonical_sides(ghl_side, te_side, policy.active_custom())  # model/custom_fields.py
    history = GuardHistory.from_stats(store.comparable_stats(locations, policy.guards.history_runs))
    merged = plan(base, te_side, ghl_side, policy, ghl_tasks=frames["ghl_tasks"], created=Journal(store).created(),
                  today=today, guard_history=history, outside=outside)
    merged = dataclasses.replace(merged, stats=dict(sorted(
        {**merged.stats, "people_in_play": merged.stats["people"] - outside.people}.items())))
    merged = with_decisions(merged, Decisions(store).pending(), te_side, ghl_side, policy)
    merged = with_respellings(merged, ghl_spelled, list_tags, ghl_side["key"])
    merged = with_folds(merged, folds, ghl_side, te_side)
    unsettled = merged.conflicts["key"]  # before skipped conflicts are left out: a skip still stands open
    log = ConflictLog(store)
    shown = as_held(merged.conflicts, people(identity), frames["ghl_contacts"], frames["te_customers"])
    merged = dataclasses.replace(merged, conflicts=without_skipped(shown, log.skips()))
    report = _check(frames, merged, policy, approve, run_id, settings.data_dir, today, docs, history)
    marked = apply_quarantine(merged.ops, report.quarantined, people=identity.matched.select("key", "email"))
    store.save_check_results(run_id, report.to_frame())
    store.save_review(identity.review, run_id)
    review = conflict_review(store, log, run_id, merged.conflicts, identity, ghl_side, te_side)
    plan_path, conflicts_path = write_plan_files(run_dir(settings.data_dir, run_id), marked, review)
    settle = settle_rows(store, identity, marked, unsettled, merged.cases, today) if scope is not None else None
    save_state(run_dir(settings.data_dir, run_id), _state_frames(base, te_side, ghl_side, identity, settle, generation))
    write_review_files(store, run_dir(settings.data_dir, run_id), run_id, frames, identity, marked, people(identity),
                       (ghl_side, te_side))
    approved = approve and merged.held
    result = PlanRun(run_id, HELD if merged.held and not approve else PLANNED, merged.held_reasons, approved,
                     marked, merged.conflicts, merged.stats, report, identity.review,
                     snapshot.run_id if snapshot else None, plan_path, conflicts_path, failed, tuple(unreadable))
    store.set_plan(run_id, summary(result, identity))
    return result


def with_local_phones(frames: dict[str, pl.DataFrame], identity: IdentityResult,
                      default_region: str) -> dict[str, pl.DataFrame]:
    """The snapshot frames with matched records' phones read in the person's country (`localise_phones`), for
    the checks and the merge alike."""
    ghl, te = localise_phones(identity, frames["ghl_contacts"], frames["te_customers"], default_region)
    return {**frames, "ghl_contacts": ghl, "te_customers": te}


def conflict_review(store: Store, log: ConflictLog, run_id: str, conflicts: pl.DataFrame, identity: IdentityResult,
                    ghl_side: pl.DataFrame, te_side: pl.DataFrame) -> pl.DataFrame:
    """The rows of this run's conflicts.csv (`engine/conflicts.py`): who each conflict is about and since when it
    is open, recorded in the store for the next run and `recon conflicts list`."""
    who = people(identity)
    now = store.clock()
    tracked = track(conflicts, log.seen(), now, who["key"])
    review = review_rows(conflicts, person_context(who, ghl_side, te_side), tracked, now.date())
    log.record(tracked, review, run_id)
    return review


def without_home_lists(frames: dict[str, pl.DataFrame], home: list[str]) -> dict[str, pl.DataFrame]:
    """TinyEmail membership of the list our created customers join is ours, never synced: left out of `lists`."""
    if not home:
        return frames
    te = frames["te_customers"].with_columns(
        pl.col("lists").list.set_difference(pl.lit(home, pl.List(pl.String))).list.sort())
    return {**frames, "te_customers": te}


def plan_person(settings: Settings, store: Store, *, location_id: str, frames: dict[str, pl.DataFrame],
                keys: Sequence[str], policy: Policy | LoadedPolicy | None = None) -> PlanRun:
    """Plan one person (the `sync-contact` flow) from frames read just now (`contact_recon/stages/sync.py`), with
    the same identity, merge, checks and quarantine as a nightly plan; `keys` are the person's possible base keys."""
    loaded = resolve_policy(settings, policy)
    policy = loaded.policy
    run_id = store.start_run("sync", [location_id], policy_version=loaded.version, policy_source=loaded.source)
    try:
        result = _plan(settings, store, run_id, [location_id], policy, False, False, None, frames=frames,
                       base_keys=keys)
    except BaseException as exc:
        store.finish_run(run_id, FAILED, error=str(exc) or type(exc).__name__)
        raise
    store.finish_run(run_id, result.status, None, held_reasons=result.held_reasons, approved=False)
    return result


def latest_frames(store: Store, locations: Sequence[str],
                  only: Mapping[str, pl.DataFrame] | None = None) -> dict[str, pl.DataFrame]:
    """The latest snapshot of every entity, GHL ones limited to `locations`, with `raw` (the API payloads, about
    half of the frames' memory) null except on the records whose tags are folded: only `folded_frames` reads it
    after the snapshot, for the order the system holds their tags in (model/tags.py `fold_frame`). With `only`,
    an entity's records whose value of its one-column frame is there (`Store.latest_snapshot(only=...)`)."""
    covered = pl.col("location_id").is_in(list(locations))
    only = only or {}
    frames = {entity: store.latest_snapshot(entity, without=("raw",), only=only.get(entity)).filter(covered)
              if spec.has_location else store.latest_snapshot(entity, without=("raw",), only=only.get(entity))
              for entity, spec in ENTITIES.items()}
    return {entity: _with_fold_payloads(store, entity, frame, covered) for entity, frame in frames.items()}


def _with_fold_payloads(store: Store, entity: str, frame: pl.DataFrame, covered: pl.Expr) -> pl.DataFrame:
    """`frame` in its records.py shape: `raw` read back for the records `fold_frame` folds, null for the others."""
    spec = ENTITIES[entity]
    keys = [spec.id_column, "location_id"] if spec.has_location else [spec.id_column]
    folded = frame.filter(duplicated(frame)) if "tags" in frame.columns else frame.clear()
    raw = store.latest_snapshot(entity, ids=folded[spec.id_column].to_list()) if folded.height else None
    if raw is None:
        return frame.with_columns(raw=pl.lit(None, pl.String)).select(spec.schema.names())
    raw = raw.filter(covered) if spec.has_location else raw
    return frame.join(raw.select(*keys, "raw"), on=keys, how="left", maintain_order="left").select(spec.schema.names())


def _check_snapshot_exists(store: Store, locations: Sequence[str]) -> None:
    parts = store.snapshot_parts()
    written = set(zip(parts["entity"].to_list(), parts["location_id"].to_list(), strict=True))
    missing = [f"ghl:{loc}" for loc in locations if ("ghl_contacts", loc) not in written]
    missing += ["tinyemail"] if ("te_customers", NO_LOCATION) not in written else []
    if missing:
        raise NoSnapshot(f"no snapshot to reuse for {', '.join(missing)}: run `recon snapshot` (or plan without "
                         f"--reuse-snapshot) first")


def with_decisions(merged: MergeResult, decisions: pl.DataFrame, te_side: pl.DataFrame, ghl_side: pl.DataFrame,
                   policy: Policy) -> MergeResult:
    """Add the data team's pending decisions (`recon conflicts import`) to a plan: their ops, unless the merge
    already writes that field of that person, and without the conflict rows they settle (skips aside)."""
    if decisions.height == 0:
        return merged
    extra = decision_ops(decisions, te_side, ghl_side, consent=policy.consent)
    extra = extra.join(merged.ops.select("target", "key", "field"), on=["target", "key", "field"], how="anti",
                       nulls_equal=True)
    # a presence conflict (null field) is decided under the field PRESENCE; a skip settles nothing here: it holds
    # while the conflict is unchanged (engine/conflicts.py without_skipped)
    answered = decisions.filter(pl.col("choice") != "skip").select("key", "field")
    keyed = field_key(merged.conflicts).join(answered, on=["key", "field"], how="anti")
    settled = keyed.with_columns(field=pl.when(pl.col("field") != PRESENCE).then(pl.col("field")))
    return MergeResult(sort_ops(pl.concat([merged.ops, extra])), settled, merged.stats, merged.held_reasons,
                       merged.cases)


def with_respellings(merged: MergeResult, as_held: pl.DataFrame, list_tags: ListNames, keys: pl.Series) -> MergeResult:
    """Add the ops that respell old GHL list tags once (`model/list_tags.respelling_ops`)."""
    if not list_tags.aliases:
        return merged
    ghl_tags = merged.ops.filter((pl.col("target") == "ghl") & pl.col("kind").is_in(["tag_add", "tag_remove"]))
    touched = ghl_tags.select("key", tag=pl.coalesce("new", "expected"))
    extra = respelling_ops(as_held, list_tags, keys.to_list(), touched)
    if extra.height == 0:
        return merged
    return MergeResult(sort_ops(pl.concat([merged.ops, with_ids(extra)])), merged.conflicts, merged.stats,
                       merged.held_reasons, merged.cases)


def folded_frames(frames: dict[str, pl.DataFrame]) -> tuple[dict[str, pl.DataFrame], TagFolds]:
    """The snapshot frames with every record's tags folded to one spelling per tag key, and the folds
    (`model/tags.py fold_frame`: the spelling there first stays)."""
    ghl, ghl_folds = fold_frame(frames["ghl_contacts"], "contact_id")
    te, te_folds = fold_frame(frames["te_customers"], "email")
    return {**frames, "ghl_contacts": ghl, "te_customers": te}, TagFolds(ghl_folds, te_folds)


@dataclass(frozen=True)
class TagFolds:
    """The spellings a run folds away: GHL (contact_id, tag) and TinyEmail (email, tag) rows."""

    ghl: pl.DataFrame
    tinyemail: pl.DataFrame


def with_folds(merged: MergeResult, folds: TagFolds, ghl_side: pl.DataFrame, te_side: pl.DataFrame) -> MergeResult:
    """Add the ops that fold a second spelling of a tag away, once (`model/tags.py fold_ops`), for the people in
    play (held-back people are left out, as the merge leaves them), and count them (stat `tags_folded`)."""
    ghl = folds.ghl.join(ghl_side.select("key", "contact_id"), on="contact_id").select("key", "tag")
    te = folds.tinyemail.join(te_side.select("key", "email"), on="email").select("key", "tag")
    extra = pl.concat([fold_ops(ghl, "ghl"), fold_ops(te, "tinyemail")])
    stats = {**merged.stats, "tags_folded": extra.height}
    ops = sort_ops(pl.concat([merged.ops, with_ids(extra)])) if extra.height else merged.ops
    return MergeResult(ops, merged.conflicts, dict(sorted(stats.items())), merged.held_reasons, merged.cases)


def _state_frames(base: pl.DataFrame, te_side: pl.DataFrame, ghl_side: pl.DataFrame, identity: IdentityResult,
                  settle: pl.DataFrame | None, generation: str) -> dict[str, pl.DataFrame]:
    who = people(identity)
    keys = pl.concat([who.select("key"), base.select("key")]).unique().sort("key")  # the keys this plan read
    settle = settle if settle is not None else pl.DataFrame(schema=SETTLE)  # a sync settles nobody
    return {"base": base, "te_side": te_side, "ghl_side": ghl_side, "people": who, "rekeys": identity.rekeys,
            "id_map_new": identity.new_id_map, "in_play": keys,
            "settle": settle.with_columns(generation=pl.lit(generation, pl.String))}


def people(identity: IdentityResult) -> pl.DataFrame:
    """How the apply stage addresses each person key: TinyEmail email, GHL contact id and location."""
    schema = pl.Schema({"key": pl.String, "email": pl.String, "contact_id": pl.String, "location_id": pl.String})
    matched = identity.matched.select("key", "email", "contact_id", "location_id")
    ghl_only = identity.unmatched_ghl.select(key="contact_id", email=pl.lit(None, pl.String),
                                             contact_id="contact_id", location_id="location_id")
    te_only = identity.unmatched_te.select("key", "email", contact_id=pl.lit(None, pl.String),
                                           location_id=pl.lit(None, pl.String))
    return pl.concat([f.cast(schema) for f in (matched, ghl_only, te_only)]).unique("key", keep="first").sort("key")


def planning_base(base: pl.DataFrame, identity: IdentityResult) -> pl.DataFrame:
    """The stored base (MERGE_SIDE) as this run plans against it: held keys left out, presence flags added,
    this run's re-keys applied (a re-key whose new key already has a base row is left alone, as in
    `Store.rekey_base`); a re-keyed row was not in GHL at the base."""
    derived = {"in_ghl": ~pl.col("key").str.starts_with(TE_KEY_PREFIX),
               "in_tinyemail": pl.col("email").str.strip_chars().fill_null("") != ""}
    # stored presence flags win; rows saved before they existed (null) get them derived
    kept = base.filter(~pl.col("key").is_in(sorted(identity.held_keys))).with_columns(
        **{name: pl.coalesce(pl.col(name), expr) if name in base.columns else expr for name, expr in derived.items()})
    # re-keys of this run's matcher, before the merge: not in GHL at the base (Store.rekey_base keeps presence)
    pairs = identity.rekeys.join(kept.select("key"), left_on="new_key", right_on="key", how="anti")
    moved = (kept.join(pairs, left_on="key", right_on="old_key")
             .with_columns(key=pl.col("new_key"), contact_id=pl.col("new_key"), in_ghl=pl.lit(False))
             .select(kept.columns))
    staying = kept.join(pairs, left_on="key", right_on="old_key", how="anti")
    return pl.concat([staying, moved]).sort("key")


def _check(frames: dict[str, pl.DataFrame], merged: MergeResult, policy: Policy, approve: bool, run_id: str,
           data_dir: Path, today: dt.date, docs: bool, history: GuardHistory) -> CheckReport:
    # an approved run checks the guard as a warning: the explicit override of checks/suites.py
    thresholds = Thresholds(severity={GUARD_EXPECTATION: "warning"}) if approve else Thresholds()
    docs_dir = private_dir(run_dir(data_dir, run_id)) / DOCS_DIR  # per run: an old report keeps its own docs
    try:
        return run_checks(frames, merged.ops, thresholds, run_id, data_dir, today=today, guards=policy.guards,
                          people=merged.stats.get("people"), guard_history=history, docs=docs, docs_dir=docs_dir)
    finally:
        private_tree(Path(data_dir) / GX_DIR)  # GX writes its project with the umask's modes
        private_tree(docs_dir)


def write_plan_files(directory: Path, marked: pl.DataFrame, conflicts: pl.DataFrame) -> tuple[Path, Path]:
    """`plan.parquet` and `conflicts.csv` under `directory`, each written whole or not at all."""
    private_dir(directory)
    plan_path, conflicts_path = directory / PLAN_FILE, directory / CONFLICTS_FILE
    atomic_write(plan_path, marked.write_parquet)
    atomic_write(conflicts_path, guarded(conflicts).write_csv)  # a person opens it: formula-like text made inert
    return plan_path, conflicts_path



def summary(result: PlanRun, identity: IdentityResult) -> dict[str, Any]:
    """What the run row's plan_json records about a plan run (the report's numbers)."""
    quarantined = result.quarantined
    by_expectation = (quarantined.select(pl.col("quarantined_by").str.split(",")).explode("quarantined_by")
                      .group_by("quarantined_by").len().sort("quarantined_by").iter_rows())
    return {
        "snapshot_run_id": result.snapshot_run_id, "ops": result.plan.height, "conflicts": result.conflicts.height,
        "quarantined": quarantined.height, "quarantined_by": dict(by_expectation),
        "held_reasons": list(result.held_reasons), "approved": result.approved, "stats": result.stats,
        "review": identity.review.height, "unmatched_ghl": identity.unmatched_ghl.height,
        "unmatched_tinyemail": identity.unmatched_te.height, "plan_file": str(result.plan_path),
        "conflicts_file": str(result.conflicts_path),
        "docs_index": str(result.checks.docs_index) if result.checks.docs_index else None,
        "failed_locations": result.failed_locations, "unreadable": list(result.unreadable),
    }


def load_plan(data_dir: str | Path, run_id: str) -> pl.DataFrame:
    """A plan run's marked ops, as written to its plan.parquet."""
    return pl.read_parquet(run_dir(data_dir, run_id) / PLAN_FILE)


def ops_to_apply(marked: pl.DataFrame, approved: bool, kinds: frozenset[str] | None = None) -> pl.DataFrame:
    """The ops the apply stage may write: planned ones, and on an approved run also those that only the
    guard expectation held back (approval releases the guard, never a bad record); with `kinds`, only the
    guard-held ops of those kinds (the approved guards', `Approval.released_kinds`)."""
    ok = pl.col("status") == PLANNED
    if approved:
        released = pl.col("quarantined_by") == GUARD_EXPECTATION
        ok = ok | (released if kinds is None else released & pl.col("kind").is_in(sorted(kinds)))
    return marked.filter(ok)


__all__ = ["APPROVED", "FAILED", "HELD", "PLANNED", "NoSnapshot", "PlanRun", "load_plan", "ops_to_apply",
           "plan_run", "planning_base", "run_dir"]
