"""The hygiene suites as data: every expectation with its one-line meaning, severity and threshold.

Each expectation is a *check column*: a polars expression over one frame that is null where the
record is fine and holds the offending value (as text) where it is not. Our code does the parsing
(email-validator and phonenumbers already ran in `contact_recon/model/normalise.py`, giving `email_valid` /
`phone_valid`); great-expectations is the reporter: every check column is validated with the
built-in `expect_column_values_to_be_null` (`mostly` = the expectation's threshold), so Data Docs
show the offending values themselves as samples, and quarantine maps the non-null rows back to
record keys with polars (never through GX's unexpected-index lists).

Severity: a *blocking* expectation quarantines every failing record (no write for it in either
direction this run, see `checks/quarantine.py`), whatever its `mostly`; a *warning* only reports.
`mostly` decides whether GX calls the expectation as a whole a success (the share of records that
must pass).

Suites and the frames they read (names as in `contact_recon/store/db.py`'s ENTITIES, plus "plan"):

| suite        | record key | expectations                                                            |
|--------------|------------|-------------------------------------------------------------------------|
| ghl_contacts | contact_id | email_syntax, phone_e164, email_unique_in_location, tags_clean (block); |
|              |            | phone_assigned, email_present (warn)                                    |
| te_customers | email      | email_syntax, phone_e164, tags_clean (block); phone_assigned,           |
|              |            | consent_known (warn)                                                    |
| ghl_tasks    | task_id    | contact_exists, due_date_in_bounds (block)                              |
| ghl_notes    | note_id    | body_present, body_bounded, contact_exists (warn: notes never cross)    |
| plan         | op_id      | one_write_per_field, within_guards, note_body_bounded (block)           |

What a blocking failure holds: a person-level expectation quarantines the person's every op (the
record is bad, so nothing is copied from it or to it); `within_guards` and `note_body_bounded` hold
only the failing ops (the ops of the guard's kinds: mass updates wait while other writes go; one bad
note); `within_guards` trips at the merge engine's thresholds (`contact_recon/engine/guards.py`: the floors
and the location's usual figure, from `Context.guard_history`). The merge engine holds a plan beyond the
guards as a whole until approved; an approved run passes `severity={"plan.within_guards": "warning"}`, the
explicit override.

Thresholds (`Thresholds`) are typed and defaulted; `severity` overrides any expectation's severity by
its qualified name (`"ghl_contacts.phone_assigned" = "blocking"`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from contact_recon.engine.guards import NO_HISTORY, GuardHistory, thresholds
from contact_recon.model.list_tags import LIST_TAG_RESPELLED
from contact_recon.model.ops import Kind
from contact_recon.model.policy import GUARD_KINDS, GuardPolicy
from contact_recon.model.records import CONSENT_VALUES
from contact_recon.model.tags import TAG_FOLDED

Severity = Literal["blocking", "warning"]
Holds = Literal["person", "op"]
E164 = r"^\+[1-9][0-9]{1,14}$"


class Thresholds(BaseModel):
    """Bounds and pass rates of the hygiene checks (every part defaulted)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tag_length: int = 100
    max_tags: int = 100
    max_note_length: int = 20_000
    due_date_past_days: int = 3_650  # an open task due ten years ago is a data error, not a plan
    due_date_future_days: int = 1_825
    warning_mostly: float = 0.95  # a warning fails as a whole only when more than 5% of records fail it
    blocking_mostly: float = 1.0
    sample_size: int = 20
    severity: dict[str, Severity] = {}


@dataclass(frozen=True)
class Context:
    """What a check may look at besides its own frame."""

    thresholds: Thresholds
    today: dt.date
    contact_ids: pl.Series  # every GHL contact id of this run
    guards: GuardPolicy
    people: int  # the people in play (the guards' denominator)
    guard_history: GuardHistory = NO_HISTORY  # the location's usual guard figures (engine/guards.py)


Check = Callable[[Context], pl.Expr]


@dataclass(frozen=True)
class ExpectationSpec:
    name: str
    meaning: str  # one line: what a failure means
    severity: Severity
    check: Check  # null where fine, else the offending value as text
    holds: Holds = "person"  # what a blocking failure quarantines: the person's every op, or the op alone

    def column(self) -> str:
        return self.name


@dataclass(frozen=True)
class Suite:
    name: str
    frame: str  # which input frame it reads
    record_id: str  # the record's own id column
    expectations: tuple[ExpectationSpec, ...] = field(default_factory=tuple)


