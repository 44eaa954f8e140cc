"""The three-way merge: base, TinyEmail now and GHL now in; a plan of operations, conflicts and stats out.

Pure: polars frames and a `Policy` in, a `MergeResult` out; no I/O, no clock (the caller passes
`today`), the same inputs always give the same ops in the same order with the same ids.

Inputs are `records.MERGE_SIDE` frames keyed by `key` (the GHL contact id, or `te:<email>` for a
TinyEmail customer that matches no GHL contact). `base` is the last reconciled state, one row per
person, optionally with two booleans `in_ghl` / `in_tinyemail` saying on which sides the person
existed then (not in MERGE_SIDE; when absent: `in_ghl` = the key is not `te:...`, `in_tinyemail` = the
base row has an email). "A valid base" for a person means it was on both sides at the base.

The algorithm
-------------
1. Normalise: text is trimmed, and `""`, whitespace and null are one value (blank); comparisons are
   null-aware (blank == blank). Email and consent are text too. Tags and list names are compared as sets
   of tag keys (`contact_recon/model/tags.py`: case-folded, trimmed, inner spaces collapsed), so `VIP` and
   `vip` are one tag; each side keeps its own spelling (table C).
2. Re-key: a TinyEmail row keyed `te:<email>` whose email is the base email of exactly one base person
   that has no TinyEmail row now is that person (its GHL contact was deleted or its email changed).
3. Join the three key columns (full outer, with row numbers) and give every person a presence case
   (table A). Each side's values are gathered by row number when needed, one text field at a time,
   so the three snapshots are never copied whole into one frame.
4. Per case, plan: fields (table B), tag/list sets (table C), consent (table D), creates and deletes
   (table A), identity (A), tasks and notes (table E).
5. Give every op its content hash, sort (kind, target, key, field, values), count, evaluate guards (F).

What the state module stores after applying (the next base), so that planning again is empty: the
agreed values; for a field in the conflict table the old base value if the base was valid, else blank;
tags as the union of both sides by key (with the list tags; TinyEmail's spelling where both have one) and
TinyEmail's lists; as consent the tight value
if either side is tight; `in_ghl` / `in_tinyemail` as now. Task and note ops that were applied go into
`created` (key, rule, object id). `tests/support/merge.py::next_base` is the reference.

A. Presence (t / g: on TinyEmail / GHL now; bt / bg: on that side at the base)

| t g | also                                   | case              | plan                                        |
|-----|----------------------------------------|-------------------|---------------------------------------------|
| 1 1 |                                        | matched           | tables B-E; GHL email != base email ->      |
|     |                                        |                   | identity_review op (reported)               |
| 1 0 | bg                                     | deleted_in_ghl    | edited on TinyEmail since the base: create  |
|     |                                        |                   | GHL again (an edit beats a delete); else    |
|     |                                        |                   | delete.on_ghl_delete: report (conflict row) |
|     |                                        |                   | or unsubscribe (consent_tighten)            |
| 1 0 | email = old email of a person whose    | identity_pending  | nothing: the identity op covers it          |
|     | GHL email changed                      |                   |                                             |
| 1 0 | otherwise                              | new_on_tinyemail  | create GHL contact (create.tinyemail_to_ghl)|
| 0 1 | GHL email blank, unchanged             | ghl_without_email | nothing: no TinyEmail counterpart possible  |
| 0 1 | GHL email changed since the base, bt   | identity_pending  | the identity_review op only                 |
| 0 1 | bt                                     | tinyemail_missing | nothing, a conflict row: TinyEmail has no   |
|     |                                        |                   | delete, so a missing customer is an anomaly |
| 0 1 | otherwise                              | new_on_ghl        | create TinyEmail customer                   |
|     |                                        |                   | (create.ghl_to_tinyemail)                   |
| 0 0 | in the base                            | gone              | nothing                                     |

A create copies the other side's record (tables B-D do not run for it): the non-blank fields, every
tag except list and fact tags, lists <-> list tags (unless lists are off), and consent only when tight
(GHL dnd / TinyEmail Unsubscribed); a create never writes a loose consent value.

The identity matcher (`contact_recon/engine/identity.py`) normally keeps a deleted contact's TinyEmail customer under
its contact key and holds email changes back; step 2 and the identity rows make this module safe on
its own too. A held-back key present only in the base is `gone`: nothing is planned for it.

B. A text field of a matched person (t, g, b: its normalised values; "changed": differs from b;
valid: the person was on both sides at the base; none: first run, or newly on one side)

| rule       | base  | situation                            | op / conflict          | reason                      |
|------------|-------|--------------------------------------|------------------------|-----------------------------|
| owner ghl  | any   | t != g (even if TinyEmail changed t, | TinyEmail := g         | owned_by_ghl                |
|            |       | even if g is blank)                  |                        |                             |
| owner te   | any   | t != g                               | GHL := t               | owned_by_tinyemail          |
| shared     | valid | neither changed                      | nothing                |                             |
| shared     | valid | only TinyEmail changed (a clear too) | GHL := t               | tinyemail_changed           |
| shared     | valid | only GHL changed                     | TinyEmail := g         | ghl_changed                 |
| shared     | valid | both changed, t == g                 | nothing, no conflict   |                             |
| shared     | valid | both changed, t != g, tie ghl        | TinyEmail := g         | both_changed_ghl_wins       |
| shared     | valid | both changed, t != g, tie tinyemail  | GHL := t               | both_changed_tinyemail_wins |
| shared     | valid | both changed, t != g, tie manual     | conflict row only      | both_changed_manual         |
| shared     | none  | t == g                               | nothing                |                             |
| shared     | none  | g blank, t not                       | GHL := t               | initial_fill_ghl            |
| shared     | none  | t blank, g not                       | TinyEmail := g         | initial_fill_tinyemail      |
| shared     | none  | both non-blank, differ; fill_blanks, | conflict row only      | initial_conflict            |
|            |       | tie manual                           |                        |                             |
| shared     | none  | ...; fill_blanks, tie ghl; prefer_ghl| TinyEmail := g         | initial_ghl_preferred       |
| shared     | none  | ...; fill_blanks, tie tinyemail;     | GHL := t               | initial_tinyemail_preferred |
|            |       | prefer_tinyemail                     |                        |                             |

Custom fields (`policy.custom_fields`, model/custom_fields.py) are text fields of this table too, named
`custom:<fieldKey>` and taken from each side's `custom` values (in the policy's names: the plan stage's
`canonical_sides`), with their own owner and tie-break. Two cases come first and write nothing:

| situation                                                  | op / conflict          | reason                  |
|------------------------------------------------------------|------------------------|-------------------------|
| TinyEmail holds several tags of the field's pattern        | conflict row only      | custom_tags_ambiguous   |
| GHL's value unknown (its field ids could not be named)     | conflict row only      | custom_field_unresolved |

Why fill_blanks follows the tie-break on a disagreement: a conflict keeps the base value, which is blank
without a base, so on the next run both sides "changed" and the tie-break would decide anyway; deciding
the same way on the first run keeps the two runs consistent. Fields whose tie-break is manual (by default
the names and the phone) go to the conflict table on the first run and stay there.

A conflict leaves the base value in place (the state module keeps the old value of a valid base, and a
blank without one), so it is reported again until a person settles it; it never blocks other fields.

C. Tags and lists of a matched person, as sets of tag keys (a tag's key: case-folded, trimmed, inner
whitespace runs as one space; `model/tags.py`). Each tag has a namespace by its key's prefix (the prefixes
compared by key too, so `GHL:Hot` is GHL-owned): a configured
fact tag (e.g. `ghl:open-task`) -> fact; a tag a custom field's `tag_pattern` matches -> custom (the custom
field's, table B: never a tag op, never copied by a create); `list_prefix` -> list; `ghl_owned_prefixes` -> ghl;
`tinyemail_owned_prefixes` -> tinyemail; otherwise shared. A TinyEmail list L is the member
`<list_prefix>L` of the list namespace; on TinyEmail, tags in the list namespace are ignored (lists are
the truth there); on GHL, fact-namespace tags are ignored (the facts are computed from GHL tasks).
The desired set R per namespace (T, G, B: the sets on TinyEmail, on GHL, at a valid base, else B = {}):

| namespace             | desired R                 | meaning                                             |
|-----------------------|---------------------------|-----------------------------------------------------|
| shared; list (both)   | (T & G) | ((T | G) - B)   | added on either side since the base -> added on the |
|                       |                           | other; removed on either -> removed from the other; |
|                       |                           | no valid base (B = {}): the union                   |
| list tinyemail_to_ghl | T                         | GHL list tags mirror TinyEmail lists                |
| tinyemail-owned       | T                         | GHL follows                                         |
| ghl-owned             | G                         | TinyEmail follows                                   |
| fact                  | facts of the GHL tasks    | open / overdue task -> TinyEmail tag; cleared after |

Ops: GHL tag_add R - G, tag_remove G - R (not for ghl-owned/fact); TinyEmail tag_add/list_add R - T and
tag_remove/list_remove T - R (not for tinyemail-owned). Spellings: a tag already on a side keeps that side's
spelling (a change of case alone on one side is no change: its key is in T, G and B alike); an add is written
in the spelling of the side it came from, a removal names the target's own spelling. A side holding two
spellings of one key counts once here (the first in its list); the plan stage folds such records before the
merge (`contact_recon/stages/plan.py`, fold ops that are not the merge's). A tag added on one side and
removed on the other cannot happen (added means not in B, removed means in B). Facts are managed only when
`ghl_tasks` is given (overdue only with `today` too); otherwise fact tags are left alone.

D. Consent (tight: TinyEmail unsubscribed/bounced/spam, GHL dnd; blank and TinyEmail "inactive" are not
tight, both configurable in `policy.consent`)

| TinyEmail | GHL   | tight at a valid base | op                              | conflict (needs a human)      |
|-----------|-------|-----------------------|---------------------------------|-------------------------------|
| tight     | loose | no / no base          | GHL consent_tighten -> dnd      |                               |
| loose     | tight | no / no base          | TinyEmail consent_tighten ->    |                               |
|           |       |                       | unsubscribed                    |                               |
| tight     | loose | yes                   | GHL consent_tighten (tight wins)| consent_loosened_on_ghl       |
| loose     | tight | yes                   | TinyEmail consent_tighten       | consent_loosened_on_tinyemail |
| loose     | loose | yes                   | none: never re-subscribed, and  | consent_loosened_on_both      |
|           |       |                       | a joint human act not undone    |                               |
| equal tightness otherwise               | | none                            |                               |

No op ever writes a loose value: nothing in a plan turns consent back on.

E. GHL tasks and notes (each rule switchable; event rules never fire on the first run, i.e. an empty
base, which only records the state). An event is judged against the base; a (key, rule) already in
`created` (the base's memory of what we created) is never created again, so a task a person deleted or
completed is not recreated, and no op ever reopens one. Events only for people who are (or are being
created) in GHL.

| event (since the base)                                  | rule             | op                               |
|--------------------------------------------------------|-------------------|---------------------------------|
| on TinyEmail now, not at the base, status subscribed   | new_subscriber    | task_create                     |
| TinyEmail tight now, not tight at the base (unsub/spam)| unsubscribe_note  | note_create with status and date|
| same, bounced                                          | bounce_note       | note_create with date           |
| a configured TinyEmail tag present now, not at the base| tag:<tag>         | note_create or task_create      |
|   (`TagTrigger.tag`, by tag key; named by its spelling) |                   |                                 |

A task this plan creates is an open task the moment it exists: the open-task fact tag goes to TinyEmail in the
same plan (`_new_task_facts`), so the next run has nothing left to do.

F. Guards (on the plan; `contact_recon/engine/guards.py` decides the share guards). A share guard's figure is
the number of distinct people with an op of its kinds (consent_tighten: deletes or inactivations; updates;
tag or list removals) out of all people in play; it trips when the figure is at least `guards.min_people`,
above its share (5%, 20%, 10% by default) and, given the location's history (`guard_history`), above
`guards.median_multiple` times the usual figure of its recent comparable runs. A side that came back empty
while the base has people on it trips `side_empty`. A tripped guard adds a reason to `held_reasons` (its
name before the first ':', then the figure, the usual figure and the threshold); the run is held until
approved.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import polars as pl

from contact_recon.engine.guards import NO_HISTORY, GuardHistory, tripped
from contact_recon.model.custom_fields import AMBIGUOUS, HELD, PLACEHOLDER, column, is_custom, value_column
from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.ops import (
    CONFLICTS_SCHEMA,
    Kind,
    Op,
    canonical_json,
    create_payload,
    ops_from_frame,
    sort_ops,
    with_ids,
)
from contact_recon.model.policy import GUARD_KINDS, FieldRule, Policy, TagTrigger
from contact_recon.model.records import MERGE_SIDE
from contact_recon.model.tags import fold, tag_key, tag_keys

CREATED_SCHEMA = pl.Schema({"key": pl.String(), "rule": pl.String(), "object_id": pl.String(),
                            "kind": pl.String()})
NEW_SUBSCRIBER, UNSUBSCRIBE_NOTE, BOUNCE_NOTE = "new_subscriber", "unsubscribe_note", "bounce_note"


class Reason(StrEnum):
    """Why an op or a conflict row exists: the named cases of the decision tables."""

    OWNED_BY_GHL = "owned_by_ghl"
    OWNED_BY_TINYEMAIL = "owned_by_tinyemail"
    TINYEMAIL_CHANGED = "tinyemail_changed"
    GHL_CHANGED = "ghl_changed"
    BOTH_CHANGED_GHL_WINS = "both_changed_ghl_wins"
    BOTH_CHANGED_TINYEMAIL_WINS = "both_changed_tinyemail_wins"
    BOTH_CHANGED_MANUAL = "both_changed_manual"
    INITIAL_FILL_GHL = "initial_fill_ghl"
    INITIAL_FILL_TINYEMAIL = "initial_fill_tinyemail"
    INITIAL_GHL_PREFERRED = "initial_ghl_preferred"
    INITIAL_TINYEMAIL_PREFERRED = "initial_tinyemail_preferred"
    INITIAL_CONFLICT = "initial_conflict"
    NEW_ON_TINYEMAIL = "new_on_tinyemail"
    NEW_ON_GHL = "new_on_ghl"
    EDIT_BEATS_DELETE = "edit_beats_delete"
    DELETED_IN_GHL = "deleted_in_ghl"
    TINYEMAIL_MISSING = "tinyemail_missing"
    GHL_EMAIL_CHANGED = "ghl_email_changed"
    GHL_EMAIL_REMOVED = "ghl_email_removed"
    GHL_DND = "ghl_dnd"
    CONSENT_LOOSENED_ON_GHL = "consent_loosened_on_ghl"
    CONSENT_LOOSENED_ON_TINYEMAIL = "consent_loosened_on_tinyemail"
    CONSENT_LOOSENED_ON_BOTH = "consent_loosened_on_both"
    NEW_TINYEMAIL_SUBSCRIBER = "new_tinyemail_subscriber"
    TINYEMAIL_TAG_ADDED = "tinyemail_tag_added"
    GHL_TASK_FACT = "ghl_task_fact"
    CUSTOM_TAGS_AMBIGUOUS = "custom_tags_ambiguous"
    CUSTOM_FIELD_UNRESOLVED = "custom_field_unresolved"
    # tags and lists: f"{namespace}_{added|removed}_on_{side}", f"{namespace}_initial_union",
    # f"{namespace}_owned_by_{side}"; consent from TinyEmail: f"tinyemail_{status}".


# Which side a field reason writes (None: a conflict row, no op).
FIELD_REASON_TARGET: dict[str, str | None] = {
    Reason.OWNED_BY_GHL: "tinyemail", Reason.OWNED_BY_TINYEMAIL: "ghl",
    Reason.TINYEMAIL_CHANGED: "ghl", Reason.GHL_CHANGED: "tinyemail",
    Reason.BOTH_CHANGED_GHL_WINS: "tinyemail", Reason.BOTH_CHANGED_TINYEMAIL_WINS: "ghl",
    Reason.BOTH_CHANGED_MANUAL: None,
    Reason.INITIAL_FILL_GHL: "ghl", Reason.INITIAL_FILL_TINYEMAIL: "tinyemail",
    Reason.INITIAL_GHL_PREFERRED: "tinyemail", Reason.INITIAL_TINYEMAIL_PREFERRED: "ghl",
    Reason.INITIAL_CONFLICT: None,
    Reason.CUSTOM_TAGS_AMBIGUOUS: None,
    Reason.CUSTOM_FIELD_UNRESOLVED: None,
}
_REASON_ENUM = pl.Enum(sorted(str(reason) for reason in FIELD_REASON_TARGET))
TIE_BREAK_REASON = {"ghl": Reason.BOTH_CHANGED_GHL_WINS, "tinyemail": Reason.BOTH_CHANGED_TINYEMAIL_WINS,
                    "manual": Reason.BOTH_CHANGED_MANUAL}
PREFERRED_REASON = {"ghl": Reason.INITIAL_GHL_PREFERRED, "tinyemail": Reason.INITIAL_TINYEMAIL_PREFERRED,
                    "manual": Reason.INITIAL_CONFLICT}


def initial_reason(rule: FieldRule, policy: Policy) -> Reason:
    """Two different non-blank values without a valid base: the preferred side, or the field's tie-break."""
    strategy = policy.initial.strategy
    return PREFERRED_REASON[strategy.removeprefix("prefer_") if strategy != "fill_blanks" else rule.tie_break]


