"""Conflicts as a person reviews them: who they are about, since when they are open, and what was acknowledged.

The merge engine's conflict rows (`ops.CONFLICTS_SCHEMA`: key, field, base, tinyemail, ghl, reason) name a
person by key and know nothing of earlier runs. Three pure steps turn them into the rows of `conflicts.csv`
(`CSV_COLUMNS`), run by the plan stage after the decisions are taken into account:

1. `without_skipped(conflicts, skips)`: a conflict a person answered `skip` (`recon conflicts import`) is not
   reported again while it is the same conflict: same reason, and both sides hold the values the person saw
   (`SKIPS`, kept by the store). When either side's value or the reason changes, it is reported again. This
   holds for every row kind: field conflicts, consent loosening and presence rows (a deletion acknowledged).
2. `track(conflicts, seen, now, in_scope)`: the `SEEN` rows of this run, one per (key, field): a conflict open
   at the last run keeps its `first_seen`; a new one (or one that was closed and came back) starts at `now`;
   an open one that this run no longer reports, for a person this run planned (`in_scope`), is closed.
Before step 1 `as_held` shows a phone conflict's sides as the systems hold them (raw text, not E.164), so a
skip is compared with what the person saw.

3. `review_rows(conflicts, context, seen, today)`: the CSV rows: the person's context
   (`model/context.py`: location, email, name, GHL link), `first_seen`, `nights_open`, and empty `decision`,
   `value` and `note` columns ready to fill.

A presence conflict (a deleted or missing record) has a null `field`; in the store and in joins its field is
`PRESENCE` (the empty text), so a (key, field) pair always identifies one conflict.

A *night* is a calendar day of the store clock (UTC): `nights_open` is the number of UTC dates from the date
of `first_seen` to the date of this run, so a conflict is 0 nights open on the day it first appears and 1
the next day, however many runs there were in between and whatever the time of day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import polars as pl

from contact_recon.model.context import CONTEXT_COLUMNS

PRESENCE = ""  # the field of a presence conflict (its `field` is null in the merge's rows)
CSV_COLUMNS = ("key", "location_id", "email", "name", "field", "base", "tinyemail", "ghl", "reason", "first_seen",
               "nights_open", "ghl_url", "decision", "value", "note")
CSV_SCHEMA = pl.Schema({name: pl.Int64() if name == "nights_open" else pl.String() for name in CSV_COLUMNS})
SEEN = pl.Schema({"key": pl.String(), "field": pl.String(), "reason": pl.String(),
                  "first_seen": pl.Datetime("us", "UTC"), "last_seen": pl.Datetime("us", "UTC"),
                  "open": pl.Boolean()})
SKIPS = pl.Schema({"key": pl.String(), "field": pl.String(), "reason": pl.String(), "base": pl.String(),
                   "tinyemail": pl.String(), "ghl": pl.String()})
_SIDES = ("reason", "tinyemail", "ghl")  # what must be unchanged for a skip to keep holding


def field_key(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its `field` made a join key: a presence conflict's null field is `PRESENCE`."""
    return frame.with_columns(pl.col("field").fill_null(PRESENCE))


def without_skipped(conflicts: pl.DataFrame, skips: pl.DataFrame) -> pl.DataFrame:
    """The conflicts a person has not acknowledged with `skip` as they are now (module docstring, step 1)."""
    if skips.height == 0 or conflicts.height == 0:
        return conflicts
    held = field_key(conflicts).join(skips.select("key", "field", *_SIDES), on=["key", "field"], how="left",
                                     suffix="_skip", maintain_order="left")
    same = pl.all_horizontal(pl.col(c).eq_missing(pl.col(f"{c}_skip")) for c in _SIDES)
    # skipped, and nothing about it changed since: acknowledged, not reported
    acknowledged = held.select(pl.col("reason_skip").is_not_null() & same).to_series()
    return conflicts.filter(~acknowledged)