def _fails(condition: pl.Expr, value: pl.Expr) -> pl.Expr:
    """The offending value (text) where `condition` holds, else null."""
    return pl.when(condition).then(value.cast(pl.String)).otherwise(None)


# ------------------------------------------------------------------------------------------ people


def email_syntax(_: Context) -> pl.Expr:
    return _fails(pl.col("email_raw").is_not_null() & ~pl.col("email_valid").fill_null(False), pl.col("email_raw"))


def phone_e164(_: Context) -> pl.Expr:
    # normalise keeps the trimmed text when the value does not parse to a number of a possible length
    unparsed = pl.col("phone").is_not_null() & ~pl.col("phone").str.contains(E164)
    return _fails(unparsed, pl.col("phone_raw"))


def phone_assigned(_: Context) -> pl.Expr:
    # E.164, but phonenumbers does not know the range as assigned (e.g. the UK drama range 07700 900xxx)
    unassigned = pl.col("phone").str.contains(E164).fill_null(False) & ~pl.col("phone_valid").fill_null(False)
    return _fails(unassigned, pl.col("phone_raw"))


def email_unique_in_location(_: Context) -> pl.Expr:
    shared = pl.col("email").is_not_null() & (pl.len().over("location_id", "email") > 1)
    return _fails(shared, pl.col("email"))


def email_present(_: Context) -> pl.Expr:
    return _fails(pl.col("email").is_null(), pl.col("contact_id"))


def tags_clean(ctx: Context) -> pl.Expr:
    t = ctx.thresholds
    tags = pl.col("tags").fill_null([])
    bad_tag = tags.list.eval((pl.element() != pl.element().str.strip_chars()) | (pl.element().str.len_chars() == 0)
                             | (pl.element().str.len_chars() > t.max_tag_length)).list.any()
    too_many = tags.list.len() > t.max_tags
    return _fails(bad_tag.fill_null(False) | too_many, tags.list.join("|"))


def consent_known(_: Context) -> pl.Expr:
    return _fails(~pl.col("consent").is_in(list(CONSENT_VALUES)).fill_null(False),
                  pl.col("status").fill_null("(no status)"))


# ------------------------------------------------------------------------------------ tasks, notes


def contact_exists(ctx: Context) -> pl.Expr:
    missing = ~pl.col("contact_id").is_in(ctx.contact_ids.implode()).fill_null(False)
    return _fails(missing, pl.col("contact_id").fill_null("(no contactId)"))


def due_date_in_bounds(ctx: Context) -> pl.Expr:
    t = ctx.thresholds
    due = pl.col("due_date").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    low = ctx.today - dt.timedelta(days=t.due_date_past_days)
    high = ctx.today + dt.timedelta(days=t.due_date_future_days)
    ok = due.is_between(pl.lit(low), pl.lit(high)).fill_null(False)
    return _fails(~ok, pl.col("due_date").fill_null("(no dueDate)"))


def body_present(_: Context) -> pl.Expr:
    return _fails(pl.col("body").is_null() | (pl.col("body").str.strip_chars() == ""), pl.col("note_id"))


def body_bounded(ctx: Context) -> pl.Expr:
    length = pl.col("body").str.len_chars()
    return _fails(length > ctx.thresholds.max_note_length, pl.format("{} characters", length))


# -------------------------------------------------------------------------------------------- plan

_SET_KINDS = [Kind.TAG_ADD.value, Kind.TAG_REMOVE.value, Kind.LIST_ADD.value, Kind.LIST_REMOVE.value]
def one_write_per_field(_: Context) -> pl.Expr:
    # a set field (tags, lists) is written per member; a create writes the whole record
    member = pl.when(pl.col("kind").is_in(_SET_KINDS)).then(pl.coalesce("new", "expected")).otherwise(pl.lit(""))
    slot = pl.format("{} {} {} {}", "target", "key", pl.col("field").fill_null("(record)"), member.fill_null(""))
    return _fails(pl.len().over(slot) > 1, slot.str.strip_chars())