@dataclass(frozen=True)
class MergeResult:
    ops: pl.DataFrame  # ops.OPS_SCHEMA, in plan order
    conflicts: pl.DataFrame  # ops.CONFLICTS_SCHEMA: for the data team
    stats: dict[str, int] = field(default_factory=dict)
    held_reasons: tuple[str, ...] = ()
    cases: pl.DataFrame | None = None  # (key, case): each planned person's case (`_case`)

    @property
    def held(self) -> bool:
        return bool(self.held_reasons)

    def op_list(self) -> list[Op]:
        return ops_from_frame(self.ops)


class _Sides(NamedTuple):
    base: pl.DataFrame
    te: pl.DataFrame
    ghl: pl.DataFrame


@dataclass(frozen=True)
class _Ctx:
    policy: Policy
    fields: tuple[FieldRule, ...]
    first_run: bool
    today: dt.date | None
    fact_tags: tuple[str, ...]  # every configured fact tag (namespace "fact")
    active_facts: tuple[str, ...]  # the fact tags this run can compute


@dataclass(frozen=True)
class Outside:
    """The people a plan leaves out because nothing changed for them (`store/settled.py`): counted, never merged."""

    cases: Mapping[str, int] = field(default_factory=dict)  # case -> people (all have a base row)
    on_tinyemail: int = 0  # of them, those with a TinyEmail record now
    on_ghl: int = 0  # and with a GHL contact

    @property
    def people(self) -> int:
        return sum(self.cases.values())