def as_held(conflicts: pl.DataFrame, people: pl.DataFrame, ghl_contacts: pl.DataFrame,
            te_customers: pl.DataFrame) -> pl.DataFrame:
    """`conflicts` with a phone conflict's sides as the systems hold them: the raw text of each side's phone
    (`07700 900456`), not the E.164 the merge compared (`+447700900456`). A person recognises the number as it
    is written in each system, and any spelling pasted back is read in the contact's own country. `people`:
    key, email, contact_id (the plan's `people`); the frames are the snapshot's (records.GHL_CONTACTS,
    records.TINYEMAIL_CUSTOMERS)."""
    phone = pl.col("field") == "phone"
    if conflicts.filter(phone).height == 0:
        return conflicts
    ghl_raw = ghl_contacts.select("contact_id", ghl_raw="phone_raw").unique("contact_id", keep="first")
    te_raw = te_customers.select("email", te_raw="phone_raw").unique("email", keep="first")
    joined = (conflicts.with_row_index("_order")
              .join(people.select("key", "email", "contact_id"), on="key", how="left")
              .join(ghl_raw, on="contact_id", how="left")
              .join(te_raw, on="email", how="left")
              .sort("_order"))
    return joined.with_columns(
        # a phone: each side as written there (a side without the record keeps the merge's blank)
        tinyemail=pl.when(phone & pl.col("te_raw").is_not_null()).then("te_raw").otherwise("tinyemail"),
        ghl=pl.when(phone & pl.col("ghl_raw").is_not_null()).then("ghl_raw").otherwise("ghl"),
    ).select(conflicts.columns)


def track(conflicts: pl.DataFrame, seen: pl.DataFrame, now: dt.datetime, in_scope: Iterable[str]) -> pl.DataFrame:
    """The SEEN rows this run writes (module docstring, step 2): every conflict it reports, and the open ones of
    `in_scope` keys it no longer reports (closed)."""
    current = field_key(conflicts).select("key", "field", "reason").unique(["key", "field"], keep="first")
    still_open = seen.filter(pl.col("open")).select("key", "field", "first_seen")
    reported = current.join(still_open, on=["key", "field"], how="left").select(
        "key", "field", "reason",
        # open at the last run: it keeps its first night; new (or reopened): it starts now
        first_seen=pl.col("first_seen").fill_null(pl.lit(now, SEEN["first_seen"])),
        last_seen=pl.lit(now, SEEN["last_seen"]), open=pl.lit(True))
    scope = pl.Series(sorted(set(in_scope)), dtype=pl.String).implode()
    # open before, this run planned the person and no longer reports it: settled or gone, closed
    closed = (seen.filter(pl.col("open") & pl.col("key").is_in(scope))
              .join(current, on=["key", "field"], how="anti")
              .with_columns(open=pl.lit(False)))
    return pl.concat([reported.cast(SEEN), closed.select(list(SEEN)).cast(SEEN)]).sort("key", "field")


def nights(first_seen: dt.datetime, today: dt.date) -> int:
    """Calendar days (UTC) from the date of `first_seen` to `today` (module docstring)."""
    return (today - first_seen.astimezone(dt.UTC).date()).days


def review_rows(conflicts: pl.DataFrame, context: pl.DataFrame, seen: pl.DataFrame, today: dt.date) -> pl.DataFrame:
    """The rows of conflicts.csv (CSV_SCHEMA, module docstring step 3), in the merge's order."""
    first = seen.select("key", "field", "first_seen")
    joined = (field_key(conflicts).with_row_index("_order")
              .join(context.select("key", *CONTEXT_COLUMNS), on="key", how="left")
              .join(first, on=["key", "field"], how="left")
              .sort("_order"))
    day = pl.lit(today, pl.Date)
    return joined.select(
        "key", "location_id", "email", "name",
        field=pl.when(pl.col("field") != PRESENCE).then(pl.col("field")),
        base="base", tinyemail="tinyemail", ghl="ghl", reason="reason",
        first_seen=pl.col("first_seen").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        nights_open=(day - pl.col("first_seen").dt.convert_time_zone("UTC").dt.date()).dt.total_days(),
        ghl_url="ghl_url", decision=pl.lit(None, pl.String), value=pl.lit(None, pl.String),
        note=pl.lit(None, pl.String),
    ).cast(CSV_SCHEMA)


def empty_review() -> pl.DataFrame:
    return pl.DataFrame(schema=CSV_SCHEMA)