def within_guards(ctx: Context) -> pl.Expr:
    # the merge engine's own thresholds (engine/guards.py): floors and the location's usual figure
    limits = thresholds(ctx.guards, ctx.people, ctx.guard_history)
    breach: pl.Expr = pl.lit(None, pl.String)
    for name, kinds in GUARD_KINDS.items():
        at_least = limits[name].at_least
        # a list tag spelled anew removes no list (model/list_tags.py), a fold removes a second spelling of a tag
        # that stays (model/tags.py): neither is a removal the guard counts
        unchanging = pl.col("reason").fill_null("").is_in([LIST_TAG_RESPELLED, TAG_FOLDED])
        of_kind = pl.col("kind").is_in(kinds) & ~unchanging
        n = pl.col("key").filter(of_kind).n_unique()
        over = of_kind & (n >= at_least)
        text = pl.format(f"{name}: {{}} of {ctx.people} people, threshold {at_least}", n)
        breach = pl.when(over).then(text).otherwise(breach)
    return breach


def note_body_bounded(ctx: Context) -> pl.Expr:
    is_note = pl.col("kind") == Kind.NOTE_CREATE.value
    body = pl.col("new").fill_null("")
    bad = is_note & ((body.str.strip_chars() == "") | (body.str.len_chars() > ctx.thresholds.max_note_length))
    return _fails(bad, pl.format("{} characters", body.str.len_chars()))


# ------------------------------------------------------------------------------------------ suites


def _x(name: str, meaning: str, severity: Severity, check: Check, holds: Holds = "person") -> ExpectationSpec:
    return ExpectationSpec(name, meaning, severity, check, holds)


SUITES: tuple[Suite, ...] = (
    Suite("ghl_contacts", "ghl_contacts", "contact_id", (
        _x("email_syntax", "the email is not a valid address (email-validator, syntax only)", "blocking",
           email_syntax),
        _x("phone_e164", "the phone does not parse to an E.164 number", "blocking", phone_e164),
        _x("email_unique_in_location", "another contact of the same location has the same normalised email",
           "blocking", email_unique_in_location),
        _x("tags_clean", "a tag is untrimmed, empty or too long, or the contact has too many tags", "blocking",
           tags_clean),
        _x("phone_assigned", "the phone is E.164 but not in an assigned range", "warning", phone_assigned),
        _x("email_present", "the contact has no email, so it cannot reach TinyEmail", "warning", email_present),
    )),
    Suite("te_customers", "te_customers", "email", (
        _x("email_syntax", "the email is not a valid address (email-validator, syntax only)", "blocking",
           email_syntax),
        _x("phone_e164", "the phone does not parse to an E.164 number", "blocking", phone_e164),
        _x("tags_clean", "a tag is untrimmed, empty or too long, or the customer has too many tags", "blocking",
           tags_clean),
        _x("phone_assigned", "the phone is E.164 but not in an assigned range", "warning", phone_assigned),
        _x("consent_known", "the status is not a known TinyEmail status", "warning", consent_known),
    )),
    Suite("ghl_tasks", "ghl_tasks", "task_id", (
        _x("contact_exists", "the task's contactId is not a contact of this snapshot", "blocking", contact_exists),
        _x("due_date_in_bounds", "the dueDate is missing, unreadable or outside the sane window", "blocking",
           due_date_in_bounds),
    )),
    Suite("ghl_notes", "ghl_notes", "note_id", (
        _x("body_present", "the note body is empty", "warning", body_present),
        _x("body_bounded", "the note body is longer than the limit", "warning", body_bounded),
        _x("contact_exists", "the note's contactId is not a contact of this snapshot", "warning", contact_exists),
    )),
    Suite("plan", "plan", "op_id", (
        _x("one_write_per_field", "two ops write the same field (or set member) of one record", "blocking",
           one_write_per_field),
        _x("within_guards", "the plan changes more people than a guard threshold allows", "blocking",
           within_guards, holds="op"),
        _x("note_body_bounded", "a note to create is empty or longer than the limit", "blocking",
           note_body_bounded, holds="op"),
    )),
)


def severity(suite: Suite, spec: ExpectationSpec, thresholds: Thresholds) -> Severity:
    """The configured severity of an expectation (an override by qualified name wins)."""
    return thresholds.severity.get(f"{suite.name}.{spec.name}", spec.severity)


def mostly(severity_: Severity, thresholds: Thresholds) -> float:
    return thresholds.blocking_mostly if severity_ == "blocking" else thresholds.warning_mostly


def describe_suites(thresholds: Thresholds | None = None) -> list[dict[str, str]]:
    """One row per expectation (suite, expectation, severity, meaning), for the report and the docs."""
    t = thresholds or Thresholds()
    return [{"suite": s.name, "expectation": x.name, "severity": severity(s, x, t), "meaning": x.meaning}
            for s in SUITES for x in s.expectations]