def plan(base: pl.DataFrame, te_now: pl.DataFrame, ghl_now: pl.DataFrame, policy: Policy, *,
         ghl_tasks: pl.DataFrame | None = None, created: pl.DataFrame | None = None,
         today: dt.date | None = None, guard_history: GuardHistory = NO_HISTORY,
         outside: Outside | None = None) -> MergeResult:
    """Plan the writes that reconcile GHL and TinyEmail.

    Args:
        base: the last reconciled state (`records.MERGE_SIDE`, optionally with `in_ghl`/`in_tinyemail`);
            empty on the first run.
        te_now, ghl_now: the current snapshots (`records.MERGE_SIDE`), keyed by the identity matcher.
        policy: field rules, tag namespaces, consent, create/delete, task/note rules, guards.
        ghl_tasks: current GHL tasks (`records.GHL_TASKS`); without them no fact tags are managed.
        created: the tasks and notes we created before (`CREATED_SCHEMA`; `key` and `rule` are used).
        today: the plan date, used in note texts, task due dates and overdue facts.
        guard_history: the usual guard figures of this location's recent comparable runs (`engine/guards.py`);
            default none: the guards compare with their floors only.
        outside: the people left out of the three frames as settled (none of them can have an op: the plan
            stage's `in_play`): they count in the stats (`people`, `case_*`) the guards divide by, and their base
            rows make this no first run. Default: nobody.

    Returns:
        MergeResult(ops, conflicts, stats, held_reasons).
    """
    outside = outside or Outside()
    ctx = _context(policy, base, ghl_tasks, today, outside)
    base, te_now, ghl_now = (_with_custom(_conform(base, base=True), policy), _with_custom(_conform(te_now), policy),
                             _with_custom(_conform(ghl_now), policy))
    sides = _Sides(base, _rekey(te_now, base), ghl_now)
    wide = _wide(sides)
    created = created if created is not None else pl.DataFrame(schema=CREATED_SCHEMA)
    deleted = _te_edited(wide, sides, ctx)
    facts = _facts(ghl_now, ghl_tasks, ctx).collect()
    creates = _create_ops(wide, deleted, sides, ctx, facts)
    field_ops, field_conflicts = _field_parts(wide, sides, ctx)
    events = _event_ops(wide, sides, creates, created, ctx)
    memberships = _membership_ops(wide, sides, facts, ctx)
    ops_parts = [field_ops, _consent_ops(wide, ctx), memberships, _identity_ops(wide), creates,
                 _delete_ops(deleted, ctx), events, _new_task_facts(events, sides.te, memberships, ctx)]
    ops = sort_ops(with_ids(pl.concat([part.select(_CONTENT) for part in ops_parts])))
    conflicts = pl.concat([field_conflicts, _consent_conflicts(wide, ctx), _presence_conflicts(wide, deleted, ctx)])
    conflicts = conflicts.sort(["key", "field", "reason"], nulls_last=False)
    stats = _stats(wide, ops, conflicts, ctx, outside)
    return MergeResult(ops, conflicts, stats, _guards(stats, sides, policy, guard_history, outside),
                       wide.select("key", "case"))


_CONTENT = ["target", "kind", "key", "field", "expected", "new", "reason"]


def _context(policy: Policy, base: pl.DataFrame, ghl_tasks: pl.DataFrame | None, today: dt.date | None,
             outside: Outside) -> _Ctx:
    t = policy.tasks
    facts = tuple(tag for tag in (t.open_task_tag, t.overdue_task_tag) if tag)
    active = () if ghl_tasks is None else tuple(
        tag for tag in (t.open_task_tag, t.overdue_task_tag if today else None) if tag)
    # a first run has no base at all: settled people left out of the frames have theirs
    first_run = base.height == 0 and outside.people == 0
    return _Ctx(policy, (*policy.active_fields(), *policy.custom_as_fields()), first_run, today, facts, active)


def _with_custom(frame: pl.DataFrame, policy: Policy) -> pl.DataFrame:
    """The frame plus one text column per custom field of the policy (`custom:<fieldKey>`), read from its `custom`
    JSON (the plan stage put it in the policy's form, model/custom_fields.py); a text field like the others."""
    names = list(policy.active_custom())
    if not names:
        return frame
    return frame.with_columns(value_column(pl.col("custom"), name).alias(column(name)) for name in names)


# --- preparation -----------------------------------------------------------------------------------

def _conform(frame: pl.DataFrame, *, base: bool = False) -> pl.DataFrame:
    """The MERGE_SIDE columns (missing ones null, null tag/list arrays empty); the base gets its presence flags.

    Text is normalised later, on the joined frame (`_wide`), so that no second copy of the inputs is made.
    """
    cols = []
    for name, dtype in MERGE_SIDE.items():
        expr = pl.col(name) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        if dtype == pl.List(pl.String):
            expr = expr.fill_null(pl.lit([], dtype=dtype)).alias(name)
        cols.append(expr)
    if not base:
        return frame.select(cols)
    in_ghl = pl.col("in_ghl") if "in_ghl" in frame.columns else ~pl.col("key").str.starts_with(TE_KEY_PREFIX)
    in_te = (pl.col("in_tinyemail") if "in_tinyemail" in frame.columns
             else _blank_to_null(pl.col("email")).is_not_null())
    return frame.select(*cols, in_ghl.fill_null(False).alias("in_ghl"), in_te.fill_null(False).alias("in_tinyemail"))


def _blank_to_null(expr: pl.Expr) -> pl.Expr:
    trimmed = expr.str.strip_chars()
    return pl.when(trimmed.str.len_bytes() > 0).then(trimmed)


def _rekey(te_now: pl.DataFrame, base: pl.DataFrame) -> pl.DataFrame:
    """A `te:<email>` row whose email is the base email of exactly one base person without a TinyEmail row
    now is that person (its GHL contact was deleted, or its GHL email changed)."""
    orphans = (te_now.filter(pl.col("key").str.starts_with(TE_KEY_PREFIX))
               .select("key", _blank_to_null(pl.col("email")).alias("email")))
    if orphans.height == 0 or base.height == 0:
        return te_now
    candidates = (base.select("key", "in_tinyemail", _blank_to_null(pl.col("email")).alias("email"))
                  .join(orphans.select("email"), on="email", how="semi")
                  .filter(pl.col("in_tinyemail"))
                  .join(te_now.select("key"), on="key", how="anti")
                  .select(pl.col("key").alias("base_key"), "email"))
    unique = candidates.filter(pl.len().over("email") == 1)
    moved = orphans.join(unique, on="email", how="inner")
    if moved.height == 0:
        return te_now
    mapping = dict(zip(moved["key"].to_list(), moved["base_key"].to_list(), strict=True))
    return te_now.with_columns(pl.col("key").replace(mapping))


def _with_fields(rows: pl.DataFrame, sides: _Sides, names: Iterable[str], suffixes: str = "tgb") -> pl.DataFrame:
    """`rows` (holding the row numbers `_t`, `_g`, `_b`) plus `<name>_<t|g|b>`: each side's value, normalised.

    Text is trimmed and a blank is null; a side without the person gives null. Each column is made one
    chunk before the gather (cheap for strings: only the 16-byte views are copied; a gather across the
    many chunks of a DuckDB or parquet read is several times slower), one column at a time.
    """
    frames, names = {"t": sides.te, "g": sides.ghl, "b": sides.base}, list(names)
    gathered = pl.DataFrame([frames[s].get_column(n).rechunk().gather(rows[f"_{s}"]).alias(f"{n}_{s}")
                             for s in suffixes for n in names])
    return pl.concat([rows, gathered.select(_blank_to_null(pl.col(c)).alias(c) for c in gathered.columns)],
                     how="horizontal")


def _wide(sides: _Sides) -> pl.DataFrame:
    """One row per key: row numbers on each side, presence flags, email and consent of each side, the case.

    Only the keys are joined (with row numbers); the merged text fields are gathered one field at a time
    later (`_field_parts`), so the whole of all three sides is never copied into one frame.
    """
    base, te_now, ghl_now = sides.base, sides.te, sides.ghl
    index = (ghl_now.select("key").with_row_index("_g")
             .join(te_now.select("key").with_row_index("_t"), on="key", how="full", coalesce=True)
             .join(base.select("key").with_row_index("_b"), on="key", how="full", coalesce=True))
    wide = _with_fields(index, sides, ["email", "consent"]).with_columns(
        pl.col("_t").is_not_null().alias("in_t"), pl.col("_g").is_not_null().alias("in_g"),
        pl.col("_b").is_not_null().alias("in_b"),
        base["in_ghl"].gather(index["_b"]).fill_null(False).alias("in_bg"),
        base["in_tinyemail"].gather(index["_b"]).fill_null(False).alias("in_bt"))
    wide = wide.with_columns((pl.col("in_bg") & pl.col("in_bt")).alias("valid_base"),
                             _ghl_email_changed().alias("email_changed"))
    moved_emails = wide.filter(pl.col("email_changed"))["email_b"]
    return wide.with_columns(_case(moved_emails).alias("case"))


def _ghl_email_changed() -> pl.Expr:
    # only a person TinyEmail knew under the base email: otherwise there is no customer to re-identify
    return (pl.col("in_g") & pl.col("in_bg") & pl.col("in_bt") & pl.col("email_b").is_not_null()
            & pl.col("email_g").ne_missing(pl.col("email_b")))


def _case(moved_emails: pl.Series) -> pl.Expr:
    t, g, bt, bg = pl.col("in_t"), pl.col("in_g"), pl.col("in_bt"), pl.col("in_bg")
    return (
        # on both sides now: the ordinary three-way merge
        pl.when(t & g).then(pl.lit("matched"))
        # on TinyEmail only, and GHL had it at the base: deleted in GHL
        .when(t & ~g & bg).then(pl.lit("deleted_in_ghl"))
        # on TinyEmail only under the old email of a person whose GHL email changed: not a new person
        .when(t & ~g & pl.col("email_t").is_in(moved_emails.implode())).then(pl.lit("identity_pending"))
        # on TinyEmail only, unknown to GHL at the base: new on TinyEmail
        .when(t & ~g).then(pl.lit("new_on_tinyemail"))
        # on GHL only without an email: cannot exist in TinyEmail
        .when(g & ~t & pl.col("email_g").is_null() & ~pl.col("email_changed")).then(pl.lit("ghl_without_email"))
        # on GHL only, its email changed since the base: the identity op covers it
        .when(g & ~t & pl.col("email_changed")).then(pl.lit("identity_pending"))
        # on GHL only, TinyEmail had it at the base: TinyEmail cannot delete, so this is an anomaly
        .when(g & ~t & bt).then(pl.lit("tinyemail_missing"))
        # on GHL only with an email, unknown to TinyEmail at the base: new on GHL
        .when(g & ~t).then(pl.lit("new_on_ghl"))
        # in the base only: gone from both sides
        .otherwise(pl.lit("gone"))
    )


# --- B. text fields --------------------------------------------------------------------------------

def _field_reason(rule: FieldRule, ctx: _Ctx) -> pl.Expr:
    f = rule.canonical
    t, g, b = pl.col(f"{f}_t"), pl.col(f"{f}_g"), pl.col(f"{f}_b")
    same = t.eq_missing(g)
    matched = pl.col("case") == "matched"
    if is_custom(rule.canonical):
        ambiguous, unresolved = t.str.starts_with(AMBIGUOUS).fill_null(False), g.str.starts_with(HELD).fill_null(False)
        matched = matched & ~ambiguous & ~unresolved
        held: pl.Expr | None = (
            # a custom field whose TinyEmail value comes from several pattern tags: no single value, nothing is
            # written either way; a conflict row until a person leaves one tag (model/custom_fields.py)
            pl.when((pl.col("case") == "matched") & ambiguous).then(_reason(Reason.CUSTOM_TAGS_AMBIGUOUS.value))
            # GHL's value unknown (its field ids could not be named): held, never read as a blank
            .when((pl.col("case") == "matched") & unresolved).then(_reason(Reason.CUSTOM_FIELD_UNRESOLVED.value)))
    else:
        held = None
    decided = _decided_reason(rule, ctx, t, g, b, same, matched)
    return decided if held is None else pl.coalesce(held, decided)


def _decided_reason(rule: FieldRule, ctx: _Ctx, t: pl.Expr, g: pl.Expr, b: pl.Expr, same: pl.Expr,
                    matched: pl.Expr) -> pl.Expr:
    if rule.owner != "shared":
        # owned field: the owner's value wins whatever the other side did, base or not
        reason = Reason.OWNED_BY_GHL if rule.owner == "ghl" else Reason.OWNED_BY_TINYEMAIL
        return pl.when(matched & ~same).then(_reason(reason.value))
    changed_t, changed_g = t.ne_missing(b), g.ne_missing(b)
    with_base = (
        # untouched on both sides since the base
        pl.when(~changed_t & ~changed_g).then(None)
        # changed on TinyEmail only: propagate to GHL (a clear is a change too)
        .when(changed_t & ~changed_g).then(_reason(Reason.TINYEMAIL_CHANGED.value))
        # changed on GHL only: propagate to TinyEmail
        .when(~changed_t & changed_g).then(_reason(Reason.GHL_CHANGED.value))
        # the same change on both sides: nothing to do, not a conflict
        .when(same).then(None)
        # different changes on both sides: the field's tie-break (an owner, or manual -> conflict table)
        .otherwise(_reason(TIE_BREAK_REASON[rule.tie_break].value))
    )
    initial = (
        # no valid base and the values agree: nothing
        pl.when(same).then(None)
        # no valid base, GHL blank: fill GHL
        .when(g.is_null()).then(_reason(Reason.INITIAL_FILL_GHL.value))
        # no valid base, TinyEmail blank: fill TinyEmail
        .when(t.is_null()).then(_reason(Reason.INITIAL_FILL_TINYEMAIL.value))
        # no valid base, two different non-blank values: the initial policy
        .otherwise(_reason(initial_reason(rule, ctx.policy).value))
    )
    return pl.when(~matched).then(None).when(pl.col("valid_base")).then(with_base).otherwise(initial)


def _reason(value: str) -> pl.Expr:
    return pl.lit(value, dtype=_REASON_ENUM)


def _field_parts(wide: pl.DataFrame, sides: _Sides, ctx: _Ctx) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(update ops, conflict rows) of the text fields, one field at a time (three columns in memory at once)."""
    slim = wide.select("key", "case", "valid_base", "_t", "_g", "_b")
    manual = [Reason.BOTH_CHANGED_MANUAL.value, Reason.INITIAL_CONFLICT.value, Reason.CUSTOM_TAGS_AMBIGUOUS.value,
              Reason.CUSTOM_FIELD_UNRESOLVED.value]
    ops, conflicts = [_empty(_CONTENT)], [pl.DataFrame(schema=CONFLICTS_SCHEMA)]
    for rule in ctx.fields:
        f = rule.canonical
        reason = _field_reason(rule, ctx)
        rows = (_with_fields(slim, sides, [f]).lazy().filter(reason.is_not_null())
                .select("key", pl.col(f"{f}_t").alias("t"), pl.col(f"{f}_g").alias("g"), pl.col(f"{f}_b").alias("b"),
                        reason.cast(pl.String).alias("reason")).collect())
        target = pl.col("reason").replace_strict(FIELD_REASON_TARGET, default=None, return_dtype=pl.String)
        to_ghl = target == "ghl"
        ops.append(rows.filter(target.is_not_null()).select(
            target.alias("target"), pl.lit(Kind.UPDATE.value).alias("kind"), "key", pl.lit(f).alias("field"),
            pl.when(to_ghl).then(pl.col("g")).otherwise(pl.col("t")).alias("expected"),
            pl.when(to_ghl).then(pl.col("t")).otherwise(pl.col("g")).alias("new"), "reason"))
        conflicts.append(rows.filter(pl.col("reason").is_in(manual)).select(
            "key", pl.lit(f).alias("field"), pl.col("b").alias("base"),
            pl.col("t").str.strip_prefix(HELD).alias("tinyemail"), pl.col("g").str.strip_prefix(HELD).alias("ghl"),
            "reason"))
    return pl.concat(ops), pl.concat(conflicts)


def _empty(columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={name: pl.String for name in columns})


# --- D. consent ------------------------------------------------------------------------------------

def _tightness(ctx: _Ctx) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    c = ctx.policy.consent
    tight_t = pl.col("consent_t").is_in(list(c.tinyemail_tight)).fill_null(False)
    tight_g = pl.col("consent_g").is_in(list(c.ghl_tight)).fill_null(False)
    tight_b = pl.col("consent_b").is_in([*c.tinyemail_tight, *c.ghl_tight]).fill_null(False) & pl.col("valid_base")
    return tight_t, tight_g, tight_b


def _consent_ops(wide: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    c = ctx.policy.consent
    tight_t, tight_g, _ = _tightness(ctx)
    matched = wide.lazy().filter(pl.col("case") == "matched")
    # TinyEmail tight, GHL not: GHL email DND on (whether GHL loosened since the base or never was tight)
    to_ghl = matched.filter(tight_t & ~tight_g).select(
        pl.lit("ghl").alias("target"), pl.lit(Kind.CONSENT_TIGHTEN.value).alias("kind"), "key",
        pl.lit("consent").alias("field"), pl.col("consent_g").alias("expected"),
        pl.lit(c.ghl_tight_value).alias("new"), ("tinyemail_" + pl.col("consent_t")).alias("reason"))
    # GHL DND on, TinyEmail not tight: TinyEmail Unsubscribed
    to_te = matched.filter(tight_g & ~tight_t).select(
        pl.lit("tinyemail").alias("target"), pl.lit(Kind.CONSENT_TIGHTEN.value).alias("kind"), "key",
        pl.lit("consent").alias("field"), pl.col("consent_t").alias("expected"),
        pl.lit(c.tinyemail_tight_value).alias("new"), pl.lit(Reason.GHL_DND.value).alias("reason"))
    return pl.concat(pl.collect_all([to_ghl, to_te]))


def _consent_conflicts(wide: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    tight_t, tight_g, tight_b = _tightness(ctx)
    reason = (
        # tight at the base, loose on both now: a joint human decision; never re-tightened, reported once
        pl.when(~tight_t & ~tight_g).then(pl.lit(Reason.CONSENT_LOOSENED_ON_BOTH.value))
        # loosened on TinyEmail only: re-tightened by the consent op, reported
        .when(~tight_t).then(pl.lit(Reason.CONSENT_LOOSENED_ON_TINYEMAIL.value))
        # loosened on GHL only: re-tightened by the consent op, reported
        .when(~tight_g).then(pl.lit(Reason.CONSENT_LOOSENED_ON_GHL.value))
    )
    return (wide.lazy().filter((pl.col("case") == "matched") & tight_b & (~tight_t | ~tight_g))
            .select("key", pl.lit("consent").alias("field"), pl.col("consent_b").alias("base"),
                    pl.col("consent_t").alias("tinyemail"), pl.col("consent_g").alias("ghl"), reason.alias("reason"))
            .collect())


# --- C. tags and lists -----------------------------------------------------------------------------

def _namespace(tk: pl.Expr, ctx: _Ctx) -> pl.Expr:
    """The namespace of a tag from its key (`model/tags.py tag_key`): the prefixes compared by key too."""
    tags = ctx.policy.tags
    expr: Any = pl.when(tk.is_in([tag_key(t) for t in ctx.fact_tags])).then(pl.lit("fact"))  # Then, ChainedThen
    for head, tail in _custom_patterns(ctx.policy):
        # a tag spelling a custom field's value: the custom field's, never merged as a tag
        fits = tk.str.starts_with(head) & tk.str.ends_with(tail) & (tk.str.len_chars() > len(head) + len(tail))
        expr = expr.when(fits).then(pl.lit("custom"))
    expr = expr.when(tk.str.starts_with(tag_key(tags.list_prefix))).then(pl.lit("list"))
    for prefix in tags.ghl_owned_prefixes:
        expr = expr.when(tk.str.starts_with(tag_key(prefix))).then(pl.lit("ghl"))
    for prefix in tags.tinyemail_owned_prefixes:
        expr = expr.when(tk.str.starts_with(tag_key(prefix))).then(pl.lit("tinyemail"))
    namespace: pl.Expr = expr.otherwise(pl.lit("tag"))
    return namespace


def _long_tags(frame: pl.LazyFrame, ctx: _Ctx, *, drop: tuple[str, ...]) -> pl.LazyFrame:
    """(key, tag, tk) rows of a frame's tags (`tk`: the tag key), without the namespaces in `drop` and unmanaged
    fact tags."""
    rows = (frame.select("key", pl.col("tags").alias("tag")).explode("tag").drop_nulls("tag")
            .with_columns(tag_keys(pl.col("tag")).alias("tk")))
    ns = _namespace(pl.col("tk"), ctx)
    active = [tag_key(t) for t in ctx.active_facts]
    keep = ~ns.is_in(list(drop)) & ((ns != "fact") | pl.col("tk").is_in(active))
    return rows.filter(keep)


def _long_lists(frame: pl.LazyFrame, ctx: _Ctx) -> pl.LazyFrame:
    """(key, tag, tk) rows of a frame's lists, as list tags."""
    return (frame.select("key", pl.col("lists").alias("tag")).explode("tag").drop_nulls("tag")
            .select("key", (pl.lit(ctx.policy.tags.list_prefix) + pl.col("tag")).alias("tag"))
            .with_columns(tag_keys(pl.col("tag")).alias("tk")))


def _one_spelling(parts: list[pl.LazyFrame], side: str) -> pl.LazyFrame:
    """(key, tk, tag_<side>, in_<side>): per person and tag key the first spelling met (a side holding two
    spellings of one key is folded by the plan stage, `model/tags.py`; here the first simply stands for both)."""
    return (pl.concat(parts).unique(["key", "tk"], keep="first", maintain_order=True)
            .select("key", "tk", pl.col("tag").alias(f"tag_{side}"), pl.lit(True).alias(f"in_{side}")))


def _facts(ghl_now: pl.DataFrame, ghl_tasks: pl.DataFrame | None, ctx: _Ctx) -> pl.LazyFrame:
    """(key, tag) rows of the GHL facts: an open task, an overdue task."""
    t = ctx.policy.tasks
    if ghl_tasks is None or not ctx.active_facts:
        return pl.LazyFrame(schema={"key": pl.String, "tag": pl.String})
    open_ = ghl_tasks.lazy().filter(~pl.col("completed").fill_null(False))
    keys = ghl_now.lazy().select("key", "contact_id").filter(pl.col("contact_id").is_not_null())
    parts = []
    if t.open_task_tag in ctx.active_facts:
        parts.append(open_.select("contact_id", pl.lit(t.open_task_tag).alias("tag")))
    if t.overdue_task_tag in ctx.active_facts and ctx.today is not None:
        overdue = pl.col("due_date").str.slice(0, 10) < ctx.today.isoformat()
        parts.append(open_.filter(overdue.fill_null(False))
                     .select("contact_id", pl.lit(t.overdue_task_tag).alias("tag")))
    return pl.concat(parts).join(keys, on="contact_id", how="inner").select("key", "tag").unique()


def _memberships(wide: pl.DataFrame, sides: _Sides, facts: pl.DataFrame, ctx: _Ctx) -> pl.LazyFrame:
    """(key, tk, tag_t, tag_g, tag_b, in_t, in_g, in_b, ns, valid_base): every tag or list (by its key `tk`,
    with each side's spelling) of every matched person that may need an op (the others are skipped by
    `_membership_candidates`); `facts` are the GHL facts (`_facts`)."""
    base, te_now, ghl_now = sides
    lists_on = ctx.policy.tags.list_sync != "off"
    rows = _membership_candidates(wide, te_now, ghl_now, facts, ctx)
    keys = rows.select("key").lazy()
    te = _take(te_now.select("key", "tags", "lists"), rows["_t"]).lazy()
    ghl = _take(ghl_now.select("key", "tags"), rows["_g"]).lazy()
    b = _take(base.select("key", "tags", "lists"), rows.filter(pl.col("valid_base"))["_b"]).lazy()
    # custom-field pattern tags are the custom field's (table B), on every side
    t_parts = [_long_tags(te, ctx, drop=("list", "custom"))] + ([_long_lists(te, ctx)] if lists_on else [])
    g_drop = ("fact", "custom") if lists_on else ("fact", "list", "custom")
    g_facts = facts.lazy().join(keys, on="key", how="semi").with_columns(tag_keys(pl.col("tag")).alias("tk"))
    g_parts = [_long_tags(ghl, ctx, drop=g_drop), g_facts]
    b_parts = [_long_tags(b, ctx, drop=g_drop)] + ([_long_lists(b, ctx)] if lists_on else [])
    t_long, g_long, b_long = _one_spelling(t_parts, "t"), _one_spelling(g_parts, "g"), _one_spelling(b_parts, "b")
    # tags meet by key: `VIP` on one side and `vip` on the other are one tag, each side keeping its spelling
    on = ["key", "tk"]
    joined = (t_long.join(g_long, on=on, how="full", coalesce=True).join(b_long, on=on, how="full", coalesce=True)
              .with_columns(pl.col("in_t", "in_g", "in_b").fill_null(False)))
    # a base tag the person has on neither side now plays no part
    return (joined.filter(pl.col("in_t") | pl.col("in_g")).with_columns(_namespace(pl.col("tk"), ctx).alias("ns"))
            .join(rows.lazy().select("key", "valid_base"), on="key", how="left"))


def _membership_candidates(wide: pl.DataFrame, te_now: pl.DataFrame, ghl_now: pl.DataFrame, facts: pl.DataFrame,
                           ctx: _Ctx) -> pl.DataFrame:
    """(key, valid_base, row numbers) of the matched people that may need a tag or list op.

    A shortcut, not a rule. When TinyEmail's tags equal GHL's tags outside the list namespace, and
    TinyEmail's lists (as list tags) equal GHL's list tags, compared as joined strings in the order given,
    and neither side holds a tag the two sides filter differently (a list tag on TinyEmail, a managed fact
    tag, a list tag on GHL spelled with another case or spacing of the prefix) or one holding the separator,
    then T = G in every namespace: every desired set equals both, and there is nothing to do (equal strings
    have equal keys). Anything else (including the same set in another order, or in another case) takes the
    full path, which compares tags by key.
    """
    prefix = ctx.policy.tags.list_prefix
    lists_on = ctx.policy.tags.list_sync != "off"
    tags = pl.col("tags")

    def joined(expr: pl.Expr) -> pl.Expr:
        return expr.list.join(_SEP)

    def has(expr: pl.Expr, test: pl.Expr) -> pl.Expr:
        return expr.list.eval(test).list.any()

    odd_t, odd_g = _odd_tags(te_now, ghl_now, ctx)
    if lists_on:
        list_tags = pl.col("lists").list.eval(pl.lit(prefix) + pl.element())
        t_cols = [joined(tags).alias("t1"), joined(list_tags).alias("t2"),
                  has(tags, pl.element().is_in(odd_t)).alias("st")]
        g_cols = [joined(tags.list.eval(pl.element().filter(~pl.element().str.starts_with(prefix)))).alias("g1"),
                  joined(tags.list.eval(pl.element().filter(pl.element().str.starts_with(prefix)))).alias("g2"),
                  has(tags, pl.element().is_in(odd_g)).alias("sg")]
    else:
        t_cols = [joined(tags).alias("t1"), pl.lit("").alias("t2"), has(tags, pl.element().is_in(odd_t)).alias("st")]
        g_cols = [joined(tags).alias("g1"), pl.lit("").alias("g2"), has(tags, pl.element().is_in(odd_g)).alias("sg")]
    if ctx.active_facts:
        g_cols[2] = g_cols[2] | pl.col("key").is_in(facts["key"].implode())
    matched = wide.filter(pl.col("case") == "matched").select("key", "valid_base", "_t", "_g", "_b")
    t = _take(te_now.select(*t_cols).rechunk(), matched["_t"])
    g = _take(ghl_now.select(*g_cols).rechunk(), matched["_g"])
    differs = (t["t1"].ne_missing(g["g1"]) | t["t2"].ne_missing(g["g2"]) | t["st"] | g["sg"]).fill_null(True)
    return matched.filter(differs)


def _odd_tags(te_now: pl.DataFrame, ghl_now: pl.DataFrame, ctx: _Ctx) -> tuple[list[str], list[str]]:
    """The distinct tags of each side that send a person down the full path (`_membership_candidates`), by key:
    on TinyEmail a list tag (ignored there) or, with facts managed, a fact tag; on GHL a list tag whose prefix is
    spelled otherwise than the policy's, or a fact tag; on either, a tag holding the separator."""
    lists_on = ctx.policy.tags.list_sync != "off"
    prefix = ctx.policy.tags.list_prefix
    out = []
    for frame, on_te in ((te_now, True), (ghl_now, False)):
        distinct = frame.select(pl.col("tags").explode().drop_nulls().unique())["tags"].to_list()
        odd = []
        for tag in distinct:
            ns = tag_namespace(tag, ctx.policy)
            odd_list = ns == "list" and lists_on and (on_te or not tag.startswith(prefix))
            odd_fact = ns == "fact" and bool(ctx.active_facts)
            if odd_list or odd_fact or _SEP in tag:
                odd.append(tag)
        out.append(odd)
    return out[0], out[1]


def _take(frame: pl.DataFrame, rows: pl.Series) -> pl.DataFrame:
    """The rows of `frame` at the row numbers `rows`, in that order."""
    return frame.select(pl.all().gather(rows))


_SEP = "\x1f"


def _desired(ctx: _Ctx) -> pl.Expr:
    in_t, in_g, in_b, ns = pl.col("in_t"), pl.col("in_g"), pl.col("in_b"), pl.col("ns")
    three_way = (in_t & in_g) | ((in_t | in_g) & ~in_b)
    lists_follow_te = ctx.policy.tags.list_sync == "tinyemail_to_ghl"
    return (
        # GHL-owned namespace and GHL facts: TinyEmail follows GHL
        pl.when(ns.is_in(["ghl", "fact"])).then(in_g)
        # TinyEmail-owned namespace: GHL follows TinyEmail
        .when(ns == "tinyemail").then(in_t)
        # lists when TinyEmail's lists are the truth
        .when((ns == "list") & pl.lit(lists_follow_te)).then(in_t)
        # shared tags and lists: added on either side since the base -> kept, removed on either -> dropped
        .otherwise(three_way)
    )


def _membership_ops(wide: pl.DataFrame, sides: _Sides, facts: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    in_t, in_g, ns = pl.col("in_t"), pl.col("in_g"), pl.col("ns")
    rows = _memberships(wide, sides, facts, ctx).with_columns(_desired(ctx).alias("r"))
    r = pl.col("r")
    ghl_side = ~ns.is_in(["ghl", "fact"])
    te_side = ns != "tinyemail"
    changes = rows.filter(((r != in_g) & ghl_side) | ((r != in_t) & te_side))
    changes = changes.with_columns(
        pl.when((r != in_g) & ghl_side).then(pl.lit("ghl")).otherwise(pl.lit("tinyemail")).alias("target"))
    prefix_len = len(ctx.policy.tags.list_prefix)
    is_list_te = (ns == "list") & (pl.col("target") == "tinyemail")
    adding = r
    to_ghl = pl.col("target") == "ghl"
    # an add is written in the spelling of the side it came from, a removal names the target's own spelling
    spelling = (pl.when(adding).then(pl.when(to_ghl).then(pl.col("tag_t")).otherwise(pl.col("tag_g")))
                .otherwise(pl.when(to_ghl).then(pl.col("tag_g")).otherwise(pl.col("tag_t"))))
    value = pl.when(is_list_te).then(spelling.str.slice(prefix_len)).otherwise(spelling)
    kind = (pl.when(is_list_te).then(pl.when(adding).then(pl.lit("list_add")).otherwise(pl.lit("list_remove")))
            .otherwise(pl.when(adding).then(pl.lit("tag_add")).otherwise(pl.lit("tag_remove"))))
    return changes.select(
        "target", kind.alias("kind"), "key",
        pl.when(is_list_te).then(pl.lit("lists")).otherwise(pl.lit("tags")).alias("field"),
        pl.when(adding).then(None).otherwise(value).alias("expected"),
        pl.when(adding).then(value).otherwise(None).alias("new"),
        _membership_reason(ctx).alias("reason")).collect()


def _membership_reason(ctx: _Ctx) -> pl.Expr:
    ns, r, valid = pl.col("ns"), pl.col("r"), pl.col("valid_base")
    source = pl.when(pl.col("target") == "ghl").then(pl.lit("tinyemail")).otherwise(pl.lit("ghl"))
    lists_follow_te = ctx.policy.tags.list_sync == "tinyemail_to_ghl"
    return (
        # a fact computed from GHL tasks, set or cleared on TinyEmail
        pl.when(ns == "fact").then(pl.lit(Reason.GHL_TASK_FACT.value))
        # an owned namespace (or lists that follow TinyEmail): the owner's set
        .when(ns.is_in(["ghl", "tinyemail"]) | ((ns == "list") & pl.lit(lists_follow_te)))
        .then(pl.when(ns == "list").then(pl.lit("list")).otherwise(pl.lit("tag")) + "_owned_by_" + source)
        # no valid base: the two sets are united
        .when(~valid).then(ns + "_initial_union")
        # added on the other side since the base
        .when(r).then(ns + "_added_on_" + source)
        # removed on the other side since the base
        .otherwise(ns + "_removed_on_" + source)
    )


# --- A. identity, creates, deletes ------------------------------------------------------------------

def _identity_ops(wide: pl.DataFrame) -> pl.DataFrame:
    # GHL email changed (or removed) since the base: an explicit identity operation, reported
    new = pl.col("email_g")
    reason = pl.when(new.is_null()).then(pl.lit(Reason.GHL_EMAIL_REMOVED.value)).otherwise(
        pl.lit(Reason.GHL_EMAIL_CHANGED.value))
    return wide.filter(pl.col("email_changed")).select(
        pl.lit("tinyemail").alias("target"), pl.lit(Kind.IDENTITY_REVIEW.value).alias("kind"), "key",
        pl.lit("email").alias("field"), pl.col("email_b").alias("expected"), new.alias("new"), reason.alias("reason"))


def _te_edited(wide: pl.DataFrame, sides: _Sides, ctx: _Ctx) -> pl.DataFrame:
    """The deleted_in_ghl people, with `edited`: TinyEmail changed any field, tag, list or consent since base."""
    tight_t, _, tight_b = _tightness(ctx)
    base, te_now = sides.base, sides.te
    rows = _with_fields(wide.filter(pl.col("case") == "deleted_in_ghl"), sides, (r.canonical for r in ctx.fields),
                        "tb")
    changed = [pl.col(f"{r.canonical}_t").ne_missing(pl.col(f"{r.canonical}_b")) for r in ctx.fields]
    changed.append(tight_t != tight_b)
    rows = rows.with_columns(pl.any_horizontal(changed).alias("edited"))
    te_sets = _te_sets(te_now.join(rows.select("key"), on="key", how="semi"), ctx)
    b_sets = _te_sets(base.join(rows.select("key"), on="key", how="semi"), ctx)
    set_changed = (te_sets.join(b_sets, on="key", how="full", coalesce=True, suffix="_b")
                   .filter(pl.col("sets").ne_missing(pl.col("sets_b"))).select("key"))
    return rows.with_columns(pl.col("edited") | pl.col("key").is_in(set_changed["key"].implode()))


def _te_sets(frame: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    """Per key, TinyEmail's own view of its tags and lists as one sorted list of tag keys (the parts TinyEmail
    can edit)."""
    lists_on = ctx.policy.tags.list_sync != "off"
    parts = [_long_tags(frame.lazy(), ctx, drop=("list", "ghl", "fact", "custom"))]
    if lists_on:
        parts.append(_long_lists(frame.lazy(), ctx))
    # by key: a change of case or spacing alone is no edit
    return (pl.concat(parts).select("key", "tk").unique().group_by("key").agg(pl.col("tk").sort().alias("sets"))
            .collect())


def _create_ops(wide: pl.DataFrame, deleted: pl.DataFrame, sides: _Sides, ctx: _Ctx,
                facts: pl.DataFrame) -> pl.DataFrame:
    p = ctx.policy
    rows: list[dict[str, str | None]] = []
    to_ghl = wide.filter(pl.col("case") == "new_on_tinyemail").select("key") if p.create.tinyemail_to_ghl else None
    recreate = deleted.filter(pl.col("edited")).select("key") if p.delete.edit_beats_delete else None
    # new on TinyEmail since the base: create the GHL contact
    if to_ghl is not None:
        rows += _creates(wide, sides, to_ghl, "t", "ghl", Reason.NEW_ON_TINYEMAIL, ctx)
    # deleted in GHL but edited in TinyEmail since: an edit beats a delete, the GHL contact is created again
    if recreate is not None:
        rows += _creates(wide, sides, recreate, "t", "ghl", Reason.EDIT_BEATS_DELETE, ctx)
    # new on GHL with an email: create the TinyEmail customer
    if p.create.ghl_to_tinyemail:
        rows += _creates(wide, sides, wide.filter(pl.col("case") == "new_on_ghl").select("key"), "g", "tinyemail",
                         Reason.NEW_ON_GHL, ctx, facts)
    return pl.DataFrame(rows, schema={name: pl.String for name in _CONTENT})


def _delete_ops(deleted: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    p = ctx.policy
    tight_t, _, _ = _tightness(ctx)
    unedited = deleted.filter(~pl.col("edited")) if p.delete.edit_beats_delete else deleted
    if p.delete.on_ghl_delete != "unsubscribe":
        # deleted in GHL, policy report: a conflict row (see _presence_conflicts), no op
        return _empty(_CONTENT)
    # deleted in GHL, policy unsubscribe: the TinyEmail customer is set Unsubscribed (an inactivation)
    return unedited.filter(~tight_t).select(
        pl.lit("tinyemail").alias("target"), pl.lit(Kind.CONSENT_TIGHTEN.value).alias("kind"), "key",
        pl.lit("consent").alias("field"), pl.col("consent_t").alias("expected"),
        pl.lit(p.consent.tinyemail_tight_value).alias("new"), pl.lit(Reason.DELETED_IN_GHL.value).alias("reason"))


def _creates(wide: pl.DataFrame, sides: _Sides, keys: pl.DataFrame, side: str, target: str, reason: Reason,
             ctx: _Ctx, facts: pl.DataFrame | None = None) -> list[dict[str, str | None]]:
    """Create ops for `keys`, the record taken from the other side (`side`: "t" or "g"); a TinyEmail create
    carries the person's GHL facts (`facts`: key, tag)."""
    names = ["email", *(r.canonical for r in ctx.fields), "consent"]
    wanted = keys["key"].implode()
    rows = _with_fields(wide.filter(pl.col("key").is_in(wanted)).select("key", "_t", "_g", "_b"), sides, names, side)
    source = sides.te if side == "t" else sides.ghl
    sets = source.filter(pl.col("key").is_in(wanted)).select("key", "tags", "lists")
    rows = rows.select("key", *[pl.col(f"{n}_{side}").alias(n) for n in names]).join(sets, on="key", how="left")
    by_key: dict[str, list[str]] = {}
    for key, tag in (facts.iter_rows() if facts is not None else []):
        by_key.setdefault(key, []).append(tag)
    return [{"target": target, "kind": Kind.CREATE.value, "key": row["key"], "field": None, "expected": None,
             "new": create_record(row, target, ctx.policy, sorted(by_key.get(row["key"], []))),
             "reason": reason.value}
            for row in rows.sort("key").iter_rows(named=True)]


def _custom_patterns(policy: Policy) -> list[tuple[str, str]]:
    """(head, tail) of every custom field's tag pattern, as tag keys (`plan:{value}` -> ("plan:", ""))."""
    out = []
    for rule in policy.active_custom().values():
        if rule.tag_pattern:
            head, _, tail = rule.tag_pattern.partition(PLACEHOLDER)
            out.append((tag_key(head) if head.strip() else "", tag_key(tail) if tail.strip() else ""))
    return out


def tag_namespace(tag: str, policy: Policy) -> str:
    """The namespace of one tag, by its key (the scalar twin of `_namespace`)."""
    t, key = policy.tasks, tag_key(tag)
    if key in (tag_key(f) for f in (t.open_task_tag, t.overdue_task_tag) if f):
        return "fact"
    if any(key.startswith(h) and key.endswith(tl) and len(key) > len(h) + len(tl)
           for h, tl in _custom_patterns(policy)):
        return "custom"
    if key.startswith(tag_key(policy.tags.list_prefix)):
        return "list"
    if any(key.startswith(tag_key(p)) for p in policy.tags.ghl_owned_prefixes):
        return "ghl"
    if any(key.startswith(tag_key(p)) for p in policy.tags.tinyemail_owned_prefixes):
        return "tinyemail"
    return "tag"


def create_record(row: dict[str, Any], target: str, policy: Policy, facts: Iterable[str] = ()) -> str:
    """The create payload for `target` from a normalised row of the other side; `facts`: the GHL fact tags of
    the person (open / overdue task), which a new TinyEmail customer gets at once."""
    fields = {"email": row["email"], **{r.canonical: row[r.canonical] for r in policy.active_fields()}}
    tags = policy.tags
    ns_of = {tag: tag_namespace(tag, policy) for tag in fold(row["tags"] or [])[0]}  # one spelling per key
    c = policy.consent
    if target == "ghl":
        # from TinyEmail: every tag but list and fact tags (a new person's only known set, as a union
        # would), its lists as list tags, DND when TinyEmail is tight
        kept = [tag for tag, ns in ns_of.items() if ns not in ("list", "fact", "custom")]
        if tags.list_sync != "off":
            kept += [tags.list_prefix + name for name in row["lists"] or []]
        consent = c.ghl_tight_value if row["consent"] in c.tinyemail_tight else None
        return create_payload(fields, kept, [], consent)
    # from GHL: every tag but list and fact tags, its list tags as lists (unless lists are off), Unsubscribed on DND;
    # the facts computed from its tasks instead of GHL's own fact tags
    kept = [tag for tag, ns in ns_of.items() if ns not in ("list", "fact", "custom")] + list(facts)
    lists = ([tag[len(tags.list_prefix):] for tag, ns in ns_of.items() if ns == "list"]
             if tags.list_sync != "off" else [])
    consent = c.tinyemail_tight_value if row["consent"] in c.ghl_tight else None
    return create_payload(fields, kept, lists, consent)


def _presence_conflicts(wide: pl.DataFrame, deleted: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    # reported, never written: a GHL deletion not undone by an edit (policy report, or policy unsubscribe:
    # the row stays so the data team sees every deletion) and a TinyEmail customer that vanished from its
    # snapshot (TinyEmail has no delete: an anomaly)
    recreated: pl.Series | list[str] = (deleted.filter(pl.col("edited"))["key"] if ctx.policy.delete.edit_beats_delete
                                        else [])
    cases = [Reason.DELETED_IN_GHL.value, Reason.TINYEMAIL_MISSING.value]
    recreated_keys = pl.Series(recreated, dtype=pl.String).implode()
    rows = wide.filter(pl.col("case").is_in(cases) & ~pl.col("key").is_in(recreated_keys))
    return rows.select(
        "key", pl.lit(None, dtype=pl.String).alias("field"), pl.col("email_b").alias("base"),
        pl.col("email_t").alias("tinyemail"), pl.col("email_g").alias("ghl"), pl.col("case").alias("reason"))


# --- E. tasks and notes ----------------------------------------------------------------------------

def _event_ops(wide: pl.DataFrame, sides: _Sides, creates: pl.DataFrame, created: pl.DataFrame,
               ctx: _Ctx) -> pl.DataFrame:
    if ctx.first_run:
        # first run: the base is being established; no event-driven tasks or notes
        return _empty(_CONTENT)
    ghl_created = creates.filter((pl.col("kind") == Kind.CREATE.value) & (pl.col("target") == "ghl"))["key"]
    needed = ["key", "in_t", "in_bt", "consent_t", "consent_b", "case", "valid_base"]
    eligible = wide.lazy().select(needed).filter(
        (pl.col("case") == "matched") | pl.col("key").is_in(ghl_created.implode())).collect()
    events = pl.concat([_consent_events(eligible, ctx), _tag_events(eligible, sides.base, sides.te, ctx)])
    # already created once (and maybe deleted or completed by a person since): never again
    events = events.join(created.select("key", "rule"), on=["key", "rule"], how="anti")
    return events.select(pl.lit("ghl").alias("target"), "kind", "key", pl.col("rule").alias("field"),
                         pl.lit(None, dtype=pl.String).alias("expected"), "new", "reason")


def _new_task_facts(events: pl.DataFrame, te_now: pl.DataFrame, memberships: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    """TinyEmail's open-task fact tag for people this plan gives a task (table E): the task is open the moment it
    exists, so the fact goes across in the same run instead of the next one."""
    tag = ctx.policy.tasks.open_task_tag
    if not tag or tag not in ctx.active_facts or events.height == 0:
        return _empty(_CONTENT)
    keys = events.filter(pl.col("kind") == Kind.TASK_CREATE.value).select("key").unique()
    on_te = te_now.select("key", "tags").join(keys, on="key", how="semi")
    # only people on TinyEmail now who lack the tag (in any spelling), and whose tag is not planned already
    held = on_te.explode("tags").filter(tag_keys(pl.col("tags")) == tag_key(tag)).select("key")
    lacking = on_te.join(held, on="key", how="anti").select("key")
    planned = memberships.filter((pl.col("target") == "tinyemail") & (pl.col("kind") == Kind.TAG_ADD.value)
                                 & (pl.col("new") == tag)).select("key")
    return lacking.join(planned, on="key", how="anti").select(
        pl.lit("tinyemail").alias("target"), pl.lit(Kind.TAG_ADD.value).alias("kind"), "key",
        pl.lit("tags").alias("field"), pl.lit(None, pl.String).alias("expected"), pl.lit(tag).alias("new"),
        pl.lit(Reason.GHL_TASK_FACT.value).alias("reason"))


def _consent_events(eligible: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    t = ctx.policy.tasks
    tight_t, _, _ = _tightness(ctx)
    base_tight = pl.col("consent_b").is_in(list(ctx.policy.consent.tinyemail_tight)).fill_null(False)
    date = ctx.today.isoformat() if ctx.today else "an unknown date"
    parts = []
    if t.new_subscriber.enabled:
        # on TinyEmail now, not at the base, subscribed: a follow-up task
        rule = t.new_subscriber
        task = canonical_json({"title": rule.title, "body": rule.body, "due_date": _due(ctx, rule.due_days)})
        parts.append(eligible.filter(~pl.col("in_bt") & (pl.col("consent_t") == "subscribed")).select(
            "key", pl.lit(NEW_SUBSCRIBER).alias("rule"), pl.lit(Kind.TASK_CREATE.value).alias("kind"),
            pl.lit(task).alias("new"), pl.lit(Reason.NEW_TINYEMAIL_SUBSCRIBER.value).alias("reason")))
    became_tight = pl.col("in_t") & tight_t & ~(pl.col("in_bt") & base_tight)
    for name, note, statuses in ((UNSUBSCRIBE_NOTE, t.unsubscribe_note, ("unsubscribed", "spam")),
                                 (BOUNCE_NOTE, t.bounce_note, ("bounced",))):
        if not note.enabled:
            continue
        # TinyEmail became tight since the base: a dated note in GHL
        pieces = note.body.replace("{date}", date).split("{status}")
        body = pl.concat_str([pl.lit(pieces[0]), *[e for p in pieces[1:] for e in (pl.col("consent_t"), pl.lit(p))]])
        parts.append(eligible.filter(became_tight & pl.col("consent_t").is_in(list(statuses))).select(
            "key", pl.lit(name).alias("rule"), pl.lit(Kind.NOTE_CREATE.value).alias("kind"), body.alias("new"),
            ("tinyemail_" + pl.col("consent_t")).alias("reason")))
    return pl.concat(parts) if parts else _empty(["key", "rule", "kind", "new", "reason"])


def _due(ctx: _Ctx, days: int) -> str | None:
    return (ctx.today + dt.timedelta(days=days)).isoformat() if ctx.today else None


def _tag_events(eligible: pl.DataFrame, base: pl.DataFrame, te_now: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    triggers: dict[str, TagTrigger] = {}
    for tr in ctx.policy.tasks.tag_triggers:
        if tr.enabled:
            triggers.setdefault(tag_key(tr.tag), tr)  # by key: `VIP` configured fires on `vip` too
    empty = _empty(["key", "rule", "kind", "new", "reason"])
    if not triggers:
        return empty
    names = list(triggers)
    now = (te_now.join(eligible.select("key"), on="key", how="semi").select("key", pl.col("tags").alias("tag"))
           .explode("tag").drop_nulls("tag").select("key", tag_keys(pl.col("tag")).alias("tk"))
           .filter(pl.col("tk").is_in(names)))
    then = (base.filter(pl.col("in_tinyemail")).select("key", pl.col("tags").alias("tag")).explode("tag")
            .drop_nulls("tag").select("key", tag_keys(pl.col("tag")).alias("tk")).filter(pl.col("tk").is_in(names)))
    added = now.join(then, on=["key", "tk"], how="anti").sort(["key", "tk"]).unique(maintain_order=True)
    rows = []
    for key, tk in added.iter_rows():
        # a configured TinyEmail tag appeared (in any spelling) since the base: its note or task, named by the
        # trigger's own spelling
        trigger = triggers[tk]
        rows.append({"key": key, "rule": f"tag:{trigger.tag}", "kind": f"{trigger.action}_create",
                     "new": _trigger_text(trigger, ctx), "reason": Reason.TINYEMAIL_TAG_ADDED.value})
    return pl.DataFrame(rows, schema=empty.schema) if rows else empty


def _trigger_text(trigger: TagTrigger, ctx: _Ctx) -> str:
    date = ctx.today.isoformat() if ctx.today else "an unknown date"
    text = trigger.text or f"TinyEmail tag {trigger.tag} added on {date}"
    if trigger.action == "note":
        return text
    return canonical_json({"title": text, "body": "", "due_date": _due(ctx, trigger.due_days)})


# --- F. stats and guards ---------------------------------------------------------------------------

def _stats(wide: pl.DataFrame, ops: pl.DataFrame, conflicts: pl.DataFrame, ctx: _Ctx,
           outside: Outside) -> dict[str, int]:
    stats = {"people": wide.height + outside.people, "first_run": int(ctx.first_run)}
    cases = dict(outside.cases)
    for case, n in wide.group_by("case").len().iter_rows():
        cases[case] = cases.get(case, 0) + n
    stats |= {f"case_{case}": n for case, n in cases.items() if n}
    stats |= {f"ops_{kind}": n for kind, n in ops.group_by("kind").len().iter_rows()}
    stats |= {f"conflicts_{reason}": n for reason, n in conflicts.group_by("reason").len().iter_rows()}
    stats["ops"], stats["conflicts"] = ops.height, conflicts.height
    for name, kinds in GUARD_KINDS.items():
        stats[f"guard_{name}"] = ops.filter(pl.col("kind").is_in(kinds))["key"].n_unique()
    return dict(sorted(stats.items()))


def _guards(stats: dict[str, int], sides: _Sides, policy: Policy, history: GuardHistory,
            outside: Outside) -> tuple[str, ...]:
    g = policy.guards
    base, te_now, ghl_now = sides
    # the share guards: tonight's figure against the floors and the location's usual figure (engine/guards.py)
    held = [trip.reason() for trip in tripped(g, stats, history)]
    # a side is empty when neither the people planned nor the settled ones have a record there
    if g.side_empty and te_now.height + outside.on_tinyemail == 0 and base.filter(pl.col("in_tinyemail")).height > 0:
        held.append("tinyemail_empty: the TinyEmail snapshot is empty while the base is not")
    if g.side_empty and ghl_now.height + outside.on_ghl == 0 and base.filter(pl.col("in_ghl")).height > 0:
        held.append("ghl_empty: the GHL snapshot is empty while the base is not")
    return tuple(held)


__all__ = ["CREATED_SCHEMA", "MergeResult", "Outside", "Reason", "create_record", "plan", "tag_namespace"]
